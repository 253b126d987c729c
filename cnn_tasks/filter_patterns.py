"""Filter patterns: the input that maximises each filter of a conv layer, found by gradient ascent
on the input (keras.io "Visualizing what convnets learn"), with the jitter and smoothing that make
the patterns legible, and their grid figure. Used by the visualise stage (`cnn_tasks.visualize`).

The model is only ever called in inference mode: nothing here trains or changes it.
"""

from __future__ import annotations

import math
import time

import numpy as np

from cnn_tasks.model_layers import conv_layers, input_size, sub_model
from cnn_tasks.plots import new_figure

MAX_FILTERS = 64  # filter patterns per layer (an 8x8 grid)


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


def default_filter_layers(model) -> list[str]:
    """The first, middle and last conv layers (without repeats)."""
    names = [layer.name for layer in conv_layers(model)]
    return list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]]))


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
