//! The fleet inventory: what every node runs, as its loader last reported (`POST /report`), and
//! what the fleet will boot next, per kernel family.
//!
//! A report is validated here ([`validate_report`]) into a typed [`NewNodeReport`] — kernel-id
//! validates the identity and every pending kernel, the exit code must mean the stated outcome, the
//! timings must nest — and kept as the node's latest (one row per node, see
//! [`Store::upsert_report`]). Everything else is computed when asked, from the database, so every
//! replica answers the same:
//!
//! - [`Coordinator::families_in_use`]: the kernel families nodes run or have installed, with their
//!   kernels and driver versions (the repository watcher prebuilds for exactly these);
//! - [`Coordinator::fleet_view`]: `GET /fleet`, per family the kernels in use, installed and
//!   upcoming, and per driver version the artifact's status and the nodes' outcomes;
//! - [`Coordinator::fleet_metrics`]: the `kdriver_fleet_*` gauges appended to `/metrics` at scrape
//!   time (rendered here rather than kept in the metrics registry, so an identity no node runs any
//!   more disappears instead of lingering at its last value).
//!
//! Artifact status comes from the latest build of each identity among the newest
//! [`MAX_BUILDS_CONSIDERED`] builds (done: published, in flight: building, failed or timed out:
//! failed). An identity some node loaded is published (the node verified its signature). For the
//! rest — kernels prebuilt by the nightly batch have no build row here — the backend's
//! `find_artifact` is asked, at most [`MAX_LOOKUPS_PER_VIEW`] identities per view (upcoming kernels
//! first), and each answer is remembered for [`LOOKUP_TTL`] in a bounded cache, so rendering the
//! page never costs more than a few GitHub API calls and usually none; an identity not looked up
//! yet shows `none` until a later view gets to it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use build_api::{
    ArtifactOrigin, ArtifactStatus, DriverView, FamilyView, FleetView, KernelView, NodeReport,
    RunOutcome,
};
use futures_util::StreamExt;
use kernel_id::{
    DriverName, DriverVersion, IdentityInput, KernelFamily, KernelIdentity, KernelRelease,
    kernel_release_cmp,
};

use crate::access::Caller;
use crate::coordinator::{Coordinator, CoordinatorError};
use crate::store::{BuildRecord, BuildState, NewNodeReport, ReportGroup, Store};

/// Most pending kernels one report may list (a node keeps a few kernels installed, not dozens).
pub const MAX_PENDING_KERNELS: usize = 16;

/// Longest timing a report may state: a week, far beyond any build timeout.
pub const MAX_TIMING_MS: u64 = 7 * 24 * 3600 * 1000;

/// The fleet view reads the latest build of each identity among this many newest builds.
pub const MAX_BUILDS_CONSIDERED: u32 = 10_000;

/// Most artifact lookups one view makes; the rest wait for a later view.
pub const MAX_LOOKUPS_PER_VIEW: usize = 32;

/// Artifact lookups made at once by one view.
const LOOKUP_CONCURRENCY: usize = 4;

/// How long an artifact lookup's answer is believed.
pub const LOOKUP_TTL: Duration = Duration::from_secs(300);

/// Identities whose lookup answers are remembered at once.
const LOOKUP_CACHE_CAPACITY: usize = 4096;

/// Most identities the gauges show; the rest (the ones with the fewest nodes) are counted in
/// `kdriver_fleet_identities_omitted`, so a reporter making up kernels cannot blow up the
/// metrics' cardinality.
pub const MAX_METRIC_IDENTITIES: usize = 1024;

/// A report refused: the field at fault and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct ReportRefusal {
    /// The body field (`timings.fetch_ms` for a nested one).
    pub field: String,
    /// The rule.
    pub rule: String,
}

