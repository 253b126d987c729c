"""Dataset layout: where the labelled class folders are, which given split (train/val/test) each
belongs to, which folders hold unlabelled images, and which files are not data at all.
Library module shared by ingest (download) and predict.

`detect_layout(folder)` is the one function that reads a fetched dataset's folder structure.
It accepts, below any number of wrapper folders (a folder holding exactly one folder):

  flat              <classes>/<images>
  split folders     train|training|train_set|...|val|valid|dev|...|test|testing|eval|.../<classes>/<images>
  unlabelled split  a split folder holding images but no class folders (e.g. test_set/*.JPEG), or a
                    folder named unlabelled/unlabeled/predict/inference: predicted after training
  metadata          README*, LICENSE*, mapping.txt, labels.txt, *.csv, *.json, *.txt ... beside the
                    folders: never images; a mapping file names numeric (0, 1, ...) or WordNet-id
                    (n01440764) class folders

Anything else fails with a DatasetError that shows the top two levels of what was found (named
from the dataset's top, './', never by the folder it was fetched or extracted into) and the
setting that resolves it. Fewer than two classes says what was found instead: one class (its
name and images; with the unlabelled folders and loose files beside it), images without class
folders, only archives (archives inside the dataset are not extracted: extract it, or point
dataset_url at it), or nothing usable. Class names are decoded safely (a non-UTF-8 folder name gets a readable
name) and NFC-normalised; names that collide after normalisation are an error, names that differ
only by case a warning.
"""

from __future__ import annotations

import json
import os
import random
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cnn_tasks import SPLITS
from cnn_tasks.errors import PipelineError

IGNORED_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
UNLABELLED = "unlabelled"
# Folder names (lower case, without '-', '_', '.', spaces) that name a split: a role word, then
# optionally 'set', 'data', 'images' or 'imgs' (train_set, validation-data, testimages, unlabeled_set).
_SPLIT_WORDS = {
    "train": "train|training",
    "val": "val|valid|validation|dev|development",
    "test": "test|testing|eval|evaluation|holdout",
    UNLABELLED: "unlabell?ed|predict|pred|predictions?|inference",
}
_SPLIT_NAME = re.compile(
    "(?:" + "|".join(f"(?P<{role}>{words})" for role, words in _SPLIT_WORDS.items()) + ")(?:set|data|images|imgs)?"
)
# A split folder holding just one such folder of images holds unlabelled images (test/images/*.jpg).
# Keras' flow_from_directory convention puts unlabelled test images in test/unknown/ (one folder).
_GENERIC_IMAGE_FOLDERS = {
    "images",
    "imgs",
    "img",
    "data",
    "pictures",
    "pics",
    "photos",
    "samples",
    "all",
    "unknown",
    "unlabelled",
    "unlabeled",
    "nolabel",
    "unlabelledimages",
    "unlabeledimages",
}
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
_WNID = re.compile(r"^[a-z]\d{5,}$")  # WordNet ids as ImageNet names its class folders
_MAPPING_LINE = re.compile(r"^\s*([^\s:,;=]+)\s*(?:[:,;=\t]|\s)\s*(.*?)\s*$")
TREE_ENTRIES = 8  # entries shown per folder in an error's tree
MAX_MAPPING_BYTES = 5_000_000  # a mapping file is read up to this size (ImageNet's is 31 KB)


class DatasetError(PipelineError, ValueError):
    """The fetched data does not form a usable labelled dataset (layout, classes, counts)."""


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
    return _has_metadata_stem(name) or _is_mapping_name(name)


def _has_metadata_stem(name: str) -> bool:
    """README, LICENSE.md, info.txt...: a metadata stem with a metadata suffix or none."""
    lower = name.lower()
    return lower.split(".")[0] in _METADATA_STEMS and Path(lower).suffix in _METADATA_SUFFIXES | {""}


def _is_mapping_name(name: str) -> bool:
    path = Path(name.lower())
    return _squash(path.stem) in _MAPPING_STEMS and path.suffix in _MAPPING_SUFFIXES


def _squash(name: str) -> str:
    return re.sub(r"[-_.\s]+", "", unicodedata.normalize("NFC", name).casefold())


def _role_of(word: str) -> str | None:
    match = _SPLIT_NAME.fullmatch(word)
    return next(role for role, found in match.groupdict().items() if found) if match else None


