//! A package's own description, read without touching its payload: name, version, architecture and
//! the driver-source commit it was built from (the .deb control field
//! [`DEB_SOURCE_COMMIT_FIELD`](crate::DEB_SOURCE_COMMIT_FIELD) or the rpm `VCS` tag). The builder
//! reads downloaded kernel header packages with it; the loader can show which commit a driver
//! package comes from.
//!
//! Reading is bounded: only the .deb's `control.tar*` member is decompressed, at most
//! [`MAX_CONTROL_TAR_BYTES`] of it, and of that only the `control` file (at most
//! [`MAX_CONTROL_FILE_BYTES`]); an rpm is read up to the end of its header.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use kernel_id::PackageFormat;

use crate::compression::Compression;
use crate::error::ReadError;
use crate::io_util::{ExactReader, read_head};
use crate::spec::DEB_SOURCE_COMMIT_FIELD;

/// The most decompressed `control.tar` bytes read while looking for `control` (md5sums of large
/// packages come first in some archives).
pub const MAX_CONTROL_TAR_BYTES: u64 = 64 << 20;
/// The largest `control` file read.
pub const MAX_CONTROL_FILE_BYTES: u64 = 1 << 20;

/// What a package says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageMetadata {
    /// .deb or .rpm, from the magic bytes.
    pub format: PackageFormat,
    /// The package name.
    pub name: String,
    /// The full version as the package manager shows it: the .deb `Version` field (with its epoch,
    /// if any), or the rpm's `[epoch:]version-release`.
    pub version: String,
    /// The architecture as the format spells it (`amd64`, `all`, `x86_64`, `noarch`...).
    pub architecture: String,
    /// The driver-source commit recorded by the builder, when the package carries one.
    pub source_commit: Option<String>,
}

/// Reads the package's metadata (format detected by magic bytes, never by name).
pub fn read_metadata(path: &Path) -> Result<PackageMetadata, ReadError> {
    match crate::read::detect_format(path)? {
        PackageFormat::Deb => {
            let file = File::open(path).map_err(|source| ReadError::io(path, source))?;
            let control = read_deb_control(BufReader::new(file))?;
            deb_metadata(&control)
        }
        PackageFormat::Rpm => rpm_metadata(path),
    }
}

/// The `control` file of a .deb read from `input`.
fn read_deb_control(input: impl Read) -> Result<String, ReadError> {
    let mut archive = ar::Archive::new(input);
    while let Some(member) = archive.next_entry() {
        let member = member.map_err(|err| ReadError::corrupt("ar member header", err))?;
        let name = String::from_utf8_lossy(member.header().identifier())
            .trim_end_matches('/')
            .to_owned();
        let Some(suffix) = name.strip_prefix("control.tar") else {
            continue;
        };
        let declared = match suffix {
            "" => Compression::None,
            ".gz" => Compression::Gzip,
            ".xz" => Compression::Xz,
            ".zst" => Compression::Zstd,
            other => {
                return Err(ReadError::UnsupportedCompression {
                    member: name.clone(),
                    format: other.trim_start_matches('.').to_owned(),
                });
            }
        };
        let len = member.header().size();
        let mut member = ExactReader::new(member, len);
        let head = read_head(&mut member, 8).map_err(|err| ReadError::corrupt(&name, err))?;
        let detected = Compression::sniff(&head)
            .map_err(|format| ReadError::CompressionMismatch {
                member: name.clone(),
                declared: declared.to_string(),
                detected: format.to_owned(),
            })?
            .unwrap_or(Compression::None);
        if detected != declared {
            return Err(ReadError::CompressionMismatch {
                member: name.clone(),
                declared: declared.to_string(),
                detected: detected.to_string(),
            });
        }
        let decoder = detected
            .decoder(io::Cursor::new(head).chain(member))
            .map_err(|err| ReadError::corrupt(&name, err))?;
        let mut tar = tar::Archive::new(decoder.take(MAX_CONTROL_TAR_BYTES));
        let entries = tar
            .entries()
            .map_err(|err| ReadError::corrupt(&name, err))?;
        for entry in entries {
            let entry = entry.map_err(|err| ReadError::corrupt(&name, err))?;
            let path = entry.path_bytes();
            let path = path.strip_prefix(b"./").unwrap_or(&path);
            if path != b"control" || entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            if entry.size() > MAX_CONTROL_FILE_BYTES {
                return Err(ReadError::malformed(format!(
                    "{name}: control is {} bytes, more than the {MAX_CONTROL_FILE_BYTES} allowed",
                    entry.size()
                )));
            }
            let mut bytes = Vec::new();
            entry
                .take(MAX_CONTROL_FILE_BYTES)
                .read_to_end(&mut bytes)
                .map_err(|err| ReadError::corrupt(&name, err))?;
            return String::from_utf8(bytes)
                .map_err(|_| ReadError::malformed(format!("{name}: control is not UTF-8")));
        }
        return Err(ReadError::malformed(format!(
            "{name} has no control file (in its first {MAX_CONTROL_TAR_BYTES} bytes)"
        )));
    }
    Err(ReadError::malformed("no control.tar member"))
}

