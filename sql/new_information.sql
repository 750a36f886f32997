-- New information (CONTRACT.md section 4).
-- follow_up: for each case on the register's list with an index_date, every NPR record of
--   the period with a follow-up code dated strictly after index_date and at most
--   :window_days after it; one row per case and record, dated by its earliest such code.
-- new_case: every qualifying record for which the list has no case of that person whose
--   index_date lies within :match_days of a qualifying code's date (either side).
-- Day arithmetic uses date_part('epoch', <date>), which is the same on both dialects and
-- independent of the session's time zone.
{{ selection }},
follow_up AS (
    SELECT fc.record_id, rp.case_id, rp.index_date, MIN(fc.code_date) AS event_date
    FROM follow_up_code fc
    JOIN npr_period e ON e.episode_id = fc.record_id
    JOIN register_patient rp ON rp.registry = :registry AND rp.fnr = e.fnr
    WHERE rp.index_date IS NOT NULL
      AND date_part('epoch', fc.code_date) > date_part('epoch', rp.index_date)
      AND date_part('epoch', fc.code_date)
          <= date_part('epoch', rp.index_date) + 86400 * CAST(:window_days AS INTEGER)
    GROUP BY fc.record_id, rp.case_id, rp.index_date
),
new_case AS (
    SELECT q.source, q.record_id, MIN(q.code_date) AS event_date
    FROM qualifying_code q
    WHERE NOT EXISTS (
        SELECT 1
        FROM qualifying_code same
        JOIN flagged r ON r.source = same.source AND r.record_id = same.record_id
        JOIN register_patient rp ON rp.registry = :registry AND rp.fnr = r.fnr
        WHERE same.source = q.source AND same.record_id = q.record_id
          AND rp.index_date IS NOT NULL
          AND abs(date_part('epoch', same.code_date) - date_part('epoch', rp.index_date))
              <= 86400 * CAST(:match_days AS INTEGER))
    GROUP BY q.source, q.record_id
),
eligible AS (
    SELECT f.*, 'follow_up' AS event, fu.case_id, fu.event_date, fu.index_date
    FROM flagged f
    JOIN follow_up fu ON f.source = 'NPR' AND fu.record_id = f.record_id
    UNION ALL
    SELECT f.*, 'new_case', NULL, nc.event_date, NULL
    FROM flagged f
    JOIN new_case nc ON nc.source = f.source AND nc.record_id = f.record_id
)
{{ output }}
