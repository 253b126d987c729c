"""Browser and REST API tests against a live Airflow 3 with this project's DAG and plugin.

One Airflow (api-server, scheduler, dag-processor; LocalExecutor on SQLite; a temporary
AIRFLOW_HOME) is shared by every test of this module. Headless Debian Chromium, driven by
Playwright, logs in through the simple auth manager, fills the DAG's trigger form with the quick
profile and a tiny dataset served over HTTP, waits for the run, follows the "Report" extra link and
checks the report's confusion matrices and ensemble table. A second run is triggered through the
REST API (/api/v2, token from /auth/token) with an S3 store on a moto server and its summary.json
is read back with boto3. The report plugin must refuse unauthenticated and path-traversal
requests through the real api-server. The trigger form opens on the profile and the most-used
fields, with the other settings in collapsed sections. The report opens on its result cards with
the leaderboard of every model and ensemble inside the first screen, and links back to the run.

Screenshots go to test-artifacts/browser/ (git-ignored). Without Chromium (and no way to install
it: scripts/install_browser.sh needs root and apt) the tests are skipped with the reason.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest

from tests.airflow_stack import (
    DAG_ID,
    AirflowStack,
    artifacts_dir,
    aws_connection,
    chromium_or_skip,
    served_tiny_dataset,
    tiny_conf,
)
from tests.s3server import moto_s3

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
RUN_TIMEOUT = float(os.environ.get("CNN_BROWSER_RUN_TIMEOUT", 1200))
BUCKET = "cnn-browser"
# The trigger form's sections in order: Airflow's open default section, then the collapsed ones.
FORM_SECTIONS = ("Run Parameters", "Data preparation", "Model and training", "Promotion", "Storage")
MODEL_IDS = {f"{e}__{v}" for e in ("baseline", "strided_elu", "separable_swish") for v in ("unbalanced", "balanced")}


# ----------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def shots():
    return artifacts_dir("browser")


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """The shared live Airflow: yields a namespace with the stack, the dataset, S3 endpoint and store."""
    chromium_or_skip()  # no point starting Airflow for nothing
    base = tmp_path_factory.mktemp("browser")
    store = base / "store"
    with served_tiny_dataset(base / "data") as data, moto_s3(BUCKET) as endpoint:
        stack = AirflowStack(
            base / "airflow",
            {
                "CNN_STORE_URI": f"file://{store}",  # the form's default store and the plugin's store
                "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(endpoint),  # for the API-triggered S3 run
            },
        )
        print(f"\nAIRFLOW_HOME {stack.home}; {stack.base_url}; user {stack.username} / {stack.password}")
        t0 = time.monotonic()
        try:
            stack.migrate(pools={"training": 2})
            stack.start_core()
            stack.wait_healthy(timeout=300)
            stack.wait_for_dag(timeout=300)
            print(f"Airflow ready in {time.monotonic() - t0:.0f}s")
            yield SimpleNamespace(stack=stack, data=data, endpoint=endpoint, store=store)
        except BaseException:
            print(stack.diagnostics(60))
            raise
        finally:
            stopped = stack.stop(grace=30)
            print(f"stopped Airflow: {stopped}")
    assert not stopped["survivors"], f"Airflow processes outlived the tests: {stopped['survivors']}"


@pytest.fixture(scope="module")
def browser(airflow):
    """A headless Chromium (fresh profile) through Playwright."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=chromium_or_skip(),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(60_000)
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def login(page, stack: AirflowStack, shots: Path | None = None) -> None:
    page.fill("input[name=username]", stack.username)
    page.fill("input[name=password]", stack.password)
    if shots:
        page.screenshot(path=str(shots / "01-login.png"))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"^(?!.*/auth/login).*$"))


def open_logged_in(page, stack: AirflowStack, url: str, shots: Path | None = None) -> None:
    """Open `url`, logging in first when the browser has no session yet."""
    page.goto(url)
    page.locator("input[name=username], [data-testid=trigger-dag-button]").first.wait_for()
    if page.locator("input[name=username]").is_visible():
        login(page, stack, shots)


def form_field(dialog, label: str):
    """The input of the trigger-form field whose label is `label` (the Param's title)."""
    pattern = re.compile(r"^\s*" + re.escape(label) + r"\s*\*?\s*$")
    group = dialog.locator("[data-scope=field][data-part=root]").filter(
        has=dialog.page.locator("label").filter(has_text=pattern)
    )
    return group.locator("input, textarea").first


