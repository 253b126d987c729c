"""The cnn_reports Airflow plugin: registration, run listing, file serving, path safety, S3, auth.

Store behaviour is tested in-process through a FastAPI TestClient with the auth dependency
overridden; authentication is tested against a real `airflow api-server` (SimpleAuthManager,
sqlite) that loads plugins/ exactly as a deployment does, with a JWT from its /auth/token.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
sys.path.insert(0, str(PLUGINS))  # Airflow puts the plugins folder on sys.path the same way

import cnn_reports  # noqa: E402

from cnn_tasks import runs_html, runs_page  # noqa: E402
from tests.helpers import TRAINING_FAILURE, build, dag_run_source, plugin_run_summary, write_plugin_run  # noqa: E402

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
OLD, NEW = "manual__2025-01-01T00_00_00_00_00", "scheduled__2025-02-01T00_00_00_00_00"


def summary(run_id: str, acc: float, f1: float, promoted: bool) -> dict:
    return {
        "run_id": run_id,
        "models": {
            "baseline__unbalanced": {"test": {"accuracy": acc - 0.1, "macro_f1": f1 - 0.1}},
            "baseline__balanced": {"test": {"accuracy": acc, "macro_f1": f1}},
            "separable_swish__balanced": {"test": None, "status": "not evaluated"},
        },
        "ensembles": None,
        "promotion": {"promoted": promoted, "reason": "beats the champion" if promoted else "below margin"},
    }


def write_runs(put) -> None:
    """Two fake runs through `put(key, bytes)`: OLD first, then NEW."""
    put(f"runs/{OLD}/report/summary.json", json.dumps(summary(OLD, 0.81, 0.79, True)).encode())
    put(f"runs/{NEW}/report/summary.json", json.dumps(summary(NEW, 0.93, 0.92, False)).encode())
    put(f"runs/{NEW}/report/index.html", b"<html><img src='../models/baseline__balanced/curves.png'></html>")
    put(f"runs/{NEW}/models/baseline__balanced/curves.png", PNG)
    put(f"runs/{NEW}/models/baseline__balanced/history.csv", b"epoch,loss\n1,0.5\n")
    put("champion.json", b'{"secret": "outside runs/"}')


@pytest.fixture
def dag_runs(monkeypatch) -> dict:
    """The DAG runs Airflow's database holds, by the run's id in the store: {"run_id", "state", "conf"}."""
    found: dict[str, dict] = {}
    monkeypatch.setattr(cnn_reports, "find_dag_run", found.get)
    return found


@pytest.fixture
def reports(monkeypatch, dag_runs):
    """A TestClient for the plugin app mounted at /cnn-reports, as the api-server mounts it."""
    cnn_reports._open_store.cache_clear()
    cnn_reports.app.dependency_overrides[cnn_reports.can_read_runs] = lambda: None  # auth: see below
    parent = FastAPI()
    parent.mount(cnn_reports.URL_PREFIX, cnn_reports.app)
    yield TestClient(parent)
    cnn_reports.app.dependency_overrides.clear()


@pytest.fixture
def local_store(tmp_path, monkeypatch):
    root = tmp_path / "store"

    def put(key, data):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)

    write_runs(put)
    now = time.time()
    os.utime(root / f"runs/{OLD}/report/summary.json", (now - 3600, now - 3600))
    (tmp_path / "outside.txt").write_text("do not serve")
    monkeypatch.setenv("CNN_STORE_URI", f"file://{root}")
    return root


# ----------------------------------------------------------------------------- registration
def test_plugin_registers_when_airflow_loads_the_plugins_folder():
    from airflow.plugins_manager import _load_plugins_from_plugin_directory

    plugins, errors = _load_plugins_from_plugin_directory(plugins_folder=str(PLUGINS))
    assert not errors
    (plugin,) = [p for p in plugins if p.name == "cnn_reports"]
    assert [a["url_prefix"] for a in plugin.fastapi_apps] == ["/cnn-reports"]
    assert plugin.external_views[0]["href"] == "/cnn-reports/"
    assert plugin.external_views[0]["destination"] in ("nav", "dag")
    assert {link.name for link in plugin.global_operator_extra_links} == {"Report", "Model folder"}


def test_extra_links_point_at_the_run_report_and_model_folder(monkeypatch):
    from airflow.models.taskinstancekey import TaskInstanceKey

    run_id = "manual__2025-03-01T10:00:00+00:00"
    report, folder = cnn_reports.RunReportLink(), cnn_reports.ModelFolderLink()
    key = TaskInstanceKey(cnn_reports.DAG_ID, "evaluate", run_id, map_index=2)
    assert report.get_link(None, ti_key=key) == (
        "/cnn-reports/runs/manual__2025-03-01T10_00_00_00_00/report/index.html"
    )
    assert folder.get_link(None, ti_key=key) == ""  # only on training tasks
    assert report.get_link(None, ti_key=key._replace(dag_id="other_dag")) == ""

    monkeypatch.setattr(cnn_reports, "_model_id", lambda ti_key: "separable_swish__balanced")  # its XCom
    train = key._replace(task_id="train")
    assert folder.get_link(None, ti_key=train) == (
        "/cnn-reports/runs/manual__2025-03-01T10_00_00_00_00/models/separable_swish__balanced/"
    )


# ----------------------------------------------------------------------------- local store
def test_lists_runs_newest_first_with_metrics(reports, local_store):
    rows = reports.get("/cnn-reports/api/runs").json()
    assert [r["run_id"] for r in rows] == [NEW, OLD]
    assert rows[0] | {"modified": None} == {
        "run_id": NEW,
        "modified": None,
        "status": "succeeded",
        "cause": None,
        "models": 3,
        "best_model": "baseline__balanced",
        "accuracy": 0.93,
        "macro_f1": 0.92,
        "promoted": False,
        "reason": "below margin",
        "decision": "not promoted",
        "decision_note": "below margin",
        "report": f"runs/{NEW}/report/index.html",
    }
    assert rows[1]["promoted"] is True
    assert rows[1]["macro_f1"] == 0.79

    page = reports.get("/cnn-reports/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.text.index(NEW) < page.text.index(OLD)
    for text in (
        "0.930",
        "0.920",
        "0.810",
        "0.790",
        "baseline__balanced",
        "below margin",
        "promoted",
        f'href="/cnn-reports/runs/{NEW}/report/index.html"',
        f'href="/cnn-reports/runs/{NEW}/">files',
    ):
        assert text in page.text


def test_pages_escape_what_the_store_holds(reports, local_store):
    hostile = "<script>alert('x')</script>"
    run = local_store / f"runs/{NEW}"
    (run / "report/summary.json").write_text(
        json.dumps(
            {
                "models": {hostile: {"test": {"accuracy": 0.5, "macro_f1": 0.4}}},
                "promotion": {"promoted": None, "reason": hostile},
            }
        )
    )
    (run / "report" / "<b>odd & name.txt").write_text("x")
    page = reports.get("/cnn-reports/").text
    assert "<script>" not in page
    assert page.count("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;") == 2  # best model and reason
    listing = reports.get(f"/cnn-reports/runs/{NEW}/report/").text
    assert "<b>" not in listing
    assert "&lt;b&gt;odd &amp; name.txt" in listing
    assert f'href="/cnn-reports/runs/{NEW}/report/%3Cb%3Eodd%20%26%20name.txt"' in listing


def write_champions(root: Path) -> None:
    """Model name `eurosat`: two promotions (0.80, then 0.90); model name `crops`: one (0.70)."""
    for name, promotions in (
        ("eurosat", [(OLD, 0.80, "20250101"), (NEW, 0.90, "20250201")]),
        ("crops", [(NEW, 0.7, "20250202")]),
    ):
        for run_id, value, stamp in promotions:
            record = {"model_name": name, "run_id": run_id, "model_id": "baseline__balanced", "metric": "macro_f1"}
            record |= {"value": value, "promoted_at": f"{stamp}T000000Z", "classes": ["a", "b"]}
            (root / f"champions/{name}/history").mkdir(parents=True, exist_ok=True)
            (root / f"champions/{name}/history/{stamp}T000000Z-{run_id}.json").write_text(json.dumps(record))
        (root / f"champions/{name}/champion.json").write_text(json.dumps(record))


def test_lists_champions_per_model_name_with_their_metric_over_time(reports, local_store):
    write_champions(local_store)
    rows = {r["model_name"]: r for r in reports.get("/cnn-reports/api/champions").json()}
    assert set(rows) == {"crops", "eurosat", "legacy"}  # legacy: champion.json from before model names
    eurosat = rows["eurosat"]
    assert (eurosat["run_id"], eurosat["value"], eurosat["promotions"]) == (NEW, 0.9, 2)
    assert [p["value"] for p in eurosat["history"]] == [0.8, 0.9]
    first, last = eurosat["history"]
    assert first["x"] < last["x"]
    assert first["y"] > last["y"]  # higher is better, drawn higher up
    assert rows["crops"]["promotions"] == 1
    assert rows["legacy"]["run_id"] is None
    page = reports.get("/cnn-reports/").text
    assert page.count("<polyline") == 2
    assert "2 promotion(s); 0.800 → 0.900" in page
    assert "secret" not in page


def test_compares_two_runs_side_by_side(reports, local_store):
    new = json.loads((local_store / f"runs/{NEW}/report/summary.json").read_text())
    new["config"] = {"epochs": 30, "seed": 42}
    (local_store / f"runs/{NEW}/report/summary.json").write_text(json.dumps(new))
    old = json.loads((local_store / f"runs/{OLD}/report/summary.json").read_text())
    old["config"] = {"epochs": 10, "seed": 42}
    (local_store / f"runs/{OLD}/report/summary.json").write_text(json.dumps(old))
    assert '<select name="a" required>' in reports.get("/cnn-reports/").text
    page = reports.get("/cnn-reports/compare", params={"a": OLD, "b": NEW})
    assert page.status_code == 200
    row = page.text[page.text.index("<td>baseline__balanced</td>") :].split("</tr>")[0]
    assert [cell.split(">")[-1] for cell in row.split("</td>")[1:4]] == ["0.810", "0.930", "0.120"]
    assert "<td>epochs</td><td>10</td><td>30</td>" in page.text
    assert "<td>seed</td>" not in page.text
    assert "beats the champion" in page.text
    assert reports.get("/cnn-reports/compare", params={"a": OLD, "b": "nope"}).status_code == 404
    assert reports.get("/cnn-reports/compare", params={"a": OLD, "b": ".."}).status_code == 400


def test_index_without_runs_says_so(reports, tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_STORE_URI", f"file://{tmp_path / 'empty'}")
    page = reports.get("/cnn-reports/")
    assert page.status_code == 200
    assert f"No run has written a report to file://{tmp_path / 'empty'} yet." in page.text
    assert reports.get("/cnn-reports/api/runs").json() == []


def test_store_settings_default_to_the_pipelines_store(monkeypatch):
    from cnn_tasks.config import PipelineConfig

    for name in ("CNN_STORE_URI", "CNN_S3_ENDPOINT_URL", "CNN_AWS_CONN_ID"):
        monkeypatch.delenv(name, raising=False)
    assert cnn_reports.store_settings() == (PipelineConfig().store_uri, None, "aws_default")


def test_plugin_reaches_the_store_only_through_its_public_interface():
    """No isinstance on back ends, no back-end classes, no private or back-end attributes of a store."""
    import ast

    from cnn_tasks import storage

    sources = [PLUGINS / "cnn_reports.py", *sorted((ROOT / "cnn_tasks").glob("runs_*.py"))]  # the plugin's modules
    trees = [ast.parse(path.read_text()) for path in sources]
    public = {name for name in dir(storage.ArtifactStore) if not name.startswith("_")} | {"uri"}
    imported = {
        alias.name
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "cnn_tasks.storage"
        for alias in node.names
    }
    assert imported.isdisjoint({"LocalStore", "S3Store"}), imported
    used = {
        node.attr
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "store"
    }
    assert used, used - public
    assert used <= public, used - public


def test_serves_report_figures_and_folders_with_content_types(reports, local_store):
    page = reports.get(f"/cnn-reports/runs/{NEW}/report/index.html")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "sandbox" in page.headers["content-security-policy"]  # no scripts from the bucket
    # The report's relative link resolves to the figure, served as a PNG.
    figure = reports.get(f"/cnn-reports/runs/{NEW}/report/../models/baseline__balanced/curves.png")
    assert figure.status_code == 200
    assert figure.headers["content-type"] == "image/png"
    assert figure.content == PNG
    csv = reports.get(f"/cnn-reports/runs/{NEW}/models/baseline__balanced/history.csv")
    assert csv.headers["content-type"].startswith("text/csv")
    listing = reports.get(f"/cnn-reports/runs/{NEW}/models/baseline__balanced/")
    assert listing.status_code == 200
    assert "curves.png" in listing.text
    assert "history.csv" in listing.text
    assert reports.get(f"/cnn-reports/runs/{NEW}/report/missing.png").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "runs/%2e%2e/champion.json",
        "runs/%2E%2E/%2e%2e/outside.txt",
        f"runs/{NEW}/%2e%2e/%2e%2e/%2e%2e/outside.txt",
        "runs/..%2fchampion.json",
        "runs/%252e%252e/champion.json",
        "runs/..%5cchampion.json",
        "runs/%2fetc%2fpasswd",
        "runs//etc/passwd",
        "runs/../champion.json",
        f"runs/{NEW}/report/..%00/index.html",
    ],
)
def test_refuses_paths_outside_the_runs_prefix(reports, local_store, path):
    response = reports.get(f"/cnn-reports/{path}")
    assert response.status_code in (400, 404)
    assert "outside runs/" not in response.text
    assert "do not serve" not in response.text


def test_refuses_symlinks_leading_out_of_the_store(reports, local_store, tmp_path):
    (local_store / f"runs/{NEW}/report/leak.txt").symlink_to(tmp_path / "outside.txt")
    assert reports.get(f"/cnn-reports/runs/{NEW}/report/leak.txt").status_code == 404


# ----------------------------------------------------------------------------- the run's own store
DAG_RUN = "manual__2025-03-01T10:00:00+00:00"  # what Airflow calls the run
RUN = "manual__2025-03-01T10_00_00_00_00"  # what the store calls it (safe_run_id)


def wants_html() -> dict:
    return {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # what a browser sends for a page


@pytest.fixture
def other_store(tmp_path, monkeypatch):
    """A second local store (the deployment may read it: CNN_REPORT_LOCAL_STORES) where only RUN wrote."""
    root = tmp_path / "other-stores" / "experiments"
    write_plugin_run(root, RUN, plugin_run_summary(RUN, 0.9, 0.9))
    build(root, {f"runs/{RUN}/models/baseline__balanced/curves.png": PNG, "runs/someone_else/report/index.html": "x"})
    monkeypatch.setenv("CNN_REPORT_LOCAL_STORES", f"file://{tmp_path / 'other-stores'}")
    return root


def test_links_of_a_run_that_chose_another_store_open_that_store(
    reports, local_store, other_store, dag_runs, monkeypatch
):
    dag_runs[RUN] = {"run_id": DAG_RUN, "state": "success", "conf": {"store_uri": f"file://{other_store}"}}
    monkeypatch.setattr(cnn_reports, "_model_id", lambda ti_key: "baseline__balanced")
    from airflow.models.taskinstancekey import TaskInstanceKey

    key = TaskInstanceKey(cnn_reports.DAG_ID, "train", DAG_RUN, map_index=0)
    report = reports.get(cnn_reports.RunReportLink().get_link(None, ti_key=key), headers=wants_html())
    assert report.status_code == 200
    assert f"Report of {RUN}" in report.text
    folder = reports.get(cnn_reports.ModelFolderLink().get_link(None, ti_key=key), headers=wants_html())
    assert folder.status_code == 200
    assert "curves.png" in folder.text
    assert f"in the run's own store file://{other_store}" in folder.text
    figure = reports.get(f"/cnn-reports/runs/{RUN}/report/../models/baseline__balanced/curves.png")
    assert figure.content == PNG
    # Nothing else of that store: another run's folder there is looked up as that run (deployment's store).
    assert reports.get("/cnn-reports/runs/someone_else/report/index.html").status_code == 404
    assert reports.get(f"/cnn-reports/runs/{RUN}/%2e%2e/someone_else/report/index.html").status_code == 400
    # A run whose conf names the deployment's own store, or none, reads the deployment's store.
    dag_runs[NEW] = {"run_id": "scheduled__2025-02-01T00:00:00+00:00", "state": "success", "conf": {}}
    assert reports.get(f"/cnn-reports/runs/{NEW}/models/baseline__balanced/curves.png").content == PNG


def test_a_run_store_the_deployment_may_not_read_gets_a_page_saying_why(
    reports, local_store, tmp_path, dag_runs, monkeypatch
):
    elsewhere = tmp_path / "elsewhere"
    write_plugin_run(elsewhere, RUN, plugin_run_summary(RUN, 0.9, 0.9))
    dag_runs[RUN] = {"run_id": DAG_RUN, "state": "success", "conf": {"store_uri": f"file://{elsewhere}"}}
    page = reports.get(f"/cnn-reports/runs/{RUN}/report/index.html", headers=wants_html())
    assert page.status_code == 403
    assert page.headers["content-type"].startswith("text/html")
    assert f"Report of {RUN}" not in page.text
    assert "CNN_REPORT_LOCAL_STORES" in page.text  # what to do
    assert f"store_uri in the conf of Airflow run {DAG_RUN}" in page.text  # how the store was chosen
    api = reports.get(f"/cnn-reports/runs/{RUN}/report/index.html")
    assert api.status_code == 403
    assert "CNN_REPORT_LOCAL_STORES" in api.json()["detail"]

    # An S3 store behind an endpoint other than the deployment's: the deployment's credentials stay home.
    monkeypatch.setenv("CNN_S3_ENDPOINT_URL", "http://minio:9000")
    opened = []
    monkeypatch.setattr(cnn_reports, "_open_store", lambda *args: opened.append(args))
    conf = {"store_uri": "s3://loot/x", "s3_endpoint_url": "http://attacker.example:9000", "aws_conn_id": "admin"}
    dag_runs[RUN] = {"run_id": DAG_RUN, "state": "success", "conf": conf}
    page = reports.get(f"/cnn-reports/runs/{RUN}/report/index.html", headers=wants_html())
    assert page.status_code == 403
    assert "http://attacker.example:9000" in page.text
    assert opened == []


def test_a_run_without_a_report_gets_a_page_saying_why_and_what_to_do(reports, local_store, dag_runs):
    from cnn_tasks import failures

    prefix = "runs/manual__2025-04-01T00_00_00_00_00"
    build(local_store, {f"{prefix}/config.json": "{}", f"{prefix}/data/dataset.json": "{}"})
    dag_runs[prefix[5:]] = {"run_id": "manual__2025-04-01T00:00:00+00:00", "state": "running", "conf": {}}
    page = reports.get(f"/cnn-reports/{prefix}/report/index.html", headers=wants_html())
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "This run has no report yet" in page.text
    assert "The run is still running" in page.text
    assert '{"detail"' not in page.text
    assert f'href="/cnn-reports/{prefix}/">The run' in page.text  # its files

    store = cnn_reports.get_store()
    failures.record_failure(store, prefix, "split", -1, None, ValueError("class 'gamma' has 2 images"), 1, True)
    dag_runs[prefix[5:]]["state"] = "failed"
    page = reports.get(f"/cnn-reports/{prefix}/report/index.html", headers=wants_html())
    assert "see the report task&#39;s log" in page.text
    assert "split: ValueError: class &#39;gamma&#39; has 2 images" in page.text  # the recorded failure
    assert "config.json" not in page.text  # only folders are named: data/, failures/
    assert "data/, failures/" in page.text

    nothing = reports.get("/cnn-reports/runs/never_ran/report/index.html", headers=wants_html())
    assert nothing.status_code == 404
    assert "This run wrote nothing to its store" in nothing.text
    api = reports.get("/cnn-reports/runs/never_ran/report/index.html")  # an API client: JSON that says why
    assert api.json()["detail"].startswith("This run wrote nothing to its store")
    unknown = reports.get("/cnn-reports/no-such-page", headers=wants_html())
    assert unknown.status_code == 404
    assert "<h1>Not found</h1>" in unknown.text


def test_a_run_store_that_cannot_be_opened_gets_a_503_page(reports, local_store, dag_runs, monkeypatch):
    from cnn_tasks.storage import StoreUnavailable

    def unreachable(*args):
        raise StoreUnavailable("cannot reach bucket 'cnn' at http://minio:9000: connection refused")

    opens = cnn_reports._open_store
    monkeypatch.setattr(cnn_reports, "_open_store", unreachable)
    dag_runs[RUN] = {"run_id": DAG_RUN, "state": "success", "conf": {"store_uri": "s3://cnn/x", "aws_conn_id": "ops"}}
    page = reports.get(f"/cnn-reports/runs/{RUN}/report/index.html", headers=wants_html())
    assert page.status_code == 503
    assert "connection refused" in page.text
    assert "The run wrote with the connection &#39;ops&#39;" in page.text
    assert reports.get("/cnn-reports/", headers=wants_html()).status_code == 503

    monkeypatch.setattr(cnn_reports, "_open_store", opens)  # the deployment's store opens, then fails
    monkeypatch.setattr(runs_page, "summaries", lambda store: unreachable())
    page = reports.get("/cnn-reports/", headers=wants_html())
    assert page.status_code == 503
    assert "connection refused" in page.text
    assert reports.get("/cnn-reports/api/runs").status_code == 503


# ----------------------------------------------------------------------------- the runs page
FAILED_RUN = "manual__2025-03-02T00_00_00_00_00"


def test_failed_runs_show_failed_and_the_cause_their_report_recorded(reports, local_store):
    also = {"task": "evaluate [baseline / balanced]", "error": "StoreError", "message": "x"}
    summary = plugin_run_summary(FAILED_RUN, failures=[TRAINING_FAILURE, also])
    write_plugin_run(local_store, FAILED_RUN, summary)
    rows = {r["run_id"]: r for r in reports.get("/cnn-reports/api/runs").json()}
    assert rows[FAILED_RUN]["status"] == "failed"
    assert rows[FAILED_RUN]["cause"] == (
        "train [baseline / balanced]: TrainingDivergedError: baseline__balanced diverged: the loss was NaN at "
        "epoch 3; lower the learning rate (also failed: evaluate [baseline / balanced])"
    )
    assert rows[NEW]["status"] == "succeeded"
    page = reports.get("/cnn-reports/").text
    row = page[page.index(f">{FAILED_RUN}</a>") :].split("</tr>")[0]
    assert '<span class="failed">FAILED</span>' in row
    assert "TrainingDivergedError: baseline__balanced diverged: the loss was NaN at epoch 3" in row
    assert "none: the run failed" in row  # no champion decision, and why
    assert "<td>baseline__balanced</td>" not in row  # no best model without test scores
    assert rows[FAILED_RUN]["best_model"] is None
    assert '<span class="succeeded">SUCCEEDED</span>' in page


def test_the_champion_decision_is_said_once(reports, local_store):
    reason = "not promoted: model 'eurosat' has a champion (run x) trained on other classes"
    summary = plugin_run_summary(FAILED_RUN, 0.5, 0.5, promotion={"promoted": False, "reason": reason})
    write_plugin_run(local_store, FAILED_RUN, summary)
    page = reports.get("/cnn-reports/").text
    assert '<span class="no">not promoted</span>: model &#39;eurosat&#39; has a champion' in page
    assert page.count("not promoted") == 2  # this run and NEW ("below margin"), once each


def test_times_are_shown_in_one_readable_format(reports, local_store):
    import re

    write_champions(local_store)
    record = json.loads((local_store / "champions/eurosat/champion.json").read_text())
    record["promoted_at"] = "20261204T125101730963Z"  # as promote.utc_stamp writes it
    (local_store / "champions/eurosat/champion.json").write_text(json.dumps(record))
    stamp = datetime(2026, 12, 4, 9, 30, tzinfo=UTC).timestamp()
    os.utime(local_store / f"runs/{NEW}/report/summary.json", (stamp, stamp))
    page = reports.get("/cnn-reports/").text
    assert "<td>2026-12-04 12:51 UTC</td>" in page
    assert "<td>2026-12-04 09:30 UTC</td>" in page  # when NEW's report was written
    assert "(2025-02-01 00:00 UTC)" in page  # a point of the chart
    assert re.findall(r"\d{8}T\d{6}|\d{4}-\d\d-\d\dT\d\d:", page) == []  # no raw stamp or ISO time left
    assert runs_html.readable_time("2025-02-01T10:20:30.5+02:00") == "2025-02-01 08:20 UTC"
    assert runs_html.readable_time(None) == "–"


def selected(page: str, name: str) -> list[str]:
    """The options pre-selected in the compare form's select `name`."""
    import re

    form = page[page.index(f'<select name="{name}"') :].split("</select>")[0]
    return re.findall(r'<option value="([^"]*)"[^>]* selected', form)


