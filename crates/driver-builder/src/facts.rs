//! What the build observed inside its root, for provenance ([`integrity::BuildFacts`], written as
//! `<out>/build-facts.json`): every kernel header package installed for the build with the SHA-256
//! of the package file as downloaded, and the compiler.
//!
//! Header packages are recorded by what installed them:
//! - apt (Debian/Ubuntu): the packages whose installed version changed in dpkg's status file
//!   between before and after the install, in dpkg's log order; each file is taken from apt's
//!   archive cache (`/var/cache/apt/archives`, kept by `APT::Keep-Downloaded-Packages`). apt checks
//!   every cached file against the archive index before using it, so the file there is the one
//!   installed; when a configuration deletes downloads anyway (Docker's `docker-clean`), the same
//!   version is fetched again with `apt-get download`, which checks it against the same index. The
//!   index's own SHA-256 (`apt-get download --print-uris`) must agree with the file's, and gives the
//!   URI.
//! - apt's plan fetched by the builder itself (`headers::direct`, the apt source's usual path):
//!   each planned file with the SHA-256 and URI `apt-get download --print-uris` gives for it from
//!   the index, which the downloaded file must hash to before it is used.
//! - dnf (RPM distributions): the same with `rpm -qa` before and after, files from dnf's package
//!   cache (`keepcache=1`), else `dnf download`.
//! - files the builder downloaded itself (explicit URLs, snapshot archives, Koji): those files, with
//!   their URL, and name and version read from the package.
//!
//! Headers that were already installed in the root are recorded too (the package owning the kbuild
//! tree), with a digest when the file can be found or fetched as above; otherwise they are left out
//! with a warning rather than given a digest that is not the installed file's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use integrity::{CompilerFacts, HeaderPackage};

use crate::system::{CommandLine, ScratchDir, System};

/// apt's download directory inside a Debian root.
pub const APT_ARCHIVES: &str = "/var/cache/apt/archives";
/// dpkg's status database.
pub const DPKG_STATUS: &str = "/var/lib/dpkg/status";
/// dpkg's log, read for the order packages were installed in.
pub const DPKG_LOG: &str = "/var/log/dpkg.log";
/// Where dnf (4 and 5) and yum keep downloaded packages when `keepcache` is on.
pub const RPM_CACHE_DIRS: [&str; 3] = ["/var/cache/dnf", "/var/cache/libdnf5", "/var/cache/yum"];

/// SHA-256 of a file, 64 lowercase hex digits.
pub fn sha256_hex(path: &Path) -> Result<String, String> {
    integrity::sha256_file(path)
        .map(|digest| digest.to_hex())
        .map_err(|error| format!("hashing {}: {error}", path.display()))
}

/// One installed binary package: (name, architecture) -> version.
pub type Inventory = BTreeMap<(String, String), String>;

/// Installed packages in a dpkg status file (`Status: ... installed`).
pub fn parse_dpkg_status(status: &str) -> Inventory {
    let mut inventory = Inventory::new();
    for paragraph in status.split("\n\n") {
        let field = |name: &str| driver_package::control_field(paragraph, name);
        let installed = field("Status").is_some_and(|s| s.ends_with(" installed"));
        if let (true, Some(package), Some(version), Some(arch)) = (
            installed,
            field("Package"),
            field("Version"),
            field("Architecture"),
        ) {
            inventory.insert((package, arch), version);
        }
    }
    inventory
}

/// The dpkg inventory of the root, and where its log ended: taken before an install.
#[derive(Debug, Clone, Default)]
pub struct DpkgSnapshot {
    pub inventory: Inventory,
    pub log_len: u64,
}

impl DpkgSnapshot {
    pub fn take(system: &System) -> DpkgSnapshot {
        let status =
            std::fs::read_to_string(system.host_path(Path::new(DPKG_STATUS))).unwrap_or_default();
        let log_len = std::fs::metadata(system.host_path(Path::new(DPKG_LOG)))
            .map(|m| m.len())
            .unwrap_or(0);
        DpkgSnapshot {
            inventory: parse_dpkg_status(&status),
            log_len,
        }
    }
}

