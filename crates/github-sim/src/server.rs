//! The HTTP side: one axum fallback handler that routes by hand and runs every API request through the
//! same pipeline GitHub applies — injected faults, API-version check, authentication, primary rate limit,
//! the endpoint itself, conditional-request (ETag / Last-Modified) handling, quota accounting and the
//! rate-limit headers — plus the non-API browser-download and storage paths.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::config::{AssetDownload, PrimaryLimitStatus};
use crate::error::{
    ApiError, DOCS_APPS, DOCS_ASSETS, DOCS_GET_REF, DOCS_GET_TAG, DOCS_PRIMARY_LIMIT,
    DOCS_RELEASES, DOCS_REST, DOCS_RUNS, DOCS_SECONDARY_LIMIT,
};
use crate::json;
use crate::query::{Query, paginate, parse_created};
use crate::routes::{Route, Target, parse};
use crate::runs;
use crate::state::{Caller, DispatchHold, Fault, ReleasePatch, State};

/// API versions GitHub accepts in `X-GitHub-Api-Version`.
const API_VERSIONS: [&str; 2] = ["2022-11-28", "2026-03-10"];

pub(crate) struct Shared {
    pub base_url: String,
    state: Mutex<State>,
    /// Timers of runs in progress, aborted when the simulator stops.
    pub tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Where dispatch requests wait, if they are held.
    pub dispatch_hold: tokio::sync::watch::Sender<Option<DispatchHold>>,
}

impl Shared {
    pub fn new(base_url: String, state: State) -> Self {
        Self {
            base_url,
            state: Mutex::new(state),
            tasks: Mutex::new(Vec::new()),
            dispatch_hold: tokio::sync::watch::channel(None).0,
        }
    }

    /// Waits while dispatches are held at `point` (returns at once when they are not).
    async fn hold_dispatch(&self, point: DispatchHold) {
        let mut hold = self.dispatch_hold.subscribe();
        if *hold.borrow_and_update() != Some(point) {
            return;
        }
        self.lock().stats.dispatches_held += 1;
        tracing::debug!(?point, "github-sim holds a dispatch");
        let _ = hold.wait_for(|current| *current != Some(point)).await;
    }

    /// The state; a panic elsewhere while holding the lock must not wedge every later request.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What an endpoint answers before the pipeline adds its headers.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub body: ReplyBody,
    pub headers: Vec<(header::HeaderName, String)>,
    /// `Last-Modified` of a single resource, for `If-Modified-Since`.
    pub last_modified: Option<OffsetDateTime>,
}

#[derive(Debug)]
pub(crate) enum ReplyBody {
    Json(Value),
    Empty,
    File { bytes: Bytes, name: String },
}

impl Reply {
    pub fn json(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body: ReplyBody::Json(body),
            headers: Vec::new(),
            last_modified: None,
        }
    }

    pub fn empty(status: StatusCode) -> Self {
        Self {
            status,
            body: ReplyBody::Empty,
            headers: Vec::new(),
            last_modified: None,
        }
    }

    fn header(mut self, name: header::HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    fn modified(mut self, at: OffsetDateTime) -> Self {
        self.last_modified = Some(at);
        self
    }
}

pub(crate) type ApiResult = Result<Reply, ApiError>;

