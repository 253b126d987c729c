"""Input pipeline: decoding/resizing, batches, shuffling, augmentation, class weights."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from cnn_tasks import data
from tests.fixtures_training import write_training_dataset
from tests.imagegen import class_image


@pytest.fixture
def ctx(make_ctx):
    ctx = make_ctx(augment=False)
    write_training_dataset(
        ctx, classes=3, train=[8, 6, 4], val=3, test=2, size=20, image_size=16, rebalance="class_weight", per_shard=5
    )
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
    assert small.shape == (16, 16, 3)
    assert 0 <= small.min()
    assert small.max() <= 255


def test_load_split_arrays_is_in_shard_order_and_deterministic(ctx):
    x, y, keys = data.load_split_arrays(ctx, "train")
    assert x.shape == (18, 16, 16, 3)
    assert x.dtype == np.float32
    assert y.dtype == np.int32
    assert 0 <= x.min()
    assert x.max() <= 255
    assert x.max() > 1  # 0..255 pixels, not standardised
    assert np.bincount(y).tolist() == [8, 6, 4]
    assert len(set(keys)) == 18
    x2, y2, keys2 = data.load_split_arrays(ctx, "train")
    assert keys2 == keys
    assert np.array_equal(y2, y)
    assert np.array_equal(x2, x)
    _, y_first, keys_first = data.load_split_arrays(ctx, "train", limit=7)
    assert keys_first == keys[:7]
    assert y_first.tolist() == y[:7].tolist()


def test_eval_dataset_matches_arrays_and_training_reshuffles_each_epoch(ctx):
    x, y, _ = data.load_split_arrays(ctx, "train")
    batches = list(data.dataset(ctx, "train", batch_size=8))
    assert [len(b[1]) for b in batches] == [8, 8, 2]
    assert batches[0][0].dtype.name == "float32"
    assert batches[0][1].dtype.name == "int32"
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    shuffled = data.dataset(ctx, "train", batch_size=18, training=True)
    first, second = (next(iter(shuffled))[1].numpy() for _ in range(2))
    assert sorted(first) == sorted(y)
    assert not np.array_equal(first, second)
    again = next(iter(data.dataset(ctx, "train", batch_size=18, training=True)))[1].numpy()
    np.testing.assert_array_equal(first, again)  # seeded: the same order sequence every run


def test_cache_false_streams_the_same_batches_without_keeping_the_split(ctx):
    def has_cache(ds) -> bool:
        return b"CacheDataset" in ds._as_serialized_graph().numpy()

    cached, streamed = data.dataset(ctx, "train", batch_size=8), data.dataset(ctx, "train", batch_size=8, cache=False)
    assert has_cache(cached)
    assert not has_cache(streamed)  # the split fits CACHE_LIMIT_BYTES: cached by default
    for a, b in zip(cached, streamed, strict=True):
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
        np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())


@pytest.mark.parametrize("preset", ["aerial", "natural"])
def test_augmentation_only_for_training_when_enabled(make_ctx, ctx, preset):
    plain = next(iter(data.dataset(ctx, "train", batch_size=18, training=True)))[0].numpy()
    augmenting = make_ctx(augment=preset)  # same store and run: same shards
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
    assert np.bincount(y).tolist() == [4, 3, 2]
    assert len(x) == 9
    expected = [i for c in range(3) for i in np.flatnonzero(y_all == c)[: [4, 3, 2][c]]]
    assert keys == [keys_all[i] for i in sorted(expected)]  # per class, the first in (seeded) shard order
    np.testing.assert_array_equal(x, x_all[sorted(expected)])
    assert sample == {
        "images": 9,
        "split_images": 18,
        "max_images": 9,
        "full_split": False,
        "seed": ctx.config.seed,
        "description": sample["description"],
    }
    assert data.load_split_sample(ctx, "train", 100)[3]["full_split"] is True


# ------------------------------------------------------------------ image_fit: squash | pad | center_crop
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def banded(colours, band: int = 10, height: int = 10) -> np.ndarray:
    """A (height, band * len(colours)) RGB image of vertical colour bands, left to right."""
    return np.concatenate([np.full((height, band, 3), c, np.uint8) for c in colours], axis=1)


def fitted(pixels: np.ndarray, size: int, fit: str) -> np.ndarray:
    """decode_and_resize's output rounded to whole levels (resizing leaves 254.99998 for 255)."""
    return np.round(data.decode_and_resize(png_bytes(Image.fromarray(pixels)), size, fit).numpy())