def test_the_compare_form_does_not_preselect_a_failed_run(reports, local_store):
    write_plugin_run(local_store, FAILED_RUN, plugin_run_summary(FAILED_RUN, failures=[TRAINING_FAILURE]))
    page = reports.get("/cnn-reports/").text
    assert page.index(FAILED_RUN) < page.index(NEW)  # the newest run failed
    assert selected(page, "b") == [NEW]
    assert selected(page, "a") == [OLD]
    assert f'<option value="{FAILED_RUN}">{FAILED_RUN} (failed)</option>' in page

    (local_store / f"runs/{OLD}/report/summary.json").unlink()  # one run left that succeeded
    page = reports.get("/cnn-reports/").text
    assert selected(page, "b") == [NEW]
    assert selected(page, "a") == [""]  # "choose a run", which the browser will not submit
    assert '<option value="" selected disabled>choose a run</option>' in page


def test_comparing_runs_with_different_classes_says_so_above_the_score_differences(reports, local_store):
    write_plugin_run(local_store, "a", plugin_run_summary("a", 0.8, 0.8, classes=["cat", "dog", "owl"]))
    write_plugin_run(local_store, "b", plugin_run_summary("b", 0.9, 0.9, classes=["cat", "dog", "fox", "eel"]))
    write_plugin_run(local_store, "c", plugin_run_summary("c", 0.9, 0.9, classes=["dog", "owl", "cat"]))
    page = reports.get("/cnn-reports/compare", params={"a": "a", "b": "b"}).text
    note = "A has 3 classes, B 4: B adds fox, eel; B drops owl"
    assert note in page
    assert page.index("The runs classify different classes") < page.index("<th>Model or ensemble</th>")
    same = reports.get("/cnn-reports/compare", params={"a": "a", "b": "c"}).text  # the same classes, reordered
    assert "different classes" not in same
    failed = reports.get("/cnn-reports/compare", params={"a": "a", "b": NEW}).text
    assert "different classes" not in failed  # NEW recorded no classes: nothing to say


