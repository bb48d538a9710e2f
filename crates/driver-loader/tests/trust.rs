//! What the real `driver-loader` binary trusts: a keyring of minisign keys (a keys directory, key
//! files, inline keys; rotation both ways), package signatures bound to their file, and the build
//! provenance beside every package, verified before anything is extracted. Every refusal is checked
//! for its exit code, the rule or statement field it names, and for nothing having been loaded: the
//! runs are `--mode container --dry-run run` against a fake host, which print each module they would
//! load, log the vermagic check right after extracting the package, and cache a package only once it
//! verified; a refusal must show none of the three.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use integrity::Keyring;
use integrity::provenance::PAYLOAD_TYPE;

const LIMIT: Duration = Duration::from_secs(90);

/// Logged by the loader right after it extracted a package's modules (the fake host has no in-tree
/// module to compare vermagic with): its absence proves the package was never opened.
const EXTRACTED: &str = "no in-tree module found to compare the full vermagic with";

/// A loader dry run in container mode against `server`, with `configure` adding the trust options.
fn dry_run(host: &FakeHost, server: &TestServer, configure: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = host.loader(&format!("{}/releases/download", server.url()));
    configure(&mut cmd);
    cmd.args(["--mode", "container", "--dry-run", "run"]);
    run_with_timeout(cmd, LIMIT)
}

/// The standard trust options: the key file and the policy.
fn trusting(keys: &Keys) -> impl FnOnce(&mut Command) + '_ {
    move |cmd: &mut Command| trust_args(cmd, &keys.public_key_file)
}

/// The run would have loaded the driver: verified, extracted, checked.
fn assert_would_load(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
    assert!(
        stdout(out).contains("example_driver: would load"),
        "{}",
        stdout(out)
    );
    assert!(stderr(out).contains(EXTRACTED), "{}", stderr(out));
}

/// The run was refused with `code`, its message contains `needle`, and nothing was extracted,
/// loaded or cached.
fn assert_refused(out: &Output, host: &FakeHost, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    assert!(
        stdout(out).trim().is_empty(),
        "no module action may be reported: {}",
        stdout(out)
    );
    assert!(
        !err.contains(EXTRACTED),
        "the package must not have been extracted: {err}"
    );
    assert!(
        !host.dir.path().join("sys/module/example_driver").exists(),
        "nothing may be loaded"
    );
    let cache = host.cache().join(identity(RELEASE).cache_key());
    let package = cache.join(identity(RELEASE).package_file_name(&driver()));
    assert!(
        !package.exists(),
        "a refused package must not stay in the cache"
    );
}

/// The line of the final error.
fn error_line(out: &Output) -> String {
    stderr(out)
        .lines()
        .find(|l| l.starts_with("driver-loader: error:"))
        .unwrap_or_default()
        .to_owned()
}

fn artifact(keys: &Keys) -> Artifact {
    Artifact::signed(keys, &identity(RELEASE), VERMAGIC_47)
}

#[test]
fn a_good_package_with_its_provenance_would_load_and_the_log_names_what_vouched_for_it() {
    let keys = Keys::generate();
    let server = serve_artifact(artifact(&keys));
    let host = FakeHost::new(RELEASE);
    let out = dry_run(&host, &server, trusting(&keys));
    assert_would_load(&out);
    let err = stderr(&out);
    for expected in [
        format!("signature_key={}", keys.id()),
        format!("source_commit={SOURCE_COMMIT}"),
        format!("builder=\"{BUILDER_ID}\""),
        format!("provenance_keys=\"{}\"", keys.id()),
    ] {
        assert!(err.contains(&expected), "{expected:?} in:\n{err}");
    }
    // Digest, signature and provenance were checked before the package was opened.
    let verified = err.find("package verified").expect("verified line");
    let extracted = err.find(EXTRACTED).expect("extracted line");
    assert!(verified < extracted, "{err}");
}

