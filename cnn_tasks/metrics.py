"""Classification metrics and evaluation figures on plain arrays (labels `y`, probabilities
`proba`), shared by the evaluate, ensemble and promote stages; and the predictions.npz files
they hand each other (`save_predictions`, `load_predictions`)."""

from __future__ import annotations

import io

import numpy as np

from cnn_tasks.plots import figure_entry, new_figure, save_figure

ECE_BINS = 15
EXAMPLES_PER_GRID = 16


# ----------------------------------------------------------------------------- metrics
def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[np.asarray(y, dtype=int)]


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: sum over equal-width confidence bins of (bin share) * |accuracy - confidence|."""
    table = reliability_table(y, proba, n_bins)
    n = max(len(y), 1)
    return float(sum(row["count"] / n * abs(row["accuracy"] - row["confidence"]) for row in table))


def reliability_table(y: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS) -> list[dict]:
    """Per non-empty bin (lo, hi]: count, mean confidence and accuracy of the top-label prediction.

    Confidence 0 falls in the first bin.
    """
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == np.asarray(y)
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            rows.append(
                {
                    "lo": b / n_bins,
                    "hi": (b + 1) / n_bins,
                    "count": int(mask.sum()),
                    "confidence": float(confidence[mask].mean()),
                    "accuracy": float(correct[mask].mean()),
                }
            )
    return rows


def per_class_auc(y: np.ndarray, proba: np.ndarray) -> tuple[list, list]:
    """One-vs-rest ROC-AUC and average precision per class (None where a class has no positives
    or no negatives, as the curve is then undefined)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    target = one_hot(y, proba.shape[1])
    aucs, aps = [], []
    for c in range(proba.shape[1]):
        defined = 0 < target[:, c].sum() < len(y)
        aucs.append(float(roc_auc_score(target[:, c], proba[:, c])) if defined else None)
        aps.append(float(average_precision_score(target[:, c], proba[:, c])) if defined else None)
    return aucs, aps


