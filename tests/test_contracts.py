"""Stage file contracts: the checked-in JSON Schemas are current, and a record that breaks its
contract fails where it is written (naming the field), while a valid one is stored as given."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cnn_tasks import contracts
from cnn_tasks.errors import PipelineError
from cnn_tasks.storage import LocalStore


def test_checked_in_schemas_are_current():
    stale = [
        name
        for name, text in contracts.schemas().items()
        if not (contracts.SCHEMA_DIR / name).is_file() or (contracts.SCHEMA_DIR / name).read_text() != text
    ]
    assert stale == [], f"docs/schemas/ is stale ({', '.join(stale)}): run `python -m cnn_tasks.contracts`"


def test_every_checked_in_schema_has_a_contract():
    assert sorted(p.name for p in contracts.SCHEMA_DIR.glob("*.schema.json")) == sorted(contracts.schemas())


SPLIT = {
    "shards": ["data/shards/a.tfrecord"],
    "sha256": ["0" * 64],
    "count": 3,
    "class_counts": [2, 1],
    "class_weight": None,
}
DATASET = {
    "classes": ["a", "b"],
    "image_size": 32,
    "image_fit": "squash",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.2, 0.2, 0.2],
    "dataset_sha256": "f" * 64,
    "rebalance": "none",
    "splits": {
        "train": {"unbalanced": SPLIT, "balanced": SPLIT},
        "val": {"unbalanced": SPLIT},
        "test": {"unbalanced": SPLIT},
    },
    "figures": [{"key": "data/rebalance_train.png", "caption": "before and after"}],
}


def test_a_valid_record_is_written_and_read_back_as_given(tmp_path):
    store = LocalStore(tmp_path)
    assert contracts.DatasetInfo.write(store, "data/dataset.json", DATASET) == DATASET
    assert store.get_json("data/dataset.json") == DATASET
    assert contracts.DatasetInfo.read(store, "data/dataset.json") == DATASET


@pytest.mark.parametrize(
    "change, field",
    [
        ({"extra_key": 1}, "extra_key"),  # an unknown key
        ({"image_size": "big"}, "image_size"),  # a wrong type
        ({"splits": {"train": {"unbalanced": {**SPLIT, "count": None}}}}, "splits.train.unbalanced.count"),
        ({"splits": {"holdout": {"unbalanced": SPLIT}}}, "splits.holdout"),  # not a split name
    ],
)
def test_a_format_change_fails_where_the_file_is_written(tmp_path, change, field):
    store = LocalStore(tmp_path)
    with pytest.raises(ValidationError) as error:
        contracts.DatasetInfo.write(store, "data/dataset.json", {**DATASET, **change})
    assert field in str(error.value)
    assert not store.exists("data/dataset.json")


def test_a_missing_key_fails_where_the_file_is_written(tmp_path):
    record = {k: v for k, v in DATASET.items() if k != "classes"}
    with pytest.raises(ValidationError, match="classes"):
        contracts.DatasetInfo.write(LocalStore(tmp_path), "data/dataset.json", record)


def test_a_promotion_record_keeps_exactly_its_keys(tmp_path):
    """Optional keys absent from a record stay absent (an earlier try's record has fewer keys)."""
    record = {
        "run_id": "r1",
        "metric": "macro_f1",
        "promoted": True,
        "decision": "promoted",
        "reason": "promoted by an earlier try of this task",
        "candidate": {"name": "m", "macro_f1": 0.9},
        "new_champion": {"run_id": "r1"},
        "champion_on_this_test": None,
    }
    assert contracts.Promotion.write(LocalStore(tmp_path), "runs/r1/promotion.json", record) == record


def test_a_file_of_another_format_fails_where_it_is_read_naming_the_file_and_the_field(tmp_path):
    store = LocalStore(tmp_path)
    store.put_json("data/dataset.json", {**DATASET, "image_size": "big"})  # not written through the contract
    with pytest.raises(PipelineError) as error:
        contracts.DatasetInfo.read(store, "data/dataset.json")
    assert store.url("data/dataset.json") in str(error.value)
    assert "image_size" in str(error.value)
