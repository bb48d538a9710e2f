//! The seam between the service's state machine and whatever actually builds and stores artifacts:
//! GitHub Actions + Releases in production, the local artifact directory + clean-root executor as the
//! embedded default. The service only ever talks to a [`Backend`]; everything backend-specific
//! (rate limits, run lookup, signing) lives behind it.

use std::sync::Arc;
use std::time::Duration;

use kernel_id::{DriverName, KernelIdentity, SourceCommit};
use serde::{Deserialize, Serialize};

use crate::source::SourceRepository;

/// Where artifacts are looked up and builds are run. Every call makes one attempt and reports what
/// went wrong as a [`BackendError`]; retrying is the caller's (the tracker's, see [`crate::retry`]).
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Short name for logs, metrics and /healthz (`"github"`, `"local"`).
    fn name(&self) -> &'static str;

    /// The repository this backend builds the driver from: its tags are the driver versions, and
    /// the coordinator resolves a version to a commit there before any reservation.
    fn source_repository(&self) -> Arc<dyn SourceRepository>;

    /// Existence check: the artifact's public download URL when it is published.
    async fn find_artifact(
        &self,
        driver: &DriverName,
        identity: &KernelIdentity,
    ) -> Result<Option<ArtifactRef>, BackendError>;

    /// Sends the dispatch of `build` once. An error may be ambiguous (the dispatch may have taken
    /// effect although its answer was lost), so the tracker never calls this twice for a build id
    /// without first waiting [`Backend::dispatch_settle`] after the previous call and asking
    /// [`Backend::find_run`]: that is what makes one dispatch per build id across replicas and crashes.
    async fn dispatch(&self, build: &BuildSpec) -> Result<Dispatched, BackendError>;

    /// The run an earlier dispatch of `build.build_id` started, if the backend can see one (runs
    /// created before `since` are not looked at: the build did not exist yet). Default: none, which
    /// is right only for a backend whose `dispatch` is idempotent per build id by itself.
    async fn find_run(
        &self,
        build: &BuildSpec,
        since: std::time::SystemTime,
    ) -> Result<Option<Dispatched>, BackendError> {
        let _ = (build, since);
        Ok(None)
    }

    /// How long after a dispatch call was made its run surely shows in [`Backend::find_run`], if the
    /// call took effect at all (GitHub lists new runs with a delay). Default: at once.
    fn dispatch_settle(&self) -> Duration {
        Duration::ZERO
    }

    /// Current state of a dispatched build.
    async fn poll(
        &self,
        build: &BuildSpec,
        dispatched: &Dispatched,
    ) -> Result<RunState, BackendError>;

    /// Stops a dispatched build for good (its deadline passed): local, its job's whole process group
    /// is killed (a queued job never starts) and its work removed; GitHub, the run is cancelled.
    /// Idempotent; a build that already ended is success. Returns once the build can no longer
    /// publish, or with an error saying why that could not be ensured.
    async fn cancel(&self, build: &BuildSpec, dispatched: &Dispatched) -> Result<(), BackendError>;

    /// Whether the backend is reachable (for /healthz).
    async fn health(&self) -> Result<(), BackendError>;

    /// Removes what the backend keeps about builds that ended before `ended_before` (local: build
    /// directories and logs), never a published artifact nor a build still running. Returns how many
    /// builds were removed. Default: nothing is kept.
    async fn prune(&self, ended_before: std::time::SystemTime) -> Result<u64, BackendError> {
        let _ = ended_before;
        Ok(0)
    }
}

/// One build as the service tracks it: its id (unique, also carried into the run so the run can be
/// found again), the exact identity it is for and the commit it is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// The service's build id (a UUID string); stable across retries and restarts.
    pub build_id: String,
    /// The driver being built.
    pub driver: DriverName,
    /// What the artifact is for.
    pub identity: KernelIdentity,
    /// The commit the driver version's tag named when the build was reserved; the build is made
    /// from exactly this tree. `None` only for builds reserved before commits were recorded, which
    /// no backend dispatches.
    pub source_commit: Option<SourceCommit>,
}

/// A published artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// Where a node downloads the package from.
    pub download_url: String,
}

/// What the backend returned when it started a build. Persisted (as JSON) so a restarted service
/// can keep polling the same run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatched {
    /// The backend's run id, when known at dispatch time.
    pub run_id: Option<String>,
    /// A human-facing URL of the run (its page or its log).
    pub run_url: Option<String>,
}

/// The state of a dispatched build as the backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Accepted, not started.
    Queued,
    /// Running.
    InProgress,
    /// Finished and the artifact is published.
    Succeeded,
    /// Finished without an artifact.
    Failed {
        /// Why, for /status.
        message: String,
    },
}

/// Why a backend call did not succeed, classified by what the caller should do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Worth retrying with backoff (network error, 5xx, ...).
    #[error("transient backend error: {0}")]
    Transient(String),
    /// Retry no sooner than `retry_after`.
    #[error("backend rate limited: retry after {retry_after:?}")]
    RateLimited {
        /// How long to wait before the next call.
        retry_after: Duration,
    },
    /// Retrying will not help (bad configuration, refused request, ...).
    #[error("backend error: {0}")]
    Permanent(String),
}
