-- The register's own persons for a period: everyone on its list with a case whose
-- index_date falls in [:start_date, :end_date). Coverage counts those the period's NPR
-- records do not show as "only in the register".
SELECT DISTINCT rp.fnr
FROM register_patient rp
WHERE rp.registry = :registry
  AND rp.index_date >= :start_date
  AND rp.index_date < :end_date
