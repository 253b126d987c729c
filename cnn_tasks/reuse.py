"""Content-addressed reuse of stage outputs across runs, and the "nothing changed" check.

A stage's *key* is a sha256 over everything that shapes its outputs: its input (the dataset's
content digest for download, the upstream stage's key after that), the settings it reads
(`STAGES`), and the code that computes it (the source of its module and of every cnn_tasks module
it imports, and the versions of the libraries that decode, encode and train). Equal keys mean equal
outputs, so a run whose key matches an earlier run's reuses that run's outputs instead of
computing them: the small ones (JSON, CSV, figures) are copied into its own prefix, with the keys
of copied files rewritten inside them; the shards (`Stage.shared`, most of the bytes) are read in
place from the run that made them, which its dataset.json and manifest.csv name (they are
verified by sha256 when fetched). Reuse thus costs no time and no storage per run; a run whose
indexed outputs were deleted computes them again. The data stages reuse by default (`recompute=true` turns it off); a trained model only
with `reuse_models=true`.

  reuse/<stage>/<key>.json       at the store root: the run that computed it, its output keys,
                                 the task's XCom result (the index)
  runs/<id>/reuse/<name>.json    per run: each stage's key and the run it reused from (or null)

The nothing-changed check compares the run's dataset digest and model settings with the ones
the champion was trained with (`unchanged`). Library module: stages are passed in, never imported.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from cnn_tasks import runtime
from cnn_tasks.champion import model_name, read_champion
from cnn_tasks.context import model_id
from cnn_tasks.ingest import fetch
from cnn_tasks.ingest.files import readable
from cnn_tasks.progress import TERMINAL

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent
TEXT_SUFFIXES = (".json", ".csv")  # outputs whose run-prefixed keys are rewritten when copied


@dataclass(frozen=True)
class Stage:
    module: str  # cnn_tasks.<module> computes it
    settings: tuple[str, ...]  # the PipelineConfig fields that shape its outputs
    outputs: tuple[str, ...]  # key prefixes of its outputs, relative to runs/<id>/
    shared: tuple[str, ...] = ()  # the large ones among them, read in place from the run that made them


STAGES = {
    "download": Stage(
        "download",
        (
            "classes",
            "classes_limit",
            "max_images_per_class",
            "dataset_subdir",
            "predefined_split",
            "min_images_per_class",
            "min_image_side",
            "max_aspect_ratio",
            "seed",
        ),
        ("data/manifest.csv", "data/rejected.csv", "data/ingest.json", "data/clean/"),
        ("data/clean/",),
    ),
    "split": Stage(
        "split",
        ("split", "seed"),
        (
            "data/split.csv",
            "data/analysis.json",
            "data/profile.json",
            "data/figures/counts_",
            "data/figures/image_sizes.png",
            "data/figures/samples.png",
        ),
    ),
    "rebalance": Stage(
        "rebalance",
        ("rebalance", "seed", "image_size", "image_fit", "augment"),
        ("data/shards/", "data/dataset.json", "data/figures/rebalance_"),
        ("data/shards/",),
    ),
    # One trained model; its key also holds the experiment's spec and the data variant.
    "train": Stage(
        "train",
        (
            "epochs",
            "early_stopping_patience",
            "time_budget_minutes",
            "augment",
            "lr_range_test",
            "mixed_precision",
            "deterministic",
            "image_size",
            "seed",
        ),
        (),  # models/<model id>/
    ),
}
UPSTREAM = {"split": "download", "rebalance": "split", "train": "rebalance"}

# Settings that shape no reused output: the stages they act on always run, or they only say where
# things are, how to verify them, or how to decide. A test checks every field is in STAGES or here.
NOT_IN_ANY_KEY = {
    "profile": "its effect is in the other settings' values",
    "dataset_url": "the dataset's content is hashed instead of its address",
    "dataset_checksum": "only verifies the download",
    "unlabelled_url": "predict always runs",
    "experiments": "part of each trained model's key, as that experiment's spec",
    "single_batch_steps": "the single-batch check always runs",
    "tta": "evaluation always runs",
    "filter_pattern_steps": "visualisation always runs",
    "promotion_metric": "promotion always runs",
    "promotion_margin": "promotion always runs",
    "promotion_min_accuracy": "promotion always runs",
    "export_tflite": "promotion always runs",
    "model_name": "promotion always runs",
    "new_lineage_on_class_change": "promotion always runs",
    "min_unseen_test_images": "promotion always runs",
    "drift_class_share_change": "the report always runs",
    "drift_psi": "the report always runs",
    "store_uri": "where outputs go",
    "s3_endpoint_url": "where outputs go",
    "aws_conn_id": "where outputs go",
    "recompute": "decides whether to reuse",
    "reuse_models": "decides whether to reuse",
    "skip_unchanged": "decides whether to stop early",
}


class ReuseIndexError(RuntimeError):
    """An index entry names outputs that are gone: the stage is computed again."""


# ================================================================== keys
def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@cache
def code_modules(module: str) -> tuple[str, ...]:
    """cnn_tasks.<module> and every cnn_tasks module it imports, at any depth (by their source).
    Modules of sub-packages are named by their dotted path below cnn_tasks ('ingest.fetch'), a
    package by its `__init__` ('ingest')."""
    seen, todo = set(), [module, "__init__"]
    while todo:
        name = todo.pop()
        if name in seen or _source(name) is None:
            continue
        seen.add(name)
        todo += _imported(_source(name)) + [name.rpartition(".")[0]] * ("." in name)
    return tuple(sorted(seen))


def _source(name: str) -> Path | None:
    """The source file of module `name` below cnn_tasks ('ingest.fetch', 'ingest'), or None."""
    path = PACKAGE.joinpath(*name.split("."))
    return next((p for p in (path.with_suffix(".py"), path / "__init__.py") if p.is_file()), None)


@cache
def code_fingerprint(module: str) -> str:
    """A digest of the source of `code_modules(module)` and of Python's and the libraries' versions
    (runtime.package_versions): any change to the code that computes a stage changes its key."""
    sources = {name: hashlib.sha256(_source(name).read_bytes()).hexdigest() for name in code_modules(module)}
    return digest({"sources": sources, "libraries": runtime.package_versions()})


def _imported(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cnn_tasks"):
            below = node.module.partition(".")[2]  # '' for cnn_tasks itself
            names += [below] if below else []
            names += [f"{below}.{alias.name}" if below else alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name.partition(".")[2] for a in node.names if a.name.startswith("cnn_tasks.")]
    return names


def tree_digest(folder: Path, skipped: list[dict] = ()) -> str:
    """The content digest of a fetched dataset: sha256 over every file's relative path and content,
    in path order, plus the archive members its extraction skipped. A dataset repacked into another
    archive or moved to another address has the same digest; one changed byte gives another."""
    total = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            content = hashlib.file_digest(f, "sha256").hexdigest()
        total.update(os.fsencode(path.relative_to(folder)) + b"\0" + content.encode() + b"\n")
    total.update(json.dumps(list(skipped), sort_keys=True, default=str).encode())
    return total.hexdigest()


def settings_of(config, names: tuple[str, ...]) -> dict:
    values = config.to_dict()
    return {name: values[name] for name in names}


def stage_key(config, stage: str, upstream: str, extra: dict | None = None) -> str:
    """The key of `stage` given its input `upstream` (a content digest or the upstream stage's key)."""
    spec = STAGES[stage]
    return digest(
        {
            "stage": stage,
            "input": upstream,
            "settings": settings_of(config, spec.settings),
            "code": code_fingerprint(spec.module),
            **(extra or {}),
        }
    )


def model_settings_digest(config) -> str:
    """A digest of every setting that shapes a trained model (data preparation, training, experiments)."""
    names = sorted({n for spec in STAGES.values() for n in spec.settings} | {"experiments"})
    return digest(settings_of(config, tuple(names)))


# ================================================================== records
def index_key(stage: str, key: str) -> str:
    return f"reuse/{stage}/{key}.json"


def run_record_key(ctx, name: str) -> str:
    return ctx.key("reuse", f"{name}.json")


def read_run_records(ctx) -> list[dict]:
    """This run's reuse records (one per reusable stage that ran), in pipeline order."""
    prefix = ctx.key("reuse") + "/"
    records = [ctx.store.get_json(k) for k in ctx.store.list(prefix) if k.endswith(".json")]
    return sorted(records, key=lambda r: (list(STAGES).index(r["stage"]), r["name"]))


def run_record(ctx, name: str) -> dict | None:
    key = run_record_key(ctx, name)
    return ctx.store.get_json(key) if ctx.store.exists(key) else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ================================================================== reuse
def reusing(
    ctx,
    stage: str,
    key: str,
    compute: Callable[[], dict],
    *,
    name: str | None = None,
    outputs: tuple[str, ...] | None = None,
    enabled: bool = True,
    facts: dict | None = None,
) -> tuple[dict, str | None]:
    """(the stage's XCom result, the run it was reused from or None): reused from the earlier run
    with this `key` when there is one (and `enabled`), else `compute()`d and indexed under `key`.

    `name` names this run's record (default the stage); `outputs` are the output key prefixes
    relative to runs/<id>/ (default the stage's); `facts` are kept in the run's record.
    """
    name, outputs = name or stage, outputs or STAGES[stage].outputs
    store, index = ctx.store, index_key(stage, key)
    record = {"stage": stage, "name": name, "key": key, "reused_from": None, **(facts or {})}
    entry = _read_entry(store, index, name) if store.exists(index) else None
    if entry is not None and not enabled:
        log.info("%s: recomputed although run %s has it (key %s)", name, entry["run_id"], key[:12])
    elif entry is not None and entry["run_id"] != ctx.run_id:
        try:
            result = _copy_outputs(ctx, entry, STAGES[stage].shared)
        except ReuseIndexError as exc:
            log.warning("%s: %s; computing it again", name, exc)
        else:
            log.info("%s: reused from run %s (key %s)", name, entry["run_id"], key[:12], extra=TERMINAL)
            store.put_json(run_record_key(ctx, name), {**record, "reused_from": entry["run_id"], "at": _now()})
            return result, entry["run_id"]
    result = compute()
    written = [k for k in store.list(ctx.prefix + "/") if k[len(ctx.prefix) + 1 :].startswith(outputs)]
    store.put_json(
        index,
        {"stage": stage, "key": key, "run_id": ctx.run_id, "outputs": written, "result": result, "at": _now()},
    )
    store.put_json(run_record_key(ctx, name), {**record, "at": _now()})
    return result, None


def _read_entry(store, index: str, name: str) -> dict | None:
    """The index entry at `index`, or None (with a warning) when it cannot be read: computed again."""
    try:
        entry = store.get_json(index)
        if not isinstance(entry, dict) or not {"run_id", "outputs", "result"} <= set(entry):
            raise ValueError("it lacks run_id, outputs or result")
    except ValueError as exc:
        log.warning("%s: the reuse index entry %s is unreadable (%s); computing it again", name, store.url(index), exc)
        return None
    return entry


def _copy_outputs(ctx, entry: dict, shared: tuple[str, ...] = ()) -> dict:
    """Copy an indexed run's outputs into this run, except the `shared` ones (large shards, read in
    place); in the copied text files, and in the result returned, keys of copied outputs are
    rewritten to this run's prefix while keys of shared ones keep naming the run that made them."""
    store, old = ctx.store, f"runs/{entry['run_id']}/"
    new = ctx.prefix + "/"
    missing = [k for k in entry["outputs"] if not store.exists(k)]
    if missing or not entry["outputs"]:
        raise ReuseIndexError(
            f"run {entry['run_id']} computed it, but {len(missing)} of its {len(entry['outputs'])} outputs are "
            f"gone (e.g. {missing[:1]})"
        )
    copied = {k[len(old) :] for k in entry["outputs"] if not k[len(old) :].startswith(shared)}
    pattern = re.compile(re.escape(old) + r"([^\s\"',]+)")

    def rewrite(text: str) -> str:
        return pattern.sub(lambda m: new + m.group(1) if m.group(1) in copied else m.group(0), text)

    for rel in sorted(copied):
        if rel.endswith(TEXT_SUFFIXES):
            store.put_text(new + rel, rewrite(store.get_text(old + rel)))
        else:
            store.copy(old + rel, new + rel)
    return json.loads(rewrite(json.dumps(entry["result"])))


# ================================================================== the stages
def data_stage(ctx, stage: str, compute: Callable) -> dict:
    """Run data stage `stage` (download, split or rebalance) through `reusing`: its key chains the
    dataset's content digest (download) or the upstream stage's key recorded by this run."""
    cfg, facts = ctx.config, None
    if stage == "download":
        fetched = fetch.fetch_source(ctx, cfg.dataset_url, cfg.dataset_checksum)
        data_digest = tree_digest(fetched.folder, fetched.skipped)
        upstream, facts = data_digest, {"data_digest": data_digest}
    else:
        upstream = (run_record(ctx, UPSTREAM[stage]) or {}).get("key")
        if upstream is None:  # the upstream stage ran without a record: nothing to key this one by
            return compute(ctx)
    key = stage_key(cfg, stage, upstream)
    result, reused = reusing(ctx, stage, key, lambda: compute(ctx), enabled=not cfg.recompute, facts=facts)
    if stage == "download" and reused:  # same images, maybe from another address: say where they came from
        ingest = ctx.store.get_json(ctx.data_key("ingest.json"))
        ingest.update(
            source=readable(cfg.dataset_url), local_folder=readable(os.fspath(fetched.folder)), reused_from=reused
        )
        ctx.store.put_json(ctx.data_key("ingest.json"), ingest)
    return result


def train_stage(ctx, compute: Callable, experiment: str, variant: str) -> dict:
    """Train one model through `reusing` (enabled by reuse_models): its key chains the rebalanced
    data's key, the experiment's spec, the data variant and the training settings."""
    cfg, mid = ctx.config, model_id(experiment, variant)
    upstream = (run_record(ctx, "rebalance") or {}).get("key")
    if upstream is None:
        return compute(ctx, experiment, variant)
    spec = cfg.experiment(experiment).model_dump(mode="json")
    key = stage_key(cfg, "train", upstream, {"experiment": spec, "variant": variant})
    result, _ = reusing(
        ctx,
        "train",
        key,
        lambda: compute(ctx, experiment, variant),
        name=f"train.{mid}",
        outputs=(f"models/{mid}/",),
        enabled=cfg.reuse_models and not cfg.recompute,
    )
    return result


# ================================================================== nothing changed
@dataclass(frozen=True)
class Unchanged:
    stop: bool
    why: str


def unchanged(config, data_digest: str | None, champion: dict | None, run_type: str) -> Unchanged:
    """Whether this run stops after ingest: its data and model settings equal the champion's, and
    skip_unchanged allows stopping this kind of run ('auto': scheduled and asset-triggered ones)."""
    policy = config.skip_unchanged
    if policy == "never":
        return Unchanged(False, "skip_unchanged=never: every run trains")
    if policy == "auto" and run_type not in ("scheduled", "asset_triggered"):
        return Unchanged(
            False, f"a {run_type} run always trains (skip_unchanged=auto stops only scheduled and asset-triggered runs)"
        )
    if champion is None:
        return Unchanged(False, "there is no champion yet")
    if not champion.get("data_digest") or not champion.get("settings_digest"):
        return Unchanged(False, f"champion run {champion.get('run_id')} did not record its data and settings digests")
    changes = []
    if champion["data_digest"] != data_digest:
        changes.append("the dataset's content")
    if champion["settings_digest"] != model_settings_digest(config):
        changes.append("the model settings")
    if changes:
        return Unchanged(False, f"{' and '.join(changes)} changed since champion run {champion['run_id']}")
    return Unchanged(
        True,
        f"nothing changed since champion run {champion['run_id']}: the same dataset (content digest "
        f"{data_digest[:12]}) and the same model settings, so the run stopped after ingest; trigger it "
        "with skip_unchanged=never to train anyway",
    )


def stop_if_unchanged(ctx, run_type: str) -> bool:
    """The short-circuit after ingest: True to go on. When the run stops, runs/<id>/stopped.json
    says why (the report shows it)."""
    store = ctx.store
    champion = read_champion(store, model_name(ctx.config))
    data_digest = (run_record(ctx, "download") or {}).get("data_digest")
    verdict = unchanged(ctx.config, data_digest, champion, run_type)
    log.info("%s: %s", "stopping after ingest" if verdict.stop else "training", verdict.why, extra=TERMINAL)
    if verdict.stop:
        store.put_json(stopped_key(ctx), {"why": verdict.why, "champion_run_id": champion["run_id"], "at": _now()})
    return not verdict.stop


STOPPED = "stopped.json"


def stopped_key(ctx) -> str:
    return ctx.key(STOPPED)
