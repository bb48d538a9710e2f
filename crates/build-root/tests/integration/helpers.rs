//! Shared setup: the executor over the test cache, identities, and the sample driver build steps
//! with their measured phase times.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use build_root::executor::{ExecutorConfig, LocalExecutor, OUT_DIR, SOURCE_DIR};
use build_root::root::RootKey;
use kernel_id::{IdentityInput, KernelIdentity};

/// The sample driver's version used by every test build.
pub const DRIVER_VERSION: &str = "v0.1.2";

/// Settings over the shared test cache; `work` separates tests that count work directories.
pub fn config(work: &str) -> ExecutorConfig {
    let cache_dir = testkit::cache_dir().join("build-root");
    let mut config = ExecutorConfig::new(cache_dir.clone());
    config.work_dir = cache_dir.join(work);
    config
}

/// An identity from its request fields.
pub fn identity(release: &str, arch: &str, distro_version: &str) -> KernelIdentity {
    KernelIdentity::from_input(&IdentityInput {
        kernel_version: release.to_owned(),
        architecture: arch.to_owned(),
        distribution: "debian".to_owned(),
        distro_version: Some(distro_version.to_owned()),
        driver_version: DRIVER_VERSION.to_owned(),
    })
    .expect("test identities are valid")
}

/// The committed sample driver.
pub fn sample_driver() -> PathBuf {
    testkit::workspace_root().join("driver/example-driver")
}

/// A shell command line as argv.
pub fn shell(script: &str) -> Vec<String> {
    vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()]
}

/// What the sample driver build produced and how long each phase took.
#[derive(Debug)]
pub struct SampleBuild {
    pub module: PathBuf,
    pub root_created_in: Option<Duration>,
    pub unpack: Duration,
    pub headers: Duration,
    pub compile: Duration,
    pub cleanup: Duration,
}

/// In a fresh root of the identity's suite: installs its kernel's headers with apt, compiles the
/// sample driver with kbuild and copies the module to `out`. The root is removed at the end.
pub fn build_sample_driver(identity: &KernelIdentity, out: &Path, log: &Path) -> SampleBuild {
    let executor = LocalExecutor::new(config("work"));
    let key = RootKey::for_identity(identity);
    let release = identity.kernel_release().as_str();
    let limit = Duration::from_secs(20 * 60);

    let started = Instant::now();
    let (base, work) = executor
        .fresh_root(&key)
        .unwrap_or_else(|error| panic!("fresh {} root: {error}", key.slug()));
    work.copy_dir_in(&sample_driver(), SOURCE_DIR)
        .expect("copy the driver in");
    let unpack = started
        .elapsed()
        .saturating_sub(base.created_in.unwrap_or_default());

    let install = format!(
        "apt-get -q -o Acquire::Retries=3 update && \
         apt-get -q -y -o Acquire::Retries=3 install --no-install-recommends linux-headers-{release}"
    );
    let headers = work
        .run(&shell(&install), log, limit)
        .unwrap_or_else(|error| panic!("headers: {error}\n{}", tail(log)));
    let make = format!(
        "make -C /lib/modules/{release}/build M={SOURCE_DIR} EXAMPLE_DRIVER_VERSION={DRIVER_VERSION} modules && \
         cp {SOURCE_DIR}/example_driver.ko {OUT_DIR}/"
    );
    let compile = work
        .run(&shell(&make), log, limit)
        .unwrap_or_else(|error| panic!("compile: {error}\n{}", tail(log)));
    let outputs = work.copy_out(OUT_DIR, out).expect("copy the module out");
    assert_eq!(outputs, [out.join("example_driver.ko")]);

    let removing = Instant::now();
    let work_dir = work.work_dir().to_owned();
    work.remove().expect("remove the root");
    assert!(!work_dir.exists());
    let build = SampleBuild {
        module: out.join("example_driver.ko"),
        root_created_in: base.created_in,
        unpack,
        headers,
        compile,
        cleanup: removing.elapsed(),
    };
    eprintln!(
        "phase times for {release} in {}: root creation {}, unpack {:.1} s, headers {:.1} s, compile {:.1} s, cleanup {:.1} s",
        key.slug(),
        build
            .root_created_in
            .map_or("cached".to_owned(), |took| format!(
                "{:.1} s",
                took.as_secs_f64()
            )),
        build.unpack.as_secs_f64(),
        build.headers.as_secs_f64(),
        build.compile.as_secs_f64(),
        build.cleanup.as_secs_f64(),
    );
    build
}

/// One field of a module's .modinfo, read with the host's real modinfo.
pub fn modinfo(module: &Path, field: &str) -> String {
    let output = Command::new("modinfo")
        .args(["-F", field])
        .arg(module)
        .output()
        .expect("modinfo (kmod) is installed");
    assert!(
        output.status.success(),
        "modinfo {}: {}",
        module.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// The end of a log, for failure messages.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
