//! Configuration: the command line / environment of `build-service serve` ([`ServeArgs`]) and the
//! resolved [`ServiceConfig`] that [`crate::run`] takes (tests build one directly).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kernel_id::{Arch, DriverName, ReleaseLayout};

use crate::access::{AccessConfig, Principals};
use crate::backend::Backend;
use crate::local::BuildExecutor;
use crate::module_signing::ModuleSigning;
use crate::signing::ServiceSigner;
use crate::source::SourceSettings;
use crate::store::InFlightCaps;
use crate::telemetry::LogFormat;

/// Builds in flight at once across all callers, unless configured.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;
/// Builds in flight at once per caller, unless configured (or set by its principal).
pub const DEFAULT_MAX_IN_FLIGHT_PER_CALLER: u32 = 8;
/// How long finished builds are kept, unless configured.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Requests in flight at once per client address (long polls included), unless configured.
pub const DEFAULT_MAX_REQUESTS_PER_CLIENT: usize = 256;
/// How often a watched build is re-read without a change announcement, unless configured.
pub const DEFAULT_WAIT_RECHECK: Duration = Duration::from_secs(5);

/// Everything [`crate::run`] needs.
pub struct ServiceConfig {
    /// sqlx URL (`sqlite://...?mode=rwc` or `postgres://...`).
    pub database_url: String,
    /// The driver this service builds.
    pub driver: DriverName,
    /// Release naming.
    pub layout: ReleaseLayout,
    /// Base URL of this service as nodes reach it; default `http://<bound address>`.
    pub public_url: Option<String>,
    /// Pause between polls of a running build; default 15 s, or 250 ms for the local backend.
    pub poll_interval: Option<Duration>,
    /// A build not finished this long after its request is marked timed out.
    pub build_timeout: Duration,
    /// Tracker lease per build.
    pub lease: Duration,
    /// First retry delay after a transient backend error.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Upper bound of `GET /status?wait=`.
    pub max_wait: Duration,
    /// How often the shared watcher of a build that long polls wait for re-reads it without a change
    /// announcement (a safety net: announcements come from this replica's trackers and, on
    /// PostgreSQL, from every replica). Default [`DEFAULT_WAIT_RECHECK`].
    pub wait_recheck: Duration,
    /// Long polls waiting at once, service-wide; over it a long poll answers at once with the
    /// current state. Default [`crate::waiter::DEFAULT_MAX_LONG_POLLS`].
    pub max_long_polls: usize,
    /// Requests in flight at once per client address (`None`: no cap); over it 429 with
    /// Retry-After. Default [`DEFAULT_MAX_REQUESTS_PER_CLIENT`].
    pub max_requests_per_client: Option<usize>,
    /// How often the backend's health is probed for `/healthz`, which answers from the latest probe.
    pub health_probe_interval: Duration,
    /// How long the answer "build X is in flight" is reused for identical requests without asking the
    /// store and database again (a caller may then see a build that ended within this window).
    pub in_flight_linger: Duration,
    /// Who may call, with which scopes, how often.
    pub access: AccessConfig,
    /// Caps on builds in flight, service-wide and per caller.
    pub caps: InFlightCaps,
    /// How driver versions are resolved to commits of the backend's source repository: the tag
    /// map's age and the bound on listing it again. Default [`SourceSettings::default`].
    pub source: SourceSettings,
    /// Lease owner name of this replica; default a fresh UUID per start.
    pub replica_id: Option<String>,
    /// Finished builds (rows, local build directories and logs) and audit rows older than this are
    /// pruned; published artifacts never are. Default [`DEFAULT_RETENTION`].
    pub retention: Duration,
    /// Where artifacts are and builds run.
    pub backend: BackendConfig,
    /// Routes served beside the API for a custom backend (e.g. a wrapped local backend's downloads).
    pub extra_routes: Option<axum::Router>,
    /// The certificate (DER) of the key modules are signed with, served at
    /// `GET /module-signing-cert.der` for operators to enrol; `None`: 404.
    pub module_signing_cert: Option<Vec<u8>>,
    /// The repository watcher (`watcher.rs`); `None`: off.
    pub watch: Option<crate::watcher::WatchSettings>,
}

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("database_url", &redact_url(&self.database_url))
            .field("driver", &self.driver)
            .field("layout", &self.layout)
            .field("public_url", &self.public_url)
            .field("poll_interval", &self.poll_interval)
            .field("build_timeout", &self.build_timeout)
            .field("lease", &self.lease)
            .field("access", &self.access)
            .field("caps", &self.caps)
            .field("max_long_polls", &self.max_long_polls)
            .field("max_requests_per_client", &self.max_requests_per_client)
            .field("retention", &self.retention)
            .field("source", &self.source)
            .field("module_signing_cert", &self.module_signing_cert.is_some())
            .finish_non_exhaustive()
    }
}

