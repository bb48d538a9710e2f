//! Builds end cleanly (issue 12), over HTTP against the real service on SQLite:
//! - a local build forced past its deadline is `timed_out`, every process of its process group is
//!   gone (read from /proc) before its identity is free again, its work is removed, and the next
//!   request starts a fresh build whose published files are all its own (digest and minisign
//!   signature verify);
//! - a job still waiting for a slot when its deadline passes never starts, and a build whose
//!   executor ignored the cancellation never publishes;
//! - two builds of one identity publishing at the same moment (two services over one artifact
//!   directory) never leave a package beside the other build's digest or signature, in both
//!   release layouts;
//! - retention removes finished builds (rows, directories, logs, audit rows), never an in-flight
//!   build nor a published artifact;
//! - with the GitHub backend, a timed-out build's workflow run is cancelled (github-sim).

mod common;
mod github_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use build_service::local::{BuildExecutor, ExecutorJob, LocalBackend, LocalSettings};
use build_service::signing::ServiceSigner;
use build_service::store::Store;
use build_service::{Backend, BackendConfig, Dispatched, RunState, RunningService, ServiceConfig};
use common::{body, bookworm, client, post_build, status, wait_until_ended};
use kernel_id::{DriverName, IdentityInput, KernelIdentity, ReleaseLayout};
use serde_json::Value;
use sha2::Digest;

fn driver() -> DriverName {
    common::driver()
}

fn identity_of(request: &Value) -> KernelIdentity {
    KernelIdentity::from_input(
        &serde_json::from_value::<IdentityInput>(request.clone()).expect("identity input"),
    )
    .expect("identity")
}

// ----- a service over given directories -----

struct Setup {
    /// Holds `builds.db`, `builds/`, the driver's repository `driver-repo/` and its mirror.
    state_dir: PathBuf,
    artifact_dir: PathBuf,
    layout: ReleaseLayout,
    max_concurrent_builds: usize,
    /// The service's secret key file, when it signs.
    signer: Option<PathBuf>,
    cancel_wait: Duration,
}

impl Setup {
    fn new(state_dir: &Path, artifact_dir: &Path) -> Self {
        testkit::SampleDriverRepo::refresh(&state_dir.join("driver-repo"), "", common::TAGS)
            .expect("the driver's repository");
        Self {
            state_dir: state_dir.to_owned(),
            artifact_dir: artifact_dir.to_owned(),
            layout: ReleaseLayout::PerArtifact,
            max_concurrent_builds: 4,
            signer: None,
            cancel_wait: Duration::from_secs(10),
        }
    }

    fn builds_dir(&self) -> PathBuf {
        self.state_dir.join("builds")
    }

    fn database_url(&self) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            self.state_dir.join("builds.db").display()
        )
    }

    async fn start(
        &self,
        executor: Arc<dyn BuildExecutor>,
        tweak: impl FnOnce(&mut ServiceConfig),
    ) -> RunningService {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let public_url = format!("http://{}", listener.local_addr().expect("address"));
        let local = LocalBackend::new(
            LocalSettings {
                artifact_dir: self.artifact_dir.clone(),
                builds_dir: self.builds_dir(),
                driver_repo: self
                    .state_dir
                    .join("driver-repo")
                    .to_string_lossy()
                    .into_owned(),
                driver_subdir: PathBuf::new(),
                source_mirror: self.state_dir.join("driver-source.git"),
                driver: driver(),
                layout: self.layout,
                public_url,
                max_concurrent_builds: self.max_concurrent_builds,
            },
            executor,
            self.signer
                .as_ref()
                .map(|path| ServiceSigner::load(path, None, BUILDER_ID).expect("signing key")),
        )
        .expect("local backend")
        .with_cancel_wait(self.cancel_wait);
        let local = Arc::new(local);
        let mut config = ServiceConfig::new(
            self.database_url(),
            driver(),
            BackendConfig::Custom(Arc::clone(&local) as Arc<dyn Backend>),
        );
        config.extra_routes = Some(local.router());
        config.layout = self.layout;
        config.poll_interval = Some(Duration::from_millis(50));
        config.lease = Duration::from_secs(5);
        config.retry_base = Duration::from_millis(50);
        config.retry_max = Duration::from_millis(500);
        config.wait_recheck = Duration::from_millis(200);
        tweak(&mut config);
        RunningService::start_on(config, listener)
            .await
            .expect("service starts")
    }
}

