"""Ensembles of the trained models, built only from their saved predictions (eval/<id>/predictions.npz).

Three combiners, each over all models and over the balanced-only and unbalanced-only subsets:
  soft     mean of the members' probabilities;
  hard     majority vote of the members' top-1 classes. Ties are broken by the highest mean
           probability among the tied classes. Its "probabilities" are vote shares with half a
           vote spread by mean probability (votes + 0.5 * mean_p, normalised), so argmax is the
           tie-broken vote and ROC/ECE can still be computed (ECE is not comparable to soft ones);
  weighted weighted mean of probabilities, weights on the simplex minimising validation log-loss
           (scipy SLSQP from uniform weights: deterministic).
Every single model and every ensemble go into one comparison table on the test split.
"""

from __future__ import annotations

import logging

import numpy as np

from cnn_tasks.contracts import EnsembleSummary, ModelMetrics
from cnn_tasks.errors import PipelineError
from cnn_tasks.metrics import classification_metrics, evaluate_predictions, load_predictions

log = logging.getLogger(__name__)


class MissingMemberError(PipelineError, FileNotFoundError):
    """A model the ensemble was asked to combine has no saved predictions."""


METHODS = ("soft", "hard", "weighted")
TABLE_COLUMNS = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "macro_auc", "ece")


# ----------------------------------------------------------------------------- combiners
def soft_vote(probas: list[np.ndarray]) -> np.ndarray:
    return np.mean(probas, axis=0)


def hard_vote(probas: list[np.ndarray]) -> np.ndarray:
    """Majority vote as a probability-like matrix whose argmax is the tie-broken vote."""
    n_classes = probas[0].shape[1]
    votes = sum(np.eye(n_classes)[p.argmax(axis=1)] for p in probas)
    scores = votes + 0.5 * soft_vote(probas)  # < 1 vote in total: only breaks ties
    return scores / scores.sum(axis=1, keepdims=True)


def weighted_vote(probas: list[np.ndarray], weights) -> np.ndarray:
    return np.tensordot(np.asarray(weights, dtype=float), np.asarray(probas), axes=1)


