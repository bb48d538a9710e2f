//! One watcher pass: for every (distribution version, architecture) the fleet's families need,
//! read the configured indexes ([`crate::apt`], [`crate::rpm`]) through an [`IndexFetcher`],
//! conditionally and with what the state file remembers, and gather the published kernels into a
//! [`Catalog`]. A failing index is reported by URL and the pass goes on with the others; the state
//! file is saved at the end either way. Indexes are read one after another (a pass over every
//! supported target is a few dozen small requests), so a pass never holds more than one index
//! file in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kernel_id::{Arch, DistroVersion};
use time::OffsetDateTime;

use crate::apt::{AptSuite, InReleaseVerifier, read_suite};
use crate::fetch::{FetchError, FetchRequest, Fetched, IndexFetcher, IndexKind, Validators};
use crate::plan::Catalog;
use crate::rpm::{RpmRepo, read_repo};
use crate::state::{StateError, WatchState};

/// Why an index could not be read; each names the URL (or file) and the rule broken.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The index is missing, malformed, expired, or does not match its digest.
    #[error("{url}: {rule}")]
    Index {
        /// The URL.
        url: String,
        /// What is wrong.
        rule: String,
    },
    /// The request failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The state file.
    #[error(transparent)]
    State(#[from] StateError),
}

impl WatchError {
    /// An error about the index at `url`.
    pub fn index(url: &str, rule: impl Into<String>) -> Self {
        Self::Index {
            url: url.to_owned(),
            rule: rule.into(),
        }
    }
}

/// What became of one request (or of a file not requested because its digest was unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestResult {
    /// Downloaded (200).
    Fetched,
    /// `304 Not Modified`.
    NotModified,
    /// Not requested: the index that lists it gives the digest already read.
    Reused,
    /// `404`/`410`.
    Missing,
}

impl RequestResult {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fetched => "fetched",
            Self::NotModified => "not_modified",
            Self::Reused => "reused",
            Self::Missing => "missing",
        }
    }
}

/// Counts of one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Body bytes downloaded, per kind (every kind present, zero included).
    pub bytes: BTreeMap<IndexKind, u64>,
    /// Requests (and reuses) per kind and result.
    pub requests: BTreeMap<(IndexKind, RequestResult), u64>,
    /// Indexes consulted: apt suites (InRelease + Packages) and rpm repositories (repomd + primary).
    pub indexes_checked: u64,
    /// Of them, those whose package list was unchanged (nothing but InRelease/repomd downloaded).
    pub indexes_unchanged: u64,
}

impl PassStats {
    /// Bytes of one kind.
    pub fn bytes_of(&self, kind: IndexKind) -> u64 {
        self.bytes.get(&kind).copied().unwrap_or(0)
    }

    /// Requests of one kind and result.
    pub fn requests_of(&self, kind: IndexKind, result: RequestResult) -> u64 {
        self.requests.get(&(kind, result)).copied().unwrap_or(0)
    }
}

/// The state of one pass, handed to the index readers.
pub(crate) struct Pass<'a> {
    fetcher: &'a dyn IndexFetcher,
    pub(crate) state: WatchState,
    pub(crate) verifier: Option<&'a InReleaseVerifier>,
    pub(crate) now: OffsetDateTime,
    used: BTreeSet<String>,
    stats: PassStats,
    pub(crate) unchanged: u64,
    new_index_at: Option<Instant>,
}

impl Pass<'_> {
    pub(crate) fn use_url(&mut self, url: &str) {
        self.used.insert(url.to_owned());
    }

    pub(crate) fn count_request(&mut self, kind: IndexKind, result: RequestResult) {
        *self.stats.requests.entry((kind, result)).or_default() += 1;
    }

    /// The first moment of this pass a changed package list was seen.
    pub(crate) fn saw_new_index(&mut self) {
        self.new_index_at.get_or_insert_with(Instant::now);
    }

    pub(crate) async fn fetch(
        &mut self,
        url: &str,
        kind: IndexKind,
        validators: Option<&Validators>,
        max_bytes: u64,
    ) -> Result<Fetched, FetchError> {
        let fetched = self
            .fetcher
            .fetch(FetchRequest {
                url,
                kind,
                validators: validators.filter(|v| !v.is_empty()),
                max_bytes,
            })
            .await?;
        let result = match &fetched {
            Fetched::NotModified => RequestResult::NotModified,
            Fetched::Missing => RequestResult::Missing,
            Fetched::Body { bytes, .. } => {
                *self.stats.bytes.entry(kind).or_default() += bytes.len() as u64;
                RequestResult::Fetched
            }
        };
        self.count_request(kind, result);
        Ok(fetched)
    }
}

