"""The command line: `python -m cnn_tasks <command>` (`make run` calls `run`).

  validate SETTINGS            check a settings file (YAML or JSON) as the trigger form would
  run [--conf SETTINGS] [...]  run the pipeline once with a project-local Airflow, print the report
  predict FOLDER --store URI   classify a folder of images with the champion of a store
  predict-model MODEL FOLDER   classify a folder of images with a model file
  visualize MODEL IMAGES OUT   draw what a model file learned (feature maps, filters, Grad-CAM)
  report --store URI           print where the latest run's report is
  tensorboard [RUN] --store URI  serve a run's training logs (default: the latest run) with TensorBoard

Settings: a settings file holds any config field (`cnn_tasks/config.py`); PROFILE, DATASET_URL,
DATASET_CHECKSUM, UNLABELLED_URL, STORE_URI from the environment, and the `run` options of the same
names, override it when given. Only what the user set goes into the DAG run's conf; everything else
stays at the Param defaults. An invalid setting exits 1 before Airflow starts, naming the file and
the field: `Invalid setting: my.yaml: image_size: 1024 is outside 16..512`.

`run` exits 0 with last line `Report: <url>` when every task succeeded. When any task failed the DAG
run ends `failed`, `airflow dags test` exits non-zero, and `run` exits 1 with, as its last lines,
`FAILED: <task>: <error type>: <message>` (the first failure; the others are counted) and
`Partial report: <url>` (or `No report was written.`). Airflow runs in a subprocess: this package
imports no Airflow.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cnn_tasks import DAG_ID, champion, failures, progress, reuse, runtime
from cnn_tasks.config import EUROSAT_URL, PipelineConfig
from cnn_tasks.context import safe_run_id
from cnn_tasks.deployment import deployment
from cnn_tasks.errors import PipelineError
from cnn_tasks.fields import ConfigError
from cnn_tasks.storage import open_store

ROOT = Path(__file__).resolve().parents[1]
# Environment variables (and `run` options) that override a settings file, and their fields.
OVERRIDES = {
    "PROFILE": "profile",
    "DATASET_URL": "dataset_url",
    "DATASET_CHECKSUM": "dataset_checksum",
    "UNLABELLED_URL": "unlabelled_url",
    "STORE_URI": "store_uri",
}
LOCAL_PATH_FIELDS = ("dataset_url", "unlabelled_url")


class SettingsError(PipelineError, ValueError):
    """A settings file that cannot be read or holds an invalid setting; the message names the file."""


# ----------------------------------------------------------------------------- settings
def read_settings(path: str | Path) -> dict[str, Any]:
    """The settings in a YAML or JSON file (JSON is YAML), as a mapping of field names to values."""
    import yaml

    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML or JSON: {exc}") from None
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        raise SettingsError(f"{path}: must be a mapping of setting names to values, e.g. 'image_size: 128'")
    for name, value in values.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):  # e.g. an unquoted date, which YAML reads as a date
            raise SettingsError(
                f"{path}: {name}: {value!r} is not a plain value (string, number, true/false, "
                "list or mapping): quote it"
            ) from None
    return values


def build_conf(settings: str | Path | None = None, overrides: dict[str, str | None] | None = None) -> dict[str, Any]:
    """The DAG run's conf: the settings file's values, then the non-empty overrides (by env name,
    default: the environment), with the profile and store always set; validated as the trigger form
    validates it. Local dataset paths become absolute, so Airflow's working directory does not matter.
    Raises SettingsError (naming the file) or ConfigError."""
    overrides = {name: os.environ.get(name) for name in OVERRIDES} if overrides is None else overrides
    conf = read_settings(settings) if settings else {}
    for name, value in overrides.items():
        if value is not None and str(value).strip():
            conf[OVERRIDES[name]] = str(value).strip()
    conf.setdefault("profile", "standard")
    conf.setdefault("store_uri", f"file://{ROOT}/artifacts")
    for name in LOCAL_PATH_FIELDS:
        url = conf.get(name)
        if isinstance(url, str) and url.strip() and "://" not in url:
            conf[name] = str(Path(url).expanduser().resolve())
    try:
        PipelineConfig.from_dict(conf, given=set(conf))
    except ConfigError as exc:
        if settings:
            raise SettingsError(f"{settings}: {exc}") from None
        raise
    return conf


# ----------------------------------------------------------------------------- run
def check_reachable(url: str) -> None:
    """Fail in seconds, not after retries, when the default dataset's host cannot be reached."""
    host = urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        sys.exit(
            f"Cannot reach {host} to download the default dataset ({exc}).\n"
            "Point the pipeline at a local copy instead, e.g.\n"
            "  make run PROFILE=quick DATASET_URL=/path/to/EuroSAT.zip\n"
            "(a zip, tar or folder with one sub-folder per class)."
        )


def airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def airflow(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([airflow_bin(), *args], check=True, **kwargs)


def run_ids(store) -> set[str]:
    """The manual runs in the store (`dags test` runs are manual)."""
    return {key.split("/")[1] for key in store.list("runs/manual__")}


def report_url(store, run_id: str | None) -> str | None:
    key = f"runs/{run_id}/report/index.html"
    return store.url(key) if run_id and store.exists(key) else None


def failure_line(store, run_id: str | None) -> str:
    """One line: which task failed first and why (from the run's failure records in the store)."""
    records = failures.read_failures(store, f"runs/{run_id}") if run_id else []
    if not records:
        return "FAILED: the run failed before any task recorded why: the log above says which task and why"
    return failures.summary_line(records)


def run_pipeline(conf: dict[str, Any], verbose: bool = False) -> int:
    """Run the DAG once on `conf` with `airflow dags test`; 0 when every task succeeded.

    The terminal shows one line per task as it starts and ends, the per-epoch training lines and
    warnings (`cnn_tasks.progress`), then the answer; Airflow's own output goes to a log file whose
    path is printed (`verbose`: to the terminal, as Airflow prints it).

    With CNN_PARALLEL_TASKS above 1, mapped tasks run that many at a time: `dags test --use-executor`
    with the LocalExecutor, whose workers need an execution API, so one is served for the run
    (`execution_api`); each training task then uses cores / CNN_PARALLEL_TASKS TensorFlow threads.
    """
    try:
        tasks = runtime.parallel_tasks()
    except ValueError as exc:  # a bad CNN_PARALLEL_TASKS (make run PARALLEL=...)
        raise SettingsError(f"{exc} (make run PARALLEL=N sets it)") from None
    config = PipelineConfig.from_dict(conf, given=set(conf))
    if config.dataset_url == EUROSAT_URL:
        check_reachable(config.dataset_url)
    print(
        f"Running {DAG_ID} ({config.profile} profile) on {config.dataset_url}\n  store: {config.store_uri}", flush=True
    )
    log_path = airflow_home() / "logs" / f"make-run-{time.strftime('%Y%m%dT%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    progress_path = log_path.with_suffix(".progress.jsonl")
    with open(log_path, "w") as log:
        output = {} if verbose else {"stdout": log, "stderr": subprocess.STDOUT}
        setup = {"stdout": subprocess.DEVNULL} if verbose else output  # the set-up commands' chatter
        if not verbose:
            print(f"  Airflow's log: {log_path} (VERBOSE=1 shows it here)", flush=True)
        airflow("db", "migrate", **setup)
        airflow(
            "pools",
            "set",
            deployment().training_pool,
            str(tasks),
            "CNN training tasks",
            **setup,
        )
        store = open_store(config.store_uri, endpoint_url=config.s3_endpoint_url)
        before = run_ids(store)
        command = [airflow_bin(), "dags", "test", DAG_ID, "--conf", json.dumps(conf)]
        with execution_api(tasks) as env, following(progress_path, enabled=not verbose):
            env = (env or os.environ) | {progress.ENV: str(progress_path)}
            # `dags test` exits non-zero when the DAG run ends failed (any task failed: see the DAG docstring).
            failed = (
                subprocess.run(command + (["--use-executor"] if tasks > 1 else []), env=env, **output).returncode != 0
            )
    new = sorted(run_ids(store) - before)
    run_id = new[-1] if new else None
    report = report_url(store, run_id)
    if failed:
        print("\nThe DAG run failed.", file=sys.stderr)
        if run_id is None and not verbose:  # nothing reached the store: Airflow's own words say why
            print(f"The last lines of Airflow's log ({log_path}):", file=sys.stderr)
            print("\n".join(log_path.read_text(errors="replace").splitlines()[-15:]), file=sys.stderr)
        print(failure_line(store, run_id), file=sys.stderr)
        print(f"Partial report: {report}" if report else "No report was written.", file=sys.stderr)
        return 1
    stopped = f"runs/{run_id}/{reuse.STOPPED}"
    if run_id and store.exists(stopped):
        print(f"\nStopped after ingest: {store.get_json(stopped)['why']}")
    else:
        print("\n" + "\n".join(answer(store, run_id)))
    print(f"\nReport: {report}")
    return 0


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or ROOT / ".airflow")


