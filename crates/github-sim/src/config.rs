//! Start-up configuration of the simulator: the one repository it hosts, its workflows and their declared
//! inputs, authentication, rate limits, how dispatches answer, and how dispatched runs behave.
//!
//! Most of these can also be changed while the simulator runs, through [`crate::SimHandle`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// The inputs of a workflow run, as GitHub passes them to the workflow: every value is a string.
pub type Inputs = BTreeMap<String, String>;

/// Decides the conclusion of a dispatched run from its inputs (for example "fail when the kernel release
/// mentions `broken`").
pub type OutcomeFn = Arc<dyn Fn(&Inputs) -> Conclusion + Send + Sync>;

/// What a successful run publishes, computed from its inputs, the way our `driver-build.yml` publishes the
/// package, signature and digest to the release its layout names.
pub type PublishFn = Arc<dyn Fn(&Inputs) -> Vec<PublishedFile> + Send + Sync>;

/// One file a successful run publishes to the release tagged `tag` (draft -> upload -> publish).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedFile {
    /// Release tag; a release is created for it unless a published one exists.
    pub tag: String,
    /// Asset name as the workflow asks for it (GitHub may sanitise it, see [`crate::sanitize_asset_name`]).
    pub name: String,
    /// `Content-Type` sent with the upload.
    pub content_type: String,
    /// The file's bytes.
    pub bytes: Bytes,
}

impl PublishedFile {
    /// A file with the generic `application/octet-stream` content type.
    pub fn new(tag: impl Into<String>, name: impl Into<String>, bytes: impl Into<Bytes>) -> Self {
        Self {
            tag: tag.into(),
            name: name.into(),
            content_type: "application/octet-stream".to_owned(),
            bytes: bytes.into(),
        }
    }
}

/// The conclusion of a completed workflow run (GitHub's `conclusion` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conclusion {
    Success,
    Failure,
    Cancelled,
    TimedOut,
}

impl Conclusion {
    /// The wire value (`success`, `failure`, `cancelled`, `timed_out`).
    pub fn as_str(self) -> &'static str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure => "failure",
            Conclusion::Cancelled => "cancelled",
            Conclusion::TimedOut => "timed_out",
        }
    }
}

/// The status of a workflow run (GitHub's `status` field; only the ones a dispatched run goes through).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Queued,
    InProgress,
    Completed,
}

impl RunStatus {
    /// The wire value (`queued`, `in_progress`, `completed`).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::InProgress => "in_progress",
            RunStatus::Completed => "completed",
        }
    }
}

/// How the dispatch endpoint treats `return_run_details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchMode {
    /// github.com since 2026-02-19: `return_run_details: true` -> 200 with the run details, else 204.
    RunDetails,
    /// An older GitHub Enterprise Server that ignores the field: always 204, no run id.
    LegacyNoContent,
    /// A GitHub Enterprise Server that validates the body strictly and refuses the unknown field with this
    /// status (400 per cli/cli#12672; 422 is what github.com answers for other unknown keys). Requests
    /// without the field behave like [`DispatchMode::LegacyNoContent`].
    RejectRunDetailsField { status: u16 },
}

/// Which status the primary rate limit answers with once exhausted (GitHub documents "403 or 429").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryLimitStatus {
    Forbidden403,
    TooManyRequests429,
}

/// How `GET /repos/{o}/{r}/releases/assets/{id}` with `Accept: application/octet-stream` answers; GitHub
/// documents both and clients must handle both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssetDownload {
    /// 302 to the storage URL (what github.com does today).
    Redirect,
    /// 200 with the bytes.
    Stream,
}

/// One input declared under `on.workflow_dispatch.inputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowInput {
    pub name: String,
    pub required: bool,
    /// Used when the dispatch omits the input.
    pub default: Option<String>,
    /// For `type: choice` inputs: the allowed values.
    pub options: Option<Vec<String>>,
}

impl WorkflowInput {
    /// A required input without default.
    pub fn required(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            required: true,
            default: None,
            options: None,
        }
    }

    /// An optional input with an optional default.
    pub fn optional(name: impl Into<String>, default: Option<&str>) -> Self {
        Self {
            name: name.into(),
            required: false,
            default: default.map(str::to_owned),
            options: None,
        }
    }
}

/// A workflow file in the simulated repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowSpec {
    /// Numeric workflow id (accepted in URLs as well as the file name).
    pub id: u64,
    /// File name under `.github/workflows/`, e.g. `driver-build.yml`.
    pub file: String,
    /// The workflow's `name:`; runs carry it as `name`.
    pub name: String,
    /// The workflow's `run-name:`, with `${{ inputs.x }}` / `${{ github.event.inputs.x }}` substituted into
    /// the run's `display_title`. `None`: the title is the workflow name.
    pub run_name: Option<String>,
    /// Whether the workflow has a `workflow_dispatch` trigger at all.
    pub dispatchable: bool,
    /// Declared inputs; `None` accepts any inputs without validation (only the count limit applies).
    pub inputs: Option<Vec<WorkflowInput>>,
}

