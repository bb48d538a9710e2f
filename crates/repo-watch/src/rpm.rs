//! rpm-md repositories (Fedora, CentOS Stream, Amazon Linux 2023 and its livepatch repository).
//!
//! One repository is read so: `repodata/repomd.xml` with a conditional GET (`304`: the stored copy
//! stands); it names the primary metadata's location and checksum; when that checksum is the
//! stored one, the stored kernel list is reused and nothing else is downloaded; otherwise the
//! primary file is downloaded (bounded by the size repomd.xml gives), its checksum (sha256 or
//! sha512) is checked against repomd.xml (a mismatch is an error naming the URL), and it is
//! decompressed (gzip, xz or zstd, by magic) and streamed through [`crate::rpmmd::read_primary`].
//!
//! Kernels (release `<ver>-<rel>.<arch>`, the `uname -r` of the package):
//! - `kernel` and `kernel-core` (Fedora, CentOS Stream, Amazon Linux); `kernel-<variant>-core`
//!   (`kernel-debug-core`, `kernel-rt-core`) is the same release with `+<variant>`, the flavor
//!   kernel-id's [`kernel_id::KernelFamily`] reads;
//! - Amazon Linux's versioned streams `kernel<major>.<minor>` (`kernel6.12`: AL2023 ships its 6.12
//!   kernels so, as the driver-builder's dnf header source notes for `kernel6.12-devel`);
//! - the kernels AL2023's livepatch repository names: `kernel-livepatch-<stem>` patches the kernel
//!   `<stem>.amzn2023.<arch>` (kernel-id's `al2023_livepatch_kernel`, the same naming the
//!   driver-builder's livepatch header source and matrix-gen's livepatch discovery use).
//!
//! Headers: the `-devel` package of the same name stem (`kernel-devel`, `kernel-debug-devel`,
//! `kernel6.12-devel`) with the same version, release and architecture, in any repository
//! watched for the same distribution version and architecture (the driver-builder installs it by
//! its `kernel-devel-uname-r` capability from whichever repository has it, the livepatch one
//! included).
//!
//! What is trusted: primary metadata is bound to repomd.xml by its checksum; repomd.xml itself is
//! not signature-checked (`repomd.xml.asc` is not read). A forged repomd.xml can only make the
//! watcher ask for prebuilds of kernels whose kernel-devel then fails to install in the clean build
//! root (see [`crate::apt`] on what that costs).

use std::collections::BTreeSet;

use kernel_id::{Arch, KernelRelease};
use sha2::{Digest, Sha256, Sha512};

use crate::compression::decompressed;
use crate::fetch::{FetchError, Fetched, IndexKind};
use crate::rpmmd::{RpmPackage, parse_repomd, read_primary};
use crate::state::{FoundPackage, IndexEntry, Stored};
use crate::watch::{Pass, RequestResult, WatchError};

/// Largest repomd.xml accepted.
pub const MAX_REPOMD_BYTES: u64 = 4 * 1024 * 1024;
/// Largest compressed primary file accepted when repomd.xml gives no size.
pub const MAX_PRIMARY_BYTES: u64 = 512 * 1024 * 1024;
/// Largest primary file accepted after decompression.
pub const MAX_PRIMARY_DECOMPRESSED: u64 = 4 * 1024 * 1024 * 1024;

/// What a package is, for the watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpmRole {
    /// A kernel; the release gets `+<variant>` when the variant is given.
    Kernel {
        /// `debug` of `kernel-debug-core`.
        variant: Option<String>,
    },
    /// Headers (`-devel`), with the same variant rule.
    Devel {
        /// `debug` of `kernel-debug-devel`.
        variant: Option<String>,
    },
}

/// `kernel6.12` style stream names: `kernel<digits>.<digits>`.
fn is_stream(name: &str) -> bool {
    name.strip_prefix("kernel").is_some_and(|rest| {
        let mut parts = rest.split('.');
        matches!((parts.next(), parts.next(), parts.next()),
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()))
    })
}

