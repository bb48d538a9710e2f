//! Header sources for the RPM distributions: dnf, explicit `.rpm` URLs and Amazon Linux's
//! kernel-livepatch packages. Koji lives in its own module.

use integrity::HeaderPackage;
use kernel_id::KernelIdentity;

use crate::facts;
use crate::system::CommandLine;

use super::{
    Downloaded, HeaderContext, HeaderSource, SourceFailure, download_all, downloaded_facts,
    run_step,
};

/// Runs a dnf install (with `keepcache=1`, so the package files stay to be hashed) and returns the
/// packages it installed with their files' digests ([`facts::dnf_package_facts`]).
fn dnf_install(
    ctx: &HeaderContext<'_>,
    command: &CommandLine,
) -> Result<Vec<HeaderPackage>, SourceFailure> {
    let before = facts::rpm_inventory(ctx.system);
    run_step(ctx.system, command)?;
    let (Some(before), Some(after)) = (before, facts::rpm_inventory(ctx.system)) else {
        tracing::warn!("rpm -qa gave no answer: the installed header packages are unknown");
        return Ok(Vec::new());
    };
    let changed = facts::changed_rpms(&before, &after);
    facts::dnf_package_facts(ctx.system, ctx.downloads, &changed).map_err(|error| {
        SourceFailure::Failed(format!("recording the installed packages: {error}"))
    })
}

/// `dnf install kernel-devel-<release>`. The package name is not the same everywhere (Amazon
/// Linux ships its 6.12 kernels as `kernel6.12-devel`), so when the plain name is unknown the
/// capability every kernel-devel provides, `kernel-devel-uname-r = <release>`, is asked for.
#[derive(Debug, Clone)]
pub struct DnfSource {
    specs: Vec<String>,
}

impl DnfSource {
    pub fn new(identity: &KernelIdentity) -> DnfSource {
        let release = identity.kernel_release().as_str();
        DnfSource {
            specs: vec![
                format!("kernel-devel-{release}"),
                format!("kernel-devel-uname-r = {release}"),
            ],
        }
    }
}

impl HeaderSource for DnfSource {
    fn describe(&self) -> String {
        format!("dnf install {}", self.specs[0])
    }

    fn install(&self, ctx: &HeaderContext<'_>) -> Result<Vec<HeaderPackage>, SourceFailure> {
        let mut reasons = Vec::new();
        for spec in &self.specs {
            let command = CommandLine::new(
                "dnf",
                ["install", "-y", "--setopt=keepcache=1", spec.as_str()],
            );
            match dnf_install(ctx, &command) {
                Ok(installed) => return Ok(installed),
                Err(failure) => reasons.push(failure.reason().to_owned()),
            }
        }
        Err(SourceFailure::Failed(reasons.join("; ")))
    }
}

/// Amazon Linux 2023 publishes fixes for older kernels as `kernel-livepatch-<version>-<release>`
/// packages (reference §10): the name is the target `uname -r` without `.amzn2023.<arch>`,
/// prefixed with `kernel-livepatch-`. `6.1.186-228.376.amzn2023.x86_64` ->
/// `kernel-livepatch-6.1.186-228.376`. None when the release is not an AL2023 one. The naming is
/// kernel-id's, shared with matrix-gen and the repository watcher, which read livepatch
/// repositories the other way round.
pub fn livepatch_package_name(identity: &KernelIdentity) -> Option<String> {
    kernel_id::al2023_livepatch_package(identity.kernel_release(), identity.arch())
}

/// Installs the release's `kernel-livepatch` package from the livepatch repository, which
/// keeps packages tied to kernels the core repository has moved past. The step counts only if
/// the kbuild tree of the release is present afterwards (the chain checks that).
#[derive(Debug, Clone)]
pub struct LivepatchSource {
    package: Option<String>,
}

impl LivepatchSource {
    pub fn new(identity: &KernelIdentity) -> LivepatchSource {
        LivepatchSource {
            package: livepatch_package_name(identity),
        }
    }
}

