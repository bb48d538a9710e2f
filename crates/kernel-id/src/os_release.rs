//! os-release(5) parsing: `KEY=value` lines, with double quotes (and their backslash escapes), single
//! quotes, comments and blank lines; then the mapping of `ID` and `VERSION_ID` to a distro version.
//! Unknown distributions are an error naming the ID — never a guess from `ID_LIKE`.

use std::collections::BTreeMap;

use crate::arch::truncate;
use crate::distro::{Distribution, DistroVersion};
use crate::error::{Field, IdError};

/// Largest os-release file accepted, in bytes (real ones are under 1 KiB).
pub const MAX_OS_RELEASE_LEN: usize = 64 * 1024;

/// A parsed os-release file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OsRelease {
    fields: BTreeMap<String, String>,
}

impl OsRelease {
    /// Parses the text of an os-release file.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        if text.len() > MAX_OS_RELEASE_LEN {
            return Err(IdError::new(
                Field::OsRelease,
                format!("must be at most {MAX_OS_RELEASE_LEN} bytes"),
            ));
        }
        let mut fields = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |rule: &str| {
                IdError::new(
                    Field::OsRelease,
                    format!("line {}: {rule} (got {:?})", index + 1, truncate(line)),
                )
            };
            let (key, raw_value) = line
                .split_once('=')
                .ok_or_else(|| err("must be KEY=value"))?;
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(err("key must be [A-Za-z0-9_]+"));
            }
            let value = unquote(raw_value).map_err(err)?;
            fields.insert(key.to_owned(), value);
        }
        Ok(Self { fields })
    }

    /// A field's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// `ID`, which defaults to `linux` per os-release(5).
    pub fn id(&self) -> &str {
        self.get("ID").unwrap_or("linux")
    }

    /// `ID_LIKE`, split on spaces.
    pub fn id_like(&self) -> Vec<&str> {
        self.get("ID_LIKE")
            .map(|v| v.split_whitespace().collect())
            .unwrap_or_default()
    }

    /// `VERSION_ID`.
    pub fn version_id(&self) -> Option<&str> {
        self.get("VERSION_ID")
    }

    /// The distribution and version this file describes. The version may be unsupported; building an
    /// identity from it checks that.
    pub fn distro_version(&self) -> Result<DistroVersion, IdError> {
        let id = self.id();
        let distribution = Distribution::from_os_release_id(id).ok_or_else(|| {
            IdError::new(
                Field::OsRelease,
                format!(
                    "ID {:?} is not a supported distribution (ID_LIKE {:?} is not used to guess)",
                    truncate(id),
                    self.id_like()
                ),
            )
        })?;
        let version_id = self.version_id().ok_or_else(|| {
            IdError::new(
                Field::OsRelease,
                format!("VERSION_ID is missing for ID {id:?} (rolling or testing releases are not supported)"),
            )
        })?;
        DistroVersion::from_os_release(distribution, version_id)
    }
}

/// Undoes shell-style quoting as os-release(5) allows it.
fn unquote(raw: &str) -> Result<String, &'static str> {
    let mut chars = raw.chars();
    match chars.next() {
        None => Ok(String::new()),
        Some('"') => {
            let mut out = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated double quote"),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c @ ('"' | '\\' | '$' | '`')) => out.push(c),
                        Some(c) => {
                            out.push('\\');
                            out.push(c);
                        }
                        None => return Err("unterminated double quote"),
                    },
                    Some(c) => out.push(c),
                }
            }
            trailing_is_empty(chars.as_str())?;
            Ok(out)
        }
        Some('\'') => {
            let rest = chars.as_str();
            let end = rest.find('\'').ok_or("unterminated single quote")?;
            trailing_is_empty(&rest[end + 1..])?;
            Ok(rest[..end].to_owned())
        }
        Some(_) => {
            if raw
                .contains(|c: char| matches!(c, '"' | '\'' | '`' | '$' | '\\') || c.is_whitespace())
            {
                return Err("unquoted value must not contain quotes, spaces, '$', '`' or '\\'");
            }
            Ok(raw.to_owned())
        }
    }
}

fn trailing_is_empty(rest: &str) -> Result<(), &'static str> {
    if rest.trim().is_empty() || rest.trim_start().starts_with('#') {
        Ok(())
    } else {
        Err("unexpected text after the closing quote")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_escapes_follow_os_release_5() {
        let os = OsRelease::parse(
            "# comment\n\nNAME=\"Debian \\\"GNU\\\"/Linux\"\nID=debian\nVERSION_ID='12'\nPRETTY_NAME=\"a \\$b\"\n",
        )
        .unwrap();
        assert_eq!(os.get("NAME"), Some("Debian \"GNU\"/Linux"));
        assert_eq!(os.get("PRETTY_NAME"), Some("a $b"));
        assert_eq!(os.version_id(), Some("12"));
    }

    #[test]
    fn maps_ids_to_distro_versions() {
        for (text, want) in [
            ("ID=ubuntu\nVERSION_ID=\"24.04\"", "ubuntu 24.04"),
            ("ID=debian\nVERSION_ID=\"12\"", "debian 12"),
            ("ID=fedora\nVERSION_ID=42", "fedora 42"),
            ("ID=centos\nVERSION_ID=\"9\"", "centos stream9"),
            ("ID=amzn\nVERSION_ID=\"2023\"", "amazonlinux 2023"),
        ] {
            let v = OsRelease::parse(text).unwrap().distro_version().unwrap();
            assert_eq!(format!("{} {}", v.distribution(), v), want);
        }
    }

    #[test]
    fn unknown_ids_are_named_not_guessed() {
        let e = OsRelease::parse("ID=rocky\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=9.4")
            .unwrap()
            .distro_version()
            .unwrap_err();
        assert_eq!(e.field(), Field::OsRelease);
        assert!(e.to_string().contains("\"rocky\""), "{e}");
    }
}
