"""Evaluation: metrics equal scikit-learn's, ECE by hand, figures and tables per class, the stage
on a real dataset.json + shards and a real saved model, the streamed (and sampled) training split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from cnn_tasks import data, evaluate, metrics
from tests.fixtures_training import write_training_dataset
from tests.helpers import CLASSES, random_proba, store_figure_exists, tiny_model

MID = "tiny__unbalanced"
TRAIN_COUNTS = [8, 6, 4]  # imbalanced on purpose: a stratified sample must keep the proportions


# ----------------------------------------------------------------------------- metrics
def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)
    proba = random_proba(60, 3, seed=4)
    proba[np.arange(30), y[:30]] += 1.0  # half of them right
    proba /= proba.sum(axis=1, keepdims=True)
    pred = proba.argmax(axis=1)
    m = metrics.classification_metrics(y, proba, CLASSES)
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["balanced_accuracy"] == skm.balanced_accuracy_score(y, pred)
    for avg in ("macro", "weighted"):
        assert m[f"{avg}_f1"] == skm.f1_score(y, pred, average=avg)
        assert m[f"{avg}_precision"] == skm.precision_score(y, pred, average=avg)
        assert m[f"{avg}_recall"] == skm.recall_score(y, pred, average=avg)
    assert m["macro_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"), abs=1e-12)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba), abs=1e-12)

    table = metrics.classification_table(y, proba, CLASSES).set_index("class")
    report = skm.classification_report(y, pred, target_names=CLASSES, output_dict=True)
    for name in CLASSES + ["macro avg", "weighted avg"]:
        for column in ("precision", "recall", "f1-score", "support"):
            assert table.loc[name, column] == report[name][column]
    assert table.loc["accuracy", "f1-score"] == report["accuracy"]
    assert table.loc["balanced accuracy", "f1-score"] == skm.balanced_accuracy_score(y, pred)
    for c, name in enumerate(CLASSES):
        assert table.loc[name, "roc_auc"] == skm.roc_auc_score(y == c, proba[:, c])
        assert table.loc[name, "average_precision"] == skm.average_precision_score(y == c, proba[:, c])


def test_ece_equals_hand_computed_value():
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.38, 0.62]])
    y = np.array([0, 1, 1, 0])
    # bins of width 1/15: two at 0.9 (one right) | one at 0.7 (right) | one at 0.62 (wrong)
    expected = 2 / 4 * abs(0.5 - 0.9) + 1 / 4 * abs(1 - 0.7) + 1 / 4 * abs(0 - 0.62)
    assert metrics.expected_calibration_error(y, proba) == pytest.approx(expected, abs=1e-12)
    assert metrics.expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0


def test_wrong_examples_are_most_confident_first():
    y = np.array([0, 0, 1, 1, 0])
    proba = np.array([[0.4, 0.6], [0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.9, 0.1]])
    assert list(metrics.select_examples(y, proba, correct=False)) == [1, 2, 0]
    assert sorted(metrics.select_examples(y, proba, correct=True)) == [3, 4]


@pytest.mark.parametrize("n_classes", [3, 10, 25])
def test_confusion_numbers_read_at_page_width(tmp_path, monkeypatch, n_classes):
    """The report shows confusion figures metrics.CONFUSION_PAGE_PX wide: the cell numbers stay about
    11 px there (at least 10) however many classes, and fit inside their cells."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    from cnn_tasks.storage import LocalStore

    kept, close = [], plt.close
    monkeypatch.setattr(plt, "close", kept.append)  # plots.save_figure closes the figure: keep it to inspect
    store = LocalStore(tmp_path)
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 40 * n_classes)
    proba = random_proba(len(y), n_classes, seed=2)
    proba[np.arange(len(y)), y] += 0.3
    names = [f"a_long_class_name_{i}" for i in range(n_classes)]
    metrics.plot_confusion(store, "cm.png", y, proba, names, "m test")
    width = Image.open(io.BytesIO(store.get_bytes("cm.png"))).size[0]
    fig = kept[0]
    try:
        counts, shares = fig.axes[:2]
        texts = counts.texts + shares.texts
        assert len(texts) == 2 * n_classes**2  # every cell has its number, in both panels
        on_page = min(1.0, metrics.CONFUSION_PAGE_PX / width)  # shown at its size, at most the page's 1000 px
        pixels = {round(t.get_fontsize() * 110 / 72 * on_page, 1) for t in texts}
        assert min(pixels) >= 10, pixels
        assert max(pixels) <= 20, pixels  # not blown up either
        renderer = fig.canvas.get_renderer()
        cell = counts.transData.transform((1, 0))[0] - counts.transData.transform((0, 0))[0]
        assert max(t.get_window_extent(renderer).width for t in texts) < cell  # "100" fits its cell
        assert [t.get_text() for t in shares.texts if t.get_text() not in map(str, range(101))] == []  # whole %
        side_by_side = bool(counts.get_position().y0 == pytest.approx(shares.get_position().y0))
        assert side_by_side is (n_classes <= metrics.CONFUSION_SIDE_BY_SIDE)
    finally:
        for f in kept:
            close(f)


