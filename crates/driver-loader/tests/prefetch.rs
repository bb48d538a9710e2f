//! Prefetching the driver of an installed, not yet booted kernel, the offline reboot into it, and the
//! node report, with the real `driver-loader` binary against a loopback peer that is both the artifact
//! store and the build service (answering in `build_api`'s types, `POST /report` with 204). The host is
//! a fake root (os-release, proc, sys, modules tree, boot directory, machine-id) as in tests/faults.rs;
//! runs are container-mode dry runs, which do everything but touch the kernel.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use build_api::{
    ApiErrorBody, ArtifactOrigin, BuildAccepted, BuildRequest, BuildState, BuildStatus, NodeReport,
    RunOutcome,
};
use common::*;

const LIMIT: Duration = Duration::from_secs(90);
/// Installed on the host besides the running `RELEASE` (6.1.0-47-amd64).
const PENDING: &str = "6.1.0-50-amd64";
const VERMAGIC_50: &str = "6.1.0-50-amd64 SMP preempt mod_unload modversions ";
const MACHINE_ID: &str = "6b0f4a54c1b24b7e9f3e0d6a2c1e8f70";
const TOKEN: &str = "report-token-3f9a1c";
const BUILD_ID: &str = "b-50";

/// What the node id of [`MACHINE_ID`] must be, computed here independently of the loader.
fn expected_node_id() -> String {
    integrity::sha256_bytes(format!("kdriver-node-id:{MACHINE_ID}").as_bytes()).to_hex()
}

/// A `GET /status` answer for the pending kernel's build.
fn status(state: BuildState) -> BuildStatus {
    let at = "2026-01-02T03:04:05Z".to_owned();
    let identity = identity(PENDING);
    BuildStatus {
        build_id: BUILD_ID.to_owned(),
        cache_key: identity.cache_key(),
        created_at: at.clone(),
        deadline_at: "2026-01-02T03:24:05Z".to_owned(),
        dispatch_attempts: 1,
        download_url: None,
        driver_name: driver().to_string(),
        error: None,
        finished_at: state.is_terminal().then(|| at.clone()),
        log_url: None,
        request: BuildRequest::from(&identity),
        run_id: None,
        run_url: None,
        source_commit: None,
        started_at: Some(at.clone()),
        status: state,
        updated_at: at,
    }
}

fn json<T: serde::Serialize>(code: u16, body: &T) -> Response {
    Response::json(code, serde_json::to_value(body).expect("serializable"))
}

/// The artifact store and the build service on one loopback server. The running kernel's package is
/// published; the pending kernel's appears once its build is done (one poll in progress, then done),
/// or, with `refuse`, every build request is refused with 422. Reports and build requests are kept.
struct Service {
    server: TestServer,
    reports: Arc<Mutex<Vec<NodeReport>>>,
    builds: Arc<Mutex<Vec<BuildRequest>>>,
}

