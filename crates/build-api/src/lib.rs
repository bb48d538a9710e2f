//! The build API's wire contract: the one copy of every JSON body `build-service` reads and writes.
//! The service produces its answers from these types, the loader, the fleet harness and xtask read
//! them with these types, the loader's tests fake the service with them, and build-service's
//! `tests/openapi.rs` checks its OpenAPI document against them in both directions (every field of a
//! type is documented with its JSON type and nullability, every documented property is produced).
//!
//! | route | answer | type |
//! | --- | --- | --- |
//! | `POST /build` | request body | [`BuildRequest`] |
//! | `POST /build` | 200, the artifact is published | [`BuildDone`] |
//! | `POST /build` | 202, a build was started or joined | [`BuildAccepted`] |
//! | `GET /status/{build_id}` | 200 | [`BuildStatus`] |
//! | `GET /builds` | 200 (scope `admin`) | [`BuildList`] |
//! | `GET /healthz` | 200 or 503 | [`Health`] |
//! | `POST /report` | request body (scope `report`), answered 204 | [`NodeReport`] |
//! | `GET /fleet` | 200 (scope `read-status`; `text/html` for a browser) | [`FleetView`] |
//! | `POST /watcher/run` | 200 (scope `admin`): one repository watcher pass | [`WatchPass`] |
//! | every refusal and failure | 4xx, 5xx | [`ApiErrorBody`] |
//!
//! The wire format is the one the service sent when it built these bodies as JSON maps: objects have
//! their keys in alphabetical order (so struct fields are declared alphabetically), absent optional
//! values are `null` rather than missing (except `distro_version` in a request, which may be left out).
//! Changing a field here changes the API for deployed loaders: add fields, never rename or remove them.
//!
//! Only types and serde (and kernel-id's identity input, which converts to and from a request): no IO,
//! no async, no HTTP client or server, so the static loader can use it. Validation of the identity
//! strings is kernel-id's, not this crate's.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The body of `POST /build`: the five identity strings as the caller has them (kernel-id validates
/// and canonicalises them; a `GET /status` answer echoes the canonical spelling).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BuildRequest {
    /// `x86_64`, `aarch64` or a Debian alias (`amd64`, `arm64`).
    pub architecture: String,
    /// Distribution id, as os-release's `ID`.
    pub distribution: String,
    /// Distribution version; the distribution's pinned default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distro_version: Option<String>,
    /// `v`-prefixed driver version.
    pub driver_version: String,
    /// The `uname -r` string.
    pub kernel_version: String,
}

impl From<kernel_id::IdentityInput> for BuildRequest {
    fn from(input: kernel_id::IdentityInput) -> Self {
        Self {
            architecture: input.architecture,
            distribution: input.distribution,
            distro_version: input.distro_version,
            driver_version: input.driver_version,
            kernel_version: input.kernel_version,
        }
    }
}

impl From<&kernel_id::KernelIdentity> for BuildRequest {
    /// The canonical spelling of a validated identity.
    fn from(identity: &kernel_id::KernelIdentity) -> Self {
        identity.to_input().into()
    }
}

impl From<BuildRequest> for kernel_id::IdentityInput {
    fn from(request: BuildRequest) -> Self {
        Self {
            kernel_version: request.kernel_version,
            architecture: request.architecture,
            distribution: request.distribution,
            distro_version: request.distro_version,
            driver_version: request.driver_version,
        }
    }
}

impl BuildRequest {
    /// Every field name, in wire order: the only keys `POST /build` accepts.
    pub const FIELDS: [&'static str; 5] = [
        "architecture",
        "distribution",
        "distro_version",
        "driver_version",
        "kernel_version",
    ];
}

/// `status` of a [`BuildDone`]: always `"done"`, and nothing else deserializes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum DoneStatus {
    /// `"done"`.
    #[default]
    #[serde(rename = "done")]
    Done,
}

/// `POST /build` answered 200: the artifact is already published.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BuildDone {
    /// Where the package is; its `.sha256` and `.minisig` sit beside it.
    pub download_url: String,
    /// Always `"done"`.
    pub status: DoneStatus,
}

