"""From the database's records to what a register may receive.

Data minimisation happens here: a delivered batch has the contract's fixed leading columns,
then only the spec's variables, then the columns of the delivery type (CONTRACT.md
section 4). Records whose fnr is not a valid identity number are left out and counted. Rows
of persons with a NO_FNR reservation lose their fnr and get a pseudonym where the spec says so
(the database has already left them out where it does not).

Next to each delivered batch comes an evidence batch, never published, that lets validation
check the selection independently of the SQL that made it.

Source anomalies that do not stop a record from qualifying are delivered as the source has
them and counted for the manifest (an episode that ends before it starts), so the register
sees them and the source owner can be told.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from etl.fnr import is_valid_array
from etl.pseudonym import Pseudonymiser
from etl.spec import Spec

# The columns each delivery type adds after the spec's variables.
DELIVERY_COLUMNS: dict[str, tuple[str, ...]] = {
    "population": (),
    "complement": ("status",),
    "new_information": ("event", "case_id"),
}

VARIABLE_TYPES: dict[str, pa.DataType] = {
    "source": pa.string(),
    "record_id": pa.int64(),
    "fnr": pa.string(),
    "pseudonym": pa.string(),
    "sex": pa.int16(),
    "birth_year": pa.int16(),
    "municipality": pa.string(),
    "institution_id": pa.string(),
    "health_trust": pa.string(),
    "sector": pa.string(),
    "specialty": pa.string(),
    "care_level": pa.int16(),
    "urgency": pa.int16(),
    "start_date": pa.date32(),
    "end_date": pa.date32(),
    "discharge_status": pa.int16(),
    "service_type": pa.int16(),
    "main_diagnosis": pa.string(),
    "diagnoses": pa.list_(pa.string()),
    "procedures": pa.list_(pa.string()),
    "status": pa.string(),
    "event": pa.string(),
    "case_id": pa.string(),
}

EVIDENCE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("record_id", pa.int64()),
        ("received_at", pa.timestamp("us")),
        # 'part:kind:main:code' for every code of the record, e.g. 'D:icd10:1:F200'
        ("codes", pa.list_(pa.string())),
        ("event_date", pa.date32()),
        ("index_date", pa.date32()),
        # what the selection's filters look at (sectors, min_age), delivered or not
        ("sector", pa.string()),
        ("start_date", pa.date32()),
        ("birth_year", pa.int16()),
    ]
)


def delivered_columns(spec: Spec) -> list[str]:
    """The delivered columns in order: fixed ones, the spec's variables, the type's own."""
    lead = ["source", "record_id", "fnr"] + (["pseudonym"] if spec.pseudonymises else [])
    variables = [v for v in spec.variables if v not in lead]
    return lead + variables + list(DELIVERY_COLUMNS[spec.delivery])


def delivered_schema(spec: Spec) -> pa.Schema:
    return pa.schema([(name, VARIABLE_TYPES[name]) for name in delivered_columns(spec)])


@dataclass
class Shaped:
    """One raw batch turned into its delivered rows and their evidence."""

    delivered: pa.RecordBatch
    evidence: pa.RecordBatch
    invalid_fnr: int
    end_before_start: int


def _split_codes(codes: list[str | None], sources: list[str]) -> tuple[list, list, list, list]:
    """Diagnoses, procedures, main diagnosis and evidence codes from the query's code text.

    The text is 'part:kind:seq:main:code' entries separated by spaces; lists are ordered by
    seq, as the source numbered them. KPR has no procedures: its rows get null, not an empty
    list (contract section 2, NPR-only variables), so "none recorded" and "not kept by this
    source" stay apart.
    """
    diagnoses, procedures, mains, evidence = [], [], [], []
    for text, source in zip(codes, sources, strict=True):
        entries = sorted(
            (int(seq), part, kind, main, code)
            for part, kind, seq, main, code in (e.split(":") for e in (text or "").split())
        )
        diagnoses.append([e[4] for e in entries if e[1] == "D"])
        procedures.append([e[4] for e in entries if e[1] == "P"] if source == "NPR" else None)
        mains.append(next((e[4] for e in entries if e[1] == "D" and e[3] == "1"), None))
        evidence.append([f"{part}:{kind}:{main}:{code}" for _, part, kind, main, code in entries])
    return diagnoses, procedures, mains, evidence


def shape(batch: pa.RecordBatch, spec: Spec, pseudonymiser: Pseudonymiser | None) -> Shaped:
    """Turn one raw batch into delivered rows and evidence (see the module docstring)."""
    valid = is_valid_array(batch.column("fnr"))
    invalid = int((~valid).sum())
    if invalid:
        batch = batch.filter(pa.array(valid))

    diagnoses, procedures, mains, evidence_codes = _split_codes(
        batch.column("codes").to_pylist(), batch.column("source").to_pylist()
    )
    derived: dict[str, pa.Array] = {
        "diagnoses": pa.array(diagnoses, VARIABLE_TYPES["diagnoses"]),
        "procedures": pa.array(procedures, VARIABLE_TYPES["procedures"]),
        "main_diagnosis": pa.array(mains, pa.string()),
    }

    fnr = batch.column("fnr")
    if spec.pseudonymises:
        if pseudonymiser is None:
            raise ValueError("a pseudonymising spec needs a pseudonymiser")
        hide = np.asarray(batch.column("no_fnr").fill_null(0).to_numpy(zero_copy_only=False)) == 1
        fnrs = fnr.to_pylist()
        derived["pseudonym"] = pa.array(
            [pseudonymiser(f) if h else None for f, h in zip(fnrs, hide, strict=True)],
            pa.string(),
        )
        fnr = pc.if_else(pa.array(hide), pa.nulls(len(fnrs), pa.string()), fnr)
    derived["fnr"] = fnr

    n = batch.num_rows
    columns = []
    for name in delivered_columns(spec):
        if name in derived:
            column = derived[name]
        elif name in batch.schema.names:
            column = batch.column(name)
        else:  # a variable the source of these rows does not have
            column = pa.nulls(n, VARIABLE_TYPES[name])
        columns.append(column.cast(VARIABLE_TYPES[name]))
    delivered = pa.RecordBatch.from_arrays(columns, schema=delivered_schema(spec))

    def optional(name: str, kind: pa.DataType) -> pa.Array:
        return batch.column(name) if name in batch.schema.names else pa.nulls(n, kind)

    evidence = pa.RecordBatch.from_arrays(
        [
            batch.column("source"),
            batch.column("record_id"),
            batch.column("received_at").cast(pa.timestamp("us")),
            pa.array(evidence_codes, pa.list_(pa.string())),
            optional("event_date", pa.date32()),
            optional("index_date", pa.date32()),
            batch.column("sector").cast(pa.string()),
            batch.column("start_date").cast(pa.date32()),
            batch.column("birth_year").cast(pa.int16()),
        ],
        schema=EVIDENCE_SCHEMA,
    )
    ends_early = pc.less(batch.column("end_date"), batch.column("start_date"))
    end_before_start = pc.sum(ends_early.fill_null(False).cast(pa.int64())).as_py() or 0
    return Shaped(delivered, evidence, invalid, end_before_start)
