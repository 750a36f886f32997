"""A register's coverage over its deliveries, as one self-contained HTML page.

Every complement delivery measures the register's coverage (dekningsgrad) and logs the exact
counts in the disclosure log (etl.coverage, etl.audit). A data manager wants to see at a
glance whether coverage is stable and where it fell below the national service's 0.6 line,
so this module draws the history as a bar chart with a table beside it.

The page is built from the disclosure log alone, so it only ever holds counts, never an
identity number. It is shown the same way as a published table: counts of 1..4 are "<5"
(Coverage.published), in the table and in the chart's tooltips alike. The chart is inline
SVG drawn here, with no script, font or stylesheet from elsewhere, so the page opens the same
offline, in a locked-down browser, or attached to an e-mail. Every text printed goes through
html.escape, even codes that are checked elsewhere: the page must not depend on that.

Which attempts count: per period, the latest delivered attempt (published or unchanged) that
has coverage, as that is what the register holds. A period that was never delivered is still
listed in the table with the status of its latest attempt (failed, validation_failed, or
running: a run in progress or one that died), with no numbers and no bar, so a gap in the
chart is explained rather than hidden.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from etl.audit import DELIVERED_STATUSES, DisclosureLog
from etl.coverage import LOW_COVERAGE, Coverage
from etl.drop import file_mode, fsync_dir, make_dirs
from etl.period import Period
from etl.spec import REGISTRY_CODE

REPORTS = "_reports"
REPORT_FILE = "coverage.html"
# The one delivery type that measures coverage (etl.deliver); a failed population run of the
# same register must not show up in its coverage table.
COVERAGE_DELIVERY = "complement"

_MISSING = "\N{EN DASH}"  # a cell with no number
_NORMAL_COLOUR = "#2b6cb0"  # blue and orange stay distinct for the common colour-vision types
_LOW_COLOUR = "#c2410c"
_PLOT_HEIGHT = 240
_SLOT = 48  # horizontal room per period
# Left: room for the first rotated period label; right: for the threshold's label.
_LEFT, _TOP, _RIGHT, _BOTTOM = 96, 28, 150, 110


@dataclass(frozen=True)
class ReportRow:
    """One period of the report: its delivered coverage, or the status of a failed attempt."""

    period: Period
    status: str
    version: int | None
    coverage: Coverage | None  # None when the period has no delivered attempt with coverage

    @property
    def shown(self) -> tuple[float, float] | None:
        """The published coverage: a range where a count is under 5 (etl.coverage)."""
        return None if self.coverage is None else self.coverage.published_range

    @property
    def low(self) -> bool:
        return self.coverage is not None and self.coverage.published_low is True

    @property
    def uncertain(self) -> bool:
        """The published range straddles the threshold."""
        return self.coverage is not None and self.coverage.published_low is None

    @property
    def ratio_text(self) -> str:
        shown = self.shown
        if shown is None:
            return "not defined"
        lowest, highest = shown
        return f"{lowest:.3f}" if lowest == highest else f"{lowest:.3f}\N{EN DASH}{highest:.3f}"


def collect_rows(attempts: list[dict[str, Any]]) -> list[ReportRow]:
    """One row per period, in period order, from a register's attempts (oldest first).

    A delivered attempt with coverage wins over any other attempt of its period, and among
    those the latest wins: a rerun published as v2 replaces what v1 said.
    """
    delivered: dict[Period, ReportRow] = {}
    other: dict[Period, ReportRow] = {}
    for attempt in attempts:
        if attempt["delivery"] != COVERAGE_DELIVERY:
            continue
        period = Period(attempt["period_from"], attempt["period_to"])
        counts = attempt["coverage"]
        if attempt["status"] in DELIVERED_STATUSES and counts is not None:
            coverage = Coverage(counts["only_register"], counts["only_npr"], counts["both"])
            delivered[period] = ReportRow(period, attempt["status"], attempt["version"], coverage)
        else:
            other[period] = ReportRow(period, attempt["status"], attempt["version"], None)
    rows = {period: row for period, row in other.items() if period not in delivered} | delivered
    return sorted(rows.values(), key=lambda row: row.period)


def render_svg(rows: list[ReportRow]) -> str:
    """A bar chart of coverage per measured period, 0..1, with the 0.6 threshold dashed.

    A low bar differs in colour and also carries the text "▼ low" above its value, so the flag
    survives a greyscale print and a screen reader. Tooltips give the period and the ratio
    only: never the counts, which may be small.
    """
    measured = [row for row in rows if row.coverage is not None]
    width = _LEFT + _SLOT * len(measured) + _RIGHT
    height = _TOP + _PLOT_HEIGHT + _BOTTOM
    base = _TOP + _PLOT_HEIGHT
    right = width - _RIGHT

    def y(value: float) -> float:
        return base - value * _PLOT_HEIGHT

    lows = sum(row.low for row in measured)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-labelledby="chart-title chart-desc" '
        'font-family="sans-serif" font-size="12">',
        '<title id="chart-title">Coverage per delivered period</title>',
        f'<desc id="chart-desc">{len(measured)} periods; {lows} below the threshold '
        f"{LOW_COVERAGE:g}, each marked with the text low.</desc>",
    ]
    for tick in range(6):
        value = tick / 5
        parts.append(
            f'<line x1="{_LEFT}" y1="{y(value):.1f}" x2="{right}" y2="{y(value):.1f}" '
            f'stroke="#ddd"/><text x="{_LEFT - 6}" y="{y(value) + 4:.1f}" '
            f'text-anchor="end">{value:.1f}</text>'
        )
    axis_x, axis_y = _LEFT - 40, _TOP + _PLOT_HEIGHT / 2
    parts.append(
        f'<text x="{axis_x}" y="{axis_y}" text-anchor="middle" '
        f'transform="rotate(-90 {axis_x} {axis_y})">coverage</text>'
    )
    for index, row in enumerate(measured):
        parts.append(_bar(row, _LEFT + _SLOT * index + _SLOT / 2, base, y))
    threshold = y(LOW_COVERAGE)
    parts += [
        f'<line x1="{_LEFT}" y1="{threshold:.1f}" x2="{right}" y2="{threshold:.1f}" '
        'stroke="#222" stroke-width="1.5" stroke-dasharray="6 4"/>',
        f'<text x="{right + 6}" y="{threshold + 4:.1f}">{LOW_COVERAGE:g}: low below this</text>',
        f'<line x1="{_LEFT}" y1="{base}" x2="{right}" y2="{base}" stroke="#222"/>',
        "</svg>",
    ]
    return "\n".join(parts)


def _bar(row: ReportRow, centre: float, base: float, y: Callable[[float], float]) -> str:
    """One period's mark: a bar with its value above, or "n/a" when nobody was counted."""
    label = escape(row.period.label)
    parts = [f'<g class="mark{" low" if row.low else ""}">']
    if row.shown is None:
        parts += [
            f"<title>{label}: no persons on either side, coverage not defined</title>",
            f'<text x="{centre}" y="{base - 6}" text-anchor="middle">n/a</text>',
        ]
    else:
        lowest, highest = row.shown
        top = y(highest)
        flag = " (low)" if row.low else " (near the threshold)" if row.uncertain else ""
        parts += [
            f"<title>{label}: coverage {row.ratio_text}{flag}</title>",
            f'<rect x="{centre - _SLOT * 0.3:.1f}" y="{y(lowest):.1f}" '
            f'width="{_SLOT * 0.6:.1f}" height="{base - y(lowest):.1f}" '
            f'fill="{_LOW_COLOUR if row.low else _NORMAL_COLOUR}"/>',
        ]
        if highest > lowest:  # the range a "<5" count leaves open, as a whisker
            parts.append(
                f'<line x1="{centre}" y1="{y(lowest):.1f}" x2="{centre}" y2="{top:.1f}" '
                'stroke="#222" stroke-width="2"/>'
            )
        parts.append(
            f'<text x="{centre}" y="{top - 5:.1f}" text-anchor="middle">{row.ratio_text}</text>'
        )
        if row.low:
            parts.append(
                f'<text x="{centre}" y="{top - 19:.1f}" text-anchor="middle" '
                f'font-weight="bold" fill="{_LOW_COLOUR}">▼ low</text>'
            )
    parts += [
        f'<text x="{centre}" y="{base + 12}" text-anchor="end" font-size="11" '
        f'transform="rotate(-45 {centre} {base + 12})">{label}</text>',
        "</g>",
    ]
    return "".join(parts)


