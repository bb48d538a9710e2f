//! Header sources for Debian and Ubuntu: apt, explicit `.deb` URLs, and snapshot-style archives.
//!
//! A Debian kernel's kbuild tree is spread over several binary packages of the `linux` source
//! package, all with the same Debian version: `linux-headers-<release>` (arch), the ABI's
//! `linux-headers-<abi>-common` (all) and `linux-kbuild-<x>` (the host tools). Ubuntu splits them as
//! `linux-headers-<release>` plus `linux-headers-<abi>` or `linux-<flavor>-headers-<abi>`. When
//! installing downloaded files, the shared parts go first so `dpkg -i` configures the arch package
//! last.
//!
//! apt runs with `APT::Keep-Downloaded-Packages=true`, so the package files it installed stay in
//! its archive cache to be hashed for the build facts ([`crate::facts::apt_package_facts`]).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use integrity::HeaderPackage;
use kernel_id::dpkg_cmp;

use crate::facts::{self, DpkgSnapshot};
use crate::system::CommandLine;

use super::{
    Downloaded, HeaderContext, HeaderSource, SourceFailure, download_all, downloaded_facts,
    percent_decode, run_step,
};

/// `apt-get install linux-headers-<release>`, refreshing the package lists first if the root has
/// none, and once more if apt cannot find the package in stale lists. apt's plan is first
/// fetched and extracted by the builder itself ([`super::direct`]); `apt-get install` proper runs
/// only when that does not work.
#[derive(Debug, Clone)]
pub struct AptSource {
    package: String,
}

impl AptSource {
    pub fn new(release: &str) -> AptSource {
        AptSource {
            package: format!("linux-headers-{release}"),
        }
    }
}

fn apt_get(args: &[&str]) -> CommandLine {
    CommandLine::new("apt-get", args.iter().copied()).env("DEBIAN_FRONTEND", "noninteractive")
}

/// `apt-get install` of one package, keeping the downloaded files for the build facts.
fn apt_get_install(package: &str) -> CommandLine {
    apt_get(&[
        "install",
        "-y",
        "--no-install-recommends",
        "-o",
        "APT::Keep-Downloaded-Packages=true",
        package,
    ])
}

/// What dpkg wrote to its log since `since` bytes.
pub(super) fn dpkg_log_since(ctx: &HeaderContext<'_>, since: u64) -> String {
    let path = ctx.system.host_path(Path::new(facts::DPKG_LOG));
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(SeekFrom::Start(since)).is_ok()
    {
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_ok() {
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text
}

/// The packages apt installed since `before`, with their files' digests.
fn apt_installed_since(
    ctx: &HeaderContext<'_>,
    before: &DpkgSnapshot,
) -> Result<Vec<HeaderPackage>, SourceFailure> {
    let after = DpkgSnapshot::take(ctx.system);
    let log = dpkg_log_since(ctx, before.log_len);
    let changed = facts::changed_packages(&before.inventory, &after.inventory, &log);
    facts::apt_package_facts(
        ctx.system,
        ctx.downloads,
        ctx.identity.arch().debian_name(),
        &changed,
    )
    .map_err(|error| SourceFailure::Failed(format!("recording the installed packages: {error}")))
}

/// Debian's 6.12 header packages depend on their kernel image, whose postinst builds an initramfs:
/// minutes of compression for a build root that is thrown away (far more under arm64 emulation).
/// `update-initramfs` is diverted to `true` in the root before apt runs. Best effort: a root
/// without a shell or dpkg-divert just builds the initramfs.
pub(super) fn skip_initramfs(ctx: &HeaderContext<'_>) {
    let divert = CommandLine::new(
        "/bin/sh",
        [
            "-c",
            "dpkg-divert --local --rename --divert /usr/sbin/update-initramfs.kdriver \
             --add /usr/sbin/update-initramfs >/dev/null && ln -sf /bin/true /usr/sbin/update-initramfs",
        ],
    );
    match ctx.system.run(&divert) {
        Ok(output) if output.success() => {}
        Ok(output) => tracing::info!(
            reason = %output.describe_failure(),
            "could not divert update-initramfs; a kernel image dependency will build its initramfs"
        ),
        Err(error) => tracing::info!(%error, "could not divert update-initramfs"),
    }
}

impl HeaderSource for AptSource {
    fn describe(&self) -> String {
        format!("apt-get install {}", self.package)
    }

    fn install(&self, ctx: &HeaderContext<'_>) -> Result<Vec<HeaderPackage>, SourceFailure> {
        let before = DpkgSnapshot::take(ctx.system);
        let lists = ctx.system.host_path(Path::new("/var/lib/apt/lists"));
        let has_lists = std::fs::read_dir(&lists)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
            })
            .unwrap_or(false);
        let update = apt_get(&["update"]);
        let mut updated = false;
        if !has_lists {
            tracing::info!("apt has no package lists yet: running apt-get update");
            run_step(ctx.system, &update)?;
            updated = true;
        }
        match super::direct::install(ctx, &self.package) {
            Ok(installed) => return Ok(installed),
            Err(failure) => tracing::info!(
                reason = %failure.reason(),
                "fetching and extracting apt's plan did not work: installing with apt-get install"
            ),
        }
        skip_initramfs(ctx);
        let install = apt_get_install(&self.package);
        match run_step(ctx.system, &install) {
            Ok(()) => {}
            Err(first) if !updated => {
                tracing::info!(reason = %first, "apt-get install failed with old lists: updating and retrying once");
                run_step(ctx.system, &update)?;
                run_step(ctx.system, &install)?;
            }
            Err(failure) => return Err(failure),
        }
        apt_installed_since(ctx, &before)
    }
}

