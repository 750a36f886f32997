"""Synthetic NPR and KPR source data, reservations and register lists.

Demos, tests and benchmarks need source data that looks like the real registers, in the
shapes and mixes the delivery code has to handle, without a single real person in it.
So every identity number is a synthetic (month + 80) number from ``etl.fnr.synthetic``,
apart from a deliberate 0.3 % of records with broken numbers that deliveries must count as
``invalid_fnr``.

What is generated, over the three years before ``today`` (DOMAIN.md for the sources):

* persons aged 0-100 with one number each (0.5 % D-number style: day + 40 as well);
* NPR episodes (about 3 per person, skewed) in the sector and care-level mix of
  specialist care, with 1-3 ICD-10 diagnoses and NCSP/NCMP/NCRP procedures;
* KPR claims (about 5 per person) with 1-3 mostly ICPC-2 diagnoses, arriving up to six
  months late;
* cohorts for the three demo registers: psychosis (PHV), Parkinson (with secondary
  parkinsonism G21 as a look-alike that must not be selected) and vascular surgery (open and
  endovascular procedures, and lower-limb amputations before, on and after them);
* reservations of every scope, the reservation sync log and the PARKINSON / NORKAR lists.

Cohorts, reservations and amputations are drawn as exact counts with a small minimum per
chunk rather than by coin flips, so that even a few hundred persons exercise every rule.

Rows are generated with numpy in chunks of persons and bulk-loaded per chunk (COPY on
PostgreSQL, executemany in one transaction on SQLite), so memory stays bounded and tens of
millions of rows load in minutes. The same seed and ``today`` give the same rows, except the
one reservation_sync row stamped with the real current time (see ``_sync_rows``).
"""

from __future__ import annotations

import re
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Engine

from etl import fnr
from etl.source import create_schema, statements

__all__ = ["SourceNotEmpty", "SynthSummary", "synthesize"]

CHUNK_PERSONS = 100_000
WRITE_ROWS = 50_000
PERIOD_DAYS = 3 * 365 + 1
NULL_INT = -1  # nullable integer columns use this marker in the generated arrays

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "npr_episode": (
        "episode_id",
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
        "received_at",
    ),
    "npr_diagnosis": ("episode_id", "seq", "code", "is_main"),
    "npr_procedure": ("episode_id", "seq", "code", "code_system", "procedure_date"),
    "kpr_contact": (
        "contact_id",
        "fnr",
        "sex",
        "birth_year",
        "municipality",
        "service_type",
        "contact_date",
        "received_at",
    ),
    "kpr_diagnosis": ("contact_id", "seq", "code", "code_system", "is_main"),
    "reservation": ("reservation_id", "fnr", "registry", "scope", "registered_at", "withdrawn_at"),
    "reservation_sync": ("synced_at",),
    "register_patient": ("registry", "fnr", "case_id", "index_date", "received_at"),
}

Frame = dict[str, np.ndarray]

# --- reference data -----------------------------------------------------------------------

# Municipality (2024 numbering), population in thousands, index into HEALTH_TRUSTS.
MUNICIPALITIES: tuple[tuple[str, int, int], ...] = (
    ("0301", 717, 0),
    ("3201", 131, 1),
    ("3203", 97, 1),
    ("3205", 94, 2),
    ("3301", 103, 1),
    ("3303", 28, 1),
    ("3107", 85, 3),
    ("3105", 59, 3),
    ("3403", 33, 4),
    ("3405", 29, 4),
    ("3907", 66, 5),
    ("3905", 58, 5),
    ("4204", 117, 6),
    ("4203", 46, 6),
    ("1103", 149, 7),
    ("1108", 84, 7),
    ("4601", 291, 8),
    ("1106", 38, 9),
    ("1508", 58, 10),
    ("1506", 33, 10),
    ("5001", 214, 11),
    ("5006", 24, 12),
    ("5035", 25, 12),
    ("1804", 53, 13),
    ("5501", 79, 14),
    ("5601", 21, 15),
)
HEALTH_TRUSTS: tuple[str, ...] = (
    "Oslo universitetssykehus HF",
    "Vestre Viken HF",
    "Akershus universitetssykehus HF",
    "Sykehuset Østfold HF",
    "Sykehuset Innlandet HF",
    "Sykehuset i Vestfold HF",
    "Sørlandet sykehus HF",
    "Helse Stavanger HF",
    "Helse Bergen HF",
    "Helse Fonna HF",
    "Helse Møre og Romsdal HF",
    "St. Olavs hospital HF",
    "Helse Nord-Trøndelag HF",
    "Nordlandssykehuset HF",
    "Universitetssykehuset Nord-Norge HF",
    "Finnmarkssykehuset HF",
)
# Fictitious organisation numbers: three public institutions per trust, and private
# specialists (AVT) report under their own numbers in the trust's area.
_PUBLIC_INSTITUTIONS = 3
_PRIVATE_INSTITUTIONS = 20

# Specialties besides the three the demo registers need (040, 250, 320) are illustrative.
GENERAL_SPECIALTIES = ("010", "030", "100", "110", "120", "150", "170", "190", "230", "280")
GENERAL_ICD10 = (
    "J189", "I219", "I489", "I10", "K359", "K802", "S7200", "S525", "M170", "M161", "M545",
    "C509", "C61", "C349", "O800", "Z380", "R074", "R104", "N390", "E119", "J441", "H251",
    "L031", "Z098", "D649", "I500", "K590", "R55", "T814", "Z031",
)  # fmt: skip
GENERAL_SECONDARY = ("I10", "E119", "E785", "Z921", "J449", "I489", "N183", "E039", "Z864", "F329")
MENTAL_SECONDARY = ("F100", "F412", "F603", "Z915", "F329", "E669", "F171")


@dataclass(frozen=True)
class Kind:
    """A kind of NPR episode: where it happens and which codes it carries.

    care_mix gives the shares of care levels 1 (inpatient), 2 (day), 3 (outpatient) and
    8 (outpatient for an inpatient); inpatient_days is the mean length of an inpatient stay.
    """

    sector: str
    specialties: tuple[str, ...]
    main_codes: tuple[str, ...]
    secondary_codes: tuple[str, ...]
    care_mix: tuple[float, float, float, float]
    inpatient_days: float


SOMATIC_MIX = (0.11, 0.05, 0.82, 0.02)  # DOMAIN.md: 11 % inpatient, 5 % day, 84 % outpatient

