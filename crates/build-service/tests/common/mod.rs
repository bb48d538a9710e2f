//! Test support: the service on loopback with the real local backend (real artifact directory, real
//! publishing, real downloads, real SQLite or PostgreSQL), driven by a controllable executor. The
//! executor is the seam the state-machine tests control (succeed, fail, hold until released); the
//! end-to-end test uses the real clean-root executor instead. The driver's source is a real git
//! repository (testkit's sample driver repository) tagged with every driver version the tests ask
//! for; the executor records which commit, repository and tree each build was given.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use build_service::local::{BuildExecutor, ExecutorJob, LocalBackend, LocalSettings};
use build_service::{
    ArtifactRef, Backend, BackendConfig, BackendError, BuildSpec, Dispatched, RunState,
    RunningService, ServiceConfig,
};
use kernel_id::{DriverName, KernelIdentity, ReleaseLayout};
use serde_json::{Value, json};
use testkit::SampleDriverRepo;

pub const DRIVER: &str = "example-driver";

/// The driver versions the sample repository is tagged with (all on its first commit).
pub const TAGS: &[&str] = &["v0.1.2", "v0.1.3", "v0.1.4", "v0.2.0", "v0.5.16"];

/// What one build handed to the executor: the commit, the repository and the exported tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenJob {
    pub build_id: String,
    pub cache_key: String,
    pub source_commit: String,
    pub source_repository: String,
    pub source_dir: PathBuf,
    /// Every file of the source tree (relative path -> content).
    pub files: BTreeMap<String, Vec<u8>>,
}

/// The files under `dir`, by path relative to it.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if let Ok(bytes) = std::fs::read(&path) {
                let relative = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(relative, bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

pub fn driver() -> DriverName {
    DriverName::parse(DRIVER).unwrap()
}

/// What the controllable executor does with the next builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Write the package and succeed.
    Succeed,
    /// Fail with this reason.
    Fail(String),
    /// Block until [`TestExecutor::release`], then succeed.
    Hold,
}

/// Executor for state-machine tests: writes a package file named by kernel-id (the content is not
/// a real package; the real one is built in the end-to-end test).
#[derive(Debug)]
pub struct TestExecutor {
    mode: Mutex<Mode>,
    released: Mutex<bool>,
    wake: Condvar,
    pub builds: AtomicUsize,
    pub started: AtomicUsize,
    /// Every job that reached the executor, in order.
    pub jobs: Mutex<Vec<SeenJob>>,
}

impl TestExecutor {
    pub fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Self {
            mode: Mutex::new(mode),
            released: Mutex::new(false),
            wake: Condvar::new(),
            builds: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            jobs: Mutex::new(Vec::new()),
        })
    }

    /// The jobs seen so far.
    pub fn jobs(&self) -> Vec<SeenJob> {
        self.jobs.lock().unwrap().clone()
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn release(&self) {
        *self.released.lock().unwrap() = true;
        self.wake.notify_all();
    }
}

