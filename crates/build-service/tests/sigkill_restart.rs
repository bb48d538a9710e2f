//! A build survives the death of its service process: the real `build-service` binary (local backend,
//! SQLite file, the production clean-root executor running the static `driver-builder` in a bookworm
//! root) is SIGKILLed while it builds 6.1.0-47-amd64, and a new process on the same database and
//! directories must finish that very build: `done`, one build id, one published package whose digest
//! and minisign signature verify (with the `minisign` CLI), and requests for the same identity answered
//! with that build or its artifact. The driver version's tag is moved to another commit while no
//! process runs: the new process must build the commit recorded when the build was reserved, never
//! resolve the version again.
//!
//! Unlike `service.rs`'s in-process restart (whose executor thread lives on), nothing of the first
//! process survives here except what the kernel leaves behind: the lease row in SQLite (never handed
//! back, so the new process must wait for it to lapse), the job's `lock` file (its flock dies with the
//! process) and the build's process group (started in its own group, so SIGKILL of the service does
//! not reach it; the test records what becomes of it and kills what is left at the end).
//!
//! Needs root, mmdebstrap, unshare, minisign, network access to deb.debian.org and the x86_64 musl
//! target; the bookworm base image is made (or reused) under `testkit::cache_dir()/build-root` before
//! the service starts, so the kill never lands in the middle of mmdebstrap.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use build_root::executor::{ExecutorConfig, LocalExecutor};
use build_root::root::RootKey;
use common::{bookworm, client, post_build, status};
use kernel_id::{IdentityInput, KernelIdentity, ReleaseLayout};
use serde_json::Value;

/// Lease of both processes. The dead process never hands its lease back, so the new one can only
/// take the build over once it lapses: after `LEASE` (the last renewal was at most one poll before the
/// kill) plus up to half a lease (its sweeper's period). Production default: 60 s.
const LEASE: Duration = Duration::from_secs(10);

