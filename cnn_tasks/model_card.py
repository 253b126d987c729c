"""The model card of a promoted model (after Mitchell et al., "Model Cards for Model Reporting",
2019): what it was trained on, how, how well it does per class (with 95 % Wilson intervals), how
well its confidence matches its accuracy, where it fails most, what it is for and not for, and the
exact software that made it. Written as champions/<run_id>/model_card.json and model_card.md
beside the model, linked from champion.json and shown in the report. Library module: the promote
stage builds it from the run's stage outputs.
"""

from __future__ import annotations

from scipy.stats import binomtest

from cnn_tasks.contracts import ModelMeta, ModelMetrics

CONFUSED_PAIRS = 3  # the most confused (true, predicted) pairs listed as known weaknesses


def wilson(successes: int, trials: int) -> list[float] | None:
    """The 95 % Wilson score interval of successes / trials, or None without trials."""
    if trials <= 0:
        return None
    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=0.95, method="wilson")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


def per_class(confusion: list[list[int]], classes: list[str]) -> list[dict]:
    """Precision and recall per class with their intervals, from the test confusion matrix [true][predicted]."""
    rows = []
    for c, name in enumerate(classes):
        tp = confusion[c][c]
        support, predicted = sum(confusion[c]), sum(row[c] for row in confusion)
        precision = tp / predicted if predicted else None
        recall = tp / support if support else None
        f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
        rows.append(
            {
                "class": name,
                "support": support,
                "precision": precision,
                "precision_ci95": wilson(tp, predicted),
                "recall": recall,
                "recall_ci95": wilson(tp, support),
                "f1": f1,
            }
        )
    return rows


def most_confused(confusion: list[list[int]], classes: list[str], n: int = CONFUSED_PAIRS) -> list[dict]:
    """The `n` largest off-diagonal cells: which true class is most often taken for which."""
    cells = [(count, t, p) for t, row in enumerate(confusion) for p, count in enumerate(row) if t != p and count > 0]
    return [
        {
            "true": classes[t],
            "predicted": classes[p],
            "count": count,
            "share_of_true_class": round(count / sum(confusion[t]), 4),
        }
        for count, t, p in sorted(cells, reverse=True)[:n]
    ]


