"""Predictions: top-1 equals argmax on a tiny model, unreadable files are listed, the stage and the CLI."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from cnn_tasks import predict
from tests.test_evaluate import CLASSES, tiny_model
from tests.imagegen import make_dataset


def _fake_load_rgb(path):
    """Stand-in for images.load_rgb: a PIL RGB image or ValueError(reason)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not a readable image: {type(exc).__name__}") from None


def _fake_pixels(image, size):
    return np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float32)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """6 generated images in class folders, a corrupt PNG and a text file."""
    monkeypatch.setattr(predict, "_load_rgb", _fake_load_rgb)
    monkeypatch.setattr(predict, "_pixels", _fake_pixels)
    root = make_dataset(tmp_path / "unlabelled", classes=3, per_class=2, size=20, seed=3)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    (root / "notes.txt").write_text("not an image")
    return root


def read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_predict_folder_top1_is_argmax_and_lists_rejects(folder):
    model = tiny_model()
    rows, rejected = predict.predict_folder(model, folder, CLASSES)
    assert sorted(r["image"] for r in rejected) == ["corrupt.png", "notes.txt"]
    assert all(r["reason"] for r in rejected)
    assert len(rows) == 6
    names = [r["image"] for r in rows]
    x = np.stack([_fake_pixels(_fake_load_rgb(folder / n), 16) for n in names])
    proba = model.predict(x, verbose=0)
    for row, p in zip(rows, proba):
        assert row["predicted_class"] == row["top1_class"] == CLASSES[int(p.argmax())]
        assert row["confidence"] == pytest.approx(p.max(), abs=1e-6)
        assert [row[f"top{k}_class"] for k in (1, 2, 3)] == [CLASSES[i] for i in np.argsort(-p)]
    truth = {"class_a": "alpha", "class_b": "beta", "class_c": "gamma"}
    assert sum(r["predicted_class"] == truth[r["image"].split("/")[0]] for r in rows) >= 5  # it learned


def test_run_without_url_is_a_recorded_no_op(make_ctx):
    ctx = make_ctx()
    out = predict.run(ctx)
    assert out["status"] == "skipped" and "unlabelled_url" in out["reason"]
    assert ctx.store.get_json(ctx.report_key("predictions.json"))["status"] == "skipped"
    assert not ctx.store.exists(ctx.report_key("predictions.csv"))


def test_run_uses_this_runs_best_model_without_a_champion(make_ctx, folder, monkeypatch, tmp_path):
    import keras

    ctx = make_ctx(unlabelled_url=str(folder))
    tiny_model().save(tmp_path / "m.keras")
    ctx.store.put_file(ctx.model_key("tiny__unbalanced", "model.keras"), tmp_path / "m.keras")
    rows = [{"name": "tiny__unbalanced", "kind": "model", "members": ["tiny__unbalanced"], "macro_f1": 0.9,
             "accuracy": 0.9}]
    ctx.store.put_json(ctx.eval_key("ensemble", "ensemble.json"), {"comparison": rows})
    monkeypatch.setattr(predict, "_dataset_classes", lambda ctx: CLASSES)
    monkeypatch.setattr(predict, "_fetch", lambda ctx, url: folder)
    monkeypatch.setattr(predict, "_load_model", lambda path: keras.models.load_model(path))
    out = predict.run(ctx)
    assert out == {"status": "done", "predicted": 6, "rejected": 2, "record_key": ctx.report_key("predictions.json"),
                   "predictions_key": ctx.report_key("predictions.csv")}
    record = ctx.store.get_json(out["record_key"])
    assert record["model"]["source"] == "this run's best model" and record["model"]["model_id"] == "tiny__unbalanced"
    assert len(read_csv(ctx.store.get_text(ctx.report_key("predictions.csv")))) == 6
    rejected = read_csv(ctx.store.get_text(ctx.report_key("predictions_rejected.csv")))
    assert sorted(r["image"] for r in rejected) == ["corrupt.png", "notes.txt"]


def test_cli_uses_class_names_beside_the_model(folder, tmp_path, monkeypatch):
    import keras

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    tiny_model().save(model_dir / "model.keras")
    (model_dir / "meta.json").write_text(json.dumps({"classes": CLASSES}))
    monkeypatch.setattr(predict, "_load_model", lambda path: keras.models.load_model(path))
    out = tmp_path / "preds.csv"
    assert predict.main([str(model_dir / "model.keras"), str(folder), "--out", str(out)]) == 0
    rows = read_csv(out.read_text())
    assert len(rows) == 6 and {r["predicted_class"] for r in rows} <= set(CLASSES)
    assert len(read_csv((tmp_path / "preds_rejected.csv").read_text())) == 2
    assert predict.classes_beside(tmp_path / "nowhere" / "model.keras", 2) == ["class_0", "class_1"]
