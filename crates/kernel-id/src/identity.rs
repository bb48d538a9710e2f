//! `KernelIdentity`: the five fields an artifact is valid for, and every name derived from them —
//! cache key, package file name (which parses back), package metadata, install path and branch name.

use serde::{Deserialize, Serialize};

use crate::arch::{Arch, truncate};
use crate::derive::derive_distro_version;
use crate::distro::{Distribution, DistroVersion};
use crate::driver::{DriverName, DriverVersion};
use crate::error::{Field, IdError};
use crate::release::KernelRelease;

/// The identity inputs as strings, exactly as the build-service API and workflow inputs carry them.
/// A missing `distro_version` means the distribution's pinned default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityInput {
    /// The `uname -r` string.
    pub kernel_version: String,
    /// `x86_64`, `aarch64` or a Debian alias.
    pub architecture: String,
    /// Distribution id.
    pub distribution: String,
    /// Distribution version; the pinned default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distro_version: Option<String>,
    /// `v`-prefixed driver version.
    pub driver_version: String,
}

/// Exactly what one driver artifact is valid for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelIdentity {
    distro_version: DistroVersion,
    arch: Arch,
    kernel_release: KernelRelease,
    driver_version: DriverVersion,
}

impl KernelIdentity {
    /// Builds an identity, refusing unsupported distro versions and releases whose own markers
    /// (`.x86_64`, `-arm64`, `.fc42`, `+deb13`, ...) contradict the other fields.
    pub fn new(
        kernel_release: KernelRelease,
        arch: Arch,
        distro_version: DistroVersion,
        driver_version: DriverVersion,
    ) -> Result<Self, IdError> {
        distro_version.ensure_supported()?;
        if kernel_release.as_str().contains('~') {
            // GitHub rewrites '~' in release asset names (and git refs forbid it), so the artifact
            // would be stored under a name no loader computes. Real `uname -r` strings never carry it.
            return Err(IdError::new(
                Field::KernelVersion,
                format!(
                    "must not contain '~' in an artifact identity: release asset names can't hold it (got {kernel_release})"
                ),
            ));
        }
        check_arch_marker(&kernel_release, arch)?;
        if let Some(derived) = derive_distro_version(kernel_release.as_str(), None) {
            if derived.distribution() != distro_version.distribution() {
                return Err(IdError::new(
                    Field::Distribution,
                    format!(
                        "kernel_version {} is a {} kernel, not {}",
                        kernel_release,
                        derived.distribution(),
                        distro_version.distribution()
                    ),
                ));
            }
            if derived != distro_version {
                return Err(IdError::new(
                    Field::DistroVersion,
                    format!(
                        "kernel_version {} was built for {} {}, not {}",
                        kernel_release,
                        derived.distribution(),
                        derived,
                        distro_version
                    ),
                ));
            }
        }
        Ok(Self {
            distro_version,
            arch,
            kernel_release,
            driver_version,
        })
    }

    /// Validates string inputs; a missing distro version becomes the pinned default.
    pub fn from_input(input: &IdentityInput) -> Result<Self, IdError> {
        let kernel_release = KernelRelease::parse(&input.kernel_version)?;
        let arch = Arch::parse(&input.architecture)?;
        let distribution = Distribution::parse(&input.distribution)?;
        let distro_version = match &input.distro_version {
            Some(raw) => DistroVersion::supported(distribution, raw)?,
            None => distribution.default_version(),
        };
        let driver_version = DriverVersion::parse(&input.driver_version)?;
        Self::new(kernel_release, arch, distro_version, driver_version)
    }

    /// The identity as string inputs (with the distro version always filled in).
    pub fn to_input(&self) -> IdentityInput {
        IdentityInput {
            kernel_version: self.kernel_release.to_string(),
            architecture: self.arch.to_string(),
            distribution: self.distribution().to_string(),
            distro_version: Some(self.distro_version.to_string()),
            driver_version: self.driver_version.to_string(),
        }
    }

    /// The `uname -r` string.
    pub fn kernel_release(&self) -> &KernelRelease {
        &self.kernel_release
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The distribution.
    pub fn distribution(&self) -> Distribution {
        self.distro_version.distribution()
    }

    /// The distribution version.
    pub fn distro_version(&self) -> &DistroVersion {
        &self.distro_version
    }

    /// The driver version.
    pub fn driver_version(&self) -> &DriverVersion {
        &self.driver_version
    }

    /// One key per artifact, holding all five fields: builds are deduplicated on it.
    pub fn cache_key(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.distribution(),
            self.distro_version,
            self.arch,
            self.kernel_release,
            self.driver_version
        )
    }

