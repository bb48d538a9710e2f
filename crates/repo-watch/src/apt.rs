//! apt repositories: `dists/<suite>/InRelease` and the `Packages` index it lists.
//!
//! One suite is read so: InRelease with a conditional GET (`304`: the stored copy stands); its
//! `SHA256` list names the size and digest of `<component>/binary-<arch>/Packages.xz` (`.gz`, or
//! the plain file, when `.xz` is not published); when that digest is the stored one, the stored
//! kernel list is reused and nothing else is downloaded; otherwise the file is downloaded (at most
//! the listed size), its size and SHA-256 are checked against InRelease (a mismatch is an error
//! naming the URL), and it is decompressed and parsed as a stream.
//!
//! Kernels: `linux-image-<R>` binary packages, `R` starting with a digit (meta packages such as
//! `linux-image-amd64` are not kernels); Debian's `linux-image-<R>-unsigned` and Ubuntu's
//! `linux-image-unsigned-<R>` are the same kernel `R` as the signed package; `-dbg`/`-dbgsym`
//! packages are not kernels. Headers: `linux-headers-<R>`.
//!
//! What is trusted: the Packages file is bound to InRelease by its SHA-256. InRelease itself is
//! verified only when a keyring is configured ([`InReleaseVerifier`], the real `gpgv`; the service
//! and CLI take `--watch-apt-keyring`, default the host's archive keyrings, and refuse an apt
//! source with none unless `--watch-allow-unsigned-indexes`, for test mirrors). Without it, whoever can answer for the mirror (a
//! man-in-the-middle on plain HTTP) can make the watcher believe in kernels that do not exist. What
//! that buys them is bounded: the watcher only asks for prebuilds of releases it found, through the
//! same validated request path as any node; a made-up release's headers then fail to install from
//! the real archive inside the clean build root, and the build ends in `error`. It spends build
//! time, it cannot change what a build compiles against. `Valid-Until`, when InRelease has it, is
//! enforced, so a replayed old (signed) InRelease is refused once it has expired.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::PathBuf;

use kernel_id::KernelRelease;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::compression::decompressed;
use crate::fetch::{Fetched, IndexKind};
use crate::state::{FileDigest, FoundPackage, IndexEntry, Stored};
use crate::watch::{Pass, RequestResult, WatchError};

/// Largest InRelease accepted (Debian's main archive's is about 150 kB).
pub const MAX_INRELEASE_BYTES: u64 = 8 * 1024 * 1024;
/// Largest compressed Packages file accepted (Debian 12 amd64: about 9 MB as xz).
pub const MAX_PACKAGES_BYTES: u64 = 256 * 1024 * 1024;
/// Largest Packages file accepted after decompression (Debian 12 amd64: about 50 MB).
pub const MAX_PACKAGES_DECOMPRESSED: u64 = 2 * 1024 * 1024 * 1024;

/// What the watcher reads of an InRelease.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InRelease {
    /// `Date`, as written.
    pub date: Option<String>,
    /// `Valid-Until`, as written.
    pub valid_until: Option<String>,
    /// The `SHA256` list: path -> digest.
    pub sha256: BTreeMap<String, FileDigest>,
}

/// Parses an InRelease (clear-signed or plain). The signature itself is not checked here (see
/// [`InReleaseVerifier`]); the text parsed is exactly the signed text.
pub fn parse_inrelease(text: &str, url: &str) -> Result<InRelease, WatchError> {
    let body = signed_text(text, url)?;
    let mut release = InRelease::default();
    let mut in_sha256 = false;
    for line in body.lines() {
        if line.trim().is_empty() {
            // Only the first paragraph holds the release's fields.
            break;
        }
        if let Some(entry) = line.strip_prefix(' ') {
            if !in_sha256 {
                continue;
            }
            let mut parts = entry.split_whitespace();
            let (Some(hex), Some(size), Some(path), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(WatchError::index(
                    url,
                    format!("SHA256 line {entry:?} is not `<sha256> <size> <path>`"),
                ));
            };
            let size: u64 = size.parse().map_err(|_| {
                WatchError::index(
                    url,
                    format!("SHA256 line for {path}: size {size:?} is not a number"),
                )
            })?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(WatchError::index(
                    url,
                    format!("SHA256 line for {path}: {hex:?} is not 64 hex digits"),
                ));
            }
            release.sha256.insert(
                path.to_owned(),
                FileDigest {
                    size,
                    sha256: hex.to_ascii_lowercase(),
                },
            );
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(WatchError::index(
                url,
                format!("line {line:?} is not `Field: value`"),
            ));
        };
        in_sha256 = key == "SHA256";
        let value = value.trim();
        match key {
            "Date" => release.date = Some(value.to_owned()),
            "Valid-Until" => release.valid_until = Some(value.to_owned()),
            _ => {}
        }
    }
    if release.sha256.is_empty() {
        return Err(WatchError::index(url, "has no SHA256 list of index files"));
    }
    Ok(release)
}

