//! The HTTP API. `POST /build` refuses anything malformed before it touches the artifact store or a
//! backend: size, JSON syntax, exact schema (known fields, string types, no duplicate keys), then
//! kernel-id's validation of every value. Then: artifact store first, else the in-flight build for the
//! same cache key, else an atomic reservation that starts exactly one build.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use build_api::{
    ApiErrorBody, BackendHealth, BuildAccepted, BuildDone, BuildRequest, BuildStatus, Check,
    Health, HealthState,
};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use kernel_id::{DriverName, IdentityInput, KernelIdentity};
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::Value;

use crate::access::{self, Caller, Scope};
use crate::backend::{Backend, BackendError};
use crate::store::{
    BuildRecord, CapReached, InFlightCaps, NewBuild, RequestOutcome, Reservation, Store, now_ms,
};
use crate::telemetry;
use crate::tracker::{Notifier, Trackers};

/// Largest accepted `POST /build` body.
pub const MAX_BODY: usize = 16 * 1024;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// One lookup-and-reserve, awaited by every identical request that arrives while it runs.
pub type SharedAnswer = Shared<BoxFuture<'static, Result<Answer, ApiError>>>;

/// Answers being computed (or lingering), by dedup key and then by caller. The trackers forget a
/// key when its build ends, so a lingering "in flight" answer never outlives the build in this
/// replica.
#[derive(Default)]
pub struct Coalesced {
    answers: Mutex<HashMap<String, HashMap<String, SharedAnswer>>>,
}

impl fmt::Debug for Coalesced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesced").finish_non_exhaustive()
    }
}

impl Coalesced {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, SharedAnswer>>> {
        self.answers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drops every caller's shared answer for `key`.
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Drops one caller's shared answer for `key`.
    fn forget_for(&self, key: &str, requester: &str) {
        let mut answers = self.lock();
        if let Some(callers) = answers.get_mut(key) {
            callers.remove(requester);
            if callers.is_empty() {
                answers.remove(key);
            }
        }
    }
}

/// Shared state of the handlers.
pub struct AppState {
    /// Builds.
    pub store: Store,
    /// Where artifacts are and builds run.
    pub backend: Arc<dyn Backend>,
    /// The driver this service builds.
    pub driver: DriverName,
    /// Trackers of this replica.
    pub trackers: Trackers,
    /// The shared waiters of long polls, woken by state-change announcements.
    pub notifier: Arc<Notifier>,
    /// The latest probe of the backend's health.
    pub health: crate::health::CachedHealth,
    /// How long a build may take before it is marked timed out.
    pub build_timeout: Duration,
    /// Upper bound of `?wait=`.
    pub max_wait: Duration,
    /// Turns true when the service begins to shut down: long polls answer at once then.
    pub shutting_down: tokio::sync::watch::Receiver<bool>,
    /// How long an in-flight answer keeps being shared after it was computed.
    pub in_flight_linger: Duration,
    /// Concurrent identical requests share one lookup-and-reserve.
    pub coalesced: Arc<Coalesced>,
    /// Caps on builds in flight (a principal's own cap replaces `per_caller`).
    pub caps: InFlightCaps,
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("backend", &self.backend.name())
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

/// What `POST /build` answers after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The artifact is published.
    Done {
        /// Its download URL.
        download_url: String,
    },
    /// This request started a build.
    Dispatched {
        /// The new build.
        build_id: String,
    },
    /// A build for the same identity was already in flight.
    InFlight {
        /// That build.
        build_id: String,
    },
}

/// A refusal or failure, rendered as `{"error", "field", "rule"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    field: Option<String>,
    rule: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        error: impl Into<String>,
        field: Option<&str>,
        rule: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error: error.into(),
            field: field.map(str::to_owned),
            rule: rule.into(),
            retry_after: None,
        }
    }

    fn invalid(field: &str, rule: impl Into<String>) -> Self {
        let rule = rule.into();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{field}: {rule}"),
            Some(field),
            rule,
        )
    }

    /// A new build would exceed a cap on builds in flight: nothing was dispatched. Builds take
    /// minutes, so asking again sooner than half a minute only spends the caller's rate.
    fn over_cap(reached: CapReached) -> Self {
        let rule = match reached {
            CapReached::Total(cap) => format!("the service runs at most {cap} builds at once"),
            CapReached::Caller(cap) => format!("a caller may have at most {cap} builds in flight"),
        };
        Self {
            retry_after: Some(30),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many builds in flight: {rule}"),
                None,
                rule,
            )
        }
    }

    fn internal(error: impl fmt::Display) -> Self {
        Self {
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                error.to_string(),
                None,
                "the service could not answer; retry",
            )
        }
    }

    fn backend(error: &BackendError) -> Self {
        match error {
            BackendError::Transient(_) => Self {
                retry_after: Some(10),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    error.to_string(),
                    None,
                    "artifact store unavailable; retry",
                )
            },
            BackendError::RateLimited { retry_after } => Self {
                retry_after: Some(retry_after.as_secs().max(1)),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    error.to_string(),
                    None,
                    "artifact store rate limited; retry",
                )
            },
            BackendError::Permanent(_) => Self::new(
                StatusCode::BAD_GATEWAY,
                error.to_string(),
                None,
                "artifact store refused the lookup",
            ),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// The JSON error body used by every refusal.