KINDS: dict[str, Kind] = {
    "somatic": Kind("SOM", GENERAL_SPECIALTIES, GENERAL_ICD10, GENERAL_SECONDARY, SOMATIC_MIX, 4.5),
    "neurology": Kind(
        "SOM", ("250",), ("G35", "G409", "G439", "I639", "G629", "R51", "G473"),
        GENERAL_SECONDARY, SOMATIC_MIX, 5.0,
    ),
    "vascular_other": Kind(
        "SOM", ("040",), ("I839", "I872", "I739", "I652", "I802"),
        GENERAL_SECONDARY, SOMATIC_MIX, 3.0,
    ),
    "private": Kind("AVT", GENERAL_SPECIALTIES, GENERAL_ICD10, GENERAL_SECONDARY, (0, 0, 1, 0), 1),
    # Adult mental health without psychosis: the nearby codes a PHV selection must leave out.
    "mental_adult": Kind(
        "PHV", ("320",),
        ("F329", "F332", "F319", "F310", "F341", "F39", "F100", "F102", "F412", "F431", "F603",
         "F509"),
        MENTAL_SECONDARY, (0.08, 0.02, 0.90, 0), 18.0,
    ),
    "mental_child": Kind(
        "PHB", ("330",), ("F900", "F840", "F321", "F930", "F912", "F500"),
        MENTAL_SECONDARY, (0.03, 0.02, 0.95, 0), 14.0,
    ),
    "substance": Kind(
        "TSB", ("360",), ("F102", "F112", "F122", "F142", "F192", "F150"),
        MENTAL_SECONDARY, (0.20, 0.05, 0.75, 0), 21.0,
    ),
    "psychosis": Kind(
        "PHV", ("320",),
        ("F200", "F2000", "F2001", "F201", "F209", "F25", "F250", "F251", "F29", "F220", "F23",
         "F232", "F28"),
        MENTAL_SECONDARY, (0.12, 0.02, 0.86, 0), 25.0,
    ),
    "parkinson": Kind(
        "SOM", ("250",), ("G20", "G20", "G20", "G20", "G231", "G232", "G233"),
        GENERAL_SECONDARY, (0.08, 0.04, 0.88, 0), 6.0,
    ),
    # Secondary parkinsonism: looks like Parkinson's disease but must not be selected.
    "secondary_parkinsonism": Kind(
        "SOM", ("250",), ("G210", "G211", "G213", "G214", "G218", "G219"),
        GENERAL_SECONDARY, (0.10, 0.04, 0.86, 0), 6.0,
    ),
    "vascular": Kind(
        "SOM", ("040",), ("I702", "I7020", "I7021", "I710", "I713", "I714", "I740", "I743",
                          "E105", "E115", "E145"),
        GENERAL_SECONDARY, (0.20, 0.05, 0.75, 0), 5.0,
    ),
}  # fmt: skip
KIND_NAMES = tuple(KINDS)
BACKGROUND_KINDS = ("somatic", "neurology", "vascular_other", "mental", "substance", "private")
BACKGROUND_SHARES = (0.76, 0.03, 0.02, 0.08, 0.03, 0.08)

NOISE_PROCEDURES: tuple[tuple[str, str], ...] = (
    ("WBGM00", "NCMP"),
    ("RXGD20", "NCMP"),
    ("REGG15", "NCMP"),
    ("JKA21", "NCSP"),
    ("JEA01", "NCSP"),
    ("NFB40", "NCSP"),
    ("FNG05", "NCSP"),
    ("SDA0AA", "NCRP"),  # illustrative radiology codes: not endovascular (no final B)
    ("SPA0AA", "NCRP"),
)


@dataclass(frozen=True)
class VascularProcedure:
    """An open (NCSP chapter P) or endovascular (NCRP, ending in B) vascular procedure."""

    code: str
    system: str
    diagnoses: tuple[str, ...]
    weight: float
    limb: bool  # lower-limb revascularisation: the patients who may later be amputated


VASCULAR_PROCEDURES: tuple[VascularProcedure, ...] = (
    VascularProcedure("PDG10", "NCSP", ("I714", "I713"), 0.08, False),
    VascularProcedure("PDZ12B", "NCRP", ("I714",), 0.12, False),
    VascularProcedure("PAF21", "NCSP", ("I652",), 0.12, False),
    VascularProcedure("PEH20", "NCSP", ("I7021", "I7020", "E115"), 0.15, True),
    VascularProcedure("PFH20", "NCSP", ("I7021", "E115", "E105"), 0.10, True),
    VascularProcedure("PGH99", "NCSP", ("I702", "I7021"), 0.03, True),
    VascularProcedure("PEP10B", "NCRP", ("I7020", "I7021", "E105", "E115"), 0.25, True),
    VascularProcedure("PFP10B", "NCRP", ("I7021", "E115"), 0.15, True),
)
AMPUTATIONS = ("NFQ09", "NFQ19", "NGQ09", "NGQ19", "NHQ11", "NHQ14")
AMPUTATION_SHARES = (0.02, 0.20, 0.05, 0.25, 0.24, 0.24)
AMPUTATION_DIAGNOSES = ("I7021", "I7021", "E115", "E105", "I702")

ICPC2_BACKGROUND = (
    "R74", "R78", "R05", "L03", "L02", "L86", "L90", "K86", "T90", "T93", "A97", "A98", "P76",
    "P74", "P06", "S88", "U71", "N01", "H71", "F70",
)  # fmt: skip
ICD10_KPR_BACKGROUND = ("J069", "M545", "I10", "F329", "F419", "R509", "Z000")
# Cohort codes in KPR: (ICPC-2 codes, ICD-10 codes). N87 (parkinsonism) covers both
# Parkinson's disease and secondary parkinsonism in ICPC-2.
KPR_COHORT_CODES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "psychosis": (("P72", "P72", "P73", "P98"), ("F200", "F25", "F29")),
    "parkinson": (("N87",), ("G20",)),
    "secondary_parkinsonism": (("N87",), ("G219",)),
    "vascular": (("K92", "T90", "K92"), ("I702", "E115")),
}
# Cohort codes a cohort person's other episodes carry as a secondary diagnosis.
SECONDARY_COHORT_CODES: dict[str, tuple[tuple[str, ...], float]] = {
    "psychosis": (("F200", "F209", "F250"), 0.20),
    "parkinson": (("G20",), 0.30),
    "secondary_parkinsonism": (("G219",), 0.20),
    "vascular": (("I702", "E115"), 0.15),
}


@dataclass(frozen=True)
class Cohort:
    """Persons of one demo register's population: their share, minimum and age range."""

    name: str
    share: float
    minimum: int
    min_age: int
    max_age: int
    extra_episodes: float  # mean number of cohort episodes beyond the first


COHORTS: tuple[Cohort, ...] = (
    Cohort("psychosis", 0.015, 6, 16, 80, 4.0),
    Cohort("parkinson", 0.010, 8, 45, 100, 1.5),
    Cohort("secondary_parkinsonism", 0.003, 3, 45, 100, 0.5),
    Cohort("vascular", 0.020, 10, 45, 100, 1.0),
)
COHORT_NAMES = ("", *(c.name for c in COHORTS))  # index 0: no cohort


@dataclass(frozen=True)
class ReservationRule:
    """Who makes one kind of reservation: a share of a cohort ('' = everyone)."""

    registry: str
    scope: str
    cohort: str
    share: float
    minimum: int


RESERVATION_RULES: tuple[ReservationRule, ...] = (
    ReservationRule("PHV", "OPT_OUT", "psychosis", 0.04, 2),
    ReservationRule("PARKINSON", "OPT_OUT", "parkinson", 0.05, 3),
    ReservationRule("NORKAR", "OPT_OUT", "vascular", 0.04, 2),
    ReservationRule("PHV", "OPT_OUT", "", 0.001, 0),
    ReservationRule("HJERTE", "OPT_OUT", "", 0.003, 1),
    ReservationRule("DIABETES", "OPT_OUT", "", 0.002, 1),
    ReservationRule("KPR", "NO_PURPOSE2", "", 0.010, 2),
    ReservationRule("NPR", "NO_FNR", "", 0.004, 2),
    ReservationRule("KPR", "NO_FNR", "", 0.004, 2),
)

D_NUMBER_SHARE = 0.005
INVALID_FNR_SHARE = 0.003
ODD_SEX_SHARE = 0.003
DIRTY_CODE_SHARE = 0.02
NULL_PROCEDURE_DATE_SHARE = 0.25
CORRECTED_SHARE = 0.25
LAST_NIGHTS = 7
LAST_NIGHT_SHARE = 0.0001
NIGHTLY_BATCH = (1800, 19_800)  # NPR loads between 00:30 and 05:30 UTC
PARKINSON_LISTED_SHARE = 0.65
NORKAR_CASE_SHARE = 0.70


class SourceNotEmpty(RuntimeError):
    """The target database already holds source rows; synthetic data goes into empty ones."""


