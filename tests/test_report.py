"""Report: the section functions' data, the results-first summary, and the rendered page (every
section, relative links that resolve, escaping, not-run notes, failures banner), summary.json.

Upstream stages are JSON fixtures in their real schemas, but the models are real saved models of the
configured experiments (the layer tables come from models.describe) with realistic history.json files
(the comparison figure comes from plots.compare_runs); evaluate, ensemble, promote and predict run."""

from __future__ import annotations

import io
import posixpath
import re

import numpy as np
import pytest
from PIL import Image

from cnn_tasks import ensemble, evaluate, failures, models, predict, promote, report, runtime
from cnn_tasks.metrics import classification_metrics
from cnn_tasks.plots import figure_entry
from tests.fixtures_training import write_model_meta
from tests.helpers import CLASSES, random_proba, store_figure_exists

SECTIONS = (
    "results",
    "data",
    "rejected",
    "models",
    "checks",
    "curves",
    "viz",
    "evaluation",
    "ensembles",
    "champion",
    "drift",
    "predictions",
    "overview",
)  # in page order
EXPERIMENTS = [
    {"name": "baseline", "description": "Reference <script>alert(1)</script> & co", "conv": [{"filters": 8}] * 4},
    {"name": "wide", "description": "Wider layers", "conv": [{"filters": 16}] * 4, "activation": "elu"},
]
TRAINED = ["baseline__balanced", "baseline__unbalanced", "wide__unbalanced"]  # wide__balanced did not train
MEAN, STD = [120.0, 110.0, 90.0], [50.0, 45.0, 40.0]


def png(store, key: str, caption: str) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, format="PNG")
    store.put_bytes(key, buffer.getvalue())
    return figure_entry(key, caption)


def analysis_fixture(figures):
    """analysis.json in the split stage's schema, built with its own helpers."""
    from cnn_tasks import split

    counts = {
        "train": dict(zip(CLASSES, [14, 14, 11])),
        "val": dict(zip(CLASSES, [4, 4, 3])),
        "test": dict(zip(CLASSES, [10, 10, 10])),
    }
    imbalance = {name: split.imbalance_measures(c) for name, c in counts.items()}
    shortfalls = split.find_shortfalls(counts)
    sizes = {
        "width": {"min": 16, "median": 16.0, "max": 16},
        "height": {"min": 16, "median": 16.0, "max": 16},
        "most_common": [[16, 16, 39]],
    }
    return {
        "classes": CLASSES,
        "counts": counts,
        "totals": {n: sum(c.values()) for n, c in counts.items()},
        "layout": split.layout_summary(
            {
                "kind": "class_folders",
                "wrapper": None,
                "splits": {},
                "warnings": ["a <layout> warning"],
                "loose_files": ["x.txt"],
            }
        ),
        "origin": {"train": "carved", "val": "carved", "test": "carved"},
        "imbalance": imbalance,
        "conclusion": split.conclusion(imbalance, "augment") + " <fixed>",
        "shortfalls": shortfalls,
        "shortfall_text": split.shortfall_text(shortfalls),
        "image_sizes": dict.fromkeys(counts, sizes),
        "mean": [1.0, 2.0, 3.0],
        "std": [4.0, 5.0, 6.0],
        "no_leakage": True,
        "figures": figures,
    }


def history(mid: str, epochs: int = 5) -> list[dict]:
    """A history.json as train.EpochRecorder writes it: improving, then over-fitting after epoch 3."""
    rng = np.random.default_rng(len(mid))
    rows = []
    for epoch in range(1, epochs + 1):
        loss = 1.1 * 0.7**epoch
        val_loss = 1.15 * 0.75 ** min(epoch, 3) + 0.04 * max(0, epoch - 3) + rng.uniform(0, 0.01)
        rows.append(
            {
                "epoch": epoch,
                "loss": loss,
                "accuracy": 1 - loss / 1.6,
                "val_loss": val_loss,
                "val_accuracy": 1 - val_loss / 1.5,
                "learning_rate": 1e-3,
                "seconds": 2.5 + rng.uniform(0, 0.2),
                "images_per_s": 800.0 + rng.uniform(0, 50),
            }
        )
    return rows


