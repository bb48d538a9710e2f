-- The fleet inventory: the latest report of each node's loader run (`POST /report`), one row per
-- node, replaced by the node's next report. `first_seen` (the node's first report) and
-- `received_at` (its latest) are the database's clock in ms since the epoch, like leases. The
-- first-boot wait (`first_boot_wait_ms`, `first_boot_wait_at`) is the latest wait for an on-demand
-- build on the node's current kernel and driver version: a later run of the same kernel and
-- driver served from the node's cache keeps it, a run of another kernel or driver version
-- replaces it. Retention deletes nodes silent for longer than it and forgets waits older than it.
CREATE TABLE node_reports (
    node_id            TEXT   PRIMARY KEY NOT NULL,
    principal          TEXT   NOT NULL,
    client             TEXT   NOT NULL,
    distribution       TEXT   NOT NULL,
    distro_version     TEXT   NOT NULL,
    architecture       TEXT   NOT NULL,
    kernel_version     TEXT   NOT NULL,
    driver_name        TEXT   NOT NULL,
    driver_version     TEXT   NOT NULL,
    outcome            TEXT   NOT NULL CHECK (outcome IN ('loaded', 'refused', 'failed')),
    exit_code          BIGINT NOT NULL,
    artifact_origin    TEXT   CHECK (artifact_origin IN ('cache', 'store', 'build')),
    build_wait_ms      BIGINT,
    fetch_ms           BIGINT NOT NULL,
    total_ms           BIGINT NOT NULL,
    -- A JSON array of kernel releases (validated by kernel-id before it is stored).
    pending_kernels    TEXT   NOT NULL,
    first_boot_wait_ms BIGINT,
    first_boot_wait_at BIGINT,
    first_seen         BIGINT NOT NULL,
    received_at        BIGINT NOT NULL
);

CREATE INDEX node_reports_by_received ON node_reports (received_at);
