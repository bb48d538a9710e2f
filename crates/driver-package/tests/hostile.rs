//! Hostile packages are refused with an error naming the entry and the rule, and nothing is written
//! outside the target directory (in fact nothing at all: the staging directory is removed). The debs
//! are assembled here with the `tar` and `ar` crates from raw headers (so no writer-side validation
//! gets in the way); the rpms come from the real `rpmbuild` or from byte-patching a valid rpm.

mod common;

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use driver_package::{Compression, ExtractOptions, Limits, ReadError, Rule, Selection};

/// One raw tar member.
struct Member {
    name: &'static str,
    kind: tar::EntryType,
    link: Option<&'static str>,
    data: Box<dyn Read>,
    size: u64,
}

fn file(name: &'static str, data: &'static [u8]) -> Member {
    Member {
        name,
        kind: tar::EntryType::Regular,
        link: None,
        data: Box::new(data),
        size: data.len() as u64,
    }
}

fn dir(name: &'static str) -> Member {
    Member {
        name,
        kind: tar::EntryType::Directory,
        link: None,
        data: Box::new(io::empty()),
        size: 0,
    }
}

fn link(name: &'static str, kind: tar::EntryType, target: &'static str) -> Member {
    Member {
        name,
        kind,
        link: Some(target),
        data: Box::new(io::empty()),
        size: 0,
    }
}

/// A tar stream from raw members, written into `out` (names are copied byte for byte).
fn write_tar(members: Vec<Member>, out: impl Write) -> impl Write {
    let mut builder = tar::Builder::new(out);
    for mut member in members {
        let mut header = tar::Header::new_gnu();
        let raw = header.as_old_mut();
        raw.name[..member.name.len()].copy_from_slice(member.name.as_bytes());
        if let Some(target) = member.link {
            raw.linkname[..target.len()].copy_from_slice(target.as_bytes());
        }
        header.set_entry_type(member.kind);
        header.set_mode(if member.kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        if matches!(member.kind, tar::EntryType::Char | tar::EntryType::Block) {
            header.set_device_major(1).expect("gnu header");
            header.set_device_minor(3).expect("gnu header");
        }
        header.set_size(member.size);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder
            .append(&header, &mut member.data)
            .expect("tar member");
    }
    builder.into_inner().expect("tar finish")
}

fn tar_bytes(members: Vec<Member>) -> Vec<u8> {
    let mut out = Vec::new();
    write_tar(members, &mut out);
    out
}

fn compress(compression: Compression, data: &[u8]) -> Vec<u8> {
    match compression {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(data).expect("gzip");
            enc.finish().expect("gzip")
        }
        Compression::Xz => {
            let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
            enc.write_all(data).expect("xz");
            enc.finish().expect("xz")
        }
        Compression::Zstd => zstd::encode_all(data, 3).expect("zstd"),
    }
}

/// A .deb with the given data member (name and already-compressed bytes).
fn deb(data_name: &str, data: Vec<u8>) -> Vec<u8> {
    let control = compress(
        Compression::Gzip,
        &tar_bytes(vec![file(
            "./control",
            b"Package: hostile\nVersion: 1\nArchitecture: all\nMaintainer: X <x@example.com>\nDescription: x\n",
        )]),
    );
    let mut ar = ar::Builder::new(Vec::new());
    for (name, bytes) in [
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar.gz", control),
        (data_name, data),
    ] {
        let mut header = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
        header.set_mode(0o100644);
        ar.append(&header, bytes.as_slice()).expect("ar member");
    }
    ar.into_inner().expect("ar finish")
}

fn deb_of(members: Vec<Member>) -> Vec<u8> {
    deb(
        "data.tar.xz",
        compress(Compression::Xz, &tar_bytes(members)),
    )
}

/// Extracts `package` into `<fresh parent>/out` and asserts it is refused and the parent stays empty.
fn assert_refused(package: &[u8], file_name: &str, options: &ExtractOptions) -> ReadError {
    let packages = tempfile::tempdir().expect("tempdir");
    let path = packages.path().join(file_name);
    std::fs::write(&path, package).expect("write package");
    assert_refused_path(&path, options)
}

fn assert_refused_path(path: &Path, options: &ExtractOptions) -> ReadError {
    let parent = tempfile::tempdir().expect("tempdir");
    let target = parent.path().join("out");
    let err = driver_package::extract(path, &target, options)
        .expect_err("hostile package must be refused");
    let left: Vec<PathBuf> = common::all_paths(parent.path());
    assert!(
        left.is_empty(),
        "refused extraction left files behind: {left:?} ({err})"
    );
    // The listing applies the same rules (except size/ratio limits that need the data).
    err
}

