//! Workflow runs: dispatching `driver-build.yml` exactly once per build id, finding the run a dispatch
//! created, and reading a run's state.
//!
//! Correlation is always by the build id that the workflow's `run-name` carries (it shows up as the run's
//! `display_title`), never by "the first run created after the dispatch", which races with every other
//! dispatch on the repository. With `return_run_details: true` GitHub answers 200 with the run id; older
//! GitHub Enterprise Servers answer 204 (field ignored) or refuse the field with 400/422, in which case
//! we dispatch without it and find the run by its build id.
//!
//! A dispatch whose answer was lost (timeout, 5xx) may still have created a run. This module sends each
//! dispatch once and reports the loss as a transient error; the tracker persisted the attempt before,
//! waits the settle time ([`super::GitHubTuning::ambiguous_settle`]) and looks the run up by build id
//! ([`RunTracker::find`]) before it ever sends again, whichever replica tracks the build by then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use kernel_id::SourceCommit;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::api::{ApiClient, ApiRequest, CallError, Endpoint};
use super::cache::BoundedLru;
use crate::backend::{BuildSpec, Dispatched};

/// GitHub answers filtered run listings with at most 1,000 results; 10 pages of 100.
const MAX_LIST_PAGES: u32 = 10;
const PER_PAGE: u32 = 100;

/// A workflow run as returned by the runs endpoints. Own, tolerant struct: octocrab's `Run` requires
/// fields (head_commit, repository, ...) that we do not need and lacks `display_title`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RunJson {
    pub id: u64,
    #[serde(default)]
    pub display_title: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub conclusion: Option<String>,
    #[serde(default)]
    pub html_url: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

impl RunJson {
    /// Whether the run's title carries `build_id` as a whole word (`run-name: driver-build <build_id>`).
    pub(crate) fn carries_build_id(&self, build_id: &str) -> bool {
        self.display_title.as_deref().is_some_and(|title| {
            title
                .split(|c: char| {
                    c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | ',' | ':' | '"' | '\'')
                })
                .any(|word| word == build_id)
        })
    }

    /// When the run last changed (its completion time once completed).
    pub(crate) fn updated_at(&self) -> Option<SystemTime> {
        let parsed = OffsetDateTime::parse(self.updated_at.as_deref()?, &Rfc3339).ok()?;
        Some(SystemTime::from(parsed))
    }

    pub(crate) fn dispatched(&self) -> Dispatched {
        Dispatched {
            run_id: Some(self.id.to_string()),
            run_url: self.html_url.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RunListJson {
    #[serde(default)]
    total_count: u64,
    #[serde(default)]
    workflow_runs: Vec<RunJson>,
}

/// The 200 answer to a dispatch with `return_run_details: true`.
#[derive(Debug, Deserialize)]
struct DispatchDetailsJson {
    workflow_run_id: u64,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    run_url: Option<String>,
}

/// Dispatch and run lookups for one workflow.
pub(crate) struct RunTracker {
    api: Arc<ApiClient>,
    repo_path: String,
    workflow_path: String,
    git_ref: String,
    /// Sticky once the server refused `return_run_details` (GHES <= 3.20): no point sending it again.
    run_details_refused: AtomicBool,
    /// Build id -> its run, once known (facts only: a run, once found, stays that build's run).
    known: BoundedLru<String, Dispatched>,
    /// `GET .../runs/{id}` path -> (ETag, run): unchanged runs poll for free.
    run_etags: BoundedLru<String, (String, RunJson)>,
}

impl std::fmt::Debug for RunTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunTracker")
            .field("workflow_path", &self.workflow_path)
            .finish_non_exhaustive()
    }
}

fn since_filter(time: SystemTime) -> String {
    let at = OffsetDateTime::from(time)
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::from(time));
    let formatted = at
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned());
    format!(">={formatted}")
}

impl RunTracker {
    pub(crate) fn new(
        api: Arc<ApiClient>,
        repo_path: String,
        workflow_file: &str,
        git_ref: String,
    ) -> Self {
        let tuning = api.tuning().clone();
        let workflow_path = format!(
            "{repo_path}/actions/workflows/{}",
            kernel_id::percent_encode_segment(workflow_file)
        );
        Self {
            api,
            repo_path,
            workflow_path,
            git_ref,
            run_details_refused: AtomicBool::new(false),
            known: BoundedLru::new(tuning.ledger_entries),
            run_etags: BoundedLru::new(tuning.etag_cache_entries),
        }
    }

