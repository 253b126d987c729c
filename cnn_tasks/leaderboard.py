"""The report's leaderboard: every trained model and every ensemble of a run in one table, best
first, right under the result cards, and the lead of the best said in words.

Rows are sorted by the run's promotion metric on the test split (the metric that picks the best
ensemble row and the champion), then test accuracy, single models before ensembles, then name.
Each row has its test accuracy with the 95 % Wilson interval of the images it got right
(model_card.wilson), macro-F1, the validation accuracy the evaluate stage measured, and for a
single model the epochs it ran and its training time (ensembles train nothing: "-").

The lead sentence compares the first row with the rest: "best by 1 image of 48", "tied with X (same
42 of 48 ...)", and whether the runner-up's accuracy lies inside the best's 95 % interval ("a lead
within the 95 % interval"). Library module: the report stage calls `build`.
"""

from __future__ import annotations

import math

from cnn_tasks import progress

# How the report names a training's end (meta.json stopped_by); running all epochs needs no note.
STOPPED_BY = {"early_stopping": "stopped early", "time_budget": "stopped by budget"}
METRIC_NAMES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro-F1",
    "macro_auc": "macro AUC",
}


def fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def duration(seconds) -> str:
    return progress.duration(seconds) if isinstance(seconds, (int, float)) else "—"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ----------------------------------------------------------------------------- rows
def test_counts(metrics: dict) -> tuple[int, int]:
    """(images right, images) on the test split, from the evaluate stage's confusion matrix."""
    confusion = (metrics.get("confusion_matrices") or {}).get("test") or []
    return sum(row[i] for i, row in enumerate(confusion)), sum(map(sum, confusion))


def model_row(mid: str, metrics: dict, meta: dict | None, metric: str, max_epochs: int) -> dict:
    from cnn_tasks.model_card import wilson

    test, val = metrics["splits"].get("test") or {}, metrics["splits"].get("val") or {}
    right, images = test_counts(metrics)
    meta = meta or {}
    return {
        "name": mid,
        "kind": "model",
        "members": [mid],
        "test_right": right,
        "test_images": images,
        "accuracy": test.get("accuracy"),
        "accuracy_ci95": wilson(right, images),
        "macro_f1": test.get("macro_f1"),
        metric: test.get(metric),
        "val_accuracy": val.get("accuracy"),
        "epochs_run": meta.get("epochs_run"),
        "epochs": max_epochs,
        "stopped_by": meta.get("stopped_by"),
        "train_time_s": meta.get("train_time_s"),
    }


def ensemble_row(row: dict, images: int, metric: str) -> dict:
    """An ensemble's comparison row (ensemble.json): images right from its accuracy on the same test images."""
    from cnn_tasks.model_card import wilson

    right = round((row.get("accuracy") or 0) * images)
    return {
        "name": row["name"],
        "kind": "ensemble",
        "members": list(row.get("members") or []),
        "test_right": right,
        "test_images": images,
        "accuracy": row.get("accuracy"),
        "accuracy_ci95": wilson(right, images),
        "macro_f1": row.get("macro_f1"),
        metric: row.get(metric),
        "val_accuracy": None,
        "epochs_run": None,
        "epochs": None,
        "stopped_by": None,
        "train_time_s": None,
    }


def _value(row: dict, key: str) -> float:
    value = row.get(key)
    return -math.inf if value is None else value


def ranked(rows: list[dict], metric: str) -> list[dict]:
    """`rows` best first (metric, then accuracy, models before ensembles, then name), with rank,
    `best` on the first and `vs_best` (images right compared with the best: 'best', 'same', '-2', '+1')."""
    rows = sorted(rows, key=lambda r: (-_value(r, metric), -_value(r, "accuracy"), r["kind"] != "model", r["name"]))
    for rank, row in enumerate(rows, 1):
        row["rank"], row["best"] = rank, rank == 1
        gap = row["test_right"] - rows[0]["test_right"]
        row["vs_best"] = "best" if rank == 1 else "same" if gap == 0 else f"{gap:+d}"
    return rows


