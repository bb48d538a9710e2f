//! The whole loader run: identify -> fetch (or build) -> verify (digest, signature, provenance) ->
//! extract and check modules -> install and/or load, idempotently. Each step is also callable on its
//! own (the CLI's `identify`, `fetch`, `extract`, `inspect`, `provenance`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integrity::provenance::{COMPILER_DEPENDENCY, ROOT_DEPENDENCY, VerifiedProvenance};
use integrity::{Keyring, ProvenancePolicy, Sha256Digest};
use kernel_id::{DriverName, DriverVersion, KernelIdentity, PackageFormat};
use tracing::{info, warn};

use crate::compat::{HostModules, PackageModule, TargetKernel, check_and_order};
use crate::error::{LoaderError, Result};
use crate::fetch::{
    ArtifactSource, ArtifactUrls, BuildService, Fetcher, TrustPolicy, VerifiedPackage,
};
use crate::host::{HostFacts, HostPaths};
use crate::http::{Deadline, HttpClient, HttpSettings};
use crate::install::HostTools;
use crate::kernel::{HostModuleIndex, KernelModules, LoadOutcome};
use crate::modinfo::{MAX_MODULE_BYTES, read_module_image};
use crate::module_trust::SignatureCheck;

/// How modules get into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Install with the system package manager, then modprobe (VMs, bare metal).
    Host,
    /// Never touch the host package database: extract privately and load with finit_module (DaemonSet).
    Container,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Host => "host",
            Mode::Container => "container",
        })
    }
}

/// Complete configuration of a run.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub driver: DriverName,
    pub driver_version: DriverVersion,
    pub host_paths: HostPaths,
    pub source: ArtifactSource,
    pub build_service: Option<BuildService>,
    pub trust: TrustPolicy,
    pub http: HttpSettings,
    /// Package cache root.
    pub cache_dir: PathBuf,
    /// Overall deadline of fetching (including waiting for a build).
    pub deadline: Duration,
    /// `/lib/modules` (host's, mounted, in Kubernetes).
    pub modules_root: PathBuf,
    /// `/boot`: an installed kernel `R` is pending (installed, not running) when
    /// `modules_root/R` and `boot_dir/vmlinuz-R` both exist.
    pub boot_dir: PathBuf,
    /// `/sys`.
    pub sys_root: PathBuf,
    pub mode: Mode,
    /// Unload and replace a loaded module of another version.
    pub replace: bool,
    /// Do everything except changing the kernel or the package database.
    pub dry_run: bool,
    /// Do not check module signatures against what the running kernel enforces and trusts before
    /// loading (test and diagnostic switch: the kernel is the only judge).
    pub skip_module_signature_precheck: bool,
}

impl LoaderConfig {
    /// Where the kernel's signature enforcement and trusted keys are read (sys root, the host proc
    /// mount or `/proc`), and the build service whose certificate would need enrolling.
    pub fn signature_check(&self) -> SignatureCheck {
        SignatureCheck {
            sys_root: self.sys_root.clone(),
            proc_root: self
                .host_paths
                .proc_root
                .clone()
                .unwrap_or_else(|| PathBuf::from("/proc")),
            build_service_url: self.build_service.as_ref().map(|s| s.url.clone()),
            skip_precheck: self.skip_module_signature_precheck,
        }
    }
}

/// The identification step's result.
#[derive(Debug, Clone)]
pub struct Identification {
    pub facts: HostFacts,
    pub identity: KernelIdentity,
    pub package_file_name: String,
    pub urls: ArtifactUrls,
}

/// Identifies the host and names the artifact it needs.
pub fn identify(config: &LoaderConfig) -> Result<Identification> {
    let facts = HostFacts::probe(&config.host_paths)?;
    let identity = facts.identity(&config.driver_version)?;
    let urls = ArtifactUrls::new(&config.source, &config.driver, &identity);
    Ok(Identification {
        package_file_name: identity.package_file_name(&config.driver),
        facts,
        identity,
        urls,
    })
}

/// Fetches and verifies the identity's package (cache, download or build).
pub fn fetch(config: &LoaderConfig, identity: &KernelIdentity) -> Result<VerifiedPackage> {
    with_fetcher(config, |fetcher| {
        fetcher.fetch(&config.driver, identity, &Deadline::after(config.deadline))
    })
}

