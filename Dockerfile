# The pipeline's Airflow image: the official Airflow 3.3.2 image plus the project's pinned
# dependencies and code. `docker compose build` builds the `cpu` target (the default, last
# stage); the `gpu` target swaps TensorFlow for its CUDA build (see docs/deployment.md).
FROM apache/airflow:3.3.2-python3.11 AS base

# requirements.lock pins every package, Airflow included, for Python 3.11 (uv pip compile).
# Naming apache-airflow==3.3.2 beside it means pip keeps the image's Airflow and fails the
# build, instead of silently replacing Airflow, if the lock ever asks for another version.
COPY requirements/requirements.lock /requirements.lock
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r /requirements.lock

# Folders the services write to; named volumes take their owner and mode on first use.
# Group 0 may write, as any AIRFLOW_UID runs with group 0. auth/ holds the UI passwords file,
# cache/ the worker-local dataset and shard cache.
RUN mkdir -p /opt/airflow/auth /opt/airflow/cache && chmod g+rwX /opt/airflow/auth /opt/airflow/cache
ENV PYTHONPATH=/opt/airflow \
    CNN_CACHE_DIR=/opt/airflow/cache

# The code, so the image runs on its own (KubernetesExecutor, remote Celery workers);
# docker-compose.yaml also mounts these folders over it for development.
COPY --chown=airflow:0 cnn_tasks /opt/airflow/cnn_tasks
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins


# GPU workers: the same pins, with TensorFlow's CUDA build (NVIDIA libraries come as wheels).
FROM base AS gpu
RUN TF_VERSION="$(sed -n 's/^tensorflow-cpu==//p' /requirements.lock)" \
 && pip uninstall -y tensorflow-cpu \
 && pip install --no-cache-dir "apache-airflow==3.3.2" "tensorflow[and-cuda]==${TF_VERSION}" -c /requirements.lock


FROM base AS cpu
