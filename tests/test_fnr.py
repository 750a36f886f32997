"""Identity numbers: public vectors, every number series, dates, and scalar/vector agreement."""

from __future__ import annotations

import datetime
import doctest

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from etl import fnr

# python-stdnum's stdnum.no.fodselsnummer vectors and Skatteetaten's 2032 examples (DOMAIN.md).
STDNUM_VALID = ["15108695088", "26111593816", "31129956715"]
STDNUM_INVALID = ["15108695077", "26111593817"]
FROM_2032 = ["02013299997", "30108299920", "30108299939"]


def with_check_digits(first_nine: str, k1_remainder: int = 0) -> str | None:
    """Complete nine digits with check digits; k1_remainder > 0 gives a 2032-style K1."""
    k1 = (
        k1_remainder - sum(int(d) * w for d, w in zip(first_nine, fnr._K1_WEIGHTS, strict=False))
    ) % 11
    if k1 == 10:
        return None
    ten = first_nine + str(k1)
    k2 = -sum(int(d) * w for d, w in zip(ten, fnr._K2_WEIGHTS, strict=False)) % 11
    return None if k2 == 10 else ten + str(k2)


def number_for(ddmmyy: str, individual: str = "123") -> str:
    """A number with valid check digits for a date part, trying individual numbers upwards."""
    start = int(individual)
    for candidate in range(start, start + 50):
        number = with_check_digits(f"{ddmmyy}{candidate:03d}")
        if number is not None:
            return number
    raise AssertionError("no check digits found")


def test_doctests() -> None:
    assert doctest.testmod(fnr).failed == 0


@pytest.mark.parametrize("number", STDNUM_VALID + FROM_2032)
def test_public_valid_vectors(number: str) -> None:
    assert fnr.is_valid(number)
    assert fnr.validate(number) == number


@pytest.mark.parametrize("number", STDNUM_INVALID)
def test_public_invalid_vectors(number: str) -> None:
    assert not fnr.is_valid(number)


def test_2032_first_check_digit_remainders_one_to_three_only() -> None:
    first_nine = "150886123"
    assert [fnr.is_valid(with_check_digits(first_nine, r) or "") for r in range(4)] == [True] * 4
    assert not any(fnr.is_valid(with_check_digits(first_nine, r) or "") for r in range(4, 11))


@pytest.mark.parametrize(
    ("ddmmyy", "series"),
    [
        ("150886", "fødselsnummer"),
        ("550886", "D-number: day + 40"),
        ("155086", "H-number / NAV test: month + 40"),
        ("159086", "synthetic: month + 80"),
        ("559086", "synthetic D-number: day + 40 and month + 80"),
        ("719286", "D-number 31st, synthetic December"),
    ],
)
def test_number_series_are_valid(ddmmyy: str, series: str) -> None:
    assert fnr.is_valid(number_for(ddmmyy)), series


@pytest.mark.parametrize(
    "ddmmyy",
    [
        "310286",  # 31 February
        "300286",  # 30 February
        "311186",  # 31 November
        "151386",  # month 13
        "155386",  # month 13 after the H offset
        "159386",  # month 13 after the synthetic offset
        "150086",  # month 0
        "154086",  # month 40: no offset applies
        "158086",  # month 80
        "156586",  # month 65: +60 is no series
        "001086",  # day 0
        "401086",  # day 40: the D offset starts at 41
        "721086",  # day 32 after the D offset
        "321086",  # day 32
    ],
)
def test_impossible_dates_are_invalid(ddmmyy: str) -> None:
    number = number_for(ddmmyy)
    assert not fnr.is_valid(number)
    with pytest.raises(fnr.InvalidFnr, match="date"):
        fnr.validate(number)