fn rule(err: &ReadError) -> Rule {
    err.refusal()
        .unwrap_or_else(|| panic!("expected a refusal, got: {err}"))
        .rule
        .clone()
}

fn defaults() -> ExtractOptions {
    ExtractOptions::default()
}

#[test]
fn traversal_is_refused() {
    let err = assert_refused(
        &deb_of(vec![dir("./"), file("./../escape.txt", b"pwned")]),
        "a.deb",
        &defaults(),
    );
    assert_eq!(rule(&err), Rule::ParentComponent);
    assert!(err.to_string().contains("./../escape.txt"), "{err}");
}

#[test]
fn absolute_path_is_refused() {
    let err = assert_refused(
        &deb_of(vec![file("/tmp/driver-package-abs.txt", b"pwned")]),
        "a.deb",
        &defaults(),
    );
    assert_eq!(rule(&err), Rule::AbsolutePath);
    assert!(!Path::new("/tmp/driver-package-abs.txt").exists());
}

#[test]
fn symlink_escape_is_refused() {
    let err = assert_refused(
        &deb_of(vec![
            link("./evil", tar::EntryType::Symlink, "../.."),
            file("./evil/escape.txt", b"pwned"),
        ]),
        "a.deb",
        &defaults(),
    );
    assert!(matches!(rule(&err), Rule::SymlinkEscapes { .. }), "{err}");
}

#[test]
fn symlink_chain_escape_is_refused() {
    // Each link looks harmless on its own; together x/y/w resolves above the root.
    let err = assert_refused(
        &deb_of(vec![
            dir("./x/"),
            dir("./x/y/"),
            link("./x/y/w", tar::EntryType::Symlink, "s2/../.."),
            link("./x/y/s2", tar::EntryType::Symlink, "../.."),
        ]),
        "a.deb",
        &defaults(),
    );
    assert!(matches!(rule(&err), Rule::SymlinkEscapes { .. }), "{err}");
}

#[test]
fn writing_through_an_in_tree_symlink_is_refused() {
    let err = assert_refused(
        &deb_of(vec![
            dir("./real/"),
            link("./alias", tar::EntryType::Symlink, "real"),
            file("./alias/file", b"x"),
        ]),
        "a.deb",
        &defaults(),
    );
    assert!(
        matches!(rule(&err), Rule::ParentNotDirectory { .. }),
        "{err}"
    );
}

#[test]
fn hardlink_escape_is_refused() {
    for target in ["../../etc/passwd", "/etc/passwd"] {
        let err = assert_refused(
            &deb_of(vec![link("./passwd", tar::EntryType::Link, target)]),
            "a.deb",
            &defaults(),
        );
        assert!(
            matches!(rule(&err), Rule::HardlinkEscapes { .. }),
            "{target}: {err}"
        );
    }
    // A hardlink to something that is not an earlier regular file of the archive.
    let err = assert_refused(
        &deb_of(vec![link("./passwd", tar::EntryType::Link, "./etc/passwd")]),
        "a.deb",
        &defaults(),
    );
    assert!(
        matches!(rule(&err), Rule::HardlinkTargetMissing { .. }),
        "{err}"
    );
}

#[test]
fn device_nodes_and_fifos_are_refused() {
    for kind in [
        tar::EntryType::Char,
        tar::EntryType::Block,
        tar::EntryType::Fifo,
    ] {
        let err = assert_refused(
            &deb_of(vec![Member {
                name: "./dev/node",
                kind,
                link: None,
                data: Box::new(io::empty()),
                size: 0,
            }]),
            "a.deb",
            &defaults(),
        );
        assert!(
            matches!(rule(&err), Rule::SpecialFile { .. }),
            "{kind:?}: {err}"
        );
    }
}

#[test]
fn oversize_entries_and_totals_are_refused() {
    let limits = |entry, total| ExtractOptions {
        limits: Limits {
            max_entry_bytes: entry,
            max_total_bytes: total,
            ..Limits::default()
        },
        selection: Selection::All,
    };
    let big = vec![7u8; 300_000];
    let big: &'static [u8] = Box::leak(big.into_boxed_slice());
    let err = assert_refused(
        &deb_of(vec![file("./big", big)]),
        "a.deb",
        &limits(100_000, 1 << 30),
    );
    assert_eq!(
        rule(&err),
        Rule::EntryTooLarge {
            size: 300_000,
            limit: 100_000
        }
    );
    let err = assert_refused(
        &deb_of(vec![file("./a", big), file("./b", big)]),
        "a.deb",
        &limits(1 << 20, 500_000),
    );
    assert_eq!(rule(&err), Rule::TotalTooLarge { limit: 500_000 });
}

