//! The build coordinator: the one owner of the service's coordination state — the store, the
//! backend, this replica's trackers, the shared waiters of long polls, the single flight of
//! identical requests and the caps on builds in flight. Its methods are the service's operations in
//! domain terms; the HTTP layer ([`crate::api`]) only parses requests into them and renders their
//! results.
//!
//! `request_build`: the artifact store first, else the in-flight build of the same identity, else
//! the driver version is resolved to the commit its tag names ([`SourceResolver`]: a version that
//! is not a tag is refused, an unreadable repository is "unavailable", and neither reserves or
//! dispatches anything), else an atomic reservation, carrying that commit, that starts exactly one
//! build (across replicas: the store's unique active key). The commit is stored with the build and
//! never resolved again for it. Concurrent identical requests of one caller in this process share one lookup-and-reserve
//! ([`SingleFlight`]); an in-flight answer lingers for `in_flight_linger` so a fleet booting in
//! waves is answered from memory, and is forgotten when the build ends. Every request that creates,
//! joins or is refused a build is recorded in the audit trail here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kernel_id::{DriverName, KernelIdentity};
use tokio::sync::watch;

use crate::access::Caller;
use crate::backend::{Backend, BackendError};
use crate::health::CachedHealth;
use crate::single_flight::SingleFlight;
use crate::source::{Resolution, SourceResolver, SourceSettings};
use crate::store::{
    BuildFilter, BuildRecord, CapReached, InFlightCaps, NewBuild, RequestOutcome, RequestRecord,
    Reservation, Store, active_key, now_ms,
};
use crate::tracker::{BuildEnded, TrackerSettings, Trackers};
use crate::waiter::Notifier;

/// How the coordinator runs.
#[derive(Debug, Clone)]
pub struct CoordinatorSettings {
    /// The driver this service builds.
    pub driver: DriverName,
    /// This replica's name in leases.
    pub owner: String,
    /// Timing of the trackers.
    pub trackers: TrackerSettings,
    /// How long a build may take before it is marked timed out.
    pub build_timeout: Duration,
    /// Upper bound of a status wait.
    pub max_wait: Duration,
    /// How long an in-flight answer keeps being shared after it was computed.
    pub in_flight_linger: Duration,
    /// Caps on builds in flight (a principal's own cap replaces `per_caller`).
    pub caps: InFlightCaps,
    /// How often a build's watcher re-reads it without an announcement.
    pub wait_recheck: Duration,
    /// Most long polls waiting at once.
    pub max_long_polls: usize,
    /// How driver versions are resolved to commits (cache age, refresh bound).
    pub source: SourceSettings,
}

/// The answer to a build request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// The artifact is published.
    Done {
        /// Its download URL.
        download_url: String,
    },
    /// This request created the build.
    Created {
        /// The new build.
        build_id: String,
    },
    /// This request joined a build already in flight (or being reserved by an identical request).
    Joined {
        /// That build.
        build_id: String,
    },
}

/// Why the coordinator could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// The store (or the coordinator itself) failed; retrying may help.
    #[error("{0}")]
    Unavailable(String),
    /// The artifact lookup failed.
    #[error("{0}")]
    Backend(BackendError),
    /// A new build would exceed a cap on builds in flight: nothing was dispatched.
    #[error("too many builds in flight: {0:?}")]
    OverCap(CapReached),
    /// No such build.
    #[error("no build '{0}'")]
    UnknownBuild(String),
    /// The driver version is not a tag of the driver's repository: nothing was reserved.
    #[error("driver_version: {version} is not a tag of {repository}")]
    UnknownVersion {
        /// The version asked for.
        version: String,
        /// The repository's URI.
        repository: String,
    },
    /// The driver's repository could not be read, so the version could not be resolved: nothing
    /// was reserved; retrying later may help.
    #[error("{reason}")]
    SourceUnavailable {
        /// Why.
        reason: String,
        /// When asking again makes sense (the resolver lists the tags at most this often).
        retry_after: Duration,
    },
}

impl CoordinatorError {
    fn unavailable(error: impl std::fmt::Display) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// A listed build with who asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The build.
    pub record: BuildRecord,
    /// Its audit rows.
    pub requests: Vec<RequestRecord>,
}

/// What `/healthz` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The store, asked now.
    pub store: Result<(), String>,
    /// The backend, from the periodic probe.
    pub backend: Result<(), String>,
    /// The backend's name.
    pub backend_name: &'static str,
}

/// What one lookup-and-reserve found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Done { download_url: String },
    Dispatched { build_id: String },
    InFlight { build_id: String },
}

