//! Amazon Linux 2023 livepatch discovery: `repodata/repomd.xml` -> the `primary` metadata (gzip, zstd
//! or xz) -> `kernel-livepatch-<kver>-<krel>` packages -> kernel release `<kver>-<krel>.amzn2023.<arch>`.
//! The kernel-crawler never sees these kernels; a repository directory or URL is the source.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use kernel_id::{Arch, Distribution, DistroVersion, DriverVersion, KernelIdentity, KernelRelease};
use quick_xml::Reader;
use quick_xml::events::Event;

use crate::report::Report;

/// Largest metadata file accepted after decompression (real primary.xml files are a few MB).
const MAX_METADATA_BYTES: u64 = 512 * 1024 * 1024;

/// Failures reading a repository.
#[derive(Debug, thiserror::Error)]
pub enum LivepatchError {
    /// Fetching a file failed.
    #[error("reading {location}: {message}")]
    Fetch {
        /// Path or URL.
        location: String,
        /// What went wrong.
        message: String,
    },
    /// The metadata is not what createrepo writes.
    #[error("{location}: {message}")]
    Metadata {
        /// Path or URL.
        location: String,
        /// What went wrong.
        message: String,
    },
}

/// Lists the kernels a livepatch repository (directory or http(s) URL) has patches for.
pub fn discover(
    repository: &str,
    driver_version: &DriverVersion,
    report: &mut Report,
) -> Result<Vec<KernelIdentity>, LivepatchError> {
    let repomd_location = join(repository, "repodata/repomd.xml");
    let repomd = read_all(open(&repomd_location)?, &repomd_location)?;
    let primary_href = primary_location(&repomd).ok_or_else(|| LivepatchError::Metadata {
        location: repomd_location.clone(),
        message: "no <data type=\"primary\"> with a <location href>".into(),
    })?;
    let primary_location = join(repository, &primary_href);
    let raw = open(&primary_location)?;
    let reader: Box<dyn Read> = decompressor(&primary_location, raw)?;
    let packages = packages(
        BufReader::new(reader.take(MAX_METADATA_BYTES)),
        &primary_location,
    )?;
    let amazonlinux = Distribution::parse("amazonlinux").expect("amazonlinux is in the table");
    let al2023 = DistroVersion::supported(amazonlinux, "2023").expect("2023 is supported");
    let mut identities = Vec::new();
    for (name, arch) in packages {
        let Some(kernel) = name.strip_prefix("kernel-livepatch-") else {
            continue;
        };
        let location = format!("{primary_location}: {name}.{arch}");
        let Ok(arch) = Arch::parse(&arch) else {
            report.unsupported(&location, format!("architecture {arch:?} is not supported"));
            continue;
        };
        let release = format!("{kernel}.amzn2023.{}", arch.rpm_name());
        match KernelRelease::parse(&release)
            .and_then(|r| KernelIdentity::new(r, arch, al2023.clone(), driver_version.clone()))
        {
            Ok(identity) => identities.push(identity),
            Err(e) => report.invalid(&location, e),
        }
    }
    Ok(identities)
}

fn join(base: &str, relative: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        relative.trim_start_matches('/')
    )
}

fn open(location: &str) -> Result<Box<dyn Read>, LivepatchError> {
    let fail = |message: String| LivepatchError::Fetch {
        location: location.to_owned(),
        message,
    };
    if location.starts_with("http://") || location.starts_with("https://") {
        let response = ureq::get(location)
            .call()
            .map_err(|e| fail(e.to_string()))?;
        Ok(Box::new(response.into_body().into_reader()))
    } else {
        let file = std::fs::File::open(Path::new(location)).map_err(|e| fail(e.to_string()))?;
        Ok(Box::new(file))
    }
}

fn read_all(reader: Box<dyn Read>, location: &str) -> Result<String, LivepatchError> {
    let mut text = String::new();
    reader
        .take(16 * 1024 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| LivepatchError::Fetch {
            location: location.to_owned(),
            message: e.to_string(),
        })?;
    Ok(text)
}

