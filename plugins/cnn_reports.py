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

The plugin wires Airflow to the Airflow-free modules that do the work: ``cnn_tasks.runs_store``
(which store), ``runs_paths`` (path safety), ``runs_page`` and ``runs_compare`` (what the pages
show), ``runs_html`` (the pages) and ``runs_problems`` (errors that say what to do).
"""

from __future__ import annotations

import functools
import json
import logging
import mimetypes
from urllib.parse import quote

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.core_api.security import DagAccessEntity, requires_access_dag
from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cnn_tasks import DAG_ID, runs_html
from cnn_tasks.context import safe_run_id
from cnn_tasks.runs_compare import compare_runs
from cnn_tasks.runs_page import MAX_RUNS, list_champions, list_runs
from cnn_tasks.runs_paths import RUNS, InvalidPath, checked_run_id, run_key
from cnn_tasks.runs_problems import Problem, missing, read_errors, unreadable_store
from cnn_tasks.runs_store import RunStore, choose_store, store_settings
from cnn_tasks.storage import StoreError, content_type_for, make_s3_client, open_store

log = logging.getLogger(__name__)

TRAIN_TASK = "train"
URL_PREFIX = "/cnn-reports"
# Stored files are shown without scripts or forms (HTML, SVG): a file written into the bucket
# must not act on the Airflow API with the viewer's session. Same-origin keeps figures loading.
FILE_CSP = "sandbox allow-same-origin allow-popups allow-popups-to-escape-sandbox allow-downloads"


# --------------------------------------------------------------------------- opening stores
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


def read_deployment_store(read):
    """`read(store)` on the deployment's store; a 503 page when the store fails midway."""
    store = get_store()
    try:
        return read(store)
    except read_errors() as exc:
        raise unreadable_store(store_settings()[0], store_settings()[2], exc) from None


def get_store():
    """The deployment's store (CNN_STORE_URI)."""
    uri, endpoint, conn_id = store_settings()
    try:
        return _open_store(uri, endpoint, conn_id)
    except Exception as exc:  # noqa: BLE001 - StoreError, StoreUnavailable, botocore and connection errors alike
        raise unreadable_store(uri, conn_id, exc) from None


def _deployment_endpoint() -> str | None:
    """The S3 endpoint the deployment reads: CNN_S3_ENDPOINT_URL, else its connection's."""
    _, endpoint, conn_id = store_settings()
    if endpoint:
        return endpoint
    try:
        return _s3_access(None, conn_id)[0]
    except Exception:  # noqa: BLE001 - no connection: the default AWS endpoint
        return None


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


def open_run_store(run_id: str) -> RunStore:
    """The store of run `run_id` (its id in the store, runs/<run_id>/), opened; a Problem when it
    cannot be."""
    run = choose_store(run_id, find_dag_run(run_id), _deployment_endpoint)
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


# --------------------------------------------------------------------------- responses
def object_response(run: RunStore, key: str) -> Response:
    """Stream one object of the run with its content type; a Problem when it is missing or unreadable."""
    media_type = content_type_for(key)
    if media_type == "application/octet-stream":
        media_type = mimetypes.guess_type(key)[0] or media_type
    try:
        obj = run.store.stream(key)  # a local link leading out of the store counts as missing
    except StoreError:
        raise missing(run, key) from None
    except read_errors() as exc:
        problem = unreadable_store(run.uri, store_settings()[2], exc)
        problem.facts = run.facts()
        raise problem from None
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": FILE_CSP,
        "Content-Length": str(obj.size),
    }
    return StreamingResponse(obj.chunks, media_type=media_type, headers=headers)


def folder_page(run: RunStore, key: str, base: str) -> HTMLResponse:
    try:
        keys = run.store.list(key)
    except read_errors() as exc:
        problem = unreadable_store(run.uri, store_settings()[2], exc)
        problem.facts = run.facts()
        raise problem from None
    if not keys:
        raise missing(run, key)
    return HTMLResponse(runs_html.folder_html(key, keys, base, run.uri if run.own else None))


def error_page(exc, base: str) -> HTMLResponse:
    """A page saying what went wrong and what to do, with the error's status."""
    return HTMLResponse(runs_html.error_html(exc, base), status_code=exc.status_code)


# --------------------------------------------------------------------------- the app
# Same rule as the DAG run pages of the UI: an authenticated user who may read this DAG's runs.
can_read_runs = requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID)

app = FastAPI(title="CNN pipeline reports", dependencies=[Depends(can_read_runs)])


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


@app.exception_handler(Problem)  # an HTTP error of its status, in a person's words
@app.exception_handler(StarletteHTTPException)
async def _readable_errors(request: Request, exc: StarletteHTTPException | Problem):
    """A browser without a session goes to the login page (and comes back); other errors are a
    page for a browser. API clients get 401 and JSON."""
    if exc.status_code == 401 and _wants_html(request):
        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
    if _wants_html(request) and exc.status_code != 401:
        return error_page(exc, _base(request))
    return await http_exception_handler(request, exc)


@app.exception_handler(InvalidPath)
async def _invalid_paths(request: Request, exc: InvalidPath):
    """A path or run id that could leave runs/: 400."""
    return await _readable_errors(request, HTTPException(400, str(exc)))


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
    return HTMLResponse(runs_html.index_html(rows, champion_rows, _base(request), store_settings()[0]))


@app.get("/api/runs")
def runs_json(limit: int = Query(MAX_RUNS, ge=1, le=10_000)) -> list[dict]:
    return read_deployment_store(lambda store: list_runs(store, limit))


@app.get("/api/champions")
def champions_json() -> list[dict]:
    return read_deployment_store(list_champions)


@app.get("/compare", response_class=HTMLResponse)
def compare(request: Request, a: str = Query(..., min_length=1), b: str = Query(..., min_length=1)):
    (first, run_a), (second, run_b) = read_summary(a), read_summary(b)
    comparison = compare_runs(a, b, first, second, run_a.uri, run_b.uri)
    return HTMLResponse(runs_html.compare_html(comparison, _base(request)))


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
