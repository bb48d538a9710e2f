//! The simulator's mutable world: releases with their assets, workflow runs, the rate-limit window,
//! queued faults and counters, and the operations on them shared by the HTTP handlers, the run
//! progression and the test handle.
//!
//! Everything lives behind one `std::sync::Mutex` that is never held across an `.await`: the simulator
//! serves tests, where simplicity beats lock granularity.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::config::{Conclusion, Inputs, RunStatus, SimConfig};
use crate::error::{ApiError, DOCS_ASSETS, DOCS_GIT_REFS, DOCS_RELEASES};
use crate::routes::Route;

/// Login and id of the account that workflow runs publish as.
pub(crate) const ACTIONS_BOT_LOGIN: &str = "github-actions[bot]";
pub(crate) const ACTIONS_BOT_ID: u64 = 41_898_282;

/// A fault to inject into upcoming responses, see [`crate::SimHandle::inject_fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this 5xx status before doing anything (nothing changes on the server).
    ServerError(u16),
    /// Do the work (a dispatch creates its run, an upload stores its asset), then answer with this 5xx
    /// status: the case where a naive client repeats a request that already took effect.
    AcceptThenServerError(u16),
    /// A secondary rate limit: 403 or 429 with GitHub's message, and `retry-after` when given.
    SecondaryRateLimit {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Answer normally, but only after this delay (the request takes effect at the end of it: a
    /// dispatch creates its run only when it is answered).
    Delay(Duration),
}

/// Where dispatch requests wait while the simulator holds them, see
/// [`crate::SimHandle::hold_dispatches`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchHold {
    /// Before the dispatch takes effect: no run exists while it is held.
    BeforeRun,
    /// After the run was created: the dispatch took effect, only its answer is held.
    AfterRun,
}

/// A fault still queued, see [`crate::SimHandle::pending_faults`]; `route: None` targets every route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedFaultView {
    pub route: Option<Route>,
    pub fault: Fault,
    pub remaining: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct QueuedFault {
    pub scope: Option<Route>,
    pub fault: Fault,
    pub remaining: usize,
}

/// Who is behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    Anonymous,
    Token(String),
}

impl Caller {
    pub fn is_authenticated(&self) -> bool {
        matches!(self, Caller::Token(_))
    }
}

/// Counters tests read through [`crate::SimHandle::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Requests received per endpoint (every request, whatever its answer).
    pub requests: BTreeMap<Route, u64>,
    /// Dispatch requests that reached validation (after auth, rate limit and pre-processing faults).
    pub dispatches_received: u64,
    /// Workflow runs created by accepted dispatches.
    pub runs_created: u64,
    /// Primary rate-limit units consumed.
    pub quota_consumed: u64,
    /// `304 Not Modified` answers served (free for authenticated callers).
    pub not_modified: u64,
    /// Requests refused by the primary or a secondary rate limit.
    pub rate_limited: u64,
    /// Faults injected into answers.
    pub faults_served: u64,
    /// GitHub App installation tokens minted.
    pub installation_tokens_minted: u64,
    /// Dispatch requests that waited in a hold (see [`crate::SimHandle::hold_dispatches`]).
    pub dispatches_held: u64,
}

impl SimStats {
    /// Requests received by one endpoint.
    pub fn requests_to(&self, route: Route) -> u64 {
        self.requests.get(&route).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Asset {
    pub id: u64,
    pub name: String,
    pub label: Option<String>,
    pub content_type: String,
    pub bytes: Bytes,
    pub digest: String,
    pub download_count: u64,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub uploader: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Release {
    pub id: u64,
    pub tag_name: String,
    pub target_commitish: String,
    pub name: Option<String>,
    pub body: Option<String>,
    pub draft: bool,
    pub prerelease: bool,
    pub immutable: bool,
    pub created_at: OffsetDateTime,
    pub published_at: Option<OffsetDateTime>,
    pub updated_at: OffsetDateTime,
    pub author: String,
    pub assets: Vec<Asset>,
}

#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub id: u64,
    pub workflow_id: u64,
    pub run_number: u64,
    pub inputs: Inputs,
    pub display_title: String,
    pub head_branch: String,
    pub head_sha: String,
    pub status: RunStatus,
    pub conclusion: Option<Conclusion>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub run_started_at: OffsetDateTime,
    pub actor: String,
    pub failure_reason: Option<String>,
    /// Set once completion has begun, so a timer and a test finishing the same run cannot both publish.
    pub finishing: bool,
}

/// A snapshot of one workflow run, for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    pub id: u64,
    pub workflow_id: u64,
    pub inputs: Inputs,
    pub display_title: String,
    pub status: RunStatus,
    pub conclusion: Option<Conclusion>,
    pub created_at: OffsetDateTime,
    /// Why the simulated workflow failed to publish, when it did.
    pub failure_reason: Option<String>,
}

/// A snapshot of one release, for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseInfo {
    pub id: u64,
    pub tag_name: String,
    pub draft: bool,
    pub immutable: bool,
    /// Asset names in upload order.
    pub assets: Vec<String>,
}

