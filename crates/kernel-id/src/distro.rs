//! Distributions and their versions, driven by one table (`DISTROS`): adding rhel, rocky or alma is one
//! row there, not a new code path. The table holds each distribution's version rule, supported versions,
//! pinned default, package format, os-release IDs, crawler target name and suite codenames.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use crate::arch::truncate;
use crate::error::{Field, IdError};

/// The native package format of a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PackageFormat {
    /// Debian package (.deb).
    Deb,
    /// RPM package (.rpm).
    Rpm,
}

impl PackageFormat {
    /// The file extension without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            PackageFormat::Deb => "deb",
            PackageFormat::Rpm => "rpm",
        }
    }
}

/// How a distribution spells its versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VersionRule {
    /// `YY.MM` with month 01..12 (Ubuntu).
    YearMonth,
    /// A plain positive integer (Debian 12, Fedora 42).
    Integer,
    /// `streamN` (CentOS Stream); os-release says just `N`.
    Stream,
    /// `2` or a year such as `2023` (Amazon Linux).
    AmazonLinux,
}

impl VersionRule {
    fn describe(self) -> &'static str {
        match self {
            VersionRule::YearMonth => "must be YY.MM (e.g. 24.04)",
            VersionRule::Integer => "must be a positive integer (e.g. 12)",
            VersionRule::Stream => "must be streamN (e.g. stream9)",
            VersionRule::AmazonLinux => "must be 2 or a four-digit year (e.g. 2023)",
        }
    }

    fn accepts(self, raw: &str) -> bool {
        let positive_int = |s: &str| {
            !s.is_empty()
                && s.len() <= 4
                && s.bytes().all(|b| b.is_ascii_digit())
                && !s.starts_with('0')
        };
        match self {
            VersionRule::YearMonth => {
                let b = raw.as_bytes();
                b.len() == 5
                    && b[2] == b'.'
                    && b[..2].iter().chain(&b[3..]).all(u8::is_ascii_digit)
                    && matches!(raw[3..].parse::<u8>(), Ok(1..=12))
            }
            VersionRule::Integer => positive_int(raw),
            VersionRule::Stream => raw
                .strip_prefix("stream")
                .is_some_and(|n| positive_int(n) && n.len() <= 2),
            VersionRule::AmazonLinux => {
                raw == "2" || (raw.len() == 4 && raw.starts_with("20") && positive_int(raw))
            }
        }
    }

    /// Maps an os-release `VERSION_ID` to this rule's spelling.
    fn spell_os_release_version(self, version_id: &str) -> String {
        match self {
            VersionRule::Stream => format!("stream{version_id}"),
            _ => version_id.to_owned(),
        }
    }
}

/// One row of the distribution table.
#[derive(Debug)]
struct DistroSpec {
    id: &'static str,
    os_release_ids: &'static [&'static str],
    format: PackageFormat,
    rule: VersionRule,
    supported: &'static [&'static str],
    default: &'static str,
    codenames: &'static [(&'static str, &'static str)],
    /// kernel-crawler / driverkit target: the exact name, or the prefix before `-<flavor>` or `<version>`.
    crawler_target: &'static str,
    target_style: TargetStyle,
    /// Supported version -> `major.minor` of its GA kernel series, for distributions whose package
    /// versions don't always name the release a kernel was built for (Ubuntu's GA kernels).
    ga_kernel_series: &'static [(&'static str, &'static str)],
}

/// How a distribution's crawler target is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetStyle {
    /// Just the name: `debian`, `fedora`, `centos`.
    Plain,
    /// Name, dash, kernel flavor: `ubuntu-generic`, `ubuntu-gcp`.
    Flavor,
    /// Name followed by the version: `amazonlinux2023`.
    Versioned,
}