# ----------------------------------------------------------------------------------- tests
def test_report_plugin_refuses_unauthenticated_and_path_traversal_requests(airflow, browser, shots):
    stack, store = airflow.stack, airflow.store
    (store / "runs" / "some_run" / "report").mkdir(parents=True, exist_ok=True)
    (store / "runs" / "some_run" / "report" / "index.html").write_text("<html>a report</html>")
    (store / "champion.json").write_text('{"secret": "outside runs/"}')
    (store.parent / "outside.txt").write_text("do not serve")
    base = stack.base_url

    # Unauthenticated: API clients get 401, a browser is sent to the login page.
    for path in ("/cnn-reports/", "/cnn-reports/api/runs", "/cnn-reports/runs/some_run/report/index.html"):
        response = httpx.get(base + path)
        assert response.status_code == 401, (path, response.status_code)
        assert "a report" not in response.text
    redirect = httpx.get(base + "/cnn-reports/", headers={"Accept": "text/html"})
    assert redirect.status_code == 303
    assert "/auth/login" in redirect.headers["location"]
    forged = httpx.get(base + "/cnn-reports/api/runs", headers={"Authorization": "Bearer forged"})
    assert forged.status_code in (401, 403), forged.status_code
    page = browser.new_page()
    try:
        page.goto(base + "/cnn-reports/runs/some_run/report/index.html")
        page.wait_for_load_state()
        assert "/auth/login" in page.url, page.url
        page.screenshot(path=str(shots / "00-unauthenticated-report-goes-to-login.png"))
    finally:
        page.close()

    # Authenticated, but outside runs/: refused (raw request paths, not normalised by a client).
    token = stack.token()
    ok = httpx.get(base + "/cnn-reports/runs/some_run/report/index.html", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    assert "a report" in ok.text
    host, port = urlsplit(base).hostname, urlsplit(base).port
    for path in (
        "/cnn-reports/runs/../champion.json",
        "/cnn-reports/runs/%2e%2e/champion.json",
        "/cnn-reports/runs/some_run/%2e%2e/%2e%2e/%2e%2e/outside.txt",
        "/cnn-reports/runs/..%2fchampion.json",
        "/cnn-reports/runs/%252e%252e/champion.json",
        "/cnn-reports/runs/..%5cchampion.json",
        "/cnn-reports/runs/%2fetc%2fpasswd",
        "/cnn-reports/runs/some_run/report/..%00/index.html",
    ):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
        conn.close()
        assert response.status in (400, 404), (path, response.status, body[:200])
        assert "outside runs/" not in body, path
        assert "do not serve" not in body, path
        assert "root:" not in body, path


def test_trigger_form_opens_on_the_main_fields_with_the_rest_in_collapsed_sections(airflow, browser, shots):
    stack = airflow.stack
    page = browser.new_page()
    try:
        open_logged_in(page, stack, f"{stack.base_url}/dags/{DAG_ID}")
        page.get_by_test_id("trigger-dag-button").click()
        dialog = page.get_by_role("dialog")
        triggers = {name: dialog.get_by_role("button", name=name, exact=True) for name in FORM_SECTIONS}
        for trigger in triggers.values():
            trigger.wait_for()
        tops = {name: trigger.bounding_box()["y"] for name, trigger in triggers.items()}
        assert list(tops.values()) == sorted(tops.values()), tops  # the sections in this order
        expanded = {name: trigger.get_attribute("aria-expanded") for name, trigger in triggers.items()}
        assert expanded == {name: "true" if name == "Run Parameters" else "false" for name in FORM_SECTIONS}
        main = [form_field(dialog, label) for label in ("Profile", "Dataset", "Classes", "Image size (px)", "Epochs")]
        for field in main:
            field.wait_for()
        field_tops = [field.bounding_box()["y"] for field in main]
        assert field_tops == sorted(field_tops), field_tops  # the profile first
        for label in ("Minimum images per class", "Model experiments", "Promotion metric", "Artifact store"):
            assert not form_field(dialog, label).is_visible(), f"{label} should start collapsed"
        page.screenshot(path=str(shots / "03-trigger-form.png"))
        triggers["Storage"].scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "03d-trigger-form-sections.png"))

        triggers["Data preparation"].click()
        for label in ("Minimum images per class", "Split ratios", "Rebalance strategy"):
            form_field(dialog, label).wait_for()
        page.screenshot(path=str(shots / "03c-trigger-form-data-preparation.png"))
        triggers["Storage"].click()
        form_field(dialog, "Artifact store").wait_for()
        assert form_field(dialog, "Artifact store").input_value() == f"file://{airflow.store}"
        page.keyboard.press("Escape")
    except BaseException:
        page.screenshot(path=str(shots / "99-form-failure.png"))
        raise
    finally:
        page.close()


