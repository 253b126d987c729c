"""Training: the single-batch overfit check, full resumable training, curves, run comparison.

Resuming: everything a retried task needs lives in the store under models/<model_id>/
  backup/       keras BackupAndRestore state (weights + optimizer + epoch), synced every epoch
  checkpoint/   best.weights.h5 (lowest val loss so far) and history.json (all epochs so far)
  tensorboard/  TensorBoard event files
A task that starts restores these into a fresh local folder, so any worker continues from the
last completed epoch; early stopping and the best checkpoint are seeded from the saved history.
checkpoint/finished.json says whether that training finished. A task that finds a finished
training whose outputs were saved (meta.json) was cleared or re-run on purpose: it trains again
from scratch and replaces the model (and says so in its log); a try whose earlier try finished
training but failed before saving the outputs only saves them.
The callbacks of full training (NaN guard, time budget, resumable early stopping) are
`cnn_tasks.training_callbacks`.

Imports keras at module level: import this module inside Airflow tasks, not in the DAG file.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from cnn_tasks import data, models, plots, runtime
from cnn_tasks.context import RunContext
from cnn_tasks.context import model_id as make_model_id
from cnn_tasks.contracts import ModelMeta
from cnn_tasks.errors import PipelineError
from cnn_tasks.progress import TERMINAL
from cnn_tasks.training_callbacks import (
    EpochLearningRate,
    NanGuard,
    ResumableEarlyStopping,
    TimeBudget,
    stop_reason,
)

log = logging.getLogger(__name__)

LOSS_TOLERANCE = 0.05  # single-batch check: "loss near zero"
SINGLE_BATCH_LR = 3e-3  # fast, still stable with batch norm
SINGLE_BATCH_POOL = 1024  # the check's batch is drawn (seeded) from the first N training images
STATE_DIRS = ("checkpoint", "tensorboard", "backup")  # upload order: backup last, never ahead of history
FINISHED = "finished.json"  # in checkpoint/: {"finished": true, "epochs": n, "stopped_by": why} once training ended
BACKUP_METADATA = "training_metadata.json"  # keras BackupAndRestore's epoch record, in backup/
# Learning-rate range test (config.lr_range_test): the rate grows geometrically over LR_RANGE_STEPS
# training batches; the sweep stops early once the smoothed loss passes LR_RANGE_DIVERGED x its minimum.
LR_RANGE = (1e-5, 1.0)
LR_RANGE_STEPS = 100
LR_RANGE_SMOOTHING = 0.9  # exponential moving average of the batch losses (bias-corrected)
LR_RANGE_DIVERGED = 4.0


class SingleBatchCheckError(PipelineError, RuntimeError):
    """An architecture could not overfit one batch: it is too weak (or broken) to train."""


def _prepare(ctx: RunContext) -> dict:
    """Thread pools, precision and determinism from the config; seeds every RNG."""
    settings = runtime.configure_tensorflow(
        mixed_precision=ctx.config.mixed_precision, deterministic=ctx.config.deterministic
    )
    keras.utils.set_random_seed(ctx.config.seed)
    return settings


def _compile(model, optimizer) -> None:
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def _build(ctx: RunContext, spec, info: dict):
    return models.build_model(spec, len(info["classes"]), int(info["image_size"]), info["mean"], info["std"])


# --------------------------------------------------------------------------- single-batch check
def single_batch_check(ctx: RunContext, experiment: str) -> dict:
    """Train `experiment`'s architecture on one fixed batch until it fits it perfectly.

    Dropout, spatial dropout and L2 are switched off and no augmentation is applied, so only
    the architecture's capacity is tested. Writes checks/<experiment>/single_batch.json/.png;
    raises SingleBatchCheckError naming the experiment when it cannot fit the batch.
    """
    spec = ctx.config.experiment(experiment)
    _prepare(ctx)
    info = data.load_dataset_info(ctx)
    x, y = _one_batch(ctx, spec.batch_size)
    model = _build(ctx, spec.model_copy(update={"dropout": 0.0, "spatial_dropout": 0.0, "l2": 0.0}), info)
    _compile(model, keras.optimizers.Adam(SINGLE_BATCH_LR))
    losses, accuracies = [], []
    for _ in range(ctx.config.single_batch_steps):
        logs = model.train_on_batch(x, y, return_dict=True)
        losses.append(float(logs["loss"]))
        accuracies.append(float(logs["accuracy"]))
        if accuracies[-1] >= 1.0 and losses[-1] <= LOSS_TOLERANCE:
            break
    passed = accuracies[-1] >= 1.0 and losses[-1] <= LOSS_TOLERANCE
    figure = _plot_single_batch(ctx, experiment, losses, accuracies, passed)
    result = {
        "experiment": experiment,
        "passed": passed,
        "steps": len(losses),
        "max_steps": ctx.config.single_batch_steps,
        "batch_size": int(len(y)),
        "classes_in_batch": int(len(np.unique(y))),
        "loss": losses[-1],
        "accuracy": accuracies[-1],
        "loss_tolerance": LOSS_TOLERANCE,
        "losses": losses,
        "accuracies": accuracies,
        "key": ctx.check_key(experiment, "single_batch.json"),
        "figures": [figure],
    }
    ctx.store.put_json(result["key"], result)
    verdict = f"after {len(losses)} steps: accuracy {accuracies[-1]:.3f}, loss {losses[-1]:.4f}"
    if not passed:
        raise SingleBatchCheckError(
            f"single-batch check failed for experiment {experiment!r}: it could not overfit one batch of "
            f"{len(y)} training images ({verdict}; needs accuracy 1.0 and loss <= {LOSS_TOLERANCE} within "
            f"single_batch_steps={ctx.config.single_batch_steps}). The architecture is too weak or broken."
        )
    log.info("single-batch check passed for %s %s", experiment, verdict, extra=TERMINAL)
    summary = {k: v for k, v in result.items() if k not in ("losses", "accuracies")}
    if ctx.config.lr_range_test:
        summary["learning_rate"] = lr_range_test(ctx, experiment)["learning_rate"]
    return summary


def lr_range_test(ctx: RunContext, experiment: str) -> dict:
    """Sweep the learning rate over LR_RANGE on real training batches with a fresh model and the
    spec's optimizer, and pick a tenth of the rate where the smoothed loss was lowest (the usual
    rule: the minimum itself is already at the edge of divergence). Writes checks/<experiment>/
    lr_range.json/.png; training then uses `learning_rate` instead of the spec's."""
    spec = ctx.config.experiment(experiment)
    _prepare(ctx)
    info = data.load_dataset_info(ctx)
    model = _build(ctx, spec, info)
    optimizer = make_optimizer(spec.model_copy(update={"lr_schedule": "none"}), total_steps=1)
    _compile(model, optimizer)
    rates = np.geomspace(*LR_RANGE, LR_RANGE_STEPS)
    batches = data.dataset(ctx, "train", "unbalanced", spec.batch_size, training=True).repeat()
    tried, smoothed, average = [], [], 0.0
    for step, (rate, (x, y)) in enumerate(zip(rates, batches), start=1):
        optimizer.learning_rate = float(rate)
        loss = float(model.train_on_batch(x, y, return_dict=True)["loss"])
        if not math.isfinite(loss):
            break
        average = LR_RANGE_SMOOTHING * average + (1 - LR_RANGE_SMOOTHING) * loss
        tried.append(float(rate))
        smoothed.append(average / (1 - LR_RANGE_SMOOTHING**step))
        if smoothed[-1] > LR_RANGE_DIVERGED * min(smoothed):
            break
    chosen = suggest_learning_rate(tried, smoothed)
    result = {
        "experiment": experiment,
        "learning_rate": chosen,
        "spec_learning_rate": spec.learning_rate,
        "steps": len(tried),
        "batch_size": spec.batch_size,
        "learning_rates": tried,
        "smoothed_losses": smoothed,
        "figures": [_plot_lr_range(ctx, experiment, tried, smoothed, chosen)],
    }
    ctx.store.put_json(ctx.check_key(experiment, "lr_range.json"), result)
    log.info(
        "learning-rate range test for %s: %d steps, training will use %.3g (the spec says %.3g)",
        experiment,
        len(tried),
        chosen,
        spec.learning_rate,
    )
    return result