pub(crate) async fn handle(
    AxumState(shared): AxumState<Arc<Shared>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let target = parse(&parts.method, parts.uri.path());
    let fault = {
        let mut state = shared.lock();
        *state.stats.requests.entry(target.route).or_insert(0) += 1;
        state.take_fault(target.route)
    };
    tracing::debug!(method = %parts.method, path = %parts.uri.path(), route = ?target.route, ?fault, "github-sim request");
    let mut accept_then_fail = None;
    match fault {
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::AcceptThenServerError(code)) => accept_then_fail = Some(code),
        Some(Fault::ServerError(code)) => {
            let reply = server_error(code);
            return finish(&shared, &target, &parts.headers, Err(reply), false);
        }
        Some(Fault::SecondaryRateLimit {
            status,
            retry_after,
        }) => {
            shared.lock().stats.rate_limited += 1;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            let mut response = finish(
                &shared,
                &target,
                &parts.headers,
                Err(ApiError::new(
                    status,
                    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. \
                     If you reach out to GitHub Support for help, please include the request ID 0000:SIMULATED.",
                    DOCS_SECONDARY_LIMIT,
                )),
                false,
            );
            if let Some(after) = retry_after
                && let Ok(value) = HeaderValue::from_str(&after.as_secs().to_string())
            {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        None => {}
    }

    if !target.route.is_api() {
        let response = downloads(&shared, &target, &parts.method);
        return match accept_then_fail {
            Some(code) => finish(
                &shared,
                &target,
                &parts.headers,
                Err(server_error(code)),
                false,
            ),
            None => response,
        };
    }

    if let Some(version) = parts.headers.get("x-github-api-version") {
        let version = version.to_str().unwrap_or("");
        if !API_VERSIONS.contains(&version) {
            let err = ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("API version '{version}' is not supported."),
                DOCS_REST,
            );
            return finish(&shared, &target, &parts.headers, Err(err), false);
        }
    }

    if target.route == Route::CreateInstallationToken {
        let result = match accept_then_fail {
            Some(code) => Err(server_error(code)),
            None => installation_token(&shared, &target, &parts.headers),
        };
        return finish(&shared, &target, &parts.headers, result, false);
    }

    let caller = match authenticate(&shared, &parts.headers, target.route) {
        Ok(caller) => caller,
        Err(err) => return finish(&shared, &target, &parts.headers, Err(err), false),
    };

    if target.route != Route::RateLimit {
        let mut state = shared.lock();
        state.roll_rate_window();
        if state.remaining() == 0 {
            state.stats.rate_limited += 1;
            let status = match state.config.primary_limit_status {
                PrimaryLimitStatus::Forbidden403 => StatusCode::FORBIDDEN,
                PrimaryLimitStatus::TooManyRequests429 => StatusCode::TOO_MANY_REQUESTS,
            };
            let login = state.config.actor_login.clone();
            drop(state);
            let err = ApiError::new(
                status,
                format!(
                    "API rate limit exceeded for user ID {}.",
                    json::user_id(&login)
                ),
                DOCS_PRIMARY_LIMIT,
            );
            return finish(&shared, &target, &parts.headers, Err(err), false);
        }
    }

    let max_body = shared.lock().config.max_upload_bytes;
    let body = match to_bytes(body, max_body).await {
        Ok(body) => body,
        Err(_) => {
            let err = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large",
                DOCS_REST,
            );
            return finish(&shared, &target, &parts.headers, Err(err), true);
        }
    };
    let query = Query::parse(parts.uri.query());
    let dispatch = target.route == Route::DispatchWorkflow;
    if dispatch {
        shared.hold_dispatch(DispatchHold::BeforeRun).await;
    }
    let result = endpoint(&shared, &target, &parts.headers, &query, &caller, body);
    if dispatch && result.is_ok() {
        shared.hold_dispatch(DispatchHold::AfterRun).await;
    }
    let result = match accept_then_fail {
        Some(code) => Err(server_error(code)),
        None => result,
    };
    let conditional_allowed = matches!(parts.method, Method::GET | Method::HEAD);
    finish_api(
        &shared,
        &target,
        &parts.headers,
        result,
        &caller,
        conditional_allowed,
    )
}

fn server_error(code: u16) -> ApiError {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match code {
        502 => "Server Error: Bad Gateway",
        503 => "Service Unavailable",
        504 => "We couldn't respond to your request in time.",
        _ => "Server Error",
    };
    ApiError::new(status, message, DOCS_REST)
}

