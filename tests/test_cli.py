"""The command line (`python -m cnn_tasks`): settings files validated as the form validates them,
overridden by the `make run` variables, failing before Airflow with the file and the field; the
latest report of a store; predictions with a store's champion; `make run CONF=...` passes it on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnn_tasks import cli
from cnn_tasks.config import PipelineConfig
from cnn_tasks.errors import PipelineError
from cnn_tasks.storage import open_store

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_dataset_128px.yaml"


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cnn_tasks", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_readme_example_validates_as_a_128px_run_on_the_users_data():
    proc = run_cli("validate", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    home_zip = Path("~/data/my_photos.zip").expanduser()
    assert proc.stdout.strip() == (f"{EXAMPLE}: valid (standard profile, 2 experiment(s), 128 px, dataset {home_zip})")
    conf = cli.build_conf(EXAMPLE, overrides={})
    config = PipelineConfig.from_dict(conf)
    assert config.image_size == 128
    assert config.dataset_checksum is None
    assert [e.name for e in config.experiments] == ["vgg128", "strided128"]
    assert EXAMPLE.read_text().strip() in (ROOT / "README.md").read_text()  # the README shows this file


def test_a_json_settings_file_is_read_like_yaml(tmp_path):
    path = write(tmp_path, "s.json", json.dumps({"image_size": 96, "classes": ["a", "b"], "epochs": 3}))
    conf = cli.build_conf(path, overrides={})
    assert {k: conf[k] for k in ("image_size", "classes", "epochs")} == {
        "image_size": 96,
        "classes": ["a", "b"],
        "epochs": 3,
    }
    assert conf["profile"] == "standard"
    assert conf["store_uri"] == f"file://{ROOT}/artifacts"


@pytest.mark.parametrize(
    "text, message",
    [
        ("image_size: 1024\n", "image_size: 1024 is outside 16..512"),
        (
            "experiments:\n  - name: deep\n    conv: [{filters: 8}, {filters: 8}, {filters: 4096}, {filters: 8}]\n",
            "experiments[0].conv[2].filters: 4096 is outside 1..2048",
        ),
        ("split: [0.5, 0.2, 0.1]\n", "split: [0.5, 0.2, 0.1] sums to 0.8000; the ratios must sum to 1"),
        ("colour: true\n", "colour: unknown setting"),
        ("seed: 2024-01-01\n", "seed: datetime.date(2024, 1, 1) is not a plain value"),
        ("image_size: [128\n", "not valid YAML or JSON"),
        ("- image_size\n", "must be a mapping of setting names to values"),
    ],
)
def test_an_invalid_file_fails_naming_the_file_and_the_field(tmp_path, text, message):
    path = write(tmp_path, "bad.yaml", text)
    proc = run_cli("validate", str(path))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"Invalid setting: {path}: {message}"), proc.stderr


def test_a_missing_file_is_named(tmp_path):
    proc = run_cli("validate", str(tmp_path / "nowhere.yaml"))
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        == f"Invalid setting: {tmp_path / 'nowhere.yaml'}: cannot be read: No such file or directory"
    )


def test_make_run_variables_given_explicitly_override_the_file(tmp_path, monkeypatch):
    path = write(
        tmp_path,
        "s.yaml",
        "profile: standard\nimage_size: 128\ndataset_url: https://example.org/a.zip\nstore_uri: file:///from/file\n",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROFILE", "quick")
    monkeypatch.setenv("DATASET_URL", "data/photos.zip")
    monkeypatch.setenv("STORE_URI", "")  # `make run` passes every variable; empty means not given
    monkeypatch.delenv("DATASET_CHECKSUM", raising=False)
    conf = cli.build_conf(path)
    assert conf == {
        "profile": "quick",
        "image_size": 128,
        "dataset_url": str(tmp_path / "data" / "photos.zip"),
        "store_uri": "file:///from/file",
    }
    config = PipelineConfig.from_dict(conf, given=set(conf))
    assert config.image_size == 128  # the file's explicit value wins over the quick profile's 32
    assert config.epochs == 8  # the quick profile fills what nobody set


def test_an_override_is_validated_and_named_with_the_file(tmp_path):
    path = write(tmp_path, "s.yaml", "image_size: 128\n")
    with pytest.raises(cli.SettingsError) as caught:
        cli.build_conf(path, overrides={"PROFILE": "fast"})
    assert str(caught.value) == f"{path}: profile: 'fast' is not one of 'standard' or 'quick'"


def test_run_with_an_invalid_file_fails_before_airflow_starts(tmp_path, monkeypatch):
    path = write(tmp_path, "s.yaml", "epochs: 0\n")
    monkeypatch.setattr(cli, "run_pipeline", lambda conf: pytest.fail(f"the pipeline was started: {conf}"))
    assert cli.main(["run", "--conf", str(path)]) == 1
    proc = run_cli("run", env={"PATH": "/usr/bin:/bin", "CONF": str(path), "PROFILE": "quick"})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"Invalid setting: {path}: epochs: 0 is outside 1..1000"
    assert "Running" not in proc.stdout


@pytest.mark.parametrize("parallel", [None, "1", "3"])
def test_make_run_passes_conf_and_the_variables_to_the_cli(parallel):
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", "run", "CONF=my.yaml", "PROFILE=quick"]
        + ([f"PARALLEL={parallel}"] if parallel else []),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        # Run under `make test`, the parent make's flags would print "Leaving directory" lines.
        env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")},
    )
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.split("CONF=", 1)[-1].replace("\\\n", "")
    line = "CONF=" + " ".join(line.split())
    assert line.startswith('CONF="my.yaml" PROFILE="quick" DATASET_URL="" '), line
    assert line.endswith("-m cnn_tasks run"), line
    assert 'STORE_URI=""' in line
    assert f'CNN_PARALLEL_TASKS="{parallel or 2}"' in line  # 2 at a time unless PARALLEL says otherwise


def test_report_prints_the_latest_runs_report(tmp_path):
    store = open_store(f"file://{tmp_path / 'store'}")
    for run_id in (
        "scheduled__2025-01-02T00_00_00_00_00",
        "manual__2025-03-01T10_00_00_00_00",
        "manual__2025-02-01T00_00_00_00_00",
    ):
        store.put_text(f"runs/{run_id}/report/index.html", "<html></html>")
    store.put_text("runs/manual__2025-04-01T00_00_00_00_00/data/dataset.json", "{}")  # no report yet
    proc = run_cli("report", "--store", store.uri)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "manual__2025-03-01T10_00_00_00_00: file://"
        f"{tmp_path / 'store'}/runs/manual__2025-03-01T10_00_00_00_00/report/index.html"
    )


def test_report_on_a_store_without_runs_says_so(tmp_path):
    proc = run_cli("report", "--store", f"file://{tmp_path / 'empty'}")
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"no report in file://{tmp_path / 'empty'} yet"


def champion_record(run_id: str, name: str) -> dict:
    return {
        "model_name": name,
        "run_id": run_id,
        "model_id": "tiny__unbalanced",
        "model_key": f"champions/{name}/models/{run_id}/model.keras",
        "classes": ["x", "y", "z"],
        "source_model_key": f"runs/{run_id}/models/tiny__unbalanced/model.keras",
    }


@pytest.fixture
def champion_store(tmp_path):
    """A store whose model name `tiny` has a champion (a real tiny model) trained on CLASSES."""
    from tests.helpers import CLASSES, tiny_model

    store = open_store(f"file://{tmp_path / 'store'}")
    tiny_model().save(tmp_path / "m.keras")
    store.put_file("champions/tiny/models/r1/model.keras", tmp_path / "m.keras")
    store.put_json("runs/r1/models/tiny__unbalanced/meta.json", {"classes": CLASSES})
    store.put_json("champions/tiny/champion.json", champion_record("r1", "tiny"))
    return store


def test_predict_uses_the_champion_and_the_meta_json_it_was_trained_with(champion_store, tmp_path, capsys):
    from tests.helpers import CLASSES
    from tests.imagegen import make_dataset

    folder = make_dataset(tmp_path / "images", classes=3, per_class=2, size=20, seed=3)
    out = tmp_path / "preds.csv"
    assert cli.main(["predict", str(folder), "--store", champion_store.uri, "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert len(rows) == 1 + 6
    assert {row.split(",")[1] for row in rows[1:]} <= set(CLASSES)  # from meta.json, not the record
    assert "champion of tiny: tiny__unbalanced from run r1" in capsys.readouterr().out


def test_predict_with_several_model_names_needs_one(champion_store, tmp_path):
    champion_store.put_json("champions/other/champion.json", champion_record("r2", "other"))
    proc = run_cli("predict", str(tmp_path), "--store", champion_store.uri)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"PipelineError: {champion_store.uri} has champions for other, tiny: choose one with --model-name"
    )
    proc = run_cli("predict", str(tmp_path), "--store", champion_store.uri, "--model-name", "nope")
    assert proc.stderr.strip() == (
        f"PipelineError: no champion named 'nope' in {champion_store.uri}; it has other, tiny"
    )


def test_predict_without_a_champion_says_so(tmp_path):
    proc = run_cli("predict", str(tmp_path), "--store", f"file://{tmp_path / 'store'}")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"PipelineError: no champion in file://{tmp_path / 'store'}: no model has been promoted in this store yet"
    )


# ----------------------------------------------------------------------------- tensorboard
def write_events(folder: Path, tag: str, values: list[float]) -> None:
    """A TensorBoard event file of per-epoch scalars, written with tensorboard's own writer."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(folder))
    for step, value in enumerate(values):
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
        writer.add_event(event_pb2.Event(step=step, wall_time=1.0 + step, summary=summary))
    writer.close()


