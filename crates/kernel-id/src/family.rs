//! Kernel families: the kernels a node will boot next are the newer ones of the family it runs now.
//! A family is (distribution, distro version, architecture, kernel series, flavor): a Debian 12 node
//! on `6.1.0-47-cloud-amd64` follows `linux-image-cloud-amd64`, so its next kernel is a newer
//! `6.1.0-N-cloud-amd64` — never a `-rt-amd64` one, never the 6.12 backports series it did not
//! choose. The repository watcher prebuilds only for families the fleet runs; the `/fleet` page
//! groups nodes by family. Deriving the family from a release is naming, so it lives here.

use std::fmt;

use crate::arch::Arch;
use crate::distro::{DistroVersion, PackageFormat};
use crate::error::{Field, IdError};
use crate::identity::KernelIdentity;
use crate::release::KernelRelease;

/// The family of kernels a release belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelFamily {
    distro_version: DistroVersion,
    arch: Arch,
    series: String,
    flavor: String,
}

/// The flavor name of rpm kernels without a `+variant` suffix.
pub const DEFAULT_RPM_FLAVOR: &str = "default";

impl KernelFamily {
    /// The family of `release` on `distro_version`/`arch`: the `major.minor` series and the flavor
    /// (Debian/Ubuntu: what follows the numeric ABI, `amd64`, `cloud-amd64`, `generic`; rpm
    /// distributions: the `+variant` suffix, else [`DEFAULT_RPM_FLAVOR`]).
    pub fn of_release(
        release: &KernelRelease,
        arch: Arch,
        distro_version: &DistroVersion,
    ) -> Result<Self, IdError> {
        let raw = release.as_str();
        let series = series_of(raw).ok_or_else(|| {
            IdError::new(
                Field::KernelVersion,
                format!("{raw}: must begin with major.minor to name its kernel series"),
            )
        })?;
        let flavor = match distro_version.distribution().package_format() {
            PackageFormat::Deb => deb_flavor(raw).ok_or_else(|| {
                IdError::new(
                    Field::KernelVersion,
                    format!(
                        "{raw}: a {} kernel release ends in its flavor after the ABI \
                         (e.g. 6.1.0-47-amd64)",
                        distro_version.distribution()
                    ),
                )
            })?,
            PackageFormat::Rpm => rpm_flavor(raw),
        };
        Ok(Self {
            distro_version: distro_version.clone(),
            arch,
            series,
            flavor,
        })
    }

    /// The family of an identity's kernel.
    pub fn of(identity: &KernelIdentity) -> Result<Self, IdError> {
        Self::of_release(
            identity.kernel_release(),
            identity.arch(),
            identity.distro_version(),
        )
    }

    /// Whether `release` (on this family's distro version and architecture) belongs to it.
    pub fn contains(&self, release: &KernelRelease) -> bool {
        Self::of_release(release, self.arch, &self.distro_version).is_ok_and(|other| other == *self)
    }

    /// The distro version (and with it the distribution).
    pub fn distro_version(&self) -> &DistroVersion {
        &self.distro_version
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The upstream `major.minor` series, e.g. `6.1`.
    pub fn series(&self) -> &str {
        &self.series
    }

    /// The flavor, e.g. `amd64`, `cloud-amd64`, `generic`, `default`.
    pub fn flavor(&self) -> &str {
        &self.flavor
    }

    /// A stable key, `debian/12/x86_64/6.1/cloud-amd64`: safe in URLs, file names and metric labels.
    pub fn key(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for KernelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}/{}",
            self.distro_version.distribution(),
            self.distro_version,
            self.arch,
            self.series,
            self.flavor
        )
    }
}

fn series_of(release: &str) -> Option<String> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().filter(|p| !p.is_empty())?;
    let rest = release.get(major.len()..)?;
    let minor: String = rest
        .strip_prefix('.')?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!minor.is_empty()).then(|| format!("{major}.{minor}"))
}