/// Reads `Authorization: Bearer|token <t>`. Writes always need a valid token; reads only when the
/// simulator is configured to require one. A token that is presented but not accepted is refused even
/// where none is needed, as GitHub does.
fn authenticate(shared: &Shared, headers: &HeaderMap, route: Route) -> Result<Caller, ApiError> {
    let state = shared.lock();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| {
            scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token")
        })
        .map(|(_, token)| token.trim().to_owned());
    let caller = match token {
        Some(token) => {
            let accepted = state
                .config
                .accepted_tokens
                .as_ref()
                .is_none_or(|tokens| tokens.contains(&token))
                || state.minted_tokens.contains(&token);
            if !accepted {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "Bad credentials",
                    DOCS_REST,
                ));
            }
            Caller::Token(token)
        }
        None => Caller::Anonymous,
    };
    let write = matches!(
        route,
        Route::CreateRelease
            | Route::UpdateRelease
            | Route::UploadAsset
            | Route::DispatchWorkflow
            | Route::CancelRun
    );
    if !caller.is_authenticated() && (write || state.config.require_auth) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Requires authentication",
            DOCS_REST,
        ));
    }
    Ok(caller)
}

/// `POST /app/installations/{id}/access_tokens`: checks the App's JWT (RS256 signature by the App's key,
/// `iss` = the App id, not expired) and mints an installation token that the API accepts from then on.
/// App-level: it neither needs nor consumes the repository's rate limit.
fn installation_token(shared: &Shared, target: &Target, headers: &HeaderMap) -> ApiResult {
    let unauthorized =
        |message: String| ApiError::new(StatusCode::UNAUTHORIZED, message, DOCS_APPS);
    let jwt = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned())
        .ok_or_else(|| unauthorized("A JSON web token could not be decoded".to_owned()))?;
    let mut state = shared.lock();
    let app = state
        .config
        .apps
        .iter()
        .find(|app| app.installation_id == target.id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(DOCS_APPS))?;
    let key =
        jsonwebtoken::DecodingKey::from_rsa_pem(app.public_key_pem.as_bytes()).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "simulator misconfigured: App {} public key: {e}",
                    app.app_id
                ),
                DOCS_APPS,
            )
        })?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(&jwt, &key, &validation)
        .map_err(|e| unauthorized(format!("A JSON web token could not be decoded ({e})")))?
        .claims;
    // GitHub takes the App id as a number or as a string.
    let issuer_matches = match claims.get("iss") {
        Some(Value::Number(iss)) => iss.as_u64() == Some(app.app_id),
        Some(Value::String(iss)) => *iss == app.app_id.to_string(),
        _ => false,
    };
    if !issuer_matches {
        return Err(unauthorized(format!(
            "'Issuer' claim ('iss') must be the App id {}",
            app.app_id
        )));
    }
    state.stats.installation_tokens_minted += 1;
    let token = format!(
        "ghs_sim{}n{}",
        app.installation_id, state.stats.installation_tokens_minted
    );
    state.minted_tokens.push(token.clone());
    let expires_at = OffsetDateTime::now_utc() + time::Duration::hours(1);
    Ok(Reply::json(
        StatusCode::CREATED,
        json!({
            "token": token,
            "expires_at": json::iso(expires_at),
            "permissions": { "actions": "write", "contents": "write", "metadata": "read" },
            "repository_selection": "all",
        }),
    ))
}

