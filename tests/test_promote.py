"""Promotion: accepts a better model, refuses a worse one or a failed guard, keeps every old champion.

The champion is re-evaluated for real: saved models, loaded by models.load_model, on each run's own
test shards (data/dataset.json written per the contract by tests/fixtures_training.py)."""

from __future__ import annotations

import numpy as np
import pytest

from cnn_tasks import champion, data, evaluate, model_card, models, promote, serving
from cnn_tasks.champion import history_key, pick_candidate
from tests.fixtures_training import write_model_meta, write_training_dataset
from tests.helpers import tiny_model, write_single_model_ensemble

CHAMPION = "champions/eurosat/champion.json"  # the runs' model name: derived from the default dataset


@pytest.mark.parametrize(
    "value, accuracy, champion, comparable, expected",
    [
        (0.90, 0.90, 0.80, True, True),  # better
        (0.80, 0.90, 0.80, True, False),  # equal is not better
        (0.70, 0.90, 0.80, True, False),  # worse
        (0.99, 0.40, 0.10, True, False),  # guard: accuracy below the minimum
        (0.90, 0.90, None, False, False),  # champion incomparable
    ],
)
def test_decide(value, accuracy, champion, comparable, expected):
    promoted, reason = promote.decide(value, accuracy, champion, comparable, True, margin=0.0, min_accuracy=0.5)
    assert promoted is expected
    assert reason
    assert promote.decide(0.81, 0.9, 0.80, True, True, margin=0.05, min_accuracy=0.5)[0] is False
    assert promote.decide(0.6, 0.6, None, False, False, margin=0.0, min_accuracy=0.5)[0] is True


def test_ensemble_best_deploys_its_best_member():
    rows = [
        {"name": "a", "kind": "model", "members": ["a"], "macro_f1": 0.7},
        {"name": "b", "kind": "model", "members": ["b"], "macro_f1": 0.8},
        {"name": "soft[all]", "kind": "ensemble", "members": ["a", "b"], "macro_f1": 0.9},
    ]
    best, deployable = pick_candidate(rows, "macro_f1")
    assert best["name"] == "soft[all]"
    assert deployable["name"] == "b"


@pytest.fixture
def pipeline(make_ctx, tmp_path):
    """`new_run(run_id, model, macro_f1, accuracy)`: a run in one shared store with its own real test
    split (3 classes x 4 images, 16 px) whose deployable model is `model` with the given ensemble-stage
    scores. Models: "good" (the trained tiny model: every test image right) and "wrong" (the same
    network with its outputs rotated by one class: every test image wrong)."""
    paths = {"good": tmp_path / "good.keras", "wrong": tmp_path / "wrong.keras"}
    tiny_model().save(paths["good"])
    wrong = models.load_model(paths["good"])
    kernel, bias = wrong.layers[-1].get_weights()
    wrong.layers[-1].set_weights([np.roll(kernel, 1, axis=1), np.roll(bias, 1)])
    wrong.save(paths["wrong"])

    def new_run(run_id: str, model: str, macro_f1: float, accuracy: float):
        """A run whose one model, tiny__balanced, is recorded as the ensemble stage records a single model."""
        ctx = make_ctx(run_id, promotion_min_accuracy=0.5)
        classes = write_training_dataset(ctx, classes=3, train=2, val=2, test=4, size=16)["classes"]
        ctx.store.put_file(ctx.model_key("tiny__balanced", "model.keras"), paths[model])
        write_model_meta(ctx, "tiny__balanced", models.load_model(paths[model]))
        evaluate.run(ctx, "tiny__balanced")  # metrics.json, which the model card reads
        ctx.store.put_json(ctx.data_key("ingest.json"), {"source": "generated", "layout": {"kind": "flat"}})
        ctx.store.put_json(ctx.data_key("analysis.json"), {"split_ratios": [0.7, 0.2, 0.1], "seed": 42})
        write_single_model_ensemble(ctx, "tiny__balanced", classes, macro_f1, accuracy)
        return ctx

    return new_run