impl BuildDone {
    /// The answer for a published artifact at `download_url`.
    pub fn new(download_url: impl Into<String>) -> Self {
        Self {
            download_url: download_url.into(),
            status: DoneStatus::Done,
        }
    }
}

/// `POST /build` answered 202: this request started a build, or joined the one in flight for the same
/// identity (then `build_id` is that build's).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BuildAccepted {
    /// The build to wait for.
    pub build_id: String,
    /// Human-readable; [`BuildAccepted::MESSAGE`] whether the build is new or joined.
    pub message: String,
    /// The build's status path, relative to the service ([`status_path`]).
    pub status_url: String,
}

impl BuildAccepted {
    /// The message the service sends.
    pub const MESSAGE: &'static str = "workflow dispatched";

    /// The answer for `build_id`.
    pub fn new(build_id: impl Into<String>) -> Self {
        let build_id = build_id.into();
        Self {
            message: Self::MESSAGE.to_owned(),
            status_url: status_path(&build_id),
            build_id,
        }
    }
}

/// The path of a build's status, `/status/{build_id}` (the id as given: percent-encode it first when
/// it did not come from the service).
pub fn status_path(build_id: &str) -> String {
    format!("/status/{build_id}")
}

/// The public state of a build. A build being dispatched is already `queued` here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    /// Accepted, not running yet.
    Queued,
    /// Running.
    InProgress,
    /// Published: `download_url` says where.
    Done,
    /// Ended without an artifact: `error` says why.
    Error,
    /// Not finished before its deadline.
    TimedOut,
}

impl BuildState {
    /// Every state.
    pub const ALL: [BuildState; 5] = [
        Self::Queued,
        Self::InProgress,
        Self::Done,
        Self::Error,
        Self::TimedOut,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Done => "done",
            Self::Error => "error",
            Self::TimedOut => "timed_out",
        }
    }

    /// Whether the build has ended (it never changes state again).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Error | Self::TimedOut)
    }
}

impl fmt::Display for BuildState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /status/{build_id}`: a build as the service records it. Timestamps are RFC 3339 in UTC.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BuildStatus {
    /// The build.
    pub build_id: String,
    /// kernel-id's cache key of the identity.
    pub cache_key: String,
    /// When the build was reserved.
    pub created_at: String,
    /// When it times out.
    pub deadline_at: String,
    /// How many dispatch calls the service made.
    pub dispatch_attempts: u64,
    /// Where the package is, once `done`.
    pub download_url: Option<String>,
    /// The driver built.
    pub driver_name: String,
    /// Why it failed, once `error` or `timed_out`.
    pub error: Option<String>,
    /// When the service saw it end.
    pub finished_at: Option<String>,
    /// The build's log (today the same as `run_url`).
    pub log_url: Option<String>,
    /// The identity, canonical spelling.
    pub request: BuildRequest,
    /// The backend's run id.
    pub run_id: Option<String>,
    /// The backend's run URL.
    pub run_url: Option<String>,
    /// The commit the build is made from: what the driver version's tag named when the build was
    /// reserved (full git commit id). `null` for builds from before commits were recorded.
    pub source_commit: Option<String>,
    /// When the backend reported it running.
    pub started_at: Option<String>,
    /// Its state.
    pub status: BuildState,
    /// Last change.
    pub updated_at: String,
}

/// Overall `status` of [`Health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Store and backend reachable.
    Ok,
    /// The backend is unreachable; the service still answers (200).
    Degraded,
    /// The store is unreachable (503).
    Unavailable,
}

/// One dependency's health: `"ok"`, or `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "CheckWire", into = "CheckWire")]
pub enum Check {
    /// Reachable.
    Ok,
    /// Unreachable, and why.
    Failed(String),
}

impl From<Result<(), String>> for Check {
    fn from(result: Result<(), String>) -> Self {
        match result {
            Ok(()) => Self::Ok,
            Err(error) => Self::Failed(error),
        }
    }
}

/// The wire shape of [`Check`].
#[derive(Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum CheckWire {
    Ok(OkWord),
    Failed { error: String },
}

/// The string `"ok"`.
#[derive(Clone, Copy, Serialize, Deserialize)]
enum OkWord {
    #[serde(rename = "ok")]
    Ok,
}