/// The packages whose installed version differs between `before` and `after`, as
/// (name, architecture, version), ordered by their first `install`/`upgrade` line in the dpkg log
/// written since `before` (packages the log does not name last, by name).
pub fn changed_packages(
    before: &Inventory,
    after: &Inventory,
    log_since_before: &str,
) -> Vec<(String, String, String)> {
    let mut changed: Vec<(String, String, String)> = after
        .iter()
        .filter(|(key, version)| before.get(*key) != Some(*version))
        .map(|((name, arch), version)| (name.clone(), arch.clone(), version.clone()))
        .collect();
    // `<date> <time> install <name>:<arch> <old version> <new version>`
    let order: Vec<(String, String)> = log_since_before
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().skip(2);
            let action = words.next()?;
            if action != "install" && action != "upgrade" {
                return None;
            }
            let (name, arch) = words.next()?.split_once(':')?;
            Some((name.to_owned(), arch.to_owned()))
        })
        .collect();
    changed.sort_by_key(|(name, arch, _)| {
        let position = order
            .iter()
            .position(|(n, a)| n == name && a == arch)
            .unwrap_or(usize::MAX);
        (position, name.clone(), arch.clone())
    });
    changed
}

/// apt's `QuoteString`: the given characters, `%`, space, control and non-ASCII bytes become
/// `%xx` (lowercase hex).
fn apt_quote(text: &str, bad: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if bad.as_bytes().contains(&byte) || byte == b'%' || byte <= 0x20 || byte >= 0x7f {
            out.push_str(&format!("%{byte:02x}"));
        } else {
            out.push(byte as char);
        }
    }
    out
}

/// The file name apt gives a downloaded package: `<name>_<version>_<arch>.deb`, with an epoch's
/// `:` as `%3a` (`libbpf1_1%3a1.1.2-0+deb12u1_amd64.deb`).
pub fn apt_archive_file_name(name: &str, version: &str, arch: &str) -> String {
    format!(
        "{}_{}_{}.deb",
        apt_quote(name, "_:"),
        apt_quote(version, "_:"),
        apt_quote(arch, "_:.")
    )
}

/// One line of `apt-get download --print-uris`: `'<uri>' <file name> <size> SHA256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptUri {
    pub uri: String,
    pub file_name: String,
    pub sha256: Option<String>,
}

pub fn parse_print_uris(text: &str) -> Vec<AptUri> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix('\'')?;
            let (uri, rest) = rest.split_once('\'')?;
            let mut words = rest.split_whitespace();
            let file_name = words.next()?.to_owned();
            let sha256 = words
                .find_map(|w| w.strip_prefix("SHA256:"))
                .map(str::to_ascii_lowercase);
            Some(AptUri {
                uri: uri.to_owned(),
                file_name,
                sha256,
            })
        })
        .collect()
}

/// `name=version`, arch-qualified for foreign architectures, as `apt-get download` takes it.
pub(crate) fn apt_spec(name: &str, arch: &str, version: &str, native_arch: &str) -> String {
    if arch == "all" || arch == native_arch {
        format!("{name}={version}")
    } else {
        format!("{name}:{arch}={version}")
    }
}

