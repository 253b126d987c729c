"""The reports plugin's pages in headless Chromium against a live Airflow 3 api-server.

One api-server (SimpleAuthManager, SQLite, a temporary AIRFLOW_HOME; no scheduler: the runs are
written into the store and recorded in Airflow's database directly) serves the plugin over a local
store holding a run that succeeded and a newer run that failed. The browser, logged in with the
UI's session cookie, checks that the runs page shows the failed run as FAILED with the cause its
report recorded, that the compare form starts on runs that succeeded, that a run which chose
another store in its conf opens from that store, and that a run without a report gets a page
saying why instead of JSON. Screenshots go to test-artifacts/browser-plugin/ (git-ignored).

Without Chromium (and no way to install it: scripts/install_browser.sh needs root and apt) the
test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from cnn_tasks import DAG_ID
from tests.airflow_stack import AirflowStack, artifacts_dir, chromium_or_skip
from tests.helpers import TRAINING_FAILURE, build, dag_run_source, plugin_run_summary, write_plugin_run

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"]
SUCCEEDED = "manual__2026-12-04T09_30_00_00_00"
FAILED = "manual__2026-12-04T12_51_00_00_00"
ELSEWHERE, ELSEWHERE_DAG_RUN = "manual__2026-12-05T08_00_00_00_00", "manual__2026-12-05T08:00:00+00:00"
UNFINISHED, UNFINISHED_DAG_RUN = "manual__2026-12-06T08_00_00_00_00", "manual__2026-12-06T08:00:00+00:00"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """A live api-server whose plugin reads a store with a succeeded and a failed run; yields the stack."""
    chromium_or_skip()  # no point starting Airflow for nothing
    base = tmp_path_factory.mktemp("browser-plugin")
    store, other = base / "store", base / "other-stores" / "experiments"
    write_plugin_run(store, SUCCEEDED, plugin_run_summary(SUCCEEDED, 0.91, 0.90))
    write_plugin_run(store, FAILED, plugin_run_summary(FAILED, failures=[TRAINING_FAILURE]))
    stages = {f"runs/{FAILED}/data/shards/train-{i:02}.npz": "x" for i in range(24)}
    stages |= {f"runs/{FAILED}/models/baseline__balanced/checkpoint-{i:02}.keras": "x" for i in range(12)}
    build(store, stages | {f"runs/{FAILED}/failures/train.0.json": "{}", f"runs/{FAILED}/config.json": "{}"})
    os.utime(store / f"runs/{SUCCEEDED}/report/summary.json", (1_700_000_000, 1_700_000_000))  # the older one
    write_plugin_run(other, ELSEWHERE, plugin_run_summary(ELSEWHERE, 0.8, 0.8))
    build(store, {f"runs/{UNFINISHED}/config.json": "{}"})
    stack = AirflowStack(
        base / "airflow",
        {"CNN_STORE_URI": f"file://{store}", "CNN_REPORT_LOCAL_STORES": str(base / "other-stores")},
    )
    try:
        stack.migrate()
        for run_id, conf, state in (
            (ELSEWHERE_DAG_RUN, {"store_uri": f"file://{other}"}, "success"),
            (UNFINISHED_DAG_RUN, {}, "running"),
        ):
            recorded = stack.python(dag_run_source(DAG_ID, run_id, conf, state))
            assert recorded.returncode == 0, recorded.stderr[-2000:]
        stack.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(stack.port))
        stack.wait_healthy(components=("metadatabase",), timeout=240)
        yield stack
    except BaseException:
        print(stack.diagnostics(60))
        raise
    finally:
        stopped = stack.stop(grace=30)
    assert not stopped["survivors"], f"Airflow processes outlived the test: {stopped['survivors']}"


def test_runs_page_shows_failed_runs_with_their_cause_and_run_stores_in_chromium(plugin_site):
    from playwright.sync_api import sync_playwright

    shots = artifacts_dir("browser-plugin")
    stack = plugin_site
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=chromium_or_skip(),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        context.set_default_timeout(60_000)
        # The session a UI login leaves: the api-server's JWT in the _token cookie.
        context.add_cookies([{"name": "_token", "value": stack.token(), "url": stack.base_url}])
        page = context.new_page()
        try:
            response = page.goto(f"{stack.base_url}/cnn-reports/")
            assert response.status == 200
            failed_row = page.locator("tr", has=page.get_by_role("link", name=FAILED, exact=True))
            status = failed_row.get_by_text("FAILED", exact=True)
            cause = failed_row.get_by_text("TrainingDivergedError: baseline__balanced diverged", exact=False)
            assert status.is_visible()
            assert cause.is_visible()
            assert failed_row.locator("td").nth(2).inner_text().startswith("FAILED")
            assert "the loss was NaN at epoch 3" in cause.inner_text()
            succeeded_row = page.locator("tr", has=page.get_by_role("link", name=SUCCEEDED, exact=True))
            assert succeeded_row.get_by_text("SUCCEEDED", exact=True).is_visible()
            assert page.locator("select[name=b]").input_value() == SUCCEEDED  # never the failed run
            assert page.locator("select[name=a]").input_value() == ""  # "choose a run": one run succeeded
            page.screenshot(path=str(shots / "01-runs-page-failed-and-succeeded.png"), full_page=True)

            # The Report link of a run that chose another store in its conf opens that store's report.
            response = page.goto(f"{stack.base_url}/cnn-reports/runs/{ELSEWHERE}/report/index.html")
            assert response.status == 200
            assert page.get_by_role("heading", name=f"Report of {ELSEWHERE}").is_visible()
            page.screenshot(path=str(shots / "02-report-from-the-runs-own-store.png"))

            # A run still going has no report: a page that says so, not {"detail": "not found"}.
            response = page.goto(f"{stack.base_url}/cnn-reports/runs/{UNFINISHED}/report/index.html")
            assert response.status == 404
            assert page.get_by_role("heading", name="This run has no report yet").is_visible()
            assert page.get_by_text("The run is still running", exact=False).is_visible()
            assert '{"detail"' not in page.content()
            page.screenshot(path=str(shots / "03-no-report-yet.png"))

            page.goto(f"{stack.base_url}/cnn-reports/runs/{FAILED}/")
            assert page.get_by_text("shards/train-00.npz").is_hidden()  # data/ starts folded
            page.get_by_text("data", exact=True).click()
            assert page.get_by_text("shards/train-00.npz").is_visible()
            page.screenshot(path=str(shots / "04-run-files-by-stage.png"))
        except BaseException:
            page.screenshot(path=str(shots / "99-failure.png"))
            raise
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)
