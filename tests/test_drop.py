"""Publication of drops: atomic, versioned, locked, quarantined, with safe permissions."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from etl import drop
from etl.drop import (
    DeliveryLocked,
    DropError,
    Published,
    clean_stale_staging,
    delivery_lock,
    discard,
    latest_version,
    publish,
    quarantine,
    staging_dir,
    suppress_small,
)
from etl.period import Period

REPO = Path(__file__).resolve().parent.parent
CODE = "PARKINSON"
DELIVERY = "complement"
PERIOD = Period(date(2024, 1, 1), date(2024, 2, 1))
LABEL = "2024-01-01_2024-02-01"
DATA = f"{CODE}_{DELIVERY}_{LABEL}.parquet"
WITHDRAWALS = f"{CODE}_withdrawals_{LABEL}.parquet"
DEAD_PID = 999_999_999  # above Linux's largest pid_max (2**22), so never a live process
STAGING = Path(".work") / CODE / DELIVERY / "staging"


def _write(folder: Path, name: str, record_ids: list[int]) -> None:
    pq.write_table(pa.table({"record_id": pa.array(record_ids, pa.int64())}), folder / name)


def _publish(drop_dir: Path, record_ids: list[int], **manifest: object) -> Published:
    staging = staging_dir(drop_dir, CODE, DELIVERY, PERIOD)
    _write(staging, DATA, record_ids)
    return publish(drop_dir, CODE, DELIVERY, PERIOD, staging, {"registry": CODE, **manifest})


def _visible(folder: Path) -> list[str]:
    """What a register sees in a folder: everything not dot-prefixed."""
    if not folder.exists():
        return []
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def _snapshot(drop_dir: Path) -> dict[str, int]:
    """Modification times of everything outside the dot-prefixed bookkeeping folders."""
    return {
        str(path.relative_to(drop_dir)): path.stat().st_mtime_ns
        for path in [drop_dir, *drop_dir.rglob("*")]
        if not any(part.startswith(".") for part in path.relative_to(drop_dir).parts)
    }


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _python_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def _run_python(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=_python_env(**env),
        timeout=60,
        check=False,
    )


@pytest.fixture
def drop_dir(tmp_path: Path) -> Path:
    return tmp_path / "drop"


# Period


def test_period_label_and_bounds() -> None:
    assert PERIOD.label == LABEL
    assert PERIOD.bounds() == (datetime(2024, 1, 1), datetime(2024, 2, 1))
    assert Period(date(2023, 1, 1), date(2024, 1, 1)) < PERIOD


@pytest.mark.parametrize("end", [date(2024, 1, 1), date(2023, 12, 31)])
def test_period_must_not_be_empty(end: date) -> None:
    with pytest.raises(ValueError, match="must be before its end"):
        Period(date(2024, 1, 1), end)


def test_period_refuses_timestamps() -> None:
    with pytest.raises(TypeError, match="must be a date"):
        Period(datetime(2024, 1, 1, 12), date(2024, 2, 1))


# Publication


def test_publish_writes_exactly_the_data_files_and_the_manifest(drop_dir: Path) -> None:
    staging = staging_dir(drop_dir, CODE, DELIVERY, PERIOD)
    _write(staging, WITHDRAWALS, [7])
    _write(staging, DATA, [1, 2, 3])
    manifest = {"registry": CODE, "period": {"from": PERIOD.start, "to": PERIOD.end}}

    result = publish(drop_dir, CODE, DELIVERY, PERIOD, staging, manifest)

    folder = drop_dir / CODE / DELIVERY / LABEL
    assert (result.status, result.path, result.version, result.supersedes) == (
        "published",
        folder,
        1,
        None,
    )
    assert _visible(drop_dir / CODE / DELIVERY) == [LABEL]
    assert sorted(os.listdir(folder)) == [DATA, WITHDRAWALS, "manifest.json"]
    assert not staging.exists()
    assert os.listdir(drop_dir / ".work" / CODE / DELIVERY / "staging") == []

    text = (folder / "manifest.json").read_text(encoding="utf-8")
    written = json.loads(text)
    assert text == json.dumps(written, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert written == result.manifest
    assert written["registry"] == CODE
    assert written["period"] == {"from": "2024-01-01", "to": "2024-02-01"}
    assert (written["version"], written["supersedes"]) == (1, None)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", written["created_at"])
    assert written["files"] == result.files
    assert [entry["name"] for entry in written["files"]] == [DATA, WITHDRAWALS]
    for entry, rows in zip(written["files"], [3, 1], strict=True):
        content = (folder / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(content).hexdigest()
        assert entry["bytes"] == len(content)
        assert entry["rows"] == rows


def test_unchanged_rerun_writes_nothing(drop_dir: Path) -> None:
    first = _publish(drop_dir, [1, 2, 3])
    before = _snapshot(drop_dir)
    time.sleep(0.01)  # a rewrite would show in the nanosecond mtimes

    again = _publish(drop_dir, [1, 2, 3])

    assert (again.status, again.path, again.version, again.supersedes) == (
        "unchanged",
        first.path,
        1,
        None,
    )
    assert again.files == first.files
    assert again.manifest == first.manifest
    assert _snapshot(drop_dir) == before
    assert os.listdir(drop_dir / ".work" / CODE / DELIVERY / "staging") == []


def test_changed_data_is_published_beside_and_supersedes_the_latest(drop_dir: Path) -> None:
    first = _publish(drop_dir, [1, 2, 3])
    first_manifest = (first.path / "manifest.json").read_bytes()

    second = _publish(drop_dir, [1, 2])
    third = _publish(drop_dir, [1])
    back_to_first = _publish(drop_dir, [1, 2, 3])

    root = drop_dir / CODE / DELIVERY
    assert (second.path, second.version, second.supersedes) == (root / f"{LABEL}.v2", 2, LABEL)
    assert (third.path, third.version, third.supersedes) == (
        root / f"{LABEL}.v3",
        3,
        f"{LABEL}.v2",
    )
    # Compared with the latest version, not any earlier one: the register must learn of it.
    assert (back_to_first.status, back_to_first.version) == ("published", 4)
    assert json.loads((second.path / "manifest.json").read_text())["supersedes"] == LABEL
    assert (first.path / "manifest.json").read_bytes() == first_manifest
    assert _visible(root) == [LABEL, f"{LABEL}.v2", f"{LABEL}.v3", f"{LABEL}.v4"]
    assert latest_version(drop_dir, CODE, DELIVERY, PERIOD) == (root / f"{LABEL}.v4", 4)


def test_latest_version_ignores_other_periods_and_foreign_names(drop_dir: Path) -> None:
    root = drop_dir / CODE / DELIVERY
    for name in ["2024-02-01_2024-03-01", f"{LABEL}.v1", f"{LABEL}.old", f"{LABEL}.v02"]:
        (root / name).mkdir(parents=True)
    (root / f"{LABEL}.v9").write_text("not a folder")

    assert latest_version(drop_dir, CODE, DELIVERY, PERIOD) is None
    assert latest_version(drop_dir, "NORKAR", DELIVERY, PERIOD) is None


# A run that stages one file and publishes it; LEVERANSE_FAULT can kill it on the way.
_STAGE_AND_PUBLISH = f"""
import sys
from datetime import date
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
from etl import drop
from etl.period import Period
drop_dir = Path(sys.argv[1])
period = Period(date(2024, 1, 1), date(2024, 2, 1))
staging = drop.staging_dir(drop_dir, "{CODE}", "{DELIVERY}", period)
pq.write_table(pa.table({{"record_id": [1]}}), staging / "{DATA}")
print(staging, flush=True)
drop.publish(drop_dir, "{CODE}", "{DELIVERY}", period, staging, {{}})
"""

# A live run: it makes its staging folder, says where, and holds it until its stdin closes.
_STAGE_AND_WAIT = f"""
import sys
from datetime import date
from pathlib import Path
from etl import drop
from etl.period import Period
period = Period(date(2024, 1, 1), date(2024, 2, 1))
print(drop.staging_dir(Path(sys.argv[1]), "{CODE}", "{DELIVERY}", period), flush=True)
sys.stdin.read()
"""


def _killed_before_rename(drop_dir: Path) -> Path:
    """The staging folder of a run SIGKILLed just before its rename, as it left it."""
    killed = _run_python(_STAGE_AND_PUBLISH, str(drop_dir), LEVERANSE_FAULT="before_rename")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    return Path(killed.stdout.strip())


def _rename(staging: Path, host: str | None = None, pid: int | None = None) -> Path:
    """Rename a staging folder and its lock file as if ``host`` or process ``pid`` had made
    them (a pid recorded by a dead run is one the system may have given to another process).
    """
    label, own_host, own_pid, token = staging.name.split(".")
    renamed = staging.with_name(f"{label}.{host or own_host}.{pid or own_pid}.{token}")
    staging.with_name(staging.name + ".lock").rename(renamed.with_name(renamed.name + ".lock"))
    staging.rename(renamed)
    return renamed


@pytest.fixture
def sleeping_child() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "60"])
    yield child
    child.kill()
    child.wait()


def test_a_crash_before_the_rename_leaves_no_drop_and_its_staging_is_cleaned(
    drop_dir: Path,
) -> None:
    left = _killed_before_rename(drop_dir)

    assert _visible(drop_dir / CODE / DELIVERY) == []
    assert latest_version(drop_dir, CODE, DELIVERY, PERIOD) is None
    assert sorted(os.listdir(left)) == [DATA, "manifest.json"]
    assert sorted(os.listdir(drop_dir / STAGING)) == [left.name, f"{left.name}.lock"]

    assert clean_stale_staging(drop_dir, CODE, DELIVERY) == 1
    assert os.listdir(drop_dir / STAGING) == []


@pytest.mark.parametrize("holder", ["this test", "a sleeping child"])
def test_a_dead_runs_folder_is_cleaned_even_when_its_pid_now_belongs_to_a_live_process(
    drop_dir: Path, holder: str, sleeping_child: subprocess.Popen[bytes]
) -> None:
    """A pid says nothing once its process is gone: the system hands it out again."""
    live_pid = os.getpid() if holder == "this test" else sleeping_child.pid
    left = _rename(_killed_before_rename(drop_dir), pid=live_pid)

    assert clean_stale_staging(drop_dir, CODE, DELIVERY) == 1
    assert not left.exists()
    assert os.listdir(drop_dir / STAGING) == []


def test_a_live_runs_folder_is_kept_whatever_its_pid_until_the_run_is_killed(
    drop_dir: Path,
) -> None:
    run = subprocess.Popen(
        [sys.executable, "-c", _STAGE_AND_WAIT, str(drop_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_python_env(),
    )
    try:
        assert run.stdout is not None
        live = _rename(Path(run.stdout.readline().decode().strip()), pid=DEAD_PID)

        assert clean_stale_staging(drop_dir, CODE, DELIVERY) == 0
        assert live.is_dir()
    finally:
        run.kill()  # SIGKILL: the kernel drops the run's lock
        run.communicate()

    assert clean_stale_staging(drop_dir, CODE, DELIVERY) == 1
    assert os.listdir(drop_dir / STAGING) == []


def test_a_lock_file_left_without_its_folder_is_removed(drop_dir: Path) -> None:
    """A run killed just after its rename leaves its lock file; it is not counted."""
    left = _killed_before_rename(drop_dir)
    shutil.rmtree(left)  # the rename's effect on the staging folder

    assert clean_stale_staging(drop_dir, CODE, DELIVERY) == 0
    assert os.listdir(drop_dir / STAGING) == []


def test_clean_stale_staging_keeps_live_foreign_and_unknown_folders(drop_dir: Path) -> None:
    dead = _killed_before_rename(drop_dir)
    live = staging_dir(drop_dir, CODE, DELIVERY, PERIOD)
    host = live.name.split(".")[1]
    other_host = live.with_name(f"{LABEL}.elsewhere.{DEAD_PID}.abcd")  # its lock is free here
    unknown = live.with_name("made-by-hand")
    unlocked = live.with_name(f"{LABEL}.{host}.{DEAD_PID}.abcd")  # made before staging locked
    for folder in (other_host, unknown, unlocked):
        folder.mkdir()
    for folder in (other_host, unknown):
        folder.with_name(folder.name + ".lock").touch()
    try:
        assert clean_stale_staging(drop_dir, CODE, DELIVERY) == 1
        assert not dead.exists()
        assert {p.name for p in live.parent.iterdir() if p.is_dir()} == {
            live.name,
            other_host.name,
            unknown.name,
            unlocked.name,
        }
        assert clean_stale_staging(drop_dir, "NORKAR", DELIVERY) == 0
    finally:
        discard(live)
    assert not live.exists()
    assert not live.with_name(live.name + ".lock").exists()


@pytest.mark.parametrize("strays", [["notes.txt"], ["manifest.json"], []])
def test_publish_refuses_a_staging_folder_with_anything_but_data(
    drop_dir: Path, strays: list[str]
) -> None:
    staging = staging_dir(drop_dir, CODE, DELIVERY, PERIOD)
    for name in strays:
        (staging / name).write_text("{}")
    if strays:
        _write(staging, DATA, [1])

    with pytest.raises(DropError, match="must hold only Parquet files"):
        publish(drop_dir, CODE, DELIVERY, PERIOD, staging, {})

    assert not staging.exists()
    assert _visible(drop_dir / CODE / DELIVERY) == []


def test_publish_never_overwrites_a_folder_that_appeared(
    drop_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _publish(drop_dir, [1, 2, 3])
    manifest = (first.path / "manifest.json").read_bytes()
    monkeypatch.setattr(drop, "_latest", lambda root, period: None)  # a racing writer

    with pytest.raises(DropError, match="appeared while publishing"):
        _publish(drop_dir, [1])

    assert (first.path / "manifest.json").read_bytes() == manifest
    assert os.listdir(drop_dir / ".work" / CODE / DELIVERY / "staging") == []


def test_publish_refuses_a_published_folder_without_manifest(drop_dir: Path) -> None:
    (drop_dir / CODE / DELIVERY / LABEL).mkdir(parents=True)

    with pytest.raises(DropError, match=r"has no manifest\.json"):
        _publish(drop_dir, [1])


def test_publish_and_quarantine_only_take_staging_folders(drop_dir: Path) -> None:
    published = _publish(drop_dir, [1])
    report = {"success": False}

    with pytest.raises(ValueError, match="is not a staging folder"):
        publish(drop_dir, CODE, DELIVERY, PERIOD, published.path, {})
    with pytest.raises(ValueError, match="is not a staging folder"):
        quarantine(drop_dir, CODE, DELIVERY, PERIOD, published.path, report)

    assert sorted(os.listdir(published.path)) == [DATA, "manifest.json"]


def test_names_cannot_climb_out_of_the_drop(drop_dir: Path) -> None:
    with pytest.raises(ValueError, match="registry code"):
        staging_dir(drop_dir, "../ETC", DELIVERY, PERIOD)
    with pytest.raises(ValueError, match="delivery type"):
        latest_version(drop_dir, CODE, "../x", PERIOD)


# Quarantine


def test_quarantine_moves_the_evidence_out_of_the_registers_folder(drop_dir: Path) -> None:
    staging = staging_dir(drop_dir, CODE, DELIVERY, PERIOD)
    _write(staging, DATA, [1, 2])
    report = {"success": False, "failed": ["expect_column_values_to_not_be_null"], "rows": 2}

    path = quarantine(drop_dir, CODE, DELIVERY, PERIOD, staging, report)

    assert path.parent == drop_dir / "_quarantine" / CODE / DELIVERY
    assert re.fullmatch(rf"{LABEL}\.\d{{8}}T\d{{6}}\.\d{{6}}Z", path.name)
    assert sorted(os.listdir(path)) == [DATA, "validation_report.json"]
    assert json.loads((path / "validation_report.json").read_text()) == report
    assert not staging.exists()
    assert os.listdir(drop_dir / STAGING) == []  # its lock file went with it
    assert _visible(drop_dir / CODE / DELIVERY) == []
    assert latest_version(drop_dir, CODE, DELIVERY, PERIOD) is None
    assert _mode(path) == 0o750
    assert {_mode(p) for p in path.iterdir()} == {0o640}


# Lock

_TRY_LOCK = f"""
import sys
from datetime import date
from pathlib import Path
from etl.drop import DeliveryLocked, delivery_lock
from etl.period import Period
period = Period(date(2024, 1, 1), date(2024, 2, 1))
try:
    with delivery_lock(Path(sys.argv[1]), "{CODE}", "{DELIVERY}", period, 0.2):
        print("acquired")
