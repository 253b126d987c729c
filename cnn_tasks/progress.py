"""What `make run` shows while the pipeline runs: progress, not Airflow's log.

`cnn_tasks run` points CNN_PROGRESS_FILE at a local file and sends Airflow's own output to a log
file. Each task (`reporting`, used by the DAG around every stage) appends JSON lines to the
progress file: when it starts, when it ends (state, duration, error), and the records of the
`cnn_tasks` loggers worth a terminal line: warnings and errors, and INFO records logged with
`extra=TERMINAL` (the per-epoch training line). `follow` reads the file as it grows and prints one
line per event. Without CNN_PROGRESS_FILE (a deployed Airflow) nothing is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cnn_tasks.deployment import deployment

ENV = "CNN_PROGRESS_FILE"
TERMINAL = {"terminal": True}  # logging extra: an INFO record that `make run` shows


def emit(event: dict) -> None:
    """Append one event to the progress file; never raises (progress is not worth failing a task for).
    One write of one line with O_APPEND: lines from parallel tasks do not interleave."""
    path = deployment().progress_file
    if not path:
        return
    line = (json.dumps({"t": time.time(), **event}, default=str) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError:
        pass


class _Handler(logging.Handler):
    """Forwards warnings, errors and TERMINAL records of a task to the progress file."""

    def __init__(self, task: str):
        super().__init__(logging.INFO)
        self.task = task

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING or getattr(record, "terminal", False):
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a bad format string must not fail the task
                message = str(record.msg)
            emit({"event": "log", "task": self.task, "level": record.levelname, "message": message})


@contextlib.contextmanager
def reporting(task: str, will_retry: Callable[[BaseException], bool] = lambda exc: False) -> Iterator[None]:
    """Around one try of a task: its start and end events (success, failed, or failed and retried
    as `will_retry` says), and its log records in between. Exceptions pass through."""
    if not deployment().progress_file:
        yield
        return
    from cnn_tasks.failures import describe

    handler, logger = _Handler(task), logging.getLogger("cnn_tasks")
    logger.addHandler(handler)
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:  # the epoch lines are INFO
        logger.setLevel(logging.INFO)
    started = time.monotonic()
    emit({"event": "start", "task": task})
    try:
        yield
    except BaseException as exc:
        state = "up_for_retry" if will_retry(exc) else "failed"
        error = ": ".join(describe(exc))
        emit({"event": "end", "task": task, "state": state, "seconds": time.monotonic() - started, "error": error})
        raise
    else:
        emit({"event": "end", "task": task, "state": "success", "seconds": time.monotonic() - started})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# ----------------------------------------------------------------------------- the terminal side
def duration(seconds: float) -> str:
    """'4.2 s', '3 min 05 s', '1 h 02 min'."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_event(event: dict) -> str | None:
    """The terminal line of one event, or None for events not shown."""
    clock = time.strftime("%H:%M:%S", time.localtime(event.get("t", time.time())))
    task = event.get("task", "?")
    kind = event.get("event")
    if kind == "start":
        return f"{clock}  {task}: started"
    if kind == "end":
        state, took = event.get("state"), duration(event.get("seconds") or 0)
        if state == "success":
            return f"{clock}  {task}: done in {took}"
        verdict = "failed, will retry" if state == "up_for_retry" else "FAILED"
        return f"{clock}  {task}: {verdict} after {took}: {event.get('error', '')}"
    if kind == "log":
        level = event.get("level", "INFO")
        prefix = "" if level == "INFO" else f"{level}: "
        return f"{clock}  {task}: {prefix}{event.get('message', '')}"
    return None


def follow(path: Path, write: Callable[[str], None], stop: threading.Event, interval: float = 0.5) -> None:
    """Print each event appended to `path` until `stop` is set, then what is left."""
    offset, pending = 0, b""
    while True:
        stopping = stop.is_set()
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        offset += len(chunk)
        *lines, pending = (pending + chunk).split(b"\n")
        for raw in lines:
            try:
                line = format_event(json.loads(raw))
            except ValueError:
                continue
            if line:
                write(line)
        if stopping:
            return
        stop.wait(interval)