    /// Parses a key made by [`KernelIdentity::cache_key`].
    pub fn parse_cache_key(key: &str) -> Result<Self, IdError> {
        let mut parts = key.split('/');
        let (
            Some(distribution),
            Some(distro_version),
            Some(arch),
            Some(release),
            Some(driver_version),
            None,
        ) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        )
        else {
            return Err(IdError::new(
                Field::FileName,
                format!(
                    "a cache key must be distribution/distro_version/arch/kernel_release/driver_version (got {:?})",
                    truncate(key)
                ),
            ));
        };
        let distribution = Distribution::parse(distribution)?;
        Self::new(
            KernelRelease::parse(release)?,
            Arch::parse(arch)?,
            DistroVersion::supported(distribution, distro_version)?,
            DriverVersion::parse(driver_version)?,
        )
    }

    /// `{driver}-{distribution}-{distro_version}-{kernel_release}_{driver_version}_{debian_arch}.{ext}`.
    pub fn package_file_name(&self, driver: &DriverName) -> String {
        format!(
            "{}-{}-{}-{}_{}_{}.{}",
            driver,
            self.distribution(),
            self.distro_version,
            self.kernel_release,
            self.driver_version,
            self.arch.debian_name(),
            self.distribution().package_format().extension()
        )
    }

    /// Parses a package file name made by [`KernelIdentity::package_file_name`] for `driver`.
    pub fn parse_package_file_name(driver: &DriverName, file_name: &str) -> Result<Self, IdError> {
        let err = |rule: &str| {
            IdError::new(
                Field::FileName,
                format!("{rule} (got {:?})", truncate(file_name)),
            )
        };
        let rest = file_name
            .strip_prefix(driver.as_str())
            .and_then(|r| r.strip_prefix('-'))
            .ok_or_else(|| err(&format!("must start with the driver name {driver}-")))?;
        let (stem, extension) = rest
            .rsplit_once('.')
            .ok_or_else(|| err("must end with .deb or .rpm"))?;
        let mut tail = stem.rsplitn(3, '_');
        let (Some(debian_arch), Some(driver_version), Some(head)) =
            (tail.next(), tail.next(), tail.next())
        else {
            return Err(err(
                "must look like {driver}-{distribution}-{distro_version}-{kernel}_{driver_version}_{arch}.{ext}",
            ));
        };
        let mut parts = head.splitn(3, '-');
        let (Some(distribution), Some(distro_version), Some(release)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(err(
                "must hold distribution, distro version and kernel release",
            ));
        };
        let distribution = Distribution::parse(distribution)?;
        let identity = Self::new(
            KernelRelease::parse(release)?,
            Arch::parse(debian_arch)?,
            DistroVersion::supported(distribution, distro_version)?,
            DriverVersion::parse(driver_version)?,
        )?;
        if debian_arch != identity.arch.debian_name() {
            return Err(err(
                "must use the Debian architecture name (amd64 or arm64)",
            ));
        }
        if extension != distribution.package_format().extension() {
            return Err(err(&format!(
                "{distribution} packages end with .{}",
                distribution.package_format().extension()
            )));
        }
        Ok(identity)
    }

    /// Parses a package file name when the driver name is not known, by finding the first
    /// `-{distribution}-` split that yields a valid identity.
    pub fn parse_any_package_file_name(file_name: &str) -> Result<(DriverName, Self), IdError> {
        let mut first_error = None;
        for (at, _) in file_name.match_indices('-') {
            let Ok(driver) = DriverName::parse(&file_name[..at]) else {
                continue;
            };
            let next = &file_name[at + 1..];
            if !Distribution::all().any(|d| {
                next.strip_prefix(d.as_str())
                    .is_some_and(|r| r.starts_with('-'))
            }) {
                continue;
            }
            match Self::parse_package_file_name(&driver, file_name) {
                Ok(identity) => return Ok((driver, identity)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| {
            IdError::new(
                Field::FileName,
                format!(
                    "must contain -{{distribution}}- after the driver name (got {:?})",
                    truncate(file_name)
                ),
            )
        }))
    }

    /// The package's internal name for dpkg and rpm: lower-case `[a-z0-9+.-]`.
    pub fn package_name(&self, driver: &DriverName) -> String {
        let release: String = self
            .kernel_release
            .as_str()
            .chars()
            .map(|c| match c {
                '_' | '~' => '-',
                c => c.to_ascii_lowercase(),
            })
            .collect();
        format!("{driver}-{release}")
    }

    /// The package version for dpkg and rpm metadata.
    pub fn package_version(&self) -> String {
        self.driver_version.package_version()
    }

    /// The one-line package description naming the driver, its version and the kernel.
    pub fn package_description(&self, driver: &DriverName) -> String {
        format!(
            "{driver} {} kernel module for Linux {} ({} {}, {})",
            self.driver_version,
            self.kernel_release,
            self.distribution(),
            self.distro_version,
            self.arch
        )
    }

    /// Where the package installs the driver's modules.
    pub fn module_install_dir(&self, driver: &DriverName) -> String {
        format!("/lib/modules/{}/updates/{driver}", self.kernel_release)
    }

    /// The detached minisign signature's file name.
    pub fn signature_file_name(&self, driver: &DriverName) -> String {
        format!("{}.minisig", self.package_file_name(driver))
    }

    /// The SHA-256 digest file's name (sha256sum format: `<hex>  <file>\n`).
    pub fn digest_file_name(&self, driver: &DriverName) -> String {
        format!("{}.sha256", self.package_file_name(driver))
    }

    /// The build provenance file's name (an in-toto statement per line, the SLSA convention), published
    /// beside the package when a build produced one.
    pub fn provenance_file_name(&self, driver: &DriverName) -> String {
        format!("{}.intoto.jsonl", self.package_file_name(driver))
    }

    /// The kernel-crawler / kernels.json target for this kernel (`debian`, `ubuntu-gcp`, ...).
    pub fn crawler_target(&self) -> String {
        self.distribution()
            .crawler_target(&self.distro_version, self.kernel_release.as_str())
    }

    /// The predictable branch of the PR that adds this kernel to kernels.json.
    pub fn add_kernel_branch(&self) -> String {
        format!(
            "add-kernel/{}/{}/{}/{}",
            self.distribution(),
            self.distro_version,
            self.arch,
            self.kernel_release.dashed()
        )
    }
}

