"""File locks: one `flock` context manager for the worker cache's leases, eviction and build locks.

flock is per open file, so a lock serialises the threads of one process as well as processes on one
host. Closing the file releases it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def flock(path: Path, *, shared: bool = False, blocking: bool = True) -> Iterator[int | None]:
    """Hold a shared or exclusive flock on `path` (created, with its folder, when missing) for the block.

    Yields the locked file's descriptor; with `blocking=False` it yields None at once when another
    holder has the lock. The file is closed (the lock released) when the block ends.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB))
            held = fd
        except BlockingIOError:
            held = None
        yield held
    finally:
        os.close(fd)