except DeliveryLocked as error:
    print(f"locked: {{error}}")
"""


def test_a_second_process_cannot_take_a_held_lock(drop_dir: Path) -> None:
    with delivery_lock(drop_dir, CODE, DELIVERY, PERIOD, 0):
        blocked = _run_python(_TRY_LOCK, str(drop_dir))
    released = _run_python(_TRY_LOCK, str(drop_dir))

    assert blocked.stdout.startswith("locked: "), blocked.stderr
    assert CODE in blocked.stdout
    assert LABEL in blocked.stdout
    assert f":{os.getpid()}" in blocked.stdout  # names the holder for the operator
    assert released.stdout == "acquired\n", released.stderr


def test_the_lock_waits_for_release_and_is_per_period(drop_dir: Path) -> None:
    held = threading.Event()

    def hold_briefly() -> None:
        with delivery_lock(drop_dir, CODE, DELIVERY, PERIOD, 0):
            held.set()
            time.sleep(0.3)

    holder = threading.Thread(target=hold_briefly)
    holder.start()
    assert held.wait(timeout=5)
    with delivery_lock(drop_dir, CODE, DELIVERY, Period(date(2024, 2, 1), date(2024, 3, 1)), 0):
        pass  # another period is free meanwhile
    with pytest.raises(DeliveryLocked), delivery_lock(drop_dir, CODE, DELIVERY, PERIOD, 0.05):
        pass
    with delivery_lock(drop_dir, CODE, DELIVERY, PERIOD, 5):
        pass
    holder.join()


# Permissions


def test_drops_are_private_to_owner_and_group_whatever_the_umask(drop_dir: Path) -> None:
    old = os.umask(0)
    try:
        result = _publish(drop_dir, [1])
    finally:
        os.umask(old)

    for folder in [drop_dir / CODE, drop_dir / CODE / DELIVERY, result.path]:
        assert _mode(folder) == 0o750, folder
    assert {_mode(p) for p in result.path.iterdir()} == {0o640}


def test_modes_follow_the_environment(drop_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEVERANSE_DIR_MODE", "0o700")
    monkeypatch.setenv("LEVERANSE_FILE_MODE", "600")

    result = _publish(drop_dir, [1])

    assert _mode(result.path) == 0o700
    assert {_mode(p) for p in result.path.iterdir()} == {0o600}


@pytest.mark.parametrize("value", ["rwx", "1777", "-1"])
def test_a_bad_mode_in_the_environment_is_refused(
    drop_dir: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("LEVERANSE_FILE_MODE", value)
    with pytest.raises(ValueError, match="LEVERANSE_FILE_MODE"):
        _publish(drop_dir, [1])


# Small counts


@pytest.mark.parametrize(("n", "shown"), [(0, 0), (1, "<5"), (4, "<5"), (5, 5), (1234, 1234)])
def test_suppress_small(n: int, shown: int | str) -> None:
    assert suppress_small(n) == shown


def test_suppress_small_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match="negative"):
        suppress_small(-1)
