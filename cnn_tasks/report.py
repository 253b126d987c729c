"""One self-contained HTML report per run (runs/<id>/report/index.html) and its machine-readable
twin (report/summary.json).

Everything comes from the stage JSONs in the store. Each section function returns data (a dict);
the Jinja2 templates in cnn_tasks/templates render it, escaping every value. The page opens with the
results (best model, best ensemble, champion decision, dataset, stage times, warnings) and ends with
the run id and configuration, collapsed. Figures are linked relative to the page
("../eval/<id>/roc_test.png"), so the page works from the bucket, a local store folder or a
downloaded copy of the run folder. A section whose stage did not run says "not run: <why>".
"""

from __future__ import annotations

import functools
import logging
import posixpath
from datetime import UTC, datetime

import jinja2

from cnn_tasks import SPLIT_NAMES, SPLITS, drift, reuse, runtime
from cnn_tasks.champion import model_name, read_champion
from cnn_tasks.contracts import Contract, DatasetInfo, EnsembleSummary, ModelMeta, ModelMetrics, Promotion, Summary

log = logging.getLogger(__name__)

PREVIEW_ROWS = 20
REPORT_COLUMNS = ["class", "precision", "recall", "f1-score", "support", "roc_auc", "average_precision"]
EVAL_COLUMNS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece", "log_loss")
ENSEMBLE_COLUMNS = [
    "name",
    "kind",
    "accuracy",
    "balanced_accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "macro_auc",
    "ece",
]


# ----------------------------------------------------------------------------- values and templates
def fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "—"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def is_flat(value) -> bool:
    """A list of scalars: fits in one table cell as 'a, b, c'."""
    return isinstance(value, (list, tuple)) and all(not isinstance(v, (dict, list, tuple)) for v in value)


