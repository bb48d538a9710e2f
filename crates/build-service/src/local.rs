//! The local backend, the embedded default: artifacts live in a directory laid out like GitHub
//! Releases (`<tag>/<file>`, names from kernel-id's [`ReleaseLayout`]) and served by this service at
//! `/releases/download/{tag}/{file}`; builds run on this host through a [`BuildExecutor`] (in
//! production `build_root::LocalExecutor`: a fresh mmdebstrap root of the target's suite).
//!
//! The driver's source is a git repository whose tags are the driver versions ([`GitRepository`],
//! mirrored under the service's state directory): before each build exactly the build's recorded
//! commit is exported (`git archive <commit>[:<subdir>]`) into `<builds>/<id>/src`, and that tree
//! is what the executor builds, with the commit and the repository's URI for its provenance.
//!
//! Build state is kept on disk per build (`<builds>/<id>/state.json`, `build.log`, `src/`,
//! `out/`), and a running job holds an advisory lock on `<builds>/<id>/lock`. So a restarted service
//! (or a second instance over the same directories) sees a build that is still running elsewhere as
//! in progress, and restarts one whose process died (the lock is gone) instead of waiting for it
//! forever.
//!
//! Cancelling a build writes `<builds>/<id>/cancelled`: a job that has not started (waiting for a
//! slot) never starts, a running one has its executor killed (the whole process group, whichever
//! process over these directories runs it), an orphan is not restarted, and nothing is published
//! after it. Publishing is first-wins and all-or-nothing per identity: a reader never sees one
//! build's package beside another build's digest or signature (see `Job::publish`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kernel_id::{DriverName, KernelIdentity, ReleaseLayout};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use crate::backend::{ArtifactRef, Backend, BackendError, BuildSpec, Dispatched, RunState};
use crate::signing::{FinishedBuild, ServiceSigner};
use crate::source::{GitRepository, SourceRepository, check_subdir};

/// Routes of the local backend (beside [`crate::api::ROUTES`]); GET routes answer HEAD too.
pub const ROUTES: &[crate::api::RouteInfo] = &[
    crate::api::RouteInfo {
        method: "GET",
        path: "/releases/download/{tag}/{file}",
    },
    crate::api::RouteInfo {
        method: "GET",
        path: "/builds/{build_id}/log",
    },
];

/// One build as an executor sees it.
#[derive(Debug, Clone)]
pub struct ExecutorJob {
    /// The service's build id.
    pub build_id: String,
    /// The driver.
    pub driver: DriverName,
    /// What to build for.
    pub identity: KernelIdentity,
    /// The driver source: the export of exactly `source_commit` (the driver's subdirectory of it)
    /// made for this build (`<builds>/<id>/src`).
    pub source_dir: PathBuf,
    /// The commit the source is: what the driver version's tag named when the build was reserved.
    pub source_commit: kernel_id::SourceCommit,
    /// The URI of the repository the commit is from (`file://<path>` or the configured URL).
    pub source_repository: String,
    /// Empty directory the package (and optionally its `.minisig` / `.sha256`) must end up in.
    pub out_dir: PathBuf,
    /// The build log; the executor appends everything it runs to it.
    pub log: PathBuf,
    /// Set when the build is cancelled: the executor must then kill everything it started (the whole
    /// process group) and return promptly. Whatever it returns afterwards is never published.
    pub cancel: build_root::Cancel,
}

/// Runs one build, blocking (it is called on a blocking thread). On success the package named
/// `identity.package_file_name(driver)` is in `job.out_dir`, with the builder's facts file
/// ([`integrity::BUILD_FACTS_FILE`]) and the root image file ([`crate::signing::ROOT_IMAGE_FILE`])
/// the service composes the provenance from. Signatures and provenance are the service's own: any
/// the build left in `out_dir` are discarded, since the driver's build system ran where they were
/// written.
pub trait BuildExecutor: Send + Sync + 'static {
    /// Builds; the error is a one-line reason for /status (details belong in the log). Honours
    /// `job.cancel` (see [`ExecutorJob::cancel`]).
    fn build(&self, job: &ExecutorJob) -> Result<(), String>;
}

impl BuildExecutor for build_root::executor::LocalExecutor {
    /// Runs the builder with the job's source revision; on success `job.out_dir` also holds the
    /// builder's `build-facts.json` and the executor's `root-image.json` (the base image's URI and
    /// SHA-256), the inputs of the build's provenance.
    fn build(&self, job: &ExecutorJob) -> Result<(), String> {
        let source = build_root::executor::SourceRevision {
            commit: job.source_commit.clone(),
            repository: job.source_repository.clone(),
        };
        build_root::executor::LocalExecutor::build_cancellable(
            self,
            &build_root::executor::BuildJob {
                identity: &job.identity,
                driver: &job.driver,
                source: &source,
                driver_src: &job.source_dir,
                out_dir: &job.out_dir,
                log: &job.log,
            },
            &job.cancel,
        )
        .map(|_report| ())
        .map_err(|error| error.to_string())
    }
}

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// Published artifacts, `<tag>/<file>`.
    pub artifact_dir: PathBuf,
    /// Per-build state, logs and outputs.
    pub builds_dir: PathBuf,
    /// The driver's git repository: a local path or a URL. Its tags are the driver versions.
    pub driver_repo: String,
    /// The driver's directory inside the repository (empty: the repository's root).
    pub driver_subdir: PathBuf,
    /// Where the repository's bare mirror is kept (created on first use).
    pub source_mirror: PathBuf,
    /// The driver.
    pub driver: DriverName,
    /// Tag and path naming.
    pub layout: ReleaseLayout,
    /// Base URL of this service as nodes reach it, without a trailing slash.
    pub public_url: String,
    /// Builds run at once.
    pub max_concurrent_builds: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum JobState {
    Queued,
    InProgress,
    Succeeded,
    Failed { message: String },
}