/// Header package facts for Debian packages installed from apt's archives (see the module
/// documentation). `packages` are (name, architecture, version). Packages whose file can be neither
/// found nor fetched again are left out with a warning; a file whose SHA-256 disagrees with the
/// archive index is an error.
pub fn apt_package_facts(
    system: &System,
    downloads: &ScratchDir,
    native_arch: &str,
    packages: &[(String, String, String)],
) -> Result<Vec<HeaderPackage>, String> {
    if packages.is_empty() {
        return Ok(Vec::new());
    }
    let specs: Vec<String> = packages
        .iter()
        .map(|(name, arch, version)| apt_spec(name, arch, version, native_arch))
        .collect();
    let print = CommandLine::new(
        "apt-get",
        ["download".to_owned(), "--print-uris".to_owned()]
            .into_iter()
            .chain(specs.iter().cloned()),
    );
    let uris = match system.run(&print) {
        Ok(output) if output.success() => parse_print_uris(&output.stdout),
        Ok(output) => {
            tracing::info!(reason = %output.describe_failure(), "apt-get download --print-uris failed: header URIs unknown");
            Vec::new()
        }
        Err(error) => {
            tracing::info!(%error, "apt-get download --print-uris did not run: header URIs unknown");
            Vec::new()
        }
    };
    let mut facts = Vec::new();
    let mut missing = Vec::new();
    for (index, (name, arch, version)) in packages.iter().enumerate() {
        let file_name = apt_archive_file_name(name, version, arch);
        let known = uris.iter().find(|u| {
            u.file_name == file_name
                || package_name_version(&u.file_name)
                    .is_some_and(|(n, v)| n == *name && v == *version)
        });
        let cached = system.host_path(&Path::new(APT_ARCHIVES).join(&file_name));
        let path = if cached.is_file() {
            cached
        } else {
            missing.push(index);
            continue;
        };
        facts.push((index, fact_for(name, version, &file_name, &path, known)?));
    }
    if !missing.is_empty() {
        let wanted: Vec<String> = missing.iter().map(|&i| specs[i].clone()).collect();
        tracing::info!(packages = ?wanted, "not in apt's archive cache: fetching them again with apt-get download");
        let fetch = CommandLine::new(
            "/bin/sh",
            [
                "-c".to_owned(),
                "cd \"$1\" && shift && exec apt-get download \"$@\"".to_owned(),
                "apt-get-download".to_owned(),
                downloads.guest.display().to_string(),
            ]
            .into_iter()
            .chain(wanted.iter().cloned()),
        );
        match system.run(&fetch) {
            Ok(output) if output.success() => {}
            Ok(output) => {
                tracing::warn!(reason = %output.describe_failure(), "apt-get download failed")
            }
            Err(error) => tracing::warn!(%error, "apt-get download did not run"),
        }
        for index in missing {
            let (name, arch, version) = &packages[index];
            let file_name = apt_archive_file_name(name, version, arch);
            let known = uris.iter().find(|u| {
                package_name_version(&u.file_name).is_some_and(|(n, v)| n == *name && v == *version)
            });
            let candidates = [Some(file_name.clone()), known.map(|u| u.file_name.clone())];
            let found = candidates
                .into_iter()
                .flatten()
                .map(|n| (downloads.host.join(&n), n))
                .find(|(path, _)| path.is_file());
            match found {
                Some((path, found_name)) => {
                    facts.push((index, fact_for(name, version, &found_name, &path, known)?))
                }
                None => tracing::warn!(
                    package = %name,
                    version = %version,
                    "the package file is neither in apt's archive cache nor downloadable: \
                     left out of the build facts"
                ),
            }
        }
    }
    facts.sort_by_key(|(index, _)| *index);
    Ok(facts.into_iter().map(|(_, fact)| fact).collect())
}

/// (name, version) of an apt file name `<name>_<quoted version>_<arch>.deb`.
pub(crate) fn package_name_version(file_name: &str) -> Option<(String, String)> {
    let stem = file_name.strip_suffix(".deb")?;
    let mut parts = stem.split('_');
    let (name, version) = (parts.next()?, parts.next()?);
    Some((
        crate::headers::percent_decode(name),
        crate::headers::percent_decode(version),
    ))
}

fn fact_for(
    name: &str,
    version: &str,
    file_name: &str,
    path: &Path,
    known: Option<&AptUri>,
) -> Result<HeaderPackage, String> {
    let sha256 = sha256_hex(path)?;
    if let Some(expected) = known.and_then(|u| u.sha256.as_deref())
        && expected != sha256
    {
        return Err(format!(
            "{}: SHA-256 {sha256} is not the archive index's {expected} for {name} {version}",
            path.display()
        ));
    }
    Ok(HeaderPackage {
        name: name.to_owned(),
        version: version.to_owned(),
        file_name: file_name.to_owned(),
        uri: known.map(|u| u.uri.clone()),
        sha256,
    })
}

/// Facts for package files the builder downloaded itself: name and version from the package,
/// the digest of the file, its URL.
pub fn downloaded_file_facts(files: &[(PathBuf, String)]) -> Result<Vec<HeaderPackage>, String> {
    files
        .iter()
        .map(|(host_path, url)| {
            let metadata = driver_package::read_metadata(host_path)
                .map_err(|error| format!("reading {}: {error}", host_path.display()))?;
            Ok(HeaderPackage {
                name: metadata.name,
                version: metadata.version,
                file_name: host_path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                uri: Some(url.clone()),
                sha256: sha256_hex(host_path)?,
            })
        })
        .collect()
}

