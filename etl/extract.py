"""The selection of one delivery, run inside the database and streamed out as Arrow.

Each delivery type has a file in sql/ that includes sql/selection.sql (which records qualify
and which reservation keeps a record out) and adds its own final SELECT. The database
does the selection, the joins and the reservation filtering; Python only receives the records
that go out, plus one count per reason for the records left out.

The spec's code patterns and sectors become rows of a VALUES list whose cells are bound
parameters: the SQL text depends only on how many there are, never on their values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
from sqlalchemy.engine import Connection

from etl.period import Period
from etl.reservations import active_at
from etl.source import sql_text, stream
from etl.spec import Spec

# Every column a delivery query may return, with its Arrow type. Queries return a subset.
RAW_TYPES: dict[str, pa.DataType] = {
    "source": pa.string(),
    "record_id": pa.int64(),
    "fnr": pa.string(),
    "sex": pa.int16(),
    "birth_year": pa.int16(),
    "municipality": pa.string(),
    "institution_id": pa.string(),
    "health_trust": pa.string(),
    "sector": pa.string(),
    "specialty": pa.string(),
    "care_level": pa.int16(),
    "urgency": pa.int16(),
    "start_date": pa.date32(),
    "end_date": pa.date32(),
    "discharge_status": pa.int16(),
    "service_type": pa.int16(),
    "received_at": pa.timestamp("us"),
    "codes": pa.string(),
    "no_fnr": pa.int8(),
    "status": pa.string(),
    "event": pa.string(),
    "case_id": pa.string(),
    "event_date": pa.date32(),
    "index_date": pa.date32(),
}

# The record columns every delivery query returns, then those of each delivery type.
BASE_COLUMNS = (
    "source",
    "record_id",
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
    "received_at",
    "codes",
    "no_fnr",
)
TYPE_COLUMNS: dict[str, tuple[str, ...]] = {
    "population": (),
    "complement": ("status",),
    "new_information": ("event", "case_id", "event_date", "index_date"),
}
# The order of delivered rows: what identifies a row of each type.
ROW_KEYS: dict[str, tuple[str, ...]] = {
    "population": ("source", "record_id"),
    "complement": ("source", "record_id"),
    "new_information": ("source", "record_id", "event", "case_id"),
}

# The leading columns of every delivery query: a row kind (0 = count of left-out records,
# 1 = a record), the reason and the count on kind-0 rows.
_CONTROL_COLUMNS = 3

# Rows fetched from the database at a time. A fetch is held as Python tuples (about 1.5 kB a
# row) before it becomes Arrow, so this sets extraction's peak memory: 10,000 rows keep a
# full year at 10 million episodes within 1.2x the peak at 1 million (50,000 rows: 1.47x).
FETCH_ROWS = 10_000
# The staged file's row groups follow the query's result, not the fetches: row group k holds
# the delivered records among result rows [k * GROUP_RESULT_ROWS, (k + 1) * GROUP_RESULT_ROWS),
# count rows included. A rerun with the same data must write the same bytes (the drop
# compares checksums), whatever the fetch size. 50,000 because the first releases fetched
# 50,000 rows at a time and wrote one row group per fetch: the drops they published come
# out byte for byte the same (checked against commit 46beadf on both dialects).
GROUP_RESULT_ROWS = 50_000


@dataclass
class Extraction:
    """What one delivery query produced besides its records."""

    excluded: Counter[str] = field(default_factory=Counter)


def criteria(spec: Spec) -> list[tuple[str, str, str, int]]:
    """The spec's code patterns and sectors as (kind, low, high, negate) rows."""
    rows: list[tuple[str, str, str, int]] = []
    sel = spec.selection
    for kind, codes in (
        ("icd10", sel.icd10),
        ("icpc2", sel.icpc2),
        ("ncsp", sel.ncsp),
        ("ncrp", sel.ncrp),
    ):
        rows.extend((kind, p.low, p.high, int(p.negate)) for p in codes.patterns)
    rows.extend(("sector", sector, sector, 0) for sector in sel.sectors)
    if spec.follow_up is not None:
        rows.extend(
            ("follow_up", p.low, p.high, int(p.negate)) for p in spec.follow_up.ncsp.patterns
        )
    return rows


def columns(delivery: str) -> tuple[str, ...]:
    """The record columns a delivery type's query returns, in order."""
    return BASE_COLUMNS + TYPE_COLUMNS[delivery]


