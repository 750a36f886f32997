-- Persons on the register's list who have an active OPT_OUT for the register at T, so
-- the register deletes them (CONTRACT.md section 4): one row per person, with the earliest
-- registration among their active OPT_OUT rows.
SELECT r.fnr, MIN(r.registered_at) AS registered_at
FROM reservation r
WHERE r.registry = :registry
  AND r.scope = 'OPT_OUT'
  -- Active at T, half-open: :active_before is T + 1 µs (etl.reservations.active_at).
  AND r.registered_at < :active_before
  AND (r.withdrawn_at IS NULL OR r.withdrawn_at >= :active_before)
  AND EXISTS (
      SELECT 1 FROM register_patient rp WHERE rp.registry = :registry AND rp.fnr = r.fnr)
GROUP BY r.fnr
ORDER BY r.fnr
