"""`make run`: validate the settings, prepare a project-local Airflow, run the DAG once with
`airflow dags test`, and print where the report is.

Settings come from the environment (the Makefile passes them): PROFILE, DATASET_URL,
DATASET_CHECKSUM, UNLABELLED_URL, STORE_URI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnn_tasks.config import EUROSAT_URL, ConfigError, PipelineConfig  # noqa: E402
from cnn_tasks.storage import open_store  # noqa: E402

DAG_ID = "cnn_image_classification"


def build_conf() -> dict:
    """The DAG run's conf: only what the user set; everything else stays at the Param defaults."""
    env = lambda name: os.environ.get(name, "").strip()  # noqa: E731
    conf: dict = {"profile": env("PROFILE") or "standard", "store_uri": env("STORE_URI") or f"file://{ROOT}/artifacts"}
    if env("DATASET_URL"):
        url = env("DATASET_URL")
        # A local path becomes absolute so Airflow's working directory does not matter.
        conf["dataset_url"] = url if "://" in url else str(Path(url).expanduser().resolve())
    if env("DATASET_CHECKSUM"):
        conf["dataset_checksum"] = env("DATASET_CHECKSUM")
    if env("UNLABELLED_URL"):
        conf["unlabelled_url"] = env("UNLABELLED_URL")
    return conf


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


def airflow(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("airflow")), *args], check=True, **kwargs)


def latest_report(store_uri: str) -> str | None:
    """The newest manual run's report (`dags test` runs are manual; run ids sort by time)."""
    store = open_store(store_uri)
    reports = [k for k in store.list("runs/manual__") if k.endswith("/report/index.html")]
    return store.url(max(reports)) if reports else None


def main() -> None:
    conf = build_conf()
    try:
        config = PipelineConfig.from_dict(conf)
    except ConfigError as exc:
        sys.exit(f"Invalid setting: {exc}")
    if config.dataset_url == EUROSAT_URL:
        check_reachable(config.dataset_url)
    print(f"Running {DAG_ID} ({config.profile} profile) on {config.dataset_url}\n  store: {config.store_uri}")
    airflow("db", "migrate", stdout=subprocess.DEVNULL)
    airflow("pools", "set", os.environ.get("CNN_TRAINING_POOL", "training"), "2", "CNN training tasks",
            stdout=subprocess.DEVNULL)
    try:
        airflow("dags", "test", DAG_ID, "--conf", json.dumps(conf))
    except subprocess.CalledProcessError:
        report = latest_report(config.store_uri)
        sys.exit("\nThe run failed: the first failed task's log above says why."
                 + (f"\nPartial report (sections that did not run say so): {report}" if report else ""))
    print(f"\nReport: {latest_report(config.store_uri)}")


if __name__ == "__main__":
    main()
