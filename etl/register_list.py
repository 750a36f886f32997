"""Load a quality register's patient/case list into register_patient (``leveranse load-list``).

The list decides what a complement delivery marks ``registered`` and from which index_date
a new_information delivery counts its follow-up window (CONTRACT.md section 4), so a wrong
list silently changes what is disclosed to whom. Hence the rules here: every row is
checked, all problems are collected and reported together (a register fixes its file once,
not once per problem), one bad row refuses the whole file, and a good file replaces the
register's earlier list in one transaction, so the table holds the old list or the new one,
never a mix.

Accepted files
  * CSV as a spreadsheet exports it: ``;`` or ``,`` between cells (chosen from the header
    line), UTF-8 with or without a byte order mark, Windows or Unix line endings, cells
    quoted where needed. Fully blank rows (a trailing ``;;`` line) are skipped. Latin-1,
    Windows-1252, UTF-16 and Excel workbooks are refused with a message saying what to do.
  * Parquet (recognised by its magic bytes, whatever the file is called). Index columns that
    pandas stores beside the data are ignored; they are row positions, not data.

Columns are exactly fnr, case_id, index_date: header names compare case-insensitively with
surrounding spaces trimmed. Any other column is refused (data minimisation: we take only
what the deliveries need), and row 1 must be the header.

Each row
  * fnr: text that ``etl.fnr.is_valid`` accepts. Read as text throughout (never as a
    number), so leading zeros survive; a Parquet column of numbers is refused.
  * case_id: present, at most 64 characters, no control characters, unique in the file.
  * index_date: ``YYYY-MM-DD``, or ``DD.MM.YYYY`` as Norwegian spreadsheets write dates (the
    dots and the four-digit year make it unambiguous; ``DD.MM.YY`` and slashed dates are
    not), or a Parquet date; a real date, not after ``today``. It may be empty: the contract
    speaks of cases "with an index_date", and a complement register needs only its persons.
  * no cell starts with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return): a
    spreadsheet would run it as a formula when the file is opened (CSV injection).
  * no row repeats another row.
  Surrounding spaces of every cell are trimmed.

A report names the row (as a spreadsheet shows it: row 1 is the header, the first data row
is row 2; Parquet rows are numbered the same way), the column and the reason. It never
quotes a cell: identity numbers, and case ids too, may identify a person.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from etl.fnr import is_valid_array
from etl.source import bind_value, sql_text
from etl.spec import REGISTRY_CODE

__all__ = ["ListRejected", "LoadSummary", "Problem", "load_list"]

COLUMNS = ("fnr", "case_id", "index_date")
CASE_ID_MAX_CHARS = 64
MAX_REPORTED_PROBLEMS = 50

_EXPECTED = ", ".join(COLUMNS)
_DELIMITERS = (";", ",")
_FORMULA_STARTS = ("=", "+", "-", "@")
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_NORWEGIAN_DATE = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4})")
# A header cell with six digits in a row is data (an identity number), not a column name.
_DATA_LIKE = re.compile(r"\d{6}")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
_HEADER_NAME_SHOWN_CHARS = 40
_PARQUET_MAGIC = b"PAR1"
_ZIP_MAGIC = b"PK\x03\x04"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

# A cell as a reader delivers it: CSV gives text, Parquet also numbers and dates.
Cell = str | int | float | date | None
_T = TypeVar("_T")


@dataclass(frozen=True)
class Problem:
    """One reason to refuse a file: where (row and column, when known) and why."""

    row: int | None
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = [] if self.row is None else [f"row {self.row}"]
        if self.column is not None:
            where.append(self.column)
        return ": ".join(filter(None, (", ".join(where), self.reason)))


class ListRejected(ValueError):
    """The file was refused and nothing was loaded; ``problems`` says where and why.

    The first line of the message stands on its own (the command line may print only it);
    the following lines list at most MAX_REPORTED_PROBLEMS problems.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(_report(self.problems))


@dataclass(frozen=True)
class LoadSummary:
    """What a load did: the new list's size and how many rows of the earlier list it replaced."""

    registry: str
    rows: int
    persons: int
    cases: int
    replaced: int

    def __str__(self) -> str:
        return (
            f"{self.registry}: loaded {self.rows} rows ({self.persons} persons, "
            f"{self.cases} cases), replacing {self.replaced} earlier rows"
        )


@dataclass(frozen=True)
class _Table:
    """A file as read: its header and its non-blank rows, each with its row number."""

    header: list[str]
    rows: list[tuple[int, list[Cell]]]


