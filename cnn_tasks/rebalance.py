"""Rebalance: write the training data in two variants, as described in data/dataset.json.

For train and validation, the "unbalanced" variant holds the split as it is and the "balanced"
variant applies config.rebalance:
  none          balanced == unbalanced
  class_weight  same shards as unbalanced, plus class weights N / (C x n_class)
  oversample    minority classes topped up to the largest class with exact copies (same key)
  undersample   every class cut to the smallest class (seeded sample)
  augment       minority classes topped up with augmented copies, keys '<key>#aug<n>': a small
                brightness/contrast change plus, by the augmentation preset (config.augment, 'auto'
                decided from the class names: cnn_tasks.image_kind), a flip and 90-degree rotation
                (aerial), a horizontal flip (natural) or nothing else (none)
The test split is written once, "unbalanced", and never changed. Copies are chosen from the
split table alone (no pixels), so one streaming pass over the clean shards writes every
variant; records keep the seeded random order of the clean shards, copies follow their original.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from cnn_tasks import plots
from cnn_tasks.context import file_sha256
from cnn_tasks.contracts import DatasetInfo
from cnn_tasks.data import SPLIT_NAMES, SPLITS, read_csv
from cnn_tasks.image_kind import resolve_augment
from cnn_tasks.progress import TERMINAL
from cnn_tasks.shards import ShardWriter
from cnn_tasks.variants import variants_note

log = logging.getLogger(__name__)

BALANCED_SPLITS = ("train", "val")
OWN_SHARDS = ("oversample", "undersample", "augment")  # strategies that write balanced shards
READ_BATCH = 256


@dataclass
class Plan:
    """What the balanced variant of one split holds: which originals, and extra copies of which."""

    keep: set[str] | None = None  # None: every original
    copies: dict[str, int] = field(default_factory=dict)  # key -> number of extra copies


def run(ctx) -> dict:
    """Write the per-split/variant shards, the before/after figures and data/dataset.json."""
    cfg = ctx.config
    analysis = ctx.store.get_json(ctx.data_key("analysis.json"))
    classes = analysis["classes"]
    preset, why = resolve_augment(cfg.augment, classes)
    log.info("augmentation preset %s: %s", preset, why, extra=TERMINAL)
    table = read_csv(ctx, "split.csv")
    manifest = read_csv(ctx, "manifest.csv")
    split_of = dict(zip(table["key"], table["split"]))
    plans = {
        s: plan_split(table[table["split"] == s], cfg.rebalance, cfg.seed, i) for i, s in enumerate(BALANCED_SPLITS)
    }

    scratch = ctx.scratch("rebalance")
    shutil.rmtree(scratch, ignore_errors=True)
    writers = {(s, "unbalanced"): ShardWriter(scratch / s / "unbalanced", f"{s}-unbalanced") for s in SPLITS}
    if cfg.rebalance in OWN_SHARDS:
        writers.update(
            {(s, "balanced"): ShardWriter(scratch / s / "balanced", f"{s}-balanced") for s in BALANCED_SPLITS}
        )
    counts = {name: Counter() for name in writers}
    clean = list(dict.fromkeys(manifest["shard"]))  # shard keys in manifest order
    for image, label, key in iter_clean_records(ctx, clean):
        split = split_of[key]
        _write(writers, counts, (split, "unbalanced"), image, label, key)
        if (split, "balanced") in writers:
            _write_balanced(writers, counts, split, plans[split], cfg, preset, image, label, key)

    expected = Counter(table["split"])
    for split in SPLITS:
        got = sum(counts[(split, "unbalanced")].values())
        if got != expected[split]:
            raise RuntimeError(
                f"the clean shards hold {got} {split} images but split.csv lists "
                f"{expected[split]}: re-run the download and split stages"
            )

    variants = {}
    for (split, variant), writer in writers.items():
        keys = [ctx.data_key("shards", split, variant, path.name) for path in writer.close()]
        for key, path in zip(keys, writer.paths):
            ctx.store.put_file(key, path)
        class_counts = [counts[(split, variant)][i] for i in range(len(classes))]
        variants[(split, variant)] = {
            "shards": keys,
            "sha256": [file_sha256(p) for p in writer.paths],
            "count": sum(class_counts),
            "class_counts": class_counts,
            "class_weight": None,
        }
    shutil.rmtree(scratch, ignore_errors=True)

    splits = {s: {"unbalanced": variants[(s, "unbalanced")]} for s in SPLITS}
    for s in BALANCED_SPLITS:
        splits[s]["balanced"] = balanced_variant(variants, s, cfg.rebalance)
    dataset = {
        "classes": classes,
        "image_size": cfg.image_size,
        "image_fit": cfg.image_fit,  # how data.decode_and_resize makes each image square
        "mean": analysis["mean"],
        "std": analysis["std"],
        "dataset_sha256": dataset_sha256(manifest),
        "rebalance": cfg.rebalance,
        "augment": preset,
        "augment_reason": why,
        "balanced_same_as_unbalanced": cfg.rebalance != "none" and all(same_data(splits[s]) for s in BALANCED_SPLITS),
        "splits": splits,
        "figures": [before_after_figure(ctx, s, classes, splits[s], cfg.rebalance) for s in BALANCED_SPLITS],
    }
    DatasetInfo.write(ctx.store, ctx.data_key("dataset.json"), dataset)
    summary = {f"{s}/{v}": splits[s][v]["count"] for s in splits for v in splits[s]}
    log.info("rebalance=%s: %s", cfg.rebalance, summary)
    if dataset["balanced_same_as_unbalanced"]:
        log.info("%s", variants_note(cfg.rebalance, dataset), extra=TERMINAL)
    return {"dataset": ctx.data_key("dataset.json"), "rebalance": cfg.rebalance, "counts": summary}


# ================================================================== planning
def plan_split(part, strategy: str, seed: int, split_index: int) -> Plan:
    """Choose, per class and seeded, which originals the balanced variant keeps or copies."""
    groups = {label: sorted(group["key"]) for label, group in part.groupby("label")}
    if strategy not in OWN_SHARDS or not groups:
        return Plan()
    sizes = {label: len(keys) for label, keys in groups.items()}
    plan = Plan(keep=set() if strategy == "undersample" else None)
    for label, keys in groups.items():
        rng = np.random.default_rng([seed, split_index, int(label)])
        if strategy == "undersample":
            plan.keep.update(rng.choice(keys, size=min(sizes.values()), replace=False).tolist())
            continue
        extra = max(sizes.values()) - len(keys)
        chosen = rng.choice(keys, size=extra % len(keys), replace=False).tolist()
        for key in keys:  # every image repeated evenly, the remainder drawn at random
            plan.copies[key] = extra // len(keys)
        for key in chosen:
            plan.copies[key] += 1
    return plan


def balanced_variant(variants: dict, split: str, strategy: str) -> dict:
    """The dataset.json entry of the balanced variant of `split` (see docs/architecture.md)."""
    unbalanced = variants[(split, "unbalanced")]
    if strategy in OWN_SHARDS:
        return variants[(split, "balanced")]
    if strategy == "class_weight":
        return {**unbalanced, "class_weight": class_weights(unbalanced["class_counts"])}
    return dict(unbalanced)  # none


def same_data(variants: dict) -> bool:
    """The balanced variant of a split holds what the unbalanced one holds: rebalancing an already
    balanced split adds, removes and reweights nothing."""
    balanced, unbalanced = variants["balanced"], variants["unbalanced"]
    weights = (balanced.get("class_weight") or {}).values()
    return balanced["class_counts"] == unbalanced["class_counts"] and all(abs(w - 1) < 1e-6 for w in weights)


def class_weights(class_counts: list[int]) -> dict[str, float]:
    """Weights N / (C x n_class), so every class contributes equally to the loss."""
    total, n = sum(class_counts), len(class_counts)
    return {str(i): round(total / (n * c), 6) if c else 0.0 for i, c in enumerate(class_counts)}


def dataset_sha256(manifest) -> str:
    """A fingerprint of the validated dataset: sha256 over the sorted (key, class) pairs."""
    digest = hashlib.sha256()
    for key, name in sorted(zip(manifest["key"], manifest["class"])):
        digest.update(f"{key}\t{name}\n".encode())
    return digest.hexdigest()


# ================================================================== writing
def iter_clean_records(ctx, shard_keys: list[str]):
    """Stream (encoded image, label, key) from the clean shards, in order, via the worker cache."""
    import tensorflow as tf

    from cnn_tasks.shards import parse_example

    paths = [str(ctx.cached(key)) for key in shard_keys]
    dataset = tf.data.TFRecordDataset(paths).map(parse_example).batch(READ_BATCH)
    for batch in dataset.as_numpy_iterator():
        for image, label, key in zip(batch["image"], batch["label"], batch["key"]):
            yield bytes(image), int(label), key.decode()


def _write(writers, counts, name, image: bytes, label: int, key: str) -> None:
    writers[name].write(image, label, key)
    counts[name][label] += 1


def _write_balanced(writers, counts, split, plan: Plan, cfg, preset: str, image, label, key) -> None:
    name = (split, "balanced")
    if plan.keep is not None and key not in plan.keep:
        return
    _write(writers, counts, name, image, label, key)
    for n in range(1, plan.copies.get(key, 0) + 1):
        if cfg.rebalance == "augment":
            rng = np.random.default_rng([cfg.seed, int(key[:15], 16), n])
            _write(writers, counts, name, augment(image, rng, preset), label, f"{key}#aug{n}")
        else:
            _write(writers, counts, name, image, label, key)


def augment(encoded: bytes, rng: np.random.Generator, preset: str = "aerial") -> bytes:
    """A copy with a small brightness and contrast change, as PNG; flipped and rotated by 90-degree
    steps for the 'aerial' preset, flipped left-right for 'natural' (photos keep their up)."""
    from PIL import Image

    from cnn_tasks.images import encode_png

    pixels = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"), dtype=np.float32)
    if preset in ("aerial", "natural") and rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    if preset == "aerial":
        if rng.random() < 0.5:
            pixels = pixels[::-1]
        pixels = np.rot90(pixels, k=int(rng.integers(4)))
    contrast, brightness = rng.uniform(0.9, 1.1), rng.uniform(-0.1, 0.1) * 255
    mean = pixels.mean(axis=(0, 1), keepdims=True)
    pixels = (pixels - mean) * contrast + mean + brightness
    return encode_png(Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB"))


# ================================================================== figures
def before_after_figure(ctx, split: str, classes: list[str], variants: dict, strategy: str) -> dict:
    before = np.array(variants["unbalanced"]["class_counts"], dtype=float)
    after = np.array(variants["balanced"]["class_counts"], dtype=float)
    weights = variants["balanced"]["class_weight"]
    label = "balanced"
    if weights:  # class weights leave the images alone: show the weighted (effective) counts
        after = after * np.array([weights[str(i)] for i in range(len(classes))])
        label = "balanced (count x class weight)"
    x = np.arange(len(classes))
    fig, ax = plots.new_figure(max(7, 0.8 * len(classes) + 2), 4.5)
    ax.bar(x - 0.2, before, 0.4, label="unbalanced", color="tab:gray")
    ax.bar(x + 0.2, after, 0.4, label=label, color="tab:green")
    ax.set_xticks(x, classes, rotation=45, ha="right")
    ax.set_ylim(0, 1.2 * max(before.max(), after.max(), 1))  # room for the legend
    ax.set_ylabel("images")
    ax.set_title(f"{SPLIT_NAMES[split].capitalize()} split before and after rebalance={strategy!r}")
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    key = plots.save_figure(ctx.store, ctx.data_key("figures", f"rebalance_{split}.png"), fig)
    return plots.figure_entry(
        key,
        f"Images per class in the {SPLIT_NAMES[split]} split before (grey) and "
        f"after (green) rebalancing with strategy {strategy!r}.",
    )