/// Hides a password in a database URL for logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

impl ServiceConfig {
    /// Defaults around a database URL and a backend: per-artifact releases, 15 min build timeout,
    /// 60 s leases, 1 s..60 s retries, 60 s max long poll, anonymous callers (loopback only), no
    /// rate limit, at most [`DEFAULT_MAX_IN_FLIGHT`] builds in flight and
    /// [`DEFAULT_MAX_IN_FLIGHT_PER_CALLER`] per caller.
    pub fn new(database_url: String, driver: DriverName, backend: BackendConfig) -> Self {
        Self {
            database_url,
            driver,
            layout: ReleaseLayout::PerArtifact,
            public_url: None,
            poll_interval: None,
            build_timeout: Duration::from_secs(15 * 60),
            lease: Duration::from_secs(60),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            max_wait: Duration::from_secs(60),
            wait_recheck: DEFAULT_WAIT_RECHECK,
            max_long_polls: crate::waiter::DEFAULT_MAX_LONG_POLLS,
            max_requests_per_client: Some(DEFAULT_MAX_REQUESTS_PER_CLIENT),
            health_probe_interval: crate::health::DEFAULT_PROBE_INTERVAL,
            in_flight_linger: Duration::from_millis(500),
            access: AccessConfig::default(),
            caps: InFlightCaps {
                total: Some(DEFAULT_MAX_IN_FLIGHT),
                per_caller: Some(DEFAULT_MAX_IN_FLIGHT_PER_CALLER),
            },
            source: SourceSettings::default(),
            replica_id: None,
            retention: DEFAULT_RETENTION,
            backend,
            extra_routes: None,
            module_signing_cert: None,
            watch: None,
        }
    }
}

/// The backend to run with.
pub enum BackendConfig {
    /// The embedded default: artifact directory served here, builds on this host.
    Local(Box<LocalConfig>),
    /// Any other backend, already constructed (the GitHub backend, or a test's).
    Custom(Arc<dyn Backend>),
}

impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(local) => f.debug_tuple("Local").field(local).finish(),
            Self::Custom(backend) => f.debug_tuple("Custom").field(&backend.name()).finish(),
        }
    }
}

/// Settings of the local backend.
pub struct LocalConfig {
    /// Published artifacts.
    pub artifact_dir: PathBuf,
    /// Per-build state, logs and outputs.
    pub builds_dir: PathBuf,
    /// The driver's git repository (a local path or a URL); its tags are the driver versions.
    pub driver_repo: String,
    /// The driver's directory inside the repository (empty: the root).
    pub driver_subdir: PathBuf,
    /// Where the repository's bare mirror is kept.
    pub source_mirror: PathBuf,
    /// Builds at once.
    pub max_concurrent_builds: usize,
    /// Signs packages the builder left unsigned.
    pub signer: Option<ServiceSigner>,
    /// Runs builds.
    pub executor: Arc<dyn BuildExecutor>,
}

impl std::fmt::Debug for LocalConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalConfig")
            .field("artifact_dir", &self.artifact_dir)
            .field("builds_dir", &self.builds_dir)
            .field("driver_repo", &self.driver_repo)
            .field("driver_subdir", &self.driver_subdir)
            .field("source_mirror", &self.source_mirror)
            .field("max_concurrent_builds", &self.max_concurrent_builds)
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