RUN = "manual__2025-03-01T10:00:00+00:00"  # as Airflow shows it; the store's folder is its safe form
SAFE_RUN = "manual__2025-03-01T10_00_00_00_00"


@pytest.fixture
def store_with_logs(tmp_path):
    store = open_store(f"file://{tmp_path / 'store'}")
    for mid in ("small__balanced", "small__unbalanced"):
        for split in ("train", "validation"):
            write_events(tmp_path / "events" / mid / split, "epoch_loss", [0.9, 0.5, 0.3])
            (event,) = (tmp_path / "events" / mid / split).iterdir()
            store.put_file(f"runs/{SAFE_RUN}/models/{mid}/tensorboard/{split}/{event.name}", event)
        store.put_json(f"runs/{SAFE_RUN}/models/{mid}/meta.json", {})
    store.put_text(f"runs/{SAFE_RUN}/report/index.html", "<html></html>")
    return store


def test_a_runs_tensorboard_logs_are_downloaded_per_model(store_with_logs, tmp_path):
    assert cli.download_tensorboard_logs(store_with_logs, RUN, tmp_path / "logs") == [
        "small__balanced",
        "small__unbalanced",
    ]
    files = sorted(p.relative_to(tmp_path / "logs").parts[:2] for p in (tmp_path / "logs").rglob("*") if p.is_file())
    assert files == [
        ("small__balanced", "train"),
        ("small__balanced", "validation"),
        ("small__unbalanced", "train"),
        ("small__unbalanced", "validation"),
    ]
    with pytest.raises(cli.PipelineError, match="holds no TensorBoard logs: no model of run other was trained"):
        cli.download_tensorboard_logs(store_with_logs, "other", tmp_path / "none")


