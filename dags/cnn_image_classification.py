"""CNN image classification: from a labelled image dataset to trained, understood and compared models.

Wiring only. Each task calls one stage of `cnn_tasks` (plain Python, no Airflow inside) with a
RunContext built from the run's Params; stages exchange data through the artifact store and
return only small dicts (keys, URIs, metrics) through XCom. No TensorFlow, pandas or matplotlib
is imported at parse time.

Deployment settings (environment variables, read at parse time; cnn_tasks/deployment.py):
  CNN_SCHEDULE          cron expression or preset for scheduled retraining (default: manual only)
  CNN_RETRAIN_ON_ASSET  "true" to also run when the dataset Asset is updated
  CNN_STORE_URI, CNN_S3_ENDPOINT_URL, CNN_AWS_CONN_ID, CNN_DATASET_URL   Param defaults
  CNN_TRAINING_POOL     pool for training tasks (default "training")
  CNN_TRAINING_QUEUE    Celery queue for the tasks that gain from a GPU (single-batch check,
                        train, visualize); default: the normal queue
  CNN_TRAIN_TIMEOUT_HOURS  execution timeout of one training task (default 6)

A failed stage fails the run. `report` runs whatever happened upstream (trigger rule all_done)
and says which sections did not run and why; the last task, `all_stages_succeeded` (also
all_done), then fails when any task of the run failed, with a message naming each failed task
and its error, so the run ends `failed` while the partial report is still written. Every task
records its error in the store (runs/<id>/failures/); that task and `make run` read them.
Mapped tasks are labelled in the grid ("baseline / balanced").
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task

from cnn_tasks import DAG_ID
from cnn_tasks.config import field_schemas
from cnn_tasks.deployment import deployment

DEPLOYMENT = deployment()
TRAINING_POOL = DEPLOYMENT.training_pool
# The GPU worker listens on this queue (docker-compose.yaml); unset, every task uses the normal queue.
TRAINING_QUEUE = {"queue": q} if (q := DEPLOYMENT.training_queue_name) else {}
# Updating this Asset (from a producer DAG or the REST API) announces new training data.
DATASET_ASSET = Asset(name="cnn_training_dataset", uri="cnn://training-dataset")
MODEL_LABEL = "{{ task.op_kwargs['trained']['model_id'] | replace('__', ' / ') }}"  # grid label of a mapped task


def _params() -> dict[str, Param]:
    """One Param per config field, from the config's JSON schema: type, enum, bounds, title, description.

    Their order and `section` lay out the trigger form: the profile and the most-used fields first
    (Airflow's open "Run Parameters" section), then the collapsed sections (Data preparation, Model
    and training, Promotion, Storage).
    """
    return {name: Param(**schema) for name, schema in field_schemas(DEPLOYMENT.param_defaults()).items()}


def _schedule():
    """Manual by default; a cron/preset from CNN_SCHEDULE; optionally also on dataset updates."""
    cron, on_asset = DEPLOYMENT.schedule_cron, DEPLOYMENT.retrains_on_asset
    if cron and on_asset:
        from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

        return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=[DATASET_ASSET])
    if on_asset:
        return [DATASET_ASSET]
    return cron


def _stage(fn, *args):
    """Run a stage with this task's context. Errors a retry cannot fix (PipelineError: bad config,
    bad data, missing bucket, a model that diverges) fail the task at once; others are retried.
    Either way the error is recorded in the store for the report and the run's final check; a
    later try that succeeds marks it recovered, and its wall time is recorded for the report. The
    task's scratch folders are removed at the end."""
    import time

    from airflow.sdk.exceptions import AirflowFailException

    from cnn_tasks import failures, progress
    from cnn_tasks.errors import PipelineError

    ti, ctx, started = get_current_context()["ti"], None, time.monotonic()
    will_retry = lambda exc: not isinstance(exc, PipelineError) and ti.try_number <= ti.max_tries
    try:
        with progress.reporting(failures.task_name(ti.task_id, ti.map_index, _label(ti)), will_retry):
            ctx = _ctx()
            result = fn(ctx, *args)
    except BaseException as exc:  # BaseException: a task timeout too
        if ctx is not None:  # no context: an invalid config, nothing may be written
            failures.record_failure(
                ctx.store,
                ctx.prefix,
                ti.task_id,
                ti.map_index,
                _label(ti),
                exc,
                ti.try_number,
                final=not will_retry(exc),
            )
        if isinstance(exc, PipelineError):
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        raise
    else:
        failures.record_recovered(ctx.store, ctx.prefix, ti.task_id, ti.map_index)
        failures.record_timing(
            ctx.store, ctx.prefix, ti.task_id, ti.map_index, _label(ti), time.monotonic() - started, ti.try_number
        )
        return result
    finally:
        if ctx is not None:
            ctx.close()


