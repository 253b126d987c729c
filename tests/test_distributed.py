"""The distributed deployment shape, for real: the docker-compose topology without Docker.

Airflow metadata in a PostgreSQL database created (and dropped) by the test, the CeleryExecutor
with Redis as broker (a dedicated Redis db, flushed before and after), the scheduler,
dag-processor, api-server and two Celery workers as separate processes: `w1` on the normal queue,
`w2` on the training queue (CNN_TRAINING_QUEUE, as the GPU worker in docker-compose.yaml), and the
artifact store on a moto S3 server reached through the AIRFLOW_CONN_AWS_DEFAULT connection. A
quick run is triggered through the REST API and must succeed with its single-batch checks,
training and visualisation on `w2` only, every other task on `w1`, and its report in the bucket;
afterwards no process the test started may remain.

Skipped (with the reason) only where PostgreSQL on 127.0.0.1:5432 or Redis on 127.0.0.1:6379 is not
reachable. CNN_IT_PG_DSN / CNN_IT_REDIS_URL point it elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections import Counter

import pytest

from tests.airflow_stack import WORKER_NAME, AirflowStack, StackError, aws_connection, served_tiny_dataset, tiny_conf
from tests.s3server import moto_s3

pytestmark = pytest.mark.e2e

PG_SERVER = os.environ.get("CNN_IT_PG_DSN", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("CNN_IT_REDIS_URL", "redis://127.0.0.1:6379/7")
BUCKET, PREFIX = "cnn-distributed", "it"
TRAINING_QUEUE = "training"
WORKERS = {"w1": "default", "w2": TRAINING_QUEUE}  # worker -> the queue it listens on
TRAINING_TASKS = {"single_batch_check", "train", "visualize"}  # routed to CNN_TRAINING_QUEUE
EXPERIMENTS = ("baseline", "strided_elu", "separable_swish")
RUN_TIMEOUT = float(os.environ.get("CNN_IT_RUN_TIMEOUT", 1200))


@pytest.fixture
def postgres_database():
    """A fresh PostgreSQL database `cnn_it_<random>`; yields its SQLAlchemy URL; dropped afterwards."""
    import psycopg2

    try:
        admin = psycopg2.connect(f"{PG_SERVER}/postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {PG_SERVER}: {str(exc).strip()}")
    admin.autocommit = True
    name = f"cnn_it_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER.replace('postgresql://', 'postgresql+psycopg2://', 1)}/{name}", name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
            remaining = cur.fetchone()[0]
        admin.close()
        assert remaining == 0, f"database {name} was not dropped"


@pytest.fixture
def redis_broker():
    """The dedicated Redis database for the Celery broker, flushed before and after the test."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    client.flushdb()
    try:
        yield REDIS_URL
    finally:
        client.flushdb()
        client.close()


def celery_workers(broker_url: str) -> set[str]:
    """Names (before the '@') of the Celery workers answering a ping on this broker."""
    from celery import Celery

    app = Celery(broker=broker_url)
    try:
        replies = app.control.ping(timeout=2.0) or []
    finally:
        app.close()
    return {name.split("@")[0] for reply in replies for name in reply}


@pytest.mark.timeout(RUN_TIMEOUT + 900)
def preflight_celery(stack: AirflowStack) -> None:
    """Fail fast, with the reason, when the installed Celery cannot run Airflow's CeleryExecutor
    (scheduler and workers would crash at start-up and the test would only see a timeout)."""
    check = stack.python("import airflow.providers.celery.executors.celery_executor_utils")
    if check.returncode:
        from importlib.metadata import version

        pytest.fail(
            f"the CeleryExecutor cannot be imported with celery {version('celery')} and "
            f"apache-airflow-providers-celery {version('apache-airflow-providers-celery')} "
            f"(requirements/requirements.lock): {check.stderr.strip().splitlines()[-1]}. "
            "Every Celery worker and the scheduler would crash at start-up. celery 5.7 removed "
            "celery.backends.database.retry; pin celery<5.7 (5.6.3 works with the locked kombu) and re-lock.",
            pytrace=False,
        )


