"""Norwegian identity numbers: fødselsnummer, D-, H-, FH- and synthetic numbers.

A number has eleven digits, ``DDMMYY III K1 K2``:

* ``DDMMYY`` is the birth date. Number series move it out of the range of real dates so
  that they can never collide with a fødselsnummer:

  - D-numbers (foreign nationals) add 4 to the first digit: day + 40;
  - H-numbers (help numbers) and NAV's test numbers add 4 to the third digit: month + 40;
  - Skatteetaten's synthetic test population adds 8 to the third digit: month + 80.
    Synthetic numbers can be combined with the D-number offset (day + 40, month + 80).

  FH-numbers (felles hjelpenummer) start with 8 or 9 and carry no date at all.
* ``III`` is the individual number. Until 2032 it also encoded the century of the birth
  year (000-499: 1900-1999, 500-749: 1854-1899, 500-999: 2000-2039, 900-999: 1940-1999)
  and, by its last digit, the sex (odd: male).
* ``K1`` and ``K2`` are mod-11 check digits. With weights 3,7,6,1,8,9,4,5,2,1 over the
  first ten digits the sum is 0 mod 11; numbers issued from 2032 may also give 1, 2 or 3,
  because there were not enough numbers left per birth date. With weights
  5,4,3,2,7,6,5,4,3,2,1 over all eleven digits the sum is 0 mod 11.

The rules here are those of CONTRACT.md section 5. They are deliberately wider than
python-stdnum's ``stdnum.no.fodselsnummer``, which rejects 2032 numbers and synthetic
numbers, so that library serves as a reference for the test vectors only.

Deliveries check millions of numbers, so besides the scalar ``is_valid`` / ``validate``
pair there is ``is_valid_array``, the same rule in numpy. Error messages never contain the
number: they end up in logs and reports, where identity numbers must not appear.

>>> is_valid("15908650015")
True
>>> is_valid("15908650025")
False
>>> is_valid("30908210065")  # first check sum gives remainder 1: valid from 2032
True
>>> validate("26911540045")
Traceback (most recent call last):
    ...
etl.fnr.InvalidFnr: the second check digit does not match
>>> synthetic(datetime.date(1986, 10, 15), 123)
'15908612318'
>>> is_valid_array(["15908650015", None, "1590865001"]).tolist()
[True, False, False]
"""

from __future__ import annotations

import calendar
import datetime
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "InvalidFnr",
    "individual_ranges",
    "is_valid",
    "is_valid_array",
    "synthetic",
    "synthetic_array",
    "validate",
]

LENGTH = 11
_K1_WEIGHTS = (3, 7, 6, 1, 8, 9, 4, 5, 2, 1)
_K2_WEIGHTS = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2, 1)
# From 2032 the first check sum may leave these remainders (Skatteetaten's new rule).
_K1_REMAINDERS = (0, 1, 2, 3)
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int16)
_D_NUMBER_DAY = 40
_H_NUMBER_MONTH = 40
_SYNTHETIC_MONTH = 80


class InvalidFnr(ValueError):
    """The value is not a valid identity number. The message names the failed check only."""


def _century_year(yy: int, individual: int) -> int | None:
    """The four-digit birth year the individual number encodes, or None if no rule fits."""
    if individual <= 499:
        return 1900 + yy
    if individual <= 749 and yy >= 54:
        return 1800 + yy
    if yy <= 39:
        return 2000 + yy
    if individual >= 900:
        return 1900 + yy
    return None


def _date_exists(day: int, month: int, yy: int, individual: int) -> bool:
    """Whether day.month is a real date in the year the number encodes.

    Where no century rule fits (the individual number was issued after 2031, or is
    unusual), either 19YY or 20YY will do: only 29 February can tell them apart.
    """
    if not 1 <= month <= 12 or day < 1:
        return False
    year = _century_year(yy, individual)
    years = (1900 + yy, 2000 + yy) if year is None else (year,)
    return any(day <= calendar.monthrange(y, month)[1] for y in years)


def _without_offsets(number: str) -> tuple[int, int]:
    """Day and month after removing the D-number, H-number and synthetic offsets."""
    day = int(number[0:2])
    month = int(number[2:4])
    if day > _D_NUMBER_DAY:
        day -= _D_NUMBER_DAY
    if month > _SYNTHETIC_MONTH:
        month -= _SYNTHETIC_MONTH
    elif month > _H_NUMBER_MONTH:
        month -= _H_NUMBER_MONTH
    return day, month


def _weighted(digits: str, weights: Sequence[int]) -> int:
    return sum(int(d) * w for d, w in zip(digits, weights, strict=True))