// ----- executors -----

/// What the next build reaching [`PlanExecutor`] does.
#[derive(Debug, Clone)]
enum Step {
    /// Starts `sh` with two background `sleep 300` in its own process group through build-root's
    /// own runner (the one every command of a real build runs through), records the three pids, and
    /// runs until the build is cancelled.
    ProcessGroup,
    /// Writes a package naming the build.
    Package,
    /// Fails with this reason.
    Fail(&'static str),
    /// Ignores the cancellation: blocks until the gate opens, then writes a package.
    Stubborn(Arc<Gate>),
}

#[derive(Debug, Default)]
struct Gate {
    open: Mutex<bool>,
    wake: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.wake.notify_all();
    }

    fn wait(&self) -> bool {
        let open = self.open.lock().unwrap();
        let (open, _) = self
            .wake
            .wait_timeout_while(open, Duration::from_secs(60), |open| !*open)
            .unwrap();
        *open
    }
}

/// Opens the gate when the test ends, passing or failing, so no build stays blocked.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Runs builds by a plan, in arrival order; records which builds started.
#[derive(Debug)]
struct PlanExecutor {
    plan: Mutex<Vec<Step>>,
    started: Mutex<Vec<String>>,
    finished: Mutex<Vec<String>>,
    pid_dir: PathBuf,
}

impl PlanExecutor {
    fn new(plan: Vec<Step>, pid_dir: &Path) -> Arc<Self> {
        Arc::new(Self {
            plan: Mutex::new(plan.into_iter().rev().collect()),
            started: Mutex::new(Vec::new()),
            finished: Mutex::new(Vec::new()),
            pid_dir: pid_dir.to_owned(),
        })
    }

    fn started(&self) -> Vec<String> {
        self.started.lock().unwrap().clone()
    }

    fn pid_file(&self, build_id: &str) -> PathBuf {
        self.pid_dir.join(format!("{build_id}.pids"))
    }

