//! One build, start to finish: resolve headers -> compile -> (sign modules) -> package -> sign,
//! timing each phase so the benchmark and the build log can say where the time went; then write
//! what the build observed (`build-facts.json`, [`integrity::BuildFacts`]) beside the package.
//!
//! The source commit travels into the modules (`scmversion`, checked by [`compile`]) and the
//! package (the .deb control field [`driver_package::DEB_SOURCE_COMMIT_FIELD`], the rpm `VCS` tag).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use driver_package::{FileContent, PackageSpec, WriteOptions};
use integrity::{BUILD_FACTS_FILE, BuildFacts};
use kernel_id::{DriverName, KernelIdentity, SourceCommit};
use serde::Serialize;
use thiserror::Error;

use crate::artifact::{ArtifactError, SidecarFiles, write_sidecars};
use crate::compile::{self, CompileError, Kbuild, ModuleSigningKey};
use crate::headers::{HeaderChain, HeaderContext, HeaderOptions, HeadersError, ResolvedHeaders};
use crate::http::Http;
use crate::system::System;

/// The revision of the driver source being built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRevision {
    /// The full commit id (validated by kernel-id).
    pub commit: SourceCommit,
    /// Where the commit lives: a non-empty single line (checked by the CLI).
    pub repository: String,
}

/// Everything one build needs. All identity fields were validated by kernel-id.
#[derive(Debug)]
pub struct BuildRequest {
    pub identity: KernelIdentity,
    pub driver: DriverName,
    /// The source revision in `source`.
    pub revision: SourceRevision,
    /// Driver source directory (as this process sees it).
    pub source: PathBuf,
    /// Where the package and its sidecar files go (as this process sees it).
    pub out_dir: PathBuf,
    pub headers: HeaderOptions,
    /// The module-signing key (already in memory, its file removed when it was a per-build copy)
    /// for the kernel's `sign-file` (Secure Boot); see [`compile`]'s module-signing section.
    pub module_signing: Option<ModuleSigningKey>,
    /// The package signing key (`integrity`'s minisign key; loaded 0600-only by the CLI).
    pub minisign_key: Option<integrity::SecretKey>,
    /// Parallel make jobs.
    pub jobs: usize,
}

#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Headers(#[from] HeadersError),
    #[error("compile: {0}")]
    Compile(#[from] CompileError),
    #[error("package: {0}")]
    Package(#[from] driver_package::WriteError),
    #[error("package spec: {0}")]
    Spec(#[from] driver_package::SpecError),
    #[error("signature/digest: {0}")]
    Artifact(#[from] ArtifactError),
    #[error("build facts: {0}")]
    Facts(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The phases reported by the build summary and the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Headers,
    Compile,
    ModuleSign,
    Package,
    Sign,
}

/// Time spent in one phase.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseTime {
    pub phase: Phase,
    pub seconds: f64,
}

/// What a successful build produced.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BuildOutcome {
    pub package: PathBuf,
    pub digest: PathBuf,
    pub signature: Option<PathBuf>,
    pub modules: Vec<String>,
    pub headers_dir: PathBuf,
    pub headers_source: String,
    pub source_commit: String,
    pub source_repository: String,
    /// `build-facts.json`: the header packages (with digests) and the compiler.
    pub build_facts: PathBuf,
    pub phases: Vec<PhaseTime>,
}

fn timed<T, E>(
    phases: &mut Vec<PhaseTime>,
    phase: Phase,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let start = Instant::now();
    let result = f();
    let elapsed: Duration = start.elapsed();
    tracing::info!(phase = ?phase, seconds = elapsed.as_secs_f64(), ok = result.is_ok(), "phase finished");
    phases.push(PhaseTime {
        phase,
        seconds: elapsed.as_secs_f64(),
    });
    result
}

/// Runs the whole build in `system`.
pub fn build(
    system: &System,
    http: &dyn Http,
    request: &BuildRequest,
) -> Result<BuildOutcome, BuildError> {
    let identity = &request.identity;
    tracing::info!(
        identity = %identity.cache_key(),
        driver = %request.driver,
        source_commit = %request.revision.commit,
        source_repository = %request.revision.repository,
        "build starting"
    );
    let io = |what: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |source| BuildError::Io { what, path, source }
    };
    std::fs::create_dir_all(&request.out_dir)
        .map_err(io("creating output directory", &request.out_dir))?;
    let downloads = system
        .scratch_dir("downloads")
        .map_err(io("creating scratch directory", system.root()))?;
    let work = system
        .scratch_dir("build")
        .map_err(io("creating scratch directory", system.root()))?;
    let result = run_phases(system, http, request, &downloads, &work);
    for dir in [&downloads.host, &work.host] {
        if let Err(error) = std::fs::remove_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), %error, "could not remove scratch directory");
        }
    }
    result
}

