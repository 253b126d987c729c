"""The report's first screen, before any detail: the result cards (best model, best ensemble,
champion decision, dataset), the leaderboard (cnn_tasks.leaderboard), the warnings, one line of
run time with the per-task times folded, and the links back to the Airflow run and to TensorBoard.

Library module: the report stage calls `results(run)` with its `report.Run` (the run's stage
outputs, read once) and renders what it returns with templates/results.html; summary.json keeps
it as `results`.

A model "stuck at chance" is a warning: its validation accuracy stayed within CHANCE_MARGIN (or
one validation image, whichever is larger) of the chance level in more than half of its epochs.
The chance level is the larger of 1 / classes and the share of the largest class in the
validation data the model was scored on while training (dataset.json's validation counts of its
variant; analysis.json's validation counts when dataset.json has none): the accuracy of always
answering the largest class.
"""

from __future__ import annotations

import os
import shlex
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from cnn_tasks import SPLIT_NAMES, SPLITS, leaderboard
from cnn_tasks.leaderboard import STOPPED_BY, duration

CHANCE_MARGIN = 0.05  # validation accuracy within 5 points of chance counts as "at chance"


# ----------------------------------------------------------------------------- cards
def best_model(evals: dict) -> dict | None:
    """The single model with the best test macro-F1 (then accuracy)."""
    tests = {m: e["splits"].get("test") or {} for m, e in evals.items()}
    if not tests:
        return None
    best = max(tests, key=lambda m: (tests[m].get("macro_f1") or 0, tests[m].get("accuracy") or 0))
    return {"name": best, "accuracy": tests[best].get("accuracy"), "macro_f1": tests[best].get("macro_f1")}


def best_ensemble(ensemble: dict | None) -> dict | None:
    if not ensemble or not ensemble.get("best_ensemble"):
        return None
    row = next((r for r in ensemble["comparison"] if r.get("name") == ensemble["best_ensemble"]), {})
    return {
        "name": ensemble["best_ensemble"],
        "accuracy": row.get("accuracy"),
        "macro_f1": row.get("macro_f1"),
        "overall_best": ensemble.get("best"),
        "metric": ensemble.get("metric"),
    }


def dataset_line(run) -> str | None:
    """'3 classes, 71 images (training 42, validation 11, test 30), layout class_folders, 2 rejected'."""
    analysis, ingest, dataset = run.analysis or {}, run.ingest or {}, run.dataset or {}
    if not (analysis or ingest or dataset):
        return None
    classes = analysis.get("classes") or dataset.get("classes") or ingest.get("classes") or []
    totals = analysis.get("totals") or {}
    parts = [f"{len(classes)} classes"]
    if totals:
        split_counts = ", ".join(f"{SPLIT_NAMES[s]} {totals[s]}" for s in SPLITS if s in totals)
        parts.append(f"{sum(totals.values())} images ({split_counts})")
    elif "accepted" in ingest:
        parts.append(f"{ingest['accepted']} images")
    kind = (analysis.get("layout") or ingest.get("layout") or {}).get("kind")
    if kind:
        parts.append(f"layout {kind}")
    if "rejected" in ingest:
        parts.append(f"{ingest['rejected']} rejected")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- time and links
def stage_times(run) -> list[dict]:
    """Wall time of each task's successful try, in the order the tasks finished (runs/<id>/timings/,
    written by the DAG), with the epochs each training ran."""

    def epochs(record: dict) -> str:
        meta = run.metas.get(model_id_of(record)) or {}
        if "epochs_run" not in meta:
            return ""
        why = STOPPED_BY.get(meta.get("stopped_by"))
        return f"{meta['epochs_run']} of {run.ctx.config.epochs}" + (
            f", {why} at epoch {meta['epochs_run']}" if why else ""
        )

    return [
        {"task": t.get("task", "?"), "wall time": duration(t.get("seconds")), "epochs": epochs(t)} for t in run.timings
    ]


