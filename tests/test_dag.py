"""The DAG file: imports cleanly and fast, has the expected tasks, wiring, mapping and Params."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnn_tasks import DAG_ID

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = ROOT / "dags" / "cnn_image_classification.py"


def load_dag(tmp_path, **env):
    """Parse the DAG folder with Airflow's DagBag in a subprocess (fresh module state, given env)."""
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAG_FILE)!r})\n"
        f"dag = bag.dags.get({DAG_ID!r})\n"
        "out = {'errors': {k: str(v) for k, v in bag.import_errors.items()},\n"
        "       'heavy': [m for m in ('tensorflow', 'keras', 'pandas', 'matplotlib', 'sklearn') if m in sys.modules]}\n"
        "if dag:\n"
        "    out['tasks'] = {t.task_id: {'up': sorted(t.upstream_task_ids), 'mapped': type(t).__name__.endswith('MappedOperator'),\n"
        "                   'pool': t.pool, 'retries': t.retries, 'timeout': t.execution_timeout.total_seconds(),\n"
        "                   'backoff': t.retry_exponential_backoff, 'kind': type(t).__name__, 'queue': t.queue,\n"
        "                   'ignores_downstream_rules': getattr(t, 'ignore_downstream_trigger_rules', None), 'trigger_rule': getattr(t.trigger_rule, 'value', t.trigger_rule),\n"
        "                   'label': getattr(t, 'map_index_template', None) or (t.partial_kwargs.get('map_index_template') if hasattr(t, 'partial_kwargs') else None)} for t in dag.tasks}\n"
        "    out['params'] = {k: {**dag.params.get_param(k).schema, 'description': dag.params.get_param(k).description} for k in dag.params}\n"
        "    out['defaults'] = {k: dag.params.get_param(k).value for k in dag.params}\n"
        "    out['max_active_runs'] = dag.max_active_runs\n"
        "    out['timetable'] = type(dag.timetable).__name__\n"
        "    out['summary'] = repr(getattr(dag.timetable, 'expression', ''))\n"
        "print('JSON' + json.dumps(out, default=str))\n"
    )
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        **env,
    }
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=180)
    line = [s for s in proc.stdout.splitlines() if s.startswith("JSON")]
    assert line, proc.stderr[-3000:]
    import json

    return json.loads(line[-1][4:])


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    return load_dag(tmp_path_factory.mktemp("dag"))


def test_dag_imports_without_errors_or_heavy_libraries(parsed):
    assert parsed["errors"] == {}
    assert parsed["heavy"] == []


def test_dag_file_has_no_heavy_top_level_imports():
    top_level = [s for s in DAG_FILE.read_text().splitlines() if s.startswith(("import ", "from "))]
    assert not [s for s in top_level if any(m in s for m in ("tensorflow", "keras", "pandas", "matplotlib", "sklearn"))]


def test_tasks_and_dependencies(parsed):
    tasks = parsed["tasks"]
    expected_upstream = {
        "configure": [],
        "download": ["configure"],
        "changed_since_champion": ["download"],
        "split": ["changed_since_champion"],
        "rebalance": ["split"],
        "single_batch_check": ["configure", "rebalance"],
        "train": ["rebalance", "single_batch_check"],
        "visualize": ["train"],
        "evaluate": ["train"],
        "ensemble": ["evaluate"],
        "promote": ["ensemble"],
        "predict": ["promote"],
        "report": ["predict", "visualize"],
        "all_stages_succeeded": ["report"],
    }
    assert {t: v["up"] for t, v in tasks.items()} == expected_upstream
    # tasks are made in pipeline order: the final task lists failed and not-run tasks in this order
    assert list(tasks) == list(expected_upstream)
    assert {t for t, v in tasks.items() if v["mapped"]} == {"single_batch_check", "train", "visualize", "evaluate"}


GPU_TASKS = {"single_batch_check", "train", "visualize"}


def test_gpu_tasks_go_to_the_training_queue_when_one_is_named(parsed, tmp_path):
    assert {t["queue"] for t in parsed["tasks"].values()} == {"default"}
    routed = load_dag(tmp_path, CNN_TRAINING_QUEUE="gpu")["tasks"]
    assert {name for name, t in routed.items() if t["queue"] == "gpu"} == GPU_TASKS
    assert {t["queue"] for name, t in routed.items() if name not in GPU_TASKS} == {"default"}