/// Debian and Ubuntu: `<upstream>[+debN]-<abi>-<flavor>`, or trixie's `<upstream>+debN-<flavor>`
/// without an ABI number. Numeric parts after the upstream version are the ABI.
fn deb_flavor(release: &str) -> Option<String> {
    let mut parts = release.split('-');
    parts.next()?;
    let flavor: Vec<&str> = parts
        .skip_while(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    if flavor.is_empty() || flavor.iter().any(|part| part.is_empty()) {
        return None;
    }
    Some(flavor.join("-"))
}

/// rpm distributions: `6.11.4-301.fc41.x86_64[+debug]`; the variant follows `+`.
fn rpm_flavor(release: &str) -> String {
    release
        .rsplit_once('+')
        .map(|(_, variant)| variant)
        .filter(|variant| !variant.is_empty() && !variant.contains('.'))
        .map_or_else(|| DEFAULT_RPM_FLAVOR.to_owned(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distro::Distribution;

    fn family(release: &str, arch: Arch, distribution: &str, version: &str) -> KernelFamily {
        let distribution = Distribution::parse(distribution).unwrap();
        let version = DistroVersion::supported(distribution, version).unwrap();
        KernelFamily::of_release(&KernelRelease::parse(release).unwrap(), arch, &version)
            .unwrap_or_else(|e| panic!("{release}: {e}"))
    }

    #[test]
    fn debian_flavors_follow_the_abi() {
        let x = Arch::X86_64;
        assert_eq!(
            family("6.1.0-47-amd64", x, "debian", "12").key(),
            "debian/12/x86_64/6.1/amd64"
        );
        assert_eq!(
            family("6.1.0-47-cloud-amd64", x, "debian", "12").flavor(),
            "cloud-amd64"
        );
        assert_eq!(
            family("6.1.0-47-rt-amd64", x, "debian", "12").flavor(),
            "rt-amd64"
        );
        assert_eq!(
            family("6.12.57+deb13-amd64", x, "debian", "13").key(),
            "debian/13/x86_64/6.12/amd64"
        );
        assert_eq!(
            family("6.1.0-47-arm64", Arch::Aarch64, "debian", "12").flavor(),
            "arm64"
        );
        assert_eq!(
            family("5.15.0-91-generic", x, "ubuntu", "22.04").key(),
            "ubuntu/22.04/x86_64/5.15/generic"
        );
    }

    #[test]
    fn one_family_holds_newer_abis_of_the_same_flavor_and_series_only() {
        let f = family("6.1.0-47-amd64", Arch::X86_64, "debian", "12");
        let r = |s: &str| KernelRelease::parse(s).unwrap();
        assert!(f.contains(&r("6.1.0-48-amd64")));
        assert!(!f.contains(&r("6.1.0-48-cloud-amd64")));
        assert!(!f.contains(&r("6.1.0-48-rt-amd64")));
        assert!(!f.contains(&r("6.12.38+deb12-amd64")));
    }

    #[test]
    fn rpm_flavors_are_variants() {
        let x = Arch::X86_64;
        assert_eq!(
            family("6.17.4-300.fc43.x86_64", x, "fedora", "43").flavor(),
            DEFAULT_RPM_FLAVOR
        );
        assert_eq!(
            family("5.14.0-503.el9.x86_64+debug", x, "centos", "stream9").flavor(),
            "debug"
        );
        assert_eq!(
            family("6.1.115-126.197.amzn2023.x86_64", x, "amazonlinux", "2023").key(),
            "amazonlinux/2023/x86_64/6.1/default"
        );
    }

    #[test]
    fn a_deb_release_without_a_flavor_is_refused_naming_the_field() {
        let version = Distribution::parse("debian").unwrap().default_version();
        let err = KernelFamily::of_release(
            &KernelRelease::parse("6.1.0-47").unwrap(),
            Arch::X86_64,
            &version,
        )
        .unwrap_err();
        assert_eq!(err.field(), Field::KernelVersion);
    }
}
