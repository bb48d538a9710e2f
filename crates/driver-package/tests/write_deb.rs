//! .deb packages written by this crate, checked with the real Debian tools: dpkg-deb shows the right
//! metadata (the source commit included) and paths, lintian finds no errors, dpkg installs into a scratch root and its postinst
//! builds that root's module index with depmod, and dpkg-deb -x agrees with our own reader.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{KERNEL_RELEASE, SOURCE_COMMIT, driver, driver_spec, identity, real_module, run};
use driver_package::{
    Compression, DEB_SOURCE_COMMIT_FIELD, ExtractOptions, PackageFormat, WriteOptions,
    write_package_file,
};

fn write_sample(dir: &Path, compression: Compression) -> (std::path::PathBuf, String) {
    let identity = identity("debian", "12", KERNEL_RELEASE);
    let spec = driver_spec(&identity, real_module());
    let file_name = identity.package_file_name(&driver());
    let path = write_package_file(&spec, WriteOptions { compression }, dir, &file_name)
        .expect("deb written");
    (path, identity.package_name(&driver()))
}

#[test]
fn dpkg_deb_shows_name_version_arch_and_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (deb, name) = write_sample(dir.path(), Compression::Xz);
    let field = |f: &str| {
        run(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(f))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), name);
    assert_eq!(field("Version"), "0.1.2");
    assert_eq!(field("Architecture"), "amd64");
    assert_eq!(field("Section"), "kernel");
    assert_eq!(field(DEB_SOURCE_COMMIT_FIELD), SOURCE_COMMIT);
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(
        info.contains("postinst") && info.contains("postrm") && info.contains("md5sums"),
        "{info}"
    );
    assert!(
        info.contains(KERNEL_RELEASE),
        "description names the kernel: {info}"
    );
    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let module_line = contents
        .lines()
        .find(|l| {
            l.ends_with(&format!(
                "./lib/modules/{KERNEL_RELEASE}/updates/example-driver/example_driver.ko"
            ))
        })
        .unwrap_or_else(|| panic!("module path missing from:\n{contents}"));
    assert!(
        module_line.starts_with("-rw-r--r-- root/root"),
        "{module_line}"
    );
    for dir in [
        "./lib/",
        "./lib/modules/",
        &format!("./lib/modules/{KERNEL_RELEASE}/updates/"),
    ] {
        assert!(
            contents
                .lines()
                .any(|l| l.starts_with('d') && l.ends_with(dir)),
            "{dir} missing:\n{contents}"
        );
    }
    // ar members in deb(5) order.
    let members = run(Command::new("ar").arg("t").arg(&deb));
    assert_eq!(members, "debian-binary\ncontrol.tar.gz\ndata.tar.xz\n");
}

#[test]
fn every_data_compression_is_readable_by_dpkg_deb() {
    for compression in [
        Compression::None,
        Compression::Gzip,
        Compression::Xz,
        Compression::Zstd,
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (deb, _) = write_sample(dir.path(), compression);
        let ours = dir.path().join("ours");
        let theirs = dir.path().join("theirs");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&theirs));
        driver_package::extract(&deb, &ours, &ExtractOptions::default())
            .expect("our reader reads our deb");
        common::assert_same_tree(&theirs, &ours);
    }
}

#[test]
fn the_source_commit_is_a_control_field_dpkg_and_our_reader_agree_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (deb, name) = write_sample(dir.path(), Compression::Xz);
    let shown = run(Command::new("dpkg-deb")
        .arg("--field")
        .arg(&deb)
        .arg("Package")
        .arg("Version")
        .arg("Architecture")
        .arg(DEB_SOURCE_COMMIT_FIELD));
    assert_eq!(
        shown,
        format!(
            "Package: {name}\nVersion: 0.1.2\nArchitecture: amd64\n\
             {DEB_SOURCE_COMMIT_FIELD}: {SOURCE_COMMIT}\n"
        )
    );
    let metadata = driver_package::read_metadata(&deb).expect("metadata");
    assert_eq!(metadata.format, PackageFormat::Deb);
    assert_eq!(metadata.name, name);
    assert_eq!(metadata.version, "0.1.2");
    assert_eq!(metadata.architecture, "amd64");
    assert_eq!(metadata.source_commit.as_deref(), Some(SOURCE_COMMIT));

    // Without a commit there is no field at all.
    let mut spec = driver_spec(&identity("debian", "12", KERNEL_RELEASE), real_module());
    spec.source_commit = None;
    let plain = write_package_file(
        &spec,
        WriteOptions::default_for(spec.format),
        dir.path(),
        "plain.deb",
    )
    .expect("deb written");
    let control = run(Command::new("dpkg-deb").arg("--field").arg(&plain));
    assert!(!control.contains(DEB_SOURCE_COMMIT_FIELD), "{control}");
    assert_eq!(
        driver_package::read_metadata(&plain)
            .expect("metadata")
            .source_commit,
        None
    );
}

