"""A folder of images read exactly as training read its images, for the predict stage and the
visualise CLI: validated RGB (images.load_rgb, with the size limits of the model's training data,
rejected for the same reasons as at ingest), then data.decode_and_resize with the model's fit.
Hidden/system files are skipped as the dataset download skips them; the folder is streamed
BATCH images at a time. What a model was trained with comes from the meta.json beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnn_tasks import data, images
from cnn_tasks.errors import PipelineError
from cnn_tasks.ingest import files

BATCH = 64


class PredictError(PipelineError, RuntimeError):
    """The images to predict cannot be found."""


@dataclass(frozen=True)
class Preprocessing:
    """How an image is read for a model: the fit and the size limits its training data had."""

    fit: str = "squash"
    min_side: int = 1
    max_aspect_ratio: float | None = None

    @classmethod
    def from_config(cls, config, fit: str | None = None) -> Preprocessing:
        """This run's limits (as ingest applied them), with `fit` (default: the config's)."""
        return cls(fit or config.image_fit, config.min_image_side, config.max_aspect_ratio)

    @classmethod
    def from_meta(cls, meta: dict) -> Preprocessing:
        """What a model's meta.json records; older files without the fields mean squash, no limits."""
        config = meta.get("config") or {}
        return cls(data.image_fit(meta), int(config.get("min_image_side") or 1), config.get("max_aspect_ratio"))


def list_files(folder: Path) -> tuple[list[Path], int]:
    """(every candidate file under `folder`, sorted; the number of hidden/system files skipped).

    Hidden and system files and folders (`.DS_Store`, `__MACOSX/`, `Thumbs.db`, ...) are skipped
    exactly as the dataset download skips them (ingest.files.list_class_files / ingest.files.is_ignored):
    they are never images, so they are not listed as rejected either. Everything else is a
    candidate, named pipes and devices included: reading them rejects them (images.SPECIAL_FILE),
    so they are listed, never dropped. A missing folder is a PredictError naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise PredictError(
            f"the folder of images to predict, {files.readable(str(folder))}, {what}: point "
            "unlabelled_url (or the CLI's FOLDER) at a folder of images"
        )
    found, ignored = files.list_class_files(folder)
    return sorted(found), ignored


def read_image(path: Path, size: int, prep: Preprocessing = Preprocessing()) -> np.ndarray:
    """One file as float32 [S, S, 3] pixels in 0..255, exactly as training saw it: the validated
    RGB image (images.load_rgb, with the size limits of `prep`) encoded losslessly, then
    data.decode_and_resize with the fit of `prep`. Raises images.ImageRejected (or any decoding
    error) for a file that is not a usable image."""
    image = images.load_rgb(path, min_side=prep.min_side, max_aspect_ratio=prep.max_aspect_ratio)
    return np.asarray(data.decode_and_resize(images.encode_png(image), size, prep.fit), dtype=np.float32)


def _rejection(name: str, exc: Exception) -> dict:
    if isinstance(exc, images.ImageRejected):
        return {"image": name, "reason": str(exc)}  # "<reason>: <detail>", as ingest words it
    return {"image": name, "reason": str(exc) or type(exc).__name__}  # anything unreadable is listed too


def iter_image_batches(folder: Path, size: int, batch_size: int | None = None, prep: Preprocessing = Preprocessing()):
    """Yield (names, pixels [B,S,S,3], rejected [{"image", "reason"}]) for the files under `folder`
    (`list_files`), in file order, `batch_size` (default BATCH) usable images at a time: memory
    holds one batch whatever the folder size. `rejected` lists the unusable files met since the
    previous batch; the last yield may hold rejected files only (and no pixels)."""
    folder, batch_size = Path(folder), batch_size or BATCH
    names, pixels, rejected = [], [], []
    for path in list_files(folder)[0]:
        name = files.readable_path(path, folder)  # never surrogate escapes: the CSV is UTF-8 text
        try:
            pixels.append(read_image(path, size, prep))
            names.append(name)
        except Exception as exc:  # every unusable file is listed, never dropped
            rejected.append(_rejection(name, exc))
        if len(pixels) == batch_size:
            yield names, np.stack(pixels), rejected
            names, pixels, rejected = [], [], []
    if names or rejected:
        yield names, np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.float32), rejected


def read_images(
    folder: Path, size: int, prep: Preprocessing = Preprocessing()
) -> tuple[list[str], np.ndarray, list[dict]]:
    """(names, pixels [N,S,S,3], rejected) for every file under `folder`, all in memory at once:
    for small folders (the visualise CLI); prediction streams with `iter_image_batches`."""
    names, batches, rejected = [], [], []
    for batch_names, x, batch_rejected in iter_image_batches(folder, size, prep=prep):
        names += batch_names
        batches.append(x)
        rejected += batch_rejected
    array = np.concatenate(batches) if batches else np.zeros((0, size, size, 3), np.float32)
    return names, array, rejected


def meta_beside(model_path: Path) -> dict:
    """meta.json next to a model file, or {} when there is none. Read leniently, not through
    contracts.ModelMeta: a model trained by an older version (fewer fields) must still predict."""
    meta = Path(model_path).with_name("meta.json")
    return json.loads(meta.read_text()) if meta.is_file() else {}


def classes_beside(model_path: Path, n_classes: int) -> list[str]:
    """Class names from meta.json next to the model, else class_<i>."""
    classes = meta_beside(model_path).get("classes")
    if classes and len(classes) == n_classes:
        return list(classes)
    return [f"class_{i}" for i in range(n_classes)]


def preprocessing_beside(model_path: Path) -> Preprocessing:
    """The fit and size limits recorded in meta.json next to the model (squash, no limits without)."""
    return Preprocessing.from_meta(meta_beside(model_path))
