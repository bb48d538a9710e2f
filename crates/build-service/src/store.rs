//! Persistence of builds through sqlx's `Any` driver: a SQLite file by default, PostgreSQL by URL, one
//! code path of runtime queries with `$n` placeholders (both backends accept them).
//!
//! Two invariants live in the schema rather than in code, so they hold across replicas:
//! - one in-flight build per cache key: `active_key` is UNIQUE, set on insert and cleared when the build
//!   ends, and reservation is `INSERT ... ON CONFLICT DO NOTHING RETURNING`;
//! - one tracker per build: a lease (`lease_owner`, `lease_until`) taken and renewed with conditional
//!   updates; every state change is conditional on still holding it. Leases are set and compared in
//!   the database's clock ([`DbKind::now_sql`]), never a replica's, so clock skew between replicas
//!   cannot make two of them hold one build;
//! - one dispatch per build: `dispatch_sent_at` (database time) is stored before the backend is
//!   called, so whoever tracks the build next knows a dispatch may have gone out and looks its run
//!   up before sending another.
//!
//! Every write that changes what `GET /status` shows (dispatched, queued/running, ended) is followed,
//! on PostgreSQL, by `pg_notify` on [`CHANGES_CHANNEL`] with the build id, which wakes the long polls
//! of every replica (see [`crate::waiter`]). A new such write must announce too.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use build_api::{ArtifactOrigin, RunOutcome, RunTimings};
use kernel_id::{DriverName, IdentityInput, KernelIdentity, KernelRelease, SourceCommit};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row};

pub use build_api::RequestOutcome;

use crate::backend::Dispatched;
use crate::telemetry;

/// The PostgreSQL notification channel of build changes; the payload is the build id.
pub const CHANGES_CHANNEL: &str = "build_changed";

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names no supported backend.
    #[error("database URL must start with sqlite: or postgres:// (got '{0}')")]
    UnsupportedUrl(String),
    /// A query failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations could not be applied.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row holds a value this version does not understand.
    #[error("corrupt build row {build_id}: {problem}")]
    Corrupt {
        /// The row.
        build_id: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A node report row holds a value this version does not understand.
    #[error("corrupt node report: {0}")]
    CorruptReport(String),
}

/// The life cycle of a build as stored. `Dispatching` is persisted *before* the backend is called, so
/// after a crash the tracker knows a dispatch may have happened and retries it through the backend's
/// per-build-id idempotency instead of starting a second run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildState {
    /// Reserved; the dispatch call may or may not have reached the backend.
    Dispatching,
    /// The backend accepted the build.
    Queued,
    /// Running.
    InProgress,
    /// Published.
    Done,
    /// Finished without an artifact.
    Error,
    /// Not finished before the deadline.
    TimedOut,
}

impl BuildState {
    /// Every stored state.
    pub const ALL: [BuildState; 6] = [
        Self::Dispatching,
        Self::Queued,
        Self::InProgress,
        Self::Done,
        Self::Error,
        Self::TimedOut,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dispatching => "dispatching",
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Done => "done",
            Self::Error => "error",
            Self::TimedOut => "timed_out",
        }
    }

    /// The state on the API, where a build being dispatched is simply queued.
    pub fn public(self) -> build_api::BuildState {
        match self {
            Self::Dispatching | Self::Queued => build_api::BuildState::Queued,
            Self::InProgress => build_api::BuildState::InProgress,
            Self::Done => build_api::BuildState::Done,
            Self::Error => build_api::BuildState::Error,
            Self::TimedOut => build_api::BuildState::TimedOut,
        }
    }

    /// Whether the build has ended.
    pub fn is_terminal(self) -> bool {
        self.public().is_terminal()
    }
}

impl FromStr for BuildState {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Ok(match raw {
            "dispatching" => Self::Dispatching,
            "queued" => Self::Queued,
            "in_progress" => Self::InProgress,
            "done" => Self::Done,
            "error" => Self::Error,
            "timed_out" => Self::TimedOut,
            other => return Err(format!("unknown state '{other}'")),
        })
    }
}

/// A build as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRecord {
    /// The build id.
    pub build_id: String,
    /// kernel-id's cache key of the identity, as stored when the build was reserved.
    pub cache_key: String,
    /// The driver.
    pub driver: DriverName,
    /// What is built, validated by kernel-id when the row was read.
    pub identity: KernelIdentity,
    /// Current state.
    pub state: BuildState,
    /// The backend's run id.
    pub run_id: Option<String>,
    /// The backend's run (or log) URL.
    pub run_url: Option<String>,
    /// Where the artifact is, once done.
    pub download_url: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Milliseconds since the epoch.
    pub updated_at: i64,
    /// When the backend reported it running.
    pub started_at: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// When it times out.
    pub deadline_at: i64,
    /// How many dispatch calls were made.
    pub dispatch_attempts: i64,
    /// When the latest dispatch call was made (database time, ms), while its outcome is unknown:
    /// set before the call, kept until the build leaves `dispatching`.
    pub dispatch_sent_at: Option<i64>,
    /// The caller whose request created it (absent for builds from before the audit trail).
    pub requested_by: Option<String>,
    /// The commit the driver version's tag named when the build was reserved (absent for builds
    /// from before commits were recorded). Never resolved again for this build.
    pub source_commit: Option<SourceCommit>,
}

impl BuildRecord {
    /// The in-flight dedup key of this build's identity (see [`active_key`]).
    pub fn active_key(&self) -> String {
        active_key(&self.driver, &self.identity)
    }

    /// What was persisted about the dispatch, for polling.
    pub fn dispatched(&self) -> Dispatched {
        Dispatched {
            run_id: self.run_id.clone(),
            run_url: self.run_url.clone(),
        }
    }
}

/// The in-flight dedup key of an identity: the driver plus kernel-id's cache key (all five identity
/// fields). At most one build in flight holds it (the UNIQUE `active_key` column).
pub fn active_key(driver: &DriverName, identity: &KernelIdentity) -> String {
    format!("{driver}/{}", identity.cache_key())
}

