"""The define-population delivery against hand-made data, on SQLite and PostgreSQL.

Each test pins one rule of CONTRACT.md (sections 1, 2 and 4) with the fewest records that
show it.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from etl.audit import DisclosureLog
from etl.deliver import utc_now
from etl.extract import parameters
from etl.pseudonym import Pseudonymiser
from etl.reservations import ReservationsStale
from etl.spec import SpecError, parse_spec
from etl.validate import ReservationGuard, ValidationFailed
from tests.delivery_helpers import (
    RUN_AT,
    delivered_rows,
    manifest_of,
    population_spec,
    run_delivery,
    settings_for,
    write_spec,
)
from tests.source_builder import Source


@pytest.fixture
def source(db_url) -> Source:
    built = Source(db_url)
    built.synced(utc_now() - timedelta(hours=2))
    yield built
    built.engine.dispose()


def deliver_with(source: Source, tmp_path, **spec_overrides):
    specs = write_spec(tmp_path / "specs", **population_spec(**spec_overrides))
    return run_delivery(settings_for(source.url, tmp_path, specs))


def delivered_ids(result) -> set[tuple[str, int]]:
    return {(row["source"], row["record_id"]) for row in delivered_rows(result)}


def test_codes_ranges_dirty_input_and_exclusions(source, tmp_path):
    person = source.person()
    f2000 = source.episode(person, diagnoses=["F2000"])
    dirty = source.episode(person, diagnoses=["f20.0 "])
    f29 = source.episode(person, diagnoses=["F29"])
    f30 = source.episode(person, diagnoses=["F30"])
    f25 = source.episode(person, diagnoses=["F251"])
    secondary = source.episode(person, diagnoses=["Z000", "F200"])
    kpr_p72 = source.contact(person, diagnoses=[("P72", "ICPC-2")])
    kpr_icd = source.contact(person, diagnoses=[("F20.1", "ICD-10")])
    kpr_other = source.contact(person, diagnoses=[("R74", "ICPC-2")])
    kpr_icd_as_icpc = source.contact(person, diagnoses=[("F20", "ICPC-2")])

    result = deliver_with(
        source,
        tmp_path,
        selection={"icd10": ["F20-F29", "!F25"], "icpc2": ["P72"], "min_age": 18},
    )

    assert delivered_ids(result) == {
        ("NPR", f2000),
        ("NPR", dirty),
        ("NPR", f29),
        ("NPR", secondary),
        ("KPR", kpr_p72),
        ("KPR", kpr_icd),
    }
    assert ("NPR", f30) not in delivered_ids(result)
    assert ("NPR", f25) not in delivered_ids(result)
    assert ("KPR", kpr_other) not in delivered_ids(result)
    assert ("KPR", kpr_icd_as_icpc) not in delivered_ids(result)
    rows = {row["record_id"]: row for row in delivered_rows(result)}
    assert rows[dirty]["main_diagnosis"] == "F200"
    assert rows[secondary]["diagnoses"] == ["Z000", "F200"]
    assert rows[secondary]["main_diagnosis"] == "Z000"


def test_diagnosis_position_main(source, tmp_path):
    person = source.person()
    main = source.episode(person, diagnoses=["F200", "Z000"])
    secondary = source.episode(person, diagnoses=["Z000", "F200"])
    result = deliver_with(
        source, tmp_path, selection={"icd10": ["F20-F29"], "diagnosis_position": "main"}
    )
    assert delivered_ids(result) == {("NPR", main)}
    assert ("NPR", secondary) not in delivered_ids(result)


def test_min_age_uses_the_record_year(source, tmp_path):
    adult = source.person(date(2006, 12, 31))
    minor = source.person(date(2007, 1, 1))
    at_18 = source.episode(adult, birth_year=2006, start="2024-02-27")
    at_17 = source.episode(minor, birth_year=2007, start="2024-02-27")
    unknown_age = source.episode(adult, birth_year=None)
    result = deliver_with(source, tmp_path)
    assert delivered_ids(result) == {("NPR", at_18)}
    assert ("NPR", at_17) not in delivered_ids(result)
    assert ("NPR", unknown_age) not in delivered_ids(result)


def test_sectors_filter_npr_only(source, tmp_path):
    person = source.person()
    phv = source.episode(person, sector="PHV")
    som = source.episode(person, sector="SOM")
    kpr = source.contact(person)
    result = deliver_with(
        source,
        tmp_path,
        selection={"icd10": ["F20-F29"], "icpc2": ["P72"], "sectors": ["PHV"]},
    )
    assert delivered_ids(result) == {("NPR", phv), ("KPR", kpr)}
    assert ("NPR", som) not in delivered_ids(result)


def test_period_is_half_open_and_both_timestamp_forms_compare(source, tmp_path):
    person = source.person()
    first = source.episode(person, received="2024-03-01 00:00:00")
    last = source.episode(person, received="2024-03-31 23:59:59.999999")
    before = source.episode(person, received="2024-02-29 23:59:59.5")
    at_end = source.episode(person, received="2024-04-01 00:00:00")
    after = source.episode(person, received="2024-04-01 00:00:00.25")
    kpr_late = source.contact(person, received="2024-04-02 08:00:00", day="2024-01-02")
    result = deliver_with(source, tmp_path)
    assert delivered_ids(result) == {("NPR", first), ("NPR", last)}
    for outside in (before, at_end, after):
        assert ("NPR", outside) not in delivered_ids(result)
    assert ("KPR", kpr_late) not in delivered_ids(result)


def test_reservation_registered_after_the_period_but_before_the_run_excludes(source, tmp_path):
    reserved = source.person()
    source.episode(reserved)
    source.reserve(reserved, "TESTPOP", "OPT_OUT", registered="2024-05-15 10:00:00")
    kept = source.person()
    kept_episode = source.episode(kept)
    result = deliver_with(source, tmp_path)
    assert delivered_ids(result) == {("NPR", kept_episode)}
    assert result.excluded["opt_out"] == 1
    assert manifest_of(result)["excluded"]["opt_out"] == "<5"


def test_reservations_as_of_override(source, tmp_path):
    person = source.person()
    episode = source.episode(person)
    source.reserve(person, "TESTPOP", "OPT_OUT", registered="2024-05-15 10:00:00")
    specs = write_spec(tmp_path / "specs", **population_spec())
    settings = settings_for(source.url, tmp_path, specs)
    earlier = run_delivery(settings, as_of=datetime(2024, 5, 1))
    assert delivered_ids(earlier) == {("NPR", episode)}
    assert manifest_of(earlier)["reservations_as_of"].startswith("2024-05-01")


def test_withdrawn_and_other_registers_reservations_do_not_exclude(source, tmp_path):
    withdrawn = source.person()
    other_register = source.person()
    future = source.person()
    kept = {
        source.episode(withdrawn),
        source.episode(other_register),
        source.episode(future),
    }
    source.reserve(withdrawn, "TESTPOP", "OPT_OUT", "2024-01-01 00:00:00", "2024-05-01 00:00:00")
    source.reserve(other_register, "HJERTE", "OPT_OUT", "2024-01-01 00:00:00")
    source.reserve(other_register, "NPR", "OPT_OUT", "2024-01-01 00:00:00")
    source.reserve(future, "TESTPOP", "OPT_OUT", "2024-06-01 12:00:01")
    result = deliver_with(source, tmp_path)
    assert delivered_ids(result) == {("NPR", e) for e in kept}
    assert result.excluded["opt_out"] == 0


def test_withdrawal_exactly_at_the_run_instant_is_no_longer_active(source, tmp_path):
    person = source.person()
    episode = source.episode(person)
    source.reserve(person, "TESTPOP", "OPT_OUT", "2024-01-01 00:00:00", "2024-06-01 12:00:00")
    result = deliver_with(source, tmp_path)
    assert delivered_ids(result) == {("NPR", episode)}


def test_registry_opt_out_false_ignores_the_registers_own_opt_out(source, tmp_path):
    person = source.person()
    episode = source.episode(person)
    source.reserve(person, "TESTPOP", "OPT_OUT", "2024-01-01 00:00:00")
    result = deliver_with(
        source, tmp_path, reservations={"registry_opt_out": False, "no_fnr": "exclude"}
    )
    assert delivered_ids(result) == {("NPR", episode)}


def test_kpr_no_purpose2_removes_kpr_rows_and_keeps_npr_rows(source, tmp_path):
    person = source.person()
    npr = source.episode(person)
    source.contact(person)
    source.reserve(person, "KPR", "NO_PURPOSE2", "2024-01-01 00:00:00")
    result = deliver_with(source, tmp_path)
    assert delivered_ids(result) == {("NPR", npr)}
    assert result.excluded["no_purpose2"] == 1


def test_no_fnr_exclude_applies_to_that_source_only(source, tmp_path):
    person = source.person()
    source.episode(person)
    kpr = source.contact(person)
    source.reserve(person, "NPR", "NO_FNR", "2024-01-01 00:00:00")
    result = deliver_with(source, tmp_path)
    assert delivered_ids(result) == {("KPR", kpr)}
    assert result.excluded["no_fnr"] == 1


def test_no_fnr_pseudonymise(source, tmp_path, monkeypatch):
    monkeypatch.setenv("LEVERANSE_PSEUDONYM_KEY", "k" * 40)
    person = source.person()
    other = source.person()
    npr = source.episode(person)
    kpr = source.contact(person)
    plain = source.episode(other)
    source.reserve(person, "NPR", "NO_FNR", "2024-01-01 00:00:00")
    result = deliver_with(
        source, tmp_path, reservations={"registry_opt_out": True, "no_fnr": "pseudonymise"}
    )
    rows = {(row["source"], row["record_id"]): row for row in delivered_rows(result)}
    assert set(rows) == {("NPR", npr), ("KPR", kpr), ("NPR", plain)}
    assert rows[("NPR", npr)]["fnr"] is None
    assert len(rows[("NPR", npr)]["pseudonym"]) == 64
    assert rows[("KPR", kpr)]["fnr"] == person
    assert rows[("KPR", kpr)]["pseudonym"] is None
    assert rows[("NPR", plain)]["fnr"] == other
    assert result.excluded["no_fnr"] == 0


def test_pseudonymising_spec_refuses_to_start_without_the_key(source, tmp_path, monkeypatch):
    from etl.pseudonym import PseudonymKeyMissing

    monkeypatch.delenv("LEVERANSE_PSEUDONYM_KEY", raising=False)
    source.episode(source.person())
    with pytest.raises(PseudonymKeyMissing):
        deliver_with(
            source, tmp_path, reservations={"registry_opt_out": True, "no_fnr": "pseudonymise"}
        )
    assert not (tmp_path / "drops" / "TESTPOP").exists()


def test_invalid_identity_numbers_are_left_out_and_counted(source, tmp_path):
    good = source.episode(source.person())
    bad_check_digits = source.person()[:10] + "0"
    if bad_check_digits == source.person():
        bad_check_digits = bad_check_digits[:10] + "1"
    source.episode(bad_check_digits[:9] + "00")
    source.episode("1234567890")
    result = deliver_with(source, tmp_path)
    assert delivered_ids(result) == {("NPR", good)}
    assert result.excluded["invalid_fnr"] == 2


def test_columns_are_the_contracts_and_kpr_maps_contact_date(source, tmp_path):
    person = source.person()
    source.episode(person, start="2024-02-20", end="2024-02-25")
    source.contact(person, day="2024-02-27", service_type=2)
    result = deliver_with(source, tmp_path)
    table = pq.read_table(result.path / f"TESTPOP_population_{result.period.label}.parquet")
    assert table.column_names == [
        "source",
        "record_id",
        "fnr",
        "sex",
        "birth_year",
        "start_date",
        "end_date",
        "main_diagnosis",
        "diagnoses",
        "service_type",
        "sector",
    ]
    rows = {row["source"]: row for row in table.to_pylist()}
    assert rows["KPR"]["start_date"] == rows["KPR"]["end_date"] == date(2024, 2, 27)
    assert rows["KPR"]["sector"] is None
    assert rows["KPR"]["service_type"] == 2
    assert rows["NPR"]["service_type"] is None
    assert rows["NPR"]["end_date"] == date(2024, 2, 25)


def test_kpr_rows_have_no_procedures_and_npr_rows_without_any_an_empty_list(source, tmp_path):
    """Section 2: procedures is NPR-only, so null on KPR rows; an NPR episode with none
    recorded has an empty list, which says something else."""
    person = source.person()
    with_one = source.episode(person, procedures=[("ABC10", "NCSP", None)])
    without = source.episode(person)
    contact = source.contact(person)
    result = deliver_with(source, tmp_path, variables=["fnr", "procedures"])
    rows = {(row["source"], row["record_id"]): row for row in delivered_rows(result)}
    assert rows[("NPR", with_one)]["procedures"] == ["ABC10"]
    assert rows[("NPR", without)]["procedures"] == []
    assert rows[("KPR", contact)]["procedures"] is None


def test_manifest_and_drop_layout(source, tmp_path):
    for _ in range(6):
        source.episode(source.person())
    result = deliver_with(source, tmp_path)
    assert result.path == tmp_path / "drops" / "TESTPOP" / "population" / "2024-03-01_2024-04-01"
    assert sorted(p.name for p in result.path.iterdir()) == [
        "TESTPOP_population_2024-03-01_2024-04-01.parquet",
        "manifest.json",
    ]
    manifest = manifest_of(result)
    assert manifest["registry"] == "TESTPOP"
    assert manifest["delivery"] == "population"
    assert manifest["period"] == {"from": "2024-03-01", "to": "2024-04-01"}
    assert manifest["version"] == 1
    assert manifest["supersedes"] is None
    assert manifest["row_count"] == 6
    assert manifest["person_count"] == 6
    assert manifest["excluded"] == {"opt_out": 0, "no_purpose2": 0, "no_fnr": 0, "invalid_fnr": 0}
    assert manifest["validation"]["success"] is True
    assert manifest["validation"]["expectations"] >= 8
    assert manifest["validation"]["failed"] == []
    (entry,) = manifest["files"]
    assert entry["rows"] == 6
    assert len(entry["sha256"]) == 64
    for key in ("reservations_as_of", "spec_sha256", "created_at", "software_version"):
        assert manifest[key]


def test_rerun_unchanged_then_new_version_after_a_reservation(source, tmp_path):
    person = source.person()
    source.episode(person)
    source.episode(source.person())
    specs = write_spec(tmp_path / "specs", **population_spec())
    settings = settings_for(source.url, tmp_path, specs)
    first = run_delivery(settings)
    again = run_delivery(settings)
    assert (first.status, again.status) == ("published", "unchanged")
    assert again.path == first.path
    source.reserve(person, "TESTPOP", "OPT_OUT", "2024-05-30 00:00:00")
    second = run_delivery(settings)
    assert second.status == "published"
    assert second.path.name == "2024-03-01_2024-04-01.v2"
    assert manifest_of(second)["supersedes"] == "2024-03-01_2024-04-01"
    assert second.row_count == 1


def test_empty_period_publishes_an_empty_file(source, tmp_path):
    result = deliver_with(source, tmp_path)
    assert result.status == "published"
    assert result.row_count == 0
    assert delivered_rows(result) == []


def test_stale_reservation_copy_fails_closed(db_url, tmp_path):
    source = Source(db_url)
    source.synced(utc_now() - timedelta(hours=37))
    source.episode(source.person())
    specs = write_spec(tmp_path / "specs", **population_spec())
    settings = settings_for(source.url, tmp_path, specs)
    with pytest.raises(ReservationsStale, match="hours old"):
        run_delivery(settings)
    assert not (tmp_path / "drops" / "TESTPOP" / "population").exists()
    source.engine.dispose()


def test_default_period_follows_the_last_delivery(source, tmp_path):
    specs = write_spec(tmp_path / "specs", **population_spec(lookback_days=10))
    settings = settings_for(source.url, tmp_path, specs)
    today = datetime.now().date()
    from etl.deliver import deliver

    first = deliver(settings, "TESTPOP", start=None, end=today, reservations_as_of=None)
    assert (first.period.end - first.period.start).days == 10
    assert deliver(settings, "TESTPOP").status == "nothing_due"


def test_unknown_register_is_a_spec_error(source, tmp_path):
    specs = write_spec(tmp_path / "specs", **population_spec())
    with pytest.raises(SpecError, match="NOPE"):
        run_delivery(settings_for(source.url, tmp_path, specs), code="NOPE")


def test_duplicate_source_episode_fails_validation_and_is_quarantined(tmp_path):
    """A source without its primary key delivers an episode twice: nothing is published."""
    source = Source(f"sqlite:///{tmp_path / 'source.db'}")
    source.synced(utc_now())
    source.raw("ALTER TABLE npr_episode RENAME TO npr_episode_pk")
    source.raw("CREATE TABLE npr_episode AS SELECT * FROM npr_episode_pk WHERE 0")
    person = source.person()
    episode = source.episode(person)
    source.raw(
        "INSERT INTO npr_episode SELECT * FROM npr_episode WHERE episode_id = :id", id=episode
    )
    specs = write_spec(tmp_path / "specs", **population_spec())
    settings = settings_for(source.url, tmp_path, specs)
    with pytest.raises(ValidationFailed) as caught:
        run_delivery(settings)
    assert "expect_column_values_to_be_unique(_key)" in str(caught.value)
    assert person not in str(caught.value)
    assert not (tmp_path / "drops" / "TESTPOP").exists()
    (evidence,) = (tmp_path / "drops" / "_quarantine" / "TESTPOP" / "population").iterdir()
    report = json.loads((evidence / "validation_report.json").read_text())
    assert report["success"] is False
    assert person not in json.dumps(report)
    assert (evidence / "TESTPOP_population_2024-03-01_2024-04-01.parquet").exists()
    (attempt,) = DisclosureLog(settings.state_url).attempts("TESTPOP")
    assert attempt["status"] == "validation_failed"
    assert person not in attempt["reason"]
    source.engine.dispose()


def test_validation_in_batches_adds_up_and_sees_a_duplicate_split_over_two(tmp_path, monkeypatch):
    """Validation runs batch by batch (etl.deliver.VALIDATION_BATCH_ROWS) to bound memory;
    counts are added over the batches, and a record key repeated across a batch boundary
    fails like one repeated within a batch."""
    monkeypatch.setattr("etl.deliver.VALIDATION_BATCH_ROWS", 2)
    source = Source(f"sqlite:///{tmp_path / 'source.db'}")
    source.synced(utc_now())
    source.raw("ALTER TABLE npr_episode RENAME TO npr_episode_pk")
    source.raw("CREATE TABLE npr_episode AS SELECT * FROM npr_episode_pk WHERE 0")
    first = source.episode(source.person())
    repeated = source.episode(source.person())  # rows 2 and 3: batches 1 and 2
    last = source.episode(source.person())
    source.raw(
        "INSERT INTO npr_episode SELECT * FROM npr_episode WHERE episode_id = :id", id=repeated
    )
    assert first < repeated < last
    specs = write_spec(tmp_path / "specs", **population_spec())
    with pytest.raises(ValidationFailed):
        run_delivery(settings_for(source.url, tmp_path, specs))
    (evidence,) = (tmp_path / "drops" / "_quarantine" / "TESTPOP" / "population").iterdir()
    results = json.loads((evidence / "validation_report.json").read_text())["results"]
    by_name = {r["expectation"]: r for r in results}
    unique = by_name["expect_column_values_to_be_unique(_key)"]
    assert (unique["element_count"], unique["unexpected_count"]) == (4, 2)
    assert [r["expectation"] for r in results if not r["success"]] == [
        "expect_column_values_to_be_unique(_key)"
    ]
    assert all(r["element_count"] in (4, None) for r in results)
    source.engine.dispose()


def test_validation_catches_a_record_the_selections_filters_should_have_left_out(
    source, tmp_path, monkeypatch
):
    """Validation re-checks sectors and min_age from the evidence, independently of the
    SQL: with the query's filters switched off, a somatic episode and a child's contact
    reach the staged file, and nothing is published."""

    def without_filters(*args: object, **kwargs: object) -> dict:
        return parameters(*args, **kwargs) | {"any_sector": 1, "min_age": None}

    monkeypatch.setattr("etl.deliver.parameters", without_filters)
    source.episode(source.person(), sector="SOM")
    child = source.person(born=date(2012, 1, 1))
    source.contact(child, birth_year=2012)
    source.episode(source.person())  # admitted
    specs = write_spec(tmp_path / "specs", **population_spec(selection={
        "icd10": ["F20-F29"], "icpc2": ["P72"], "min_age": 18, "sectors": ["PHV"]
    }))  # fmt: skip
    with pytest.raises(ValidationFailed):
        run_delivery(settings_for(source.url, tmp_path, specs))
    (evidence,) = (tmp_path / "drops" / "_quarantine" / "TESTPOP" / "population").iterdir()
    results = json.loads((evidence / "validation_report.json").read_text())["results"]
    (qualifies,) = [r for r in results if r["expectation"].endswith("(_qualifies)")]
    assert (qualifies["element_count"], qualifies["unexpected_count"]) == (3, 2)
    assert [r["expectation"] for r in results if not r["success"]] == [qualifies["expectation"]]
    assert not (tmp_path / "drops" / "TESTPOP").exists()


def test_guard_catches_a_reserved_person_the_selection_let_through(source, tmp_path):
    """The guard reads reservations on its own: a delivered row of a reserved person fails."""
    reserved = source.person()
    source.reserve(reserved, "TESTPOP", "OPT_OUT", "2024-01-01 00:00:00")
    source.reserve(reserved, "KPR", "NO_PURPOSE2", "2024-01-01 00:00:00")
    spec = parse_spec(population_spec(), Path("test.yaml"))
    with source.engine.connect() as conn:
        guard = ReservationGuard.read(conn, spec, RUN_AT)
    frame = pd.DataFrame(
        {"source": ["NPR", "KPR", "NPR"], "fnr": [reserved, reserved, source.person()]}
    )
    assert guard.allowed(frame, None).tolist() == [False, False, True]


def test_guard_checks_each_rule_by_number_and_by_pseudonym_for_every_batch():
    """Section 1's table as the guard applies it to the rows of a file: OPT_OUT everywhere,
    NO_PURPOSE2 on KPR rows only, NO_FNR on its own source's rows only; a pseudonymised row
    (no fnr) is caught by its pseudonym. A later batch, or another key, gives the same."""
    opt_out, kpr_only, npr_no_fnr, free = "80000000001", "80000000002", "80000000003", "8" * 11
    guard = ReservationGuard({opt_out}, {kpr_only}, {"NPR": {npr_no_fnr}, "KPR": set()})
    for key in (b"a" * 32, b"b" * 32):
        pseudonymiser = Pseudonymiser(key, "TESTPOP")
        frame = pd.DataFrame(
            {
                "source": ["NPR", "KPR", "NPR", "KPR", "NPR", "KPR", "NPR", "NPR"],
                "fnr": [opt_out, None, kpr_only, kpr_only, npr_no_fnr, npr_no_fnr, free, None],
                "pseudonym": [
                    None,
                    pseudonymiser(opt_out),
                    None,
                    None,
                    None,
                    None,
                    None,
                    pseudonymiser(free),
                ],
            }
        )
        for _ in range(2):
            allowed = guard.allowed(frame, pseudonymiser).tolist()
            assert allowed == [False, False, True, False, False, True, True, True]
    without_pseudonyms = frame.drop(columns="pseudonym")
    assert guard.allowed(without_pseudonyms, None).tolist() == [
        False, True, True, False, False, True, True, True
    ]  # fmt: skip


def test_source_anomalies_are_delivered_counted_or_ignored(source, tmp_path):
    """End before start: delivered and counted. A null code or an unknown code system never
    qualifies a record and is otherwise ignored."""
    person = source.person()
    backwards = source.episode(person, start="2024-02-27", end="2024-02-20")
    null_code = source.episode(person, diagnoses=[None, "F200"])
    only_null = source.episode(person, diagnoses=[None])
    unknown_system = source.contact(person, diagnoses=[("P72", "ICPC-3")])
    result = deliver_with(source, tmp_path)
    assert delivered_ids(result) == {("NPR", backwards), ("NPR", null_code)}
    assert ("NPR", only_null) not in delivered_ids(result)
    assert ("KPR", unknown_system) not in delivered_ids(result)
    rows = {row["record_id"]: row for row in delivered_rows(result)}
    assert rows[null_code]["diagnoses"] == ["F200"]
    assert manifest_of(result)["anomalies"] == {"end_before_start": 1}


def test_row_groups_follow_the_query_not_the_fetch_size(source, tmp_path, monkeypatch):
    """A row group holds the records of a fixed window of the query's result (count rows
    included), so the same delivery fetched in pieces of any size is the same file, byte for
    byte, and a rerun finds it unchanged. Fetching a whole window at a time is how the first
    releases wrote (one fetch, one row group): the reference."""
    monkeypatch.setattr("etl.extract.GROUP_RESULT_ROWS", 7)
    reserved = source.person()
    source.episode(reserved)
    source.reserve(reserved, "TESTPOP", "OPT_OUT", "2024-01-01 00:00:00")  # one count row
    for i in range(20):
        source.episode(source.person() if i != 8 else "1234567890")  # result row 9 invalid
    specs = write_spec(tmp_path / "specs", **population_spec())

    files = {}
    for fetch in (7, 3, 5, 1000):
        monkeypatch.setattr("etl.extract.FETCH_ROWS", fetch)
        result = run_delivery(settings_for(source.url, tmp_path / f"fetch_{fetch}", specs))
        files[fetch] = result.path / f"TESTPOP_population_{result.period.label}.parquet"

    reference = pq.ParquetFile(files[7]).metadata
    groups = [reference.row_group(i).num_rows for i in range(reference.num_row_groups)]
    # result rows 0-6: the count row and 6 records; 7-13: 7 records, one invalid; 14-20: 7
    assert groups == [6, 6, 7]
    assert {path.read_bytes() for path in files.values()} == {files[7].read_bytes()}
    monkeypatch.setattr("etl.extract.FETCH_ROWS", 3)
    rerun = run_delivery(settings_for(source.url, tmp_path / "fetch_7", specs))
    assert (rerun.status, rerun.version) == ("unchanged", 1)
