"""`make run` one task at a time against several at a time, side by side in one run.

    .venv/bin/python bench/bench_parallel.py [--parallel 1,2] [--profile quick] [--zip ../shared/datasets/eurosat.zip]

For each value of CNN_PARALLEL_TASKS, the whole pipeline runs once through `python -m cnn_tasks run`
(what `make run` does) in a fresh AIRFLOW_HOME and store: one value runs `airflow dags test` task
after task with every core per task, a larger one runs the LocalExecutor with that many task slots
and cores / slots TensorFlow threads per task. Printed per setting: the run's wall time, the
training span (first training task's start to the last one's end) and the sum of the training
tasks' own wall times, the best model's test accuracy, and each time's ratio to the first setting.
The runs go in the order given, each with its own dataset cache, so each pays the same ingest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_time_to_accuracy import EUROSAT_ZIP, machine  # noqa: E402

from cnn_tasks.failures import read_timings  # noqa: E402
from cnn_tasks.storage import open_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def spans(store, prefix: str, task: str) -> list[tuple[float, float]]:
    """(start, end) epoch seconds of each instance of `task`, from the run's timings."""
    ends = [
        (datetime.fromisoformat(t["at"]).timestamp(), t["seconds"])
        for t in read_timings(store, prefix)
        if t["task_id"] == task
    ]
    return [(end - seconds, end) for end, seconds in ends]


def run_once(work: Path, settings: Path, parallel: int) -> dict:
    home, store_uri = work / f"airflow_{parallel}", f"file://{work / f'store_{parallel}'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CNN_PARALLEL"))}
    env |= {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(ROOT),
        "CONF": str(settings),
        "STORE_URI": store_uri,
        "CNN_PARALLEL_TASKS": str(parallel),
        "CNN_CACHE_DIR": str(work / f"cache_{parallel}"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    started = time.perf_counter()
    with open(work / f"run_{parallel}.log", "w") as log:
        code = subprocess.run([sys.executable, "-m", "cnn_tasks", "run"], env=env, stdout=log, stderr=log).returncode
    wall = time.perf_counter() - started
    if code:
        sys.exit(f"the run with CNN_PARALLEL_TASKS={parallel} failed: see {work / f'run_{parallel}.log'}")
    store = open_store(store_uri)
    run_id = next(iter({k.split("/")[1] for k in store.list("runs/")}))
    train = spans(store, f"runs/{run_id}", "train")
    summary = store.get_json(f"runs/{run_id}/report/summary.json")
    return {
        "parallel": parallel,
        "wall_s": wall,
        "train_span_s": max(e for _, e in train) - min(s for s, _ in train),
        "train_sum_s": sum(e - s for s, e in train),
        "best": summary["results"]["best_model"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parallel", default="1,2", help="comma-separated CNN_PARALLEL_TASKS values")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--zip", type=Path, default=EUROSAT_ZIP)
    parser.add_argument("--keep", type=Path, help="keep stores and logs here (default: a temporary folder)")
    args = parser.parse_args()
    if not args.zip.exists():
        sys.exit(f"no dataset at {args.zip}")
    values = [int(v) for v in args.parallel.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_parallel_") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        settings = work / "settings.json"
        settings.write_text(json.dumps({"profile": args.profile, "dataset_url": str(args.zip.resolve())}))
        rows = [run_once(work, settings, p) for p in values]
    print(f"{machine()}; profile {args.profile}; dataset {args.zip.name}")
    print(
        f"{'tasks at a time':>16}{'run s':>8}{'ratio':>7}{'training span s':>17}{'ratio':>7}{'training sum s':>16}  best model"
    )
    first = rows[0]
    for r in rows:
        print(
            f"{r['parallel']:>16}{r['wall_s']:>8.0f}{r['wall_s'] / first['wall_s']:>7.2f}"
            f"{r['train_span_s']:>17.0f}{r['train_span_s'] / first['train_span_s']:>7.2f}{r['train_sum_s']:>16.0f}"
            f"  {r['best']['name']} {r['best']['accuracy']:.3f}"
        )


if __name__ == "__main__":
    main()
