"""Properties of real deliveries over small random worlds (hypothesis).

Each example builds a fresh source database (a SQLite file in its own temporary folder;
one test uses a PostgreSQL schema of its own) with NPR episodes and KPR contacts whose codes
come from a small alphabet that hits and misses the specs' patterns (dirty forms included),
received around the delivery period (the boundaries, a microsecond either side, fractional
seconds, both SQLite timestamp forms), persons with valid synthetic numbers and a few
deliberately invalid ones, reservations of every registry and scope (withdrawn ones, ones
registered after the period or after the run instant), and register lists. Then it runs
etl.deliver.deliver and checks what a register would receive against a small pure-Python
oracle of CONTRACT.md, written here and never calling the etl code it checks:

1. no delivered row belongs to a person an active reservation excludes (section 1), for
   every delivery type, and the withdrawals name exactly the listed persons with an active
   OPT_OUT (section 4);
2. the columns are exactly the contract's, in its order (section 4);
3. a rerun with the same inputs is byte-for-byte identical, also from a fresh database
   filled in another order (section 4, "a rerun ... writes nothing new");
4. adding codes to a selection never removes a row (section 2);
5. the delivered records are exactly the oracle's (selection and reservations, sections 1,
   2 and 4) for population and complement specs;
6. a state machine over reservations, withdrawals, new register lists, reruns and next
   nights keeps every published drop clean and versions it as section 4 says.

Random worlds hit the edges of the reservation rules too rarely to rely on, so
test_each_rule_of_the_reservation_table_at_its_edges spells them out, one person per rule
and edge, with the outcomes written by hand.

Every example pays for real deliveries (most of it the Great Expectations suite), so the
counts are modest and the hypothesis tests are marked slow: about 80 s in one process,
45 s with -n 2; the deterministic tests (about 15 s) also run in make test-fast.

Every timestamp comes in both SQLite forms (with and without a fraction), also at the
edges: a reservation at a whole-second run instant (test_reservation_edges_at_a_whole_
second_run_instant) and received_at exactly at a period bound (test_received_at_without_
fraction_on_a_period_bound_belongs_to_the_period_it_starts).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy import create_engine, text

from etl.deliver import DeliveryResult, deliver, utc_now
from etl.register_list import load_list
from etl.source import bind
from tests.conftest import PG_DATABASE, PG_SERVER
from tests.delivery_helpers import run_delivery, settings_for, write_spec
from tests.source_builder import Source

CODE = "PROP"
OTHER_REGISTER = "HJERTE"
PSEUDONYM_KEY = "property-tests-pseudonym-key-0123456789abcdef"
DELIVERIES = ("population", "complement", "new_information")
SECTORS = ("SOM", "PHV", "PHB", "TSB", "AVT")
US = timedelta(microseconds=1)
MIDNIGHT = time()

# The variable catalogue of CONTRACT.md section 2, and what each delivery type adds (section 4).
VARIABLE_CATALOGUE = (
    "fnr",
    "sex",
    "birth_year",
    "municipality",
    "institution_id",
    "health_trust",
    "sector",
    "specialty",
    "care_level",
    "urgency",
    "start_date",
    "end_date",
    "discharge_status",
    "service_type",
    "main_diagnosis",
    "diagnoses",
    "procedures",
)
NPR_ONLY_SCALARS = (
    "institution_id",
    "health_trust",
    "sector",
    "specialty",
    "care_level",
    "urgency",
    "discharge_status",
)
TYPE_COLUMNS = {
    "population": [],
    "complement": ["status"],
    "new_information": ["event", "case_id"],
}
P1_VARIABLES = [
    "fnr",
    "sex",
    "birth_year",
    "start_date",
    "sector",
    "service_type",
    "main_diagnosis",
    "diagnoses",
    "procedures",
]

# Codes as they arrive (section 1): clean, lower case, dotted, spaced, empty, null.
ICD10_CODES = (
    "F20",
    "f20.0 ",
    "F2000",
    "F209",
    "F25",
    "f25.1",
    "F29",
    "F299",
    "F30",
    "F3",
    "G20",
    "g23.1",
    "G21",
    "I702",
    " i70.21",
    "Z000",
    "",
    None,
)
ICPC2_CODES = ("P72", "p73", "P 98", "P7", "P70", "R74", "T90", "F20")
PROCEDURE_CODES = (
    "PAC10",
    "pdz12b",
    "PDZ12B",
    "NFQ19",
    "nhq11",
    "NFQ09",
    "PH",
    "JKA20",
    "PAP10B",
    "pa c 10",
)
PROCEDURE_SYSTEMS = ("NCSP", "NCRP", "NCMP")
KPR_SYSTEMS = {"ICPC-2": "icpc2", "ICD-10": "icd10"}

# Spec patterns (section 2): prefixes, ranges, removals, dirty spellings.
PATTERNS = {
    "icd10": (
        "F20-F29",
        "F20",
        "F2",
        "G20",
        "g23",
        "G20-G23",
        "F25",
        "F30-F39",
        "I70",
        "Z",
        "f20.0",
        "!F25",
        "!F251",
        "!F2",
        "!G21",
        "!F209",
    ),
    "icpc2": ("P72", "P73", "P98", "P7", "P70-P79", "R", "!P73", "!P7"),
    "ncsp": ("PA-PH", "PAC", "NFQ", "JKA20", "NHQ", "!PAC1", "!NFQ09"),
    "ncrp": ("PDZ12B", "PAP10B", "PDZ", "!PDZ12B"),
}
FOLLOW_UP_PATTERNS = ("NFQ09", "NFQ19", "NHQ", "PAC", "!NHQ1")
CODE_DAYS = (date(2023, 6, 1), date(2023, 12, 31), date(2024, 1, 1), date(2024, 2, 27))
INDEX_DATES = (None, date(2023, 5, 31), date(2023, 6, 1), date(2024, 2, 25), date(2024, 2, 27))
BIRTHS = (
    date(1956, 3, 2),
    date(1980, 5, 17),
    date(2005, 12, 31),
    date(2006, 7, 1),
    date(2007, 1, 1),
)

# Every example's files live in a temporary folder, on tmpfs where there is one: a delivery
# fsyncs each file and folder it publishes, which costs more than the delivery on a busy disk.
TMP_ROOT = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

LEFT_OUT = frozenset({"opt_out", "no_purpose2", "no_fnr"})
PSEUDONYM = re.compile(r"[0-9a-f]{64}")

# Settings of every property: an example runs real deliveries (~0.3-1 s each, most of it the
# Great Expectations suite), so no deadline and modest example counts.
DELIVERING = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}


def observe(text: str) -> None:
    """Count an event for --hypothesis-show-statistics (helpers also serve plain tests)."""
    if currently_in_test_context():
        event(text)


def tell(text: str) -> None:
    """A note printed with a falsifying example."""
    if currently_in_test_context():
        note(text)


@pytest.fixture(scope="module", autouse=True)
def _pseudonym_key() -> Iterator[None]:
    """Pseudonymising specs refuse to start without LEVERANSE_PSEUDONYM_KEY (section 3)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEVERANSE_PSEUDONYM_KEY", PSEUDONYM_KEY)
        yield


# --- the world a property runs on -----------------------------------------------------------


@dataclass(frozen=True)
class PersonPlan:
    born: date
    kind: str  # valid | bad_check (last digit changed) | ten_digits


@dataclass(frozen=True)
class RecordPlan:
    source: str  # NPR | KPR
    person: int
    received: datetime
    short_form: bool  # SQLite: ISO text without trailing zero fraction digits
    day: date  # start_date / contact_date
    birth_year: int | None
    sector: str | None  # NPR only
    service_type: int  # KPR only
    diagnoses: tuple[tuple[str | None, str, bool], ...]  # code, code_system, is_main
    procedures: tuple[tuple[str, str, date | None], ...] = ()  # code, code_system, date


@dataclass(frozen=True)
class ReservationPlan:
    person: int
    registry: str
    scope: str
    registered: datetime
    withdrawn: datetime | None
    short_form: bool


@dataclass(frozen=True)
class ListPlan:
    person: int
    registry: str
    index_date: date | None


@dataclass(frozen=True)
class WorldPlan:
    start: date
    end: date
    as_of: datetime
    persons: tuple[PersonPlan, ...]
    records: tuple[RecordPlan, ...]
    reservations: tuple[ReservationPlan, ...]
    listed: tuple[ListPlan, ...]


@dataclass(frozen=True)
class Record:
    key: tuple[str, int]  # (source, record_id): ids of the two sources overlap on purpose
    fnr: str
    plan: RecordPlan


@dataclass
class Reservation:
    reservation_id: int
    fnr: str
    registry: str
    scope: str
    registered: datetime
    withdrawn: datetime | None


@dataclass
class World:
    """What is in the source database, as the oracle sees it."""

    valid: set[str]
    numbers: list[str] = field(default_factory=list)  # the persons' numbers, in plan order
    records: dict[tuple[str, int], Record] = field(default_factory=dict)
    reservations: list[Reservation] = field(default_factory=list)
    listed: list[tuple[str, str, str, date | None]] = field(default_factory=list)

    def listed_persons(self, registry: str) -> set[str]:
        return {fnr for reg, fnr, _, _ in self.listed if reg == registry}


def _stored(instant: datetime | None, short: bool, dialect: str) -> datetime | str | None:
    """A timestamp as a source owner might store it. On SQLite, ISO text (section 1) in the
    long form with six fraction digits ('2024-03-05 10:00:00.000000', as a writer with
    microseconds stores it) or the short one without trailing zeros ('2024-03-05 10:00:00',
    '... 10:00:00.25'); written as text here, not through etl.source.bind."""
    if instant is None or dialect != "sqlite":
        return instant
    whole = instant.strftime("%Y-%m-%d %H:%M:%S")
    fraction = f"{instant.microsecond:06d}".rstrip("0") if short else f"{instant.microsecond:06d}"
    return f"{whole}.{fraction}" if fraction else whole


def _insert(conn: Any, table: str, rows: list[dict[str, Any]]) -> None:
    """Many rows in one statement (Source.insert commits per row: too slow for examples)."""
    if not rows:
        return
    columns = list(rows[0])
    statement = text(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(f':{c}' for c in columns)})"
    )
    conn.execute(statement, [bind(conn, row) for row in rows])


def _number(source: Source, person: PersonPlan) -> str:
    number = source.person(person.born)
    if person.kind == "bad_check":  # changing K2 by 1..9 always breaks the mod-11 sum
        return number[:10] + str((int(number[10]) + 1) % 10)
    if person.kind == "ten_digits":
        return number[:10]
    return number


