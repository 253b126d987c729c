"""What the error of an unusable dataset shows: the picture of its top folder levels (`tree`) and,
for a dataset without two class folders, what was found instead (`too_few_classes`: one class,
images without class folders, only archives, nothing usable) with the setting or move that fixes it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from cnn_tasks.ingest.dataset import Layout
from cnn_tasks.ingest.errors import DatasetError
from cnn_tasks.ingest.files import class_name, count_files, entries, readable, readable_path

TREE_ENTRIES = 8  # entries shown per folder in an error's tree
CLASS_FOLDERS_HINT = (
    "class folders are read at the top of the dataset, below wrapper folders, in train/val/test split "
    "folders, or in dataset_subdir"
)


def too_few_classes(layout: Layout, classes: list[Path]) -> DatasetError:
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
        f"{layout.rel(u)!r} ({count_files(u)} images) is read as unlabelled images, not a class (its name "
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
        count = f"{count_files(folder)} images" + (f" in {rel!r}" if rel != cls else "")
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


# Archive formats by their first bytes; dataset_url reads the first five (ingest.extract.extract_archive).
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


def tree(folder: Path, levels: int = 2, limit: int = TREE_ENTRIES, *, root: Path | None = None) -> str:
    """The top `levels` levels below `folder` as an indented tree, `limit` entries per folder.

    With `root` (the dataset's top), the first line names `folder` relative to it ('./' for the top
    itself), never by the name of the folder the dataset was fetched or extracted into (a cache
    folder the user never saw)."""
    lines = [f"  {readable_path(folder, root) if root is not None else readable(folder.name) or '.'}/"]

    def walk(node: Path, depth: int) -> None:
        dirs, files = entries(node)
        listed = dirs + files
        for entry in listed[:limit]:
            if entry.is_dir():
                sub_dirs, sub_files = entries(entry)
                lines.append(
                    f"{'  ' * (depth + 1)}{readable(entry.name)}/  ({len(sub_dirs)} folders, {len(sub_files)} files)"
                )
                if depth < levels:
                    walk(entry, depth + 1)
            else:
                lines.append(f"{'  ' * (depth + 1)}{readable(entry.name)}")
        if len(listed) > limit:
            lines.append(f"{'  ' * (depth + 1)}... and {len(listed) - limit} more")

    walk(folder, 1)
    return "\n".join(lines)