/// A variant name of `kernel-<variant>-core`: letters and digits in dash-separated words, never
/// one of the module sub-packages (`kernel-modules-core`, `kernel-debug-modules-core`).
fn is_variant(variant: &str) -> bool {
    !variant.is_empty()
        && variant
            .split('-')
            .all(|w| !w.is_empty() && w.bytes().all(|c| c.is_ascii_alphanumeric()))
        && !variant
            .split('-')
            .any(|w| w == "modules" || w == "devel" || w == "core")
}

/// Classifies an rpm package name (see the module documentation for the rules).
pub fn classify_rpm_package(name: &str) -> Option<RpmRole> {
    match name {
        "kernel" | "kernel-core" => return Some(RpmRole::Kernel { variant: None }),
        "kernel-devel" => return Some(RpmRole::Devel { variant: None }),
        _ => {}
    }
    if is_stream(name) {
        return Some(RpmRole::Kernel { variant: None });
    }
    if let Some(stream) = name.strip_suffix("-devel")
        && is_stream(stream)
    {
        return Some(RpmRole::Devel { variant: None });
    }
    let rest = name.strip_prefix("kernel-")?;
    if let Some(variant) = rest.strip_suffix("-core")
        && is_variant(variant)
    {
        return Some(RpmRole::Kernel {
            variant: Some(variant.to_owned()),
        });
    }
    if let Some(variant) = rest.strip_suffix("-devel")
        && is_variant(variant)
    {
        return Some(RpmRole::Devel {
            variant: Some(variant.to_owned()),
        });
    }
    None
}

/// `[epoch:]version-release`, the order key of an rpm.
fn evr(package: &RpmPackage) -> String {
    if package.epoch == 0 {
        format!("{}-{}", package.version, package.release)
    } else {
        format!("{}:{}-{}", package.epoch, package.version, package.release)
    }
}

/// The kernels, headers and livepatched kernels of one primary file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RpmIndex {
    /// Kernel packages (release and EVR).
    pub kernels: BTreeSet<FoundPackage>,
    /// `-devel` packages (release and EVR).
    pub devel: BTreeSet<FoundPackage>,
    /// Kernels AL2023 livepatch packages name (release and the kernel's own EVR).
    pub livepatch: BTreeSet<FoundPackage>,
}

impl RpmIndex {
    /// Adds one package of primary metadata; packages of another architecture are left out.
    pub fn add(&mut self, package: &RpmPackage, arch: Arch, livepatch: bool) {
        if package.arch != arch.rpm_name() {
            return;
        }
        if livepatch
            && let Some(Ok(release)) = kernel_id::al2023_livepatch_kernel(&package.name, arch)
        {
            // The patched kernel's own version-release: its release without `.<arch>`.
            let version = release
                .as_str()
                .strip_suffix(&format!(".{}", arch.rpm_name()))
                .unwrap_or(release.as_str())
                .to_owned();
            self.livepatch.insert(FoundPackage {
                release: release.to_string(),
                version,
            });
            return;
        }
        let (variant, set) = match classify_rpm_package(&package.name) {
            Some(RpmRole::Kernel { variant }) => (variant, &mut self.kernels),
            Some(RpmRole::Devel { variant }) => (variant, &mut self.devel),
            None => return,
        };
        let mut release = package.version_release_arch();
        if let Some(variant) = variant {
            release.push('+');
            release.push_str(&variant);
        }
        if KernelRelease::parse(&release).is_ok() {
            set.insert(FoundPackage {
                release,
                version: evr(package),
            });
        }
    }
}

/// One rpm-md repository to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpmRepo {
    /// Base URL (the directory holding `repodata/`).
    pub base: String,
    /// The architecture whose packages are kept.
    pub arch: Arch,
    /// Whether `kernel-livepatch-*` packages name kernels (Amazon Linux 2023).
    pub livepatch: bool,
}

impl RpmRepo {
    fn url(&self, relative: &str) -> String {
        format!(
            "{}/{}",
            self.base.trim_end_matches('/'),
            relative.trim_start_matches('/')
        )
    }
}

