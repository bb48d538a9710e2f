//! GitHub Actions + Releases backend: existence via release lookups (ETag conditional requests, positive
//! cache), builds via `workflow_dispatch` of `driver-build.yml` (with the commit the driver version's
//! tag resolved to, see [`crate::source`]), state via the workflow run. The same repository is the
//! driver's source: its tags are listed through the git refs API (`tags.rs`).
//!
//! Wire-up for the service core: build a [`GitHubConfig`] from the CLI, then
//! `GitHubBackend::new(config)?` (inside the Tokio runtime) and use it as a [`Backend`].
//!
//! Budget: a hit costs one conditional request the first time and nothing afterwards (positive cache);
//! a repeated miss costs a 304 (free) while the release does not change; polling an unchanged run is a
//! 304. Names (release tag, package file name) come from `kernel-id`, never from here.

mod api;
mod cache;
mod config;
mod releases;
mod runs;
mod tags;

use std::sync::Arc;
use std::time::SystemTime;

use kernel_id::{DriverName, KernelIdentity};

pub use config::{
    DEFAULT_API_BASE_URL, DEFAULT_GIT_REF, DEFAULT_WORKFLOW_FILE, GitHubAuth, GitHubConfig,
    GitHubSetupError, GitHubTuning,
};

use api::{ApiClient, ApiRequest, CallError, Endpoint};
use releases::ReleaseFinder;
use runs::{RunJson, RunTracker};
use tags::GitHubTags;

use crate::backend::{ArtifactRef, Backend, BackendError, BuildSpec, Dispatched, RunState};
use crate::source::SourceRepository;

/// The GitHub backend. Cheap to share (`Arc` it); all caches are internal and bounded.
#[derive(Debug)]
pub struct GitHubBackend {
    api: Arc<ApiClient>,
    driver: DriverName,
    layout: kernel_id::ReleaseLayout,
    releases: Arc<ReleaseFinder>,
    runs: RunTracker,
    tags: Arc<GitHubTags>,
}

impl GitHubBackend {
    /// Validates `config` and builds the client. Must run inside a Tokio runtime (octocrab spawns its
    /// request buffer there).
    pub fn new(config: GitHubConfig) -> Result<Self, GitHubSetupError> {
        config.validate()?;
        let api = Arc::new(ApiClient::new(&config)?);
        let repo_path = format!("/repos/{}/{}", config.owner, config.repo);
        let releases = Arc::new(ReleaseFinder::new(
            Arc::clone(&api),
            repo_path.clone(),
            config.layout,
        ));
        let runs = RunTracker::new(
            Arc::clone(&api),
            repo_path.clone(),
            &config.workflow_file,
            config.git_ref.clone(),
        );
        let tags = Arc::new(GitHubTags::new(
            Arc::clone(&api),
            repo_path,
            &config.owner,
            &config.repo,
        ));
        Ok(Self {
            api,
            driver: config.driver,
            layout: config.layout,
            releases,
            runs,
            tags,
        })
    }

    fn check_driver(&self, driver: &DriverName) -> Result<(), BackendError> {
        if *driver == self.driver {
            Ok(())
        } else {
            Err(BackendError::Permanent(format!(
                "driver_name: this GitHub backend builds '{}', not '{driver}'",
                self.driver
            )))
        }
    }

    /// Maps a run's status/conclusion to the service's states; a success only counts once its artifact
    /// is visible (the workflow publishes draft -> assets -> publish, so it normally is at completion).
    async fn run_state(&self, build: &BuildSpec, run: &RunJson) -> Result<RunState, BackendError> {
        let url = run
            .html_url
            .clone()
            .unwrap_or_else(|| format!("run {}", run.id));
        match run.status.as_deref() {
            Some("completed") => match run.conclusion.as_deref() {
                Some("success") => self.confirm_artifact(build, run, &url).await,
                Some(conclusion) => Ok(RunState::Failed {
                    message: format!("workflow run concluded '{conclusion}': {url}"),
                }),
                // GitHub sets the conclusion together with the status; a gap is transient.
                None => Ok(RunState::InProgress),
            },
            Some("queued" | "requested" | "waiting" | "pending") => Ok(RunState::Queued),
            _ => Ok(RunState::InProgress),
        }
    }

