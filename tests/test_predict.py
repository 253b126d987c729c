"""Predictions: top-1 equals argmax of the model on the real preprocessing, unusable files are listed
with the exact reasons of images.load_rgb, the stage (real ingest.fetch.fetch, dataset.json, saved model)
and the CLI."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from cnn_tasks import cli, data, image_folder, images, predict
from tests.fixtures_training import write_training_dataset
from tests.helpers import CLASSES, tiny_model, write_single_model_ensemble
from tests.imagegen import make_dataset

REJECTED = {
    "corrupt.png": images.CORRUPT,
    "empty.png": images.EMPTY,
    "notes.txt": images.NOT_AN_IMAGE,
    "truncated.png": images.TRUNCATED,
}


@pytest.fixture
def folder(tmp_path):
    """6 generated 20 px PNGs in class folders (resized to the model's 16 px on the way in) and four
    unusable files: a corrupt PNG, a truncated PNG, a text file and a zero-byte file."""
    root = make_dataset(tmp_path / "unlabelled", classes=3, per_class=2, size=20, seed=3)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    whole = (root / "class_a" / "class_a_0.png").read_bytes()
    (root / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "notes.txt").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    return root


def read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def assert_rejected_with_exact_reasons(rows: list[dict], folder) -> None:
    reasons = {r["image"]: r["reason"] for r in rows}
    assert sorted(reasons) == sorted(REJECTED)
    assert reasons["empty.png"] == "empty_file: the file has 0 bytes"
    assert reasons["notes.txt"] == "not_an_image: Pillow does not recognise this file as an image"
    for name, code in REJECTED.items():
        assert reasons[name].split(": ", 1)[0] == code, reasons[name]
        with pytest.raises(images.ImageRejected) as rejected:
            images.load_rgb(folder / name)
        assert reasons[name] == str(rejected.value)  # "<reason>: <detail>", as ingest words it


def model_proba(model, folder, names: list[str]) -> np.ndarray:
    """The model on the training input pipeline's preprocessing of each (8-bit RGB PNG) file."""
    x = np.stack([data.decode_and_resize((folder / name).read_bytes(), 16).numpy() for name in names])
    assert x.shape == (len(names), 16, 16, 3)
    return model.predict(x, verbose=0)


def assert_top_k_is_the_models(rows: list[dict], proba: np.ndarray, classes: list[str]) -> None:
    for row, p in zip(rows, proba):
        assert row["predicted_class"] == row["top1_class"] == classes[int(p.argmax())]
        assert float(row["confidence"]) == pytest.approx(p.max(), abs=1e-6)
        assert [row[f"top{k}_class"] for k in (1, 2, 3)] == [classes[i] for i in np.argsort(-p)]
        assert [float(row[f"top{k}_prob"]) for k in (1, 2, 3)] == pytest.approx(np.sort(p)[::-1], abs=1e-6)


def test_predict_folder_top1_is_argmax_and_lists_rejects(folder):
    model = tiny_model()
    rows, rejected = predict.predict_folder(model, folder, CLASSES)
    assert_rejected_with_exact_reasons(rejected, folder)
    names = [r["image"] for r in rows]
    assert names == sorted(f"class_{c}/class_{c}_{i}.png" for c in "abc" for i in range(2))
    assert_top_k_is_the_models(rows, model_proba(model, folder, names), CLASSES)
    truth = {"class_a": "alpha", "class_b": "beta", "class_c": "gamma"}
    assert sum(r["predicted_class"] == truth[r["image"].split("/")[0]] for r in rows) >= 5  # it learned


def add_hidden_files(root) -> list[str]:
    """macOS/Windows metadata and hidden files, as the dataset download meets them."""
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "class_a" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "__MACOSX" / "class_a").mkdir(parents=True)
    (root / "__MACOSX" / "class_a" / "._class_a_0.png").write_bytes(b"\x00\x05\x16\x07")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "copy.png").write_bytes((root / "class_a" / "class_a_0.png").read_bytes())
    return [".DS_Store", "class_a/Thumbs.db", "__MACOSX/class_a/._class_a_0.png", ".hidden/copy.png"]


def test_hidden_and_system_files_are_skipped_like_the_download_skips_them(folder):
    hidden = add_hidden_files(folder)
    files, ignored = image_folder.list_files(folder)
    listed = [p.relative_to(folder).as_posix() for p in files]
    assert not set(hidden) & set(listed)
    assert ignored == 2  # .DS_Store, Thumbs.db (+ two skipped folders)
    assert len(listed) == 6 + len(REJECTED)
    rows, rejected = predict.predict_folder(tiny_model(trained=False), folder, CLASSES)
    assert len(rows) == 6
    assert_rejected_with_exact_reasons(rejected, folder)  # exactly the four unusable files, no hidden ones


