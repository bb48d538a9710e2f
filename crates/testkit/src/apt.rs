//! A private apt configuration under `cache_dir()/apt` that reaches every supported Debian suite
//! (bullseye, bookworm, trixie and their -updates, -security and -backports pockets) for amd64 and
//! arm64, without reading or changing the host's `/etc/apt`. The host may list only bookworm; the
//! fleet needs kernels from all three releases and both architectures.
//!
//! apt itself is the client (signature checking, mirrors, by-hash), pointed at private
//! `Dir::Etc`/`Dir::State`/`Dir::Cache` directories through an `APT_CONFIG` file. `apt-get update`
//! runs at most once per configured age, under an exclusive lock; downloads and index reads take a
//! shared lock so they never see lists mid-update.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use kernel_id::{Arch, Distribution, DistroVersion, KernelRelease, dpkg_cmp, kernel_release_cmp};

use crate::cache_dir;
use crate::lock::{CacheLock, scratch_path};

/// Debian releases the fleet covers, oldest first.
pub const DEBIAN_CODENAMES: [&str; 3] = ["bullseye", "bookworm", "trixie"];

/// Suffixes of the pockets that exist next to each release's main suite.
const POCKETS: [&str; 4] = ["", "-updates", "-security", "-backports"];

const DEFAULT_ARCHIVE_MIRROR: &str = "http://deb.debian.org/debian";
const DEFAULT_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const DEFAULT_MAX_AGE_HOURS: u64 = 12;

/// One Debian suite such as `bookworm` or `trixie-security`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Suite(String);

impl Suite {
    /// A suite name: a supported Debian codename, optionally followed by -updates, -security or
    /// -backports.
    pub fn new(name: &str) -> Result<Suite> {
        let codename = name.split('-').next().unwrap_or_default();
        if !DEBIAN_CODENAMES.contains(&codename) {
            bail!(
                "suite '{name}': codename must be one of {}",
                DEBIAN_CODENAMES.join(", ")
            );
        }
        let pocket = &name[codename.len()..];
        if !POCKETS.contains(&pocket) {
            bail!("suite '{name}': pocket must be empty, -updates, -security or -backports");
        }
        Ok(Suite(name.to_owned()))
    }

    /// The release's main suite and all of its pockets.
    pub fn family(codename: &str) -> Result<Vec<Suite>> {
        POCKETS
            .iter()
            .map(|pocket| Suite::new(&format!("{codename}{pocket}")))
            .collect()
    }

