"""Input-pipeline and training throughput on EuroSAT, measured side by side in one run.

    .venv/bin/python bench/bench_train.py [--images 5000] [--image-size 64] [--epochs 7]

(a) input pipeline alone (decode + resize + batch, images/s): cnn_tasks.data from packed shards
    (first pass decodes, later passes hit the in-memory cache) vs a naive per-image PIL loader;
(b) training throughput of the baseline model fed by (1) the real pipeline, (2) in-memory
    tensors, (3) the naive PIL loader as a keras PyDataset. Augmentation is off in (b) so the
    three feeds do the same work; the feeds take turns epoch by epoch, and the first epoch
    (tracing, decoding) is excluded. Medians are reported: the machine may be shared.
The shards are built here from ../shared/datasets/eurosat.zip (a seeded, class-balanced sample).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnn_tasks import data, models, runtime  # noqa: E402
from cnn_tasks.config import PipelineConfig  # noqa: E402
from cnn_tasks.context import RunContext  # noqa: E402
from cnn_tasks.experiments import DEFAULT_EXPERIMENTS  # noqa: E402
from cnn_tasks.shards import ShardWriter  # noqa: E402

EUROSAT_ZIP = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "eurosat.zip"


def sample_members(zip_path: Path, total: int, seed: int) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes and a seeded, class-balanced sample of (member name, label) from the zip."""
    with zipfile.ZipFile(zip_path) as zf:
        names = [n for n in zf.namelist() if n.lower().endswith(".jpg")]
    classes = sorted({n.split("/")[0] for n in names})
    rng = np.random.default_rng(seed)
    per_class = total // len(classes)
    picked = []
    for label, cls in enumerate(classes):
        members = sorted(n for n in names if n.startswith(cls + "/"))
        picked += [(m, label) for m in rng.choice(members, min(per_class, len(members)), replace=False)]
    order = rng.permutation(len(picked))
    return classes, [picked[i] for i in order]


def build_dataset(ctx: RunContext, zip_path: Path, total: int, image_size: int, folder: Path) -> list[tuple[Path, int]]:
    """Shards + dataset.json (all sampled images in train; a small val) and the same files on disk."""
    classes, members = sample_members(zip_path, total, ctx.config.seed)
    files, sums, squares, pixels = [], np.zeros(3), np.zeros(3), 0
    with zipfile.ZipFile(zip_path) as zf, ShardWriter(folder / "shards", "train") as writer:
        for name, label in members:
            raw = zf.read(name)
            path = folder / "files" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(raw)
            files.append((path, label))
            writer.write(raw, label, hashlib.sha256(raw).hexdigest())
            rgb = np.asarray(Image.open(path).convert("RGB"), np.float64).reshape(-1, 3)
            sums, squares, pixels = sums + rgb.sum(0), squares + (rgb**2).sum(0), pixels + len(rgb)
    keys = []
    for path in writer.paths:
        keys.append(ctx.data_key("shards", "train", "unbalanced", path.name))
        ctx.store.put_file(keys[-1], path)
    mean = sums / pixels
    counts = np.bincount([label for _, label in members], minlength=len(classes)).tolist()
    part = {"shards": keys, "count": len(members), "class_counts": counts, "class_weight": None}
    info = {
        "classes": classes,
        "image_size": image_size,
        "mean": mean.tolist(),
        "std": np.sqrt(squares / pixels - mean**2).tolist(),
        "dataset_sha256": "bench",
        "rebalance": "none",
        "figures": [],
        "splits": {s: {"unbalanced": part, "balanced": part} for s in ("train", "val", "test")},
    }
    ctx.store.put_json(ctx.data_key("dataset.json"), info)
    return files


