"""Register specs: the shipped ones load, and every kind of bad spec names file, key, value."""

from pathlib import Path

import pytest
import yaml

from etl.spec import SpecError, find_spec, load_spec, read_specs

REGISTERS = Path(__file__).resolve().parent.parent / "registers"

GOOD = {
    "code": "TEST",
    "name": "Test register",
    "delivery": "population",
    "legal_basis": "NPR-forskriften § 4-2",
    "priority": 2,
    "sources": ["NPR"],
    "selection": {"icd10": ["F20-F29", "!F25"], "min_age": 18, "sectors": ["PHV"]},
    "variables": ["fnr", "sex", "diagnoses"],
}


def write(folder: Path, document: dict, name: str = "test.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return path


def test_shipped_specs_load():
    folder = read_specs(REGISTERS)
    assert folder.errors == ()
    specs = folder.specs
    assert {"PHV", "PARKINSON", "NORKAR"} <= set(specs)
    assert specs["PHV"].delivery == "population"
    assert specs["PARKINSON"].delivery == "complement"
    assert specs["NORKAR"].delivery == "new_information"
    assert specs["NORKAR"].follow_up.window_days == 365
    assert specs["PHV"].selection.icd10.matches("F2000")
    assert not specs["PARKINSON"].selection.icd10.matches("G21")


def test_defaults_and_hash(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.reservations.registry_opt_out is True
    assert spec.reservations.no_fnr == "exclude"
    assert spec.lookback_days == 730
    assert len(spec.sha256) == 64
    assert spec.selection.sectors == ("PHV",)


def changed(path: str, value):
    """GOOD with one key (dotted path) set to value; value None deletes the key."""
    document = yaml.safe_load(yaml.safe_dump(GOOD))
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target[key]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return document


@pytest.mark.parametrize(
    ("key", "value", "named_key", "named_value"),
    [
        ("colour", "blue", "colour", "blue"),
        ("selection.icd9", ["250"], "selection.icd9", "250"),
        ("variables", ["fnr", "income"], "variables[1]", "income"),
        ("selection.icd10", ["F20", "F2;0"], "selection.icd10[1]", "F2;0"),
        ("selection.icd10", ["G20' OR '1'='1"], "selection.icd10[0]", "G20' OR '1'='1"),
        ("delivery", "everything", "delivery", "everything"),
        ("priority", 7, "priority", "7"),
        ("code", "test-1", "code", "test-1"),
        ("sources", ["NPR", "HELSENORGE"], "sources[1]", "HELSENORGE"),
        ("selection.sectors", ["XYZ"], "selection.sectors[0]", "XYZ"),
        ("selection.diagnosis_position", "first", "selection.diagnosis_position", "first"),
        ("selection.min_age", -1, "selection.min_age", "-1"),
        ("reservations", {"no_fnr": "ignore"}, "reservations.no_fnr", "ignore"),
        ("name", None, "name", "None"),
        ("follow_up", {"ncsp": ["NFQ19"], "window_days": 30}, "follow_up", "NFQ19"),
    ],
)
def test_bad_specs_name_file_key_and_value(tmp_path, key, value, named_key, named_value):
    path = write(tmp_path, changed(key, value))
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"'{named_key}'" in message
    assert named_value in message


def test_new_information_needs_follow_up(tmp_path):
    path = write(tmp_path, changed("delivery", "new_information"))
    with pytest.raises(SpecError, match=r"'follow_up'.*required"):
        load_spec(path)


def test_new_information_from_kpr_alone_is_refused_since_follow_ups_are_npr(tmp_path):
    document = changed("delivery", "new_information")
    document |= {
        "sources": ["KPR"],
        "follow_up": {"ncsp": ["NFQ19"], "window_days": 30},
    }
    path = write(tmp_path, document)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert str(path) in message
    assert "'sources'" in message and "KPR" in message and "NPR procedures" in message
    document["sources"] = ["NPR", "KPR"]
    assert load_spec(write(tmp_path, document)).follow_up is not None


def test_selection_must_select_from_the_sources(tmp_path):
    document = changed("selection", {"icpc2": ["P72"]})
    with pytest.raises(SpecError, match=r"'selection'.*selects no code"):
        load_spec(write(tmp_path, document))


def test_duplicate_yaml_keys_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(GOOD) + "code: OTHER\n", encoding="utf-8")
    with pytest.raises(SpecError, match="duplicate key 'code'"):
        load_spec(path)


def test_two_files_with_one_code_block_that_code_and_only_that(tmp_path):
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD, "b.yaml")
    write(tmp_path, changed("code", "OTHER"), "c.yaml")
    with pytest.raises(SpecError, match=r"b\.yaml: key 'code': value 'TEST'.*a\.yaml"):
        find_spec(tmp_path, "TEST")
    assert find_spec(tmp_path, "OTHER").code == "OTHER"
    folder = read_specs(tmp_path)
    assert set(folder.specs) == {"OTHER"}
    assert [e.path for e in folder.errors_for("population")] == [str(tmp_path / "b.yaml")]
    assert folder.errors_for("complement") == []


