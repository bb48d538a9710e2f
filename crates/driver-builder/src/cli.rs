//! The command line, a contract shared with build-root's local executor and the GitHub workflow:
//!
//! ```text
//! driver-builder build    --kernel-release R --arch A --distribution D [--distro-version V]
//!                         --driver-name N --driver-version DV --source DIR --out DIR
//!                         --source-commit COMMIT --source-repository URI
//!                         [--header-url URL]... [--snapshot-base URL]... [--koji-profile P]...
//!                         [--header-cache DIR]
//!                         [--module-sign-key PEM --module-sign-cert DER
//!                          [--module-sign-hash sha256|sha512] [--remove-module-sign-key]]
//!                         [--minisign-key FILE [--minisign-password-env VAR]] [--jobs N]
//!                         [--summary FILE]
//! driver-builder validate <the same identity flags>      # prints the normalized identity as JSON
//! driver-builder sign     --key FILE [--password-env VAR] PACKAGE
//! driver-builder attest   --package FILE --facts FILE
//!                         (--root-image-uri URI --root-image-sha256 HEX | --root-image FILE)
//!                         --source-repository URI --source-commit COMMIT
//!                         --builder-id ID --invocation-id ID
//!                         --started-on RFC3339 [--finished-on RFC3339]
//!                         --signing-key FILE [--password-env VAR]
//! ```
//!
//! Every identity flag is validated by kernel-id before anything else happens; a bad value exits
//! with status 2 and a message naming the field and the rule (as does a bad `--source-commit`,
//! which must be a full lowercase commit id, or a `--source-repository` that is empty or holds
//! control characters). Logs go to stderr (`RUST_LOG` filters them); `build` prints a JSON summary
//! (paths, source revision and per-phase seconds) on stdout and leaves `build-facts.json` in the
//! output directory.
//!
//! Secret keys are loaded by [`integrity::SecretKey::load`]: a key file readable by group or
//! others is refused (naming the file and its mode), and an encrypted key needs its password from
//! the environment variable named on the command line; nothing is ever prompted for. `sign` and
//! `attest` are for signers outside the build root (the GitHub workflow's signing step): `sign`
//! writes the package's signature (keeping a digest file the build already wrote when it agrees),
//! `attest` its build provenance (`<package>.intoto.jsonl`, see `docs/provenance.md`) and prints
//! the path it wrote. Neither replaces a file that is already there.
//!
//! The module-signing key (`--module-sign-key`, PEM, refused when readable by group or others like
//! every secret key) is read into memory before anything else runs; with
//! `--remove-module-sign-key` (the executor's per-build copy) its file is deleted at once. It is
//! written back to disk only for `sign-file`, after compilation (see `compile`'s module-signing
//! section).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Args, Parser, Subcommand};
use integrity::facts::{BuildFacts, RootImage};
use integrity::{KeyError, SecretKey};
use kernel_id::{DriverName, IdentityInput, KernelIdentity, ReleaseLayout, SourceCommit};
use serde::Serialize;

use crate::artifact::sign_existing_package;
use crate::attest::{Attestation, format_time, parse_root_digest, parse_time, write_provenance};
use crate::compile::{ModuleSignHash, ModuleSigningKey};
use crate::headers::{HeaderOptions, KojiProfile};
use crate::http::UreqHttp;
use crate::pipeline::{BuildRequest, SourceRevision, build};
use crate::system::System;

#[derive(Debug, Parser)]
#[command(
    name = "driver-builder",
    version,
    about = "Build one kernel driver artifact for one kernel identity"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Resolve headers, compile, package and sign.
    Build(Box<BuildArgs>),
    /// Validate an identity and print it, normalized, as JSON.
    Validate(IdentityArgs),
    /// Write <package>.minisig and <package>.sha256 next to an existing package.
    Sign(SignArgs),
    /// Write <package>.intoto.jsonl (signed build provenance) next to an existing package.
    Attest(Box<AttestArgs>),
}

#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// The kernel release (`uname -r`).
    #[arg(long)]
    pub kernel_release: String,
    /// x86_64|amd64|aarch64|arm64.
    #[arg(long)]
    pub arch: String,
    /// ubuntu|debian|fedora|centos|amazonlinux.
    #[arg(long)]
    pub distribution: String,
    /// The distribution's version; the pinned default when omitted.
    #[arg(long)]
    pub distro_version: Option<String>,
    /// The driver's name ([a-z0-9-]).
    #[arg(long)]
    pub driver_name: String,
    /// The driver version (v-prefixed semver).
    #[arg(long)]
    pub driver_version: String,
    /// How releases group artifacts: per-artifact or per-driver-version (names the release tag).
    #[arg(long, default_value = "per-artifact")]
    pub release_layout: String,
}

