"""Source database access: engines, the schema, SQL files and streaming reads.

The same SQL text must run on SQLite (the embedded default) and PostgreSQL (production).
Where the two dialects differ in a function the queries need, the queries use the
PostgreSQL spelling and SQLite gets a small Python implementation registered on every new
connection (``regexp_replace``, ``date_part``, ``string_agg``). That keeps one text per
query in sql/ and puts the dialect difference in one place, here.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

_EPOCH = datetime(1970, 1, 1)
CONNECT_TIMEOUT_SECONDS = 15


class SourceError(RuntimeError):
    """The source database could not be reached or answered with an error."""


@lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _regexp_replace(
    value: str | None, pattern: str, replacement: str, flags: str = ""
) -> str | None:
    """PostgreSQL's regexp_replace for SQLite ('g' replaces every match)."""
    if value is None:
        return None
    return _compiled(pattern).sub(replacement, str(value), count=0 if "g" in flags else 1)


def _parse_instant(value: str) -> datetime:
    """An ISO date or timestamp as SQLite stores it (contract section 1)."""
    return datetime.fromisoformat(value) if len(value) > 10 else datetime.fromisoformat(value[:10])


def _date_part(field: str, value: Any) -> float | None:
    """PostgreSQL's date_part for SQLite, for the fields the queries use."""
    if value is None:
        return None
    instant = _parse_instant(str(value))
    if field == "year":
        return float(instant.year)
    if field == "epoch":
        return (instant - _EPOCH).total_seconds()
    raise ValueError(f"date_part field not supported on SQLite: {field}")


class _StringAgg:
    """PostgreSQL's string_agg for SQLite (before 3.44): joins non-null values."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.separator = ""

    def step(self, value: Any, separator: str) -> None:
        if value is not None:
            self.values.append(str(value))
            self.separator = separator

    def finalize(self) -> str | None:
        return self.separator.join(self.values) if self.values else None


def _register_sqlite_functions(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    dbapi_connection.create_function("regexp_replace", 4, _regexp_replace, deterministic=True)
    dbapi_connection.create_function("date_part", 2, _date_part, deterministic=True)
    if sqlite3.sqlite_version_info < (3, 44):
        dbapi_connection.create_aggregate("string_agg", 2, _StringAgg)
    dbapi_connection.execute("PRAGMA busy_timeout = 30000")


def _limit_postgresql_statements(seconds: float) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, false)", (str(int(seconds * 1000)),)
            )
        dbapi_connection.commit()

    return on_connect


def _limit_sqlite_statements(engine: Engine, seconds: float) -> None:
    """SQLite has no statement timeout: a progress handler interrupts a statement that has
    run longer than ``seconds`` (sqlite3 then raises OperationalError 'interrupted')."""

    def on_connect(dbapi_connection: sqlite3.Connection, record: Any) -> None:
        deadline = record.info.setdefault("deadline", [float("inf")])
        dbapi_connection.set_progress_handler(lambda: int(time.monotonic() > deadline[0]), 10_000)

    def before_execute(conn: Any, *_args: Any) -> None:
        # conn.connection.info is the connection record's info that on_connect filled
        conn.connection.info["deadline"][0] = time.monotonic() + seconds

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "before_cursor_execute", before_execute)


def make_engine(url: str, statement_timeout: float | None = None) -> Engine:
    """An engine for a source or state URL, with the SQLite shims where needed.

    ``statement_timeout`` (seconds) makes a query that hangs fail instead of holding a
    nightly run forever; the failure is an ordinary database error, which the DAGs retry.
    """
    if url.startswith("sqlite") and ":memory:" not in url:
        path = url.split("///", 1)[-1].split("?", 1)[0]
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    # A database host that drops packets must fail the run, not hang it: PostgreSQL
    # connections give up after CONNECT_TIMEOUT_SECONDS.
    connect_args = (
        {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if url.startswith("postgres") else {}
    )
    engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _register_sqlite_functions)
        if statement_timeout:
            _limit_sqlite_statements(engine, statement_timeout)
    elif engine.dialect.name == "postgresql" and statement_timeout:
        event.listen(engine, "connect", _limit_postgresql_statements(statement_timeout))
    return engine


@cache
def sql_text(name: str) -> str:
    """The text of sql/<name>.sql without its comment lines.

    Comments are for the reader of the file; they are dropped before execution because a
    ``:name`` in a comment would otherwise be taken for a bind parameter.
    """
    text_ = (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")
    return "\n".join(ln for ln in text_.splitlines() if not ln.lstrip().startswith("--"))


def statements(name: str) -> list[str]:
    """The statements of a script in sql/, split on ';' at line ends."""
    parts = re.split(r";\s*$", sql_text(name), flags=re.MULTILINE)
    return [part.strip() for part in parts if part.strip()]


def create_schema(engine: Engine) -> None:
    """Create the source tables and their indexes (idempotent)."""
    with engine.begin() as conn:
        for statement in statements("schema"):
            conn.execute(text(statement))


def bind_value(dialect: str, value: Any) -> Any:
    """A parameter value as the dialect stores it.

    SQLite keeps dates and timestamps as ISO text (contract section 1), with or without
    fractional seconds, and compares them as text. A timestamp is bound in its shortest
    form: whole seconds without a fraction, otherwise without trailing zeros. That form
    sorts at or before every stored spelling of the same instant ('... 10:00:00.25' before
    '... 10:00:00.250000'), and before every later instant, so a column compared with ">="
    or "<" against it is right for every spelling. The SQL in sql/ compares timestamps only
    that way (see etl.reservations.active_at for "active at T").
    """
    if dialect != "sqlite":
        return value
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        whole = value.strftime("%Y-%m-%d %H:%M:%S")
        fraction = f"{value.microsecond:06d}".rstrip("0")
        return f"{whole}.{fraction}" if fraction else whole
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return int(value)
    return value


def bind(conn: Connection, params: Mapping[str, Any]) -> dict[str, Any]:
    """All parameters of a statement, prepared for the connection's dialect."""
    dialect = conn.dialect.name
    return {key: bind_value(dialect, value) for key, value in params.items()}


def stream(
    conn: Connection, sql: str, params: Mapping[str, Any], batch_rows: int = 50_000
) -> Iterator[Sequence[Sequence[Any]]]:
    """Run one query and yield its rows in lists of at most batch_rows.

    On PostgreSQL this uses a server-side cursor, so memory is bounded by batch_rows
    whatever the size of the result.
    """
    result = conn.execution_options(stream_results=True, yield_per=batch_rows).execute(
        text(sql), bind(conn, params)
    )
    try:
        while True:
            rows = result.fetchmany(batch_rows)
            if not rows:
                return
            yield rows
    finally:
        result.close()
