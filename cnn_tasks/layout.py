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

Anything else fails with a DatasetError that shows the top two levels of what was found and the
setting that resolves it. Class names are decoded safely (a non-UTF-8 folder name gets a readable
name) and NFC-normalised; names that collide after normalisation are an error, names that differ
only by case a warning.
"""

from __future__ import annotations

import json
import os
import random
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from cnn_tasks.errors import PipelineError

IGNORED_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
SPLIT_ROLES = ("train", "val", "test")  # labelled split roles, in this order everywhere
UNLABELLED = "unlabelled"
# Folder names (lower case, without '-', '_', '.', spaces) that name a split.
_SPLIT_NAMES = {
    "train": {"train", "training", "trainset", "trainingset", "traindata", "trainingdata", "trainimages",
              "trainingimages", "trainimgs"},
    "val": {"val", "valid", "validation", "valset", "validset", "validationset", "valdata", "validdata",
            "validationdata", "valimages", "validationimages", "dev", "devset", "development"},
    "test": {"test", "testing", "testset", "testingset", "testdata", "testingdata", "testimages", "testimgs",
             "eval", "evaluation", "evalset", "evaluationset", "holdout"},
    UNLABELLED: {"unlabelled", "unlabeled", "unlabelleddata", "unlabeleddata", "unlabelledimages",
                 "unlabeledimages", "unlabelledset", "unlabeledset", "predict", "pred", "prediction",
                 "predictions", "inference"},
}
# A split folder holding just one such folder of images holds unlabelled images (test/images/*.jpg).
_GENERIC_IMAGE_FOLDERS = {"images", "imgs", "img", "data", "pictures", "pics", "photos", "samples", "all"}
# Files that describe a dataset rather than belong to it.
_METADATA_STEMS = {"readme", "license", "licence", "copying", "citation", "notice", "authors", "changelog",
                   "manifest", "info", "metadata"}
_METADATA_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml",
                      ".xml", ".html", ".htm", ".pdf", ".py", ".ipynb", ".sh", ".mat", ".toml", ".cfg", ".ini",
                      ".names", ".log", ".doc", ".docx"}
# Mapping files (index or folder id -> readable class name), nearest one first.
_MAPPING_STEMS = {"mapping", "labels", "label", "classes", "class", "classnames", "labelmap", "labelsmap",
                  "classmap", "classmapping", "labelmapping", "classindex", "classindices", "synsets",
                  "synsetwords", "wnids", "words", "names", "locsynsetmapping", "idx2label", "index2label"}
_MAPPING_SUFFIXES = {"", ".txt", ".csv", ".tsv", ".json", ".names"}
_WNID = re.compile(r"^[a-z]\d{5,}$")  # WordNet ids as ImageNet names its class folders
_MAPPING_LINE = re.compile(r"^\s*([^\s:,;=]+)\s*(?:[:,;=\t]|\s)\s*(.*?)\s*$")
TREE_ENTRIES = 8  # entries shown per folder in an error's tree


class DatasetError(PipelineError, ValueError):
    """The fetched data does not form a usable labelled dataset (layout, classes, counts)."""


# ================================================================== names
def is_ignored(name: str) -> bool:
    """Hidden files, macOS/Windows metadata: never data, never listed as rejected."""
    return name.startswith(".") or name in IGNORED_NAMES


def is_metadata(name: str) -> bool:
    """A file lying beside the class folders that describes the dataset (README, mapping, CSV...)."""
    lower = name.lower()
    return lower.split(".")[0] in _METADATA_STEMS or Path(lower).suffix in _METADATA_SUFFIXES


def is_metadata_in_class(name: str) -> bool:
    """Inside a class folder only README/LICENSE-style and mapping files count as metadata; any
    other file there is a candidate image (a stray notes.txt is rejected as not_an_image)."""
    return name.lower().split(".")[0] in _METADATA_STEMS or _is_mapping_name(name)


def _is_mapping_name(name: str) -> bool:
    path = Path(name.lower())
    return _squash(path.stem) in _MAPPING_STEMS and path.suffix in _MAPPING_SUFFIXES


def _squash(name: str) -> str:
    return re.sub(r"[-_.\s]+", "", unicodedata.normalize("NFC", name).casefold())


def split_role(name: str, loose: bool = False) -> str | None:
    """'train', 'val', 'test' or 'unlabelled' for a split folder's name (any case, '-', '_' or
    spaces), else None. `loose` also reads the first or last word, digits dropped ('seg_train',
    'train2017', 'cifar10-test'): used only when sibling folders agree (see `_roles`)."""
    squashed = _squash(readable(name))
    role = next((role for role, names in _SPLIT_NAMES.items() if squashed in names), None)
    if role or not loose:
        return role
    words = [re.sub(r"\d+$", "", w) for w in re.split(r"[-_.\s]+", readable(name).casefold()) if w]
    for word in (words[-1:] + words[:1]) if len(words) > 1 else [re.sub(r"\d+$", "", squashed)]:
        role = next((role for role, names in _SPLIT_NAMES.items() if word in names), None)
        if role:
            return role
    return None


def _roles(dirs: list[Path]) -> dict[Path, str | None]:
    """Each folder's split role; loosely read names ('seg_train', 'seg_test') count only when two
    or more sibling folders read as different splits, one of them train."""
    roles = {d: split_role(d.name) for d in dirs}
    if any(r in SPLIT_ROLES for r in roles.values()):
        return roles
    loose = {d: split_role(d.name, loose=True) for d in dirs}
    found = [r for r in loose.values() if r]
    if "train" in found and len(set(found)) >= 2:
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
            "unlabelled": [{"folder": self.rel(p), "path": _raw_rel(p, self.root),
                            "files": sum(1 for _ in _visible_files(p))} for p in self.unlabelled],
            "loose_files": [self.source(p) for p in self.loose],
            "metadata_files": [self.rel(p) for p in self.metadata],
            "mapping_file": self.rel(self.mapping_file) if self.mapping_file else None,
            "mapping": {readable(k): v for k, v in self.mapping.items()},
            "warnings": list(self.warnings),
        }


def _raw_rel(path: Path, root: Path) -> str:
    """`path` relative to `root`, reversible: non-UTF-8 bytes become \\xNN escapes, which
    `unescape_path` turns back into the on-disk name."""
    return os.fsencode(path.relative_to(root).as_posix()).decode("utf-8", "backslashreplace")


def unescape_path(text: str) -> str:
    """The on-disk relative path recorded by `Layout.describe()` (inverse of `_raw_rel`)."""
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8"))
    return os.fsdecode(raw)


def detect_layout(folder: Path, *, subdir: str | None = None, predefined_split: str = "auto") -> Layout:
    """Find the labelled splits, class folders, unlabelled images and metadata under `folder`.

    `subdir` (config.dataset_subdir) names the folder to start from (found at the root or below
    wrappers). `predefined_split`: with 'ignore' the class folders of the given splits need not
    agree (every labelled image is pooled); with 'require' a dataset without a given train and
    test (or val) split is an error.
    """
    root = Path(folder)
    node = _find_subdir(root, subdir) if subdir else root
    loose, metadata, depth = [], [], 0
    while True:  # descend through wrapper folders
        dirs, files = _entries(node)
        _sort_files(files, loose, metadata)
        roles = _roles(dirs)
        if any(r in SPLIT_ROLES for r in roles.values()) or len(dirs) != 1 or roles[dirs[0]] or depth > 50:
            break
        node, depth = dirs[0], depth + 1
    layout = Layout(root, node, "", [], [], loose=loose, metadata=metadata)
    if any(r in SPLIT_ROLES for r in roles.values()):
        _split_layout(layout, dirs, roles)
    else:
        _flat_layout(layout, dirs, roles)
    _check_nested(layout)
    _name_classes(layout)
    _agree_across_splits(layout, predefined_split)
    _describe_kind(layout)
    _check_policy(layout, predefined_split)
    return layout


# ================================================================== detection steps
def _find_subdir(root: Path, subdir: str) -> Path:
    """config.dataset_subdir at the root or below wrapper folders."""
    node = root
    for _ in range(50):
        if (node / subdir).is_dir():
            return node / subdir
        dirs = visible_dirs(node)
        if len(dirs) != 1:
            break
        node = dirs[0]
    seen = ", ".join(readable(d.name) for d in visible_dirs(root)) or "nothing"
    raise DatasetError(f"dataset_subdir: {subdir!r} is not in the dataset (its top level holds: {seen})\n"
                       + tree(root))


def _entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """Visible sub-folders and files of `folder`, sorted."""
    dirs, files = [], []
    with os.scandir(folder) as entries:  # no stat per file: fast on folders of thousands of images
        for entry in entries:
            if not is_ignored(entry.name):
                (dirs if entry.is_dir() else files).append(Path(entry.path))
    return sorted(dirs), sorted(files)


def _sort_files(files: list[Path], loose: list[Path], metadata: list[Path]) -> None:
    for f in files:
        (metadata if is_metadata(f.name) else loose).append(f)


def _flat_layout(layout: Layout, dirs: list[Path], roles: dict) -> None:
    """Class folders at layout.base, plus any folder named like 'unlabelled'."""
    classes = [d for d in dirs if roles[d] is None]
    layout.unlabelled += [d for d in dirs if roles[d] == UNLABELLED]
    if len(classes) < 2:
        raise DatasetError(
            f"no class folders found in the dataset: expected one folder per class (at the top, below "
            f"wrapper folders, in train/val/test split folders, or in dataset_subdir), with at least 2 "
            f"classes; found {len(classes)} class folder(s) in {layout.rel(layout.base)!r}:\n" + tree(layout.base))
    layout.groups.append(Group("", layout.base, _class_folders(layout, classes)))


def _split_layout(layout: Layout, dirs: list[Path], roles: dict) -> None:
    """Split folders at layout.base: each holds class folders (labelled) or images (unlabelled)."""
    base = layout.base
    others = [d for d in dirs if roles[d] is None]
    with_data = [d for d in others if _holds_files(d)]
    if with_data:
        names = ", ".join(repr(readable(d.name)) for d in with_data[:5])
        raise DatasetError(
            f"ambiguous layout in {layout.rel(base)!r}: split folders "
            f"({', '.join(readable(d.name) for d in dirs if roles[d])}) lie beside other folders holding "
            f"files ({names}), so it is unclear which folders are classes. Set dataset_subdir to the folder "
            "whose sub-folders are the classes (e.g. the training split folder), or move the extra folders "
            "away:\n" + tree(base))
    layout.metadata += [d for d in others]  # folders holding no files at all (or only hidden ones)
    by_role: dict[str, list[Path]] = {}
    for d in dirs:
        if roles[d]:
            by_role.setdefault(roles[d], []).append(d)
    for role, folders in by_role.items():
        if len(folders) > 1 and role != UNLABELLED:
            raise DatasetError(
                f"ambiguous layout: {len(folders)} folders are a {role} split "
                f"({', '.join(repr(readable(f.name)) for f in folders)}); keep one, or set dataset_subdir to "
                "the one to use (its sub-folders are then the classes):\n" + tree(base))
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
    if (len(dirs) == 1 and not loose and _squash(dirs[0].name) in _GENERIC_IMAGE_FOLDERS
            and not _entries(dirs[0])[0]):  # test/images/*.jpg
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
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_ignored(d)]
        if any(not is_ignored(f) and not is_metadata(f) for f in filenames):
            return True
    return False


def _class_folders(layout: Layout, dirs: list[Path]) -> dict[str, Path]:
    """Readable NFC class name -> folder; two folders with one name after NFC are an error."""
    found: dict[str, Path] = {}
    for d in dirs:
        name = class_name(d.name)
        if not name:
            raise DatasetError(f"class folder {layout.rel(d)!r} has an empty name once spaces are stripped: "
                               "rename it")
        if name in found:
            raise DatasetError(
                f"class folders {ascii(found[name].name)} and {ascii(d.name)} in {layout.rel(d.parent)!r} "
                f"have the same name {name!r} once decoded and Unicode-normalised (NFC): they look identical "
                "but are two folders. Merge them into one folder or rename one of them")
        found[name] = d
    return found


def _check_nested(layout: Layout) -> None:
    """A class folder holding two or more folders of files is ambiguous (classes or sub-classes?)."""
    for group in layout.groups:
        for name, folder in group.classes.items():
            inner = _folders_with_files(folder)
            if len(inner) >= 2:
                raise DatasetError(
                    f"ambiguous layout: class folder {layout.rel(folder)!r} itself holds folders of images "
                    f"({', '.join(repr(readable(d.name)) for d in inner[:5])}), so it is unclear whether "
                    f"the classes are the folders of {layout.rel(group.folder)!r} or the folders inside them. "
                    "Set dataset_subdir to the folder whose sub-folders are the classes, or flatten the "
                    "class folders:\n" + tree(group.folder))


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
            why = (f"{', '.join(repr(layout.rel(c)) for c in candidates)} does not name every one"
                   if candidates else "no mapping file (mapping.txt, labels.txt, classes.txt, ...) names them")
            layout.warnings.append(f"the class folders are numbers or ids ({', '.join(folder_names[:4])}, ...) "
                                   f"and {why}: the folder names are used as class names")
        if layout.mapping:
            for group in layout.groups:
                group.classes = {layout.mapping[n]: p for n, p in group.classes.items()}
    names = sorted({n for g in layout.groups for n in g.classes})
    by_fold: dict[str, list[str]] = {}
    for n in names:
        by_fold.setdefault(n.casefold(), []).append(n)
    for same in by_fold.values():
        if len(same) > 1:
            layout.warnings.append(f"class names {', '.join(map(repr, same))} differ only by case: they are kept "
                                   "as separate classes; merge their folders if they are the same class")


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
        raw = path.read_bytes()[:5_000_000]
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
            return [(str(k), v if isinstance(v, str) else str((v or [""])[-1] if isinstance(v, list) else v))
                    for k, v in data.items()], []
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
        present = [s for s in SPLIT_ROLES if s in by_split and name in by_split[s]]
        missing = [s for s in SPLIT_ROLES if s in by_split and name not in by_split[s]]
        if not missing:
            continue
        folders = ", ".join(f"{s} ({layout.splits[s]!r})" for s in missing)
        if present == ["test"]:
            problems.append(f"class {name!r} is only in the test split ({layout.splits['test']!r}): no model "
                            "can learn it from the training split")
        else:
            problems.append(f"class {name!r} is missing from the {folders} split folder(s)")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise DatasetError(
            f"the labelled splits do not hold the same class folders: {shown}. Add the missing class "
            "folders, or set predefined_split=ignore to pool every labelled image and split it by the "
            "split ratios")


def _ordered(names: set[str]) -> list[str]:
    """Label order: numeric names by value, others alphabetically."""
    if names and all(n.isdigit() for n in names):
        return sorted(names, key=lambda n: (int(n), n))
    return sorted(names)


def _describe_kind(layout: Layout) -> None:
    given = [s for s in SPLIT_ROLES if s in layout.splits]
    if given:
        layout.kind = "/".join(given)
    else:
        layout.kind = "wrapper" if layout.base != layout.root else "flat"
    if layout.unlabelled:
        roles = [split_role(p.name) or split_role(p.parent.name) or UNLABELLED for p in layout.unlabelled]
        shown = ["images" if r == UNLABELLED else r for r in roles]
        layout.kind += " + unlabelled " + "/".join(dict.fromkeys(shown))


def _check_policy(layout: Layout, predefined_split: str) -> None:
    given = set(layout.splits)
    if not layout.groups:
        raise DatasetError("the dataset holds no labelled images: every split folder holds images without class "
                           "folders (found: " + layout.kind + "); put each class's images in a folder named "
                           "after the class:\n" + tree(layout.base))
    if predefined_split == "require" and not ("train" in given and given & {"val", "test"}):
        raise DatasetError(
            f"predefined_split=require: the dataset does not ship a train split and a test (or val) split "
            f"with class folders (found layout: {layout.kind}); set predefined_split=auto to carve the missing "
            "splits from the labelled images:\n" + tree(layout.base))
    if predefined_split != "ignore" and given and "train" not in given:
        raise DatasetError(
            f"the dataset has {' and '.join(sorted(given))} split folder(s) but no training split (found layout: "
            f"{layout.kind}); set predefined_split=ignore to pool every labelled image and split it by the split "
            "ratios:\n" + tree(layout.base))


# ================================================================== the error's picture
def tree(folder: Path, levels: int = 2, limit: int = TREE_ENTRIES) -> str:
    """The top `levels` levels below `folder` as an indented tree, `limit` entries per folder."""
    lines = [f"  {readable(folder.name) or '.'}/"]

    def walk(node: Path, depth: int) -> None:
        dirs, files = _entries(node)
        entries = dirs + files
        for entry in entries[:limit]:
            if entry.is_dir():
                sub_dirs, sub_files = _entries(entry)
                lines.append(f"{'  ' * (depth + 1)}{readable(entry.name)}/  ({len(sub_dirs)} folders, "
                             f"{len(sub_files)} files)")
                if depth < levels:
                    walk(entry, depth + 1)
            else:
                lines.append(f"{'  ' * (depth + 1)}{readable(entry.name)}")
        if len(entries) > limit:
            lines.append(f"{'  ' * (depth + 1)}... and {len(entries) - limit} more")

    walk(folder, 1)
    return "\n".join(lines)


# ================================================================== compatibility and file lists
def visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_ignored(p.name))


def _visible_files(folder: Path):
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_ignored(d)]
        yield from (f for f in filenames if not is_ignored(f))


def find_class_root(folder: Path, subdir: str | None = None) -> Path:
    """The folder holding the class folders of a dataset without given splits (detect_layout's
    base); for a split dataset, the training split's folder."""
    found = detect_layout(folder, subdir=subdir)
    return next((g.folder for g in found.groups if g.split in ("", "train")), found.base)