def test_an_unchanged_run_stops_after_ingest_but_still_reports(parsed):
    """The nothing-changed check is a short-circuit right after download that skips only the tasks
    it leads to by their own trigger rules: report and all_stages_succeeded (all_done) still run."""
    check = parsed["tasks"]["changed_since_champion"]
    assert check["kind"] == "_ShortCircuitDecoratedOperator"
    assert check["ignores_downstream_rules"] is False
    assert check["retries"] == 0


def test_a_failed_stage_fails_the_run_after_the_report(parsed):
    """`report` runs whatever happened upstream; the only leaf, `all_stages_succeeded`, runs after it
    whatever happened, and fails when any task failed: a partial report never passes for success."""
    tasks = parsed["tasks"]
    leaves = {t for t in tasks if not any(t in v["up"] for v in tasks.values())}
    assert leaves == {"all_stages_succeeded"}
    assert tasks["report"]["trigger_rule"] == "all_done"
    assert tasks["all_stages_succeeded"]["trigger_rule"] == "all_done"
    assert tasks["all_stages_succeeded"]["retries"] == 0


def test_mapped_tasks_have_readable_labels(parsed):
    labels = {t: v["label"] for t, v in parsed["tasks"].items() if v["mapped"]}
    assert "experiment" in labels["single_batch_check"]
    assert "variant" in labels["train"]
    assert "model_id" in labels["visualize"]
    assert "model_id" in labels["evaluate"]


def test_training_has_pool_timeout_and_backoff(parsed):
    train = parsed["tasks"]["train"]
    assert train["pool"] == "training"
    assert train["timeout"] == 6 * 3600
    assert all(t["backoff"] for t in parsed["tasks"].values())
    assert parsed["tasks"]["download"]["retries"] == 2
    assert parsed["max_active_runs"] == 1


def test_params_carry_types_enums_bounds_and_descriptions(parsed):
    params = parsed["params"]
    for name in (
        "dataset_url",
        "classes",
        "image_size",
        "epochs",
        "experiments",
        "rebalance",
        "profile",
        "unlabelled_url",
        "store_uri",
    ):
        assert params[name]["title"], name
        assert params[name]["description"], name
    assert params["rebalance"]["enum"] == ["none", "class_weight", "oversample", "undersample", "augment"]
    assert params["profile"]["enum"] == ["standard", "quick"]
    assert params["epochs"]["type"] == "integer"
    assert params["epochs"]["minimum"] == 1
    assert len(parsed["defaults"]["experiments"]) == 3
    assert params["classes"]["type"] == ["array", "null"]
    assert params["classes"]["items"] == {"type": "string"}


def test_params_lay_out_the_trigger_form_in_sections(parsed):
    params = parsed["params"]
    names = list(params)
    assert names[:2] == ["profile", "dataset_url"]  # the profile and the most-used fields first
    main = names[: names.index("dataset_subdir")]
    assert {"image_size", "epochs", "classes"} <= set(main)
    assert not any("section" in params[n] for n in main)
    sections = list(dict.fromkeys(params[n].get("section") for n in names))
    assert sections == [None, "Data preparation", "Model and training", "Promotion", "Retraining", "Storage"]
    assert params["experiments"]["section"] == "Model and training"
    assert params["store_uri"]["section"] == "Storage"


def test_schedule_is_manual_by_default_and_configurable(parsed, tmp_path):
    assert parsed["timetable"] == "NullTimetable"
    cron = load_dag(tmp_path, CNN_SCHEDULE="0 3 * * 1")
    assert cron["timetable"] == "CronTriggerTimetable"
    assert "0 3 * * 1" in cron["summary"]
    both = load_dag(tmp_path, CNN_SCHEDULE="@daily", CNN_RETRAIN_ON_ASSET="true")
    assert both["timetable"] == "AssetOrTimeSchedule"
    assert load_dag(tmp_path, CNN_RETRAIN_ON_ASSET="true")["timetable"] == "AssetTriggeredTimetable"


def test_deployment_env_sets_param_defaults(tmp_path):
    parsed = load_dag(tmp_path, CNN_STORE_URI="s3://bucket/prefix", CNN_AWS_CONN_ID="minio")
    assert parsed["defaults"]["store_uri"] == "s3://bucket/prefix"
    assert parsed["defaults"]["aws_conn_id"] == "minio"