def suggest_learning_rate(rates: list[float], losses: list[float]) -> float:
    """A tenth of the rate with the lowest smoothed loss, not below the sweep's first rate."""
    if not rates:
        raise PipelineError("learning-rate range test: the loss was not finite at the first step; check the data")
    return max(rates[0], rates[int(np.argmin(losses))] / 10)


def tuned_learning_rate(ctx: RunContext, spec) -> float:
    """The learning rate training uses: the range test's choice with config.lr_range_test, else the spec's."""
    if not ctx.config.lr_range_test:
        return spec.learning_rate
    key = ctx.check_key(spec.name, "lr_range.json")
    if not ctx.store.exists(key):
        raise PipelineError(f"lr_range_test is on but {key} is missing: run the single_batch_check task first")
    return float(ctx.store.get_json(key)["learning_rate"])


def _plot_lr_range(ctx, experiment: str, rates, losses, chosen: float) -> dict:
    fig, ax = plots.new_figure(7, 4)
    ax.semilogx(rates, losses)
    ax.axvline(chosen, color="tab:green", linestyle="--", label=f"chosen {chosen:.2g}")
    ax.set(title=f"{experiment}: learning-rate range test", xlabel="learning rate (log scale)", ylabel="smoothed loss")
    ax.legend()
    key = plots.save_figure(ctx.store, ctx.check_key(experiment, "lr_range.png"), fig)
    return plots.figure_entry(
        key,
        f"Learning-rate range test: {experiment}'s training loss as the rate grows; training uses {chosen:.2g}, "
        "a tenth of the rate with the lowest loss.",
    )


