-- Define population (CONTRACT.md section 4): every qualifying record of the period.
-- The first rows (kind 0) count the records left out by reason; the rest (kind 1) are the
-- records to deliver, in a stable order so a rerun writes the same bytes. Left-out records
-- never leave the database: only their count does.
{{ selection }}
SELECT 0 AS kind, exclusion, COUNT(*) AS excluded_records,
       NULL AS source, NULL AS record_id, NULL AS fnr, NULL AS sex, NULL AS birth_year,
       NULL AS municipality, NULL AS institution_id, NULL AS health_trust, NULL AS sector,
       NULL AS specialty, NULL AS care_level, NULL AS urgency, NULL AS start_date,
       NULL AS end_date, NULL AS discharge_status, NULL AS service_type, NULL AS received_at,
       NULL AS codes, NULL AS no_fnr
FROM flagged
WHERE exclusion IS NOT NULL
GROUP BY exclusion
UNION ALL
SELECT 1, NULL, NULL,
       source, record_id, fnr, sex, birth_year, municipality, institution_id, health_trust,
       sector, specialty, care_level, urgency, start_date, end_date, discharge_status,
       service_type, received_at, codes, no_fnr
FROM flagged
WHERE exclusion IS NULL
ORDER BY kind, source, record_id
