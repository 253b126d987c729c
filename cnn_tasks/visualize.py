"""What a trained CNN learned: activations, filter patterns, first-layer kernels and Grad-CAM.

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
import time
from pathlib import Path

import numpy as np

from cnn_tasks.plots import figure_entry, new_figure, save_figure

CHANNELS_PER_LAYER = 16  # feature maps shown per layer
MAX_FILTERS = 64  # filter patterns per layer (an 8x8 grid)
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


def draw_filter_patterns(model, layer_names, steps: int, max_filters: int, seed: int, save):
    """One grid of patterns per layer; returns (figures, {layer: activations before/after, seconds})."""
    entries, summary = [], {}
    for layer_name in layer_names:
        started = time.perf_counter()
        count = min(max_filters, int(model.get_layer(layer_name).output.shape[-1]))
        patterns, before, after = filter_patterns(model, layer_name, list(range(count)), steps, seed=seed)
        summary[layer_name] = {
            "filters": count,
            "steps": steps,
            "seconds": round(time.perf_counter() - started, 2),
            "mean_activation_before": float(before.mean()),
            "mean_activation_after": float(after.mean()),
            "high_frequency_share": round(high_frequency_share(patterns), 3),
        }
        fig = filter_pattern_figure(patterns, after, layer_name, steps)
        entries.append(
            save(
                f"filters_{layer_name}.png",
                fig,
                f"Inputs that maximise the first {count} filters of {layer_name} after {steps} "
                f"gradient-ascent steps with jitter and smoothing; mean activation {before.mean():.2f} -> "
                f"{after.mean():.2f}.",
            )
        )
    return entries, summary


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


# --------------------------------------------------------------------------- layers
def conv_layers(model) -> list:
    """The model's Conv2D and SeparableConv2D layers, in order (nested sub-models are not searched)."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.SeparableConv2D))]