def _label(ti) -> str | None:
    """The mapped task's readable label (map_index_template), e.g. 'baseline / balanced'."""
    return getattr(ti, "rendered_map_index", None) if ti.map_index >= 0 else None


def _run_failures(ctx) -> tuple[list[dict], list[str]]:
    """(failed tasks with their recorded errors, tasks that did not run because of them), from
    Airflow's task states and the store's failure records. A task that failed without a record
    (killed, out of memory, lost worker) is recorded here, so the report lists it too."""
    from cnn_tasks import failures

    context = get_current_context()
    recorded = {(r.get("task_id"), r.get("map_index", -1)): r for r in failures.read_failures(ctx.store, ctx.prefix)}
    failed, not_run = [], []
    order = {task_id: i for i, task_id in enumerate(context["dag"].task_ids)}  # the order tasks are defined in
    crumbs = sorted(
        context["ti"].get_task_breadcrumbs(DAG_ID, context["run_id"]),
        key=lambda c: (order.get(c["task_id"], len(order)), c["map_index"]),
    )
    for crumb in crumbs:
        task_id, map_index = crumb["task_id"], crumb["map_index"]
        state = str(getattr(crumb["state"], "value", crumb["state"]))
        if task_id == context["ti"].task_id:
            continue
        if state == "upstream_failed":
            not_run.append(failures.task_name(task_id, map_index))
        elif state == "failed":
            record = recorded.get((task_id, map_index))
            if record is None:
                record = failures.record_unexplained(ctx.store, ctx.prefix, task_id, map_index)
            failed.append(record)
    failed.sort(key=lambda r: (r.get("at") or "", r.get("task") or ""))
    return failed, not_run


def _ctx():
    """The RunContext for the running task: validated config from Params, store, run id."""
    from cnn_tasks.config import PipelineConfig
    from cnn_tasks.context import RunContext

    context = get_current_context()
    # The profile fills only what the run's conf did not set (an explicit empty value wins).
    given = set((context["dag_run"].conf or {}) if context.get("dag_run") else context["params"])
    config = PipelineConfig.from_dict(dict(context["params"]), given=given)
    s3_client = None
    if any((uri or "").startswith("s3://") for uri in (config.store_uri, config.dataset_url, config.unlabelled_url)):
        # Inside Airflow the S3 credentials come from the Airflow connection (amazon provider).
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        s3_client = S3Hook(aws_conn_id=config.aws_conn_id).get_conn()
    return RunContext.create(config, context["run_id"], s3_client=s3_client)