/// The single flight's key: the identity's dedup key and the caller (per caller, because the
/// reservation is checked against that caller's cap).
type FlightKey = (String, String);

/// See the module documentation.
pub struct Coordinator {
    store: Store,
    backend: Arc<dyn Backend>,
    driver: DriverName,
    trackers: Trackers,
    notifier: Arc<Notifier>,
    health: CachedHealth,
    flights: Arc<SingleFlight<FlightKey, Result<Answer, CoordinatorError>>>,
    build_timeout: Duration,
    max_wait: Duration,
    in_flight_linger: Duration,
    caps: InFlightCaps,
    shutting_down: watch::Receiver<bool>,
    resolver: SourceResolver,
    /// What a refusal for an unreadable repository tells the caller to wait.
    source_retry_after: Duration,
    /// The fleet view's remembered artifact lookups (`inventory.rs`).
    artifact_lookups: crate::inventory::ArtifactLookups,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("backend", &self.backend.name())
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// A coordinator over `store` and `backend`; long polls answer at once once `shutting_down`
    /// turns true.
    pub fn new(
        store: Store,
        backend: Arc<dyn Backend>,
        health: CachedHealth,
        shutting_down: watch::Receiver<bool>,
        settings: CoordinatorSettings,
    ) -> Arc<Self> {
        let notifier = Arc::new(Notifier::new(
            store.clone(),
            settings.wait_recheck,
            settings.max_long_polls,
        ));
        let flights: Arc<SingleFlight<FlightKey, Result<Answer, CoordinatorError>>> =
            Arc::default();
        // A lingering "in flight" answer never outlives its build in this replica.
        let ended: BuildEnded = {
            let flights = Arc::clone(&flights);
            Arc::new(move |record: &BuildRecord| {
                let key = record.active_key();
                flights.forget_where(|(active, _)| *active == key);
            })
        };
        let resolver = SourceResolver::new(backend.source_repository(), settings.source);
        let trackers = Trackers::new(
            store.clone(),
            Arc::clone(&backend),
            settings.owner,
            settings.trackers,
            Arc::clone(&notifier),
            ended,
        );
        Arc::new(Self {
            store,
            backend,
            driver: settings.driver,
            trackers,
            notifier,
            health,
            flights,
            build_timeout: settings.build_timeout,
            max_wait: settings.max_wait,
            in_flight_linger: settings.in_flight_linger,
            caps: settings.caps,
            shutting_down,
            resolver,
            source_retry_after: settings.source.refresh_interval.max(Duration::from_secs(5)),
            artifact_lookups: crate::inventory::ArtifactLookups::default(),
        })
    }

    // The fleet inventory's operations (`inventory.rs`) extend the coordinator from their own
    // module, through these.

    /// The store.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The backend.
    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The driver this service builds.
    pub fn driver(&self) -> &DriverName {
        &self.driver
    }

    /// The fleet view's remembered artifact lookups.
    pub(crate) fn artifact_lookups(&self) -> &crate::inventory::ArtifactLookups {
        &self.artifact_lookups
    }

    /// The resolver of driver versions (its repository's URI, for logs and tests).
    pub fn resolver(&self) -> &SourceResolver {
        &self.resolver
    }

    /// This replica's trackers (the service runs their sweeper and stops them).
    pub fn trackers(&self) -> &Trackers {
        &self.trackers
    }

    /// The shared waiters (the service wakes them from PostgreSQL's announcements).
    pub fn notifier(&self) -> &Arc<Notifier> {
        &self.notifier
    }

    /// Closes the store (once the trackers stopped, see [`Trackers::shutdown`]).
    pub async fn close(&self) {
        self.store.close().await;
    }