def test_the_run_files_page_groups_files_by_stage(reports, local_store):
    files = {f"runs/{NEW}/data/shards/train-{i:03}.npz": "x" for i in range(120)}
    for model in ("baseline__balanced", "baseline__unbalanced"):
        files |= {f"runs/{NEW}/models/{model}/ckpt-{i:02}.keras": "x" for i in range(40)}
        files |= {f"runs/{NEW}/viz/{model}/filters-{i:02}.png": "x" for i in range(30)}
        files[f"runs/{NEW}/eval/{model}/metrics.json"] = "{}"
    files |= {f"runs/{NEW}/config.json": "{}", f"runs/{NEW}/failures/split.json": "{}"}
    build(local_store, files)
    page = reports.get(f"/cnn-reports/runs/{NEW}/", headers=wants_html()).text
    assert "268 file(s)" in page
    sections = [
        (s.split("</strong>")[0], s.split('<span class="no">')[1].split(" file(s)")[0])
        for s in page.split("<summary><strong>")[1:]
    ]
    assert sections == [
        ("(this folder)", "1"),
        ("data", "120"),
        ("models/baseline__balanced", "42"),
        ("models/baseline__unbalanced", "40"),
        ("viz/baseline__balanced", "30"),
        ("viz/baseline__unbalanced", "30"),
        ("eval/baseline__balanced", "1"),
        ("eval/baseline__unbalanced", "1"),
        ("report", "2"),
        ("failures", "1"),
    ]
    opened = [s.split("<summary><strong>")[1].split("</strong>")[0] for s in page.split("<details open>")[1:]]
    assert opened == ["(this folder)", "report", "failures"]  # the rest folded
    assert page.count("<li>") == 268
    assert f'<a href="/cnn-reports/runs/{NEW}/models/baseline__balanced/">folder</a>' in page
    assert f'<a href="/cnn-reports/runs/{NEW}/data/shards/train-007.npz">shards/train-007.npz</a>' in page
    small = reports.get(f"/cnn-reports/runs/{NEW}/models/baseline__balanced/", headers=wants_html()).text
    assert small.count("<details open>") == 1  # a small folder: its one section open