/// The file whose presence in a build directory cancels the build, in any process.
const CANCELLED_MARKER: &str = "cancelled";

/// How long [`Backend::cancel`] waits for a cancelled job to stop, unless configured.
pub const DEFAULT_CANCEL_WAIT: Duration = Duration::from_secs(30);

/// The lock file publishers of a shared (per-driver-version) release take turns on.
const PUBLISH_LOCK: &str = ".publish.lock";

/// How often a job (queued or running) looks for a cancellation made by another process.
const CANCEL_MARKER_CHECK: Duration = Duration::from_millis(500);

/// The cancellation of one job of this process.
#[derive(Debug, Default)]
struct JobControl {
    /// What the executor honours.
    cancel: build_root::Cancel,
    /// Wakes the job's task (waiting for a slot, or for its executor) at once.
    cancelled: watch::Sender<bool>,
}

impl JobControl {
    fn cancel(&self) {
        self.cancel.cancel();
        self.cancelled.send_replace(true);
    }

    /// Returns once the job is cancelled: from this process, or by the marker from any process.
    async fn wait_cancelled(&self, dir: &Path) {
        let mut cancelled = self.cancelled.subscribe();
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            if tokio::fs::try_exists(dir.join(CANCELLED_MARKER))
                .await
                .unwrap_or(false)
            {
                self.cancel();
                return;
            }
            tokio::select! {
                _ = cancelled.changed() => {}
                _ = tokio::time::sleep(CANCEL_MARKER_CHECK) => {}
            }
        }
    }
}

/// The local backend.
pub struct LocalBackend {
    settings: LocalSettings,
    source: GitRepository,
    executor: Arc<dyn BuildExecutor>,
    signer: Option<Arc<ServiceSigner>>,
    slots: Arc<Semaphore>,
    /// Builds whose job runs (or waits for a slot) in this process.
    running: Arc<Mutex<HashMap<String, Arc<JobControl>>>>,
    /// How long a cancel waits for the job to stop.
    cancel_wait: Duration,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("settings", &self.settings)
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl LocalBackend {
    /// A backend over existing (or creatable) directories and the driver's repository (a local
    /// repository must exist; a URL is first read when a version is resolved).
    pub fn new(
        settings: LocalSettings,
        executor: Arc<dyn BuildExecutor>,
        signer: Option<ServiceSigner>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&settings.artifact_dir)?;
        std::fs::create_dir_all(&settings.builds_dir)?;
        check_subdir(&settings.driver_subdir).map_err(std::io::Error::other)?;
        let source = GitRepository::new(&settings.driver_repo, settings.source_mirror.clone())
            .map_err(std::io::Error::other)?;
        Ok(Self {
            source,
            slots: Arc::new(Semaphore::new(settings.max_concurrent_builds.max(1))),
            settings,
            executor,
            signer: signer.map(Arc::new),
            running: Arc::new(Mutex::new(HashMap::new())),
            cancel_wait: DEFAULT_CANCEL_WAIT,
        })
    }

    /// How long [`Backend::cancel`] waits for a cancelled job to stop before it reports failure
    /// (default [`DEFAULT_CANCEL_WAIT`]).
    pub fn with_cancel_wait(mut self, wait: Duration) -> Self {
        self.cancel_wait = wait;
        self
    }

    fn runs_here(&self, build_id: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains_key(build_id)
    }

    /// The settings.
    pub fn settings(&self) -> &LocalSettings {
        &self.settings
    }

    /// The driver's repository (and its mirror).
    pub fn source(&self) -> &GitRepository {
        &self.source
    }