def _record_rows(records: list[Record], dialect: str) -> dict[str, list[dict[str, Any]]]:
    tables: dict[str, list[dict[str, Any]]] = {
        table: []
        for table in (
            "npr_episode",
            "npr_diagnosis",
            "npr_procedure",
            "kpr_contact",
            "kpr_diagnosis",
        )
    }
    for record in records:
        (source, record_id), plan = record.key, record.plan
        received = _stored(plan.received, plan.short_form, dialect)
        if source == "NPR":
            tables["npr_episode"].append(
                {
                    "episode_id": record_id,
                    "fnr": record.fnr,
                    "sex": 2,
                    "birth_year": plan.birth_year,
                    "municipality": "0301",
                    "institution_id": "974589095",
                    "health_trust": "Helse Test HF",
                    "sector": plan.sector,
                    "specialty": "320",
                    "care_level": 3,
                    "urgency": 4,
                    "start_date": plan.day,
                    "end_date": plan.day + timedelta(days=1),
                    "discharge_status": 1,
                    "received_at": received,
                }
            )
            for seq, (code, _, main) in enumerate(plan.diagnoses, 1):
                tables["npr_diagnosis"].append(
                    {"episode_id": record_id, "seq": seq, "code": code, "is_main": main}
                )
            for seq, (code, system, day) in enumerate(plan.procedures, 1):
                tables["npr_procedure"].append(
                    {
                        "episode_id": record_id,
                        "seq": seq,
                        "code": code,
                        "code_system": system,
                        "procedure_date": day,
                    }
                )
        else:
            tables["kpr_contact"].append(
                {
                    "contact_id": record_id,
                    "fnr": record.fnr,
                    "sex": 1,
                    "birth_year": plan.birth_year,
                    "municipality": "4601",
                    "service_type": plan.service_type,
                    "contact_date": plan.day,
                    "received_at": received,
                }
            )
            for seq, (code, system, main) in enumerate(plan.diagnoses, 1):
                tables["kpr_diagnosis"].append(
                    {
                        "contact_id": record_id,
                        "seq": seq,
                        "code": code,
                        "code_system": system,
                        "is_main": main,
                    }
                )
    return tables


def insert_records(source: Source, records: list[Record]) -> None:
    dialect = source.engine.dialect.name
    with source.engine.begin() as conn:
        for table, rows in _record_rows(records, dialect).items():
            _insert(conn, table, rows)


def insert_reservations(
    source: Source, reservations: list[tuple[Reservation, bool]], dialect: str
) -> None:
    with source.engine.begin() as conn:
        _insert(
            conn,
            "reservation",
            [
                {
                    "reservation_id": r.reservation_id,
                    "fnr": r.fnr,
                    "registry": r.registry,
                    "scope": r.scope,
                    "registered_at": _stored(r.registered, short, dialect),
                    "withdrawn_at": _stored(r.withdrawn, short, dialect),
                }
                for r, short in reservations
            ],
        )


def build_world(source: Source, plan: WorldPlan, *, reverse: bool = False) -> World:
    """Fill ``source`` with the plan; ``reverse`` inserts every table's rows the other way
    round (same ids, same numbers), which must not change a single delivered byte."""
    dialect = source.engine.dialect.name
    numbers = [_number(source, person) for person in plan.persons]
    world = World(
        valid={n for n, p in zip(numbers, plan.persons, strict=True) if p.kind == "valid"},
        numbers=numbers,
    )
    ids = {"NPR": itertools.count(1), "KPR": itertools.count(1)}
    for record in plan.records:
        key = (record.source, next(ids[record.source]))
        world.records[key] = Record(key, numbers[record.person], record)
    reservations = [
        (
            Reservation(i, numbers[r.person], r.registry, r.scope, r.registered, r.withdrawn),
            r.short_form,
        )
        for i, r in enumerate(plan.reservations, 1)
    ]
    world.reservations = [r for r, _ in reservations]
    world.listed = [
        (entry.registry, numbers[entry.person], f"C-{i}", entry.index_date)
        for i, entry in enumerate(plan.listed, 1)
    ]
    order = (lambda rows: list(reversed(rows))) if reverse else list
    insert_records(source, order(list(world.records.values())))
    insert_reservations(source, order(reservations), dialect)
    with source.engine.begin() as conn:
        _insert(
            conn,
            "register_patient",
            [
                {
                    "registry": registry,
                    "fnr": fnr,
                    "case_id": case_id,
                    "index_date": index_date,
                    "received_at": datetime(2024, 1, 1),
                }
                for registry, fnr, case_id, index_date in order(world.listed)
            ],
        )
    source.synced(utc_now())
    return world


# --- the oracle: CONTRACT.md in a few lines of Python ---------------------------------------


def normalise(code: str | None) -> str:
    """Section 1: upper case, only A-Z and 0-9."""
    return re.sub(r"[^A-Z0-9]", "", (code or "").upper())


def pattern_matches(raw: str, code: str) -> bool:
    """Section 2: 'G20' matches codes starting with G20; 'F20-F29' codes whose first
    characters fall between the bounds, inclusive. ``raw`` without its '!'."""
    low, dash, high = raw.partition("-")
    low = normalise(low)
    if not dash:
        return code.startswith(low)
    high = normalise(high)
    return code[: len(low)] >= low and code[: len(high)] <= high


def codes_select(patterns: list[str], raw_code: str | None) -> bool:
    """A code is selected by an including pattern and by no '!' pattern of its system."""
    code = normalise(raw_code)
    if not code:
        return False
    includes = [p for p in patterns if not p.startswith("!")]
    excludes = [p[1:] for p in patterns if p.startswith("!")]
    return any(pattern_matches(p, code) for p in includes) and not any(
        pattern_matches(p, code) for p in excludes
    )


def record_codes(plan: RecordPlan) -> list[tuple[str, str | None, bool | None]]:
    """(code system as a spec key, raw code, is_main; None for procedures) of a record."""
    if plan.source == "NPR":
        codes: list[tuple[str, str | None, bool | None]] = [
            ("icd10", code, main) for code, _, main in plan.diagnoses
        ]
        codes += [(system.lower(), code, None) for code, system, _ in plan.procedures]
        return codes
    return [(KPR_SYSTEMS[system], code, main) for code, system, main in plan.diagnoses]


def received_in(plan: RecordPlan, start: date, end: date) -> bool:
    """Section 3: records received in [from, to), dates at UTC midnight."""
    return datetime.combine(start, MIDNIGHT) <= plan.received < datetime.combine(end, MIDNIGHT)


def qualifies(plan: RecordPlan, spec: dict, start: date, end: date) -> bool:
    """Sections 2 and 4: the spec's sources, the period, min_age by the record's year,
    sectors on NPR, and any code selected (only main diagnoses where the spec says so)."""
    selection = spec["selection"]
    if plan.source not in spec["sources"] or not received_in(plan, start, end):
        return False
    min_age = selection.get("min_age")  # an unknown birth year never qualifies (as test_population)
    if min_age is not None and (
        plan.birth_year is None or plan.day.year - plan.birth_year < min_age
    ):
        return False
    sectors = selection.get("sectors")
    if plan.source == "NPR" and sectors and plan.sector not in sectors:
        return False
    main_only = selection.get("diagnosis_position", "any") == "main"
    return any(
        codes_select(selection.get(system, []), code)
        for system, code, main in record_codes(plan)
        if not (main_only and main is False)
    )


def active(reservation: Reservation, at: datetime) -> bool:
    """Section 1: registered_at <= T and (withdrawn_at is null or withdrawn_at > T)."""
    return reservation.registered <= at and (
        reservation.withdrawn is None or reservation.withdrawn > at
    )


def honours_opt_out(spec: dict) -> bool:
    """Section 2: reservations.registry_opt_out, true unless the spec says otherwise."""
    return spec.get("reservations", {}).get("registry_opt_out", True)


def pseudonymises(spec: dict) -> bool:
    """Section 2: reservations.no_fnr, exclude unless the spec says pseudonymise."""
    return spec.get("reservations", {}).get("no_fnr", "exclude") == "pseudonymise"


def reservation_effect(world: World, spec: dict, source: str, fnr: str, at: datetime) -> str | None:
    """Section 1's table for one row of ``source``: opt_out / no_purpose2 / no_fnr (the row
    is left out), 'pseudonym' (kept without fnr) or None (no effect)."""
    rows = [r for r in world.reservations if r.fnr == fnr and active(r, at)]
    if honours_opt_out(spec) and any(
        r.registry == spec["code"] and r.scope == "OPT_OUT" for r in rows
    ):
        return "opt_out"
    if source == "KPR" and any(r.registry == "KPR" and r.scope == "NO_PURPOSE2" for r in rows):
        return "no_purpose2"
    if any(r.registry == source and r.scope == "NO_FNR" for r in rows):
        return "pseudonym" if pseudonymises(spec) else "no_fnr"
    return None


def expected_records(
    world: World, spec: dict, start: date, end: date, at: datetime
) -> dict[tuple[str, int], dict[str, Any]]:
    """Population and complement (section 4): every qualifying record of a valid number not
    kept out by a reservation, with its fnr (None where pseudonymised) and complement status."""
    listed = world.listed_persons(spec["code"])
    expected = {}
    for key, record in world.records.items():
        if not qualifies(record.plan, spec, start, end) or record.fnr not in world.valid:
            continue
        effect = reservation_effect(world, spec, record.plan.source, record.fnr, at)
        if effect in LEFT_OUT:
            continue
        row: dict[str, Any] = {
            "fnr": None if effect == "pseudonym" else record.fnr,
            "pseudonymised": effect == "pseudonym",
        }
        if spec["delivery"] == "complement":
            row["status"] = "registered" if record.fnr in listed else "missing"
        expected[key] = row
    return expected


def expected_withdrawals(world: World, spec: dict, at: datetime) -> dict[str, set[datetime]]:
    """Section 4: listed persons with an active OPT_OUT for the register, each with the
    registration instants of those OPT_OUT rows. (Population registers send no list.)"""
    if spec["delivery"] == "population":
        return {}
    listed = world.listed_persons(spec["code"])
    found: dict[str, set[datetime]] = {}
    for r in world.reservations:
        if (
            r.fnr in listed
            and r.registry == spec["code"]
            and r.scope == "OPT_OUT"
            and active(r, at)
        ):
            found.setdefault(r.fnr, set()).add(r.registered)
    return found


# --- strategies -----------------------------------------------------------------------------
# The first element of each sampled_from is what hypothesis tries first and shrinks to, so it
# is a harmless choice; repetition weights the rest. Records take codes from the fixed
# alphabets and from the spec's own pattern bounds (dirtied, with a digit appended), so most
# examples deliver rows and reservations have someone to keep out.