def lead(rows: list[dict], metric: str) -> str:
    """The best row's lead in words: by how many test images, tied with whom, and whether the
    runner-up's accuracy lies inside the best's 95 % interval."""
    top, name = rows[0], METRIC_NAMES.get(metric, metric)
    right, images = top["test_right"], top["test_images"]
    if len(rows) == 1:
        return f"{top['name']} is the only evaluated model: {right} of {images} test images right."
    tied = [r for r in rows[1:] if r["test_right"] == right and r.get(metric) == top.get(metric)]
    if tied:
        others = ", ".join(r["name"] for r in tied[:3]) + (f" and {len(tied) - 3} more" if len(tied) > 3 else "")
        return f"{top['name']} is tied with {others} (same {right} of {images} test images right, same {name})."
    second = rows[1]
    gap = right - second["test_right"]
    if gap > 0:
        text = f"{top['name']} is best by {plural(gap, 'image')} of {images} over {second['name']}"
    elif gap == 0:
        text = (
            f"{top['name']} gets the same {right} of {images} test images right as {second['name']} and is "
            f"ahead on {name} ({fmt(top.get(metric))} against {fmt(second.get(metric))})"
        )
    else:
        text = (
            f"{top['name']} is ahead on {name} ({fmt(top.get(metric))} against {fmt(second.get(metric))}), "
            f"but {second['name']} gets {plural(-gap, 'more image')} of {images} right"
        )
    low_high = top["accuracy_ci95"]
    if low_high and second["accuracy"] is not None and second["accuracy"] >= low_high[0]:
        text += (
            f": a lead within the 95 % interval of its accuracy ({low_high[0]:.3f}-{low_high[1]:.3f}), "
            "so more test images would be needed to call it better"
        )
    return text + "."


def build(evals: dict, metas: dict, ensemble: dict | None, metric: str, max_epochs: int) -> dict | None:
    """{"metric", "rows", "lead", "test_images"} of every evaluated model and every ensemble; None
    when no model was evaluated."""
    if not evals:
        return None
    rows = [model_row(mid, m, metas.get(mid), metric, max_epochs) for mid, m in evals.items()]
    images = rows[0]["test_images"]
    for row in (ensemble or {}).get("comparison") or []:
        if row.get("kind") == "ensemble":
            rows.append(ensemble_row(row, images, metric))
    rows = ranked(rows, metric)
    return {"metric": metric, "test_images": images, "rows": rows, "lead": lead(rows, metric)}


# ----------------------------------------------------------------------------- the page's table
def epochs_text(row: dict) -> str:
    if row["kind"] != "model" or row["epochs_run"] is None:
        return "-"
    why = STOPPED_BY.get(row.get("stopped_by"))
    return f"{row['epochs_run']} of {row['epochs']}" + (f", {why}" if why else "")


def display_rows(board: dict) -> list[dict]:
    """The leaderboard as the page shows it: one dict of cell values per row (`best` marks the highlight)."""
    metric = board["metric"]
    extra = metric not in ("accuracy", "macro_f1")  # the sort metric gets its own column
    out = []
    for r in board["rows"]:
        ci = r["accuracy_ci95"]
        name = r["name"] if r["kind"] == "model" else f"{r['name']} (ensemble of {len(r['members'])})"
        out.append(
            {
                "#": r["rank"],
                "model or ensemble": name,
                "test accuracy": r["accuracy"],
                "95 % interval": f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-",
                "images right": f"{r['test_right']} of {r['test_images']}",
                "vs best": r["vs_best"],
                **({METRIC_NAMES[metric]: r.get(metric)} if extra else {}),
                "macro-F1": r["macro_f1"],
                "validation accuracy": r["val_accuracy"] if r["kind"] == "model" else "-",
                "epochs": epochs_text(r),
                "training time": duration(r["train_time_s"]) if r["kind"] == "model" else "-",
                "best": r["best"],
            }
        )
    return out


def columns(board: dict) -> list[str]:
    return [c for c in display_rows({**board, "rows": board["rows"][:1]})[0] if c != "best"]
