//! One tracker task per in-flight build: dispatches it, polls the backend, applies the deadline, and is
//! the one place backend calls are retried ([`RetryPolicy`]: jittered exponential backoff, rate limits
//! honoured). A lease in the database (database time) makes one replica the tracker of a build; while
//! a backend call runs, a heartbeat renews it every third of a lease, and a tracker whose lease is lost
//! drops the call's result and abandons the build. A sweeper takes over builds whose lease lapsed (a
//! replica died) and, at start, everything a previous run left in flight.
//!
//! One dispatch per build id: `dispatch_sent_at` is stored before every dispatch call. A build found
//! in `dispatching` with it set had a dispatch of unknown outcome (an error, or a replica that died
//! mid-call), so its tracker waits the backend's settle time after it, looks the run up by build id
//! ([`Backend::find_run`]) and sends again only when there is none.
//!
//! Every state change is announced through [`Notifier`], which is what lets `GET /status?wait=`
//! answer the moment a build moves instead of at the next poll.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::{Backend, BackendError, BuildSpec, Dispatched, RunState};
use crate::retry::RetryPolicy;
use crate::store::{BuildRecord, BuildState, Store, StoreError, now_ms};
use crate::telemetry;

/// Timing of trackers.
#[derive(Debug, Clone)]
pub struct TrackerSettings {
    /// Pause between polls of a running build.
    pub poll_interval: Duration,
    /// A build's lease; it is renewed at least every third of it, during backend calls too.
    pub lease: Duration,
    /// First retry delay after a transient error (doubles up to `retry_max`, with jitter).
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Finished builds (rows, local build directories and logs) and audit rows older than this are
    /// pruned by the sweeper.
    pub retention: Duration,
}

/// Per-build change announcements: the shared waiters of long polls (see [`crate::waiter`]).
pub use crate::waiter::Notifier;

/// Told about every build whose end this replica's trackers recorded (or found recorded).
pub type BuildEnded = Arc<dyn Fn(&BuildRecord) + Send + Sync>;

struct Inner {
    store: Store,
    backend: Arc<dyn Backend>,
    owner: String,
    settings: TrackerSettings,
    retry: RetryPolicy,
    notifier: Arc<Notifier>,
    ended: BuildEnded,
    tracked: Mutex<HashSet<String>>,
    tasks: tokio::sync::Mutex<JoinSet<()>>,
    stop: watch::Sender<bool>,
}

