"""report/summary.json, the machine-readable twin of the report page: what the page shows, as
data (the page's first screen under `results`). Library module: the report stage writes it with
`build_summary(run, sections, headline)` (`run` is its `report.Run`), validated by contracts.Summary.
"""

from __future__ import annotations


def promotion_summary(promotion: dict | None) -> dict | None:
    if promotion is None:
        return None
    metric = promotion["metric"]
    champion_metrics = (promotion.get("champion_on_this_test") or {}).get("metrics") or {}
    return {
        **{
            k: promotion.get(k)
            for k in (
                "decision",
                "promoted",
                "reason",
                "metric",
                "margin",
                "candidate_note",
                "champion_key",
                "history_key",
            )
        },
        "candidate": promotion["candidate"]["name"],
        "value": promotion["candidate"].get(metric),
        "best": promotion["best"]["name"],
        "champion_value": champion_metrics.get(metric),
    }


def build_summary(run, sections: list[dict], headline: dict) -> dict:
    """The machine-readable twin of the page."""
    ctx, evals, metas, ensemble = run.ctx, run.evals, run.metas, run.ensemble

    def split_metrics(mid):
        return evals[mid]["splits"] if mid in evals else {"test": None, "status": "not evaluated"}

    return {
        "run_id": ctx.run_id,
        "config": ctx.config.to_dict(),
        "versions": run.versions,
        "dataset": {k: (run.dataset or {}).get(k) for k in ("dataset_sha256", "classes", "image_size", "rebalance")},
        "models": {
            mid: {
                **split_metrics(mid),
                **({"test_tta": evals[mid]["tta"]} if evals.get(mid, {}).get("tta") else {}),
                "params": metas[mid].get("params"),
                "best_epoch": metas[mid].get("best_epoch"),
            }
            for mid in run.model_ids
        },
        "ensembles": None
        if ensemble is None
        else {
            "best": ensemble["best"],
            "best_ensemble": ensemble["best_ensemble"],
            "comparison": ensemble["comparison"],
            "weights": {n: e["weights"] for n, e in ensemble["ensembles"].items() if e.get("weights")},
        },
        "promotion": promotion_summary(run.promotion),
        "predictions": run.predictions,
        "results": headline,
        "sections": {s["anchor"]: s["status"] for s in sections},
        "failures": [{k: f.get(k) for k in ("task", "error", "message")} for f in run.failures],
        "artifacts": {
            "report": ctx.report_key("index.html"),
            "summary": ctx.report_key("summary.json"),
            "models": {mid: ctx.model_key(mid, "model.keras") for mid in run.model_ids},
            "metrics": {mid: ctx.eval_key(mid, "metrics.json") for mid in evals},
            "predictions": {mid: ctx.eval_key(mid, "predictions.npz") for mid in evals},
            "ensemble": ctx.eval_key("ensemble", "ensemble.json") if ensemble else None,
            "promotion": ctx.key("promotion.json") if run.promotion else None,
        },
    }
