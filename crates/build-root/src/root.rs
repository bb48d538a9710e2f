//! Prebuilt base images: one mmdebstrap tarball per (distribution, distro version, arch), with the
//! toolchain preinstalled, made once and reused by every build until it is older than the configured
//! age (`max_root_age`, a week by default: the local twin of the weekly GHCR base images, so the
//! toolchain and the image's own package lists stay current); the next build after that remakes it.
//!
//! The tarball name carries a fingerprint of everything that went into it (suite, sources, packages),
//! so editing the toolchain list or a mirror makes a new image instead of silently reusing the old one.
//! Creation is serialised per root with an exclusive file lock, and the tarball is written under a
//! temporary name and renamed into place, so concurrent builds and test processes never see a half
//! written image. A remade image replaces the old tarball (a build still unpacking it keeps its open
//! file).
//!
//! Each image's SHA-256 (what a build's provenance names as its root) is computed once, when the
//! tarball is made, and kept beside it as `<tarball>.sha256` (`sha256sum` format); it is recomputed
//! only when that file is missing, unreadable or older than the tarball.
//!
//! For overlay roots each image is unpacked once into `lower/<root>-<image SHA-256>`
//! ([`RootCache::lease_lower`]), under the same lock and by the same atomic rename; builds lease it
//! while they run, and the lower directories of a root's replaced images are removed by the first
//! lease after no build holds them ([`crate::layers`]).

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use integrity::{DigestFile, RootImage};
use kernel_id::{Arch, DistroVersion, KernelIdentity, PackageFormat};
use sha2::{Digest, Sha256};

use crate::error::{BuildRootError, Result};
use crate::host::HostFacts;
use crate::layers::{self, Lease};
use crate::process::{self, Ended};
use crate::toolchain::ToolchainList;

/// Which root a build needs: its distro version (which names the distribution) and architecture.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RootKey {
    distro_version: DistroVersion,
    arch: Arch,
}

impl RootKey {
    /// The root for a distro version and architecture.
    pub fn new(distro_version: DistroVersion, arch: Arch) -> Self {
        Self {
            distro_version,
            arch,
        }
    }

    /// The root an identity is built in: its own distro version and architecture, never a neighbour's.
    pub fn for_identity(identity: &KernelIdentity) -> Self {
        Self::new(identity.distro_version().clone(), identity.arch())
    }

    /// The distro version.
    pub fn distro_version(&self) -> &DistroVersion {
        &self.distro_version
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// A file-name-safe name such as `debian-12-x86_64`.
    pub fn slug(&self) -> String {
        format!(
            "{}-{}-{}",
            self.distro_version.distribution(),
            self.distro_version,
            self.arch.as_str()
        )
    }
}

/// Package mirrors the roots are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrors {
    /// Debian archive, for every architecture.
    pub debian: String,
    /// Debian security archive (`<suite>-security` since bullseye).
    pub debian_security: String,
    /// Ubuntu archive for amd64, e.g. `http://archive.ubuntu.com/ubuntu`; Ubuntu roots are refused
    /// without it because this host cannot reach Ubuntu mirrors by default.
    pub ubuntu: Option<String>,
    /// Ubuntu ports archive for arm64, e.g. `http://ports.ubuntu.com/ubuntu-ports`.
    pub ubuntu_ports: Option<String>,
}

impl Default for Mirrors {
    fn default() -> Self {
        Self {
            debian: "http://deb.debian.org/debian".to_owned(),
            debian_security: "http://deb.debian.org/debian-security".to_owned(),
            ubuntu: None,
            ubuntu_ports: None,
        }
    }
}

/// Everything mmdebstrap is told for one root. Pure, so the sources and arguments are unit-tested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSpec {
    key: RootKey,
    suite: &'static str,
    sources: Vec<String>,
    packages: Vec<String>,
    keyring: Option<&'static str>,
    fingerprint: String,
}