def received_instants(start: date, end: date) -> st.SearchStrategy[datetime]:
    """Mostly inside [start, end); also both bounds, a microsecond either side, fractions,
    and anywhere from a day before to a day after."""
    low, high = datetime.combine(start, MIDNIGHT), datetime.combine(end, MIDNIGHT)
    edges = st.sampled_from(
        (
            low,
            high,
            low - US,
            low + US,
            high - US,
            low + timedelta(milliseconds=500),
            high - timedelta(milliseconds=250),
        )
    )
    span = int((high - low).total_seconds()) * 1_000_000
    day = 86_400 * 1_000_000

    def at(us: int) -> datetime:
        return low + timedelta(microseconds=us)

    inside = st.integers(0, span - 1).map(at)
    around = st.integers(-day, span + day).map(at)
    return st.one_of(edges, inside, inside, inside, around)


def code_hints(spec: dict | None) -> dict[str, tuple[str, ...]]:
    """Codes at the edges of the spec's patterns (removals and follow-ups included), by
    code system: each bound, the bound with a digit appended, and dirty spellings of both."""
    if spec is None:
        return {}
    patterns = {s: list(spec["selection"].get(s, [])) for s in PATTERNS}
    patterns["ncsp"] += spec.get("follow_up", {}).get("ncsp", [])
    hints: dict[str, tuple[str, ...]] = {}
    for system, raws in patterns.items():
        codes = set()
        for raw in raws:
            for bound in raw.lstrip("!").split("-"):
                bound = bound.strip()
                for code in (bound, bound + "1", bound + "9"):
                    codes |= {code, code.lower() + " ", f"{code[:3]}.{code[3:]}"}
        if codes:
            hints[system] = tuple(sorted(c for c in codes if len(c) <= 8))
    return hints


def codes_of(alphabet: tuple, hints: dict[str, tuple[str, ...]], system: str) -> st.SearchStrategy:
    if system not in hints:
        return st.sampled_from(alphabet)
    near_patterns = st.sampled_from(hints[system])
    return st.one_of(st.sampled_from(alphabet), near_patterns, near_patterns)


@st.composite
def records(
    draw: st.DrawFn,
    start: date,
    end: date,
    births: list[date],
    hints: dict[str, tuple[str, ...]],
) -> RecordPlan:
    source = draw(st.sampled_from(("NPR", "KPR")))
    person = draw(st.integers(0, len(births) - 1))
    received = draw(received_instants(start, end))
    short = draw(st.booleans())
    year = births[person].year
    if source == "NPR":
        icd10 = st.tuples(codes_of(ICD10_CODES, hints, "icd10"), st.just("ICD-10"), st.booleans())
        diagnoses = draw(st.lists(icd10, min_size=1, max_size=3))
        system = draw(st.sampled_from(PROCEDURE_SYSTEMS))
        procedure = st.tuples(
            codes_of(PROCEDURE_CODES, hints, system.lower()),
            st.just(system),
            st.sampled_from((None, *CODE_DAYS)),
        )
        wanted = "ncsp" in hints or "ncrp" in hints  # the spec selects procedure codes
        procedures = draw(st.lists(procedure, min_size=int(wanted), max_size=2))
    else:
        diagnosis = st.one_of(
            st.tuples(codes_of(ICPC2_CODES, hints, "icpc2"), st.just("ICPC-2"), st.booleans()),
            st.tuples(codes_of(ICD10_CODES[:-1], hints, "icd10"), st.just("ICD-10"), st.booleans()),
        )
        diagnoses, procedures = draw(st.lists(diagnosis, min_size=1, max_size=3)), []
    return RecordPlan(
        source=source,
        person=person,
        received=received,
        short_form=short,
        day=draw(st.sampled_from(CODE_DAYS[1:])),
        birth_year=draw(st.sampled_from((year, year, year, None))),
        sector=draw(st.sampled_from(("PHV", "SOM", *SECTORS, None))) if source == "NPR" else None,
        service_type=draw(st.sampled_from((1, 2, 5))),
        diagnoses=tuple(diagnoses),
        procedures=tuple(procedures),
    )


# (registry, scope): the first has no effect, then those of section 1's table, then more
# that have none (another register's OPT_OUT, KPR's OPT_OUT, NPR's NO_PURPOSE2, a new scope).
RESERVATION_KINDS = (
    (OTHER_REGISTER, "OPT_OUT"),
    (CODE, "OPT_OUT"),
    (CODE, "OPT_OUT"),
    (CODE, "OPT_OUT"),
    (CODE, "OPT_OUT"),
    ("KPR", "NO_PURPOSE2"),
    ("KPR", "NO_PURPOSE2"),
    ("NPR", "NO_FNR"),
    ("NPR", "NO_FNR"),
    ("KPR", "NO_FNR"),
    ("KPR", "NO_FNR"),
    ("KPR", "OPT_OUT"),
    ("NPR", "NO_PURPOSE2"),
    (CODE, "NO_FNR"),
    (CODE, "NO_RESEARCH"),
)


@st.composite
def reservations(
    draw: st.DrawFn,
    person: int,
    start: date,
    as_of: datetime,
    kinds: tuple[tuple[str, str], ...] = RESERVATION_KINDS,
) -> ReservationPlan:
    """A reservation of any registry and scope, registered and maybe withdrawn at instants
    around the run and the period: long before, before the period, after the period but
    before the run, a fraction either side of the run, after it, and most often exactly at
    the run instant or a microsecond either side (the edges of 'active at T')."""
    edges = (timedelta(0), timedelta(0), -US, US)
    registered = [
        as_of + offset
        for offset in (
            -timedelta(days=400),
            *edges,
            -timedelta(days=1),
            -timedelta(milliseconds=500),
            timedelta(milliseconds=250),
            timedelta(days=1),
        )
    ]
    registered.append(datetime.combine(start, MIDNIGHT) - timedelta(days=10))
    withdrawn = [
        as_of + offset
        for offset in (*edges, -timedelta(days=1), -timedelta(milliseconds=500), timedelta(days=1))
    ]
    registry, scope = draw(st.sampled_from(kinds))
    return ReservationPlan(
        person=person,
        registry=registry,
        scope=scope,
        registered=draw(st.sampled_from(registered)),
        withdrawn=draw(st.one_of(st.none(), st.none(), st.sampled_from(withdrawn))),
        short_form=draw(st.booleans()),
    )


@st.composite
def worlds(draw: st.DrawFn, spec: dict | None = None, max_records: int = 16) -> WorldPlan:
    """A world around a random period; codes lean on ``spec``'s patterns when given."""
    start = date(2024, 3, 1) + timedelta(days=draw(st.integers(0, 20)))
    end = start + timedelta(days=draw(st.integers(1, 5)))
    # The run: at the period's end, the morning after, or weeks later; with a fraction or not.
    after_end = (timedelta(0), timedelta(hours=6), timedelta(days=40))
    fraction = draw(st.sampled_from((timedelta(microseconds=250_000), timedelta(0))))
    as_of = datetime.combine(end, MIDNIGHT) + draw(st.sampled_from(after_end)) + fraction
    kinds = st.sampled_from(("valid",) * 8 + ("bad_check", "ten_digits"))
    persons = draw(
        st.lists(st.builds(PersonPlan, st.sampled_from(BIRTHS), kinds), min_size=2, max_size=4)
    )
    births = [p.born for p in persons]
    valid = [i for i, p in enumerate(persons) if p.kind == "valid"]
    listed = (
        draw(
            st.lists(
                st.builds(
                    ListPlan,
                    st.sampled_from(valid),
                    st.sampled_from((CODE, CODE, OTHER_REGISTER)),
                    st.sampled_from(INDEX_DATES),
                ),
                max_size=4,
            )
        )
        if valid
        else []
    )
    hints = code_hints(spec)
    # Each person has 0-2 reservations of their own, so most examples have some to apply.
    reserved = [
        reservation
        for person in range(len(persons))
        for reservation in draw(st.lists(reservations(person, start, as_of), max_size=2))
    ]
    drawn = draw(st.lists(records(start, end, births, hints), min_size=4, max_size=max_records))
    # And some aimed at the person of a record, of a kind that applies to its source.
    for record in draw(st.lists(st.sampled_from(drawn), max_size=2)):
        aimed = [(CODE, "OPT_OUT"), (record.source, "NO_FNR")]
        if record.source == "KPR":
            aimed.append(("KPR", "NO_PURPOSE2"))
        reserved.append(draw(reservations(record.person, start, as_of, tuple(aimed))))
    return WorldPlan(
        start=start,
        end=end,
        as_of=as_of,
        persons=tuple(persons),
        records=tuple(drawn),
        reservations=tuple(reserved),
        listed=tuple(listed),
    )


def _includes(patterns: list[str]) -> bool:
    return any(not p.startswith("!") for p in patterns)


def _usable(selection: dict, sources: list[str]) -> bool:
    """A spec must select some code of its sources (etl.spec refuses it otherwise)."""
    usable = {
        "NPR": any(_includes(selection.get(s, [])) for s in ("icd10", "ncsp", "ncrp")),
        "KPR": any(_includes(selection.get(s, [])) for s in ("icd10", "icpc2")),
    }
    return any(usable[s] for s in sources)