#[test]
fn a_tampered_provenance_is_refused_with_exit_10() {
    let keys = Keys::generate();
    let mut served = artifact(&keys);
    served.provenance = Some(tampered_provenance(
        served.provenance.as_deref().expect("provenance"),
        |statement| statement.predicate.run_details.builder.id = BUILDER_ID.replace("main", "evil"),
    ));
    let server = serve_artifact(served);
    let host = FakeHost::new(RELEASE);
    let out = dry_run(&host, &server, trusting(&keys));
    assert_refused(
        &out,
        &host,
        10,
        &format!(
            "envelope: the signature by trusted key {} does not verify: the envelope was altered",
            keys.id()
        ),
    );
    let name = identity(RELEASE).provenance_file_name(&driver());
    assert!(
        error_line(&out).contains(&format!("provenance {name}: envelope:")),
        "{}",
        error_line(&out)
    );
}

#[test]
fn a_provenance_of_another_build_is_refused_with_exit_10() {
    let keys = Keys::generate();
    let served = artifact(&keys).with_provenance(&keys, &identity(RELEASE), |p| {
        p.package_sha256 = integrity::sha256_bytes(b"another build of this package");
    });
    let server = serve_artifact(served.clone());
    let host = FakeHost::new(RELEASE);
    let out = dry_run(&host, &server, trusting(&keys));
    assert_refused(
        &out,
        &host,
        10,
        &format!(
            "subject.digest.sha256: is \"{}\" but the package hashes to {}",
            integrity::sha256_bytes(b"another build of this package"),
            served.sha256()
        ),
    );
}

#[test]
fn a_provenance_naming_another_source_repository_is_refused_with_exit_10() {
    let keys = Keys::generate();
    let served = artifact(&keys).with_provenance(&keys, &identity(RELEASE), |p| {
        p.source_repository = "https://github.com/evil/example-driver".to_owned();
    });
    let server = serve_artifact(served);
    let host = FakeHost::new(RELEASE);
    let out = dry_run(&host, &server, trusting(&keys));
    assert_refused(
        &out,
        &host,
        10,
        &format!(
            "resolvedDependencies.source.uri: is \"https://github.com/evil/example-driver\", \
             expected \"{SOURCE_REPOSITORY}\""
        ),
    );
}

#[test]
fn a_provenance_naming_a_builder_not_allowed_is_refused_with_exit_10() {
    let keys = Keys::generate();
    let served = artifact(&keys).with_provenance(&keys, &identity(RELEASE), |p| {
        p.builder_id = "https://evil".to_owned();
    });
    let server = serve_artifact(served);
    let host = FakeHost::new(RELEASE);
    let out = dry_run(&host, &server, trusting(&keys));
    assert_refused(
        &out,
        &host,
        10,
        &format!(
            "runDetails.builder.id: \"https://evil\" is not an allowed builder (allowed: {BUILDER_ID})"
        ),
    );
}

