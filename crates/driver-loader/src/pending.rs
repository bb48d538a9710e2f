//! Kernels installed on the host but not running: what it may boot next. A kernel `R` is pending
//! when its modules tree `<modules root>/R` and its image `<boot dir>/vmlinuz-R` both exist (what a
//! distribution kernel package installs; a modules tree left behind by a removed kernel, e.g. a
//! DKMS leftover, has no image) and `R` is not the running release.
//!
//! Each one must also be a kernel this loader could fetch for: `R` must parse as a kernel-id
//! `KernelRelease` and form a valid identity with the host's distribution, distribution version and
//! architecture. Anything else is skipped with a warning naming the rule, never an error: pending
//! kernels are a forecast, and a strange directory under `/lib/modules` must not fail a run.

use std::path::Path;

use kernel_id::{DriverVersion, KernelIdentity, KernelRelease};
use tracing::{debug, info, warn};

use crate::host::{HostFacts, identity_for};

/// At most this many directory entries of the modules root are looked at: a real host has a
/// handful of kernels, and a huge directory must not make every run slow.
const MAX_MODULES_ROOT_ENTRIES: usize = 4096;

/// A pending kernel and the identity of the package it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingKernel {
    pub release: KernelRelease,
    pub identity: KernelIdentity,
}

/// The names `R` under `modules_root` that are directories and have `boot_dir/vmlinuz-R`, other than
/// `running`, sorted. Unreadable directories give an empty list and a log line saying why.
pub fn installed_releases(modules_root: &Path, boot_dir: &Path, running: &str) -> Vec<String> {
    if !boot_dir.is_dir() {
        // In a container /boot is usually not mounted: no forecast is possible, which is normal.
        info!(
            boot_dir = %boot_dir.display(),
            "boot directory not readable; pending kernels cannot be known (--boot-dir)"
        );
        return Vec::new();
    }
    let entries = match std::fs::read_dir(modules_root) {
        Ok(entries) => entries,
        Err(e) => {
            warn!(
                modules_root = %modules_root.display(),
                error = %e,
                "cannot list the modules root; no pending kernels"
            );
            return Vec::new();
        }
    };
    let mut releases = Vec::new();
    for (n, entry) in entries.enumerate() {
        if n >= MAX_MODULES_ROOT_ENTRIES {
            warn!(
                modules_root = %modules_root.display(),
                limit = MAX_MODULES_ROOT_ENTRIES,
                "the modules root has more entries than are looked at; the rest are ignored"
            );
            break;
        }
        let Ok(entry) = entry else { continue };
        let Ok(name) = entry.file_name().into_string() else {
            warn!(entry = ?entry.file_name(), "a modules root entry that is not UTF-8 is no kernel release; skipped");
            continue;
        };
        if name == running || !entry.path().is_dir() {
            continue;
        }
        if !boot_dir.join(format!("vmlinuz-{name}")).is_file() {
            debug!(release = name, boot_dir = %boot_dir.display(), "modules tree without a kernel image; not pending");
            continue;
        }
        releases.push(name);
    }
    releases.sort();
    releases
}

/// The pending kernels this loader can fetch for: every installed release (see
/// [`installed_releases`]) that parses and forms a valid identity with the host's facts for
/// `driver_version`; the others are skipped with a warning naming why.
pub fn pending_kernels(
    facts: &HostFacts,
    driver_version: &DriverVersion,
    modules_root: &Path,
    boot_dir: &Path,
) -> Vec<PendingKernel> {
    installed_releases(modules_root, boot_dir, facts.kernel_release.as_str())
        .into_iter()
        .filter_map(
            |name| match pending_identity(facts, driver_version, &name) {
                Ok(kernel) => Some(kernel),
                Err(reason) => {
                    warn!(
                        release = name,
                        reason, "installed kernel skipped: no identity for it"
                    );
                    None
                }
            },
        )
        .collect()
}