pub fn error_body(error: &str, field: Option<&str>, rule: &str) -> Json<ApiErrorBody> {
    Json(ApiErrorBody {
        error: error.to_owned(),
        field: field.map(str::to_owned),
        rule: rule.to_owned(),
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            error_body(&self.error, self.field.as_deref(), &self.rule),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A route: method and path template as in the OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    /// Upper-case HTTP method.
    pub method: &'static str,
    /// axum/OpenAPI path template.
    pub path: &'static str,
}

/// The API routes (the local backend adds its own, see [`crate::local::ROUTES`]).
pub const ROUTES: &[RouteInfo] = &[
    RouteInfo {
        method: "POST",
        path: "/build",
    },
    RouteInfo {
        method: "GET",
        path: "/status/{build_id}",
    },
    RouteInfo {
        method: "GET",
        path: "/builds",
    },
    RouteInfo {
        method: "GET",
        path: "/healthz",
    },
    RouteInfo {
        method: "GET",
        path: "/metrics",
    },
    RouteInfo {
        method: "GET",
        path: "/openapi.json",
    },
];

/// The routes that need an identified caller, each behind the scope it requires; the caller
/// ([`crate::access::authenticate`]) is identified by a layer the service puts around all of them.
pub fn limited_routes(state: Arc<AppState>) -> Router {
    fn scoped(router: Router, scope: Scope) -> Router {
        router.route_layer(axum::middleware::from_fn(
            move |request: Request, next: axum::middleware::Next| {
                access::require_scope(scope, request, next)
            },
        ))
    }
    scoped(
        Router::new()
            .route("/build", post(build))
            .with_state(Arc::clone(&state)),
        Scope::RequestBuild,
    )
    .merge(scoped(
        Router::new()
            .route("/status/{build_id}", get(status))
            .with_state(Arc::clone(&state)),
        Scope::ReadStatus,
    ))
    .merge(scoped(
        Router::new()
            .route("/builds", get(list_builds))
            .with_state(state),
        Scope::Admin,
    ))
}

/// The routes every caller may use without a token or a rate limit.
pub fn open_routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .with_state(state)
}

/// The dedup key of an identity: the driver plus kernel-id's cache key (all five identity fields).
pub fn active_key(driver: &DriverName, identity: &KernelIdentity) -> String {
    dedup_key(driver.as_str(), &identity.cache_key())
}

/// [`active_key`] from the stored driver name and cache key.
pub fn dedup_key(driver: &str, cache_key: &str) -> String {
    format!("{driver}/{cache_key}")
}

async fn build(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Response {
    let identity = match validate(request).await {
        Ok(identity) => identity,
        Err(error) => {
            metrics::counter!(telemetry::REQUESTS, "outcome" => "invalid").increment(1);
            tracing::info!(status = error.status.as_u16(), field = ?error.field, rule = %error.rule, "refused");
            return error.into_response();
        }
    };
    if let Some(principal) = &caller.principal
        && let Err((field, rule)) = principal.permits(&identity)
    {
        metrics::counter!(telemetry::REQUESTS, "outcome" => "forbidden").increment(1);
        audit(
            &state,
            &caller,
            &identity,
            None,
            RequestOutcome::RefusedLimit,
        )
        .await;
        return ApiError::new(StatusCode::FORBIDDEN, rule.clone(), Some(field), rule)
            .into_response();
    }
    let (answer, leader) = resolve(&state, &caller, identity.clone()).await;
    // Identical requests share one answer; only the request whose lookup reserved the build
    // created it, the others joined it.
    match &answer {
        Ok(Answer::Dispatched { build_id }) if leader => {
            audit(
                &state,
                &caller,
                &identity,
                Some(build_id),
                RequestOutcome::Created,
            )
            .await;
        }
        Ok(Answer::Dispatched { build_id } | Answer::InFlight { build_id }) => {
            audit(
                &state,
                &caller,
                &identity,
                Some(build_id),
                RequestOutcome::Joined,
            )
            .await;
        }
        Err(error) if error.status == StatusCode::TOO_MANY_REQUESTS => {
            audit(&state, &caller, &identity, None, RequestOutcome::RefusedCap).await;
        }
        _ => {}
    }
    match answer {
        Ok(Answer::Done { download_url }) => {
            metrics::counter!(telemetry::REQUESTS, "outcome" => "hit").increment(1);
            metrics::counter!(telemetry::CACHE_HITS).increment(1);
            (StatusCode::OK, Json(BuildDone::new(download_url))).into_response()
        }
        Ok(Answer::Dispatched { build_id } | Answer::InFlight { build_id }) => {
            metrics::counter!(telemetry::REQUESTS, "outcome" => "building").increment(1);
            tracing::Span::current().record("build_id", build_id.as_str());
            (StatusCode::ACCEPTED, Json(BuildAccepted::new(build_id))).into_response()
        }
        Err(error) => {
            metrics::counter!(telemetry::REQUESTS, "outcome" => "error").increment(1);
            tracing::warn!(error = %error.error, "could not answer");
            error.into_response()
        }
    }
}

/// Records a request in the audit trail and in the log, with the same fields. A failed write is
/// logged, not fatal: the request was already decided.
async fn audit(
    state: &AppState,
    caller: &Caller,
    identity: &KernelIdentity,
    build_id: Option<&str>,
    outcome: RequestOutcome,
) {
    let principal = caller.name();
    let client = caller.client.to_string();
    let cache_key = identity.cache_key();
    tracing::info!(
        principal = %principal,
        client = %client,
        cache_key = %cache_key,
        build_id = build_id.unwrap_or(""),
        outcome = outcome.as_str(),
        "build request"
    );
    if let Err(error) = state
        .store
        .record_request(build_id, &cache_key, &principal, &client, outcome, now_ms())
        .await
    {
        tracing::error!(%error, principal = %principal, "could not record the request in the audit trail");
    }
}

/// Validates a `POST /build` request completely, without any IO beyond reading its body.
pub async fn validate(request: Request) -> Result<KernelIdentity, ApiError> {
    if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
        let is_json = content_type
            .to_str()
            .ok()
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON",
                Some("content-type"),
                "must be application/json",
            ));
        }
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY} bytes"),
            None,
            format!("at most {MAX_BODY} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY as u64) {
        return Err(too_large());
    }
    let body: Bytes = axum::body::to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|_| too_large())?;
    parse_identity(&body)
}