/// Releases that name their architecture must name the identity's.
fn check_arch_marker(release: &KernelRelease, arch: Arch) -> Result<(), IdError> {
    let r = release.as_str();
    let named = Arch::ALL.into_iter().find(|a| {
        r.ends_with(&format!(".{}", a.rpm_name())) || r.ends_with(&format!("-{}", a.debian_name()))
    });
    match named {
        Some(named) if named != arch => Err(IdError::new(
            Field::Architecture,
            format!("kernel_version {r} is a {named} kernel, not {arch}"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(release: &str, arch: &str, distro: &str, version: Option<&str>) -> IdentityInput {
        IdentityInput {
            kernel_version: release.into(),
            architecture: arch.into(),
            distribution: distro.into(),
            distro_version: version.map(Into::into),
            driver_version: "v0.1.2".into(),
        }
    }

    #[test]
    fn file_names_follow_the_documented_examples() {
        let driver = DriverName::parse("example-driver").unwrap();
        let ubuntu =
            KernelIdentity::from_input(&input("6.14.0-1021-gcp", "amd64", "ubuntu", Some("24.04")))
                .unwrap();
        assert_eq!(
            ubuntu.package_file_name(&driver),
            "example-driver-ubuntu-24.04-6.14.0-1021-gcp_v0.1.2_amd64.deb"
        );
        let al = KernelIdentity::from_input(&input(
            "6.12.58-82.121.amzn2023.x86_64",
            "x86_64",
            "amazonlinux",
            None,
        ))
        .unwrap();
        assert_eq!(
            al.package_file_name(&driver),
            "example-driver-amazonlinux-2023-6.12.58-82.121.amzn2023.x86_64_v0.1.2_amd64.rpm"
        );
    }

    #[test]
    fn markers_in_the_release_must_agree() {
        let e = KernelIdentity::from_input(&input("6.1.0-47-amd64", "arm64", "debian", None))
            .unwrap_err();
        assert_eq!(e.field(), Field::Architecture);
        let e = KernelIdentity::from_input(&input(
            "6.12.48+deb13-amd64",
            "amd64",
            "debian",
            Some("12"),
        ))
        .unwrap_err();
        assert_eq!(e.field(), Field::DistroVersion);
        let e =
            KernelIdentity::from_input(&input("6.14.0-100.fc42.x86_64", "x86_64", "centos", None))
                .unwrap_err();
        assert_eq!(e.field(), Field::Distribution);
    }
}