/// A .deb whose zstd data.tar holds one entry `name` of 256 MiB of zeros: about 10 KB, streamed into
/// the encoder, never held.
fn zstd_bomb(name: &'static str) -> Vec<u8> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd");
    let members = vec![Member {
        name,
        kind: tar::EntryType::Regular,
        link: None,
        data: Box::new(io::repeat(0).take(256 << 20)),
        size: 256 << 20,
    }];
    write_tar(members, &mut encoder);
    let data = encoder.finish().expect("zstd finish");
    assert!(data.len() < 1 << 20, "bomb is small: {}", data.len());
    deb("data.tar.zst", data)
}

#[test]
fn decompression_bomb_is_refused_by_ratio_not_oom() {
    // Default limits: the entry is within the per-entry limit, the ratio rule stops it.
    let err = assert_refused(&zstd_bomb("./zeros"), "bomb.deb", &defaults());
    assert!(matches!(rule(&err), Rule::ExpansionRatio { .. }), "{err}");
}

#[test]
fn duplicate_entries_are_refused() {
    let err = assert_refused(
        &deb_of(vec![file("./a.ko", b"first"), file("a.ko", b"second")]),
        "a.deb",
        &defaults(),
    );
    assert_eq!(rule(&err), Rule::Duplicate);
}

#[test]
fn truncated_packages_are_refused() {
    let valid = deb_of(vec![
        dir("./"),
        file("./lib/a.ko", &[1u8; 50_000]),
        file("./lib/b.ko", &[2u8; 50_000]),
    ]);
    for cut in [valid.len() - 1, valid.len() * 3 / 4, valid.len() / 2, 100] {
        let err = assert_refused(&valid[..cut], "cut.deb", &defaults());
        assert!(
            matches!(err, ReadError::Truncated { .. } | ReadError::Corrupt { .. }),
            "cut at {cut}: {err}"
        );
    }
    // An uncompressed data.tar whose ar member is intact but whose tar lacks the end-of-archive block.
    let mut tar = tar_bytes(vec![file("./a.ko", b"module")]);
    tar.truncate(1024);
    let err = assert_refused(&deb("data.tar", tar), "noeof.deb", &defaults());
    assert!(matches!(err, ReadError::Truncated { .. }), "{err}");
}

#[test]
fn wrong_compression_is_refused() {
    let tar = tar_bytes(vec![file("./a.ko", b"module")]);
    for (name, compression) in [
        ("data.tar.xz", Compression::Gzip),
        ("data.tar.zst", Compression::Xz),
        ("data.tar.gz", Compression::Zstd),
        ("data.tar", Compression::Gzip),
    ] {
        let err = assert_refused(
            &deb(name, compress(compression, &tar)),
            "w.deb",
            &defaults(),
        );
        assert!(
            matches!(err, ReadError::CompressionMismatch { .. }),
            "{name}: {err}"
        );
    }
    let err = assert_refused(&deb("data.tar.bz2", b"BZh9".to_vec()), "w.deb", &defaults());
    assert!(
        matches!(err, ReadError::UnsupportedCompression { .. }),
        "{err}"
    );
    // Garbage behind a correct magic: corrupt stream, not a silent empty package.
    let mut garbage = compress(Compression::Xz, &tar);
    let middle = garbage.len() / 2;
    garbage[middle] ^= 0xff;
    let err = assert_refused(&deb("data.tar.xz", garbage), "w.deb", &defaults());
    assert!(
        matches!(err, ReadError::Corrupt { .. } | ReadError::Truncated { .. }),
        "{err}"
    );
}

#[test]
fn file_used_as_directory_is_refused() {
    let err = assert_refused(
        &deb_of(vec![file("./a", b"file"), file("./a/b", b"under a file")]),
        "a.deb",
        &defaults(),
    );
    assert!(
        matches!(rule(&err), Rule::ParentNotDirectory { .. }),
        "{err}"
    );
}

