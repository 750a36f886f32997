"""New information: events after a register's cases, and cases it has not registered.

Registers whose spec says `delivery: new_information` (today **NORKAR**, Norsk
karkirurgisk register) get two kinds of rows from NPR:
- `follow_up`: for each case on the register's list (loaded with `leveranse load-list`), every
  record received in the period with a follow-up code (for NORKAR: lower-limb amputations)
  dated after the case's index date and at most `window_days` after it, one row per case and
  record, with the case's `case_id`;
- `new_case`: every record of the period that qualifies by the register's selection (for
  NORKAR: open vascular surgery in NCSP chapter P or endovascular NCRP codes) for which the
  list has no case of that person within `new_case_match_days`.
Persons kept out by an active reservation get no rows; listed persons who reserved are named
in `<CODE>_withdrawals_<from>_<to>.parquet`. Each register picks up
`<drop-dir>/<CODE>/new_information/<from>_<to>/`; a run that fails validation publishes
nothing and keeps its evidence under `<drop-dir>/_quarantine/`.

**Schedule.** 02:00 UTC every night; a run delivers its data interval, the previous UTC day.
Registers go in priority order (`deliver_priority_1` first); each mapped instance is
labelled with its register code.

**Params** (Trigger DAG → form; all optional): `registers` (codes; empty or null means
every new-information register), `period_from` / `period_to` (ISO dates, `[from, to)`),
`reservations_as_of` (apply reservations as they stood at this UTC instant), and
`full_refresh` (each register's whole lookback window up to `period_to`, or the data
interval's end, or today, as one drop; leave `period_from` empty).

**Rerun one register** for a past period: Trigger DAG with `registers = ["NORKAR"]` and the
period. Unchanged data writes nothing; changed data is published beside the old drop as
`<from>_<to>.v2`.

**Failures.** Database errors and a stale reservation copy are retried with
exponential back-off; a bad spec, failed validation or a missing pseudonymisation key fail
at once. A register whose spec pseudonymises takes the key from `LEVERANSE_PSEUDONYM_KEY`,
else from the password of the Airflow connection `leveranse_pseudonym`. The `summary` task
lists every register's outcome and fails the run if any failed. A spec file that fails
validation stops only its own register: the others are delivered, and `summary` fails the
run and alerts, naming the file, key and value.

**Asset events, alerts, audit.** Each new drop emits the asset event
`drop/<CODE>/<delivery>` (consumed by `drop_notices`; an unchanged rerun emits none); a
register that fails for good sends an alert (task log always, mail when
`LEVERANSE_ALERT_EMAIL` is set); the `summary` task ends with `leveranse audit --check` and
fails the run on any mismatch.
"""

from etl.airflow_dag import delivery_dag

dag = delivery_dag("new_information", "new_information", __doc__)
