"""Telling people what happened: failure alerts to operators, pick-up notices to registers.

**Failure alerts.** When a delivery task fails for good (retries spent, or an error no retry
can fix), the operator on duty must learn which register, which delivery, which period and
why, without opening Airflow. ``alert_message`` builds that message from a ``FailureAlert``;
every line passes through ``etl.redact.redact``, because the reason is an exception text and
a database driver may quote a row in it. ``send_alert`` mails it through Airflow's SMTP
provider (``SmtpNotifier``) when ``LEVERANSE_ALERT_EMAIL`` names recipients; without it the
alert only goes to the task log, so a new installation never mails anyone by surprise.

| variable | meaning |
|---|---|
| ``LEVERANSE_ALERT_EMAIL`` | recipients, comma-separated; empty: no mail (the default) |
| ``LEVERANSE_ALERT_FROM`` | sender; empty: the SMTP connection's ``from_email`` |
| ``LEVERANSE_ALERT_SMTP_CONN_ID`` | the Airflow connection of the mail server (``smtp_default``) |

The connection is an ordinary Airflow connection, for example
``AIRFLOW_CONN_SMTP_DEFAULT='{"conn_type": "smtp", "host": "mail.example", "port": 25}'``.

**Pick-up notices.** After a drop is published, ``write_notice`` leaves a small JSON file in
``<drop-dir>/_notices/<CODE>/`` naming the drop folder, its files and their checksums, read
from the drop's manifest. A notice never holds data: no rows, no identity numbers. The
``_notices`` folder sits beside ``_quarantine``, outside every register's own folder, so
``leveranse audit --check`` and a register listing its drops never mistake it for a drop.

This module is imported when DAG files are parsed: it imports nothing heavy at module level.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etl.redact import redact
from etl.spec import DELIVERY_TYPES, REGISTRY_CODE

log = logging.getLogger(__name__)

ALERT_EMAIL = "LEVERANSE_ALERT_EMAIL"
ALERT_FROM = "LEVERANSE_ALERT_FROM"
ALERT_SMTP_CONN_ID = "LEVERANSE_ALERT_SMTP_CONN_ID"
DEFAULT_SMTP_CONN_ID = "smtp_default"

NOTICES = "_notices"
# A published period folder: <from>_<to>, then .v2, .v3 ... for later versions (etl.drop).
_DROP_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}_\d{4}-\d{2}-\d{2}(\.v[0-9]+)?")


@dataclass(frozen=True)
class FailureAlert:
    """What an operator needs to know about one failed task of a delivery DAG.

    ``register`` is None when the failure concerns the whole run (the register list could
    not be made, or the audit found the drops and the disclosure log disagreeing).
    """

    dag_id: str
    delivery: str
    register: str | None
    period: str
    reason: str
    task: str
    run_id: str
    try_number: int
    log_url: str | None = None


def alert_message(alert: FailureAlert) -> tuple[str, str]:
    """The alert as a mail subject and a plain-text body, with identity numbers redacted."""
    who = alert.register or "the whole run"
    subject = f"[leveranse] {alert.dag_id}: {who} failed ({alert.delivery}, {alert.period})"
    lines = [
        f"Register:  {who}",
        f"Delivery:  {alert.delivery} (DAG {alert.dag_id})",
        f"Period:    {alert.period}",
        f"Reason:    {alert.reason}",
        f"Task:      {alert.task}, try {alert.try_number}, run {alert.run_id}",
    ]
    if alert.log_url:
        lines.append(f"Task log:  {alert.log_url}")
    if alert.register:
        lines += [
            "",
            f"This attempt published nothing for {alert.register}. A failed validation keeps",
            f"its evidence under <drop-dir>/_quarantine/{alert.register}/{alert.delivery}/.",
            "Once the cause is fixed, rerun the register (README, Operations).",
        ]
    return redact(subject), redact("\n".join(lines))


def alert_recipients() -> list[str]:
    """The configured recipients; empty means alerts go to the task log only."""
    raw = os.environ.get(ALERT_EMAIL, "")
    return [address.strip() for address in raw.split(",") if address.strip()]


def send_alert(alert: FailureAlert) -> bool:
    """Log the alert, and mail it when recipients are configured; True when mailed.

    The mail goes through ``SmtpNotifier.notify`` directly rather than calling the notifier
    as a callback: calling it renders its fields as Jinja templates, and an exception text
    is not a template (a ``{{`` in it would break or inject).
    """
    subject, body = alert_message(alert)
    log.error("%s\n%s", subject, body)
    recipients = alert_recipients()
    if not recipients:
        return False
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    SmtpNotifier(
        to=recipients,
        from_email=os.environ.get(ALERT_FROM) or None,
        subject=subject,
        html_content=f"<pre>{html.escape(body)}</pre>",
        smtp_conn_id=os.environ.get(ALERT_SMTP_CONN_ID) or DEFAULT_SMTP_CONN_ID,
    ).notify({})
    log.info("alert mailed to %s", ", ".join(recipients))
    return True


def notice_path(drop_dir: Path, code: str, delivery: str, folder: str) -> Path:
    """``<drop-dir>/_notices/<CODE>/<delivery>_<folder>.json``: one notice per drop folder."""
    return Path(drop_dir) / NOTICES / code / f"{delivery}_{folder}.json"


def build_notice(drop_dir: Path, code: str, delivery: str, folder: str) -> dict[str, Any]:
    """The notice of one published drop folder, from its manifest.

    The folder is named by the register, the delivery and the folder's name, never by a path
    taken from elsewhere: an asset event's extra can be written by anyone allowed to post
    events through the REST API, so it must not steer what this reads or writes.
    """
    from etl.drop import MANIFEST, sha256_of

    if not REGISTRY_CODE.fullmatch(code) or delivery not in DELIVERY_TYPES:
        raise ValueError(f"not a register code and delivery type: {code!r} {delivery!r}")
    if not _DROP_FOLDER.fullmatch(folder):
        raise ValueError(f"{folder!r} is not a published period folder (<from>_<to>[.vN])")
    where = Path(drop_dir) / code / delivery / folder
    manifest_file = where / MANIFEST
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    if (manifest.get("registry"), manifest.get("delivery")) != (code, delivery):
        raise ValueError(f"{manifest_file} is not a {code} {delivery} drop")
    files = []
    for entry in manifest["files"]:
        size = (where / entry["name"]).stat().st_size  # FileNotFoundError: not a complete drop
        if size != entry["bytes"]:
            raise ValueError(
                f"{where / entry['name']} is {size} bytes, its manifest says "
                f"{entry['bytes']}: not the published file"
            )
        files.append({key: entry[key] for key in ("name", "sha256", "bytes")})
    return {
        "registry": code,
        "delivery": delivery,
        "folder": f"{code}/{delivery}/{folder}",
        "period": manifest["period"],
        "version": manifest["version"],
        "supersedes": manifest.get("supersedes"),
        "published_at": manifest["created_at"],
        "manifest": {"name": MANIFEST, "sha256": sha256_of(manifest_file)},
        "files": files,
    }


def write_notice(drop_dir: Path, code: str, delivery: str, folder: str) -> Path:
    """Write the notice of one drop folder atomically; rewriting one gives the same bytes."""
    from etl.drop import file_mode, fsync_dir, make_dirs

    notice = build_notice(drop_dir, code, delivery, folder)
    target = notice_path(drop_dir, code, delivery, folder)
    make_dirs(target.parent)
    text = json.dumps(notice, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file_mode())
    os.fchmod(fd, file_mode())
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, target)
    fsync_dir(target.parent)
    return target