/// The signed text of a clear-signed message (dash-escaping undone), or the whole text when it is
/// not signed. Anything but one signed block is refused: text outside it is not what a signature
/// would vouch for.
fn signed_text(text: &str, url: &str) -> Result<String, WatchError> {
    const BEGIN: &str = "-----BEGIN PGP SIGNED MESSAGE-----";
    const SIGNATURE: &str = "-----BEGIN PGP SIGNATURE-----";
    let trimmed = text.trim_start();
    if !trimmed.starts_with(BEGIN) {
        if text.contains(BEGIN) || text.contains(SIGNATURE) {
            return Err(WatchError::index(url, "text before the signed message"));
        }
        return Ok(text.to_owned());
    }
    if trimmed.matches(BEGIN).count() != 1 {
        return Err(WatchError::index(url, "more than one signed message"));
    }
    let mut lines = trimmed.lines().skip(1);
    // Armor headers (`Hash: SHA256`) up to the first empty line.
    for line in lines.by_ref() {
        if line.trim().is_empty() {
            break;
        }
    }
    let mut body = String::with_capacity(text.len());
    let mut signed = false;
    for line in lines {
        if line == SIGNATURE {
            signed = true;
            break;
        }
        body.push_str(line.strip_prefix("- ").unwrap_or(line));
        body.push('\n');
    }
    if !signed {
        return Err(WatchError::index(
            url,
            "the signed message has no signature block",
        ));
    }
    Ok(body)
}

/// `Valid-Until`/`Date` as apt writes them: `Sat, 11 Jul 2026 10:16:37 UTC`.
pub fn parse_release_date(value: &str) -> Option<OffsetDateTime> {
    let mut parts = value.split_whitespace();
    let first = parts.next()?;
    // The weekday is optional in RFC 2822.
    let day = if first.ends_with(',') {
        parts.next()?
    } else {
        first
    };
    let (month, year, clock, zone) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !matches!(zone, "UTC" | "GMT" | "UT" | "Z" | "+0000") {
        return None;
    }
    let month = match month {
        "Jan" => time::Month::January,
        "Feb" => time::Month::February,
        "Mar" => time::Month::March,
        "Apr" => time::Month::April,
        "May" => time::Month::May,
        "Jun" => time::Month::June,
        "Jul" => time::Month::July,
        "Aug" => time::Month::August,
        "Sep" => time::Month::September,
        "Oct" => time::Month::October,
        "Nov" => time::Month::November,
        "Dec" => time::Month::December,
        _ => return None,
    };
    let mut hms = clock.split(':');
    let (h, m, s) = (hms.next()?, hms.next()?, hms.next()?);
    let date = time::Date::from_calendar_date(year.parse().ok()?, month, day.parse().ok()?).ok()?;
    let time = time::Time::from_hms(h.parse().ok()?, m.parse().ok()?, s.parse().ok()?).ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_utc())
}

/// Refuses an expired InRelease (a replay of an old one), naming the URL and the date.
fn check_valid_until(
    valid_until: Option<&str>,
    now: OffsetDateTime,
    url: &str,
) -> Result<(), WatchError> {
    let Some(raw) = valid_until else {
        return Ok(());
    };
    let until = parse_release_date(raw).ok_or_else(|| {
        WatchError::index(
            url,
            format!("Valid-Until {raw:?} is not a date like `Sat, 11 Jul 2026 10:16:37 UTC`"),
        )
    })?;
    if until < now {
        return Err(WatchError::index(
            url,
            format!(
                "expired: Valid-Until {raw} is in the past (a stale mirror or a replayed index)"
            ),
        ));
    }
    Ok(())
}

