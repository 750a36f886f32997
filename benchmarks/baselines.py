"""The two baselines a delivery is compared with, each run as its own child process.

``raw``: the floor. The delivery's own query (sql/population.sql rendered by etl.extract,
so the same selection, joins and reservation anti-join) exported straight to Parquet with
no shaping and no validation: on PostgreSQL through ``COPY (...) TO STDOUT`` read as CSV by
pyarrow's streaming reader, on SQLite through a plain cursor. A delivery cannot be cheaper
than the database's answer plus writing it.

``naive``: what a data scientist would write without the project: every table read whole
with ``pd.read_sql``, then filtered, normalised, merged and aggregated in pandas. It shows
what the database-side design buys, and where memory runs out.

Usage: ``python -m benchmarks.baselines raw|naive URL FROM TO OUT.parquet``.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from datetime import date, datetime, time
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy import create_engine

from etl.extract import RAW_TYPES, columns, criteria, parameters, render
from etl.period import Period
from etl.settings import PROJECT_DIR
from etl.source import bind_value, make_engine
from etl.spec import Spec, find_spec

PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd"}
BATCH_ROWS = 50_000


def _spec() -> Spec:
    return find_spec(PROJECT_DIR / "registers", "PHV")


def _query(spec: Spec, period: Period) -> tuple[str, dict[str, Any]]:
    """The delivery's SQL text and parameters, reservations as of the end of the period."""
    as_of = datetime.combine(period.end, time())
    return render(spec.delivery, len(criteria(spec))), parameters(spec, period, as_of)


def _query_schema(spec: Spec) -> pa.Schema:
    control = [("kind", pa.int32()), ("reason", pa.string()), ("excluded_records", pa.int64())]
    return pa.schema(control + [(name, RAW_TYPES[name]) for name in columns(spec.delivery)])


class _CopyStream(io.RawIOBase):
    """COPY TO STDOUT's chunks as a file, for pyarrow's streaming CSV reader."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._pending = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = bytes(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size], self._pending = self._pending[:size], self._pending[size:]
        return size


def raw_postgresql(url: str, period: Period, out: str) -> int:
    """COPY the delivery query's result to Parquet; returns the rows written."""
    import psycopg

    spec = _spec()
    sql, params = _query(spec, period)
    # COPY takes no bind parameters: psycopg's client-side cursor quotes them into the text.
    sql = re.sub(r"(?<!:):(\w+)", r"%(\1)s", sql)
    schema = _query_schema(spec)
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    rows = 0
    with psycopg.connect(conninfo) as conn, psycopg.ClientCursor(conn) as cursor:
        literal = cursor.mogrify(sql, params)
        with cursor.copy(f"COPY ({literal}) TO STDOUT WITH (FORMAT csv)") as copy:
            reader = pacsv.open_csv(
                io.BufferedReader(_CopyStream(iter(copy)), buffer_size=1 << 20),
                read_options=pacsv.ReadOptions(column_names=schema.names, block_size=1 << 22),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict(zip(schema.names, schema.types, strict=True))
                ),
            )
            with pq.ParquetWriter(out, schema, **PARQUET_OPTIONS) as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    rows += batch.num_rows
    return rows


def raw_sqlite(url: str, period: Period, out: str) -> int:
    """Run the delivery query with a plain sqlite3 cursor, batches straight to Parquet."""
    spec = _spec()
    sql, params = _query(spec, period)
    schema = _query_schema(spec)
    engine = make_engine(url)  # registers regexp_replace, date_part, string_agg
    raw = engine.raw_connection()
    rows = 0
    try:
        cursor = raw.driver_connection.execute(
            sql, {k: bind_value("sqlite", v) for k, v in params.items()}
        )
        with pq.ParquetWriter(out, schema, **PARQUET_OPTIONS) as writer:
            while batch := cursor.fetchmany(BATCH_ROWS):
                arrays = [
                    pa.array(list(column), pa.string()).cast(kind)
                    if pa.types.is_temporal(kind)
                    else pa.array(list(column), kind)
                    for column, kind in zip(zip(*batch, strict=True), schema.types, strict=True)
                ]
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
                rows += len(batch)
    finally:
        raw.close()
        engine.dispose()
    return rows


def _normalise(codes: pd.Series) -> pd.Series:
    return codes.str.upper().str.replace(r"[^A-Z0-9]", "", regex=True)


