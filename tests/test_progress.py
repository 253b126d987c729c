"""What `make run` prints: one line per task as it starts and ends, the training epochs and the
warnings, then the answer; Airflow's own output goes to a log file whose path is printed."""

from __future__ import annotations

import json
import logging
import os
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from cnn_tasks import cli, progress
from cnn_tasks.errors import PipelineError
from cnn_tasks.progress import TERMINAL
from cnn_tasks.storage import open_store

RUN_ID = "manual__2026-12-04T10:00:00+00:00"


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_task_reports_its_start_end_epochs_and_warnings_but_not_its_info_lines(tmp_path, monkeypatch):
    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(progress.ENV, str(path))
    log = logging.getLogger("cnn_tasks.train")
    with progress.reporting("train [baseline / balanced]"):
        log.info("epoch 1/8: acc 0.5000", extra=TERMINAL)
        log.info("an internal detail")
        log.warning("the learning rate was lowered")
    seen = events(path)
    assert [e["event"] for e in seen] == ["start", "log", "log", "end"]
    assert [progress.format_event(e).split("  ", 1)[1] for e in seen] == [
        "train [baseline / balanced]: started",
        "train [baseline / balanced]: epoch 1/8: acc 0.5000",
        "train [baseline / balanced]: WARNING: the learning rate was lowered",
        f"train [baseline / balanced]: done in {progress.duration(seen[-1]['seconds'])}",
    ]
    assert logging.getLogger("cnn_tasks").handlers == []  # the handler left with the task


@pytest.mark.parametrize(
    ("retry", "verdict"), [(False, "FAILED after"), (True, "failed, will retry after")], ids=["final", "retried"]
)
def test_a_failing_task_says_so_with_its_error(tmp_path, monkeypatch, retry, verdict):
    path = tmp_path / "progress.jsonl"
    monkeypatch.setenv(progress.ENV, str(path))
    with pytest.raises(PipelineError), progress.reporting("download", lambda exc: retry):
        raise PipelineError("'data.zip' is not a zip file")
    line = progress.format_event(events(path)[-1]).split("  ", 1)[1]
    assert line.startswith(f"download: {verdict} ")
    assert line.endswith(": PipelineError: 'data.zip' is not a zip file")


def test_without_the_variable_a_task_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with progress.reporting("split"):
        logging.getLogger("cnn_tasks.split").warning("one class has 3 images")
    assert list(tmp_path.iterdir()) == []


def test_follow_prints_lines_as_they_are_completed_and_stops(tmp_path):
    path = tmp_path / "progress.jsonl"
    printed, stop = [], threading.Event()
    first = json.dumps({"t": 0, "event": "start", "task": "split"}) + "\n"
    second = json.dumps({"t": 0, "event": "end", "task": "split", "state": "success", "seconds": 75})
    path.write_text(first + second[:20])  # the second line is half written
    thread = threading.Thread(target=progress.follow, args=(path, printed.append, stop, 0.05))
    thread.start()
    with open(path, "a") as f:
        f.write(second[20:] + "\nnot json\n")
    stop.set()
    thread.join(10)
    assert [line.split("  ", 1)[1] for line in printed] == ["split: started", "split: done in 1 min 15 s"]


@pytest.mark.parametrize(("seconds", "text"), [(4.24, "4.2 s"), (185, "3 min 05 s"), (3720, "1 h 02 min")])
def test_durations_read_as_a_person_says_them(seconds, text):
    assert progress.duration(seconds) == text


# ----------------------------------------------------------------------------- make run, Airflow faked
FAKE_AIRFLOW = """\
#!{python}
# Stands in for `airflow`: db migrate and pools set print noise; `dags test` prints a flood of log
# lines, writes the progress events a real run's tasks write, and the run's report and summary.
import json, os, sys, time
from pathlib import Path
args = sys.argv[1:]
for i in range(300):
    print(f"[2026-12-04] INFO - No tasks to run. unrunnable tasks: {{i}}")
if args[:2] != ["dags", "test"]:
    sys.exit(0)
conf = json.loads(args[args.index("--conf") + 1])
run = Path(conf["store_uri"][len("file://"):]) / "runs" / "{run_id}"
def emit(**event):
    with open(os.environ["CNN_PROGRESS_FILE"], "a") as f:
        f.write(json.dumps({{"t": time.time(), **event}}) + "\\n")
emit(event="start", task="download")
if conf.get("dataset_url", "").endswith("broken.zip"):
    emit(event="end", task="download", state="failed", seconds=2, error="DownloadError: broken.zip is not a zip file")
    (run / "failures").mkdir(parents=True)
    (run / "failures" / "download.json").write_text(json.dumps({{"status": "failed", "task": "download",
        "error": "DownloadError", "message": "broken.zip is not a zip file", "at": "1"}}))
    sys.exit(1)
emit(event="end", task="download", state="success", seconds=12.5)
emit(event="log", task="train [baseline / unbalanced]", level="INFO", message="epoch 8/8: val_acc 0.8750 | ETA 0m00s")
emit(event="log", task="train [baseline / unbalanced]", level="WARNING", message="stopped by the time budget")
(run / "report").mkdir(parents=True)
(run / "report" / "index.html").write_text("<html></html>")
(run / "report" / "summary.json").write_text(json.dumps({{"results": {{
    "best_model": {{"name": "baseline__unbalanced", "accuracy": 0.875, "macro_f1": 0.8611}},
    "best_ensemble": {{"name": "soft_all", "accuracy": 0.8958, "macro_f1": 0.89}},
    "champion": {{"decision": "promoted", "reason": "no champion yet"}},
    "warnings": ["Training split: mild class imbalance (largest/smallest = 1.20)."]}}}}))
"""