impl ReportRefusal {
    fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// Validates a report of `driver`'s loader completely, without IO: the identity and every pending
/// kernel by kernel-id (a pending kernel must be a valid identity with the node's distribution,
/// architecture and driver version, and have a kernel family), the node id's shape, the outcome
/// against the exit code, the origin against the wait, and the timings' nesting
/// (`build_wait_ms <= fetch_ms <= total_ms <=` [`MAX_TIMING_MS`]). `principal` and `client` of the
/// result are left empty for the caller to fill in.
pub fn validate_report(
    report: NodeReport,
    driver: &DriverName,
) -> Result<NewNodeReport, ReportRefusal> {
    let from_kernel_id =
        |error: kernel_id::IdError| ReportRefusal::new(error.field().as_str(), error.rule());
    let identity = KernelIdentity::from_input(&IdentityInput {
        kernel_version: report.kernel_version,
        architecture: report.architecture,
        distribution: report.distribution,
        distro_version: Some(report.distro_version),
        driver_version: report.driver_version,
    })
    .map_err(from_kernel_id)?;
    // Aggregation is per family: a running kernel without one could never be shown.
    KernelFamily::of(&identity).map_err(from_kernel_id)?;
    if report.driver_name != driver.as_str() {
        let shown: String = report.driver_name.chars().take(64).collect();
        return Err(ReportRefusal::new(
            "driver_name",
            format!(
                "must be {driver}, the driver this service builds (got '{}')",
                shown.escape_debug()
            ),
        ));
    }
    if !is_node_id(&report.node_id) {
        return Err(ReportRefusal::new(
            "node_id",
            "must be 64 lowercase hex digits (the SHA-256 of the machine-id)",
        ));
    }
    let expected = RunOutcome::from_exit_code(report.exit_code);
    if report.outcome != expected {
        return Err(ReportRefusal::new(
            "outcome",
            format!(
                "must be {} for exit code {} (got {})",
                expected.as_str(),
                report.exit_code,
                report.outcome.as_str()
            ),
        ));
    }
    let timings = report.timings;
    if timings.total_ms > MAX_TIMING_MS {
        return Err(ReportRefusal::new(
            "timings.total_ms",
            format!("must be at most {MAX_TIMING_MS} ms (a week)"),
        ));
    }
    if timings.fetch_ms > timings.total_ms {
        return Err(ReportRefusal::new(
            "timings.fetch_ms",
            "must not exceed timings.total_ms (fetching is part of the run)",
        ));
    }
    if let Some(wait) = timings.build_wait_ms
        && wait > timings.fetch_ms
    {
        return Err(ReportRefusal::new(
            "timings.build_wait_ms",
            "must not exceed timings.fetch_ms (waiting for the build is part of fetching)",
        ));
    }
    match (report.artifact_origin, timings.build_wait_ms) {
        (Some(ArtifactOrigin::Build), None) => {
            return Err(ReportRefusal::new(
                "timings.build_wait_ms",
                "must be set when artifact_origin is build (the node waited for the build)",
            ));
        }
        (Some(origin @ (ArtifactOrigin::Cache | ArtifactOrigin::Store)), Some(_)) => {
            return Err(ReportRefusal::new(
                "timings.build_wait_ms",
                format!(
                    "must be null when artifact_origin is {} (a node that waited got the build's artifact)",
                    origin.as_str()
                ),
            ));
        }
        _ => {}
    }
    if report.pending_kernels.len() > MAX_PENDING_KERNELS {
        return Err(ReportRefusal::new(
            "pending_kernels",
            format!(
                "must list at most {MAX_PENDING_KERNELS} kernels (got {})",
                report.pending_kernels.len()
            ),
        ));
    }
    let mut pending = BTreeSet::new();
    for (index, raw) in report.pending_kernels.iter().enumerate() {
        let refuse =
            |rule: String| ReportRefusal::new("pending_kernels", format!("[{index}]: {rule}"));
        let release = KernelRelease::parse(raw).map_err(|error| refuse(error.rule().to_owned()))?;
        let pending_identity = KernelIdentity::new(
            release.clone(),
            identity.arch(),
            identity.distro_version().clone(),
            identity.driver_version().clone(),
        )
        .map_err(|error| refuse(error.rule().to_owned()))?;
        KernelFamily::of(&pending_identity).map_err(|error| refuse(error.rule().to_owned()))?;
        if release == *identity.kernel_release() {
            return Err(refuse(
                "must not be the running kernel_version (pending kernels are installed, not running)"
                    .to_owned(),
            ));
        }
        if !pending.insert(release) {
            return Err(refuse("is listed twice".to_owned()));
        }
    }
    Ok(NewNodeReport {
        node_id: report.node_id,
        identity,
        driver: driver.clone(),
        outcome: report.outcome,
        exit_code: report.exit_code,
        artifact_origin: report.artifact_origin,
        timings,
        pending_kernels: pending.into_iter().collect(),
        principal: String::new(),
        client: String::new(),
    })
}

fn is_node_id(raw: &str) -> bool {
    raw.len() == 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// One kernel family the fleet runs or has installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyInUse {
    /// The family.
    pub family: KernelFamily,
    /// Its kernels that nodes run or have installed.
    pub kernels: BTreeSet<KernelRelease>,
    /// The driver versions of those nodes.
    pub driver_versions: BTreeSet<DriverVersion>,
    /// How many nodes run, or have installed, a kernel of the family.
    pub nodes: u64,
}

/// Answers of the backend's `find_artifact` for the fleet view, each believed for [`LOOKUP_TTL`].
#[derive(Debug)]
pub struct ArtifactLookups {
    answers: Mutex<lru::LruCache<KernelIdentity, (Instant, bool)>>,
}

impl Default for ArtifactLookups {
    fn default() -> Self {
        Self {
            answers: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(LOOKUP_CACHE_CAPACITY).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }
}

impl ArtifactLookups {
    /// Whether `identity` was found published, if that was asked within the TTL.
    fn fresh(&self, identity: &KernelIdentity, now: Instant) -> Option<bool> {
        let mut answers = self
            .answers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match answers.get(identity) {
            Some((at, published)) if now.saturating_duration_since(*at) < LOOKUP_TTL => {
                Some(*published)
            }
            _ => None,
        }
    }