/// A build to reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBuild {
    /// Fresh id.
    pub build_id: String,
    /// The driver.
    pub driver: DriverName,
    /// What to build; its cache key and dedup key are derived by kernel-id.
    pub identity: KernelIdentity,
    /// Now, in ms.
    pub now: i64,
    /// When it times out, in ms.
    pub deadline_at: i64,
    /// The replica reserving it takes the first lease so nobody else dispatches meanwhile.
    pub lease_owner: String,
    /// Lease end, in ms of this replica's clock: the database stores the same lease length
    /// (`lease_until - now`) counted from its own clock.
    pub lease_until: i64,
    /// The caller creating it (principal name, or `anonymous@<address>`).
    pub requested_by: String,
    /// The commit the driver version's tag names now: what the build is made from.
    pub source_commit: SourceCommit,
}

impl NewBuild {
    /// kernel-id's cache key of the identity.
    pub fn cache_key(&self) -> String {
        self.identity.cache_key()
    }

    /// The in-flight dedup key (see [`active_key`]).
    pub fn active_key(&self) -> String {
        active_key(&self.driver, &self.identity)
    }
}

/// Caps on builds in flight checked when a reservation would create a build (joining one never
/// counts against a cap: it creates no demand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InFlightCaps {
    /// Across every caller.
    pub total: Option<u32>,
    /// For the requesting caller.
    pub per_caller: Option<u32>,
}

/// Which cap refused a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapReached {
    /// The service-wide cap.
    Total(u32),
    /// The caller's own cap.
    Caller(u32),
}

/// The outcome of a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// This call created the build: the caller must see it dispatched.
    Created(String),
    /// A build for the same key is already in flight.
    Existing(String),
    /// Creating it would exceed a cap; nothing was stored.
    OverCap(CapReached),
}

/// One audit row: a caller's requests for one identity with one outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The build created or joined; empty for refusals.
    pub build_id: String,
    /// kernel-id's cache key of the requested identity.
    pub cache_key: String,
    /// The principal's name, or `anonymous@<address>`.
    pub principal: String,
    /// The client address.
    pub client: String,
    /// What became of the requests.
    pub outcome: RequestOutcome,
    /// First such request, ms since the epoch.
    pub first_at: i64,
    /// Latest such request, ms since the epoch.
    pub last_at: i64,
    /// How many such requests.
    pub requests: i64,
}

/// Filters of [`Store::list_builds`]; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildFilter {
    /// Any of these stored state spellings.
    pub states: Option<Vec<String>>,
    /// Canonical distribution id.
    pub distribution: Option<String>,
    /// Canonical architecture.
    pub architecture: Option<String>,
    /// Kernel release.
    pub kernel_version: Option<String>,
    /// Driver version.
    pub driver_version: Option<String>,
    /// Builds this caller created or joined.
    pub requester: Option<String>,
    /// Only builds created before this time (ms), for paging backwards.
    pub before: Option<i64>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// Which SQL backend the URL selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    /// SQLite file (or memory).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl DbKind {
    /// SQL for the database's clock in ms since the epoch (BIGINT). Leases are set and compared with
    /// it, so every replica agrees on when a lease ends whatever its own clock says.
    pub fn now_sql(self) -> &'static str {
        match self {
            Self::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
            Self::Postgres => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
        }
    }
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

/// The builds database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    kind: DbKind,
}

const COLUMNS: &str = "build_id, cache_key, driver_name, kernel_version, architecture, distribution, \
     distro_version, driver_version, state, run_id, run_url, download_url, error, created_at, updated_at, \
     started_at, finished_at, deadline_at, dispatch_attempts, dispatch_sent_at, requested_by, source_commit";