/// What a package name is, for the watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebRole {
    /// A kernel image of this release.
    Image,
    /// The headers of this release.
    Headers,
}

/// Classifies a binary package name (see the module documentation for the rules).
pub fn classify_deb_package(name: &str) -> Option<(DebRole, &str)> {
    if let Some(rest) = name.strip_prefix("linux-image-") {
        let rest = rest.strip_prefix("unsigned-").unwrap_or(rest);
        if rest.ends_with("-dbg") || rest.ends_with("-dbgsym") {
            return None;
        }
        let release = rest.strip_suffix("-unsigned").unwrap_or(rest);
        return release
            .starts_with(|c: char| c.is_ascii_digit())
            .then_some((DebRole::Image, release));
    }
    let release = name.strip_prefix("linux-headers-")?;
    release
        .starts_with(|c: char| c.is_ascii_digit())
        .then_some((DebRole::Headers, release))
}

/// The kernel images and headers of one Packages file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DebIndex {
    /// `linux-image-<R>` (release and package version).
    pub images: BTreeSet<FoundPackage>,
    /// `linux-headers-<R>`.
    pub headers: BTreeSet<FoundPackage>,
}

/// Reads the stanzas of a (decompressed) Packages file and keeps the kernel packages of `arch`
/// (Debian's name, e.g. `amd64`). Names that are not valid kernel releases are skipped.
pub fn parse_packages(input: impl BufRead, arch: &str, url: &str) -> Result<DebIndex, WatchError> {
    let mut index = DebIndex::default();
    let mut input = input;
    let mut line = Vec::new();
    let (mut package, mut version, mut architecture) =
        (None::<String>, None::<String>, None::<String>);
    let mut finish = |package: &mut Option<String>,
                      version: &mut Option<String>,
                      architecture: &mut Option<String>| {
        if let (Some(name), Some(version), Some(architecture)) =
            (package.take(), version.take(), architecture.take())
            && architecture == arch
            && let Some((role, release)) = classify_deb_package(&name)
            && KernelRelease::parse(release).is_ok()
        {
            let found = FoundPackage {
                release: release.to_owned(),
                version,
            };
            match role {
                DebRole::Image => index.images.insert(found),
                DebRole::Headers => index.headers.insert(found),
            };
        }
        *package = None;
        *version = None;
        *architecture = None;
    };
    loop {
        line.clear();
        let read = input
            .read_until(b'\n', &mut line)
            .map_err(|e| WatchError::index(url, format!("reading: {e}")))?;
        if read == 0 {
            finish(&mut package, &mut version, &mut architecture);
            break;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            finish(&mut package, &mut version, &mut architecture);
            continue;
        }
        if text.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((key, value)) = text.split_once(':') {
            let value = Some(value.trim().to_owned());
            match key {
                "Package" => package = value,
                "Version" => version = value,
                "Architecture" => architecture = value,
                _ => {}
            }
        }
    }
    Ok(index)
}

/// Checks InRelease signatures with the real `gpgv` against keyrings (a signature by a key of any
/// of them is good: Debian's and Ubuntu's archives have their own).
#[derive(Debug, Clone)]
pub struct InReleaseVerifier {
    /// Keyring files (`/usr/share/keyrings/debian-archive-keyring.gpg`).
    pub keyrings: Vec<PathBuf>,
    /// The `gpgv` binary.
    pub gpgv: PathBuf,
}

impl InReleaseVerifier {
    /// `gpgv` from PATH with `keyrings`.
    pub fn new(keyrings: Vec<PathBuf>) -> Self {
        Self {
            keyrings,
            gpgv: PathBuf::from("gpgv"),
        }
    }