/// The exact schema check, then kernel-id's validation.
pub fn parse_identity(body: &[u8]) -> Result<KernelIdentity, ApiError> {
    let object: StrictObject = serde_json::from_slice(body).map_err(|error| {
        let status = if error.is_data() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        let rule = if error.is_data() {
            "must be a JSON object without duplicate keys"
        } else {
            "must be valid JSON"
        };
        ApiError::new(status, format!("body: {error}"), Some("body"), rule)
    })?;
    const FIELDS: [&str; 5] = BuildRequest::FIELDS;
    let mut strings: HashMap<&str, String> = HashMap::new();
    for (key, value) in object.0 {
        let Some(field) = FIELDS.iter().copied().find(|field| *field == key) else {
            let shown: String = key.chars().take(64).collect();
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("unknown field '{}'", shown.escape_debug()),
                Some(&shown),
                format!("unknown field; expected one of {}", FIELDS.join(", ")),
            ));
        };
        match value {
            Value::String(text) => {
                strings.insert(field, text);
            }
            Value::Null if field == "distro_version" => {}
            other => {
                let kind = match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    Value::Array(_) => "an array",
                    Value::Object(_) => "an object",
                    Value::String(_) => "a string",
                };
                return Err(ApiError::invalid(
                    field,
                    format!("must be a string (found {kind})"),
                ));
            }
        }
    }
    let mut take = |field: &str| strings.remove(field);
    let mut required =
        |field: &'static str| take(field).ok_or_else(|| ApiError::invalid(field, "is required"));
    let input = IdentityInput {
        kernel_version: required("kernel_version")?,
        architecture: required("architecture")?,
        distribution: required("distribution")?,
        driver_version: required("driver_version")?,
        distro_version: take("distro_version"),
    };
    KernelIdentity::from_input(&input)
        .map_err(|error| ApiError::invalid(error.field().as_str(), error.rule()))
}