/// The trackers of this replica.
#[derive(Clone)]
pub struct Trackers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Trackers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trackers")
            .field("owner", &self.inner.owner)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Trackers {
    /// Trackers for this replica (`owner` names it in leases).
    pub fn new(
        store: Store,
        backend: Arc<dyn Backend>,
        owner: String,
        settings: TrackerSettings,
        notifier: Arc<Notifier>,
        ended: BuildEnded,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                backend,
                owner,
                retry: RetryPolicy::new(settings.retry_base, settings.retry_max),
                settings,
                notifier,
                ended,
                tracked: Mutex::new(HashSet::new()),
                tasks: tokio::sync::Mutex::new(JoinSet::new()),
                stop: watch::channel(false).0,
            }),
        }
    }

    /// This replica's lease owner name.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The lease length.
    pub fn lease(&self) -> Duration {
        self.inner.settings.lease
    }

    /// Starts tracking `build_id` (whose lease this replica holds) unless it is tracked already.
    pub async fn track(&self, build_id: String) {
        {
            let mut tracked = self
                .inner
                .tracked
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if *self.inner.stop.borrow() || !tracked.insert(build_id.clone()) {
                return;
            }
        }
        let inner = Arc::clone(&self.inner);
        let span = tracing::info_span!("build", build_id = %build_id);
        let mut tasks = self.inner.tasks.lock().await;
        // Reap trackers that ended so the set only holds live ones.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(
            async move {
                metrics::gauge!(telemetry::BUILDS_TRACKED).increment(1.0);
                tracing::info!("tracking build");
                track_build(&inner, &build_id).await;
                metrics::gauge!(telemetry::BUILDS_TRACKED).decrement(1.0);
                inner
                    .tracked
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .remove(&build_id);
            }
            .instrument(span),
        );
    }

    /// Takes over every in-flight build without a live lease, now and every half lease, until stopped;
    /// applies retention every tenth of it (at most hourly).
    pub async fn run_sweeper(self) {
        let mut stop = self.inner.stop.subscribe();
        let period = (self.inner.settings.lease / 2).max(Duration::from_millis(100));
        let prune_every = (self.inner.settings.retention / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(3600));
        let mut next_prune = Instant::now();
        loop {
            if let Err(error) = self.sweep().await {
                tracing::warn!(%error, "could not look for builds to resume");
            }
            if Instant::now() >= next_prune {
                self.prune().await;
                next_prune = Instant::now() + prune_every;
            }
            self.inner.notifier.prune();
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    /// One sweep: claim and track every unleased in-flight build (by the database's clock).
    pub async fn sweep(&self) -> Result<(), StoreError> {
        for build_id in self.inner.store.unleased_in_flight().await? {
            let already = self
                .inner
                .tracked
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .contains(&build_id);
            if already {
                continue;
            }
            if self
                .inner
                .store
                .claim(&build_id, &self.inner.owner, self.inner.settings.lease)
                .await?
            {
                tracing::info!(build_id = %build_id, "resuming build");
                self.track(build_id).await;
            }
        }
        Ok(())
    }

    /// Retention: removes what the backend keeps of builds that ended more than the retention ago
    /// (local build directories and logs), then their rows and audit rows, and the reports of nodes
    /// silent for longer than it. In-flight builds and published artifacts are never touched. Failures are logged; the next round tries again.
    pub async fn prune(&self) {
        let retention = self.inner.settings.retention;
        let cutoff = SystemTime::now()
            .checked_sub(retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match self.inner.backend.prune(cutoff).await {
            Ok(0) => {}
            Ok(removed) => {
                metrics::counter!(telemetry::PRUNED, "what" => "build_dirs").increment(removed);
                tracing::info!(removed, "retention removed local build directories");
            }
            Err(error) => tracing::warn!(%error, "retention could not prune the backend's builds"),
        }
        match self
            .inner
            .store
            .prune_finished(now_ms().saturating_sub(millis(retention)))
            .await
        {
            Ok((0, 0)) => {}
            Ok((builds, requests)) => {
                metrics::counter!(telemetry::PRUNED, "what" => "builds").increment(builds);
                metrics::counter!(telemetry::PRUNED, "what" => "build_requests")
                    .increment(requests);
                tracing::info!(
                    builds,
                    requests,
                    "retention removed finished builds and audit rows"
                );
            }
            Err(error) => tracing::warn!(%error, "retention could not prune the database"),
        }
        // The fleet inventory: nodes silent for longer than the retention, and first-boot waits
        // older than it (a node reporting every day keeps its row, not a wait of months ago).
        match self.inner.store.prune_reports(retention).await {
            Ok((0, 0)) => {}
            Ok((reports, waits)) => {
                metrics::counter!(telemetry::PRUNED, "what" => "node_reports").increment(reports);
                tracing::info!(
                    reports,
                    waits,
                    "retention removed silent nodes' reports and old first-boot waits"
                );
            }
            Err(error) => tracing::warn!(%error, "retention could not prune the node reports"),
        }
    }

    /// Stops every tracker and gives their leases up so the next start (or another replica) resumes
    /// them at once.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let mut tasks = self.inner.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn error_kind(error: &BackendError) -> &'static str {
    match error {
        BackendError::Transient(_) => "transient",
        BackendError::RateLimited { .. } => "rate_limited",
        BackendError::Permanent(_) => "permanent",
    }
}

fn spec_of(record: &BuildRecord) -> BuildSpec {
    BuildSpec {
        build_id: record.build_id.clone(),
        driver: record.driver.clone(),
        identity: record.identity.clone(),
        // The commit stored at reservation: a resumed or retried build never resolves again.
        source_commit: record.source_commit.clone(),
    }
}

/// The tracker loop of one build. Returns when the build ended, the lease was lost or the replica stops.
async fn track_build(inner: &Inner, build_id: &str) {
    let settings = &inner.settings;
    let renew_every = settings.lease / 3;
    let mut stop = inner.stop.subscribe();
    let mut failures: u32 = 0;
    let mut not_before = Instant::now();
    let mut missing_artifact_polls = 0u32;
    'track: loop {
        if *stop.borrow() {
            if let Err(error) = inner.store.release(build_id, &inner.owner).await {
                tracing::warn!(%error, "could not release the lease");
            }
            return;
        }
        let record = match inner.store.get(build_id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                tracing::error!("build vanished from the database");
                return;
            }
            Err(StoreError::Corrupt { problem, .. }) => {
                // Nothing can be built from a row this version cannot read: end the build.
                fail_unreadable(inner, build_id, &problem).await;
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "database unavailable; retrying");
                failures = failures.saturating_add(1);
                let pause = inner
                    .retry
                    .delay(&BackendError::Transient(String::new()), failures)
                    .unwrap_or(inner.retry.max);
                pause_or_stop(pause.min(renew_every), &mut stop).await;
                continue;
            }
        };
        if record.state.is_terminal() {
            return;
        }
        let now = now_ms();
        match inner
            .store
            .renew(build_id, &inner.owner, settings.lease)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!("lease lost: another replica tracks this build now");
                return;
            }
            Err(error) => tracing::warn!(%error, "could not renew the lease"),
        }
        let until_deadline =
            Duration::from_millis(u64::try_from(record.deadline_at - now).unwrap_or(0));
        if until_deadline.is_zero() {
            // The build is stopped before its identity's slot is freed, so a timed-out build can
            // never run (and publish) beside the next one.
            let mut message = format!(
                "no result before the deadline ({} s after the request)",
                (record.deadline_at - record.created_at) / 1000
            );
            let Some(cancelled) = leased(inner, build_id, cancel(inner, &record)).await else {
                return;
            };
            match cancelled {
                Ok(()) => {
                    metrics::counter!(telemetry::CANCELS, "result" => "ok").increment(1);
                    message.push_str("; the build was cancelled");
                }
                Err(error) => {
                    metrics::counter!(telemetry::CANCELS, "result" => "failed").increment(1);
                    tracing::error!(%error, "could not cancel the timed-out build");
                    message.push_str(&format!("; cancelling it failed: {error}"));
                }
            }
            finish(inner, &record, BuildState::TimedOut, None, Some(&message)).await;
            return;
        }
        let waiting = not_before.saturating_duration_since(Instant::now());
        if !waiting.is_zero() {
            pause_or_stop(waiting.min(renew_every).min(until_deadline), &mut stop).await;
            continue;
        }
        let spec = spec_of(&record);
        let outcome = match record.state {
            BuildState::Dispatching => 'dispatch: {
                if let Some(sent_at) = record.dispatch_sent_at {
                    // A dispatch of unknown outcome: it may have started a run that is not listed
                    // yet. Wait until it settled, then look before sending again.
                    let settled_at =
                        sent_at.saturating_add(millis(inner.backend.dispatch_settle()));
                    let database_now = match inner.store.now().await {
                        Ok(database_now) => database_now,
                        Err(error) => {
                            tracing::warn!(%error, "database unavailable; retrying");
                            pause_or_stop(settings.retry_base.min(renew_every), &mut stop).await;
                            continue 'track;
                        }
                    };
                    if database_now < settled_at {
                        let wait = settled_at - database_now;
                        tracing::info!(
                            wait_ms = wait,
                            "an earlier dispatch may still show up; waiting before looking for its run"
                        );
                        not_before = Instant::now()
                            + Duration::from_millis(u64::try_from(wait).unwrap_or(0));
                        continue 'track;
                    }
                    let since = SystemTime::UNIX_EPOCH
                        + Duration::from_millis(u64::try_from(record.created_at).unwrap_or(0));
                    match leased(inner, build_id, inner.backend.find_run(&spec, since)).await {
                        None => return,
                        Some(Err(error)) => break 'dispatch Err(error),
                        Some(Ok(Some(dispatched))) => {
                            metrics::counter!(telemetry::DISPATCHES, "result" => "found")
                                .increment(1);
                            tracing::info!(run_id = ?dispatched.run_id, run_url = ?dispatched.run_url, "found the run of an earlier dispatch; not sending again");
                            record_dispatched(inner, build_id, &dispatched).await;
                            not_before = Instant::now() + settings.poll_interval;
                            break 'dispatch Ok(());
                        }
                        Some(Ok(None)) => {
                            tracing::warn!("no run of the earlier dispatch; sending it again")
                        }
                    }
                }
                match inner
                    .store
                    .record_dispatch_sent(build_id, &inner.owner, now)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => continue 'track,
                    Err(error) => {
                        tracing::warn!(%error, "could not record the dispatch attempt");
                        pause_or_stop(settings.retry_base.min(renew_every), &mut stop).await;
                        continue 'track;
                    }
                }
                tracing::info!(attempt = record.dispatch_attempts + 1, "dispatching");
                match leased(inner, build_id, inner.backend.dispatch(&spec)).await {
                    None => return,
                    Some(Ok(dispatched)) => {
                        metrics::counter!(telemetry::DISPATCHES, "result" => "ok").increment(1);
                        tracing::info!(run_id = ?dispatched.run_id, run_url = ?dispatched.run_url, "dispatched");
                        record_dispatched(inner, build_id, &dispatched).await;
                        // A fast backend may already be done; the first poll comes after one interval.
                        not_before = Instant::now() + settings.poll_interval;
                        Ok(())
                    }
                    Some(Err(error)) => {
                        metrics::counter!(telemetry::DISPATCHES, "result" => error_kind(&error))
                            .increment(1);
                        // The call was in flight until now: its settle time counts from here.
                        if let Err(error) = inner
                            .store
                            .record_dispatch_ended(build_id, &inner.owner)
                            .await
                        {
                            tracing::warn!(%error, "could not record the end of the dispatch attempt");
                        }
                        Err(error)
                    }
                }
            }
            BuildState::Queued | BuildState::InProgress => {
                let Some(polled) = leased(
                    inner,
                    build_id,
                    inner.backend.poll(&spec, &record.dispatched()),
                )
                .await
                else {
                    return;
                };
                match polled {
                    Ok(RunState::Queued) => {
                        running(inner, &record, BuildState::Queued, &mut not_before).await
                    }
                    Ok(RunState::InProgress) => {
                        running(inner, &record, BuildState::InProgress, &mut not_before).await
                    }
                    Ok(RunState::Failed { message }) => {
                        finish(inner, &record, BuildState::Error, None, Some(&message)).await;
                        return;
                    }
                    Ok(RunState::Succeeded) => match leased(
                        inner,
                        build_id,
                        inner.backend.find_artifact(&spec.driver, &spec.identity),
                    )
                    .await
                    {
                        None => return,
                        Some(Ok(Some(artifact))) => {
                            finish(
                                inner,
                                &record,
                                BuildState::Done,
                                Some(&artifact.download_url),
                                None,
                            )
                            .await;
                            return;
                        }
                        Some(Ok(None)) => {
                            // Publication can trail the run's conclusion by a moment on GitHub.
                            missing_artifact_polls += 1;
                            if missing_artifact_polls >= 5 {
                                finish(
                                    inner,
                                    &record,
                                    BuildState::Error,
                                    None,
                                    Some("the build succeeded but its artifact was not published"),
                                )
                                .await;
                                return;
                            }
                            not_before = Instant::now() + settings.poll_interval;
                            Ok(())
                        }
                        Some(Err(error)) => Err(error),
                    },
                    Err(error) => Err(error),
                }
            }
            BuildState::Done | BuildState::Error | BuildState::TimedOut => return,
        };
        match outcome {
            Ok(()) => failures = 0,
            Err(error) => {
                metrics::counter!(telemetry::BACKEND_ERRORS, "kind" => error_kind(&error))
                    .increment(1);
                match inner.retry.delay(&error, failures) {
                    Some(pause) => {
                        tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "backend call failed; retrying");
                        failures = failures.saturating_add(1);
                        not_before = Instant::now() + pause;
                    }
                    None => {
                        let message = error.to_string();
                        finish(inner, &record, BuildState::Error, None, Some(&message)).await;
                        return;
                    }
                }
            }
        }
    }
}

