"""Airflow UI additions for the CNN pipeline: a report browser and links to each run's report.

What the plugin adds (Airflow 3 plugin interfaces, loaded by the api-server):

* ``fastapi_apps``: a FastAPI app mounted at ``/cnn-reports`` that lists the champions per model
  name, each with its metric over time as a chart, and past runs (from
  ``runs/*/report/summary.json``), newest first, with each run's status (a failed run shows FAILED
  and the first failure its report recorded); compares two runs side by side; and serves a run's
  files (report HTML, figures, CSVs, folder listings grouped by stage) straight from the run's
  artifact store (local folder or S3/MinIO).
* ``external_views``: a "CNN reports" page in the UI's Browse menu that frames that app.
* ``global_operator_extra_links``: a "Report" button on every task of the pipeline DAG and a
  "Model folder" button on training tasks.

Which store a run's files come from: the trigger form lets a run choose its store (the
``store_uri`` Param), so ``/runs/<run id>/...`` looks the run up in Airflow's database and follows
the ``store_uri`` of its conf; a run without one (scheduled, or a conf that leaves it out), or one
no longer in the database, reads the deployment's store. A run's conf is user input, so its store
is followed only where the deployment's own settings reach: an S3 store is read with the
deployment's connection and endpoint (a conf naming another S3 endpoint is refused, the
deployment's credentials are never sent elsewhere, and the conf's ``aws_conn_id`` is never used);
a local folder only when it is the deployment's store, lies inside it, or lies inside a folder
listed in CNN_REPORT_LOCAL_STORES. Only keys under the run's own ``runs/<run id>/`` are served
from a store that is not the deployment's.

Errors a browser sees are pages that say what happened and what to do (no run report yet, a store
that cannot be read or is not allowed), with a 4xx/5xx status; API clients get JSON.

Security: every route depends on Airflow's own ``requires_access_dag`` (the api-server's JWT from
the UI's ``_token`` cookie or an ``Authorization: Bearer`` header, validated by the configured
auth manager, then "may read runs of the DAG"). Only keys under ``runs/`` are ever served.

Settings come from the same environment variables as the DAG's Params: CNN_STORE_URI,
CNN_S3_ENDPOINT_URL and CNN_AWS_CONN_ID (S3 credentials come from that Airflow connection), and
CNN_REPORT_LOCAL_STORES (comma-separated local folders, as paths or file:// URIs, whose runs'
stores the plugin may also read).
"""

from __future__ import annotations

import functools
import json
import logging
import mimetypes
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import jinja2
from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.core_api.security import DagAccessEntity, requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cnn_tasks import DAG_ID
from cnn_tasks.champion import champions, history
from cnn_tasks.config import PipelineConfig
from cnn_tasks.context import safe_run_id
from cnn_tasks.failures import read_failures
from cnn_tasks.storage import StoreError, StoreUnavailable, content_type_for, make_s3_client, open_store

log = logging.getLogger(__name__)

TRAIN_TASK = "train"
URL_PREFIX = "/cnn-reports"
RUNS = "runs"
MAX_RUNS = 200  # newest runs shown on the index page
# Stored files are shown without scripts or forms (HTML, SVG): a file written into the bucket
# must not act on the Airflow API with the viewer's session. Same-origin keeps figures loading.
FILE_CSP = "sandbox allow-same-origin allow-popups allow-popups-to-escape-sandbox allow-downloads"
_SAFE_SEGMENT = re.compile(r"[^/\\\x00]+")
_RUN_ID = re.compile(r"[A-Za-z0-9_.\-]+")  # what context.safe_run_id leaves
SUCCEEDED, FAILED, STOPPED = "succeeded", "failed", "stopped"
UNFINISHED = ("queued", "running")  # Airflow run states before the report is written


# --------------------------------------------------------------------------- settings and store
def store_settings() -> tuple[str, str | None, str]:
    """(store URI, S3 endpoint, Airflow connection id) from the deployment's environment."""
    return (
        os.environ.get("CNN_STORE_URI") or PipelineConfig.model_fields["store_uri"].default,
        os.environ.get("CNN_S3_ENDPOINT_URL") or None,
        os.environ.get("CNN_AWS_CONN_ID") or "aws_default",
    )


