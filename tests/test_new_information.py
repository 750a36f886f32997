"""The new-information delivery (NORKAR) against hand-made data, on SQLite and PostgreSQL.

NORKAR's spec (registers/norkar.yaml): vascular surgery in NCSP chapter P or NCRP
endovascular codes selects a record; amputations (NFQ09, NFQ19, NGQ09, NGQ19, NHQ*) within
365 days after a case's index date are follow-ups; a case within 3 days makes a vascular
record not a new case.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from etl.deliver import utc_now
from tests.delivery_helpers import delivered_rows, manifest_of, run_delivery, settings_for
from tests.source_builder import Source

REGISTERS = Path(__file__).resolve().parent.parent / "registers"
INDEX = "2023-06-01"


@pytest.fixture
def source(db_url) -> Source:
    built = Source(db_url)
    built.synced(utc_now() - timedelta(hours=1))
    yield built
    built.engine.dispose()


def amputation(source: Source, person: str, day: str | None, code: str = "NFQ19", **kw) -> int:
    """An episode received in the period with one amputation dated ``day``."""
    fields = {"sector": "SOM", "specialty": "040"} | kw
    return source.episode(person, diagnoses=["I7021"], procedures=[(code, "NCSP", day)], **fields)


def vascular(source: Source, person: str, code: str, system: str, day: str) -> int:
    return source.episode(
        person,
        sector="SOM",
        specialty="040",
        start=day,
        end=day,
        diagnoses=["I702"],
        procedures=[(code, system, day)],
    )


def deliver_norkar(source: Source, tmp_path):
    return run_delivery(settings_for(source.url, tmp_path, REGISTERS), code="NORKAR")


def rows_by(result) -> dict[tuple[int, str, str | None], dict]:
    return {(r["record_id"], r["event"], r["case_id"]): r for r in delivered_rows(result)}


def test_follow_up_window_is_after_the_index_day_and_at_most_window_days(source, tmp_path):
    person = source.person()
    source.listed("NORKAR", person, "K-1", INDEX)
    same_day = amputation(source, person, "2023-06-01")
    day_one = amputation(source, person, "2023-06-02", "NGQ19")
    last_day = amputation(source, person, "2024-05-31", "NHQ11")
    day_after = amputation(source, person, "2024-06-01")
    before = amputation(source, person, "2023-05-31")
    other_code = amputation(source, person, "2023-07-01", "NFQ29")
    result = deliver_norkar(source, tmp_path)
    rows = rows_by(result)
    assert set(rows) == {
        (day_one, "follow_up", "K-1"),
        (last_day, "follow_up", "K-1"),
    }
    for outside in (same_day, day_after, before, other_code):
        assert all(key[0] != outside for key in rows)
    assert delivered_rows(result)[0]["fnr"] == person


def test_two_cases_with_overlapping_windows_give_one_row_per_case(source, tmp_path):
    person = source.person()
    source.listed("NORKAR", person, "K-1", "2023-09-01")
    source.listed("NORKAR", person, "K-2", "2023-12-01")
    episode = amputation(source, person, "2024-01-15")
    result = deliver_norkar(source, tmp_path)
    assert set(rows_by(result)) == {
        (episode, "follow_up", "K-1"),
        (episode, "follow_up", "K-2"),
    }


def test_missing_procedure_date_uses_the_episode_start(source, tmp_path):
    person = source.person()
    source.listed("NORKAR", person, "K-1", INDEX)
    inside = amputation(source, person, None, start="2023-07-01", end="2023-07-03")
    outside = amputation(source, person, None, start="2024-07-01", end="2024-07-03")
    result = deliver_norkar(source, tmp_path)
    assert set(rows_by(result)) == {(inside, "follow_up", "K-1")}
    assert all(key[0] != outside for key in rows_by(result))


def test_new_cases_span_both_code_systems_and_respect_the_match_window(source, tmp_path):
    unlisted = source.person()
    endovascular = vascular(source, unlisted, "PDZ12B", "NCRP", "2024-03-02")
    open_surgery = vascular(source, unlisted, "pdg10", "NCSP", "2024-03-05")
    listed = source.person()
    source.listed("NORKAR", listed, "K-9", "2024-03-03")
    registered = vascular(source, listed, "PEH20", "NCSP", "2024-03-01")  # 2 days: known
    far = vascular(source, listed, "PEH20", "NCSP", "2024-03-07")  # 4 days: new
    radiology_noise = vascular(source, unlisted, "PDZ99X", "NCRP", "2024-03-02")
    result = deliver_norkar(source, tmp_path)
    rows = rows_by(result)
    assert set(rows) == {
        (endovascular, "new_case", None),
        (open_surgery, "new_case", None),
        (far, "new_case", None),
    }
    assert all(key[0] not in (registered, radiology_noise) for key in rows)
    row = rows[(endovascular, "new_case", None)]
    assert row["procedures"] == ["PDZ12B"]
    assert row["case_id"] is None


def test_the_selections_sector_and_age_filters_choose_new_cases_not_follow_ups(source, tmp_path):
    """CONTRACT.md section 4: a follow-up is every NPR record of the period with a follow-up
    code in a case's window, whatever its sector or the patient's age; `sectors` and
    `min_age` belong to the selection, so they decide only which records are new cases."""
    specs = tmp_path / "specs"
    specs.mkdir()
    norkar = (REGISTERS / "norkar.yaml").read_text(encoding="utf-8")
    filters = "  diagnosis_position: any\n  sectors: [SOM]\n  min_age: 18\n"
    (specs / "norkar.yaml").write_text(
        norkar.replace("  diagnosis_position: any\n", filters), encoding="utf-8"
    )
    adult = source.person()
    source.listed("NORKAR", adult, "K-1", INDEX)
    other_sector = amputation(source, adult, "2023-08-01", sector="PHB")
    somatic = amputation(source, adult, "2023-09-01")
    child = source.person(born=date(2010, 4, 2))
    source.listed("NORKAR", child, "K-2", INDEX)
    young = amputation(source, child, "2023-08-01", birth_year=2010)
    unlisted = source.person()
    new_case = vascular(source, unlisted, "PDG10", "NCSP", "2024-03-05")
    outside_sectors = source.episode(
        unlisted, sector="PHB", diagnoses=["I702"], procedures=[("PDG10", "NCSP", "2024-03-06")]
    )
    too_young = source.episode(
        source.person(born=date(2010, 4, 2)),
        sector="SOM",
        birth_year=2010,
        diagnoses=["I702"],
        procedures=[("PDG10", "NCSP", "2024-03-06")],
    )
    result = run_delivery(settings_for(source.url, tmp_path, specs), code="NORKAR")
    assert set(rows_by(result)) == {
        (other_sector, "follow_up", "K-1"),
        (somatic, "follow_up", "K-1"),
        (young, "follow_up", "K-2"),
        (new_case, "new_case", None),
    }
    assert all(key[0] not in (outside_sectors, too_young) for key in rows_by(result))
    assert manifest_of(result)["validation"]["success"] is True


def test_reserved_person_gets_nothing_and_is_withdrawn(source, tmp_path):
    person = source.person()
    source.listed("NORKAR", person, "K-1", INDEX)
    amputation(source, person, "2023-08-01")
    vascular(source, person, "PDG10", "NCSP", "2024-03-10")
    source.reserve(person, "NORKAR", "OPT_OUT", "2024-04-15 09:30:00")
    result = deliver_norkar(source, tmp_path)
    assert delivered_rows(result) == []
    assert result.excluded["opt_out"] == 2
    withdrawals = pq.read_table(
        result.path / "NORKAR_withdrawals_2024-03-01_2024-04-01.parquet"
    ).to_pylist()
    assert withdrawals == [{"fnr": person, "registered_at": datetime(2024, 4, 15, 9, 30)}]


def test_columns_and_manifest(source, tmp_path):
    person = source.person()
    source.listed("NORKAR", person, "K-1", INDEX)
    amputation(source, person, "2023-08-01")
    result = deliver_norkar(source, tmp_path)
    table = pq.read_table(result.path / "NORKAR_new_information_2024-03-01_2024-04-01.parquet")
    assert table.column_names[:3] == ["source", "record_id", "fnr"]
    assert table.column_names[-2:] == ["event", "case_id"]
    assert "event_date" not in table.column_names
    manifest = manifest_of(result)
    assert manifest["validation"]["success"] is True
    assert manifest["delivery"] == "new_information"
    assert manifest["withdrawals"] == 0