def render_page(
    registry: str, registry_name: str | None, rows: list[ReportRow], generated_at: datetime
) -> str:
    """The whole HTML page: heading, what coverage means, a summary, the chart and the table."""
    title = f"{registry_name} ({registry})" if registry_name else registry
    measured = [row for row in rows if row.coverage is not None]
    if measured:
        chart = f'<div class="chart">{render_svg(rows)}</div>'
    else:
        chart = '<p class="empty">There are no deliveries with coverage yet.</p>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Coverage: {escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 64em; padding: 0 1em;
  color: #222; line-height: 1.4; }}
.chart {{ overflow-x: auto; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
th, td {{ border-bottom: 1px solid #ccc; padding: 0.3em 0.7em; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.low td {{ background: #fff1e6; }}
.flag {{ color: {_LOW_COLOUR}; font-weight: bold; }}
.note {{ color: #555; font-size: 0.9em; }}
</style>
</head>
<body>
<h1>Coverage: {escape(title)}</h1>
<p>Coverage (<i>dekningsgrad</i>) is the share of the patients who should be in the register
that are in it, measured as the national coverage service does: persons are matched between
the register and NPR (Norsk pasientregister) by the register's inclusion criteria and counted
as only in the register, only in NPR, or in both. Coverage = (only register + both) /
(only register + only NPR + both). Below {LOW_COVERAGE:g} counts as low.</p>
<p>Each complement delivery measures it for its own period.
{escape(_summary(measured))}</p>
{chart}
{_table(rows)}
<p class="note">Counts of 1 to 4 persons are shown as &lt;5; where a period has one, its
coverage is shown as the range it lies in for any count from 1 to 4 (an exact value would give
the count away), and a range across {LOW_COVERAGE:g} is marked "near the threshold".
Periods are named like the drop folders, <code>from_to</code>, where the last day is not
included. A period delivered more than once shows its latest delivered version. A period
with no delivered version shows the status of its latest attempt and has no bar.
Generated {escape(generated_at.strftime("%Y-%m-%d %H:%M UTC"))} from the disclosure log.</p>
</body>
</html>
"""


def _summary(measured: list[ReportRow]) -> str:
    if not measured:
        return ""
    latest = measured[-1]
    ratio = latest.ratio_text
    lows = sum(row.low for row in measured)
    return (
        f"Latest period {latest.period.label}: coverage {ratio}. "
        f"{lows} of {len(measured)} periods below {LOW_COVERAGE:g}."
    )


def _table(rows: list[ReportRow]) -> str:
    if not rows:
        return ""
    header = (
        "<tr><th>Period</th><th>Version</th><th>Status</th><th>Only register</th>"
        "<th>Only NPR</th><th>Both</th><th>Coverage</th><th>Flag</th></tr>"
    )
    body = "".join(map(_table_row, rows))
    return f"<table>\n<thead>{header}</thead>\n<tbody>\n{body}</tbody>\n</table>"


def _table_row(row: ReportRow) -> str:
    if row.coverage is None:
        cells = [_MISSING] * 4
    else:
        shown = row.coverage.published()
        ratio = _MISSING if row.shown is None else row.ratio_text
        cells = [str(shown[key]) for key in ("only_register", "only_npr", "both")] + [ratio]
    version = _MISSING if row.version is None else f"v{row.version}"
    numbers = "".join(f'<td class="n">{escape(cell)}</td>' for cell in cells)
    flag = (
        '<span class="flag">▼ low</span>'
        if row.low
        else "near the threshold"
        if row.uncertain
        else ""
    )
    opening = '<tr class="low">' if row.low else "<tr>"
    return (
        f"{opening}<td>{escape(row.period.label)}</td>"
        f"<td>{escape(version)}</td><td>{escape(row.status)}</td>{numbers}<td>{flag}</td></tr>\n"
    )


def write_report(
    state_url: str, drop_dir: Path, registry: str, registry_name: str | None = None
) -> Path:
    """Render ``<drop_dir>/_reports/<CODE>/coverage.html`` from the disclosure log.

    The page replaces the previous one atomically (a temporary file in the same folder, then
    os.replace), so a reader never sees half a page; it gets the drop's file and folder modes,
    as the reports sit beside the drops on the same share.
    """
    if not REGISTRY_CODE.fullmatch(registry):  # the code becomes a folder name
        raise ValueError(f"registry code must match [A-Z0-9_]+, got {registry!r}")
    log = DisclosureLog(state_url)
    try:
        rows = collect_rows(log.attempts(registry))
    finally:
        log.close()
    page = render_page(registry, registry_name, rows, datetime.now(UTC))
    folder = make_dirs(Path(drop_dir) / REPORTS / registry)
    target = folder / REPORT_FILE
    _write_atomically(target, page)
    return target


def _write_atomically(target: Path, content: str) -> None:
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(fd, file_mode())  # mkstemp creates 0o600 whatever the drop's mode
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
