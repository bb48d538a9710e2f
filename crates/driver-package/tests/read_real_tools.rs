//! The reader against packages made by the real tools: RPMs from `rpmbuild` with gzip, xz and zstd
//! payloads must extract exactly like `rpm2cpio | cpio -idm`, and debs from `dpkg-deb --build` with
//! every `-Z` compression exactly like `dpkg-deb -x` (paths, types, modes, bytes, symlink targets,
//! hard links, long names).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, sh};
use driver_package::{ExtractOptions, Limits, Selection};

/// Fills `root` with the shapes a package can hold: nested dirs, modes, an empty file, a larger
/// binary-ish file, kernel modules, relative and absolute symlinks, a hard link, a >100-byte path.
fn populate(root: &Path) {
    let modules = root.join("lib/modules/6.1.0-47-amd64/updates/example-driver");
    fs::create_dir_all(&modules).expect("mkdir");
    fs::create_dir_all(root.join("usr/share/demo/empty-dir")).expect("mkdir");
    fs::write(modules.join("example_driver.ko"), b"\x7fELF pretend module").expect("write");
    let big: Vec<u8> = (0..400_000u32)
        .flat_map(|i| (i.wrapping_mul(2_654_435_761)).to_le_bytes())
        .collect();
    fs::write(modules.join("helper.ko"), &big).expect("write");
    fs::write(root.join("usr/share/demo/empty"), b"").expect("write");
    fs::write(root.join("usr/share/demo/tool"), b"#!/bin/sh\necho demo\n").expect("write");
    fs::set_permissions(
        root.join("usr/share/demo/tool"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    fs::set_permissions(
        root.join("usr/share/demo/empty"),
        fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    std::os::unix::fs::symlink(
        "../../lib/modules",
        root.join("usr/share/demo/modules-link"),
    )
    .expect("symlink");
    std::os::unix::fs::symlink(
        "/usr/share/demo/tool",
        root.join("usr/share/demo/absolute-link"),
    )
    .expect("symlink");
    fs::hard_link(
        root.join("usr/share/demo/tool"),
        root.join("usr/share/demo/tool-hardlink"),
    )
    .expect("hardlink");
    let long = root.join(format!(
        "usr/share/demo/{}",
        "long-directory-name-".repeat(6)
    ));
    fs::create_dir_all(&long).expect("mkdir");
    fs::write(long.join("file-with-a-long-path.txt"), b"long path").expect("write");
}

fn rpm_spec(name: &str) -> String {
    format!(
        "Name: {name}\nVersion: 1.0\nRelease: 1\nSummary: reader test package\nLicense: MIT\nBuildArch: noarch\n\
         %global debug_package %{{nil}}\n%global __os_install_post %{{nil}}\n\
         %description\nReader test package.\n\
         %install\ncp -a %{{_sourcedir}}/tree/. %{{buildroot}}/\n\
         %files\n%defattr(-,root,root,-)\n/lib/modules/6.1.0-47-amd64/updates/example-driver\n/usr/share/demo\n"
    )
}

#[test]
fn rpmbuild_payloads_extract_like_rpm2cpio() {
    for (payload, compressor) in [
        ("w9.gzdio", "gzip"),
        ("w6.xzdio", "xz"),
        ("w19.zstdio", "zstd"),
    ] {
        let top = tempfile::tempdir().expect("topdir");
        populate(&top.path().join("SOURCES/tree"));
        let spec = top.path().join("reader.spec");
        fs::write(&spec, rpm_spec("reader")).expect("spec");
        run(Command::new("rpmbuild")
            .arg("-bb")
            .arg("--quiet")
            .arg("--define")
            .arg(format!("_topdir {}", top.path().display()))
            .arg("--define")
            .arg(format!("_binary_payload {payload}"))
            .arg(&spec));
        let rpm = top.path().join("RPMS/noarch/reader-1.0-1.noarch.rpm");
        let qf = run(Command::new("rpm")
            .args(["-qp", "--qf", "%{PAYLOADCOMPRESSOR}"])
            .arg(&rpm));
        assert_eq!(qf, compressor);

        let theirs = top.path().join("theirs");
        fs::create_dir(&theirs).expect("mkdir");
        sh(&format!(
            "cd '{}' && rpm2cpio '{}' | cpio -idm --quiet",
            theirs.display(),
            rpm.display()
        ));
        let ours = top.path().join("ours");
        let report =
            driver_package::extract(&rpm, &ours, &ExtractOptions::default()).expect(compressor);
        assert_eq!(report.format, driver_package::PackageFormat::Rpm);
        common::assert_same_tree(&theirs, &ours);
        // The hard link set is still one inode, as cpio leaves it.
        let a = fs::metadata(ours.join("usr/share/demo/tool")).expect("tool");
        let b = fs::metadata(ours.join("usr/share/demo/tool-hardlink")).expect("hardlink");
        assert_eq!(a.ino(), b.ino(), "{compressor}: hard link preserved");

        let modules = top.path().join("modules");
        let options = ExtractOptions {
            limits: Limits::default(),
            selection: Selection::KernelModules,
        };
        let report = driver_package::extract(&rpm, &modules, &options).expect("ko only");
        let mut files: Vec<_> = report
            .files
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "lib/modules/6.1.0-47-amd64/updates/example-driver/example_driver.ko",
                "lib/modules/6.1.0-47-amd64/updates/example-driver/helper.ko"
            ]
        );
        assert!(
            !modules.join("usr").exists(),
            "ko-only extraction skips other files"
        );
    }
}

/// `dir/tree`: the populated tree with a DEBIAN/control, ready for `dpkg-deb --build`.
fn package_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    populate(&tree);
    fs::create_dir_all(tree.join("DEBIAN")).expect("mkdir");
    fs::write(
        tree.join("DEBIAN/control"),
        "Package: reader-test\nVersion: 1.0\nArchitecture: all\nMaintainer: Test <test@example.com>\n\
         Description: reader test package\n",
    )
    .expect("control");
    tree
}