def split_role(name: str, loose: bool = False) -> str | None:
    """'train', 'val', 'test' or 'unlabelled' for a split folder's name (any case, '-', '_' or
    spaces), else None. `loose` also reads the first or last word, digits dropped ('seg_train',
    'train2017', 'cifar10-test'): used only when sibling folders agree (see `_roles`)."""
    squashed = _squash(readable(name))
    role = _role_of(squashed)
    if role or not loose:
        return role
    words = [re.sub(r"\d+$", "", w) for w in re.split(r"[-_.\s]+", readable(name).casefold()) if w]
    for word in (words[-1:] + words[:1]) if len(words) > 1 else [re.sub(r"\d+$", "", squashed)]:
        role = _role_of(word)
        if role:
            return role
    return None


def _roles(dirs: list[Path]) -> dict[Path, str | None]:
    """Each folder's split role; loosely read names ('seg_train', 'seg_test') count only when two
    or more sibling folders read as different splits, one of them a train folder holding folders
    (so the classes train_station, test_tube stay classes)."""
    roles = {d: split_role(d.name) for d in dirs}
    if any(r in SPLITS for r in roles.values()):
        return roles
    loose = {d: split_role(d.name, loose=True) for d in dirs}
    found = [r for r in loose.values() if r]
    if len(set(found)) >= 2 and any(r == "train" and _entries(d)[0] for d, r in loose.items()):
        return loose
    return roles


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


# ================================================================== the layout
@dataclass
class Group:
    """Labelled images of one given split ('' when the dataset ships no split)."""

    split: str
    folder: Path  # the folder holding the class folders
    classes: dict[str, Path]  # readable class name -> its class folder


@dataclass
class Layout:
    """What `detect_layout` found in a dataset folder."""

    root: Path  # the fetched folder
    base: Path  # where the splits or class folders are (below wrappers and dataset_subdir)
    kind: str  # "flat", "wrapper", "train/test", "train/val/test", "train + unlabelled test", ...
    classes: list[str]  # readable class names, in label order
    groups: list[Group]
    unlabelled: list[Path] = field(default_factory=list)  # folders of unlabelled images
    loose: list[Path] = field(default_factory=list)  # files beside class or split folders
    metadata: list[Path] = field(default_factory=list)  # README, mapping and other non-image files
    mapping: dict[str, str] = field(default_factory=dict)  # class folder name -> readable class name
    mapping_file: Path | None = None
    warnings: list[str] = field(default_factory=list)
    archive: str | None = None  # the archive the root was extracted from, as the user gave it

    @property
    def splits(self) -> dict[str, str]:
        """Given labelled split -> its folder (readable, relative to the root); {} when none."""
        return {g.split: self.rel(g.folder) for g in self.groups if g.split}

    @property
    def wrapper(self) -> str:
        """The folders between the root and the layout ('' when none)."""
        return "" if self.base == self.root else self.rel(self.base)

    def rel(self, path: Path) -> str:
        return readable_path(path, self.root)

    def source(self, path: Path) -> str:
        """How manifest and rejected.csv name a file: relative to the layout base."""
        return readable_path(path, self.base)

    def describe(self) -> dict:
        """The layout as ingest.json records it (readable names only; `path` fields are the
        on-disk names, escaped only where they are not UTF-8)."""
        return {
            "kind": self.kind,
            "wrapper": self.wrapper,
            "splits": self.splits,
            "split_classes": {g.split or "": sorted(g.classes) for g in self.groups},
            "unlabelled": [
                {
                    "folder": self.rel(p),
                    "path": raw_rel(p, self.root),
                    "files": sum(len(names) for _, names, _ in walk_visible(p)),
                }
                for p in self.unlabelled
            ],
            "loose_files": [self.source(p) for p in self.loose],
            "metadata_files": [self.rel(p) for p in self.metadata],
            "mapping_file": self.rel(self.mapping_file) if self.mapping_file else None,
            "mapping": {readable(k): v for k, v in self.mapping.items()},
            "warnings": list(self.warnings),
        }


def raw_rel(path: Path, root: Path) -> str:
    """`path` relative to `root`, reversible: non-UTF-8 bytes become \\xNN escapes, which
    `unescape_path` turns back into the on-disk name."""
    return os.fsencode(path.relative_to(root).as_posix()).decode("utf-8", "backslashreplace")


def unescape_path(text: str) -> str:
    """The on-disk relative path recorded by `Layout.describe()` (inverse of `raw_rel`)."""
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8"))
    return os.fsdecode(raw)


