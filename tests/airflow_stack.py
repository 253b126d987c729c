"""A harness that runs real Airflow 3 processes for integration tests.

`AirflowStack` owns one throw-away AIRFLOW_HOME and every process it starts:

* each process runs in its own session/process group, logs to `<home>/process-logs/<name>.log`;
* every process gets a unique marker variable (`CNN_STACK_ID`) in its environment, so after
  `stop()` the harness can find anything that outlived its parent (a task process in its own
  process group, a Celery pool child re-parented to init) and kill it; `stop()` returns what it
  had to kill late and what survived (the tests assert that nothing survives);
* readiness is polled over HTTP (`/api/v2/monitor/health`), every wait is bounded and a timeout
  or a dead process raises `StackError` with the last lines of every process log.

The module imports only the standard library and httpx at import time: Celery workers import
`worker_hostname` from it through `[core] hostname_callable`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from cnn_tasks import DAG_ID

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
MARKER = "CNN_STACK_ID"
WORKER_NAME = "CNN_STACK_WORKER_NAME"
TERMINAL_RUN_STATES = {"success", "failed"}


class StackError(AssertionError):
    """An Airflow process died, or something the test waits for did not happen in time."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_hostname() -> str:
    """`[core] hostname_callable` for Celery workers: `<worker name>@<fqdn>`.

    Both test workers run on one machine, so the FQDN alone would not tell them apart; each worker
    gets its own name (the same one as its Celery hostname), recorded in every task instance it runs.
    """
    name = os.environ.get(WORKER_NAME)
    fqdn = socket.getfqdn()
    return f"{name}@{fqdn}" if name else fqdn


def clean_environ() -> dict[str, str]:
    """This process's environment without Airflow, AWS or pipeline settings (as test_e2e does)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW", "CNN_", "PYTEST_"))}


def tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 256 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"<{exc}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


# --------------------------------------------------------------------------------- test data
@contextlib.contextmanager
def served_tiny_dataset(
    base: Path, classes: int = 3, per_class: int | list[int] | None = None, size: int = 28
) -> Iterator[dict]:
    """A tiny generated dataset (3 classes of 24, 24 and 16 images, zipped under a wrapper folder)
    behind a local HTTP server; yields {"url", "checksum", "path"}. Imbalanced by default, so a run
    trains every experiment on both data variants (balanced data trains only one)."""
    import functools
    import hashlib
    import http.server
    import threading

    from tests.imagegen import make_dataset, zip_folder

    per_class = per_class if per_class is not None else [24] * (classes - 1) + [16]
    folder = make_dataset(base / "images", classes=classes, per_class=per_class, size=size, seed=1)
    (base / "www").mkdir(parents=True, exist_ok=True)
    archive = zip_folder(folder, base / "www" / "tiny.zip", wrapper="tiny_dataset")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {
            "url": f"http://127.0.0.1:{server.server_port}/tiny.zip",
            "checksum": "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest(),
            "path": archive,
        }
    finally:
        server.shutdown()
        server.server_close()


def tiny_conf(url: str, checksum: str, store_uri: str, **extra) -> dict:
    """The quick profile on the tiny dataset: 24 px, 2 epochs (every end-to-end test uses it)."""
    return {
        "profile": "quick",
        "dataset_url": url,
        "dataset_checksum": checksum,
        "store_uri": store_uri,
        "image_size": 24,
        "epochs": 2,
        "min_images_per_class": 5,
        **extra,
    }


def aws_connection(endpoint: str) -> str:
    """AIRFLOW_CONN_AWS_DEFAULT for a moto (or MinIO) endpoint."""
    return json.dumps(
        {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
    )


# --------------------------------------------------------------------------------- the stack
class AirflowStack:
    """Airflow processes sharing one AIRFLOW_HOME and one environment.

    `env` is merged over a clean base; the harness adds the home, dags/plugins folders, the API
    port, JWT/Fernet/secret keys shared by every component, the execution-API URL the workers
    call, simple-auth users with a known password, and small-machine sizing.
    """

    def __init__(
        self, home: Path, env: dict[str, str] | None = None, *, password: str | None = None, parallelism: int = 2
    ):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir = self.home / "process-logs"
        self.log_dir.mkdir(exist_ok=True)
        self.stack_id = uuid.uuid4().hex
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.username = "admin"
        self.password = password or secrets.token_urlsafe(12)
        passwords = self.home / "simple_auth_manager_passwords.json"
        passwords.write_text(json.dumps({self.username: self.password}))
        self.procs: list[Proc] = []
        self._client: httpx.Client | None = None
        self.env = clean_environ() | {
            MARKER: self.stack_id,
            "AIRFLOW_HOME": str(self.home),
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(parallelism),
            "CNN_PARALLEL_TASKS": str(parallelism),
            # One secret set for every component: the scheduler signs task tokens, the api-server
            # (execution API) validates them; UI/REST tokens likewise.
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API_AUTH__JWT_ISSUER": f"cnn-tests-{self.stack_id[:8]}",
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            # Log servers on free ports: other Airflows on this machine may hold 8793/8794.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            # The DAG file does not change during a test: parse it once, not every 30 s.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "CNN_CACHE_DIR": str(self.home / "cache"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.update(env or {})

    # ------------------------------------------------------------------ processes
    def cli(self, *args: str, timeout: float = 300, env: dict | None = None) -> str:
        """Run an `airflow` CLI command to completion; raise StackError with its output on failure."""
        try:
            proc = subprocess.run(
                [AIRFLOW, *args],
                env=self.env | (env or {}),
                capture_output=True,
                text=True,
                timeout=timeout,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            raise StackError(
                f"airflow {' '.join(args)} timed out after {timeout}s:\n{exc.stdout}\n{exc.stderr}"
            ) from exc
        if proc.returncode:
            raise StackError(
                f"airflow {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc.stdout

    def python(self, code: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a Python snippet with the stack's environment (pre-flight checks)."""
        return subprocess.run(
            [sys.executable, "-c", code],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )

    def migrate(self, pools: dict[str, int] | None = None) -> None:
        self.cli("db", "migrate", timeout=600)
        for name, slots in (pools or {}).items():
            self.cli("pools", "set", name, str(slots), f"{name} (tests)")

    def start(self, name: str, *args: str, env: dict | None = None) -> Proc:
        """Start `airflow <args>` in its own session; output goes to process-logs/<name>.log."""
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                [AIRFLOW, *args],
                env=self.env | (env or {}),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.home,
            )
        proc = Proc(name, popen, log, list(args))
        self.procs.append(proc)
        return proc

    def start_core(self) -> None:
        """api-server, scheduler and dag-processor (the executor comes from the environment)."""
        self.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.port))
        self.start("scheduler", "scheduler")
        self.start("dag-processor", "dag-processor")

    def check_alive(self) -> None:
        dead = [p for p in self.procs if not p.alive()]
        if dead:
            raise StackError(
                "Airflow process(es) exited: "
                + ", ".join(f"{p.name} (rc {p.popen.returncode})" for p in dead)
                + self.diagnostics()
            )

    def wait_until(self, what: str, predicate: Callable[[], object], timeout: float, interval: float = 2.0):
        """Poll `predicate` until it returns a truthy value; fail on timeout or a dead process."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            self.check_alive()
            try:
                value = predicate()
                if value:
                    return value
            except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise StackError(
                    f"timed out after {timeout:.0f}s waiting for {what}"
                    f"{f' (last error: {last_error!r})' if last_error else ''}" + self.diagnostics()
                )
            time.sleep(interval)

    def health(self) -> dict:
        response = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=10)
        response.raise_for_status()
        return response.json()

    def wait_healthy(
        self, components: tuple[str, ...] = ("metadatabase", "scheduler", "dag_processor"), timeout: float = 240
    ) -> dict:
        def healthy():
            info = self.health()
            return info if all((info.get(c) or {}).get("status") == "healthy" for c in components) else None

        return self.wait_until(f"healthy {', '.join(components)} on {self.base_url}", healthy, timeout)

    # ------------------------------------------------------------------ REST API
    def token(self, username: str | None = None, password: str | None = None) -> str:
        response = httpx.post(
            f"{self.base_url}/auth/token",
            timeout=30,
            json={"username": username or self.username, "password": password or self.password},
        )
        if response.status_code != 201:
            raise StackError(f"POST /auth/token: {response.status_code} {response.text}")
        return response.json()["access_token"]

    @property
    def api(self) -> httpx.Client:
        """An httpx client on /api/v2 with a bearer token from POST /auth/token."""
        if self._client is None:
            self._client = httpx.Client(
                base_url=f"{self.base_url}/api/v2", timeout=30, headers={"Authorization": f"Bearer {self.token()}"}
            )
        return self._client

    def api_json(self, method: str, path: str, **kw) -> dict:
        """`method` /api/v2`path` as JSON; StackError on an HTTP error."""
        response = self.api.request(method, path, **kw)
        if response.status_code == 401:  # token expired: get a new one, retry once
            self.api.headers["Authorization"] = f"Bearer {self.token()}"
            response = self.api.request(method, path, **kw)
        if response.status_code >= 400:
            raise StackError(f"{method} /api/v2{path}: {response.status_code} {response.text[:2000]}")
        return response.json()

    def wait_for_dag(self, dag_id: str = DAG_ID, timeout: float = 300) -> dict:
        """Until the dag-processor has parsed the DAG without import errors; then unpause it."""

        def parsed():
            errors = self.api_json("GET", "/importErrors").get("import_errors", [])
            if errors:
                raise StackError("DAG import errors:\n" + "\n".join(e.get("stack_trace", "") for e in errors))
            try:
                return self.api_json("GET", f"/dags/{dag_id}")
            except StackError as exc:
                if ": 404 " in str(exc):
                    return None
                raise

        dag = self.wait_until(f"DAG {dag_id} to be parsed", parsed, timeout)
        if dag.get("is_paused"):
            self.api_json("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        return dag

    def trigger(self, conf: dict, dag_id: str = DAG_ID, run_id: str | None = None) -> str:
        body = {"logical_date": None, "conf": conf}
        if run_id:
            body["dag_run_id"] = run_id
        return self.api_json("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def run_state(self, run_id: str, dag_id: str = DAG_ID) -> str:
        return self.api_json("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_instances(self, run_id: str, dag_id: str = DAG_ID) -> list[dict]:
        """Every task instance of the run, mapped ones included (one entry per map index)."""
        out, offset = [], 0
        while True:
            page = self.api_json(
                "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100, "offset": offset}
            )
            out += page["task_instances"]
            offset += len(page["task_instances"])
            if not page["task_instances"] or offset >= page["total_entries"]:
                return out

    def wait_for_run(
        self, run_id: str, dag_id: str = DAG_ID, timeout: float = 1200, progress: Callable[[str], None] | None = None
    ) -> str:
        """Poll a DAG run to a terminal state; StackError with failed tasks' logs if it fails."""
        start = time.monotonic()
        seen: dict[str, int] = {}

        def finished():
            state = self.run_state(run_id, dag_id)
            if progress:
                counts: dict[str, int] = {}
                for ti in self.task_instances(run_id, dag_id):
                    counts[ti["state"] or "none"] = counts.get(ti["state"] or "none", 0) + 1
                if counts != seen:
                    seen.clear()
                    seen.update(counts)
                    progress(f"[{time.monotonic() - start:6.0f}s] {run_id}: {state} {counts}")
            return state if state in TERMINAL_RUN_STATES else None

        state = self.wait_until(f"DAG run {run_id} to finish", finished, timeout, interval=5)
        if state != "success":
            raise StackError(f"DAG run {run_id} ended {state}" + self.run_failure_report(run_id, dag_id))
        return state

    def run_failure_report(self, run_id: str, dag_id: str = DAG_ID) -> str:
        """The states of a run's tasks and the last lines of the failed ones' logs."""
        try:
            tis = self.task_instances(run_id, dag_id)
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            return f"\n(task instances unavailable: {exc!r})" + self.diagnostics()
        lines = ["", "task instances:"]
        lines += [f"  {ti['task_id']}[{ti['map_index']}] {ti['state']} on {ti.get('hostname')}" for ti in tis]
        for ti in tis:
            if ti["state"] in ("failed", "upstream_failed", "up_for_retry"):
                pattern = f"logs/dag_id={dag_id}/run_id={run_id}/task_id={ti['task_id']}/**/*.log"
                for log in sorted(self.home.glob(pattern)):
                    lines += [f"----- {log.relative_to(self.home)}", tail(log, 60)]
        return "\n".join(lines) + self.diagnostics()

    # ------------------------------------------------------------------ diagnostics and shutdown
    def diagnostics(self, lines: int = 40) -> str:
        parts = [f"\n\nAIRFLOW_HOME {self.home}; process logs in {self.log_dir}"]
        for p in self.procs:
            state = "running" if p.alive() else f"exited rc={p.popen.returncode}"
            parts.append(
                f"\n===== {p.name} (pid {p.pid}, {state}): last {lines} lines of {p.log}\n{tail(p.log, lines)}"
            )
        return "\n".join(parts)

    def marked_processes(self) -> list:
        """Live processes (any parent) whose environment carries this stack's marker."""
        import psutil

        found = []
        for proc in psutil.process_iter(["pid", "name"]):
            if proc.pid == os.getpid():
                continue
            try:
                if proc.environ().get(MARKER) == self.stack_id and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                continue
        return found

    def stop(self, grace: float = 30) -> dict[str, list[str]]:
        """SIGTERM every started process group, wait `grace` s, then SIGKILL what is left (groups and
        marked stragglers). Returns {"late": killed after the grace period, "survivors": still alive}."""
        import psutil

        if self._client is not None:
            self._client.close()
            self._client = None
        groups = set()
        for p in self.procs:
            if p.alive():
                groups.add(p.pid)
        for proc in self.marked_processes():  # task processes live in their own groups
            with contextlib.suppress(psutil.Error, OSError):
                groups.add(os.getpgid(proc.pid))
        groups.discard(os.getpgid(0))  # never our own group
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for p in self.procs:
                p.popen.poll()
            if all(not p.alive() for p in self.procs) and not self.marked_processes():
                break
            time.sleep(0.5)
        late = []
        for proc in self.marked_processes():  # ignored SIGTERM for `grace` seconds
            with contextlib.suppress(psutil.Error, OSError):
                late.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
                pgid = os.getpgid(proc.pid)
                if pgid != os.getpgid(0):
                    os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error, OSError):
                proc.kill()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=10)
        time.sleep(0.5)
        survivors = []
        for proc in self.marked_processes():
            with contextlib.suppress(psutil.Error):
                survivors.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
        return {"late": late, "survivors": survivors}

    def __enter__(self) -> AirflowStack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def artifacts_dir(name: str) -> Path:
    """test-artifacts/<name> in the repository (git-ignored), emptied."""
    path = ROOT / "test-artifacts" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# --------------------------------------------------------------------------------- browser
CHROMIUM = os.environ.get("CNN_CHROMIUM", "/usr/bin/chromium")


def chromium_or_skip() -> str:
    """Debian's chromium; installed by scripts/install_browser.sh when missing and possible."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and CHROMIUM == "/usr/bin/chromium":
        subprocess.run(["bash", str(ROOT / "scripts" / "install_browser.sh")], timeout=900, check=False)
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(
            f"{CHROMIUM} is not installed and scripts/install_browser.sh could not install it "
            "(it needs root and apt-get)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"playwright (python) is not installed: {exc}")
    return CHROMIUM