def is_records(value) -> bool:
    """A non-empty list of dicts: a table."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def columns_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


def kv_rows(values: dict) -> list[dict]:
    return [{"name": k, "value": v} for k, v in values.items()]


ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("cnn_tasks", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(fmt=fmt, duration=duration)
ENV.tests.update(flat=is_flat, records=is_records)
ENV.globals.update(columns_of=columns_of, kv_rows=kv_rows)


def fields(values: dict, skip: tuple = ("figures",)) -> dict:
    """A stage JSON split for display: scalars and flat lists in one name/value table (`plain`),
    each nested value under its own heading (`nested`)."""
    shown = {k: v for k, v in values.items() if k not in skip}
    plain = {k: v for k, v in shown.items() if not isinstance(v, (dict, list)) or is_flat(v)}
    return {"plain": plain, "nested": {k.replace("_", " "): v for k, v in shown.items() if k not in plain}}


def section(anchor: str, title: str, status: str = "ok", **data) -> dict:
    return {"anchor": anchor, "title": title, "status": status, "not_run": None, **data}


def not_run(anchor: str, title: str, why: str) -> dict:
    return {"anchor": anchor, "title": title, "status": "not run", "not_run": why}


# ----------------------------------------------------------------------------- reading the run
def read_json(ctx, key: str, contract: type[Contract] | None = None) -> dict | None:
    """The file under `key` (validated by its stage contract, if it has one), or None when missing."""
    if not ctx.store.exists(key):
        return None
    return contract.read(ctx.store, key) if contract else ctx.store.get_json(key)


def trained_model_ids(ctx) -> list[str]:
    prefix = ctx.key("models") + "/"
    return sorted({k[len(prefix) :].split("/")[0] for k in ctx.store.list(prefix) if k.endswith("/meta.json")})


def expected_model_ids(ctx) -> list[str]:
    from cnn_tasks.variants import expected_model_ids as expected

    return expected(ctx.config)


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
        return {"missing": None, "src": self.rel(key), "caption": entry.get("caption") or posixpath.basename(key)}

    def figures(self, entries: list[dict] | None) -> list[dict]:
        return [self.figure(e) for e in entries or []]

    def file(self, key: str, text: str) -> dict:
        """{href, text} of a file the run wrote, or {missing: why}."""
        if not self.ctx.store.exists(key):
            return {"missing": f"{key} was not written"}
        return {"missing": None, "href": self.rel(key), "text": text}


# ----------------------------------------------------------------------------- results first
def best_model(evals: dict) -> dict | None:
    """The single model with the best test macro-F1 (then accuracy)."""
    tests = {m: e["splits"].get("test") or {} for m, e in evals.items()}
    if not tests:
        return None
    best = max(tests, key=lambda m: (tests[m].get("macro_f1") or 0, tests[m].get("accuracy") or 0))
    return {"name": best, "accuracy": tests[best].get("accuracy"), "macro_f1": tests[best].get("macro_f1")}


def best_ensemble(ensemble: dict | None) -> dict | None:
    if not ensemble or not ensemble.get("best_ensemble"):
        return None
    row = next((r for r in ensemble["comparison"] if r.get("name") == ensemble["best_ensemble"]), {})
    return {
        "name": ensemble["best_ensemble"],
        "accuracy": row.get("accuracy"),
        "macro_f1": row.get("macro_f1"),
        "overall_best": ensemble.get("best"),
        "metric": ensemble.get("metric"),
    }


def dataset_line(run: Run) -> str | None:
    """'3 classes, 71 images (training 42, validation 11, test 30), layout class_folders, 2 rejected'."""
    analysis, ingest, dataset = run.analysis or {}, run.ingest or {}, run.dataset or {}
    if not (analysis or ingest or dataset):
        return None
    classes = analysis.get("classes") or dataset.get("classes") or ingest.get("classes") or []
    totals = analysis.get("totals") or {}
    parts = [f"{len(classes)} classes"]
    if totals:
        split_counts = ", ".join(f"{SPLIT_NAMES[s]} {totals[s]}" for s in SPLITS if s in totals)
        parts.append(f"{sum(totals.values())} images ({split_counts})")
    elif "accepted" in ingest:
        parts.append(f"{ingest['accepted']} images")
    kind = (analysis.get("layout") or ingest.get("layout") or {}).get("kind")
    if kind:
        parts.append(f"layout {kind}")
    if "rejected" in ingest:
        parts.append(f"{ingest['rejected']} rejected")
    return ", ".join(parts)


# How the report names a training's end (meta.json stopped_by); running all epochs needs no note.
STOPPED_BY = {"early_stopping": "stopped early", "time_budget": "stopped by budget"}


def stage_times(run: Run) -> list[dict]:
    """Wall time of each task's successful try, in the order the tasks finished (runs/<id>/timings/,
    written by the DAG), with the epochs each training ran."""

    def epochs(record: dict) -> str:
        meta = run.metas.get(model_id_of(record)) or {}
        if "epochs_run" not in meta:
            return ""
        why = STOPPED_BY.get(meta.get("stopped_by"))
        return f"{meta['epochs_run']} of {run.ctx.config.epochs}" + (
            f", {why} at epoch {meta['epochs_run']}" if why else ""
        )

    return [
        {"task": t.get("task", "?"), "wall time": duration(t.get("seconds")), "epochs": epochs(t)} for t in run.timings
    ]


def model_id_of(record: dict) -> str:
    """'train [baseline / balanced]' -> 'baseline__balanced' ('' for other tasks)."""
    task = record.get("task") or ""
    return task.partition(" [")[2].rstrip("]").replace(" / ", "__") if record.get("task_id") == "train" else ""


def warnings(run: Run) -> list[str]:
    """What a reader must not miss: imbalance, shortfalls, rejected files, layout oddities, models or
    stages that did not run, leakage, unreadable images to predict."""
    out = []
    analysis, ingest = run.analysis or {}, run.ingest or {}
    for split, m in (analysis.get("imbalance") or {}).items():
        if m.get("severity") not in (None, "balanced"):
            out.append(
                f"{SPLIT_NAMES.get(split, split)} split: {m['severity']} class imbalance "
                f"(largest/smallest = {m['max_min_ratio']:.2f})."
            )
    if analysis.get("shortfalls"):
        out.append(analysis["shortfall_text"])
    if analysis and not analysis.get("no_leakage"):
        out.append("The leakage check did not pass: an image may appear in more than one split.")
    out += (analysis.get("layout") or {}).get("warnings", [])
    if ingest.get("rejected"):
        reasons = ", ".join(f"{r}: {n}" for r, n in (ingest.get("rejected_by_reason") or {}).items())
        out.append(f"{ingest['rejected']} file(s) rejected ({reasons}): see Rejected files.")
    missing = [m for m in expected_model_ids(run.ctx) if m not in run.metas]
    if missing and not run.stopped:  # a run stopped because nothing changed trains nothing, by design
        out.append(f"Not trained: {', '.join(missing)}.")
    if run.ensemble and run.ensemble.get("not_run"):
        out.append(f"Ensembles not built: {run.ensemble['not_run']}.")
    drifted = run.drift.get("flags") or []
    if drifted:
        out.append(f"Data drift since the champion: {'; '.join(drifted)}. See Data drift.")
    if run.predictions and run.predictions.get("rejected"):
        out.append(f"{run.predictions['rejected']} image(s) to predict could not be read: see Predictions.")
    return out


def results(run: Run) -> dict:
    promotion = run.promotion
    champion = (
        None
        if promotion is None
        else {
            **{k: promotion.get(k) for k in ("decision", "reason", "metric")},
            "candidate": (promotion.get("candidate") or {}).get("name"),
        }
    )
    return {
        "best_model": best_model(run.evals),
        "best_ensemble": best_ensemble(run.ensemble),
        "champion": champion,
        "dataset": dataset_line(run),
        "stage_times": stage_times(run),
        "warnings": warnings(run),
        "models": len(run.model_ids),
        "stopped": (run.stopped or {}).get("why"),
        "reused": reused_rows(run),
    }


def reused_rows(run: Run) -> list[dict]:
    """One row per stage this run copied from an earlier run, with the key that matched."""
    return [
        {"stage": r["name"].replace(".", " "), "reused from run": r["reused_from"], "key": r["key"][:12]}
        for r in run.reuse
        if r.get("reused_from")
    ]


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
            "facts": {k: dataset.get(k) for k in ("classes", "image_size", "rebalance", "mean", "std")},
            "rows": rows,
            "figures": run.figures(dataset.get("figures")),
        }
    return section("data", "Dataset analysis and imbalance", "ok" if analysis and dataset else "partial", **data)


def layout_part(analysis: dict) -> dict | None:
    """Which dataset layout was found, where each split's images came from (given or carved)."""
    found = analysis.get("layout") or {}
    if not found:
        return None
    where = f" below {found['wrapper']}/" if found.get("wrapper") else ""
    text = f"Layout found: {found.get('kind', '?')}{where} (predefined_split={found.get('predefined_split', 'auto')})."
    if found.get("splits"):
        text += (
            " Given splits: " + ", ".join(f"{s} = {found['splits'][s]}/" for s in SPLITS if s in found["splits"]) + "."
        )
    if found.get("mapping_file"):
        text += f" Class names read from {found['mapping_file']}."
    totals = analysis.get("totals", {})
    notes = []
    if found.get("splits"):
        notes.append(
            "Identical images in two given splits would leak held-out images into training: only the "
            "copy in the most held-out split (test, then validation, then training) is kept, the "
            "others are listed in rejected.csv as duplicate_across_splits."
        )
    notes += [
        f"{entry['folder']}/ holds {entry['files']} unlabelled files: they are not training data and are "
        "predicted with the champion unless unlabelled_url is set (see Predictions)."
        for entry in found.get("unlabelled", [])
    ]
    warns = list(found.get("warnings", []))
    if found.get("loose_files"):
        warns.insert(
            0,
            f"{len(found['loose_files'])} file(s) lay beside the class folders, outside any class: "
            "listed in rejected.csv as not_in_a_class_folder.",
        )
    return {
        "text": text,
        "notes": notes,
        "warnings": warns,
        "origins": [
            {"split": SPLIT_NAMES[s], "images come from": analysis["origin"].get(s, "-"), "images": totals.get(s, "-")}
            for s in SPLITS
            if s in analysis.get("origin", {})
        ],
    }


