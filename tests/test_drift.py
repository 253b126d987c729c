"""Data drift (cnn_tasks.drift and the report's drift section): profiles written by the real data
stages of a small dataset and of a deliberately shifted copy of it (brighter images, one class
shrunk), compared as a later run compares its data with its champion's."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from cnn_tasks import download, drift, report, split
from cnn_tasks.champion import champion_json_key, model_name
from tests.imagegen import make_dataset

SMALL = {"min_images_per_class": 5, "image_size": 16}


def profile_of(ctx) -> dict:
    download.run(ctx)
    split.run(ctx)
    return ctx.store.get_json(ctx.data_key("profile.json"))


def brighten(folder, amount: int) -> None:
    for path in folder.rglob("*.png"):
        pixels = np.asarray(Image.open(path), dtype=np.int16) + amount
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture
def datasets(tmp_path):
    """(original, shifted): 3 classes x 30 images; the copy is 60 levels brighter and class_c lost 20 images."""
    original = make_dataset(tmp_path / "original", classes=3, per_class=30, size=20)
    shifted = shutil.copytree(original, tmp_path / "shifted")
    brighten(shifted, 60)
    for path in sorted((shifted / "class_c").glob("*.png"))[:20]:
        path.unlink()
    return original, shifted


def test_the_profile_holds_what_drift_is_judged_on(datasets, make_ctx):
    profile = profile_of(make_ctx("a", dataset_url=str(datasets[0]), **SMALL))
    assert profile["images"] == 90
    assert profile["class_shares"] == {
        "class_a": pytest.approx(1 / 3),
        "class_b": pytest.approx(1 / 3),
        "class_c": pytest.approx(1 / 3),
    }
    assert profile["width"]["median"] == 20
    assert sum(profile["channel_mean_histograms"]["r"]) == 90
    assert profile["rejected_share"] == 0


def test_a_shifted_copy_is_flagged_and_the_same_data_is_not(datasets, make_ctx):
    original = profile_of(make_ctx("a", dataset_url=str(datasets[0]), **SMALL))
    again = profile_of(make_ctx("b", dataset_url=str(datasets[0]), recompute=True, **SMALL))
    same = drift.compare(again, original, max_share_change=0.05, max_psi=0.2)
    assert same["flags"] == []
    assert [round(c["PSI"], 6) for c in same["channels"]] == [0, 0, 0]
    shifted = profile_of(make_ctx("c", dataset_url=str(datasets[1]), **SMALL))
    result = drift.compare(shifted, original, max_share_change=0.05, max_psi=0.2)
    flagged = {row["class"] for row in result["classes"] if row["flag"]}
    assert flagged == {"class_a", "class_b", "class_c"}  # 1/3 each -> 3/7, 3/7, 1/7
    assert all(row["flag"] for row in result["channels"])
    assert any(f.startswith("class 'class_c' went from 33.3% to 14.3%") for f in result["flags"])
    assert any("the r channel's brightness shifted" in f for f in result["flags"])


def test_psi_grows_with_the_shift_and_new_or_missing_classes_are_flagged():
    rng = np.random.default_rng(0)
    base = np.histogram(rng.normal(100, 10, 5000), bins=256, range=(0, 256))[0]
    small = np.histogram(rng.normal(101, 10, 5000), bins=256, range=(0, 256))[0]
    large = np.histogram(rng.normal(115, 10, 5000), bins=256, range=(0, 256))[0]
    assert drift.psi(base, small) < 0.1 < drift.psi(base, large)
    before = {"class_shares": {"a": 0.5, "b": 0.5}}
    after = {"class_shares": {"a": 0.5, "c": 0.5}}
    common = {"channel_mean_histograms": dict.fromkeys("rgb", base.tolist()), "rejected_share": 0.0}
    sizes = {"width": {"median": 64}, "height": {"median": 64}}
    result = drift.compare(after | common | sizes, before | common | sizes, 0.05, 0.2)
    assert "class 'c' is new: the champion never saw it" in result["flags"]
    assert "class 'b' is gone from this run's data" in result["flags"]


def test_the_report_compares_a_run_with_its_champions_data(datasets, make_ctx):
    champion_run = make_ctx("champ", dataset_url=str(datasets[0]), model_name="fields", **SMALL)
    profile_of(champion_run)
    champion_run.store.copy(champion_run.data_key("profile.json"), "champions/fields/models/champ/profile.json")
    record = {"run_id": "champ", "model_id": "m", "profile_key": "champions/fields/models/champ/profile.json"}
    champion_run.store.put_json(champion_json_key("fields"), record | {"metrics": {"accuracy": 0.9}})
    later = make_ctx("later", dataset_url=str(datasets[1]), model_name="fields", **SMALL)
    assert model_name(later.config) == "fields"
    profile_of(later)
    run = report.Run(later)
    section = report.section_drift(run)
    assert section["status"] == "partial"
    assert "champion of 'fields': m from run champ" == section["reference"]
    assert any("class 'class_c' went from" in f for f in section["flags"])
    assert any(w.startswith("Data drift since the champion:") for w in report.results(run)["warnings"])
    unrelated = make_ctx("other", dataset_url=str(datasets[1]), model_name="orchards", **SMALL)
    profile_of(unrelated)
    assert (
        report.section_drift(report.Run(unrelated))["not_run"]
        == "no earlier champion of model 'orchards' to compare with"
    )
