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

from cnn_tasks import (
    ensemble,
    evaluate,
    failures,
    headline,
    leaderboard,
    models,
    predict,
    promote,
    report,
    report_text,
    runtime,
)
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

    def sizes(images: int) -> dict:  # every image 16 x 16 px
        side = {"min": 16, "median": 16.0, "max": 16}
        return {"width": side, "height": side, "most_common": [[16, 16, images]]}

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
        "image_sizes": {n: sizes(sum(c.values())) for n, c in counts.items()},
        "mean": [1.0, 2.0, 3.0],
        "std": [4.0, 5.0, 6.0],
        "no_leakage": True,
        "figures": figures,
    }


STUCK = "baseline__balanced"  # its validation accuracy stays at chance (3 classes, 4 of 11 in the largest)


def history(mid: str, epochs: int = 5) -> list[dict]:
    """A history.json as train.EpochRecorder writes it: improving, then over-fitting after epoch 3
    (STUCK stays near always answering the largest validation class, 4 of 11 = 0.364, in 4 of 5 epochs)."""
    rng = np.random.default_rng(len(mid))
    rows = []
    for epoch in range(1, epochs + 1):
        loss = 1.1 * 0.7**epoch
        val_loss = 1.15 * 0.75 ** min(epoch, 3) + 0.04 * max(0, epoch - 3) + rng.uniform(0, 0.01)
        val_accuracy = (0.6 if epoch == 3 else 0.37 + 0.01 * epoch) if mid == STUCK else 1 - val_loss / 1.5
        rows.append(
            {
                "epoch": epoch,
                "loss": loss,
                "accuracy": 1 - loss / 1.6,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
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
            "dead_channels": {"act1": {"dead": 0, "total": 8}, "act2": {"dead": 0, "total": 8}},
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
    """Every figure and file the page links to in the run folder (not anchors or Airflow's pages)."""
    return re.findall(r'<img src="([^"]+)"', html_text) + [
        h for h in re.findall(r'<a href="([^"]+)"', html_text) if not h.startswith(("#", "http://", "https://"))
    ]


def section_html(page: str, anchor: str) -> str:
    return page.split(f'<section id="{anchor}">')[1].split("</section>")[0]


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
    # wide's single-batch check did not run; the run's data has no profile to compare for drift; no
    # unlabelled images to predict is a normal state, not a failure
    assert not_ok == {"checks": "1 missing", "drift": "not run", "predictions": "nothing to do"}
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
    assert sections["predictions"]["neutral"] is True
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
    results = headline.results(report.Run(ctx))
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
    assert (
        f"{STUCK} stayed at chance: its validation accuracy was within 9 points of always answering the largest "
        "class (36.4%) in 4 of 5 epochs." in warnings
    )
    assert "baseline__unbalanced stayed" not in warnings  # at chance in its first epoch only
    assert results["run_time"]["tasks"] == 2
    assert results["run_time"]["duration_s"] >= 76.0
    assert results["run_time"]["line"].startswith("Run started 20")
    assert " UTC and took 1 min " in results["run_time"]["line"]


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
    # not before the answer: only the Run line after the warnings names it (the TensorBoard command)
    assert "test_run" not in page.split('<h3 id="warnings">')[0].split("</title>")[1]
    sources = re.findall(r'<img src="([^"]+)"', page)
    for src in links(page):
        assert not src.startswith(("/", "file:", "s3:")), src
        assert ctx.store.exists(posixpath.normpath(posixpath.join(ctx.report_key(), src))), src
    assert page.count("<figure") == page.count("<figcaption>") == len(sources) > 20
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;fixed&gt;" in page
    assert "&lt;layout&gt;" in page
    assert page.count('<tr class="best">') == 2  # the leaderboard's best and the ensemble table's
    assert 'name="viewport"' in page
    assert ".scroll{overflow-x:auto" in page  # phone width: tables scroll
    assert page.count("<table>") == page.count('<div class="scroll"><table>')
    for mid in TRAINED:
        assert f"<summary>Layer table of {mid} (" in page

    summary = ctx.store.get_json(out["summary_key"])
    board = headline.results(report.Run(ctx))["leaderboard"]
    assert summary["results"]["leaderboard"] == board  # the page's leaderboard, machine-readable
    assert [r["name"] for r in summary["results"]["leaderboard"]["rows"]][0] == board["rows"][0]["name"]
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
        "predictions": "nothing to do",
    }
    assert summary["versions"]["numpy"] == np.__version__
    names = {"python"} | {n if isinstance(n, str) else n[0] for n in runtime.VERSION_PACKAGES}
    assert set(summary["versions"]) == names
    assert summary["config"]["experiments"][0]["name"] == "baseline"


def test_empty_run_says_what_did_not_run(make_ctx, monkeypatch):
    for name in ("AIRFLOW__API__BASE_URL", "AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_DAG_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
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
    results = headline.results(run)
    assert [results[k] for k in ("best_model", "best_ensemble", "champion", "dataset", "leaderboard")] == [None] * 5
    assert results["stage_times"] == []
    assert results["run_time"] is None
    assert results["links"] == {"airflow_run": None, "tensorboard": None}  # nothing trained, nothing to show

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
    from cnn_tasks.ingest.errors import DownloadError

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
            str(m.fields(report_text.fields({"a": HOSTILE, HOSTILE: {"b": HOSTILE}}))),
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
    "seconds, text", [(3.25, "3.2 s"), (59.4, "59.4 s"), (75.5, "1 min 16 s"), (3600, "1 h 00 min"), (None, "—")]
)
def test_duration(seconds, text):
    assert leaderboard.duration(seconds) == text


def test_best_model_prefers_macro_f1_then_accuracy():
    def evals(**tests):
        return {m: {"splits": {"test": t}} for m, t in tests.items()}

    assert headline.best_model({}) is None
    picked = headline.best_model(evals(a={"macro_f1": 0.8, "accuracy": 0.9}, b={"macro_f1": 0.85, "accuracy": 0.7}))
    assert picked == {"name": "b", "accuracy": 0.7, "macro_f1": 0.85}
    tie = headline.best_model(evals(a={"macro_f1": 0.8, "accuracy": 0.7}, b={"macro_f1": 0.8, "accuracy": 0.75}))
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
    assert headline.warnings(report.Run(ctx)) == [f"Not trained: {not_trained}."]


# ----------------------------------------------------------------------------- the first screen
def test_the_leaderboard_of_every_model_and_ensemble_comes_right_under_the_cards(full_run):
    ctx = full_run
    page = ctx.store.get_text(report.run(ctx)["report_key"])
    results = section_html(page, "results")
    cards, board, warnings = (
        results.index(x) for x in ('<div class="cards">', '<div id="leaderboard">', '<h3 id="warnings">')
    )
    assert cards < board < warnings  # the leaderboard first after the cards, the warnings next
    count = len(headline.results(report.Run(ctx))["warnings"])
    assert f'<p class="warn">{count} warnings: see <a href="#warnings">Warnings</a>' in results[:cards]  # said first
    assert results.index("<h3>Run</h3>") > warnings  # the run's time and links after the warnings
    table = results[board:warnings]
    ensemble_json = ctx.store.get_json(ctx.eval_key("ensemble", "ensemble.json"))
    rows = re.findall(r"<tr(?: class=\"best\")?><td class=\"num\">(\d+)</td><td>([^<]+)</td>", table)
    ensembles = [r["name"] for r in ensemble_json["comparison"] if r["kind"] == "ensemble"]
    assert len(rows) == len(TRAINED) + len(ensembles) == 9
    assert [int(rank) for rank, _ in rows] == list(range(1, 10))
    names = {name.split(" (ensemble of")[0] for _, name in rows}
    assert names == set(TRAINED) | set(ensembles)
    assert table.count('<tr class="best">') == 1
    assert '<tr class="best"><td class="num">1</td>' in table  # the first row is the highlighted one
    for header in ("test accuracy", "95 % interval", "images right", "macro-F1", "validation accuracy", "epochs"):
        assert f"<th>{header}</th>" in table, header
    assert "<th>training time</th>" in table

    board = headline.results(report.Run(ctx))["leaderboard"]
    values = [(r["macro_f1"], r["accuracy"]) for r in board["rows"]]
    assert values == sorted(values, reverse=True)  # best first by the promotion metric, then accuracy
    assert board["metric"] == ctx.config.promotion_metric == "macro_f1"
    assert board["test_images"] == 30
    first_model = next(r for r in board["rows"] if r["kind"] == "model")
    metrics = ctx.store.get_json(ctx.eval_key(first_model["name"], "metrics.json"))
    confusion = metrics["confusion_matrices"]["test"]
    assert first_model["test_right"] == sum(confusion[i][i] for i in range(3))
    assert first_model["accuracy_ci95"] == model_card_wilson(first_model["test_right"], 30)
    assert first_model["val_accuracy"] == metrics["splits"]["val"]["accuracy"]
    assert f"<td>5 of {ctx.config.epochs}, stopped by budget</td><td>12.5 s</td>" in table  # epochs, training time
    ensemble_row = next(r for r in board["rows"] if r["kind"] == "ensemble")
    assert ensemble_row["epochs_run"] is None
    assert ensemble_row["train_time_s"] is None
    assert "<td>-</td><td>-</td><td>-</td></tr>" in table  # an ensemble: no validation score, epochs or time
    assert f'<p class="lead">{board["lead"]}</p>' in table.replace("&#39;", "'")


def model_card_wilson(right: int, images: int):
    from cnn_tasks.model_card import wilson

    return wilson(right, images)


def scored(right: int, f1: float, val: float = 0.5) -> dict:
    """A metrics.json of 48 test images (two classes of 24) with `right` of them right."""
    wrong = 48 - right
    return {
        "splits": {"test": {"accuracy": right / 48, "macro_f1": f1}, "val": {"accuracy": val}},
        "confusion_matrices": {
            "test": [[24 - wrong // 2, wrong // 2], [wrong - wrong // 2, 24 - (wrong - wrong // 2)]]
        },
    }


@pytest.mark.parametrize(
    "evals, lead",
    [
        (
            {"a": scored(43, 0.9), "b": scored(42, 0.87)},
            "a is best by 1 image of 48 over b: a lead within the 95 % interval of its accuracy (0.778-0.955), "
            "so more test images would be needed to call it better.",
        ),
        (
            {"a": scored(42, 0.87), "b": scored(42, 0.87), "c": scored(30, 0.6)},
            "a is tied with b (same 42 of 48 test images right, same macro-F1).",
        ),
        ({"a": scored(47, 0.97), "b": scored(30, 0.6)}, "a is best by 17 images of 48 over b."),
        (
            {"a": scored(40, 0.85), "b": scored(41, 0.8)},
            "a is ahead on macro-F1 (0.8500 against 0.8000), but b gets 1 more image of 48 right: a lead within the "
            "95 % interval of its accuracy (0.704-0.913), so more test images would be needed to call it better.",
        ),
        ({"a": scored(40, 0.85)}, "a is the only evaluated model: 40 of 48 test images right."),
    ],
)
def test_the_leaderboard_says_the_lead_in_words(evals, lead):
    board = leaderboard.build(evals, {}, None, "macro_f1", 8)
    assert board["lead"] == lead
    assert board["rows"][0]["best"] is True
    html_text = str(
        report.ENV.get_template("macros.html").module.table(
            leaderboard.display_rows(board), leaderboard.columns(board), best="best"
        )
    )
    assert html_text.count('<tr class="best">') == 1
    assert f"<td>{board['rows'][0]['test_right']} of 48</td><td>best</td>" in html_text


def test_a_tie_says_same_in_the_vs_best_column():
    board = leaderboard.build(
        {"a": scored(42, 0.87), "b": scored(42, 0.87), "c": scored(40, 0.8)}, {}, None, "macro_f1", 8
    )
    assert [r["vs_best"] for r in board["rows"]] == ["best", "same", "-2"]


def test_wall_time_is_one_line_with_the_tasks_folded(full_run):
    ctx = full_run
    for i in range(28):  # a full run's 28 tasks
        failures.record_timing(ctx.store, ctx.prefix, "evaluate", i, f"model {i}", 10.0 + i)
    page = ctx.store.get_text(report.run(ctx)["report_key"])
    results = section_html(page, "results")
    line = re.search(r'<p id="run-time">(.*?)</p>', results, re.S).group(1)
    assert line.startswith("Run started 20")
    assert "tasks; the report&#39;s own time not included)." in line
    tasks = len(failures.read_timings(ctx.store, ctx.prefix))
    assert tasks >= 28
    assert f"({tasks} tasks; the report" in line
    folded = results.split("<details><summary>Wall time per task (")[1].split("</details>")[0]
    assert folded.startswith(f"{tasks} tasks)</summary>")
    assert folded.count("<tr>") == tasks + 1  # the header and one row per task
    assert results.index('<h3 id="warnings">') < results.index("<details><summary>Wall time per task")


def test_links_back_to_the_airflow_run_and_to_tensorboard(full_run, monkeypatch):
    ctx = full_run
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example:8080/")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "cnn_image_classification")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "manual__2026-01-02T03:04:05+00:00")
    failures.record_failure(ctx.store, ctx.prefix, "evaluate", 1, "wide / unbalanced", ValueError("boom"))
    try:
        page = ctx.store.get_text(report.run(ctx)["report_key"])
    finally:
        failures.record_recovered(ctx.store, ctx.prefix, "evaluate", 1)
    run_url = "http://airflow.example:8080/dags/cnn_image_classification/runs/manual__2026-01-02T03%3A04%3A05%2B00%3A00"
    assert f'<a href="{run_url}">This run in Airflow</a>' in section_html(page, "results")
    assert f'<a href="{run_url}/tasks/evaluate/mapped/1">its log in Airflow</a>' in page  # the failed task's log
    command = f"make tensorboard RUN=test_run STORE_URI={ctx.store.uri}"
    assert f"<code>{command}</code>" in section_html(page, "results")

    monkeypatch.delenv("AIRFLOW__API__BASE_URL")  # the base URL unknown: no link rather than a wrong one
    assert headline.links(report.Run(ctx))["airflow_run"] is None
    assert "This run in Airflow" not in ctx.store.get_text(report.run(ctx)["report_key"])


def test_the_pictures_that_need_room_are_page_wide(full_run):
    page = full_run.store.get_text(report.run(full_run)["report_key"])
    wide = re.findall(r'<figure class="wide"><a href="([^"]+)"', page)
    for mid in TRAINED:
        assert f"../eval/{mid}/confusion_test.png" in wide
    assert any(re.fullmatch(r"\.\./eval/ensemble/.+_confusion_test\.png", src) for src in wide)
    assert "../models/comparison.png" in wide
    assert not any("roc_test" in src for src in wide)
    assert "figure.wide img{width:auto;max-width:min(1000px,100%)}" in page  # never blown up past their size
    for mid in TRAINED:  # the validation confusion matrix is a click away; the test one is on the page
        model = section_html(page, "evaluation").split(f"<h3>{mid}</h3>")[1].split("<h3>")[0]
        folded = model.split("<details><summary>Confusion matrices on the validation and training splits</summary>")
        assert len(folded) == 2, mid
        assert "confusion_test.png" in folded[0]
        assert "confusion_val.png" in folded[1]
        assert "confusion_val.png" not in folded[0]


def test_each_layers_feature_maps_are_folded(make_ctx):
    ctx = make_ctx("viz")
    names = [
        "activations_act1.png",
        "activations_pool1.png",
        "filters_conv1.png",
        "kernels_first_layer.png",
        "grad_cam.png",
    ]
    entries = [png(ctx.store, ctx.viz_key("m__unbalanced", n), n) for n in names]
    ctx.store.put_json(ctx.viz_key("m__unbalanced", "viz.json"), {"explanation": "x", "figures": entries})
    shown, folded = report.Run(ctx).folded_figures(entries, report.VIZ_FOLDED)
    assert [f["caption"] for f in shown] == ["kernels_first_layer.png", "grad_cam.png"]
    assert [f["caption"] for f in folded] == names[:3]
    html_text = report.ENV.get_template("sections/viz.html").render(
        s={
            "models": [
                {"id": "m", "missing": None, "explanation": [], "dead_channels": [], "figures": shown, "folded": folded}
            ]
        },
        m=report.ENV.get_template("macros.html").module,
    )
    visible, hidden = html_text.split(
        "<details><summary>Feature maps and filter patterns of each layer (3 figures)</summary>"
    )
    assert "grad_cam.png" in visible
    assert "activations_act1.png" in hidden
    assert "activations_act1.png" not in visible


def test_sections_with_nothing_to_say_are_one_line(full_run, make_ctx):
    page = full_run.store.get_text(report.run(full_run)["report_key"])
    viz = section_html(page, "viz")
    assert "No channel was dead on the sample." in viz or "dead" not in viz.lower()
    assert "<table" not in viz  # no table of zero dead channels
    models_ = section_html(page, "models")
    assert "<details open>" not in models_  # layer tables folded
    assert "<details><summary>spec</summary>" in models_  # so is each model's spec
    assert "<h4>spec</h4>" not in models_
    sizes = section_html(page, "data").split("<h3>Image sizes (before resizing)</h3>")[1].split("<h3>")[0]
    assert sizes.startswith("<p>All 80 images are 16 x 16 px.</p>")  # one size: a sentence, no table

    ctx = make_ctx("clean")
    ctx.store.put_json(ctx.data_key("ingest.json"), {"accepted": 80, "rejected": 0, "rejected_by_reason": {}})
    ctx.store.put_json(
        ctx.check_key("baseline", "single_batch.json"),
        {
            "passed": True,
            "loss": 0.01,
            "steps": 50,
            "max_steps": 150,
            "batch_size": 32,
            "loss_tolerance": 0.05,
            "losses": [2.0 - 0.04 * i for i in range(50)],
        },
    )
    clean = ctx.store.get_text(report.run(ctx)["report_key"])
    assert (
        section_html(clean, "rejected")
        .strip()
        .endswith("<h2>Rejected files</h2>\n<p>None: no file was rejected (all 80 accepted).</p>")
    )
    checks = section_html(clean, "checks")
    assert (
        '<p class="note">Passed: loss 0.0100 after 50 of 150 steps on one batch of 32 (tolerance 0.0500).</p>' in checks
    )
    assert "<details><summary>Every value of the check</summary>" in checks  # the check's table, folded
    assert "<details><summary>losses (50 values)</summary>" in checks  # folded, not spelt out in the table
    assert "<td>losses</td>" not in checks


def test_a_first_runs_normal_states_are_neutral_notes(make_ctx):
    ctx = make_ctx("first", model_name="orchards")
    ctx.store.put_json(ctx.data_key("profile.json"), {"images": 3})
    ctx.store.put_json(ctx.report_key("predictions.json"), {"status": "skipped", "reason": "no unlabelled images"})
    page = ctx.store.get_text(report.run(ctx)["report_key"])
    drift_ = section_html(page, "drift")
    assert '<p class="note">No earlier champion of model &#39;orchards&#39; to compare with.</p>' in drift_
    assert "notrun" not in drift_
    predictions = section_html(page, "predictions")
    assert '<p class="note">No unlabelled images.</p>' in predictions
    assert "notrun" not in predictions
    sections = ctx.store.get_json(ctx.report_key("summary.json"))["sections"]
    assert sections["drift"] == sections["predictions"] == "nothing to do"


def test_a_run_whose_rebalancing_changed_nothing_says_so_and_which_augmentation_it_used(make_ctx):
    ctx = make_ctx(rebalance="oversample")
    counts = {"shards": [], "count": 30, "class_counts": [10, 10, 10], "class_weight": None}
    ctx.store.put_json(
        ctx.data_key("dataset.json"),
        {
            "classes": CLASSES,
            "image_size": 16,
            "mean": [0.5] * 3,
            "std": [0.2] * 3,
            "rebalance": "oversample",
            "augment": "natural",
            "augment_reason": "augment 'auto': the class names do not look like satellite or aerial scenes",
            "balanced_same_as_unbalanced": True,
            "splits": {s: {"unbalanced": counts, "balanced": counts} for s in ("train", "val")}
            | {"test": {"unbalanced": counts}},
        },
    )
    page = ctx.store.get_text(report.run(ctx)["report_key"])
    models = section_html(page, "models")
    assert "already balanced, so rebalance=oversample changed nothing: each experiment is trained once" in models
    assert all(m.endswith("__unbalanced") for m in report.expected_model_ids(ctx, report.Run(ctx).dataset))
    assert "augment &#39;auto&#39;: the class names do not look like satellite" in section_html(page, "data")
    not_trained = [w for w in headline.warnings(report.Run(ctx)) if w.startswith("Not trained")]
    assert "__balanced" not in " ".join(not_trained)