#[test]
fn a_commit_other_than_the_pinned_one_is_refused_with_exit_10() {
    let keys = Keys::generate();
    let server = serve_artifact(artifact(&keys));
    let pinned = "f".repeat(40);
    let host = FakeHost::new(RELEASE);
    let out = dry_run(&host, &server, |cmd| {
        trust_args(cmd, &keys.public_key_file);
        cmd.args(["--pinned-commit", &pinned]);
    });
    assert_refused(
        &out,
        &host,
        10,
        &format!(
            "resolvedDependencies.source.digest: is \"{SOURCE_COMMIT}\", expected \"{pinned}\""
        ),
    );

    // The pinned commit itself loads (through the environment this time).
    let host = FakeHost::new(RELEASE);
    let out = dry_run(&host, &server, |cmd| {
        trust_args(cmd, &keys.public_key_file);
        cmd.env("DRIVER_LOADER_PINNED_COMMIT", SOURCE_COMMIT);
    });
    assert_would_load(&out);

    // A pinned commit that is no commit id is a configuration error.
    let out = dry_run(&host, &server, |cmd| {
        trust_args(cmd, &keys.public_key_file);
        cmd.args(["--pinned-commit", "v0.1.2"]);
    });
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("--pinned-commit"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_provenance_file_is_refused_with_exit_10() {
    let keys = Keys::generate();
    let mut served = artifact(&keys);
    served.provenance = None;
    let server = serve_artifact(served);
    let host = FakeHost::new(RELEASE);
    let out = dry_run(&host, &server, trusting(&keys));
    assert_refused(&out, &host, 10, "envelope: no provenance file published at");
    assert!(
        error_line(&out).contains(".intoto.jsonl (404)"),
        "{}",
        error_line(&out)
    );
}

#[test]
fn a_package_signature_without_a_file_binding_is_refused_with_exit_6() {
    let keys = Keys::generate();
    let mut served = artifact(&keys);
    served.signature = Some(keys.sign_unbound(&served.package));
    let server = serve_artifact(served);
    let host = FakeHost::new(RELEASE);
    let out = dry_run(&host, &server, trusting(&keys));
    assert_refused(
        &out,
        &host,
        6,
        "the signature's trusted comment names no file (\"timestamp:1700000000\"); a signature must be \
         bound to exactly this package",
    );
}

#[test]
fn signatures_by_an_untrusted_key_are_refused_naming_the_key() {
    let keys = Keys::generate();
    let stranger = Keys::generate();
    // Package and provenance signed by a key nobody trusts: the package signature is refused first.
    let server = serve_artifact(artifact(&stranger));
    let host = FakeHost::new(RELEASE);
    let out = dry_run(&host, &server, trusting(&keys));
    assert_refused(
        &out,
        &host,
        6,
        &format!(
            "signed by key {}, which is not trusted (trusted: {})",
            stranger.id(),
            keys.id()
        ),
    );

    // A trusted package signature, but the provenance signed by the stranger.
    let served = artifact(&keys).with_provenance(&stranger, &identity(RELEASE), |_| {});
    let server = serve_artifact(served);
    let host = FakeHost::new(RELEASE);
    let out = dry_run(&host, &server, trusting(&keys));
    assert_refused(
        &out,
        &host,
        10,
        &format!(
            "envelope: no signature by a trusted key (signed by: {}; trusted: {})",
            stranger.id(),
            keys.id()
        ),
    );
}

/// Serves whatever artifact the test puts in the slot.
fn switchable(initial: Artifact) -> (TestServer, Arc<Mutex<Artifact>>) {
    let slot = Arc::new(Mutex::new(initial));
    let served = slot.clone();
    let server = TestServer::start(move |r| {
        served
            .lock()
            .expect("lock")
            .answer(r)
            .unwrap_or_else(Response::not_found)
    });
    (server, slot)
}

fn policy_env(cmd: &mut Command) {
    cmd.env(
        "DRIVER_LOADER_EXPECTED_SOURCE_REPOSITORY",
        SOURCE_REPOSITORY,
    )
    .env(
        "DRIVER_LOADER_ALLOWED_BUILDERS",
        format!("https://ci.example.invalid/other-builder,{BUILDER_ID}"),
    );
}

fn copy_key(keys: &Keys, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(&keys.public_key_file, &to).expect("copy key");
    to
}

#[test]
fn keys_rotate_both_ways_without_a_package_ever_loading_unverified() {
    let old = Keys::generate();
    let new = Keys::generate();
    let trusted = tempfile::tempdir().expect("keys dir");
    let old_pub = copy_key(&old, trusted.path(), "old.pub");
    let new_pub = copy_key(&new, trusted.path(), "new.pub");
    // Not keys: the rest of a mounted Secret, and Kubernetes' own entries.
    std::fs::write(trusted.path().join("allowed-builders"), BUILDER_ID).expect("write");
    std::fs::create_dir(trusted.path().join("..data")).expect("mkdir");
    let with_dir = |cmd: &mut Command| {
        cmd.env("DRIVER_LOADER_TRUSTED_KEYS_DIR", trusted.path());
        policy_env(cmd);
    };

    // (a) The old key's artifacts load while old and new keys are both trusted.
    let old_artifact = artifact(&old);
    let (server, slot) = switchable(old_artifact.clone());
    let host = FakeHost::new(RELEASE);
    let out = dry_run(&host, &server, with_dir);
    assert_would_load(&out);
    assert!(
        stderr(&out).contains(&format!("signature_key={}", old.id())),
        "{}",
        stderr(&out)
    );

    // (b) A new artifact signed by the new key loads with both trusted (keys as a comma-separated
    // list of files this time).
    *slot.lock().expect("lock") = artifact(&new);
    let fresh = FakeHost::new(RELEASE);
    let out = dry_run(&fresh, &server, |cmd| {
        cmd.env(
            "DRIVER_LOADER_PUBLIC_KEY_FILE",
            format!("{},{}", old_pub.display(), new_pub.display()),
        );
        policy_env(cmd);
    });
    assert_would_load(&out);
    assert!(
        stderr(&out).contains(&format!("signature_key={}", new.id())),
        "{}",
        stderr(&out)
    );

    // (c) The old key leaves the keyring: the old artifact is refused, its cached copy too (the
    // cache of (a) is verified again and dropped).
    std::fs::remove_file(&old_pub).expect("remove the old key");
    *slot.lock().expect("lock") = old_artifact.clone();
    let out = dry_run(&host, &server, with_dir);
    assert_refused(
        &out,
        &host,
        6,
        &format!(
            "signed by key {}, which is not trusted (trusted: {})",
            old.id(),
            new.id()
        ),
    );
    assert!(
        stderr(&out).contains("cached package does not verify"),
        "{}",
        stderr(&out)
    );

    // (d) The publisher countersigns the old artifact's provenance with the new key and re-signs the
    // package with it: the old artifact loads again with only the new key trusted.
    let mut old_ring = Keyring::new();
    old_ring
        .insert(old.secret.public().clone(), "old")
        .expect("insert");
    let countersigned = integrity::provenance::countersign(
        old_artifact.provenance.as_deref().expect("provenance"),
        &old_ring,
        &new.secret,
    )
    .expect("countersign");
    let mut rotated = old_artifact.clone().resigned(&new);
    rotated.provenance = Some(countersigned.clone());
    assert_eq!(rotated.package, old_artifact.package, "the same package");
    *slot.lock().expect("lock") = rotated;
    let out = dry_run(&host, &server, with_dir);
    assert_would_load(&out);
    assert!(
        stderr(&out).contains(&format!("signature_key={}", new.id()))
            && stderr(&out).contains(&format!("provenance_keys=\"{}\"", new.id())),
        "{}",
        stderr(&out)
    );
    // Both signatures are in the envelope; only the trusted one counts.
    let envelope = integrity::Envelope::parse(countersigned.trim()).expect("envelope");
    assert_eq!(envelope.signatures.len(), 2);
    assert_eq!(envelope.payload_type, PAYLOAD_TYPE);
}

#[test]
fn skipping_signatures_is_refused_whenever_a_key_is_configured() {
    let keys = Keys::generate();
    let server = serve_artifact(artifact(&keys));
    let host = FakeHost::new(RELEASE);
    let out = dry_run(&host, &server, |cmd| {
        trust_args(cmd, &keys.public_key_file);
        cmd.arg("--insecure-skip-signature");
    });
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let line = error_line(&out);
    assert!(
        line.contains("--insecure-skip-signature") && line.contains("--public-key-file"),
        "{line}"
    );

    // The same through the environment, with a keys directory.
    let dir = tempfile::tempdir().expect("keys dir");
    copy_key(&keys, dir.path(), "builder.pub");
    let out = dry_run(&host, &server, |cmd| {
        cmd.env("DRIVER_LOADER_TRUSTED_KEYS_DIR", dir.path())
            .env("DRIVER_LOADER_INSECURE_SKIP_SIGNATURE", "true");
        policy_env(cmd);
    });
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("--trusted-keys-dir"),
        "{}",
        stderr(&out)
    );
    assert!(server.requests().is_empty(), "nothing was downloaded");
}

#[test]
fn trusted_keys_need_the_provenance_policy() {
    let keys = Keys::generate();
    let server = serve_artifact(artifact(&keys));
    let host = FakeHost::new(RELEASE);
    let out = dry_run(&host, &server, |cmd| {
        cmd.arg("--public-key-file")
            .arg(&keys.public_key_file)
            .args(["--allowed-builder", BUILDER_ID]);
    });
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("--expected-source-repository"),
        "{}",
        stderr(&out)
    );
    let out = dry_run(&host, &server, |cmd| {
        cmd.arg("--public-key")
            .arg(keys.public_key_line())
            .args(["--expected-source-repository", SOURCE_REPOSITORY]);
    });
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("--allowed-builder"),
        "{}",
        stderr(&out)
    );
    assert!(server.requests().is_empty(), "nothing was downloaded");
}

