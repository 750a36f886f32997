"""The complement delivery (Parkinson) against hand-made data, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from etl.audit import DisclosureLog
from etl.deliver import utc_now
from tests.delivery_helpers import delivered_rows, manifest_of, run_delivery, settings_for
from tests.source_builder import Source

REGISTERS = Path(__file__).resolve().parent.parent / "registers"


@pytest.fixture
def source(db_url) -> Source:
    built = Source(db_url)
    built.synced(utc_now() - timedelta(hours=1))
    yield built
    built.engine.dispose()


def parkinson_episode(source: Source, person: str, code: str = "G20", **fields) -> int:
    return source.episode(person, diagnoses=[code], sector="SOM", specialty="250", **fields)


def deliver_parkinson(source: Source, tmp_path, **kwargs):
    settings = settings_for(source.url, tmp_path, REGISTERS)
    return run_delivery(settings, code="PARKINSON", **kwargs)


def test_listed_is_registered_unlisted_is_missing_and_g21_is_not_selected(source, tmp_path):
    listed, unlisted, secondary = source.person(), source.person(), source.person()
    source.listed("PARKINSON", listed, "P-1", "2023-05-01")
    on_list = parkinson_episode(source, listed, "G20")
    atypical = parkinson_episode(source, unlisted, "g23.1")
    parkinson_episode(source, secondary, "G21.1")
    result = deliver_parkinson(source, tmp_path)
    rows = {row["record_id"]: row for row in delivered_rows(result)}
    assert set(rows) == {on_list, atypical}
    assert rows[on_list]["status"] == "registered"
    assert rows[atypical]["status"] == "missing"
    assert list(rows[on_list])[-1] == "status"
    assert result.withdrawals == 0
    assert [p.name for p in sorted(result.path.iterdir())] == [
        "PARKINSON_complement_2024-03-01_2024-04-01.parquet",
        "manifest.json",
    ]


def test_listed_patient_who_reserved_gets_no_rows_and_is_withdrawn(source, tmp_path):
    reserved, other_register, withdrawn = source.person(), source.person(), source.person()
    for number, case in ((reserved, "P-1"), (other_register, "P-2"), (withdrawn, "P-3")):
        source.listed("PARKINSON", number, case, "2023-05-01")
        parkinson_episode(source, number)
    source.reserve(reserved, "PARKINSON", "OPT_OUT", "2024-05-20 08:00:00")
    source.reserve(other_register, "NORKAR", "OPT_OUT", "2024-01-01 00:00:00")
    source.reserve(withdrawn, "PARKINSON", "OPT_OUT", "2024-01-01 00:00:00", "2024-02-01 00:00:00")
    result = deliver_parkinson(source, tmp_path)
    assert {row["fnr"] for row in delivered_rows(result)} == {other_register, withdrawn}
    assert result.excluded["opt_out"] == 1
    table = pq.read_table(result.path / "PARKINSON_withdrawals_2024-03-01_2024-04-01.parquet")
    assert table.column_names == ["fnr", "registered_at"]
    assert table.to_pylist() == [{"fnr": reserved, "registered_at": datetime(2024, 5, 20, 8)}]
    manifest = manifest_of(result)
    assert manifest["withdrawals"] == 1
    assert {f["name"] for f in manifest["files"]} == {
        "PARKINSON_complement_2024-03-01_2024-04-01.parquet",
        "PARKINSON_withdrawals_2024-03-01_2024-04-01.parquet",
    }
    assert manifest["validation"]["success"] is True


def test_reserved_person_not_on_the_list_is_not_a_withdrawal(source, tmp_path):
    stranger = source.person()
    parkinson_episode(source, stranger)
    source.reserve(stranger, "PARKINSON", "OPT_OUT", "2024-01-01 00:00:00")
    result = deliver_parkinson(source, tmp_path)
    assert delivered_rows(result) == []
    assert result.withdrawals == 0


def test_coverage_by_hand(source, tmp_path):
    both_now = source.person()  # listed, index in the period, NPR record: both
    both_old = source.person()  # listed long ago, NPR record now: both
    only_register = source.person()  # listed, index in the period, no NPR record
    only_npr = source.person()  # NPR record, not listed
    opted_out = source.person()  # listed in the period, reserved: on neither side
    source.listed("PARKINSON", both_now, "C-1", "2024-03-10")
    source.listed("PARKINSON", both_old, "C-2", "2019-01-01")
    source.listed("PARKINSON", only_register, "C-3", "2024-03-15")
    source.listed("PARKINSON", opted_out, "C-4", "2024-03-20")
    source.listed("PARKINSON", source.person(), "C-5", "2024-04-01")  # after the period
    for person in (both_now, both_old, only_npr, opted_out):
        parkinson_episode(source, person)
    parkinson_episode(source, only_npr, "G231")  # a second record: still one person
    source.reserve(opted_out, "PARKINSON", "OPT_OUT", "2024-01-01 00:00:00")

    result = deliver_parkinson(source, tmp_path)

    assert result.coverage == {
        "only_register": 1,
        "only_npr": 1,
        "both": 2,
        "coverage": 0.75,
    }
    # The exact 0.75 beside "<5" cells would narrow them down: only the range is published.
    assert manifest_of(result)["coverage"] == {
        "only_register": "<5",
        "only_npr": "<5",
        "both": "<5",
        "coverage": None,
        "coverage_range": [0.333, 0.889],
        "low": None,
    }
    (attempt,) = DisclosureLog(f"sqlite:///{tmp_path / 'state.db'}").attempts("PARKINSON")
    assert attempt["coverage"]["coverage"] == 0.75
    assert attempt["status"] == "published"


def test_low_coverage_is_flagged(source, tmp_path):
    listed = source.person()
    source.listed("PARKINSON", listed, "C-1", "2024-03-10")
    parkinson_episode(source, listed)
    for _ in range(10):
        parkinson_episode(source, source.person())
    result = deliver_parkinson(source, tmp_path)
    assert result.coverage["coverage"] == pytest.approx(1 / 11)
    # Low whatever the "<5" cell holds: (0 + 4) / (0 + 10 + 4) is still below 0.6.
    assert manifest_of(result)["coverage"]["low"] is True
    assert manifest_of(result)["coverage"]["coverage_range"] == [0.090, 0.286]


def test_a_new_reservation_makes_a_new_version_with_the_withdrawal(source, tmp_path):
    listed = source.person()
    source.listed("PARKINSON", listed, "C-1", "2020-01-01")
    parkinson_episode(source, listed)
    parkinson_episode(source, source.person())
    first = deliver_parkinson(source, tmp_path)
    assert deliver_parkinson(source, tmp_path).status == "unchanged"
    source.reserve(listed, "PARKINSON", "OPT_OUT", "2024-05-30 00:00:00")
    second = deliver_parkinson(source, tmp_path)
    assert second.status == "published"
    assert manifest_of(second)["supersedes"] == first.path.name
    assert second.withdrawals == 1
    assert second.row_count == 1


def test_coverage_page_is_written_after_a_complement_delivery(source, tmp_path):
    listed = source.person()
    source.listed("PARKINSON", listed, "C-1", "2024-03-10")
    parkinson_episode(source, listed)
    deliver_parkinson(source, tmp_path)
    page = (tmp_path / "drops" / "_reports" / "PARKINSON" / "coverage.html").read_text()
    assert "Norsk Parkinsonregister" in page
    assert "2024-03-01_2024-04-01" in page
    assert "<svg" in page
    assert listed not in page