/// The value of `field` in a deb822 paragraph (names compare case-insensitively, as dpkg does);
/// continuation lines are joined with newlines.
pub fn control_field(control: &str, field: &str) -> Option<String> {
    let mut value: Option<String> = None;
    for line in control.lines() {
        if let Some(current) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                current.push('\n');
                current.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((name, rest)) = line.split_once(':')
            && !line.starts_with([' ', '\t'])
            && name.eq_ignore_ascii_case(field)
        {
            value = Some(rest.trim().to_owned());
        }
    }
    value
}

fn deb_metadata(control: &str) -> Result<PackageMetadata, ReadError> {
    let required = |field: &str| {
        control_field(control, field)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| ReadError::malformed(format!("control has no {field} field")))
    };
    Ok(PackageMetadata {
        format: PackageFormat::Deb,
        name: required("Package")?,
        version: required("Version")?,
        architecture: required("Architecture")?,
        source_commit: control_field(control, DEB_SOURCE_COMMIT_FIELD).filter(|v| !v.is_empty()),
    })
}

fn rpm_metadata(path: &Path) -> Result<PackageMetadata, ReadError> {
    let file = File::open(path).map_err(|source| ReadError::io(path, source))?;
    let metadata =
        rpm::PackageMetadata::parse(&mut BufReader::new(file)).map_err(|err| match err {
            rpm::Error::Io(source) => ReadError::corrupt("rpm header", source),
            other => ReadError::Rpm(other),
        })?;
    let text = |value: Result<&str, rpm::Error>, tag: &str| {
        value
            .map(str::to_owned)
            .map_err(|err| ReadError::malformed(format!("rpm header has no usable {tag}: {err}")))
    };
    let version = text(metadata.get_version(), "VERSION")?;
    let release = text(metadata.get_release(), "RELEASE")?;
    let version = match metadata.get_epoch() {
        Ok(epoch) if epoch > 0 => format!("{epoch}:{version}-{release}"),
        _ => format!("{version}-{release}"),
    };
    Ok(PackageMetadata {
        format: PackageFormat::Rpm,
        name: text(metadata.get_name(), "NAME")?,
        version,
        architecture: text(metadata.get_arch(), "ARCH")?,
        source_commit: metadata
            .get_vcs()
            .ok()
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_fields_are_case_insensitive_and_keep_continuations() {
        let control = "Package: a\nversion: 1:2.0-1\nDescription: short\n long\n .\n more\n\
                       Kdriver-Source-Commit: 0123\n";
        assert_eq!(
            control_field(control, "Version").as_deref(),
            Some("1:2.0-1")
        );
        assert_eq!(
            control_field(control, "description").as_deref(),
            Some("short\nlong\n.\nmore")
        );
        assert_eq!(
            control_field(control, DEB_SOURCE_COMMIT_FIELD).as_deref(),
            Some("0123")
        );
        assert_eq!(control_field(control, "Depends"), None);
        // A continuation line never starts a field.
        assert_eq!(control_field(" Version: 9\n", "Version"), None);
    }
}
