"""Two runs side by side for the reports plugin, from their report/summary.json: each model's and
ensemble's test scores with the difference, each run's status and champion decision, the classes
that differ and the settings that changed."""

from __future__ import annotations

import json

from cnn_tasks.runs_page import decision, run_status


def class_change(first: dict, second: dict) -> str | None:
    """How B's classes differ from A's, in words; None when the same (or unknown)."""
    a, b = ((s.get("dataset") or {}).get("classes") for s in (first, second))
    if not isinstance(a, list) or not isinstance(b, list) or set(a) == set(b):
        return None
    added, removed = [c for c in b if c not in a], [c for c in a if c not in b]
    parts = [
        f"B adds {', '.join(map(str, added))}" if added else "",
        f"B drops {', '.join(map(str, removed))}" if removed else "",
    ]
    return f"A has {len(a)} classes, B {len(b)}: " + "; ".join(p for p in parts if p)


def compare_runs(a: str, b: str, first: dict, second: dict, uri_a: str, uri_b: str) -> dict:
    """Runs `a` and `b` (their summaries `first` and `second`, read from the stores `uri_a` and
    `uri_b`) side by side: each model's and ensemble's test scores, the decisions, changed settings."""

    def scores(summary: dict) -> dict[str, dict]:
        found = {m: (v or {}).get("test") or {} for m, v in (summary.get("models") or {}).items()}
        for row in (summary.get("ensembles") or {}).get("comparison") or []:
            if row.get("kind") != "model":
                found[row["name"]] = row
        return found

    left, right = scores(first), scores(second)
    rows = []
    for name in sorted(set(left) | set(right)):
        row = {"name": name}
        for metric in ("accuracy", "macro_f1"):
            x, y = left.get(name, {}).get(metric), right.get(name, {}).get(metric)
            row[metric] = (x, y, y - x if isinstance(x, (int, float)) and isinstance(y, (int, float)) else None)
        rows.append(row)
    config_a, config_b = first.get("config") or {}, second.get("config") or {}
    changed = [
        {"setting": k, "a": json.dumps(config_a.get(k)), "b": json.dumps(config_b.get(k))}
        for k in sorted(set(config_a) | set(config_b))
        if config_a.get(k) != config_b.get(k)
    ]
    runs = []
    for run_id, summary, uri in ((a, first, uri_a), (b, second, uri_b)):
        status, cause = run_status(summary)
        label, note = decision(summary.get("promotion") or {})
        runs.append({"run_id": run_id, "status": status, "cause": cause, "decision": label, "note": note, "store": uri})
    return {
        "a": a,
        "b": b,
        "runs": runs,
        "classes_differ": class_change(first, second),
        "rows": rows,
        "changed": changed,
    }