def _s3_access(endpoint_url: str | None, aws_conn_id: str):
    """(endpoint, boto3 session) from the Airflow connection: its credentials, and its endpoint
    when CNN_S3_ENDPOINT_URL is unset."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=aws_conn_id)
    return endpoint_url or hook.conn_config.get_service_endpoint_url("s3"), hook.get_session()


# One store (and S3 client) per setting: restart the api-server after changing the connection.
@functools.lru_cache(maxsize=16)
def _open_store(uri: str, endpoint_url: str | None, aws_conn_id: str):
    s3_client = None
    if uri.startswith("s3://"):
        endpoint_url, session = _s3_access(endpoint_url, aws_conn_id)
        s3_client = make_s3_client(endpoint_url, session=session)
    return open_store(uri, endpoint_url=endpoint_url, s3_client=s3_client)


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a store that is gone or unreachable raises (not the plugin's own bugs)."""
    errors: list[type[BaseException]] = [StoreError, StoreUnavailable, OSError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:  # no S3 support installed: local stores only
        pass
    return tuple(errors)


def read_deployment_store(read):
    """`read(store)` on the deployment's store; a 503 page when the store fails midway."""
    store = get_store()
    try:
        return read(store)
    except _read_errors() as exc:
        raise unreadable_store(store_settings()[0], store_settings()[2], exc) from None


def get_store():
    """The deployment's store (CNN_STORE_URI)."""
    uri, endpoint, conn_id = store_settings()
    try:
        return _open_store(uri, endpoint, conn_id)
    except Exception as exc:  # noqa: BLE001 - StoreError, StoreUnavailable, botocore and connection errors alike
        raise unreadable_store(uri, conn_id, exc) from None


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


def local_path(uri: str) -> Path | None:
    """The folder of a file:// URI or a plain path (relative ones against the cwd, as open_store
    does), links resolved; None for any other scheme."""
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        raw = parsed.netloc + parsed.path
    elif "://" in uri:
        return None
    else:
        raw = uri
    return Path(raw or ".").resolve()


def local_roots() -> list[Path]:
    """Local folders whose runs' stores may be read: the deployment's store, when local, and the
    folders listed in CNN_REPORT_LOCAL_STORES."""
    entries = [store_settings()[0], *os.environ.get("CNN_REPORT_LOCAL_STORES", "").split(",")]
    return [path for entry in entries if entry.strip() and (path := local_path(entry.strip())) is not None]


def same_store(a: str, b: str) -> bool:
    """Whether two store URIs name the same store (a trailing '/', './' or a link aside)."""
    if a.startswith("s3://") and b.startswith("s3://"):
        first, second = urlparse(a), urlparse(b)
        return (first.netloc, first.path.strip("/")) == (second.netloc, second.path.strip("/"))
    first, second = local_path(a), local_path(b)
    return first is not None and first == second


def _same_endpoint(a: str | None, b: str | None) -> bool:
    return (a or "").strip().rstrip("/").lower() == (b or "").strip().rstrip("/").lower()


# --------------------------------------------------------------------------- the run's own store
class Problem(HTTPException):
    """An error a person reads: what happened (title), why, and what to do. Browsers get it as a
    page (error.html), API clients as JSON {"detail": "<title>: <why>"}."""

    def __init__(self, status: int, title: str, why: str, todo: list[str] = (), facts: dict | None = None):
        super().__init__(status, f"{title}: {why}")
        self.title, self.why, self.todo, self.facts = title, why, list(todo), dict(facts or {})
        self.failures: list[str] = []
        self.run_folder: str | None = None


@dataclass
class RunStore:
    """Where one run's files are: the store, and how it was chosen."""

    run_id: str  # the store's form of the id (runs/<run_id>/)
    uri: str
    chosen_by: str  # how the store was chosen, in words
    own: bool  # the run's conf named this store (not the deployment's)
    dag_run: dict | None = None  # {"run_id", "state", "conf"} from Airflow's database
    store: object = field(default=None, repr=False)

    @property
    def prefix(self) -> str:
        return f"{RUNS}/{self.run_id}/"

    def facts(self) -> dict:
        facts = {"Run": self.run_id}
        if self.dag_run:
            facts |= {"Airflow run": self.dag_run["run_id"], "Run state": self.dag_run.get("state") or "unknown"}
        return facts | {"Store": self.uri, "Store chosen by": self.chosen_by}


def find_dag_run(run_id: str) -> dict | None:
    """The pipeline's DAG run whose store folder is runs/<run_id>/ ({"run_id", "state", "conf"}),
    newest first; None when Airflow's database has none (or cannot be read)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    columns = select(DagRun.run_id, DagRun.state, DagRun.conf).where(DagRun.dag_id == DAG_ID)
    # safe_run_id turns each run of other characters (':', '+', '~') into one '_' and strips the
    # ends: every '_' may stand for several characters (LIKE's '%'); the ids hold no '%'.
    pattern = "%" + run_id.replace("_", "%") + "%"
    try:
        with create_session() as session:
            rows = (
                session.execute(columns.where(DagRun.run_id == run_id)).all()
                or session.execute(
                    columns.where(DagRun.run_id.like(pattern)).order_by(DagRun.id.desc()).limit(200)
                ).all()
            )
    except Exception as exc:  # noqa: BLE001 - no database: the deployment's store, as before
        log.warning("cnn_reports: cannot look up run %s in Airflow's database: %s", run_id, exc)
        return None
    for dag_run_id, state, conf in rows:
        if safe_run_id(dag_run_id) == run_id:
            state = getattr(state, "value", state)
            return {"run_id": dag_run_id, "state": str(state) if state else None, "conf": conf or {}}
    return None


def choose_store(run_id: str, dag_run: dict | None) -> RunStore:
    """The run's own store (store_uri of its conf) where the deployment may read it, else the
    deployment's store; a Problem (403/404) when the run's store may not or cannot be read."""
    uri = store_settings()[0]
    deployment = RunStore(run_id, uri, "", own=False, dag_run=dag_run)
    conf = (dag_run or {}).get("conf") or {}
    chosen = conf.get("store_uri") if isinstance(conf, dict) else None
    if dag_run is None:
        deployment.chosen_by = "the deployment's CNN_STORE_URI (the run is not in Airflow's database)"
        return deployment
    if not isinstance(chosen, str) or not chosen.strip() or same_store(chosen.strip(), uri):
        deployment.chosen_by = "the deployment's CNN_STORE_URI (the run's conf names no other store)"
        return deployment
    chosen = chosen.strip()
    run = RunStore(run_id, chosen, f"store_uri in the conf of Airflow run {dag_run['run_id']}", True, dag_run)
    if chosen.startswith("s3://"):
        named = conf.get("s3_endpoint_url")
        if isinstance(named, str) and named.strip() and not _same_endpoint(named, _deployment_endpoint()):
            raise refused(
                run,
                f"The run wrote to {chosen} through the S3 endpoint {named}; this deployment reads S3 only "
                f"through its own endpoint ({_deployment_endpoint() or 'AWS'}), so its credentials are "
                "never sent elsewhere.",
            )
        return run
    path = local_path(chosen)
    if path is None:
        raise refused(run, f"{chosen!r} is not a store URI (file:// or s3://).")
    if not any(path.is_relative_to(root) for root in local_roots()):
        raise refused(
            run,
            f"The run wrote to the local folder {path}, which is neither the deployment's store nor inside "
            "a folder listed in CNN_REPORT_LOCAL_STORES: a run's conf cannot open other folders of the "
            "api-server.",
            f"To serve it, add the folder (or one above it) to CNN_REPORT_LOCAL_STORES of the api-server "
            f"and restart it; or open {path}/{RUNS}/{run_id}/report/index.html on the machine that ran it.",
        )
    if not path.is_dir():  # checked before opening: opening a local store creates its folder
        raise Problem(
            404,
            "The run's store is not on this machine",
            f"The run wrote to the local folder {path}, which does not exist on the api-server.",
            todo=[
                "A file:// store is a folder of the worker that ran the task: the api-server reads it only when "
                "it shares that folder (a shared volume). Use an S3 store for runs you want to browse here."
            ],
            facts=run.facts(),
        )
    return run


def _deployment_endpoint() -> str | None:
    """The S3 endpoint the deployment reads: CNN_S3_ENDPOINT_URL, else its connection's."""
    _, endpoint, conn_id = store_settings()
    if endpoint:
        return endpoint
    try:
        return _s3_access(None, conn_id)[0]
    except Exception:  # noqa: BLE001 - no connection: the default AWS endpoint
        return None


def refused(run: RunStore, why: str, todo: str | None = None) -> Problem:
    return Problem(
        403,
        "This run's store is not one the reports page may read",
        why,
        todo=[
            todo
            or "Ask the deployment's administrator to make the store readable with the deployment's own "
            "settings (CNN_STORE_URI, CNN_S3_ENDPOINT_URL, CNN_AWS_CONN_ID), or read the report in the store directly.",
        ],
        facts=run.facts(),
    )


def open_run_store(run_id: str) -> RunStore:
    """The store of run `run_id` (its id in the store, runs/<run_id>/), opened; a Problem when it
    cannot be."""
    run = choose_store(run_id, find_dag_run(run_id))
    _, endpoint, conn_id = store_settings()
    try:
        run.store = _open_store(run.uri, endpoint, conn_id)
    except Exception as exc:  # noqa: BLE001 - StoreError, StoreUnavailable, botocore and connection errors alike
        problem = unreadable_store(run.uri, conn_id, exc)
        named = ((run.dag_run or {}).get("conf") or {}).get("aws_conn_id")
        if run.own and isinstance(named, str) and named and named != conn_id:
            problem.todo.append(
                f"The run wrote with the connection {named!r}; the reports page reads only with the "
                f"deployment's {conn_id!r}, which must be allowed to read {run.uri} too."
            )
        problem.facts = run.facts()
        raise problem from None
    return run


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
    problem.failures = [_reason(r) for r in recorded]
    problem.run_folder = f"{RUNS}/{run.run_id}/" if stages else None
    return problem


# --------------------------------------------------------------------------- keys and objects
def run_key(path: str) -> str:
    """The store key for `path` (relative to runs/), or 400 if it could leave runs/."""
    parts = path.split("/")
    if path.endswith("/"):
        parts = parts[:-1]  # a folder
    for part in parts:
        # Each segment arrives URL-decoded once; '%' left over means double encoding (%252e...).
        if not _SAFE_SEGMENT.fullmatch(part) or part in (".", "..") or unquote(part) != part:
            raise HTTPException(400, "invalid path")
    return f"{RUNS}/{path}"


def checked_run_id(run_id: str) -> str:
    """A run id as the store names it (runs/<run_id>/), or 400."""
    if not _RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
        raise HTTPException(400, f"invalid run id {run_id!r}")
    return run_id


def summaries(store) -> list[tuple[datetime, str]]:
    """(last modified, run id) of every runs/<id>/report/summary.json, newest first."""
    found = []
    for run_id in store.folders(f"{RUNS}/"):
        try:  # one small request per run, not a listing of every shard and checkpoint under runs/
            found.append((store.modified(f"{RUNS}/{run_id}/report/summary.json"), run_id))
        except StoreError:
            continue  # no report (yet)
    return sorted(found, reverse=True)


def object_response(run: RunStore, key: str) -> Response:
    """Stream one object of the run with its content type; a Problem when it is missing or unreadable."""
    media_type = content_type_for(key)
    if media_type == "application/octet-stream":
        media_type = mimetypes.guess_type(key)[0] or media_type
    try:
        obj = run.store.stream(key)  # a local link leading out of the store counts as missing
    except StoreError:
        raise missing(run, key) from None
    except _read_errors() as exc:
        problem = unreadable_store(run.uri, store_settings()[2], exc)
        problem.facts = run.facts()
        raise problem from None
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": FILE_CSP,
        "Content-Length": str(obj.size),
    }
    return StreamingResponse(obj.chunks, media_type=media_type, headers=headers)


