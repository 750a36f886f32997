-- Remove one register's earlier patient/case list (leveranse load-list). Runs in the same
-- transaction as sql/register_list_insert.sql, so a failed load keeps the earlier list.
DELETE FROM register_patient WHERE registry = :registry
