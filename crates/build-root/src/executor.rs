//! The local executor: one driver build in a fresh root of the identity's own distro version and
//! architecture, the way the build-service's local backend and the builder tests run it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kernel_id::{Arch, DriverName, KernelIdentity};

use crate::error::{BuildRootError, Result};
use crate::process::{self, Cancel};
use crate::root::{BaseImage, Mirrors, RootCache, RootKey};
use crate::work::WorkRoot;

/// Where the builder binary is installed inside every root.
pub const BUILDER_PATH: &str = "/usr/local/bin/driver-builder";
/// Where the driver source is copied inside every root.
pub const SOURCE_DIR: &str = "/build/src";
/// Where the builder leaves its artifacts inside every root.
pub const OUT_DIR: &str = "/build/out";

/// Settings of the local executor.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Holds `roots/` (base images), `apt-archives/` (downloaded packages) and, by default, `work/`.
    pub cache_dir: PathBuf,
    /// Where build roots are unpacked; on the same file system as the cache so packages hard-link.
    pub work_dir: PathBuf,
    /// Package mirrors.
    pub mirrors: Mirrors,
    /// The `driver-builder` binary per architecture (static, since it runs inside foreign roots).
    pub builder_binaries: BTreeMap<Arch, PathBuf>,
    /// Limit for one build command; it is killed when the limit passes.
    pub build_timeout: Duration,
    /// Limit for making one base image with mmdebstrap.
    pub root_creation_timeout: Duration,
    /// Base images older than this are remade so their toolchain and package lists stay current.
    pub max_root_age: Option<Duration>,
}

impl ExecutorConfig {
    /// Defaults around a cache directory: Debian's CDN, 30 min builds, 20 min root creation, images
    /// remade weekly (like the GHCR base images). Work roots go to tmpfs when the host has one
    /// (`$KDRIVER_WORK_DIR` overrides): deleting a 35,000-file root from a disk mounted with
    /// `discard` took 60-90 s per build, from RAM it is instant.
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            work_dir: default_work_dir(&cache_dir),
            cache_dir,
            mirrors: Mirrors::default(),
            builder_binaries: BTreeMap::new(),
            build_timeout: Duration::from_secs(30 * 60),
            root_creation_timeout: Duration::from_secs(20 * 60),
            max_root_age: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

fn default_work_dir(cache_dir: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("KDRIVER_WORK_DIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    let on_tmpfs = std::fs::read_to_string("/proc/mounts")
        .map(|mounts| {
            mounts
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some("/dev/shm") && l.contains(" tmpfs "))
        })
        .unwrap_or(false);
    if on_tmpfs && shm.is_dir() {
        shm.join("kdriver-build-roots")
    } else {
        cache_dir.join("work")
    }
}

/// How long each phase of a build took, and what it produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    /// Time mmdebstrap took, when this build had to make the base image.
    pub root_created_in: Option<Duration>,
    /// Unpacking the base image and preparing the root.
    pub unpack: Duration,
    /// The build command.
    pub run: Duration,
    /// Copying `/build/out` back.
    pub collect: Duration,
    /// Removing the root.
    pub cleanup: Duration,
    /// The files written to the output directory.
    pub outputs: Vec<PathBuf>,
}

/// Builds drivers in clean chroot roots on this host.
#[derive(Debug, Clone)]
pub struct LocalExecutor {
    config: ExecutorConfig,
    roots: RootCache,
}

impl LocalExecutor {
    /// An executor with the given settings.
    pub fn new(config: ExecutorConfig) -> Self {
        let roots = RootCache::new(
            config.cache_dir.join("roots"),
            config.mirrors.clone(),
            config.max_root_age,
            config.root_creation_timeout,
        );
        Self { config, roots }
    }

    /// The settings.
    pub fn config(&self) -> &ExecutorConfig {
        &self.config
    }

    /// The base image cache.
    pub fn roots(&self) -> &RootCache {
        &self.roots
    }

    /// Makes (or reuses) the base image for `key` and unpacks a fresh root from it.
    pub fn fresh_root(&self, key: &RootKey) -> Result<(BaseImage, WorkRoot)> {
        let base = self.roots.ensure(key)?;
        let apt_cache = self.config.cache_dir.join("apt-archives").join(key.slug());
        let work = WorkRoot::unpack(&base, &self.config.work_dir, &apt_cache)?;
        Ok((base, work))
    }

    /// Builds `driver` for `identity` with the configured `driver-builder`, leaving its artifacts
    /// in `out_dir` and all output in `log`.
    pub fn build(
        &self,
        identity: &KernelIdentity,
        driver: &DriverName,
        driver_src: &Path,
        out_dir: &Path,
        log: &Path,
    ) -> Result<BuildReport> {
        self.build_cancellable(identity, driver, driver_src, out_dir, log, &Cancel::new())
    }

    /// [`build`](Self::build) that stops when `cancel` is requested: a running build command is
    /// killed with its whole process group (and so its pid namespace), no later step starts, and the
    /// root is removed; the result is [`BuildRootError::Cancelled`].
    pub fn build_cancellable(
        &self,
        identity: &KernelIdentity,
        driver: &DriverName,
        driver_src: &Path,
        out_dir: &Path,
        log: &Path,
        cancel: &Cancel,
    ) -> Result<BuildReport> {
        if !self.config.builder_binaries.contains_key(&identity.arch()) {
            return Err(BuildRootError::BuilderMissing {
                arch: identity.arch(),
            });
        }
        self.build_with_argv_cancellable(
            identity,
            driver_src,
            out_dir,
            log,
            &builder_argv(identity, driver),
            cancel,
        )
    }

