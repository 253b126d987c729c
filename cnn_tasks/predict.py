"""Predictions for unlabelled images, with the champion (when it fits this run's classes) or this
run's best single model.

Stage: `run(ctx)` fetches `config.unlabelled_url` (else the dataset's own unlabelled folders,
recorded by download in ingest.json) with `ingest.fetch.fetch` and writes
report/predictions.csv, report/predictions_rejected.csv and report/predictions.json (the record
the report reads; it also records why the stage did nothing when no URL is configured).

CLI (`cnn_tasks.cli`):  python -m cnn_tasks predict-model MODEL.keras FOLDER [--out predictions.csv]
Class names come from meta.json beside the model (else class_<i>); the image size from the model input;
the image fit (`image_fit`) and size limits (`min_image_side`, `max_aspect_ratio`) the model was
trained with from meta.json too (a model without them: squash, no limits).
Images go through the same path as training: validated RGB (images.load_rgb, with the same size
limits as ingest, rejected for the same reasons), then data.decode_and_resize with the model's fit,
then the model (which standardises internally). The folder is streamed
BATCH images at a time; hidden/system files are skipped as the dataset download skips them.
Reading the folder (and the visualize command's) is `cnn_tasks.image_folder`.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from cnn_tasks import champion, data, models
from cnn_tasks.image_folder import (
    PredictError,
    Preprocessing,
    iter_image_batches,
    list_files,
)
from cnn_tasks.ingest import fetch
from cnn_tasks.ingest.files import unescape_path

log = logging.getLogger(__name__)

TOP_K = 3


# ----------------------------------------------------------------------------- core
def prediction_rows(names: list[str], proba: np.ndarray, classes: list[str]) -> list[dict]:
    """One row per image: predicted class, confidence and the top-3 classes with probabilities."""
    rows = []
    for name, p in zip(names, proba):
        order = np.argsort(-p, kind="stable")
        row = {"image": name, "predicted_class": classes[order[0]], "confidence": round(float(p[order[0]]), 6)}
        for k in range(TOP_K):
            row[f"top{k + 1}_class"] = classes[order[k]] if k < len(order) else ""
            row[f"top{k + 1}_prob"] = round(float(p[order[k]]), 6) if k < len(order) else ""
        rows.append(row)
    return rows


def predict_folder(
    model, folder: Path, classes: list[str], prep: Preprocessing = Preprocessing()
) -> tuple[list[dict], list[dict]]:
    """(prediction rows, rejected rows) for every file under `folder`, read with `prep`.

    Streams: each batch of BATCH images is read, preprocessed and predicted before the next is
    read, and only its small per-image rows are kept, so memory does not grow with the folder.
    """
    size = int(model.input_shape[1])
    rows, rejected = [], []
    for names, x, batch_rejected in iter_image_batches(folder, size, prep=prep):
        rejected += batch_rejected
        if names:
            proba = np.asarray(model.predict_on_batch(x), dtype=np.float64)
            rows += prediction_rows(names, proba, classes)
    return rows, rejected


def csv_text(rows: list[dict], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


PREDICTION_COLUMNS = ["image", "predicted_class", "confidence"] + [
    f"top{k}_{part}" for k in range(1, TOP_K + 1) for part in ("class", "prob")
]
REJECTED_COLUMNS = ["image", "reason"]


# ----------------------------------------------------------------------------- the stage
def stage_preprocessing(ctx, chosen: dict) -> Preprocessing:
    """This run's size limits, and the fit the chosen model was trained with (its meta.json,
    `chosen["meta_key"]`; a model recorded before image_fit existed was trained with squash)."""
    meta_key = chosen.get("meta_key")
    # Read leniently, not through contracts.ModelMeta: a champion may come from a run of an older version.
    meta = ctx.store.get_json(meta_key) if meta_key and ctx.store.exists(meta_key) else {}
    return Preprocessing.from_config(ctx.config, fit=data.image_fit(meta))


def choose_model(ctx, classes: list[str]) -> dict:
    """The champion of the run's model name when its classes match this run's, else this run's best
    single model."""
    store = ctx.store
    current = champion.read_champion(store, champion.model_name(ctx.config))
    if current is not None:
        if list(current.get("classes") or []) == classes and store.exists(current["model_key"]):
            return {
                "source": "champion",
                "model_id": current["model_id"],
                "model_key": current["model_key"],
                "run_id": current["run_id"],
                "meta_key": champion.source_meta_key(current),
            }
        why = "champion classes differ from this run's" if current.get("classes") != classes else "model missing"
        log.info("not using the champion (%s); using this run's best model", why)
    rows = champion.candidate_rows(ctx)
    if not rows:
        raise RuntimeError("no champion and no evaluated model in this run: nothing to predict with")
    _, deployable = champion.pick_candidate(rows, ctx.config.promotion_metric)
    return {
        "source": "this run's best model",
        "model_id": deployable["name"],
        "model_key": ctx.model_key(deployable["name"], "model.keras"),
        "run_id": ctx.run_id,
        "meta_key": ctx.model_key(deployable["name"], "meta.json"),
    }


def dataset_unlabelled(ctx) -> list[dict]:
    """The unlabelled folders download found in the dataset (ingest.json `layout.unlabelled`:
    readable `folder` and on-disk `path`, both relative to the dataset root)."""
    key = ctx.data_key("ingest.json")
    if not ctx.store.exists(key):
        return []
    return list((ctx.store.get_json(key).get("layout") or {}).get("unlabelled") or [])


def run(ctx) -> dict:
    """Predict config.unlabelled_url, else the unlabelled folders of the dataset itself (e.g.
    test_set/*.JPEG beside train_set/<class>/, found by download's layout detection); a recorded
    no-op when there are none. When both exist, unlabelled_url wins (the explicit setting) and the
    record says which dataset folders were not predicted. The dataset is fetched again through the
    worker cache (`ingest.fetch.fetch`), since this task may run on another worker than download."""
    record_key = ctx.report_key("predictions.json")
    url = ctx.config.unlabelled_url
    found = dataset_unlabelled(ctx)
    if url is None and not found:
        reason = (
            "config.unlabelled_url is not set and the dataset holds no unlabelled folder: no unlabelled "
            "images to predict"
        )
        log.info("predict: skipped, %s", reason)
        ctx.store.put_json(record_key, {"status": "skipped", "reason": reason})
        return {"status": "skipped", "reason": reason, "record_key": record_key}
    classes = list(data.load_dataset_info(ctx)["classes"])
    chosen = choose_model(ctx, classes)
    note = None
    if url is not None:
        folder = fetch.fetch(ctx, url)
        folders, described = [("", folder)], url
        if found:
            note = (
                "unlabelled_url is set, so it is predicted instead of the dataset's unlabelled folder(s) "
                + ", ".join(f"{f['folder']}/ ({f['files']} files)" for f in found)
            )
    else:
        root = fetch.fetch(ctx, ctx.config.dataset_url, ctx.config.dataset_checksum)
        folders = [(f"{f['folder']}/" if len(found) > 1 else "", root / unescape_path(f["path"])) for f in found]
        for f, (_, folder) in zip(found, folders):
            if not folder.is_dir():  # before any prediction: the dataset changed since download
                raise PredictError(
                    f"the dataset's unlabelled folder {f['folder']}/ ({f['files']} files when download ran) is "
                    f"missing from {ctx.config.dataset_url} now: the dataset changed after the download stage; "
                    "run the whole DAG again so that every stage sees the same dataset"
                )
        described = f"{ctx.config.dataset_url}: " + ", ".join(f"{f['folder']}/" for f in found)
        note = "the dataset's own unlabelled folder(s), found by the download stage (no unlabelled_url is set)"
    model = models.load_model(ctx.cached(chosen["model_key"]))
    rows, rejected, ignored = [], [], 0
    for prefix, folder in folders:  # image names relative to the folder (prefixed when there are several)
        folder_rows, folder_rejected = predict_folder(model, folder, classes, stage_preprocessing(ctx, chosen))
        rows += [{**r, "image": prefix + r["image"]} for r in folder_rows]
        rejected += [{**r, "image": prefix + r["image"]} for r in folder_rejected]
        ignored += list_files(folder)[1]
    csv_key, rejected_key = ctx.report_key("predictions.csv"), ctx.report_key("predictions_rejected.csv")
    ctx.store.put_text(csv_key, csv_text(rows, PREDICTION_COLUMNS), "text/csv")
    ctx.store.put_text(rejected_key, csv_text(rejected, REJECTED_COLUMNS), "text/csv")
    counts = {c: sum(r["predicted_class"] == c for r in rows) for c in classes}
    record = {
        "status": "done",
        "url": described,
        "model": chosen,
        "predicted": len(rows),
        "rejected": len(rejected),
        "ignored_hidden_files": ignored,
        "class_counts": counts,
        "predictions_key": csv_key,
        "rejected_key": rejected_key,
        "images_from": "unlabelled_url" if url is not None else "dataset",
        "note": note,
    }
    ctx.store.put_json(record_key, record)
    log.info(
        "predict: %d images predicted with %s (%s), %d rejected, %d hidden/system files skipped%s",
        len(rows),
        chosen["model_id"],
        chosen["source"],
        len(rejected),
        ignored,
        f"; {note}" if note else "",
    )
    return {
        "status": "done",
        "predicted": len(rows),
        "rejected": len(rejected),
        "record_key": record_key,
        "predictions_key": csv_key,
    }
