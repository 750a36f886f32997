"""The delivery DAGs: every file imports, each DAG has the designed shape, and runs succeed
or fail in Airflow the way an operator expects.

Airflow runs in subprocesses (tests/airflow_runner.py), never in the pytest process. Airflow
fixes its home, metadata database and dags folder when it is first imported; a pytest worker
that runs other modules, or several of these tests, could not point it at each test's
temporary folders, and an import in the test process would also write to ~/airflow. A fresh
interpreter per step costs about 4 s and makes every test independent of collection order.

The dag.test() runs share one migrated SQLite metadata database per pytest process
(migrating takes ~8 s) and run one after another in it; they are one xdist group so that
``--dist loadgroup`` keeps them on one worker and migrates once. Each test has its own source
copy where it changes one, state database and drop folder, so a split group (pytest 9.2 with
pytest-xdist 3.8 ignores xdist_group) costs one more migration, nothing else.
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
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow.parquet as pq
import pytest
import yaml
from sqlalchemy import text

from etl.source import make_engine
from etl.synth import synthesize
from tests.delivery_helpers import (
    expected_pseudonym,
    record_numbers,
    reserve_no_fnr_for_every_npr_person,
)

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
RUNNER = Path(__file__).with_name("airflow_runner.py")
DAG_FILES = sorted(DAGS.glob("*.py"))
# drop_notices is scheduled on the drops' assets, not nightly (tests/test_operations.py).
DELIVERY_DAG_FILES = [f for f in DAG_FILES if f.stem != "drop_notices"]
TODAY = datetime.now(UTC).date()
SYNTH_PERSONS = 300
ELEVEN_DIGITS = re.compile(r"(?<!\d)\d{11}(?!\d)")
SHIPPED_CODES = {
    "define_population": ["PHV"],
    "complement_information": ["PARKINSON"],
    "new_information": ["NORKAR"],
}
KEY_CONNECTION_VARIABLE = "AIRFLOW_CONN_LEVERANSE_PSEUDONYM"


def _env(airflow_home: Path, **leveranse: str) -> dict[str, str]:
    """The subprocess environment: nothing Airflow or leveranse from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LEVERANSE_"))}
    return env | {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "GX_ANALYTICS_ENABLED": "False",
        **leveranse,
    }


