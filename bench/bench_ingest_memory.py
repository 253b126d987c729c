"""Benchmark: peak memory, wall time and disk written when ingesting a zip bomb vs. a normal archive.

    .venv/bin/python bench/bench_ingest_memory.py [--gib 2] [--stages fetch,run] [--fetch FILE]

Builds two inputs of about the same size (cached in --workdir between calls):
  normal.zip  ~2.4 MB of small noisy PNGs in two class folders;
  bomb.zip    the same few valid PNGs plus one `--gib` GiB member of zeros (deflated to ~2 MB);
  bomb.tar.gz the same as a tar.gz (no per-member compressed size: the ratio is judged while streaming).
Each measurement runs in a fresh child process with its own empty cache and store, so its peak
resident memory (ru_maxrss of the child) and the bytes it left on disk are its own. Stages:
  fetch  ingest.fetch.fetch: download cache + safe extraction;
  run    download.run: fetch, validate, pack the clean shards (imports TensorFlow).
`--fetch FILE` loads that file as cnn_tasks.ingest.fetch instead of the checkout's, e.g. to measure
the code before a change: `git show HEAD:cnn_tasks/ingest/fetch.py > /tmp/old_fetch.py` (an older
single-file cnn_tasks/sources.py loads the same way).
Prints one table; nothing is written to the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ================================================================== inputs
def _noisy_pngs(count: int, seed: int = 0) -> dict[str, bytes]:
    """`count` 48x48 noisy PNGs (barely compressible) in two class folders."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    files = {}
    for i in range(count):
        pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, "PNG")
        files[f"dataset/class_{'ab'[i % 2]}/img_{i:04d}.png"] = buffer.getvalue()
    return files


class _Zeros:
    """A file object of `size` zero bytes, read in chunks."""

    def __init__(self, size: int):
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def build_inputs(workdir: Path, gib: float) -> dict[str, Path]:
    """normal.zip, bomb-<gib>gib.zip and bomb-<gib>gib.tar.gz under `workdir` (reused when present)."""
    import io
    import tarfile

    workdir.mkdir(parents=True, exist_ok=True)
    normal, bomb, tgz = workdir / "normal.zip", workdir / f"bomb-{gib:g}gib.zip", workdir / f"bomb-{gib:g}gib.tar.gz"
    if not normal.is_file():
        with zipfile.ZipFile(normal, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in _noisy_pngs(340).items():  # ~2.4 MB
                zf.writestr(name, data)
    if not bomb.is_file():
        tmp = bomb.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for name, data in _noisy_pngs(8, seed=1).items():
                zf.writestr(name, data)
            zeros, left = bytes(1 << 20), int(gib * 2**30)
            with zf.open("dataset/class_a/zeros.png", "w", force_zip64=True) as out:
                while left > 0:
                    out.write(zeros[: min(left, len(zeros))])
                    left -= len(zeros)
        tmp.rename(bomb)
    if not tgz.is_file():
        tmp = tgz.with_suffix(".tmp")
        with tarfile.open(tmp, "w:gz", compresslevel=9) as tf:
            for name, data in _noisy_pngs(8, seed=1).items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo("dataset/class_a/zeros.png")
            info.size = int(gib * 2**30)
            tf.addfile(info, _Zeros(info.size))
        tmp.rename(tgz)
    return {"normal": normal, "bomb": bomb, "bomb-tgz": tgz}


# ================================================================== one measurement (child process)
def _load_fetch(path: str | None) -> None:
    """Install `path` as cnn_tasks.ingest.fetch before anything imports the checkout's module."""
    if not path:
        return
    import importlib.util

    import cnn_tasks.ingest

    spec = importlib.util.spec_from_file_location("cnn_tasks.ingest.fetch", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cnn_tasks.ingest.fetch"] = module
    spec.loader.exec_module(module)
    if not hasattr(module, "fetch_source"):  # an older module: only fetch(), nothing listed as skipped
        from types import SimpleNamespace

        module.fetch_source = lambda *a, **k: SimpleNamespace(folder=module.fetch(*a, **k), skipped=[])
    cnn_tasks.ingest.fetch = module


def _disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def child(stage: str, archive: str, fetch_file: str | None) -> dict:
    _load_fetch(fetch_file)
    from cnn_tasks.config import PipelineConfig
    from cnn_tasks.context import RunContext
    from cnn_tasks.errors import PipelineError

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    os.environ["CNN_CACHE_DIR"] = str(work / "cache")
    config = PipelineConfig.from_dict(
        {
            "store_uri": f"file://{work / 'store'}",
            "dataset_url": archive,
            "dataset_checksum": None,
            "min_images_per_class": 1,
        }
    )
    ctx = RunContext.create(config, "bench")
    started = time.monotonic()
    outcome = "ok"
    try:
        if stage == "fetch":
            from cnn_tasks.ingest import fetch

            fetch.fetch(ctx, archive)
        else:
            from cnn_tasks import download

            result = download.run(ctx)
            outcome = f"ok: {result['accepted']} accepted, rejected {result['rejected_by_reason'] or 0}"
    except PipelineError as exc:
        outcome = f"{type(exc).__name__}: {str(exc)[:90]}"
    seconds = time.monotonic() - started
    written = _disk_bytes(work)
    shutil.rmtree(work, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"seconds": seconds, "peak_mib": peak, "written_mib": written / 2**20, "outcome": outcome}


def measure(stage: str, archive: Path, fetch_file: str | None) -> dict:
    command = [sys.executable, __file__, "--child", stage, str(archive)]
    if fetch_file:
        command += ["--fetch", fetch_file]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {
            "seconds": float("nan"),
            "peak_mib": float("nan"),
            "written_mib": float("nan"),
            "outcome": f"crashed (rc {done.returncode}): {done.stderr.strip().splitlines()[-1:]}",
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


# ================================================================== main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0, help="size of the bomb's zero member in GiB")
    parser.add_argument("--stages", default="fetch,run", help="comma-separated: fetch, run")
    parser.add_argument("--fetch", help="an ingest/fetch.py to measure instead of the checkout's")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench_ingest_memory")
    parser.add_argument("--child", nargs=2, metavar=("STAGE", "ARCHIVE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.fetch)))
        return

    inputs = build_inputs(args.workdir, args.gib)
    print(
        f"fetch: {args.fetch or 'cnn_tasks/ingest/fetch.py (checkout)'}; bomb: one {args.gib:g} GiB member "
        "of zeros; each row is a fresh child process"
    )
    print(f"{'stage':<6} {'input':<8} {'archive MiB':>11} {'peak RSS MiB':>12} {'wall s':>7} {'disk MiB':>9}  outcome")
    for stage in args.stages.split(","):
        rows = {}
        for name, archive in inputs.items():
            rows[name] = row = measure(stage, archive, args.fetch)
            print(
                f"{stage:<6} {name:<8} {archive.stat().st_size / 2**20:>11.1f} {row['peak_mib']:>12.0f} "
                f"{row['seconds']:>7.1f} {row['written_mib']:>9.1f}  {row['outcome']}",
                flush=True,
            )
        for bomb in ("bomb", "bomb-tgz"):
            extra = rows[bomb]["peak_mib"] - rows["normal"]["peak_mib"]
            print(f"{stage:<6} {bomb + ' - normal peak RSS':<33} {extra:>6.0f} MiB (goal: < 100)")


if __name__ == "__main__":
    main()