impl Service {
    fn start(running: Artifact, pending: Artifact, refuse: bool) -> Service {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let builds = Arc::new(Mutex::new(Vec::new()));
        let published = Arc::new(AtomicBool::new(false));
        let polls = Arc::new(AtomicUsize::new(0));
        let (seen_reports, seen_builds) = (reports.clone(), builds.clone());
        let server = TestServer::start(move |r| match (r.method.as_str(), r.path()) {
            ("POST", "/report") => {
                if r.headers.get("authorization").map(String::as_str)
                    != Some(&format!("Bearer {TOKEN}"))
                {
                    return Response::json(401, serde_json::json!({"error": "no token"}));
                }
                let report: NodeReport = serde_json::from_slice(&r.body).expect("a NodeReport");
                seen_reports.lock().expect("lock").push(report);
                Response::bytes(204, Vec::new())
            }
            ("POST", "/build") => {
                let request: BuildRequest = serde_json::from_slice(&r.body).expect("a request");
                seen_builds.lock().expect("lock").push(request);
                if refuse {
                    return json(
                        422,
                        &ApiErrorBody {
                            error: "refused".to_owned(),
                            field: Some("driver_version".to_owned()),
                            rule: "v0.1.2 is not a tag of file:///driver".to_owned(),
                        },
                    );
                }
                json(202, &BuildAccepted::new(BUILD_ID))
            }
            ("GET", path) if path == build_api::status_path(BUILD_ID) => {
                if polls.fetch_add(1, Ordering::SeqCst) == 0 {
                    std::thread::sleep(Duration::from_millis(300));
                    return json(200, &status(BuildState::InProgress));
                }
                published.store(true, Ordering::SeqCst);
                json(200, &status(BuildState::Done))
            }
            _ => running
                .answer(r)
                .or_else(|| {
                    published
                        .load(Ordering::SeqCst)
                        .then(|| pending.answer(r))
                        .flatten()
                })
                .unwrap_or_else(Response::not_found),
        });
        Service {
            server,
            reports,
            builds,
        }
    }

    fn reports(&self) -> Vec<NodeReport> {
        self.reports.lock().expect("lock").clone()
    }

    fn builds(&self) -> Vec<BuildRequest> {
        self.builds.lock().expect("lock").clone()
    }
}

/// A host running `RELEASE` with `PENDING` installed (modules tree and image), plus kernels that
/// are not pending: one without an image, one of another architecture; its machine-id beside
/// os-release, where the loader derives it from.
fn host() -> FakeHost {
    let host = FakeHost::new(RELEASE);
    let root = host.dir.path();
    std::fs::create_dir_all(root.join("boot")).expect("mkdir");
    for (release, image) in [
        (PENDING, true),
        ("6.1.0-30-amd64", false),
        ("6.1.0-50-arm64", true),
    ] {
        std::fs::create_dir_all(root.join("lib/modules").join(release)).expect("mkdir");
        if image {
            std::fs::write(root.join(format!("boot/vmlinuz-{release}")), b"image").expect("write");
        }
    }
    std::fs::write(root.join("machine-id"), format!("{MACHINE_ID}\n")).expect("machine-id");
    std::fs::write(root.join("token"), format!("{TOKEN}\n")).expect("token");
    host
}

/// The loader with trust, the build service (and its token) and the boot directory configured.
fn loader(
    host: &FakeHost,
    artifact_base: &str,
    service_url: &str,
    keys: &Keys,
) -> std::process::Command {
    let mut cmd = host.loader(&format!("{artifact_base}/releases/download"));
    trust_args(&mut cmd, &keys.public_key_file);
    cmd.arg("--build-service-url")
        .arg(service_url)
        .arg("--build-service-token-file")
        .arg(host.dir.path().join("token"))
        .args(["--build-wait-seconds", "1"])
        .arg("--boot-dir")
        .arg(host.dir.path().join("boot"));
    cmd
}

fn dry_run(mut cmd: std::process::Command) -> std::process::Command {
    cmd.args(["--mode", "container", "--dry-run", "run"]);
    cmd
}

/// A loopback address nothing listens on.
fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

fn cached_package(host: &FakeHost, release: &str) -> PathBuf {
    let id = identity(release);
    host.cache()
        .join(id.cache_key())
        .join(id.package_file_name(&driver()))
}

