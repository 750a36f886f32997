"""``leveranse demo``: the whole system on synthetic data, on a machine with nothing set up.

1. configure: every location under ``var/`` in the project (Airflow's home, the source and
   state databases, the drop folder), set in the environment before Airflow is imported,
   because Airflow reads its configuration once, at import;
2. migrate Airflow's metadata database under ``var/airflow`` (kept between demos);
3. recreate ``var/source.db`` with synthetic NPR and KPR data (20 000 persons, seed 42);
4. run every delivery DAG in ``dags/`` once through Airflow (``dag.test()``), for the last
   two years;
5. print what each register would pick up, read back from the manifests in ``var/drops``.

The demo owns ``var/``: it wipes the source and state databases and the drops at the start,
so it can be rerun, and it points every LEVERANSE_* location there whatever the shell says,
so it can never synthesise into, or deliver from, a configured production database.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

from etl.drop import MANIFEST, QUARANTINE, REPORT
from etl.pseudonym import KEY_VARIABLE
from etl.settings import PROJECT_DIR, VAR_DIR

DAGS_DIR = PROJECT_DIR / "dags"
AIRFLOW_HOME = VAR_DIR / "airflow"
SOURCE_DB = VAR_DIR / "source.db"
STATE_DB = VAR_DIR / "state.db"
DROP_DIR = VAR_DIR / "drops"
# Written after a successful migration; a matching stamp skips the ~8 s `airflow db migrate`.
MIGRATED_STAMP = AIRFLOW_HOME / ".leveranse-migrated"
PERIOD_DAYS = 730
EXCLUSION_REASONS = ("opt_out", "no_purpose2", "no_fnr", "invalid_fnr")


class DemoFailed(RuntimeError):
    """A demo step failed; the message says which and where to look."""


@contextmanager
def _step(number: int, title: str) -> Iterator[None]:
    print(f"\n[{number}/5] {title}", flush=True)
    started = time.monotonic()
    yield
    print(f"      done in {time.monotonic() - started:.1f} s", flush=True)


def configure() -> list[str]:
    """Point Airflow and leveranse at var/; return notes for the operator.

    Must run before anything imports airflow: Airflow fixes its home, metadata database and
    dags folder when it is first imported.
    """
    if "airflow" in sys.modules and os.environ.get("AIRFLOW_HOME") != str(AIRFLOW_HOME):
        raise DemoFailed("airflow was imported before the demo could configure it")
    os.environ.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "LEVERANSE_SOURCE_URL": f"sqlite:///{SOURCE_DB}",
            "LEVERANSE_STATE_URL": f"sqlite:///{STATE_DB}",
            "LEVERANSE_DROP_DIR": str(DROP_DIR),
            "LEVERANSE_SPECS_DIR": str(PROJECT_DIR / "registers"),
        }
    )
    # Task logs at INFO bury the demo's own output; AIRFLOW__LOGGING__LOGGING_LEVEL=INFO
    # in the shell brings them back.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    notes = [f"Airflow home {AIRFLOW_HOME}, DAGs from {DAGS_DIR}, everything else in {VAR_DIR}"]
    if not os.environ.get(KEY_VARIABLE):
        os.environ[KEY_VARIABLE] = secrets.token_hex(32)
        notes.append(
            f"{KEY_VARIABLE} is not set: using a random demo-only key for this run "
            "(never use the demo's set-up for real data)"
        )
    return notes


def wipe() -> None:
    """Remove the previous demo's source, state and drops (Airflow's database stays)."""
    for path in [*VAR_DIR.glob("source.db*"), *VAR_DIR.glob("state.db*")]:
        path.unlink()
    shutil.rmtree(DROP_DIR, ignore_errors=True)


def migrate() -> str:
    """Bring Airflow's metadata database up to date; skipped when this version did it."""
    stamp = f"apache-airflow=={version('apache-airflow')}"
    database = AIRFLOW_HOME / "airflow.db"
    if database.exists() and MIGRATED_STAMP.exists() and MIGRATED_STAMP.read_text() == stamp:
        return f"{database} already migrated by {stamp}"
    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    log_file = AIRFLOW_HOME / "db-migrate.log"
    with log_file.open("w", encoding="utf-8") as log:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        raise DemoFailed(f"airflow db migrate failed (exit {done.returncode}); see {log_file}")
    MIGRATED_STAMP.write_text(stamp)
    return f"{database} migrated ({stamp})"


def synthesize(persons: int, seed: int) -> str:
    """A fresh synthetic source database under var/."""
    from etl.source import make_engine
    from etl.synth import synthesize as fill

    engine = make_engine(os.environ["LEVERANSE_SOURCE_URL"])
    try:
        summary = fill(engine, persons=persons, seed=seed, progress=True)
    finally:
        engine.dispose()
    counts = ", ".join(f"{table} {rows}" for table, rows in summary.tables().items())
    return f"{SOURCE_DB}: {counts}"