def render(delivery: str, n_criteria: int) -> str:
    """The query of a delivery type: sql/<delivery>.sql with the shared selection before it,
    sql/output.sql after it, and n criterion placeholders.

    Only placeholders and column names from this module are rendered into the text; every
    value is bound.
    """
    placeholders = "".join(
        f", (CAST(:ck{i} AS VARCHAR(16)), CAST(:cl{i} AS VARCHAR(16)),"
        f" CAST(:ch{i} AS VARCHAR(16)), CAST(:cn{i} AS INTEGER))"
        for i in range(n_criteria)
    )
    names = columns(delivery)
    output = (
        sql_text("output")
        .replace("{{ padding }}", "".join(f", NULL AS {name}" for name in names))
        .replace("{{ columns }}", "".join(f", {name}" for name in names))
        .replace("{{ order }}", ", ".join(("kind", *ROW_KEYS[delivery])))
    )
    selection = sql_text("selection").replace("{{ criteria }}", placeholders)
    return sql_text(delivery).replace("{{ selection }}", selection).replace("{{ output }}", output)


def parameters(spec: Spec, period: Period, as_of: datetime) -> dict[str, Any]:
    """The bound parameters of a delivery query."""
    start, end = period.bounds()
    params: dict[str, Any] = {
        "registry": spec.code,
        "period_start": start,
        "period_end": end,
        **active_at(as_of),
        "use_npr": int("NPR" in spec.sources),
        "use_kpr": int("KPR" in spec.sources),
        "any_sector": int(not spec.selection.sectors),
        "min_age": spec.selection.min_age,
        "main_only": int(spec.selection.diagnosis_position == "main"),
        "honour_opt_out": int(spec.reservations.registry_opt_out),
        "pseudonymise": int(spec.pseudonymises),
        "with_follow_up": int(spec.follow_up is not None),
    }
    if spec.follow_up is not None:
        params["window_days"] = spec.follow_up.window_days
        params["match_days"] = spec.follow_up.new_case_match_days
    for i, (kind, low, high, negate) in enumerate(criteria(spec)):
        params.update({f"ck{i}": kind, f"cl{i}": low, f"ch{i}": high, f"cn{i}": negate})
    return params


def _column(values: tuple[Any, ...], kind: pa.DataType) -> pa.Array:
    """One column of a batch; SQLite's ISO text dates and timestamps are parsed by Arrow."""
    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, str) and (pa.types.is_date(kind) or pa.types.is_timestamp(kind)):
        return pa.array(values, pa.string()).cast(kind)
    if isinstance(sample, bool):
        values = tuple(None if v is None else int(v) for v in values)
    return pa.array(values, kind)


def _to_batch(names: list[str], rows: list[Any]) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    return pa.RecordBatch.from_arrays(
        [_column(tuple(col), RAW_TYPES[n]) for n, col in zip(names, columns, strict=True)],
        names=names,
    )


@dataclass(frozen=True)
class Part:
    """Records of the query's result that all belong to one row group of the staged file."""

    group: int  # the window of GROUP_RESULT_ROWS result rows the records came from
    batch: pa.RecordBatch


def _windows(fetches: Iterable[Sequence[Any]], window: int) -> Iterator[tuple[int, Sequence[Any]]]:
    """The fetched rows cut so that no piece straddles a window of ``window`` result rows,
    each piece with the number of its window."""
    position = 0
    for rows in fetches:
        offset = 0
        while offset < len(rows):
            group, into = divmod(position, window)
            take = min(len(rows) - offset, window - into)
            yield group, rows[offset : offset + take]
            offset += take
            position += take


def run(
    conn: Connection, spec: Spec, params: Mapping[str, Any], extraction: Extraction
) -> Iterator[Part]:
    """Stream the records of the spec's delivery as Arrow batches of the raw columns, each
    tagged with its row group (see GROUP_RESULT_ROWS).

    Counts of left-out records are added to ``extraction.excluded`` as they arrive (they come
    first in the result). Rows are fetched FETCH_ROWS at a time (read when called, so a test
    can vary it); the groups do not depend on it.
    """
    sql = render(spec.delivery, len(criteria(spec)))
    names = list(columns(spec.delivery))
    fetches = stream(conn, sql, params, FETCH_ROWS)
    for group, rows in _windows(fetches, GROUP_RESULT_ROWS):
        records = []
        for row in rows:
            if row[0] == 0:
                extraction.excluded[row[1]] += int(row[2])
            else:
                records.append(row[_CONTROL_COLUMNS:])
        if records:
            yield Part(group, _to_batch(names, records))
