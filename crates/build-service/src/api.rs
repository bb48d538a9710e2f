//! The HTTP API. `POST /build` refuses anything malformed before it touches the artifact store or a
//! backend: size, JSON syntax, exact schema (known fields, string types, no duplicate keys), then
//! kernel-id's validation of every value. The handlers only translate: the operations themselves
//! (lookup, dedup, reservation, audit, waiting) are the [`Coordinator`]'s, whose results and errors
//! are mapped here to status codes and `build_api` bodies. The fleet inventory's routes (`POST
//! /report`, `GET /fleet`) are translated the same way in [`crate::fleet_api`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
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
use kernel_id::{IdentityInput, KernelIdentity};
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::Value;

use crate::access::{self, Caller, Scope};
use crate::backend::BackendError;
use crate::coordinator::{Coordinator, CoordinatorError, HealthReport, Listed, Requested};
use crate::store::{BuildRecord, CapReached};
use crate::telemetry;

/// Largest accepted `POST /build` body.
pub const MAX_BODY: usize = 16 * 1024;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

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
    pub(crate) fn new(
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

    pub(crate) fn invalid(field: &str, rule: impl Into<String>) -> Self {
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

    /// The HTTP form of a coordinator's error.
    pub(crate) fn coordinator(error: CoordinatorError) -> Self {
        match error {
            CoordinatorError::Unavailable(message) => Self::internal(message),
            CoordinatorError::Backend(error) => Self::backend(&error),
            CoordinatorError::OverCap(reached) => Self::over_cap(reached),
            CoordinatorError::UnknownBuild(build_id) => not_found_error(&build_id),
            // Nothing was reserved: the version names no commit to build.
            CoordinatorError::UnknownVersion {
                version,
                repository,
            } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("driver_version: {version} is not a tag of {repository}"),
                Some("driver_version"),
                format!("must be a tag of {repository}"),
            ),
            CoordinatorError::SourceUnavailable {
                reason,
                retry_after,
            } => Self {
                retry_after: Some(retry_after.as_secs().max(1)),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    reason,
                    None,
                    "the driver repository could not be read to resolve driver_version; retry",
                )
            },
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

    /// The request field at fault, if one is.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
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
        method: "POST",
        path: "/watcher/run",
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
    RouteInfo {
        method: "GET",
        path: crate::module_signing::CERT_ROUTE,
    },
    RouteInfo {
        method: "POST",
        path: "/report",
    },
    RouteInfo {
        method: "GET",
        path: "/fleet",
    },
];

/// The routes that need an identified caller, each behind the scope it requires; the caller
/// ([`crate::access::authenticate`]) is identified by a layer the service puts around all of them.
pub fn limited_routes(state: Arc<Coordinator>) -> Router {
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
            .with_state(Arc::clone(&state)),
        Scope::Admin,
    ))
    .merge(crate::fleet_api::routes(state))
}

/// `router` behind `scope` (a 403 for callers without it).
pub(crate) fn scoped(router: Router, scope: Scope) -> Router {
    router.route_layer(axum::middleware::from_fn(
        move |request: Request, next: axum::middleware::Next| {
            access::require_scope(scope, request, next)
        },
    ))
}

/// The routes every caller may use without a token or a rate limit.
pub fn open_routes(state: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .with_state(state)
}

/// `GET /module-signing-cert.der`: the certificate of the key every module is signed with, for
/// operators to enrol (`mokutil --import`, the UEFI `db`). Anyone may read a certificate: no token,
/// no rate limit. 404 when the service signs no modules.
pub fn module_signing_routes(cert: Option<Vec<u8>>) -> Router {
    let cert = cert.map(Bytes::from);
    Router::new().route(
        crate::module_signing::CERT_ROUTE,
        get(move || {
            let cert = cert.clone();
            async move {
                match cert {
                    Some(cert) => (
                        [
                            (
                                header::CONTENT_TYPE,
                                HeaderValue::from_static(crate::module_signing::CERT_CONTENT_TYPE),
                            ),
                            (
                                header::CONTENT_DISPOSITION,
                                HeaderValue::from_static(
                                    "attachment; filename=\"module-signing-cert.der\"",
                                ),
                            ),
                        ],
                        cert,
                    )
                        .into_response(),
                    None => ApiError::new(
                        StatusCode::NOT_FOUND,
                        "this service signs no modules: no module-signing certificate is configured",
                        None,
                        "the service must be started with --module-signing-key and --module-signing-cert",
                    )
                    .into_response(),
                }
            }
        }),
    )
}