impl BuildExecutor for TestExecutor {
    fn build(&self, job: &ExecutorJob) -> Result<(), String> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.jobs.lock().unwrap().push(SeenJob {
            build_id: job.build_id.clone(),
            cache_key: job.identity.cache_key(),
            source_commit: job.source_commit.to_string(),
            source_repository: job.source_repository.clone(),
            source_dir: job.source_dir.clone(),
            files: tree(&job.source_dir),
        });
        std::fs::write(
            &job.log,
            format!("test executor: building {}\n", job.identity.cache_key()),
        )
        .map_err(|error| error.to_string())?;
        let mode = self.mode.lock().unwrap().clone();
        match mode {
            Mode::Fail(reason) => return Err(reason),
            Mode::Hold => {
                // Held until released, or until the build is cancelled (checked every 50 ms).
                let mut released = self.released.lock().unwrap();
                let give_up = std::time::Instant::now() + Duration::from_secs(120);
                while !*released {
                    if job.cancel.is_cancelled() {
                        return Err("cancelled".to_owned());
                    }
                    if std::time::Instant::now() >= give_up {
                        return Err("the test never released the build".to_owned());
                    }
                    released = self
                        .wake
                        .wait_timeout(released, Duration::from_millis(50))
                        .unwrap()
                        .0;
                }
            }
            Mode::Succeed => {}
        }
        let name = job.identity.package_file_name(&job.driver);
        std::fs::write(
            job.out_dir.join(name),
            format!("package for {}\n", job.identity.cache_key()),
        )
        .map_err(|error| error.to_string())?;
        self.builds.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Calls seen by the backend, shared by every replica of a test.
#[derive(Debug, Default)]
pub struct Counters {
    pub finds: AtomicUsize,
    pub dispatches: AtomicUsize,
    pub polls: AtomicUsize,
    pub cancels: AtomicUsize,
    pub healths: AtomicUsize,
    pub dispatched_ids: Mutex<HashSet<String>>,
}

impl Counters {
    pub fn total(&self) -> usize {
        self.finds.load(Ordering::SeqCst)
            + self.dispatches.load(Ordering::SeqCst)
            + self.polls.load(Ordering::SeqCst)
    }
}

/// A backend that counts the calls it forwards.
pub struct Counting {
    pub inner: Arc<dyn Backend>,
    pub counters: Arc<Counters>,
}

#[async_trait::async_trait]
impl Backend for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn find_artifact(
        &self,
        driver: &DriverName,
        identity: &KernelIdentity,
    ) -> Result<Option<ArtifactRef>, BackendError> {
        self.counters.finds.fetch_add(1, Ordering::SeqCst);
        self.inner.find_artifact(driver, identity).await
    }

    async fn dispatch(&self, build: &BuildSpec) -> Result<Dispatched, BackendError> {
        self.counters.dispatches.fetch_add(1, Ordering::SeqCst);
        self.counters
            .dispatched_ids
            .lock()
            .unwrap()
            .insert(build.build_id.clone());
        self.inner.dispatch(build).await
    }

    async fn find_run(
        &self,
        build: &BuildSpec,
        since: std::time::SystemTime,
    ) -> Result<Option<Dispatched>, BackendError> {
        self.inner.find_run(build, since).await
    }

    fn dispatch_settle(&self) -> Duration {
        self.inner.dispatch_settle()
    }

    async fn poll(
        &self,
        build: &BuildSpec,
        dispatched: &Dispatched,
    ) -> Result<RunState, BackendError> {
        self.counters.polls.fetch_add(1, Ordering::SeqCst);
        self.inner.poll(build, dispatched).await
    }

    fn source_repository(&self) -> Arc<dyn build_service::source::SourceRepository> {
        self.inner.source_repository()
    }

    async fn cancel(&self, build: &BuildSpec, dispatched: &Dispatched) -> Result<(), BackendError> {
        self.counters.cancels.fetch_add(1, Ordering::SeqCst);
        self.inner.cancel(build, dispatched).await
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.counters.healths.fetch_add(1, Ordering::SeqCst);
        self.inner.health().await
    }

    async fn prune(&self, ended_before: std::time::SystemTime) -> Result<u64, BackendError> {
        self.inner.prune(ended_before).await
    }
}

/// Directories of one test: state, artifacts, builds, and the driver's git repository.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub executor: Arc<dyn BuildExecutor>,
    pub counters: Arc<Counters>,
    pub layout: ReleaseLayout,
    /// The driver's repository, tagged with [`TAGS`].
    pub repo: SampleDriverRepo,
    /// The local backend of the latest [`Env::start_with`].
    pub local: Mutex<Option<Arc<LocalBackend>>>,
}

impl Env {
    pub fn new(executor: Arc<dyn BuildExecutor>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = SampleDriverRepo::create_tagged(&dir.path().join("driver-repo"), TAGS).unwrap();
        Self {
            dir,
            executor,
            counters: Arc::new(Counters::default()),
            layout: ReleaseLayout::PerArtifact,
            repo,
            local: Mutex::new(None),
        }
    }

    /// The local backend of the latest start.
    pub fn local(&self) -> Arc<LocalBackend> {
        self.local.lock().unwrap().clone().expect("started")
    }

    /// The repository's URI as the service reports it (`file://<absolute path>`).
    pub fn repo_uri(&self) -> String {
        let path = std::fs::canonicalize(self.repo.path()).unwrap();
        format!("file://{}", path.display())
    }