# ----------------------------------------------------------------------------- S3 store
def test_s3_store_through_the_airflow_connection(reports, monkeypatch):
    import boto3

    from tests.s3server import moto_s3

    with moto_s3("cnn-artifacts") as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        write_runs(lambda key, data: s3.put_object(Bucket="cnn-artifacts", Key=f"team/{key}", Body=data))
        # Credentials and endpoint come from the Airflow connection, as in the deployment.
        monkeypatch.setenv(
            "AIRFLOW_CONN_CNN_S3",
            json.dumps(
                {
                    "conn_type": "aws",
                    "login": "testing",
                    "password": "testing",
                    "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
                }
            ),
        )
        monkeypatch.setenv("CNN_AWS_CONN_ID", "cnn_s3")
        monkeypatch.setenv("CNN_STORE_URI", "s3://cnn-artifacts/team/")
        monkeypatch.delenv("CNN_S3_ENDPOINT_URL", raising=False)

        rows = reports.get("/cnn-reports/api/runs").json()
        assert {r["run_id"] for r in rows} == {NEW, OLD}
        assert {r["run_id"]: r["accuracy"] for r in rows} == {NEW: 0.93, OLD: 0.81}
        page = reports.get(f"/cnn-reports/runs/{NEW}/report/index.html")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        figure = reports.get(f"/cnn-reports/runs/{NEW}/models/baseline__balanced/curves.png")
        assert figure.headers["content-type"] == "image/png"
        assert figure.content == PNG
        assert "curves.png" in reports.get(f"/cnn-reports/runs/{NEW}/models/baseline__balanced/").text
        assert reports.get(f"/cnn-reports/runs/{NEW}/nope.png").status_code == 404
        assert reports.get("/cnn-reports/runs/%2e%2e/champion.json").status_code == 400


