"""A delivery killed at any step leaves no new drop or a complete one, and the next run
finishes the job and cleans up what the dead run left behind.

Each case runs ``leveranse run`` as a real subprocess with LEVERANSE_FAULT naming one fault
point of etl.faults; the process sends itself SIGKILL there, so no except, finally or atexit
handler runs, exactly as under ``kill -9`` or the OOM killer. The test then looks at the drop
folder as a register polling it would, and at what the dead run left for the next run to
clean (a staging folder, a 'running' disclosure log row). A second run without the fault
must succeed, leave exactly one complete drop, no staging and no running row, and satisfy
``leveranse audit --check``.

A run whose validation fails is killed the same way while it moves its evidence into
quarantine: it leaves no quarantine folder or a complete one with its report, and the next run
after the fix publishes, cleans the staging and keeps the quarantine for the operator.

The helpers here (Delivery, prepared) are shared with test_concurrency.py.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from etl import faults
from etl.audit import DisclosureLog
from etl.deliver import EVIDENCE_FILE, utc_now
from etl.drop import MANIFEST, QUARANTINE, REPORT, sha256_of
from etl.faults import POINTS
from etl.validate import UNIQUE_KEY
from tests.delivery_helpers import population_spec, write_spec
from tests.source_builder import Source
from tests.test_cli import leveranse

pytestmark = pytest.mark.slow

CODE = "TESTPOP"
DELIVERY = "population"
START, END = "2024-03-01", "2024-04-01"
LABEL = f"{START}_{END}"
VERSION_NAME = re.compile(rf"{re.escape(LABEL)}(\.v[2-9]\d*)?")
DATA = f"{CODE}_{DELIVERY}_{LABEL}.parquet"


@dataclass(frozen=True)
class Delivery:
    """One test's source, spec, drop folder and state database, driven through the CLI.

    Every command gets its settings from LEVERANSE_* variables, as an operator's scheduler
    would pass them, so ``run`` and ``audit`` are sure to look at the same places.
    """

    source: Source
    persons: list[str]
    specs: Path
    drops: Path
    state: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            "LEVERANSE_SOURCE_URL": self.source.url,
            "LEVERANSE_SPECS_DIR": str(self.specs),
            "LEVERANSE_DROP_DIR": str(self.drops),
            "LEVERANSE_STATE_URL": f"sqlite:///{self.state}",
        }

    def run(self, **env: str) -> subprocess.CompletedProcess:
        """``leveranse run`` of the test's register and period, with extra variables."""
        return leveranse("run", CODE, "--from", START, "--to", END, env=self.env | env)

    def audit(self) -> subprocess.CompletedProcess:
        return leveranse("audit", "--check", env=self.env)

    @property
    def folder(self) -> Path:
        """The register's folder: what it lists and picks up."""
        return self.drops / CODE / DELIVERY

    @property
    def lock(self) -> Path:
        return self.drops / ".work" / CODE / DELIVERY / "locks" / f"{LABEL}.lock"

    def published(self) -> list[Path]:
        """The period folders a register would see, after checking each is complete.

        Anything else visible to a register (a staging folder, a stray file, a folder
        without its manifest or with a file that differs from it) fails the test.
        """
        if self.drops.exists():
            assert {p.name for p in self.drops.iterdir()} <= {".work", QUARANTINE, CODE}
        if not self.folder.exists():
            return []
        folders = sorted(self.folder.iterdir())
        for folder in folders:
            assert VERSION_NAME.fullmatch(folder.name), f"{folder} is visible to the register"
            assert_complete(folder)
        return folders

    def staging(self) -> list[Path]:
        """Staging folders and their lock files under .work (a dead run's, once no run is
        alive)."""
        parent = self.drops / ".work" / CODE / DELIVERY / "staging"
        return sorted(parent.iterdir()) if parent.exists() else []

    def staging_folders(self) -> list[Path]:
        """The staging folders alone: what holds personal data."""
        return [path for path in self.staging() if path.is_dir()]

    def quarantined(self) -> list[Path]:
        """The evidence folders of failed validations, oldest first."""
        folder = self.drops / QUARANTINE / CODE / DELIVERY
        return sorted(folder.iterdir()) if folder.exists() else []

    def attempts(self) -> list[dict[str, Any]]:
        """The disclosure log, oldest attempt first (empty before the first run)."""
        if not self.state.exists():
            return []
        disclosure_log = DisclosureLog(f"sqlite:///{self.state}")
        try:
            return disclosure_log.attempts()
        finally:
            disclosure_log.close()

    def statuses(self) -> list[str]:
        """The attempts' statuses, read-only: safe to poll while runs are writing the log."""
        if not self.state.exists():
            return []
        with closing(sqlite3.connect(f"file:{self.state}?mode=ro", uri=True)) as db:
            query = "SELECT status FROM disclosure_log ORDER BY started_at"
            return [status for (status,) in db.execute(query)]