def write_models(ctx, tmp_path) -> None:
    """What the train stage leaves per trained model: a real model.keras of its experiment (built by
    models.build_model for the dataset's 16 px images), history.json, meta.json and the curves figure."""
    s = ctx.store
    for mid in TRAINED:
        experiment, variant = mid.split("__")
        spec = ctx.config.experiment(experiment)
        model = models.build_model(spec, len(CLASSES), 16, MEAN, STD)
        model.save(tmp_path / f"{mid}.keras")
        s.put_file(ctx.model_key(mid, "model.keras"), tmp_path / f"{mid}.keras")
        s.put_json(ctx.model_key(mid, "history.json"), history(mid))
        write_model_meta(
            ctx,
            mid,
            model,
            classes=CLASSES,
            stopped_by="time_budget",
            best_val_accuracy=0.6,
            final_val_accuracy=0.55,
            wall_time_s=75.5,
            train_time_s=12.5,
            images_per_s=820.0,
            dataset_sha256="f00d",
            versions={},
            git_commit=None,
            keys={"model": ctx.model_key(mid, "model.keras"), "history_json": ctx.model_key(mid, "history.json")},
            figures=[png(s, ctx.model_key(mid, "curves.png"), f"Curves of {mid}.")],
        )


def write_upstream(ctx):
    """Stage outputs as the other stages write them (JSON fixtures for the data and viz stages)."""
    s = ctx.store
    s.put_json(
        ctx.data_key("ingest.json"),
        {"accepted": 71, "rejected": 2, "seconds": 3.25, "rejected_by_reason": {"corrupt": 1, "not an image": 1}},
    )
    s.put_text(ctx.data_key("rejected.csv"), "path,reason\nbad.png,corrupt\nx.txt,not an image\n")
    s.put_json(
        ctx.data_key("analysis.json"),
        analysis_fixture([png(s, ctx.data_key("figures/bars.png"), "Class counts per split.")]),
    )
    s.put_json(
        ctx.data_key("dataset.json"),
        {
            "classes": CLASSES,
            "image_size": 16,
            "mean": MEAN,
            "std": STD,
            "dataset_sha256": "f00d",
            "rebalance": "augment",
            "splits": {
                "train": {
                    "unbalanced": {"shards": [], "count": 42, "class_counts": [14, 14, 14], "class_weight": None}
                },
                "test": {"unbalanced": {"shards": [], "count": 30, "class_counts": [10, 10, 10], "class_weight": None}},
            },
            "figures": [png(s, ctx.data_key("figures/rebalanced.png"), "Counts after rebalancing.")],
        },
    )
    s.put_json(
        ctx.check_key("baseline", "single_batch.json"),
        {
            "passed": True,
            "final_loss": 0.01,
            "figures": [png(s, ctx.check_key("baseline", "loss.png"), "Loss on one batch.")],
        },
    )
    s.put_json(
        ctx.check_key("baseline", "lr_range.json"),
        {
            "learning_rate": 0.002,
            "spec_learning_rate": 0.001,
            "steps": 100,
            "learning_rates": [1e-5, 1.0],
            "smoothed_losses": [2.3, 9.0],
            "figures": [png(s, ctx.check_key("baseline", "lr_range.png"), "Loss as the rate grows.")],
        },
    )
    s.put_json(
        ctx.viz_key("baseline__unbalanced", "viz.json"),
        {
            "explanation": "Early filters pick up colour.",
            "dead_channels": [{"layer": "act1", "dead": 0, "total": 8}],
            "figures": [png(s, ctx.viz_key("baseline__unbalanced", "kernels.png"), "First-layer kernels.")],
        },
    )


def write_our_stages(ctx):
    """Evaluate (from crafted arrays), ensemble, promote and predict, as they really write."""
    rng = np.random.default_rng(0)
    y_test, y_val = rng.integers(0, 3, 30), rng.integers(0, 3, 30)
    images = rng.uniform(0, 255, (30, 8, 8, 3)).astype(np.float32)
    for i, mid in enumerate(TRAINED):
        splits = {}
        for split, y in (("test", y_test), ("val", y_val)):
            p = random_proba(len(y), 3, seed=i + len(split))
            p[np.arange(len(y)), y] += 0.4 * (i + 1)
            splits[split] = (y, p / p.sum(1, keepdims=True))
        tta = {
            "views": ["identity", "flip_left_right"],
            "test": classification_metrics(y_test, splits["test"][1], CLASSES),
        }
        evaluate.write_results(ctx, mid, CLASSES, splits, images, [f"k{j}" for j in range(30)], tta=tta)
    ensemble.run(ctx, TRAINED)
    promote.run(ctx)
    predict.run(ctx)