    /// Routes this backend serves: artifact downloads and build logs.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/releases/download/{tag}/{file}", get(download))
            .route("/builds/{build_id}/log", get(build_log))
            .with_state(Arc::clone(self))
    }

    fn build_dir(&self, build_id: &str) -> Result<PathBuf, BackendError> {
        // The id becomes a path component: only our own UUIDs are accepted.
        uuid::Uuid::parse_str(build_id)
            .map_err(|_| BackendError::Permanent(format!("build id '{build_id}' is not a UUID")))?;
        Ok(self.settings.builds_dir.join(build_id))
    }

    fn log_url(&self, build_id: &str) -> String {
        format!("{}/builds/{build_id}/log", self.settings.public_url)
    }

    /// What a dispatch of `build_id` returns: the job is named by the build id.
    fn dispatched(&self, build_id: &str) -> Dispatched {
        Dispatched {
            run_id: Some(build_id.to_owned()),
            run_url: Some(self.log_url(build_id)),
        }
    }

    fn artifact_path(&self, identity: &KernelIdentity) -> PathBuf {
        let tag = self
            .settings
            .layout
            .release_tag(&self.settings.driver, identity);
        self.settings
            .artifact_dir
            .join(tag)
            .join(identity.package_file_name(&self.settings.driver))
    }

    /// Starts the job for `build` in this process unless it already runs here.
    fn start_job(&self, build: &BuildSpec, dir: PathBuf) {
        let control = {
            let mut running = self
                .running
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if running.contains_key(&build.build_id) {
                return;
            }
            let control = Arc::new(JobControl::default());
            running.insert(build.build_id.clone(), Arc::clone(&control));
            control
        };
        let job = Job {
            settings: self.settings.clone(),
            source: self.source.clone(),
            executor: Arc::clone(&self.executor),
            signer: self.signer.clone(),
            build: build.clone(),
            dir: dir.clone(),
            cancel: control.cancel.clone(),
        };
        let slots = Arc::clone(&self.slots);
        let running = Arc::clone(&self.running);
        let build_id = build.build_id.clone();
        let span = tracing::info_span!("local_build", build_id = %build_id);
        tokio::spawn(
            async move {
                // A job cancelled while it waits for a slot never starts.
                let permit = tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => Some(permit),
                    () = control.wait_cancelled(&dir) => None,
                };
                let outcome = match permit {
                    Some(permit) => {
                        let mut handle = tokio::task::spawn_blocking(move || {
                            let _permit = permit;
                            job.run()
                        });
                        // A cancellation from another process reaches the executor through the marker.
                        tokio::select! {
                            outcome = &mut handle => outcome,
                            () = control.wait_cancelled(&dir) => handle.await,
                        }
                    }
                    None => {
                        tokio::task::spawn_blocking(move || {
                            job.never_started("cancelled before it started")
                        })
                        .await
                    }
                };
                if let Err(error) = outcome {
                    tracing::error!(build_id = %build_id, %error, "local build job panicked");
                }
                running
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .remove(&build_id);
            }
            .instrument(span),
        );
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn source_repository(&self) -> Arc<dyn SourceRepository> {
        Arc::new(self.source.clone())
    }

    async fn find_artifact(
        &self,
        driver: &DriverName,
        identity: &KernelIdentity,
    ) -> Result<Option<ArtifactRef>, BackendError> {
        if driver != &self.settings.driver {
            return Err(BackendError::Permanent(format!(
                "this service builds {}, not {driver}",
                self.settings.driver
            )));
        }
        match tokio::fs::metadata(self.artifact_path(identity)).await {
            Ok(metadata) if metadata.is_file() => Ok(Some(ArtifactRef {
                download_url: format!(
                    "{}/releases/download/{}",
                    self.settings.public_url,
                    self.settings.layout.package_path(driver, identity)
                ),
            })),
            Ok(_) => Ok(None),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(BackendError::Transient(format!("artifact store: {error}"))),
        }
    }

    async fn dispatch(&self, build: &BuildSpec) -> Result<Dispatched, BackendError> {
        let dir = self.build_dir(&build.build_id)?;
        if build.source_commit.is_none() {
            return Err(BackendError::Permanent(format!(
                "build {} has no source commit recorded (reserved before driver versions were \
                 resolved to commits); request it again",
                build.build_id
            )));
        }
        let dispatched = self.dispatched(&build.build_id);
        // The directory is the record that a dispatch happened: creating it is the one-time step,
        // a repeated dispatch of the same id finds it and changes nothing.
        let state_path = dir.join("state.json");
        let created = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
                match std::fs::create_dir(&dir) {
                    Ok(()) => {
                        write_state(&dir, &JobState::Queued)?;
                        Ok(true)
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                        // A crash between mkdir and the state write leaves no state: treat as new.
                        if state_path.exists() {
                            Ok(false)
                        } else {
                            write_state(&dir, &JobState::Queued)?;
                            Ok(true)
                        }
                    }
                    Err(error) => Err(error),
                }
            })
            .await
            .map_err(|error| BackendError::Transient(error.to_string()))?
            .map_err(|error| {
                BackendError::Transient(format!("creating build directory: {error}"))
            })?
        };
        if created {
            self.start_job(build, dir);
        }
        Ok(dispatched)
    }

    /// The build directory with its state is the record that a dispatch took effect.
    async fn find_run(
        &self,
        build: &BuildSpec,
        _since: SystemTime,
    ) -> Result<Option<Dispatched>, BackendError> {
        let state = self.build_dir(&build.build_id)?.join("state.json");
        match tokio::fs::try_exists(&state).await {
            Ok(true) => Ok(Some(self.dispatched(&build.build_id))),
            Ok(false) => Ok(None),
            Err(error) => Err(BackendError::Transient(format!(
                "reading build state: {error}"
            ))),
        }
    }

    async fn poll(
        &self,
        build: &BuildSpec,
        _dispatched: &Dispatched,
    ) -> Result<RunState, BackendError> {
        let dir = self.build_dir(&build.build_id)?;
        let state = match read_state(&dir) {
            Ok(Some(state)) => state,
            Ok(None) => {
                return Ok(RunState::Failed {
                    message: "the local build's state is gone (build directory removed)".to_owned(),
                });
            }
            Err(error) => {
                return Err(BackendError::Transient(format!(
                    "reading build state: {error}"
                )));
            }
        };
        match state {
            JobState::Succeeded => Ok(RunState::Succeeded),
            JobState::Failed { message } => Ok(RunState::Failed { message }),
            JobState::Queued | JobState::InProgress => {
                let here = self.runs_here(&build.build_id);
                if !here && !job_lock_held(&dir) {
                    if dir.join(CANCELLED_MARKER).exists() {
                        // Cancelled, and its job is gone: never restarted.
                        return Ok(RunState::Failed {
                            message: "the build was cancelled".to_owned(),
                        });
                    }
                    // Nobody runs it: the process that did died. Run it again under the same id.
                    tracing::warn!(build_id = %build.build_id, "local build was orphaned; restarting it");
                    write_state(&dir, &JobState::Queued).map_err(|error| {
                        BackendError::Transient(format!("writing build state: {error}"))
                    })?;
                    self.start_job(build, dir);
                    return Ok(RunState::Queued);
                }
                Ok(match state {
                    JobState::InProgress => RunState::InProgress,
                    _ => RunState::Queued,
                })
            }
        }
    }

    async fn cancel(
        &self,
        build: &BuildSpec,
        _dispatched: &Dispatched,
    ) -> Result<(), BackendError> {
        let dir = self.build_dir(&build.build_id)?;
        let control = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&build.build_id)
            .cloned();
        // The marker first: whichever process over this directory runs (or would restart) the job
        // sees it, and a job still waiting for a slot never starts.
        let marked = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
                match std::fs::metadata(&dir) {
                    Ok(_) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                    Err(error) => return Err(error),
                }
                std::fs::write(
                    dir.join(CANCELLED_MARKER),
                    format!("{}\n", crate::store::now_ms()),
                )?;
                Ok(true)
            })
            .await
            .map_err(|error| BackendError::Transient(error.to_string()))?
            .map_err(|error| {
                BackendError::Transient(format!("marking the build cancelled: {error}"))
            })?
        };
        if let Some(control) = &control {
            control.cancel();
        }
        if !marked && control.is_none() {
            // Never dispatched here: nothing runs, nothing to remove.
            return Ok(());
        }
        // Wait until no job runs it, here or in another process (the job lock).
        let give_up = tokio::time::Instant::now() + self.cancel_wait;
        loop {
            let here = self.runs_here(&build.build_id);
            if !here && !job_lock_held(&dir) {
                break;
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(BackendError::Transient(format!(
                    "the cancelled build still runs {:?} after its cancellation{}",
                    self.cancel_wait,
                    if here { "" } else { " (in another process)" }
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Its work goes: the output (the executor removed its root and killed its processes) and
        // any staging of a publish it never finished. The state and the log stay for /status and
        // /builds/{id}/log until retention prunes them.
        let staging = self
            .settings
            .artifact_dir
            .join(format!(".staging-{}", build.build_id));
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for leftover in [dir.join("out"), staging] {
                match std::fs::remove_dir_all(&leftover) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error),
                }
            }
            if matches!(
                read_state(&dir)?,
                None | Some(JobState::Queued | JobState::InProgress)
            ) {
                write_state(
                    &dir,
                    &JobState::Failed {
                        message: "the build was cancelled".to_owned(),
                    },
                )?;
            }
            Ok(())
        })
        .await
        .map_err(|error| BackendError::Transient(error.to_string()))?
        .map_err(|error| {
            BackendError::Transient(format!("removing the cancelled build's work: {error}"))
        })
    }

    async fn prune(&self, ended_before: SystemTime) -> Result<u64, BackendError> {
        let running: Vec<String> = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .keys()
            .cloned()
            .collect();
        let settings = self.settings.clone();
        tokio::task::spawn_blocking(move || prune_builds(&settings, &running, ended_before))
            .await
            .map_err(|error| BackendError::Transient(error.to_string()))?
            .map_err(|error| BackendError::Transient(format!("pruning build directories: {error}")))
    }

    async fn health(&self) -> Result<(), BackendError> {
        let artifacts = tokio::fs::metadata(&self.settings.artifact_dir).await;
        match artifacts {
            Ok(metadata) if metadata.is_dir() => Ok(()),
            Ok(_) => Err(BackendError::Permanent(
                "artifact directory is not a directory".to_owned(),
            )),
            Err(error) => Err(BackendError::Transient(format!(
                "artifact directory: {error}"
            ))),
        }
    }
}