def test_prediction_streams_in_batches_with_the_same_rows(folder, monkeypatch):
    model = tiny_model(trained=False)
    whole_rows, whole_rejected = predict.predict_folder(model, folder, CLASSES)
    monkeypatch.setattr(image_folder, "BATCH", 4)
    batches = list(image_folder.iter_image_batches(folder, 16))
    assert [len(names) for names, _, _ in batches] == [4, 2]
    assert all(len(x) <= 4 for _, x, _ in batches)
    calls = []
    predict_on_batch = model.predict_on_batch
    monkeypatch.setattr(model, "predict_on_batch", lambda x: calls.append(len(x)) or predict_on_batch(x))
    rows, rejected = predict.predict_folder(model, folder, CLASSES)
    assert calls == [4, 2]  # never more than one batch of images at a time
    assert rejected == whole_rejected
    assert [r["image"] for r in rows] == [r["image"] for r in whole_rows]
    for row, whole in zip(rows, whole_rows):
        assert row["predicted_class"] == whole["predicted_class"]
        assert row["confidence"] == pytest.approx(whole["confidence"], abs=1e-6)


def test_run_without_url_is_a_recorded_no_op(make_ctx):
    ctx = make_ctx()
    out = predict.run(ctx)
    assert out["status"] == "skipped"
    assert "unlabelled_url" in out["reason"]
    assert ctx.store.get_json(ctx.report_key("predictions.json"))["status"] == "skipped"
    assert not ctx.store.exists(ctx.report_key("predictions.csv"))


def test_run_uses_this_runs_best_model_without_a_champion(make_ctx, folder, tmp_path):
    ctx = make_ctx(unlabelled_url=str(folder))
    classes = _with_best_model(ctx, tmp_path)
    assert classes == ["class_a", "class_b", "class_c"]  # the class folder names of `folder`
    out = predict.run(ctx)
    assert out == {
        "status": "done",
        "predicted": 6,
        "rejected": 4,
        "record_key": ctx.report_key("predictions.json"),
        "predictions_key": ctx.report_key("predictions.csv"),
    }
    record = ctx.store.get_json(out["record_key"])
    assert record["model"]["source"] == "this run's best model"
    assert record["model"]["model_id"] == "tiny__unbalanced"
    predictions = read_csv(ctx.store.get_text(ctx.report_key("predictions.csv")))
    assert len(predictions) == 6
    assert_top_k_is_the_models(
        predictions, model_proba(tiny_model(), folder, [r["image"] for r in predictions]), classes
    )
    assert sum(r["predicted_class"] == r["image"].split("/")[0] for r in predictions) >= 5
    assert record["class_counts"] == {c: sum(r["predicted_class"] == c for r in predictions) for c in classes}
    assert record["ignored_hidden_files"] == 0
    assert_rejected_with_exact_reasons(read_csv(ctx.store.get_text(ctx.report_key("predictions_rejected.csv"))), folder)


def test_cli_uses_class_names_beside_the_model(folder, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    tiny_model().save(model_dir / "model.keras")
    (model_dir / "meta.json").write_text(json.dumps({"classes": CLASSES}))
    out = tmp_path / "preds.csv"
    assert cli.main(["predict-model", str(model_dir / "model.keras"), str(folder), "--out", str(out)]) == 0
    rows = read_csv(out.read_text())
    assert len(rows) == 6
    assert {r["predicted_class"] for r in rows} <= set(CLASSES)
    assert_top_k_is_the_models(rows, model_proba(tiny_model(), folder, [r["image"] for r in rows]), CLASSES)
    assert_rejected_with_exact_reasons(read_csv((tmp_path / "preds_rejected.csv").read_text()), folder)
    assert image_folder.classes_beside(tmp_path / "nowhere" / "model.keras", 2) == ["class_0", "class_1"]


def _with_best_model(ctx, tmp_path) -> list[str]:
    """This run's one model, tiny__unbalanced, as the ensemble stage records a single evaluated model."""
    classes = write_training_dataset(ctx, classes=3, train=2, val=2, test=2, size=16)["classes"]
    tiny_model().save(tmp_path / "m.keras")
    ctx.store.put_file(ctx.model_key("tiny__unbalanced", "model.keras"), tmp_path / "m.keras")
    write_single_model_ensemble(ctx, "tiny__unbalanced", classes, macro_f1=0.9, accuracy=0.9)
    return classes


@pytest.fixture
def imagenet10_zip(folder, tmp_path):
    """ImageNet10-style archive: README, train_set/<class>/, and test_set/ holding `folder`'s six
    images and four unusable files loose (unlabelled)."""
    import zipfile

    archive = tmp_path / "ImageNet10.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ImageNet10/README.md", "# ImageNet10\n")
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, f"ImageNet10/test_set/{path.name}")
            if path.parent != folder:  # the labelled copies: train_set/<class>/
                zf.write(path, f"ImageNet10/train_set/{path.parent.name}/{path.name}")
    return archive


