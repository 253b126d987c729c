"""Champion promotion: does this run's best model beat the current champion of its model name on
this run's test split?

The candidate is this run's best row by `config.promotion_metric` (eval/ensemble/ensemble.json,
or the per-model metrics when no ensemble stage ran). Only a single model can be deployed, so when
the best row is an ensemble its best member is the candidate, and the comparison uses that
member's own score (promoting it on the ensemble's score would overstate what gets deployed);
the ensemble's result is recorded beside it.

The champion is the one of the run's model name (`champion.model_name`; see cnn_tasks/champion.py
for where champions live). It is re-evaluated on this run's test split when its classes match.
When they differ the models solve different tasks: the candidate is not promoted and the reason
says how the classes differ and what to do (another model_name, or new_lineage_on_class_change,
which lets the candidate start a new lineage on the guards alone). Guards: test accuracy >=
promotion_min_accuracy. On promotion the model, its serving exports and its model card go to
champions/<name>/models/<run_id>/, the record to champions/<name>/history/, then
champions/<name>/champion.json is replaced. Nothing older is deleted.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import UTC, datetime

import numpy as np

from cnn_tasks import data, model_card, models, reuse, serving
from cnn_tasks.champion import (
    candidate_rows,
    champion_model_key,
    copy_champion_file,
    install_champion,
    keep_training_data_record,
    model_name,
    pick_candidate,
    put_champion_file,
    read_champion,
    seen_keys,
)
from cnn_tasks.contracts import Promotion
from cnn_tasks.metrics import classification_metrics, load_predictions
from cnn_tasks.progress import TERMINAL

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


def class_difference(old: list[str], new: list[str]) -> str | None:
    """How this run's classes differ from the champion's, in words; None when they are the same."""
    old, new = list(old or []), list(new)
    if old == new:
        return None
    added, removed = [c for c in new if c not in old], [c for c in old if c not in new]
    parts = [f"added {', '.join(added)}" if added else "", f"removed {', '.join(removed)}" if removed else ""]
    parts = [p for p in parts if p] or ["the same classes in another label order"]
    return f"the champion has {len(old)} classes, this run {len(new)}: {'; '.join(parts)}"


def champion_comparability(champion: dict, classes: list[str]) -> tuple[bool, str]:
    difference = class_difference(champion.get("classes"), classes)
    if difference:
        return False, f"{difference}: the models solve different tasks"
    return True, "same classes: re-evaluated on this run's test split"


def class_change_advice(name: str, champion: dict, classes: list[str]) -> str:
    """Why a run with other classes is not promoted, and the two ways forward."""
    other = f"{name[:28]}-{len(classes)}-classes"
    return (
        f"not promoted: model '{name}' has a champion (run {champion.get('run_id')}) trained on other classes "
        f"({class_difference(champion.get('classes'), classes)}). To keep both, run with another model_name "
        f"(e.g. model_name={other}); to let this run's classes replace the champion, set "
        "new_lineage_on_class_change=true"
    )


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


def export_champion(ctx, champion: dict) -> dict:
    """What serving needs, under champions/<name>/models/<run_id>/ before champion.json names it: the SavedModel,
    the float16 TFLite file (export_tflite) and the model card (also kept in the run's folder, for
    the report). Returns their keys, which the champion record links to."""
    store = ctx.store
    scratch = ctx.scratch("promote")
    model = models.load_model(ctx.cached(champion["source_model_key"]))
    size, fit = champion["image_size"], champion["image_fit"]
    serving.export_saved_model(model, champion["classes"], size, fit, scratch / "saved_model")
    keys = {"saved_model_key": put_champion_file(store, champion, "saved_model", scratch / "saved_model")}
    if ctx.config.export_tflite:
        tflite = serving.export_tflite(model, size, scratch / "model.tflite", scratch)
        keys["tflite_key"] = put_champion_file(store, champion, "model.tflite", tflite)
    card = model_card.build(ctx, {**champion, **keys})
    store.put_json(ctx.key("model_card.json"), card)
    store.put_text(ctx.key("model_card.md"), model_card.markdown(card), "text/markdown; charset=utf-8")
    for file in ("model_card.json", "model_card.md"):
        keys[f"{file.replace('.', '_')}_key"] = copy_champion_file(store, champion, file, ctx.key(file))
    log.info("exported the new champion: %s", ", ".join(keys.values()))
    return keys


# ----------------------------------------------------------------------------- the stage
def _champion_on_this_test(ctx, champion: dict, classes: list[str], candidate: str) -> dict:
    """The fair comparison: champion and candidate scored on this run's test images that neither of
    them trained or validated on. {"comparable", "why", "metrics" (the champion's),
    "candidate_metrics", "unseen", "test_images"}."""
    comparable, why = champion_comparability(champion, classes)
    if not comparable:
        return {"comparable": False, "why": why, "metrics": None, "classes_differ": True}
    if not ctx.store.exists(champion["model_key"]):
        return {"comparable": False, "why": f"champion model {champion['model_key']} is missing", "metrics": None}
    # The champion sees the test images prepared as it was trained (its size and image_fit).
    x, y, keys = data.load_split_arrays(
        ctx, "test", variant="unbalanced", size=champion.get("image_size"), fit=data.image_fit(champion)
    )
    keys = np.asarray([str(k) for k in keys])
    seen = seen_keys(ctx.store, champion)
    unseen = np.array([k not in seen for k in keys], bool) if seen is not None else np.ones(len(keys), bool)
    counts = {"unseen": int(unseen.sum()), "test_images": len(keys)}
    minimum = ctx.config.min_unseen_test_images
    if seen is not None and counts["unseen"] < minimum:
        return {
            "comparable": False,
            "metrics": None,
            **counts,
            "why": f"only {counts['unseen']} of this run's {len(keys)} test images are unseen by the champion (it "
            f"trained or validated on the others), fewer than min_unseen_test_images={minimum}: no fair comparison",
        }
    predictions = load_predictions(ctx.store, ctx.eval_key(candidate, "predictions.npz"))
    by_key = dict(zip(predictions["keys_test"].astype(str), predictions["p_test"]))
    y = np.asarray(y, dtype=int)[unseen]
    model = models.load_model(ctx.cached(champion["model_key"]))
    return {
        "comparable": True,
        "metrics": evaluate_champion(model, x[unseen], y, classes),
        "candidate_metrics": classification_metrics(y, np.stack([by_key[k] for k in keys[unseen]]), classes),
        **counts,
        "why": f"same classes: both scored on the {counts['unseen']} of {len(keys)} test images that neither trained "
        "or validated on"
        if seen is not None
        else "same classes; the champion's training images are not recorded (promoted by an older version), so "
        f"both are scored on all {len(keys)} test images",
    }


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
    name = model_name(cfg)
    previous = read_champion(store, name)
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
    champion = _champion_on_this_test(ctx, previous, classes, deployable["name"]) if previous else None
    champion_value = champion["metrics"][metric] if champion and champion["metrics"] else None
    value, accuracy = deployable[metric], deployable["accuracy"]
    if champion and champion.get("candidate_metrics"):  # compared on the same unseen images
        value = champion["candidate_metrics"][metric]
    classes_differ = bool(champion and champion.get("classes_differ"))
    new_lineage = classes_differ and cfg.new_lineage_on_class_change
    promoted, reason = decide(
        value,
        accuracy,
        champion_value,
        bool(champion and champion["comparable"]),
        previous is not None and not new_lineage,
        cfg.promotion_margin,
        cfg.promotion_min_accuracy,
    )
    if classes_differ and not new_lineage:
        reason = class_change_advice(name, previous, classes)
    elif champion and not champion["comparable"] and not new_lineage and accuracy >= cfg.promotion_min_accuracy:
        reason = f"not promoted: the champion (run {previous.get('run_id')}) cannot be compared: {champion['why']}"
    elif new_lineage and promoted:
        reason = (
            f"{champion['why']}; new_lineage_on_class_change is on, so this model starts a new lineage of "
            f"'{name}' on the guards alone (the previous champion stays in its history)"
        )
    record = {
        "run_id": ctx.run_id,
        "model_name": name,
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
            "model_name": name,
            "run_id": ctx.run_id,
            "model_id": deployable["name"],
            "model_key": champion_model_key(name, ctx.run_id),
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
        new.update(keep_training_data_record(ctx, new))
        record.update(asdict(install_champion(store, new, new["source_model_key"], previous)))
        record["new_champion"] = new
    Promotion.write(store, ctx.key("promotion.json"), record)
    log.info("promotion: %s (%s)", record["decision"], reason, extra=TERMINAL)
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
        "model_name": record.get("model_name"),
    }
