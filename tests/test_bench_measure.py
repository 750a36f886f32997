"""benchmarks.measure: a command's peak memory is its own, not the benchmark script's.

Linux counts in a forked child's ``ru_maxrss`` the memory it had before its ``exec``, that
is the parent's. The benchmark script holds a few hundred MiB after generating a source
database in-process, and once reported 504 MiB for every command it ran.
"""

from __future__ import annotations

import sys

from benchmarks import measure

MIB = 2**20


def touched(mib: int) -> bytearray:
    """A buffer whose every page is resident."""
    buffer = bytearray(mib * MIB)
    for offset in range(0, len(buffer), 4096):
        buffer[offset] = 1
    return buffer


def python(code: str) -> list[str]:
    return [sys.executable, "-S", "-c", code]


ALLOCATE_200 = "b = bytearray(200 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1"


def test_a_small_command_is_measured_small_beside_a_large_benchmark_process():
    ballast = touched(400)
    small = measure.run(python("pass"))
    large = measure.run(python(ALLOCATE_200))
    assert len(ballast) == 400 * MIB
    assert small.outcome == "ok"
    assert small.peak_rss_bytes < 50 * MIB
    assert large.outcome == "ok"
    assert 200 * MIB <= large.peak_rss_bytes < 260 * MIB


def test_exit_codes_signals_and_the_memory_limit_are_told_apart():
    assert measure.run(python("import sys; sys.exit(3)")).outcome == "failed"
    killed = measure.run(python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert (killed.outcome, killed.returncode) == ("out_of_memory", -9)
    stopped = measure.run(
        python(ALLOCATE_200 + "\nimport time; time.sleep(5)"), memory_limit_bytes=100 * MIB
    )
    assert stopped.outcome == "out_of_memory"
    assert stopped.peak_rss_bytes > 100 * MIB
    assert stopped.seconds < 5
    missing = measure.run(["/nonexistent/command"])
    assert (missing.outcome, missing.returncode) == ("failed", 127)
    assert "cannot run /nonexistent/command" in missing.stderr_tail
