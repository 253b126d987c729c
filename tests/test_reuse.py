"""Content-addressed reuse (cnn_tasks.reuse): a second run with the same data, settings and code copies
the first run's data-stage outputs instead of computing them; each setting that shapes a stage, a
changed image, `recompute` and outputs that are gone make it compute again; trained models are
reused only when asked; and the nothing-changed check stops only the runs it should."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cnn_tasks import data, download, rebalance, reuse, split
from cnn_tasks.config import PipelineConfig
from tests.imagegen import make_dataset

DATA_STAGES = {"download": download.run, "split": split.run, "rebalance": rebalance.run}
SMALL = {"min_images_per_class": 5, "image_size": 16}


def never(ctx, *args):
    raise AssertionError("computed although an earlier run's outputs should have been reused")


def prepare(ctx, compute=None) -> dict[str, dict]:
    """Run the three data stages through reuse; `compute` replaces every stage's own function."""
    return {name: reuse.data_stage(ctx, name, compute or fn) for name, fn in DATA_STAGES.items()}


def reused_from(ctx) -> dict[str, str | None]:
    return {name: reuse.run_record(ctx, name)["reused_from"] for name in DATA_STAGES}


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "images", classes=3, per_class=12, size=20)


def test_a_second_identical_run_reuses_every_data_stage(dataset, make_ctx):
    first = make_ctx("first", dataset_url=str(dataset), **SMALL)
    first_results = prepare(first)
    second = make_ctx("second", dataset_url=str(dataset), **SMALL)
    second_results = prepare(second, compute=never)
    assert reused_from(second) == {"download": "first", "split": "first", "rebalance": "first"}
    # The small files are this run's own copies; the shards are read where the first run wrote them.
    assert second_results["rebalance"]["dataset"] == "runs/second/data/dataset.json"
    assert second_results["download"]["accepted"] == first_results["download"]["accepted"]
    assert second.store.list("runs/second/data/shards/") == []
    assert second.store.list("runs/second/data/clean/") == []
    info = data.load_dataset_info(second)
    assert all(k.startswith("runs/first/data/shards/") for k in info["splits"]["train"]["balanced"]["shards"])
    manifest = second.store.get_text(second.data_key("manifest.csv"))
    assert "runs/first/data/clean/" in manifest
    assert second.store.get_json(second.data_key("ingest.json"))["manifest"] == "runs/second/data/manifest.csv"
    x_first, _, keys_first = data.load_split_arrays(first, "train")
    first.store.path("runs/first/data/dataset.json").unlink()  # the second run reads its own copy
    x, _, keys = data.load_split_arrays(second, "train")
    np.testing.assert_array_equal(x, x_first)
    assert list(keys) == list(keys_first)
    assert second.store.get_json(second.data_key("ingest.json"))["reused_from"] == "first"


def test_the_same_images_at_another_address_are_reused_and_say_where_they_came_from(dataset, tmp_path, make_ctx):
    prepare(make_ctx("first", dataset_url=str(dataset), **SMALL))
    moved = shutil.copytree(dataset, tmp_path / "elsewhere" / "images")
    second = make_ctx("second", dataset_url=str(moved), **SMALL)
    prepare(second, compute=never)
    assert second.store.get_json(second.data_key("ingest.json"))["source"] == str(moved)


@pytest.mark.parametrize(
    ("setting", "value", "first_recomputed"),
    [
        ("max_aspect_ratio", 4.0, "download"),
        ("classes", ["class_a", "class_b"], "download"),
        ("seed", 7, "download"),
        ("split", [0.6, 0.2, 0.2], "split"),
        ("rebalance", "oversample", "rebalance"),
        ("image_size", 24, "rebalance"),
        ("image_fit", "pad", "rebalance"),
    ],
)
def test_a_setting_that_shapes_a_stage_recomputes_it_and_every_stage_after_it(
    dataset, make_ctx, setting, value, first_recomputed
):
    prepare(make_ctx("first", dataset_url=str(dataset), **SMALL))
    second = make_ctx("second", dataset_url=str(dataset), **(SMALL | {setting: value}))
    prepare(second)
    order = list(DATA_STAGES)
    cut = order.index(first_recomputed)
    expected = {name: "first" if i < cut else None for i, name in enumerate(order)}
    assert reused_from(second) == expected


def test_one_changed_image_recomputes_from_download(dataset, make_ctx):
    prepare(make_ctx("first", dataset_url=str(dataset), **SMALL))
    image = sorted(dataset.rglob("*.png"))[0]
    image.write_bytes(image.read_bytes() + b"\0")  # the same pixels, another file: another dataset
    second = make_ctx("second", dataset_url=str(dataset), **SMALL)
    prepare(second)
    assert reused_from(second) == {"download": None, "split": None, "rebalance": None}


