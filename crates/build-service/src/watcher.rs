//! The repository watcher inside the service (issue #15): every `--watch-interval`, and on
//! `POST /watcher/run` (scope `admin`), one pass of repo-watch over the distributions' own indexes
//! for the kernel families the fleet runs, then a prebuild of the newest published kernel of each
//! family (headers published too, newer than every kernel the family's nodes run) for every driver
//! version those nodes run.
//!
//! - Families in use come from the fleet inventory ([`Coordinator::families_in_use`]) and, with
//!   `--kernels-json`, from kernels.json (whose families get the `--watch-driver-version`s). A
//!   family nobody runs is never read, let alone built.
//! - Each prebuild goes through [`Coordinator::request_build`] as the built-in principal
//!   [`WATCHER_PRINCIPAL`], so artifact lookup, dedup, caps, commit resolution and the audit trail
//!   are exactly those of an on-demand build.
//! - A kernel whose prebuild was accepted (created, joined or already published) is appended to
//!   kernels.json with repo-watch's locked writer (matrix-gen's `add-kernel` uses the same), so the
//!   nightly batch keeps it and the next pass sees the family as already on it.
//! - The state file (`<state dir>/repo-watch-state.json`) keeps each index's validators and
//!   digests, so an unchanged pass costs one conditional request per index.
//!
//! The same pass runs outside the service as `build-service watch` ([`cli`]): families from the
//! service's `GET /fleet`, prebuilds by `POST /build` with a token, for a scheduled workflow.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use build_api::{BuildRequest, PrebuildOutcome, WatchBytes, WatchFamily, WatchPass, WatchPrebuild};
use kernel_id::{
    Arch, DistroVersion, DriverVersion, KernelFamily, KernelIdentity, KernelRelease, KernelsFile,
};
use repo_watch::{FamilyDemand, IndexKind, Observation, RpmSource, Sources, Watcher};

use crate::access::{Caller, Principal, Scope, WATCHER_PRINCIPAL};
use crate::api::error_body;
use crate::config::parse_duration;
use crate::coordinator::{Coordinator, Requested};

/// Default time between passes when a source is configured.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// The state file's name under the service's state directory.
pub const STATE_FILE: &str = "repo-watch-state.json";

/// Passes run, by the service's watcher.
pub const PASSES: &str = "kdriver_watcher_passes_total";
/// Index bytes downloaded, by `kind` (`inrelease`, `packages`, `repomd`, `primary`).
pub const INDEX_BYTES: &str = "kdriver_watcher_index_bytes_total";
/// Index requests, by `kind` and `result` (`fetched`, `not_modified`, `reused`, `missing`).
pub const INDEX_REQUESTS: &str = "kdriver_watcher_index_requests_total";
/// Prebuild requests, by `outcome` (`created`, `joined`, `published`, `refused`).
pub const PREBUILDS: &str = "kdriver_watcher_prebuilds_total";
/// The last pass's time from the first changed index seen to the last prebuild requested.
pub const NEW_INDEX_TO_PREBUILD: &str = "kdriver_watcher_new_index_to_prebuild_seconds";

/// Where and how often to watch: the flags of `build-service serve` and `build-service watch`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WatchArgs {
    /// Debian archive to watch for newer kernels (`http://deb.debian.org/debian`): the
    /// `<codename>`, `-updates` and `-backports` suites.
    #[arg(long, env = "BUILD_SERVICE_WATCH_DEBIAN_MIRROR", value_parser = parse_mirror)]
    pub watch_debian_mirror: Option<String>,
    /// Debian security archive (`http://deb.debian.org/debian-security`): `<codename>-security`.
    #[arg(long, env = "BUILD_SERVICE_WATCH_DEBIAN_SECURITY_MIRROR", value_parser = parse_mirror)]
    pub watch_debian_security_mirror: Option<String>,
    /// Ubuntu archive for amd64 (`http://archive.ubuntu.com/ubuntu`): `<codename>`, `-updates`,
    /// `-security`, `-backports`.
    #[arg(long, env = "BUILD_SERVICE_WATCH_UBUNTU_MIRROR", value_parser = parse_mirror)]
    pub watch_ubuntu_mirror: Option<String>,
    /// Ubuntu ports archive for arm64 (`http://ports.ubuntu.com/ubuntu-ports`), same suites.
    #[arg(long, env = "BUILD_SERVICE_WATCH_UBUNTU_PORTS_MIRROR", value_parser = parse_mirror)]
    pub watch_ubuntu_ports_mirror: Option<String>,
    /// An rpm-md repository, `<distribution>:<version>:<arch>=<base URL>` (the directory holding
    /// `repodata/`); repeatable. Amazon Linux 2023's livepatch repository is one more of these.
    #[arg(long = "watch-rpm-repo", value_parser = parse_rpm_repo)]
    pub watch_rpm_repo: Vec<RpmSource>,
    /// Time between passes (serve only; default 30m once a source is configured).
    #[arg(long, env = "BUILD_SERVICE_WATCH_INTERVAL", value_parser = parse_duration)]
    pub watch_interval: Option<Duration>,
    /// Driver versions to prebuild for the families kernels.json defines (repeatable); families
    /// in the fleet inventory get the versions their nodes run.
    #[arg(long = "watch-driver-version")]
    pub watch_driver_version: Vec<String>,
    /// Verify every apt InRelease with `gpgv` against this keyring (repeatable, a signature by a
    /// key of any is good). Default: the archive keyrings of the configured distributions found
    /// on this host (`/usr/share/keyrings/debian-archive-keyring.gpg`,
    /// `ubuntu-archive-keyring.gpg`); an apt source without any keyring is refused at startup
    /// unless --watch-allow-unsigned-indexes is given.
    #[arg(long = "watch-apt-keyring")]
    pub watch_apt_keyring: Vec<PathBuf>,
    /// Do not check InRelease signatures unless --watch-apt-keyring is given: only the Packages
    /// digests are checked against InRelease, so whoever answers for the mirror chooses which
    /// kernels get prebuilt. For test mirrors.
    #[arg(long = "watch-allow-unsigned-indexes")]
    pub watch_allow_unsigned_indexes: bool,
    /// kernels.json: its kernels define families too, and prebuilt kernels are appended to it.
    #[arg(long, env = "BUILD_SERVICE_KERNELS_JSON")]
    pub kernels_json: Option<PathBuf>,
}