#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Driver source directory.
    #[arg(long)]
    pub source: PathBuf,
    /// Output directory for the package, its signature and digest.
    #[arg(long)]
    pub out: PathBuf,
    /// The full commit id of the driver source (passed to kbuild as KDRIVER_SOURCE_COMMIT, recorded
    /// in the package and checked in each module's scmversion).
    #[arg(long)]
    pub source_commit: String,
    /// The repository the commit belongs to (a URI; one line).
    #[arg(long)]
    pub source_repository: String,
    /// Explicit header package URL (repeatable), tried after the package manager.
    #[arg(long = "header-url")]
    pub header_urls: Vec<String>,
    /// Snapshot-style archive base URL (repeatable; Debian/Ubuntu).
    #[arg(long = "snapshot-base")]
    pub snapshot_bases: Vec<String>,
    /// Koji profile (repeatable): fedora, cbs, stream, or name=<hub url>,<topurl>.
    #[arg(long = "koji-profile")]
    pub koji_profiles: Vec<String>,
    /// The build host's header package cache for this kernel (the local executor mounts it
    /// read-only): `<sha256>.deb` files and their packages.json, tried before the package manager;
    /// every file is checked against its digest first.
    #[arg(long)]
    pub header_cache: Option<PathBuf>,
    /// PEM private key for the kernel's sign-file (mode 0600); read into memory before the build
    /// starts.
    #[arg(long, requires = "module_sign_cert")]
    pub module_sign_key: Option<PathBuf>,
    /// X.509 certificate of the module-signing key for the kernel's sign-file (DER, or PEM).
    #[arg(long, requires = "module_sign_key")]
    pub module_sign_cert: Option<PathBuf>,
    /// The hash sign-file signs with: sha256 (default) or sha512.
    #[arg(long, requires = "module_sign_key", value_parser = ["sha256", "sha512"])]
    pub module_sign_hash: Option<String>,
    /// The module-signing key file is a copy made for this build: delete it as soon as it is read,
    /// before the driver's build runs.
    #[arg(long, requires = "module_sign_key")]
    pub remove_module_sign_key: bool,
    /// minisign secret key for the package signature.
    #[arg(long)]
    pub minisign_key: Option<PathBuf>,
    /// Environment variable holding the minisign key's password.
    #[arg(long, requires = "minisign_key")]
    pub minisign_password_env: Option<String>,
    /// Parallel make jobs (default: available CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Also write the JSON summary printed on stdout to this file.
    #[arg(long)]
    pub summary: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct SignArgs {
    /// minisign secret key.
    #[arg(long)]
    pub key: PathBuf,
    /// Environment variable holding the key's password.
    #[arg(long)]
    pub password_env: Option<String>,
    /// The package to sign; its file name must follow kernel-id's naming.
    pub package: PathBuf,
}

#[derive(Debug, Clone, Args)]
#[command(group(
    ArgGroup::new("root").required(true).args(["root_image", "root_image_uri"])
))]
pub struct AttestArgs {
    /// The package; its identity and driver are read from its kernel-id file name, its digest is
    /// computed here.
    #[arg(long)]
    pub package: PathBuf,
    /// The builder's build-facts.json (header packages and compiler seen in the build root).
    #[arg(long)]
    pub facts: PathBuf,
    /// The build root: an image reference (e.g. ghcr.io/OWNER/debian:12).
    #[arg(long, requires = "root_image_sha256")]
    pub root_image_uri: Option<String>,
    /// The build root's digest: 64 hex digits (or sha256:<hex>), e.g. the image manifest digest.
    #[arg(long, requires = "root_image_uri")]
    pub root_image_sha256: Option<String>,
    /// The build root as a root-image.json file ({"uri": ..., "sha256": ...}).
    #[arg(long, conflicts_with_all = ["root_image_uri", "root_image_sha256"])]
    pub root_image: Option<PathBuf>,
    /// The driver's source repository (a URI; one line).
    #[arg(long)]
    pub source_repository: String,
    /// The full commit id that was built.
    #[arg(long)]
    pub source_commit: String,
    /// Who built it, e.g. https://github.com/OWNER/REPO/.github/workflows/driver-build.yml@REF.
    #[arg(long)]
    pub builder_id: String,
    /// The build id.
    #[arg(long)]
    pub invocation_id: String,
    /// When the build started (RFC 3339).
    #[arg(long)]
    pub started_on: String,
    /// When the build finished (RFC 3339); now when omitted.
    #[arg(long)]
    pub finished_on: Option<String>,
    /// minisign secret key that signs the provenance (mode 0600).
    #[arg(long)]
    pub signing_key: PathBuf,
    /// Environment variable holding the key's password.
    #[arg(long, requires = "signing_key")]
    pub password_env: Option<String>,
}