impl HeaderSource for LivepatchSource {
    fn describe(&self) -> String {
        match &self.package {
            Some(package) => format!("dnf install {package} (kernel-livepatch repository)"),
            None => "kernel-livepatch package".to_owned(),
        }
    }

    fn install(&self, ctx: &HeaderContext<'_>) -> Result<Vec<HeaderPackage>, SourceFailure> {
        let Some(package) = &self.package else {
            return Err(SourceFailure::Skipped(
                "the release is not an Amazon Linux 2023 kernel (.amzn2023.<arch>)".to_owned(),
            ));
        };
        let release = ctx.identity.kernel_release().as_str();
        let command = CommandLine::new(
            "dnf",
            [
                "install".to_owned(),
                "-y".to_owned(),
                "--setopt=keepcache=1".to_owned(),
                "--enablerepo=kernel-livepatch".to_owned(),
                package.clone(),
                format!("kernel-devel-uname-r = {release}"),
            ],
        );
        dnf_install(ctx, &command)
    }
}

/// Installs downloaded RPMs without dependency resolution: the build root already holds the
/// toolchain kernel-devel's Makefiles call, and the repositories may be the very thing that
/// lost the package.
pub(crate) fn install_rpms(
    ctx: &HeaderContext<'_>,
    files: Vec<Downloaded>,
) -> Result<Vec<HeaderPackage>, SourceFailure> {
    let command = CommandLine::new(
        "rpm",
        [
            "-i".to_owned(),
            "--nodeps".to_owned(),
            "--replacepkgs".to_owned(),
        ]
        .into_iter()
        .chain(files.iter().map(|f| f.guest.display().to_string())),
    );
    run_step(ctx.system, &command)?;
    downloaded_facts(&files)
}

/// Explicit `.rpm` URLs given on the command line.
#[derive(Debug, Clone)]
pub struct RpmUrlSource {
    urls: Vec<String>,
}

impl RpmUrlSource {
    pub fn new(urls: Vec<String>) -> RpmUrlSource {
        RpmUrlSource { urls }
    }
}

impl HeaderSource for RpmUrlSource {
    fn describe(&self) -> String {
        format!("explicit header URLs ({} given)", self.urls.len())
    }

    fn install(&self, ctx: &HeaderContext<'_>) -> Result<Vec<HeaderPackage>, SourceFailure> {
        if self.urls.is_empty() {
            return Err(SourceFailure::Skipped("no --header-url given".to_owned()));
        }
        let files = download_all(ctx, &self.urls, "rpm")?;
        install_rpms(ctx, files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel_id::{Arch, DistroVersion, DriverVersion, KernelRelease};

    fn identity(release: &str, distribution: &str, version: &str) -> KernelIdentity {
        let distribution = kernel_id::Distribution::parse(distribution).expect("distribution");
        KernelIdentity::new(
            KernelRelease::parse(release).expect("release"),
            Arch::X86_64,
            DistroVersion::supported(distribution, version).expect("version"),
            DriverVersion::parse("v0.1.2").expect("driver version"),
        )
        .expect("identity")
    }

    #[test]
    fn livepatch_names_follow_the_al2023_scheme() {
        let al = identity("6.1.186-228.376.amzn2023.x86_64", "amazonlinux", "2023");
        assert_eq!(
            livepatch_package_name(&al).as_deref(),
            Some("kernel-livepatch-6.1.186-228.376")
        );
        let al612 = identity("6.12.110-135.201.amzn2023.x86_64", "amazonlinux", "2023");
        assert_eq!(
            livepatch_package_name(&al612).as_deref(),
            Some("kernel-livepatch-6.12.110-135.201")
        );
        let fedora = identity("6.14.0-100.fc42.x86_64", "fedora", "42");
        assert_eq!(livepatch_package_name(&fedora), None);
    }

    #[test]
    fn dnf_asks_for_the_package_then_the_capability() {
        let fedora = identity("6.14.0-100.fc42.x86_64", "fedora", "42");
        assert_eq!(
            DnfSource::new(&fedora).specs,
            vec![
                "kernel-devel-6.14.0-100.fc42.x86_64",
                "kernel-devel-uname-r = 6.14.0-100.fc42.x86_64"
            ]
        );
    }
}