/// An http(s) base URL without a trailing slash.
fn parse_mirror(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("'{raw}' is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "'{raw}' must be an http:// or https:// URL with a host"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("'{raw}' must not have a query or fragment"));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// `<distribution>:<version>:<arch>=<base URL>`.
fn parse_rpm_repo(raw: &str) -> Result<RpmSource, String> {
    let rule = "must be <distribution>:<version>:<arch>=<base URL>, e.g. \
                amazonlinux:2023:x86_64=https://cdn.amazonlinux.com/al2023/core/mirrors/latest/x86_64";
    let (target, base) = raw
        .split_once('=')
        .ok_or_else(|| format!("'{raw}' {rule}"))?;
    let mut parts = target.split(':');
    let (Some(distribution), Some(version), Some(arch), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("'{raw}' {rule}"));
    };
    let distribution = kernel_id::Distribution::parse(distribution)
        .map_err(|e| format!("'{raw}': distribution: {}", e.rule()))?;
    if distribution.package_format() != kernel_id::PackageFormat::Rpm {
        return Err(format!(
            "'{raw}': {distribution} is not an rpm distribution (use --watch-debian-mirror or \
             --watch-ubuntu-mirror)"
        ));
    }
    let distro_version = DistroVersion::supported(distribution, version)
        .map_err(|e| format!("'{raw}': distro_version: {}", e.rule()))?;
    let arch = Arch::parse(arch).map_err(|e| format!("'{raw}': architecture: {}", e.rule()))?;
    Ok(RpmSource {
        distro_version,
        arch,
        base: parse_mirror(base)?,
    })
}

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// Where to look.
    pub sources: Sources,
    /// Time between passes.
    pub interval: Duration,
    /// The state file.
    pub state_path: PathBuf,
    /// kernels.json, when configured.
    pub kernels_json: Option<PathBuf>,
    /// Driver versions for kernels.json's families.
    pub driver_versions: BTreeSet<DriverVersion>,
    /// gpgv keyrings for InRelease files (none: signatures are not checked).
    pub apt_keyrings: Vec<PathBuf>,
}

impl WatchArgs {
    /// The configured sources.
    pub fn sources(&self) -> Sources {
        Sources {
            debian_mirror: self.watch_debian_mirror.clone(),
            debian_security_mirror: self.watch_debian_security_mirror.clone(),
            ubuntu_mirror: self.watch_ubuntu_mirror.clone(),
            ubuntu_ports_mirror: self.watch_ubuntu_ports_mirror.clone(),
            rpm: self.watch_rpm_repo.clone(),
        }
    }

