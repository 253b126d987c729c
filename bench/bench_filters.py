"""Benchmark: filter patterns by gradient ascent, a whole layer batched vs one filter at a time.

    .venv/bin/python bench/bench_filters.py [--steps 30] [--filters 64] [--single 8] [--image-size 64]

Builds the default baseline architecture (config.DEFAULT_EXPERIMENTS[0]) at 64 px with untrained
weights (the cost does not depend on them) and, for its first, middle and last conv layers, times
`--steps` gradient-ascent steps for `--filters` filters as one batch, then for `--single` of them
optimised one at a time with the same compiled step (batch of 1), extrapolated to `--filters`.
Both run one warm-up step first (tf.function tracing for the batch shape), timed separately: a
per-filter loop that re-traces for every filter (a Python int filter index) pays it 64 times.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tensorflow as tf  # noqa: E402

from cnn_tasks import visualize  # noqa: E402
from cnn_tasks.config import DEFAULT_EXPERIMENTS, PipelineConfig  # noqa: E402

NUM_CLASSES = 10


def baseline_model(image_size: int = 64):
    """The baseline architecture through the model zoo, or an equivalent local Sequential."""
    spec = DEFAULT_EXPERIMENTS[0]
    try:
        from cnn_tasks import models
    except ImportError:
        return local_baseline(spec, image_size)
    return models.build_model(spec, NUM_CLASSES, image_size, mean=[128.0] * 3, std=[64.0] * 3)


def local_baseline(spec, image_size: int):
    """conv<i> -> bn<i> -> act<i> -> pool<i>? units, global average pooling and a softmax head."""
    import keras

    layers = [
        keras.Input((image_size, image_size, 3)),
        keras.layers.Normalization(mean=[128.0] * 3, variance=[64.0**2] * 3, name="standardize"),
    ]
    for i, block in enumerate(spec.conv, start=1):
        layers += [
            keras.layers.Conv2D(block.filters, block.kernel_size, padding="same", use_bias=False, name=f"conv{i}"),
            keras.layers.BatchNormalization(name=f"bn{i}"),
            keras.layers.Activation(spec.activation, name=f"act{i}"),
        ]
        if block.pool == "max":
            layers.append(keras.layers.MaxPooling2D(2, name=f"pool{i}"))
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(NUM_CLASSES, activation="softmax")]
    return keras.Sequential(layers, name=spec.name)


def time_ascent(step, filter_indices: list[int], steps: int, size: tuple[int, int]) -> tuple[float, float]:
    """(warm-up seconds, seconds for `steps` ascent steps) on one batch with one input per filter."""
    indices = tf.constant(filter_indices, tf.int32)
    images = visualize.initial_inputs(len(filter_indices), size, seed=0)
    started = time.perf_counter()
    visualize.gradient_ascent(step, images, indices, 1).numpy()  # traces the step for this shape
    warm_up = time.perf_counter() - started
    started = time.perf_counter()
    visualize.gradient_ascent(step, images, indices, steps).numpy()
    return warm_up, time.perf_counter() - started


def bench_layer(model, layer_name: str, filters: int, single: int, steps: int) -> dict:
    """Batched time for `filters` filters; one-at-a-time time for `single`, extrapolated."""
    size = visualize.input_size(model)
    step = visualize.ascent_step(visualize.sub_model(model, [layer_name]), step_size=3.0)
    filters = min(filters, int(model.get_layer(layer_name).output.shape[-1]))
    single = min(single, filters)
    warm_up, batched = time_ascent(step, list(range(filters)), steps, size)
    one_by_one = sum(time_ascent(step, [i], steps, size)[1] for i in range(single))
    extrapolated = one_by_one * filters / single
    return {
        "layer": layer_name,
        "filters": filters,
        "single": single,
        "warm_up_s": warm_up,
        "batched_s": batched,
        "single_measured_s": one_by_one,
        "single_extrapolated_s": extrapolated,
        "speedup": extrapolated / batched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=PipelineConfig().filter_pattern_steps)
    parser.add_argument("--filters", type=int, default=visualize.MAX_FILTERS)
    parser.add_argument("--single", type=int, default=8, help="filters timed one at a time (then extrapolated)")
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()

    model = baseline_model(args.image_size)
    print(
        f"model {model.name} at {args.image_size} px, {args.steps} steps, up to {args.filters} filters per "
        f"layer; one at a time: {args.single} filters measured, then extrapolated (labelled 'extrap.')"
    )
    print(
        f"{'layer':<7}{'filters':>8}{'trace+1 step s':>16}{'batched s':>11}{'1-by-1 s measured':>24}"
        f"{'1-by-1 s extrap.':>18}{'batched speed-up':>18}"
    )
    for layer_name in visualize.default_filter_layers(model):
        r = bench_layer(model, layer_name, args.filters, args.single, args.steps)
        print(
            f"{r['layer']:<7}{r['filters']:>8}{r['warm_up_s']:>16.2f}{r['batched_s']:>11.2f}"
            f"{r['single_measured_s']:>10.2f} ({r['single']} filters){r['single_extrapolated_s']:>18.2f}"
            f"{r['speedup']:>17.1f}x"
        )


if __name__ == "__main__":
    main()
