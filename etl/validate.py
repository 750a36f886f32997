"""Validation of a staged delivery with Great Expectations, before anything is published.

The suite checks the file that would be published, next to evidence the extraction kept:
- the columns are exactly the allowed set (fixed columns, the spec's variables, the type's);
- record ids are present and each record appears once (per case and event where that applies);
- identity numbers are well formed and valid (checked here with the scalar etl.fnr.is_valid,
  not the vectorised check the extraction used);
- every record qualifies by the spec's codes (the patterns evaluated in Python, not in SQL)
  and was received in the period;
- no delivered person has an active reservation that excludes them, computed from a separate
  query of the reservation table (sql/reservation_guard.sql).

Reports hold expectation names and counts only: Great Expectations' own results carry sample
values, so they are reduced to counts here and never stored or logged.
"""

from __future__ import annotations

import gc
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.engine import Connection

from etl import fnr as fnr_rules
from etl.codes import CodeSet
from etl.minimise import DELIVERY_COLUMNS
from etl.period import Period
from etl.pseudonym import Pseudonymiser
from etl.reservations import active_at
from etl.source import sql_text, stream
from etl.spec import Spec

log = logging.getLogger(__name__)

_preload: threading.Thread | None = None
_import_lock = threading.Lock()

# Modules Great Expectations imports with itself that only expectations this project does
# not use need (KL divergence, KS tests and their charts): scipy.stats (with scipy's linear
# algebra, optimisation and spatial modules behind it) and altair. Imported lazily, they load
# only if such an expectation ever runs. That takes 40 % off the import's CPU (5.0 s to
# 3.0 s on these machines) and 77 MiB off its memory; the suite itself is unchanged.
DEFERRED_MODULES = frozenset({"scipy.stats", "altair"})

# The name validation reports give the key's uniqueness expectation (see ``_run``).
UNIQUE_KEY = "expect_column_values_to_be_unique(_key)"

CHECK_COLUMNS = (
    "_key",
    "_identified",
    "_fnr_valid",
    "_qualifies",
    "_in_period",
    "_not_reserved",
    "_case_as_event",
    "_in_window",
)


class ValidationFailed(RuntimeError):
    """The staged delivery broke an expectation; nothing was published."""

    def __init__(self, report: ValidationReport, evidence_path: str) -> None:
        self.report, self.evidence_path = report, evidence_path
        failed = ", ".join(report.failed)
        super().__init__(f"validation failed ({failed}); evidence kept in {evidence_path}")


@dataclass
class ValidationReport:
    success: bool
    expectations: int
    failed: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The manifest's validation block."""
        return {"success": self.success, "expectations": self.expectations, "failed": self.failed}

    def to_dict(self) -> dict[str, Any]:
        return self.summary() | {"results": self.results}


@dataclass
class ReservationGuard:
    """The reservations that keep people out of a delivery, read independently.

    The sets hold every person with such a reservation, nationwide: far more than the rows
    of a night. ``allowed`` therefore looks each row up in the sets, a cost that follows
    the rows checked, rather than hashing the sets for every batch (``Series.isin`` does),
    and pseudonymises the reserved persons once per guard, not once per batch.
    """

    opt_out: set[str]
    no_purpose2: set[str]
    no_fnr: dict[str, set[str]]
    _pseudonyms: dict[str, tuple[Pseudonymiser, set[str]]] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, conn: Connection, spec: Spec, as_of: datetime) -> ReservationGuard:
        guard = cls(set(), set(), {"NPR": set(), "KPR": set()})
        params = {"registry": spec.code, **active_at(as_of)}
        for rows in stream(conn, sql_text("reservation_guard"), params):
            for person, registry, scope in rows:
                if scope == "OPT_OUT" and spec.reservations.registry_opt_out:
                    guard.opt_out.add(person)
                elif scope == "NO_PURPOSE2":
                    guard.no_purpose2.add(person)
                elif scope == "NO_FNR":
                    guard.no_fnr[registry].add(person)
        return guard

    def _pseudonyms_of(self, name: str, people: set[str], pseudonymiser: Pseudonymiser) -> set[str]:
        """The pseudonyms of one set of reserved persons, computed once per pseudonymiser."""
        cached = self._pseudonyms.get(name)
        if cached is None or cached[0] is not pseudonymiser:
            cached = (pseudonymiser, {pseudonymiser(p) for p in people})
            self._pseudonyms[name] = cached
        return cached[1]

    def allowed(self, frame: pd.DataFrame, pseudonymiser: Pseudonymiser | None) -> pd.Series:
        """Per row: True when no active reservation keeps this row out."""
        fnr = frame["fnr"].to_numpy(dtype=object)
        pseudonym = frame["pseudonym"].to_numpy(dtype=object) if "pseudonym" in frame else None

        def member(values: np.ndarray, found: set[str]) -> np.ndarray:
            return np.fromiter((v in found for v in values), dtype=bool, count=len(values))

        def hit(name: str, people: set[str]) -> np.ndarray:
            by_number = member(fnr, people)
            if pseudonymiser is None or pseudonym is None:
                return by_number
            return by_number | member(pseudonym, self._pseudonyms_of(name, people, pseudonymiser))

        source = frame["source"].to_numpy(dtype=object)
        blocked = hit("opt_out", self.opt_out) | (
            (source == "KPR") & hit("no_purpose2", self.no_purpose2)
        )
        for name, people in self.no_fnr.items():
            blocked |= (source == name) & member(fnr, people)
        return pd.Series(~blocked, index=frame.index)


