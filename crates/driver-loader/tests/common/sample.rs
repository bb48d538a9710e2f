//! Real packages of the sample driver (driver/example-driver), built by the real `driver-builder` in a
//! fresh bookworm root made by `build-root`, for a given Debian kernel release. Built once per release and
//! kept under `testkit::cache_dir()/driver-loader/`, under a file lock because nextest runs tests in
//! parallel processes.

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use build_root::executor::{ExecutorConfig, LocalExecutor};
use kernel_id::Arch;
use nix::fcntl::{Flock, FlockArg};

use super::{driver, identity};

/// The `.deb` of the sample driver built for `release` (Debian 12, x86_64, v0.1.2).
pub fn sample_package(release: &str) -> PathBuf {
    let id = identity(release);
    let file_name = id.package_file_name(&driver());
    let dir = testkit::cache_dir()
        .join("driver-loader")
        .join("sample")
        .join(release);
    std::fs::create_dir_all(&dir).expect("cache dir");
    let parent = dir.parent().expect("parent").to_path_buf();
    let lock_file = File::create(parent.join(format!("{release}.lock"))).expect("lock file");
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("flock");
    let package = dir.join(&file_name);
    if package.exists() {
        return package;
    }
    let builder = testkit::musl_binary(
        "driver-builder",
        "driver-builder",
        "x86_64-unknown-linux-musl",
    )
    .expect("static driver-builder");
    let cache = testkit::cache_dir().join("build-root");
    let mut config = ExecutorConfig::new(cache.clone());
    config.work_dir = cache.join("work-driver-loader");
    config.builder_binaries.insert(Arch::X86_64, builder);
    config.build_timeout = Duration::from_secs(20 * 60);
    let executor = LocalExecutor::new(config);
    let out = tempfile::tempdir_in(&parent).expect("out dir");
    let log = parent.join(format!("{release}.build.log"));
    let source = testkit::workspace_root().join("driver/example-driver");
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