    /// Every pocket of every covered release.
    pub fn all() -> Vec<Suite> {
        DEBIAN_CODENAMES
            .iter()
            .flat_map(|codename| Suite::family(codename).expect("built-in codenames are valid"))
            .collect()
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// The release codename, e.g. `bookworm` for `bookworm-backports`.
    pub fn codename(&self) -> &str {
        self.0.split('-').next().unwrap_or(&self.0)
    }

    /// Security updates live in a separate archive (`debian-security`).
    pub fn is_security(&self) -> bool {
        self.0.ends_with("-security")
    }

    /// The Debian version a node installed from this suite reports (11, 12, 13), taken from
    /// kernel-id's codename table.
    pub fn distro_version(&self) -> Result<DistroVersion> {
        let debian = Distribution::parse("debian").context("kernel-id must know debian")?;
        debian
            .supported_versions()
            .into_iter()
            .find(|version| version.codename() == Some(self.codename()))
            .with_context(|| {
                format!(
                    "kernel-id has no supported debian version with codename {}",
                    self.codename()
                )
            })
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the private apt lives and what it points at.
#[derive(Clone, Debug)]
pub struct AptConfig {
    /// Private state: sources, lists, package cache, stamp.
    pub root: PathBuf,
    /// Mirror of the main archive (`.../debian`).
    pub archive_mirror: String,
    /// Mirror of the security archive (`.../debian-security`).
    pub security_mirror: String,
    pub suites: Vec<Suite>,
    /// Keyring the sources are `signed-by`.
    pub keyring: PathBuf,
    /// Lists younger than this are not refreshed.
    pub max_age: Duration,
    /// dpkg architectures whose indexes are fetched; the first is apt's native one.
    pub architectures: Vec<String>,
}

impl AptConfig {
    /// Defaults, overridable by `KDRIVER_DEBIAN_MIRROR`, `KDRIVER_DEBIAN_SECURITY_MIRROR` and
    /// `KDRIVER_APT_MAX_AGE_HOURS`.
    pub fn from_env() -> Result<AptConfig> {
        let env_or = |key: &str, default: &str| {
            std::env::var(key)
                .ok()
                .filter(|value| !value.trim().is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let max_age_hours: u64 = env_or(
            "KDRIVER_APT_MAX_AGE_HOURS",
            &DEFAULT_MAX_AGE_HOURS.to_string(),
        )
        .parse()
        .context("KDRIVER_APT_MAX_AGE_HOURS must be a whole number of hours")?;
        let native = host_debian_arch()?;
        let mut architectures = vec![native.clone()];
        for arch in ["amd64", "arm64"] {
            if arch != native {
                architectures.push(arch.to_owned());
            }
        }
        Ok(AptConfig {
            root: cache_dir().join("apt"),
            archive_mirror: env_or("KDRIVER_DEBIAN_MIRROR", DEFAULT_ARCHIVE_MIRROR),
            security_mirror: env_or("KDRIVER_DEBIAN_SECURITY_MIRROR", DEFAULT_SECURITY_MIRROR),
            suites: Suite::all(),
            keyring: PathBuf::from(DEFAULT_KEYRING),
            max_age: Duration::from_secs(max_age_hours * 3600),
            architectures,
        })
    }

    /// The sources.list text for this configuration (one-line format, `signed-by` the keyring).
    pub fn sources_list(&self) -> String {
        let mut text = String::new();
        for suite in &self.suites {
            let mirror = if suite.is_security() {
                &self.security_mirror
            } else {
                &self.archive_mirror
            };
            text.push_str(&format!(
                "deb [signed-by={}] {} {} main\n",
                self.keyring.display(),
                mirror.trim_end_matches('/'),
                suite
            ));
        }
        text
    }

    fn apt_conf(&self) -> String {
        let root = self.root.display();
        let architectures: String = self
            .architectures
            .iter()
            .map(|arch| format!("\"{arch}\"; "))
            .collect();
        // Every Dir:: entry apt would otherwise take from the host is pointed at private state,
        // so neither the host's sources nor its apt.conf.d snippets leak in.
        format!(
            r#"Dir::Etc::main "{root}/etc/apt.conf";
Dir::Etc::Parts "{root}/etc/apt.conf.d";
Dir::Etc::SourceList "{root}/etc/sources.list";
Dir::Etc::SourceParts "{root}/etc/sources.list.d";
Dir::Etc::Preferences "{root}/etc/preferences";
Dir::Etc::PreferencesParts "{root}/etc/preferences.d";
Dir::Etc::Trusted "{root}/etc/trusted.gpg";
Dir::Etc::TrustedParts "{root}/etc/trusted.gpg.d";
Dir::State "{root}/state";
Dir::State::Lists "{root}/lists";
Dir::State::status "{root}/state/status";
Dir::Cache "{root}/cache";
APT::Architecture "{native}";
APT::Architectures {{ {architectures}}};
APT::Sandbox::User "root";
Acquire::Languages "none";
Acquire::Retries "3";
"#,
            native = self
                .architectures
                .first()
                .map(String::as_str)
                .unwrap_or("amd64"),
        )
    }
}

/// The dpkg architecture of this machine (`amd64`, `arm64`).
fn host_debian_arch() -> Result<String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => bail!("unsupported host architecture {other}"),
    };
    Ok(arch.to_owned())
}

/// A handle on the private apt: its files are written, its lists are refreshed on demand.
#[derive(Debug, Clone)]
pub struct IsolatedApt {
    config: AptConfig,
}

/// A `linux-image-<release>` package reachable from one of the configured suites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelImageInfo {
    /// The package to download: the signed image where Debian ships one, else the unsigned one.
    pub package: String,
    /// The Debian package version, e.g. `6.1.170-3`.
    pub version: String,
    /// What `uname -r` prints on a node booted from it.
    pub release: KernelRelease,
    pub arch: Arch,
    /// `amd64`, `cloud-amd64`, `rt-amd64`, `arm64`, `cloud-arm64` or `rt-arm64`.
    pub flavor: String,
    /// The first configured suite that carries this release.
    pub suite: Suite,
    /// The Debian version of that suite (11, 12, 13).
    pub distro_version: DistroVersion,
}

impl IsolatedApt {
    /// Writes the private configuration files (idempotent; safe under concurrency).
    pub fn new(config: AptConfig) -> Result<IsolatedApt> {
        let root = &config.root;
        for dir in [
            "etc/apt.conf.d",
            "etc/sources.list.d",
            "etc/preferences.d",
            "etc/trusted.gpg.d",
            "state",
            "lists/partial",
            "cache/archives/partial",
        ] {
            fs::create_dir_all(root.join(dir))
                .with_context(|| format!("creating {}", root.join(dir).display()))?;
        }
        if !config.keyring.exists() {
            bail!(
                "Debian archive keyring {} is missing: install the debian-archive-keyring package",
                config.keyring.display()
            );
        }
        let apt = IsolatedApt { config };
        let _lock = CacheLock::acquire(&apt.lock_path())?;
        write_if_changed(&apt.config.root.join("apt.conf"), &apt.config.apt_conf())?;
        write_if_changed(
            &apt.config.root.join("etc/sources.list"),
            &apt.config.sources_list(),
        )?;
        write_if_changed(&apt.config.root.join("etc/apt.conf"), "")?;
        write_if_changed(&apt.config.root.join("state/status"), "")?;
        Ok(apt)
    }

    /// The configuration from the environment (see [`AptConfig::from_env`]).
    pub fn from_env() -> Result<IsolatedApt> {
        IsolatedApt::new(AptConfig::from_env()?)
    }

    pub fn config(&self) -> &AptConfig {
        &self.config
    }

    fn lock_path(&self) -> PathBuf {
        self.config.root.join("apt.lock")
    }

    fn stamp_path(&self) -> PathBuf {
        self.config.root.join("update.stamp")
    }

    /// An `apt-get`/`apt-cache` command that sees only the private configuration.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("APT_CONFIG", self.config.root.join("apt.conf"))
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive");
        command
    }

    /// Runs `apt-get update` unless the lists were refreshed for the same sources less than
    /// `max_age` ago. Suites the mirror does not carry (bullseye-backports has been archived) are
    /// reported once and skipped rather than failing every test.
    pub fn update_if_stale(&self) -> Result<()> {
        if self.is_fresh(self.config.max_age) {
            return Ok(());
        }
        let _lock = CacheLock::acquire(&self.lock_path())?;
        // Another process may have refreshed the lists while we waited for the lock.
        if self.is_fresh(self.config.max_age) {
            return Ok(());
        }
        self.update_locked()
    }

    /// Refreshes the lists now, whatever their age (used when a package vanished from the mirror).
    pub fn force_update(&self) -> Result<()> {
        let _lock = CacheLock::acquire(&self.lock_path())?;
        self.update_locked()
    }

    fn is_fresh(&self, max_age: Duration) -> bool {
        let stamp = self.stamp_path();
        let Ok(recorded) = fs::read_to_string(&stamp) else {
            return false;
        };
        let sources = self.config.sources_list();
        let recorded_sources = recorded.split("\n---\n").next().unwrap_or_default();
        if recorded_sources != sources {
            return false;
        }
        fs::metadata(&stamp)
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok())
            .is_some_and(|age| age < max_age)
    }

