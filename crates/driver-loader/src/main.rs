//! `driver-loader`: the command line. Every option can also come from a `DRIVER_LOADER_*` environment
//! variable, which is how the systemd unit's environment file and the DaemonSet configure it. The exit code
//! tells the kind of failure (table in the crate README).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use driver_loader::fetch::{ArtifactSource, BuildService, TrustPolicy};
use driver_loader::flow::{self, LoaderConfig, Mode, ModuleAction, RunProgress};
use driver_loader::host::{DEFAULT_OS_RELEASE_PATHS, HostPaths};
use driver_loader::http::{HttpSettings, RetryPolicy};
use driver_loader::install::SystemTools;
use driver_loader::kernel::SysKernel;
use driver_loader::modinfo::ModInfo;
use driver_loader::module_signature::read_module_signature;
use driver_loader::{FailureKind, LoaderError, prefetch, report};
use integrity::{Keyring, ProvenancePolicy, PublicKey};
use kernel_id::{DriverName, DriverVersion, ReleaseLayout, SourceCommit};

// The shipped loader is a static musl binary, and musl's allocator maps and unmaps a region for
// most allocations of a few KiB and more: a run made ~330 mmap/munmap calls and ~1,000 page faults
// for ~390 with dlmalloc, which keeps freed memory for reuse (and returns it above 2 MiB free).
// Under emulation each of those is expensive; `cargo xtask bench loader` shows the difference.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

