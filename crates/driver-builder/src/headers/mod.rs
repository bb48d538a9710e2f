//! The header fallback chain: the sources that can provide a kernel's build headers, tried in
//! order until one leaves a usable kbuild tree in the root.
//!
//! Each source only *installs* something; whether it worked is decided the same way for all of
//! them, by looking for the headers of exactly this release ([`locate_headers`]). Every attempt
//! is logged with its outcome, and when all fail the error lists each source and why.
//!
//! A source also says which packages it installed, with the SHA-256 of each package file as
//! downloaded ([`crate::facts`]); when the headers were already in the root and nothing was
//! installed, the packages owning the kbuild tree are recorded instead ([`present_packages`]).
//!
//! Order per distribution (see [`HeaderChain::for_identity`]):
//! - Debian/Ubuntu: the build host's header package cache when one is given (`--header-cache`,
//!   see [`cache`]), apt-get (Debian: then its backports pocket), explicit URLs, snapshot archives.
//! - Fedora/CentOS Stream: dnf, explicit URLs, Koji hub(s) (Fedora: `fedora`; CentOS Stream:
//!   `cbs`, then `stream`).
//! - Amazon Linux: dnf, the matching `kernel-livepatch` package, explicit URLs.

mod cache;
mod debian;
mod direct;
mod koji;
mod rpm;

use std::fmt;
use std::path::PathBuf;

use integrity::HeaderPackage;
use kernel_id::{KernelIdentity, PackageFormat};
use thiserror::Error;

use crate::http::Http;
use crate::system::{CommandLine, ScratchDir, System};

pub use cache::CachedDebsSource;
pub use debian::{AptSource, BackportsSource, DebUrlSource, SnapshotSource, debian_abi_and_flavor};
pub use koji::{KojiProfile, KojiSource, koji_nvr};
pub use rpm::{DnfSource, LivepatchSource, RpmUrlSource, livepatch_package_name};

/// What a source works with.
#[derive(Debug)]
pub struct HeaderContext<'a> {
    pub identity: &'a KernelIdentity,
    pub system: &'a System,
    pub http: &'a dyn Http,
    /// Where downloaded packages go (inside the root, so the root's package tools can read them).
    pub downloads: &'a ScratchDir,
}

/// Why a source did not provide headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceFailure {
    /// The source does not apply here (for example, no URLs were configured).
    Skipped(String),
    /// The source was tried and failed.
    Failed(String),
}

impl SourceFailure {
    /// The reason without the skipped/failed prefix.
    pub fn reason(&self) -> &str {
        match self {
            SourceFailure::Skipped(why) | SourceFailure::Failed(why) => why,
        }
    }
}

impl fmt::Display for SourceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceFailure::Skipped(why) => write!(f, "skipped: {why}"),
            SourceFailure::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// One place headers can come from.
pub trait HeaderSource: fmt::Debug {
    /// A short description for logs and errors, e.g. `apt-get install linux-headers-6.1.0-47-amd64`.
    fn describe(&self) -> String;
    /// Installs the headers into the context's root; returns the packages it installed (header
    /// packages and whatever they pulled in), in install order, each with its file's SHA-256.
    fn install(&self, ctx: &HeaderContext<'_>) -> Result<Vec<HeaderPackage>, SourceFailure>;
}

/// One tried source and how it went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub source: String,
    /// None when this source provided the headers.
    pub failure: Option<SourceFailure>,
}

/// Headers ready for kbuild.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedHeaders {
    /// The kbuild tree, as a path inside the root.
    pub dir: PathBuf,
    /// The source that provided them.
    pub source: String,
    /// Every source tried, in order, ending with the one that worked.
    pub attempts: Vec<Attempt>,
    /// The packages the source installed for this build (or, when the headers were already
    /// there, the installed packages owning them), with the SHA-256 of each package file.
    pub packages: Vec<HeaderPackage>,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{}", render_exhausted(.release, .attempts))]
pub struct HeadersError {
    pub release: String,
    pub attempts: Vec<Attempt>,
}

fn render_exhausted(release: &str, attempts: &[Attempt]) -> String {
    let mut text = format!(
        "no kernel headers for {release}: all {} header sources failed",
        attempts.len()
    );
    for (n, attempt) in attempts.iter().enumerate() {
        let outcome = attempt
            .failure
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "ok".to_owned());
        text.push_str(&format!("\n  {}. {}: {outcome}", n + 1, attempt.source));
    }
    text
}

/// Where the headers of `identity`'s release may live, in the order they are checked: Debian's
/// `/usr/src/linux-headers-<r>`, Fedora's `/usr/src/kernels/<r>`, then the `build` link that
/// both families create under `/lib/modules/<r>`.
pub fn header_candidates(release: &str) -> Vec<PathBuf> {
    vec![
        PathBuf::from(format!("/usr/src/linux-headers-{release}")),
        PathBuf::from(format!("/usr/src/kernels/{release}")),
        PathBuf::from(format!("/lib/modules/{release}/build")),
    ]
}

