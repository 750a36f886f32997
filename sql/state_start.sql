-- A delivery attempt begins: what is about to be disclosed, to whom and on which basis.
INSERT INTO disclosure_log (
    attempt_id, registry, delivery, period_from, period_to, legal_basis, spec_sha256,
    variables, reservations_as_of, status, software_version, started_at
) VALUES (
    :attempt_id, :registry, :delivery, :period_from, :period_to, :legal_basis, :spec_sha256,
    :variables, :reservations_as_of, 'running', :software_version, :started_at
)