/// Hang guard for each phase of a build (the real build takes seconds once the base image exists).
const PHASE: Duration = Duration::from_secs(5 * 60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_service_process_is_replaced_and_the_new_one_finishes_the_build() {
    let fixture = tokio::task::spawn_blocking(Fixture::prepare).await.unwrap();
    let client = client();
    let request = bookworm("v0.1.2");
    let identity = KernelIdentity::from_input(
        &serde_json::from_value::<IdentityInput>(request.clone()).unwrap(),
    )
    .unwrap();
    let driver = common::driver();
    let package_name = identity.package_file_name(&driver);

    // --- first process: start the build and kill the process while the build runs in its root.
    let mut first = ServiceProcess::start(&fixture, "first");
    let requested = Instant::now();
    let (code, answer) = post_build(&client, &first.url(), &request).await;
    assert_eq!(code, 202, "{answer}");
    let build_id = answer["build_id"].as_str().unwrap().to_owned();
    let reserved_commit = fixture.repo.tag_commit("v0.1.2").unwrap();
    let build_dir = fixture.state_dir.join("builds").join(&build_id);
    let build_log = build_dir.join("build.log");
    let start_line = format!("build-service: build {build_id} of ");

    // Wait for `in_progress` on the API *and* for the build command running inside the root, so the
    // kill hits a live build process group (not just the unpacking of the root).
    let mut in_progress = Value::Null;
    loop {
        let seen = status(&client, &first.url(), &build_id, 0).await;
        let log = std::fs::read_to_string(&build_log).unwrap_or_default();
        if seen["status"] == "in_progress" {
            if in_progress.is_null() {
                eprintln!(
                    "[request + {:>5.1}s] first process reports in_progress",
                    requested.elapsed().as_secs_f64()
                );
            }
            in_progress = seen.clone();
            if log.contains("build-root: running in ") {
                break;
            }
        }
        assert!(
            !matches!(
                seen["status"].as_str(),
                Some("done" | "error" | "timed_out")
            ),
            "the build ended before the service could be killed in the middle of it: {seen}\n\
             --- build log ---\n{log}\n--- service log ---\n{}",
            first.log()
        );
        assert!(
            requested.elapsed() < PHASE,
            "the build never got running in its root: {seen}\n--- build log ---\n{log}\n\
             --- service log ---\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let updated_before_kill = in_progress["updated_at"].clone();
    // The build command runs as `unshare --pid --fork --kill-child ... chroot ...` in a process group
    // of its own, led by that unshare process (spawned just after the log line).
    let looking = Instant::now();
    let leader = loop {
        let found = children(first.pid());
        if let Some(unshare) = found.iter().find(|process| process.comm == "unshare") {
            break unshare.clone();
        }
        assert!(
            looking.elapsed() < Duration::from_secs(5),
            "no unshare process under the service while its build runs: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(
        leader.pgid, leader.pid,
        "the build leads its own process group"
    );
    let group = BuildGroup(leader);
    let before_kill = group.members();

    let killed_at = Instant::now();
    first.sigkill();
    let mut timeline = Timeline::new(killed_at);
    timeline.event(format!(
        "first process SIGKILLed {:.1} s after the request; its build group had {} processes ({}); \
         build log at: {:?}",
        requested.elapsed().as_secs_f64(),
        before_kill.len(),
        describe(&before_kill),
        last_line(&std::fs::read_to_string(&build_log).unwrap_or_default())
    ));

    // What the kernel left: the job's flock is gone with the process (its fd is close-on-exec, so the
    // build's processes never inherited it) ...
    let lock = File::open(build_dir.join("lock")).unwrap();
    match lock.try_lock() {
        Ok(()) => drop(lock),
        Err(TryLockError::WouldBlock) => panic!(
            "the job lock of {build_id} is still held after its service process was SIGKILLed; \
             a restarted service would take the build for running elsewhere"
        ),
        Err(TryLockError::Error(error)) => panic!("probing the job lock: {error}"),
    }
    // ... while the build's process group, which is not the service's, gets no signal: what became
    // of it is recorded (and whatever is left is killed when the test ends).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let survivors = group.members();
    timeline.event(format!(
        "{} processes of the build group outlived the service: {}",
        survivors.len(),
        describe(&survivors)
    ));

    // While nothing runs, the version's tag moves on: the build must not follow it.
    let moved_to = fixture
        .repo
        .commit_file("MOVED", b"after the build was reserved\n", "a later commit")
        .unwrap();
    fixture.repo.move_tag("v0.1.2", &moved_to).unwrap();
    assert_ne!(moved_to, reserved_commit);

    // --- second process: same database, same directories, new port, new replica id.
    let mut second = ServiceProcess::start(&fixture, "second");
    timeline.event("second process answers /healthz".to_owned());
    let seen = status(&client, &second.url(), &build_id, 0).await;
    assert_eq!(seen["build_id"], build_id.as_str(), "{seen}");
    assert!(
        matches!(seen["status"].as_str(), Some("queued" | "in_progress")),
        "the new process lost the in-flight build: {seen}"
    );
    // The same identity is the same build, before the new process has even taken it over.
    let (code, again) = post_build(&client, &second.url(), &request).await;
    assert_eq!(code, 202, "{again}");
    assert_eq!(
        again["build_id"], build_id,
        "a second build id for an identity in flight: {again}"
    );

    let restarted_at = Instant::now();
    let takeover_bound = LEASE * 3 + Duration::from_secs(60);
    let mut took_over = false;
    let mut seen_log_lines = BTreeSet::new();
    let mut orphan_gone = survivors.is_empty();
    let log_at_kill = std::fs::metadata(&build_log).map_or(0, |meta| meta.len());
    let mut during_answered = false;
    let ended = loop {
        let seen = status(&client, &second.url(), &build_id, 0).await;
        let log = std::fs::read_to_string(&build_log).unwrap_or_default();
        let service_log = second.log();
        for (marker, what) in [
            (
                "resuming build",
                "second process claimed the lapsed lease (\"resuming build\")",
            ),
            (
                "orphaned; restarting it",
                "second process found the job orphaned and restarted it",
            ),
        ] {
            if service_log.contains(marker) && seen_log_lines.insert(marker) {
                timeline.event(what.to_owned());
            }
        }
        if !took_over
            && (log.matches(&start_line).count() > 1 || seen["updated_at"] != updated_before_kill)
        {
            took_over = true;
            timeline.event(format!(
                "the build moved again under the second process: {}",
                seen["status"]
            ));
        }
        if took_over && !during_answered && !is_terminal(&seen) {
            let (code, during) = post_build(&client, &second.url(), &request).await;
            assert_eq!(code, 202, "{during}");
            assert_eq!(during["build_id"], build_id, "{during}");
            during_answered = true;
        }
        if !orphan_gone && group.members().is_empty() {
            orphan_gone = true;
            timeline.event(format!(
                "the orphaned build group has exited; the build log grew by {} bytes meanwhile",
                std::fs::metadata(&build_log)
                    .map_or(0, |meta| meta.len())
                    .saturating_sub(log_at_kill)
            ));
        }
        if is_terminal(&seen) {
            timeline.event(format!("build ended: {}", seen["status"]));
            break seen;
        }
        assert!(
            took_over || restarted_at.elapsed() < takeover_bound,
            "the restarted service never got the build moving again ({takeover_bound:?} after it \
             started, lease {LEASE:?}): neither its state changed nor did its job run again, so it \
             is stuck: {seen}\n{timeline}\n--- build log ---\n{log}\n--- second service log ---\n\
             {service_log}"
        );
        assert!(
            restarted_at.elapsed() < takeover_bound + PHASE,
            "the build did not end: {seen}\n{timeline}\n--- build log ---\n{log}\n\
             --- second service log ---\n{service_log}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let log = std::fs::read_to_string(&build_log).unwrap_or_default();
    eprintln!("{timeline}");
    eprintln!(
        "runs of the job in build.log: {}; orphaned build processes still running at the end: {}",
        log.matches(&start_line).count(),
        group.members().len()
    );
    assert_eq!(
        ended["status"],
        "done",
        "{ended}\n{timeline}\n--- build log ---\n{log}\n--- second service log ---\n{}",
        second.log()
    );
    assert_eq!(ended["build_id"], build_id.as_str());
    assert_eq!(
        ended["source_commit"].as_str(),
        Some(reserved_commit.as_str()),
        "the build is recorded with the commit its tag named when it was reserved"
    );
    // Every run of the job (the first process's and the second's) exported that commit, and the
    // tree built has nothing of the later commit.
    let exports: Vec<&str> = log
        .lines()
        .filter(|line| line.starts_with("build-service: driver source: "))
        .collect();
    assert!(!exports.is_empty(), "no export in the build log:\n{log}");
    for line in &exports {
        assert!(
            line.ends_with(&format!(" at {reserved_commit}")),
            "{line} (reserved {reserved_commit}, tag moved to {moved_to})"
        );
    }
    assert!(!build_dir.join("src/MOVED").exists());
    assert!(build_dir.join("src/example_driver.c").is_file());
    let download_url = ended["download_url"].as_str().unwrap().to_owned();
    assert!(
        download_url.starts_with(&format!("{}/releases/download/", second.url())),
        "{download_url}"
    );

    // Exactly one release with exactly one package, digest and signature; nothing staged.
    let artifacts = fixture.state_dir.join("artifacts");
    let releases = list(&artifacts);
    let tag = ReleaseLayout::PerArtifact.release_tag(&driver, &identity);
    assert_eq!(
        releases,
        BTreeSet::from([tag.clone()]),
        "artifact directory"
    );
    let published = list(&artifacts.join(&tag));
    let expected = BTreeSet::from([
        package_name.clone(),
        identity.digest_file_name(&driver),
        identity.signature_file_name(&driver),
        identity.provenance_file_name(&driver),
    ]);
    assert_eq!(published, expected, "release {tag}");
    assert_eq!(
        list(&fixture.state_dir.join("builds")),
        BTreeSet::from([build_id.clone()]),
        "one build directory, the original build id"
    );

    // The package served is the one published, its digest matches and its signature verifies with
    // the minisign CLI (trusted comment included) and with the crate the loader uses.
    let package = client.get(&download_url).send().await.unwrap();
    assert_eq!(package.status().as_u16(), 200);
    let package = package.bytes().await.unwrap();
    let digest = client
        .get(format!("{download_url}.sha256"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    use sha2::Digest;
    let computed = hex::encode(sha2::Sha256::digest(&package));
    assert_eq!(digest.split_whitespace().next(), Some(computed.as_str()));
    assert_eq!(
        digest.split_whitespace().nth(1),
        Some(package_name.as_str())
    );
    let signature = client
        .get(format!("{download_url}.minisig"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let downloaded = fixture.dir.join(&package_name);
    std::fs::write(&downloaded, &package).unwrap();
    let signature_file = fixture.dir.join(format!("{package_name}.minisig"));
    std::fs::write(&signature_file, &signature).unwrap();
    let verified = Command::new("minisign")
        .arg("-V")
        .arg("-Q")
        .arg("-p")
        .arg(&fixture.public_key)
        .arg("-m")
        .arg(&downloaded)
        .arg("-x")
        .arg(&signature_file)
        .output()
        .expect("running minisign");
    assert!(
        verified.status.success(),
        "minisign -V: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    // The trusted comment binds the signature to exactly this file.
    let trusted = String::from_utf8_lossy(&verified.stdout).trim().to_owned();
    assert_eq!(
        trusted
            .split('\t')
            .filter_map(|field| field.strip_prefix("file:"))
            .collect::<Vec<_>>(),
        vec![package_name.as_str()],
        "{trusted}"
    );
    let public =
        minisign::PublicKeyBox::from_string(&std::fs::read_to_string(&fixture.public_key).unwrap())
            .unwrap()
            .into_public_key()
            .unwrap();
    minisign::verify(
        &public,
        &minisign::SignatureBox::from_string(&signature).unwrap(),
        std::io::Cursor::new(&package[..]),
        true,
        false,
        false,
    )
    .expect("the signature verifies with the service's key");
    let fields = Command::new("dpkg-deb")
        .arg("--field")
        .arg(&downloaded)
        .arg("Package")
        .output()
        .unwrap();
    assert!(fields.status.success(), "dpkg-deb --field");
    assert_eq!(
        String::from_utf8_lossy(&fields.stdout).trim(),
        identity.package_name(&driver)
    );

    // After the end, the identity is answered from the store: no new build.
    let (code, after) = post_build(&client, &second.url(), &request).await;
    assert_eq!(code, 200, "{after}");
    assert_eq!(after["status"], "done");
    assert_eq!(after["download_url"].as_str(), Some(download_url.as_str()));
    assert!(
        during_answered,
        "the build was never seen in flight after the second process took it over"
    );

    // A graceful stop of the second process, then the database holds exactly the one build.
    second.sigterm_and_wait();
    let store = build_service::store::Store::connect(&fixture.database_url())
        .await
        .unwrap();
    assert_eq!(store.count_builds().await.unwrap(), 1);
    let record = store.get(&build_id).await.unwrap().unwrap();
    assert_eq!(record.state, build_service::store::BuildState::Done);
    eprintln!(
        "dispatch attempts recorded: {}; build took {:.1} s from request to done",
        record.dispatch_attempts,
        (record.finished_at.unwrap() - record.created_at) as f64 / 1000.0
    );
    store.close().await;
    drop(group);
}

/// Paths and keys shared by both service processes.
struct Fixture {
    /// Test directory (logs, state, keys), left in place for inspection.
    dir: PathBuf,
    state_dir: PathBuf,
    secret_key: PathBuf,
    public_key: PathBuf,
    builder: PathBuf,
    root_cache: PathBuf,
    /// Build roots of this test only (tmpfs when there is one), removed at the end.
    work_dir: tempfile::TempDir,
    /// The driver's repository, `v0.1.2` tagged.
    repo: testkit::SampleDriverRepo,
}

impl Fixture {
    fn prepare() -> Self {
        let dir = testkit::test_log_dir("build-service-sigkill-restart").unwrap();
        let builder = testkit::musl_binary(
            "driver-builder",
            "driver-builder",
            "x86_64-unknown-linux-musl",
        )
        .expect("static driver-builder");
        let root_cache = testkit::cache_dir().join("build-root");
        let work_parent = Path::new("/dev/shm");
        let work_dir = if work_parent.is_dir() {
            tempfile::Builder::new()
                .prefix("build-service-sigkill-")
                .tempdir_in(work_parent)
                .unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        // Make (or reuse) the bookworm base image now, with the settings the service uses.
        let identity = KernelIdentity::from_input(
            &serde_json::from_value::<IdentityInput>(bookworm("v0.1.2")).unwrap(),
        )
        .unwrap();
        let made = Instant::now();
        let image = LocalExecutor::new(ExecutorConfig::new(root_cache.clone()))
            .roots()
            .ensure(&RootKey::for_identity(&identity))
            .expect("the bookworm base image");
        eprintln!(
            "base image {} ready in {:.1} s",
            image.tarball.display(),
            made.elapsed().as_secs_f64()
        );

        // Made 0600 by the integrity module: the service refuses a key others can read.
        let secret_key = dir.join("minisign.key");
        let public_key = dir.join("minisign.pub");
        integrity::SecretKey::generate(&secret_key, &public_key).unwrap();
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir).unwrap();
        let repo = testkit::SampleDriverRepo::create_tagged(&dir.join("driver-repo"), &["v0.1.2"])
            .unwrap();
        Self {
            repo,
            dir,
            state_dir,
            secret_key,
            public_key,
            builder,
            root_cache,
            work_dir,
        }
    }

    fn database_url(&self) -> String {
        format!(
            "sqlite://{}?mode=rwc",
            self.state_dir.join("builds.db").display()
        )
    }
}

/// One `build-service serve` process; killed on drop if still running.
struct ServiceProcess {
    child: Option<Child>,
    port: u16,
    log_file: PathBuf,
}

impl ServiceProcess {
    fn start(fixture: &Fixture, name: &str) -> Self {
        let log_file = fixture.dir.join(format!("service-{name}.log"));
        let mut last_error = String::new();
        // The port is picked here and may be lost to a race before the service binds it: retry.
        for _attempt in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_file)
                .unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_build-service"))
                .arg("serve")
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .arg("--state-dir")
                .arg(&fixture.state_dir)
                .arg("--database-url")
                .arg(fixture.database_url())
                .args(["--backend", "local"])
                .arg("--driver-repo")
                .arg(fixture.repo.path())
                .arg("--builder-x86-64")
                .arg(&fixture.builder)
                .arg("--root-cache")
                .arg(&fixture.root_cache)
                .arg("--signing-key")
                .arg(&fixture.secret_key)
                .args(["--poll-interval", "250ms", "--build-timeout", "20m"])
                .args(["--lease", &format!("{}s", LEASE.as_secs())])
                .args(["--max-concurrent-builds", "1", "--max-wait", "30s"])
                .env("KDRIVER_WORK_DIR", fixture.work_dir.path())
                .env("RUST_LOG", "info,tower_http=warn")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            let mut service = Self {
                child: Some(child),
                port,
                log_file: log_file.clone(),
            };
            match service.wait_healthy(Duration::from_secs(60)) {
                Ok(()) => return service,
                Err(error) => last_error = error,
            }
        }
        panic!("the {name} build-service did not start: {last_error}");
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Err(format!("exited ({status}):\n{}", self.log()));
            }
            let healthy = std::net::TcpStream::connect(("127.0.0.1", self.port))
                .ok()
                .and_then(|mut stream| {
                    use std::io::{Read, Write};
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .ok()?;
                    stream
                        .write_all(
                            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                        )
                        .ok()?;
                    let mut answer = String::new();
                    stream.read_to_string(&mut answer).ok()?;
                    Some(answer.starts_with("HTTP/1.1 200"))
                })
                .unwrap_or(false);
            if healthy {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.sigkill();
                return Err(format!("no /healthz within {timeout:?}:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().unwrap().id()).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// SIGKILL (what `Child::kill` sends) and reap.
    fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A graceful stop, which must exit successfully within 30 s.
    fn sigterm_and_wait(&mut self) {
        let mut child = self.child.take().unwrap();
        // The child is not reaped yet, so its pid is still its own.
        assert!(signal(child.id(), "TERM"), "SIGTERM to build-service");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "build-service exited {status}");
                return;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("build-service ignored SIGTERM for 30 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// A process as `/proc/<pid>/stat` described it.
#[derive(Debug, Clone)]
struct Proc {
    pid: i32,
    ppid: i32,
    pgid: i32,
    comm: String,
    start_time: u64,
}

impl Proc {
    fn read(pid: i32) -> Option<(Self, char)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let state = fields.first()?.chars().next()?;
        Some((
            Self {
                pid,
                ppid: fields.get(1)?.parse().ok()?,
                pgid: fields.get(2)?.parse().ok()?,
                comm,
                // Field 22 of stat(5); fields[0] is field 3.
                start_time: fields.get(19)?.parse().ok()?,
            },
            state,
        ))
    }

    /// Every live (non-zombie) process.
    fn all() -> Vec<Self> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .filter_map(Self::read)
            .filter(|(_, state)| *state != 'Z')
            .map(|(process, _)| process)
            .collect()
    }
}

/// The live children of `parent`.
fn children(parent: i32) -> Vec<Proc> {
    Proc::all()
        .into_iter()
        .filter(|process| process.ppid == parent)
        .collect()
}

fn describe(processes: &[Proc]) -> String {
    processes
        .iter()
        .map(|process| format!("{}[{}] ppid {}", process.comm, process.pid, process.ppid))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The process group of the first process's build, led by its `unshare`. Dropping it kills, by pid,
/// whatever of it still runs (the leader's `--kill-child` and pid namespace take the rest along).
struct BuildGroup(Proc);

impl BuildGroup {
    /// Live members: same group id, started no earlier than the leader (so never a later group that
    /// reused the id).
    fn members(&self) -> Vec<Proc> {
        Proc::all()
            .into_iter()
            .filter(|process| process.pgid == self.0.pid && process.start_time >= self.0.start_time)
            .collect()
    }
}

impl Drop for BuildGroup {
    fn drop(&mut self) {
        for process in self.members() {
            let _ = signal(process.pid, "KILL");
        }
    }
}

/// Events relative to the kill, printed with the result.
struct Timeline {
    origin: Instant,
    events: Vec<(Duration, String)>,
}

impl Timeline {
    fn new(origin: Instant) -> Self {
        Self {
            origin,
            events: Vec::new(),
        }
    }

    fn event(&mut self, what: String) {
        let at = self.origin.elapsed();
        eprintln!("[kill + {:>6.1}s] {what}", at.as_secs_f64());
        self.events.push((at, what));
    }
}

impl std::fmt::Display for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "--- timeline (from the SIGKILL) ---")?;
        for (at, what) in &self.events {
            writeln!(f, "kill + {:>6.1}s  {what}", at.as_secs_f64())?;
        }
        Ok(())
    }
}

/// Sends `SIG<name>` to one pid with kill(1) (the crate forbids `unsafe`).
fn signal(pid: impl std::fmt::Display, name: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|status| status.success())
}

fn is_terminal(status: &Value) -> bool {
    matches!(
        status["status"].as_str(),
        Some("done" | "error" | "timed_out")
    )
}

fn last_line(text: &str) -> String {
    text.lines().last().unwrap_or_default().to_owned()
}

fn list(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}
