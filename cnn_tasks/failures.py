"""Why a run failed, and how long its tasks took, in the store: runs/<id>/failures/ and
runs/<id>/timings/, one <task>[.<map index>].json per task.

Every task records its error when it fails (task, readable label, exception type and message,
try number), and marks that record "recovered" when a later try succeeds. The report reads the
records to open with what failed; the DAG's final task `all_stages_succeeded` and `make run` read
them to say, in one line, which task failed and why. A task that died without recording anything
(killed, out of memory) is recorded by the DAG from Airflow's task states. Each task that
succeeds records its wall time, for the report's "wall time per stage".
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

log = logging.getLogger(__name__)

FAILED, RECOVERED = "failed", "recovered"
MESSAGE_CHARS = 600  # one line in a terminal or a grid tooltip; the task log has the rest


def task_name(task_id: str, map_index: int = -1, label: str | None = None) -> str:
    """'download', 'train [baseline / balanced]' or 'train [2]'."""
    if map_index is None or map_index < 0:
        return task_id
    return f"{task_id} [{label or map_index}]"


def failure_key(prefix: str, task_id: str, map_index: int = -1) -> str:
    return f"{prefix}/failures/{_file_name(task_id, map_index)}"


def timing_key(prefix: str, task_id: str, map_index: int = -1) -> str:
    return f"{prefix}/timings/{_file_name(task_id, map_index)}"


def _file_name(task_id: str, map_index: int = -1) -> str:
    return f"{task_id}.json" if map_index is None or map_index < 0 else f"{task_id}.{map_index}.json"


def one_line(text: str, limit: int = MESSAGE_CHARS) -> str:
    """Whitespace (newlines included) collapsed; cut at `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(exc: BaseException) -> tuple[str, str]:
    """(type name, message) of the error the user must read: the PipelineError behind an
    AirflowFailException, not the wrapper."""
    cause = exc.__cause__
    if type(exc).__name__ == "AirflowFailException" and cause is not None:
        exc = cause
    return type(exc).__name__, one_line(str(exc)) or "(no message)"


def record_failure(
    store,
    prefix: str,
    task_id: str,
    map_index: int,
    label: str | None,
    exc: BaseException,
    try_number: int | None = None,
    final: bool | None = None,
) -> dict | None:
    """Write the failure record; never raises (the store may be the very thing that failed)."""
    error, message = describe(exc)
    record = {
        "status": FAILED,
        "task_id": task_id,
        "map_index": map_index,
        "label": label,
        "task": task_name(task_id, map_index, label),
        "error": error,
        "message": message,
        "try_number": try_number,
        "final": final,
        "at": datetime.now(UTC).isoformat(),
    }
    try:
        store.put_json(failure_key(prefix, task_id, map_index), record)
    except Exception as store_exc:  # noqa: BLE001 - the original error is what the task raises
        log.warning("could not record the failure of %s in the store: %s", record["task"], store_exc)
        return None
    return record


def record_recovered(store, prefix: str, task_id: str, map_index: int) -> None:
    """A later try succeeded: the earlier failure no longer counts."""
    key = failure_key(prefix, task_id, map_index)
    try:
        if store.exists(key):
            record = store.get_json(key)
            store.put_json(key, {**record, "status": RECOVERED, "recovered_at": datetime.now(UTC).isoformat()})
    except Exception as exc:  # noqa: BLE001 - a success stays a success
        log.warning("could not mark the earlier failure of %s as recovered: %s", key, exc)


def record_timing(
    store, prefix: str, task_id: str, map_index: int, label: str | None, seconds: float, try_number: int | None = None
) -> None:
    """The wall time of a task's successful try; never raises (timing is not worth failing for)."""
    record = {
        "task_id": task_id,
        "map_index": map_index,
        "task": task_name(task_id, map_index, label),
        "seconds": round(seconds, 3),
        "try_number": try_number,
        "at": datetime.now(UTC).isoformat(),
    }
    try:
        store.put_json(timing_key(prefix, task_id, map_index), record)
    except Exception as exc:  # noqa: BLE001 - a success stays a success
        log.warning("could not record the wall time of %s: %s", record["task"], exc)


def read_timings(store, prefix: str) -> list[dict]:
    """The run's task timings (unreadable records skipped), in the order the tasks finished."""
    records = []
    for key in store.list(f"{prefix}/timings/"):
        try:
            records.append(store.get_json(key))
        except Exception as exc:  # noqa: BLE001 - the report shows what it can
            log.warning("timing record %s unreadable: %s", key, exc)
    return sorted(records, key=lambda r: r.get("at") or "")


def read_failures(store, prefix: str) -> list[dict]:
    """The run's failure records still standing (status failed), oldest first."""
    records = []
    for key in store.list(f"{prefix}/failures/"):
        if key.endswith(".json"):
            try:
                record = store.get_json(key)
            except Exception as exc:  # noqa: BLE001 - an unreadable record must not hide the others
                record = {
                    "status": FAILED,
                    "task": key.rsplit("/", 1)[-1][:-5],
                    "error": type(exc).__name__,
                    "message": f"failure record {key} unreadable: {exc}",
                    "at": "",
                }
            if record.get("status") == FAILED:
                records.append(record)
    return sorted(records, key=lambda r: (r.get("at") or "", r.get("task") or ""))


def reason(record: dict) -> str:
    """'train [baseline / balanced]: TrainingDivergedError: experiment ... diverged.'"""
    return f"{record['task']}: {record['error']}: {record['message']}"


def summary_line(failures: list[dict], not_run: list[str] = ()) -> str:
    """The one line a person reads first: the first failure and why, then how many more."""
    if not failures:
        return "OK: every task succeeded"
    line = f"FAILED: {reason(failures[0])}"
    more = [f["task"] for f in failures[1:]]
    if more:
        line += f" (also failed: {', '.join(more)})"
    if not_run:
        line += f" ({len(not_run)} task(s) did not run because of it)"
    return line


def record_unexplained(store, prefix: str, task_id: str, map_index: int) -> dict:
    """A task Airflow marks failed that recorded no error (killed, out of memory, timed out, lost worker)."""
    record = {
        "status": FAILED,
        "task_id": task_id,
        "map_index": map_index,
        "label": None,
        "task": task_name(task_id, map_index),
        "error": "NoErrorRecorded",
        "message": "the task failed without recording an error (killed, out of memory, timed out or its "
        "worker was lost): see its log",
        "at": datetime.now(UTC).isoformat(),
    }
    try:
        store.put_json(failure_key(prefix, task_id, map_index), record)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not record the failure of %s in the store: %s", record["task"], exc)
    return record
