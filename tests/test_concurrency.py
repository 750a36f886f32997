"""Reruns, concurrent runs and unreachable databases, through the CLI as a scheduler runs it.

A rerun with unchanged data writes nothing; a rerun with changed data publishes a new version
beside the old; two runs of one register and period at once never both write; a database
that cannot be reached or does not answer in time fails the run closed with exit 4 and one
line, leaving nothing behind. Real subprocesses, real files, real databases.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import text

from etl.deliver import utc_now
from tests.test_crash import CODE, LABEL, Delivery, assert_complete, prepared

pytestmark = pytest.mark.slow

CLOSED_PORT = "postgresql+psycopg://postgres@127.0.0.1:1/none"
# How long the run that wins the lock stalls just before its rename, holding the lock. The
# other run reaches the lock about a second after start (Great Expectations is imported
# later, under the lock), so this is a wide margin, not a race.
HOLD_SECONDS = 4


@pytest.fixture
def delivery(tmp_path: Path) -> Iterator[Delivery]:
    """The reruns and races are about files and locks: an SQLite source is enough."""
    with prepared(f"sqlite:///{tmp_path / 'source.db'}", tmp_path) as prepared_delivery:
        yield prepared_delivery


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Mode, size and mtime of the drop folder and everything in it but the bookkeeping
    under .work (a run rewrites its lock file and makes and removes its staging folder)."""
    paths = [root, *(p for p in root.rglob("*") if ".work" not in p.relative_to(root).parts)]
    return {
        str(path.relative_to(root)): (stat.st_mode, stat.st_size, stat.st_mtime_ns)
        for path in paths
        for stat in [path.stat()]
    }