def validate(value: str) -> str:
    """Return the number unchanged if it is valid; raise InvalidFnr saying which check failed.

    >>> validate("31929956004")
    '31929956004'
    >>> validate("31829956004")
    Traceback (most recent call last):
        ...
    etl.fnr.InvalidFnr: the first check digit does not match
    """
    if not isinstance(value, str):
        raise InvalidFnr(f"an identity number is text, not {type(value).__name__}")
    if len(value) != LENGTH:
        raise InvalidFnr(f"an identity number has 11 digits, this value has {len(value)}")
    if not (value.isascii() and value.isdigit()):
        raise InvalidFnr("an identity number contains only the digits 0-9")
    if _weighted(value[:10], _K1_WEIGHTS) % 11 not in _K1_REMAINDERS:
        raise InvalidFnr("the first check digit does not match")
    if _weighted(value, _K2_WEIGHTS) % 11 != 0:
        raise InvalidFnr("the second check digit does not match")
    if value[0] in "89":  # FH-number: no date part
        return value
    day, month = _without_offsets(value)
    if not _date_exists(day, month, int(value[4:6]), int(value[6:9])):
        raise InvalidFnr("the date part is not a real date (after removing D/H/synthetic offsets)")
    return value


def is_valid(value: str) -> bool:
    """Whether value is a valid identity number (CONTRACT.md section 5).

    >>> is_valid("26911540044"), is_valid("26911540045"), is_valid("02083299188")
    (True, False, True)
    """
    try:
        validate(value)
    except InvalidFnr:
        return False
    return True


def individual_ranges(year: int) -> tuple[range, ...]:
    """The individual numbers that encode a birth year's century (empty outside 1854-2039).

    >>> individual_ranges(1975)
    (range(0, 500), range(900, 1000))
    """
    ranges: list[range] = []
    if 1854 <= year <= 1899:
        ranges.append(range(500, 750))
    if 1900 <= year <= 1999:
        ranges.append(range(0, 500))
    if 1940 <= year <= 1999:
        ranges.append(range(900, 1000))
    if 2000 <= year <= 2039:
        ranges.append(range(500, 1000))
    return tuple(ranges)


def _check_digits(first_nine: str) -> str | None:
    """The classic check digits (remainder 0) for nine digits, or None where K1 or K2 is 10."""
    k1 = -_weighted(first_nine, _K1_WEIGHTS[:9]) % 11
    if k1 == 10:
        return None
    k2 = -_weighted(first_nine + str(k1), _K2_WEIGHTS[:10]) % 11
    if k2 == 10:
        return None
    return f"{k1}{k2}"


def synthetic(birth: datetime.date, individual: int, *, d_number: bool = False) -> str | None:
    """The synthetic (month + 80) number for a birth date and individual number.

    Returns None when that individual number has no check digits (K1 or K2 would be 10):
    the caller picks another individual number, as the issuer would. The individual number
    must belong to the birth year's century (``individual_ranges``), otherwise the number
    would decode to another birth year (29 February 2000 with 123 would mean 1900, which
    has no 29 February). ``d_number=True`` adds the D-number offset to the day as well.

    >>> synthetic(datetime.date(2000, 2, 29), 500)
    '29820050043'
    """
    if not any(individual in r for r in individual_ranges(birth.year)):
        raise ValueError(f"individual number {individual} does not encode the year {birth.year}")
    day = birth.day + (_D_NUMBER_DAY if d_number else 0)
    month = birth.month + _SYNTHETIC_MONTH
    first_nine = f"{day:02d}{month:02d}{birth.year % 100:02d}{individual:03d}"
    check = _check_digits(first_nine)
    return None if check is None else first_nine + check


def _encodes_year(year: np.ndarray, individual: np.ndarray) -> np.ndarray:
    """Vectorised ``individual in individual_ranges(year)``."""
    return (
        ((year >= 1854) & (year <= 1899) & (individual >= 500) & (individual <= 749))
        | ((year >= 1900) & (year <= 1999) & (individual <= 499))
        | ((year >= 1940) & (year <= 1999) & (individual >= 900))
        | ((year >= 2000) & (year <= 2039) & (individual >= 500))
    )