/// Removes the directories of builds that ended before `ended_before` (their state is final, or they
/// were cancelled, and no job holds them) and staging left by publishes that never finished. Never
/// touches a published release.
fn prune_builds(
    settings: &LocalSettings,
    running: &[String],
    ended_before: SystemTime,
) -> std::io::Result<u64> {
    let last_change = |path: &Path| {
        std::fs::symlink_metadata(path)
            .and_then(|metadata| metadata.modified())
            .ok()
    };
    let mut pruned = 0;
    for entry in std::fs::read_dir(&settings.builds_dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if uuid::Uuid::parse_str(&name).is_err() || running.contains(&name) {
            continue;
        }
        let dir = entry.path();
        let finished = matches!(
            read_state(&dir),
            Ok(Some(JobState::Succeeded | JobState::Failed { .. }))
        ) || dir.join(CANCELLED_MARKER).exists();
        if !finished || job_lock_held(&dir) {
            continue;
        }
        let ended = ["state.json", "build.log", CANCELLED_MARKER]
            .iter()
            .filter_map(|file| last_change(&dir.join(file)))
            .max()
            .or_else(|| last_change(&dir));
        if ended.is_some_and(|ended| ended < ended_before) {
            // One directory that cannot be removed must not keep the others.
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => pruned += 1,
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, "could not prune a build directory")
                }
            }
        }
    }
    for entry in std::fs::read_dir(&settings.artifact_dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(build_id) = name.strip_prefix(".staging-") else {
            continue;
        };
        if !running.iter().any(|id| id == build_id)
            && last_change(&entry.path()).is_some_and(|changed| changed < ended_before)
            && let Err(error) = std::fs::remove_dir_all(entry.path())
        {
            tracing::warn!(staging = %name, %error, "could not prune abandoned staging");
        }
    }
    Ok(pruned)
}

