//! .rpm packages written by this crate with gzip, xz and zstd payloads, checked with the real rpm
//! tools: `rpm -qip`, `rpm -qlp`, `rpm2cpio | cpio -t`, the scriptlets, and `rpmlint` without errors;
//! then read back with this crate and compared with `rpm2cpio | cpio -idm`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{SOURCE_COMMIT, driver, driver_spec, identity, identity_on, real_module, run, sh};
use driver_package::{Compression, ExtractOptions, WriteOptions, write_package_file};

/// A Fedora 42 kernel release (the identity checks the `.fc42` marker agrees with the distro version).
const FEDORA_RELEASE: &str = "6.14.0-63.fc42.x86_64";

fn write_sample(dir: &Path, compression: Compression) -> PathBuf {
    let identity = identity("fedora", "42", FEDORA_RELEASE);
    let spec = driver_spec(&identity, real_module());
    let file_name = identity.package_file_name(&driver());
    write_package_file(&spec, WriteOptions { compression }, dir, &file_name).expect("rpm written")
}

const PAYLOADS: [(Compression, &str); 3] = [
    (Compression::Gzip, "gzip"),
    (Compression::Xz, "xz"),
    (Compression::Zstd, "zstd"),
];

#[test]
fn rpm_queries_show_metadata_files_and_scriptlets() {
    for (compression, compressor) in PAYLOADS {
        let dir = tempfile::tempdir().expect("tempdir");
        let rpm = write_sample(dir.path(), compression);
        let info = run(Command::new("rpm").arg("-qip").arg(&rpm));
        let identity = identity("fedora", "42", FEDORA_RELEASE);
        assert!(
            info.contains(&format!(
                "Name        : {}",
                identity.package_name(&driver())
            )),
            "{info}"
        );
        assert!(info.contains("Version     : 0.1.2"), "{info}");
        assert!(info.contains("Architecture: x86_64"), "{info}");
        assert!(
            info.contains(FEDORA_RELEASE),
            "summary names the kernel: {info}"
        );
        let qf = run(Command::new("rpm")
            .arg("-qp")
            .arg("--qf")
            .arg("%{PAYLOADCOMPRESSOR}")
            .arg(&rpm));
        assert_eq!(qf, compressor);
        let vcs = run(Command::new("rpm")
            .arg("-qp")
            .arg("--qf")
            .arg("%{VCS}")
            .arg(&rpm));
        assert_eq!(vcs, SOURCE_COMMIT, "RPMTAG_VCS carries the source commit");
        let metadata = driver_package::read_metadata(&rpm).expect("metadata");
        assert_eq!(metadata.name, identity.package_name(&driver()));
        assert_eq!(metadata.version, "0.1.2-1");
        assert_eq!(metadata.architecture, "x86_64");
        assert_eq!(metadata.source_commit.as_deref(), Some(SOURCE_COMMIT));
        let files = run(Command::new("rpm").arg("-qlp").arg(&rpm));
        let module_dir = format!("/lib/modules/{FEDORA_RELEASE}/updates/example-driver");
        assert_eq!(
            files,
            format!("{module_dir}\n{module_dir}/example_driver.ko\n")
        );
        let scripts = run(Command::new("rpm").arg("-qp").arg("--scripts").arg(&rpm));
        assert!(scripts.contains("postinstall scriptlet"), "{scripts}");
        assert!(scripts.contains("postuninstall scriptlet"), "{scripts}");
        assert_eq!(
            scripts
                .matches(&format!("depmod -a '{FEDORA_RELEASE}'"))
                .count(),
            2,
            "{scripts}"
        );
        let cpio_list = sh(&format!("rpm2cpio '{}' | cpio -t --quiet", rpm.display()));
        assert_eq!(
            cpio_list,
            format!(".{module_dir}\n.{module_dir}/example_driver.ko\n"),
            "{compressor}"
        );
    }
}

#[test]
fn aarch64_identities_make_aarch64_rpms_and_arm64_debs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let arch = kernel_id::Arch::Aarch64;
    let fedora = identity_on(arch, "fedora", "42", "6.14.0-63.fc42.aarch64");
    // kernel-id's artifact name uses the Debian architecture word for every format (the
    // specified `..._{debian_arch}.{deb|rpm}`); the package metadata uses each format's own.
    let rpm_name = fedora.package_file_name(&driver());
    assert_eq!(
        rpm_name,
        "example-driver-fedora-42-6.14.0-63.fc42.aarch64_v0.1.2_arm64.rpm"
    );
    let rpm = write_package_file(
        &driver_spec(&fedora, real_module()),
        WriteOptions::default_for(fedora.distribution().package_format()),
        dir.path(),
        &rpm_name,
    )
    .expect("rpm written");
    let info = run(Command::new("rpm").arg("-qip").arg(&rpm));
    assert!(info.contains("Architecture: aarch64"), "{info}");
    let rpm_arch = run(Command::new("rpm")
        .arg("-qp")
        .arg("--qf")
        .arg("%{ARCH}")
        .arg(&rpm));
    assert_eq!(rpm_arch, "aarch64");

    let debian = identity_on(arch, "debian", "12", "6.1.0-47-arm64");
    let deb_name = debian.package_file_name(&driver());
    assert!(deb_name.ends_with("_arm64.deb"), "{deb_name}");
    let deb = write_package_file(
        &driver_spec(&debian, real_module()),
        WriteOptions::default_for(debian.distribution().package_format()),
        dir.path(),
        &deb_name,
    )
    .expect("deb written");
    let field = run(Command::new("dpkg-deb")
        .arg("-f")
        .arg(&deb)
        .arg("Architecture"));
    assert_eq!(field.trim(), "arm64");
}