def analysis_tables(analysis: dict) -> dict:
    """The split stage's numbers as tables a person reads: counts, imbalance, sizes, channels."""
    splits = [s for s in SPLITS if s in analysis["counts"]]
    short = {(row["class"], row["split"]) for row in analysis.get("shortfalls", [])}
    counts = [
        {
            "class": c,
            **{SPLIT_NAMES[s]: f"{analysis['counts'][s][c]}{' *' if (c, s) in short else ''}" for s in splits},
            "total": sum(analysis["counts"][s][c] for s in splits),
        }
        for c in analysis["classes"]
    ]
    imbalance = [
        {
            "split": SPLIT_NAMES[s],
            "largest class": f"{m['largest']} ({m['largest_count']})",
            "smallest class": f"{m['smallest']} ({m['smallest_count']})",
            "max/min ratio": m["max_min_ratio"],
            "normalised entropy": m["normalised_entropy"],
            "verdict": m["severity"],
        }
        for s, m in analysis["imbalance"].items()
    ]
    sizes = [
        {
            "split": SPLIT_NAMES[s],
            "width min/median/max": _range(d["width"]),
            "height min/median/max": _range(d["height"]),
            "most common size": "{}x{} ({} images)".format(*d["most_common"][0]) if d.get("most_common") else "-",
        }
        for s, d in analysis["image_sizes"].items()
    ]
    channels = [
        {"channel": name, "mean": m, "std": sd} for name, m, sd in zip("RGB", analysis["mean"], analysis["std"])
    ]
    leakage = (
        "No image appears in more than one split (checked by content hash)."
        if analysis.get("no_leakage")
        else "Leakage check did not pass."
    )
    return {
        "counts": counts,
        "short": bool(short),
        "imbalance": imbalance,
        "sizes": sizes,
        "channels": channels,
        "leakage": leakage,
    }


