"""Training: single-batch check, outputs of a run, resume after a kill, NaN guard, comparison."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from cnn_tasks import models, plots, runtime, train, training_callbacks
from cnn_tasks.errors import PipelineError
from cnn_tasks.experiments import DEFAULT_EXPERIMENTS, ConvBlock, ExperimentSpec
from tests.fixtures_training import write_training_dataset

SMALL = ExperimentSpec(
    name="small",
    description="4 small conv layers for fast tests",
    conv=(
        ConvBlock(filters=8),
        ConvBlock(filters=8, pool="max"),
        ConvBlock(filters=16),
        ConvBlock(filters=16, pool="max"),
    ),
    dropout=0.1,
    dense_units=16,
    batch_size=8,
    learning_rate=3e-3,
)
WEAK = ExperimentSpec(
    name="weak",
    description="1 filter per layer: too weak on purpose",
    conv=tuple(ConvBlock(filters=1) for _ in range(4)),
    dense_units=1,
    batch_norm=False,
    dropout=0.0,
    l2=0.0,
    batch_size=8,
)


@pytest.fixture
def tiny_ctx(make_ctx):
    """3 classes, 12+4+4 images each, 16 px; small experiments; 4 epochs."""

    def build(**overrides):
        values = {
            "experiments": [SMALL, WEAK, SMALL.model_copy(update={"name": "cosine", "lr_schedule": "cosine"})],
            "epochs": 4,
            "single_batch_steps": 10,
            "augment": False,
            **overrides,
        }
        ctx = make_ctx(**values)
        write_training_dataset(ctx, classes=3, train=12, val=4, test=4, size=16, rebalance="class_weight")
        return ctx

    return build


def test_single_batch_check_passes_for_the_default_experiments(make_ctx):
    ctx = make_ctx(image_size=32, single_batch_steps=60)
    write_training_dataset(ctx, classes=3, train=12, val=2, test=2, size=32)
    for spec in DEFAULT_EXPERIMENTS:
        result = train.single_batch_check(ctx, spec.name)
        assert result["passed"]
        assert result["accuracy"] == 1.0
        assert result["loss"] <= train.LOSS_TOLERANCE
        saved = ctx.store.get_json(ctx.check_key(spec.name, "single_batch.json"))
        assert saved["passed"]
        assert len(saved["losses"]) == result["steps"]
        assert ctx.store.exists(saved["figures"][0]["key"])


def test_single_batch_check_fails_for_a_too_weak_model_naming_it(tiny_ctx):
    ctx = tiny_ctx()
    with pytest.raises(train.SingleBatchCheckError, match="experiment 'weak'"):
        train.single_batch_check(ctx, "weak")
    saved = ctx.store.get_json(ctx.check_key("weak", "single_batch.json"))
    assert saved["passed"] is False
    assert saved["steps"] == 10
    assert ctx.store.exists(ctx.check_key("weak", "single_batch.png"))


def test_training_writes_model_history_curves_meta_and_tensorboard(tiny_ctx, monkeypatch):
    monkeypatch.setenv("CNN_GIT_COMMIT", "abc123")
    ctx = tiny_ctx()
    result = train.run(ctx, "small", "balanced")
    mid = "small__balanced"
    assert result["model_id"] == mid
    assert result["epochs_run"] == 4
    assert result["resumed_from_epoch"] == 0
    assert result["stopped_by"] == "epochs"
    meta = ctx.store.get_json(ctx.model_key(mid, "meta.json"))
    for field in (
        "classes",
        "image_size",
        "experiment",
        "variant",
        "params",
        "best_epoch",
        "epochs_run",
        "best_val_accuracy",
        "best_val_loss",
        "wall_time_s",
        "images_per_s",
        "figures",
        "dataset_sha256",
        "config",
        "git_commit",
    ):
        assert field in meta, field
    import tensorflow as tf

    assert meta["versions"] == runtime.package_versions()  # the provenance the report shows too
    assert {"tensorflow", "keras", "numpy", "python"} <= set(meta["versions"])
    assert (meta["versions"]["tensorflow"], meta["versions"]["keras"], meta["versions"]["numpy"]) == (
        tf.__version__,
        keras.__version__,
        np.__version__,
    )  # tensorflow-cpu counts as tensorflow
    assert meta["git_commit"] == runtime.git_commit()
    assert meta["class_weight"]
    assert meta["variant"] == "balanced"
    assert meta["git_commit"]
    history = ctx.store.get_json(ctx.model_key(mid, "history.json"))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert "val_accuracy" in history[0]
    assert ctx.store.get_text(ctx.model_key(mid, "history.csv")).splitlines()[0].count(",") >= 5
    assert meta["figures"][0]["key"] == ctx.model_key(mid, "curves.png")
    assert ctx.store.exists(ctx.model_key(mid, "curves.png"))
    assert tensorboard_scalars(ctx, mid, "train")["epoch_loss"] == [0, 1, 2, 3]
    validation = tensorboard_scalars(ctx, mid, "validation")
    assert validation["epoch_loss"] == validation["epoch_accuracy"] == [0, 1, 2, 3]
    model = models.load_model(ctx.cached(ctx.model_key(mid, "model.keras")))
    assert model.layers[0].name == "standardize"
    assert model.output_shape == (None, 3)
    assert model.count_params() == meta["params"]
    comparison = plots.compare_runs(ctx, [mid, "missing__unbalanced"])
    assert comparison["key"] == ctx.key("models", "comparison.png")
    assert "missing__unbalanced" in comparison["caption"]


def tensorboard_scalars(ctx, mid: str, folder: str) -> dict[str, list[int]]:
    """{tag: [steps]} of the TensorBoard event files the store holds for `mid` under tensorboard/<folder>/."""
    import tensorflow as tf

    prefix = ctx.model_key(mid, "tensorboard", folder) + "/"
    keys = [k for k in ctx.store.list(prefix) if "/events.out.tfevents." in k]
    assert keys, f"no event files under {prefix}: {ctx.store.list(ctx.model_key(mid, 'tensorboard'))}"
    steps: dict[str, list[int]] = {}
    for key in keys:
        for event in tf.compat.v1.train.summary_iterator(str(ctx.cached(key))):
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    assert sum(len(ctx.store.get_bytes(k)) for k in keys) < 64 * 1024  # scalars only: small
    return steps


class Interrupt(keras.callbacks.Callback):
    """Simulates the worker being killed when epoch `at` (0-based) starts."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt(f"killed at epoch {epoch}")


