-- Define population (CONTRACT.md section 4): every qualifying record of the period.
{{ selection }},
eligible AS (
    SELECT f.*
    FROM flagged f
    JOIN qualifying q ON q.source = f.source AND q.record_id = f.record_id
)
{{ output }}