def fit_weights(probas: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Simplex weights minimising the log-loss of the weighted mean on (validation) data."""
    from scipy.optimize import minimize

    stacked = np.asarray(probas, dtype=float)  # models x N x C
    picked = stacked[:, np.arange(len(y)), np.asarray(y, dtype=int)]  # models x N

    def loss(w):
        return -np.mean(np.log(np.clip(w @ picked, 1e-12, None)))

    def grad(w):
        return -np.mean(picked / np.clip(w @ picked, 1e-12, None), axis=1)

    m = len(probas)
    result = minimize(
        loss,
        np.full(m, 1 / m),
        jac=grad,
        method="SLSQP",
        bounds=[(0, 1)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(m)}],
        options={"maxiter": 500, "ftol": 1e-10},
    )
    weights = np.clip(result.x, 0, None)
    return weights / weights.sum()


def subsets(model_ids: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Member lists for 'all', 'balanced' and 'unbalanced'; a subset with < 2 models or identical
    to 'all' is skipped, with the reason returned."""
    groups = {
        "all": list(model_ids),
        "balanced": [m for m in model_ids if m.endswith("__balanced")],
        "unbalanced": [m for m in model_ids if m.endswith("__unbalanced")],
    }
    kept, skipped = {}, []
    for name, members in groups.items():
        if len(members) < 2:
            skipped.append(f"{name}: {len(members)} model(s), an ensemble needs at least 2")
        elif name != "all" and members == groups["all"]:
            skipped.append(f"{name}: same members as 'all'")
        else:
            kept[name] = members
    return kept, skipped


def build_ensembles(preds: dict[str, dict], groups: dict[str, list[str]]) -> dict[str, dict]:
    """Every method over every group: {name: {method, subset, members, weights, p_test, p_val}}."""
    out = {}
    for subset, members in groups.items():
        p_test = [preds[m]["p_test"] for m in members]
        p_val = [preds[m]["p_val"] for m in members]
        weights = fit_weights(p_val, preds[members[0]]["y_val"])
        combos = {
            "soft": (soft_vote(p_test), soft_vote(p_val), None),
            "hard": (hard_vote(p_test), hard_vote(p_val), None),
            "weighted": (weighted_vote(p_test, weights), weighted_vote(p_val, weights), weights),
        }
        for method, (test, val, w) in combos.items():
            out[f"{method}[{subset}]"] = {
                "method": method,
                "subset": subset,
                "members": members,
                "p_test": test,
                "p_val": val,
                "weights": None if w is None else {m: float(x) for m, x in zip(members, w)},
            }
    return out


def comparison_rows(preds: dict[str, dict], ensembles: dict[str, dict], classes: list[str], metric: str) -> list[dict]:
    """One row per single model and per ensemble (test split); the best by `metric` is flagged."""
    rows = []
    for name, p in preds.items():
        rows.append(
            {
                "name": name,
                "kind": "model",
                "members": [name],
                **_row_metrics(classification_metrics(p["y_test"], p["p_test"], classes)),
            }
        )
    y_test = next(iter(preds.values()))["y_test"]
    for name, e in ensembles.items():
        rows.append(
            {
                "name": name,
                "kind": "ensemble",
                "members": e["members"],
                **_row_metrics(classification_metrics(y_test, e["p_test"], classes)),
            }
        )
    best = best_row(rows, metric)
    for row in rows:
        row["best"] = row["name"] == best["name"]
    return rows


def _row_metrics(metrics: dict) -> dict:
    return {column: metrics[column] for column in TABLE_COLUMNS}


def best_row(rows: list[dict], metric: str) -> dict:
    """Highest `metric` (None counts as lowest); ties go to the first row (single models come first)."""
    return max(rows, key=lambda r: -np.inf if r[metric] is None else r[metric])


def check_same_test_set(preds: dict[str, dict]) -> None:
    first_id, first = next(iter(preds.items()))
    for model_id, p in preds.items():
        for name in ("y_test", "y_val", "keys_test"):
            if name in p and name in first and not np.array_equal(p[name], first[name]):
                raise ValueError(
                    f"{model_id} and {first_id} were evaluated on different {name}: ensembles need identical splits"
                )


# ----------------------------------------------------------------------------- the stage
def _classes(ctx, model_id: str) -> list[str]:
    return list(ModelMetrics.read(ctx.store, ctx.eval_key(model_id, "metrics.json"))["classes"])


def run(ctx, model_ids: list[str]) -> dict:
    """Build, compare and save every ensemble of `model_ids` (which must have been evaluated)."""
    import pandas as pd

    store, metric = ctx.store, ctx.config.promotion_metric
    missing = [m for m in model_ids if not store.exists(ctx.eval_key(m, "predictions.npz"))]
    if missing:  # an ensemble (and the champion it picks) without one of its models must not pass for complete
        raise MissingMemberError(
            "cannot build the ensembles: "
            + ", ".join(f"{m} has no {ctx.store.url(ctx.eval_key(m, 'predictions.npz'))}" for m in sorted(missing))
            + ". Its evaluate task did not write it or it was deleted since: clear that evaluate task "
            "(and this one) to evaluate it again."
        )
    model_ids = sorted(model_ids)
    if not model_ids:
        raise ValueError("ensemble: no models given")
    preds = {m: load_predictions(store, ctx.eval_key(m, "predictions.npz")) for m in model_ids}
    check_same_test_set(preds)
    classes = _classes(ctx, model_ids[0])
    groups, skipped = subsets(model_ids)
    ensembles = build_ensembles(preds, groups)
    rows = comparison_rows(preds, ensembles, classes, metric)
    comparison_key = ctx.eval_key("ensemble", "comparison.csv")
    store.put_text(comparison_key, pd.DataFrame(rows).to_csv(index=False), "text/csv")

    figures, best_ensemble = [], None
    ensemble_rows = [r for r in rows if r["kind"] == "ensemble"]
    if ensemble_rows:
        best_ensemble = best_row(ensemble_rows, metric)["name"]
        e, y = ensembles[best_ensemble], preds[model_ids[0]]
        safe = best_ensemble.replace("[", "_").replace("]", "")
        result = evaluate_predictions(
            store,
            lambda n: ctx.eval_key("ensemble", f"{safe}_{n}"),
            classes,
            {"test": (y["y_test"], e["p_test"])},
            name=f"best ensemble {best_ensemble}",
        )
        figures = result["figures"]
    best = next(r for r in rows if r["best"])
    summary = {
        "metric": metric,
        "classes": classes,
        "members": model_ids,
        "skipped": skipped,
        "tie_break": "hard voting: ties between classes with equal votes go to the class with the highest "
        "mean probability over the members; its probabilities are vote shares, so its ECE and AUC "
        "are not comparable with soft ones",
        "ensembles": {n: {k: e[k] for k in ("method", "subset", "members", "weights")} for n, e in ensembles.items()},
        "comparison": rows,
        "comparison_key": comparison_key,
        "best": best["name"],
        "best_kind": best["kind"],
        "best_ensemble": best_ensemble,
        "figures": figures,
        "not_run": None if ensembles else "fewer than 2 evaluated models: " + "; ".join(skipped),
    }
    EnsembleSummary.write(store, ctx.eval_key("ensemble", "ensemble.json"), summary)
    log.info("ensembles: %d built, best overall %s (%s = %s)", len(ensembles), best["name"], metric, best[metric])
    return {
        "ensembles": len(ensembles),
        "best": best["name"],
        "best_kind": best["kind"],
        metric: best[metric],
        "best_ensemble": best_ensemble,
        "ensemble_key": ctx.eval_key("ensemble", "ensemble.json"),
    }
