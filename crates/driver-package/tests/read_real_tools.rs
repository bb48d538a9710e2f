//! The reader against packages made by the real tools: RPMs from `rpmbuild` with gzip, xz and zstd
//! payloads must extract exactly like `rpm2cpio | cpio -idm`, and debs from `dpkg-deb --build` with
//! every `-Z` compression exactly like `dpkg-deb -x` (paths, types, modes, bytes, symlink targets,
//! hard links, long names).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
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

#[test]
fn dpkg_deb_builds_extract_like_dpkg_deb_x() {
    for compression in ["gzip", "xz", "zstd", "none"] {
        let work = tempfile::tempdir().expect("tempdir");
        let tree = work.path().join("tree");
        populate(&tree);
        fs::create_dir_all(tree.join("DEBIAN")).expect("mkdir");
        fs::write(
            tree.join("DEBIAN/control"),
            "Package: reader-test\nVersion: 1.0\nArchitecture: all\nMaintainer: Test <test@example.com>\n\
             Description: reader test package\n",
        )
        .expect("control");
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
