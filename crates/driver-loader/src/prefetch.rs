//! `driver-loader prefetch`: get the driver for kernels the node has installed but not booted, so
//! that the reboot into one of them loads from the verified cache without any network.
//!
//! For each pending kernel (see [`crate::pending`]), or the one named by `--kernel`, the package is
//! fetched exactly as `run` fetches it — the cache, the store, or a build requested and waited for
//! within the deadline — and verified exactly the same way (digest, signature, provenance, the
//! package metadata's commit) before it is kept in the cache. Then its modules are read into
//! memory (nothing is written) and checked against that kernel: ELF machine, vermagic (the kernel's release,
//! and the vermagic of its own installed modules when one is readable) and dependencies installed
//! for it. A package that would be refused after the reboot is refused now, while there is still
//! time to do something about it. Nothing is installed or loaded.
//!
//! All kernels share one deadline (`--deadline-seconds`), so a prefetch started by a kernel
//! package's postinst hook or a boot unit ends in bounded time.

use std::fmt;

use kernel_id::{KernelIdentity, KernelRelease};
use tracing::info;

use crate::compat::TargetKernel;
use crate::error::{LoaderError, Result};
use crate::fetch::{Fetcher, VerifiedPackage};
use crate::flow::{LoaderConfig, prepare_modules_for};
use crate::host::{HostFacts, identity_for};
use crate::http::Deadline;
use crate::kernel::HostModuleIndex;
use crate::pending::pending_kernels;

/// What prefetching one kernel gave.
#[derive(Debug)]
pub struct Prefetched {
    /// The kernel release.
    pub release: String,
    /// The verified, cached and checked package, or why not.
    pub result: Result<VerifiedPackage>,
}

impl fmt::Display for Prefetched {
    /// The command's one line per kernel: `prefetched <R>: <package path> (<origin>)` or
    /// `prefetch <R> failed: <reason>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(package) => write!(
                f,
                "prefetched {}: {} ({})",
                self.release,
                package.path.display(),
                package.origin().as_str()
            ),
            Err(e) => write!(f, "prefetch {} failed: {e}", self.release),
        }
    }
}

/// The kernels to prefetch: `only` (checked: a kernel release, installed under the modules root,
/// with an identity on this host), or every pending kernel.
pub fn targets(
    config: &LoaderConfig,
    facts: &HostFacts,
    only: Option<&str>,
) -> Result<Vec<KernelIdentity>> {
    let Some(release) = only else {
        return Ok(pending_kernels(
            facts,
            &config.driver_version,
            &config.modules_root,
            &config.boot_dir,
        )
        .into_iter()
        .map(|kernel| kernel.identity)
        .collect());
    };
    let release = KernelRelease::parse(release.trim())
        .map_err(|e| LoaderError::Config(format!("--kernel: {e}")))?;
    let modules = config.modules_root.join(release.as_str());
    if !modules.is_dir() {
        return Err(LoaderError::Identify(format!(
            "--kernel {release}: kernel not installed ({} is not a directory)",
            modules.display()
        )));
    }
    Ok(vec![identity_for(
        &facts.os_release,
        release,
        facts.arch,
        &config.driver_version,
    )?])
}

/// Fetches, verifies, caches and checks the package of each target kernel, in order, within one
/// deadline. An error here is about the host or the command line (identification, `--kernel`);
/// each kernel's own failure is in its [`Prefetched`].
pub fn prefetch(config: &LoaderConfig, only: Option<&str>) -> Result<Vec<Prefetched>> {
    let facts = HostFacts::probe(&config.host_paths)?;
    let targets = targets(config, &facts, only)?;
    if targets.is_empty() {
        info!(
            modules_root = %config.modules_root.display(),
            boot_dir = %config.boot_dir.display(),
            "no pending kernel: nothing to prefetch"
        );
        return Ok(Vec::new());
    }
    let deadline = Deadline::after(config.deadline);
    Ok(crate::flow::with_fetcher(config, |fetcher| {
        targets
            .iter()
            .map(|identity| {
                let release = identity.kernel_release().as_str().to_owned();
                info!(kernel = release, identity = %identity.cache_key(), "prefetching");
                let result = prefetch_one(config, &facts, fetcher, identity, &deadline);
                Prefetched { release, result }
            })
            .collect()
    }))
}

fn prefetch_one(
    config: &LoaderConfig,
    facts: &HostFacts,
    fetcher: &Fetcher<'_>,
    identity: &KernelIdentity,
    deadline: &Deadline,
) -> Result<VerifiedPackage> {
    let package = fetcher.fetch(&config.driver, identity, deadline)?;
    let release = identity.kernel_release().as_str();
    let modules_dir = config.modules_root.join(release);
    // `--kernel` may name the running kernel (a reinstall): then its live modules count too.
    let (target, index) = if *identity.kernel_release() == facts.kernel_release {
        (
            TargetKernel::running(release),
            HostModuleIndex::load(&modules_dir, &config.sys_root),
        )
    } else {
        (
            TargetKernel::pending(release),
            HostModuleIndex::installed(&modules_dir),
        )
    };
    let modules = prepare_modules_for(&package, identity, target, &index)?;
    info!(
        kernel = release,
        package = package.file_name,
        modules = modules.len(),
        origin = package.origin().as_str(),
        "prefetched: verified, cached and checked against the kernel"
    );
    Ok(package)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    fn package(from_cache: bool, build_wait: Option<Duration>) -> VerifiedPackage {
        VerifiedPackage {
            path: PathBuf::from("/var/cache/driver-loader/x/p.deb"),
            file_name: "p.deb".to_owned(),
            sha256: integrity::sha256_bytes(b""),
            signature: None,
            provenance: None,
            from_cache,
            built_on_demand: build_wait.is_some(),
            build_wait,
        }
    }

    #[test]
    fn one_line_per_kernel_names_the_origin_or_the_reason() {
        let line = |result| {
            Prefetched {
                release: "6.1.0-50-amd64".to_owned(),
                result,
            }
            .to_string()
        };
        assert_eq!(
            line(Ok(package(false, Some(Duration::from_secs(3))))),
            "prefetched 6.1.0-50-amd64: /var/cache/driver-loader/x/p.deb (build)"
        );
        assert_eq!(
            line(Ok(package(false, None))),
            "prefetched 6.1.0-50-amd64: /var/cache/driver-loader/x/p.deb (store)"
        );
        assert_eq!(
            line(Ok(package(true, None))),
            "prefetched 6.1.0-50-amd64: /var/cache/driver-loader/x/p.deb (cache)"
        );
        assert_eq!(
            line(Err(LoaderError::NotFound {
                url: "http://h/p.deb".to_owned()
            })),
            "prefetch 6.1.0-50-amd64 failed: artifact http://h/p.deb does not exist (404) and no \
             build service is configured"
        );
    }
}