@pytest.mark.timeout(RUN_TIMEOUT + 600)
def test_trigger_form_quick_run_and_report_in_the_browser(airflow, browser, shots):
    stack, data = airflow.stack, airflow.data
    page = browser.new_page()
    try:
        open_logged_in(page, stack, f"{stack.base_url}/dags/{DAG_ID}", shots)
        page.wait_for_url(f"**/dags/{DAG_ID}")
        page.get_by_text("single_batch_check", exact=False).first.wait_for()
        page.screenshot(path=str(shots / "02-dag.png"))

        # The trigger form generated from the Params: quick profile, the tiny dataset, small images.
        page.get_by_test_id("trigger-dag-button").click()
        dialog = page.get_by_role("dialog")
        form_field(dialog, "Dataset").fill(data["url"])
        form_field(dialog, "Dataset checksum").fill(data["checksum"])
        for label, value in (("Image size (px)", "24"), ("Epochs", "2")):
            field = form_field(dialog, label)
            field.fill(value)
            field.press("Tab")
        profile = form_field(dialog, "Profile")
        profile.click()
        profile.fill("quick")
        profile.press("Enter")
        dialog.get_by_text("quick", exact=True).wait_for()
        page.screenshot(path=str(shots / "03b-trigger-form-profile.png"))
        form_field(dialog, "Dataset").scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "03a-trigger-form-dataset.png"))
        dialog.get_by_role("button", name="Data preparation", exact=True).click()  # a collapsed section
        field = form_field(dialog, "Minimum images per class")
        field.fill("5")
        field.press("Tab")
        dialog.get_by_test_id("trigger-dag-submit").click()
        page.wait_for_url(re.compile(rf".*/dags/{DAG_ID}/runs/[^/]+$"))
        run_id = unquote(page.url.rsplit("/runs/", 1)[1])
        page.screenshot(path=str(shots / "04-run-triggered.png"))

        conf = stack.api_json("GET", f"/dags/{DAG_ID}/dagRuns/{quote(run_id)}")["conf"]
        keys = ("profile", "dataset_url", "dataset_checksum", "image_size", "epochs", "min_images_per_class")
        assert {k: conf[k] for k in keys} == {
            "profile": "quick",
            "dataset_url": data["url"],
            "dataset_checksum": data["checksum"],
            "image_size": 24,
            "epochs": 2,
            "min_images_per_class": 5,
        }, conf

        stack.wait_for_run(run_id, timeout=RUN_TIMEOUT, progress=print)
        page.reload()
        page.get_by_text("Success", exact=False).first.wait_for()
        page.screenshot(path=str(shots / "05-run-success.png"))

        # The plugin's "Report" extra link (task instance > Details) opens the run's report.
        page.goto(f"{stack.base_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/tasks/report/details")
        page.get_by_text("Extra Links").wait_for()
        link = page.get_by_role("link", name="Report", exact=True)
        link.wait_for()
        page.screenshot(path=str(shots / "06-task-extra-links.png"))
        href = link.get_attribute("href") or ""
        assert "/cnn-reports/runs/" in href, href
        assert href.endswith("/report/index.html"), href
        if link.get_attribute("target") == "_blank":
            with browser.expect_page() as opened:
                link.click()
            report = opened.value
        else:
            link.click()
            report = page
        report.wait_for_load_state("load")
        check_report_page(report, shots / "07-report.png")
        check_report_top(
            report, shots / "07-report.png", f"{stack.base_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}"
        )

        # The plugin's runs page lists this run and links to the same report.
        runs = browser.new_page()
        runs.goto(f"{stack.base_url}/cnn-reports/")
        runs.get_by_role("link", name=re.compile(re.escape(href.split("/runs/")[1].split("/")[0]))).first.wait_for()
        runs.screenshot(path=str(shots / "08-plugin-runs-page.png"))
        runs.close()
        if report is not page:
            report.close()
    except BaseException:
        page.screenshot(path=str(shots / "99-failure.png"))
        raise
    finally:
        page.close()


