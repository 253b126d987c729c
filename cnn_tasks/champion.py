"""Champions, one line per model name, and the choice of this run's candidate. The one module that
knows where champions live and reads and writes their records and files: the promote stage installs
champions through it, the predict stage and the command line predict with one, the nothing-changed
check, the report and the report plugin read them.

A model name (`model_name`, by default derived from the dataset's file or folder name) names a line
of champions: runs with the same name compete, runs with different names never replace each
other's champion. Under champions/<name>/:

  champion.json                              the current champion's record
  models/<run_id>/model.keras, saved_model/, model.tflite, model_card.json, model_card.md
  history/<timestamp>-<run_id>.json          every champion this name ever had

  models/<run_id>/split.csv, profile.json    what it trained on (the fair comparison, data drift)

Stores written before model names hold one champion.json at the store root (LEGACY_CHAMPION_KEY);
it is listed (as LEGACY_NAME) and predicts from the command line, but is never compared or replaced.
A champion record is a plain dict, read leniently: records written by older versions lack keys.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import numpy as np

from cnn_tasks.contracts import EnsembleSummary, ModelMetrics
from cnn_tasks.errors import PipelineError

CHAMPIONS = "champions"
LEGACY_CHAMPION_KEY = "champion.json"
LEGACY_NAME = "legacy"  # how listings name a LEGACY_CHAMPION_KEY champion
ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip")


# ----------------------------------------------------------------------------- model names
def derive_model_name(dataset_url: str) -> str:
    """A model name from the dataset's file or folder name: .../EuroSAT.zip -> eurosat,
    s3://bucket/flowers/ -> flowers, ~/data/My Photos -> my-photos."""
    path = unquote(urlparse(dataset_url).path if "://" in dataset_url else dataset_url)
    name = PurePosixPath(path.replace("\\", "/").rstrip("/")).name.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = re.sub(r"[^a-z0-9_-]+", "-", name).strip("-_")[:40].strip("-_")
    return name or "dataset"


def model_name(config) -> str:
    """The run's model name: the `model_name` setting, else the one derived from its dataset."""
    return config.model_name or derive_model_name(config.dataset_url)


def champion_json_key(name: str) -> str:
    return f"{CHAMPIONS}/{name}/champion.json"


def champion_key(name: str, run_id: str, file: str) -> str:
    """A file promoted with run `run_id`'s champion of `name`: model.keras, saved_model, model_card.*"""
    return f"{CHAMPIONS}/{name}/models/{run_id}/{file}"


def champion_model_key(name: str, run_id: str) -> str:
    return champion_key(name, run_id, "model.keras")


def history_key(champion: dict) -> str:
    return f"{CHAMPIONS}/{champion['model_name']}/history/{champion['promoted_at']}-{champion['run_id']}.json"


def read_champion(store, name: str) -> dict | None:
    """The current champion of model `name`, or None."""
    key = champion_json_key(name)
    return store.get_json(key) if store.exists(key) else None


def champions(store, include_legacy: bool = False) -> dict[str, dict]:
    """{model name: current champion} for every name in the store that has one; with `include_legacy`,
    a champion.json from before model names too, as LEGACY_NAME."""
    found = {}
    for name in store.folders(f"{CHAMPIONS}/"):
        champion = read_champion(store, name)
        if champion is not None:
            found[name] = champion
    if include_legacy and LEGACY_NAME not in found and store.exists(LEGACY_CHAMPION_KEY):
        found[LEGACY_NAME] = store.get_json(LEGACY_CHAMPION_KEY)
    return found


def history(store, name: str) -> list[dict]:
    """Every champion model `name` has had, oldest first."""
    keys = [k for k in store.list(f"{CHAMPIONS}/{name}/history/") if k.endswith(".json")]
    return sorted((store.get_json(k) for k in keys), key=lambda c: c.get("promoted_at") or "")


def find(store, name: str | None = None) -> tuple[str, dict]:
    """(model name, current champion) of model `name`, or of the store's only one when None (a
    champion.json from before model names included); PipelineError when there is none to choose."""
    found = champions(store, include_legacy=True)
    if not found:
        raise PipelineError(f"no champion in {store.uri}: no model has been promoted in this store yet")
    if name is None and len(found) > 1:
        raise PipelineError(f"{store.uri} has champions for {', '.join(sorted(found))}: choose one with --model-name")
    name = name or next(iter(found))
    if name not in found:
        raise PipelineError(f"no champion named {name!r} in {store.uri}; it has {', '.join(sorted(found))}")
    return name, found[name]


def source_meta_key(champion: dict) -> str | None:
    """The meta.json the champion was trained with: beside the run's model it was copied from
    (runs/<run>/models/<id>/model.keras -> .../meta.json); None when the record does not say."""
    source = champion.get("source_model_key")
    return source.rsplit("/", 1)[0] + "/meta.json" if source else None