class EpochLog(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs, self.learning_rates = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)
        self.learning_rates.append(training_callbacks.current_lr(self.model))


def test_killed_training_resumes_from_its_last_completed_epoch(tiny_ctx):
    ctx = tiny_ctx()
    with pytest.raises(KeyboardInterrupt):
        train.run(ctx, "cosine", "unbalanced", extra_callbacks=[Interrupt(at=2)])
    backup = ctx.store.get_json(ctx.model_key("cosine__unbalanced", "backup", "training_metadata.json"))
    assert backup["epoch"] == 2
    seen = EpochLog()
    result = train.run(ctx, "cosine", "unbalanced", extra_callbacks=[seen])
    assert seen.epochs == [2, 3]  # continued at the third epoch, did not start over
    assert result["resumed_from_epoch"] == 2
    assert result["epochs_run"] == 4
    history = ctx.store.get_json(ctx.model_key("cosine__unbalanced", "history.json"))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    lrs = [h["learning_rate"] for h in history]
    assert lrs == sorted(lrs, reverse=True)
    assert lrs[-1] < lrs[0]  # cosine schedule state survived
    assert lrs[2:] == pytest.approx(seen.learning_rates)  # each epoch records the rate it trained with


class PoisonWeights(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            kernel = self.model.get_layer("logits").kernel
            kernel.assign(np.full(kernel.shape, np.nan, np.float32))


def test_nan_loss_raises_naming_experiment_and_epoch(tiny_ctx):
    ctx = tiny_ctx()
    with pytest.raises(training_callbacks.TrainingDivergedError, match=r"experiment 'small'.*at epoch 2"):
        train.run(ctx, "small", "unbalanced", extra_callbacks=[PoisonWeights()])
    backup = json.loads(ctx.store.get_text(ctx.model_key("small__unbalanced", "backup", "training_metadata.json")))
    assert backup["epoch"] == 1  # the diverged epoch was never backed up


def test_a_cleared_finished_training_trains_again_from_scratch_and_says_so(tiny_ctx, caplog):
    """Clearing a finished `train` task in the UI runs train.run again on the same run: it must
    retrain (not silently reuse finished.json) and replace the model."""
    ctx = tiny_ctx(epochs=2)
    mid = "small__unbalanced"
    first = train.run(ctx, "small", "unbalanced")
    first_meta = ctx.store.get_json(ctx.model_key(mid, "meta.json"))
    seen = EpochLog()
    with caplog.at_level("WARNING", logger="cnn_tasks.train"):
        again = train.run(ctx, "small", "unbalanced", extra_callbacks=[seen])
    assert seen.epochs == [0, 1]  # every epoch trained again
    assert again["resumed_from_epoch"] == 0
    assert again["epochs_run"] == 2
    assert first["epochs_run"] == 2
    assert "trains again from scratch and replaces that model" in caplog.text
    assert mid in caplog.text
    meta = ctx.store.get_json(ctx.model_key(mid, "meta.json"))
    assert meta["wall_time_s"] != first_meta["wall_time_s"]  # the replaced model's record
    assert [h["epoch"] for h in ctx.store.get_json(ctx.model_key(mid, "history.json"))] == [1, 2]
    assert any("/tensorboard/retrain-" in k for k in ctx.store.list(ctx.model_key(mid, "tensorboard")))


def test_a_retrain_cut_off_resumes_the_retrain_not_the_replaced_model(tiny_ctx):
    ctx = tiny_ctx(epochs=3)
    mid = "small__unbalanced"
    train.run(ctx, "small", "unbalanced")
    with pytest.raises(KeyboardInterrupt):  # cleared, then the retrain's worker dies at its 2nd epoch
        train.run(ctx, "small", "unbalanced", extra_callbacks=[Interrupt(at=1)])
    seen = EpochLog()
    result = train.run(ctx, "small", "unbalanced", extra_callbacks=[seen])
    assert seen.epochs == [1, 2]
    assert result["resumed_from_epoch"] == 1  # the retry resumes the retrain
    assert [h["epoch"] for h in ctx.store.get_json(ctx.model_key(mid, "history.json"))] == [1, 2, 3]


def test_a_retrain_cut_off_before_its_first_epoch_does_not_resume_the_replaced_model(tiny_ctx):
    ctx = tiny_ctx(epochs=2)
    train.run(ctx, "small", "unbalanced")
    with pytest.raises(KeyboardInterrupt):
        train.run(ctx, "small", "unbalanced", extra_callbacks=[Interrupt(at=0)])
    seen = EpochLog()
    result = train.run(ctx, "small", "unbalanced", extra_callbacks=[seen])
    assert seen.epochs == [0, 1]
    assert result["resumed_from_epoch"] == 0


class FailOnSave(Exception):
    pass


def test_a_try_that_failed_after_training_only_saves_the_outputs(tiny_ctx, monkeypatch):
    ctx = tiny_ctx(epochs=2)
    real_plot = train._plot_curves

    def broken(*args, **kwargs):
        raise FailOnSave("store hiccup while saving the curves")

    monkeypatch.setattr(train, "_plot_curves", broken)
    with pytest.raises(FailOnSave):
        train.run(ctx, "small", "unbalanced")
    monkeypatch.setattr(train, "_plot_curves", real_plot)
    seen = EpochLog()
    result = train.run(ctx, "small", "unbalanced", extra_callbacks=[seen])
    assert seen.epochs == []
    assert result["epochs_run"] == 2  # nothing retrained: the finished model is saved


def test_the_time_budget_ends_training_at_an_epoch_boundary_and_keeps_the_best_epoch(tiny_ctx, caplog):
    ctx = tiny_ctx(time_budget_minutes=0.001)  # 60 ms: the first epoch alone takes longer
    mid = "small__unbalanced"
    with caplog.at_level("WARNING", logger="cnn_tasks.train"):
        result = train.run(ctx, "small", "unbalanced")
    assert result["epochs_run"] == 1
    assert result["stopped_by"] == "time_budget"
    assert f"{mid}: stopped by the time budget at epoch 1" in caplog.text
    meta = ctx.store.get_json(ctx.model_key(mid, "meta.json"))
    assert meta["stopped_by"] == "time_budget"
    assert meta["best_epoch"] == 1
    finished = ctx.store.get_json(ctx.model_key(mid, "checkpoint", train.FINISHED))
    assert finished == {"finished": True, "epochs": 1, "stopped_by": "time_budget"}
    assert ctx.store.exists(ctx.model_key(mid, "model.keras"))


def test_a_resumed_training_spends_what_is_left_of_the_budget_not_a_new_one(tiny_ctx):
    from cnn_tasks.context import RunContext

    ctx = tiny_ctx()
    with pytest.raises(KeyboardInterrupt):  # the worker dies after two epochs
        train.run(ctx, "small", "unbalanced", extra_callbacks=[Interrupt(at=2)])
    budgeted = RunContext.create(ctx.config.model_copy(update={"time_budget_minutes": 0.001}), ctx.run_id)
    seen = EpochLog()
    result = train.run(budgeted, "small", "unbalanced", extra_callbacks=[seen])
    assert seen.epochs == []  # the two saved epochs already used the budget
    assert result["epochs_run"] == 2
    assert result["stopped_by"] == "time_budget"


class FakeModel:
    stop_training = False


@pytest.mark.parametrize(
    "minutes, seconds, stops",
    [
        (None, [600, 600, 600], False),  # no budget
        (0.5, [5, 5, 12], True),  # 22 s used + 12 s for the slowest recent epoch = 34 s > 30 s
        (0.6, [5, 5, 12], False),  # 34 s <= 36 s
        (0.6, [30, 1, 1, 1], False),  # only the last three epochs estimate the next one: 33 + 1 <= 36
    ],
)
def test_the_budget_stops_when_the_next_epoch_would_pass_it(minutes, seconds, stops):
    history = [{"seconds": s} for s in seconds]
    budget = training_callbacks.TimeBudget("m", minutes, history)
    budget.set_model(FakeModel())
    budget.on_epoch_end(len(history) - 1)
    assert budget.model.stop_training is stops
    assert budget.stopped_epoch == (len(history) if stops else None)


def test_the_lr_range_test_picks_a_tenth_of_the_rate_with_the_lowest_loss():
    assert train.suggest_learning_rate([1e-4, 1e-3, 1e-2, 1e-1], [2.0, 1.5, 1.0, 3.0]) == pytest.approx(1e-3)
    assert train.suggest_learning_rate([1e-4, 1e-3], [1.0, 2.0]) == 1e-4  # never below the sweep's start
    with pytest.raises(PipelineError, match="not finite at the first step"):
        train.suggest_learning_rate([], [])


def test_with_the_lr_range_test_training_uses_the_rate_it_found(tiny_ctx):
    ctx = tiny_ctx(lr_range_test=True, epochs=1, single_batch_steps=60)
    check = train.single_batch_check(ctx, "small")
    sweep = ctx.store.get_json(ctx.check_key("small", "lr_range.json"))
    assert check["learning_rate"] == sweep["learning_rate"]
    assert sweep["spec_learning_rate"] == 3e-3
    rates = sweep["learning_rates"]
    assert 10 <= sweep["steps"] == len(rates) <= train.LR_RANGE_STEPS
    assert rates == sorted(rates)
    assert rates[0] == pytest.approx(train.LR_RANGE[0])
    best = rates[int(np.argmin(sweep["smoothed_losses"]))]
    assert sweep["learning_rate"] == pytest.approx(max(rates[0], best / 10))
    assert ctx.store.exists(sweep["figures"][0]["key"])

    train.run(ctx, "small", "unbalanced")
    meta = ctx.store.get_json(ctx.model_key("small__unbalanced", "meta.json"))
    assert meta["learning_rate_from"] == "lr_range_test"
    assert meta["spec"]["learning_rate"] == pytest.approx(sweep["learning_rate"])
    history = ctx.store.get_json(ctx.model_key("small__unbalanced", "history.json"))
    assert history[0]["learning_rate"] == pytest.approx(sweep["learning_rate"], rel=1e-5)


def test_training_with_the_lr_range_test_on_but_no_sweep_fails_naming_the_file(tiny_ctx):
    ctx = tiny_ctx(lr_range_test=True)
    with pytest.raises(PipelineError, match=r"checks/small/lr_range\.json is missing"):
        train.run(ctx, "small", "unbalanced")


@pytest.mark.parametrize("schedule", ["cosine", "one_cycle"])
def test_annealing_schedules_end_at_a_hundredth_of_the_rate_and_one_cycle_warms_up_first(schedule):
    optimizer = train.make_optimizer(SMALL.model_copy(update={"lr_schedule": schedule, "learning_rate": 0.01}), 100)
    schedule_fn = optimizer._learning_rate  # the schedule object (optimizer.learning_rate is its current value)
    rates = np.array([float(schedule_fn(step)) for step in range(0, 101, 5)])
    assert rates[-1] == pytest.approx(1e-4, rel=1e-3)
    if schedule == "cosine":
        assert rates[0] == pytest.approx(0.01)
        assert np.all(np.diff(rates) <= 0)
    else:  # 10 warm-up steps from a tenth of the rate to the rate, then down
        assert rates[0] == pytest.approx(1e-3)
        assert rates[2] == pytest.approx(0.01)
        assert np.all(np.diff(rates[:3]) > 0)
        assert np.all(np.diff(rates[2:]) <= 0)
