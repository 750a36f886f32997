"""One delivery of one register for one period, end to end.

extract (in the database) -> minimise -> stage as Parquet -> validate -> publish or
quarantine -> disclosure log. The command line and the DAGs both call ``deliver``; nothing
else runs a delivery.

A delivery holds a lock on its register and period for the whole run, so two runs never
both write; it cleans what a killed run left in staging before it starts; and every attempt
that gets that far, whatever its end, leaves one row in the disclosure log. What fails
before (a bad spec, a missing pseudonymisation key, an impossible period, the lock held by
another run) has disclosed nothing and is reported by the command line or the task only.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import groupby
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from etl import __version__, drop, faults
from etl.audit import DisclosureLog
from etl.coverage import Coverage, measure, register_persons
from etl.coverage_report import write_report
from etl.extract import Extraction, parameters, run
from etl.minimise import EVIDENCE_SCHEMA, delivered_schema, shape
from etl.period import Period
from etl.pseudonym import Pseudonymiser, key_from_environment
from etl.redact import one_line
from etl.reservations import check_fresh, withdrawals
from etl.settings import Settings
from etl.source import make_engine
from etl.spec import Spec, find_spec
from etl.validate import (
    ReservationGuard,
    ValidationFailed,
    check_frame,
    preload_great_expectations,
    validate_delivery,
    withdrawal_frame,
)

log = logging.getLogger(__name__)

EXCLUSION_REASONS = ("opt_out", "no_purpose2", "no_fnr", "invalid_fnr")
EVIDENCE_FILE = "_evidence.parquet"
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_statistics": True}
# Rows validated at a time: bounds validation's memory whatever the size of the delivery
# (each batch becomes two pandas frames and a Great Expectations run of about 0.3 s).
# Validation holds the most memory of a delivery: a full year of PHV at 10 million episodes
# (87,676 rows) peaked at 358-361 MiB with 20,000, 335-342 MiB with 10,000, against 294-298
# MiB for the 8,832 rows at 1 million, in the same time (benchmarks; 2026-11-26).
VALIDATION_BATCH_ROWS = 10_000


@dataclass
class DeliveryResult:
    """What one delivery did, for the command line, the DAG's XCom and the demo summary."""

    registry: str
    delivery: str
    period: Period | None  # None when nothing was due
    status: str  # published | unchanged | nothing_due
    path: Path | None = None
    version: int | None = None
    row_count: int = 0
    person_count: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    withdrawals: int = 0
    coverage: dict[str, Any] | None = None
    up_to: date | None = None  # nothing_due: the end of the last delivered period

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (what an Airflow task returns)."""
        return {
            "registry": self.registry,
            "delivery": self.delivery,
            "period": None
            if self.period is None
            else {"from": self.period.start.isoformat(), "to": self.period.end.isoformat()},
            "status": self.status,
            "path": None if self.path is None else str(self.path),
            "version": self.version,
            "row_count": self.row_count,
            "person_count": self.person_count,
            "excluded": self.excluded,
            "validation": self.validation,
            "files": self.files,
            "withdrawals": self.withdrawals,
            "coverage": self.coverage,
            "up_to": None if self.up_to is None else self.up_to.isoformat(),
        }


@dataclass
class Staged:
    """The files of one run in its staging folder, before validation."""

    data: Path
    evidence: Path
    rows: int
    excluded: Counter[str]
    withdrawals: pa.Table
    anomalies: dict[str, int]  # delivered as the source has them, counted


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def resolve_period(
    spec: Spec, last_end: date | None, start: date | None, end: date | None, today: date
) -> Period | None:
    """The period to deliver; None when nothing is due (already delivered up to ``end``).

    Without explicit dates the period runs from the end of the last successful delivery (or
    ``end - lookback_days``) to today (CONTRACT.md section 3).
    """
    end = end or today
    if start is None:
        start = last_end if last_end is not None else end - timedelta(days=spec.lookback_days)
        if start >= end:
            return None
    return Period(start, end)


def file_name(spec: Spec, period: Period) -> str:
    return f"{spec.code}_{spec.delivery}_{period.label}.parquet"


def withdrawals_file_name(spec: Spec, period: Period) -> str:
    return f"{spec.code}_withdrawals_{period.label}.parquet"


def _stage(
    conn: Any,
    spec: Spec,
    period: Period,
    as_of: datetime,
    staging: Path,
    pseudonymiser: Pseudonymiser | None,
) -> Staged:
    """Stream the selection into the staged Parquet file and its evidence, batch by batch,
    and stage the withdrawals file where there are any (CONTRACT.md section 4).

    Great Expectations starts importing now, to overlap the database's work (see
    ``preload_great_expectations``).
    """
    preload_great_expectations()
    extraction = Extraction()
    data_path = staging / file_name(spec, period)
    evidence_path = staging / EVIDENCE_FILE
    rows, invalid, end_before_start = 0, 0, 0
    with (
        pq.ParquetWriter(data_path, delivered_schema(spec), **PARQUET_OPTIONS) as data,
        pq.ParquetWriter(evidence_path, EVIDENCE_SCHEMA, **PARQUET_OPTIONS) as evidence,
    ):
        parts = run(conn, spec, parameters(spec, period, as_of), extraction)
        # One row group per group of the query's result, however the rows were fetched
        # (etl.extract.GROUP_RESULT_ROWS): a rerun writes the same bytes.
        for _, group in groupby(parts, key=lambda part: part.group):
            shaped = [shape(part.batch, spec, pseudonymiser) for part in group]
            invalid += sum(s.invalid_fnr for s in shaped)
            end_before_start += sum(s.end_before_start for s in shaped)
            delivered = pa.concat_batches([s.delivered for s in shaped])
            if delivered.num_rows:
                data.write_batch(delivered)
                evidence.write_batch(pa.concat_batches([s.evidence for s in shaped]))
                rows += delivered.num_rows
                faults.point("during_extraction")
    excluded = Counter({reason: extraction.excluded.get(reason, 0) for reason in EXCLUSION_REASONS})
    excluded["invalid_fnr"] = invalid
    withdrawn = withdrawals(conn, spec, as_of)
    if withdrawn.num_rows:
        pq.write_table(withdrawn, staging / withdrawals_file_name(spec, period), **PARQUET_OPTIONS)
    anomalies = {"end_before_start": end_before_start}
    faults.point("after_parquet")
    return Staged(data_path, evidence_path, rows, excluded, withdrawn, anomalies)


Batch = pa.RecordBatch | pa.Table


def _staged_batches(staged: Staged) -> Iterator[tuple[Batch, Batch]]:
    """The staged delivery and its evidence in aligned batches of VALIDATION_BATCH_ROWS.

    Both files were written batch for batch in one loop, so their row groups, and thus the
    batches read back, line up row for row. An empty delivery yields one empty pair, so the
    suite still runs (its column set is checked even when there are no rows).
    """
    data, evidence = pq.ParquetFile(staged.data), pq.ParquetFile(staged.evidence)
    if data.metadata.num_rows == 0:
        yield data.schema_arrow.empty_table(), evidence.schema_arrow.empty_table()
        return
    pairs = zip(
        data.iter_batches(VALIDATION_BATCH_ROWS),
        evidence.iter_batches(VALIDATION_BATCH_ROWS),
        strict=True,
    )
    for rows, proof in pairs:
        if rows.num_rows != proof.num_rows:
            raise RuntimeError("staged delivery and evidence batches do not line up")
        yield rows, proof


def _person_count(data: Path) -> int:
    """Distinct persons delivered (by fnr, or pseudonym where it is withheld), read column by
    column from the staged file so only the identifiers are held, not the rows."""
    columns = [c for c in ("fnr", "pseudonym") if c in pq.read_schema(data).names]
    people: set[str] = set()
    for batch in pq.ParquetFile(data).iter_batches(VALIDATION_BATCH_ROWS, columns=columns):
        for column in batch.columns:
            people.update(column.drop_null().to_pylist())
    return len(people)


def _manifest(
    spec: Spec,
    period: Period,
    as_of: datetime,
    staged: Staged,
    person_count: int,
    validation: dict[str, Any],
    coverage: Coverage | None,
) -> dict[str, Any]:
    """The manifest's content; publish adds version, supersedes, files and created_at."""
    extra: dict[str, Any] = {}
    if spec.has_list:
        extra["withdrawals"] = staged.withdrawals.num_rows
    if coverage is not None:
        extra["coverage"] = coverage.published()
    return extra | {
        "registry": spec.code,
        "registry_name": spec.name,
        "delivery": spec.delivery,
        "legal_basis": spec.legal_basis,
        "period": {"from": period.start.isoformat(), "to": period.end.isoformat()},
        "reservations_as_of": as_of.isoformat(sep=" "),
        "row_count": staged.rows,
        "person_count": person_count,
        "excluded": {r: drop.suppress_small(staged.excluded[r]) for r in EXCLUSION_REASONS},
        "columns": delivered_schema(spec).names,
        "anomalies": staged.anomalies,
        "spec_sha256": spec.sha256,
        "validation": validation,
        "software_version": __version__,
    }


