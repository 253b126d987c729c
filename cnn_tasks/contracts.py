"""Typed contracts of the JSON files stages hand each other, as pydantic models.

A writer stores a record with `Model.write(store, key, record)`: the record is validated first,
so a format change fails where the file is written, not in a later stage. A reader that may meet
only files this code base wrote uses `Model.read(store, key)`: a file of another format is a
PipelineError naming the file and the field. Both return the plain dict (only the keys the record
has), which is what stages pass around. Files an older version may have written (a champion's
meta.json, a model folder given to predict, an old run's summary.json) are read leniently where
they are read, not through these contracts. Unknown keys are refused where the
format is fixed; open-ended parts (a config, per-split metrics, a champion record) are dicts.

The JSON Schemas in docs/schemas/ are generated from these models:
    python -m cnn_tasks.contracts          # write docs/schemas/<name>.schema.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from cnn_tasks.errors import PipelineError

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"


class Contract(BaseModel):
    """A stage file: unknown keys refused; written and read as plain JSON dicts."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def check(cls, record: dict) -> dict:
        """`record` validated against the contract, as the plain dict to store."""
        return cls.model_validate(record).model_dump(exclude_unset=True)

    @classmethod
    def write(cls, store, key: str, record: dict) -> dict:
        """Validate `record` and store it as JSON under `key`; returns the stored dict."""
        checked = cls.check(record)
        store.put_json(key, checked)
        return checked

    @classmethod
    def read(cls, store, key: str) -> dict:
        """The file under `key`, validated: a file of another format is a PipelineError naming it and the field."""
        try:
            return cls.check(store.get_json(key))
        except ValidationError as exc:
            fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors())
            raise PipelineError(f"{store.url(key)} does not follow its contract ({cls.__name__}): {fields}") from exc


class Figure(Contract):
    """A figure stored beside the file: its store key and a caption for the report."""

    key: str
    caption: str


# ----------------------------------------------------------------------------- data/dataset.json
class SplitData(Contract):
    """One split in one variant: its shards (and their sha256), image counts, class weights."""

    shards: list[str]
    sha256: list[str] | None = None
    count: int
    class_counts: list[int]
    class_weight: dict[str, float] | None


class DatasetInfo(Contract):
    """data/dataset.json, written by rebalance: what training, evaluation and promotion read."""

    classes: list[str]
    image_size: int
    image_fit: str | None = None  # absent in files written before the setting: squash
    mean: list[float]
    std: list[float]
    dataset_sha256: str | None = None
    rebalance: str
    # the augmentation preset training uses (augment 'auto' decided from the classes) and why
    augment: Literal["aerial", "natural", "none"] | None = None  # absent in files written before: the config's
    augment_reason: str | None = None
    # rebalancing changed nothing (the splits were already balanced): the balanced variant is not trained
    balanced_same_as_unbalanced: bool = False
    splits: dict[Literal["train", "val", "test"], dict[Literal["unbalanced", "balanced"], SplitData]]
    figures: list[Figure] = []


# ----------------------------------------------------------------------------- models/<id>/meta.json
# Why training ended: it ran all its epochs, early stopping ended it, or the time budget did.
StopReason = Literal["epochs", "early_stopping", "time_budget"]


class ModelMeta(Contract):
    """models/<model_id>/meta.json, written by train beside model.keras."""

    model_id: str
    experiment: str
    variant: str
    description: str | None
    classes: list[str]
    image_size: int
    image_fit: str
    spec: dict[str, Any]  # learning_rate: the one training used
    learning_rate_from: Literal["spec", "lr_range_test"] | None = None  # absent before the range test
    params: int
    layers: list[dict[str, Any]]
    best_epoch: int
    epochs_run: int
    stopped_by: StopReason | None = None  # absent in models trained before it was recorded
    resumed_from_epoch: int
    best_val_loss: float
    best_val_accuracy: float
    final_val_loss: float
    final_val_accuracy: float
    wall_time_s: float
    train_time_s: float
    images_per_s: float
    class_weight: dict[str, float] | None
    dataset_sha256: str | None
    config: dict[str, Any]
    versions: dict[str, Any]
    git_commit: str | None
    runtime: dict[str, Any]
    keys: dict[str, str]
    figures: list[Figure]


# ----------------------------------------------------------------------------- eval/<id>/metrics.json
class Evaluated(Contract):
    """Which images of a split were evaluated."""

    images: int
    split_images: int
    full_split: bool
    seed: int | None
    description: str