/// `build-service` command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "build-service",
    version,
    about = "Turns a driver-artifact miss into exactly one build"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve(Box<ServeArgs>),
    /// One repository watcher pass against a running service: families from its `GET /fleet`,
    /// prebuilds by `POST /build` with a token; prints the pass's summary (JSON).
    Watch(Box<crate::watcher::cli::WatchCliArgs>),
    /// Print the SHA-256 of the token on standard input, as a principals file stores it.
    HashToken,
    /// Print a new random token on standard output (give it to the caller, keep it nowhere else)
    /// and, on standard error, the principals-file entry that authenticates it.
    NewToken {
        /// The principal's name.
        #[arg(long)]
        name: String,
        /// Scopes to grant (request-build, read-status, admin, report).
        #[arg(long = "scope", required = true, value_parser = ["request-build", "read-status", "admin", "report"])]
        scopes: Vec<String>,
    },
    /// Make a signing key pair: the secret key at `--out` (mode 0600, never over an existing
    /// file) and its public key at `--out`.pub (give that to loaders).
    NewSigningKey {
        /// Where to write the secret key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Key rotation: re-sign what the local backend published with a new key. Every package and
    /// provenance file is first verified with the keys trusted until now (`--trusted-key`); then the
    /// package gets a signature by the new key (the old `.minisig` is kept as
    /// `.minisig.<old key id>`) and each provenance envelope gains the new key's signature.
    Resign {
        /// The local backend's artifact directory (`<state dir>/artifacts` by default).
        #[arg(long)]
        artifact_dir: PathBuf,
        /// Public keys the published artifacts are verified with (the old key).
        #[arg(long = "trusted-key", required = true)]
        trusted_keys: Vec<PathBuf>,
        /// The new secret key.
        #[arg(long)]
        signing_key: PathBuf,
        /// File holding the new key's password (for an encrypted key).
        #[arg(long)]
        signing_key_password_file: Option<PathBuf>,
    },
}

/// `--module-signing-hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModuleSigningHash {
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl From<ModuleSigningHash> for build_root::executor::ModuleSignHash {
    fn from(hash: ModuleSigningHash) -> Self {
        match hash {
            ModuleSigningHash::Sha256 => Self::Sha256,
            ModuleSigningHash::Sha512 => Self::Sha512,
        }
    }
}

/// Which backend builds and stores artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Artifact directory served by this service + clean-root builds on this host.
    Local,
    /// GitHub Releases + GitHub Actions `workflow_dispatch`.
    Github,
}