static DISTROS: &[DistroSpec] = &[
    DistroSpec {
        id: "ubuntu",
        os_release_ids: &["ubuntu"],
        format: PackageFormat::Deb,
        rule: VersionRule::YearMonth,
        supported: &["22.04", "24.04", "25.10", "26.04"],
        default: "24.04",
        codenames: &[
            ("22.04", "jammy"),
            ("24.04", "noble"),
            ("25.10", "questing"),
            ("26.04", "resolute"),
        ],
        crawler_target: "ubuntu",
        target_style: TargetStyle::Flavor,
        // Ubuntu kernel lifecycle, ubuntu.com/kernel/lifecycle: the series each supported release
        // shipped with (its GA kernel). Unsupported releases are left out on purpose.
        ga_kernel_series: &[
            ("22.04", "5.15"),
            ("24.04", "6.8"),
            ("25.10", "6.17"),
            ("26.04", "7.0"),
        ],
    },
    DistroSpec {
        id: "debian",
        os_release_ids: &["debian"],
        format: PackageFormat::Deb,
        rule: VersionRule::Integer,
        supported: &["11", "12", "13"],
        default: "12",
        codenames: &[("11", "bullseye"), ("12", "bookworm"), ("13", "trixie")],
        crawler_target: "debian",
        target_style: TargetStyle::Plain,
        ga_kernel_series: &[],
    },
    DistroSpec {
        id: "fedora",
        os_release_ids: &["fedora"],
        format: PackageFormat::Rpm,
        rule: VersionRule::Integer,
        supported: &["42", "43"],
        default: "42",
        codenames: &[],
        crawler_target: "fedora",
        target_style: TargetStyle::Plain,
        ga_kernel_series: &[],
    },
    DistroSpec {
        id: "centos",
        os_release_ids: &["centos"],
        format: PackageFormat::Rpm,
        rule: VersionRule::Stream,
        supported: &["stream9", "stream10"],
        default: "stream9",
        codenames: &[],
        crawler_target: "centos",
        target_style: TargetStyle::Plain,
        ga_kernel_series: &[],
    },
    DistroSpec {
        id: "amazonlinux",
        os_release_ids: &["amzn"],
        format: PackageFormat::Rpm,
        rule: VersionRule::AmazonLinux,
        supported: &["2023"],
        default: "2023",
        codenames: &[],
        crawler_target: "amazonlinux",
        target_style: TargetStyle::Versioned,
        ga_kernel_series: &[],
    },
];

/// A supported distribution family. Cheap to copy; backed by a row of the distribution table.
#[derive(Clone, Copy)]
pub struct Distribution(&'static DistroSpec);

impl Distribution {
    /// Every distribution in the table, in table order.
    pub fn all() -> impl Iterator<Item = Distribution> {
        DISTROS.iter().map(Distribution)
    }

    /// Parses a distribution id: ubuntu, debian, fedora, centos, amazonlinux.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        DISTROS
            .iter()
            .find(|spec| spec.id == raw)
            .map(Distribution)
            .ok_or_else(|| {
                let known: Vec<&str> = DISTROS.iter().map(|s| s.id).collect();
                IdError::new(
                    Field::Distribution,
                    format!(
                        "must be one of {} (got {:?})",
                        known.join(", "),
                        truncate(raw)
                    ),
                )
            })
    }

    /// Maps an os-release `ID` (e.g. `amzn`) to a distribution.
    pub(crate) fn from_os_release_id(id: &str) -> Option<Self> {
        DISTROS
            .iter()
            .find(|spec| spec.os_release_ids.contains(&id))
            .map(Distribution)
    }

    /// Maps a kernel-crawler / kernels.json `target` (`debian`, `ubuntu-gcp`, `amazonlinux2023`) to a
    /// distribution and, for targets that carry it, the version.
    pub fn from_crawler_target(target: &str) -> Option<(Distribution, Option<&str>)> {
        DISTROS.iter().find_map(|spec| {
            let rest = target.strip_prefix(spec.crawler_target)?;
            match spec.target_style {
                TargetStyle::Plain if rest.is_empty() => Some((Distribution(spec), None)),
                TargetStyle::Flavor if rest.is_empty() || rest.starts_with('-') => {
                    Some((Distribution(spec), None))
                }
                TargetStyle::Versioned if !rest.is_empty() => {
                    Some((Distribution(spec), Some(rest)))
                }
                _ => None,
            }
        })
    }

    /// The canonical id.
    pub fn as_str(self) -> &'static str {
        self.0.id
    }

    /// The package format nodes of this distribution install.
    pub fn package_format(self) -> PackageFormat {
        self.0.format
    }

    /// The pinned version used when a request omits `distro_version`.
    pub fn default_version(self) -> DistroVersion {
        DistroVersion {
            distribution: self,
            value: self.0.default.to_owned(),
        }
    }

    /// Every supported version, oldest first.
    pub fn supported_versions(self) -> Vec<DistroVersion> {
        self.0
            .supported
            .iter()
            .map(|v| DistroVersion {
                distribution: self,
                value: (*v).to_owned(),
            })
            .collect()
    }

    /// The one supported version whose GA kernel series is `series` (`5.15` -> Ubuntu 22.04).
    /// `None` when no supported version, or more than one, ships that series.
    pub(crate) fn version_of_ga_series(self, series: &str) -> Option<DistroVersion> {
        let mut matching = self.0.ga_kernel_series.iter().filter(|(_, s)| *s == series);
        let (version, _) = matching.next()?;
        if matching.next().is_some() {
            return None;
        }
        DistroVersion::supported(self, version).ok()
    }

    /// The kernel-crawler / driverkit target for a kernel of this distribution.
    pub(crate) fn crawler_target(self, version: &DistroVersion, release: &str) -> String {
        match self.0.target_style {
            TargetStyle::Plain => self.0.crawler_target.to_owned(),
            TargetStyle::Versioned => format!("{}{}", self.0.crawler_target, version.as_str()),
            TargetStyle::Flavor => {
                format!("{}-{}", self.0.crawler_target, ubuntu_flavor(release))
            }
        }
    }
}

