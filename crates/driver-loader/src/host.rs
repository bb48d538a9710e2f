//! Identifying the host: which os-release file describes it, which kernel it runs and on which machine,
//! and the kernel identity (from `kernel-id`) that names the one artifact fitting it.
//!
//! In Kubernetes the loader sees the container's files, not the host's, so every path is configurable:
//! the host's os-release is mounted (e.g. `/host/etc/os-release`), and the kernel release may be read from
//! a host proc mount. The kernel is shared with the container, so `uname` is right in both cases. The
//! machine-id (the node report's id, hashed) is looked for in the same host root as os-release.

use std::path::{Path, PathBuf};

use kernel_id::{Arch, DriverVersion, KernelIdentity, KernelRelease, OsRelease};

use crate::error::{LoaderError, Result};

/// os-release files tried in order when none is configured (os-release(5)).
pub const DEFAULT_OS_RELEASE_PATHS: [&str; 2] = ["/etc/os-release", "/usr/lib/os-release"];

/// The largest os-release file read; the real ones are well under 1 KiB.
const MAX_OS_RELEASE_BYTES: u64 = 64 * 1024;

/// Where the host's facts are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// os-release candidates, first existing wins.
    pub os_release: Vec<PathBuf>,
    /// A proc mount of the host to read `sys/kernel/osrelease` from; `None` = ask the kernel via uname.
    pub proc_root: Option<PathBuf>,
    /// machine-id(5) candidates, first valid wins; empty = derived from the os-release candidates
    /// ([`HostPaths::machine_id_candidates`]).
    pub machine_id: Vec<PathBuf>,
}

/// The default places: `/etc/os-release` then `/usr/lib/os-release`, uname, and the machine-id
/// in the same root.
impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            os_release: DEFAULT_OS_RELEASE_PATHS.iter().map(PathBuf::from).collect(),
            proc_root: None,
            machine_id: Vec::new(),
        }
    }
}

impl HostPaths {
    /// Where the host's machine-id is looked for, in order: the configured files, or else for each
    /// os-release candidate the `etc/machine-id` and `var/lib/dbus/machine-id` (its fallback,
    /// machine-id(5)) of the same root: `/etc/os-release` gives `/etc/machine-id`, a mounted
    /// `/host/etc/os-release` gives `/host/etc/machine-id`. An os-release outside an `etc/` or
    /// `usr/lib/` directory gives the `machine-id` beside it.
    pub fn machine_id_candidates(&self) -> Vec<PathBuf> {
        if !self.machine_id.is_empty() {
            return self.machine_id.clone();
        }
        let mut candidates: Vec<PathBuf> = Vec::new();
        for os_release in &self.os_release {
            let root = if os_release.ends_with("etc/os-release") {
                os_release.parent().and_then(Path::parent)
            } else if os_release.ends_with("usr/lib/os-release") {
                os_release
                    .parent()
                    .and_then(Path::parent)
                    .and_then(Path::parent)
            } else {
                None
            };
            let found = match root {
                Some(root) => vec![
                    root.join("etc/machine-id"),
                    root.join("var/lib/dbus/machine-id"),
                ],
                None => os_release
                    .parent()
                    .map(|dir| vec![dir.join("machine-id")])
                    .unwrap_or_default(),
            };
            for path in found {
                if !candidates.contains(&path) {
                    candidates.push(path);
                }
            }
        }
        candidates
    }
}

/// What the loader learned about the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The os-release file that was used.
    pub os_release_path: PathBuf,
    pub os_release: OsRelease,
    pub kernel_release: KernelRelease,
    pub arch: Arch,
}

impl HostFacts {
    /// Reads the host's facts from the configured places.
    pub fn probe(paths: &HostPaths) -> Result<HostFacts> {
        let (os_release_path, text) = read_first_os_release(&paths.os_release)?;
        let os_release = OsRelease::parse(&text)?;
        let uts = nix::sys::utsname::uname()
            .map_err(|errno| LoaderError::Identify(format!("uname failed: {errno}")))?;
        let release_text = match &paths.proc_root {
            Some(proc_root) => {
                let path = proc_root.join("sys/kernel/osrelease");
                read_small(&path, 4096)?.trim().to_owned()
            }
            None => uts.release().to_string_lossy().into_owned(),
        };
        let kernel_release = KernelRelease::parse(&release_text)?;
        let machine = uts.machine().to_string_lossy().into_owned();
        let arch = Arch::parse(&machine)?;
        Ok(HostFacts {
            os_release_path,
            os_release,
            kernel_release,
            arch,
        })
    }

    /// The identity of the artifact this host needs for `driver_version`.
    pub fn identity(&self, driver_version: &DriverVersion) -> Result<KernelIdentity> {
        identity_for(
            &self.os_release,
            self.kernel_release.clone(),
            self.arch,
            driver_version,
        )
    }
}

/// Maps os-release + kernel + arch to an identity; every rule lives in kernel-id.
pub fn identity_for(
    os_release: &OsRelease,
    kernel_release: KernelRelease,
    arch: Arch,
    driver_version: &DriverVersion,
) -> Result<KernelIdentity> {
    let distro_version = os_release.distro_version()?;
    Ok(KernelIdentity::new(
        kernel_release,
        arch,
        distro_version,
        driver_version.clone(),
    )?)
}

