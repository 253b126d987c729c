"""The deployment's settings: the `CNN_*` environment variables, read in one place.

`deployment()` reads them when called, not at import: a worker, the DAG file at parse time and a
test (monkeypatch.setenv) each see the environment of that moment. An unset variable means its
default. Every value is text, so reading them never fails because of one of them: a value that must
be a number (CNN_PARALLEL_TASKS, CNN_CACHE_MAX_GB, CNN_TRAIN_TIMEOUT_HOURS) is checked where it is
used, with a message that names the variable.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Deployment(BaseSettings):
    """The `CNN_*` environment variables (exact names: case-sensitive, as `os.environ` reads them)."""

    model_config = SettingsConfigDict(case_sensitive=True, frozen=True, extra="ignore")

    # Workers
    cache_dir: str | None = Field(
        None,
        validation_alias="CNN_CACHE_DIR",
        description="The worker-local cache (downloads, shards, run scratch); empty: ~/.cache/cnn_tasks.",
    )
    cache_max_gb: str | None = Field(
        None,
        validation_alias="CNN_CACHE_MAX_GB",
        description="Size limit of the worker cache in GB (default 20, 0: no limit); checked by cache.max_bytes.",
    )
    parallel_tasks: str = Field(
        "1",
        validation_alias="CNN_PARALLEL_TASKS",
        description="Training tasks that run at once on one machine; checked by runtime.parallel_tasks.",
    )
    git_commit: str | None = Field(
        None,
        validation_alias="CNN_GIT_COMMIT",
        description="The code's commit where `git rev-parse HEAD` cannot tell (an image without .git).",
    )
    progress_file: str | None = Field(
        None,
        validation_alias="CNN_PROGRESS_FILE",
        description="The file `make run` follows for progress lines; empty: nothing is written.",
    )

    # The DAG file (read at parse time)
    schedule: str = Field(
        "",
        validation_alias="CNN_SCHEDULE",
        description="Cron expression or preset for scheduled retraining; empty: manual runs only.",
    )
    retrain_on_asset: str = Field(
        "",
        validation_alias="CNN_RETRAIN_ON_ASSET",
        description="'1', 'true' or 'yes' (any case): also run when the dataset Asset is updated.",
    )
    training_pool: str = Field(
        "training",
        validation_alias="CNN_TRAINING_POOL",
        description="Airflow pool of the training tasks.",
    )
    training_queue: str = Field(
        "",
        validation_alias="CNN_TRAINING_QUEUE",
        description="Celery queue of the tasks that gain from a GPU; empty: the normal queue.",
    )
    train_timeout_hours: str = Field(
        "6",
        validation_alias="CNN_TRAIN_TIMEOUT_HOURS",
        description="Execution timeout of one training task, in hours (a number).",
    )

    # Defaults of the run Params, also read by the reports plugin
    store_uri: str | None = Field(None, validation_alias="CNN_STORE_URI", description="Default artifact store.")
    s3_endpoint_url: str | None = Field(
        None, validation_alias="CNN_S3_ENDPOINT_URL", description="Default S3 endpoint (MinIO); empty: AWS."
    )
    aws_conn_id: str | None = Field(
        None, validation_alias="CNN_AWS_CONN_ID", description="Default Airflow connection with the S3 credentials."
    )
    dataset_url: str | None = Field(None, validation_alias="CNN_DATASET_URL", description="Default dataset.")
    report_local_stores: str = Field(
        "",
        validation_alias="CNN_REPORT_LOCAL_STORES",
        description="Comma-separated local folders whose runs' reports the reports plugin may serve.",
    )

    @property
    def schedule_cron(self) -> str | None:
        """CNN_SCHEDULE without surrounding blanks; None when unset or blank."""
        return self.schedule.strip() or None

    @property
    def retrains_on_asset(self) -> bool:
        return self.retrain_on_asset.lower() in ("1", "true", "yes")

    @property
    def training_queue_name(self) -> str | None:
        """CNN_TRAINING_QUEUE without surrounding blanks; None when unset or blank."""
        return self.training_queue.strip() or None

    def param_defaults(self) -> dict[str, str]:
        """The run Params' defaults this deployment sets (config field -> value), where not empty."""
        values = {
            "store_uri": self.store_uri,
            "s3_endpoint_url": self.s3_endpoint_url,
            "aws_conn_id": self.aws_conn_id,
            "dataset_url": self.dataset_url,
        }
        return {field: value for field, value in values.items() if value}


def deployment() -> Deployment:
    """The deployment's settings as the environment says now."""
    return Deployment()