# --------------------------------------------------------------------------- times
def readable_time(value) -> str:
    """One format for every time on the pages: '2026-12-04 12:51 UTC'. Takes datetimes, ISO
    strings and the compact stamps of champion records ('20261204T125101730963Z')."""
    if value in (None, ""):
        return "–"
    when = value if isinstance(value, datetime) else None
    text = str(value).strip()
    for layout in ("%Y%m%dT%H%M%S%fZ", "%Y%m%dT%H%M%SZ"):
        if when is None:
            try:
                when = datetime.strptime(text, layout).replace(tzinfo=UTC)
            except ValueError:
                pass
    if when is None:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return text  # not a time after all: shown as written
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


# --------------------------------------------------------------------------- summaries
def _reason(record: dict) -> str:
    """'train [baseline / balanced]: TrainingDivergedError: ...' (failures.reason, for records
    that may lack a field)."""
    return ": ".join(str(record.get(k)) for k in ("task", "error", "message") if record.get(k))


def run_status(summary: dict) -> tuple[str, str | None]:
    """(succeeded | failed | stopped, its one-line cause) from what the run's report recorded."""
    recorded = [f for f in summary.get("failures") or [] if isinstance(f, dict)]
    if recorded:
        cause = _reason(recorded[0]) or "a task failed"
        more = [str(f.get("task")) for f in recorded[1:] if f.get("task")]
        return FAILED, cause + (f" (also failed: {', '.join(more)})" if more else "")
    stopped = (summary.get("results") or {}).get("stopped")
    if stopped:
        return STOPPED, str(stopped)
    return SUCCEEDED, None