    /// Verifies a clear-signed InRelease; an error names the URL and gpgv's verdict.
    pub async fn verify(&self, bytes: &[u8], url: &str) -> Result<(), WatchError> {
        use tokio::io::AsyncWriteExt;
        let mut command = tokio::process::Command::new(&self.gpgv);
        for keyring in &self.keyrings {
            command.arg("--keyring").arg(keyring);
        }
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| WatchError::index(url, format!("running {}: {e}", self.gpgv.display())))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error means gpgv stopped reading; its verdict below says why.
            let _ = stdin.write_all(bytes).await;
        }
        let output =
            tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
                .await
                .map_err(|_| WatchError::index(url, "gpgv took longer than 60 s"))?
                .map_err(|e| WatchError::index(url, format!("gpgv: {e}")))?;
        if output.status.success() {
            return Ok(());
        }
        let verdict = String::from_utf8_lossy(&output.stderr);
        let verdict: Vec<&str> = verdict.lines().filter(|l| !l.trim().is_empty()).collect();
        Err(WatchError::index(
            url,
            format!(
                "InRelease signature not valid under keyrings {}: {}",
                self.keyrings
                    .iter()
                    .map(|k| k.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                verdict.join("; ")
            ),
        ))
    }
}

/// One apt suite to read for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSuite {
    /// Mirror base URL (`http://deb.debian.org/debian`).
    pub base: String,
    /// Suite (`bookworm-updates`).
    pub suite: String,
    /// Component (`main`).
    pub component: String,
    /// Debian's architecture name (`amd64`).
    pub arch: String,
}

impl AptSuite {
    /// `<base>/dists/<suite>/InRelease`.
    pub fn inrelease_url(&self) -> String {
        format!(
            "{}/dists/{}/InRelease",
            self.base.trim_end_matches('/'),
            self.suite
        )
    }

    fn file_url(&self, path: &str) -> String {
        format!(
            "{}/dists/{}/{path}",
            self.base.trim_end_matches('/'),
            self.suite
        )
    }
}