/// The kbuild tree for `release` inside the root, if one is installed: a directory with a
/// top-level Makefile whose `UTS_RELEASE` (when recorded) is exactly `release`.
///
/// `include/generated/utsrelease.h` is what the module's vermagic will say; Debian's
/// `include/config/kernel.release` holds the upstream version (`6.1.170`), not the ABI name, so
/// it cannot be used for this.
pub fn locate_headers(system: &System, release: &str) -> Option<PathBuf> {
    header_candidates(release)
        .into_iter()
        .find_map(|candidate| {
            let dir = system.resolve(&candidate)?;
            let host = system.host_path(&dir);
            if !host.join("Makefile").is_file() {
                return None;
            }
            // A tree for another release behind a stale link must not be used: kbuild would build
            // a module that the target refuses to load.
            match std::fs::read_to_string(host.join("include/generated/utsrelease.h")) {
                Ok(text) if uts_release(&text).is_some_and(|found| found != release) => None,
                _ => Some(dir),
            }
        })
}

/// The string in `#define UTS_RELEASE "<release>"`.
fn uts_release(header: &str) -> Option<&str> {
    header.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("#define")?.trim_start();
        let value = rest.strip_prefix("UTS_RELEASE")?.trim();
        value.strip_prefix('"')?.strip_suffix('"')
    })
}

/// The ordered sources for one build.
#[derive(Debug, Default)]
pub struct HeaderChain {
    sources: Vec<Box<dyn HeaderSource>>,
}

/// Configuration of the optional sources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderOptions {
    /// Explicit package URLs (`--header-url`), e.g. from kernels.json's `headers`.
    pub header_urls: Vec<String>,
    /// Snapshot-style archive bases (`--snapshot-base`), see [`SnapshotSource`].
    pub snapshot_bases: Vec<String>,
    /// Koji profiles to ask, replacing the distribution's defaults when not empty.
    pub koji_profiles: Vec<KojiProfile>,
    /// The build host's header package cache for this kernel (`--header-cache`, a path in the
    /// root), tried first for Debian-family kernels; see [`CachedDebsSource`].
    pub header_cache: Option<PathBuf>,
}

impl HeaderChain {
    pub fn new(sources: Vec<Box<dyn HeaderSource>>) -> HeaderChain {
        HeaderChain { sources }
    }

    /// The chain for an identity's distribution.
    pub fn for_identity(identity: &KernelIdentity, options: &HeaderOptions) -> HeaderChain {
        let release = identity.kernel_release().as_str();
        let mut sources: Vec<Box<dyn HeaderSource>> = Vec::new();
        if let (Some(dir), PackageFormat::Deb) = (
            &options.header_cache,
            identity.distribution().package_format(),
        ) {
            sources.push(Box::new(CachedDebsSource::new(dir.clone())));
        }
        match (
            identity.distribution().as_str(),
            identity.distribution().package_format(),
        ) {
            ("debian", PackageFormat::Deb) => {
                sources.push(Box::new(AptSource::new(release)));
                sources.push(Box::new(BackportsSource::new(identity)));
                sources.push(Box::new(DebUrlSource::new(options.header_urls.clone())));
                sources.push(Box::new(SnapshotSource::new(
                    options.snapshot_bases.clone(),
                )));
            }
            (_, PackageFormat::Deb) => {
                sources.push(Box::new(AptSource::new(release)));
                sources.push(Box::new(DebUrlSource::new(options.header_urls.clone())));
                sources.push(Box::new(SnapshotSource::new(
                    options.snapshot_bases.clone(),
                )));
            }
            ("amazonlinux", _) => {
                sources.push(Box::new(DnfSource::new(identity)));
                sources.push(Box::new(LivepatchSource::new(identity)));
                sources.push(Box::new(RpmUrlSource::new(options.header_urls.clone())));
            }
            (distribution, _) => {
                sources.push(Box::new(DnfSource::new(identity)));
                sources.push(Box::new(RpmUrlSource::new(options.header_urls.clone())));
                let profiles = if options.koji_profiles.is_empty() {
                    KojiProfile::defaults_for(distribution)
                } else {
                    options.koji_profiles.clone()
                };
                for profile in profiles {
                    sources.push(Box::new(KojiSource::new(profile)));
                }
            }
        }
        HeaderChain { sources }
    }

