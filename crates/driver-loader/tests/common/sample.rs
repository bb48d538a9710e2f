//! Real packages of the sample driver (driver/example-driver), built by the real `driver-builder` in a
//! fresh bookworm root made by `build-root`, for a given Debian kernel release, from a real git commit
//! of the driver's source. Built once per release, builder binary and driver source, and kept under
//! `testkit::cache_dir()/driver-loader/`, under a file lock because nextest runs tests in parallel
//! processes; beside each package the commit it was built from and, when the builder and the executor
//! wrote them, the build's facts and root image, which the tests' provenance is made of.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use build_root::executor::{
    BuildJob, ExecutorConfig, LocalExecutor, ROOT_IMAGE_FILE, SourceRevision,
};
use integrity::facts::{BUILD_FACTS_FILE, BuildFacts, RootImage};
use integrity::provenance::BuildProvenance;
use kernel_id::{Arch, SourceCommit};
use nix::fcntl::{Flock, FlockArg};

use super::{SOURCE_REPOSITORY, driver, identity};

/// The file beside a cached package naming the commit it was built from.
const SOURCE_COMMIT_FILE: &str = "source-commit";

/// A sample package and what it was built from.
#[derive(Debug, Clone)]
pub struct SampleBuild {
    pub package: PathBuf,
    /// The commit of the sample driver's source the package was built from.
    pub source_commit: SourceCommit,
    /// What the builder observed (its `build-facts.json`), when it wrote one.
    pub facts: Option<BuildFacts>,
    /// The root the build ran in (the executor's `root-image.json`), when it wrote one.
    pub root: Option<RootImage>,
}

impl SampleBuild {
    /// Makes `provenance` say what this build really was: its commit, and its facts and root when
    /// recorded (the defaults of `provenance_for` otherwise).
    pub fn describe(&self, provenance: &mut BuildProvenance) {
        provenance.source_commit = self.source_commit.clone();
        if let Some(facts) = &self.facts {
            provenance.facts = facts.clone();
        }
        if let Some(root) = &self.root {
            provenance.root = root.clone();
        }
    }
}

/// The `.deb` of the sample driver built for `release` (Debian 12, x86_64, v0.1.2).
pub fn sample_package(release: &str) -> PathBuf {
    sample_build(release).package
}

/// The sample driver built for `release` (Debian 12, x86_64, v0.1.2), with what it was built from.
pub fn sample_build(release: &str) -> SampleBuild {
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
    // edit landing in between cannot file a package under a key it was not built from. The source
    // copy is a commit of a git repository (with fixed author and dates, so the same tree is the
    // same commit), and the driver's files sit in a subdirectory so the key never sees `.git`.
    let snapshot = tempfile::tempdir_in(&parent).expect("snapshot dir");
    let repo =
        testkit::SampleDriverRepo::create_in(&snapshot.path().join("repo"), "example-driver")
            .expect("sample driver repository");
    let source = repo.driver_dir();
    let commit = SourceCommit::parse(&repo.head().expect("head commit")).expect("a full commit id");
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
        return cached_build(&dir, package);
    }
    let cache = testkit::cache_dir().join("build-root");
    let mut config = ExecutorConfig::new(cache.clone());
    config.work_dir = cache.join("work-driver-loader");
    config.builder_binaries.insert(Arch::X86_64, builder);
    config.build_timeout = Duration::from_secs(20 * 60);
    let executor = LocalExecutor::new(config);
    let out = tempfile::tempdir_in(&parent).expect("out dir");
    let log = dir.join("build.log");
    let revision = SourceRevision {
        commit: commit.clone(),
        repository: SOURCE_REPOSITORY.to_owned(),
    };
    executor
        .build(&BuildJob {
            identity: &id,
            driver: &driver(),
            source: &revision,
            driver_src: &source,
            out_dir: out.path(),
            log: &log,
        })
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
    // What the package was built from first, the package last: a package in the cache is complete.
    std::fs::write(dir.join(SOURCE_COMMIT_FILE), commit.as_str()).expect("write commit");
    for facts in [BUILD_FACTS_FILE, ROOT_IMAGE_FILE] {
        let from = out.path().join(facts);
        if from.exists() {
            std::fs::copy(&from, dir.join(facts)).expect("copy build facts");
        }
    }
    std::fs::copy(&built, dir.join(format!(".{file_name}.tmp"))).expect("copy package");
    std::fs::rename(dir.join(format!(".{file_name}.tmp")), &package).expect("rename package");
    cached_build(&dir, package)
}

/// A cached build: the package and what was recorded beside it.
fn cached_build(dir: &Path, package: PathBuf) -> SampleBuild {
    let commit = std::fs::read_to_string(dir.join(SOURCE_COMMIT_FILE)).expect("cached commit");
    SampleBuild {
        package,
        source_commit: SourceCommit::parse(commit.trim()).expect("cached commit id"),
        facts: read_json(&dir.join(BUILD_FACTS_FILE)),
        root: read_json(&dir.join(ROOT_IMAGE_FILE)),
    }
}

/// A JSON file's value, `None` when the file does not exist.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    path.exists().then(|| {
        serde_json::from_slice(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
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
    // One stream hashed at the end (the same digest as feeding it piece by piece).
    let mut stream = Vec::new();
    let mut field = |bytes: &[u8]| {
        stream.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        stream.extend_from_slice(bytes);
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
    integrity::sha256_bytes(&stream).to_hex()
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
