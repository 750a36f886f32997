"""Synthetic source data: complete, deterministic, realistic enough to exercise every rule.

Every test runs on SQLite and PostgreSQL (the db_url fixture) with a few hundred persons;
the generator's per-chunk minimums make every cohort, reservation scope and code family
appear even at that size.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from etl import fnr, synth
from etl.source import make_engine

TODAY = date(2026, 3, 15)
MIDNIGHT = datetime(2026, 3, 15)
PERSONS = 300
AMPUTATIONS = ("NFQ09", "NFQ19", "NGQ09", "NGQ19", "NHQ11", "NHQ14")
VASCULAR = ("PDG10", "PEH20", "PAF21", "PFH20", "PGH99", "PDZ12B", "PEP10B", "PFP10B")


def query(engine: Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql))]


def normalised(code: str) -> str:
    """CONTRACT.md section 1: upper case, only A-Z and 0-9."""
    return re.sub(r"[^A-Z0-9]", "", code.upper())


def instant(value: Any) -> datetime:
    """A timestamp as PostgreSQL returns it or SQLite stores it (ISO text)."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def day(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


def checksum(engine: Engine, tables: Sequence[str]) -> str:
    """A digest of every row of the tables, sorted, in a dialect-neutral text form."""
    digest = hashlib.sha256()
    for table in tables:
        columns = ", ".join(synth.TABLE_COLUMNS[table])
        for row in sorted(query(engine, f"SELECT {columns} FROM {table}"), key=repr):
            values = [int(v) if isinstance(v, bool) else v for v in row]
            digest.update(repr([None if v is None else str(v) for v in values]).encode())
    return digest.hexdigest()


@pytest.fixture
def source(db_url: str) -> tuple[Engine, synth.SynthSummary]:
    engine = make_engine(db_url)
    summary = synth.synthesize(engine, PERSONS, seed=3, today=TODAY)
    yield engine, summary
    engine.dispose()


def test_every_table_filled_as_summarised(source: tuple[Engine, synth.SynthSummary]) -> None:
    engine, summary = source
    counted = {t: query(engine, f"SELECT COUNT(*) FROM {t}")[0][0] for t in synth.TABLE_COLUMNS}
    assert counted == summary.tables()
    assert all(counted.values()), counted
    assert summary.persons == PERSONS
    # About 3 episodes and 5 claims per person (cohort minimums add a little at this size).
    assert 2.5 <= counted["npr_episode"] / PERSONS <= 4.5
    assert 4.0 <= counted["kpr_contact"] / PERSONS <= 6.5
    diagnoses = query(
        engine,
        "SELECT COUNT(*), SUM(CASE WHEN is_main THEN 1 ELSE 0 END), MAX(seq)"
        " FROM npr_diagnosis GROUP BY episode_id",
    )
    assert len(diagnoses) == counted["npr_episode"]
    assert {main for _, main, _ in diagnoses} == {1}
    assert all(1 <= n <= 3 and n == top for n, _, top in diagnoses)
    claims = query(
        engine,
        "SELECT SUM(CASE WHEN is_main THEN 1 ELSE 0 END) FROM kpr_diagnosis GROUP BY contact_id",
    )
    assert len(claims) == counted["kpr_contact"]
    assert {main for (main,) in claims} == {1}


def test_same_seed_same_rows(db_url: str, tmp_path) -> None:
    """Deterministic per seed and today, and the same rows on either dialect."""
    data_tables = [t for t in synth.TABLE_COLUMNS if t != "reservation_sync"]
    engines = [make_engine(db_url), make_engine(f"sqlite:///{tmp_path / 'again.db'}")]
    for engine in engines:
        synth.synthesize(engine, PERSONS, seed=3, today=TODAY)
    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    synth.synthesize(other, PERSONS, seed=4, today=TODAY)
    first, again, different = (checksum(e, data_tables) for e in [*engines, other])
    assert first == again
    assert first != different


def test_identity_numbers_are_synthetic_or_deliberately_broken(
    source: tuple[Engine, synth.SynthSummary],
) -> None:
    engine, _ = source
    numbers = [
        n
        for table in ("npr_episode", "kpr_contact", "reservation", "register_patient")
        for (n,) in query(engine, f"SELECT fnr FROM {table}")
    ]
    valid = [n for n in numbers if fnr.is_valid(n)]
    assert fnr.is_valid_array(numbers).tolist() == [fnr.is_valid(n) for n in numbers]
    assert all(n[2] in "89" for n in valid), "every valid number is synthetic: month + 80"
    assert any(int(n[0]) >= 4 for n in valid), "some synthetic D-numbers: day + 40 as well"
    broken = [n for n in numbers if not fnr.is_valid(n)]
    assert 0 < len(broken) < 0.01 * len(numbers)
    short = [n for n in broken if len(n) == 10]
    wrong_check_digit = [n for n in broken if len(n) == 11]
    assert short and wrong_check_digit
    for number in wrong_check_digit:
        with pytest.raises(fnr.InvalidFnr, match="second check digit"):
            fnr.validate(number)
    persons_per_number = query(
        engine,
        "SELECT fnr, COUNT(DISTINCT birth_year) FROM npr_episode GROUP BY fnr"
        " HAVING COUNT(DISTINCT birth_year) > 1",
    )
    assert persons_per_number == [], "one number, one person"


