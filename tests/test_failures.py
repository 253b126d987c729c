"""Failure records: what the report, the DAG's final task and `make run` say when a task failed."""

from __future__ import annotations

from cnn_tasks import failures, report
from cnn_tasks.ingest.errors import DownloadError


def wrapped(exc: Exception) -> Exception:
    """What the DAG raises for a PipelineError: AirflowFailException from the original error."""

    class AirflowFailException(Exception):
        pass

    try:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
    except AirflowFailException as outer:
        return outer


def test_records_name_the_task_and_the_real_error_and_a_recovered_try_stops_counting(make_ctx):
    ctx = make_ctx()
    store, prefix = ctx.store, ctx.prefix
    failures.record_failure(
        store,
        prefix,
        "download",
        -1,
        None,
        wrapped(DownloadError("dataset.zip is truncated\nor damaged")),
        try_number=1,
        final=True,
    )
    failures.record_failure(store, prefix, "train", 1, "baseline / balanced", OSError("disk full"), try_number=1)
    standing = failures.read_failures(store, prefix)
    assert [f["task"] for f in standing] == ["download", "train [baseline / balanced]"]
    assert standing[0]["error"] == "DownloadError"
    assert standing[0]["message"] == "dataset.zip is truncated or damaged"
    assert failures.summary_line(standing, ["split"]) == (
        "FAILED: download: DownloadError: dataset.zip is truncated or damaged (also failed: train "
        "[baseline / balanced]) (1 task(s) did not run because of it)"
    )
    failures.record_recovered(store, prefix, "train", 1)  # the retry succeeded
    assert [f["task"] for f in failures.read_failures(store, prefix)] == ["download"]
    assert failures.record_failure(BrokenStore(), prefix, "x", -1, None, ValueError("v")) is None  # never raises


class BrokenStore:
    def put_json(self, key, value):
        raise PermissionError("read-only bucket")


def test_report_opens_with_the_failed_tasks_and_notes_rebalance_none(make_ctx):
    ctx = make_ctx(rebalance="none")
    failures.record_failure(ctx.store, ctx.prefix, "download", -1, None, DownloadError("unsafe member '../x'"))
    out = report.run(ctx)
    page = ctx.store.get_text(out["report_key"])
    banner = page.index("This run FAILED: 1 task(s) failed.")
    assert banner < page.index("<nav>")  # before everything else
    assert "<strong>download</strong>: DownloadError: unsafe member &#39;../x&#39;" in page
    assert "rebalance=none: each experiment is trained once, on the data as it is" in page
    assert "baseline__balanced" not in page
    assert "baseline__unbalanced" in page  # only the models it trains
    assert ctx.store.get_json(out["summary_key"])["failures"] == [
        {"task": "download", "error": "DownloadError", "message": "unsafe member '../x'"}
    ]
