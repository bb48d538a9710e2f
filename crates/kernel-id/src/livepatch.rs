//! Amazon Linux 2023 livepatch naming. AL2023 publishes fixes for kernels the core repository has
//! moved past as `kernel-livepatch-<version>-<release>` packages: the name is the patched kernel's
//! `uname -r` without `.amzn2023.<arch>`, so `6.1.186-228.376.amzn2023.x86_64` is patched by
//! `kernel-livepatch-6.1.186-228.376`. The driver-builder installs that package to reach the
//! kernel's headers; matrix-gen and the repository watcher read livepatch repositories to learn which
//! kernels exist. All three spell the name through here, in both directions.

use crate::arch::Arch;
use crate::error::{Field, IdError};
use crate::release::KernelRelease;

/// Every AL2023 livepatch package's name starts so.
pub const AL2023_LIVEPATCH_PREFIX: &str = "kernel-livepatch-";

/// The livepatch package of an AL2023 kernel; `None` when `release` is not `<stem>.amzn2023.<arch>`.
pub fn al2023_livepatch_package(release: &KernelRelease, arch: Arch) -> Option<String> {
    let suffix = format!(".amzn2023.{}", arch.rpm_name());
    let stem = release.as_str().strip_suffix(&suffix)?;
    Some(format!("{AL2023_LIVEPATCH_PREFIX}{stem}"))
}

/// The kernel a livepatch package (of architecture `arch`) patches: `None` when `package` is no
/// `kernel-livepatch-` package at all, an error naming the package when its stem is no kernel
/// version (the repository's own `kernel-livepatch-repo-s3`, say).
pub fn al2023_livepatch_kernel(
    package: &str,
    arch: Arch,
) -> Option<Result<KernelRelease, IdError>> {
    let stem = package.strip_prefix(AL2023_LIVEPATCH_PREFIX)?;
    Some(
        KernelRelease::parse(&format!("{stem}.amzn2023.{}", arch.rpm_name())).map_err(|e| {
            IdError::new(
                Field::KernelVersion,
                format!(
                    "livepatch package {package} names no kernel release: {}",
                    e.rule()
                ),
            )
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_go_both_ways() {
        let release = KernelRelease::parse("6.1.186-228.376.amzn2023.x86_64").unwrap();
        let package = al2023_livepatch_package(&release, Arch::X86_64).unwrap();
        assert_eq!(package, "kernel-livepatch-6.1.186-228.376");
        assert_eq!(
            al2023_livepatch_kernel(&package, Arch::X86_64),
            Some(Ok(release.clone()))
        );
        assert_eq!(
            al2023_livepatch_kernel("kernel-livepatch-6.12.110-135.201", Arch::Aarch64)
                .unwrap()
                .unwrap()
                .as_str(),
            "6.12.110-135.201.amzn2023.aarch64"
        );
        // Not an AL2023 release, or the other architecture's.
        assert_eq!(al2023_livepatch_package(&release, Arch::Aarch64), None);
        let fedora = KernelRelease::parse("6.14.0-100.fc42.x86_64").unwrap();
        assert_eq!(al2023_livepatch_package(&fedora, Arch::X86_64), None);
    }

    #[test]
    fn other_packages_are_none_and_odd_stems_are_errors_naming_the_package() {
        assert_eq!(al2023_livepatch_kernel("kernel-devel", Arch::X86_64), None);
        let error = al2023_livepatch_kernel("kernel-livepatch-repo-s3", Arch::X86_64)
            .unwrap()
            .unwrap_err();
        assert_eq!(error.field(), Field::KernelVersion);
        assert!(error.rule().contains("kernel-livepatch-repo-s3"), "{error}");
    }
}