    fn update_locked(&self) -> Result<()> {
        let output = self
            .command("apt-get")
            .args(["-q", "update"])
            .output()
            .context("running apt-get update (is apt installed?)")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let missing = missing_release_suites(&stderr);
        let other_errors: Vec<&str> = stderr
            .lines()
            .filter(|line| {
                line.starts_with("E: ") && !line.contains("does not have a Release file")
            })
            .collect();
        if !output.status.success() && (missing.is_empty() || !other_errors.is_empty()) {
            bail!(
                "apt-get update on the private configuration {} failed ({}):\n{}",
                self.config.root.display(),
                output.status,
                stderr
            );
        }
        if !missing.is_empty() {
            eprintln!(
                "testkit: the mirror has no Release file for {} (skipped)",
                missing.join(", ")
            );
        }
        // Build apt's binary cache while we hold the exclusive lock, so concurrent readers find
        // it fresh instead of racing to rebuild it.
        let gencaches = self
            .command("apt-cache")
            .arg("gencaches")
            .output()
            .context("running apt-cache gencaches")?;
        if !gencaches.status.success() {
            bail!(
                "apt-cache gencaches failed: {}",
                String::from_utf8_lossy(&gencaches.stderr)
            );
        }
        let stamp = format!(
            "{}\n---\nunreachable suites: {}\n",
            self.config.sources_list(),
            missing.join(" ")
        );
        let stamp_path = self.stamp_path();
        let scratch = scratch_path(&stamp_path, "tmp");
        fs::write(&scratch, stamp)?;
        fs::rename(&scratch, &stamp_path)?;
        Ok(())
    }