@contextlib.contextmanager
def following(path: Path, enabled: bool = True):
    """Print the run's progress events (`cnn_tasks.progress`) while the block runs."""
    if not enabled:
        yield
        return
    path.touch()
    stop = threading.Event()
    thread = threading.Thread(target=progress.follow, args=(path, lambda line: print(line, flush=True), stop))
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def answer(store, run_id: str | None) -> list[str]:
    """What a run found, from its summary.json: best model and ensemble, the champion decision and
    the warnings."""
    key = f"runs/{run_id}/report/summary.json"
    if not run_id or not store.exists(key):
        return ["The run wrote no summary.json: see the report."]
    results = store.get_json(key).get("results") or {}
    lines = []

    def score(entry: dict) -> str:
        parts = [f"test accuracy {entry['accuracy']:.4f}" if entry.get("accuracy") is not None else "not evaluated"]
        if entry.get("macro_f1") is not None:
            parts.append(f"macro-F1 {entry['macro_f1']:.4f}")
        return ", ".join(parts)

    if best := results.get("best_model"):
        lines.append(f"Best model:    {best['name'].replace('__', ' / ')}: {score(best)}")
    if best := results.get("best_ensemble"):
        lines.append(f"Best ensemble: {best['name']}: {score(best)}")
    if verdict := results.get("champion"):
        reason = f" ({verdict['reason']})" if verdict.get("reason") else ""
        lines.append(f"Champion:      {verdict.get('decision')}{reason}")
    warned = results.get("warnings") or []
    lines.append(f"Warnings:      {len(warned)}" if warned else "Warnings:      none")
    lines += [f"  - {w}" for w in warned]
    return lines


@contextlib.contextmanager
def execution_api(tasks: int, timeout: float = 180.0):
    """For `tasks` > 1: the environment of a LocalExecutor with `tasks` slots, and an Airflow
    api-server on a free local port for its workers (stopped on exit). For 1: None (no executor:
    `dags test` runs each task in its own process, one after another)."""
    if tasks == 1:
        yield None
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(tasks),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(tasks),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__WORKERS": "1",
        # the executor signs the workers' task tokens, the api-server checks them: one secret for both
        "AIRFLOW__API_AUTH__JWT_SECRET": os.environ.get("AIRFLOW__API_AUTH__JWT_SECRET") or secrets.token_urlsafe(32),
        "CNN_PARALLEL_TASKS": str(tasks),
    }
    log_path = airflow_home() / "api-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [airflow_bin(), "api-server", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers stop with it
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/v2/version", server, timeout, log_path)
        print(f"  {tasks} tasks at a time (LocalExecutor; execution API on port {port})", flush=True)
        yield env
    finally:
        stop_process_group(server)