    /// The recorded pids of a build's process group (leader first), once all three are written.
    async fn pids(&self, build_id: &str) -> Vec<i32> {
        for _ in 0..200 {
            let pids: Vec<i32> = std::fs::read_to_string(self.pid_file(build_id))
                .unwrap_or_default()
                .lines()
                .filter_map(|line| line.trim().parse().ok())
                .collect();
            if pids.len() == 3 {
                return pids;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("build {build_id} never recorded its pids");
    }
}

/// The builder id the test service writes into provenance.
const BUILDER_ID: &str = "urn:kdriver:builder:test";

/// A signing key pair in `dir`: the secret key file and the public key.
fn signing_key(dir: &Path) -> (PathBuf, integrity::PublicKey) {
    let secret = dir.join("signing.key");
    let key = integrity::SecretKey::generate(&secret, &dir.join("signing.pub")).expect("key");
    (secret, key.public().clone())
}

/// Writes the package and what a real build leaves for its provenance: the builder's facts file
/// and the executor's root image file.
fn write_package(job: &ExecutorJob, content: &[u8]) -> Result<(), String> {
    let facts = integrity::BuildFacts {
        headers: Vec::new(),
        compiler: integrity::CompilerFacts {
            name: "gcc-12".to_owned(),
            kernel_cc_version_text: "gcc-12".to_owned(),
            root_version_report: "gcc-12".to_owned(),
        },
    };
    let root = integrity::RootImage {
        uri: "test:root".to_owned(),
        sha256: "00".repeat(32),
    };
    std::fs::write(
        job.out_dir
            .join(job.identity.package_file_name(&job.driver)),
        content,
    )
    .and_then(|()| {
        std::fs::write(
            job.out_dir.join(integrity::BUILD_FACTS_FILE),
            serde_json::to_vec(&facts).expect("facts"),
        )
    })
    .and_then(|()| {
        std::fs::write(
            job.out_dir.join(build_service::signing::ROOT_IMAGE_FILE),
            serde_json::to_vec(&root).expect("root"),
        )
    })
    .map_err(|error| error.to_string())
}

impl BuildExecutor for PlanExecutor {
    fn build(&self, job: &ExecutorJob) -> Result<(), String> {
        self.started.lock().unwrap().push(job.build_id.clone());
        let step = self
            .plan
            .lock()
            .unwrap()
            .pop()
            .ok_or("no step planned for this build")?;
        let outcome = match step {
            Step::ProcessGroup => {
                let script = format!(
                    "echo $$ > {pids}; sleep 300 & echo $! >> {pids}; sleep 300 & echo $! >> {pids}; wait",
                    pids = self.pid_file(&job.build_id).display()
                );
                let mut command = Command::new("sh");
                command.args(["-c", &script]);
                match build_root::run_cancellable(
                    &mut command,
                    &job.log,
                    Duration::from_secs(600),
                    &job.cancel,
                ) {
                    Ok(build_root::Ended::Cancelled) => Err("cancelled".to_owned()),
                    other => Err(format!(
                        "the process group ended without a cancel: {other:?}"
                    )),
                }
            }
            Step::Package => {
                write_package(job, format!("package of {}\n", job.build_id).as_bytes())
            }
            Step::Fail(reason) => Err(reason.to_owned()),
            Step::Stubborn(gate) => {
                if gate.wait() {
                    write_package(job, format!("package of {}\n", job.build_id).as_bytes())
                } else {
                    Err("the gate never opened".to_owned())
                }
            }
        };
        self.finished.lock().unwrap().push(job.build_id.clone());
        outcome
    }
}

/// Holds every build until the other build of the same identity arrives, then both write a large
/// package of their own at the same moment, so their publishes overlap.
#[derive(Debug, Default)]
struct RendezvousExecutor {
    arrived: Mutex<HashMap<String, usize>>,
    wake: Condvar,
}

const LARGE_PACKAGE: usize = 4 << 20;

impl BuildExecutor for RendezvousExecutor {
    fn build(&self, job: &ExecutorJob) -> Result<(), String> {
        let key = job.identity.cache_key();
        let mut arrived = self.arrived.lock().unwrap();
        *arrived.entry(key.clone()).or_insert(0) += 1;
        self.wake.notify_all();
        let (arrived, timeout) = self
            .wake
            .wait_timeout_while(arrived, Duration::from_secs(60), |arrived| {
                arrived.get(&key).copied().unwrap_or(0) < 2
            })
            .unwrap();
        drop(arrived);
        if timeout.timed_out() {
            return Err("the other build of this identity never arrived".to_owned());
        }
        let mut content = format!("package of {}\n", job.build_id).into_bytes();
        content.resize(LARGE_PACKAGE, job.build_id.as_bytes()[0]);
        write_package(job, &content)
    }
}

// ----- /proc -----

/// Whether `pid` is a live process (a zombie has already died).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X')),
        Err(_) => false,
    }
}

/// Live processes whose process group is `group`.
fn live_members(group: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command name: state ppid pgrp ...
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        if fields.get(2).and_then(|pgrp| pgrp.parse::<i32>().ok()) == Some(group)
            && !matches!(fields.first(), Some(&"Z" | &"X"))
        {
            members.push(pid);
        }
    }
    members
}

