"""Champion promotion: does this run's best model beat the current champion on this run's test split?

The candidate is this run's best row by `config.promotion_metric` (eval/ensemble/ensemble.json,
or the per-model metrics when no ensemble stage ran). Only a single model can be deployed, so when
the best row is an ensemble its best member is the candidate, and the comparison uses that
member's own score (promoting it on the ensemble's score would overstate what gets deployed);
the ensemble's result is recorded beside it.

The champion (store-root champion.json) is re-evaluated on this run's test split when its classes
match; otherwise it is incomparable and the candidate is NOT promoted (archive champion.json by hand
to start a new champion line for a new class set). Guards: test accuracy >= promotion_min_accuracy.
On promotion the model is copied to champions/<run_id>/model.keras, the champion record to
champions/history/<timestamp>-<run_id>.json, then champion.json is replaced. Nothing older is
deleted: every champion keeps its history record and its model copy.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import numpy as np

from cnn_tasks import data, model_card, models, reuse, serving
from cnn_tasks.champion import (
    CHAMPION_KEY,
    candidate_rows,
    champion_key,
    champion_model_key,
    history_key,
    pick_candidate,
)
from cnn_tasks.contracts import Promotion
from cnn_tasks.metrics import classification_metrics

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the decision
def decide(
    value: float,
    accuracy: float,
    champion_value: float | None,
    comparable: bool,
    has_champion: bool,
    margin: float,
    min_accuracy: float,
) -> tuple[bool, str]:
    """Promote only when every guard passes and the candidate beats the champion by more than `margin`."""
    if accuracy < min_accuracy:
        return False, f"guard failed: test accuracy {accuracy:.4f} < promotion_min_accuracy {min_accuracy:.4f}"
    if not has_champion:
        return True, "no current champion: the first model that passes the guards becomes champion"
    if not comparable or champion_value is None:
        return False, "the current champion cannot be compared on this run's test split (see champion.why)"
    if value > champion_value + margin:
        return True, f"{value:.4f} beats the champion's {champion_value:.4f} by more than the margin {margin}"
    return False, f"{value:.4f} does not beat the champion's {champion_value:.4f} by more than the margin {margin}"


def champion_comparability(champion: dict, classes: list[str]) -> tuple[bool, str]:
    if list(champion.get("classes") or []) != list(classes):
        return False, (
            f"champion classes {champion.get('classes')} differ from this run's {list(classes)}: "
            "the models solve different tasks"
        )
    return True, "same classes: re-evaluated on this run's test split"


def evaluate_champion(model, x: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    """The champion's test metrics on this run's images, resized to its own input size if needed."""
    size = model.input_shape[1]
    if x.shape[1] != size:
        import tensorflow as tf

        x = tf.image.resize(x, (size, size)).numpy()
    proba = np.asarray(model.predict(x, batch_size=128, verbose=0), dtype=np.float64)
    return classification_metrics(y, proba, classes)


# ----------------------------------------------------------------------------- writing the champion
def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def install_champion(store, champion: dict, source_model_key: str, previous: dict | None) -> dict:
    """Copy the model, archive the previous record (if not yet in history), write history + champion.json."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        local = store.get_file(source_model_key, Path(tmp) / "model.keras")
        store.put_file(champion["model_key"], local)
    if previous and previous.get("promoted_at") and previous.get("run_id") and not store.exists(history_key(previous)):
        store.put_json(history_key(previous), previous)
    store.put_json(history_key(champion), champion)
    store.put_json(CHAMPION_KEY, champion)
    return {"champion_key": CHAMPION_KEY, "history_key": history_key(champion), "model_key": champion["model_key"]}


def export_champion(ctx, champion: dict) -> dict:
    """What serving needs, under champions/<run_id>/ before champion.json names it: the SavedModel,
    the float16 TFLite file (export_tflite) and the model card (also kept in the run's folder, for
    the report). Returns their keys, which the champion record links to."""
    store, run_id = ctx.store, champion["run_id"]
    scratch = ctx.scratch("promote")
    model = models.load_model(ctx.cached(champion["source_model_key"]))
    size, fit = champion["image_size"], champion["image_fit"]
    keys = {"saved_model_key": champion_key(run_id, "saved_model")}
    serving.export_saved_model(model, champion["classes"], size, fit, scratch / "saved_model")
    serving.upload_folder(store, scratch / "saved_model", keys["saved_model_key"])
    if ctx.config.export_tflite:
        keys["tflite_key"] = champion_key(run_id, "model.tflite")
        store.put_file(keys["tflite_key"], serving.export_tflite(model, size, scratch / "model.tflite", scratch))
    card = model_card.build(ctx, {**champion, **keys})
    store.put_json(ctx.key("model_card.json"), card)
    store.put_text(ctx.key("model_card.md"), model_card.markdown(card), "text/markdown; charset=utf-8")
    for name in ("model_card.json", "model_card.md"):
        key = champion_key(run_id, name)
        store.copy(ctx.key(name), key)
        keys[f"{name.replace('.', '_')}_key"] = key
    log.info("exported the new champion: %s", ", ".join(keys.values()))
    return keys


