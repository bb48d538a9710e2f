//! The local executor: one driver build in a fresh root of the identity's own distro version and
//! architecture, the way the build-service's local backend and the builder tests run it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integrity::RootImage;
use kernel_id::{Arch, DriverName, KernelIdentity, SourceCommit};

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
/// The file in a build's output directory naming the base image it ran in (JSON of
/// [`integrity::RootImage`]), written by the executor after a successful build.
pub const ROOT_IMAGE_FILE: &str = "root-image.json";
/// Where the module-signing key is copied inside the root (0600, in a 0700 directory); the builder
/// reads it into memory and deletes it before the build starts (`--remove-module-sign-key`).
pub const MODULE_SIGNING_KEY_PATH: &str = "/build/secrets/module-signing.key";
/// Where the module-signing certificate (DER) is copied inside the root.
pub const MODULE_SIGNING_CERT_PATH: &str = "/build/module-signing-cert.der";

/// The digest `sign-file` signs modules with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ModuleSignHash {
    /// SHA-256 (the default; what distribution kernels sign their own modules with).
    #[default]
    Sha256,
    /// SHA-512.
    Sha512,
}

impl ModuleSignHash {
    /// The name `driver-builder --module-sign-hash` and `sign-file` take.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }
}

/// Module signing for every build (Secure Boot, `module.sig_enforce=1`): the key and certificate
/// on this host, copied into each root for the builder's `sign-file` step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSigningInput {
    /// The PEM private key (mode 0600; the service checks it at startup).
    pub key: PathBuf,
    /// The X.509 certificate, DER.
    pub cert_der: PathBuf,
    /// The hash to sign with.
    pub hash: ModuleSignHash,
}

/// Which revision of the driver source is built: passed to the builder as `--source-commit` and
/// `--source-repository`, which records it in the package and checks it in the modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRevision {
    /// The full commit id.
    pub commit: SourceCommit,
    /// Where the commit lives (a repository URI); the builder refuses an empty one or one with
    /// control characters.
    pub repository: String,
}

/// One driver build, as [`LocalExecutor::build`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct BuildJob<'a> {
    /// What to build for.
    pub identity: &'a KernelIdentity,
    /// The driver.
    pub driver: &'a DriverName,
    /// The source revision in `driver_src`.
    pub source: &'a SourceRevision,
    /// The driver source directory on this host.
    pub driver_src: &'a Path,
    /// Where the artifacts go.
    pub out_dir: &'a Path,
    /// The build log.
    pub log: &'a Path,
}

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
    /// Signs every built module with this key (see [`ModuleSigningInput`]); `None`: unsigned.
    pub module_signing: Option<ModuleSigningInput>,
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
            module_signing: None,
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
    /// The files written to the output directory ([`ROOT_IMAGE_FILE`] last).
    pub outputs: Vec<PathBuf>,
    /// The base image the build ran in (also written to [`ROOT_IMAGE_FILE`]).
    pub root_image: RootImage,
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

    /// Builds `job.driver` for `job.identity` at `job.source` with the configured
    /// `driver-builder`, leaving its artifacts in `job.out_dir` and all output in `job.log`.
    ///
    /// With [`ExecutorConfig::module_signing`] the key is copied into the root at
    /// [`MODULE_SIGNING_KEY_PATH`] (0600, in a 0700 directory) and the certificate at
    /// [`MODULE_SIGNING_CERT_PATH`], and the builder is told to sign every module and to read the
    /// key into memory and delete its file before the build starts ([`module_signing_argv`]): the
    /// driver's own build system runs in the same root.
    pub fn build(&self, job: &BuildJob<'_>) -> Result<BuildReport> {
        self.build_cancellable(job, &Cancel::new())
    }

    /// [`build`](Self::build) that stops when `cancel` is requested: a running build command is
    /// killed with its whole process group (and so its pid namespace), no later step starts, and the
    /// root is removed; the result is [`BuildRootError::Cancelled`].
    pub fn build_cancellable(&self, job: &BuildJob<'_>, cancel: &Cancel) -> Result<BuildReport> {
        if !self
            .config
            .builder_binaries
            .contains_key(&job.identity.arch())
        {
            return Err(BuildRootError::BuilderMissing {
                arch: job.identity.arch(),
            });
        }
        let mut argv = builder_argv(job.identity, job.driver, job.source);
        if let Some(signing) = &self.config.module_signing {
            argv.extend(module_signing_argv(signing.hash));
        }
        self.run_in_fresh_root(
            job.identity,
            job.driver_src,
            job.out_dir,
            job.log,
            &argv,
            cancel,
            self.config.module_signing.as_ref(),
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
        self.run_in_fresh_root(identity, driver_src, out_dir, log, argv, cancel, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_in_fresh_root(
        &self,
        identity: &KernelIdentity,
        driver_src: &Path,
        out_dir: &Path,
        log: &Path,
        argv: &[String],
        cancel: &Cancel,
        module_signing: Option<&ModuleSigningInput>,
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
        if let Some(signing) = module_signing {
            work.copy_secret_in(&signing.key, MODULE_SIGNING_KEY_PATH)?;
            work.copy_file_in(&signing.cert_der, MODULE_SIGNING_CERT_PATH, 0o644)?;
            process::log_line(
                log,
                &format!(
                    "module signing: {} ({}) for the builder, which removes the key once read",
                    MODULE_SIGNING_KEY_PATH,
                    signing.hash.as_str()
                ),
            )?;
        }
        let unpack = started
            .elapsed()
            .saturating_sub(base.created_in.unwrap_or_default());
        process::log_line(log, &format!("root ready in {:.1} s", unpack.as_secs_f64()))?;

        let run = work.run_cancellable(argv, log, self.config.build_timeout, cancel)?;

        let collecting = Instant::now();
        let mut outputs = work.copy_out(OUT_DIR, out_dir)?;
        outputs.push(write_root_image(out_dir, &base.image)?);
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
            root_image: base.image,
        })
    }
}

