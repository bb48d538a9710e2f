//! The apt source's direct path: apt decides *what* a kernel's headers need, the builder does the
//! rest itself, because apt-get's own download-then-dpkg cycle cost more than everything else
//! in a cold build (`cargo xtask bench build`).
//!
//! 1. Plan: `apt-get install --print-uris` of the header package against the root's lists, with
//!    an empty archive directory so every file is listed: apt's own solver picks the set, and
//!    apt gives each file's URI and, with `Acquire::ForceHash=SHA256`, the index's SHA-256 (the
//!    same lines `apt-get download --print-uris` prints, whose values the build facts have always
//!    recorded). A kernel image in the set (Debian 13's headers depend on their image) is
//!    planned away: the plan is made again with a copy of dpkg's status that says the image is
//!    installed, so apt resolves everything else the headers depend on and nothing only the image
//!    needs (its initramfs tooling, systemd, udev). A module build never reads the image.
//! 2. Fetch: every planned file in parallel over HTTP. A file is used only when it hashes to its
//!    index SHA-256; it then goes to apt's archive cache under apt's own file name, where the
//!    executor's header cache takes it from.
//! 3. Extract ([`extract`]): each file's data with `dpkg-deb --fsys-tarfile | tar`, without
//!    dpkg's database and maintainer scripts. The header packages' scripts only run the kernel's
//!    header hooks (DKMS), which build roots do not have; the one thing a library in the set needs
//!    (its `ldconfig` trigger) is run after. The kbuild tree is the same files either way.
//!
//! Anything this path cannot do (a URI scheme other than HTTP, an index without SHA-256, a failed
//! download) makes the apt source fall back to `apt-get install`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use integrity::HeaderPackage;

use crate::facts::{self, APT_ARCHIVES, AptUri};
use crate::system::CommandLine;

use super::{HeaderContext, SourceFailure, percent_decode};

/// Downloads running at once: enough to fill a link with a few small files beside the big one.
const PARALLEL_DOWNLOADS: usize = 4;
/// Extractions running at once: each is decompression plus writing, about one core.
const PARALLEL_EXTRACTIONS: usize = 2;

/// One file of apt's plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Planned {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub uri: String,
    /// The index's SHA-256 of the file.
    pub sha256: String,
}

impl Planned {
    /// The name apt gives the file in its archive cache.
    fn file_name(&self) -> String {
        facts::apt_archive_file_name(&self.name, &self.version, &self.arch)
    }
}

/// Whether `package` is the kernel image of `release` (signed or unsigned): never needed to
/// build modules against the release's headers.
pub(crate) fn is_kernel_image(package: &str, release: &str) -> bool {
    package
        .strip_prefix("linux-image-")
        .and_then(|rest| rest.strip_prefix(release))
        .is_some_and(|suffix| suffix.is_empty() || suffix == "-unsigned")
}

/// Reads `apt-get install --print-uris` output: the files apt would fetch, in its order.
pub(crate) fn parse_plan(print_uris: &str) -> Result<Vec<Planned>, String> {
    facts::parse_print_uris(print_uris)
        .into_iter()
        .map(
            |AptUri {
                 uri,
                 file_name,
                 sha256,
             }| {
                let stem = file_name
                    .strip_suffix(".deb")
                    .ok_or_else(|| format!("apt plans {file_name}, not a .deb"))?;
                let parts: Vec<&str> = stem.split('_').collect();
                let sha256 =
                    sha256.ok_or_else(|| format!("apt's plan gives no SHA-256 for {file_name}"))?;
                let [name, version, arch] = parts[..] else {
                    return Err(format!(
                        "apt plans {file_name}, not <name>_<version>_<arch>.deb"
                    ));
                };
                Ok(Planned {
                    name: percent_decode(name),
                    version: percent_decode(version),
                    arch: percent_decode(arch),
                    uri,
                    sha256,
                })
            },
        )
        .collect()
}

/// The stanza that makes apt's solver take `image` as installed (the plan's second pass).
pub(crate) fn installed_stanza(image: &Planned) -> String {
    format!(
        "Package: {}\nStatus: install ok installed\nArchitecture: {}\nVersion: {}\n\
         Maintainer: driver-builder\nDescription: planned away: module builds never read the kernel image\n\n",
        image.name, image.arch, image.version
    )
}