def test_recompute_forces_every_stage_and_the_index_then_names_the_new_run(dataset, make_ctx):
    prepare(make_ctx("first", dataset_url=str(dataset), **SMALL))
    prepare(make_ctx("second", dataset_url=str(dataset), recompute=True, **SMALL))
    third = make_ctx("third", dataset_url=str(dataset), **SMALL)
    prepare(third, compute=never)
    assert reused_from(third) == {"download": "second", "split": "second", "rebalance": "second"}


def test_outputs_that_are_gone_are_computed_again_with_a_warning(dataset, make_ctx, caplog):
    first = make_ctx("first", dataset_url=str(dataset), **SMALL)
    prepare(first)
    shard = next(k for k in first.store.list("runs/first/data/shards/"))
    first.store.path(shard).unlink()
    second = make_ctx("second", dataset_url=str(dataset), **SMALL)
    prepare(second)
    assert reused_from(second) == {"download": "first", "split": "first", "rebalance": None}
    assert "rebalance: run first computed it, but 1 of its" in caplog.text


def test_an_unreadable_index_entry_is_computed_again_with_a_warning(dataset, make_ctx, caplog):
    first = make_ctx("first", dataset_url=str(dataset), **SMALL)
    prepare(first)
    (index,) = first.store.list("reuse/split/")
    first.store.put_text(index, '{"half": ')  # a write cut off, or a file from another tool
    second = make_ctx("second", dataset_url=str(dataset), **SMALL)
    prepare(second)
    # split's key is unchanged, so the stage after it still reuses the first run's outputs
    assert reused_from(second) == {"download": "first", "split": None, "rebalance": "first"}
    assert f"split: the reuse index entry {first.store.url(index)} is unreadable" in caplog.text
    assert first.store.get_json(index)["run_id"] == "second"  # indexed again by the run that computed it


def test_a_retried_task_of_the_same_run_computes_again(dataset, make_ctx):
    ctx = make_ctx("first", dataset_url=str(dataset), **SMALL)
    prepare(ctx)
    calls = []
    prepare(ctx, compute=lambda c: calls.append(1) or {})
    assert len(calls) == 3


def test_trained_models_are_reused_only_with_reuse_models(dataset, make_ctx):
    def fake_train(ctx, experiment, variant):  # writes one output where training writes its model
        mid = f"{experiment}__{variant}"
        ctx.store.put_bytes(ctx.model_key(mid, "model.keras"), b"weights")
        ctx.store.put_json(ctx.model_key(mid, "meta.json"), {"model_key": ctx.model_key(mid, "model.keras")})
        return {"model_id": mid, "meta": ctx.model_key(mid, "meta.json")}

    first = make_ctx("first", dataset_url=str(dataset), **SMALL)
    prepare(first)
    reuse.train_stage(first, fake_train, "baseline", "balanced")
    off = make_ctx("off", dataset_url=str(dataset), **SMALL)
    prepare(off, compute=never)
    assert (
        reuse.train_stage(off, fake_train, "baseline", "balanced")["meta"]
        == "runs/off/models/baseline__balanced/meta.json"
    )
    assert reuse.run_record(off, "train.baseline__balanced")["reused_from"] is None
    on = make_ctx("on", dataset_url=str(dataset), reuse_models=True, **SMALL)
    prepare(on, compute=never)
    result = reuse.train_stage(on, never, "baseline", "balanced")
    assert result["meta"] == "runs/on/models/baseline__balanced/meta.json"
    meta = on.store.get_json("runs/on/models/baseline__balanced/meta.json")
    assert meta["model_key"] == "runs/on/models/baseline__balanced/model.keras"
    assert reuse.run_record(on, "train.baseline__balanced")["reused_from"] == "off"
    other_variant = reuse.train_stage(on, fake_train, "baseline", "unbalanced")  # another key: trained
    assert other_variant["model_id"] == "baseline__unbalanced"


def test_a_changed_experiment_spec_trains_again(dataset, make_ctx):
    first = make_ctx("first", dataset_url=str(dataset), reuse_models=True, **SMALL)
    prepare(first)
    reuse.train_stage(first, lambda ctx, e, v: {"model_id": f"{e}__{v}"}, "baseline", "balanced")
    spec = first.config.to_dict()["experiments"]
    spec[0]["dropout"] = 0.1
    second = make_ctx("second", dataset_url=str(dataset), reuse_models=True, experiments=spec, **SMALL)
    prepare(second, compute=never)
    calls = []
    reuse.train_stage(second, lambda ctx, e, v: calls.append(e) or {"model_id": f"{e}__{v}"}, "baseline", "balanced")
    assert calls == ["baseline"]


# ----------------------------------------------------------------------------- what the keys hold
def test_every_setting_is_in_a_stage_key_or_documented_as_in_none():
    in_keys = {name for stage in reuse.STAGES.values() for name in stage.settings}
    assert in_keys | set(reuse.NOT_IN_ANY_KEY) == set(PipelineConfig.model_fields)
    assert not in_keys & set(reuse.NOT_IN_ANY_KEY)