def links(html_text: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html_text) + [
        h for h in re.findall(r'<a href="([^"]+)"', html_text) if not h.startswith("#")
    ]


def sections_of(run) -> dict[str, dict]:
    return {s["anchor"]: s for s in (build(run) for build in report.SECTIONS)}


def all_figures(value) -> list[dict]:
    """Every figure entry ({missing, src, caption}) anywhere in a section's data."""
    if isinstance(value, dict):
        if "src" in value and "caption" in value:
            return [value]
        return [f for v in value.values() for f in all_figures(v)]
    if isinstance(value, list):
        return [f for v in value for f in all_figures(v)]
    return []


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One run with every stage's output (module-scoped: saving real models takes a while)."""
    from cnn_tasks.config import PipelineConfig
    from cnn_tasks.context import RunContext

    tmp_path = tmp_path_factory.mktemp("full")
    config = PipelineConfig.from_dict(
        {
            "store_uri": f"file://{tmp_path / 'store'}",
            "dataset_checksum": None,
            "experiments": EXPERIMENTS,
            "promotion_min_accuracy": 0.0,
        }
    )
    ctx = RunContext.create(config, "test_run")
    write_upstream(ctx)
    write_models(ctx, tmp_path)
    write_our_stages(ctx)
    return ctx


def test_sections_hold_every_stage_output(full_run):
    ctx = full_run
    run = report.Run(ctx)
    sections = sections_of(run)
    assert list(sections) == list(SECTIONS[1:])  # after the results; the run id and configuration last
    not_ok = {a: s["status"] for a, s in sections.items() if s["status"] != "ok"}
    # wide's single-batch check did not run; the run's data has no profile to compare for drift
    assert not_ok == {"checks": "1 missing", "drift": "not run", "predictions": "not run"}
    baseline = next(c for c in sections["checks"]["checks"] if c["name"] == "baseline")
    assert baseline["fields"]["plain"]["lr range test: learning_rate"] == 0.002  # beside the single-batch check
    assert [f["src"].rsplit("/", 1)[1] for f in baseline["figures"]] == ["loss.png", "lr_range.png"]

    # models: the reference experiment, how the other differs, and each model's real layer table
    models_ = sections["models"]
    assert [e["name"] for e in models_["experiments"]] == ["baseline", "wide"]
    assert models_["experiments"][0]["diffs"] is None
    assert {"setting": "activation", "baseline": "relu", "wide": "elu"} in models_["experiments"][1]["diffs"]
    by_id = {m["id"]: m for m in models_["models"]}
    assert by_id["wide__balanced"]["missing"].endswith("missing: this model was not trained")
    for mid in TRAINED:
        described = models.describe(models.load_model(ctx.cached(ctx.model_key(mid, "model.keras"))))
        assert by_id[mid]["missing"] is None
        assert by_id[mid]["layers"] == described["layers"]
        assert by_id[mid]["params"] == described["total_params"]
        assert "config" not in by_id[mid]["fields"]["plain"]  # shown once, at the end
    assert by_id["wide__unbalanced"]["params"] > by_id["baseline__unbalanced"]["params"]

    # evaluation rows are the evaluate stage's metrics
    rows = {r["model"]: r for r in sections["evaluation"]["rows"]}
    for mid in TRAINED:
        metrics = ctx.store.get_json(ctx.eval_key(mid, "metrics.json"))["splits"]
        assert rows[mid]["test accuracy"] == metrics["test"]["accuracy"]
        assert rows[mid]["val accuracy"] == metrics["val"]["accuracy"]
        tta = ctx.store.get_json(ctx.eval_key(mid, "metrics.json"))["tta"]["test"]
        assert rows[mid]["test accuracy, TTA 2 views"] == tta["accuracy"]  # beside the plain score
        assert rows[mid]["test macro_f1, TTA 2 views"] == tta["macro_f1"]

    # ensembles: the comparison with one best row; champion and predictions say what happened
    ensemble_json = ctx.store.get_json(ctx.eval_key("ensemble", "ensemble.json"))
    assert sections["ensembles"]["rows"] == ensemble_json["comparison"]
    assert sum(1 for r in sections["ensembles"]["rows"] if r.get("best")) == 1
    assert sections["champion"]["decision"].startswith("Decision: promoted.")
    assert sections["predictions"]["not_run"]
    assert "unlabelled_url is not set" in sections["predictions"]["not_run"]

    # data: counts per class, the shortfall marker, the layout warnings
    data = sections["data"]["analysis"]
    assert data["counts"][2] == {
        "class": CLASSES[2],
        "training": "11 *",
        "validation": "3 *",
        "test": "10 *",
        "total": 24,
    }  # * below the reference minimum
    assert data["short"] is True
    assert data["layout"]["warnings"][0].startswith("1 file(s) lay beside the class folders")
    assert sections["rejected"]["fields"]["plain"]["rejected"] == 2
    assert sections["rejected"]["csv"] == {
        "missing": None,
        "href": "../data/rejected.csv",
        "text": "rejected.csv: every rejected file with its reason",
    }

    # every figure of every section exists in the run folder, linked relative to the page
    figures = all_figures(list(sections.values()))
    assert len(figures) > 20
    for figure in figures:
        assert figure["missing"] is None
        assert ctx.store.exists(posixpath.normpath(posixpath.join(ctx.report_key(), figure["src"]))), figure
    comparison = sections["curves"]["comparison"]
    assert comparison["src"] == "../models/comparison.png"  # drawn by plots.compare_runs from history.json
    assert store_figure_exists(ctx.store, ctx.key("models", "comparison.png"))
    assert comparison["caption"] == "Validation accuracy (left) and loss (right) per epoch for every trained model."


