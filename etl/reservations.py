"""The reservation copy must be fresh: a stale list fails closed.

Reservations are synchronised from Helsenorge into the source database. If that
synchronisation stops, the copy silently misses everyone who reserved since, and a delivery
would disclose them. So where the source has a reservation_sync table, a delivery refuses to
run when its newest row is older than the allowed age (or when it has none). The rules of
what a reservation excludes live in sql/selection.sql and, independently, etl/validate.py.

A register that sends a list must also learn who on it has reserved since, so it can delete
them: the withdrawals.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from etl.source import bind, sql_text
from etl.spec import Spec

WITHDRAWALS_SCHEMA = pa.schema([("fnr", pa.string()), ("registered_at", pa.timestamp("us"))])


def active_at(as_of: datetime) -> dict[str, datetime]:
    """The bound parameter of "active at T" (contract section 1) for the SQL in sql/.

    The contract's rule, registered_at <= T < withdrawn_at, is written in the SQL in its
    half-open form: registered before T + 1 µs and withdrawn, if at all, at or after it. The
    two are the same at the microsecond resolution of TIMESTAMP, but only the half-open one
    compares right on SQLite, where a timestamp is text with or without a fraction: bound in
    its shortest form (etl.source.bind_value), an instant sorts at or before every stored
    spelling of itself, so ">=" and "<" hold for all of them, whereas "<=" against a whole
    second would miss a reservation stored as '... 06:00:00.000000'.
    """
    return {"active_before": as_of + timedelta(microseconds=1)}


class ReservationsStale(RuntimeError):
    """The reservation copy is older than allowed; nothing may be delivered."""


def _as_datetime(value: object) -> datetime:
    """A timestamp as PostgreSQL returns it, or as SQLite stores it (ISO text)."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def check_fresh(conn: Connection, max_age_hours: float, now: datetime | None = None) -> None:
    """Raise ReservationsStale unless the copy was refreshed within max_age_hours."""
    if not inspect(conn).has_table("reservation_sync"):
        return
    newest = conn.execute(text(sql_text("reservation_sync_newest"))).scalar()
    if newest is None:
        raise ReservationsStale(
            "the reservation copy has never been synchronised (reservation_sync is empty); "
            "refusing to deliver"
        )
    now = now or datetime.now(UTC).replace(tzinfo=None)
    age = now - _as_datetime(newest)
    if age > timedelta(hours=max_age_hours):
        hours = age.total_seconds() / 3600
        raise ReservationsStale(
            f"the reservation copy is {hours:.1f} hours old (allowed: {max_age_hours:g}); "
            "refusing to deliver until it is synchronised"
        )


def withdrawals(conn: Connection, spec: Spec, as_of: datetime) -> pa.Table:
    """Listed persons with an active OPT_OUT for the register at as_of (sql/withdrawals.sql).

    Only where the spec honours the register's own OPT_OUT rows: otherwise those rows do not
    take anyone out of its deliveries, and telling it to delete them would contradict them.
    """
    if not (spec.has_list and spec.reservations.registry_opt_out):
        return WITHDRAWALS_SCHEMA.empty_table()
    params = bind(conn, {"registry": spec.code, **active_at(as_of)})
    rows = conn.execute(text(sql_text("withdrawals")), params).all()
    registered = [_as_datetime(at) for _, at in rows]
    return pa.table(
        [pa.array([fnr for fnr, _ in rows], pa.string()), pa.array(registered, pa.timestamp("us"))],
        schema=WITHDRAWALS_SCHEMA,
    )