def detect_layout(
    folder: Path, *, subdir: str | None = None, predefined_split: str = "auto", archive: str | None = None
) -> Layout:
    """Find the labelled splits, class folders, unlabelled images and metadata under `folder`.

    `subdir` (config.dataset_subdir) names the folder to start from (found at the root or below
    wrappers). `predefined_split`: with 'ignore' the class folders of the given splits need not
    agree (every labelled image is pooled) and split-named folders of images are plain classes;
    with 'require' a dataset without a given train and test (or val) split is an error. `archive`
    names the archive `folder` was extracted from, as the user gave it (for messages).
    """
    root = Path(folder)
    node = _find_subdir(root, subdir) if subdir else root
    loose, metadata, depth = [], [], 0
    while True:  # descend through wrapper folders (folders of metadata only do not count: Food-101's meta/)
        dirs, files = _entries(node)
        _sort_files(files, loose, metadata)
        dirs = _drop_metadata_folders(dirs, metadata)
        roles = _roles(dirs)
        if any(r in SPLITS for r in roles.values()) or len(dirs) != 1 or roles[dirs[0]] or depth > 50:
            break
        node, depth = dirs[0], depth + 1
    layout = Layout(root, node, "", [], [], loose=loose, metadata=metadata, archive=archive)
    _warn_unused_split_lists(layout)
    _split_names_as_classes(layout, dirs, roles, predefined_split)
    if any(r in SPLITS for r in roles.values()):
        _split_layout(layout, dirs, roles)
    else:
        _flat_layout(layout, dirs, roles)
    _check_nested(layout)
    _name_classes(layout)
    _agree_across_splits(layout, predefined_split)
    _check_two_classes(layout)
    _describe_kind(layout)
    _check_policy(layout, predefined_split)
    return layout


