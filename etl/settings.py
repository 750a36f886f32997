"""Where a delivery reads and writes: one typed object, from options or the environment.

The command line and the DAGs both build a Settings; each value comes from the explicit
argument, else from the environment variable named in CONTRACT.md section 3, else from the
embedded default under var/ in the project folder (SQLite files and a local drop folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = PROJECT_DIR / "var"

DEFAULTS = {
    "LEVERANSE_SOURCE_URL": f"sqlite:///{VAR_DIR / 'source.db'}",
    "LEVERANSE_SPECS_DIR": str(PROJECT_DIR / "registers"),
    "LEVERANSE_DROP_DIR": str(VAR_DIR / "drops"),
    "LEVERANSE_STATE_URL": f"sqlite:///{VAR_DIR / 'state.db'}",
    # A stale reservation copy must fail closed (CONTRACT.md section 1).
    "LEVERANSE_RESERVATION_MAX_AGE_HOURS": "36",
    # How long a run waits for another run of the same register and period.
    "LEVERANSE_LOCK_WAIT_SECONDS": "600",
    # How long one source query may run before it is cancelled (and the DAG retries).
    "LEVERANSE_STATEMENT_TIMEOUT_SECONDS": "3600",
}


def _value(explicit: object, variable: str) -> str:
    if explicit is not None and explicit != "":
        return str(explicit)
    return os.environ.get(variable) or DEFAULTS[variable]


@dataclass(frozen=True)
class Settings:
    source_url: str
    specs_dir: Path
    drop_dir: Path
    state_url: str
    reservation_max_age_hours: float
    lock_wait_seconds: float
    statement_timeout_seconds: float

    @classmethod
    def resolve(
        cls,
        source_url: str | None = None,
        specs_dir: str | Path | None = None,
        drop_dir: str | Path | None = None,
        state_url: str | None = None,
        reservation_max_age_hours: float | None = None,
        lock_wait_seconds: float | None = None,
        statement_timeout_seconds: float | None = None,
    ) -> Settings:
        """Explicit values first, then LEVERANSE_* variables, then the embedded defaults."""
        return cls(
            source_url=_value(source_url, "LEVERANSE_SOURCE_URL"),
            specs_dir=Path(_value(specs_dir, "LEVERANSE_SPECS_DIR")),
            drop_dir=Path(_value(drop_dir, "LEVERANSE_DROP_DIR")),
            state_url=_value(state_url, "LEVERANSE_STATE_URL"),
            reservation_max_age_hours=float(
                _value(reservation_max_age_hours, "LEVERANSE_RESERVATION_MAX_AGE_HOURS")
            ),
            lock_wait_seconds=float(_value(lock_wait_seconds, "LEVERANSE_LOCK_WAIT_SECONDS")),
            statement_timeout_seconds=float(
                _value(statement_timeout_seconds, "LEVERANSE_STATEMENT_TIMEOUT_SECONDS")
            ),
        )
