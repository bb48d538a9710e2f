//! A stateful simulator of exactly the GitHub REST endpoints the build-service uses, for tests on
//! loopback: releases by tag / id / list, release creation and publication, asset upload and download
//! (API and browser URLs), `workflow_dispatch` with and without run details, workflow-run lists,
//! lookups and cancellation, the repository's tags (`git/matching-refs`, `git/ref`, annotated
//! `git/tags` objects; created and moved by the test), `GET /rate_limit`; with GitHub's rate-limit headers, ETag / Last-Modified conditional requests
//! (a 304 costs no quota), `Link` pagination, token auth, and faults injected at run time; dispatch
//! requests can be held (before or after their run is created) until the test releases them, and runs
//! are counted per dispatch input (e.g. per `build_id`).
//!
//! Dispatched runs progress queued -> in_progress -> completed and, on success, publish the artifact the
//! way the project's `driver-build.yml` does (draft release -> upload -> publish), as computed from the
//! run's inputs by a hook the test supplies. A cancelled run ends completed / cancelled at once and
//! publishes nothing more.
//!
//! ```no_run
//! # async fn demo() -> Result<(), github_sim::SimError> {
//! use github_sim::{GithubSim, PublishedFile, SimConfig};
//! use std::sync::Arc;
//!
//! let config = SimConfig {
//!     publish: Arc::new(|inputs| {
//!         let tag = format!("driver-{}", inputs["kernel_version"]);
//!         vec![PublishedFile::new(tag, "driver.deb", b"package".to_vec())]
//!     }),
//!     ..SimConfig::default()
//! };
//! let sim = GithubSim::start(config).await?;
//! // point octocrab / reqwest at sim.base_url()
//! # Ok(()) }
//! ```

mod config;
mod error;
mod json;
mod query;
mod routes;
mod runs;
mod server;
mod state;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{
    AssetDownload, Conclusion, DispatchMode, Inputs, OutcomeFn, PrimaryLimitStatus, PublishFn,
    PublishedFile, RunStatus, RunTiming, SimApp, SimConfig, WorkflowInput, WorkflowSpec,
};
pub use error::SimError;
pub use routes::Route;
pub use state::{
    DispatchHold, Fault, QueuedFaultView, ReleaseInfo, RunInfo, SimStats, sanitize_asset_name,
};

use server::Shared;
use state::{QueuedFault, ReleasePatch, State};

/// Entry point: starts simulators.
#[derive(Debug)]
pub struct GithubSim;

impl GithubSim {
    /// Binds `127.0.0.1:0`, serves the simulated API there and returns the handle that controls it. The
    /// server stops when the handle is dropped (or [`SimHandle::shutdown`] is awaited).
    pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(SimError::Bind)?;
        let addr = listener.local_addr().map_err(SimError::Bind)?;
        let base_url = format!("http://{addr}");
        let shared = Arc::new(Shared::new(base_url.clone(), State::new(config)));
        let app = Router::new()
            .fallback(server::handle)
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(err) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(%err, "github-sim server stopped with an error");
            }
        });
        Ok(SimHandle {
            base_url,
            addr,
            shared,
            stop: Some(stop),
            server: Some(server),
        })
    }
}

/// Controls a running simulator: its address, state seeding, runtime configuration, faults, run control
/// and observation. Dropping it stops the server and every run timer.
pub struct SimHandle {
    base_url: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl SimHandle {
    /// `http://127.0.0.1:<port>`: the API base (octocrab `base_uri` and `upload_uri`), and also the
    /// "github.com" host of html and browser-download URLs.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn owner(&self) -> String {
        self.shared.lock().config.owner.clone()
    }

    pub fn repo(&self) -> String {
        self.shared.lock().config.repo.clone()
    }

    /// `{base}/{owner}/{repo}/releases/download`: the artifact base a loader appends `/{tag}/{file}` to.
    pub fn download_base(&self) -> String {
        let state = self.shared.lock();
        format!(
            "{}/releases/download",
            json::repo_html(&self.base_url, &state.config)
        )
    }

    /// The browser download URL of an asset (whether or not it exists), percent-encoded like GitHub's.
    pub fn browser_download_url(&self, tag: &str, name: &str) -> String {
        json::browser_download_url(&self.base_url, &self.shared.lock().config, tag, name)
    }

    // ----- seeding -----

    /// Creates a published release with these assets (draft -> upload -> publish, as a workflow would),
    /// authored by `github-actions[bot]`. Returns the release id.
    pub fn publish_release(&self, tag: &str, files: &[(&str, &[u8])]) -> Result<u64, SimError> {
        let id = self.create_draft_release(tag, files)?;
        let patch = ReleasePatch {
            draft: Some(false),
            ..ReleasePatch::default()
        };
        self.shared
            .lock()
            .update_release(id, patch)
            .map_err(|e| SimError::Rejected(e.message))?;
        Ok(id)
    }