def test_squash_keeps_every_band_and_the_full_height():
    out = fitted(banded([RED, GREEN, BLUE, WHITE]), 8, "squash")  # 40x10 -> 8x8: 2 columns per band
    assert out.shape == (8, 8, 3)
    assert out[:, 0].tolist() == [list(RED)] * 8
    assert out[:, 7].tolist() == [list(WHITE)] * 8
    assert (out[:, 2:4, 1] > 200).all()
    assert (out[:, 4:6, 2] > 200).all()  # green, then blue, in between
    assert (out == out[:1]).all()  # every row alike: no bars


def test_center_crop_keeps_only_the_central_square():
    out = fitted(banded([RED, GREEN, BLUE, WHITE]), 8, "center_crop")  # the middle 10x10: green | blue
    assert out[:, :3].tolist() == [[list(GREEN)] * 3] * 8
    assert out[:, 5:].tolist() == [[list(BLUE)] * 3] * 8
    assert out[..., 0].max() == 0  # no red or white at all


def test_pad_keeps_the_aspect_ratio_between_black_bars():
    wide = fitted(banded([RED, GREEN, BLUE, WHITE]), 8, "pad")  # 40x10 -> 8x2, centred
    assert (wide[:3] == 0).all()
    assert (wide[5:] == 0).all()
    assert wide[3:5, 0].tolist() == [list(RED)] * 2
    assert wide[3:5, 7].tolist() == [list(WHITE)] * 2
    tall = fitted(np.transpose(banded([RED, GREEN, BLUE, WHITE]), (1, 0, 2)).copy(), 8, "pad")
    assert (tall[:, :3] == 0).all()
    assert (tall[:, 5:] == 0).all()
    assert tall[0, 3:5].tolist() == [list(RED)] * 2
    assert tall[7, 3:5].tolist() == [list(WHITE)] * 2


def test_a_square_image_is_the_same_in_every_fit():
    image = np.asarray(class_image(2, np.random.default_rng(1), size=20))
    outs = [fitted(image, size, fit) for size in (20, 12) for fit in ("squash", "pad", "center_crop")]
    np.testing.assert_array_equal(outs[0], image.astype(np.float32))
    for out in outs[1:3]:
        np.testing.assert_array_equal(out, outs[0])
    for out in outs[4:]:
        np.testing.assert_allclose(out, outs[3], atol=1e-3)


def test_unknown_fit_is_refused():
    with pytest.raises(ValueError, match="image_fit: 'stretch' is not one of"):
        fitted(banded([RED]), 8, "stretch")


def _banded_dataset(ctx, fit: str | None):
    """dataset.json (with `fit`, or none as before the setting) whose every split is one 40x10 image."""
    from cnn_tasks.shards import ShardWriter

    encoded = png_bytes(Image.fromarray(banded([RED, GREEN, BLUE, WHITE])))
    with ShardWriter(ctx.scratch("banded"), "images") as writer:
        writer.write(encoded, 0, "banded")
    key = ctx.data_key("shards", "banded.tfrecord")
    ctx.store.put_file(key, writer.paths[0])
    part = {"shards": [key], "count": 1, "class_counts": [1], "class_weight": None}
    info = {
        "classes": ["a"],
        "image_size": 8,
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
        "rebalance": "none",
        "splits": {s: {"unbalanced": part, "balanced": part} for s in data.SPLITS},
    }
    if fit:
        info["image_fit"] = fit
    ctx.store.put_json(ctx.data_key("dataset.json"), info)
    return encoded