#[derive(Debug, Parser)]
#[command(
    name = "driver-loader",
    version,
    about = "Fetch, verify and load the driver package built for exactly the running kernel",
    after_help = "Exit codes: 0 ok, 1 internal, 2 configuration/usage, 3 host not identifiable, \
                  4 artifact unavailable, 5 build refused or failed, 6 verification failed (digest, signature), \
                  7 module incompatible with the running kernel, 8 install/load failed, 9 other version \
                  loaded (see --replace), 10 provenance refused (missing, not signed by a trusted key, \
                  or naming another package, source repository, builder or commit), 11 module signature \
                  refused: the running kernel enforces module signatures (module.sig_enforce, lockdown) \
                  and a module is unsigned or signed by a key the kernel does not trust (found before \
                  loading, or the kernel said so)."
)]
struct Cli {
    /// Global: each may come before or after the subcommand name (see `Cli::parse_args`).
    #[command(flatten)]
    options: Options,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Parses a command line in which every option of `Options` is global: it may come before or
    /// after the subcommand name, and `--help` of every subcommand lists it.
    ///
    /// The options are declared without clap's `global` because of what it costs on every parse:
    /// each global option is cloned into every subcommand, and its value (default and environment
    /// included) copied between the levels: two thirds of a parse's instructions, and under
    /// emulation (a VM node's first boot) several milliseconds. A command line with the options
    /// before the subcommand name (or none) means the same without them being global, so it is
    /// parsed that way first; any other line, and every error, `--help` and `--version`, goes to
    /// the parser with global options, whose result and messages are the ones of the documented
    /// command line.
    fn parse_args<T: Into<OsString> + Clone>(args: &[T]) -> Result<Cli, clap::Error> {
        if let Ok(mut matches) = Cli::command().try_get_matches_from(args.iter().cloned())
            && let Ok(cli) = Cli::from_arg_matches_mut(&mut matches)
        {
            return Ok(cli);
        }
        let mut command = Cli::command().mut_args(|arg| arg.global(true));
        let mut matches = command.try_get_matches_from_mut(args.iter().cloned())?;
        Cli::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut command))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the host's identity, the package file name and the URL the loader will use.
    Identify,
    /// Download (or get built) and verify the package into the cache; print its path.
    Fetch,
    /// Extract a package's files (safely) into a directory.
    Extract {
        /// The .deb or .rpm file.
        package: PathBuf,
        /// Target directory (must not exist or be empty).
        #[arg(long)]
        to: PathBuf,
        /// Only kernel modules (.ko, .ko.gz, .ko.xz, .ko.zst).
        #[arg(long)]
        ko_only: bool,
    },
    /// Show a module's .modinfo and its signer, like modinfo(8) (compressed modules are decompressed
    /// in memory; the signature is read from the decompressed image, which is what the kernel checks).
    Inspect {
        /// A .ko, .ko.gz, .ko.xz or .ko.zst file.
        module: PathBuf,
    },
    /// The whole flow: identify, fetch or build, verify, check, install and/or load; then report the
    /// run to the build service (see --no-report).
    #[command(visible_alias = "load")]
    Run {
        /// After a successful run, stay alive until SIGTERM/SIGINT (the DaemonSet's main container); the
        /// module stays loaded when the process ends.
        #[arg(long, env = "DRIVER_LOADER_KEEP_RUNNING")]
        keep_running: bool,
        /// With --keep-running, once the driver is live (and ready), prefetch the packages of
        /// kernels installed but not running, as `prefetch` does; its failures are logged and never
        /// end the process (the DaemonSet, which has no second unit for it).
        #[arg(
            long,
            env = "DRIVER_LOADER_PREFETCH_AFTER_RUN",
            requires = "keep_running"
        )]
        prefetch: bool,
    },
    /// For kernels installed but not running (a modules tree under --modules-root with
    /// vmlinuz-RELEASE in --boot-dir), or the one given with --kernel: fetch or get built, verify
    /// and cache the package, and check its modules against that kernel; nothing is loaded. Prints
    /// one line per kernel; exit 0 when every one was prefetched, else the first failure's code.
    Prefetch {
        /// Only this kernel release (installed under --modules-root); what a kernel package's
        /// postinst hook passes.
        #[arg(long, value_name = "RELEASE")]
        kernel: Option<String>,
    },
    /// Readiness probe: exit 0 when the ready file exists and the driver's module is live, else 1.
    Ready,
    /// Verify a package file's build provenance with the configured trusted keys and policy, and
    /// show what it says (exit 10 when it is refused).
    Provenance {
        /// The .deb or .rpm file; its name gives the identity the provenance must be about.
        package: PathBuf,
        /// The provenance file (default: PACKAGE.intoto.jsonl beside the package).
        #[arg(long = "provenance", value_name = "FILE")]
        provenance_file: Option<PathBuf>,
        /// Print the verified in-toto statement as JSON instead of the summary.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Host,
    Container,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct Options {
    /// Driver name ([a-z0-9-]).
    #[arg(
        long,
        env = "DRIVER_LOADER_DRIVER_NAME",
        default_value = "example-driver"
    )]
    driver_name: String,
    /// Driver version to load, e.g. v0.1.2.
    #[arg(long, env = "DRIVER_LOADER_DRIVER_VERSION")]
    driver_version: Option<String>,
    /// Base URL of the artifact store; the release layout's path is appended.
    #[arg(
        long,
        env = "DRIVER_LOADER_ARTIFACT_BASE_URL",
        default_value = "http://127.0.0.1:8080/releases/download"
    )]
    artifact_base_url: String,
    /// Release layout: per-artifact or per-driver-version.
    #[arg(
        long,
        env = "DRIVER_LOADER_RELEASE_LAYOUT",
        default_value = "per-artifact"
    )]
    release_layout: String,
    /// File holding a bearer token for artifact downloads.
    #[arg(long, env = "DRIVER_LOADER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Build service root URL, asked to build a missing artifact; unset = no builds on demand.
    #[arg(long, env = "DRIVER_LOADER_BUILD_SERVICE_URL")]
    build_service_url: Option<String>,
    /// File holding a bearer token for the build service.
    #[arg(long, env = "DRIVER_LOADER_BUILD_SERVICE_TOKEN_FILE")]
    build_service_token_file: Option<PathBuf>,
    /// Long-poll seconds of one build status request.
    #[arg(long, env = "DRIVER_LOADER_BUILD_WAIT_SECONDS", default_value_t = 25)]
    build_wait_seconds: u64,
    /// Directory of trusted minisign public keys: every `*.pub` file in it is a trusted key (other
    /// entries are ignored).
    #[arg(long, env = "DRIVER_LOADER_TRUSTED_KEYS_DIR", value_name = "DIR")]
    trusted_keys_dir: Option<PathBuf>,
    /// A trusted minisign public key (the base64 line, or the whole .pub file content); repeatable.
    #[arg(long, env = "DRIVER_LOADER_PUBLIC_KEY", value_name = "TEXT")]
    public_key: Vec<String>,
    /// A file holding a trusted minisign public key; repeatable (environment: comma-separated).
    #[arg(
        long,
        env = "DRIVER_LOADER_PUBLIC_KEY_FILE",
        value_name = "FILE",
        value_delimiter = ','
    )]
    public_key_file: Vec<PathBuf>,
    /// Provenance policy: the driver's source repository the provenance must name (required with
    /// trusted keys), e.g. https://github.com/OWNER/REPO.
    #[arg(
        long,
        env = "DRIVER_LOADER_EXPECTED_SOURCE_REPOSITORY",
        value_name = "URI"
    )]
    expected_source_repository: Option<String>,
    /// Provenance policy: a builder id allowed to have built the package (required with trusted
    /// keys); repeatable (environment: comma-separated).
    #[arg(
        long = "allowed-builder",
        env = "DRIVER_LOADER_ALLOWED_BUILDERS",
        value_name = "ID",
        value_delimiter = ','
    )]
    allowed_builders: Vec<String>,
    /// Provenance policy: accept only packages built from this commit (full git commit id).
    #[arg(long, env = "DRIVER_LOADER_PINNED_COMMIT", value_name = "ID")]
    pinned_commit: Option<String>,
    /// Load packages without checking their signature and provenance. Only the digest is checked then:
    /// anyone able to replace the artifact can put code into the kernel. For development only; refused
    /// when any trusted key is configured.
    #[arg(long, env = "DRIVER_LOADER_INSECURE_SKIP_SIGNATURE")]
    insecure_skip_signature: bool,
    /// Package cache directory.
    #[arg(
        long,
        env = "DRIVER_LOADER_CACHE_DIR",
        default_value = "/var/cache/driver-loader"
    )]
    cache_dir: PathBuf,
    /// Overall deadline in seconds for fetching, including waiting for a build.
    #[arg(long, env = "DRIVER_LOADER_DEADLINE_SECONDS", default_value_t = 1200)]
    deadline_seconds: u64,
    /// Connect timeout of one HTTP request, seconds.
    #[arg(
        long,
        env = "DRIVER_LOADER_CONNECT_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    connect_timeout_seconds: u64,
    /// Timeout of one whole HTTP request, seconds.
    #[arg(
        long,
        env = "DRIVER_LOADER_REQUEST_TIMEOUT_SECONDS",
        default_value_t = 300
    )]
    request_timeout_seconds: u64,
    /// Attempts per HTTP request (1 = no retries).
    #[arg(long, env = "DRIVER_LOADER_ATTEMPTS", default_value_t = 6)]
    attempts: u32,
    /// First retry backoff in milliseconds (doubles, jittered, capped at 15 s).
    #[arg(long, env = "DRIVER_LOADER_BACKOFF_MS", default_value_t = 500)]
    backoff_ms: u64,
    /// Largest package accepted, MiB.
    #[arg(long, env = "DRIVER_LOADER_MAX_PACKAGE_MIB", default_value_t = 256)]
    max_package_mib: u64,
    /// os-release file(s) to read, first existing wins (Kubernetes: /host/etc/os-release).
    #[arg(
        long = "os-release",
        env = "DRIVER_LOADER_OS_RELEASE",
        value_delimiter = ','
    )]
    os_release: Vec<PathBuf>,
    /// Host proc mount to read the kernel release from (default: uname).
    #[arg(long, env = "DRIVER_LOADER_PROC_ROOT")]
    proc_root: Option<PathBuf>,
    /// sysfs mount.
    #[arg(long, env = "DRIVER_LOADER_SYS_ROOT", default_value = "/sys")]
    sys_root: PathBuf,
    /// The host's /lib/modules.
    #[arg(
        long,
        env = "DRIVER_LOADER_MODULES_ROOT",
        default_value = "/lib/modules"
    )]
    modules_root: PathBuf,
    /// The host's /boot: a kernel R with a modules tree and DIR/vmlinuz-R is installed (pending
    /// when not running).
    #[arg(
        long,
        env = "DRIVER_LOADER_BOOT_DIR",
        value_name = "DIR",
        default_value = "/boot"
    )]
    boot_dir: PathBuf,
    /// machine-id file(s) the report's node id is hashed from, first valid wins (environment:
    /// comma-separated); default: etc/machine-id, then var/lib/dbus/machine-id, in the root of
    /// each --os-release file (/host/etc/os-release gives /host/etc/machine-id).
    #[arg(
        long = "machine-id-file",
        env = "DRIVER_LOADER_MACHINE_ID_FILE",
        value_name = "FILE",
        value_delimiter = ','
    )]
    machine_id_file: Vec<PathBuf>,
    /// Do not report runs to the build service (POST /report; by default every run whose host was
    /// identified is reported when a build service is configured). Environment:
    /// DRIVER_LOADER_REPORT=false.
    #[arg(
        long = "no-report",
        env = "DRIVER_LOADER_REPORT",
        action = ArgAction::SetFalse
   )]
    report: bool,
    /// host: install with dpkg/rpm then modprobe; container: load privately with finit_module.
    #[arg(long, value_enum, env = "DRIVER_LOADER_MODE", default_value = "host")]
    mode: ModeArg,
    /// Unload and replace a loaded module of another version.
    #[arg(long, env = "DRIVER_LOADER_REPLACE")]
    replace: bool,
    /// Fetch, verify and check, but change nothing in the kernel or the package database.
    #[arg(long, env = "DRIVER_LOADER_DRY_RUN")]
    dry_run: bool,
    /// Test and diagnostic switch: do not check, before loading, that a module is signed by a key the
    /// running kernel trusts when it enforces module signatures; the kernel is then the only judge (its
    /// refusal still ends with exit 11).
    #[arg(long, env = "DRIVER_LOADER_SKIP_MODULE_SIGNATURE_PRECHECK")]
    skip_module_signature_precheck: bool,
    /// File written after a successful run (readiness probe); removed when a run starts.
    #[arg(long, env = "DRIVER_LOADER_READY_FILE")]
    ready_file: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(
        long,
        value_enum,
        env = "DRIVER_LOADER_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

fn read_secret(path: &Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{what}: reading {}", path.display()))?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        bail!("{what}: {} is empty", path.display());
    }
    Ok(token)
}

