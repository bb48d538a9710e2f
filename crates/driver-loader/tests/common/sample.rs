//! Real packages of the sample driver (driver/example-driver), built by the real `driver-builder` in a
//! fresh bookworm root made by `build-root`, for a given Debian kernel release. Built once per release,
//! builder binary and driver source, and kept under `testkit::cache_dir()/driver-loader/`, under a file
//! lock because nextest runs tests in parallel processes.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use build_root::executor::{ExecutorConfig, LocalExecutor};
use kernel_id::Arch;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use super::{driver, identity};

/// The `.deb` of the sample driver built for `release` (Debian 12, x86_64, v0.1.2).
pub fn sample_package(release: &str) -> PathBuf {
    let id = identity(release);
    let file_name = id.package_file_name(&driver());
    // Built before the cache is consulted because its bytes are part of the key; cargo's own
    // freshness check makes this a no-op when nothing changed.
    let builder = testkit::musl_binary(
        "driver-builder",
        "driver-builder",
        "x86_64-unknown-linux-musl",
    )
    .expect("static driver-builder");
    let release_dir = testkit::cache_dir()
        .join("driver-loader")
        .join("sample")
        .join(release);
    let parent = release_dir.parent().expect("parent").to_path_buf();
    std::fs::create_dir_all(&release_dir).expect("cache dir");
    // The key is taken from private copies, and the build uses those copies, so a cargo build or an
    // edit landing in between cannot file a package under a key it was not built from.
    let snapshot = tempfile::tempdir_in(&parent).expect("snapshot dir");
    let source = snapshot.path().join("example-driver");
    copy_tree(&sample_source(), &source);
    let builder = {
        let copy = snapshot.path().join("driver-builder");
        std::fs::copy(&builder, &copy).expect("copy driver-builder");
        copy
    };
    let key = cache_key(&builder, &source);
    let lock_file = File::create(parent.join(format!("{release}.lock"))).expect("lock file");
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock");
    let dir = release_dir.join(key);
    std::fs::create_dir_all(&dir).expect("cache dir");
    let package = dir.join(&file_name);
    if package.exists() {
        return package;
    }
    let cache = testkit::cache_dir().join("build-root");
    let mut config = ExecutorConfig::new(cache.clone());
    config.work_dir = cache.join("work-driver-loader");
    config.builder_binaries.insert(Arch::X86_64, builder);
    config.build_timeout = Duration::from_secs(20 * 60);
    let executor = LocalExecutor::new(config);
    let out = tempfile::tempdir_in(&parent).expect("out dir");
    let log = dir.join("build.log");
    executor
        .build(&id, &driver(), &source, out.path(), &log)
        .unwrap_or_else(|e| {
            panic!(
                "building the sample driver for {release}: {e:#}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    let built = out.path().join(&file_name);
    assert!(
        built.exists(),
        "the builder wrote no {file_name} (log: {})",
        log.display()
    );
    std::fs::copy(&built, dir.join(format!(".{file_name}.tmp"))).expect("copy package");
    std::fs::rename(dir.join(format!(".{file_name}.tmp")), &package).expect("rename package");
    package
}

/// Copies the regular files and directories under `from` to `to`, modes included.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    for entry in
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display()))
    {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copying {}: {e}", entry.path().display()));
        }
    }
}

/// The committed sample driver's source tree.
pub fn sample_source() -> PathBuf {
    testkit::workspace_root().join("driver/example-driver")
}

/// The cache key of a sample package: SHA-256 over the builder binary and every entry of the driver
/// source tree (relative path, kind, permission bits, contents or link target), in path order so the
/// key does not depend on directory listing order or on where the tree lives. Each field is
/// length-prefixed so no two different inputs hash the same byte stream.
pub fn cache_key(builder: &Path, source: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(b"builder");
    field(&read(builder));
    let mut entries = Vec::new();
    let mut stack = vec![source.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        {
            let path = entry.expect("directory entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if meta.is_dir() {
                stack.push(path.clone());
            }
            let relative = path.strip_prefix(source).expect("below source").to_owned();
            entries.push((relative, path, meta));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (relative, path, meta) in entries {
        field(relative.as_os_str().as_encoded_bytes());
        field(&(meta.permissions().mode() & 0o7777).to_le_bytes());
        if meta.is_dir() {
            field(b"dir");
        } else if meta.file_type().is_symlink() {
            field(b"symlink");
            field(
                std::fs::read_link(&path)
                    .expect("readlink")
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else {
            field(b"file");
            field(&read(&path));
        }
    }
    hex::encode(hasher.finalize())
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
