//! `driver-builder sign` and `validate` as the workflow calls them, with keys made by the real
//! minisign CLI and signatures checked by `minisign -Vm` and digests by `sha256sum -c`. Keys are
//! loaded by the integrity crate: one readable by group or others is refused.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;

const PACKAGE: &str = "example-driver-debian-12-6.1.0-47-amd64_v0.1.2_amd64.deb";

fn builder(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_driver-builder"))
        .args(args)
        .current_dir(dir)
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

fn cli_keypair(dir: &Path) {
    let status = Command::new("minisign")
        .args(["-G", "-W", "-p", "minisign.pub", "-s", "minisign.key"])
        .current_dir(dir)
        .output()
        .expect("minisign -G runs (install the minisign package)");
    assert!(status.status.success(), "{}", text(&status));
}

#[test]
fn sign_writes_a_signature_minisign_verifies_and_a_sha256sum_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    cli_keypair(dir.path());
    std::fs::write(
        dir.path().join(PACKAGE),
        b"not really a deb, but bytes to sign\n",
    )
    .expect("write package");
    let signed = builder(&["sign", "--key", "minisign.key", PACKAGE], dir.path());
    assert!(signed.status.success(), "{}", text(&signed));

    let verify = Command::new("minisign")
        .args(["-Vm", PACKAGE, "-p", "minisign.pub"])
        .current_dir(dir.path())
        .output()
        .expect("minisign -V");
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(
        text(&verify).contains(&format!("file:{PACKAGE}")),
        "{}",
        text(&verify)
    );
    let check = Command::new("sha256sum")
        .args(["-c", &format!("{PACKAGE}.sha256")])
        .current_dir(dir.path())
        .output()
        .expect("sha256sum");
    assert!(check.status.success(), "{}", text(&check));

    // A tampered package no longer verifies.
    std::fs::write(dir.path().join(PACKAGE), b"tampered\n").expect("tamper");
    let verify = Command::new("minisign")
        .args(["-Vm", PACKAGE, "-p", "minisign.pub"])
        .current_dir(dir.path())
        .output()
        .expect("minisign -V");
    assert!(!verify.status.success());

    // Signing again never replaces what is already published.
    let again = builder(&["sign", "--key", "minisign.key", PACKAGE], dir.path());
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
}

#[test]
fn sign_refuses_bad_names_and_encrypted_keys_without_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    cli_keypair(dir.path());
    std::fs::write(dir.path().join("random.deb"), b"x").expect("write");
    let refused = builder(&["sign", "--key", "minisign.key", "random.deb"], dir.path());
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("file_name"), "{}", text(&refused));

    // The same key marked as scrypt-encrypted, as `minisign -G` without -W writes it.
    let key = std::fs::read_to_string(dir.path().join("minisign.key")).expect("key");
    let mut lines: Vec<String> = key.lines().map(str::to_owned).collect();
    let engine = base64::engine::general_purpose::STANDARD;
    let mut bytes = engine.decode(&lines[1]).expect("base64");
    bytes[2..4].copy_from_slice(b"Sc");
    lines[1] = engine.encode(&bytes);
    let encrypted = dir.path().join("encrypted.key");
    std::fs::write(&encrypted, lines.join("\n") + "\n").expect("write");
    std::fs::set_permissions(&encrypted, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::write(dir.path().join(PACKAGE), b"x").expect("write");
    let refused = builder(&["sign", "--key", "encrypted.key", PACKAGE], dir.path());
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("give its password with --password-env"),
        "{}",
        text(&refused)
    );
    assert!(!dir.path().join(format!("{PACKAGE}.minisig")).exists());
}