    /// Answers a valid build request of `caller`, recording it in the audit trail.
    pub async fn request_build(
        self: &Arc<Self>,
        caller: &Caller,
        identity: KernelIdentity,
    ) -> Result<Requested, CoordinatorError> {
        let key = active_key(&self.driver, &identity);
        let requester = caller.name();
        let caps = InFlightCaps {
            total: self.caps.total,
            per_caller: caller
                .principal
                .as_ref()
                .and_then(|principal| principal.max_in_flight())
                .or(self.caps.per_caller),
        };
        let work = {
            let this = Arc::clone(self);
            let (identity, requester) = (identity.clone(), requester.clone());
            async move { this.lookup_or_reserve(identity, &requester, caps).await }
        };
        // Errors and hits are not kept (hits are cheap; errors must be retried for real).
        let in_flight_linger = self.in_flight_linger;
        let linger = move |answer: &Result<Answer, CoordinatorError>| match answer {
            Ok(Answer::Dispatched { .. } | Answer::InFlight { .. }) => in_flight_linger,
            _ => Duration::ZERO,
        };
        let landed = self.flights.run((key, requester), work, linger).await;
        let answer = landed
            .value
            .unwrap_or_else(|abandoned| Err(CoordinatorError::unavailable(abandoned)));
        // Only the request whose lookup reserved the build created it; the others joined it.
        let requested = match answer {
            Ok(Answer::Done { download_url }) => Ok(Requested::Done { download_url }),
            Ok(Answer::Dispatched { build_id }) if landed.leader => {
                Ok(Requested::Created { build_id })
            }
            Ok(Answer::Dispatched { build_id } | Answer::InFlight { build_id }) => {
                Ok(Requested::Joined { build_id })
            }
            Err(error) => Err(error),
        };
        match &requested {
            Ok(Requested::Created { build_id }) => {
                self.audit(caller, &identity, Some(build_id), RequestOutcome::Created)
                    .await
            }
            Ok(Requested::Joined { build_id }) => {
                self.audit(caller, &identity, Some(build_id), RequestOutcome::Joined)
                    .await
            }
            Err(CoordinatorError::OverCap(_)) => {
                self.audit(caller, &identity, None, RequestOutcome::RefusedCap)
                    .await
            }
            _ => {}
        }
        requested
    }

    /// Records a request refused by the caller's own limits (checked by the HTTP layer).
    pub async fn record_refusal(&self, caller: &Caller, identity: &KernelIdentity) {
        self.audit(caller, identity, None, RequestOutcome::RefusedLimit)
            .await;
    }

    async fn lookup_or_reserve(
        &self,
        identity: KernelIdentity,
        requester: &str,
        caps: InFlightCaps,
    ) -> Result<Answer, CoordinatorError> {
        match self.backend.find_artifact(&self.driver, &identity).await {
            Ok(Some(artifact)) => {
                return Ok(Answer::Done {
                    download_url: artifact.download_url,
                });
            }
            Ok(None) => {}
            Err(error) => return Err(CoordinatorError::Backend(error)),
        }
        let key = active_key(&self.driver, &identity);
        if let Some(build_id) = self
            .store
            .active_build(&key)
            .await
            .map_err(CoordinatorError::unavailable)?
        {
            return Ok(Answer::InFlight { build_id });
        }
        // A miss: which commit is this version? Nothing is reserved for a version that is no tag.
        let version = identity.driver_version();
        let source_commit = match self.resolver.resolve(version).await {
            Resolution::Resolved(commit) => commit,
            Resolution::UnknownVersion => {
                let repository = self.resolver.repository().uri();
                tracing::info!(requester, driver_version = %version, %repository, "build refused: the driver version is not a tag");
                return Err(CoordinatorError::UnknownVersion {
                    version: version.to_string(),
                    repository,
                });
            }
            Resolution::Unavailable(reason) => {
                return Err(CoordinatorError::SourceUnavailable {
                    reason,
                    retry_after: self.source_retry_after,
                });
            }
        };
        let now = now_ms();
        let new = NewBuild {
            build_id: uuid::Uuid::new_v4().to_string(),
            driver: self.driver.clone(),
            identity,
            now,
            deadline_at: now.saturating_add(millis(self.build_timeout)),
            lease_owner: self.trackers.owner().to_owned(),
            lease_until: now.saturating_add(millis(self.trackers.lease())),
            requested_by: requester.to_owned(),
            source_commit,
        };
        match self
            .store
            .reserve(&new, caps)
            .await
            .map_err(CoordinatorError::unavailable)?
        {
            Reservation::Created(build_id) => {
                tracing::info!(build_id = %build_id, cache_key = %new.cache_key(), source_commit = %new.source_commit, "new build reserved");
                self.trackers.track(build_id.clone()).await;
                Ok(Answer::Dispatched { build_id })
            }
            Reservation::Existing(build_id) => Ok(Answer::InFlight { build_id }),
            Reservation::OverCap(reached) => {
                tracing::info!(requester, cache_key = %new.cache_key(), ?reached, "build refused: cap on builds in flight");
                Err(CoordinatorError::OverCap(reached))
            }
        }
    }

    /// Records a request in the audit trail and in the log, with the same fields. A failed write
    /// is logged, not fatal: the request was already decided.
    async fn audit(
        &self,
        caller: &Caller,
        identity: &KernelIdentity,
        build_id: Option<&str>,
        outcome: RequestOutcome,
    ) {
        let principal = caller.name();
        let client = caller.client.to_string();
        let cache_key = identity.cache_key();
        tracing::info!(
            principal = %principal,
            client = %client,
            cache_key = %cache_key,
            build_id = build_id.unwrap_or(""),
            outcome = outcome.as_str(),
            "build request"
        );
        if let Err(error) = self
            .store
            .record_request(build_id, &cache_key, &principal, &client, outcome, now_ms())
            .await
        {
            tracing::error!(%error, principal = %principal, "could not record the request in the audit trail");
        }
    }