/// Debian's backports pocket (`<codename>-backports`) of the root's own archive. Debian 12 hosts
/// commonly run the backports kernel (6.12.*+deb12), whose headers are only there; the root keeps
/// backports out of its sources so nothing else is ever taken from it, and this source adds it for
/// this one install only after the plain apt install failed.
#[derive(Debug, Clone)]
pub struct BackportsSource {
    package: String,
    codename: Option<&'static str>,
}

/// The file this source adds to the root's apt sources.
const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/kdriver-backports.list";

impl BackportsSource {
    pub fn new(identity: &kernel_id::KernelIdentity) -> BackportsSource {
        BackportsSource {
            package: format!("linux-headers-{}", identity.kernel_release()),
            codename: identity.distro_version().codename(),
        }
    }
}

/// The archive URL of the `deb <url> <codename> ...` line in a one-line-style sources list.
pub(crate) fn archive_for_suite(sources_list: &str, codename: &str) -> Option<String> {
    sources_list.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != "deb" {
            return None;
        }
        // Skip an options block such as `[arch=amd64 signed-by=...]`.
        let mut url = words.next()?;
        if url.starts_with('[') {
            while !url.ends_with(']') {
                url = words.next()?;
            }
            url = words.next()?;
        }
        (words.next()? == codename).then(|| url.to_owned())
    })
}

impl HeaderSource for BackportsSource {
    fn describe(&self) -> String {
        match self.codename {
            Some(codename) => format!("apt-get install {} from {codename}-backports", self.package),
            None => format!("backports ({})", self.package),
        }
    }

    fn install(&self, ctx: &HeaderContext<'_>) -> Result<Vec<HeaderPackage>, SourceFailure> {
        let Some(codename) = self.codename else {
            return Err(SourceFailure::Skipped(
                "no suite codename is known for this distro version".to_owned(),
            ));
        };
        let sources_path = ctx.system.host_path(Path::new("/etc/apt/sources.list"));
        let sources = std::fs::read_to_string(&sources_path).unwrap_or_default();
        let Some(archive) = archive_for_suite(&sources, codename) else {
            return Err(SourceFailure::Skipped(format!(
                "/etc/apt/sources.list has no `deb <archive> {codename}` line to take the archive from"
            )));
        };
        let backports = format!("{codename}-backports");
        let list = ctx.system.host_path(Path::new(BACKPORTS_LIST));
        std::fs::write(&list, format!("deb {archive} {backports} main\n"))
            .map_err(|e| SourceFailure::Failed(format!("writing {}: {e}", list.display())))?;
        // No `-t <codename>-backports`: that would raise every backports version above the
        // suite's and upgrade half the toolchain. The headers exist only in backports, so apt picks
        // them (and their same-version companions) there and everything else from the suite.
        skip_initramfs(ctx);
        let before = DpkgSnapshot::take(ctx.system);
        // The facts are taken while the backports pocket is still a source, so apt can name and
        // fetch its packages.
        let result = run_step(ctx.system, &apt_get(&["update"]))
            .and_then(|()| run_step(ctx.system, &apt_get_install(&self.package)))
            .and_then(|()| apt_installed_since(ctx, &before));
        // Leave the root's sources as they were, whatever happened.
        let _ = std::fs::remove_file(&list);
        result
    }
}