/// `apt-get install --print-uris` of `package`, with `status` as dpkg's status file when given.
fn plan_once(
    ctx: &HeaderContext<'_>,
    package: &str,
    status: Option<&Path>,
) -> Result<Vec<Planned>, SourceFailure> {
    // Empty, so apt lists every file rather than only those its own cache lacks.
    let archives = ctx.downloads.guest.join("plan-archives");
    let host = ctx.system.host_path(&archives.join("partial"));
    std::fs::create_dir_all(&host)
        .map_err(|e| SourceFailure::Failed(format!("creating {}: {e}", host.display())))?;
    let mut args = vec![
        "install".to_owned(),
        "--print-uris".to_owned(),
        "-qq".to_owned(),
        "-y".to_owned(),
        "--no-install-recommends".to_owned(),
        "-o".to_owned(),
        format!("Dir::Cache::Archives={}", archives.display()),
        "-o".to_owned(),
        "Acquire::ForceHash=SHA256".to_owned(),
    ];
    if let Some(status) = status {
        args.push("-o".to_owned());
        args.push(format!("Dir::State::status={}", status.display()));
    }
    args.push(package.to_owned());
    let command = CommandLine::new("apt-get", args).env("DEBIAN_FRONTEND", "noninteractive");
    tracing::info!(command = %command, "planning");
    let output = ctx
        .system
        .run(&command)
        .map_err(|e| SourceFailure::Failed(e.to_string()))?;
    if !output.success() {
        return Err(SourceFailure::Failed(format!(
            "`{command}`: {}",
            output.describe_failure()
        )));
    }
    parse_plan(&output.stdout).map_err(SourceFailure::Failed)
}

/// apt's plan for installing `package`, without the release's kernel image.
fn plan(ctx: &HeaderContext<'_>, package: &str) -> Result<Vec<Planned>, SourceFailure> {
    let release = ctx.identity.kernel_release().as_str();
    let first = plan_once(ctx, package, None)?;
    let images: Vec<&Planned> = first
        .iter()
        .filter(|p| is_kernel_image(&p.name, release))
        .collect();
    if images.is_empty() {
        return Ok(first);
    }
    tracing::info!(
        image = %images.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
        "the headers depend on their kernel image, which no module build reads: planning again with it taken as installed"
    );
    let status = ctx.downloads.guest.join("plan-status");
    let mut text = std::fs::read_to_string(ctx.system.host_path(Path::new(facts::DPKG_STATUS)))
        .map_err(|e| SourceFailure::Failed(format!("reading {}: {e}", facts::DPKG_STATUS)))?;
    if !text.ends_with("\n\n") {
        text.push('\n');
    }
    for image in images {
        text.push_str(&installed_stanza(image));
    }
    let host = ctx.system.host_path(&status);
    std::fs::write(&host, text)
        .map_err(|e| SourceFailure::Failed(format!("writing {}: {e}", host.display())))?;
    let second = plan_once(ctx, package, Some(&status))?;
    if second.iter().any(|p| is_kernel_image(&p.name, release)) {
        return Err(SourceFailure::Failed(
            "apt still plans the kernel image with it taken as installed".to_owned(),
        ));
    }
    Ok(second)
}

/// Whether a planned file name may be used as a path component.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+~-%".contains(c))
}

/// Runs `work` on every item with at most `parallel` threads; results in item order, `None` for
/// an item whose worker died.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    parallel: usize,
    work: impl Fn(&T) -> R + Sync,
) -> Vec<Option<R>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..parallel.min(items.len()) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(index) else { break };
                    let result = work(item);
                    if let Ok(mut slots) = results.lock() {
                        slots[index] = Some(result);
                    }
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|_| (0..items.len()).map(|_| None).collect())
}