def test_results_come_from_the_stage_outputs(full_run):
    ctx = full_run
    failures.record_timing(ctx.store, ctx.prefix, "download", -1, None, 3.24)
    failures.record_timing(ctx.store, ctx.prefix, "train", 2, "wide / unbalanced", 76.0, try_number=2)
    results = report.results(report.Run(ctx))
    tests = {m: ctx.store.get_json(ctx.eval_key(m, "metrics.json"))["splits"]["test"] for m in TRAINED}
    best = max(TRAINED, key=lambda m: tests[m]["macro_f1"])
    assert results["best_model"] == {
        "name": best,
        "accuracy": tests[best]["accuracy"],
        "macro_f1": tests[best]["macro_f1"],
    }
    ensemble_json = ctx.store.get_json(ctx.eval_key("ensemble", "ensemble.json"))
    row = next(r for r in ensemble_json["comparison"] if r["name"] == ensemble_json["best_ensemble"])
    assert results["best_ensemble"]["name"] == ensemble_json["best_ensemble"]
    assert results["best_ensemble"]["macro_f1"] == row["macro_f1"]
    assert results["best_ensemble"]["overall_best"] == ensemble_json["best"]
    promotion = ctx.store.get_json(ctx.key("promotion.json"))
    assert results["champion"] == {
        "decision": "promoted",
        "reason": promotion["reason"],
        "metric": "macro_f1",
        "candidate": promotion["candidate"]["name"],
    }
    assert results["dataset"] == (
        "3 classes, 80 images (training 39, validation 11, test 30), layout class_folders, 2 rejected"
    )
    assert results["stage_times"] == [  # in the order the tasks finished
        {"task": "download", "wall time": "3.2 s", "epochs": ""},
        {
            "task": "train [wide / unbalanced]",
            "wall time": "1 min 16 s",
            "epochs": f"5 of {ctx.config.epochs}, stopped by budget at epoch 5",
        },
    ]
    warnings = " | ".join(results["warnings"])
    assert "training split: mild class imbalance (largest/smallest = 1.27)" in warnings
    assert "2 file(s) rejected (corrupt: 1, not an image: 1)" in warnings
    assert "Not trained: wide__balanced." in warnings
    assert "a <layout> warning" in warnings
    assert "fall short of the reference minimums" in warnings