@dataclass
class SynthSummary:
    """How many persons were generated and how many rows each table received."""

    persons: int = 0
    npr_episode: int = 0
    npr_diagnosis: int = 0
    npr_procedure: int = 0
    kpr_contact: int = 0
    kpr_diagnosis: int = 0
    reservation: int = 0
    reservation_sync: int = 0
    register_patient: int = 0

    def add(self, table: str, rows: int) -> None:
        """Count rows loaded into a table."""
        setattr(self, table, getattr(self, table) + rows)

    def tables(self) -> dict[str, int]:
        """Rows per table, in the order the tables are loaded."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in TABLE_COLUMNS}


# --- small helpers ------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: Sequence[Any], size: int, p: Any = None) -> np.ndarray:
    """size draws from options, as an array of the options' own type."""
    return np.asarray(options)[rng.choice(len(options), size=size, p=p)]


def _exact_count(available: int, share: float, minimum: int) -> int:
    """round(share * available), at least minimum, at most available."""
    return min(available, max(minimum, round(share * available)))


def _exact_flags(rng: np.random.Generator, size: int, share: float, minimum: int = 0) -> np.ndarray:
    """A boolean mask with an exact number of True values at random places."""
    flags = np.zeros(size, dtype=bool)
    flags[rng.choice(size, _exact_count(size, share, minimum), replace=False)] = True
    return flags


def _negative_binomial(
    rng: np.random.Generator, mean: float, shape: float, size: int
) -> np.ndarray:
    """Skewed counts: most persons have few records, some have many."""
    return rng.negative_binomial(shape, shape / (shape + mean), size)


def _seconds(seconds: np.ndarray) -> np.ndarray:
    """Whole seconds as timedelta64[s]."""
    return np.asarray(seconds, dtype=np.int64).astype("timedelta64[s]")


def _instants(
    rng: np.random.Generator, day: np.ndarray, first_second: int, last_second: int
) -> np.ndarray:
    """Timestamps on the given days between two times of day; half with fractional seconds.

    SQLite stores timestamps as text with or without fractions, and both forms must order
    correctly (CONTRACT.md section 1), so both are generated.
    """
    n = len(day)
    second = rng.integers(first_second, last_second, n)
    micro = np.where(rng.random(n) < 0.5, rng.integers(1, 1_000_000, n), 0)
    return (
        day.astype("datetime64[us]")
        + _seconds(second).astype("timedelta64[us]")
        + micro.astype("timedelta64[us]")
    )


# --- persons ------------------------------------------------------------------------------


@dataclass
class Persons:
    """One chunk of persons; index i of every array is the same person."""

    fnr: np.ndarray
    sex: np.ndarray
    birth: np.ndarray
    age: np.ndarray
    municipality: np.ndarray
    trust: np.ndarray
    cohort: np.ndarray  # index into COHORT_NAMES

    def __len__(self) -> int:
        return len(self.fnr)

    def birth_year(self) -> np.ndarray:
        return self.birth.astype("datetime64[Y]").astype(np.int64) + 1970

    def in_cohort(self, name: str) -> np.ndarray:
        return self.cohort == COHORT_NAMES.index(name)


_ISSUE_ROUNDS = 100  # a round leaves about a sixth redrawn; 100 rounds means no room left


class NumberIssuer:
    """Issues unique synthetic identity numbers across all chunks of one run.

    Numbers are drawn at random for realism (a random individual number whose last digit
    matches the sex), so the issuer remembers what it issued and redraws collisions and
    individual numbers without check digits.
    """

    def __init__(self) -> None:
        self._issued = np.empty(0, dtype=np.int64)

    def issue(
        self, rng: np.random.Generator, birth: np.ndarray, sex: np.ndarray, d_number: np.ndarray
    ) -> np.ndarray:
        numbers = np.full(len(birth), "", dtype="U11")
        # 1900-1999: individual numbers 000-499; 2000-2039: 500-999 (fnr.individual_ranges).
        base = np.where(birth >= np.datetime64("2000-01-01"), 500, 0)
        todo = np.arange(len(birth))
        for _ in range(_ISSUE_ROUNDS):
            individual = base[todo] + 2 * rng.integers(0, 250, todo.size) + (sex[todo] == 1)
            numbers[todo] = fnr.synthetic_array(birth[todo], individual, d_number[todo])
            as_int = np.where(numbers == "", "-1", numbers).astype(np.int64)
            first = np.zeros(len(numbers), dtype=bool)
            first[np.unique(as_int, return_index=True)[1]] = True
            todo = np.flatnonzero((as_int < 0) | ~first | np.isin(as_int, self._issued))
            if not todo.size:
                break
        else:
            raise RuntimeError("too many persons share a birth date and sex: numbers run out")
        self._issued = np.union1d(self._issued, numbers.astype(np.int64))
        return numbers


def _ages(rng: np.random.Generator, n: int) -> np.ndarray:
    """Ages 0-100, weighted towards the older patients hospitals see most.

    Ages outside 0-100 are redrawn rather than clipped: clipping would put hundreds of
    persons on the same birth date, more than its individual numbers can serve.
    """
    age = rng.normal(55, 22, n)
    uniform = (age < 0) | (age > 100) | (rng.random(n) < 0.3)
    age[uniform] = rng.uniform(0, 100, int(uniform.sum()))
    return age


def _assign_cohorts(rng: np.random.Generator, age: np.ndarray) -> np.ndarray:
    """Exact cohort counts (with a minimum per chunk) among persons of a fitting age."""
    cohort = np.zeros(len(age), dtype=np.int8)
    for index, spec in enumerate(COHORTS, start=1):
        eligible = np.flatnonzero((cohort == 0) & (age >= spec.min_age) & (age <= spec.max_age))
        count = _exact_count(len(eligible), spec.share, spec.minimum)
        cohort[rng.choice(eligible, count, replace=False)] = index
    return cohort


def _persons(
    rng: np.random.Generator, n: int, today: np.datetime64, issuer: NumberIssuer
) -> Persons:
    """n new persons: age, sex, home municipality, cohort and a unique synthetic number."""
    age = _ages(rng, n)
    birth = today - np.maximum(1, (age * 365.25).astype(np.int64)).astype("timedelta64[D]")
    sex = rng.integers(1, 3, n)
    weights = np.array([m[1] for m in MUNICIPALITIES], dtype=float)
    place = rng.choice(len(MUNICIPALITIES), n, p=weights / weights.sum())
    d_number = _exact_flags(rng, n, D_NUMBER_SHARE, minimum=3)
    return Persons(
        fnr=issuer.issue(rng, birth, sex, d_number),
        sex=sex,
        birth=birth,
        age=np.floor(age).astype(np.int64),
        municipality=np.array([m[0] for m in MUNICIPALITIES])[place],
        trust=np.array([m[2] for m in MUNICIPALITIES])[place],
        cohort=_assign_cohorts(rng, age),
    )


def _record_identity(rng: np.random.Generator, persons: Persons, person: np.ndarray) -> Frame:
    """fnr, sex, birth_year and municipality of records, with the deliberate flaws.

    A few records carry a broken number (a wrong second check digit, or one digit short)
    and a few an unknown (0) or unspecified (9) sex, as in the real registers.
    """
    n = len(person)
    numbers = persons.fnr[person].astype("U11")
    broken = np.flatnonzero(_exact_flags(rng, n, INVALID_FNR_SHARE))
    short = broken[rng.random(broken.size) < 0.5]
    wrong = np.setdiff1d(broken, short)
    numbers[short] = numbers[short].astype("U10")
    last = numbers[wrong].view(np.uint32).reshape(-1, 11)[:, 10] - ord("0")
    bumped = (last + rng.integers(1, 10, wrong.size)) % 10  # K2 off by 1..9: never valid
    numbers[wrong] = np.char.add(numbers[wrong].astype("U10"), bumped.astype("U1"))
    sex = persons.sex[person].copy()
    odd = _exact_flags(rng, n, ODD_SEX_SHARE)
    sex[odd] = _pick(rng, (0, 9), int(odd.sum()))
    return {
        "fnr": numbers,
        "sex": sex,
        "birth_year": persons.birth_year()[person],
        "municipality": persons.municipality[person],
    }


# --- NPR episodes -------------------------------------------------------------------------