    /// Sends the dispatch of `build` once (see the module docs): the run's details when GitHub answers
    /// them, else (204) the run looked up by build id for a moment, else no run id (polling keeps
    /// looking). A server refusing `return_run_details` gets the same dispatch without the field at
    /// once: that refusal took no effect. A build id whose run this process knows is not sent again.
    pub(crate) async fn dispatch(&self, build: &BuildSpec) -> Result<Dispatched, CallError> {
        let build_id = build.build_id.as_str();
        if let Some(dispatched) = self.known.get(&build_id.to_owned()) {
            return Ok(dispatched);
        }
        // The workflow builds exactly this commit (and fails unless the tag still names it).
        let Some(commit) = &build.source_commit else {
            return Err(CallError::Permanent(format!(
                "build {build_id} has no source commit recorded (reserved before driver versions \
                 were resolved to commits); request it again"
            )));
        };
        let sent_at = SystemTime::now();
        let with_details = !self.run_details_refused.load(Ordering::Relaxed);
        let mut response = self
            .api
            .send_once(&self.dispatch_request(build, commit, with_details))
            .await?;
        if with_details
            && matches!(
                response.status,
                StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
            )
            && response.error_text().contains("return_run_details")
        {
            tracing::info!(
                build_id,
                "server refuses return_run_details; dispatching without it"
            );
            self.run_details_refused.store(true, Ordering::Relaxed);
            response = self
                .api
                .send_once(&self.dispatch_request(build, commit, false))
                .await?;
        }
        match response.status {
            StatusCode::OK => match serde_json::from_slice::<DispatchDetailsJson>(&response.body) {
                Ok(details) => {
                    let dispatched = Dispatched {
                        run_id: Some(details.workflow_run_id.to_string()),
                        run_url: details.html_url.or(details.run_url),
                    };
                    Ok(self.remember(build_id, dispatched))
                }
                Err(e) => {
                    // Accepted, but the body is unreadable: find the run like a 204.
                    tracing::warn!(
                        build_id,
                        "unreadable dispatch details ({e}); looking the run up"
                    );
                    Ok(self.after_accepted(build_id, sent_at).await)
                }
            },
            StatusCode::NO_CONTENT => Ok(self.after_accepted(build_id, sent_at).await),
            status => Err(CallError::Permanent(format!(
                "dispatch of {} refused ({status}): {}",
                self.workflow_path,
                response.error_text()
            ))),
        }
    }

    /// After an accepted dispatch without run details: the run looked up by build id for up to
    /// `run_lookup_timeout`. The dispatch took effect whatever the lookups say, so their failures
    /// are no dispatch error: without a run id, polling keeps looking.
    async fn after_accepted(&self, build_id: &str, sent_at: SystemTime) -> Dispatched {
        let window = self.api.tuning().run_lookup_timeout;
        match self.await_run(build_id, sent_at, window).await {
            Ok(Some(run)) => self.remember(build_id, run.dispatched()),
            Ok(None) => {
                tracing::warn!(
                    build_id,
                    "dispatched run not listed yet; polling will keep looking"
                );
                Dispatched::default()
            }
            Err(error) => {
                tracing::warn!(
                    build_id,
                    %error,
                    "dispatched run not looked up; polling will keep looking"
                );
                Dispatched::default()
            }
        }
    }

    fn remember(&self, build_id: &str, dispatched: Dispatched) -> Dispatched {
        self.known.insert(build_id.to_owned(), dispatched.clone());
        dispatched
    }

    fn dispatch_request(
        &self,
        build: &BuildSpec,
        commit: &SourceCommit,
        with_details: bool,
    ) -> ApiRequest {
        let identity = &build.identity;
        let mut body = json!({
            "ref": self.git_ref,
            "inputs": {
                "kernel_version": identity.kernel_release().as_str(),
                "architecture": identity.arch().as_str(),
                "distribution": identity.distribution().as_str(),
                "distro_version": identity.distro_version().as_str(),
                "driver_version": identity.driver_version().as_str(),
                "build_id": build.build_id,
                "source_commit": commit.as_str(),
            },
        });
        if with_details {
            body["return_run_details"] = json!(true);
        }
        ApiRequest {
            endpoint: Endpoint::Dispatch,
            method: Method::POST,
            path_and_query: format!("{}/dispatches", self.workflow_path),
            if_none_match: None,
            body: Some(body),
        }
    }