/// A JSON object kept as its key/value pairs, refusing duplicate keys (which parsers disagree on,
/// so they could smuggle a second value past a proxy that read the first).
struct StrictObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = StrictObject;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictObject, A::Error> {
                let mut entries: Vec<(String, Value)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    if entries.iter().any(|(existing, _)| *existing == key) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate key '{}'",
                            key.escape_debug()
                        )));
                    }
                    if entries.len() >= 32 {
                        return Err(serde::de::Error::custom("too many keys"));
                    }
                    entries.push((key, value));
                }
                Ok(StrictObject(entries))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// Answers a valid request; concurrent identical requests of one caller in this process share one
/// answer (per caller, because the reservation is checked against that caller's cap). The flag
/// says whether this request computed the answer rather than joining another's.
async fn resolve(
    state: &Arc<AppState>,
    caller: &Caller,
    identity: KernelIdentity,
) -> (Result<Answer, ApiError>, bool) {
    let key = active_key(&state.driver, &identity);
    let requester = caller.name();
    let caps = InFlightCaps {
        total: state.caps.total,
        per_caller: caller
            .principal
            .as_ref()
            .and_then(|principal| principal.max_in_flight())
            .or(state.caps.per_caller),
    };
    let (shared, leader) = {
        let mut coalesced = state.coalesced.lock();
        let callers = coalesced.entry(key.clone()).or_default();
        if let Some(existing) = callers.get(&requester) {
            (existing.clone(), false)
        } else {
            // The work runs in its own task so it completes (and the reservation gets its tracker)
            // even when every waiting caller disconnects.
            let task_state = Arc::clone(state);
            let (task_key, task_requester) = (key.clone(), requester.clone());
            let handle = tokio::spawn(async move {
                let answer =
                    lookup_or_reserve(&task_state, &task_key, identity, &task_requester, caps)
                        .await;
                // An in-flight answer stays shared a moment longer: a fleet booting the same new
                // kernel asks in waves, and each wave is then answered from memory. Errors and hits
                // are not kept (hits are cheap; errors must be retried for real).
                let linger = match &answer {
                    Ok(Answer::Dispatched { .. } | Answer::InFlight { .. }) => {
                        task_state.in_flight_linger
                    }
                    _ => Duration::ZERO,
                };
                let forget_state = Arc::clone(&task_state);
                let forget = async move {
                    if !linger.is_zero() {
                        tokio::time::sleep(linger).await;
                    }
                    forget_state
                        .coalesced
                        .forget_for(&task_key, &task_requester);
                };
                if linger.is_zero() {
                    forget.await;
                } else {
                    tokio::spawn(forget);
                }
                answer
            });
            let shared = async move {
                handle
                    .await
                    .unwrap_or_else(|error| Err(ApiError::internal(error)))
            }
            .boxed()
            .shared();
            callers.insert(requester, shared.clone());
            (shared, true)
        }
    };
    (shared.await, leader)
}