def check_report_page(report, screenshot: Path) -> None:
    """The served report shows loaded confusion-matrix figures and the ensemble comparison table."""
    assert "/cnn-reports/runs/" in report.url, report.url
    report.get_by_role("heading", name=re.compile("Ensembles")).first.wait_for()
    confusion = report.locator("img[src*='confusion_test']")  # validation and training ones are folded
    assert confusion.count() >= len(MODEL_IDS), confusion.count()
    for i in range(confusion.count()):  # the report's figures load lazily
        confusion.nth(i).scroll_into_view_if_needed()
    report.wait_for_function(
        """() => [...document.querySelectorAll("img[src*='confusion_test']")]
        .every(img => img.complete && img.naturalWidth > 0)""",
        timeout=60_000,
    )
    assert re.search("confusion matrix", report.content(), re.I)
    ensembles = report.locator("section#ensembles table").first
    header = ensembles.locator("th").all_inner_texts()
    assert {"name", "kind", "accuracy", "macro_f1"} <= {h.strip() for h in header}, header
    names = ensembles.locator("tbody tr td:first-child").all_inner_texts()
    assert MODEL_IDS <= {n.strip() for n in names}, names
    assert len(names) > len(MODEL_IDS), f"no ensemble rows beside the single models: {names}"
    report.evaluate("window.scrollTo(0, 0)")
    report.screenshot(path=str(screenshot))  # the top; a full-page shot of the report is ~15 MB
    ensembles.scroll_into_view_if_needed()
    report.screenshot(path=str(screenshot.with_name(screenshot.stem + "-ensembles.png")))
    confusion.first.scroll_into_view_if_needed()
    report.screenshot(path=str(screenshot.with_name(screenshot.stem + "-confusion.png")))


def check_report_top(report, screenshot: Path, run_url: str) -> None:
    """The report's first screen (check_report_page shot it): the result cards, then the leaderboard of
    every model and ensemble, its top inside the viewport; the run's line links back to this Airflow run."""
    report.evaluate("window.scrollTo(0, 0)")
    viewport = report.viewport_size["height"]
    cards = report.locator("section#results .cards").bounding_box()
    board = report.locator("#leaderboard")
    top = board.bounding_box()["y"]
    assert cards["y"] + cards["height"] <= top < viewport, (cards, top, viewport)
    rows = board.locator("tbody tr")
    names = {n.strip().split(" (ensemble of")[0] for n in rows.locator("td:nth-child(2)").all_inner_texts()}
    assert MODEL_IDS <= names, names
    assert len(names) > len(MODEL_IDS), f"no ensembles in the leaderboard: {names}"
    assert board.locator("tbody tr.best").count() == 1
    assert board.locator("tbody tr").first.get_attribute("class") == "best"  # the best first, highlighted
    assert board.locator("p.lead").inner_text().strip()
    board.screenshot(path=str(screenshot.with_name(screenshot.stem + "-leaderboard.png")))
    height = report.evaluate("document.documentElement.scrollHeight")
    print(f"report: page height {height} px, leaderboard top {top:.0f} px (viewport {viewport} px)")
    link = report.get_by_role("link", name="This run in Airflow")
    assert link.get_attribute("href") == run_url
    assert "make tensorboard RUN=" in report.locator("section#results code").inner_text()


@pytest.mark.timeout(RUN_TIMEOUT + 300)
def test_rest_api_trigger_with_conf_and_summary_on_s3(airflow):
    import boto3

    from cnn_tasks.context import safe_run_id

    stack, data = airflow.stack, airflow.data
    run_id = stack.trigger(
        tiny_conf(data["url"], data["checksum"], f"s3://{BUCKET}/api"), run_id=f"api_test_{int(time.time())}"
    )
    stack.wait_for_run(run_id, timeout=RUN_TIMEOUT, progress=print)

    s3 = boto3.client("s3", endpoint_url=airflow.endpoint)
    key = f"api/runs/{safe_run_id(run_id)}/report/summary.json"
    summary = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert summary["run_id"] in (run_id, safe_run_id(run_id)), summary["run_id"]
    assert set(summary["models"]) == MODEL_IDS, sorted(summary["models"])
    for model_id, metrics in summary["models"].items():
        assert 0 <= metrics["test"]["accuracy"] <= 1, (model_id, metrics)
    assert s3.head_object(Bucket=BUCKET, Key=key.replace("summary.json", "index.html"))["ContentLength"] > 0

    # The training tasks' "Model folder" extra links point at each trained model.
    links = stack.api_json("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/train/links", params={"map_index": 0})
    assert re.fullmatch(
        rf"/cnn-reports/runs/{re.escape(safe_run_id(run_id))}/models/[\w-]+__\w+/", links["extra_links"]["Model folder"]
    ), links