/// The identity of installed kernel `release` on this host, or why there is none.
pub fn pending_identity(
    facts: &HostFacts,
    driver_version: &DriverVersion,
    release: &str,
) -> Result<PendingKernel, String> {
    let parsed = KernelRelease::parse(release).map_err(|e| e.to_string())?;
    let identity = identity_for(
        &facts.os_release,
        parsed.clone(),
        facts.arch,
        driver_version,
    )
    .map_err(|e| e.to_string())?;
    Ok(PendingKernel {
        release: parsed,
        identity,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use kernel_id::{Arch, OsRelease};

    use super::*;

    fn facts(running: &str) -> HostFacts {
        HostFacts {
            os_release_path: PathBuf::from("/etc/os-release"),
            os_release: OsRelease::parse("ID=debian\nVERSION_ID=\"12\"\n").expect("valid"),
            kernel_release: KernelRelease::parse(running).expect("valid"),
            arch: Arch::X86_64,
        }
    }

    /// A host root with `/lib/modules/<R>` for each of `modules` and `/boot/vmlinuz-<R>` for each of
    /// `images`.
    fn host(modules: &[&str], images: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for release in modules {
            std::fs::create_dir_all(dir.path().join("lib/modules").join(release)).expect("mkdir");
        }
        std::fs::create_dir_all(dir.path().join("boot")).expect("mkdir");
        for release in images {
            std::fs::write(dir.path().join(format!("boot/vmlinuz-{release}")), b"image")
                .expect("write");
        }
        dir
    }

    #[test]
    fn a_pending_kernel_has_modules_and_an_image_and_is_not_running() {
        let dir = host(
            &[
                "6.1.0-47-amd64",
                "6.1.0-50-amd64",
                "6.1.0-41-amd64",
                "6.1.0-30-amd64",
            ],
            &["6.1.0-47-amd64", "6.1.0-50-amd64", "6.1.0-41-amd64"],
        );
        // A stray file is no kernel.
        std::fs::write(dir.path().join("lib/modules/README"), b"x").expect("write");
        let modules = dir.path().join("lib/modules");
        let boot = dir.path().join("boot");
        assert_eq!(
            installed_releases(&modules, &boot, "6.1.0-47-amd64"),
            vec!["6.1.0-41-amd64", "6.1.0-50-amd64"],
            "running 47 is not pending, 30 has no image"
        );
        let pending = pending_kernels(
            &facts("6.1.0-47-amd64"),
            &DriverVersion::parse("v0.1.2").expect("valid"),
            &modules,
            &boot,
        );
        assert_eq!(
            pending
                .iter()
                .map(|p| p.identity.cache_key())
                .collect::<Vec<_>>(),
            vec![
                "debian/12/x86_64/6.1.0-41-amd64/v0.1.2",
                "debian/12/x86_64/6.1.0-50-amd64/v0.1.2"
            ]
        );
    }

    #[test]
    fn kernels_without_a_valid_identity_are_skipped_not_errors() {
        // An arm64 kernel on an x86_64 host, and a name that is no kernel release at all.
        let dir = host(
            &["6.1.0-50-arm64", "not a release", "6.1.0-50-amd64"],
            &["6.1.0-50-arm64", "not a release", "6.1.0-50-amd64"],
        );
        let pending = pending_kernels(
            &facts("6.1.0-47-amd64"),
            &DriverVersion::parse("v0.1.2").expect("valid"),
            &dir.path().join("lib/modules"),
            &dir.path().join("boot"),
        );
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_eq!(pending[0].release.as_str(), "6.1.0-50-amd64");
        let reason = pending_identity(
            &facts("6.1.0-47-amd64"),
            &DriverVersion::parse("v0.1.2").expect("valid"),
            "6.1.0-50-arm64",
        )
        .expect_err("arm64 on x86_64");
        assert!(reason.contains("arm64"), "{reason}");
    }

    #[test]
    fn without_a_boot_dir_or_modules_root_nothing_is_pending() {
        let dir = host(&["6.1.0-50-amd64"], &["6.1.0-50-amd64"]);
        assert!(
            installed_releases(
                &dir.path().join("lib/modules"),
                &dir.path().join("no-boot"),
                "6.1.0-47-amd64"
            )
            .is_empty()
        );
        assert!(
            installed_releases(
                &dir.path().join("no-modules"),
                &dir.path().join("boot"),
                "6.1.0-47-amd64"
            )
            .is_empty()
        );
    }
}