def test_a_run_that_chose_another_s3_store_is_read_with_the_deployments_connection(reports, dag_runs, monkeypatch):
    import boto3

    from tests.s3server import moto_s3

    with moto_s3("cnn-artifacts") as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        put = lambda key, data: s3.put_object(Bucket="cnn-artifacts", Key=f"experiments/{key}", Body=data)  # noqa: E731
        put(f"runs/{RUN}/report/index.html", f"<html>Report of {RUN}</html>".encode())
        put(f"runs/{RUN}/models/baseline__balanced/curves.png", PNG)
        connection = {"conn_type": "aws", "login": "testing", "password": "testing"}
        connection["extra"] = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        monkeypatch.setenv("AIRFLOW_CONN_CNN_S3", json.dumps(connection))
        monkeypatch.setenv("CNN_AWS_CONN_ID", "cnn_s3")
        monkeypatch.setenv("CNN_STORE_URI", "s3://cnn-artifacts/team/")
        monkeypatch.delenv("CNN_S3_ENDPOINT_URL", raising=False)
        # The trigger form's conf: another prefix, the deployment's endpoint, a connection the plugin never uses.
        conf = {"store_uri": "s3://cnn-artifacts/experiments", "s3_endpoint_url": endpoint, "aws_conn_id": "nope"}
        dag_runs[RUN] = {"run_id": DAG_RUN, "state": "success", "conf": conf}
        page = reports.get(f"/cnn-reports/runs/{RUN}/report/index.html", headers=wants_html())
        assert page.status_code == 200
        assert f"Report of {RUN}" in page.text
        assert reports.get(f"/cnn-reports/runs/{RUN}/models/baseline__balanced/curves.png").content == PNG

        dag_runs[RUN]["conf"] = {"store_uri": "s3://no-such-bucket/x"}
        page = reports.get(f"/cnn-reports/runs/{RUN}/report/index.html", headers=wants_html())
        assert page.status_code == 503
        assert "bucket &#39;no-such-bucket&#39; does not exist" in page.text
        assert "s3://no-such-bucket/x" in page.text


