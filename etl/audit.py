"""The disclosure log: one row per delivery attempt, kept in the state database.

Every disclosure must be logged: to whom, on which legal basis, for which period, which
variables and how many records (DOMAIN.md). A row is inserted when an attempt starts and
completed when it ends, so a run that dies half-way leaves a visible ``running`` row rather
than no trace. The delivery state (where the next default period starts) is derived from
the same rows, so the log and the state can never disagree.

The state database is any SQLAlchemy URL (SQLite by default, PostgreSQL in production); the
SQL lives in ``sql/state_*.sql`` with bound parameters and the schema is created on first use.
Timestamps are stored as naive UTC. Structured fields are JSON text, portable to both.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Date, DateTime, exc, text
from sqlalchemy.engine import Connection, CursorResult

from etl import __version__
from etl.period import Period
from etl.source import bind, make_engine, statements

FINISHED_STATUSES = frozenset({"published", "unchanged", "validation_failed", "failed"})
DELIVERED_STATUSES = frozenset({"published", "unchanged"})
REASON_MAX_CHARS = 500
STATEMENT_TIMEOUT_SECONDS = 60

_JSON_COLUMNS = ("variables", "excluded", "coverage", "files")
# SQLite returns dates and timestamps as text; typing the result columns parses them.
_RESULT_TYPES = {
    "period_from": Date,
    "period_to": Date,
    "reservations_as_of": DateTime,
    "started_at": DateTime,
    "finished_at": DateTime,
}
_DIGIT_RUN = re.compile(r"\d{11,}")


class DisclosureLog:
    """The disclosure log of one state database."""

    def __init__(self, state_url: str) -> None:
        # The log is written while a delivery holds its lock: a hung state database must fail.
        self._engine = make_engine(state_url, statement_timeout=STATEMENT_TIMEOUT_SECONDS)
        try:
            self._create_schema()
        except exc.IntegrityError:
            # Two first runs racing on PostgreSQL: the loser's CREATE ... IF NOT EXISTS
            # collides in the catalogue, and by now the winner's tables exist.
            self._create_schema()

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def start(
        self,
        registry: str,
        delivery: str,
        period: Period,
        legal_basis: str,
        spec_sha256: str,
        variables: Sequence[str],
        reservations_as_of: datetime,
    ) -> str:
        """Log that a delivery attempt begins; return its attempt_id for finish."""
        attempt_id = str(uuid.uuid4())
        params = {
            "attempt_id": attempt_id,
            "registry": registry,
            "delivery": delivery,
            "period_from": period.start,
            "period_to": period.end,
            "legal_basis": legal_basis,
            "spec_sha256": spec_sha256,
            "variables": json.dumps(list(variables)),
            "reservations_as_of": _naive_utc(reservations_as_of),
            "software_version": __version__,
            "started_at": _utc_now(),
        }
        with self._engine.begin() as conn:
            _execute(conn, "state_start", params)
        return attempt_id

    def finish(
        self,
        attempt_id: str,
        status: str,
        *,
        row_count: int | None = None,
        person_count: int | None = None,
        excluded: dict[str, Any] | None = None,
        coverage: dict[str, Any] | None = None,
        files: list[dict[str, Any]] | None = None,
        drop_path: str | None = None,
        version: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Log how a running attempt ended. A finished attempt cannot be finished again."""
        if status not in FINISHED_STATUSES:
            raise ValueError(f"status must be one of {sorted(FINISHED_STATUSES)}, got {status!r}")
        params = {
            "attempt_id": attempt_id,
            "status": status,
            "row_count": row_count,
            "person_count": person_count,
            "excluded": _json_or_none(excluded),
            "coverage": _json_or_none(coverage),
            "files": _json_or_none(files),
            "drop_path": None if drop_path is None else str(drop_path),
            "version": version,
            "reason": _safe_reason(reason),
            "finished_at": _utc_now(),
        }
        with self._engine.begin() as conn:
            updated = _execute(conn, "state_finish", params).rowcount
        if updated != 1:
            raise ValueError(f"attempt {attempt_id} is unknown or already finished")

    def last_delivered_end(self, registry: str, delivery: str) -> date | None:
        """The end of the latest period that reached the register, if any.

        Published and unchanged attempts count (the register has that period's data);
        failed, quarantined and still running ones do not.
        """
        with self._engine.connect() as conn:
            return _select(
                conn, "state_last_delivered_end", {"registry": registry, "delivery": delivery}
            ).scalar()

    def attempts(self, registry: str | None = None) -> list[dict[str, Any]]:
        """Every attempt (of one register, if given), oldest first, JSON fields decoded."""
        with self._engine.connect() as conn:
            rows = _select(conn, "state_attempts", {"registry": registry}).mappings().all()
        return [_decoded(dict(row)) for row in rows]

    def _create_schema(self) -> None:
        with self._engine.begin() as conn:
            for statement in statements("state_schema"):
                conn.execute(text(statement))


def _execute(conn: Connection, name: str, params: dict[str, Any]) -> CursorResult[Any]:
    """Run the one statement of sql/<name>.sql with its parameters bound."""
    (statement,) = statements(name)
    return conn.execute(text(statement), bind(conn, params))


def _select(conn: Connection, name: str, params: dict[str, Any]) -> CursorResult[Any]:
    """Like _execute, with date and timestamp columns parsed whatever the dialect."""
    (statement,) = statements(name)
    return conn.execute(text(statement).columns(**_RESULT_TYPES), bind(conn, params))


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    for column in _JSON_COLUMNS:
        if row[column] is not None:
            row[column] = json.loads(row[column])
    return row


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _safe_reason(reason: str | None) -> str | None:
    """A short reason with any run of 11+ digits masked.

    Reasons often come from exception messages; masking keeps an identity number that slipped
    into one out of the log, which outlives the data it describes.
    """
    if reason is None:
        return None
    return _DIGIT_RUN.sub("<number>", reason)[:REASON_MAX_CHARS]


def _naive_utc(value: datetime) -> datetime:
    return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