def _one_batch(ctx: RunContext, batch_size: int):
    """A seeded sample of `batch_size` images from the start of the unbalanced training split."""
    x, y, _ = data.load_split_arrays(ctx, "train", "unbalanced", limit=max(SINGLE_BATCH_POOL, batch_size))
    pick = np.random.default_rng(ctx.config.seed).permutation(len(y))[:batch_size]
    return x[pick], y[pick]


def _plot_single_batch(ctx, experiment: str, losses, accuracies, passed: bool) -> dict:
    fig, (ax_loss, ax_acc) = plots.new_figure(10, 4, ncols=2)
    steps = range(1, len(losses) + 1)
    ax_loss.semilogy(steps, losses)
    ax_loss.axhline(LOSS_TOLERANCE, color="grey", linestyle="--", label=f"tolerance {LOSS_TOLERANCE}")
    ax_loss.set(title="Loss on the fixed batch", xlabel="step", ylabel="loss (log scale)")
    ax_loss.legend()
    ax_acc.plot(steps, accuracies)
    ax_acc.set(title="Accuracy on the fixed batch", xlabel="step", ylabel="accuracy", ylim=(0, 1.05))
    fig.suptitle(f"{experiment}: single-batch check {'passed' if passed else 'FAILED'}")
    key = plots.save_figure(ctx.store, ctx.check_key(experiment, "single_batch.png"), fig)
    verdict = "fits" if passed else "cannot fit"
    return plots.figure_entry(
        key, f"Single-batch check: {experiment} {verdict} one training batch ({len(losses)} steps)."
    )