def assert_complete(folder: Path) -> dict[str, Any]:
    """A published folder holds its manifest and exactly the files it lists, unchanged."""
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["registry"] == CODE
    assert manifest["period"] == {"from": START, "to": END}
    listed = {entry["name"] for entry in manifest["files"]}
    assert {p.name for p in folder.iterdir()} == listed | {MANIFEST}
    for entry in manifest["files"]:
        path = folder / entry["name"]
        assert path.stat().st_size == entry["bytes"]
        assert sha256_of(path) == entry["sha256"]
    return manifest


@contextmanager
def prepared(db_url: str, tmp_path: Path) -> Iterator[Delivery]:
    """A source with three persons, each with a qualifying NPR episode and KPR contact in
    the period (six rows), a fresh reservation copy, and the TESTPOP population spec."""
    source = Source(db_url)
    source.synced(utc_now() - timedelta(hours=1))
    persons = [source.person() for _ in range(3)]
    for person in persons:
        source.episode(person, diagnoses=["F20.0"])
        source.contact(person)
    specs = write_spec(tmp_path / "specs", **population_spec())
    try:
        yield Delivery(source, persons, specs, tmp_path / "drops", tmp_path / "state.db")
    finally:
        source.engine.dispose()


@pytest.fixture
def delivery(db_url: str, tmp_path: Path) -> Iterator[Delivery]:
    with prepared(db_url, tmp_path) as prepared_delivery:
        yield prepared_delivery


class Left(NamedTuple):
    """What a run killed at a point leaves for the next run."""

    staging: int  # staging folders of personal data under .work, to be removed
    running: int  # disclosure log rows still 'running', to be closed
    drops: int  # published folders (complete, but not yet logged)


LEFT_BY = {
    "before_log_start": Left(staging=0, running=0, drops=0),
    "after_log_start": Left(staging=0, running=1, drops=0),
    "during_extraction": Left(staging=1, running=1, drops=0),
    "after_parquet": Left(staging=1, running=1, drops=0),
    "after_validation": Left(staging=1, running=1, drops=0),
    "before_manifest": Left(staging=1, running=1, drops=0),
    "before_rename": Left(staging=1, running=1, drops=0),
    "after_rename": Left(staging=0, running=1, drops=1),
}
POSTGRES_POINTS = ("during_extraction", "after_rename")
CASES = [pytest.param(point, "sqlite", id=f"{point}-sqlite") for point in LEFT_BY] + [
    pytest.param(point, "postgresql", id=f"{point}-postgresql", marks=pytest.mark.postgres)
    for point in POSTGRES_POINTS
]


def test_every_fault_point_is_covered() -> None:
    """A point added to etl.faults without a crash case here would go untested."""
    assert set(LEFT_BY) | set(QUARANTINED_BY) == set(POINTS)