    /// Like [`build`](Self::build), but runs `argv` in the root instead of the builder (which is
    /// still installed at [`BUILDER_PATH`] when one is configured for the architecture).
    pub fn build_with_argv(
        &self,
        identity: &KernelIdentity,
        driver_src: &Path,
        out_dir: &Path,
        log: &Path,
        argv: &[String],
    ) -> Result<BuildReport> {
        self.build_with_argv_cancellable(identity, driver_src, out_dir, log, argv, &Cancel::new())
    }

    /// [`build_with_argv`](Self::build_with_argv) that stops when `cancel` is requested (see
    /// [`build_cancellable`](Self::build_cancellable)).
    pub fn build_with_argv_cancellable(
        &self,
        identity: &KernelIdentity,
        driver_src: &Path,
        out_dir: &Path,
        log: &Path,
        argv: &[String],
        cancel: &Cancel,
    ) -> Result<BuildReport> {
        let key = RootKey::for_identity(identity);
        let cancelled = || BuildRootError::Cancelled {
            root: key.slug(),
            log: log.to_owned(),
        };
        if cancel.is_cancelled() {
            return Err(cancelled());
        }
        process::log_line(
            log,
            &format!(
                "build of {} in a fresh {} root",
                identity.cache_key(),
                key.slug()
            ),
        )?;
        let started = Instant::now();
        // Making a base image is not cancelled (other builds of the root wait for it); the build
        // stops right after it instead, and the fresh root is removed on return.
        let (base, work) = self.fresh_root(&key)?;
        if cancel.is_cancelled() {
            return Err(cancelled());
        }
        if let Some(created_in) = base.created_in {
            process::log_line(
                log,
                &format!("made the base image in {:.1} s", created_in.as_secs_f64()),
            )?;
        }
        if let Some(builder) = self.config.builder_binaries.get(&identity.arch()) {
            work.copy_file_in(builder, BUILDER_PATH, 0o755)?;
        }
        work.copy_dir_in(driver_src, SOURCE_DIR)?;
        let unpack = started
            .elapsed()
            .saturating_sub(base.created_in.unwrap_or_default());
        process::log_line(log, &format!("root ready in {:.1} s", unpack.as_secs_f64()))?;

        let run = work.run_cancellable(argv, log, self.config.build_timeout, cancel)?;

        let collecting = Instant::now();
        let outputs = work.copy_out(OUT_DIR, out_dir)?;
        let collect = collecting.elapsed();

        let removing = Instant::now();
        work.remove()?;
        let cleanup = removing.elapsed();
        process::log_line(
            log,
            &format!(
                "collected {} files in {:.1} s, removed the root in {:.1} s",
                outputs.len(),
                collect.as_secs_f64(),
                cleanup.as_secs_f64()
            ),
        )?;
        Ok(BuildReport {
            root_created_in: base.created_in,
            unpack,
            run,
            collect,
            cleanup,
            outputs,
        })
    }
}

/// The builder's command line for an identity: the contract with `driver-builder build`.
pub fn builder_argv(identity: &KernelIdentity, driver: &DriverName) -> Vec<String> {
    [
        BUILDER_PATH,
        "build",
        "--kernel-release",
        identity.kernel_release().as_str(),
        "--arch",
        identity.arch().as_str(),
        "--distribution",
        identity.distribution().as_str(),
        "--distro-version",
        identity.distro_version().as_str(),
        "--driver-name",
        driver.as_str(),
        "--driver-version",
        identity.driver_version().as_str(),
        "--source",
        SOURCE_DIR,
        "--out",
        OUT_DIR,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

#[cfg(test)]
mod tests {
    use kernel_id::IdentityInput;

    use super::*;

    #[test]
    fn the_builder_gets_every_identity_field() {
        let identity = KernelIdentity::from_input(&IdentityInput {
            kernel_version: "6.12.107+deb13-arm64".to_owned(),
            architecture: "arm64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: Some("13".to_owned()),
            driver_version: "v0.1.2".to_owned(),
        })
        .expect("identity");
        let driver = DriverName::parse("example-driver").expect("driver");
        assert_eq!(
            builder_argv(&identity, &driver).join(" "),
            "/usr/local/bin/driver-builder build --kernel-release 6.12.107+deb13-arm64 --arch aarch64 \
             --distribution debian --distro-version 13 --driver-name example-driver --driver-version v0.1.2 \
             --source /build/src --out /build/out"
        );
    }

    #[test]
    fn a_build_without_a_builder_for_the_arch_is_refused_before_any_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let executor = LocalExecutor::new(ExecutorConfig::new(dir.path().to_owned()));
        let identity = KernelIdentity::from_input(&IdentityInput {
            kernel_version: "6.1.0-47-amd64".to_owned(),
            architecture: "x86_64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: Some("12".to_owned()),
            driver_version: "v0.1.2".to_owned(),
        })
        .expect("identity");
        let driver = DriverName::parse("example-driver").expect("driver");
        let error = executor
            .build(
                &identity,
                &driver,
                dir.path(),
                &dir.path().join("out"),
                &dir.path().join("log"),
            )
            .expect_err("no builder");
        assert!(
            matches!(error, BuildRootError::BuilderMissing { arch: Arch::X86_64 }),
            "{error}"
        );
        assert!(!dir.path().join("roots").exists());
    }
}