@st.composite
def specs(
    draw: st.DrawFn,
    delivery: str | None = None,
    variables: list[str] | None = None,
) -> dict:
    """A small register spec document (section 2) of a delivery type. One code system (most
    often ICD-10) has an including pattern; the others get 0-3 patterns of any kind."""
    delivery = delivery or draw(st.sampled_from(DELIVERIES))
    sources = draw(
        st.sampled_from((["NPR", "KPR"], ["NPR", "KPR"], ["NPR", "KPR"], ["NPR"], ["KPR"]))
    )
    if delivery == "new_information" and "NPR" not in sources:
        sources = ["NPR", "KPR"]  # section 4: follow-ups are NPR records (etl.spec refuses KPR)
    primary = draw(st.sampled_from(("icd10", "icd10", "icd10", "icpc2", "ncsp", "ncrp")))
    selection: dict[str, Any] = {}
    for system, pool in PATTERNS.items():
        chosen = draw(
            st.lists(
                st.sampled_from(pool), unique=True, min_size=int(system == primary), max_size=3
            )
        )
        if system == primary and not _includes(chosen):
            chosen.insert(0, draw(st.sampled_from([p for p in pool if not p.startswith("!")])))
        if chosen:
            selection[system] = chosen
    if not _usable(selection, sources):
        selection["icd10"] = ["F20-F29", *selection.get("icd10", [])]
    selection["diagnosis_position"] = draw(st.sampled_from(("any", "any", "any", "main")))
    min_age = draw(st.sampled_from((None, None, None, 0, 18)))
    if min_age is not None:
        selection["min_age"] = min_age
    sectors = draw(
        st.one_of(
            st.just([]),
            st.just([]),
            st.just([]),
            st.lists(st.sampled_from(SECTORS), unique=True, min_size=1, max_size=2),
        )
    )
    if sectors:
        selection["sectors"] = sectors
    document: dict[str, Any] = {
        "code": CODE,
        "name": "Property test register",
        "delivery": delivery,
        "legal_basis": "NPR-forskriften § 4-2",
        "priority": 3,
        "sources": sources,
        "selection": selection,
        "variables": variables or P1_VARIABLES,
        "reservations": {
            "registry_opt_out": draw(st.sampled_from((True, True, True, False))),
            "no_fnr": draw(st.sampled_from(("exclude", "pseudonymise"))),
        },
    }
    if delivery == "new_information":
        follow_up = draw(st.lists(st.sampled_from(FOLLOW_UP_PATTERNS), unique=True, max_size=3))
        document["follow_up"] = {
            "ncsp": ["NFQ", *follow_up] if not _includes(follow_up) else follow_up,
            "window_days": draw(st.sampled_from((1, 30, 365))),
            "new_case_match_days": draw(st.sampled_from((0, 3))),
        }
    return document


@st.composite
def cases(
    draw: st.DrawFn,
    deliveries: tuple[str, ...] = DELIVERIES,
    *,
    any_variables: bool = False,
    max_records: int = 16,
) -> tuple[dict, WorldPlan]:
    """A spec of one of ``deliveries`` and a world whose codes lean on its patterns;
    ``any_variables``: the spec asks for any non-empty part of the catalogue, in any order."""
    variables = (
        draw(st.lists(st.sampled_from(VARIABLE_CATALOGUE), unique=True, min_size=1))
        if any_variables
        else None
    )
    spec = draw(specs(draw(st.sampled_from(deliveries)), variables), label="spec")
    return spec, draw(worlds(spec, max_records), label="world")


# --- running deliveries and reading drops ---------------------------------------------------


@contextlib.contextmanager
def sqlite_world(plan: WorldPlan, *, reverse: bool = False) -> Iterator[tuple[Source, World, Path]]:
    """A fresh SQLite source in a fresh temporary folder (hypothesis examples cannot use
    function-scoped fixtures), filled with ``plan``."""
    with tempfile.TemporaryDirectory(prefix="leveranse-prop-", dir=TMP_ROOT) as folder:
        source = Source(f"sqlite:///{Path(folder) / 'source.db'}")
        try:
            yield source, build_world(source, plan, reverse=reverse), Path(folder)
        finally:
            source.engine.dispose()


@contextlib.contextmanager
def postgres_world(plan: WorldPlan) -> Iterator[tuple[Source, World, Path]]:
    """A fresh PostgreSQL schema of its own (as tests/conftest.py makes them), filled."""
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": PG_DATABASE}
        ).scalar()
        if not exists:
            with contextlib.suppress(Exception):  # another worker may create it first
                conn.execute(text(f'CREATE DATABASE "{PG_DATABASE}"'))
    admin.dispose()
    schema = f"p_{uuid.uuid4().hex[:12]}"
    base = f"{PG_SERVER}/{PG_DATABASE}"
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        with tempfile.TemporaryDirectory(prefix="leveranse-prop-", dir=TMP_ROOT) as folder:
            source = Source(f"{base}?options=-csearch_path%3D{schema}")
            try:
                yield source, build_world(source, plan), Path(folder)
            finally:
                source.engine.dispose()
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def run_spec(
    source: Source, folder: Path, spec: dict, plan: WorldPlan, name: str = "run"
) -> DeliveryResult:
    """Deliver ``spec`` for the plan's period and run instant, with its own specs folder,
    drop folder and state database under ``folder / name``."""
    home = folder / name
    specs_dir = write_spec(home / "specs", **spec)
    return run_delivery(
        settings_for(source.url, home, specs_dir), CODE, plan.start, plan.end, plan.as_of
    )


def label(start: date, end: date) -> str:
    return f"{start.isoformat()}_{end.isoformat()}"


def data_file(folder: Path, delivery: str, start: date, end: date) -> Path:
    """Section 4: <CODE>_<delivery>_<from>_<to>.parquet."""
    return folder / f"{CODE}_{delivery}_{label(start, end)}.parquet"


def withdrawals_file(folder: Path, start: date, end: date) -> Path:
    return folder / f"{CODE}_withdrawals_{label(start, end)}.parquet"


def read_rows(folder: Path, delivery: str, start: date, end: date) -> list[dict[str, Any]]:
    return pq.read_table(data_file(folder, delivery, start, end)).to_pylist()


def read_withdrawals(folder: Path, start: date, end: date) -> list[dict[str, Any]]:
    """The withdrawals of a published folder; none when the file is absent (section 4)."""
    assert folder.is_dir(), f"{folder} is not there"
    path = withdrawals_file(folder, start, end)
    return pq.read_table(path).to_pylist() if path.exists() else []


def manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def sha256(path: Path) -> str:
    with path.open("rb") as data:
        return hashlib.file_digest(data, "sha256").hexdigest()


def versions(drop_dir: Path, delivery: str, start: date, end: date) -> list[tuple[int, Path]]:
    """Section 4: the published folders of a period, <from>_<to>/ then .v2/, .v3/ ..."""
    root = drop_dir / CODE / delivery
    if not root.is_dir():
        return []
    name = re.compile(rf"{re.escape(label(start, end))}(?:\.v(\d+))?")
    found = [
        (int(match.group(1) or 1), entry)
        for entry in root.iterdir()
        if (match := name.fullmatch(entry.name))
    ]
    return sorted(found)


def as_key(row: dict[str, Any]) -> tuple[str, int]:
    return row["source"], row["record_id"]


def frozen(row: dict[str, Any]) -> tuple:
    """A row as a hashable, comparable value (lists become tuples)."""
    return tuple(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(row.items(), key=str)
    )


def assert_no_reserved_row(
    rows: list[dict[str, Any]], world: World, spec: dict, at: datetime
) -> None:
    """Every row is a record of a valid number that no active reservation keeps out, and
    carries its own fnr, or no fnr and a pseudonym where NO_FNR meets pseudonymise."""
    pseudonyms: dict[str, str] = {}
    for row in rows:
        record = world.records[as_key(row)]
        assert record.fnr in world.valid, f"{as_key(row)}: delivered with an invalid number"
        effect = reservation_effect(world, spec, record.plan.source, record.fnr, at)
        assert effect not in LEFT_OUT, f"{as_key(row)}: delivered despite {effect}"
        observe(f"delivered row: reservation effect {effect}")
        if effect == "pseudonym":
            assert row["fnr"] is None, f"{as_key(row)}: NO_FNR row carries fnr"
            assert PSEUDONYM.fullmatch(row["pseudonym"] or ""), f"{as_key(row)}: no pseudonym"
            assert pseudonyms.setdefault(record.fnr, row["pseudonym"]) == row["pseudonym"]
        else:
            assert row["fnr"] == record.fnr, f"{as_key(row)}: fnr is not the record's"
            assert row.get("pseudonym") is None, f"{as_key(row)}: pseudonym on an fnr row"
    assert len(set(pseudonyms.values())) == len(pseudonyms), "two persons share a pseudonym"


def assert_withdrawals(found: list[dict[str, Any]], world: World, spec: dict, at: datetime) -> None:
    """Withdrawals name exactly the listed persons with an active OPT_OUT, each with the
    registration of one of those OPT_OUT rows. Not checked where the spec says
    registry_opt_out: false: the contract does not say (the product then sends none)."""
    if not honours_opt_out(spec):
        return
    expected = expected_withdrawals(world, spec, at)
    assert sorted(row["fnr"] for row in found) == sorted(expected)
    for row in found:
        assert row["registered_at"] in expected[row["fnr"]]


def contract_columns(spec: dict) -> list[str]:
    """Section 4: source, record_id, fnr, pseudonym (only where the spec pseudonymises),
    then the spec's variables in its order (one listed already is not repeated), then
    status (complement) or event and case_id (new_information)."""
    lead = ["source", "record_id", "fnr"]
    if pseudonymises(spec):
        lead.append("pseudonym")
    variables = [v for v in spec["variables"] if v not in lead]
    return lead + variables + TYPE_COLUMNS[spec["delivery"]]


def assert_drop_shape(folder: Path, spec: dict, start: date, end: date) -> None:
    """Section 4: the folder holds exactly the data file, the withdrawals file (only when it
    has rows), and manifest.json; the data file has exactly the contract's columns in its
    order, which the manifest lists; withdrawals have the columns fnr, registered_at."""
    data = data_file(folder, spec["delivery"], start, end)
    withdrawn = withdrawals_file(folder, start, end)
    files = {data.name, "manifest.json"} | ({withdrawn.name} if withdrawn.exists() else set())
    assert {p.name for p in folder.iterdir()} == files
    columns = pq.read_schema(data).names
    assert columns == contract_columns(spec)
    assert manifest(folder)["columns"] == columns
    if withdrawn.exists():
        assert spec["delivery"] != "population"
        assert pq.read_schema(withdrawn).names == ["fnr", "registered_at"]
        assert pq.read_metadata(withdrawn).num_rows > 0


# --- property 1: no excluded person is ever delivered ---------------------------------------


def check_reservation_invariant(
    source: Source, world: World, folder: Path, plan: WorldPlan, spec: dict
) -> tuple[DeliveryResult, list[dict[str, Any]]]:
    """Deliver and check property 1 and the drop's shape; returns the result and rows."""
    result = run_spec(source, folder, spec, plan)
    tell(f"status {result.status}, rows {result.row_count}, excluded {result.excluded}")
    assert result.status == "published"
    assert datetime.fromisoformat(manifest(result.path)["reservations_as_of"]) == plan.as_of
    assert_drop_shape(result.path, spec, plan.start, plan.end)
    rows = read_rows(result.path, spec["delivery"], plan.start, plan.end)
    assert len(rows) == result.row_count
    observe(f"rows delivered: {min(len(rows), 4)}{'+' if len(rows) >= 4 else ''}")
    for reason, n in result.excluded.items():
        if n:
            observe(f"excluded: {reason}")
    assert_no_reserved_row(rows, world, spec, plan.as_of)
    if spec["delivery"] != "population":
        assert_withdrawals(
            read_withdrawals(result.path, plan.start, plan.end), world, spec, plan.as_of
        )
    return result, rows


