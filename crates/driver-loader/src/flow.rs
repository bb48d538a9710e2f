//! The whole loader run: identify -> fetch (or build) -> verify -> extract and check modules -> install
//! and/or load, idempotently. Each step is also callable on its own (the CLI's `identify`, `fetch`,
//! `extract`, `inspect`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kernel_id::{DriverName, DriverVersion, KernelIdentity, PackageFormat};
use tracing::{info, warn};

use crate::compat::{HostModules, PackageModule, check_and_order};
use crate::error::{LoaderError, Result};
use crate::fetch::{
    ArtifactSource, ArtifactUrls, BuildService, Fetcher, TrustPolicy, VerifiedPackage,
};
use crate::host::{HostFacts, HostPaths};
use crate::http::{Deadline, HttpClient, HttpSettings};
use crate::install::HostTools;
use crate::kernel::{HostModuleIndex, KernelModules, LoadOutcome};
use crate::modinfo::read_module_image;

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
    /// `/sys`.
    pub sys_root: PathBuf,
    pub mode: Mode,
    /// Unload and replace a loaded module of another version.
    pub replace: bool,
    /// Do everything except changing the kernel or the package database.
    pub dry_run: bool,
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
    let client = HttpClient::new(config.http.clone());
    let fetcher = Fetcher {
        client: &client,
        source: &config.source,
        build_service: config.build_service.as_ref(),
        trust: &config.trust,
        cache_root: &config.cache_dir,
    };
    fetcher.fetch(&config.driver, identity, &Deadline::after(config.deadline))
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

/// The package's modules, read, checked against the running kernel and ordered for loading. The package is
/// extracted into a private directory under `work_dir` that is removed afterwards.
pub fn prepare_modules(
    package: &VerifiedPackage,
    identity: &KernelIdentity,
    work_dir: &Path,
    index: &HostModuleIndex,
) -> Result<Vec<PackageModule>> {
    let format =
        driver_package::detect_format(&package.path).map_err(|e| LoaderError::Package {
            package: package.path.clone(),
            reason: e.to_string(),
        })?;
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
    std::fs::create_dir_all(work_dir)
        .map_err(|e| LoaderError::io(format!("creating {}", work_dir.display()), e))?;
    let scratch = tempfile::Builder::new()
        .prefix(".extract-")
        .tempdir_in(work_dir)
        .map_err(|e| {
            LoaderError::io(
                format!("creating a private directory in {}", work_dir.display()),
                e,
            )
        })?;
    let root = scratch.path().join("root");
    let report = extract_package(&package.path, &root, true)?;
    if report.files.is_empty() {
        return Err(LoaderError::Package {
            package: package.path.clone(),
            reason: "contains no kernel module (.ko, .ko.gz, .ko.xz, .ko.zst)".to_owned(),
        });
    }
    let mut modules = Vec::new();
    for relative in &report.files {
        modules.push(PackageModule::read(&root.join(relative))?);
    }
    let reference = index.reference_vermagic();
    match &reference {
        Some((path, vermagic)) => {
            info!(reference = %path.display(), vermagic, "comparing against the running kernel's own module")
        }
        None => warn!(
            dir = %index.dir.display(),
            "no in-tree module found to compare the full vermagic with; checking the release only"
        ),
    }
    check_and_order(
        modules,
        identity.arch(),
        identity.kernel_release().as_str(),
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
/// installs it).
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
        match config.mode {
            Mode::Host => tools.modprobe(&module.name)?,
            Mode::Container => {
                if kernel.load(&module.name, &module.image)? == LoadOutcome::AlreadyPresent {
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

/// Runs the whole flow.
pub fn run(
    config: &LoaderConfig,
    kernel: &dyn KernelModules,
    tools: &dyn HostTools,
) -> Result<RunReport> {
    let id = identify(config)?;
    info!(identity = %id.identity.cache_key(), package = id.package_file_name, mode = %config.mode, "identified host");
    let package = fetch(config, &id.identity)?;
    let index = HostModuleIndex::load(
        &config
            .modules_root
            .join(id.identity.kernel_release().as_str()),
        &config.sys_root,
    );
    let modules = prepare_modules(&package, &id.identity, &config.cache_dir, &index)?;
    let actions = load_modules(config, &package, &modules, &index, kernel, tools)?;
    Ok(RunReport {
        identity: id.identity,
        package,
        modules: actions,
    })
}