impl WorkflowSpec {
    /// The project's `driver-build.yml`: the identity fields, `build_id` and `source_commit` (the
    /// commit the driver version's tag named when the service resolved it) as inputs, and a
    /// run-name that carries the build id (`driver-build <build_id>`).
    pub fn driver_build() -> Self {
        let required = [
            "kernel_version",
            "architecture",
            "distribution",
            "distro_version",
            "driver_version",
            "build_id",
            "source_commit",
        ];
        Self {
            id: 161_335,
            file: "driver-build.yml".to_owned(),
            name: "driver-build".to_owned(),
            run_name: Some("driver-build ${{ inputs.build_id }}".to_owned()),
            dispatchable: true,
            inputs: Some(
                required
                    .iter()
                    .map(|name| WorkflowInput::required(*name))
                    .collect(),
            ),
        }
    }
}

/// How long a dispatched run stays in each state before moving on. `None` holds it there until the test
/// advances it with [`crate::SimHandle::start_run`] / [`crate::SimHandle::finish_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunTiming {
    pub queued: Option<Duration>,
    pub in_progress: Option<Duration>,
    /// Pause between the publishing steps (draft created, assets uploaded, published) of a successful run,
    /// so tests can observe the draft window in which `releases/tags/{tag}` still answers 404.
    pub publish_step: Duration,
}

impl Default for RunTiming {
    fn default() -> Self {
        Self {
            queued: Some(Duration::from_millis(50)),
            in_progress: Some(Duration::from_millis(100)),
            publish_step: Duration::ZERO,
        }
    }
}

/// A GitHub App installed on the simulated repository: `POST /app/installations/{installation_id}/
/// access_tokens` with an RS256 JWT signed by the App's key (`iss` = `app_id`) mints an installation
/// token the API then accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimApp {
    pub app_id: u64,
    pub installation_id: u64,
    /// The App's public key, PEM (`-----BEGIN PUBLIC KEY-----` or `-----BEGIN RSA PUBLIC KEY-----`).
    pub public_key_pem: String,
}

/// Everything the simulator starts with.
#[derive(Clone)]
pub struct SimConfig {
    /// Owner and name of the one repository served (compared case-insensitively, like GitHub).
    pub owner: String,
    pub repo: String,
    /// Branches and tags a dispatch `ref` may name.
    pub refs: Vec<String>,
    pub workflows: Vec<WorkflowSpec>,
    /// Tokens accepted in `Authorization: Bearer|token <t>`; `None` accepts any token.
    pub accepted_tokens: Option<Vec<String>>,
    /// GitHub Apps that may mint installation tokens (accepted in addition to `accepted_tokens`).
    pub apps: Vec<SimApp>,
    /// Whether reads without a token are refused with 401 (writes always need a token).
    pub require_auth: bool,
    /// Primary rate limit per window (`x-ratelimit-limit`).
    pub rate_limit: u64,
    /// Length of the rate-limit window (an hour on GitHub).
    pub rate_limit_window: Duration,
    pub primary_limit_status: PrimaryLimitStatus,
    /// Repository setting "immutable releases": published releases refuse new assets.
    pub immutable_releases: bool,
    /// GitHub allows at most 1000 assets per release.
    pub max_assets_per_release: usize,
    /// Largest upload body accepted (GitHub allows 2 GiB; tests need far less).
    pub max_upload_bytes: usize,
    /// GitHub allows at most 25 dispatch inputs (10 before December 2025).
    pub max_dispatch_inputs: usize,
    pub dispatch_mode: DispatchMode,
    pub asset_download: AssetDownload,
    /// A new run shows up in the list endpoints only this long after its creation (GitHub lists lag by
    /// seconds); `GET .../runs/{id}` sees it at once.
    pub run_list_delay: Duration,
    pub run_timing: RunTiming,
    /// Conclusion of each dispatched run; default: success.
    pub outcome: OutcomeFn,
    /// What a successful run publishes; default: nothing.
    pub publish: PublishFn,
    /// Login of the user behind every accepted token (runs' `actor`, uploads' `uploader`).
    pub actor_login: String,
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("owner", &self.owner)
            .field("repo", &self.repo)
            .field("refs", &self.refs)
            .field("workflows", &self.workflows)
            .field(
                "accepted_tokens",
                &self.accepted_tokens.as_ref().map(Vec::len),
            )
            .field(
                "apps",
                &self.apps.iter().map(|app| app.app_id).collect::<Vec<_>>(),
            )
            .field("require_auth", &self.require_auth)
            .field("rate_limit", &self.rate_limit)
            .field("dispatch_mode", &self.dispatch_mode)
            .field("run_timing", &self.run_timing)
            .finish_non_exhaustive()
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            owner: "example-org".to_owned(),
            repo: "example-driver".to_owned(),
            refs: vec!["main".to_owned()],
            workflows: vec![WorkflowSpec::driver_build()],
            accepted_tokens: None,
            apps: Vec::new(),
            require_auth: false,
            rate_limit: 5000,
            rate_limit_window: Duration::from_secs(3600),
            primary_limit_status: PrimaryLimitStatus::Forbidden403,
            immutable_releases: false,
            max_assets_per_release: 1000,
            max_upload_bytes: 64 * 1024 * 1024,
            max_dispatch_inputs: 25,
            dispatch_mode: DispatchMode::RunDetails,
            asset_download: AssetDownload::Redirect,
            run_list_delay: Duration::ZERO,
            run_timing: RunTiming::default(),
            outcome: Arc::new(|_| Conclusion::Success),
            publish: Arc::new(|_| Vec::new()),
            actor_login: "build-service-bot".to_owned(),
        }
    }
}
