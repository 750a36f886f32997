"""Reconcile the disclosure log with the drops on disk (``leveranse audit --check``).

The disclosure log is the legal record of what was given to whom; the drop folders are what
was actually given. They must agree: every published folder has the log row of the attempt
that wrote it (its manifest names the attempt), with the same files and checksums, and every
log row that says published points at a folder whose files still have those checksums. A
file on disk that no log row accounts for, or a logged file that is missing or different, is
a finding, and the check fails.

Attempts still marked running are reported as notes: a run may be under way, and a run that
died is closed by the next run of the same register and period.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etl.audit import DisclosureLog
from etl.drop import MANIFEST, sha256_of


@dataclass
class Reconciliation:
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    folders: int = 0
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings

    def report(self) -> str:
        lines = [
            f"checked {self.folders} published folders against {self.attempts} logged attempts: "
            + ("consistent" if self.ok else f"{len(self.findings)} findings")
        ]
        lines += [f"finding: {text}" for text in self.findings]
        lines += [f"note: {text}" for text in self.notes]
        return "\n".join(lines)


def published_folders(drop_dir: Path) -> list[Path]:
    """Every period folder under <drop_dir>/<CODE>/<delivery>/ (bookkeeping folders skipped)."""
    folders = []
    for register in sorted(Path(drop_dir).iterdir() if Path(drop_dir).is_dir() else []):
        if register.name.startswith((".", "_")) or not register.is_dir():
            continue
        for delivery in sorted(p for p in register.iterdir() if p.is_dir()):
            folders += sorted(p for p in delivery.iterdir() if p.is_dir())
    return folders


def _check_files(folder: Path, files: list[dict[str, Any]], what: str) -> list[str]:
    """Differences between the logged or manifested files and the folder's contents."""
    found = []
    listed = {entry["name"] for entry in files}
    for entry in files:
        path = folder / entry["name"]
        if not path.is_file():
            found.append(f"{what}: {path} is missing")
        elif path.stat().st_size != entry["bytes"] or sha256_of(path) != entry["sha256"]:
            found.append(f"{what}: {path} differs from its checksum")
    extra = sorted(p.name for p in folder.iterdir() if p.name not in listed | {MANIFEST})
    found += [f"{what}: {folder / name} is not accounted for" for name in extra]
    return found


def reconcile(state_url: str, drop_dir: Path) -> Reconciliation:
    """Compare the disclosure log of state_url with the drops under drop_dir."""
    result = Reconciliation()
    disclosure_log = DisclosureLog(state_url)
    try:
        attempts = disclosure_log.attempts()
    finally:
        disclosure_log.close()
    result.attempts = len(attempts)
    by_id = {row["attempt_id"]: row for row in attempts}

    for folder in published_folders(drop_dir):
        result.folders += 1
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            result.findings.append(f"{folder} has no {MANIFEST}: no delivery wrote it")
            continue
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        row = by_id.get(manifest.get("attempt_id"))
        if row is None or row["status"] != "published":
            result.findings.append(f"{folder} has no published attempt in the disclosure log")
            continue
        if Path(row["drop_path"]) != folder:
            result.findings.append(f"{folder} is logged at another path: {row['drop_path']}")
        if [(f["name"], f["sha256"]) for f in row["files"] or []] != [
            (f["name"], f["sha256"]) for f in manifest["files"]
        ]:
            result.findings.append(f"{folder}: the manifest's files differ from the log's")
        result.findings += _check_files(folder, manifest["files"], "drop")

    for row in attempts:
        where = f"{row['registry']} {row['delivery']} {row['period_from']}_{row['period_to']}"
        if row["status"] == "running":
            result.notes.append(f"attempt {row['attempt_id']} ({where}) has not finished")
        if row["status"] not in ("published", "unchanged"):
            continue
        folder = Path(row["drop_path"] or "")
        if not row["drop_path"] or not folder.is_dir():
            result.findings.append(
                f"attempt {row['attempt_id']} ({where}) is logged as {row['status']} "
                f"but its folder {folder} is missing"
            )
        elif row["status"] == "published":
            result.findings += _check_files(folder, row["files"] or [], "log")
    result.findings = sorted(set(result.findings))
    return result
