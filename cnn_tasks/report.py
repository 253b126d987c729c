"""One self-contained HTML report per run (runs/<id>/report/index.html) and its machine-readable
twin (report/summary.json).

Everything comes from the stage JSONs in the store. Figures are linked relative to the page
("../eval/<id>/roc_test.png"), so the page works from the bucket, a local store folder or a
downloaded copy of the run folder. A section whose stage did not run says "not run: <why>".
All text is escaped.
"""

from __future__ import annotations

import html
import logging
import posixpath
from datetime import datetime, timezone

from cnn_tasks import runtime
from cnn_tasks.data import SPLIT_NAMES, SPLITS

log = logging.getLogger(__name__)

PREVIEW_ROWS = 20
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1180px;margin:auto;padding:1rem 2rem 4rem;background:#fff}
h1{border-bottom:3px solid #2a6fb0;padding-bottom:.3rem}h2{margin-top:2.5rem;border-bottom:1px solid #ccc}
h3{margin-top:1.6rem;color:#2a6fb0}nav ol{columns:2;background:#f2f6fb;padding:1rem 2.5rem;border-radius:6px}
table{border-collapse:collapse;margin:.6rem 0;font-size:.86rem}th,td{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#eef2f7}tr:nth-child(even) td{background:#fafbfc}
tr.best td{background:#fff1a8;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.6rem 1rem .6rem 0;max-width:100%;vertical-align:top}
figure img{max-width:100%;width:520px;border:1px solid #ddd}figure.wide img{width:1000px}
figcaption{font-size:.85rem;color:#555;max-width:520px}figure.wide figcaption{max-width:1000px}
.notrun{background:#fdecea;border-left:4px solid #c0392b;padding:.5rem 1rem}
.note{background:#eef6ee;border-left:4px solid #3c8d40;padding:.5rem 1rem}
.warn{background:#fff8e5;border-left:4px solid #d49b00;padding:.5rem 1rem}
.caption{font-size:.85rem;color:#555}
pre{background:#f4f4f4;padding:.6rem;overflow:auto;font-size:.8rem}
"""


# ----------------------------------------------------------------------------- html building blocks
def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def not_run(why: str) -> str:
    return f'<p class="notrun"><strong>not run:</strong> {esc(why)}</p>'


def paragraph(text: str, cls: str = "") -> str:
    return f'<p{f" class={cls!r}" if cls else ""}>{esc(text)}</p>'


def table(rows: list[dict], columns: list[str] | None = None, best=lambda row: False) -> str:
    """An HTML table of dict rows; nested values are shown compactly."""
    if not rows:
        return paragraph("(empty)")
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(_cell(row.get(c)) for c in columns)
        body.append(f'<tr{" class=best" if best(row) else ""}>{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _cell(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num">{esc(fmt(value))}</td>'
    if isinstance(value, (list, tuple)) and all(not isinstance(v, (dict, list)) for v in value):
        return f"<td>{esc(', '.join(fmt(v) for v in value))}</td>"
    if isinstance(value, (dict, list)):
        return f"<td>{render(value)}</td>"
    return f"<td>{esc(fmt(value))}</td>"


def kv_table(values: dict) -> str:
    return table([{"name": k, "value": v} for k, v in values.items()], ["name", "value"])


def render(value) -> str:
    """Any JSON value: dicts as name/value tables, lists of dicts as tables, text escaped."""
    if isinstance(value, dict):
        return kv_table(value) if value else paragraph("(none)")
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return table(value)
    if isinstance(value, list):
        return esc(", ".join(fmt(v) for v in value)) if value else "(none)"
    return esc(fmt(value))


def render_fields(values: dict, skip: tuple = ("figures",)) -> str:
    """A stage JSON: its plain values in one table, then each nested value under its own heading."""
    shown = {k: v for k, v in values.items() if k not in skip}
    plain = {k: v for k, v in shown.items() if _is_plain(v)}
    nested = {k: v for k, v in shown.items() if k not in plain}
    out = kv_table(plain) if plain else ""
    return out + "".join(f"<h4>{esc(k.replace('_', ' '))}</h4>{render(v)}" for k, v in nested.items())


def _is_plain(value) -> bool:
    """A scalar or a flat list: fits in one table cell."""
    if isinstance(value, list):
        return all(not isinstance(v, (dict, list)) for v in value)
    return not isinstance(value, dict)


def link(href: str, text: str) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


class Page:
    """The report being built: figures resolve against the run's store, relative to the page."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.base = ctx.report_key()  # runs/<id>/report
        self.sections: list[tuple[str, str, str]] = []  # (anchor, title, html)
        self.status: dict[str, str] = {}

    def rel(self, key: str) -> str:
        return posixpath.relpath(key, self.base)

    def figure(self, entry: dict, wide: bool = False) -> str:
        key, caption = entry.get("key", ""), entry.get("caption") or posixpath.basename(entry.get("key", ""))
        if not key.startswith(self.ctx.prefix + "/") or not self.ctx.store.exists(key):
            return not_run(f"figure {key} is listed but missing from this run's folder")
        src = esc(self.rel(key))
        return (f'<figure{" class=wide" if wide else ""}><a href="{src}"><img src="{src}" alt="{esc(caption)}" '
                f'loading="lazy"></a><figcaption>{esc(caption)}</figcaption></figure>')

    def figures(self, entries: list[dict] | None, wide: bool = False) -> str:
        return "".join(self.figure(e, wide) for e in entries or [])

    def file_link(self, key: str, text: str) -> str:
        if not self.ctx.store.exists(key):
            return not_run(f"{key} was not written")
        return f"<p>{link(self.rel(key), text)}</p>"

    def add(self, anchor: str, title: str, body: str, status: str = "ok") -> None:
        self.sections.append((anchor, title, body))
        self.status[anchor] = status

    def html(self, title: str, intro: str) -> str:
        toc = "".join(f'<li><a href="#{a}">{esc(t)}</a></li>' for a, t, _ in self.sections)
        body = "".join(f'<section id="{a}"><h2>{esc(t)}</h2>{b}</section>' for a, t, b in self.sections)
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
                f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
                f"<body><main><h1>{esc(title)}</h1>{intro}<nav><h2>Contents</h2><ol>{toc}</ol></nav>{body}"
                "</main></body></html>")


# ----------------------------------------------------------------------------- reading the run
def read_json(ctx, key: str) -> dict | None:
    return ctx.store.get_json(key) if ctx.store.exists(key) else None


def trained_model_ids(ctx) -> list[str]:
    prefix = ctx.key("models") + "/"
    return sorted({k[len(prefix):].split("/")[0] for k in ctx.store.list(prefix) if k.endswith("/meta.json")})


def expected_model_ids(ctx) -> list[str]:
    from cnn_tasks.variants import expected_model_ids as expected

    return expected(ctx.config)


def spec_differences(specs) -> dict[str, list[dict]]:
    """For each experiment, the settings that differ from the first (reference) experiment."""
    import dataclasses

    if not specs:
        return {}
    reference = dataclasses.asdict(specs[0])
    out = {}
    for spec in specs:
        values = dataclasses.asdict(spec)
        out[spec.name] = [{"setting": k, specs[0].name: _short(reference[k]), spec.name: _short(v)}
                          for k, v in values.items() if k not in ("name", "description") and v != reference[k]]
    return out


def _short(value) -> str:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
        return " ".join(f"{b['filters']}/{b['kernel_size']}x{b['kernel_size']}/s{b['strides']}"
                        + (f"+{b['pool']}" if b["pool"] != "none" else "") for b in value)
    return str(value)


# ----------------------------------------------------------------------------- sections
def section_overview(page: Page, dataset: dict | None, versions: dict) -> None:
    cfg = page.ctx.config.to_dict()
    cfg.pop("experiments")
    body = kv_table({"run id": page.ctx.run_id, "store": page.ctx.store.uri,
                     "dataset sha256": (dataset or {}).get("dataset_sha256", "not run: data/dataset.json missing"),
                     "generated": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    body += "<h3>Configuration</h3>" + kv_table(cfg) + "<h3>Package versions</h3>" + kv_table(versions)
    page.add("overview", "Run overview", body)


def section_data(page: Page, analysis: dict | None, dataset: dict | None) -> None:
    ctx, body = page.ctx, ""
    if analysis is None:
        body += not_run(f"{ctx.data_key('analysis.json')} missing: the split stage did not run")
    else:
        body += paragraph(analysis["conclusion"], "note")
        if analysis.get("shortfall_text"):
            body += paragraph(analysis["shortfall_text"], "warn")
        body += layout_part(analysis)
        body += analysis_tables(analysis) + page.figures(analysis.get("figures"))
    body += "<h3>Rebalanced training data</h3>"
    if dataset is None:
        body += not_run(f"{ctx.data_key('dataset.json')} missing: the rebalance stage did not run")
    else:
        body += kv_table({k: dataset.get(k) for k in ("classes", "image_size", "rebalance", "mean", "std")})
        rows = [{"split": s, "variant": v, "count": d.get("count"), "class_counts": d.get("class_counts"),
                 "class_weight": d.get("class_weight")}
                for s, variants in dataset.get("splits", {}).items() for v, d in variants.items()]
        body += table(rows) + page.figures(dataset.get("figures"))
    page.add("data", "Dataset analysis and imbalance", body, "ok" if analysis and dataset else "partial")


def layout_part(analysis: dict) -> str:
    """Which dataset layout was found, where each split's images came from (given or carved)."""
    found = analysis.get("layout") or {}
    if not found:
        return ""
    where = f" below {found['wrapper']}/" if found.get("wrapper") else ""
    text = f"Layout found: {found.get('kind', '?')}{where} (predefined_split={found.get('predefined_split', 'auto')})."
    if found.get("splits"):
        text += " Given splits: " + ", ".join(f"{s} = {found['splits'][s]}/" for s in SPLITS
                                              if s in found["splits"]) + "."
    if found.get("mapping_file"):
        text += f" Class names read from {found['mapping_file']}."
    body = "<h3>Dataset layout and where each split came from</h3>" + paragraph(text)
    totals = analysis.get("totals", {})
    body += table([{"split": SPLIT_NAMES[s], "images come from": analysis["origin"].get(s, "-"),
                    "images": totals.get(s, "-")} for s in SPLITS if s in analysis.get("origin", {})])
    if found.get("splits"):
        body += paragraph("Identical images in two given splits would leak held-out images into training: only the "
                          "copy in the most held-out split (test, then validation, then training) is kept, the "
                          "others are listed in rejected.csv as duplicate_across_splits.")
    for entry in found.get("unlabelled", []):
        body += paragraph(f"{entry['folder']}/ holds {entry['files']} unlabelled files: they are not training data "
                          "and are predicted with the champion unless unlabelled_url is set (see Predictions).")
    if found.get("loose_files"):
        body += paragraph(f"{len(found['loose_files'])} file(s) lay beside the class folders, outside any class: "
                          "listed in rejected.csv as not_in_a_class_folder.", "warn")
    for warning in found.get("warnings", []):
        body += paragraph(warning, "warn")
    return body


def analysis_tables(analysis: dict) -> str:
    """The split stage's numbers as tables a person reads: counts, imbalance, sizes, channels."""
    splits = [s for s in SPLITS if s in analysis["counts"]]
    short = {(row["class"], row["split"]) for row in analysis.get("shortfalls", [])}
    counts = [{"class": c, **{SPLIT_NAMES[s]: f"{analysis['counts'][s][c]}{' *' if (c, s) in short else ''}"
                              for s in splits},
               "total": sum(analysis["counts"][s][c] for s in splits)} for c in analysis["classes"]]
    imbalance = [{"split": SPLIT_NAMES[s], "largest class": f"{m['largest']} ({m['largest_count']})",
                  "smallest class": f"{m['smallest']} ({m['smallest_count']})", "max/min ratio": m["max_min_ratio"],
                  "normalised entropy": m["normalised_entropy"], "verdict": m["severity"]}
                 for s, m in analysis["imbalance"].items()]
    sizes = [{"split": SPLIT_NAMES[s], "width min/median/max": _range(d["width"]),
              "height min/median/max": _range(d["height"]),
              "most common size": "{}x{} ({} images)".format(*d["most_common"][0]) if d.get("most_common") else "-"}
             for s, d in analysis["image_sizes"].items()]
    channels = [{"channel": name, "mean": m, "std": sd} for name, m, sd in zip("RGB", analysis["mean"], analysis["std"])]
    leakage = ("No image appears in more than one split (checked by content hash)." if analysis.get("no_leakage")
               else "Leakage check did not pass.")
    return ("<h3>Images per class and split</h3>" + table(counts)
            + ("<p class='caption'>* below the reference minimum for that split.</p>" if short else "")
            + "<h3>Class imbalance</h3>" + table(imbalance)
            + "<h3>Image sizes (before resizing)</h3>" + table(sizes)
            + "<h3>Training-split channel statistics (0-255), used for standardisation</h3>" + table(channels)
            + paragraph(leakage))


def _range(d: dict) -> str:
    return f"{d['min']} / {fmt(d['median'])} / {d['max']}"


def section_rejected(page: Page, ingest: dict | None) -> None:
    ctx = page.ctx
    if ingest is None:
        page.add("rejected", "Rejected files", not_run(f"{ctx.data_key('ingest.json')} missing: the download "
                                                       "stage did not run"), "not run")
        return
    body = render_fields(ingest)
    body += page.figures(ingest.get("figures"))
    body += page.file_link(ctx.data_key("rejected.csv"), "rejected.csv: every rejected file with its reason")
    page.add("rejected", "Rejected files", body)


def section_models(page: Page, model_ids: list[str], metas: dict) -> None:
    """What each experiment is and why (its description), how it differs from the reference, and
    per trained model its training summary and layer table."""
    ctx, body = page.ctx, ""
    if ctx.config.rebalance == "none":
        from cnn_tasks.variants import REBALANCE_NONE_NOTE

        body += paragraph(REBALANCE_NONE_NOTE + ".", "note")
    reference = ctx.config.experiments[0]
    diffs = spec_differences(list(ctx.config.experiments))
    for spec in ctx.config.experiments:
        body += f"<h3>Experiment {esc(spec.name)}</h3>" + paragraph(spec.description or "(no description)", "note")
        if spec is not reference:
            body += (f"<p>Settings that differ from the reference <em>{esc(reference.name)}</em>:</p>"
                     + table(diffs[spec.name]))
    expected = expected_model_ids(ctx)
    for mid in expected + [m for m in model_ids if m not in expected]:
        body += f"<h3>Model {esc(mid)}</h3>"
        if mid not in metas:
            body += not_run(f"{ctx.model_key(mid, 'meta.json')} missing: this model was not trained")
            continue
        meta = metas[mid]  # classes, config and versions are shown once, in the overview
        body += render_fields(meta, skip=("figures", "classes", "config", "description", "layers", "versions"))
        body += (f"<details open><summary>Layer table of {esc(mid)} ({fmt(meta.get('params'))} parameters)"
                 f"</summary>{table(meta.get('layers', []), ['name', 'type', 'output_shape', 'params'])}</details>")
    page.add("models", "Models", body)


def section_checks(page: Page) -> None:
    ctx, body, missing = page.ctx, "", 0
    for spec in ctx.config.experiments:
        check = read_json(ctx, ctx.check_key(spec.name, "single_batch.json"))
        body += f"<h3>{esc(spec.name)}</h3>"
        if check is None:
            missing += 1
            body += not_run(f"{ctx.check_key(spec.name, 'single_batch.json')} missing")
            continue
        body += render_fields(check) + page.figures(check.get("figures"))
    page.add("checks", "Single-batch checks", body, "ok" if not missing else f"{missing} missing")


def section_curves(page: Page, model_ids: list[str], metas: dict) -> None:
    body = ""
    if len(model_ids) == 0:
        page.add("curves", "Training curves", not_run("no trained models"), "not run")
        return
    from cnn_tasks import plots  # imports matplotlib: only when there is something to compare

    body += page.figure(plots.compare_runs(page.ctx, model_ids), wide=True)
    for mid in model_ids:
        body += f"<h3>{esc(mid)}</h3>" + (page.figures(metas[mid].get("figures")) or paragraph("(no figures)"))
    page.add("curves", "Training curves", body)


def section_viz(page: Page, model_ids: list[str]) -> None:
    ctx, body = page.ctx, ""
    if not model_ids:
        page.add("viz", "Visualisations", not_run("no trained models"), "not run")
        return
    for mid in model_ids:
        viz = read_json(ctx, ctx.viz_key(mid, "viz.json"))
        body += f"<h3>{esc(mid)}</h3>"
        if viz is None:
            body += not_run(f"{ctx.viz_key(mid, 'viz.json')} missing: the visualise stage did not run")
            continue
        explanation = viz.get("explanation")
        for text in explanation if isinstance(explanation, list) else [explanation] if explanation else []:
            body += paragraph(text, "note")
        body += "<h4>Dead channels</h4>" + render(viz.get("dead_channels"))
        body += page.figures(viz.get("figures"))
    page.add("viz", "Visualisations", body)


REPORT_COLUMNS = ["class", "precision", "recall", "f1-score", "support", "roc_auc", "average_precision"]
EVAL_COLUMNS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "ece", "log_loss")


def section_evaluation(page: Page, model_ids: list[str], evals: dict) -> None:
    ctx = page.ctx
    if not evals:
        page.add("evaluation", "Per-model evaluation", not_run("no eval/<model_id>/metrics.json: the evaluate "
                                                               "stage did not run"), "not run")
        return
    rows = []
    for mid, m in evals.items():
        test, val, train = (m["splits"].get(s, {}) for s in ("test", "val", "train"))
        rows.append({"model": mid, **{f"test {c}": test.get(c) for c in EVAL_COLUMNS},
                     "val accuracy": val.get("accuracy"), "train accuracy": train.get("accuracy")})
    body = paragraph("Test-split metrics; train and validation accuracy beside them show over-fitting.") + table(rows)
    for mid in model_ids:
        body += f"<h3>{esc(mid)}</h3>"
        if mid not in evals:
            body += not_run(f"{ctx.eval_key(mid, 'metrics.json')} missing: this model was not evaluated")
            continue
        body += "<h4>Classification report (test)</h4>" + table(evals[mid].get("classification_report", []),
                                                                 REPORT_COLUMNS)
        body += page.file_link(ctx.eval_key(mid, "classification_report.csv"), "classification_report.csv")
        body += page.figures(evals[mid].get("figures"))
    page.add("evaluation", "Per-model evaluation", body)


def section_ensembles(page: Page, ensemble: dict | None) -> None:
    ctx = page.ctx
    if ensemble is None:
        page.add("ensembles", "Ensembles", not_run(f"{ctx.eval_key('ensemble', 'ensemble.json')} missing: the "
                                                   "ensemble stage did not run"), "not run")
        return
    body = not_run(ensemble["not_run"]) if ensemble.get("not_run") else ""
    body += paragraph(f"All single models and ensembles on the test split; the best by {ensemble['metric']} is "
                      f"highlighted: {ensemble['best']}.")
    columns = ["name", "kind", "accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1",
               "macro_auc", "ece"]
    body += table(ensemble["comparison"], columns, best=lambda r: r.get("best"))
    body += page.file_link(ensemble["comparison_key"], "comparison.csv")
    body += paragraph(f"Tie-break: {ensemble.get('tie_break')}.")
    if ensemble.get("skipped"):
        body += "<h3>Subsets not built</h3><ul>" + "".join(f"<li>{esc(s)}</li>" for s in ensemble["skipped"]) + "</ul>"
    weights = [{"ensemble": n, **e["weights"]} for n, e in ensemble.get("ensembles", {}).items() if e.get("weights")]
    if weights:
        body += "<h3>Fitted weights (validation log-loss)</h3>" + table(weights)
    if ensemble.get("best_ensemble"):
        body += f"<h3>Best ensemble: {esc(ensemble['best_ensemble'])}</h3>" + page.figures(ensemble.get("figures"))
    page.add("ensembles", "Ensembles", body)


def section_champion(page: Page, promotion: dict | None) -> None:
    ctx = page.ctx
    if promotion is None:
        page.add("champion", "Champion decision", not_run(f"{ctx.key('promotion.json')} missing: the promote "
                                                          "stage did not run"), "not run")
        return
    metric = promotion["metric"]
    champion = promotion.get("champion_on_this_test") or {}
    previous = promotion.get("previous_champion") or {}
    body = paragraph(f"Decision: {promotion['decision']}. {promotion['reason']}", "note")
    if promotion.get("candidate_note"):
        body += paragraph(promotion["candidate_note"])
    body += kv_table({
        "metric": metric, "margin": promotion.get("margin"), "candidate": promotion["candidate"]["name"],
        f"candidate {metric}": promotion["candidate"].get(metric),
        "candidate test accuracy": promotion["candidate"].get("accuracy"),
        "best row": promotion["best"]["name"], f"best row {metric}": promotion["best"].get(metric),
        "previous champion": f"{previous.get('model_id')} from run {previous.get('run_id')}" if previous else "none",
        "previous champion's recorded value": previous.get("value"),
        f"previous champion {metric} on this test split": (champion.get("metrics") or {}).get(metric),
        "champion comparable": champion.get("why") if champion else "no champion",
        "new champion key": promotion.get("champion_key"), "history record": promotion.get("history_key")})
    body += "<h3>Guards</h3>" + table(promotion.get("guards", []))
    page.add("champion", "Champion decision", body)


def section_predictions(page: Page, predictions: dict | None) -> None:
    ctx = page.ctx
    if predictions is None:
        page.add("predictions", "Predictions", not_run(f"{ctx.report_key('predictions.json')} missing: the "
                                                       "predict stage did not run"), "not run")
        return
    if predictions["status"] != "done":
        page.add("predictions", "Predictions", not_run(predictions.get("reason", "skipped")), "not run")
        return
    import io

    import pandas as pd

    body = kv_table({"images": predictions["url"], "model": predictions["model"], "predicted": predictions["predicted"],
                     "rejected": predictions["rejected"]})
    body += "<h3>Predicted classes</h3>" + kv_table(predictions.get("class_counts", {}))
    preview = pd.read_csv(io.StringIO(ctx.store.get_text(predictions["predictions_key"])), nrows=PREVIEW_ROWS)
    body += f"<h3>First {len(preview)} predictions</h3>" + table(preview.to_dict("records"))
    body += page.file_link(predictions["predictions_key"], "predictions.csv (all images)")
    body += page.file_link(predictions["rejected_key"], "predictions_rejected.csv (unreadable files with reasons)")
    page.add("predictions", "Predictions", body)


# ----------------------------------------------------------------------------- the stage
def failures_banner(ctx) -> str:
    """The run's failed tasks and their errors, first thing on the page (nothing when none failed)."""
    from cnn_tasks.failures import read_failures

    failed = read_failures(ctx.store, ctx.prefix)
    if not failed:
        return ""
    items = "".join(f"<li><strong>{esc(f['task'])}</strong>: {esc(f['error'])}: {esc(f['message'])}</li>"
                    for f in failed)
    return (f'<div class="notrun"><p><strong>This run FAILED: {len(failed)} task(s) failed.</strong> The sections '
            f'below show what did run; those marked "not run" were stopped by these failures.</p>'
            f"<ul>{items}</ul></div>")


def promotion_summary(promotion: dict | None) -> dict | None:
    if promotion is None:
        return None
    metric = promotion["metric"]
    champion_metrics = (promotion.get("champion_on_this_test") or {}).get("metrics") or {}
    return {**{k: promotion.get(k) for k in ("decision", "promoted", "reason", "metric", "margin", "candidate_note",
                                             "champion_key", "history_key")},
            "candidate": promotion["candidate"]["name"], "value": promotion["candidate"].get(metric),
            "best": promotion["best"]["name"], "champion_value": champion_metrics.get(metric)}


def read_failures_summary(ctx) -> list[dict]:
    from cnn_tasks.failures import read_failures

    return [{k: f.get(k) for k in ("task", "error", "message")} for f in read_failures(ctx.store, ctx.prefix)]


def build_summary(ctx, dataset, model_ids, metas, evals, ensemble, promotion, predictions, page, versions) -> dict:
    """The machine-readable twin of the page."""
    def split_metrics(mid):
        return evals[mid]["splits"] if mid in evals else {"test": None, "status": "not evaluated"}

    return {
        "run_id": ctx.run_id, "config": ctx.config.to_dict(), "versions": versions,
        "dataset": {k: (dataset or {}).get(k) for k in ("dataset_sha256", "classes", "image_size", "rebalance")},
        "models": {mid: {**split_metrics(mid), "params": metas[mid].get("params"),
                         "best_epoch": metas[mid].get("best_epoch")} for mid in model_ids},
        "ensembles": None if ensemble is None else {
            "best": ensemble["best"], "best_ensemble": ensemble["best_ensemble"], "comparison": ensemble["comparison"],
            "weights": {n: e["weights"] for n, e in ensemble["ensembles"].items() if e.get("weights")}},
        "promotion": promotion_summary(promotion),
        "predictions": predictions,
        "sections": page.status,
        "failures": read_failures_summary(ctx),
        "artifacts": {"report": ctx.report_key("index.html"), "summary": ctx.report_key("summary.json"),
                      "models": {mid: ctx.model_key(mid, "model.keras") for mid in model_ids},
                      "metrics": {mid: ctx.eval_key(mid, "metrics.json") for mid in evals},
                      "predictions": {mid: ctx.eval_key(mid, "predictions.npz") for mid in evals},
                      "ensemble": ctx.eval_key("ensemble", "ensemble.json") if ensemble else None,
                      "promotion": ctx.key("promotion.json") if promotion else None},
    }


def run(ctx) -> dict:
    """Write report/index.html and report/summary.json for this run."""
    ctx_json = lambda key: read_json(ctx, key)  # noqa: E731
    dataset, analysis, ingest = (ctx_json(ctx.data_key(n)) for n in ("dataset.json", "analysis.json", "ingest.json"))
    model_ids = trained_model_ids(ctx)
    metas = {m: ctx_json(ctx.model_key(m, "meta.json")) for m in model_ids}
    evals = {m: e for m in model_ids if (e := ctx_json(ctx.eval_key(m, "metrics.json")))}
    ensemble = ctx_json(ctx.eval_key("ensemble", "ensemble.json"))
    promotion = ctx_json(ctx.key("promotion.json"))
    predictions = ctx_json(ctx.report_key("predictions.json"))
    versions = runtime.package_versions()

    page = Page(ctx)
    section_overview(page, dataset, versions)
    section_data(page, analysis, dataset)
    section_rejected(page, ingest)
    section_models(page, model_ids, metas)
    section_checks(page)
    section_curves(page, model_ids, metas)
    section_viz(page, model_ids)
    section_evaluation(page, model_ids, evals)
    section_ensembles(page, ensemble)
    section_champion(page, promotion)
    section_predictions(page, predictions)

    intro = failures_banner(ctx)
    intro += paragraph(f"Run {ctx.run_id}: {len(model_ids)} trained model(s) on "
                      f"{len((dataset or {}).get('classes', []))} classes. Figures open full size when clicked.")
    report_key, summary_key = ctx.report_key("index.html"), ctx.report_key("summary.json")
    ctx.store.put_text(report_key, page.html(f"CNN image classification report: {ctx.run_id}", intro),
                       "text/html; charset=utf-8")
    summary = build_summary(ctx, dataset, model_ids, metas, evals, ensemble, promotion, predictions, page, versions)
    from cnn_tasks.contracts import Summary

    Summary.write(ctx.store, summary_key, summary)  # validated: a format change fails here
    log.info("report written to %s", ctx.store.url(report_key))
    return {"report_key": report_key, "report_url": ctx.store.url(report_key), "summary_key": summary_key}