def test_promotion_history(pipeline):
    new_run = pipeline
    first = new_run("run1", "wrong", macro_f1=0.6, accuracy=0.6)
    out = promote.run(first)
    assert out["promoted"]
    assert out["decision"] == "promoted"
    store = first.store
    first_champion = store.get_json(CHAMPION)
    assert first_champion["run_id"] == "run1"
    assert store.exists("champions/eurosat/models/run1/model.keras")
    info = data.load_dataset_info(first)
    assert first_champion["classes"] == info["classes"]
    assert first_champion["image_size"] == 16
    assert first_champion["image_fit"] == "squash"
    assert first_champion["dataset_sha256"] == info["dataset_sha256"]

    # would beat the champion (which gets every test image wrong) but fails the accuracy guard
    guarded = new_run("run2", "good", macro_f1=0.95, accuracy=0.4)
    out = promote.run(guarded)
    assert not out["promoted"]
    assert "guard failed" in out["reason"]
    assert out["champion_value"] == 0.0
    record = guarded.store.get_json(guarded.key("promotion.json"))
    assert record["guards"][0]["ok"] is False
    assert store.get_json(CHAMPION)["run_id"] == "run1"
    assert len(store.list("champions/eurosat/history/")) == 1

    # the champion scores 0 on this run's test split: a better model wins
    second = new_run("run3", "good", macro_f1=0.9, accuracy=0.9)
    out = promote.run(second)
    assert out["promoted"]
    assert out["champion_value"] == 0.0
    assert store.get_json(CHAMPION)["run_id"] == "run3"
    assert promote.run(second) == out  # a retried task keeps its decision, it does not compare with itself
    store.path(second.key("promotion.json")).unlink()  # as if interrupted after installing the champion
    recovered = promote.run(second)
    assert recovered["promoted"]
    assert recovered["decision"] == "promoted"
    assert store.get_json(CHAMPION)["run_id"] == "run3"
    assert store.get_json(history_key(first_champion)) == first_champion  # old one kept
    assert store.exists("champions/eurosat/models/run1/model.keras")
    assert store.exists("champions/eurosat/models/run3/model.keras")
    assert len(store.list("champions/eurosat/history/")) == 2

    # the champion is perfect on the test split: a worse model is refused
    third = new_run("run4", "wrong", macro_f1=0.7, accuracy=0.7)
    out = promote.run(third)
    assert not out["promoted"]
    assert out["champion_value"] == pytest.approx(1.0)
    record = store.get_json(third.key("promotion.json"))
    assert record["decision"] == "kept current champion"
    assert record["previous_champion"]["run_id"] == "run3"
    champion = record["champion_on_this_test"]
    assert champion["comparable"]
    assert champion["metrics"]["count"] == 12
    assert champion["metrics"]["accuracy"] == 1.0
    assert store.get_json(CHAMPION)["run_id"] == "run3"
    assert len(store.list("champions/eurosat/history/")) == 2


def test_a_promoted_champion_ships_a_saved_model_a_tflite_file_and_a_model_card(pipeline, tmp_path):
    """Serving needs no project code: the SavedModel's signatures take encoded images (or uint8 pixels
    of any size) and give the same probabilities as model.keras, with class names."""
    import io

    import tensorflow as tf
    from PIL import Image

    ctx = pipeline("run1", "good", macro_f1=0.9, accuracy=0.9)
    assert promote.run(ctx)["promoted"]
    store, champion = ctx.store, ctx.store.get_json(CHAMPION)
    model = models.load_model(store.get_file(champion["model_key"], tmp_path / "model.keras"))
    x, y, _ = data.load_split_arrays(ctx, "test")
    expected = model.predict(x, verbose=0)
    for key in store.list(champion["saved_model_key"] + "/"):
        store.get_file(key, tmp_path / "sm" / key[len(champion["saved_model_key"]) + 1 :])
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    encoded = []
    for image in x.astype(np.uint8):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        encoded.append(buffer.getvalue())
    from_bytes = loaded.signatures["serving_default"](images=tf.constant(encoded))
    np.testing.assert_allclose(from_bytes["probabilities"].numpy(), expected, atol=1e-5)
    classes = champion["classes"]
    assert [label.decode() for label in from_bytes["label"].numpy()] == [classes[c] for c in expected.argmax(1)]
    assert [name.decode() for name in from_bytes["class_names"].numpy()[0]] == classes
    from_pixels = loaded.signatures["serving_pixels"](pixels=tf.constant(x.astype(np.uint8)))
    np.testing.assert_allclose(from_pixels["probabilities"].numpy(), expected, atol=1e-5)
    larger = np.repeat(np.repeat(x.astype(np.uint8), 3, axis=1), 2, axis=2)  # 48 x 32: squashed back to 16
    resized = model.predict(data.fit_square(tf.constant(larger, tf.float32), 16, "squash"), verbose=0)
    np.testing.assert_allclose(loaded.signatures["serving_pixels"](pixels=larger)["probabilities"], resized, atol=1e-5)

    interpreter = tf.lite.Interpreter(model_content=store.get_bytes(champion["tflite_key"]))
    (lite,) = interpreter.get_signature_runner("serve")(pixels=x.astype(np.float32)).values()
    np.testing.assert_allclose(lite, expected, atol=1e-2)  # float16 weights

    card = store.get_json(champion["model_card_json_key"])
    assert card["metrics"]["accuracy"] == 1.0
    assert card["metrics"]["test_images"] == len(y)
    low, high = card["metrics"]["accuracy_ci95"]
    assert 0.7 < low < 1.0 == high  # 12 of 12 right
    assert [row["class"] for row in card["metrics"]["per_class"]] == classes
    assert card["weaknesses"] == []
    assert card["model"]["files"]["saved_model_key"] == champion["saved_model_key"]
    assert card["provenance"]["versions"]["tensorflow"]
    assert "## Intended use and limits" in store.get_text(champion["model_card_md_key"])
    assert store.get_json(ctx.key("model_card.json")) == card  # kept in the run too, for its report


