//! `cargo xtask serve`: the build-service on its embedded default — SQLite file, local artifact
//! directory, clean-root builder — with no GitHub and no token. It first checks the machine for what
//! it needs ([`crate::preflight`]: installing it as root, naming it otherwise), then compiles the
//! static builder that runs inside the roots (also the aarch64 one with `--arm64`, or when Debian's
//! cross compiler is installed, so arm64 identities build in emulated arm64 roots), makes a minisign
//! key pair and a test module-signing key pair (`module-signing.key`, `module-signing.der`: every
//! module is signed for Secure Boot nodes) on first use, makes (or refreshes) the driver's git
//! repository from `driver/example-driver` with the sample driver versions as tags, then runs the
//! service in the foreground, in this process (xtask already links it, so nothing is compiled twice).
//! Each compile says what it builds first and shows cargo's own progress.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::preflight::{self, AARCH64_MUSL_TARGET, MUSL_TARGET, Wanted};

/// The driver versions the sample repository is tagged with: the one README.md asks for, and the
/// one the fleet and the loader's examples use.
const SAMPLE_VERSIONS: &[&str] = &["v0.1.0", "v0.1.2"];

/// Asks for arm64 builds (the aarch64 driver-builder, emulated arm64 roots); consumed here, not
/// passed to the service.
const ARM64_FLAG: &str = "--arm64";

/// Runs the service; extra arguments go to `build-service serve` (e.g. `--listen 0.0.0.0:8080
/// --principals-file principals.toml`), except `--arm64`, which asks for arm64 builds (also on
/// without it when Debian's cross compiler is installed, or on an arm64 host).
pub fn run(root: &Path, extra: &[String]) -> Result<()> {
    let asked_arm64 = extra.iter().any(|arg| arg == ARM64_FLAG);
    let extra: Vec<&String> = extra.iter().filter(|arg| *arg != ARM64_FLAG).collect();
    let host_aarch64 = std::env::consts::ARCH == "aarch64";
    let arm64 = asked_arm64 || host_aarch64 || on_path("aarch64-linux-gnu-gcc");
    preflight::ensure(Wanted {
        arm64,
        host_aarch64,
    })?;

    let state = root.join("target").join("build-service");
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));

    let builder = compile(
        root,
        &target_dir.join(MUSL_TARGET).join("release"),
        &["--target", MUSL_TARGET, "-p", "driver-builder"],
        "driver-builder",
        "the static driver-builder that runs inside the x86_64 build roots",
    )?;
    let builder_aarch64 = if arm64 {
        Some(compile(
            root,
            &target_dir.join(AARCH64_MUSL_TARGET).join("release"),
            &["--target", AARCH64_MUSL_TARGET, "-p", "driver-builder"],
            "driver-builder",
            "the static driver-builder that runs inside the arm64 build roots",
        )?)
    } else {
        eprintln!("arm64 builds are off: add {ARM64_FLAG} to build for aarch64 identities too");
        None
    };

    let secret = state.join("minisign.key");
    let public = state.join("minisign.pub");
    if !secret.exists() {
        // Made 0600 by the integrity module; the service refuses a key others can read.
        fleet::service::SigningKey::generate(&state).context("generating the signing key")?;
    } else {
        // A key this command made before keys had to be 0600: it is ours, so tighten it rather
        // than have the service refuse it.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret)?.permissions().mode();
        if mode & 0o077 != 0 {
            eprintln!("{}: mode {:04o} -> 0600", secret.display(), mode & 0o7777);
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    eprintln!(
        "artifacts and their provenance are signed with {} (builder id {}); give loaders the \
         public key {} (--public-key-file), --allowed-builder {} and \
         --expected-source-repository file://{}",
        secret.display(),
        build_service::signing::DEFAULT_LOCAL_BUILDER_ID,
        public.display(),
        build_service::signing::DEFAULT_LOCAL_BUILDER_ID,
        state.join("driver-repo").display()
    );

    // Modules are signed for nodes that enforce module signatures (Secure Boot): a test key pair
    // made with openssl like the kernel's certs/x509.genkey, its certificate served at
    // GET /module-signing-cert.der for enrolment.
    let module_signing = fleet::service::ModuleSigningKey::existing_or_generate(&state)
        .context("generating the module-signing key")?;
    eprintln!(
        "modules are signed with {} (\"{}\"); nodes with Secure Boot need its certificate {} \
         enrolled (mokutil --import; also served at GET /module-signing-cert.der)",
        module_signing.key.display(),
        fleet::service::ModuleSigningKey::COMMON_NAME,
        module_signing.cert_der.display()
    );

    // The service builds tags of a git repository. The sample one follows driver/example-driver:
    // an edit there becomes a new commit, which the sample versions' tags then name (artifacts
    // already published stay as they are).
    let repo = testkit::SampleDriverRepo::refresh(&state.join("driver-repo"), "", SAMPLE_VERSIONS)
        .context("making the sample driver repository")?;
    eprintln!(
        "driver versions {} are tags of {} (at {})",
        SAMPLE_VERSIONS.join(", "),
        repo.path().display(),
        repo.head()?
    );

    // The service runs in this process: xtask links build-service already, so a fresh clone
    // compiles the service's dependencies once (xtask's profile) instead of a second time for a
    // release binary — minutes of a newcomer's first run. Production runs the release binary.
    let mut command_line: Vec<std::ffi::OsString> = vec!["build-service".into(), "serve".into()];
    if let Some(builder) = &builder_aarch64 {
        command_line.extend(["--builder-aarch64".into(), builder.into()]);
    }
    command_line.extend([
        "--state-dir".into(),
        state.clone().into(),
        "--driver-repo".into(),
        repo.path().into(),
        "--builder-x86-64".into(),
        builder.into(),
        "--signing-key".into(),
        secret.into(),
        "--module-signing-key".into(),
        module_signing.key.into(),
        "--module-signing-cert".into(),
        module_signing.cert_der.into(),
    ]);
    command_line.extend(extra.into_iter().map(Into::into));
    let args = match build_service::config::Cli::try_parse_from(command_line) {
        Ok(build_service::config::Cli {
            command: build_service::config::Command::Serve(args),
        }) => args,
        Ok(_) => bail!("build-service serve: the command line parsed as another command"),
        // clap's own message names the argument and prints usage; help and version exit 0.
        Err(error) => error.exit(),
    };
    std::env::set_current_dir(root).with_context(|| format!("entering {}", root.display()))?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the service's runtime")?
        .block_on(build_service::serve(*args))
        .context("running build-service")
}

/// `cargo build --release` of one binary with cargo's own output (and its progress bar on a
/// terminal) shown, after a line saying what is compiled and why: a first run compiles for
/// minutes, which should not look like a hang. Returns the binary's path in `release_dir`.
fn compile(
    root: &Path,
    release_dir: &Path,
    package_args: &[&str],
    bin: &str,
    what: &str,
) -> Result<PathBuf> {
    let binary = release_dir.join(bin);
    let when = if binary.exists() {
        "again only if its sources changed"
    } else {
        "first run: a few minutes"
    };
    eprintln!("compiling {what} ({when})");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    status(
        Command::new(cargo)
            .current_dir(root)
            .args(["build", "--release"])
            .args(package_args)
            .args(["--bin", bin]),
        &format!("compiling {what}"),
    )?;
    Ok(binary)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn status(command: &mut Command, what: &str) -> Result<()> {
    let outcome = command
        .status()
        .with_context(|| format!("{what}: could not start"))?;
    if !outcome.success() {
        bail!("{what}: failed with {outcome}");
    }
    Ok(())
}