@pytest.mark.parametrize("fit", [None, "pad", "center_crop"])
def test_every_reader_of_the_split_uses_the_fit_dataset_json_records(make_ctx, fit):
    ctx = make_ctx(augment=False)
    encoded = _banded_dataset(ctx, fit)
    expected = data.decode_and_resize(encoded, 8, fit or "squash").numpy()  # no field: squash, as before
    arrays = data.load_split_arrays(ctx, "test")[0][0]
    sample = data.load_split_sample(ctx, "val", 5)[0][0]
    batch = next(iter(data.dataset(ctx, "train", batch_size=1, training=True)))[0][0].numpy()
    for got in (arrays, sample, batch):
        np.testing.assert_array_equal(got, expected)


def test_another_models_size_and_fit_override_the_runs(make_ctx):
    """The champion is re-scored on this run's test images prepared as it was trained."""
    ctx = make_ctx(augment=False)
    encoded = _banded_dataset(ctx, "squash")
    got = data.load_split_arrays(ctx, "test", size=6, fit="center_crop")[0][0]
    np.testing.assert_array_equal(got, data.decode_and_resize(encoded, 6, "center_crop").numpy())


# ------------------------------------------------------------------ prediction reads images as training did
def _colour_model(path):
    """A saved 8x8 model: class "reddish" when mean red beats mean (green + blue) / 2, else "not"."""
    import keras

    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")]
    )
    model.layers[-1].set_weights([np.array([[1, -1], [-0.5, 0.5], [-0.5, 0.5]], np.float32), np.zeros(2, np.float32)])
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def test_predict_cli_applies_the_fit_and_limits_its_model_was_trained_with(tmp_path, capsys):
    from cnn_tasks import cli, image_folder, images

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    # Red at both ends, green and blue in the middle: squashed it is mostly red, centre-cropped not red.
    Image.fromarray(banded([RED, GREEN, BLUE, RED])).save(folder / "wide.png")
    Image.new("RGB", (1, 1), RED).save(folder / "dot.png")
    Image.new("RGB", (200, 10), RED).save(folder / "strip.png")
    model = _colour_model(tmp_path / "model" / "model.keras")

    def predict_cli(meta: dict | None) -> tuple[dict, dict]:
        meta_path = model.with_name("meta.json")
        meta_path.unlink(missing_ok=True)
        if meta is not None:
            meta_path.write_text(json.dumps({"classes": ["reddish", "not"], **meta}))
        out = tmp_path / "predictions.csv"
        assert cli.main(["predict-model", str(model), str(folder), "--out", str(out)]) == 0
        rows = {r["image"]: r["predicted_class"] for r in csv.DictReader(out.open())}
        rejected = {r["image"]: r["reason"] for r in csv.DictReader(out.with_name("predictions_rejected.csv").open())}
        return rows, rejected

    trained = {"image_fit": "center_crop", "config": {"min_image_side": 8, "max_aspect_ratio": 10.0}}
    rows, rejected = predict_cli(trained)
    assert rows == {"wide.png": "not"}
    assert rejected == {
        "dot.png": f"{images.TOO_SMALL}: the shorter side is 1 px, below min_image_side=8",
        "strip.png": f"{images.EXTREME_ASPECT_RATIO}: 200x10 has aspect ratio 20, above max_aspect_ratio=10",
    }
    # A model saved before image_fit existed: squash and no limits, exactly as it was trained.
    rows, rejected = predict_cli({})
    assert rows == {"wide.png": "reddish", "dot.png": "reddish", "strip.png": "reddish"}
    assert not rejected
    assert image_folder.preprocessing_beside(model) == image_folder.Preprocessing("squash", 1, None)