#[test]
fn not_a_package_and_non_empty_target_are_refused() {
    let err = assert_refused(b"#!/bin/sh\necho hi\n", "script.deb", &defaults());
    assert!(matches!(err, ReadError::NotAPackage { .. }), "{err}");
    let packages = tempfile::tempdir().expect("tempdir");
    let path = packages.path().join("ok.deb");
    std::fs::write(&path, deb_of(vec![file("./a.ko", b"x")])).expect("write");
    let parent = tempfile::tempdir().expect("tempdir");
    let target = parent.path().join("out");
    std::fs::create_dir(&target).expect("target");
    std::fs::write(target.join("keep"), b"precious").expect("existing file");
    let err = driver_package::extract(&path, &target, &defaults()).expect_err("non-empty target");
    assert!(matches!(err, ReadError::TargetNotEmpty { .. }), "{err}");
    assert_eq!(
        std::fs::read(target.join("keep")).expect("kept"),
        b"precious"
    );
}

#[test]
fn hostile_entries_are_refused_by_listing_too() {
    let packages = tempfile::tempdir().expect("tempdir");
    let path = packages.path().join("a.deb");
    std::fs::write(&path, deb_of(vec![file("./../x", b"x")])).expect("write");
    let err = driver_package::list(&path, &Limits::default()).expect_err("listing refuses too");
    assert_eq!(rule(&err), Rule::ParentComponent);
}

/// Builds an rpm with the real rpmbuild from `%install` commands and a `%files` list.
fn rpmbuild(name: &str, install: &str, files: &str) -> (tempfile::TempDir, PathBuf) {
    let top = tempfile::tempdir().expect("topdir");
    let spec = top.path().join(format!("{name}.spec"));
    std::fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: 1\nRelease: 1\nSummary: hostile test package\nLicense: MIT\nBuildArch: noarch\n\
             %global debug_package %{{nil}}\n%global __os_install_post %{{nil}}\n\
             %description\nhostile test package\n%install\n{install}\n%files\n{files}\n"
        ),
    )
    .expect("spec");
    common::run(
        Command::new("rpmbuild")
            .arg("-bb")
            .arg("--quiet")
            .arg("--define")
            .arg("_binary_payload w9.gzdio")
            .arg("--define")
            .arg(format!("_topdir {}", top.path().display()))
            .arg(&spec),
    );
    let rpm = top
        .path()
        .join(format!("RPMS/noarch/{name}-1-1.noarch.rpm"));
    assert!(rpm.exists());
    (top, rpm)
}

#[test]
fn rpm_device_node_is_refused() {
    let (_top, rpm) = rpmbuild(
        "devnode",
        "mkdir -p %{buildroot}/dev",
        "%dev(c,1,3) /dev/mynull",
    );
    let err = assert_refused_path(&rpm, &defaults());
    assert!(matches!(rule(&err), Rule::SpecialFile { .. }), "{err}");
}

#[test]
fn rpm_symlink_escape_is_refused() {
    let (_top, rpm) = rpmbuild(
        "symescape",
        "mkdir -p %{buildroot}/opt/x && ln -s ../../../../../../../etc/shadow %{buildroot}/opt/x/shadow",
        "/opt/x/shadow",
    );
    let err = assert_refused_path(&rpm, &defaults());
    assert!(matches!(rule(&err), Rule::SymlinkEscapes { .. }), "{err}");
}

#[test]
fn rpm_truncated_and_mislabelled_payloads_are_refused() {
    let (_top, rpm) = rpmbuild(
        "plain",
        "mkdir -p %{buildroot}/opt && head -c 200000 /dev/urandom > %{buildroot}/opt/blob.ko",
        "/opt/blob.ko",
    );
    let bytes = std::fs::read(&rpm).expect("rpm");
    for cut in [bytes.len() - 1, bytes.len() - 5000, bytes.len() / 2] {
        let err = assert_refused(&bytes[..cut], "cut.rpm", &defaults());
        assert!(
            matches!(
                err,
                ReadError::Truncated { .. }
                    | ReadError::Corrupt { .. }
                    | ReadError::Malformed { .. }
            ),
            "cut at {cut}: {err}"
        );
    }
    // The header says one compressor, the payload bytes are another.
    let at = bytes
        .windows(5)
        .position(|w| w == b"gzip\0")
        .expect("payload compressor tag in the header");
    let mut patched = bytes.clone();
    patched[at..at + 4].copy_from_slice(b"zstd");
    let err = assert_refused(&patched, "mislabelled.rpm", &defaults());
    assert!(
        matches!(err, ReadError::CompressionMismatch { .. }),
        "{err}"
    );
}