fn config_error(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(LoaderError::Config(format!("{e:#}")))
}

impl Options {
    fn to_config(&self) -> Result<LoaderConfig> {
        self.build_config().map_err(config_error)
    }

    /// The trusted keys (one keyring from the directory, the files and the inline keys) and the
    /// provenance policy they come with.
    fn trust(&self) -> Result<TrustPolicy> {
        let mut keyring = Keyring::new();
        if let Some(dir) = &self.trusted_keys_dir {
            keyring
                .add_dir(dir)
                .with_context(|| format!("--trusted-keys-dir {}", dir.display()))?;
        }
        for path in &self.public_key_file {
            keyring.add_file(path).context("--public-key-file")?;
        }
        for text in &self.public_key {
            let key = PublicKey::parse(text, "--public-key")?;
            keyring.insert(key, "--public-key")?;
        }
        let key_options: Vec<&str> = [
            ("--trusted-keys-dir", self.trusted_keys_dir.is_some()),
            ("--public-key-file", !self.public_key_file.is_empty()),
            ("--public-key", !self.public_key.is_empty()),
        ]
        .into_iter()
        .filter_map(|(option, given)| given.then_some(option))
        .collect();
        if self.insecure_skip_signature {
            if !key_options.is_empty() {
                bail!(
                    "--insecure-skip-signature cannot be combined with {}: with a trusted key \
                     configured every package must verify; remove one or the other",
                    key_options.join(" and ")
                );
            }
            return Ok(TrustPolicy::InsecureSkipSignature);
        }
        if keyring.is_empty() {
            let reason = match &self.trusted_keys_dir {
                Some(dir) => format!(
                    "no trusted key: --trusted-keys-dir {} holds no *.pub key",
                    dir.display()
                ),
                None => "no trusted key configured".to_owned(),
            };
            return Ok(TrustPolicy::Missing { reason });
        }
        let expected_source_repository = self
            .expected_source_repository
            .as_deref()
            .map(str::trim)
            .filter(|uri| !uri.is_empty())
            .context(
                "--expected-source-repository (DRIVER_LOADER_EXPECTED_SOURCE_REPOSITORY) is required \
                 with trusted keys: the provenance must name the driver's source repository",
            )?
            .to_owned();
        let allowed_builders: Vec<String> = self
            .allowed_builders
            .iter()
            .map(|id| id.trim())
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .collect();
        if allowed_builders.is_empty() {
            bail!(
                "--allowed-builder (DRIVER_LOADER_ALLOWED_BUILDERS) is required with trusted keys: \
                 the provenance must name a builder allowed to build the driver"
            );
        }
        let pinned_commit = self
            .pinned_commit
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(SourceCommit::parse)
            .transpose()
            .context("--pinned-commit")?;
        Ok(TrustPolicy::Verify {
            keyring,
            policy: ProvenancePolicy {
                expected_source_repository,
                allowed_builders,
                pinned_commit,
            },
        })
    }