def _mean_defined(values: list) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def classification_metrics(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict:
    """Every headline number of one split: accuracy, balanced accuracy, macro/weighted P/R/F1,
    macro ROC-AUC and AP (over classes where defined), micro AUC/AP, log-loss and ECE."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        balanced_accuracy_score,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y = np.asarray(y, dtype=int)
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(axis=1, keepdims=True)  # float32 softmax rows sum to 1 only within ~1e-6
    pred = proba.argmax(axis=1)
    labels = list(range(len(classes)))
    out = {
        "count": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, labels=labels, average=average, zero_division=0)
        out.update({f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)})
    aucs, aps = per_class_auc(y, proba)
    target = one_hot(y, len(classes))
    out["macro_auc"] = _mean_defined(aucs)
    out["macro_average_precision"] = _mean_defined(aps)
    both = 0 < target.sum() < target.size
    out["micro_auc"] = float(roc_auc_score(target.ravel(), proba.ravel())) if both else None
    out["micro_average_precision"] = float(average_precision_score(target.ravel(), proba.ravel())) if both else None
    out["log_loss"] = float(log_loss(y, proba, labels=labels))
    out["ece"] = expected_calibration_error(y, proba)
    return out


def classification_table(y: np.ndarray, proba: np.ndarray, classes: list[str]):
    """The classification report as a DataFrame: one row per class (precision, recall, F1, support,
    ROC-AUC, AP), then macro avg, weighted avg, accuracy and balanced accuracy rows."""
    import pandas as pd
    from sklearn.metrics import balanced_accuracy_score, classification_report

    y = np.asarray(y, dtype=int)
    pred = proba.argmax(axis=1)
    report = classification_report(
        y, pred, labels=list(range(len(classes))), target_names=classes, output_dict=True, zero_division=0
    )
    aucs, aps = per_class_auc(y, proba)
    rows = []
    for c, name in enumerate(classes):
        rows.append({"class": name, **report[name], "roc_auc": aucs[c], "average_precision": aps[c]})
    for avg in ("macro avg", "weighted avg"):
        rows.append({"class": avg, **report[avg]})
    total = int(len(y))
    accuracy = float(report["accuracy"]) if "accuracy" in report else float(np.mean(pred == y))
    rows.append({"class": "accuracy", "f1-score": accuracy, "support": total})
    rows.append({"class": "balanced accuracy", "f1-score": float(balanced_accuracy_score(y, pred)), "support": total})
    table = pd.DataFrame(
        rows, columns=["class", "precision", "recall", "f1-score", "support", "roc_auc", "average_precision"]
    )
    table["support"] = table["support"].astype(int)
    return table


# ----------------------------------------------------------------------------- figures
# The report shows confusion matrices 1000 px wide: a figure W inches wide then shows 10 pt text at
# 10 * 1000 / (72 * W) px. Cells are CONFUSION_CELL_IN inches (room for "100" or a 3-digit count),
# and the font grows with the figure so the numbers read at about 11 px on the page (up to ~30 classes).
CONFUSION_CELL_IN = 0.5
CONFUSION_SIDE_BY_SIDE = 12  # up to this many classes counts and shares sit side by side, else one above the other
CONFUSION_PAGE_PX = 1000


def confusion_layout(n_classes: int) -> dict:
    """Figure size, panel grid and font size of a confusion figure for `n_classes` classes."""
    side_by_side = n_classes <= CONFUSION_SIDE_BY_SIDE
    panel = CONFUSION_CELL_IN * n_classes + 2.5  # the matrix plus its class-name labels
    width = max(8.0, 2 * panel if side_by_side else panel)
    return {
        "nrows": 1 if side_by_side else 2,
        "ncols": 2 if side_by_side else 1,
        "figsize": (width, panel if side_by_side else 2 * panel),
        "fontsize": float(np.clip(11 * 72 * width / CONFUSION_PAGE_PX, 10, 14)),
    }


def plot_confusion(store, key: str, y, proba, classes: list[str], title: str) -> str:
    """Counts and row percentages (each true class's images = 100) of the confusion matrix,
    coloured, values in the cells; sized and lettered by class count (confusion_layout)."""
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    n = len(classes)
    layout = confusion_layout(n)
    size = layout["fontsize"]
    fig, axes = new_figure(*layout["figsize"], nrows=layout["nrows"], ncols=layout["ncols"])
    counts = confusion_matrix(y, np.asarray(proba).argmax(axis=1), labels=list(range(n)))
    shares = np.rint(100 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)).astype(int)
    for ax, matrix, label in ((axes[0], counts, "counts"), (axes[1], shares, "% of each true class")):
        ConfusionMatrixDisplay(matrix, display_labels=classes).plot(
            values_format="d", cmap="Blues", ax=ax, colorbar=False, xticks_rotation=45, text_kw={"fontsize": size}
        )
        ax.tick_params(labelsize=size)
        for tick in ax.get_xticklabels():  # anchored at their end, long class names do not overlap
            tick.set(rotation=45, ha="right", rotation_mode="anchor")
        ax.set_xlabel("Predicted label", fontsize=size)
        ax.set_ylabel("True label", fontsize=size)
        ax.set_title(label, fontsize=size)
    fig.suptitle(title, fontsize=size + 1)
    fig.tight_layout()
    return save_figure(store, key, fig)


def _ovr_curves_present(y, n_classes: int) -> list[int]:
    target = one_hot(y, n_classes)
    return [c for c in range(n_classes) if 0 < target[:, c].sum() < len(y)]


def plot_roc(store, key: str, y, proba, classes: list[str], title: str) -> str:
    """One-vs-rest ROC per class with AUC, plus the micro and macro averages."""
    from sklearn.metrics import RocCurveDisplay, auc, roc_curve

    target = one_hot(y, len(classes))
    present = _ovr_curves_present(y, len(classes))
    fig, ax = new_figure(7.5, 6.5)
    grid = np.linspace(0, 1, 201)
    tprs = []
    for c in present:
        RocCurveDisplay.from_predictions(target[:, c], proba[:, c], name=classes[c], ax=ax, plot_chance_level=False)
        fpr, tpr, _ = roc_curve(target[:, c], proba[:, c])
        tprs.append(np.interp(grid, fpr, tpr))
    if present:
        fpr, tpr, _ = roc_curve(target.ravel(), proba.ravel())
        ax.plot(fpr, tpr, "k:", lw=2.5, label=f"micro-average (AUC = {auc(fpr, tpr):.2f})")
        mean_tpr = np.mean(tprs, axis=0)
        mean_tpr[0] = 0.0
        ax.plot(grid, mean_tpr, "k--", lw=2.5, label=f"macro-average (AUC = {auc(grid, mean_tpr):.2f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, alpha=0.6)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=title)
    ax.legend(loc="lower right", fontsize="small")
    return save_figure(store, key, fig)


def plot_pr(store, key: str, y, proba, classes: list[str], title: str) -> str:
    """Precision-recall per class with average precision, plus the micro average."""
    from sklearn.metrics import PrecisionRecallDisplay

    target = one_hot(y, len(classes))
    present = _ovr_curves_present(y, len(classes))
    fig, ax = new_figure(7.5, 6.5)
    for c in present:
        PrecisionRecallDisplay.from_predictions(target[:, c], proba[:, c], name=classes[c], ax=ax)
    if present:
        PrecisionRecallDisplay.from_predictions(
            target.ravel(),
            proba.ravel(),
            ax=ax,
            name="micro-average",
            curve_kwargs={"linestyle": ":", "color": "k", "linewidth": 2.5},
        )
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="Recall", ylabel="Precision", title=title)
    ax.legend(loc="lower left", fontsize="small")
    return save_figure(store, key, fig)


def plot_reliability(store, key: str, y, proba, title: str) -> str:
    """Reliability diagram: accuracy against mean confidence per bin, with the ECE in the title."""
    table = reliability_table(y, proba)
    fig, ax = new_figure(6, 6)
    width = 1 / ECE_BINS
    centers = [row["lo"] + width / 2 for row in table]
    accuracy = [row["accuracy"] for row in table]
    ax.bar(centers, accuracy, width=width, edgecolor="k", color="tab:blue", alpha=0.8, label="accuracy in bin")
    ax.scatter(
        centers,
        [row["confidence"] for row in table],
        marker="_",
        s=300,
        linewidths=3,
        color="tab:red",
        label="mean confidence in bin",
        zorder=3,
    )
    for x, acc, row in zip(centers, accuracy, table):
        ax.annotate(str(row["count"]), (x, min(acc, 0.93) + 0.02), ha="center", fontsize=7)
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence (top label); numbers = images per bin",
        ylabel="accuracy",
        title=f"{title} (ECE = {expected_calibration_error(y, proba):.3f}, {ECE_BINS} bins)",
    )
    ax.legend(loc="upper left")
    return save_figure(store, key, fig)


def select_examples(y, proba, correct: bool, n: int = EXAMPLES_PER_GRID, seed: int = 0) -> np.ndarray:
    """Indices of up to n correct (a seeded sample) or wrong (most confident first) predictions."""
    pred, confidence = proba.argmax(axis=1), proba.max(axis=1)
    idx = np.flatnonzero((pred == np.asarray(y)) == correct)
    if correct:
        return np.sort(np.random.default_rng(seed).permutation(idx)[:n])
    return idx[np.argsort(-confidence[idx], kind="stable")][:n]


def plot_examples(store, key: str, images, y, proba, classes: list[str], indices, title: str) -> str:
    """A grid of images titled with true class, predicted class and confidence."""
    cols = 4
    rows = max(1, int(np.ceil(len(indices) / cols)))
    fig, axes = new_figure(cols * 2.6, rows * 2.9, nrows=rows, ncols=cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), indices):
        p = int(proba[i].argmax())
        ax.imshow(np.clip(images[i] / 255.0, 0, 1))
        ax.set_title(
            f"true: {classes[int(y[i])]}\npred: {classes[p]} ({proba[i, p]:.2f})",
            fontsize=8,
            color="darkgreen" if p == int(y[i]) else "darkred",
        )
    if len(indices) == 0:
        axes[0, 0].text(0, 0.5, "none", fontsize=14)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(store, key, fig)


# ----------------------------------------------------------------------------- one model, plain arrays
def full_split(images: int) -> dict:
    """The `evaluated` entry (see `write_results`) of a split evaluated in full."""
    return {
        "images": images,
        "split_images": images,
        "full_split": True,
        "seed": None,
        "description": f"full split, {images} images",
    }


def evaluate_predictions(
    store, key_of, classes: list[str], splits: dict, test_images=None, name: str = "", evaluated: dict | None = None
) -> dict:
    """Metrics and figures for one model (or ensemble) from its predictions.

    splits: {"test": (y, proba), "val": (y, proba), ...}; key_of(filename) -> store key.
    evaluated: {split: what was evaluated, e.g. "full split, 540 images"} for the captions;
    a split not named there was evaluated in full.
    Returns {"splits": {split: metrics}, "confusion": {split: counts [true][predicted]},
    "figures": [...], "table": DataFrame (test)}.
    """
    from sklearn.metrics import confusion_matrix

    evaluated = evaluated or {}
    what = {split: evaluated.get(split) or full_split(len(y))["description"] for split, (y, _) in splits.items()}
    figures, metrics, confusion = [], {}, {}
    for split, (y, proba) in splits.items():
        metrics[split] = classification_metrics(y, proba, classes)
        confusion[split] = confusion_matrix(
            y, np.asarray(proba).argmax(axis=1), labels=list(range(len(classes)))
        ).tolist()
        key = plot_confusion(
            store, key_of(f"confusion_{split}.png"), y, proba, classes, f"{name} {split} ({len(y)} images)"
        )
        figures.append(
            figure_entry(
                key,
                f"{name}: confusion matrix on the {split} split ({what[split]}), counts "
                f"({'left' if len(classes) <= CONFUSION_SIDE_BY_SIDE else 'top'}) and as a percentage of each "
                "true class, so the diagonal is each class's recall "
                f"({'right' if len(classes) <= CONFUSION_SIDE_BY_SIDE else 'bottom'}).",
            )
        )
    y, proba = splits["test"]
    test = what["test"]
    roc = plot_roc(store, key_of("roc_test.png"), y, proba, classes, f"{name} ROC (test)")
    figures.append(
        figure_entry(
            roc,
            f"{name}: one-vs-rest ROC curves per class on the test split ({test}) with "
            "AUC, plus micro and macro averages.",
        )
    )
    pr = plot_pr(store, key_of("pr_test.png"), y, proba, classes, f"{name} precision-recall (test)")
    figures.append(
        figure_entry(
            pr,
            f"{name}: precision-recall curves per class on the test split ({test}) with "
            "average precision, plus the micro average.",
        )
    )
    reliability = plot_reliability(store, key_of("reliability_test.png"), y, proba, f"{name} reliability")
    figures.append(
        figure_entry(
            reliability,
            f"{name}: reliability diagram on the test split ({test}); bars below "
            "the diagonal mean over-confidence (red marks: mean confidence).",
        )
    )
    if test_images is not None:
        for correct, label in ((True, "correct"), (False, "wrong")):
            idx = select_examples(y, proba, correct)
            order = "a seeded sample" if correct else "most confident mistakes first"
            key = plot_examples(
                store,
                key_of(f"examples_{label}.png"),
                test_images,
                y,
                proba,
                classes,
                idx,
                f"{name}: {label} test predictions",
            )
            figures.append(
                figure_entry(
                    key,
                    f"{name}: {len(idx)} {label}ly predicted test images ({order}, from "
                    f"the {test}) with true class, predicted class and confidence.",
                )
            )
    return {
        "splits": metrics,
        "confusion": confusion,
        "figures": figures,
        "table": classification_table(y, proba, classes),
    }


# ----------------------------------------------------------------------------- predictions.npz
def save_predictions(store, key: str, **arrays) -> str:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return store.put_bytes(key, buffer.getvalue(), "application/octet-stream")


def load_predictions(store, key: str) -> dict:
    with np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