/// Installs downloaded `.deb` files with `dpkg -i`, shared parts first. Dependencies outside the
/// set (such as the `linux-compiler-gcc-*` metapackage, whose compiler the build root already
/// has) are forced only after a plain install failed, and that is logged.
pub(crate) fn install_debs(
    ctx: &HeaderContext<'_>,
    mut files: Vec<Downloaded>,
) -> Result<Vec<HeaderPackage>, SourceFailure> {
    files.sort_by_key(|file| {
        install_rank(&file.guest.file_name().unwrap_or_default().to_string_lossy())
    });
    let paths: Vec<String> = files
        .iter()
        .map(|f| f.guest.display().to_string())
        .collect();
    let plain = CommandLine::new("dpkg", ["-i".to_owned()].into_iter().chain(paths.clone()))
        .env("DEBIAN_FRONTEND", "noninteractive");
    let installed = match run_step(ctx.system, &plain) {
        Ok(()) => Ok(()),
        Err(first) => {
            tracing::warn!(reason = %first, "dpkg -i failed; retrying with --force-depends");
            let forced = CommandLine::new(
                "dpkg",
                ["-i".to_owned(), "--force-depends".to_owned()]
                    .into_iter()
                    .chain(paths),
            )
            .env("DEBIAN_FRONTEND", "noninteractive");
            run_step(ctx.system, &forced).map_err(|second| {
                SourceFailure::Failed(format!(
                    "{}; then with --force-depends: {}",
                    first.reason(),
                    second.reason()
                ))
            })
        }
    };
    installed.and_then(|()| downloaded_facts(&files))
}

/// 0 for packages other header packages depend on, 1 for the rest.
fn install_rank(file_name: &str) -> u8 {
    let package = file_name.split('_').next().unwrap_or(file_name);
    let shared = package.starts_with("linux-kbuild-")
        || package.starts_with("linux-compiler-")
        || package.contains("-common")
        || package.contains("-headers-") && !package.starts_with("linux-headers-")
        || is_ubuntu_abi_headers(package);
    if shared { 0 } else { 1 }
}

/// Ubuntu's flavour-independent `linux-headers-<abi>` (e.g. `linux-headers-6.8.0-52`): its last
/// dash-separated part is numeric, unlike a flavoured release.
fn is_ubuntu_abi_headers(package: &str) -> bool {
    package
        .strip_prefix("linux-headers-")
        .and_then(|rest| rest.rsplit('-').next())
        .is_some_and(|last| !last.is_empty() && last.chars().all(|c| c.is_ascii_digit()))
}

/// Explicit `.deb` URLs given on the command line (or from kernels.json's `headers`).
#[derive(Debug, Clone)]
pub struct DebUrlSource {
    urls: Vec<String>,
}

impl DebUrlSource {
    pub fn new(urls: Vec<String>) -> DebUrlSource {
        DebUrlSource { urls }
    }
}

impl HeaderSource for DebUrlSource {
    fn describe(&self) -> String {
        format!("explicit header URLs ({} given)", self.urls.len())
    }

    fn install(&self, ctx: &HeaderContext<'_>) -> Result<Vec<HeaderPackage>, SourceFailure> {
        if self.urls.is_empty() {
            return Err(SourceFailure::Skipped("no --header-url given".to_owned()));
        }
        let files = download_all(ctx, &self.urls, "deb")?;
        install_debs(ctx, files)
    }
}

