"""The delivery DAGs: one factory, one thin file per delivery type in dags/.

Each delivery type (population, complement, new_information) is one DAG that runs nightly
and delivers every register of that type through ``etl.deliver.deliver``, the same function
the command line calls. The DAG moves register codes, paths and counts between its tasks,
never data:

    list_registers -> priority_<p>_registers -> deliver_priority_<p> (mapped) -> summary

- ``list_registers`` reads the specs at run time, keeps the registers of this delivery type
  (or the ones the run's Params name; an unknown code fails the run here, before anything is
  delivered) and returns ``{code, priority}`` per register.
- A mapped task has one priority weight for all its instances, and a register's priority
  class (1 highest .. 4) must decide which deliveries the scheduler starts first when
  workers are scarce. So there is one mapped task per class, ``deliver_priority_<p>``
  with an absolute weight of ``5 - p``. Airflow can only map over a task's whole return
  value (mapping over ``xcom["key"]`` is refused at parse time), so a one-line task
  ``priority_<p>_registers`` picks each class's registers out of the list. A class without
  registers expands to no instances and Airflow marks the task skipped.
  (A per-instance weight would need a custom ``PriorityWeightStrategy`` registered as a
  scheduler plugin that re-reads the specs in the scheduler; four fixed classes are simpler.)
- ``deliver_priority_<p>`` delivers one register per instance, labelled with its code in the
  UI, and returns ``DeliveryResult.to_dict()``. Errors that a retry cannot fix (a bad spec,
  an empty period, failed validation, no pseudonymisation key) fail the instance at once,
  with a message naming the register and the reason; everything else
  (database errors, a stale reservation copy that the next sync may refresh, another run
  holding the register's lock) is retried with exponential back-off.
- ``summary`` runs whatever happened upstream (trigger rule all_done), logs one line per
  register, then runs ``leveranse audit --check`` (``etl.reconcile``) over the whole drop
  folder, and fails the run if any register was not delivered or the audit found the drops
  and the disclosure log disagreeing (the findings are in its log). It is the DAG's only
  leaf, so the run's state is its state: skipped classes leave the run green, a failed
  register or a failed audit turns it red.

The period is ``[data_interval_start, data_interval_end)`` as UTC dates (a nightly run at
02:00 delivers the previous day), unless the Params ``period_from`` / ``period_to`` say
otherwise. A manual run without a logical date has no data interval: it falls back to
``deliver``'s own default (from the end of the last successful delivery up to today) and
says so in its log. The Param ``full_refresh`` delivers each register's whole lookback
window instead (``lookback_days`` of its spec, up to ``period_to``, the end of the data
interval, or today): one drop that replaces what the register holds, for a register that
lost data, changed its spec, or must re-key after the pseudonymisation key was rotated.

A register whose spec pseudonymises needs the key: ``LEVERANSE_PSEUDONYM_KEY`` where the
worker's environment has it, else the password of the Airflow connection
``leveranse_pseudonym`` (``pseudonym_key``). Without either, its task fails at once and
nothing is read or published. The key goes to ``deliver`` as an argument and Airflow masks
it in its logs; it never travels through XCom or Params.

Every drop a register task publishes (a new version, not an unchanged rerun) emits an
Airflow asset event for that register's asset ``drop_asset(code, delivery)``, through one
asset alias per delivery type: a mapped task must emit only its own register's event, and
static outlets would emit all of them. ``notices_dag`` builds the DAG that is scheduled on
those assets and writes a pick-up notice per drop (``etl.notify``).

A task that fails for good (not between retries) calls ``etl.notify.send_alert`` with the
register, the delivery, the period and the reason: into the task log always, by mail when
``LEVERANSE_ALERT_EMAIL`` is set. ``summary`` alerts only for a failed audit; each failed
register has already alerted from its own task.

Parsing a DAG file imports only this module and light ones (settings, specs, redaction): pandas,
pyarrow and Great Expectations are imported by the tasks that use them, and the source,
drop and state locations are read from the environment when a task runs.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import (
    DAG,
    Asset,
    AssetAlias,
    AssetAny,
    Connection,
    Context,
    CronDataIntervalTimetable,
    Param,
    TriggerRule,
    WeightRule,
    dag,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException
from airflow.sdk.log import mask_secret

from etl.notify import FailureAlert, send_alert, write_notice
from etl.pseudonym import KEY_CONNECTION, KEY_VARIABLE, REFUSAL, PseudonymKeyMissing, checked_key
from etl.redact import one_line
from etl.settings import Settings
from etl.spec import DELIVERY_TYPES, SpecError, find_spec, read_specs

if TYPE_CHECKING:
    from etl.reconcile import Reconciliation

log = logging.getLogger(__name__)

PRIORITY_CLASSES = (1, 2, 3, 4)
SCHEDULE = "0 2 * * *"  # nightly, after NPR's and KPR's evening loads
START_DATE = datetime(2025, 1, 1, tzinfo=UTC)
# A drop renamed into place a moment before its log row is written looks like a finding.
AUDIT_RECHECK_SECONDS = 10.0


class DeliveryAttemptFailed(RuntimeError):
    """One try of one register's delivery failed in a way a later try may not.

    Airflow retries it with back-off. The message is one redacted line: a database driver
    may quote a row in its error, and the task log must never show an identity number.
    """


class AuditMismatch(AirflowFailException):
    """``leveranse audit --check`` found the drops and the disclosure log disagreeing."""


class SpecsUnusable(AirflowFailException):
    """Spec files that could not be used: their registers were not delivered, the others were."""


def drop_asset(code: str, delivery: str) -> Asset:
    """The Airflow asset of one register's drops of one delivery type.

    Producer and consumer must name it alike in every deployment, and a drop folder that
    moves must not orphan its history, so the identity holds no path: the URI uses the
    private scheme ``x-leveranse`` (Airflow leaves ``x-`` schemes as written). Where a drop
    lies is in the event's extra.
    """
    return Asset(name=f"drop/{code}/{delivery}", uri=f"x-leveranse://drops/{code}/{delivery}")


def drops_alias(delivery: str) -> AssetAlias:
    """The alias a delivery DAG's register tasks emit their drops' asset events through."""
    return AssetAlias(name=f"leveranse_drops_{delivery}")


def _known_codes(delivery: str) -> list[str]:
    """Codes of this type's registers, as suggestions in the trigger form only.

    Read when the DAG file is parsed. A broken spec must not break the DAG: the form then
    leaves out that register, and every run reports the file (``list_registers``).
    """
    specs = read_specs(Settings.resolve().specs_dir).specs
    return sorted(code for code, spec in specs.items() if spec.delivery == delivery)


def _params(delivery: str) -> dict[str, Param]:
    codes = _known_codes(delivery)
    suggestions: dict[str, Any] = {"examples": codes} if codes else {}
    return {
        # Optional: the form marks a Param required unless its type allows null, and
        # clearing the multi-select sends null. Null and [] both mean every register.
        "registers": Param(
            None,
            type=["null", "array"],
            items={"type": "string", "pattern": "^[A-Z0-9_]+$"},
            title="Registers",
            description=f"Register codes to deliver; empty delivers every {delivery} register.",
            **suggestions,
        ),
        "period_from": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Period from",
            description="First received date (inclusive). Empty: the run's data interval.",
        ),
        "period_to": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Period to",
            description="End of the period (exclusive). Empty: the run's data interval.",
        ),
        "reservations_as_of": Param(
            None,
            type=["null", "string"],
            format="date-time",
            title="Reservations as of",
            description="Apply reservations active at this instant (UTC). Empty: now.",
        ),
        "full_refresh": Param(
            False,
            type="boolean",
            title="Full refresh",
            description=(
                "Deliver each register's whole lookback window (its spec's lookback_days) up "
                "to Period to (or the end of the data interval, or today) as one drop, "
                "instead of the data interval. Leave Period from empty."
            ),
        ),
    }


def _param_date(params: dict[str, Any], name: str) -> date | None:
    value = params.get(name)
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise AirflowFailException(f"Param {name} is not an ISO date (YYYY-MM-DD)") from None


def _param_instant(params: dict[str, Any], name: str) -> datetime | None:
    """An ISO timestamp as naive UTC (how the source stores timestamps); naive means UTC."""
    value = params.get(name)
    if not value:
        return None
    try:
        instant = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise AirflowFailException(f"Param {name} is not an ISO timestamp") from None
    if instant.tzinfo is not None:
        instant = instant.astimezone(UTC).replace(tzinfo=None)
    return instant


def run_window(context: Context) -> tuple[date | None, date | None, datetime | None]:
    """The run's period and reservation instant: Params first, then the data interval.

    Each bound is resolved on its own, so ``period_from`` alone reruns from that date up
    to the end of the run's interval. ``None`` bounds are left to ``deliver``'s default.
    On a full refresh only the end is resolved: ``register_window`` gives each register
    its own start.
    """
    params = context["params"]
    full_refresh = bool(params.get("full_refresh"))
    start, end = _param_date(params, "period_from"), _param_date(params, "period_to")
    if full_refresh and start is not None:
        raise AirflowFailException(
            "full_refresh delivers each register's whole lookback window up to period_to: "
            "leave period_from empty, or switch full_refresh off to deliver from period_from"
        )
    interval_start = context.get("data_interval_start")
    interval_end = context.get("data_interval_end")
    if interval_start is not None and interval_end is not None:
        if not full_refresh:
            start = start or interval_start.astimezone(UTC).date()
        end = end or interval_end.astimezone(UTC).date()
    elif (start is None or end is None) and not full_refresh:
        log.info(
            "this run has no data interval (a manual run without a logical date) and the "
            "Params give no full period: falling back to deliver()'s default period, from "
            "the end of the last successful delivery (or the spec's lookback) to today"
        )
    if start is not None and end is not None and start >= end:
        raise AirflowFailException(
            f"the period {start.isoformat()} .. {end.isoformat()} is empty: period_from "
            "must be before period_to (the period is [from, to))"
        )
    return start, end, _param_instant(params, "reservations_as_of")


def register_window(
    context: Context, code: str
) -> tuple[date | None, date | None, datetime | None]:
    """One register's period: the run's window, or on a full refresh its lookback window.

    A full refresh ignores the data interval's start and the end of the last delivery: it
    re-delivers ``lookback_days`` (from the register's spec) up to the run's end, so the
    register can replace what it holds. Unchanged data is recognised as usual.
    """
    start, end, as_of = run_window(context)
    if not context["params"].get("full_refresh"):
        return start, end, as_of
    end = end or datetime.now(UTC).date()
    try:
        lookback = find_spec(Settings.resolve().specs_dir, code).lookback_days
    except SpecError as exc:
        raise AirflowFailException(f"{code}: not retried: {exc}") from None
    log.info("%s: full refresh, the whole lookback window of %d days", code, lookback)
    return end - timedelta(days=lookback), end, as_of


def _period_text(context: Context, code: str | None) -> str:
    """The period of a failed task for its alert; an alert must go out even if this fails."""
    try:
        start, end, _ = register_window(context, code) if code else run_window(context)
    except Exception as exc:
        return f"unknown ({one_line(exc)})"
    first = start.isoformat() if start else "the end of the last delivery"
    last = end.isoformat() if end else "today"
    full = " (full refresh)" if context["params"].get("full_refresh") else ""
    return f"{first} .. {last}{full}"


def alert_on_failure(delivery: str, context: Context) -> None:
    """A task of a delivery DAG failed for good: alert with register, period and reason.

    Runs in the worker after the last try (retries call no failure callback). A mapped
    instance is one register, labelled with its code; other tasks concern the whole run.
    """
    ti = context["ti"]
    register = (ti.rendered_map_index or f"map index {ti.map_index}") if ti.map_index >= 0 else None
    error = context.get("exception")
    reason = one_line(error) if isinstance(error, BaseException) else str(error or "unknown")
    task_label = ti.task_id + (f" [{register}]" if register else "")
    send_alert(
        FailureAlert(
            dag_id=ti.dag_id,
            delivery=delivery,
            register=register,
            period=_period_text(context, register),
            reason=reason,
            task=task_label,
            run_id=ti.run_id,
            try_number=ti.try_number,
            log_url=ti.log_url,
        )
    )


def alert_on_notice_failure(context: Context) -> None:
    """The notices task failed: a register may be waiting for a drop it was not told about.

    The reason names each drop without a notice (register, delivery, folder); the period is
    the drop folder's, so the alert gives none of its own.
    """
    ti = context["ti"]
    error = context.get("exception")
    send_alert(
        FailureAlert(
            dag_id=ti.dag_id,
            delivery="pick-up notices",
            register=None,
            period="the drops named in the reason",
            reason=one_line(error) if isinstance(error, BaseException) else str(error or "unknown"),
            task=ti.task_id,
            run_id=ti.run_id,
            try_number=ti.try_number,
            log_url=ti.log_url,
        )
    )


def audit_drops(settings: Settings) -> Reconciliation:
    """``leveranse audit --check`` at the end of a run, findings logged one per line.

    Another DAG or a command-line run may be between renaming its drop into place and
    writing its log row; for that moment its folder has no published attempt. A finding
    must therefore still be there on a second look, seconds later, to count.
    """
    from etl.reconcile import reconcile

    result = reconcile(settings.state_url, settings.drop_dir)
    if not result.ok:
        log.warning(
            "audit: %d finding(s); looking again in %g s in case a delivery is mid-publish",
            len(result.findings),
            AUDIT_RECHECK_SECONDS,
        )
        time.sleep(AUDIT_RECHECK_SECONDS)
        result = reconcile(settings.state_url, settings.drop_dir)
    for line in result.report().splitlines():
        (log.info if result.ok else log.error)("audit: %s", line)
    return result


def pseudonym_key() -> bytes:
    """The pseudonymisation key in a task: LEVERANSE_PSEUDONYM_KEY, else an Airflow connection.

    The environment wins where it is set, as for the command line. Otherwise the key is the
    password of the connection ``leveranse_pseudonym``, which Airflow resolves from a
    secrets backend, an ``AIRFLOW_CONN_LEVERANSE_PSEUDONYM`` variable or its metadata
    database, so a deployment can keep the key in its secret store. Whichever it is, Airflow
    is told to mask it in every log line; it reaches ``deliver`` as an argument, never
    through XCom or Params, and an error names the source, never the value.
    """
    secret, source = os.environ.get(KEY_VARIABLE), KEY_VARIABLE
    if not secret:
        secret = _connection_password(KEY_CONNECTION)
        source = f"the password of the Airflow connection {KEY_CONNECTION}"
    if secret:
        mask_secret(secret)
    return checked_key(secret, source)


def _connection_password(conn_id: str) -> str | None:
    """The connection's password; a connection that does not exist means no key."""
    try:
        return Connection.get(conn_id).password
    except AirflowNotFoundException:
        raise PseudonymKeyMissing(
            f"{KEY_VARIABLE} is not set and Airflow has no connection {conn_id}; {REFUSAL}"
        ) from None


def _key_if_needed(settings: Settings, code: str) -> bytes | None:
    """The key for a register whose spec pseudonymises; None for the others.

    A register that never pseudonymises must run whether or not a key is configured, and
    the key is not fetched (nor masked, nor held) where nothing uses it.
    """
    if not find_spec(settings.specs_dir, code).pseudonymises:
        return None
    return pseudonym_key()


def _not_retryable() -> tuple[type[BaseException], ...]:
    """Errors a retry cannot fix; imported at run time to keep pandas and GX out of parsing.

    Everything else is retried: database errors, a stale reservation copy (the next
    synchronisation may land within the back-off), another run holding the register's lock,
    and anything unforeseen (a retry costs minutes; a missed night costs a manual rerun).
    """
    from etl.validate import ValidationFailed

    # ValueError covers SpecError and a period deliver() finds empty (from >= its default
    # end, today): the same input fails the same way however often it is tried.
    return ValueError, ValidationFailed, PseudonymKeyMissing


def _report(registers: list[dict[str, Any]], results: list[list[dict[str, Any]]]) -> list[str]:
    """Log one line per register; return the codes that were not delivered."""
    # Slice each mapped task's results: one request for what exists. Iterating would
    # probe one index past the end and log a misleading "XCom not found" error.
    delivered = {r["registry"]: r for batch in results for r in batch[:]}
    missing = []
    for register in registers:
        code = register["code"]
        result = delivered.get(code)
        if result is None:
            missing.append(code)
            log.error(
                "%-12s FAILED: see deliver_priority_%d [%s]",
                code,
                register["priority"],
                code,
            )
            continue
        period = result["period"]  # None when nothing was due
        log.info(
            "%-12s %-11s %s rows=%d persons=%d withdrawals=%d path=%s",
            code,
            result["status"],
            "-" if period is None else f"{period['from']}..{period['to']}",
            result["row_count"],
            result["person_count"],
            result.get("withdrawals", 0),
            result["path"] or "-",
        )
    return missing


def delivery_dag(delivery: str, dag_id: str, doc_md: str) -> DAG:
    """The nightly DAG of one delivery type (see the module docstring for its shape).

    ``doc_md`` is the DAG file's module docstring: the UI shows it as the DAG's
    documentation, and its first line as the description in the DAG list.
    """
    if delivery not in DELIVERY_TYPES:
        raise ValueError(f"delivery must be one of {', '.join(DELIVERY_TYPES)}, not {delivery!r}")
    alias = drops_alias(delivery)

    def on_failure(context: Context) -> None:
        alert_on_failure(delivery, context)

    def on_summary_failure(context: Context) -> None:
        """The summary alerts for its audit and for unusable spec files, which no register
        task stands for; failed registers alerted from their own tasks."""
        if isinstance(context.get("exception"), (AuditMismatch, SpecsUnusable)):
            alert_on_failure(delivery, context)

    @dag(
        dag_id=dag_id,
        description=doc_md.strip().splitlines()[0],
        doc_md=doc_md,
        schedule=CronDataIntervalTimetable(SCHEDULE, timezone="UTC"),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["leveranse", delivery],
        default_args={"owner": "leveranse"},
        params=_params(delivery),
    )
    def delivery_pipeline() -> None:
        @task(on_failure_callback=on_failure)
        def list_registers() -> dict[str, Any]:
            """This type's registers (or the Params' selection), highest priority first, and
            the spec files that could not be used.

            A broken spec file stops only its own register: the others are delivered, and
            the summary fails the run naming the file. Asking for a register whose file is
            broken fails here, with the file's error.
            """
            context = get_current_context()
            folder = read_specs(Settings.resolve().specs_dir)
            spec_errors = [str(error) for error in folder.errors_for(delivery)]
            for error in spec_errors:
                log.error("spec file not used: %s", error)
            own = {c: spec for c, spec in folder.specs.items() if spec.delivery == delivery}
            wanted = list(dict.fromkeys(context["params"]["registers"] or [])) or sorted(own)
            blocked = [code for code in wanted if code in folder.blocked]
            if blocked:
                raise AirflowFailException(
                    "; ".join(f"{code}: {folder.blocked[code]}" for code in blocked)
                )
            unknown = [code for code in wanted if code not in own]
            if unknown:
                others = {c: folder.specs[c].delivery for c in unknown if c in folder.specs}
                detail = "; ".join(f"{c} is a {d} register" for c, d in others.items())
                raise AirflowFailException(
                    f"Param registers names {', '.join(unknown)}, not {delivery} register(s) "
                    f"({detail or 'no spec has that code'}); "
                    f"the {delivery} registers are: {', '.join(sorted(own)) or 'none'}"
                )
            start, end, as_of = run_window(context)
            period = f"{start or 'default'} .. {end or 'default'}"
            log.info(
                "%s: %d register(s), period %s, reservations as of %s",
                delivery,
                len(wanted),
                period,
                as_of or "now",
            )
            registers = [{"code": code, "priority": own[code].priority} for code in wanted]
            return {
                "registers": sorted(registers, key=lambda r: (r["priority"], r["code"])),
                "spec_errors": spec_errors,
            }

        @task
        def registers_of_class(listing: dict[str, Any], priority: int) -> list[dict[str, Any]]:
            """One priority class of the list: what one mapped delivery task expands over."""
            return [r for r in listing["registers"] if r["priority"] == priority]

        @task(
            map_index_template="{{ task.op_kwargs['register']['code'] }}",
            retries=3,
            retry_delay=timedelta(minutes=2),
            retry_exponential_backoff=2.0,  # a multiplier on 3.3: True would mean 1.0, no back-off
            max_retry_delay=timedelta(minutes=30),
            weight_rule=WeightRule.ABSOLUTE,
            outlets=[alias],
            on_failure_callback=on_failure,
        )
        def deliver_register(register: dict[str, Any]) -> dict[str, Any]:
            """Deliver one register for the run's period; return paths and counts.

            A new drop version emits the register's asset event; an unchanged rerun or a
            period with nothing due publishes nothing and emits none.
            """
            from etl.deliver import deliver

            code = register["code"]
            context = get_current_context()
            start, end, as_of = register_window(context, code)
            settings = Settings.resolve()
            try:
                key = _key_if_needed(settings, code)
                result = deliver(settings, code, start, end, as_of, pseudonym_key=key)
            except _not_retryable() as exc:
                raise AirflowFailException(f"{code}: not retried: {one_line(exc)}") from None
            except Exception as exc:
                # Where it failed, without what it failed on: frames hold no values.
                log.error(
                    "%s: failed in\n%s", code, "".join(traceback.format_tb(exc.__traceback__))
                )
                raise DeliveryAttemptFailed(
                    f"{code}: {type(exc).__name__}: {one_line(exc)} (retried with back-off)"
                ) from None
            outcome = result.to_dict()
            if result.status == "published" and result.path is not None:
                context["outlet_events"][alias].add(
                    drop_asset(code, delivery),
                    extra={
                        "folder": result.path.name,
                        "version": result.version,
                        "period": outcome["period"],
                    },
                )
            return outcome

        @task(trigger_rule=TriggerRule.ALL_DONE, on_failure_callback=on_summary_failure)
        def summary(listing: dict[str, Any] | None, results: list[list[dict[str, Any]]]) -> None:
            """One line per register, then the audit; fail the run if either found a fault
            or a spec file could not be used."""
            registers = None if listing is None else listing["registers"]
            missing = [] if registers is None else _report(registers, results)
            audit = audit_drops(Settings.resolve())
            if not audit.ok:
                raise AuditMismatch(
                    f"leveranse audit --check: {len(audit.findings)} finding(s), the drops and "
                    "the disclosure log disagree (each finding is in this task's log)"
                    + (f"; also not delivered: {', '.join(missing)}" if missing else "")
                )
            if registers is None:
                raise AirflowFailException("no register list: see the task list_registers")
            failed = (
                f"{len(missing)} of {len(registers)} {delivery} register(s) not delivered: "
                f"{', '.join(missing)}"
                if missing
                else ""
            )
            if listing["spec_errors"]:
                raise SpecsUnusable(
                    f"{len(listing['spec_errors'])} spec file(s) not used, their registers not "
                    f"delivered: {' | '.join(listing['spec_errors'])}"
                    + (f"; also {failed}" if failed else "")
                )
            if failed:
                raise AirflowFailException(failed)

        registers = list_registers()
        results = []
        for priority in PRIORITY_CLASSES:
            of_class = registers_of_class.override(task_id=f"priority_{priority}_registers")(
                registers, priority
            )
            results.append(
                deliver_register.override(
                    task_id=f"deliver_priority_{priority}",
                    priority_weight=len(PRIORITY_CLASSES) + 1 - priority,
                ).expand(register=of_class)
            )
        summary(registers, results)

    return delivery_pipeline()


def _known_registers() -> dict[str, tuple[str, str]]:
    """Every spec's drop asset name -> (code, delivery): what the notices DAG listens to.

    Read when the DAG file is parsed, like the trigger form's suggestions: a new register
    is listened to once the DAG processor has parsed its spec. A broken spec must not
    break the DAG: it listens to the other registers and says which file it skipped.
    """
    folder = read_specs(Settings.resolve().specs_dir)
    for error in dict.fromkeys(str(error) for error, _, _ in folder.errors):
        log.warning("drop notices skip a spec file: %s", error)
    return {
        drop_asset(code, spec.delivery).name: (code, spec.delivery)
        for code, spec in sorted(folder.specs.items())
    }


def notices_dag(dag_id: str, doc_md: str) -> DAG:
    """The DAG scheduled on every register's drop asset: one pick-up notice per new drop.

    A run may be triggered by several events (drops published while it was queued); each
    event gets its notice. The event names the drop folder only; what the notice says is
    read from that folder's manifest (``etl.notify.build_notice``).
    """
    registers = _known_registers()
    assets = [drop_asset(code, delivery) for code, delivery in registers.values()]

    @dag(
        dag_id=dag_id,
        description=doc_md.strip().splitlines()[0],
        doc_md=doc_md,
        schedule=AssetAny(*assets) if assets else None,
        start_date=START_DATE,
        catchup=False,
        tags=["leveranse", "notices"],
        default_args={"owner": "leveranse"},
    )
    def notices_pipeline() -> None:
        @task(on_failure_callback=alert_on_notice_failure)
        def write_notices() -> list[str]:
            """Write the notice of each drop this run was triggered by; return their paths."""
            events = get_current_context()["triggering_asset_events"]
            drop_dir = Settings.resolve().drop_dir
            written, failed = [], []
            # Events reached through an alias are listed under the alias too: take assets only.
            for asset in (key for key in events if isinstance(key, Asset)):
                if asset.name not in registers:
                    log.warning("%s is not a register's drop asset: no notice", asset.name)
                    continue
                code, delivery = registers[asset.name]
                for event in events[asset]:
                    folder = str(event.extra.get("folder"))
                    try:
                        path = write_notice(drop_dir, code, delivery, folder)
                    except (OSError, ValueError, KeyError) as exc:
                        failed.append(f"{code} {delivery} {folder}: {one_line(exc)}")
                        continue
                    log.info("%s %s %s: notice %s", code, delivery, folder, path)
                    written.append(str(path))
            if not written and not failed:
                log.info("no drop events in this run (a manual run): no notice written")
            if failed:
                raise AirflowFailException("no notice for: " + "; ".join(failed))
            return written

        write_notices()

    return notices_pipeline()
