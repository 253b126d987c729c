"""A dataset's files as a person reads them: which names are data (hidden and system files are
ignored; README, mapping and other metadata files are not images), readable and reversible names
(a non-UTF-8 name is decoded as Windows-1252/Latin-1 for people, escaped for the record), folder
listings that never skip an unreadable folder silently, and each class's file list, sampled.
Library module shared by dataset layout detection, download and predict.
"""

from __future__ import annotations

import os
import random
import re
import unicodedata
from pathlib import Path

from cnn_tasks.ingest.errors import DatasetError

IGNORED_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
# Files that describe a dataset rather than belong to it.
_METADATA_STEMS = {
    "readme",
    "license",
    "licence",
    "copying",
    "citation",
    "notice",
    "authors",
    "changelog",
    "manifest",
    "info",
    "metadata",
}
_METADATA_SUFFIXES = {
    ".txt",
    ".md",
    ".markdown",
    ".rst",
    ".csv",
    ".tsv",
    ".json",
    ".jsonl",
    ".yaml",
    ".yml",
    ".xml",
    ".html",
    ".htm",
    ".pdf",
    ".py",
    ".ipynb",
    ".sh",
    ".mat",
    ".toml",
    ".cfg",
    ".ini",
    ".names",
    ".log",
    ".doc",
    ".docx",
}
# Mapping files (index or folder id -> readable class name), nearest one first.
_MAPPING_STEMS = {
    "mapping",
    "labels",
    "label",
    "classes",
    "class",
    "classnames",
    "labelmap",
    "labelsmap",
    "classmap",
    "classmapping",
    "labelmapping",
    "classindex",
    "classindices",
    "synsets",
    "synsetwords",
    "wnids",
    "words",
    "names",
    "locsynsetmapping",
    "idx2label",
    "index2label",
}
_MAPPING_SUFFIXES = {"", ".txt", ".csv", ".tsv", ".json", ".names"}


# ================================================================== names
def is_ignored(name: str) -> bool:
    """Hidden files, macOS/Windows metadata: never data, never listed as rejected."""
    return name.startswith(".") or name in IGNORED_NAMES


def is_metadata(name: str) -> bool:
    """A file lying beside the class folders that describes the dataset (README, mapping, CSV...)."""
    return _has_metadata_stem(name) or Path(name.lower()).suffix in _METADATA_SUFFIXES


def is_metadata_in_class(name: str) -> bool:
    """Inside a class folder only README/LICENSE-style and mapping files count as metadata; any
    other file there is a candidate image (a stray notes.txt is rejected as not_an_image, and
    info.jpg or license.png are images)."""
    return _has_metadata_stem(name) or is_mapping_name(name)


def _has_metadata_stem(name: str) -> bool:
    """README, LICENSE.md, info.txt...: a metadata stem with a metadata suffix or none."""
    lower = name.lower()
    return lower.split(".")[0] in _METADATA_STEMS and Path(lower).suffix in _METADATA_SUFFIXES | {""}


def is_mapping_name(name: str) -> bool:
    """A file name that may hold a class-name mapping (mapping.txt, labels.csv, classes.json...)."""
    path = Path(name.lower())
    return squash(path.stem) in _MAPPING_STEMS and path.suffix in _MAPPING_SUFFIXES


def squash(name: str) -> str:
    """`name` folded for matching: NFC, case-folded, without '-', '_', '.' or spaces."""
    return re.sub(r"[-_.\s]+", "", unicodedata.normalize("NFC", name).casefold())