/// Splits a Debian/Ubuntu release into its ABI and flavour: the leading dash-separated parts that
/// start with a digit are the ABI, the rest the flavour.
/// `6.1.0-47-cloud-amd64` -> (`6.1.0-47`, `cloud-amd64`); `6.12.48+deb13-amd64` ->
/// (`6.12.48+deb13`, `amd64`); `6.8.0-52-generic` -> (`6.8.0-52`, `generic`).
pub fn debian_abi_and_flavor(release: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = release.split('-').collect();
    let abi_len = parts
        .iter()
        .take_while(|p| p.starts_with(|c: char| c.is_ascii_digit()))
        .count();
    if abi_len == 0 || abi_len == parts.len() {
        return None;
    }
    Some((parts[..abi_len].join("-"), parts[abi_len..].join("-")))
}

/// The source package that builds a release's headers: Debian always `linux`; Ubuntu `linux` for
/// the generic flavours and `linux-<flavour>` for cloud/OEM kernels (`linux-gcp`, `linux-aws`...).
fn source_package(distribution: &str, flavor: &str) -> String {
    let base = flavor.split('-').next().unwrap_or(flavor);
    match (distribution, base) {
        ("ubuntu", "generic" | "lowlatency") | ("debian", _) => "linux".to_owned(),
        ("ubuntu", other) => format!("linux-{other}"),
        _ => "linux".to_owned(),
    }
}

/// Snapshot-style archives: a dated copy of a whole Debian or Ubuntu archive, such as
/// `https://snapshot.debian.org/archive/debian/20250601T000000Z` or
/// `https://snapshot.ubuntu.com/ubuntu/20250601T000000Z`, or a plain mirror that still has the
/// files (`https://deb.debian.org/debian`, `https://archive.debian.org/debian`).
///
/// URL pattern: `{base}/pool/main/l/{source}/` and `{base}/pool/updates/main/l/{source}/` (the
/// security archive's layout) are read as HTML directory listings, and the header packages of
/// the release are picked by name with one shared Debian version:
/// `linux-headers-{release}_{ver}_{arch}.deb`, the ABI's common part
/// (`linux-headers-{abi}-common[-rt]_{ver}_all.deb`, Ubuntu `linux-headers-{abi}_{ver}_all.deb` /
/// `linux-{flavour}-headers-{abi}_{ver}_all.deb`) and `linux-kbuild-{major.minor|abi}_*_{arch}.deb`
/// (the same version if present, else the newest). They are downloaded from the same directory
/// and installed like explicit URLs (the compiler comes from the build root's toolchain).
#[derive(Debug, Clone)]
pub struct SnapshotSource {
    bases: Vec<String>,
}

impl SnapshotSource {
    pub fn new(bases: Vec<String>) -> SnapshotSource {
        SnapshotSource { bases }
    }
}

/// The last path segment of every `href="..."` in an HTML page, raw (still percent-encoded).
pub(crate) fn listing_hrefs(html: &str) -> Vec<String> {
    let mut hrefs = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("href=") {
        rest = &rest[start + 5..];
        let quote = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => continue,
        };
        rest = &rest[1..];
        let Some(end) = rest.find(quote) else { break };
        let href = &rest[..end];
        rest = &rest[end..];
        let last = href
            .split(['?', '#'])
            .next()
            .unwrap_or(href)
            .rsplit('/')
            .next()
            .unwrap_or_default();
        if !last.is_empty() {
            hrefs.push(last.to_owned());
        }
    }
    hrefs
}

