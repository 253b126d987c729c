"""The worker cache's bounds: a size limit with least-recently-used eviction, and stale scratch pruning.

The cache (`context.cache_root()`) holds whole entries, one folder each, under four kinds:
`downloads/<digest>/` (a fetched file), `extracted/<digest>/` (an extracted archive),
`objects/<hash>/` and `content/<sha256>/` (store objects fetched by `RunContext.cached`).

A task *holds* every entry it uses (`hold`): a shared `flock` on the entry's lock file under
`locks/`, kept until the task ends (`RunContext.close()`), and the entry's mtime set to now
(its last-use time). Eviction takes an exclusive non-blocking lock on each candidate, so an
entry that a running task on this host holds is never removed; the others go least recently
used first until the cache is within `CNN_CACHE_MAX_GB`. Library module: no stage logic.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cnn_tasks.deployment import deployment
from cnn_tasks.errors import PipelineError
from cnn_tasks.ingest.locking import flock

log = logging.getLogger(__name__)

ENTRY_KINDS = ("downloads", "extracted", "objects", "content")
LIMIT_ENV = "CNN_CACHE_MAX_GB"
DEFAULT_MAX_GB = 20.0
GB = 10**9
# Scratch folders of other runs untouched for this long belong to tasks that were killed before
# they could clean up (a live task touches its scratch at least once per epoch).
STALE_SCRATCH_S = 3 * 24 * 3600


class CacheSettingError(PipelineError, ValueError):
    """CNN_CACHE_MAX_GB is not a usable size."""


def max_bytes() -> int | None:
    """The cache limit in bytes from CNN_CACHE_MAX_GB (default 20 GB); None when it is 0 (no limit)."""
    raw = (deployment().cache_max_gb or "").strip()
    if not raw:
        return int(DEFAULT_MAX_GB * GB)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise CacheSettingError(
            f"{LIMIT_ENV}={raw!r} is not a size in GB: set it to a number such as {DEFAULT_MAX_GB:g} "
            f"(the default) or 1.5, or to 0 for an unbounded worker cache"
        )
    return int(value * GB) or None


# ---------------------------------------------------------------- holding entries
def _lock_path(entry: Path) -> Path:
    # A half-made entry (`<name>.tmp-<pid>`) shares its final entry's lock.
    return entry.parent.parent / "locks" / entry.parent.name / (entry.name.split(".tmp-")[0] + ".lock")


class Lease:
    """A shared lock on one cache entry: eviction leaves the entry alone until `release()`."""

    def __init__(self, entry: Path):
        self.entry = entry
        lock = _lock_path(entry)
        while True:  # an eviction may unlink the lock file while we wait: lock the current one
            held = contextlib.ExitStack()
            fd = held.enter_context(flock(lock, shared=True))
            if _same_file(fd, lock):
                break
            held.close()
        self._held: contextlib.ExitStack | None = held
        touch(entry)

    def release(self) -> None:
        if self._held is not None:
            touch(self.entry)  # last use = the end of this use
            self._held.close()
            self._held = None

    def __del__(self):  # a context dropped without close(): free the lock, nothing else
        if getattr(self, "_held", None) is not None:
            self._held.close()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def touch(entry: Path) -> None:
    """Record a use of `entry` (its mtime is its last-use time); a missing entry is fine."""
    try:
        os.utime(entry)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- eviction
@dataclass
class Entry:
    path: Path
    size: int
    last_used: float


def entries(root: Path) -> list[Entry]:
    """Every entry of the cache at `root`, least recently used first."""
    found = []
    for kind in ENTRY_KINDS:
        folder = root / kind
        if folder.is_dir():
            found += [Entry(p, _size(p), p.lstat().st_mtime) for p in folder.iterdir()]
    return sorted(found, key=lambda e: e.last_used)


def _size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # removed while we count
                pass
    return total


def evict(root: Path, limit: int) -> tuple[list[Entry], int]:
    """Remove entries least recently used first until the cache holds at most `limit` bytes.

    Entries held by a running task are skipped. Returns (evicted entries, bytes left in the cache).
    """
    found = entries(root)
    total = sum(e.size for e in found)
    evicted = []
    for entry in found:
        if total <= limit:
            break
        if _remove_unless_held(entry.path):
            evicted.append(entry)
            total -= entry.size
    return evicted, total


def _remove_unless_held(entry: Path) -> bool:
    lock = _lock_path(entry)
    with flock(lock, blocking=False) as fd:
        if fd is None:
            return False  # in use
        if not _same_file(fd, lock):
            return False  # another eviction just removed it
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)  # still locked: a waiting holder sees the unlink and re-locks
        return not entry.exists()


def enforce_limit(root: Path) -> list[Entry]:
    """Bring the cache at `root` within CNN_CACHE_MAX_GB, logging what was evicted.

    Only one process evicts at a time; another that finds eviction under way skips it.
    """
    limit = max_bytes()
    if limit is None or not root.is_dir():
        return []
    with flock(root / "locks" / "evict.lock", blocking=False) as fd:
        if fd is None:
            return []
        evicted, left = evict(root, limit)
    if evicted:
        log.info(
            "cache over %.1f GB: evicted %d entries, %.1f GB, least recently used first",
            limit / GB,
            len(evicted),
            sum(e.size for e in evicted) / GB,
        )
    if left > limit:
        log.warning(
            "cache still holds %.1f GB, over its %.1f GB limit (%s): the rest is in use by running "
            "tasks on this worker",
            left / GB,
            limit / GB,
            LIMIT_ENV,
        )
    return evicted


# ---------------------------------------------------------------- scratch
def prune_stale_scratch(scratch_root: Path, current_run: str, max_age_s: float = STALE_SCRATCH_S) -> list[Path]:
    """Remove run scratch folders (not `current_run`'s) with nothing touched for `max_age_s` seconds."""
    if not scratch_root.is_dir():
        return []
    now, pruned = time.time(), []
    for folder in scratch_root.iterdir():
        if folder.name == current_run or not folder.is_dir():
            continue
        if now - _last_touched(folder) > max_age_s:
            shutil.rmtree(folder, ignore_errors=True)
            pruned.append(folder)
            log.info(
                "removed the scratch folder of run %s: untouched for more than %.0f days (a task "
                "killed before it could clean up)",
                folder.name,
                max_age_s / 86400,
            )
    return pruned


def _last_touched(folder: Path) -> float:
    """The newest mtime of `folder` and of anything in it."""
    newest = folder.lstat().st_mtime
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
            except FileNotFoundError:
                pass
    return newest
