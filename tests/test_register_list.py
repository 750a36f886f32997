"""Loading a register's patient/case list (``leveranse load-list``), on SQLite and PostgreSQL.

Every refusal is checked twice over: the report says where and why, and the earlier list is
still in the table exactly as it was. Identity numbers are synthetic (tests.source_builder).
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Iterator, Sequence
from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from etl.fnr import individual_ranges, is_valid, synthetic
from etl.register_list import MAX_REPORTED_PROBLEMS, ListRejected, load_list
from tests.source_builder import Source

TODAY = date(2024, 6, 1)
HEADER = ("fnr", "case_id", "index_date")
Row = tuple[str, str, str | None]
TEXT = pa.string()


@pytest.fixture
def source(db_url: str) -> Iterator[Source]:
    built = Source(db_url)
    yield built
    built.engine.dispose()


@pytest.fixture
def earlier(source: Source, tmp_path: Path) -> list[Row]:
    """A good list of register PARKINSON, loaded before the test's own file."""
    rows = [(source.person(), "P-1", "2023-01-10"), (source.person(), "P-2", "2023-02-11")]
    load_list(source.engine, "PARKINSON", write_csv(tmp_path / "earlier.csv", rows), TODAY)
    return rows


def write_csv(
    path: Path,
    rows: Sequence[Sequence[str | None]],
    *,
    header: Sequence[str] = HEADER,
    delimiter: str = ";",
    encoding: str = "utf-8",
    newline: str = "\r\n",
) -> Path:
    """A CSV file as a spreadsheet writes it (Windows line endings unless told otherwise)."""
    with path.open("w", encoding=encoding, newline="") as f:
        writer = csv.writer(f, delimiter=delimiter, lineterminator=newline)
        writer.writerow(header)
        writer.writerows([["" if cell is None else cell for cell in row] for row in rows])
    return path


def write_parquet(path: Path, rows: Sequence[Row], *, fnr_type: pa.DataType = TEXT) -> Path:
    dates = [None if r[2] is None else date.fromisoformat(r[2]) for r in rows]
    table = pa.table(
        {
            "fnr": pa.array([r[0] for r in rows]).cast(fnr_type),
            "case_id": pa.array([r[1] for r in rows], pa.string()),
            "index_date": pa.array(dates, pa.date32()),
        }
    )
    pq.write_table(table, path)
    return path


def stored(source: Source, registry: str = "PARKINSON") -> list[Row]:
    """The register's rows in the table, dates as ISO text on both dialects."""
    with source.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT fnr, case_id, index_date FROM register_patient"
                " WHERE registry = :registry ORDER BY case_id"
            ),
            {"registry": registry},
        )
        return [(fnr, case_id, None if day is None else str(day)) for fnr, case_id, day in rows]


def refused(source: Source, path: Path, earlier: list[Row]) -> ListRejected:
    """Load a file that must be refused; the earlier list must be untouched."""
    with pytest.raises(ListRejected) as caught:
        load_list(source.engine, "PARKINSON", path, TODAY)
    assert stored(source) == sorted(earlier, key=lambda row: row[1])
    return caught.value


def good_rows(source: Source, n: int = 3) -> list[Row]:
    return [(source.person(), f"C{i}", f"2024-0{i + 1}-15") for i in range(n)]


# --- accepted files ------------------------------------------------------------------------