def full_conv_layers(model) -> list:
    """The model's (full) Conv2D layers: the ones with colour kernels."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def require_conv_layers(model, model_id: str | None = None) -> None:
    """Reject models these pictures cannot explain."""
    if not full_conv_layers(model):
        raise ValueError(
            f"model {model_id or model.name!r} has no Conv2D layers: there are no filters, "
            "feature maps or kernels to visualise (nested sub-models are not searched)"
        )


def conv_unit_outputs(model) -> list[str]:
    """For each conv layer, the layer that ends its unit: its activation when one follows
    (conv<i> -> bn<i> -> act<i> gives act<i>), else the Conv2D itself."""
    import keras

    unit_tail = (
        keras.layers.BatchNormalization,
        keras.layers.Activation,
        keras.layers.ReLU,
        keras.layers.LeakyReLU,
        keras.layers.ELU,
        keras.layers.PReLU,
    )
    names, layers = [], model.layers
    for i, layer in enumerate(layers):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.SeparableConv2D)):
            shown = layer
            for follower in layers[i + 1 :]:
                if not isinstance(follower, unit_tail):
                    break
                if not isinstance(follower, keras.layers.BatchNormalization):
                    shown = follower
            names.append(shown.name)
    return names


def pooling_layers(model) -> list[str]:
    """Names of the 2D pooling layers (global pooling excluded: it has no maps)."""
    import keras

    pooling = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
    return [layer.name for layer in model.layers if isinstance(layer, pooling)]


def feature_layers(model) -> list[str]:
    """The layers whose outputs are shown as feature maps: conv units and pooling, in model order."""
    shown = set(conv_unit_outputs(model)) | set(pooling_layers(model))
    return [layer.name for layer in model.layers if layer.name in shown]


def default_filter_layers(model) -> list[str]:
    """The first, middle and last conv layers (without repeats)."""
    names = [layer.name for layer in conv_layers(model)]
    return list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]]))


def input_size(model) -> tuple[int, int]:
    """(height, width) the model takes."""
    return tuple(int(d) for d in model.inputs[0].shape[1:3])


def sub_model(model, layer_names: list[str]):
    """A model from the input to the outputs of `layer_names`, sharing the trained weights."""
    import keras

    if not isinstance(model, keras.Sequential):
        return keras.Model(inputs=model.inputs[0], outputs=[model.get_layer(name).output for name in layer_names])
    # A loaded Sequential's layers hold several graph nodes, and `layer.output` (the first) is not
    # the one `model.outputs` grows from: chain the layers once more on a fresh input instead.
    inputs = keras.Input(model.inputs[0].shape[1:])
    x, tensors = inputs, {}
    for layer in model.layers:
        x = tensors[layer.name] = layer(x)
        if set(layer_names) <= set(tensors):
            break  # nothing past the last requested layer is needed
    return keras.Model(inputs=inputs, outputs=[tensors[name] for name in layer_names])


def class_score_layer(model) -> str:
    """The layer that scores the classes: the logits before a final softmax Activation layer when
    there is one (a saturated softmax has zero gradient), else the output layer."""
    import keras

    last = model.layers[-1]
    is_softmax = getattr(getattr(last, "activation", None), "__name__", "") == "softmax"
    if isinstance(last, keras.layers.Activation) and is_softmax and len(model.layers) > 1:
        return model.layers[-2].name
    return last.name


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


# --------------------------------------------------------------------------- filter patterns
def filter_patterns(
    model,
    layer_name: str,
    filter_indices: list[int],
    steps: int = 30,
    step_size: float = 3.0,
    seed: int = 0,
    regularise: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradient ascent on the input to find what maximises each filter of `layer_name`.

    For a conv layer the filter's activation is its own (linear) output, before batch norm and
    activation, so the gradient does not vanish where a ReLU is off. All filters are optimised at
    once: one input per filter in a batch, the loss is the sum of each input's own filter activation,
    so the gradient of each input only involves its own filter.
    `regularise` adds what makes published filter visualisations legible (Yosinski et al. 2015, Olah
    et al. 2017): each step sees the batch shifted by a random jitter, so no single pixel grid is
    exploited; every BLUR_EVERY steps the images are smoothed and pulled slightly back towards grey,
    which removes the high-frequency noise plain ascent amplifies.
    Returns (patterns [F, H, W, 3] in 0..1 for display, activation before, activation after).
    """
    import tensorflow as tf

    extractor = sub_model(model, [layer_name])
    size = input_size(model)
    step = ascent_step(extractor, step_size)
    indices = tf.constant(filter_indices, tf.int32)
    images = initial_inputs(len(indices), size, seed)
    before = filter_activation(extractor, images, indices).numpy()
    images = gradient_ascent(step, images, indices, steps, jitter=jitter_pixels(size) if regularise else 0, seed=seed)
    after = filter_activation(extractor, images, indices).numpy()
    return np.stack([deprocess(image) for image in images.numpy()]), before, after


BLUR_EVERY = 4  # steps between smoothing passes
DECAY = 0.95  # the pull towards grey at each smoothing pass