/// What the provenance of a job's build says about its source and start, known before the
/// executor ran.
struct Provenance<'a> {
    source_repository: &'a str,
    source_commit: &'a kernel_id::SourceCommit,
    started: SystemTime,
}

/// One build job in the process running it.
struct Job {
    settings: LocalSettings,
    source: GitRepository,
    executor: Arc<dyn BuildExecutor>,
    signer: Option<Arc<ServiceSigner>>,
    build: BuildSpec,
    dir: PathBuf,
    cancel: build_root::Cancel,
}

impl Job {
    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled() || self.dir.join(CANCELLED_MARKER).exists()
    }

    /// Records that the job ended without running (cancelled while it waited for a slot).
    fn never_started(self, reason: &str) {
        let log = self.dir.join("build.log");
        self.fail(&log, reason);
    }

    fn run(self) {
        let log = self.dir.join("build.log");
        let lock = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))
        {
            Ok(file) => file,
            Err(error) => {
                self.fail(&log, &format!("opening the job lock: {error}"));
                return;
            }
        };
        match lock.try_lock() {
            Ok(()) => {}
            // Another process runs this very build: leave it to that one.
            Err(TryLockError::WouldBlock) => return,
            Err(TryLockError::Error(error)) => {
                self.fail(&log, &format!("locking the job: {error}"));
                return;
            }
        }
        if self.cancelled() {
            self.fail(&log, "cancelled before it started");
            return;
        }
        if let Err(error) = write_state(&self.dir, &JobState::InProgress) {
            self.fail(&log, &format!("writing build state: {error}"));
            return;
        }
        append_log(
            &log,
            &format!(
                "build {} of {}",
                self.build.build_id,
                self.build.identity.cache_key()
            ),
        );
        // Exactly the recorded commit, exported afresh: never a working tree, never re-resolved.
        let Some(source_commit) = self.build.source_commit.clone() else {
            self.fail(&log, "the build has no source commit recorded");
            return;
        };
        let source_repository = self.source.uri();
        let source_dir = self.dir.join("src");
        let _ = std::fs::remove_dir_all(&source_dir);
        if let Err(error) =
            self.source
                .export_blocking(&source_commit, &self.settings.driver_subdir, &source_dir)
        {
            self.fail(
                &log,
                &format!("exporting the driver source at {source_commit}: {error}"),
            );
            return;
        }
        append_log(
            &log,
            &format!(
                "driver source: {source_repository} at {source_commit}{}",
                if self.settings.driver_subdir.as_os_str().is_empty() {
                    String::new()
                } else {
                    format!(" ({})", self.settings.driver_subdir.display())
                }
            ),
        );
        let out_dir = self.dir.join("out");
        let _ = std::fs::remove_dir_all(&out_dir);
        if let Err(error) = std::fs::create_dir_all(&out_dir) {
            self.fail(&log, &format!("creating the output directory: {error}"));
            return;
        }
        let started = SystemTime::now();
        let job = ExecutorJob {
            build_id: self.build.build_id.clone(),
            driver: self.build.driver.clone(),
            identity: self.build.identity.clone(),
            source_dir,
            source_commit: source_commit.clone(),
            source_repository: source_repository.clone(),
            out_dir: out_dir.clone(),
            log: log.clone(),
            cancel: self.cancel.clone(),
        };
        let built = self.executor.build(&job);
        if self.cancelled() {
            // Whatever the executor made after the cancellation is never published.
            let _ = std::fs::remove_dir_all(&out_dir);
            self.fail(&log, "the build was cancelled");
            drop(lock);
            return;
        }
        let outcome = built.and_then(|()| {
            self.publish(
                &out_dir,
                &log,
                &Provenance {
                    source_repository: &source_repository,
                    source_commit: &source_commit,
                    started,
                },
            )
        });
        match outcome {
            Ok(()) => {
                append_log(&log, "published");
                if let Err(error) = write_state(&self.dir, &JobState::Succeeded) {
                    tracing::error!(build_id = %self.build.build_id, %error, "could not record success");
                }
            }
            Err(message) => self.fail(&log, &message),
        }
        drop(lock);
    }

    fn fail(&self, log: &Path, message: &str) {
        append_log(log, &format!("FAILED: {message}"));
        let state = JobState::Failed {
            message: message.to_owned(),
        };
        if let Err(error) = write_state(&self.dir, &state) {
            tracing::error!(build_id = %self.build.build_id, %error, "could not record failure");
        }
    }

    /// Checks the executor's output, signs the package and its provenance with the service's key,
    /// and publishes the package with its digest, signature and provenance as one first-wins unit:
    /// a reader sees either none of them or all of one build's, never a package beside another
    /// build's sidecar, and a published package is never replaced. Without a signing key the
    /// package is published with its digest only (loaders that trust keys refuse it).
    fn publish(&self, out_dir: &Path, log: &Path, source: &Provenance<'_>) -> Result<(), String> {
        let driver = &self.settings.driver;
        let identity = &self.build.identity;
        let package_name = identity.package_file_name(driver);
        let digest_name = identity.digest_file_name(driver);
        let signature_name = identity.signature_file_name(driver);
        let provenance_name = identity.provenance_file_name(driver);
        let package = out_dir.join(&package_name);
        if !package.is_file() {
            return Err(format!("the build produced no {package_name}"));
        }
        // The driver's own build system ran where these could have been written: only the
        // service's digest, signature and provenance are published.
        for name in [&digest_name, &signature_name, &provenance_name] {
            match std::fs::remove_file(out_dir.join(name)) {
                Ok(()) => append_log(log, &format!("discarding {name} left by the build")),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(format!("removing {name} left by the build: {error}")),
            }
        }
        let digest = integrity::sha256_file(&package)
            .map_err(|error| format!("hashing {package_name}: {error}"))?;
        write_file(
            &out_dir.join(&digest_name),
            integrity::DigestFile::new(digest, package_name.clone())
                .render()
                .as_bytes(),
        )?;
        match &self.signer {
            Some(signer) => {
                write_file(
                    &out_dir.join(&signature_name),
                    signer.sign_package(&package, &package_name)?.as_bytes(),
                )?;
                let provenance = signer.provenance(&FinishedBuild {
                    build_id: &self.build.build_id,
                    driver,
                    identity,
                    source_repository: source.source_repository,
                    source_commit: source.source_commit,
                    out_dir,
                    package_sha256: digest,
                    started: source.started,
                    finished: SystemTime::now(),
                })?;
                write_file(&out_dir.join(&provenance_name), provenance.as_bytes())?;
                append_log(
                    log,
                    &format!(
                        "signed {package_name} and its provenance with key {} as {}",
                        signer.key().id(),
                        signer.builder_id()
                    ),
                );
            }
            None => append_log(
                log,
                "no signing key configured: publishing without a signature or provenance",
            ),
        }

        let tag = self.settings.layout.release_tag(driver, identity);
        let release_dir = self.settings.artifact_dir.join(&tag);
        // Sidecars first, the package last: in the shared release the package is what makes the
        // unit visible.
        let mut files = vec![digest_name];
        for name in [signature_name, provenance_name] {
            if out_dir.join(&name).is_file() {
                files.push(name);
            }
        }
        files.push(package_name.clone());
        if release_dir.join(&package_name).exists() {
            append_log(
                log,
                "the artifact is already published; keeping the existing one",
            );
            return Ok(());
        }
        match self.settings.layout {
            // One release per identity: stage the whole release and rename it into place; a rename
            // onto an existing non-empty release fails, so a published release is never replaced.
            ReleaseLayout::PerArtifact => {
                let staging = self
                    .settings
                    .artifact_dir
                    .join(format!(".staging-{}", self.build.build_id));
                let _ = std::fs::remove_dir_all(&staging);
                std::fs::create_dir_all(&staging)
                    .map_err(|error| format!("creating staging dir: {error}"))?;
                for file in &files {
                    std::fs::copy(out_dir.join(file), staging.join(file))
                        .map_err(|error| format!("staging {file}: {error}"))?;
                    sync_file(&staging.join(file))?;
                }
                let renamed = std::fs::rename(&staging, &release_dir);
                let _ = std::fs::remove_dir_all(&staging);
                match renamed {
                    Ok(()) => Ok(()),
                    Err(_) if release_dir.join(&package_name).is_file() => {
                        append_log(
                            log,
                            "another build published the artifact first; keeping it",
                        );
                        Ok(())
                    }
                    Err(error) => Err(format!("publishing release {tag}: {error}")),
                }
            }
            // One release shared by a driver version, so the unit cannot be one directory rename.
            // Publishers of the release take turns under a lock (released by the kernel if the
            // holder dies); the holder decides first-wins by the package's presence, replaces
            // sidecars left by a publish that died before its package (they belong to nobody), and
            // links the package last. Once a package is visible its sidecars are its own and are
            // never touched again, and the loader reads the package first.
            ReleaseLayout::PerDriverVersion => {
                std::fs::create_dir_all(&release_dir)
                    .map_err(|error| format!("creating release {tag}: {error}"))?;
                let lock = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(release_dir.join(PUBLISH_LOCK))
                    .map_err(|error| format!("opening the publish lock of {tag}: {error}"))?;
                lock.lock()
                    .map_err(|error| format!("locking release {tag}: {error}"))?;
                if release_dir.join(&package_name).exists() {
                    append_log(
                        log,
                        "another build published the artifact first; keeping it",
                    );
                    return Ok(());
                }
                let assets = std::fs::read_dir(&release_dir)
                    .map_err(|error| format!("listing release {tag}: {error}"))?
                    .filter_map(Result::ok)
                    .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
                    .count();
                if assets + files.len() > ReleaseLayout::MAX_ASSETS_PER_RELEASE {
                    return Err(format!(
                        "release {tag} would pass {} assets (the GitHub limit per release); \
                         use the per-artifact release layout",
                        ReleaseLayout::MAX_ASSETS_PER_RELEASE
                    ));
                }
                for file in &files {
                    let temporary =
                        release_dir.join(format!(".tmp-{}-{file}", self.build.build_id));
                    std::fs::copy(out_dir.join(file), &temporary)
                        .map_err(|error| format!("staging {file}: {error}"))?;
                    sync_file(&temporary)?;
                    let target = release_dir.join(file);
                    let placed = if file == &package_name {
                        // Never replaces, even a package that appeared behind the lock's back.
                        let linked = std::fs::hard_link(&temporary, &target);
                        let _ = std::fs::remove_file(&temporary);
                        linked
                    } else {
                        std::fs::rename(&temporary, &target)
                    };
                    placed.map_err(|error| format!("publishing {file}: {error}"))?;
                }
                sync_file(&release_dir)?;
                drop(lock);
                Ok(())
            }
        }
    }
}