/// Cancels a build past its deadline through the backend, retrying within half a lease (the caller
/// keeps the lease renewed meanwhile).
async fn cancel(inner: &Inner, record: &BuildRecord) -> Result<(), String> {
    let spec = spec_of(record);
    let dispatched = record.dispatched();
    let give_up = Instant::now() + inner.settings.lease / 2;
    inner
        .retry
        .retry_until(
            give_up,
            || inner.backend.cancel(&spec, &dispatched),
            |error| {
                metrics::counter!(telemetry::BACKEND_ERRORS, "kind" => error_kind(error))
                    .increment(1);
                tracing::warn!(%error, "cancelling failed");
            },
        )
        .await
        .map_err(|error| error.to_string())?;
    tracing::info!("cancelled the timed-out build");
    Ok(())
}

/// Awaits a backend call while a heartbeat renews the build's lease every third of it, so a call that
/// outlasts the lease (a dispatch answered after minutes) never lets another replica take the build
/// over meanwhile. `None` when the lease was lost during the call (taken over, the build ended
/// elsewhere, or no renewal succeeded for a whole lease): the call is dropped and its result never
/// written; the caller abandons the build.
async fn leased<T>(inner: &Inner, build_id: &str, call: impl Future<Output = T>) -> Option<T> {
    let lease = inner.settings.lease;
    let every = (lease / 3).max(Duration::from_millis(10));
    let heartbeat = async {
        // The tracker renewed the lease just before the call; count conservatively from now.
        let mut held_until = Instant::now() + lease.saturating_sub(every);
        loop {
            tokio::time::sleep(every).await;
            let asked_at = Instant::now();
            let renewed =
                tokio::time::timeout(every, inner.store.renew(build_id, &inner.owner, lease)).await;
            match renewed {
                Ok(Ok(true)) => held_until = asked_at + lease,
                Ok(Ok(false)) => {
                    tracing::warn!("lease lost during a backend call; abandoning the build");
                    return;
                }
                Ok(Err(error)) if Instant::now() < held_until => {
                    tracing::warn!(%error, "could not renew the lease; trying again");
                }
                Err(_elapsed) if Instant::now() < held_until => {
                    tracing::warn!("renewing the lease timed out; trying again");
                }
                _ => {
                    tracing::warn!(
                        "lease not renewed for a whole lease during a backend call; abandoning the build"
                    );
                    return;
                }
            }
        }
    };
    tokio::select! {
        biased;
        result = call => Some(result),
        () = heartbeat => None,
    }
}