#[test]
fn our_reader_reads_metadata_of_a_real_debian_package() {
    let deb = common::real_kernel_deb();
    let metadata = driver_package::read_metadata(&deb).expect("metadata");
    let field = |f: &str| {
        run(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(f))
            .trim()
            .to_owned()
    };
    assert_eq!(metadata.name, field("Package"));
    assert_eq!(metadata.version, field("Version"));
    assert_eq!(metadata.architecture, field("Architecture"));
    assert_eq!(metadata.source_commit, None);
}

#[test]
fn lintian_reports_no_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (deb, name) = write_sample(dir.path(), Compression::Xz);
    let output = Command::new("lintian")
        .arg("--no-cfg")
        .arg(&deb)
        .output()
        .expect("lintian runs");
    let report = String::from_utf8_lossy(&output.stdout);
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(
        errors.is_empty(),
        "lintian errors:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // lintian exits non-zero only for errors (at its default fail-on level).
    assert!(output.status.success(), "lintian failed:\n{report}");
    // Debian has no binary-package field for a source commit, so ours is unknown to lintian: a
    // warning, and the only one (there were none before the field was added).
    let warnings: Vec<&str> = report.lines().filter(|l| l.starts_with("W:")).collect();
    let expected = format!("W: {name}: unknown-field {DEB_SOURCE_COMMIT_FIELD}");
    assert_eq!(warnings, [expected.as_str()], "lintian warnings:\n{report}");
}

#[test]
fn dpkg_installs_into_a_root_and_runs_depmod_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (deb, name) = write_sample(dir.path(), Compression::Zstd);
    let root = dir.path().join("root");
    for sub in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        fs::create_dir_all(root.join(sub)).expect("dpkg admin dir");
    }
    fs::write(root.join("var/lib/dpkg/status"), "").expect("status file");
    fs::write(root.join("var/lib/dpkg/available"), "").expect("available file");
    // Scripts run on the host with DPKG_ROOT set (there is no shell inside the scratch root), which is
    // exactly what the postinst's depmod -b "$DPKG_ROOT" is for.
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg("--force-script-chrootless")
        .arg("--force-not-root")
        .arg("--log=/dev/null")
        .arg("-i")
        .arg(&deb));
    let module_dir = root.join(format!("lib/modules/{KERNEL_RELEASE}"));
    let module = module_dir.join("updates/example-driver/example_driver.ko");
    assert_eq!(fs::read(&module).expect("module installed"), real_module());
    let modules_dep = fs::read_to_string(module_dir.join("modules.dep"))
        .expect("postinst ran depmod in the root");
    assert!(
        modules_dep.contains("updates/example-driver/example_driver.ko:"),
        "{modules_dep}"
    );
    let status = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg("-s")
        .arg(&name));
    assert!(status.contains("Status: install ok installed"), "{status}");
    // dpkg keeps the commit in its database, so a host can ask which commit is installed.
    let commit = run(Command::new("dpkg-query")
        .arg(format!("--root={}", root.display()))
        .arg("-W")
        .arg(format!("-f=${{{DEB_SOURCE_COMMIT_FIELD}}}"))
        .arg(&name));
    assert_eq!(commit, SOURCE_COMMIT);

    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg("--force-script-chrootless")
        .arg("--force-not-root")
        .arg("--log=/dev/null")
        .arg("--purge")
        .arg(&name));
    assert!(!module.exists(), "module removed on purge");
    // depmod rewrites the index rather than removing it: a missing file means the postrm did
    // something else, and an index that still names the module means it did nothing.
    let modules_dep = fs::read_to_string(module_dir.join("modules.dep"))
        .expect("modules.dep still exists after purge: the postrm's depmod rewrote it");
    assert!(
        !modules_dep.contains("example_driver"),
        "postrm refreshed the index: {modules_dep}"
    );
}

#[test]
fn writing_is_deterministic_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let identity = identity("debian", "12", KERNEL_RELEASE);
    let spec = driver_spec(&identity, b"\x7fELF fake module".to_vec());
    let options = WriteOptions::default_for(spec.format);
    let a = write_package_file(&spec, options, dir.path(), "a.deb").expect("first");
    let b = write_package_file(&spec, options, dir.path(), "b.deb").expect("second");
    assert_eq!(fs::read(&a).expect("a"), fs::read(&b).expect("b"));
    let before = fs::read(&a).expect("a");
    assert!(write_package_file(&spec, options, dir.path(), "a.deb").is_err());
    assert_eq!(
        fs::read(&a).expect("a"),
        before,
        "existing artifact untouched"
    );
    let leftovers: Vec<_> = common::all_paths(dir.path());
    assert_eq!(leftovers.len(), 2, "no temporary files left: {leftovers:?}");
}
