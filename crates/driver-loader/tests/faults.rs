//! Fault behaviour of the real `driver-loader` binary against loopback peers: an artifact store that is
//! down then up, a store without the artifact plus a build service (the two endpoints the loader uses,
//! answering in the service's documented shapes) that finishes, fails or times out, truncated and
//! tampered downloads, unsigned packages, the cache, and the full check of a package's modules in a dry
//! run. Packages are real .debs written by the packaging crate, signed, with their provenance, by the
//! integrity crate as the service signs them. (Provenance and keyring refusals: tests/trust.rs.)

mod common;

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use build_api::{BuildAccepted, BuildRequest, BuildState, BuildStatus};
use common::*;

const LIMIT: Duration = Duration::from_secs(90);

fn fetch_cmd(host: &FakeHost, server: &str, keys: &Keys) -> std::process::Command {
    let mut cmd = host.loader(&format!("{server}/releases/download"));
    trust_args(&mut cmd, &keys.public_key_file);
    cmd.arg("fetch");
    cmd
}

#[test]
fn artifact_server_down_then_up_is_retried_until_it_answers() {
    let keys = Keys::generate();
    let artifact = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    // Reserve a loopback port, then leave it closed so the first attempts are refused.
    let addr = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let host = FakeHost::new(RELEASE);
    let mut cmd = host.loader(&format!("http://{addr}/releases/download"));
    trust_args(&mut cmd, &keys.public_key_file);
    cmd.arg("fetch");
    let loader = std::thread::spawn(move || run_with_timeout(cmd, LIMIT));
    std::thread::sleep(Duration::from_millis(1500));
    let served = artifact.clone();
    let server = TestServer::start_at(addr, move |r| {
        served.answer(r).unwrap_or_else(Response::not_found)
    });
    let out = loader.join().expect("loader thread");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("retrying"),
        "the first attempts must have failed: {}",
        stderr(&out)
    );
    let cached = stdout(&out).trim().to_owned();
    assert_eq!(
        std::fs::read(&cached).expect("cached package"),
        artifact.package
    );
    drop(server);
}

#[test]
fn a_body_cut_short_is_retried_and_a_truncated_file_is_caught_by_the_digest() {
    let keys = Keys::generate();
    let artifact = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    // First: the connection drops mid-body once (Content-Length promises more); the retry succeeds.
    let cuts = Arc::new(AtomicUsize::new(0));
    let served = artifact.clone();
    let counter = cuts.clone();
    let server = TestServer::start(move |r| {
        let mut response = served.answer(r).unwrap_or_else(Response::not_found);
        if r.path().ends_with(".deb") && counter.fetch_add(1, Ordering::SeqCst) == 0 {
            response.truncate_to = Some(response.body.len() / 2);
        }
        response
    });
    let host = FakeHost::new(RELEASE);
    let out = run_with_timeout(fetch_cmd(&host, &server.url(), &keys), LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        cuts.load(Ordering::SeqCst),
        2,
        "one cut attempt, one good one"
    );

    // Then: the store itself serves a truncated file (consistent length): only the digest can tell.
    let mut truncated = artifact.clone();
    truncated.package.truncate(artifact.package.len() - 100);
    let server =
        TestServer::start(move |r| truncated.answer(r).unwrap_or_else(Response::not_found));
    let host = FakeHost::new(RELEASE);
    let out = run_with_timeout(fetch_cmd(&host, &server.url(), &keys), LIMIT);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("SHA-256 mismatch"),
        "{}",
        stderr(&out)
    );
    assert_no_package_cached(&host);
}

fn assert_no_package_cached(host: &FakeHost) {
    let dir = host.cache().join(identity(RELEASE).cache_key());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "nothing may stay in the cache: {leftovers:?}"
    );
}