def test_full_report_page_and_summary(full_run):
    ctx = full_run
    out = report.run(ctx)

    assert out["report_key"] == "runs/test_run/report/index.html"
    assert out["report_url"].endswith("index.html")
    page = ctx.store.get_text(out["report_key"])
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
        if section != "results":
            assert f'href="#{section}"' in page, section
    # results first, then the contents, the sections, and the run id and configuration last, collapsed
    assert page.index('<section id="results">') < page.index("<nav>") < page.index('<section id="data">')
    assert page.index('<section id="predictions">') < page.index('<section id="overview">')
    overview = page.split('<section id="overview">')[1]
    assert "<details><summary>Configuration</summary>" in overview
    assert "test_run" in overview
    assert "test_run" not in page.split("<nav>")[0].split("</title>")[1]  # not before the answer
    sources = re.findall(r'<img src="([^"]+)"', page)
    for src in links(page):
        assert not src.startswith(("/", "file:", "s3:")), src
        assert ctx.store.exists(posixpath.normpath(posixpath.join(ctx.report_key(), src))), src
    assert page.count("<figure") == page.count("<figcaption>") == len(sources) > 20
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;fixed&gt;" in page
    assert "&lt;layout&gt;" in page
    assert page.count('<tr class="best">') == 1
    assert 'name="viewport"' in page
    assert ".scroll{overflow-x:auto" in page  # phone width: tables scroll
    assert page.count("<table>") == page.count('<div class="scroll"><table>')
    for mid in TRAINED:
        assert f"<summary>Layer table of {mid} (" in page

    summary = ctx.store.get_json(out["summary_key"])
    assert set(summary["models"]) == set(TRAINED)
    for mid in TRAINED:
        metrics = ctx.store.get_json(ctx.eval_key(mid, "metrics.json"))["splits"]["test"]
        assert summary["models"][mid]["test"]["accuracy"] == metrics["accuracy"]
        assert summary["models"][mid]["test"]["macro_f1"] == metrics["macro_f1"]
        assert summary["models"][mid]["test_tta"]["views"] == ["identity", "flip_left_right"]
    assert summary["dataset"]["dataset_sha256"] == "f00d"
    assert summary["promotion"]["promoted"] is True
    assert summary["ensembles"]["best"]
    assert summary["results"]["best_model"]["name"] in TRAINED
    assert summary["sections"] == dict.fromkeys(SECTIONS[1:], "ok") | {
        "checks": "1 missing",
        "drift": "not run",
        "predictions": "not run",
    }
    assert summary["versions"]["numpy"] == np.__version__
    names = {"python"} | {n if isinstance(n, str) else n[0] for n in runtime.VERSION_PACKAGES}
    assert set(summary["versions"]) == names
    assert summary["config"]["experiments"][0]["name"] == "baseline"


def test_empty_run_says_what_did_not_run(make_ctx):
    ctx = make_ctx()
    run = report.Run(ctx)
    for anchor, data in sections_of(run).items():
        if anchor == "data":
            assert "the split stage did not run" in data["analysis_missing"]
            assert data["analysis"] is None
        elif anchor == "checks":
            assert all(c["missing"] for c in data["checks"])
        elif anchor == "models":
            assert all(m["missing"] for m in data["models"])
        elif anchor != "overview":
            assert data["status"] == "not run", anchor
            assert data["not_run"], anchor
    results = report.results(run)
    assert [results[k] for k in ("best_model", "best_ensemble", "champion", "dataset")] == [None] * 4
    assert results["stage_times"] == []

    out = report.run(ctx)
    page = ctx.store.get_text(out["report_key"])
    for section in SECTIONS:
        body = page.split(f'<section id="{section}">')[1].split("</section>")[0]
        if section != "overview":
            assert '<p class="notrun"><strong>not run:</strong>' in body, section
    assert "<img" not in page
    assert ctx.store.get_json(out["summary_key"])["models"] == {}