/// Options of `build-service serve` (each also from the environment).
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "BUILD_SERVICE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// State directory (SQLite database, local build logs and outputs, default artifact directory).
    #[arg(
        long,
        env = "BUILD_SERVICE_STATE_DIR",
        default_value = "/var/lib/build-service"
    )]
    pub state_dir: PathBuf,
    /// Database URL; default `sqlite://<state dir>/builds.db?mode=rwc`. PostgreSQL for several replicas.
    #[arg(long, env = "BUILD_SERVICE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Backend.
    #[arg(
        long,
        env = "BUILD_SERVICE_BACKEND",
        value_enum,
        default_value = "local"
    )]
    pub backend: BackendKind,
    /// Local backend: where published artifacts live; default `<state dir>/artifacts`.
    #[arg(long, env = "BUILD_SERVICE_ARTIFACT_DIR")]
    pub artifact_dir: Option<PathBuf>,
    /// Driver name (kernel-id DriverName rules).
    #[arg(
        long,
        env = "BUILD_SERVICE_DRIVER_NAME",
        default_value = "example-driver"
    )]
    pub driver_name: String,
    /// Local backend: the driver's git repository, a local path or a URL (https://, ssh://,
    /// file://, user@host:path). Its tags are the driver versions; each build is made from the
    /// commit its version's tag named when the build was requested. Mirrored under
    /// `<state dir>/driver-source.git`.
    #[arg(long, env = "BUILD_SERVICE_DRIVER_REPO")]
    pub driver_repo: Option<String>,
    /// Local backend: the driver's directory inside the repository (default: its root).
    #[arg(long, env = "BUILD_SERVICE_DRIVER_SUBDIR")]
    pub driver_subdir: Option<PathBuf>,
    /// How often the driver repository's tags may be listed again (on a version missing from the
    /// cached tags, or when they are older than --source-max-age).
    #[arg(long, env = "BUILD_SERVICE_SOURCE_REFRESH_INTERVAL", value_parser = parse_duration, default_value = "5s")]
    pub source_refresh_interval: Duration,
    /// How long the listed tags answer before they are listed again (how soon a moved tag is seen).
    #[arg(long, env = "BUILD_SERVICE_SOURCE_MAX_AGE", value_parser = parse_duration, default_value = "60s")]
    pub source_max_age: Duration,
    /// Release layout: per-artifact or per-driver-version.
    #[arg(
        long,
        env = "BUILD_SERVICE_RELEASE_LAYOUT",
        default_value = "per-artifact"
    )]
    pub release_layout: String,
    /// Base URL nodes reach this service at (download URLs of the local backend); default from --listen.
    #[arg(long, env = "BUILD_SERVICE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Poll interval of running builds (e.g. 15s, 250ms); default 15s for GitHub, 250ms local.
    #[arg(long, env = "BUILD_SERVICE_POLL_INTERVAL", value_parser = parse_duration)]
    pub poll_interval: Option<Duration>,
    /// A build not finished this long after its request is marked timed_out.
    #[arg(long, env = "BUILD_SERVICE_BUILD_TIMEOUT", value_parser = parse_duration, default_value = "15m")]
    pub build_timeout: Duration,
    /// Tracker lease per build; another replica takes a build over when it lapses.
    #[arg(long, env = "BUILD_SERVICE_LEASE", value_parser = parse_duration, default_value = "60s")]
    pub lease: Duration,
    /// Upper bound of GET /status?wait=.
    #[arg(long, env = "BUILD_SERVICE_MAX_WAIT", value_parser = parse_duration, default_value = "60s")]
    pub max_wait: Duration,
    /// Long polls (GET /status?wait=) waiting at once; over it a long poll answers at once with the
    /// current state.
    #[arg(long, env = "BUILD_SERVICE_MAX_LONG_POLLS", default_value_t = crate::waiter::DEFAULT_MAX_LONG_POLLS)]
    pub max_long_polls: usize,
    /// Requests in flight at once per client address, long polls included (0 = no cap); over it
    /// 429 with Retry-After.
    #[arg(long, env = "BUILD_SERVICE_MAX_REQUESTS_PER_CLIENT", default_value_t = DEFAULT_MAX_REQUESTS_PER_CLIENT)]
    pub max_requests_per_client: usize,
    /// How often the shared watcher of a build that long polls wait for re-reads it without a change
    /// announcement (catches changes by another process on the same SQLite file, or a missed
    /// PostgreSQL notification).
    #[arg(long, env = "BUILD_SERVICE_WAIT_RECHECK", value_parser = parse_duration, default_value = "5s")]
    pub wait_recheck: Duration,
    /// How often the backend's health is probed; /healthz answers from the latest probe.
    #[arg(long, env = "BUILD_SERVICE_HEALTH_PROBE_INTERVAL", value_parser = parse_duration, default_value = "15s")]
    pub health_probe_interval: Duration,
    /// Finished builds (database rows, local build directories and logs) and request audit rows
    /// older than this are pruned, and so are the reports of nodes silent for longer (and
    /// first-boot waits older than it); published artifacts never are.
    #[arg(long, env = "BUILD_SERVICE_RETENTION", value_parser = parse_duration, default_value = "30d")]
    pub retention: Duration,
    /// Local backend: builds at once.
    #[arg(long, env = "BUILD_SERVICE_MAX_CONCURRENT_BUILDS", default_value_t = 2)]
    pub max_concurrent_builds: usize,
    /// Local backend: static driver-builder binary for x86_64 roots.
    #[arg(long, env = "BUILD_SERVICE_BUILDER_X86_64")]
    pub builder_x86_64: Option<PathBuf>,
    /// Local backend: static driver-builder binary for aarch64 roots.
    #[arg(long, env = "BUILD_SERVICE_BUILDER_AARCH64")]
    pub builder_aarch64: Option<PathBuf>,
    /// Local backend: cache of build roots; default `<state dir>/build-roots`.
    #[arg(long, env = "BUILD_SERVICE_ROOT_CACHE")]
    pub root_cache: Option<PathBuf>,
    /// Local backend: the service's minisign secret key (mode 0600; `build-service
    /// new-signing-key` makes one). It signs every published package and its build provenance.
    #[arg(long, env = "BUILD_SERVICE_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// Local backend: PEM private key every built module is signed with by the kernel's sign-file,
    /// for kernels that enforce module signatures (Secure Boot, module.sig_enforce=1). Mode 0600,
    /// unencrypted; needs --module-signing-cert.
    #[arg(
        long,
        env = "BUILD_SERVICE_MODULE_SIGNING_KEY",
        requires = "module_signing_cert"
    )]
    pub module_signing_key: Option<PathBuf>,
    /// Local backend: the module-signing key's X.509 certificate (PEM or DER); served at
    /// GET /module-signing-cert.der for enrolment (mokutil --import, UEFI db).
    #[arg(
        long,
        env = "BUILD_SERVICE_MODULE_SIGNING_CERT",
        requires = "module_signing_key"
    )]
    pub module_signing_cert: Option<PathBuf>,
    /// Local backend: the hash modules are signed with (the kernel must have it built in).
    #[arg(
        long,
        env = "BUILD_SERVICE_MODULE_SIGNING_HASH",
        value_enum,
        default_value = "sha256"
    )]
    pub module_signing_hash: ModuleSigningHash,
    /// Local backend: the builder id written into provenance (`runDetails.builder.id`); loaders
    /// list it in `--allowed-builder`.
    #[arg(long, env = "BUILD_SERVICE_BUILDER_ID", default_value = crate::signing::DEFAULT_LOCAL_BUILDER_ID)]
    pub builder_id: String,
    /// File holding the signing key's password (for an encrypted key).
    #[arg(long, env = "BUILD_SERVICE_SIGNING_KEY_PASSWORD_FILE")]
    pub signing_key_password_file: Option<PathBuf>,
    /// Principals file (TOML: name, token_sha256, scopes, optional limits), re-read on SIGHUP. Without
    /// it every caller is anonymous, which is allowed only on a loopback --listen address.
    #[arg(long, env = "BUILD_SERVICE_PRINCIPALS_FILE")]
    pub principals_file: Option<PathBuf>,
    /// Serve callers without a token as anonymous (request-build, read-status and report, limited
    /// by address), even on a non-loopback address.
    #[arg(long, env = "BUILD_SERVICE_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// Proxy networks (CIDR, comma-separated or repeated) whose X-Forwarded-For names the client.
    #[arg(long, env = "BUILD_SERVICE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxy: Vec<ipnet::IpNet>,
    /// Builds in flight at once across all callers.
    #[arg(long, env = "BUILD_SERVICE_MAX_BUILDS_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_builds_in_flight: u32,
    /// Builds in flight at once per caller (a principal's max_in_flight overrides it).
    #[arg(long, env = "BUILD_SERVICE_MAX_BUILDS_IN_FLIGHT_PER_CALLER", default_value_t = DEFAULT_MAX_IN_FLIGHT_PER_CALLER)]
    pub max_builds_in_flight_per_caller: u32,
    /// Per-caller rate limit on the API, requests per minute (0 = off).
    #[arg(long, env = "BUILD_SERVICE_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit_per_minute: u32,
    /// Burst allowed above the rate.
    #[arg(long, env = "BUILD_SERVICE_RATE_BURST", default_value_t = 30)]
    pub rate_limit_burst: u32,
    /// Log format.
    #[arg(
        long,
        env = "BUILD_SERVICE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// GitHub backend options.
    #[command(flatten)]
    pub github: GithubArgs,
    /// Repository watcher options (off unless a source is given).
    #[command(flatten)]
    pub watch: crate::watcher::WatchArgs,
}

