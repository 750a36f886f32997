"""Fault injection: named points in a delivery where a test can kill or stall the process.

This is a test seam. It is inert in production: unless one of the two environment variables
below is set, ``point`` returns at once after looking them up, and nothing else happens.

- ``LEVERANSE_FAULT=<point>``: the process kills itself with SIGKILL when it reaches that
  point. SIGKILL cannot be caught, so no ``finally``, ``except`` or atexit handler runs: the
  process dies as it would under the OOM killer, ``kill -9`` or a power cut after the last
  fsync, and the crash tests see exactly what such a death leaves behind.
- ``LEVERANSE_FAULT_SLEEP=<point>:<seconds>``: the process sleeps that long at that point
  and then carries on, so a test can hold a run at a known step deterministically (a run
  stalled while it holds the delivery lock, for another run to wait on).

A variable naming an unknown point, or a malformed sleep, raises ValueError at the first
point reached, and ``point`` refuses names not in POINTS: a typo must fail the test that
made it, never silently disable the fault it meant to inject.

The points, in the order a delivery passes them:

- ``before_log_start``: under the delivery lock, stale staging cleaned and interrupted log
  rows closed, before the disclosure log row is inserted (deliver.deliver).
- ``after_log_start``: the disclosure log row is 'running'; nothing staged yet (deliver.deliver).
- ``during_extraction``: the first batch of rows has been written to the staged Parquet file;
  the file is incomplete and the source query is still open (deliver._stage).
- ``after_parquet``: every staged file is complete and closed; not yet validated
  (deliver._stage).
- ``before_quarantine_rename``: validation failed; the report is written into the staging
  folder and everything in it fsynced, not yet renamed into ``_quarantine`` (drop.quarantine).
- ``after_quarantine_rename``: the staging folder with its report is in ``_quarantine`` and the
  rename fsynced; the disclosure log row is still 'running' (drop.quarantine).
- ``after_validation``: validation passed; the staging folder still holds the evidence file
  (deliver._validate_and_publish).
- ``before_manifest``: the data files are sealed (mode set, fsynced), manifest not yet written
  (drop._publish).
- ``before_rename``: the manifest is written and fsynced; the staging folder is complete but
  not yet renamed into the register's folder (drop._publish).
- ``after_rename``: the drop is published and the rename fsynced, but the disclosure log row is
  still 'running': published and unlogged (drop._publish).
"""

from __future__ import annotations

import logging
import os
import signal
import time

FAULT_VARIABLE = "LEVERANSE_FAULT"
SLEEP_VARIABLE = "LEVERANSE_FAULT_SLEEP"

POINTS = (
    "before_log_start",
    "after_log_start",
    "during_extraction",
    "after_parquet",
    "before_quarantine_rename",
    "after_quarantine_rename",
    "after_validation",
    "before_manifest",
    "before_rename",
    "after_rename",
)

log = logging.getLogger(__name__)


def point(name: str) -> None:
    """Die (SIGKILL) or stall here when the environment names this point; else do nothing."""
    if name not in POINTS:
        raise ValueError(f"unknown fault point {name!r}; known: {', '.join(POINTS)}")
    kill = os.environ.get(FAULT_VARIABLE)
    stall = os.environ.get(SLEEP_VARIABLE)
    if stall:
        target, seconds = _parse_sleep(stall)
        if target == name:
            log.warning("fault injection: sleeping %g s at fault point %s", seconds, name)
            time.sleep(seconds)
    if kill:
        if kill not in POINTS:
            raise ValueError(f"{FAULT_VARIABLE} names an unknown fault point: {kill!r}")
        if kill == name:
            log.warning("fault injection: SIGKILL at fault point %s", name)
            os.kill(os.getpid(), signal.SIGKILL)


def _parse_sleep(value: str) -> tuple[str, float]:
    """``<point>:<seconds>`` from LEVERANSE_FAULT_SLEEP, checked."""
    target, _, raw = value.partition(":")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if target not in POINTS or not seconds >= 0:
        raise ValueError(f"{SLEEP_VARIABLE} must be <fault point>:<seconds>, got {value!r}")
    return target, seconds