def build(ctx, champion: dict) -> dict:
    """The card of `champion` (a champion record being installed by this run)."""
    store, mid = ctx.store, champion["model_id"]
    meta = ModelMeta.read(store, ctx.model_key(mid, "meta.json"))
    metrics = ModelMetrics.read(store, ctx.eval_key(mid, "metrics.json"))
    ingest = store.get_json(ctx.data_key("ingest.json"))
    analysis = store.get_json(ctx.data_key("analysis.json"))
    classes, confusion, test = metrics["classes"], metrics["confusion_matrices"]["test"], metrics["splits"]["test"]
    correct, total = sum(confusion[c][c] for c in range(len(classes))), sum(map(sum, confusion))
    accuracy_ci = wilson(correct, total)
    spec = meta["spec"]
    weaknesses = most_confused(confusion, classes)
    return {
        "model": {
            "model_id": mid,
            "run_id": champion["run_id"],
            "promoted_at": champion["promoted_at"],
            "description": meta.get("description"),
            "architecture": f"Sequential CNN, {len(spec['conv'])} conv layers, {meta['params']:,} parameters",
            "input": f"{meta['image_size']} x {meta['image_size']} RGB, image_fit {meta['image_fit']}",
            "files": {k: champion.get(k) for k in ("model_key", "saved_model_key", "tflite_key")},
        },
        "data": {
            "source": ingest.get("source"),
            "content_digest": champion.get("data_digest"),
            "dataset_sha256": champion.get("dataset_sha256"),
            "layout": (ingest.get("layout") or {}).get("kind"),
            "classes": classes,
            "images_per_split": analysis.get("counts"),
            "rejected_files": ingest.get("rejected_by_reason"),
        },
        "split": {
            "ratios": analysis.get("split_ratios"),
            "seed": analysis.get("seed"),
            "origin": analysis.get("origin"),
            "totals": analysis.get("totals"),
        },
        "training": {
            "experiment": meta["experiment"],
            "data_variant": meta["variant"],
            "rebalance": meta["config"].get("rebalance"),
            "class_weight": meta.get("class_weight") is not None,
            "augment": meta["config"].get("augment"),
            "optimizer": spec.get("optimizer"),
            "learning_rate": spec.get("learning_rate"),
            "learning_rate_from": meta.get("learning_rate_from") or "spec",
            "lr_schedule": spec.get("lr_schedule"),
            "batch_size": spec.get("batch_size"),
            "epochs_run": meta["epochs_run"],
            "best_epoch": meta["best_epoch"],
            "stopped_by": meta.get("stopped_by"),
            "train_time_s": meta["train_time_s"],
        },
        "metrics": {
            "test_images": total,
            "accuracy": test.get("accuracy"),
            "accuracy_ci95": accuracy_ci,
            **{k: test.get(k) for k in ("balanced_accuracy", "macro_f1", "macro_auc", "log_loss")},
            "per_class": per_class(confusion, classes),
        },
        "calibration": {"ece": test.get("ece"), "reliability": metrics.get("reliability_test")},
        "weaknesses": weaknesses,
        "intended_use": (
            f"Sorting {meta['image_size']} px colour images of the kind in {ingest.get('source')} into "
            f"{len(classes)} classes ({', '.join(classes)}), for people who check what it gets wrong."
        ),
        "limits": [
            "Measured only on a held-out part of the same dataset; images from another source, sensor, season or "
            "camera may score lower (watch the report's data drift section).",
            "Every image is assigned one of these classes, whatever it shows: there is no 'none of these'.",
            f"Test accuracy is {test.get('accuracy', 0):.3f} (95 % interval {accuracy_ci}); "
            "per-class recall below shows which classes it misses most.",
        ]
        + [
            f"Often takes {w['true']} for {w['predicted']} ({w['share_of_true_class']:.1%} of {w['true']})."
            for w in weaknesses
        ],
        "provenance": {"versions": meta["versions"], "git_commit": meta.get("git_commit"), "config": meta["config"]},
    }


def markdown(card: dict) -> str:
    """The card as a Markdown page (model_card.md)."""
    m, d, t, s = card["model"], card["data"], card["training"], card["metrics"]
    lines = [
        f"# Model card: {m['model_id']} (run {m['run_id']})",
        "",
        f"Promoted {m['promoted_at']}. {m['description'] or ''}".rstrip(),
        "",
        "## Model",
        f"- {m['architecture']}; input {m['input']}",
        *[f"- {name}: `{key}`" for name, key in m["files"].items() if key],
        "",
        "## Intended use and limits",
        card["intended_use"],
        "",
        *[f"- {limit}" for limit in card["limits"]],
        "",
        "## Data",
        f"- source: {d['source']} (layout {d['layout']})",
        f"- content digest: `{d['content_digest']}`; dataset sha256: `{d['dataset_sha256']}`",
        f"- split {card['split']['ratios']} (seed {card['split']['seed']}): {card['split']['totals']}",
        f"- rejected files: {d['rejected_files'] or 'none'}",
        "",
        "## Training",
        *[f"- {k.replace('_', ' ')}: {v}" for k, v in t.items()],
        "",
        "## Test metrics",
        f"- {s['test_images']} test images; accuracy {s['accuracy']:.4f}, 95 % interval {s['accuracy_ci95']}",
        f"- macro F1 {s['macro_f1']:.4f}; balanced accuracy {s['balanced_accuracy']:.4f}; "
        f"expected calibration error {card['calibration']['ece']:.4f}",
        "",
        "| class | support | precision | 95 % interval | recall | 95 % interval | F1 |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['class']} | {r['support']} | {_num(r['precision'])} | {r['precision_ci95']} | {_num(r['recall'])} "
            f"| {r['recall_ci95']} | {_num(r['f1'])} |"
            for r in s["per_class"]
        ],
        "",
        "## Provenance",
        f"- git commit: `{card['provenance']['git_commit']}`",
        *[f"- {name} {version}" for name, version in card["provenance"]["versions"].items()],
        "",
    ]
    return "\n".join(lines)


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