def pil_batch(files: list[tuple[Path, int]], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The naive loader: open, convert, resize and stack one image at a time."""
    images = []
    for path, _ in files:
        image = Image.open(path).convert("RGB")
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BILINEAR)
        images.append(np.asarray(image, np.float32))
    return np.stack(images), np.array([label for _, label in files], np.int32)


class PilSequence(keras.utils.PyDataset):
    """Batches loaded with PIL from the image files, in a seeded random order."""

    def __init__(self, files, image_size: int, batch_size: int, seed: int = 0):
        super().__init__()
        self.files, self.image_size, self.batch_size = files, image_size, batch_size
        self.order = np.random.default_rng(seed).permutation(len(files))

    def __len__(self):
        return int(np.ceil(len(self.files) / self.batch_size))

    def __getitem__(self, index):
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return pil_batch([self.files[i] for i in chosen], self.image_size)


def pipeline_throughput(ctx, files, image_size: int, batch_size: int, rounds: int) -> dict[str, float]:
    """Median images/s over `rounds`, the feeds interleaved so load changes hit them alike."""
    times = {
        "tf.data from shards, 1st pass (decode+resize+batch)": [],
        "tf.data from shards, cached pass": [],
        "naive PIL loader": [],
    }
    count = len(files)
    for _ in range(rounds):
        ds = data.dataset(ctx, "train", batch_size=batch_size)  # a fresh dataset: its cache starts empty
        naive = (pil_batch(files[i : i + batch_size], image_size) for i in range(0, count, batch_size))
        for name, source in zip(times, (ds, ds, naive)):
            times[name].append(timed_pass(source))
    return {name: count / float(np.median(values)) for name, values in times.items()}


def timed_pass(iterable) -> float:
    start = time.perf_counter()
    for _ in iterable:
        pass
    return time.perf_counter() - start


def training_throughput(ctx, files, info: dict, epochs: int) -> dict[str, float]:
    """Steady-state images/s per feed. The feeds take turns one epoch at a time (round-robin), so
    a change in machine load between them cannot masquerade as a speed difference."""
    spec = DEFAULT_EXPERIMENTS[0]
    size, count = info["image_size"], len(files)
    x, y, _ = data.load_split_arrays(ctx, "train")
    # The in-memory reference is built once (tensors resident, reshuffled each epoch): handing Keras
    # the NumPy arrays on every per-epoch fit() call would add a full copy per epoch to its time.
    in_memory = (
        tf.data.Dataset.from_tensor_slices((tf.constant(x), tf.constant(y)))
        .shuffle(len(x), seed=0, reshuffle_each_iteration=True)
        .batch(spec.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    feeds = {
        # the real training pipeline (config.augment is off here, so all three feeds do the same work)
        "real pipeline (tf.data, shards)": dict(
            x=data.dataset(ctx, "train", batch_size=spec.batch_size, training=True), shuffle=False
        ),
        "in-memory tensors": dict(x=in_memory, shuffle=False),
        "naive PIL loader (PyDataset)": dict(x=PilSequence(files, size, spec.batch_size)),
    }
    trainers = {}
    for name in feeds:
        keras.utils.set_random_seed(0)
        trainers[name] = models.build_model(spec, len(info["classes"]), size, info["mean"], info["std"])
        trainers[name].compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    seconds = {name: [] for name in feeds}
    for epoch in range(epochs):
        for name, feed in feeds.items():
            start = time.perf_counter()
            trainers[name].fit(**feed, initial_epoch=epoch, epochs=epoch + 1, verbose=0)
            seconds[name].append(time.perf_counter() - start)
    for name, values in seconds.items():
        print(f"  {name}: epochs {[round(v, 1) for v in values]} s (first excluded)")
    return {name: count / float(np.median(values[1:] or values)) for name, values in seconds.items()}


def print_table(title: str, rows: dict[str, float], reference: str) -> None:
    print(f"\n{title}")
    print(f"{'feed':<55} {'images/s':>10} {'ratio':>8}")
    for name, rate in rows.items():
        print(f"{name:<55} {rate:>10.0f} {rate / rows[reference]:>8.2f}")
    print(f"(ratio = images/s relative to '{reference}')")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--epochs", type=int, default=7, help="training epochs per feed, interleaved (the first is excluded)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--zip", type=Path, default=EUROSAT_ZIP)
    args = parser.parse_args()
    settings = runtime.configure_tensorflow()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        config = PipelineConfig.from_dict(
            {
                "store_uri": f"file://{tmp / 'store'}",
                "dataset_checksum": None,
                "augment": False,
                "image_size": args.image_size,
            }
        )
        os.environ["CNN_CACHE_DIR"] = str(tmp / "cache")  # keep the worker cache inside the temp folder
        ctx = RunContext.create(config, "bench")
        ctx.scratch_root = tmp / "scratch"
        start = time.perf_counter()
        files = build_dataset(ctx, args.zip, args.images, args.image_size, tmp)
        info = data.load_dataset_info(ctx)
        print(
            f"{len(files)} EuroSAT images, {args.image_size} px, {settings['intra_op_threads']} threads; "
            f"shards built in {time.perf_counter() - start:.1f}s",
            flush=True,
        )
        print_table(
            "(a) input pipeline alone (median of 3 interleaved rounds)",
            pipeline_throughput(ctx, files, args.image_size, args.batch_size, rounds=3),
            "naive PIL loader",
        )
        print("\n(b) training the baseline model", flush=True)
        print_table(
            "(b) training throughput (steady-state epochs)",
            training_throughput(ctx, files, info, args.epochs),
            "in-memory tensors",
        )


if __name__ == "__main__":
    main()
