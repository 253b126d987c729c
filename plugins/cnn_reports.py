"""Airflow UI additions for the CNN pipeline: a report browser and links to each run's report.

What the plugin adds (Airflow 3 plugin interfaces, loaded by the api-server):

* ``fastapi_apps``: a FastAPI app mounted at ``/cnn-reports`` that lists the champions per model
  name, each with its metric over time as a chart, and past runs (from
  ``runs/*/report/summary.json``), newest first; compares two runs side by side; and serves a run's
  files (report HTML, figures, CSVs, folder listings) straight from the artifact store (local
  folder or S3/MinIO).
* ``external_views``: a "CNN reports" page in the UI's Browse menu that frames that app.
* ``global_operator_extra_links``: a "Report" button on every task of the pipeline DAG and a
  "Model folder" button on training tasks.

Security: every route depends on Airflow's own ``requires_access_dag`` (the api-server's JWT from
the UI's ``_token`` cookie or an ``Authorization: Bearer`` header, validated by the configured
auth manager, then "may read runs of the DAG"). Only keys under ``runs/`` are ever served.

Settings come from the same environment variables as the DAG's Params: CNN_STORE_URI,
CNN_S3_ENDPOINT_URL and CNN_AWS_CONN_ID (S3 credentials come from that Airflow connection).
"""

from __future__ import annotations

import functools
import json
import mimetypes
import os
import re
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, unquote

import jinja2
from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.core_api.security import DagAccessEntity, requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cnn_tasks import DAG_ID
from cnn_tasks.champion import champions, history
from cnn_tasks.config import PipelineConfig
from cnn_tasks.context import safe_run_id
from cnn_tasks.storage import StoreError, content_type_for, make_s3_client, open_store

TRAIN_TASK = "train"
URL_PREFIX = "/cnn-reports"
RUNS = "runs"
MAX_RUNS = 200  # newest runs shown on the index page
# Stored files are shown without scripts or forms (HTML, SVG): a file written into the bucket
# must not act on the Airflow API with the viewer's session. Same-origin keeps figures loading.
FILE_CSP = "sandbox allow-same-origin allow-popups allow-popups-to-escape-sandbox allow-downloads"
_SAFE_SEGMENT = re.compile(r"[^/\\\x00]+")


# --------------------------------------------------------------------------- settings and store
def store_settings() -> tuple[str, str | None, str]:
    """(store URI, S3 endpoint, Airflow connection id) from the deployment's environment."""
    return (
        os.environ.get("CNN_STORE_URI") or PipelineConfig.model_fields["store_uri"].default,
        os.environ.get("CNN_S3_ENDPOINT_URL") or None,
        os.environ.get("CNN_AWS_CONN_ID") or "aws_default",
    )


# One store (and S3 client) per setting: restart the api-server after changing the connection.
@functools.lru_cache(maxsize=4)
def _open_store(uri: str, endpoint_url: str | None, aws_conn_id: str):
    s3_client = None
    if uri.startswith("s3://"):
        # Credentials (and, when CNN_S3_ENDPOINT_URL is unset, the endpoint) from the Airflow connection.
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        hook = S3Hook(aws_conn_id=aws_conn_id)
        endpoint_url = endpoint_url or hook.conn_config.get_service_endpoint_url("s3")
        s3_client = make_s3_client(endpoint_url, session=hook.get_session())
    return open_store(uri, endpoint_url=endpoint_url, s3_client=s3_client)


def get_store():
    try:
        return _open_store(*store_settings())
    except StoreError as exc:
        raise HTTPException(503, f"artifact store unavailable: {exc}") from None


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


def summaries(store) -> list[tuple[datetime, str]]:
    """(last modified, run id) of every runs/<id>/report/summary.json, newest first."""
    found = []
    for run_id in store.folders(f"{RUNS}/"):
        try:  # one small request per run, not a listing of every shard and checkpoint under runs/
            found.append((store.modified(f"{RUNS}/{run_id}/report/summary.json"), run_id))
        except StoreError:
            continue  # no report (yet)
    return sorted(found, reverse=True)


def object_response(store, key: str) -> Response:
    """Stream one object with its content type, or 404."""
    media_type = content_type_for(key)
    if media_type == "application/octet-stream":
        media_type = mimetypes.guess_type(key)[0] or media_type
    try:
        obj = store.stream(key)  # a local link leading out of the store counts as missing
    except StoreError:
        raise HTTPException(404, "not found") from None
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": FILE_CSP,
        "Content-Length": str(obj.size),
    }
    return StreamingResponse(obj.chunks, media_type=media_type, headers=headers)


