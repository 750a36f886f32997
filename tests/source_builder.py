"""Hand-made source data for tests: a few records whose every field is chosen on purpose.

Identity numbers come from etl.fnr.synthetic (the synthetic month + 80 series), so no test
ever holds a real person's number.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import date, datetime

from sqlalchemy import text

from etl.fnr import individual_ranges, synthetic
from etl.source import bind, create_schema, make_engine

_INSERTS = {
    "npr_episode": (
        "episode_id, fnr, sex, birth_year, municipality, institution_id, health_trust, sector,"
        " specialty, care_level, urgency, start_date, end_date, discharge_status, received_at"
    ),
    "npr_diagnosis": "episode_id, seq, code, is_main",
    "npr_procedure": "episode_id, seq, code, code_system, procedure_date",
    "kpr_contact": (
        "contact_id, fnr, sex, birth_year, municipality, service_type, contact_date, received_at"
    ),
    "kpr_diagnosis": "contact_id, seq, code, code_system, is_main",
    "reservation": "reservation_id, fnr, registry, scope, registered_at, withdrawn_at",
    "reservation_sync": "synced_at",
    "register_patient": "registry, fnr, case_id, index_date, received_at",
}


def _instant(value: str | datetime | date | None) -> datetime | date | None:
    if isinstance(value, str):
        return datetime.fromisoformat(value) if len(value) > 10 else date.fromisoformat(value)
    return value


class Source:
    """A source database with the contract's tables, filled one record at a time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        create_schema(self.engine)
        self._ids = itertools.count(1)
        self._individual = itertools.count(0)

    def insert(self, table: str, **values: object) -> None:
        columns = [c.strip() for c in _INSERTS[table].split(",")]
        row = {
            c: _instant(values.get(c))
            if isinstance(values.get(c), str) and c.endswith(("_at", "date"))
            else values.get(c)
            for c in columns
        }
        placeholders = ", ".join(f":{c}" for c in columns)
        with self.engine.begin() as conn:
            conn.execute(
                text(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"),
                bind(conn, row),
            )

    def raw(self, sql: str, **params: object) -> None:
        """A statement as a source owner might write it (e.g. an odd timestamp form)."""
        with self.engine.begin() as conn:
            conn.execute(text(sql), params)

    def person(self, born: date = date(1980, 5, 17)) -> str:
        """A new synthetic identity number."""
        first = individual_ranges(born.year)[0]
        while True:
            number = synthetic(born, first[next(self._individual) % len(first)])
            if number is not None:
                return number

    def episode(
        self,
        fnr: str,
        *,
        received: str = "2024-03-01 12:00:00",
        start: str = "2024-02-27",
        end: str | None = "2024-02-28",
        diagnoses: Iterable[str | tuple[str, bool]] = ("F200",),
        procedures: Iterable[tuple[str, str, str | None]] = (),
        sector: str = "PHV",
        birth_year: int = 1980,
        **fields: object,
    ) -> int:
        """An NPR episode; the first diagnosis is the main one unless flags are given."""
        episode_id = next(self._ids)
        defaults = {
            "sex": 2,
            "municipality": "0301",
            "institution_id": "974589095",
            "health_trust": "Oslo universitetssykehus HF",
            "specialty": "320",
            "care_level": 3,
            "urgency": 4,
            "discharge_status": 1,
        }
        self.insert(
            "npr_episode",
            **(defaults | fields),
            episode_id=episode_id,
            fnr=fnr,
            birth_year=birth_year,
            sector=sector,
            start_date=start,
            end_date=end,
            received_at=received,
        )
        for seq, diagnosis in enumerate(diagnoses, 1):
            code, main = diagnosis if isinstance(diagnosis, tuple) else (diagnosis, seq == 1)
            self.insert("npr_diagnosis", episode_id=episode_id, seq=seq, code=code, is_main=main)
        for seq, (code, system, day) in enumerate(procedures, 1):
            self.insert(
                "npr_procedure",
                episode_id=episode_id,
                seq=seq,
                code=code,
                code_system=system,
                procedure_date=day,
            )
        return episode_id

    def contact(
        self,
        fnr: str,
        *,
        received: str = "2024-03-01 12:00:00",
        day: str = "2024-02-27",
        diagnoses: Iterable[tuple[str, str]] = (("P72", "ICPC-2"),),
        birth_year: int = 1980,
        service_type: int = 1,
    ) -> int:
        """A KPR contact; the first diagnosis is the main one."""
        contact_id = next(self._ids)
        self.insert(
            "kpr_contact",
            contact_id=contact_id,
            fnr=fnr,
            sex=1,
            birth_year=birth_year,
            municipality="4601",
            service_type=service_type,
            contact_date=day,
            received_at=received,
        )
        for seq, (code, system) in enumerate(diagnoses, 1):
            self.insert(
                "kpr_diagnosis",
                contact_id=contact_id,
                seq=seq,
                code=code,
                code_system=system,
                is_main=seq == 1,
            )
        return contact_id

    def reserve(
        self, fnr: str, registry: str, scope: str, registered: str, withdrawn: str | None = None
    ) -> None:
        self.insert(
            "reservation",
            reservation_id=next(self._ids),
            fnr=fnr,
            registry=registry,
            scope=scope,
            registered_at=registered,
            withdrawn_at=withdrawn,
        )

    def synced(self, at: datetime) -> None:
        self.insert("reservation_sync", synced_at=at)

    def listed(self, registry: str, fnr: str, case_id: str, index_date: str | None) -> None:
        self.insert(
            "register_patient",
            registry=registry,
            fnr=fnr,
            case_id=case_id,
            index_date=index_date,
            received_at="2024-01-01 00:00:00",
        )