    fn remember(&self, identity: KernelIdentity, published: bool, now: Instant) {
        self.answers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .put(identity, (now, published));
    }
}

/// What the nodes of one driver version on one kernel reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DriverTally {
    loaded: u64,
    refused: u64,
    failed: u64,
    waits: u64,
    wait_max: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KernelTally {
    running: u64,
    pending: u64,
    drivers: BTreeMap<DriverVersion, DriverTally>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FamilyTally {
    nodes: u64,
    driver_versions: BTreeSet<DriverVersion>,
    kernels: BTreeMap<KernelRelease, KernelTally>,
}

/// The reports' groups folded per family, kernel and driver version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Tally {
    nodes: u64,
    without_driver: u64,
    waits: u64,
    families: BTreeMap<KernelFamily, FamilyTally>,
}

impl Tally {
    fn of(groups: &[ReportGroup]) -> Self {
        let mut tally = Self::default();
        for group in groups {
            // Reports were validated to have a family; a row that lost it is left out, not fatal.
            let Ok(running_family) = KernelFamily::of(&group.identity) else {
                tracing::warn!(cache_key = %group.identity.cache_key(), "a reported kernel has no family; left out of the fleet view");
                continue;
            };
            let n = group.nodes;
            let version = group.identity.driver_version();
            tally.nodes += n;
            if group.outcome != RunOutcome::Loaded {
                tally.without_driver += n;
            }
            tally.waits += group.first_boot_waits;
            let pending: Vec<(KernelFamily, &KernelRelease)> = group
                .pending_kernels
                .iter()
                .filter_map(|release| {
                    KernelFamily::of_release(
                        release,
                        group.identity.arch(),
                        group.identity.distro_version(),
                    )
                    .ok()
                    .map(|family| (family, release))
                })
                .collect();
            // Each node counts once per family it touches, however many of its kernels are in it.
            let touched: BTreeSet<&KernelFamily> = std::iter::once(&running_family)
                .chain(pending.iter().map(|(family, _)| family))
                .collect();
            for family in touched {
                let entry = tally.families.entry(family.clone()).or_default();
                entry.nodes += n;
                entry.driver_versions.insert(version.clone());
            }
            let family = tally.families.entry(running_family).or_default();
            let kernel = family
                .kernels
                .entry(group.identity.kernel_release().clone())
                .or_default();
            kernel.running += n;
            let driver = kernel.drivers.entry(version.clone()).or_default();
            match group.outcome {
                RunOutcome::Loaded => driver.loaded += n,
                RunOutcome::Refused => driver.refused += n,
                RunOutcome::Failed => driver.failed += n,
            }
            driver.waits += group.first_boot_waits;
            driver.wait_max = driver.wait_max.max(group.first_boot_wait_ms_max);
            for (family, release) in pending {
                let kernel = tally
                    .families
                    .entry(family)
                    .or_default()
                    .kernels
                    .entry(release.clone())
                    .or_default();
                kernel.pending += n;
                kernel.drivers.entry(version.clone()).or_default();
            }
        }
        tally
    }

    fn families_in_use(&self) -> Vec<FamilyInUse> {
        self.families
            .iter()
            .map(|(family, tally)| FamilyInUse {
                family: family.clone(),
                kernels: tally.kernels.keys().cloned().collect(),
                driver_versions: tally.driver_versions.clone(),
                nodes: tally.nodes,
            })
            .collect()
    }

