"""Tests for cnn_tasks.visualize, filter_patterns and model_layers on tiny trained CNNs (24 px images, few filters
and steps)."""

from __future__ import annotations

import json
import sys
import types

import matplotlib.pyplot as plt
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cnn_tasks import cli, filter_patterns, model_layers, visualize  # noqa: E402
from tests.imagegen import class_image, make_dataset  # noqa: E402

SIZE, CLASSES = 24, 3
FILTERS = (8, 20, 16, 24)  # conv2 has more than 16 channels, so its grid is capped at 16


def generated_images(per_class: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(CLASSES), per_class).astype(np.int32)
    images = np.stack([np.asarray(class_image(int(c), rng, SIZE), np.float32) for c in labels])
    return images, labels


def tiny_cnn(images) -> keras.Sequential:
    """The pipeline's layer naming: standardize, then conv<i> -> bn<i> -> act<i> (-> pool<i>)."""
    layers = [
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Normalization(
            name="standardize", mean=images.mean(axis=(0, 1, 2)), variance=images.var(axis=(0, 1, 2))
        ),
    ]
    for i, filters in enumerate(FILTERS, start=1):
        layers += [
            keras.layers.Conv2D(filters, 3, padding="same", name=f"conv{i}"),
            keras.layers.BatchNormalization(name=f"bn{i}"),
            keras.layers.Activation("relu", name=f"act{i}"),
        ]
        if i < len(FILTERS):
            layers.append(keras.layers.MaxPooling2D(name=f"pool{i}"))
    layers += [
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES, name="logits"),
        keras.layers.Activation("softmax", name="softmax"),
    ]
    return keras.Sequential(layers, name="tiny_cnn")


@pytest.fixture(scope="module")
def data():
    return generated_images(per_class=6)


@pytest.fixture(scope="module")
def model(data):
    """A tiny CNN trained for a few steps on generated class images."""
    keras.utils.set_random_seed(0)
    images, labels = data
    model = tiny_cnn(images)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, batch_size=6, epochs=3, verbose=0)
    return model


def test_activation_grids_cover_every_conv_unit_and_pooling_layer(model, data):
    images, labels = data
    sample = visualize.sample_indices(labels, seed=1)
    assert sorted(labels[sample]) == list(range(CLASSES))  # one image per class

    maps = visualize.activation_maps(model, images[sample])
    assert list(maps) == ["act1", "pool1", "act2", "pool2", "act3", "pool3", "act4"]
    for name, layer_maps in maps.items():
        channels = visualize.top_channels(layer_maps)
        assert len(channels) == min(16, layer_maps.shape[-1])
        fig = visualize.activation_figure(images[sample], layer_maps, name, channels, ["a", "b", "c"])
        strips = fig.axes[1::2]  # per image: the input, then the strip of channel maps
        assert len(strips) == len(sample)
        plotted = [[int(t.get_text()) for t in ax.get_xticklabels()] for ax in strips]
        assert plotted == [channels.tolist()] * len(sample)
        assert len(channels) == min(16, layer_maps.shape[-1])
        assert name in fig._suptitle.get_text()
        assert str(tuple(layer_maps.shape[1:])) in fig._suptitle.get_text()
        plt.close(fig)


