//! `driver-builder attest` as the GitHub workflow's signing step calls it: a key made by the real
//! minisign CLI, the builder's facts file, the root image and run details on the command line. The
//! provenance it writes must verify with the loader's own check (`integrity::provenance::verify`)
//! for exactly this package, identity and policy, be refused for a tampered package, and pass the
//! independent judge (securesystemslib's DSSE and the in-toto attestation framework's parsers,
//! `crates/integrity/tests/check_provenance.py`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use integrity::facts::{BuildFacts, CompilerFacts, HeaderPackage, RootImage};
use integrity::provenance::{Expected, ProvenancePolicy, verify};
use integrity::{Keyring, PublicKey, sha256_file};
use kernel_id::{KernelIdentity, SourceCommit};

const PACKAGE: &str = "example-driver-debian-12-6.1.0-47-amd64_v0.1.2_amd64.deb";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const REPOSITORY: &str = "https://github.com/example/example-driver";
const BUILDER_ID: &str =
    "https://github.com/example/example-driver/.github/workflows/driver-build.yml@refs/heads/main";
const IMAGE: &str = "ghcr.io/example/debian:12";

fn builder(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_driver-builder"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("driver-builder runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A build's output directory as the signing step finds it, with a minisign CLI key beside it.
struct Fixture {
    dir: tempfile::TempDir,
    public: PublicKey,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let made = Command::new("minisign")
            .args(["-G", "-W", "-p", "minisign.pub", "-s", "minisign.key"])
            .current_dir(dir.path())
            .output()
            .expect("minisign -G runs (install the minisign package)");
        assert!(made.status.success(), "{}", text(&made));
        let public = PublicKey::from_file(&dir.path().join("minisign.pub")).expect("public key");
        std::fs::write(dir.path().join(PACKAGE), b"the built package\n").expect("package");
        let facts = BuildFacts {
            headers: vec![HeaderPackage {
                name: "linux-headers-6.1.0-47-amd64".to_owned(),
                version: "6.1.188-1".to_owned(),
                file_name: "linux-headers-6.1.0-47-amd64_6.1.188-1_amd64.deb".to_owned(),
                uri: Some("http://deb.debian.org/debian/pool/main/l/linux/h.deb".to_owned()),
                sha256: "ab".repeat(32),
            }],
            compiler: CompilerFacts {
                name: "gcc-12".to_owned(),
                kernel_cc_version_text: "gcc-12 (Debian 12.2.0-14) 12.2.0".to_owned(),
                root_version_report: "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0".to_owned(),
            },
        };
        std::fs::write(
            dir.path().join("build-facts.json"),
            serde_json::to_vec_pretty(&facts).expect("json"),
        )
        .expect("facts");
        Self { dir, public }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn attest(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "attest",
            "--package",
            PACKAGE,
            "--facts",
            "build-facts.json",
            "--source-repository",
            REPOSITORY,
            "--source-commit",
            COMMIT,
            "--builder-id",
            BUILDER_ID,
            "--invocation-id",
            "build-42",
            "--started-on",
            "2026-12-03T10:00:00Z",
            "--signing-key",
            "minisign.key",
        ];
        args.extend_from_slice(extra);
        builder(&args, self.path())
    }

    fn keyring(&self) -> Keyring {
        let mut ring = Keyring::new();
        ring.insert(self.public.clone(), "minisign.pub")
            .expect("trusted");
        ring
    }

    fn provenance_path(&self) -> std::path::PathBuf {
        self.path().join(format!("{PACKAGE}.intoto.jsonl"))
    }
}

fn policy() -> ProvenancePolicy {
    ProvenancePolicy {
        expected_source_repository: REPOSITORY.to_owned(),
        allowed_builders: vec![BUILDER_ID.to_owned()],
        pinned_commit: Some(SourceCommit::parse(COMMIT).expect("commit")),
    }
}

fn judge(file: &Path, public: &PublicKey) -> Output {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../integrity/tests/check_provenance.py"
    );
    Command::new("python3")
        .arg(script)
        .arg(file)
        .arg(public.id().to_string())
        .arg(hex::encode(public.ed25519()))
        .output()
        .expect("python3 runs")
}