/// What a tag's ref names: a commit (a lightweight tag) or an annotated tag object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TagTarget {
    /// `refs/tags/<name>` names the commit itself.
    Commit(String),
    /// `refs/tags/<name>` names this tag object (a key of [`State::tag_objects`]).
    Annotated(String),
}

/// An annotated tag object. Objects are immutable and stay readable by their sha after the tag
/// that named them moved or was deleted, as in a git repository.
#[derive(Debug, Clone)]
pub(crate) struct TagObject {
    pub sha: String,
    pub tag: String,
    pub message: String,
    /// The commit it names.
    pub commit: String,
    pub tagger: String,
    pub created_at: OffsetDateTime,
}

/// One ref as the git refs endpoints show it: full name, the type of the object it names and that
/// object's sha.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GitRef {
    pub name: String,
    pub object_type: &'static str,
    pub sha: String,
}

/// Fields a release creation or update may set.
#[derive(Debug, Clone, Default)]
pub(crate) struct ReleasePatch {
    pub tag_name: Option<String>,
    pub target_commitish: Option<String>,
    pub name: Option<String>,
    pub body: Option<String>,
    pub draft: Option<bool>,
    pub prerelease: Option<bool>,
}

/// The rate-limit window of the single simulated account (GitHub shares the primary limit across all of
/// a user's tokens).
#[derive(Debug, Clone)]
pub(crate) struct RateWindow {
    pub limit: u64,
    pub used: u64,
    pub reset_at: SystemTime,
}

pub(crate) struct State {
    pub config: SimConfig,
    pub repo_id: u64,
    pub releases: Vec<Release>,
    pub runs: Vec<Run>,
    next_id: u64,
    pub rate: RateWindow,
    pub faults: VecDeque<QueuedFault>,
    pub stats: SimStats,
    /// Installation tokens minted for the configured Apps (accepted like `accepted_tokens`).
    pub minted_tokens: Vec<String>,
    /// Tags of the repository by name (without `refs/tags/`).
    pub tags: BTreeMap<String, TagTarget>,
    /// Annotated tag objects by sha.
    pub tag_objects: BTreeMap<String, TagObject>,
}

/// GitHub's renaming of uploaded asset names: characters outside letters, digits, `.`, `-`, `_` and `+`
/// become `.`, and a leading `.` gets the prefix `default`. GitHub does not publish the rule; this follows
/// what users report (spaces, `~`, `(`, `)`, `:` turn into `.`; `+` survives when percent-encoded but an
/// unencoded `+` in the `name` query is read as a space first).
pub fn sanitize_asset_name(name: &str) -> String {
    let replaced: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+') {
                c
            } else {
                '.'
            }
        })
        .collect();
    if replaced.starts_with('.') {
        format!("default{replaced}")
    } else {
        replaced
    }
}

/// `sha256:<hex>`, the form of an asset's `digest` field.
pub(crate) fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A stable 40-hex "commit id" for a ref, so runs of the same ref agree on `head_sha`.
pub(crate) fn sha_of_ref(reference: &str) -> String {
    hex::encode(&Sha256::digest(reference.as_bytes())[..20])
}

