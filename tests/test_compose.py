"""The deployment files: docker-compose.yaml structure, the Dockerfile, and .env.example."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (ROOT / "docker-compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES = COMPOSE["services"]
AIRFLOW = [
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
]
LONG_RUNNING = [
    "postgres",
    "redis",
    "minio",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-gpu",
]
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}; $${VAR} is an escaped literal.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])[^}]*)?\}")


def env(service: str) -> dict:
    return SERVICES[service].get("environment") or {}


def dotenv_example() -> dict:
    lines = (ROOT / ".env.example").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def interpolate(text: str, values: dict) -> str:
    """Compose's ${VAR} substitution, enough for these files."""

    def value(match):
        name, op = match.group(1), match.group(2)
        default = match.group(0).split(op, 1)[1][:-1] if op and "-" in op else ""
        return values.get(name) or default

    return VARIABLE.sub(value, text).replace("$$", "$")


def test_every_required_service_is_defined():
    for name in [*AIRFLOW, "postgres", "redis", "minio", "minio-init"]:
        assert name in SERVICES, name
    assert SERVICES["postgres"]["image"].startswith("postgres:16")
    assert SERVICES["redis"]["image"].startswith("redis:")
    assert "minio/minio" in SERVICES["minio"]["image"]
    assert "minio/mc" in SERVICES["minio-init"]["image"]


@pytest.mark.parametrize("service", [*AIRFLOW, "airflow-worker-gpu"])
def test_airflow_services_share_image_executor_urls_and_mounts(service):
    spec, variables = SERVICES[service], env(service)
    assert "build" in spec
    assert spec["build"]["context"] == "."
    assert variables["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert variables["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert "@postgres/" in variables["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert variables["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    assert variables["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379")
    assert variables["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    mounts = set(spec["volumes"])
    if service != "airflow-init":
        for folder in ("dags", "plugins", "cnn_tasks"):
            assert f"./{folder}:/opt/airflow/{folder}" in mounts


def test_minio_connection_and_store_settings():
    variables = env("airflow-worker")
    connection = json.loads(interpolate(variables["AIRFLOW_CONN_AWS_DEFAULT"], dotenv_example()))
    assert connection["conn_type"] == "aws"
    assert connection["extra"]["endpoint_url"] == "http://minio:9000"
    assert connection["login"] == dotenv_example()["CNN_S3_ACCESS_KEY"]
    assert interpolate(variables["CNN_STORE_URI"], {}) == "s3://cnn-artifacts/"
    assert variables["CNN_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert variables["CNN_AWS_CONN_ID"] == "aws_default"


def test_minio_init_creates_the_bucket_and_the_airflow_key():
    script = "\n".join(SERVICES["minio-init"]["command"])
    assert "mc mb --ignore-existing" in script
    assert "$$CNN_BUCKET" in script
    assert "mc admin user add" in script
    assert env("minio-init")["CNN_BUCKET"] == "${CNN_BUCKET:-cnn-artifacts}"
    assert SERVICES["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", LONG_RUNNING)
def test_long_running_services_have_healthchecks(service):
    assert SERVICES[service]["healthcheck"]["test"]


def test_startup_order_waits_for_health_and_one_shot_jobs():
    for service in [
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-worker-gpu",
    ]:
        needs = SERVICES[service]["depends_on"]
        assert needs["postgres"]["condition"] == "service_healthy"
        assert needs["redis"]["condition"] == "service_healthy"
        assert needs["minio-init"]["condition"] == "service_completed_successfully"
        assert needs["airflow-init"]["condition"] == "service_completed_successfully"
    assert SERVICES["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    assert "airflow-init" not in SERVICES["airflow-init"]["depends_on"]


def test_training_capacity_is_sized_for_tensorflow():
    worker = env("airflow-worker")
    assert interpolate(worker["AIRFLOW__CELERY__WORKER_CONCURRENCY"], {}) == "2"
    assert worker["CNN_PARALLEL_TASKS"] == worker["AIRFLOW__CELERY__WORKER_CONCURRENCY"]
    assert SERVICES["airflow-worker"]["deploy"]["resources"]["limits"]["memory"]
    init = "\n".join(SERVICES["airflow-init"]["command"])
    assert "airflow db migrate" in init
    assert re.search(r"airflow pools set training \S+", init)


def test_gpu_worker_is_an_optional_profile():
    gpu = SERVICES["airflow-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["target"] == "gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert all("profiles" not in SERVICES[s] for s in SERVICES if s != "airflow-worker-gpu")


def test_the_gpu_worker_listens_on_the_training_queue_every_service_routes_to():
    """The DAG (parsed by every service) and the GPU worker read the same CNN_TRAINING_QUEUE: set,
    training waits for the GPU worker; unset, the GPU worker shares the normal queue."""
    command = SERVICES["airflow-worker-gpu"]["command"]
    assert interpolate(command, {"CNN_TRAINING_QUEUE": "gpu"}) == "celery worker --queues gpu"
    assert interpolate(command, {}) == "celery worker --queues default"
    assert interpolate(SERVICES["airflow-worker"]["command"], {"CNN_TRAINING_QUEUE": "gpu"}) == "celery worker"
    for service in AIRFLOW:
        assert interpolate(env(service)["CNN_TRAINING_QUEUE"], {"CNN_TRAINING_QUEUE": "gpu"}) == "gpu"


def test_dockerfile_installs_the_pinned_lock_on_the_official_image():
    dockerfile = (ROOT / "Dockerfile").read_text()
    lock = (ROOT / "requirements/requirements.lock").read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2-python3\.11\b", dockerfile, re.M)
    assert re.search(r"^apache-airflow==3\.3\.2$", lock, re.M)  # the lock agrees with the image
    assert "COPY requirements/requirements.lock" in dockerfile
    assert re.search(r'pip install --no-cache-dir "apache-airflow==3\.3\.2" -r /requirements\.lock', dockerfile)
    assert re.search(r"^COPY .*cnn_tasks /opt/airflow/cnn_tasks$", dockerfile, re.M)
    assert re.search(r"^FROM base AS cpu$", dockerfile.strip().splitlines()[-1])  # default target


def test_env_example_defines_every_variable_without_a_default():
    required = {m.group(1) for m in VARIABLE.finditer(COMPOSE_TEXT) if not m.group(2) or "?" in m.group(2)}
    assert required, "expected secrets from .env"
    defined = dotenv_example()
    assert sorted(required - set(defined)) == []
    assert {"POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "CNN_S3_SECRET_KEY"} <= required
    # Shell variables in commands are escaped ($$VAR), so compose never substitutes them.
    assert not re.findall(r"(?<!\$)\$[A-Za-z_]", COMPOSE_TEXT)
    for name in required:  # placeholders only, never real secrets
        if any(word in name for word in ("PASSWORD", "SECRET", "FERNET")):
            assert defined[name].startswith("change-me"), name
