"""Helpers shared by several test files (test files never import each other): crafted image
files, archives and folders, a tiny Keras model, and the real-data archive.
"""

from __future__ import annotations

import functools
import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_tasks import images
from tests.imagegen import class_image

EUROSAT_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "eurosat.zip"
CLASSES = ["alpha", "beta", "gamma"]


# ================================================================== image files
def noise(height: int = 16, width: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_raw(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None) -> bytes:
    """A hand-built PNG (Pillow cannot write 48-bit RGB); rows=None gives a header-only bomb."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    data = zlib.compress(rows if rows is not None else b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def png_rgb16(values: np.ndarray) -> bytes:
    """16-bit-per-channel RGB PNG from a (H, W, 3) uint16 array."""
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in values)
    return png_raw(values.shape[1], values.shape[0], 16, 2, rows)


def exif_rotated(fmt: str, pixels: np.ndarray, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(Image.fromarray(pixels), fmt, exif=exif.tobytes())


def truncated_jpeg() -> bytes:
    data = encoded(Image.fromarray(noise(64, 64)), "JPEG")
    return data[: len(data) // 2]


def corrupt_png() -> bytes:
    data = bytearray(encoded(Image.fromarray(noise(64, 64)), "PNG"))
    for i in range(200, 260):  # scramble the compressed pixel stream
        data[i] ^= 0xFF
    return bytes(data)


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(kind, offset, data length) of every chunk of a well-formed PNG, in file order."""
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunks.append((kind, pos, length))
        pos += 12 + length
    return chunks


def break_crc(data: bytes, kind: bytes) -> tuple[bytes, int]:
    """`data` with the CRC of its first `kind` chunk flipped (the chunk's bytes intact); the chunk offset."""
    _, pos, length = next(c for c in png_chunks(data) if c[0] == kind)
    damaged = bytearray(data)
    damaged[pos + 8 + length] ^= 0xFF
    return bytes(damaged), pos


def png_with_text(pixels: np.ndarray, after_pixels: bool = False) -> bytes:
    """An RGB PNG with a tEXt chunk before (default) or after the IDAT chunk."""
    plain = encoded(Image.fromarray(pixels), "PNG")
    chunks = png_chunks(plain)
    text = png_chunk(b"tEXt", b"Comment\0hello")
    cut = next(pos for kind, pos, _ in chunks if kind == (b"IEND" if after_pixels else b"IDAT"))
    return plain[:cut] + text + plain[cut:]


def png_rows(pixels: np.ndarray) -> bytes:
    """The filtered scanlines (filter type 0) of an 8-bit RGB image, ready for zlib."""
    return b"".join(b"\0" + row.tobytes() for row in pixels)


def png_without_adler(pixels: np.ndarray) -> bytes:
    """A PNG whose zlib stream lacks its Adler-32 trailer: Pillow decodes it, libpng refuses it."""
    header = struct.pack(">IIBBBBB", pixels.shape[1], pixels.shape[0], 8, 2, 0, 0, 0)
    stream = zlib.compress(png_rows(pixels))[:-4]
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")


GREY16 = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
RGBA_PIXEL = (255, 0, 0, 128)  # half-transparent red: over white -> (255, 127, 127)

# name -> (bytes, reason in rejected.csv)
BAD_FILES = {
    "corrupt.png": (corrupt_png, images.CORRUPT),
    "truncated.jpg": (truncated_jpeg, images.TRUNCATED),
    "notes.txt": (lambda: b"not an image, just text\n", images.NOT_AN_IMAGE),
    "empty.png": (lambda: b"", images.EMPTY),
    "bomb.png": (lambda: png_raw(20000, 20000, 8, 2, None), images.TOO_MANY_PIXELS),
}

# name -> (bytes, original mode recorded in the manifest); all accepted as RGB
CONVERTED_FILES = {
    "cmyk.jpg": (lambda: encoded(Image.new("CMYK", (16, 16), (10, 200, 30, 40)), "JPEG"), "CMYK"),
    "grey16.png": (lambda: encoded(Image.fromarray(GREY16), "PNG"), "I;16"),
    "rgb16.png": (lambda: png_rgb16(noise().astype(np.uint16) * 256 + 7), "RGB"),
    "palette.png": (lambda: encoded(Image.fromarray(noise(seed=3)).convert("P"), "PNG"), "P"),
    "rgba.png": (lambda: encoded(Image.new("RGBA", (8, 8), RGBA_PIXEL), "PNG"), "RGBA"),
    "grey.png": (lambda: encoded(Image.fromarray(noise(seed=4)[..., 0], "L"), "PNG"), "L"),
    "rotated.jpg": (lambda: exif_rotated("JPEG", noise(8, 16, seed=5)), "RGB"),
}


def write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


# ================================================================== archives and folders
_seed = iter(range(10**6))


def png(class_index: int = 0) -> bytes:
    """A small valid PNG, different every call."""
    buffer = io.BytesIO()
    class_image(class_index, np.random.default_rng(next(_seed)), size=12).save(buffer, "PNG")
    return buffer.getvalue()


def dataset(wrapper: str = "ds") -> dict[str, bytes]:
    """Two classes of two valid images each, under `wrapper/`."""
    return {f"{wrapper}/{cls}/{i}.png": png(c) for c, cls in enumerate(("cats", "dogs")) for i in range(2)}


def make_zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def make_tar(
    path: Path,
    members: dict[str, bytes],
    extra: list[tarfile.TarInfo] = (),
    mode: str = "w:gz",
    encoding: str = "utf-8",
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode, encoding=encoding, format=tarfile.GNU_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return path


def build(root: Path, files: dict[str, str | bytes | None]) -> Path:
    """Write `files` (relative path -> text, bytes, or None for a generated image) under root."""
    for i, (rel, content) in enumerate(sorted(files.items())):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            content = encoded(Image.fromarray(noise(12, 12, seed=i)), "PNG")
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


# ================================================================== models, predictions, figures
def class_images(n_per_class: int = 8, n_classes: int = 3, seed: int = 0, size: int = 16):
    """float32 images 0..255 [N, size, size, 3] and int labels, from tests.imagegen."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = np.stack([np.asarray(class_image(int(c), rng, size), dtype=np.float32) for c in y])
    return x, y.astype(np.int32)


@functools.cache
def tiny_model(trained: bool = True, n_classes: int = 3):
    """A tiny Sequential CNN in the project's shape (Input, Normalization 'standardize', conv, softmax)."""
    import keras

    keras.utils.set_random_seed(0)
    x, y = class_images(12, n_classes, seed=1)
    norm = keras.layers.Normalization(name="standardize", mean=x.mean(axis=(0, 1, 2)), variance=x.var(axis=(0, 1, 2)))
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            norm,
            keras.layers.Conv2D(8, 3, name="conv1"),
            keras.layers.Activation("relu", name="act1"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(n_classes, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    if trained:
        model.fit(x, y, epochs=40, batch_size=len(x), verbose=0)
    return model


def random_proba(n: int, n_classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(n_classes), size=n)


def store_figure_exists(store, key: str) -> bool:
    return store.exists(key) and store.get_bytes(key)[:8] == b"\x89PNG\r\n\x1a\n"


# ================================================================== real data
EUROSAT_CLASSES = [  # the class folders of ../shared/datasets/eurosat.zip
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
]


def eurosat_zip() -> Path:
    """The shared EuroSAT archive, or skip the test when this machine does not have it."""
    if not EUROSAT_ZIP.is_file():
        pytest.skip(f"real-data test: {EUROSAT_ZIP} is absent")
    return EUROSAT_ZIP


def write_single_model_ensemble(ctx, model_id: str, classes: list[str], macro_f1: float, accuracy: float) -> None:
    """ensemble.json as the ensemble stage records a run with one evaluated model, `model_id`."""
    from cnn_tasks.contracts import EnsembleSummary

    row = {"name": model_id, "kind": "model", "members": [model_id], "macro_f1": macro_f1, "accuracy": accuracy}
    record = {
        "metric": "macro_f1",
        "classes": classes,
        "members": [model_id],
        "skipped": [],
        "tie_break": "",
        "ensembles": {},
        "comparison": [row],
        "comparison_key": ctx.eval_key("ensemble", "comparison.csv"),
        "best": model_id,
        "best_kind": "model",
        "best_ensemble": None,
        "figures": [],
        "not_run": "fewer than 2 evaluated models",
    }
    EnsembleSummary.write(ctx.store, ctx.eval_key("ensemble", "ensemble.json"), record)


# ================================================================== the reports plugin
TRAINING_FAILURE = {
    "task": "train [baseline / balanced]",
    "error": "TrainingDivergedError",
    "message": "baseline__balanced diverged: the loss was NaN at epoch 3; lower the learning rate",
}


def plugin_run_summary(
    run_id: str,
    accuracy: float | None = None,
    macro_f1: float | None = None,
    promotion: dict | None = None,
    failures: list[dict] = (),
    classes: list[str] | None = None,
) -> dict:
    """The parts of a report/summary.json that the reports plugin reads: one model's test scores
    (none when `accuracy` is None, as in a run that failed before evaluating), the champion
    decision, the recorded failures and the dataset's classes."""
    test = None if accuracy is None else {"accuracy": accuracy, "macro_f1": macro_f1}
    return {
        "run_id": run_id,
        "config": {},
        "dataset": {"classes": list(classes or CLASSES)},
        "models": {"baseline__balanced": {"test": test}},
        "ensembles": None,
        "promotion": promotion,
        "results": {"stopped": None},
        "failures": list(failures),
    }


def write_plugin_run(root: Path, run_id: str, summary: dict) -> Path:
    """The run's report (summary.json and a small index.html) in the local store at `root`."""
    import json

    return build(
        root,
        {
            f"runs/{run_id}/report/summary.json": json.dumps(summary),
            f"runs/{run_id}/report/index.html": f"<html><body><h1>Report of {run_id}</h1></body></html>",
        },
    )


def dag_run_source(dag_id: str, run_id: str, conf: dict, state: str = "success") -> str:
    """Python that records a DAG run of `dag_id` with `conf` in the Airflow database that its
    environment names (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN): run it with `python -c`."""
    return (
        "import pendulum\n"
        "from airflow.models.dagrun import DagRun\n"
        "from airflow.utils.session import create_session\n"
        "with create_session() as session:\n"
        f"    session.add(DagRun(dag_id={dag_id!r}, run_id={run_id!r}, conf={conf!r}, run_type='manual',\n"
        f"                       state={state!r}, run_after=pendulum.now('UTC')))\n"
    )