# --------------------------------------------------------------------------- full training
def run(ctx: RunContext, experiment: str, variant: str, extra_callbacks=()) -> dict:
    """Train `experiment` on the `variant` data, resuming from the store if a previous try was cut off.

    extra_callbacks: additional keras callbacks (monitoring, tests). Returns a small dict for XCom.
    """
    started = time.time()
    spec = ctx.config.experiment(experiment)
    spec = spec.model_copy(update={"learning_rate": tuned_learning_rate(ctx, spec)})
    settings = _prepare(ctx)
    info = data.load_dataset_info(ctx)
    mid = make_model_id(experiment, variant)
    train_part = data.split_info(info, "train", variant)
    work = _restore_state(ctx, mid)
    if _finished(work) and ctx.store.exists(ctx.model_key(mid, "meta.json")):
        log.warning(
            "%s: an earlier try already trained this model to the end and saved it (%s); this task "
            "was cleared or re-run, so it trains again from scratch and replaces that model",
            mid,
            ctx.store.url(ctx.model_key(mid, "model.keras")),
        )
        work = _start_over(ctx, mid)
    elif _finished(work):
        log.info("%s: training finished in an earlier try that failed before saving its outputs; saving them", mid)
    initial_epoch = _backup_epoch(work)
    history = _load_history(work)[:initial_epoch]
    if initial_epoch:
        log.info("%s: resuming after epoch %d (state restored from the store)", mid, initial_epoch, extra=TERMINAL)

    model = _build(ctx, spec, info)
    steps = data.steps_per_epoch(train_part["count"], spec.batch_size)
    _compile(model, make_optimizer(spec, total_steps=ctx.config.epochs * steps))
    if not _finished(work):
        budget = TimeBudget(mid, ctx.config.time_budget_minutes, history)
        stopped_by = "time_budget"  # a try that starts with the budget already spent trains no further
        if not budget.spent():
            train_ds = data.dataset(ctx, "train", variant, spec.batch_size, training=True)
            val_ds = data.dataset(ctx, "val", variant, spec.batch_size)
            callbacks = _callbacks(ctx, spec, mid, work, history, train_part["count"]) + [budget]
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=ctx.config.epochs,
                callbacks=callbacks + list(extra_callbacks),
                shuffle=False,  # the dataset shuffles (seeded)
                verbose=0,
            )
            stopped_by = stop_reason(callbacks)
        finished = {"finished": True, "epochs": len(history), "stopped_by": stopped_by}
        (work / "checkpoint" / FINISHED).write_text(json.dumps(finished))
        _sync_state(ctx, mid, work)
    if (work / "checkpoint" / "best.weights.h5").exists():
        model.load_weights(work / "checkpoint" / "best.weights.h5")  # restore the best epoch's weights
    return _save_outputs(ctx, spec, variant, model, info, history, settings, initial_epoch, started, work)


def make_optimizer(spec, total_steps: int):
    """The spec's optimizer. cosine decays over all training steps to 1 % of the rate; one_cycle first warms
    up linearly from a tenth of the rate over 10 % of the steps, then decays the same way; plateau is a callback."""
    lr = spec.learning_rate
    if spec.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, total_steps), alpha=0.01)
    elif spec.lr_schedule == "one_cycle":
        warmup = max(1, round(0.1 * total_steps))
        lr = keras.optimizers.schedules.CosineDecay(
            lr / 10, decay_steps=max(1, total_steps - warmup), alpha=0.01, warmup_target=lr, warmup_steps=warmup
        )
    factories = {
        "adam": lambda: keras.optimizers.Adam(lr),
        "adamw": lambda: keras.optimizers.AdamW(lr),
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
        "rmsprop": lambda: keras.optimizers.RMSprop(lr),
        "nadam": lambda: keras.optimizers.Nadam(lr),
    }
    return factories[spec.optimizer]()


def _callbacks(ctx, spec, mid: str, work: Path, history: list[dict], train_count: int) -> list:
    """Order matters: the NaN guard runs before anything saves; the epoch's learning rate is put in the
    logs before anything records them; the lr change runs before the backup."""
    patience = ctx.config.early_stopping_patience
    best = min((h["val_loss"] for h in history), default=None)
    callbacks = [NanGuard(spec.name, mid), EpochLearningRate()]
    if spec.lr_schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, patience=max(1, patience // 2), min_lr=spec.learning_rate / 100
            )
        )
    callbacks += [
        ResumableEarlyStopping(history, monitor="val_loss", patience=patience),
        keras.callbacks.ModelCheckpoint(
            str(work / "checkpoint" / "best.weights.h5"),
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=best,
        ),
        keras.callbacks.BackupAndRestore(str(work / "backup")),
        # per-epoch scalars only (no graph, no profile): the event files stay a few KiB
        keras.callbacks.TensorBoard(str(_tensorboard_dir(work)), write_graph=False, profile_batch=0),
        EpochRecorder(ctx, mid, work, history, train_count),
    ]
    return callbacks