    /// Downloads `name` (optionally `name:arch`) at `version` (or the candidate) into
    /// `cache_dir()/debs`, once; later calls return the cached file.
    ///
    /// Without a version the cache entry is whatever version was the candidate at first
    /// download, which keeps tests reproducible across runs.
    pub fn download_deb(&self, name: &str, version: Option<&str>) -> Result<PathBuf> {
        validate_package_spec(name, version)?;
        let debs = cache_dir().join("debs");
        fs::create_dir_all(&debs)?;
        let file_name = match version {
            Some(version) => format!(
                "{}_{}.deb",
                name.replace(':', "_"),
                version.replace(':', "%3a")
            ),
            None => format!("{}.deb", name.replace(':', "_")),
        };
        let target = debs.join(file_name);
        let _lock = CacheLock::acquire(&target.with_extension("deb.lock"))?;
        if target.exists() {
            return Ok(target);
        }
        let scratch = scratch_path(&target, "download");
        self.download_into(name, version, &scratch)?;
        fs::rename(&scratch, &target)?;
        Ok(target)
    }

    /// Downloads one package to exactly `dest` (not cached; the caller owns the file).
    pub fn download_into(&self, name: &str, version: Option<&str>, dest: &Path) -> Result<()> {
        validate_package_spec(name, version)?;
        self.update_if_stale()?;
        match self.download_once(name, version, dest) {
            Ok(()) => Ok(()),
            // Lists refreshed within the hour are current enough: a failure is not staleness.
            Err(first) if self.is_fresh(Duration::from_secs(3600)) => Err(first),
            Err(first) => {
                // Security pockets drop superseded versions: stale lists point at files that are
                // gone. One forced refresh, then give up with both errors.
                self.force_update()
                    .with_context(|| format!("after: {first:#}"))?;
                self.download_once(name, version, dest).with_context(|| {
                    format!("retry after refreshing the lists (first attempt: {first:#})")
                })
            }
        }
    }

    fn download_once(&self, name: &str, version: Option<&str>, dest: &Path) -> Result<()> {
        let work = scratch_path(dest, "apt-get");
        fs::create_dir_all(&work)?;
        let result = (|| {
            let _shared = self.shared_lock()?;
            let spec = match version {
                Some(version) => format!("{name}={version}"),
                None => name.to_owned(),
            };
            let output = self
                .command("apt-get")
                .args(["-q", "download", &spec])
                .current_dir(&work)
                .output()
                .context("running apt-get download")?;
            if !output.status.success() {
                bail!(
                    "apt-get download {spec} failed ({}):\n{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            let debs: Vec<PathBuf> = fs::read_dir(&work)?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "deb"))
                .collect();
            match debs.as_slice() {
                [deb] => {
                    fs::rename(deb, dest)?;
                    Ok(())
                }
                other => bail!(
                    "apt-get download {spec} produced {} .deb files",
                    other.len()
                ),
            }
        })();
        let _ = fs::remove_dir_all(&work);
        result
    }

    fn shared_lock(&self) -> Result<fs::File> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.lock_path())?;
        file.lock_shared()?;
        Ok(file)
    }

