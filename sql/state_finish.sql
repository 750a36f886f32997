-- A delivery attempt ends. Only a running attempt can be finished, so a logged outcome is
-- never rewritten.
UPDATE disclosure_log
SET status = :status,
    row_count = :row_count,
    person_count = :person_count,
    excluded = :excluded,
    coverage = :coverage,
    files = :files,
    drop_path = :drop_path,
    version = :version,
    reason = :reason,
    finished_at = :finished_at
WHERE attempt_id = :attempt_id
  AND status = 'running'
