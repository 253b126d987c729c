# Two commands matter: `make run` (the pipeline end to end) and `make test` (the whole suite).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Settings left empty here come from CONF (a YAML or JSON settings file), else the config defaults
# (profile standard, store file://$(CURDIR)/artifacts); given here, they override CONF.
CONF ?=
PROFILE ?=
DATASET_URL ?=
DATASET_CHECKSUM ?=
UNLABELLED_URL ?=
STORE_URI ?=
# Tasks at a time in `make run`; above 1 they run under the LocalExecutor. 2 was faster than 1 on 2 cores
# (bench/bench_parallel.py, docs/benchmarks.md).
PARALLEL ?= 2
PYTEST_ARGS ?=
# make run VERBOSE=1: Airflow's own output in the terminal instead of one line per task
VERBOSE ?=

export PYTHONPATH := $(CURDIR)
export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export CNN_STORE_URI ?= $(or $(STORE_URI),file://$(CURDIR)/artifacts)

.PHONY: setup run test lint format airflow tensorboard bench lock clean

setup: $(STAMP)

# The virtualenv is created when missing and re-synced whenever the lock file changes.
$(STAMP): requirements/requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==26.3"
	$(PY) -m pip install --quiet -r requirements/requirements.lock
	@touch $(STAMP)

## make run [CONF=settings.yaml] [PROFILE=quick] [DATASET_URL=/path/EuroSAT.zip] [STORE_URI=s3://bucket/prefix] [PARALLEL=2]
## Exits non-zero when any task failed; its last lines say which task failed, why, and where the partial report is.
run: setup
	CONF="$(CONF)" PROFILE="$(PROFILE)" DATASET_URL="$(DATASET_URL)" DATASET_CHECKSUM="$(DATASET_CHECKSUM)" \
	UNLABELLED_URL="$(UNLABELLED_URL)" STORE_URI="$(STORE_URI)" VERBOSE="$(VERBOSE)" $(if $(PARALLEL),CNN_PARALLEL_TASKS="$(PARALLEL)") \
	$(PY) -m cnn_tasks run

## make test [PYTEST_ARGS="-k storage"]
test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

## make lint: ruff's checks and formatting (configured in pyproject.toml); `make test` runs it first
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## make format: apply ruff's safe fixes and formatting
format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

## make airflow: the Airflow UI with this project's DAG and plugin on http://127.0.0.1:8080
airflow: setup
	bash scripts/airflow_standalone.sh

## make tensorboard [RUN=<run id>] [STORE_URI=s3://bucket/prefix]: a run's training logs (default: the latest run)
## downloaded from the store into a temporary folder and served on http://127.0.0.1:6006
RUN ?=
tensorboard: setup
	$(PY) -m cnn_tasks tensorboard $(if $(RUN),"$(RUN)") --store "$(or $(STORE_URI),$(CNN_STORE_URI))"

## make bench: the data, input-pipeline, filter-pattern and model-cost benchmarks (minutes; the time-to-accuracy,
## quality and parallel-run benchmarks take longer: see docs/benchmarks.md)
bench: setup
	$(PY) bench/bench_prepare.py && $(PY) bench/bench_train.py && $(PY) bench/bench_filters.py && $(PY) bench/bench_models.py

## make lock: re-resolve requirements/requirements.in into exact pins
lock:
	$(PY) -m pip install --quiet "uv==0.13.8"
	$(VENV)/bin/uv pip compile --python-version 3.11 requirements/requirements.in -o requirements/requirements.lock

clean:
	rm -rf .airflow artifacts .pytest_cache
