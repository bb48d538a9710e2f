-- Builds tracked by the service. `active_key` is set while a build is in flight and cleared when it
-- ends; its UNIQUE constraint (NULLs never collide) is what makes "one in-flight build per cache key"
-- hold across replicas. Times are milliseconds since the Unix epoch (BIGINT), because sqlx's Any
-- driver carries only integers and strings.
CREATE TABLE builds (
    build_id          TEXT    PRIMARY KEY,
    cache_key         TEXT    NOT NULL,
    active_key        TEXT    UNIQUE,
    driver_name       TEXT    NOT NULL,
    kernel_version    TEXT    NOT NULL,
    architecture      TEXT    NOT NULL,
    distribution      TEXT    NOT NULL,
    distro_version    TEXT    NOT NULL,
    driver_version    TEXT    NOT NULL,
    state             TEXT    NOT NULL CHECK (state IN ('dispatching', 'queued', 'in_progress', 'done', 'error', 'timed_out')),
    run_id            TEXT,
    run_url           TEXT,
    download_url      TEXT,
    error             TEXT,
    created_at        BIGINT  NOT NULL,
    updated_at        BIGINT  NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT,
    deadline_at       BIGINT  NOT NULL,
    dispatch_attempts BIGINT  NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    lease_until       BIGINT  NOT NULL DEFAULT 0
);

CREATE INDEX builds_by_cache_key ON builds (cache_key, created_at);
CREATE INDEX builds_in_flight ON builds (lease_until) WHERE active_key IS NOT NULL;