fn endpoint(
    shared: &Arc<Shared>,
    target: &Target,
    headers: &HeaderMap,
    query: &Query,
    caller: &Caller,
    body: Bytes,
) -> ApiResult {
    if target.route == Route::RateLimit {
        return Ok(rate_limit_body(&shared.lock()));
    }
    if target.route == Route::Unknown {
        return Err(ApiError::not_found(DOCS_REST));
    }
    {
        let state = shared.lock();
        let same_repo = target.owner.eq_ignore_ascii_case(&state.config.owner)
            && target.repo.eq_ignore_ascii_case(&state.config.repo);
        if !same_repo {
            return Err(ApiError::not_found(DOCS_REST));
        }
    }
    let base = shared.base_url.as_str();
    match target.route {
        Route::ListReleases => {
            let state = shared.lock();
            let mut visible: Vec<_> = state
                .releases
                .iter()
                .filter(|r| !r.draft || caller.is_authenticated())
                .collect();
            visible.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
            let url = format!("{}/releases", json::repo_api(base, &state.config));
            let page = paginate(query, visible.len(), &url);
            let items: Vec<Value> = visible[page.start..page.end]
                .iter()
                .map(|r| json::release(base, &state.config, r))
                .collect();
            Ok(with_link(
                Reply::json(StatusCode::OK, Value::Array(items)),
                page.link,
            ))
        }
        Route::CreateRelease => {
            let patch = release_patch(&body)?;
            let mut state = shared.lock();
            let login = state.config.actor_login.clone();
            let id = state.create_release(patch, &login)?;
            let release = state
                .release(id)
                .ok_or_else(|| ApiError::not_found(DOCS_RELEASES))?;
            let body = json::release(base, &state.config, release);
            let location = body["url"].as_str().unwrap_or_default().to_owned();
            Ok(Reply::json(StatusCode::CREATED, body).header(header::LOCATION, location))
        }
        Route::ReleaseByTag => {
            let state = shared.lock();
            let release = state
                .published_by_tag(&target.name)
                .ok_or_else(|| ApiError::not_found(DOCS_RELEASES))?;
            Ok(
                Reply::json(StatusCode::OK, json::release(base, &state.config, release))
                    .modified(release.updated_at),
            )
        }
        Route::GetRelease => {
            let state = shared.lock();
            let release = state
                .release(target.id)
                .filter(|r| !r.draft || caller.is_authenticated())
                .ok_or_else(|| ApiError::not_found(DOCS_RELEASES))?;
            Ok(
                Reply::json(StatusCode::OK, json::release(base, &state.config, release))
                    .modified(release.updated_at),
            )
        }
        Route::UpdateRelease => {
            let patch = release_patch(&body)?;
            let mut state = shared.lock();
            state.update_release(target.id, patch)?;
            let release = state
                .release(target.id)
                .ok_or_else(|| ApiError::not_found(DOCS_RELEASES))?;
            Ok(Reply::json(
                StatusCode::OK,
                json::release(base, &state.config, release),
            ))
        }
        Route::ListAssets => {
            let state = shared.lock();
            let release = state
                .release(target.id)
                .filter(|r| !r.draft || caller.is_authenticated())
                .ok_or_else(|| ApiError::not_found(DOCS_ASSETS))?;
            let url = format!(
                "{}/releases/{}/assets",
                json::repo_api(base, &state.config),
                release.id
            );
            let page = paginate(query, release.assets.len(), &url);
            let items: Vec<Value> = release.assets[page.start..page.end]
                .iter()
                .map(|a| json::asset(base, &state.config, release, a))
                .collect();
            Ok(with_link(
                Reply::json(StatusCode::OK, Value::Array(items)),
                page.link,
            ))
        }
        Route::UploadAsset => {
            let name = query.get("name").unwrap_or("").to_owned();
            let label = query.get("label").map(str::to_owned);
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let mut state = shared.lock();
            let login = state.config.actor_login.clone();
            let asset_id =
                state.upload_asset(target.id, &name, label, content_type, body, &login)?;
            let (release, asset) = state
                .find_asset(asset_id)
                .ok_or_else(|| ApiError::not_found(DOCS_ASSETS))?;
            Ok(Reply::json(
                StatusCode::CREATED,
                json::asset(base, &state.config, release, asset),
            ))
        }
        Route::GetAsset => {
            let wants_bytes = headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/octet-stream"));
            let mut state = shared.lock();
            let (release, asset) = state
                .find_asset(target.id)
                .filter(|(r, _)| !r.draft || caller.is_authenticated())
                .ok_or_else(|| ApiError::not_found(DOCS_ASSETS))?;
            if !wants_bytes {
                let body = json::asset(base, &state.config, release, asset);
                return Ok(Reply::json(StatusCode::OK, body).modified(asset.updated_at));
            }
            let storage = json::storage_url(base, asset);
            let (bytes, name, id) = (asset.bytes.clone(), asset.name.clone(), asset.id);
            match state.config.asset_download {
                AssetDownload::Redirect => {
                    Ok(Reply::empty(StatusCode::FOUND).header(header::LOCATION, storage))
                }
                AssetDownload::Stream => {
                    state.count_download(id);
                    Ok(Reply {
                        status: StatusCode::OK,
                        body: ReplyBody::File { bytes, name },
                        headers: Vec::new(),
                        last_modified: None,
                    })
                }
            }
        }
        Route::MatchingRefs => {
            // Every ref whose name starts with `refs/{ref}` (a prefix, not a path: `tags/v1`
            // matches v1.0.0 and v10.0.0); none is `200 []`, never 404. Paginated.
            let state = shared.lock();
            let prefix = format!("refs/{}", target.name);
            let matching: Vec<_> = state
                .git_refs()
                .into_iter()
                .filter(|r| r.name.starts_with(&prefix))
                .collect();
            let url = format!(
                "{}/git/matching-refs/{}",
                json::repo_api(base, &state.config),
                json::encode_ref_path(&target.name)
            );
            let page = paginate(query, matching.len(), &url);
            let items: Vec<Value> = matching[page.start..page.end]
                .iter()
                .map(|r| json::git_ref(base, &state.config, r))
                .collect();
            Ok(with_link(
                Reply::json(StatusCode::OK, Value::Array(items)),
                page.link,
            ))
        }
        Route::GetRef => {
            let state = shared.lock();
            let name = format!("refs/{}", target.name);
            let found = state
                .git_refs()
                .into_iter()
                .find(|r| r.name == name)
                .ok_or_else(|| ApiError::not_found(DOCS_GET_REF))?;
            Ok(Reply::json(
                StatusCode::OK,
                json::git_ref(base, &state.config, &found),
            ))
        }
        Route::GetTag => {
            let state = shared.lock();
            let tag = state
                .tag_objects
                .get(&target.name)
                .ok_or_else(|| ApiError::not_found(DOCS_GET_TAG))?;
            Ok(Reply::json(
                StatusCode::OK,
                json::git_tag(base, &state.config, tag),
            ))
        }
        Route::DispatchWorkflow => runs::dispatch(shared, target, caller, &body),
        Route::CancelRun => runs::cancel(shared, target),
        Route::ListRuns | Route::ListWorkflowRuns => list_runs(shared, target, query),
        Route::GetRun => {
            let state = shared.lock();
            let run = state
                .runs
                .iter()
                .find(|r| r.id == target.id)
                .ok_or_else(|| ApiError::not_found(DOCS_RUNS))?;
            let workflow = state
                .config
                .workflows
                .iter()
                .find(|w| w.id == run.workflow_id)
                .ok_or_else(|| ApiError::not_found(DOCS_RUNS))?;
            let body = json::run(base, &state.config, state.repo_id, workflow, run);
            Ok(Reply::json(StatusCode::OK, body).modified(run.updated_at))
        }
        Route::RateLimit
        | Route::CreateInstallationToken
        | Route::Unknown
        | Route::BrowserDownload
        | Route::AssetStorage => Err(ApiError::not_found(DOCS_REST)),
    }
}

