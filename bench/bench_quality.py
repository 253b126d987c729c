"""Model quality on EuroSAT through the real pipeline stages (download, split, rebalance, train).

    .venv/bin/python bench/bench_quality.py                      # full: hours on 2 CPU cores
    .venv/bin/python bench/bench_quality.py --max-per-class 50 --epochs 1    # smoke run

1. every experiment trained on EuroSAT (all 10 classes, 64 px, unbalanced variant): test
   accuracy, macro-F1 and wall time per run (target: best single model >= 96% test accuracy);
2. a deliberately imbalanced copy (the --minority classes cut to a third): one experiment on the
   unbalanced vs the balanced variant, comparing macro-F1 and minority-class recall.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnn_tasks import data, download, models, rebalance, split, train  # noqa: E402
from cnn_tasks.config import PipelineConfig  # noqa: E402
from cnn_tasks.context import RunContext, model_id  # noqa: E402
from cnn_tasks.experiments import DEFAULT_EXPERIMENTS  # noqa: E402

EUROSAT_ZIP = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "eurosat.zip"
MINORITY = ("Highway", "PermanentCrop", "River")


def imbalanced_zip(source: Path, target: Path, minority: tuple[str, ...], cap: int | None, seed: int) -> Path:
    """A copy of the archive with the `minority` classes cut to a third (seeded sample)."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as out:
        names = [n for n in src.namelist() if not n.endswith("/")]
        for cls in sorted({n.split("/")[0] for n in names}):
            members = sorted(n for n in names if n.startswith(cls + "/"))
            keep = min(cap or len(members), len(members))
            keep = keep // 3 if cls in minority else keep
            for name in rng.choice(members, keep, replace=False):
                out.writestr(name, src.read(name))
    return target


def prepare(ctx: RunContext) -> dict:
    """The data stages, as the DAG runs them."""
    for stage in (download, split, rebalance):
        stage.run(ctx)
    return data.load_dataset_info(ctx)


def evaluate(ctx: RunContext, mid: str, classes: list[str], minority: tuple[str, ...]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    model = models.load_model(ctx.cached(ctx.model_key(mid, "model.keras")))
    x, y, _ = data.load_split_arrays(ctx, "test")
    predicted = model.predict(x, batch_size=256, verbose=0).argmax(axis=1)
    recall = recall_score(y, predicted, labels=range(len(classes)), average=None, zero_division=0)
    minority_ids = [classes.index(c) for c in minority if c in classes]
    return {
        "accuracy": accuracy_score(y, predicted),
        "macro_f1": f1_score(y, predicted, average="macro"),
        "minority_recall": float(np.mean(recall[minority_ids])) if minority_ids else float("nan"),
    }


def run_experiments(ctx: RunContext, info: dict, runs: list[tuple[str, str]], minority, label: str) -> list[dict]:
    rows, checked = [], set()
    for experiment, variant in runs:
        start = time.perf_counter()
        if experiment not in checked:
            train.single_batch_check(ctx, experiment)
            checked.add(experiment)
        result = train.run(ctx, experiment, variant)
        mid = model_id(experiment, variant)
        rows.append(
            {
                "data": label,
                "model": mid,
                "epochs": result["epochs_run"],
                "wall_s": time.perf_counter() - start,
                **evaluate(ctx, mid, info["classes"], minority),
            }
        )
        print_rows(rows[-1:])
    return rows


def print_rows(rows: list[dict], header: bool = False) -> None:
    if header:
        print(
            f"\n{'data':<11} {'model':<26} {'test acc':>8} {'macro-F1':>8} {'minority recall':>15} "
            f"{'epochs':>6} {'wall s':>8}"
        )
    for r in rows:
        print(
            f"{r['data']:<11} {r['model']:<26} {r['accuracy']:>8.4f} {r['macro_f1']:>8.4f} "
            f"{r['minority_recall']:>15.4f} {r['epochs']:>6} {r['wall_s']:>8.0f}",
            flush=True,
        )


def main() -> None:
    names = [e.name for e in DEFAULT_EXPERIMENTS]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-per-class", type=int, default=None, help="cap images per class (default: all)")
    parser.add_argument("--experiments", default=",".join(names), help=f"comma-separated subset of {names}")
    parser.add_argument("--imbalanced-experiment", default=names[0], help="experiment for the imbalance study")
    parser.add_argument(
        "--imbalanced-max-per-class",
        type=int,
        default=None,
        help="cap per class before the minority cut (default: --max-per-class)",
    )
    parser.add_argument("--minority", default=",".join(MINORITY), help="classes cut to a third")
    parser.add_argument("--rebalance", default="augment", help="strategy for the balanced variant")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--skip-imbalanced", action="store_true")
    parser.add_argument("--zip", type=Path, default=EUROSAT_ZIP)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the store here (default: temp folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    experiments = [e.strip() for e in args.experiments.split(",") if e.strip()]
    minority = tuple(c.strip() for c in args.minority.split(",") if c.strip())

    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
        work = args.workdir or Path(tmp)
        os.environ.setdefault("CNN_CACHE_DIR", str(work / "cache"))

        def context(run_id: str, url: Path, cap: int | None = args.max_per_class) -> RunContext:
            config = PipelineConfig.from_dict(
                {
                    "store_uri": f"file://{work / 'store'}",
                    "dataset_url": str(url),
                    "dataset_checksum": None,
                    "max_images_per_class": cap,
                    "image_size": args.image_size,
                    "epochs": args.epochs,
                    "rebalance": args.rebalance,
                    "min_images_per_class": 5,
                }
            )
            return RunContext.create(config, run_id)

        started = time.perf_counter()
        ctx = context("quality", args.zip)
        rows = run_experiments(ctx, prepare(ctx), [(e, "unbalanced") for e in experiments], minority, "eurosat")
        if not args.skip_imbalanced:
            cap = args.imbalanced_max_per_class or args.max_per_class
            url = imbalanced_zip(args.zip, work / "eurosat_imbalanced.zip", minority, cap, 0)
            ctx = context("quality_imbalanced", url, cap)
            runs = [(args.imbalanced_experiment, v) for v in ("unbalanced", "balanced")]
            rows += run_experiments(ctx, prepare(ctx), runs, minority, "imbalanced")
        print_rows(rows, header=True)
        best = max((r for r in rows if r["data"] == "eurosat"), key=lambda r: r["accuracy"])
        print(
            f"\nbest single model on EuroSAT: {best['model']} test accuracy {best['accuracy']:.4f} "
            f"(target >= 0.96); total {time.perf_counter() - started:.0f}s"
        )


if __name__ == "__main__":
    main()