/// Runs `work` with the configuration's fetcher (its HTTP client, sources, trust and cache).
pub(crate) fn with_fetcher<T>(config: &LoaderConfig, work: impl FnOnce(&Fetcher<'_>) -> T) -> T {
    let client = HttpClient::new(config.http.clone());
    work(&Fetcher {
        client: &client,
        source: &config.source,
        build_service: config.build_service.as_ref(),
        trust: &config.trust,
        cache_root: &config.cache_dir,
    })
}

/// A package's build provenance, verified on its own (the `provenance` command).
#[derive(Debug, Clone)]
pub struct PackageProvenance {
    pub package: PathBuf,
    pub file_name: String,
    pub driver: DriverName,
    /// The identity the package's file name says it was built for.
    pub identity: KernelIdentity,
    pub sha256: Sha256Digest,
    pub provenance_file: PathBuf,
    pub verified: VerifiedProvenance,
}

/// Verifies the provenance of a package file: `provenance_file` (default: the kernel-id provenance
/// name beside the package, `<package>.intoto.jsonl`) must be signed by a key of the keyring and be
/// about exactly this package (its file name's identity and its SHA-256) within the policy.
pub fn verify_package_provenance(
    package: &Path,
    provenance_file: Option<&Path>,
    keyring: &Keyring,
    policy: &ProvenancePolicy,
) -> Result<PackageProvenance> {
    let file_name = package
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| {
            LoaderError::Config(format!("{}: not a package file name", package.display()))
        })?
        .to_owned();
    let (driver, identity) = KernelIdentity::parse_any_package_file_name(&file_name)
        .map_err(|e| LoaderError::Config(format!("{}: {e}", package.display())))?;
    let provenance_file = provenance_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| package.with_file_name(identity.provenance_file_name(&driver)));
    let shown = provenance_file.display().to_string();
    let text = read_provenance(&provenance_file, &shown)?;
    let sha256 = crate::verify::package_sha256(package, None)?;
    let verified = crate::verify::verify_provenance(
        &text, &shown, keyring, policy, &driver, &identity, &sha256,
    )?;
    Ok(PackageProvenance {
        package: package.to_path_buf(),
        file_name,
        driver,
        identity,
        sha256,
        provenance_file,
        verified,
    })
}

/// Reads a provenance file, bounded; a missing or oversized file is a provenance refusal.
fn read_provenance(path: &Path, shown: &str) -> Result<String> {
    use std::io::Read;
    let limit = crate::verify::MAX_PROVENANCE_BYTES;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LoaderError::provenance(
                shown,
                "envelope",
                "the file does not exist: a package without provenance is refused",
            ));
        }
        Err(e) => return Err(LoaderError::io(format!("opening {shown}"), e)),
    };
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|e| LoaderError::io(format!("reading {shown}"), e))?;
    if text.len() as u64 > limit {
        return Err(LoaderError::provenance(
            shown,
            "envelope",
            format!("the file is larger than {limit} bytes"),
        ));
    }
    Ok(text)
}

/// The human-readable summary of a verified provenance: what was built, from what, by whom, and
/// which keys vouch for it.
pub fn provenance_summary(p: &PackageProvenance) -> String {
    use std::fmt::Write as _;
    let v = &p.verified;
    let id = &p.identity;
    let metadata = &v.statement.predicate.run_details.metadata;
    let mut out = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(out, "{:<18}{value}", format!("{label}:"));
    };
    line("package", &p.file_name);
    line("sha256", &p.sha256.to_hex());
    line("provenance", &p.provenance_file.display().to_string());
    line(
        "identity",
        &format!(
            "{} {} {}, kernel {}, {} {}",
            id.distribution(),
            id.distro_version(),
            id.arch(),
            id.kernel_release(),
            p.driver,
            id.driver_version()
        ),
    );
    line("source", &v.source_repository);
    line("tag", &id.driver_version().tag_ref());
    line("commit", v.source_commit.as_str());
    line("builder", &v.builder_id);
    line("invocation", &v.invocation_id);
    line("started", &metadata.started_on);
    line("finished", &metadata.finished_on);
    line("signed by", &crate::verify::key_list(&v.key_ids));
    let headers = v.headers();
    if headers.is_empty() {
        line("headers", "(none recorded)");
    } else {
        line("headers", &format!("{} package(s)", headers.len()));
        for (file, sha256) in headers {
            let _ = writeln!(out, "  {file}  sha256 {sha256}");
        }
    }
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(out, "{:<18}{value}", format!("{label}:"));
    };
    match v.dependency(ROOT_DEPENDENCY) {
        Some(root) => line(
            "build root",
            &format!(
                "{} sha256 {}",
                root.uri.as_deref().unwrap_or("(no uri)"),
                root.digest
                    .get("sha256")
                    .map(String::as_str)
                    .unwrap_or("(none)")
            ),
        ),
        None => line("build root", "(not recorded)"),
    }
    match v.dependency(COMPILER_DEPENDENCY) {
        Some(compiler) => {
            let annotation = |key: &str| {
                compiler
                    .annotations
                    .get(key)
                    .map(String::as_str)
                    .unwrap_or("(not recorded)")
                    .to_owned()
            };
            line(
                "compiler",
                compiler.uri.as_deref().unwrap_or("(not recorded)"),
            );
            line(
                "  kernel CC",
                &format!(
                    "CONFIG_CC_VERSION_TEXT={}",
                    annotation("kernel_cc_version_text")
                ),
            );
            line("  root report", &annotation("root_version_report"));
        }
        None => line("compiler", "(not recorded)"),
    }
    out
}