pub(crate) fn now() -> OffsetDateTime {
    // Whole seconds: GitHub's timestamps have no fraction, and `created` filters compare them.
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

impl State {
    pub fn new(config: SimConfig) -> Self {
        let rate = RateWindow {
            limit: config.rate_limit,
            used: 0,
            reset_at: SystemTime::now() + config.rate_limit_window,
        };
        Self {
            config,
            repo_id: 700_000_001,
            releases: Vec::new(),
            runs: Vec::new(),
            next_id: 1000,
            rate,
            faults: VecDeque::new(),
            stats: SimStats::default(),
            minted_tokens: Vec::new(),
            tags: BTreeMap::new(),
            tag_objects: BTreeMap::new(),
        }
    }

    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Starts a fresh window once the current one has passed.
    pub fn roll_rate_window(&mut self) {
        let now = SystemTime::now();
        if now >= self.rate.reset_at {
            self.rate.used = 0;
            self.rate.reset_at = now + self.config.rate_limit_window;
        }
    }

    pub fn remaining(&self) -> u64 {
        self.rate.limit.saturating_sub(self.rate.used)
    }

    pub fn reset_epoch(&self) -> u64 {
        self.rate
            .reset_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    /// Takes the next queued fault for `route`, if any.
    pub fn take_fault(&mut self, route: Route) -> Option<Fault> {
        let index = self
            .faults
            .iter()
            .position(|f| f.scope.is_none_or(|scope| scope == route))?;
        let entry = self.faults.get_mut(index)?;
        let fault = entry.fault;
        entry.remaining -= 1;
        if entry.remaining == 0 {
            self.faults.remove(index);
        }
        self.stats.faults_served += 1;
        Some(fault)
    }

    pub fn release(&self, id: u64) -> Option<&Release> {
        self.releases.iter().find(|r| r.id == id)
    }

    fn release_mut(&mut self, id: u64) -> Option<&mut Release> {
        self.releases.iter_mut().find(|r| r.id == id)
    }

    /// The published release of a tag (drafts are never found by tag).
    pub fn published_by_tag(&self, tag: &str) -> Option<&Release> {
        self.releases.iter().find(|r| !r.draft && r.tag_name == tag)
    }

    pub fn find_asset(&self, asset_id: u64) -> Option<(&Release, &Asset)> {
        self.releases
            .iter()
            .find_map(|r| r.assets.iter().find(|a| a.id == asset_id).map(|a| (r, a)))
    }

    /// Creates a release. Several drafts may share a tag (GitHub allows it); a published release may not.
    pub fn create_release(&mut self, patch: ReleasePatch, author: &str) -> Result<u64, ApiError> {
        let tag = patch.tag_name.unwrap_or_default();
        if tag.trim().is_empty() {
            return Err(ApiError::validation(
                "Release",
                "tag_name",
                "missing_field",
                DOCS_RELEASES,
            ));
        }
        if !valid_tag(&tag) {
            return Err(ApiError::validation(
                "Release",
                "tag_name",
                "invalid",
                DOCS_RELEASES,
            ));
        }
        let draft = patch.draft.unwrap_or(false);
        if !draft && self.published_by_tag(&tag).is_some() {
            return Err(ApiError::validation(
                "Release",
                "tag_name",
                "already_exists",
                DOCS_RELEASES,
            ));
        }
        let id = self.next_id();
        let now = now();
        let immutable = !draft && self.config.immutable_releases;
        self.releases.push(Release {
            id,
            tag_name: tag,
            target_commitish: patch.target_commitish.unwrap_or_else(|| "main".to_owned()),
            name: patch.name,
            body: patch.body,
            draft,
            prerelease: patch.prerelease.unwrap_or(false),
            immutable,
            created_at: now,
            published_at: (!draft).then_some(now),
            updated_at: now,
            author: author.to_owned(),
            assets: Vec::new(),
        });
        Ok(id)
    }

    /// Updates a release; `draft: false` publishes it.
    pub fn update_release(&mut self, id: u64, patch: ReleasePatch) -> Result<(), ApiError> {
        let immutable_setting = self.config.immutable_releases;
        let current = self
            .release(id)
            .ok_or_else(|| ApiError::not_found(DOCS_RELEASES))?;
        let tag = patch
            .tag_name
            .clone()
            .unwrap_or_else(|| current.tag_name.clone());
        let draft = patch.draft.unwrap_or(current.draft);
        if current.immutable
            && (patch
                .tag_name
                .as_ref()
                .is_some_and(|t| *t != current.tag_name)
                || draft)
        {
            return Err(ApiError::unprocessable(
                "Cannot modify an immutable release.",
                DOCS_RELEASES,
            ));
        }
        if !valid_tag(&tag) {
            return Err(ApiError::validation(
                "Release",
                "tag_name",
                "invalid",
                DOCS_RELEASES,
            ));
        }
        if !draft
            && self
                .releases
                .iter()
                .any(|r| r.id != id && !r.draft && r.tag_name == tag)
        {
            return Err(ApiError::validation(
                "Release",
                "tag_name",
                "already_exists",
                DOCS_RELEASES,
            ));
        }
        let now = now();
        let release = self
            .release_mut(id)
            .ok_or_else(|| ApiError::not_found(DOCS_RELEASES))?;
        let publishing = release.draft && !draft;
        release.tag_name = tag;
        if let Some(commitish) = patch.target_commitish {
            release.target_commitish = commitish;
        }
        if patch.name.is_some() {
            release.name = patch.name;
        }
        if patch.body.is_some() {
            release.body = patch.body;
        }
        if let Some(prerelease) = patch.prerelease {
            release.prerelease = prerelease;
        }
        release.draft = draft;
        if publishing {
            release.published_at = Some(now);
            release.immutable = immutable_setting;
        }
        if draft {
            release.published_at = None;
        }
        release.updated_at = now;
        Ok(())
    }

    /// Stores an uploaded asset under its sanitised name and returns its id.
    pub fn upload_asset(
        &mut self,
        release_id: u64,
        requested_name: &str,
        label: Option<String>,
        content_type: &str,
        bytes: Bytes,
        uploader: &str,
    ) -> Result<u64, ApiError> {
        let max_assets = self.config.max_assets_per_release;
        let id = self.next_id();
        let release = self
            .release_mut(release_id)
            .ok_or_else(|| ApiError::not_found(DOCS_ASSETS))?;
        if requested_name.is_empty() {
            return Err(ApiError::validation(
                "ReleaseAsset",
                "name",
                "missing_field",
                DOCS_ASSETS,
            ));
        }
        if release.immutable && !release.draft {
            return Err(ApiError::unprocessable(
                "Cannot upload assets to an immutable release.",
                DOCS_ASSETS,
            ));
        }
        let name = sanitize_asset_name(requested_name);
        if release.assets.iter().any(|a| a.name == name) {
            return Err(ApiError::validation(
                "ReleaseAsset",
                "name",
                "already_exists",
                DOCS_ASSETS,
            ));
        }
        if release.assets.len() >= max_assets {
            return Err(ApiError::validation_custom(
                "ReleaseAsset",
                "release",
                &format!("A release may have at most {max_assets} assets."),
                DOCS_ASSETS,
            ));
        }
        let now = now();
        release.assets.push(Asset {
            id,
            name,
            label,
            content_type: if content_type.is_empty() {
                "application/octet-stream".to_owned()
            } else {
                content_type.to_owned()
            },
            digest: digest_of(&bytes),
            bytes,
            download_count: 0,
            created_at: now,
            updated_at: now,
            uploader: uploader.to_owned(),
        });
        release.updated_at = now;
        Ok(id)
    }

    pub fn count_download(&mut self, asset_id: u64) {
        if let Some(asset) = self
            .releases
            .iter_mut()
            .flat_map(|r| r.assets.iter_mut())
            .find(|a| a.id == asset_id)
        {
            asset.download_count += 1;
        }
    }

    pub fn run_info(run: &Run) -> RunInfo {
        RunInfo {
            id: run.id,
            workflow_id: run.workflow_id,
            inputs: run.inputs.clone(),
            display_title: run.display_title.clone(),
            status: run.status,
            conclusion: run.conclusion,
            created_at: run.created_at,
            failure_reason: run.failure_reason.clone(),
        }
    }

    pub fn release_info(release: &Release) -> ReleaseInfo {
        ReleaseInfo {
            id: release.id,
            tag_name: release.tag_name.clone(),
            draft: release.draft,
            immutable: release.immutable,
            assets: release.assets.iter().map(|a| a.name.clone()).collect(),
        }
    }

    pub fn run_mut(&mut self, run_id: u64) -> Option<&mut Run> {
        self.runs.iter_mut().find(|r| r.id == run_id)
    }

    /// Points the tag `name` at `commit`: directly (lightweight), or through a new annotated tag
    /// object carrying `message`, whose sha is returned. `replace`: a tag of that name may exist
    /// (a forced move); otherwise it must not (GitHub: "Reference already exists").
    pub fn set_tag(
        &mut self,
        name: &str,
        commit: &str,
        message: Option<&str>,
        replace: bool,
    ) -> Result<Option<String>, ApiError> {
        if !valid_tag(name) {
            return Err(ApiError::unprocessable(
                format!("'refs/tags/{name}' is not a valid ref name."),
                DOCS_GIT_REFS,
            ));
        }
        if !is_object_id(commit) {
            return Err(ApiError::unprocessable(
                format!("'{commit}' is not a full commit sha (40 lowercase hex digits)."),
                DOCS_GIT_REFS,
            ));
        }
        if !replace && self.tags.contains_key(name) {
            return Err(ApiError::unprocessable(
                "Reference already exists",
                DOCS_GIT_REFS,
            ));
        }
        let target = match message {
            None => TagTarget::Commit(commit.to_owned()),
            Some(message) => {
                let serial = self.next_id();
                let sha = sha_of_ref(&format!("tag-object {serial} {name} {commit} {message}"));
                let tagger = self.config.actor_login.clone();
                self.tag_objects.insert(
                    sha.clone(),
                    TagObject {
                        sha: sha.clone(),
                        tag: name.to_owned(),
                        message: message.to_owned(),
                        commit: commit.to_owned(),
                        tagger,
                        created_at: now(),
                    },
                );
                TagTarget::Annotated(sha)
            }
        };
        let object = match &target {
            TagTarget::Annotated(sha) => Some(sha.clone()),
            TagTarget::Commit(_) => None,
        };
        self.tags.insert(name.to_owned(), target);
        Ok(object)
    }

    /// The commit a tag names, annotated tags peeled.
    pub fn peeled_tag(&self, name: &str) -> Option<String> {
        match self.tags.get(name)? {
            TagTarget::Commit(commit) => Some(commit.clone()),
            TagTarget::Annotated(sha) => self.tag_objects.get(sha).map(|o| o.commit.clone()),
        }
    }

    /// Every ref of the repository, sorted by name as GitHub lists them: the configured branches
    /// (at a stable made-up commit) and the tags.
    pub fn git_refs(&self) -> Vec<GitRef> {
        let mut refs: Vec<GitRef> = self
            .config
            .refs
            .iter()
            .filter(|name| !self.tags.contains_key(*name))
            .map(|branch| GitRef {
                name: format!("refs/heads/{branch}"),
                object_type: "commit",
                sha: sha_of_ref(branch),
            })
            .collect();
        refs.extend(self.tags.iter().map(|(name, target)| {
            let (object_type, sha) = match target {
                TagTarget::Commit(commit) => ("commit", commit.clone()),
                TagTarget::Annotated(sha) => ("tag", sha.clone()),
            };
            GitRef {
                name: format!("refs/tags/{name}"),
                object_type,
                sha,
            }
        }));
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        refs
    }
}

/// A full object id: 40 lowercase hex digits (the simulated repository uses SHA-1).
pub(crate) fn is_object_id(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Git refuses these in tag names (git-check-ref-format); GitHub answers `invalid`.
fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && !tag.starts_with('-')
        && !tag.starts_with('/')
        && !tag.ends_with('/')
        && !tag.ends_with(".lock")
        && !tag.ends_with('.')
        && !tag.contains("..")
        && !tag.contains("@{")
        && !tag.chars().any(|c| {
            c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn sanitizes_like_github_reports() {
        assert_eq!(sanitize_asset_name("a b(1)~c:d.deb"), "a.b.1..c.d.deb");
        assert_eq!(
            sanitize_asset_name("x_6.12.1+deb12-amd64_v0.1.2_amd64.deb"),
            "x_6.12.1+deb12-amd64_v0.1.2_amd64.deb"
        );
        assert_eq!(sanitize_asset_name(".env"), "default.env");
    }

    #[test]
    fn refuses_git_invalid_tags() {
        for bad in [
            "", "a b", "a..b", "a~1", "a^", "x:y", "t.lock", "-t", "a\nb",
        ] {
            assert!(!valid_tag(bad), "{bad:?}");
        }
        assert!(valid_tag("example-driver-debian-12-6.1.0-47-amd64-v0.1.2"));
        assert!(valid_tag("v1.2.3+deb12"));
    }

    #[test]
    fn a_release_holds_at_most_1000_assets_by_default() {
        let mut state = State::new(SimConfig::default());
        let patch = ReleasePatch {
            tag_name: Some("big".into()),
            draft: Some(true),
            ..Default::default()
        };
        let id = state.create_release(patch, "u").expect("draft");
        for n in 0..1000 {
            let name = format!("asset-{n}");
            state
                .upload_asset(id, &name, None, "", Bytes::new(), "u")
                .expect("within the limit");
        }
        let err = state
            .upload_asset(id, "one-more", None, "", Bytes::new(), "u")
            .expect_err("refused");
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            err.body()["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("1000"))
        );
    }

    #[test]
    fn drafts_share_tags_but_published_releases_do_not() {
        let mut state = State::new(SimConfig::default());
        let draft = |tag: &str| ReleasePatch {
            tag_name: Some(tag.into()),
            draft: Some(true),
            ..Default::default()
        };
        let first = state.create_release(draft("t"), "u").expect("first draft");
        let second = state.create_release(draft("t"), "u").expect("second draft");
        state
            .update_release(
                first,
                ReleasePatch {
                    draft: Some(false),
                    ..Default::default()
                },
            )
            .expect("publish");
        let err = state.update_release(
            second,
            ReleasePatch {
                draft: Some(false),
                ..Default::default()
            },
        );
        assert_eq!(
            err.map_err(|e| e.status),
            Err(StatusCode::UNPROCESSABLE_ENTITY)
        );
    }
}
