"""Evaluation: metrics equal scikit-learn's, ECE by hand, figures and tables per class, the stage."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from sklearn import metrics as skm

from cnn_tasks import evaluate
from tests.imagegen import class_image

CLASSES = ["alpha", "beta", "gamma"]


# ----------------------------------------------------------------------------- shared helpers (other test files use them)
def class_images(n_per_class: int = 8, n_classes: int = 3, seed: int = 0, size: int = 16):
    """float32 images 0..255 [N, size, size, 3] and int labels, from tests.imagegen."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = np.stack([np.asarray(class_image(int(c), rng, size), dtype=np.float32) for c in y])
    return x, y.astype(np.int32)


@functools.lru_cache(maxsize=None)
def tiny_model(trained: bool = True, n_classes: int = 3):
    """A tiny Sequential CNN in the project's shape (Input, Normalization 'standardize', conv, softmax)."""
    import keras

    keras.utils.set_random_seed(0)
    x, y = class_images(12, n_classes, seed=1)
    norm = keras.layers.Normalization(name="standardize", mean=x.mean(axis=(0, 1, 2)), variance=x.var(axis=(0, 1, 2)))
    model = keras.Sequential([keras.Input((16, 16, 3)), norm, keras.layers.Conv2D(8, 3, name="conv1"),
                              keras.layers.Activation("relu", name="act1"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(n_classes, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    if trained:
        model.fit(x, y, epochs=40, batch_size=len(x), verbose=0)
    return model


def random_proba(n: int, n_classes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(n_classes), size=n)


def store_figure_exists(store, key: str) -> bool:
    return store.exists(key) and store.get_bytes(key)[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- metrics
def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)
    proba = random_proba(60, 3, seed=4)
    proba[np.arange(30), y[:30]] += 1.0  # half of them right
    proba /= proba.sum(axis=1, keepdims=True)
    pred = proba.argmax(axis=1)
    m = evaluate.classification_metrics(y, proba, CLASSES)
    assert m["accuracy"] == skm.accuracy_score(y, pred)
    assert m["balanced_accuracy"] == skm.balanced_accuracy_score(y, pred)
    for avg in ("macro", "weighted"):
        assert m[f"{avg}_f1"] == skm.f1_score(y, pred, average=avg)
        assert m[f"{avg}_precision"] == skm.precision_score(y, pred, average=avg)
        assert m[f"{avg}_recall"] == skm.recall_score(y, pred, average=avg)
    assert m["macro_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"), abs=1e-12)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba), abs=1e-12)

    table = evaluate.classification_table(y, proba, CLASSES).set_index("class")
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
    assert evaluate.expected_calibration_error(y, proba) == pytest.approx(expected, abs=1e-12)
    assert evaluate.expected_calibration_error(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0


def test_wrong_examples_are_most_confident_first():
    y = np.array([0, 0, 1, 1, 0])
    proba = np.array([[0.4, 0.6], [0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.9, 0.1]])
    assert list(evaluate.select_examples(y, proba, correct=False)) == [1, 2, 0]
    assert sorted(evaluate.select_examples(y, proba, correct=True)) == [3, 4]


def test_figures_and_tables_exist_for_every_class(tmp_path):
    from cnn_tasks.storage import LocalStore

    store = LocalStore(tmp_path / "store")
    classes = ["a", "b", "c", "d"]
    y = np.repeat(np.arange(4), 6)
    proba = random_proba(24, 4, seed=1)
    proba[np.arange(24), y] += 0.5
    proba /= proba.sum(axis=1, keepdims=True)
    images = np.random.default_rng(0).uniform(0, 255, (24, 8, 8, 3)).astype(np.float32)
    result = evaluate.evaluate_predictions(store, lambda n: f"ev/{n}", classes, {"test": (y, proba), "val": (y, proba)},
                                           images, name="m")
    keys = [f["key"] for f in result["figures"]]
    for name in ("confusion_test.png", "confusion_val.png", "roc_test.png", "pr_test.png", "reliability_test.png",
                 "examples_correct.png", "examples_wrong.png"):
        assert f"ev/{name}" in keys and store_figure_exists(store, f"ev/{name}")
    assert all(f["caption"] for f in result["figures"])
    table = result["table"].set_index("class")
    assert table.loc[classes, "roc_auc"].notna().all() and table.loc[classes, "average_precision"].notna().all()
    assert result["splits"]["test"]["macro_auc"] is not None


def test_run_writes_metrics_predictions_and_report(make_ctx, monkeypatch):
    ctx = make_ctx()
    model = tiny_model()
    data = {"test": class_images(4, seed=5), "val": class_images(3, seed=6), "train": class_images(5, seed=7)}
    monkeypatch.setattr(evaluate, "_dataset_info", lambda ctx: {"classes": CLASSES, "image_size": 16})
    monkeypatch.setattr(evaluate, "_load_model", lambda ctx, mid: model)
    monkeypatch.setattr(evaluate, "_split_arrays",
                        lambda ctx, split: (*data[split], [f"{split}{i}" for i in range(len(data[split][1]))]))

    out = evaluate.run(ctx, "tiny__unbalanced")

    metrics = ctx.store.get_json(ctx.eval_key("tiny__unbalanced", "metrics.json"))
    assert set(metrics["splits"]) == {"test", "val", "train"}
    assert out["accuracy"] == metrics["splits"]["test"]["accuracy"] and out["macro_f1"] == metrics["splits"]["test"]["macro_f1"]
    assert all(store_figure_exists(ctx.store, f["key"]) for f in metrics["figures"])
    npz = evaluate.load_predictions(ctx.store, ctx.eval_key("tiny__unbalanced", "predictions.npz"))
    assert set(npz) == {"y_test", "p_test", "y_val", "p_val", "keys_test"}
    assert npz["p_test"].shape == (12, 3) and list(npz["keys_test"][:2]) == ["test0", "test1"]
    np.testing.assert_allclose(npz["p_test"], model.predict(data["test"][0], verbose=0), rtol=1e-5, atol=1e-6)
    csv = ctx.store.get_text(ctx.eval_key("tiny__unbalanced", "classification_report.csv"))
    assert csv.splitlines()[0].startswith("class,precision,recall,f1-score,support")
    assert ctx.store.exists(ctx.eval_key("tiny__unbalanced", "classification_report.json"))