#[test]
fn a_prefetched_kernel_loads_from_the_cache_after_the_reboot_without_the_network() {
    let keys = Keys::generate();
    let running = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    let pending = Artifact::signed(&keys, &identity(PENDING), VERMAGIC_50);
    let service = Service::start(running.clone(), pending.clone(), false);
    let host = host();
    let url = service.server.url();

    // Prefetch: the pending kernel's package is not published, so it is built, waited for,
    // downloaded, verified and cached. Nothing is reported for a prefetch.
    let mut cmd = loader(&host, &url, &url, &keys);
    cmd.arg("prefetch");
    let out = run_with_timeout(cmd, LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let cached = cached_package(&host, PENDING);
    assert_eq!(
        stdout(&out),
        format!("prefetched {PENDING}: {} (build)\n", cached.display()),
        "one line for the one pending kernel; stderr:\n{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&cached).expect("cached"), pending.package);
    let cache_dir = cached.parent().expect("identity directory");
    for sidecar in [".sha256", ".minisig", ".intoto.jsonl"] {
        assert!(
            cache_dir
                .join(format!("{}{sidecar}", pending.file_name))
                .exists(),
            "{sidecar} cached beside the package"
        );
    }
    assert_eq!(
        service.builds(),
        vec![BuildRequest::from(&identity(PENDING))],
        "exactly one build, for the pending kernel"
    );
    let text = stderr(&out);
    assert!(
        text.contains("6.1.0-50-arm64") && text.contains("installed kernel skipped"),
        "the arm64 kernel is skipped with a reason: {text}"
    );
    assert!(!text.contains(TOKEN), "the token is never logged");
    assert!(service.reports().is_empty(), "prefetch does not report");

    // A run on the running kernel: loads (dry run) what the store has, and reports the pending kernel.
    let out = run_with_timeout(dry_run(loader(&host, &url, &url, &keys)), LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("example_driver: would load"),
        "{}",
        stdout(&out)
    );
    assert!(!stderr(&out).contains(TOKEN), "the token is never logged");
    let reports = service.reports();
    assert_eq!(reports.len(), 1, "one report per run");
    let first = &reports[0];
    assert_eq!(first.node_id, expected_node_id());
    assert!(
        !serde_json::to_string(first)
            .expect("json")
            .contains(MACHINE_ID)
    );
    assert_eq!(
        (
            first.kernel_version.as_str(),
            first.architecture.as_str(),
            first.distribution.as_str(),
            first.distro_version.as_str(),
            first.driver_name.as_str(),
            first.driver_version.as_str(),
        ),
        (RELEASE, "x86_64", "debian", "12", DRIVER, VERSION)
    );
    assert_eq!((first.exit_code, first.outcome), (0, RunOutcome::Loaded));
    assert_eq!(first.artifact_origin, Some(ArtifactOrigin::Store));
    assert_eq!(first.pending_kernels, vec![PENDING.to_owned()]);
    assert_eq!(first.timings.build_wait_ms, None);
    assert!(
        first.timings.total_ms >= first.timings.fetch_ms,
        "{:?}",
        first.timings
    );

    // The reboot into the pending kernel: the old one is now installed and not running. The artifact
    // store is a closed port; the service is up only to receive the report, and nothing else may
    // reach it.
    let root = host.dir.path();
    std::fs::write(
        root.join("proc/sys/kernel/osrelease"),
        format!("{PENDING}\n"),
    )
    .expect("reboot");
    std::fs::write(root.join(format!("boot/vmlinuz-{RELEASE}")), b"image").expect("write");
    let before = service.server.requests().len();
    let out = run_with_timeout(dry_run(loader(&host, &closed_port(), &url, &keys)), LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("example_driver: would load"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("using the cached package, verified again")
            && !stderr(&out).contains("retrying"),
        "loaded from the verified cache without a request: {}",
        stderr(&out)
    );
    let after: Vec<_> = service.server.requests()[before..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.path()))
        .collect();
    assert_eq!(
        after,
        vec!["POST /report"],
        "only the report reached the service"
    );
    let reports = service.reports();
    let rebooted = reports.last().expect("the reboot's report");
    assert_eq!(rebooted.kernel_version, PENDING);
    assert_eq!(rebooted.artifact_origin, Some(ArtifactOrigin::Cache));
    assert_eq!(
        (rebooted.exit_code, rebooted.outcome),
        (0, RunOutcome::Loaded)
    );
    assert_eq!(rebooted.pending_kernels, vec![RELEASE.to_owned()]);
    assert_eq!(rebooted.timings.build_wait_ms, None);
    assert_eq!(rebooted.node_id, expected_node_id(), "the same machine");

    // With the service down too (no network at all), the run still loads from the cache; the report
    // fails at once, as a warning, and changes nothing.
    let service_url = url.clone();
    drop(service);
    let started = Instant::now();
    let out = run_with_timeout(
        dry_run(loader(&host, &closed_port(), &service_url, &keys)),
        LIMIT,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("example_driver: would load"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("run report not sent (the run's outcome is unchanged)"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the report is bounded: {:?}",
        started.elapsed()
    );
}

#[test]
fn prefetch_checks_the_package_against_the_pending_kernel_not_the_running_one() {
    let keys = Keys::generate();
    let running = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    // A build mix-up: the pending kernel's package carries modules for the running kernel.
    let mixed_up = Artifact::signed(&keys, &identity(PENDING), VERMAGIC_47);
    let service = Service::start(running, mixed_up, false);
    let host = host();
    let url = service.server.url();
    let mut cmd = loader(&host, &url, &url, &keys);
    cmd.args(["prefetch", "--kernel", PENDING]);
    let out = run_with_timeout(cmd, LIMIT);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let line = stdout(&out);
    assert!(
        line.starts_with(&format!(
            "prefetch {PENDING} failed: module example_driver: built for kernel \"{RELEASE}\""
        )) && line.contains(&format!(
            "but the pending (installed, not running) kernel is \"{PENDING}\""
        )),
        "{line}"
    );
    assert_eq!(line.lines().count(), 1, "{line}");

    // --kernel must be installed, and be a kernel release at all.
    let mut cmd = loader(&host, &url, &url, &keys);
    cmd.args(["prefetch", "--kernel", "6.1.0-99-amd64"]);
    let out = run_with_timeout(cmd, LIMIT);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("kernel not installed"),
        "{}",
        stderr(&out)
    );
    let mut cmd = loader(&host, &url, &url, &keys);
    cmd.args(["prefetch", "--kernel", "../../etc"]);
    let out = run_with_timeout(cmd, LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--kernel"), "{}", stderr(&out));
    assert!(service.reports().is_empty());
}

#[test]
fn a_refused_run_is_reported_and_reporting_can_be_turned_off() {
    let keys = Keys::generate();
    // Nothing published for either kernel, and the service refuses every build.
    let mut unpublished = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    unpublished.package_path = "nowhere".to_owned();
    let pending = Artifact::signed(&keys, &identity(PENDING), VERMAGIC_50);
    let service = Service::start(unpublished, pending, true);
    let host = host();
    let url = service.server.url();

    let mut cmd = loader(&host, &url, &url, &keys);
    cmd.arg("prefetch");
    let out = run_with_timeout(cmd, LIMIT);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!(
            "prefetch {PENDING} failed: the build service refused to build it (HTTP 422): driver_version"
        )),
        "{}",
        stdout(&out)
    );

    let out = run_with_timeout(dry_run(loader(&host, &url, &url, &keys)), LIMIT);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let reports = service.reports();
    assert_eq!(reports.len(), 1, "a failed run is reported too");
    let report = &reports[0];
    assert_eq!((report.exit_code, report.outcome), (5, RunOutcome::Refused));
    assert_eq!(report.artifact_origin, None, "no package was obtained");
    assert_eq!(report.kernel_version, RELEASE);
    assert_eq!(report.pending_kernels, vec![PENDING.to_owned()]);

    // Off with the flag, and with the environment.
    let mut cmd = loader(&host, &url, &url, &keys);
    cmd.arg("--no-report");
    let out = run_with_timeout(dry_run(cmd), LIMIT);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let mut cmd = dry_run(loader(&host, &url, &url, &keys));
    cmd.env("DRIVER_LOADER_REPORT", "false");
    let out = run_with_timeout(cmd, LIMIT);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(service.reports().len(), 1, "nothing more was reported");

    // No machine-id: no report, and the log says why.
    std::fs::remove_file(host.dir.path().join("machine-id")).expect("remove");
    let out = run_with_timeout(dry_run(loader(&host, &url, &url, &keys)), LIMIT);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("run not reported") && stderr(&out).contains("no machine-id found"),
        "{}",
        stderr(&out)
    );
    assert_eq!(service.reports().len(), 1);
}

#[test]
fn a_report_the_service_never_answers_holds_the_run_up_two_seconds_at_most() {
    let keys = Keys::generate();
    // Nothing published, no build possible (404 everywhere), and /report that hangs.
    let server = TestServer::start(|r| {
        if r.path() == "/report" {
            std::thread::sleep(Duration::from_secs(20));
            return Response::bytes(204, Vec::new());
        }
        Response::not_found()
    });
    let host = host();
    let started = Instant::now();
    let out = run_with_timeout(
        dry_run(loader(&host, &server.url(), &server.url(), &keys)),
        LIMIT,
    );
    let elapsed = started.elapsed();
    assert_eq!(
        out.status.code(),
        Some(4),
        "the run's own outcome: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("run report not sent (the run's outcome is unchanged)"),
        "{}",
        stderr(&out)
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "the report waited at most its 2 s timeout: {elapsed:?}"
    );
}

/// deploy/kernel/postinst.d/zz-driver-loader.
fn hook_path() -> PathBuf {
    testkit::workspace_root().join("deploy/kernel/postinst.d/zz-driver-loader")
}

#[test]
fn the_kernel_hook_is_posix_sh_that_shellcheck_accepts() {
    let shellcheck = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("shellcheck"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!("shellcheck is not on PATH; install it with: apt-get install shellcheck")
        });
    let out = std::process::Command::new(shellcheck)
        .args(["--shell=sh", "--severity=style"])
        .arg(hook_path())
        .output()
        .expect("shellcheck runs");
    assert!(
        out.status.success(),
        "shellcheck:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(hook_path()).expect("hook");
    assert!(text.starts_with("#!/bin/sh\n"), "a POSIX sh script");
    assert!(
        !text.lines().any(|line| line.trim_end().ends_with('&')),
        "the hook backgrounds nothing"
    );
}

/// The hook as Debian's kernel postinst runs it (`<hook> <version> <image>`), with the real loader,
/// `env_file` as its environment file and a `logger` that records what would go to syslog.
fn run_hook(
    host: &FakeHost,
    env_file: &std::path::Path,
    version: &str,
) -> (std::process::Output, String) {
    let bin = host.dir.path().join("fake-bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let syslog = host.dir.path().join("syslog");
    let logger = bin.join("logger");
    std::fs::write(
        &logger,
        format!("#!/bin/sh\necho \"$*\" >> '{}'\n", syslog.display()),
    )
    .expect("write logger");
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg(hook_path())
        .arg(version)
        .arg(host.dir.path().join(format!("boot/vmlinuz-{version}")))
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .env("DRIVER_LOADER_BIN", env!("CARGO_BIN_EXE_driver-loader"))
        .env("DRIVER_LOADER_ENV_FILE", env_file);
    let out = run_with_timeout(cmd, LIMIT);
    let logged = std::fs::read_to_string(&syslog).unwrap_or_default();
    (out, logged)
}

/// An environment file in systemd's format for `host` and `service_url`, with comments, quoted
/// values and a foreign variable, as an operator's /etc/default/driver-loader might be.
fn env_file(host: &FakeHost, service_url: &str, keys: &Keys) -> PathBuf {
    let root = host.dir.path();
    let text = format!(
        "# /etc/default/driver-loader\n\
         DRIVER_LOADER_DRIVER_NAME={DRIVER}\n\
         DRIVER_LOADER_DRIVER_VERSION=\"{VERSION}\"\n\
         DRIVER_LOADER_ARTIFACT_BASE_URL={service_url}/releases/download\n\
         DRIVER_LOADER_BUILD_SERVICE_URL={service_url}\n\
         DRIVER_LOADER_BUILD_SERVICE_TOKEN_FILE={token}\n\
         DRIVER_LOADER_BUILD_WAIT_SECONDS=1\n\
         DRIVER_LOADER_ATTEMPTS=2\n\
         DRIVER_LOADER_BACKOFF_MS=100\n\
         \n\
         DRIVER_LOADER_PUBLIC_KEY_FILE={key}\n\
         DRIVER_LOADER_EXPECTED_SOURCE_REPOSITORY='{SOURCE_REPOSITORY}'\n\
         DRIVER_LOADER_ALLOWED_BUILDERS={BUILDER_ID}\n\
         DRIVER_LOADER_OS_RELEASE={os}\n\
         DRIVER_LOADER_PROC_ROOT={proc}\n\
         DRIVER_LOADER_SYS_ROOT={sys}\n\
         DRIVER_LOADER_MODULES_ROOT={modules}\n\
         DRIVER_LOADER_CACHE_DIR={cache}\n\
         NOT_THE_LOADERS=1\n",
        token = root.join("token").display(),
        key = keys.public_key_file.display(),
        os = root.join("os-release").display(),
        proc = root.join("proc").display(),
        sys = root.join("sys").display(),
        modules = root.join("lib/modules").display(),
        cache = host.cache().display(),
    );
    let path = root.join("driver-loader.env");
    std::fs::write(&path, text).expect("write env file");
    path
}

#[test]
fn the_kernel_hook_prefetches_the_new_kernel_and_never_fails_the_install() {
    let keys = Keys::generate();
    let running = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    let pending = Artifact::signed(&keys, &identity(PENDING), VERMAGIC_50);
    let service = Service::start(running, pending.clone(), false);
    let host = host();
    let env = env_file(&host, &service.server.url(), &keys);

    let (out, logged) = run_hook(&host, &env, PENDING);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let cached = cached_package(&host, PENDING);
    assert_eq!(std::fs::read(&cached).expect("cached"), pending.package);
    assert!(
        stderr(&out).contains(&format!(
            "prefetched {PENDING}: {} (build)",
            cached.display()
        )),
        "the loader's line reaches the installer's stderr: {}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert!(
        logged.contains(&format!("kernel hook: kernel {PENDING}: driver prefetched")),
        "syslog: {logged}"
    );
    assert_eq!(service.builds().len(), 1);
    assert!(service.reports().is_empty(), "a prefetch does not report");

    // A kernel no package can be had for: the hook says so and still exits 0.
    std::fs::create_dir_all(host.dir.path().join("lib/modules/6.1.0-51-amd64")).expect("mkdir");
    drop(service);
    let (out, logged) = run_hook(&host, &env, "6.1.0-51-amd64");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("prefetch 6.1.0-51-amd64 failed:")
            && logged.contains("kernel 6.1.0-51-amd64: prefetch failed with exit code 4"),
        "stderr: {}\nsyslog: {logged}",
        stderr(&out)
    );

    // Turned off in the environment file, or not configured at all: nothing runs, exit 0.
    let mut text = std::fs::read_to_string(&env).expect("env");
    text.push_str("DRIVER_LOADER_KERNEL_HOOK=false\n");
    std::fs::write(&env, text).expect("write");
    let (out, logged) = run_hook(&host, &env, PENDING);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        logged.contains("disabled (DRIVER_LOADER_KERNEL_HOOK=false)"),
        "{logged}"
    );
    let (out, logged) = run_hook(&host, &host.dir.path().join("absent.env"), PENDING);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(logged.contains("absent.env is missing"), "{logged}");
}