/// Picks the header packages of `release` from a pool directory's file names (raw hrefs).
/// Returns the raw hrefs to download.
pub(crate) fn select_header_debs(
    hrefs: &[String],
    release: &str,
    debian_arch: &str,
) -> Option<Vec<String>> {
    let (abi, flavor) = debian_abi_and_flavor(release)?;
    let decoded: Vec<(String, &String)> = hrefs.iter().map(|h| (percent_decode(h), h)).collect();
    let parse = |name: &str| -> Option<(String, String, String)> {
        let stem = name.strip_suffix(".deb")?;
        let mut parts = stem.split('_');
        let (package, version, arch) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some((package.to_owned(), version.to_owned(), arch.to_owned()))
    };
    let arch_package = format!("linux-headers-{release}");
    // The newest upload of the arch package (in dpkg's order, so `6.1.170-3` beats its backport
    // `6.1.170-3~bpo11+1`) decides the version everything else must have.
    let version = decoded
        .iter()
        .filter_map(|(name, _)| parse(name))
        .filter(|(p, _, a)| *p == arch_package && a == debian_arch)
        .map(|(_, v, _)| v)
        .max_by(|a, b| dpkg_cmp(a, b))?;
    let flavor_base = flavor.split('-').next().unwrap_or(&flavor);
    let mut wanted_shared = vec![
        format!("linux-headers-{abi}-common"),
        format!("linux-headers-{abi}"),
        format!("linux-{flavor_base}-headers-{abi}"),
    ];
    if flavor.starts_with("rt-") {
        wanted_shared.push(format!("linux-headers-{abi}-common-rt"));
    }
    let mut picked = Vec::new();
    for (name, raw) in &decoded {
        let Some((package, ver, arch)) = parse(name) else {
            continue;
        };
        let wanted = ver == version
            && ((package == arch_package && arch == debian_arch)
                || (wanted_shared.contains(&package) && arch == "all"));
        if wanted && !picked.contains(*raw) {
            picked.push((*raw).clone());
        }
    }
    // The host tools: `linux-kbuild-<major.minor>` (bookworm and older) or `linux-kbuild-<abi>`
    // (trixie). One source upload builds them with the headers, but a mirror may only keep a
    // newer upload of the shared `linux-kbuild-<major.minor>`, which works as well (the headers
    // depend on it with `>=`), so the same version is preferred and the newest taken otherwise.
    let major_minor: String = release.split('.').take(2).collect::<Vec<_>>().join(".");
    let kbuild_names = [
        format!("linux-kbuild-{major_minor}"),
        format!("linux-kbuild-{abi}"),
    ];
    let kbuilds: Vec<(String, &String)> = decoded
        .iter()
        .filter_map(|(name, raw)| {
            let (package, ver, arch) = parse(name)?;
            (kbuild_names.contains(&package) && arch == debian_arch).then_some((ver, *raw))
        })
        .collect();
    let kbuild = kbuilds
        .iter()
        .find(|(ver, _)| *ver == version)
        .or_else(|| kbuilds.iter().max_by(|a, b| dpkg_cmp(&a.0, &b.0)));
    if let Some((_, raw)) = kbuild {
        picked.push((*raw).clone());
    }
    Some(picked)
}

impl HeaderSource for SnapshotSource {
    fn describe(&self) -> String {
        format!("snapshot archives ({} configured)", self.bases.len())
    }