def model_id_of(record: dict) -> str:
    """'train [baseline / balanced]' -> 'baseline__balanced' ('' for other tasks)."""
    task = record.get("task") or ""
    return task.partition(" [")[2].rstrip("]").replace(" / ", "__") if record.get("task_id") == "train" else ""


def run_time(timings: list[dict]) -> dict | None:
    """When the run's first recorded task started and how long until its last one ended:
    {"started" (ISO, UTC), "duration_s", "tasks", "line" (the sentence the page shows)}; None
    without timings."""
    spans = []
    for t in timings:
        try:
            end = datetime.fromisoformat(t["at"])
            spans.append((end - timedelta(seconds=float(t["seconds"])), end))
        except (KeyError, TypeError, ValueError):
            continue
    if not spans:
        return None
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    seconds = round((end - start).total_seconds(), 3)
    return {
        "started": start.astimezone(UTC).isoformat(timespec="seconds"),
        "duration_s": seconds,
        "tasks": len(spans),
        "line": f"Run started {start.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC and took {duration(seconds)} from its "
        f"first task's start to its last recorded task's end ({len(spans)} tasks; the report's own time not included).",
    }


def airflow_run_url() -> str | None:
    """<base>/dags/<dag_id>/runs/<run_id> of the Airflow run this report belongs to, when known: the
    API server's base URL from AIRFLOW__API__BASE_URL (Airflow's [api] base_url) and the dag and run
    ids Airflow sets in every task's environment (AIRFLOW_CTX_DAG_ID, AIRFLOW_CTX_DAG_RUN_ID)."""
    base = (os.environ.get("AIRFLOW__API__BASE_URL") or "").strip().rstrip("/")
    dag_id, run_id = os.environ.get("AIRFLOW_CTX_DAG_ID"), os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
    if not (base.startswith(("http://", "https://")) and dag_id and run_id):
        return None
    return f"{base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def task_url(run_url: str | None, failure: dict) -> str | None:
    """The Airflow page (with its log) of a failed task instance, under the run's page."""
    task_id = failure.get("task_id")
    if not run_url or not task_id:
        return None
    url = f"{run_url}/tasks/{quote(task_id, safe='')}"
    map_index = failure.get("map_index", -1)
    return f"{url}/mapped/{map_index}" if isinstance(map_index, int) and map_index >= 0 else url


def links(run) -> dict:
    """Back to the Airflow run (when its URL is known) and the command that serves the run's
    TensorBoard logs (when models were trained)."""
    ctx = run.ctx
    command = None
    if run.model_ids:
        command = f"make tensorboard RUN={shlex.quote(ctx.run_id)} STORE_URI={shlex.quote(ctx.store.uri)}"
    return {"airflow_run": airflow_run_url(), "tensorboard": command}


# ----------------------------------------------------------------------------- warnings
def chance_level(run, model_id: str) -> tuple[float, int] | None:
    """(accuracy of always answering the largest class, validation images) of the validation data
    `model_id` was scored on while training; None when unknown."""
    variant = model_id.rpartition("__")[2]
    part = ((run.dataset or {}).get("splits") or {}).get("val", {}).get(variant) or {}
    counts = part.get("class_counts")
    if not counts:
        counts = list(((run.analysis or {}).get("counts") or {}).get("val", {}).values())
    if not counts or not sum(counts):
        return None
    return max(max(counts) / sum(counts), 1 / len(counts)), int(sum(counts))


def stuck_at_chance(history: list[dict], chance: float, images: int) -> int:
    """Epochs whose validation accuracy stayed within the margin (CHANCE_MARGIN or one image) of `chance`."""
    margin = max(CHANCE_MARGIN, 1 / max(images, 1))
    return sum(1 for h in history if h.get("val_accuracy") is not None and h["val_accuracy"] <= chance + margin)