@pytest.fixture
def fake_airflow(tmp_path, monkeypatch):
    script = tmp_path / "bin" / "airflow"
    script.parent.mkdir()
    script.write_text(FAKE_AIRFLOW.format(python=sys.executable, run_id=RUN_ID))
    script.chmod(0o755)
    monkeypatch.setattr(cli, "airflow_bin", lambda: str(script))
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    monkeypatch.setenv("CNN_PARALLEL_TASKS", "1")
    return tmp_path


def conf(tmp_path: Path, dataset: str) -> dict:
    return {"profile": "quick", "dataset_url": str(tmp_path / dataset), "store_uri": f"file://{tmp_path / 'store'}"}


def test_make_run_shows_progress_and_the_answer_not_airflows_log(fake_airflow, capsys):
    assert cli.run_pipeline(conf(fake_airflow, "eurosat.zip")) == 0
    out = capsys.readouterr().out
    assert "No tasks to run" not in out
    lines = out.splitlines()
    logs = list((fake_airflow / "airflow_home" / "logs").glob("make-run-*.log"))
    assert f"  Airflow's log: {logs[0]} (VERBOSE=1 shows it here)" in lines
    assert "No tasks to run. unrunnable tasks: 299" in logs[0].read_text()
    shown = [line.split("  ", 1)[1] for line in lines if line[:2].isdigit()]
    assert shown == [
        "download: started",
        "download: done in 12.5 s",
        "train [baseline / unbalanced]: epoch 8/8: val_acc 0.8750 | ETA 0m00s",
        "train [baseline / unbalanced]: WARNING: stopped by the time budget",
    ]
    store = open_store(f"file://{fake_airflow / 'store'}")
    assert lines[-8:] == [
        "",
        "Best model:    baseline / unbalanced: test accuracy 0.8750, macro-F1 0.8611",
        "Best ensemble: soft_all: test accuracy 0.8958, macro-F1 0.8900",
        "Champion:      promoted (no champion yet)",
        "Warnings:      1",
        "  - Training split: mild class imbalance (largest/smallest = 1.20).",
        "",
        f"Report: {store.url(f'runs/{RUN_ID}/report/index.html')}",
    ]


def test_make_run_verbose_shows_airflows_own_output(fake_airflow, capfd):
    assert cli.run_pipeline(conf(fake_airflow, "eurosat.zip"), verbose=True) == 0
    out = capfd.readouterr().out
    assert "No tasks to run. unrunnable tasks: 299" in out
    assert "Airflow's log:" not in out


def test_a_failed_make_run_exits_1_naming_the_task_and_why(fake_airflow, capsys):
    assert cli.run_pipeline(conf(fake_airflow, "broken.zip")) == 1
    captured = capsys.readouterr()
    assert "download: FAILED after 2.0 s: DownloadError: broken.zip is not a zip file" in captured.out
    assert captured.err.strip().splitlines()[-2:] == [
        "FAILED: download: DownloadError: broken.zip is not a zip file",
        "No report was written.",
    ]


def test_a_run_that_fails_before_any_task_shows_the_end_of_airflows_log(fake_airflow, monkeypatch, capsys):
    broken = fake_airflow / "bin" / "airflow"
    broken.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        if sys.argv[1:3] == ["dags", "test"]:
            print("airflow.exceptions.DagNotFound: Dag id cnn_image_classification not found")
            sys.exit(1)
        """)
    )
    assert cli.run_pipeline(conf(fake_airflow, "eurosat.zip")) == 1
    err = capsys.readouterr().err
    assert "airflow.exceptions.DagNotFound: Dag id cnn_image_classification not found" in err
    assert err.strip().splitlines()[-1] == "No report was written."


def test_tensorflow_start_up_notes_stay_out_of_a_tasks_log():
    """TensorFlow's C++ INFO notes go to stderr, which Airflow's task log shows as red ERROR lines."""
    import subprocess

    code = "import cnn_tasks, tensorflow as tf; print(float(tf.reduce_sum(tf.ones((4, 4)))))"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.stdout.strip() == "16.0", proc.stderr
    assert "cpu_feature_guard" not in proc.stderr
    assert "I0000" not in proc.stderr


def test_only_abseil_info_notes_are_dropped_from_stderr_while_tensorflow_is_imported(capfd):
    """A real error written to stderr during the import still reaches the task log."""
    from cnn_tasks.quiet_tensorflow import native_notes_dropped

    with native_notes_dropped():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796417193.116945   23742 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"E0000 00:00:1796417193.116945   23742 cuda.cc:1] failed call to cuInit\n")
        os.write(2, b"Traceback (most recent call last):\n")
    assert capfd.readouterr().err.splitlines() == [
        "E0000 00:00:1796417193.116945   23742 cuda.cc:1] failed call to cuInit",
        "Traceback (most recent call last):",
    ]