@dataclass(frozen=True)
class _Entry:
    """One checked row, as it is stored."""

    fnr: str
    case_id: str
    index_date: date | None


class _BadCell(ValueError):
    """A cell failed a check; the message is the reason, never the cell's content."""


def load_list(engine: Engine, code: str, path: Path, today: date | None = None) -> LoadSummary:
    """Replace register ``code``'s list in register_patient with the list in ``path``.

    ``today`` (default: today in UTC) is the latest index_date accepted. Raises ListRejected,
    before touching the database, when the code, the file or any row is not acceptable.
    """
    if not REGISTRY_CODE.fullmatch(code):
        raise _rejected("the register code must match [A-Z0-9_]+ (at most 32 characters)")
    table = _read(path)
    positions = _positions(table.header)
    if not table.rows:
        raise _rejected("no rows: the file holds no data rows")
    entries = _checked(table, positions, today or datetime.now(UTC).date())
    with engine.begin() as conn:
        replaced = _replace(conn, code, entries)
    return LoadSummary(
        registry=code,
        rows=len(entries),
        persons=len({entry.fnr for entry in entries}),
        cases=len({entry.case_id for entry in entries}),
        replaced=replaced,
    )


def _rejected(reason: str, row: int | None = None) -> ListRejected:
    return ListRejected([Problem(row, None, reason)])


def _report(problems: Sequence[Problem]) -> str:
    """The refusal: a self-contained first line, then the (capped) list of problems."""
    first = f"list refused, nothing loaded: {problems[0]}" if problems else "list refused"
    if len(problems) == 1:
        return first
    lines = [
        f"{first} (and {len(problems) - 1} more problems; "
        "row numbers as a spreadsheet shows them, row 1 is the header)",
        *(f"  {problem}" for problem in problems[:MAX_REPORTED_PROBLEMS]),
    ]
    if len(problems) > MAX_REPORTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_REPORTED_PROBLEMS} more")
    return "\n".join(lines)


# --- reading -------------------------------------------------------------------------------


def _read(path: Path) -> _Table:
    """The file's header and rows; Parquet or CSV is told by content, not by file name."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _rejected(f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
    if data.startswith(_PARQUET_MAGIC):
        return _read_parquet(data)
    if data.startswith(_ZIP_MAGIC):
        raise _rejected("the file is an Excel workbook (or a zip archive): save it as CSV UTF-8")
    return _read_csv(_decode(data))


def _decode(data: bytes) -> str:
    """The file as text; anything but UTF-8 is refused rather than guessed at.

    Guessing Latin-1 would turn a mis-saved æ, ø or å into another letter without a word,
    and a case id that no longer matches the register's own is worse than a refusal.
    """
    if data.startswith(_UTF16_BOMS):
        raise _rejected("the file is UTF-16 text (Excel's 'Unicode text'): save it as CSV UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _rejected(
            f"the file is not UTF-8 text (line {line} has bytes that are not UTF-8, as "
            "Latin-1 or Windows-1252 write æ, ø and å): save it as CSV UTF-8"
        ) from None


def _read_csv(content: str) -> _Table:
    """Header and non-blank rows of CSV text; spreadsheets append blank ``;;`` rows."""
    if not content.strip():
        raise _rejected("no rows: the file is empty")
    reader = csv.reader(
        io.StringIO(content, newline=""), delimiter=_delimiter(content), strict=True
    )
    rows: list[tuple[int, list[Cell]]] = []
    number = 0  # the last row read
    try:
        header = next(reader)
        for number, cells in enumerate(reader, start=2):
            if any(cell.strip() for cell in cells):
                rows.append((number, list(cells)))
    except csv.Error as exc:
        # csv's messages describe the fault ("line contains NUL"), never the data.
        raise _rejected(f"not readable as CSV ({exc})", row=max(number + 1, 1)) from None
    return _Table(header, rows)


def _delimiter(content: str) -> str:
    """``;`` or ``,``: whichever, in the header line, separates more of the expected names."""
    header_line = content.splitlines()[0]
    candidates = [d for d in _DELIMITERS if d in header_line]
    if not candidates:
        tabs = " (it is separated by tabs)" if "\t" in header_line else ""
        raise _rejected(
            f"expected columns {_EXPECTED} separated by ';' or ',', "
            f"but the header line has neither{tabs}",
            row=1,
        )
    return max(candidates, key=lambda d: len(_names(header_line.split(d)) & set(COLUMNS)))


def _names(header: Sequence[str]) -> set[str]:
    return {_name(cell) for cell in header}


def _name(cell: str) -> str:
    return cell.strip().strip('"').strip().lower()


def _read_parquet(data: bytes) -> _Table:
    """Header and rows of a Parquet file, values as Python objects (text, numbers, dates)."""
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError):
        raise _rejected("the file starts like Parquet but cannot be read as Parquet") from None
    table = table.drop_columns(_pandas_index_columns(table.schema))
    columns = [column.to_pylist() for column in table.columns]
    rows = [
        (number, list(cells)) for number, cells in enumerate(zip(*columns, strict=True), start=2)
    ]
    return _Table(list(table.column_names), rows)


def _pandas_index_columns(schema: pa.Schema) -> list[str]:
    """Columns pandas wrote for a DataFrame's index (a filtered frame keeps its positions)."""
    index_columns = (schema.pandas_metadata or {}).get("index_columns", [])
    return [name for name in index_columns if isinstance(name, str) and name in schema.names]