fn with_link(reply: Reply, link: Option<String>) -> Reply {
    match link {
        Some(link) => reply.header(header::LINK, link),
        None => reply,
    }
}

/// Parses a create/update release body; wrong types are refused like GitHub's schema validation does.
fn release_patch(body: &[u8]) -> Result<ReleasePatch, ApiError> {
    let value: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "Problems parsing JSON",
                DOCS_RELEASES,
            )
        })?
    };
    let object = value.as_object().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "Problems parsing JSON",
            DOCS_RELEASES,
        )
    })?;
    let text = |key: &str| -> Result<Option<String>, ApiError> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(ApiError::unprocessable(
                format!("Invalid request.\n\nFor 'properties/{key}', {other} is not a string."),
                DOCS_RELEASES,
            )),
        }
    };
    let flag = |key: &str| -> Result<Option<bool>, ApiError> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(ApiError::unprocessable(
                format!("Invalid request.\n\nFor 'properties/{key}', {other} is not a boolean."),
                DOCS_RELEASES,
            )),
        }
    };
    Ok(ReleasePatch {
        tag_name: text("tag_name")?,
        target_commitish: text("target_commitish")?,
        name: text("name")?,
        body: text("body")?,
        draft: flag("draft")?,
        prerelease: flag("prerelease")?,
    })
}