    /// A build's record; with a `wait`, held (up to the service's maximum, and only until the
    /// service begins to shut down) until the build changes or ends. `None`: no such build.
    pub async fn status(
        &self,
        build_id: &str,
        wait: Duration,
    ) -> Result<Option<BuildRecord>, CoordinatorError> {
        let Some(fresh) = self
            .notifier
            .read(build_id)
            .await
            .map_err(CoordinatorError::unavailable)?
        else {
            return Ok(None);
        };
        let wait = wait.min(self.max_wait);
        // A long poll waits on the build's shared watcher: however many wait, only it reads the
        // database again.
        if wait.is_zero() || fresh.record.state.is_terminal() {
            return Ok(Some(fresh.record));
        }
        Ok(Some(
            self.notifier
                .wait_for_change(fresh, wait, self.shutting_down.clone())
                .await,
        ))
    }

    /// The builds `filter` selects (`before`: only those created before that build), each with
    /// its audit rows. `filter.before` is replaced by `before`'s creation time.
    pub async fn list_builds(
        &self,
        mut filter: BuildFilter,
        before: Option<&str>,
    ) -> Result<Vec<Listed>, CoordinatorError> {
        if let Some(build_id) = before {
            match self
                .store
                .get(build_id)
                .await
                .map_err(CoordinatorError::unavailable)?
            {
                Some(record) => filter.before = Some(record.created_at),
                None => return Err(CoordinatorError::UnknownBuild(build_id.to_owned())),
            }
        }
        let records = self
            .store
            .list_builds(&filter)
            .await
            .map_err(CoordinatorError::unavailable)?;
        let ids: Vec<String> = records.iter().map(|r| r.build_id.clone()).collect();
        let mut requests: HashMap<String, Vec<RequestRecord>> = self
            .store
            .requests_for(&ids)
            .await
            .map_err(CoordinatorError::unavailable)?;
        Ok(records
            .into_iter()
            .map(|record| Listed {
                requests: requests.remove(&record.build_id).unwrap_or_default(),
                record,
            })
            .collect())
    }

    /// The store, asked now, and the backend from its cached probe (so however many ask, the
    /// backend is not asked again).
    pub async fn health(&self) -> HealthReport {
        let store = self.store.ping().await.map_err(|error| error.to_string());
        HealthReport {
            store,
            backend: self.health.latest().await,
            backend_name: self.backend.name(),
        }
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use kernel_id::IdentityInput;

    use super::*;
    use crate::backend::{ArtifactRef, BuildSpec, Dispatched, RunState};

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    /// Nothing is published; every dispatch is counted and its run fails once `fail` is set.
    #[derive(Default)]
    struct Failing {
        dispatches: AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Backend for Failing {
        fn name(&self) -> &'static str {
            "failing"
        }
        fn source_repository(&self) -> Arc<dyn crate::source::SourceRepository> {
            crate::source::StaticTags::of(&[("v0.1.2", COMMIT)])
        }
        async fn find_artifact(
            &self,
            _: &DriverName,
            _: &KernelIdentity,
        ) -> Result<Option<ArtifactRef>, BackendError> {
            Ok(None)
        }
        async fn dispatch(&self, _: &BuildSpec) -> Result<Dispatched, BackendError> {
            self.dispatches.fetch_add(1, Ordering::SeqCst);
            Ok(Dispatched::default())
        }
        async fn poll(&self, _: &BuildSpec, _: &Dispatched) -> Result<RunState, BackendError> {
            Ok(if self.fail.load(Ordering::SeqCst) {
                RunState::Failed {
                    message: "no".to_owned(),
                }
            } else {
                RunState::InProgress
            })
        }
        async fn cancel(&self, _: &BuildSpec, _: &Dispatched) -> Result<(), BackendError> {
            Ok(())
        }
        async fn health(&self) -> Result<(), BackendError> {
            Ok(())
        }
    }

    async fn coordinator(
        dir: &tempfile::TempDir,
        backend: &Arc<Failing>,
    ) -> (Arc<Coordinator>, Store, watch::Sender<bool>) {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display());
        let store = Store::connect(&url).await.expect("store");
        let (_probe, health) = crate::health::probe(backend.clone(), Duration::from_secs(60));
        let (stopping, shutting_down) = watch::channel(false);
        let coordinator = Coordinator::new(
            store.clone(),
            backend.clone(),
            health,
            shutting_down,
            CoordinatorSettings {
                driver: DriverName::parse("example-driver").expect("driver"),
                owner: "me".to_owned(),
                trackers: TrackerSettings {
                    poll_interval: Duration::from_millis(10),
                    lease: Duration::from_secs(60),
                    retry_base: Duration::from_millis(10),
                    retry_max: Duration::from_millis(100),
                    retention: Duration::from_secs(3600),
                },
                build_timeout: Duration::from_secs(60),
                max_wait: Duration::from_secs(5),
                // Longer than the test: only the build's end can forget the answer.
                in_flight_linger: Duration::from_secs(600),
                caps: InFlightCaps::default(),
                wait_recheck: Duration::from_secs(60),
                max_long_polls: 10,
                source: SourceSettings::default(),
            },
        );
        (coordinator, store, stopping)
    }