fn write_file(path: &Path, content: &[u8]) -> Result<(), String> {
    std::fs::write(path, content).map_err(|error| format!("writing {}: {error}", path.display()))
}

fn sync_file(path: &Path) -> Result<(), String> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|error| format!("syncing {}: {error}", path.display()))
}

fn append_log(log: &Path, line: &str) {
    if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(file, "build-service: {line}");
    }
}

/// Replaces the state file atomically (temp + rename), so a reader never sees half a state.
fn write_state(dir: &Path, state: &JobState) -> std::io::Result<()> {
    let json = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    let temporary = dir.join(format!(".state-{}.tmp", uuid::Uuid::new_v4()));
    std::fs::write(&temporary, json)?;
    std::fs::rename(&temporary, dir.join("state.json"))
}

fn read_state(dir: &Path) -> std::io::Result<Option<JobState>> {
    match std::fs::read(dir.join("state.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Whether some process holds the job lock (runs the build).
fn job_lock_held(dir: &Path) -> bool {
    let Ok(file) = OpenOptions::new().write(true).open(dir.join("lock")) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => false,
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(_)) => false,
    }
}

/// Refuses anything that is not one of our artifact names in its own release: the decoded path
/// segments must name a package, signature or digest of this driver whose tag is the one the layout
/// gives its identity. Nothing else on disk is reachable.
fn artifact_file(settings: &LocalSettings, tag: &str, file: &str) -> Option<PathBuf> {
    let plain = |segment: &str| {
        !segment.is_empty()
            && segment.len() <= 255
            && !segment.starts_with('.')
            && !segment.contains(['/', '\\', '\0'])
    };
    if !plain(tag) || !plain(file) {
        return None;
    }
    let package = file
        .strip_suffix(".minisig")
        .or_else(|| file.strip_suffix(".sha256"))
        .or_else(|| file.strip_suffix(".intoto.jsonl"))
        .unwrap_or(file);
    let identity = KernelIdentity::parse_package_file_name(&settings.driver, package).ok()?;
    if settings.layout.release_tag(&settings.driver, &identity) != tag {
        return None;
    }
    Some(settings.artifact_dir.join(tag).join(file))
}

async fn download(
    State(backend): State<Arc<LocalBackend>>,
    UrlPath((tag, file)): UrlPath<(String, String)>,
) -> Response {
    let Some(path) = artifact_file(&backend.settings, &tag, &file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let content_type = if file.ends_with(".minisig") || file.ends_with(".sha256") {
        "text/plain; charset=utf-8"
    } else if file.ends_with(".intoto.jsonl") {
        "application/jsonl"
    } else {
        "application/octet-stream"
    };
    stream_file(&path, content_type).await
}

async fn build_log(
    State(backend): State<Arc<LocalBackend>>,
    UrlPath(build_id): UrlPath<String>,
) -> Response {
    match backend.build_dir(&build_id) {
        Ok(dir) => stream_file(&dir.join("build.log"), "text/plain; charset=utf-8").await,
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Streams a regular file (never through a symlink) in chunks; HEAD gets the same headers and axum
/// drops the body.
async fn stream_file(path: &Path, content_type: &'static str) -> Response {
    let opened = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .await;
    let file = match opened {
        Ok(file) => file,
        Err(_) => return StatusCode::NOT_FOUND.into_response(),
    };
    let length = match file.metadata().await {
        Ok(metadata) if metadata.is_file() => metadata.len(),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let chunks = futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buffer = vec![0u8; 64 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buffer)), file))
            }
            Err(error) => Some((Err(error), file)),
        }
    });
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