/// Reads one repository's kernels (see the module documentation).
pub(crate) async fn read_repo(pass: &mut Pass<'_>, repo: &RpmRepo) -> Result<RpmIndex, WatchError> {
    let url = repo.url("repodata/repomd.xml");
    pass.use_url(&url);
    let stored = match pass.state.indexes.get(&url) {
        Some(IndexEntry {
            validators,
            stored:
                Stored::Repomd {
                    primary_href,
                    primary_checksum,
                    primary_size,
                },
        }) => Some((
            validators.clone(),
            primary_href.clone(),
            primary_checksum.clone(),
            *primary_size,
        )),
        _ => None,
    };
    let (href, checksum, size) = match pass
        .fetch(
            &url,
            IndexKind::Repomd,
            stored.as_ref().map(|s| &s.0),
            MAX_REPOMD_BYTES,
        )
        .await?
    {
        Fetched::NotModified => match stored {
            Some((_, href, checksum, size)) => (href, checksum, size),
            None => {
                return Err(WatchError::index(
                    &url,
                    "answered 304 to an unconditional request",
                ));
            }
        },
        Fetched::Missing => {
            return Err(WatchError::index(
                &url,
                "not found (404): no rpm-md repository here",
            ));
        }
        Fetched::Body { bytes, validators } => {
            let text = String::from_utf8(bytes)
                .map_err(|_| WatchError::index(&url, "is not UTF-8 text"))?;
            let repomd = parse_repomd(&text, &url).map_err(|e| match e {
                crate::rpmmd::RpmMdError::Metadata { location, rule } => {
                    WatchError::index(&location, rule)
                }
            })?;
            let checksum = format!(
                "{}:{}",
                repomd.primary.checksum_type, repomd.primary.checksum
            );
            pass.state.indexes.insert(
                url.clone(),
                IndexEntry {
                    validators,
                    stored: Stored::Repomd {
                        primary_href: repomd.primary.href.clone(),
                        primary_checksum: checksum.clone(),
                        primary_size: repomd.primary.size,
                    },
                },
            );
            (repomd.primary.href, checksum, repomd.primary.size)
        }
    };
    let primary_url = repo.url(&href);
    pass.use_url(&primary_url);
    if let Some(IndexEntry {
        stored:
            Stored::Primary {
                checksum: known,
                kernels,
                devel,
                livepatch,
            },
        ..
    }) = pass.state.indexes.get(&primary_url)
        && *known == checksum
    {
        let index = RpmIndex {
            kernels: kernels.clone(),
            devel: devel.clone(),
            livepatch: livepatch.clone(),
        };
        pass.count_request(IndexKind::Primary, RequestResult::Reused);
        pass.unchanged += 1;
        return Ok(index);
    }
    let limit = size.unwrap_or(MAX_PRIMARY_BYTES).min(MAX_PRIMARY_BYTES);
    let bytes = match pass
        .fetch(&primary_url, IndexKind::Primary, None, limit)
        .await
    {
        Ok(Fetched::Body { bytes, .. }) => bytes,
        Ok(Fetched::Missing) => {
            return Err(WatchError::index(
                &primary_url,
                "not found (404), though repomd.xml lists it",
            ));
        }
        Ok(Fetched::NotModified) => {
            return Err(WatchError::index(
                &primary_url,
                "answered 304 to an unconditional request",
            ));
        }
        Err(FetchError::TooLarge { .. }) if size.is_some() => {
            return Err(WatchError::index(
                &primary_url,
                format!("is larger than the {limit} bytes repomd.xml lists"),
            ));
        }
        Err(error) => return Err(error.into()),
    };
    let (kind, expected) = checksum.split_once(':').unwrap_or(("", ""));
    let actual = match kind {
        "sha256" => hex::encode(<[u8; 32]>::from(Sha256::digest(&bytes))),
        "sha512" => hex::encode(Sha512::digest(&bytes).as_slice()),
        other => {
            return Err(WatchError::index(
                &url,
                format!("primary checksum type {other:?} is not supported (sha256 or sha512)"),
            ));
        }
    };
    if actual != expected {
        return Err(WatchError::index(
            &primary_url,
            format!("does not match repomd.xml: {kind} {actual}, repomd.xml lists {expected}"),
        ));
    }
    pass.saw_new_index();
    let (arch, livepatch, location) = (repo.arch, repo.livepatch, primary_url.clone());
    let index = tokio::task::spawn_blocking(move || {
        let reader = decompressed(&location, bytes.as_slice(), MAX_PRIMARY_DECOMPRESSED)
            .map_err(|e| WatchError::index(&location, e.rule))?;
        let mut index = RpmIndex::default();
        read_primary(reader, &location, |package| {
            index.add(&package, arch, livepatch)
        })
        .map_err(|e| match e {
            crate::rpmmd::RpmMdError::Metadata { location, rule } => {
                WatchError::index(&location, rule)
            }
        })?;
        Ok::<_, WatchError>(index)
    })
    .await
    .map_err(|e| WatchError::index(&primary_url, format!("parsing task failed: {e}")))??;
    pass.state.indexes.insert(
        primary_url,
        IndexEntry {
            validators: Default::default(),
            stored: Stored::Primary {
                checksum,
                kernels: index.kernels.clone(),
                devel: index.devel.clone(),
                livepatch: index.livepatch.clone(),
            },
        },
    );
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, arch: &str, epoch: u64, version: &str, release: &str) -> RpmPackage {
        RpmPackage {
            name: name.to_owned(),
            arch: arch.to_owned(),
            epoch,
            version: version.to_owned(),
            release: release.to_owned(),
        }
    }

    #[test]
    fn kernel_and_header_names() {
        let kernel = |variant: Option<&str>| {
            Some(RpmRole::Kernel {
                variant: variant.map(str::to_owned),
            })
        };
        let devel = |variant: Option<&str>| {
            Some(RpmRole::Devel {
                variant: variant.map(str::to_owned),
            })
        };
        assert_eq!(classify_rpm_package("kernel"), kernel(None));
        assert_eq!(classify_rpm_package("kernel-core"), kernel(None));
        assert_eq!(classify_rpm_package("kernel6.12"), kernel(None));
        assert_eq!(classify_rpm_package("kernel6.12-devel"), devel(None));
        assert_eq!(classify_rpm_package("kernel-devel"), devel(None));
        assert_eq!(
            classify_rpm_package("kernel-debug-core"),
            kernel(Some("debug"))
        );
        assert_eq!(
            classify_rpm_package("kernel-debug-devel"),
            devel(Some("debug"))
        );
        for other in [
            "kernel-modules-core",
            "kernel-debug-modules-core",
            "kernel-headers",
            "kernel-tools",
            "kernel-devel-matched",
            "kernel-livepatch-6.1.186-228.376",
            "kernel6.12-headers",
            "kernelx",
        ] {
            assert_eq!(classify_rpm_package(other), None, "{other}");
        }
    }

    #[test]
    fn releases_are_uname_r_and_livepatches_name_their_kernel() {
        let mut index = RpmIndex::default();
        let x = Arch::X86_64;
        index.add(
            &package("kernel", "x86_64", 0, "6.1.115", "126.197.amzn2023"),
            x,
            true,
        );
        index.add(
            &package("kernel-devel", "x86_64", 0, "6.1.115", "126.197.amzn2023"),
            x,
            true,
        );
        index.add(
            &package("kernel6.12", "x86_64", 0, "6.12.40", "63.114.amzn2023"),
            x,
            true,
        );
        index.add(
            &package("kernel", "aarch64", 0, "6.1.115", "126.197.amzn2023"),
            x,
            true,
        );
        index.add(
            &package(
                "kernel-livepatch-6.1.186-228.376",
                "x86_64",
                0,
                "1.0",
                "2.amzn2023",
            ),
            x,
            true,
        );
        index.add(
            &package("kernel-debug-core", "x86_64", 1, "6.11.4", "301.fc41"),
            x,
            false,
        );
        let releases: Vec<(&str, &str)> = index
            .kernels
            .iter()
            .map(|p| (p.release.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(
            releases,
            [
                (
                    "6.1.115-126.197.amzn2023.x86_64",
                    "6.1.115-126.197.amzn2023"
                ),
                ("6.11.4-301.fc41.x86_64+debug", "1:6.11.4-301.fc41"),
                ("6.12.40-63.114.amzn2023.x86_64", "6.12.40-63.114.amzn2023"),
            ]
        );
        assert_eq!(index.devel.len(), 1);
        let livepatch: Vec<(&str, &str)> = index
            .livepatch
            .iter()
            .map(|p| (p.release.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(
            livepatch,
            [(
                "6.1.186-228.376.amzn2023.x86_64",
                "6.1.186-228.376.amzn2023"
            )]
        );
    }
}
