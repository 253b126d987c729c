"""layout.detect_layout on datasets as people ship them (one table of layouts built on disk), and
end-to-end ingest cases of the fuzz corpus for layouts (tests/fuzzing.py)."""

from __future__ import annotations

import os
import unicodedata
import zipfile
from pathlib import Path

import pytest

from cnn_tasks import download
from cnn_tasks.ingest import layout, mapping
from cnn_tasks.ingest.errors import DatasetError
from cnn_tasks.ingest.files import list_class_files, unescape_path
from tests.fuzzing import assert_kept, ingest
from tests.helpers import build

LATIN1_CAFE = os.fsdecode(b"caf\xe9")  # how os.listdir shows a Latin-1 folder name on a UTF-8 system
NFC, NFD = unicodedata.normalize("NFC", "Café"), unicodedata.normalize("NFD", "Café")
MAPPING = "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\nn01484850 great white shark\n"


def images(*folders: str, n: int = 2, ext: str = "png") -> dict[str, None]:
    return {f"{folder}/img{i}.{ext}": None for folder in folders for i in range(n)}


# ================================================================== the table
# name -> (files, detect_layout kwargs, expected): expected holds kind, classes, splits (role ->
# folder), unlabelled folders, loose files and a warning fragment, or "error" words.
CASES = {
    "flat": (images("a", "b", "c"), {}, dict(kind="flat", classes=["a", "b", "c"], splits={}, unlabelled=[], loose=[])),
    "one wrapper (EuroSAT's 2750/)": (
        images("2750/Forest", "2750/River"),
        {},
        dict(kind="wrapper", classes=["Forest", "River"], splits={}, unlabelled=[], wrapper="2750"),
    ),
    "two wrappers": (
        images("EuroSAT/2750/a", "EuroSAT/2750/b"),
        {},
        dict(kind="wrapper", classes=["a", "b"], wrapper="EuroSAT/2750"),
    ),
    "ImageNet10 style": (
        {
            "ImageNet10/README.md": "# ImageNet10\n",
            "ImageNet10/mapping.txt": MAPPING,
            **images("ImageNet10/train_set/n01440764", "ImageNet10/train_set/n01443537", ext="JPEG"),
            **images("ImageNet10/test_set", n=3, ext="JPEG"),
        },
        {},
        dict(
            kind="train + unlabelled test",
            classes=["goldfish", "tench"],
            splits={"train": "ImageNet10/train_set"},
            unlabelled=["ImageNet10/test_set"],
            loose=[],
            metadata=["ImageNet10/README.md", "ImageNet10/mapping.txt"],
            mapping_file="ImageNet10/mapping.txt",
        ),
    ),
    "Imagenette style train/val": (
        {
            "imagenette2/noisy_imagenette.csv": "path,label\n",
            **images(
                "imagenette2/train/n01440764",
                "imagenette2/train/n02102040",
                "imagenette2/val/n01440764",
                "imagenette2/val/n02102040",
            ),
        },
        {},
        dict(
            kind="train/val",
            classes=["n01440764", "n02102040"],
            splits={"train": "imagenette2/train", "val": "imagenette2/val"},
            unlabelled=[],
            warning="numbers or ids",
        ),
    ),
    "train/val/test": (
        images(*(f"{s}/{c}" for s in ("train", "valid", "test") for c in "ab")),
        {},
        dict(kind="train/val/test", classes=["a", "b"], splits={"train": "train", "val": "valid", "test": "test"}),
    ),
    "train + unlabelled test": (
        {**images("train/cat", "train/dog"), **images("test", n=3)},
        {},
        dict(kind="train + unlabelled test", classes=["cat", "dog"], splits={"train": "train"}, unlabelled=["test"]),
    ),
    "numeric classes, one name per line": (
        {"classes.txt": "cat\ndog\nbird\n", **images("0", "1", "2")},
        {},
        dict(kind="flat", classes=["bird", "cat", "dog"], mapping={"0": "cat", "1": "dog", "2": "bird"}),
    ),
    "numeric classes, '0: name' and '0,name'": (
        {"ds/labels.txt": "0: cat\n1: dog\n", "ds/other.csv": "0,x\n1,y\n", **images("ds/0", "ds/1")},
        {},
        dict(kind="wrapper", classes=["cat", "dog"], mapping_file="ds/labels.txt"),
    ),
    "numeric classes, JSON index": (
        {"class_index.json": '{"0": ["n01", "tench"], "1": ["n02", "goldfish"]}', **images("0", "1")},
        {},
        dict(classes=["goldfish", "tench"]),
    ),
    "numeric classes without a mapping": (
        images(*map(str, range(11))),
        {},
        dict(classes=[str(i) for i in range(11)], warning="no mapping file"),
    ),
    "loose images beside class folders": (
        {"ds/notes.md": "x", "ds/stray.png": None, "ds/stray2.jpg": None, **images("ds/a", "ds/b")},
        {},
        dict(kind="wrapper", classes=["a", "b"], loose=["stray.png", "stray2.jpg"], metadata=["ds/notes.md"]),
    ),
    "mixed-case split names": (
        images("TRAIN/a", "TRAIN/b", "Val/a", "Val/b"),
        {},
        dict(kind="train/val", splits={"train": "TRAIN", "val": "Val"}),
    ),
    "dev split": (
        images("data/Train-Set/a", "data/Train-Set/b", "data/dev/a", "data/dev/b"),
        {},
        dict(kind="train/val", splits={"train": "data/Train-Set", "val": "data/dev"}),
    ),
    "wrapper + split folders + README": (
        {
            "data/README.txt": "x",
            "data/LICENSE": "x",
            **images("data/training/a", "data/training/b", "data/testing/a", "data/testing/b"),
        },
        {},
        dict(
            kind="train/test",
            splits={"train": "data/training", "test": "data/testing"},
            metadata=["data/LICENSE", "data/README.txt"],
            loose=[],
        ),
    ),
    "train/train wrapper inside a split": (
        images("train/train/a", "train/train/b", "test/a", "test/b"),
        {},
        dict(kind="train/test", splits={"train": "train/train", "test": "test"}),
    ),
    "unlabelled test/images folder": (
        {**images("train/a", "train/b"), **images("test/images")},
        {},
        dict(kind="train + unlabelled test", unlabelled=["test/images"]),
    ),
    "unlabelled folder beside class folders": (
        {**images("a", "b"), **images("unlabeled", n=3)},
        {},
        dict(
            kind="flat + unlabelled images",
            unlabelled=["unlabeled"],
            classes=["a", "b"],
            warning="folder 'unlabeled' beside the class folders is read as unlabelled images",
        ),
    ),
    "a class named like a split in a flat dataset": (
        images("cat", "dog", "test"),
        {},
        dict(kind="flat", classes=["cat", "dog", "test"], splits={}, warning="folder 'test' is read as a class"),
    ),
    "CIFAR-100's class 'train' below a wrapper": (
        images("cifar/apple", "cifar/train", "cifar/val", "cifar/dev"),
        {},
        dict(
            kind="wrapper", classes=["apple", "dev", "train", "val"], warning="folder 'cifar/train' is read as a class"
        ),
    ),
    "classes that merely start like splits": (
        images("train_station", "test_tube", "beaker"),
        {},
        dict(kind="flat", classes=["beaker", "test_tube", "train_station"]),
    ),
    "classes that start like splits, alone": (
        images("train_station", "test_tube"),
        {},
        dict(kind="flat", classes=["test_tube", "train_station"]),
    ),
    "a class named 'prediction' is unlabelled, with a warning": (
        images("cat", "dog", "prediction"),
        {},
        dict(classes=["cat", "dog"], unlabelled=["prediction"], warning="folder 'prediction' beside the class"),
    ),
    "ignore: split-named folders of images are classes": (
        images("train", "test"),
        {"predefined_split": "ignore"},
        dict(kind="flat", classes=["test", "train"], warning="predefined_split=ignore"),
    ),
    "Keras test/unknown is unlabelled": (
        {**images("train/a", "train/b"), **images("test/unknown")},
        {},
        dict(kind="train + unlabelled test", unlabelled=["test/unknown"]),
    ),
    "test/unlabeled is unlabelled": (
        {**images("train/a", "train/b"), **images("test/unlabeled")},
        {},
        dict(kind="train + unlabelled test", unlabelled=["test/unlabeled"]),
    ),
    "a folder of docs is metadata": (
        {"docs/readme.md": "x", "docs/notes.txt": "x", **images("a", "b")},
        {},
        dict(kind="flat", classes=["a", "b"], metadata=["docs/notes.txt", "docs/readme.md"]),
    ),
    "Food-101: images/ beside meta/": (
        {
            "food-101/meta/train.txt": "a/img0\n",
            "food-101/meta/test.txt": "b/img0\n",
            "food-101/meta/classes.txt": "a\nb\n",
            "food-101/README.txt": "x",
            **images("food-101/images/a", "food-101/images/b"),
        },
        {},
        dict(
            kind="wrapper",
            classes=["a", "b"],
            wrapper="food-101/images",
            warning="'food-101/meta/test.txt', 'food-101/meta/train.txt' are not used",
        ),
    ),
    "one class holding year folders is read recursively": (
        images("cat/2019", "cat/2020", "dog"),
        {},
        dict(kind="flat", classes=["cat", "dog"]),
    ),
    "images named like metadata beside classes are loose": (
        {"ds/license.jpg": None, **images("ds/a", "ds/b")},
        {},
        dict(loose=["license.jpg"], metadata=[]),
    ),
    "__MACOSX and hidden noise": (
        {
            **images("ds/a", "ds/b"),
            "__MACOSX/ds/a/._img0.png": "x",
            ".DS_Store": "x",
            "ds/.hidden/x.png": None,
            "ds/a/.DS_Store": "x",
        },
        {},
        dict(kind="wrapper", classes=["a", "b"], loose=[], wrapper="ds"),
    ),
    "dataset_subdir picks one split": (
        images("ds/train_set/a", "ds/train_set/b", "ds/test_set/a"),
        {"subdir": "train_set"},
        dict(classes=["a", "b"], splits={}),
    ),
    "case-only class names warn": (
        images("Cat", "cat", "dog"),
        {},
        dict(classes=["Cat", "cat", "dog"], warning="'Cat', 'cat' differ only by case"),
    ),
    "non-UTF-8 folder name": (
        {f"{LATIN1_CAFE}/x.png": None, "tea/x.png": None},
        {},
        dict(kind="flat", classes=["café", "tea"]),
    ),
    "ignore pools classes the splits disagree on": (
        images("train/a", "train/b", "val/a"),
        {"predefined_split": "ignore"},
        dict(kind="train/val", classes=["a", "b"]),
    ),
    # errors: the words a user needs
    "nested class folders": (
        images("animals/cat", "animals/dog", "vehicles/car", "vehicles/bus"),
        {},
        dict(error=["ambiguous layout", "'animals'", "dataset_subdir", "    animals/  (2 folders"]),
    ),
    "class missing from val": (
        images("train/a", "train/b", "train/c", "val/a", "val/b"),
        {},
        dict(error=["class 'c' is missing from the val ('val')", "predefined_split=ignore"]),
    ),
    "class only in test": (
        images("train/a", "train/b", "test/a", "test/b", "test/z"),
        {},
        dict(error=["class 'z' is only in the test split ('test')"]),
    ),
    "NFC collision": (
        {f"{NFC}/x.png": None, f"{NFD}/y.png": None, "tea/x.png": None},
        {},
        dict(error=["same name 'Café'", "Unicode-normalised (NFC)", "'Caf\\xe9'", "'Cafe\\u0301'"]),
    ),
    "encodings collide": ({f"{LATIN1_CAFE}/x.png": None, "café/y.png": None}, {}, dict(error=["same name 'café'"])),
    "two train splits": (
        images("train/a", "train/b", "training/a", "training/b"),
        {},
        dict(error=["2 folders are a train split ('train', 'training')", "dataset_subdir"]),
    ),
    "split folders beside class folders": (
        images("train/a", "train/b", "extra"),
        {},
        dict(error=["ambiguous layout", "('extra')", "dataset_subdir", "    train/  (2 folders, 0 files)"]),
    ),
    "no training split": (
        images("val/a", "val/b", "test/a", "test/b"),
        {},
        dict(error=["no training split", "predefined_split=ignore"]),
    ),
    "require without a given split": (
        images("a", "b"),
        {"predefined_split": "require"},
        dict(error=["predefined_split=require", "found layout: flat"]),
    ),
    "only unlabelled images": (
        images("train", "test"),
        {},
        dict(error=["holds no labelled images", "    train/  (0 folders, 2 files)"]),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_detect_layout(tmp_path, name):
    files, kwargs, expected = CASES[name]
    root = build(tmp_path / "input", files)
    if "error" in expected:
        with pytest.raises(DatasetError) as info:
            layout.detect_layout(root, **kwargs)
        for words in expected["error"]:
            assert words in str(info.value), str(info.value)
        return
    found = layout.detect_layout(root, **kwargs)
    described = found.describe()
    checks = {
        "kind": found.kind,
        "classes": found.classes,
        "splits": found.splits,
        "unlabelled": [u["folder"] for u in described["unlabelled"]],
        "loose": described["loose_files"],
        "wrapper": found.wrapper,
        "mapping": found.mapping,
        "mapping_file": described["mapping_file"],
        "metadata": described["metadata_files"],
    }
    for key, value in expected.items():
        if key == "warning":
            assert any(value in w for w in found.warnings), found.warnings
        else:
            assert checks[key] == value, (key, checks[key])
    if "warning" not in expected:
        assert found.warnings == []


def test_there_are_at_least_fifteen_layouts():
    assert len(CASES) >= 15
    assert sum("error" in e for _, _, e in CASES.values()) >= 5


def test_error_tree_is_truncated_for_large_folders(tmp_path):
    root = build(tmp_path / "input", images(*(f"top{i:02d}/sub{j}" for i in range(12) for j in range(3)), n=1))
    with pytest.raises(DatasetError) as info:
        layout.detect_layout(root)
    text = str(info.value)
    assert "... and 4 more" in text
    assert "top11" not in text
    assert len(text.splitlines()) < 60


def test_mapping_that_misses_a_folder_is_not_used(tmp_path):
    root = build(tmp_path / "input", {"mapping.txt": "0 cat\n", **images("0", "1")})
    found = layout.detect_layout(root)
    assert found.classes == ["0", "1"]
    assert any("does not name every one" in w for w in found.warnings)


def test_unlabelled_path_round_trips_a_non_utf8_name(tmp_path):
    root = build(
        tmp_path / "input",
        {**images(f"{LATIN1_CAFE}/train/a", f"{LATIN1_CAFE}/train/b"), **images(f"{LATIN1_CAFE}/test")},
    )
    entry = layout.detect_layout(root).describe()["unlabelled"][0]
    assert entry == {"folder": "café/test", "path": "caf\\xe9/test", "files": 2}
    assert (root / unescape_path(entry["path"])).is_dir()


# ================================================================== fewer than two classes
HINT = "class folders are read at the top of the dataset, below wrapper folders"
# name -> (files, the message's first line, what its tree shows)
TOO_FEW_CLASSES = {
    "one class folder": (
        images("alpha", n=12),
        "the dataset holds one class, 'alpha' (12 images), and at least two are needed. Add a folder of images "
        f"for each other class beside 'alpha', named after the class ({HINT}",
        ["  ./", "    alpha/  (0 folders, 12 files)"],
    ),
    "one class below a wrapper": (
        images("wrap/alpha", n=3),
        "the dataset holds one class, 'alpha' (3 images in 'wrap/alpha'), and at least two are needed. Add a "
        "folder of images for each other class beside 'wrap/alpha'",
        ["  wrap/", "    alpha/  (0 folders, 3 files)"],
    ),
    "one class beside an unlabelled folder": (
        {**images("alpha", n=4), **images("unlabelled", n=5)},
        "the dataset holds one class, 'alpha' (4 images), and at least two are needed; 'unlabelled' (5 images) "
        "is read as unlabelled images, not a class (its name says so; rename it if it is a class). Add a folder "
        "of images for each other class beside 'alpha'",
        ["  ./", "    alpha/  (0 folders, 4 files)", "    unlabelled/  (0 folders, 5 files)"],
    ),
    "one class beside loose images": (
        {**images("alpha", n=4), "x.png": None, "y.png": None},
        "the dataset holds one class, 'alpha' (4 images), and at least two are needed; 2 files lie outside any "
        "class folder ('x.png', 'y.png'): move them into their class folders. Add a folder of images for each "
        "other class beside 'alpha'",
        ["  ./", "    x.png"],
    ),
    "images and no folders": (
        images(".", n=3),
        "the dataset holds 3 files directly in its top folder and no class folders: put each class's images in "
        "a folder named after the class, at least two classes (e.g. cat/1.jpg and dog/1.jpg), and point "
        "DATASET_URL (the dataset_url param) at the folder or archive holding those folders",
        ["  ./", "    img0.png"],
    ),
    "only an unlabelled folder": (
        images("unlabelled", n=5),
        "the dataset holds no class folders; 'unlabelled' (5 images) is read as unlabelled images, not a class "
        "(its name says so; rename it if it is a class). Put each class's images in a folder named after the "
        "class, at least two classes",
        ["  ./", "    unlabelled/  (0 folders, 5 files)"],
    ),
    "no images at all": (
        {"README.md": "# about"},
        "the dataset holds no images and no class folders (only 'README.md'): check that DATASET_URL (the "
        f"dataset_url param) names the dataset; {HINT}",
        ["  ./", "    README.md"],
    ),
    "one class in every split folder": (
        {**images("train/alpha", n=4), **images("test/alpha", n=2)},
        "the dataset holds one class, 'alpha' (test: 2 images, train: 4 images), and at least two are needed. "
        "Add a folder of images for each other class beside 'alpha' in every split folder ('test', 'train')",
        ["  ./", "    train/  (1 folders, 0 files)", "      alpha/  (0 folders, 4 files)"],
    ),
}


@pytest.mark.parametrize("name", sorted(TOO_FEW_CLASSES))
def test_fewer_than_two_classes_says_what_was_found_and_what_to_do(tmp_path, name):
    files, words, picture = TOO_FEW_CLASSES[name]
    root = build(tmp_path / "cache_entry_1234", files)  # the folder's own name is never shown
    with pytest.raises(DatasetError) as info:
        layout.detect_layout(root)
    message = str(info.value)
    assert words in message, message
    assert "0 class folder(s)" not in message
    assert "cache_entry_1234" not in message
    lines = message.splitlines()
    for line in picture:
        assert line in lines, message
    assert lines[1] == picture[0], message  # the tree starts at the folder shown, named relative to the top


def test_one_class_fails_ingest_naming_it_and_its_images(tmp_path, monkeypatch):
    root = build(tmp_path / "input" / "ds", images("alpha", n=12))
    out = ingest(tmp_path, root, monkeypatch)
    assert isinstance(out.error, DatasetError), out.error
    assert out.message.startswith("the dataset holds one class, 'alpha' (12 images), and at least two are needed")
    assert out.store_keys == []


def test_the_error_tree_names_folders_relative_to_the_dataset_top(tmp_path):
    root = build(tmp_path / "d41d8cd98f00b204e9800998", images("train/a", "train/b", "extra"))
    with pytest.raises(DatasetError) as info:
        layout.detect_layout(root)
    assert "\n  ./\n    extra/  (0 folders, 2 files)" in str(info.value)
    assert "d41d8cd98f00b204e9800998" not in str(info.value)


# ================================================================== end to end (fuzz corpus)
def _zip(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return archive


def test_fuzz_imagenet10_archive(tmp_path, monkeypatch):
    files = {
        "ImageNet10/README.md": "# ImageNet10",
        "ImageNet10/mapping.txt": MAPPING,
        **images("ImageNet10/train_set/n01440764", "ImageNet10/train_set/n01443537", n=6, ext="png"),
        **images("ImageNet10/test_set", n=3),
    }
    folder = build(tmp_path / "input" / "tree", files)
    archive = _zip(folder, tmp_path / "input" / "ImageNet10.zip")
    out = ingest(tmp_path, archive, monkeypatch)
    assert_kept(out, [f"train_set/n01440764/img{i}.png" for i in range(6)])
    assert out.rejected == {}  # README.md and mapping.txt are not images
    assert {r["class"] for r in out.manifest.values()} == {"tench", "goldfish"}
    assert {r["given_split"] for r in out.manifest.values()} == {"train"}
    layout_json = out.ingest["layout"]
    assert layout_json["kind"] == "train + unlabelled test"
    assert out.ingest["classes"] == ["goldfish", "tench"]
    assert layout_json["unlabelled"] == [{"folder": "ImageNet10/test_set", "path": "ImageNet10/test_set", "files": 3}]
    assert {"ImageNet10/README.md", "ImageNet10/mapping.txt"} <= set(layout_json["metadata_files"])


def test_fuzz_imagenette_duplicates_across_splits(tmp_path, monkeypatch):
    files = images("imagenette2/train/a", "imagenette2/train/b", "imagenette2/val/a", "imagenette2/val/b", n=4)
    root = build(tmp_path / "input", files)
    leaked = root / "imagenette2/train/a/img0.png"
    leaked.write_bytes((root / "imagenette2/val/a/img1.png").read_bytes())  # a val image also in train
    out = ingest(tmp_path, root)
    row = out.rejected["train/a/img0.png"]
    assert (row["reason"], row["duplicate_of"]) == (download.DUPLICATE_ACROSS_SPLITS, "val/a/img1.png")
    assert "the val copy is kept" in row["detail"]
    assert out.manifest["val/a/img1.png"]["given_split"] == "val"
    assert_kept(out, [s for s in (p.removeprefix("imagenette2/") for p in files) if s != "train/a/img0.png"])
    assert out.ingest["layout"]["given_counts"]["val"] == {"a": 4, "b": 4}
    pooled = ingest(tmp_path / "pooled", root, predefined_split="ignore")
    assert pooled.rejected["val/a/img1.png"]["reason"] == download.DUPLICATE  # pooled: the first copy stays


def test_fuzz_loose_images_are_rejected_and_the_rest_kept(tmp_path, monkeypatch):
    root = build(
        tmp_path / "input",
        {**images("ds/a", "ds/b"), "ds/stray.png": None, "ds/info.txt": "about", "ds/a/README": "about a"},
    )
    out = ingest(tmp_path, root, monkeypatch)
    assert out.reasons() == {"stray.png": download.NOT_IN_A_CLASS_FOLDER}
    assert out.rejected["stray.png"]["class"] == ""
    assert "move it into its class folder" in out.rejected["stray.png"]["detail"]
    assert_kept(out, [f"{c}/img{i}.png" for c in "ab" for i in range(2)])
    assert "ds/a/README" in out.ingest["layout"]["metadata_files"]


def test_fuzz_nfc_collision_fails_before_writing_anything(tmp_path, monkeypatch):
    root = build(tmp_path / "input", {f"{NFC}/x.png": None, f"{NFD}/y.png": None, "tea/z.png": None})
    out = ingest(tmp_path, root, monkeypatch)
    assert isinstance(out.error, DatasetError)
    assert "Unicode-normalised (NFC)" in out.message
    assert out.store_keys == []


def test_fuzz_non_utf8_folder_names_are_stored_readably(tmp_path, monkeypatch):
    files = {
        f"{LATIN1_CAFE}/{os.fsdecode(b'm' + bytes([0xFC]) + b'de.png')}": None,
        f"{LATIN1_CAFE}/b.png": None,
        "tea/a.png": None,
        "tea/b.png": None,
        os.fsdecode(b"lose\xe9.png"): None,
    }
    root = build(tmp_path / "input", files)
    out = ingest(tmp_path, root, monkeypatch)
    assert_kept(out, ["café/müde.png", "café/b.png", "tea/a.png"])
    assert out.manifest["café/müde.png"]["class"] == "café"
    assert out.ingest["classes"] == ["café", "tea"]
    assert out.reasons() == {"loseé.png": download.NOT_IN_A_CLASS_FOLDER}


def test_fuzz_require_without_given_split_uploads_nothing(tmp_path, monkeypatch):
    root = build(tmp_path / "input", images("a", "b"))
    out = ingest(tmp_path, root, monkeypatch, predefined_split="require")
    assert "predefined_split=require" in out.message
    assert out.store_keys == []


LOOSE_NAMES = {
    "Intel style seg_train/seg_train, seg_test/seg_test, seg_pred/seg_pred": (
        {
            **images(
                "seg_train/seg_train/forest",
                "seg_train/seg_train/sea",
                "seg_test/seg_test/forest",
                "seg_test/seg_test/sea",
            ),
            **images("seg_pred/seg_pred", n=3),
        },
        dict(
            kind="train/test + unlabelled images",
            classes=["forest", "sea"],
            splits={"train": "seg_train/seg_train", "test": "seg_test/seg_test"},
            unlabelled=["seg_pred/seg_pred"],
        ),
    ),
    "COCO-style train2017/val2017": (
        images("train2017/a", "train2017/b", "val2017/a", "val2017/b"),
        dict(kind="train/val", splits={"train": "train2017", "val": "val2017"}),
    ),
    "one class ending in 'train' stays a class": (
        images("high_speed_train", "tram", "bus"),
        dict(kind="flat", classes=["bus", "high_speed_train", "tram"]),
    ),
}


@pytest.mark.parametrize("name", sorted(LOOSE_NAMES))
def test_split_names_read_loosely_when_siblings_agree(tmp_path, name):
    files, expected = LOOSE_NAMES[name]
    found = layout.detect_layout(build(tmp_path / "input", files))
    checks = {
        "kind": found.kind,
        "classes": found.classes,
        "splits": found.splits,
        "unlabelled": [u["folder"] for u in found.describe()["unlabelled"]],
    }
    assert {k: checks[k] for k in expected} == expected


def test_class_folder_wrapping_class_folders_is_nested(tmp_path):
    root = build(tmp_path / "input", images("a/inner/x", "a/inner/y", "b/inner/x", "b/inner/y"))
    with pytest.raises(DatasetError, match="class folder 'a' itself holds folders of images"):
        layout.detect_layout(root)


# ================================================================== following the advice works
ADVICE = {
    # error case -> (files, the setting its message suggests)
    "split folders beside a folder of images": (images("train/a", "train/b", "extra"), {"subdir": "train"}),
    "two train splits": (images("train/a", "train/b", "training/a", "training/b"), {"subdir": "train"}),
    "nested class folders": (
        images("animals/cat", "animals/dog", "vehicles/car", "vehicles/bus"),
        {"subdir": "animals"},
    ),
    "class missing from val": (
        images("train/a", "train/b", "train/c", "val/a", "val/b"),
        {"predefined_split": "ignore"},
    ),
    "no training split": (images("val/a", "val/b", "test/a", "test/b"), {"predefined_split": "ignore"}),
    "only split folders of images": (images("train", "test"), {"predefined_split": "ignore"}),
    "require without a split": (images("a", "b"), {"predefined_split": "auto"}),
}


def _suggested(message: str) -> dict:
    """The settings an error message names, as detect_layout keyword arguments."""
    import re

    found = {}
    if match := re.search(r"dataset_subdir=('[^']+')", message):
        found["subdir"] = match.group(1).strip("'")
    elif "Set dataset_subdir" in message or "set dataset_subdir" in message:
        found["subdir"] = None  # named in words: the case supplies the folder
    if match := re.search(r"predefined_split=(auto|ignore)", message):
        found["predefined_split"] = match.group(1)
    return found


@pytest.mark.parametrize("name", sorted(ADVICE))
def test_following_an_errors_advice_resolves_it(tmp_path, name):
    files, setting = ADVICE[name]
    root = build(tmp_path / "input", files)
    first = {"predefined_split": "require"} if name == "require without a split" else {}
    with pytest.raises(DatasetError) as info:
        layout.detect_layout(root, **first)
    suggested = _suggested(str(info.value))
    assert set(setting) <= set(suggested), (setting, str(info.value))
    for key, value in suggested.items():
        if value is not None and key in setting:
            assert value == setting[key], str(info.value)
    found = layout.detect_layout(root, **setting)
    assert len(found.classes) >= 2


def test_dataset_subdir_dot_is_the_top(tmp_path):
    root = build(tmp_path / "input", images("cat", "dog", "test"))
    assert layout.detect_layout(root, subdir=".").classes == ["cat", "dog", "test"]


@pytest.mark.parametrize(
    "subdir, words",
    [("/usr", "inside the dataset"), ("../../..", "without '..'"), ("link", "leads outside the dataset")],
)
def test_dataset_subdir_never_leaves_the_dataset(tmp_path, subdir, words):
    build(tmp_path / "outside", images("x", "y"))
    root = build(tmp_path / "input", images("a", "b"))
    (root / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(DatasetError, match=words) as info:
        layout.detect_layout(root, subdir=subdir)
    assert "dataset_subdir" in str(info.value)


# ================================================================== local folders: links, unreadable folders
def test_linked_folders_are_followed_once(tmp_path):
    shared = build(tmp_path / "elsewhere", images("more", n=2))
    root = build(tmp_path / "input", images("a", "b"))
    (root / "a" / "more").symlink_to(shared / "more", target_is_directory=True)
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)  # a link back into the walk
    (root / "c").symlink_to(shared / "more", target_is_directory=True)  # a linked class folder
    found = layout.detect_layout(root)
    assert found.classes == ["a", "b", "c"]
    files, _ = list_class_files(found.groups[0].classes["a"])
    assert [f.relative_to(root).as_posix() for f in files] == [
        "a/img0.png",
        "a/img1.png",
        "a/more/img0.png",
        "a/more/img1.png",
    ]


def _deny(monkeypatch, blocked: Path) -> None:
    real = os.scandir

    def scandir(path="."):
        if Path(os.fspath(path)) == blocked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("blocked", ["a", "a/sub", "train"])
def test_an_unreadable_folder_is_an_error_naming_it(tmp_path, monkeypatch, blocked):
    files = images("train/a", "train/b", "test/a", "test/b") if blocked == "train" else images("a", "a/sub", "b")
    root = build(tmp_path / "input", files)
    _deny(monkeypatch, root / blocked)
    with pytest.raises(DatasetError) as info:
        found = layout.detect_layout(root)
        for group in found.groups:
            for folder in group.classes.values():
                list_class_files(folder)
    assert f"cannot read the dataset folder '{root / blocked}': Permission denied" in str(info.value)


def test_unreadable_folder_fails_ingest_with_its_name(tmp_path, monkeypatch):
    root = build(tmp_path / "input", images("a", "a/sub", "b"))
    _deny(monkeypatch, root / "a" / "sub")
    out = ingest(tmp_path, root, monkeypatch)
    assert isinstance(out.error, DatasetError)
    assert "a/sub': Permission denied" in out.message


# ================================================================== mapping files and metadata names
def test_a_mapping_file_is_read_only_up_to_its_limit(tmp_path, monkeypatch):
    path = build(tmp_path, {"mapping.txt": "0 cat\n1 dog\n2 bird\n"}) / "mapping.txt"
    assert mapping.read_mapping(path, ["0", "1", "2"]) == {"0": "cat", "1": "dog", "2": "bird"}
    monkeypatch.setattr(mapping, "MAX_MAPPING_BYTES", len("0 cat\n1 dog\n"))
    assert mapping.read_mapping(path, ["0", "1", "2"]) is None  # '2 bird' lies past the limit


def test_images_named_like_metadata_in_a_class_folder_are_kept(tmp_path, monkeypatch):
    root = build(
        tmp_path / "input",
        {
            **images("a", "b"),
            "a/info.jpg": None,
            "a/license.jpg": None,
            "b/manifest.png": None,
            "b/README": "about b",
            "b/info.txt": "about b",
        },
    )
    out = ingest(tmp_path, root, monkeypatch)
    assert_kept(out, ["a/info.jpg", "a/license.jpg", "b/manifest.png", "a/img0.png"])
    assert {"b/README", "b/info.txt"} <= set(out.ingest["layout"]["metadata_files"])
    assert out.rejected == {}


def test_food101_ingests_its_images_and_warns_about_its_split_lists(tmp_path, monkeypatch):
    root = build(
        tmp_path / "input",
        {
            "food-101/meta/train.txt": "a/img0\n",
            "food-101/meta/test.txt": "b/img0\n",
            **images("food-101/images/a", "food-101/images/b"),
        },
    )
    out = ingest(tmp_path, root, monkeypatch)
    assert_kept(out, ["a/img0.png", "a/img1.png", "b/img0.png", "b/img1.png"])
    assert any("are not used" in w for w in out.ingest["layout"]["warnings"])