    fn build_config(&self) -> Result<LoaderConfig> {
        let driver = DriverName::parse(&self.driver_name).context("--driver-name")?;
        let version = self
            .driver_version
            .as_deref()
            .context("--driver-version (DRIVER_LOADER_DRIVER_VERSION) is required")?;
        let driver_version = DriverVersion::parse(version).context("--driver-version")?;
        let layout = ReleaseLayout::parse(&self.release_layout).context("--release-layout")?;
        let token = self
            .token_file
            .as_deref()
            .map(|p| read_secret(p, "--token-file"))
            .transpose()?;
        let trust = self.trust()?;
        let build_service = match &self.build_service_url {
            Some(url) => Some(BuildService {
                url: url.clone(),
                token: self
                    .build_service_token_file
                    .as_deref()
                    .map(|p| read_secret(p, "--build-service-token-file"))
                    .transpose()?,
                wait: Duration::from_secs(self.build_wait_seconds.clamp(1, 600)),
            }),
            None => None,
        };
        if !(self.artifact_base_url.starts_with("http://")
            || self.artifact_base_url.starts_with("https://"))
        {
            bail!("--artifact-base-url must be an http:// or https:// URL");
        }
        let os_release = if self.os_release.is_empty() {
            DEFAULT_OS_RELEASE_PATHS.iter().map(PathBuf::from).collect()
        } else {
            self.os_release.clone()
        };
        Ok(LoaderConfig {
            driver,
            driver_version,
            host_paths: HostPaths {
                os_release,
                proc_root: self.proc_root.clone(),
                machine_id: self.machine_id_file.clone(),
            },
            source: ArtifactSource {
                base_url: self.artifact_base_url.clone(),
                layout,
                token,
                max_package_bytes: self.max_package_mib.saturating_mul(1024 * 1024),
            },
            build_service,
            trust,
            http: HttpSettings {
                connect_timeout: Duration::from_secs(self.connect_timeout_seconds.max(1)),
                request_timeout: Duration::from_secs(self.request_timeout_seconds.max(1)),
                retry: RetryPolicy {
                    attempts: self.attempts.max(1),
                    base_delay: Duration::from_millis(self.backoff_ms),
                    max_delay: Duration::from_secs(15),
                },
                ..HttpSettings::default()
            },
            cache_dir: self.cache_dir.clone(),
            deadline: Duration::from_secs(self.deadline_seconds.max(1)),
            modules_root: self.modules_root.clone(),
            boot_dir: self.boot_dir.clone(),
            sys_root: self.sys_root.clone(),
            mode: match self.mode {
                ModeArg::Host => Mode::Host,
                ModeArg::Container => Mode::Container,
            },
            replace: self.replace,
            dry_run: self.dry_run,
            skip_module_signature_precheck: self.skip_module_signature_precheck,
        })
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRIVER_LOADER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn identify(options: &Options) -> Result<()> {
    let config = options.to_config()?;
    let id = flow::identify(&config)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "os_release:      {}",
        id.facts.os_release_path.display()
    )?;
    writeln!(out, "distribution:    {}", id.identity.distribution())?;
    writeln!(out, "distro_version:  {}", id.identity.distro_version())?;
    writeln!(out, "architecture:    {}", id.identity.arch())?;
    writeln!(out, "kernel_release:  {}", id.identity.kernel_release())?;
    writeln!(
        out,
        "driver:          {} {}",
        config.driver,
        id.identity.driver_version()
    )?;
    writeln!(out, "cache_key:       {}", id.identity.cache_key())?;
    writeln!(out, "package:         {}", id.package_file_name)?;
    writeln!(out, "url:             {}", id.urls.package)?;
    Ok(())
}

fn fetch(options: &Options) -> Result<()> {
    let config = options.to_config()?;
    let id = flow::identify(&config)?;
    let package = flow::fetch(&config, &id.identity)?;
    println!("{}", package.path.display());
    Ok(())
}

fn provenance(
    options: &Options,
    package: &Path,
    provenance_file: Option<&Path>,
    json: bool,
) -> Result<()> {
    let (keyring, policy) = match options.trust().map_err(config_error)? {
        TrustPolicy::Verify { keyring, policy } => (keyring, policy),
        TrustPolicy::InsecureSkipSignature => bail!(LoaderError::Config(
            "provenance: --insecure-skip-signature verifies nothing; configure trusted keys"
                .to_owned()
        )),
        TrustPolicy::Missing { reason } => bail!(LoaderError::Config(format!(
            "provenance: {reason}; configure --trusted-keys-dir, --public-key-file or --public-key \
             with --expected-source-repository and --allowed-builder"
        ))),
    };
    let verified = flow::verify_package_provenance(package, provenance_file, &keyring, &policy)?;
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string_pretty(&verified.verified.statement)
            .context("serializing the statement")?;
        writeln!(out, "{text}")?;
    } else {
        write!(out, "{}", flow::provenance_summary(&verified))?;
    }
    Ok(())
}