def test_a_stages_code_fingerprint_covers_the_modules_it_imports():
    assert {"download", "images", "ingest", "ingest.fetch", "ingest.extract", "ingest.layout", "shards"} <= set(
        reuse.code_modules("download")
    )
    assert {"rebalance", "shards", "data", "plots"} <= set(reuse.code_modules("rebalance"))
    assert "train" not in reuse.code_modules("split")
    assert reuse.code_fingerprint("split") != reuse.code_fingerprint("rebalance")


def test_the_tree_digest_follows_content_and_names_not_place_or_time(tmp_path):
    a = make_dataset(tmp_path / "a", classes=2, per_class=3)
    b = shutil.copytree(a, tmp_path / "b")
    assert reuse.tree_digest(a) == reuse.tree_digest(b)
    (b / "class_a" / "class_a_0.png").rename(b / "class_b" / "class_a_0.png")  # relabelled
    assert reuse.tree_digest(a) != reuse.tree_digest(b)
    assert reuse.tree_digest(a) != reuse.tree_digest(a, [{"source": "link", "reason": "link"}])


# ----------------------------------------------------------------------------- nothing changed
def champion_of(config, data_digest="d" * 64) -> dict:
    return {
        "run_id": "champ",
        "data_digest": data_digest,
        "settings_digest": reuse.model_settings_digest(config),
    }


@pytest.mark.parametrize(
    ("policy", "run_type", "stops"),
    [
        ("auto", "scheduled", True),
        ("auto", "asset_triggered", True),
        ("auto", "manual", False),
        ("always", "manual", True),
        ("never", "scheduled", False),
    ],
)
def test_an_unchanged_run_stops_as_skip_unchanged_says(policy, run_type, stops):
    config = PipelineConfig.from_dict({"skip_unchanged": policy})
    verdict = reuse.unchanged(config, "d" * 64, champion_of(config), run_type)
    assert verdict.stop is stops
    if stops:
        assert "nothing changed since champion run champ" in verdict.why


def test_changed_data_or_model_settings_train_and_say_what_changed():
    config = PipelineConfig.from_dict({"skip_unchanged": "always"})
    assert reuse.unchanged(config, "e" * 64, champion_of(config), "scheduled").why.startswith(
        "the dataset's content changed since champion run champ"
    )
    other = PipelineConfig.from_dict({"skip_unchanged": "always", "epochs": 3})
    assert reuse.unchanged(other, "d" * 64, champion_of(config), "scheduled").why.startswith(
        "the model settings changed"
    )
    where = PipelineConfig.from_dict({"skip_unchanged": "always", "promotion_margin": 0.1, "tta": True})
    assert reuse.unchanged(where, "d" * 64, champion_of(config), "scheduled").stop  # shape no model


def test_no_champion_or_one_without_digests_always_trains():
    config = PipelineConfig.from_dict({"skip_unchanged": "always"})
    assert reuse.unchanged(config, "d" * 64, None, "scheduled").why == "there is no champion yet"
    older = {"run_id": "old", "classes": ["a", "b"]}
    assert not reuse.unchanged(config, "d" * 64, older, "scheduled").stop


def test_stop_if_unchanged_records_why_for_the_report(dataset, make_ctx):
    from cnn_tasks.champion import champion_json_key, model_name

    first = make_ctx("first", dataset_url=str(dataset), skip_unchanged="always", **SMALL)
    prepare(first)
    digest = reuse.run_record(first, "download")["data_digest"]
    first.store.put_json(champion_json_key(model_name(first.config)), champion_of(first.config, digest))
    second = make_ctx("second", dataset_url=str(dataset), skip_unchanged="always", **SMALL)
    reuse.data_stage(second, "download", never)
    assert reuse.stop_if_unchanged(second, "manual") is False
    assert "nothing changed since champion run champ" in second.store.get_json(reuse.stopped_key(second))["why"]
    third = make_ctx("third", dataset_url=str(dataset), skip_unchanged="always", epochs=2, **SMALL)
    reuse.data_stage(third, "download", never)
    assert reuse.stop_if_unchanged(third, "manual") is True
    assert not third.store.exists(reuse.stopped_key(third))


def test_the_report_lists_what_was_reused_and_from_which_run(dataset, make_ctx):
    from cnn_tasks import report

    prepare(make_ctx("first", dataset_url=str(dataset), **SMALL))
    second = make_ctx("second", dataset_url=str(dataset), **SMALL)
    prepare(second, compute=never)
    rows = report.results(report.Run(second))["reused"]
    assert [(r["stage"], r["reused from run"]) for r in rows] == [(s, "first") for s in DATA_STAGES]
