-- The end of every delivery query: first one row per reason (kind 0) counting the eligible
-- records that a reservation keeps out, then (kind 1) the records to deliver, in a stable
-- order so a rerun writes the same bytes. Left-out records never leave the database: only
-- their count does. The column lists are rendered by etl/extract.py from one Python tuple
-- per delivery type, so both branches always name the same columns in the same order.
SELECT 0 AS kind, exclusion AS reason, COUNT(*) AS excluded_records{{ padding }}
FROM eligible
WHERE exclusion IS NOT NULL
GROUP BY exclusion
UNION ALL
SELECT 1, NULL, NULL{{ columns }}
FROM eligible
WHERE exclusion IS NULL
ORDER BY {{ order }}