/// Options of the GitHub backend.
#[derive(Debug, Clone, clap::Args)]
pub struct GithubArgs {
    /// Repository owner holding the workflow and the releases.
    #[arg(long, env = "BUILD_SERVICE_GITHUB_OWNER")]
    pub github_owner: Option<String>,
    /// Repository name.
    #[arg(long, env = "BUILD_SERVICE_GITHUB_REPO")]
    pub github_repo: Option<String>,
    /// Workflow file dispatched.
    #[arg(long, env = "BUILD_SERVICE_GITHUB_WORKFLOW", default_value = crate::github::DEFAULT_WORKFLOW_FILE)]
    pub github_workflow: String,
    /// Branch the workflow is dispatched on.
    #[arg(long, env = "BUILD_SERVICE_GITHUB_REF", default_value = crate::github::DEFAULT_GIT_REF)]
    pub github_ref: String,
    /// REST API base URL (GitHub Enterprise: https://HOST/api/v3).
    #[arg(long, env = "BUILD_SERVICE_GITHUB_API_URL", default_value = crate::github::DEFAULT_API_BASE_URL)]
    pub github_api_url: String,
    /// File holding a token (PAT, fine-grained token or GITHUB_TOKEN).
    #[arg(long, env = "BUILD_SERVICE_GITHUB_TOKEN_FILE")]
    pub github_token_file: Option<PathBuf>,
    /// GitHub App id (with --github-app-key-file and --github-installation-id).
    #[arg(long, env = "BUILD_SERVICE_GITHUB_APP_ID")]
    pub github_app_id: Option<u64>,
    /// GitHub App private key (PEM).
    #[arg(long, env = "BUILD_SERVICE_GITHUB_APP_KEY_FILE")]
    pub github_app_key_file: Option<PathBuf>,
    /// GitHub App installation id.
    #[arg(long, env = "BUILD_SERVICE_GITHUB_INSTALLATION_ID")]
    pub github_installation_id: Option<u64>,
    /// Settle time of a dispatch whose outcome is unknown (answer lost, or its replica died): how long
    /// after the call its run surely shows in GitHub's run list. Only then is the run looked up by
    /// build id, and the dispatch sent again if there is none.
    #[arg(long, env = "BUILD_SERVICE_GITHUB_DISPATCH_SETTLE", value_parser = parse_duration, default_value = "30s")]
    pub github_dispatch_settle: Duration,
}