impl RootSpec {
    /// Works out suite, apt sources and packages; refuses what the local executor cannot make.
    pub fn new(key: &RootKey, mirrors: &Mirrors, toolchain: &ToolchainList) -> Result<Self> {
        let version = key.distro_version();
        let distribution = version.distribution();
        if distribution.package_format() != PackageFormat::Deb {
            return Err(BuildRootError::UnsupportedDistribution {
                distribution: distribution.to_string(),
                version: version.to_string(),
            });
        }
        let suite = version.codename().ok_or_else(|| BuildRootError::NoSuite {
            distribution: distribution.to_string(),
            version: version.to_string(),
        })?;
        let (sources, keyring) = match distribution.as_str() {
            "debian" => {
                let archive = checked_mirror(&mirrors.debian)?;
                let security = checked_mirror(&mirrors.debian_security)?;
                let sources = vec![
                    format!("deb {archive} {suite} main"),
                    format!("deb {archive} {suite}-updates main"),
                    format!("deb {security} {suite}-security main"),
                ];
                (sources, None)
            }
            "ubuntu" => {
                let mirror = match key.arch() {
                    Arch::X86_64 => mirrors.ubuntu.as_deref(),
                    Arch::Aarch64 => mirrors.ubuntu_ports.as_deref(),
                };
                let mirror = mirror.ok_or_else(|| BuildRootError::MirrorNotConfigured {
                    distribution: distribution.to_string(),
                    version: version.to_string(),
                    arch: key.arch(),
                })?;
                let archive = checked_mirror(mirror)?;
                // Header packages are in main; universe holds toolchain extras such as jammy's gcc-12.
                let sources = ["", "-updates", "-security"]
                    .iter()
                    .map(|pocket| format!("deb {archive} {suite}{pocket} main universe"))
                    .collect();
                (
                    sources,
                    Some("/usr/share/keyrings/ubuntu-archive-keyring.gpg"),
                )
            }
            // A Debian-family distribution added to kernel-id's table needs its archive layout here.
            _ => {
                return Err(BuildRootError::UnsupportedDistribution {
                    distribution: distribution.to_string(),
                    version: version.to_string(),
                });
            }
        };
        let packages = toolchain.packages(version);
        let mut spec = Self {
            key: key.clone(),
            suite,
            sources,
            packages,
            keyring,
            fingerprint: String::new(),
        };
        // Everything mmdebstrap is told, so any change to how an image is made yields a new image.
        let mut hasher = Sha256::new();
        for arg in spec.mmdebstrap_args(Path::new("-")) {
            hasher.update(arg.as_encoded_bytes());
            hasher.update(b"\n");
        }
        spec.fingerprint = hex::encode(&hasher.finalize()[..6]);
        Ok(spec)
    }

    /// The suite codename, e.g. `bookworm`.
    pub fn suite(&self) -> &str {
        self.suite
    }

    /// The apt sources lines the root is made from (and keeps, for header installs).
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// The toolchain packages preinstalled in the root.
    pub fn packages(&self) -> &[String] {
        &self.packages
    }

    /// The cached tarball's file name, e.g. `debian-12-x86_64-0123456789ab.tar.zst`.
    pub fn tarball_name(&self) -> String {
        format!("{}-{}.tar.zst", self.key.slug(), self.fingerprint)
    }

    /// What the image is, for provenance: `mmdebstrap:<distribution>/<suite>/<Debian arch>`, e.g.
    /// `mmdebstrap:debian/bookworm/amd64`.
    pub fn image_uri(&self) -> String {
        format!(
            "mmdebstrap:{}/{}/{}",
            self.key.distro_version().distribution(),
            self.suite,
            self.key.arch().debian_name()
        )
    }

    /// mmdebstrap's arguments for writing the root to `output` (whose `.tar.zst` ending selects the
    /// format).
    pub fn mmdebstrap_args(&self, output: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--mode=root".into(),
            "--variant=buildd".into(),
            format!("--arch={}", self.key.arch().debian_name()).into(),
            format!("--include={}", self.packages.join(",")).into(),
            // The package lists stay in the image so a build's `apt-get update` only fetches what
            // changed since the image was made.
            "--skip=cleanup/apt/lists".into(),
            "--aptopt=Acquire::Retries \"3\"".into(),
        ];
        if let Some(keyring) = self.keyring {
            args.push(format!("--keyring={keyring}").into());
        }
        args.push(self.suite.into());
        args.push(output.into());
        args.extend(self.sources.iter().map(OsString::from));
        args
    }
}

