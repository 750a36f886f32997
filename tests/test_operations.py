"""Operations: the deployment's shape, Airflow running for real, what an operator sees.

- docker-compose.yml is read as YAML (no Docker engine runs here) and held to the settings
  that must agree across Airflow's services, or tasks never report back;
- failure alerts and pick-up notices are built and checked as plain functions;
- the DAG processor's view of the DAGs, and a full refresh run with ``dag.test()``;
- the slow tests start the production shape as local processes (tests/ops_stack.py):
  api-server, scheduler, DAG processor and a Celery worker on PostgreSQL and Redis. They
  trigger a delivery through the REST API, rerun one register the way an operator does,
  watch the asset events write notices, receive a failure alert on a local SMTP server,
  and log in to the UI with headless Chromium.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sqlalchemy import text

from etl import drop
from etl.notify import FailureAlert, alert_message, build_notice, send_alert, write_notice
from etl.period import Period
from etl.reconcile import published_folders
from etl.source import make_engine
from etl.synth import synthesize
from tests.delivery_helpers import (
    expected_pseudonym,
    record_numbers,
    reserve_no_fnr_for_every_npr_person,
)

REPO = Path(__file__).resolve().parent.parent
TODAY = datetime.now(UTC).date()
ELEVEN_DIGITS = re.compile(r"(?<!\d)\d{11}(?!\d)")
DELIVERY_DAGS = ("define_population", "complement_information", "new_information")
ALERT_TO = "leveranse-ops@example.test"

# --- docker-compose.yml ---------------------------------------------------------------------

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES = COMPOSE["services"]
AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
# Settings every Airflow component must share: a scheduler with another JWT secret than the
# api-server issues tokens the execution API refuses; a worker with another broker or
# metadata database never sees its tasks.
SHARED = (
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__DAGS_FOLDER",
    "LEVERANSE_SOURCE_URL",
    "LEVERANSE_STATE_URL",
    "LEVERANSE_SPECS_DIR",
    "LEVERANSE_DROP_DIR",
)


def _mounts(service: str) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts and volumes."""
    mounts = {}
    for volume in SERVICES[service].get("volumes", []):
        # source:target[:mode], where the source may be ${VARIABLE:-default}
        source, _, target = volume.removesuffix(":ro").removesuffix(":rw").rpartition(":")
        mounts[target] = source
    return mounts


def test_compose_has_the_production_services():
    assert set(SERVICES) == {*AIRFLOW_SERVICES, "redis", "airflow-db", "source-db"}
    assert SERVICES["redis"]["image"].startswith("redis:")
    for database in ("airflow-db", "source-db"):
        assert SERVICES[database]["image"].startswith("postgres:")
        assert "pg_isready" in SERVICES[database]["healthcheck"]["test"]


def test_every_airflow_service_shares_the_settings_that_must_agree():
    environments = [SERVICES[name]["environment"] for name in AIRFLOW_SERVICES]
    for key in SHARED:
        values = {env.get(key) for env in environments}
        assert len(values) == 1 and None not in values, f"{key} differs: {values}"
    env = environments[0]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
    assert "@airflow-db:5432/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg://")
    # the source is a database of its own, never Airflow's
    assert "@source-db:5432/" in env["LEVERANSE_SOURCE_URL"]
    # workers call the api-server's execution API by its service name and port
    api_port = SERVICES["airflow-apiserver"]["command"][-1]
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
        f"http://airflow-apiserver:{api_port}/execution/"
    )
    # secrets come from the operator's .env; a default in the file would be everyone's secret
    for secret in ("JWT_SECRET", "API__SECRET_KEY", "FERNET_KEY"):
        value = next(v for k, v in env.items() if k.endswith(secret))
        assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", value), f"{secret} is not required: {value}"