def chance_warnings(run) -> list[str]:
    """A model whose validation accuracy stayed at chance for more than half of its epochs."""
    out = []
    for mid in run.model_ids:
        key = run.ctx.model_key(mid, "history.json")
        level = chance_level(run, mid)
        if level is None or not run.ctx.store.exists(key):
            continue
        history = run.ctx.store.get_json(key)
        at_chance = stuck_at_chance(history, *level)
        if history and at_chance * 2 > len(history):
            out.append(
                f"{mid} stayed at chance: its validation accuracy was within "
                f"{100 * max(CHANCE_MARGIN, 1 / level[1]):.0f} points of always answering the largest class "
                f"({level[0]:.1%}) in {at_chance} of {len(history)} epochs. It learnt little; see Training curves."
            )
    return out


def warnings(run) -> list[str]:
    """What a reader must not miss: imbalance, shortfalls, rejected files, layout oddities, models or
    stages that did not run, models stuck at chance, leakage, drift, unreadable images to predict."""
    from cnn_tasks.variants import expected_model_ids

    out = []
    analysis, ingest = run.analysis or {}, run.ingest or {}
    for split, m in (analysis.get("imbalance") or {}).items():
        if m.get("severity") not in (None, "balanced"):
            out.append(
                f"{SPLIT_NAMES.get(split, split)} split: {m['severity']} class imbalance "
                f"(largest/smallest = {m['max_min_ratio']:.2f})."
            )
    if analysis.get("shortfalls"):
        out.append(analysis["shortfall_text"])
    if analysis and not analysis.get("no_leakage"):
        out.append("The leakage check did not pass: an image may appear in more than one split.")
    out += (analysis.get("layout") or {}).get("warnings", [])
    if ingest.get("rejected"):
        reasons = ", ".join(f"{r}: {n}" for r, n in (ingest.get("rejected_by_reason") or {}).items())
        out.append(f"{ingest['rejected']} file(s) rejected ({reasons}): see Rejected files.")
    missing = [m for m in expected_model_ids(run.ctx.config, run.dataset) if m not in run.metas]
    if missing and not run.stopped:  # a run stopped because nothing changed trains nothing, by design
        out.append(f"Not trained: {', '.join(missing)}.")
    out += chance_warnings(run)
    if run.ensemble and run.ensemble.get("not_run"):
        out.append(f"Ensembles not built: {run.ensemble['not_run']}.")
    drifted = run.drift.get("flags") or []
    if drifted:
        out.append(f"Data drift since the champion: {'; '.join(drifted)}. See Data drift.")
    if run.predictions and run.predictions.get("rejected"):
        out.append(f"{run.predictions['rejected']} image(s) to predict could not be read: see Predictions.")
    return out


# ----------------------------------------------------------------------------- the first screen
def reused_rows(run) -> list[dict]:
    """One row per stage this run copied from an earlier run, with the key that matched."""
    return [
        {"stage": r["name"].replace(".", " "), "reused from run": r["reused_from"], "key": r["key"][:12]}
        for r in run.reuse
        if r.get("reused_from")
    ]


def results(run) -> dict:
    promotion = run.promotion
    champion = (
        None
        if promotion is None
        else {
            **{k: promotion.get(k) for k in ("decision", "reason", "metric")},
            "candidate": (promotion.get("candidate") or {}).get("name"),
        }
    )
    cfg = run.ctx.config
    return {
        "best_model": best_model(run.evals),
        "best_ensemble": best_ensemble(run.ensemble),
        "champion": champion,
        "dataset": dataset_line(run),
        "leaderboard": leaderboard.build(run.evals, run.metas, run.ensemble, cfg.promotion_metric, cfg.epochs),
        "stage_times": stage_times(run),
        "run_time": run_time(run.timings),
        "links": links(run),
        "warnings": warnings(run),
        "models": len(run.model_ids),
        "stopped": (run.stopped or {}).get("why"),
        "reused": reused_rows(run),
    }
