//! `driver-loader`: the command line. Every option can also come from a `DRIVER_LOADER_*` environment
//! variable, which is how the systemd unit's environment file and the DaemonSet configure it. The exit code
//! tells the kind of failure (table in the crate README).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use driver_loader::fetch::{ArtifactSource, BuildService, TrustPolicy};
use driver_loader::flow::{self, LoaderConfig, Mode, ModuleAction};
use driver_loader::host::{DEFAULT_OS_RELEASE_PATHS, HostPaths};
use driver_loader::http::{HttpSettings, RetryPolicy};
use driver_loader::install::SystemTools;
use driver_loader::kernel::SysKernel;
use driver_loader::modinfo::ModInfo;
use driver_loader::{FailureKind, LoaderError};
use kernel_id::{DriverName, DriverVersion, ReleaseLayout};

#[derive(Debug, Parser)]
#[command(
    name = "driver-loader",
    version,
    about = "Fetch, verify and load the driver package built for exactly the running kernel",
    after_help = "Exit codes: 0 ok, 1 internal, 2 configuration/usage, 3 host not identifiable, \
                  4 artifact unavailable, 5 build failed, 6 verification failed, 7 module incompatible \
                  with the running kernel, 8 install/load failed, 9 other version loaded (see --replace)."
)]
struct Cli {
    #[command(flatten)]
    options: Options,
    #[command(subcommand)]
    command: Command,
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
    /// Show a module's .modinfo, like modinfo(8) (compressed modules are decompressed in memory).
    Inspect {
        /// A .ko, .ko.gz, .ko.xz or .ko.zst file.
        module: PathBuf,
    },
    /// The whole flow: identify, fetch or build, verify, check, install and/or load.
    #[command(visible_alias = "load")]
    Run {
        /// After a successful run, stay alive until SIGTERM/SIGINT (the DaemonSet's main container); the
        /// module stays loaded when the process ends.
        #[arg(long, env = "DRIVER_LOADER_KEEP_RUNNING")]
        keep_running: bool,
    },
    /// Readiness probe: exit 0 when the ready file exists and the driver's module is live, else 1.
    Ready,
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
        default_value = "example-driver",
        global = true
    )]
    driver_name: String,
    /// Driver version to load, e.g. v0.1.2.
    #[arg(long, env = "DRIVER_LOADER_DRIVER_VERSION", global = true)]
    driver_version: Option<String>,
    /// Base URL of the artifact store; the release layout's path is appended.
    #[arg(
        long,
        env = "DRIVER_LOADER_ARTIFACT_BASE_URL",
        default_value = "http://127.0.0.1:8080/releases/download",
        global = true
    )]
    artifact_base_url: String,
    /// Release layout: per-artifact or per-driver-version.
    #[arg(
        long,
        env = "DRIVER_LOADER_RELEASE_LAYOUT",
        default_value = "per-artifact",
        global = true
    )]
    release_layout: String,
    /// File holding a bearer token for artifact downloads.
    #[arg(long, env = "DRIVER_LOADER_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Build service root URL, asked to build a missing artifact; unset = no builds on demand.
    #[arg(long, env = "DRIVER_LOADER_BUILD_SERVICE_URL", global = true)]
    build_service_url: Option<String>,
    /// File holding a bearer token for the build service.
    #[arg(long, env = "DRIVER_LOADER_BUILD_SERVICE_TOKEN_FILE", global = true)]
    build_service_token_file: Option<PathBuf>,
    /// Long-poll seconds of one build status request.
    #[arg(
        long,
        env = "DRIVER_LOADER_BUILD_WAIT_SECONDS",
        default_value_t = 25,
        global = true
    )]
    build_wait_seconds: u64,
    /// Minisign public key (the base64 line, or the whole .pub file content).
    #[arg(long, env = "DRIVER_LOADER_PUBLIC_KEY", global = true)]
    public_key: Option<String>,
    /// File holding the minisign public key.
    #[arg(long, env = "DRIVER_LOADER_PUBLIC_KEY_FILE", global = true)]
    public_key_file: Option<PathBuf>,
    /// Load packages whose signature is missing or invalid. Only the digest is checked then: anyone able
    /// to replace the artifact can put code into the kernel. For development only.
    #[arg(long, env = "DRIVER_LOADER_INSECURE_SKIP_SIGNATURE", global = true)]
    insecure_skip_signature: bool,
    /// Package cache directory.
    #[arg(
        long,
        env = "DRIVER_LOADER_CACHE_DIR",
        default_value = "/var/cache/driver-loader",
        global = true
    )]
    cache_dir: PathBuf,
    /// Overall deadline in seconds for fetching, including waiting for a build.
    #[arg(
        long,
        env = "DRIVER_LOADER_DEADLINE_SECONDS",
        default_value_t = 1200,
        global = true
    )]
    deadline_seconds: u64,
    /// Connect timeout of one HTTP request, seconds.
    #[arg(
        long,
        env = "DRIVER_LOADER_CONNECT_TIMEOUT_SECONDS",
        default_value_t = 10,
        global = true
    )]
    connect_timeout_seconds: u64,
    /// Timeout of one whole HTTP request, seconds.
    #[arg(
        long,
        env = "DRIVER_LOADER_REQUEST_TIMEOUT_SECONDS",
        default_value_t = 300,
        global = true
    )]
    request_timeout_seconds: u64,
    /// Attempts per HTTP request (1 = no retries).
    #[arg(
        long,
        env = "DRIVER_LOADER_ATTEMPTS",
        default_value_t = 6,
        global = true
    )]
    attempts: u32,
    /// First retry backoff in milliseconds (doubles, jittered, capped at 15 s).
    #[arg(
        long,
        env = "DRIVER_LOADER_BACKOFF_MS",
        default_value_t = 500,
        global = true
    )]
    backoff_ms: u64,
    /// Largest package accepted, MiB.
    #[arg(
        long,
        env = "DRIVER_LOADER_MAX_PACKAGE_MIB",
        default_value_t = 256,
        global = true
    )]
    max_package_mib: u64,
    /// os-release file(s) to read, first existing wins (Kubernetes: /host/etc/os-release).
    #[arg(
        long = "os-release",
        env = "DRIVER_LOADER_OS_RELEASE",
        value_delimiter = ',',
        global = true
    )]
    os_release: Vec<PathBuf>,
    /// Host proc mount to read the kernel release from (default: uname).
    #[arg(long, env = "DRIVER_LOADER_PROC_ROOT", global = true)]
    proc_root: Option<PathBuf>,
    /// sysfs mount.
    #[arg(
        long,
        env = "DRIVER_LOADER_SYS_ROOT",
        default_value = "/sys",
        global = true
    )]
    sys_root: PathBuf,
    /// The host's /lib/modules.
    #[arg(
        long,
        env = "DRIVER_LOADER_MODULES_ROOT",
        default_value = "/lib/modules",
        global = true
    )]
    modules_root: PathBuf,
    /// host: install with dpkg/rpm then modprobe; container: load privately with finit_module.
    #[arg(
        long,
        value_enum,
        env = "DRIVER_LOADER_MODE",
        default_value = "host",
        global = true
    )]
    mode: ModeArg,
    /// Unload and replace a loaded module of another version.
    #[arg(long, env = "DRIVER_LOADER_REPLACE", global = true)]
    replace: bool,
    /// Fetch, verify and check, but change nothing in the kernel or the package database.
    #[arg(long, env = "DRIVER_LOADER_DRY_RUN", global = true)]
    dry_run: bool,
    /// File written after a successful run (readiness probe); removed when a run starts.
    #[arg(long, env = "DRIVER_LOADER_READY_FILE", global = true)]
    ready_file: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(
        long,
        value_enum,
        env = "DRIVER_LOADER_LOG_FORMAT",
        default_value = "text",
        global = true
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
        let public_key = match (&self.public_key, &self.public_key_file) {
            (Some(_), Some(_)) => bail!("--public-key and --public-key-file are exclusive"),
            (Some(text), None) => Some(driver_loader::verify::parse_public_key(text)?),
            (None, Some(path)) => Some(driver_loader::verify::parse_public_key(&read_secret(
                path,
                "--public-key-file",
            )?)?),
            (None, None) => None,
        };
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
            },
            source: ArtifactSource {
                base_url: self.artifact_base_url.clone(),
                layout,
                token,
                max_package_bytes: self.max_package_mib.saturating_mul(1024 * 1024),
            },
            build_service,
            trust: TrustPolicy {
                public_key,
                insecure_skip_signature: self.insecure_skip_signature,
            },
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
            sys_root: self.sys_root.clone(),
            mode: match self.mode {
                ModeArg::Host => Mode::Host,
                ModeArg::Container => Mode::Container,
            },
            replace: self.replace,
            dry_run: self.dry_run,
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
    Ok(())
}

fn inspect(module: &Path) -> Result<()> {
    let (info, _) = ModInfo::from_file(module)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<16}{}", "filename:", module.display())?;
    for (key, value) in info.entries() {
        writeln!(out, "{:<16}{value}", format!("{key}:"))?;
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

fn run(options: &Options) -> Result<()> {
    remove_ready_file(options.ready_file.as_deref())?;
    let config = options.to_config()?;
    let kernel = SysKernel {
        sys_root: config.sys_root.clone(),
    };
    let report = flow::run(&config, &kernel, &SystemTools)?;
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
    let cli = Cli::parse();
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
        Command::Run { keep_running } => run(&cli.options).and_then(|()| {
            if *keep_running {
                wait_for_termination()
            } else {
                Ok(())
            }
        }),
        Command::Ready => ready(&cli.options),
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