def test_any_functional_cnn_without_separate_activations_works(data):
    """A user's model: functional, activations inside Conv2D, average pooling, no standardize layer."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inputs)
    x = keras.layers.AveragePooling2D(2, name="p1")(x)
    x = keras.layers.Conv2D(5, 3, name="c2")(x)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)

    assert model_layers.feature_layers(model) == ["c1", "p1", "c2"]
    assert filter_patterns.default_filter_layers(model) == ["c1", "c2"]
    maps = visualize.activation_maps(model, data[0][:2])
    assert {name: m.shape for name, m in maps.items()} == {
        "c1": (2, 22, 22, 4),
        "p1": (2, 11, 11, 4),
        "c2": (2, 9, 9, 5),
    }
    assert model_layers.class_score_layer(model) == model.layers[-1].name  # softmax inside Dense
    assert visualize.grad_cam(model, data[0][:2], [0, 1]).shape == (2, SIZE, SIZE)


def test_dead_channels_counts_channels_never_above_epsilon():
    maps = np.zeros((2, 4, 4, 3), np.float32)
    maps[1, 2, 3, 0] = 0.5  # channel 0 fires once; channels 1 and 2 never
    assert visualize.dead_channels({"act1": maps}) == {"act1": {"dead": 2, "total": 3}}
    assert "2 of 3 channels were dead" in visualize.explanation({"act1": {"dead": 2, "total": 3}})


def test_gradient_ascent_increases_each_filters_activation(model):
    patterns, before, after = filter_patterns.filter_patterns(model, "conv2", [0, 3, 7, 19], steps=8)
    assert patterns.shape == (4, SIZE, SIZE, 3)
    assert np.all((patterns >= 0) & (patterns <= 1))
    assert np.all(after > before), (before, after)


def test_jitter_and_smoothing_make_patterns_smoother_than_plain_ascent(model):
    plain, before, plain_after = filter_patterns.filter_patterns(
        model, "conv3", list(range(8)), steps=12, regularise=False
    )
    smooth, _, smooth_after = filter_patterns.filter_patterns(model, "conv3", list(range(8)), steps=12)
    assert np.all(plain_after > before)
    assert np.all(smooth_after > before)
    assert filter_patterns.high_frequency_share(smooth) < 0.7 * filter_patterns.high_frequency_share(plain)


def test_high_frequency_share_tells_noise_from_shapes():
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 1, (4, 32, 32, 3))
    ramp = np.broadcast_to(np.linspace(0, 1, 32)[None, None, :, None], (4, 32, 32, 3))
    assert filter_patterns.high_frequency_share(noise) == pytest.approx(1.0, abs=0.05)
    assert filter_patterns.high_frequency_share(ramp) < 0.01


def test_separable_models_show_their_separable_layers_and_the_first_layers_kernels():
    from cnn_tasks import models
    from cnn_tasks.experiments import DEFAULT_EXPERIMENTS

    spec = next(s for s in DEFAULT_EXPERIMENTS if any(b.separable for b in s.conv))
    model = models.build_model(spec, CLASSES, 32, mean=[128.0] * 3, std=[64.0] * 3)
    names = [layer.name for layer in model_layers.conv_layers(model)]
    assert names == [f"conv{i}" for i in range(1, len(spec.conv) + 1)]
    assert filter_patterns.default_filter_layers(model) == ["conv1", names[len(names) // 2], names[-1]]
    assert visualize.first_layer_kernels(model).shape == (spec.conv[0].filters, 3, 3, 3)
    patterns, _, after = filter_patterns.filter_patterns(model, names[-1], [0, 1], steps=4)
    assert patterns.shape == (2, 32, 32, 3)
    assert np.all(np.isfinite(after))  # untrained: no claim on the activation reached


def test_first_layer_kernels_one_tile_per_filter(model):
    tiles = visualize.first_layer_kernels(model)
    assert tiles.shape == (FILTERS[0], 3, 3, 3)
    assert tiles.min() >= 0
    assert tiles.max() <= 1


def test_grad_cam_heatmaps_are_input_sized_finite_and_in_unit_range(model, data):
    images, labels = data
    assert model_layers.class_score_layer(model) == "logits"  # the gradient of a saturated softmax vanishes
    heatmaps = visualize.grad_cam(model, images[:5], labels[:5])
    assert heatmaps.shape == (5, SIZE, SIZE)
    assert np.isfinite(heatmaps).all()
    assert heatmaps.min() >= 0
    assert heatmaps.max() <= 1


def test_grad_cam_shows_each_original_image_beside_its_overlay(model, data):
    images, labels = data
    probabilities = visualize.predict(model, images)
    chosen = {"correct": np.array([0, 3, 7]), "wrong": np.array([10])}
    heatmaps = {g: visualize.grad_cam(model, images[i], probabilities[i].argmax(axis=1)) for g, i in chosen.items()}
    fig = visualize.grad_cam_figure(images, labels, probabilities, chosen, heatmaps, ["red", "green", "blue"])
    try:
        shown = [ax for ax in fig.axes if ax.images]
        assert len(shown) == 2 * 4  # a pair per example
        originals, overlays = shown[0::2], shown[1::2]
        assert [len(ax.images) for ax in originals] == [1] * 4  # the image alone
        assert [len(ax.images) for ax in overlays] == [2] * 4  # the same image under its heatmap
        for original, overlay in zip(originals, overlays):
            np.testing.assert_array_equal(original.images[0].get_array(), overlay.images[0].get_array())
            assert original.get_position().x1 <= overlay.get_position().x0  # beside it, on its left
            assert abs(original.get_position().y0 - overlay.get_position().y0) < 1e-6
            assert overlay.get_title() == "Grad-CAM overlay"
        assert [ax.get_title().split(":")[0] for ax in originals] == ["correct"] * 3 + ["wrong"]
        assert originals[3].get_position().y1 < originals[0].get_position().y0  # the wrong ones below
    finally:
        plt.close(fig)
    caption = visualize.grad_cam_caption(chosen)
    assert caption == (
        "3 correctly (top rows) and 1 wrongly (bottom rows) classified test images, each image beside its "
        "Grad-CAM heatmap of the predicted class."
    )


def test_model_without_conv_layers_is_rejected(tmp_path, data):
    dense = keras.Sequential(
        [keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(), keras.layers.Dense(CLASSES, activation="softmax")],
        name="mlp",
    )
    with pytest.raises(ValueError, match="'mlp' has no Conv2D layers"):
        visualize.visualize_model(dense, *data, ["a", "b", "c"], tmp_path)


def test_run_writes_every_png_and_lists_them_in_viz_json(model, data, make_ctx, monkeypatch):
    """The stage glue, with stand-ins for the data and model-zoo modules."""
    import cnn_tasks

    ctx = make_ctx(filter_pattern_steps=3)
    path = ctx.scratch("model") / "model.keras"
    model.save(path)
    ctx.store.put_file(ctx.model_key("tiny__unbalanced", "model.keras"), path)
    sample = {"split_images": 5000, "max_images": visualize.TEST_IMAGES_MAX, "full_split": False, "seed": 42}
    requested = []
    fake_data = types.SimpleNamespace(
        load_split_sample=lambda ctx, split, max_images: requested.append((split, max_images)) or (*data, None, sample),
        load_dataset_info=lambda ctx: {"classes": ["red", "green", "blue"]},
    )
    fake_models = types.SimpleNamespace(load_model=lambda p: keras.saving.load_model(p, safe_mode=True))
    for name, module in (("data", fake_data), ("models", fake_models)):
        monkeypatch.setitem(sys.modules, f"cnn_tasks.{name}", module)
        monkeypatch.setattr(cnn_tasks, name, module, raising=False)

    result = visualize.run(ctx, "tiny__unbalanced")

    viz = ctx.store.get_json(result["viz_json"])
    listed = {f["key"] for f in viz["figures"]}
    written = {k for k in ctx.store.list(ctx.viz_key("tiny__unbalanced")) if k.endswith(".png")}
    assert listed == written
    assert result["figures"] == len(listed)
    assert {k.rsplit("/", 1)[1] for k in listed} >= {
        "activations_act1.png",
        "activations_pool3.png",
        "filters_conv1.png",
        "filters_conv3.png",
        "filters_conv4.png",
        "kernels_first_layer.png",
        "grad_cam.png",
    }
    assert all(f["caption"] for f in viz["figures"])
    assert viz["dead_channels"]["act2"]["total"] == 20
    assert viz["activations"]["act2"]["channels"]
    assert len(viz["activations"]["act2"]["channels"]) == 16
    assert all(p["mean_activation_after"] > p["mean_activation_before"] for p in viz["filter_patterns"].values())
    assert all(0 <= p["high_frequency_share"] < 2 for p in viz["filter_patterns"].values())
    assert viz["explanation"]
    assert requested == [("test", visualize.TEST_IMAGES_MAX)]  # a bounded sample, not the whole split
    assert viz["images_considered"] == {**sample, "images": len(data[0])}


def test_cli_on_saved_model_and_image_folder(model, tmp_path, capsys):
    """No meta.json: classes are class_<i>, the folders don't name them, so labels are unknown."""
    model_path = tmp_path / "tiny.keras"
    model.save(model_path)
    folder = make_dataset(tmp_path / "images", classes=CLASSES, per_class=3, size=32)  # resized to 24 px

    cli.main(["visualize", str(model_path), str(folder), str(tmp_path / "out"), "--steps", "2", "--layers", "conv2"])

    viz = json.loads((tmp_path / "out" / "viz.json").read_text())
    assert viz["model_id"] == "tiny"
    assert list(viz["filter_patterns"]) == ["conv2"]
    for entry in viz["figures"]:
        assert (tmp_path / "out" / entry["key"]).is_file()
    assert "labels unknown" in viz["figures"][-1]["caption"]
    assert "grad_cam.png" in capsys.readouterr().out
    assert viz["images_considered"]["images"] == CLASSES * 3


