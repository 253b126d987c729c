"""Per-model evaluation on the untouched test split (plus train and validation, so over-fitting shows).

The model carries its own standardisation, so it is fed exactly what training fed it: the `data`
pipeline's float32 pixels in 0..255 at the dataset's image size (unbalanced variant).
- test: loaded whole with `data.load_split_arrays` (it is small), for the keys in
  predictions.npz and the images of the right/wrong example grids;
- val and train: streamed batch by batch (`data.dataset(..., cache=False)`) keeping only labels
  and probabilities, so memory stays a few batches plus N x C floats whatever the split size.
  The training split (only there to show over-fitting) is evaluated in full up to
  TRAIN_SAMPLE_MAX images, else on a seeded stratified sample of that many images.
metrics.json's `evaluated` says per split exactly which images were evaluated, and so do the
figure captions.

Writes under `eval/<model_id>/`: metrics.json (per split metrics, confusion matrices, figures),
classification_report.csv/.json, predictions.npz and the figures.
The metric and figure functions (on plain arrays) live in `cnn_tasks.metrics`.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from cnn_tasks import SPLITS, data, models
from cnn_tasks.contracts import ModelMetrics
from cnn_tasks.metrics import (
    classification_metrics,
    evaluate_predictions,
    full_split,
    reliability_table,
    save_predictions,
)

log = logging.getLogger(__name__)

# Test-time augmentation (config.tta): the flips each augmentation preset trains with, as views
# of a batch of images (N, H, W, C).
TTA_VIEWS = {
    "aerial": ("identity", "flip_left_right", "flip_up_down", "rotate_180"),
    "natural": ("identity", "flip_left_right"),
}
FLIPS = {
    "identity": lambda x: x,
    "flip_left_right": lambda x: x[:, :, ::-1],
    "flip_up_down": lambda x: x[:, ::-1],
    "rotate_180": lambda x: x[:, ::-1, ::-1],
}
TRAIN_SAMPLE_MAX = 3000  # training images evaluated per model: all up to this, else a stratified sample
PREDICT_BATCH = 128


# ----------------------------------------------------------------------------- the stage
def stratified_quota(class_counts, max_images: int | None) -> list[int]:
    """Images per class in a stratified sample of `max_images` (proportional, largest remainder,
    ties to the lower class index); every image when the split has no more than `max_images`."""
    counts = np.asarray(class_counts, dtype=np.int64)
    total = int(counts.sum())
    if max_images is None or total <= max_images:
        return counts.tolist()
    quota, remainder = np.divmod(counts * max_images, total)
    quota[np.argsort(-remainder, kind="stable")[: max_images - int(quota.sum())]] += 1
    return quota.tolist()


def _in_sample(y: np.ndarray, seen: np.ndarray, chosen: list[np.ndarray]) -> np.ndarray:
    """Which images of this batch are in the sample; `seen` counts each class's images streamed so far."""
    keep = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        position = seen[c] + np.arange(len(rows))
        inside = position < len(chosen[c])
        keep[rows[inside]] = chosen[c][position[inside]]
        seen[c] += len(rows)
    return keep


def predict_split(ctx, model, split: str, max_images: int | None = None) -> dict:
    """Stream `split` (unbalanced variant) through `model` batch by batch, keeping only labels and
    probabilities: memory stays a few batches plus N x C floats whatever the split size.

    With `max_images` below the split size, only a seeded (config.seed) stratified sample is
    predicted: per class, a random subset of its images (by position in shard order) sized by
    `stratified_quota` from dataset.json's class counts, chosen while streaming.
    Returns {"y", "proba", "index" (positions in shard order), "evaluated" (what was evaluated)}.
    """
    part = data.split_info(data.load_dataset_info(ctx), split, "unbalanced")
    counts = [int(c) for c in part["class_counts"]]
    quota = stratified_quota(counts, max_images)
    chosen = None
    if sum(quota) < sum(counts):
        rng = np.random.default_rng(ctx.config.seed)
        chosen = [np.isin(np.arange(n), rng.choice(n, q, replace=False)) for n, q in zip(counts, quota)]
    seen = np.zeros(len(counts), dtype=np.int64)  # images of each class streamed so far
    ys, probas, index, streamed = [], [], [], 0
    for x, y, *_ in data.dataset(ctx, split, "unbalanced", batch_size=PREDICT_BATCH, cache=False):
        y = y.numpy().astype(int)
        keep = np.ones(len(y), dtype=bool) if chosen is None else _in_sample(y, seen, chosen)
        if keep.any():
            probas.append(np.asarray(model.predict_on_batch(x if keep.all() else x.numpy()[keep]), dtype=np.float64))
            ys.append(y[keep])
            index.append(streamed + np.flatnonzero(keep))
        streamed += len(y)
    n, seed = int(sum(len(v) for v in ys)), ctx.config.seed
    evaluated = (
        full_split(n)
        if chosen is None
        else {
            "images": n,
            "split_images": streamed,
            "full_split": False,
            "seed": seed,
            "description": f"seeded stratified sample of {n} of {streamed} images (seed {seed})",
        }
    )
    return {
        "y": np.concatenate(ys) if ys else np.zeros(0, dtype=int),
        "proba": np.concatenate(probas) if probas else np.zeros((0, len(counts))),
        "index": np.concatenate(index) if index else np.zeros(0, dtype=int),
        "evaluated": evaluated,
    }