@pytest.mark.parametrize("delivery", DELIVERIES)
@pytest.mark.slow
@settings(max_examples=8, **DELIVERING)
@given(data=st.data())
def test_no_delivered_row_belongs_to_a_person_an_active_reservation_excludes(delivery, data):
    """CONTRACT.md section 1 (the reservation table, 'active at T', T = reservations_as_of)
    and section 4 ('rows of persons excluded by active reservations are left out', invalid
    numbers left out, withdrawals): for any data, reservations and period, every delivered
    row of every delivery type belongs to a valid number that no reservation active at the
    run instant keeps out of this register; NO_FNR rows of a pseudonymising spec carry no
    fnr but a pseudonym; withdrawals are exactly the listed persons with an active OPT_OUT."""
    spec, plan = data.draw(cases((delivery,)))
    with sqlite_world(plan) as (source, world, folder):
        check_reservation_invariant(source, world, folder, plan, spec)


@pytest.mark.postgres
@pytest.mark.slow
@settings(max_examples=5, **DELIVERING)
@given(case=cases())
def test_no_delivered_row_belongs_to_an_excluded_person_on_postgresql(case):
    """Property 1 on PostgreSQL (section 1: the same code and SQL on both dialects)."""
    spec, plan = case
    with postgres_world(plan) as (source, world, folder):
        check_reservation_invariant(source, world, folder, plan, spec)


# Each rule of section 1's table at its edges, one person each, with the outcome written out
# by hand (not by the oracle): "fnr" delivered, "out" left out, "no_fnr" left out or, where
# the spec pseudonymises, delivered without fnr. Every person has one NPR episode and one KPR
# contact that qualify; the register lists the persons marked listed.
EDGE_RUN = datetime(2024, 3, 5, 6, 0, 0, 250_000)  # T, with a fraction
WHOLE_SECOND_RUN = datetime(2024, 3, 5, 6, 0, 0)  # T as --reservations-as-of 2024-03-05T06:00:00
AT_T = timedelta(0)
LONG_AGO = -timedelta(days=400)
Held = tuple[str, str, timedelta, timedelta | None, bool]


@dataclass(frozen=True)
class Edge:
    label: str
    reservations: tuple[Held, ...]  # instants relative to T
    listed: bool  # on the register's list
    npr: str  # what becomes of the person's NPR episode: fnr | out | no_fnr
    kpr: str  # ... and of the KPR contact


def held(
    registry: str,
    scope: str,
    registered: timedelta,
    withdrawn: timedelta | None = None,
    short: bool = False,
) -> Held:
    """A reservation row, its instants relative to T; ``short``: stored in SQLite's short
    timestamp form (else with six fraction digits)."""
    return registry, scope, registered, withdrawn, short


EDGES = (
    Edge("no reservation", (), True, "fnr", "fnr"),
    Edge(
        "OPT_OUT registered at T (short form)",
        (held(CODE, "OPT_OUT", AT_T, short=True),),
        True,
        "out",
        "out",
    ),
    Edge("OPT_OUT registered at T", (held(CODE, "OPT_OUT", AT_T),), True, "out", "out"),
    Edge(
        "OPT_OUT registered 1 us after T",
        (held(CODE, "OPT_OUT", US),),
        True,
        "fnr",
        "fnr",
    ),
    Edge(
        "OPT_OUT withdrawn at T (short form)",
        (held(CODE, "OPT_OUT", LONG_AGO, AT_T, short=True),),
        True,
        "fnr",
        "fnr",
    ),
    Edge(
        "OPT_OUT withdrawn at T",
        (held(CODE, "OPT_OUT", LONG_AGO, AT_T),),
        True,
        "fnr",
        "fnr",
    ),
    Edge(
        "OPT_OUT withdrawn 1 us after T",
        (held(CODE, "OPT_OUT", LONG_AGO, US),),
        True,
        "out",
        "out",
    ),
    Edge(
        "OPT_OUT after the period, before T",
        (held(CODE, "OPT_OUT", -timedelta(hours=6), short=True),),
        False,
        "out",
        "out",
    ),
    Edge(
        "a withdrawn and an active OPT_OUT",
        (
            held(CODE, "OPT_OUT", LONG_AGO, LONG_AGO + timedelta(days=1)),
            held(CODE, "OPT_OUT", -timedelta(seconds=1), short=True),
        ),
        True,
        "out",
        "out",
    ),
    Edge(
        "KPR NO_PURPOSE2 1 us before T",
        (held("KPR", "NO_PURPOSE2", -US),),
        True,
        "fnr",
        "out",
    ),
    Edge("NPR NO_FNR", (held("NPR", "NO_FNR", LONG_AGO, short=True),), False, "no_fnr", "fnr"),
    Edge("KPR NO_FNR", (held("KPR", "NO_FNR", LONG_AGO),), False, "fnr", "no_fnr"),
    Edge(
        "OPT_OUT and NPR NO_FNR",
        (held(CODE, "OPT_OUT", LONG_AGO), held("NPR", "NO_FNR", LONG_AGO)),
        False,
        "out",
        "out",
    ),
    Edge(
        "KPR NO_PURPOSE2 and KPR NO_FNR",
        (held("KPR", "NO_PURPOSE2", LONG_AGO), held("KPR", "NO_FNR", LONG_AGO)),
        False,
        "fnr",
        "out",
    ),
    Edge(
        "reservations without effect",
        (
            held(OTHER_REGISTER, "OPT_OUT", LONG_AGO),
            held("KPR", "OPT_OUT", LONG_AGO),
            held("NPR", "NO_PURPOSE2", LONG_AGO),
            held(CODE, "NO_FNR", LONG_AGO),
            held(CODE, "NO_RESEARCH", LONG_AGO),
        ),
        True,
        "fnr",
        "fnr",
    ),
)
# Where the spec says registry_opt_out: false, the register's own OPT_OUT has no effect.
NOT_HONOURED = {
    "OPT_OUT registered at T (short form)": ("fnr", "fnr"),
    "OPT_OUT registered at T": ("fnr", "fnr"),
    "OPT_OUT withdrawn 1 us after T": ("fnr", "fnr"),
    "OPT_OUT after the period, before T": ("fnr", "fnr"),
    "a withdrawn and an active OPT_OUT": ("fnr", "fnr"),
    "OPT_OUT and NPR NO_FNR": ("no_fnr", "fnr"),
}
# Listed persons with an active OPT_OUT, and the registration their withdrawal carries.
EDGE_WITHDRAWALS = {
    "OPT_OUT registered at T (short form)": AT_T,
    "OPT_OUT registered at T": AT_T,
    "OPT_OUT withdrawn 1 us after T": LONG_AGO,
    "a withdrawn and an active OPT_OUT": -timedelta(seconds=1),
}


def edge_plan(run: datetime) -> WorldPlan:
    """EDGES as a world run at T = ``run``: the period is the day before; one more person has
    an invalid number (their two records are left out whatever the reservations)."""
    start, end = run.date() - timedelta(days=1), run.date()
    persons = [PersonPlan(date(1980, 5, 17), "valid") for _ in EDGES]
    persons.append(PersonPlan(date(1980, 5, 17), "bad_check"))
    received = {
        "NPR": datetime.combine(start, time(12, 0, 0, 500_000)),
        "KPR": datetime.combine(end, MIDNIGHT) - US,
    }
    diagnosis = {"NPR": ("f20.0 ", "ICD-10", True), "KPR": ("P72", "ICPC-2", True)}
    records = [
        RecordPlan(source, i, received[source], True, start, 1980, "PHV", 1, (diagnosis[source],))
        for i in range(len(persons))
        for source in ("NPR", "KPR")
    ]
    reservations_ = [
        ReservationPlan(i, registry, scope, run + at, None if off is None else run + off, short)
        for i, edge in enumerate(EDGES)
        for registry, scope, at, off, short in edge.reservations
    ]
    listed = [ListPlan(i, CODE, None) for i, edge in enumerate(EDGES) if edge.listed]
    return WorldPlan(
        start, end, run, tuple(persons), tuple(records), tuple(reservations_), tuple(listed)
    )


def edge_spec(delivery: str, no_fnr: str, honour: bool = True) -> dict:
    spec: dict[str, Any] = {
        "code": CODE,
        "name": "Property test register",
        "delivery": delivery,
        "legal_basis": "NPR-forskriften § 4-2",
        "sources": ["NPR", "KPR"],
        "selection": {"icd10": ["F20-F29"], "icpc2": ["P72"]},
        "variables": P1_VARIABLES,
        "reservations": {"registry_opt_out": honour, "no_fnr": no_fnr},
    }
    if delivery == "new_information":
        spec["follow_up"] = {"ncsp": ["NFQ"], "window_days": 365, "new_case_match_days": 3}
    return spec


@pytest.mark.parametrize(
    ("delivery", "no_fnr", "honour"),
    [(d, n, True) for d in DELIVERIES for n in ("exclude", "pseudonymise")]
    + [("population", "exclude", False), ("complement", "pseudonymise", False)],
)
def test_each_rule_of_the_reservation_table_at_its_edges(delivery, no_fnr, honour):
    """CONTRACT.md section 1 row by row, at T = reservations_as_of: registered_at = T is
    active, 1 us later is not; withdrawn_at = T is not active, 1 us later still is; a
    reservation after the period but before T applies; any active row applies; OPT_OUT
    removes the person, KPR NO_PURPOSE2 the KPR rows only, NO_FNR the fnr of that source's
    rows only (left out, or delivered without fnr where the spec pseudonymises), and other
    registries and scopes have no effect, nor has the register's own OPT_OUT where the spec
    says registry_opt_out: false; invalid numbers are left out. Section 4: withdrawals are
    exactly the listed persons with an active OPT_OUT. Each equality at T in both SQLite
    timestamp forms. These are the cases property 1's random worlds hit least often; the
    oracle must agree with them as well."""
    check_edges(delivery, no_fnr, honour, EDGE_RUN)


@pytest.mark.parametrize("delivery", ["population", "complement"])
def test_reservation_edges_at_a_whole_second_run_instant(delivery):
    """The same table at T = a whole second, as `--reservations-as-of 2024-03-05T06:00:00`
    gives: section 1 says both timestamp forms must compare correctly, and 'registered_at
    <= T' holds for '2024-03-05 06:00:00.000000' as much as for '2024-03-05 06:00:00'."""
    check_edges(delivery, "exclude", True, WHOLE_SECOND_RUN)