def _range(d: dict) -> str:
    return f"{d['min']} / {fmt(d['median'])} / {d['max']}"


def section_rejected(run: Run) -> dict:
    ctx, ingest = run.ctx, run.ingest
    if ingest is None:
        return not_run(
            "rejected", "Rejected files", f"{ctx.data_key('ingest.json')} missing: the download stage did not run"
        )
    return section(
        "rejected",
        "Rejected files",
        fields=fields(ingest),
        figures=run.figures(ingest.get("figures")),
        csv=run.file(ctx.data_key("rejected.csv"), "rejected.csv: every rejected file with its reason"),
    )


def spec_differences(specs) -> dict[str, list[dict]]:
    """For each experiment, the settings that differ from the first (reference) experiment."""
    if not specs:
        return {}
    reference = specs[0].model_dump()
    out = {}
    for spec in specs:
        values = spec.model_dump()
        out[spec.name] = [
            {"setting": k, specs[0].name: _short(reference[k]), spec.name: _short(v)}
            for k, v in values.items()
            if k not in ("name", "description") and v != reference[k]
        ]
    return out


def _short(value) -> str:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
        return " ".join(
            f"{b['filters']}/{b['kernel_size']}x{b['kernel_size']}/s{b['strides']}"
            + (f"+{b['pool']}" if b["pool"] != "none" else "")
            for b in value
        )
    return str(value)


def section_models(run: Run) -> dict:
    """What each experiment is and why (its description), how it differs from the reference, and
    per trained model its training summary and layer table."""
    ctx = run.ctx
    note = None
    if ctx.config.rebalance == "none":
        from cnn_tasks.variants import REBALANCE_NONE_NOTE

        note = REBALANCE_NONE_NOTE + "."
    specs = list(ctx.config.experiments)
    diffs = spec_differences(specs)
    experiments = [
        {"name": s.name, "description": s.description or "(no description)", "diffs": None if i == 0 else diffs[s.name]}
        for i, s in enumerate(specs)
    ]
    expected = expected_model_ids(ctx)
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
                "dead_channels": viz.get("dead_channels"),
                "figures": run.figures(viz.get("figures")),
            }
        )
    return section("viz", "Visualisations", models=models)


def tta_columns(metrics: dict) -> dict:
    """Test accuracy and macro-F1 with test-time augmentation, beside the plain scores (config.tta)."""
    tta = metrics.get("tta")
    if not tta:
        return {}
    views = len(tta["views"])
    return {
        f"test accuracy, TTA {views} views": tta["test"]["accuracy"],
        f"test macro_f1, TTA {views} views": tta["test"]["macro_f1"],
    }


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
            "figures": run.figures(evals[mid].get("figures")),
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
        return not_run("drift", title, f"no earlier champion of model '{name}' to compare with")
    key = reference.get("profile_key")
    if not key or not ctx.store.exists(key):
        return not_run(
            "drift", title, f"the champion (run {reference.get('run_id')}) was promoted before data profiles were kept"
        )
    cfg = ctx.config
    result = drift.compare(current, ctx.store.get_json(key), cfg.drift_class_share_change, cfg.drift_psi)
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
    if predictions["status"] != "done":
        return not_run("predictions", "Predictions", predictions.get("reason", "skipped"))
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
        failures=[{k: f.get(k) for k in ("task", "error", "message")} for f in run.failures],
        results=headline,
        sections=sections,
    )


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


def build_summary(run: Run, sections: list[dict], headline: dict) -> dict:
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