    async fn confirm_artifact(
        &self,
        build: &BuildSpec,
        run: &RunJson,
        url: &str,
    ) -> Result<RunState, BackendError> {
        match self.releases.find(&build.driver, &build.identity).await {
            Ok(Some(_)) => Ok(RunState::Succeeded),
            Ok(None) => {
                let grace = self.api.tuning().publish_grace;
                let completed = run.updated_at().unwrap_or_else(SystemTime::now);
                let waited = SystemTime::now()
                    .duration_since(completed)
                    .unwrap_or_default();
                if waited < grace {
                    Ok(RunState::InProgress)
                } else {
                    Ok(RunState::Failed {
                        message: format!(
                            "workflow run succeeded but {} is not published in release {} ({url})",
                            build.identity.package_file_name(&build.driver),
                            self.layout.release_tag(&build.driver, &build.identity)
                        ),
                    })
                }
            }
            Err(CallError::Permanent(message)) => Ok(RunState::Failed { message }),
            Err(err) => Err(err.into()),
        }
    }
}

#[async_trait::async_trait]
impl Backend for GitHubBackend {
    fn name(&self) -> &'static str {
        "github"
    }

    /// The repository the workflow runs in is the driver's source: `https://github.com/{o}/{r}`.
    fn source_repository(&self) -> Arc<dyn SourceRepository> {
        Arc::clone(&self.tags) as Arc<dyn SourceRepository>
    }

    async fn find_artifact(
        &self,
        driver: &DriverName,
        identity: &KernelIdentity,
    ) -> Result<Option<ArtifactRef>, BackendError> {
        self.check_driver(driver)?;
        Ok(self.releases.find(driver, identity).await?)
    }

    async fn dispatch(&self, build: &BuildSpec) -> Result<Dispatched, BackendError> {
        self.check_driver(&build.driver)?;
        Ok(self.runs.dispatch(build).await?)
    }

    async fn find_run(
        &self,
        build: &BuildSpec,
        since: SystemTime,
    ) -> Result<Option<Dispatched>, BackendError> {
        self.check_driver(&build.driver)?;
        Ok(self.runs.find(&build.build_id, since).await?)
    }

    /// A run shows in the run list within `ambiguous_settle` of its dispatch.
    fn dispatch_settle(&self) -> std::time::Duration {
        self.api.tuning().ambiguous_settle
    }

    async fn poll(
        &self,
        build: &BuildSpec,
        dispatched: &Dispatched,
    ) -> Result<RunState, BackendError> {
        self.check_driver(&build.driver)?;
        let run_id = match &dispatched.run_id {
            Some(run_id) => run_id.clone(),
            None => match self.runs.resolve_run(&build.build_id).await? {
                Some(Dispatched {
                    run_id: Some(run_id),
                    ..
                }) => run_id,
                // Dispatched (204) but not listed yet.
                _ => return Ok(RunState::Queued),
            },
        };
        match self.runs.get_run(&run_id).await? {
            Some(run) => self.run_state(build, &run).await,
            None => Ok(RunState::Failed {
                message: format!("workflow run {run_id} no longer exists"),
            }),
        }
    }

    async fn cancel(&self, build: &BuildSpec, dispatched: &Dispatched) -> Result<(), BackendError> {
        self.check_driver(&build.driver)?;
        let run_id = match &dispatched.run_id {
            Some(run_id) => run_id.clone(),
            None => match self.runs.resolve_run(&build.build_id).await? {
                Some(Dispatched {
                    run_id: Some(run_id),
                    ..
                }) => run_id,
                _ => {
                    // Not listed (yet): nothing can be cancelled now. A run that shows up later is
                    // not followed any more; its publish is first-wins (release.sh) and harmless.
                    tracing::warn!(
                        build_id = %build.build_id,
                        "no workflow run found for the build; nothing to cancel"
                    );
                    return Ok(());
                }
            },
        };
        tracing::info!(build_id = %build.build_id, run_id = %run_id, "cancelling the workflow run");
        Ok(self.runs.cancel_run(&run_id).await?)
    }

    async fn health(&self) -> Result<(), BackendError> {
        let response = self
            .api
            .send_once(&ApiRequest::get(
                Endpoint::RateLimit,
                "/rate_limit".to_owned(),
            ))
            .await?;
        if response.status.is_success() {
            Ok(())
        } else {
            Err(BackendError::Permanent(format!(
                "GitHub: /rate_limit answered {}: {}",
                response.status,
                response.error_text()
            )))
        }
    }
}
