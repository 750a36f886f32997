"""Diagnosis and procedure codes: normalisation and the spec's code patterns.

Codes arrive as people type them (``g20``, ``F20.0 ``, ``i70.21``). A code is normalised by
upper-casing and keeping only A-Z and 0-9 (CONTRACT.md section 1), and every comparison is
between normalised codes.

A pattern in a register spec is one of
- a prefix, ``G20``: G20 and every code that starts with it;
- a range, ``F20-F29``: every code whose first characters fall between the bounds, inclusive
  (F20 .. F2999, not F30);
- either of these after ``!``, which removes matches.

Both forms reduce to one rule, used in SQL and here alike: the code's first len(low)
characters are >= low and its first len(high) characters are <= high (a prefix is the range
with low == high). The same rule in Python serves validation as an independent check of the
database's selection.

>>> normalise(" f20.0 ")
'F200'
>>> CodeSet.parse(["F20-F29", "!F25"]).matches("F2000")
True
>>> CodeSet.parse(["F20-F29", "!F25"]).matches("F251")
False
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_NOT_ALNUM = re.compile(r"[^A-Z0-9]")
# What a pattern may look like before normalisation: letters, digits, dots and spaces, an
# optional range, an optional leading '!'. Anything else (quotes, semicolons, SQL) is refused
# rather than silently stripped.
_RAW_PATTERN = re.compile(r"^\s*(!)?\s*([A-Za-z0-9. ]+?)\s*(?:-\s*([A-Za-z0-9. ]+?))?\s*$")

# The shape of a (normalised) code or code prefix per code system.
CODE_SHAPES: dict[str, re.Pattern[str]] = {
    "icd10": re.compile(r"^[A-Z]([0-9][0-9A-Z]{0,4})?$"),
    "icpc2": re.compile(r"^[A-Z]([0-9]{1,2})?$"),
    "ncsp": re.compile(r"^[A-Z]{1,3}([0-9]{1,2}[A-Z0-9]?)?$"),
    "ncrp": re.compile(r"^[A-Z]{1,3}([0-9]{1,2}[A-Z]?)?$"),
}


def normalise(code: str | None) -> str:
    """Upper-case and keep only A-Z and 0-9; None becomes the empty string."""
    if code is None:
        return ""
    return _NOT_ALNUM.sub("", code.upper())


class CodePatternError(ValueError):
    """A pattern that is not a code, a prefix or a range of codes."""


@dataclass(frozen=True, order=True)
class CodePattern:
    """One normalised pattern: the codes whose leading characters lie in [low, high]."""

    low: str
    high: str
    negate: bool = False

    def matches(self, code: str) -> bool:
        """Whether a normalised code falls in this pattern (ignoring negation)."""
        return code[: len(self.low)] >= self.low and code[: len(self.high)] <= self.high

    def __str__(self) -> str:
        body = self.low if self.low == self.high else f"{self.low}-{self.high}"
        return f"!{body}" if self.negate else body


def parse_pattern(raw: str, system: str) -> CodePattern:
    """Parse one spec pattern of a code system, refusing anything that is not a code."""
    match = _RAW_PATTERN.match(raw) if isinstance(raw, str) else None
    if match is None:
        raise CodePatternError(f"not a code pattern: {raw!r}")
    negate, low_raw, high_raw = match.groups()
    low = normalise(low_raw)
    high = normalise(high_raw) if high_raw is not None else low
    shape = CODE_SHAPES[system]
    for bound in {low, high}:
        if not shape.match(bound):
            raise CodePatternError(f"not a {system} code: {raw!r}")
    if low > high:
        raise CodePatternError(f"range runs backwards: {raw!r}")
    return CodePattern(low=low, high=high, negate=negate is not None)


@dataclass(frozen=True)
class CodeSet:
    """The patterns of one code system: a code matches an including pattern and no '!' one."""

    patterns: tuple[CodePattern, ...] = ()

    @classmethod
    def parse(cls, raws: Iterable[str], system: str = "icd10") -> CodeSet:
        return cls(tuple(parse_pattern(raw, system) for raw in raws))

    @property
    def includes(self) -> tuple[CodePattern, ...]:
        return tuple(p for p in self.patterns if not p.negate)

    @property
    def excludes(self) -> tuple[CodePattern, ...]:
        return tuple(p for p in self.patterns if p.negate)

    def __bool__(self) -> bool:
        return bool(self.includes)

    def matches(self, code: str) -> bool:
        """Whether a code (normalised here) is selected by this set."""
        code = normalise(code)
        return (
            bool(code)
            and any(p.matches(code) for p in self.includes)
            and not any(p.matches(code) for p in self.excludes)
        )
