"""Code normalisation and the spec's code patterns (CONTRACT.md sections 1 and 2)."""

import pytest

from etl.codes import CodePatternError, CodeSet, normalise, parse_pattern


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("g20", "G20"), ("F20.0 ", "F200"), ("i70.21", "I7021"), (" p 72", "P72"), (None, "")],
)
def test_normalise_keeps_upper_case_letters_and_digits(raw, expected):
    assert normalise(raw) == expected


def test_prefix_matches_code_and_everything_below_it():
    g20 = CodeSet.parse(["G20"])
    assert g20.matches("G20")
    assert g20.matches("G2031")
    assert g20.matches("g20.0")
    assert not g20.matches("G21")
    assert not g20.matches("G2")
    assert not g20.matches("")


def test_range_is_inclusive_of_both_bounds_and_their_subcodes():
    psychosis = CodeSet.parse(["F20-F29"])
    assert psychosis.matches("F20")
    assert psychosis.matches("F2000")
    assert psychosis.matches("F2999")
    assert psychosis.matches("f29.9")
    assert not psychosis.matches("F30")
    assert not psychosis.matches("F19")
    assert not psychosis.matches("F1")


def test_exclusion_removes_matches_of_an_including_pattern():
    codes = CodeSet.parse(["F20-F29", "!F25"])
    assert codes.matches("F200")
    assert not codes.matches("F25")
    assert not codes.matches("F251")
    assert codes.matches("F26")


def test_exclusion_alone_selects_nothing():
    assert not CodeSet.parse(["!F25"]).matches("F20")
    assert not CodeSet.parse(["!F25"])


def test_patterns_with_dots_and_case_are_normalised():
    assert parse_pattern("g23.1", "icd10").low == "G231"
    assert str(parse_pattern("! f20 - f29", "icd10")) == "!F20-F29"


def test_letter_ranges_for_procedure_chapters():
    vascular = CodeSet.parse(["PA-PH"], "ncsp")
    assert vascular.matches("PDG10")
    assert vascular.matches("PHB14")
    assert not vascular.matches("PJ")
    assert not vascular.matches("NFQ19")


@pytest.mark.parametrize(
    ("raw", "system"),
    [
        ("G20'; DROP TABLE npr_episode; --", "icd10"),
        ("F29-F20", "icd10"),
        ("20", "icd10"),
        ("", "icd10"),
        ("P7", "ncsp_unknown_system_guard"),
        ("PDZ12BX", "ncrp"),
        ("P720", "icpc2"),
        ("%", "icd10"),
    ],
)
def test_malformed_patterns_are_refused(raw, system):
    with pytest.raises((CodePatternError, KeyError)):
        parse_pattern(raw, system)


def test_code_shapes_of_each_system_are_accepted():
    assert parse_pattern("P72", "icpc2").low == "P72"
    assert parse_pattern("NHQ", "ncsp").low == "NHQ"
    assert parse_pattern("PDZ12B", "ncrp").low == "PDZ12B"
    assert parse_pattern("E10.5", "icd10").low == "E105"
