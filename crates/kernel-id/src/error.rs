//! The one error type of this crate: every rejection names the input field it came from and the rule
//! that was broken, because these messages travel verbatim to API callers and CI logs.

use std::fmt;

/// The input field an error is about. `Display` gives the wire name used in the build-service API and
/// in kernels.json, so a caller can point at the exact field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `kernel_version` in requests, `kernelrelease` in kernels.json: the `uname -r` string.
    KernelVersion,
    /// `architecture`.
    Architecture,
    /// `distribution`.
    Distribution,
    /// `distro_version`.
    DistroVersion,
    /// `driver_version`.
    DriverVersion,
    /// `driver_name` (configuration).
    DriverName,
    /// A package file name being parsed back into an identity.
    FileName,
    /// An os-release(5) file.
    OsRelease,
    /// A kernels.json document.
    KernelsJson,
    /// A release layout name.
    ReleaseLayout,
    /// `source_commit`: the git commit a driver version's tag names.
    SourceCommit,
}

impl Field {
    /// The wire name of the field.
    pub fn as_str(self) -> &'static str {
        match self {
            Field::KernelVersion => "kernel_version",
            Field::Architecture => "architecture",
            Field::Distribution => "distribution",
            Field::DistroVersion => "distro_version",
            Field::DriverVersion => "driver_version",
            Field::DriverName => "driver_name",
            Field::FileName => "file_name",
            Field::OsRelease => "os_release",
            Field::KernelsJson => "kernels_json",
            Field::ReleaseLayout => "release_layout",
            Field::SourceCommit => "source_commit",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected input: which field, and which rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct IdError {
    field: Field,
    rule: String,
}

impl IdError {
    pub(crate) fn new(field: Field, rule: impl Into<String>) -> Self {
        Self {
            field,
            rule: rule.into(),
        }
    }

    /// The field the error is about.
    pub fn field(&self) -> Field {
        self.field
    }

    /// The broken rule, in words, without the field name.
    pub fn rule(&self) -> &str {
        &self.rule
    }
}

/// Describes a character for an error message so control characters and quotes are visible.
pub(crate) fn describe_char(c: char) -> String {
    match c {
        '\n' => "newline".to_owned(),
        '\r' => "carriage return".to_owned(),
        '\t' => "tab".to_owned(),
        ' ' => "space".to_owned(),
        c if c.is_control() => format!("control character U+{:04X}", c as u32),
        c => format!("'{c}'"),
    }
}
