"""A tiny data/dataset.json + shards in the store, written exactly per the rebalance contract,
so training tests do not depend on the data stages."""

from __future__ import annotations

import hashlib
import io

import numpy as np

from cnn_tasks.shards import ShardWriter
from tests.imagegen import class_image

SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _write_split(ctx, split: str, counts: list[int], size: int, per_shard: int) -> tuple[dict, np.ndarray]:
    """Write one split's shards (classes interleaved) into the store; return its `V` entry and pixels."""
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    order = [c for i in range(max(counts)) for c in range(len(counts)) if i < counts[c]]
    folder = ctx.scratch("fixture_shards", split)
    pixels = []
    with ShardWriter(folder, "images", per_shard=per_shard) as writer:
        for label in order:
            image = class_image(label, rng, size)
            data = _png(image)
            pixels.append(np.asarray(image, dtype=np.float64))
            writer.write(data, label, hashlib.sha256(data).hexdigest())
    keys = []
    for path in writer.paths:
        key = ctx.data_key("shards", split, "unbalanced", path.name)
        ctx.store.put_file(key, path)
        keys.append(key)
    entry = {"shards": keys, "count": len(order), "class_counts": list(counts), "class_weight": None}
    return entry, np.stack(pixels)


def write_training_dataset(
    ctx,
    classes: int = 3,
    train: int | list[int] = 12,
    val: int = 4,
    test: int = 4,
    size: int = 24,
    image_size: int | None = None,
    rebalance: str = "none",
    per_shard: int = 16,
) -> dict:
    """Write data/dataset.json and shards; `train` may be per-class counts (imbalance).

    rebalance="class_weight": the balanced variant reuses the unbalanced shards with class
    weights (train and val), as the contract says; "none": balanced == unbalanced.
    """
    train_counts = train if isinstance(train, list) else [train] * classes
    splits, train_pixels = {}, None
    for split, counts in (("train", train_counts), ("val", [val] * classes), ("test", [test] * classes)):
        entry, pixels = _write_split(ctx, split, counts, size, per_shard)
        balanced = dict(entry)
        if rebalance == "class_weight" and split != "test":
            total = sum(train_counts)
            balanced["class_weight"] = {str(c): total / (classes * n) for c, n in enumerate(train_counts)}
        splits[split] = {"unbalanced": entry} if split == "test" else {"unbalanced": entry, "balanced": balanced}
        train_pixels = pixels if split == "train" else train_pixels
    info = {
        "classes": [f"class_{chr(ord('a') + c)}" for c in range(classes)],
        "image_size": image_size or size,
        "mean": train_pixels.mean(axis=(0, 1, 2)).tolist(),
        "std": train_pixels.std(axis=(0, 1, 2)).tolist(),
        "dataset_sha256": hashlib.sha256(f"fixture-{classes}-{train_counts}-{size}".encode()).hexdigest(),
        "rebalance": rebalance,
        "splits": splits,
        "figures": [],
    }
    ctx.store.put_json(ctx.data_key("dataset.json"), info)
    return info


def write_model_meta(ctx, model_id: str, model, image_size: int = 16, **overrides) -> dict:
    """models/<id>/meta.json as the train stage writes it for `model`: `<experiment>__<variant>`, of
    the run's experiment of that name (else its first); `overrides` replace any field."""
    from cnn_tasks import models, runtime
    from cnn_tasks.contracts import ModelMeta

    experiment, variant = model_id.split("__")
    names = [e.name for e in ctx.config.experiments]
    spec = ctx.config.experiment(experiment) if experiment in names else ctx.config.experiments[0]
    meta = {
        "model_id": model_id,
        "experiment": experiment,
        "variant": variant,
        "description": spec.description,
        "classes": overrides.get("classes") or ctx.store.get_json(ctx.data_key("dataset.json"))["classes"],
        "image_size": image_size,
        "image_fit": ctx.config.image_fit,
        "spec": spec.model_dump(mode="json"),
        "params": int(model.count_params()),
        "layers": models.describe(model)["layers"],
        "best_epoch": 3,
        "epochs_run": 5,
        "stopped_by": "early_stopping",
        "resumed_from_epoch": 0,
        "best_val_loss": 0.6,
        "best_val_accuracy": 0.8,
        "final_val_loss": 0.7,
        "final_val_accuracy": 0.75,
        "wall_time_s": 30.0,
        "train_time_s": 25.0,
        "images_per_s": 100.0,
        "class_weight": None,
        "dataset_sha256": None,
        "config": ctx.config.to_dict(),
        "versions": runtime.package_versions(),
        "git_commit": runtime.git_commit(),
        "runtime": {},
        "keys": {"model": ctx.model_key(model_id, "model.keras")},
        "figures": [],
    } | overrides
    ModelMeta.write(ctx.store, ctx.model_key(model_id, "meta.json"), meta)
    return meta
