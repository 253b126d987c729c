"""rebalance: dataset.json follows the contract for every strategy; the test split is untouched."""

from __future__ import annotations

import hashlib
import io
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cnn_tasks import data, download, rebalance, split
from cnn_tasks.config import REBALANCE_STRATEGIES, PipelineConfig
from cnn_tasks.context import RunContext
from cnn_tasks.shards import iter_records
from cnn_tasks.storage import LocalStore
from tests.imagegen import make_dataset

RUN = "rebalance_run"
SIZES = [24, 15, 10]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A store holding download + split outputs of an imbalanced 3-class dataset."""
    tmp = tmp_path_factory.mktemp("rebalance")
    root = make_dataset(tmp / "data", classes=3, per_class=SIZES, size=10)
    ctx = _ctx(tmp / "store", dataset_url=str(root))
    download.run(ctx)
    split.run(ctx)
    return tmp


def _ctx(store, **overrides) -> RunContext:
    values = {"store_uri": f"file://{store}", "dataset_checksum": None, "min_images_per_class": 5, **overrides}
    return RunContext.create(PipelineConfig.from_dict(values), RUN)


@pytest.fixture(scope="module")
def outputs(prepared):
    """Run every strategy on its own copy of the prepared store; strategy -> (ctx, dataset.json)."""
    results = {}
    for strategy in REBALANCE_STRATEGIES:
        store = prepared / f"store_{strategy}"
        shutil.copytree(prepared / "store", store)
        ctx = RunContext(
            PipelineConfig.from_dict({"store_uri": f"file://{store}", "dataset_checksum": None, "rebalance": strategy}),
            LocalStore(store),
            RUN,
        )
        rebalance.run(ctx)
        results[strategy] = (ctx, ctx.store.get_json(ctx.data_key("dataset.json")))
    return results


def _records(ctx, variant: dict) -> list[tuple[bytes, int, str]]:
    return list(iter_records([ctx.cached(key) for key in variant["shards"]]))


def _split_table(ctx) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(ctx.store.get_text(ctx.data_key("split.csv"))))


@pytest.mark.parametrize("strategy", REBALANCE_STRATEGIES)
def test_dataset_json_matches_the_contract(outputs, strategy):
    ctx, ds = outputs[strategy]
    analysis = ctx.store.get_json(ctx.data_key("analysis.json"))
    assert set(ds) == {
        "classes",
        "image_size",
        "image_fit",
        "mean",
        "std",
        "dataset_sha256",
        "rebalance",
        "augment",
        "augment_reason",
        "balanced_same_as_unbalanced",
        "splits",
        "figures",
    }
    assert ds["image_fit"] == "squash"
    assert ds["classes"] == ["class_a", "class_b", "class_c"]
    assert ds["rebalance"] == strategy
    assert ds["image_size"] == 64
    assert (ds["mean"], ds["std"]) == (analysis["mean"], analysis["std"])
    assert {s: set(v) for s, v in ds["splits"].items()} == {
        "train": {"unbalanced", "balanced"},
        "val": {"unbalanced", "balanced"},
        "test": {"unbalanced"},
    }
    for name, variants in ds["splits"].items():
        for variant in variants.values():
            assert set(variant) == {"shards", "sha256", "count", "class_counts", "class_weight"}
            assert all(k.startswith(ctx.data_key("shards", name)) and ctx.store.exists(k) for k in variant["shards"])
            assert variant["sha256"] == [hashlib.sha256(ctx.store.get_bytes(k)).hexdigest() for k in variant["shards"]]
            labels = Counter(label for _, label, _ in _records(ctx, variant))
            assert [labels[i] for i in range(3)] == variant["class_counts"]
            assert sum(variant["class_counts"]) == variant["count"]
    for figure in ds["figures"]:
        assert figure["caption"]
        assert ctx.store.exists(figure["key"])


def test_dataset_sha256_is_the_hash_of_sorted_keys_and_classes(outputs):
    ctx, ds = outputs["none"]
    manifest = data.read_csv(ctx, "manifest.csv")
    lines = "".join(f"{k}\t{c}\n" for k, c in sorted(zip(manifest["key"], manifest["class"])))
    assert ds["dataset_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert len({d["dataset_sha256"] for _, d in outputs.values()}) == 1


def test_unbalanced_variants_and_test_split_are_the_split_as_is(outputs):
    ctx, _ = outputs["none"]
    table = _split_table(ctx)
    for strategy, (ctx, ds) in outputs.items():
        for name in ("train", "val", "test"):
            keys = sorted(k for _, _, k in _records(ctx, ds["splits"][name]["unbalanced"]))
            assert keys == sorted(table.loc[table["split"] == name, "key"]), (strategy, name)
        assert ds["splits"]["test"]["unbalanced"]["class_weight"] is None
        assert ds["splits"]["test"] == outputs["none"][1]["splits"]["test"]


def test_test_split_is_never_touched(outputs):
    """Same records in every strategy (shard bytes compared), and no balanced variant."""
    digests = set()
    for ctx, ds in outputs.values():
        assert list(ds["splits"]["test"]) == ["unbalanced"]
        digests.add(
            hashlib.sha256(
                b"".join(ctx.cached(k).read_bytes() for k in ds["splits"]["test"]["unbalanced"]["shards"])
            ).hexdigest()
        )
    assert len(digests) == 1


def test_none_and_class_weight_reuse_the_unbalanced_shards(outputs):
    _, none = outputs["none"]
    _, weighted = outputs["class_weight"]
    for name in ("train", "val"):
        assert none["splits"][name]["balanced"] == none["splits"][name]["unbalanced"]
        bal, unbal = weighted["splits"][name]["balanced"], weighted["splits"][name]["unbalanced"]
        assert bal["shards"] == unbal["shards"]
        assert unbal["class_weight"] is None
        counts = unbal["class_counts"]
        expected = {str(i): pytest.approx(sum(counts) / (3 * c), abs=1e-5) for i, c in enumerate(counts)}
        assert bal["class_weight"] == expected


@pytest.mark.parametrize("strategy,target", [("oversample", max), ("augment", max), ("undersample", min)])
def test_balanced_variants_have_equal_classes(outputs, strategy, target):
    ctx, ds = outputs[strategy]
    for name in ("train", "val"):
        before = ds["splits"][name]["unbalanced"]["class_counts"]
        after = ds["splits"][name]["balanced"]
        assert after["class_counts"] == [target(before)] * 3
        assert after["class_weight"] is None
        records = _records(ctx, after)
        originals = {k for _, _, k in _records(ctx, ds["splits"][name]["unbalanced"])}
        base_keys = {k.split("#")[0] for _, _, k in records}
        assert base_keys <= originals  # nothing from another split
        augmented = [k for _, _, k in records if "#aug" in k]
        assert bool(augmented) == (strategy == "augment")


def test_augmented_copies_are_new_images_of_the_same_size(outputs):
    ctx, ds = outputs["augment"]
    records = _records(ctx, ds["splits"]["train"]["balanced"])
    originals = {k: img for img, _, k in records if "#" not in k}
    for image, _label, key in records:
        if "#aug" in key:
            base, n = key.split("#aug")
            assert int(n) >= 1
            assert base in originals
            assert Image.open(io.BytesIO(image)).size == Image.open(io.BytesIO(originals[base])).size


def test_augment_is_seeded():
    data = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    data.save(buffer, format="PNG")
    first = rebalance.augment(buffer.getvalue(), np.random.default_rng([42, 1]))
    again = rebalance.augment(buffer.getvalue(), np.random.default_rng([42, 1]))
    assert first == again


def test_plan_split_tops_up_evenly():
    part = pd.DataFrame({"key": [f"a{i}" for i in range(10)] + ["b0", "b1", "b2"], "label": [0] * 10 + [1] * 3})
    plan = rebalance.plan_split(part, "oversample", seed=1, split_index=0)
    assert sum(plan.copies.values()) == 7
    assert sorted(plan.copies[k] for k in ("b0", "b1", "b2")) == [2, 2, 3]
    assert rebalance.plan_split(part, "oversample", seed=1, split_index=0).copies == plan.copies


def brightest_pixel(encoded: bytes) -> tuple[int, int]:
    pixels = np.asarray(Image.open(io.BytesIO(encoded)).convert("L"), dtype=np.int32)
    row, col = np.unravel_index(int(np.argmax(pixels)), pixels.shape)
    return int(row), int(col)


def test_augmented_copies_follow_the_augmentation_preset():
    image = np.full((8, 8, 3), 60, np.uint8)
    image[0, 1] = 200  # one bright pixel near the top-left corner
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    corners = {
        preset: {
            brightest_pixel(rebalance.augment(buffer.getvalue(), np.random.default_rng([7, n]), preset))
            for n in range(80)
        }
        for preset in ("aerial", "natural", "none")
    }
    assert corners["none"] == {(0, 1)}  # only brightness and contrast change
    assert corners["natural"] == {(0, 1), (0, 6)}  # mirrored left-right, never turned
    assert len(corners["aerial"]) == 8  # every flip and 90-degree rotation of the square


def test_imbalanced_data_is_trained_on_both_variants_and_records_its_augmentation_preset(outputs):
    from cnn_tasks.variants import training_variants

    ctx, ds = outputs["oversample"]
    assert ds["balanced_same_as_unbalanced"] is False
    assert training_variants(ctx.config, ds) == ("unbalanced", "balanced")
    assert ds["augment"] == "natural"  # class_a, class_b, class_c are no satellite scenes
    assert ds["augment_reason"].startswith("augment 'auto': the class names do not look like satellite")


@pytest.mark.parametrize("strategy", ["class_weight", "oversample", "undersample", "augment"])
def test_already_balanced_data_trains_each_experiment_once_and_says_why(tmp_path, strategy):
    from cnn_tasks.variants import expected_model_ids, variants_note

    root = make_dataset(tmp_path / "data", classes=2, per_class=20, size=10)
    ctx = _ctx(tmp_path / "store", dataset_url=str(root), rebalance=strategy)
    download.run(ctx)
    split.run(ctx)
    rebalance.run(ctx)
    ds = data.load_dataset_info(ctx)
    assert ds["balanced_same_as_unbalanced"] is True
    assert [m.split("__")[1] for m in expected_model_ids(ctx.config, ds)] == ["unbalanced"] * len(
        ctx.config.experiments
    )
    assert variants_note(strategy, ds).startswith(
        f"The training and validation splits are already balanced, so rebalance={strategy} changed nothing"
    )