def check_edges(delivery: str, no_fnr: str, honour: bool, run: datetime) -> None:
    """Deliver the EDGES world at T = ``run`` and compare with the table, row by row."""
    spec, plan = edge_spec(delivery, no_fnr, honour), edge_plan(run)
    with sqlite_world(plan) as (source, world, folder):
        result, rows = check_reservation_invariant(source, world, folder, plan, spec)
        withdrawn = read_withdrawals(result.path, plan.start, plan.end)
    label = {world.numbers[i]: edge.label for i, edge in enumerate(EDGES)}
    got = {
        (label[world.records[as_key(row)].fnr], row["source"]): "fnr" if row["fnr"] else "no_fnr"
        for row in rows
    }
    outcomes = {edge.label: (edge.npr, edge.kpr) for edge in EDGES}
    if not honour:
        outcomes |= NOT_HONOURED
    expected = {
        (name, source): outcome
        for name, (npr, kpr) in outcomes.items()
        for source, outcome in (("NPR", npr), ("KPR", kpr))
        if outcome == "fnr" or (outcome == "no_fnr" and no_fnr == "pseudonymise")
    }
    assert got == expected
    assert result.excluded["invalid_fnr"] == 2
    if delivery != "population" and honour:
        assert {label[w["fnr"]]: w["registered_at"] - run for w in withdrawn} == EDGE_WITHDRAWALS
    if delivery != "new_information":
        oracle = expected_records(world, spec, plan.start, plan.end, plan.as_of)
        assert {(label[world.records[key].fnr], key[0]) for key in oracle} == set(expected)


# --- property 2: the columns are the contract's, in its order -------------------------------


@pytest.mark.slow
@settings(max_examples=8, **DELIVERING)
@given(case=cases(any_variables=True, max_records=8))
def test_columns_are_the_allowed_set_in_the_contracts_order(case):
    """CONTRACT.md section 4: for any variable list of the catalogue, in any order, the
    columns are source, record_id, fnr, pseudonym (only where the spec pseudonymises), the
    spec's variables in its order (fnr not repeated), then status or event and case_id; no
    other column, no other file in the folder (assert_drop_shape). source is text,
    record_id int64, fnr text. Section 2: KPR rows carry contact_date as start_date and
    end_date, and null NPR-only variables (procedures too: KPR has none)."""
    spec, plan = case
    variables = spec["variables"]
    allowed = {"source", "record_id", "fnr", *variables, *TYPE_COLUMNS[spec["delivery"]]}
    if pseudonymises(spec):
        allowed.add("pseudonym")
    with sqlite_world(plan) as (source, world, folder):
        result = run_spec(source, folder, spec, plan)
        assert_drop_shape(result.path, spec, plan.start, plan.end)
        table = pq.read_table(data_file(result.path, spec["delivery"], plan.start, plan.end))
    assert set(table.column_names) <= allowed
    assert [str(table.schema.field(c).type) for c in ("source", "record_id", "fnr")] == [
        "string",
        "int64",
        "string",
    ]
    kpr_rows = [row for row in table.to_pylist() if row["source"] == "KPR"]
    observe(f"KPR rows: {min(len(kpr_rows), 2)}")
    for row in kpr_rows:
        contact_date = world.records[as_key(row)].plan.day
        for name in (set(NPR_ONLY_SCALARS) | {"procedures"}) & set(variables):
            assert row[name] is None, f"KPR row carries NPR-only {name}"
        for name in {"start_date", "end_date"} & set(variables):
            assert row[name] == contact_date


# --- property 3: a rerun is byte-for-byte identical -----------------------------------------


@pytest.mark.slow
@settings(max_examples=5, **DELIVERING)
@given(case=cases())
def test_rerun_with_the_same_inputs_is_byte_for_byte_identical(case):
    """CONTRACT.md section 4: a rerun of the same period whose data is unchanged writes
    nothing new. The rerun reports "unchanged", no folder appears, the published files
    still have the manifest's sha256; and the same world inserted in the opposite order into
    a fresh database and drop folder yields Parquet files with the very same sha256. Then
    an OPT_OUT arrives for a delivered person: the next rerun is <from>_<to>.v2/, its
    manifest supersedes the first folder, and the person is gone (unless the spec says
    registry_opt_out: false: then it is unchanged again)."""
    spec, plan = case
    with sqlite_world(plan) as (source, world, folder):
        first = run_spec(source, folder, spec, plan)
        assert_drop_shape(first.path, spec, plan.start, plan.end)
        observe(f"rows: {min(first.row_count, 3)}")
        drops = folder / "run" / "drops" / CODE / spec["delivery"]
        before = sorted(p.name for p in drops.iterdir())
        again = run_spec(source, folder, spec, plan)
        assert (first.status, again.status) == ("published", "unchanged")
        assert again.path == first.path
        assert sorted(p.name for p in drops.iterdir()) == before
        published = {f["name"]: f["sha256"] for f in manifest(first.path)["files"]}
        assert published == {p.name: sha256(p) for p in first.path.glob("*.parquet")}
        rows = read_rows(first.path, spec["delivery"], plan.start, plan.end)
        if rows:
            person = world.records[as_key(rows[0])].fnr
            late = Reservation(
                len(world.reservations) + 1, person, CODE, "OPT_OUT", plan.as_of - US, None
            )
            insert_reservations(source, [(late, False)], "sqlite")
            third = run_spec(source, folder, spec, plan)
            if honours_opt_out(spec):
                assert third.status == "published"
                assert third.path.name == f"{first.path.name}.v2"
                assert manifest(third.path)["version"] == 2
                assert manifest(third.path)["supersedes"] == first.path.name
                rows = read_rows(third.path, spec["delivery"], plan.start, plan.end)
                assert all(world.records[as_key(row)].fnr != person for row in rows)
            else:
                assert (third.status, third.path) == ("unchanged", first.path)
    with sqlite_world(plan, reverse=True) as (source, _, folder):
        other = run_spec(source, folder, spec, plan)
        assert other.status == "published"
        assert {p.name: sha256(p) for p in other.path.glob("*.parquet")} == published


# --- property 4: adding codes never removes rows --------------------------------------------


@st.composite
def added_codes(draw: st.DrawFn) -> dict[str, list[str]]:
    """Q: including patterns of any code system, at least one."""
    added = {
        system: draw(
            st.lists(st.sampled_from([p for p in pool if not p.startswith("!")]), max_size=2)
        )
        for system, pool in PATTERNS.items()
    }
    added = {system: codes for system, codes in added.items() if codes}
    if not added:
        added["icd10"] = [draw(st.sampled_from(("F30-F39", "G20", "Z")))]
    return added


@st.composite
def widened_cases(draw: st.DrawFn) -> tuple[dict, dict, dict, WorldPlan]:
    """A spec with patterns P, Q, the spec with P + Q, and a world near both's codes."""
    spec = draw(specs(draw(st.sampled_from(("population", "complement")))), label="spec P")
    added = draw(added_codes(), label="Q")
    wider = json.loads(json.dumps(spec))
    for system, codes in added.items():
        current = wider["selection"].setdefault(system, [])
        current.extend(c for c in codes if c not in current)
    return spec, added, wider, draw(worlds(wider), label="world")


@pytest.mark.slow
@settings(max_examples=8, **DELIVERING)
@given(case=widened_cases())
def test_adding_codes_to_a_selection_never_removes_rows(case):
    """CONTRACT.md section 2 ('a record qualifies when any listed code matches'): delivering
    with patterns P and with P + Q (Q only including patterns), every row of the first
    delivery is, value for value, a row of the second. Population and complement only: a
    new_information new_case row may rightly disappear when an added code dates the record
    near one of the register's cases."""
    spec, added, wider, plan = case
    with sqlite_world(plan) as (source, _, folder):
        narrow_rows = read_rows(
            run_spec(source, folder, spec, plan, "narrow").path,
            spec["delivery"],
            plan.start,
            plan.end,
        )
        wide_rows = read_rows(
            run_spec(source, folder, wider, plan, "wide").path,
            spec["delivery"],
            plan.start,
            plan.end,
        )
    observe(f"rows gained by Q: {min(len(wide_rows) - len(narrow_rows), 2)}")
    observe(f"rows with P alone: {min(len(narrow_rows), 3)}")
    missing = {frozen(r) for r in narrow_rows} - {frozen(r) for r in wide_rows}
    assert not missing, f"rows lost by adding {added}: {sorted(missing)}"


# --- property 5: the delivered records are exactly the oracle's -----------------------------


@pytest.mark.slow
@settings(max_examples=20, **DELIVERING)
@given(case=cases(("population", "complement"), max_records=20))
def test_population_and_complement_deliver_exactly_the_oracles_records(case):
    """CONTRACT.md sections 1, 2 and 4 together: codes normalised, prefix / range / '!'
    patterns per code system, diagnosis_position, min_age by the record's year, sectors on
    NPR only, the spec's sources, received in [from, to), invalid numbers out, reservations
    applied. The delivered (source, record_id) set, each row's fnr (or pseudonym) and
    complement status are the oracle's; every qualifying record is delivered or counted
    under one reason of the delivery's exclusions (opt_out, no_purpose2, no_fnr,
    invalid_fnr: section 4, 'left out and counted')."""
    spec, plan = case
    with sqlite_world(plan) as (source, world, folder):
        result = run_spec(source, folder, spec, plan)
        assert_drop_shape(result.path, spec, plan.start, plan.end)
        rows = read_rows(result.path, spec["delivery"], plan.start, plan.end)
    expected = expected_records(world, spec, plan.start, plan.end, plan.as_of)
    observe(f"rows expected: {min(len(expected), 4)}{'+' if len(expected) >= 4 else ''}")
    for reason, n in result.excluded.items():
        if n:
            observe(f"excluded: {reason}")
    delivered = {}
    for row in rows:
        got: dict[str, Any] = {"fnr": row["fnr"], "pseudonymised": row.get("pseudonym") is not None}
        if spec["delivery"] == "complement":
            got["status"] = row["status"]
        assert as_key(row) not in delivered, f"{as_key(row)} delivered twice"
        delivered[as_key(row)] = got
    assert delivered == expected
    qualifying = sum(qualifies(r.plan, spec, plan.start, plan.end) for r in world.records.values())
    assert result.row_count + sum(result.excluded.values()) == qualifying