/// Extracts a package (all entries, or only kernel modules) into `target` with the packaging crate's safe
/// reader.
pub fn extract_package(
    package: &Path,
    target: &Path,
    ko_only: bool,
) -> Result<driver_package::ExtractReport> {
    let options = driver_package::ExtractOptions {
        selection: if ko_only {
            driver_package::Selection::KernelModules
        } else {
            driver_package::Selection::All
        },
        ..driver_package::ExtractOptions::default()
    };
    driver_package::extract(package, target, &options).map_err(|e| LoaderError::Package {
        package: package.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The package's modules, read, checked against the running kernel and ordered for loading. They are
/// read from the package into memory (through the packaging crate's checks), never written out.
pub fn prepare_modules(
    package: &VerifiedPackage,
    identity: &KernelIdentity,
    index: &HostModuleIndex,
) -> Result<Vec<PackageModule>> {
    let target = TargetKernel::running(identity.kernel_release().as_str());
    prepare_modules_for(package, identity, target, index)
}

/// [`prepare_modules`] against `target`, the identity's kernel: the running one, or one installed
/// and not booted yet (prefetch), whose own modules tree `index` describes.
pub fn prepare_modules_for(
    package: &VerifiedPackage,
    identity: &KernelIdentity,
    target: TargetKernel<'_>,
    index: &HostModuleIndex,
) -> Result<Vec<PackageModule>> {
    let unreadable = |e: driver_package::ReadError| LoaderError::Package {
        package: package.path.clone(),
        reason: e.to_string(),
    };
    let format = driver_package::detect_format(&package.path).map_err(unreadable)?;
    let expected = identity.distribution().package_format();
    if format != expected {
        return Err(LoaderError::verify(
            &package.file_name,
            format!(
                "is a .{} package but {} uses .{}",
                format.extension(),
                identity.distribution(),
                expected.extension()
            ),
        ));
    }
    let limits = driver_package::Limits {
        max_entry_bytes: MAX_MODULE_BYTES,
        ..driver_package::Limits::default()
    };
    let packaged =
        driver_package::read_kernel_modules(&package.path, &limits).map_err(unreadable)?;
    if packaged.is_empty() {
        return Err(LoaderError::Package {
            package: package.path.clone(),
            reason: "contains no kernel module (.ko, .ko.gz, .ko.xz, .ko.zst)".to_owned(),
        });
    }
    let modules = packaged
        .into_iter()
        .map(PackageModule::from_package)
        .collect::<Result<Vec<_>>>()?;
    let reference = index.reference_vermagic();
    match &reference {
        Some((path, vermagic)) => {
            info!(reference = %path.display(), vermagic, kernel = target.release, "comparing against {}'s own module", target.noun())
        }
        None => warn!(
            dir = %index.dir.display(),
            kernel = target.release,
            "no in-tree module found to compare the full vermagic with; checking the release only"
        ),
    }
    check_and_order(
        modules,
        identity.arch(),
        target,
        reference.as_ref().map(|(_, v)| v.as_str()),
        index,
    )
}

/// What happened (or would happen, in a dry run) to one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleAction {
    /// Already loaded with the same srcversion: nothing done.
    AlreadyLoaded,
    Loaded,
    /// Another version was unloaded first.
    Replaced {
        previous: String,
    },
    WouldLoad,
    WouldReplace {
        previous: String,
    },
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub identity: KernelIdentity,
    pub package: VerifiedPackage,
    pub modules: Vec<(String, ModuleAction)>,
}

fn version_label(srcversion: Option<&str>, version: Option<&str>) -> String {
    match (srcversion, version) {
        (Some(s), Some(v)) => format!("{v} (srcversion {s})"),
        (Some(s), None) => format!("srcversion {s}"),
        (None, Some(v)) => v.to_owned(),
        (None, None) => "unknown".to_owned(),
    }
}

enum Plan {
    Skip,
    Load,
    Replace(String),
}

/// Decides per module: skip when the same build is live, replace when allowed, else a conflict.
fn plan(modules: &[PackageModule], kernel: &dyn KernelModules, replace: bool) -> Result<Vec<Plan>> {
    modules
        .iter()
        .map(|module| {
            let Some(live) = kernel.loaded(&module.name) else {
                return Ok(Plan::Load);
            };
            let wanted_src = module.info.srcversion();
            let same = match (wanted_src, live.srcversion.as_deref()) {
                (Some(w), Some(l)) => w == l,
                _ => {
                    module.info.version().is_some()
                        && module.info.version() == live.version.as_deref()
                }
            };
            if same {
                return Ok(Plan::Skip);
            }
            let loaded = version_label(live.srcversion.as_deref(), live.version.as_deref());
            let wanted = version_label(wanted_src, module.info.version());
            if live.initstate.is_none() {
                return Err(LoaderError::VersionConflict {
                    module: format!(
                        "{} (built into the kernel, cannot be replaced)",
                        module.name
                    ),
                    loaded,
                    wanted,
                });
            }
            if replace {
                Ok(Plan::Replace(loaded))
            } else {
                Err(LoaderError::VersionConflict {
                    module: module.name.clone(),
                    loaded,
                    wanted,
                })
            }
        })
        .collect()
}

/// Loads checked, ordered modules according to the mode. `package` is the verified package file (host mode
/// installs it). Every module about to be loaded first passes the signature pre-check (dry runs too):
/// when the running kernel enforces module signatures, an unsigned module, or one signed by none of the
/// kernel's visible trusted keys, is refused before anything changes. A signature refusal by the kernel
/// itself is explained the same way.
pub fn load_modules(
    config: &LoaderConfig,
    package: &VerifiedPackage,
    modules: &[PackageModule],
    index: &HostModuleIndex,
    kernel: &dyn KernelModules,
    tools: &dyn HostTools,
) -> Result<Vec<(String, ModuleAction)>> {
    let plans = plan(modules, kernel, config.replace)?;
    if plans.iter().all(|p| matches!(p, Plan::Skip)) {
        info!(
            "every module of the package is already loaded with the same srcversion; nothing to do"
        );
        return Ok(modules
            .iter()
            .map(|m| (m.name.clone(), ModuleAction::AlreadyLoaded))
            .collect());
    }
    let signatures = config.signature_check();
    for (module, plan) in modules.iter().zip(&plans) {
        if !matches!(plan, Plan::Skip) {
            signatures.precheck(&module.name, &module.image)?;
        }
    }
    if config.dry_run {
        return Ok(modules
            .iter()
            .zip(&plans)
            .map(|(m, p)| {
                let action = match p {
                    Plan::Skip => ModuleAction::AlreadyLoaded,
                    Plan::Load => ModuleAction::WouldLoad,
                    Plan::Replace(previous) => ModuleAction::WouldReplace {
                        previous: previous.clone(),
                    },
                };
                (m.name.clone(), action)
            })
            .collect());
    }
    if config.mode == Mode::Host {
        let format = package_format(&package.path)?;
        tools.install(&package.path, format)?;
    }
    for (module, plan) in modules.iter().zip(&plans).rev() {
        if let Plan::Replace(previous) = plan {
            info!(
                module = module.name,
                previous, "unloading the other version"
            );
            match config.mode {
                Mode::Host => tools.modprobe_remove(&module.name)?,
                Mode::Container => kernel.unload(&module.name)?,
            }
        }
    }
    if config.mode == Mode::Container {
        load_host_dependencies(modules, index, kernel)?;
    }
    let mut actions = Vec::new();
    for (module, plan) in modules.iter().zip(&plans) {
        let action = match plan {
            Plan::Skip => {
                actions.push((module.name.clone(), ModuleAction::AlreadyLoaded));
                continue;
            }
            Plan::Load => ModuleAction::Loaded,
            Plan::Replace(previous) => ModuleAction::Replaced {
                previous: previous.clone(),
            },
        };
        let explain = |error| signatures.explain_kernel_refusal(&module.name, &module.image, error);
        match config.mode {
            Mode::Host => tools.modprobe(&module.name).map_err(explain)?,
            Mode::Container => {
                if kernel.load(&module.name, &module.image).map_err(explain)?
                    == LoadOutcome::AlreadyPresent
                {
                    warn!(
                        module = module.name,
                        "the kernel reports the module as already present (raced with another loader?)"
                    );
                }
            }
        }
        confirm_live(module, kernel)?;
        info!(module = module.name, action = ?action, "module loaded");
        actions.push((module.name.clone(), action));
    }
    Ok(actions)
}

fn package_format(path: &Path) -> Result<PackageFormat> {
    driver_package::detect_format(path).map_err(|e| LoaderError::Package {
        package: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// After loading, the kernel must report the module live with the package's srcversion; otherwise
/// (modprobe found another copy, e.g. in `extra/`) the run failed.
fn confirm_live(module: &PackageModule, kernel: &dyn KernelModules) -> Result<()> {
    let live = kernel
        .loaded(&module.name)
        .ok_or_else(|| LoaderError::Load {
            module: module.name.clone(),
            reason: "not present in /sys/module after loading".to_owned(),
        })?;
    if let (Some(wanted), Some(got)) = (module.info.srcversion(), live.srcversion.as_deref())
        && wanted != got
    {
        return Err(LoaderError::Load {
            module: module.name.clone(),
            reason: format!(
                "the kernel runs srcversion {got} but the package carries {wanted} (another copy of the module was loaded)"
            ),
        });
    }
    Ok(())
}

/// Loads host modules that package modules depend on and that are not live yet, in dependency order,
/// the way modprobe would (container mode has no modprobe of its own to rely on).
fn load_host_dependencies(
    modules: &[PackageModule],
    index: &HostModuleIndex,
    kernel: &dyn KernelModules,
) -> Result<()> {
    let in_package: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    for module in modules {
        for dep in module.info.depends() {
            if in_package.contains(&dep.as_str()) || index.is_loaded(&dep) {
                continue;
            }
            let chain = index.load_chain(&dep).ok_or_else(|| {
                LoaderError::incompatible(
                    &module.name,
                    format!("dependency {dep} is not installed for this kernel"),
                )
            })?;
            for path in chain {
                let file_name = path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let Some(name) = crate::modinfo::module_name_from_file_name(&file_name) else {
                    continue;
                };
                if kernel.loaded(&name).is_some() {
                    continue;
                }
                info!(module = name, path = %path.display(), "loading host dependency");
                let image = read_module_image(&path)?;
                kernel.load(&name, &image)?;
            }
        }
    }
    Ok(())
}

/// What a run learned as it went, kept whatever its outcome: what the node report is made of.
#[derive(Debug, Clone, Default)]
pub struct RunProgress {
    /// Set once the host was identified.
    pub identification: Option<Identification>,
    /// Set once a verified package was obtained.
    pub package: Option<VerifiedPackage>,
    /// How long getting the package took (cache, download, or build and download), set when the
    /// fetch step ended, successfully or not.
    pub fetch_time: Option<Duration>,
}

/// Runs the whole flow.
pub fn run(
    config: &LoaderConfig,
    kernel: &dyn KernelModules,
    tools: &dyn HostTools,
) -> Result<RunReport> {
    run_tracked(config, kernel, tools, &mut RunProgress::default())
}

/// Runs the whole flow, recording in `progress` what it learned, also when it fails.
///
/// Nothing here reaches the network before the cache lookup: identification reads files, and the
/// fetch step looks for a verified cached copy before its HTTP client sends anything (creating the
/// client resolves no name), so a node rebooted into a prefetched kernel loads offline.
pub fn run_tracked(
    config: &LoaderConfig,
    kernel: &dyn KernelModules,
    tools: &dyn HostTools,
    progress: &mut RunProgress,
) -> Result<RunReport> {
    let id = identify(config)?;
    info!(identity = %id.identity.cache_key(), package = id.package_file_name, mode = %config.mode, "identified host");
    progress.identification = Some(id.clone());
    let started = Instant::now();
    let fetched = fetch(config, &id.identity);
    progress.fetch_time = Some(started.elapsed());
    let package = fetched?;
    progress.package = Some(package.clone());
    let index = HostModuleIndex::load(
        &config
            .modules_root
            .join(id.identity.kernel_release().as_str()),
        &config.sys_root,
    );
    let modules = prepare_modules(&package, &id.identity, &index)?;
    let actions = load_modules(config, &package, &modules, &index, kernel, tools)?;
    Ok(RunReport {
        identity: id.identity,
        package,
        modules: actions,
    })
}

#[cfg(test)]
mod tests {
    use integrity::SecretKey;
    use integrity::facts::{BuildFacts, CompilerFacts, HeaderPackage, RootImage};
    use integrity::provenance::BuildProvenance;
    use kernel_id::{IdentityInput, SourceCommit};

    use super::*;
    use crate::FailureKind;

    const REPO: &str = "https://github.com/example/example-driver";
    const BUILDER: &str = "urn:kdriver:builder:test";
    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn identity() -> KernelIdentity {
        KernelIdentity::from_input(&IdentityInput {
            kernel_version: "6.1.0-47-amd64".to_owned(),
            architecture: "x86_64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: Some("12".to_owned()),
            driver_version: "v0.1.2".to_owned(),
        })
        .expect("valid")
    }

    fn policy() -> ProvenancePolicy {
        ProvenancePolicy {
            expected_source_repository: REPO.to_owned(),
            allowed_builders: vec![BUILDER.to_owned()],
            pinned_commit: None,
        }
    }

    /// A package file, its provenance beside it, and the keyring that trusts its signer.
    fn signed_package(dir: &Path) -> (PathBuf, Keyring) {
        let key = SecretKey::generate(&dir.join("k"), &dir.join("k.pub")).expect("key");
        let mut ring = Keyring::new();
        ring.insert(key.public().clone(), "test").expect("insert");
        let driver = DriverName::parse("example-driver").expect("driver");
        let package = dir.join(identity().package_file_name(&driver));
        std::fs::write(&package, b"package bytes").expect("write");
        let provenance = BuildProvenance {
            driver: driver.clone(),
            identity: identity(),
            package_sha256: integrity::sha256_bytes(b"package bytes"),
            source_repository: REPO.to_owned(),
            source_commit: SourceCommit::parse(COMMIT).expect("commit"),
            facts: BuildFacts {
                headers: vec![HeaderPackage {
                    name: "linux-headers-6.1.0-47-amd64".to_owned(),
                    version: "6.1.188-1".to_owned(),
                    file_name: "linux-headers-6.1.0-47-amd64_6.1.188-1_amd64.deb".to_owned(),
                    uri: None,
                    sha256: "ab".repeat(32),
                }],
                compiler: CompilerFacts {
                    name: "gcc-12".to_owned(),
                    kernel_cc_version_text: "gcc-12 (Debian 12.2.0-14) 12.2.0".to_owned(),
                    root_version_report: "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0".to_owned(),
                },
            },
            root: RootImage {
                uri: "mmdebstrap:debian/bookworm/amd64".to_owned(),
                sha256: "cd".repeat(32),
            },
            builder_id: BUILDER.to_owned(),
            invocation_id: "b-7".to_owned(),
            started_on: "2026-12-03T10:00:00Z".to_owned(),
            finished_on: "2026-12-03T10:02:00Z".to_owned(),
        };
        std::fs::write(
            dir.join(identity().provenance_file_name(&driver)),
            provenance.signed_file(&key),
        )
        .expect("write provenance");
        (package, ring)
    }

    #[test]
    fn a_package_provenance_verifies_and_summarizes_every_fact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (package, ring) = signed_package(dir.path());
        let verified =
            verify_package_provenance(&package, None, &ring, &policy()).expect("verifies");
        assert_eq!(verified.driver.to_string(), "example-driver");
        assert_eq!(
            verified.sha256,
            integrity::sha256_bytes(b"package bytes"),
            "the package's own digest"
        );
        let summary = provenance_summary(&verified);
        for expected in [
            format!("package:          {}", verified.file_name),
            format!("sha256:           {}", verified.sha256),
            "identity:         debian 12 x86_64, kernel 6.1.0-47-amd64, example-driver v0.1.2"
                .to_owned(),
            format!("source:           {REPO}"),
            "tag:              refs/tags/v0.1.2".to_owned(),
            format!("commit:           {COMMIT}"),
            format!("builder:          {BUILDER}"),
            "invocation:       b-7".to_owned(),
            "started:          2026-12-03T10:00:00Z".to_owned(),
            "finished:         2026-12-03T10:02:00Z".to_owned(),
            format!("signed by:        {}", ring.describe()),
            format!(
                "  linux-headers-6.1.0-47-amd64_6.1.188-1_amd64.deb  sha256 {}",
                "ab".repeat(32)
            ),
            format!(
                "build root:       mmdebstrap:debian/bookworm/amd64 sha256 {}",
                "cd".repeat(32)
            ),
            "compiler:         gcc-12".to_owned(),
            "  kernel CC:      CONFIG_CC_VERSION_TEXT=gcc-12 (Debian 12.2.0-14) 12.2.0".to_owned(),
            "  root report:    gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0".to_owned(),
        ] {
            assert!(
                summary.lines().any(|line| line == expected),
                "{expected:?} missing from:\n{summary}"
            );
        }
    }

    mod signature_precheck {
        use std::cell::RefCell;

        use kernel_id::ReleaseLayout;

        use super::*;
        use crate::compat::PackageModule;
        use crate::kernel::LoadedModule;
        use crate::modinfo::ModInfo;
        use crate::modinfo::tests::{modinfo_bytes, tiny_module};
        use crate::module_signature::tests::signed_by;

        /// Records what it was asked to load; refuses every load with `refuse` when set.
        #[derive(Default)]
        struct Kernel {
            loaded: RefCell<Vec<String>>,
            refuse: Option<nix::errno::Errno>,
        }

        impl KernelModules for Kernel {
            fn loaded(&self, name: &str) -> Option<LoadedModule> {
                self.loaded
                    .borrow()
                    .iter()
                    .any(|n| n == name)
                    .then(|| LoadedModule {
                        name: name.to_owned(),
                        srcversion: None,
                        version: None,
                        initstate: Some("live".to_owned()),
                    })
            }
            fn load(&self, name: &str, _image: &[u8]) -> Result<LoadOutcome> {
                if let Some(errno) = self.refuse {
                    return Err(crate::kernel::load_error(name, errno));
                }
                self.loaded.borrow_mut().push(name.to_owned());
                Ok(LoadOutcome::Loaded)
            }
            fn unload(&self, _name: &str) -> Result<()> {
                Ok(())
            }
        }

        /// Records installs and modprobes; modprobe fails with `modprobe_error` when set.
        #[derive(Default)]
        struct Tools {
            calls: RefCell<Vec<String>>,
            modprobe_error: Option<String>,
        }

        impl HostTools for Tools {
            fn install(&self, package: &Path, _format: PackageFormat) -> Result<()> {
                self.calls
                    .borrow_mut()
                    .push(format!("install {}", package.display()));
                Ok(())
            }
            fn modprobe(&self, name: &str) -> Result<()> {
                self.calls.borrow_mut().push(format!("modprobe {name}"));
                match &self.modprobe_error {
                    Some(text) => Err(LoaderError::Load {
                        module: name.to_owned(),
                        reason: text.clone(),
                    }),
                    None => Ok(()),
                }
            }
            fn modprobe_remove(&self, name: &str) -> Result<()> {
                self.calls.borrow_mut().push(format!("modprobe -r {name}"));
                Ok(())
            }
        }

        struct Setup {
            dir: tempfile::TempDir,
            package: VerifiedPackage,
        }

        impl Setup {
            fn new(sig_enforce: &str) -> Setup {
                let dir = tempfile::tempdir().expect("tempdir");
                let params = dir.path().join("sys/module/module/parameters");
                std::fs::create_dir_all(&params).expect("mkdir");
                std::fs::write(params.join("sig_enforce"), format!("{sig_enforce}\n"))
                    .expect("write");
                std::fs::create_dir_all(dir.path().join("proc")).expect("mkdir");
                let path = dir.path().join("p.deb");
                std::fs::write(&path, b"!<arch>\nnot really").expect("write");
                Setup {
                    package: VerifiedPackage {
                        path,
                        file_name: "p.deb".to_owned(),
                        sha256: integrity::sha256_bytes(b""),
                        signature: None,
                        provenance: None,
                        from_cache: false,
                        built_on_demand: false,
                        build_wait: None,
                    },
                    dir,
                }
            }

            fn config(&self, mode: Mode, dry_run: bool) -> LoaderConfig {
                LoaderConfig {
                    driver: DriverName::parse("example-driver").expect("driver"),
                    driver_version: DriverVersion::parse("v0.1.2").expect("version"),
                    host_paths: HostPaths {
                        os_release: vec![],
                        proc_root: Some(self.dir.path().join("proc")),
                        machine_id: vec![],
                    },
                    source: ArtifactSource {
                        base_url: "http://127.0.0.1:9".to_owned(),
                        layout: ReleaseLayout::PerArtifact,
                        token: None,
                        max_package_bytes: 1,
                    },
                    build_service: None,
                    trust: TrustPolicy::InsecureSkipSignature,
                    http: HttpSettings::default(),
                    cache_dir: self.dir.path().join("cache"),
                    deadline: Duration::from_secs(1),
                    modules_root: self.dir.path().join("lib/modules"),
                    boot_dir: self.dir.path().join("boot"),
                    sys_root: self.dir.path().join("sys"),
                    mode,
                    replace: false,
                    dry_run,
                    skip_module_signature_precheck: false,
                }
            }
        }

        fn module(signed: bool) -> PackageModule {
            let image = tiny_module(
                &modinfo_bytes(&["name=example_driver", "vermagic=6.1.0-47-amd64 SMP "]),
                goblin::elf::header::ET_REL,
            );
            let info = ModInfo::from_elf(&image).expect("valid");
            PackageModule {
                path: PathBuf::from("example_driver.ko"),
                name: "example_driver".to_owned(),
                info,
                image: if signed {
                    signed_by(&image, "someone else", &[1, 2])
                } else {
                    image
                },
            }
        }

        #[test]
        fn an_unsigned_module_never_reaches_an_enforcing_kernel_in_either_mode() {
            let setup = Setup::new("Y");
            let index = HostModuleIndex::default();
            for mode in [Mode::Container, Mode::Host] {
                for dry_run in [false, true] {
                    let (kernel, tools) = (Kernel::default(), Tools::default());
                    let err = load_modules(
                        &setup.config(mode, dry_run),
                        &setup.package,
                        &[module(false)],
                        &index,
                        &kernel,
                        &tools,
                    )
                    .expect_err("refused");
                    assert_eq!(
                        err.kind().exit_code(),
                        11,
                        "{mode} dry_run={dry_run}: {err}"
                    );
                    assert!(kernel.loaded.borrow().is_empty(), "nothing loaded");
                    assert!(
                        tools.calls.borrow().is_empty(),
                        "nothing installed: {:?}",
                        tools.calls
                    );
                }
            }
            // Not enforcing: loaded.
            let setup = Setup::new("N");
            let kernel = Kernel::default();
            let actions = load_modules(
                &setup.config(Mode::Container, false),
                &setup.package,
                &[module(false)],
                &index,
                &kernel,
                &Tools::default(),
            )
            .expect("not enforcing");
            assert_eq!(
                actions,
                vec![("example_driver".to_owned(), ModuleAction::Loaded)]
            );
            assert_eq!(*kernel.loaded.borrow(), vec!["example_driver".to_owned()]);
        }

        #[test]
        fn the_kernels_refusal_is_exit_11_with_the_signer_in_both_modes() {
            // Keys not visible: the pre-check lets a signed module through, the kernel refuses it.
            let setup = Setup::new("Y");
            let index = HostModuleIndex::default();
            let kernel = Kernel {
                refuse: Some(nix::errno::Errno::EKEYREJECTED),
                ..Kernel::default()
            };
            let err = load_modules(
                &setup.config(Mode::Container, false),
                &setup.package,
                &[module(true)],
                &index,
                &kernel,
                &Tools::default(),
            )
            .expect_err("kernel refuses");
            assert_eq!(err.kind().exit_code(), 11);
            let text = err.to_string();
            assert!(
                text.contains("the kernel refused the module's signature")
                    && text.contains("Key was rejected by service")
                    && text.contains("\"someone else\" (key serial 01:02, sha256)")
                    && text.contains("module.sig_enforce=Y")
                    && text.contains("mokutil --import module-signing-cert.der"),
                "{text}"
            );

            let tools = Tools {
                modprobe_error: Some(
                    "modprobe failed (exit status: 1): modprobe: ERROR: could not insert \
                     'example_driver': Key was rejected by service"
                        .to_owned(),
                ),
                ..Tools::default()
            };
            let err = load_modules(
                &setup.config(Mode::Host, false),
                &setup.package,
                &[module(true)],
                &index,
                &Kernel::default(),
                &tools,
            )
            .expect_err("modprobe refused");
            assert_eq!(err.kind().exit_code(), 11, "{err}");
            assert!(err.to_string().contains("\"someone else\""), "{err}");

            // Any other load failure keeps its own exit code.
            let kernel = Kernel {
                refuse: Some(nix::errno::Errno::ENOEXEC),
                ..Kernel::default()
            };
            let err = load_modules(
                &setup.config(Mode::Container, false),
                &setup.package,
                &[module(true)],
                &index,
                &kernel,
                &Tools::default(),
            )
            .expect_err("ENOEXEC");
            assert_eq!(err.kind().exit_code(), 8, "{err}");
        }
    }

    #[test]
    fn a_missing_or_foreign_provenance_is_refused_with_exit_10() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (package, ring) = signed_package(dir.path());
        let err = verify_package_provenance(
            &package,
            Some(&dir.path().join("absent.intoto.jsonl")),
            &ring,
            &policy(),
        )
        .expect_err("missing");
        assert_eq!(err.kind(), FailureKind::Provenance);
        assert!(err.to_string().contains("does not exist"), "{err}");

        // The package changed after its provenance was made.
        std::fs::write(&package, b"other bytes").expect("write");
        let err =
            verify_package_provenance(&package, None, &ring, &policy()).expect_err("another build");
        assert!(
            matches!(&err, LoaderError::Provenance { field, .. } if field == "subject.digest.sha256"),
            "{err}"
        );

        // A file name that is no identity is a usage error.
        let renamed = dir.path().join("renamed.deb");
        std::fs::write(&renamed, b"package bytes").expect("write");
        let err = verify_package_provenance(&renamed, None, &ring, &policy()).expect_err("name");
        assert_eq!(err.kind(), FailureKind::Config);
    }
}