impl Store {
    /// Connects, creating a SQLite file when the URL asks for it (`mode=rwc`), and applies the
    /// migrations of the selected backend.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let kind = if url.starts_with("sqlite:") {
            DbKind::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DbKind::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(30));
        let pool = match kind {
            // WAL lets readers run beside the single writer; the busy timeout makes concurrent
            // writers queue instead of failing with SQLITE_BUSY.
            DbKind::Sqlite => {
                options
                    .max_connections(8)
                    .after_connect(|connection, _| {
                        Box::pin(async move {
                            sqlx::query("PRAGMA journal_mode = WAL")
                                .execute(&mut *connection)
                                .await?;
                            sqlx::query("PRAGMA busy_timeout = 30000")
                                .execute(&mut *connection)
                                .await?;
                            sqlx::query("PRAGMA synchronous = NORMAL")
                                .execute(&mut *connection)
                                .await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?
            }
            DbKind::Postgres => options.max_connections(16).connect(url).await?,
        };
        let store = Self { pool, kind };
        store.migrate().await?;
        Ok(store)
    }

    /// The backend in use.
    pub fn kind(&self) -> DbKind {
        self.kind
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // The first migration differs per backend (types, partial indexes); later ones are written
        // in the SQL both accept, once, under migrations/shared.
        let first = match self.kind {
            DbKind::Sqlite => include_str!("../migrations/sqlite/0001_builds.sql"),
            DbKind::Postgres => include_str!("../migrations/postgres/0001_builds.sql"),
        };
        let scripts: [(i64, &str, &'static str); 5] = [
            (1, "builds", first),
            (
                2,
                "demand",
                include_str!("../migrations/shared/0002_demand.sql"),
            ),
            (
                3,
                "dispatch_sent",
                include_str!("../migrations/shared/0003_dispatch_sent.sql"),
            ),
            (
                4,
                "source_commit",
                include_str!("../migrations/shared/0004_source_commit.sql"),
            ),
            (
                5,
                "node_reports",
                include_str!("../migrations/shared/0005_node_reports.sql"),
            ),
        ];
        let migrator = Migrator::with_migrations(
            scripts
                .into_iter()
                .map(|(version, name, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(name),
                        MigrationType::Simple,
                        sqlx::SqlSafeStr::into_sql_str(sql),
                        false,
                    )
                })
                .collect(),
        );
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// After a write that changed `build_id` (`changed`), tells every replica listening on
    /// PostgreSQL (a no-op on SQLite, where this process's trackers wake its waiters directly).
    /// Returns `changed`. A failed notification is only logged: the write stands, and the waiters'
    /// periodic re-read finds the change a little later.
    async fn announce_if(&self, changed: bool, build_id: &str) -> Result<bool, StoreError> {
        if changed
            && self.kind == DbKind::Postgres
            && let Err(error) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(build_id)
                .execute(&self.pool)
                .await
        {
            tracing::warn!(%error, build_id, "could not announce a build change");
        }
        Ok(changed)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The database's clock, ms since the epoch (the clock leases and `dispatch_sent_at` use).
    pub async fn now(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} AS now",
            self.kind.now_sql()
        )))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("now")?)
    }

    /// The in-flight build for a dedup key.
    pub async fn active_build(&self, active_key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT build_id FROM builds WHERE active_key = $1")
            .bind(active_key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|row| row.try_get::<String, _>("build_id"))
            .transpose()?)
    }

    /// Inserts `build` unless a build with the same active key is in flight, which is returned instead.
    pub async fn reserve(
        &self,
        build: &NewBuild,
        caps: InFlightCaps,
    ) -> Result<Reservation, StoreError> {
        let cap = |limit: Option<u32>| limit.map_or(i64::MAX, i64::from);
        let (cache_key, active_key) = (build.cache_key(), build.active_key());
        // The select after a conflict can find nothing when the other build ended in between; then the
        // insert is simply tried again.
        for _ in 0..5 {
            let mut transaction = self.pool.begin().await?;
            if self.kind == DbKind::Postgres && (caps.total.is_some() || caps.per_caller.is_some())
            {
                // Under READ COMMITTED two replicas could each count one slot free and both take it;
                // reservations are rare (misses only), so they simply queue on one lock. SQLite has a
                // single writer already.
                sqlx::query("SELECT pg_advisory_xact_lock(4804613921)")
                    .execute(&mut *transaction)
                    .await?;
            }
            // The caps are part of the insert itself, so no request can slip in between a count
            // and the row that would exceed it.
            // Only the clock's SQL is formatted in; every value is bound.
            let input = build.identity.to_input();
            let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO builds (build_id, cache_key, active_key, driver_name, kernel_version, architecture, \
                 distribution, distro_version, driver_version, state, created_at, updated_at, deadline_at, \
                 lease_owner, lease_until, requested_by, source_commit) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, 'dispatching', $10, $10, $11, $12, {} + $13, $14, $17 \
                 WHERE (SELECT COUNT(*) FROM builds WHERE active_key IS NOT NULL) < $15 \
                 AND (SELECT COUNT(*) FROM builds WHERE active_key IS NOT NULL AND requested_by = $14) < $16 \
                 ON CONFLICT DO NOTHING RETURNING build_id",
                self.kind.now_sql()
            )))
            .bind(&build.build_id)
            .bind(&cache_key)
            .bind(&active_key)
            .bind(build.driver.as_str())
            .bind(&input.kernel_version)
            .bind(&input.architecture)
            .bind(&input.distribution)
            .bind(input.distro_version.as_deref().unwrap_or_default())
            .bind(&input.driver_version)
            .bind(build.now)
            .bind(build.deadline_at)
            .bind(&build.lease_owner)
            .bind(build.lease_until.saturating_sub(build.now))
            .bind(&build.requested_by)
            .bind(cap(caps.total))
            .bind(cap(caps.per_caller))
            .bind(build.source_commit.as_str())
            .fetch_optional(&mut *transaction)
            .await?;
            transaction.commit().await?;
            if inserted.is_some() {
                return Ok(Reservation::Created(build.build_id.clone()));
            }
            if let Some(existing) = self.active_build(&active_key).await? {
                return Ok(Reservation::Existing(existing));
            }
            if let Some(reached) = self.cap_reached(&build.requested_by, caps).await? {
                return Ok(Reservation::OverCap(reached));
            }
        }
        Err(StoreError::Corrupt {
            build_id: build.build_id.clone(),
            problem: "reservation kept conflicting without an in-flight build".to_owned(),
        })
    }

    /// One build.
    pub async fn get(&self, build_id: &str) -> Result<Option<BuildRecord>, StoreError> {
        metrics::counter!(telemetry::STORE_READS).increment(1);
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM builds WHERE build_id = $1"
        )))
        .bind(build_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| decode(&row)).transpose()
    }

    /// Takes (or keeps) the lease on an in-flight build when it is free, expired or already ours; it
    /// then ends `lease` after the database's now.
    pub async fn claim(
        &self,
        build_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let now = self.kind.now_sql();
        let result = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE builds SET lease_owner = $1, lease_until = {now} + $2 \
             WHERE build_id = $3 AND active_key IS NOT NULL AND (lease_owner = $1 OR lease_owner IS NULL OR lease_until < {now})",
        )))
        .bind(owner)
        .bind(lease_ms(lease))
        .bind(build_id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Extends our lease to `lease` after the database's now; false when it was lost (taken over, or
    /// the build ended).
    pub async fn renew(
        &self,
        build_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE builds SET lease_until = {} + $1 WHERE build_id = $2 AND active_key IS NOT NULL AND lease_owner = $3",
            self.kind.now_sql()
        )))
        .bind(lease_ms(lease))
        .bind(build_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Gives the lease up so another replica (or the next start of this one) resumes at once.
    pub async fn release(&self, build_id: &str, owner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE builds SET lease_owner = NULL, lease_until = 0 WHERE build_id = $1 AND lease_owner = $2",
        )
        .bind(build_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a dispatch call before it is made: counted, and `dispatch_sent_at` set to the
    /// database's now. False when the build is no longer ours to dispatch.
    pub async fn record_dispatch_sent(
        &self,
        build_id: &str,
        owner: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE builds SET dispatch_attempts = dispatch_attempts + 1, dispatch_sent_at = {}, updated_at = $1 \
             WHERE build_id = $2 AND state = 'dispatching' AND lease_owner = $3",
            self.kind.now_sql()
        )))
        .bind(now)
        .bind(build_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Moves `dispatch_sent_at` to the database's now after a dispatch call failed: the call was in
    /// flight until then, so the settle time before its run is looked up counts from here.
    pub async fn record_dispatch_ended(
        &self,
        build_id: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE builds SET dispatch_sent_at = {} \
             WHERE build_id = $1 AND state = 'dispatching' AND lease_owner = $2 AND dispatch_sent_at IS NOT NULL",
            self.kind.now_sql()
        )))
        .bind(build_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the accepted dispatch: the build is queued with its run.
    pub async fn set_dispatched(
        &self,
        build_id: &str,
        owner: &str,
        dispatched: &Dispatched,
        now: i64,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE builds SET state = 'queued', run_id = $1, run_url = $2, updated_at = $3 \
             WHERE build_id = $4 AND state = 'dispatching' AND lease_owner = $5",
        )
        .bind(dispatched.run_id.clone())
        .bind(dispatched.run_url.clone())
        .bind(now)
        .bind(build_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        self.announce_if(result.rows_affected() == 1, build_id)
            .await
    }

    /// Moves a dispatched build between queued and in progress.
    pub async fn set_running_state(
        &self,
        build_id: &str,
        owner: &str,
        state: BuildState,
        now: i64,
    ) -> Result<bool, StoreError> {
        debug_assert!(matches!(state, BuildState::Queued | BuildState::InProgress));
        let result = sqlx::query(
            "UPDATE builds SET state = $1, updated_at = $2, \
             started_at = CASE WHEN $1 = 'in_progress' AND started_at IS NULL THEN $2 ELSE started_at END \
             WHERE build_id = $3 AND active_key IS NOT NULL AND state <> 'dispatching' AND lease_owner = $4",
        )
        .bind(state.as_str())
        .bind(now)
        .bind(build_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        self.announce_if(result.rows_affected() == 1, build_id)
            .await
    }

    /// Ends a build, freeing its cache key for the next one.
    pub async fn finish(
        &self,
        build_id: &str,
        owner: &str,
        state: BuildState,
        download_url: Option<&str>,
        error: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        debug_assert!(state.is_terminal());
        let result = sqlx::query(
            "UPDATE builds SET state = $1, download_url = $2, error = $3, finished_at = $4, updated_at = $4, \
             active_key = NULL, lease_owner = NULL, lease_until = 0 \
             WHERE build_id = $5 AND active_key IS NOT NULL AND lease_owner = $6",
        )
        .bind(state.as_str())
        .bind(download_url.map(str::to_owned))
        .bind(error.map(str::to_owned))
        .bind(now)
        .bind(build_id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        self.announce_if(result.rows_affected() == 1, build_id)
            .await
    }

    /// In-flight builds nobody holds a live lease on by the database's clock (on start: everything
    /// left by a previous run).
    pub async fn unleased_in_flight(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT build_id FROM builds WHERE active_key IS NOT NULL AND (lease_owner IS NULL OR lease_until < {}) \
             ORDER BY created_at",
            self.kind.now_sql()
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                row.try_get::<String, _>("build_id")
                    .map_err(StoreError::from)
            })
            .collect()
    }

    /// Which cap, if any, a new build by `requester` would exceed now.
    async fn cap_reached(
        &self,
        requester: &str,
        caps: InFlightCaps,
    ) -> Result<Option<CapReached>, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, \
             COALESCE(SUM(CASE WHEN requested_by = $1 THEN 1 ELSE 0 END), 0) AS mine \
             FROM builds WHERE active_key IS NOT NULL",
        )
        .bind(requester)
        .fetch_one(&self.pool)
        .await?;
        let (total, mine): (i64, i64) = (row.try_get("total")?, row.try_get("mine")?);
        Ok(match caps {
            InFlightCaps {
                total: Some(cap), ..
            } if total >= i64::from(cap) => Some(CapReached::Total(cap)),
            InFlightCaps {
                per_caller: Some(cap),
                ..
            } if mine >= i64::from(cap) => Some(CapReached::Caller(cap)),
            _ => None,
        })
    }

    /// Adds one request to the audit trail (a repeat of the same caller, identity, build and
    /// outcome increments its row).
    pub async fn record_request(
        &self,
        build_id: Option<&str>,
        cache_key: &str,
        principal: &str,
        client: &str,
        outcome: RequestOutcome,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO build_requests (build_id, cache_key, principal, client, outcome, first_at, last_at, requests) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, 1) \
             ON CONFLICT (build_id, cache_key, principal, client, outcome) \
             DO UPDATE SET requests = build_requests.requests + 1, last_at = $6",
        )
        .bind(build_id.unwrap_or_default())
        .bind(cache_key)
        .bind(principal)
        .bind(client)
        .bind(outcome.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Builds matching `filter`, newest first.
    pub async fn list_builds(&self, filter: &BuildFilter) -> Result<Vec<BuildRecord>, StoreError> {
        let mut conditions = Vec::new();
        let mut values: Vec<String> = Vec::new();
        if let Some(states) = &filter.states {
            let mut placeholders = Vec::new();
            for state in states {
                values.push(state.clone());
                placeholders.push(format!("${}", values.len()));
            }
            if placeholders.is_empty() {
                conditions.push("1 = 0".to_owned());
            } else {
                conditions.push(format!("state IN ({})", placeholders.join(", ")));
            }
        }
        for (column, value) in [
            ("distribution", &filter.distribution),
            ("architecture", &filter.architecture),
            ("kernel_version", &filter.kernel_version),
            ("driver_version", &filter.driver_version),
        ] {
            if let Some(value) = value {
                values.push(value.clone());
                conditions.push(format!("{column} = ${}", values.len()));
            }
        }
        if let Some(requester) = &filter.requester {
            values.push(requester.clone());
            conditions.push(format!(
                "build_id IN (SELECT build_id FROM build_requests WHERE principal = ${})",
                values.len()
            ));
        }
        let before_placeholder = filter.before.map(|_| {
            conditions.push(format!("created_at < ${}", values.len() + 1));
            values.len() + 1
        });
        let limit_placeholder = values.len() + 1 + usize::from(before_placeholder.is_some());
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        // Only column names and placeholders are formatted in; every value is bound.
        let sql = format!(
            "SELECT {COLUMNS} FROM builds {where_clause} ORDER BY created_at DESC, build_id LIMIT ${limit_placeholder}"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for value in values {
            query = query.bind(value);
        }
        if let Some(before) = filter.before {
            query = query.bind(before);
        }
        let rows = query
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode).collect()
    }

    /// The audit rows of each of `build_ids`, oldest first, in one query.
    pub async fn requests_for(
        &self,
        build_ids: &[String],
    ) -> Result<HashMap<String, Vec<RequestRecord>>, StoreError> {
        let mut out: HashMap<String, Vec<RequestRecord>> = HashMap::new();
        if build_ids.is_empty() {
            return Ok(out);
        }
        let placeholders: Vec<String> = (1..=build_ids.len()).map(|n| format!("${n}")).collect();
        // Only placeholders are formatted in; every id is bound.
        let sql = format!(
            "SELECT build_id, cache_key, principal, client, outcome, first_at, last_at, requests \
             FROM build_requests WHERE build_id IN ({}) ORDER BY first_at, principal, client",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in build_ids {
            query = query.bind(id);
        }
        for row in query.fetch_all(&self.pool).await? {
            let build_id: String = row.try_get("build_id")?;
            let raw_outcome: String = row.try_get("outcome")?;
            let outcome =
                RequestOutcome::parse(&raw_outcome).ok_or_else(|| StoreError::Corrupt {
                    build_id: build_id.clone(),
                    problem: format!("unknown request outcome '{raw_outcome}'"),
                })?;
            out.entry(build_id.clone())
                .or_default()
                .push(RequestRecord {
                    build_id,
                    cache_key: row.try_get("cache_key")?,
                    principal: row.try_get("principal")?,
                    client: row.try_get("client")?,
                    outcome,
                    first_at: row.try_get("first_at")?,
                    last_at: row.try_get("last_at")?,
                    requests: row.try_get("requests")?,
                });
        }
        Ok(out)
    }

    /// Retention: deletes builds that ended before `before` (ms; never one in flight) and audit rows
    /// last seen before it (never one of a build in flight). Returns (builds, audit rows) deleted.
    pub async fn prune_finished(&self, before: i64) -> Result<(u64, u64), StoreError> {
        let builds = sqlx::query(
            "DELETE FROM builds WHERE active_key IS NULL AND finished_at IS NOT NULL AND finished_at < $1",
        )
        .bind(before)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let requests = sqlx::query(
            "DELETE FROM build_requests WHERE last_at < $1 \
             AND build_id NOT IN (SELECT build_id FROM builds WHERE active_key IS NOT NULL)",
        )
        .bind(before)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok((builds, requests))
    }

    /// Number of builds per stored state (for tests and diagnostics).
    pub async fn count_builds(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM builds")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")?)
    }

    /// Overwrites one column of a build's row, as a damaged or foreign row would hold it.
    #[cfg(test)]
    pub(crate) async fn corrupt_for_test(&self, build_id: &str, column: &str, value: &str) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE builds SET {column} = $1 WHERE build_id = $2"
        )))
        .bind(value)
        .bind(build_id)
        .execute(&self.pool)
        .await
        .expect("update");
    }

    /// A build's state and error as stored, without decoding the row.
    #[cfg(test)]
    pub(crate) async fn raw_state_for_test(&self, build_id: &str) -> (String, Option<String>) {
        let row = sqlx::query("SELECT state, error FROM builds WHERE build_id = $1")
            .bind(build_id)
            .fetch_one(&self.pool)
            .await
            .expect("row");
        (
            row.try_get("state").expect("state"),
            row.try_get("error").expect("error"),
        )
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Keeps `report` as its node's latest (replacing the previous one; `first_seen` stays),
    /// received now by the database's clock. The first-boot wait is the report's own when it
    /// waited; otherwise the previous one is kept while the node runs the same identity (a restart
    /// served from its cache does not hide that the kernel needed an on-demand build), and dropped
    /// when the identity changed.
    pub async fn upsert_report(&self, report: &NewNodeReport) -> Result<(), StoreError> {
        let input = report.identity.to_input();
        let pending: Vec<&str> = report
            .pending_kernels
            .iter()
            .map(KernelRelease::as_str)
            .collect();
        // A JSON array of validated releases; serialising strings cannot fail.
        let pending = serde_json::to_string(&pending).unwrap_or_else(|_| "[]".to_owned());
        let same_identity = "node_reports.distribution = excluded.distribution \
             AND node_reports.distro_version = excluded.distro_version \
             AND node_reports.architecture = excluded.architecture \
             AND node_reports.kernel_version = excluded.kernel_version \
             AND node_reports.driver_version = excluded.driver_version";
        // Only the clock's SQL and fixed column names are formatted in; every value is bound.
        let sql = format!(
            "INSERT INTO node_reports (node_id, principal, client, distribution, distro_version, architecture, \
             kernel_version, driver_name, driver_version, outcome, exit_code, artifact_origin, build_wait_ms, \
             fetch_ms, total_ms, pending_kernels, first_boot_wait_ms, first_boot_wait_at, first_seen, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $13, \
             CASE WHEN $17 = 1 THEN {now} ELSE NULL END, {now}, {now}) \
             ON CONFLICT (node_id) DO UPDATE SET principal = excluded.principal, client = excluded.client, \
             distribution = excluded.distribution, distro_version = excluded.distro_version, \
             architecture = excluded.architecture, kernel_version = excluded.kernel_version, \
             driver_name = excluded.driver_name, driver_version = excluded.driver_version, \
             outcome = excluded.outcome, exit_code = excluded.exit_code, \
             artifact_origin = excluded.artifact_origin, build_wait_ms = excluded.build_wait_ms, \
             fetch_ms = excluded.fetch_ms, total_ms = excluded.total_ms, \
             pending_kernels = excluded.pending_kernels, \
             first_boot_wait_ms = CASE WHEN excluded.first_boot_wait_ms IS NOT NULL THEN excluded.first_boot_wait_ms \
               WHEN {same_identity} THEN node_reports.first_boot_wait_ms ELSE NULL END, \
             first_boot_wait_at = CASE WHEN excluded.first_boot_wait_ms IS NOT NULL THEN excluded.first_boot_wait_at \
               WHEN {same_identity} THEN node_reports.first_boot_wait_at ELSE NULL END, \
             received_at = excluded.received_at",
            now = self.kind.now_sql(),
        );
        let millis = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX);
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&report.node_id)
            .bind(&report.principal)
            .bind(&report.client)
            .bind(&input.distribution)
            .bind(input.distro_version.as_deref().unwrap_or_default())
            .bind(&input.architecture)
            .bind(&input.kernel_version)
            .bind(report.driver.as_str())
            .bind(&input.driver_version)
            .bind(report.outcome.as_str())
            .bind(i64::from(report.exit_code))
            .bind(
                report
                    .artifact_origin
                    .map(|origin| origin.as_str().to_owned()),
            )
            .bind(report.timings.build_wait_ms.map(millis))
            .bind(millis(report.timings.fetch_ms))
            .bind(millis(report.timings.total_ms))
            .bind(pending)
            .bind(i64::from(report.timings.build_wait_ms.is_some()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The nodes' latest reports, grouped by what the fleet view and the gauges tell apart
    /// (identity, outcome, pending kernels), with the node count and first-boot waits of each
    /// group: a fleet of thousands of nodes on a few kernels is a few rows.
    pub async fn report_groups(&self) -> Result<Vec<ReportGroup>, StoreError> {
        let rows = sqlx::query(
            "SELECT distribution, distro_version, architecture, kernel_version, driver_version, outcome, \
             pending_kernels, COUNT(*) AS nodes, \
             SUM(CASE WHEN first_boot_wait_ms IS NOT NULL THEN 1 ELSE 0 END) AS waits, \
             MAX(first_boot_wait_ms) AS wait_max \
             FROM node_reports \
             GROUP BY distribution, distro_version, architecture, kernel_version, driver_version, outcome, \
             pending_kernels",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_group).collect()
    }

    /// The latest build of each identity among the `limit` newest builds (the fleet view's
    /// artifact status), newest first. Rows kernel-id refuses are left out and logged: one damaged
    /// row must not hide the fleet.
    pub async fn latest_builds(&self, limit: u32) -> Result<Vec<BuildRecord>, StoreError> {
        // Only column names are formatted in; the limit is bound.
        let sql = format!(
            "SELECT {COLUMNS} FROM builds WHERE build_id IN (SELECT build_id FROM builds ORDER BY created_at DESC \
             LIMIT $1) ORDER BY created_at DESC, build_id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut seen = std::collections::HashSet::new();
        let mut latest = Vec::new();
        for row in &rows {
            match decode(row) {
                Ok(record) => {
                    if seen.insert(record.active_key()) {
                        latest.push(record);
                    }
                }
                Err(error) => tracing::warn!(%error, "a build row is left out of the fleet view"),
            }
        }
        Ok(latest)
    }

    /// Retention of the fleet inventory: deletes the reports of nodes silent for longer than
    /// `retention` and forgets first-boot waits older than it, both by the database's clock.
    /// Returns (reports deleted, waits forgotten).
    pub async fn prune_reports(&self, retention: Duration) -> Result<(u64, u64), StoreError> {
        let now = self.kind.now_sql();
        let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM node_reports WHERE received_at < {now} - $1"
        )))
        .bind(lease_ms(retention))
        .execute(&self.pool)
        .await?
        .rows_affected();
        let forgotten = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE node_reports SET first_boot_wait_ms = NULL, first_boot_wait_at = NULL \
             WHERE first_boot_wait_at < {now} - $1"
        )))
        .bind(lease_ms(retention))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok((deleted, forgotten))
    }

    /// Moves a node's report (and its first-boot wait) `by` into the past, as if it had been
    /// received that long ago.
    #[cfg(test)]
    pub(crate) async fn age_report_for_test(&self, node_id: &str, by: Duration) {
        sqlx::query(
            "UPDATE node_reports SET received_at = received_at - $1, first_seen = first_seen - $1, \
             first_boot_wait_at = first_boot_wait_at - $1 WHERE node_id = $2",
        )
        .bind(lease_ms(by))
        .bind(node_id)
        .execute(&self.pool)
        .await
        .expect("update");
    }
}