impl GithubArgs {
    /// The GitHub backend's configuration.
    pub fn to_config(
        &self,
        driver: &DriverName,
        layout: ReleaseLayout,
    ) -> anyhow::Result<crate::github::GitHubConfig> {
        let owner = self
            .github_owner
            .clone()
            .context("--github-owner is required with --backend github")?;
        let repo = self
            .github_repo
            .clone()
            .context("--github-repo is required with --backend github")?;
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        let auth = match (
            &self.github_token_file,
            self.github_app_id,
            &self.github_app_key_file,
            self.github_installation_id,
        ) {
            (Some(token_file), None, None, None) => {
                crate::github::GitHubAuth::Token(read(token_file)?.trim().to_owned())
            }
            (None, Some(app_id), Some(key_file), Some(installation_id)) => {
                crate::github::GitHubAuth::App {
                    app_id,
                    private_key_pem: read(key_file)?,
                    installation_id,
                }
            }
            _ => anyhow::bail!(
                "GitHub auth: give either --github-token-file, or all of --github-app-id, --github-app-key-file \
                 and --github-installation-id"
            ),
        };
        let mut config = crate::github::GitHubConfig::new(owner, repo, auth, driver.clone());
        config.workflow_file = self.github_workflow.clone();
        config.git_ref = self.github_ref.clone();
        config.api_base_url = self.github_api_url.trim_end_matches('/').to_owned();
        config.layout = layout;
        config.tuning.ambiguous_settle = self.github_dispatch_settle;
        Ok(config)
    }
}

/// Parses `250ms`, `15s`, `15m`, `1h`, `30d` or bare seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("'{raw}' is not a duration like 250ms, 15s, 15m or 1h"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(value),
        "" | "s" => Duration::from_secs(value),
        "m" => Duration::from_secs(value.saturating_mul(60)),
        "h" => Duration::from_secs(value.saturating_mul(3600)),
        "d" => Duration::from_secs(value.saturating_mul(24 * 3600)),
        _ => return Err(format!("'{raw}': unit must be ms, s, m, h or d")),
    };
    if duration.is_zero() {
        return Err(format!("'{raw}' must be longer than zero"));
    }
    Ok(duration)
}

