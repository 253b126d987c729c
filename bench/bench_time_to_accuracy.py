"""Time to accuracy: training recipes side by side on EuroSAT through the real stages.

    .venv/bin/python bench/bench_time_to_accuracy.py                  # every recipe, 3 seeds, 30 epochs: hours
    .venv/bin/python bench/bench_time_to_accuracy.py --budget 30 --max-per-class 300 --seeds 1   # one session

For each recipe and seed (download, split, rebalance, single-batch check and training as the DAG runs
them, 64 px, 70/20/10): the epochs and training wall time until validation accuracy first reaches
90/95/96/97 %, test accuracy of the best epoch, images/s, training FLOPs per image, the FLOP/s that
makes, and the machine's peak (a float32 matmul measured in the same run), so the distance to the
limit is a printed ratio. Then per recipe the mean and spread over seeds, the ratio of each
recipe's time to the first one's, the soft-vote ensemble of the default experiments per seed (where
they all ran), and a plot of validation accuracy against wall time.

--budget M gives each run M / (recipes x seeds) minutes of training (time_budget_minutes); the
summary lists every run the budget stopped and every threshold a run did not reach.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnn_tasks import data, download, models, rebalance, runtime, split, train  # noqa: E402
from cnn_tasks.config import DEFAULT_EXPERIMENTS, ExperimentSpec, PipelineConfig  # noqa: E402
from cnn_tasks.context import RunContext, model_id  # noqa: E402

EUROSAT_ZIP = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "eurosat.zip"
THRESHOLDS = (0.90, 0.95, 0.96, 0.97)

# The default baseline until December 2026: 6 conv layers, two at each of 64, 32 and 16 px, plateau decay.
OLD_BASELINE = ExperimentSpec(
    name="old-baseline",
    conv=[{"filters": f, "pool": pool} for f in (32, 64, 128) for pool in ("none", "max")],
)
# name -> (experiment spec, config changes). The first recipe is the reference of the ratios.
RECIPES: dict[str, tuple[ExperimentSpec, dict]] = {
    "old_baseline": (OLD_BASELINE, {}),
    **{spec.name: (spec, {}) for spec in DEFAULT_EXPERIMENTS},
    "baseline_lrtest": (DEFAULT_EXPERIMENTS[0], {"lr_range_test": True}),
}
ENSEMBLE = tuple(spec.name for spec in DEFAULT_EXPERIMENTS)  # the report's "all models" soft vote, unbalanced


def machine() -> str:
    """CPU model, widest vector instruction set and cores, from /proc/cpuinfo (Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name}, {isa}, {runtime.available_cores()} cores"


def training_flops_per_image(model) -> float:
    """Forward multiply-adds x 2 of the conv, separable and dense layers, x 3 for a training step
    (forward, and the backward pass's two products of about the same size each)."""
    import keras

    forward = 0.0
    for layer in model.layers:
        out = layer.output.shape
        if isinstance(layer, keras.layers.SeparableConv2D):
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            forward += 2 * out[1] * out[2] * cin * (kh * kw * layer.depth_multiplier + out[3] * layer.depth_multiplier)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            forward += 2 * out[1] * out[2] * kh * kw * out[3]
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            forward += 2 * out[1] * out[2] * out[3] * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            forward += 2 * layer.input.shape[-1] * out[-1]
    return 3 * forward


def matmul_peak_flops(n: int = 2048, seconds: float = 3.0) -> float:
    """float32 FLOP/s of TensorFlow's matrix multiply on this machine (best of repeated timings)."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    tf.linalg.matmul(a, b).numpy()  # warm-up
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def time_to(history: list[dict], threshold: float) -> tuple[int, float] | None:
    """(epoch, training seconds) when validation accuracy first reached `threshold`, else None."""
    seconds = 0.0
    for entry in history:
        seconds += entry["seconds"]
        if entry["val_accuracy"] >= threshold:
            return entry["epoch"], seconds
    return None


def test_predictions(ctx: RunContext, mid: str) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of the best epoch's model on the test split."""
    model = models.load_model(ctx.cached(ctx.model_key(mid, "model.keras")))
    x, y, _ = data.load_split_arrays(ctx, "test")
    return model.predict(x, batch_size=256, verbose=0), np.asarray(y)