    pub fn sqlite_url(&self) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            self.dir.path().join("builds.db").display()
        )
    }

    pub fn artifact_dir(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    pub fn settings(&self, public_url: String) -> LocalSettings {
        LocalSettings {
            artifact_dir: self.artifact_dir(),
            builds_dir: self.dir.path().join("builds"),
            driver_repo: self.repo.path().to_string_lossy().into_owned(),
            driver_subdir: PathBuf::new(),
            source_mirror: self.dir.path().join("driver-source.git"),
            driver: driver(),
            layout: self.layout,
            public_url,
            max_concurrent_builds: 2,
        }
    }

    /// A fast-polling config around the counting local backend.
    pub async fn start_with(
        &self,
        database_url: &str,
        tweak: impl FnOnce(&mut ServiceConfig),
    ) -> RunningService {
        // The service's own deep accept queue: some tests open thousands of connections at once.
        let listener = build_service::bind(([127, 0, 0, 1], 0).into()).unwrap();
        let public_url = format!("http://{}", listener.local_addr().unwrap());
        let local = Arc::new(
            LocalBackend::new(self.settings(public_url), Arc::clone(&self.executor), None).unwrap(),
        );
        *self.local.lock().unwrap() = Some(Arc::clone(&local));
        let counting = Arc::new(Counting {
            inner: Arc::clone(&local) as Arc<dyn Backend>,
            counters: Arc::clone(&self.counters),
        });
        let mut config = ServiceConfig::new(
            database_url.to_owned(),
            driver(),
            BackendConfig::Custom(counting),
        );
        config.extra_routes = Some(local.router());
        config.layout = self.layout;
        config.poll_interval = Some(Duration::from_millis(50));
        config.lease = Duration::from_secs(5);
        config.retry_base = Duration::from_millis(50);
        config.retry_max = Duration::from_millis(500);
        config.wait_recheck = Duration::from_millis(200);
        // Every simulated node calls from 127.0.0.1; tests of the per-client cap set it themselves.
        config.max_requests_per_client = None;
        tweak(&mut config);
        RunningService::start_on(config, listener).await.unwrap()
    }

    pub async fn start(&self) -> RunningService {
        let url = self.sqlite_url();
        self.start_with(&url, |_| {}).await
    }
}

pub fn body(
    kernel_version: &str,
    distribution: &str,
    distro_version: Option<&str>,
    driver_version: &str,
) -> Value {
    let mut body = json!({
        "kernel_version": kernel_version,
        "architecture": "x86_64",
        "distribution": distribution,
        "driver_version": driver_version,
    });
    if let Some(version) = distro_version {
        body["distro_version"] = json!(version);
    }
    body
}

pub fn bookworm(driver_version: &str) -> Value {
    body("6.1.0-47-amd64", "debian", Some("12"), driver_version)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

pub async fn post_build(client: &reqwest::Client, base: &str, body: &Value) -> (u16, Value) {
    let response = client
        .post(format!("{base}/build"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub async fn status(client: &reqwest::Client, base: &str, build_id: &str, wait: u64) -> Value {
    let response = client
        .get(format!("{base}/status/{build_id}?wait={wait}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.unwrap()
}

/// Long-polls until the build ends (bounded).
pub async fn wait_until_ended(client: &reqwest::Client, base: &str, build_id: &str) -> Value {
    for _ in 0..60 {
        let status = status(client, base, build_id, 5).await;
        if matches!(
            status["status"].as_str(),
            Some("done" | "error" | "timed_out")
        ) {
            return status;
        }
    }
    panic!("build {build_id} did not end");
}

/// A private PostgreSQL cluster on 127.0.0.1, run as the `postgres` user, removed on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    pub url: String,
}

fn as_postgres(program: &str) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--", program]);
    command
}

impl Postgres {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("build-service-pg")
            .tempdir()
            .unwrap();
        let status = Command::new("chown")
            .arg("postgres:")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "chown");
        let data = dir.path().join("data");
        let output = as_postgres("initdb")
            .args([
                "-D",
                path(&data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c synchronous_commit=off -c max_connections=200",
            dir.path().display()
        );
        let output = as_postgres("pg_ctl")
            .args([
                "-D",
                path(&data),
                "-l",
                path(&dir.path().join("log")),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&output.stdout),
            std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
        );
        Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
        }
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .args([
                "-D",
                path(&self.dir.path().join("data")),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}