def test_semicolon_csv_with_bom_and_crlf_loads(source: Source, tmp_path: Path) -> None:
    rows = good_rows(source)
    path = write_csv(tmp_path / "list.csv", [*rows, (None, None, None)], encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")  # the BOM Excel writes

    summary = load_list(source.engine, "PARKINSON", path, TODAY)

    assert stored(source) == rows
    assert (summary.rows, summary.persons, summary.cases, summary.replaced) == (3, 3, 3, 0)
    assert str(summary) == "PARKINSON: loaded 3 rows (3 persons, 3 cases), replacing 0 earlier rows"


def test_comma_csv_loads_with_spaced_mixed_case_header(source: Source, tmp_path: Path) -> None:
    rows = good_rows(source)
    header = (" FNR ", "Case_ID", "Index_Date ")
    path = write_csv(tmp_path / "list.csv", rows, header=header, delimiter=",", newline="\n")

    load_list(source.engine, "PARKINSON", path, TODAY)

    assert stored(source) == rows


def test_parquet_loads(source: Source, tmp_path: Path) -> None:
    rows = good_rows(source)

    load_list(source.engine, "PARKINSON", write_parquet(tmp_path / "list.parquet", rows), TODAY)

    assert stored(source) == rows


def test_parquet_from_a_filtered_pandas_frame_loads(source: Source, tmp_path: Path) -> None:
    """pandas writes datetime64 dates as timestamps and a filtered frame's index as a column."""
    rows = good_rows(source, 4)
    frame = pd.DataFrame(rows, columns=list(HEADER))
    frame["index_date"] = pd.to_datetime(frame["index_date"])
    frame.iloc[[0, 1, 3]].to_parquet(tmp_path / "list.parquet")
    assert "__index_level_0__" in pq.read_schema(tmp_path / "list.parquet").names

    load_list(source.engine, "PARKINSON", tmp_path / "list.parquet", TODAY)

    assert stored(source) == [rows[0], rows[1], rows[3]]


def test_norwegian_dates_and_empty_index_date_accepted(source: Source, tmp_path: Path) -> None:
    a, b = source.person(), source.person()
    path = write_csv(tmp_path / "list.csv", [(a, "C1", "05.03.2024"), (b, "C2", "")])

    load_list(source.engine, "PARKINSON", path, TODAY)

    assert stored(source) == [(a, "C1", "2024-03-05"), (b, "C2", None)]


def test_leading_zeros_of_fnr_preserved(source: Source, tmp_path: Path) -> None:
    number = source.person(date(1980, 5, 7))
    assert number.startswith("0")
    path = write_csv(tmp_path / "list.csv", [(number, "C1", "2024-01-01")])

    load_list(source.engine, "PARKINSON", path, TODAY)

    assert stored(source) == [(number, "C1", "2024-01-01")]


def test_a_new_list_replaces_only_that_registers_rows(
    source: Source, tmp_path: Path, earlier: list[Row]
) -> None:
    other = [(source.person(), "K-9", "2022-12-01")]
    load_list(source.engine, "KARDIO", write_csv(tmp_path / "other.csv", other), TODAY)
    new = good_rows(source, 1)

    summary = load_list(source.engine, "PARKINSON", write_csv(tmp_path / "new.csv", new), TODAY)

    assert summary.replaced == len(earlier)
    assert stored(source) == new
    assert stored(source, "KARDIO") == other


def test_concurrent_loads_leave_exactly_one_list(source: Source, tmp_path: Path) -> None:
    """Without the table lock, PostgreSQL kept both lists (each DELETE missed the other's rows)."""
    lists = [[(source.person(), f"{name}{i}", "2024-01-01") for i in range(1000)] for name in "AB"]
    paths = [write_csv(tmp_path / f"{i}.csv", rows) for i, rows in enumerate(lists)]
    start = threading.Barrier(len(paths))
    errors: list[BaseException] = []

    def load(path: Path) -> None:
        start.wait()
        try:
            load_list(source.engine, "PARKINSON", path, TODAY)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(stored(source)) in [sorted(rows) for rows in lists]


# --- refused files -------------------------------------------------------------------------


def test_one_invalid_number_refuses_the_whole_file_without_naming_numbers(
    source: Source, tmp_path: Path, earlier: list[Row]
) -> None:
    rows = good_rows(source)
    good = rows[1][0]
    bad = good[:-1] + str((int(good[-1]) + 1) % 10)
    assert not is_valid(bad)
    rows[1] = (bad, *rows[1][1:])

    rejected = refused(source, write_csv(tmp_path / "list.csv", rows), earlier)

    assert [(p.row, p.column) for p in rejected.problems] == [(3, "fnr")]
    assert "row 3, fnr: not a valid identity number" in str(rejected)
    report = str(rejected) + repr(rejected.problems)
    for number, case_id, _ in rows:
        assert number not in report
        assert case_id not in report


def test_future_date_refused(source: Source, tmp_path: Path, earlier: list[Row]) -> None:
    rows = [(source.person(), "C1", "2024-06-01"), (source.person(), "C2", "2024-06-02")]

    rejected = refused(source, write_csv(tmp_path / "list.csv", rows), earlier)

    assert [(p.row, p.column) for p in rejected.problems] == [(3, "index_date")]
    assert "in the future" in str(rejected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2024-02-30", "not a real date"),
        ("2024-1-5", "not a date"),
        ("01/02/2024", "not a date"),
        ("01.02.24", "not a date"),
        ("2024-01-01 10:00", "not a date"),
    ],
)
def test_invalid_date_refused(
    source: Source, tmp_path: Path, earlier: list[Row], value: str, reason: str
) -> None:
    path = write_csv(tmp_path / "list.csv", [(source.person(), "C1", value)])

    rejected = refused(source, path, earlier)

    assert [(p.row, p.column) for p in rejected.problems] == [(2, "index_date")]
    assert reason in rejected.problems[0].reason