/// Records an accepted (or found) dispatch: the build is queued with its run.
async fn record_dispatched(inner: &Inner, build_id: &str, dispatched: &Dispatched) {
    match inner
        .store
        .set_dispatched(build_id, &inner.owner, dispatched, now_ms())
        .await
    {
        Ok(_) => inner.notifier.notify(build_id),
        Err(error) => {
            tracing::warn!(%error, "could not record the dispatch; its run will be looked up")
        }
    }
}

async fn running(
    inner: &Inner,
    record: &BuildRecord,
    state: BuildState,
    not_before: &mut Instant,
) -> Result<(), BackendError> {
    if record.state != state {
        match inner
            .store
            .set_running_state(&record.build_id, &inner.owner, state, now_ms())
            .await
        {
            Ok(true) => {
                tracing::info!(state = state.as_str(), "build state changed");
                inner.notifier.notify(&record.build_id);
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "could not record the state"),
        }
    }
    *not_before = Instant::now() + inner.settings.poll_interval;
    Ok(())
}

async fn finish(
    inner: &Inner,
    record: &BuildRecord,
    state: BuildState,
    download_url: Option<&str>,
    error: Option<&str>,
) {
    let now = now_ms();
    match inner
        .store
        .finish(
            &record.build_id,
            &inner.owner,
            state,
            download_url,
            error,
            now,
        )
        .await
    {
        Ok(true) => {
            let seconds = (now - record.created_at).max(0) as f64 / 1000.0;
            metrics::counter!(telemetry::BUILDS_FINISHED, "state" => state.as_str()).increment(1);
            metrics::histogram!(telemetry::BUILD_DURATION, "state" => state.as_str())
                .record(seconds);
            match error {
                Some(error) => {
                    tracing::warn!(state = state.as_str(), seconds, %error, "build ended")
                }
                None => {
                    tracing::info!(state = state.as_str(), seconds, download_url, "build ended")
                }
            }
        }
        Ok(false) => tracing::info!("build was ended elsewhere"),
        Err(error) => tracing::error!(%error, "could not record the end of the build; will retry"),
    }
    (inner.ended)(record);
    inner.notifier.notify(&record.build_id);
}

