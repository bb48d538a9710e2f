//! The driver's own name (configuration) and version (part of identity).

use crate::arch::truncate;
use crate::error::{Field, IdError, describe_char};
use crate::macros::string_newtype_impls;

/// Longest accepted driver name, in bytes.
pub const MAX_DRIVER_NAME_LEN: usize = 64;
/// Longest accepted driver version, in bytes.
pub const MAX_DRIVER_VERSION_LEN: usize = 64;

/// The driver's name, e.g. `example-driver`: `[a-z0-9-]`, starting with a letter, not ending with `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DriverName(String);

impl DriverName {
    /// Validates a driver name.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let err = |rule: String| IdError::new(Field::DriverName, rule);
        if raw.is_empty() {
            return Err(err("must not be empty".into()));
        }
        if raw.len() > MAX_DRIVER_NAME_LEN {
            return Err(err(format!(
                "must be at most {MAX_DRIVER_NAME_LEN} bytes (got {})",
                raw.len()
            )));
        }
        if let Some((at, c)) = raw
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        {
            return Err(err(format!(
                "must only contain [a-z0-9-] (found {} at byte {at})",
                describe_char(c)
            )));
        }
        if !raw.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(err("must start with a letter".into()));
        }
        if raw.ends_with('-') || raw.contains("--") {
            return Err(err("must not end with '-' or contain '--'".into()));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The kernel module name kbuild gives it: `-` becomes `_`.
    pub fn module_name(&self) -> String {
        self.0.replace('-', "_")
    }
}

string_newtype_impls!(DriverName);

/// The driver's version: a `v`-prefixed semantic version such as `v0.5.16` or `v1.0.0-rc.1`.
/// Build metadata (`+...`) is refused: two builds differing only in metadata would share a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DriverVersion(String);

impl DriverVersion {
    /// Validates a driver version.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let err = |rule: String| IdError::new(Field::DriverVersion, rule);
        if raw.len() > MAX_DRIVER_VERSION_LEN {
            return Err(err(format!(
                "must be at most {MAX_DRIVER_VERSION_LEN} bytes (got {})",
                raw.len()
            )));
        }
        let Some(semver) = raw.strip_prefix('v') else {
            return Err(err(format!(
                "must be a v-prefixed semantic version like v0.5.16 (got {:?})",
                truncate(raw)
            )));
        };
        let (core, pre) = match semver.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (semver, None),
        };
        let numbers: Vec<&str> = core.split('.').collect();
        let numeric = |s: &str| {
            !s.is_empty()
                && s.len() <= 9
                && s.bytes().all(|b| b.is_ascii_digit())
                && (s == "0" || !s.starts_with('0'))
        };
        if numbers.len() != 3 || !numbers.iter().all(|n| numeric(n)) {
            return Err(err(format!(
                "must be vMAJOR.MINOR.PATCH with numbers without leading zeros (got {:?})",
                truncate(raw)
            )));
        }
        if let Some(pre) = pre {
            let valid_ident = |id: &str| {
                !id.is_empty()
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !(id.bytes().all(|b| b.is_ascii_digit())
                        && id.len() > 1
                        && id.starts_with('0'))
            };
            if !pre.split('.').all(valid_ident) {
                return Err(err(format!(
                    "pre-release must be dot-separated [0-9A-Za-z-] identifiers (got {:?})",
                    truncate(pre)
                )));
            }
        }
        Ok(Self(raw.to_owned()))
    }

    /// The version as given, with its `v`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The version for package metadata: no `v` (dpkg versions must start with a digit) and the
    /// pre-release introduced by `~` so it sorts before the release in both dpkg and rpm.
    pub fn package_version(&self) -> String {
        let semver = &self.0[1..];
        match semver.split_once('-') {
            Some((core, pre)) => format!("{core}~{}", pre.replace('-', ".")),
            None => semver.to_owned(),
        }
    }
}

string_newtype_impls!(DriverVersion);

impl DriverVersion {
    /// The git ref of the tag this version names in the driver's source repository: a driver
    /// version is a tag, and the tag names exactly one commit.
    pub fn tag_ref(&self) -> String {
        format!("refs/tags/{}", self.0)
    }
}

/// A git commit id: 40 lowercase hex digits (SHA-1 repositories) or 64 (SHA-256 repositories),
/// the full id and never an abbreviation, so it names exactly one commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceCommit(String);

impl SourceCommit {
    /// Validates a full commit id. Upper-case hex is refused rather than folded: the id is compared
    /// byte for byte in provenance and package metadata.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let err = |rule: String| IdError::new(Field::SourceCommit, rule);
        if raw.len() != 40 && raw.len() != 64 {
            return Err(err(format!(
                "must be a full git commit id of 40 or 64 hex digits (got {} characters)",
                raw.len()
            )));
        }
        if let Some((at, c)) = raw
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_digit() || ('a'..='f').contains(&c)))
        {
            return Err(err(format!(
                "must only contain lowercase hex digits (found {} at byte {at})",
                describe_char(c)
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The commit id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digest algorithm naming this commit in in-toto digest sets (`gitCommit` is the in-toto
    /// name for a SHA-1 commit id; a SHA-256 repository's ids are `sha256` git objects).
    pub fn digest_algorithm(&self) -> &'static str {
        if self.0.len() == 40 {
            "gitCommit"
        } else {
            "sha256"
        }
    }
}

string_newtype_impls!(SourceCommit);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_versions_are_dpkg_and_rpm_safe() {
        assert_eq!(
            DriverVersion::parse("v0.5.16").unwrap().package_version(),
            "0.5.16"
        );
        assert_eq!(
            DriverVersion::parse("v1.0.0-rc.1")
                .unwrap()
                .package_version(),
            "1.0.0~rc.1"
        );
    }

    #[test]
    fn a_source_commit_is_a_full_lowercase_id() {
        let sha1 = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(SourceCommit::parse(sha1).unwrap().as_str(), sha1);
        assert_eq!(
            SourceCommit::parse(sha1).unwrap().digest_algorithm(),
            "gitCommit"
        );
        let sha256 = "a".repeat(64);
        assert_eq!(
            SourceCommit::parse(&sha256).unwrap().digest_algorithm(),
            "sha256"
        );
        for bad in [
            "0123456",
            &sha1.to_uppercase(),
            &format!("{}g", &sha1[..39]),
            "",
        ] {
            let error = SourceCommit::parse(bad).expect_err(bad);
            assert_eq!(error.field(), Field::SourceCommit, "{bad}");
        }
        assert_eq!(
            DriverVersion::parse("v1.2.3").unwrap().tag_ref(),
            "refs/tags/v1.2.3"
        );
    }

    #[test]
    fn module_name_uses_underscores() {
        assert_eq!(
            DriverName::parse("example-driver").unwrap().module_name(),
            "example_driver"
        );
    }
}