/// Reads `package`'s kernel modules into memory and asserts it is refused.
fn assert_modules_refused(package: &[u8], limits: &Limits) -> ReadError {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.deb");
    std::fs::write(&path, package).expect("write package");
    driver_package::read_kernel_modules(&path, limits)
        .expect_err("hostile package must be refused when its modules are read into memory")
}

#[test]
fn modules_read_into_memory_pass_the_same_checks_as_extraction() {
    let limits = Limits::default();
    /// A hostile package and the rule it must be refused by.
    type Case = (Vec<u8>, fn(&Rule) -> bool);
    let cases: Vec<Case> = vec![
        (deb_of(vec![file("./../escape.ko", b"x")]), |r| {
            *r == Rule::ParentComponent
        }),
        (deb_of(vec![file("/lib/abs.ko", b"x")]), |r| {
            *r == Rule::AbsolutePath
        }),
        (
            deb_of(vec![file("./a.ko", b"first"), file("a.ko", b"second")]),
            |r| *r == Rule::Duplicate,
        ),
        (
            deb_of(vec![
                link("./evil", tar::EntryType::Symlink, "../.."),
                file("./lib/a.ko", b"x"),
            ]),
            |r| matches!(r, Rule::SymlinkEscapes { .. }),
        ),
        (
            deb_of(vec![link("./lib/a.ko", tar::EntryType::Link, "./lib/b.ko")]),
            |r| matches!(r, Rule::HardlinkTargetMissing { .. }),
        ),
        (
            deb_of(vec![Member {
                name: "./dev/node",
                kind: tar::EntryType::Char,
                link: None,
                data: Box::new(io::empty()),
                size: 0,
            }]),
            |r| matches!(r, Rule::SpecialFile { .. }),
        ),
    ];
    for (package, expected) in cases {
        let in_memory = assert_modules_refused(&package, &limits);
        assert!(expected(&rule(&in_memory)), "{in_memory}");
        let extracted = assert_refused(
            &package,
            "a.deb",
            &ExtractOptions {
                limits: limits.clone(),
                selection: Selection::KernelModules,
            },
        );
        assert_eq!(
            rule(&in_memory),
            rule(&extracted),
            "{in_memory} / {extracted}"
        );
    }
    // Sizes: the per-entry limit, and a truncated module.
    let big: &'static [u8] = Box::leak(vec![7u8; 300_000].into_boxed_slice());
    let err = assert_modules_refused(
        &deb_of(vec![file("./big.ko", big)]),
        &Limits {
            max_entry_bytes: 100_000,
            ..Limits::default()
        },
    );
    assert_eq!(
        rule(&err),
        Rule::EntryTooLarge {
            size: 300_000,
            limit: 100_000
        }
    );
    let valid = deb_of(vec![file("./lib/a.ko", &[1u8; 50_000])]);
    let err = assert_modules_refused(&valid[..valid.len() / 2], &limits);
    assert!(
        matches!(err, ReadError::Truncated { .. } | ReadError::Corrupt { .. }),
        "{err}"
    );
}

#[test]
fn a_module_bomb_read_into_memory_stops_at_the_ratio_not_at_the_end() {
    let err = assert_modules_refused(&zstd_bomb("./zeros.ko"), &Limits::default());
    assert!(matches!(rule(&err), Rule::ExpansionRatio { .. }), "{err}");
}

#[test]
fn modules_read_into_memory_are_the_bytes_extraction_writes() {
    let package = deb_of(vec![
        dir("./"),
        dir("./lib/"),
        file("./lib/a.ko", b"module a"),
        file("./lib/readme", b"not a module"),
        file("./lib/b.ko.xz", b"module b, stored as is"),
        link("./lib/c.ko", tar::EntryType::Link, "./lib/a.ko"),
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.deb");
    std::fs::write(&path, &package).expect("write");
    let modules = driver_package::read_kernel_modules(&path, &Limits::default()).expect("read");
    let target = dir.path().join("out");
    let report = driver_package::extract(
        &path,
        &target,
        &ExtractOptions {
            limits: Limits::default(),
            selection: Selection::KernelModules,
        },
    )
    .expect("extract");
    let paths: Vec<&Path> = modules.iter().map(|m| m.path.as_path()).collect();
    assert_eq!(
        paths,
        report
            .files
            .iter()
            .map(PathBuf::as_path)
            .collect::<Vec<_>>()
    );
    for module in &modules {
        assert_eq!(
            module.bytes,
            std::fs::read(target.join(&module.path)).expect("extracted"),
            "{}",
            module.path.display()
        );
    }
}
