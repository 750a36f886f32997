-- One row of a register's new patient/case list, run once per row (executemany) in the
-- transaction that deleted the earlier list. received_at is naive UTC, as every timestamp.
INSERT INTO register_patient (registry, fnr, case_id, index_date, received_at)
VALUES (:registry, :fnr, :case_id, :index_date, :received_at)