async fn lookup_or_reserve(
    state: &AppState,
    key: &str,
    identity: KernelIdentity,
    requester: &str,
    caps: InFlightCaps,
) -> Result<Answer, ApiError> {
    match state.backend.find_artifact(&state.driver, &identity).await {
        Ok(Some(artifact)) => {
            return Ok(Answer::Done {
                download_url: artifact.download_url,
            });
        }
        Ok(None) => {}
        Err(error) => return Err(ApiError::backend(&error)),
    }
    if let Some(build_id) = state
        .store
        .active_build(key)
        .await
        .map_err(ApiError::internal)?
    {
        return Ok(Answer::InFlight { build_id });
    }
    let now = now_ms();
    let build_id = uuid::Uuid::new_v4().to_string();
    let input = identity.to_input();
    let new = NewBuild {
        build_id: build_id.clone(),
        active_key: key.to_owned(),
        cache_key: identity.cache_key(),
        driver_name: state.driver.to_string(),
        kernel_version: input.kernel_version,
        architecture: input.architecture,
        distribution: input.distribution,
        distro_version: input.distro_version.unwrap_or_default(),
        driver_version: input.driver_version,
        now,
        deadline_at: now
            .saturating_add(i64::try_from(state.build_timeout.as_millis()).unwrap_or(i64::MAX)),
        lease_owner: state.trackers.owner().to_owned(),
        lease_until: now
            .saturating_add(i64::try_from(state.trackers.lease().as_millis()).unwrap_or(i64::MAX)),
        requested_by: requester.to_owned(),
    };
    match state
        .store
        .reserve(&new, caps)
        .await
        .map_err(ApiError::internal)?
    {
        Reservation::Created(build_id) => {
            tracing::info!(build_id = %build_id, cache_key = %new.cache_key, "new build reserved");
            state.trackers.track(build_id.clone()).await;
            Ok(Answer::Dispatched { build_id })
        }
        Reservation::Existing(build_id) => Ok(Answer::InFlight { build_id }),
        Reservation::OverCap(reached) => {
            tracing::info!(requester, cache_key = %new.cache_key, ?reached, "build refused: cap on builds in flight");
            Err(ApiError::over_cap(reached))
        }
    }
}

/// `?wait=` of `GET /status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    wait: Option<u64>,
}

async fn status(
    State(state): State<Arc<AppState>>,
    Path(build_id): Path<String>,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return ApiError::invalid("wait", "must be a whole number of seconds").into_response();
    };
    if uuid::Uuid::parse_str(&build_id).is_err() {
        return not_found(&build_id);
    }
    tracing::Span::current().record("build_id", build_id.as_str());
    let fresh = match state.notifier.read(&build_id).await {
        Ok(Some(fresh)) => fresh,
        Ok(None) => return not_found(&build_id),
        Err(error) => return ApiError::internal(error).into_response(),
    };
    let wait = Duration::from_secs(query.wait.unwrap_or(0)).min(state.max_wait);
    // A long poll waits on the build's shared watcher: however many wait, only it reads the
    // database again.
    let record = if wait.is_zero() || fresh.record.state.is_terminal() {
        fresh.record
    } else {
        state
            .notifier
            .wait_for_change(fresh, wait, state.shutting_down.clone())
            .await
    };
    (StatusCode::OK, Json(status_body(&record))).into_response()
}

fn not_found(build_id: &str) -> Response {
    let shown: String = build_id.chars().take(64).collect();
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no build '{}'", shown.escape_debug()),
        Some("build_id"),
        "must be the id of a build",
    )
    .into_response()
}

