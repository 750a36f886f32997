"""The disclosure log and the drops on disk agree, and every disagreement is found."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from sqlalchemy import text

from etl.audit import DisclosureLog
from etl.deliver import utc_now
from etl.reconcile import reconcile
from etl.source import make_engine
from tests.delivery_helpers import population_spec, run_delivery, settings_for, write_spec
from tests.source_builder import Source
from tests.test_cli import leveranse


@pytest.fixture
def delivered(tmp_path):
    """A source with two records, delivered once; returns (settings, result)."""
    source = Source(f"sqlite:///{tmp_path / 'source.db'}")
    source.synced(utc_now() - timedelta(hours=1))
    source.episode(source.person())
    source.contact(source.person())
    specs = write_spec(tmp_path / "specs", **population_spec())
    settings = settings_for(source.url, tmp_path, specs)
    result = run_delivery(settings)
    source.engine.dispose()
    return settings, result


def check(settings):
    return reconcile(settings.state_url, settings.drop_dir)


def test_deliveries_and_unchanged_reruns_are_consistent(delivered):
    settings, _ = delivered
    assert run_delivery(settings).status == "unchanged"
    result = check(settings)
    assert result.ok, result.report()
    assert result.folders == 1
    assert result.attempts == 2


def test_a_changed_file_is_found(delivered):
    settings, result = delivered
    data = next(result.path.glob("*.parquet"))
    data.chmod(0o644)
    data.write_bytes(data.read_bytes()[:-1] + b"\0")
    found = check(settings)
    assert not found.ok
    assert any("differs from its checksum" in f for f in found.findings)


def test_an_extra_file_and_a_folder_without_a_log_row_are_found(delivered):
    settings, result = delivered
    (result.path / "notes.txt").write_text("hello")
    shutil.copytree(result.path, result.path.with_name(result.path.name + ".v9"))
    found = check(settings)
    assert any("notes.txt is not accounted for" in f for f in found.findings)
    assert any(".v9 is logged at another path" in f for f in found.findings)


def test_a_missing_folder_is_found_and_the_cli_exits_7(delivered, tmp_path):
    settings, result = delivered
    shutil.rmtree(result.path)
    found = check(settings)
    assert any("is missing" in f for f in found.findings)
    cli = leveranse(
        "audit", "--check", "--drop-dir", str(settings.drop_dir), "--state", settings.state_url
    )
    assert cli.returncode == 7
    assert "finding:" in cli.stdout


def test_an_interrupted_run_is_closed_by_the_next_run(delivered):
    """A run killed between its rename and its log write left a running row: the next run of
    the period completes that row from the drop's manifest, and the log agrees again."""
    settings, _ = delivered
    engine = make_engine(settings.state_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE disclosure_log SET status = 'running', finished_at = NULL"))
    engine.dispose()
    assert not check(settings).ok
    assert run_delivery(settings).status == "unchanged"
    rows = DisclosureLog(settings.state_url).attempts()
    assert [row["status"] for row in rows] == ["published", "unchanged"]
    assert "interrupted" in rows[0]["reason"]
    assert check(settings).ok


def test_an_interrupted_run_is_closed_by_a_run_of_another_period(delivered):
    """The next scheduled run usually covers the next period: it still completes the dead
    run's row, so March is not delivered again and the log agrees with the drops."""
    settings, result = delivered
    engine = make_engine(settings.state_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE disclosure_log SET status = 'running', finished_at = NULL"))
    engine.dispose()
    from etl.deliver import deliver

    april = deliver(settings, "TESTPOP", end=result.period.end + timedelta(days=30))
    assert april.period.start == result.period.end
    rows = DisclosureLog(settings.state_url).attempts()
    assert [row["status"] for row in rows] == ["published", "published"]
    assert rows[0]["person_count"] == result.person_count
    assert check(settings).ok