/// Ends a build whose row cannot be read as a build (see [`StoreError::Corrupt`]).
async fn fail_unreadable(inner: &Inner, build_id: &str, problem: &str) {
    tracing::error!(problem, "the build's row is unreadable; ending the build");
    let message = format!("the stored build is unreadable: {problem}");
    match inner
        .store
        .finish(
            build_id,
            &inner.owner,
            BuildState::Error,
            None,
            Some(&message),
            now_ms(),
        )
        .await
    {
        Ok(_) => inner.notifier.notify(build_id),
        Err(error) => tracing::error!(%error, "could not record the end of the build"),
    }
}

async fn pause_or_stop(pause: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
}

#[cfg(test)]
mod tests {
    use kernel_id::{DriverName, KernelIdentity};

    use super::*;
    use crate::backend::ArtifactRef;
    use crate::store::{InFlightCaps, NewBuild};

    /// A backend no test here may reach.
    struct Unreachable;

    #[async_trait::async_trait]
    impl Backend for Unreachable {
        fn name(&self) -> &'static str {
            "unreachable"
        }
        fn source_repository(&self) -> Arc<dyn crate::source::SourceRepository> {
            crate::source::StaticTags::of(&[])
        }
        async fn find_artifact(
            &self,
            _: &DriverName,
            _: &KernelIdentity,
        ) -> Result<Option<ArtifactRef>, BackendError> {
            panic!("find_artifact")
        }
        async fn dispatch(&self, _: &BuildSpec) -> Result<Dispatched, BackendError> {
            panic!("dispatch")
        }
        async fn poll(&self, _: &BuildSpec, _: &Dispatched) -> Result<RunState, BackendError> {
            panic!("poll")
        }
        async fn cancel(&self, _: &BuildSpec, _: &Dispatched) -> Result<(), BackendError> {
            panic!("cancel")
        }
        async fn health(&self) -> Result<(), BackendError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_build_whose_row_kernel_id_refuses_ends_in_error_without_a_backend_call() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display());
        let store = Store::connect(&url).await.expect("store");
        let new = NewBuild::for_test("00000000-0000-4000-8000-000000000003");
        store
            .reserve(&new, InFlightCaps::default())
            .await
            .expect("reserve");
        store
            .corrupt_for_test(&new.build_id, "kernel_version", "6.1$(id)")
            .await;
        let ended = Arc::new(Mutex::new(0));
        let trackers = Trackers::new(
            store.clone(),
            Arc::new(Unreachable),
            "me".to_owned(),
            TrackerSettings {
                poll_interval: Duration::from_millis(10),
                lease: Duration::from_secs(60),
                retry_base: Duration::from_millis(10),
                retry_max: Duration::from_millis(100),
                retention: Duration::from_secs(3600),
            },
            Arc::new(Notifier::new(store.clone(), Duration::from_secs(60), 10)),
            {
                let ended = Arc::clone(&ended);
                Arc::new(move |_: &BuildRecord| *ended.lock().expect("ended") += 1)
            },
        );
        trackers.track(new.build_id.clone()).await;
        trackers.inner.tasks.lock().await.join_next().await;
        let (state, error) = store.raw_state_for_test(&new.build_id).await;
        assert_eq!(state, "error");
        assert!(
            error
                .as_deref()
                .is_some_and(|error| error.contains("kernel_version")),
            "{error:?}"
        );
        assert_eq!(
            store.active_build(&new.active_key()).await.expect("active"),
            None
        );
    }
}