def test_cli_reads_images_as_prediction_does(tmp_path, capsys):
    """The CLI's images are image_folder.read_images' pixels (training preprocessing); hidden and
    unusable files are left out, not fatal."""
    from cnn_tasks import image_folder

    folder = make_dataset(tmp_path / "images", classes=CLASSES, per_class=2, size=32)
    (folder / "class_a" / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / "notes.txt").write_text("not an image")
    images, labels = visualize.load_image_folder(folder, (SIZE, SIZE), ["class_a", "class_b", "class_c"])
    names, expected, rejected = image_folder.read_images(folder, SIZE)
    np.testing.assert_array_equal(images, expected)
    assert [r["image"] for r in rejected] == ["notes.txt"]
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]  # from the class folders of the usable images
    assert "skipped notes.txt" in capsys.readouterr().err


def test_cli_class_names_and_labels_from_meta_json(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"classes": ["class_a", "class_b", "class_c"]}))
    from cnn_tasks import image_folder  # the CLI reads class names as prediction does

    names = image_folder.classes_beside(tmp_path / "m.keras", CLASSES)
    assert names == ["class_a", "class_b", "class_c"]
    assert image_folder.classes_beside(tmp_path / "other" / "m.keras", 2) == ["class_0", "class_1"]
    folder = make_dataset(tmp_path / "images", classes=CLASSES, per_class=2, size=32)
    images, labels = visualize.load_image_folder(folder, (SIZE, SIZE), names)
    assert images.shape == (6, SIZE, SIZE, 3)
    assert images.dtype == np.float32
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
