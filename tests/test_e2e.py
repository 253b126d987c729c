"""End to end: the whole DAG through `airflow dags test` on a tiny generated dataset served over
HTTP, once with the local folder store and once with S3 on a moto server (boto3 over HTTP, the
credentials coming from the Airflow connection)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnn_tasks.storage import open_store
from tests.airflow_stack import aws_connection, served_tiny_dataset, tiny_conf
from tests.imagegen import make_dataset
from tests.s3server import moto_s3

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
MODEL_IDS = [f"{e}__{v}" for e in ("baseline", "strided_elu", "deep_swish") for v in ("unbalanced", "balanced")]


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
    env.update({
        "AIRFLOW_HOME": str(home), "PYTHONPATH": str(ROOT), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "CNN_CACHE_DIR": str(home / "cache"), "TF_CPP_MIN_LOG_LEVEL": "2",
    })
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)
    subprocess.run([airflow, "pools", "set", "training", "2", "training"], env=env, check=True,
                   capture_output=True, timeout=120)
    return env


def run_dag(env: dict, conf: dict, log: Path) -> None:
    airflow = str(Path(sys.executable).with_name("airflow"))
    with open(log, "w") as out:
        proc = subprocess.run([airflow, "dags", "test", "cnn_image_classification", "--conf", json.dumps(conf)],
                              env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1500)
    assert proc.returncode == 0, log.read_text()[-6000:]  # `dags test` exits non-zero on a failed run


def assert_complete_run(store) -> dict:
    runs = sorted({k.split("/")[1] for k in store.list("runs/")})
    assert len(runs) == 1, runs
    prefix = f"runs/{runs[0]}"
    expected = [f"{prefix}/config.json", f"{prefix}/promotion.json"]
    expected += [f"{prefix}/data/{name}" for name in
                 ("ingest.json", "manifest.csv", "rejected.csv", "split.csv", "analysis.json", "dataset.json")]
    expected += [f"{prefix}/checks/{e}/single_batch.json" for e in ("baseline", "strided_elu", "deep_swish")]
    for mid in MODEL_IDS:
        expected += [f"{prefix}/models/{mid}/{n}" for n in ("model.keras", "meta.json", "history.json", "curves.png")]
        expected += [f"{prefix}/viz/{mid}/viz.json", f"{prefix}/eval/{mid}/metrics.json"]
    expected += [f"{prefix}/eval/ensemble/ensemble.json", f"{prefix}/report/index.html", f"{prefix}/report/summary.json"]
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
        assert 0 <= test["accuracy"] <= 1 and 0 <= test["macro_f1"] <= 1, (mid, test)
    html = store.get_text(f"{prefix}/report/index.html")
    assert "Confusion matrix" in html or "confusion matrix" in html
    return summary


def test_whole_dag_with_local_store(airflow_env, served_dataset, tmp_path):
    url, checksum, unlabelled = served_dataset
    store_uri = f"file://{tmp_path / 'store'}"
    conf = tiny_conf(url, checksum, store_uri) | {"unlabelled_url": str(unlabelled)}
    run_dag(airflow_env, conf, tmp_path / "dags_test.log")
    store = open_store(store_uri)
    assert_complete_run(store)
    predictions = [k for k in store.list("runs/") if k.endswith("report/predictions.csv")]
    assert predictions, "predictions.csv missing"
    rows = store.get_text(predictions[0]).strip().splitlines()
    assert len(rows) == 1 + 6, rows  # header + six readable images; the broken one is rejected
    rejected = store.get_text(predictions[0].replace("predictions.csv", "predictions_rejected.csv"))
    assert "broken.png" in rejected, rejected


def test_whole_dag_with_s3_store_on_moto(airflow_env, served_dataset, tmp_path):
    url, checksum, _ = served_dataset
    with moto_s3("cnn-artifacts") as endpoint:
        env = airflow_env | {"AIRFLOW_CONN_AWS_DEFAULT": aws_connection(endpoint)}
        run_dag(env, tiny_conf(url, checksum, "s3://cnn-artifacts/e2e"), tmp_path / "dags_test.log")
        assert_complete_run(open_store("s3://cnn-artifacts/e2e", endpoint_url=endpoint))


def run_dag_expecting_failure(env: dict, conf: dict, log: Path) -> str:
    airflow = str(Path(sys.executable).with_name("airflow"))
    with open(log, "w") as out:
        proc = subprocess.run([airflow, "dags", "test", "cnn_image_classification", "--conf", json.dumps(conf)],
                              env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert proc.returncode != 0, text[-3000:]
    return text


def test_value_refused_by_the_param_schema_writes_nothing(airflow_env, tmp_path):
    store = tmp_path / "store"
    text = run_dag_expecting_failure(airflow_env, {"image_size": 8, "store_uri": f"file://{store}"},
                                     tmp_path / "refused.log")
    assert "image_size" in text and "8 is less than the minimum of 16" in text, text[-3000:]
    assert not (store / "runs").exists()


def test_invalid_config_fails_the_first_task_naming_the_field_and_writes_nothing(airflow_env, tmp_path):
    store = tmp_path / "store"
    conf = {"split": [0.6, 0.2, 0.1], "store_uri": f"file://{store}"}
    text = run_dag_expecting_failure(airflow_env, conf, tmp_path / "invalid.log")
    assert "split: [0.6, 0.2, 0.1] sums to 0.9000; the ratios must sum to 1" in text, text[-3000:]
    assert not (store / "runs").exists()