/// The RPM inventory of the root (`rpm -qa`): (name, arch) -> `[epoch:]version-release`, plus the
/// package file name dnf downloads it as. None when rpm cannot be asked.
pub fn rpm_inventory(system: &System) -> Option<BTreeMap<(String, String), (String, String)>> {
    let query = CommandLine::new(
        "rpm",
        [
            "-qa",
            "--qf",
            "%{NAME}\\t%{EPOCH}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\n",
        ],
    );
    let output = system.run(&query).ok().filter(|o| o.success())?;
    Some(parse_rpm_query(&output.stdout))
}

/// Lines of `%{NAME}\t%{EPOCH}\t%{VERSION}\t%{RELEASE}\t%{ARCH}`.
pub fn parse_rpm_query(text: &str) -> BTreeMap<(String, String), (String, String)> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let [name, epoch, version, release, arch] = fields[..] else {
                return None;
            };
            let evr = match epoch {
                "(none)" | "0" | "" => format!("{version}-{release}"),
                epoch => format!("{epoch}:{version}-{release}"),
            };
            let file_name = format!("{name}-{version}-{release}.{arch}.rpm");
            Some(((name.to_owned(), arch.to_owned()), (evr, file_name)))
        })
        .collect()
}

/// Header package facts for RPMs installed by dnf: files from dnf's cache, else `dnf download`.
/// `packages` are (name, `[epoch:]version-release`, file name).
pub fn dnf_package_facts(
    system: &System,
    downloads: &ScratchDir,
    packages: &[(String, String, String)],
) -> Result<Vec<HeaderPackage>, String> {
    let mut facts = Vec::new();
    for (name, version, file_name) in packages {
        let mut found = RPM_CACHE_DIRS.iter().find_map(|dir| {
            walkdir::WalkDir::new(system.host_path(Path::new(dir)))
                .into_iter()
                .flatten()
                .find(|e| e.file_type().is_file() && e.file_name().to_string_lossy() == *file_name)
                .map(|e| e.path().to_path_buf())
        });
        if found.is_none() {
            let nevra = file_name.trim_end_matches(".rpm");
            let fetch = CommandLine::new(
                "dnf",
                [
                    "download".to_owned(),
                    format!("--destdir={}", downloads.guest.display()),
                    nevra.to_owned(),
                ],
            );
            match system.run(&fetch) {
                Ok(output) if output.success() => {}
                Ok(output) => {
                    tracing::warn!(reason = %output.describe_failure(), "dnf download failed")
                }
                Err(error) => tracing::warn!(%error, "dnf download did not run"),
            }
            found = Some(downloads.host.join(file_name)).filter(|p| p.is_file());
        }
        match found {
            Some(path) => facts.push(HeaderPackage {
                name: name.clone(),
                version: version.clone(),
                file_name: file_name.clone(),
                uri: None,
                sha256: sha256_hex(&path)?,
            }),
            None => tracing::warn!(
                package = %name,
                version = %version,
                "the package file is neither in dnf's cache nor downloadable: left out of the build facts"
            ),
        }
    }
    Ok(facts)
}

/// The packages that changed between two RPM inventories, as (name, version, file name), by name.
pub fn changed_rpms(
    before: &BTreeMap<(String, String), (String, String)>,
    after: &BTreeMap<(String, String), (String, String)>,
) -> Vec<(String, String, String)> {
    after
        .iter()
        .filter(|(key, value)| before.get(*key) != Some(*value))
        .map(|((name, _), (evr, file_name))| (name.clone(), evr.clone(), file_name.clone()))
        .collect()
}

/// The dpkg package owning a path (from `/var/lib/dpkg/info/<package>[:<arch>].list`), as
/// (name, architecture, version) from the status file.
pub fn dpkg_owner(system: &System, path: &Path) -> Option<(String, String, String)> {
    let wanted = path.display().to_string();
    let info = system.host_path(Path::new("/var/lib/dpkg/info"));
    let mut lists: Vec<PathBuf> = std::fs::read_dir(info)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "list"))
        .collect();
    lists.sort();
    let owner = lists.into_iter().find_map(|list| {
        let text = std::fs::read_to_string(&list).ok()?;
        let stem = list.file_stem()?.to_string_lossy().into_owned();
        text.lines().any(|line| line == wanted).then_some(stem)
    })?;
    let name = owner.split(':').next().unwrap_or(&owner).to_owned();
    let snapshot = DpkgSnapshot::take(system);
    snapshot
        .inventory
        .iter()
        .find(|((n, _), _)| *n == name)
        .map(|((n, arch), version)| (n.clone(), arch.clone(), version.clone()))
}