/// Writes `<out_dir>/root-image.json`; refuses to replace a file the build itself left there.
fn write_root_image(out_dir: &Path, image: &RootImage) -> Result<PathBuf> {
    let path = out_dir.join(ROOT_IMAGE_FILE);
    let json = serde_json::to_vec_pretty(image).map_err(|error| BuildRootError::Io {
        context: format!("serializing {}", path.display()),
        source: std::io::Error::other(error),
    })?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(BuildRootError::io(format!("creating {}", path.display())))?;
    std::io::Write::write_all(&mut file, &json)
        .and_then(|()| std::io::Write::write_all(&mut file, b"\n"))
        .map_err(BuildRootError::io(format!("writing {}", path.display())))?;
    Ok(path)
}

/// The builder's command line for an identity and source revision: the contract with
/// `driver-builder build`.
pub fn builder_argv(
    identity: &KernelIdentity,
    driver: &DriverName,
    source: &SourceRevision,
) -> Vec<String> {
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
        "--source-commit",
        source.commit.as_str(),
        "--source-repository",
        source.repository.as_str(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// The builder's module-signing options for the key and certificate the executor copies into the
/// root: `--module-sign-key`, `--module-sign-cert`, `--module-sign-hash` and
/// `--remove-module-sign-key` (the key file is this build's copy: the builder deletes it as soon as
/// it has read it).
pub fn module_signing_argv(hash: ModuleSignHash) -> Vec<String> {
    [
        "--module-sign-key",
        MODULE_SIGNING_KEY_PATH,
        "--module-sign-cert",
        MODULE_SIGNING_CERT_PATH,
        "--module-sign-hash",
        hash.as_str(),
        "--remove-module-sign-key",
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
        let source = SourceRevision {
            commit: SourceCommit::parse("0123456789abcdef0123456789abcdef01234567")
                .expect("commit"),
            repository: "https://example.com/drivers/example driver.git".to_owned(),
        };
        let argv = builder_argv(&identity, &driver, &source);
        assert_eq!(
            argv.join(" "),
            "/usr/local/bin/driver-builder build --kernel-release 6.12.107+deb13-arm64 --arch aarch64 \
             --distribution debian --distro-version 13 --driver-name example-driver --driver-version v0.1.2 \
             --source /build/src --out /build/out \
             --source-commit 0123456789abcdef0123456789abcdef01234567 \
             --source-repository https://example.com/drivers/example driver.git"
        );
        // Each value is one argument, never split or interpreted by a shell.
        assert_eq!(
            argv.last().map(String::as_str),
            Some("https://example.com/drivers/example driver.git")
        );
    }

    #[test]
    fn module_signing_adds_the_key_cert_hash_and_removal() {
        assert_eq!(
            module_signing_argv(ModuleSignHash::Sha512).join(" "),
            "--module-sign-key /build/secrets/module-signing.key \
             --module-sign-cert /build/module-signing-cert.der --module-sign-hash sha512 \
             --remove-module-sign-key"
        );
        assert_eq!(ModuleSignHash::default().as_str(), "sha256");
        assert!(
            ExecutorConfig::new(PathBuf::from("/c"))
                .module_signing
                .is_none()
        );
    }

    #[test]
    fn the_root_image_file_is_the_serde_of_root_image_and_never_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = RootImage {
            uri: "mmdebstrap:debian/bookworm/amd64".to_owned(),
            sha256: "ab".repeat(32),
        };
        let path = write_root_image(dir.path(), &image).expect("written");
        assert_eq!(path, dir.path().join(ROOT_IMAGE_FILE));
        let read: RootImage =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(read, image);
        assert!(write_root_image(dir.path(), &image).is_err());
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
        let source = SourceRevision {
            commit: SourceCommit::parse(&"ab".repeat(20)).expect("commit"),
            repository: "https://example.com/driver.git".to_owned(),
        };
        let error = executor
            .build(&BuildJob {
                identity: &identity,
                driver: &driver,
                source: &source,
                driver_src: dir.path(),
                out_dir: &dir.path().join("out"),
                log: &dir.path().join("log"),
            })
            .expect_err("no builder");
        assert!(
            matches!(error, BuildRootError::BuilderMissing { arch: Arch::X86_64 }),
            "{error}"
        );
        assert!(!dir.path().join("roots").exists());
    }
}