#[test]
fn dpkg_deb_builds_extract_like_dpkg_deb_x() {
    for compression in ["gzip", "xz", "zstd", "none"] {
        let work = tempfile::tempdir().expect("tempdir");
        let tree = package_tree(work.path());
        let deb = work.path().join("reader.deb");
        run(Command::new("dpkg-deb")
            .arg("--root-owner-group")
            .arg(format!("-Z{compression}"))
            .arg("--build")
            .arg(&tree)
            .arg(&deb));
        let theirs = work.path().join("theirs");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&theirs));
        let ours = work.path().join("ours");
        let report =
            driver_package::extract(&deb, &ours, &ExtractOptions::default()).expect(compression);
        assert_eq!(report.format, driver_package::PackageFormat::Deb);
        common::assert_same_tree(&theirs, &ours);

        // Listing agrees with dpkg-deb --contents (which also lists the root "./").
        let listed = driver_package::list(&deb, &Limits::default()).expect("list");
        let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
        assert_eq!(listed.len() + 1, contents.lines().count(), "{compression}");
    }
}

/// A .deb rebuilt with `ar` from dpkg-deb's members, its data.tar recompressed by `xz` with `xz_args`.
fn deb_with_xz(work: &Path, name: &str, tar: &Path, control: &Path, xz_args: &str) -> PathBuf {
    let dir = work.join(name);
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join("debian-binary"), "2.0\n").expect("debian-binary");
    fs::copy(control, dir.join("control.tar.xz")).expect("control");
    sh(&format!(
        "xz {xz_args} -c '{}' > '{}'",
        tar.display(),
        dir.join("data.tar.xz").display()
    ));
    let deb = work.join(format!("{name}.deb"));
    run(Command::new("ar")
        .arg("qc")
        .arg(&deb)
        .arg("debian-binary")
        .arg("control.tar.xz")
        .arg("data.tar.xz")
        .current_dir(&dir));
    deb
}

#[test]
fn multi_block_xz_extracts_like_single_block_and_dpkg_deb_x() {
    let work = tempfile::tempdir().expect("tempdir");
    let tree = package_tree(work.path());
    let plain = work.path().join("plain.deb");
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&tree)
        .arg(&plain));
    let members = work.path().join("members");
    fs::create_dir_all(&members).expect("mkdir");
    run(Command::new("ar")
        .arg("x")
        .arg(&plain)
        .current_dir(&members));
    let tar = members.join("data.tar");
    sh(&format!(
        "xz -dc '{}' > '{}'",
        members.join("data.tar.xz").display(),
        tar.display()
    ));
    let control = members.join("control.tar.xz");
    let single = deb_with_xz(work.path(), "single", &tar, &control, "-T1");
    let multi = deb_with_xz(
        work.path(),
        "multi",
        &tar,
        &control,
        "-T2 --block-size=64KiB",
    );
    assert!(
        run(Command::new("xz")
            .args(["--robot", "--list"])
            .arg(work.path().join("multi/data.tar.xz")))
        .lines()
        .any(|l| l.starts_with("file\t1\t") && !l.starts_with("file\t1\t1\t")),
        "the test needs a multi-block stream"
    );

    let theirs = work.path().join("theirs");
    run(Command::new("dpkg-deb").arg("-x").arg(&multi).arg(&theirs));
    let streamed = work.path().join("streamed");
    driver_package::extract(&single, &streamed, &ExtractOptions::default()).expect("single block");
    let parallel = work.path().join("parallel");
    let report = driver_package::extract(&multi, &parallel, &ExtractOptions::default())
        .expect("multi block");
    common::assert_same_tree(&theirs, &parallel);
    common::assert_same_tree(&streamed, &parallel);
    if std::thread::available_parallelism().map_or(1, usize::from) >= 2 {
        assert!(report.spool_peak_bytes > 0, "decoded in parallel");
        // At most three 64 KiB blocks ahead of the tar reader.
        assert!(
            report.spool_peak_bytes <= 3 * 64 * 1024,
            "{}",
            report.spool_peak_bytes
        );
    }

    // Damage in a later block: the same refusal as the streaming decoder (`list` streams), and
    // nothing in the target or beside it.
    let bytes = fs::read(&multi).expect("read");
    let data_at = bytes.len()
        - fs::metadata(work.path().join("multi/data.tar.xz"))
            .expect("stat")
            .len() as usize;
    let mut bad = bytes.clone();
    let at = data_at + (bytes.len() - data_at) * 3 / 4;
    bad[at] ^= 0x40;
    let damaged = work.path().join("damaged/pkg.deb");
    fs::create_dir_all(damaged.parent().expect("parent")).expect("mkdir");
    fs::write(&damaged, &bad).expect("write");
    let streaming_err = driver_package::list(&damaged, &Limits::default()).expect_err("damaged");
    let target = work.path().join("damaged/out");
    let err = driver_package::extract(&damaged, &target, &ExtractOptions::default())
        .expect_err("damaged");
    assert_eq!(
        std::mem::discriminant(&err),
        std::mem::discriminant(&streaming_err),
        "{err} / {streaming_err}"
    );
    assert!(
        matches!(err, driver_package::ReadError::Corrupt { .. }),
        "{err}"
    );
    assert!(!target.exists());
    assert_eq!(
        common::all_paths(&work.path().join("damaged")),
        vec![PathBuf::from("pkg.deb")]
    );
}
