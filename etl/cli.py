"""The command line: ``leveranse run | load-list | audit --check | synth | demo``.

Every option also reads its LEVERANSE_* environment variable (CONTRACT.md section 3). A
failure ends with one line on stderr that says why and a non-zero exit code an operator or a
scheduler can act on. Heavy libraries (Great Expectations, Airflow) are imported only by the
subcommands that need them, so ``leveranse --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import UTC, date, datetime

from etl.redact import install as install_redaction
from etl.redact import one_line, redact

log = logging.getLogger("leveranse")

# Exit codes: distinct per kind of failure, so a scheduler can tell them apart.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # bad arguments or a bad spec
EXIT_VALIDATION = 3  # validation failed: nothing published, evidence quarantined
EXIT_SOURCE = 4  # source or state database unreachable or failing
EXIT_RESERVATIONS = 5  # the reservation copy is stale: fail closed
EXIT_BUSY = 6  # another run holds the register and period
EXIT_AUDIT = 7  # the disclosure log and the drops on disk disagree


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date (YYYY-MM-DD): {value!r}") from None


def _instant(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO timestamp: {value!r}") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _add_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        default=_env("LEVERANSE_SOURCE_URL"),
        help="source database URL (LEVERANSE_SOURCE_URL; default: SQLite under var/)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leveranse",
        description="Deliveries from NPR and KPR to the national medical quality registers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="deliver one register for one period")
    run.add_argument("code", help="the register's code, e.g. PHV")
    _add_source(run)
    run.add_argument("--specs", default=_env("LEVERANSE_SPECS_DIR"), help="register specs folder")
    run.add_argument("--drop-dir", default=_env("LEVERANSE_DROP_DIR"), help="drop folder")
    run.add_argument("--state", default=_env("LEVERANSE_STATE_URL"), help="state database URL")
    run.add_argument("--from", dest="start", type=_date, help="first received date (inclusive)")
    run.add_argument("--to", dest="end", type=_date, help="last received date (exclusive)")
    run.add_argument(
        "--reservations-as-of",
        type=_instant,
        help="apply reservations active at this instant (default: now)",
    )
    run.add_argument(
        "--max-reservation-age-hours",
        type=float,
        help="refuse when reservation_sync is older (LEVERANSE_RESERVATION_MAX_AGE_HOURS; 36)",
    )

    load = commands.add_parser("load-list", help="replace a register's patient or case list")
    load.add_argument("code", help="the register's code, e.g. PARKINSON")
    load.add_argument("file", help="CSV (';' or ',', UTF-8) or Parquet: fnr, case_id, index_date")
    _add_source(load)
    load.add_argument(
        "--specs", default=_env("LEVERANSE_SPECS_DIR"), help="register specs folder (a check)"
    )

    audit = commands.add_parser("audit", help="reconcile the disclosure log with the drops")
    audit.add_argument(
        "--check", action="store_true", required=True, help="compare log rows and files"
    )
    audit.add_argument("--drop-dir", default=_env("LEVERANSE_DROP_DIR"), help="drop folder")
    audit.add_argument("--state", default=_env("LEVERANSE_STATE_URL"), help="state database URL")

    synth = commands.add_parser("synth", help="create the source tables with synthetic data")
    _add_source(synth)
    synth.add_argument("--persons", type=int, required=True, help="number of synthetic persons")
    synth.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    synth.add_argument("--today", type=_date, help="the generated data ends the day before")

    commands.add_parser(
        "demo", help="synthetic data, every delivery DAG through Airflow, a summary"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    from etl.deliver import deliver
    from etl.settings import Settings

    settings = Settings.resolve(
        source_url=args.source,
        specs_dir=args.specs,
        drop_dir=args.drop_dir,
        state_url=args.state,
        reservation_max_age_hours=args.max_reservation_age_hours,
    )
    result = deliver(settings, args.code, args.start, args.end, args.reservations_as_of)
    if result.status == "nothing_due":
        print(f"{result.registry} {result.delivery}: already delivered up to {result.up_to}")
        return EXIT_OK
    excluded = ", ".join(f"{k} {v}" for k, v in result.excluded.items() if v) or "none"
    print(
        f"{result.registry} {result.delivery} {result.period.label}: {result.status} "
        f"v{result.version}, {result.row_count} rows, {result.person_count} persons, "
        f"excluded: {excluded} -> {result.path}"
    )
    return EXIT_OK


def _load_list(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sqlalchemy import inspect

    from etl.register_list import load_list
    from etl.settings import Settings
    from etl.source import create_schema, make_engine
    from etl.spec import read_specs

    settings = Settings.resolve(source_url=args.source, specs_dir=args.specs)
    folder = read_specs(settings.specs_dir)  # a broken spec is the run's problem, not the list's
    if args.code not in folder.specs and args.code not in folder.blocked:
        log.warning(
            "%s has no spec in %s: check the register code (the list is loaded anyway)",
            args.code,
            settings.specs_dir,
        )
    engine = make_engine(settings.source_url)
    try:
        if not inspect(engine).has_table("register_patient"):
            create_schema(engine)  # a fresh embedded database; production has its tables
        print(load_list(engine, args.code, Path(args.file)))
    finally:
        engine.dispose()
    return EXIT_OK


def _audit(args: argparse.Namespace) -> int:
    from etl.reconcile import reconcile
    from etl.settings import Settings

    settings = Settings.resolve(drop_dir=args.drop_dir, state_url=args.state)
    result = reconcile(settings.state_url, settings.drop_dir)
    print(result.report())
    return EXIT_OK if result.ok else EXIT_AUDIT


def _synth(args: argparse.Namespace) -> int:
    from etl.settings import Settings
    from etl.source import make_engine
    from etl.synth import synthesize

    if args.persons < 1:
        raise ValueError("--persons must be at least 1")
    engine = make_engine(Settings.resolve(source_url=args.source).source_url)
    try:
        summary = synthesize(engine, args.persons, args.seed, args.today, progress=True)
    finally:
        engine.dispose()
    print("synthetic source: " + ", ".join(f"{n} {t}" for t, n in summary.tables().items()))
    return EXIT_OK


def _demo(_args: argparse.Namespace) -> int:
    from etl.demo import main as demo_main

    return demo_main([])


def _exit_code(exc: BaseException) -> int:
    """The exit code for a failure, by its kind (see the EXIT_* constants)."""
    from sqlalchemy.exc import SQLAlchemyError

    from etl.drop import DeliveryLocked
    from etl.pseudonym import PseudonymKeyMissing
    from etl.reservations import ReservationsStale
    from etl.spec import SpecError
    from etl.validate import ValidationFailed

    kinds: list[tuple[type[BaseException], int]] = [
        (SpecError, EXIT_USAGE),
        (PseudonymKeyMissing, EXIT_USAGE),
        (ValidationFailed, EXIT_VALIDATION),
        (SQLAlchemyError, EXIT_SOURCE),
        (ReservationsStale, EXIT_RESERVATIONS),
        (DeliveryLocked, EXIT_BUSY),
    ]
    return next((code for kind, code in kinds if isinstance(exc, kind)), EXIT_ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.start and args.end and args.start >= args.end:
        parser.error(
            f"--from {args.start} must be before --to {args.end} (the period is [from, to))"
        )
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    install_redaction()
    handlers = {
        "run": _run,
        "load-list": _load_list,
        "audit": _audit,
        "synth": _synth,
        "demo": _demo,
    }
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("leveranse: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from etl.register_list import ListRejected

        if isinstance(exc, ListRejected):  # the whole report: row numbers and reasons
            print(f"leveranse: error: {redact(str(exc))}", file=sys.stderr)
            return EXIT_USAGE
        code = _exit_code(exc)
        log.debug("failure", exc_info=exc if args.verbose else None)
        print(f"leveranse: error: {one_line(exc)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