# ----------------------------------------------------------------------------- auth (live api-server)
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def api_env(tmp_path_factory) -> dict:
    """The environment of the live api-server: a local store with two runs, a second local store
    it may also read (CNN_REPORT_LOCAL_STORES), two users, a sqlite database."""
    home = tmp_path_factory.mktemp("airflow")
    store = home / "store"
    write_runs(
        lambda key, data: ((store / key).parent.mkdir(parents=True, exist_ok=True), (store / key).write_bytes(data))
    )
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": "admin-pw", "viewer": "viewer-pw"}))
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": "test-only-secret",
        "AIRFLOW__API__WORKERS": "1",
        "CNN_STORE_URI": f"file://{store}",
        "CNN_REPORT_LOCAL_STORES": str(home / "other-stores"),
    }


@pytest.fixture(scope="module")
def api_server(api_env):
    """A real `airflow api-server` with this plugins folder, a local store and two users."""
    env, home = api_env, Path(api_env["AIRFLOW_HOME"])
    port = _free_port()
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=180)
    log = open(home / "api-server.log", "w")
    command = [airflow, "api-server", "--apps", "core", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("api-server did not start:\n" + (home / "api-server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _token(base: str, username: str, password: str) -> str:
    response = httpx.post(f"{base}/auth/token", json={"username": username, "password": password})
    assert response.status_code == 201, response.text
    return response.json()["access_token"]


def test_unauthenticated_requests_are_refused(api_server):
    for path in ("/cnn-reports/", "/cnn-reports/api/runs", f"/cnn-reports/runs/{NEW}/report/index.html"):
        assert httpx.get(api_server + path).status_code == 401
    browser = httpx.get(api_server + "/cnn-reports/", headers={"Accept": "text/html"})
    assert browser.status_code == 303
    assert browser.headers["location"].startswith("/auth/login?next=")
    forged = httpx.get(api_server + "/cnn-reports/api/runs", cookies={"_token": "not-a-jwt"})
    assert forged.status_code in (401, 403)


def test_ui_session_token_opens_the_page_and_files(api_server):
    token = _token(api_server, "viewer", "viewer-pw")
    cookies = {"_token": token}  # what the UI's login leaves in the browser
    page = httpx.get(f"{api_server}/cnn-reports/", cookies=cookies)
    assert page.status_code == 200
    assert page.text.index(NEW) < page.text.index(OLD)
    figure = httpx.get(
        f"{api_server}/cnn-reports/runs/{NEW}/models/baseline__balanced/curves.png",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert figure.status_code == 200
    assert figure.headers["content-type"] == "image/png"
    assert httpx.get(f"{api_server}/cnn-reports/runs/%2e%2e/champion.json", cookies=cookies).status_code == 400


def test_api_server_exposes_the_page_and_links_to_the_ui(api_server):
    token = _token(api_server, "admin", "admin-pw")
    plugins = httpx.get(f"{api_server}/api/v2/plugins", headers={"Authorization": f"Bearer {token}"}).json()
    (plugin,) = [p for p in plugins["plugins"] if p["name"] == "cnn_reports"]
    assert plugin["external_views"][0]["url_route"] == "cnn-reports"
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/cnn-reports"
    assert len(plugin["global_operator_extra_links"]) == 2


def test_report_links_follow_the_store_in_the_runs_conf_in_airflows_database(api_server, api_env):
    """The run is looked up in the api-server's own database by the store's form of its id."""
    other = Path(api_env["CNN_REPORT_LOCAL_STORES"]) / "experiments"
    write_plugin_run(other, RUN, plugin_run_summary(RUN, 0.9, 0.9))
    record = dag_run_source(cnn_reports.DAG_ID, DAG_RUN, {"store_uri": f"file://{other}"})
    subprocess.run([sys.executable, "-c", record], env=api_env, check=True, capture_output=True, timeout=120)
    cookies = {"_token": _token(api_server, "viewer", "viewer-pw")}
    page = httpx.get(f"{api_server}/cnn-reports/runs/{RUN}/report/index.html", cookies=cookies, headers=wants_html())
    assert page.status_code == 200
    assert f"Report of {RUN}" in page.text
    missing = httpx.get(f"{api_server}/cnn-reports/runs/{RUN}/models/", cookies=cookies, headers=wants_html())
    assert missing.status_code == 404
    assert "This model&#39;s files are not there" in missing.text
    assert f"store_uri in the conf of Airflow run {DAG_RUN}" in missing.text