fn read_first_os_release(candidates: &[PathBuf]) -> Result<(PathBuf, String)> {
    for path in candidates {
        match std::fs::metadata(path) {
            Ok(_) => return Ok((path.clone(), read_small(path, MAX_OS_RELEASE_BYTES)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(LoaderError::io(format!("reading {}", path.display()), e)),
        }
    }
    Err(LoaderError::Identify(format!(
        "no os-release file found (tried {})",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// Reads a small text file, refusing anything larger than `limit` instead of reading it all.
pub(crate) fn read_small(path: &Path, limit: u64) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| LoaderError::io(format!("opening {}", path.display()), e))?;
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|e| LoaderError::io(format!("reading {}", path.display()), e))?;
    if text.len() as u64 > limit {
        return Err(LoaderError::Identify(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOKWORM: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n\
        VERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";
    const NOBLE: &str = "NAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nID=ubuntu\nID_LIKE=debian\n";
    const AL2023: &str = "NAME=\"Amazon Linux\"\nVERSION=\"2023\"\nID=\"amzn\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"2023\"\n";

    fn version() -> DriverVersion {
        DriverVersion::parse("v0.1.2").expect("valid")
    }

    #[test]
    fn debian_bookworm_maps_to_debian_12() {
        let os = OsRelease::parse(BOOKWORM).expect("valid");
        let id = identity_for(
            &os,
            KernelRelease::parse("6.1.0-47-amd64").expect("valid"),
            Arch::X86_64,
            &version(),
        )
        .expect("supported");
        assert_eq!(id.cache_key(), "debian/12/x86_64/6.1.0-47-amd64/v0.1.2");
    }

    #[test]
    fn ubuntu_and_amazon_linux_map_through_kernel_id() {
        let os = OsRelease::parse(NOBLE).expect("valid");
        let id = identity_for(
            &os,
            KernelRelease::parse("6.8.0-52-generic").expect("valid"),
            Arch::X86_64,
            &version(),
        )
        .expect("supported");
        assert_eq!(id.distro_version().as_str(), "24.04");
        let os = OsRelease::parse(AL2023).expect("valid");
        let id = identity_for(
            &os,
            KernelRelease::parse("6.12.58-82.121.amzn2023.x86_64").expect("valid"),
            Arch::X86_64,
            &version(),
        )
        .expect("supported");
        assert_eq!(id.distribution().as_str(), "amazonlinux");
    }

    #[test]
    fn unknown_distribution_is_an_identify_error() {
        let os = OsRelease::parse("ID=gentoo\nVERSION_ID=2.15\n").expect("valid syntax");
        let err = identity_for(
            &os,
            KernelRelease::parse("6.6.1-gentoo").expect("valid"),
            Arch::X86_64,
            &version(),
        )
        .expect_err("gentoo is not supported");
        assert_eq!(err.kind(), crate::FailureKind::Identify);
        assert!(err.to_string().contains("gentoo"), "{err}");
    }

    #[test]
    fn arch_disagreeing_with_release_is_refused() {
        let os = OsRelease::parse(BOOKWORM).expect("valid");
        let err = identity_for(
            &os,
            KernelRelease::parse("6.1.0-47-arm64").expect("valid"),
            Arch::X86_64,
            &version(),
        )
        .expect_err("arm64 kernel on x86_64");
        assert_eq!(err.kind(), crate::FailureKind::Identify);
    }

    #[test]
    fn probe_uses_the_first_existing_os_release_and_host_proc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let os_path = dir.path().join("usr-lib-os-release");
        std::fs::write(&os_path, BOOKWORM).expect("write");
        let proc_root = dir.path().join("proc");
        std::fs::create_dir_all(proc_root.join("sys/kernel")).expect("mkdir");
        std::fs::write(proc_root.join("sys/kernel/osrelease"), "6.1.0-47-amd64\n").expect("write");
        let paths = HostPaths {
            os_release: vec![dir.path().join("missing"), os_path.clone()],
            proc_root: Some(proc_root),
            machine_id: vec![],
        };
        let facts = HostFacts::probe(&paths).expect("probe");
        assert_eq!(facts.os_release_path, os_path);
        assert_eq!(facts.kernel_release.as_str(), "6.1.0-47-amd64");
        assert_eq!(facts.os_release.id(), "debian");
    }

    #[test]
    fn missing_os_release_names_every_candidate() {
        let paths = HostPaths {
            os_release: vec![
                PathBuf::from("/nonexistent/a"),
                PathBuf::from("/nonexistent/b"),
            ],
            proc_root: None,
            machine_id: vec![],
        };
        let err = HostFacts::probe(&paths).expect_err("nothing to read");
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent/a") && text.contains("/nonexistent/b"),
            "{text}"
        );
    }

    #[test]
    fn machine_id_is_looked_for_in_the_root_of_each_os_release() {
        let paths = HostPaths::default();
        assert_eq!(
            paths.machine_id_candidates(),
            ["/etc/machine-id", "/var/lib/dbus/machine-id"].map(PathBuf::from)
        );
        let paths = HostPaths {
            os_release: [
                "/host/etc/os-release",
                "/host/usr/lib/os-release",
                "/x/os-release",
            ]
            .map(PathBuf::from)
            .to_vec(),
            ..HostPaths::default()
        };
        assert_eq!(
            paths.machine_id_candidates(),
            [
                "/host/etc/machine-id",
                "/host/var/lib/dbus/machine-id",
                "/x/machine-id"
            ]
            .map(PathBuf::from)
        );
        // Configured files replace the derived ones.
        let paths = HostPaths {
            machine_id: vec![PathBuf::from("/m")],
            ..paths
        };
        assert_eq!(paths.machine_id_candidates(), vec![PathBuf::from("/m")]);
    }
}
