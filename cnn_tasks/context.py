"""The run context handed to every stage: validated config, artifact store, run id, local cache."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cnn_tasks import cache
from cnn_tasks.config import PipelineConfig
from cnn_tasks.deployment import deployment
from cnn_tasks.storage import ArtifactStore, StoreError, open_store

log = logging.getLogger(__name__)


def safe_run_id(run_id: str) -> str:
    """Airflow run ids contain ':' and '+'; keep keys portable across file systems and S3."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]+", "_", run_id).strip("._")
    if not cleaned:
        raise ValueError(f"run id {run_id!r} has no usable characters")
    return cleaned


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cache_root() -> Path:
    """A worker-local cache (downloads, shards) shared by runs; CNN_CACHE_DIR overrides it.

    Bounded by CNN_CACHE_MAX_GB (see cnn_tasks/cache.py); run scratch lives in its scratch/ folder.
    """
    root = Path(deployment().cache_dir or Path.home() / ".cache" / "cnn_tasks")
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass
class RunContext:
    config: PipelineConfig
    store: ArtifactStore
    run_id: str
    scratch_root: Path | None = field(default=None)
    s3_client: object | None = field(default=None, repr=False)
    _scratch_used: set = field(default_factory=set, init=False, repr=False)
    _leases: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        self.run_id = safe_run_id(self.run_id)
        cache.max_bytes()  # a bad CNN_CACHE_MAX_GB fails the task at its start, not in its cleanup

    @classmethod
    def create(cls, config: PipelineConfig, run_id: str, s3_client=None) -> RunContext:
        store = open_store(config.store_uri, endpoint_url=config.s3_endpoint_url, s3_client=s3_client)
        return cls(config=config, store=store, run_id=run_id, s3_client=s3_client)

    def s3(self):
        """The S3 client for reading s3:// sources: the one given (Airflow connection), else boto3's."""
        if self.s3_client is None:
            from cnn_tasks.storage import make_s3_client

            self.s3_client = getattr(self.store, "client", None) or make_s3_client(self.config.s3_endpoint_url)
        return self.s3_client

    # ---- keys in the store (one prefix per run; nothing is overwritten across runs)
    @property
    def prefix(self) -> str:
        return f"runs/{self.run_id}"

    def key(self, *parts: str) -> str:
        return "/".join([self.prefix, *[p.strip("/") for p in parts]])

    def data_key(self, *parts: str) -> str:
        return self.key("data", *parts)

    def check_key(self, experiment: str, *parts: str) -> str:
        return self.key("checks", experiment, *parts)

    def model_key(self, model_id: str, *parts: str) -> str:
        return self.key("models", model_id, *parts)

    def viz_key(self, model_id: str, *parts: str) -> str:
        return self.key("viz", model_id, *parts)

    def eval_key(self, name: str, *parts: str) -> str:
        return self.key("eval", name, *parts)

    def report_key(self, *parts: str) -> str:
        return self.key("report", *parts)

    # ---- local disk
    def scratch(self, *parts: str) -> Path:
        """This task's working folder `<run scratch>/<parts>` on this worker; `close()` removes it.

        Name a folder of the task's own (e.g. ("train", model_id)): sibling tasks of the run share
        the run's scratch folder on a worker.
        """
        if not parts:
            raise ValueError("ctx.scratch() needs the task's own folder name, e.g. ctx.scratch('train', model_id)")
        path = Path(self._scratch_run_root(), *parts)
        path.mkdir(parents=True, exist_ok=True)
        self._scratch_used.add(path)
        return path

    def _scratch_run_root(self) -> Path:
        return self.scratch_root or cache_root() / "scratch" / self.run_id

    def hold_cache_entry(self, entry: Path) -> Path:
        """Use the cache entry folder `entry` until `close()`: it is marked used now and no eviction
        removes it meanwhile. Hold an entry before creating or reading it."""
        if entry not in self._leases:
            self._leases[entry] = cache.Lease(entry)
        else:
            cache.touch(entry)
        return entry

    def close(self) -> None:
        """The task is over: remove the scratch folders it used (and the run's folder once empty),
        release its cache entries, prune scratch that killed tasks left, and keep the cache within
        CNN_CACHE_MAX_GB."""
        root = self._scratch_run_root()
        for path in sorted(self._scratch_used, key=lambda p: len(p.parts), reverse=True):
            shutil.rmtree(path, ignore_errors=True)
            # Only this task's own ancestors: a sibling's empty folders may be in use.
            for folder in path.parents:
                if not folder.is_relative_to(root):
                    break
                _rmdir_if_empty(folder)
        self._scratch_used.clear()
        for lease in self._leases.values():
            lease.release()
        self._leases.clear()
        try:
            cache.prune_stale_scratch(cache_root() / "scratch", self.run_id)
            cache.enforce_limit(cache_root())
        except OSError as exc:  # housekeeping must not fail a finished task
            log.warning("worker cache housekeeping failed, retried at the next task's end: %s", exc)

    def cached(self, key: str, sha256: str | None = None) -> Path:
        """Fetch `key` from the store into the worker-local cache once; later calls reuse it.

        With the object's `sha256` (shards: recorded in dataset.json) the entry is keyed by that
        content hash and the download is verified against it. Otherwise it is keyed by the store URL
        and the object's version, so an object rewritten by a re-run task is fetched again.
        """
        if sha256 is None:
            token = f"{self.store.url(key)}@{self.store.version(key)}"
            folder = cache_root() / "objects" / hashlib.sha256(token.encode()).hexdigest()[:24]
        else:
            folder = cache_root() / "content" / sha256
        path = self.hold_cache_entry(folder) / Path(key).name
        if not path.is_file():
            self.store.get_file(key, path)
            if sha256 is not None and file_sha256(path) != sha256:
                path.unlink()
                raise StoreError(
                    f"{self.store.url(key)} does not match the sha256 recorded for it in "
                    "dataset.json: it changed after the rebalance stage wrote it; re-run rebalance"
                )
        return path


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty (a sibling task still uses it) or already gone
        pass


def model_id(experiment: str, variant: str) -> str:
    """The id of one trained model: experiment x data variant (unbalanced | balanced)."""
    return f"{experiment}__{variant}"