async fn build(
    State(coordinator): State<Arc<Coordinator>>,
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
        coordinator.record_refusal(&caller, &identity).await;
        return ApiError::new(StatusCode::FORBIDDEN, rule.clone(), Some(field), rule)
            .into_response();
    }
    match coordinator.request_build(&caller, identity).await {
        Ok(Requested::Done { download_url }) => {
            metrics::counter!(telemetry::REQUESTS, "outcome" => "hit").increment(1);
            metrics::counter!(telemetry::CACHE_HITS).increment(1);
            (StatusCode::OK, Json(BuildDone::new(download_url))).into_response()
        }
        Ok(Requested::Created { build_id } | Requested::Joined { build_id }) => {
            metrics::counter!(telemetry::REQUESTS, "outcome" => "building").increment(1);
            tracing::Span::current().record("build_id", build_id.as_str());
            (StatusCode::ACCEPTED, Json(BuildAccepted::new(build_id))).into_response()
        }
        Err(error @ CoordinatorError::UnknownVersion { .. }) => {
            // The caller's mistake, like any invalid field: nothing was reserved.
            let error = ApiError::coordinator(error);
            metrics::counter!(telemetry::REQUESTS, "outcome" => "invalid").increment(1);
            tracing::info!(status = error.status.as_u16(), field = ?error.field, rule = %error.rule, "refused");
            error.into_response()
        }
        Err(error) => {
            let error = ApiError::coordinator(error);
            metrics::counter!(telemetry::REQUESTS, "outcome" => "error").increment(1);
            tracing::warn!(error = %error.error, "could not answer");
            error.into_response()
        }
    }
}

/// Validates a `POST /build` request completely, without any IO beyond reading its body.
pub async fn validate(request: Request) -> Result<KernelIdentity, ApiError> {
    parse_identity(&read_json_body(request).await?)
}

/// The body of a JSON request, refused when it is declared as anything but JSON or is larger
/// than [`MAX_BODY`].
pub(crate) async fn read_json_body(request: Request) -> Result<Bytes, ApiError> {
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
    axum::body::to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|_| too_large())
}