class TtaScores(Contract):
    """Test-split metrics of predictions averaged over flipped views (config.tta)."""

    views: list[str]
    test: dict[str, float | int | None]


class ModelMetrics(Contract):
    """eval/<model_id>/metrics.json, written by evaluate."""

    model_id: str
    classes: list[str]
    evaluated: dict[str, Evaluated]
    splits: dict[str, dict[str, float | int | None]]
    confusion_matrices: dict[str, list[list[int]]]
    figures: list[Figure]
    classification_report: list[dict[str, Any]]
    reliability_test: list[dict[str, Any]]
    classification_report_key: str
    predictions_key: str
    tta: TtaScores | None = None  # only with config.tta


# ----------------------------------------------------------------------------- eval/ensemble/ensemble.json
class Ensemble(Contract):
    method: str
    subset: str
    members: list[str]
    weights: dict[str, float] | None


class EnsembleSummary(Contract):
    """eval/ensemble/ensemble.json, written by ensemble: every ensemble and the comparison table."""

    metric: str
    classes: list[str]
    members: list[str]
    skipped: list[str]
    tie_break: str
    ensembles: dict[str, Ensemble]
    comparison: list[dict[str, Any]]  # rows: name, kind, members, the table's metrics, best
    comparison_key: str
    best: str
    best_kind: Literal["model", "ensemble"]
    best_ensemble: str | None
    figures: list[Figure]
    not_run: str | None


# ----------------------------------------------------------------------------- promotion.json
class Promotion(Contract):
    """runs/<id>/promotion.json, written by promote: the decision and why. A record left by an
    earlier try that installed the champion has fewer keys (no guards, no previous champion)."""

    run_id: str
    metric: str
    margin: float | None = None
    min_accuracy: float | None = None
    promoted: bool
    decision: str
    reason: str
    best: dict[str, Any] | None = None
    candidate: dict[str, Any]
    candidate_note: str | None = None
    guards: list[dict[str, Any]] | None = None
    previous_champion: dict[str, Any] | None = None
    champion_on_this_test: dict[str, Any] | None
    champion_key: str | None = None
    history_key: str | None = None
    model_name: str | None = None  # absent before model names
    model_key: str | None = None
    new_champion: dict[str, Any] | None = None


# ----------------------------------------------------------------------------- report/summary.json
class Results(Contract):
    """The report's first screen: the answer before the details."""

    best_model: dict[str, Any] | None
    best_ensemble: dict[str, Any] | None
    champion: dict[str, Any] | None
    dataset: str | None
    stage_times: list[dict[str, Any]]
    warnings: list[str]
    models: int
    stopped: str | None = None  # why the run stopped after ingest (nothing changed), or None
    reused: list[dict[str, Any]] = []  # stages whose outputs were copied from an earlier run
    # every model and ensemble, best first: {metric, test_images, lead, rows} (cnn_tasks.leaderboard)
    leaderboard: dict[str, Any] | None = None
    run_time: dict[str, Any] | None = None  # {started, duration_s, tasks, line}, from the task timings
    links: dict[str, Any] = {}  # {airflow_run: URL or None, tensorboard: command or None}


class Summary(Contract):
    """report/summary.json, written by report: the machine-readable twin of the report page."""

    run_id: str
    config: dict[str, Any]
    versions: dict[str, Any]
    dataset: dict[str, Any]
    models: dict[str, dict[str, Any]]
    ensembles: dict[str, Any] | None
    promotion: dict[str, Any] | None
    predictions: dict[str, Any] | None
    results: Results
    sections: dict[str, str]
    failures: list[dict[str, Any]]
    artifacts: dict[str, Any]


CONTRACTS: dict[str, type[Contract]] = {
    "dataset": DatasetInfo,
    "meta": ModelMeta,
    "metrics": ModelMetrics,
    "ensemble": EnsembleSummary,
    "promotion": Promotion,
    "summary": Summary,
}


def schemas() -> dict[str, str]:
    """file name -> the JSON Schema text of each contract, as checked in under docs/schemas/."""
    return {
        f"{name}.schema.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
        for name, model in CONTRACTS.items()
    }


def main() -> int:
    SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in schemas().items():
        (SCHEMA_DIR / name).write_text(text)
        print(SCHEMA_DIR / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