/// The flavor of an Ubuntu release: what follows `X.Y.Z-ABI-`, e.g. `generic` or `gcp`.
fn ubuntu_flavor(release: &str) -> &str {
    let mut parts = release.splitn(3, '-');
    let (_, _, flavor) = (parts.next(), parts.next(), parts.next());
    flavor.filter(|f| !f.is_empty()).unwrap_or("generic")
}

impl PartialEq for Distribution {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for Distribution {}

impl Hash for Distribution {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl PartialOrd for Distribution {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Distribution {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.id.cmp(other.0.id)
    }
}

impl fmt::Debug for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Distribution({})", self.0.id)
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.id)
    }
}

impl FromStr for Distribution {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Distribution::parse(s)
    }
}

impl AsRef<str> for Distribution {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl serde::Serialize for Distribution {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Distribution {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Distribution::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A distribution's version, spelled by that distribution's rule (`24.04`, `12`, `stream9`, `2023`).
/// It carries its distribution, so a version can't be paired with the wrong family.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DistroVersion {
    distribution: Distribution,
    value: String,
}

impl DistroVersion {
    /// Checks the version's spelling against the distribution's rule. The version may be unsupported.
    pub fn parse(distribution: Distribution, raw: &str) -> Result<Self, IdError> {
        if !distribution.0.rule.accepts(raw) {
            return Err(IdError::new(
                Field::DistroVersion,
                format!(
                    "{} for {} (got {:?})",
                    distribution.0.rule.describe(),
                    distribution,
                    truncate(raw)
                ),
            ));
        }
        Ok(Self {
            distribution,
            value: raw.to_owned(),
        })
    }

    /// Like [`DistroVersion::parse`], and also requires the version to be in the support table.
    pub fn supported(distribution: Distribution, raw: &str) -> Result<Self, IdError> {
        let version = Self::parse(distribution, raw)?;
        version.ensure_supported()?;
        Ok(version)
    }

    /// Maps an os-release `VERSION_ID` (e.g. CentOS `9`) to this distribution's spelling (`stream9`).
    pub(crate) fn from_os_release(
        distribution: Distribution,
        version_id: &str,
    ) -> Result<Self, IdError> {
        Self::parse(
            distribution,
            &distribution.0.rule.spell_os_release_version(version_id),
        )
        .map_err(|e| IdError::new(Field::OsRelease, format!("VERSION_ID: {}", e.rule())))
    }

    pub(crate) fn ensure_supported(&self) -> Result<(), IdError> {
        if self.is_supported() {
            return Ok(());
        }
        Err(IdError::new(
            Field::DistroVersion,
            format!(
                "{} {} is not supported (supported: {})",
                self.distribution,
                self.value,
                self.distribution.0.supported.join(", ")
            ),
        ))
    }

    /// The version as the distribution spells it.
    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// The distribution this version belongs to.
    pub fn distribution(&self) -> Distribution {
        self.distribution
    }

    /// Whether the version is in the support table.
    pub fn is_supported(&self) -> bool {
        self.distribution.0.supported.contains(&self.value.as_str())
    }