def run_recipe(work: Path, args, recipe: str, seed: int, budget_minutes: float | None) -> dict:
    spec, config_changes = RECIPES[recipe]
    spec = spec.model_copy(update={"name": recipe.replace("_", "-")})
    config = PipelineConfig.from_dict(
        {
            "store_uri": f"file://{work / 'store'}",
            "dataset_url": str(args.zip),
            "dataset_checksum": None,
            "max_images_per_class": args.max_per_class,
            "image_size": args.image_size,
            "epochs": args.epochs,
            "seed": seed,
            "rebalance": "none",
            "min_images_per_class": 5,
            "experiments": [spec.model_dump()],
            "time_budget_minutes": budget_minutes,
            **config_changes,
        }
    )
    ctx = RunContext.create(config, f"{recipe}_seed{seed}")
    start = time.perf_counter()
    for stage in (download, split, rebalance):
        stage.run(ctx)
    prepared = time.perf_counter() - start
    train.single_batch_check(ctx, spec.name)
    checked = time.perf_counter() - start - prepared
    result = train.run(ctx, spec.name, "unbalanced")
    mid = model_id(spec.name, "unbalanced")
    meta = ctx.store.get_json(ctx.model_key(mid, "meta.json"))
    history = ctx.store.get_json(ctx.model_key(mid, "history.json"))
    model = models.load_model(ctx.cached(ctx.model_key(mid, "model.keras")))
    flops = training_flops_per_image(model)
    probabilities, labels = test_predictions(ctx, mid)
    return {
        "recipe": recipe,
        "seed": seed,
        "epochs": result["epochs_run"],
        "stopped_by": meta.get("stopped_by"),
        "learning_rate": meta["spec"]["learning_rate"],
        "prepare_s": prepared,
        "check_s": checked,
        "train_s": sum(h["seconds"] for h in history),
        "best_val": max(h["val_accuracy"] for h in history),
        "test": float((probabilities.argmax(axis=1) == labels).mean()),
        "probabilities": probabilities,
        "labels": labels,
        "images_per_s": meta["images_per_s"],
        "flops_per_image": flops,
        "flops_per_s": flops * meta["images_per_s"],
        "reached": {t: time_to(history, t) for t in THRESHOLDS},
        "curve": [(sum(h["seconds"] for h in history[: i + 1]), h["val_accuracy"]) for i, h in enumerate(history)],
    }