def decision(promotion: dict) -> tuple[str | None, str | None]:
    """(promoted | not promoted | None, the reason without a repeat of that label)."""
    promoted, reason = promotion.get("promoted"), promotion.get("reason")
    label = "promoted" if promoted is True else "not promoted" if promoted is False else None
    if label and isinstance(reason, str) and reason.lower().startswith(label + ":"):
        reason = reason[len(label) + 1 :].strip()
    return label, reason or None


def run_row(run_id: str, modified: datetime, summary: dict) -> dict:
    """The index-page facts of one run: status, best model by test macro-F1, the champion decision."""
    tests = {m: (v or {}).get("test") or {} for m, v in (summary.get("models") or {}).items()}
    scored = [m for m, test in tests.items() if test]  # a run that failed before evaluating has none
    best = max(scored, key=lambda m: (tests[m].get("macro_f1") or 0, tests[m].get("accuracy") or 0), default=None)
    champion = summary.get("promotion") or {}
    status, cause = run_status(summary)
    label, note = decision(champion)
    return {
        "run_id": run_id,
        "modified": modified.isoformat(timespec="seconds"),
        "status": status,
        "cause": cause,
        "models": len(tests),
        "best_model": best,
        "accuracy": tests[best].get("accuracy") if best else None,
        "macro_f1": tests[best].get("macro_f1") if best else None,
        "promoted": champion.get("promoted"),
        "reason": champion.get("reason"),
        "decision": label,
        "decision_note": note,
        "report": f"{RUNS}/{run_id}/report/index.html",
    }