/// The exact schema check, then kernel-id's validation.
pub fn parse_identity(body: &[u8]) -> Result<KernelIdentity, ApiError> {
    let object = parse_object(body)?;
    const FIELDS: [&str; 5] = BuildRequest::FIELDS;
    let mut strings: HashMap<&str, String> = HashMap::new();
    for (key, value) in object {
        let Some(field) = FIELDS.iter().copied().find(|field| *field == key) else {
            return Err(unknown_field(&key, &FIELDS));
        };
        match value {
            Value::String(text) => {
                strings.insert(field, text);
            }
            Value::Null if field == "distro_version" => {}
            other => {
                return Err(ApiError::invalid(
                    field,
                    format!("must be a string (found {})", json_kind(&other)),
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

/// A body that must be one JSON object, as its key/value pairs: 400 when it is not JSON, 422
/// when it is not an object, repeats a key or has more than 32 keys.
pub(crate) fn parse_object(body: &[u8]) -> Result<Vec<(String, Value)>, ApiError> {
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
    Ok(object.0)
}

/// What kind of JSON value `value` is, for refusals.
pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
        Value::String(_) => "a string",
    }
}

/// The refusal of a key outside `fields`, naming it (cut to 64 characters).
pub(crate) fn unknown_field(key: &str, fields: &[&str]) -> ApiError {
    let shown: String = key.chars().take(64).collect();
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("unknown field '{}'", shown.escape_debug()),
        Some(&shown),
        format!("unknown field; expected one of {}", fields.join(", ")),
    )
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

/// `?wait=` of `GET /status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusQuery {
    wait: Option<u64>,
}

async fn status(
    State(coordinator): State<Arc<Coordinator>>,
    Path(build_id): Path<String>,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return ApiError::invalid("wait", "must be a whole number of seconds").into_response();
    };
    if uuid::Uuid::parse_str(&build_id).is_err() {
        return not_found_error(&build_id).into_response();
    }
    tracing::Span::current().record("build_id", build_id.as_str());
    let wait = Duration::from_secs(query.wait.unwrap_or(0));
    match coordinator.status(&build_id, wait).await {
        Ok(Some(record)) => (StatusCode::OK, Json(status_body(&record))).into_response(),
        Ok(None) => not_found_error(&build_id).into_response(),
        Err(error) => ApiError::coordinator(error).into_response(),
    }
}

fn not_found_error(build_id: &str) -> ApiError {
    let shown: String = build_id.chars().take(64).collect();
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no build '{}'", shown.escape_debug()),
        Some("build_id"),
        "must be the id of a build",
    )
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
    State(coordinator): State<Arc<Coordinator>>,
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
    match builds_listing(&coordinator, query).await {
        Ok(list) => (StatusCode::OK, Json(list)).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn builds_listing(
    coordinator: &Coordinator,
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
        before: None,
        limit,
    };
    let listed = coordinator
        .list_builds(filter, query.before.as_deref())
        .await
        .map_err(|error| match error {
            CoordinatorError::UnknownBuild(_) => {
                ApiError::invalid("before", "must be the id of a build")
            }
            error => ApiError::coordinator(error),
        })?;
    let builds = listed
        .into_iter()
        .map(|Listed { record, requests }| build_api::BuildListing {
            build: status_body(&record),
            requested_by: record.requested_by.clone(),
            requesters: requests
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
pub(crate) fn timestamp(ms: i64) -> String {
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
        driver_name: record.driver.to_string(),
        error: record.error.clone(),
        finished_at: record.finished_at.map(timestamp),
        log_url: record.run_url.clone(),
        request: BuildRequest::from(&record.identity),
        run_id: record.run_id.clone(),
        run_url: record.run_url.clone(),
        source_commit: record.source_commit.as_ref().map(ToString::to_string),
        started_at: record.started_at.map(timestamp),
        status: record.state.public(),
        updated_at: timestamp(record.updated_at),
    }
}

async fn healthz(State(coordinator): State<Arc<Coordinator>>) -> Response {
    let HealthReport {
        store,
        backend,
        backend_name,
    } = coordinator.health().await;
    // Liveness follows the store only: a GitHub outage must not get every replica restarted.
    let (code, overall) = match (&store, &backend) {
        (Err(_), _) => (StatusCode::SERVICE_UNAVAILABLE, HealthState::Unavailable),
        (Ok(()), Err(_)) => (StatusCode::OK, HealthState::Degraded),
        (Ok(()), Ok(())) => (StatusCode::OK, HealthState::Ok),
    };
    let body = Health {
        backend: BackendHealth {
            name: backend_name.to_owned(),
            status: Check::from(backend),
        },
        status: overall,
        store: Check::from(store),
    };
    (code, Json(body)).into_response()
}

async fn metrics_text(State(coordinator): State<Arc<Coordinator>>) -> Response {
    let mut text = telemetry::prometheus().render();
    // The fleet's gauges are computed from the database at each scrape (`inventory.rs`); a failed
    // read leaves them out rather than failing the whole scrape.
    match coordinator.fleet_metrics().await {
        Ok(fleet) => {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&fleet);
        }
        Err(error) => tracing::warn!(%error, "could not compute the fleet gauges"),
    }
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