    /// Every `linux-image-<release>` package for `arch` (generic, cloud and rt flavors) in
    /// `suites` (all configured suites when empty), one entry per release, oldest Debian release
    /// first and in version order within it.
    pub fn kernel_images(&self, arch: Arch, suites: &[Suite]) -> Result<Vec<KernelImageInfo>> {
        self.update_if_stale()?;
        let _shared = self.shared_lock()?;
        let wanted: Vec<&Suite> = if suites.is_empty() {
            self.config.suites.iter().collect()
        } else {
            suites.iter().collect()
        };
        let output = self
            .command("apt-get")
            .args([
                "indextargets",
                "--format",
                "$(FILENAME)\t$(RELEASE)\t$(ARCHITECTURE)",
                "Identifier: Packages",
            ])
            .output()
            .context("running apt-get indextargets")?;
        if !output.status.success() {
            bail!(
                "apt-get indextargets failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let mut index_files: BTreeMap<Suite, PathBuf> = BTreeMap::new();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let mut fields = line.split('\t');
            let (Some(file), Some(release), Some(index_arch)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if index_arch != arch.debian_name() {
                continue;
            }
            if let Some(suite) = wanted.iter().find(|suite| suite.name() == release) {
                index_files.insert((*suite).clone(), PathBuf::from(file));
            }
        }

        let mut found: BTreeMap<String, KernelImageInfo> = BTreeMap::new();
        for suite in &wanted {
            let Some(file) = index_files.get(*suite) else {
                continue;
            };
            if !file.exists() {
                continue;
            }
            let distro_version = suite.distro_version()?;
            let packages = read_package_versions(file)?;
            for (package, version) in &packages {
                let Some((release, flavor)) = parse_image_package(package, arch) else {
                    continue;
                };
                let signed = format!("linux-image-{release}");
                // Prefer the signed package (what `apt install` picks); the unsigned one carries
                // the same vmlinuz and modules, only without signatures.
                if package.ends_with("-unsigned") && packages.contains_key(&signed) {
                    continue;
                }
                if found.contains_key(&release) {
                    continue;
                }
                let kernel_release = KernelRelease::parse(&release)
                    .with_context(|| format!("package {package} in {suite}"))?;
                found.insert(
                    release,
                    KernelImageInfo {
                        package: package.clone(),
                        version: version.clone(),
                        release: kernel_release,
                        arch,
                        flavor,
                        suite: (*suite).clone(),
                        distro_version: distro_version.clone(),
                    },
                );
            }
        }
        let mut images: Vec<KernelImageInfo> = found.into_values().collect();
        images.sort_by(|a, b| {
            let rank = |image: &KernelImageInfo| {
                DEBIAN_CODENAMES
                    .iter()
                    .position(|codename| *codename == image.suite.codename())
            };
            rank(a)
                .cmp(&rank(b))
                .then_with(|| kernel_release_cmp(a.release.as_str(), b.release.as_str()))
        });
        Ok(images)
    }
}

/// `Package:` -> `Version:` of every stanza in an uncompressed Packages index. A package listed
/// twice (not usual in one suite's index for one architecture) keeps the version dpkg ranks
/// newest, which is what apt would pick.
fn read_package_versions(path: &Path) -> Result<BTreeMap<String, String>> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut packages = BTreeMap::new();
    let mut package: Option<String> = None;
    for line in BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if let Some(name) = line.strip_prefix("Package: ") {
            package = Some(name.trim().to_owned());
        } else if let Some(version) = line.strip_prefix("Version: ")
            && let Some(name) = package.take()
        {
            let version = version.trim();
            let newer = packages
                .get(&name)
                .is_none_or(|known: &String| dpkg_cmp(version, known).is_gt());
            if newer {
                packages.insert(name, version.to_owned());
            }
        } else if line.is_empty() {
            package = None;
        }
    }
    Ok(packages)
}

/// Flavors per architecture, most specific first so `-cloud-amd64` is not read as `-amd64`.
fn flavors(arch: Arch) -> [&'static str; 3] {
    match arch.debian_name() {
        "arm64" => ["cloud-arm64", "rt-arm64", "arm64"],
        _ => ["cloud-amd64", "rt-amd64", "amd64"],
    }
}