const RUN_STATUSES: [&str; 9] = [
    "queued",
    "in_progress",
    "completed",
    "requested",
    "waiting",
    "pending",
    "action_required",
    "stale",
    "expected",
];

fn list_runs(shared: &Shared, target: &Target, query: &Query) -> ApiResult {
    let base = shared.base_url.as_str();
    let state = shared.lock();
    let workflow_filter = if target.route == Route::ListWorkflowRuns {
        let workflow = state
            .config
            .workflows
            .iter()
            .find(|w| w.file == target.name || w.id.to_string() == target.name)
            .ok_or_else(|| ApiError::not_found(DOCS_RUNS))?;
        Some(workflow.id)
    } else {
        None
    };
    let created = match query.get("created") {
        Some(text) => Some(parse_created(text).ok_or_else(|| {
            ApiError::validation_custom(
                "WorkflowRun",
                "created",
                &format!("Invalid created filter: {text}"),
                DOCS_RUNS,
            )
        })?),
        None => None,
    };
    let filtered = [
        "actor",
        "branch",
        "check_suite_id",
        "created",
        "event",
        "head_sha",
        "status",
    ]
    .iter()
    .any(|p| query.get(p).is_some());
    let now = crate::state::now();
    let delay =
        time::Duration::try_from(state.config.run_list_delay).unwrap_or(time::Duration::ZERO);
    let mut runs: Vec<_> = state
        .runs
        .iter()
        .filter(|r| r.created_at + delay <= now)
        .filter(|r| workflow_filter.is_none_or(|id| r.workflow_id == id))
        .filter(|_| query.get("event").is_none_or(|e| e == "workflow_dispatch"))
        .filter(|r| query.get("branch").is_none_or(|b| b == r.head_branch))
        .filter(|r| query.get("actor").is_none_or(|a| a == r.actor))
        .filter(|r| query.get("head_sha").is_none_or(|s| s == r.head_sha))
        .filter(|r| {
            query
                .get("check_suite_id")
                .is_none_or(|id| id == json::check_suite_id(r.id).to_string())
        })
        .filter(|r| {
            query.get("status").is_none_or(|s| {
                if RUN_STATUSES.contains(&s) {
                    r.status.as_str() == s
                } else {
                    r.conclusion.is_some_and(|c| c.as_str() == s)
                }
            })
        })
        .filter(|r| created.is_none_or(|c| c.matches(r.created_at)))
        .collect();
    runs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    if filtered {
        // "This API will return up to 1,000 results for each search" when filters are used.
        runs.truncate(1000);
    }
    let url = match workflow_filter {
        Some(_) => format!(
            "{}/actions/workflows/{}/runs",
            json::repo_api(base, &state.config),
            json::encode_segment(&target.name)
        ),
        None => format!("{}/actions/runs", json::repo_api(base, &state.config)),
    };
    let page = paginate(query, runs.len(), &url);
    let items: Vec<Value> = runs[page.start..page.end]
        .iter()
        .filter_map(|run| {
            let workflow = state
                .config
                .workflows
                .iter()
                .find(|w| w.id == run.workflow_id)?;
            Some(json::run(base, &state.config, state.repo_id, workflow, run))
        })
        .collect();
    let body = json!({ "total_count": runs.len(), "workflow_runs": items });
    Ok(with_link(Reply::json(StatusCode::OK, body), page.link))
}