# Each selection rule at its edges (sections 1, 2 and 4), one record each, with whether it
# qualifies written out by hand: under diagnosis_position any, and under main. Person A is on
# the register's list, person B only on another register's; records alternate A, B.
SELECTION_SPEC = {
    "icd10": ["F20-F29", "!F25", "g23"],
    "icpc2": ["P72"],
    "ncsp": ["PA-PH", "!PAC1"],
    "ncrp": ["PDZ12B"],
    "min_age": 18,
    "sectors": ["PHV", "SOM"],
}
SELECTION_DAY = date(2024, 3, 4)  # the period is this one day


@dataclass(frozen=True)
class Pick:
    label: str
    any: bool  # qualifies under diagnosis_position: any
    main: bool  # ... under main
    source: str = "NPR"
    diagnoses: tuple[tuple[str, str, bool], ...] = (("F20", "ICD-10", True),)
    procedures: tuple[tuple[str, str, date | None], ...] = ()
    birth_year: int | None = 1980
    sector: str | None = "PHV"
    received: timedelta = timedelta(hours=12)  # after the start of the period
    short: bool = False


def icd(code: str, main: bool = True) -> tuple[str, str, bool]:
    return code, "ICD-10", main


def icpc(code: str, main: bool = True) -> tuple[str, str, bool]:
    return code, "ICPC-2", main


PICKS = (
    Pick("F20", True, True),
    Pick("f20.0 , dirty", True, True, diagnoses=(icd("f20.0 "),)),
    Pick("F29, the upper bound", True, True, diagnoses=(icd("F29"),)),
    Pick("F299, longer than the upper bound", True, True, diagnoses=(icd("F299"),)),
    Pick("F30", False, False, diagnoses=(icd("F30"),)),
    Pick("F2, shorter than the bounds", False, False, diagnoses=(icd("F2"),)),
    Pick("F25, removed", False, False, diagnoses=(icd("F25"),)),
    Pick("f25.1, removed", False, False, diagnoses=(icd("f25.1"),)),
    Pick("g23.1, by a dirty pattern", True, True, diagnoses=(icd("g23.1"),)),
    Pick("F20 secondary", True, False, diagnoses=(icd("Z000"), icd("F20", main=False))),
    Pick("F20 second but main", True, True, diagnoses=(icd("Z000", main=False), icd("F20"))),
    Pick("18 in the record's year", True, True, birth_year=2006),
    Pick("17 in the record's year", False, False, birth_year=2007),
    Pick("birth year unknown", False, False, birth_year=None),
    Pick("sector SOM", True, True, sector="SOM"),
    Pick("sector PHB", False, False, sector="PHB"),
    Pick("sector unknown", False, False, sector=None),
    Pick(
        "NCSP pbc10 in PA-PH",
        True,
        True,
        diagnoses=(icd("Z000"),),
        procedures=(("pbc10", "NCSP", None),),
    ),
    Pick(
        "NCSP PAC10, removed",
        False,
        False,
        diagnoses=(icd("Z000"),),
        procedures=(("PAC10", "NCSP", None),),
    ),
    Pick(
        "NCRP pdz12b", True, True, diagnoses=(icd("Z000"),), procedures=(("pdz12b", "NCRP", None),)
    ),
    Pick(
        "PDZ12B as NCMP",
        False,
        False,
        diagnoses=(icd("Z000"),),
        procedures=(("PDZ12B", "NCMP", None),),
    ),
    Pick("received at the start", True, True, received=timedelta(0)),
    Pick("received at the start, short form", True, True, received=timedelta(0), short=True),
    Pick("received 1 us before the start", False, False, received=-US),
    Pick("received 1 us before the end", True, True, received=timedelta(days=1) - US),
    Pick("received at the end", False, False, received=timedelta(days=1)),
    Pick("received at the end, short form", False, False, received=timedelta(days=1), short=True),
    Pick("KPR P72", True, True, source="KPR", diagnoses=(icpc("P72"),), sector=None),
    Pick("KPR p 72, dirty", True, True, source="KPR", diagnoses=(icpc("p 72"),), sector=None),
    Pick("KPR P73", False, False, source="KPR", diagnoses=(icpc("P73"),), sector=None),
    Pick("KPR F20 coded ICPC-2", False, False, source="KPR", diagnoses=(icpc("F20"),), sector=None),
    Pick(
        "KPR f20.1 coded ICD-10", True, True, source="KPR", diagnoses=(icd("f20.1"),), sector=None
    ),
    Pick(
        "KPR P72 secondary",
        True,
        False,
        source="KPR",
        diagnoses=(icpc("R74"), icpc("P72", main=False)),
        sector=None,
    ),
    Pick(
        "KPR, 17",
        False,
        False,
        source="KPR",
        diagnoses=(icpc("P72"),),
        birth_year=2007,
        sector=None,
    ),
)


def selection_plan() -> WorldPlan:
    start = datetime.combine(SELECTION_DAY, MIDNIGHT)
    records = tuple(
        RecordPlan(
            pick.source,
            i % 2,
            start + pick.received,
            pick.short,
            date(2024, 2, 27),
            pick.birth_year,
            pick.sector,
            1,
            pick.diagnoses,
            pick.procedures,
        )
        for i, pick in enumerate(PICKS)
    )
    return WorldPlan(
        start=SELECTION_DAY,
        end=SELECTION_DAY + timedelta(days=1),
        as_of=datetime(2024, 3, 5, 6, 0, 0, 250_000),
        persons=(PersonPlan(date(1980, 5, 17), "valid"), PersonPlan(date(1980, 5, 17), "valid")),
        records=records,
        reservations=(),
        listed=(ListPlan(0, CODE, None), ListPlan(1, OTHER_REGISTER, None)),
    )


@pytest.mark.parametrize("position", ["any", "main"])
@pytest.mark.parametrize("delivery", ["population", "complement"])
def test_each_selection_rule_at_its_edges(delivery, position):
    """CONTRACT.md sections 1, 2 and 4, one record per rule and edge: codes normalised
    (lower case, dots, spaces; in patterns too), a prefix, a range inclusive of codes longer
    than its bounds and exclusive of shorter ones, '!' removing matches, each code system
    matched against its own patterns (ICD-10 for NPR diagnoses and KPR ICD-10, ICPC-2,
    NCSP, NCRP; NCMP never), only main diagnoses under diagnosis_position main (procedures
    always), min_age by the record's year, sectors on NPR only, received in [from, to) in
    both timestamp forms; complement status from this register's list only. The oracle of
    property 5 must agree with the table too."""
    spec = {
        "code": CODE,
        "name": "Property test register",
        "delivery": delivery,
        "legal_basis": "NPR-forskriften § 4-2",
        "sources": ["NPR", "KPR"],
        "selection": SELECTION_SPEC | {"diagnosis_position": position},
        "variables": ["fnr", "diagnoses", "procedures"],
    }
    plan = selection_plan()
    with sqlite_world(plan) as (source, world, folder):
        result = run_spec(source, folder, spec, plan)
        assert_drop_shape(result.path, spec, plan.start, plan.end)
        rows = read_rows(result.path, delivery, plan.start, plan.end)
    keys = list(world.records)  # in PICKS order
    label = {key: pick.label for key, pick in zip(keys, PICKS, strict=True)}
    expected = {pick.label for pick in PICKS if getattr(pick, position)}
    assert sorted(label[as_key(row)] for row in rows) == sorted(expected)
    oracle = expected_records(world, spec, plan.start, plan.end, plan.as_of)
    assert {label[key] for key in oracle} == expected
    if delivery == "complement":
        for row in rows:
            on_list = world.records[as_key(row)].plan.person == 0
            assert row["status"] == ("registered" if on_list else "missing"), label[as_key(row)]


# --- timestamps without fractional seconds on a period bound (SQLite) ---------------------


@pytest.mark.parametrize("suffix", ["", ".0", ".000", ".000000"])
def test_received_at_without_fraction_on_a_period_bound_belongs_to_the_period_it_starts(
    tmp_path, suffix
):
    """CONTRACT.md section 1 ('both timestamp forms must compare correctly') and section 3
    ('[from, to)'): a record received at 2024-04-01 00:00:00 belongs to April, not March,
    however many zeros its fraction has. (Found by these properties; fixed in 46beadf.)"""
    source = Source(f"sqlite:///{tmp_path / 'source.db'}")
    source.synced(utc_now())
    person = source.person()
    march_first = source.episode(person)
    april_first = source.episode(person)
    for episode, day in ((march_first, "2024-03-01"), (april_first, "2024-04-01")):
        source.raw(
            "UPDATE npr_episode SET received_at = :at WHERE episode_id = :id",
            at=f"{day} 00:00:00{suffix}",
            id=episode,
        )
    spec = {
        "code": CODE,
        "name": "Property test register",
        "delivery": "population",
        "legal_basis": "NPR-forskriften § 4-2",
        "sources": ["NPR"],
        "selection": {"icd10": ["F20-F29"]},
        "variables": ["fnr"],
    }
    settings_ = settings_for(source.url, tmp_path, write_spec(tmp_path / "specs", **spec))
    try:
        march = run_delivery(settings_, CODE, date(2024, 3, 1), date(2024, 4, 1))
        april = run_delivery(settings_, CODE, date(2024, 4, 1), date(2024, 5, 1))
        assert [
            r["record_id"]
            for r in read_rows(march.path, "population", march.period.start, march.period.end)
        ] == [march_first]
        assert [
            r["record_id"]
            for r in read_rows(april.path, "population", april.period.start, april.period.end)
        ] == [april_first]
    finally:
        source.engine.dispose()


# --- property 6: a sequence of nights, reservations, withdrawals and lists ------------------

FIRST_NIGHT = date(2024, 3, 4)
NIGHTS = 10  # nights with records; later nights are empty
STEP = timedelta(hours=1)
# The nightly run at 02:00 sharp: reservations made at its instant are stored in both forms,
# and on SQLite '... 02:00:00.000000' against a whole second is the harder of the two.
RUN_TIME = time(2, 0)
MACHINE_BIRTHS = (date(1956, 3, 2), date(1980, 5, 17), date(1999, 2, 28), date(2004, 11, 30))
MACHINE_PERSONS = len(MACHINE_BIRTHS) + 1  # the last one has an invalid number
MACHINE_SPEC_SELECTION = {"icd10": ["F20-F29", "!F25"], "icpc2": ["P72"]}
# When a new reservation is registered, relative to the step's clock. The next run is at
# least STEP later: +STEP is exactly its instant (active), +STEP + 1 µs just after it.
REGISTERED_AFTER = (
    -timedelta(minutes=30),
    -US,
    timedelta(0),
    STEP,
    STEP + US,
    timedelta(days=3),
)
WITHDRAWN_AFTER = (-timedelta(minutes=30), timedelta(0), STEP, STEP + US)