def jitter_pixels(size: tuple[int, int]) -> int:
    """The largest random shift per step: 1/16 of the image side, at least 1 px."""
    return max(1, min(size) // 16)


def initial_inputs(count: int, size: tuple[int, int], seed: int):
    """Near-grey noisy images in the model's 0..255 input space."""
    import tensorflow as tf

    noise = np.random.default_rng(seed).normal(0.0, 8.0, (count, *size, 3))
    return tf.constant(128.0 + noise, tf.float32)


def filter_activation(extractor, images, indices):
    """Mean activation of each image's own filter, borders excluded (they are padding artefacts)."""
    import tensorflow as tf

    maps = tf.cast(extractor(images, training=False), tf.float32)  # float16 under mixed precision
    border = min(2, (int(maps.shape[1]) - 1) // 4)  # 2 px on large maps, none on tiny ones
    if border:
        maps = maps[:, border:-border, border:-border, :]
    own = tf.gather(maps, indices, axis=3, batch_dims=1)  # [F, h, w]: filter i of image i
    return tf.reduce_mean(own, axis=(1, 2))


def ascent_step(extractor, step_size: float):
    """One compiled gradient-ascent step: move each image along its normalised gradient, computed on
    the batch rolled by `shift` pixels (a jitter; zero for plain ascent)."""
    import tensorflow as tf

    @tf.function
    def step(images, indices, shift):
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(filter_activation(extractor, tf.roll(images, shift, axis=[1, 2]), indices))
        grads = tape.gradient(loss, images)
        rms = tf.sqrt(tf.reduce_mean(tf.square(grads), axis=(1, 2, 3), keepdims=True))
        return tf.clip_by_value(images + step_size * grads / (rms + 1e-8), 0.0, 255.0)

    return step


def smooth(images):
    """A 3x3 binomial blur per channel (edges reflected), then a pull towards mid-grey."""
    import tensorflow as tf

    taps = tf.constant([1.0, 2.0, 1.0]) / 4.0
    kernel = tf.tile(tf.reshape(tf.tensordot(taps, taps, axes=0), (3, 3, 1, 1)), (1, 1, 3, 1))
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
    blurred = tf.nn.depthwise_conv2d(padded, kernel, strides=[1, 1, 1, 1], padding="VALID")
    return 128.0 + (blurred - 128.0) * DECAY


def gradient_ascent(step, images, indices, steps: int, jitter: int = 0, seed: int = 0):
    """Run `steps` ascent steps on the batch; with a jitter, each step shifts by up to `jitter` px
    (seeded) and every BLUR_EVERY steps the batch is smoothed."""
    import tensorflow as tf

    shifts = np.random.default_rng(seed).integers(-jitter, jitter + 1, (steps, 2), dtype=np.int32)
    for i in range(steps):
        images = step(images, indices, tf.constant(shifts[i]))
        if jitter and (i + 1) % BLUR_EVERY == 0:
            images = smooth(images)
    return images


def high_frequency_share(patterns: np.ndarray) -> float:
    """How much of the patterns' contrast is pixel-to-pixel noise: the mean squared difference between
    neighbouring pixels (across and down) over 4 x the variance, averaged over patterns (about 1 for
    white noise, near 0 for smooth shapes)."""
    centred = patterns - patterns.mean(axis=(1, 2, 3), keepdims=True)
    variance = (centred**2).mean(axis=(1, 2, 3)) + 1e-12
    dx = (np.diff(centred, axis=2) ** 2).mean(axis=(1, 2, 3))
    dy = (np.diff(centred, axis=1) ** 2).mean(axis=(1, 2, 3))
    return float(np.mean((dx + dy) / (4 * variance)))


def deprocess(image: np.ndarray) -> np.ndarray:
    """Stretch one pattern for display: zero mean, small spread around mid-grey, in 0..1."""
    image = (image - image.mean()) / (image.std() + 1e-5) * 0.15 + 0.5
    return np.clip(image, 0.0, 1.0)


def filter_pattern_figure(patterns, after, layer_name: str, steps: int):
    """Up to an 8x8 grid of patterns, each titled with its filter index and final activation."""
    cols = math.ceil(math.sqrt(len(patterns)))
    rows = math.ceil(len(patterns) / cols)
    fig, axes = new_figure(1.2 * cols, 1.3 * rows + 0.6, nrows=rows, ncols=cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(patterns):
            ax.imshow(patterns[i])
            ax.set_title(f"#{i}: {after[i]:.1f}", fontsize=7)
    fig.suptitle(
        f"{layer_name}: {len(patterns)} filter patterns, {steps} gradient-ascent steps, "
        f"mean activation reached {np.mean(after):.2f}"
    )
    return fig


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