# --------------------------------------------------------------------------- summaries
def run_row(run_id: str, modified: datetime, summary: dict) -> dict:
    """The index-page facts of one run: best model by test macro-F1, and the champion decision."""
    tests = {m: (v or {}).get("test") or {} for m, v in (summary.get("models") or {}).items()}
    best = max(tests, key=lambda m: (tests[m].get("macro_f1") or 0, tests[m].get("accuracy") or 0), default=None)
    champion = summary.get("promotion") or {}
    return {
        "run_id": run_id,
        "modified": modified.isoformat(timespec="seconds"),
        "models": len(tests),
        "best_model": best,
        "accuracy": tests[best].get("accuracy") if best else None,
        "macro_f1": tests[best].get("macro_f1") if best else None,
        "promoted": champion.get("promoted"),
        "reason": champion.get("reason"),
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
def read_summary(store, run_id: str) -> dict:
    try:
        return store.get_json(run_key(f"{run_id}/report/summary.json"))
    except (StoreError, ValueError):
        raise HTTPException(404, f"run {run_id} has no readable report summary") from None


def compare_runs(store, a: str, b: str) -> dict:
    """Two runs side by side: each model's and ensemble's test scores, the decisions, changed settings."""
    first, second = read_summary(store, a), read_summary(store, b)

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
    decisions = {r: (s.get("promotion") or {}).get("reason") for r, s in ((a, first), (b, second))}
    return {"a": a, "b": b, "rows": rows, "changed": changed, "decisions": decisions}


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


def _page(template: str, **values) -> HTMLResponse:
    return HTMLResponse(PAGES.get_template(template).render(**values))


def index_page(rows: list[dict], champion_rows: list[dict], base: str, store_uri: str) -> HTMLResponse:
    return _page(
        "index.html",
        title="CNN pipeline runs",
        rows=rows,
        champions=champion_rows,
        chart={"w": CHART_W, "h": CHART_H},
        base=base,
        store_uri=store_uri,
    )


def folder_page(store, key: str, base: str) -> HTMLResponse:
    keys = store.list(key)
    if not keys:
        raise HTTPException(404, "not found")
    items = [{"href": f"{base}/{quote(k)}", "name": k[len(key) :]} for k in keys]
    return _page("folder.html", title=key, base=base, items=items)


# --------------------------------------------------------------------------- the app
# Same rule as the DAG run pages of the UI: an authenticated user who may read this DAG's runs.
can_read_runs = requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID)

app = FastAPI(title="CNN pipeline reports", dependencies=[Depends(can_read_runs)])


@app.exception_handler(StarletteHTTPException)
async def _login_redirect(request: Request, exc: StarletteHTTPException):
    """A browser without a session goes to the login page (and comes back); API clients get 401."""
    if exc.status_code == 401 and "text/html" in request.headers.get("accept", ""):
        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
    return await http_exception_handler(request, exc)


def _base(request: Request) -> str:
    """Where this app is mounted, as the browser sees it (e.g. /cnn-reports)."""
    return request.scope.get("root_path", "").rstrip("/")


@app.get("/", response_class=HTMLResponse)
def index(request: Request, limit: int = Query(MAX_RUNS, ge=1, le=10_000)):
    store = get_store()
    return index_page(list_runs(store, limit), list_champions(store), _base(request), store_settings()[0])


@app.get("/api/runs")
def runs_json(limit: int = Query(MAX_RUNS, ge=1, le=10_000)) -> list[dict]:
    return list_runs(get_store(), limit)


@app.get("/api/champions")
def champions_json() -> list[dict]:
    return list_champions(get_store())


@app.get("/compare", response_class=HTMLResponse)
def compare(request: Request, a: str = Query(..., min_length=1), b: str = Query(..., min_length=1)):
    comparison = compare_runs(get_store(), a, b)
    return _page("compare.html", title=f"{a} against {b}", base=_base(request), c=comparison)


@app.get("/runs/{path:path}")
def run_file(path: str, request: Request):
    if not path:
        return RedirectResponse(f"{_base(request)}/")
    key = run_key(path)
    store = get_store()
    if key.endswith("/"):
        return folder_page(store, key, _base(request))
    return object_response(store, key)


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
