"""Define population: every qualifying NPR and KPR record of the period, nightly.

Registers whose spec says `delivery: population` (today **PHV**, the national quality
register for adults with psychotic disorders) get every record received in the period that
matches their selection, minus persons kept out by an active reservation. Each register
picks up `<drop-dir>/<CODE>/population/<from>_<to>/` with one Parquet file and
`manifest.json`; a run that fails validation publishes nothing and keeps its evidence under
`<drop-dir>/_quarantine/`.

**Schedule.** 02:00 UTC every night; a run delivers its data interval, the previous UTC day
(records received in `[data_interval_start, data_interval_end)`). Registers go in priority
order: `deliver_priority_1` first ... `deliver_priority_4` last; each mapped instance is
labelled with its register code.

**Params** (Trigger DAG → form; all optional):
- `registers`: register codes to deliver; empty (or null) means every population register.
- `period_from`, `period_to`: ISO dates, `[from, to)`; each overrides its end of the
  data interval. A run without a data interval and without them delivers from the end of the
  last successful delivery to today.
- `reservations_as_of`: apply reservations as they stood at this UTC instant (default: now).
- `full_refresh`: deliver each register's whole lookback window (`lookback_days` of its
  spec) up to `period_to` (or the data interval's end, or today) as one drop; leave
  `period_from` empty. For a register that lost data, changed its spec, or must re-key.

**Rerun one register** for a past period: Trigger DAG with `registers = ["PHV"]`,
`period_from = 2025-01-01`, `period_to = 2025-02-01`. A rerun of unchanged data writes
nothing; changed data is published beside the old drop as `<from>_<to>.v2`. To redo a failed
night as it was, clear that night's run instead (same data interval).

**Failures.** Database errors and a stale reservation copy are retried three times with
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

dag = delivery_dag("population", "define_population", __doc__)