def test_duplicate_case_ids_and_repeated_rows_refused(
    source: Source, tmp_path: Path, earlier: list[Row]
) -> None:
    a, b = source.person(), source.person()
    rows = [(a, "C1", "2024-01-01"), (b, "C1", "2024-01-02"), (a, "C1", "01.01.2024")]

    rejected = refused(source, write_csv(tmp_path / "list.csv", rows), earlier)

    assert [str(p) for p in rejected.problems] == [
        "row 3, case_id: the same case id as row 2",
        "row 4: repeats row 2",
    ]


def test_the_database_refuses_a_second_row_of_one_case_whoever_writes_it(
    source: Source,
) -> None:
    """load-list checks its file; the unique index (sql/schema.sql) stops other writers."""
    first, second = source.person(), source.person()
    source.listed("NKR", first, "C1", "2024-01-01")
    source.listed("OTHER", second, "C1", "2024-01-01")  # another register's C1 is its own
    with pytest.raises(IntegrityError):
        source.listed("NKR", second, "C1", "2024-02-01")


def test_missing_column_refused(source: Source, tmp_path: Path, earlier: list[Row]) -> None:
    path = write_csv(tmp_path / "list.csv", [(source.person(), "C1")], header=("fnr", "case_id"))

    rejected = refused(source, path, earlier)

    assert "missing column(s) index_date" in str(rejected)


def test_extra_column_refused_and_named(source: Source, tmp_path: Path, earlier: list[Row]) -> None:
    path = write_csv(
        tmp_path / "list.csv",
        [(source.person(), "C1", "2024-01-01", "Ola Nordmann", "")],
        header=(*HEADER, "name", ""),
    )

    rejected = refused(source, path, earlier)

    assert "column(s) not accepted: 'name', column 5 (no name)" in str(rejected)
    assert "Ola" not in str(rejected)


def test_tab_delimited_refused_clearly(source: Source, tmp_path: Path, earlier: list[Row]) -> None:
    path = write_csv(tmp_path / "list.tsv", good_rows(source), delimiter="\t")

    rejected = refused(source, path, earlier)

    assert "expected columns fnr, case_id, index_date separated by ';' or ','" in str(rejected)
    assert "tabs" in str(rejected)


def test_header_missing_refused_without_quoting_the_first_row(
    source: Source, tmp_path: Path, earlier: list[Row]
) -> None:
    rows = good_rows(source)
    path = tmp_path / "list.csv"
    path.write_text("\n".join(";".join(row) for row in rows), encoding="utf-8")

    rejected = refused(source, path, earlier)

    assert "row 1 must be the header" in str(rejected)
    assert rows[0][0] not in str(rejected) and rows[0][1] not in str(rejected)


@pytest.mark.parametrize("content", [b"", b"\r\n", b"fnr;case_id;index_date\r\n;;\r\n"])
def test_empty_file_refused(
    source: Source, tmp_path: Path, earlier: list[Row], content: bytes
) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(content)

    rejected = refused(source, path, earlier)

    assert "no rows" in str(rejected)


def test_latin1_file_refused_clearly(source: Source, tmp_path: Path, earlier: list[Row]) -> None:
    rows = [(source.person(), "C1", "2024-01-01"), (source.person(), "Tromsø-2", "2024-01-01")]
    path = write_csv(tmp_path / "list.csv", rows, encoding="latin-1")

    rejected = refused(source, path, earlier)

    assert "not UTF-8" in str(rejected)
    assert "line 3" in str(rejected)


def test_excel_workbook_refused_clearly(source: Source, tmp_path: Path, earlier: list[Row]) -> None:
    path = tmp_path / "list.xlsx"
    path.write_bytes(b"PK\x03\x04" + bytes(100))

    assert "Excel workbook" in str(refused(source, path, earlier))


