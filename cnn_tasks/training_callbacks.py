"""Keras callbacks of full training (`cnn_tasks.train`): the NaN guard, the epoch's learning rate in
its logs, the time budget, early stopping that resumes from the saved history, and why fit returned.

Imports keras at module level, like train: import it inside Airflow tasks, not in the DAG file.
"""

from __future__ import annotations

import logging
import math

import keras
import numpy as np

from cnn_tasks.errors import PipelineError

log = logging.getLogger(__name__)


class TrainingDivergedError(PipelineError, RuntimeError):
    """The loss became NaN or infinite during training."""


class NanGuard(keras.callbacks.Callback):
    """Stop with a clear error as soon as an epoch's loss or val loss is NaN/inf (before any save)."""

    def __init__(self, experiment: str, mid: str):
        super().__init__()
        self.experiment, self.mid = experiment, mid

    def on_epoch_end(self, epoch, logs=None):
        for name in ("loss", "val_loss"):
            value = (logs or {}).get(name)
            if value is not None and not math.isfinite(float(value)):
                raise TrainingDivergedError(
                    f"experiment {self.experiment!r} ({self.mid}): {name} became {float(value)} at epoch "
                    f"{epoch + 1}; training diverged. Lower the learning rate, add batch norm or check "
                    "the input data for NaN values."
                )


class EpochLearningRate(keras.callbacks.Callback):
    """Puts the learning rate the epoch started with into its logs (not the one a schedule set after it)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.learning_rate = current_lr(self.model)

    def on_epoch_end(self, epoch, logs=None):  # keras hands every callback the same logs dict
        logs["learning_rate"] = self.learning_rate


class TimeBudget(keras.callbacks.Callback):
    """Ends training at an epoch boundary when the next epoch would pass `minutes` (None: no budget).

    The clock is the saved history's epoch seconds (validation included), so a resumed try spends
    what is left of the budget, not a new one. The next epoch is assumed to take as long as the
    slowest of the last three. Runs after EpochRecorder, which appends the epoch that just ended.
    """

    def __init__(self, mid: str, minutes: float | None, history: list[dict]):
        super().__init__()
        self.mid, self.history = mid, history
        self.budget_s = None if minutes is None else minutes * 60
        self.stopped_epoch = None

    def used_s(self) -> float:
        return sum(h["seconds"] for h in self.history)

    def spent(self) -> bool:
        """True when an earlier try already used the whole budget (it trains no further)."""
        return self.budget_s is not None and bool(self.history) and self.used_s() >= self.budget_s

    def on_epoch_end(self, epoch, logs=None):
        if self.budget_s is None or self.model.stop_training:
            return
        next_s = max(h["seconds"] for h in self.history[-3:])
        if self.used_s() + next_s > self.budget_s:
            self.model.stop_training = True
            self.stopped_epoch = epoch + 1
            log.warning(
                "%s: stopped by the time budget at epoch %d: %.1f of %.1f min used, the next epoch would take "
                "about %.1f min; the best epoch's weights are kept",
                self.mid,
                epoch + 1,
                self.used_s() / 60,
                self.budget_s / 60,
                next_s / 60,
            )


def stop_reason(callbacks: list) -> str:
    """Why fit returned: early stopping or the time budget ended it, else it ran all its epochs."""
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.EarlyStopping) and callback.stopped_epoch > 0:
            return "early_stopping"
        if isinstance(callback, TimeBudget) and callback.stopped_epoch:
            return "time_budget"
    return "epochs"


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """keras EarlyStopping whose best value and patience counter continue from the saved history."""

    def __init__(self, history: list[dict], **kwargs):
        super().__init__(**kwargs)
        self.history = history

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.history:
            losses = [h["val_loss"] for h in self.history]
            best_index = int(np.argmin(losses))
            self.best, self.best_epoch = losses[best_index], best_index
            self.wait = len(losses) - 1 - best_index


def current_lr(model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