def _runner(env: dict[str, str], out: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Run the helper; return its JSON report and everything it printed."""
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


# --- parsing ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What a DagBag over dags/ holds (parsing needs no metadata database)."""
    home = tmp_path_factory.mktemp("airflow-parse")
    report, _ = _runner(_env(home), home / "parse.json", "parse")
    return report


def test_dags_folder_holds_dag_files():
    assert DAG_FILES, "no DAG file in dags/"


def test_every_dag_file_imports_as_a_dag_named_after_it(parsed):
    assert parsed["import_errors"] == {}
    assert {Path(d["fileloc"]).stem for d in parsed["dags"].values()} == {f.stem for f in DAG_FILES}
    for dag_id, dag in parsed["dags"].items():
        assert Path(dag["fileloc"]).stem == dag_id


@pytest.mark.parametrize("path", DELIVERY_DAG_FILES, ids=lambda p: p.stem)
def test_dag_is_documented_tagged_and_nightly(parsed, path):
    dag = parsed["dags"][path.stem]
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")), clean=False)
    assert docstring and dag["doc_md"] == docstring
    delivery = next(t for t in dag["tags"] if t != "leveranse")
    assert sorted(dag["tags"]) == sorted(["leveranse", delivery])
    assert (dag["timetable"], dag["cron"], dag["timezone"]) == (
        "CronDataIntervalTimetable",
        "0 2 * * *",
        "UTC",
    )
    assert dag["catchup"] is False
    assert dag["max_active_runs"] == 1
    assert dag["owner"] == "leveranse"
    assert dag["params"] == [
        "full_refresh",
        "period_from",
        "period_to",
        "registers",
        "reservations_as_of",
    ]


@pytest.mark.parametrize("path", DELIVERY_DAG_FILES, ids=lambda p: p.stem)
def test_registers_param_is_optional_and_suggests_the_known_codes(parsed, path):
    """Issue 7: the form marks a Param required unless its type allows null, and clearing the
    multi-select sends null; null and [] both mean every register of the DAG's type."""
    param = parsed["dags"][path.stem]["param_schemas"]["registers"]
    schema = param["schema"]
    assert param["value"] is None
    assert "null" in schema["type"]
    assert schema["examples"] == SHIPPED_CODES[path.stem]
    checker = jsonschema.FormatChecker()
    for accepted in (None, [], SHIPPED_CODES[path.stem]):
        jsonschema.validate(accepted, schema, format_checker=checker)
    for refused in ("PHV", ["phv"], [None]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(refused, schema, format_checker=checker)


@pytest.mark.parametrize("path", DELIVERY_DAG_FILES, ids=lambda p: p.stem)
def test_dag_doc_tells_full_refresh_alerts_and_asset_events(parsed, path):
    doc = parsed["dags"][path.stem]["doc_md"]
    for needle in ("full_refresh", "alert", "asset event", "drop/<CODE>/<delivery>"):
        assert needle in doc, needle


@pytest.mark.parametrize("path", DELIVERY_DAG_FILES, ids=lambda p: p.stem)
def test_registers_map_per_priority_class_into_one_final_summary(parsed, path):
    tasks = parsed["dags"][path.stem]["tasks"]
    for priority, weight in zip((1, 2, 3, 4), (4, 3, 2, 1), strict=True):
        picker = tasks[f"priority_{priority}_registers"]
        deliver = tasks[f"deliver_priority_{priority}"]
        assert picker["downstream"] == [f"deliver_priority_{priority}"]
        assert deliver["mapped"] is True
        assert (deliver["priority_weight"], deliver["weight_rule"]) == (weight, "absolute")
        assert deliver["retries"] == 3
        assert deliver["downstream"] == ["summary"]
    # The summary is the only leaf, so the run's state is its state.
    leaves = [task_id for task_id, task in tasks.items() if not task["downstream"]]
    assert leaves == ["summary"]
    assert tasks["summary"]["trigger_rule"] == "all_done"


def test_parsing_the_dags_does_not_import_great_expectations(parsed):
    """GX takes ~7 s and 260 MB; the DAG processor parses every file every few minutes."""
    assert parsed["great_expectations_imported"] is False


# --- runs ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated metadata database for every dag.test() run of the session."""
    home = tmp_path_factory.mktemp("airflow-home")
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return home


def _synthetic_source(path: Path) -> str:
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    try:
        synthesize(engine, persons=SYNTH_PERSONS, seed=7, today=TODAY)
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="session")
def source_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small synthetic source, read-only for the runs that share it."""
    return _synthetic_source(tmp_path_factory.mktemp("source") / "source.db")


def _identity_numbers(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            sql = "SELECT fnr FROM npr_episode UNION SELECT fnr FROM kpr_contact"
            return set(conn.execute(text(sql)).scalars())
    finally:
        engine.dispose()


def _run_dag(
    airflow_home: Path,
    tmp_path: Path,
    source: str,
    conf: dict[str, Any] | None = None,
    logical_date: str | None = None,
    specs: Path = REPO / "registers",
    dag_id: str = "define_population",
    secrets: dict[str, str] | None = None,
) -> tuple[dict[str, Any], str]:
    env = _env(
        airflow_home,
        LEVERANSE_SOURCE_URL=source,
        LEVERANSE_SPECS_DIR=str(specs),
        LEVERANSE_DROP_DIR=str(tmp_path / "drops"),
        LEVERANSE_STATE_URL=f"sqlite:///{tmp_path / 'state.db'}",
        **(secrets or {}),
    )
    args = ["test", dag_id, "--conf", json.dumps(conf or {})]
    if logical_date is not None:
        args += ["--logical-date", logical_date]
    return _runner(env, tmp_path / "run.json", *args)


def _tasks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Task instances by task_id, mapped ones as task_id[label]."""
    return {
        t["task_id"] + (f"[{t['label']}]" if t["map_index"] >= 0 else ""): t
        for t in report["tasks"]
    }


def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def _two_years() -> dict[str, str]:
    return {
        "period_from": (TODAY - timedelta(days=730)).isoformat(),
        "period_to": TODAY.isoformat(),
    }


@pytest.mark.slow
@pytest.mark.xdist_group("airflow")
def test_population_dag_delivers_every_population_register(airflow_home, source_url, tmp_path):
    period = _two_years()
    # registers null, as the trigger form sends it once the field is cleared
    report, output = _run_dag(airflow_home, tmp_path, source_url, conf=period | {"registers": None})

    assert report["state"] == "success", output[-5000:]
    tasks = _tasks(report)
    assert tasks["deliver_priority_3[PHV]"]["state"] == "success"
    for empty_class in (1, 2, 4):  # no population register has these priorities
        assert tasks[f"deliver_priority_{empty_class}"]["state"] == "skipped"
    assert tasks["summary"]["state"] == "success"

    folder = tmp_path / "drops" / "PHV" / "population" / f"{period['period_from']}_{TODAY}"
    manifest = _manifest(folder)
    assert manifest["validation"]["success"] is True
    assert manifest["row_count"] > 0
    assert (folder / manifest["files"][0]["name"]).is_file()
    leaked = set(ELEVEN_DIGITS.findall(output)) & _identity_numbers(source_url)
    assert not leaked, f"{len(leaked)} identity numbers in the Airflow log"


@pytest.mark.slow
@pytest.mark.xdist_group("airflow")
def test_nightly_run_delivers_its_one_day_data_interval(airflow_home, source_url, tmp_path):
    logical = datetime.combine(TODAY - timedelta(days=3), datetime.min.time(), UTC)
    report, output = _run_dag(
        airflow_home, tmp_path, source_url, logical_date=(logical + timedelta(hours=12)).isoformat()
    )

    assert report["state"] == "success", output[-5000:]
    start, end = (datetime.fromisoformat(bound) for bound in report["data_interval"])
    assert (start.hour, end - start) == (2, timedelta(days=1))
    folder = tmp_path / "drops" / "PHV" / "population" / f"{start.date()}_{end.date()}"
    assert _manifest(folder)["validation"]["success"] is True


@pytest.fixture
def two_population_specs(tmp_path: Path) -> Path:
    """PHV as shipped, and a copy of it under another code in priority class 1."""
    specs = tmp_path / "specs"
    specs.mkdir()
    shutil.copy(REPO / "registers" / "phv.yaml", specs / "phv.yaml")
    document = yaml.safe_load((REPO / "registers" / "phv.yaml").read_text(encoding="utf-8"))
    document |= {"code": "PSYK2", "name": "A second population register", "priority": 1}
    (specs / "psyk2.yaml").write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")
    return specs


@pytest.mark.slow
@pytest.mark.xdist_group("airflow")
def test_params_deliver_one_register_for_an_explicit_period(
    airflow_home, source_url, tmp_path, two_population_specs
):
    start, end = date(TODAY.year - 1, 1, 1), date(TODAY.year - 1, 7, 1)
    conf = {"registers": ["PSYK2"], "period_from": str(start), "period_to": str(end)}
    report, output = _run_dag(
        airflow_home, tmp_path, source_url, conf=conf, specs=two_population_specs
    )

    assert report["state"] == "success", output[-5000:]
    tasks = _tasks(report)
    assert tasks["deliver_priority_1[PSYK2]"]["state"] == "success"
    assert tasks["deliver_priority_3"]["state"] == "skipped"  # PHV not asked for
    published = (tmp_path / "drops" / "PSYK2" / "population").iterdir()
    assert [p.name for p in published if not p.name.startswith(".")] == [f"{start}_{end}"]
    assert not (tmp_path / "drops" / "PHV").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("airflow")
def test_unknown_register_in_params_fails_before_any_delivery(airflow_home, source_url, tmp_path):
    report, output = _run_dag(airflow_home, tmp_path, source_url, conf={"registers": ["NOPE"]})

    assert report["state"] == "failed"
    tasks = _tasks(report)
    assert tasks["list_registers"]["state"] == "failed"
    assert tasks["summary"]["state"] == "failed"
    assert "names NOPE, not population register(s)" in output
    assert "the population registers are: PHV" in output
    assert "no register list: see the task list_registers" in output
    assert not (tmp_path / "drops").exists()


@pytest.mark.slow
@pytest.mark.xdist_group("airflow")
def test_a_broken_spec_file_stops_its_register_only_and_fails_the_run_with_an_alert(
    airflow_home, source_url, tmp_path, two_population_specs
):
    """A typo in one register's spec must not stop the others' nightly deliveries: PHV is
    delivered, PSYK2's file is named in the summary's failure and its alert."""
    broken = two_population_specs / "psyk2.yaml"
    broken.write_text(broken.read_text(encoding="utf-8") + "colour: blue\n", encoding="utf-8")
    period = _two_years()
    report, output = _run_dag(
        airflow_home, tmp_path, source_url, conf=period, specs=two_population_specs
    )

    assert report["state"] == "failed"
    tasks = _tasks(report)
    assert tasks["deliver_priority_3[PHV]"]["state"] == "success"
    assert tasks["deliver_priority_1"]["state"] == "skipped"  # PSYK2 not listed
    assert tasks["summary"]["state"] == "failed"
    assert "1 spec file(s) not used, their registers not delivered" in output
    assert f"{broken}: key 'colour': value 'blue'" in output
    assert "Task:      summary, try 1" in output  # the alert, logged: no recipients here
    folder = tmp_path / "drops" / "PHV" / "population" / f"{period['period_from']}_{TODAY}"
    assert _manifest(folder)["validation"]["success"] is True
    assert not (tmp_path / "drops" / "PSYK2").exists()

    report, output = _run_dag(
        airflow_home,
        tmp_path,
        source_url,
        conf={"registers": ["PSYK2"]},
        specs=two_population_specs,
    )
    assert _tasks(report)["list_registers"]["state"] == "failed"
    assert f"PSYK2: {broken}: key 'colour'" in output


@pytest.mark.slow
@pytest.mark.xdist_group("airflow")
def test_failed_validation_fails_the_run_at_once_and_publishes_nothing(airflow_home, tmp_path):
    """A copy of the source that lost npr_episode's primary key delivers each episode twice.

    That happens to real replicas (a table recreated with CREATE TABLE AS); the suite's
    record-key uniqueness catches it, and no retry can make it pass.
    """
    source = _synthetic_source(tmp_path / "source.db")
    engine = make_engine(source)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE npr_episode RENAME TO npr_episode_with_key"))
        conn.execute(text("CREATE TABLE npr_episode AS SELECT * FROM npr_episode_with_key"))
        conn.execute(text("INSERT INTO npr_episode SELECT * FROM npr_episode_with_key"))
    engine.dispose()

    report, output = _run_dag(airflow_home, tmp_path, source, conf=_two_years())

    assert report["state"] == "failed"
    tasks = _tasks(report)
    failed = tasks["deliver_priority_3[PHV]"]
    assert (failed["state"], failed["try_number"]) == ("failed", 1)  # not up_for_retry
    assert tasks["summary"]["state"] == "failed"
    assert "PHV: not retried: validation failed" in output
    assert not (tmp_path / "drops" / "PHV").exists()
    quarantined = list((tmp_path / "drops" / "_quarantine" / "PHV" / "population").iterdir())
    assert len(quarantined) == 1


@pytest.mark.slow
@pytest.mark.xdist_group("airflow")
def test_complement_dag_delivers_parkinson_with_coverage(airflow_home, source_url, tmp_path):
    period = _two_years()
    report, output = _run_dag(
        airflow_home, tmp_path, source_url, conf=period, dag_id="complement_information"
    )
    assert report["state"] == "success", output[-5000:]
    assert _tasks(report)["deliver_priority_2[PARKINSON]"]["state"] == "success"
    folder = tmp_path / "drops" / "PARKINSON" / "complement" / f"{period['period_from']}_{TODAY}"
    manifest = _manifest(folder)
    assert manifest["validation"]["success"] is True
    assert manifest["row_count"] > 0
    lowest, highest = manifest["coverage"]["coverage_range"]
    assert 0 <= lowest <= highest <= 1
    assert (tmp_path / "drops" / "_reports" / "PARKINSON" / "coverage.html").is_file()


@pytest.mark.slow
@pytest.mark.xdist_group("airflow")
def test_new_information_dag_delivers_norkar(airflow_home, source_url, tmp_path):
    period = _two_years()
    report, output = _run_dag(
        airflow_home, tmp_path, source_url, conf=period, dag_id="new_information"
    )
    assert report["state"] == "success", output[-5000:]
    assert _tasks(report)["deliver_priority_1[NORKAR]"]["state"] == "success"
    folder = tmp_path / "drops" / "NORKAR" / "new_information" / f"{period['period_from']}_{TODAY}"
    manifest = _manifest(folder)
    assert manifest["validation"]["success"] is True
    rows = pq.read_table(folder / f"NORKAR_new_information_{folder.name}.parquet")
    assert rows.num_rows > 0
    assert set(rows.column("event").to_pylist()) <= {"follow_up", "new_case"}


# --- the pseudonymisation key -------------------------------------------------------------


def _key_connection(password: str | None) -> dict[str, str]:
    """The connection leveranse_pseudonym in the JSON form of AIRFLOW_CONN_*."""
    fields = {"conn_type": "generic"} | ({} if password is None else {"password": password})
    return {KEY_CONNECTION_VARIABLE: json.dumps(fields)}


def _key_text(seed: str) -> str:
    """A test key of 64 characters that names its test, so a leak points at its source."""
    return hashlib.sha256(seed.encode()).hexdigest()


@pytest.mark.parametrize(
    ("configured", "used", "refusal"),
    [
        ({"connection": "conn"}, "conn", None),
        ({"variable": "var", "connection": "conn"}, "var", None),
        ({}, None, "LEVERANSE_PSEUDONYM_KEY is not set and Airflow has no connection "),
        (
            {"connection": "short"},
            None,
            "the password of the Airflow connection leveranse_pseudonym is shorter than 32",
        ),
        ({"variable": "short"}, None, "LEVERANSE_PSEUDONYM_KEY is shorter than 32 bytes"),
        (
            {"connection": None},
            None,
            "the password of the Airflow connection leveranse_pseudonym is not set",
        ),
    ],
    ids=["connection", "variable-wins", "neither", "short-connection", "short-variable", "empty"],
)
def test_a_task_takes_the_key_from_the_environment_else_the_connection(
    tmp_path, configured, used, refusal
):
    """The same minimum length holds for both sources; a refusal names the source only."""
    keys = {name: _key_text(name) for name in ("var", "conn")} | {"short": "s" * 31}
    secrets = {}
    if "variable" in configured:
        secrets["LEVERANSE_PSEUDONYM_KEY"] = keys[configured["variable"]]
    if "connection" in configured:
        name = configured["connection"]
        secrets |= _key_connection(None if name is None else keys[name])
    report, output = _runner(_env(tmp_path, **secrets), tmp_path / "key.json", "pseudonym-key")

    if used is None:
        assert report["refused"].startswith(refusal)
    else:
        assert report["pseudonym"] == expected_pseudonym(keys[used], "TEST", report["fnr"])
    for key in keys.values():
        assert key not in output and key not in json.dumps(report)


@pytest.fixture
def pseudonymising_specs(tmp_path: Path) -> Path:
    """PHV as shipped, except that persons with a NO_FNR reservation are pseudonymised."""
    specs = tmp_path / "specs"
    specs.mkdir()
    document = yaml.safe_load((REPO / "registers" / "phv.yaml").read_text(encoding="utf-8"))
    document["reservations"]["no_fnr"] = "pseudonymise"
    (specs / "phv.yaml").write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")
    return specs


@pytest.fixture
def no_fnr_source(tmp_path: Path) -> str:
    """A synthetic source where every person with NPR episodes has reserved against NPR
    handing out their number (NO_FNR), so every NPR row for PHV must carry a pseudonym."""
    url = _synthetic_source(tmp_path / "source.db")
    reserve_no_fnr_for_every_npr_person(url)
    return url


def _files_holding(needle: str, *roots: Path) -> list[Path]:
    """Every file under the roots whose bytes contain the needle."""
    return [
        path
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and needle.encode("utf-8") in path.read_bytes()
    ]


@pytest.mark.slow
@pytest.mark.xdist_group("airflow")
def test_pseudonyms_come_from_the_airflow_connection_and_the_key_is_written_nowhere(
    airflow_home, tmp_path, pseudonymising_specs, no_fnr_source
):
    key = _key_text(f"connection key of {tmp_path.name}")
    period = _two_years()
    report, output = _run_dag(
        airflow_home,
        tmp_path,
        no_fnr_source,
        conf=period,
        specs=pseudonymising_specs,
        secrets=_key_connection(key),
    )

    assert report["state"] == "success", output[-5000:]
    folder = tmp_path / "drops" / "PHV" / "population" / f"{period['period_from']}_{TODAY}"
    rows = pq.read_table(folder / _manifest(folder)["files"][0]["name"]).to_pylist()
    fnrs = record_numbers(no_fnr_source)
    pseudonymised = [row for row in rows if row["source"] == "NPR"]
    assert pseudonymised, "no NPR row in the drop: nothing was pseudonymised"
    for row in pseudonymised:
        assert row["fnr"] is None
        expected = expected_pseudonym(key, "PHV", fnrs[("NPR", row["record_id"])])
        assert row["pseudonym"] == expected
    assert key not in output, "the key is in the task log"
    # drops, state database, run report, and Airflow's home: metadata database and logs
    assert _files_holding(key, tmp_path, airflow_home) == []


@pytest.mark.slow
@pytest.mark.xdist_group("airflow")
def test_a_pseudonymising_register_without_a_key_fails_at_once_and_publishes_nothing(
    airflow_home, tmp_path, pseudonymising_specs, no_fnr_source
):
    report, output = _run_dag(
        airflow_home, tmp_path, no_fnr_source, conf=_two_years(), specs=pseudonymising_specs
    )

    assert report["state"] == "failed"
    tasks = _tasks(report)
    failed = tasks["deliver_priority_3[PHV]"]
    assert (failed["state"], failed["try_number"]) == ("failed", 1)  # not up_for_retry
    assert tasks["summary"]["state"] == "failed"
    assert (
        "PHV: not retried: LEVERANSE_PSEUDONYM_KEY is not set and Airflow has no connection "
        "leveranse_pseudonym; this register's spec pseudonymises" in output
    )
    assert not (tmp_path / "drops" / "PHV").exists()
