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

from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import text
from sqlalchemy.engine import Connection

from etl.drop import suppress_small
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

    def published(self) -> dict[str, Any]:
        """As published in a manifest or report: cells under 5 shown as "<5"."""
        ratio = self.ratio
        return {
            "only_register": suppress_small(self.only_register),
            "only_npr": suppress_small(self.only_npr),
            "both": suppress_small(self.both),
            "coverage": None if ratio is None else round(ratio, 3),
            "low": ratio is not None and ratio < LOW_COVERAGE,
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