def list_runs(store, limit: int = MAX_RUNS) -> list[dict]:
    rows = []
    for modified, run_id in summaries(store)[:limit]:
        try:  # not through contracts.Summary: runs written by older versions are listed with what they have
            summary = store.get_json(f"{RUNS}/{run_id}/report/summary.json")
        except (StoreError, ValueError) as exc:  # half-written or malformed: say so, keep going
            summary = {"promotion": {"reason": f"summary.json unreadable: {exc}"}}
        rows.append(run_row(run_id, modified, summary))
    return rows


def compare_choice(rows: list[dict]) -> dict:
    """The runs the compare form starts on: the two newest that succeeded with scores (never a
    failed run); None where there are not enough."""
    scored = [r["run_id"] for r in rows if r["status"] == SUCCEEDED and r["best_model"]]
    return {"b": scored[0] if scored else None, "a": scored[1] if len(scored) > 1 else None}


# --------------------------------------------------------------------------- champions
CHART_W, CHART_H, CHART_PAD = 320, 90, 8


def history_points(records: list[dict]) -> list[dict]:
    """The champion metric at each promotion, placed on a CHART_W x CHART_H chart (oldest left)."""
    values = [r.get("value") for r in records]
    known = [v for v in values if isinstance(v, (int, float))]
    if not known:
        return []
    low, high = min(known), max(known)
    span = (high - low) or 1.0
    step = (CHART_W - 2 * CHART_PAD) / max(1, len(records) - 1)
    points = []
    for i, (record, value) in enumerate(zip(records, values)):
        if not isinstance(value, (int, float)):
            continue
        points.append(
            {
                "x": round(CHART_PAD + i * step, 1),
                "y": round(CHART_H - CHART_PAD - (value - low) / span * (CHART_H - 2 * CHART_PAD), 1),
                "value": value,
                "run_id": record.get("run_id"),
                "promoted_at": record.get("promoted_at"),
            }
        )
    return points