def test_figures_and_tables_exist_for_every_class(tmp_path):
    from cnn_tasks.storage import LocalStore

    store = LocalStore(tmp_path / "store")
    classes = ["a", "b", "c", "d"]
    y = np.repeat(np.arange(4), 6)
    proba = random_proba(24, 4, seed=1)
    proba[np.arange(24), y] += 0.5
    proba /= proba.sum(axis=1, keepdims=True)
    images = np.random.default_rng(0).uniform(0, 255, (24, 8, 8, 3)).astype(np.float32)
    sample = "seeded stratified sample of 24 of 240 images (seed 0)"
    result = metrics.evaluate_predictions(
        store,
        lambda n: f"ev/{n}",
        classes,
        {"test": (y, proba), "val": (y, proba)},
        images,
        name="m",
        evaluated={"val": sample},
    )
    keys = [f["key"] for f in result["figures"]]
    captions = {f["key"]: f["caption"] for f in result["figures"]}
    assert f"val split ({sample})" in captions["ev/confusion_val.png"]
    assert "test split (full split, 24 images)" in captions["ev/confusion_test.png"]
    assert "(full split, 24 images)" in captions["ev/roc_test.png"]
    np.testing.assert_array_equal(result["confusion"]["test"], skm.confusion_matrix(y, proba.argmax(axis=1)))
    for name in (
        "confusion_test.png",
        "confusion_val.png",
        "roc_test.png",
        "pr_test.png",
        "reliability_test.png",
        "examples_correct.png",
        "examples_wrong.png",
    ):
        assert f"ev/{name}" in keys
        assert store_figure_exists(store, f"ev/{name}")
    assert all(f["caption"] for f in result["figures"])
    table = result["table"].set_index("class")
    assert table.loc[classes, "roc_auc"].notna().all()
    assert table.loc[classes, "average_precision"].notna().all()
    assert result["splits"]["test"]["macro_auc"] is not None


@pytest.fixture
def evaluated_ctx(make_ctx, tmp_path):
    """A run with a real data/dataset.json + shards (3 classes, 16 px) and the tiny model saved as
    models/<MID>/model.keras."""
    ctx = make_ctx()
    write_training_dataset(ctx, classes=3, train=TRAIN_COUNTS, val=3, test=4, size=16, per_shard=7)
    tiny_model().save(tmp_path / "model.keras")
    ctx.store.put_file(ctx.model_key(MID, "model.keras"), tmp_path / "model.keras")
    return ctx


