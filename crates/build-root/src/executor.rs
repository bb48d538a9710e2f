//! The local executor: one driver build in a fresh root of the identity's own distro version and
//! architecture, the way the build-service's local backend and the builder tests run it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use integrity::RootImage;
use kernel_id::{Arch, DriverName, KernelIdentity, SourceCommit};

use crate::error::{BuildRootError, Result};
use crate::headers::{HEADER_CACHE_DIR, HeaderCache, Stored};
use crate::layers::Lease;
use crate::lists::{self, ListsStore};
use crate::process::{self, Cancel};
use crate::root::{BaseImage, Mirrors, RootCache, RootKey};
use crate::work::{RootLayering, WorkRoot};

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
    /// Holds `roots/` (base images, their unpacked lower directories, apt list snapshots and the
    /// header package cache), `apt-archives/` (downloaded packages) and, by default, `work/`.
    pub cache_dir: PathBuf,
    /// Where build roots (overlay upper directories, or unpacked roots) go.
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
    /// How build roots are made: an overlay over the shared unpacked image (falling back to
    /// unpacking when it cannot be mounted), or always unpacked.
    pub root_mode: RootMode,
    /// Extra overlayfs mount options for overlay roots, each a plain `name` or `name=value`
    /// (e.g. `volatile`, which skips syncing a disk-backed upper directory that is thrown away
    /// anyway). Options the kernel refuses make builds fall back to unpacking, saying why.
    pub overlay_options: Vec<String>,
    /// The apt package lists a build starts with are refreshed (once, shared by later builds) when
    /// older than this; see [`crate::lists`].
    pub apt_lists_max_age: Duration,
}

/// How the executor makes build roots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RootMode {
    /// A fresh upper directory over the base image unpacked once into a shared read-only lower
    /// directory (milliseconds per build); when the overlay cannot be mounted the build unpacks
    /// the image instead and its log says why.
    #[default]
    Overlay,
    /// Unpack the base image into every build's work directory (seconds per build): for hosts
    /// where overlayfs is known not to work. `KDRIVER_ROOT_MODE=unpack` selects it by default.
    Unpack,
}

impl RootMode {
    /// [`RootMode::parse`] of `$KDRIVER_ROOT_MODE`.
    pub fn from_env() -> Self {
        Self::parse(std::env::var("KDRIVER_ROOT_MODE").ok().as_deref())
    }

    /// `unpack` is [`RootMode::Unpack`]; anything else, or nothing, [`RootMode::Overlay`], whose
    /// own fallback covers hosts without overlayfs.
    pub fn parse(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            Some("unpack") => Self::Unpack,
            _ => Self::Overlay,
        }
    }
}

impl ExecutorConfig {
    /// Defaults around a cache directory: Debian's CDN, 30 min builds, 20 min root creation, images
    /// remade weekly (like the GHCR base images), apt lists refreshed when older than six hours,
    /// overlay roots unless `$KDRIVER_ROOT_MODE` is `unpack`. Work roots go to tmpfs when the host has one
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
            root_mode: RootMode::from_env(),
            overlay_options: Vec::new(),
            apt_lists_max_age: Duration::from_secs(6 * 3600),
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
    /// Setting the root up: mounting the overlay (or unpacking the base image), refreshing the apt
    /// lists when due, and copying the builder and the source in.
    pub unpack: Duration,
    /// How the root was laid over its base image.
    pub layering: RootLayering,
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

    /// The host's header package cache.
    pub fn header_cache(&self) -> HeaderCache {
        HeaderCache::new(self.roots.dir())
    }

    /// The apt list snapshots of one base image.
    pub fn lists_store(&self, base: &BaseImage) -> ListsStore {
        ListsStore::new(self.roots.dir(), &base.key, &base.image.sha256)
    }

    /// Makes (or reuses) the base image for `key` and a fresh root over it, with the newest shared
    /// apt lists and `.deb` files shared through `apt-archives/<root>`; for tests and tools that
    /// drive a root themselves.
    pub fn fresh_root(&self, key: &RootKey) -> Result<(BaseImage, WorkRoot)> {
        let apt_cache = self.config.cache_dir.join("apt-archives").join(key.slug());
        let made = self.make_root(key, Some(&apt_cache))?;
        if let Some(reason) = &made.fell_back {
            tracing::warn!(root = %key.slug(), %reason, "unpacked the base image instead of an overlay");
        }
        Ok((made.base, made.work))
    }

    /// Makes sure `key`'s base image, its lower directory and fresh apt lists exist, refreshing
    /// the lists when they are older than [`ExecutorConfig::apt_lists_max_age`]; what a build of
    /// the suite would otherwise do first. Output goes to `log`.
    pub fn prepare_suite(&self, key: &RootKey, log: &Path) -> Result<()> {
        let made = self.make_root(key, None)?;
        self.log_root(&made, log)?;
        self.refresh_lists_if_due(&made, None, log, &Cancel::new())?;
        made.work.remove()
    }

