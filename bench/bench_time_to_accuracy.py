"""Time to accuracy: training recipes on EuroSAT through the real stages, one result file per cell.

A cell is one (dataset, recipe, seed). Each finished cell writes bench/results/<dataset>__<recipe>__seed<N>.json
(committed): epochs, training seconds and total training GFLOP until validation accuracy first reached
90/95/96/97 %, the best epoch's test accuracy and test-set probabilities (for the soft-vote ensemble),
training GFLOP per image, images/s, the per-epoch history, the machine (CPU model, instruction set, cores;
GPU if TensorFlow sees one) and its float32 matmul peak, the commit, the date and the invocation's run id.

    # one slice, pinned to core 1 (the other core stays free); only cells without a result file run
    taskset -c 1 .venv/bin/python bench/bench_time_to_accuracy.py --grid baseline,old_baseline --seeds 0
    # the whole grid in one go on a machine with a GPU (TensorFlow picks the GPU; nothing else changes)
    .venv/bin/python bench/bench_time_to_accuracy.py --seeds 0,1,2
    # all result files -> markdown tables (and into docs/benchmarks.md between its markers)
    .venv/bin/python bench/bench_time_to_accuracy.py --summary [--docs docs/benchmarks.md]

Resuming: every cell trains in its own persistent store under --work (default
~/.cache/cnn-bench/time_to_accuracy). train.run keeps its keras BackupAndRestore state, best checkpoint
and history there after every epoch, so the same command after a kill continues each cell from its
last finished epoch (and a cell whose training finished but whose result file is missing only
evaluates). The prepared data of a cell (download, split, rebalance) are reused from its store.

--budget M gives each cell run in this invocation M / (cells to run) minutes of training
(time_budget_minutes). --max-per-class, --epochs other than 30 and --budget change the dataset name
of the result files, so reduced runs never mix with full ones.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnn_tasks import runtime  # noqa: E402
from cnn_tasks.config import PipelineConfig  # noqa: E402
from cnn_tasks.experiments import DEFAULT_EXPERIMENTS, ExperimentSpec  # noqa: E402

EUROSAT_ZIP = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "eurosat.zip"
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_WORK = Path.home() / ".cache" / "cnn-bench" / "time_to_accuracy"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
DOCS_START = "<!-- time-to-accuracy summary: start (bench_time_to_accuracy.py --summary --docs) -->"
DOCS_END = "<!-- time-to-accuracy summary: end -->"
THRESHOLDS = (0.90, 0.95, 0.96, 0.97)
STANDARD_EPOCHS = 30
SCHEMA = 1
log = logging.getLogger("bench_time_to_accuracy")

# The default baseline until December 2026: 6 conv layers, two at each of 64, 32 and 16 px, plateau decay.
OLD_BASELINE = ExperimentSpec(
    name="old-baseline",
    conv=[{"filters": f, "pool": pool} for f in (32, 64, 128) for pool in ("none", "max")],
)
# name -> (experiment spec, config changes).
RECIPES: dict[str, tuple[ExperimentSpec, dict]] = {
    "old_baseline": (OLD_BASELINE, {}),
    **{spec.name: (spec, {}) for spec in DEFAULT_EXPERIMENTS},
    "baseline_lrtest": (DEFAULT_EXPERIMENTS[0], {"lr_range_test": True}),
}
REFERENCE = "old_baseline"  # the ratios are to this recipe
DEFAULT_RECIPE = DEFAULT_EXPERIMENTS[0].name
ENSEMBLE = tuple(spec.name for spec in DEFAULT_EXPERIMENTS)  # the report's "all models" soft vote, unbalanced
GOALS = (
    f"{DEFAULT_RECIPE} reaches 96 % validation accuracy in at most 1/3 of {REFERENCE}'s training GFLOP; "
    "best single model >= 97.0 % and ensemble >= 97.5 % test accuracy, mean of 3 seeds"
)


# --------------------------------------------------------------------------- machine and cost
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


def gpu_names() -> list[str]:
    """The GPUs TensorFlow sees (empty on a CPU-only machine)."""
    import tensorflow as tf

    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            names.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
        except (RuntimeError, ValueError):
            names.append(gpu.name)
    return names


def machine_string() -> str:
    """machine(), plus the GPUs training runs on where TensorFlow sees any."""
    gpus = gpu_names()
    return machine() + (f"; GPU: {', '.join(gpus)}" if gpus else "")


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


def matmul_peak_flops(n: int | None = None, seconds: float = 3.0) -> float:
    """float32 FLOP/s of TensorFlow's matrix multiply on the device it trains on (best of repeated
    timings; 2048 x 2048 on a CPU, 8192 x 8192 on a GPU)."""
    import tensorflow as tf

    n = n or (8192 if tf.config.list_physical_devices("GPU") else 2048)
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    tf.linalg.matmul(a, b).numpy()  # warm-up
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


# --------------------------------------------------------------------------- cells and result files
def dataset_name(zip_path: Path, image_size: int, max_per_class=None, epochs=STANDARD_EPOCHS, budget=None) -> str:
    """'eurosat64-<first 8 hex of the zip's sha256>', plus -maxN / -epN / -budgetM for reduced runs."""
    digest = hashlib.sha256()
    with open(zip_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    short = re.sub(r"[^a-z0-9]", "", zip_path.stem.lower()) or "data"
    name = f"{short}{image_size}-{digest.hexdigest()[:8]}"
    if max_per_class:
        name += f"-max{max_per_class}"
    if epochs != STANDARD_EPOCHS:
        name += f"-ep{epochs}"
    if budget:
        name += f"-budget{budget:g}"
    return name


def result_path(results: Path, dataset: str, recipe: str, seed: int) -> Path:
    return results / f"{dataset}__{recipe}__seed{seed}.json"


def missing_cells(results: Path, dataset: str, recipes: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """The (recipe, seed) cells of the grid without a result file, seed by seed (all recipes of seed 0 first)."""
    return [
        (recipe, seed)
        for seed in seeds
        for recipe in recipes
        if not result_path(results, dataset, recipe, seed).exists()
    ]


def encode_array(array: np.ndarray, dtype: str) -> dict:
    """A compact JSON form: base64 of the array cast to `dtype`, with its shape."""
    array = np.ascontiguousarray(array, dtype=dtype)
    return {"dtype": dtype, "shape": list(array.shape), "base64": base64.b64encode(array.tobytes()).decode("ascii")}


def decode_array(encoded: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(encoded["base64"]), dtype=encoded["dtype"]).reshape(encoded["shape"])


def reached(history: list[dict], threshold: float, gflop_per_epoch: float) -> dict | None:
    """Epoch, training seconds and training GFLOP when validation accuracy first reached `threshold`."""
    seconds = 0.0
    for entry in history:
        seconds += entry["seconds"]
        if entry["val_accuracy"] >= threshold:
            return {"epoch": entry["epoch"], "seconds": seconds, "gflop": entry["epoch"] * gflop_per_epoch}
    return None


def threshold_key(threshold: float) -> str:
    return f"{round(threshold * 100)}"


# --------------------------------------------------------------------------- running a cell
def uncommitted_changes() -> list[str]:
    """`git status --porcelain` lines for the code a cell runs (cnn_tasks/, bench/): the commit alone does
    not say what ran when these are not empty."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", "status", "--porcelain", "--", "cnn_tasks", "bench/bench_time_to_accuracy.py"],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ["git status failed"]
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def run_cell(args, dataset: str, recipe: str, seed: int, budget_minutes, peak: float, run_id: str, commit: str):
    """Train one cell (resuming its persistent store) and write its result file."""
    from cnn_tasks import data, download, models, rebalance, split, train
    from cnn_tasks.context import RunContext, model_id

    spec, config_changes = RECIPES[recipe]
    spec = spec.model_copy(update={"name": recipe.replace("_", "-")})
    cell = args.work / dataset / f"{recipe}__seed{seed}"
    config = PipelineConfig.from_dict(
        {
            "store_uri": f"file://{cell / 'store'}",
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
    mid = model_id(spec.name, "unbalanced")
    start = time.perf_counter()
    prepare_s = check_s = None
    if ctx.store.exists(ctx.data_key("dataset.json")):  # written last by rebalance: the data stages finished
        log.warning("%s seed %d: data prepared by an earlier invocation (%s), reused", recipe, seed, cell)
    else:
        for stage in (download, split, rebalance):
            stage.run(ctx)
        prepare_s = time.perf_counter() - start
        train.single_batch_check(ctx, spec.name)
        check_s = time.perf_counter() - start - prepare_s
    if ctx.store.exists(ctx.model_key(mid, "meta.json")):  # trained and saved; only the result file is missing
        log.warning("%s seed %d: training finished in an earlier invocation; evaluating it", recipe, seed)
    else:
        train.run(ctx, spec.name, "unbalanced")
    meta = ctx.store.get_json(ctx.model_key(mid, "meta.json"))
    history = ctx.store.get_json(ctx.model_key(mid, "history.json"))
    model = models.load_model(ctx.cached(ctx.model_key(mid, "model.keras")))
    info = data.load_dataset_info(ctx)
    counts = {s: data.split_info(info, s)["count"] for s in ("train", "val", "test")}
    x, y, _ = data.load_split_arrays(ctx, "test")
    probabilities = model.predict(x, batch_size=256, verbose=0)
    labels = np.asarray(y)
    gflop_per_image = training_flops_per_image(model) / 1e9
    best = min(history, key=lambda h: h["val_loss"])
    result = {
        "schema": SCHEMA,
        "dataset": dataset,
        "dataset_zip": args.zip.name,
        "dataset_sha256": meta.get("dataset_sha256"),
        "image_size": args.image_size,
        "max_per_class": args.max_per_class,
        "images": counts,
        "recipe": recipe,
        "seed": seed,
        "epochs_configured": args.epochs,
        "epochs_run": len(history),
        "stopped_by": meta.get("stopped_by"),
        "time_budget_minutes": budget_minutes,
        "learning_rate": meta["spec"]["learning_rate"],
        "spec": meta["spec"],
        "params": meta.get("params"),
        "best_epoch": best["epoch"],
        "best_val_accuracy": best["val_accuracy"],
        "test_accuracy": float((probabilities.argmax(axis=1) == labels).mean()),
        "gflop_per_image": gflop_per_image,
        "reached": {threshold_key(t): reached(history, t, gflop_per_image * counts["train"]) for t in THRESHOLDS},
        "train_s": sum(h["seconds"] for h in history),
        "prepare_s": prepare_s,
        "check_s": check_s,
        "images_per_s": meta["images_per_s"],
        "achieved_gflop_per_s": gflop_per_image * meta["images_per_s"],
        "history": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in h.items()} for h in history],
        "machine": args.machine,
        "matmul_peak_gflop_per_s": peak / 1e9,
        "commit": commit,
        "uncommitted_changes": args.uncommitted_changes,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "run_id": run_id,
        "resumed_from_epoch": meta.get("resumed_from_epoch"),
        "command": " ".join(sys.argv),
        "test_labels": encode_array(labels, "uint8"),
        "test_probabilities": encode_array(probabilities, "float16"),
    }
    path = result_path(args.results, dataset, recipe, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)
    ctx.close()
    return result


# --------------------------------------------------------------------------- summary
def load_results(results: Path) -> list[dict]:
    rows = []
    for path in sorted(results.glob("*__*__seed*.json")):
        row = json.loads(path.read_text())
        row["file"] = path.name
        rows.append(row)
    return rows


def spread(values: list[float], digits: int = 4) -> str:
    """'mean ± sample standard deviation (n)', or the single value."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 seed)"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f} ({len(values)} seeds)"


def to_threshold(rows: list[dict], key: str, field: str) -> list[float]:
    return [r["reached"][key][field] for r in rows if r["reached"].get(key)]


def reached_cell(rows: list[dict], key: str, field: str, digits: int) -> str:
    """Mean ± spread over the seeds that reached the threshold; says how many did not."""
    values = to_threshold(rows, key, field)
    if not values:
        return "not reached"
    text = spread(values, digits)
    return text if len(values) == len(rows) else f"{text}; {len(rows) - len(values)} of {len(rows)} not reached"


def gflop_ratio(rows: list[dict], reference: list[dict], key: str = "96") -> str:
    """Mean training GFLOP to the threshold against the reference recipe's (machine-independent)."""
    mine, ref = to_threshold(rows, key, "gflop"), to_threshold(reference, key, "gflop")
    if not mine or not ref:
        return "-"
    return f"{np.mean(mine) / np.mean(ref):.2f}x"


def ensemble_accuracies(rows: list[dict]) -> dict[int, float]:
    """Per seed where every ENSEMBLE recipe has a result: test accuracy of their averaged probabilities (the
    cells of one seed split the same images the same way; the labels are checked)."""
    accuracies = {}
    for seed in sorted({r["seed"] for r in rows}):
        members = [r for r in rows if r["seed"] == seed and r["recipe"] in ENSEMBLE]
        if {m["recipe"] for m in members} != set(ENSEMBLE):
            continue
        labels = decode_array(members[0]["test_labels"])
        for m in members:
            if not np.array_equal(decode_array(m["test_labels"]), labels):
                raise ValueError(f"seed {seed}: {m['file']} has other test labels; the cells split differently")
        mean = np.mean([decode_array(m["test_probabilities"]).astype(np.float32) for m in members], axis=0)
        accuracies[seed] = float((mean.argmax(axis=1) == labels).mean())
    return accuracies


def wall_ratios(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(cell, old_baseline cell) pairs measured side by side: same dataset, seed, machine and invocation."""
    pairs = []
    for r in rows:
        if r["recipe"] == REFERENCE:
            continue
        for ref in rows:
            same = (ref["dataset"], ref["seed"], ref["machine"], ref["run_id"]) == (
                r["dataset"],
                r["seed"],
                r["machine"],
                r["run_id"],
            )
            if ref["recipe"] == REFERENCE and same:
                pairs.append((r, ref))
    return pairs


def summary(rows: list[dict]) -> str:
    """Markdown tables of every result file, per dataset."""
    if not rows:
        return "No result files yet.\n"
    out = []
    keys = [threshold_key(t) for t in THRESHOLDS]
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == dataset]
        recipes = sorted(
            {r["recipe"] for r in mine}, key=lambda name: list(RECIPES).index(name) if name in RECIPES else 99
        )
        reference = [r for r in mine if r["recipe"] == REFERENCE]
        out += [
            f"#### {dataset}",
            "",
            "Per recipe, mean ± sample standard deviation over seeds. Epochs and training GFLOP count the "
            "training images only (GFLOP per image x training images x epochs); the ratio is to "
            f"{REFERENCE}'s mean training GFLOP to 96 % and does not depend on the machine.",
            "",
            "| recipe | seeds | test accuracy (best epoch) | "
            + " | ".join(f"epochs to {k} %" for k in keys)
            + " | GFLOP per training image | training GFLOP to 96 % | GFLOP to 96 % against "
            + REFERENCE
            + " | machines |",
            "|---" * (7 + len(keys)) + "|",
        ]
        for recipe in recipes:
            cells = [r for r in mine if r["recipe"] == recipe]
            machines = "; ".join(sorted({r["machine"] for r in cells}))
            out.append(
                f"| {recipe} | {', '.join(str(r['seed']) for r in sorted(cells, key=lambda r: r['seed']))} "
                f"| {spread([r['test_accuracy'] for r in cells])} | "
                + " | ".join(reached_cell(cells, k, "epoch", 1) for k in keys)
                + f" | {cells[0]['gflop_per_image']:.3f} | {reached_cell(cells, '96', 'gflop', 0)} "
                f"| {gflop_ratio(cells, reference) if recipe != REFERENCE else '1.00x' if reference else '-'} "
                f"| {machines} |"
            )
        out += [
            "",
            "Per cell:",
            "",
            "| recipe | seed | epochs run | stopped by | test accuracy | best val accuracy | "
            + " | ".join(f"to {k} % (epoch, s, GFLOP)" for k in keys)
            + " | images/s | of the matmul peak | machine | commit | date | run id |",
            "|---" * (11 + len(keys)) + "|",
        ]
        for r in sorted(mine, key=lambda r: (r["seed"], recipes.index(r["recipe"]))):
            marks = [
                "not reached"
                if not r["reached"].get(k)
                else f"{r['reached'][k]['epoch']}, {r['reached'][k]['seconds']:.0f} s, {r['reached'][k]['gflop']:.0f}"
                for k in keys
            ]
            out.append(
                f"| {r['recipe']} | {r['seed']} | {r['epochs_run']} of {r['epochs_configured']} | {r['stopped_by'] or '-'} "
                f"| {r['test_accuracy']:.4f} | {r['best_val_accuracy']:.4f} | "
                + " | ".join(marks)
                + f" | {r['images_per_s']:.1f} | {r['achieved_gflop_per_s'] / r['matmul_peak_gflop_per_s']:.2f} "
                f"of {r['matmul_peak_gflop_per_s']:.0f} GFLOP/s | {r['machine']} | {r['commit'][:9]} "
                f"| {r['date'][:10]} | {r['run_id']} |"
            )
        ensembles = ensemble_accuracies(mine)
        out.append("")
        if ensembles:
            per_seed = ", ".join(f"seed {s}: {a:.4f}" for s, a in ensembles.items())
            out.append(
                f"Soft-vote ensemble of {', '.join(ENSEMBLE)}: test accuracy {spread(list(ensembles.values()))} "
                f"({per_seed})."
            )
        else:
            out.append(f"Soft-vote ensemble of {', '.join(ENSEMBLE)}: no seed has all of them yet.")
        pairs = wall_ratios(mine)
        out.append("")
        if pairs:
            out += [
                f"Wall time against {REFERENCE}, only cells of one invocation on one machine (side by side):",
                "",
                f"| recipe | seed | run id | machine | training s per epoch against {REFERENCE} | s to 96 % against {REFERENCE} |",
                "|---|---|---|---|---|---|",
            ]
            for r, ref in pairs:
                per_epoch = (r["train_s"] / r["epochs_run"]) / (ref["train_s"] / ref["epochs_run"])
                to96 = (
                    f"{r['reached']['96']['seconds'] / ref['reached']['96']['seconds']:.2f}x"
                    if r["reached"].get("96") and ref["reached"].get("96")
                    else "-"
                )
                out.append(
                    f"| {r['recipe']} | {r['seed']} | {r['run_id']} | {r['machine']} | {per_epoch:.2f}x | {to96} |"
                )
        else:
            out.append(f"Wall time: no cell shares an invocation and machine with an {REFERENCE} cell of its seed.")
        out.append("")
        out.append(f"Goals: {GOALS}.")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_docs(docs: Path, text: str) -> None:
    """Replace the block between DOCS_START and DOCS_END in `docs` with `text`."""
    content = docs.read_text()
    if DOCS_START not in content or DOCS_END not in content:
        raise SystemExit(f"{docs}: no summary markers ({DOCS_START!r} ... {DOCS_END!r})")
    head, rest = content.split(DOCS_START, 1)
    _, tail = rest.split(DOCS_END, 1)
    docs.write_text(f"{head}{DOCS_START}\n{text}{DOCS_END}{tail}")


# --------------------------------------------------------------------------- command line
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--grid", "--recipes", dest="grid", default=",".join(RECIPES), help=f"comma-separated subset of {list(RECIPES)}"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--epochs", type=int, default=STANDARD_EPOCHS)
    parser.add_argument("--budget", type=float, default=None, help="minutes of training for this invocation")
    parser.add_argument("--max-per-class", type=int, default=None, help="cap images per class (default: all)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--zip", type=Path, default=EUROSAT_ZIP)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="persistent stores of the cells")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the result files")
    parser.add_argument("--summary", action="store_true", help="print the tables of every result file; train nothing")
    parser.add_argument(
        "--docs", type=Path, nargs="?", const=DOCS, default=None, help="with --summary: write them there"
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if args.summary:
        text = summary(load_results(args.results))
        print(text)
        if args.docs:
            write_docs(args.docs, text)
        return
    logging.getLogger("cnn_tasks.train").setLevel(logging.INFO)  # per-epoch lines: accuracy, images/s, ETA
    logging.getLogger("cnn_tasks.runtime").setLevel(logging.INFO)
    recipes = [r.strip() for r in args.grid.split(",") if r.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown or not args.zip.exists():
        sys.exit(f"unknown recipe(s) {unknown}; known: {list(RECIPES)}" if unknown else f"no dataset at {args.zip}")
    args.work = args.work.expanduser().resolve()
    os.environ.setdefault("CNN_CACHE_DIR", str(args.work / "cache"))
    dataset = dataset_name(args.zip, args.image_size, args.max_per_class, args.epochs, args.budget)
    cells = missing_cells(args.results, dataset, recipes, seeds)
    log.warning("dataset %s: %d of %d cells to run: %s", dataset, len(cells), len(recipes) * len(seeds), cells)
    if not cells:
        return
    per_cell = None if args.budget is None else args.budget / len(cells)
    run_id = f"{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%S}-{os.getpid()}"
    commit = runtime.git_commit()
    args.uncommitted_changes = uncommitted_changes()
    args.machine = machine_string()
    peak = matmul_peak_flops()
    log.warning("run %s on %s: float32 matmul peak %.1f GFLOP/s", run_id, args.machine, peak / 1e9)
    for recipe, seed in cells:
        r = run_cell(args, dataset, recipe, seed, per_cell, peak, run_id, commit)
        print(
            f"{recipe} seed {seed}: test {r['test_accuracy']:.4f} after {r['epochs_run']} epochs, {r['train_s']:.0f} s; "
            f"96 % at {r['reached']['96']['epoch'] if r['reached']['96'] else 'never'}; "
            f"wrote {result_path(args.results, dataset, recipe, seed)}",
            flush=True,
        )
    print(summary([r for r in load_results(args.results) if r["dataset"] == dataset]))


if __name__ == "__main__":
    main()
