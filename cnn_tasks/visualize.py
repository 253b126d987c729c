"""What a trained CNN learned: activations, filter patterns, first-layer kernels and Grad-CAM.
Filter patterns (gradient ascent) are `cnn_tasks.filter_patterns`; the layers looked at are found
by `cnn_tasks.model_layers`.

Follows the keras.io examples "Visualizing what convnets learn" and "Grad-CAM class activation
visualization". `visualize_model` works on any Keras classifier with Conv2D layers that takes
0..255 RGB pixels; `run` is the pipeline stage (one trained model of this run); the command
`python -m cnn_tasks visualize MODEL.keras IMAGE_FOLDER OUT_DIR` (`cnn_tasks.cli`) reads the folder
and the class names exactly as `python -m cnn_tasks predict-model` does, with the training
preprocessing (`load_image_folder`).

The model is only ever called in inference mode: nothing here trains or changes it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from cnn_tasks.filter_patterns import MAX_FILTERS, default_filter_layers, draw_filter_patterns
from cnn_tasks.model_layers import (
    class_score_layer,
    conv_unit_outputs,
    feature_layers,
    full_conv_layers,
    input_size,
    require_conv_layers,
    sub_model,
)
from cnn_tasks.plots import figure_entry, new_figure, save_figure

CHANNELS_PER_LAYER = 16  # feature maps shown per layer
DEAD_EPSILON = 1e-6  # a channel whose maximum never exceeds this on the sample is "dead"
HEATMAP_EXAMPLES = 4  # correct and wrong Grad-CAM examples each
TEST_IMAGES_MAX = 2000  # test images the stage predicts to pick its samples (seeded, stratified)


# --------------------------------------------------------------------------- pipeline stage
def run(ctx, model_id: str) -> dict:
    """Visualise one trained model of this run on its test images; writes viz/<model_id>/.

    Only a bounded sample is loaded and predicted (the figures need a few images per class): at
    most TEST_IMAGES_MAX test images, stratified so every class is present and chosen with the
    config seed (data.load_split_sample); viz.json's `images_considered` says how many.
    """
    from cnn_tasks import data, models

    model = models.load_model(ctx.cached(ctx.model_key(model_id, "model.keras")))
    images, labels, _, sample = data.load_split_sample(ctx, "test", TEST_IMAGES_MAX)
    classes = data.load_dataset_info(ctx)["classes"]
    summary = visualize_model(
        model,
        images,
        labels,
        classes,
        ctx.store,
        prefix=ctx.viz_key(model_id),
        seed=ctx.config.seed,
        model_id=model_id,
        filter_steps=ctx.config.filter_pattern_steps,
        images_considered=sample,
    )
    dead = sum(d["dead"] for d in summary["dead_channels"].values())
    return {
        "model_id": model_id,
        "viz_json": ctx.viz_key(model_id, "viz.json"),
        "figures": len(summary["figures"]),
        "dead_channels": dead,
    }


# --------------------------------------------------------------------------- the whole picture
def visualize_model(
    model,
    images,
    labels,
    class_names,
    out,
    seed: int = 42,
    *,
    prefix: str = "",
    model_id: str | None = None,
    filter_layers: list[str] | None = None,
    filter_steps: int = 30,
    max_filters: int = MAX_FILTERS,
    channels_per_layer: int = CHANNELS_PER_LAYER,
    images_considered: dict | None = None,
) -> dict:
    """Draw every figure for `model` and write them plus `viz.json` to `out`; return viz.json.

    images: float32 [N, S, S, 3] pixels in 0..255 at the model's input size.
    labels: int class indices, or None when unknown (predicted classes then pick the sample).
    out: an ArtifactStore (keys go under `prefix`) or a local folder.
    filter_layers: conv layers for filter patterns (default: first, middle and last).
    images_considered: where `images` came from (e.g. data.load_split_sample's `sample`); viz.json's
    `images_considered` is it with "images" set to len(images).
    """
    model_id = model_id or model.name
    require_conv_layers(model, model_id)
    if not len(images):
        raise ValueError(f"no images to visualise model {model_id!r} on")
    store = _as_store(out)

    def save(name: str, fig, caption: str) -> dict:
        key = f"{prefix.rstrip('/')}/{name}" if prefix else name
        return figure_entry(save_figure(store, key, fig), caption)

    labels = None if labels is None else np.asarray(labels)
    probabilities = predict(model, images)
    sample_classes = probabilities.argmax(axis=1) if labels is None else labels
    sample = sample_indices(sample_classes, seed)
    row_labels = [class_names[c] for c in sample_classes[sample]]

    activation_entries, activations, dead = draw_activations(
        model, images[sample], row_labels, save, channels_per_layer
    )
    filter_entries, patterns = draw_filter_patterns(
        model, filter_layers or default_filter_layers(model), filter_steps, max_filters, seed, save
    )
    kernel_entry = draw_kernels(model, save)
    grad_cam_entry = draw_grad_cam(model, images, labels, probabilities, class_names, seed, save)

    summary = {
        "model_id": model_id,
        "figures": [*activation_entries, *filter_entries, kernel_entry, grad_cam_entry],
        "activations": activations,
        "dead_channels": dead,
        "filter_patterns": patterns,
        "explanation": explanation(dead),
        "images_considered": {**(images_considered or {}), "images": len(images)},
    }
    store.put_json(f"{prefix.rstrip('/')}/viz.json" if prefix else "viz.json", summary)
    return summary


def draw_activations(model, images, row_labels, save, channels_per_layer: int):
    """One figure per conv unit / pooling layer; returns (figures, {layer: shape, channels}, dead)."""
    entries, shown = [], {}
    maps = activation_maps(model, images)
    for layer_name, layer_maps in maps.items():
        channels = top_channels(layer_maps, channels_per_layer)
        shown[layer_name] = {"shape": list(layer_maps.shape[1:]), "channels": channels.tolist()}
        fig = activation_figure(images, layer_maps, layer_name, channels, row_labels)
        entries.append(
            save(
                f"activations_{layer_name}.png",
                fig,
                f"{layer_name} feature maps {tuple(layer_maps.shape[1:])}: the {len(channels)} most "
                "active channels for one sample image per class (row labels).",
            )
        )
    return entries, shown, dead_channels(maps)


def draw_kernels(model, save) -> dict:
    """The first conv layer's kernels as colour tiles."""
    tiles, first = first_layer_kernels(model), full_conv_layers(model)[0]
    return save(
        "kernels_first_layer.png",
        kernel_figure(tiles, first.name),
        f"The {len(tiles)} {tiles.shape[1]}x{tiles.shape[2]} kernels of the first conv layer "
        f"({first.name}) as RGB tiles, each scaled to 0..1.",
    )


def draw_grad_cam(model, images, labels, probabilities, class_names, seed: int, save) -> dict:
    """Grad-CAM of the predicted class on a few correctly and wrongly classified images."""
    predicted = probabilities.argmax(axis=1)
    chosen = heatmap_examples(labels, predicted, seed)
    heatmaps = {group: grad_cam(model, images[idx], predicted[idx]) for group, idx in chosen.items() if len(idx)}
    fig = grad_cam_figure(images, labels, probabilities, chosen, heatmaps, class_names)
    return save("grad_cam.png", fig, grad_cam_caption(chosen))


def predict(model, images, batch_size: int = 256) -> np.ndarray:
    """Class probabilities [N, C] in inference mode."""
    return np.asarray(model.predict(images, batch_size=batch_size, verbose=0))


# --------------------------------------------------------------------------- intermediate activations
def sample_indices(labels, seed: int, per_class: int = 1) -> np.ndarray:
    """`per_class` images of every class present, picked with `seed`, ordered by class."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=min(per_class, int((labels == c).sum())), replace=False)
        for c in np.unique(labels)
    ]
    return np.concatenate(chosen).astype(int)


def activation_maps(model, images) -> dict[str, np.ndarray]:
    """{layer name: feature maps [N, H, W, C]} for every conv unit and pooling layer."""
    names = feature_layers(model)
    outputs = sub_model(model, names)(np.asarray(images, np.float32), training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return {name: np.asarray(out) for name, out in zip(names, outputs)}


def top_channels(maps: np.ndarray, count: int = CHANNELS_PER_LAYER) -> np.ndarray:
    """Indices of the `count` channels with the highest mean activation, strongest first."""
    means = maps.mean(axis=(0, 1, 2))
    return np.argsort(-means, kind="stable")[:count]


def dead_channels(maps: dict[str, np.ndarray], epsilon: float = DEAD_EPSILON) -> dict:
    """{layer: {"dead": n, "total": m}}: channels whose activation never exceeds `epsilon`
    over all sample images and positions."""
    return {
        name: {"dead": int((m.max(axis=(0, 1, 2)) <= epsilon).sum()), "total": int(m.shape[-1])}
        for name, m in maps.items()
    }


def channel_strips(maps: np.ndarray, channels) -> np.ndarray:
    """Per image, the chosen channels side by side ([N, h, k*(w+1)-1], NaN gaps), each channel
    scaled to 0..1 over the whole sample so images stay comparable."""
    chosen = maps[..., channels]
    low = chosen.min(axis=(0, 1, 2), keepdims=True)
    scaled = (chosen - low) / np.maximum(chosen.max(axis=(0, 1, 2), keepdims=True) - low, 1e-8)
    gap = np.full((*scaled.shape[:2], 1, scaled.shape[-1]), np.nan)
    tiles = np.concatenate([scaled, gap], axis=2)  # [N, h, w+1, k]
    strips = np.transpose(tiles, (0, 1, 3, 2)).reshape(len(maps), maps.shape[1], -1)
    return strips[:, :, :-1]


def activation_figure(images, maps, layer_name: str, channels, row_labels: list[str]):
    """One row per sample image: the input, then a strip of the chosen channels' feature maps,
    labelled with their channel indices (one image per row keeps this fast for wide grids)."""
    rows, width = len(images), maps.shape[2]
    fig, axes = new_figure(
        1.2 + 0.7 * len(channels),
        0.9 * rows + 0.8,
        nrows=rows,
        ncols=2,
        squeeze=False,
        gridspec_kw={"width_ratios": [1, len(channels)]},
    )
    centres = np.arange(len(channels)) * (width + 1) + (width - 1) / 2
    for r, strip in enumerate(channel_strips(maps, channels)):
        axes[r, 0].imshow(_display(images[r]))
        axes[r, 0].set_title(row_labels[r], fontsize=7)
        axes[r, 0].axis("off")
        axes[r, 1].imshow(strip, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        axes[r, 1].set_xticks(centres, [str(c) for c in channels], fontsize=6)
        axes[r, 1].set_yticks([])
    axes[-1, 1].set_xlabel("channel index")
    fig.suptitle(
        f"{layer_name}  output {tuple(maps.shape[1:])}: top {len(channels)} of {maps.shape[-1]} "
        "channels by mean activation (each scaled to its range on the sample)"
    )
    return fig


def explanation(dead: dict) -> str:
    """A few sentences for the report on reading the activation figures."""
    total = sum(d["total"] for d in dead.values())
    dead_count = sum(d["dead"] for d in dead.values())
    worst = max(dead, key=lambda name: dead[name]["dead"] / dead[name]["total"])
    text = (
        "Feature maps show what each layer responds to: early layers keep the image's layout and react "
        "to colours and edges, deeper layers are coarser and respond to larger, class-specific "
        "textures and shapes. Channels that stay at zero for every sample image are dead filters: "
        "capacity the model does not use (often a sign of too high a learning rate or too many filters). "
    )
    if dead_count == 0:
        return text + "No channel was dead on the sample."
    return text + (
        f"{dead_count} of {total} channels were dead on the sample; the most in {worst} "
        f"({dead[worst]['dead']} of {dead[worst]['total']})."
    )


# --------------------------------------------------------------------------- first-layer kernels
def first_layer_kernels(model) -> np.ndarray:
    """The first Conv2D layer's kernels as RGB tiles [F, kh, kw, 3], each scaled to 0..1."""
    kernel = np.asarray(full_conv_layers(model)[0].get_weights()[0])  # [kh, kw, in, F]
    tiles = np.transpose(kernel, (3, 0, 1, 2))
    if tiles.shape[-1] != 3:  # not RGB: show the mean over input channels in grey
        tiles = np.repeat(tiles.mean(axis=-1, keepdims=True), 3, axis=-1)
    low = tiles.min(axis=(1, 2, 3), keepdims=True)
    high = tiles.max(axis=(1, 2, 3), keepdims=True)
    return (tiles - low) / np.maximum(high - low, 1e-8)


def kernel_figure(tiles, layer_name: str):
    """The kernels as a grid of small colour tiles (like AlexNet's first-layer picture)."""
    cols = min(16, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig, axes = new_figure(0.6 * cols + 0.5, 0.6 * rows + 0.8, nrows=rows, ncols=cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(tiles):
            ax.imshow(tiles[i], interpolation="nearest")
    fig.suptitle(f"{layer_name}: {len(tiles)} kernels of {tiles.shape[1]}x{tiles.shape[2]}x3")
    return fig


# --------------------------------------------------------------------------- Grad-CAM
def grad_cam(model, images, class_indices) -> np.ndarray:
    """Grad-CAM heatmaps [N, H, W] in [0, 1] at the input size, for the given class of each image.

    The gradient of the class score (logit when the model has a separate softmax layer) with
    respect to the last conv unit's feature maps, averaged over positions, weights those maps;
    their positive part is the heatmap.
    """
    import tensorflow as tf

    grad_model = sub_model(model, [conv_unit_outputs(model)[-1], class_score_layer(model)])
    images = tf.constant(np.asarray(images, np.float32))
    with tf.GradientTape() as tape:
        maps, class_scores = grad_model(images, training=False)
        scores = tf.gather(tf.cast(class_scores, tf.float32), np.asarray(class_indices, np.int32), axis=1, batch_dims=1)
    grads = tf.cast(tape.gradient(scores, maps), tf.float32)  # float16 under mixed precision
    maps = tf.cast(maps, tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2))  # [N, C]
    heatmaps = tf.nn.relu(tf.einsum("nhwc,nc->nhw", maps, weights))
    heatmaps = heatmaps / tf.maximum(tf.reduce_max(heatmaps, axis=(1, 2), keepdims=True), 1e-12)
    resized = tf.image.resize(heatmaps[..., None], input_size(model), method="bilinear")[..., 0]
    return np.clip(np.nan_to_num(resized.numpy()), 0.0, 1.0)


def heatmap_examples(labels, predicted, seed: int, count: int = HEATMAP_EXAMPLES) -> dict[str, np.ndarray]:
    """A few correctly and wrongly classified images ({"correct": idx, "wrong": idx}); without
    labels, a few images ({"predicted": idx})."""
    rng = np.random.default_rng(seed)
    pick = lambda mask: np.sort(rng.permutation(np.flatnonzero(mask))[:count])  # noqa: E731
    if labels is None:
        return {"predicted": pick(np.ones(len(predicted), bool))}
    correct = np.asarray(labels) == predicted
    return {"correct": pick(correct), "wrong": pick(~correct)}


GRAD_CAM_PAIRS_PER_ROW = 2  # each example is a pair: the image as the model saw it, then the overlay


def grad_cam_figure(images, labels, probabilities, chosen: dict, heatmaps: dict, class_names):
    """Per group (correct / wrong) rows of examples, each the original image beside the same image
    overlaid with its heatmap."""
    groups = [g for g in chosen if len(chosen[g])]
    pairs = min(GRAD_CAM_PAIRS_PER_ROW, max(len(chosen[g]) for g in groups))
    rows = [
        (g, chosen[g][i : i + pairs], heatmaps[g][i : i + pairs])
        for g in groups
        for i in range(0, len(chosen[g]), pairs)
    ]
    fig, axes = new_figure(4.4 * pairs, 2.9 * len(rows), nrows=len(rows), ncols=2 * pairs, squeeze=False)
    for r, (group, indices, maps) in enumerate(rows):
        for c, (i, heatmap) in enumerate(zip(indices, maps)):
            predicted = int(probabilities[i].argmax())
            truth = "?" if labels is None else class_names[int(labels[i])]
            original, overlay = axes[r, 2 * c], axes[r, 2 * c + 1]
            original.imshow(_display(images[i]))
            original.set_title(
                f"{group}: true {truth}\npred {class_names[predicted]} ({probabilities[i, predicted]:.2f})", fontsize=9
            )
            overlay.imshow(_display(images[i]))
            overlay.imshow(heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1)
            overlay.set_title("Grad-CAM overlay", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("Grad-CAM: each image, then where the evidence for its predicted class lies", y=1.0)
    fig.tight_layout()
    return fig


def grad_cam_caption(chosen: dict) -> str:
    pair = "each image beside its Grad-CAM heatmap of the predicted class"
    if "predicted" in chosen:
        return f"A few images (labels unknown), {pair}."
    if not len(chosen["wrong"]):
        return (
            f"{len(chosen['correct'])} correctly classified test images, {pair}; none of the test images was "
            "classified wrongly."
        )
    return (
        f"{len(chosen['correct'])} correctly (top rows) and {len(chosen['wrong'])} wrongly (bottom rows) classified "
        f"test images, {pair}."
    )


# --------------------------------------------------------------------------- helpers
def _display(image) -> np.ndarray:
    """A 0..255 float image as 0..1 for imshow."""
    return np.clip(np.asarray(image, np.float32) / 255.0, 0.0, 1.0)


def _as_store(out):
    """An ArtifactStore as is; a folder path as a local store rooted there."""
    from cnn_tasks.storage import ArtifactStore, LocalStore

    return out if isinstance(out, ArtifactStore) else LocalStore(Path(out))


# --------------------------------------------------------------------------- command line
def load_image_folder(folder: Path, size: tuple[int, int], class_names: list[str], prep=None):
    """All usable images under `folder` as float32 0..255 at `size`, read exactly as prediction
    reads them (image_folder.read_images: validated RGB, then training's data.decode_and_resize with the
    model's fit and size limits, `prep`, default squash; hidden files skipped), with labels when
    every image sits in a sub-folder named after a class (else labels are None). Unusable files
    are reported on stderr and left out."""
    from cnn_tasks import image_folder

    height, width = size
    if height != width:
        raise ValueError(
            f"the model takes {height}x{width} images; only square inputs are supported "
            "(the training preprocessing, data.decode_and_resize, makes square images)"
        )
    names, images, rejected = image_folder.read_images(Path(folder), int(height), prep or image_folder.Preprocessing())
    for row in rejected:
        print(f"skipped {row['image']}: {row['reason']}", file=sys.stderr)
    if not names:
        raise ValueError(f"no usable images found under {folder} ({len(rejected)} files rejected)")
    parents = [(Path(folder) / name).parent.name for name in names]
    labels = np.array([class_names.index(n) for n in parents]) if set(parents) <= set(class_names) else None
    return images, labels