impl ServeArgs {
    /// Resolves the options into a [`ServiceConfig`], loading keys and token files.
    pub fn into_config(self) -> anyhow::Result<ServiceConfig> {
        let driver = DriverName::parse(&self.driver_name).context("--driver-name")?;
        let layout = ReleaseLayout::parse(&self.release_layout).context("--release-layout")?;
        std::fs::create_dir_all(&self.state_dir)
            .with_context(|| format!("creating state directory {}", self.state_dir.display()))?;
        let database_url = self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.state_dir.join("builds.db").display()
            )
        });
        let module_signing = match (&self.module_signing_key, &self.module_signing_cert) {
            (Some(key), Some(cert)) => {
                if self.backend != BackendKind::Local {
                    anyhow::bail!(
                        "--module-signing-key/--module-signing-cert are for the local backend: on \
                         GitHub the workflow signs modules with the MODULE_SIGNING_KEY and \
                         MODULE_SIGNING_CERT secrets"
                    );
                }
                let signing = ModuleSigning::load(key, cert, self.module_signing_hash.into())
                    .context("checking the module-signing key and certificate")?;
                tracing::info!(
                    key = %key.display(),
                    subject = %signing.subject(),
                    hash = signing.hash().as_str(),
                    "every module is signed for Secure Boot; the certificate is served at {}",
                    crate::module_signing::CERT_ROUTE
                );
                Some(signing)
            }
            _ => None,
        };
        let backend = match self.backend {
            BackendKind::Local => {
                let signer = match &self.signing_key {
                    Some(path) => {
                        let password = match &self.signing_key_password_file {
                            Some(file) => Some(
                                std::fs::read_to_string(file)
                                    .with_context(|| format!("reading {}", file.display()))?
                                    .trim_end_matches(['\r', '\n'])
                                    .to_owned(),
                            ),
                            None => None,
                        };
                        Some(
                            ServiceSigner::load(path, password, self.builder_id.clone())
                                .context("loading the signing key")?,
                        )
                    }
                    None => None,
                };
                let mut executor_config = build_root::executor::ExecutorConfig::new(
                    self.root_cache
                        .clone()
                        .unwrap_or_else(|| self.state_dir.join("build-roots")),
                );
                let mut builders = BTreeMap::new();
                if let Some(path) = &self.builder_x86_64 {
                    builders.insert(Arch::X86_64, path.clone());
                }
                if let Some(path) = &self.builder_aarch64 {
                    builders.insert(Arch::Aarch64, path.clone());
                }
                executor_config.builder_binaries = builders;
                executor_config.build_timeout = self.build_timeout;
                if let Some(signing) = &module_signing {
                    executor_config.module_signing = Some(
                        signing
                            .executor_input(&self.state_dir.join(crate::module_signing::CERT_FILE))
                            .context("writing the module-signing certificate for the builds")?,
                    );
                }
                BackendConfig::Local(Box::new(LocalConfig {
                    artifact_dir: self
                        .artifact_dir
                        .clone()
                        .unwrap_or_else(|| self.state_dir.join("artifacts")),
                    builds_dir: self.state_dir.join("builds"),
                    driver_repo: self.driver_repo.clone().context(
                        "--driver-repo is required with --backend local: the driver's git \
                         repository, whose tags are the driver versions",
                    )?,
                    driver_subdir: self.driver_subdir.clone().unwrap_or_default(),
                    source_mirror: self.state_dir.join("driver-source.git"),
                    max_concurrent_builds: self.max_concurrent_builds,
                    signer,
                    executor: Arc::new(build_root::executor::LocalExecutor::new(executor_config)),
                }))
            }
            BackendKind::Github => {
                let github = self.github.to_config(&driver, layout)?;
                let backend = crate::github::GitHubBackend::new(github)
                    .context("configuring the GitHub backend")?;
                BackendConfig::Custom(Arc::new(backend))
            }
        };
        let mut config = ServiceConfig::new(database_url, driver, backend);
        config.watch = self
            .watch
            .to_settings(self.state_dir.join(crate::watcher::STATE_FILE))?;
        config.module_signing_cert =
            module_signing.map(|signing| signing.certificate_der().to_vec());
        config.layout = layout;
        config.public_url = self.public_url.clone();
        config.poll_interval = self.poll_interval;
        config.build_timeout = self.build_timeout;
        config.lease = self.lease;
        config.max_wait = self.max_wait;
        config.retention = self.retention;
        config.max_long_polls = self.max_long_polls;
        config.wait_recheck = self.wait_recheck;
        config.max_requests_per_client =
            (self.max_requests_per_client > 0).then_some(self.max_requests_per_client);
        config.health_probe_interval = self.health_probe_interval;
        config.source = SourceSettings {
            refresh_interval: self.source_refresh_interval,
            max_age: self.source_max_age,
        };
        let principals = match &self.principals_file {
            Some(path) => Some(Principals::from_file(path)?),
            None => None,
        };
        config.access = AccessConfig {
            principals,
            principals_file: self.principals_file.clone(),
            allow_anonymous: self.allow_anonymous,
            trusted_proxies: self.trusted_proxy.clone(),
            rate_limit: (self.rate_limit_per_minute > 0)
                .then_some((self.rate_limit_per_minute, self.rate_limit_burst)),
        };
        // Checked before anything is bound, so a refused start never listens at all.
        config.access.check_exposure(self.listen)?;
        config.caps = InFlightCaps {
            total: Some(self.max_builds_in_flight.max(1)),
            per_caller: Some(self.max_builds_in_flight_per_caller.max(1)),
        };
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("15 minutes").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn the_local_backend_needs_a_driver_repository() {
        use clap::Parser;
        let state = tempfile::tempdir().expect("dir");
        let parse = |extra: &[&str]| {
            let mut args = vec!["build-service", "serve", "--state-dir"];
            let state = state.path().to_str().expect("utf-8");
            args.push(state);
            args.extend_from_slice(extra);
            let Command::Serve(serve) = Cli::try_parse_from(args).expect("parses").command else {
                panic!("serve");
            };
            serve.into_config()
        };
        let error = parse(&[]).expect_err("no repository").to_string();
        assert!(error.contains("--driver-repo"), "{error}");
        let config = parse(&[
            "--driver-repo",
            "https://git.example/driver.git",
            "--driver-subdir",
            "driver/example-driver",
        ])
        .expect("configured");
        let BackendConfig::Local(local) = config.backend else {
            panic!("local backend");
        };
        assert_eq!(local.driver_repo, "https://git.example/driver.git");
        assert_eq!(local.driver_subdir, PathBuf::from("driver/example-driver"));
        assert_eq!(local.source_mirror, state.path().join("driver-source.git"));
        assert_eq!(config.source, SourceSettings::default());
    }

    /// A module-signing key pair made with openssl in `dir` (`<name>.key` with `mode`, `<name>.pem`).
    fn module_key_pair(dir: &std::path::Path, name: &str, mode: u32) -> (String, String) {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.join(format!("{name}.key"));
        let cert = dir.join(format!("{name}.pem"));
        let status = std::process::Command::new("openssl")
            .args([
                "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN={name}/")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
        (
            key.to_str().expect("utf-8").to_owned(),
            cert.to_str().expect("utf-8").to_owned(),
        )
    }

    #[test]
    fn module_signing_needs_a_private_key_of_its_certificate_that_only_its_owner_reads() {
        use clap::Parser;
        let state = tempfile::tempdir().expect("dir");
        let keys = tempfile::tempdir().expect("dir");
        let state_arg = state.path().to_str().expect("utf-8").to_owned();
        let args = |extra: &[&str]| {
            let mut args = vec![
                "build-service",
                "serve",
                "--state-dir",
                &state_arg,
                "--driver-repo",
                "https://git.example/driver.git",
            ];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args).map(|cli| {
                let Command::Serve(serve) = cli.command else {
                    panic!("serve");
                };
                serve
            })
        };
        let (key, cert) = module_key_pair(keys.path(), "one", 0o600);
        let (exposed, exposed_cert) = module_key_pair(keys.path(), "exposed", 0o644);
        let (_, other_cert) = module_key_pair(keys.path(), "two", 0o600);

        // Both or neither.
        assert!(args(&["--module-signing-key", &key]).is_err());
        assert!(args(&["--module-signing-cert", &cert]).is_err());
        let unsigned = args(&[])
            .expect("parses")
            .into_config()
            .expect("configured");
        assert!(unsigned.module_signing_cert.is_none());

        let refused = args(&[
            "--module-signing-key",
            &exposed,
            "--module-signing-cert",
            &exposed_cert,
        ])
        .expect("parses")
        .into_config()
        .expect_err("a key others can read");
        let message = format!("{refused:#}");
        assert!(
            message.contains("must not be readable by group or others (mode 0644)")
                && message.contains(&format!("chmod 600 {exposed}")),
            "{message}"
        );

        let mismatch = args(&[
            "--module-signing-key",
            &key,
            "--module-signing-cert",
            &other_cert,
        ])
        .expect("parses")
        .into_config()
        .expect_err("the certificate of another key");
        assert!(
            format!("{mismatch:#}").contains("do not belong together"),
            "{mismatch:#}"
        );

        let config = args(&[
            "--module-signing-key",
            &key,
            "--module-signing-cert",
            &cert,
            "--module-signing-hash",
            "sha512",
        ])
        .expect("parses")
        .into_config()
        .expect("configured");
        let der = std::fs::read(state.path().join(crate::module_signing::CERT_FILE))
            .expect("the certificate's DER is written for the builds");
        assert_eq!(config.module_signing_cert.as_deref(), Some(der.as_slice()));
        assert_eq!(der[0], 0x30);

        let github = args(&[
            "--backend",
            "github",
            "--module-signing-key",
            &key,
            "--module-signing-cert",
            &cert,
        ])
        .expect("parses")
        .into_config()
        .expect_err("the workflow signs on GitHub");
        assert!(
            format!("{github:#}").contains("MODULE_SIGNING_KEY"),
            "{github:#}"
        );
    }

    #[test]
    fn database_passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://svc:secret@db:5432/builds"),
            "postgres://svc:***@db:5432/builds"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/b.db?mode=rwc"),
            "sqlite:///var/lib/b.db?mode=rwc"
        );
    }
}
