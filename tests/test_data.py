"""Input pipeline: decoding/resizing, batches, shuffling, augmentation, class weights."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cnn_tasks import data
from tests.fixtures_training import write_training_dataset
from tests.imagegen import class_image


@pytest.fixture
def ctx(make_ctx):
    ctx = make_ctx(augment=False)
    write_training_dataset(ctx, classes=3, train=[8, 6, 4], val=3, test=2, size=20, image_size=16,
                           rebalance="class_weight", per_shard=5)
    return ctx


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_decode_and_resize_keeps_pixels_at_size_and_resizes_otherwise():
    import tensorflow as tf

    image = class_image(1, np.random.default_rng(0), size=20)
    same = data.decode_and_resize(tf.constant(png_bytes(image)), 20)
    assert same.dtype == tf.float32
    np.testing.assert_array_equal(same.numpy(), np.asarray(image, np.float32))
    small = data.decode_and_resize(tf.constant(png_bytes(image)), 16).numpy()
    assert small.shape == (16, 16, 3) and 0 <= small.min() and small.max() <= 255


def test_load_split_arrays_is_in_shard_order_and_deterministic(ctx):
    x, y, keys = data.load_split_arrays(ctx, "train")
    assert x.shape == (18, 16, 16, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert 0 <= x.min() and x.max() <= 255 and x.max() > 1  # 0..255 pixels, not standardised
    assert np.bincount(y).tolist() == [8, 6, 4] and len(set(keys)) == 18
    x2, y2, keys2 = data.load_split_arrays(ctx, "train")
    assert keys2 == keys and np.array_equal(y2, y) and np.array_equal(x2, x)
    _, y_first, keys_first = data.load_split_arrays(ctx, "train", limit=7)
    assert keys_first == keys[:7] and y_first.tolist() == y[:7].tolist()


def test_eval_dataset_matches_arrays_and_training_reshuffles_each_epoch(ctx):
    x, y, _ = data.load_split_arrays(ctx, "train")
    batches = list(data.dataset(ctx, "train", batch_size=8))
    assert [len(b[1]) for b in batches] == [8, 8, 2]
    assert batches[0][0].dtype.name == "float32" and batches[0][1].dtype.name == "int32"
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    shuffled = data.dataset(ctx, "train", batch_size=18, training=True)
    first, second = (next(iter(shuffled))[1].numpy() for _ in range(2))
    assert sorted(first) == sorted(y) and not np.array_equal(first, second)
    again = next(iter(data.dataset(ctx, "train", batch_size=18, training=True)))[1].numpy()
    np.testing.assert_array_equal(first, again)  # seeded: the same order sequence every run


def test_cache_false_streams_the_same_batches_without_keeping_the_split(ctx):
    def has_cache(ds) -> bool:
        return b"CacheDataset" in ds._as_serialized_graph().numpy()

    cached, streamed = data.dataset(ctx, "train", batch_size=8), data.dataset(ctx, "train", batch_size=8, cache=False)
    assert has_cache(cached) and not has_cache(streamed)  # the split fits CACHE_LIMIT_BYTES: cached by default
    for a, b in zip(cached, streamed, strict=True):
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())


def test_augmentation_only_for_training_when_enabled(make_ctx, ctx):
    plain = next(iter(data.dataset(ctx, "train", batch_size=18, training=True)))[0].numpy()
    augmenting = make_ctx(augment=True)  # same store and run: same shards
    images = [b[0].numpy() for b in data.dataset(augmenting, "train", batch_size=18, training=True).take(1)]
    assert not any(np.allclose(np.sort(plain.ravel()), np.sort(i.ravel())) for i in images)
    eval_images = next(iter(data.dataset(augmenting, "train", batch_size=18)))[0].numpy()
    np.testing.assert_array_equal(eval_images, data.load_split_arrays(ctx, "train")[0])


def test_class_weight_variant_yields_sample_weights(ctx):
    info = data.load_dataset_info(ctx)
    weights = info["splits"]["val"]["balanced"]["class_weight"]
    x, y, w = next(iter(data.dataset(ctx, "val", "balanced", batch_size=9)))
    np.testing.assert_allclose(w.numpy(), [weights[str(label)] for label in y.numpy()], rtol=1e-6)
    assert len(next(iter(data.dataset(ctx, "val", "unbalanced", batch_size=9)))) == 2


def test_unknown_split_or_variant_names_the_argument(ctx):
    with pytest.raises(ValueError, match="split"):
        data.dataset(ctx, "training")
    with pytest.raises(ValueError, match="variant"):
        data.load_split_arrays(ctx, "test", "balanced")


def test_sample_quota_keeps_every_class_and_the_cap():
    assert data.sample_quota([8, 6, 4], 18) == [8, 6, 4] == data.sample_quota([8, 6, 4], 100)
    assert data.sample_quota([8, 6, 4], 9) == [4, 3, 2]
    assert data.sample_quota([1000, 1000, 2], 10) == [5, 4, 1]  # the rare class is still present
    assert data.sample_quota([5, 0, 3], 4) == [2, 0, 2]  # no images, no quota
    assert sum(data.sample_quota([997, 13, 400, 1], 50)) == 50


def test_load_split_sample_is_stratified_first_in_shard_order_and_bounded(ctx):
    x_all, y_all, keys_all = data.load_split_arrays(ctx, "train")  # [8, 6, 4] images per class
    x, y, keys, sample = data.load_split_sample(ctx, "train", 9)
    assert np.bincount(y).tolist() == [4, 3, 2] and len(x) == 9
    expected = [i for c in range(3) for i in np.flatnonzero(y_all == c)[: [4, 3, 2][c]]]
    assert keys == [keys_all[i] for i in sorted(expected)]  # per class, the first in (seeded) shard order
    np.testing.assert_array_equal(x, x_all[sorted(expected)])
    assert sample == {"images": 9, "split_images": 18, "max_images": 9, "full_split": False,
                      "seed": ctx.config.seed, "description": sample["description"]}
    assert data.load_split_sample(ctx, "train", 100)[3]["full_split"] is True