def test_a_failed_export_installs_no_champion_and_a_retry_promotes(pipeline, monkeypatch):
    """The exports are written before champion.json names them: a failure leaves the store as it was."""
    ctx = pipeline("run1", "good", macro_f1=0.9, accuracy=0.9)
    real = serving.export_tflite
    monkeypatch.setattr(serving, "export_tflite", lambda *a: (_ for _ in ()).throw(RuntimeError("converter crashed")))
    with pytest.raises(RuntimeError, match="converter crashed"):
        promote.run(ctx)
    assert not ctx.store.exists(CHAMPION)
    assert not ctx.store.list("champions/eurosat/history/")
    assert not ctx.store.exists(ctx.key("promotion.json"))  # the decision is not recorded either
    monkeypatch.setattr(serving, "export_tflite", real)
    assert promote.run(ctx)["promoted"]  # the task's retry
    assert ctx.store.exists(ctx.store.get_json(CHAMPION)["tflite_key"])


def test_export_tflite_off_ships_no_tflite_file(pipeline, make_ctx):
    ctx = pipeline("run1", "good", macro_f1=0.9, accuracy=0.9)
    ctx = make_ctx("run1", promotion_min_accuracy=0.5, export_tflite=False)
    assert promote.run(ctx)["promoted"]
    assert "tflite_key" not in ctx.store.get_json(CHAMPION)
    assert not ctx.store.list("champions/eurosat/models/run1/model.tflite")


def test_the_model_card_names_the_most_confused_classes_with_intervals():
    confusion = [[8, 2, 0], [5, 5, 0], [0, 1, 9]]
    rows = model_card.per_class(confusion, ["a", "b", "c"])
    assert rows[1]["recall"] == 0.5
    low, high = rows[1]["recall_ci95"]
    assert low < 0.5 < high
    assert rows[0]["precision"] == pytest.approx(8 / 13)
    pairs = model_card.most_confused(confusion, ["a", "b", "c"])
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("b", "a", 5), ("a", "b", 2), ("c", "b", 1)]
    assert pairs[0]["share_of_true_class"] == 0.5
    assert model_card.wilson(0, 0) is None


def old_champion(classes: list[str]) -> dict:
    return {
        "model_name": "eurosat",
        "run_id": "old",
        "model_id": "m",
        "model_key": "champions/eurosat/models/old/model.keras",
        "metric": "macro_f1",
        "value": 0.5,
        "classes": classes,
        "promoted_at": "20240101T000000Z",
    }


def test_a_champion_with_other_classes_is_kept_and_the_reason_says_how_to_go_on(pipeline):
    ctx = pipeline("run5", "good", macro_f1=0.9, accuracy=0.9)
    old = old_champion(["cat", "dog"])
    ctx.store.put_json(CHAMPION, old)
    out = promote.run(ctx)
    record = ctx.store.get_json(ctx.key("promotion.json"))
    assert not out["promoted"]
    assert record["champion_on_this_test"]["comparable"] is False
    assert record["reason"] == (
        "not promoted: model 'eurosat' has a champion (run old) trained on other classes (the champion has 2 "
        "classes, this run 3: added class_a, class_b, class_c; removed cat, dog). To keep both, run with another "
        "model_name (e.g. model_name=eurosat-3-classes); to let this run's classes replace the champion, set "
        "new_lineage_on_class_change=true"
    )
    assert ctx.store.get_json(CHAMPION) == old
    np.testing.assert_equal(out["champion_value"], None)


