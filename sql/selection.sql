-- The records of one register and period that qualify by the spec (or, for new
-- information, carry a follow-up code), each flagged with the reservation that keeps it out
-- (if any). Shared by every delivery type: each type's file includes this text, adds a
-- `delivered` CTE with its own rows and columns, and ends with sql/output.sql.
--
-- Runs unchanged on PostgreSQL and SQLite (SQLite gets regexp_replace, date_part and
-- string_agg from etl/source.py). Every value is a bound parameter; the criterion rows are
-- rendered as placeholders by etl/extract.py.
--
-- criterion: the spec's code patterns (kind icd10, icpc2, ncsp, ncrp; a code matches when
-- its first len(lo) characters are >= lo and its first len(hi) characters <= hi; negate = 1
-- removes matches) and its sectors (kind sector, in lo).
WITH criterion (kind, lo, hi, negate) AS (
    VALUES ('-', '-', '-', 0){{ criteria }}
),
-- The period's NPR records; `selected` says whether the spec's sectors and min_age admit
-- one to the selection. Follow-ups (new_information) are every NPR record of the period
-- with a follow-up code, whatever its sector or the patient's age (CONTRACT.md section 4),
-- so with follow-up criteria the records the selection's filters leave out stay here too.
npr_period AS MATERIALIZED (
    SELECT p.*
    FROM (
        SELECT e.*,
               CASE WHEN (:any_sector = 1
                          OR e.sector IN (SELECT c.lo FROM criterion c WHERE c.kind = 'sector'))
                     AND (CAST(:min_age AS INTEGER) IS NULL
                          OR date_part('year', e.start_date) - e.birth_year
                             >= CAST(:min_age AS INTEGER))
                    THEN 1 ELSE 0 END AS selected
        FROM npr_episode e
        WHERE :use_npr = 1
          AND e.received_at >= :period_start AND e.received_at < :period_end
    ) p
    WHERE p.selected = 1 OR :with_follow_up = 1
),
kpr_period AS MATERIALIZED (
    SELECT k.*, 1 AS selected
    FROM kpr_contact k
    WHERE :use_kpr = 1
      AND k.received_at >= :period_start AND k.received_at < :period_end
      AND (CAST(:min_age AS INTEGER) IS NULL
           OR date_part('year', k.contact_date) - k.birth_year >= CAST(:min_age AS INTEGER))
),
-- Every code of the period's records, normalised (upper case, A-Z and 0-9 only) and tagged:
-- part D diagnosis or P procedure, the code system as a criterion kind, main or not, the
-- code's date (a procedure's procedure_date, else the record's start date), and whether the
-- selection's filters admit its record. Used only to decide which records qualify (or
-- carry a follow-up code). Materialised on purpose: PostgreSQL estimates one row for the
-- filtered criterion list and may loop over the criteria outside this scan, which
-- recomputed, not re-read, would repeat these joins once per criterion (a night at 10M
-- episodes took 1.8-2.1 s instead of 0.8-0.9 s).
record_code AS MATERIALIZED (
    SELECT 'NPR' AS source, d.episode_id AS record_id, 'D' AS part, 'icd10' AS kind,
           CASE WHEN d.is_main = TRUE THEN 1 ELSE 0 END AS is_main,
           regexp_replace(upper(d.code), '[^A-Z0-9]', '', 'g') AS code,
           e.start_date AS code_date, e.selected AS selected
    FROM npr_diagnosis d JOIN npr_period e ON e.episode_id = d.episode_id
    WHERE d.code IS NOT NULL
    UNION ALL
    SELECT 'NPR', p.episode_id, 'P', lower(p.code_system), 0,
           regexp_replace(upper(p.code), '[^A-Z0-9]', '', 'g'),
           COALESCE(p.procedure_date, e.start_date), e.selected
    FROM npr_procedure p JOIN npr_period e ON e.episode_id = p.episode_id
    WHERE p.code IS NOT NULL
    UNION ALL
    SELECT 'KPR', d.contact_id, 'D', lower(replace(d.code_system, '-', '')),
           CASE WHEN d.is_main = TRUE THEN 1 ELSE 0 END,
           regexp_replace(upper(d.code), '[^A-Z0-9]', '', 'g'),
           k.contact_date, k.selected
    FROM kpr_diagnosis d JOIN kpr_period k ON k.contact_id = d.contact_id
    WHERE d.code IS NOT NULL
),
-- The codes that make their record qualify by the spec's selection, with their dates.
qualifying_code AS MATERIALIZED (
    SELECT DISTINCT rc.source, rc.record_id, rc.code_date
    FROM record_code rc
    JOIN criterion inc
      ON inc.kind = rc.kind AND inc.negate = 0
     AND substr(rc.code, 1, length(inc.lo)) >= inc.lo
     AND substr(rc.code, 1, length(inc.hi)) <= inc.hi
    WHERE rc.selected = 1
      AND (rc.part = 'P' OR :main_only = 0 OR rc.is_main = 1)
      AND NOT EXISTS (
          SELECT 1 FROM criterion exc
          WHERE exc.kind = rc.kind AND exc.negate = 1
            AND substr(rc.code, 1, length(exc.lo)) >= exc.lo
            AND substr(rc.code, 1, length(exc.hi)) <= exc.hi)
),
qualifying AS (
    SELECT DISTINCT source, record_id FROM qualifying_code
),
-- new_information only (no follow_up criteria exist otherwise): the NPR procedure codes of
-- the spec's follow-up set, with their dates.
follow_up_code AS MATERIALIZED (
    SELECT DISTINCT rc.record_id, rc.code_date
    FROM record_code rc
    JOIN criterion inc
      ON inc.kind = 'follow_up' AND inc.negate = 0
     AND substr(rc.code, 1, length(inc.lo)) >= inc.lo
     AND substr(rc.code, 1, length(inc.hi)) <= inc.hi
    WHERE rc.source = 'NPR' AND rc.part = 'P' AND rc.kind = 'ncsp'
      AND NOT EXISTS (
          SELECT 1 FROM criterion exc
          WHERE exc.kind = 'follow_up' AND exc.negate = 1
            AND substr(rc.code, 1, length(exc.lo)) >= exc.lo
            AND substr(rc.code, 1, length(exc.hi)) <= exc.hi)
),
candidate AS (
    SELECT source, record_id FROM qualifying
    UNION
    SELECT 'NPR', record_id FROM follow_up_code
),
-- All codes of a candidate record, read by primary key for the candidates only (a few
-- per cent of the period's records) rather than picked out of every code of the period
-- again, and normalised then; record_codes puts them in one text 'part:kind:seq:main:code'
-- separated by spaces, which etl/minimise.py splits into diagnoses, procedures and
-- main_diagnosis.
candidate_code AS (
    SELECT c.source, c.record_id, 'D' AS part, 'icd10' AS kind, d.seq AS seq,
           CASE WHEN d.is_main = TRUE THEN 1 ELSE 0 END AS is_main, d.code AS code
    FROM candidate c JOIN npr_diagnosis d ON d.episode_id = c.record_id
    WHERE c.source = 'NPR' AND d.code IS NOT NULL
    UNION ALL
    SELECT c.source, c.record_id, 'P', lower(p.code_system), p.seq, 0, p.code
    FROM candidate c JOIN npr_procedure p ON p.episode_id = c.record_id
    WHERE c.source = 'NPR' AND p.code IS NOT NULL
    UNION ALL
    SELECT c.source, c.record_id, 'D', lower(replace(d.code_system, '-', '')), d.seq,
           CASE WHEN d.is_main = TRUE THEN 1 ELSE 0 END, d.code
    FROM candidate c JOIN kpr_diagnosis d ON d.contact_id = c.record_id
    WHERE c.source = 'KPR' AND d.code IS NOT NULL
),
record_codes AS (
    SELECT cc.source, cc.record_id,
           string_agg(cc.part || ':' || cc.kind || ':' || CAST(cc.seq AS VARCHAR(6)) || ':'
                      || CAST(cc.is_main AS VARCHAR(1)) || ':'
                      || regexp_replace(upper(cc.code), '[^A-Z0-9]', '', 'g'), ' ') AS codes
    FROM candidate_code cc
    GROUP BY cc.source, cc.record_id
),
record AS (
    SELECT 'NPR' AS source, e.episode_id AS record_id, e.fnr, e.sex, e.birth_year,
           e.municipality, e.institution_id, e.health_trust, e.sector, e.specialty,
           e.care_level, e.urgency, e.start_date, e.end_date, e.discharge_status,
           CAST(NULL AS SMALLINT) AS service_type, e.received_at, rcs.codes
    FROM npr_period e
    JOIN record_codes rcs ON rcs.source = 'NPR' AND rcs.record_id = e.episode_id
    UNION ALL
    SELECT 'KPR', k.contact_id, k.fnr, k.sex, k.birth_year,
           k.municipality, NULL, NULL, NULL, NULL,
           NULL, NULL, k.contact_date, k.contact_date, NULL,
           k.service_type, k.received_at, rcs.codes
    FROM kpr_period k
    JOIN record_codes rcs ON rcs.source = 'KPR' AND rcs.record_id = k.contact_id
),
-- Active reservations that matter to this register, one row per person (CONTRACT.md
-- section 1): active at T (reservations_as_of), and either an OPT_OUT for this register (when the spec
-- honours it), KPR's NO_PURPOSE2, or a source's NO_FNR.
reserved AS (
    SELECT r.fnr,
           MAX(CASE WHEN r.scope = 'OPT_OUT' THEN 1 ELSE 0 END) AS opt_out,
           MAX(CASE WHEN r.scope = 'NO_PURPOSE2' THEN 1 ELSE 0 END) AS no_purpose2,
           MAX(CASE WHEN r.registry = 'NPR' AND r.scope = 'NO_FNR' THEN 1 ELSE 0 END) AS npr_no_fnr,
           MAX(CASE WHEN r.registry = 'KPR' AND r.scope = 'NO_FNR' THEN 1 ELSE 0 END) AS kpr_no_fnr
    FROM reservation r
    -- Active at T, half-open: :active_before is T + 1 µs (etl.reservations.active_at).
    WHERE r.registered_at < :active_before
      AND (r.withdrawn_at IS NULL OR r.withdrawn_at >= :active_before)
      AND ((r.registry = :registry AND r.scope = 'OPT_OUT' AND :honour_opt_out = 1)
           OR (r.registry = 'KPR' AND r.scope = 'NO_PURPOSE2')
           OR (r.registry IN ('NPR', 'KPR') AND r.scope = 'NO_FNR'))
    GROUP BY r.fnr
),
flagged AS MATERIALIZED (
    SELECT rec.*,
           CASE
               WHEN res.opt_out = 1 THEN 'opt_out'
               WHEN rec.source = 'KPR' AND res.no_purpose2 = 1 THEN 'no_purpose2'
               WHEN :pseudonymise = 0
                    AND ((rec.source = 'NPR' AND res.npr_no_fnr = 1)
                         OR (rec.source = 'KPR' AND res.kpr_no_fnr = 1)) THEN 'no_fnr'
           END AS exclusion,
           CASE
               WHEN (rec.source = 'NPR' AND res.npr_no_fnr = 1)
                    OR (rec.source = 'KPR' AND res.kpr_no_fnr = 1) THEN 1
               ELSE 0
           END AS no_fnr
    FROM record rec
    LEFT JOIN reserved res ON res.fnr = rec.fnr
)