def test_each_service_runs_its_airflow_command():
    commands = {name: SERVICES[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands["airflow-init"] == ["airflow", "db", "migrate"]
    assert commands["airflow-apiserver"][:2] == ["airflow", "api-server"]
    assert commands["airflow-scheduler"] == ["airflow", "scheduler"]
    assert commands["airflow-dag-processor"] == ["airflow", "dag-processor"]
    assert commands["airflow-triggerer"] == ["airflow", "triggerer"]
    assert commands["airflow-worker"] == ["airflow", "celery", "worker"]


def test_services_start_after_the_migration_and_workers_scale_out():
    for name in AIRFLOW_SERVICES[1:]:
        needs = SERVICES[name]["depends_on"]
        assert needs["airflow-init"]["condition"] == "service_completed_successfully", name
        assert needs["airflow-db"]["condition"] == "service_healthy", name
        assert needs["redis"]["condition"] == "service_healthy", name
    assert SERVICES["airflow-init"]["restart"] == "no"
    # `--scale airflow-worker=3` needs a worker without a fixed name or host port
    worker = SERVICES["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker
    # ... and one host name for all, so a new worker cleans what a dead one left in staging
    assert worker["hostname"] == "leveranse-worker"


def test_dags_registers_and_the_drop_folder_are_mounted_where_settings_point():
    for name in AIRFLOW_SERVICES:
        # one user for all, the drop folder's owner on the host (group 0 as in the image)
        assert SERVICES[name]["user"] == "${AIRFLOW_UID:-50000}:0", name
        env, mounts = SERVICES[name]["environment"], _mounts(name)
        assert mounts[env["AIRFLOW__CORE__DAGS_FOLDER"]] == "./dags", name
        assert mounts[env["LEVERANSE_SPECS_DIR"]] == "./registers", name
        assert env["LEVERANSE_DROP_DIR"] in mounts, name
        # required and chosen by the operator: a default under var/ is what make demo resets
        drops = mounts[env["LEVERANSE_DROP_DIR"]]
        assert re.fullmatch(r"\$\{LEVERANSE_DROP_HOST_DIR:\?[^}]+\}", drops), name


def test_the_image_installs_the_project_with_the_pinned_constraints():
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11", dockerfile, re.MULTILINE)
    assert "pip install -c constraints.txt" in dockerfile
    assert {SERVICES[name]["image"] for name in AIRFLOW_SERVICES} == {"leveranse:latest"}
    pins = (REPO / "constraints.txt").read_text(encoding="utf-8")
    assert re.search(r"^apache-airflow-providers-celery==", pins, re.MULTILINE)
    assert re.search(r"^redis==", pins, re.MULTILINE)


# --- failure alerts --------------------------------------------------------------------------


def _alert(reason: str) -> FailureAlert:
    return FailureAlert(
        dag_id="define_population",
        delivery="population",
        register="PHV",
        period="2025-01-01 .. 2025-02-01",
        reason=reason,
        task="deliver_priority_3 [PHV]",
        run_id="manual__2025-02-01T06:00:00+00:00",
        try_number=4,
        log_url="http://airflow.example/dags/define_population/runs/x/tasks/deliver_priority_3",
    )


def test_an_alert_names_register_delivery_period_and_reason_without_identity_numbers():
    reason = (
        "PHV: OperationalError: duplicate key value violates unique constraint, "
        "Key (fnr)=(01817012345) already exists"
    )
    subject, body = alert_message(_alert(reason))

    assert subject == (
        "[leveranse] define_population: PHV failed (population, 2025-01-01 .. 2025-02-01)"
    )
    assert "Register:  PHV" in body
    assert "Delivery:  population (DAG define_population)" in body
    assert "Period:    2025-01-01 .. 2025-02-01" in body
    assert "Reason:    PHV: OperationalError: duplicate key value" in body
    assert "try 4" in body and "tasks/deliver_priority_3" in body
    assert "_quarantine/PHV/population/" in body
    assert not ELEVEN_DIGITS.search(subject + body)
    assert "<11 digits>" in body


def test_a_run_level_alert_says_so():
    alert = _alert("leveranse audit --check: 1 finding(s)")
    subject, body = alert_message(FailureAlert(**{**alert.__dict__, "register": None}))
    assert "the whole run failed" in subject
    assert "_quarantine" not in body


def test_without_recipients_an_alert_goes_to_the_log_only(monkeypatch, caplog):
    monkeypatch.delenv("LEVERANSE_ALERT_EMAIL", raising=False)
    assert send_alert(_alert("PHV: not retried: validation failed")) is False
    assert "PHV failed" in caplog.text


# --- pick-up notices -------------------------------------------------------------------------

PERIOD = Period(date(2025, 1, 1), date(2025, 2, 1))


def _publish(drop_dir: Path, rows: list[str]) -> drop.Published:
    """A drop as etl.drop publishes it: one Parquet file with identity numbers, a manifest."""
    staging = drop.staging_dir(drop_dir, "PHV", "population", PERIOD)
    pq.write_table(pa.table({"fnr": rows}), staging / f"PHV_population_{PERIOD.label}.parquet")
    manifest = {
        "registry": "PHV",
        "delivery": "population",
        "period": {"from": str(PERIOD.start), "to": str(PERIOD.end)},
        "row_count": len(rows),
    }
    return drop.publish(drop_dir, "PHV", "population", PERIOD, staging, manifest)


def test_a_notice_names_the_drop_its_files_and_checksums_and_never_data(tmp_path):
    first = _publish(tmp_path, ["01817012345", "02828054321"])
    second = _publish(tmp_path, ["01817012345"])  # a reservation arrived: version 2

    path = write_notice(tmp_path, "PHV", "population", second.path.name)

    assert path == tmp_path / "_notices" / "PHV" / f"population_{PERIOD.label}.v2.json"
    notice = json.loads(path.read_text(encoding="utf-8"))
    assert notice["folder"] == f"PHV/population/{PERIOD.label}.v2"
    assert (notice["version"], notice["supersedes"]) == (2, first.path.name)
    assert notice["period"] == {"from": "2025-01-01", "to": "2025-02-01"}
    assert notice["files"] == [
        {key: entry[key] for key in ("name", "sha256", "bytes")} for entry in second.files
    ]
    assert notice["manifest"]["sha256"] == drop.sha256_of(second.path / drop.MANIFEST)
    assert not ELEVEN_DIGITS.search(path.read_text(encoding="utf-8"))
    assert path.stat().st_mode & 0o777 == drop.file_mode()
    # written again (a retried task), it is the same file; and no audit takes it for a drop
    before = path.read_bytes()
    assert write_notice(tmp_path, "PHV", "population", second.path.name).read_bytes() == before
    assert [p.name for p in published_folders(tmp_path)] == [first.path.name, second.path.name]


@pytest.mark.parametrize(
    ("code", "delivery", "folder", "error"),
    [
        ("PHV", "population", "../../etc", ValueError),  # an event may not steer the path
        ("../PHV", "population", PERIOD.label, ValueError),
        ("PHV", "population", f"{PERIOD.label}.v7", FileNotFoundError),  # no such version
        ("NORKAR", "new_information", PERIOD.label, FileNotFoundError),
    ],
)
def test_a_notice_is_only_written_for_a_published_drop(tmp_path, code, delivery, folder, error):
    _publish(tmp_path, ["01817012345"])
    with pytest.raises(error):
        build_notice(tmp_path, code, delivery, folder)
    assert not (tmp_path / "_notices").exists()


def test_a_notice_refuses_a_file_that_is_not_the_published_one(tmp_path):
    published = _publish(tmp_path, ["01817012345"])
    data = published.path / published.files[0]["name"]
    data.chmod(0o640)
    data.write_bytes(data.read_bytes() + b"tampered")
    with pytest.raises(ValueError, match="not the published file"):
        build_notice(tmp_path, "PHV", "population", published.path.name)


# --- the DAGs in Airflow, through tests/airflow_runner.py ---------------------------------------

RUNNER = REPO / "tests" / "airflow_runner.py"


def _airflow_env(home: Path, **leveranse: str) -> dict[str, str]:
    """A subprocess environment with nothing Airflow or leveranse from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LEVERANSE_"))}
    return env | {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "GX_ANALYTICS_ENABLED": "False",
        **leveranse,
    }


def _run(env: dict[str, str], *args: str) -> tuple[dict[str, Any], str]:
    """Airflow in a fresh interpreter (it fixes its home at import); its report and output."""
    out = Path(env["AIRFLOW_HOME"]) / "report.json"
    done = subprocess.run(
        [sys.executable, str(RUNNER), *args, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    return json.loads(out.read_text(encoding="utf-8")), output


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the DAG processor makes of every file in dags/ (no metadata database needed)."""
    return _run(_airflow_env(tmp_path_factory.mktemp("airflow-parse-ops")), "parse")[0]


def test_drop_notices_is_documented_and_scheduled_on_the_drop_assets(parsed):
    notices = parsed["dags"]["drop_notices"]
    docstring = ast.get_docstring(ast.parse((REPO / "dags" / "drop_notices.py").read_text()))
    assert notices["doc_md"].strip() == docstring.strip()
    assert notices["tags"] == ["leveranse", "notices"]
    assert notices["owner"] == "leveranse"
    assert notices["timetable"] == "AssetTriggeredTimetable"
    assert list(notices["tasks"]) == ["write_notices"]
    # A drop a register was not told about is an operator's business: the failure alerts.
    assert notices["tasks"]["write_notices"]["on_failure"] == ["alert_on_notice_failure"]


@pytest.mark.parametrize("dag_id", DELIVERY_DAGS)
def test_the_trigger_form_offers_a_full_refresh(parsed, dag_id):
    assert "full_refresh" in parsed["dags"][dag_id]["params"]


@pytest.fixture(scope="module")
def migrated_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite metadata database for dag.test() runs."""
    home = tmp_path_factory.mktemp("airflow-home-ops")
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=_airflow_env(home),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return home


def _dag_test(home: Path, workdir: Path, conf: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """One define_population run with dag.test() on a small synthetic SQLite source."""
    source = workdir / "source.db"
    engine = make_engine(f"sqlite:///{source}")
    try:
        synthesize(engine, persons=300, seed=7, today=TODAY)
    finally:
        engine.dispose()
    env = _airflow_env(
        home,
        LEVERANSE_SOURCE_URL=f"sqlite:///{source}",
        LEVERANSE_SPECS_DIR=str(REPO / "registers"),
        LEVERANSE_DROP_DIR=str(workdir / "drops"),
        LEVERANSE_STATE_URL=f"sqlite:///{workdir / 'state.db'}",
    )
    return _run(env, "test", "define_population", "--conf", json.dumps(conf))


@pytest.mark.slow
@pytest.mark.xdist_group("airflow-ops-dagtest")
def test_full_refresh_delivers_each_registers_whole_lookback_window(migrated_home, tmp_path):
    end = TODAY - timedelta(days=10)
    conf = {"full_refresh": True, "period_to": str(end)}
    report, output = _dag_test(migrated_home, tmp_path, conf)

    assert report["state"] == "success", output[-5000:]
    assert "PHV: full refresh, the whole lookback window of 730 days" in output
    folders = (tmp_path / "drops" / "PHV" / "population").iterdir()
    assert [f.name for f in folders] == [f"{end - timedelta(days=730)}_{end}"]


# --- the real thing: Airflow's processes on PostgreSQL, Redis and Celery ---------------------

SYNTH_PERSONS = 300
RUN_TIMEOUT = 300.0


@contextmanager
def explained(stack: Any) -> Iterator[None]:
    """On any failure, print the end of every process log and the newest task logs."""
    try:
        yield
    except BaseException:
        print(stack.tails())
        raise


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """The stack with alert mail going to a local SMTP server; ended whatever happens."""
    from tests.ops_smtp import SmtpSink
    from tests.ops_stack import AirflowStack

    specs = tmp_path_factory.mktemp("specs")  # a test may add a register for a while
    for spec in (REPO / "registers").glob("*.yaml"):
        shutil.copy(spec, specs / spec.name)
    with SmtpSink() as sink:
        connection = {
            "conn_type": "smtp",
            "host": "127.0.0.1",
            "port": sink.port,
            "extra": {"disable_tls": True, "disable_ssl": True, "timeout": 10},
        }
        stack = AirflowStack(
            tmp_path_factory.mktemp("ops"),
            TODAY,
            {
                "LEVERANSE_ALERT_EMAIL": ALERT_TO,
                "LEVERANSE_ALERT_FROM": "leveranse@example.test",
                "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(connection),
                "LEVERANSE_SPECS_DIR": str(specs),
            },
        )
        try:
            with explained(stack):
                stack.start(persons=SYNTH_PERSONS)
                stack.wait_for_dags(*DELIVERY_DAGS, "drop_notices", timeout=120)
                for dag_id in ("define_population", "drop_notices"):
                    stack.unpause(dag_id)
            yield stack, sink
        finally:
            stack.stop()


def _wait_for_file(path: Path, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout} s")
        time.sleep(2)
    return path


def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / drop.MANIFEST).read_text(encoding="utf-8"))


def _reserve(source_url: str, fnr: str) -> None:
    """The person opts out of PHV a minute ago (Helsenorge's copy in the source)."""
    engine = make_engine(source_url)
    try:
        with engine.begin() as conn:
            next_id = conn.execute(
                text("SELECT COALESCE(MAX(reservation_id), 0) + 1 FROM reservation")
            ).scalar()
            conn.execute(
                text(
                    "INSERT INTO reservation (reservation_id, fnr, registry, scope, registered_at)"
                    " VALUES (:id, :fnr, 'PHV', 'OPT_OUT', :at)"
                ),
                {
                    "id": next_id,
                    "fnr": fnr,
                    "at": datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=1),
                },
            )
    finally:
        engine.dispose()


def _task_log(stack: Any, dag_id: str, run_id: str, task_id: str, attempt: int) -> str:
    """A task attempt's log as the worker wrote it (mapped instances have their own files)."""
    run_dir = stack.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    files = sorted(run_dir.rglob(f"attempt={attempt}.log"))
    assert files, f"no log of {task_id} attempt {attempt} under {run_dir}"
    return "\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.xdist_group("airflow-services")
def test_a_delivery_runs_on_celery_and_one_register_is_rerun_after_a_reservation(services):
    stack, _ = services
    period_from = TODAY - timedelta(days=730)
    with explained(stack):
        # registers null: what a script sends for "all registers" (issue 7)
        conf = {"registers": None, "period_from": str(period_from), "period_to": str(TODAY)}
        run_id = stack.trigger("define_population", conf)
        assert stack.wait_for_run("define_population", run_id, RUN_TIMEOUT) == "success"
        tasks = stack.task_instances("define_population", run_id)
        phv = tasks["deliver_priority_3[PHV]"]
        assert (phv["state"], phv["try_number"]) == ("success", 1)
        assert tasks["summary"]["state"] == "success"
        assert "audit: checked" in _task_log(stack, "define_population", run_id, "summary", 1)

        label = f"{period_from}_{TODAY}"
        first = stack.drop_dir / "PHV" / "population" / label
        manifest = _manifest(first)
        assert manifest["validation"]["success"] is True and manifest["row_count"] > 0
        # the asset event scheduled drop_notices, which wrote the pick-up notice
        notice = _wait_for_file(
            stack.drop_dir / "_notices" / "PHV" / f"population_{label}.json", RUN_TIMEOUT
        )
        assert (
            json.loads(notice.read_text())["files"][0]["sha256"] == (manifest["files"][0]["sha256"])
        )

        # An operator reruns PHV after a reservation arrived: clear its mapped instance.
        delivered = pq.read_table(first / manifest["files"][0]["name"])
        reserved = delivered.column("fnr").drop_null()[0].as_py()
        _reserve(stack.source_url, reserved)
        stack.clear_mapped("define_population", run_id, "deliver_priority_3", phv["map_index"])
        assert stack.wait_for_run("define_population", run_id, RUN_TIMEOUT) == "success"
        rerun = stack.task_instances("define_population", run_id)["deliver_priority_3[PHV]"]
        assert (rerun["state"], rerun["try_number"]) == ("success", 2)

        second = first.with_name(f"{label}.v2")
        manifest_v2 = _manifest(second)
        assert (manifest_v2["version"], manifest_v2["supersedes"]) == (2, label)
        rows = pq.read_table(second / manifest_v2["files"][0]["name"])
        assert reserved not in rows.column("fnr").to_pylist()
        assert 0 < rows.num_rows < delivered.num_rows
        assert _manifest(first) == manifest  # published folders are never modified
        _wait_for_file(
            stack.drop_dir / "_notices" / "PHV" / f"population_{label}.v2.json", RUN_TIMEOUT
        )


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.xdist_group("airflow-services")
def test_failures_alert_by_mail_with_register_period_and_reason(services):
    stack, sink = services
    future = TODAY + timedelta(days=30)  # an operator's typo: nothing can be due from then
    with explained(stack):
        run_id = stack.trigger(
            "define_population", {"registers": ["PHV"], "period_from": str(future)}
        )
        assert stack.wait_for_run("define_population", run_id, RUN_TIMEOUT) == "failed"
        tasks = stack.task_instances("define_population", run_id)
        phv = tasks["deliver_priority_3[PHV]"]
        assert (phv["state"], phv["try_number"]) == ("failed", 1)  # not retried
        assert tasks["summary"]["state"] == "failed"
        log = _task_log(stack, "define_population", run_id, "deliver_priority_3", 1)
        assert "PHV: not retried: period start" in log

        (mail,) = sink.wait_for(1, timeout=60)
        body = mail.get_body(("html", "plain")).get_content()
        assert mail["To"] == ALERT_TO
        assert mail["Subject"] == (
            f"[leveranse] define_population: PHV failed (population, {future} .. today)"
        )
        assert "Register:  PHV" in body
        assert "Delivery:  population (DAG define_population)" in body
        assert f"must be before its end {TODAY}" in body
        assert not ELEVEN_DIGITS.search(body)

        # A run refused before any delivery alerts once, for the whole run.
        conf = {"full_refresh": True, "period_from": str(TODAY - timedelta(days=30))}
        refused = stack.trigger("define_population", conf)
        assert stack.wait_for_run("define_population", refused, RUN_TIMEOUT) == "failed"
        tasks = stack.task_instances("define_population", refused)
        assert tasks["list_registers"]["state"] == "failed"
        mails = sink.wait_for(2, timeout=60)
        assert mails[1]["Subject"].startswith(
            "[leveranse] define_population: the whole run failed (population, unknown "
            "(full_refresh delivers each register's whole lookback window"
        )
        # the failed summaries did not alert again: each cause has said it all
        time.sleep(5)
        assert len(sink.messages) == 2


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.xdist_group("airflow-services")
def test_a_celery_worker_takes_the_key_from_a_connection_an_operator_stored_in_airflow(
    services,
):
    """The deployment's own path for the key: an operator stores the connection
    leveranse_pseudonym in Airflow (UI or REST API, so in the metadata database, encrypted
    with the Fernet key), and the Celery worker reads it through the execution API. The
    worker has no LEVERANSE_PSEUDONYM_KEY; the key ends up in no log and no drop."""
    stack, _ = services
    key = hashlib.sha256(b"the operator's connection in the metadata database").hexdigest()
    specs = Path(stack.env["LEVERANSE_SPECS_DIR"])
    document = yaml.safe_load((specs / "phv.yaml").read_text(encoding="utf-8"))
    document |= {"code": "PHVPSEUDO", "name": "PHV, pseudonymising", "priority": 4}
    document["reservations"]["no_fnr"] = "pseudonymise"
    added = specs / "phvpseudo.yaml"
    added.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    assert "LEVERANSE_PSEUDONYM_KEY" not in stack.env
    added_reservations = reserve_no_fnr_for_every_npr_person(stack.source_url)
    try:
        with explained(stack):
            stack.api(
                "POST",
                "/api/v2/connections",
                {"connection_id": "leveranse_pseudonym", "conn_type": "generic", "password": key},
            )
            period_from = TODAY - timedelta(days=730)
            conf = {"registers": ["PHVPSEUDO"], "period_from": str(period_from)}
            run_id = stack.trigger("define_population", conf)
            assert stack.wait_for_run("define_population", run_id, RUN_TIMEOUT) == "success"
            folder = stack.drop_dir / "PHVPSEUDO" / "population" / f"{period_from}_{TODAY}"
            manifest = _manifest(folder)
            rows = pq.read_table(folder / manifest["files"][0]["name"]).to_pylist()
            numbers = record_numbers(stack.source_url)
            pseudonymised = [row for row in rows if row["source"] == "NPR"]
            assert pseudonymised, "no NPR row in the drop: nothing was pseudonymised"
            for row in pseudonymised:
                assert row["fnr"] is None
                number = numbers[(row["source"], row["record_id"])]
                assert row["pseudonym"] == expected_pseudonym(key, "PHVPSEUDO", number)
            leaked = [
                path
                for root in (stack.logs, stack.home / "logs", stack.drop_dir)
                for path in root.rglob("*")
                if path.is_file() and key.encode() in path.read_bytes()
            ]
            assert leaked == []
    finally:
        added.unlink()
        stack.api("DELETE", "/api/v2/connections/leveranse_pseudonym")
        _remove_reservations(stack.source_url, added_reservations)
        _reparsed_without(stack, "define_population", "PHVPSEUDO")


def _reparsed_without(stack: Any, dag_id: str, code: str) -> None:
    """Have the DAG processor parse the DAG file again and wait until its trigger form no
    longer offers ``code``: the form's suggestions are read at parse time, and the next
    test looks at them."""

    def offered() -> list[str]:
        details = stack.api("GET", f"/api/v2/dags/{dag_id}/details")
        return details["params"]["registers"]["schema"].get("examples", [])

    details = stack.api("GET", f"/api/v2/dags/{dag_id}/details")
    stack.api("PUT", f"/api/v2/parseDagFile/{details['file_token']}")
    deadline = time.monotonic() + 120
    while code in offered():
        assert time.monotonic() < deadline, f"{dag_id} still offers {code} after 120 s"
        time.sleep(2)


def _remove_reservations(source_url: str, ids: range) -> None:
    engine = make_engine(source_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "DELETE FROM reservation"
                    " WHERE reservation_id >= :low AND reservation_id < :high"
                ),
                {"low": ids.start, "high": ids.stop},
            )
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.xdist_group("airflow-services")
@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="no chromium: apt-get install -y chromium"
)
def test_an_operator_logs_in_and_sees_the_dags_and_the_trigger_form(services, tmp_path):
    from tests.ops_browser import Browser

    stack, _ = services
    with explained(stack), Browser(tmp_path / "chromium.log") as browser:
        try:
            browser.goto(f"{stack.url}/dags")
            browser.wait_for_text("Sign into Airflow")  # sent to the login page
            browser.type_into("input[name=username]", "operator")
            browser.type_into("input[name=password]", stack.password)
            browser.click_button("Sign in")
            listed = browser.wait_for_text(*DELIVERY_DAGS, "drop_notices")
            assert "leveranse, population" in listed  # tags

            browser.goto(f"{stack.url}/dags/define_population")
            browser.wait_for_text("Owner", "leveranse", "deliver_priority_3 [")
            browser.click_button("Trigger")
            form = browser.wait_for_text(
                "Registers", "Period from", "Period to", "Reservations as of", "Full refresh"
            )
            assert "Register codes to deliver" in form
            # the Registers field offers the known codes (the multi-select's options)
            params = stack.api("GET", "/api/v2/dags/define_population/details")["params"]
            assert params["registers"]["schema"]["examples"] == ["PHV"]
            # ... and is optional: left empty, the form sends null and triggers every register
            assert "This field is required" not in form
            required = _required_fields(browser)
            assert "Full refresh" in required  # a checkbox: the mark is there to be seen
            assert "Registers" not in required
            known = {run["dag_run_id"] for run in stack.runs("define_population")}
            browser.wait_for(DIALOG_TRIGGER)
            run = _new_run(stack, "define_population", known, timeout=60)
            assert run["conf"].get("registers") is None
            assert stack.wait_for_run("define_population", run["dag_run_id"], RUN_TIMEOUT) == (
                "success"
            )
        except BaseException:
            print("screenshot:", browser.screenshot(tmp_path / "ui.png"))
            raise


# The trigger dialog's submit button, by the UI's own test id: the page's "Trigger" button
# stays behind the dialog, and other popovers of the page are dialogs too.
DIALOG_TRIGGER = (
    "(() => { const button = document.querySelector('[data-testid=trigger-dag-submit]');"
    " if (button && !button.disabled) { button.click(); return true; } return false; })()"
)


def _required_fields(browser: Any) -> set[str]:
    """The form's field labels that carry the required mark (a trailing "*")."""
    labels = browser.evaluate(
        "[...document.querySelectorAll('[role=dialog] label')].map(l => l.innerText.trim())"
    )
    return {label.removesuffix("*").strip() for label in labels if label.endswith("*")}


def _new_run(stack: Any, dag_id: str, known: set[str], timeout: float) -> dict[str, Any]:
    """The run of ``dag_id`` that is not among ``known``, once the API lists it."""
    deadline = time.monotonic() + timeout
    while not (new := [r for r in stack.runs(dag_id) if r["dag_run_id"] not in known]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no new {dag_id} run within {timeout} s")
        time.sleep(1)
    (run,) = new
    return run
