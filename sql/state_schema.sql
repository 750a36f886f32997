-- The state database: one disclosure-log row per delivery attempt. The delivery state
-- (where the next default period starts) is derived from this log; there is no second
-- table to keep in step with it. The same text runs on SQLite and PostgreSQL.

CREATE TABLE IF NOT EXISTS disclosure_log (
    attempt_id VARCHAR(36) PRIMARY KEY,
    registry VARCHAR(32) NOT NULL,
    delivery VARCHAR(32) NOT NULL,
    period_from DATE NOT NULL,
    period_to DATE NOT NULL,
    legal_basis TEXT NOT NULL,
    spec_sha256 VARCHAR(64) NOT NULL,
    variables TEXT NOT NULL,
    reservations_as_of TIMESTAMP NOT NULL,
    status VARCHAR(24) NOT NULL
        CHECK (status IN ('running', 'published', 'unchanged', 'validation_failed', 'failed')),
    row_count BIGINT,
    person_count BIGINT,
    excluded TEXT,
    coverage TEXT,
    files TEXT,
    drop_path TEXT,
    version INTEGER,
    reason TEXT,
    software_version VARCHAR(32) NOT NULL,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP
);

CREATE INDEX IF NOT EXISTS disclosure_log_delivery
    ON disclosure_log (registry, delivery, status, period_to);
