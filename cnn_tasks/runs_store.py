"""Which store a run's files come from, for the reports plugin: the deployment's store
(CNN_STORE_URI) or the store the run's conf chose, followed only where the deployment's own
settings reach (its S3 endpoint; a local folder inside its store or CNN_REPORT_LOCAL_STORES).
Airflow-free: the caller looks the run up in Airflow's database and opens the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from cnn_tasks.config import PipelineConfig
from cnn_tasks.deployment import deployment
from cnn_tasks.runs_paths import RUNS
from cnn_tasks.runs_problems import Problem


def store_settings() -> tuple[str, str | None, str]:
    """(store URI, S3 endpoint, Airflow connection id) from the deployment's environment."""
    env = deployment()
    return (
        env.store_uri or PipelineConfig.model_fields["store_uri"].default,
        env.s3_endpoint_url or None,
        env.aws_conn_id or "aws_default",
    )


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
    entries = [store_settings()[0], *deployment().report_local_stores.split(",")]
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


def choose_store(run_id: str, dag_run: dict | None, deployment_endpoint: Callable[[], str | None]) -> RunStore:
    """The run's own store (store_uri of its conf) where the deployment may read it, else the
    deployment's store; a Problem (403/404) when the run's store may not or cannot be read.
    `dag_run` is the run's {"run_id", "state", "conf"} from Airflow's database (None: not there);
    `deployment_endpoint()` the S3 endpoint the deployment reads (asked only for an S3 store)."""
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
        if isinstance(named, str) and named.strip() and not _same_endpoint(named, deployment_endpoint()):
            raise refused(
                run,
                f"The run wrote to {chosen} through the S3 endpoint {named}; this deployment reads S3 only "
                f"through its own endpoint ({deployment_endpoint() or 'AWS'}), so its credentials are "
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