/// A node's report to keep as its latest, validated (see [`crate::inventory`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNodeReport {
    /// The node's stable id (64 lowercase hex digits).
    pub node_id: String,
    /// The running kernel and the driver version, canonical.
    pub identity: KernelIdentity,
    /// The driver.
    pub driver: DriverName,
    /// How the run ended.
    pub outcome: RunOutcome,
    /// The loader's exit code.
    pub exit_code: u8,
    /// Where the package came from.
    pub artifact_origin: Option<ArtifactOrigin>,
    /// How long it took.
    pub timings: RunTimings,
    /// Installed kernels it does not run, sorted and distinct.
    pub pending_kernels: Vec<KernelRelease>,
    /// Who reported it (principal name or `anonymous@<address>`).
    pub principal: String,
    /// The client address.
    pub client: String,
}

/// Nodes whose latest reports agree on identity, outcome and pending kernels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportGroup {
    /// The running kernel and driver version.
    pub identity: KernelIdentity,
    /// How their latest runs ended.
    pub outcome: RunOutcome,
    /// Kernels they have installed but do not run.
    pub pending_kernels: Vec<KernelRelease>,
    /// How many nodes.
    pub nodes: u64,
    /// How many of them have a first-boot wait on record.
    pub first_boot_waits: u64,
    /// The longest of those waits (ms).
    pub first_boot_wait_ms_max: Option<u64>,
}