def list_champions(store) -> list[dict]:
    """One row per model name: its current champion and its champion metric over time."""
    rows = []
    for name, current in sorted(champions(store, include_legacy=True).items()):
        past = history(store, name) or [current]
        rows.append(
            {
                "model_name": name,
                "model_id": current.get("model_id"),
                "run_id": current.get("run_id"),
                "metric": current.get("metric"),
                "value": current.get("value"),
                "promoted_at": current.get("promoted_at"),
                "classes": len(current.get("classes") or []),
                "promotions": len(past),
                "history": history_points(past),
            }
        )
    return rows


# --------------------------------------------------------------------------- comparing runs
def read_summary(run_id: str) -> tuple[dict, RunStore]:
    """The run's report/summary.json from the run's own store, and that store."""
    run = open_run_store(checked_run_id(run_id))
    key = f"{run.prefix}report/summary.json"
    try:
        return run.store.get_json(key), run
    except StoreError:
        raise missing(run, key) from None
    except ValueError as exc:
        raise Problem(
            404, "This run's report summary is unreadable", f"{run.store.url(key)}: {exc}", facts=run.facts()
        ) from None


def class_change(first: dict, second: dict) -> str | None:
    """How B's classes differ from A's, in words; None when the same (or unknown)."""
    a, b = ((s.get("dataset") or {}).get("classes") for s in (first, second))
    if not isinstance(a, list) or not isinstance(b, list) or set(a) == set(b):
        return None
    added, removed = [c for c in b if c not in a], [c for c in a if c not in b]
    parts = [
        f"B adds {', '.join(map(str, added))}" if added else "",
        f"B drops {', '.join(map(str, removed))}" if removed else "",
    ]
    return f"A has {len(a)} classes, B {len(b)}: " + "; ".join(p for p in parts if p)


def compare_runs(a: str, b: str) -> dict:
    """Two runs side by side: each model's and ensemble's test scores, the decisions, changed settings."""
    (first, run_a), (second, run_b) = read_summary(a), read_summary(b)

    def scores(summary: dict) -> dict[str, dict]:
        found = {m: (v or {}).get("test") or {} for m, v in (summary.get("models") or {}).items()}
        for row in (summary.get("ensembles") or {}).get("comparison") or []:
            if row.get("kind") != "model":
                found[row["name"]] = row
        return found

    left, right = scores(first), scores(second)
    rows = []
    for name in sorted(set(left) | set(right)):
        row = {"name": name}
        for metric in ("accuracy", "macro_f1"):
            x, y = left.get(name, {}).get(metric), right.get(name, {}).get(metric)
            row[metric] = (x, y, y - x if isinstance(x, (int, float)) and isinstance(y, (int, float)) else None)
        rows.append(row)
    config_a, config_b = first.get("config") or {}, second.get("config") or {}
    changed = [
        {"setting": k, "a": json.dumps(config_a.get(k)), "b": json.dumps(config_b.get(k))}
        for k in sorted(set(config_a) | set(config_b))
        if config_a.get(k) != config_b.get(k)
    ]
    runs = []
    for run_id, summary, run in ((a, first, run_a), (b, second, run_b)):
        status, cause = run_status(summary)
        label, note = decision(summary.get("promotion") or {})
        runs.append(
            {"run_id": run_id, "status": status, "cause": cause, "decision": label, "note": note, "store": run.uri}
        )
    return {
        "a": a,
        "b": b,
        "runs": runs,
        "classes_differ": class_change(first, second),
        "rows": rows,
        "changed": changed,
    }


# --------------------------------------------------------------------------- HTML
def _metric(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


PAGES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("cnn_reports_templates")),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
PAGES.filters["metric"] = _metric
PAGES.filters["when"] = readable_time


def _page(template: str, status_code: int = 200, **values) -> HTMLResponse:
    return HTMLResponse(PAGES.get_template(template).render(**values), status_code=status_code)