    fn identity(driver_version: &str) -> KernelIdentity {
        KernelIdentity::from_input(&IdentityInput {
            kernel_version: "6.1.0-47-amd64".to_owned(),
            architecture: "x86_64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: None,
            driver_version: driver_version.to_owned(),
        })
        .expect("identity")
    }

    fn caller() -> Caller {
        Caller {
            principal: None,
            client: std::net::IpAddr::from([127, 0, 0, 1]),
        }
    }

    #[tokio::test]
    async fn a_version_that_is_no_tag_reserves_and_dispatches_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let backend = Arc::new(Failing::default());
        let (coordinator, store, _stopping) = coordinator(&dir, &backend).await;
        assert_eq!(
            coordinator
                .request_build(&caller(), identity("v9.9.9"))
                .await,
            Err(CoordinatorError::UnknownVersion {
                version: "v9.9.9".to_owned(),
                repository: "file:///test/driver".to_owned(),
            })
        );
        assert_eq!(store.count_builds().await.expect("count"), 0);
        let Ok(Requested::Created { build_id }) = coordinator
            .request_build(&caller(), identity("v0.1.2"))
            .await
        else {
            panic!("a tag creates the build");
        };
        let record = store.get(&build_id).await.expect("get").expect("row");
        assert_eq!(
            record.source_commit.as_ref().map(|c| c.as_str()),
            Some(COMMIT)
        );
        coordinator.trackers().shutdown().await;
        assert_eq!(backend.dispatches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_in_flight_answer_lingers_until_its_build_ends() {
        let dir = tempfile::tempdir().expect("dir");
        let backend = Arc::new(Failing::default());
        let (coordinator, _store, _stopping) = coordinator(&dir, &backend).await;
        let caller = Caller {
            principal: None,
            client: std::net::IpAddr::from([127, 0, 0, 1]),
        };
        let identity = KernelIdentity::from_input(&IdentityInput {
            kernel_version: "6.1.0-47-amd64".to_owned(),
            architecture: "x86_64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: None,
            driver_version: "v0.1.2".to_owned(),
        })
        .expect("identity");
        let Ok(Requested::Created { build_id }) =
            coordinator.request_build(&caller, identity.clone()).await
        else {
            panic!("the first request creates the build");
        };
        assert_eq!(
            coordinator.request_build(&caller, identity.clone()).await,
            Ok(Requested::Joined {
                build_id: build_id.clone()
            })
        );
        backend.fail.store(true, Ordering::SeqCst);
        let ended = coordinator
            .status(&build_id, Duration::from_secs(5))
            .await
            .expect("status")
            .expect("build");
        let ended = if ended.state.is_terminal() {
            ended
        } else {
            coordinator
                .status(&build_id, Duration::from_secs(5))
                .await
                .expect("status")
                .expect("build")
        };
        assert_eq!(ended.state, crate::store::BuildState::Error);
        let Ok(Requested::Created { build_id: next }) =
            coordinator.request_build(&caller, identity).await
        else {
            panic!("after the build ended, a request creates a new one");
        };
        assert_ne!(next, build_id);
        let listed = coordinator
            .list_builds(
                BuildFilter {
                    limit: 50,
                    ..BuildFilter::default()
                },
                None,
            )
            .await
            .expect("list");
        assert_eq!(listed.len(), 2);
        let first = listed
            .iter()
            .find(|listed| listed.record.build_id == build_id)
            .expect("first build");
        let outcomes: Vec<_> = first
            .requests
            .iter()
            .map(|row| (row.outcome, row.requests))
            .collect();
        assert_eq!(
            outcomes,
            [(RequestOutcome::Created, 1), (RequestOutcome::Joined, 1)]
        );
        coordinator.trackers().shutdown().await;
    }
}
