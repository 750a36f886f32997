"""The command line as an operator runs it: a subprocess, real databases, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from etl.deliver import utc_now
from tests.delivery_helpers import population_spec, write_spec
from tests.source_builder import Source

LEVERANSE = str(Path(sys.executable).parent / "leveranse")
REGISTERS = Path(__file__).resolve().parent.parent / "registers"


def leveranse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEVERANSE_")}
    return subprocess.run(
        [LEVERANSE, *args], capture_output=True, text=True, env=clean | (env or {}), timeout=300
    )


@pytest.fixture
def phv_source(db_url) -> Source:
    source = Source(db_url)
    source.synced(utc_now() - timedelta(hours=1))
    yield source
    source.engine.dispose()


def test_help_answers_without_heavy_imports():
    result = leveranse("--help")
    assert result.returncode == 0
    assert "run" in result.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, etl.cli; etl.cli.build_parser();"
            "print('great_expectations' in sys.modules, 'airflow' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "False False"


@pytest.mark.slow
def test_run_delivers_into_a_fresh_directory(phv_source, tmp_path):
    person = phv_source.person()
    phv_source.episode(person, sector="PHV", diagnoses=["F20.0"])
    phv_source.contact(person, diagnoses=[("P72", "ICPC-2")])
    drops = tmp_path / "fresh" / "drops"
    args = [
        "run",
        "PHV",
        "--source",
        phv_source.url,
        "--specs",
        str(REGISTERS),
        "--drop-dir",
        str(drops),
        "--state",
        f"sqlite:///{tmp_path / 'fresh' / 'state.db'}",
        "--from",
        "2024-03-01",
        "--to",
        "2024-04-01",
    ]
    first = leveranse(*args)
    assert first.returncode == 0, first.stderr
    assert "published v1, 2 rows, 1 persons" in first.stdout
    folder = drops / "PHV" / "population" / "2024-03-01_2024-04-01"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["validation"]["success"] is True
    assert manifest["row_count"] == 2
    again = leveranse(*args)
    assert again.returncode == 0
    assert "unchanged" in again.stdout
    assert person not in first.stdout + first.stderr + again.stdout + again.stderr


def test_environment_variables_replace_options(phv_source, tmp_path):
    phv_source.episode(phv_source.person(), sector="PHV")
    env = {
        "LEVERANSE_SOURCE_URL": phv_source.url,
        "LEVERANSE_SPECS_DIR": str(REGISTERS),
        "LEVERANSE_DROP_DIR": str(tmp_path / "drops"),
        "LEVERANSE_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
    }
    result = leveranse("run", "PHV", "--from", "2024-03-01", "--to", "2024-04-01", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "drops" / "PHV" / "population" / "2024-03-01_2024-04-01").is_dir()


def test_bad_spec_exits_2_with_one_line_naming_file_key_value(tmp_path):
    specs = write_spec(tmp_path / "specs", **population_spec(variables=["fnr", "income"]))
    result = leveranse(
        "run",
        "TESTPOP",
        "--source",
        f"sqlite:///{tmp_path / 's.db'}",
        "--specs",
        str(specs),
        "--drop-dir",
        str(tmp_path / "d"),
        "--state",
        f"sqlite:///{tmp_path / 'state.db'}",
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "testpop.yaml" in lines[0]
    assert "'variables[1]'" in lines[0]
    assert "'income'" in lines[0]


def test_unreachable_source_exits_4_with_one_line(tmp_path):
    result = leveranse(
        "run",
        "PHV",
        "--source",
        "postgresql+psycopg://postgres@127.0.0.1:1/none",
        "--specs",
        str(REGISTERS),
        "--drop-dir",
        str(tmp_path / "d"),
        "--state",
        f"sqlite:///{tmp_path / 'state.db'}",
        "--from",
        "2024-03-01",
        "--to",
        "2024-04-01",
    )
    assert result.returncode == 4
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("leveranse: error:")
    assert not (tmp_path / "d" / "PHV").exists()


def test_stale_reservations_exit_5(db_url, tmp_path):
    source = Source(db_url)
    source.synced(utc_now() - timedelta(hours=48))
    result = leveranse(
        "run",
        "PHV",
        "--source",
        db_url,
        "--specs",
        str(REGISTERS),
        "--drop-dir",
        str(tmp_path / "d"),
        "--state",
        f"sqlite:///{tmp_path / 'state.db'}",
        "--from",
        "2024-03-01",
        "--to",
        "2024-04-01",
    )
    source.engine.dispose()
    assert result.returncode == 5
    assert "reservation copy is 48" in result.stderr


def test_bad_dates_are_usage_errors(tmp_path):
    result = leveranse("run", "PHV", "--from", "2024-13-01")
    assert result.returncode == 2
    assert "not an ISO date" in result.stderr
    backwards = leveranse(
        "run",
        "PHV",
        "--source",
        f"sqlite:///{tmp_path / 's.db'}",
        "--specs",
        str(REGISTERS),
        "--drop-dir",
        str(tmp_path / "d"),
        "--state",
        f"sqlite:///{tmp_path / 'state.db'}",
        "--from",
        "2024-04-01",
        "--to",
        "2024-03-01",
    )
    assert backwards.returncode == 2
    assert "must be before --to" in backwards.stderr


def test_load_list_as_a_user_runs_it(db_url, tmp_path):
    source = Source(db_url)
    good, other = source.person(), source.person()
    source.engine.dispose()
    listing = tmp_path / "parkinson.csv"
    listing.write_text(
        f"\ufefffnr;case_id;index_date\n{good};P-1;2023-05-01\n{other};P-2;01.06.2023\n",
        encoding="utf-8",
    )
    loaded = leveranse("load-list", "PARKINSON", str(listing), "--source", db_url)
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded 2 rows" in loaded.stdout

    bad = tmp_path / "bad.csv"
    bad.write_text(f"fnr,case_id,index_date\n{good},P-1,2023-05-01\n{good[:10]}0,P-2,2099-01-01\n")
    refused = leveranse("load-list", "PARKINSON", str(bad), "--source", db_url)
    assert refused.returncode == 2
    assert "row 3" in refused.stderr
    assert good not in refused.stderr
    assert good[:10] not in refused.stderr


def test_load_list_warns_about_a_register_without_a_spec(tmp_path):
    source_url = f"sqlite:///{tmp_path / 'source.db'}"
    listing = tmp_path / "list.csv"
    number = Source(source_url).person()
    listing.write_text(f"fnr,case_id,index_date\n{number},X-1,2023-01-01\n")
    result = leveranse("load-list", "PARKINSONN", str(listing), "--source", source_url)
    assert result.returncode == 0
    assert "PARKINSONN has no spec" in result.stderr