def fnrs(folder: Path) -> set[str]:
    """The identity numbers in a drop's main Parquet file."""
    return set(pq.read_table(folder / f"{CODE}_population_{LABEL}.parquet")["fnr"].to_pylist())


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The single line a failed run prints on stderr (an operator's alert text)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("leveranse: error: ")
    return lines[0]


def test_an_unchanged_rerun_writes_nothing(delivery: Delivery) -> None:
    first = delivery.run()
    assert first.returncode == 0, first.stderr
    assert "published v1, 6 rows, 3 persons" in first.stdout
    before = snapshot(delivery.drops)

    again = delivery.run()
    assert again.returncode == 0, again.stderr
    assert f"{LABEL}: unchanged v1," in again.stdout
    assert snapshot(delivery.drops) == before
    assert delivery.staging() == []
    assert delivery.statuses() == ["published", "unchanged"]
    audit = delivery.audit()
    assert audit.returncode == 0, audit.stdout


def test_a_reservation_gives_a_new_version_that_supersedes_the_old(delivery: Delivery) -> None:
    assert delivery.run().returncode == 0
    (v1,) = delivery.published()
    before = snapshot(v1)
    leaving = delivery.persons[0]
    registered = (utc_now() - timedelta(minutes=1)).isoformat(sep=" ")
    delivery.source.reserve(leaving, CODE, "OPT_OUT", registered)

    second = delivery.run()
    assert second.returncode == 0, second.stderr
    assert "published v2, 4 rows, 2 persons" in second.stdout
    assert [folder.name for folder in delivery.published()] == [LABEL, f"{LABEL}.v2"]
    manifest = assert_complete(v1.with_name(f"{LABEL}.v2"))
    assert (manifest["version"], manifest["supersedes"]) == (2, LABEL)
    assert manifest["excluded"]["opt_out"] == "<5"
    assert snapshot(v1) == before  # a published folder is never touched again
    assert leaving in fnrs(v1)
    assert leaving not in fnrs(v1.with_name(f"{LABEL}.v2"))
    assert delivery.statuses() == ["published", "published"]
    audit = delivery.audit()
    assert audit.returncode == 0, audit.stdout


def processes_with_open(path: Path) -> int:
    """How many processes have ``path`` open, from the fd links in Linux's /proc."""
    target = str(path.resolve())
    count = 0
    for fds in Path("/proc").glob("[0-9]*/fd"):
        try:
            count += any(os.readlink(fd) == target for fd in fds.iterdir())
        except OSError:  # the process ended meanwhile, or belongs to another user
            continue
    return count


def start_together(delivery: Delivery, **env: str) -> list[Future[subprocess.CompletedProcess]]:
    """Two identical runs started at the same moment, each stalling before its rename."""
    stall = {"LEVERANSE_FAULT_SLEEP": f"before_rename:{HOLD_SECONDS}"}
    pool = ThreadPoolExecutor(2)
    try:
        return [pool.submit(delivery.run, **(stall | env)) for _ in range(2)]
    finally:
        pool.shutdown(wait=False)  # the runs go on; the caller waits on their futures


@pytest.mark.xdist_group("lock_contention")
def test_of_two_runs_at_once_one_writes_and_the_other_waits_and_finds_it_unchanged(
    delivery: Delivery,
) -> None:
    runs = start_together(delivery)
    # Proof that the loser waits on the lock rather than arriving late: while the winner
    # holds the lock (it wrote its pid into the lock file and has not published yet, and it
    # publishes before it releases), both processes have the lock file open.
    waited = False
    while not waited and not all(run.done() for run in runs):
        held = delivery.lock.exists() and delivery.lock.stat().st_size > 0
        waited = held and processes_with_open(delivery.lock) == 2 and not delivery.published()
        time.sleep(0.05)
    assert waited, "the second run never waited on the lock while the first held it"

    results = sorted((run.result() for run in runs), key=lambda result: result.stdout)
    assert [result.returncode for result in results] == [0, 0], [r.stderr for r in results]
    published, unchanged = results
    assert f"{LABEL}: published v1," in published.stdout
    assert f"{LABEL}: unchanged v1," in unchanged.stdout
    assert [folder.name for folder in delivery.published()] == [LABEL]
    winner, loser = delivery.attempts()
    assert (winner["status"], loser["status"]) == ("published", "unchanged")
    assert loser["started_at"] >= winner["finished_at"]  # one after the other, never both
    assert delivery.staging() == []
    assert delivery.audit().returncode == 0


@pytest.mark.xdist_group("lock_contention")
def test_of_two_runs_at_once_with_a_short_lock_wait_the_loser_exits_6(delivery: Delivery) -> None:
    runs = start_together(delivery, LEVERANSE_LOCK_WAIT_SECONDS="1")
    results = sorted((run.result() for run in runs), key=lambda result: result.returncode)
    assert [result.returncode for result in results] == [0, 6], [r.stderr for r in results]
    published, busy = results
    assert f"{LABEL}: published v1," in published.stdout
    message = one_line_error(busy)
    assert f"{CODE} population {LABEL} is being delivered by another run" in message
    assert "gave up after 1 s" in message
    assert [folder.name for folder in delivery.published()] == [LABEL]
    # The loser disclosed nothing, so it has no row; the winner's is the only one.
    assert delivery.statuses() == ["published"]
    assert delivery.audit().returncode == 0


def test_an_unreachable_source_fails_closed_with_exit_4(delivery: Delivery) -> None:
    result = delivery.run(LEVERANSE_SOURCE_URL=CLOSED_PORT)
    assert result.returncode == 4
    assert "127.0.0.1" in one_line_error(result)
    assert delivery.published() == []
    assert delivery.staging() == []
    (attempt,) = delivery.attempts()
    assert attempt["status"] == "failed"
    assert delivery.audit().returncode == 0


def test_an_unreachable_state_database_fails_closed_with_exit_4(delivery: Delivery) -> None:
    result = delivery.run(LEVERANSE_STATE_URL=CLOSED_PORT)
    assert result.returncode == 4
    one_line_error(result)
    assert not delivery.drops.exists()  # nothing was staged without a log to record it


@pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_a_source_query_past_its_statement_timeout_fails_closed_with_exit_4(
    db_url: str, tmp_path: Path
) -> None:
    """The source answers nothing while another session holds a lock on a table the
    extraction reads; the statement timeout cancels the query instead of waiting forever."""
    with prepared(db_url, tmp_path) as delivery, delivery.source.engine.connect() as blocker:
        blocker.execute(text("LOCK TABLE npr_episode IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        result = delivery.run(LEVERANSE_STATEMENT_TIMEOUT_SECONDS="1")
        elapsed = time.monotonic() - started
    assert result.returncode == 4
    assert "statement timeout" in one_line_error(result)
    assert elapsed < 30
    assert delivery.published() == []
    assert delivery.staging() == []
    (attempt,) = delivery.attempts()
    assert attempt["status"] == "failed"
    assert "statement timeout" in attempt["reason"]
    assert delivery.audit().returncode == 0