@pytest.mark.parametrize("cell", ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\t=1"])
def test_formula_cell_refused(
    source: Source, tmp_path: Path, earlier: list[Row], cell: str
) -> None:
    path = write_csv(tmp_path / "list.csv", [(source.person(), cell, "2024-01-01")])

    rejected = refused(source, path, earlier)

    assert [(p.row, p.column) for p in rejected.problems] == [(2, "case_id")]
    assert "formula" in str(rejected)


def test_case_id_length_and_presence(source: Source, tmp_path: Path, earlier: list[Row]) -> None:
    rows = [
        (source.person(), "x" * 64, "2024-01-01"),
        (source.person(), "x" * 65, "2024-01-01"),
        (source.person(), " ", "2024-01-01"),
    ]

    rejected = refused(source, write_csv(tmp_path / "list.csv", rows), earlier)

    assert [str(p) for p in rejected.problems] == [
        "row 3, case_id: longer than 64 characters",
        "row 4, case_id: missing",
    ]


def test_report_is_capped(source: Source, tmp_path: Path, earlier: list[Row]) -> None:
    rows = [(source.person(), f"C{i}", "2024-02-30") for i in range(MAX_REPORTED_PROBLEMS + 7)]

    rejected = refused(source, write_csv(tmp_path / "list.csv", rows), earlier)

    lines = str(rejected).splitlines()
    assert len(rejected.problems) == MAX_REPORTED_PROBLEMS + 7
    assert lines[0].startswith("list refused, nothing loaded: row 2, index_date: not a real date")
    assert lines[-1] == "  ... and 7 more"
    assert len(lines) == 1 + MAX_REPORTED_PROBLEMS + 1


def test_parquet_with_numeric_fnr_refused(
    source: Source, tmp_path: Path, earlier: list[Row]
) -> None:
    path = write_parquet(tmp_path / "list.parquet", good_rows(source, 2), fnr_type=pa.int64())

    rejected = refused(source, path, earlier)

    assert {p.column for p in rejected.problems} == {"fnr"}
    assert "as text" in str(rejected)


def test_wrong_register_code_refused(source: Source, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "list.csv", good_rows(source, 1))

    with pytest.raises(ListRejected, match=r"\[A-Z0-9_\]\+"):
        load_list(source.engine, "parkinson; DROP TABLE x", path, TODAY)


# --- property: any list of valid rows round-trips -------------------------------------------


@st.composite
def identity_numbers(draw: st.DrawFn) -> str:
    born = draw(st.dates(date(1900, 1, 1), TODAY))
    number = synthetic(
        born,
        draw(st.sampled_from(individual_ranges(born.year)[0])),
        d_number=draw(st.booleans()),
    )
    assume(number is not None)
    return number


case_ids = (
    st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), min_size=1, max_size=64)
    .map(str.strip)
    .filter(lambda case_id: case_id and not case_id.startswith(("=", "+", "-", "@")))
)
index_dates = st.none() | st.dates(date(1990, 1, 1), TODAY).map(date.isoformat)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    persons=st.lists(identity_numbers(), min_size=1, max_size=5),
    cases=st.lists(
        st.tuples(case_ids, index_dates), min_size=1, max_size=20, unique_by=lambda c: c[0]
    ),
    form=st.sampled_from(["semicolon", "comma", "parquet"]),
    norwegian_dates=st.booleans(),
    bom=st.booleans(),
)
def test_any_valid_list_round_trips(
    source: Source,
    tmp_path: Path,
    persons: list[str],
    cases: list[tuple[str, str | None]],
    form: str,
    norwegian_dates: bool,
    bom: bool,
) -> None:
    rows = [(persons[i % len(persons)], case_id, day) for i, (case_id, day) in enumerate(cases)]
    if form == "parquet":
        path = write_parquet(tmp_path / "list.parquet", rows)
    else:
        shown = [
            (fnr, case_id, _norwegian(day) if norwegian_dates else day)
            for fnr, case_id, day in rows
        ]
        path = write_csv(
            tmp_path / "list.csv",
            shown,
            delimiter=";" if form == "semicolon" else ",",
            encoding="utf-8-sig" if bom else "utf-8",
        )

    summary = load_list(source.engine, "PARKINSON", path, TODAY)

    assert sorted(stored(source)) == sorted(rows)
    assert (summary.rows, summary.persons) == (len(rows), len(set(persons[: len(rows)])))


def _norwegian(day: str | None) -> str | None:
    return None if day is None else date.fromisoformat(day).strftime("%d.%m.%Y")
