"""Dataset layout: where the labelled class folders are, which given split (train/val/test) each
belongs to, which folders hold unlabelled images, and which files are not data at all.
Library module: the download stage detects here; what it finds is a `dataset.Layout`, the names
and file lists it reads are `files`, class-name mapping files `mapping`, its errors' pictures `explain`.

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

import os
import re
from pathlib import Path, PurePosixPath

from cnn_tasks import SPLITS
from cnn_tasks.ingest.dataset import Group, Layout
from cnn_tasks.ingest.errors import DatasetError
from cnn_tasks.ingest.explain import CLASS_FOLDERS_HINT, too_few_classes, tree
from cnn_tasks.ingest.files import (
    class_name,
    count_files,
    entries,
    is_mapping_name,
    is_metadata,
    readable,
    squash,
    walk_visible,
)
from cnn_tasks.ingest.mapping import read_mapping

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
_WNID = re.compile(r"^[a-z]\d{5,}$")  # WordNet ids as ImageNet names its class folders


# ================================================================== split names
def _role_of(word: str) -> str | None:
    match = _SPLIT_NAME.fullmatch(word)
    return next(role for role, found in match.groupdict().items() if found) if match else None


def split_role(name: str, loose: bool = False) -> str | None:
    """'train', 'val', 'test' or 'unlabelled' for a split folder's name (any case, '-', '_' or
    spaces), else None. `loose` also reads the first or last word, digits dropped ('seg_train',
    'train2017', 'cifar10-test'): used only when sibling folders agree (see `_roles`)."""
    squashed = squash(readable(name))
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
    if len(set(found)) >= 2 and any(r == "train" and entries(d)[0] for d, r in loose.items()):
        return loose
    return roles


# ================================================================== detection
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
        dirs, files = entries(node)
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
        dirs = entries(node)[0]
        if len(dirs) != 1:
            break
        node = dirs[0]
    seen = ", ".join(readable(d.name) for d in entries(root)[0]) or "nothing"
    raise DatasetError(
        f"dataset_subdir: {subdir!r} is not in the dataset (its top level holds: {seen})\n" + tree(root, root=root)
    )


def _inside(path: Path, root: Path) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


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
    dirs, files = entries(folder)
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
        raise too_few_classes(layout, classes)
    layout.groups.append(Group("", layout.base, _class_folders(layout, classes)))


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
    dirs, files = entries(folder)
    while len(dirs) == 1 and not files and split_role(dirs[0].name, loose=True) == role:  # train/train/<classes>
        folder = dirs[0]
        dirs, files = entries(folder)
    if role == UNLABELLED:
        layout.unlabelled.append(folder)
        return
    loose, metadata = [], []
    _sort_files(files, loose, metadata)
    layout.metadata += metadata
    if (
        len(dirs) == 1
        and not loose
        and squash(readable(dirs[0].name)) in _GENERIC_IMAGE_FOLDERS
        and not entries(dirs[0])[0]
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
    return any(not is_metadata(f.name) for f in entries(folder)[1])


def _folders_with_files(folder: Path) -> list[Path]:
    """Sub-folders of a class folder that hold files (at any depth), looking through a chain of
    single sub-folders when the class folder holds no files itself (cls/wrapper/<a, b>)."""
    dirs, files = entries(folder)
    while len(dirs) == 1 and not files:
        dirs, files = entries(dirs[0])
    return [d for d in dirs if _holds_files(d)]


def _name_classes(layout: Layout) -> None:
    """Readable names for numeric or WordNet-id class folders from a mapping file; case warnings."""
    folder_names = sorted({n for g in layout.groups for n in g.classes})
    if folder_names and all(n.isdigit() or _WNID.match(n) for n in folder_names):
        candidates = [m for m in _nearest_first(layout) if is_mapping_name(m.name)]
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
        f"{g.split or 'no split'}: {count_files(g.classes[name])} images" for g in layout.groups if name in g.classes
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
