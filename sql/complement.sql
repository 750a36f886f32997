-- Complement information (CONTRACT.md section 4): every qualifying record of the period,
-- marked `registered` when the person is on the register's list and `missing` otherwise.
{{ selection }},
eligible AS (
    SELECT f.*,
           CASE
               WHEN EXISTS (
                   SELECT 1 FROM register_patient rp
                   WHERE rp.registry = :registry AND rp.fnr = f.fnr) THEN 'registered'
               ELSE 'missing'
           END AS status
    FROM flagged f
    JOIN qualifying q ON q.source = f.source AND q.record_id = f.record_id
)
{{ output }}