# ================================================================== detection steps
def _find_subdir(root: Path, subdir: str) -> Path:
    """config.dataset_subdir at the root or below wrapper folders; never outside the dataset."""
    parts = PurePosixPath(subdir.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts:
        raise DatasetError(
            f"dataset_subdir: {subdir!r} must name a folder inside the dataset, relative to its "
            "top and without '..' (e.g. 'train_set' or 'data/train')"
        )
    node = root
    for _ in range(50):
        if (node / subdir).is_dir():
            found = node / subdir
            if not _inside(found, root):
                raise DatasetError(
                    f"dataset_subdir: {subdir!r} leads outside the dataset (through a link); name a folder inside it"
                )
            return found
        dirs = _entries(node)[0]
        if len(dirs) != 1:
            break
        node = dirs[0]
    seen = ", ".join(readable(d.name) for d in _entries(root)[0]) or "nothing"
    raise DatasetError(
        f"dataset_subdir: {subdir!r} is not in the dataset (its top level holds: {seen})\n" + tree(root, root=root)
    )


def _inside(path: Path, root: Path) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _unreadable(folder, exc: OSError) -> DatasetError:
    return DatasetError(
        f"cannot read the dataset folder {readable(os.fspath(folder))!r}: "
        f"{exc.strerror or exc}; make it readable (e.g. chmod -R u+rX) or remove it"
    )


def _entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """Visible sub-folders (links to folders included) and files of `folder`, sorted."""
    dirs, files = [], []
    try:
        with os.scandir(folder) as entries:  # no stat per file: fast on folders of thousands of images
            for entry in entries:
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


def _sort_files(files: list[Path], loose: list[Path], metadata: list[Path]) -> None:
    for f in files:
        (metadata if is_metadata(f.name) else loose).append(f)


def _drop_metadata_folders(dirs: list[Path], metadata: list[Path]) -> list[Path]:
    """`dirs` without the folders holding only metadata files (docs/readme.md, Food-101's
    meta/train.txt), whose files join `metadata`; empty folders stay."""
    kept = []
    for d in dirs:
        files: list[Path] | None = []
        for path, names, _ in walk_visible(d):
            if any(not is_metadata(n) for n in names):  # stops at the first image candidate
                files = None
                break
            files += [path / n for n in names]
        if files:
            metadata += files
        else:
            kept.append(d)
    return kept


def _warn_unused_split_lists(layout: Layout) -> None:
    """Split lists shipped as files (Food-101's meta/train.txt) are not read: say so."""
    lists = [p for p in layout.metadata if split_role(p.stem) in SPLITS]
    if lists:
        layout.warnings.append(
            f"the split list files {', '.join(repr(layout.rel(p)) for p in lists[:4])} are not used: the given "
            "splits are read from folders only, so the splits are carved from the labelled images by the split "
            "setting; move the images into train/test folders to keep the dataset's own split"
        )


def _images_only(folder: Path) -> bool:
    """A folder holding image candidates directly and no sub-folders (a class folder's shape)."""
    dirs, files = _entries(folder)
    return not dirs and any(not is_metadata(f.name) for f in files)


def _split_names_as_classes(layout: Layout, dirs: list[Path], roles: dict, predefined_split: str) -> None:
    """Split-named folders holding images directly are classes (CIFAR-100's `train`, a flat
    {cat, dog, test}) when a sibling class folder holds images directly too, or with
    predefined_split=ignore. Their role is cleared, with a warning for exact split names."""
    named = [d for d in dirs if roles[d] in SPLITS]
    if not named or not all(_images_only(d) for d in named):
        return
    if predefined_split != "ignore" and not any(_images_only(d) for d in dirs if roles[d] is None):
        return
    for d in named:
        if split_role(d.name):  # loosely read names (train_station) are plain classes
            why = (
                "predefined_split=ignore"
                if predefined_split == "ignore"
                else "it holds images directly, as the class folders beside it do"
            )
            layout.warnings.append(
                f"folder {layout.rel(d)!r} is read as a class: it is named like a {roles[d]} split, but {why}"
            )
        roles[d] = None


def _flat_layout(layout: Layout, dirs: list[Path], roles: dict) -> None:
    """Class folders at layout.base, plus any folder named like 'unlabelled'."""
    classes = [d for d in dirs if roles[d] is None]
    for d in dirs:
        if roles[d] == UNLABELLED:
            layout.unlabelled.append(d)
            layout.warnings.append(
                f"folder {layout.rel(d)!r} beside the class folders is read as unlabelled images "
                "(its name says so): they are predicted, not trained on; rename the folder if "
                "it is a class"
            )
    if len(classes) < 2:
        raise _too_few_classes(layout, classes)
    layout.groups.append(Group("", layout.base, _class_folders(layout, classes)))


CLASS_FOLDERS_HINT = (
    "class folders are read at the top of the dataset, below wrapper folders, in train/val/test split "
    "folders, or in dataset_subdir"
)


def _too_few_classes(layout: Layout, classes: list[Path]) -> DatasetError:
    """The error for a dataset without two class folders, saying what was found instead: one class
    folder (perhaps beside unlabelled folders or loose files), one folder of images (one class),
    images directly at the top, only archives, or nothing usable."""
    base, root = layout.base, layout.root
    archives = {p: kind for p in layout.loose if (kind := archive_format(p))}
    if not classes and archives and len(archives) == len(layout.loose):
        return _only_archives(layout, archives)
    unlabelled = [p for p in layout.unlabelled if p.parent == base]
    direct = [p for p in layout.loose if p.parent == base]
    if classes:  # one class folder
        folder, shown = classes[0], base
    elif direct and base != root and not unlabelled:  # a folder of images, reached through wrappers: one class
        folder, shown = base, base.parent
    else:
        folder, shown = None, base
    outside = [p for p in layout.loose if folder is not base or p.parent != base]
    notes = [
        f"{layout.rel(u)!r} ({_count_files(u)} images) is read as unlabelled images, not a class (its name "
        "says so; rename it if it is a class)"
        for u in unlabelled
    ]
    if outside and (folder is not None or unlabelled):
        names = ", ".join(repr(layout.rel(p)) for p in outside[:3]) + (", ..." if len(outside) > 3 else "")
        packed = " (archives inside the dataset are not extracted)" if set(outside) & set(archives) else ""
        notes.append(
            f"{_files_phrase(len(outside))} lie outside any class folder ({names}){packed}: move them into "
            "their class folders"
        )
    note = "; " + "; ".join(notes) if notes else ""
    picture = ":\n" + tree(shown, root=root)
    if folder is not None:
        cls, rel = class_name(folder.name), layout.rel(folder)
        count = f"{_count_files(folder)} images" + (f" in {rel!r}" if rel != cls else "")
        return DatasetError(
            f"the dataset holds one class, {cls!r} ({count}), and at least two are needed{note}. Add a folder "
            f"of images for each other class beside {rel!r}, named after the class ({CLASS_FOLDERS_HINT})" + picture
        )
    if unlabelled:
        return DatasetError(
            f"the dataset holds no class folders{note}. Put each class's images in a folder named after the "
            f"class, at least two classes ({CLASS_FOLDERS_HINT})" + picture
        )
    if direct:
        return DatasetError(
            f"the dataset holds {_files_phrase(len(direct))} directly in its top folder and no class folders: "
            "put each class's images in a folder named after the class, at least two classes (e.g. cat/1.jpg "
            f"and dog/1.jpg), and point DATASET_URL (the dataset_url param) at the folder or archive holding "
            "those folders" + picture
        )
    metadata = ", ".join(repr(layout.rel(p)) for p in layout.metadata[:3])
    return DatasetError(
        "the dataset holds no images and no class folders"
        + (f" (only {metadata}{', ...' if len(layout.metadata) > 3 else ''})" if metadata else "")
        + f": check that DATASET_URL (the dataset_url param) names the dataset; {CLASS_FOLDERS_HINT}, at least "
        "two classes" + picture
    )


def _files_phrase(n: int) -> str:
    return f"{n} file{'s' if n != 1 else ''}"


def _count_files(folder: Path) -> int:
    """The image candidates below `folder` (what would be read as its class's images)."""
    return len(list_class_files(folder, [])[0])


def _only_archives(layout: Layout, archives: dict[Path, str]) -> DatasetError:
    """The error for a dataset whose only files are archives (e.g. an archive inside the archive given)."""
    names = [layout.rel(p) for p in archives]
    unreadable = sorted({kind for kind in archives.values() if kind not in READABLE_ARCHIVES})
    cannot = f" ({' and '.join(unreadable)} archives cannot be read here)" if unreadable else ""
    if len(names) == 1:
        (name,), (kind,) = names, archives.values()
        what = f"{'another archive' if layout.archive else 'an archive'}, {name!r} (a {kind} archive),"
        todo = f"Extract {name!r}{cannot} and point DATASET_URL (the dataset_url param) at the folder it holds, or "
        todo += (
            "re-pack it as zip or tar.gz"
            if unreadable
            else f"point DATASET_URL at {name!r} itself (e.g. DATASET_URL=/path/to/{PurePosixPath(name).name})"
        )
    else:
        shown = ", ".join(repr(n) for n in names[:4]) + (", ..." if len(names) > 4 else "")
        what = f"{'other archives' if layout.archive else 'archives'} ({shown})"
        todo = (
            f"Extract them{cannot} into one folder, one sub-folder per class, and point DATASET_URL "
            "(the dataset_url param) at it"
        )
    holder = f"{layout.archive!r} holds only" if layout.archive else "the dataset holds only"
    return DatasetError(
        f"{holder} {what} and no class folders: archives inside the dataset are not extracted. {todo}:\n"
        + tree(layout.base, root=layout.root)
    )


# Archive formats by their first bytes; dataset_url reads the first five (sources.extract_archive).
_ARCHIVE_MAGIC = [
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
    (b"\x1f\x8b", "tar.gz (gzip)"),
    (b"BZh", "tar.bz2 (bzip2)"),
    (b"\xfd7zXZ\x00", "tar.xz (xz)"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!\x1a\x07", "rar"),
]
READABLE_ARCHIVES = {"zip", "tar", "tar.gz (gzip)", "tar.bz2 (bzip2)", "tar.xz (xz)"}


def archive_format(path: Path) -> str | None:
    """The archive format of a file from its first bytes ('zip', 'tar', '7z', ...), or None."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never open a named pipe or device: it may block
            return None
        with open(path, "rb") as src:
            head = src.read(512)
    except OSError:
        return None
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return next((kind for magic, kind in _ARCHIVE_MAGIC if head.startswith(magic)), None)


def _split_layout(layout: Layout, dirs: list[Path], roles: dict) -> None:
    """Split folders at layout.base: each holds class folders (labelled) or images (unlabelled)."""
    base = layout.base
    others = [d for d in dirs if roles[d] is None]
    with_data = [d for d in others if _holds_files(d)]
    if with_data:
        names = ", ".join(repr(readable(d.name)) for d in with_data[:5])
        train = next((d for d in dirs if roles[d] == "train"), None)
        example = f" (e.g. dataset_subdir={readable(train.name)!r})" if train else ""
        raise DatasetError(
            f"ambiguous layout in {layout.rel(base)!r}: split folders "
            f"({', '.join(readable(d.name) for d in dirs if roles[d])}) lie beside other folders holding "
            f"files ({names}), so it is unclear which folders are classes. Set dataset_subdir to the folder "
            f"whose sub-folders are the classes{example}, or move the extra folders away:\n"
            + tree(base, root=layout.root)
        )
    layout.metadata += list(others)  # folders holding no files at all (or only hidden ones)
    by_role: dict[str, list[Path]] = {}
    for d in dirs:
        if roles[d]:
            by_role.setdefault(roles[d], []).append(d)
    for role, folders in by_role.items():
        if len(folders) > 1 and role != UNLABELLED:
            raise DatasetError(
                f"ambiguous layout: {len(folders)} folders are a {role} split "
                f"({', '.join(repr(readable(f.name)) for f in folders)}); keep one, or set dataset_subdir to "
                "the one to use (its sub-folders are then the classes):\n" + tree(base, root=layout.root)
            )
    for d in dirs:
        if roles[d]:
            _read_split_folder(layout, roles[d], d)


def _read_split_folder(layout: Layout, role: str, folder: Path) -> None:
    dirs, files = _entries(folder)
    while len(dirs) == 1 and not files and split_role(dirs[0].name, loose=True) == role:  # train/train/<classes>
        folder = dirs[0]
        dirs, files = _entries(folder)
    if role == UNLABELLED:
        layout.unlabelled.append(folder)
        return
    loose, metadata = [], []
    _sort_files(files, loose, metadata)
    layout.metadata += metadata
    if (
        len(dirs) == 1
        and not loose
        and _squash(readable(dirs[0].name)) in _GENERIC_IMAGE_FOLDERS
        and not _entries(dirs[0])[0]
    ):  # test/images/*.jpg, Keras' test/unknown/*.jpg
        layout.unlabelled.append(dirs[0])
    elif dirs:
        layout.loose += loose
        layout.groups.append(Group(role, folder, _class_folders(layout, dirs)))
    elif loose:
        layout.unlabelled.append(folder)
    else:
        layout.warnings.append(f"the {role} split folder {layout.rel(folder)!r} is empty: ignored")


def _holds_files(folder: Path) -> bool:
    """Whether any visible, non-metadata file lies anywhere below `folder`."""
    return any(not is_metadata(f) for _, names, _ in walk_visible(folder) for f in names)


def _class_folders(layout: Layout, dirs: list[Path]) -> dict[str, Path]:
    """Readable NFC class name -> folder; two folders with one name after NFC are an error."""
    found: dict[str, Path] = {}
    for d in dirs:
        name = class_name(d.name)
        if not name:
            raise DatasetError(f"class folder {layout.rel(d)!r} has an empty name once spaces are stripped: rename it")
        if name in found:
            raise DatasetError(
                f"class folders {ascii(found[name].name)} and {ascii(d.name)} in {layout.rel(d.parent)!r} "
                f"have the same name {name!r} once decoded and Unicode-normalised (NFC): they look identical "
                "but are two folders. Merge them into one folder or rename one of them"
            )
        found[name] = d
    return found


def _check_nested(layout: Layout) -> None:
    """Class folders that all hold two or more folders of images and no images of their own are
    ambiguous (classes or groups of classes?). When only some do (cat/2019, cat/2020 beside
    dog/*.jpg) every class folder is read with its sub-folders."""
    for group in layout.groups:
        inner = {folder: _folders_with_files(folder) for folder in group.classes.values()}
        if inner and all(len(found) >= 2 and not _holds_files_directly(folder) for folder, found in inner.items()):
            folder, found = next(iter(inner.items()))
            raise DatasetError(
                f"ambiguous layout: every class folder holds folders of images, e.g. class folder "
                f"{layout.rel(folder)!r} itself holds folders of images "
                f"({', '.join(repr(readable(d.name)) for d in found[:5])}), so it is unclear whether "
                f"the classes are the folders of {layout.rel(group.folder)!r} or the folders inside them. "
                f"Set dataset_subdir to the folder whose sub-folders are the classes (e.g. dataset_subdir="
                f"{layout.rel(folder)!r}), or flatten the class folders:\n" + tree(group.folder, root=layout.root)
            )


def _holds_files_directly(folder: Path) -> bool:
    return any(not is_metadata(f.name) for f in _entries(folder)[1])


def _folders_with_files(folder: Path) -> list[Path]:
    """Sub-folders of a class folder that hold files (at any depth), looking through a chain of
    single sub-folders when the class folder holds no files itself (cls/wrapper/<a, b>)."""
    dirs, files = _entries(folder)
    while len(dirs) == 1 and not files:
        dirs, files = _entries(dirs[0])
    return [d for d in dirs if _holds_files(d)]


def _name_classes(layout: Layout) -> None:
    """Readable names for numeric or WordNet-id class folders from a mapping file; case warnings."""
    folder_names = sorted({n for g in layout.groups for n in g.classes})
    if folder_names and all(n.isdigit() or _WNID.match(n) for n in folder_names):
        candidates = [m for m in _nearest_first(layout) if _is_mapping_name(m.name)]
        for path in candidates:
            mapping = read_mapping(path, folder_names)
            if mapping:
                layout.mapping, layout.mapping_file = mapping, path
                break
        else:
            why = (
                f"{', '.join(repr(layout.rel(c)) for c in candidates)} does not name every one"
                if candidates
                else "no mapping file (mapping.txt, labels.txt, classes.txt, ...) names them"
            )
            layout.warnings.append(
                f"the class folders are numbers or ids ({', '.join(folder_names[:4])}, ...) "
                f"and {why}: the folder names are used as class names"
            )
        if layout.mapping:
            for group in layout.groups:
                group.classes = {layout.mapping[n]: p for n, p in group.classes.items()}
    names = sorted({n for g in layout.groups for n in g.classes})
    by_fold: dict[str, list[str]] = {}
    for n in names:
        by_fold.setdefault(n.casefold(), []).append(n)
    for same in by_fold.values():
        if len(same) > 1:
            layout.warnings.append(
                f"class names {', '.join(map(repr, same))} differ only by case: they are kept "
                "as separate classes; merge their folders if they are the same class"
            )


def _nearest_first(layout: Layout) -> list[Path]:
    """Metadata files, those nearest the class folders first."""
    return sorted(layout.metadata, key=lambda p: (-len(p.parts), str(p)))


def read_mapping(path: Path, folder_names: list[str]) -> dict[str, str] | None:
    """folder name -> readable class name from a mapping file, or None unless it names every folder.

    Formats: '0 name', '0: name', '0,name', '0<TAB>name', 'n01440764 tench, Tinca tinca' (the
    first comma-separated part is the name), a JSON object {"0": "name"} or list, or one name per
    line in index order (folders 0..N-1, or 1..N when there is no 0).
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_MAPPING_BYTES)
        text = raw.decode("utf-8-sig") if _is_utf8(raw) else raw.decode("cp1252", "replace")
    except OSError:
        return None
    pairs, lines = _parse_mapping(text, path.suffix.lower())
    wanted = set(folder_names)
    mapping = {}
    for key, name in pairs:
        for folder in _matching_folders(key, wanted):
            mapping.setdefault(folder, name)
    if set(mapping) != wanted and all(n.isdigit() for n in folder_names) and lines:
        indices = {n: int(n) for n in folder_names}
        offset = 0 if 0 in indices.values() else 1
        if max(indices.values()) - offset < len(lines):
            mapping = {n: lines[i - offset] for n, i in indices.items()}
    names = [_clean_name(v) for v in mapping.values()]
    if set(mapping) != wanted or not all(names) or len(set(names)) != len(names):
        return None
    return {k: _clean_name(v) for k, v in mapping.items()}


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _parse_mapping(text: str, suffix: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(key, name) pairs and plain lines of a mapping file."""
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError:
            return [], []
        if isinstance(data, dict):
            return [
                (str(k), v if isinstance(v, str) else str((v or [""])[-1] if isinstance(v, list) else v))
                for k, v in data.items()
            ], []
        if isinstance(data, list):
            return [], [str(v) for v in data]
        return [], []
    pairs, lines = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        lines.append(line)
        match = _MAPPING_LINE.match(line)
        if match and match.group(2):
            pairs.append((match.group(1), match.group(2)))
    return pairs, lines


def _matching_folders(key: str, wanted: set[str]) -> list[str]:
    key = key.strip("\"'")
    if key in wanted:
        return [key]
    if key.isdigit():  # '7' names folder '007'
        return [w for w in wanted if w.isdigit() and int(w) == int(key)]
    return []


def _clean_name(text: str) -> str:
    """The readable class name of a mapping entry: first comma-separated part, no quotes or slashes."""
    name = text.split(",")[0].strip().strip("\"'").strip()
    name = re.sub(r"\s+", " ", name.replace("/", "-").replace("\\", "-"))
    return unicodedata.normalize("NFC", name)


def _agree_across_splits(layout: Layout, predefined_split: str) -> None:
    """Every labelled split must hold the same classes (unless they are pooled: 'ignore')."""
    by_split = {g.split: set(g.classes) for g in layout.groups}
    layout.classes = _ordered(set().union(*by_split.values()))
    if len(by_split) < 2 or predefined_split == "ignore":
        return
    problems = []
    for name in layout.classes:
        present = [s for s in SPLITS if s in by_split and name in by_split[s]]
        missing = [s for s in SPLITS if s in by_split and name not in by_split[s]]
        if not missing:
            continue
        folders = ", ".join(f"{s} ({layout.splits[s]!r})" for s in missing)
        if present == ["test"]:
            problems.append(
                f"class {name!r} is only in the test split ({layout.splits['test']!r}): no model "
                "can learn it from the training split"
            )
        else:
            problems.append(f"class {name!r} is missing from the {folders} split folder(s)")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DatasetError(
            f"the labelled splits do not hold the same class folders: {shown}. Add the missing class "
            "folders, or set predefined_split=ignore to pool every labelled image and split it by the "
            "split ratios"
        )


def _check_two_classes(layout: Layout) -> None:
    """Split folders holding class folders of a single class in all: say which, and its images."""
    if len(layout.classes) != 1:
        return
    name = layout.classes[0]
    counts = ", ".join(
        f"{g.split or 'no split'}: {_count_files(g.classes[name])} images" for g in layout.groups if name in g.classes
    )
    folders = ", ".join(repr(layout.rel(g.folder)) for g in layout.groups)
    raise DatasetError(
        f"the dataset holds one class, {name!r} ({counts}), and at least two are needed. Add a folder of images "
        f"for each other class beside {name!r} in every split folder ({folders}), named after the class "
        f"({CLASS_FOLDERS_HINT}):\n" + tree(layout.base, root=layout.root)
    )


def _ordered(names: set[str]) -> list[str]:
    """Label order: numeric names by value, others alphabetically."""
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def _describe_kind(layout: Layout) -> None:
    given = [s for s in SPLITS if s in layout.splits]
    if given:
        layout.kind = "/".join(given)
    else:
        layout.kind = "wrapper" if layout.base != layout.root else "flat"
    if layout.unlabelled:
        roles = [
            next((r for r in (split_role(p.name), split_role(p.parent.name)) if r in SPLITS), UNLABELLED)
            for p in layout.unlabelled
        ]
        shown = ["images" if r == UNLABELLED else r for r in roles]
        layout.kind += " + unlabelled " + "/".join(dict.fromkeys(shown))


def _check_policy(layout: Layout, predefined_split: str) -> None:
    given = set(layout.splits)
    if not layout.groups:
        folders = [p for p in layout.unlabelled if p.parent == layout.base]
        hint = (
            " (or set predefined_split=ignore to read each of these folders as a class)"
            if len(folders) >= 2 and all(map(_images_only, folders))
            else ""
        )
        raise DatasetError(
            "the dataset holds no labelled images: every split folder holds images without class "
            "folders (found: " + layout.kind + "); put each class's images in a folder named "
            "after the class" + hint + ":\n" + tree(layout.base, root=layout.root)
        )
    if predefined_split == "require" and not ("train" in given and given & {"val", "test"}):
        raise DatasetError(
            f"predefined_split=require: the dataset does not ship a train split and a test (or val) split "
            f"with class folders (found layout: {layout.kind}); set predefined_split=auto to carve the missing "
            "splits from the labelled images:\n" + tree(layout.base, root=layout.root)
        )
    if predefined_split != "ignore" and given and "train" not in given:
        raise DatasetError(
            f"the dataset has {' and '.join(sorted(given))} split folder(s) but no training split (found layout: "
            f"{layout.kind}); set predefined_split=ignore to pool every labelled image and split it by the split "
            "ratios:\n" + tree(layout.base, root=layout.root)
        )


# ================================================================== the error's picture
def tree(folder: Path, levels: int = 2, limit: int = TREE_ENTRIES, *, root: Path | None = None) -> str:
    """The top `levels` levels below `folder` as an indented tree, `limit` entries per folder.

    With `root` (the dataset's top), the first line names `folder` relative to it ('./' for the top
    itself), never by the name of the folder the dataset was fetched or extracted into (a cache
    folder the user never saw)."""
    lines = [f"  {readable_path(folder, root) if root is not None else readable(folder.name) or '.'}/"]

    def walk(node: Path, depth: int) -> None:
        dirs, files = _entries(node)
        entries = dirs + files
        for entry in entries[:limit]:
            if entry.is_dir():
                sub_dirs, sub_files = _entries(entry)
                lines.append(
                    f"{'  ' * (depth + 1)}{readable(entry.name)}/  ({len(sub_dirs)} folders, {len(sub_files)} files)"
                )
                if depth < levels:
                    walk(entry, depth + 1)
            else:
                lines.append(f"{'  ' * (depth + 1)}{readable(entry.name)}")
        if len(entries) > limit:
            lines.append(f"{'  ' * (depth + 1)}... and {len(entries) - limit} more")

    walk(folder, 1)
    return "\n".join(lines)


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