def select_classes(available: list[str], wanted: tuple[str, ...] | None, limit: int | None) -> list[str]:
    """Apply config.classes (a subset; unknown names are an error) or config.classes_limit."""
    if wanted:
        wanted = tuple(unicodedata.normalize("NFC", w) for w in wanted)
        unknown = [c for c in wanted if c not in available]
        if unknown:
            raise DatasetError(f"classes: {', '.join(map(repr, unknown))} not in the dataset; "
                               f"available classes: {', '.join(available)}")
        return [c for c in available if c in wanted]
    return available[:limit] if limit else list(available)


def list_class_files(class_dir: Path, metadata: list[Path] | None = None) -> tuple[list[Path], int]:
    """All candidate files of one class (sorted; sub-folders included) and the number ignored.

    With a `metadata` list, README/LICENSE/mapping files (`is_metadata_in_class`) are appended to
    it instead of being returned as candidates.
    """
    files, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = [d for d in dirnames if not is_ignored(d)]
        for name in filenames:
            if is_ignored(name):
                ignored += 1
            elif metadata is not None and is_metadata_in_class(name):
                metadata.append(Path(dirpath, name))
            else:
                files.append(os.path.join(dirpath, name))
    return [Path(f) for f in sorted(files)], ignored


def sample_files(files: list[Path], limit: int | None, seed: int, class_name: str) -> list[Path]:
    """A seeded random sample of at most `limit` files (sorted), taken before any decoding."""
    if not limit or len(files) <= limit:
        return files
    return sorted(random.Random(f"{seed}:{class_name}").sample(files, limit))
