"""Wall time and peak memory of one command, run as a child process.

Each measurement is its own process so its peak resident set is its own: ``os.wait4``
returns the rusage of exactly that process (``ru_maxrss``, the kernel's high-water mark, in
KiB on Linux), where ``getrusage(RUSAGE_CHILDREN)`` would report the largest of every child
so far. Linux also counts in ``ru_maxrss`` the memory the process had before its ``exec``,
which for a child forked by this script is this script's own: after generating a source
database in-process it is some 500 MiB, and a 20 MiB command reported 504 MiB. So the command
is not this script's child but a grandchild, started by a small launcher (``LAUNCHER``, a
bare ``python -S`` of a few MiB) that waits for it and writes its rusage to a file.
A sampler thread also watches the child's VmRSS, to stop a run that would exhaust the
machine (the naive pandas baseline at 10 million episodes) before the OOM killer picks a
victim; such a run is reported as out of memory, not as a time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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


# Run as ``python -S -c LAUNCHER RESULT_FILE COMMAND...``: fork and exec the command, wait for
# it, write its wait status and peak RSS to RESULT_FILE. Kept to the standard library's
# core (no site) so its own footprint, the floor under the command's ru_maxrss, is small.
LAUNCHER = """
import json, os, sys
result, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    except OSError as error:
        print(f"cannot run {argv[0]}: {error}", file=sys.stderr, flush=True)
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(result, "w") as out:
    json.dump({"status": status, "maxrss_kib": usage.ru_maxrss}, out)
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


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
    scratch = Path(os.environ.get("TMPDIR", "/tmp"))
    stderr_path = scratch / f"bench-{os.getpid()}.stderr"
    result_path = scratch / f"bench-{os.getpid()}.rusage.json"
    result_path.unlink(missing_ok=True)
    with stderr_path.open("w+b") as stderr:
        started = time.monotonic()
        launcher = subprocess.Popen(
            [sys.executable, "-S", "-c", LAUNCHER, str(result_path), *argv],
            env=None if env is None else dict(env),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        verdict: list[str] = []
        observed = [0]  # the highest RSS the sampler saw: the peak of a run it had to kill

        def watch() -> None:
            while launcher.poll() is None:
                observed[0] = max(observed[0], _rss_bytes(launcher.pid))
                if memory_limit_bytes and observed[0] > memory_limit_bytes:
                    verdict.append("out_of_memory")
                elif timeout_seconds and time.monotonic() - started > timeout_seconds:
                    verdict.append("timeout")
                if verdict:
                    os.killpg(launcher.pid, signal.SIGKILL)
                    return
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        launcher.wait()
        seconds = time.monotonic() - started
        watcher.join()
        stderr.seek(0)
        tail = stderr.read().decode("utf-8", "replace").strip().splitlines()[-5:]
    stderr_path.unlink(missing_ok=True)
    # Absent when the launcher was killed with its command (memory limit, timeout).
    command = json.loads(result_path.read_text()) if result_path.exists() else None
    result_path.unlink(missing_ok=True)
    returncode = launcher.returncode
    if command is not None:
        returncode = os.waitstatus_to_exitcode(command["status"])
    peak = command["maxrss_kib"] * 1024 if command is not None else observed[0]
    if verdict:
        outcome = verdict[0]
    elif returncode == 0:
        outcome = "ok"
    elif returncode == -signal.SIGKILL:
        outcome = "out_of_memory"  # the kernel's OOM killer
    else:
        outcome = "failed"
    return Measurement(seconds, peak, returncode, outcome, "\n".join(tail))
