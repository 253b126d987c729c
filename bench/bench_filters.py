"""Benchmark: filter patterns by gradient ascent, plain against regularised, side by side.

    .venv/bin/python bench/bench_filters.py [--model MODEL.keras] [--steps 30] [--filters 64] [--image-size 64]

For the first, middle and last conv layers of a model (a trained `model.keras`, or by default the
default baseline architecture with untrained weights: the cost does not depend on them), times
`--steps` batched gradient-ascent steps for up to `--filters` filters, plain and with the report's
regularisation (random jitter each step, a blur and a pull towards grey every few steps). Both run
one warm-up step first (tf.function tracing), timed separately. Beside the times: the mean
activation each reaches and the patterns' high-frequency share (filter_patterns.high_frequency_share: about
1 for white noise, near 0 for smooth shapes), the noise that makes plain patterns illegible.
With --out DIR both grids are saved as PNGs to compare by eye.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnn_tasks import filter_patterns, model_layers, models  # noqa: E402
from cnn_tasks.config import PipelineConfig  # noqa: E402
from cnn_tasks.experiments import DEFAULT_EXPERIMENTS  # noqa: E402


def timed_patterns(model, layer_name: str, count: int, steps: int, regularise: bool):
    """(warm-up seconds, seconds, patterns, mean activation after)."""
    started = time.perf_counter()
    filter_patterns.filter_patterns(model, layer_name, list(range(count)), 1, regularise=regularise)
    warm_up = time.perf_counter() - started
    started = time.perf_counter()
    patterns, _, after = filter_patterns.filter_patterns(
        model, layer_name, list(range(count)), steps, regularise=regularise
    )
    return warm_up, time.perf_counter() - started, patterns, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a trained model.keras (default: the untrained baseline)")
    parser.add_argument("--steps", type=int, default=PipelineConfig().filter_pattern_steps)
    parser.add_argument("--filters", type=int, default=filter_patterns.MAX_FILTERS)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--out", type=Path, help="save both grids per layer here")
    args = parser.parse_args()

    if args.model:
        model = models.load_model(args.model)
    else:
        spec = DEFAULT_EXPERIMENTS[0]
        model = models.build_model(spec, 10, args.image_size, mean=[128.0] * 3, std=[64.0] * 3)
    print(
        f"model {model.name} at {model_layers.input_size(model)[0]} px, {args.steps} steps, up to {args.filters} filters"
    )
    print(
        f"{'layer':<7}{'filters':>8}{'trace s':>9}{'plain s':>9}{'regul. s':>10}{'time ratio':>12}"
        f"{'act. plain':>12}{'act. regul.':>13}{'HF plain':>10}{'HF regul.':>11}"
    )
    for layer_name in filter_patterns.default_filter_layers(model):
        count = min(args.filters, int(model.get_layer(layer_name).output.shape[-1]))
        warm, plain_s, plain, plain_act = timed_patterns(model, layer_name, count, args.steps, regularise=False)
        _, regular_s, regular, regular_act = timed_patterns(model, layer_name, count, args.steps, regularise=True)
        print(
            f"{layer_name:<7}{count:>8}{warm:>9.2f}{plain_s:>9.2f}{regular_s:>10.2f}{regular_s / plain_s:>11.2f}x"
            f"{plain_act.mean():>12.2f}{regular_act.mean():>13.2f}"
            f"{filter_patterns.high_frequency_share(plain):>10.3f}{filter_patterns.high_frequency_share(regular):>11.3f}",
            flush=True,
        )
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            for kind, patterns, after in (("plain", plain, plain_act), ("regularised", regular, regular_act)):
                fig = filter_patterns.filter_pattern_figure(patterns, after, f"{layer_name} ({kind})", args.steps)
                fig.savefig(args.out / f"filters_{layer_name}_{kind}.png", dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