#[test]
fn a_tampered_package_is_refused_by_the_signature_even_with_a_matching_digest() {
    let keys = Keys::generate();
    let mut artifact = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    let last = artifact.package.len() - 1;
    artifact.package[last] ^= 0x55;
    // Whoever can replace the package can replace its digest too.
    artifact.digest = digest_text(&artifact.package, &artifact.file_name);
    let server = TestServer::start(move |r| artifact.answer(r).unwrap_or_else(Response::not_found));
    let host = FakeHost::new(RELEASE);
    let out = run_with_timeout(fetch_cmd(&host, &server.url(), &keys), LIMIT);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "the signature by key {} does not verify",
            keys.id()
        )),
        "{}",
        stderr(&out)
    );
    assert_no_package_cached(&host);
}

#[test]
fn a_package_signed_by_another_key_or_for_another_file_is_refused() {
    let keys = Keys::generate();
    let other_keys = Keys::generate();
    let artifact = Artifact::signed(&other_keys, &identity(RELEASE), VERMAGIC_47);
    let server = TestServer::start(move |r| artifact.answer(r).unwrap_or_else(Response::not_found));
    let host = FakeHost::new(RELEASE);
    let out = run_with_timeout(fetch_cmd(&host, &server.url(), &keys), LIMIT);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "signed by key {}, which is not trusted",
            other_keys.id()
        )),
        "{}",
        stderr(&out)
    );
    assert_no_package_cached(&host);

    // A validly signed package of another identity served under this identity's name.
    let other = Artifact::signed(
        &keys,
        &identity("6.1.0-50-amd64"),
        "6.1.0-50-amd64 SMP preempt mod_unload modversions ",
    );
    let mut substituted = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    substituted.package = other.package.clone();
    substituted.signature = other.signature.clone();
    substituted.digest = digest_text(&substituted.package, &substituted.file_name);
    let server =
        TestServer::start(move |r| substituted.answer(r).unwrap_or_else(Response::not_found));
    let host = FakeHost::new(RELEASE);
    let out = run_with_timeout(fetch_cmd(&host, &server.url(), &keys), LIMIT);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("signature was made for file"),
        "{}",
        stderr(&out)
    );
    assert_no_package_cached(&host);
}

#[test]
fn only_the_insecure_mode_needs_the_unsigned_digest_file() {
    let keys = Keys::generate();
    let artifact = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    let served = artifact.clone();
    let server = TestServer::start(move |r| {
        if r.path().ends_with(".sha256") {
            return Response::not_found();
        }
        served.answer(r).unwrap_or_else(Response::not_found)
    });
    // With trusted keys the signed provenance binds the digest: nothing is missing.
    let host = FakeHost::new(RELEASE);
    let out = run_with_timeout(fetch_cmd(&host, &server.url(), &keys), LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let cached = std::path::PathBuf::from(stdout(&out).trim());
    let digest = std::fs::read_to_string(format!("{}.sha256", cached.display()))
        .expect("the cache keeps the verified package's digest file");
    assert_eq!(digest, artifact.digest, "as the store would publish it");

    // Without keys the digest file is the only check, and without it nothing is loaded.
    let host = FakeHost::new(RELEASE);
    let mut cmd = host.loader(&format!("{}/releases/download", server.url()));
    cmd.arg("--insecure-skip-signature").arg("fetch");
    let out = run_with_timeout(cmd, LIMIT);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("no digest file"), "{}", stderr(&out));
    assert_no_package_cached(&host);
}