/// Kills whatever of a recorded process group still lives when a test ends (so a failing test does
/// not leave its sleeps behind for minutes).
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let group = self.0[0];
        for pid in live_members(group) {
            if self.0.contains(&pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

// ----- downloads -----

/// Downloads the package, digest, signature and provenance of `download_url` and checks that they
/// belong together: the digest is the package's SHA-256, the signature verifies with `public_key`
/// and names the package, the provenance verifies and is about this package from the build the
/// package names. Returns the package.
async fn verified_download(
    client: &reqwest::Client,
    download_url: &str,
    public_key: &integrity::PublicKey,
    source_repositories: &[String],
) -> Result<Vec<u8>, String> {
    let fetch = |url: String| async move {
        let response = client.get(&url).send().await.map_err(|e| e.to_string())?;
        if response.status().as_u16() != 200 {
            return Err(format!("{url}: {}", response.status()));
        }
        response
            .bytes()
            .await
            .map(|bytes| bytes.to_vec())
            .map_err(|e| e.to_string())
    };
    let package = fetch(download_url.to_owned()).await?;
    let digest = String::from_utf8(fetch(format!("{download_url}.sha256")).await?)
        .map_err(|e| e.to_string())?;
    let signature = String::from_utf8(fetch(format!("{download_url}.minisig")).await?)
        .map_err(|e| e.to_string())?;
    let actual = hex::encode(sha2::Sha256::digest(&package));
    if digest.split_whitespace().next() != Some(actual.as_str()) {
        return Err(format!(
            "digest {digest:?} is not the package's ({actual}); package starts {:?}",
            String::from_utf8_lossy(&package[..package.len().min(60)])
        ));
    }
    let file_name =
        percent_encoding::percent_decode_str(download_url.rsplit('/').next().unwrap_or_default())
            .decode_utf8_lossy()
            .into_owned();
    let (driver, identity) = KernelIdentity::parse_any_package_file_name(&file_name)
        .map_err(|error| error.to_string())?;
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = scratch.path().join(&file_name);
    std::fs::write(&path, &package).map_err(|e| e.to_string())?;
    let mut keyring = integrity::Keyring::new();
    keyring
        .insert(public_key.clone(), "test")
        .map_err(|e| e.to_string())?;
    integrity::signature::verify_package(&keyring, &path, &file_name, &signature)
        .map_err(|error| format!("signature does not verify the package: {error}"))?;
    let provenance = String::from_utf8(fetch(format!("{download_url}.intoto.jsonl")).await?)
        .map_err(|e| e.to_string())?;
    let package_sha256 = integrity::sha256_bytes(&package);
    // Services over different state directories build from different repositories: the
    // provenance must name one of them.
    let verified = source_repositories
        .iter()
        .map(|repository| {
            integrity::provenance::verify(
                &provenance,
                &keyring,
                integrity::provenance::Expected {
                    driver: &driver,
                    identity: &identity,
                    package_sha256: &package_sha256,
                },
                &integrity::ProvenancePolicy {
                    expected_source_repository: repository.clone(),
                    allowed_builders: vec![BUILDER_ID.to_owned()],
                    pinned_commit: None,
                },
            )
        })
        .find(Result::is_ok)
        .unwrap_or_else(|| {
            Err(integrity::ProvenanceError {
                field: "resolvedDependencies.source.uri".to_owned(),
                reason: format!("names none of {source_repositories:?}"),
            })
        });
    let built_by = String::from_utf8_lossy(&package)
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("package of "))
        .map(str::to_owned)
        .unwrap_or_default();
    match verified {
        Ok(verified) if !built_by.is_empty() && verified.invocation_id == built_by => Ok(package),
        Ok(verified) => Err(format!(
            "provenance of build {:?} is not the one of the package's build {built_by:?}",
            verified.invocation_id
        )),
        Err(error) => Err(format!("provenance does not verify: {error}")),
    }
}

// ----- tests -----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_build_is_killed_with_its_process_group_and_the_next_build_publishes_its_own_files()
 {
    let dir = tempfile::tempdir().unwrap();
    let (secret_key, public_key) = signing_key(dir.path());
    let mut setup = Setup::new(&dir.path().join("state"), &dir.path().join("artifacts"));
    setup.signer = Some(secret_key);
    let repositories = vec![format!(
        "file://{}",
        dir.path().join("state/driver-repo").display()
    )];
    let executor = PlanExecutor::new(vec![Step::ProcessGroup, Step::Package], dir.path());
    let service = setup
        .start(executor.clone(), |config| {
            config.build_timeout = Duration::from_secs(3);
        })
        .await;
    let base = service.url();
    let client = client();
    let request = bookworm("v0.1.2");

    let (code, first) = post_build(&client, &base, &request).await;
    assert_eq!(code, 202, "{first}");
    let first_id = first["build_id"].as_str().unwrap().to_owned();
    let pids = executor.pids(&first_id).await;
    let _cleanup = KillOnDrop(pids.clone());
    let group = pids[0];
    assert!(pids.iter().all(|pid| alive(*pid)), "{pids:?} run");
    assert_eq!(
        {
            let mut members = live_members(group);
            members.sort_unstable();
            members
        },
        {
            let mut sorted = pids.clone();
            sorted.sort_unstable();
            sorted
        },
        "the build's process group is the shell and its two sleeps"
    );

    let ended = wait_until_ended(&client, &base, &first_id).await;
    assert_eq!(ended["status"], "timed_out", "{ended}");
    let error = ended["error"].as_str().unwrap();
    assert!(
        error.contains("deadline") && error.contains("the build was cancelled"),
        "{ended}"
    );
    // The identity is free only now: every process of the group must already be gone.
    let survivors: Vec<i32> = pids.iter().copied().filter(|pid| alive(*pid)).collect();
    assert!(survivors.is_empty(), "still running: {survivors:?}");
    assert!(live_members(group).is_empty(), "the process group lives on");
    // Its work is gone, its log and the cancellation stay until retention.
    let first_dir = setup.builds_dir().join(&first_id);
    assert!(
        !first_dir.join("out").exists(),
        "the cancelled build's output remains"
    );
    assert!(first_dir.join("cancelled").is_file());
    assert!(
        std::fs::read_to_string(first_dir.join("build.log"))
            .unwrap()
            .contains("FAILED: the build was cancelled")
    );

    // The next request makes a fresh build whose published files are all its own.
    let (code, second) = post_build(&client, &base, &request).await;
    assert_eq!(code, 202, "{second}");
    let second_id = second["build_id"].as_str().unwrap().to_owned();
    assert_ne!(second_id, first_id);
    let done = wait_until_ended(&client, &base, &second_id).await;
    assert_eq!(done["status"], "done", "{done}");
    let package = verified_download(
        &client,
        done["download_url"].as_str().unwrap(),
        &public_key,
        &repositories,
    )
    .await
    .expect("the published files belong together");
    assert_eq!(package, format!("package of {second_id}\n").into_bytes());
    assert_eq!(executor.started(), [first_id, second_id]);
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queued_build_past_its_deadline_never_starts_and_a_cancelled_build_never_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&dir.path().join("state"), &dir.path().join("artifacts"));
    setup.max_concurrent_builds = 1;
    // The running build ignores its cancellation, so it keeps the only slot past both deadlines.
    setup.cancel_wait = Duration::from_millis(300);
    let gate = Arc::new(Gate::default());
    let _open_at_end = OpenOnDrop(Arc::clone(&gate));
    let executor = PlanExecutor::new(
        vec![Step::Stubborn(Arc::clone(&gate)), Step::Package],
        dir.path(),
    );
    let service = setup
        .start(executor.clone(), |config| {
            config.build_timeout = Duration::from_secs(2);
        })
        .await;
    let base = service.url();
    let client = client();
    let running_request = bookworm("v0.1.2");
    let queued_request = bookworm("v0.1.3");

    let (_, running) = post_build(&client, &base, &running_request).await;
    let running_id = running["build_id"].as_str().unwrap().to_owned();
    for _ in 0..100 {
        if !executor.started().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(executor.started(), std::slice::from_ref(&running_id));
    let (_, queued) = post_build(&client, &base, &queued_request).await;
    let queued_id = queued["build_id"].as_str().unwrap().to_owned();

    let ended = wait_until_ended(&client, &base, &running_id).await;
    assert_eq!(ended["status"], "timed_out", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .unwrap()
            .contains("cancelling it failed"),
        "{ended}"
    );
    let ended = wait_until_ended(&client, &base, &queued_id).await;
    assert_eq!(ended["status"], "timed_out", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .unwrap()
            .contains("the build was cancelled"),
        "{ended}"
    );
    assert!(
        std::fs::read_to_string(setup.builds_dir().join(&queued_id).join("build.log"))
            .unwrap()
            .contains("cancelled before it started")
    );

    // The stubborn build finally returns a package: it was cancelled, so it is never published;
    // and the slot it frees goes to nobody (the queued build was cancelled for good).
    gate.open();
    for _ in 0..100 {
        if executor.finished.lock().unwrap().len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        executor.started(),
        std::slice::from_ref(&running_id),
        "the queued build started"
    );
    for request in [&running_request, &queued_request] {
        let identity = identity_of(request);
        let package = setup
            .artifact_dir
            .join(setup.layout.release_tag(&driver(), &identity))
            .join(identity.package_file_name(&driver()));
        assert!(!package.exists(), "{} was published", package.display());
    }
    let state =
        std::fs::read_to_string(setup.builds_dir().join(&running_id).join("state.json")).unwrap();
    assert!(state.contains("cancelled"), "{state}");
    service.stop().await.unwrap();
}

async fn overlapping_publishes(layout: ReleaseLayout) {
    let dir = tempfile::tempdir().unwrap();
    let (secret_key, public_key) = signing_key(dir.path());
    let artifacts = dir.path().join("artifacts");
    let repositories: Vec<String> = ["a", "b"]
        .iter()
        .map(|name| {
            format!(
                "file://{}",
                dir.path().join(name).join("driver-repo").display()
            )
        })
        .collect();
    let executor = Arc::new(RendezvousExecutor::default());
    let mut services = Vec::new();
    for name in ["a", "b"] {
        let mut setup = Setup::new(&dir.path().join(name), &artifacts);
        setup.layout = layout;
        setup.max_concurrent_builds = 16;
        setup.signer = Some(secret_key.clone());
        services.push(setup.start(executor.clone(), |_| {}).await);
    }
    let client = client();
    // Several identities sharing one driver version, so the per-driver-version layout puts them all
    // in one release.
    let requests: Vec<Value> = (40..48)
        .map(|abi| {
            body(
                &format!("6.1.0-{abi}-amd64"),
                "debian",
                Some("12"),
                "v0.1.2",
            )
        })
        .collect();
    let mut builds = tokio::task::JoinSet::new();
    for request in &requests {
        for service in &services {
            let (client, base, request) = (client.clone(), service.url(), request.clone());
            builds.spawn(async move {
                let (code, answer) = post_build(&client, &base, &request).await;
                assert_eq!(code, 202, "{answer}");
                let build_id = answer["build_id"].as_str().unwrap().to_owned();
                wait_until_ended(&client, &base, &build_id).await
            });
        }
    }
    let mut ended = Vec::new();
    while let Some(build) = builds.join_next().await {
        ended.push(build.unwrap());
    }
    let mut mixed = Vec::new();
    for request in &requests {
        for service in &services {
            let identity = identity_of(request);
            let url = format!(
                "{}/releases/download/{}",
                service.url(),
                layout.package_path(&driver(), &identity)
            );
            if let Err(problem) = verified_download(&client, &url, &public_key, &repositories).await
            {
                mixed.push(format!("{}: {problem}", identity.cache_key()));
            }
        }
    }
    assert!(mixed.is_empty(), "{layout}: mixed publishes: {mixed:#?}");
    // Both builds of each identity succeed: the second finds the first's unit and keeps it.
    for ended in &ended {
        assert_eq!(ended["status"], "done", "{ended}");
    }
    // Nothing staged is left behind.
    let mut leftovers = Vec::new();
    for release in std::fs::read_dir(&artifacts).unwrap().flatten() {
        let name = release.file_name().to_string_lossy().into_owned();
        if name.starts_with(".staging-") {
            leftovers.push(name);
        } else if release.path().is_dir() {
            for file in std::fs::read_dir(release.path()).unwrap().flatten() {
                let file = file.file_name().to_string_lossy().into_owned();
                if file.starts_with(".tmp-") {
                    leftovers.push(format!("{name}/{file}"));
                }
            }
        }
    }
    assert!(leftovers.is_empty(), "{leftovers:?}");
    for service in services {
        service.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_publishes_never_mix_in_a_shared_release() {
    overlapping_publishes(ReleaseLayout::PerDriverVersion).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_publishes_never_mix_in_per_artifact_releases() {
    overlapping_publishes(ReleaseLayout::PerArtifact).await;
}

/// How many audit rows (`build_requests`) a build has.
async fn audit_rows(store: &Store, build_id: &str) -> usize {
    store
        .requests_for(&[build_id.to_owned()])
        .await
        .unwrap()
        .get(build_id)
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_prunes_finished_builds_but_never_in_flight_ones_or_published_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::new(&dir.path().join("state"), &dir.path().join("artifacts"));
    let gate = Arc::new(Gate::default());
    let _open_at_end = OpenOnDrop(Arc::clone(&gate));
    let executor = PlanExecutor::new(
        vec![
            Step::Package,
            Step::Fail("no headers"),
            Step::Stubborn(Arc::clone(&gate)),
        ],
        dir.path(),
    );
    let retention = Duration::from_secs(2);
    let service = setup
        .start(executor.clone(), |config| {
            config.retention = retention;
            // The sweeper (which applies retention) runs every half lease.
            config.lease = Duration::from_secs(1);
        })
        .await;
    let base = service.url();
    let client = client();
    let mut ids = Vec::new();
    for (version, expected) in [("v0.1.2", "done"), ("v0.1.3", "error")] {
        let (code, answer) = post_build(&client, &base, &bookworm(version)).await;
        assert_eq!(code, 202, "{answer}");
        let id = answer["build_id"].as_str().unwrap().to_owned();
        let ended = wait_until_ended(&client, &base, &id).await;
        assert_eq!(ended["status"], expected, "{ended}");
        ids.push((id, ended));
    }
    let (done_id, done) = ids[0].clone();
    let (failed_id, _) = ids[1].clone();
    let download_url = done["download_url"].as_str().unwrap().to_owned();
    let (_, held) = post_build(&client, &base, &bookworm("v0.1.4")).await;
    let held_id = held["build_id"].as_str().unwrap().to_owned();
    let store = Store::connect(&setup.database_url()).await.unwrap();
    assert!(audit_rows(&store, &done_id).await > 0);
    assert!(setup.builds_dir().join(&done_id).is_dir());

    // Gone once older than the retention: rows, audit rows, directories and logs.
    let gone = |id: String| {
        let client = client.clone();
        let base = base.clone();
        async move {
            client
                .get(format!("{base}/status/{id}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
                == 404
        }
    };
    let mut waited = Duration::ZERO;
    while !(gone(done_id.clone()).await && gone(failed_id.clone()).await) {
        assert!(
            waited < Duration::from_secs(30),
            "finished builds were never pruned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    // A few more rounds, so the in-flight build's own audit row is older than the retention too.
    tokio::time::sleep(retention + Duration::from_secs(1)).await;
    for id in [&done_id, &failed_id] {
        assert!(
            !setup.builds_dir().join(id).exists(),
            "{id}'s directory remains"
        );
        assert!(
            audit_rows(&store, id).await == 0,
            "{id}'s audit rows remain"
        );
    }
    // The build in flight keeps everything.
    let in_flight = status(&client, &base, &held_id, 0).await;
    assert!(
        matches!(in_flight["status"].as_str(), Some("queued" | "in_progress")),
        "{in_flight}"
    );
    assert!(
        setup
            .builds_dir()
            .join(&held_id)
            .join("build.log")
            .is_file()
    );
    assert!(audit_rows(&store, &held_id).await > 0);
    // The published artifact is never pruned.
    let response = client.get(&download_url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        format!("package of {done_id}\n").as_bytes()
    );
    gate.open();
    store.close().await;
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timed_out_github_build_has_its_workflow_run_cancelled() {
    use github_sim::{Conclusion, Route, RunStatus, RunTiming};

    let sim = github_support::start_sim(ReleaseLayout::PerArtifact).await;
    // Runs stay queued until cancelled.
    sim.set_run_timing(RunTiming {
        queued: None,
        in_progress: None,
        publish_step: Duration::ZERO,
    });
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServiceConfig::new(
        format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("builds.db").display()
        ),
        driver(),
        BackendConfig::Custom(Arc::new(github_support::backend_for(
            &sim,
            ReleaseLayout::PerArtifact,
        ))),
    );
    config.build_timeout = Duration::from_secs(2);
    config.poll_interval = Some(Duration::from_millis(50));
    config.retry_base = Duration::from_millis(50);
    config.retry_max = Duration::from_millis(500);
    config.lease = Duration::from_secs(5);
    let service = RunningService::start(config).await.unwrap();
    let base = service.url();
    let client = client();
    let request = bookworm("v0.5.16");

    let (code, answer) = post_build(&client, &base, &request).await;
    assert_eq!(code, 202, "{answer}");
    let build_id = answer["build_id"].as_str().unwrap().to_owned();
    let ended = wait_until_ended(&client, &base, &build_id).await;
    assert_eq!(ended["status"], "timed_out", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .unwrap()
            .contains("the build was cancelled"),
        "{ended}"
    );
    let runs = sim.runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(
        (run.status, run.conclusion),
        (RunStatus::Completed, Some(Conclusion::Cancelled))
    );
    assert_eq!(sim.stats().requests_to(Route::CancelRun), 1);
    assert!(!sim.finish_run(run.id, Conclusion::Success).await);
    assert!(sim.releases().is_empty(), "a cancelled run published");
    service.stop().await.unwrap();

    // The backend on its own: a build whose run id was never recorded is found by its build id,
    // an already completed run (409) is success, a build without a run has nothing to cancel.
    let backend = github_support::backend_for(&sim, ReleaseLayout::PerArtifact);
    let spec = github_support::spec(&build_id, &identity_of(&request));
    backend
        .cancel(&spec, &Dispatched::default())
        .await
        .expect("a completed run needs no cancel");
    assert_eq!(sim.stats().requests_to(Route::CancelRun), 2);
    let never = github_support::spec(&uuid::Uuid::new_v4().to_string(), &identity_of(&request));
    backend
        .cancel(&never, &Dispatched::default())
        .await
        .expect("nothing to cancel");
    assert_eq!(sim.stats().requests_to(Route::CancelRun), 2);
    let dispatched = Dispatched {
        run_id: Some(run.id.to_string()),
        run_url: None,
    };
    match backend.poll(&spec, &dispatched).await.unwrap() {
        RunState::Failed { message } => assert!(message.contains("cancelled"), "{message}"),
        other => panic!("{other:?}"),
    }
}
