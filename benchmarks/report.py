"""benchmarks/RESULTS.md, written from every stored result (benchmarks/results.json)."""

from __future__ import annotations

import os
import platform
import sqlite3
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
# Everything below this line in RESULTS.md is written by hand (analysis, profiles) and kept.
NOTES_MARKER = "<!-- notes: written by hand, kept when the tables are rewritten -->"
SIZES_LABEL = {1_000_000: "1M", 10_000_000: "10M"}
TARGETS = """\
Targets (issue 6), read from the table:
- full-year delivery at 10M on PostgreSQL at most 1.5x the raw export;
- peak memory at 10M at most 1.2x that at 1M, and under 1.5 GB;
- one night at 10M under 10 s;
- faster than the naive pandas version at every size, and running where it runs out of memory.
"""


def cpu() -> str:
    """This machine's processor as /proc/cpuinfo names it, with its core count.

    Stored with every result: sessions run on different machines of the same kind, and a
    time is only comparable with times measured on the same processor.
    """
    model = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return f"{os.cpu_count()} cores, {model}"


def _machine(results: dict[str, Any]) -> list[str]:
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
    packages = ", ".join(
        f"{name} {version(name)}"
        for name in ("pandas", "pyarrow", "numpy", "sqlalchemy", "psycopg", "great-expectations")
    )
    seen = sorted({c["cpu"] for c in results["cells"].values() if c.get("cpu")})
    return [
        f"- This run: {cpu()}; memory {int(meminfo[1]) / 2**20:.1f} GiB",
        f"- Python {platform.python_version()} on {platform.platform()}",
        f"- {packages}; SQLite {sqlite3.sqlite_version}; PostgreSQL: see the source rows",
        f"- Processors in the table (column *cpu*; compare times only within one): "
        f"{'; '.join(seen) or '-'}",
    ]


def _seconds(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "not run"
    if cell["outcome"] != "ok":
        return cell["outcome"].replace("_", " ")
    return f"{cell['seconds']:.1f} s"


def _memory(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "not run"
    return f"{cell['peak_rss_bytes'] / 2**20:,.0f} MiB"


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if a is None or b is None or a["outcome"] != "ok":
        return "-"
    if b["outcome"] != "ok":
        return f"{b['outcome'].replace('_', ' ')} baseline"
    return f"{a['seconds'] / b['seconds']:.2f}"


def write(results: dict[str, Any]) -> None:
    """Rewrite RESULTS.md: machine, source sizes, one row per cell, ratios."""
    cells: dict[str, dict[str, Any]] = results["cells"]
    keys = sorted(
        {tuple(k.split("|")[:3]) for k in cells},
        key=lambda k: (k[0], int(k[1]), k[2] != "year"),
    )
    lines = [
        "# Benchmark: PHV population delivery",
        "",
        f"Written {datetime.now(UTC).date().isoformat()} by `make bench` (`python -m benchmarks`);"
        " each row says when it was measured. Times are wall seconds of one child process,",
        "memory its peak RSS (`ru_maxrss` from `wait4`); the database server's own memory is "
        "not included. *load*: the highest 1-minute load average as the row's runs started "
        "(2 cores: above 2 means the runs shared the CPU with other work); each run first "
        "waits up to `--load-wait` seconds for it to fall below `--max-load` (default 1.0).",
        "Source data: `etl.synth.synthesize` (seed and date in benchmarks/data.py).",
        "",
        "## Machine",
        "",
        *_machine(results),
        "",
        "## Sources",
        "",
        "| source | persons | npr_episode | npr_diagnosis | kpr_contact | kpr_diagnosis | "
        "on disk | generated in |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, info in sorted(results["sources"].items()):
        rows = info["rows"]
        lines.append(
            f"| {name} | {rows['persons']:,} | {rows['npr_episode']:,} | "
            f"{rows['npr_diagnosis']:,} | {rows['kpr_contact']:,} | {rows['kpr_diagnosis']:,} | "
            f"{info['bytes'] / 2**30:.2f} GiB | {info['generation_seconds']:.0f} s |"
        )
    lines += [
        "",
        "## Results",
        "",
        "| dialect | episodes | period | rows | delivery | raw export | naive pandas | "
        "delivery / raw | delivery / naive | peak delivery | peak raw | peak naive | load | "
        "measured | cpu |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dialect, size, period in keys:
        got = {m: cells.get(f"{dialect}|{size}|{period}|{m}") for m in ("delivery", "raw", "naive")}
        rows = next((c["rows"] for c in got.values() if c and c.get("rows") is not None), None)
        when = max((c["measured_at"][:10] for c in got.values() if c), default="")
        load = max((c.get("load", 0.0) for c in got.values() if c), default=0.0)
        cpus = " / ".join(sorted({c.get("cpu", "?") for c in got.values() if c}))
        lines.append(
            f"| {dialect} | {SIZES_LABEL.get(int(size), size)} | {period} | "
            f"{'-' if rows is None else f'{rows:,}'} | "
            f"{_seconds(got['delivery'])} | {_seconds(got['raw'])} | {_seconds(got['naive'])} | "
            f"{_ratio(got['delivery'], got['raw'])} | {_ratio(got['delivery'], got['naive'])} | "
            f"{_memory(got['delivery'])} | {_memory(got['raw'])} | {_memory(got['naive'])} | "
            f"{load:.1f} | {when} | {cpus} |"
        )
    lines += ["", TARGETS, NOTES_MARKER]
    old = RESULTS_MD.read_text(encoding="utf-8") if RESULTS_MD.exists() else ""
    notes = old.split(NOTES_MARKER, 1)[1] if NOTES_MARKER in old else "\n"
    RESULTS_MD.write_text("\n".join(lines) + notes, encoding="utf-8")