#[test]
fn an_unsigned_package_is_refused_unless_explicitly_allowed() {
    let keys = Keys::generate();
    let mut artifact = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    artifact.signature = None;
    let served = artifact.clone();
    let server = TestServer::start(move |r| served.answer(r).unwrap_or_else(Response::not_found));
    let host = FakeHost::new(RELEASE);
    let out = run_with_timeout(fetch_cmd(&host, &server.url(), &keys), LIMIT);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("unsigned"), "{}", stderr(&out));
    assert_no_package_cached(&host);

    // Nothing configured at all: refused before any download.
    let requests = server.requests().len();
    let mut cmd = host.loader(&format!("{}/releases/download", server.url()));
    cmd.arg("fetch");
    let out = run_with_timeout(cmd, LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no trusted key configured")
            && stderr(&out).contains("--insecure-skip-signature"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.requests().len(), requests, "nothing was downloaded");

    let mut cmd = host.loader(&format!("{}/releases/download", server.url()));
    cmd.arg("--insecure-skip-signature").arg("fetch");
    let out = run_with_timeout(cmd, LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("NOT checking the package signature"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_cached_package_is_verified_again_and_reused_without_any_request() {
    let keys = Keys::generate();
    let artifact = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    let server = serve_artifact(artifact.clone());
    let host = FakeHost::new(RELEASE);
    let out = run_with_timeout(fetch_cmd(&host, &server.url(), &keys), LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = server.requests().len();
    assert_eq!(
        before, 3,
        "package, signature and provenance: with trusted keys the unsigned digest file is not asked for"
    );
    assert!(
        server
            .requests()
            .iter()
            .all(|r| !r.path().ends_with(".sha256")),
        "{:?}",
        server.requests()
    );
    let cache = host.cache().join(identity(RELEASE).cache_key());
    let provenance = cache.join(identity(RELEASE).provenance_file_name(&driver()));
    assert_eq!(
        std::fs::read_to_string(&provenance).expect("cached provenance"),
        artifact.provenance.clone().expect("served")
    );
    let out = run_with_timeout(fetch_cmd(&host, &server.url(), &keys), LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        server.requests().len(),
        before,
        "the second run must not download"
    );
    assert!(
        stderr(&out).contains("using the cached package, verified again")
            && stderr(&out).contains("package verified: digest, signature and provenance"),
        "{}",
        stderr(&out)
    );

    // A cached file that no longer verifies is replaced by a fresh download.
    let cached = stdout(&out).trim().to_owned();
    std::fs::write(&cached, b"corrupted").expect("corrupt the cache");
    let out = run_with_timeout(fetch_cmd(&host, &server.url(), &keys), LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.requests().len(), before + 3);

    // So is a cached provenance that was altered: the cache is never trusted blindly.
    let text = std::fs::read_to_string(&provenance).expect("cached provenance");
    let altered = tampered_provenance(&text, |statement| {
        statement.predicate.run_details.metadata.invocation_id = "b-43".to_owned();
    });
    std::fs::write(&provenance, altered).expect("alter");
    let out = run_with_timeout(fetch_cmd(&host, &server.url(), &keys), LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cached package does not verify"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.requests().len(), before + 6);
    assert_eq!(
        std::fs::read_to_string(&provenance).expect("cached provenance"),
        text
    );
}

/// The id the fake build service gives its one build.
const BUILD_ID: &str = "b-42";

/// A `GET /status` answer of the fake build service, in the service's own type.
fn status(state: BuildState, error: Option<&str>) -> BuildStatus {
    let at = "2026-01-02T03:04:05Z".to_owned();
    BuildStatus {
        build_id: BUILD_ID.to_owned(),
        cache_key: identity(RELEASE).cache_key(),
        created_at: at.clone(),
        deadline_at: "2026-01-02T03:24:05Z".to_owned(),
        dispatch_attempts: 1,
        download_url: None,
        driver_name: driver().to_string(),
        error: error.map(str::to_owned),
        finished_at: state.is_terminal().then(|| at.clone()),
        log_url: None,
        request: BuildRequest {
            architecture: "x86_64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: Some("12".to_owned()),
            driver_version: VERSION.to_owned(),
            kernel_version: RELEASE.to_owned(),
        },
        run_id: None,
        run_url: None,
        source_commit: None,
        started_at: (state != BuildState::Queued).then(|| at.clone()),
        status: state,
        updated_at: at,
    }
}

fn json<T: serde::Serialize>(code: u16, body: &T) -> Response {
    Response::json(code, serde_json::to_value(body).expect("serializable"))
}

/// The artifact store and the build service on one loopback server: the package is 404 until the build
/// "finishes"; `/status` answers `statuses` in turn (the last repeats).
fn build_service(
    artifact: Artifact,
    statuses: Vec<BuildStatus>,
) -> (TestServer, Arc<Mutex<Vec<String>>>) {
    let published = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let polls = Arc::new(AtomicUsize::new(0));
    let seen = bodies.clone();
    let server = TestServer::start(move |r| {
        match (r.method.as_str(), r.path()) {
            ("POST", "/build") => {
                seen.lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&r.body).into_owned());
                json(202, &BuildAccepted::new(BUILD_ID))
            }
            ("GET", path) if path == build_api::status_path(BUILD_ID) => {
                assert!(
                    r.target.contains("wait="),
                    "the loader long-polls: {}",
                    r.target
                );
                let n = polls.fetch_add(1, Ordering::SeqCst);
                let answer = statuses[n.min(statuses.len() - 1)].clone();
                if answer.status == BuildState::InProgress {
                    // A real long poll holds the request while nothing changes.
                    std::thread::sleep(Duration::from_millis(300));
                }
                if answer.status == BuildState::Done {
                    published.store(1, Ordering::SeqCst);
                }
                json(200, &answer)
            }
            _ if published.load(Ordering::SeqCst) == 1 => {
                artifact.answer(r).unwrap_or_else(Response::not_found)
            }
            _ => Response::not_found(),
        }
    });
    (server, bodies)
}

fn build_cmd(host: &FakeHost, server: &TestServer, keys: &Keys) -> std::process::Command {
    let mut cmd = host.loader(&format!("{}/releases/download", server.url()));
    trust_args(&mut cmd, &keys.public_key_file);
    cmd.arg("--build-service-url")
        .arg(server.url())
        .args(["--build-wait-seconds", "1"])
        .arg("fetch");
    cmd
}

#[test]
fn a_missing_artifact_is_built_on_request_then_downloaded() {
    let keys = Keys::generate();
    let artifact = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    let (server, bodies) = build_service(
        artifact.clone(),
        vec![
            status(BuildState::Queued, None),
            status(BuildState::InProgress, None),
            status(BuildState::Done, None),
        ],
    );
    let host = FakeHost::new(RELEASE);
    let out = run_with_timeout(build_cmd(&host, &server, &keys), LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let bodies = bodies.lock().expect("lock").clone();
    assert_eq!(bodies.len(), 1, "exactly one build request");
    // Exactly the five identity fields, in the service's own request type.
    let body: serde_json::Value = serde_json::from_str(&bodies[0]).expect("json body");
    let expected = serde_json::to_value(status(BuildState::Queued, None).request).expect("json");
    assert_eq!(body, expected);
    let cached = stdout(&out).trim().to_owned();
    assert_eq!(std::fs::read(cached).expect("cached"), artifact.package);
}

#[test]
fn a_failed_build_ends_with_exit_code_5_and_the_reason() {
    let keys = Keys::generate();
    let artifact = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    let (server, _) = build_service(
        artifact,
        vec![
            status(BuildState::InProgress, None),
            status(
                BuildState::Error,
                Some("kbuild failed: example_driver.c:12: error"),
            ),
        ],
    );
    let host = FakeHost::new(RELEASE);
    let out = run_with_timeout(build_cmd(&host, &server, &keys), LIMIT);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("kbuild failed: example_driver.c:12"),
        "{}",
        stderr(&out)
    );
    assert_no_package_cached(&host);
}

#[test]
fn a_timed_out_build_ends_with_exit_code_5() {
    let keys = Keys::generate();
    let artifact = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    let (server, _) = build_service(
        artifact,
        vec![status(BuildState::TimedOut, Some("no result after 900 s"))],
    );
    let host = FakeHost::new(RELEASE);
    let out = run_with_timeout(build_cmd(&host, &server, &keys), LIMIT);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("timed_out") && stderr(&out).contains("900 s"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_artifact_without_build_service_is_exit_code_4() {
    let keys = Keys::generate();
    let server = TestServer::start(|_| Response::not_found());
    let host = FakeHost::new(RELEASE);
    let out = run_with_timeout(fetch_cmd(&host, &server.url(), &keys), LIMIT);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));
}

#[test]
fn the_build_wait_respects_the_overall_deadline() {
    let keys = Keys::generate();
    let artifact = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    let (server, _) = build_service(artifact, vec![status(BuildState::InProgress, None)]);
    let host = FakeHost::new(RELEASE);
    let mut cmd = build_cmd(&host, &server, &keys);
    cmd.args(["--deadline-seconds", "3"]);
    let started = std::time::Instant::now();
    let out = run_with_timeout(cmd, LIMIT);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("deadline"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn dry_run_checks_the_modules_against_the_running_kernel() {
    let keys = Keys::generate();
    // Package built for 6.1.0-47, host running 6.1.0-47: would load.
    let artifact = Artifact::signed(&keys, &identity(RELEASE), VERMAGIC_47);
    let server = TestServer::start(move |r| artifact.answer(r).unwrap_or_else(Response::not_found));
    let host = FakeHost::new(RELEASE);
    let mut cmd = host.loader(&format!("{}/releases/download", server.url()));
    cmd.arg("--public-key")
        .arg(keys.public_key_line())
        .args(["--expected-source-repository", SOURCE_REPOSITORY])
        .args(["--allowed-builder", BUILDER_ID])
        .args(["--mode", "container", "--dry-run", "run"]);
    let out = run_with_timeout(cmd, LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("example_driver: would load"),
        "{}",
        stdout(&out)
    );

    // A signed package whose module says another kernel (a build mix-up): refused before loading.
    let wrong = Artifact::signed(
        &keys,
        &identity(RELEASE),
        "6.1.0-50-amd64 SMP preempt mod_unload modversions ",
    );
    let server = TestServer::start(move |r| wrong.answer(r).unwrap_or_else(Response::not_found));
    let host = FakeHost::new(RELEASE);
    let mut cmd = host.loader(&format!("{}/releases/download", server.url()));
    cmd.arg("--public-key")
        .arg(keys.public_key_line())
        .args(["--expected-source-repository", SOURCE_REPOSITORY])
        .args(["--allowed-builder", BUILDER_ID])
        .args(["--mode", "container", "--dry-run", "run"]);
    let out = run_with_timeout(cmd, LIMIT);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("built for kernel \"6.1.0-50-amd64\"")
            && stderr(&out).contains("running kernel is \"6.1.0-47-amd64\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn identify_prints_identity_file_name_and_url() {
    let host = FakeHost::new("6.12.43+deb12-amd64");
    let mut cmd = host.loader("http://127.0.0.1:9/releases/download");
    cmd.arg("identify");
    let out = run_with_timeout(cmd, LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let id = identity("6.12.43+deb12-amd64");
    assert!(text.contains(&id.package_file_name(&driver())), "{text}");
    assert!(
        text.contains(&format!(
            "http://127.0.0.1:9/releases/download/{}",
            kernel_id::ReleaseLayout::PerArtifact.package_path(&driver(), &id)
        )),
        "{text}"
    );
    assert!(
        text.contains("debian/12/x86_64/6.12.43+deb12-amd64/v0.1.2"),
        "{text}"
    );

    // An unsupported distribution is exit code 3.
    std::fs::write(
        host.dir.path().join("os-release"),
        "ID=gentoo\nVERSION_ID=2.15\n",
    )
    .expect("write");
    let mut cmd = host.loader("http://127.0.0.1:9/releases/download");
    cmd.arg("identify");
    let out = run_with_timeout(cmd, LIMIT);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}