    /// Adds the kernels the latest builds made for the families in use: beside kernels already
    /// shown (another driver version), or as upcoming when newer than every kernel the family runs.
    fn add_builds(&mut self, builds: &[BuildRecord]) {
        for build in builds {
            let Ok(family) = KernelFamily::of(&build.identity) else {
                continue;
            };
            let Some(tally) = self.families.get_mut(&family) else {
                continue;
            };
            let release = build.identity.kernel_release();
            let known = tally.kernels.contains_key(release);
            if known || newer_than_running(tally, release) {
                tally
                    .kernels
                    .entry(release.clone())
                    .or_default()
                    .drivers
                    .entry(build.identity.driver_version().clone())
                    .or_default();
            }
        }
    }
}

/// The newest kernel nodes of the family run, by kernel-id's release order.
fn newest_running(tally: &FamilyTally) -> Option<&KernelRelease> {
    tally
        .kernels
        .iter()
        .filter(|(_, kernel)| kernel.running > 0)
        .map(|(release, _)| release)
        .max_by(|a, b| kernel_release_cmp(a.as_str(), b.as_str()))
}

/// Whether `release` is newer than every kernel the family runs (vacuously, when none runs).
fn newer_than_running(tally: &FamilyTally, release: &KernelRelease) -> bool {
    newest_running(tally).is_none_or(|newest| {
        kernel_release_cmp(release.as_str(), newest.as_str()) == Ordering::Greater
    })
}

/// The identity of a kernel of `family` with `version`.
fn identity_of(
    family: &KernelFamily,
    release: &KernelRelease,
    version: &DriverVersion,
) -> Option<KernelIdentity> {
    KernelIdentity::new(
        release.clone(),
        family.arch(),
        family.distro_version().clone(),
        version.clone(),
    )
    .ok()
}

/// What the latest build of an identity says about its artifact.
fn build_status(record: &BuildRecord) -> ArtifactStatus {
    match record.state {
        BuildState::Done => ArtifactStatus::Published,
        BuildState::Error | BuildState::TimedOut => ArtifactStatus::Failed,
        BuildState::Dispatching | BuildState::Queued | BuildState::InProgress => {
            ArtifactStatus::Building
        }
    }
}

/// Everything the view needs to know about one identity's artifact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ArtifactFacts {
    build: Option<(ArtifactStatus, String)>,
    /// The artifact store said it is published (fresh lookup).
    found: Option<bool>,
}

/// The view of a tally, with the artifact facts known per identity.
fn render_view(
    tally: &Tally,
    facts: &HashMap<KernelIdentity, ArtifactFacts>,
    generated_at: String,
) -> FleetView {
    let mut families: Vec<FamilyView> = tally
        .families
        .iter()
        .map(|(family, family_tally)| {
            let newest = newest_running(family_tally);
            let mut kernels: Vec<(&KernelRelease, KernelView)> = family_tally
                .kernels
                .iter()
                .map(|(release, kernel)| {
                    let upcoming = kernel.running == 0
                        && newest.is_none_or(|newest| {
                            kernel_release_cmp(release.as_str(), newest.as_str())
                                == Ordering::Greater
                        });
                    let mut drivers: Vec<DriverView> = kernel
                        .drivers
                        .iter()
                        .map(|(version, driver)| {
                            let known = identity_of(family, release, version)
                                .and_then(|identity| facts.get(&identity))
                                .cloned()
                                .unwrap_or_default();
                            DriverView {
                                artifact: artifact_status(&known, driver.loaded),
                                build_id: known.build.map(|(_, build_id)| build_id),
                                driver_version: version.to_string(),
                                first_boot_wait_ms_max: driver.wait_max,
                                first_boot_waits: driver.waits,
                                nodes_failed: driver.failed,
                                nodes_loaded: driver.loaded,
                                nodes_refused: driver.refused,
                            }
                        })
                        .collect();
                    drivers
                        .sort_by(|a, b| kernel_release_cmp(&b.driver_version, &a.driver_version));
                    (
                        release,
                        KernelView {
                            drivers,
                            kernel_version: release.to_string(),
                            nodes_pending: kernel.pending,
                            nodes_running: kernel.running,
                            upcoming,
                        },
                    )
                })
                .collect();
            kernels.sort_by(|(a, _), (b, _)| kernel_release_cmp(b.as_str(), a.as_str()));
            let version = family.distro_version();
            FamilyView {
                architecture: family.arch().to_string(),
                distribution: version.distribution().to_string(),
                distro_version: version.to_string(),
                family: family.key(),
                flavor: family.flavor().to_owned(),
                kernels: kernels.into_iter().map(|(_, view)| view).collect(),
                nodes: family_tally.nodes,
                series: family.series().to_owned(),
            }
        })
        .collect();
    families.sort_by(|a, b| a.family.cmp(&b.family));
    FleetView {
        families,
        first_boot_waits: tally.waits,
        generated_at,
        nodes: tally.nodes,
        nodes_without_driver: tally.without_driver,
    }
}

/// A finished build says published; a node that loaded the driver proves it published (it
/// verified the signature); a fresh lookup that found it says so; otherwise the latest build's
/// state (building, failed), else none.
fn artifact_status(facts: &ArtifactFacts, nodes_loaded: u64) -> ArtifactStatus {
    let built = facts.build.as_ref().map(|(status, _)| *status);
    if built == Some(ArtifactStatus::Published) || nodes_loaded > 0 || facts.found == Some(true) {
        return ArtifactStatus::Published;
    }
    built.unwrap_or(ArtifactStatus::None)
}

/// The identities of the view whose status only the artifact store can tell (no finished or
/// running build, no node that loaded it), upcoming kernels first, at most `limit`.
fn lookup_candidates(
    tally: &Tally,
    facts: &HashMap<KernelIdentity, ArtifactFacts>,
    limit: usize,
) -> Vec<KernelIdentity> {
    let mut upcoming = Vec::new();
    let mut others = Vec::new();
    for (family, family_tally) in &tally.families {
        for (release, kernel) in &family_tally.kernels {
            for (version, driver) in &kernel.drivers {
                let Some(identity) = identity_of(family, release, version) else {
                    continue;
                };
                let built = facts.get(&identity).and_then(|facts| facts.build.as_ref());
                let settled = matches!(
                    built,
                    Some((ArtifactStatus::Published | ArtifactStatus::Building, _))
                );
                if settled || driver.loaded > 0 {
                    continue;
                }
                if kernel.running == 0 && newer_than_running(family_tally, release) {
                    upcoming.push(identity);
                } else {
                    others.push(identity);
                }
            }
        }
    }
    upcoming.into_iter().chain(others).take(limit).collect()
}

/// One identity's label values, in [`LABELS`] order.
fn label_values(identity: &KernelIdentity) -> [String; 5] {
    [
        identity.distribution().to_string(),
        identity.distro_version().to_string(),
        identity.arch().to_string(),
        identity.kernel_release().to_string(),
        identity.driver_version().to_string(),
    ]
}

/// The gauges' labels.
const LABELS: [&str; 5] = [
    "distribution",
    "distro_version",
    "architecture",
    "kernel_version",
    "driver_version",
];

/// A Prometheus label value, escaped as the text format requires.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct IdentityGauges {
    nodes: u64,
    without_driver: u64,
    waits: u64,
    wait_max: Option<u64>,
}