def run(ctx, model_id: str) -> dict:
    """Evaluate one trained model on the test, validation and training splits (unbalanced variant)."""
    classes = list(data.load_dataset_info(ctx)["classes"])
    model = models.load_model(ctx.cached(ctx.model_key(model_id, "model.keras")))
    test_images, y_test, keys_test = data.load_split_arrays(ctx, "test", variant="unbalanced")
    proba = model.predict(test_images, batch_size=PREDICT_BATCH, verbose=0)
    splits = {"test": (np.asarray(y_test, dtype=int), np.asarray(proba, dtype=np.float64))}
    evaluated = {"test": full_split(len(y_test))}
    for split, max_images in (("val", None), ("train", TRAIN_SAMPLE_MAX)):
        streamed = predict_split(ctx, model, split, max_images)
        splits[split], evaluated[split] = (streamed["y"], streamed["proba"]), streamed["evaluated"]
    for split in reversed(SPLITS):  # test first: it is the one that counts
        log.info("%s: predicted the %s split (%s)", model_id, split, evaluated[split]["description"])
    tta = None
    if ctx.config.tta:
        views = TTA_VIEWS[data.augment_preset(ctx)]  # the preset training used
        tta = {
            "views": list(views),
            "test": classification_metrics(y_test, predict_views(model, test_images, views), classes),
        }
        log.info(
            "%s: test accuracy %.4f with test-time augmentation (%s)",
            model_id,
            tta["test"]["accuracy"],
            ", ".join(views),
        )
    keys = [str(k) for k in keys_test]
    return write_results(ctx, model_id, classes, splits, test_images, keys, evaluated, tta)


def predict_views(model, images: np.ndarray, views) -> np.ndarray:
    """The model's probabilities averaged over the named flips (FLIPS) of `images`."""
    probas = [model.predict(np.ascontiguousarray(FLIPS[v](images)), batch_size=PREDICT_BATCH, verbose=0) for v in views]
    return np.mean(np.asarray(probas, dtype=np.float64), axis=0)


def write_results(
    ctx,
    model_id: str,
    classes: list[str],
    splits: dict,
    test_images,
    keys_test: list[str],
    evaluated: dict | None = None,
    tta: dict | None = None,
) -> dict:
    """Metrics, figures, classification report and predictions.npz of one model under eval/<model_id>/.

    evaluated: {split: {"images", "split_images", "full_split", "seed", "description"}} (from
    `run`); a split not named there was evaluated in full. tta: {"views", "test": metrics} of
    test-time augmentation, when the config asks for it.
    """
    store = ctx.store
    evaluated = {split: (evaluated or {}).get(split) or full_split(len(y)) for split, (y, _) in splits.items()}
    result = evaluate_predictions(
        store,
        lambda name: ctx.eval_key(model_id, name),
        classes,
        splits,
        test_images,
        name=model_id,
        evaluated={split: e["description"] for split, e in evaluated.items()},
    )
    table = result.pop("table")
    store.put_text(ctx.eval_key(model_id, "classification_report.csv"), table.to_csv(index=False), "text/csv")
    store.put_text(
        ctx.eval_key(model_id, "classification_report.json"),
        table.to_json(orient="records", indent=2),
        "application/json",
    )
    save_predictions(
        store,
        ctx.eval_key(model_id, "predictions.npz"),
        y_test=splits["test"][0],
        p_test=splits["test"][1],
        y_val=splits["val"][0],
        p_val=splits["val"][1],
        keys_test=np.asarray(keys_test, dtype=str),
    )
    test = result["splits"]["test"]
    metrics = {
        "model_id": model_id,
        "classes": classes,
        "evaluated": evaluated,
        "splits": result["splits"],
        "confusion_matrices": result["confusion"],
        "figures": result["figures"],
        "classification_report": json.loads(table.to_json(orient="records")),
        "reliability_test": reliability_table(*splits["test"]),
        "classification_report_key": ctx.eval_key(model_id, "classification_report.csv"),
        "predictions_key": ctx.eval_key(model_id, "predictions.npz"),
        **({"tta": tta} if tta else {}),
    }
    ModelMetrics.write(store, ctx.eval_key(model_id, "metrics.json"), metrics)
    log.info(
        "%s: test accuracy %.4f, macro F1 %.4f, ECE %.4f", model_id, test["accuracy"], test["macro_f1"], test["ece"]
    )
    return {
        "model_id": model_id,
        "accuracy": test["accuracy"],
        "balanced_accuracy": test["balanced_accuracy"],
        "macro_f1": test["macro_f1"],
        "macro_auc": test["macro_auc"],
        "ece": test["ece"],
        "tta_accuracy": tta["test"]["accuracy"] if tta else None,
        "metrics_key": ctx.eval_key(model_id, "metrics.json"),
    }