class EpochRecorder(keras.callbacks.Callback):
    """Appends each epoch to `history`, logs progress (images/s, ETA) and syncs the state to the store."""

    def __init__(self, ctx: RunContext, mid: str, work: Path, history: list[dict], train_count: int):
        super().__init__()
        self.ctx, self.mid, self.work, self.history, self.train_count = ctx, mid, work, history, train_count

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start, self.train_seconds = time.time(), None

    def on_test_begin(self, logs=None):  # validation starts: the training part of the epoch is over
        self.train_seconds = time.time() - self.epoch_start

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.time() - self.epoch_start
        entry = {
            "epoch": epoch + 1,
            **{k: float(v) for k, v in (logs or {}).items()},
            "seconds": seconds,
            "images_per_s": self.train_count / (self.train_seconds or seconds),
        }
        self.history.append(entry)
        (self.work / "checkpoint" / "history.json").write_text(json.dumps(self.history, indent=1))
        _log_progress(self.mid, entry, self.ctx.config.epochs, self.history)
        _sync_state(self.ctx, self.mid, self.work)


def _log_progress(mid: str, entry: dict, epochs: int, history: list[dict]) -> None:
    mean_seconds = float(np.mean([h["seconds"] for h in history]))
    eta = mean_seconds * (epochs - entry["epoch"])
    log.info(
        "%s epoch %d/%d: loss %.4f acc %.4f | val_loss %.4f val_acc %.4f | lr %.2e | %.0f img/s | "
        "epoch %.1fs | ETA %dm%02ds (at most)",
        mid,
        entry["epoch"],
        epochs,
        entry["loss"],
        entry["accuracy"],
        entry.get("val_loss", float("nan")),
        entry.get("val_accuracy", float("nan")),
        entry["learning_rate"],
        entry["images_per_s"],
        entry["seconds"],
        eta // 60,
        eta % 60,
        extra=TERMINAL,
    )


# --------------------------------------------------------------------------- state in the store
def _restore_state(ctx: RunContext, mid: str) -> Path:
    """A fresh local work folder holding whatever an earlier try of this task left in the store."""
    work = ctx.scratch("train", mid)
    shutil.rmtree(work)
    for name in STATE_DIRS:
        prefix = ctx.model_key(mid, name) + "/"
        for key in ctx.store.list(prefix):
            ctx.store.get_file(key, work / name / key[len(prefix) :])
        (work / name).mkdir(parents=True, exist_ok=True)
    metadata = work / "backup" / BACKUP_METADATA
    if metadata.exists() and json.loads(metadata.read_text()).get("discarded"):  # see _start_over
        shutil.rmtree(work / "backup")
        (work / "backup").mkdir()
    return work


def _sync_state(ctx: RunContext, mid: str, work: Path) -> None:
    for name in STATE_DIRS:
        folder = work / name
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            ctx.store.put_file(ctx.model_key(mid, name, path.relative_to(folder).as_posix()), path)


def _finished(work: Path) -> bool:
    """Whether the restored state is a finished training (finished.json without "finished": false)."""
    path = work / "checkpoint" / FINISHED
    return path.exists() and json.loads(path.read_text()).get("finished", True)


def _tensorboard_dir(work: Path) -> Path:
    """tensorboard/, or tensorboard/retrain-<time>/ for a training that replaces a finished one."""
    path = work / "checkpoint" / FINISHED
    restarted = json.loads(path.read_text()).get("restarted_at") if path.exists() else None
    return work / "tensorboard" / f"retrain-{restarted}" if restarted else work / "tensorboard"


def _start_over(ctx: RunContext, mid: str) -> Path:
    """An empty work folder for a new training of `mid`, and the store's state marked so that a try
    interrupted during it resumes this training, not the replaced one: finished.json "finished":
    false, an empty history, and the old BackupAndRestore state discarded. The store keeps the old
    TensorBoard files; the new training writes its own under tensorboard/retrain-<time>/."""
    work = ctx.scratch("train", mid)
    shutil.rmtree(work)
    for name in STATE_DIRS:
        (work / name).mkdir(parents=True)
    started = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    ctx.store.put_json(ctx.model_key(mid, "checkpoint", FINISHED), {"finished": False, "restarted_at": started})
    ctx.store.put_json(ctx.model_key(mid, "checkpoint", "history.json"), [])
    ctx.store.put_json(ctx.model_key(mid, "backup", BACKUP_METADATA), {"discarded": True, "restarted_at": started})
    (work / "checkpoint" / FINISHED).write_text(json.dumps({"finished": False, "restarted_at": started}))
    return work


def _backup_epoch(work: Path) -> int:
    """Epochs completed according to the BackupAndRestore state (0 when starting fresh)."""
    path = work / "backup" / BACKUP_METADATA
    return int(json.loads(path.read_text())["epoch"]) if path.exists() else 0


