"""Process-level runtime: TensorFlow settings for a worker (thread pools, GPU memory, precision)
and provenance (installed package versions, the code's git commit) for meta.json and the report.

Several training tasks may share one machine (Airflow maps them in parallel), so each process
takes `cores // CNN_PARALLEL_TASKS` threads for its ops and input pipeline instead of all cores.
Importing this module is cheap: TensorFlow is imported only by `configure_tensorflow`.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from pathlib import Path

from cnn_tasks.deployment import deployment

log = logging.getLogger(__name__)

_applied: dict | None = None  # the settings this process already runs with

# Packages whose versions are recorded; a tuple names alternative distributions of one package.
VERSION_PACKAGES = (
    ("tensorflow", "tensorflow-cpu"),
    "keras",
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
    "matplotlib",
    "pillow",
    "boto3",
    "apache-airflow",
)


def available_cores() -> int:
    """CPU cores this process may use (respects CPU affinity / container limits where visible)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parallel_tasks(value: int | None = None) -> int:
    """How many training tasks run at once on this machine: the argument, else CNN_PARALLEL_TASKS, else 1."""
    raw = value if value is not None else deployment().parallel_tasks
    try:
        tasks = int(raw)
    except ValueError:
        raise ValueError(f"CNN_PARALLEL_TASKS: {raw!r} is not a whole number") from None
    if tasks < 1:
        raise ValueError(f"CNN_PARALLEL_TASKS: {tasks} must be >= 1")
    return tasks


def threads_per_task(tasks: int | None = None) -> int:
    """Intra-op (and tf.data) threads for one task: cores // tasks, at least 1."""
    return max(1, available_cores() // parallel_tasks(tasks))


def configure_tensorflow(
    parallel_tasks: int | None = None, mixed_precision: bool = False, deterministic: bool = False
) -> dict:
    """Size TF thread pools, turn on GPU memory growth, set the precision policy; idempotent.

    Thread pools and GPU options can only be set before TensorFlow starts executing ops; a later
    call with different thread counts keeps the first ones and logs a warning.
    Returns the settings in effect (for meta.json).
    """
    global _applied
    import keras
    import tensorflow as tf

    intra = threads_per_task(parallel_tasks)
    settings = {
        "intra_op_threads": intra,
        "inter_op_threads": max(1, min(2, intra)),
        "mixed_precision": bool(mixed_precision),
        "deterministic": bool(deterministic),
    }
    if _applied is None:
        _set_threads_and_gpus(tf, settings)
    elif (_applied["intra_op_threads"], _applied["inter_op_threads"]) != (intra, settings["inter_op_threads"]):
        log.warning(
            "TensorFlow threads already set to %s intra-op; keeping them (asked for %s)",
            _applied["intra_op_threads"],
            intra,
        )
        settings.update(intra_op_threads=_applied["intra_op_threads"], inter_op_threads=_applied["inter_op_threads"])
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    settings["gpus"] = len(tf.config.list_physical_devices("GPU"))
    _applied = settings
    return dict(settings)


def _set_threads_and_gpus(tf, settings: dict) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(settings["intra_op_threads"])
        tf.config.threading.set_inter_op_parallelism_threads(settings["inter_op_threads"])
    except RuntimeError:  # TensorFlow already initialised in this process (e.g. by another stage)
        log.warning("TensorFlow was already initialised; thread pools keep their current sizes")
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            log.warning("GPU %s already initialised; memory growth unchanged", gpu.name)
    log.info(
        "TensorFlow: %d intra-op / %d inter-op threads, %d GPU(s)",
        settings["intra_op_threads"],
        settings["inter_op_threads"],
        len(tf.config.list_physical_devices("GPU")),
    )


# --------------------------------------------------------------------------- provenance
def package_versions() -> dict[str, str]:
    """Python and the installed distribution versions of VERSION_PACKAGES ("not installed" if absent).

    Alternatives share the first name as key: tensorflow-cpu is reported as "tensorflow".
    """
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for names in VERSION_PACKAGES:
        names = names if isinstance(names, tuple) else (names,)
        versions[names[0]] = "not installed"
        for name in names:
            try:
                versions[names[0]] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def git_commit() -> str:
    """The code's git commit: `git rev-parse HEAD`, else env CNN_GIT_COMMIT, else "unknown"."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return deployment().git_commit or "unknown"
