"""No identity number leaks: not into logs, error messages, reports, pages or the state DB.

Every delivery type runs as a user runs it, at DEBUG level, over synthetic data with
reservations of every kind, a failed validation and a refused register list. Then every
line printed and every file written outside the Parquet drops (which are meant to carry the
numbers) is searched for the source's identity numbers.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from sqlalchemy import text

from etl.source import make_engine
from etl.synth import synthesize
from tests.test_cli import REGISTERS, leveranse

ELEVEN_DIGITS = re.compile(r"(?<!\d)\d{11}(?!\d)")
TODAY = date.today()


def identity_numbers(url: str) -> set[str]:
    engine = make_engine(url)
    with engine.connect() as conn:
        numbers = set(
            conn.execute(
                text(
                    "SELECT fnr FROM npr_episode UNION SELECT fnr FROM kpr_contact"
                    " UNION SELECT fnr FROM reservation UNION SELECT fnr FROM register_patient"
                )
            ).scalars()
        )
    engine.dispose()
    return numbers


def leaked(numbers: set[str], texts: dict[str, str]) -> dict[str, int]:
    """Where source numbers appear, by place: counts only, so a failure leaks nothing."""
    found = {}
    for place, content in texts.items():
        hits = set(ELEVEN_DIGITS.findall(content)) & numbers
        if hits:
            found[place] = len(hits)
    return found


@pytest.mark.slow
def test_no_identity_number_in_any_output(tmp_path):
    source_url = f"sqlite:///{tmp_path / 'source.db'}"
    engine = make_engine(source_url)
    synthesize(engine, persons=600, seed=11, today=TODAY)
    engine.dispose()
    numbers = identity_numbers(source_url)
    assert len(numbers) > 500

    drops, state = tmp_path / "drops", f"sqlite:///{tmp_path / 'state.db'}"
    common = ["--source", source_url, "--specs", str(REGISTERS), "--drop-dir", str(drops)]
    common += ["--state", state]
    period = ["--from", (TODAY - timedelta(days=730)).isoformat(), "--to", TODAY.isoformat()]
    outputs: dict[str, str] = {}
    for code in ("PHV", "PARKINSON", "NORKAR"):
        done = leveranse("-v", "run", code, *common, *period)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[f"run {code}"] = done.stdout + done.stderr

    # A failed validation: every PHV episode twice, once the key is gone.
    engine = make_engine(source_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE keep AS SELECT * FROM npr_episode"))
        conn.execute(text("DROP TABLE npr_episode"))
        conn.execute(text("CREATE TABLE npr_episode AS SELECT * FROM keep"))
        conn.execute(text("INSERT INTO npr_episode SELECT * FROM keep"))
    engine.dispose()
    failed = leveranse("-v", "run", "PHV", *common, "--from", period[1], "--to", period[3])
    assert failed.returncode == 3
    outputs["failed run"] = failed.stdout + failed.stderr

    # A refused list that is full of numbers, and an audit of it all.
    listing = tmp_path / "bad.csv"
    some = sorted(numbers)[:20]
    rows = [f"{n[:10]}{(int(n[10]) + 1) % 10},X{i},2099-01-01" for i, n in enumerate(some)]
    listing.write_text("fnr,case_id,index_date\n" + "\n".join(rows) + "\n", encoding="utf-8")
    refused = leveranse("-v", "load-list", "PARKINSON", str(listing), "--source", source_url)
    assert refused.returncode == 2
    outputs["refused list"] = refused.stdout + refused.stderr
    audit = leveranse("audit", "--check", "--drop-dir", str(drops), "--state", state)
    outputs["audit"] = audit.stdout + audit.stderr
    numbers |= {row.split(",")[0] for row in rows}

    written = {
        str(path.relative_to(tmp_path)): path.read_text(encoding="utf-8")
        for path in drops.rglob("*")
        if path.is_file() and path.suffix in {".json", ".html", ".txt", ".log"}
    }
    assert any(name.endswith("validation_report.json") for name in written)
    assert any(name.endswith("coverage.html") for name in written)
    assert sum(name.endswith("manifest.json") for name in written) == 3

    state_engine = make_engine(state)
    with state_engine.connect() as conn:
        log_rows = conn.execute(text("SELECT * FROM disclosure_log")).all()
    state_engine.dispose()
    outputs["disclosure log"] = "\n".join(" ".join(map(str, row)) for row in log_rows)

    assert leaked(numbers, outputs | written) == {}