fn decode_group(row: &AnyRow) -> Result<ReportGroup, StoreError> {
    let corrupt = |problem: String| StoreError::CorruptReport(problem);
    let identity = KernelIdentity::from_input(&IdentityInput {
        kernel_version: row.try_get("kernel_version")?,
        architecture: row.try_get("architecture")?,
        distribution: row.try_get("distribution")?,
        distro_version: Some(row.try_get("distro_version")?),
        driver_version: row.try_get("driver_version")?,
    })
    .map_err(|error| corrupt(format!("stored identity is invalid: {error}")))?;
    let raw_outcome: String = row.try_get("outcome")?;
    let outcome = [RunOutcome::Loaded, RunOutcome::Refused, RunOutcome::Failed]
        .into_iter()
        .find(|outcome| outcome.as_str() == raw_outcome)
        .ok_or_else(|| corrupt(format!("unknown outcome '{raw_outcome}'")))?;
    let raw_pending: String = row.try_get("pending_kernels")?;
    let pending_kernels = serde_json::from_str::<Vec<String>>(&raw_pending)
        .map_err(|error| {
            corrupt(format!(
                "pending_kernels is not a JSON array of strings: {error}"
            ))
        })?
        .iter()
        .map(|release| KernelRelease::parse(release))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| corrupt(format!("stored pending kernel is invalid: {error}")))?;
    let count = |value: i64| u64::try_from(value).unwrap_or(0);
    Ok(ReportGroup {
        identity,
        outcome,
        pending_kernels,
        nodes: count(row.try_get("nodes")?),
        first_boot_waits: count(row.try_get("waits")?),
        first_boot_wait_ms_max: row.try_get::<Option<i64>, _>("wait_max")?.map(count),
    })
}