/// The normalized identity, as `validate` prints it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ValidatedIdentity {
    pub kernel_release: String,
    pub arch: String,
    pub debian_arch: String,
    pub rpm_arch: String,
    pub distribution: String,
    pub distro_version: String,
    pub package_format: String,
    pub driver_name: String,
    pub module_name: String,
    pub driver_version: String,
    pub package_name: String,
    pub package_version: String,
    pub package_file_name: String,
    pub signature_file_name: String,
    pub digest_file_name: String,
    pub cache_key: String,
    pub release_tag: String,
}

impl IdentityArgs {
    /// Parses every field with kernel-id.
    pub fn parse(&self) -> Result<(KernelIdentity, DriverName), kernel_id::IdError> {
        let identity = KernelIdentity::from_input(&IdentityInput {
            kernel_version: self.kernel_release.clone(),
            architecture: self.arch.clone(),
            distribution: self.distribution.clone(),
            distro_version: self.distro_version.clone(),
            driver_version: self.driver_version.clone(),
        })?;
        let driver = DriverName::parse(&self.driver_name)?;
        Ok((identity, driver))
    }
}

pub fn describe_identity(
    identity: &KernelIdentity,
    driver: &DriverName,
    layout: ReleaseLayout,
) -> ValidatedIdentity {
    ValidatedIdentity {
        kernel_release: identity.kernel_release().to_string(),
        arch: identity.arch().as_str().to_owned(),
        debian_arch: identity.arch().debian_name().to_owned(),
        rpm_arch: identity.arch().rpm_name().to_owned(),
        distribution: identity.distribution().as_str().to_owned(),
        distro_version: identity.distro_version().as_str().to_owned(),
        package_format: identity
            .distribution()
            .package_format()
            .extension()
            .to_owned(),
        driver_name: driver.as_str().to_owned(),
        module_name: driver.module_name(),
        driver_version: identity.driver_version().as_str().to_owned(),
        package_name: identity.package_name(driver),
        package_version: identity.package_version(),
        package_file_name: identity.package_file_name(driver),
        signature_file_name: identity.signature_file_name(driver),
        digest_file_name: identity.digest_file_name(driver),
        cache_key: identity.cache_key(),
        release_tag: layout.release_tag(driver, identity),
    }
}

/// An invalid command-line value that kernel-id does not own; exits with status 2 like an
/// [`kernel_id::IdError`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// `--source-repository`: non-empty, one line, no control characters (it reaches logs and JSON).
pub fn check_repository(uri: &str) -> Result<(), InvalidInput> {
    check_line("--source-repository", uri)
}

/// A free-form value that reaches logs and signed JSON: non-empty, one line, no control characters.
pub fn check_line(flag: &str, value: &str) -> Result<(), InvalidInput> {
    if value.trim().is_empty() {
        return Err(InvalidInput(format!("{flag}: must not be empty")));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(InvalidInput(format!(
            "{flag}: must be one line without control characters (found U+{:04X})",
            u32::from(c)
        )));
    }
    Ok(())
}

fn check_url(flag: &str, url: &str) -> Result<()> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        bail!("{flag}: '{url}' must be an http(s) URL without spaces");
    }
    Ok(())
}

fn password_from_env(var: Option<&String>) -> Result<Option<String>> {
    var.map(|name| {
        std::env::var(name).with_context(|| {
            format!("the minisign password variable {name} is not set (or not UTF-8)")
        })
    })
    .transpose()
}