def deliver(
    settings: Settings,
    code: str,
    start: date | None = None,
    end: date | None = None,
    reservations_as_of: datetime | None = None,
    pseudonym_key: bytes | None = None,
) -> DeliveryResult:
    """Deliver register ``code`` for one period (see the module docstring).

    ``pseudonym_key`` is a key the caller has resolved and checked (the DAGs fall back to an
    Airflow connection); without it a pseudonymising spec reads LEVERANSE_PSEUDONYM_KEY.
    """
    spec = find_spec(settings.specs_dir, code)
    pseudonymiser = (
        Pseudonymiser(pseudonym_key or key_from_environment(), spec.code)
        if spec.pseudonymises
        else None
    )
    now = utc_now()
    as_of = reservations_as_of or now
    disclosure_log = DisclosureLog(settings.state_url)
    try:
        close_all_interrupted(disclosure_log, settings.drop_dir, spec)
        last_end = disclosure_log.last_delivered_end(spec.code, spec.delivery)
        period = resolve_period(spec, last_end, start, end, now.date())
        if period is None:
            log.info("%s %s: delivered up to %s already", spec.code, spec.delivery, last_end)
            return DeliveryResult(spec.code, spec.delivery, None, "nothing_due", up_to=last_end)
        with drop.delivery_lock(
            settings.drop_dir, spec.code, spec.delivery, period, settings.lock_wait_seconds
        ):
            drop.clean_stale_staging(settings.drop_dir, spec.code, spec.delivery)
            close_interrupted(disclosure_log, settings.drop_dir, spec, period)
            faults.point("before_log_start")
            attempt = disclosure_log.start(
                spec.code,
                spec.delivery,
                period,
                spec.legal_basis,
                spec.sha256,
                delivered_schema(spec).names,
                as_of,
            )
            faults.point("after_log_start")
            try:
                result = _attempt(settings, spec, period, as_of, now, pseudonymiser, attempt)
            except ValidationFailed as exc:
                disclosure_log.finish(
                    attempt, "validation_failed", reason=one_line(exc), drop_path=exc.evidence_path
                )
                raise
            except BaseException as exc:
                disclosure_log.finish(attempt, "failed", reason=one_line(exc))
                raise
            disclosure_log.finish(
                attempt,
                result.status,
                row_count=result.row_count,
                person_count=result.person_count,
                excluded=result.excluded,
                files=result.files,
                coverage=result.coverage,
                drop_path=str(result.path),
                version=result.version,
            )
        if result.coverage is not None:
            _write_coverage_report(settings, spec)
        return result
    finally:
        disclosure_log.close()