def fetch_model(store, champion: dict, folder: Path) -> Path:
    """The champion's model.keras and the meta.json it was trained with (its classes and image
    preprocessing) into `folder`; returns the model's path. The meta.json is copied as is (readers
    read it leniently: older versions); without one, the record's classes and image fit are written."""
    model = store.get_file(champion["model_key"], folder / "model.keras")
    meta_key = source_meta_key(champion)
    if meta_key and store.exists(meta_key):
        store.get_file(meta_key, folder / "meta.json")
    else:  # the champion record's classes and fit; no size limits
        (folder / "meta.json").write_text(json.dumps({k: champion.get(k) for k in ("classes", "image_fit")}))
    return model


def seen_keys(store, champion: dict) -> set[str] | None:
    """The content keys of the images the champion trained or validated on (its run's split.csv, kept
    beside it at promotion); None when it was promoted before they were recorded."""
    from cnn_tasks import data

    key = champion.get("split_key")
    if not key or not store.exists(key):
        return None
    table = data.read_csv_text(store.get_text(key))
    return set(table.loc[table["split"].isin(["train", "val"]), "key"])


def read_profile(store, champion: dict) -> dict | None:
    """The profile of the champion's training data (kept beside it at promotion); None when it was
    promoted before data profiles were kept."""
    key = champion.get("profile_key")
    return store.get_json(key) if key and store.exists(key) else None


# ----------------------------------------------------------------------------- writing a champion
@dataclass(frozen=True)
class Installed:
    """Where `install_champion` put a new champion: its champion.json, its history record and its model."""

    champion_key: str
    history_key: str
    model_key: str


def put_champion_file(store, champion: dict, file: str, local: Path) -> str:
    """Upload a local file, or a folder (a SavedModel) file by file, beside the champion's model
    (champions/<name>/models/<run_id>/<file>); returns its key."""
    key = champion_key(champion["model_name"], champion["run_id"], file)
    if local.is_dir():
        from cnn_tasks import serving

        serving.upload_folder(store, local, key)
    else:
        store.put_file(key, local)
    return key


def copy_champion_file(store, champion: dict, file: str, source_key: str) -> str:
    """Copy a store object beside the champion's model; returns its key."""
    key = champion_key(champion["model_name"], champion["run_id"], file)
    store.copy(source_key, key)
    return key


def keep_training_data_record(ctx, champion: dict) -> dict:
    """Copies, beside the champion, of what a later run compares it with: which images it trained and
    validated on (split.csv, for the fair comparison) and the profile of its data (for drift)."""
    keys = {}
    for file, field in (("split.csv", "split_key"), ("profile.json", "profile_key")):
        if ctx.store.exists(ctx.data_key(file)):
            keys[field] = copy_champion_file(ctx.store, champion, file, ctx.data_key(file))
    return keys


def install_champion(store, champion: dict, source_model_key: str, previous: dict | None) -> Installed:
    """Copy the model, archive the previous record (if not yet in history), write history + champion.json."""
    with tempfile.TemporaryDirectory() as tmp:
        local = store.get_file(source_model_key, Path(tmp) / "model.keras")
        store.put_file(champion["model_key"], local)
    if previous and previous.get("promoted_at") and previous.get("run_id") and not store.exists(history_key(previous)):
        store.put_json(history_key(previous), previous)
    store.put_json(history_key(champion), champion)
    key = champion_json_key(champion["model_name"])
    store.put_json(key, champion)
    return Installed(champion_key=key, history_key=history_key(champion), model_key=champion["model_key"])


# ----------------------------------------------------------------------------- candidates
def candidate_rows(ctx) -> list[dict]:
    """The comparison rows (models and ensembles) of this run, from the ensemble stage or per model."""
    ensemble_key = ctx.eval_key("ensemble", "ensemble.json")
    if ctx.store.exists(ensemble_key):
        return EnsembleSummary.read(ctx.store, ensemble_key)["comparison"]
    rows = []
    for key in ctx.store.list(ctx.key("eval") + "/"):
        if key.endswith("/metrics.json"):
            metrics = ModelMetrics.read(ctx.store, key)
            rows.append(
                {
                    "name": metrics["model_id"],
                    "kind": "model",
                    "members": [metrics["model_id"]],
                    **metrics["splits"]["test"],
                }
            )
    return rows


def pick_candidate(rows: list[dict], metric: str) -> tuple[dict, dict]:
    """(best row overall, deployable single-model row): the best member when the best is an ensemble."""

    def score(row):
        return -np.inf if row.get(metric) is None else row[metric]

    best = max(rows, key=score)
    models = {r["name"]: r for r in rows if r["kind"] == "model"}
    deployable = best if best["kind"] == "model" else max((models[m] for m in best["members"]), key=score)
    return best, deployable
