"""Running a delivery in a test and reading back what a register would receive."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import date, datetime
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from sqlalchemy import text

from etl.deliver import DeliveryResult, deliver
from etl.settings import Settings
from etl.source import make_engine

RUN_AT = datetime(2024, 6, 1, 12, 0, 0)


def expected_pseudonym(key: str, code: str, fnr: str) -> str:
    """CONTRACT.md section 3, computed here from the key, independently of etl.pseudonym:
    HMAC-SHA256 over the register code, 0x1f and the number."""
    message = code.encode("ascii") + b"\x1f" + fnr.encode("ascii")
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def record_numbers(source_url: str) -> dict[tuple[str, int], str]:
    """(source, record_id) -> fnr of every record of a source, to recompute pseudonyms."""
    engine = make_engine(source_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT 'NPR', episode_id, fnr FROM npr_episode"
                    " UNION ALL SELECT 'KPR', contact_id, fnr FROM kpr_contact"
                )
            )
            return {(source, record_id): fnr for source, record_id, fnr in rows}
    finally:
        engine.dispose()


def reserve_no_fnr_for_every_npr_person(source_url: str) -> range:
    """Every person with NPR episodes reserves against NPR handing out their number
    (NO_FNR, since 2000), so every NPR row of a pseudonymising register must carry a
    pseudonym; returns the new reservations' ids."""
    engine = make_engine(source_url)
    try:
        with engine.begin() as conn:
            first = conn.execute(
                text("SELECT COALESCE(MAX(reservation_id), 0) + 1 FROM reservation")
            ).scalar()
            added = conn.execute(
                text(
                    "INSERT INTO reservation (reservation_id, fnr, registry, scope, registered_at)"
                    " SELECT :first + ROW_NUMBER() OVER (ORDER BY fnr) - 1, fnr, 'NPR', 'NO_FNR',"
                    " '2000-01-01 00:00:00' FROM (SELECT DISTINCT fnr FROM npr_episode) persons"
                ),
                {"first": first},
            )
            return range(first, first + added.rowcount)
    finally:
        engine.dispose()


def write_spec(folder: Path, **document: object) -> Path:
    """A spec file in its own folder; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{str(document['code']).lower()}.yaml").write_text(
        yaml.safe_dump(document, allow_unicode=True), encoding="utf-8"
    )
    return folder


def population_spec(**overrides: object) -> dict:
    """A PHV-like population spec over both sources; overrides replace top-level keys."""
    return {
        "code": "TESTPOP",
        "name": "Test population register",
        "delivery": "population",
        "legal_basis": "NPR-forskriften § 4-2",
        "priority": 3,
        "sources": ["NPR", "KPR"],
        "selection": {"icd10": ["F20-F29"], "icpc2": ["P72", "P73", "P98"], "min_age": 18},
        "variables": [
            "fnr",
            "sex",
            "birth_year",
            "start_date",
            "end_date",
            "main_diagnosis",
            "diagnoses",
            "service_type",
            "sector",
        ],
    } | overrides


def settings_for(source_url: str, tmp_path: Path, specs: Path) -> Settings:
    return Settings.resolve(
        source_url=source_url,
        specs_dir=specs,
        drop_dir=tmp_path / "drops",
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        lock_wait_seconds=5,
    )


def run_delivery(
    settings: Settings,
    code: str = "TESTPOP",
    start: date = date(2024, 3, 1),
    end: date = date(2024, 4, 1),
    as_of: datetime | None = RUN_AT,
) -> DeliveryResult:
    return deliver(settings, code, start, end, as_of)


def delivered_rows(result: DeliveryResult) -> list[dict]:
    """The rows of the drop's main Parquet file, as dicts."""
    manifest = json.loads((result.path / "manifest.json").read_text())
    main = next(f for f in manifest["files"] if "withdrawals" not in f["name"])
    return pq.read_table(result.path / main["name"]).to_pylist()


def manifest_of(result: DeliveryResult) -> dict:
    return json.loads((result.path / "manifest.json").read_text())
