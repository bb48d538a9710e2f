//! The header package cache with the real static builder and real Debian header packages: the
//! first build of a kernel downloads them and the executor keeps them by digest; a build of the
//! same kernel with another driver version installs them with the mirror unreachable and records
//! the same facts; a cached file that no longer matches its digest is refused, downloaded again and
//! the cache repaired. Debian 12's set is four packages; Debian 13's nineteen, with
//! pre-dependencies (the kernel image its headers depend on, systemd), which the offline install
//! must order as apt did.

use std::path::{Path, PathBuf};

use build_root::executor::{
    BuildJob, LocalExecutor, SourceRevision, builder_argv, header_cache_argv,
};
use build_root::headers;
use integrity::BuildFacts;
use kernel_id::{Arch, DriverName, IdentityInput, KernelIdentity, SourceCommit};

use crate::helpers;

/// A bookworm kernel in bookworm main as of 2026-12-03 (`apt-cache policy
/// linux-headers-6.1.0-50-amd64`); no other test builds it, so its test owns its cache entry.
const BOOKWORM_RELEASE: &str = "6.1.0-50-amd64";
/// A trixie kernel in trixie main as of 2026-12-03, built by no other test; move both to newer
/// ones when a point release drops them from the archive.
const TRIXIE_RELEASE: &str = "6.12.117+deb13-amd64";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// The kernel one test builds: release and distro version.
#[derive(Clone, Copy)]
struct Kernel {
    release: &'static str,
    distro_version: &'static str,
}

impl Kernel {
    fn identity(self, driver_version: &str) -> KernelIdentity {
        KernelIdentity::from_input(&IdentityInput {
            kernel_version: self.release.to_owned(),
            architecture: "x86_64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: Some(self.distro_version.to_owned()),
            driver_version: driver_version.to_owned(),
        })
        .expect("identity")
    }
}

fn facts(out: &Path) -> BuildFacts {
    serde_json::from_str(
        &std::fs::read_to_string(out.join(integrity::BUILD_FACTS_FILE)).expect("build facts"),
    )
    .expect("build facts parse")
}

fn source() -> SourceRevision {
    SourceRevision {
        commit: SourceCommit::parse(COMMIT).expect("commit"),
        repository: "https://example.com/driver.git".to_owned(),
    }
}

/// Builds `driver_version` with the configured builder; returns the output directory and the log.
fn build(
    executor: &LocalExecutor,
    kernel: Kernel,
    driver_version: &str,
    scratch: &Path,
) -> (PathBuf, String) {
    let identity = kernel.identity(driver_version);
    let driver = DriverName::parse("example-driver").expect("driver");
    let out = scratch.join(driver_version);
    let log = scratch.join(format!("{driver_version}.log"));
    executor
        .build(&BuildJob {
            identity: &identity,
            driver: &driver,
            source: &source(),
            driver_src: &helpers::sample_driver(),
            out_dir: &out,
            log: &log,
        })
        .unwrap_or_else(|error| panic!("{error}\n{}", helpers::tail(&log)));
    (out, std::fs::read_to_string(&log).expect("log"))
}

#[test]
fn a_bookworm_kernels_cached_headers_serve_later_driver_versions_offline_and_are_repaired() {
    cached_headers_serve_later_builds(Kernel {
        release: BOOKWORM_RELEASE,
        distro_version: "12",
    });
}

#[test]
fn a_trixie_kernels_cached_headers_with_pre_dependencies_install_offline_too() {
    cached_headers_serve_later_builds(Kernel {
        release: TRIXIE_RELEASE,
        distro_version: "13",
    });
}

fn cached_headers_serve_later_builds(kernel: Kernel) {
    let release = kernel.release;
    let builder = testkit::musl_binary(
        "driver-builder",
        "driver-builder",
        "x86_64-unknown-linux-musl",
    )
    .expect("the static driver-builder");
    let mut config = helpers::config(&format!("work-header-cache-{}", kernel.distro_version));
    config.builder_binaries.insert(Arch::X86_64, builder);
    let executor = LocalExecutor::new(config);
    let cache = executor.header_cache();
    let dir = cache
        .release_dir(&kernel.identity("v0.1.2"))
        .expect("cache dir");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("start without a cache entry");
    }
    let scratch = tempfile::tempdir().expect("tempdir");

    // First build: apt downloads the headers; the executor keeps them by digest.
    let (first_out, first_log) = build(&executor, kernel, "v0.1.2", scratch.path());
    assert!(
        first_log.contains(&format!("header cache: nothing yet for {release}")),
        "{first_log}"
    );
    assert!(
        first_log.contains("header source: ok source=apt-get install"),
        "{first_log}"
    );
    assert!(first_log.contains("header cache: kept"), "{first_log}");
    let first = facts(&first_out);
    assert!(
        first
            .headers
            .iter()
            .any(|p| p.name == format!("linux-headers-{release}")),
        "{first:#?}"
    );
    let cached = headers::verify(&dir).expect("every cached file matches its digest");
    assert_eq!(
        cached, first.headers,
        "the manifest is the first build's facts"
    );

    // Second build, another driver version, with the mirror unreachable for the builder: a
    // proxy nobody listens on, proven unusable by an apt download that must fail first.
    let second = kernel.identity("v0.1.3");
    let driver = DriverName::parse("example-driver").expect("driver");
    let mut argv = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        "set -e; export http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9; \
         cd /tmp; if apt-get -q -o Acquire::Retries=0 download hello; then \
         echo 'the mirror is reachable: this build proves nothing'; exit 97; fi; \
         echo 'the mirror is unreachable'; exec \"$@\""
            .to_owned(),
        "offline-builder".to_owned(),
    ];
    argv.extend(builder_argv(&second, &driver, &source()));
    argv.extend(header_cache_argv());
    let second_out = scratch.path().join("v0.1.3");
    let second_log = scratch.path().join("v0.1.3.log");
    executor
        .build_with_argv(
            &second,
            &helpers::sample_driver(),
            &second_out,
            &second_log,
            &argv,
        )
        .unwrap_or_else(|error| panic!("{error}\n{}", helpers::tail(&second_log)));
    let second_text = std::fs::read_to_string(&second_log).expect("log");
    assert!(
        second_text.contains("the mirror is unreachable"),
        "{second_text}"
    );
    assert!(
        second_text.contains("without a download")
            && second_text.contains("header source: ok source=header package cache"),
        "{second_text}"
    );
    assert_eq!(
        facts(&second_out).headers,
        first.headers,
        "the same packages, file names, URIs and digests as the download"
    );

    // A cached file that no longer matches its digest: refused, downloaded again, replaced.
    let victim = dir.join(format!("{}.deb", first.headers[0].sha256));
    let mut bytes = std::fs::read(&victim).expect("cached file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&victim, &bytes).expect("corrupt the cached file");
    let (third_out, third_log) = build(&executor, kernel, "v0.1.4", scratch.path());
    assert!(
        third_log.contains("refusing the cache")
            && third_log.contains("header source: ok source=apt-get install"),
        "{third_log}"
    );
    assert!(third_log.contains("header cache: replaced"), "{third_log}");
    assert_eq!(facts(&third_out).headers, first.headers);
    assert_eq!(
        headers::verify(&dir).expect("repaired"),
        first.headers,
        "the cache holds the good files again"
    );
}
