"""Synthetic source databases for the benchmark, generated once and cached.

Generating 10 million episodes takes many minutes, far longer than the deliveries it serves,
so each (dialect, size) database is kept: PostgreSQL as database ``leveranse_bench_<size>``
on the local server, SQLite as ``var/bench/source_<size>.db``. A JSON marker next to it,
written only after ``etl.synth.synthesize`` returned, records the row counts and the
generation time; a database without its marker (an interrupted generation) is rebuilt.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from etl.settings import VAR_DIR

BENCH_DIR = VAR_DIR / "bench"
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
# A fixed "today" makes every cached database describe the same three years, so results of
# runs on different days compare. The generated data ends the day before.
TODAY = date(2025, 6, 1)
SEED = 6
# etl.synth draws about 3 NPR episodes per person (measured: 60,353 for 20,000 persons).
EPISODES_PER_PERSON = 3.0


@dataclass(frozen=True)
class Source:
    """One cached source database."""

    dialect: str
    size: int  # the nominal number of NPR episodes

    @property
    def name(self) -> str:
        return f"leveranse_bench_{self.size}"

    @property
    def url(self) -> str:
        if self.dialect == "postgresql":
            return f"{PG_SERVER}/{self.name}"
        return f"sqlite:///{BENCH_DIR / f'source_{self.size}.db'}"

    @property
    def marker(self) -> Path:
        return BENCH_DIR / f"{self.dialect}_{self.size}.json"

    def info(self) -> dict[str, Any] | None:
        """The marker's content, or None when the database is not (completely) there."""
        if not self.marker.exists():
            return None
        return json.loads(self.marker.read_text(encoding="utf-8"))

    def drop(self) -> None:
        """Remove the database and its marker."""
        self.marker.unlink(missing_ok=True)
        if self.dialect == "postgresql":
            _admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{BENCH_DIR / f'source_{self.size}.db'}{suffix}").unlink(missing_ok=True)

    def ensure(self) -> dict[str, Any]:
        """The cached database's marker, generating the database first where needed."""
        info = self.info()
        if info is not None:
            return info
        from etl.synth import synthesize

        self.drop()
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        if self.dialect == "postgresql":
            _admin(f'CREATE DATABASE "{self.name}"')
        persons = round(self.size / EPISODES_PER_PERSON)
        engine = create_engine(self.url)
        started = time.monotonic()
        try:
            summary = synthesize(engine, persons, seed=SEED, today=TODAY, progress=True)
        finally:
            engine.dispose()
        info = {
            "dialect": self.dialect,
            "size": self.size,
            "today": TODAY.isoformat(),
            "seed": SEED,
            "generation_seconds": round(time.monotonic() - started, 1),
            "rows": summary.tables() | {"persons": summary.persons},
            "bytes": self.bytes(),
        }
        self.marker.write_text(json.dumps(info, indent=2), encoding="utf-8")
        return info

    def bytes(self) -> int:
        """The database's size on disk."""
        if self.dialect == "sqlite":
            return (BENCH_DIR / f"source_{self.size}.db").stat().st_size
        engine = create_engine(f"{PG_SERVER}/postgres")
        try:
            with engine.connect() as conn:
                query = text("SELECT pg_database_size(:name)")
                return int(conn.execute(query, {"name": self.name}).scalar_one())
        finally:
            engine.dispose()


def _admin(statement: str) -> None:
    """Run CREATE/DROP DATABASE, which cannot run inside a transaction."""
    engine = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()