#[cfg(test)]
mod tests {
    use kernel_id::IdentityInput;

    use super::*;

    fn settings(dir: &Path) -> LocalSettings {
        LocalSettings {
            artifact_dir: dir.join("artifacts"),
            builds_dir: dir.join("builds"),
            driver_repo: dir.join("repo").to_string_lossy().into_owned(),
            driver_subdir: PathBuf::new(),
            source_mirror: dir.join("driver-source.git"),
            driver: DriverName::parse("example-driver").expect("driver"),
            layout: ReleaseLayout::PerArtifact,
            public_url: "http://127.0.0.1:1".to_owned(),
            max_concurrent_builds: 1,
        }
    }

    fn identity() -> KernelIdentity {
        KernelIdentity::from_input(&IdentityInput {
            kernel_version: "6.12.48+deb13-amd64".to_owned(),
            architecture: "x86_64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: Some("13".to_owned()),
            driver_version: "v0.1.2".to_owned(),
        })
        .expect("identity")
    }

    #[test]
    fn only_artifact_names_in_their_own_release_are_served() {
        let dir = Path::new("/srv");
        let settings = settings(dir);
        let identity = identity();
        let tag = settings.layout.release_tag(&settings.driver, &identity);
        let package = identity.package_file_name(&settings.driver);
        assert!(artifact_file(&settings, &tag, &package).is_some());
        assert!(artifact_file(&settings, &tag, &format!("{package}.minisig")).is_some());
        assert!(artifact_file(&settings, &tag, &format!("{package}.sha256")).is_some());
        assert!(artifact_file(&settings, &tag, &format!("{package}.intoto.jsonl")).is_some());
        for (bad_tag, bad_file) in [
            ("..", package.as_str()),
            (tag.as_str(), "../../etc/passwd"),
            (tag.as_str(), ".."),
            (tag.as_str(), "state.json"),
            (tag.as_str(), &format!("{package}.tmp")),
            ("other-tag", package.as_str()),
            (tag.as_str(), &format!("sub/{package}")),
            (tag.as_str(), &format!("{package}\0")),
            ("", package.as_str()),
        ] {
            assert!(
                artifact_file(&settings, bad_tag, bad_file).is_none(),
                "{bad_tag}/{bad_file}"
            );
        }
    }