fn rpmlint(rpm: &Path, config: Option<&Path>, home: Option<&Path>) -> String {
    let mut cmd = Command::new("rpmlint");
    if let Some(home) = home {
        cmd.env("HOME", home);
    }
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    let output = cmd.arg(rpm).output().expect("rpmlint runs");
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    let errors: Vec<&str> = report.lines().filter(|l| l.contains(": E: ")).collect();
    assert!(
        errors.is_empty(),
        "{}: rpmlint errors:\n{report}",
        rpm.display()
    );
    assert!(
        report.contains(" 0 errors"),
        "rpmlint summary:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    report
}

#[test]
fn rpmlint_reports_no_errors() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rpmlint-unsigned.toml");
    for (compression, _) in PAYLOADS {
        let dir = tempfile::tempdir().expect("tempdir");
        let rpm = write_sample(dir.path(), compression);
        let report = rpmlint(&rpm, Some(&config), None);
        // Known and accepted: .ko files keep their symbol table; the summary starts with the
        // (lower-case) driver name; the file name is kernel-id's artifact name, not rpm's NEVRA;
        // no URL or docs for a generated module package; rpmlint 2.4 predates SPDX license names.
        let accepted = [
            "unstripped-binary-or-object",
            "summary-not-capitalized",
            "non-coherent-filename",
            "no-url-tag",
            "no-documentation",
            "invalid-license",
        ];
        let unexpected: Vec<&str> = report
            .lines()
            .filter(|l| l.contains(": W: "))
            .filter(|l| {
                !accepted
                    .iter()
                    .any(|tag| l.contains(&format!(": W: {tag}")))
            })
            .collect();
        assert!(unexpected.is_empty(), "new rpmlint warnings:\n{report}");
    }
}

#[test]
fn rpmsign_signed_copy_passes_plain_rpmlint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rpm = write_sample(dir.path(), Compression::Zstd);
    let gnupg = dir.path().join("gnupg");
    std::fs::create_dir(&gnupg).expect("gnupg home");
    std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    run(Command::new("gpg")
        .env("GNUPGHOME", &gnupg)
        .args([
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "Driver Test <driver-test@example.com>",
        ])
        .args(["rsa2048", "sign", "never"]));
    run(Command::new("rpmsign")
        .env("GNUPGHOME", &gnupg)
        .arg("--define")
        .arg("_gpg_name Driver Test")
        .arg("--define")
        .arg("__gpg /usr/bin/gpg")
        .arg("--addsign")
        .arg(&rpm));
    // rpmlint verifies the signature against an rpm database: give it a private one (through
    // ~/.rpmmacros in a scratch HOME) holding the test key, leaving the host's database alone.
    let home = dir.path().join("home");
    std::fs::create_dir(&home).expect("scratch home");
    std::fs::write(
        home.join(".rpmmacros"),
        format!("%_dbpath {}\n", dir.path().join("rpmdb").display()),
    )
    .expect("rpmmacros");
    let key = run(Command::new("gpg")
        .env("GNUPGHOME", &gnupg)
        .args(["--armor", "--export"]));
    let key_file = dir.path().join("key.asc");
    std::fs::write(&key_file, key).expect("key file");
    run(Command::new("rpm").env("HOME", &home).arg("--initdb"));
    run(Command::new("rpm")
        .env("HOME", &home)
        .arg("--import")
        .arg(&key_file));
    rpmlint(&rpm, None, Some(&home));
    // Stop the agent this test's gpg started.
    let _ = Command::new("gpgconf")
        .env("GNUPGHOME", &gnupg)
        .args(["--kill", "gpg-agent"])
        .status();
}

#[test]
fn our_reader_matches_rpm2cpio_on_our_rpms() {
    for (compression, compressor) in PAYLOADS {
        let dir = tempfile::tempdir().expect("tempdir");
        let rpm = write_sample(dir.path(), compression);
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        sh(&format!(
            "cd '{}' && rpm2cpio '{}' | cpio -idm --quiet",
            theirs.display(),
            rpm.display()
        ));
        let ours = dir.path().join("ours");
        let report =
            driver_package::extract(&rpm, &ours, &ExtractOptions::default()).expect(compressor);
        assert_eq!(report.files.len(), 1);
        common::assert_same_tree(&theirs, &ours);
    }
}
