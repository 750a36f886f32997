"""Complement information: NPR data on a register's own patients and on those it is missing.

Registers whose spec says `delivery: complement` (today **PARKINSON**, Norsk
Parkinsonregister) get every record received in the period that matches their selection,
each marked `registered` (the person is on the register's list, loaded with
`leveranse load-list`) or `missing`, minus persons kept out by an active reservation. Each
register picks up `<drop-dir>/<CODE>/complement/<from>_<to>/` with one Parquet file,
`<CODE>_withdrawals_<from>_<to>.parquet` when listed persons have reserved since (the
register deletes them), and `manifest.json` with the period's coverage. The coverage page
`<drop-dir>/_reports/<CODE>/coverage.html` is refreshed after each delivery. A run that
fails validation publishes nothing and keeps its evidence under `<drop-dir>/_quarantine/`.

**Schedule.** 02:00 UTC every night; a run delivers its data interval, the previous UTC day.
Registers go in priority order (`deliver_priority_1` first); each mapped instance is
labelled with its register code.

**Params** (Trigger DAG → form; all optional): `registers` (codes; empty or null means
every complement register), `period_from` / `period_to` (ISO dates, `[from, to)`),
`reservations_as_of` (apply reservations as they stood at this UTC instant), and
`full_refresh` (each register's whole lookback window up to `period_to`, or the data
interval's end, or today, as one drop; leave `period_from` empty).

**Rerun one register** for a past period: Trigger DAG with `registers = ["PARKINSON"]` and
the period. Unchanged data writes nothing; changed data (a reservation arrived, the list
changed) is published beside the old drop as `<from>_<to>.v2`.

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

dag = delivery_dag("complement", "complement_information", __doc__)