def test_celery_deployment_on_postgres_redis_and_s3_with_two_workers(postgres_database, redis_broker, tmp_path):
    timings: dict[str, float] = {}
    start = time.monotonic()
    sql_url, db_name = postgres_database
    with served_tiny_dataset(tmp_path / "data") as data, moto_s3(BUCKET) as endpoint:
        stack = AirflowStack(
            tmp_path / "airflow",
            {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_url,
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": redis_broker,
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{sql_url}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
                "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
                # S3 credentials and endpoint from the Airflow connection, as in the deployment; the
                # plugin in the api-server reads the same store.
                "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(endpoint),
                "CNN_STORE_URI": f"s3://{BUCKET}/{PREFIX}",
                "CNN_TRAINING_QUEUE": TRAINING_QUEUE,
            },
        )
        print(f"\nAIRFLOW_HOME {stack.home}; database {db_name}; broker {redis_broker}; S3 {endpoint}")
        stopped = None
        try:
            preflight_celery(stack)
            stack.migrate(pools={"training": 2})
            timings["migrate"] = time.monotonic() - start
            stack.start_core()
            for name, queue in WORKERS.items():
                stack.start(
                    f"worker-{name}",
                    "celery",
                    "worker",
                    "--queues",
                    queue,
                    "--celery-hostname",
                    f"{name}@%h",
                    "--concurrency",
                    "2" if queue == TRAINING_QUEUE else "1",  # the training pool's 2 slots
                    "--skip-serve-logs",
                    "--pid",
                    str(stack.home / f"worker-{name}.pid"),
                    env={WORKER_NAME: name, "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.airflow_stack.worker_hostname"},
                )
            stack.wait_healthy(timeout=300)
            stack.wait_until(
                "both Celery workers to answer a ping",
                lambda: celery_workers(redis_broker) >= set(WORKERS),
                timeout=240,
                interval=3,
            )
            stack.wait_for_dag(timeout=300)
            timings["stack ready"] = time.monotonic() - start

            run_id = stack.trigger(tiny_conf(data["url"], data["checksum"], f"s3://{BUCKET}/{PREFIX}"))
            stack.wait_for_run(run_id, timeout=RUN_TIMEOUT, progress=print)
            timings["run"] = time.monotonic() - start - timings["stack ready"]

            tis = stack.task_instances(run_id)
            by_worker: dict[str, list[str]] = {}
            for ti in tis:
                if ti["state"] == "success":
                    by_worker.setdefault((ti["hostname"] or "?").split("@")[0], []).append(
                        f"{ti['task_id']}[{ti['map_index']}]"
                    )
            print("tasks per worker:", {w: len(t) for w, t in by_worker.items()}, by_worker)
            assert set(by_worker) <= set(WORKERS), f"a task ran outside the Celery workers: {by_worker}"

            train = [ti for ti in tis if ti["task_id"] == "train"]
            assert len(train) == 2 * len(EXPERIMENTS), train  # experiments x {unbalanced, balanced}
            assert all(ti["state"] == "success" for ti in train), train
            # Routing: what gains from a GPU ran on the training-queue worker only, the rest never there.
            ran_on = {}
            for ti in tis:
                if ti["state"] == "success":
                    ran_on.setdefault(ti["task_id"], set()).add(ti["hostname"].split("@")[0])
            assert {t: w for t, w in ran_on.items() if t in TRAINING_TASKS} == dict.fromkeys(TRAINING_TASKS, {"w2"})
            assert {t: w for t, w in ran_on.items() if t not in TRAINING_TASKS and w != {"w1"}} == {}

            # The workers' own logs agree with the hostnames the API reports.
            for name in WORKERS:
                log = (stack.log_dir / f"worker-{name}.log").read_text(errors="replace")
                received = re.findall(r"Executing workload in Celery: .*?task_id='(\w+)'", log)
                mine = Counter(t.split("[")[0] for t in by_worker.get(name, []))
                assert not mine - Counter(received), (name, received, mine)  # retries may add deliveries

            # The report and its summary are in the bucket, for every model.
            import boto3

            from cnn_tasks.context import safe_run_id

            s3 = boto3.client("s3", endpoint_url=endpoint)
            report = f"{PREFIX}/runs/{safe_run_id(run_id)}/report/"
            keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=report).get("Contents", [])}
            assert {report + "index.html", report + "summary.json"} <= keys, keys
            summary = json.loads(s3.get_object(Bucket=BUCKET, Key=report + "summary.json")["Body"].read())
            assert set(summary["models"]) == {f"{e}__{v}" for e in EXPERIMENTS for v in ("unbalanced", "balanced")}
            html = s3.get_object(Bucket=BUCKET, Key=report + "index.html")["Body"].read().decode()
            assert "onfusion matrix" in html

            # The api-server's report plugin lists the run from the same bucket.
            listed = stack.api.get(f"{stack.base_url}/cnn-reports/api/runs")
            assert listed.status_code == 200, listed.text
            assert safe_run_id(run_id) in {r["run_id"] for r in listed.json()}
        except StackError:
            raise
        except BaseException:
            print(stack.diagnostics(60))
            raise
        finally:
            t0 = time.monotonic()
            stopped = stack.stop(grace=45)
            timings["stop"] = time.monotonic() - t0
            print(f"timings (s): { {k: round(v, 1) for k, v in timings.items()} }; stop: {stopped}")
    assert all(not p.alive() for p in stack.procs), [p.name for p in stack.procs if p.alive()]
    assert not stopped["survivors"], f"processes outlived the test: {stopped['survivors']}"
    assert not stack.marked_processes()