fn run_phases(
    system: &System,
    http: &dyn Http,
    request: &BuildRequest,
    downloads: &crate::system::ScratchDir,
    work: &crate::system::ScratchDir,
) -> Result<BuildOutcome, BuildError> {
    let identity = &request.identity;
    let mut phases = Vec::new();
    let chain = HeaderChain::for_identity(identity, &request.headers);
    let ctx = HeaderContext {
        identity,
        system,
        http,
        downloads,
    };
    let headers: ResolvedHeaders = timed(&mut phases, Phase::Headers, || chain.resolve(&ctx))?;
    let kbuild = Kbuild {
        identity,
        driver: &request.driver,
        headers_dir: &headers.dir,
        source_commit: &request.revision.commit,
        jobs: request.jobs,
    };
    let compiled = timed(&mut phases, Phase::Compile, || {
        compile::compile(system, work, &kbuild, &request.source)
    })?;
    let compiler = crate::facts::compiler_facts(system, &headers.dir, &compiled.compiler)
        .map_err(BuildError::Facts)?;
    tracing::info!(
        compiler = %compiler.name,
        root_version_report = %compiler.root_version_report,
        kernel_cc_version_text = %compiler.kernel_cc_version_text,
        "compiler"
    );
    if let Some(signing) = &request.module_signing {
        let signed = timed(&mut phases, Phase::ModuleSign, || {
            compile::sign_modules(system, work, &headers.dir, &compiled, signing)
        })?;
        tracing::info!(
            modules = signed.modules,
            hash = signed.hash.as_str(),
            by_subject_key_identifier = signed.by_subject_key_identifier,
            "modules signed"
        );
    }
    let package = timed(&mut phases, Phase::Package, || {
        write_package(
            &request.driver,
            identity,
            &request.revision.commit,
            &compiled.modules,
            &request.out_dir,
        )
    })?;
    let sidecars: SidecarFiles = timed(&mut phases, Phase::Sign, || {
        write_sidecars(
            &package,
            &request.driver,
            identity,
            request.minisign_key.as_ref(),
        )
    })?;
    let modules = compiled
        .modules
        .iter()
        .filter_map(|m| m.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let build_facts = write_build_facts(
        &request.out_dir,
        &BuildFacts {
            headers: headers.packages,
            compiler,
        },
    )?;
    tracing::info!(package = %package.display(), "build finished");
    Ok(BuildOutcome {
        package,
        digest: sidecars.digest,
        signature: sidecars.signature,
        modules,
        headers_dir: headers.dir,
        headers_source: headers.source,
        source_commit: request.revision.commit.to_string(),
        source_repository: request.revision.repository.clone(),
        build_facts,
        phases,
    })
}

/// Writes `<out_dir>/build-facts.json` (a new file: a build never replaces another's facts).
pub fn write_build_facts(out_dir: &Path, facts: &BuildFacts) -> Result<PathBuf, BuildError> {
    let path = out_dir.join(BUILD_FACTS_FILE);
    let json = serde_json::to_vec_pretty(facts)
        .map_err(|error| BuildError::Facts(format!("serializing: {error}")))?;
    let io = |source| BuildError::Io {
        what: "writing",
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io)?;
    std::io::Write::write_all(&mut file, &json)
        .and_then(|()| std::io::Write::write_all(&mut file, b"\n"))
        .map_err(io)?;
    tracing::info!(file = %path.display(), headers = facts.headers.len(), "wrote the build facts");
    Ok(path)
}

fn write_package(
    driver: &DriverName,
    identity: &KernelIdentity,
    commit: &SourceCommit,
    modules: &[PathBuf],
    out_dir: &Path,
) -> Result<PathBuf, BuildError> {
    let files = modules.iter().map(|path| {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (name, FileContent::Path(path.clone()))
    });
    let mut spec = PackageSpec::for_driver(driver, identity, files)?;
    spec.source_commit = Some(commit.clone());
    let options = WriteOptions::default_for(spec.format);
    let file_name = identity.package_file_name(driver);
    Ok(driver_package::write_package_file(
        &spec, options, out_dir, &file_name,
    )?)
}