def test_failed_run_opens_with_the_failures(make_ctx):
    from cnn_tasks import failures
    from cnn_tasks.sources import DownloadError

    ctx = make_ctx()
    failures.record_failure(ctx.store, ctx.prefix, "download", -1, None, DownloadError("bad <archive> & 'name'"))
    page = ctx.store.get_text(report.run(ctx)["report_key"])
    banner = page.index("This run FAILED: 1 task(s) failed.")
    assert banner < page.index('<section id="results">') < page.index("<nav>")
    assert "<strong>download</strong>: DownloadError: bad &lt;archive&gt; &amp; &#39;name&#39;" in page
    assert "This run FAILED" not in ctx.store.get_text(report.run(make_ctx("other_run"))["report_key"])


HOSTILE = "<script>alert(\"x\")</script> & 'q'"


def test_macros_escape_hostile_names_everywhere():
    m = report.ENV.get_template("macros.html").module
    html_text = "".join(
        [
            str(m.table([{HOSTILE: HOSTILE, "n": 0.5, "flat": [HOSTILE, 1], "nested": {HOSTILE: [{HOSTILE: 1}]}}])),
            str(m.figure({"missing": None, "src": f"../x/{HOSTILE}.png", "caption": HOSTILE})),
            str(m.file({"missing": None, "href": f'"{HOSTILE}', "text": HOSTILE})),
            str(m.fields(report.fields({"a": HOSTILE, HOSTILE: {"b": HOSTILE}}))),
            str(m.not_run(HOSTILE)),
        ]
    )
    assert "<script" not in html_text
    assert 'alert("x")' not in html_text
    assert "'q'" not in html_text
    assert html_text.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#39;q&#39;") >= 10
    assert '<td class="num">0.5000</td>' in html_text  # numbers formatted and right-aligned


def test_table_marks_the_best_row_and_not_run_notes():
    m = report.ENV.get_template("macros.html").module
    rows = [{"name": "a", "best": False}, {"name": "b", "best": True}]
    assert str(m.table(rows, ["name"], best="best")).count('<tr class="best"><td>b</td></tr>') == 1
    assert str(m.table([])) == "<p>(empty)</p>\n"
    assert str(m.not_run("why")) == '<p class="notrun"><strong>not run:</strong> why</p>'
    assert str(m.figure({"missing": "figure k is listed but missing"})).startswith('<p class="notrun">')


@pytest.mark.parametrize(
    "seconds, text", [(3.25, "3.2 s"), (59.4, "59.4 s"), (75.5, "1 min 16 s"), (3600, "60 min 00 s"), (None, "—")]
)
def test_duration(seconds, text):
    assert report.duration(seconds) == text


def test_best_model_prefers_macro_f1_then_accuracy():
    def evals(**tests):
        return {m: {"splits": {"test": t}} for m, t in tests.items()}

    assert report.best_model({}) is None
    picked = report.best_model(evals(a={"macro_f1": 0.8, "accuracy": 0.9}, b={"macro_f1": 0.85, "accuracy": 0.7}))
    assert picked == {"name": "b", "accuracy": 0.7, "macro_f1": 0.85}
    tie = report.best_model(evals(a={"macro_f1": 0.8, "accuracy": 0.7}, b={"macro_f1": 0.8, "accuracy": 0.75}))
    assert tie["name"] == "b"


def test_a_balanced_clean_run_has_no_data_warnings(make_ctx):
    from cnn_tasks import split

    ctx = make_ctx(rebalance="none")
    counts = {s: dict.fromkeys(CLASSES, n) for s, n in (("train", 1000), ("val", 300), ("test", 60))}
    shortfalls = split.find_shortfalls(counts)
    assert shortfalls == []
    ctx.store.put_json(
        ctx.data_key("analysis.json"),
        {
            "imbalance": {s: split.imbalance_measures(c) for s, c in counts.items()},
            "shortfalls": shortfalls,
            "shortfall_text": split.shortfall_text(shortfalls),
            "no_leakage": True,
            "layout": {"warnings": []},
        },
    )
    ctx.store.put_json(ctx.data_key("ingest.json"), {"accepted": 4080, "rejected": 0, "rejected_by_reason": {}})
    not_trained = ", ".join(report.expected_model_ids(ctx))  # only what is missing is reported
    assert report.warnings(report.Run(ctx)) == [f"Not trained: {not_trained}."]
