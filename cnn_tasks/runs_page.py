"""What the reports plugin's runs page shows, read from the store: each run's row (status, best
model by test macro-F1, the champion decision) from its report/summary.json, newest first; each
model name's champion with its metric over time as chart points; the runs the compare form starts on."""

from __future__ import annotations

from datetime import datetime

from cnn_tasks.champion import champions, history
from cnn_tasks.runs_paths import RUNS
from cnn_tasks.storage import StoreError

MAX_RUNS = 200  # newest runs shown on the index page
SUCCEEDED, FAILED, STOPPED = "succeeded", "failed", "stopped"
CHART_W, CHART_H, CHART_PAD = 320, 90, 8


def summaries(store) -> list[tuple[datetime, str]]:
    """(last modified, run id) of every runs/<id>/report/summary.json, newest first."""
    found = []
    for run_id in store.folders(f"{RUNS}/"):
        try:  # one small request per run, not a listing of every shard and checkpoint under runs/
            found.append((store.modified(f"{RUNS}/{run_id}/report/summary.json"), run_id))
        except StoreError:
            continue  # no report (yet)
    return sorted(found, reverse=True)


def failure_reason(record: dict) -> str:
    """'train [baseline / balanced]: TrainingDivergedError: ...' (failures.reason, for records
    that may lack a field)."""
    return ": ".join(str(record.get(k)) for k in ("task", "error", "message") if record.get(k))


def run_status(summary: dict) -> tuple[str, str | None]:
    """(succeeded | failed | stopped, its one-line cause) from what the run's report recorded."""
    recorded = [f for f in summary.get("failures") or [] if isinstance(f, dict)]
    if recorded:
        cause = failure_reason(recorded[0]) or "a task failed"
        more = [str(f.get("task")) for f in recorded[1:] if f.get("task")]
        return FAILED, cause + (f" (also failed: {', '.join(more)})" if more else "")
    stopped = (summary.get("results") or {}).get("stopped")
    if stopped:
        return STOPPED, str(stopped)
    return SUCCEEDED, None


def decision(promotion: dict) -> tuple[str | None, str | None]:
    """(promoted | not promoted | None, the reason without a repeat of that label)."""
    promoted, reason = promotion.get("promoted"), promotion.get("reason")
    label = "promoted" if promoted is True else "not promoted" if promoted is False else None
    if label and isinstance(reason, str) and reason.lower().startswith(label + ":"):
        reason = reason[len(label) + 1 :].strip()
    return label, reason or None


def run_row(run_id: str, modified: datetime, summary: dict) -> dict:
    """The index-page facts of one run: status, best model by test macro-F1, the champion decision."""
    tests = {m: (v or {}).get("test") or {} for m, v in (summary.get("models") or {}).items()}
    scored = [m for m, test in tests.items() if test]  # a run that failed before evaluating has none
    best = max(scored, key=lambda m: (tests[m].get("macro_f1") or 0, tests[m].get("accuracy") or 0), default=None)
    champion = summary.get("promotion") or {}
    status, cause = run_status(summary)
    label, note = decision(champion)
    return {
        "run_id": run_id,
        "modified": modified.isoformat(timespec="seconds"),
        "status": status,
        "cause": cause,
        "models": len(tests),
        "best_model": best,
        "accuracy": tests[best].get("accuracy") if best else None,
        "macro_f1": tests[best].get("macro_f1") if best else None,
        "promoted": champion.get("promoted"),
        "reason": champion.get("reason"),
        "decision": label,
        "decision_note": note,
        "report": f"{RUNS}/{run_id}/report/index.html",
    }


def list_runs(store, limit: int = MAX_RUNS) -> list[dict]:
    """The index rows of the `limit` newest runs that wrote a report summary, newest first."""
    rows = []
    for modified, run_id in summaries(store)[:limit]:
        try:  # not through contracts.Summary: runs written by older versions are listed with what they have
            summary = store.get_json(f"{RUNS}/{run_id}/report/summary.json")
        except (StoreError, ValueError) as exc:  # half-written or malformed: say so, keep going
            summary = {"promotion": {"reason": f"summary.json unreadable: {exc}"}}
        rows.append(run_row(run_id, modified, summary))
    return rows


def compare_choice(rows: list[dict]) -> dict:
    """The runs the compare form starts on: the two newest that succeeded with scores (never a
    failed run); None where there are not enough."""
    scored = [r["run_id"] for r in rows if r["status"] == SUCCEEDED and r["best_model"]]
    return {"b": scored[0] if scored else None, "a": scored[1] if len(scored) > 1 else None}


def history_points(records: list[dict]) -> list[dict]:
    """The champion metric at each promotion, placed on a CHART_W x CHART_H chart (oldest left)."""
    values = [r.get("value") for r in records]
    known = [v for v in values if isinstance(v, (int, float))]
    if not known:
        return []
    low, high = min(known), max(known)
    span = (high - low) or 1.0
    step = (CHART_W - 2 * CHART_PAD) / max(1, len(records) - 1)
    points = []
    for i, (record, value) in enumerate(zip(records, values)):
        if not isinstance(value, (int, float)):
            continue
        points.append(
            {
                "x": round(CHART_PAD + i * step, 1),
                "y": round(CHART_H - CHART_PAD - (value - low) / span * (CHART_H - 2 * CHART_PAD), 1),
                "value": value,
                "run_id": record.get("run_id"),
                "promoted_at": record.get("promoted_at"),
            }
        )
    return points


def list_champions(store) -> list[dict]:
    """One row per model name: its current champion and its champion metric over time."""
    rows = []
    for name, current in sorted(champions(store, include_legacy=True).items()):
        past = history(store, name) or [current]
        rows.append(
            {
                "model_name": name,
                "model_id": current.get("model_id"),
                "run_id": current.get("run_id"),
                "metric": current.get("metric"),
                "value": current.get("value"),
                "promoted_at": current.get("promoted_at"),
                "classes": len(current.get("classes") or []),
                "promotions": len(past),
                "history": history_points(past),
            }
        )
    return rows