/// Downloads the planned files into apt's partial directory, checks each against the index's
/// SHA-256 and moves it into apt's archive cache; the facts of each, in plan order.
fn fetch(
    ctx: &HeaderContext<'_>,
    planned: &[Planned],
) -> Result<Vec<(HeaderPackage, PathBuf)>, String> {
    for p in planned {
        let scheme_ok = p.uri.starts_with("http://") || p.uri.starts_with("https://");
        if !scheme_ok || !plain_file_name(&p.file_name()) {
            return Err(format!(
                "{} ({}): not an HTTP URI or not a plain file name",
                p.file_name(),
                p.uri
            ));
        }
    }
    let archives = Path::new(APT_ARCHIVES);
    let partial = ctx.system.host_path(&archives.join("partial"));
    std::fs::create_dir_all(&partial)
        .map_err(|e| format!("creating {}: {e}", partial.display()))?;
    let downloads = parallel_map(planned, PARALLEL_DOWNLOADS, |p| {
        let dest = partial.join(p.file_name());
        tracing::info!(url = %p.uri, "downloading");
        ctx.http
            .download(&p.uri, &dest)
            .map(|bytes| {
                tracing::info!(url = %p.uri, bytes, "downloaded");
                dest
            })
            .map_err(|e| format!("download {e}"))
    });
    let mut facts = Vec::new();
    for (p, downloaded) in planned.iter().zip(downloads) {
        let downloaded = downloaded.ok_or_else(|| format!("downloading {} failed", p.uri))??;
        let file_name = p.file_name();
        let sha256 = facts::sha256_hex(&downloaded)?;
        if sha256 != p.sha256 {
            return Err(format!(
                "{} hashes to {sha256}, not the index's SHA-256 {}",
                p.uri, p.sha256
            ));
        }
        let guest = archives.join(&file_name);
        let host = ctx.system.host_path(&guest);
        std::fs::rename(&downloaded, &host)
            .map_err(|e| format!("moving {} to {}: {e}", downloaded.display(), host.display()))?;
        facts.push((
            HeaderPackage {
                name: p.name.clone(),
                version: p.version.clone(),
                file_name,
                uri: Some(p.uri.clone()),
                sha256,
            },
            guest,
        ));
    }
    Ok(facts)
}

/// Plans, fetches and extracts `package` (see the module documentation).
pub(crate) fn install(
    ctx: &HeaderContext<'_>,
    package: &str,
) -> Result<Vec<HeaderPackage>, SourceFailure> {
    let planned = plan(ctx, package)?;
    if planned.is_empty() {
        // Already installed: the chain records the packages owning the tree.
        return Ok(Vec::new());
    }
    let files = fetch(ctx, &planned).map_err(SourceFailure::Failed)?;
    extract(ctx, &files)?;
    Ok(files.into_iter().map(|(package, _)| package).collect())
}