/// An rpm-md repository serving one distribution version and architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpmSource {
    /// Its distribution version.
    pub distro_version: DistroVersion,
    /// Its architecture.
    pub arch: Arch,
    /// Its base URL.
    pub base: String,
}

/// Where to look: mirrors and repositories. Nothing is read for a distribution without a source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// Debian archive (`http://deb.debian.org/debian`): `<codename>`, `-updates`, `-backports`.
    pub debian_mirror: Option<String>,
    /// Debian security archive (`http://deb.debian.org/debian-security`): `<codename>-security`.
    pub debian_security_mirror: Option<String>,
    /// Ubuntu archive for amd64 (`http://archive.ubuntu.com/ubuntu`): `<codename>`, `-updates`,
    /// `-security`, `-backports`.
    pub ubuntu_mirror: Option<String>,
    /// Ubuntu ports archive for arm64 (`http://ports.ubuntu.com/ubuntu-ports`), same suites.
    pub ubuntu_ports_mirror: Option<String>,
    /// rpm-md repositories (Fedora, CentOS Stream, Amazon Linux 2023 and its livepatch repository).
    pub rpm: Vec<RpmSource>,
}

impl Sources {
    /// Whether anything is configured.
    pub fn is_empty(&self) -> bool {
        self.debian_mirror.is_none()
            && self.debian_security_mirror.is_none()
            && self.ubuntu_mirror.is_none()
            && self.ubuntu_ports_mirror.is_none()
            && self.rpm.is_empty()
    }

    /// The apt suites of a Debian or Ubuntu version for one architecture (component `main`).
    pub fn apt_suites(&self, distro_version: &DistroVersion, arch: Arch) -> Vec<AptSuite> {
        let Some(codename) = distro_version.codename() else {
            return Vec::new();
        };
        let suite = |base: &String, name: String| AptSuite {
            base: base.trim_end_matches('/').to_owned(),
            suite: name,
            component: "main".to_owned(),
            arch: arch.debian_name().to_owned(),
        };
        let mut suites = Vec::new();
        match distro_version.distribution().as_str() {
            "debian" => {
                if let Some(base) = &self.debian_mirror {
                    for pocket in ["", "-updates", "-backports"] {
                        suites.push(suite(base, format!("{codename}{pocket}")));
                    }
                }
                if let Some(base) = &self.debian_security_mirror {
                    suites.push(suite(base, format!("{codename}-security")));
                }
            }
            "ubuntu" => {
                let base = match arch {
                    Arch::X86_64 => &self.ubuntu_mirror,
                    Arch::Aarch64 => &self.ubuntu_ports_mirror,
                };
                if let Some(base) = base {
                    for pocket in ["", "-updates", "-security", "-backports"] {
                        suites.push(suite(base, format!("{codename}{pocket}")));
                    }
                }
            }
            _ => {}
        }
        suites
    }

    /// The rpm-md repositories of a distribution version and architecture.
    pub fn rpm_repos(&self, distro_version: &DistroVersion, arch: Arch) -> Vec<RpmRepo> {
        self.rpm
            .iter()
            .filter(|source| source.distro_version == *distro_version && source.arch == arch)
            .map(|source| RpmRepo {
                base: source.base.trim_end_matches('/').to_owned(),
                arch,
                livepatch: distro_version.distribution().as_str() == "amazonlinux",
            })
            .collect()
    }
}

/// What one pass saw.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Every published kernel of the targets read.
    pub catalog: Catalog,
    /// Bytes and requests.
    pub stats: PassStats,
    /// Indexes that could not be read (and state file trouble), each naming the URL or file.
    pub errors: Vec<String>,
    /// When the pass first saw a changed package list (`None`: nothing changed).
    pub new_index_at: Option<Instant>,
    /// How long the pass took.
    pub elapsed: Duration,
}