    /// Creates a draft release with these assets (invisible to `releases/tags/{tag}` and downloads).
    pub fn create_draft_release(
        &self,
        tag: &str,
        files: &[(&str, &[u8])],
    ) -> Result<u64, SimError> {
        let mut state = self.shared.lock();
        let patch = ReleasePatch {
            tag_name: Some(tag.to_owned()),
            name: Some(tag.to_owned()),
            draft: Some(true),
            ..ReleasePatch::default()
        };
        let id = state
            .create_release(patch, state::ACTIONS_BOT_LOGIN)
            .map_err(|e| SimError::Rejected(e.message))?;
        for (name, bytes) in files {
            state
                .upload_asset(
                    id,
                    name,
                    None,
                    "application/octet-stream",
                    Bytes::copy_from_slice(bytes),
                    state::ACTIONS_BOT_LOGIN,
                )
                .map_err(|e| SimError::Rejected(e.message))?;
        }
        Ok(id)
    }

    // ----- tags -----

    /// Creates the lightweight tag `name` naming `commit` (40 lowercase hex digits: the simulator
    /// keeps no commits, any id is taken). Refused when the tag exists.
    pub fn create_tag(&self, name: &str, commit: &str) -> Result<(), SimError> {
        self.shared
            .lock()
            .set_tag(name, commit, None, false)
            .map(drop)
            .map_err(|e| SimError::Rejected(e.message))
    }

    /// Creates the annotated tag `name`: a new tag object carrying `message` and naming `commit`,
    /// which the ref names. Returns the tag object's sha. Refused when the tag exists.
    pub fn create_annotated_tag(
        &self,
        name: &str,
        commit: &str,
        message: &str,
    ) -> Result<String, SimError> {
        self.shared
            .lock()
            .set_tag(name, commit, Some(message), false)
            .map(Option::unwrap_or_default)
            .map_err(|e| SimError::Rejected(e.message))
    }

    /// Moves the tag `name` to `commit`, as `git tag --force` and a forced push do: a lightweight
    /// tag (or a new one) names the new commit; an annotated tag gets a new tag object with the
    /// same message (the old object stays readable by its sha).
    pub fn move_tag(&self, name: &str, commit: &str) -> Result<(), SimError> {
        let mut state = self.shared.lock();
        let message = match state.tags.get(name) {
            Some(state::TagTarget::Annotated(sha)) => {
                state.tag_objects.get(sha).map(|o| o.message.clone())
            }
            _ => None,
        };
        state
            .set_tag(name, commit, message.as_deref(), true)
            .map(drop)
            .map_err(|e| SimError::Rejected(e.message))
    }

    /// Deletes the tag `name`; false when there was none.
    pub fn delete_tag(&self, name: &str) -> bool {
        self.shared.lock().tags.remove(name).is_some()
    }

    /// Every tag with the commit it names (annotated tags peeled).
    pub fn tags(&self) -> BTreeMap<String, String> {
        let state = self.shared.lock();
        state
            .tags
            .keys()
            .filter_map(|name| Some((name.clone(), state.peeled_tag(name)?)))
            .collect()
    }

    // ----- runtime configuration -----

    pub fn set_dispatch_mode(&self, mode: DispatchMode) {
        self.shared.lock().config.dispatch_mode = mode;
    }

    /// Turns the repository's "immutable releases" setting on or off (affects releases published later).
    pub fn set_immutable_releases(&self, enabled: bool) {
        self.shared.lock().config.immutable_releases = enabled;
    }

    pub fn set_outcome(&self, outcome: impl Fn(&Inputs) -> Conclusion + Send + Sync + 'static) {
        self.shared.lock().config.outcome = Arc::new(outcome);
    }

    pub fn set_publish(
        &self,
        publish: impl Fn(&Inputs) -> Vec<PublishedFile> + Send + Sync + 'static,
    ) {
        self.shared.lock().config.publish = Arc::new(publish);
    }

    /// Timing of runs dispatched from now on.
    pub fn set_run_timing(&self, timing: RunTiming) {
        self.shared.lock().config.run_timing = timing;
    }

    pub fn set_run_list_delay(&self, delay: Duration) {
        self.shared.lock().config.run_list_delay = delay;
    }

    pub fn set_accepted_tokens(&self, tokens: Option<Vec<String>>) {
        self.shared.lock().config.accepted_tokens = tokens;
    }

    pub fn set_require_auth(&self, required: bool) {
        self.shared.lock().config.require_auth = required;
    }

    pub fn set_primary_limit_status(&self, status: PrimaryLimitStatus) {
        self.shared.lock().config.primary_limit_status = status;
    }

    pub fn set_asset_download(&self, mode: AssetDownload) {
        self.shared.lock().config.asset_download = mode;
    }

    /// Sets how much of the primary limit is left in the current window (0 exhausts it).
    pub fn set_rate_limit_remaining(&self, remaining: u64) {
        let mut state = self.shared.lock();
        state.roll_rate_window();
        state.rate.used = state.rate.limit.saturating_sub(remaining);
    }

