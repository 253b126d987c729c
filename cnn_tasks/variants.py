"""Which models a run trains: every experiment on each data variant that differs.

With rebalance="none" the balanced variant would hold exactly the unbalanced data, so each
experiment is trained once ("unbalanced"); otherwise twice (unbalanced and balanced).
Light on purpose: the DAG's first task imports it.
"""

from __future__ import annotations

from cnn_tasks import VARIANTS
from cnn_tasks.context import model_id

REBALANCE_NONE_NOTE = (
    "rebalance=none: each experiment is trained once, on the data as it is (a balanced variant would be identical)"
)


def training_variants(config) -> tuple[str, ...]:
    return ("unbalanced",) if config.rebalance == "none" else VARIANTS


def training_runs(config) -> list[dict]:
    """[{"experiment": ..., "variant": ...}]: one training task each, in a stable order."""
    return [
        {"experiment": spec.name, "variant": variant}
        for spec in config.experiments
        for variant in training_variants(config)
    ]


def expected_model_ids(config) -> list[str]:
    return [model_id(run["experiment"], run["variant"]) for run in training_runs(config)]