def naive(url: str, period: Period, out: str) -> int:
    """The pandas version: whole tables in, filter and merge in pandas, Parquet out."""
    engine = create_engine(url)
    episodes = pd.read_sql("SELECT * FROM npr_episode", engine)
    npr_dx = pd.read_sql("SELECT * FROM npr_diagnosis", engine)
    contacts = pd.read_sql("SELECT * FROM kpr_contact", engine)
    kpr_dx = pd.read_sql("SELECT * FROM kpr_diagnosis", engine)
    reservations = pd.read_sql("SELECT * FROM reservation", engine)
    engine.dispose()

    start, end = (pd.Timestamp(b) for b in period.bounds())
    as_of = end
    for frame in (episodes, contacts):
        frame["received_at"] = pd.to_datetime(frame["received_at"], format="ISO8601")
    episodes["start_date"] = pd.to_datetime(episodes["start_date"])
    episodes["end_date"] = pd.to_datetime(episodes["end_date"])
    contacts["contact_date"] = pd.to_datetime(contacts["contact_date"])

    episodes = episodes[
        (episodes.received_at >= start)
        & (episodes.received_at < end)
        & (episodes.sector == "PHV")
        & (episodes.start_date.dt.year - episodes.birth_year >= 18)
    ]
    contacts = contacts[
        (contacts.received_at >= start)
        & (contacts.received_at < end)
        & (contacts.contact_date.dt.year - contacts.birth_year >= 18)
    ]
    npr_dx = npr_dx.dropna(subset=["code"])
    npr_dx["code"] = _normalise(npr_dx["code"])
    kpr_dx = kpr_dx.dropna(subset=["code"])
    kpr_dx["code"] = _normalise(kpr_dx["code"])
    kpr_dx["system"] = kpr_dx["code_system"].str.lower().str.replace("-", "")

    psychosis = npr_dx["code"].str[:3].between("F20", "F29")
    npr_ids = npr_dx.loc[psychosis, "episode_id"].unique()
    kpr_hit = ((kpr_dx.system == "icpc2") & kpr_dx["code"].str[:3].isin(["P72", "P73", "P98"])) | (
        (kpr_dx.system == "icd10") & kpr_dx["code"].str[:3].between("F20", "F29")
    )
    kpr_ids = kpr_dx.loc[kpr_hit, "contact_id"].unique()

    npr = episodes[episodes.episode_id.isin(npr_ids)].merge(
        npr_dx.sort_values("seq").groupby("episode_id")["code"].agg(list).rename("diagnoses"),
        left_on="episode_id",
        right_index=True,
    )
    kpr = contacts[contacts.contact_id.isin(kpr_ids)].merge(
        kpr_dx.sort_values("seq").groupby("contact_id")["code"].agg(list).rename("diagnoses"),
        left_on="contact_id",
        right_index=True,
    )
    npr = npr.rename(columns={"episode_id": "record_id"}).assign(source="NPR")
    kpr = kpr.rename(columns={"contact_id": "record_id", "contact_date": "start_date"}).assign(
        source="KPR", end_date=lambda f: f.start_date
    )
    records = pd.concat([npr, kpr], ignore_index=True)

    reservations["registered_at"] = pd.to_datetime(reservations["registered_at"], format="ISO8601")
    reservations["withdrawn_at"] = pd.to_datetime(reservations["withdrawn_at"], format="ISO8601")
    active = reservations[
        (reservations.registered_at <= as_of)
        & (reservations.withdrawn_at.isna() | (reservations.withdrawn_at > as_of))
    ]
    opt_out = set(active.loc[(active.registry == "PHV") & (active.scope == "OPT_OUT"), "fnr"])
    no_p2 = set(active.loc[(active.registry == "KPR") & (active.scope == "NO_PURPOSE2"), "fnr"])
    no_fnr_npr = set(active.loc[(active.registry == "NPR") & (active.scope == "NO_FNR"), "fnr"])
    no_fnr_kpr = set(active.loc[(active.registry == "KPR") & (active.scope == "NO_FNR"), "fnr"])
    out_rows = (
        records.fnr.isin(opt_out)
        | ((records.source == "KPR") & records.fnr.isin(no_p2 | no_fnr_kpr))
        | ((records.source == "NPR") & records.fnr.isin(no_fnr_npr))
    )
    records = records[~out_rows].sort_values(["source", "record_id"])
    records["main_diagnosis"] = records["diagnoses"].str[0]
    keep = [
        "source", "record_id", "fnr", "sex", "birth_year", "municipality", "health_trust",
        "sector", "specialty", "care_level", "start_date", "end_date", "service_type",
        "main_diagnosis", "diagnoses",
    ]  # fmt: skip
    records = records.reindex(columns=keep)
    records.to_parquet(out, index=False, compression="zstd")
    return len(records)


BASELINES = {"raw": {"postgresql": raw_postgresql, "sqlite": raw_sqlite}, "naive": naive}


def main(argv: list[str]) -> int:
    kind, url, start, end, out = argv
    period = Period(date.fromisoformat(start), date.fromisoformat(end))
    chosen = BASELINES[kind]
    function = chosen[url.split(":", 1)[0].split("+", 1)[0]] if isinstance(chosen, dict) else chosen
    rows = function(url, period, out)
    print(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