def wait_for_http(url: str, server: subprocess.Popen, timeout: float, log_path: Path) -> None:
    """Poll `url` until it answers; PipelineError naming the log when the server exits or times out."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise PipelineError(f"the Airflow api-server exited with status {server.returncode}: see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(1)
    stop_process_group(server)
    raise PipelineError(f"the Airflow api-server did not answer on {url} within {timeout:.0f} s: see {log_path}")


def stop_process_group(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM to the process's group, SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# ----------------------------------------------------------------------------- store commands
def latest_report(store) -> tuple[str, str] | None:
    """(run id, report url) of the newest run with a report. Run ids are `<kind>__<date>`
    (manual, scheduled, dataset_triggered, ...), so the date after `__` orders them."""
    runs = {key.split("/")[1] for key in store.list("runs/") if key.endswith("/report/index.html")}
    if not runs:
        return None
    run_id = max(runs, key=lambda r: (r.partition("__")[2], r))
    return run_id, store.url(f"runs/{run_id}/report/index.html")


def predict_with_champion(store, folder: Path, out: Path, name: str | None = None) -> int:
    """Classify `folder` with the champion of model `name` (the store's only one when None):
    `predict_with_model` on a local copy of the model and the meta.json it was trained with, which
    holds its classes and image preprocessing."""
    name, record = champion.find(store, name)
    print(f"champion of {name}: {record['model_id']} from run {record['run_id']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = champion.fetch_model(store, record, Path(tmp))
        return predict_with_model(model, folder, out)


def predict_with_model(model_path: Path, folder: Path, out: Path) -> int:
    """Classify `folder` with a model file: class names from the meta.json beside it (else
    class_<i>), with the image fit and size limits it was trained with. Writes `out` and
    <out stem>_rejected.csv."""
    from cnn_tasks import models, predict
    from cnn_tasks.image_folder import classes_beside, preprocessing_beside

    model = models.load_model(model_path)
    classes = classes_beside(model_path, int(model.output_shape[-1]))
    rows, rejected = predict.predict_folder(model, folder, classes, preprocessing_beside(model_path))
    out.write_text(predict.csv_text(rows, predict.PREDICTION_COLUMNS))
    rejected_path = out.with_name(f"{out.stem}_rejected.csv")
    rejected_path.write_text(predict.csv_text(rejected, predict.REJECTED_COLUMNS))
    print(f"{len(rows)} images predicted -> {out}; {len(rejected)} rejected -> {rejected_path}")
    return 0


def visualize_folder(
    model_path: Path, folder: Path, out_dir: Path, seed: int = 42, steps: int = 30, layers: list[str] | None = None
) -> int:
    """Visualise what a model file learned on a folder of images, read exactly as `predict-model`
    reads them (class names from the meta.json beside the model; class sub-folders give labels);
    writes the PNGs and viz.json to `out_dir` and prints the figures' paths."""
    from cnn_tasks import image_folder, models, visualize
    from cnn_tasks.model_layers import input_size

    model = models.load_model(model_path)  # safe_mode: no arbitrary code from the file
    class_names = image_folder.classes_beside(model_path, int(model.outputs[0].shape[-1]))
    images, labels = visualize.load_image_folder(
        folder, input_size(model), class_names, image_folder.preprocessing_beside(model_path)
    )
    summary = visualize.visualize_model(
        model,
        images,
        labels,
        class_names,
        out_dir,
        seed=seed,
        model_id=model_path.stem,
        filter_layers=layers,
        filter_steps=steps,
        images_considered={"source": str(folder)},
    )
    for entry in summary["figures"]:
        print(out_dir / entry["key"])
    return 0


def download_tensorboard_logs(store, run_id: str, dest: Path) -> list[str]:
    """Every model's TensorBoard logs of a run (runs/<run>/models/<model>/tensorboard/) into
    dest/<model>/; returns the model ids. A run id as Airflow shows it is accepted too."""
    prefix = f"runs/{safe_run_id(run_id)}/models/"
    found = set()
    for key in store.list(prefix):
        model, _, rest = key[len(prefix) :].partition("/tensorboard/")
        if rest and "/" not in model:
            store.get_file(key, dest / model / rest)
            found.add(model)
    if not found:
        raise PipelineError(f"{store.url(prefix)} holds no TensorBoard logs: no model of run {run_id} was trained")
    return sorted(found)


def serve_tensorboard(store, run_id: str | None, port: int) -> int:
    """Download a run's logs into a temporary folder and serve them until interrupted."""
    if run_id is None:
        found = latest_report(store)
        if found is None:
            raise PipelineError(f"no run with a report in {store.url('runs/')}: name the run (RUN=<run id>)")
        run_id = found[0]
    with tempfile.TemporaryDirectory(prefix="cnn-tensorboard-") as tmp:
        models = download_tensorboard_logs(store, run_id, Path(tmp))
        print(f"run {run_id}: TensorBoard logs of {', '.join(models)}", flush=True)
        # load_fast=false: TensorBoard's Python loader, no separate data-server process to outlive it
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", tmp, "--port", str(port), "--load_fast=false"]
        server = subprocess.Popen(command)
        try:
            return server.wait()
        except KeyboardInterrupt:  # Ctrl+C, or an interrupt sent to this process alone: stop the server too
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            return 0


# ----------------------------------------------------------------------------- entry point
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cnn_tasks", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check a settings file (YAML or JSON) without running anything")
    v.add_argument("settings", type=Path)
    r = sub.add_parser("run", help="run the pipeline once (what `make run` does)")
    r.add_argument(
        "--conf",
        type=Path,
        default=os.environ.get("CONF") or None,
        help="settings file (YAML or JSON) with any config field; default: $CONF",
    )
    for env, field in OVERRIDES.items():
        r.add_argument(
            f"--{field.replace('_', '-')}",
            dest=env,
            default=os.environ.get(env),
            help=f"overrides {field} from the settings file; default: ${env}",
        )
    r.add_argument(
        "--verbose",
        action="store_true",
        default=os.environ.get("VERBOSE", "").lower() in ("1", "true", "yes"),
        help="show Airflow's own output instead of the progress lines; default: $VERBOSE",
    )
    s = sub.add_parser("predict", help="classify a folder of images with the champion of a store")
    s.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    s.add_argument("--store", required=True, help="file:///path or s3://bucket/prefix")
    s.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV to write")
    s.add_argument("--model-name", default=None, help="whose champion (default: the store's only one)")
    m = sub.add_parser("predict-model", help="classify a folder of images with a model file")
    m.add_argument("model", type=Path, help="a model.keras file (meta.json beside it gives class names)")
    m.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    m.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV to write")
    z = sub.add_parser("visualize", help="visualise what a Keras CNN classifier learned")
    z.add_argument("model", type=Path, help="a .keras classifier taking 0..255 RGB pixels")
    z.add_argument("images", type=Path, help="a folder of images (class sub-folders give labels)")
    z.add_argument("out_dir", type=Path, help="where the PNGs and viz.json go")
    z.add_argument("--seed", type=int, default=42)
    z.add_argument("--steps", type=int, default=30, help="gradient-ascent steps per filter pattern")
    z.add_argument("--layers", nargs="*", help="conv layers for filter patterns (default: first, middle, last)")
    t = sub.add_parser("report", help="print where the latest run's report is")
    t.add_argument("--store", required=True, help="file:///path or s3://bucket/prefix")
    b = sub.add_parser("tensorboard", help="serve a run's TensorBoard logs (downloaded from the store)")
    b.add_argument("run", nargs="?", default=None, help="run id (default: the latest run with a report)")
    b.add_argument("--store", required=True, help="file:///path or s3://bucket/prefix")
    b.add_argument("--port", type=int, default=6006)
    for command in (s, t, b):
        command.add_argument("--s3-endpoint-url", default=None, help="for MinIO or another S3-compatible store")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "validate":
            conf = build_conf(args.settings, overrides={})
            config = PipelineConfig.from_dict(conf, given=set(conf))
            print(
                f"{args.settings}: valid ({config.profile} profile, {len(config.experiments)} experiment(s), "
                f"{config.image_size} px, dataset {config.dataset_url})"
            )
            return 0
        if args.command == "run":
            conf = build_conf(args.conf, {env: getattr(args, env) for env in OVERRIDES})
            return run_pipeline(conf, verbose=args.verbose)
        if args.command == "predict-model":
            return predict_with_model(args.model, args.folder, args.out)
        if args.command == "visualize":
            return visualize_folder(args.model, args.images, args.out_dir, args.seed, args.steps, args.layers)
        store = open_store(args.store, endpoint_url=args.s3_endpoint_url)
        if args.command == "predict":
            return predict_with_champion(store, args.folder, args.out, args.model_name)
        if args.command == "tensorboard":
            return serve_tensorboard(store, args.run, args.port)
        found = latest_report(store)
        if found is None:
            print(f"no report in {args.store} yet", file=sys.stderr)
            return 1
        print(f"{found[0]}: {found[1]}")
        return 0
    except (SettingsError, ConfigError) as exc:
        print(f"Invalid setting: {exc}", file=sys.stderr)
        return 1
    except PipelineError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
