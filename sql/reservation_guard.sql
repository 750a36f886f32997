-- The independent guard of validation: every active reservation that could keep a person
-- out of a delivery to :registry, read on its own, not from the delivery's query, so a
-- mistake in sql/selection.sql cannot hide itself. The rules are applied in etl/validate.py.
SELECT r.fnr, r.registry, r.scope
FROM reservation r
-- Active at T, half-open: :active_before is T + 1 µs (etl.reservations.active_at).
WHERE r.registered_at < :active_before
  AND (r.withdrawn_at IS NULL OR r.withdrawn_at >= :active_before)
  AND ((r.registry = :registry AND r.scope = 'OPT_OUT')
       OR (r.registry = 'KPR' AND r.scope = 'NO_PURPOSE2')
       OR (r.registry IN ('NPR', 'KPR') AND r.scope = 'NO_FNR'))