def close_interrupted(
    disclosure_log: DisclosureLog, drop_dir: Path, spec: Spec, period: Period
) -> None:
    """Finish the log rows of earlier runs of this register and period that died midway.

    Called under the delivery lock, so no other run of the period is alive. A run killed
    after its rename but before its log write published a drop whose manifest names its
    attempt: that row becomes published. One killed after moving its evidence into quarantine
    left a report naming its attempt: that row becomes validation_failed with the folder. Any
    other unfinished row becomes failed.
    """
    published = {
        manifest.get("attempt_id"): (folder, manifest)
        for folder, manifest in drop.period_versions(drop_dir, spec.code, spec.delivery, period)
    }
    quarantined = drop.quarantined_attempts(drop_dir, spec.code, spec.delivery, period)
    for row in disclosure_log.attempts(spec.code):
        if row["status"] != "running" or row["delivery"] != spec.delivery:
            continue
        if (row["period_from"], row["period_to"]) != (period.start, period.end):
            continue
        if row["attempt_id"] in published:
            folder, manifest = published[row["attempt_id"]]
            # The manifest holds exclusion and coverage counts in their published form
            # ("<5"); the exact ones died with the run, so the row leaves them unknown.
            disclosure_log.finish(
                row["attempt_id"],
                "published",
                row_count=manifest.get("row_count"),
                person_count=manifest.get("person_count"),
                files=manifest.get("files"),
                drop_path=str(folder),
                version=manifest.get("version"),
                reason="completed from its drop after the run was interrupted",
            )
            log.warning("%s: an interrupted run had published %s", spec.code, folder.name)
        elif row["attempt_id"] in quarantined:
            disclosure_log.finish(
                row["attempt_id"],
                "validation_failed",
                drop_path=str(quarantined[row["attempt_id"]]),
                reason="validation failed; completed from its quarantine report after the run "
                "was interrupted",
            )
            log.warning("%s: an interrupted run had failed validation", spec.code)
        else:
            disclosure_log.finish(
                row["attempt_id"], "failed", reason="interrupted: the run ended before it finished"
            )
            log.warning("%s: closed an interrupted attempt of %s", spec.code, period.label)