/// The `kdriver_fleet_*` gauges in the Prometheus text format.
fn render_metrics(groups: &[ReportGroup]) -> String {
    let mut per_identity: HashMap<&KernelIdentity, IdentityGauges> = HashMap::new();
    for group in groups {
        let gauges = per_identity.entry(&group.identity).or_default();
        gauges.nodes += group.nodes;
        if group.outcome != RunOutcome::Loaded {
            gauges.without_driver += group.nodes;
        }
        gauges.waits += group.first_boot_waits;
        gauges.wait_max = gauges.wait_max.max(group.first_boot_wait_ms_max);
    }
    let mut identities: Vec<(&KernelIdentity, IdentityGauges)> = per_identity.into_iter().collect();
    // The identities with the most nodes are kept; ties in a stable order.
    identities.sort_by(|(a, ga), (b, gb)| gb.nodes.cmp(&ga.nodes).then_with(|| a.cmp(b)));
    let omitted = identities.len().saturating_sub(MAX_METRIC_IDENTITIES);
    identities.truncate(MAX_METRIC_IDENTITIES);
    identities.sort_by_key(|(identity, _)| *identity);
    let labels = |identity: &KernelIdentity| {
        let values = label_values(identity);
        let pairs: Vec<String> = LABELS
            .iter()
            .zip(values.iter())
            .map(|(name, value)| format!("{name}=\"{}\"", escape_label(value)))
            .collect();
        format!("{{{}}}", pairs.join(","))
    };
    let mut out = String::new();
    let mut family = |name: &str, help: &str, value: &dyn Fn(&IdentityGauges) -> Option<String>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (identity, gauges) in &identities {
            if let Some(value) = value(gauges) {
                let _ = writeln!(out, "{name}{} {value}", labels(identity));
            }
        }
    };
    family(
        "kdriver_fleet_nodes",
        "Nodes whose latest report runs this identity",
        &|g| Some(g.nodes.to_string()),
    );
    family(
        "kdriver_fleet_nodes_without_driver",
        "Nodes of this identity whose latest run did not leave the driver live (refused or failed)",
        &|g| Some(g.without_driver.to_string()),
    );
    family(
        "kdriver_fleet_first_boot_waits",
        "Nodes of this identity whose kernel needed an on-demand build (a first-boot wait)",
        &|g| Some(g.waits.to_string()),
    );
    family(
        "kdriver_fleet_first_boot_wait_seconds_max",
        "The longest first-boot wait among the nodes of this identity, in seconds",
        &|g| g.wait_max.map(|ms| format!("{:.3}", ms as f64 / 1000.0)),
    );
    let _ = writeln!(
        out,
        "# HELP kdriver_fleet_identities_omitted Identities left out of the kdriver_fleet gauges (over {MAX_METRIC_IDENTITIES}, fewest nodes first)"
    );
    let _ = writeln!(out, "# TYPE kdriver_fleet_identities_omitted gauge");
    let _ = writeln!(out, "kdriver_fleet_identities_omitted {omitted}");
    out
}

impl Coordinator {
    /// Keeps a validated report as its node's latest, recording who sent it.
    pub async fn record_report(
        &self,
        caller: &Caller,
        mut report: NewNodeReport,
    ) -> Result<(), CoordinatorError> {
        report.principal = caller.name();
        report.client = caller.client.to_string();
        tracing::info!(
            principal = %report.principal,
            node_id = %report.node_id,
            cache_key = %report.identity.cache_key(),
            outcome = report.outcome.as_str(),
            exit_code = report.exit_code,
            origin = report.artifact_origin.map_or("none", ArtifactOrigin::as_str),
            "node report"
        );
        self.store()
            .upsert_report(&report)
            .await
            .map_err(|error| CoordinatorError::Unavailable(error.to_string()))
    }

    /// The kernel families nodes run or have installed (their latest reports), by family.
    pub async fn families_in_use(&self) -> Result<Vec<FamilyInUse>, CoordinatorError> {
        let groups = report_groups(self.store()).await?;
        Ok(Tally::of(&groups).families_in_use())
    }

    /// `GET /fleet`: the latest reports per family, kernel and driver version, with each
    /// artifact's status (see the module documentation for where it comes from).
    pub async fn fleet_view(&self) -> Result<FleetView, CoordinatorError> {
        let unavailable =
            |error: crate::store::StoreError| CoordinatorError::Unavailable(error.to_string());
        let groups = report_groups(self.store()).await?;
        let mut tally = Tally::of(&groups);
        let builds = self
            .store()
            .latest_builds(MAX_BUILDS_CONSIDERED)
            .await
            .map_err(unavailable)?;
        let builds: Vec<BuildRecord> = builds
            .into_iter()
            .filter(|build| build.driver == *self.driver())
            .collect();
        tally.add_builds(&builds);
        let mut facts: HashMap<KernelIdentity, ArtifactFacts> = HashMap::new();
        for build in builds {
            facts.entry(build.identity.clone()).or_default().build =
                Some((build_status(&build), build.build_id));
        }
        let now = Instant::now();
        let lookups = self.artifact_lookups();
        let mut unknown = Vec::new();
        for identity in lookup_candidates(&tally, &facts, usize::MAX) {
            match lookups.fresh(&identity, now) {
                Some(found) => facts.entry(identity).or_default().found = Some(found),
                None => unknown.push(identity),
            }
        }
        unknown.truncate(MAX_LOOKUPS_PER_VIEW);
        let backend = self.backend();
        let driver = self.driver();
        let answers: Vec<(KernelIdentity, Option<bool>)> = futures_util::stream::iter(unknown)
            .map(|identity| async move {
                let found = match backend.find_artifact(driver, &identity).await {
                    Ok(found) => Some(found.is_some()),
                    Err(error) => {
                        // Not remembered: the next view asks again.
                        tracing::warn!(%error, cache_key = %identity.cache_key(), "fleet view: artifact lookup failed");
                        None
                    }
                };
                (identity, found)
            })
            .buffer_unordered(LOOKUP_CONCURRENCY)
            .collect()
            .await;
        for (identity, found) in answers {
            if let Some(found) = found {
                lookups.remember(identity.clone(), found, now);
                facts.entry(identity).or_default().found = Some(found);
            }
        }
        Ok(render_view(
            &tally,
            &facts,
            crate::api::timestamp(crate::store::now_ms()),
        ))
    }