def _qualifies(codes: list[str], spec: Spec, event: str | None) -> bool:
    """Whether a record's codes select it: by the follow-up set for a follow_up row, by the
    spec's selection otherwise (evaluated here in Python, independently of the SQL)."""
    sel = spec.selection
    if event == "follow_up" and spec.follow_up is not None:
        sets: dict[str, CodeSet] = {"ncsp": spec.follow_up.ncsp}
        parts = {"P"}
    else:
        sets = {"icd10": sel.icd10, "icpc2": sel.icpc2, "ncsp": sel.ncsp, "ncrp": sel.ncrp}
        parts = {"D", "P"}
    for entry in codes:
        part, kind, main, code = entry.split(":")
        if part not in parts:
            continue
        if part == "D" and sel.diagnosis_position == "main" and main != "1":
            continue
        if kind in sets and sets[kind].matches(code):
            return True
    return False


def _admitted(evidence: pd.DataFrame, spec: Spec) -> pd.Series:
    """Per row: whether the selection's filters admit its record (CONTRACT.md section 2):
    an NPR record's sector among ``sectors``, and the record's year minus the birth year at
    least ``min_age`` (an unknown birth year never is). Follow-ups are exempt: they are every
    NPR record with a follow-up code (section 4)."""
    admitted = pd.Series(True, index=evidence.index)
    selection = spec.selection
    if selection.sectors:
        npr = evidence["source"] == "NPR"
        admitted &= ~npr | evidence["sector"].isin(selection.sectors)
    if selection.min_age is not None:
        age = pd.to_datetime(evidence["start_date"]).dt.year - evidence["birth_year"]
        admitted &= (age >= selection.min_age).fillna(False).astype(bool)
    return admitted


def _follow_up_checks(frame: pd.DataFrame, evidence: pd.DataFrame, spec: Spec) -> None:
    """new_information: case_id exactly on follow_up rows, and each follow-up in its window."""
    if spec.follow_up is None:
        frame["_case_as_event"] = True
        frame["_in_window"] = True
        return
    follow_up = frame["event"] == "follow_up"
    frame["_case_as_event"] = follow_up == frame["case_id"].notna()
    days = (pd.to_datetime(evidence["event_date"]) - pd.to_datetime(evidence["index_date"])).dt.days
    in_window = (days >= 1) & (days <= spec.follow_up.window_days)
    frame["_in_window"] = ~follow_up | in_window.fillna(False)


def check_frame(
    delivered: pd.DataFrame,
    evidence: pd.DataFrame,
    spec: Spec,
    period: Period,
    guard: ReservationGuard,
    pseudonymiser: Pseudonymiser | None,
) -> pd.DataFrame:
    """The delivered rows with the derived check columns the suite expects to be True."""
    frame = delivered.copy()
    key_parts = [frame["source"].astype(str), frame["record_id"].astype("string")]
    key_parts += [frame[c].astype("string").fillna("") for c in ("event", "case_id") if c in frame]
    key = key_parts[0]
    for part in key_parts[1:]:
        key = key + "|" + part
    frame["_key"] = key
    has_pseudonym = frame["pseudonym"].notna() if "pseudonym" in frame else False
    frame["_identified"] = frame["fnr"].notna() | has_pseudonym
    frame["_fnr_valid"] = frame["fnr"].map(
        lambda v: v is None or pd.isna(v) or fnr_rules.is_valid(v)
    )
    events = frame["event"] if "event" in frame else pd.Series(None, frame.index, dtype=object)
    by_codes = [
        _qualifies(list(codes), spec, event)
        for codes, event in zip(evidence["codes"], events, strict=True)
    ]
    follow_up = pd.Series([event == "follow_up" for event in events], index=frame.index)
    admitted = _admitted(evidence, spec).to_numpy()
    frame["_qualifies"] = pd.Series(by_codes, index=frame.index) & (follow_up | admitted)
    start, end = period.bounds()
    received = pd.to_datetime(evidence["received_at"])
    frame["_in_period"] = (received >= start) & (received < end)
    frame["_not_reserved"] = guard.allowed(frame, pseudonymiser)
    _follow_up_checks(frame, evidence, spec)
    return frame