    /// Starts a new window now that ends after `window` (so tests can wait for a reset).
    pub fn reset_rate_limit_in(&self, window: Duration) {
        let mut state = self.shared.lock();
        state.config.rate_limit_window = window;
        state.rate.reset_at = SystemTime::now() + window;
    }

    // ----- faults -----

    /// The next `times` answers of `route` get `fault`. Faults queue in order, per route.
    pub fn inject_fault(&self, route: Route, fault: Fault, times: usize) {
        if times > 0 {
            self.shared.lock().faults.push_back(QueuedFault {
                scope: Some(route),
                fault,
                remaining: times,
            });
        }
    }

    /// The next `times` answers of any route get `fault`.
    pub fn inject_fault_any(&self, fault: Fault, times: usize) {
        if times > 0 {
            self.shared.lock().faults.push_back(QueuedFault {
                scope: None,
                fault,
                remaining: times,
            });
        }
    }

    /// Faults still queued.
    pub fn pending_faults(&self) -> Vec<QueuedFaultView> {
        self.shared
            .lock()
            .faults
            .iter()
            .map(|f| QueuedFaultView {
                route: f.scope,
                fault: f.fault,
                remaining: f.remaining,
            })
            .collect()
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// From now on every dispatch request waits at `point` (before its run is created, or after it
    /// with only the answer held) until [`SimHandle::release_dispatches`]. A held request whose client
    /// hung up may still go on when released, as GitHub may complete a request whose client died.
    /// [`SimStats::dispatches_held`] counts the requests that waited.
    pub fn hold_dispatches(&self, point: DispatchHold) {
        self.shared.dispatch_hold.send_replace(Some(point));
    }

    /// Lets every held dispatch go on and stops holding new ones.
    pub fn release_dispatches(&self) {
        self.shared.dispatch_hold.send_replace(None);
    }

    // ----- runs -----

    /// Every run, oldest first.
    pub fn runs(&self) -> Vec<RunInfo> {
        self.shared
            .lock()
            .runs
            .iter()
            .map(State::run_info)
            .collect()
    }

    pub fn run(&self, id: u64) -> Option<RunInfo> {
        self.shared
            .lock()
            .runs
            .iter()
            .find(|r| r.id == id)
            .map(State::run_info)
    }

    /// Runs whose `display_title` is exactly this (how the build-service correlates by `build_id`).
    pub fn runs_titled(&self, title: &str) -> Vec<RunInfo> {
        self.shared
            .lock()
            .runs
            .iter()
            .filter(|r| r.display_title == title)
            .map(State::run_info)
            .collect()
    }

    /// Runs created per value of the dispatch input `input` (for example how many runs each
    /// `build_id` got: the build-service promises one).
    pub fn runs_per_input(&self, input: &str) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for run in &self.shared.lock().runs {
            let value = run.inputs.get(input).cloned().unwrap_or_default();
            *counts.entry(value).or_insert(0) += 1;
        }
        counts
    }

    /// Moves a queued run to in_progress (for runs held by a `None` timing).
    pub fn start_run(&self, id: u64) -> bool {
        runs::start_run(&self.shared, id)
    }

    /// Completes a run with this conclusion, publishing first when it is a success. False when the run is
    /// unknown or already completing.
    pub async fn finish_run(&self, id: u64, conclusion: Conclusion) -> bool {
        runs::finish_run(&self.shared, id, conclusion).await
    }

    /// Waits until every run is completed, or `timeout` passes; true when all completed.
    pub async fn wait_runs_completed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self
                .shared
                .lock()
                .runs
                .iter()
                .all(|r| r.status == RunStatus::Completed);
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // ----- releases -----

    pub fn releases(&self) -> Vec<ReleaseInfo> {
        self.shared
            .lock()
            .releases
            .iter()
            .map(State::release_info)
            .collect()
    }

    /// Bytes of an asset of the published release `tag`.
    pub fn asset_bytes(&self, tag: &str, name: &str) -> Option<Bytes> {
        let state = self.shared.lock();
        let release = state.published_by_tag(tag)?;
        release
            .assets
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.bytes.clone())
    }

    // ----- observation -----

    pub fn stats(&self) -> SimStats {
        self.shared.lock().stats.clone()
    }

    /// Requests received by one endpoint so far.
    pub fn requests(&self, route: Route) -> u64 {
        self.shared.lock().stats.requests_to(route)
    }

    /// Primary rate limit left in the current window.
    pub fn rate_limit_remaining(&self) -> u64 {
        let mut state = self.shared.lock();
        state.roll_rate_window();
        state.remaining()
    }

    pub fn reset_stats(&self) {
        self.shared.lock().stats = SimStats::default();
    }

    /// Stops the server and waits for it to finish.
    pub async fn shutdown(mut self) {
        self.stop_all();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    fn stop_all(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let tasks = std::mem::take(
            &mut *self
                .shared
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in tasks {
            task.abort();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop_all();
        if let Some(server) = self.server.take() {
            // Graceful shutdown waits for open keep-alive connections; a test that is done must not wait.
            server.abort();
        }
    }
}