@dataclass
class Episodes:
    """Episodes of one chunk before they get ids; procedures refer to them by position."""

    person: np.ndarray
    kind: np.ndarray  # index into KIND_NAMES
    start: np.ndarray
    end: np.ndarray
    care_level: np.ndarray
    urgency: np.ndarray
    specialty: np.ndarray
    main_code: np.ndarray
    cohort_code: np.ndarray  # a cohort diagnosis to add as secondary, "" for none
    proc_episode: np.ndarray
    proc_code: np.ndarray
    proc_system: np.ndarray
    proc_date: np.ndarray

    @staticmethod
    def concat(parts: Sequence[Episodes]) -> Episodes:
        offsets = np.cumsum([0] + [len(p.person) for p in parts[:-1]])
        merged = {
            f.name: np.concatenate([getattr(p, f.name) for p in parts])
            for f in fields(Episodes)
            if f.name != "proc_episode"
        }
        merged["proc_episode"] = np.concatenate(
            [p.proc_episode + offset for p, offset in zip(parts, offsets, strict=True)]
        )
        return Episodes(**merged)

    def with_procedures(
        self, episode: np.ndarray, code: np.ndarray, system: np.ndarray, day: np.ndarray
    ) -> Episodes:
        """These episodes with more procedure rows (episode positions, codes, systems, dates)."""
        values = {
            f.name: getattr(self, f.name)
            for f in fields(Episodes)
            if not f.name.startswith("proc_")
        }
        return Episodes(
            **values,
            proc_episode=np.concatenate([self.proc_episode, episode]),
            proc_code=np.concatenate([self.proc_code, code]).astype("U8"),
            proc_system=np.concatenate([self.proc_system, system]).astype("U4"),
            proc_date=np.concatenate([self.proc_date, day]),
        )

    def take(self, keep: np.ndarray) -> Episodes:
        """Only the episodes where keep is True, with their procedures."""
        position = np.cumsum(keep) - 1
        proc_keep = keep[self.proc_episode]
        values = {
            f.name: getattr(self, f.name)[keep]
            for f in fields(Episodes)
            if not f.name.startswith("proc_")
        }
        return Episodes(
            **values,
            proc_episode=position[self.proc_episode[proc_keep]],
            proc_code=self.proc_code[proc_keep],
            proc_system=self.proc_system[proc_keep],
            proc_date=self.proc_date[proc_keep],
        )


def _no_procedures() -> dict[str, np.ndarray]:
    """The procedure fields of Episodes without any procedure rows."""
    return {
        "proc_episode": np.empty(0, dtype=np.int64),
        "proc_code": np.empty(0, dtype="U8"),
        "proc_system": np.empty(0, dtype="U4"),
        "proc_date": np.empty(0, dtype="datetime64[D]"),
    }


def _stay(
    rng: np.random.Generator, care_level: np.ndarray, mean_days: np.ndarray | float
) -> np.ndarray:
    """Length of stay in days: geometric for inpatients, 0 for day and outpatient care."""
    days = rng.geometric(1 / (1 + np.asarray(mean_days, dtype=float)), len(care_level)) - 1
    return np.where(care_level == 1, days, 0).astype("timedelta64[D]")


def _urgency(
    rng: np.random.Generator, care_level: np.ndarray, acute_inpatient: float
) -> np.ndarray:
    """innmateHast: about 70 % of inpatient stays are acute (1), most other care planned (4)."""
    n = len(care_level)
    acute_share = np.where(care_level == 1, acute_inpatient, 0.08)
    other = _pick(rng, (2, 3, 4, 5), n, p=(0.05, 0.05, 0.85, 0.05))
    return np.where(rng.random(n) < acute_share, 1, other)


def _kind_episodes(
    rng: np.random.Generator, person: np.ndarray, kind: np.ndarray, first_day: np.datetime64
) -> Episodes:
    """Episodes of the given kinds on random days, filled in kind by kind."""
    n = len(person)
    specialty = np.empty(n, dtype="U3")
    main_code = np.empty(n, dtype="U8")
    care_level = np.empty(n, dtype=np.int64)
    stay_mean = np.empty(n)
    for index in np.unique(kind):
        spec = KINDS[KIND_NAMES[index]]
        rows = np.flatnonzero(kind == index)
        specialty[rows] = _pick(rng, spec.specialties, rows.size)
        main_code[rows] = _pick(rng, spec.main_codes, rows.size)
        care_level[rows] = _pick(rng, (1, 2, 3, 8), rows.size, p=spec.care_mix)
        stay_mean[rows] = spec.inpatient_days
    start = first_day + rng.integers(0, PERIOD_DAYS, n).astype("timedelta64[D]")
    return Episodes(
        person=person,
        kind=kind,
        start=start,
        end=start + _stay(rng, care_level, stay_mean),
        care_level=care_level,
        urgency=_urgency(rng, care_level, 0.7),
        specialty=specialty,
        main_code=main_code,
        cohort_code=np.full(n, "", dtype="U8"),
        **_no_procedures(),
    )


def _background_kinds(rng: np.random.Generator, age: np.ndarray) -> np.ndarray:
    """Sector mix of ordinary episodes; mental health goes to PHB for children."""
    name = _pick(rng, BACKGROUND_KINDS, len(age), p=BACKGROUND_SHARES)
    name = np.where(name == "mental", np.where(age < 18, "mental_child", "mental_adult"), name)
    name = np.where((name == "substance") & (age < 16), "somatic", name)
    return _kind_indices(name)


def _kind_index(name: str) -> int:
    return KIND_NAMES.index(name)


def _kind_indices(names: np.ndarray) -> np.ndarray:
    """Positions in KIND_NAMES of an array of kind names."""
    order = np.argsort(KIND_NAMES)
    return order[np.searchsorted(np.asarray(KIND_NAMES)[order], names)]


def _background_episodes(
    rng: np.random.Generator, persons: Persons, first_day: np.datetime64
) -> Episodes:
    """Everyone's ordinary episodes; cohort persons' ones sometimes list their condition."""
    count = _negative_binomial(rng, 2.95, 0.6, len(persons))
    person = np.repeat(np.arange(len(persons)), count)
    episodes = _kind_episodes(rng, person, _background_kinds(rng, persons.age[person]), first_day)
    somatic = np.isin(
        episodes.kind,
        [_kind_index(k) for k in ("somatic", "neurology", "vascular_other", "private")],
    )
    for name, (codes, share) in SECONDARY_COHORT_CODES.items():
        rows = np.flatnonzero(somatic & persons.in_cohort(name)[person])
        chosen = rows[rng.random(rows.size) < share]
        episodes.cohort_code[chosen] = _pick(rng, codes, chosen.size)
    return episodes


def _cohort_episodes(
    rng: np.random.Generator, persons: Persons, first_day: np.datetime64
) -> Episodes:
    """The episodes that put cohort persons into a register's population."""
    person_parts, kind_parts = [], []
    for spec in COHORTS:
        members = np.flatnonzero(persons.in_cohort(spec.name))
        count = 1 + rng.poisson(spec.extra_episodes, members.size)
        person_parts.append(np.repeat(members, count))
        kind_parts.append(np.full(int(count.sum()), _kind_index(spec.name)))
    return _kind_episodes(rng, np.concatenate(person_parts), np.concatenate(kind_parts), first_day)


