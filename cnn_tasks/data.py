"""The input pipeline: tf.data from the packed shards listed in data/dataset.json.

The pipeline yields float32 pixels in 0..255, made square at `image_size` by `decode_and_resize`
with the dataset's `image_fit`, the one preprocessing function (prediction uses it too, with the
fit recorded in the model's meta.json). Standardisation with the training
split's channel mean/std is NOT done here: it is the model's first layer (`standardize`, see
models.py), so training, evaluation and prediction can never preprocess differently.
"""

from __future__ import annotations

import math

import numpy as np

from cnn_tasks import SPLIT_NAMES, SPLITS, VARIANTS, runtime, shards  # noqa: F401 (SPLIT_NAMES: for the stages)
from cnn_tasks.config import IMAGE_FITS
from cnn_tasks.context import RunContext

CACHE_LIMIT_BYTES = 1 << 30  # cache decoded images in memory when a split fits in this budget


def _tf():
    import tensorflow as tf

    return tf


def load_dataset_info(ctx: RunContext) -> dict:
    """data/dataset.json, written by the rebalance stage (see docs/architecture.md)."""
    from cnn_tasks.contracts import DatasetInfo

    return DatasetInfo.read(ctx.store, ctx.data_key("dataset.json"))


def augment_preset(ctx: RunContext, info: dict | None = None) -> str:
    """The augmentation preset training uses: decided by the rebalance stage (dataset.json), which
    resolves augment 'auto' from the class names; the config's for files written before."""
    from cnn_tasks.image_kind import resolve_augment

    info = info or load_dataset_info(ctx)
    return info.get("augment") or resolve_augment(ctx.config.augment, info["classes"])[0]


def read_csv(ctx: RunContext, name: str):
    """data/<name> (manifest.csv, split.csv) as a DataFrame of strings, empty cells kept as ''."""
    return read_csv_text(ctx.store.get_text(ctx.data_key(name)))


def read_csv_text(text: str):
    """A manifest.csv or split.csv as `read_csv` reads it."""
    import io

    import pandas as pd

    return pd.read_csv(io.StringIO(text), dtype={"key": str, "class": str, "given_split": str}, keep_default_na=False)


def split_info(info: dict, split: str, variant: str = "unbalanced") -> dict:
    """The `V` entry of one split and variant: shards, count, class_counts, class_weight."""
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {SPLITS}")
    if variant not in VARIANTS:
        raise ValueError(f"variant: {variant!r} is not one of {VARIANTS}")
    variants = info["splits"][split]
    if variant not in variants:
        raise ValueError(f"variant: dataset.json has no {variant!r} data for split {split!r}")
    return variants[variant]


def decode_and_resize(image_bytes, image_size: int, fit: str = "squash"):
    """Encoded JPEG/PNG bytes -> float32 [S, S, 3] in 0..255 (bilinear, antialiased when shrinking).

    `fit` (config.image_fit) says how a non-square image becomes square: see `fit_square`.
    """
    tf = _tf()
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return tf.ensure_shape(fit_square(tf.cast(image, tf.float32), image_size, fit), [image_size, image_size, 3])


def fit_square(image, image_size: int, fit: str = "squash"):
    """float32 pixels [H, W, 3] (or a batch [N, H, W, 3]) -> [S, S, 3] (or [N, S, S, 3]).

    "squash" resizes to S x S (distorting the aspect ratio), "pad" resizes to fit inside S x S
    keeping the aspect ratio and centres the picture on black, "center_crop" keeps the central square
    and resizes that. A square image is the same in every mode.
    """
    tf = _tf()
    if fit not in IMAGE_FITS:
        raise ValueError(f"image_fit: {fit!r} is not one of {IMAGE_FITS}")
    height, width = tf.shape(image)[-3], tf.shape(image)[-2]
    if fit == "center_crop":
        side = tf.minimum(height, width)
        image = tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2, side, side)
    elif fit == "pad":
        # Resize first, then pad: the black bars never blur into the picture.
        image = tf.cond(
            height == width,
            lambda: image,
            lambda: tf.image.resize_with_pad(image, image_size, image_size, antialias=True),
        )
    same_size = tf.logical_and(tf.shape(image)[-3] == image_size, tf.shape(image)[-2] == image_size)
    return tf.cond(same_size, lambda: image, lambda: tf.image.resize(image, [image_size, image_size], antialias=True))


def image_fit(info: dict) -> str:
    """The fit a dataset.json or meta.json records (files written before the setting: squash)."""
    return info.get("image_fit") or "squash"