def test_run_writes_metrics_predictions_and_report(evaluated_ctx):
    ctx = evaluated_ctx
    model = tiny_model()

    out = evaluate.run(ctx, MID)

    record = ctx.store.get_json(ctx.eval_key(MID, "metrics.json"))
    assert set(record["splits"]) == {"test", "val", "train"}
    assert record["classes"] == data.load_dataset_info(ctx)["classes"] == ["class_a", "class_b", "class_c"]
    assert out["accuracy"] == record["splits"]["test"]["accuracy"]
    assert out["macro_f1"] == record["splits"]["test"]["macro_f1"]
    assert all(store_figure_exists(ctx.store, f["key"]) for f in record["figures"])
    npz = metrics.load_predictions(ctx.store, ctx.eval_key(MID, "predictions.npz"))
    assert set(npz) == {"y_test", "p_test", "y_val", "p_val", "keys_test"}
    x_test, y_test, keys_test = data.load_split_arrays(ctx, "test")
    assert npz["p_test"].shape == (12, 3)
    assert list(npz["keys_test"]) == keys_test
    np.testing.assert_array_equal(npz["y_test"], y_test)
    np.testing.assert_allclose(npz["p_test"], model.predict(x_test, verbose=0), rtol=1e-5, atol=1e-6)
    x_val, y_val, _ = data.load_split_arrays(ctx, "val")
    np.testing.assert_array_equal(npz["y_val"], y_val)
    np.testing.assert_allclose(npz["p_val"], model.predict(x_val, verbose=0), rtol=1e-5, atol=1e-6)
    csv = ctx.store.get_text(ctx.eval_key(MID, "classification_report.csv"))
    assert csv.splitlines()[0].startswith("class,precision,recall,f1-score,support")
    assert ctx.store.exists(ctx.eval_key(MID, "classification_report.json"))

    # the training split (under TRAIN_SAMPLE_MAX) is evaluated in full: every image counted once
    x_train, y_train, _ = data.load_split_arrays(ctx, "train")
    confusion = np.array(record["confusion_matrices"]["train"])
    assert confusion.sum() == len(y_train) == sum(TRAIN_COUNTS) == record["splits"]["train"]["count"]
    assert confusion.sum(axis=1).tolist() == TRAIN_COUNTS
    np.testing.assert_array_equal(confusion, skm.confusion_matrix(y_train, model.predict(x_train, verbose=0).argmax(1)))
    assert record["evaluated"] == {
        split: {
            "images": n,
            "split_images": n,
            "full_split": True,
            "seed": None,
            "description": f"full split, {n} images",
        }
        for split, n in (("test", 12), ("val", 9), ("train", 18))
    }
    captions = {f["key"].rsplit("/", 1)[1]: f["caption"] for f in record["figures"]}
    assert "on the train split (full split, 18 images)" in captions["confusion_train.png"]
    assert "on the test split (full split, 12 images)" in captions["roc_test.png"]


def test_stratified_quota_is_proportional_and_sums_to_the_cap():
    assert evaluate.stratified_quota([8, 6, 4], 9) == [4, 3, 2]
    assert evaluate.stratified_quota([8, 6, 4], 18) == [8, 6, 4] == evaluate.stratified_quota([8, 6, 4], None)
    assert evaluate.stratified_quota([5, 1, 1], 4) == [3, 1, 0]  # largest remainders, ties to the lower class
    for counts in ([2700, 2400, 3000, 1400, 1750, 2000, 1800, 2500, 2100, 2000], [1, 997, 3]):
        quota = evaluate.stratified_quota(counts, 300)
        assert sum(quota) == 300
        assert all(0 <= q <= c for q, c in zip(quota, counts))


def test_training_split_over_the_cap_is_a_seeded_stratified_sample(evaluated_ctx, make_ctx, monkeypatch):
    ctx = evaluated_ctx
    monkeypatch.setattr(evaluate, "PREDICT_BATCH", 5)  # the sample spans several streamed batches
    model = tiny_model()
    x, y, _ = data.load_split_arrays(ctx, "train")

    sample = evaluate.predict_split(ctx, model, "train", max_images=9)

    assert np.bincount(sample["y"]).tolist() == [4, 3, 2]  # proportional to TRAIN_COUNTS
    assert len(set(sample["index"])) == 9
    assert list(sample["index"]) == sorted(sample["index"])
    np.testing.assert_array_equal(sample["y"], y[sample["index"]])
    np.testing.assert_allclose(sample["proba"], model.predict(x[sample["index"]], verbose=0), rtol=1e-5, atol=1e-6)
    seed = ctx.config.seed
    assert sample["evaluated"] == {
        "images": 9,
        "split_images": 18,
        "full_split": False,
        "seed": seed,
        "description": f"seeded stratified sample of 9 of 18 images (seed {seed})",
    }
    again = evaluate.predict_split(ctx, model, "train", max_images=9)
    np.testing.assert_array_equal(again["index"], sample["index"])  # seeded: the same images every time
    reseeded = evaluate.predict_split(make_ctx(seed=seed + 1), model, "train", max_images=9)  # same run and store
    assert not np.array_equal(reseeded["index"], sample["index"])
    full = evaluate.predict_split(ctx, model, "train")
    np.testing.assert_array_equal(full["index"], np.arange(18))
    np.testing.assert_array_equal(full["y"], y)
    assert full["evaluated"]["description"] == "full split, 18 images"


