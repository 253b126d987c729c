"""End to end: the whole DAG through `airflow dags test` on a tiny generated dataset served over
HTTP, once with the local folder store and once with S3 on a moto server (boto3 over HTTP, the
credentials coming from the Airflow connection). Then what a user sees when a stage fails: the
DAG run's final state, `make run`'s exit status and last lines, the failure message of the final
task and the partial report, for a failure in download, in one of several mapped training tasks,
and in the report itself."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import zipfile
from datetime import datetime
from pathlib import Path

import pytest

from cnn_tasks import DAG_ID, cli
from cnn_tasks.failures import read_timings
from cnn_tasks.storage import open_store
from tests.airflow_stack import aws_connection, served_tiny_dataset, tiny_conf
from tests.imagegen import make_dataset
from tests.s3server import moto_s3

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
MODEL_IDS = [f"{e}__{v}" for e in ("baseline", "strided_elu", "separable_swish") for v in ("unbalanced", "balanced")]


@pytest.fixture(scope="module")
def served_dataset(tmp_path_factory):
    """The tiny zip behind a local HTTP server, and a folder of unlabelled images with one broken file."""
    base = tmp_path_factory.mktemp("served")
    unlabelled = make_dataset(base / "unlabelled_src", classes=3, per_class=2, size=28, seed=9)
    flat = base / "unlabelled"
    flat.mkdir()
    for image in unlabelled.rglob("*.png"):
        image.rename(flat / image.name)
    (flat / "broken.png").write_bytes(b"not an image")
    with served_tiny_dataset(base) as served:
        yield served["url"], served["checksum"], flat


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    """A throw-away AIRFLOW_HOME with a migrated SQLite database and the training pool."""
    home = tmp_path_factory.mktemp("airflow_home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW", "CNN_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "PYTHONPATH": str(ROOT),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "CNN_CACHE_DIR": str(home / "cache"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)
    subprocess.run(
        [airflow, "pools", "set", "training", "2", "training"], env=env, check=True, capture_output=True, timeout=120
    )
    return env


def run_dag(env: dict, conf: dict, log: Path) -> None:
    airflow = str(Path(sys.executable).with_name("airflow"))
    with open(log, "w") as out:
        proc = subprocess.run(
            [airflow, "dags", "test", DAG_ID, "--conf", json.dumps(conf)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1500,
        )
    assert proc.returncode == 0, log.read_text()[-6000:]  # `dags test` exits non-zero on a failed run


def assert_complete_run(store) -> dict:
    runs = sorted({k.split("/")[1] for k in store.list("runs/")})
    assert len(runs) == 1, runs
    prefix = f"runs/{runs[0]}"
    expected = [f"{prefix}/config.json", f"{prefix}/promotion.json"]
    expected += [
        f"{prefix}/data/{name}"
        for name in ("ingest.json", "manifest.csv", "rejected.csv", "split.csv", "analysis.json", "dataset.json")
    ]
    expected += [f"{prefix}/checks/{e}/single_batch.json" for e in ("baseline", "strided_elu", "separable_swish")]
    for mid in MODEL_IDS:
        expected += [f"{prefix}/models/{mid}/{n}" for n in ("model.keras", "meta.json", "history.json", "curves.png")]
        expected += [f"{prefix}/viz/{mid}/viz.json", f"{prefix}/eval/{mid}/metrics.json"]
    expected += [
        f"{prefix}/eval/ensemble/ensemble.json",
        f"{prefix}/report/index.html",
        f"{prefix}/report/summary.json",
    ]
    keys = set(store.list(prefix + "/"))
    assert not [k for k in expected if k not in keys], sorted(keys)
    # every figure a stage lists exists
    for key in [k for k in keys if k.endswith(".json") and "/tensorboard/" not in k]:
        value = store.get_json(key)
        for figure in value.get("figures", []) if isinstance(value, dict) else []:
            assert figure["key"] in keys, (key, figure)
    summary = store.get_json(f"{prefix}/report/summary.json")
    for mid in MODEL_IDS:
        test = summary["models"][mid]["test"]
        assert 0 <= test["accuracy"] <= 1, (mid, test)
        assert 0 <= test["macro_f1"] <= 1, (mid, test)
    html = store.get_text(f"{prefix}/report/index.html")
    assert "Confusion matrix" in html or "confusion matrix" in html
    # every task before the report recorded its wall time, mapped ones with their labels
    timed = [row["task"] for row in summary["results"]["stage_times"]]
    for task in ("configure", "download", "split", "rebalance", "ensemble", "promote", "predict"):
        assert task in timed, timed
    assert {f"train [{mid.replace('__', ' / ')}]" for mid in MODEL_IDS} <= set(timed), timed
    return summary


def overlapping_tasks(store, prefix: str, task: str) -> list[tuple[str, str]]:
    """Pairs of `task`'s mapped instances whose wall times (from runs/<id>/timings/) overlapped."""
    spans = []
    for timing in read_timings(store, prefix):
        if timing["task_id"] == task:
            end = datetime.fromisoformat(timing["at"]).timestamp()
            spans.append((end - timing["seconds"], end, timing["task"]))
    spans.sort()
    return [(a[2], b[2]) for i, a in enumerate(spans) for b in spans[i + 1 :] if b[0] < a[1]]