impl From<CheckWire> for Check {
    fn from(wire: CheckWire) -> Self {
        match wire {
            CheckWire::Ok(OkWord::Ok) => Self::Ok,
            CheckWire::Failed { error } => Self::Failed(error),
        }
    }
}

impl From<Check> for CheckWire {
    fn from(check: Check) -> Self {
        match check {
            Check::Ok => Self::Ok(OkWord::Ok),
            Check::Failed(error) => Self::Failed { error },
        }
    }
}

/// The backend part of [`Health`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BackendHealth {
    /// `github` or `local` (or a custom backend's name).
    pub name: String,
    /// Whether it is reachable.
    pub status: Check,
}

/// `GET /healthz`. Liveness follows the store only: the answer is 503 only when it is `unavailable`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Health {
    /// Where builds run and artifacts are.
    pub backend: BackendHealth,
    /// Overall.
    pub status: HealthState,
    /// The build database.
    pub store: Check,
}

/// What became of one request for a build, as the audit trail records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOutcome {
    /// The request created the build.
    Created,
    /// The request joined the build already in flight for its identity.
    Joined,
    /// Refused: it would have exceeded a cap on builds in flight.
    RefusedCap,
    /// Refused: the principal may not request that identity.
    RefusedLimit,
}

impl RequestOutcome {
    /// Every outcome.
    pub const ALL: [RequestOutcome; 4] = [
        Self::Created,
        Self::Joined,
        Self::RefusedCap,
        Self::RefusedLimit,
    ];

    /// The wire (and stored) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Joined => "joined",
            Self::RefusedCap => "refused_cap",
            Self::RefusedLimit => "refused_limit",
        }
    }

    /// The outcome with this spelling.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|outcome| outcome.as_str() == raw)
    }
}

/// Who asked for a build: one caller's requests from one address with one outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Requester {
    /// The client address (after trusted proxies).
    pub client: String,
    /// The first such request (RFC 3339).
    pub first_at: String,
    /// The latest such request (RFC 3339).
    pub last_at: String,
    /// What became of them.
    pub outcome: RequestOutcome,
    /// The principal's name, or `anonymous@<address>`.
    pub principal: String,
    /// How many such requests.
    pub requests: u64,
}

/// One entry of [`BuildList`]: a build and who asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BuildListing {
    /// The build, as `GET /status` shows it.
    pub build: BuildStatus,
    /// The caller whose request created it (`null` for builds older than the audit trail).
    pub requested_by: Option<String>,
    /// Everyone who created or joined it, oldest first.
    pub requesters: Vec<Requester>,
}

/// `GET /builds` (scope `admin`): builds, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BuildList {
    /// The builds.
    pub builds: Vec<BuildListing>,
}

/// How a loader run ended, as its report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// The driver is live (exit code 0).
    Loaded,
    /// The loader refused on purpose: the build was refused or failed, or verification, kernel
    /// compatibility, provenance or module signature said no (exit codes 5, 6, 7, 10, 11).
    Refused,
    /// Anything else: no artifact, install or load failure, internal error.
    Failed,
}

impl RunOutcome {
    /// The outcome of a loader exit code (the loader's exit code table).
    pub fn from_exit_code(code: u8) -> Self {
        match code {
            0 => Self::Loaded,
            5 | 6 | 7 | 10 | 11 => Self::Refused,
            _ => Self::Failed,
        }
    }

    /// The wire (and stored) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loaded => "loaded",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// Where the package a loader run used came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactOrigin {
    /// The node's own verified cache (a warm restart, or a prefetched kernel).
    Cache,
    /// Downloaded, already published when the node asked.
    Store,
    /// Downloaded after the node waited for an on-demand build (a first-boot wait).
    Build,
}

impl ArtifactOrigin {
    /// The wire (and stored) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cache => "cache",
            Self::Store => "store",
            Self::Build => "build",
        }
    }
}

