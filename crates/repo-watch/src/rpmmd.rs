//! rpm-md repository metadata, read without IO of its own: `repodata/repomd.xml` (which metadata
//! files exist, where, and their checksums) and the `primary` metadata (one `<package>` per rpm,
//! with name, architecture and epoch/version/release), decompressed by magic (gzip, xz, zstd or
//! plain XML, see [`crate::compression`]) and streamed through quick-xml, so a primary file of any size costs one package's
//! worth of memory. The repository watcher and matrix-gen's AL2023 livepatch discovery both read
//! repositories through this module; it needs no async runtime or HTTP client, so matrix-gen uses
//! it with the crate's default features off.

use std::io::BufRead;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

/// Failures reading rpm-md metadata; each names the file (URL or path) and the rule broken.
#[derive(Debug, thiserror::Error)]
pub enum RpmMdError {
    /// The XML is not what createrepo writes.
    #[error("{location}: {rule}")]
    Metadata {
        /// URL or path of the file.
        location: String,
        /// What is wrong with it.
        rule: String,
    },
}

impl RpmMdError {
    fn at(location: &str, rule: impl Into<String>) -> Self {
        Self::Metadata {
            location: location.to_owned(),
            rule: rule.into(),
        }
    }
}

/// One `<data>` entry of repomd.xml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// `location href`, relative to the repository's base URL.
    pub href: String,
    /// The checksum algorithm (`sha256`, `sha512`, `sha1`), lower case.
    pub checksum_type: String,
    /// The checksum of the file as stored (compressed), lower-case hex.
    pub checksum: String,
    /// Its size as stored, when repomd.xml says.
    pub size: Option<u64>,
}

/// What the watcher needs of repomd.xml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repomd {
    /// `<revision>`, when present.
    pub revision: Option<String>,
    /// The `primary` metadata.
    pub primary: DataFile,
}