/// `linux-image-6.1.0-47-cloud-amd64` -> (`6.1.0-47-cloud-amd64`, `cloud-amd64`). Metapackages
/// (`linux-image-amd64`, `linux-image-6.12-amd64`), debug symbols and other flavors yield None:
/// a real image's ABI name has at least major.minor.patch.
pub(crate) fn parse_image_package(package: &str, arch: Arch) -> Option<(String, String)> {
    let rest = package.strip_prefix("linux-image-")?;
    let rest = rest.strip_suffix("-unsigned").unwrap_or(rest);
    for flavor in flavors(arch) {
        if let Some(abi) = rest.strip_suffix(&format!("-{flavor}")) {
            let numeric: Vec<&str> = abi
                .split(['-', '+', '~'])
                .next()
                .unwrap_or_default()
                .split('.')
                .collect();
            let looks_like_abi = numeric.len() >= 3
                && numeric[..3]
                    .iter()
                    .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()));
            if !looks_like_abi {
                return None;
            }
            return Some((format!("{abi}-{flavor}"), flavor.to_owned()));
        }
    }
    None
}

/// Suites named in apt-get update's "does not have a Release file" errors.
fn missing_release_suites(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|line| line.contains("does not have a Release file"))
        .filter_map(|line| {
            let quoted = line.split('\'').nth(1)?;
            let mut words = quoted.split_whitespace();
            let _mirror = words.next()?;
            words.next().map(str::to_owned)
        })
        .collect()
}

/// Package specs reach apt-get as a single argument; refuse anything that is not a package name
/// (with optional :arch) so a typo cannot turn into an option or a glob.
fn validate_package_spec(name: &str, version: Option<&str>) -> Result<()> {
    let name_ok = !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.:".contains(c));
    if !name_ok {
        bail!("package name '{name}': must be a Debian package name, optionally with :arch");
    }
    if let Some(version) = version {
        let version_ok = !version.is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+-~:".contains(c));
        if !version_ok {
            bail!("package version '{version}': must be a Debian version string");
        }
    }
    Ok(())
}