def dataset(
    ctx: RunContext,
    split: str,
    variant: str = "unbalanced",
    batch_size: int = 32,
    training: bool = False,
    cache: bool = True,
):
    """Batches of (images float32 [B,S,S,3] 0..255, labels int32) from the split's shards.

    training=True shuffles every epoch (seeded) and augments batches with the config.augment preset.
    cache=True keeps the decoded split in memory after the first pass when it fits in
    CACHE_LIMIT_BYTES (for datasets read every epoch); cache=False streams it (one-pass readers
    such as evaluation, whose memory then stays at a few batches whatever the split size).
    When the variant has class weights (rebalance="class_weight", balanced variant) each batch
    also carries per-image weights: (images, labels, weights). Training uses them as class
    weights, validation as sample weights, so val loss/accuracy are class-balanced too.
    """
    tf = _tf()
    info = load_dataset_info(ctx)
    part = split_info(info, split, variant)
    size = int(info["image_size"])
    ds = _decoded(ctx, part, size, fit=image_fit(info)).map(lambda x, y, key: (x, y))
    ds = ds.apply(tf.data.experimental.assert_cardinality(part["count"]))  # keras then knows the epoch length
    if cache and part["count"] * size * size * 3 * 4 <= CACHE_LIMIT_BYTES:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(min(part["count"], 20_000), seed=ctx.config.seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE)
    if training and (preset := augment_preset(ctx, info)) != "none":
        augment = augmenter(preset, ctx.config.seed)
        ds = ds.map(lambda x, y: (augment(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    if part.get("class_weight"):
        table = class_weight_vector(part["class_weight"], len(info["classes"]))
        ds = ds.map(lambda x, y: (x, y, tf.gather(table, y)))
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def _decoded(ctx: RunContext, part: dict, image_size: int, limit: int | None = None, fit: str = "squash"):
    """(image, label, key) of a split variant's shards in order, decoded in parallel with the order
    kept (deterministic) and fitted to `image_size` with `fit`. Shards are cached by the content
    hash dataset.json records for them."""
    tf = _tf()
    hashes = part.get("sha256") or [None] * len(part["shards"])
    paths = [str(ctx.cached(key, sha256)) for key, sha256 in zip(part["shards"], hashes)]
    if not paths:
        raise ValueError("dataset.json lists no shards for this split; did the rebalance stage run?")

    def parse(serialized):
        record = shards.parse_example(serialized)
        image = decode_and_resize(record["image"], image_size, fit)
        return image, tf.cast(record["label"], tf.int32), record["key"]

    ds = tf.data.TFRecordDataset(paths)
    if limit is not None:
        ds = ds.take(limit)
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _options():
    tf = _tf()
    options = tf.data.Options()
    options.threading.private_threadpool_size = runtime.threads_per_task()
    return options


def augmenter(preset: str, seed: int):
    """The config.augment preset ('aerial' or 'natural') as a function of a batch of 0..255 images.

    aerial: the 8 symmetries of the square (flips in both axes and a transpose: every 90-degree
            rotation, mirrored or not), brightness and contrast; for images without an up.
    natural: horizontal flip, random resized crop (zoom in up to 30 % per axis, so the aspect ratio
            varies too, then a shift), brightness, contrast and saturation jitter; for photos.
    """
    import keras

    tf = _tf()
    layers = keras.layers
    if preset == "aerial":
        steps = [
            layers.RandomFlip("horizontal_and_vertical", seed=seed),
            layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 1),
            layers.RandomContrast(0.1, value_range=(0, 255), seed=seed + 2),
        ]
    elif preset == "natural":
        steps = [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomZoom((-0.3, 0.0), (-0.3, 0.0), fill_mode="reflect", seed=seed + 1),
            layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 2),
            layers.RandomColorJitter(
                value_range=(0, 255),
                brightness_factor=0.2,
                contrast_factor=0.2,
                saturation_factor=(0.35, 0.65),  # 0.5 leaves the saturation as it is
                seed=seed + 3,
            ),
        ]
    else:
        raise ValueError(f"no augmentation preset {preset!r}; one of 'aerial', 'natural'")
    pipeline = keras.Sequential(steps, name=f"augment_{preset}")

    def augment(images):
        images = tf.clip_by_value(pipeline(images, training=True), 0.0, 255.0)
        if preset == "aerial":  # a transpose per image adds the other four of the square's symmetries
            swap = tf.random.uniform(tf.stack([tf.shape(images)[0], 1, 1, 1]), seed=seed + 4) < 0.5
            images = tf.where(swap, tf.transpose(images, [0, 2, 1, 3]), images)
        return images

    return augment


def class_weight_vector(class_weight: dict, num_classes: int):
    """dataset.json's {"0": w, ...} as a float32 vector indexed by label (missing classes weigh 1)."""
    weights = np.ones(num_classes, dtype=np.float32)
    for label, weight in class_weight.items():
        weights[int(label)] = float(weight)
    return _tf().constant(weights)


def load_split_arrays(
    ctx: RunContext,
    split: str,
    variant: str = "unbalanced",
    limit: int | None = None,
    size: int | None = None,
    fit: str | None = None,
):
    """(x float32 [N,S,S,3] 0..255, y int32 [N], keys list[str]) in shard order; deterministic.

    `size` and `fit` default to this run's; another model (the champion) passes its own."""
    info = load_dataset_info(ctx)
    part = split_info(info, split, variant)
    size = int(size or info["image_size"])
    ds = _decoded(ctx, part, size, limit, fit=fit or image_fit(info)).batch(256)
    xs, ys, keys = [], [], []
    for x, y, k in ds.with_options(_options()):
        xs.append(x.numpy())
        ys.append(y.numpy())
        keys.extend(v.decode() for v in k.numpy())
    if not xs:
        return np.zeros((0, size, size, 3), np.float32), np.zeros((0,), np.int32), []
    return np.concatenate(xs), np.concatenate(ys), keys


def sample_quota(class_counts, max_images: int) -> list[int]:
    """Images per class in a stratified sample of about `max_images`: every class that has images
    gets at least one, the rest is shared in proportion to the class sizes (largest remainder,
    ties to the lower class index); every image when the split has no more than `max_images`."""
    counts = np.asarray(class_counts, dtype=np.int64)
    if int(counts.sum()) <= max_images:
        return counts.tolist()
    floor = np.minimum(counts, 1)
    spare, rest = max_images - int(floor.sum()), counts - floor
    if spare <= 0:  # more classes than max_images: one image of each
        return floor.tolist()
    quota, remainder = np.divmod(rest * spare, int(rest.sum()))
    quota[np.argsort(-remainder, kind="stable")[: spare - int(quota.sum())]] += 1
    return (floor + quota).tolist()


def load_split_sample(ctx: RunContext, split: str, max_images: int, variant: str = "unbalanced"):
    """A bounded, stratified, seeded sample of a split: (x, y, keys, sample) like load_split_arrays.

    Per class, the first `sample_quota` images in shard order. The shards hold the images in a
    seeded random order (download._pack shuffles every accepted image with config.seed; rebalance
    and ShardWriter keep that order), so the first images of a class in shard order are a seeded
    random sample of that class; `limit` (first N overall) alone would not guarantee every class
    is present. Streams batch by batch and stops once every quota is filled, so memory holds the
    sample plus one batch. `sample` = {"images", "split_images", "max_images", "full_split", "seed",
    "description"}.
    """
    info = load_dataset_info(ctx)
    part = split_info(info, split, variant)
    size, counts = int(info["image_size"]), [int(c) for c in part["class_counts"]]
    quota = np.asarray(sample_quota(counts, max_images), dtype=np.int64)
    taken = np.zeros(len(counts), dtype=np.int64)
    xs, ys, keys = [], [], []
    for x, y, k in _decoded(ctx, part, size, fit=image_fit(info)).batch(256).with_options(_options()):
        y = y.numpy()
        keep = np.zeros(len(y), dtype=bool)
        for c in np.unique(y):
            rows = np.flatnonzero(y == c)[: max(int(quota[c] - taken[c]), 0)]
            keep[rows] = True
            taken[c] += len(rows)
        if keep.any():
            xs.append(x.numpy()[keep])
            ys.append(y[keep])
            keys.extend(v.decode() for v in k.numpy()[keep])
        if (taken >= quota).all():
            break
    n, total, seed = int(taken.sum()), int(sum(counts)), ctx.config.seed
    full = n == total
    sample = {
        "images": n,
        "split_images": total,
        "max_images": max_images,
        "full_split": full,
        "seed": None if full else seed,
        "description": f"full {split} split, {n} images"
        if full
        else f"seeded stratified sample of {n} of {total} {split} images (seed {seed}, at most "
        f"{max_images}, every class present)",
    }
    if not xs:
        return np.zeros((0, size, size, 3), np.float32), np.zeros((0,), np.int32), [], sample
    return np.concatenate(xs), np.concatenate(ys), keys, sample


def steps_per_epoch(count: int, batch_size: int) -> int:
    return max(1, math.ceil(count / batch_size))