#[test]
fn a_key_readable_by_others_is_refused_naming_the_file_and_its_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    cli_keypair(dir.path());
    let key = dir.path().join("minisign.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(dir.path().join(PACKAGE), b"x").expect("write");
    let key_arg = key.to_str().expect("utf-8 path");
    let refused = builder(&["sign", "--key", key_arg, PACKAGE], dir.path());
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let message = text(&refused);
    assert!(message.contains(key_arg), "{message}");
    assert!(message.contains("mode 0644"), "{message}");
    assert!(message.contains("chmod 600"), "{message}");
    for sidecar in ["minisig", "sha256"] {
        assert!(!dir.path().join(format!("{PACKAGE}.{sidecar}")).exists());
    }

    // The build subcommand loads its --minisign-key the same way, before building anything.
    let refused = builder(
        &[
            "build",
            "--kernel-release",
            "6.1.0-47-amd64",
            "--arch",
            "x86_64",
            "--distribution",
            "debian",
            "--driver-name",
            "example-driver",
            "--driver-version",
            "v0.1.2",
            "--source",
            "src",
            "--out",
            "out",
            "--source-commit",
            "0123456789abcdef0123456789abcdef01234567",
            "--source-repository",
            "https://example.com/driver.git",
            "--minisign-key",
            key_arg,
        ],
        dir.path(),
    );
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains(&format!("{key_arg}: a secret key must not be readable")),
        "{}",
        text(&refused)
    );
    assert!(text(&refused).contains("mode 0644"), "{}", text(&refused));

    // Made private, the same key signs.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let signed = builder(&["sign", "--key", key_arg, PACKAGE], dir.path());
    assert!(signed.status.success(), "{}", text(&signed));
}

/// The GitHub flow: the build root writes the package and its digest, the signing step outside it
/// signs; the digest already there is kept (not rewritten) when it agrees with the package.
#[test]
fn sign_keeps_the_digest_the_build_wrote_and_refuses_one_that_disagrees() {
    let dir = tempfile::tempdir().expect("tempdir");
    cli_keypair(dir.path());
    std::fs::write(dir.path().join(PACKAGE), b"built package\n").expect("write");
    let digest = Command::new("sha256sum")
        .arg(PACKAGE)
        .current_dir(dir.path())
        .output()
        .expect("sha256sum");
    let digest_file = dir.path().join(format!("{PACKAGE}.sha256"));
    std::fs::write(&digest_file, &digest.stdout).expect("write digest");
    let signed = builder(&["sign", "--key", "minisign.key", PACKAGE], dir.path());
    assert!(signed.status.success(), "{}", text(&signed));
    assert_eq!(std::fs::read(&digest_file).expect("digest"), digest.stdout);
    let verify = Command::new("minisign")
        .args(["-Vm", PACKAGE, "-p", "minisign.pub"])
        .current_dir(dir.path())
        .output()
        .expect("minisign -V");
    assert!(verify.status.success(), "{}", text(&verify));

    std::fs::remove_file(dir.path().join(format!("{PACKAGE}.minisig"))).expect("rm");
    std::fs::write(dir.path().join(PACKAGE), b"swapped package\n").expect("swap");
    let refused = builder(&["sign", "--key", "minisign.key", PACKAGE], dir.path());
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("SHA-256 mismatch"),
        "{}",
        text(&refused)
    );
    assert!(!dir.path().join(format!("{PACKAGE}.minisig")).exists());
}

#[test]
fn validate_prints_the_normalized_identity_and_rejects_hostile_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ok = builder(
        &[
            "validate",
            "--kernel-release",
            "6.12.107+deb13-amd64",
            "--arch",
            "amd64",
            "--distribution",
            "debian",
            "--distro-version",
            "13",
            "--driver-name",
            "example-driver",
            "--driver-version",
            "v1.0.0-rc.1",
        ],
        dir.path(),
    );
    assert!(ok.status.success(), "{}", text(&ok));
    let json: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("json");
    assert_eq!(json["arch"], "x86_64");
    assert_eq!(json["package_version"], "1.0.0~rc.1");
    assert_eq!(
        json["package_file_name"],
        "example-driver-debian-13-6.12.107+deb13-amd64_v1.0.0-rc.1_amd64.deb"
    );
    for (flag, value, field) in [
        (
            "--kernel-release",
            "6.1.0-47-amd64$(reboot)",
            "kernel_version",
        ),
        ("--arch", "riscv64", "architecture"),
        ("--distribution", "gentoo", "distribution"),
        ("--driver-name", "Example_Driver", "driver_name"),
        ("--driver-version", "0.1.2", "driver_version"),
    ] {
        let mut args = vec![
            "validate",
            "--kernel-release",
            "6.1.0-47-amd64",
            "--arch",
            "amd64",
            "--distribution",
            "debian",
            "--driver-name",
            "example-driver",
            "--driver-version",
            "v0.1.2",
        ];
        let at = args.iter().position(|a| *a == flag).expect("flag") + 1;
        args[at] = value;
        let refused = builder(&args, dir.path());
        assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
        assert!(
            text(&refused).contains(&format!("error: {field}:")),
            "{flag}={value}: {}",
            text(&refused)
        );
        assert!(refused.stdout.is_empty());
    }
}
