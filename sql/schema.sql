-- Source tables as agreed in CONTRACT.md section 1. The same text runs on SQLite and
-- PostgreSQL. leveranse only creates them for synthetic data and tests: in production the
-- registers' own databases own these tables, and the indexes below are the ones the
-- delivery queries need (ask the DBA for them there).

CREATE TABLE IF NOT EXISTS npr_episode (
    episode_id BIGINT PRIMARY KEY,
    fnr VARCHAR(11) NOT NULL,
    sex SMALLINT,
    birth_year SMALLINT,
    municipality VARCHAR(4),
    institution_id VARCHAR(9),
    health_trust VARCHAR(64),
    sector VARCHAR(3),
    specialty VARCHAR(3),
    care_level SMALLINT,
    urgency SMALLINT,
    start_date DATE NOT NULL,
    end_date DATE,
    discharge_status SMALLINT,
    received_at TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS npr_diagnosis (
    episode_id BIGINT NOT NULL,
    seq SMALLINT NOT NULL,
    code VARCHAR(8),
    is_main BOOLEAN,
    PRIMARY KEY (episode_id, seq)
);

CREATE TABLE IF NOT EXISTS npr_procedure (
    episode_id BIGINT NOT NULL,
    seq SMALLINT NOT NULL,
    code VARCHAR(8),
    code_system VARCHAR(4),
    procedure_date DATE,
    PRIMARY KEY (episode_id, seq)
);

CREATE TABLE IF NOT EXISTS kpr_contact (
    contact_id BIGINT PRIMARY KEY,
    fnr VARCHAR(11) NOT NULL,
    sex SMALLINT,
    birth_year SMALLINT,
    municipality VARCHAR(4),
    service_type SMALLINT,
    contact_date DATE NOT NULL,
    received_at TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS kpr_diagnosis (
    contact_id BIGINT NOT NULL,
    seq SMALLINT NOT NULL,
    code VARCHAR(8),
    code_system VARCHAR(6),
    is_main BOOLEAN,
    PRIMARY KEY (contact_id, seq)
);

CREATE TABLE IF NOT EXISTS reservation (
    reservation_id BIGINT PRIMARY KEY,
    fnr VARCHAR(11) NOT NULL,
    registry VARCHAR(32) NOT NULL,
    scope VARCHAR(16) NOT NULL,
    registered_at TIMESTAMP NOT NULL,
    withdrawn_at TIMESTAMP
);

CREATE TABLE IF NOT EXISTS reservation_sync (
    synced_at TIMESTAMP NOT NULL
);

CREATE TABLE IF NOT EXISTS register_patient (
    registry VARCHAR(32) NOT NULL,
    fnr VARCHAR(11) NOT NULL,
    case_id VARCHAR(64),
    index_date DATE,
    received_at TIMESTAMP
);

CREATE INDEX IF NOT EXISTS npr_episode_received_at ON npr_episode (received_at);
CREATE INDEX IF NOT EXISTS kpr_contact_received_at ON kpr_contact (received_at);
CREATE INDEX IF NOT EXISTS reservation_fnr ON reservation (fnr);
CREATE INDEX IF NOT EXISTS register_patient_registry_fnr ON register_patient (registry, fnr);
-- One case id per register. load-list refuses a file that repeats one; this keeps any other
-- writer from adding one too, which would deliver each of that case's follow-ups twice.
CREATE UNIQUE INDEX IF NOT EXISTS register_patient_registry_case
    ON register_patient (registry, case_id);