fn rate_limit_body(state: &State) -> Reply {
    let core = json!({
        "limit": state.rate.limit,
        "used": state.rate.used,
        "remaining": state.remaining(),
        "reset": state.reset_epoch(),
        "resource": "core",
    });
    let fixed = |limit: u64, resource: &str| json!({ "limit": limit, "used": 0, "remaining": limit, "reset": state.reset_epoch(), "resource": resource });
    Reply::json(
        StatusCode::OK,
        json!({
            "resources": {
                "core": core,
                "search": fixed(30, "search"),
                "graphql": fixed(5000, "graphql"),
                "integration_manifest": fixed(5000, "integration_manifest"),
                "code_scanning_upload": fixed(1000, "code_scanning_upload"),
                "actions_runner_registration": fixed(10000, "actions_runner_registration"),
            },
            "rate": core,
        }),
    )
}

/// The weak ETag GitHub sends for JSON: it depends on the body and on the token (ETags are per token).
fn etag_for(body: &[u8], caller: &Caller) -> String {
    let mut hasher = Sha256::new();
    if let Caller::Token(token) = caller {
        hasher.update(token.as_bytes());
    }
    hasher.update([0]);
    hasher.update(body);
    format!("W/\"{}\"", hex::encode(hasher.finalize()))
}

/// Weak comparison of `If-None-Match` (a list, or `*`) with the current ETag.
fn none_match_hits(header_value: &str, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let current = strip(etag);
    header_value
        .split(',')
        .any(|candidate| candidate.trim() == "*" || strip(candidate) == current)
}

/// Conditional handling and quota accounting for an API answer, then the common headers.
fn finish_api(
    shared: &Shared,
    target: &Target,
    headers: &HeaderMap,
    result: ApiResult,
    caller: &Caller,
    conditional_allowed: bool,
) -> Response {
    let mut etag = None;
    let mut not_modified = false;
    if let Ok(reply) = &result
        && reply.status == StatusCode::OK
        && conditional_allowed
        && let ReplyBody::Json(body) = &reply.body
    {
        let tag = etag_for(body.to_string().as_bytes(), caller);
        if let Some(inm) = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
        {
            not_modified = none_match_hits(inm, &tag);
        } else if let (Some(ims), Some(modified)) = (
            headers
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .and_then(json::parse_http_date),
            reply.last_modified,
        ) {
            not_modified = modified <= ims;
        }
        etag = Some(tag);
    }
    {
        let mut state = shared.lock();
        if not_modified {
            state.stats.not_modified += 1;
        }
        // "Making a conditional request does not count against your primary rate limit if a 304 response
        // is returned and the request was made while correctly authorized with an Authorization header."
        let free = target.route == Route::RateLimit || (not_modified && caller.is_authenticated());
        if !free {
            state.rate.used += 1;
            state.stats.quota_consumed += 1;
        }
    }
    let mut response = if not_modified {
        let reply = result.ok();
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Some(modified) = reply.and_then(|r| r.last_modified)
            && let Ok(value) = HeaderValue::from_str(&json::http_date(modified))
        {
            response.headers_mut().insert(header::LAST_MODIFIED, value);
        }
        response
    } else {
        render(result)
    };
    if let Some(tag) = etag
        && let Ok(value) = HeaderValue::from_str(&tag)
    {
        response.headers_mut().insert(header::ETAG, value);
    }
    add_api_headers(shared, headers, &mut response);
    response
}

