"""The ingest package's errors: a source that cannot be fetched, verified or extracted
(`DownloadError`), and fetched data that does not form a usable labelled dataset (`DatasetError`)."""

from __future__ import annotations

from cnn_tasks.errors import PipelineError


class DownloadError(PipelineError, RuntimeError):
    """The source could not be fetched, verified or extracted."""


class DatasetError(PipelineError, ValueError):
    """The fetched data does not form a usable labelled dataset (layout, classes, counts)."""