def test_whole_dag_with_local_store_two_tasks_at_a_time(airflow_env, served_dataset, tmp_path):
    """`make run PARALLEL=2`: the LocalExecutor runs mapped tasks side by side, and the run completes."""
    url, checksum, unlabelled = served_dataset
    store_uri = f"file://{tmp_path / 'store'}"
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(tiny_conf(url, checksum, store_uri) | {"unlabelled_url": str(unlabelled)}))
    env = airflow_env | {"CONF": str(settings), "CNN_PARALLEL_TASKS": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "cnn_tasks", "run"], env=env, capture_output=True, text=True, timeout=1500, cwd=ROOT
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert "2 tasks at a time (LocalExecutor" in proc.stdout
    store = open_store(store_uri)
    summary = assert_complete_run(store)
    assert proc.stdout.strip().splitlines()[-1].startswith("Report: file://")
    # what the user reads: one line per task start and end, the epochs, the answer; not Airflow's log
    shown = proc.stdout.splitlines()
    assert "No tasks to run" not in proc.stdout
    assert any(line.endswith("  download: started") for line in shown), proc.stdout[-4000:]
    assert any("  report: done in " in line for line in shown), proc.stdout[-4000:]
    assert any(" epoch 1/" in line for line in shown), proc.stdout[-4000:]
    assert any(line.startswith("Best model:    ") for line in shown), proc.stdout[-4000:]
    assert any(line.startswith("Champion:      ") for line in shown), proc.stdout[-4000:]
    assert len(shown) < 150, f"{len(shown)} lines: a progress view, not a log"
    assert overlapping_tasks(store, f"runs/{summary['run_id']}", "train"), "no two training tasks overlapped"
    predictions = [k for k in store.list("runs/") if k.endswith("report/predictions.csv")]
    assert predictions, "predictions.csv missing"
    rows = store.get_text(predictions[0]).strip().splitlines()
    assert len(rows) == 1 + 6, rows  # header + six readable images; the broken one is rejected
    rejected = store.get_text(predictions[0].replace("predictions.csv", "predictions_rejected.csv"))
    assert "broken.png" in rejected, rejected
    # `make run` again with nothing changed: it stops after ingest, exits 0 and says why
    settings.write_text(json.dumps(json.loads(settings.read_text()) | {"skip_unchanged": "always"}))
    again = subprocess.run(
        [sys.executable, "-m", "cnn_tasks", "run"], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    last = again.stdout.strip().splitlines()
    assert last[-3].startswith(f"Stopped after ingest: nothing changed since champion run {summary['run_id']}")
    assert last[-1].startswith("Report: file://")


def test_whole_dag_with_s3_store_on_moto(airflow_env, served_dataset, tmp_path):
    url, checksum, _ = served_dataset
    with moto_s3("cnn-artifacts") as endpoint:
        env = airflow_env | {"AIRFLOW_CONN_AWS_DEFAULT": aws_connection(endpoint)}
        conf = tiny_conf(url, checksum, "s3://cnn-artifacts/e2e")
        run_dag(env, conf, tmp_path / "dags_test.log")
        store = open_store("s3://cnn-artifacts/e2e", endpoint_url=endpoint)
        first = assert_complete_run(store)["run_id"]
        champion = store.get_json("champions/tiny/champion.json")  # the first run's best model, ready to serve
        assert champion["run_id"] == first
        assert store.exists(f"{champion['saved_model_key']}/saved_model.pb")
        assert store.exists(champion["tflite_key"])
        assert "Model card of the new champion" in store.get_text(f"runs/{first}/report/index.html")
        # Run again with nothing changed: ingest is copied from the first run, and the run stops there.
        run_dag(env, conf | {"skip_unchanged": "always"}, tmp_path / "unchanged.log")
        assert_stopped_after_ingest(env, store, first)


def assert_stopped_after_ingest(env: dict, store, champion_run: str) -> None:
    """The newest run stopped after ingest because nothing changed since `champion_run`: it succeeded,
    skipped every stage after the check, reused the champion run's ingest and says why."""
    run_id, state, tasks = dag_run_states(env)
    assert state == "success", tasks
    states = {task: s for (task, _), (s, _) in tasks.items()}
    assert states["changed_since_champion"] == "success"
    after = ("split", "rebalance", "single_batch_check", "train", "visualize", "evaluate", "ensemble", "promote")
    assert {t: states[t] for t in after} == dict.fromkeys(after, "skipped")
    assert states["report"] == states["all_stages_succeeded"] == "success"
    prefix = f"runs/{safe(run_id)}"
    assert store.get_json(f"{prefix}/reuse/download.json")["reused_from"] == champion_run
    why = store.get_json(f"{prefix}/stopped.json")["why"]
    assert f"nothing changed since champion run {champion_run}" in why
    assert "Stopped after ingest" in store.get_text(f"{prefix}/report/index.html")
    assert store.get_json(f"{prefix}/report/summary.json")["results"]["stopped"] == why


def run_dag_expecting_failure(env: dict, conf: dict, log: Path) -> str:
    airflow = str(Path(sys.executable).with_name("airflow"))
    with open(log, "w") as out:
        proc = subprocess.run(
            [airflow, "dags", "test", DAG_ID, "--conf", json.dumps(conf)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    text = log.read_text()
    assert proc.returncode != 0, text[-3000:]
    return text


def test_value_refused_by_the_param_schema_writes_nothing(airflow_env, tmp_path):
    store = tmp_path / "store"
    text = run_dag_expecting_failure(
        airflow_env, {"image_size": 8, "store_uri": f"file://{store}"}, tmp_path / "refused.log"
    )
    assert "image_size" in text, text[-3000:]
    assert "8 is less than the minimum of 16" in text, text[-3000:]
    assert not (store / "runs").exists()


def test_invalid_config_fails_the_first_task_naming_the_field_and_writes_nothing(airflow_env, tmp_path):
    store = tmp_path / "store"
    conf = {"split": [0.6, 0.2, 0.1], "store_uri": f"file://{store}"}
    text = run_dag_expecting_failure(airflow_env, conf, tmp_path / "invalid.log")
    assert "split: [0.6, 0.2, 0.1] sums to 0.9000; the ratios must sum to 1" in text, text[-3000:]
    assert not (store / "runs").exists()


# ----------------------------------------------------------------------------- failed runs
def dag_run_states(env: dict, run_id: str | None = None) -> tuple[str, str, dict]:
    """(run id, the DAG run's final state, {(task, map index): (state, grid label)}) from the metadata
    DB; the newest run when `run_id` is None."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        if run_id is None:
            run_id = db.execute("SELECT run_id FROM dag_run ORDER BY id DESC LIMIT 1").fetchone()[0]
        state = db.execute("SELECT state FROM dag_run WHERE run_id = ?", (run_id,)).fetchone()[0]
        tis = db.execute(
            "SELECT task_id, map_index, state, rendered_map_index FROM task_instance WHERE run_id = ?", (run_id,)
        ).fetchall()
    return run_id, state, {(t, m): (s, label) for t, m, s, label in tis}


def safe(run_id: str) -> str:
    from cnn_tasks.context import safe_run_id

    return safe_run_id(run_id)


@pytest.fixture(scope="module")
def escaping_archive(tmp_path_factory) -> Path:
    """A valid tiny dataset zip plus one member '../escape.txt' that would write outside the folder."""
    base = tmp_path_factory.mktemp("escaping")
    folder = make_dataset(base / "images", classes=3, per_class=6, size=24, seed=3)
    archive = base / "dataset.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for image in sorted(folder.rglob("*.png")):
            zf.write(image, f"tiny/{image.relative_to(folder).as_posix()}")
        zf.writestr("../escape.txt", "outside")
    return archive


def test_make_run_fails_when_download_fails_and_says_why(airflow_env, escaping_archive, tmp_path):
    """`make run` on an archive with a '../' member: the DAG run ends failed, the command exits 1 and
    its last lines say which task failed and why, and where the partial report is."""
    store_uri = f"file://{tmp_path / 'store'}"
    env = airflow_env | {"PROFILE": "quick", "DATASET_URL": str(escaping_archive), "STORE_URI": store_uri}
    env["CNN_PARALLEL_TASKS"] = "2"  # as `make run` sets it by default
    proc = subprocess.run(
        [sys.executable, "-m", "cnn_tasks", "run"], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-4000:]
    assert "2 tasks at a time (LocalExecutor" in proc.stdout
    last = proc.stderr.strip().splitlines()[-2:]
    assert last[0].startswith("FAILED: download: DownloadError: unsafe archive member '../escape.txt'"), output[-4000:]
    assert "would write outside the extraction folder" in last[0]
    assert "Report:" not in output
    assert last[1].startswith("Partial report: file://"), last
    assert last[1].endswith("/report/index.html"), last
    run_id, state, tis = dag_run_states(airflow_env)
    assert state == "failed"
    assert tis[("download", -1)][0] == "failed"
    assert tis[("report", -1)][0] == "success"
    assert tis[("all_stages_succeeded", -1)][0] == "failed"
    assert tis[("split", -1)][0] == "upstream_failed"
    # the terminal said so as it happened; the final task's message is in Airflow's log, whose path it printed
    assert "download: FAILED after " in proc.stdout
    log_line = next(line for line in proc.stdout.splitlines() if line.startswith("  Airflow's log: "))
    airflow_log = Path(log_line.removeprefix("  Airflow's log: ").split(" (VERBOSE=1")[0]).read_text()
    assert "1 task(s) failed: download: DownloadError: unsafe archive member '../escape.txt'" in airflow_log
    assert (
        "Did not run because of it: changed_since_champion, split, rebalance, single_batch_check, train, visualize"
        in airflow_log
    )
    page = open_store(store_uri).get_text(f"runs/{safe(run_id)}/report/index.html")
    assert "This run FAILED: 1 task(s) failed." in page
    assert "DownloadError" in page


# SGD at learning rate 10 with unbounded activations and no batch norm: the loss overflows to NaN
# in the first epoch (a real user's mistake), while one batch still fits at the check's own rate.
UNSTABLE = {
    "name": "unstable",
    "description": "learning rate 10 without batch norm: diverges",
    "conv": [{"filters": 8}, {"filters": 8, "pool": "max"}, {"filters": 16}, {"filters": 16, "pool": "max"}],
    "batch_norm": False,
    "activation": "leaky_relu",
    "optimizer": "sgd",
    "learning_rate": 10.0,
    "lr_schedule": "none",
    "l2": 0.0,
    "dropout": 0.0,
    "batch_size": 4,
}
SMALL = {
    "name": "small",
    "description": "4 small conv layers",
    "conv": [{"filters": 8}, {"filters": 8, "pool": "max"}, {"filters": 16}, {"filters": 16, "pool": "max"}],
    "dropout": 0.1,
    "dense_units": 16,
    "learning_rate": 3e-3,
    "batch_size": 8,
}


def test_one_failed_training_task_fails_the_run_while_its_siblings_finish(airflow_env, served_dataset, tmp_path):
    """rebalance=none and two experiments, one of which diverges: one training task per experiment,
    labelled in the grid; the diverging one fails, its sibling trains and is saved; visualize,
    evaluate, ensemble, promote and predict do not run; the report (written) opens with the failure; the run
    ends failed and the final task names the failed training task and why."""
    url, checksum, unlabelled = served_dataset
    store_uri = f"file://{tmp_path / 'store'}"
    conf = tiny_conf(
        url, checksum, store_uri, rebalance="none", experiments=[SMALL, UNSTABLE], unlabelled_url=str(unlabelled)
    )
    text = run_dag_expecting_failure(airflow_env, conf, tmp_path / "dags_test.log")
    run_id, state, tis = dag_run_states(airflow_env)
    assert state == "failed"
    trains = {m: v for (t, m), v in tis.items() if t == "train"}
    assert trains == {0: ("success", "small / unbalanced"), 1: ("failed", "unstable / unbalanced")}, trains
    assert tis[("single_batch_check", 1)] == ("success", "unstable")
    # Airflow does not expand a mapped task over a mapped upstream with a failed index: the trained
    # sibling is saved and reported, but not visualised or evaluated in this run.
    for task in ("visualize", "evaluate", "ensemble", "promote", "predict"):
        assert tis[(task, -1)][0] == "upstream_failed", task
    assert tis[("report", -1)][0] == "success"
    assert tis[("all_stages_succeeded", -1)][0] == "failed"
    expected = "1 task(s) failed: train [unstable / unbalanced]: TrainingDivergedError: experiment 'unstable'"
    assert expected in text, text[-3000:]
    assert "Did not run because of it: visualize, evaluate, ensemble, promote, predict" in text, text[-3000:]
    store = open_store(store_uri)
    prefix = f"runs/{safe(run_id)}"
    assert sorted({k.split("/")[3] for k in store.list(f"{prefix}/models/") if k.endswith("/meta.json")}) == [
        "small__unbalanced"
    ]
    page = store.get_text(f"{prefix}/report/index.html")
    assert "This run FAILED: 1 task(s) failed." in page
    assert "train [unstable / unbalanced]</strong>: TrainingDivergedError" in page
    assert "rebalance=none: each experiment is trained once, on the data as it is" in page
    assert "predictions.json missing: the predict stage did not run" in page
    summary = store.get_json(f"{prefix}/report/summary.json")
    assert [f["task"] for f in summary["failures"]] == ["train [unstable / unbalanced]"]
    assert list(summary["models"]) == ["small__unbalanced"]


def test_a_failing_report_fails_the_run_and_make_run_says_no_report(airflow_env, escaping_archive, tmp_path):
    """The report task itself fails (its predictions record points at a CSV that was deleted from the
    store): the final task names it too, and nothing claims a report exists."""
    store = open_store(f"file://{tmp_path / 'store'}")
    run_after = "2025-03-01T00:00:00+00:00"  # fixes the run id, so the record can be planted before the run
    prefix = f"runs/{safe('manual__' + run_after)}"
    store.put_json(
        f"{prefix}/report/predictions.json",
        {
            "status": "done",
            "url": "x",
            "model": {},
            "predicted": 1,
            "rejected": 0,
            "predictions_key": f"{prefix}/report/predictions.csv",
            "rejected_key": f"{prefix}/report/predictions_rejected.csv",
        },
    )
    conf = {"profile": "quick", "dataset_url": str(escaping_archive), "store_uri": store.uri}
    code = (
        "import json, sys; from datetime import datetime\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"dag = DagBag(dag_folder={str(ROOT / 'dags')!r}).dags[{DAG_ID!r}]\n"
        f"run = dag.test(run_after=datetime.fromisoformat({run_after!r}), run_conf={conf!r})\n"
        "sys.exit(0 if run.state == 'success' else 1)\n"
    )  # what `airflow dags test` does, with run_after
    proc = subprocess.run([sys.executable, "-c", code], env=airflow_env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    run_id, state, tis = dag_run_states(airflow_env, f"manual__{run_after}")
    assert state == "failed"
    assert tis[("report", -1)][0] == "failed"
    assert "2 task(s) failed: download: DownloadError" in text, text[-3000:]
    assert "; report: StoreError: " in text
    assert "predictions.csv does not exist" in text
    assert "(no report)" in text
    line = cli.failure_line(store, safe(run_id))
    assert line.startswith("FAILED: download: DownloadError: unsafe archive member")
    assert "(also failed: report)" in line
    assert cli.report_url(store, safe(run_id)) is None
