"""Path safety for the reports plugin: which request paths name a store key under runs/, and
which run ids name a run's folder (runs/<run id>/). Nothing else is ever served."""

from __future__ import annotations

import re
from urllib.parse import unquote

RUNS = "runs"
_SAFE_SEGMENT = re.compile(r"[^/\\\x00]+")
_RUN_ID = re.compile(r"[A-Za-z0-9_.\-]+")  # what context.safe_run_id leaves


class InvalidPath(ValueError):
    """A path or run id that could leave runs/ (the plugin answers 400 with the message)."""


def run_key(path: str) -> str:
    """The store key for `path` (relative to runs/), or InvalidPath if it could leave runs/."""
    parts = path.split("/")
    if path.endswith("/"):
        parts = parts[:-1]  # a folder
    for part in parts:
        # Each segment arrives URL-decoded once; '%' left over means double encoding (%252e...).
        if not _SAFE_SEGMENT.fullmatch(part) or part in (".", "..") or unquote(part) != part:
            raise InvalidPath("invalid path")
    return f"{RUNS}/{path}"


def checked_run_id(run_id: str) -> str:
    """A run id as the store names it (runs/<run_id>/), or InvalidPath."""
    if not _RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
        raise InvalidPath(f"invalid run id {run_id!r}")
    return run_id
