"""The source layer: one SQL text on both dialects, and queries that cannot hang forever."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from etl.source import bind_value, make_engine, sql_text, statements

SLOW = {
    "sqlite": (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000000)"
        " SELECT COUNT(*) FROM n"
    ),
    "postgresql": "SELECT pg_sleep(10)",
}


def test_a_statement_that_runs_too_long_is_cancelled(db_url):
    engine = make_engine(db_url, statement_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(OperationalError), engine.connect() as conn:
        conn.execute(text(SLOW[engine.dialect.name]))
    assert time.monotonic() - started < 5
    with engine.connect() as conn:  # the next statement gets its own budget
        assert conn.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()


def test_without_a_timeout_statements_run_normally(db_url):
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 2")).scalar() == 2
    engine.dispose()


def test_sqlite_shims_behave_like_postgresql(db_url):
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE d (code VARCHAR(8), day DATE)"))
        conn.execute(text("INSERT INTO d VALUES (' f20.0 ', '2024-02-28'), (NULL, '2024-03-01')"))
        codes = (
            conn.execute(
                text("SELECT regexp_replace(upper(code), '[^A-Z0-9]', '', 'g') FROM d ORDER BY day")
            )
            .scalars()
            .all()
        )
        days = conn.execute(
            text("SELECT date_part('year', day), date_part('epoch', day) FROM d ORDER BY day")
        ).all()
        aggregated = conn.execute(text("SELECT string_agg(code, '|') FROM d")).scalar()
    engine.dispose()
    assert list(codes) == ["F200", None]
    assert [year for year, _ in days] == [2024, 2024]
    assert days[1][1] - days[0][1] == 2 * 86400
    assert aggregated == " f20.0 "


def test_comments_are_dropped_so_their_colons_are_not_parameters():
    guard = sql_text("reservation_guard")
    assert "--" not in guard
    # The header comment mentions no parameter the statement lacks, and none is lost.
    assert set(text(guard).compile().params) == {"active_before", "registry"}
    assert all("--" not in statement for statement in statements("schema"))


SPELLINGS = {
    # instant: every way a source owner may store it as SQLite text (contract section 1)
    datetime(2024, 3, 5, 6): ["2024-03-05 06:00:00", "2024-03-05 06:00:00.000000"],
    datetime(2024, 3, 5, 6, 0, 0, 250_000): [
        "2024-03-05 06:00:00.25",
        "2024-03-05 06:00:00.250000",
    ],
    datetime(2024, 3, 5, 6, 0, 0, 1): ["2024-03-05 06:00:00.000001"],
    datetime(2024, 3, 5, 5, 59, 59, 999_999): ["2024-03-05 05:59:59.999999"],
}


@pytest.mark.parametrize("bound", list(SPELLINGS))
def test_a_bound_timestamp_compares_right_with_every_stored_spelling_on_sqlite(bound):
    """etl.source.bind_value's shortest form: ">=" and "<" (the only timestamp comparisons
    in sql/) agree with the instants for every spelling, including the equal ones."""
    engine = make_engine("sqlite://")
    with engine.connect() as conn:
        for stored, spellings in SPELLINGS.items():
            for spelling in spellings:
                at_or_after, before = conn.execute(
                    text("SELECT :stored >= :bound, :stored < :bound"),
                    {"stored": spelling, "bound": bind_value("sqlite", bound)},
                ).one()
                assert (bool(at_or_after), bool(before)) == (stored >= bound, stored < bound), (
                    spelling,
                    bound,
                )
    engine.dispose()