/// Timings of one loader run, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunTimings {
    /// Waiting for an on-demand build (from the first `POST /build` to the build's end), `null`
    /// when the node did not wait: the first-boot wait.
    pub build_wait_ms: Option<u64>,
    /// Getting the verified package (cache, download, or build and download).
    pub fetch_ms: u64,
    /// The whole run, start to driver live (or to the failure).
    pub total_ms: u64,
}

/// `POST /report` (scope `report`): what one loader run on one node found and did. The service
/// keeps the latest report per node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeReport {
    /// The running kernel's architecture.
    pub architecture: String,
    /// Where the package came from; `null` when the run got none.
    pub artifact_origin: Option<ArtifactOrigin>,
    /// os-release `ID`.
    pub distribution: String,
    /// The distribution version.
    pub distro_version: String,
    /// The driver's name.
    pub driver_name: String,
    /// The `v`-prefixed driver version the node runs.
    pub driver_version: String,
    /// The loader's exit code.
    pub exit_code: u8,
    /// The running kernel (`uname -r`).
    pub kernel_version: String,
    /// A stable, non-reversible node id: lowercase hex SHA-256 of the host's machine-id (64 chars).
    pub node_id: String,
    /// How the run ended.
    pub outcome: RunOutcome,
    /// Kernels installed on the node but not running (`/lib/modules/R` with `/boot/vmlinuz-R`):
    /// what it will boot next.
    pub pending_kernels: Vec<String>,
    /// How long it took.
    pub timings: RunTimings,
}

impl NodeReport {
    /// Every field name, in wire order: the only keys `POST /report` accepts.
    pub const FIELDS: [&'static str; 12] = [
        "architecture",
        "artifact_origin",
        "distribution",
        "distro_version",
        "driver_name",
        "driver_version",
        "exit_code",
        "kernel_version",
        "node_id",
        "outcome",
        "pending_kernels",
        "timings",
    ];
}

impl RunTimings {
    /// Every field name, in wire order: the only keys `timings` accepts.
    pub const FIELDS: [&'static str; 3] = ["build_wait_ms", "fetch_ms", "total_ms"];
}

/// Whether the artifact of one identity exists, as the fleet view shows it: from the latest build
/// of the identity, else from the artifact store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactStatus {
    /// Published: a node can download it now.
    Published,
    /// A build of it is in flight.
    Building,
    /// Its latest build failed or timed out, and nothing is published.
    Failed,
    /// Neither published nor built (or not looked up yet: the view bounds its artifact lookups).
    None,
}

impl ArtifactStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Published => "published",
            Self::Building => "building",
            Self::Failed => "failed",
            Self::None => "none",
        }
    }
}

/// One driver version on one kernel of a [`KernelView`]: its artifact and what the nodes running
/// that kernel with that driver version last reported.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DriverView {
    /// Whether the artifact exists.
    pub artifact: ArtifactStatus,
    /// The latest build of this identity the service knows of, `null` when none.
    pub build_id: Option<String>,
    /// The `v`-prefixed driver version.
    pub driver_version: String,
    /// The longest first-boot wait among those nodes (ms), `null` when none waited.
    pub first_boot_wait_ms_max: Option<u64>,
    /// Nodes on this kernel and driver version that waited for an on-demand build.
    pub first_boot_waits: u64,
    /// Nodes whose latest run failed (no artifact, install or load failure).
    pub nodes_failed: u64,
    /// Nodes whose driver is live.
    pub nodes_loaded: u64,
    /// Nodes whose loader refused on purpose (verification, compatibility, signature).
    pub nodes_refused: u64,
}

/// One kernel release of a [`FamilyView`]: running on nodes, installed on nodes to boot next, or
/// built ahead for the family.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KernelView {
    /// Per driver version, newest first.
    pub drivers: Vec<DriverView>,
    /// The release (`uname -r`).
    pub kernel_version: String,
    /// Nodes that have it installed but do not run it.
    pub nodes_pending: u64,
    /// Nodes running it.
    pub nodes_running: u64,
    /// No node runs it and it is newer than every kernel of the family that does: what the family
    /// boots next.
    pub upcoming: bool,
}

