"""Shared fixtures: tiny generated datasets, a local store, a run context."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.imagegen import make_dataset


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own worker cache, never the user's ~/.cache."""
    monkeypatch.setenv("CNN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cnn-cache"))


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """3 classes x 20 PNG images of 24x24 px."""
    return make_dataset(tmp_path / "tiny", classes=3, per_class=20)


@pytest.fixture
def make_ctx(tmp_path):
    """Build a RunContext on a local store in tmp_path from config overrides."""
    from cnn_tasks.config import PipelineConfig
    from cnn_tasks.context import RunContext

    def build(run_id: str = "test_run", **overrides):
        values = {"store_uri": f"file://{tmp_path / 'store'}", "dataset_checksum": None}
        values.update(overrides)
        return RunContext.create(PipelineConfig.from_dict(values), run_id)

    return build
