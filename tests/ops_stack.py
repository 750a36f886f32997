"""Airflow as it runs in production, started as local processes for tests/test_operations.py.

The shape of docker-compose.yml without Docker (no engine runs on these machines): the
api-server, the scheduler, the DAG processor and a Celery worker, each its own process
group, sharing one environment: the CeleryExecutor with the machine's Redis as broker, a
fresh PostgreSQL database for Airflow's metadata, the JWT secret and the execution API URL.
The source and the disclosure log live in a second fresh database (one schema each), the
drops in the test's folder. Every port is free and on 127.0.0.1; every log goes to a file,
and ``tails`` prints their ends when a check fails. ``stop`` ends every process group it
started and drops the databases, whatever happened before.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from etl.source import make_engine
from etl.synth import synthesize

REPO = Path(__file__).resolve().parent.parent
PG_SERVER = os.environ.get("LEVERANSE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("LEVERANSE_TEST_REDIS", "redis://127.0.0.1:6379/0")
UI_USER = "operator"
TERMINAL_RUN_STATES = ("success", "failed")


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick; the process binds it moments later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _admin_execute(*statements: str) -> None:
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        admin.dispose()


class AirflowStack:
    """The four Airflow processes over fresh databases; see the module docstring."""

    def __init__(self, workdir: Path, today: date, extra_env: dict[str, str]) -> None:
        self.workdir = workdir
        self.home = workdir / "airflow"
        self.drop_dir = workdir / "drops"
        self.logs = workdir / "logs"
        self.today = today
        tag = secrets.token_hex(4)
        self.meta_db = f"lv_ops_{tag}_airflow"
        self.data_db = f"lv_ops_{tag}_data"
        self.queue = f"leveranse_ops_{tag}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(12)
        self.source_url = f"{PG_SERVER}/{self.data_db}?options=-csearch_path%3Dsource"
        self.state_url = f"{PG_SERVER}/{self.data_db}?options=-csearch_path%3Dstate"
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._token = ""
        meta_url = f"{PG_SERVER}/{self.meta_db}"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AIRFLOW", "LEVERANSE_"))
        } | {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta_url,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": meta_url,  # psycopg 3 does both
            "AIRFLOW__CELERY__BROKER_URL": REDIS_URL,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{meta_url}",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{UI_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "GX_ANALYTICS_ENABLED": "False",
            "LEVERANSE_SOURCE_URL": self.source_url,
            "LEVERANSE_STATE_URL": self.state_url,
            "LEVERANSE_SPECS_DIR": str(REPO / "registers"),
            "LEVERANSE_DROP_DIR": str(self.drop_dir),
            **extra_env,
        }

    # --- life cycle ---------------------------------------------------------------------------

    def start(self, persons: int) -> None:
        """Databases, synthetic source, migration, the processes; returns once logged in.

        The migration (about 15 s) runs while the synthetic source is written.
        """
        self.home.mkdir(parents=True)
        self.logs.mkdir()
        _admin_execute(f'CREATE DATABASE "{self.meta_db}"', f'CREATE DATABASE "{self.data_db}"')
        self._spawn("db-migrate", "db", "migrate")
        data = make_engine(f"{PG_SERVER}/{self.data_db}")
        try:
            with data.begin() as conn:
                conn.execute(text("CREATE SCHEMA source"))
                conn.execute(text("CREATE SCHEMA state"))
        finally:
            data.dispose()
        source = make_engine(self.source_url)
        try:
            synthesize(source, persons=persons, seed=7, today=self.today)
        finally:
            source.dispose()
        (self.home / "passwords.json").write_text(json.dumps({UI_USER: self.password}))
        if self._processes.pop("db-migrate").wait(timeout=300) != 0:
            raise RuntimeError("airflow db migrate failed")
        self._spawn("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.port))
        self._spawn("scheduler", "scheduler")
        self._spawn("dag-processor", "dag-processor")
        self._spawn(
            "celery-worker",
            "celery",
            "worker",
            "--queues",
            self.queue,
            "--concurrency",
            "2",
            "--celery-hostname",
            f"{self.queue}@%h",
        )
        self._wait_until_healthy(timeout=120)
        self._token = self.login(UI_USER, self.password)

    def stop(self) -> None:
        """End every process group started here, then drop the databases and queue keys.

        SIGTERM first (the worker finishes its tasks, the scheduler its loop), SIGKILL for
        whatever of a group is left after 30 s: task processes live in their worker's group.
        """
        groups = [process.pid for process in reversed(self._processes.values())]
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self._processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        for process in self._processes.values():
            process.wait()
        _admin_execute(
            f'DROP DATABASE IF EXISTS "{self.meta_db}" WITH (FORCE)',
            f'DROP DATABASE IF EXISTS "{self.data_db}" WITH (FORCE)',
        )
        self._forget_queue()

    def _forget_queue(self) -> None:
        """Remove this run's Celery queue keys from the shared Redis."""
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            for key in client.scan_iter(match=f"*{self.queue}*"):
                client.delete(key)
        finally:
            client.close()

    def _command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "airflow", *args]

    def _spawn(self, name: str, *args: str) -> None:
        with (self.logs / f"{name}.log").open("wb") as out:
            self._processes[name] = subprocess.Popen(
                self._command(*args),
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, ended as one
            )

    def _wait_until_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            dead = [name for name, p in self._processes.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited during start-up")
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"api-server not healthy after {timeout} s") from None
                time.sleep(1)

    def tails(self, lines: int = 40) -> str:
        """The end of every process log and of the newest task logs, for a failed check."""
        task_logs = sorted((self.home / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)[
            -4:
        ]
        parts = []
        for path in [*sorted(self.logs.glob("*.log")), *task_logs]:
            content = path.read_text(encoding="utf-8", errors="replace").splitlines()
            parts.append(f"===== {path} (last {lines} lines)\n" + "\n".join(content[-lines:]))
        return "\n".join(parts)

    # --- REST API v2 --------------------------------------------------------------------------

    def login(self, username: str, password: str) -> str:
        """A JWT from the auth manager's token endpoint, as a script or the CLI gets one."""
        reply = self.api(
            "POST", "/auth/token", {"username": username, "password": password}, auth=False
        )
        return reply["access_token"]

    def api(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        """One REST call; an HTTP error raises with the server's explanation."""
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers=headers,
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                content = reply.read()
        except urllib.error.HTTPError as error:
            raise AssertionError(
                f"{method} {path}: HTTP {error.code}: {error.read().decode(errors='replace')}"
            ) from None
        return json.loads(content) if content else None

    def wait_for_dags(self, *dag_ids: str, timeout: float) -> None:
        """Until the DAG processor has parsed the DAGs and the API lists them."""
        deadline = time.monotonic() + timeout
        while True:
            listed = {d["dag_id"] for d in self.api("GET", "/api/v2/dags?limit=100")["dags"]}
            if set(dag_ids) <= listed:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"DAGs {sorted(set(dag_ids) - listed)} not parsed in {timeout} s"
                )
            time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """A manual run with the given Params and no logical date; its run id."""
        run = self.api(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf}
        )
        return run["dag_run_id"]

    def clear_mapped(self, dag_id: str, run_id: str, task_id: str, map_index: int) -> None:
        """Rerun one mapped task instance and what follows it, as the UI's Clear does."""
        self.api(
            "POST",
            f"/api/v2/dags/{dag_id}/clearTaskInstances",
            {
                "dry_run": False,
                "dag_run_id": run_id,
                "task_ids": [[task_id, map_index]],
                "only_failed": False,
                "include_downstream": True,
                "reset_dag_runs": True,
            },
        )

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        """The run's state once it has finished (success or failed)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in TERMINAL_RUN_STATES:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} {run_id} still {state} after {timeout} s")
            time.sleep(2)

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """The run's task instances as ``task_id`` or ``task_id[label]`` for mapped ones."""
        listed = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")[
            "task_instances"
        ]
        return {
            ti["task_id"] + (f"[{ti['rendered_map_index']}]" if ti["map_index"] >= 0 else ""): ti
            for ti in listed
        }