def test_new_lineage_on_class_change_lets_new_classes_replace_the_champion(pipeline, make_ctx):
    pipeline("run5", "good", macro_f1=0.9, accuracy=0.9)
    ctx = make_ctx("run5", promotion_min_accuracy=0.5, new_lineage_on_class_change=True, export_tflite=False)
    old = old_champion(["class_a", "class_b"])
    ctx.store.put_json(CHAMPION, old)
    out = promote.run(ctx)
    assert out["promoted"]
    assert "added class_c" in out["reason"]
    assert "starts a new lineage of 'eurosat'" in out["reason"]
    assert ctx.store.get_json(CHAMPION)["classes"] == ["class_a", "class_b", "class_c"]
    assert ctx.store.get_json(history_key(old)) == old  # the old lineage stays in the history


def test_model_names_keep_separate_champions(pipeline, make_ctx):
    pipeline("run6", "good", macro_f1=0.9, accuracy=0.9)
    ctx = make_ctx("run6", promotion_min_accuracy=0.5, model_name="crops", export_tflite=False)
    other = old_champion(["cat", "dog"])
    ctx.store.put_json(CHAMPION, other)  # eurosat's champion solves another task: irrelevant here
    out = promote.run(ctx)
    assert out["promoted"]
    assert out["model_name"] == "crops"
    assert out["reason"].startswith("no current champion")
    assert ctx.store.get_json("champions/crops/champion.json")["run_id"] == "run6"
    assert ctx.store.get_json(CHAMPION) == other
    assert set(champion.champions(ctx.store)) == {"crops", "eurosat"}
    assert [c["run_id"] for c in champion.history(ctx.store, "crops")] == ["run6"]


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://host/x/EuroSAT.zip", "eurosat"),
        ("s3://bucket/data/flowers/", "flowers"),
        ("/home/me/data/My Photos", "my-photos"),
        ("/data/plants.tar.gz", "plants"),
        ("C:\\data\\Birds_2024.tgz", "birds_2024"),
        ("/", "dataset"),
    ],
)
def test_the_model_name_is_derived_from_the_datasets_file_or_folder(url, name):
    assert champion.derive_model_name(url) == name


def write_split_csv(ctx, trained_on: list[str]) -> None:
    """data/split.csv saying the run trained on `trained_on` (and tested on the rest of its test keys)."""
    test_keys = [str(k) for k in data.load_split_arrays(ctx, "test")[2]]
    rows = [f"{k},class_a,0,{'train' if k in trained_on else 'test'}," for k in test_keys]
    ctx.store.put_text(ctx.data_key("split.csv"), "key,class,label,split,given_split\n" + "\n".join(rows) + "\n")


@pytest.mark.parametrize(("seen", "comparable"), [(10, False), (6, True)])
def test_champion_and_candidate_are_compared_only_on_images_neither_has_seen(pipeline, make_ctx, seen, comparable):
    first = pipeline("run1", "wrong", macro_f1=0.6, accuracy=0.6)
    test_keys = [str(k) for k in data.load_split_arrays(first, "test")[2]]  # the same images in every run
    write_split_csv(first, trained_on=test_keys[:seen])
    assert promote.run(first)["promoted"]
    assert first.store.exists(first.store.get_json(CHAMPION)["split_key"])
    pipeline("run2", "good", macro_f1=0.9, accuracy=0.9)
    second = make_ctx("run2", promotion_min_accuracy=0.5, min_unseen_test_images=3, export_tflite=False)
    out = promote.run(second)
    fair = second.store.get_json(second.key("promotion.json"))["champion_on_this_test"]
    assert fair["unseen"] == 12 - seen
    assert fair["test_images"] == 12
    assert fair["comparable"] is comparable
    assert out["promoted"] is comparable
    if comparable:
        assert fair["metrics"]["count"] == 6
        assert fair["candidate_metrics"]["count"] == 6
        assert "both scored on the 6 of 12 test images that neither trained or validated on" in fair["why"]
    else:
        assert fair["why"] == (
            "only 2 of this run's 12 test images are unseen by the champion (it trained or validated on the others), "
            "fewer than min_unseen_test_images=3: no fair comparison"
        )
        assert out["reason"] == f"not promoted: the champion (run run1) cannot be compared: {fair['why']}"