def _vascular_procedure_episodes(
    rng: np.random.Generator, persons: Persons, first_day: np.datetime64
) -> tuple[Episodes, np.ndarray]:
    """Open and endovascular procedures of the vascular cohort (some persons have two).

    Returns the episodes, whose first procedure rows are in episode order, and per episode
    whether the procedure was on a leg.
    """
    members = np.flatnonzero(persons.in_cohort("vascular"))
    person = np.repeat(members, 1 + (rng.random(members.size) < 0.25))
    n = len(person)
    weights = np.array([p.weight for p in VASCULAR_PROCEDURES])
    which = rng.choice(len(VASCULAR_PROCEDURES), n, p=weights / weights.sum())
    endovascular = np.array([p.system == "NCRP" for p in VASCULAR_PROCEDURES])[which]
    care_level = np.where(endovascular & (rng.random(n) < 0.4), 2, 1)
    start = first_day + rng.integers(0, PERIOD_DAYS, n).astype("timedelta64[D]")
    day_after = (care_level == 1) & (rng.random(n) < 0.5)
    on_day = start + day_after.astype(np.int64).astype("timedelta64[D]")
    main_code = np.array(
        [rng.choice(VASCULAR_PROCEDURES[i].diagnoses) for i in which.tolist()], dtype="U8"
    )
    codes = np.array([p.code for p in VASCULAR_PROCEDURES], dtype="U8")[which]
    systems = np.array([p.system for p in VASCULAR_PROCEDURES], dtype="U4")[which]
    episodes = Episodes(
        person=person,
        kind=np.full(n, _kind_index("vascular")),
        start=start,
        end=start + _stay(rng, care_level, np.where(endovascular, 2.0, 6.0)),
        care_level=care_level,
        urgency=_urgency(rng, care_level, 0.25),
        specialty=np.full(n, "040"),
        main_code=main_code,
        cohort_code=np.full(n, "", dtype="U8"),
        **_no_procedures(),
    ).with_procedures(np.arange(n), codes, systems, on_day)
    # A hybrid operation adds the endovascular part to a femoral bypass.
    hybrid = np.flatnonzero((codes == "PEH20") & (rng.random(n) < 0.25))
    episodes = episodes.with_procedures(
        hybrid, np.full(hybrid.size, "PEP10B"), np.full(hybrid.size, "NCRP"), on_day[hybrid]
    )
    limb = np.array([p.limb for p in VASCULAR_PROCEDURES])[which]
    return episodes, limb


def _amputation_days(
    rng: np.random.Generator,
    procedure_day: np.ndarray,
    first_day: np.datetime64,
    today: np.datetime64,
) -> np.ndarray:
    """Amputation dates relative to a vascular procedure: mostly after, some same day or before.

    After: 1 day to about 1.5 years, most within the first months, never after yesterday.
    Before: up to 300 days, never before the data period. Exact shares per chunk.
    """
    n = len(procedure_day)
    timing = np.zeros(n, dtype=np.int64)  # 0 after, 1 same day, 2 before
    order = rng.permutation(n)
    n_after = max(1, round(0.78 * n))
    n_same = round(0.12 * n)
    timing[order[n_after : n_after + n_same]] = 1
    timing[order[n_after + n_same :]] = 2
    room_after = np.minimum(550, (today - 1 - procedure_day).astype(np.int64))
    after = 1 + np.floor((room_after - 1) * rng.random(n) ** 2).astype(np.int64)
    before = -1 - np.floor(300 * rng.random(n)).astype(np.int64)
    lag = np.select([timing == 0, timing == 2], [after, before], 0)
    lag = np.where((timing == 0) & (room_after < 1), 0, lag)
    lag = np.where(procedure_day + lag < first_day, 0, lag)
    return procedure_day + lag.astype("timedelta64[D]")


def _amputations(
    rng: np.random.Generator,
    vascular: Episodes,
    limb: np.ndarray,
    first_day: np.datetime64,
    today: np.datetime64,
) -> tuple[Episodes, Episodes]:
    """Lower-limb amputations for some patients with a leg revascularisation.

    Same-day amputations join the vascular episode itself (returned as the updated vascular
    episodes); the others are inpatient episodes of their own.
    """
    candidates = np.flatnonzero(limb)
    persons = np.unique(vascular.person[candidates])
    amputees = rng.choice(persons, _exact_count(persons.size, 0.30, 3), replace=False)
    # One amputation per amputee, tied to one of their leg procedures.
    shuffled = rng.permutation(candidates)
    pairs = shuffled[np.unique(vascular.person[shuffled], return_index=True)[1]]
    linked = pairs[np.isin(vascular.person[pairs], amputees)]
    day = _amputation_days(rng, vascular.proc_date[linked], first_day, today)
    code = _pick(rng, AMPUTATIONS, linked.size, p=AMPUTATION_SHARES).astype("U8")
    same = day == vascular.proc_date[linked]
    vascular = vascular.with_procedures(
        linked[same], code[same], np.full(same.sum(), "NCSP"), day[same]
    )
    own = ~same
    n = int(own.sum())
    start = day[own] - rng.integers(0, 3, n).astype("timedelta64[D]")
    care_level = np.ones(n, dtype=np.int64)
    stay = _stay(rng, care_level, 8.0)
    amputation = Episodes(
        person=vascular.person[linked[own]],
        kind=np.full(n, _kind_index("vascular")),
        start=start,
        end=np.maximum(day[own], start + stay),
        care_level=care_level,
        urgency=_urgency(rng, care_level, 0.5),
        specialty=np.full(n, "040"),
        main_code=_pick(rng, AMPUTATION_DIAGNOSES, n).astype("U8"),
        cohort_code=np.full(n, "", dtype="U8"),
        proc_episode=np.arange(n),
        proc_code=code[own],
        proc_system=np.full(n, "NCSP", dtype="U4"),
        proc_date=day[own],
    )
    return vascular, amputation


def _noise_procedures(rng: np.random.Generator, episodes: Episodes) -> Episodes:
    """Medical, radiology and other surgical codes on a fifth of the somatic episodes."""
    somatic = np.isin(episodes.kind, [_kind_index("somatic"), _kind_index("private")])
    carriers = np.flatnonzero(somatic & (rng.random(len(somatic)) < 0.2))
    episode = np.repeat(carriers, 1 + (rng.random(carriers.size) < 0.3))
    which = rng.integers(0, len(NOISE_PROCEDURES), episode.size)
    stay = (episodes.end[episode] - episodes.start[episode]).astype(np.int64)
    offset = np.floor(rng.random(episode.size) * (stay + 1)).astype("timedelta64[D]")
    codes, systems = (np.array(column) for column in zip(*NOISE_PROCEDURES, strict=True))
    return episodes.with_procedures(
        episode, codes[which], systems[which], episodes.start[episode] + offset
    )


def _npr_received(rng: np.random.Generator, episodes: Episodes, today: np.datetime64) -> np.ndarray:
    """When NPR received (or last changed) each episode; NaT where not yet received.

    Hospitals report in nightly batches a few days to weeks after the episode ends (or
    after admission for a stay still going on), and correct a quarter of the episodes
    within two months. Episodes first reported after ``today`` are not in the database yet
    and corrections after today have not happened, so every night gets a steady share.
    """
    n = len(episodes.person)
    base = np.where(episodes.end >= today, episodes.start, episodes.end)
    lag = np.select(
        [rng.random(n) < 0.70, rng.random(n) < 0.85],
        [rng.integers(1, 8, n), rng.integers(8, 36, n)],
        rng.integers(36, 91, n),
    )
    first = _instants(rng, base + lag.astype("timedelta64[D]"), *NIGHTLY_BATCH)
    correction_day = first.astype("datetime64[D]") + rng.integers(1, 61, n).astype("timedelta64[D]")
    correction = _instants(rng, correction_day, *NIGHTLY_BATCH)
    midnight = today.astype("datetime64[us]")
    corrected = (rng.random(n) < CORRECTED_SHARE) & (correction < midnight)
    received = _corrections_on_last_nights(rng, np.where(corrected, correction, first), today)
    return np.where(first < midnight, received, np.datetime64("NaT"))


