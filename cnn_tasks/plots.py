"""Figure helpers shared by the stages: Agg backend, one function per figure, closed after saving."""

from __future__ import annotations

import io
import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)


def new_figure(width: float = 8, height: float = 5, **kwargs):
    """A figure and axes with the project's defaults."""
    return plt.subplots(figsize=(width, height), **kwargs)


def save_figure(store, key: str, fig, dpi: int = 110) -> str:
    """Save `fig` as PNG under `key` in the store, close it, and return the key."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    store.put_bytes(key, buffer.getvalue(), "image/png")
    return key


def figure_entry(key: str, caption: str) -> dict:
    """How stages list their figures for the report: the store key and a caption."""
    return {"key": key, "caption": caption}


def compare_runs(ctx, model_ids: list[str]) -> dict:
    """One figure: validation accuracy and validation loss per epoch for every run (models/comparison.png)."""
    fig, (ax_acc, ax_loss) = new_figure(12, 4.5, ncols=2)
    missing = []
    for mid in model_ids:
        key = ctx.model_key(mid, "history.json")
        if not ctx.store.exists(key):
            log.warning("compare_runs: %s has no history (%s); left out of the comparison", mid, key)
            missing.append(mid)
            continue
        history = ctx.store.get_json(key)
        epochs = [h["epoch"] for h in history]
        ax_acc.plot(epochs, [h["val_accuracy"] for h in history], marker=".", label=mid)
        ax_loss.plot(epochs, [h["val_loss"] for h in history], marker=".", label=mid)
    ax_acc.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy")
    ax_loss.set(title="Validation loss", xlabel="epoch", ylabel="loss")
    ax_acc.legend(fontsize="small")
    key = save_figure(ctx.store, ctx.key("models", "comparison.png"), fig)
    caption = "Validation accuracy (left) and loss (right) per epoch for every trained model."
    if missing:
        caption += f" Missing (no history): {', '.join(missing)}."
    return figure_entry(key, caption)