fn decode(row: &AnyRow) -> Result<BuildRecord, StoreError> {
    let build_id: String = row.try_get("build_id")?;
    let raw_state: String = row.try_get("state")?;
    let state = raw_state.parse().map_err(|problem| StoreError::Corrupt {
        build_id: build_id.clone(),
        problem,
    })?;
    // The identity is validated once, here: everything downstream holds kernel-id's types.
    let corrupt = |problem: String| StoreError::Corrupt {
        build_id: build_id.clone(),
        problem,
    };
    let driver_name: String = row.try_get("driver_name")?;
    let driver = DriverName::parse(&driver_name)
        .map_err(|error| corrupt(format!("stored driver name is invalid: {error}")))?;
    let identity = KernelIdentity::from_input(&IdentityInput {
        kernel_version: row.try_get("kernel_version")?,
        architecture: row.try_get("architecture")?,
        distribution: row.try_get("distribution")?,
        distro_version: Some(row.try_get("distro_version")?),
        driver_version: row.try_get("driver_version")?,
    })
    .map_err(|error| corrupt(format!("stored identity is invalid: {error}")))?;
    let source_commit = row
        .try_get::<Option<String>, _>("source_commit")?
        .map(|raw| SourceCommit::parse(&raw))
        .transpose()
        .map_err(|error| corrupt(format!("stored source commit is invalid: {error}")))?;
    Ok(BuildRecord {
        cache_key: row.try_get("cache_key")?,
        driver,
        identity,
        state,
        run_id: row.try_get("run_id")?,
        run_url: row.try_get("run_url")?,
        download_url: row.try_get("download_url")?,
        error: row.try_get("error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        deadline_at: row.try_get("deadline_at")?,
        dispatch_attempts: row.try_get("dispatch_attempts")?,
        dispatch_sent_at: row.try_get("dispatch_sent_at")?,
        requested_by: row.try_get("requested_by")?,
        source_commit,
        build_id,
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
impl NewBuild {
    /// A valid build of the sample driver for Debian 12's 6.1.0-47-amd64, for the crate's unit
    /// tests. The architecture is given as the alias `amd64`, so a test reading it back sees that
    /// the canonical spelling is what is stored.
    pub(crate) fn for_test(build_id: &str) -> NewBuild {
        let now = now_ms();
        NewBuild {
            build_id: build_id.to_owned(),
            driver: DriverName::parse("example-driver").expect("driver"),
            identity: KernelIdentity::from_input(&IdentityInput {
                kernel_version: "6.1.0-47-amd64".to_owned(),
                architecture: "amd64".to_owned(),
                distribution: "debian".to_owned(),
                distro_version: None,
                driver_version: "v0.1.2".to_owned(),
            })
            .expect("identity"),
            now,
            deadline_at: now + 60_000,
            lease_owner: "me".to_owned(),
            lease_until: now + 60_000,
            requested_by: "test".to_owned(),
            source_commit: SourceCommit::parse("0123456789abcdef0123456789abcdef01234567")
                .expect("commit"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &tempfile::TempDir) -> Store {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display());
        Store::connect(&url).await.expect("store")
    }

    #[tokio::test]
    async fn the_identity_is_stored_and_read_back_typed() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir).await;
        let new = NewBuild::for_test("00000000-0000-4000-8000-000000000001");
        store
            .reserve(&new, InFlightCaps::default())
            .await
            .expect("reserve");
        let record = store.get(&new.build_id).await.expect("get").expect("row");
        assert_eq!(record.identity, new.identity);
        assert_eq!(record.driver, new.driver);
        assert_eq!(record.source_commit.as_ref(), Some(&new.source_commit));
        assert_eq!(record.cache_key, "debian/12/x86_64/6.1.0-47-amd64/v0.1.2");
        assert_eq!(record.active_key(), new.active_key());
        assert_eq!(
            store.active_build(&new.active_key()).await.expect("active"),
            Some(new.build_id.clone())
        );
        let row = sqlx::query("SELECT architecture, distro_version FROM builds")
            .fetch_one(&store.pool)
            .await
            .expect("row");
        let (architecture, distro_version): (String, String) = (
            row.try_get("architecture").expect("architecture"),
            row.try_get("distro_version").expect("distro_version"),
        );
        assert_eq!(
            (architecture.as_str(), distro_version.as_str()),
            ("x86_64", "12")
        );
    }

    #[tokio::test]
    async fn a_row_kernel_id_refuses_is_corrupt_naming_the_build_and_the_rule() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir).await;
        let new = NewBuild::for_test("00000000-0000-4000-8000-000000000002");
        store
            .reserve(&new, InFlightCaps::default())
            .await
            .expect("reserve");
        for (column, value) in [("kernel_version", "6.1$(id)"), ("driver_name", "Bad Name")] {
            store.corrupt_for_test(&new.build_id, column, value).await;
            match store.get(&new.build_id).await {
                Err(StoreError::Corrupt { build_id, problem }) => {
                    assert_eq!(build_id, new.build_id);
                    assert!(
                        problem.contains(column) || problem.contains("driver name"),
                        "{problem}"
                    );
                }
                other => panic!("{column}: expected a corrupt row, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_stored_commit_must_be_a_full_commit_id() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir).await;
        let new = NewBuild::for_test("00000000-0000-4000-8000-000000000003");
        store
            .reserve(&new, InFlightCaps::default())
            .await
            .expect("reserve");
        store
            .corrupt_for_test(&new.build_id, "source_commit", "HEAD~1")
            .await;
        match store.get(&new.build_id).await {
            Err(StoreError::Corrupt { build_id, problem }) => {
                assert_eq!(build_id, new.build_id);
                assert!(problem.contains("source commit"), "{problem}");
                assert!(problem.contains("source_commit"), "{problem}");
            }
            other => panic!("expected a corrupt row, got {other:?}"),
        }
        // A build from before commits were recorded reads back without one.
        sqlx::query("UPDATE builds SET source_commit = NULL")
            .execute(&store.pool)
            .await
            .expect("update");
        let record = store.get(&new.build_id).await.expect("get").expect("row");
        assert_eq!(record.source_commit, None);
    }

    fn node_report(node: char, release: &str, wait: Option<u64>) -> NewNodeReport {
        NewNodeReport {
            node_id: node.to_string().repeat(64),
            identity: KernelIdentity::from_input(&IdentityInput {
                kernel_version: release.to_owned(),
                architecture: "x86_64".to_owned(),
                distribution: "debian".to_owned(),
                distro_version: Some("12".to_owned()),
                driver_version: "v0.1.2".to_owned(),
            })
            .expect("identity"),
            driver: DriverName::parse("example-driver").expect("driver"),
            outcome: RunOutcome::Loaded,
            exit_code: 0,
            artifact_origin: Some(if wait.is_some() {
                ArtifactOrigin::Build
            } else {
                ArtifactOrigin::Cache
            }),
            timings: RunTimings {
                build_wait_ms: wait,
                fetch_ms: wait.unwrap_or(0) + 10,
                total_ms: wait.unwrap_or(0) + 20,
            },
            pending_kernels: vec![KernelRelease::parse("6.1.0-48-amd64").expect("release")],
            principal: "nodes".to_owned(),
            client: "127.0.0.1".to_owned(),
        }
    }

    #[tokio::test]
    async fn a_node_keeps_one_report_and_its_wait_while_it_runs_the_same_kernel() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir).await;
        store
            .upsert_report(&node_report('a', "6.1.0-47-amd64", Some(90_000)))
            .await
            .expect("first");
        // A restart served from the cache: the first-boot wait stays on record.
        store
            .upsert_report(&node_report('a', "6.1.0-47-amd64", None))
            .await
            .expect("restart");
        store
            .upsert_report(&node_report('b', "6.1.0-47-amd64", None))
            .await
            .expect("other node");
        let groups = store.report_groups().await.expect("groups");
        assert_eq!(groups.len(), 1, "{groups:?}");
        assert_eq!(groups[0].nodes, 2);
        assert_eq!(groups[0].first_boot_waits, 1);
        assert_eq!(groups[0].first_boot_wait_ms_max, Some(90_000));
        assert_eq!(groups[0].pending_kernels.len(), 1);
        // A new kernel replaces the report and drops the old kernel's wait.
        store
            .upsert_report(&node_report('a', "6.1.0-48-amd64", None))
            .await
            .expect("new kernel");
        let groups = store.report_groups().await.expect("groups");
        assert_eq!(groups.iter().map(|g| g.nodes).sum::<u64>(), 2);
        assert!(groups.iter().all(|g| g.first_boot_waits == 0), "{groups:?}");
    }

    #[tokio::test]
    async fn retention_forgets_silent_nodes_and_old_waits() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir).await;
        let day = Duration::from_secs(24 * 3600);
        store
            .upsert_report(&node_report('a', "6.1.0-47-amd64", Some(5_000)))
            .await
            .expect("a");
        store
            .upsert_report(&node_report('b', "6.1.0-47-amd64", Some(7_000)))
            .await
            .expect("b");
        store.age_report_for_test(&"a".repeat(64), 40 * day).await;
        // b waited 40 days ago but reported again today from its cache.
        store.age_report_for_test(&"b".repeat(64), 40 * day).await;
        store
            .upsert_report(&node_report('b', "6.1.0-47-amd64", None))
            .await
            .expect("b again");
        assert_eq!(store.prune_reports(30 * day).await.expect("prune"), (1, 1));
        let groups = store.report_groups().await.expect("groups");
        assert_eq!(groups.len(), 1);
        assert_eq!((groups[0].nodes, groups[0].first_boot_waits), (1, 0));
    }

    #[tokio::test]
    async fn latest_builds_are_one_per_identity_newest_first() {
        let dir = tempfile::tempdir().expect("dir");
        let store = store(&dir).await;
        let first = NewBuild::for_test("00000000-0000-4000-8000-000000000010");
        store
            .reserve(&first, InFlightCaps::default())
            .await
            .expect("reserve");
        assert!(
            store
                .finish(
                    &first.build_id,
                    "me",
                    BuildState::Error,
                    None,
                    Some("no"),
                    first.now
                )
                .await
                .expect("finish")
        );
        let mut second = NewBuild::for_test("00000000-0000-4000-8000-000000000011");
        second.now += 1;
        store
            .reserve(&second, InFlightCaps::default())
            .await
            .expect("reserve");
        let latest = store.latest_builds(100).await.expect("latest");
        let ids: Vec<&str> = latest.iter().map(|b| b.build_id.as_str()).collect();
        assert_eq!(ids, [second.build_id.as_str()]);
        assert_eq!(store.latest_builds(1).await.expect("latest").len(), 1);
    }
}