# ----------------------------------------------------------------------------- the stage
def _champion_on_this_test(ctx, champion: dict, classes: list[str]) -> dict:
    """{"comparable", "why", "metrics"} for the current champion on this run's test split."""
    comparable, why = champion_comparability(champion, classes)
    if not comparable:
        return {"comparable": False, "why": why, "metrics": None}
    if not ctx.store.exists(champion["model_key"]):
        return {"comparable": False, "why": f"champion model {champion['model_key']} is missing", "metrics": None}
    # The champion sees the test images prepared as it was trained (its size and image_fit).
    x, y, _ = data.load_split_arrays(
        ctx, "test", variant="unbalanced", size=champion.get("image_size"), fit=data.image_fit(champion)
    )
    model = models.load_model(ctx.cached(champion["model_key"]))
    metrics = evaluate_champion(model, x, np.asarray(y, dtype=int), classes)
    return {"comparable": True, "why": why, "metrics": metrics}


def run(ctx) -> dict:
    """Compare, decide, record promotion.json, and install the new champion when it wins."""
    cfg, store = ctx.config, ctx.store
    metric = cfg.promotion_metric
    if store.exists(ctx.key("promotion.json")):  # a retried or cleared task: the decision stands
        return _result(ctx, Promotion.read(store, ctx.key("promotion.json")))
    info = data.load_dataset_info(ctx)
    classes = list(info["classes"])
    rows = candidate_rows(ctx)
    if not rows:
        raise RuntimeError(f"no evaluated models under {ctx.key('eval')}: run the evaluate stage first")
    best, deployable = pick_candidate(rows, metric)
    previous = store.get_json(CHAMPION_KEY) if store.exists(CHAMPION_KEY) else None
    if previous and previous.get("run_id") == ctx.run_id:  # installed by an earlier try, then interrupted
        record = {
            "run_id": ctx.run_id,
            "metric": metric,
            "promoted": True,
            "decision": "promoted",
            "reason": "promoted by an earlier try of this task",
            "candidate": {"name": previous["model_id"], metric: previous["value"]},
            "new_champion": previous,
            "champion_on_this_test": None,
        }
        Promotion.write(store, ctx.key("promotion.json"), record)
        return _result(ctx, record)
    champion = _champion_on_this_test(ctx, previous, classes) if previous else None
    champion_value = champion["metrics"][metric] if champion and champion["metrics"] else None
    value, accuracy = deployable[metric], deployable["accuracy"]
    promoted, reason = decide(
        value,
        accuracy,
        champion_value,
        bool(champion and champion["comparable"]),
        previous is not None,
        cfg.promotion_margin,
        cfg.promotion_min_accuracy,
    )
    record = {
        "run_id": ctx.run_id,
        "metric": metric,
        "margin": cfg.promotion_margin,
        "min_accuracy": cfg.promotion_min_accuracy,
        "promoted": promoted,
        "decision": "promoted" if promoted else "kept current champion" if previous else "no champion",
        "reason": reason,
        "best": best,
        "candidate": deployable,
        "candidate_note": None
        if best["kind"] == "model"
        else f"best row is ensemble {best['name']} ({metric} {best[metric]:.4f}); its best member "
        f"{deployable['name']} is the deployable candidate and is compared on its own score",
        "guards": [
            {
                "name": "test accuracy >= promotion_min_accuracy",
                "value": accuracy,
                "threshold": cfg.promotion_min_accuracy,
                "ok": accuracy >= cfg.promotion_min_accuracy,
            }
        ],
        "previous_champion": previous,
        "champion_on_this_test": champion,
    }
    if promoted:
        new = {
            "run_id": ctx.run_id,
            "model_id": deployable["name"],
            "model_key": champion_model_key(ctx.run_id),
            "source_model_key": ctx.model_key(deployable["name"], "model.keras"),
            "metric": metric,
            "value": value,
            "metrics": {
                k: deployable.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece")
            },
            "classes": classes,
            "image_size": info.get("image_size"),
            "image_fit": data.image_fit(info),
            "dataset_sha256": info.get("dataset_sha256"),
            # What the nothing-changed check compares a later run with (cnn_tasks.reuse).
            "data_digest": (reuse.run_record(ctx, "download") or {}).get("data_digest"),
            "settings_digest": reuse.model_settings_digest(cfg),
            "promoted_at": utc_stamp(),
            "ensemble": None if best["kind"] == "model" else {"name": best["name"], "value": best[metric]},
            "previous_run_id": previous.get("run_id") if previous else None,
        }
        new.update(export_champion(ctx, new))
        record.update(install_champion(store, new, new["source_model_key"], previous))
        record["new_champion"] = new
    Promotion.write(store, ctx.key("promotion.json"), record)
    log.info("promotion: %s (%s)", record["decision"], reason)
    return _result(ctx, record)


def _result(ctx, record: dict) -> dict:
    """The small XCom summary of a promotion record."""
    metric, champion = record["metric"], record.get("champion_on_this_test") or {}
    return {
        "promoted": record["promoted"],
        "decision": record["decision"],
        "reason": record["reason"],
        "metric": metric,
        "candidate": record["candidate"]["name"],
        "value": record["candidate"][metric],
        "champion_value": (champion.get("metrics") or {}).get(metric),
        "promotion_key": ctx.key("promotion.json"),
    }
