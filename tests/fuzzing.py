"""The harness of the ingest fuzz corpus: run the download stage on one crafted input and describe
what a user would see (the error, rejected.csv, the manifest), plus the checks every case shares:
nothing written outside the extraction folder, every valid image of the input kept.

A case builds its input under `tmp_path / "input"` and calls `ingest(tmp_path, source, ...)`.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from cnn_tasks import download
from cnn_tasks.config import PipelineConfig
from cnn_tasks.context import RunContext
from cnn_tasks.errors import PipelineError


@dataclass
class Outcome:
    """What one ingest of a crafted input produced."""

    error: PipelineError | None
    rejected: dict[str, dict] = field(default_factory=dict)  # source -> rejected.csv row
    manifest: dict[str, dict] = field(default_factory=dict)  # source -> manifest.csv row
    ingest: dict | None = None
    store_keys: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        return str(self.error) if self.error else ""

    def reasons(self) -> dict[str, str]:
        return {source: row["reason"] for source, row in self.rejected.items()}


def ingest(tmp_path: Path, source: Path | str, monkeypatch=None, **overrides) -> Outcome:
    """Run `download.run` on `source` with a local store and cache inside `tmp_path`.

    A PipelineError is captured in the outcome; any other exception propagates (a crash is a bug).
    Afterwards, every file under `tmp_path` must lie in the input, the store or the cache.
    """
    store, cache = tmp_path / "store", tmp_path / "cache"
    before = _files(tmp_path)
    if monkeypatch is not None:
        monkeypatch.setenv("CNN_CACHE_DIR", str(cache))
    values = {
        "store_uri": f"file://{store}",
        "dataset_url": str(source),
        "dataset_checksum": None,
        "min_images_per_class": 1,
        **overrides,
    }
    ctx = RunContext.create(PipelineConfig.from_dict(values), "fuzz")
    error = None
    try:
        download.run(ctx)
    except PipelineError as exc:
        error = exc
    stray = [
        p
        for p in _files(tmp_path) - before
        if not (_under(p, store) or _under(p, cache) or _under(p, tmp_path / "input"))
    ]
    assert not stray, f"files written outside the input, store and cache: {sorted(map(str, stray))}"
    outcome = Outcome(error, store_keys=sorted(ctx.store.list(ctx.prefix + "/")))
    if ctx.store.exists(ctx.data_key("rejected.csv")):
        outcome.rejected = {r["source"]: r for r in _rows(ctx, "rejected.csv")}
    if ctx.store.exists(ctx.data_key("manifest.csv")):
        outcome.manifest = {r["source"]: r for r in _rows(ctx, "manifest.csv")}
    if ctx.store.exists(ctx.data_key("ingest.json")):
        outcome.ingest = ctx.store.get_json(ctx.data_key("ingest.json"))
    return outcome


def assert_kept(outcome: Outcome, sources: list[str]) -> None:
    """Every valid image of the input is in the manifest."""
    assert outcome.error is None, outcome.message
    missing = [s for s in sources if s not in outcome.manifest]
    assert not missing, f"valid images lost: {missing}; rejected: {outcome.reasons()}"


def _rows(ctx, name: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(ctx.store.get_text(ctx.data_key(name)))))


def _files(root: Path) -> set[Path]:
    return {Path(d, f) for d, _, files in os.walk(root) for f in files}


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents
