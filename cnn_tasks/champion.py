"""The champion's place in the store and the choice of this run's candidate, shared by the promote
stage (which installs champions) and the predict stage (which predicts with one).

champion.json at the store root is the promoted model's record; champions/<run_id>/ holds its
model.keras, its serving exports (saved_model/, model.tflite) and its model card;
champions/history/<timestamp>-<run_id>.json every champion ever promoted.
"""

from __future__ import annotations

import numpy as np

from cnn_tasks.contracts import EnsembleSummary, ModelMetrics

CHAMPION_KEY = "champion.json"


def champion_model_key(run_id: str) -> str:
    return champion_key(run_id, "model.keras")


def champion_key(run_id: str, name: str) -> str:
    """A file promoted with run `run_id`'s champion: model.keras, saved_model, model.tflite, model_card.*"""
    return f"champions/{run_id}/{name}"


def history_key(champion: dict) -> str:
    return f"champions/history/{champion['promoted_at']}-{champion['run_id']}.json"


# ----------------------------------------------------------------------------- candidates
def candidate_rows(ctx) -> list[dict]:
    """The comparison rows (models and ensembles) of this run, from the ensemble stage or per model."""
    ensemble_key = ctx.eval_key("ensemble", "ensemble.json")
    if ctx.store.exists(ensemble_key):
        return EnsembleSummary.read(ctx.store, ensemble_key)["comparison"]
    rows = []
    for key in ctx.store.list(ctx.key("eval") + "/"):
        if key.endswith("/metrics.json"):
            metrics = ModelMetrics.read(ctx.store, key)
            rows.append(
                {
                    "name": metrics["model_id"],
                    "kind": "model",
                    "members": [metrics["model_id"]],
                    **metrics["splits"]["test"],
                }
            )
    return rows


def pick_candidate(rows: list[dict], metric: str) -> tuple[dict, dict]:
    """(best row overall, deployable single-model row): the best member when the best is an ensemble."""

    def score(row):
        return -np.inf if row.get(metric) is None else row[metric]

    best = max(rows, key=score)
    models = {r["name"]: r for r in rows if r["kind"] == "model"}
    deployable = best if best["kind"] == "model" else max((models[m] for m in best["members"]), key=score)
    return best, deployable
