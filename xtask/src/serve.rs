//! `cargo xtask serve`: the build-service on its embedded default — SQLite file, local artifact
//! directory, clean-root builder — with no GitHub and no token. It builds the static builder that runs
//! inside the roots (also the aarch64 one when Debian's cross compiler is installed, so arm64
//! identities build in emulated arm64 roots), makes a minisign key pair and a test module-signing
//! key pair (`module-signing.key`, `module-signing.der`: every module is signed for Secure Boot
//! nodes) on first use, makes (or refreshes) the driver's git repository from
//! `driver/example-driver` with the sample driver versions as tags, then runs the service in the
//! foreground.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The driver versions the sample repository is tagged with: the one README.md asks for, and the
/// one the fleet and the loader's examples use.
const SAMPLE_VERSIONS: &[&str] = &["v0.1.0", "v0.1.2"];

/// Runs the service; extra arguments go to `build-service serve` (e.g. `--listen 0.0.0.0:8080
/// --principals-file principals.toml`).
pub fn run(root: &Path, extra: &[String]) -> Result<()> {
    let state = root.join("target").join("build-service");
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;

    status(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--release", "--target", MUSL_TARGET])
            .args(["-p", "driver-builder", "--bin", "driver-builder"]),
        "building the static driver-builder",
    )?;
    let builder = root
        .join("target")
        .join(MUSL_TARGET)
        .join("release")
        .join("driver-builder");

    let builder_aarch64 = if std::env::consts::ARCH == "aarch64" || on_path("aarch64-linux-gnu-gcc")
    {
        Some(
            testkit::musl_binary(
                "driver-builder",
                "driver-builder",
                "aarch64-unknown-linux-musl",
            )
            .context("building the static aarch64 driver-builder")?,
        )
    } else {
        eprintln!(
            "arm64 builds are off: apt-get install gcc-aarch64-linux-gnu qemu-user-static \
             binfmt-support to build for aarch64 identities too"
        );
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

    let mut serve = Command::new("cargo");
    serve
        .current_dir(root)
        .args(["run", "--release", "-p", "build-service", "--", "serve"]);
    if let Some(builder) = &builder_aarch64 {
        serve.arg("--builder-aarch64").arg(builder);
    }
    status(
        serve
            .arg("--state-dir")
            .arg(&state)
            .arg("--driver-repo")
            .arg(repo.path())
            .arg("--builder-x86-64")
            .arg(&builder)
            .arg("--signing-key")
            .arg(&secret)
            .arg("--module-signing-key")
            .arg(&module_signing.key)
            .arg("--module-signing-cert")
            .arg(&module_signing.cert_der)
            .args(extra),
        "running build-service",
    )
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
