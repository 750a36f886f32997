"""Register specifications: ``registers/<code>.yaml`` loaded, validated and hashed.

A spec is what a register has been approved to receive (CONTRACT.md section 2). It is read
strictly: an unknown key, a variable outside the catalogue or a code that is not a code is an
error naming the file, the key and the value, because a typo in a spec must never widen or
silently narrow a disclosure.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from etl.codes import CodePatternError, CodeSet

DELIVERY_TYPES = ("population", "complement", "new_information")
SOURCES = ("NPR", "KPR")
SECTORS = ("SOM", "PHV", "PHB", "TSB", "AVT")

# The only variables a spec may ask for (CONTRACT.md section 2); a register cannot widen it.
VARIABLE_CATALOGUE = (
    "fnr",
    "sex",
    "birth_year",
    "municipality",
    "institution_id",
    "health_trust",
    "sector",
    "specialty",
    "care_level",
    "urgency",
    "start_date",
    "end_date",
    "discharge_status",
    "service_type",
    "main_diagnosis",
    "diagnoses",
    "procedures",
)

# A register code names folders and fills register_patient.registry (VARCHAR(32)).
REGISTRY_CODE = re.compile(r"[A-Z0-9_]{1,32}")
_TOP_KEYS = {
    "code",
    "name",
    "delivery",
    "legal_basis",
    "priority",
    "sources",
    "selection",
    "follow_up",
    "variables",
    "reservations",
    "lookback_days",
}
_REQUIRED = ("code", "name", "delivery", "legal_basis", "sources", "selection", "variables")
_SELECTION_KEYS = {
    "icd10",
    "icpc2",
    "ncsp",
    "ncrp",
    "diagnosis_position",
    "min_age",
    "sectors",
}
_FOLLOW_UP_KEYS = {"ncsp", "window_days", "new_case_match_days"}
_RESERVATION_KEYS = {"registry_opt_out", "no_fnr"}


class SpecError(ValueError):
    """A spec that cannot be used; the message names file, key and value."""

    def __init__(self, path: Path | str, key: str, value: Any, reason: str) -> None:
        self.path, self.key, self.value, self.reason = str(path), key, value, reason
        super().__init__(f"{path}: key '{key}': value {value!r}: {reason}")


@dataclass(frozen=True)
class Selection:
    """Which records qualify: any listed code matches, within the optional filters."""

    icd10: CodeSet
    icpc2: CodeSet
    ncsp: CodeSet
    ncrp: CodeSet
    diagnosis_position: str
    min_age: int | None
    sectors: tuple[str, ...]


@dataclass(frozen=True)
class FollowUp:
    """new_information only: which events after a case are delivered, and the windows."""

    ncsp: CodeSet
    window_days: int
    new_case_match_days: int


@dataclass(frozen=True)
class ReservationRules:
    registry_opt_out: bool
    no_fnr: str


@dataclass(frozen=True)
class Spec:
    code: str
    name: str
    delivery: str
    legal_basis: str
    priority: int
    sources: tuple[str, ...]
    selection: Selection
    variables: tuple[str, ...]
    reservations: ReservationRules
    lookback_days: int
    follow_up: FollowUp | None = None
    path: str = ""
    sha256: str = field(default="", compare=False)

    @property
    def pseudonymises(self) -> bool:
        return self.reservations.no_fnr == "pseudonymise"

    @property
    def has_list(self) -> bool:
        """Complement and new-information registers send their patient or case list."""
        return self.delivery in ("complement", "new_information")


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys instead of keeping the last one."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


class _Reader:
    """Reads one spec document, turning every problem into a SpecError for its key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, value: Any, reason: str) -> SpecError:
        return SpecError(self.path, key, value, reason)

    def mapping(self, value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key or "(document)", value, "must be a mapping")
        for name in value:
            if name not in allowed:
                full = f"{key}.{name}" if key else str(name)
                raise self.fail(full, value[name], "unknown key")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, value, "must be a non-empty string")
        return value.strip()

    def integer(self, value: Any, key: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, value, f"must be a whole number from {low} to {high}")
        return value

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(key, value, f"must be one of {', '.join(choices)}")
        return value

    def string_list(self, value: Any, key: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(key, value, "must be a list")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail(f"{key}[{i}]", item, "must be a string")
        return value

    def subset(self, value: Any, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        items = self.string_list(value, key)
        for i, item in enumerate(items):
            if item not in allowed:
                raise self.fail(f"{key}[{i}]", item, f"must be one of {', '.join(allowed)}")
        if len(set(items)) != len(items):
            raise self.fail(key, value, "lists an item twice")
        return tuple(items)

    def codes(self, value: Any, key: str, system: str) -> CodeSet:
        items = self.string_list(value, key)
        patterns = []
        for i, raw in enumerate(items):
            try:
                patterns.append(CodeSet.parse([raw], system).patterns[0])
            except CodePatternError as exc:
                raise self.fail(f"{key}[{i}]", raw, str(exc)) from None
        return CodeSet(tuple(patterns))


def parse_spec(document: Any, path: Path, sha256: str = "") -> Spec:
    """Validate one parsed YAML document as a register spec."""
    r = _Reader(path)
    top = r.mapping(document, "", _TOP_KEYS)
    for key in _REQUIRED:
        if key not in top:
            raise r.fail(key, None, "is required")

    code = r.string(top["code"], "code")
    if not REGISTRY_CODE.fullmatch(code):
        raise r.fail("code", code, "must match [A-Z0-9_]+, at most 32 characters")
    delivery = r.choice(top["delivery"], "delivery", DELIVERY_TYPES)
    sources = r.subset(top["sources"], "sources", SOURCES)
    if not sources:
        raise r.fail("sources", top["sources"], "must name NPR and/or KPR")

    sel = r.mapping(top["selection"], "selection", _SELECTION_KEYS)
    selection = Selection(
        icd10=r.codes(sel.get("icd10"), "selection.icd10", "icd10"),
        icpc2=r.codes(sel.get("icpc2"), "selection.icpc2", "icpc2"),
        ncsp=r.codes(sel.get("ncsp"), "selection.ncsp", "ncsp"),
        ncrp=r.codes(sel.get("ncrp"), "selection.ncrp", "ncrp"),
        diagnosis_position=r.choice(
            sel.get("diagnosis_position", "any"), "selection.diagnosis_position", ("any", "main")
        ),
        min_age=(
            None
            if sel.get("min_age") is None
            else r.integer(sel["min_age"], "selection.min_age", 0, 130)
        ),
        sectors=r.subset(sel.get("sectors"), "selection.sectors", SECTORS),
    )
    usable = {
        "NPR": bool(selection.icd10 or selection.ncsp or selection.ncrp),
        "KPR": bool(selection.icd10 or selection.icpc2),
    }
    if not any(usable[source] for source in sources):
        raise r.fail("selection", sel, "selects no code from the spec's sources")

    variables = r.subset(top["variables"], "variables", VARIABLE_CATALOGUE)
    if not variables:
        raise r.fail("variables", top["variables"], "must list at least one variable")

    follow_up = None
    if delivery == "new_information":
        if "follow_up" not in top:
            raise r.fail("follow_up", None, "is required for delivery new_information")
        fu = r.mapping(top["follow_up"], "follow_up", _FOLLOW_UP_KEYS)
        for key in ("ncsp", "window_days"):
            if key not in fu:
                raise r.fail(f"follow_up.{key}", None, "is required")
        follow_up = FollowUp(
            ncsp=r.codes(fu["ncsp"], "follow_up.ncsp", "ncsp"),
            window_days=r.integer(fu["window_days"], "follow_up.window_days", 1, 36500),
            new_case_match_days=r.integer(
                fu.get("new_case_match_days", 0), "follow_up.new_case_match_days", 0, 3650
            ),
        )
        if not follow_up.ncsp:
            raise r.fail("follow_up.ncsp", fu["ncsp"], "must list at least one code")
        if "NPR" not in sources:  # else the follow-ups would silently never come
            raise r.fail(
                "sources", top["sources"], "must include NPR: follow-up codes are NPR procedures"
            )
    elif "follow_up" in top:
        raise r.fail("follow_up", top["follow_up"], f"is not used by delivery {delivery}")

    res = r.mapping(top.get("reservations", {}) or {}, "reservations", _RESERVATION_KEYS)
    opt_out = res.get("registry_opt_out", True)
    if not isinstance(opt_out, bool):
        raise r.fail("reservations.registry_opt_out", opt_out, "must be true or false")
    reservations = ReservationRules(
        registry_opt_out=opt_out,
        no_fnr=r.choice(
            res.get("no_fnr", "exclude"), "reservations.no_fnr", ("exclude", "pseudonymise")
        ),
    )

    return Spec(
        code=code,
        name=r.string(top["name"], "name"),
        delivery=delivery,
        legal_basis=r.string(top["legal_basis"], "legal_basis"),
        priority=r.integer(top.get("priority", 4), "priority", 1, 4),
        sources=sources,
        selection=selection,
        variables=variables,
        reservations=reservations,
        lookback_days=r.integer(top.get("lookback_days", 730), "lookback_days", 1, 36500),
        follow_up=follow_up,
        path=str(path),
        sha256=sha256,
    )


def load_spec(path: Path) -> Spec:
    """Read, validate and hash one spec file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(path, "(file)", None, f"cannot be read: {exc.strerror}") from None
    try:
        document = yaml.load(raw.decode("utf-8"), Loader=_StrictLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise SpecError(path, "(document)", None, f"is not valid YAML: {reason}") from None
    return parse_spec(document, path, hashlib.sha256(raw).hexdigest())


@dataclass(frozen=True)
class SpecFolder:
    """A folder of specs read file by file: the usable ones, and why the others are not.

    One bad file must not stop every register's nightly delivery, so each file is read on
    its own. A register is usable when its file is valid and no other file claims its code:
    where two files claim one code, valid or not, neither is used, since which one was
    approved cannot be told from here.
    """

    specs: dict[str, Spec]
    # Codes a broken or duplicate file claims, with the error that blocks them.
    blocked: dict[str, SpecError]
    # Every unusable file with the (code, delivery) it concerns where that can be read; a
    # file that blocks registers of several delivery types is listed once for each.
    errors: tuple[tuple[SpecError, str | None, str | None], ...]

    def errors_for(self, delivery: str) -> list[SpecError]:
        """The errors that may concern a delivery type: its own registers' and those whose
        file is too broken to tell which type it is."""
        return [e for e, _, claimed in self.errors if claimed in (None, delivery)]


def _claimed(path: Path) -> tuple[str | None, str | None]:
    """The code and delivery a broken file means to have, read leniently (None where not)."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None, None
    if not isinstance(document, dict):
        return None, None
    code, delivery = document.get("code"), document.get("delivery")
    return (
        code.strip() if isinstance(code, str) and code.strip() else None,
        delivery if delivery in DELIVERY_TYPES else None,
    )


def read_specs(specs_dir: Path) -> SpecFolder:
    """Every spec file in a folder, each validated on its own (see SpecFolder)."""
    files = sorted(Path(specs_dir).glob("*.yaml")) + sorted(Path(specs_dir).glob("*.yml"))
    valid: dict[str, list[Spec]] = {}
    errors: list[tuple[SpecError, str | None, str | None]] = []
    for path in files:
        try:
            spec = load_spec(path)
        except SpecError as exc:
            errors.append((exc, *_claimed(path)))
            continue
        valid.setdefault(spec.code, []).append(spec)
    blocked = {code: exc for exc, code, _ in errors if code is not None}
    specs: dict[str, Spec] = {}
    for code, found in valid.items():
        for other in found[1:]:
            duplicate = SpecError(other.path, "code", code, f"is also the code of {found[0].path}")
            errors.append((duplicate, code, other.delivery))
            blocked.setdefault(code, duplicate)
        if code not in blocked:
            specs[code] = found[0]
            continue
        # The blocked registers' own delivery types must hear of it too, whatever type the
        # file that blocks them claims.
        for spec in found:
            concern = (blocked[code], code, spec.delivery)
            if concern not in errors:
                errors.append(concern)
    return SpecFolder(specs, blocked, tuple(errors))


def find_spec(specs_dir: Path, code: str) -> Spec:
    """The spec of one register, usable whatever is wrong with other registers' files."""
    folder = read_specs(specs_dir)
    if code in folder.specs:
        return folder.specs[code]
    if code in folder.blocked:
        raise folder.blocked[code]
    known = ", ".join(sorted(folder.specs)) or "none"
    unread = "".join(
        f"; {name} could not be read"
        for name in dict.fromkeys(Path(e.path).name for e, _, _ in folder.errors)
    )
    raise SpecError(specs_dir, "code", code, f"no spec has this code (known: {known}{unread})")