def test_predict_stage_reads_with_the_champions_fit_and_this_runs_limits(make_ctx):
    from cnn_tasks import champion, predict
    from cnn_tasks.image_folder import Preprocessing

    ctx = make_ctx(image_fit="squash", min_image_side=12, max_aspect_ratio=4)
    meta_key = "runs/old/models/m1_balanced/meta.json"
    ctx.store.put_bytes("champions/old/model.keras", b"model")
    ctx.store.put_json(
        champion.champion_json_key(champion.model_name(ctx.config)),
        {
            "model_id": "m1_balanced",
            "run_id": "old",
            "classes": ["a", "b"],
            "model_key": "champions/old/model.keras",
            "source_model_key": "runs/old/models/m1_balanced/model.keras",
        },
    )
    ctx.store.put_json(meta_key, {"image_fit": "center_crop"})  # the champion was trained centre-cropped
    chosen = predict.choose_model(ctx, ["a", "b"])
    assert chosen["meta_key"] == meta_key
    assert predict.stage_preprocessing(ctx, chosen) == Preprocessing("center_crop", 12, 4.0)
    ctx.store.put_json(meta_key, {"classes": ["a", "b"]})  # recorded before image_fit existed: squash
    assert predict.stage_preprocessing(ctx, chosen) == Preprocessing("squash", 12, 4.0)


def test_rebalance_records_the_runs_fit_and_training_reads_with_it(tmp_path, make_ctx):
    from cnn_tasks import download, rebalance, split

    root = tmp_path / "wide"
    for c, cls in enumerate(("left", "right")):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            pixels = np.random.default_rng(10 * c + i).integers(0, 256, (12, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    ctx = make_ctx(dataset_url=str(root), image_size=16, image_fit="center_crop", min_images_per_class=5, augment=False)
    download.run(ctx)
    split.run(ctx)
    rebalance.run(ctx)
    info = data.load_dataset_info(ctx)
    assert info["image_fit"] == "center_crop"
    x, _, keys = data.load_split_arrays(ctx, "train")
    manifest = {
        row["key"]: row["source"]
        for row in csv.DictReader(io.StringIO(ctx.store.get_text(ctx.data_key("manifest.csv"))))
    }
    for pixels, key in zip(x, keys):
        square = np.asarray(Image.open(root / manifest[key]))[:, 9:21]  # the central 12 x 12
        expected = data.decode_and_resize(png_bytes(Image.fromarray(square)), 16).numpy()
        np.testing.assert_allclose(pixels, expected, atol=1e-3)


def top_minus_bottom(images: np.ndarray) -> np.ndarray:
    """Per image, the mean of the top quarter minus the mean of the bottom quarter."""
    quarter = images.shape[1] // 4
    return images[:, :quarter].mean(axis=(1, 2, 3)) - images[:, -quarter:].mean(axis=(1, 2, 3))


def test_the_natural_preset_keeps_the_up_and_the_aerial_preset_turns_images_over():
    import tensorflow as tf

    sky_over_ground = np.zeros((64, 32, 32, 3), np.float32)
    sky_over_ground[:, :16] = 220.0  # bright top half, dark bottom half
    sky_over_ground[:, :, :8] += 20.0  # and a brighter left edge, so left-right flips are visible
    batch = tf.constant(sky_over_ground)
    natural = data.augmenter("natural", seed=1)(batch).numpy()
    aerial = data.augmenter("aerial", seed=1)(batch).numpy()
    for images in (natural, aerial):
        assert images.shape == sky_over_ground.shape
        assert images.min() >= 0
        assert images.max() <= 255
    assert (top_minus_bottom(natural) > 100).all()  # never upside down or on its side
    left_right = natural[:, :, :4].mean(axis=(1, 2, 3)) - natural[:, :, -4:].mean(axis=(1, 2, 3))
    assert (left_right > 0).any()
    assert (left_right < 0).any()  # mirrored left-right sometimes
    assert (top_minus_bottom(aerial) > 100).any()
    assert (top_minus_bottom(aerial) < -100).any()  # upside down sometimes
    sideways = np.abs(top_minus_bottom(aerial)) < 100  # the bright half on the left or the right
    assert sideways.any()
    assert not np.array_equal(natural, data.augmenter("natural", seed=2)(batch).numpy())