# --- checking ------------------------------------------------------------------------------


def _positions(header: Sequence[str]) -> dict[str, int]:
    """Where each expected column is; refuses missing, repeated and extra columns."""
    names = [_name(cell) for cell in header]
    if any(_DATA_LIKE.search(name) for name in names):
        raise _rejected(f"row 1 must be the header {_EXPECTED}, but it looks like data", row=1)
    problems = []
    missing = [column for column in COLUMNS if column not in names]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}; expected columns {_EXPECTED}")
    repeated = [column for column in COLUMNS if names.count(column) > 1]
    if repeated:
        problems.append(f"column(s) given more than once: {', '.join(repeated)}")
    extra = [_shown(i, cell) for i, cell in enumerate(header, 1) if _name(cell) not in COLUMNS]
    if extra:
        problems.append(
            f"column(s) not accepted: {', '.join(extra)}; "
            f"send only {_EXPECTED} (we take no more than the deliveries need)"
        )
    if problems:
        raise ListRejected([Problem(1, None, reason) for reason in problems])
    return {column: names.index(column) for column in COLUMNS}


def _shown(position: int, cell: str) -> str:
    """An extra column as the report names it: its (shortened) header, or its position."""
    name = cell.strip()
    if not name:
        return f"column {position} (no name)"
    return repr(name[:_HEADER_NAME_SHOWN_CHARS])


def _checked(table: _Table, positions: dict[str, int], today: date) -> list[_Entry]:
    """Every row checked; raises ListRejected with all problems found, in row order."""
    problems: list[Problem] = []
    numbered: list[tuple[int, _Entry]] = []
    width = len(table.header)
    valid_numbers = _valid_numbers(table, positions["fnr"])
    for (number, cells), fnr_valid in zip(table.rows, valid_numbers, strict=True):
        if len(cells) != width:
            problems.append(Problem(number, None, f"has {len(cells)} cells, the header {width}"))
            continue
        entry, row_problems = _checked_row(number, cells, positions, today, fnr_valid)
        problems.extend(row_problems)
        if entry is not None:
            numbered.append((number, entry))
    problems.extend(_duplicates(numbered))
    if problems:
        problems.sort(key=lambda problem: problem.row or 0)
        raise ListRejected(problems)
    return [entry for _, entry in numbered]


def _valid_numbers(table: _Table, position: int) -> list[bool]:
    """Per row, whether its fnr cell is a valid identity number once trimmed.

    One vectorised check for the whole file: the scalar check takes most of a load's time
    for a list of a few 100k rows.
    """
    cells = [cells[position] if position < len(cells) else None for _, cells in table.rows]
    texts = [cell.strip() if isinstance(cell, str) else None for cell in cells]
    return is_valid_array(texts).tolist()


def _checked_row(
    number: int, cells: Sequence[Cell], positions: dict[str, int], today: date, fnr_valid: bool
) -> tuple[_Entry | None, list[Problem]]:
    """One row as an entry, or the problems of each of its cells."""
    problems: list[Problem] = []

    def check(column: str, rule: Callable[[Cell], _T]) -> _T | None:
        try:
            return rule(cells[positions[column]])
        except _BadCell as bad:
            problems.append(Problem(number, column, str(bad)))
            return None

    fnr = check("fnr", lambda cell: _fnr(cell, fnr_valid))
    case_id = check("case_id", _case_id)
    index_date = check("index_date", lambda cell: _index_date(cell, today))
    if problems or fnr is None or case_id is None:
        return None, problems
    return _Entry(fnr, case_id, index_date), []