    #[test]
    fn state_files_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_state(dir.path()).expect("read"), None);
        let failed = JobState::Failed {
            message: "no headers".to_owned(),
        };
        write_state(dir.path(), &failed).expect("write");
        assert_eq!(read_state(dir.path()).expect("read"), Some(failed));
    }

    #[test]
    fn pruning_removes_only_ended_builds_nobody_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = settings(dir.path());
        std::fs::create_dir_all(&settings.builds_dir).expect("builds");
        std::fs::create_dir_all(&settings.artifact_dir).expect("artifacts");
        let build = |state: Option<JobState>, cancelled: bool| {
            let id = uuid::Uuid::new_v4().to_string();
            let path = settings.builds_dir.join(&id);
            std::fs::create_dir(&path).expect("build dir");
            std::fs::write(path.join("build.log"), "log\n").expect("log");
            if let Some(state) = state {
                write_state(&path, &state).expect("state");
            }
            if cancelled {
                std::fs::write(path.join(CANCELLED_MARKER), "1\n").expect("marker");
            }
            (id, path)
        };
        let failed = JobState::Failed {
            message: "x".to_owned(),
        };
        let succeeded = build(Some(JobState::Succeeded), false);
        let failed_build = build(Some(failed.clone()), false);
        let cancelled_queued = build(Some(JobState::Queued), true);
        let in_progress = build(Some(JobState::InProgress), false);
        let running_here = build(Some(failed), false);
        let locked = build(Some(JobState::Succeeded), false);
        let lock = File::create(locked.1.join("lock")).expect("lock file");
        lock.lock().expect("lock");
        let not_ours = settings.builds_dir.join("not-a-build");
        std::fs::create_dir(&not_ours).expect("foreign dir");
        let release = settings.artifact_dir.join("some-release");
        std::fs::create_dir(&release).expect("release");
        let staging = settings.artifact_dir.join(".staging-abandoned");
        std::fs::create_dir(&staging).expect("staging");

        // Nothing has ended long enough ago yet.
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        let running = vec![running_here.0.clone()];
        assert_eq!(
            prune_builds(&settings, &running, long_ago).expect("prune"),
            0
        );

        let later = SystemTime::now() + Duration::from_secs(3600);
        assert_eq!(prune_builds(&settings, &running, later).expect("prune"), 3);
        for (_, path) in [&succeeded, &failed_build, &cancelled_queued] {
            assert!(!path.exists(), "{} remains", path.display());
        }
        for (_, path) in [&in_progress, &running_here, &locked] {
            assert!(path.exists(), "{} was pruned", path.display());
        }
        assert!(not_ours.exists() && release.exists());
        assert!(!staging.exists());
        drop(lock);
    }

    #[test]
    fn a_held_job_lock_is_seen_from_another_open_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!job_lock_held(dir.path()));
        let lock = File::create(dir.path().join("lock")).expect("create");
        lock.lock().expect("lock");
        assert!(job_lock_held(dir.path()));
        drop(lock);
        assert!(!job_lock_held(dir.path()));
    }
}