/// An API answer produced before the endpoint ran (fault, auth, limits): no quota is consumed.
fn finish(
    shared: &Shared,
    target: &Target,
    headers: &HeaderMap,
    result: ApiResult,
    consume: bool,
) -> Response {
    if consume {
        let mut state = shared.lock();
        state.rate.used += 1;
        state.stats.quota_consumed += 1;
    }
    let mut response = render(result);
    if target.route.is_api() {
        add_api_headers(shared, headers, &mut response);
    }
    response
}

fn render(result: ApiResult) -> Response {
    match result {
        Ok(reply) => {
            let mut response = match reply.body {
                ReplyBody::Json(value) => {
                    let mut response = (reply.status, value.to_string()).into_response();
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json; charset=utf-8"),
                    );
                    if let Some(modified) = reply.last_modified
                        && let Ok(value) = HeaderValue::from_str(&json::http_date(modified))
                    {
                        response.headers_mut().insert(header::LAST_MODIFIED, value);
                    }
                    response
                }
                ReplyBody::Empty => {
                    let mut response = Response::new(Body::empty());
                    *response.status_mut() = reply.status;
                    response
                }
                ReplyBody::File { bytes, name } => file_response(bytes, &name),
            };
            for (name, value) in reply.headers {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        Err(err) => {
            let mut response = (err.status, err.body().to_string()).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            response
        }
    }
}

fn file_response(bytes: Bytes, name: &str) -> Response {
    let length = bytes.len();
    let mut response = Response::new(Body::from(bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!(
        "attachment; filename={}",
        json::encode_segment(name)
    )) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

fn add_api_headers(shared: &Shared, request_headers: &HeaderMap, response: &mut Response) {
    let (limit, remaining, used, reset) = {
        let state = shared.lock();
        (
            state.rate.limit,
            state.remaining(),
            state.rate.used.min(state.rate.limit),
            state.reset_epoch(),
        )
    };
    let version = request_headers
        .get("x-github-api-version")
        .and_then(|v| v.to_str().ok())
        .filter(|v| API_VERSIONS.contains(v))
        .unwrap_or(API_VERSIONS[0])
        .to_owned();
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set("x-ratelimit-limit", limit.to_string());
    set("x-ratelimit-remaining", remaining.to_string());
    set("x-ratelimit-used", used.to_string());
    set("x-ratelimit-reset", reset.to_string());
    set("x-ratelimit-resource", "core".to_owned());
    set("x-github-api-version-selected", version);
    set("x-github-media-type", "github.v3; format=json".to_owned());
    set("x-github-request-id", format!("SIM:{:08X}", used));
    set(
        "vary",
        "Accept, Authorization, Cookie, X-GitHub-OTP".to_owned(),
    );
}

/// github.com's `releases/download/{tag}/{name}` (no API quota, no auth; 302 to storage; 404 when the
/// release is missing or still a draft) and the storage path it redirects to.
fn downloads(shared: &Shared, target: &Target, method: &Method) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "Not Found").into_response();
    let base = shared.base_url.as_str();
    let mut state = shared.lock();
    match target.route {
        Route::BrowserDownload => {
            let same_repo = target.owner.eq_ignore_ascii_case(&state.config.owner)
                && target.repo.eq_ignore_ascii_case(&state.config.repo);
            let Some(asset) = state
                .published_by_tag(&target.name)
                .filter(|_| same_repo)
                .and_then(|r| r.assets.iter().find(|a| a.name == target.file))
            else {
                return not_found();
            };
            let mut response = StatusCode::FOUND.into_response();
            if let Ok(value) = HeaderValue::from_str(&json::storage_url(base, asset)) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        Route::AssetStorage => {
            let Some((bytes, name)) = state
                .find_asset(target.id)
                .filter(|(_, a)| a.name == target.file)
                .map(|(_, a)| (a.bytes.clone(), a.name.clone()))
            else {
                return not_found();
            };
            if method == Method::GET {
                state.count_download(target.id);
            }
            file_response(bytes, &name)
        }
        _ => not_found(),
    }
}