def index_page(rows: list[dict], champion_rows: list[dict], base: str, store_uri: str) -> HTMLResponse:
    return _page(
        "index.html",
        title="CNN pipeline runs",
        rows=rows,
        champions=champion_rows,
        chart={"w": CHART_W, "h": CHART_H},
        base=base,
        store_uri=store_uri,
        pick=compare_choice(rows),
    )


# A run's top folders in pipeline order; under these, one section per model or experiment.
STAGES = ("data", "checks", "models", "viz", "eval", "reuse", "report", "failures", "timings")
PER_MODEL = ("checks", "models", "viz", "eval")
OPEN_UP_TO = 30  # sections of a listing with at most this many files all start open; else only these:
ALWAYS_OPEN = ("", "report", "failures")  # the folder's own files, the report, what failed


def file_groups(keys: list[str], folder: str, base: str) -> list[dict]:
    """The files under `folder`, one folded section per subfolder (at a run's top: per stage, and
    per model or experiment under models/, viz/, eval/ and checks/); the folder's own files first."""
    at_run_top = folder.count("/") == 2  # runs/<id>/
    groups: dict[str, list[dict]] = {}
    for key in keys:
        name = key[len(folder) :]
        parts = name.split("/")
        depth = 2 if at_run_top and parts[0] in PER_MODEL and len(parts) > 2 else 1
        group = "/".join(parts[:depth]) if len(parts) > 1 else ""
        shown = name[len(group) + 1 :] if group else name
        groups.setdefault(group, []).append({"href": f"{base}/{quote(key)}", "name": shown})

    def order(group: str) -> tuple:
        top = group.split("/")[0]
        return (bool(group), STAGES.index(top) if top in STAGES else len(STAGES), group)

    return [
        {
            "name": group or "(this folder)",
            "href": f"{base}/{quote(folder + group)}/" if group else None,
            "files": files,
            "open": len(keys) <= OPEN_UP_TO or group in ALWAYS_OPEN,
        }
        for group, files in sorted(groups.items(), key=lambda item: order(item[0]))
    ]


def folder_page(run: RunStore, key: str, base: str) -> HTMLResponse:
    try:
        keys = run.store.list(key)
    except _read_errors() as exc:
        problem = unreadable_store(run.uri, store_settings()[2], exc)
        problem.facts = run.facts()
        raise problem from None
    if not keys:
        raise missing(run, key)
    return _page(
        "folder.html",
        title=key,
        base=base,
        groups=file_groups(keys, key, base),
        count=len(keys),
        store=run.uri if run.own else None,
    )


STATUS_TITLES = {
    400: "This address is not valid",
    403: "You may not open this page",
    404: "Not found",
    422: "This address is missing something",
    503: "The artifact store cannot be read",
}


def error_page(exc: StarletteHTTPException, base: str) -> HTMLResponse:
    """A page saying what went wrong and what to do, with the error's status."""
    if isinstance(exc, Problem):
        title, why, todo, facts = exc.title, exc.why, exc.todo, exc.facts
        failures, run_folder = exc.failures, exc.run_folder
    else:
        title = STATUS_TITLES.get(exc.status_code, f"Error {exc.status_code}")
        why, todo, facts, failures, run_folder = str(exc.detail), [], {}, [], None
    return _page(
        "error.html",
        status_code=exc.status_code,
        title=title,
        why=why,
        todo=todo,
        facts=facts,
        failures=failures,
        run_folder=run_folder,
        base=base,
        status=exc.status_code,
    )


# --------------------------------------------------------------------------- the app
# Same rule as the DAG run pages of the UI: an authenticated user who may read this DAG's runs.
can_read_runs = requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID)

app = FastAPI(title="CNN pipeline reports", dependencies=[Depends(can_read_runs)])


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


@app.exception_handler(StarletteHTTPException)
async def _readable_errors(request: Request, exc: StarletteHTTPException):
    """A browser without a session goes to the login page (and comes back); other errors are a
    page for a browser. API clients get 401 and JSON."""
    if exc.status_code == 401 and _wants_html(request):
        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
    if _wants_html(request) and exc.status_code != 401:
        return error_page(exc, _base(request))
    return await http_exception_handler(request, exc)