/// Extracts package files (guest paths, each already checked against its digest) into the root
/// with `dpkg-deb --fsys-tarfile | tar`, the biggest first, then runs `ldconfig` for any library
/// among them. Directory symlinks of the root (merged `/usr`) and the metadata of existing
/// directories are kept.
pub(crate) fn extract(
    ctx: &HeaderContext<'_>,
    files: &[(HeaderPackage, PathBuf)],
) -> Result<(), SourceFailure> {
    let mut order: Vec<(u64, &Path)> = files
        .iter()
        .map(|(_, guest)| {
            let size = std::fs::metadata(ctx.system.host_path(guest))
                .map(|m| m.len())
                .unwrap_or(0);
            (size, guest.as_path())
        })
        .collect();
    order.sort_by_key(|(size, _)| std::cmp::Reverse(*size));
    let results = parallel_map(&order, PARALLEL_EXTRACTIONS, |(_, guest)| {
        let command = CommandLine::new(
            "/bin/bash",
            [
                "-o".to_owned(),
                "pipefail".to_owned(),
                "-c".to_owned(),
                "dpkg-deb --fsys-tarfile \"$1\" | tar -x --keep-directory-symlink --no-overwrite-dir -C /"
                    .to_owned(),
                "extract".to_owned(),
                guest.display().to_string(),
            ],
        );
        super::run_step(ctx.system, &command)
    });
    for result in results {
        result.ok_or_else(|| SourceFailure::Failed("an extraction failed".to_owned()))??;
    }
    match ctx
        .system
        .run(&CommandLine::new("ldconfig", Vec::<String>::new()))
    {
        Ok(output) if output.success() => {}
        Ok(output) => tracing::warn!(reason = %output.describe_failure(), "ldconfig failed"),
        Err(error) => tracing::warn!(%error, "ldconfig did not run"),
    }
    tracing::info!(
        packages = files.len(),
        "extracted the header packages (dpkg-deb | tar): no maintainer scripts, not in dpkg's database"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_read_from_apts_print_uris() {
        let text = "'http://deb.debian.org/debian/pool/main/libb/libbpf/libbpf1_1.5.0-3_amd64.deb' libbpf1_1%3a1.5.0-3_amd64.deb 168832 SHA256:04C96EAD\n\
                    'http://deb.debian.org/debian-security/pool/updates/main/l/linux/linux-headers-6.12.118%2bdeb13-common_6.12.118-1_all.deb' linux-headers-6.12.118+deb13-common_6.12.118-1_all.deb 11416240 SHA256:8228fa09\n";
        let plan = parse_plan(text).expect("plan");
        assert_eq!(
            plan[0],
            Planned {
                name: "libbpf1".into(),
                version: "1:1.5.0-3".into(),
                arch: "amd64".into(),
                uri: "http://deb.debian.org/debian/pool/main/libb/libbpf/libbpf1_1.5.0-3_amd64.deb"
                    .into(),
                sha256: "04c96ead".into(),
            }
        );
        assert_eq!(plan[0].file_name(), "libbpf1_1%3a1.5.0-3_amd64.deb");
        assert_eq!(plan[1].name, "linux-headers-6.12.118+deb13-common");
        assert_eq!(
            plan[1].file_name(),
            "linux-headers-6.12.118+deb13-common_6.12.118-1_all.deb"
        );
        assert!(parse_plan("'http://x/a.udeb' a.udeb 1 SHA256:aa\n").is_err());
        assert!(parse_plan("'http://x/a_b.deb' a_b.deb 1 SHA256:aa\n").is_err());
        // Without Acquire::ForceHash, apt's plan names other hashes or none: not usable.
        assert!(parse_plan("'http://x/a_1_all.deb' a_1_all.deb 1 MD5Sum:aa\n").is_err());
        assert!(parse_plan("'http://x/a_1_all.deb' a_1_all.deb 1 \n").is_err());
        assert_eq!(parse_plan("Reading package lists...\n"), Ok(Vec::new()));
    }

    #[test]
    fn only_the_releases_own_image_is_planned_away() {
        let release = "6.12.118+deb13-amd64";
        assert!(is_kernel_image("linux-image-6.12.118+deb13-amd64", release));
        assert!(is_kernel_image(
            "linux-image-6.12.118+deb13-amd64-unsigned",
            release
        ));
        for other in [
            "linux-image-6.12.118+deb13-amd64-dbg",
            "linux-image-6.12.118+deb13-cloud-amd64",
            "linux-image-amd64",
            "linux-headers-6.12.118+deb13-amd64",
        ] {
            assert!(!is_kernel_image(other, release), "{other}");
        }
        let image = Planned {
            name: "linux-image-6.12.118+deb13-amd64".into(),
            version: "6.12.118-1".into(),
            arch: "amd64".into(),
            uri: String::new(),
            sha256: String::new(),
        };
        let stanza = installed_stanza(&image);
        let inventory = facts::parse_dpkg_status(&stanza);
        assert_eq!(
            inventory.get(&(image.name.clone(), "amd64".to_owned())),
            Some(&image.version)
        );
        assert!(stanza.ends_with("\n\n"));
    }

    #[test]
    fn file_names_stay_one_path_component() {
        assert!(plain_file_name("libbpf1_1%3a1.5.0-3_amd64.deb"));
        assert!(plain_file_name(
            "linux-headers-6.12.118+deb13-common_6.12.118-1_all.deb"
        ));
        for bad in ["", ".deb", "../x.deb", "a/b.deb", "a b.deb"] {
            assert!(!plain_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn parallel_map_keeps_the_item_order() {
        let items: Vec<u64> = (0..20).collect();
        let doubled = parallel_map(&items, 3, |n| n * 2);
        assert_eq!(
            doubled,
            items.iter().map(|n| Some(n * 2)).collect::<Vec<_>>()
        );
        assert!(parallel_map(&Vec::<u64>::new(), 3, |n| *n).is_empty());
    }
}
