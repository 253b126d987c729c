"""Errors of the reports plugin that a person reads: what happened, why, and what to do. A store
that cannot be read (503) and a run's file that is not there (404: the run is still going, it
failed first, it wrote nothing, or the file is not one of its files) are explained here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnn_tasks.failures import read_failures
from cnn_tasks.runs_page import failure_reason
from cnn_tasks.runs_paths import RUNS
from cnn_tasks.storage import StoreError, StoreUnavailable

if TYPE_CHECKING:
    from cnn_tasks.runs_store import RunStore

UNFINISHED = ("queued", "running")  # Airflow run states before the report is written


class Problem(Exception):
    """An error a person reads: what happened (title), why, and what to do. The plugin answers it
    with `status_code`: browsers get a page (error.html), API clients JSON {"detail": "<title>: <why>"}."""

    def __init__(self, status: int, title: str, why: str, todo: list[str] = (), facts: dict | None = None):
        self.status_code, self.detail, self.headers = status, f"{title}: {why}", None
        super().__init__(self.detail)
        self.title, self.why, self.todo, self.facts = title, why, list(todo), dict(facts or {})
        self.failures: list[str] = []
        self.run_folder: str | None = None


def read_errors() -> tuple[type[BaseException], ...]:
    """What reading a store that is gone or unreachable raises (not the plugin's own bugs)."""
    errors: list[type[BaseException]] = [StoreError, StoreUnavailable, OSError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:  # no S3 support installed: local stores only
        pass
    return tuple(errors)


def unreadable_store(uri: str, conn_id: str, exc: Exception) -> Problem:
    """503: the store could not be opened or read (missing bucket, refused credentials, no network)."""
    if uri.startswith("s3://"):
        todo = [
            "Check that the bucket exists and that the api-server can reach its endpoint.",
            f"The reports page reads S3 with the Airflow connection {conn_id!r} (CNN_AWS_CONN_ID) and the "
            "endpoint CNN_S3_ENDPOINT_URL (else the connection's): check its credentials, then restart the "
            "api-server (it keeps one client per store).",
        ]
    else:
        todo = ["Check that the folder exists on the api-server's machine and that the api-server may read it."]
    return Problem(503, "The artifact store cannot be read", f"Reading {uri} failed: {exc}", todo=todo)


def missing(run: RunStore, key: str) -> Problem:
    """Why `key` of the run is not there, and what to do: the run is still going, it failed
    before writing it, it wrote nothing here at all, or the file is simply not one of its files."""
    try:
        stages = run.store.folders(run.prefix)
        recorded = read_failures(run.store, run.prefix.rstrip("/")) if "failures" in stages else []
        wrote_nothing = not stages and not run.store.exists(f"{run.prefix}config.json")
    except Exception:  # noqa: BLE001 - the page says what it can
        stages, recorded, wrote_nothing = [], [], False
    state = (run.dag_run or {}).get("state")
    facts = run.facts()
    if stages:
        facts["The run wrote"] = ", ".join(f"{s}/" for s in stages)
    if wrote_nothing:
        title, why = "This run wrote nothing to its store", f"{run.store.url(run.prefix)} is empty."
        if state in UNFINISHED:
            todo = [f"The run is {state}: its first task has not written anything yet. Reload this page later."]
        elif state == "failed":
            todo = [
                "The run failed before its first task wrote anything (often an invalid setting): see the "
                "log of its first failed task in the Airflow UI (the run's grid)."
            ]
        else:
            todo = ["Check in the Airflow UI which store the run used (its conf's store_uri) and whether it ran."]
    elif key.startswith(f"{run.prefix}report/"):
        title, why = "This run has no report yet", f"{run.store.url(key)} does not exist."
        if state in UNFINISHED:
            todo = [
                f"The run is still {state}: the report task writes the report at the end of the run. "
                "Reload this page when the run has finished."
            ]
        else:
            todo = [
                "The report task did not write it: see the report task's log in the Airflow UI (the run's "
                f"grid > report > Logs). The run's other files are listed at {RUNS}/{run.run_id}/."
            ]
    elif key.startswith(f"{run.prefix}models/"):
        title, why = "This model's files are not there", f"{run.store.url(key)} does not exist."
        todo = [
            "The train task writes a model's folder while it trains: if it is still running or waiting, "
            "reload this page later; if it failed, see its log in the Airflow UI."
        ]
    else:
        title, why = "Not one of this run's files", f"{run.store.url(key)} does not exist."
        todo = [f"See the run's files at {RUNS}/{run.run_id}/ for what it wrote."]
    problem = Problem(404, title, why, todo, facts)
    problem.failures = [failure_reason(r) for r in recorded]
    problem.run_folder = f"{RUNS}/{run.run_id}/" if stages else None
    return problem
