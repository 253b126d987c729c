"""Benchmark the data stages (download + validate, split, rebalance) on the shared EuroSAT archive.

    .venv/bin/python bench/bench_prepare.py [--zip PATH] [--subset 500] [--rebalance augment]

Runs the full archive (27,000 images) and a subset (max_images_per_class, ~5,000 images) each in
a fresh child process with its own empty cache and store, so wall time includes extraction and
peak memory (ru_maxrss of the child) is not inherited. Prints both side by side and the ratio of
peak memory: streaming ingest should keep it about flat as the dataset grows. Nothing is written
to the repository; figures are printed only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ZIP = ROOT.parent / "shared" / "datasets" / "eurosat.zip"


def _rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler(threading.Thread):
    """Samples RSS every 50 ms; complements ru_maxrss with per-stage peaks."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self._stop = 0.0, threading.Event()

    def run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mib())
            time.sleep(0.05)

    def take(self) -> float:
        peak, self.peak = max(self.peak, _rss_mib()), 0.0
        return peak


def child(args) -> None:
    """Run the three stages once and print one JSON line with timings and memory."""
    sys.path.insert(0, str(ROOT))
    work = Path(args.work)
    os.environ["CNN_CACHE_DIR"] = str(work / "cache")
    import tensorflow  # noqa: F401  (imported up front so the baseline includes it)

    from cnn_tasks import download, rebalance, split
    from cnn_tasks.config import PipelineConfig
    from cnn_tasks.context import RunContext

    config = PipelineConfig.from_dict(
        {
            "store_uri": f"file://{work / 'store'}",
            "dataset_url": args.zip,
            "dataset_checksum": None,
            "max_images_per_class": args.max_images or None,
            "rebalance": args.rebalance,
        }
    )
    ctx = RunContext.create(config, "bench")
    sampler = PeakSampler()
    sampler.start()
    result = {"baseline_rss_mib": round(_rss_mib(), 1), "stages": {}}
    sampler.take()
    total = time.perf_counter()
    for name, stage in (
        ("download+validate", download.run),
        ("split+analysis", split.run),
        ("rebalance", rebalance.run),
    ):
        started = time.perf_counter()
        out = stage(ctx)
        result["stages"][name] = {
            "seconds": round(time.perf_counter() - started, 2),
            "peak_rss_mib": round(sampler.take(), 1),
        }
        if name == "download+validate":
            result["images"] = out["accepted"]
    result["seconds"] = round(time.perf_counter() - total, 2)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("RESULT " + json.dumps(result))


def run_child(zip_path: str, max_images: int, rebalance: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as work:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--work",
            work,
            "--zip",
            zip_path,
            "--max-images",
            str(max_images),
            "--rebalance",
            rebalance,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"benchmark child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zip", default=str(DEFAULT_ZIP))
    parser.add_argument("--subset", type=int, default=500, help="max_images_per_class of the subset run")
    parser.add_argument("--rebalance", default="augment")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--max-images", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if not Path(args.zip).is_file():
        sys.exit(f"{args.zip} is absent: pass --zip /path/to/eurosat.zip")

    runs = {}
    for label, limit in ((f"subset ({args.subset}/class)", args.subset), ("full archive", 0)):
        print(f"running {label} ...", flush=True)
        runs[label] = run_child(args.zip, limit, args.rebalance)
    (small_name, small), (full_name, full) = runs.items()

    print(f"\nData stages on {args.zip} (rebalance={args.rebalance}), one fresh process each\n")
    print(f"{'':36s}{small_name:>22s}{full_name:>22s}")
    print(f"{'images accepted':36s}{small['images']:>22d}{full['images']:>22d}")
    for stage in full["stages"]:
        seconds = [run["stages"][stage]["seconds"] for run in (small, full)]
        print(f"{stage + ' (s)':36s}{seconds[0]:>22.1f}{seconds[1]:>22.1f}")
    print(f"{'total wall time (s)':36s}{small['seconds']:>22.1f}{full['seconds']:>22.1f}")
    print(f"{'images/s':36s}{small['images'] / small['seconds']:>22.0f}{full['images'] / full['seconds']:>22.0f}")
    print(f"{'RSS after imports (MiB)':36s}{small['baseline_rss_mib']:>22.0f}{full['baseline_rss_mib']:>22.0f}")
    for stage in full["stages"]:
        print(
            f"{'peak RSS ' + stage + ' (MiB)':36s}{small['stages'][stage]['peak_rss_mib']:>22.0f}"
            f"{full['stages'][stage]['peak_rss_mib']:>22.0f}"
        )
    print(f"{'peak RSS, ru_maxrss (MiB)':36s}{small['peak_rss_mib']:>22.0f}{full['peak_rss_mib']:>22.0f}")
    ratio = full["peak_rss_mib"] / small["peak_rss_mib"]
    growth = (full["peak_rss_mib"] - full["baseline_rss_mib"]) / max(
        small["peak_rss_mib"] - small["baseline_rss_mib"], 1
    )
    print(
        f"\nimages x{full['images'] / small['images']:.1f}  ->  peak memory x{ratio:.2f} "
        f"(above the import baseline: x{growth:.2f})"
    )


if __name__ == "__main__":
    main()