@pytest.mark.parametrize(
    ("ddmmyy", "individual", "valid"),
    [
        ("290296", "100", True),  # 1996
        ("290297", "100", False),  # 1997
        ("290200", "100", False),  # 1900: not a leap year
        ("290200", "600", True),  # 2000
        ("290204", "600", True),  # 2004
        ("290281", "950", False),  # 1981
        ("290280", "950", True),  # 1980
        ("290256", "600", True),  # 1856
        ("290255", "600", False),  # 1855
        ("290244", "800", True),  # no rule fits: 1944 or 2044, both leap years
        ("290245", "800", False),
        ("698200", "600", True),  # synthetic D-number, 29 February 2000
        ("698200", "100", False),  # synthetic D-number, 29 February 1900
    ],
)
def test_29_february(ddmmyy: str, individual: str, valid: bool) -> None:
    number = number_for(ddmmyy, individual)
    assert number[6] == individual[0], "the century digit must not change while searching"
    assert fnr.is_valid(number) is valid


@pytest.mark.parametrize("first", ["8", "9"])
def test_fh_numbers_need_only_check_digits(first: str) -> None:
    number = number_for(f"{first}99999")  # no date at all
    assert fnr.is_valid(number)
    broken = number[:10] + str((int(number[10]) + 1) % 10)
    assert not fnr.is_valid(broken)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("15108695077", "first check digit"),
        ("26111593817", "second check digit"),
        ("1510869508", "11 digits"),
        ("151086950888", "11 digits"),
        ("1510869508a", "only the digits"),
        ("1510869508\u0663", "only the digits"),  # Arabic-Indic digit three
        (None, "text"),
        (15108695088, "text"),
        (number_for("310286"), "date"),
    ],
)
def test_validate_says_what_failed_and_never_shows_the_number(value: object, reason: str) -> None:
    with pytest.raises(fnr.InvalidFnr) as caught:
        fnr.validate(value)  # type: ignore[arg-type]
    message = str(caught.value)
    assert reason in message
    if isinstance(value, str | int):
        assert str(value) not in message
        assert str(value)[:6] not in message, "not even the date part"
    assert isinstance(caught.value, ValueError)


def test_synthetic_number_structure() -> None:
    number = fnr.synthetic(datetime.date(1986, 10, 15), 123)
    assert number is not None
    assert number[:9] == "159086123"
    assert fnr.is_valid(number)
    d_number = fnr.synthetic(datetime.date(1986, 10, 15), 123, d_number=True)
    assert d_number is not None
    assert d_number[:9] == "559086123"
    assert fnr.is_valid(d_number)


def test_synthetic_none_exactly_when_no_check_digits() -> None:
    birth = datetime.date(2000, 2, 29)
    results = {i: fnr.synthetic(birth, i) for i in range(500, 1000)}
    for individual, number in results.items():
        expected = with_check_digits(f"298200{individual:03d}")
        assert number == expected
    assert any(number is None for number in results.values())


def test_synthetic_refuses_an_individual_number_of_another_century() -> None:
    with pytest.raises(ValueError, match="does not encode"):
        fnr.synthetic(datetime.date(2000, 2, 29), 123)
    with pytest.raises(ValueError, match="does not encode"):
        fnr.synthetic_array(np.array(["2005-01-01"], dtype="datetime64[D]"), np.array([10]))


centuries = st.dates(datetime.date(1854, 1, 1), datetime.date(2039, 12, 31)).flatmap(
    lambda birth: st.tuples(
        st.just(birth),
        st.sampled_from(fnr.individual_ranges(birth.year)).flatmap(
            lambda r: st.integers(r.start, r.stop - 1)
        ),
        st.booleans(),
    )
)


@settings(max_examples=400, deadline=None)
@given(centuries)
@example((datetime.date(2000, 2, 29), 500, False))
@example((datetime.date(1900, 2, 28), 0, True))
def test_synthetic_always_valid(case: tuple[datetime.date, int, bool]) -> None:
    birth, individual, d_number = case
    number = fnr.synthetic(birth, individual, d_number=d_number)
    vector = fnr.synthetic_array(
        np.array([birth], dtype="datetime64[D]"), np.array([individual]), np.array([d_number])
    )
    assert vector[0] == (number or "")
    if number is None:
        return
    assert fnr.is_valid(number)
    assert int(number[2]) >= 8, "month + 80"
    assert int(number[0]) >= 4 if d_number else int(number[0]) <= 3


