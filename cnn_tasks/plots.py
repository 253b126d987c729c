"""Figure helpers shared by the stages: Agg backend, one function per figure, closed after saving."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
