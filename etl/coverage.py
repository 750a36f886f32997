"""Coverage (dekningsgrad) of a register, measured on a complement delivery.

The national coverage service matches persons between a register and NPR over the register's
inclusion criteria and counts those only in the register, only in NPR and in both; coverage
is (only register + both) / (only register + only NPR + both), and below 0.6 is low
(DOMAIN.md). On one delivery period this is:

- NPR's persons: the persons of the delivery's NPR rows (their records qualify by the
  spec and were received in the period); ``registered`` rows are in both, ``missing`` rows
  only in NPR;
- the register's persons: those on its list with a case whose index_date lies in the
  period; the ones NPR's rows do not show are only in the register.

People with an active OPT_OUT for the register count on neither side: the register deletes
them. A register listed person whose NPR rows were pseudonymised is matched by pseudonym.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import product
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import text
from sqlalchemy.engine import Connection

from etl.drop import SMALL_CELL, suppress_small
from etl.period import Period
from etl.pseudonym import Pseudonymiser
from etl.source import bind, sql_text

LOW_COVERAGE = 0.6


@dataclass(frozen=True)
class Coverage:
    only_register: int
    only_npr: int
    both: int

    @property
    def persons(self) -> int:
        return self.only_register + self.only_npr + self.both

    @property
    def ratio(self) -> float | None:
        """Register coverage, or None when neither side has anyone."""
        if not self.persons:
            return None
        return (self.only_register + self.both) / self.persons

    def counts(self) -> dict[str, Any]:
        """Exact counts and ratio, for the disclosure log (internal)."""
        return asdict(self) | {"coverage": self.ratio}

    @property
    def published_range(self) -> tuple[float, float] | None:
        """The coverage as far as the published cells tell it: the lowest and highest ratio
        over every count a "<5" cell may stand for, widened outwards to 3 decimals.

        An exact ratio beside exact neighbouring cells would give a suppressed cell away
        ((r + 240) / (r + 251) = 0.957 says r = 3), so where a cell is suppressed only the
        range is published. Without suppressed cells both ends are the rounded ratio.
        """
        if not self.persons:
            return None
        cells = (self.only_register, self.only_npr, self.both)
        if not any(suppress_small(n) != n for n in cells):
            exact = round((self.only_register + self.both) / self.persons, 3)
            return exact, exact
        choices = [range(1, SMALL_CELL) if suppress_small(n) != n else (n,) for n in cells]
        ratios = [(r + b) / (r + n + b) for r, n, b in product(*choices)]
        return math.floor(min(ratios) * 1000) / 1000, math.ceil(max(ratios) * 1000) / 1000

    @property
    def published_low(self) -> bool | None:
        """Low as the published range shows it; None where the range straddles the threshold
        (saying which side would tell more than the suppressed cells do)."""
        shown = self.published_range
        if shown is None:
            return False
        lowest, highest = shown
        if highest < LOW_COVERAGE:
            return True
        return False if lowest >= LOW_COVERAGE else None

    def published(self) -> dict[str, Any]:
        """As published in a manifest or report: cells under 5 shown as "<5", and the ratio
        exact only where no cell is (else null, with the range it lies in)."""
        shown = self.published_range
        lowest, highest = shown if shown is not None else (None, None)
        return {
            "only_register": suppress_small(self.only_register),
            "only_npr": suppress_small(self.only_npr),
            "both": suppress_small(self.both),
            "coverage": lowest if lowest == highest else None,
            "coverage_range": None if shown is None else [lowest, highest],
            "low": self.published_low,
        }


def _persons(rows: pa.Table) -> set[str]:
    people = set(rows.column("fnr").drop_null().to_pylist())
    if "pseudonym" in rows.column_names:
        people |= set(rows.column("pseudonym").drop_null().to_pylist())
    return people


def measure(
    delivered: pa.Table,
    register_persons: set[str],
    opted_out: set[str],
    pseudonymiser: Pseudonymiser | None,
) -> Coverage:
    """Coverage from a complement delivery's rows and the register's persons of its period."""
    npr = delivered.filter(pc.equal(delivered.column("source"), "NPR"))
    registered = npr.filter(pc.equal(npr.column("status"), "registered"))
    both = _persons(registered)
    only_npr = _persons(npr) - both
    npr_people = both | only_npr

    def shown_by_npr(person: str) -> bool:
        return person in npr_people or (
            pseudonymiser is not None and pseudonymiser(person) in npr_people
        )

    only_register = sum(1 for p in register_persons - opted_out if not shown_by_npr(p))
    return Coverage(only_register=only_register, only_npr=len(only_npr), both=len(both))


def register_persons(conn: Connection, registry: str, period: Period) -> set[str]:
    """The register's persons of a period (sql/register_period_persons.sql)."""
    params = {"registry": registry, "start_date": period.start, "end_date": period.end}
    result = conn.execute(text(sql_text("register_period_persons")), bind(conn, params))
    return {fnr for (fnr,) in result}