def spread(values: list[float]) -> str:
    """'mean ± sample standard deviation (n)', or the single value."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f} (1 seed)"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f} ({len(values)} seeds)"


def ensemble_accuracies(rows: list[dict]) -> list[float]:
    """Per seed where every ENSEMBLE recipe ran: test accuracy of their averaged probabilities (the
    runs of one seed split the same images the same way; the labels are checked)."""
    accuracies = []
    for seed in dict.fromkeys(r["seed"] for r in rows):
        members = [r for r in rows if r["seed"] == seed and r["recipe"] in ENSEMBLE]
        if len(members) < len(ENSEMBLE):
            continue
        labels = members[0]["labels"]
        assert all(np.array_equal(m["labels"], labels) for m in members), "the runs of one seed split differently"
        mean = np.mean([m["probabilities"] for m in members], axis=0)
        accuracies.append(float((mean.argmax(axis=1) == labels).mean()))
    return accuracies


def summarise(rows: list[dict], peak: float) -> None:
    print(f"\nmachine: {machine()}; float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(
        f"{'recipe':<24} {'seed':>4} {'epochs':>6} {'stopped by':<14} {'lr':>8} {'train s':>8} {'best val':>8} "
        f"{'test':>7} {'img/s':>7} {'GFLOP/img':>9} {'GFLOP/s':>8} {'of peak':>7}  "
        + "  ".join(f"to {t:.0%} (ep, s)" for t in THRESHOLDS)
    )
    for r in rows:
        reached = "  ".join(
            f"{'-':>16}" if r["reached"][t] is None else f"{r['reached'][t][0]:>6} {r['reached'][t][1]:>8.0f}s"
            for t in THRESHOLDS
        )
        print(
            f"{r['recipe']:<24} {r['seed']:>4} {r['epochs']:>6} {r['stopped_by'] or '-':<14} {r['learning_rate']:>8.2g} "
            f"{r['train_s']:>8.0f} {r['best_val']:>8.4f} {r['test']:>7.4f} {r['images_per_s']:>7.1f} "
            f"{r['flops_per_image'] / 1e9:>9.3f} {r['flops_per_s'] / 1e9:>8.1f} {r['flops_per_s'] / peak:>7.2f}  {reached}"
        )
    print("\nper recipe, over seeds:")
    reference = rows[0]["recipe"]
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        print(f"  {recipe}: test accuracy {spread([r['test'] for r in mine])}")
        for t in THRESHOLDS:
            times = [r["reached"][t][1] for r in mine if r["reached"][t]]
            ref = [r["reached"][t][1] for r in rows if r["recipe"] == reference and r["reached"][t]]
            if not times:
                continue
            ratio = (
                f"; {np.mean(times) / np.mean(ref):.2f}x the time of {reference}" if ref and recipe != reference else ""
            )
            print(
                f"    {t:.0%} validation accuracy after {np.mean(times):.0f} s in {len(times)} of {len(mine)} runs{ratio}"
            )
    ensembles = ensemble_accuracies(rows)
    if ensembles:
        print(f"  ensemble of {', '.join(ENSEMBLE)} (soft vote): test accuracy {spread(ensembles)}")
    skipped = [
        f"{r['recipe']} seed {r['seed']}: stopped by the time budget at epoch {r['epochs']}"
        for r in rows
        if r["stopped_by"] == "time_budget"
    ] + [
        f"{r['recipe']} seed {r['seed']}: never reached {', '.join(f'{t:.0%}' for t in missed)} validation accuracy"
        for r in rows
        if (missed := [t for t in THRESHOLDS if r["reached"][t] is None])
    ]
    print("\nnot measured in this run:" if skipped else "\nevery run reached every threshold")
    for line in skipped:
        print(f"  {line}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = {recipe: f"C{i}" for i, recipe in enumerate(dict.fromkeys(r["recipe"] for r in rows))}
    for r in rows:
        seconds, accuracy = zip(*r["curve"])
        label = f"{r['recipe']} (seed {r['seed']})"
        ax.plot(np.array(seconds) / 60, accuracy, marker=".", color=colours[r["recipe"]], label=label)
    for t in THRESHOLDS:
        ax.axhline(t, color="grey", linewidth=0.5, linestyle="--")
    ax.set(xlabel="training wall time (min)", ylabel="validation accuracy", title="Validation accuracy against time")
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated subset of {list(RECIPES)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--budget", type=float, default=None, help="minutes of training for the whole benchmark")
    parser.add_argument("--max-per-class", type=int, default=None, help="cap images per class (default: all)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--zip", type=Path, default=EUROSAT_ZIP)
    parser.add_argument("--plot", type=Path, default=Path("time_to_accuracy.png"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown or not args.zip.exists():
        sys.exit(f"unknown recipe(s) {unknown}; known: {list(RECIPES)}" if unknown else f"no dataset at {args.zip}")
    runs = [(recipe, seed) for seed in range(args.seeds) for recipe in recipes]  # seeds interleaved
    per_run = None if args.budget is None else args.budget / len(runs)
    peak = matmul_peak_flops()
    with tempfile.TemporaryDirectory(prefix="bench_time_to_accuracy_") as tmp:
        os.environ.setdefault("CNN_CACHE_DIR", str(Path(tmp) / "cache"))
        rows = []
        for recipe, seed in runs:
            rows.append(run_recipe(Path(tmp), args, recipe, seed, per_run))
            r = rows[-1]
            print(
                f"{recipe} seed {seed}: test {r['test']:.4f} after {r['epochs']} epochs, {r['train_s']:.0f} s",
                flush=True,
            )
    summarise(rows, peak)
    plot(rows, args.plot)


if __name__ == "__main__":
    main()