/// One kernel family (distribution, distro version, architecture, series, flavor) the fleet runs
/// or has installed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FamilyView {
    /// Canonical architecture.
    pub architecture: String,
    /// Distribution id.
    pub distribution: String,
    /// Distribution version.
    pub distro_version: String,
    /// kernel-id's family key, `debian/12/x86_64/6.1/amd64`.
    pub family: String,
    /// The flavor, e.g. `amd64`, `cloud-amd64`, `generic`, `default`.
    pub flavor: String,
    /// Its kernels, newest first.
    pub kernels: Vec<KernelView>,
    /// Nodes running, or having installed, a kernel of the family.
    pub nodes: u64,
    /// The upstream `major.minor` series, e.g. `6.1`.
    pub series: String,
}

/// `GET /fleet` (scope `read-status`): the fleet's latest reports aggregated per kernel family.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FleetView {
    /// Families, ordered by key.
    pub families: Vec<FamilyView>,
    /// Nodes whose current kernel and driver version needed an on-demand build (a first-boot wait).
    pub first_boot_waits: u64,
    /// When the view was computed (RFC 3339).
    pub generated_at: String,
    /// Nodes with a report within the retention.
    pub nodes: u64,
    /// Nodes whose latest run did not leave the driver live (refused or failed).
    pub nodes_without_driver: u64,
}

/// Bytes one repository watcher pass downloaded, per kind of index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct WatchBytes {
    /// apt `InRelease` files.
    pub inrelease: u64,
    /// apt `Packages.xz`/`.gz` files.
    pub packages: u64,
    /// rpm-md primary metadata.
    pub primary: u64,
    /// rpm-md `repomd.xml` files.
    pub repomd: u64,
}

/// One kernel family in a repository watcher pass.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WatchFamily {
    /// kernel-id's family key, `debian/12/x86_64/6.1/amd64`.
    pub family: String,
    /// Kernels of the family the distribution's indexes list (with or without headers).
    pub kernels_found: u64,
    /// The newest of them whose headers are published too, `null` when none.
    pub newest: Option<String>,
    /// The kernel prebuilt for the family, `null` when the fleet already runs the newest.
    pub prebuild: Option<String>,
}

/// What became of one prebuild request of the repository watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrebuildOutcome {
    /// A build was created.
    Created,
    /// A build of the identity was already in flight and was joined.
    Joined,
    /// The artifact is already published.
    Published,
    /// `POST /build` answered 202: a build was created or joined (`build-service watch` cannot
    /// tell which; the service's own watcher can).
    Accepted,
    /// The request was refused or failed (see its `error`).
    Refused,
}

/// One prebuild request of a repository watcher pass (principal `watcher`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WatchPrebuild {
    /// The build created or joined, `null` otherwise.
    pub build_id: Option<String>,
    /// The published artifact, `null` unless it was already published.
    pub download_url: Option<String>,
    /// Why it was refused, `null` otherwise.
    pub error: Option<String>,
    /// kernel-id's family key.
    pub family: String,
    /// What became of it.
    pub outcome: PrebuildOutcome,
    /// The identity requested, as `POST /build` takes it.
    pub request: BuildRequest,
}

/// `POST /watcher/run` (scope `admin`): one repository watcher pass.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WatchPass {
    /// Bytes downloaded, per kind of index.
    pub bytes: WatchBytes,
    /// How long the pass took (ms).
    pub duration_ms: u64,
    /// Indexes that could not be read, each naming its URL and the rule it broke.
    pub errors: Vec<String>,
    /// Every family the fleet runs, ordered by key.
    pub families: Vec<WatchFamily>,
    /// apt suites and rpm-md repositories consulted.
    pub indexes_checked: u64,
    /// Of them, those whose package list had not changed (nothing but the small index read).
    pub indexes_unchanged: u64,
    /// From the first changed package list seen to the last prebuild requested (ms), `null` when
    /// the pass saw no change or requested nothing.
    pub new_index_to_prebuild_ms: Option<u64>,
    /// The prebuild requests, one per family and driver version.
    pub prebuilds: Vec<WatchPrebuild>,
}