def _civil_from_days(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Year, month, day of days since 1970-01-01 (H. Hinnant's algorithm).

    Integer arithmetic is several times faster than numpy's datetime64[Y]/[M] casts.
    """
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    return year, month, day


def synthetic_array(
    birth: np.ndarray, individual: np.ndarray, d_number: np.ndarray | bool = False
) -> np.ndarray:
    """``synthetic`` for many persons at once, for bulk data generation.

    birth is datetime64[D], individual integers, d_number a boolean (array). Returns a
    fixed-width string array with "" where the individual number has no check digits.
    Raises ValueError if any individual number does not encode its birth year's century.
    """
    # int32 arithmetic: integer division is much faster than in int64, and days fit.
    days_since_epoch = np.asarray(birth, dtype="datetime64[D]").astype(np.int32)
    individual = np.asarray(individual, dtype=np.int32)
    year, month, day = _civil_from_days(days_since_epoch)
    if not _encodes_year(year, individual).all():
        raise ValueError("an individual number does not encode its birth year's century")
    day = day + np.where(d_number, _D_NUMBER_DAY, 0)
    month = month + _SYNTHETIC_MONTH
    yy = year % 100
    digits = np.empty((len(individual), LENGTH), dtype=np.uint8)
    for column, part in enumerate((day, month, yy)):
        digits[:, 2 * column] = part // 10
        digits[:, 2 * column + 1] = part % 10
    digits[:, 6] = individual // 100
    digits[:, 7] = individual // 10 % 10
    digits[:, 8] = individual % 10
    k1 = -_weighted_array(digits, _K1_WEIGHTS[:9]) % 11
    digits[:, 9] = k1
    k2 = -_weighted_array(digits, _K2_WEIGHTS[:10]) % 11
    digits[:, 10] = k2
    text = (digits.astype(np.uint32) + ord("0")).view(f"U{LENGTH}").ravel()
    return np.where((k1 == 10) | (k2 == 10), "", text)


def _as_string_array(values: pa.Array | pa.ChunkedArray | Sequence[str]) -> pa.Array:
    """An Arrow string array; anything that cannot be a number at all becomes null.

    Python sequences are pre-filtered to ASCII strings of the right length, which also
    keeps text Arrow cannot encode (lone surrogates) away from it.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            return values
        return pa.nulls(len(values), pa.string())
    candidates = [
        v if isinstance(v, str) and len(v) == LENGTH and v.isascii() else None for v in values
    ]
    return pa.array(candidates, type=pa.string())


def _digit_matrix(numbers: pa.Array) -> np.ndarray:
    """An (n, 11) uint8 matrix of the digits of n strings that are all exactly 11 digits."""
    numbers = numbers.cast(pa.string())
    n = len(numbers)
    _validity, offsets, data = numbers.buffers()
    start = int(np.frombuffer(offsets, dtype=np.int32, count=1, offset=4 * numbers.offset)[0])
    chars = np.frombuffer(data, dtype=np.uint8, count=LENGTH * n, offset=start)
    return (chars - ord("0")).reshape(n, LENGTH)


def _weighted_array(digits: np.ndarray, weights: Sequence[int]) -> np.ndarray:
    """Column-wise weighted sums in int16: no (n, 11) int64 temporaries for millions of rows."""
    total = np.zeros(len(digits), dtype=np.int16)
    for column, weight in enumerate(weights):
        total += digits[:, column].astype(np.int16) * weight
    return total


def _dates_exist(digits: np.ndarray) -> np.ndarray:
    """Vectorised ``_date_exists`` after ``_without_offsets``.

    The century rules only matter for 29 February, and 19YY, 20YY and 18YY (YY >= 54) are
    leap years exactly when YY is divisible by 4, except 1900. YY = 00 means 1900 only for
    individual numbers 000-499; otherwise 2000 (a rule or the either-century fallback).
    """
    d = digits[:, :9].astype(np.int16)
    day = d[:, 0] * 10 + d[:, 1]
    day = np.where(day > _D_NUMBER_DAY, day - _D_NUMBER_DAY, day)
    month = d[:, 2] * 10 + d[:, 3]
    month = np.where(
        month > _SYNTHETIC_MONTH,
        month - _SYNTHETIC_MONTH,
        np.where(month > _H_NUMBER_MONTH, month - _H_NUMBER_MONTH, month),
    )
    yy = d[:, 4] * 10 + d[:, 5]
    leap = (yy % 4 == 0) & ((yy != 0) | (d[:, 6] >= 5))
    month_ok = (month >= 1) & (month <= 12)
    days_in_month = _DAYS_IN_MONTH[np.where(month_ok, month, 0)] + ((month == 2) & leap)
    return month_ok & (day >= 1) & (day <= days_in_month)


def is_valid_array(values: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """``is_valid`` for every element, vectorised with numpy; nulls and non-text are False.

    >>> import pyarrow as pa
    >>> is_valid_array(pa.array(["31129956715", "31129956716", "81234567890"])).tolist()
    [True, False, False]
    """
    numbers = _as_string_array(values)
    shaped = pc.fill_null(
        pc.and_(pc.equal(pc.binary_length(numbers), LENGTH), pc.ascii_is_decimal(numbers)), False
    )
    result = shaped.to_numpy(zero_copy_only=False).astype(bool)
    if not result.any():
        return result
    digits = _digit_matrix(pc.if_else(shaped, numbers, "0" * LENGTH))
    k1_ok = np.isin(_weighted_array(digits, _K1_WEIGHTS) % 11, _K1_REMAINDERS)
    k2_ok = _weighted_array(digits, _K2_WEIGHTS) % 11 == 0
    fh = digits[:, 0] >= 8
    return result & k1_ok & k2_ok & (fh | _dates_exist(digits))