def run_dags(period_from: str, period_to: str) -> list[str]:
    """Run every leveranse DAG in dags/ once; return one line per DAG that did not succeed.

    Retries are switched off here: a nightly run waits minutes for a database to come back,
    but a demo should say at once that something is wrong.
    """
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_DIR))
    if bag.import_errors:
        errors = "; ".join(f"{path}: {error}" for path, error in bag.import_errors.items())
        raise DemoFailed(f"DAG files do not import: {errors}")
    dags = sorted((d for d in bag.dags.values() if "leveranse" in d.tags), key=lambda d: d.dag_id)
    if not dags:
        raise DemoFailed(f"no delivery DAG found in {DAGS_DIR}")
    conf = {"period_from": period_from, "period_to": period_to}
    failures = []
    for dag in dags:
        for task in dag.tasks:
            task.retries = 0
        started = time.monotonic()
        run = dag.test(run_conf=conf)
        took = time.monotonic() - started
        print(f"      {dag.dag_id}: {run.state} in {took:.1f} s", flush=True)
        if run.state != "success":
            failed = ", ".join(_failed_tasks(dag.dag_id, run.run_id)) or "see the log above"
            failures.append(f"{dag.dag_id} run {run.run_id} ended {run.state}: {failed}")
    return failures


def _failed_tasks(dag_id: str, run_id: str) -> list[str]:
    """Failed task instances of a run, as ``task_id[register]``."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.state.in_(["failed", "upstream_failed"]),
            )
        ).all()
        return sorted(
            ti.task_id + (f"[{ti.rendered_map_index}]" if ti.rendered_map_index else "")
            for ti in tis
        )


def _count(value: Any) -> str:
    return "-" if value is None else str(value)


def drop_rows(drop_dir: Path) -> list[dict[str, str]]:
    """What a register would pick up, from the manifests; quarantined runs after them.

    Dot folders (work areas) and the quarantine are not part of any register's drop.
    """
    rows = []
    for manifest_path in sorted(drop_dir.glob(f"*/*/*/{MANIFEST}")):
        parts = manifest_path.relative_to(drop_dir).parts
        if any(part.startswith((".", "_")) for part in parts):
            continue
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        validation = manifest.get("validation", {})
        passed = "passed" if validation.get("success") else "FAILED"
        excluded = manifest.get("excluded", {})
        rows.append(
            {
                "register": manifest["registry"],
                "delivery": manifest["delivery"],
                "period": f"{manifest['period']['from']}..{manifest['period']['to']}",
                "status": f"published v{manifest['version']}",
                "rows": _count(manifest.get("row_count")),
                "persons": _count(manifest.get("person_count")),
                **{reason: _count(excluded.get(reason)) for reason in EXCLUSION_REASONS},
                "validation": f"{passed} ({validation.get('expectations', 0)} expectations)",
                "drop": str(manifest_path.parent.relative_to(PROJECT_DIR)),
            }
        )
    for report_path in sorted((drop_dir / QUARANTINE).glob(f"*/*/*/{REPORT}")):
        code, delivery, folder = report_path.relative_to(drop_dir / QUARANTINE).parts[:3]
        report = json.loads(report_path.read_text(encoding="utf-8"))
        rows.append(
            {
                "register": code,
                "delivery": delivery,
                "period": folder.split(".")[0].replace("_", ".."),
                "status": "quarantined",
                "validation": f"FAILED: {', '.join(report.get('failed', []))}",
                "drop": str(report_path.parent.relative_to(PROJECT_DIR)),
            }
        )
    return rows


def print_table(rows: list[dict[str, str]]) -> None:
    columns = ["register", "delivery", "period", "status", "rows", "persons"]
    columns += [*EXCLUSION_REASONS, "validation", "drop"]
    numeric = {"rows", "persons", *EXCLUSION_REASONS}
    widths = {c: max([len(c), *(len(r.get(c, "-")) for r in rows)]) for c in columns}

    def line(values: dict[str, str]) -> str:
        cells = [values.get(c, "-") for c in columns]
        return "  ".join(
            cell.rjust(widths[c]) if c in numeric else cell.ljust(widths[c])
            for c, cell in zip(columns, cells, strict=True)
        ).rstrip()

    print(line({c: c for c in columns}))
    print(line({c: "-" * widths[c] for c in columns}))
    for row in rows:
        print(line(row))


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 when every delivery DAG succeeded, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="leveranse demo", description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=20_000, help="synthetic persons")
    parser.add_argument("--seed", type=int, default=42, help="random seed of the synthetic data")
    args = parser.parse_args(argv)
    started = time.monotonic()
    today = datetime.now(UTC).date()
    period_from, period_to = (today - timedelta(days=PERIOD_DAYS)).isoformat(), today.isoformat()
    try:
        with _step(1, "configure (everything under var/)"):
            for note in configure():
                print(f"      {note}")
            wipe()
        with _step(2, "Airflow metadata database"):
            print(f"      {migrate()}")
        with _step(3, f"synthetic source data: {args.persons} persons, seed {args.seed}"):
            print(f"      {synthesize(args.persons, args.seed)}")
        with _step(4, f"delivery DAGs with dag.test(), period {period_from} .. {period_to}"):
            failures = run_dags(period_from, period_to)
        with _step(5, f"drops in {DROP_DIR} (from their manifests)"):
            print_table(drop_rows(DROP_DIR))
    except DemoFailed as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    for failure in failures:
        print(f"\ndemo FAILED: {failure}", file=sys.stderr)
    print(f"\ndemo {'FAILED' if failures else 'done'} in {time.monotonic() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