fn extract(package: &Path, to: &Path, ko_only: bool) -> Result<()> {
    let report = flow::extract_package(package, to, ko_only)?;
    for file in &report.files {
        println!("{}", file.display());
    }
    eprintln!(
        "extracted {} file(s) ({} bytes) from {} entries of a .{} package",
        report.files.len(),
        report.bytes,
        report.entries,
        report.format.extension()
    );
    if report.spool_peak_bytes > 0 {
        // Page cache on the target's filesystem, not this process's memory: said so it is not missed.
        eprintln!(
            "decoded in parallel; blocks ahead of the tar reader peaked at {:.1} MiB in spool files",
            report.spool_peak_bytes as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}

fn inspect(module: &Path) -> Result<()> {
    let (info, image) = ModInfo::from_file(module)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<16}{}", "filename:", module.display())?;
    for (key, value) in info.entries() {
        writeln!(out, "{:<16}{value}", format!("{key}:"))?;
    }
    // modinfo(8)'s signature fields, from the image the kernel receives (decompressed).
    match read_module_signature(&image) {
        Ok(Some(signature)) => {
            writeln!(out, "{:<16}PKCS#7", "sig_id:")?;
            if let Some(signer) = signature.signer_name() {
                writeln!(out, "{:<16}{signer}", "signer:")?;
            }
            writeln!(out, "{:<16}{}", "sig_key:", signature.key_id_text())?;
            writeln!(out, "{:<16}{}", "sig_hashalgo:", signature.hash_algo)?;
        }
        Ok(None) => writeln!(out, "{:<16}none", "signature:")?,
        Err(e) => writeln!(out, "{:<16}malformed: {e}", "signature:")?,
    }
    Ok(())
}

fn remove_ready_file(path: Option<&Path>) -> Result<()> {
    if let Some(path) = path {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing ready file {}", path.display()));
            }
        }
    }
    Ok(())
}