    /// A fresh root for `key` as configured: an overlay when it can be mounted, else unpacked.
    fn make_root(&self, key: &RootKey, apt_cache: Option<&Path>) -> Result<MadeRoot> {
        let reason = match self.config.root_mode {
            RootMode::Unpack => {
                "overlay roots are off (ExecutorConfig::root_mode, KDRIVER_ROOT_MODE=unpack)"
                    .to_owned()
            }
            RootMode::Overlay => match self.overlay_root(key, apt_cache) {
                Ok(made) => return Ok(made),
                Err(BuildRootError::OverlayUnavailable { reason }) => reason,
                Err(error) => return Err(error),
            },
        };
        let base = self.roots.ensure(key)?;
        let work = WorkRoot::unpack(&base, &self.config.work_dir, apt_cache)?;
        let store = self.lists_store(&base);
        let lists = store.newest()?;
        let lists_refreshed = lists.as_ref().map(|snapshot| snapshot.refreshed);
        if let Some(snapshot) = &lists {
            lists::copy_lists(snapshot.lease.path(), work.root_path())?;
        }
        Ok(MadeRoot {
            base,
            work,
            store,
            lists_refreshed,
            fell_back: Some(reason),
        })
    }

    fn overlay_root(&self, key: &RootKey, apt_cache: Option<&Path>) -> Result<MadeRoot> {
        let (base, lower) = self.roots.lease_lower(key).map_err(|error| match error {
            // The image itself is fine; only its lower directory could not be made.
            BuildRootError::Io { context, source } => BuildRootError::OverlayUnavailable {
                reason: format!("{context}: {source}"),
            },
            other => other,
        })?;
        lists::prune_other_images(self.roots.dir(), key, &base.image.sha256);
        let store = self.lists_store(&base);
        let lists = store.newest()?;
        let lists_refreshed = lists.as_ref().map(|snapshot| snapshot.refreshed);
        let mut lowers: Vec<Lease> = lists.into_iter().map(|snapshot| snapshot.lease).collect();
        lowers.push(lower);
        let work = WorkRoot::overlay(
            &base,
            lowers,
            &self.config.work_dir,
            apt_cache,
            &self.config.overlay_options,
        )?;
        Ok(MadeRoot {
            base,
            work,
            store,
            lists_refreshed,
            fell_back: None,
        })
    }

    /// One log line saying how the root was made and, for a fallback, why.
    fn log_root(&self, made: &MadeRoot, log: &Path) -> Result<()> {
        let lists = match made.lists_refreshed {
            Some(at) => format!(
                "apt lists refreshed {} ago",
                describe_age(SystemTime::now().duration_since(at).unwrap_or_default())
            ),
            None => "the image's own apt lists".to_owned(),
        };
        let line = match &made.fell_back {
            None => format!("root: overlay over the shared base image, {lists}"),
            Some(reason) => {
                format!("root: unpacked the base image instead of an overlay ({reason}), {lists}")
            }
        };
        process::log_line(log, &line)
    }