def _is_empty(cell: Cell) -> bool:
    return cell is None or (isinstance(cell, str) and not cell.strip())


def _text(cell: Cell) -> str:
    """A present, harmless text cell, trimmed."""
    if _is_empty(cell):
        raise _BadCell("missing")
    if not isinstance(cell, str):
        raise _BadCell(f"must be text, not {type(cell).__name__}")
    trimmed = cell.strip()
    if cell.startswith(("\t", "\r")) or trimmed.startswith(_FORMULA_STARTS):
        raise _BadCell(
            "starts with =, +, -, @, tab or carriage return, which a spreadsheet would run "
            "as a formula (CSV injection)"
        )
    return trimmed


def _fnr(cell: Cell, valid: bool) -> str:
    """The identity number of a cell; ``valid`` is the verdict of ``_valid_numbers``."""
    if isinstance(cell, int | float):
        raise _BadCell("is stored as a number: send identity numbers as text (leading zeros)")
    number = _text(cell)
    if not valid:
        raise _BadCell("not a valid identity number")
    return number


def _case_id(cell: Cell) -> str:
    """A case id; whole numbers (a Parquet integer column) are taken as their digits."""
    case_id = _text(str(cell) if isinstance(cell, int) and not isinstance(cell, bool) else cell)
    if len(case_id) > CASE_ID_MAX_CHARS:
        raise _BadCell(f"longer than {CASE_ID_MAX_CHARS} characters")
    if _CONTROL_CHARS.search(case_id):
        raise _BadCell("contains control characters (a tab or a line break)")
    return case_id


def _index_date(cell: Cell, today: date) -> date | None:
    if _is_empty(cell):
        return None
    if isinstance(cell, datetime):
        if cell.time() != time():
            raise _BadCell("has a time of day: expected a date")
        day = cell.date()
    elif isinstance(cell, date):
        day = cell
    else:
        day = _parse_date(_text(cell))
    if day > today:
        raise _BadCell(f"in the future (after {today.isoformat()})")
    return day


def _parse_date(value: str) -> date:
    if match := _ISO_DATE.fullmatch(value):
        year, month, day = match.groups()
    elif match := _NORWEGIAN_DATE.fullmatch(value):
        day, month, year = match.groups()
    else:
        raise _BadCell("not a date: expected YYYY-MM-DD (or DD.MM.YYYY)")
    try:
        return date(int(year), int(month), int(day))
    except ValueError:
        raise _BadCell("not a real date") from None


def _duplicates(numbered: Sequence[tuple[int, _Entry]]) -> list[Problem]:
    """Rows repeating an earlier row, and rows reusing an earlier row's case id."""
    problems = []
    first_of_entry: dict[_Entry, int] = {}
    first_of_case: dict[str, int] = {}
    for number, entry in numbered:
        if entry in first_of_entry:
            problems.append(Problem(number, None, f"repeats row {first_of_entry[entry]}"))
        elif entry.case_id in first_of_case:
            earlier = first_of_case[entry.case_id]
            problems.append(Problem(number, "case_id", f"the same case id as row {earlier}"))
        first_of_entry.setdefault(entry, number)
        first_of_case.setdefault(entry.case_id, number)
    return problems


# --- storing -------------------------------------------------------------------------------


def _replace(conn: Connection, code: str, entries: Sequence[_Entry]) -> int:
    """Delete the register's earlier list and insert the new one; the earlier row count.

    Runs inside the caller's transaction. On PostgreSQL two loads at once would each delete
    only the rows committed before it started and both lists would stay, so loads take a
    table lock first (readers are not blocked). SQLite serialises writers by itself.
    """
    dialect = conn.dialect.name
    if dialect == "postgresql":
        conn.execute(text(sql_text("register_list_lock")))
    replaced = conn.execute(text(sql_text("register_list_delete")), {"registry": code}).rowcount
    received_at = bind_value(dialect, datetime.now(UTC).replace(tzinfo=None))
    conn.execute(
        text(sql_text("register_list_insert")),
        [
            {
                "registry": code,
                "fnr": entry.fnr,
                "case_id": entry.case_id,
                "index_date": bind_value(dialect, entry.index_date),
                "received_at": received_at,
            }
            for entry in entries
        ],
    )
    return replaced
