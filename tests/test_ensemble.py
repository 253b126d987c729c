"""Ensembles: votes (with a tie), fitted weights, subsets and the stage on crafted predictions."""

from __future__ import annotations

import numpy as np
import pytest

from cnn_tasks import ensemble
from cnn_tasks.errors import PipelineError
from tests.helpers import random_proba, store_figure_exists


def test_soft_and_hard_votes_with_a_tie():
    m1 = np.array([[0.6, 0.3, 0.1], [0.5, 0.3, 0.2], [0.40, 0.35, 0.25]])
    m2 = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.40, 0.35, 0.25]])
    m3 = np.array([[0.1, 0.2, 0.7], [0.05, 0.05, 0.9], [0.0, 0.0, 1.0]])
    hard = ensemble.hard_vote([m1, m2, m3])
    soft = ensemble.soft_vote([m1, m2, m3])
    # row 0: votes 0,0,2 -> 0 | row 1: votes 0,1,2, a three-way tie -> highest mean probability (class 2)
    # row 2: votes 0,0,2 -> 0 by majority although the mean probability favours 2
    assert list(hard.argmax(axis=1)) == [0, 2, 0]
    assert list(soft.argmax(axis=1)) == [0, 2, 2]
    np.testing.assert_allclose(hard.sum(axis=1), 1.0)
    np.testing.assert_allclose(soft[1], [0.65 / 3, 0.85 / 3, 1.5 / 3])


def test_weights_favour_the_perfect_model_and_are_deterministic():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    perfect = np.full((200, 3), 0.05)
    perfect[np.arange(200), y] = 0.9
    noisy = [random_proba(200, 3, seed=s) for s in (1, 2, 3)]
    probas = [noisy[0], perfect, noisy[1], noisy[2]]
    weights = ensemble.fit_weights(probas, y)
    assert weights.argmax() == 1
    assert weights[1] > 0.9
    assert np.all(weights >= 0)
    assert np.isclose(weights.sum(), 1.0)
    np.testing.assert_array_equal(weights, ensemble.fit_weights(probas, y))
    np.testing.assert_allclose(ensemble.weighted_vote(probas, [0, 1, 0, 0]), perfect)


def test_subsets_skip_too_small_or_duplicate_groups():
    kept, skipped = ensemble.subsets(["a__balanced", "a__unbalanced", "b__unbalanced"])
    assert kept == {
        "all": ["a__balanced", "a__unbalanced", "b__unbalanced"],
        "unbalanced": ["a__unbalanced", "b__unbalanced"],
    }
    assert len(skipped) == 1
    assert skipped[0].startswith("balanced")
    kept, _ = ensemble.subsets(["a__unbalanced", "b__unbalanced"])
    assert list(kept) == ["all"]


def write_model_predictions(ctx, model_ids, classes, n=30, seed=0):
    """Evaluate-stage outputs (predictions.npz + metrics.json), as evaluate writes them, for crafted models."""
    from cnn_tasks import evaluate

    rng = np.random.default_rng(seed)
    y_test, y_val = rng.integers(0, len(classes), n), rng.integers(0, len(classes), n)
    for i, mid in enumerate(model_ids):
        p_test, p_val = random_proba(n, len(classes), seed + 10 * i), random_proba(n, len(classes), seed + 10 * i + 1)
        strength = 0.5 + 0.4 * i  # later models are better
        p_test[np.arange(n), y_test] += strength
        p_val[np.arange(n), y_val] += strength
        p_test /= p_test.sum(1, keepdims=True)
        p_val /= p_val.sum(1, keepdims=True)
        splits = {"test": (y_test, p_test), "val": (y_val, p_val)}
        images = rng.uniform(0, 255, (n, 8, 8, 3)).astype(np.float32)
        evaluate.write_results(ctx, mid, classes, splits, images, [f"k{j}" for j in range(n)])


def test_run_compares_every_model_and_ensemble(make_ctx):
    ctx = make_ctx()
    ids = ["a__unbalanced", "b__unbalanced", "a__balanced"]
    write_model_predictions(ctx, ids, ["x", "y", "z"])
    out = ensemble.run(ctx, ids)
    doc = ctx.store.get_json(out["ensemble_key"])
    names = [r["name"] for r in doc["comparison"]]
    assert sorted(names[:3]) == sorted(ids)
    assert set(names[3:]) == {f"{m}[{s}]" for m in ("soft", "hard", "weighted") for s in ("all", "unbalanced")}
    assert sum(r["best"] for r in doc["comparison"]) == 1
    best = max(doc["comparison"], key=lambda r: r["macro_f1"])
    assert doc["best"] == best["name"] == out["best"]
    for row in doc["comparison"]:
        assert {
            "accuracy",
            "balanced_accuracy",
            "macro_precision",
            "macro_recall",
            "macro_f1",
            "macro_auc",
            "ece",
        } <= set(row)
    assert doc["best_ensemble"] in names[3:]
    for figure in ("confusion_test.png", "roc_test.png", "pr_test.png"):
        assert any(f["key"].endswith(figure) for f in doc["figures"])
    assert all(store_figure_exists(ctx.store, f["key"]) for f in doc["figures"])
    weights = doc["ensembles"]["weighted[all]"]["weights"]
    assert set(weights) == set(ids)
    assert abs(sum(weights.values()) - 1) < 1e-9
    assert ctx.store.get_text(doc["comparison_key"]).startswith("name,kind,members")


def test_a_member_without_predictions_fails_the_ensemble_naming_it(make_ctx):
    """A model that was evaluated but whose predictions are gone (deleted from the store between the
    tasks) must fail the stage, not be left out of the ensembles and the champion decision quietly."""
    ctx = make_ctx()
    ids = ["a__unbalanced", "b__unbalanced", "a__balanced"]
    write_model_predictions(ctx, ids, ["x", "y", "z"])
    ctx.store.path(ctx.eval_key("b__unbalanced", "predictions.npz")).unlink()
    with pytest.raises(ensemble.MissingMemberError) as caught:
        ensemble.run(ctx, ids)
    message = str(caught.value)
    assert "b__unbalanced has no file://" in message
    assert "eval/b__unbalanced/predictions.npz" in message
    assert "clear that evaluate task" in message
    assert isinstance(caught.value, PipelineError)  # fails at once, no retries
    assert not ctx.store.exists(ctx.eval_key("ensemble", "ensemble.json"))
