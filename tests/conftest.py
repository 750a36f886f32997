"""Shared fixtures: a fresh source database per test, on SQLite and on PostgreSQL.

Every database test runs twice, once per dialect. SQLite gets a file in the test's own
temporary folder; PostgreSQL gets a schema of its own in the database ``leveranse_test``
(created on first use), selected through the URL's search_path, so the command line run as
a subprocess sees exactly the same tables as the test.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

PG_SERVER = os.environ.get("LEVERANSE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
PG_DATABASE = "leveranse_test"


def _ensure_pg_database() -> None:
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": PG_DATABASE}
            ).scalar()
            if not exists:
                # another xdist worker may create it first
                with contextlib.suppress(Exception):
                    conn.execute(text(f'CREATE DATABASE "{PG_DATABASE}"'))
    finally:
        admin.dispose()


def _pg_schema_url() -> Iterator[str]:
    _ensure_pg_database()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    base = f"{PG_SERVER}/{PG_DATABASE}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty database of each dialect, private to the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'source.db'}"
    else:
        yield from _pg_schema_url()


@pytest.fixture
def state_url(tmp_path) -> str:
    """The state database (disclosure log) of one test."""
    return f"sqlite:///{tmp_path / 'state.db'}"