    /// The `kdriver_fleet_*` gauges, computed now from the latest reports (Prometheus text).
    pub async fn fleet_metrics(&self) -> Result<String, CoordinatorError> {
        let groups = report_groups(self.store()).await?;
        Ok(render_metrics(&groups))
    }
}

async fn report_groups(store: &Store) -> Result<Vec<ReportGroup>, CoordinatorError> {
    store
        .report_groups()
        .await
        .map_err(|error| CoordinatorError::Unavailable(error.to_string()))
}

#[cfg(test)]
mod tests {
    use build_api::RunTimings;

    use super::*;

    const NODE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn driver() -> DriverName {
        DriverName::parse("example-driver").expect("driver")
    }

    fn report() -> NodeReport {
        NodeReport {
            architecture: "amd64".to_owned(),
            artifact_origin: Some(ArtifactOrigin::Build),
            distribution: "debian".to_owned(),
            distro_version: "12".to_owned(),
            driver_name: "example-driver".to_owned(),
            driver_version: "v0.1.2".to_owned(),
            exit_code: 0,
            kernel_version: "6.1.0-47-amd64".to_owned(),
            node_id: NODE.to_owned(),
            outcome: RunOutcome::Loaded,
            pending_kernels: vec!["6.1.0-48-amd64".to_owned(), "6.1.0-44-amd64".to_owned()],
            timings: RunTimings {
                build_wait_ms: Some(90_000),
                fetch_ms: 95_000,
                total_ms: 96_000,
            },
        }
    }

    fn refused(change: impl FnOnce(&mut NodeReport)) -> ReportRefusal {
        let mut report = report();
        change(&mut report);
        validate_report(report, &driver()).expect_err("refused")
    }

    #[test]
    fn a_valid_report_is_typed_canonical_and_sorted() {
        let valid = validate_report(report(), &driver()).expect("valid");
        assert_eq!(
            valid.identity.cache_key(),
            "debian/12/x86_64/6.1.0-47-amd64/v0.1.2"
        );
        let pending: Vec<&str> = valid
            .pending_kernels
            .iter()
            .map(KernelRelease::as_str)
            .collect();
        assert_eq!(pending, ["6.1.0-44-amd64", "6.1.0-48-amd64"]);
    }

    #[test]
    fn every_refusal_names_its_field() {
        let cases: Vec<(&str, ReportRefusal)> = vec![
            (
                "kernel_version",
                refused(|r| r.kernel_version = "6.1$(id)".to_owned()),
            ),
            (
                "kernel_version",
                refused(|r| r.kernel_version = "6.1.0-47".to_owned()),
            ),
            (
                "architecture",
                refused(|r| r.architecture = "sparc".to_owned()),
            ),
            (
                "distribution",
                refused(|r| r.distribution = "gentoo".to_owned()),
            ),
            (
                "distro_version",
                refused(|r| r.distro_version = "99".to_owned()),
            ),
            (
                "driver_version",
                refused(|r| r.driver_version = "latest".to_owned()),
            ),
            (
                "driver_name",
                refused(|r| r.driver_name = "other-driver".to_owned()),
            ),
            ("node_id", refused(|r| r.node_id = NODE.to_uppercase())),
            ("node_id", refused(|r| r.node_id = NODE[..63].to_owned())),
            (
                "node_id",
                refused(|r| r.node_id = format!("{}g", &NODE[..63])),
            ),
            ("outcome", refused(|r| r.exit_code = 6)),
            (
                "outcome",
                refused(|r| {
                    r.exit_code = 1;
                    r.outcome = RunOutcome::Refused;
                }),
            ),
            ("timings.fetch_ms", refused(|r| r.timings.fetch_ms = 97_000)),
            (
                "timings.build_wait_ms",
                refused(|r| r.timings.build_wait_ms = Some(95_001)),
            ),
            (
                "timings.build_wait_ms",
                refused(|r| r.timings.build_wait_ms = None),
            ),
            (
                "timings.build_wait_ms",
                refused(|r| {
                    r.artifact_origin = Some(ArtifactOrigin::Cache);
                }),
            ),
            (
                "timings.total_ms",
                refused(|r| {
                    r.timings = RunTimings {
                        build_wait_ms: None,
                        fetch_ms: 0,
                        total_ms: MAX_TIMING_MS + 1,
                    };
                    r.artifact_origin = None;
                }),
            ),
            (
                "pending_kernels",
                refused(|r| r.pending_kernels = vec!["6.1.0-48-amd64".to_owned(); 2]),
            ),
            (
                "pending_kernels",
                refused(|r| r.pending_kernels.push("6.1.0-47-amd64".to_owned())),
            ),
            (
                "pending_kernels",
                refused(|r| r.pending_kernels.push("x$(id)".to_owned())),
            ),
            (
                "pending_kernels",
                refused(|r| r.pending_kernels.push("6.14.0-63.fc42.x86_64".to_owned())),
            ),
            (
                "pending_kernels",
                refused(|r| {
                    r.pending_kernels = (0..=MAX_PENDING_KERNELS)
                        .map(|n| format!("6.1.0-{n}-amd64"))
                        .collect();
                }),
            ),
        ];
        for (field, refusal) in cases {
            assert_eq!(refusal.field, field, "{refusal}");
            assert!(!refusal.rule.is_empty());
        }
        // A failed run that waited for a build which then failed has no origin, and is fine.
        let mut waited = report();
        waited.exit_code = 5;
        waited.outcome = RunOutcome::Refused;
        waited.artifact_origin = None;
        assert!(validate_report(waited, &driver()).is_ok());
    }