def _corrections_on_last_nights(
    rng: np.random.Generator, received: np.ndarray, today: np.datetime64
) -> np.ndarray:
    """Make sure each of the last nights has some corrections, even for a few hundred
    persons: a nightly delivery for yesterday should never find nothing by chance."""
    per_night = max(1, round(LAST_NIGHT_SHARE * len(received)))
    old = np.flatnonzero(received < (today - LAST_NIGHTS).astype("datetime64[us]"))
    chosen = rng.choice(old, min(old.size, per_night * LAST_NIGHTS), replace=False)
    nights = today - (1 + np.arange(chosen.size) % LAST_NIGHTS).astype("timedelta64[D]")
    received = received.copy()
    received[chosen] = _instants(rng, nights, *NIGHTLY_BATCH)
    return received


def _institutions(rng: np.random.Generator, trust: np.ndarray, private: np.ndarray) -> np.ndarray:
    """Fictitious 9-digit organisation numbers of the treating institution."""
    public = 974_000_000 + trust * 100 + rng.integers(0, _PUBLIC_INSTITUTIONS, len(trust))
    avt = 986_000_000 + trust * 100 + rng.integers(0, _PRIVATE_INSTITUTIONS, len(trust))
    return np.where(private, avt, public).astype("U9")


def _episode_frame(
    rng: np.random.Generator,
    persons: Persons,
    episodes: Episodes,
    received: np.ndarray,
    first_id: int,
    today: np.datetime64,
) -> Frame:
    """npr_episode rows; stays still going on today have no end date or discharge status."""
    n = len(episodes.person)
    still_in = episodes.end >= today
    sector = np.array([KINDS[k].sector for k in KIND_NAMES])[episodes.kind]
    inpatient = episodes.care_level == 1
    died = inpatient & (rng.random(n) < 0.02)
    suicide = inpatient & (sector == "PHV") & (rng.random(n) < 0.002)
    discharge = np.select([still_in, suicide, died], [NULL_INT, 3, 2], 1)
    trust = persons.trust[episodes.person]
    return {
        "episode_id": first_id + np.arange(n),
        **_record_identity(rng, persons, episodes.person),
        "institution_id": _institutions(rng, trust, sector == "AVT"),
        "health_trust": np.array(HEALTH_TRUSTS)[trust],
        "sector": sector,
        "specialty": episodes.specialty,
        "care_level": episodes.care_level,
        "urgency": episodes.urgency,
        "start_date": episodes.start,
        "end_date": np.where(still_in, np.datetime64("NaT"), episodes.end),
        "discharge_status": discharge,
        "received_at": received,
    }


def _numbered(owner: np.ndarray) -> np.ndarray:
    """seq 1, 2, ... within each owner, for rows grouped by owner."""
    starts = np.r_[0, np.flatnonzero(np.diff(owner)) + 1]
    return np.arange(len(owner)) - np.repeat(starts, np.diff(np.r_[starts, len(owner)])) + 1


def _dirty(rng: np.random.Generator, codes: np.ndarray, dots: bool) -> np.ndarray:
    """Codes as they arrive: a few in lower case, with a dot or trailing spaces (f20.0 )."""
    codes = codes.astype("U8")
    rows = np.flatnonzero(_exact_flags(rng, len(codes), DIRTY_CODE_SHARE, 1 if len(codes) else 0))
    for row in rows.tolist():
        code = str(codes[row])
        lower, dot, space = rng.random(3) < (0.5, 0.5, 0.3)
        if lower:
            code = code.lower()
        if dots and dot and len(code) > 3:
            code = f"{code[:3]}.{code[3:]}"
        if space or code == codes[row]:
            code += " "
        codes[row] = code
    return codes


def _npr_diagnoses(rng: np.random.Generator, episodes: Episodes, first_id: int) -> Frame:
    """1-3 diagnoses per episode, the first the main one; cohort codes as secondary."""
    n = len(episodes.person)
    has_cohort = episodes.cohort_code != ""
    count = np.maximum(_pick(rng, (1, 2, 3), n, p=(0.5, 0.3, 0.2)), 1 + has_cohort)
    episode = np.repeat(np.arange(n), count)
    seq = _numbered(episode)
    secondary = np.empty(len(episode), dtype="U8")
    for index in np.unique(episodes.kind):
        rows = np.flatnonzero(episodes.kind[episode] == index)
        secondary[rows] = _pick(rng, KINDS[KIND_NAMES[index]].secondary_codes, rows.size)
    cohort_row = (seq == 2) & has_cohort[episode]
    code = np.select(
        [seq == 1, cohort_row],
        [episodes.main_code[episode], episodes.cohort_code[episode]],
        secondary,
    )
    return {
        "episode_id": first_id + episode,
        "seq": seq,
        "code": _dirty(rng, code, dots=True),
        "is_main": seq == 1,
    }


def _npr_procedures(rng: np.random.Generator, episodes: Episodes, first_id: int) -> Frame:
    """Procedure rows; a date equal to the episode start is often left out (NULL)."""
    order = np.argsort(episodes.proc_episode, kind="stable")
    episode = episodes.proc_episode[order]
    day = episodes.proc_date[order]
    implicit = (day == episodes.start[episode]) & (rng.random(len(day)) < NULL_PROCEDURE_DATE_SHARE)
    return {
        "episode_id": first_id + episode,
        "seq": _numbered(episode),
        "code": _dirty(rng, episodes.proc_code[order], dots=False),
        "code_system": episodes.proc_system[order],
        "procedure_date": np.where(implicit, np.datetime64("NaT"), day),
    }


# --- KPR ----------------------------------------------------------------------------------


def _kpr_received(
    rng: np.random.Generator, contact_day: np.ndarray, today: np.datetime64
) -> np.ndarray:
    """Claims arrive through the day, mostly within days, some up to six months late."""
    n = len(contact_day)
    lag = np.select(
        [rng.random(n) < 0.55, rng.random(n) < 0.67, rng.random(n) < 0.8],
        [rng.integers(0, 3, n), rng.integers(3, 31, n), rng.integers(31, 121, n)],
        rng.integers(121, 181, n),
    )
    received = _instants(rng, contact_day + lag.astype("timedelta64[D]"), 0, 86_400)
    return np.where(received < today.astype("datetime64[us]"), received, np.datetime64("NaT"))


def _kpr(rng: np.random.Generator, persons: Persons, run: Run) -> tuple[Frame, Frame]:
    """GP, out-of-hours and other municipal claims, with their diagnoses."""
    count = _negative_binomial(rng, 5.1, 0.8, len(persons))
    person = np.repeat(np.arange(len(persons)), count)
    day = run.first_day + rng.integers(0, PERIOD_DAYS, len(person)).astype("timedelta64[D]")
    received = _kpr_received(rng, day, run.today)
    kept = ~np.isnat(received)
    person, day, received = person[kept], day[kept], received[kept]
    n = len(person)
    first_id = run.ids("contact", n)
    service = np.where(
        rng.random(n) < 0.70, 1, np.where(rng.random(n) < 0.5, 2, rng.integers(3, 15, n))
    )
    contacts = {
        "contact_id": first_id + np.arange(n),
        **_record_identity(rng, persons, person),
        "service_type": service,
        "contact_date": day,
        "received_at": received,
    }
    return contacts, _kpr_diagnoses(rng, persons, person, first_id)


def _kpr_diagnoses(
    rng: np.random.Generator, persons: Persons, person: np.ndarray, first_id: int
) -> Frame:
    """Mostly ICPC-2, a few contacts coded in ICD-10; cohort persons' conditions recur."""
    n = len(person)
    icd = rng.random(n) < 0.07
    count = _pick(rng, (1, 2, 3), n, p=(0.6, 0.3, 0.1))
    contact = np.repeat(np.arange(n), count)
    seq = _numbered(contact)
    row_icd = icd[contact]
    code = np.where(
        row_icd,
        _pick(rng, ICD10_KPR_BACKGROUND, len(contact)),
        _pick(rng, ICPC2_BACKGROUND, len(contact)),
    ).astype("U8")
    for name, (icpc, icd10) in KPR_COHORT_CODES.items():
        member = persons.in_cohort(name)[person[contact]]
        share = np.where(seq == 1, 0.35, 0.10)
        rows = np.flatnonzero(member & (rng.random(len(contact)) < share))
        code[rows] = np.where(
            row_icd[rows], _pick(rng, icd10, rows.size), _pick(rng, icpc, rows.size)
        )
    return {
        "contact_id": first_id + contact,
        "seq": seq,
        "code": _dirty(rng, code, dots=True),
        "code_system": np.where(row_icd, "ICD-10", "ICPC-2"),
        "is_main": seq == 1,
    }