/// `run`: the flow, then its report (when the host was identified and reporting is on). The report
/// is sent after the outcome is decided and cannot change it.
fn run(options: &Options) -> Result<()> {
    let started = Instant::now();
    remove_ready_file(options.ready_file.as_deref())?;
    let config = options.to_config()?;
    let mut progress = RunProgress::default();
    let result = run_flow(options, &config, &mut progress);
    if options.report {
        let code = match &result {
            Ok(()) => 0,
            Err(e) => exit_code_of(e),
        };
        report::report_run(&config, &progress, code, started.elapsed());
    }
    result
}

fn run_flow(options: &Options, config: &LoaderConfig, progress: &mut RunProgress) -> Result<()> {
    let kernel = SysKernel {
        sys_root: config.sys_root.clone(),
    };
    let report = flow::run_tracked(config, &kernel, &SystemTools, progress)?;
    let mut summary = String::new();
    for (module, action) in &report.modules {
        let text = match action {
            ModuleAction::AlreadyLoaded => "already loaded (same srcversion)".to_owned(),
            ModuleAction::Loaded => "loaded".to_owned(),
            ModuleAction::Replaced { previous } => format!("replaced {previous}"),
            ModuleAction::WouldLoad => "would load (dry run)".to_owned(),
            ModuleAction::WouldReplace { previous } => {
                format!("would replace {previous} (dry run)")
            }
        };
        summary.push_str(&format!("{module}: {text}\n"));
    }
    print!("{summary}");
    if let Some(path) = &options.ready_file
        && !config.dry_run
    {
        let content = format!(
            "identity: {}\npackage: {}\n{summary}",
            report.identity.cache_key(),
            report.package.file_name
        );
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(path, content)
            .with_context(|| format!("writing ready file {}", path.display()))?;
    }
    Ok(())
}

/// `prefetch`: one line per kernel on stdout; the first failure decides the exit code.
fn prefetch(options: &Options, kernel: Option<&str>) -> Result<()> {
    let config = options.to_config()?;
    let outcomes = prefetch::prefetch(&config, kernel)?;
    let total = outcomes.len();
    let mut failed = 0;
    let mut first_failure = None;
    {
        let mut out = std::io::stdout().lock();
        for outcome in &outcomes {
            writeln!(out, "{outcome}")?;
        }
        out.flush()?;
    }
    for outcome in outcomes {
        if let Err(e) = outcome.result {
            failed += 1;
            first_failure.get_or_insert((outcome.release, e));
        }
    }
    match first_failure {
        None => Ok(()),
        Some((release, error)) => Err(anyhow::Error::new(error).context(format!(
            "prefetch failed for {failed} of {total} kernel(s); the first, {release}"
        ))),
    }
}

/// Blocks until SIGTERM or SIGINT. As PID 1 in a container the default dispositions would ignore them,
/// so they are blocked and waited for explicitly.
fn wait_for_termination() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().context("blocking SIGTERM/SIGINT")?;
    tracing::info!("driver loaded; staying alive until SIGTERM (the module stays loaded)");
    let signal = set.wait().context("waiting for SIGTERM/SIGINT")?;
    tracing::info!(%signal, "terminating");
    Ok(())
}

