//! Amazon Linux 2023 livepatch discovery: `repodata/repomd.xml` -> the `primary` metadata (gzip, zstd
//! or xz) -> `kernel-livepatch-<kver>-<krel>` packages -> kernel release `<kver>-<krel>.amzn2023.<arch>`.
//! The kernel-crawler never sees these kernels; a repository directory or URL is the source. The
//! metadata readers are repo-watch's (`rpmmd`, `compression`) and the package naming kernel-id's
//! (`al2023_livepatch_kernel`), shared with the repository watcher, which reads the same
//! repositories; this module only opens the files.

use std::io::Read;
use std::path::Path;

use kernel_id::{Arch, Distribution, DistroVersion, DriverVersion, KernelIdentity};
use repo_watch::compression::decompressed;
use repo_watch::rpmmd::{RpmMdError, parse_repomd, read_primary};

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

impl From<RpmMdError> for LivepatchError {
    fn from(error: RpmMdError) -> Self {
        let RpmMdError::Metadata { location, rule } = error;
        Self::Metadata {
            location,
            message: rule,
        }
    }
}

/// Lists the kernels a livepatch repository (directory or http(s) URL) has patches for.
pub fn discover(
    repository: &str,
    driver_version: &DriverVersion,
    report: &mut Report,
) -> Result<Vec<KernelIdentity>, LivepatchError> {
    let repomd_location = join(repository, "repodata/repomd.xml");
    let repomd = read_all(open(&repomd_location)?, &repomd_location)?;
    let primary_href = parse_repomd(&repomd, &repomd_location)?.primary.href;
    let primary_location = join(repository, &primary_href);
    let raw = open(&primary_location)?;
    let reader = decompressed(&primary_location, raw, MAX_METADATA_BYTES).map_err(|e| {
        LivepatchError::Metadata {
            location: e.location,
            message: e.rule,
        }
    })?;
    let mut packages = Vec::new();
    read_primary(reader, &primary_location, |package| {
        packages.push((package.name, package.arch));
    })?;
    let amazonlinux = Distribution::parse("amazonlinux").expect("amazonlinux is in the table");
    let al2023 = DistroVersion::supported(amazonlinux, "2023").expect("2023 is supported");
    let mut identities = Vec::new();
    for (name, arch) in packages {
        if !name.starts_with(kernel_id::AL2023_LIVEPATCH_PREFIX) {
            continue;
        }
        let location = format!("{primary_location}: {name}.{arch}");
        let Ok(arch) = Arch::parse(&arch) else {
            report.unsupported(&location, format!("architecture {arch:?} is not supported"));
            continue;
        };
        let Some(release) = kernel_id::al2023_livepatch_kernel(&name, arch) else {
            continue;
        };
        match release
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