#[test]
fn attest_writes_provenance_the_loader_and_the_judge_accept_for_exactly_this_package() {
    let f = Fixture::new();
    let image_digest = "cd".repeat(32);
    let output = f.attest(&[
        "--root-image-uri",
        IMAGE,
        "--root-image-sha256",
        &format!("sha256:{}", image_digest.to_uppercase()),
        "--finished-on",
        "2026-12-03T12:05:00+02:00",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let written = String::from_utf8(output.stdout.clone()).expect("utf-8");
    // The path it wrote, as given (relative to the working directory here).
    assert_eq!(f.path().join(written.trim()), f.provenance_path());
    let file = std::fs::read_to_string(f.provenance_path()).expect("provenance");
    assert_eq!(file.lines().count(), 1, "one envelope per line: {file}");

    // The loader's check, for the identity the file name encodes.
    let (driver, identity) = KernelIdentity::parse_any_package_file_name(PACKAGE).expect("name");
    let package = f.path().join(PACKAGE);
    let digest = sha256_file(&package).expect("digest");
    let expected = Expected {
        driver: &driver,
        identity: &identity,
        package_sha256: &digest,
    };
    let verified = verify(&file, &f.keyring(), expected, &policy()).expect("verifies");
    assert_eq!(verified.key_ids, vec![f.public.id()]);
    assert_eq!(verified.builder_id, BUILDER_ID);
    assert_eq!(verified.invocation_id, "build-42");
    assert_eq!(verified.source_commit.as_str(), COMMIT);
    assert_eq!(
        verified.headers(),
        vec![(
            "linux-headers-6.1.0-47-amd64_6.1.188-1_amd64.deb",
            "ab".repeat(32).as_str()
        )]
    );
    let root = verified.dependency("build-root").expect("root");
    assert_eq!(root.uri.as_deref(), Some(IMAGE));
    assert_eq!(root.digest["sha256"], image_digest);

    // Not for another kernel, another builder, or a package that changed after it was attested.
    let other = KernelIdentity::parse_any_package_file_name(
        "example-driver-debian-12-6.1.0-50-amd64_v0.1.2_amd64.deb",
    )
    .expect("name")
    .1;
    let error = verify(
        &file,
        &f.keyring(),
        Expected {
            identity: &other,
            ..expected
        },
        &policy(),
    )
    .expect_err("another kernel");
    assert_eq!(error.field, "subject.name");
    let mut strict = policy();
    strict.allowed_builders = vec!["urn:kdriver:builder:build-service-local".to_owned()];
    let error = verify(&file, &f.keyring(), expected, &strict).expect_err("another builder");
    assert_eq!(error.field, "runDetails.builder.id");
    std::fs::write(&package, b"the built package, tampered\n").expect("tamper");
    let tampered = sha256_file(&package).expect("digest");
    let error = verify(
        &file,
        &f.keyring(),
        Expected {
            package_sha256: &tampered,
            ..expected
        },
        &policy(),
    )
    .expect_err("tampered package");
    assert_eq!(error.field, "subject.digest.sha256");
    assert!(
        verify(&file, &Keyring::new(), expected, &policy()).is_err(),
        "an untrusted key"
    );

    // The independent judge: signature by this key, strict in-toto / SLSA parsing.
    let judged = judge(&f.provenance_path(), &f.public);
    assert!(judged.status.success(), "{}", text(&judged));
    let summary: serde_json::Value = serde_json::from_slice(&judged.stdout).expect("json");
    let statement = &summary[0];
    assert_eq!(statement["subject"][0]["name"], PACKAGE);
    assert_eq!(statement["subject"][0]["digest"]["sha256"], digest.to_hex());
    assert_eq!(
        statement["build_type"],
        "urn:kdriver:build-type:driver-build:v1"
    );
    assert_eq!(
        statement["external_parameters"]["kernel_version"],
        "6.1.0-47-amd64"
    );
    assert_eq!(statement["builder_id"], BUILDER_ID);
    assert_eq!(statement["invocation_id"], "build-42");
    assert_eq!(statement["started_on"], "2026-12-03T10:00:00Z");
    assert_eq!(statement["finished_on"], "2026-12-03T10:05:00Z");
    let dependencies = statement["resolved_dependencies"].as_array().expect("deps");
    let source = dependencies
        .iter()
        .find(|d| d["name"] == "source")
        .expect("source");
    assert_eq!(
        source["uri"],
        format!("git+{REPOSITORY}@refs/tags/v0.1.2").as_str()
    );
    assert_eq!(source["digest"]["gitCommit"], COMMIT);
    // A signature by another key is refused by the judge too.
    assert!(!judge(&f.provenance_path(), &other_key()).status.success());

    // Never replaced.
    let again = f.attest(&[
        "--root-image-uri",
        IMAGE,
        "--root-image-sha256",
        &image_digest,
    ]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    assert_eq!(
        std::fs::read_to_string(f.provenance_path()).expect("read"),
        file
    );
}

/// A public key that is not the fixture's (made by the minisign CLI in its own directory).
fn other_key() -> PublicKey {
    let dir = tempfile::tempdir().expect("tempdir");
    let made = Command::new("minisign")
        .args(["-G", "-W", "-p", "o.pub", "-s", "o.key"])
        .current_dir(dir.path())
        .output()
        .expect("minisign -G");
    assert!(made.status.success(), "{}", text(&made));
    PublicKey::from_file(&dir.path().join("o.pub")).expect("pub")
}

#[test]
fn attest_reads_a_root_image_file_and_defaults_the_finish_to_now() {
    let f = Fixture::new();
    let root = RootImage {
        uri: "mmdebstrap:debian/bookworm/amd64".to_owned(),
        sha256: "ef".repeat(32),
    };
    std::fs::write(
        f.path().join("root-image.json"),
        serde_json::to_vec(&root).expect("json"),
    )
    .expect("root image");
    let before = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    let output = f.attest(&["--root-image", "root-image.json"]);
    assert!(output.status.success(), "{}", text(&output));
    let file = std::fs::read_to_string(f.provenance_path()).expect("provenance");
    let (driver, identity) = KernelIdentity::parse_any_package_file_name(PACKAGE).expect("name");
    let digest = sha256_file(&f.path().join(PACKAGE)).expect("digest");
    let verified = verify(
        &file,
        &f.keyring(),
        Expected {
            driver: &driver,
            identity: &identity,
            package_sha256: &digest,
        },
        &policy(),
    )
    .expect("verifies");
    let dependency = verified.dependency("build-root").expect("root");
    assert_eq!(dependency.uri.as_deref(), Some(root.uri.as_str()));
    assert_eq!(dependency.digest["sha256"], root.sha256);
    let finished = &verified
        .statement
        .predicate
        .run_details
        .metadata
        .finished_on;
    let finished =
        time::OffsetDateTime::parse(finished, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
    assert!(finished >= before, "{finished} < {before}");
    let judged = judge(&f.provenance_path(), &f.public);
    assert!(judged.status.success(), "{}", text(&judged));
}

#[test]
fn attest_refuses_bad_input_exposed_keys_and_unknown_packages() {
    let f = Fixture::new();
    let root = ["--root-image-uri", IMAGE, "--root-image-sha256"];
    let digest = "cd".repeat(32);
    let with_root = |extra: &[&str]| {
        let mut args: Vec<&str> = root.to_vec();
        args.push(&digest);
        args.extend_from_slice(extra);
        f.attest(&args)
    };

    // Invalid values exit 2 naming the flag, before any key is read.
    for (extra, named) in [
        (
            &["--finished-on", "2026-12-03T09:00:00Z"][..],
            "--finished-on",
        ),
        (&["--finished-on", "tomorrow"][..], "--finished-on"),
    ] {
        let refused = with_root(extra);
        assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
        assert!(text(&refused).contains(named), "{}", text(&refused));
    }
    let refused = f.attest(&["--root-image-uri", IMAGE, "--root-image-sha256", "abc"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("--root-image-sha256"),
        "{}",
        text(&refused)
    );
    // A root image is required, and only one way.
    assert_eq!(f.attest(&[]).status.code(), Some(2));
    assert_eq!(
        with_root(&["--root-image", "root-image.json"])
            .status
            .code(),
        Some(2)
    );
    let bad_commit = builder(
        &[
            "attest",
            "--package",
            PACKAGE,
            "--facts",
            "build-facts.json",
            "--root-image-uri",
            IMAGE,
            "--root-image-sha256",
            &digest,
            "--source-repository",
            REPOSITORY,
            "--source-commit",
            "main",
            "--builder-id",
            BUILDER_ID,
            "--invocation-id",
            "build\n42",
            "--started-on",
            "2026-12-03T10:00:00Z",
            "--signing-key",
            "minisign.key",
        ],
        f.path(),
    );
    assert_eq!(bad_commit.status.code(), Some(2), "{}", text(&bad_commit));
    assert!(
        text(&bad_commit).contains("source_commit:"),
        "{}",
        text(&bad_commit)
    );

    // A key file readable by others is refused, naming the file and its mode.
    let key = f.path().join("minisign.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let refused = with_root(&[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("minisign.key: a secret key must not be readable"),
        "{}",
        text(&refused)
    );
    assert!(text(&refused).contains("mode 0644"), "{}", text(&refused));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // Facts that are not the builder's are refused.
    let facts_path = f.path().join("build-facts.json");
    let facts = std::fs::read(&facts_path).expect("facts");
    std::fs::write(&facts_path, b"{\"headers\": []}").expect("write");
    let refused = with_root(&[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("build facts"), "{}", text(&refused));
    assert!(!f.provenance_path().exists());

    // A package whose name kernel-id does not know.
    std::fs::copy(f.path().join(PACKAGE), f.path().join("driver.deb")).expect("copy");
    std::fs::write(&facts_path, facts).expect("restore the facts");
    let mut args = vec![
        "attest",
        "--package",
        "driver.deb",
        "--facts",
        "build-facts.json",
        "--source-repository",
        REPOSITORY,
        "--source-commit",
        COMMIT,
        "--builder-id",
        BUILDER_ID,
        "--invocation-id",
        "build-42",
        "--started-on",
        "2026-12-03T10:00:00Z",
        "--signing-key",
        "minisign.key",
    ];
    args.extend_from_slice(&root);
    args.push(&digest);
    let refused = builder(&args, f.path());
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("file_name"), "{}", text(&refused));
    assert!(
        std::fs::read_dir(f.path())
            .expect("dir")
            .flatten()
            .all(|entry| !entry
                .file_name()
                .to_string_lossy()
                .ends_with(".intoto.jsonl"))
    );
}

/// The GitHub workflow's signing step (`.github/scripts/sign-and-attest.sh`) run for real with this
/// driver-builder, on what the build step leaves (package, digest, facts): it signs, attests with
/// the workflow's builder id and the build id, reports the provenance file's name for the upload,
/// and leaves no copy of the key behind.
#[test]
fn the_workflow_signing_step_signs_and_attests_and_removes_the_key() {
    let f = Fixture::new();
    let out = f.path().join("out");
    std::fs::create_dir(&out).expect("out");
    std::fs::rename(f.path().join(PACKAGE), out.join(PACKAGE)).expect("move");
    std::fs::rename(
        f.path().join("build-facts.json"),
        out.join("build-facts.json"),
    )
    .expect("move");
    let digest = sha256_file(&out.join(PACKAGE)).expect("digest");
    std::fs::write(
        out.join(format!("{PACKAGE}.sha256")),
        format!("{digest}  {PACKAGE}\n"),
    )
    .expect("digest file");
    let checkout = f.path().join("checkout");
    let release = checkout.join("target/x86_64-unknown-linux-musl/release");
    std::fs::create_dir_all(&release).expect("target dir");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_driver-builder"),
        release.join("driver-builder"),
    )
    .expect("symlink");
    let temp = f.path().join("tmp");
    std::fs::create_dir(&temp).expect("tmp");
    let secret = std::fs::read_to_string(f.path().join("minisign.key")).expect("key");
    let github_output = f.path().join("github-output");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.github/scripts/sign-and-attest.sh"
    );
    let run = |secret: &str| {
        Command::new("bash")
            .arg(script)
            .current_dir(&checkout)
            .env_remove("MINISIGN_PASSWORD")
            .env("TMPDIR", &temp)
            .env("RUST_TARGET", "x86_64-unknown-linux-musl")
            .env("PACKAGE_FILE_NAME", PACKAGE)
            .env("OUT_DIR", &out)
            .env("SOURCE_COMMIT", COMMIT)
            .env("BUILD_ID", "build-42")
            .env("ROOT_IMAGE", IMAGE)
            .env("ROOT_IMAGE_SHA256", "cd".repeat(32))
            .env("STARTED_ON", "2026-12-03T10:00:00Z")
            .env("FINISHED_ON", "2026-12-03T10:04:00Z")
            .env("GITHUB_REPOSITORY", "example/example-driver")
            .env("GITHUB_REF", "refs/heads/main")
            .env("GITHUB_OUTPUT", &github_output)
            .env("MINISIGN_SECRET_KEY", secret)
            .output()
            .expect("bash runs")
    };

    let refused = run("");
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("MINISIGN_SECRET_KEY secret is not set"),
        "{}",
        text(&refused)
    );

    let output = run(&secret);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(
        std::fs::read_to_string(&github_output).expect("outputs"),
        format!("provenance_file_name={PACKAGE}.intoto.jsonl\n")
    );
    assert_eq!(
        std::fs::read_dir(&temp).expect("tmp").count(),
        0,
        "the key file was left behind"
    );
    let verify_signature = Command::new("minisign")
        .arg("-Vm")
        .arg(out.join(PACKAGE))
        .arg("-p")
        .arg(f.path().join("minisign.pub"))
        .output()
        .expect("minisign -V");
    assert!(
        verify_signature.status.success(),
        "{}",
        text(&verify_signature)
    );
    let file = std::fs::read_to_string(out.join(format!("{PACKAGE}.intoto.jsonl"))).expect("file");
    let (driver, identity) = KernelIdentity::parse_any_package_file_name(PACKAGE).expect("name");
    let verified = verify(
        &file,
        &f.keyring(),
        Expected {
            driver: &driver,
            identity: &identity,
            package_sha256: &digest,
        },
        &policy(),
    )
    .expect("verifies");
    assert_eq!(verified.builder_id, BUILDER_ID);
    assert_eq!(verified.invocation_id, "build-42");
    assert_eq!(
        verified
            .dependency("build-root")
            .and_then(|root| root.uri.as_deref()),
        Some(IMAGE)
    );

    // A second run (a retried job) replaces nothing.
    let again = run(&secret);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    assert_eq!(std::fs::read_dir(&temp).expect("tmp").count(), 0);
}
