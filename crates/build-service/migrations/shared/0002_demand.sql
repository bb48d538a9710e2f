-- Governed build demand. Each build remembers who created it, so a caller's builds in flight can be
-- counted against its cap; `build_requests` is the audit trail of every request that created,
-- joined or was refused a build: one row per (build, identity, caller, client, outcome), counting
-- repeats, so a herd of identical requests costs one row, not thousands. Refusals carry build_id ''.
ALTER TABLE builds ADD COLUMN requested_by TEXT;

CREATE INDEX builds_in_flight_by_requester ON builds (requested_by) WHERE active_key IS NOT NULL;

CREATE TABLE build_requests (
    build_id   TEXT   NOT NULL,
    cache_key  TEXT   NOT NULL,
    principal  TEXT   NOT NULL,
    client     TEXT   NOT NULL,
    outcome    TEXT   NOT NULL CHECK (outcome IN ('created', 'joined', 'refused_cap', 'refused_limit')),
    first_at   BIGINT NOT NULL,
    last_at    BIGINT NOT NULL,
    requests   BIGINT NOT NULL,
    PRIMARY KEY (build_id, cache_key, principal, client, outcome)
);

CREATE INDEX build_requests_by_principal ON build_requests (principal, last_at);
