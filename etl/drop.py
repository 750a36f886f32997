"""Atomic publication of one delivery's drop (write-audit-publish, contract section 4).

A register polls ``<drop_dir>/<CODE>/<delivery>/`` and must never see a half-written drop.
So a delivery writes its Parquet files into a private staging folder on the same filesystem
(``<drop_dir>/.work/<CODE>/<delivery>/staging/``), publication writes ``manifest.json``
last, fsyncs, and renames the whole folder into place: a directory rename is atomic, so the
period folder appears complete or not at all. Staging folders and lock files live under
``.work/``, never inside a register's folder, so a register listing its folder sees only
published drops.

A rerun whose data files are byte-for-byte those of the latest version writes nothing; a
changed rerun is published beside it as ``<from>_<to>.v2`` (then ``.v3`` ...), its manifest
naming the folder it supersedes. Published folders are never modified or replaced.

A failed validation publishes nothing: the staging folder, its report written into it first,
goes to ``<drop_dir>/_quarantine/<CODE>/<delivery>/`` in one rename, outside every register's
folder.

A staging folder belongs to the run that made it for as long as that run holds a flock on the
lock file beside it; the kernel drops the lock when the process dies, however it dies, and the
next run removes the folder of personal data it left (clean_stale_staging).

Drops hold identity numbers, so folders are created 0o750 and files 0o640 by default (the
process umask would otherwise decide). Operators override the modes with the environment
variables ``LEVERANSE_DIR_MODE`` and ``LEVERANSE_FILE_MODE`` as octal strings (``"700"``).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from etl import faults
from etl.period import Period
from etl.spec import REGISTRY_CODE

DEFAULT_DIR_MODE = 0o750
DEFAULT_FILE_MODE = 0o640
MANIFEST = "manifest.json"
REPORT = "validation_report.json"
QUARANTINE = "_quarantine"
SMALL_CELL = 5

_WORK = ".work"
_STAGING = "staging"
_LOCKS = "locks"
_LOCK_SUFFIX = ".lock"
_DELIVERY = re.compile(r"[a-z_]+")
_LOCK_POLL_SECONDS = 0.05

# The staging folders this process owns, each with the descriptor that holds its flock. The
# descriptor must stay open as long as the folder is in use: closing it ends the ownership.
_OWNED: dict[Path, int] = {}


class DropError(RuntimeError):
    """The drop folder is not in the state publication relies on."""


class DeliveryLocked(DropError):
    """Another run holds the lock of the same register, delivery and period."""


@dataclass(frozen=True)
class Published:
    """The outcome of publish: where the period's current version lives and what it holds.

    ``status`` is "published" when a new version folder was written and "unchanged" when the
    latest version already held exactly these data files (then nothing was written and
    ``manifest`` is the existing version's manifest).
    """

    status: Literal["published", "unchanged"]
    path: Path
    version: int
    supersedes: str | None
    files: list[dict[str, Any]]
    manifest: dict[str, Any]


def suppress_small(n: int) -> int | str:
    """A count as published tables show it: 1..4 become "<5" so nobody can be singled out."""
    if n < 0:
        raise ValueError(f"a count cannot be negative: {n}")
    return "<5" if 0 < n < SMALL_CELL else n


def staging_dir(drop_dir: Path, code: str, delivery: str, period: Period) -> Path:
    """A fresh private folder for one run's data files, beside the final place.

    The process owns it until publish, quarantine or discard consumes it: it holds an
    exclusive flock on ``<folder>.lock`` beside the folder (not inside: the folder's contents
    are what gets published). clean_stale_staging removes a folder only when it can take that
    lock, so a live run's folder is safe and a dead run's is reclaimed, whatever has become
    of its process id since. The lock is taken before the folder exists, so no cleaner ever
    sees it unowned. The name ``<from>_<to>.<host>.<pid>.<random>`` records the host, which
    clean_stale_staging checks, and the process, for an operator.
    """
    parent = make_dirs(_work_root(drop_dir, code, delivery) / _STAGING)
    path = parent / f"{period.label}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}"
    _OWNED[path] = _own(_lock_path(path))
    try:
        path.mkdir()
        path.chmod(dir_mode())
    except BaseException:
        discard(path)
        raise
    return path


def discard(staging: Path) -> None:
    """Remove a staging folder this process owns, if it is still there, and give it up.

    For a run that ends without publishing or quarantining: its worker process may live on to
    run the next task, and clean_stale_staging never touches a folder whose owner is alive.
    """
    shutil.rmtree(staging, ignore_errors=True)
    _release(staging)


def publish(
    drop_dir: Path,
    code: str,
    delivery: str,
    period: Period,
    staging: Path,
    manifest: dict[str, Any],
) -> Published:
    """Publish the data files in ``staging`` as the period's next version, or as unchanged.

    The caller holds delivery_lock. The staging folder is consumed whatever happens: renamed
    into place, removed when unchanged, and removed when publication fails, so a long-lived
    worker process does not accumulate folders of personal data that no cleanup would reclaim.
    """
    root = _owning_root(drop_dir, code, delivery, staging)
    try:
        published = _publish(root, period, staging, manifest)
    except BaseException:
        discard(staging)
        raise
    _release(staging)
    return published


def quarantine(
    drop_dir: Path,
    code: str,
    delivery: str,
    period: Period,
    staging: Path,
    report: dict[str, Any],
) -> Path:
    """Move a run that failed validation out of reach of the register, with its report.

    The evidence is kept for the operator who investigates; it lives under ``_quarantine``
    rather than the register's folder, so a register never picks it up. The report must hold
    counts and expectation names only, never record values.

    The report is written into the staging folder and everything is fsynced before a single
    rename moves the folder: a run killed at any moment leaves no quarantine folder (its
    staging folder is then a dead run's, for clean_stale_staging) or a complete one, never
    evidence without the report that explains it. Like publish, it consumes the staging
    folder whatever happens.
    """
    _owning_root(drop_dir, code, delivery, staging)
    try:
        target = _quarantine(Path(drop_dir) / QUARANTINE / code / delivery, period, staging, report)
    except BaseException:
        discard(staging)
        raise
    _release(staging)
    return target


def _quarantine(parent: Path, period: Period, staging: Path, report: dict[str, Any]) -> Path:
    for path in staging.iterdir():
        _seal(path)
    _write_json(staging / REPORT, report)
    fsync_dir(staging)
    faults.point("before_quarantine_rename")
    target = make_dirs(parent) / f"{period.label}.{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}"
    os.rename(staging, target)
    fsync_dir(parent)
    faults.point("after_quarantine_rename")
    return target


@contextmanager
def delivery_lock(
    drop_dir: Path, code: str, delivery: str, period: Period, wait_seconds: float
) -> Iterator[None]:
    """Hold an exclusive lock on one register's delivery of one period.

    Two runs of the same period would otherwise both pick the same next version number.
    flock is released by the kernel when the process dies, so a killed run never leaves a
    lock behind; the lock file itself stays (removing it would race with a waiting run).
    """
    folder = make_dirs(_work_root(drop_dir, code, delivery) / _LOCKS)
    fd = os.open(folder / f"{period.label}.lock", os.O_RDWR | os.O_CREAT, file_mode())
    try:
        _acquire(fd, wait_seconds, f"{code} {delivery} {period.label}")
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def clean_stale_staging(drop_dir: Path, code: str, delivery: str) -> int:
    """Remove staging folders of this host that no live run owns; return how many.

    A killed run cannot clean up after itself. A folder is a dead run's when the lock file
    beside it can be locked without waiting (see staging_dir); the process id in its name is
    never trusted, since the system may have given it to an unrelated process. A lock file
    whose folder is already gone (the run died just after its rename) is removed too. A folder
    without a lock file was not made by staging_dir (or by a version before these locks) and
    is left to the operator.

    Folders of other hosts are left alone. On a drop shared over NFS the Linux client emulates
    flock with the server's byte-range locks, which is only as good as the mount: with
    ``local_lock=flock`` or ``local_lock=all`` a lock is invisible to other hosts, and a host
    that crashed keeps its locks until its NFSv4 lease runs out (NFSv3: until it reboots).
    Within one host a lock is always seen, so only runs of the owner's host (by name) decide;
    a folder of a host that never runs again waits for the operator.
    """
    folder = _work_root(drop_dir, code, delivery) / _STAGING
    if not folder.is_dir():
        return 0
    removed = 0
    for lock in sorted(folder.glob(f"*{_LOCK_SUFFIX}")):
        staging = lock.with_suffix("")
        if _staging_host(staging.name) != _host():
            continue
        fd = _claim(lock)
        if fd is None:
            continue
        try:
            if staging.is_dir():
                shutil.rmtree(staging)
                removed += 1
            lock.unlink()
        finally:
            os.close(fd)
    return removed


def latest_version(
    drop_dir: Path, code: str, delivery: str, period: Period
) -> tuple[Path, int] | None:
    """The newest published folder of the period and its version number, if any."""
    return _latest(_delivery_root(drop_dir, code, delivery), period)


def period_versions(
    drop_dir: Path, code: str, delivery: str, period: Period
) -> list[tuple[Path, dict[str, Any]]]:
    """Every published folder of the period with its manifest, oldest version first."""
    root = _delivery_root(drop_dir, code, delivery)
    return [(path, _read_manifest(path)) for _, path in _versions(root, period)]


def quarantined_attempts(
    drop_dir: Path, code: str, delivery: str, period: Period
) -> dict[str, Path]:
    """The quarantine folders of the period by the attempt id in their report.

    Lets the next run close the log row of a run killed after its quarantine rename as what
    it was, a failed validation with its evidence, rather than an unexplained failure.
    """
    parent = Path(drop_dir) / QUARANTINE / code / delivery
    if not parent.is_dir():
        return {}
    found = {}
    for folder in sorted(parent.glob(f"{period.label}.*")):
        try:
            report = json.loads((folder / REPORT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not one a run of this version made; the operator's to look at
        if isinstance(report, dict) and isinstance(report.get("attempt_id"), str):
            found[report["attempt_id"]] = folder
    return found


def _versions(root: Path, period: Period) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    pattern = re.compile(rf"{re.escape(period.label)}(?:\.v([2-9]|[1-9]\d+))?")
    return sorted(
        (int(match.group(1) or 1), entry)
        for entry in root.iterdir()
        if (match := pattern.fullmatch(entry.name)) and entry.is_dir()
    )


def _latest(root: Path, period: Period) -> tuple[Path, int] | None:
    versions = _versions(root, period)
    if not versions:
        return None
    version, path = versions[-1]
    return path, version


def _publish(root: Path, period: Period, staging: Path, manifest: dict[str, Any]) -> Published:
    make_dirs(root)
    files = _data_files(staging)
    latest = _latest(root, period)
    supersedes, version = None, 1
    if latest is not None:
        existing = _read_manifest(latest[0])
        if _fingerprint(existing["files"]) == _fingerprint(files):
            shutil.rmtree(staging)
            return Published("unchanged", latest[0], latest[1], None, existing["files"], existing)
        supersedes, version = latest[0].name, latest[1] + 1
    content = manifest | {
        "version": version,
        "supersedes": supersedes,
        "files": files,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for entry in files:
        _seal(staging / entry["name"])
    faults.point("before_manifest")
    written = _write_json(staging / MANIFEST, content)
    staging.chmod(dir_mode())
    fsync_dir(staging)
    faults.point("before_rename")
    target = root / (period.label if version == 1 else f"{period.label}.v{version}")
    _rename_no_replace(staging, target)
    fsync_dir(root)
    faults.point("after_rename")
    return Published("published", target, version, supersedes, files, written)


def _data_files(staging: Path) -> list[dict[str, Any]]:
    """{name, sha256, bytes, rows} of each Parquet file in the staging folder, by name."""
    entries = sorted(staging.iterdir())
    strays = [p.name for p in entries if not (p.is_file() and p.suffix == ".parquet")]
    if strays or not entries:
        found = ", ".join(strays) or "nothing"
        raise DropError(f"staging folder {staging} must hold only Parquet files; found {found}")
    return [_describe(path) for path in entries]


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes, as manifests and the disclosure log record it."""
    with path.open("rb") as data:
        return hashlib.file_digest(data, "sha256").hexdigest()


def _describe(path: Path) -> dict[str, Any]:
    return {
        "name": path.name,
        "sha256": sha256_of(path),
        "bytes": path.stat().st_size,
        "rows": pq.read_metadata(path).num_rows,
    }


def _fingerprint(files: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((entry["name"], entry["sha256"]) for entry in files)


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DropError(
            f"published folder {folder} has no {MANIFEST}; it was not written by publish, "
            "so it must be inspected by hand before this period can be delivered again"
        ) from None


def _rename_no_replace(source: Path, target: Path) -> None:
    """Rename a folder into place, never over an existing drop.

    The delivery lock makes a competing writer unlikely; this is the last line of defence.
    os.rename refuses a non-empty target (and every published folder holds a manifest).
    """
    if target.exists():
        raise DropError(f"{target} appeared while publishing; nothing was overwritten")
    try:
        os.rename(source, target)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise DropError(
                f"{target} appeared while publishing; nothing was overwritten"
            ) from error
        raise


def _seal(path: Path) -> None:
    """Give a data file the drop's file mode and force it to disk before the manifest."""
    path.chmod(file_mode())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, content: dict[str, Any]) -> dict[str, Any]:
    """Write a JSON document once (sorted keys, indent 2, UTF-8, final newline), fsynced.

    Returns the document as a reader will load it (dates as ISO text), so what publish
    returns is exactly what the register gets.
    """
    text = json.dumps(content, sort_keys=True, indent=2, ensure_ascii=False, default=_iso) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode())
    os.fchmod(fd, file_mode())
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    return json.loads(text)


def _iso(value: Any) -> str:
    """Dates and timestamps in a manifest as ISO text; anything else is a caller's bug."""
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable in a manifest: {type(value).__name__}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _acquire(fd: int, wait_seconds: float, what: str) -> None:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                holder = os.pread(fd, 128, 0).decode(errors="replace").strip() or "unknown"
                raise DeliveryLocked(
                    f"{what} is being delivered by another run (lock holder {holder}); "
                    f"gave up after {wait_seconds:g} s"
                ) from None
            time.sleep(min(_LOCK_POLL_SECONDS, remaining))
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{_host()}:{os.getpid()}\n".encode(), 0)
            return


def _delivery_root(drop_dir: Path, code: str, delivery: str) -> Path:
    """``<drop_dir>/<CODE>/<delivery>``; the names are checked so they cannot climb out."""
    if not REGISTRY_CODE.fullmatch(code):
        raise ValueError(f"registry code must match [A-Z0-9_]+, got {code!r}")
    if not _DELIVERY.fullmatch(delivery):
        raise ValueError(f"delivery type must match [a-z_]+, got {delivery!r}")
    return Path(drop_dir) / code / delivery


def _work_root(drop_dir: Path, code: str, delivery: str) -> Path:
    """``<drop_dir>/.work/<CODE>/<delivery>``: staging and locks, on the drop's filesystem."""
    _delivery_root(drop_dir, code, delivery)  # the same checks on the names
    return Path(drop_dir) / _WORK / code / delivery


def _owning_root(drop_dir: Path, code: str, delivery: str, staging: Path) -> Path:
    """The delivery folder, after checking ``staging`` is one of its staging folders.

    publish removes and quarantine moves the folder it is given; this keeps a wrong argument
    from costing a published drop.
    """
    root = _delivery_root(drop_dir, code, delivery)
    if (
        Path(staging).resolve().parent
        != (_work_root(drop_dir, code, delivery) / _STAGING).resolve()
    ):
        raise ValueError(f"{staging} is not a staging folder of {code} {delivery}")
    return root


def make_dirs(path: Path) -> Path:
    """Create path and its missing parents with the drop's folder mode (mkdir obeys umask)."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:  # a concurrent run created it and sets its mode
            continue
        folder.chmod(dir_mode())
    return path


def _staging_host(name: str) -> str | None:
    """The host from a staging folder name, or None for a name staging_dir did not make."""
    parts = name.split(".")
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    return parts[1]


def _lock_path(staging: Path) -> Path:
    return staging.with_name(staging.name + _LOCK_SUFFIX)


def _own(lock: Path) -> int:
    """Create ``lock``, hold an exclusive flock on it, and return the descriptor.

    A cleaner may claim and unlink the file between our open and our flock (it looks like the
    lock file of a run that died before making its folder); a lock on an unlinked file guards
    nothing, so it only counts once the file held is still the one at the path. Opened for
    writing: NFS grants an exclusive flock only on a descriptor open for writing.
    """
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, file_mode())
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _still_at(fd, lock):
            return fd
        os.close(fd)


def _claim(lock: Path) -> int | None:
    """The descriptor of ``lock`` flocked without waiting, or None while its owner lives.

    None too when another cleaner claimed and removed it first (the file held is no longer
    the one at the path).
    """
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not _still_at(fd, lock):
        os.close(fd)
        return None
    return fd


def _still_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path``."""
    try:
        current = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino)


def _release(staging: Path) -> None:
    """Give up a staging folder this process owns (nothing if it owns none by that name).

    The lock file is removed while still locked and only once the folder is gone: a folder
    whose removal failed keeps its lock file, so once the lock is dropped the next
    clean_stale_staging claims it and tries again.
    """
    fd = _OWNED.pop(staging, None)
    if fd is None:
        return
    try:
        if not staging.exists():
            _lock_path(staging).unlink(missing_ok=True)
    finally:
        os.close(fd)


def _host() -> str:
    """This host's name without dots, so it fits in a staging folder name."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _mode(variable: str, default: int) -> int:
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        mode = int(raw.removeprefix("0o"), 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{variable} must be an octal permission mode such as 750, got {raw!r}")
    return mode


def dir_mode() -> int:
    return _mode("LEVERANSE_DIR_MODE", DEFAULT_DIR_MODE)


def file_mode() -> int:
    return _mode("LEVERANSE_FILE_MODE", DEFAULT_FILE_MODE)
