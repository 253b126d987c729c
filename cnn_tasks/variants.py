"""Which models a run trains: every experiment on each data variant that differs.

With rebalance="none", or when rebalancing changed nothing (the training and validation splits
were already balanced: dataset.json's balanced_same_as_unbalanced), the balanced variant would
hold exactly the unbalanced data, so each experiment is trained once ("unbalanced"); otherwise
twice (unbalanced and balanced). Light on purpose: the DAG's first task imports it.
"""

from __future__ import annotations

from cnn_tasks import VARIANTS
from cnn_tasks.context import model_id

REBALANCE_NONE_NOTE = (
    "rebalance=none: each experiment is trained once, on the data as it is (a balanced variant would be identical)"
)


def variants_note(rebalance: str, dataset: dict | None = None) -> str | None:
    """Why each experiment is trained once, or None when it is trained on both variants."""
    if rebalance == "none":
        return REBALANCE_NONE_NOTE
    if (dataset or {}).get("balanced_same_as_unbalanced"):
        return (
            f"The training and validation splits are already balanced, so rebalance={rebalance} changed nothing: "
            "each experiment is trained once, on the data as it is (a balanced variant would train on the same data)"
        )
    return None


def training_variants(config, dataset: dict | None = None) -> tuple[str, ...]:
    """The data variants to train on; `dataset` is dataset.json (None before rebalance has run)."""
    return ("unbalanced",) if variants_note(config.rebalance, dataset) else VARIANTS


def training_runs(config, dataset: dict | None = None) -> list[dict]:
    """[{"experiment": ..., "variant": ...}]: one training task each, in a stable order."""
    return [
        {"experiment": spec.name, "variant": variant}
        for spec in config.experiments
        for variant in training_variants(config, dataset)
    ]


def expected_model_ids(config, dataset: dict | None = None) -> list[str]:
    return [model_id(run["experiment"], run["variant"]) for run in training_runs(config, dataset)]