    /// The settings with the state file at `state_path`; `None` when no source is configured
    /// (the watcher is off).
    pub fn to_settings(&self, state_path: PathBuf) -> anyhow::Result<Option<WatchSettings>> {
        let sources = self.sources();
        if sources.is_empty() {
            anyhow::ensure!(
                self.watch_interval.is_none(),
                "--watch-interval needs a source to watch (--watch-debian-mirror, \
                 --watch-ubuntu-mirror, --watch-rpm-repo, ...)"
            );
            return Ok(None);
        }
        let driver_versions = self
            .watch_driver_version
            .iter()
            .map(|raw| {
                DriverVersion::parse(raw).with_context(|| format!("--watch-driver-version {raw}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let apt_keyrings = self.apt_keyrings(&sources, Path::new(SYSTEM_KEYRINGS))?;
        Ok(Some(WatchSettings {
            sources,
            interval: self.watch_interval.unwrap_or(DEFAULT_INTERVAL),
            state_path,
            kernels_json: self.kernels_json.clone(),
            driver_versions,
            apt_keyrings,
        }))
    }

    /// The keyrings InRelease files are checked with: the configured ones; none when unsigned
    /// indexes are explicitly allowed; else the archive keyrings of the configured apt
    /// distributions found in `system_keyrings`, and an apt source with none fails closed.
    fn apt_keyrings(
        &self,
        sources: &Sources,
        system_keyrings: &Path,
    ) -> anyhow::Result<Vec<PathBuf>> {
        if !self.watch_apt_keyring.is_empty() {
            return Ok(self.watch_apt_keyring.clone());
        }
        if self.watch_allow_unsigned_indexes {
            return Ok(Vec::new());
        }
        let wanted = [
            (
                sources.debian_mirror.is_some() || sources.debian_security_mirror.is_some(),
                "debian-archive-keyring.gpg",
            ),
            (
                sources.ubuntu_mirror.is_some() || sources.ubuntu_ports_mirror.is_some(),
                "ubuntu-archive-keyring.gpg",
            ),
        ];
        let any_apt = wanted.iter().any(|(configured, _)| *configured);
        let found: Vec<PathBuf> = wanted
            .iter()
            .filter(|(configured, _)| *configured)
            .map(|(_, file)| system_keyrings.join(file))
            .filter(|path| path.is_file())
            .collect();
        anyhow::ensure!(
            !any_apt || !found.is_empty(),
            "an apt source is configured but no archive keyring is found in {} to check its              InRelease signatures: give --watch-apt-keyring (or, for a test mirror,              --watch-allow-unsigned-indexes)",
            system_keyrings.display()
        );
        Ok(found)
    }
}

/// Where Debian's `debian-archive-keyring` and `ubuntu-keyring` packages put the keyrings.
const SYSTEM_KEYRINGS: &str = "/usr/share/keyrings";

/// A repository watcher over `settings`' sources, checking InRelease signatures with its keyrings.
fn watcher_for(fetcher: Arc<dyn repo_watch::IndexFetcher>, settings: &WatchSettings) -> Watcher {
    let watcher = Watcher::new(
        fetcher,
        settings.sources.clone(),
        settings.state_path.clone(),
    );
    if settings.apt_keyrings.is_empty() {
        watcher
    } else {
        watcher.with_verifier(repo_watch::apt::InReleaseVerifier::new(
            settings.apt_keyrings.clone(),
        ))
    }
}

/// A family the fleet runs, from either side (inventory or `GET /fleet`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyRun {
    /// The family.
    pub family: KernelFamily,
    /// Its releases that nodes run or have installed.
    pub kernels: BTreeSet<KernelRelease>,
    /// The driver versions those nodes run.
    pub driver_versions: BTreeSet<DriverVersion>,
}

/// The families to watch: the fleet's, plus kernels.json's (whose families get `configured`
/// driver versions); one demand per family, releases and driver versions merged.
pub fn demands(
    fleet: Vec<FamilyRun>,
    kernels: Option<&KernelsFile>,
    configured: &BTreeSet<DriverVersion>,
) -> Vec<FamilyDemand> {
    let mut merged: BTreeMap<KernelFamily, FamilyDemand> = BTreeMap::new();
    let mut add = |family: KernelFamily,
                   releases: BTreeSet<KernelRelease>,
                   driver_versions: BTreeSet<DriverVersion>| {
        let entry = merged
            .entry(family.clone())
            .or_insert_with(|| FamilyDemand {
                family,
                releases: BTreeSet::new(),
                driver_versions: BTreeSet::new(),
            });
        entry.releases.extend(releases);
        entry.driver_versions.extend(driver_versions);
    };
    for run in fleet {
        add(run.family, run.kernels, run.driver_versions);
    }
    if let Some(kernels) = kernels {
        for (arch, entry) in kernels.iter() {
            // kernels.json is validated as a whole when read; an entry kernel-id cannot place in a
            // family (no flavor) defines none.
            let (Ok(release), Ok(distro_version)) = (
                KernelRelease::parse(&entry.kernelrelease),
                entry.distro_version(),
            ) else {
                continue;
            };
            if let Ok(family) = KernelFamily::of_release(&release, arch, &distro_version) {
                add(family, [release].into(), configured.clone());
            }
        }
    }
    merged.into_values().collect()
}

/// What one prebuild request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrebuildAnswer {
    /// The outcome.
    pub outcome: PrebuildOutcome,
    /// The build, when one was created or joined.
    pub build_id: Option<String>,
    /// The artifact, when already published.
    pub download_url: Option<String>,
    /// Why it was refused.
    pub error: Option<String>,
}

impl PrebuildAnswer {
    fn refused(error: impl std::fmt::Display) -> Self {
        Self {
            outcome: PrebuildOutcome::Refused,
            build_id: None,
            download_url: None,
            error: Some(error.to_string()),
        }
    }
}

/// Where prebuild requests go: the coordinator in the service, `POST /build` from the CLI.
#[async_trait::async_trait]
pub trait Prebuilder: Send + Sync {
    /// Asks for one identity's build.
    async fn request(&self, identity: &KernelIdentity) -> PrebuildAnswer;
}

/// One pass: read the indexes of `demands`' targets, plan, request every prebuild, append the
/// accepted kernels to kernels.json.
pub async fn pass(
    watcher: &Watcher,
    demands: &[FamilyDemand],
    prebuilder: &dyn Prebuilder,
    kernels_json: Option<&PathBuf>,
    mut errors: Vec<String>,
) -> WatchPass {
    let started = Instant::now();
    let targets: BTreeSet<(DistroVersion, Arch)> = demands
        .iter()
        .map(|demand| (demand.family.distro_version().clone(), demand.family.arch()))
        .collect();
    let observation = watcher.observe(&targets).await;
    let plans = repo_watch::plan(demands, &observation.catalog);
    let mut prebuilds = Vec::new();
    let mut families = Vec::new();
    let mut last_request: Option<Instant> = None;
    for plan in &plans {
        families.push(WatchFamily {
            family: plan.family.key(),
            kernels_found: plan.kernels_found as u64,
            newest: plan.newest.as_ref().map(ToString::to_string),
            prebuild: plan.prebuild.as_ref().map(ToString::to_string),
        });
        errors.extend(plan.refused.iter().cloned());
        for identity in &plan.identities {
            let answer = prebuilder.request(identity).await;
            last_request = Some(Instant::now());
            tracing::info!(
                family = %plan.family,
                cache_key = %identity.cache_key(),
                outcome = ?answer.outcome,
                build_id = answer.build_id.as_deref().unwrap_or(""),
                "repository watcher: prebuild requested"
            );
            if answer.outcome != PrebuildOutcome::Refused
                && let Some(path) = kernels_json
                && let Err(error) = add_to_kernels_json(path.clone(), identity.clone()).await
            {
                errors.push(error);
            }
            prebuilds.push(WatchPrebuild {
                build_id: answer.build_id,
                download_url: answer.download_url,
                error: answer.error,
                family: plan.family.key(),
                outcome: answer.outcome,
                request: BuildRequest::from(identity),
            });
        }
    }
    let Observation {
        stats,
        errors: index_errors,
        new_index_at,
        ..
    } = observation;
    errors.extend(index_errors);
    let new_index_to_prebuild_ms = match (new_index_at, last_request) {
        (Some(seen), Some(requested)) if requested >= seen => {
            Some(u64::try_from(requested.duration_since(seen).as_millis()).unwrap_or(u64::MAX))
        }
        _ => None,
    };
    WatchPass {
        bytes: WatchBytes {
            inrelease: stats.bytes_of(IndexKind::InRelease),
            packages: stats.bytes_of(IndexKind::Packages),
            primary: stats.bytes_of(IndexKind::Primary),
            repomd: stats.bytes_of(IndexKind::Repomd),
        },
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        errors,
        families,
        indexes_checked: stats.indexes_checked,
        indexes_unchanged: stats.indexes_unchanged,
        new_index_to_prebuild_ms,
        prebuilds,
    }
    .with_metrics(&stats)
}

/// Records a pass in the service's metrics.
trait WithMetrics {
    fn with_metrics(self, stats: &repo_watch::PassStats) -> Self;
}

impl WithMetrics for WatchPass {
    fn with_metrics(self, stats: &repo_watch::PassStats) -> Self {
        metrics::counter!(PASSES).increment(1);
        for (kind, bytes) in &stats.bytes {
            metrics::counter!(INDEX_BYTES, "kind" => kind.as_str()).increment(*bytes);
        }
        for ((kind, result), count) in &stats.requests {
            metrics::counter!(INDEX_REQUESTS, "kind" => kind.as_str(), "result" => result.as_str())
                .increment(*count);
        }
        for prebuild in &self.prebuilds {
            let outcome = match prebuild.outcome {
                PrebuildOutcome::Created => "created",
                PrebuildOutcome::Joined => "joined",
                PrebuildOutcome::Published => "published",
                PrebuildOutcome::Accepted => "accepted",
                PrebuildOutcome::Refused => "refused",
            };
            metrics::counter!(PREBUILDS, "outcome" => outcome).increment(1);
        }
        if let Some(ms) = self.new_index_to_prebuild_ms {
            metrics::gauge!(NEW_INDEX_TO_PREBUILD).set(ms as f64 / 1000.0);
        }
        self
    }
}

/// Appends a kernel to kernels.json under its lock (blocking IO, off the async threads).
async fn add_to_kernels_json(path: PathBuf, identity: KernelIdentity) -> Result<(), String> {
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || {
        repo_watch::kernels_json::add_kernel(&path, &identity).map(drop)
    })
    .await
    .map_err(|e| format!("{shown}: adding the prebuilt kernel: {e}"))?
    .map_err(|e| format!("adding the prebuilt kernel to kernels.json: {e}"))
}

/// Reads kernels.json; a missing file is none.
fn read_kernels_json(path: Option<&PathBuf>) -> Result<Option<KernelsFile>, String> {
    let Some(path) = path else {
        return Ok(None);
    };
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => KernelsFile::parse(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The service's watcher.
pub struct ServiceWatcher {
    watcher: Watcher,
    settings: WatchSettings,
    coordinator: Arc<Coordinator>,
    caller: Caller,
}

impl std::fmt::Debug for ServiceWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceWatcher")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The coordinator as a prebuilder, as the built-in principal.
struct CoordinatorPrebuilder<'a> {
    coordinator: &'a Arc<Coordinator>,
    caller: &'a Caller,
}

#[async_trait::async_trait]
impl Prebuilder for CoordinatorPrebuilder<'_> {
    async fn request(&self, identity: &KernelIdentity) -> PrebuildAnswer {
        match self
            .coordinator
            .request_build(self.caller, identity.clone())
            .await
        {
            Ok(Requested::Created { build_id }) => PrebuildAnswer {
                outcome: PrebuildOutcome::Created,
                build_id: Some(build_id),
                download_url: None,
                error: None,
            },
            Ok(Requested::Joined { build_id }) => PrebuildAnswer {
                outcome: PrebuildOutcome::Joined,
                build_id: Some(build_id),
                download_url: None,
                error: None,
            },
            Ok(Requested::Done { download_url }) => PrebuildAnswer {
                outcome: PrebuildOutcome::Published,
                build_id: None,
                download_url: Some(download_url),
                error: None,
            },
            Err(error) => PrebuildAnswer::refused(error),
        }
    }
}

impl ServiceWatcher {
    /// The watcher of `settings`, requesting builds from `coordinator`.
    pub fn new(settings: WatchSettings, coordinator: Arc<Coordinator>) -> anyhow::Result<Self> {
        let fetcher = repo_watch::HttpFetcher::new(repo_watch::fetch::DEFAULT_REQUEST_TIMEOUT)
            .context("building the repository watcher's HTTP client")?;
        let watcher = watcher_for(Arc::new(fetcher), &settings);
        Ok(Self {
            watcher,
            settings,
            coordinator,
            caller: Caller {
                principal: Some(Arc::new(Principal::built_in(
                    WATCHER_PRINCIPAL,
                    &[Scope::RequestBuild],
                ))),
                client: std::net::IpAddr::from([127, 0, 0, 1]),
            },
        })
    }