/// Reads the configured indexes, remembering what it read in a state file.
pub struct Watcher {
    fetcher: Arc<dyn IndexFetcher>,
    sources: Sources,
    state_path: PathBuf,
    verifier: Option<InReleaseVerifier>,
    /// Passes one at a time: the state file is read and written whole by each.
    running: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("sources", &self.sources)
            .field("state_path", &self.state_path)
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// A watcher of `sources` through `fetcher`, with its state at `state_path`.
    pub fn new(fetcher: Arc<dyn IndexFetcher>, sources: Sources, state_path: PathBuf) -> Self {
        Self {
            fetcher,
            sources,
            state_path,
            verifier: None,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Also verify every InRelease with `verifier` (see [`crate::apt`] on what is trusted).
    pub fn with_verifier(mut self, verifier: InReleaseVerifier) -> Self {
        self.verifier = Some(verifier);
        self
    }

    /// The configured sources.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// Reads every index of `targets` once (see the module documentation).
    pub async fn observe(&self, targets: &BTreeSet<(DistroVersion, Arch)>) -> Observation {
        let _one_at_a_time = self.running.lock().await;
        let started = Instant::now();
        let mut errors = Vec::new();
        let state = WatchState::load(&self.state_path).unwrap_or_else(|error| {
            errors.push(format!("{error}; starting from an empty state"));
            WatchState::default()
        });
        let mut pass = Pass {
            fetcher: self.fetcher.as_ref(),
            state,
            verifier: self.verifier.as_ref(),
            now: OffsetDateTime::now_utc(),
            used: BTreeSet::new(),
            stats: PassStats::default(),
            unchanged: 0,
            new_index_at: None,
        };
        let mut catalog = Catalog::default();
        let mut checked = 0u64;
        for target in targets {
            let (distro_version, arch) = target;
            // Headers count in any pocket of the same distribution version and architecture.
            let mut images = Vec::new();
            let mut headers = BTreeSet::new();
            for suite in self.sources.apt_suites(distro_version, *arch) {
                checked += 1;
                match read_suite(&mut pass, &suite).await {
                    Ok(index) => {
                        images.extend(index.images);
                        headers.extend(index.headers.into_iter().map(|h| h.release));
                    }
                    Err(error) => errors.push(error.to_string()),
                }
            }
            for repo in self.sources.rpm_repos(distro_version, *arch) {
                checked += 1;
                match read_repo(&mut pass, &repo).await {
                    Ok(index) => {
                        images.extend(index.kernels);
                        images.extend(index.livepatch);
                        headers.extend(index.devel.into_iter().map(|d| d.release));
                    }
                    Err(error) => errors.push(error.to_string()),
                }
            }
            for image in images {
                let has_headers = headers.contains(&image.release);
                catalog.add(target, &image.release, &image.version, has_headers);
            }
        }
        // Entries of indexes that failed this pass were consulted too (`use_url`), so they stay.
        let used = std::mem::take(&mut pass.used);
        pass.state.retain(&used);
        if let Err(error) = pass.state.save(&self.state_path) {
            errors.push(error.to_string());
        }
        for kind in IndexKind::ALL {
            pass.stats.bytes.entry(kind).or_default();
        }
        pass.stats.indexes_checked = checked;
        pass.stats.indexes_unchanged = pass.unchanged;
        for error in &errors {
            tracing::warn!(%error, "repository watcher: index not read");
        }
        Observation {
            catalog,
            stats: pass.stats,
            errors,
            new_index_at: pass.new_index_at,
            elapsed: started.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel_id::Distribution;

    #[test]
    fn suites_follow_the_distribution_and_architecture() {
        let sources = Sources {
            debian_mirror: Some("http://deb.debian.org/debian/".to_owned()),
            debian_security_mirror: Some("http://deb.debian.org/debian-security".to_owned()),
            ubuntu_mirror: Some("http://archive.ubuntu.com/ubuntu".to_owned()),
            ubuntu_ports_mirror: None,
            rpm: Vec::new(),
        };
        let debian =
            DistroVersion::supported(Distribution::parse("debian").unwrap(), "12").unwrap();
        let urls: Vec<String> = sources
            .apt_suites(&debian, Arch::X86_64)
            .iter()
            .map(AptSuite::inrelease_url)
            .collect();
        assert_eq!(
            urls,
            [
                "http://deb.debian.org/debian/dists/bookworm/InRelease",
                "http://deb.debian.org/debian/dists/bookworm-updates/InRelease",
                "http://deb.debian.org/debian/dists/bookworm-backports/InRelease",
                "http://deb.debian.org/debian-security/dists/bookworm-security/InRelease",
            ]
        );
        let noble =
            DistroVersion::supported(Distribution::parse("ubuntu").unwrap(), "24.04").unwrap();
        let suites = sources.apt_suites(&noble, Arch::X86_64);
        assert_eq!(suites.len(), 4);
        assert_eq!(suites[2].suite, "noble-security");
        // arm64 lives on the ports mirror, which is not configured here.
        assert!(sources.apt_suites(&noble, Arch::Aarch64).is_empty());
        assert_eq!(suites[0].arch, "amd64");
    }
}
