"""One self-contained HTML report per run (runs/<id>/report/index.html) and its machine-readable
twin (report/summary.json).

Everything comes from the stage JSONs in the store. Each section function returns data (a dict);
the Jinja2 templates in cnn_tasks/templates render it, escaping every value. The page opens with the
results (cnn_tasks.headline: the result cards, the leaderboard of every model and ensemble, the
warnings, the run's time and links) and ends with the run id and configuration, collapsed. Figures
are linked relative to the page ("../eval/<id>/roc_test.png"), so the page works from the bucket, a
local store folder or a downloaded copy of the run folder. A section whose stage did not run says
"not run: <why>" (red); one with nothing to do in a normal run (no champion yet to compare with, no
unlabelled images) says so in a neutral note; one with nothing to say is one line. The tables and
sentences the sections show come from cnn_tasks.report_text, summary.json from cnn_tasks.report_summary.
"""

from __future__ import annotations

import functools
import logging
import posixpath
from datetime import UTC, datetime

import jinja2

from cnn_tasks import drift, leaderboard, reuse, runtime
from cnn_tasks.champion import model_name, read_champion, read_profile
from cnn_tasks.contracts import Contract, DatasetInfo, EnsembleSummary, ModelMeta, ModelMetrics, Promotion, Summary
from cnn_tasks.headline import results, task_url
from cnn_tasks.leaderboard import duration, fmt
from cnn_tasks.report_summary import build_summary
from cnn_tasks.report_text import (
    analysis_tables,
    check_line,
    columns_of,
    dead_layers,
    fields,
    is_flat,
    is_records,
    kv_rows,
    layout_part,
    model_summary,
    spec_differences,
    tta_columns,
)

log = logging.getLogger(__name__)

PREVIEW_ROWS = 20
REPORT_COLUMNS = ["class", "precision", "recall", "f1-score", "support", "roc_auc", "average_precision"]
EVAL_COLUMNS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece", "log_loss")
ENSEMBLE_COLUMNS = "name kind accuracy balanced_accuracy macro_precision macro_recall macro_f1 macro_auc ece".split()