def _load_history(work: Path) -> list[dict]:
    path = work / "checkpoint" / "history.json"
    return json.loads(path.read_text()) if path.exists() else []


# --------------------------------------------------------------------------- outputs
def _save_outputs(ctx, spec, variant, model, info, history, settings, initial_epoch, started, work) -> dict:
    import pandas as pd

    mid = make_model_id(spec.name, variant)
    if not history:
        raise RuntimeError(f"experiment {spec.name!r} ({mid}): no epoch completed, nothing to save")
    model.save(work / "model.keras")
    ctx.store.put_file(ctx.model_key(mid, "model.keras"), work / "model.keras")
    ctx.store.put_json(ctx.model_key(mid, "history.json"), history)
    ctx.store.put_text(ctx.model_key(mid, "history.csv"), pd.DataFrame(history).to_csv(index=False))
    best = min(history, key=lambda h: h["val_loss"])
    figure = _plot_curves(ctx, mid, history, best["epoch"])
    train_seconds = sum(h["seconds"] for h in history)
    meta = {
        "model_id": mid,
        "experiment": spec.name,
        "variant": variant,
        "description": spec.description,
        "classes": info["classes"],
        "image_size": info["image_size"],
        "image_fit": data.image_fit(info),
        "spec": spec.model_dump(mode="json"),
        "learning_rate_from": "lr_range_test" if ctx.config.lr_range_test else "spec",
        "params": int(model.count_params()),
        "layers": models.describe(model)["layers"],
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "stopped_by": json.loads((work / "checkpoint" / FINISHED).read_text()).get("stopped_by"),
        "resumed_from_epoch": initial_epoch,
        "best_val_loss": best["val_loss"],
        "best_val_accuracy": best["val_accuracy"],
        "final_val_loss": history[-1]["val_loss"],
        "final_val_accuracy": history[-1]["val_accuracy"],
        "wall_time_s": time.time() - started,
        "train_time_s": train_seconds,
        "images_per_s": float(np.mean([h["images_per_s"] for h in history])),
        "class_weight": data.split_info(info, "train", variant).get("class_weight"),
        "dataset_sha256": info.get("dataset_sha256"),
        "config": ctx.config.to_dict(),
        "versions": runtime.package_versions(),
        "git_commit": runtime.git_commit(),
        "runtime": settings,
        "keys": {
            "model": ctx.model_key(mid, "model.keras"),
            "history_json": ctx.model_key(mid, "history.json"),
            "history_csv": ctx.model_key(mid, "history.csv"),
            "tensorboard": ctx.model_key(mid, "tensorboard") + "/",
        },
        "figures": [figure],
    }
    ModelMeta.write(ctx.store, ctx.model_key(mid, "meta.json"), meta)
    log.info(
        "%s: best epoch %d val_acc %.4f val_loss %.4f; saved %s",
        mid,
        best["epoch"],
        best["val_accuracy"],
        best["val_loss"],
        meta["keys"]["model"],
    )
    return {
        "model_id": mid,
        "best_val_accuracy": best["val_accuracy"],
        "best_val_loss": best["val_loss"],
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "stopped_by": meta["stopped_by"],
        "resumed_from_epoch": initial_epoch,
        "keys": {**meta["keys"], "meta": ctx.model_key(mid, "meta.json"), "curves": figure["key"]},
    }


def _plot_curves(ctx, mid: str, history: list[dict], best_epoch: int) -> dict:
    fig, axes = plots.new_figure(11, 4.2, ncols=2)
    epochs = [h["epoch"] for h in history]
    for ax, metric, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
        ax.plot(epochs, [h[metric] for h in history], marker=".", label="training")
        ax.plot(epochs, [h[f"val_{metric}"] for h in history], marker=".", label="validation")
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
        ax.set(title=f"{title}: training vs validation", xlabel="epoch", ylabel=metric)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
    fig.suptitle(mid)
    key = plots.save_figure(ctx.store, ctx.model_key(mid, "curves.png"), fig)
    return plots.figure_entry(
        key,
        f"{mid}: training and validation accuracy (left) and loss (right) "
        f"per epoch; the kept weights are from epoch {best_epoch}.",
    )