def test_mixes_and_code_families(source: tuple[Engine, synth.SynthSummary]) -> None:
    engine, _ = source
    episodes = query(engine, "SELECT sector, care_level, specialty, sex FROM npr_episode")
    assert {s for s, *_ in episodes} == {"SOM", "PHV", "PHB", "TSB", "AVT"}
    care = Counter(c for _, c, *_ in episodes)
    assert 0.06 < care[1] / len(episodes) < 0.16
    assert care[3] / len(episodes) > 0.7
    assert {"040", "250", "320"} <= {s for _, _, s, _ in episodes}
    sexes = {x for *_, x in episodes}
    assert {1, 2} <= sexes and sexes - {1, 2} and sexes <= {0, 1, 2, 9}

    npr = query(
        engine,
        "SELECT d.code, e.sector, e.specialty FROM npr_diagnosis d"
        " JOIN npr_episode e ON e.episode_id = d.episode_id",
    )
    codes = Counter(normalised(c) for c, _, _ in npr)
    prefixes = {c[:3] for c in codes}
    assert {"F20", "G20", "G23", "G21", "I70"} <= prefixes
    assert {p for p in prefixes if "F30" <= p <= "F39"} and {"F10", "F11", "F12"} & prefixes
    assert len({p for p in prefixes if "F20" <= p <= "F29"}) >= 4, "the psychosis range F20-F29"
    assert any(len(c) == 5 and c[:3] in ("F20", "I70") for c in codes), "Norwegian 5-char codes"
    assert any(normalised(c).startswith("F2") and sector == "PHV" for c, sector, _ in npr)
    assert any(normalised(c) == "G20" and specialty == "250" for c, _, specialty in npr)
    dirty = [c for c, _, _ in npr if c != normalised(c)]
    assert any(c != c.upper() for c in dirty), "lower case"
    assert any("." in c for c in dirty), "with a dot"
    assert any(c.endswith(" ") for c in dirty), "trailing space"
    assert len(dirty) < 0.05 * len(npr)

    procedures = query(engine, "SELECT code, code_system, procedure_date FROM npr_procedure")
    systems = {(normalised(c), s) for c, s, _ in procedures}
    assert any(s == "NCRP" and c.startswith("P") and c.endswith("B") for c, s in systems)
    assert any(s == "NCSP" and c.startswith("P") for c, s in systems), "open vascular surgery"
    assert any(s == "NCMP" for _, s in systems)
    assert any(d is None for *_, d in procedures)

    kpr = query(engine, "SELECT code, code_system FROM kpr_diagnosis")
    kpr_codes = {(normalised(c), s) for c, s in kpr}
    assert {("P72", "ICPC-2"), ("N87", "ICPC-2"), ("R74", "ICPC-2")} <= kpr_codes
    assert any(s == "ICD-10" for _, s in kpr_codes)


def test_amputations_before_on_and_after_vascular_procedures(
    source: tuple[Engine, synth.SynthSummary],
) -> None:
    engine, _ = source
    rows = query(
        engine,
        "SELECT e.fnr, p.code, COALESCE(p.procedure_date, e.start_date)"
        " FROM npr_procedure p JOIN npr_episode e ON e.episode_id = p.episode_id",
    )
    vascular: dict[str, list[date]] = {}
    amputations: list[tuple[str, date]] = []
    for person, code, when in rows:
        if normalised(code) in VASCULAR:
            vascular.setdefault(person, []).append(day(when))
        elif normalised(code) in AMPUTATIONS:
            amputations.append((person, day(when)))
    lags = [
        [(when - done).days for done in vascular[person]]
        for person, when in amputations
        if person in vascular
    ]
    assert any(0 < lag <= 550 for person in lags for lag in person), "after a vascular procedure"
    assert len(lags) < len(vascular), "only some vascular patients are amputated"


def test_received_times(source: tuple[Engine, synth.SynthSummary], db_url: str) -> None:
    engine, _ = source
    episodes = [r for (r,) in query(engine, "SELECT received_at FROM npr_episode")]
    claims = query(engine, "SELECT received_at, contact_date FROM kpr_contact")
    instants = [instant(r) for r in episodes] + [instant(r) for r, _ in claims]
    assert max(instants) < MIDNIGHT
    assert min(instants) >= MIDNIGHT - timedelta(days=3 * 365 + 1)
    nights = Counter(instant(r).date() for r in episodes)
    assert all(nights[TODAY - timedelta(days=k)] > 0 for k in range(1, 8)), "nightly increments"
    late = [(instant(r).date() - day(d)).days for r, d in claims]
    assert min(late) >= 0 and max(late) > 60, "claims arrive up to months late"
    assert {i.microsecond == 0 for i in instants} == {True, False}
    if db_url.startswith("sqlite"):
        stored = {len(r) for r in episodes} | {len(r) for r, _ in claims}
        assert stored == {19, 26}, "YYYY-MM-DD HH:MM:SS with and without .ffffff"


