-- PostgreSQL only (SQLite serialises writers by itself). Two loads at once would each delete
-- only the rows committed before they began, and both new lists would stay. This mode makes
-- loads wait for each other but lets deliveries go on reading. Held until commit.
LOCK TABLE register_patient IN SHARE ROW EXCLUSIVE MODE
