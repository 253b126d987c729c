"""Predictions for unlabelled images, with the champion (when it fits this run's classes) or this
run's best single model.

Stage: `run(ctx)` fetches `config.unlabelled_url` with `download.fetch` and writes
report/predictions.csv, report/predictions_rejected.csv and report/predictions.json (the record
the report reads; it also records why the stage did nothing when no URL is configured).

CLI:  python -m cnn_tasks.predict MODEL.keras FOLDER [--out predictions.csv]
Class names come from meta.json beside the model (else class_<i>); the image size from the model input.
Images go through the same path as training: validated RGB (images.load_rgb), then
data.decode_and_resize, then the model (which standardises internally).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from pathlib import Path

import numpy as np

from cnn_tasks import data, download, images, models

log = logging.getLogger(__name__)

TOP_K = 3
BATCH = 64


# ----------------------------------------------------------------------------- core
def list_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def read_images(folder: Path, size: int) -> tuple[list[str], np.ndarray, list[dict]]:
    """(names, pixels [N,S,S,3], rejected [{"image", "reason"}]) for every file under `folder`.

    Pixels are float32 0..255 at `size`, exactly as training saw them: the validated RGB image
    (images.load_rgb) encoded losslessly, then data.decode_and_resize.
    """
    names, pixels, rejected = [], [], []
    for path in list_files(folder):
        name = path.relative_to(folder).as_posix()
        try:
            image = images.load_rgb(path)
            pixels.append(np.asarray(data.decode_and_resize(images.encode_png(image), size), dtype=np.float32))
            names.append(name)
        except images.ImageRejected as exc:
            rejected.append({"image": name, "reason": str(exc)})  # "<reason>: <detail>"
        except Exception as exc:  # anything else unreadable is listed too, never dropped
            rejected.append({"image": name, "reason": str(exc) or type(exc).__name__})
    array = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.float32)
    return names, array, rejected


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


def predict_folder(model, folder: Path, classes: list[str]) -> tuple[list[dict], list[dict]]:
    """(prediction rows, rejected rows) for every file under `folder`."""
    size = int(model.input_shape[1])
    names, x, rejected = read_images(folder, size)
    proba = model.predict(x, batch_size=BATCH, verbose=0) if len(x) else np.zeros((0, len(classes)))
    return prediction_rows(names, np.asarray(proba, dtype=np.float64), classes), rejected


def csv_text(rows: list[dict], columns: list[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


PREDICTION_COLUMNS = ["image", "predicted_class", "confidence"] + [
    f"top{k}_{part}" for k in range(1, TOP_K + 1) for part in ("class", "prob")]
REJECTED_COLUMNS = ["image", "reason"]


def classes_beside(model_path: Path, n_classes: int) -> list[str]:
    """Class names from meta.json next to the model, else class_<i>."""
    meta = Path(model_path).with_name("meta.json")
    if meta.is_file():
        classes = json.loads(meta.read_text()).get("classes")
        if classes and len(classes) == n_classes:
            return list(classes)
    return [f"class_{i}" for i in range(n_classes)]


# ----------------------------------------------------------------------------- the stage
def choose_model(ctx, classes: list[str]) -> dict:
    """The champion when its classes match this run's, else this run's best single model."""
    from cnn_tasks import promote

    store = ctx.store
    if store.exists(promote.CHAMPION_KEY):
        champion = store.get_json(promote.CHAMPION_KEY)
        if list(champion.get("classes") or []) == classes and store.exists(champion["model_key"]):
            return {"source": "champion", "model_id": champion["model_id"], "model_key": champion["model_key"],
                    "run_id": champion["run_id"]}
        why = "champion classes differ from this run's" if champion.get("classes") != classes else "model missing"
        log.info("not using the champion (%s); using this run's best model", why)
    rows = promote.candidate_rows(ctx)
    if not rows:
        raise RuntimeError("no champion and no evaluated model in this run: nothing to predict with")
    _, deployable = promote.pick_candidate(rows, ctx.config.promotion_metric)
    return {"source": "this run's best model", "model_id": deployable["name"],
            "model_key": ctx.model_key(deployable["name"], "model.keras"), "run_id": ctx.run_id}


def run(ctx) -> dict:
    """Predict config.unlabelled_url; a recorded no-op when it is not set."""
    record_key = ctx.report_key("predictions.json")
    url = ctx.config.unlabelled_url
    if url is None:
        reason = "config.unlabelled_url is not set: no unlabelled images to predict"
        log.info("predict: skipped, %s", reason)
        ctx.store.put_json(record_key, {"status": "skipped", "reason": reason})
        return {"status": "skipped", "reason": reason, "record_key": record_key}
    classes = list(data.load_dataset_info(ctx)["classes"])
    chosen = choose_model(ctx, classes)
    folder = download.fetch(ctx, url)
    model = models.load_model(ctx.cached(chosen["model_key"]))
    rows, rejected = predict_folder(model, folder, classes)
    csv_key, rejected_key = ctx.report_key("predictions.csv"), ctx.report_key("predictions_rejected.csv")
    ctx.store.put_text(csv_key, csv_text(rows, PREDICTION_COLUMNS), "text/csv")
    ctx.store.put_text(rejected_key, csv_text(rejected, REJECTED_COLUMNS), "text/csv")
    counts = {c: sum(r["predicted_class"] == c for r in rows) for c in classes}
    record = {"status": "done", "url": url, "model": chosen, "predicted": len(rows), "rejected": len(rejected),
              "class_counts": counts, "predictions_key": csv_key, "rejected_key": rejected_key}
    ctx.store.put_json(record_key, record)
    log.info("predict: %d images predicted with %s (%s), %d rejected", len(rows), chosen["model_id"],
             chosen["source"], len(rejected))
    return {"status": "done", "predicted": len(rows), "rejected": len(rejected), "record_key": record_key,
            "predictions_key": csv_key}


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnn_tasks.predict",
                                     description="Predict the class of every image in a folder.")
    parser.add_argument("model", type=Path, help="a model.keras file (meta.json beside it gives class names)")
    parser.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV to write")
    args = parser.parse_args(argv)
    model = models.load_model(args.model)
    classes = classes_beside(args.model, int(model.output_shape[-1]))
    rows, rejected = predict_folder(model, args.folder, classes)
    args.out.write_text(csv_text(rows, PREDICTION_COLUMNS))
    rejected_path = args.out.with_name(f"{args.out.stem}_rejected.csv")
    rejected_path.write_text(csv_text(rejected, REJECTED_COLUMNS))
    print(f"{len(rows)} images predicted -> {args.out}; {len(rejected)} rejected -> {rejected_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