def test_run_over_the_cap_says_it_evaluated_a_training_sample(evaluated_ctx, monkeypatch):
    ctx = evaluated_ctx
    monkeypatch.setattr(evaluate, "TRAIN_SAMPLE_MAX", 9)
    evaluate.run(ctx, MID)
    record = ctx.store.get_json(ctx.eval_key(MID, "metrics.json"))
    description = f"seeded stratified sample of 9 of 18 images (seed {ctx.config.seed})"
    train = record["evaluated"]["train"]
    assert train["description"] == description
    assert not train["full_split"]
    assert train["split_images"] == 18
    assert record["splits"]["train"]["count"] == np.sum(record["confusion_matrices"]["train"]) == 9
    assert np.sum(record["confusion_matrices"]["train"], axis=1).tolist() == [4, 3, 2]
    assert record["evaluated"]["test"]["full_split"]
    assert record["evaluated"]["val"]["full_split"]  # never sampled
    captions = {f["key"].rsplit("/", 1)[1]: f["caption"] for f in record["figures"]}
    assert f"on the train split ({description})" in captions["confusion_train.png"]


class TopLeftModel:
    """Predicts class 0 when an image's top-left pixel is bright, else class 1."""

    def predict(self, images, batch_size=None, verbose=0):
        bright = (images[:, 0, 0, 0] > 127).astype(np.float32)
        return np.stack([bright, 1 - bright], axis=1)


def test_test_time_augmentation_averages_the_presets_flips():
    images = np.zeros((1, 4, 4, 3), np.float32)
    images[:, 0, 0] = 255.0  # bright only at the top left: each flip moves it away
    model = TopLeftModel()
    np.testing.assert_allclose(evaluate.predict_views(model, images, ["identity"]), [[1.0, 0.0]])
    np.testing.assert_allclose(evaluate.predict_views(model, images, evaluate.TTA_VIEWS["natural"]), [[0.5, 0.5]])
    np.testing.assert_allclose(evaluate.predict_views(model, images, evaluate.TTA_VIEWS["aerial"]), [[0.25, 0.75]])


def test_run_with_tta_reports_its_scores_beside_the_plain_ones(evaluated_ctx, make_ctx):
    plain = evaluate.run(evaluated_ctx, MID)
    assert "tta" not in evaluated_ctx.store.get_json(evaluated_ctx.eval_key(MID, "metrics.json"))
    ctx = make_ctx(tta=True, augment="aerial")  # same store and run; aerial: four views
    out = evaluate.run(ctx, MID)
    record = ctx.store.get_json(ctx.eval_key(MID, "metrics.json"))
    assert record["tta"]["views"] == ["identity", "flip_left_right", "flip_up_down", "rotate_180"]
    x_test, y_test, _ = data.load_split_arrays(ctx, "test")
    expected = evaluate.predict_views(tiny_model(), x_test, record["tta"]["views"])
    wanted = metrics.classification_metrics(y_test, expected, record["classes"])
    for name in ("count", "accuracy", "macro_f1"):
        assert record["tta"]["test"][name] == wanted[name], name
    assert record["tta"]["test"]["log_loss"] == pytest.approx(wanted["log_loss"], rel=1e-5)
    assert out["tta_accuracy"] == record["tta"]["test"]["accuracy"]
    assert out["accuracy"] == plain["accuracy"]  # the plain scores do not change
    assert plain["tta_accuracy"] is None
