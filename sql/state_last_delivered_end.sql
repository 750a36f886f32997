-- Where the next default period of a register's delivery starts: the latest end of a
-- period that reached the register (published now, or already there unchanged).
SELECT MAX(period_to) AS period_to
FROM disclosure_log
WHERE registry = :registry
  AND delivery = :delivery
  AND status IN ('published', 'unchanged')
