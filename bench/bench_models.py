"""Training cost per image of each default experiment and of the old baseline, side by side.

    .venv/bin/python bench/bench_models.py [--image-size 64] [--batches 30] [--repeats 3]

Each model is built by the pipeline's builder and trained (its own optimizer and batch size) on
random 0..255 pixels: the cost of a step does not depend on the data. After one warm-up epoch
(tracing), `--repeats` epochs of `--batches` batches are timed, models taking turns so a noisy
machine hurts them alike; the median is reported. Printed per model: parameters, training FLOPs
per image (bench_time_to_accuracy.training_flops_per_image), images/s, the FLOP/s that makes, its
share of the float32 matmul peak measured in the same run, and its speed relative to the old baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_time_to_accuracy import OLD_BASELINE, machine, matmul_peak_flops, training_flops_per_image  # noqa: E402

from cnn_tasks import models, train  # noqa: E402
from cnn_tasks.experiments import DEFAULT_EXPERIMENTS  # noqa: E402

CLASSES = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30, help="batches per timed epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per model")
    args = parser.parse_args()

    specs = [OLD_BASELINE, *DEFAULT_EXPERIMENTS]
    rng = np.random.default_rng(0)
    built = {}
    for spec in specs:
        model = models.build_model(spec, CLASSES, args.image_size, mean=[128.0] * 3, std=[64.0] * 3)
        model.compile(train.make_optimizer(spec, total_steps=1000), "sparse_categorical_crossentropy")
        count = spec.batch_size * args.batches
        x = rng.uniform(0, 255, (count, args.image_size, args.image_size, 3)).astype("float32")
        y = rng.integers(0, CLASSES, count)
        model.fit(x, y, batch_size=spec.batch_size, epochs=1, verbose=0)  # warm-up: tracing
        built[spec.name] = (model, x, y, spec.batch_size)
    seconds = {name: [] for name in built}
    for _ in range(args.repeats):
        for name, (model, x, y, batch_size) in built.items():
            started = time.perf_counter()
            model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
            seconds[name].append(time.perf_counter() - started)
    peak = matmul_peak_flops()
    print(f"{machine()}; float32 matmul peak {peak / 1e9:.0f} GFLOP/s; {args.image_size} px")
    print(
        f"{'model':<16}{'batch':>6}{'params':>10}{'GFLOP/img':>11}{'images/s':>10}{'GFLOP/s':>9}"
        f"{'of peak':>9}{'speed vs old':>14}"
    )
    reference = None
    for name, (model, x, _, batch_size) in built.items():
        images_per_s = len(x) / statistics.median(seconds[name])
        reference = reference or images_per_s
        flops = training_flops_per_image(model)
        print(
            f"{name:<16}{batch_size:>6}{model.count_params():>10,}{flops / 1e9:>11.3f}{images_per_s:>10.0f}"
            f"{flops * images_per_s / 1e9:>9.0f}{flops * images_per_s / peak:>9.2f}{images_per_s / reference:>13.2f}x"
        )


if __name__ == "__main__":
    main()