fn checked_mirror(url: &str) -> Result<&str> {
    let url = url.trim_end_matches('/');
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    if scheme_ok && !url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Ok(url)
    } else {
        Err(BuildRootError::BadMirror {
            url: url.to_owned(),
        })
    }
}

/// A base image ready to unpack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    /// Which root it is.
    pub key: RootKey,
    /// The cached tarball.
    pub tarball: PathBuf,
    /// How long mmdebstrap took, when this call had to make it.
    pub created_in: Option<Duration>,
    /// The image's URI ([`RootSpec::image_uri`]) and the tarball's SHA-256.
    pub image: RootImage,
}

/// Where a tarball's digest is kept: `<tarball>.sha256`.
pub fn image_digest_path(tarball: &Path) -> PathBuf {
    let mut name = tarball.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// The tarball's SHA-256 (64 lowercase hex digits): read from `<tarball>.sha256` when that file
/// names this tarball and is not older than it, otherwise computed and stored there (written under
/// a temporary name and renamed, so a reader never sees half of it). Callers hold the root's lock.
pub fn image_digest(tarball: &Path) -> Result<String> {
    let digest_path = image_digest_path(tarball);
    let file_name = tarball
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let stored = std::fs::read_to_string(&digest_path)
        .ok()
        .and_then(|text| DigestFile::parse(&text).ok())
        .filter(|digest| digest.file_name == file_name)
        .filter(|_| match (modified(&digest_path), modified(tarball)) {
            (Some(digest_time), Some(tarball_time)) => digest_time >= tarball_time,
            _ => false,
        });
    if let Some(stored) = stored {
        return Ok(stored.digest.to_hex());
    }
    let digest = integrity::sha256_file(tarball)
        .map_err(BuildRootError::io(format!("hashing {}", tarball.display())))?;
    let partial = image_digest_path(&tarball.with_file_name(format!(".{file_name}.partial")));
    std::fs::write(&partial, DigestFile::new(digest, file_name).render())
        .and_then(|()| std::fs::rename(&partial, &digest_path))
        .map_err(BuildRootError::io(format!(
            "writing {}",
            digest_path.display()
        )))?;
    Ok(digest.to_hex())
}

/// Where, under the roots directory, the unpacked base images (overlay lower directories) live.
pub const LOWER_DIR: &str = "lower";

/// The cache of base images under `<cache dir>/roots`.
#[derive(Debug, Clone)]
pub struct RootCache {
    dir: PathBuf,
    mirrors: Mirrors,
    max_age: Option<Duration>,
    creation_timeout: Duration,
}

impl RootCache {
    /// A cache in `dir`; images older than `max_age` (if set) are remade, mmdebstrap runs are
    /// killed after `creation_timeout`.
    pub fn new(
        dir: PathBuf,
        mirrors: Mirrors,
        max_age: Option<Duration>,
        creation_timeout: Duration,
    ) -> Self {
        Self {
            dir,
            mirrors,
            max_age,
            creation_timeout,
        }
    }

    /// The directory holding the tarballs, locks and mmdebstrap logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the image for `key` is made of.
    pub fn spec(&self, key: &RootKey) -> Result<RootSpec> {
        RootSpec::new(key, &self.mirrors, &ToolchainList::embedded()?)
    }

    /// Returns the image for `key`, making it first if it is missing or too old.
    pub fn ensure(&self, key: &RootKey) -> Result<BaseImage> {
        let _lock = self.lock(key)?;
        self.ensure_locked(key)
    }

    /// Returns the image for `key` (made first if missing or too old) with a lease on its
    /// unpacked, read-only lower directory `lower/<root>-<image SHA-256>` (unpacked once, under a
    /// temporary name renamed into place). Lowers of this root's older images are removed here
    /// once no build holds a lease on them. One locked step, so the tarball a lower is unpacked
    /// from cannot be replaced in between.
    pub fn lease_lower(&self, key: &RootKey) -> Result<(BaseImage, Lease)> {
        let _lock = self.lock(key)?;
        let base = self.ensure_locked(key)?;
        let lowers = self.dir.join(LOWER_DIR);
        std::fs::create_dir_all(&lowers)
            .map_err(BuildRootError::io(format!("creating {}", lowers.display())))?;
        let name = format!("{}-{}", key.slug(), base.image.sha256);
        let lower = lowers.join(&name);
        if !lower.is_dir() {
            let log = lowers.join(format!("{name}.log"));
            let _ = std::fs::remove_file(&log);
            layers::create_atomically(&lower, |partial| {
                layers::unpack_tarball(&base.tarball, partial, &log, &key.slug())
            })?;
            let _ = std::fs::remove_file(&log);
            tracing::info!(lower = %lower.display(), "unpacked the base image as a shared lower directory");
        }
        let lease = layers::lease(&lower)?;
        let prefix = format!("{}-", key.slug());
        layers::prune(
            &lowers,
            |name| {
                // `<slug>-<64 hex>`, optionally followed by a trash suffix: never another root's.
                name.strip_prefix(&prefix)
                    .and_then(|rest| rest.get(..64))
                    .is_some_and(|digest| digest.chars().all(|c| c.is_ascii_hexdigit()))
            },
            &[&lower],
        );
        Ok((base, lease))
    }

    /// The lock serialising image creation, lower unpacking and pruning for one root.
    fn lock(&self, key: &RootKey) -> Result<File> {
        layers::lock_exclusive(&self.dir.join(format!("{}.lock", key.slug())))
    }

    fn ensure_locked(&self, key: &RootKey) -> Result<BaseImage> {
        let spec = self.spec(key)?;
        HostFacts::probe(key.arch()).check(key)?;
        let tarball = self.dir.join(spec.tarball_name());
        if self.is_fresh(&tarball) {
            let image = RootImage {
                uri: spec.image_uri(),
                sha256: image_digest(&tarball)?,
            };
            return Ok(BaseImage {
                key: key.clone(),
                tarball,
                created_in: None,
                image,
            });
        }
        let started = Instant::now();
        self.create(&spec, &tarball)?;
        let created_in = started.elapsed();
        // Parsed by whoever times the first-root phase from the JSON log: keep the message and
        // the `root` and `seconds` fields stable.
        tracing::info!(
            root = %key.slug(),
            seconds = (created_in.as_secs_f64() * 10.0).round() / 10.0,
            "made the base image"
        );
        // The new tarball is newer than any digest file of an image it replaced, so this hashes it.
        let image = RootImage {
            uri: spec.image_uri(),
            sha256: image_digest(&tarball)?,
        };
        self.prune_other_images(key, &tarball);
        Ok(BaseImage {
            key: key.clone(),
            tarball,
            created_in: Some(created_in),
            image,
        })
    }

    fn is_fresh(&self, tarball: &Path) -> bool {
        let Ok(metadata) = std::fs::metadata(tarball) else {
            return false;
        };
        match self.max_age {
            None => true,
            Some(max_age) => metadata
                .modified()
                .ok()
                .and_then(|modified| SystemTime::now().duration_since(modified).ok())
                .is_some_and(|age| age < max_age),
        }
    }

    /// Runs mmdebstrap into a temporary file next to the final one and renames it into place.
    fn create(&self, spec: &RootSpec, tarball: &Path) -> Result<()> {
        let slug = spec.key.slug();
        let partial = self
            .dir
            .join(format!(".{}.partial.tar.zst", spec.tarball_name()));
        let temp_dir = self.dir.join(format!(".tmp-{slug}"));
        let log = self.dir.join(format!("{slug}.log"));
        // Leftovers of a run that was killed; the lock guarantees nobody else is using them.
        let _ = std::fs::remove_file(&partial);
        let _ = std::fs::remove_dir_all(&temp_dir);
        std::fs::create_dir_all(&temp_dir).map_err(BuildRootError::io(format!(
            "creating {}",
            temp_dir.display()
        )))?;
        let _ = std::fs::remove_file(&log);
        process::log_line(
            &log,
            &format!(
                "making the {slug} root: mmdebstrap {:?}",
                spec.mmdebstrap_args(&partial)
            ),
        )?;

        // The first build of a root waits minutes for this with nothing else to show, so the
        // service's log says what is happening and where mmdebstrap's own output goes.
        tracing::info!(
            root = %slug,
            log = %log.display(),
            "making the base image (first use of this root, or the old image expired): \
             mmdebstrap takes a few minutes"
        );
        let mut command = process::isolated("mmdebstrap");
        command
            .args(spec.mmdebstrap_args(&partial))
            .env("TMPDIR", &temp_dir);
        let ended = progress::while_running(&slug, &log, || {
            process::run_bounded(&mut command, &log, self.creation_timeout)
        });
        let _ = std::fs::remove_dir_all(&temp_dir);
        let outcome = match ended? {
            Ended::Exited(status) if status.success() => std::fs::rename(&partial, tarball)
                .map_err(BuildRootError::io(format!(
                    "renaming {} into place",
                    partial.display()
                ))),
            Ended::Exited(status) => Err(BuildRootError::RootCreationFailed {
                root: slug.clone(),
                status: status.to_string(),
                log: log.clone(),
            }),
            Ended::TimedOut => Err(BuildRootError::TimedOut {
                what: "mmdebstrap".to_owned(),
                root: slug.clone(),
                limit: self.creation_timeout,
                log: log.clone(),
            }),
            // Base images are shared by every build of the root, so nothing cancels their creation.
            Ended::Cancelled => Err(BuildRootError::Cancelled {
                root: slug.clone(),
                log: log.clone(),
            }),
        };
        if outcome.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        outcome
    }

    /// Deletes this root's images (and their digest files) with other fingerprints; an unpack still reading one keeps its open
    /// file, so this is safe while builds run.
    fn prune_other_images(&self, key: &RootKey, keep: &Path) {
        let prefix = format!("{}-", key.slug());
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let fingerprint = name.strip_prefix(&prefix).and_then(|rest| {
                rest.strip_suffix(".tar.zst")
                    .or_else(|| rest.strip_suffix(".tar.zst.sha256"))
            });
            if fingerprint
                .is_some_and(|fp| fp.len() == 12 && fp.chars().all(|c| c.is_ascii_hexdigit()))
                && entry.path() != keep
                && entry.path() != image_digest_path(keep)
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Progress of a running mmdebstrap for the service's log: its `I:` step lines, read from the log
/// file it writes, at most one every [`progress::STEP_GAP`], and the elapsed time when it has said
/// nothing new for [`progress::HEARTBEAT`].
mod progress {
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom};
    use std::path::Path;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Shortest time between two step lines; the steps in between are skipped (the log file has them).
    pub(super) const STEP_GAP: Duration = Duration::from_secs(3);
    /// Longest silence before a "still making the base image" line.
    pub(super) const HEARTBEAT: Duration = Duration::from_secs(15);
    /// How often the log file is looked at.
    const POLL: Duration = Duration::from_secs(1);
    /// Longest step text logged; mmdebstrap's lines can carry whole package lists.
    const MAX_STEP: usize = 200;
    /// Longest unfinished line kept while waiting for its end (apt's progress output has none).
    const MAX_PARTIAL: usize = 64 * 1024;

    /// What to log next.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) enum Report {
        /// mmdebstrap started this step (its `I:` line, without the prefix).
        Step(String),
        /// Nothing new for a while; still running.
        StillRunning,
    }

    /// Turns the log's bytes into reports. Pure: the clock is passed in, so it is unit-tested.
    #[derive(Debug, Default)]
    pub(super) struct Follower {
        partial: Vec<u8>,
        latest_step: Option<String>,
        last_report: Duration,
    }

    impl Follower {
        /// Takes the bytes appended to the log since the last call.
        pub(super) fn feed(&mut self, bytes: &[u8]) {
            self.partial.extend_from_slice(bytes);
            while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.partial.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                // Terminal-style progress rewrites the line with `\r`; the last version counts.
                let line = line.trim_end().rsplit('\r').next().unwrap_or_default();
                if let Some(step) = line.strip_prefix("I: ") {
                    let step = step.trim();
                    if !step.is_empty() {
                        self.latest_step = Some(step.chars().take(MAX_STEP).collect());
                    }
                }
            }
            if self.partial.len() > MAX_PARTIAL {
                self.partial.clear();
            }
        }

        /// What to log at `elapsed` since mmdebstrap started, if anything.
        pub(super) fn tick(&mut self, elapsed: Duration) -> Option<Report> {
            let quiet_for = elapsed.saturating_sub(self.last_report);
            let report = match self.latest_step.take() {
                Some(step) if quiet_for >= STEP_GAP || self.last_report.is_zero() => {
                    Report::Step(step)
                }
                Some(step) => {
                    self.latest_step = Some(step);
                    return None;
                }
                None if quiet_for >= HEARTBEAT => Report::StillRunning,
                None => return None,
            };
            self.last_report = elapsed;
            Some(report)
        }
    }

    /// Runs `work` (which runs mmdebstrap writing to `log`) while a thread follows `log` and logs
    /// the progress; the thread ends as soon as `work` returns.
    pub(super) fn while_running<T>(root: &str, log: &Path, work: impl FnOnce() -> T) -> T {
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::scope(|scope| {
            scope.spawn(move || follow(root, log, &stopped));
            let outcome = work();
            drop(stop);
            outcome
        })
    }

    fn follow(root: &str, log: &Path, stopped: &mpsc::Receiver<()>) {
        let started = Instant::now();
        let mut follower = Follower::default();
        let mut file: Option<File> = None;
        let mut offset = 0u64;
        let mut chunk = Vec::new();
        while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(POLL) {
            if file.is_none() {
                file = File::open(log).ok();
            }
            if let Some(open) = file.as_mut() {
                chunk.clear();
                // Progress is best effort: a read error only means fewer step lines.
                let read = open
                    .seek(SeekFrom::Start(offset))
                    .and_then(|_| open.take(1 << 20).read_to_end(&mut chunk));
                if let Ok(read) = read {
                    offset += read as u64;
                    follower.feed(&chunk);
                }
            }
            let elapsed = started.elapsed();
            match follower.tick(elapsed) {
                Some(Report::Step(step)) => tracing::info!(
                    root,
                    elapsed_seconds = elapsed.as_secs(),
                    step = %step,
                    "making the base image"
                ),
                Some(Report::StillRunning) => tracing::info!(
                    root,
                    elapsed_seconds = elapsed.as_secs(),
                    "still making the base image"
                ),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use kernel_id::Distribution;

    use super::*;

    fn key(distribution: &str, version: &str, arch: Arch) -> RootKey {
        let distribution = Distribution::parse(distribution).expect("distribution");
        RootKey::new(
            DistroVersion::supported(distribution, version).expect("version"),
            arch,
        )
    }

    fn spec(key: &RootKey, mirrors: &Mirrors) -> Result<RootSpec> {
        RootSpec::new(key, mirrors, &ToolchainList::embedded().expect("list"))
    }

    #[test]
    fn debian_suites_use_main_updates_and_security() {
        for (version, suite) in [("11", "bullseye"), ("12", "bookworm"), ("13", "trixie")] {
            let spec = spec(&key("debian", version, Arch::X86_64), &Mirrors::default())
                .expect("debian spec");
            assert_eq!(spec.suite(), suite);
            assert_eq!(
                spec.sources(),
                [
                    format!("deb http://deb.debian.org/debian {suite} main"),
                    format!("deb http://deb.debian.org/debian {suite}-updates main"),
                    format!("deb http://deb.debian.org/debian-security {suite}-security main"),
                ]
            );
        }
    }

    #[test]
    fn mmdebstrap_gets_arch_packages_suite_output_and_sources() {
        let spec = spec(&key("debian", "12", Arch::Aarch64), &Mirrors::default()).expect("spec");
        let args: Vec<String> = spec
            .mmdebstrap_args(Path::new("/cache/out.tar.zst"))
            .into_iter()
            .map(|arg| arg.into_string().expect("utf-8"))
            .collect();
        assert!(args.contains(&"--arch=arm64".to_owned()), "{args:?}");
        assert!(args.contains(&"--variant=buildd".to_owned()), "{args:?}");
        assert!(
            args.iter()
                .any(|arg| arg.starts_with("--include=build-essential,")),
            "{args:?}"
        );
        let suite_at = args
            .iter()
            .position(|arg| arg == "bookworm")
            .expect("suite");
        assert_eq!(args[suite_at + 1], "/cache/out.tar.zst");
        assert_eq!(&args[suite_at + 2..], spec.sources());
        assert!(spec.tarball_name().starts_with("debian-12-aarch64-"));
        assert!(spec.tarball_name().ends_with(".tar.zst"));
    }

    #[test]
    fn the_fingerprint_follows_mirrors_and_architecture() {
        let amd64 = spec(&key("debian", "12", Arch::X86_64), &Mirrors::default()).expect("spec");
        let arm64 = spec(&key("debian", "12", Arch::Aarch64), &Mirrors::default()).expect("spec");
        let other_mirror = Mirrors {
            debian: "http://mirror.example/debian/".to_owned(),
            ..Mirrors::default()
        };
        let mirrored = spec(&key("debian", "12", Arch::X86_64), &other_mirror).expect("spec");
        assert_ne!(amd64.tarball_name(), mirrored.tarball_name());
        assert_eq!(
            mirrored.sources()[0],
            "deb http://mirror.example/debian bookworm main"
        );
        assert_ne!(amd64.fingerprint, arm64.fingerprint);
        assert_eq!(
            amd64,
            spec(&key("debian", "12", Arch::X86_64), &Mirrors::default()).expect("spec")
        );
    }

    #[test]
    fn image_uris_name_distribution_suite_and_debian_arch() {
        let bookworm = spec(&key("debian", "12", Arch::X86_64), &Mirrors::default()).expect("spec");
        assert_eq!(bookworm.image_uri(), "mmdebstrap:debian/bookworm/amd64");
        let trixie = spec(&key("debian", "13", Arch::Aarch64), &Mirrors::default()).expect("spec");
        assert_eq!(trixie.image_uri(), "mmdebstrap:debian/trixie/arm64");
    }

    #[test]
    fn the_image_digest_is_the_tarballs_sha256_computed_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tarball = dir.path().join("debian-12-x86_64-0123456789ab.tar.zst");
        let content = vec![42u8; 300_000];
        std::fs::write(&tarball, &content).expect("tarball");
        let expected = hex::encode(Sha256::digest(&content));

        let first = image_digest(&tarball).expect("digest");
        assert_eq!(first, expected);
        let digest_file = image_digest_path(&tarball);
        assert_eq!(
            std::fs::read_to_string(&digest_file).expect("stored beside the tarball"),
            format!("{expected}  debian-12-x86_64-0123456789ab.tar.zst\n")
        );
        // Reused, not recomputed: a stored value (here a planted one) is what the next call returns.
        let planted = "ab".repeat(32);
        std::fs::write(
            &digest_file,
            format!("{planted}  debian-12-x86_64-0123456789ab.tar.zst\n"),
        )
        .expect("plant");
        assert_eq!(image_digest(&tarball).expect("digest"), planted);
        // A digest file for another tarball, or a missing one, is recomputed.
        std::fs::write(&digest_file, format!("{planted}  other.tar.zst\n")).expect("plant");
        assert_eq!(image_digest(&tarball).expect("digest"), expected);
        std::fs::remove_file(&digest_file).expect("remove");
        assert_eq!(image_digest(&tarball).expect("digest"), expected);
        assert!(digest_file.is_file());
        // A tarball remade after its digest was stored is hashed again.
        let newer = vec![7u8; 1000];
        std::fs::write(&tarball, &newer).expect("remade");
        let later = SystemTime::now() + Duration::from_secs(5);
        File::options()
            .write(true)
            .open(&tarball)
            .and_then(|f| f.set_modified(later))
            .expect("mtime");
        assert_eq!(
            image_digest(&tarball).expect("digest"),
            hex::encode(Sha256::digest(&newer))
        );
        let leftovers: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn progress_reports_mmdebstrap_steps_rate_limited_and_a_heartbeat_in_silence() {
        use progress::{Follower, HEARTBEAT, Report, STEP_GAP};
        let secs = Duration::from_secs;
        let mut follower = Follower::default();
        assert_eq!(follower.tick(secs(1)), None, "nothing said yet");

        // The first step is reported at once; a line split across reads is joined; other lines
        // (the crate's own, apt's, warnings) are not steps.
        follower.feed(b"build-root: making the debian-12-x86_64 root\nI: chosen mode: r");
        follower.feed(b"oot\nW: something\nGet:1 http://deb.debian.org bookworm InRelease\n");
        assert_eq!(
            follower.tick(secs(2)),
            Some(Report::Step("chosen mode: root".to_owned()))
        );

        // Steps coming faster than STEP_GAP are coalesced into the latest one.
        follower.feed(b"I: running apt-get update...\nI: downloading packages with apt...\n");
        assert_eq!(follower.tick(secs(3)), None);
        assert_eq!(
            follower.tick(secs(2) + STEP_GAP),
            Some(Report::Step("downloading packages with apt...".to_owned()))
        );

        // Silence gets one heartbeat per HEARTBEAT, not one per poll.
        let after_step = secs(2) + STEP_GAP;
        assert_eq!(follower.tick(after_step + HEARTBEAT - secs(1)), None);
        assert_eq!(
            follower.tick(after_step + HEARTBEAT),
            Some(Report::StillRunning)
        );
        assert_eq!(follower.tick(after_step + HEARTBEAT + secs(1)), None);

        // A line rewritten with carriage returns counts as its last version; long steps are cut.
        let long = format!("I: 0%\rI: installing {}\n", "x".repeat(1000));
        follower.feed(long.as_bytes());
        match follower.tick(secs(100)) {
            Some(Report::Step(step)) => {
                assert!(step.starts_with("installing xxx"), "{step}");
                assert_eq!(step.chars().count(), 200);
            }
            other => panic!("expected a step, got {other:?}"),
        }

        // Output without line ends (apt's progress meter) is dropped past a bound, not kept.
        follower.feed(&vec![b'.'; 100 * 1024]);
        follower.feed(b"\nI: done\n");
        assert_eq!(
            follower.tick(secs(200)),
            Some(Report::Step("done".to_owned()))
        );
    }

    #[test]
    fn progress_following_ends_with_the_work() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("root.log");
        std::fs::write(&log, "I: extracting archives...\n").expect("log");
        let started = Instant::now();
        let value = progress::while_running("debian-12-x86_64", &log, || 42);
        assert_eq!(value, 42);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn rpm_distributions_point_to_the_github_backend() {
        for (distribution, version) in [
            ("fedora", "42"),
            ("centos", "stream9"),
            ("amazonlinux", "2023"),
        ] {
            let error = spec(
                &key(distribution, version, Arch::X86_64),
                &Mirrors::default(),
            )
            .expect_err(distribution);
            let message = error.to_string();
            assert!(matches!(
                error,
                BuildRootError::UnsupportedDistribution { .. }
            ));
            assert!(
                message.contains("not supported by the local executor on this host"),
                "{message}"
            );
            assert!(
                message.contains("use the GitHub backend / container image"),
                "{message}"
            );
        }
    }

    #[test]
    fn ubuntu_needs_a_mirror_per_architecture() {
        let noble = key("ubuntu", "24.04", Arch::X86_64);
        let error = spec(&noble, &Mirrors::default()).expect_err("no ubuntu mirror");
        assert!(
            matches!(error, BuildRootError::MirrorNotConfigured { .. }),
            "{error}"
        );

        let mirrors = Mirrors {
            ubuntu: Some("http://archive.ubuntu.com/ubuntu".to_owned()),
            ..Mirrors::default()
        };
        let spec_amd64 = spec(&noble, &mirrors).expect("configured");
        assert_eq!(
            spec_amd64.sources()[2],
            "deb http://archive.ubuntu.com/ubuntu noble-security main universe"
        );
        let arm64 = spec(&key("ubuntu", "24.04", Arch::Aarch64), &mirrors)
            .expect_err("ports mirror missing");
        assert!(matches!(
            arm64,
            BuildRootError::MirrorNotConfigured {
                arch: Arch::Aarch64,
                ..
            }
        ));
        let jammy = spec(&key("ubuntu", "22.04", Arch::X86_64), &mirrors).expect("jammy");
        assert!(jammy.packages().iter().any(|p| p == "gcc-12"));
    }

    #[test]
    fn unsafe_mirrors_are_refused() {
        for url in [
            "ftp://x/debian",
            "http://x/debian main contrib",
            "http://x/\ndeb evil",
            "/srv/debian",
        ] {
            let mirrors = Mirrors {
                debian: url.to_owned(),
                ..Mirrors::default()
            };
            let error = spec(&key("debian", "12", Arch::X86_64), &mirrors).expect_err(url);
            assert!(
                matches!(error, BuildRootError::BadMirror { .. }),
                "{url}: {error}"
            );
        }
    }
}
