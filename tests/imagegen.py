"""Tiny generated colour datasets for tests: each class has its own colour and stripe pattern,
so a small CNN can learn them in a few epochs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

PALETTE = [(200, 40, 40), (40, 170, 60), (40, 60, 200), (210, 190, 40), (150, 50, 170), (40, 180, 190)]


def class_image(class_index: int, rng: np.random.Generator, size: int = 24) -> Image.Image:
    """One RGB image of class `class_index`: a tinted background with class-specific stripes."""
    base = np.array(PALETTE[class_index % len(PALETTE)], dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    period = 3 + class_index % 4
    stripes = ((xx + yy * (class_index % 2)) // period) % 2 if class_index % 3 else (yy // period) % 2
    img = base * (0.6 + 0.4 * stripes[..., None]) + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def make_dataset(
    root: str | Path, classes: int = 3, per_class: int | list[int] = 20, size: int = 24, seed: int = 0, fmt: str = "png"
) -> Path:
    """Write `root/<class_name>/<class_name>_<i>.<fmt>` and return root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    counts = per_class if isinstance(per_class, list) else [per_class] * classes
    for c, n in enumerate(counts):
        folder = root / f"class_{chr(ord('a') + c)}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            class_image(c, rng, size).save(folder / f"{folder.name}_{i}.{fmt}")
    return root


def zip_folder(folder: str | Path, zip_path: str | Path, wrapper: str | None = None) -> Path:
    """Zip `folder`'s contents, optionally under one wrapper directory (like EuroSAT's `2750/`)."""
    folder, zip_path = Path(folder), Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                arc = path.relative_to(folder).as_posix()
                zf.write(path, f"{wrapper}/{arc}" if wrapper else arc)
    return zip_path