def test_reservations_and_sync(source: tuple[Engine, synth.SynthSummary]) -> None:
    engine, _ = source
    rows = query(engine, "SELECT registry, scope, registered_at, withdrawn_at FROM reservation")
    scopes = {(registry, scope) for registry, scope, _, _ in rows}
    assert {
        ("PHV", "OPT_OUT"),
        ("PARKINSON", "OPT_OUT"),
        ("NORKAR", "OPT_OUT"),
        ("HJERTE", "OPT_OUT"),
        ("KPR", "NO_PURPOSE2"),
        ("NPR", "NO_FNR"),
        ("KPR", "NO_FNR"),
    } <= scopes
    registered = [instant(r) for _, _, r, _ in rows]
    withdrawn = [(instant(r), instant(w)) for _, _, r, w in rows if w is not None]
    assert withdrawn and len(withdrawn) < len(rows) / 3
    assert all(r < w < MIDNIGHT for r, w in withdrawn)
    assert max(registered) < MIDNIGHT
    assert any(r > MIDNIGHT - timedelta(days=14) for r in registered), "after the data period"
    newest = max(instant(s) for (s,) in query(engine, "SELECT synced_at FROM reservation_sync"))
    now = datetime.now(UTC).replace(tzinfo=None)
    assert now - timedelta(minutes=5) < newest <= now, "fresh for a demo run now"


def test_register_lists(source: tuple[Engine, synth.SynthSummary]) -> None:
    engine, _ = source
    lists = query(engine, "SELECT registry, fnr, case_id, index_date FROM register_patient")
    parkinson = {n for registry, n, _, _ in lists if registry == "PARKINSON"}
    diagnosed = {
        n
        for n, code in query(
            engine,
            "SELECT e.fnr, d.code FROM npr_diagnosis d"
            " JOIN npr_episode e ON e.episode_id = d.episode_id",
        )
        if normalised(code)[:3] in ("G20", "G23")
    }
    in_npr = {n for (n,) in query(engine, "SELECT DISTINCT fnr FROM npr_episode")}
    assert 0.4 < len(parkinson & diagnosed) / len(diagnosed) < 0.9, "coverage is meaningful"
    assert parkinson - in_npr, "listed persons NPR has never seen"

    cases = [(n, c, day(i)) for registry, n, c, i in lists if registry == "NORKAR"]
    assert all(re.fullmatch(r"NORKAR-\d{6}", c) for _, c, _ in cases)
    assert len({c for _, c, _ in cases}) == len(cases)
    procedures = {
        (n, day(when))
        for n, code, when in query(
            engine,
            "SELECT e.fnr, p.code, COALESCE(p.procedure_date, e.start_date)"
            " FROM npr_procedure p JOIN npr_episode e ON e.episode_id = p.episode_id",
        )
        if normalised(code) in VASCULAR
    }
    matched = [
        any((n, i + timedelta(days=k)) in procedures for k in range(-2, 3)) for n, _, i in cases
    ]
    # The few misses are procedures whose NPR record carries a deliberately broken number.
    assert sum(matched) >= 0.9 * len(cases), "cases match vascular procedures within two days"
    assert 0.5 < len(cases) / len(procedures) < 0.9


def test_refuses_a_database_with_rows(source: tuple[Engine, synth.SynthSummary]) -> None:
    engine, summary = source
    with pytest.raises(synth.SourceNotEmpty, match="already holds rows"):
        synth.synthesize(engine, 10, today=TODAY)
    assert query(engine, "SELECT COUNT(*) FROM npr_episode")[0][0] == summary.npr_episode


def test_chunks_continue_ids_and_numbers(tmp_path, monkeypatch, capsys) -> None:
    """Several chunks: ids run on without gaps, numbers stay unique, progress goes to stderr."""
    monkeypatch.setattr(synth, "CHUNK_PERSONS", 120)
    engine = make_engine(f"sqlite:///{tmp_path / 'chunks.db'}")
    summary = synth.synthesize(engine, PERSONS, seed=5, today=TODAY, progress=True)
    for table, key in (("npr_episode", "episode_id"), ("kpr_contact", "contact_id")):
        ids = [i for (i,) in query(engine, f"SELECT {key} FROM {table} ORDER BY 1")]
        assert ids == list(range(1, len(ids) + 1))
    numbers = query(engine, "SELECT fnr, birth_year FROM npr_episode")
    years = {}
    for number, year in numbers:
        assert years.setdefault(number, year) == year
    reported = capsys.readouterr()
    assert reported.out == ""
    assert reported.err.count("synth:") == 3
    assert f"{summary.npr_episode} episodes" in reported.err
    assert not re.search(r"\d{10}", reported.err), "no identity numbers in progress output"
