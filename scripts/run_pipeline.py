"""`make run`: validate the settings, prepare a project-local Airflow, run the DAG once with
`airflow dags test`, and print where the report is.

Exit status 0 and last line `Report: <url>` when every task succeeded. When any task failed the
DAG run ends `failed`, `airflow dags test` exits non-zero, and this exits 1 with, as its last
lines, `FAILED: <task>: <error type>: <message>` (the first failure; the others are counted) and
`Partial report: <url>`.

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

from cnn_tasks import DAG_ID, failures  # noqa: E402
from cnn_tasks.config import EUROSAT_URL, ConfigError, PipelineConfig  # noqa: E402
from cnn_tasks.storage import open_store  # noqa: E402


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


def main() -> None:
    conf = build_conf()
    try:
        config = PipelineConfig.from_dict(conf)
    except ConfigError as exc:
        sys.exit(f"Invalid setting: {exc}")
    if config.dataset_url == EUROSAT_URL:
        check_reachable(config.dataset_url)
    print(f"Running {DAG_ID} ({config.profile} profile) on {config.dataset_url}\n  store: {config.store_uri}",
          flush=True)
    airflow("db", "migrate", stdout=subprocess.DEVNULL)
    airflow("pools", "set", os.environ.get("CNN_TRAINING_POOL", "training"), "2", "CNN training tasks",
            stdout=subprocess.DEVNULL)
    store = open_store(config.store_uri, endpoint_url=config.s3_endpoint_url)
    before = run_ids(store)
    # `dags test` exits non-zero when the DAG run ends failed (any task failed: see the DAG docstring).
    failed = subprocess.run([airflow_bin(), "dags", "test", DAG_ID, "--conf", json.dumps(conf)]).returncode != 0
    new = sorted(run_ids(store) - before)
    run_id = new[-1] if new else None
    report = report_url(store, run_id)
    if failed:
        print("\nThe DAG run failed.", file=sys.stderr)
        print(failure_line(store, run_id), file=sys.stderr)
        print(f"Partial report: {report}" if report else "No report was written.", file=sys.stderr)
        sys.exit(1)
    print(f"\nReport: {report}")


if __name__ == "__main__":
    main()