/// Loads a minisign secret key with [`integrity::SecretKey::load`] (refused when readable by group
/// or others), its password, if any, read from the environment variable `password_env` names.
/// `password_flag` is the option that names that variable, for the hint when one is missing.
pub fn load_secret_key(
    path: &Path,
    password_env: Option<&String>,
    password_flag: &str,
) -> Result<SecretKey> {
    let password = password_from_env(password_env)?;
    SecretKey::load(path, password).map_err(|error| match error {
        KeyError::Encrypted { .. } => {
            anyhow::anyhow!("{error}; give its password with {password_flag} VAR")
        }
        other => anyhow::Error::new(other).context("loading the minisign secret key"),
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing the {what} {}", path.display()))
}

/// Turns validated `attest` arguments into an attestation: every value is checked (bad ones exit
/// 2, naming the flag) and the facts and root image files are read.
pub fn attestation(args: &AttestArgs) -> Result<Attestation> {
    check_repository(&args.source_repository)?;
    let source_commit = SourceCommit::parse(&args.source_commit)?;
    check_line("--builder-id", &args.builder_id)?;
    check_line("--invocation-id", &args.invocation_id)?;
    let started = parse_time(&args.started_on)
        .map_err(|reason| InvalidInput(format!("--started-on: {reason}")))?;
    let finished = match &args.finished_on {
        Some(text) => {
            parse_time(text).map_err(|reason| InvalidInput(format!("--finished-on: {reason}")))?
        }
        None => time::OffsetDateTime::now_utc().replace_nanosecond(0)?,
    };
    if finished < started {
        return Err(InvalidInput(format!(
            "--finished-on: {} is before --started-on {}",
            format_time(finished),
            format_time(started)
        ))
        .into());
    }
    let root = match (
        &args.root_image,
        &args.root_image_uri,
        &args.root_image_sha256,
    ) {
        (Some(path), _, _) => {
            let root: RootImage = read_json(path, "root image file")?;
            check_line("root image uri", &root.uri)?;
            let sha256 = parse_root_digest(&root.sha256)
                .map_err(|reason| InvalidInput(format!("{}: sha256: {reason}", path.display())))?;
            RootImage {
                uri: root.uri,
                sha256,
            }
        }
        (None, Some(uri), Some(sha256)) => {
            check_line("--root-image-uri", uri)?;
            RootImage {
                uri: uri.clone(),
                sha256: parse_root_digest(sha256)
                    .map_err(|reason| InvalidInput(format!("--root-image-sha256: {reason}")))?,
            }
        }
        _ => bail!("give --root-image FILE, or --root-image-uri with --root-image-sha256"),
    };
    let facts: BuildFacts = read_json(&args.facts, "build facts")?;
    Ok(Attestation {
        package: args.package.clone(),
        facts,
        root,
        source_repository: args.source_repository.clone(),
        source_commit,
        builder_id: args.builder_id.clone(),
        invocation_id: args.invocation_id.clone(),
        started_on: format_time(started),
        finished_on: format_time(finished),
    })
}

fn available_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Turns validated arguments into a build request.
pub fn build_request(args: &BuildArgs) -> Result<BuildRequest> {
    // First of all: a per-build copy of the module-signing key leaves the disk before anything
    // else can run.
    let module_signing = match (&args.module_sign_key, &args.module_sign_cert) {
        (Some(key), Some(cert)) => {
            let hash = match args.module_sign_hash.as_deref() {
                None => ModuleSignHash::default(),
                Some(name) => ModuleSignHash::parse(name).ok_or_else(|| {
                    InvalidInput(format!(
                        "--module-sign-hash: '{name}' is not sha256 or sha512"
                    ))
                })?,
            };
            Some(
                ModuleSigningKey::load(key, cert, hash, args.remove_module_sign_key)
                    .context("loading the module-signing key")?,
            )
        }
        _ => None,
    };
    let (identity, driver) = args.identity.parse()?;
    let commit = SourceCommit::parse(&args.source_commit)?;
    check_repository(&args.source_repository)?;
    for url in &args.header_urls {
        check_url("--header-url", url)?;
    }
    for url in &args.snapshot_bases {
        check_url("--snapshot-base", url)?;
    }
    let koji_profiles = args
        .koji_profiles
        .iter()
        .map(|spec| KojiProfile::parse(spec).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let minisign_key = match &args.minisign_key {
        Some(path) => Some(load_secret_key(
            path,
            args.minisign_password_env.as_ref(),
            "--minisign-password-env",
        )?),
        None => None,
    };
    Ok(BuildRequest {
        identity,
        driver,
        revision: SourceRevision {
            commit,
            repository: args.source_repository.clone(),
        },
        source: args.source.clone(),
        out_dir: args.out.clone(),
        headers: HeaderOptions {
            header_urls: args.header_urls.clone(),
            snapshot_bases: args.snapshot_bases.clone(),
            koji_profiles,
            header_cache: args.header_cache.clone(),
        },
        module_signing,
        minisign_key,
        jobs: args.jobs.unwrap_or_else(available_jobs),
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Build logs end up in files (executor logs, CI); colour codes only help a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Validate(args) => {
            let (identity, driver) = args.parse()?;
            let layout = ReleaseLayout::parse(&args.release_layout)?;
            let json =
                serde_json::to_string_pretty(&describe_identity(&identity, &driver, layout))?;
            println!("{json}");
        }
        Command::Build(args) => {
            let request = build_request(&args)?;
            let outcome = build(&System::local(), &UreqHttp::default(), &request)?;
            let json = serde_json::to_string_pretty(&outcome)?;
            if let Some(path) = &args.summary {
                std::fs::write(path, format!("{json}\n"))
                    .with_context(|| format!("writing the summary {}", path.display()))?;
            }
            println!("{json}");
        }
        Command::Sign(args) => {
            let key = load_secret_key(&args.key, args.password_env.as_ref(), "--password-env")?;
            let written = sign_existing_package(&args.package, &key)?;
            if let Some(signature) = &written.signature {
                println!("{}", signature.display());
            }
            println!("{}", written.digest.display());
        }
        Command::Attest(args) => {
            let attestation = attestation(&args)?;
            let key = load_secret_key(
                &args.signing_key,
                args.password_env.as_ref(),
                "--password-env",
            )?;
            let written = write_provenance(&attestation, &key)?;
            println!("{}", written.display());
        }
    }
    Ok(())
}

/// Entry point of the binary: exit 0 on success, 2 for invalid input, 1 for a failed build.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("driver-builder: error: {error:#}");
            if error.downcast_ref::<kernel_id::IdError>().is_some()
                || error.downcast_ref::<InvalidInput>().is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("driver-builder").chain(args.iter().copied()))
    }

    fn build_args(commit: &str, repository: &str) -> Result<Cli, clap::Error> {
        parse(&[
            "build",
            "--kernel-release",
            "6.1.0-47-amd64",
            "--arch",
            "x86_64",
            "--distribution",
            "debian",
            "--driver-name",
            "example-driver",
            "--driver-version",
            "v0.1.2",
            "--source",
            "/build/src",
            "--out",
            "/build/out",
            "--source-commit",
            commit,
            "--source-repository",
            repository,
        ])
    }

    #[test]
    fn the_source_revision_is_required_and_validated() {
        let request = |commit: &str, repository: &str| {
            let Command::Build(args) = build_args(commit, repository).expect("parses").command
            else {
                panic!("build expected")
            };
            build_request(&args)
        };
        assert!(request(COMMIT, "https://example.com/driver.git").is_ok());
        assert!(request(&"ab".repeat(32), "/srv/git/driver").is_ok());
        for bad_commit in ["0123abc", &COMMIT.to_uppercase(), &format!("{COMMIT};x")] {
            let error =
                request(bad_commit, "https://example.com/driver.git").expect_err(bad_commit);
            assert!(
                error.downcast_ref::<kernel_id::IdError>().is_some(),
                "{bad_commit}: {error}"
            );
            assert!(error.to_string().starts_with("source_commit:"), "{error}");
        }
        for bad_repository in ["", "  ", "https://x/a\nb", "https://x/\u{7f}"] {
            let error = request(COMMIT, bad_repository).expect_err(bad_repository);
            assert!(
                error.downcast_ref::<InvalidInput>().is_some(),
                "{bad_repository:?}: {error}"
            );
            assert!(
                error.to_string().starts_with("--source-repository:"),
                "{error}"
            );
        }
        // Both flags are required.
        let without: Vec<&str> = [
            "build",
            "--kernel-release",
            "6.1.0-47-amd64",
            "--arch",
            "x86_64",
            "--distribution",
            "debian",
            "--driver-name",
            "example-driver",
            "--driver-version",
            "v0.1.2",
            "--source",
            "s",
            "--out",
            "o",
        ]
        .to_vec();
        let mut only_commit = without.clone();
        only_commit.extend(["--source-commit", COMMIT]);
        assert!(parse(&without).is_err());
        assert!(parse(&only_commit).is_err());
    }

    #[test]
    fn the_executor_contract_parses() {
        let cli = parse(&[
            "build",
            "--kernel-release",
            "6.1.0-47-amd64",
            "--arch",
            "x86_64",
            "--distribution",
            "debian",
            "--distro-version",
            "12",
            "--driver-name",
            "example-driver",
            "--driver-version",
            "v0.1.2",
            "--source",
            "/build/src",
            "--out",
            "/build/out",
            "--header-url",
            "http://127.0.0.1:1/a.deb",
            "--header-url",
            "http://127.0.0.1:1/b.deb",
            "--source-commit",
            COMMIT,
            "--source-repository",
            "https://example.com/driver.git",
        ])
        .expect("parses");
        let Command::Build(args) = cli.command else {
            panic!("build expected")
        };
        let request = build_request(&args).expect("valid");
        assert_eq!(request.headers.header_urls.len(), 2);
        assert_eq!(request.revision.commit.as_str(), COMMIT);
        assert_eq!(
            request.revision.repository,
            "https://example.com/driver.git"
        );
        assert_eq!(
            request.identity.cache_key(),
            "debian/12/x86_64/6.1.0-47-amd64/v0.1.2"
        );
    }

    #[test]
    fn bad_input_names_the_field() {
        let cli = parse(&[
            "validate",
            "--kernel-release",
            "6.1.0-47-amd64;reboot",
            "--arch",
            "amd64",
            "--distribution",
            "debian",
            "--driver-name",
            "example-driver",
            "--driver-version",
            "v0.1.2",
        ])
        .expect("parses");
        let Command::Validate(args) = cli.command else {
            panic!("validate expected")
        };
        let error = args.parse().expect_err("invalid release");
        assert!(error.to_string().starts_with("kernel_version:"), "{error}");
        // A module key without its certificate is a usage error, caught by clap.
        assert!(
            parse(&[
                "build",
                "--kernel-release",
                "x",
                "--arch",
                "x",
                "--distribution",
                "x",
                "--driver-name",
                "x",
                "--driver-version",
                "x",
                "--source",
                "s",
                "--out",
                "o",
                "--module-sign-key",
                "k"
            ])
            .is_err()
        );
    }

    #[test]
    fn module_signing_options_go_together() {
        let base = [
            "build",
            "--kernel-release",
            "6.1.0-47-amd64",
            "--arch",
            "x86_64",
            "--distribution",
            "debian",
            "--driver-name",
            "example-driver",
            "--driver-version",
            "v0.1.2",
            "--source",
            "s",
            "--out",
            "o",
            "--source-commit",
            COMMIT,
            "--source-repository",
            "https://example.com/driver.git",
        ];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            parse(&args)
        };
        let signing = ["--module-sign-key", "k.pem", "--module-sign-cert", "c.der"];
        assert!(with(&signing).is_ok());
        assert!(with(&[&signing[..], &["--module-sign-hash", "sha512"]].concat()).is_ok());
        assert!(with(&[&signing[..], &["--remove-module-sign-key"]].concat()).is_ok());
        // Only the hashes sign-file and the kernel both know; nothing without a key.
        assert!(with(&[&signing[..], &["--module-sign-hash", "sha1"]].concat()).is_err());
        assert!(with(&["--module-sign-hash", "sha256"]).is_err());
        assert!(with(&["--remove-module-sign-key"]).is_err());
        // A key that is not there fails the build before anything runs, naming the file.
        let Command::Build(args) = with(&signing).expect("parses").command else {
            panic!("build expected")
        };
        let error = build_request(&args).expect_err("no key file");
        assert!(format!("{error:#}").contains("k.pem"), "{error:#}");
    }

    #[test]
    fn validate_fills_the_default_distro_version() {
        let args = IdentityArgs {
            kernel_release: "6.1.0-47-amd64".into(),
            arch: "amd64".into(),
            distribution: "debian".into(),
            distro_version: None,
            driver_name: "example-driver".into(),
            driver_version: "v0.1.2".into(),
            release_layout: "per-artifact".into(),
        };
        let (identity, driver) = args.parse().expect("valid");
        let described = describe_identity(&identity, &driver, ReleaseLayout::PerArtifact);
        assert_eq!(
            described.release_tag,
            "example-driver-v0.1.2-debian-12-6.1.0-47-amd64-x86_64"
        );
        assert_eq!(described.distro_version, "12");
        assert_eq!(described.arch, "x86_64");
        assert_eq!(
            described.package_file_name,
            "example-driver-debian-12-6.1.0-47-amd64_v0.1.2_amd64.deb"
        );
    }

    #[test]
    fn urls_must_be_http() {
        assert!(check_url("--header-url", "http://x/a.deb").is_ok());
        assert!(check_url("--header-url", "file:///etc/passwd").is_err());
        assert!(check_url("--header-url", "http://x/a b.deb").is_err());
    }
}
