"""`make airflow` from a user's terminal: a shell whose PATH does not hold .venv/bin. It starts every
part of Airflow (standalone runs them as plain `airflow`), says when the UI is up and how to log in,
stops cleanly on Ctrl-C, and fails with a clear message and exit status 1 when Airflow does not
come up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from cnn_tasks import DAG_ID
from tests.airflow_stack import clean_environ, free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "airflow_standalone.sh"


def user_shell_env(**extra: str) -> dict[str, str]:
    """A new terminal's environment: no venv on the PATH, no Airflow or make settings."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if ".venv" not in p)
    env = {k: v for k, v in clean_environ().items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VIRTUAL_ENV")}
    return env | {"PATH": path} | extra


def read_until(proc: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    """Lines printed until one starts with `marker` (fails with what was printed otherwise)."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith(marker):
            return lines
    pytest.fail(f"no line starting {marker!r} within {timeout} s; printed:\n" + "\n".join(lines))


@pytest.mark.e2e
def test_make_airflow_starts_every_part_from_a_shell_without_the_venv(tmp_path):
    port = free_port()
    assert ".venv" not in user_shell_env()["PATH"]
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "airflow", f"AIRFLOW_HOME={tmp_path / 'home'}"],
        cwd=ROOT,
        env=user_shell_env(AIRFLOW__API__PORT=str(port), AIRFLOW_START_TIMEOUT="600"),  # a busy CI machine
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # as in a terminal, Ctrl-C is heard: a shell that ran this test in the background ignores it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        printed = read_until(proc, "Login: ", 660)
        assert f"Airflow is up: http://127.0.0.1:{port}" in "\n".join(printed)
        user, password = printed[-1].removeprefix("Login: ").split(" / ")
        base = f"http://127.0.0.1:{port}"
        health = httpx.get(f"{base}/api/v2/monitor/health", timeout=30).json()
        assert {part: health[part]["status"] for part in ("scheduler", "dag_processor", "triggerer")} == {
            "scheduler": "healthy",
            "dag_processor": "healthy",
            "triggerer": "healthy",
        }
        token = httpx.post(f"{base}/auth/token", json={"username": user, "password": password}, timeout=30)
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        dag, deadline = None, time.monotonic() + 120
        while dag is None and time.monotonic() < deadline:  # the dag-processor's first parse
            response = httpx.get(f"{base}/api/v2/dags/{DAG_ID}", headers=headers, timeout=30)
            dag = response.json() if response.status_code == 200 else time.sleep(2)
        assert dag is not None, f"{DAG_ID} was not parsed: {response.text}"
        log = (tmp_path / "home" / "standalone.log").read_text()
        assert "FileNotFoundError" not in log
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        rest, _ = proc.communicate(timeout=180)
    assert "Stopping Airflow..." in rest
    # every part stopped (the api-server renames itself, so it is found by its port); a killed
    # process may take a moment to go
    deadline = time.monotonic() + 30
    while (left := processes_with(f"AIRFLOW_HOME={tmp_path / 'home'}", f"port:{port}")) and time.monotonic() < deadline:
        time.sleep(1)
    assert [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left] == []


def processes_with(variable: str, title: str) -> list[int]:
    """Live processes whose environment holds `variable` (NAME=value) or whose title holds `title`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            environ = (proc / "environ").read_bytes().split(b"\0")
            if variable.encode() in environ or title.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


FAKE_AIRFLOW = """\
#!{python}
# `airflow` whose standalone {behaviour}
import sys, time
if sys.argv[1:2] == ["standalone"]:
    print("standalone | Starting Airflow Standalone")
    print("api-server | OSError: [Errno 98] Address already in use", flush=True)
    {action}
"""


@pytest.mark.parametrize(
    ("action", "timeout", "message"),
    [
        ("sys.exit(3)", "60", "Airflow exited before its UI answered on http://127.0.0.1:{port}."),
        (
            "time.sleep(600)",
            "3",
            "Airflow did not start within 3 s (AIRFLOW_START_TIMEOUT) on http://127.0.0.1:{port}: "
            "not healthy: api-server.",
        ),
    ],
    ids=["exits", "never-answers"],
)
def test_when_airflow_does_not_come_up_it_says_so_and_exits_1(tmp_path, action, timeout, message):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "airflow"
    fake.write_text(textwrap.dedent(FAKE_AIRFLOW.format(python=sys.executable, behaviour=action, action=action)))
    fake.chmod(0o755)
    (venv / "bin" / "python").symlink_to(sys.executable)
    port = free_port()
    env = user_shell_env(
        VENV_DIR=str(venv),
        AIRFLOW_HOME=str(tmp_path / "home"),
        AIRFLOW__API__PORT=str(port),
        AIRFLOW_START_TIMEOUT=timeout,
    )
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[0] == message.format(port=port)
    assert "api-server | OSError: [Errno 98] Address already in use" in proc.stderr  # the log's last lines
    assert "Airflow is up" not in proc.stdout
    left = subprocess.run(["pgrep", "-f", str(fake)], capture_output=True, text=True).stdout
    assert left == ""
