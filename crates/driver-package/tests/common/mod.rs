//! Helpers shared by the integration tests: running real tools, the cached real Debian kernel package
//! (downloaded once with apt under a lock), sample driver specs, and tree snapshots for comparing what
//! this crate extracts with what dpkg-deb / cpio extract.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use driver_package::{FileContent, PackageSpec};
use kernel_id::{
    Arch, Distribution, DistroVersion, DriverName, DriverVersion, KernelIdentity, KernelRelease,
};

/// The real Debian kernel the tests read; its package is ~70 MB.
pub const KERNEL_RELEASE: &str = "6.1.0-47-amd64";

/// Runs a command, panicking with its output if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let output = cmd
        .output()
        .unwrap_or_else(|err| panic!("cannot run {cmd:?}: {err}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a shell pipeline with `sh -c`.
pub fn sh(script: &str) -> String {
    run(Command::new("sh").arg("-c").arg(script))
}

/// Holds an exclusive lock on a file in the cache until dropped, so parallel test processes do not
/// download or unpack the same thing twice.
pub struct CacheLock(File);

pub fn lock(name: &str) -> CacheLock {
    let dir = testkit::cache_dir().join("locks");
    fs::create_dir_all(&dir).expect("lock directory");
    let file = File::create(dir.join(format!("{name}.lock"))).expect("lock file");
    file.lock().expect("flock");
    CacheLock(file)
}

/// The real `linux-image-6.1.0-47-amd64` .deb from the Debian mirror, downloaded once into
/// `testkit::cache_dir()/debs`.
pub fn real_kernel_deb() -> PathBuf {
    let dir = testkit::cache_dir().join("debs");
    fs::create_dir_all(&dir).expect("debs cache directory");
    let _guard = lock("linux-image-deb");
    let package = format!("linux-image-{KERNEL_RELEASE}");
    let find = || {
        fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
    };
    if let Some(found) = find() {
        return found;
    }
    // Download into a scratch directory and move into place only when complete.
    let scratch = tempfile::tempdir_in(&dir).expect("scratch dir");
    run(Command::new("apt-get")
        .arg("download")
        .arg(&package)
        .current_dir(scratch.path()));
    for entry in fs::read_dir(scratch.path())
        .expect("scratch listing")
        .flatten()
    {
        fs::rename(entry.path(), dir.join(entry.file_name())).expect("move download into cache");
    }
    find().expect("apt-get download produced the package")
}

/// `dpkg-deb -x` of the real kernel package, made once and cached (the reference tree).
pub fn real_kernel_reference_tree() -> PathBuf {
    let deb = real_kernel_deb();
    let dir = testkit::cache_dir()
        .join("debs")
        .join(format!("{KERNEL_RELEASE}.dpkg-deb-x"));
    let done = dir.with_extension("complete");
    let _guard = lock("linux-image-reference");
    if done.exists() {
        return dir;
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).expect("remove partial reference tree");
    }
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir));
    File::create(&done).expect("completion marker");
    dir
}

/// A small real kernel module from the real kernel package (stripped, signed, as Debian ships it).
pub fn real_module() -> Vec<u8> {
    let tree = real_kernel_reference_tree();
    fs::read(tree.join(format!(
        "lib/modules/{KERNEL_RELEASE}/kernel/arch/x86/crypto/crc32-pclmul.ko"
    )))
    .expect("module in the reference tree")
}

pub fn identity(distribution: &str, distro_version: &str, release: &str) -> KernelIdentity {
    identity_on(Arch::X86_64, distribution, distro_version, release)
}

pub fn identity_on(
    arch: Arch,
    distribution: &str,
    distro_version: &str,
    release: &str,
) -> KernelIdentity {
    let distribution = Distribution::parse(distribution).expect("distribution");
    KernelIdentity::new(
        KernelRelease::parse(release).expect("release"),
        arch,
        DistroVersion::parse(distribution, distro_version).expect("distro version"),
        DriverVersion::parse("v0.1.2").expect("driver version"),
    )
    .expect("identity")
}

pub fn driver() -> DriverName {
    DriverName::parse("example-driver").expect("driver name")
}

/// The driver-source commit the sample packages record.
pub const SOURCE_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// The spec the builder would make for the sample driver on `identity` (with its source commit).
pub fn driver_spec(identity: &KernelIdentity, module: Vec<u8>) -> PackageSpec {
    let mut spec = PackageSpec::for_driver(
        &driver(),
        identity,
        [("example_driver.ko".to_owned(), FileContent::Bytes(module))],
    )
    .expect("valid spec");
    spec.source_commit = Some(kernel_id::SourceCommit::parse(SOURCE_COMMIT).expect("commit"));
    spec
}

/// One node of a directory tree, as compared between extractors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, size: u64 },
    Symlink { target: PathBuf },
}

/// Every path under `root` (relative) with its type, permission bits, size and link target.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut nodes = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        let entry = entry.expect("walk");
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("under root")
            .to_path_buf();
        let meta = entry.path().symlink_metadata().expect("metadata");
        let mode = meta.permissions().mode() & 0o7777;
        let node = if meta.file_type().is_symlink() {
            Node::Symlink {
                target: fs::read_link(entry.path()).expect("readlink"),
            }
        } else if meta.is_dir() {
            Node::Dir { mode }
        } else if meta.is_file() {
            Node::File {
                mode,
                size: meta.size(),
            }
        } else {
            panic!("unexpected file type at {}", entry.path().display());
        };
        nodes.insert(rel, node);
    }
    nodes
}

/// Asserts both trees have the same paths, types, modes, symlink targets and file bytes.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    let left = snapshot(expected);
    let right = snapshot(actual);
    let only_left: Vec<_> = left.keys().filter(|k| !right.contains_key(*k)).collect();
    let only_right: Vec<_> = right.keys().filter(|k| !left.contains_key(*k)).collect();
    assert!(
        only_left.is_empty() && only_right.is_empty(),
        "trees differ: only in {}: {only_left:?}; only in {}: {only_right:?}",
        expected.display(),
        actual.display()
    );
    for (path, node) in &left {
        assert_eq!(
            Some(node),
            right.get(path),
            "metadata of {}",
            path.display()
        );
        if let Node::File { .. } = node {
            assert_same_bytes(&expected.join(path), &actual.join(path));
        }
    }
}

fn assert_same_bytes(a: &Path, b: &Path) {
    let mut fa = File::open(a).expect("open expected");
    let mut fb = File::open(b).expect("open actual");
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        assert_eq!(na, nb, "length of {}", b.display());
        assert!(
            ba[..na] == bb[..nb],
            "bytes of {} differ from {}",
            b.display(),
            a.display()
        );
        if na == 0 {
            return;
        }
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).expect("read");
        if n == 0 {
            break;
        }
        filled += n;
    }
    filled
}

/// Every path under `dir` (relative), for proving nothing was written outside a target.
pub fn all_paths(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            e.expect("walk")
                .path()
                .strip_prefix(dir)
                .expect("under dir")
                .to_path_buf()
        })
        .collect()
}
