//! The envelope and statement formats judged by independent implementations: securesystemslib
//! (the reference DSSE implementation) verifies the signature with the public key alone, and the
//! in-toto attestation framework's protobuf definitions parse the statement and its SLSA v1
//! predicate strictly. `.ci/run` installs both from PyPI; a missing judge fails the test.

use std::process::Command;

use integrity::facts::{BuildFacts, CompilerFacts, HeaderPackage, RootImage};
use integrity::keys::SecretKey;
use integrity::provenance::BuildProvenance;
use integrity::sha256_bytes;
use kernel_id::{DriverName, IdentityInput, KernelIdentity, SourceCommit};

fn check(file: &std::path::Path, key: &SecretKey) -> std::process::Output {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/check_provenance.py");
    Command::new("python3")
        .arg(script)
        .arg(file)
        .arg(key.id().to_string())
        .arg(hex::encode(key.public().ed25519()))
        .output()
        .expect("python3 runs")
}

#[test]
fn securesystemslib_and_the_in_toto_framework_accept_a_signed_provenance_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate(&dir.path().join("k"), &dir.path().join("k.pub")).unwrap();
    let other = SecretKey::generate(&dir.path().join("o"), &dir.path().join("o.pub")).unwrap();
    let identity = KernelIdentity::from_input(&IdentityInput {
        kernel_version: "6.1.0-47-amd64".to_owned(),
        architecture: "x86_64".to_owned(),
        distribution: "debian".to_owned(),
        distro_version: Some("12".to_owned()),
        driver_version: "v0.1.2".to_owned(),
    })
    .unwrap();
    let driver = DriverName::parse("example-driver").unwrap();
    let header_digest = "ab".repeat(32);
    let provenance = BuildProvenance {
        driver: driver.clone(),
        identity: identity.clone(),
        package_sha256: sha256_bytes(b"package"),
        source_repository: "file:///srv/example-driver".to_owned(),
        source_commit: SourceCommit::parse("0123456789abcdef0123456789abcdef01234567").unwrap(),
        facts: BuildFacts {
            headers: vec![HeaderPackage {
                name: "linux-headers-6.1.0-47-amd64".to_owned(),
                version: "6.1.188-1".to_owned(),
                file_name: "linux-headers-6.1.0-47-amd64_6.1.188-1_amd64.deb".to_owned(),
                uri: Some("http://deb.debian.org/debian/pool/main/l/linux/x.deb".to_owned()),
                sha256: header_digest.clone(),
            }],
            compiler: CompilerFacts {
                name: "gcc-12".to_owned(),
                kernel_cc_version_text: "gcc-12 (Debian 12.2.0-14) 12.2.0".to_owned(),
                root_version_report: "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0".to_owned(),
            },
        },
        root: RootImage {
            uri: "mmdebstrap:debian/bookworm/amd64".to_owned(),
            sha256: "cd".repeat(32),
        },
        builder_id: "https://kdriver.invalid/local-builder".to_owned(),
        invocation_id: "b-1".to_owned(),
        started_on: "2026-12-03T10:00:00Z".to_owned(),
        finished_on: "2026-12-03T10:02:07Z".to_owned(),
    };
    let file = dir.path().join("p.intoto.jsonl");
    std::fs::write(&file, provenance.signed_file(&key)).unwrap();

    let output = check(&file, &key);
    assert!(
        output.status.success(),
        "the independent judge refused the file: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let statement = &summary[0];
    assert_eq!(
        statement["subject"][0]["name"],
        identity.package_file_name(&driver)
    );
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        sha256_bytes(b"package").to_hex()
    );
    assert_eq!(
        statement["external_parameters"]["kernel_version"],
        "6.1.0-47-amd64"
    );
    assert_eq!(statement["invocation_id"], "b-1");
    let dependencies = statement["resolved_dependencies"].as_array().unwrap();
    assert_eq!(
        dependencies[0]["uri"],
        "git+file:///srv/example-driver@refs/tags/v0.1.2"
    );
    assert_eq!(
        dependencies[0]["digest"]["gitCommit"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert!(
        dependencies
            .iter()
            .any(|d| d["digest"]["sha256"] == header_digest.as_str())
    );

    // The same judge refuses a file signed by another key: the check above could fail.
    let forged = dir.path().join("forged.intoto.jsonl");
    std::fs::write(&forged, provenance.signed_file(&other)).unwrap();
    let output = check(&forged, &key);
    assert!(
        !output.status.success(),
        "a foreign signature must not verify"
    );
}