    /// The settings.
    pub fn settings(&self) -> &WatchSettings {
        &self.settings
    }

    /// One pass now.
    pub async fn run_pass(&self) -> Result<WatchPass, crate::coordinator::CoordinatorError> {
        let fleet = self
            .coordinator
            .families_in_use()
            .await?
            .into_iter()
            .map(|family| FamilyRun {
                family: family.family,
                kernels: family.kernels,
                driver_versions: family.driver_versions,
            })
            .collect();
        let mut errors = Vec::new();
        let kernels = read_kernels_json(self.settings.kernels_json.as_ref()).unwrap_or_else(|e| {
            errors.push(e);
            None
        });
        let demands = demands(fleet, kernels.as_ref(), &self.settings.driver_versions);
        let prebuilder = CoordinatorPrebuilder {
            coordinator: &self.coordinator,
            caller: &self.caller,
        };
        let report = pass(
            &self.watcher,
            &demands,
            &prebuilder,
            self.settings.kernels_json.as_ref(),
            errors,
        )
        .await;
        tracing::info!(
            families = report.families.len(),
            indexes_checked = report.indexes_checked,
            indexes_unchanged = report.indexes_unchanged,
            prebuilds = report.prebuilds.len(),
            errors = report.errors.len(),
            duration_ms = report.duration_ms,
            "repository watcher pass"
        );
        Ok(report)
    }

