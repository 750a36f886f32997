"""Airflow in its own process, for tests/test_dags.py.

Airflow reads its configuration (AIRFLOW_HOME, the metadata database, the dags folder) once,
when it is first imported, and keeps it for the life of the process. A pytest worker that has
already imported it for one test, or that runs other test modules, cannot point it elsewhere.
So every Airflow step of the tests runs here, in a fresh interpreter whose environment the
test sets up, and reports back as JSON in a file (Airflow writes its own logs to stdout).

    python tests/airflow_runner.py parse OUT
    python tests/airflow_runner.py test DAG_ID OUT [--conf JSON] [--logical-date ISO|none]
    python tests/airflow_runner.py pseudonym-key OUT
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any


def parse(out: Path) -> None:
    """Import every file in the dags folder and describe what came out."""
    gx_before = "great_expectations" in sys.modules
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    report: dict[str, Any] = {
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "great_expectations_imported": gx_before or "great_expectations" in sys.modules,
        "dags": {},
    }
    for dag_id, dag in bag.dags.items():
        report["dags"][dag_id] = {
            "fileloc": dag.fileloc,
            "doc_md": dag.doc_md,
            "tags": sorted(dag.tags),
            "timetable": type(dag.timetable).__name__,
            "cron": getattr(dag.timetable, "expression", None),
            "timezone": str(getattr(dag.timetable, "timezone", None)),
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "params": sorted(dag.params.keys()),
            "param_schemas": {
                name: dag.params.get_param(name).dump() for name in sorted(dag.params.keys())
            },
            "owner": dag.default_args.get("owner"),
            "tasks": {
                t.task_id: {
                    "priority_weight": t.priority_weight,
                    "weight_rule": str(getattr(t.weight_rule, "value", t.weight_rule)),
                    "trigger_rule": str(getattr(t.trigger_rule, "value", t.trigger_rule)),
                    "retries": t.retries,
                    "mapped": t.is_mapped,
                    "downstream": sorted(t.downstream_task_ids),
                    "on_failure": _callback_names(t.on_failure_callback),
                }
                for t in dag.tasks
            },
        }
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")


def _callback_names(callbacks: Any) -> list[str]:
    """A task's callbacks by name: one callable, a list of them, or none."""
    if callbacks is None:
        return []
    listed = callbacks if isinstance(callbacks, list) else [callbacks]
    return [getattr(c, "__name__", type(c).__name__) for c in listed]


def test(dag_id: str, out: Path, conf: dict[str, Any], logical_date: str | None) -> None:
    """Run one DAG run with dag.test() and report the run's and every task's state."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).dags[dag_id]
    kwargs: dict[str, Any] = {"run_conf": conf}
    if logical_date is not None:
        kwargs["logical_date"] = (
            None if logical_date == "none" else datetime.fromisoformat(logical_date)
        )
    run = dag.test(**kwargs)
    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id
            )
        ).all()
        report = {
            "state": str(run.state),
            "data_interval": [
                None if run.data_interval_start is None else run.data_interval_start.isoformat(),
                None if run.data_interval_end is None else run.data_interval_end.isoformat(),
            ],
            "tasks": [
                {
                    "task_id": ti.task_id,
                    "map_index": ti.map_index,
                    "label": ti.rendered_map_index,
                    "state": None if ti.state is None else str(ti.state),
                    "try_number": ti.try_number,
                    "priority_weight": ti.priority_weight,
                }
                for ti in tis
            ],
        }
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")


def pseudonym_key(out: Path, fnr: str = "01810112345") -> None:
    """Resolve the key as a delivery task does; report a pseudonym made with it, or the refusal.

    The report never holds the key: the test recomputes the pseudonym from the key it set.
    """
    from etl.airflow_dag import pseudonym_key as resolve
    from etl.pseudonym import Pseudonymiser, PseudonymKeyMissing

    try:
        report = {"pseudonym": Pseudonymiser(resolve(), "TEST")(fnr), "fnr": fnr}
    except PseudonymKeyMissing as exc:
        report = {"refused": str(exc)}
    out.write_text(json.dumps(report), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("parse").add_argument("out", type=Path)
    run = commands.add_parser("test")
    run.add_argument("dag_id")
    run.add_argument("out", type=Path)
    run.add_argument("--conf", type=json.loads, default={})
    run.add_argument("--logical-date")
    commands.add_parser("pseudonym-key").add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "parse":
        parse(args.out)
    elif args.command == "pseudonym-key":
        pseudonym_key(args.out)
    else:
        test(args.dag_id, args.out, args.conf, args.logical_date)


if __name__ == "__main__":
    main()