/// The body of every refusal and failure: what went wrong, the request field at fault (when one
/// is) and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// A sentence for people.
    pub error: String,
    /// The request field at fault (a body field, `body`, `content-type`, `authorization`, `wait`,
    /// `build_id`), or `null`.
    pub field: Option<String>,
    /// The rule it broke.
    pub rule: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn request() -> BuildRequest {
        BuildRequest {
            architecture: "x86_64".to_owned(),
            distribution: "debian".to_owned(),
            distro_version: Some("12".to_owned()),
            driver_version: "v0.1.2".to_owned(),
            kernel_version: "6.1.0-47-amd64".to_owned(),
        }
    }

    fn text<T: Serialize>(value: &T) -> String {
        serde_json::to_string(value).unwrap()
    }

    /// The bytes must stay those of the `json!` maps the service used to build (sorted keys).
    #[test]
    fn bodies_keep_the_bytes_of_the_former_json_maps() {
        let cases: Vec<(String, Value)> = vec![
            (
                text(&BuildDone::new("http://h/p.deb")),
                json!({"status": "done", "download_url": "http://h/p.deb"}),
            ),
            (
                text(&BuildAccepted::new("b-1")),
                json!({"message": "workflow dispatched", "build_id": "b-1", "status_url": "/status/b-1"}),
            ),
            (
                text(&ApiErrorBody {
                    error: "e".to_owned(),
                    field: None,
                    rule: "r".to_owned(),
                }),
                json!({"error": "e", "field": null, "rule": "r"}),
            ),
            (
                text(&Health {
                    backend: BackendHealth {
                        name: "local".to_owned(),
                        status: Check::Failed("down".to_owned()),
                    },
                    status: HealthState::Degraded,
                    store: Check::Ok,
                }),
                json!({"status": "degraded", "store": "ok", "backend": {"name": "local", "status": {"error": "down"}}}),
            ),
            (
                text(&request()),
                json!({"kernel_version": "6.1.0-47-amd64", "architecture": "x86_64", "distribution": "debian", "distro_version": "12", "driver_version": "v0.1.2"}),
            ),
        ];
        for (typed, former) in cases {
            assert_eq!(typed, former.to_string());
        }
    }

    #[test]
    fn status_round_trips_and_keeps_nulls() {
        let status = BuildStatus {
            build_id: "b-1".to_owned(),
            cache_key: "debian/12/x86_64/6.1.0-47-amd64/v0.1.2".to_owned(),
            created_at: "2026-01-02T03:04:05.678Z".to_owned(),
            deadline_at: "2026-01-02T04:04:05.678Z".to_owned(),
            dispatch_attempts: 1,
            download_url: None,
            driver_name: "example-driver".to_owned(),
            error: None,
            finished_at: None,
            log_url: None,
            request: request(),
            run_id: None,
            run_url: None,
            source_commit: None,
            started_at: None,
            status: BuildState::Queued,
            updated_at: "2026-01-02T03:04:05.678Z".to_owned(),
        };
        let value = serde_json::to_value(&status).unwrap();
        assert_eq!(value["run_id"], Value::Null);
        assert_eq!(value["source_commit"], Value::Null);
        assert!(value.as_object().unwrap().contains_key("finished_at"));
        assert_eq!(value["status"], "queued");
        assert_eq!(
            serde_json::from_value::<BuildStatus>(value.clone()).unwrap(),
            status
        );
        // A service from before source commits were recorded does not send the key.
        let mut older = value;
        older.as_object_mut().unwrap().remove("source_commit");
        assert_eq!(
            serde_json::from_value::<BuildStatus>(older).unwrap(),
            status
        );
    }

    #[test]
    fn states_spell_as_on_the_wire() {
        for state in BuildState::ALL {
            assert_eq!(text(&state), format!("\"{state}\""));
            assert_eq!(
                serde_json::from_str::<BuildState>(&text(&state)).unwrap(),
                state
            );
        }
        assert!(serde_json::from_str::<BuildState>("\"dispatching\"").is_err());
        let terminal: Vec<_> = BuildState::ALL
            .into_iter()
            .filter(|state| state.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [BuildState::Done, BuildState::Error, BuildState::TimedOut]
        );
    }

    #[test]
    fn done_accepts_only_done() {
        let done: BuildDone =
            serde_json::from_str(r#"{"status":"done","download_url":"http://h/p"}"#).unwrap();
        assert_eq!(done, BuildDone::new("http://h/p"));
        assert!(
            serde_json::from_str::<BuildDone>(r#"{"status":"queued","download_url":"http://h/p"}"#)
                .is_err()
        );
    }

    #[test]
    fn checks_read_back() {
        for check in [Check::Ok, Check::Failed("no".to_owned())] {
            assert_eq!(serde_json::from_str::<Check>(&text(&check)).unwrap(), check);
        }
        assert!(serde_json::from_str::<Check>("\"fine\"").is_err());
    }

    #[test]
    fn request_fields_are_the_serialized_keys_and_distro_version_may_be_absent() {
        let value = serde_json::to_value(request()).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, BuildRequest::FIELDS);
        let without: BuildRequest = serde_json::from_str(
            r#"{"kernel_version":"k","architecture":"a","distribution":"d","driver_version":"v"}"#,
        )
        .unwrap();
        assert_eq!(without.distro_version, None);
        assert!(!text(&without).contains("distro_version"));
    }

    fn report() -> NodeReport {
        NodeReport {
            architecture: "x86_64".to_owned(),
            artifact_origin: Some(ArtifactOrigin::Build),
            distribution: "debian".to_owned(),
            distro_version: "12".to_owned(),
            driver_name: "example-driver".to_owned(),
            driver_version: "v0.1.2".to_owned(),
            exit_code: 0,
            kernel_version: "6.1.0-47-amd64".to_owned(),
            node_id: "ab".repeat(32),
            outcome: RunOutcome::Loaded,
            pending_kernels: vec!["6.1.0-48-amd64".to_owned()],
            timings: RunTimings {
                build_wait_ms: Some(1),
                fetch_ms: 2,
                total_ms: 3,
            },
        }
    }

    fn object_keys(value: &Value) -> Vec<&str> {
        value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn report_fields_are_the_serialized_keys() {
        let value = serde_json::to_value(report()).unwrap();
        assert_eq!(object_keys(&value), NodeReport::FIELDS);
        assert_eq!(object_keys(&value["timings"]), RunTimings::FIELDS);
        assert_eq!(
            serde_json::from_value::<NodeReport>(value).unwrap(),
            report()
        );
    }

    /// serde_json's map keeps keys sorted, so compare with the declaration order through the text.
    #[test]
    fn fleet_view_keys_are_declared_alphabetically() {
        let driver = DriverView {
            artifact: ArtifactStatus::None,
            build_id: None,
            driver_version: "v0.1.2".to_owned(),
            first_boot_wait_ms_max: None,
            first_boot_waits: 0,
            nodes_failed: 0,
            nodes_loaded: 1,
            nodes_refused: 0,
        };
        let view = FleetView {
            families: vec![FamilyView {
                architecture: "x86_64".to_owned(),
                distribution: "debian".to_owned(),
                distro_version: "12".to_owned(),
                family: "debian/12/x86_64/6.1/amd64".to_owned(),
                flavor: "amd64".to_owned(),
                kernels: vec![KernelView {
                    drivers: vec![driver],
                    kernel_version: "6.1.0-47-amd64".to_owned(),
                    nodes_pending: 0,
                    nodes_running: 1,
                    upcoming: false,
                }],
                nodes: 1,
                series: "6.1".to_owned(),
            }],
            first_boot_waits: 0,
            generated_at: "2026-01-02T03:04:05Z".to_owned(),
            nodes: 1,
            nodes_without_driver: 0,
        };
        let written = text(&view);
        let sorted = serde_json::to_value(&view).unwrap().to_string();
        assert_eq!(
            written, sorted,
            "struct fields must be declared in key order"
        );
        assert!(
            written.contains(r#""artifact":"none","build_id":null"#),
            "{written}"
        );
        assert_eq!(serde_json::from_str::<FleetView>(&written).unwrap(), view);
        for status in [
            ArtifactStatus::Published,
            ArtifactStatus::Building,
            ArtifactStatus::Failed,
            ArtifactStatus::None,
        ] {
            assert_eq!(text(&status), format!("\"{}\"", status.as_str()));
        }
    }
}