/// The value of `CONFIG_CC_VERSION_TEXT` in `include/config/auto.conf` or `.config` text (quoted
/// or not, as kconfig versions differ), unescaped.
pub fn cc_version_text(config: &str) -> Option<String> {
    let value = config
        .lines()
        .find_map(|line| line.strip_prefix("CONFIG_CC_VERSION_TEXT="))?
        .trim();
    let Some(quoted) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return Some(value.to_owned());
    };
    let mut out = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// The compiler the kernel of `headers_dir` (a guest path) was built with: `CONFIG_CC_VERSION_TEXT`
/// from `include/config/auto.conf`, else `.config`, else the compiler part of `LINUX_COMPILER` in
/// `include/generated/compile.h` (kernels before 5.8); empty with a warning when none says.
pub fn kernel_cc_version_text(system: &System, headers_dir: &Path) -> String {
    let host = system.host_path(headers_dir);
    let read = |relative: &str| std::fs::read_to_string(host.join(relative)).ok();
    if let Some(text) = ["include/config/auto.conf", ".config"]
        .into_iter()
        .filter_map(read)
        .find_map(|config| cc_version_text(&config))
    {
        return text;
    }
    if let Some(compiler) = read("include/generated/compile.h").and_then(|header| {
        header.lines().find_map(|line| {
            let rest = line.trim().strip_prefix("#define")?.trim_start();
            let value = rest.strip_prefix("LINUX_COMPILER")?.trim();
            let value = value.strip_prefix('"')?.strip_suffix('"')?;
            Some(value.split(", ").next().unwrap_or(value).to_owned())
        })
    }) {
        return compiler;
    }
    tracing::warn!(headers = %headers_dir.display(), "the headers do not say which compiler built the kernel");
    String::new()
}

