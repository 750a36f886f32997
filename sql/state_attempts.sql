-- Every delivery attempt, oldest first, optionally of one register only.
SELECT attempt_id, registry, delivery, period_from, period_to, legal_basis, spec_sha256,
       variables, reservations_as_of, status, row_count, person_count, excluded, coverage,
       files, drop_path, version, reason, software_version, started_at, finished_at
FROM disclosure_log
WHERE CAST(:registry AS VARCHAR(32)) IS NULL
   OR registry = :registry
ORDER BY started_at, attempt_id