@app.exception_handler(RequestValidationError)
async def _readable_validation_errors(request: Request, exc: RequestValidationError):
    if _wants_html(request):
        why = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        return error_page(HTTPException(422, why), _base(request))
    return await request_validation_exception_handler(request, exc)


def _base(request: Request) -> str:
    """Where this app is mounted, as the browser sees it (e.g. /cnn-reports)."""
    return request.scope.get("root_path", "").rstrip("/")


@app.get("/", response_class=HTMLResponse)
def index(request: Request, limit: int = Query(MAX_RUNS, ge=1, le=10_000)):
    rows, champion_rows = read_deployment_store(lambda store: (list_runs(store, limit), list_champions(store)))
    return index_page(rows, champion_rows, _base(request), store_settings()[0])


@app.get("/api/runs")
def runs_json(limit: int = Query(MAX_RUNS, ge=1, le=10_000)) -> list[dict]:
    return read_deployment_store(lambda store: list_runs(store, limit))


@app.get("/api/champions")
def champions_json() -> list[dict]:
    return read_deployment_store(list_champions)


@app.get("/compare", response_class=HTMLResponse)
def compare(request: Request, a: str = Query(..., min_length=1), b: str = Query(..., min_length=1)):
    comparison = compare_runs(a, b)
    return _page("compare.html", title=f"{a} against {b}", base=_base(request), c=comparison)


@app.get("/runs/{path:path}")
def run_file(path: str, request: Request):
    if not path:
        return RedirectResponse(f"{_base(request)}/")
    key = run_key(path)
    run_id = key.split("/")[1]
    if key.count("/") == 1:  # runs/<id>: the run's folder
        return RedirectResponse(f"{_base(request)}/{quote(key)}/")
    run = open_run_store(checked_run_id(run_id))  # only keys under runs/<run_id>/ of that store
    if key.endswith("/"):
        return folder_page(run, key, _base(request))
    return object_response(run, key)


# --------------------------------------------------------------------------- extra links
def _ui_url(path: str) -> str:
    from airflow.api_fastapi.app import API_ROOT_PATH  # honours [api] base_url sub-paths

    return f"{API_ROOT_PATH.rstrip('/')}{URL_PREFIX}/{path}"


def _model_id(ti_key) -> str | None:
    """The model a mapped `train` task instance trained: its XCom return value's model_id."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        value = session.scalar(
            XComModel.get_many(
                key="return_value",
                run_id=ti_key.run_id,
                dag_ids=ti_key.dag_id,
                task_ids=ti_key.task_id,
                map_indexes=ti_key.map_index,
            ).with_only_columns(XComModel.value)
        )
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value.get("model_id") if isinstance(value, dict) else None


def _is_train(task_id: str) -> bool:
    return task_id == TRAIN_TASK or task_id.endswith(f".{TRAIN_TASK}")  # also inside a task group


class RunReportLink(BaseOperatorLink):
    """Opens the run's HTML report, on every task of the pipeline DAG."""

    name = "Report"

    def get_link(self, operator, *, ti_key) -> str:
        if ti_key.dag_id != DAG_ID:
            return ""
        return _ui_url(f"{RUNS}/{safe_run_id(ti_key.run_id)}/report/index.html")


class ModelFolderLink(BaseOperatorLink):
    """Opens the folder of the model a training task produced (the run's models/ until it has one)."""

    name = "Model folder"

    def get_link(self, operator, *, ti_key) -> str:
        if ti_key.dag_id != DAG_ID or not _is_train(ti_key.task_id):
            return ""
        model_id = _model_id(ti_key)
        folder = f"models/{quote(model_id)}/" if model_id else "models/"
        return _ui_url(f"{RUNS}/{safe_run_id(ti_key.run_id)}/{folder}")


class CnnReportsPlugin(AirflowPlugin):
    name = "cnn_reports"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "CNN pipeline reports"}]
    external_views = [
        {
            "name": "CNN reports",
            "href": f"{URL_PREFIX}/",
            "url_route": "cnn-reports",  # the page lives at <airflow>/plugin/cnn-reports
            "destination": "nav",
            "category": "browse",
        }
    ]
    global_operator_extra_links = [RunReportLink(), ModelFolderLink()]