def test_a_broken_file_stops_only_its_own_register(tmp_path):
    """One typo must not stop every register's nightly delivery: each file is read on its
    own, and a broken file blocks the code it claims, read leniently where it can be."""
    write(tmp_path, GOOD, "test.yaml")
    write(tmp_path, changed("code", "OTHER") | {"colour": "blue"}, "other.yaml")
    complement = changed("code", "THIRD") | {"delivery": "complement"}
    write(tmp_path, complement | {"variables": ["fnr", "income"]}, "third.yaml")
    folder = read_specs(tmp_path)
    assert set(folder.specs) == {"TEST"}
    assert find_spec(tmp_path, "TEST").code == "TEST"
    with pytest.raises(SpecError, match=r"other\.yaml: key 'colour'"):
        find_spec(tmp_path, "OTHER")
    with pytest.raises(SpecError, match=r"third\.yaml: key 'variables\[1\]': value 'income'"):
        find_spec(tmp_path, "THIRD")
    assert [Path(e.path).name for e in folder.errors_for("population")] == ["other.yaml"]
    assert [Path(e.path).name for e in folder.errors_for("complement")] == ["third.yaml"]


def test_a_broken_copy_of_a_valid_spec_blocks_it(tmp_path):
    """Two files claiming one code, one of them broken: which was approved is unknown, so
    neither is used, and asking for the code gives the broken file's error."""
    write(tmp_path, GOOD, "test.yaml")
    write(tmp_path, changed("priority", 9), "test-new.yaml")
    with pytest.raises(SpecError, match=r"test-new\.yaml: key 'priority': value 9"):
        find_spec(tmp_path, "TEST")
    assert read_specs(tmp_path).specs == {}


def test_a_blocked_register_is_reported_to_its_own_delivery_type(tmp_path):
    """A copy claiming the code under another delivery type blocks the register; both
    types' runs must hear of it, or the blocked register would silently go undelivered."""
    write(tmp_path, GOOD, "test.yaml")
    write(tmp_path, changed("delivery", "complement") | {"colour": "blue"}, "copy.yaml")
    folder = read_specs(tmp_path)
    assert folder.specs == {}
    for delivery in ("population", "complement"):
        assert [Path(e.path).name for e in folder.errors_for(delivery)] == ["copy.yaml"]
    assert folder.errors_for("new_information") == []


def test_an_unreadable_file_concerns_every_delivery_type_and_is_named(tmp_path):
    write(tmp_path, GOOD, "test.yaml")
    (tmp_path / "broken.yaml").write_text("code: [unclosed\n", encoding="utf-8")
    folder = read_specs(tmp_path)
    assert set(folder.specs) == {"TEST"}
    for delivery in ("population", "complement", "new_information"):
        assert [Path(e.path).name for e in folder.errors_for(delivery)] == ["broken.yaml"]
    with pytest.raises(SpecError, match=r"'NOPE'.*known: TEST; broken\.yaml could not be read"):
        find_spec(tmp_path, "NOPE")


def test_unknown_register_code(tmp_path):
    write(tmp_path, GOOD)
    with pytest.raises(SpecError, match=r"'NOPE'.*known: TEST"):
        find_spec(tmp_path, "NOPE")


def test_unreadable_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("code: [unclosed\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"broken\.yaml.*not valid YAML"):
        load_spec(path)