    /// The suite codename for Debian-family versions (`12` -> `bookworm`, `24.04` -> `noble`).
    pub fn codename(&self) -> Option<&'static str> {
        self.distribution
            .0
            .codenames
            .iter()
            .find(|(v, _)| *v == self.value)
            .map(|(_, name)| *name)
    }
}

impl fmt::Display for DistroVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl AsRef<str> for DistroVersion {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: &str) -> Distribution {
        Distribution::parse(id).unwrap()
    }

    #[test]
    fn pinned_defaults_match_the_support_table() {
        for (id, default) in [
            ("ubuntu", "24.04"),
            ("debian", "12"),
            ("fedora", "42"),
            ("centos", "stream9"),
            ("amazonlinux", "2023"),
        ] {
            let v = d(id).default_version();
            assert_eq!(v.as_str(), default);
            assert!(v.is_supported(), "{id} default must be supported");
        }
    }

    #[test]
    fn supported_versions_are_exactly_the_table() {
        let all: Vec<String> = Distribution::all()
            .flat_map(|d| d.supported_versions())
            .map(|v| format!("{} {}", v.distribution(), v))
            .collect();
        assert_eq!(
            all,
            [
                "ubuntu 22.04",
                "ubuntu 24.04",
                "ubuntu 25.10",
                "ubuntu 26.04",
                "debian 11",
                "debian 12",
                "debian 13",
                "fedora 42",
                "fedora 43",
                "centos stream9",
                "centos stream10",
                "amazonlinux 2023"
            ]
        );
    }

    #[test]
    fn version_rules_are_per_distribution() {
        assert!(DistroVersion::parse(d("ubuntu"), "24.04").is_ok());
        assert!(DistroVersion::parse(d("ubuntu"), "24.13").is_err());
        assert!(DistroVersion::parse(d("ubuntu"), "24").is_err());
        assert!(DistroVersion::parse(d("debian"), "24.04").is_err());
        assert!(DistroVersion::parse(d("centos"), "9").is_err());
        assert!(DistroVersion::parse(d("centos"), "stream10").is_ok());
        assert!(DistroVersion::parse(d("amazonlinux"), "2").is_ok());
        assert!(
            DistroVersion::parse(d("amazonlinux"), "2")
                .unwrap()
                .ensure_supported()
                .is_err()
        );
    }

    #[test]
    fn crawler_targets_round_trip() {
        assert_eq!(
            Distribution::from_crawler_target("ubuntu-gcp").unwrap().0,
            d("ubuntu")
        );
        assert_eq!(
            Distribution::from_crawler_target("amazonlinux2023").unwrap(),
            (d("amazonlinux"), Some("2023"))
        );
        assert!(Distribution::from_crawler_target("debian-rt").is_none());
        assert!(Distribution::from_crawler_target("ol").is_none());
        assert_eq!(ubuntu_flavor("6.14.0-1021-gcp"), "gcp");
        assert_eq!(ubuntu_flavor("6.8.0-52-lowlatency-64k"), "lowlatency-64k");
    }

    #[test]
    fn ga_series_name_supported_versions_once_each() {
        for distribution in Distribution::all() {
            for (version, series) in distribution.0.ga_kernel_series {
                assert_eq!(
                    distribution
                        .version_of_ga_series(series)
                        .map(|v| v.to_string())
                        .as_deref(),
                    Some(*version),
                    "{distribution} {version} ({series}) must be supported and its series unique"
                );
            }
        }
        assert_eq!(
            d("ubuntu").version_of_ga_series("5.15").unwrap().as_str(),
            "22.04"
        );
        assert_eq!(d("ubuntu").version_of_ga_series("5.4"), None);
        assert_eq!(d("debian").version_of_ga_series("6.1"), None);
    }

    #[test]
    fn codenames_cover_debian_family() {
        assert_eq!(
            DistroVersion::parse(d("debian"), "13").unwrap().codename(),
            Some("trixie")
        );
        assert_eq!(
            DistroVersion::parse(d("ubuntu"), "24.04")
                .unwrap()
                .codename(),
            Some("noble")
        );
        assert_eq!(
            DistroVersion::parse(d("fedora"), "42").unwrap().codename(),
            None
        );
    }
}