    /// Refreshes the root's apt lists when they are due (see [`crate::lists`]) and shares the
    /// result with later builds. Runs before anything of the driver is in the root. A failed
    /// refresh is logged and the build goes on with the lists it has.
    fn refresh_lists_if_due(
        &self,
        made: &MadeRoot,
        release: Option<&str>,
        log: &Path,
        cancel: &Cancel,
    ) -> Result<()> {
        let age = made
            .lists_refreshed
            .map(|at| SystemTime::now().duration_since(at).unwrap_or_default());
        let reason = match age {
            None => "never refreshed for this image".to_owned(),
            Some(age) if age >= self.config.apt_lists_max_age => {
                format!("{} old", describe_age(age))
            }
            Some(age)
                if age >= lists::MISS_REFRESH_AFTER
                    && release.is_some_and(|release| {
                        !lists::lists_name_package(
                            made.work.root_path(),
                            &format!("linux-headers-{release}"),
                        )
                    }) =>
            {
                format!(
                    "{} old and without linux-headers-{}",
                    describe_age(age),
                    release.unwrap_or_default()
                )
            }
            Some(_) => return Ok(()),
        };
        if made.store.refresh_failed_recently() {
            return process::log_line(
                log,
                &format!(
                    "apt lists due for a refresh ({reason}); the last attempt failed less than {} ago",
                    describe_age(lists::MISS_REFRESH_AFTER)
                ),
            );
        }
        let Some(guard) = made.store.try_refresh()? else {
            return process::log_line(
                log,
                &format!(
                    "apt lists due for a refresh ({reason}); another build is refreshing them"
                ),
            );
        };
        process::log_line(log, &format!("refreshing the apt lists ({reason})"))?;
        let started = SystemTime::now();
        let refresh = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            "apt-get -q update --error-on=any && apt-cache gencaches".to_owned(),
        ];
        match made
            .work
            .run_cancellable(&refresh, log, self.config.build_timeout, cancel)
        {
            Ok(_) => {
                let snapshot = made.store.store(made.work.root_path(), started, &guard)?;
                process::log_line(
                    log,
                    &format!(
                        "apt lists shared with later builds as {}",
                        snapshot.display()
                    ),
                )
            }
            Err(error @ BuildRootError::Cancelled { .. }) => Err(error),
            Err(error) => {
                made.store.note_failed_refresh();
                process::log_line(
                    log,
                    &format!(
                        "apt lists refresh failed ({error}); building with the lists the root has"
                    ),
                )
            }
        }
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
        argv.extend(header_cache_argv());
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
        let made = self.make_root(&key, None)?;
        if cancel.is_cancelled() {
            return Err(cancelled());
        }
        if let Some(created_in) = made.base.created_in {
            process::log_line(
                log,
                &format!("made the base image in {:.1} s", created_in.as_secs_f64()),
            )?;
        }
        self.log_root(&made, log)?;
        self.refresh_lists_if_due(&made, Some(identity.kernel_release().as_str()), log, cancel)?;
        let MadeRoot { base, mut work, .. } = made;
        // Not seeded (the header cache serves repeated kernels without copying the whole archive
        // cache into every root), but downloads are still kept there.
        work.harvest_downloads_into(&self.config.cache_dir.join("apt-archives").join(key.slug()))?;
        let header_cache = self.header_cache();
        let cached = header_cache.lookup(identity)?;
        match &cached {
            Some(dir) => {
                work.bind_read_only(dir, HEADER_CACHE_DIR)?;
                process::log_line(
                    log,
                    &format!("header cache: {} at {HEADER_CACHE_DIR}", dir.display()),
                )?;
            }
            None => {
                // An empty directory: the builder finds no manifest and downloads.
                work.create_dir(HEADER_CACHE_DIR)?;
                process::log_line(
                    log,
                    &format!(
                        "header cache: nothing yet for {}",
                        identity.kernel_release()
                    ),
                )?;
            }
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
        process::log_line(log, &format!("root ready in {:.3} s", unpack.as_secs_f64()))?;

        let run = work.run_cancellable(argv, log, self.config.build_timeout, cancel)?;

        let collecting = Instant::now();
        let mut outputs = work.copy_out(OUT_DIR, out_dir)?;
        outputs.push(write_root_image(out_dir, &base.image)?);
        self.cache_headers(
            identity,
            &header_cache,
            cached.is_some(),
            &work,
            out_dir,
            log,
        )?;
        let collect = collecting.elapsed();

        let removing = Instant::now();
        let layering = work.layering();
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
            layering,
        })
    }

    /// After a successful build, keeps the header packages it downloaded in the header cache
    /// (see [`crate::headers`]); a build whose facts are missing or unreadable, or whose packages
    /// did not come from apt's archive, leaves the cache as it is.
    fn cache_headers(
        &self,
        identity: &KernelIdentity,
        cache: &HeaderCache,
        was_cached: bool,
        work: &WorkRoot,
        out_dir: &Path,
        log: &Path,
    ) -> Result<()> {
        let facts_path = out_dir.join(integrity::BUILD_FACTS_FILE);
        let Ok(text) = std::fs::read_to_string(&facts_path) else {
            return Ok(());
        };
        let facts: integrity::BuildFacts = match serde_json::from_str(&text) {
            Ok(facts) => facts,
            Err(error) => {
                return process::log_line(
                    log,
                    &format!(
                        "header cache: {} unreadable ({error})",
                        facts_path.display()
                    ),
                );
            }
        };
        let line = match cache.store(identity, &facts.headers, work.root_path()) {
            Ok(Stored::New(dir)) => format!(
                "header cache: kept {} packages in {}",
                facts.headers.len(),
                dir.display()
            ),
            Ok(Stored::Unchanged(_)) => "header cache: already holds these packages".to_owned(),
            Ok(Stored::Repaired { dir, reason }) => {
                format!("header cache: replaced {} ({reason})", dir.display())
            }
            // The usual case for a cached kernel: nothing was downloaded, so nothing is new.
            Ok(Stored::Skipped(_)) if was_cached => {
                "header cache: nothing downloaded, nothing to keep".to_owned()
            }
            Ok(Stored::Skipped(reason)) => format!("header cache: not kept ({reason})"),
            // The build succeeded; a cache that cannot be written costs the next build a download.
            Err(error) => format!("header cache: not kept ({error})"),
        };
        process::log_line(log, &line)
    }
}

/// A root made for a build, with what is needed to refresh its apt lists.
struct MadeRoot {
    base: BaseImage,
    work: WorkRoot,
    store: ListsStore,
    lists_refreshed: Option<SystemTime>,
    /// Why the root was unpacked rather than an overlay.
    fell_back: Option<String>,
}

/// `45 s`, `12 min`, `3.5 h`, `2.0 days`.
fn describe_age(age: Duration) -> String {
    let secs = age.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.0} s")
    } else if secs < 3600.0 {
        format!("{:.0} min", secs / 60.0)
    } else if secs < 86_400.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} days", secs / 86_400.0)
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

/// The builder's option naming the header cache the executor mounts into every root
/// ([`HEADER_CACHE_DIR`]; an empty directory when the kernel has nothing cached yet).
pub fn header_cache_argv() -> Vec<String> {
    vec!["--header-cache".to_owned(), HEADER_CACHE_DIR.to_owned()]
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
