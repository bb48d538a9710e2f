//! `KernelRelease`: the `uname -r` string. It ends up in workflow inputs, shell commands, file names and
//! URLs, so this validation is the project's security boundary for it.

use crate::error::{Field, IdError, describe_char};
use crate::macros::string_newtype_impls;

/// Longest accepted release string, in bytes.
pub const MAX_RELEASE_LEN: usize = 128;

/// A validated kernel release as printed by `uname -r`, e.g. `6.1.0-47-amd64`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelRelease(String);

impl KernelRelease {
    /// Validates a release: only `[A-Za-z0-9._+~-]`, starts with `major.minor`, no `..`, at most 128 bytes.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let err = |rule: String| IdError::new(Field::KernelVersion, rule);
        if raw.is_empty() {
            return Err(err("must not be empty".into()));
        }
        if raw.len() > MAX_RELEASE_LEN {
            return Err(err(format!(
                "must be at most {MAX_RELEASE_LEN} bytes (got {})",
                raw.len()
            )));
        }
        if let Some((at, c)) = raw.char_indices().find(|&(_, c)| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '~' | '-'))
        }) {
            return Err(err(format!(
                "must only contain [A-Za-z0-9._+~-] (found {} at byte {at})",
                describe_char(c)
            )));
        }
        if raw.contains("..") {
            return Err(err("must not contain '..'".into()));
        }
        if !starts_with_major_minor(raw) {
            return Err(err(
                "must start with a digit and begin with major.minor (e.g. 6.1.0-47-amd64)".into(),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The release string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The release with `.` replaced by `-`, as used in branch names.
    pub fn dashed(&self) -> String {
        self.0.replace('.', "-")
    }
}

fn starts_with_major_minor(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let major_len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if major_len == 0 || bytes.get(major_len) != Some(&b'.') {
        return false;
    }
    bytes.get(major_len + 1).is_some_and(|b| b.is_ascii_digit())
}

string_newtype_impls!(KernelRelease);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_release_strings() {
        for ok in [
            "6.1.0-47-amd64",
            "6.12.48+deb13-amd64",
            "6.12.100+deb12-amd64",
            "6.14.0-100.fc42.x86_64",
            "6.12.0-212.el10.x86_64",
            "6.1.0-28~bpo12+1",
            "6.12.58-82.121.amzn2023.x86_64",
            "6.14.0-1021-gcp",
            "5.10.0-35-cloud-amd64",
            "5.4",
        ] {
            assert_eq!(KernelRelease::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn every_rejection_names_the_field() {
        let e = KernelRelease::parse("6.1 ; rm").unwrap_err();
        assert_eq!(e.field(), Field::KernelVersion);
        assert!(e.to_string().starts_with("kernel_version: "), "{e}");
        assert!(e.to_string().contains("space"), "{e}");
    }
}
