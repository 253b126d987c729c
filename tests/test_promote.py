"""Promotion: accepts a better model, refuses a worse one or a failed guard, keeps every old champion."""

from __future__ import annotations

import numpy as np
import pytest

from cnn_tasks import promote
from tests.test_evaluate import CLASSES, class_images, tiny_model


@pytest.mark.parametrize("value, accuracy, champion, comparable, expected", [
    (0.90, 0.90, 0.80, True, True),     # better
    (0.80, 0.90, 0.80, True, False),    # equal is not better
    (0.70, 0.90, 0.80, True, False),    # worse
    (0.99, 0.40, 0.10, True, False),    # guard: accuracy below the minimum
    (0.90, 0.90, None, False, False),   # champion incomparable
])
def test_decide(value, accuracy, champion, comparable, expected):
    promoted, reason = promote.decide(value, accuracy, champion, comparable, True, margin=0.0, min_accuracy=0.5)
    assert promoted is expected and reason
    assert promote.decide(0.81, 0.9, 0.80, True, True, margin=0.05, min_accuracy=0.5)[0] is False
    assert promote.decide(0.6, 0.6, None, False, False, margin=0.0, min_accuracy=0.5)[0] is True


def test_ensemble_best_deploys_its_best_member():
    rows = [{"name": "a", "kind": "model", "members": ["a"], "macro_f1": 0.7},
            {"name": "b", "kind": "model", "members": ["b"], "macro_f1": 0.8},
            {"name": "soft[all]", "kind": "ensemble", "members": ["a", "b"], "macro_f1": 0.9}]
    best, deployable = promote.pick_candidate(rows, "macro_f1")
    assert best["name"] == "soft[all]" and deployable["name"] == "b"


@pytest.fixture
def pipeline(make_ctx, monkeypatch, tmp_path):
    """Runs sharing one store; each deploys the trained tiny model. The champion is re-evaluated on
    `labels["shift"]`-shifted test labels, so a test can make it look good (0) or hopeless (1)."""
    import keras

    model_path = tmp_path / "model.keras"
    tiny_model().save(model_path)
    x, y = class_images(4, seed=9)
    labels = {"shift": 0}
    monkeypatch.setattr(promote, "_dataset_info", lambda ctx: {"classes": CLASSES, "image_size": 16,
                                                               "dataset_sha256": "abc"})
    monkeypatch.setattr(promote, "_test_arrays", lambda ctx: (x, (y + labels["shift"]) % 3))
    monkeypatch.setattr(promote, "_load_model", lambda path: keras.models.load_model(path))

    def new_run(run_id: str, macro_f1: float, accuracy: float):
        ctx = make_ctx(run_id, promotion_min_accuracy=0.5)
        ctx.store.put_file(ctx.model_key("tiny__balanced", "model.keras"), model_path)
        rows = [{"name": "tiny__balanced", "kind": "model", "members": ["tiny__balanced"], "macro_f1": macro_f1,
                 "accuracy": accuracy}]
        ctx.store.put_json(ctx.eval_key("ensemble", "ensemble.json"), {"comparison": rows})
        return ctx

    return new_run, labels


def test_promotion_history(pipeline):
    new_run, labels = pipeline
    first = new_run("run1", macro_f1=0.6, accuracy=0.6)
    out = promote.run(first)
    assert out["promoted"] and out["decision"] == "promoted"
    store = first.store
    first_champion = store.get_json("champion.json")
    assert first_champion["run_id"] == "run1" and store.exists("champions/run1/model.keras")

    labels["shift"] = 1  # the champion now scores 0 on the test split: a better model wins
    second = new_run("run2", macro_f1=0.9, accuracy=0.9)
    out = promote.run(second)
    assert out["promoted"] and out["champion_value"] == 0.0
    assert store.get_json("champion.json")["run_id"] == "run2"
    assert store.get_json(promote.history_key(first_champion)) == first_champion  # old one kept
    assert store.exists("champions/run1/model.keras") and store.exists("champions/run2/model.keras")
    assert len(store.list("champions/history/")) == 2

    labels["shift"] = 0  # the champion is perfect again: a worse model is refused
    third = new_run("run3", macro_f1=0.7, accuracy=0.7)
    out = promote.run(third)
    assert not out["promoted"] and out["champion_value"] == pytest.approx(1.0)
    record = store.get_json(third.key("promotion.json"))
    assert record["decision"] == "kept current champion" and record["previous_champion"]["run_id"] == "run2"

    labels["shift"] = 1
    fourth = new_run("run4", macro_f1=0.95, accuracy=0.4)  # would win, but fails the accuracy guard
    out = promote.run(fourth)
    assert not out["promoted"] and "guard failed" in out["reason"]
    record = fourth.store.get_json(fourth.key("promotion.json"))
    assert record["guards"][0]["ok"] is False
    assert store.get_json("champion.json")["run_id"] == "run2"
    assert len(store.list("champions/history/")) == 2


def test_champion_with_other_classes_is_incomparable(pipeline):
    new_run, _ = pipeline
    ctx = new_run("run5", macro_f1=0.9, accuracy=0.9)
    old = {"run_id": "old", "model_id": "m", "model_key": "champions/old/model.keras", "metric": "macro_f1",
           "value": 0.5, "classes": ["cat", "dog"], "promoted_at": "20240101T000000Z"}
    ctx.store.put_json("champion.json", old)
    out = promote.run(ctx)
    record = ctx.store.get_json(ctx.key("promotion.json"))
    assert not out["promoted"] and record["champion_on_this_test"]["comparable"] is False
    assert "differ" in record["champion_on_this_test"]["why"]
    assert ctx.store.get_json("champion.json") == old
    np.testing.assert_equal(out["champion_value"], None)