# --- register lists and reservations ------------------------------------------------------


def _parkinson_list(
    rng: np.random.Generator, persons: Persons, episodes: Episodes, run: Run
) -> tuple[np.ndarray, np.ndarray]:
    """About two thirds of the persons with G20/G23 in NPR, indexed at their first such
    episode, plus a few listed persons NPR has never seen (diagnosed before the period).

    Returns the list's identity numbers and index dates.
    """
    parkinson = np.isin(episodes.main_code, KINDS["parkinson"].main_codes) | np.char.startswith(
        episodes.cohort_code, "G20"
    )
    episode = np.flatnonzero(parkinson)
    person = episodes.person[episode]
    order = np.lexsort((episodes.start[episode], person))
    first = order[np.unique(person[order], return_index=True)[1]]
    listed = rng.choice(first, _exact_count(first.size, PARKINSON_LISTED_SHARE, 1), replace=False)
    unseen = _persons(rng, max(1, round(0.0005 * len(persons))), run.today, run.issuer).fnr
    days_before = rng.integers(30, 3650, unseen.size).astype("timedelta64[D]")
    return (
        np.concatenate([persons.fnr[person[listed]], unseen]),
        np.concatenate([episodes.start[episode[listed]], run.first_day - days_before]),
    )


def _norkar_cases(
    rng: np.random.Generator, persons: Persons, episodes: Episodes
) -> tuple[np.ndarray, np.ndarray]:
    """A case for about 70 % of the vascular procedures, dated on the procedure.

    A tenth of the registered dates differ by a day or two from NPR's, as when the register
    records the operation day and NPR the admission, so matching needs its tolerance.
    """
    vascular_codes = [p.code for p in VASCULAR_PROCEDURES]
    rows = np.flatnonzero(np.isin(episodes.proc_code, vascular_codes))
    rows = rows[np.unique(episodes.proc_episode[rows], return_index=True)[1]]
    chosen = rng.choice(rows, _exact_count(rows.size, NORKAR_CASE_SHARE, 1), replace=False)
    chosen.sort()
    shift = np.where(rng.random(chosen.size) < 0.1, _pick(rng, (-2, -1, 1, 2), chosen.size), 0)
    return (
        persons.fnr[episodes.person[episodes.proc_episode[chosen]]],
        episodes.proc_date[chosen] + shift.astype("timedelta64[D]"),
    )


def _list_frame(
    registry: str, numbers: np.ndarray, index_date: np.ndarray, run: Run, sent: np.datetime64
) -> Frame:
    """One register's list as load-list would store it; case ids like NORKAR-000123."""
    n = len(numbers)
    first_case = run.ids(registry, n)
    return {
        "registry": np.full(n, registry),
        "fnr": numbers,
        "case_id": np.char.add(
            f"{registry}-", np.char.zfill((first_case + np.arange(n)).astype(str), 6)
        ),
        "index_date": index_date,
        "received_at": np.full(n, sent.astype("datetime64[us]")),
    }


def _reservations(rng: np.random.Generator, persons: Persons, run: Run) -> Frame:
    """Every scope of CONTRACT.md section 1, for a few percent of the relevant persons.

    Most were registered in the years before (some long before the data period), a fifth
    in the last two weeks (after the data they concern, which they still block), and about
    one in eight has been withdrawn since.
    """
    parts = []
    for rule in RESERVATION_RULES:
        pool = (
            np.flatnonzero(persons.in_cohort(rule.cohort))
            if rule.cohort
            else np.arange(len(persons))
        )
        chosen = rng.choice(pool, _exact_count(pool.size, rule.share, rule.minimum), replace=False)
        parts.append((rule, chosen))
    person = np.concatenate([chosen for _, chosen in parts]).astype(np.int64)
    n = len(person)
    recent = _exact_flags(rng, n, 0.2, minimum=1)
    days_ago = np.where(recent, rng.integers(1, 15, n), rng.integers(15, 6 * 365, n))
    registered = _instants(rng, run.today - days_ago.astype("timedelta64[D]"), 0, 86_400)
    room = (run.today.astype("datetime64[us]") - registered) / np.timedelta64(1, "s")
    withdrawn = np.where(
        _exact_flags(rng, n, 0.12),
        registered + _seconds(rng.random(n) * room).astype("timedelta64[us]"),
        np.datetime64("NaT"),
    )
    return {
        "reservation_id": run.ids("reservation", n) + np.arange(n),
        "fnr": persons.fnr[person],
        "registry": np.concatenate([np.full(c.size, r.registry) for r, c in parts]),
        "scope": np.concatenate([np.full(c.size, r.scope) for r, c in parts]),
        "registered_at": registered,
        "withdrawn_at": withdrawn,
    }


def _sync_rows(today: np.datetime64) -> Frame:
    """The nightly synchronisation before ``today``, and one stamped with the current time.

    A delivery refuses when the newest sync is older than its allowed age (36 hours by
    default). The nightly row alone goes stale when the data is generated for a ``today``
    in the past, or used the day after, so a demo would refuse for a reason unrelated to
    what it shows. The second row makes the reservation copy fresh for the real present.
    """
    nightly = today.astype("datetime64[us]") - np.timedelta64(3 * 3600 + 17 * 60, "s")
    now = np.datetime64(datetime.now(UTC).replace(tzinfo=None), "us")
    return {"synced_at": np.array([nightly, now])}


# --- one chunk ----------------------------------------------------------------------------


@dataclass
class Run:
    """What one synthesize() call carries from chunk to chunk."""

    today: np.datetime64
    first_day: np.datetime64
    issuer: NumberIssuer = field(default_factory=NumberIssuer)
    next_id: dict[str, int] = field(default_factory=dict)

    def ids(self, key: str, count: int) -> int:
        """Reserve count consecutive ids (from 1) and return the first."""
        first = self.next_id.get(key, 1)
        self.next_id[key] = first + count
        return first


def _npr(rng: np.random.Generator, run: Run, persons: Persons) -> tuple[Episodes, list[Frame]]:
    """The chunk's received NPR episodes and their npr_episode/diagnosis/procedure rows."""
    vascular, limb = _vascular_procedure_episodes(rng, persons, run.first_day)
    vascular, amputations = _amputations(rng, vascular, limb, run.first_day, run.today)
    episodes = Episodes.concat(
        [
            _background_episodes(rng, persons, run.first_day),
            _cohort_episodes(rng, persons, run.first_day),
            vascular,
            amputations,
        ]
    )
    episodes = _noise_procedures(rng, episodes)
    received = _npr_received(rng, episodes, run.today)
    kept = ~np.isnat(received)
    episodes = episodes.take(kept)
    first_id = run.ids("episode", len(episodes.person))
    frame = _episode_frame(rng, persons, episodes, received[kept], first_id, run.today)
    diagnoses = _npr_diagnoses(rng, episodes, first_id)
    procedures = _npr_procedures(rng, episodes, first_id)
    return episodes, [frame, diagnoses, procedures]


