"""The coverage report page: which attempts it shows, small-cell suppression, valid HTML."""

from __future__ import annotations

import itertools
import re
import stat
import struct
import subprocess
import zlib
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from etl import audit
from etl.audit import DisclosureLog
from etl.coverage_report import write_report
from etl.period import Period

CHROMIUM = Path("/usr/bin/chromium")
DASH = "\N{EN DASH}"  # the page's empty cell
VOID = frozenset({"meta", "br", "hr", "img", "input", "link"})
JAN, FEB, MAR, APR, MAY, JUN = (f"2024-{m:02d}-01_2024-{m + 1:02d}-01" for m in range(1, 7))


class Page(HTMLParser):
    """Parses the page, fails on any unbalanced tag, and collects table rows and SVG marks."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.rows: list[list[str]] = []
        self.marks: list[dict[str, Any]] = []
        self.svgs = 0
        self._cell: list[str] | None = None
        self._mark_depth: int | None = None
        self._in_title = False
        self.feed(text)
        self.close()
        assert not self.open, f"unclosed tags: {self.open}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:
            return
        self.open.append(tag)
        classes = (dict(attrs).get("class") or "").split()
        if tag == "svg":
            self.svgs += 1
        elif tag == "tr" and self._inside("tbody"):
            self.rows.append([])
        elif tag == "td":
            self._cell = []
        elif tag == "g" and "mark" in classes:
            self._mark_depth = len(self.open)
            self.marks.append({"low": "low" in classes, "title": "", "texts": []})
        elif tag == "title" and self._mark_depth is not None:
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        if tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "g" and self._mark_depth == len(self.open):
            self._mark_depth = None
        if tag == "title":
            self._in_title = False
        self.open.pop()

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._mark_depth is not None:
            if self._in_title:
                self.marks[-1]["title"] += data
            elif data.strip():
                self.marks[-1]["texts"].append(data.strip())

    def _inside(self, tag: str) -> bool:
        return tag in self.open


@pytest.fixture
def log(state_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[DisclosureLog]:
    # A clock that always moves on, so "latest attempt" never hangs on timer resolution.
    clock = (datetime(2024, 7, 1) + timedelta(seconds=s) for s in itertools.count())
    monkeypatch.setattr(audit, "_utc_now", lambda: next(clock))
    disclosure_log = DisclosureLog(state_url)
    yield disclosure_log
    disclosure_log.close()


def _attempt(
    log: DisclosureLog,
    month: int,
    status: str | None,
    counts: tuple[int, int, int] | None = None,
    version: int | None = None,
    registry: str = "PARKINSON",
) -> None:
    """One attempt for a 2024 month; status None leaves it running."""
    attempt_id = log.start(
        registry,
        "complement",
        Period(date(2024, month, 1), date(2024, month + 1, 1)),
        "NPR-forskriften § 4-2",
        "ab" * 32,
        ["fnr"],
        datetime(2024, 7, 1),
    )
    if status is None:
        return
    coverage = None
    if counts is not None:
        only_register, only_npr, both = counts
        ratio = (only_register + both) / sum(counts)
        coverage = {
            "only_register": only_register,
            "only_npr": only_npr,
            "both": both,
            "coverage": ratio,
        }
    log.finish(attempt_id, status, coverage=coverage, version=version)


@pytest.fixture
def history(log: DisclosureLog) -> None:
    _attempt(log, 1, "published", (3, 11, 240), version=1)
    _attempt(log, 2, "published", (21, 37, 55), version=1)
    _attempt(log, 3, "published", (4, 70, 30), version=1)  # 34/104: low
    _attempt(log, 2, "published", (26, 33, 61), version=2)  # replaces v1
    _attempt(log, 4, "failed")
    _attempt(log, 5, "failed")
    _attempt(log, 5, "published", (10, 2, 88), version=1)
    _attempt(log, 6, None)
    _attempt(log, 1, "published", (1, 1, 1), version=1, registry="NORKAR")


def test_the_page_shows_the_latest_delivered_coverage_per_period(
    history: None, state_url: str, tmp_path: Path
) -> None:
    drop_dir = tmp_path / "drop"

    path = write_report(state_url, drop_dir, "PARKINSON", "Norsk Parkinsonregister")

    assert path == drop_dir / "_reports" / "PARKINSON" / "coverage.html"
    page = Page(path.read_text(encoding="utf-8"))
    assert page.rows == [
        [JAN, "v1", "published", "<5", "11", "240", f"0.956{DASH}0.957", ""],
        [FEB, "v2", "published", "26", "33", "61", "0.725", ""],
        [MAR, "v1", "published", "<5", "70", "30", f"0.306{DASH}0.327", "▼ low"],
        [APR, DASH, "failed", DASH, DASH, DASH, DASH, ""],
        [MAY, "v1", "published", "10", "<5", "88", f"0.960{DASH}0.990", ""],
        [JUN, DASH, "running", DASH, DASH, DASH, DASH, ""],
    ]
    assert page.svgs == 1
    assert [mark["title"] for mark in page.marks] == [
        f"{JAN}: coverage 0.956{DASH}0.957",
        f"{FEB}: coverage 0.725",
        f"{MAR}: coverage 0.306{DASH}0.327 (low)",
        f"{MAY}: coverage 0.960{DASH}0.990",
    ]
    assert [mark["low"] for mark in page.marks] == [False, False, True, False]
    assert ["▼ low" in mark["texts"] for mark in page.marks] == [False, False, True, False]
    assert "Norsk Parkinsonregister (PARKINSON)" in path.read_text(encoding="utf-8")


def test_small_counts_are_shown_as_under_five_only(
    history: None, state_url: str, tmp_path: Path
) -> None:
    text = write_report(state_url, tmp_path / "drop", "PARKINSON").read_text(encoding="utf-8")

    assert "&lt;5" in text
    for exact in ('<td class="n">3</td>', '<td class="n">4</td>', '<td class="n">2</td>'):
        assert exact not in text
    assert "NORKAR" not in text
    assert ">21<" not in text and ">37<" not in text  # February's superseded v1
    # January's exact ratio, 243/254, would give its 3 away beside 11 and 240: 0.95x only
    # appears as the range it lies in.
    ranges = len(re.findall(r"0\.956\N{EN DASH}0\.957", text))
    assert ranges and len(re.findall(r"0\.95\d", text)) == 2 * ranges


@pytest.mark.parametrize(
    ("counts", "shown", "low"),
    [
        ((26, 33, 61), "0.725", ""),  # no small cell: the ratio itself
        ((1, 1, 2), f"0.333{DASH}0.889", "near the threshold"),  # straddles 0.6
        ((1, 0, 2), "1.000", ""),  # every count it could be gives 1
    ],
)
def test_a_period_with_a_small_count_shows_only_the_range_its_coverage_lies_in(
    counts: tuple[int, int, int],
    shown: str,
    low: str,
    log: DisclosureLog,
    state_url: str,
    tmp_path: Path,
) -> None:
    _attempt(log, 1, "published", counts, version=1)

    page = Page(write_report(state_url, tmp_path / "drop", "PARKINSON").read_text("utf-8"))

    assert page.rows[0][6:] == [shown, low]


def test_the_report_has_the_drops_modes_and_replaces_itself_whole(
    history: None, state_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop_dir = tmp_path / "drop"
    drop_dir.mkdir()

    path = write_report(state_url, drop_dir, "PARKINSON")
    monkeypatch.setenv("LEVERANSE_FILE_MODE", "600")
    again = write_report(state_url, drop_dir, "PARKINSON")

    assert again == path
    assert stat.S_IMODE((drop_dir / "_reports").stat().st_mode) == 0o750
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["coverage.html"]


def test_an_empty_history_renders_a_valid_page(state_url: str, tmp_path: Path) -> None:
    path = write_report(state_url, tmp_path / "drop", "PARKINSON")

    text = path.read_text(encoding="utf-8")
    page = Page(text)
    assert "There are no deliveries with coverage yet." in text
    assert (page.svgs, page.rows, page.marks) == (0, [], [])
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_printed_text_is_escaped(state_url: str, tmp_path: Path) -> None:
    name = 'Register <script>alert("x")</script> & co'

    text = write_report(state_url, tmp_path / "drop", "PARKINSON", name).read_text("utf-8")

    assert "<script" not in text
    assert "Register &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in text
    Page(text)


@pytest.mark.parametrize("code", ["../PARKINSON", "parkinson", ""])
def test_a_code_that_is_no_folder_name_is_refused(
    code: str, state_url: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="registry code"):
        write_report(state_url, tmp_path / "drop", code)
    assert not (tmp_path / "drop").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is not installed (apt-get install -y chromium) to render the page",
)
def test_chromium_renders_the_page(history: None, state_url: str, tmp_path: Path) -> None:
    path = write_report(state_url, tmp_path / "drop", "PARKINSON", "Norsk Parkinsonregister")
    png = tmp_path / "coverage.png"

    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium'}",
            f"--screenshot={png}",
            "--window-size=1000,800",
            path.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )

    width, height, pixels = _png(png)
    assert (width, height) == (1000, 800)
    assert len(set(pixels)) > 32, "the screenshot is (nearly) blank"


def _png(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the decompressed scanlines of a PNG, without an imaging library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat, offset = b"", 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            idat += data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    return width, height, zlib.decompress(idat)