/// The compiler facts of a build: `compiler` is the command kbuild ran (e.g. `["gcc-12"]`).
pub fn compiler_facts(
    system: &System,
    headers_dir: &Path,
    compiler: &[String],
) -> Result<CompilerFacts, String> {
    let (program, args) = compiler
        .split_first()
        .ok_or_else(|| "no compiler command".to_owned())?;
    let version = CommandLine::new(
        program,
        args.iter()
            .cloned()
            .chain(std::iter::once("--version".to_owned())),
    );
    let output = system
        .run(&version)
        .map_err(|error| format!("`{version}`: {error}"))?;
    if !output.success() {
        return Err(format!("`{version}`: {}", output.describe_failure()));
    }
    let report = output
        .stdout
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .ok_or_else(|| format!("`{version}` printed nothing"))?
        .to_owned();
    Ok(CompilerFacts {
        name: compiler.join(" "),
        kernel_cc_version_text: kernel_cc_version_text(system, headers_dir),
        root_version_report: report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lists_installed_packages_only() {
        let status = "Package: a\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0\n\
                      Description: x\n long\n\n\
                      Package: b\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 2\n\n\
                      Package: c\nStatus: install ok installed\nArchitecture: all\nVersion: 1:3-1\n";
        let inventory = parse_dpkg_status(status);
        assert_eq!(inventory.len(), 2);
        assert_eq!(inventory[&("c".into(), "all".into())], "1:3-1");
    }

    #[test]
    fn changes_come_in_dpkg_log_order() {
        let before = parse_dpkg_status(
            "Package: gcc\nStatus: install ok installed\nArchitecture: amd64\nVersion: 12\n\n\
             Package: kmod\nStatus: install ok installed\nArchitecture: amd64\nVersion: 30\n",
        );
        let mut after = before.clone();
        after.insert(("kmod".into(), "amd64".into()), "31".into());
        after.insert(
            ("linux-headers-6.1.0-47-amd64".into(), "amd64".into()),
            "6.1.170-3".into(),
        );
        after.insert(
            ("linux-headers-6.1.0-47-common".into(), "all".into()),
            "6.1.170-3".into(),
        );
        after.insert(("zzz".into(), "amd64".into()), "1".into());
        let log = "2026-01-01 10:00:00 startup archives unpack\n\
                   2026-01-01 10:00:01 install linux-headers-6.1.0-47-common:all <none> 6.1.170-3\n\
                   2026-01-01 10:00:01 status half-installed linux-headers-6.1.0-47-common:all 6.1.170-3\n\
                   2026-01-01 10:00:02 upgrade kmod:amd64 30 31\n\
                   2026-01-01 10:00:03 install linux-headers-6.1.0-47-amd64:amd64 <none> 6.1.170-3\n";
        let changed: Vec<String> = changed_packages(&before, &after, log)
            .into_iter()
            .map(|(n, a, v)| format!("{n}:{a}={v}"))
            .collect();
        assert_eq!(
            changed,
            [
                "linux-headers-6.1.0-47-common:all=6.1.170-3",
                "kmod:amd64=31",
                "linux-headers-6.1.0-47-amd64:amd64=6.1.170-3",
                "zzz:amd64=1",
            ]
        );
    }

    #[test]
    fn apt_names_archive_files_like_apt() {
        assert_eq!(
            apt_archive_file_name("libbpf1", "1:1.1.2-0+deb12u1", "amd64"),
            "libbpf1_1%3a1.1.2-0+deb12u1_amd64.deb"
        );
        assert_eq!(
            apt_archive_file_name("linux-headers-6.12.48+deb13-amd64", "6.12.48-1", "amd64"),
            "linux-headers-6.12.48+deb13-amd64_6.12.48-1_amd64.deb"
        );
        assert_eq!(apt_spec("a", "all", "1", "amd64"), "a=1");
        assert_eq!(apt_spec("a", "i386", "1", "amd64"), "a:i386=1");
        assert_eq!(
            package_name_version("libbpf1_1%3a1.1.2-0+deb12u1_amd64.deb"),
            Some(("libbpf1".into(), "1:1.1.2-0+deb12u1".into()))
        );
    }

    #[test]
    fn print_uris_lines_parse() {
        let text = "'http://deb.debian.org/debian/pool/main/b/bash/bash_5.2.15-2%2bb13_amd64.deb' \
                    bash_5.2.15-2+b13_amd64.deb 1490652 SHA256:82130BB6a560cd2a7234d8018baf73f188f5dd56413d5aa0accc987b2197a6a1\n\
                    noise\n";
        assert_eq!(
            parse_print_uris(text),
            [AptUri {
                uri: "http://deb.debian.org/debian/pool/main/b/bash/bash_5.2.15-2%2bb13_amd64.deb"
                    .into(),
                file_name: "bash_5.2.15-2+b13_amd64.deb".into(),
                sha256: Some(
                    "82130bb6a560cd2a7234d8018baf73f188f5dd56413d5aa0accc987b2197a6a1".into()
                ),
            }]
        );
    }

    #[test]
    fn rpm_queries_give_epoch_version_release_and_file_names() {
        let before = parse_rpm_query("gcc\t(none)\t14.2.1\t3.fc42\tx86_64\n");
        let after = parse_rpm_query(
            "gcc\t(none)\t14.2.1\t3.fc42\tx86_64\n\
             kernel-devel\t(none)\t6.14.0\t63.fc42\tx86_64\n\
             perl-libs\t4\t5.40.2\t1.fc42\tx86_64\n",
        );
        assert_eq!(
            changed_rpms(&before, &after),
            [
                (
                    "kernel-devel".to_owned(),
                    "6.14.0-63.fc42".to_owned(),
                    "kernel-devel-6.14.0-63.fc42.x86_64.rpm".to_owned()
                ),
                (
                    "perl-libs".to_owned(),
                    "4:5.40.2-1.fc42".to_owned(),
                    "perl-libs-5.40.2-1.fc42.x86_64.rpm".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn cc_version_text_is_read_quoted_or_not() {
        assert_eq!(
            cc_version_text(
                "CONFIG_X=y\nCONFIG_CC_VERSION_TEXT=gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\n"
            )
            .as_deref(),
            Some("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0")
        );
        assert_eq!(
            cc_version_text("CONFIG_CC_VERSION_TEXT=\"gcc (GCC) 14.2.1 \\\"x\\\"\"\n").as_deref(),
            Some("gcc (GCC) 14.2.1 \"x\"")
        );
        assert_eq!(cc_version_text("CONFIG_CC_IS_GCC=y\n"), None);
    }
}
