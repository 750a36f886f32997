"""The disclosure log and the delivery state derived from it, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone

import pytest

from etl import __version__
from etl.audit import REASON_MAX_CHARS, DisclosureLog
from etl.period import Period

SPEC_SHA = "ab" * 32
AS_OF = datetime(2024, 3, 1, 12, 30, 15, 250000)


@pytest.fixture
def log(db_url: str) -> Iterator[DisclosureLog]:
    disclosure_log = DisclosureLog(db_url)
    yield disclosure_log
    disclosure_log.close()


def _start(
    log: DisclosureLog,
    start: date,
    end: date,
    registry: str = "PARKINSON",
    delivery: str = "complement",
) -> str:
    return log.start(
        registry,
        delivery,
        Period(start, end),
        "NPR-forskriften § 4-2",
        SPEC_SHA,
        ["fnr", "sex", "diagnoses"],
        AS_OF,
    )


def _only(log: DisclosureLog) -> dict:
    (attempt,) = log.attempts()
    return attempt


def test_a_started_attempt_is_logged_as_running(log: DisclosureLog) -> None:
    attempt_id = _start(log, date(2024, 1, 1), date(2024, 2, 1))

    attempt = _only(log)
    assert attempt["attempt_id"] == attempt_id
    assert attempt["registry"] == "PARKINSON"
    assert attempt["delivery"] == "complement"
    assert (attempt["period_from"], attempt["period_to"]) == (date(2024, 1, 1), date(2024, 2, 1))
    assert attempt["legal_basis"] == "NPR-forskriften § 4-2"
    assert attempt["spec_sha256"] == SPEC_SHA
    assert attempt["variables"] == ["fnr", "sex", "diagnoses"]
    assert attempt["reservations_as_of"] == AS_OF
    assert attempt["status"] == "running"
    assert attempt["software_version"] == __version__
    assert isinstance(attempt["started_at"], datetime)
    assert attempt["started_at"].tzinfo is None
    assert attempt["finished_at"] is None
    assert attempt["files"] is None


def test_finish_round_trips_every_field(log: DisclosureLog) -> None:
    attempt_id = _start(log, date(2024, 1, 1), date(2024, 2, 1))
    excluded = {"opt_out": "<5", "no_purpose2": 0, "no_fnr": 12, "invalid_fnr": "<5"}
    coverage = {"only_register": 3, "only_npr": 11, "both": 240, "coverage": 0.9568}
    files = [{"name": "PARKINSON.parquet", "sha256": SPEC_SHA, "bytes": 2048, "rows": 254}]

    log.finish(
        attempt_id,
        "published",
        row_count=254,
        person_count=243,
        excluded=excluded,
        coverage=coverage,
        files=files,
        drop_path="/drop/PARKINSON/complement/2024-01-01_2024-02-01",
        version=1,
    )

    attempt = _only(log)
    assert attempt["status"] == "published"
    assert (attempt["row_count"], attempt["person_count"], attempt["version"]) == (254, 243, 1)
    assert attempt["excluded"] == excluded
    assert attempt["coverage"] == coverage
    assert attempt["files"] == files
    assert attempt["drop_path"] == "/drop/PARKINSON/complement/2024-01-01_2024-02-01"
    assert attempt["reason"] is None
    assert attempt["started_at"] <= attempt["finished_at"]


def test_timestamps_are_stored_as_naive_utc(log: DisclosureLog) -> None:
    oslo_winter = timezone(timedelta(hours=1))
    log.start(
        "PARKINSON",
        "complement",
        Period(date(2024, 1, 1), date(2024, 2, 1)),
        "NPR-forskriften § 4-2",
        SPEC_SHA,
        [],
        datetime(2024, 3, 1, 13, 30, tzinfo=oslo_winter),
    )

    assert _only(log)["reservations_as_of"] == datetime(2024, 3, 1, 12, 30)


def test_last_delivered_end_counts_only_deliveries_that_reached_the_register(
    log: DisclosureLog,
) -> None:
    assert log.last_delivered_end("PARKINSON", "complement") is None
    outcomes = [
        (date(2024, 2, 1), date(2024, 3, 1), "unchanged"),
        (date(2024, 1, 1), date(2024, 2, 1), "published"),
        (date(2024, 3, 1), date(2024, 4, 1), "failed"),
        (date(2024, 4, 1), date(2024, 5, 1), "validation_failed"),
    ]
    for start, end, status in outcomes:
        log.finish(_start(log, start, end), status)
    _start(log, date(2024, 5, 1), date(2024, 6, 1))  # still running
    log.finish(_start(log, date(2024, 6, 1), date(2024, 7, 1), registry="NORKAR"), "published")
    log.finish(_start(log, date(2024, 6, 1), date(2024, 7, 1), delivery="population"), "published")

    assert log.last_delivered_end("PARKINSON", "complement") == date(2024, 3, 1)
    assert log.last_delivered_end("NORKAR", "complement") == date(2024, 7, 1)
    assert log.last_delivered_end("PHV", "population") is None


def test_a_finished_attempt_cannot_be_rewritten(log: DisclosureLog) -> None:
    attempt_id = _start(log, date(2024, 1, 1), date(2024, 2, 1))
    log.finish(attempt_id, "failed", reason="source unreachable")

    with pytest.raises(ValueError, match="unknown or already finished"):
        log.finish(attempt_id, "published", row_count=10)
    with pytest.raises(ValueError, match="unknown or already finished"):
        log.finish("00000000-0000-0000-0000-000000000000", "published")
    with pytest.raises(ValueError, match="status must be one of"):
        log.finish(attempt_id, "running")

    attempt = _only(log)
    assert (attempt["status"], attempt["row_count"]) == ("failed", None)
    assert attempt["reason"] == "source unreachable"


def test_reasons_are_short_and_carry_no_identity_numbers(log: DisclosureLog) -> None:
    attempt_id = _start(log, date(2024, 1, 1), date(2024, 2, 1))

    log.finish(attempt_id, "failed", reason="bad fnr 15108695088 in row 3; " + "x" * 1000)

    reason = _only(log)["reason"]
    assert reason.startswith("bad fnr <number> in row 3; x")
    assert len(reason) == REASON_MAX_CHARS


def test_the_schema_is_created_once_and_attempts_filter_by_register(db_url: str) -> None:
    first = DisclosureLog(db_url)
    _start(first, date(2024, 1, 1), date(2024, 2, 1))
    _start(first, date(2024, 1, 1), date(2024, 2, 1), registry="NORKAR")
    first.close()

    second = DisclosureLog(db_url)
    try:
        assert [a["registry"] for a in second.attempts()] == ["PARKINSON", "NORKAR"]
        assert [a["registry"] for a in second.attempts("NORKAR")] == ["NORKAR"]
        assert second.attempts("PHV") == []
    finally:
        second.close()