    fn identity(release: &str, version: &str) -> KernelIdentity {
        KernelIdentity::from_input(&IdentityInput {
            kernel_version: release.to_owned(),
            architecture: "x86_64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: Some("12".to_owned()),
            driver_version: version.to_owned(),
        })
        .expect("identity")
    }

    fn group(
        release: &str,
        outcome: RunOutcome,
        pending: &[&str],
        nodes: u64,
        waits: (u64, Option<u64>),
    ) -> ReportGroup {
        ReportGroup {
            identity: identity(release, "v0.1.2"),
            outcome,
            pending_kernels: pending
                .iter()
                .map(|release| KernelRelease::parse(release).expect("release"))
                .collect(),
            nodes,
            first_boot_waits: waits.0,
            first_boot_wait_ms_max: waits.1,
        }
    }

    fn groups() -> Vec<ReportGroup> {
        vec![
            group(
                "6.1.0-9-amd64",
                RunOutcome::Loaded,
                &["6.1.0-10-amd64"],
                3,
                (1, Some(4_000)),
            ),
            group("6.1.0-9-amd64", RunOutcome::Refused, &[], 1, (0, None)),
            group(
                "6.1.0-8-amd64",
                RunOutcome::Failed,
                &["6.12.38+deb12-amd64"],
                2,
                (0, None),
            ),
            group(
                "6.1.0-9-cloud-amd64",
                RunOutcome::Loaded,
                &[],
                1,
                (1, Some(9_500)),
            ),
        ]
    }

    #[test]
    fn families_in_use_count_running_and_pending_families_once_per_node() {
        let families = Tally::of(&groups()).families_in_use();
        let keys: Vec<String> = families.iter().map(|f| f.family.key()).collect();
        assert_eq!(
            keys,
            [
                "debian/12/x86_64/6.1/amd64",
                "debian/12/x86_64/6.1/cloud-amd64",
                "debian/12/x86_64/6.12/amd64"
            ]
        );
        let main = &families[0];
        assert_eq!(main.nodes, 6);
        let kernels: Vec<&str> = main.kernels.iter().map(KernelRelease::as_str).collect();
        assert_eq!(
            kernels,
            ["6.1.0-10-amd64", "6.1.0-8-amd64", "6.1.0-9-amd64"]
        );
        assert_eq!(main.driver_versions.len(), 1);
        // The backports kernel is installed on two nodes: its family is in use by them.
        assert_eq!(families[2].nodes, 2);
        assert_eq!(families[1].nodes, 1);
    }

