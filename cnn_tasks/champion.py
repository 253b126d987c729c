"""Champions, one line per model name, and the choice of this run's candidate: shared by the promote
stage (which installs champions), the predict stage and the command line (which predict with one),
the nothing-changed check and the report plugin (which list them).

A model name (`model_name`, by default derived from the dataset's file or folder name) names a line
of champions: runs with the same name compete, runs with different names never replace each
other's champion. Under champions/<name>/:

  champion.json                              the current champion's record
  models/<run_id>/model.keras, saved_model/, model.tflite, model_card.json, model_card.md
  history/<timestamp>-<run_id>.json          every champion this name ever had

Stores written before model names hold one champion.json at the store root (LEGACY_CHAMPION_KEY);
it is listed (as LEGACY_NAME) and predicts from the command line, but is never compared or replaced.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import unquote, urlparse

import numpy as np

from cnn_tasks.contracts import EnsembleSummary, ModelMetrics

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
