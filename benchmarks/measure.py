"""Wall time and peak memory of one command, run as a child process.

Each measurement is its own child so its peak resident set is its own: ``os.wait4`` returns
the rusage of exactly that child (``ru_maxrss``, the kernel's high-water mark, in KiB on
Linux), where ``getrusage(RUSAGE_CHILDREN)`` would report the largest of every child so far.
A sampler thread also watches the child's VmRSS, to stop a run that would exhaust the
machine (the naive pandas baseline at 10 million episodes) before the OOM killer picks a
victim; such a run is reported as out of memory, not as a time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measurement:
    """One run of one command."""

    seconds: float
    peak_rss_bytes: int
    returncode: int
    outcome: str  # ok | failed | out_of_memory | timeout
    stderr_tail: str = ""


def _rss_bytes(pid: int) -> int:
    """The current resident set of a process and its children (0 when it is gone)."""
    total = 0
    for task in _family(pid):
        try:
            status = Path(f"/proc/{task}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def _family(pid: int) -> list[int]:
    """The process and its descendants (leveranse may start none, but a baseline might)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return found


def run(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    memory_limit_bytes: int | None = None,
    timeout_seconds: float | None = None,
) -> Measurement:
    """Run argv to its end and measure it; kill it past the memory limit or the timeout."""
    stderr_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{os.getpid()}.stderr"
    with stderr_path.open("w+b") as stderr:
        started = time.monotonic()
        child = subprocess.Popen(
            list(argv),
            env=None if env is None else dict(env),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        verdict: list[str] = []

        def watch() -> None:
            while child.poll() is None:
                if memory_limit_bytes and _rss_bytes(child.pid) > memory_limit_bytes:
                    verdict.append("out_of_memory")
                elif timeout_seconds and time.monotonic() - started > timeout_seconds:
                    verdict.append("timeout")
                if verdict:
                    os.killpg(child.pid, signal.SIGKILL)
                    return
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.monotonic() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        watcher.join()
        stderr.seek(0)
        tail = stderr.read().decode("utf-8", "replace").strip().splitlines()[-5:]
    stderr_path.unlink(missing_ok=True)
    if verdict:
        outcome = verdict[0]
    elif child.returncode == 0:
        outcome = "ok"
    elif child.returncode == -signal.SIGKILL:
        outcome = "out_of_memory"  # the kernel's OOM killer
    else:
        outcome = "failed"
    return Measurement(seconds, usage.ru_maxrss * 1024, child.returncode, outcome, "\n".join(tail))