class _Deferred(importlib.abc.MetaPathFinder):
    """Finds the DEFERRED_MODULES as the path finder would, with a loader that runs a module
    only when one of its attributes is first used (importlib.util.LazyLoader)."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name not in DEFERRED_MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


@contextmanager
def _deferring() -> Iterator[None]:
    """Import the DEFERRED_MODULES lazily while the block runs (modules imported before are
    not affected; those deferred stay lazy, and load in full when first used)."""
    finder = _Deferred()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while the block runs, then freeze what survived.

    Importing Great Expectations creates about 180,000 objects that live as long as the
    process: with the collector on, the import's own collections scan them again and again,
    and the interpreter's teardown walks them once more at exit. Paused for the import and
    frozen after it (gc.freeze: moved to a generation no collection visits), they cost
    neither. The freeze takes in everything alive at that moment, the delivery's own objects
    too: reference counting still frees those that are not part of a cycle, and a cycle among
    them lives until the process ends, which a delivery's process soon does. CPU of the
    import with deferred modules, exit included: 3.6 s, 3.1 s frozen, 2.7 s paused and
    frozen (measured 2026-11-26, against 5.9 s for a plain import).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.freeze()


def _great_expectations() -> ModuleType:
    """The Great Expectations module, imported with its usage analytics off.

    The first call imports it, with the DEFERRED_MODULES lazy and the collector paused;
    a call from another thread meanwhile waits for that import to finish.
    """
    with _import_lock:
        if "great_expectations" in sys.modules:
            return importlib.import_module("great_expectations")
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        # Its INFO lines (a hundred per run about registering functions) drown the delivery's.
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        with _deferring(), _collector_paused():
            return importlib.import_module("great_expectations")


def preload_great_expectations() -> None:
    """Start importing Great Expectations in a background thread; a second call does nothing.

    The import costs about 3 s of CPU on these machines even as ``_great_expectations``
    does it (more than a nightly delivery's query and writing together), and a delivery
    spends its extraction mostly waiting for the source database, with the GIL released.
    Started before the query, the import runs while the main thread waits instead of after
    it. Validation's own call then finds the module loaded, or waits for the rest; an import
    that failed in the thread is tried again there and fails with its real error. The thread
    is not a daemon, so a run that fails early lets the import finish before the interpreter
    exits rather than tearing it down half way.
    """
    global _preload
    if _preload is None:
        _preload = threading.Thread(target=_great_expectations, name="gx-import")
        _preload.start()


def _suite(spec: Spec, columns: list[str]) -> list[Any]:
    e = _great_expectations().expectations
    allowed = {"source", "record_id", "fnr"} | set(spec.variables)
    allowed |= set(DELIVERY_COLUMNS[spec.delivery])
    if spec.pseudonymises:
        allowed.add("pseudonym")
    expectations = [
        e.ExpectTableColumnsToMatchSet(
            column_set=sorted(allowed | set(CHECK_COLUMNS)), exact_match=True
        ),
        e.ExpectColumnValuesToNotBeNull(column="record_id"),
        e.ExpectColumnValuesToBeInSet(column="source", value_set=list(spec.sources)),
        e.ExpectColumnValuesToBeUnique(column="_key"),
        e.ExpectColumnValuesToMatchRegex(column="fnr", regex=r"^[0-9]{11}$"),
    ]
    expectations += [
        e.ExpectColumnValuesToBeInSet(column=c, value_set=[True]) for c in CHECK_COLUMNS[1:]
    ]
    if "pseudonym" in columns:
        expectations.append(
            e.ExpectColumnValuesToMatchRegex(column="pseudonym", regex=r"^[0-9a-f]{64}$")
        )
    if spec.delivery == "complement":
        expectations.append(
            e.ExpectColumnValuesToBeInSet(column="status", value_set=["registered", "missing"])
        )
    if spec.delivery == "new_information":
        expectations.append(
            e.ExpectColumnValuesToBeInSet(column="event", value_set=["follow_up", "new_case"])
        )
    return expectations


def withdrawal_frame(withdrawals: pd.DataFrame, guard: ReservationGuard) -> pd.DataFrame:
    """The withdrawals with their checks: each person listed there has an active OPT_OUT."""
    frame = withdrawals.copy()
    frame["_fnr_valid"] = frame["fnr"].map(lambda v: isinstance(v, str) and fnr_rules.is_valid(v))
    frame["_opted_out"] = frame["fnr"].isin(guard.opt_out)
    return frame


def _withdrawal_suite() -> list[Any]:
    e = _great_expectations().expectations
    return [
        e.ExpectTableColumnsToMatchSet(
            column_set=["fnr", "registered_at", "_fnr_valid", "_opted_out"], exact_match=True
        ),
        e.ExpectColumnValuesToNotBeNull(column="fnr"),
        e.ExpectColumnValuesToBeUnique(column="fnr"),
        e.ExpectColumnValuesToNotBeNull(column="registered_at"),
        e.ExpectColumnValuesToBeInSet(column="_fnr_valid", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="_opted_out", value_set=[True]),
    ]


def validate_delivery(
    frames: Iterable[pd.DataFrame], spec: Spec, withdrawals: pd.DataFrame | None
) -> ValidationReport:
    """Run the delivery's suite batch by batch, and the withdrawals' suite where there are any.

    ``frames`` are check frames (``check_frame``) of consecutive parts of the staged file, so
    memory is bounded by a batch, not by the delivery. Per expectation, the batches' results
    are added up. Uniqueness of ``_key`` is also decided across batches, from a 64-bit hash
    per row (8 bytes a row): a duplicate split over two batches is counted like one inside a
    batch (every row of a repeated key is unexpected); a hash collision can only fail a
    delivery, never pass one.
    """
    name = f"{spec.code}.{spec.delivery}"
    report: ValidationReport | None = None
    hashes: list[np.ndarray] = []
    for frame in frames:
        part = _run(frame, name, _suite(spec, list(frame.columns)))
        report = part if report is None else _add(report, part)
        hashes.append(pd.util.hash_pandas_object(frame["_key"], index=False).to_numpy())
    if report is None:
        raise ValueError("validate_delivery needs at least one (possibly empty) frame")
    report = _with_global_uniqueness(report, np.concatenate(hashes))
    if withdrawals is not None:
        extra = _run(withdrawals, f"{spec.code}.withdrawals", _withdrawal_suite(), "withdrawals.")
        report = ValidationReport(
            success=report.success and extra.success,
            expectations=report.expectations + extra.expectations,
            failed=report.failed + extra.failed,
            results=report.results + extra.results,
        )
    return report


def _add(total: ValidationReport, part: ValidationReport) -> ValidationReport:
    """Two batches' results of one suite, expectation by expectation."""
    results = []
    for a, b in zip(total.results, part.results, strict=True):
        counts = {
            key: None if a[key] is None and b[key] is None else (a[key] or 0) + (b[key] or 0)
            for key in ("element_count", "unexpected_count")
        }
        results.append(a | counts | {"success": a["success"] and b["success"]})
    return _report(results)


def _with_global_uniqueness(report: ValidationReport, hashes: np.ndarray) -> ValidationReport:
    """The report with ``_key`` uniqueness counted over every batch together."""
    _, counts = np.unique(hashes, return_counts=True)
    repeated = int(counts[counts > 1].sum())
    results = [
        r | {"unexpected_count": repeated, "success": repeated == 0}
        if r["expectation"] == UNIQUE_KEY
        else r
        for r in report.results
    ]
    return _report(results)


def _report(results: list[dict[str, Any]]) -> ValidationReport:
    failed = [r["expectation"] for r in results if not r["success"]]
    return ValidationReport(
        success=not failed, expectations=len(results), failed=failed, results=results
    )


def _run(
    frame: pd.DataFrame, suite_name: str, expectations: list[Any], prefix: str = ""
) -> ValidationReport:
    """Run one suite on a frame and reduce the results to names and counts."""
    gx = _great_expectations()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("leveranse").add_dataframe_asset(suite_name)
    batch = asset.add_batch_definition_whole_dataframe("delivery").get_batch(
        batch_parameters={"dataframe": frame}
    )
    suite = gx.ExpectationSuite(name=suite_name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    outcome = batch.validate(suite, result_format="SUMMARY")

    results = []
    for result in outcome.results:
        config = result.expectation_config
        column = f"({config.kwargs['column']})" if "column" in config.kwargs else ""
        results.append(
            {
                "expectation": prefix + config.type + column,
                "success": bool(result.success),
                "element_count": result.result.get("element_count"),
                "unexpected_count": result.result.get("unexpected_count"),
            }
        )
    return _report(results)
