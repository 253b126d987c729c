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
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
sys.path.insert(0, str(PLUGINS))  # Airflow puts the plugins folder on sys.path the same way

import cnn_reports  # noqa: E402

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
def reports(monkeypatch):
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
        "models": 3,
        "best_model": "baseline__balanced",
        "accuracy": 0.93,
        "macro_f1": 0.92,
        "promoted": False,
        "reason": "below margin",
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
    assert '<select name="a">' in reports.get("/cnn-reports/").text
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

    tree = ast.parse((PLUGINS / "cnn_reports.py").read_text())
    public = {name for name in dir(storage.ArtifactStore) if not name.startswith("_")} | {"uri"}
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "cnn_tasks.storage"
        for alias in node.names
    }
    assert imported.isdisjoint({"LocalStore", "S3Store"}), imported
    used = {
        node.attr
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


# ----------------------------------------------------------------------------- auth (live api-server)
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    """A real `airflow api-server` with this plugins folder, a local store and two users."""
    home = tmp_path_factory.mktemp("airflow")
    store = home / "store"
    write_runs(
        lambda key, data: ((store / key).parent.mkdir(parents=True, exist_ok=True), (store / key).write_bytes(data))
    )
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": "admin-pw", "viewer": "viewer-pw"}))
    port = _free_port()
    env = {
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
    }
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