/// Filters of `GET /builds`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildsQuery {
    state: Option<build_api::BuildState>,
    distribution: Option<String>,
    architecture: Option<String>,
    kernel_version: Option<String>,
    driver_version: Option<String>,
    requester: Option<String>,
    /// Only builds created before this build (paging backwards from the last one seen).
    before: Option<String>,
    limit: Option<u32>,
}

/// Most builds one `GET /builds` answers with.
const MAX_LISTED: u32 = 500;

async fn list_builds(
    State(state): State<Arc<AppState>>,
    query: Result<Query<BuildsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(rejection) => {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                rejection.body_text(),
                Some("query"),
                "filters: state, distribution, architecture, kernel_version, driver_version, requester, before, limit",
            )
            .into_response();
        }
    };
    match builds_listing(&state, query).await {
        Ok(list) => (StatusCode::OK, Json(list)).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn builds_listing(
    state: &AppState,
    query: BuildsQuery,
) -> Result<build_api::BuildList, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_LISTED).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be 1 to {MAX_LISTED}"),
        ));
    }
    // Filters are compared with the stored canonical spelling, so aliases (amd64) are mapped
    // through kernel-id first.
    let canonical = |field: &str,
                     raw: Option<String>,
                     parse: fn(&str) -> Result<String, kernel_id::IdError>| {
        raw.map(|raw| parse(&raw).map_err(|error| ApiError::invalid(field, error.rule())))
            .transpose()
    };
    let before = match query.before {
        Some(build_id) => match state
            .store
            .get(&build_id)
            .await
            .map_err(ApiError::internal)?
        {
            Some(record) => Some(record.created_at),
            None => return Err(ApiError::invalid("before", "must be the id of a build")),
        },
        None => None,
    };
    let filter = crate::store::BuildFilter {
        states: query.state.map(|state| {
            crate::store::BuildState::ALL
                .into_iter()
                .filter(|stored| stored.public() == state)
                .map(|stored| stored.as_str().to_owned())
                .collect()
        }),
        distribution: canonical("distribution", query.distribution, |raw| {
            kernel_id::Distribution::parse(raw).map(|d| d.as_str().to_owned())
        })?,
        architecture: canonical("architecture", query.architecture, |raw| {
            kernel_id::Arch::parse(raw).map(|a| a.as_str().to_owned())
        })?,
        kernel_version: canonical("kernel_version", query.kernel_version, |raw| {
            kernel_id::KernelRelease::parse(raw).map(|r| r.as_str().to_owned())
        })?,
        driver_version: canonical("driver_version", query.driver_version, |raw| {
            kernel_id::DriverVersion::parse(raw).map(|v| v.as_str().to_owned())
        })?,
        requester: query.requester,
        before,
        limit,
    };
    let records = state
        .store
        .list_builds(&filter)
        .await
        .map_err(ApiError::internal)?;
    let ids: Vec<String> = records.iter().map(|r| r.build_id.clone()).collect();
    let mut requests = state
        .store
        .requests_for(&ids)
        .await
        .map_err(ApiError::internal)?;
    let builds = records
        .iter()
        .map(|record| build_api::BuildListing {
            build: status_body(record),
            requested_by: record.requested_by.clone(),
            requesters: requests
                .remove(&record.build_id)
                .unwrap_or_default()
                .into_iter()
                .map(|row| build_api::Requester {
                    client: row.client,
                    first_at: timestamp(row.first_at),
                    last_at: timestamp(row.last_at),
                    outcome: row.outcome,
                    principal: row.principal,
                    requests: u64::try_from(row.requests).unwrap_or(0),
                })
                .collect(),
        })
        .collect();
    Ok(build_api::BuildList { builds })
}