def readable(name: str) -> str:
    """A file name as a person reads it. `os.walk` gives a non-UTF-8 name as a str with
    surrogate escapes (which cannot be written to UTF-8 text); its bytes are decoded as UTF-8,
    else Windows-1252, else Latin-1 (which decodes anything)."""
    raw = os.fsencode(name)
    for encoding in ("utf-8", "cp1252", "latin-1"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte string")


def readable_path(path: Path, start: Path) -> str:
    """`path` relative to `start` as a readable POSIX path ('.' for `start` itself)."""
    rel = path.relative_to(start)
    return "/".join(readable(part) for part in rel.parts) or "."


def class_name(folder_name: str) -> str:
    """A class folder's readable, NFC-normalised name."""
    return unicodedata.normalize("NFC", readable(folder_name)).strip()


def raw_rel(path: Path, root: Path) -> str:
    """`path` relative to `root`, reversible: non-UTF-8 bytes become \\xNN escapes, which
    `unescape_path` turns back into the on-disk name."""
    return os.fsencode(path.relative_to(root).as_posix()).decode("utf-8", "backslashreplace")


def unescape_path(text: str) -> str:
    """The on-disk relative path recorded by `Layout.describe()` (inverse of `raw_rel`)."""
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8"))
    return os.fsdecode(raw)


# ================================================================== listings
def _unreadable(folder, exc: OSError) -> DatasetError:
    return DatasetError(
        f"cannot read the dataset folder {readable(os.fspath(folder))!r}: "
        f"{exc.strerror or exc}; make it readable (e.g. chmod -R u+rX) or remove it"
    )


def entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """Visible sub-folders (links to folders included) and files of `folder`, sorted."""
    dirs, files = [], []
    try:
        with os.scandir(folder) as found:  # no stat per file: fast on folders of thousands of images
            for entry in found:
                if not is_ignored(entry.name):
                    (dirs if entry.is_dir() else files).append(Path(entry.path))
    except OSError as exc:
        raise _unreadable(folder, exc) from exc
    return sorted(dirs), sorted(files)


def walk_visible(folder: Path):
    """(folder, its visible file names, how many hidden/system files it holds) for `folder` and
    every visible folder below it, in sorted order. Links to folders are followed, each real
    folder once (a link back into the walk adds nothing); a folder that cannot be read is a
    DatasetError naming it, never a silent gap."""
    seen = {os.path.realpath(folder)}

    def fail(exc: OSError) -> None:
        raise _unreadable(exc.filename or folder, exc) from exc

    for dirpath, dirnames, filenames in os.walk(folder, onerror=fail, followlinks=True):
        kept = []
        for name in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, name))
            if not is_ignored(name) and real not in seen:
                seen.add(real)
                kept.append(name)
        dirnames[:] = kept
        visible = sorted(f for f in filenames if not is_ignored(f))
        yield Path(dirpath), visible, len(filenames) - len(visible)


# ================================================================== file lists
def select_classes(available: list[str], wanted: tuple[str, ...] | None, limit: int | None) -> list[str]:
    """Apply config.classes (a subset; unknown names are an error) or config.classes_limit."""
    if wanted:
        wanted = tuple(unicodedata.normalize("NFC", w) for w in wanted)
        unknown = [c for c in wanted if c not in available]
        if unknown:
            raise DatasetError(
                f"classes: {', '.join(map(repr, unknown))} not in the dataset; "
                f"available classes: {', '.join(available)}"
            )
        return [c for c in available if c in wanted]
    return available[:limit] if limit else list(available)


def list_class_files(class_dir: Path, metadata: list[Path] | None = None) -> tuple[list[Path], int]:
    """All candidate files of one class (sorted; sub-folders included) and the number ignored.

    With a `metadata` list, README/LICENSE/mapping files (`is_metadata_in_class`) are appended to
    it instead of being returned as candidates.
    """
    files, ignored = [], 0
    for folder, names, hidden in walk_visible(class_dir):
        ignored += hidden
        for name in names:
            if metadata is not None and is_metadata_in_class(name):
                metadata.append(folder / name)
            else:
                files.append(folder / name)
    return sorted(files, key=os.fspath), ignored


def sample_files(files: list[Path], limit: int | None, seed: int, class_name: str) -> list[Path]:
    """A seeded random sample of at most `limit` files (sorted), taken before any decoding."""
    if not limit or len(files) <= limit:
        return files
    return sorted(random.Random(f"{seed}:{class_name}").sample(files, limit))


def sample_per_split(by_split: dict[str, list[Path]], limit: int | None, seed: int, name: str) -> dict[str, list[Path]]:
    """At most `limit` files of one class, each given split keeping its share (at least one file)."""
    total = sum(map(len, by_split.values()))
    if not limit or total <= limit:
        return by_split
    if list(by_split) == [""]:
        return {"": sample_files(by_split[""], limit, seed, name)}
    quota = {s: min(len(f), max(1, round(limit * len(f) / total))) for s, f in by_split.items()}
    while sum(quota.values()) > limit:
        quota[max(quota, key=lambda s: quota[s])] -= 1
    while sum(quota.values()) < limit:
        quota[max(quota, key=lambda s: len(by_split[s]) - quota[s])] += 1
    return {s: sample_files(f, quota[s], seed, f"{name}:{s}") for s, f in by_split.items()}


def count_files(folder: Path) -> int:
    """The image candidates below `folder` (what would be read as its class's images)."""
    return len(list_class_files(folder, [])[0])
