"""A dataset folder as `layout.detect_layout` found it: the `Layout` (the labelled `Group` of each
given split, the unlabelled folders, loose and metadata files, the class-name mapping, warnings)
and the record ingest.json keeps of it (`Layout.describe`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cnn_tasks.ingest.files import list_class_files, raw_rel, readable, readable_path, walk_visible


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

    def class_files(self, name: str, metadata: list[Path]) -> tuple[dict[str, list[Path]], int]:
        """Class `name`'s candidate files in each given split holding it ('' when the dataset ships no
        split) and the number of hidden files ignored; README/mapping files in its folders join `metadata`."""
        by_split, ignored = {}, 0
        for group in self.groups:
            if name in group.classes:
                files, hidden = list_class_files(group.classes[name], metadata)
                by_split[group.split] = files
                ignored += hidden
        return by_split, ignored

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
