"""Dataset layout: where the class folders are, which files belong to each class, which classes
to use. Library module shared by ingest (download) and predict."""

from __future__ import annotations

import os
import random
from pathlib import Path

from cnn_tasks.errors import PipelineError

IGNORED_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}


class DatasetError(PipelineError, ValueError):
    """The fetched data does not form a usable labelled dataset (layout, classes, counts)."""



def is_ignored(name: str) -> bool:
    """Hidden files, macOS/Windows metadata: never data, never listed as rejected."""
    return name.startswith(".") or name in IGNORED_NAMES


def visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_ignored(p.name))


def find_class_root(folder: Path, subdir: str | None = None) -> Path:
    """The folder holding one sub-folder per class.

    Accepts class folders at `folder`, below wrapper folders (a root with exactly one visible
    sub-folder, e.g. EuroSAT's `2750/`), and `subdir` (e.g. 'train_set') at the root or below
    one wrapper.
    """
    root = folder
    if subdir:
        candidates = [folder / subdir] + [d / subdir for d in visible_dirs(folder)]
        found = [c for c in candidates if c.is_dir()]
        if not found:
            seen = ", ".join(d.name for d in visible_dirs(folder)) or "nothing"
            raise DatasetError(f"dataset_subdir: {subdir!r} is not in the dataset (its top level holds: {seen})")
        root = found[0]
    for _ in range(3):  # descend through wrapper folders
        dirs = visible_dirs(root)
        if len(dirs) != 1:
            break
        root = dirs[0]
    if len(visible_dirs(root)) < 2:
        raise DatasetError(f"no class folders found in {folder}: expected one folder per class (at the "
                           "top, below one wrapper folder, or in dataset_subdir), with at least 2 classes")
    return root


def select_classes(available: list[str], wanted: tuple[str, ...] | None, limit: int | None) -> list[str]:
    """Apply config.classes (a subset; unknown names are an error) or config.classes_limit."""
    if wanted:
        unknown = [c for c in wanted if c not in available]
        if unknown:
            raise DatasetError(f"classes: {', '.join(map(repr, unknown))} not in the dataset; "
                               f"available classes: {', '.join(available)}")
        return sorted(wanted)
    return available[:limit] if limit else list(available)


def list_class_files(class_dir: Path) -> tuple[list[Path], int]:
    """All candidate files of one class (sorted; sub-folders included) and the number ignored."""
    files, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = [d for d in dirnames if not is_ignored(d)]
        for name in filenames:
            if is_ignored(name):
                ignored += 1
            else:
                files.append(os.path.join(dirpath, name))
    return [Path(f) for f in sorted(files)], ignored


def sample_files(files: list[Path], limit: int | None, seed: int, class_name: str) -> list[Path]:
    """A seeded random sample of at most `limit` files (sorted), taken before any decoding."""
    if not limit or len(files) <= limit:
        return files
    return sorted(random.Random(f"{seed}:{class_name}").sample(files, limit))