def test_run_predicts_the_datasets_unlabelled_folder_on_another_worker(
    make_ctx, folder, imagenet10_zip, tmp_path, monkeypatch
):
    from cnn_tasks import download

    ctx = make_ctx(dataset_url=str(imagenet10_zip), min_images_per_class=1)
    download.run(ctx)
    assert ctx.store.get_json(ctx.data_key("ingest.json"))["layout"]["kind"] == "train + unlabelled test"
    classes = _with_best_model(ctx, tmp_path)
    monkeypatch.setenv("CNN_CACHE_DIR", str(tmp_path / "other-worker-cache"))  # nothing cached there
    out = predict.run(ctx)
    assert (out["status"], out["predicted"], out["rejected"]) == ("done", 6, 4)
    record = ctx.store.get_json(out["record_key"])
    assert record["images_from"] == "dataset"
    assert record["url"] == f"{imagenet10_zip}: ImageNet10/test_set/"
    predictions = read_csv(ctx.store.get_text(ctx.report_key("predictions.csv")))
    names = [r["image"] for r in predictions]
    assert names == sorted(f"class_{c}_{i}.png" for c in "abc" for i in range(2))  # relative to test_set/
    flat = {n: folder / n.rsplit("_", 1)[0] / n for n in names}
    assert_top_k_is_the_models(
        predictions, model_proba(tiny_model(), folder, [str(flat[n].relative_to(folder)) for n in names]), classes
    )
    assert_rejected_with_exact_reasons(read_csv(ctx.store.get_text(ctx.report_key("predictions_rejected.csv"))), folder)


def test_unlabelled_url_wins_over_the_datasets_folder_and_says_so(make_ctx, folder, imagenet10_zip, tmp_path):
    from cnn_tasks import download

    ctx = make_ctx(dataset_url=str(imagenet10_zip), min_images_per_class=1, unlabelled_url=str(folder / "class_a"))
    download.run(ctx)
    _with_best_model(ctx, tmp_path)
    out = predict.run(ctx)
    record = ctx.store.get_json(out["record_key"])
    assert out["predicted"] == 2
    assert record["images_from"] == "unlabelled_url"
    assert "instead of the dataset's unlabelled folder(s) ImageNet10/test_set/ (10 files)" in record["note"]


def test_run_without_url_or_unlabelled_folder_is_a_recorded_no_op(make_ctx, tiny_dataset):
    from cnn_tasks import download

    ctx = make_ctx(dataset_url=str(tiny_dataset), min_images_per_class=1)
    download.run(ctx)
    out = predict.run(ctx)
    assert out["status"] == "skipped"
    assert "holds no unlabelled folder" in out["reason"]


# ================================================================== names, pipes and missing folders
def test_latin1_file_names_are_predicted_and_written_readably(make_ctx, folder, tmp_path):
    import os

    raw = os.fsencode(folder / "class_a")
    os.rename(raw + b"/class_a_0.png", raw + b"/caf\xe9.png")  # a Latin-1 name, not UTF-8
    ctx = make_ctx(unlabelled_url=str(folder))
    _with_best_model(ctx, tmp_path)
    out = predict.run(ctx)
    assert (out["status"], out["predicted"], out["rejected"]) == ("done", 6, 4)
    names = [r["image"] for r in read_csv(ctx.store.get_text(ctx.report_key("predictions.csv")))]
    assert "class_a/café.png" in names


def test_a_named_pipe_is_listed_as_rejected_not_dropped_and_never_blocks(folder):
    import os

    os.mkfifo(folder / "pipe.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    rows, rejected = predict.predict_folder(tiny_model(trained=False), folder, CLASSES)
    reasons = {r["image"]: r["reason"] for r in rejected}
    assert len(rows) == 6
    assert len(rejected) == len(REJECTED) + 2
    assert reasons["pipe.png"] == "special_file: a named pipe (FIFO): not a regular file, not read"
    assert reasons["zero.png"] == "special_file: a character device: not a regular file, not read"


def test_a_missing_folder_is_an_error_naming_it_not_zero_predictions(tmp_path):
    with pytest.raises(predict.PredictError, match=f"{tmp_path / 'nowhere'}, does not exist"):
        predict.predict_folder(tiny_model(trained=False), tmp_path / "nowhere", CLASSES)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(predict.PredictError, match="file.png, is not a folder"):
        image_folder.list_files(tmp_path / "file.png")


def test_a_dataset_unlabelled_folder_that_vanished_since_download_is_an_error(make_ctx, imagenet10_zip, tmp_path):
    import shutil
    import zipfile

    from cnn_tasks import download

    with zipfile.ZipFile(imagenet10_zip) as zf:
        zf.extractall(tmp_path / "dataset")
    ctx = make_ctx(dataset_url=str(tmp_path / "dataset"), min_images_per_class=1)
    download.run(ctx)
    _with_best_model(ctx, tmp_path)
    shutil.rmtree(tmp_path / "dataset" / "ImageNet10" / "test_set")
    with pytest.raises(predict.PredictError) as info:
        predict.run(ctx)
    assert (
        "the dataset's unlabelled folder ImageNet10/test_set/ (10 files when download ran) is missing from "
        f"{tmp_path / 'dataset'} now" in str(info.value)
    )
    assert not ctx.store.exists(ctx.report_key("predictions.csv"))