def test_a_typo_in_a_fault_name_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Otherwise a misspelt point would silently inject nothing and a crash test would
    pass without crashing anything."""
    faults.point("before_rename")  # inert without the variables
    with pytest.raises(ValueError, match="unknown fault point"):
        faults.point("before_renaming")
    monkeypatch.setenv("LEVERANSE_FAULT", "before_renaming")
    with pytest.raises(ValueError, match="LEVERANSE_FAULT names an unknown fault point"):
        faults.point("before_rename")
    monkeypatch.delenv("LEVERANSE_FAULT")
    for malformed in ("before_rename", "before_rename:soon", "before_renaming:1"):
        monkeypatch.setenv("LEVERANSE_FAULT_SLEEP", malformed)
        with pytest.raises(ValueError, match="LEVERANSE_FAULT_SLEEP must be"):
            faults.point("after_rename")


@pytest.mark.parametrize(("point", "db_url"), CASES, indirect=["db_url"])
def test_a_killed_run_leaves_no_drop_or_a_complete_one_and_the_next_run_finishes(
    point: str, delivery: Delivery
) -> None:
    killed = delivery.run(LEVERANSE_FAULT=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert f"SIGKILL at fault point {point}" in killed.stderr
    left = LEFT_BY[point]
    assert len(delivery.published()) == left.drops
    assert len(delivery.staging_folders()) == left.staging
    assert delivery.statuses() == ["running"] * left.running

    again = delivery.run()
    assert again.returncode == 0, again.stderr
    assert f"{LABEL}: {'unchanged' if left.drops else 'published'} v1," in again.stdout
    assert [folder.name for folder in delivery.published()] == [LABEL]
    assert delivery.staging() == []
    attempts = delivery.attempts()
    if left.running:
        # The dead run's row is closed: completed from its drop when it had published.
        closed, last = attempts
        assert closed["status"] == ("published" if left.drops else "failed")
        assert "interrupted" in closed["reason"]
        assert last["status"] == ("unchanged" if left.drops else "published")
    else:
        assert [row["status"] for row in attempts] == ["published"]
    audit = delivery.audit()
    assert audit.returncode == 0, audit.stdout + audit.stderr


# Quarantine: the points are reached only by a run whose validation fails.

# Quarantine folders a run killed at the point leaves; a staging folder holds the rest.
QUARANTINED_BY = {"before_quarantine_rename": 0, "after_quarantine_rename": 1}


def duplicate_an_episode(source: Source) -> None:
    """Deliver one episode twice, as a source without its primary key would: validation fails
    on the unique key (and nothing else), so the run quarantines."""
    source.raw("ALTER TABLE npr_episode RENAME TO npr_episode_with_key")
    source.raw("CREATE TABLE npr_episode AS SELECT * FROM npr_episode_with_key")
    source.raw(
        "INSERT INTO npr_episode SELECT * FROM npr_episode_with_key"
        " WHERE episode_id = (SELECT MIN(episode_id) FROM npr_episode_with_key)"
    )


def restore_the_key(source: Source) -> None:
    """The source owner's fix: the episode table with its primary key back."""
    source.raw("DROP TABLE npr_episode")
    source.raw("ALTER TABLE npr_episode_with_key RENAME TO npr_episode")


def assert_evidence(folder: Path, persons: list[str]) -> dict[str, Any]:
    """A quarantine folder holds the staged files and the report that explains them, private,
    and the report names expectations and counts, never an identity number."""
    assert {p.name for p in folder.iterdir()} == {DATA, EVIDENCE_FILE, REPORT}
    assert folder.stat().st_mode & 0o777 == 0o750
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o640}
    text = (folder / REPORT).read_text(encoding="utf-8")
    report = json.loads(text)
    assert (report["success"], report["failed"]) == (False, [UNIQUE_KEY])
    assert not any(person in text for person in persons)
    return report


@pytest.mark.parametrize("point", QUARANTINED_BY)
def test_a_run_killed_while_quarantining_leaves_no_evidence_or_complete_evidence(
    point: str, tmp_path: Path
) -> None:
    with prepared(f"sqlite:///{tmp_path / 'source.db'}", tmp_path) as delivery:
        duplicate_an_episode(delivery.source)
        killed = delivery.run(LEVERANSE_FAULT=point)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert f"SIGKILL at fault point {point}" in killed.stderr
        assert delivery.published() == []
        quarantined = delivery.quarantined()
        assert len(quarantined) == QUARANTINED_BY[point]
        staged = delivery.staging_folders()
        assert len(staged) == 1 - QUARANTINED_BY[point]
        assert delivery.statuses() == ["running"]
        # Complete before the rename too: the report is written into the staging folder first.
        reports = [assert_evidence(folder, delivery.persons) for folder in quarantined + staged]
        contents = {p: p.read_bytes() for folder in quarantined for p in folder.iterdir()}

        restore_the_key(delivery.source)
        again = delivery.run()

    assert again.returncode == 0, again.stderr
    assert f"{LABEL}: published v1," in again.stdout
    assert [folder.name for folder in delivery.published()] == [LABEL]
    assert delivery.staging() == []  # the dead run's folder and lock file, or its lock file
    # The evidence stays until the operator deletes it (README, "What a failed validation
    # leaves"), byte for byte, and its report names the attempt the dead run logged.
    assert delivery.quarantined() == quarantined
    assert {p: p.read_bytes() for p in contents} == contents
    closed, last = delivery.attempts()
    assert [report["attempt_id"] for report in reports] == [closed["attempt_id"]]
    assert "interrupted" in closed["reason"]
    assert last["status"] == "published"
    if quarantined:  # the dead run's row says what it was, and where its evidence is
        assert (closed["status"], closed["drop_path"]) == ("validation_failed", str(quarantined[0]))
    else:
        assert (closed["status"], closed["drop_path"]) == ("failed", None)
    audit = delivery.audit()
    assert audit.returncode == 0, audit.stdout + audit.stderr