def test_tensorboard_serves_the_latest_runs_logs(store_with_logs, tmp_path):
    """`make tensorboard` without RUN: the real TensorBoard server answers with every model's scalars."""
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnn_tasks", "tensorboard", "--store", store_with_logs.uri, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's Ctrl+C reaches it
        # as from a terminal: a shell running this suite in the background makes its children ignore SIGINT
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline, tags = time.monotonic() + 120, {}
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as r:
                    tags = json.load(r)
                if len(tags) == 4:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert sorted(tags) == [
            "small__balanced/train",
            "small__balanced/validation",
            "small__unbalanced/train",
            "small__unbalanced/validation",
        ], tags
        assert "epoch_loss" in tags["small__balanced/train"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl+C: the command and the server it started
        try:
            output = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # leave no server behind
            raise
    assert proc.returncode == 0, output
    assert output.startswith(f"run {SAFE_RUN}: TensorBoard logs of small__balanced, small__unbalanced"), output


def test_a_bad_parallel_setting_fails_before_airflow_starts(monkeypatch, capsys):
    monkeypatch.setenv("CNN_PARALLEL_TASKS", "two")
    assert cli.main(["run", "--conf", str(ROOT / "examples" / "my_dataset_128px.yaml")]) == 1
    err = capsys.readouterr()
    assert (
        err.err.strip()
        == "Invalid setting: CNN_PARALLEL_TASKS: 'two' is not a whole number (make run PARALLEL=N sets it)"
    )
    assert "Running" not in err.out


def test_one_task_at_a_time_needs_no_executor_or_api_server():
    with cli.execution_api(1) as env:
        assert env is None


def test_an_api_server_that_exits_or_never_answers_fails_the_run_naming_its_log(tmp_path):
    log = tmp_path / "api-server.log"
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    exited.wait()
    with pytest.raises(PipelineError, match=rf"exited with status 3: see {log}"):
        cli.wait_for_http("http://127.0.0.1:9/", exited, 10, log)
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    with pytest.raises(PipelineError, match=rf"did not answer on http://127.0.0.1:9/ within 2 s: see {log}"):
        cli.wait_for_http("http://127.0.0.1:9/", silent, 2, log)
    assert silent.poll() is not None  # stopped, not left behind
