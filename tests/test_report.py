"""Report: every section, relative figure links that resolve, escaping, summary.json with every model.

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

from cnn_tasks import ensemble, evaluate, models, predict, promote, report, runtime
from cnn_tasks.plots import figure_entry
from tests.test_evaluate import CLASSES, random_proba, store_figure_exists

SECTIONS = ("overview", "data", "rejected", "models", "checks", "curves", "viz", "evaluation", "ensembles",
            "champion", "predictions")
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

    counts = {"train": dict(zip(CLASSES, [14, 14, 11])), "val": dict(zip(CLASSES, [4, 4, 3])),
              "test": dict(zip(CLASSES, [10, 10, 10]))}
    imbalance = {name: split.imbalance_measures(c) for name, c in counts.items()}
    shortfalls = split.find_shortfalls(counts)
    sizes = {"width": {"min": 16, "median": 16.0, "max": 16}, "height": {"min": 16, "median": 16.0, "max": 16},
             "most_common": [[16, 16, 39]]}
    return {"classes": CLASSES, "counts": counts, "imbalance": imbalance,
            "conclusion": split.conclusion(imbalance, "augment") + " <fixed>",
            "shortfalls": shortfalls, "shortfall_text": split.shortfall_text(shortfalls),
            "image_sizes": {name: sizes for name in counts}, "mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0],
            "no_leakage": True, "figures": figures}


def history(mid: str, epochs: int = 5) -> list[dict]:
    """A history.json as train.EpochRecorder writes it: improving, then over-fitting after epoch 3."""
    rng = np.random.default_rng(len(mid))
    rows = []
    for epoch in range(1, epochs + 1):
        loss = 1.1 * 0.7 ** epoch
        val_loss = 1.15 * 0.75 ** min(epoch, 3) + 0.04 * max(0, epoch - 3) + rng.uniform(0, 0.01)
        rows.append({"epoch": epoch, "loss": loss, "accuracy": 1 - loss / 1.6, "val_loss": val_loss,
                     "val_accuracy": 1 - val_loss / 1.5, "learning_rate": 1e-3, "seconds": 2.5 + rng.uniform(0, 0.2),
                     "images_per_s": 800.0 + rng.uniform(0, 50)})
    return rows


def write_models(ctx, tmp_path) -> None:
    """What the train stage leaves per trained model: a real model.keras of its experiment (built by
    models.build_model for the dataset's 16 px images), history.json, meta.json and the curves figure."""
    s = ctx.store
    for mid in TRAINED:
        experiment = mid.split("__")[0]
        model = models.build_model(ctx.config.experiment(experiment), len(CLASSES), 16, MEAN, STD)
        model.save(tmp_path / f"{mid}.keras")
        s.put_file(ctx.model_key(mid, "model.keras"), tmp_path / f"{mid}.keras")
        s.put_json(ctx.model_key(mid, "history.json"), history(mid))
        s.put_json(ctx.model_key(mid, "meta.json"), {
            "classes": CLASSES, "image_size": 16, "params": int(model.count_params()),
            "layers": models.describe(model)["layers"], "best_epoch": 3,
            "epochs_run": 5, "figures": [png(s, ctx.model_key(mid, "curves.png"), f"Curves of {mid}.")]})


def write_upstream(ctx):
    """Stage outputs as the other stages write them (JSON fixtures for the data and viz stages)."""
    s = ctx.store
    s.put_json(ctx.data_key("ingest.json"), {"accepted": 60, "rejected": 2,
                                             "rejected_by_reason": {"corrupt": 1, "not an image": 1}})
    s.put_text(ctx.data_key("rejected.csv"), "path,reason\nbad.png,corrupt\nx.txt,not an image\n")
    s.put_json(ctx.data_key("analysis.json"), analysis_fixture(
        [png(s, ctx.data_key("figures/bars.png"), "Class counts per split.")]))
    s.put_json(ctx.data_key("dataset.json"), {
        "classes": CLASSES, "image_size": 16, "mean": MEAN, "std": STD, "dataset_sha256": "f00d",
        "rebalance": "augment",
        "splits": {"train": {"unbalanced": {"shards": [], "count": 42, "class_counts": [14, 14, 14], "class_weight": None}},
                   "test": {"unbalanced": {"shards": [], "count": 30, "class_counts": [10, 10, 10], "class_weight": None}}},
        "figures": [png(s, ctx.data_key("figures/rebalanced.png"), "Counts after rebalancing.")]})
    s.put_json(ctx.check_key("baseline", "single_batch.json"), {
        "passed": True, "final_loss": 0.01, "figures": [png(s, ctx.check_key("baseline", "loss.png"), "Loss on one batch.")]})
    s.put_json(ctx.viz_key("baseline__unbalanced", "viz.json"), {
        "explanation": "Early filters pick up colour.", "dead_channels": [{"layer": "act1", "dead": 0, "total": 8}],
        "figures": [png(s, ctx.viz_key("baseline__unbalanced", "kernels.png"), "First-layer kernels.")]})


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
        evaluate.write_results(ctx, mid, CLASSES, splits, images, [f"k{j}" for j in range(30)])
    ensemble.run(ctx, TRAINED)
    promote.run(ctx)
    predict.run(ctx)


def links(html_text: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html_text) + [
        h for h in re.findall(r'<a href="([^"]+)"', html_text) if not h.startswith("#")]


def test_full_report(make_ctx, tmp_path):
    ctx = make_ctx(experiments=EXPERIMENTS, promotion_min_accuracy=0.0)
    write_upstream(ctx)
    write_models(ctx, tmp_path)
    write_our_stages(ctx)

    out = report.run(ctx)

    assert out["report_key"] == "runs/test_run/report/index.html" and out["report_url"].endswith("index.html")
    page = ctx.store.get_text(out["report_key"])
    for section in SECTIONS:
        assert f'<section id="{section}">' in page and f'href="#{section}"' in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) > 20
    for src in links(page):
        assert not src.startswith(("/", "file:", "s3:")), src
        assert ctx.store.exists(posixpath.normpath(posixpath.join(ctx.report_key(), src))), src
    assert page.count("<figure") == page.count("<figcaption>") == len(sources)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;fixed&gt;" in page and "corrupt" in page and "../data/rejected.csv" in page
    assert page.count("<tr class=best>") == 1
    assert "wide__balanced" in page and "not run" in page  # the model that did not train says so
    assert "unlabelled_url is not set" in page  # predictions stage recorded its no-op
    assert "Decision: promoted" in page

    # layer tables of the real saved models (baseline: 8 filters per conv layer, wide: 16)
    params = {}
    for mid in TRAINED:
        described = models.describe(models.load_model(ctx.cached(ctx.model_key(mid, "model.keras"))))
        summary, layers = page.split(f"<summary>Layer table of {mid} (")[1].split("</details>")[0].split("</summary>")
        for row in described["layers"]:
            assert f"<td>{row['name']}</td><td>{row['type']}</td>" in layers, (mid, row)
        assert summary == f"{described['total_params']} parameters)"
        params[mid] = described["total_params"]
    assert params["wide__unbalanced"] > params["baseline__unbalanced"] == params["baseline__balanced"]
    # the validation curves of every model, drawn by plots.compare_runs from their history.json
    comparison = ctx.key("models", "comparison.png")
    assert store_figure_exists(ctx.store, comparison) and 'src="../models/comparison.png"' in page
    assert "Validation accuracy (left) and loss (right) per epoch for every trained model.</figcaption>" in page

    summary = ctx.store.get_json(out["summary_key"])
    assert set(summary["models"]) == set(TRAINED)
    for mid in TRAINED:
        metrics = ctx.store.get_json(ctx.eval_key(mid, "metrics.json"))["splits"]["test"]
        assert summary["models"][mid]["test"]["accuracy"] == metrics["accuracy"]
        assert summary["models"][mid]["test"]["macro_f1"] == metrics["macro_f1"]
    assert summary["dataset"]["dataset_sha256"] == "f00d"
    assert summary["promotion"]["promoted"] is True and summary["ensembles"]["best"]
    assert summary["versions"]["numpy"] == np.__version__
    names = {"python"} | {n if isinstance(n, str) else n[0] for n in runtime.VERSION_PACKAGES}
    assert set(summary["versions"]) == names
    assert summary["config"]["experiments"][0]["name"] == "baseline"


def test_empty_run_says_what_did_not_run(make_ctx):
    ctx = make_ctx()
    out = report.run(ctx)
    page = ctx.store.get_text(out["report_key"])
    for section in SECTIONS:
        body = page.split(f'<section id="{section}">')[1].split("</section>")[0]
        if section != "overview":
            assert "not run:" in body, section
    assert "<img" not in page
    assert ctx.store.get_json(out["summary_key"])["models"] == {}


@pytest.mark.parametrize("text", ["<b>bold</b>", 'quote " and \' & amp'])
def test_escape(text):
    assert "<" not in report.esc(text).replace("&lt;", "") and '"' not in report.esc(text)