@st.composite
def machine_records(draw: st.DrawFn) -> RecordPlan:
    night = draw(st.one_of(st.integers(0, 2), st.integers(0, NIGHTS)))  # early nights: denser
    at = datetime.combine(FIRST_NIGHT + timedelta(days=night), MIDNIGHT) + draw(
        st.sampled_from(
            (timedelta(0), US, timedelta(hours=12, milliseconds=500), timedelta(days=1) - US)
        )
    )
    person = draw(st.integers(0, MACHINE_PERSONS - 1))
    source = draw(st.sampled_from(("NPR", "KPR")))
    if source == "NPR":
        diagnoses = ((draw(st.sampled_from(("F20", "f25.1", "F30", "f20.9 "))), "ICD-10", True),)
    else:
        diagnoses = (
            (
                *draw(st.sampled_from((("P72", "ICPC-2"), ("F20", "ICD-10"), ("R74", "ICPC-2")))),
                True,
            ),
        )
    return RecordPlan(
        source=source,
        person=person,
        received=at,
        short_form=draw(st.booleans()),
        day=date(2024, 3, 1),
        birth_year=MACHINE_BIRTHS[person % len(MACHINE_BIRTHS)].year,
        sector="PHV" if source == "NPR" else None,
        service_type=1,
        diagnoses=diagnoses,
    )


class ReservationLifecycle(RuleBasedStateMachine):
    """CONTRACT.md sections 1 and 4 over time, for a complement register sending its list.

    Steps: a new reservation (any registry and scope, registered just before, at, or after
    the next run), a withdrawal, a new register list (etl.register_list.load_list with a CSV
    written here; one is loaded before the first night), a rerun of tonight's or an earlier
    night's period, and the next night's one-day period. After every run: the drop holds
    exactly the oracle's rows and withdrawals, an unchanged rerun is "unchanged" and writes
    nothing, a changed one is the next version and supersedes the previous. After every
    step: no published period's latest version holds a person excluded at its manifest's
    reservations_as_of, versions chain, and no staging folder is left behind.

    Reservations and withdrawals are always dated after every earlier run (the clock moves
    one STEP per step), so the model's table is also the history each earlier run saw.
    """

    def __init__(self) -> None:
        super().__init__()
        self._folder = tempfile.TemporaryDirectory(prefix="leveranse-machine-", dir=TMP_ROOT)
        self.home = Path(self._folder.name)
        self.source = Source(f"sqlite:///{self.home / 'source.db'}")
        self.world = World(valid=set())
        self.numbers: list[str] = []
        self.spec: dict[str, Any] = {}
        self.settings: Any = None
        self.clock = datetime.combine(FIRST_NIGHT + timedelta(days=1), RUN_TIME)
        self.night = (FIRST_NIGHT, FIRST_NIGHT + timedelta(days=1))
        self.delivered: dict[str, tuple[date, date]] = {}
        self.lists = 0

    def teardown(self) -> None:
        self.source.engine.dispose()
        self._folder.cleanup()

    @property
    def drop_dir(self) -> Path:
        return self.home / "drops"

    @initialize(
        plans=st.lists(machine_records(), min_size=6, max_size=24),
        no_fnr=st.sampled_from(("exclude", "pseudonymise")),
        members=st.lists(st.integers(0, MACHINE_PERSONS - 2), unique=True, min_size=1),
    )
    def first_night(self, plans: list[RecordPlan], no_fnr: str, members: list[int]) -> None:
        self.numbers = [self.source.person(born) for born in MACHINE_BIRTHS]
        self.numbers.append(_number(self.source, PersonPlan(MACHINE_BIRTHS[0], "bad_check")))
        self.world.valid = set(self.numbers[:-1])
        ids = {"NPR": itertools.count(1), "KPR": itertools.count(1)}
        for plan in plans:
            key = (plan.source, next(ids[plan.source]))
            self.world.records[key] = Record(key, self.numbers[plan.person], plan)
        insert_records(self.source, list(self.world.records.values()))
        self.source.synced(utc_now())
        self.spec = {
            "code": CODE,
            "name": "Property test register",
            "delivery": "complement",
            "legal_basis": "NPR-forskriften § 4-2",
            "sources": ["NPR", "KPR"],
            "selection": MACHINE_SPEC_SELECTION,
            "variables": ["fnr", "start_date", "diagnoses"],
            "reservations": {"registry_opt_out": True, "no_fnr": no_fnr},
        }
        self.settings = settings_for(
            self.source.url, self.home, write_spec(self.home / "specs", **self.spec)
        )
        self._load_list(members, [None] * len(members))
        self._run(*self.night)

    # No preconditions: an example hypothesis aborts for want of an enabled rule has paid
    # for its deliveries already. A withdrawal with nothing to withdraw changes nothing.
    @rule(data=st.data(), after=st.sampled_from(WITHDRAWN_AFTER))
    def withdrawal(self, data: st.DataObject, after: timedelta) -> None:
        self.clock += STEP
        standing = [r for r in self.world.reservations if r.withdrawn is None]
        if not standing:
            return
        reservation = data.draw(st.sampled_from(standing))
        reservation.withdrawn = self.clock + after
        self.source.raw(
            "UPDATE reservation SET withdrawn_at = :at WHERE reservation_id = :id",
            at=reservation.withdrawn.strftime("%Y-%m-%d %H:%M:%S.%f"),
            id=reservation.reservation_id,
        )

    @rule(
        members=st.lists(st.integers(0, MACHINE_PERSONS - 2), unique=True, min_size=1),
        index_dates=st.lists(st.sampled_from(INDEX_DATES), min_size=4, max_size=4),
    )
    def new_register_list(self, members: list[int], index_dates: list[date | None]) -> None:
        self.clock += STEP
        self._load_list(members, index_dates)

    def _load_list(self, members: list[int], index_dates: list[date | None]) -> None:
        """A CSV as a register sends it, loaded with etl.register_list.load_list."""
        self.lists += 1
        entries = [
            (self.numbers[m], f"K{self.lists}-{i}", index_dates[i]) for i, m in enumerate(members)
        ]
        path = self.home / f"list{self.lists}.csv"
        with path.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
            writer.writerow(["fnr", "case_id", "index_date"])
            for fnr, case_id, index_date in entries:
                writer.writerow(
                    [fnr, case_id, "" if index_date is None else index_date.isoformat()]
                )
        summary = load_list(self.source.engine, CODE, path, today=date(2024, 6, 1))
        assert summary.rows == len(entries)
        self.world.listed = [(CODE, fnr, case_id, day) for fnr, case_id, day in entries]

    @rule(data=st.data())
    def rerun(self, data: st.DataObject) -> None:
        """Tonight's period again, or an earlier night's (so a late reservation or a new
        list reaches a drop delivered before)."""
        self.clock += STEP
        self._run(*data.draw(st.sampled_from(sorted(self.delivered.values(), reverse=True))))

    @rule()
    def next_night(self) -> None:
        start = self.night[1]
        self.night = (start, start + timedelta(days=1))
        self.clock = max(self.clock + STEP, datetime.combine(self.night[1], RUN_TIME))
        self._run(*self.night)

    # Defined last: hypothesis tries the last rule first (its simplest example), and this one
    # delivers nothing, so that example is cheap.
    @rule(
        person=st.integers(0, MACHINE_PERSONS - 1),
        kind=st.sampled_from(RESERVATION_KINDS),
        after=st.sampled_from(REGISTERED_AFTER),
        short=st.booleans(),
    )
    def new_reservation(
        self, person: int, kind: tuple[str, str], after: timedelta, short: bool
    ) -> None:
        self.clock += STEP
        registry, scope = kind
        reservation = Reservation(
            len(self.world.reservations) + 1,
            self.numbers[person],
            registry,
            scope,
            self.clock + after,
            None,
        )
        self.world.reservations.append(reservation)
        insert_reservations(self.source, [(reservation, short)], "sqlite")

    def _content(self, folder: Path, start: date, end: date) -> tuple[list, list]:
        return (
            read_rows(folder, "complement", start, end),
            read_withdrawals(folder, start, end),
        )

    def _run(self, start: date, end: date) -> None:
        before = versions(self.drop_dir, "complement", start, end)
        result = deliver(self.settings, CODE, start, end, self.clock)
        after = versions(self.drop_dir, "complement", start, end)
        tell(f"{label(start, end)} at {self.clock}: {result.status} v{result.version}")
        latest = after[-1][1]
        assert_drop_shape(latest, self.spec, start, end)
        rows, withdrawn = self._content(latest, start, end)
        got = {
            as_key(r): {
                "fnr": r["fnr"],
                "pseudonymised": r.get("pseudonym") is not None,
                "status": r["status"],
            }
            for r in rows
        }
        assert got == expected_records(self.world, self.spec, start, end, self.clock)
        assert_no_reserved_row(rows, self.world, self.spec, self.clock)
        assert_withdrawals(withdrawn, self.world, self.spec, self.clock)
        observe(f"run: {result.status} (version {len(after)})")
        if result.status == "unchanged":
            assert before, "unchanged without an earlier version"
            assert after == before and result.path == before[-1][1]
        else:
            assert result.status == "published"
            assert len(after) == len(before) + 1 and result.path == latest
            written = manifest(latest)
            assert written["version"] == after[-1][0] == len(after)
            assert written["supersedes"] == (before[-1][1].name if before else None)
            assert datetime.fromisoformat(written["reservations_as_of"]) == self.clock
            if before:
                previous = self._content(before[-1][1], start, end)
                assert (rows, withdrawn) != previous, "a new version of unchanged data"
        self.delivered[label(start, end)] = (start, end)

    @invariant()
    def published_drops_hold_no_excluded_person(self) -> None:
        for start, end in self.delivered.values():
            found = versions(self.drop_dir, "complement", start, end)
            assert [v for v, _ in found] == list(range(1, len(found) + 1))
            for (_, folder), previous in zip(found, [None, *found[:-1]], strict=True):
                assert manifest(folder)["supersedes"] == (
                    None if previous is None else previous[1].name
                )
            latest = found[-1][1]
            as_of = datetime.fromisoformat(manifest(latest)["reservations_as_of"])
            assert_no_reserved_row(
                read_rows(latest, "complement", start, end), self.world, self.spec, as_of
            )
        staging = self.drop_dir / ".work" / CODE / "complement" / "staging"
        assert not staging.is_dir() or not any(staging.iterdir()), "staging left behind"


ReservationLifecycle.TestCase.settings = settings(
    max_examples=8, stateful_step_count=12, **DELIVERING
)
TestReservationLifecycle = pytest.mark.slow(ReservationLifecycle.TestCase)