    /// A pass every interval until `stopping` turns true (the first one interval after start).
    pub async fn run_every(self: Arc<Self>, mut stopping: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.settings.interval) => {}
                _ = stopping.changed() => return,
            }
            if *stopping.borrow() {
                return;
            }
            if let Err(error) = self.run_pass().await {
                tracing::warn!(%error, "repository watcher pass failed");
            }
        }
    }
}

/// `POST /watcher/run` (scope `admin`, behind the service's authentication).
pub fn routes(watcher: Option<Arc<ServiceWatcher>>) -> Router {
    crate::api::scoped(
        Router::new()
            .route("/watcher/run", post(run_now))
            .with_state(watcher),
        Scope::Admin,
    )
}

async fn run_now(State(watcher): State<Option<Arc<ServiceWatcher>>>) -> Response {
    let Some(watcher) = watcher else {
        return (
            StatusCode::NOT_FOUND,
            error_body(
                "the repository watcher is not configured",
                None,
                "start the service with a source to watch (--watch-debian-mirror, \
                 --watch-ubuntu-mirror, --watch-rpm-repo, ...)",
            ),
        )
            .into_response();
    };
    match watcher.run_pass().await {
        Ok(pass) => (StatusCode::OK, Json(pass)).into_response(),
        Err(error) => {
            let mut response = (
                StatusCode::SERVICE_UNAVAILABLE,
                error_body(
                    &error.to_string(),
                    None,
                    "the fleet inventory could not be read; retry",
                ),
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
    }
}

pub mod cli {
    //! `build-service watch`: one pass outside the service, for a scheduled workflow. Families come
    //! from the service's `GET /fleet` (a token with `read-status`), and kernels.json; each prebuild
    //! is a `POST /build` with the same token (`request-build`), so the service's own dedup, caps
    //! and audit apply (under the token's principal, e.g. `watcher-ci`). The pass's summary
    //! ([`build_api::WatchPass`]) is printed as JSON. The token is read from a file and never
    //! printed or logged.

    use std::path::PathBuf;
    use std::time::Duration;

    use anyhow::Context;
    use build_api::{ApiErrorBody, BuildAccepted, BuildDone, FleetView, PrebuildOutcome};
    use kernel_id::{
        Arch, Distribution, DistroVersion, DriverVersion, KernelFamily, KernelIdentity,
        KernelRelease,
    };

    use super::{FamilyRun, PrebuildAnswer, Prebuilder, WatchArgs};

    /// Options of `build-service watch`.
    #[derive(Debug, clap::Args)]
    pub struct WatchCliArgs {
        /// The build service's base URL.
        #[arg(long, env = "BUILD_SERVICE_URL")]
        pub service_url: String,
        /// File holding the bearer token (scopes `read-status` and `request-build`).
        #[arg(long, env = "BUILD_SERVICE_TOKEN_FILE")]
        pub token_file: PathBuf,
        /// The watcher's state file (kept between runs, e.g. in a workflow cache).
        #[arg(
            long,
            env = "BUILD_SERVICE_WATCH_STATE",
            default_value = "repo-watch-state.json"
        )]
        pub state_file: PathBuf,
        /// Sources, driver versions and kernels.json.
        #[command(flatten)]
        pub watch: WatchArgs,
    }

    /// `POST /build` with a token.
    struct HttpPrebuilder {
        client: reqwest::Client,
        base: String,
        token: String,
    }

    #[async_trait::async_trait]
    impl Prebuilder for HttpPrebuilder {
        async fn request(&self, identity: &KernelIdentity) -> PrebuildAnswer {
            let url = format!("{}/build", self.base);
            let response = match self
                .client
                .post(&url)
                .bearer_auth(&self.token)
                .json(&build_api::BuildRequest::from(identity))
                .send()
                .await
            {
                Ok(response) => response,
                Err(error) => return PrebuildAnswer::refused(format!("POST {url}: {error}")),
            };
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_default();
            match status {
                200 => match serde_json::from_str::<BuildDone>(&text) {
                    Ok(done) => PrebuildAnswer {
                        outcome: PrebuildOutcome::Published,
                        build_id: None,
                        download_url: Some(done.download_url),
                        error: None,
                    },
                    Err(error) => PrebuildAnswer::refused(format!("POST {url}: 200 but {error}")),
                },
                // The API does not say whether the build was created or joined.
                202 => match serde_json::from_str::<BuildAccepted>(&text) {
                    Ok(accepted) => PrebuildAnswer {
                        outcome: PrebuildOutcome::Accepted,
                        build_id: Some(accepted.build_id),
                        download_url: None,
                        error: None,
                    },
                    Err(error) => PrebuildAnswer::refused(format!("POST {url}: 202 but {error}")),
                },
                status => {
                    let reason = serde_json::from_str::<ApiErrorBody>(&text)
                        .map(|body| body.error)
                        .unwrap_or_else(|_| text.chars().take(200).collect());
                    PrebuildAnswer::refused(format!("POST {url}: HTTP {status}: {reason}"))
                }
            }
        }
    }

    /// The families of a fleet view: each family's kernels nodes run or have installed, and the
    /// driver versions nodes report on them.
    pub fn families_of(view: &FleetView) -> anyhow::Result<Vec<FamilyRun>> {
        let mut runs = Vec::new();
        for family in &view.families {
            let at = |field: &str| format!("GET /fleet: family {}: {field}", family.family);
            let distribution =
                Distribution::parse(&family.distribution).with_context(|| at("distribution"))?;
            let distro_version = DistroVersion::parse(distribution, &family.distro_version)
                .with_context(|| at("distro_version"))?;
            let arch = Arch::parse(&family.architecture).with_context(|| at("architecture"))?;
            let mut kernels = std::collections::BTreeSet::new();
            let mut driver_versions = std::collections::BTreeSet::new();
            for kernel in &family.kernels {
                // Kernels no node runs or has installed (built ahead) are not the fleet's.
                if kernel.nodes_running == 0 && kernel.nodes_pending == 0 {
                    continue;
                }
                kernels.insert(
                    KernelRelease::parse(&kernel.kernel_version)
                        .with_context(|| at("kernel_version"))?,
                );
                for driver in &kernel.drivers {
                    if driver.nodes_loaded + driver.nodes_failed + driver.nodes_refused > 0 {
                        driver_versions.insert(
                            DriverVersion::parse(&driver.driver_version)
                                .with_context(|| at("driver_version"))?,
                        );
                    }
                }
            }
            let Some(first) = kernels.first() else {
                continue;
            };
            let kernel_family = KernelFamily::of_release(first, arch, &distro_version)
                .with_context(|| at("family"))?;
            anyhow::ensure!(
                kernel_family.key() == family.family,
                "GET /fleet: family {} holds kernel {first} of family {}",
                family.family,
                kernel_family.key()
            );
            runs.push(FamilyRun {
                family: kernel_family,
                kernels,
                driver_versions,
            });
        }
        Ok(runs)
    }

    /// Runs one pass and prints its summary.
    pub async fn run(args: WatchCliArgs) -> anyhow::Result<()> {
        let base = super::parse_mirror(&args.service_url)
            .map_err(anyhow::Error::msg)
            .context("--service-url")?;
        let token = std::fs::read_to_string(&args.token_file)
            .with_context(|| format!("reading --token-file {}", args.token_file.display()))?
            .trim()
            .to_owned();
        anyhow::ensure!(
            !token.is_empty(),
            "--token-file {} is empty",
            args.token_file.display()
        );
        let settings = args
            .watch
            .to_settings(args.state_file.clone())?
            .context("nothing to watch: give --watch-debian-mirror, --watch-ubuntu-mirror or --watch-rpm-repo")?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .context("building the HTTP client")?;
        let fleet_url = format!("{base}/fleet");
        let response = client
            .get(&fleet_url)
            .bearer_auth(&token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .with_context(|| format!("GET {fleet_url}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("GET {fleet_url}"))?;
        anyhow::ensure!(
            status.is_success(),
            "GET {fleet_url}: HTTP {}: {}",
            status.as_u16(),
            text.chars().take(300).collect::<String>()
        );
        let view: FleetView = serde_json::from_str(&text)
            .with_context(|| format!("GET {fleet_url}: not a FleetView"))?;
        let mut errors = Vec::new();
        let kernels =
            super::read_kernels_json(settings.kernels_json.as_ref()).unwrap_or_else(|e| {
                errors.push(e);
                None
            });
        let demands = super::demands(
            families_of(&view)?,
            kernels.as_ref(),
            &settings.driver_versions,
        );
        let fetcher = repo_watch::HttpFetcher::new(repo_watch::fetch::DEFAULT_REQUEST_TIMEOUT)?;
        let watcher = super::watcher_for(std::sync::Arc::new(fetcher), &settings);
        let prebuilder = HttpPrebuilder {
            client,
            base,
            token,
        };
        let pass = super::pass(
            &watcher,
            &demands,
            &prebuilder,
            settings.kernels_json.as_ref(),
            errors,
        )
        .await;
        println!("{}", serde_json::to_string_pretty(&pass)?);
        for error in &pass.errors {
            eprintln!("watch: {error}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(release: &str, distribution: &str, version: &str) -> KernelFamily {
        let dv = DistroVersion::supported(
            kernel_id::Distribution::parse(distribution).unwrap(),
            version,
        )
        .unwrap();
        KernelFamily::of_release(&KernelRelease::parse(release).unwrap(), Arch::X86_64, &dv)
            .unwrap()
    }

    #[test]
    fn rpm_repositories_and_mirrors_are_checked_naming_the_rule() {
        let repo =
            parse_rpm_repo("amazonlinux:2023:x86_64=https://cdn.example/al2023/core/").unwrap();
        assert_eq!(repo.base, "https://cdn.example/al2023/core");
        assert_eq!(repo.arch, Arch::X86_64);
        assert!(
            parse_rpm_repo("debian:12:x86_64=http://x")
                .unwrap_err()
                .contains("not an rpm distribution")
        );
        assert!(
            parse_rpm_repo("fedora:42=http://x")
                .unwrap_err()
                .contains("<distribution>:<version>:<arch>")
        );
        assert!(
            parse_rpm_repo("fedora:1:x86_64=http://x")
                .unwrap_err()
                .contains("distro_version")
        );
        assert!(
            parse_rpm_repo("fedora:42:sparc=http://x")
                .unwrap_err()
                .contains("architecture")
        );
        assert!(parse_mirror("ftp://m/debian").is_err());
        assert!(parse_mirror("http://m/debian?x=1").is_err());
        assert_eq!(parse_mirror("http://m/debian/").unwrap(), "http://m/debian");
    }

    #[test]
    fn no_source_means_no_watcher_and_an_interval_alone_is_refused() {
        let state = PathBuf::from("/s/state.json");
        assert!(
            WatchArgs::default()
                .to_settings(state.clone())
                .unwrap()
                .is_none()
        );
        let interval_only = WatchArgs {
            watch_interval: Some(Duration::from_secs(60)),
            ..WatchArgs::default()
        };
        assert!(interval_only.to_settings(state.clone()).is_err());
        let debian = WatchArgs {
            watch_debian_mirror: Some("http://deb.debian.org/debian".to_owned()),
            watch_driver_version: vec!["v0.1.2".to_owned()],
            watch_apt_keyring: vec![PathBuf::from("/k/debian.gpg")],
            ..WatchArgs::default()
        };
        let settings = debian.to_settings(state).unwrap().unwrap();
        assert_eq!(settings.apt_keyrings, [PathBuf::from("/k/debian.gpg")]);
        assert_eq!(settings.interval, DEFAULT_INTERVAL);
        assert_eq!(settings.driver_versions.len(), 1);
        let bad = WatchArgs {
            watch_driver_version: vec!["1.0".to_owned()],
            ..debian
        };
        assert!(
            format!("{:#}", bad.to_settings(PathBuf::new()).unwrap_err())
                .contains("--watch-driver-version 1.0")
        );
    }

    #[test]
    fn apt_sources_are_checked_with_the_distributions_keyrings_or_refused() {
        let keyrings = tempfile::tempdir().unwrap();
        let debian = WatchArgs {
            watch_debian_mirror: Some("http://deb.debian.org/debian".to_owned()),
            watch_ubuntu_mirror: Some("http://archive.ubuntu.com/ubuntu".to_owned()),
            ..WatchArgs::default()
        };
        let sources = debian.sources();
        let refused = debian.apt_keyrings(&sources, keyrings.path()).unwrap_err();
        assert!(
            format!("{refused:#}").contains("--watch-apt-keyring"),
            "{refused:#}"
        );
        std::fs::write(keyrings.path().join("debian-archive-keyring.gpg"), b"k").unwrap();
        assert_eq!(
            debian.apt_keyrings(&sources, keyrings.path()).unwrap(),
            [keyrings.path().join("debian-archive-keyring.gpg")]
        );
        let unsigned = WatchArgs {
            watch_allow_unsigned_indexes: true,
            ..debian.clone()
        };
        assert!(
            unsigned
                .apt_keyrings(&sources, keyrings.path())
                .unwrap()
                .is_empty()
        );
        let rpm_only = WatchArgs::default();
        assert!(
            rpm_only
                .apt_keyrings(&rpm_only.sources(), keyrings.path())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn kernels_json_families_merge_with_the_fleets() {
        let v = |raw: &str| DriverVersion::parse(raw).unwrap();
        let fleet = vec![FamilyRun {
            family: family("6.1.0-47-amd64", "debian", "12"),
            kernels: [KernelRelease::parse("6.1.0-47-amd64").unwrap()].into(),
            driver_versions: [v("v0.2.0")].into(),
        }];
        let kernels = KernelsFile::parse(
            r#"{"x86_64": [
                {"target": "debian", "kernelrelease": "6.1.0-48-amd64", "distroversion": "12"},
                {"target": "debian", "kernelrelease": "6.1.0-48-cloud-amd64", "distroversion": "12"}
            ]}"#,
        )
        .unwrap();
        let demands = demands(fleet, Some(&kernels), &[v("v0.1.2")].into());
        assert_eq!(demands.len(), 2);
        let amd64 = &demands[0];
        assert_eq!(amd64.family.key(), "debian/12/x86_64/6.1/amd64");
        assert_eq!(amd64.releases.len(), 2);
        assert_eq!(amd64.driver_versions, [v("v0.1.2"), v("v0.2.0")].into());
        assert_eq!(demands[1].family.flavor(), "cloud-amd64");
        assert_eq!(demands[1].driver_versions, [v("v0.1.2")].into());
    }
}