# ----------------------------------------------------------------------------- values and templates
ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("cnn_tasks", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(fmt=fmt, duration=duration)
ENV.tests.update(flat=is_flat, records=is_records)
ENV.globals.update(
    columns_of=columns_of,
    kv_rows=kv_rows,
    leaderboard_rows=leaderboard.display_rows,
    leaderboard_columns=leaderboard.columns,
)
WIDE_FIGURES = ("confusion", "grad_cam")  # shown page-wide: their numbers and images need the room
# Figures folded under each model (a click away): the feature maps and filter patterns of every layer,
# the validation and training confusion matrices (their accuracies are in the evaluation table).
VIZ_FOLDED = ("activations_", "filters_")
EVAL_FOLDED = ("confusion_val", "confusion_train")


def section(anchor: str, title: str, status: str = "ok", **data) -> dict:
    return {"anchor": anchor, "title": title, "status": status, "not_run": None, **data}


def not_run(anchor: str, title: str, why: str, neutral: bool = False) -> dict:
    """A section whose stage did not run; `neutral` when that is a normal state of a run (a first
    run has no champion to compare with, a dataset may have no unlabelled images): a plain note."""
    return {
        "anchor": anchor,
        "title": title,
        "status": "nothing to do" if neutral else "not run",
        "not_run": why,
        "neutral": neutral,
    }


# ----------------------------------------------------------------------------- reading the run
def read_json(ctx, key: str, contract: type[Contract] | None = None) -> dict | None:
    """The file under `key` (validated by its stage contract, if it has one), or None when missing."""
    if not ctx.store.exists(key):
        return None
    return contract.read(ctx.store, key) if contract else ctx.store.get_json(key)


def trained_model_ids(ctx) -> list[str]:
    prefix = ctx.key("models") + "/"
    return sorted({k[len(prefix) :].split("/")[0] for k in ctx.store.list(prefix) if k.endswith("/meta.json")})


def expected_model_ids(ctx, dataset: dict | None = None) -> list[str]:
    from cnn_tasks.variants import expected_model_ids as expected

    return expected(ctx.config, dataset)


class Run:
    """The run's stage outputs, read once; figures and files resolve relative to the page."""

    def __init__(self, ctx):
        from cnn_tasks.failures import read_failures, read_timings

        self.ctx = ctx
        self.base = ctx.report_key()  # runs/<id>/report
        self.dataset = read_json(ctx, ctx.data_key("dataset.json"), DatasetInfo)
        self.analysis, self.ingest = (read_json(ctx, ctx.data_key(n)) for n in ("analysis.json", "ingest.json"))
        self.model_ids = trained_model_ids(ctx)
        self.metas = {m: read_json(ctx, ctx.model_key(m, "meta.json"), ModelMeta) for m in self.model_ids}
        self.evals = {
            m: e for m in self.model_ids if (e := read_json(ctx, ctx.eval_key(m, "metrics.json"), ModelMetrics))
        }
        self.ensemble = read_json(ctx, ctx.eval_key("ensemble", "ensemble.json"), EnsembleSummary)
        self.promotion = read_json(ctx, ctx.key("promotion.json"), Promotion)
        self.predictions = read_json(ctx, ctx.report_key("predictions.json"))
        self.failures = read_failures(ctx.store, ctx.prefix)
        self.timings = read_timings(ctx.store, ctx.prefix)
        self.reuse = reuse.read_run_records(ctx)
        self.stopped = read_json(ctx, reuse.stopped_key(ctx))
        self.versions = runtime.package_versions()

    @functools.cached_property
    def drift(self) -> dict:
        """The drift section, built once: its flags are also among the Results warnings."""
        return drift_section(self)

    def rel(self, key: str) -> str:
        return posixpath.relpath(key, self.base)

    def figure(self, entry: dict) -> dict:
        """{src, caption} of a stage's figure entry, or {missing: why}."""
        key = entry.get("key", "")
        if not key.startswith(self.ctx.prefix + "/") or not self.ctx.store.exists(key):
            return {"missing": f"figure {key} is listed but missing from this run's folder"}
        name = posixpath.basename(key)
        return {
            "missing": None,
            "src": self.rel(key),
            "caption": entry.get("caption") or name,
            "wide": name.startswith(WIDE_FIGURES) or "_confusion_" in name,
        }

    def figures(self, entries: list[dict] | None) -> list[dict]:
        return [self.figure(e) for e in entries or []]

    def folded_figures(self, entries: list[dict] | None, fold: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
        """(shown, folded): the figures whose file name starts with one of `fold` go in a folded list."""
        figures = self.figures(entries)
        folded = [f for f in figures if not f["missing"] and posixpath.basename(f["src"]).startswith(fold)]
        return [f for f in figures if f not in folded], folded

    def file(self, key: str, text: str) -> dict:
        """{href, text} of a file the run wrote, or {missing: why}."""
        if not self.ctx.store.exists(key):
            return {"missing": f"{key} was not written"}
        return {"missing": None, "href": self.rel(key), "text": text}


# ----------------------------------------------------------------------------- sections
def section_overview(run: Run) -> dict:
    ctx = run.ctx
    cfg = ctx.config.to_dict()
    cfg.pop("experiments")  # shown per experiment in Models
    facts = {
        "run id": ctx.run_id,
        "store": ctx.store.uri,
        "dataset sha256": (run.dataset or {}).get("dataset_sha256", "not run: data/dataset.json missing"),
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return section(
        "overview", "Run id, configuration and package versions", facts=facts, config=cfg, versions=run.versions
    )


def section_data(run: Run) -> dict:
    ctx, analysis, dataset = run.ctx, run.analysis, run.dataset
    data = {
        "analysis": None,
        "dataset": None,
        "analysis_missing": f"{ctx.data_key('analysis.json')} missing: the split stage did not run",
        "dataset_missing": f"{ctx.data_key('dataset.json')} missing: the rebalance stage did not run",
    }
    if analysis is not None:
        data["analysis"] = {
            "conclusion": analysis["conclusion"],
            "shortfall_text": analysis.get("shortfall_text"),
            "layout": layout_part(analysis),
            **analysis_tables(analysis),
            "figures": run.figures(analysis.get("figures")),
        }
    if dataset is not None:
        rows = [
            {
                "split": s,
                "variant": v,
                "count": d.get("count"),
                "class_counts": d.get("class_counts"),
                "class_weight": d.get("class_weight"),
            }
            for s, variants in dataset.get("splits", {}).items()
            for v, d in variants.items()
        ]
        data["dataset"] = {
            "facts": {k: dataset.get(k) for k in ("classes", "image_size", "rebalance", "mean", "std")}
            | (
                {"augmentation": f"{dataset['augment']}: {dataset['augment_reason']}"} if dataset.get("augment") else {}
            ),
            "rows": rows,
            "figures": run.figures(dataset.get("figures")),
        }
    return section("data", "Dataset analysis and imbalance", "ok" if analysis and dataset else "partial", **data)


def section_rejected(run: Run) -> dict:
    ctx, ingest = run.ctx, run.ingest
    if ingest is None:
        return not_run(
            "rejected", "Rejected files", f"{ctx.data_key('ingest.json')} missing: the download stage did not run"
        )
    if not ingest.get("rejected"):
        accepted = f" (all {ingest['accepted']} accepted)" if "accepted" in ingest else ""
        return section("rejected", "Rejected files", line=f"None: no file was rejected{accepted}.")
    return section(
        "rejected",
        "Rejected files",
        fields=fields(ingest),
        figures=run.figures(ingest.get("figures")),
        csv=run.file(ctx.data_key("rejected.csv"), "rejected.csv: every rejected file with its reason"),
    )


def section_models(run: Run) -> dict:
    """What each experiment is and why (its description), how it differs from the reference, and
    per trained model its training summary and layer table."""
    ctx = run.ctx
    from cnn_tasks.variants import variants_note

    note = variants_note(ctx.config.rebalance, run.dataset)
    note = note and note + "."
    specs = list(ctx.config.experiments)
    diffs = spec_differences(specs)
    experiments = [
        {"name": s.name, "description": s.description or "(no description)", "diffs": None if i == 0 else diffs[s.name]}
        for i, s in enumerate(specs)
    ]
    expected = expected_model_ids(ctx, run.dataset)
    trained = []
    for mid in expected + [m for m in run.model_ids if m not in expected]:
        meta = run.metas.get(mid)
        if meta is None:
            why = f"{ctx.model_key(mid, 'meta.json')} missing: this model was not trained"
            trained.append({"id": mid, "missing": why})
            continue
        trained.append(
            {
                "id": mid,
                "missing": None,
                "params": meta.get("params"),
                "summary": model_summary(meta, ctx.config.epochs),
                "layers": meta.get("layers", []),
                # classes, config and versions are shown once, at the end
                "fields": fields(meta, skip=("figures", "classes", "config", "description", "layers", "versions")),
            }
        )
    return section(
        "models", "Models", rebalance_note=note, reference=specs[0].name, experiments=experiments, models=trained
    )


def section_checks(run: Run) -> dict:
    ctx, checks = run.ctx, []
    for spec in ctx.config.experiments:
        key = ctx.check_key(spec.name, "single_batch.json")
        check = read_json(ctx, key)
        lr_range = read_json(ctx, ctx.check_key(spec.name, "lr_range.json")) or {}
        lr_fields = {k: lr_range[k] for k in ("learning_rate", "spec_learning_rate", "steps") if k in lr_range}
        checks.append(
            {"name": spec.name, "missing": f"{key} missing"}
            if check is None
            else {
                "name": spec.name,
                "missing": None,
                "passed": bool(check.get("passed")),
                "line": check_line(check, lr_fields),
                "fields": fields({**check, **{f"lr range test: {k}": v for k, v in lr_fields.items()}}),
                "figures": run.figures((check.get("figures") or []) + (lr_range.get("figures") or [])),
            }
        )
    missing = sum(1 for c in checks if c["missing"])
    return section(
        "checks",
        "Single-batch checks and learning-rate range tests" if ctx.config.lr_range_test else "Single-batch checks",
        "ok" if not missing else f"{missing} missing",
        checks=checks,
    )


def section_curves(run: Run) -> dict:
    if not run.model_ids:
        return not_run("curves", "Training curves", "no trained models")
    from cnn_tasks import plots  # imports matplotlib: only when there is something to compare

    comparison = run.figure(plots.compare_runs(run.ctx, run.model_ids))
    models = [{"id": m, "figures": run.figures(run.metas[m].get("figures"))} for m in run.model_ids]
    return section("curves", "Training curves", comparison=comparison, models=models)


def section_viz(run: Run) -> dict:
    ctx = run.ctx
    if not run.model_ids:
        return not_run("viz", "Visualisations", "no trained models")
    models = []
    for mid in run.model_ids:
        viz = read_json(ctx, ctx.viz_key(mid, "viz.json"))
        if viz is None:
            models.append(
                {"id": mid, "missing": f"{ctx.viz_key(mid, 'viz.json')} missing: the visualise stage did not run"}
            )
            continue
        explanation = viz.get("explanation")
        models.append(
            {
                "id": mid,
                "missing": None,
                "explanation": explanation if isinstance(explanation, list) else [explanation] if explanation else [],
                "dead_channels": dead_layers(viz.get("dead_channels")),
                **dict(zip(("figures", "folded"), run.folded_figures(viz.get("figures"), VIZ_FOLDED))),
            }
        )
    return section("viz", "Visualisations", models=models)


def section_evaluation(run: Run) -> dict:
    ctx, evals = run.ctx, run.evals
    if not evals:
        return not_run(
            "evaluation", "Per-model evaluation", "no eval/<model_id>/metrics.json: the evaluate stage did not run"
        )
    rows = []
    for mid, m in evals.items():
        test, val, train = (m["splits"].get(s, {}) for s in ("test", "val", "train"))
        rows.append(
            {
                "model": mid,
                **{f"test {c}": test.get(c) for c in EVAL_COLUMNS},
                **tta_columns(m),
                "val accuracy": val.get("accuracy"),
                "train accuracy": train.get("accuracy"),
            }
        )
    models = [
        {"id": mid, "missing": f"{ctx.eval_key(mid, 'metrics.json')} missing: this model was not evaluated"}
        if mid not in evals
        else {
            "id": mid,
            "missing": None,
            "report": evals[mid].get("classification_report", []),
            "csv": run.file(ctx.eval_key(mid, "classification_report.csv"), "classification_report.csv"),
            **dict(zip(("figures", "folded"), run.folded_figures(evals[mid].get("figures"), EVAL_FOLDED))),
        }
        for mid in run.model_ids
    ]
    return section("evaluation", "Per-model evaluation", rows=rows, report_columns=REPORT_COLUMNS, models=models)


def section_ensembles(run: Run) -> dict:
    ctx, ensemble = run.ctx, run.ensemble
    if ensemble is None:
        return not_run(
            "ensembles",
            "Ensembles",
            f"{ctx.eval_key('ensemble', 'ensemble.json')} missing: the ensemble stage did not run",
        )
    weights = [{"ensemble": n, **e["weights"]} for n, e in ensemble.get("ensembles", {}).items() if e.get("weights")]
    return section(
        "ensembles",
        "Ensembles",
        ensemble_not_run=ensemble.get("not_run"),
        metric=ensemble["metric"],
        best=ensemble["best"],
        rows=ensemble["comparison"],
        columns=ENSEMBLE_COLUMNS,
        csv=run.file(ensemble["comparison_key"], "comparison.csv"),
        tie_break=ensemble.get("tie_break"),
        skipped=ensemble.get("skipped") or [],
        weights=weights,
        best_ensemble=ensemble.get("best_ensemble"),
        figures=run.figures(ensemble.get("figures")),
    )


def section_champion(run: Run) -> dict:
    ctx, promotion = run.ctx, run.promotion
    if promotion is None:
        return not_run(
            "champion", "Champion decision", f"{ctx.key('promotion.json')} missing: the promote stage did not run"
        )
    metric = promotion["metric"]
    champion = promotion.get("champion_on_this_test") or {}
    previous = promotion.get("previous_champion") or {}
    facts = {
        "model name": promotion.get("model_name"),
        "metric": metric,
        "margin": promotion.get("margin"),
        "candidate": promotion["candidate"]["name"],
        f"candidate {metric}": promotion["candidate"].get(metric),
        "candidate test accuracy": promotion["candidate"].get("accuracy"),
        "best row": promotion["best"]["name"],
        f"best row {metric}": promotion["best"].get(metric),
        "previous champion": f"{previous.get('model_id')} from run {previous.get('run_id')}" if previous else "none",
        "previous champion's recorded value": previous.get("value"),
        f"previous champion {metric} on this test split": (champion.get("metrics") or {}).get(metric),
        "champion comparable": champion.get("why") if champion else "no champion",
        "new champion key": promotion.get("champion_key"),
        "history record": promotion.get("history_key"),
    }
    return section(
        "champion",
        "Champion decision",
        decision=f"Decision: {promotion['decision']}. {promotion['reason']}",
        candidate_note=promotion.get("candidate_note"),
        facts=facts,
        guards=promotion.get("guards", []),
        card=model_card_part(run),
    )


def model_card_part(run: Run) -> dict | None:
    """The promoted model's card (written by promote), for the champion section; None when none was."""
    ctx = run.ctx
    card = read_json(ctx, ctx.key("model_card.json"))
    if card is None:
        return None
    metrics, new = card["metrics"], (run.promotion or {}).get("new_champion") or {}
    return {
        "intended_use": card["intended_use"],
        "limits": card["limits"],
        "accuracy": f"{metrics['accuracy']:.4f} (95 % interval {metrics['accuracy_ci95']}, "
        f"{metrics['test_images']} test images)",
        "per_class": [
            {
                "class": r["class"],
                "support": r["support"],
                "precision": r["precision"],
                "precision 95 %": r["precision_ci95"],
                "recall": r["recall"],
                "recall 95 %": r["recall_ci95"],
                "F1": r["f1"],
            }
            for r in metrics["per_class"]
        ],
        "weaknesses": card["weaknesses"],
        "files": {
            "model card": run.file(ctx.key("model_card.md"), "model_card.md"),
            "exports": {k: ctx.store.url(new[k]) for k in ("model_key", "saved_model_key", "tflite_key") if new.get(k)},
        },
    }


def drift_reference(run: Run) -> dict | None:
    """The champion this run is compared with: the one promotion found (before it maybe replaced it),
    else the current champion of the run's model name when another run promoted it."""
    ctx = run.ctx
    if run.promotion is not None:
        return run.promotion.get("previous_champion")
    current = read_champion(ctx.store, model_name(ctx.config))
    return current if current and current.get("run_id") != ctx.run_id else None


def section_drift(run: Run) -> dict:
    return run.drift


def drift_section(run: Run) -> dict:
    ctx, title = run.ctx, "Data drift since the champion"
    current = read_json(ctx, ctx.data_key("profile.json"))
    if current is None:
        return not_run("drift", title, f"{ctx.data_key('profile.json')} missing: the split stage did not run")
    reference = drift_reference(run)
    name = model_name(ctx.config)
    if reference is None:
        return not_run("drift", title, f"no earlier champion of model '{name}' to compare with", neutral=True)
    profile = read_profile(ctx.store, reference)
    if profile is None:
        return not_run(
            "drift", title, f"the champion (run {reference.get('run_id')}) was promoted before data profiles were kept"
        )
    cfg = ctx.config
    result = drift.compare(current, profile, cfg.drift_class_share_change, cfg.drift_psi)
    fair = (run.promotion or {}).get("champion_on_this_test") or {}
    then, now = (reference.get("metrics") or {}).get("accuracy"), (fair.get("metrics") or {}).get("accuracy")
    accuracy = {
        "champion's test accuracy when promoted": then,
        "on this run's test images it never saw": now,
        "change": now - then if now is not None and then is not None else None,
        "images": fair.get("unseen"),
    }
    return section(
        "drift",
        title,
        "ok" if not result["flags"] else "partial",
        reference=f"champion of '{name}': {reference.get('model_id')} from run {reference.get('run_id')}",
        accuracy=accuracy,
        thresholds={"class share change": cfg.drift_class_share_change, "channel PSI": cfg.drift_psi},
        **result,
    )


def section_predictions(run: Run) -> dict:
    ctx, predictions = run.ctx, run.predictions
    if predictions is None:
        return not_run(
            "predictions", "Predictions", f"{ctx.report_key('predictions.json')} missing: the predict stage did not run"
        )
    if predictions["status"] != "done":  # skipped: nothing to predict, a normal state
        return not_run("predictions", "Predictions", predictions.get("reason", "skipped"), neutral=True)
    import io

    import pandas as pd

    preview = pd.read_csv(io.StringIO(ctx.store.get_text(predictions["predictions_key"])), nrows=PREVIEW_ROWS)
    return section(
        "predictions",
        "Predictions",
        facts={
            k: predictions[p]
            for k, p in (("images", "url"), ("model", "model"), ("predicted", "predicted"), ("rejected", "rejected"))
        },
        class_counts=predictions.get("class_counts", {}),
        preview=preview.to_dict("records"),
        files=[
            run.file(predictions["predictions_key"], "predictions.csv (all images)"),
            run.file(predictions["rejected_key"], "predictions_rejected.csv (unreadable files with reasons)"),
        ],
    )


SECTIONS = (
    section_data,
    section_rejected,
    section_models,
    section_checks,
    section_curves,
    section_viz,
    section_evaluation,
    section_ensembles,
    section_champion,
    section_drift,
    section_predictions,
    section_overview,
)


# ----------------------------------------------------------------------------- the stage
def render(run: Run, sections: list[dict], headline: dict) -> str:
    return ENV.get_template("report.html").render(
        title=f"CNN image classification report: {run.ctx.run_id}",
        run_id=run.ctx.run_id,
        failures=[
            {
                **{k: f.get(k) for k in ("task", "error", "message")},
                "log": task_url(headline["links"]["airflow_run"], f),
            }
            for f in run.failures
        ],
        results=headline,
        sections=sections,
    )


def run(ctx) -> dict:
    """Write report/index.html and report/summary.json for this run."""
    current = Run(ctx)
    sections = [build(current) for build in SECTIONS]
    headline = results(current)
    report_key, summary_key = ctx.report_key("index.html"), ctx.report_key("summary.json")
    ctx.store.put_text(report_key, render(current, sections, headline), "text/html; charset=utf-8")
    Summary.write(ctx.store, summary_key, build_summary(current, sections, headline))  # a format change fails here
    log.info("report written to %s", ctx.store.url(report_key))
    return {"report_key": report_key, "report_url": ctx.store.url(report_key), "summary_key": summary_key}