    pub fn describe(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.describe()).collect()
    }

    /// Tries each source in order until the headers of the identity's release are present.
    pub fn resolve(&self, ctx: &HeaderContext<'_>) -> Result<ResolvedHeaders, HeadersError> {
        let release = ctx.identity.kernel_release().as_str();
        let mut attempts = Vec::new();
        for source in &self.sources {
            let name = source.describe();
            tracing::info!(source = %name, "header source: trying");
            let failure = match source.install(ctx) {
                Ok(installed) => match locate_headers(ctx.system, release) {
                    Some(dir) => {
                        tracing::info!(source = %name, dir = %dir.display(), "header source: ok");
                        attempts.push(Attempt {
                            source: name.clone(),
                            failure: None,
                        });
                        let packages = if installed.is_empty() {
                            tracing::info!(
                                "nothing was installed: the headers were already in the root"
                            );
                            present_packages(ctx, &dir)
                        } else {
                            installed
                        };
                        for package in &packages {
                            tracing::info!(
                                package = %package.name,
                                version = %package.version,
                                file = %package.file_name,
                                sha256 = %package.sha256,
                                "header package"
                            );
                        }
                        return Ok(ResolvedHeaders {
                            dir,
                            source: name,
                            attempts,
                            packages,
                        });
                    }
                    None => SourceFailure::Failed(format!(
                        "installed, but no kbuild tree for {release} appeared in {}",
                        header_candidates(release)
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                },
                Err(failure) => failure,
            };
            match &failure {
                SourceFailure::Skipped(why) => {
                    tracing::info!(source = %name, reason = %why, "header source: skipped")
                }
                SourceFailure::Failed(why) => {
                    tracing::warn!(source = %name, reason = %why, "header source: failed")
                }
            }
            attempts.push(Attempt {
                source: name,
                failure: Some(failure),
            });
        }
        Err(HeadersError {
            release: release.to_owned(),
            attempts,
        })
    }
}

/// The installed packages owning an already present kbuild tree (`dir`, a guest path), with
/// digests when their files can be found or fetched (see [`crate::facts`]); packages without one
/// are left out with a warning.
pub fn present_packages(ctx: &HeaderContext<'_>, dir: &std::path::Path) -> Vec<HeaderPackage> {
    let result = match ctx.identity.distribution().package_format() {
        PackageFormat::Deb => {
            // The arch tree and the trees its Makefile includes (Debian's `-common` package).
            let mut paths = vec![dir.to_path_buf()];
            let makefile = std::fs::read_to_string(ctx.system.host_path(&dir.join("Makefile")))
                .unwrap_or_default();
            paths.extend(makefile.lines().filter_map(|line| {
                let included = line.strip_prefix("include ")?.trim();
                included.starts_with('/').then(|| PathBuf::from(included))
            }));
            let mut owners: Vec<(String, String, String)> = Vec::new();
            for path in &paths {
                match crate::facts::dpkg_owner(ctx.system, path) {
                    Some(owner) if !owners.contains(&owner) => owners.push(owner),
                    Some(_) => {}
                    None => tracing::warn!(path = %path.display(), "no installed package owns it"),
                }
            }
            crate::facts::apt_package_facts(
                ctx.system,
                ctx.downloads,
                ctx.identity.arch().debian_name(),
                &owners,
            )
        }
        PackageFormat::Rpm => {
            let query = CommandLine::new(
                "rpm",
                [
                    "-qf".to_owned(),
                    "--qf".to_owned(),
                    "%{NAME}\\t%{EPOCH}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\n".to_owned(),
                    dir.display().to_string(),
                ],
            );
            match ctx.system.run(&query) {
                Ok(output) if output.success() => {
                    let owners: Vec<(String, String, String)> =
                        crate::facts::parse_rpm_query(&output.stdout)
                            .into_iter()
                            .map(|((name, _), (evr, file))| (name, evr, file))
                            .collect();
                    crate::facts::dnf_package_facts(ctx.system, ctx.downloads, &owners)
                }
                Ok(output) => Err(format!("`{query}`: {}", output.describe_failure())),
                Err(error) => Err(error.to_string()),
            }
        }
    };
    result.unwrap_or_else(|error| {
        tracing::warn!(%error, "the packages of the present headers are left out of the build facts");
        Vec::new()
    })
}

/// Runs a command; a non-zero exit becomes a [`SourceFailure::Failed`] naming the command.
pub(crate) fn run_step(system: &System, command: &CommandLine) -> Result<(), SourceFailure> {
    tracing::info!(command = %command, "running");
    let output = system
        .run(command)
        .map_err(|e| SourceFailure::Failed(e.to_string()))?;
    if output.success() {
        Ok(())
    } else {
        Err(SourceFailure::Failed(format!(
            "`{command}`: {}",
            output.describe_failure()
        )))
    }
}

/// A file name for a downloaded package: the URL's last segment, percent-decoded, restricted to
/// characters package file names use, so a URL cannot choose a path.
pub(crate) fn package_file_name(url: &str, extension: &str) -> Result<String, String> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let segment = path.rsplit('/').next().unwrap_or_default();
    let name = percent_decode(segment);
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._+~-:".contains(c);
    if name.is_empty()
        || name.starts_with('.')
        || !name.chars().all(allowed)
        || !name.ends_with(&format!(".{extension}"))
    {
        return Err(format!(
            "{url}: the file name '{name}' is not a .{extension} package name"
        ));
    }
    Ok(name)
}

pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A package file the builder downloaded: where commands in the root see it, where this process
/// reads it, and its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Downloaded {
    pub guest: PathBuf,
    pub host: PathBuf,
    pub url: String,
}

/// The build facts of downloaded files that were installed.
pub(crate) fn downloaded_facts(files: &[Downloaded]) -> Result<Vec<HeaderPackage>, SourceFailure> {
    let files: Vec<(PathBuf, String)> = files
        .iter()
        .map(|f| (f.host.clone(), f.url.clone()))
        .collect();
    crate::facts::downloaded_file_facts(&files).map_err(SourceFailure::Failed)
}

/// Downloads each URL into the context's download directory, in URL order.
pub(crate) fn download_all(
    ctx: &HeaderContext<'_>,
    urls: &[String],
    extension: &str,
) -> Result<Vec<Downloaded>, SourceFailure> {
    let mut files = Vec::new();
    for url in urls {
        let name = package_file_name(url, extension).map_err(SourceFailure::Failed)?;
        let guest = ctx.downloads.guest.join(&name);
        let host = ctx.downloads.host.join(&name);
        tracing::info!(url = %url, "downloading");
        let bytes = ctx
            .http
            .download(url, &host)
            .map_err(|e| SourceFailure::Failed(format!("download {e}")))?;
        tracing::info!(url = %url, bytes, "downloaded");
        files.push(Downloaded {
            guest,
            host,
            url: url.clone(),
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_come_from_the_last_segment_only() {
        assert_eq!(
            package_file_name(
                "http://h/pool/main/l/linux/linux-headers-6.12.48%2Bdeb13-amd64_6.12.48-1_amd64.deb",
                "deb"
            ),
            Ok("linux-headers-6.12.48+deb13-amd64_6.12.48-1_amd64.deb".to_owned())
        );
        for bad in [
            "http://h/x/..%2F..%2Fetc%2Fpasswd.deb",
            "http://h/x/",
            "http://h/x/a b.deb",
            "http://h/x/kernel.rpm",
            "http://h/x/.hidden.deb",
        ] {
            assert!(package_file_name(bad, "deb").is_err(), "{bad}");
        }
    }

    #[test]
    fn percent_decoding_tolerates_stray_percent_signs() {
        assert_eq!(percent_decode("a%2Bb"), "a+b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn exhausted_error_lists_every_source() {
        let error = HeadersError {
            release: "6.1.0-99-amd64".into(),
            attempts: vec![
                Attempt {
                    source: "apt-get install linux-headers-6.1.0-99-amd64".into(),
                    failure: Some(SourceFailure::Failed("exit code 100".into())),
                },
                Attempt {
                    source: "explicit header URLs".into(),
                    failure: Some(SourceFailure::Skipped("none given".into())),
                },
            ],
        };
        assert_eq!(
            error.to_string(),
            "no kernel headers for 6.1.0-99-amd64: all 2 header sources failed\n  \
             1. apt-get install linux-headers-6.1.0-99-amd64: failed: exit code 100\n  \
             2. explicit header URLs: skipped: none given"
        );
    }

    #[test]
    fn headers_of_another_release_are_not_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let system = System::new(dir.path(), Box::new(crate::system::DirectRunner));
        let tree = dir.path().join("usr/src/linux-headers-6.1.0-47-amd64");
        std::fs::create_dir_all(tree.join("include/generated")).expect("mkdir");
        std::fs::write(tree.join("Makefile"), "").expect("write");
        let uts = tree.join("include/generated/utsrelease.h");
        std::fs::write(&uts, "#define UTS_RELEASE \"6.1.0-46-amd64\"\n").expect("write");
        assert_eq!(locate_headers(&system, "6.1.0-47-amd64"), None);
        std::fs::write(&uts, "#define UTS_RELEASE \"6.1.0-47-amd64\"\n").expect("write");
        assert_eq!(
            locate_headers(&system, "6.1.0-47-amd64"),
            Some(PathBuf::from("/usr/src/linux-headers-6.1.0-47-amd64"))
        );
        assert_eq!(uts_release("#define UTS_RELEASE \"x\""), Some("x"));
        assert_eq!(uts_release("#define UTS_VERSION \"x\""), None);
    }
}