/// Parses repomd.xml; `location` (its URL or path) names it in errors.
pub fn parse_repomd(text: &str, location: &str) -> Result<Repomd, RpmMdError> {
    let mut reader = Reader::from_str(text);
    let mut revision = None;
    let mut in_primary = false;
    let mut field: Option<&'static str> = None;
    let (mut href, mut checksum_type, mut checksum, mut size) = (None, None, None, None);
    loop {
        let event = reader
            .read_event()
            .map_err(|e| RpmMdError::at(location, format!("not well-formed XML: {e}")))?;
        match event {
            Event::Start(e) => {
                let name = e.local_name();
                match name.as_ref() {
                    "data" => in_primary = attribute(&e, "type").as_deref() == Some("primary"),
                    "revision" => field = Some("revision"),
                    "checksum" if in_primary => {
                        checksum_type = attribute(&e, "type").map(|t| t.to_ascii_lowercase());
                        field = Some("checksum");
                    }
                    "size" if in_primary => field = Some("size"),
                    "location" if in_primary => href = attribute(&e, "href"),
                    _ => field = None,
                }
            }
            Event::Empty(e) if in_primary && e.local_name().as_ref() == "location" => {
                href = attribute(&e, "href");
            }
            Event::Text(t) => {
                let text = t.xml10_content();
                let text = text.trim();
                match field {
                    Some("revision") => revision = Some(text.to_owned()),
                    Some("checksum") => checksum = Some(text.to_ascii_lowercase()),
                    Some("size") => size = text.parse::<u64>().ok(),
                    _ => {}
                }
            }
            Event::End(e) => {
                field = None;
                if e.local_name().as_ref() == "data" && in_primary {
                    break;
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let missing = |what: &str| {
        RpmMdError::at(
            location,
            format!("the <data type=\"primary\"> entry has no {what}"),
        )
    };
    let href = href.ok_or_else(|| missing("<location href>"))?;
    let checksum = checksum.ok_or_else(|| missing("<checksum>"))?;
    let checksum_type = checksum_type.ok_or_else(|| missing("<checksum type>"))?;
    if href.contains("..") || href.starts_with('/') || href.contains("://") {
        return Err(RpmMdError::at(
            location,
            format!("primary location {href:?} must be a path inside the repository"),
        ));
    }
    if checksum.is_empty() || !checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RpmMdError::at(
            location,
            "the primary checksum must be hex digits",
        ));
    }
    Ok(Repomd {
        revision,
        primary: DataFile {
            href,
            checksum_type,
            checksum,
            size,
        },
    })
}

fn attribute(e: &BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .and_then(|a| {
            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .ok()
                .map(|v| v.into_owned())
        })
}

/// One `<package type="rpm">` of primary metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpmPackage {
    /// `<name>`.
    pub name: String,
    /// `<arch>`.
    pub arch: String,
    /// `<version epoch>` (0 when absent).
    pub epoch: u64,
    /// `<version ver>`.
    pub version: String,
    /// `<version rel>`.
    pub release: String,
}

impl RpmPackage {
    /// `<version>-<release>.<arch>`, the way a kernel package names its `uname -r`.
    pub fn version_release_arch(&self) -> String {
        format!("{}-{}.{}", self.version, self.release, self.arch)
    }
}

/// Streams every `<package type="rpm">` of primary metadata to `visit`. `location` names the file
/// in errors; the reader should already be decompressed (see [`crate::compression::decompressed`]).
pub fn read_primary(
    input: impl BufRead,
    location: &str,
    mut visit: impl FnMut(RpmPackage),
) -> Result<(), RpmMdError> {
    let mut reader = Reader::from_reader(input);
    let mut buf = Vec::new();
    let mut depth_in_package = 0usize;
    let mut is_rpm = false;
    let mut field: Option<&'static str> = None;
    let mut current = Partial::default();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| RpmMdError::at(location, format!("not well-formed XML: {e}")))?;
        match event {
            Event::Start(e) => {
                if depth_in_package == 0 {
                    if e.local_name().as_ref() == "package" {
                        depth_in_package = 1;
                        // Primary metadata lists rpms only; the check keeps any other type out.
                        is_rpm = attribute(&e, "type").is_none_or(|t| t == "rpm");
                        current = Partial::default();
                    }
                } else {
                    depth_in_package += 1;
                    field = match (depth_in_package, e.local_name().as_ref()) {
                        (2, "name") => Some("name"),
                        (2, "arch") => Some("arch"),
                        _ => None,
                    };
                    if depth_in_package == 2 && e.local_name().as_ref() == "version" {
                        current.version_from(&e);
                    }
                }
            }
            Event::Empty(e) if depth_in_package == 1 && e.local_name().as_ref() == "version" => {
                current.version_from(&e);
            }
            Event::Text(t) => match field {
                Some("name") => current.name.push_str(t.xml10_content().trim()),
                Some("arch") => current.arch.push_str(t.xml10_content().trim()),
                _ => {}
            },
            Event::End(e) => {
                field = None;
                if depth_in_package == 1 && e.local_name().as_ref() == "package" {
                    depth_in_package = 0;
                    if is_rpm && let Some(package) = std::mem::take(&mut current).finish() {
                        visit(package);
                    }
                } else {
                    depth_in_package = depth_in_package.saturating_sub(1);
                }
            }
            Event::Eof if depth_in_package > 0 => {
                return Err(RpmMdError::at(
                    location,
                    "the metadata ends inside a <package> (truncated)",
                ));
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Partial {
    name: String,
    arch: String,
    epoch: u64,
    version: Option<String>,
    release: String,
}

impl Partial {
    fn version_from(&mut self, e: &BytesStart<'_>) {
        self.epoch = attribute(e, "epoch")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        self.version = attribute(e, "ver");
        self.release = attribute(e, "rel").unwrap_or_default();
    }

    fn finish(self) -> Option<RpmPackage> {
        if self.name.is_empty() || self.arch.is_empty() {
            return None;
        }
        Some(RpmPackage {
            name: self.name,
            arch: self.arch,
            epoch: self.epoch,
            version: self.version.unwrap_or_default(),
            release: self.release,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPOMD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<repomd xmlns="http://linux.duke.edu/metadata/repo" xmlns:rpm="http://linux.duke.edu/metadata/rpm">
  <revision>1733212345</revision>
  <data type="filelists"><checksum type="sha256">aa</checksum><location href="repodata/f.xml.gz"/></data>
  <data type="primary">
    <checksum type="sha256">0123ABCD</checksum>
    <open-checksum type="sha256">ffff</open-checksum>
    <location href="repodata/0123abcd-primary.xml.zst"/>
    <timestamp>1733212345</timestamp>
    <size>5120</size>
    <open-size>40960</open-size>
  </data>
</repomd>"#;

    #[test]
    fn repomd_names_the_primary_file_and_its_checksum() {
        let repomd = parse_repomd(REPOMD, "r").unwrap();
        assert_eq!(repomd.revision.as_deref(), Some("1733212345"));
        assert_eq!(
            repomd.primary,
            DataFile {
                href: "repodata/0123abcd-primary.xml.zst".to_owned(),
                checksum_type: "sha256".to_owned(),
                checksum: "0123abcd".to_owned(),
                size: Some(5120),
            }
        );
    }

    #[test]
    fn a_primary_location_outside_the_repository_is_refused() {
        let evil = REPOMD.replace("repodata/0123abcd-primary.xml.zst", "../../etc/x.xml");
        let error = parse_repomd(&evil, "http://m/repodata/repomd.xml").unwrap_err();
        assert!(
            error.to_string().contains("http://m/repodata/repomd.xml")
                && error.to_string().contains("inside the repository"),
            "{error}"
        );
        let none = parse_repomd("<repomd/>", "r").unwrap_err();
        assert!(none.to_string().contains("<location href>"), "{none}");
    }

    #[test]
    fn primary_packages_stream_with_their_evr() {
        let primary = r#"<?xml version="1.0"?><metadata xmlns="http://linux.duke.edu/metadata/common" xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="3">
          <package type="rpm"><name>kernel</name><arch>x86_64</arch>
            <version epoch="0" ver="6.1.115" rel="126.197.amzn2023"/><checksum type="sha256" pkgid="YES">ab</checksum>
            <format><rpm:provides><rpm:entry name="kernel" flags="EQ" epoch="0" ver="9" rel="9"/></rpm:provides></format></package>
          <package type="rpm"><name>kernel-livepatch-6.1.186-228.376</name><arch>x86_64</arch>
            <version ver="1.0" rel="2.amzn2023"></version></package>
          <package type="rpm"><name>noarch-thing</name><arch>noarch</arch><version epoch="2" ver="1" rel="1"/></package>
        </metadata>"#;
        let mut got = Vec::new();
        read_primary(primary.as_bytes(), "p", |p| got.push(p)).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0].version_release_arch(),
            "6.1.115-126.197.amzn2023.x86_64"
        );
        assert_eq!(got[1].name, "kernel-livepatch-6.1.186-228.376");
        assert_eq!((got[1].epoch, got[1].version.as_str()), (0, "1.0"));
        assert_eq!(got[2].epoch, 2);
    }

    #[test]
    fn broken_xml_is_an_error_naming_the_file() {
        let error = read_primary(
            "<metadata><package><name>a</nam></package>".as_bytes(),
            "http://m/p.xml",
            |_| {},
        )
        .unwrap_err();
        assert!(error.to_string().starts_with("http://m/p.xml: "), "{error}");
        let truncated = read_primary(
            "<metadata><package type=\"rpm\"><name>a</name>".as_bytes(),
            "p",
            |_| {},
        )
        .unwrap_err();
        assert!(truncated.to_string().contains("truncated"), "{truncated}");
    }
}