    #[test]
    fn the_view_orders_kernels_newest_first_and_marks_upcoming_ones() {
        let mut tally = Tally::of(&groups());
        let now = crate::store::now_ms();
        let built = |release: &str, state: BuildState, id: &str| {
            let mut new = crate::store::NewBuild::for_test(id);
            new.identity = identity(release, "v0.1.2");
            BuildRecord {
                build_id: id.to_owned(),
                cache_key: new.cache_key(),
                driver: new.driver,
                identity: new.identity,
                state,
                run_id: None,
                run_url: None,
                download_url: None,
                error: None,
                created_at: now,
                updated_at: now,
                started_at: None,
                finished_at: None,
                deadline_at: now,
                dispatch_attempts: 1,
                dispatch_sent_at: None,
                requested_by: None,
                source_commit: None,
            }
        };
        let builds = vec![
            // Prebuilt ahead of the fleet: upcoming, published.
            built("6.1.0-11-amd64", BuildState::Done, "b-11"),
            // Older than what runs and nobody has it: not shown.
            built("6.1.0-7-amd64", BuildState::Done, "b-7"),
            built("6.1.0-10-amd64", BuildState::InProgress, "b-10"),
            built("6.1.0-8-amd64", BuildState::Error, "b-8"),
        ];
        tally.add_builds(&builds);
        let mut facts = HashMap::new();
        for build in &builds {
            facts.insert(
                build.identity.clone(),
                ArtifactFacts {
                    build: Some((build_status(build), build.build_id.clone())),
                    found: None,
                },
            );
        }
        let view = render_view(&tally, &facts, "2026-01-02T03:04:05Z".to_owned());
        assert_eq!(
            (view.nodes, view.nodes_without_driver, view.first_boot_waits),
            (7, 3, 2)
        );
        let family = &view.families[0];
        let rows: Vec<(&str, u64, u64, bool, ArtifactStatus)> = family
            .kernels
            .iter()
            .map(|k| {
                (
                    k.kernel_version.as_str(),
                    k.nodes_running,
                    k.nodes_pending,
                    k.upcoming,
                    k.drivers[0].artifact,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("6.1.0-11-amd64", 0, 0, true, ArtifactStatus::Published),
                ("6.1.0-10-amd64", 0, 3, true, ArtifactStatus::Building),
                ("6.1.0-9-amd64", 4, 0, false, ArtifactStatus::Published),
                ("6.1.0-8-amd64", 2, 0, false, ArtifactStatus::Failed),
            ]
        );
        let running = &family.kernels[2].drivers[0];
        assert_eq!(
            (
                running.nodes_loaded,
                running.nodes_refused,
                running.nodes_failed
            ),
            (3, 1, 0)
        );
        assert_eq!(
            (running.first_boot_waits, running.first_boot_wait_ms_max),
            (1, Some(4_000))
        );
        assert_eq!(
            family.kernels[0].drivers[0].build_id.as_deref(),
            Some("b-11")
        );
        // An installed backports kernel nobody runs: its family's only kernel, upcoming.
        let backports = &view.families[2];
        assert_eq!(backports.family, "debian/12/x86_64/6.12/amd64");
        assert!(backports.kernels[0].upcoming);
        assert_eq!(
            backports.kernels[0].drivers[0].artifact,
            ArtifactStatus::None
        );
        // Only that one needs the artifact store: the rest are settled by builds or loaded nodes.
        let candidates = lookup_candidates(&tally, &facts, MAX_LOOKUPS_PER_VIEW);
        let keys: Vec<String> = candidates.iter().map(KernelIdentity::cache_key).collect();
        assert_eq!(
            keys,
            [
                "debian/12/x86_64/6.12.38+deb12-amd64/v0.1.2",
                "debian/12/x86_64/6.1.0-8-amd64/v0.1.2"
            ]
        );
        assert_eq!(lookup_candidates(&tally, &facts, 1).len(), 1);
        let mut found = facts.clone();
        found.entry(candidates[1].clone()).or_default().found = Some(true);
        let view = render_view(&tally, &found, String::new());
        assert_eq!(
            view.families[0].kernels[3].drivers[0].artifact,
            ArtifactStatus::Published,
            "a published artifact outranks a failed later build"
        );
    }

    #[test]
    fn metrics_are_per_identity_and_bounded() {
        let text = render_metrics(&groups());
        let line = |prefix: &str| {
            text.lines()
                .find(|line| line.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .to_owned()
        };
        let labels = "{distribution=\"debian\",distro_version=\"12\",architecture=\"x86_64\",kernel_version=\"6.1.0-9-amd64\",driver_version=\"v0.1.2\"}";
        assert_eq!(
            line(&format!("kdriver_fleet_nodes{labels}")),
            format!("kdriver_fleet_nodes{labels} 4")
        );
        assert!(line(&format!("kdriver_fleet_nodes_without_driver{labels}")).ends_with(" 1"));
        assert!(line(&format!("kdriver_fleet_first_boot_waits{labels}")).ends_with(" 1"));
        assert!(
            line(&format!(
                "kdriver_fleet_first_boot_wait_seconds_max{labels}"
            ))
            .ends_with(" 4.000")
        );
        assert!(text.contains("kdriver_fleet_identities_omitted 0"));
        // No wait on record: no maximum for that identity.
        assert!(!text.contains("kdriver_fleet_first_boot_wait_seconds_max{distribution=\"debian\",distro_version=\"12\",architecture=\"x86_64\",kernel_version=\"6.1.0-8-amd64\""));

        let many: Vec<ReportGroup> = (0..MAX_METRIC_IDENTITIES + 5)
            .map(|n| {
                group(
                    &format!("6.1.0-{n}-amd64"),
                    RunOutcome::Loaded,
                    &[],
                    1,
                    (0, None),
                )
            })
            .collect();
        let text = render_metrics(&many);
        assert!(text.contains("kdriver_fleet_identities_omitted 5"));
        assert_eq!(
            text.lines()
                .filter(|line| line.starts_with("kdriver_fleet_nodes{"))
                .count(),
            MAX_METRIC_IDENTITIES
        );
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn lookups_are_remembered_for_their_ttl() {
        let lookups = ArtifactLookups::default();
        let now = Instant::now();
        let id = identity("6.1.0-9-amd64", "v0.1.2");
        assert_eq!(lookups.fresh(&id, now), None);
        lookups.remember(id.clone(), true, now);
        assert_eq!(lookups.fresh(&id, now + Duration::from_secs(1)), Some(true));
        assert_eq!(lookups.fresh(&id, now + LOOKUP_TTL), None);
    }
}