/// Reads one suite's kernels (see the module documentation).
pub(crate) async fn read_suite(
    pass: &mut Pass<'_>,
    suite: &AptSuite,
) -> Result<DebIndex, WatchError> {
    let url = suite.inrelease_url();
    pass.use_url(&url);
    let stored = match pass.state.indexes.get(&url) {
        Some(IndexEntry {
            validators,
            stored:
                Stored::InRelease {
                    valid_until,
                    packages,
                },
        }) => Some((validators.clone(), valid_until.clone(), packages.clone())),
        _ => None,
    };
    let fetched = pass
        .fetch(
            &url,
            IndexKind::InRelease,
            stored.as_ref().map(|s| &s.0),
            MAX_INRELEASE_BYTES,
        )
        .await?;
    let (valid_until, packages) = match fetched {
        Fetched::NotModified => match stored {
            Some((_, valid_until, packages)) => (valid_until, packages),
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
                "not found (404): the mirror does not publish this suite",
            ));
        }
        Fetched::Body { bytes, validators } => {
            if let Some(verifier) = pass.verifier {
                verifier.verify(&bytes, &url).await?;
            }
            let text = String::from_utf8(bytes)
                .map_err(|_| WatchError::index(&url, "is not UTF-8 text"))?;
            let release = parse_inrelease(&text, &url)?;
            let prefix = format!("{}/binary-{}/", suite.component, suite.arch);
            // Only the Packages entries are kept: the rest of the list is for other tools.
            let packages: BTreeMap<String, FileDigest> = release
                .sha256
                .into_iter()
                .filter(|(path, _)| {
                    path.contains("/binary-")
                        && path
                            .rsplit('/')
                            .next()
                            .is_some_and(|f| f.starts_with("Packages"))
                })
                .collect();
            if !packages.keys().any(|p| p.starts_with(&prefix)) {
                tracing::debug!(%url, %prefix, "InRelease lists no Packages file for this component and architecture");
            }
            pass.state.indexes.insert(
                url.clone(),
                IndexEntry {
                    validators,
                    stored: Stored::InRelease {
                        valid_until: release.valid_until.clone(),
                        packages: packages.clone(),
                    },
                },
            );
            (release.valid_until, packages)
        }
    };
    check_valid_until(valid_until.as_deref(), pass.now, &url)?;

    let base = format!("{}/binary-{}/Packages", suite.component, suite.arch);
    let candidates: Vec<(String, FileDigest)> = [".xz", ".gz", ""]
        .into_iter()
        .filter_map(|ext| {
            let path = format!("{base}{ext}");
            packages.get(&path).map(|digest| (path, digest.clone()))
        })
        .collect();
    if candidates.is_empty() {
        return Err(WatchError::index(
            &url,
            format!("lists no {base}.xz, {base}.gz or {base}"),
        ));
    }
    for (path, digest) in candidates {
        let packages_url = suite.file_url(&path);
        pass.use_url(&packages_url);
        if let Some(IndexEntry {
            stored:
                Stored::Packages {
                    digest: known,
                    images,
                    headers,
                },
            ..
        }) = pass.state.indexes.get(&packages_url)
            && *known == digest
        {
            let index = DebIndex {
                images: images.clone(),
                headers: headers.clone(),
            };
            pass.count_request(IndexKind::Packages, RequestResult::Reused);
            pass.unchanged += 1;
            return Ok(index);
        }
        // The digest decides whether to download; the listed size bounds the download.
        let bytes = match pass
            .fetch(
                &packages_url,
                IndexKind::Packages,
                None,
                digest.size.min(MAX_PACKAGES_BYTES),
            )
            .await
        {
            Ok(Fetched::Body { bytes, .. }) => bytes,
            Ok(Fetched::Missing) => continue,
            Ok(Fetched::NotModified) => {
                return Err(WatchError::index(
                    &packages_url,
                    "answered 304 to an unconditional request",
                ));
            }
            Err(crate::fetch::FetchError::TooLarge { .. }) => {
                return Err(WatchError::index(
                    &packages_url,
                    format!("is larger than the {} bytes InRelease lists", digest.size),
                ));
            }
            Err(error) => return Err(error.into()),
        };
        let actual: [u8; 32] = Sha256::digest(&bytes).into();
        let actual = hex::encode(actual);
        if bytes.len() as u64 != digest.size || actual != digest.sha256 {
            return Err(WatchError::index(
                &packages_url,
                format!(
                    "does not match InRelease: {} bytes with SHA-256 {actual}, InRelease lists {} bytes with SHA-256 {}",
                    bytes.len(),
                    digest.size,
                    digest.sha256
                ),
            ));
        }
        pass.saw_new_index();
        let (arch, location) = (suite.arch.clone(), packages_url.clone());
        let index = tokio::task::spawn_blocking(move || {
            let reader = decompressed(&location, bytes.as_slice(), MAX_PACKAGES_DECOMPRESSED)
                .map_err(|e| WatchError::index(&location, e.rule))?;
            parse_packages(reader, &arch, &location)
        })
        .await
        .map_err(|e| WatchError::index(&packages_url, format!("parsing task failed: {e}")))??;
        pass.state.indexes.insert(
            packages_url,
            IndexEntry {
                validators: Default::default(),
                stored: Stored::Packages {
                    digest,
                    images: index.images.clone(),
                    headers: index.headers.clone(),
                },
            },
        );
        return Ok(index);
    }
    Err(WatchError::index(
        &url,
        format!("lists {base}.* but the mirror has none of them (404)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNED: &str = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: Debian\nDate: Sat, 11 Jul 2026 10:16:37 UTC\nValid-Until: Sat, 18 Jul 2026 10:16:37 UTC\nMD5Sum:\n 0ed6d4c8891eb86358b94bb35d9e4da4  1484322 main/binary-amd64/Packages.xz\nSHA256:\n 9e0b5aabb2465b3d2e7a7fe27f9913846277833f7a2826e7767acccff5b588c5  8790396 main/binary-amd64/Packages.xz\n 6777ea16514725f9427f48c240d92e0a6b8496138e37a1491d8597e66774e309 12084798 main/binary-amd64/Packages.gz\n- -dash: escaped\n-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n";

    #[test]
    fn inrelease_lists_digests_and_validity() {
        let release = parse_inrelease(SIGNED, "u").unwrap();
        assert_eq!(
            release.date.as_deref(),
            Some("Sat, 11 Jul 2026 10:16:37 UTC")
        );
        assert_eq!(
            release.sha256["main/binary-amd64/Packages.xz"],
            FileDigest {
                size: 8_790_396,
                sha256: "9e0b5aabb2465b3d2e7a7fe27f9913846277833f7a2826e7767acccff5b588c5"
                    .to_owned()
            }
        );
        assert_eq!(release.sha256.len(), 2);
        let until = parse_release_date(release.valid_until.as_deref().unwrap()).unwrap();
        assert!(
            check_valid_until(
                release.valid_until.as_deref(),
                until - time::Duration::hours(1),
                "u"
            )
            .is_ok()
        );
        let expired = check_valid_until(
            release.valid_until.as_deref(),
            until + time::Duration::hours(1),
            "http://m/InRelease",
        )
        .unwrap_err()
        .to_string();
        assert!(
            expired.contains("http://m/InRelease") && expired.contains("expired"),
            "{expired}"
        );
    }

    #[test]
    fn text_outside_the_signed_block_is_refused() {
        let smuggled = format!(
            "SHA256:\n {} 1 main/binary-amd64/Packages.xz\n{SIGNED}",
            "a".repeat(64)
        );
        assert!(parse_inrelease(&smuggled, "u").is_err());
        let unsigned_end = SIGNED
            .split("-----BEGIN PGP SIGNATURE-----")
            .next()
            .unwrap();
        assert!(
            parse_inrelease(unsigned_end, "u")
                .unwrap_err()
                .to_string()
                .contains("no signature block")
        );
        let bad = "SHA256:\n zz 1 main/binary-amd64/Packages.xz\n";
        let error = parse_inrelease(bad, "http://m/dists/x/InRelease")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("http://m/dists/x/InRelease") && error.contains("64 hex digits"),
            "{error}"
        );
    }

    #[test]
    fn kernel_package_names() {
        use DebRole::*;
        assert_eq!(
            classify_deb_package("linux-image-6.1.0-47-amd64"),
            Some((Image, "6.1.0-47-amd64"))
        );
        assert_eq!(
            classify_deb_package("linux-image-6.1.0-47-amd64-unsigned"),
            Some((Image, "6.1.0-47-amd64"))
        );
        assert_eq!(
            classify_deb_package("linux-image-unsigned-6.8.0-52-generic"),
            Some((Image, "6.8.0-52-generic"))
        );
        assert_eq!(classify_deb_package("linux-image-6.1.0-47-amd64-dbg"), None);
        assert_eq!(classify_deb_package("linux-image-amd64"), None);
        assert_eq!(classify_deb_package("linux-image-cloud-amd64"), None);
        assert_eq!(
            classify_deb_package("linux-headers-6.1.0-47-amd64"),
            Some((Headers, "6.1.0-47-amd64"))
        );
        assert_eq!(classify_deb_package("linux-headers-amd64"), None);
        assert_eq!(classify_deb_package("linux-kbuild-6.1"), None);
    }

    #[test]
    fn packages_stanzas_keep_kernels_of_the_architecture() {
        let text = "Package: linux-image-6.1.0-47-amd64\nSource: linux-signed-amd64 (6.1.158+1)\nVersion: 6.1.158-1\nArchitecture: amd64\nDescription: Linux 6.1\n long text\n\nPackage: linux-image-6.1.0-47-amd64-unsigned\nVersion: 6.1.158-1\nArchitecture: amd64\n\nPackage: linux-headers-6.1.0-47-amd64\nVersion: 6.1.158-1\nArchitecture: amd64\n\nPackage: linux-image-6.1.0-47-arm64\nVersion: 6.1.158-1\nArchitecture: arm64\n\nPackage: bash\nVersion: 5.2\nArchitecture: amd64\n\nPackage: linux-image-6.1.0-48-amd64\nVersion: 6.1.159-1\nArchitecture: amd64";
        let index = parse_packages(text.as_bytes(), "amd64", "u").unwrap();
        let releases: Vec<(&str, &str)> = index
            .images
            .iter()
            .map(|p| (p.release.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(
            releases,
            [
                ("6.1.0-47-amd64", "6.1.158-1"),
                ("6.1.0-48-amd64", "6.1.159-1")
            ]
        );
        assert_eq!(index.headers.len(), 1);
    }
}
