"""``python -m benchmarks`` (``make bench``): the PHV population delivery against its baselines.

For every chosen dialect, size and period the script runs, each as a child process whose
wall time and peak RSS are measured (benchmarks.measure):

- ``delivery``: ``leveranse run PHV`` end to end (extraction, minimisation, validation,
  publish, manifest, disclosure log), into a fresh drop folder and state database;
- ``raw``: the same query exported straight to Parquet, the floor (benchmarks.baselines);
- ``naive``: whole tables into pandas, filtered and merged there (benchmarks.baselines).

Source databases are generated once per dialect and size and cached (benchmarks.data).
Every result is kept in benchmarks/results.json, keyed by cell, so runs of subsets add up;
benchmarks/RESULTS.md is rewritten from all of them after every cell. The store is part of
the repository, not of var/: a partial run on a fresh clone (one size, one dialect) replaces
only its own cells and keeps the figures measured before, which RESULTS.md and the README
quote.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks import measure, report
from benchmarks.data import BENCH_DIR, TODAY, Source

RESULTS_JSON = Path(__file__).resolve().parent / "results.json"
WORK_DIR = BENCH_DIR / "work"
PERIODS: dict[str, tuple[date, date]] = {
    "year": (TODAY - timedelta(days=365), TODAY),
    "night": (TODAY - timedelta(days=1), TODAY),
}
METHODS = ("raw", "delivery", "naive")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default="1000000,10000000", help="NPR episodes, comma-separated")
    parser.add_argument("--dialects", default="postgresql,sqlite", help="postgresql,sqlite")
    parser.add_argument("--periods", default="year,night", help="year,night")
    parser.add_argument("--methods", default=",".join(METHODS), help="raw,delivery,naive")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell (median reported)")
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        default=16.0,
        help="a child above this RSS is stopped and reported as out of memory",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per child")
    parser.add_argument(
        "--max-load",
        type=float,
        default=1.0,
        help="wait before each run until the 1-minute load average is below this",
    )
    parser.add_argument(
        "--load-wait",
        type=float,
        default=1800,
        help="seconds to wait for --max-load before running anyway (the load is recorded)",
    )
    parser.add_argument(
        "--regenerate", action="store_true", help="drop and regenerate the chosen databases"
    )
    parser.add_argument(
        "--drop-databases",
        action="store_true",
        help="remove the chosen cached databases afterwards (they are large)",
    )
    return parser


def _argv(method: str, source: Source, start: date, end: date, out: Path) -> list[str]:
    if method == "delivery":
        leveranse = str(Path(sys.executable).parent / "leveranse")
        as_of = datetime.combine(end, datetime.min.time()).isoformat()
        period = ["--from", start.isoformat(), "--to", end.isoformat()]
        return [leveranse, "run", "PHV", *period, "--reservations-as-of", as_of]
    args = [source.url, start.isoformat(), end.isoformat(), str(out)]
    return [sys.executable, "-m", "benchmarks.baselines", method, *args]


def _env(source: Source) -> dict[str, str]:
    """The delivery's settings: the cached source, and a fresh drop folder and state DB.

    The cached databases keep the reservation_sync row of the day they were generated; the
    freshness rule (fail closed after 36 hours) is not what is measured, so it is relaxed.
    """
    return os.environ | {
        "LEVERANSE_SOURCE_URL": source.url,
        "LEVERANSE_STATE_URL": f"sqlite:///{WORK_DIR / 'state.db'}",
        "LEVERANSE_DROP_DIR": str(WORK_DIR / "drops"),
        "LEVERANSE_RESERVATION_MAX_AGE_HOURS": str(24 * 365 * 100),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }


def _output_rows(method: str, out: Path) -> int | None:
    """Rows written, read back from the Parquet footer (the delivery's from its drop)."""
    import pyarrow.parquet as pq

    if method == "delivery":
        files = list((WORK_DIR / "drops" / "PHV").rglob("PHV_population_*.parquet"))
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files) if files else None
    if not out.exists():
        return None
    rows = pq.ParquetFile(out).metadata.num_rows
    if method == "raw":  # the query's kind-0 rows are counts of left-out records, not records
        kinds = pq.read_table(out, columns=["kind"]).column("kind").to_pylist()
        rows = sum(1 for k in kinds if k == 1)
    return rows


def _quiet(max_load: float, wait_seconds: float) -> float:
    """The 1-minute load average once it is below max_load, or when wait_seconds are up.

    The machine is shared: other work on the 2 cores would be measured with the run, so a
    run waits for a quiet moment, and the load it started at goes into the table.
    """
    deadline = time.monotonic() + wait_seconds
    while (load := os.getloadavg()[0]) >= max_load and time.monotonic() < deadline:
        time.sleep(10)
    return load


def _one(method: str, source: Source, period: str, args: argparse.Namespace) -> dict[str, Any]:
    start, end = PERIODS[period]
    runs = []
    load: list[float] = []  # the machine's 1-minute load average as each run starts
    rows = None
    for _ in range(args.repeat):
        shutil.rmtree(WORK_DIR, ignore_errors=True)
        WORK_DIR.mkdir(parents=True)
        load.append(_quiet(args.max_load, args.load_wait))
        out = WORK_DIR / f"{method}.parquet"
        result = measure.run(
            _argv(method, source, start, end, out),
            env=_env(source),
            memory_limit_bytes=int(args.memory_limit_gb * 2**30),
            timeout_seconds=args.timeout,
        )
        rows = _output_rows(method, out) if result.outcome == "ok" else None
        runs.append(result)
        print(
            f"bench: {source.dialect} {source.size} {period} {method}: {result.outcome} "
            f"{result.seconds:.1f} s, peak {result.peak_rss_bytes / 2**20:.0f} MiB, rows {rows}",
            file=sys.stderr,
            flush=True,
        )
        if result.outcome != "ok":
            print(result.stderr_tail, file=sys.stderr)
            break
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    ok = [r for r in runs if r.outcome == "ok"]
    return {
        "dialect": source.dialect,
        "size": source.size,
        "period": period,
        "method": method,
        "outcome": "ok" if len(ok) == len(runs) else runs[-1].outcome,
        "seconds": statistics.median(r.seconds for r in runs),
        "peak_rss_bytes": max(r.peak_rss_bytes for r in runs),
        "rows": rows,
        "load": max(load),
        "runs": [asdict(r) | {"stderr_tail": ""} for r in runs],
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": report.cpu(),
    }


def _load() -> dict[str, Any]:
    if RESULTS_JSON.exists():
        return json.loads(RESULTS_JSON.read_text(encoding="utf-8"))
    return {"cells": {}, "sources": {}}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    results = _load()
    for dialect in args.dialects.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            source = Source(dialect, size)
            if args.regenerate:
                source.drop()
            results["sources"][f"{dialect}_{size}"] = source.ensure()
            for period in args.periods.split(","):
                for method in args.methods.split(","):
                    cell = _one(method, source, period, args)
                    results["cells"][f"{dialect}|{size}|{period}|{method}"] = cell
                    RESULTS_JSON.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
                    report.write(results)
            if args.drop_databases:
                source.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