fn write_if_changed(path: &Path, content: &str) -> Result<()> {
    if fs::read_to_string(path).is_ok_and(|current| current == content) {
        return Ok(());
    }
    let scratch = scratch_path(path, "tmp");
    fs::write(&scratch, content).with_context(|| format!("writing {}", scratch.display()))?;
    fs::rename(&scratch, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// [`IsolatedApt::download_deb`] with the configuration from the environment.
pub fn download_deb(name_with_optional_arch: &str, version: Option<&str>) -> Result<PathBuf> {
    IsolatedApt::from_env()?.download_deb(name_with_optional_arch, version)
}

/// [`IsolatedApt::kernel_images`] with the configuration from the environment.
pub fn list_kernel_images(arch: Arch, suites: &[Suite]) -> Result<Vec<KernelImageInfo>> {
    IsolatedApt::from_env()?.kernel_images(arch, suites)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_packages_are_split_into_release_and_flavor() {
        let amd = Arch::parse("amd64").expect("arch");
        let arm = Arch::parse("arm64").expect("arch");
        assert_eq!(
            parse_image_package("linux-image-6.1.0-47-cloud-amd64", amd),
            Some(("6.1.0-47-cloud-amd64".into(), "cloud-amd64".into()))
        );
        assert_eq!(
            parse_image_package("linux-image-6.12.107+deb13-rt-amd64-unsigned", amd),
            Some(("6.12.107+deb13-rt-amd64".into(), "rt-amd64".into()))
        );
        assert_eq!(
            parse_image_package("linux-image-6.1.0-0.deb11.48-arm64", arm),
            Some(("6.1.0-0.deb11.48-arm64".into(), "arm64".into()))
        );
        // Metapackages, debug symbols and other architectures are not images.
        assert_eq!(parse_image_package("linux-image-amd64", amd), None);
        assert_eq!(parse_image_package("linux-image-6.12-amd64", amd), None);
        assert_eq!(
            parse_image_package("linux-image-6.1-cloud-amd64", amd),
            None
        );
        assert_eq!(
            parse_image_package("linux-image-6.1.0-47-amd64-dbg", amd),
            None
        );
        assert_eq!(parse_image_package("linux-image-6.1.0-47-arm64", amd), None);
        assert_eq!(
            parse_image_package("linux-image-6.1.0-47-arm64-16k", arm),
            None
        );
    }

    #[test]
    fn a_package_listed_twice_keeps_the_version_dpkg_ranks_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = dir.path().join("Packages");
        fs::write(
            &index,
            "Package: linux-image-6.1.0-47-amd64\nVersion: 6.1.170-3\n\n\
             Package: linux-image-6.1.0-47-amd64\nVersion: 6.1.170-3~bpo11+1\n\n\
             Package: linux-kbuild-6.1\nVersion: 6.1.170-3\n\n\
             Package: linux-kbuild-6.1\nVersion: 6.1.170-10\n",
        )
        .expect("write index");
        let versions = read_package_versions(&index).expect("read index");
        assert_eq!(versions["linux-image-6.1.0-47-amd64"], "6.1.170-3");
        assert_eq!(versions["linux-kbuild-6.1"], "6.1.170-10");
    }

    #[test]
    fn kernel_releases_sort_in_kernel_ids_order() {
        let mut releases = vec![
            "6.1.0-10-amd64",
            "6.1.0-9-amd64",
            "6.12.100+deb12-amd64",
            "6.12.43+deb12-amd64",
        ];
        releases.sort_by(|a, b| kernel_release_cmp(a, b));
        assert_eq!(
            releases,
            [
                "6.1.0-9-amd64",
                "6.1.0-10-amd64",
                "6.12.43+deb12-amd64",
                "6.12.100+deb12-amd64"
            ]
        );
    }

    #[test]
    fn suites_map_to_debian_versions_through_kernel_id() {
        assert_eq!(
            Suite::new("bullseye-security")
                .and_then(|s| s.distro_version())
                .expect("bullseye")
                .as_str(),
            "11"
        );
        assert_eq!(
            Suite::new("trixie-backports")
                .and_then(|s| s.distro_version())
                .expect("trixie")
                .as_str(),
            "13"
        );
        assert!(Suite::new("sid").is_err());
        assert!(Suite::new("bookworm-proposed").is_err());
        assert_eq!(Suite::all().len(), 12);
    }

    #[test]
    fn sources_use_the_security_archive_only_for_security_suites() {
        let config = AptConfig {
            root: PathBuf::from("/x"),
            archive_mirror: "http://mirror/debian/".into(),
            security_mirror: "http://mirror/debian-security".into(),
            suites: Suite::family("bookworm").expect("family"),
            keyring: PathBuf::from("/k.gpg"),
            max_age: Duration::from_secs(1),
            architectures: vec!["amd64".into(), "arm64".into()],
        };
        assert_eq!(
            config.sources_list(),
            "deb [signed-by=/k.gpg] http://mirror/debian bookworm main\n\
             deb [signed-by=/k.gpg] http://mirror/debian bookworm-updates main\n\
             deb [signed-by=/k.gpg] http://mirror/debian-security bookworm-security main\n\
             deb [signed-by=/k.gpg] http://mirror/debian bookworm-backports main\n"
        );
        assert!(
            config
                .apt_conf()
                .contains("APT::Architectures { \"amd64\"; \"arm64\"; };")
        );
    }

    #[test]
    fn missing_release_errors_name_the_suite() {
        let stderr = "E: The repository 'http://deb.debian.org/debian bullseye-backports Release' does not have a Release file.\nN: Updating from such a repository can't be done securely\n";
        assert_eq!(missing_release_suites(stderr), ["bullseye-backports"]);
    }

    #[test]
    fn package_specs_that_could_become_options_are_refused() {
        assert!(validate_package_spec("busybox-static:arm64", None).is_ok());
        assert!(
            validate_package_spec("linux-image-6.12.107+deb13-amd64", Some("6.12.107-1")).is_ok()
        );
        assert!(validate_package_spec("-o", None).is_err());
        assert!(validate_package_spec("linux-image-*", None).is_err());
        assert!(validate_package_spec("busybox", Some("1 2")).is_err());
    }
}