/// The package and its provenance as files, under their kernel-id names.
fn package_files(dir: &Path, served: &Artifact) -> PathBuf {
    let package = dir.join(&served.file_name);
    std::fs::write(&package, &served.package).expect("write package");
    std::fs::write(
        dir.join(identity(RELEASE).provenance_file_name(&driver())),
        served.provenance.as_deref().expect("provenance"),
    )
    .expect("write provenance");
    package
}

fn provenance_cmd(keys: &Keys) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_driver-loader"));
    cmd.env_clear();
    trust_args(&mut cmd, &keys.public_key_file);
    cmd.arg("provenance");
    cmd
}

#[test]
fn the_provenance_command_shows_a_verified_provenance_and_refuses_a_bad_one() {
    let keys = Keys::generate();
    let served = artifact(&keys);
    let dir = tempfile::tempdir().expect("tempdir");
    let package = package_files(dir.path(), &served);

    let mut cmd = provenance_cmd(&keys);
    cmd.arg(&package);
    let out = run_with_timeout(cmd, LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let id = identity(RELEASE);
    for expected in [
        format!("package:          {}", served.file_name),
        format!("sha256:           {}", served.sha256()),
        "identity:         debian 12 x86_64, kernel 6.1.0-47-amd64, example-driver v0.1.2"
            .to_owned(),
        format!("source:           {SOURCE_REPOSITORY}"),
        "tag:              refs/tags/v0.1.2".to_owned(),
        format!("commit:           {SOURCE_COMMIT}"),
        format!("builder:          {BUILDER_ID}"),
        "invocation:       b-42".to_owned(),
        "started:          2026-12-03T10:00:00Z".to_owned(),
        "finished:         2026-12-03T10:02:07Z".to_owned(),
        format!("signed by:        {}", keys.id()),
        "headers:          2 package(s)".to_owned(),
        "compiler:         gcc-12".to_owned(),
        "  kernel CC:      CONFIG_CC_VERSION_TEXT=gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"
            .to_owned(),
        "  root report:    gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0".to_owned(),
    ] {
        assert!(
            text.lines().any(|line| line == expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    let facts = provenance_for(&id, &served.package);
    for header in &facts.facts.headers {
        assert!(
            text.contains(&format!("  {}  sha256 {}", header.file_name, header.sha256)),
            "{text}"
        );
    }
    assert!(
        text.contains(&format!(
            "build root:       {} sha256 {}",
            facts.root.uri, facts.root.sha256
        )),
        "{text}"
    );

    // --json: the verified in-toto statement itself.
    let mut cmd = provenance_cmd(&keys);
    cmd.arg(&package).arg("--json");
    let out = run_with_timeout(cmd, LIMIT);
    assert!(out.status.success(), "{}", stderr(&out));
    let statement: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(statement["subject"][0]["name"], served.file_name.as_str());
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        served.sha256().to_hex()
    );
    assert_eq!(
        statement,
        serde_json::to_value(facts.statement()).expect("statement")
    );

    // --provenance FILE: a provenance naming a builder nobody allowed is refused with exit 10.
    let evil = served
        .clone()
        .with_provenance(&keys, &id, |p| p.builder_id = "https://evil".to_owned());
    let evil_file = dir.path().join("evil.intoto.jsonl");
    std::fs::write(&evil_file, evil.provenance.as_deref().expect("provenance")).expect("write");
    let mut cmd = provenance_cmd(&keys);
    cmd.arg(&package).arg("--provenance").arg(&evil_file);
    let out = run_with_timeout(cmd, LIMIT);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(
        error_line(&out).contains(&format!(
            "provenance {}: runDetails.builder.id: \"https://evil\" is not an allowed builder",
            evil_file.display()
        )),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));

    // A package that is not the one the provenance is about (one byte changed).
    let mut altered = served.package.clone();
    altered[0] ^= 1;
    std::fs::write(&package, &altered).expect("write");
    let mut cmd = provenance_cmd(&keys);
    cmd.arg(&package);
    let out = run_with_timeout(cmd, LIMIT);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(
        error_line(&out).contains("subject.digest.sha256"),
        "{}",
        stderr(&out)
    );
}
