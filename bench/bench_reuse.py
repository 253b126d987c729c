"""Benchmark content-addressed reuse: the data stages of a first run against a second, identical run.

    .venv/bin/python bench/bench_reuse.py [--zip PATH] [--max-per-class N] [--store s3]

Runs download + validate, split + analysis and rebalance through `cnn_tasks.reuse` twice, with the
same dataset and settings, into one store (a local folder, or a bucket on a local moto server with
--store s3): the first run computes them, the second copies the first run's outputs. The archive
is fetched and extracted into the worker cache before either run is timed, so both runs start from
the same cache and the difference is the stages' own work. The second run's time includes hashing
the dataset's content, which is what tells it nothing changed. Prints both runs' stage times side by
side and their ratio. Nothing is written to the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_ZIP = ROOT.parent / "shared" / "datasets" / "eurosat.zip"
STAGES = ("download", "split", "rebalance")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


@contextlib.contextmanager
def store_uri(kind: str, work: Path):
    if kind == "local":
        yield f"file://{work / 'store'}", None
        return
    from tests.s3server import moto_s3

    with moto_s3("bench-reuse") as endpoint:  # sets test credentials while it runs
        yield "s3://bench-reuse/store", endpoint


def run_once(config, run_id: str) -> tuple[dict[str, float], list[str | None]]:
    from cnn_tasks import download, rebalance, reuse, split
    from cnn_tasks.context import RunContext

    ctx = RunContext.create(config, run_id)
    times = {}
    try:
        for name, fn in zip(STAGES, (download.run, split.run, rebalance.run)):
            started = time.perf_counter()
            reuse.data_stage(ctx, name, fn)
            times[name] = time.perf_counter() - started
        return times, [reuse.run_record(ctx, name)["reused_from"] for name in STAGES]
    finally:
        ctx.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", default=str(DEFAULT_ZIP), help="dataset archive (default: the shared EuroSAT zip)")
    parser.add_argument("--max-per-class", type=int, default=None, help="images per class (default: all)")
    parser.add_argument("--store", choices=("local", "s3"), default="local")
    args = parser.parse_args()
    if not Path(args.zip).is_file():
        print(f"skipped: {args.zip} not found (pass --zip)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["CNN_CACHE_DIR"] = str(work / "cache")
        import tensorflow  # noqa: F401  (loaded before timing: both runs use it)

        from cnn_tasks.config import PipelineConfig
        from cnn_tasks.context import RunContext
        from cnn_tasks.ingest import fetch

        with store_uri(args.store, work) as (uri, endpoint):
            config = PipelineConfig.from_dict(
                {
                    "store_uri": uri,
                    "s3_endpoint_url": endpoint,
                    "dataset_url": args.zip,
                    "dataset_checksum": None,
                    "max_images_per_class": args.max_per_class,
                }
            )
            warm = RunContext.create(config, "warm-up")
            fetch.fetch_source(warm, config.dataset_url)  # extraction into the worker cache, untimed
            warm.close()
            first, first_reused = run_once(config, "first")
            second, second_reused = run_once(config, "second")
    assert first_reused == [None] * 3, f"the first run reused {first_reused}: the store was not empty"
    assert second_reused == ["first"] * 3, f"the second run did not reuse every stage: {second_reused}"
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores); store: {args.store}; dataset: {args.zip}")
    print(f"{'stage':<12}{'first run s':>14}{'second run s':>14}{'ratio':>9}")
    for name in STAGES:
        print(f"{name:<12}{first[name]:>14.2f}{second[name]:>14.2f}{first[name] / second[name]:>8.1f}x")
    total_first, total_second = sum(first.values()), sum(second.values())
    print(f"{'all three':<12}{total_first:>14.2f}{total_second:>14.2f}{total_first / total_second:>8.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
