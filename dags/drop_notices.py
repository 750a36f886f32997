"""Drop notices: a pick-up notice for each new drop, written when the drop is published.

Every delivery DAG (`define_population`, `complement_information`, `new_information`)
emits an Airflow asset event when it publishes a new drop version for a register: one asset
per register and delivery type, named `drop/<CODE>/<delivery>` (URI
`x-leveranse://drops/<CODE>/<delivery>`; see the Assets page). This DAG is scheduled on all
of them and, for each event, writes `<drop-dir>/_notices/<CODE>/<delivery>_<folder>.json`:
the drop folder, the period, the version and the folder it supersedes, and each file's name,
size and SHA-256, read from the drop's `manifest.json`. A notice never holds data.

A rerun that changed nothing publishes nothing, so it emits no event and gets no notice. A
manual run of this DAG has no events and writes nothing.

**Schedule.** On any register's drop asset; registers are read from the specs when this
file is parsed, so a new register is listened to after the DAG processor's next parse.

**Failures.** A drop that cannot be described (its folder or manifest gone, a file of
another size than its manifest says) fails the task and names it, and an alert goes out as
for a failed delivery (`LEVERANSE_ALERT_EMAIL`; always to the task log); the other events of
the run still get their notices.
"""

from etl.airflow_dag import notices_dag

dag = notices_dag("drop_notices", __doc__)