    fn install(&self, ctx: &HeaderContext<'_>) -> Result<Vec<HeaderPackage>, SourceFailure> {
        if self.bases.is_empty() {
            return Err(SourceFailure::Skipped(
                "no --snapshot-base given".to_owned(),
            ));
        }
        let release = ctx.identity.kernel_release().as_str();
        let debian_arch = ctx.identity.arch().debian_name();
        let Some((_, flavor)) = debian_abi_and_flavor(release) else {
            return Err(SourceFailure::Failed(format!(
                "cannot split {release} into ABI and flavour to derive package names"
            )));
        };
        let source = source_package(ctx.identity.distribution().as_str(), &flavor);
        let mut reasons = Vec::new();
        for base in &self.bases {
            for pool in ["pool/main", "pool/updates/main"] {
                let dir = format!("{}/{pool}/l/{source}/", base.trim_end_matches('/'));
                let html = match ctx.http.get_text(&dir) {
                    Ok(html) => html,
                    Err(error) => {
                        reasons.push(format!("listing {error}"));
                        continue;
                    }
                };
                let hrefs = listing_hrefs(&html);
                let Some(picked) = select_header_debs(&hrefs, release, debian_arch) else {
                    reasons.push(format!(
                        "{dir}: no linux-headers-{release} for {debian_arch}"
                    ));
                    continue;
                };
                tracing::info!(dir = %dir, packages = ?picked, "snapshot: found header packages");
                let urls: Vec<String> = picked.iter().map(|href| format!("{dir}{href}")).collect();
                match download_all(ctx, &urls, "deb").and_then(|files| install_debs(ctx, files)) {
                    Ok(installed) => return Ok(installed),
                    Err(failure) => reasons.push(format!("{dir}: {}", failure.reason())),
                }
            }
        }
        Err(SourceFailure::Failed(reasons.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backports_archive_is_the_suite_line_of_the_root_sources() {
        let sources = "deb http://deb.debian.org/debian bookworm main\n\
                       deb http://deb.debian.org/debian bookworm-updates main\n\
                       deb http://deb.debian.org/debian-security bookworm-security main\n";
        assert_eq!(
            archive_for_suite(sources, "bookworm").as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(
            archive_for_suite(
                "deb [arch=arm64 signed-by=/k.gpg] http://m.example/debian trixie main\n",
                "trixie"
            )
            .as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(archive_for_suite(sources, "trixie"), None);
        assert_eq!(
            archive_for_suite("deb-src http://x bookworm main", "bookworm"),
            None
        );
        assert_eq!(archive_for_suite("deb [unterminated", "bookworm"), None);
    }

    #[test]
    fn releases_split_into_abi_and_flavor() {
        let split = |r: &str| debian_abi_and_flavor(r);
        assert_eq!(
            split("6.1.0-47-cloud-amd64"),
            Some(("6.1.0-47".into(), "cloud-amd64".into()))
        );
        assert_eq!(
            split("6.12.48+deb13-amd64"),
            Some(("6.12.48+deb13".into(), "amd64".into()))
        );
        assert_eq!(
            split("6.8.0-52-generic"),
            Some(("6.8.0-52".into(), "generic".into()))
        );
        assert_eq!(split("6.1.0"), None);
        assert_eq!(source_package("ubuntu", "gcp"), "linux-gcp");
        assert_eq!(source_package("ubuntu", "generic-64k"), "linux");
        assert_eq!(source_package("debian", "cloud-amd64"), "linux");
    }

    #[test]
    fn shared_header_packages_install_first() {
        let mut names = [
            "linux-headers-6.1.0-47-amd64_6.1.170-3_amd64.deb",
            "linux-kbuild-6.1_6.1.170-3_amd64.deb",
            "linux-headers-6.1.0-47-common_6.1.170-3_all.deb",
        ];
        names.sort_by_key(|n| install_rank(n));
        assert_eq!(names[2], "linux-headers-6.1.0-47-amd64_6.1.170-3_amd64.deb");
        assert_eq!(
            install_rank("linux-headers-6.8.0-52_6.8.0-52.53_all.deb"),
            0
        );
        assert_eq!(install_rank("linux-gcp-headers-6.8.0-1021_x_all.deb"), 0);
        assert_eq!(
            install_rank("linux-headers-6.8.0-52-generic_x_amd64.deb"),
            1
        );
    }

    #[test]
    fn snapshot_listing_selects_one_consistent_version() {
        // Shaped like snapshot.debian.org's pool listing (relative hrefs, '+' percent-encoded).
        let html = r#"<html><body><table>
<tr><td><a href="../">..</a></td></tr>
<tr><td><a href="linux-headers-6.1.0-47-amd64_6.1.170-2_amd64.deb">x</a></td></tr>
<tr><td><a href="linux-headers-6.1.0-47-amd64_6.1.170-3_amd64.deb">x</a></td></tr>
<tr><td><a href="linux-headers-6.1.0-47-amd64_6.1.170-3_arm64.deb">x</a></td></tr>
<tr><td><a href="linux-headers-6.1.0-47-cloud-amd64_6.1.170-3_amd64.deb">x</a></td></tr>
<tr><td><a href="linux-headers-6.1.0-47-common_6.1.170-3_all.deb">x</a></td></tr>
<tr><td><a href="linux-headers-6.1.0-47-common_6.1.170-2_all.deb">x</a></td></tr>
<tr><td><a href='linux-kbuild-6.1_6.1.170-3_amd64.deb'>x</a></td></tr>
<tr><td><a href='linux-kbuild-6.1_6.1.192-2_amd64.deb'>x</a></td></tr>
<tr><td><a href='linux-kbuild-6.12.48+deb13_6.12.48-1_amd64.deb'>x</a></td></tr>
<tr><td><a href='linux-kbuild-6.12.47+deb13_6.12.47-1_amd64.deb'>x</a></td></tr>
<tr><td><a href="linux-compiler-gcc-12-x86_6.1.170-3_amd64.deb">x</a></td></tr>
<tr><td><a href="linux-headers-6.12.48%2Bdeb13-amd64_6.12.48-1_amd64.deb">x</a></td></tr>
</table></body></html>"#;
        let hrefs = listing_hrefs(html);
        let picked = select_header_debs(&hrefs, "6.1.0-47-amd64", "amd64").expect("found");
        assert_eq!(
            picked,
            vec![
                "linux-headers-6.1.0-47-amd64_6.1.170-3_amd64.deb",
                "linux-headers-6.1.0-47-common_6.1.170-3_all.deb",
                "linux-kbuild-6.1_6.1.170-3_amd64.deb",
            ]
        );
        let trixie = select_header_debs(&hrefs, "6.12.48+deb13-amd64", "amd64").expect("found");
        assert_eq!(
            trixie,
            vec![
                "linux-headers-6.12.48%2Bdeb13-amd64_6.12.48-1_amd64.deb",
                "linux-kbuild-6.12.48+deb13_6.12.48-1_amd64.deb",
            ]
        );
        // Without the same upload of the shared kbuild, the newest one is taken.
        let only_newer: Vec<String> = hrefs
            .iter()
            .filter(|h| !h.contains("kbuild-6.1_6.1.170-3"))
            .cloned()
            .collect();
        let picked = select_header_debs(&only_newer, "6.1.0-47-amd64", "amd64").expect("found");
        assert_eq!(
            picked.last().map(String::as_str),
            Some("linux-kbuild-6.1_6.1.192-2_amd64.deb")
        );
        assert_eq!(select_header_debs(&hrefs, "6.1.0-99-amd64", "amd64"), None);
        assert!(dpkg_cmp("6.1.170-10", "6.1.170-3").is_gt());
    }

    #[test]
    fn the_upload_wins_over_its_backport() {
        assert!(dpkg_cmp("6.1.170-3", "6.1.170-3~bpo11+1").is_gt());
        // One pool directory holding an upload and its backport build under the same ABI name
        // (percent-encoded as snapshot listings do): the upload is the newest, with its own
        // shared headers and kbuild.
        let hrefs: Vec<String> = [
            "linux-headers-6.1.0-47-amd64_6.1.170-3~bpo11%2B1_amd64.deb",
            "linux-headers-6.1.0-47-amd64_6.1.170-3_amd64.deb",
            "linux-headers-6.1.0-47-common_6.1.170-3~bpo11%2B1_all.deb",
            "linux-headers-6.1.0-47-common_6.1.170-3_all.deb",
            "linux-kbuild-6.1_6.1.170-3~bpo11%2B1_amd64.deb",
            "linux-kbuild-6.1_6.1.170-3_amd64.deb",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(
            select_header_debs(&hrefs, "6.1.0-47-amd64", "amd64").expect("found"),
            vec![
                "linux-headers-6.1.0-47-amd64_6.1.170-3_amd64.deb",
                "linux-headers-6.1.0-47-common_6.1.170-3_all.deb",
                "linux-kbuild-6.1_6.1.170-3_amd64.deb",
            ]
        );
        // Without the upload's kbuild, the newest one left is the backport's.
        let without: Vec<String> = hrefs
            .iter()
            .filter(|h| *h != "linux-kbuild-6.1_6.1.170-3_amd64.deb")
            .cloned()
            .collect();
        assert_eq!(
            select_header_debs(&without, "6.1.0-47-amd64", "amd64")
                .expect("found")
                .last()
                .map(String::as_str),
            Some("linux-kbuild-6.1_6.1.170-3~bpo11%2B1_amd64.deb")
        );
    }
}
