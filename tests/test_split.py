"""split: seeded stratified split, leakage check, analysis.json and figures."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from cnn_tasks import data, download, images, split
from cnn_tasks.config import PipelineConfig
from cnn_tasks.context import RunContext
from tests.imagegen import make_dataset


def _manifest(sizes: dict[str, int]) -> pd.DataFrame:
    rows = [
        {"key": f"{name}-{i:04d}", "class": name, "label": label}
        for label, (name, n) in enumerate(sizes.items())
        for i in range(n)
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """An imbalanced 3-class dataset (30/20/12 images) through download and split."""
    tmp = tmp_path_factory.mktemp("split")
    root = make_dataset(tmp / "data", classes=3, per_class=[30, 20, 12], size=12)
    config = PipelineConfig.from_dict(
        {
            "store_uri": f"file://{tmp / 'store'}",
            "dataset_checksum": None,
            "dataset_url": str(root),
            "min_images_per_class": 5,
            "rebalance": "oversample",
        }
    )
    ctx = RunContext.create(config, "split_run")
    download.run(ctx)
    result = split.run(ctx)
    table = pd.read_csv(io.StringIO(ctx.store.get_text(ctx.data_key("split.csv"))))
    return {
        "ctx": ctx,
        "result": result,
        "table": table,
        "root": root,
        "analysis": ctx.store.get_json(ctx.data_key("analysis.json")),
    }


def test_split_is_deterministic_for_a_seed():
    manifest = _manifest({"a": 50, "b": 20})
    first = split.stratified_split(manifest, (0.7, 0.2, 0.1), seed=7)
    again = split.stratified_split(manifest.sample(frac=1, random_state=1), (0.7, 0.2, 0.1), seed=7)
    other = split.stratified_split(manifest, (0.7, 0.2, 0.1), seed=8)
    as_dict = lambda t: dict(zip(t["key"], t["split"]))  # noqa: E731
    assert as_dict(first) == as_dict(again)  # independent of manifest order
    assert as_dict(first) != as_dict(other)


def test_split_is_stratified_per_class():
    table = split.stratified_split(_manifest({"a": 100, "b": 40, "c": 7}), (0.7, 0.2, 0.1), seed=1)
    counts = table.groupby(["class", "split"]).size().unstack()
    assert counts.loc["a"].to_dict() == {"train": 70, "val": 20, "test": 10}
    assert counts.loc["b"].to_dict() == {"train": 28, "val": 8, "test": 4}
    assert counts.loc["c"].to_dict() == {"train": 5, "val": 1, "test": 1}  # every split gets one


def test_class_too_small_for_three_splits_is_an_error():
    with pytest.raises(split.SplitError, match="class 'tiny' has 2 images: too few"):
        split.stratified_split(_manifest({"big": 30, "tiny": 2}), (0.7, 0.2, 0.1), seed=1)


def test_leakage_is_detected():
    table = split.stratified_split(_manifest({"a": 20, "b": 20}), (0.7, 0.2, 0.1), seed=1)
    split.assert_no_leakage(table)
    leaked = pd.concat([table, table[table["split"] == "test"].assign(split="train")])
    with pytest.raises(split.SplitError, match="leakage"):
        split.assert_no_leakage(leaked)


def test_imbalance_measures():
    m = split.imbalance_measures({"a": 100, "b": 50})
    assert m["max_min_ratio"] == 2.0
    assert m["severity"] == "moderate"
    assert m["normalised_entropy"] == pytest.approx(0.9183, abs=1e-4)
    assert (m["largest"], m["smallest"]) == ("a", "b")
    assert split.imbalance_measures({"a": 5, "b": 5})["normalised_entropy"] == 1.0


def test_run_writes_a_stratified_split_without_leakage(analysed):
    table = analysed["table"]
    assert len(table) == 62
    assert table["key"].is_unique
    counts = table.groupby(["class", "split"]).size().unstack().loc[:, ["train", "val", "test"]]
    assert counts.values.tolist() == [[21, 6, 3], [14, 4, 2], [9, 2, 1]]
    assert analysed["analysis"]["no_leakage"] is True


def test_analysis_json_counts_imbalance_and_conclusion(analysed):
    a = analysed["analysis"]
    assert a["counts"]["val"] == {"class_a": 6, "class_b": 4, "class_c": 2}
    assert a["totals"] == {"train": 44, "val": 12, "test": 6}
    assert a["imbalance"]["train"]["max_min_ratio"] == pytest.approx(21 / 9, abs=1e-3)
    assert "max/min ratio 2.33" in a["conclusion"]
    assert "rebalance='oversample'" in a["conclusion"]
    assert "test split is not rebalanced" in a["conclusion"]
    assert {"split": "test", "class": "class_c", "count": 1, "minimum": 60} in a["shortfalls"]
    assert len(a["shortfalls"]) == 9
    assert "class_c (9)" in a["shortfall_text"]


def test_training_mean_and_std_match_the_pixels(analysed):
    ctx, table = analysed["ctx"], analysed["table"]
    manifest = data.read_csv(ctx, "manifest.csv").set_index("key")
    train = table.loc[table["split"] == "train", "key"]
    pixels = np.concatenate(
        [np.asarray(images.load_rgb(analysed["root"] / manifest.loc[k, "source"])).reshape(-1, 3) for k in train]
    ).astype(np.float64)
    assert analysed["analysis"]["mean"] == pytest.approx(pixels.mean(axis=0).tolist(), abs=1e-3)
    assert analysed["analysis"]["std"] == pytest.approx(pixels.std(axis=0).tolist(), abs=1e-3)


def test_figures_are_written_with_captions(analysed):
    ctx, figures = analysed["ctx"], analysed["analysis"]["figures"]
    names = [f["key"].rsplit("/", 1)[1] for f in figures]
    # one count chart for the three splits, one share chart; every image is 12 x 12 px: no size histogram
    assert names == ["counts_per_split.png", "counts_shares.png", "samples.png"]
    for figure in figures:
        assert figure["caption"]
        assert ctx.store.get_bytes(figure["key"]).startswith(b"\x89PNG")
    assert analysed["analysis"]["image_sizes"]["train"]["most_common"] == [[12, 12, 44]]


@pytest.fixture
def drawn(monkeypatch):
    """The figures split.draw_* save, kept open to look at (closed afterwards)."""
    import matplotlib.pyplot as plt

    from cnn_tasks import plots

    figures = {}
    save, close = plots.save_figure, plt.close

    def keep(store, key, fig, dpi=110):
        figures[key.rsplit("/", 1)[1]] = fig
        fig.canvas.draw()
        return save(store, key, fig, dpi)

    monkeypatch.setattr(split.plots, "save_figure", keep)
    monkeypatch.setattr(split.plots.plt, "close", lambda fig: None)
    yield figures
    for fig in figures.values():
        close(fig)


def test_one_class_count_chart_has_the_three_splits_side_by_side(analysed, drawn):
    counts = analysed["analysis"]["counts"]
    entry = split.counts_bars(analysed["ctx"], counts)
    ax = drawn["counts_per_split.png"].axes[0]
    assert len(drawn["counts_per_split.png"].axes) == 1
    bars = ax.containers
    assert [[p.get_height() for p in c.patches] for c in bars] == [list(counts[s].values()) for s in split.SPLITS]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["training", "validation", "test"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["class_a", "class_b", "class_c"]
    first = [c.patches[0] for c in bars]  # class_a's three bars stand next to each other
    assert first[0].get_x() + first[0].get_width() <= first[1].get_x() + 1e-9
    assert "far below the reference minimum per class:\ntraining 1000, validation 300, test 60" in ax.get_title()
    assert entry["caption"].startswith("Images per class in the training, validation and test splits side by side")


def test_class_shares_are_one_chart_when_the_splits_share_them(analysed, drawn):
    ctx = analysed["ctx"]
    same = {"train": {"a": 70, "b": 140}, "val": {"a": 20, "b": 40}, "test": {"a": 10, "b": 20}}
    assert split.shares_differ(same) is False
    entry = split.counts_shares(ctx, same)
    assert len(drawn["counts_shares.png"].axes) == 1
    assert drawn["counts_shares.png"].axes[0].get_title() == "Every split: share of each class"
    assert "the same in every split (within 2%): one chart for all" in entry["caption"]

    differ = analysed["analysis"]["counts"]  # 21/14/9, 6/4/2, 3/2/1: class_a is 47.7 % of training, 50 % of test
    assert split.shares_differ(differ) is True
    entry = split.counts_shares(ctx, differ)
    assert [ax.get_title() for ax in drawn["counts_shares.png"].axes] == [
        "Training split",
        "Validation split",
        "Test split",
    ]
    assert "the splits' class mixes differ by more than 2% somewhere" in entry["caption"]


def test_image_sizes_are_drawn_only_when_they_differ(analysed):
    table = analysed["table"].assign(width=12, height=12)
    assert split.uniform_size(table) == (12, 12)
    assert split.uniform_size(table.assign(width=[12] * (len(table) - 1) + [40])) is None


# ================================================================== predefined splits
def _given(sizes: dict[str, dict[str, int]]) -> pd.DataFrame:
    """A manifest with given splits: {given_split: {class: n}}; labels in class order a, b, ..."""
    labels = {c: i for i, c in enumerate(sorted({c for per in sizes.values() for c in per}))}
    rows = [
        {"key": f"{s}-{c}-{i:04d}", "class": c, "label": labels[c], "given_split": s}
        for s, per in sizes.items()
        for c, n in per.items()
        for i in range(n)
    ]
    return pd.DataFrame(rows)


def _counts(table: pd.DataFrame) -> dict:
    return {
        c: g["split"].value_counts().reindex(["train", "val", "test"], fill_value=0).tolist()
        for c, g in table.groupby("class")
    }


def test_auto_keeps_a_given_test_split_and_carves_val_from_train():
    manifest = _given({"train": {"a": 90, "b": 45}, "test": {"a": 10, "b": 7}})
    table, origin = split.assign_splits(manifest, (0.7, 0.2, 0.1), seed=3)
    assert _counts(table) == {"a": [70, 20, 10], "b": [35, 10, 7]}  # val = round(n_train x 0.2/0.9)
    test = table[table["split"] == "test"]
    assert (test["given_split"] == "test").all()
    assert (table.loc[table["split"] == "val", "given_split"] == "train").all()
    assert origin["test"] == "given test split"
    assert "carved from the given training split" in origin["val"]
    again, _ = split.assign_splits(manifest.sample(frac=1, random_state=2), (0.7, 0.2, 0.1), seed=3)
    assert dict(zip(table["key"], table["split"])) == dict(zip(again["key"], again["split"]))  # seeded
    split.assert_no_leakage(table)


def test_auto_keeps_given_val_and_test_and_carves_nothing():
    manifest = _given({"train": {"a": 30, "b": 30}, "val": {"a": 5, "b": 4}, "test": {"a": 3, "b": 2}})
    table, origin = split.assign_splits(manifest, (0.7, 0.2, 0.1), seed=1)
    assert _counts(table) == {"a": [30, 5, 3], "b": [30, 4, 2]}
    assert (table["split"] == table["given_split"]).all()
    assert origin == {"train": "given training split", "val": "given validation split", "test": "given test split"}


def test_auto_carves_test_from_train_when_only_val_is_given():
    table, _ = split.assign_splits(_given({"train": {"a": 80}, "val": {"a": 9}}), (0.7, 0.2, 0.1), seed=1)
    assert _counts(table) == {"a": [70, 9, 10]}  # test = round(80 x 0.1/0.8)


def test_ignore_pools_every_labelled_image():
    manifest = _given({"train": {"a": 90}, "test": {"a": 10}})
    table, origin = split.assign_splits(manifest, (0.7, 0.2, 0.1), seed=1, policy="ignore")
    assert _counts(table) == {"a": [70, 20, 10]}
    assert (table["given_split"] == "test").sum() == 10  # the given split is still recorded
    assert "predefined_split=ignore pools the given splits" in origin["test"]


def test_a_class_without_given_test_images_is_an_error_naming_it():
    manifest = _given({"train": {"a": 20, "b": 20}, "test": {"a": 3}})
    with pytest.raises(split.SplitError, match="class 'b' has no valid images in the dataset's given test split"):
        split.assign_splits(manifest, (0.7, 0.2, 0.1), seed=1)


def test_run_on_a_pre_split_dataset_records_layout_and_origin(tmp_path):
    from tests.helpers import build

    root = build(
        tmp_path / "ds",
        {
            **{f"data/train/{c}/{i}.png": None for c in "ab" for i in range(18)},
            **{f"data/test/{c}/{i}.png": None for c in "ab" for i in range(4)},
        },
    )
    config = PipelineConfig.from_dict(
        {
            "store_uri": f"file://{tmp_path / 'store'}",
            "dataset_checksum": None,
            "dataset_url": str(root),
            "min_images_per_class": 5,
        }
    )
    ctx = RunContext.create(config, "presplit")
    download.run(ctx)
    split.run(ctx)
    analysis = ctx.store.get_json(ctx.data_key("analysis.json"))
    assert analysis["counts"] == {"train": {"a": 14, "b": 14}, "val": {"a": 4, "b": 4}, "test": {"a": 4, "b": 4}}
    assert analysis["layout"]["kind"] == "train/test"
    assert analysis["layout"]["wrapper"] == "data"
    assert analysis["origin"]["test"] == "given test split"
    table = pd.read_csv(io.StringIO(ctx.store.get_text(ctx.data_key("split.csv"))), keep_default_na=False)
    assert list(table.columns) == ["key", "class", "label", "split", "given_split"]
    assert set(table.loc[table["split"] == "test", "given_split"]) == {"test"}
    from cnn_tasks import report_text

    part = report_text.layout_part(analysis)  # the report's data section
    assert part["text"].startswith(
        "Layout found: train/test below data/ (predefined_split=auto). Given splits: "
        "train = data/train/, test = data/test/."
    )
    origins = {row["split"]: row["images come from"] for row in part["origins"]}
    assert origins["test"] == "given test split"
    assert "carved from the given training split" in origins["validation"]
    assert any("duplicate_across_splits" in note for note in part["notes"])