def _chunk(rng: np.random.Generator, run: Run, size: int) -> Iterator[tuple[str, Frame]]:
    """All rows of one chunk of persons, table by table."""
    persons = _persons(rng, size, run.today, run.issuer)
    episodes, npr_frames = _npr(rng, run, persons)
    yield from zip(("npr_episode", "npr_diagnosis", "npr_procedure"), npr_frames, strict=True)
    yield from zip(("kpr_contact", "kpr_diagnosis"), _kpr(rng, persons, run), strict=True)
    yield "reservation", _reservations(rng, persons, run)
    numbers, index_dates = _parkinson_list(rng, persons, episodes, run)
    sent = run.today - np.timedelta64(2, "D") + np.timedelta64(8 * 3600 + 15 * 60, "s")
    yield "register_patient", _list_frame("PARKINSON", numbers, index_dates, run, sent)
    numbers, index_dates = _norkar_cases(rng, persons, episodes)
    sent = run.today - np.timedelta64(5, "D") + np.timedelta64(7 * 3600 + 40 * 60, "s")
    yield "register_patient", _list_frame("NORKAR", numbers, index_dates, run, sent)


# --- loading ------------------------------------------------------------------------------


def _iso(values: np.ndarray) -> list[str]:
    """Dates as YYYY-MM-DD; timestamps as YYYY-MM-DD HH:MM:SS, with .ffffff only where the
    instant has a fraction (garbage where NaT: the caller replaces nulls)."""
    if np.datetime_data(values.dtype)[0] == "D":
        return np.datetime_as_string(values, unit="D").tolist()
    out = np.datetime_as_string(values, unit="us")
    out.view(np.uint32).reshape(-1, out.dtype.itemsize // 4)[:, 10] = ord(" ")  # not ISO's T
    whole = values.astype(np.int64) % 1_000_000 == 0
    return np.where(whole, out.astype("U19"), out).tolist()


def _text(values: np.ndarray, null: str | None) -> list[Any]:
    """A column as the values (SQLite) or COPY text (PostgreSQL) to load, nulls as ``null``.

    Null markers in the generated arrays: NaT, "" and NULL_INT. Booleans load as 0/1 into
    SQLite and t/f into PostgreSQL; the text form is only needed for COPY.
    """
    kind = values.dtype.kind
    missing: np.ndarray | None = None
    if kind == "M":
        missing = np.isnat(values)
        rendered = _iso(values)
    elif kind == "b":
        rendered = (
            values.astype(np.int8).tolist() if null is None else np.where(values, "t", "f").tolist()
        )
    elif kind in "iu":
        missing = values == NULL_INT
        rendered = values.tolist() if null is None else values.astype(str).tolist()
    else:
        missing = values == ""
        rendered = values.tolist()
    if missing is not None and missing.any():
        for row in np.flatnonzero(missing).tolist():
            rendered[row] = null
    return rendered


class Loader(ABC):
    """Bulk inserts per table through the driver's own connection, committed per chunk."""

    def __init__(self, engine: Engine) -> None:
        self._raw = engine.raw_connection()
        self._connection: Any = self._raw.driver_connection

    def write(self, table: str, frame: Frame) -> int:
        """Load a frame in slices of WRITE_ROWS (bounded memory); return its row count."""
        columns = TABLE_COLUMNS[table]
        rows = len(frame[columns[0]])
        for start in range(0, rows, WRITE_ROWS):
            part = [frame[c][start : start + WRITE_ROWS] for c in columns]
            self._write(table, columns, part)
        return rows

    @abstractmethod
    def _write(self, table: str, columns: Sequence[str], part: list[np.ndarray]) -> None:
        """Insert one slice of at most WRITE_ROWS rows."""

    def commit(self) -> None:
        self._connection.commit()

    def close(self) -> None:
        self._raw.close()


class SqliteLoader(Loader):
    """executemany in one transaction per chunk, without fsync during the load.

    WAL lets readers work during the load; synchronous=OFF skips the fsync per commit,
    which costs nothing but a rerun if the machine crashes while generating test data.
    """

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._synchronous = self._connection.execute("PRAGMA synchronous").fetchone()[0]
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=OFF")

    def _write(self, table: str, columns: Sequence[str], part: list[np.ndarray]) -> None:
        placeholders = ", ".join("?" for _ in columns)
        self._connection.executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})",
            zip(*(_text(values, None) for values in part), strict=True),
        )

    def close(self) -> None:
        self._connection.execute(f"PRAGMA synchronous={int(self._synchronous)}")
        super().close()


class PostgresLoader(Loader):
    """COPY in text format through psycopg 3."""

    def _write(self, table: str, columns: Sequence[str], part: list[np.ndarray]) -> None:
        lines = map("\t".join, zip(*(_text(values, r"\N") for values in part), strict=True))
        with (
            self._connection.cursor() as cursor,
            cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            copy.write("\n".join(lines) + "\n")


def _loader(engine: Engine) -> Loader:
    if engine.dialect.name == "sqlite":
        return SqliteLoader(engine)
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        return PostgresLoader(engine)
    raise NotImplementedError("synthetic data loads into SQLite or PostgreSQL with psycopg 3")


def _refuse_if_filled(engine: Engine) -> None:
    """Never mix synthetic rows into a database that already holds data (fail closed)."""
    with engine.connect() as conn:
        for table in TABLE_COLUMNS:
            if conn.execute(text(f"SELECT 1 FROM {table} LIMIT 1")).first() is not None:
                raise SourceNotEmpty(
                    f"table {table} already holds rows; synthesize into an empty database"
                )


def _drop_secondary_indexes(engine: Engine) -> None:
    """Drop the schema's secondary indexes for the load; build them once afterwards.

    Inserting in random received_at order into an index costs more than sorting once at
    the end. Safe because the tables are empty (``_refuse_if_filled``).
    """
    pattern = re.compile(r"CREATE INDEX IF NOT EXISTS (\w+)")
    names = (pattern.search(statement) for statement in statements("schema"))
    with engine.begin() as conn:
        for name in filter(None, names):
            conn.execute(text(f"DROP INDEX IF EXISTS {name.group(1)}"))


def _finish(engine: Engine) -> None:
    """Rebuild the indexes and refresh planner statistics for the first delivery queries."""
    create_schema(engine)
    with engine.begin() as conn:
        for table in TABLE_COLUMNS:
            conn.execute(text(f"ANALYZE {table}"))


def synthesize(
    engine: Engine,
    persons: int,
    seed: int = 0,
    today: date | None = None,
    progress: bool = False,
) -> SynthSummary:
    """Create the source tables and fill them with synthetic data for ``persons`` persons.

    Deterministic for a given seed and today (default: today's UTC date). Data covers the
    three years before today; nothing was received on or after today 00:00. Refuses with
    SourceNotEmpty if the tables already hold rows. Persons are generated and committed in
    chunks of CHUNK_PERSONS (about 0.5 GB of memory at most, whatever the total).
    """
    if persons < 1:
        raise ValueError("persons must be at least 1")
    today = today or datetime.now(UTC).date()
    run = Run(today=np.datetime64(today, "D"), first_day=np.datetime64(today, "D") - PERIOD_DAYS)
    create_schema(engine)
    _refuse_if_filled(engine)
    _drop_secondary_indexes(engine)
    summary = SynthSummary(persons=persons)
    chunks = range(0, persons, CHUNK_PERSONS)
    seeds = np.random.SeedSequence(seed).spawn(len(chunks))
    started = time.monotonic()
    loader = _loader(engine)
    try:
        for done, chunk_seed in zip(chunks, seeds, strict=True):
            size = min(CHUNK_PERSONS, persons - done)
            for table, frame in _chunk(np.random.default_rng(chunk_seed), run, size):
                summary.add(table, loader.write(table, frame))
            loader.commit()
            if progress:
                _report(summary, done + size, persons, started)
        summary.add("reservation_sync", loader.write("reservation_sync", _sync_rows(run.today)))
        loader.commit()
    finally:
        loader.close()
        _finish(engine)
    return summary


def _report(summary: SynthSummary, done: int, persons: int, started: float) -> None:
    print(
        f"synth: {done}/{persons} persons, {summary.npr_episode} episodes, "
        f"{summary.kpr_contact} contacts, {time.monotonic() - started:.0f} s",
        file=sys.stderr,
        flush=True,
    )