def close_all_interrupted(disclosure_log: DisclosureLog, drop_dir: Path, spec: Spec) -> None:
    """Close dead runs of this register and delivery in any period, before a period is chosen.

    A run killed after publishing but before logging left a running row, and the next
    scheduled run usually covers another period: without this, the published drop would stay
    unlogged and the next default period would start too early. Each such period's lock is
    tried without waiting: a run that holds it is alive, and its row is its own.
    """
    periods = {
        Period(row["period_from"], row["period_to"])
        for row in disclosure_log.attempts(spec.code)
        if row["status"] == "running" and row["delivery"] == spec.delivery
    }
    for period in sorted(periods):
        try:
            with drop.delivery_lock(drop_dir, spec.code, spec.delivery, period, 0):
                close_interrupted(disclosure_log, drop_dir, spec, period)
        except drop.DeliveryLocked:
            log.debug("%s: %s is being delivered by a live run", spec.code, period.label)


def _write_coverage_report(settings: Settings, spec: Spec) -> None:
    """Refresh the register's coverage page from the disclosure log.

    The delivery is already published and logged when this runs, so a failure here must not
    turn it into a failed delivery: the page is rebuilt from the log by the next delivery.
    """
    try:
        path = write_report(settings.state_url, settings.drop_dir, spec.code, spec.name)
    except Exception as exc:
        log.warning("%s: coverage report not written: %s", spec.code, one_line(exc))
    else:
        log.info("%s: coverage report %s", spec.code, path)


def _attempt(
    settings: Settings,
    spec: Spec,
    period: Period,
    as_of: datetime,
    now: datetime,
    pseudonymiser: Pseudonymiser | None,
    attempt: str,
) -> DeliveryResult:
    """Stage, validate and publish; whatever fails, no staging folder is left behind.

    (A worker process lives on after a failed task and still owns its staging folder, so a
    leftover folder of personal data would not be found by clean_stale_staging, which only
    removes folders whose owner is dead.)
    """
    staging = drop.staging_dir(settings.drop_dir, spec.code, spec.delivery, period)
    try:
        engine = make_engine(settings.source_url, settings.statement_timeout_seconds)
        try:
            with engine.connect() as conn:
                check_fresh(conn, settings.reservation_max_age_hours, now)
                staged = _stage(conn, spec, period, as_of, staging, pseudonymiser)
                guard = ReservationGuard.read(conn, spec, as_of)
                listed = (
                    register_persons(conn, spec.code, period)
                    if spec.delivery == "complement"
                    else None
                )
        finally:
            engine.dispose()
        return _validate_and_publish(
            settings, spec, period, as_of, staging, staged, guard, listed, pseudonymiser, attempt
        )
    except BaseException:
        drop.discard(staging)  # gone already if quarantined or published
        raise


def _validate_and_publish(
    settings: Settings,
    spec: Spec,
    period: Period,
    as_of: datetime,
    staging: Path,
    staged: Staged,
    guard: ReservationGuard,
    listed: set[str] | None,
    pseudonymiser: Pseudonymiser | None,
    attempt: str,
) -> DeliveryResult:
    """Validate the staged files as they would be published; publish them or quarantine.

    ``listed`` is the register's persons of the period where coverage is measured.
    """
    frames = (
        check_frame(data.to_pandas(), evidence.to_pandas(), spec, period, guard, pseudonymiser)
        for data, evidence in _staged_batches(staged)
    )
    withdrawn = (
        withdrawal_frame(staged.withdrawals.to_pandas(), guard)
        if staged.withdrawals.num_rows
        else None
    )
    report = validate_delivery(frames, spec, withdrawn)
    person_count = _person_count(staged.data)
    log.info(
        "%s %s %s: %d rows, %d persons, validation %s",
        spec.code,
        spec.delivery,
        period.label,
        staged.rows,
        person_count,
        "passed" if report.success else "FAILED",
    )
    if not report.success:
        # The attempt id ties the evidence to its log row, also when the run dies before
        # the row can name the folder.
        evidence = report.to_dict() | {"attempt_id": attempt}
        where = drop.quarantine(
            settings.drop_dir, spec.code, spec.delivery, period, staging, evidence
        )
        raise ValidationFailed(report, str(where))
    faults.point("after_validation")

    staged.evidence.unlink()
    coverage = (
        None
        if listed is None
        else measure(pq.read_table(staged.data), listed, guard.opt_out, pseudonymiser)
    )
    manifest = _manifest(spec, period, as_of, staged, person_count, report.summary(), coverage)
    manifest["attempt_id"] = attempt
    published = drop.publish(settings.drop_dir, spec.code, spec.delivery, period, staging, manifest)
    return DeliveryResult(
        registry=spec.code,
        delivery=spec.delivery,
        period=period,
        status=published.status,
        path=published.path,
        version=published.version,
        row_count=staged.rows,
        person_count=person_count,
        excluded=dict(staged.excluded),
        validation=report.summary(),
        files=published.files,
        withdrawals=staged.withdrawals.num_rows,
        coverage=None if coverage is None else coverage.counts(),
    )