fn ready(options: &Options) -> Result<()> {
    let path = options
        .ready_file
        .as_deref()
        .context("--ready-file (DRIVER_LOADER_READY_FILE) is required for the readiness check")
        .map_err(config_error)?;
    if !path.exists() {
        bail!(LoaderError::Load {
            module: options.driver_name.replace('-', "_"),
            reason: format!("not ready: {} does not exist", path.display()),
        });
    }
    let driver = DriverName::parse(&options.driver_name)
        .context("--driver-name")
        .map_err(config_error)?;
    let module = driver.module_name();
    if !options.sys_root.join("module").join(&module).is_dir() {
        bail!(LoaderError::Load {
            module,
            reason: "not ready: the module is no longer loaded".to_owned(),
        });
    }
    Ok(())
}

fn exit_code_of(error: &anyhow::Error) -> u8 {
    error
        .chain()
        .find_map(|cause| cause.downcast_ref::<LoaderError>())
        .map(|e| e.kind())
        .unwrap_or(FailureKind::Internal)
        .exit_code()
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = Cli::parse_args(&args).unwrap_or_else(|e| e.exit());
    init_logging(cli.options.log_format);
    let result = match &cli.command {
        Command::Identify => identify(&cli.options),
        Command::Fetch => fetch(&cli.options),
        Command::Extract {
            package,
            to,
            ko_only,
        } => extract(package, to, *ko_only),
        Command::Inspect { module } => inspect(module),
        Command::Run {
            keep_running,
            prefetch: prefetch_after,
        } => run(&cli.options).and_then(|()| {
            if *keep_running {
                if *prefetch_after && let Err(e) = prefetch(&cli.options, None) {
                    tracing::warn!(error = format!("{e:#}"), "prefetch after the run failed");
                }
                wait_for_termination()
            } else {
                Ok(())
            }
        }),
        Command::Prefetch { kernel } => prefetch(&cli.options, kernel.as_deref()),
        Command::Ready => ready(&cli.options),
        Command::Provenance {
            package,
            provenance_file,
            json,
        } => provenance(&cli.options, package, provenance_file.as_deref(), *json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = exit_code_of(&error);
            eprintln!("driver-loader: error: {error:#}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO: &str = "https://github.com/example/example-driver";
    const BUILDER: &str = "urn:kdriver:builder:test";

    /// A new key pair's public key line.
    fn key_line() -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        integrity::SecretKey::generate(&dir.path().join("k"), &dir.path().join("k.pub"))
            .expect("key")
            .public()
            .to_base64()
    }

    fn trust(args: &[&str]) -> Result<TrustPolicy> {
        let mut argv = vec!["driver-loader"];
        argv.extend_from_slice(args);
        argv.push("identify");
        Cli::parse_args(&argv).expect("parses").options.trust()
    }

    #[test]
    fn keys_from_every_option_form_one_keyring_with_its_policy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let in_dir = dir.path().join("keys");
        std::fs::create_dir(&in_dir).expect("mkdir");
        std::fs::write(
            in_dir.join("a.pub"),
            format!("untrusted comment: a\n{}\n", key_line()),
        )
        .expect("write");
        std::fs::write(in_dir.join("allowed-builders"), BUILDER).expect("not a key");
        let file = dir.path().join("b.pub");
        std::fs::write(&file, key_line()).expect("write");
        let c = key_line();
        let policy = trust(&[
            "--trusted-keys-dir",
            in_dir.to_str().expect("utf-8"),
            "--public-key-file",
            file.to_str().expect("utf-8"),
            "--public-key",
            &c,
            "--expected-source-repository",
            REPO,
            "--allowed-builder",
            BUILDER,
            "--allowed-builder",
            "urn:other",
            "--pinned-commit",
            "0123456789abcdef0123456789abcdef01234567",
        ])
        .expect("valid");
        let TrustPolicy::Verify { keyring, policy } = policy else {
            panic!("keys are configured: {policy:?}")
        };
        assert_eq!(keyring.ids().len(), 3);
        assert_eq!(policy.expected_source_repository, REPO);
        assert_eq!(policy.allowed_builders, vec![BUILDER, "urn:other"]);
        assert!(policy.pinned_commit.is_some());
    }

    #[test]
    fn skipping_signatures_is_refused_with_any_key_and_policy_is_required_with_keys() {
        let key = key_line();
        let error = trust(&["--public-key", &key, "--insecure-skip-signature"])
            .expect_err("skip with a key");
        let text = format!("{error:#}");
        assert!(
            text.contains("--insecure-skip-signature") && text.contains("--public-key"),
            "{text}"
        );
        assert!(matches!(
            trust(&["--insecure-skip-signature"]).expect("no key"),
            TrustPolicy::InsecureSkipSignature
        ));
        assert!(matches!(
            trust(&[]).expect("nothing"),
            TrustPolicy::Missing { .. }
        ));

        let error = trust(&["--public-key", &key, "--allowed-builder", BUILDER])
            .expect_err("no repository");
        assert!(
            format!("{error:#}").contains("--expected-source-repository"),
            "{error:#}"
        );
        let error = trust(&["--public-key", &key, "--expected-source-repository", REPO])
            .expect_err("no builder");
        assert!(
            format!("{error:#}").contains("--allowed-builder"),
            "{error:#}"
        );
        let error = trust(&[
            "--public-key",
            &key,
            "--expected-source-repository",
            REPO,
            "--allowed-builder",
            BUILDER,
            "--pinned-commit",
            "abc",
        ])
        .expect_err("short commit");
        assert!(
            format!("{error:#}").contains("--pinned-commit"),
            "{error:#}"
        );

        let empty = tempfile::tempdir().expect("tempdir");
        let TrustPolicy::Missing { reason } =
            trust(&["--trusted-keys-dir", empty.path().to_str().expect("utf-8")])
                .expect("an empty directory is no key")
        else {
            panic!("no key in the directory")
        };
        assert!(reason.contains("holds no *.pub key"), "{reason}");
        assert!(
            trust(&[
                "--trusted-keys-dir",
                empty.path().to_str().expect("utf-8"),
                "--insecure-skip-signature"
            ])
            .is_err(),
            "a key option, even an empty one, excludes skipping"
        );
    }

    #[test]
    fn reporting_is_on_by_default_and_off_with_the_flag() {
        let parse = |args: &[&str]| {
            let mut argv = vec!["driver-loader"];
            argv.extend_from_slice(args);
            Cli::parse_args(&argv).expect("parses").options.report
        };
        // The environment (DRIVER_LOADER_REPORT=false) is proven on the binary, in tests/prefetch.rs.
        assert!(parse(&["run"]));
        assert!(!parse(&["run", "--no-report"]));
        assert!(!parse(&["--no-report", "prefetch"]));
    }

    #[test]
    fn options_are_global_and_parse_as_with_clap_globals() {
        let with_globals = |argv: &[&str]| {
            let mut command = Cli::command().mut_args(|arg| arg.global(true));
            let mut matches = command.try_get_matches_from_mut(argv).expect("parses");
            format!(
                "{:?}",
                Cli::from_arg_matches_mut(&mut matches).expect("matches")
            )
        };
        for argv in [
            &["driver-loader", "run"][..],
            &[
                "driver-loader",
                "--mode",
                "container",
                "--cache-dir",
                "/c",
                "run",
            ],
            &[
                "driver-loader",
                "run",
                "--mode",
                "container",
                "--cache-dir",
                "/c",
            ],
            &["driver-loader", "--mode", "container", "run", "--replace"],
            &[
                "driver-loader",
                "--mode",
                "host",
                "run",
                "--mode",
                "container",
            ],
            &[
                "driver-loader",
                "--public-key",
                "a",
                "identify",
                "--public-key",
                "b",
            ],
            &[
                "driver-loader",
                "--allowed-builder",
                "a",
                "--allowed-builder",
                "b",
                "fetch",
            ],
            &[
                "driver-loader",
                "--attempts",
                "2",
                "run",
                "--keep-running",
                "--prefetch",
            ],
            &[
                "driver-loader",
                "extract",
                "p.deb",
                "--to",
                "d",
                "--dry-run",
            ],
            &[
                "driver-loader",
                "--dry-run",
                "provenance",
                "p.deb",
                "--json",
            ],
        ] {
            let parsed = Cli::parse_args(argv).expect("parses");
            assert_eq!(format!("{parsed:?}"), with_globals(argv), "{argv:?}");
        }

        let help = Cli::parse_args(&["driver-loader", "run", "--help"]).expect_err("help");
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(help.to_string().contains("--cache-dir"), "{help}");
        let error = Cli::parse_args(&["driver-loader", "run", "--mode", "nope"]).expect_err("bad");
        assert_eq!(error.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn prefetch_takes_one_kernel_or_none() {
        let cli = Cli::parse_args(&["driver-loader", "prefetch", "--kernel", "6.1.0-50-amd64"])
            .expect("parses");
        assert!(
            matches!(&cli.command, Command::Prefetch { kernel: Some(k) } if k == "6.1.0-50-amd64")
        );
        let cli =
            Cli::parse_args(&["driver-loader", "--boot-dir", "/b", "prefetch"]).expect("parses");
        assert!(matches!(&cli.command, Command::Prefetch { kernel: None }));
        assert_eq!(cli.options.boot_dir, PathBuf::from("/b"));
    }
}
