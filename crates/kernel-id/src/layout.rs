//! Where artifacts live in a GitHub-Releases-shaped store: the release tag per layout, and the
//! percent-encoded download path `{tag}/{file}` that the loader appends to its artifact base URL.

use std::fmt;
use std::str::FromStr;

use crate::arch::truncate;
use crate::driver::DriverName;
use crate::error::{Field, IdError};
use crate::identity::KernelIdentity;

/// How artifacts are grouped into releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReleaseLayout {
    /// One release per identity. Works with immutable releases and never meets the asset limit.
    #[default]
    PerArtifact,
    /// One release per driver version holding every kernel's package (bounded by the asset limit).
    PerDriverVersion,
}

impl ReleaseLayout {
    /// GitHub's limit of assets in one release.
    pub const MAX_ASSETS_PER_RELEASE: usize = 1000;

    /// Parses `per-artifact` or `per-driver-version`.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        match raw {
            "per-artifact" => Ok(Self::PerArtifact),
            "per-driver-version" => Ok(Self::PerDriverVersion),
            _ => Err(IdError::new(
                Field::ReleaseLayout,
                format!(
                    "must be per-artifact or per-driver-version (got {:?})",
                    truncate(raw)
                ),
            )),
        }
    }

    /// The layout's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerArtifact => "per-artifact",
            Self::PerDriverVersion => "per-driver-version",
        }
    }

    /// The git-ref-safe release tag holding this identity's artifact.
    pub fn release_tag(self, driver: &DriverName, identity: &KernelIdentity) -> String {
        match self {
            Self::PerDriverVersion => format!("{driver}-{}", identity.driver_version()),
            // The architecture goes last so the tag never ends in '.' (a release may).
            Self::PerArtifact => format!(
                "{driver}-{}-{}-{}-{}-{}",
                identity.driver_version(),
                identity.distribution(),
                identity.distro_version(),
                identity.kernel_release(),
                identity.arch()
            ),
        }
    }

    /// `{tag}/{file}`, each segment percent-encoded, to append to an artifact base URL.
    pub fn download_path(
        self,
        driver: &DriverName,
        identity: &KernelIdentity,
        file_name: &str,
    ) -> String {
        format!(
            "{}/{}",
            percent_encode_segment(&self.release_tag(driver, identity)),
            percent_encode_segment(file_name)
        )
    }

    /// The path of the package itself.
    pub fn package_path(self, driver: &DriverName, identity: &KernelIdentity) -> String {
        self.download_path(driver, identity, &identity.package_file_name(driver))
    }
}

/// Percent-encodes everything outside RFC 3986's unreserved set, so `+` can't turn into a space.
pub fn percent_encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl fmt::Display for ReleaseLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReleaseLayout {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdentityInput;

    #[test]
    fn tags_and_paths_are_url_and_ref_safe() {
        let driver = DriverName::parse("example-driver").unwrap();
        let id = KernelIdentity::from_input(&IdentityInput {
            kernel_version: "6.12.48+deb13-amd64".into(),
            architecture: "x86_64".into(),
            distribution: "debian".into(),
            distro_version: Some("13".into()),
            driver_version: "v0.1.2".into(),
        })
        .unwrap();
        assert_eq!(
            ReleaseLayout::PerArtifact.release_tag(&driver, &id),
            "example-driver-v0.1.2-debian-13-6.12.48+deb13-amd64-x86_64"
        );
        assert_eq!(
            ReleaseLayout::PerDriverVersion.package_path(&driver, &id),
            "example-driver-v0.1.2/example-driver-debian-13-6.12.48%2Bdeb13-amd64_v0.1.2_amd64.deb"
        );
    }
}