@dag(
    dag_id=DAG_ID,
    description="Download, validate, split and rebalance images; train, visualise, evaluate and "
    "ensemble Sequential CNNs; publish an HTML report.",
    schedule=_schedule(),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    params=_params(),
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(hours=2),
    },
    tags=["cnn", "keras", "images"],
    doc_md=__doc__,
)
def cnn_image_classification():
    @task(retries=0)
    def configure() -> list[str]:
        """Validate the Params (nothing is written for an invalid run), record the config and
        return the experiment names that the single-batch checks map over."""

        def record(ctx):
            ctx.store.put_json(ctx.key("config.json"), ctx.config.to_dict())
            return [e.name for e in ctx.config.experiments]

        return _stage(record)

    # The data stages and training go through cnn_tasks.reuse: a stage whose input, settings and code
    # equal an earlier run's copies that run's outputs (training only with reuse_models).
    @task
    def download() -> dict:
        from cnn_tasks import download, reuse

        return _stage(reuse.data_stage, "download", download.run)

    # Stops the run after ingest when nothing changed since the champion (skip_unchanged): the
    # tasks after it are skipped; report and all_stages_succeeded still run.
    @task.short_circuit(ignore_downstream_trigger_rules=False, retries=0)
    def changed_since_champion() -> bool:
        from cnn_tasks import reuse

        dag_run = get_current_context()["dag_run"]
        run_type = str(getattr(dag_run.run_type, "value", dag_run.run_type))
        return _stage(reuse.stop_if_unchanged, run_type)

    @task
    def split() -> dict:
        from cnn_tasks import reuse, split

        return _stage(reuse.data_stage, "split", split.run)

    @task
    def rebalance() -> list[dict]:
        """Write the training data variants; return the training runs over them, which the training
        tasks map over: [{"experiment": ..., "variant": ...}], one variant only with rebalance=none
        or when rebalancing changed nothing."""
        from cnn_tasks import rebalance, reuse
        from cnn_tasks.contracts import DatasetInfo
        from cnn_tasks.variants import training_runs

        def write(ctx):
            reuse.data_stage(ctx, "rebalance", rebalance.run)
            return training_runs(ctx.config, DatasetInfo.read(ctx.store, ctx.data_key("dataset.json")))

        return _stage(write)

    @task(retries=0, map_index_template="{{ task.op_kwargs['experiment'] }}", **TRAINING_QUEUE)
    def single_batch_check(experiment: str) -> dict:
        from cnn_tasks import train

        return _stage(train.single_batch_check, experiment)

    @task(
        pool=TRAINING_POOL,
        execution_timeout=timedelta(hours=float(DEPLOYMENT.train_timeout_hours)),
        map_index_template="{{ task.op_kwargs['experiment'] }} / {{ task.op_kwargs['variant'] }}",
        **TRAINING_QUEUE,
    )
    def train(experiment: str, variant: str) -> dict:
        from cnn_tasks import reuse, train

        return _stage(reuse.train_stage, train.run, experiment, variant)

    @task(map_index_template=MODEL_LABEL, **TRAINING_QUEUE)  # gradient ascent and Grad-CAM
    def visualize(trained: dict) -> dict:
        from cnn_tasks import visualize

        return _stage(visualize.run, trained["model_id"])

    @task(map_index_template=MODEL_LABEL)
    def evaluate(trained: dict) -> dict:
        from cnn_tasks import evaluate

        return _stage(evaluate.run, trained["model_id"])

    @task
    def ensemble(evaluations: list[dict]) -> dict:
        from cnn_tasks import ensemble

        return _stage(ensemble.run, [e["model_id"] for e in evaluations])

    @task
    def promote() -> dict:
        from cnn_tasks import promote

        return _stage(promote.run)

    @task
    def predict() -> dict:
        from cnn_tasks import predict

        return _stage(predict.run)

    # The report runs even when a stage failed: it opens with the failed tasks and their errors,
    # and its sections say what did not run and why.
    @task(trigger_rule="all_done")
    def report() -> dict:
        from cnn_tasks import report

        def write(ctx):
            _run_failures(ctx)  # records tasks that died without recording their error
            return report.run(ctx)

        return _stage(write)

    # The run's verdict: fails (so the DAG run ends `failed`) when any task failed, naming each
    # failed task and its error; succeeds when every task did.
    @task(trigger_rule="all_done", retries=0)
    def all_stages_succeeded() -> str:
        from airflow.sdk.exceptions import AirflowFailException

        from cnn_tasks import failures

        ctx = _ctx()
        try:
            failed, not_run = _run_failures(ctx)
            report_key = ctx.report_key("index.html")
            where = f"partial report: {ctx.store.url(report_key)}" if ctx.store.exists(report_key) else "no report"
        finally:
            ctx.close()
        if failed:
            raise AirflowFailException(
                f"{len(failed)} task(s) failed: "
                + "; ".join(failures.reason(f) for f in failed)
                + (f". Did not run because of it: {', '.join(not_run)}" if not_run else "")
                + f". ({where})"
            )
        return "every task succeeded"

    # Stages that only follow one another are ordered with >>; data passes through the store.
    experiments = configure()
    training_runs = (  # `a >> b` is b: tasks made in order
        experiments >> download() >> changed_since_champion() >> split() >> rebalance()
    )
    checks = single_batch_check.expand(experiment=experiments)
    training_runs >> checks
    # One training task per experiment x data variant (one variant only with rebalance=none).
    trained = train.expand_kwargs(training_runs)
    checks >> trained
    visualisations = visualize.expand(trained=trained)
    evaluations = evaluate.expand(trained=trained)
    [ensemble(evaluations) >> promote() >> predict(), visualisations] >> report() >> all_stages_succeeded()


cnn_image_classification()