/// `ms` since the epoch as RFC 3339 (UTC), clamped to the years RFC 3339 can write (a deadline
/// beyond them, from a huge build timeout, reads as the last representable moment).
fn timestamp(ms: i64) -> String {
    const LAST_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let nanos = i128::from(ms.clamp(0, LAST_MS)) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The `GET /status` body.
pub fn status_body(record: &BuildRecord) -> BuildStatus {
    BuildStatus {
        build_id: record.build_id.clone(),
        cache_key: record.cache_key.clone(),
        created_at: timestamp(record.created_at),
        deadline_at: timestamp(record.deadline_at),
        dispatch_attempts: u64::try_from(record.dispatch_attempts).unwrap_or_default(),
        download_url: record.download_url.clone(),
        driver_name: record.driver_name.clone(),
        error: record.error.clone(),
        finished_at: record.finished_at.map(timestamp),
        log_url: record.run_url.clone(),
        request: BuildRequest {
            architecture: record.architecture.clone(),
            distribution: record.distribution.clone(),
            distro_version: Some(record.distro_version.clone()),
            driver_version: record.driver_version.clone(),
            kernel_version: record.kernel_version.clone(),
        },
        run_id: record.run_id.clone(),
        run_url: record.run_url.clone(),
        started_at: record.started_at.map(timestamp),
        status: record.state.public(),
        updated_at: timestamp(record.updated_at),
    }
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let store = state.store.ping().await;
    // From the periodic probe: however many ask, the backend (GitHub) is not asked again.
    let backend = state.health.latest().await;
    // Liveness follows the store only: a GitHub outage must not get every replica restarted.
    let (code, overall) = match (&store, &backend) {
        (Err(_), _) => (StatusCode::SERVICE_UNAVAILABLE, HealthState::Unavailable),
        (Ok(()), Err(_)) => (StatusCode::OK, HealthState::Degraded),
        (Ok(()), Ok(())) => (StatusCode::OK, HealthState::Ok),
    };
    let body = Health {
        backend: BackendHealth {
            name: state.backend.name().to_owned(),
            status: Check::from(backend),
        },
        status: overall,
        store: Check::from(store.map_err(|error| error.to_string())),
    };
    (code, Json(body)).into_response()
}

async fn metrics_text() -> Response {
    let text = telemetry::prometheus().render();
    let mut response = Body::from(text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn openapi() -> Response {
    let mut response = Body::from(OPENAPI).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: &str) -> ApiError {
        parse_identity(body.as_bytes()).expect_err(body)
    }

    #[test]
    fn a_valid_body_is_an_identity() {
        let identity = parse_identity(
            br#"{"kernel_version":"6.1.0-47-amd64","architecture":"amd64","distribution":"debian","driver_version":"v0.1.2"}"#,
        )
        .expect("valid");
        assert_eq!(
            identity.cache_key(),
            "debian/12/x86_64/6.1.0-47-amd64/v0.1.2"
        );
    }

    #[test]
    fn refusals_name_the_field_and_rule() {
        let error = refusal(
            r#"{"kernel_version":"6.1$(id)","architecture":"x86_64","distribution":"debian","driver_version":"v1.0.0"}"#,
        );
        assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error.field.as_deref(), Some("kernel_version"));
        let error = refusal(
            r#"{"kernel_version":"6.1.0-47-amd64","architecture":"x86_64","distribution":"debian","driver_version":"v1.0.0","x":1}"#,
        );
        assert_eq!(error.field.as_deref(), Some("x"));
        let error = refusal(r#"{"kernel_version":5}"#);
        assert_eq!(error.field.as_deref(), Some("kernel_version"));
        assert!(error.rule.contains("string"));
        assert_eq!(refusal("{").status, StatusCode::BAD_REQUEST);
        assert_eq!(refusal("[]").status, StatusCode::UNPROCESSABLE_ENTITY);
        let error = refusal(r#"{"architecture":"x86_64","architecture":"aarch64"}"#);
        assert!(error.error.contains("duplicate"), "{error:?}");
        let error = refusal(
            r#"{"architecture":"x86_64","distribution":"debian","driver_version":"v1.0.0"}"#,
        );
        assert_eq!(error.field.as_deref(), Some("kernel_version"));
        assert_eq!(error.rule, "is required");
    }
}