fn decompressor(location: &str, raw: Box<dyn Read>) -> Result<Box<dyn Read>, LivepatchError> {
    let fail = |message: String| LivepatchError::Metadata {
        location: location.to_owned(),
        message,
    };
    Ok(if location.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(raw))
    } else if location.ends_with(".zst") {
        Box::new(zstd::stream::read::Decoder::new(raw).map_err(|e| fail(e.to_string()))?)
    } else if location.ends_with(".xz") {
        Box::new(liblzma::read::XzDecoder::new(raw))
    } else if location.ends_with(".xml") {
        raw
    } else {
        return Err(fail(
            "unknown compression (expected .gz, .zst, .xz or .xml)".into(),
        ));
    })
}

/// The `href` of the primary metadata in repomd.xml.
fn primary_location(repomd: &str) -> Option<String> {
    let mut reader = Reader::from_str(repomd);
    let mut in_primary = false;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) if e.local_name().as_ref() == "data" => {
                in_primary = attribute(&e, "type").as_deref() == Some("primary");
            }
            Event::Empty(e) | Event::Start(e)
                if in_primary && e.local_name().as_ref() == "location" =>
            {
                return attribute(&e, "href");
            }
            Event::End(e) if e.local_name().as_ref() == "data" => in_primary = false,
            Event::Eof => return None,
            _ => {}
        }
    }
}

fn attribute(e: &quick_xml::events::BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .map(|a| a.value.into_owned())
}

/// (name, arch) of every `<package>` in primary.xml, streamed.
fn packages(input: impl BufRead, location: &str) -> Result<Vec<(String, String)>, LivepatchError> {
    let mut reader = Reader::from_reader(input);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let (mut name, mut arch) = (None, None);
    let mut field: Option<&'static str> = None;
    let mut depth_in_package = 0usize;
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| LivepatchError::Metadata {
                location: location.to_owned(),
                message: e.to_string(),
            })?;
        match event {
            Event::Start(e) => {
                let local = e.local_name();
                if local.as_ref() == "package" {
                    depth_in_package = 1;
                    name = None;
                    arch = None;
                } else if depth_in_package > 0 {
                    depth_in_package += 1;
                    field = match (depth_in_package, local.as_ref()) {
                        (2, "name") => Some("name"),
                        (2, "arch") => Some("arch"),
                        _ => None,
                    };
                }
            }
            Event::Text(t) => {
                if let Some(which) = field {
                    let text = t.xml10_content();
                    match which {
                        "name" => name = Some(text.trim().to_owned()),
                        _ => arch = Some(text.trim().to_owned()),
                    }
                }
            }
            Event::End(e) => {
                field = None;
                if e.local_name().as_ref() == "package" {
                    depth_in_package = 0;
                    if let (Some(n), Some(a)) = (name.take(), arch.take()) {
                        out.push((n, a));
                    }
                } else {
                    depth_in_package = depth_in_package.saturating_sub(1);
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_primary_location() {
        let repomd = r#"<?xml version="1.0"?><repomd xmlns="http://linux.duke.edu/metadata/repo">
          <data type="filelists"><location href="repodata/f.xml.gz"/></data>
          <data type="primary"><checksum type="sha256">x</checksum><location href="repodata/abc-primary.xml.zst"/></data>
        </repomd>"#;
        assert_eq!(
            primary_location(repomd).as_deref(),
            Some("repodata/abc-primary.xml.zst")
        );
    }

    #[test]
    fn lists_package_names_and_arches() {
        let primary = r#"<metadata packages="2">
          <package type="rpm"><name>kernel-livepatch-6.1.186-228.376</name><arch>x86_64</arch>
            <version epoch="0" ver="1.0" rel="2.amzn2023"/><format><rpm:provides><rpm:entry name="x"/></rpm:provides></format></package>
          <package type="rpm"><name>other</name><arch>noarch</arch></package>
        </metadata>"#;
        let got = packages(primary.as_bytes(), "p").unwrap();
        assert_eq!(
            got,
            [
                (
                    "kernel-livepatch-6.1.186-228.376".to_owned(),
                    "x86_64".to_owned()
                ),
                ("other".to_owned(), "noarch".to_owned())
            ]
        );
    }
}