# Strategies for the agreement test: mostly near-valid numbers, so that every rule
# (check digits, each date offset, every century, FH) is reached, not only the length check.
digit_strings = st.text(alphabet="0123456789", min_size=11, max_size=11)
date_parts = st.tuples(
    st.integers(0, 99),  # day incl. D offset and junk
    st.sampled_from([0, 1, 2, 3, 4, 6, 9, 11, 12, 13, 40, 41, 42, 52, 53, 80, 81, 82, 92, 93, 99]),
    st.integers(0, 99),
    st.integers(0, 999),
    st.integers(0, 3),
).map(lambda t: with_check_digits(f"{t[0]:02d}{t[1]:02d}{t[2]:02d}{t[3]:03d}", t[4]))
leap_days = st.tuples(
    st.sampled_from(["29", "69", "28", "30"]),
    st.sampled_from(["02", "42", "82"]),
    st.sampled_from([0, 4, 40, 44, 54, 56, 96, 97, 39, 36]),
    st.integers(0, 999),
).map(lambda t: with_check_digits(f"{t[0]}{t[1]}{t[2]:02d}{t[3]:03d}"))
mutated = st.tuples(st.sampled_from(STDNUM_VALID + FROM_2032), st.integers(0, 10), st.text()).map(
    lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]
)
values = st.one_of(
    digit_strings,
    date_parts,
    leap_days,
    mutated,
    st.none(),
    st.text(max_size=14),
    st.text(alphabet="0123456789 -.a\u0663", min_size=9, max_size=13),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(values, max_size=60))
def test_is_valid_array_agrees_with_is_valid(batch: list[str | None]) -> None:
    expected = np.array([fnr.is_valid(v) for v in batch], dtype=bool)  # type: ignore[arg-type]
    from_list = fnr.is_valid_array(batch)  # type: ignore[arg-type]
    from_arrow = fnr.is_valid_array(pa.array(batch, type=pa.string()))
    assert from_list.dtype == bool
    assert from_list.tolist() == expected.tolist()
    assert from_arrow.tolist() == expected.tolist()


@settings(max_examples=100, deadline=None)
@given(st.lists(digit_strings, min_size=1, max_size=40), st.integers(0, 39))
def test_is_valid_array_on_slices_and_chunks(batch: list[str], start: int) -> None:
    """Arrow arrays from Parquet come sliced, chunked or dictionary-encoded."""
    expected = [fnr.is_valid(v) for v in batch]
    array = pa.array(["x", *batch, None], type=pa.string())
    assert fnr.is_valid_array(array.slice(1, len(batch))).tolist() == expected
    assert (
        fnr.is_valid_array(pa.chunked_array([batch[:start], batch[start:]], pa.string())).tolist()
        == expected
    )
    assert fnr.is_valid_array(pa.array(batch).dictionary_encode()).tolist() == expected
    assert fnr.is_valid_array(pa.array(batch, type=pa.large_string())).tolist() == expected


def test_is_valid_array_edge_inputs() -> None:
    assert fnr.is_valid_array([]).tolist() == []
    assert fnr.is_valid_array(pa.array([None, None])).tolist() == [False, False]
    assert fnr.is_valid_array(pa.array([15108695088])).tolist() == [False]
    assert fnr.is_valid_array(np.array(STDNUM_VALID)).tolist() == [True] * 3
    assert fnr.is_valid_array([15108695088, "15108695088", "\ud800" * 11]).tolist() == [  # type: ignore[list-item]
        False,
        True,
        False,
    ]


def test_is_valid_array_on_many_synthetic_numbers() -> None:
    """The bulk path of the synthetic data: every generated number is valid, fast."""
    rng = np.random.default_rng(7)
    births = np.datetime64("1930-01-01") + rng.integers(0, 25_000, 200_000)
    numbers = fnr.synthetic_array(births, rng.integers(0, 500, 200_000))
    generated = numbers[numbers != ""]
    assert len(generated) > 150_000
    assert fnr.is_valid_array(pa.array(generated)).all()
    sample = generated[:2000].tolist()
    assert all(fnr.is_valid(v) for v in sample)