    /// Looks for the run carrying `build_id`, repeatedly for up to `window` (GitHub lists new runs late).
    async fn await_run(
        &self,
        build_id: &str,
        sent_at: SystemTime,
        window: Duration,
    ) -> Result<Option<RunJson>, CallError> {
        let interval = self.api.tuning().run_lookup_interval;
        let deadline = tokio::time::Instant::now() + window;
        loop {
            if let Some(run) = self.find_run(build_id, sent_at).await? {
                return Ok(Some(run));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(interval.min(deadline - now)).await;
        }
    }

    /// The run carrying `build_id` among the workflow's `workflow_dispatch` runs created since `since`
    /// (minus the clock-skew margin); the oldest one if, against all care, there are several.
    pub(crate) async fn find_run(
        &self,
        build_id: &str,
        since: SystemTime,
    ) -> Result<Option<RunJson>, CallError> {
        let since = since
            .checked_sub(self.api.tuning().clock_skew_margin)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let created: String =
            url::form_urlencoded::byte_serialize(since_filter(since).as_bytes()).collect();
        let mut matches: Vec<RunJson> = Vec::new();
        let mut seen = 0u64;
        for page in 1..=MAX_LIST_PAGES {
            let path = format!(
                "{}/runs?event=workflow_dispatch&created={created}&per_page={PER_PAGE}&page={page}",
                self.workflow_path
            );
            let response = self
                .api
                .send_once(&ApiRequest::get(Endpoint::ListRuns, path))
                .await?;
            if response.status != StatusCode::OK {
                return Err(list_error(
                    &self.workflow_path,
                    &response.status,
                    &response.error_text(),
                ));
            }
            let list: RunListJson = serde_json::from_slice(&response.body)
                .map_err(|e| CallError::Ambiguous(format!("unreadable run list: {e}")))?;
            let count = list.workflow_runs.len();
            seen += count as u64;
            matches.extend(
                list.workflow_runs
                    .into_iter()
                    .filter(|run| run.carries_build_id(build_id)),
            );
            if count < PER_PAGE as usize || seen >= list.total_count {
                break;
            }
        }
        if matches.len() > 1 {
            let ids: Vec<u64> = matches.iter().map(|r| r.id).collect();
            tracing::error!(
                build_id,
                ?ids,
                "several runs carry the same build id; following the oldest"
            );
        }
        Ok(matches.into_iter().min_by_key(|run| run.id))
    }

    /// `GET .../actions/runs/{id}`, conditional on the last ETag (an unchanged run polls for free);
    /// `None` when the run does not exist (deleted).
    pub(crate) async fn get_run(&self, run_id: &str) -> Result<Option<RunJson>, CallError> {
        let id: u64 = run_id.parse().map_err(|_| {
            CallError::Permanent(format!("run id '{run_id}' is not a GitHub run id"))
        })?;
        let path = format!("{}/actions/runs/{id}", self.repo_path);
        let cached = self.run_etags.get(&path);
        let mut request = ApiRequest::get(Endpoint::GetRun, path.clone());
        request.if_none_match = cached.as_ref().map(|(etag, _)| etag.clone());
        let response = self.api.send_once(&request).await?;
        match response.status {
            StatusCode::NOT_MODIFIED => match cached {
                Some((_, run)) => Ok(Some(run)),
                None => Err(CallError::Ambiguous(format!("unexpected 304 for {path}"))),
            },
            StatusCode::OK => {
                let run: RunJson = serde_json::from_slice(&response.body)
                    .map_err(|e| CallError::Ambiguous(format!("unreadable run {id}: {e}")))?;
                match response.etag() {
                    Some(etag) => self.run_etags.insert(path, (etag, run.clone())),
                    None => {
                        self.run_etags.remove(&path);
                    }
                }
                Ok(Some(run))
            }
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(list_error(&path, &status, &response.error_text())),
        }
    }

    /// `POST .../actions/runs/{id}/cancel`: 202 when GitHub accepted the cancellation, 409 when the
    /// run already completed; both leave the run unable to publish anything more of its own accord,
    /// and so does 404 (the run is gone). Safe to repeat.
    pub(crate) async fn cancel_run(&self, run_id: &str) -> Result<(), CallError> {
        let id: u64 = run_id.parse().map_err(|_| {
            CallError::Permanent(format!("run id '{run_id}' is not a GitHub run id"))
        })?;
        let path = format!("{}/actions/runs/{id}/cancel", self.repo_path);
        let request = ApiRequest {
            endpoint: Endpoint::CancelRun,
            method: Method::POST,
            path_and_query: path.clone(),
            if_none_match: None,
            body: None,
        };
        let response = self.api.send_once(&request).await?;
        match response.status {
            StatusCode::ACCEPTED => {
                // The run changes now; the next poll must not be answered from the ETag cache.
                self.run_etags
                    .remove(&format!("{}/actions/runs/{id}", self.repo_path));
                Ok(())
            }
            StatusCode::CONFLICT => {
                tracing::info!(run_id = id, "run already completed; nothing to cancel");
                Ok(())
            }
            StatusCode::NOT_FOUND => {
                tracing::info!(run_id = id, "run no longer exists; nothing to cancel");
                Ok(())
            }
            status => Err(list_error(&path, &status, &response.error_text())),
        }
    }

    /// The run carrying `build_id` created since `since` (remembered once found): what the tracker
    /// asks before it would send a dispatch again.
    pub(crate) async fn find(
        &self,
        build_id: &str,
        since: SystemTime,
    ) -> Result<Option<Dispatched>, CallError> {
        if let Some(dispatched) = self.known.get(&build_id.to_owned()) {
            return Ok(Some(dispatched));
        }
        Ok(self
            .find_run(build_id, since)
            .await?
            .map(|run| self.remember(build_id, run.dispatched())))
    }

    /// The run for a build dispatched without a known run id (204 and not listed in time): searched by
    /// build id over the idempotency lookback, and remembered once found.
    pub(crate) async fn resolve_run(
        &self,
        build_id: &str,
    ) -> Result<Option<Dispatched>, CallError> {
        let since = SystemTime::now() - self.api.tuning().idempotency_lookback;
        self.find(build_id, since).await
    }
}

fn list_error(what: &str, status: &StatusCode, text: &str) -> CallError {
    let message = format!("{what} answered {status}: {text}");
    if matches!(
        *status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
    ) {
        CallError::Permanent(message)
    } else {
        CallError::Ambiguous(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(title: Option<&str>) -> RunJson {
        RunJson {
            id: 1,
            display_title: title.map(str::to_owned),
            status: None,
            conclusion: None,
            html_url: None,
            updated_at: Some("2026-11-22T10:00:05Z".to_owned()),
        }
    }

    #[test]
    fn build_id_must_be_a_whole_word_of_the_title() {
        let id = "0b8e3c1e-6a0f-4f7e-9d43-3f1b2c4d5e6f";
        assert!(run(Some(&format!("driver-build {id}"))).carries_build_id(id));
        assert!(run(Some(&format!("driver-build ({id}) debian 12"))).carries_build_id(id));
        assert!(!run(Some(&format!("driver-build {id}-retry"))).carries_build_id(id));
        assert!(!run(Some("driver-build 0b8e3c1e")).carries_build_id(id));
        assert!(!run(None).carries_build_id(id));
    }

    #[test]
    fn created_filter_is_a_second_precision_utc_range() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(since_filter(at), ">=2026-11-18T11:06:40Z");
    }

    #[test]
    fn updated_at_parses_rfc3339() {
        let parsed = run(None).updated_at().expect("parses");
        let expected = SystemTime::from(time::macros::datetime!(2026-11-22 10:00:05 UTC));
        assert_eq!(parsed, expected);
    }

    #[test]
    fn tolerant_run_parsing_accepts_minimal_and_extra_fields() {
        let json = r#"{"id": 5, "status": "queued", "unknown": {"x": 1}, "head_commit": null}"#;
        let run: RunJson = serde_json::from_str(json).expect("tolerant");
        assert_eq!((run.id, run.status.as_deref()), (5, Some("queued")));
    }
}
