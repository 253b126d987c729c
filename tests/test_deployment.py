"""The deployment's settings: the CNN_* environment variables, their defaults, read when asked."""

from __future__ import annotations

import pytest

from cnn_tasks.deployment import Deployment, deployment

NAMES = [field.validation_alias for field in Deployment.model_fields.values()]


@pytest.fixture
def clean_env(monkeypatch):
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_every_setting_is_one_cnn_variable():
    assert all(name.startswith("CNN_") and name == name.upper() for name in NAMES)
    assert len(set(NAMES)) == len(NAMES)


def test_unset_variables_mean_the_defaults(clean_env):
    settings = deployment()
    assert (settings.cache_dir, settings.cache_max_gb, settings.git_commit, settings.progress_file) == (None,) * 4
    assert (settings.parallel_tasks, settings.training_pool, settings.train_timeout_hours) == ("1", "training", "6")
    assert (settings.schedule_cron, settings.retrains_on_asset, settings.training_queue_name) == (None, False, None)
    assert settings.param_defaults() == {}


def test_read_when_called_with_the_exact_names(clean_env):
    before = deployment()
    clean_env.setenv("CNN_PARALLEL_TASKS", "3")
    clean_env.setenv("cnn_training_pool", "lowercase is another variable")
    clean_env.setenv("CNN_SCHEDULE", " @daily ")
    clean_env.setenv("CNN_RETRAIN_ON_ASSET", "TRUE")
    clean_env.setenv("CNN_TRAINING_QUEUE", "  ")
    clean_env.setenv("CNN_STORE_URI", "s3://bucket/prefix")
    clean_env.setenv("CNN_S3_ENDPOINT_URL", "")
    settings = deployment()
    assert (before.parallel_tasks, settings.parallel_tasks) == ("1", "3")
    assert settings.training_pool == "training"
    assert (settings.schedule_cron, settings.retrains_on_asset, settings.training_queue_name) == ("@daily", True, None)
    assert settings.param_defaults() == {"store_uri": "s3://bucket/prefix"}  # empty means unset


def test_a_value_that_is_no_number_is_left_to_its_user(clean_env):
    clean_env.setenv("CNN_TRAIN_TIMEOUT_HOURS", "soon")
    clean_env.setenv("CNN_CACHE_MAX_GB", "lots")
    settings = deployment()  # reading never fails; each user checks and names its variable
    assert (settings.train_timeout_hours, settings.cache_max_gb) == ("soon", "lots")
