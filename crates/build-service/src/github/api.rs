//! One place where requests to the GitHub REST API are sent: octocrab underneath (auth, base URL,
//! App installation tokens) with its automatic retry switched off, and our own handling of what GitHub
//! answers: rate-limit headers, secondary limits, 5xx, timeouts, metrics.
//!
//! octocrab's retry re-sends POSTs at once on 5xx and ignores `retry-after`, which turns "dispatch accepted
//! but answered 500" into two builds; so this layer never retries: [`ApiClient::send_once`] sends once and
//! classifies the answer, and the service's one retry policy ([`crate::retry`]) is applied by the tracker,
//! which for a dispatch first looks the run up by build id.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{ACCEPT, IF_NONE_MATCH};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use octocrab::service::middleware::retry::RetryConfig;

use super::config::{GitHubAuth, GitHubConfig, GitHubSetupError, GitHubTuning};
use crate::backend::BackendError;

/// Largest answer body read from the API.
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// The endpoints the backend calls, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    ReleaseByTag,
    Dispatch,
    ListRuns,
    GetRun,
    CancelRun,
    RateLimit,
    MatchingRefs,
    GetTag,
}

impl Endpoint {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Endpoint::ReleaseByTag => "release_by_tag",
            Endpoint::Dispatch => "workflow_dispatch",
            Endpoint::ListRuns => "list_workflow_runs",
            Endpoint::GetRun => "get_workflow_run",
            Endpoint::CancelRun => "cancel_workflow_run",
            Endpoint::RateLimit => "rate_limit",
            Endpoint::MatchingRefs => "git_matching_refs",
            Endpoint::GetTag => "git_tag",
        }
    }
}

/// An answer GitHub gave that is neither a rate limit nor a server error (2xx, 304, other 4xx).
#[derive(Debug, Clone)]
pub(crate) struct ApiResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ApiResponse {
    /// GitHub's error `message` (plus the `errors` entries) for diagnostics and matching.
    pub(crate) fn error_text(&self) -> String {
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(value) => {
                let message = value
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or_default();
                match value.get("errors") {
                    Some(errors) => format!("{message} {errors}"),
                    None => message.to_owned(),
                }
            }
            Err(_) => String::from_utf8_lossy(&self.body)
                .chars()
                .take(500)
                .collect(),
        }
    }

    pub(crate) fn etag(&self) -> Option<String> {
        self.headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// Why a request produced no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallError {
    /// Timeout, connection failure or 5xx: the request may or may not have taken effect on GitHub.
    #[error("{0}")]
    Ambiguous(String),
    /// Refused by a primary or secondary rate limit: nothing happened; retry after the delay.
    #[error("rate limited ({detail}); retry after {retry_after:?}")]
    RateLimited {
        retry_after: Duration,
        detail: String,
    },
    /// Retrying cannot help (credentials refused, unknown repository or workflow, invalid request).
    #[error("{0}")]
    Permanent(String),
}

impl From<CallError> for BackendError {
    fn from(err: CallError) -> Self {
        match err {
            CallError::Ambiguous(message) => BackendError::Transient(format!("GitHub: {message}")),
            CallError::RateLimited { retry_after, .. } => BackendError::RateLimited { retry_after },
            CallError::Permanent(message) => BackendError::Permanent(format!("GitHub: {message}")),
        }
    }
}

/// What the last answers said about the primary rate limit.
#[derive(Debug, Clone, Copy, Default)]
struct PrimaryLimit {
    remaining: Option<u64>,
    reset: Option<SystemTime>,
}

/// The octocrab client plus our request policy.
pub(crate) struct ApiClient {
    crab: Octocrab,
    tuning: GitHubTuning,
    primary: Mutex<PrimaryLimit>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

/// A request to send: relative path (with query) so octocrab applies the base URL and attaches auth.
#[derive(Debug, Clone)]
pub(crate) struct ApiRequest {
    pub endpoint: Endpoint,
    pub method: Method,
    pub path_and_query: String,
    pub if_none_match: Option<String>,
    pub body: Option<serde_json::Value>,
}

impl ApiRequest {
    pub(crate) fn get(endpoint: Endpoint, path_and_query: String) -> Self {
        Self {
            endpoint,
            method: Method::GET,
            path_and_query,
            if_none_match: None,
            body: None,
        }
    }
}

impl ApiClient {
    /// Builds the octocrab client for `config` (plain token or App installation), retries off.
    pub(crate) fn new(config: &GitHubConfig) -> Result<Self, GitHubSetupError> {
        let client_err = |e: octocrab::Error| GitHubSetupError::Client(e.to_string());
        let builder = Octocrab::builder()
            .base_uri(config.api_base_url.trim_end_matches('/'))
            .map_err(client_err)?
            .add_retry_config(RetryConfig::None)
            .set_connect_timeout(Some(
                config.tuning.request_timeout.min(Duration::from_secs(10)),
            ))
            // The per-call bound is applied in `send_once`; the socket may wait as long as the
            // longest of them.
            .set_read_timeout(Some(
                config
                    .tuning
                    .request_timeout
                    .max(config.tuning.dispatch_timeout),
            ));
        let crab = match &config.auth {
            GitHubAuth::Token(token) => builder
                .personal_token(token.trim().to_owned())
                .build()
                .map_err(client_err)?,
            GitHubAuth::App {
                app_id,
                private_key_pem,
                installation_id,
            } => builder
                .app_from_rsa_pem(AppId(*app_id), private_key_pem.as_bytes())
                .map_err(client_err)?
                .build()
                .map_err(client_err)?
                .installation(InstallationId(*installation_id))
                .map_err(client_err)?,
        };
        Ok(Self {
            crab,
            tuning: config.tuning.clone(),
            primary: Mutex::new(PrimaryLimit::default()),
        })
    }

    pub(crate) fn tuning(&self) -> &GitHubTuning {
        &self.tuning
    }

    /// Sends `request` exactly once and classifies the answer.
    pub(crate) async fn send_once(&self, request: &ApiRequest) -> Result<ApiResponse, CallError> {
        if let Some(retry_after) = self.known_exhaustion() {
            // GitHub would refuse anyway (and count it as abuse if we kept asking).
            return Err(CallError::RateLimited {
                retry_after,
                detail: "primary rate limit exhausted".to_owned(),
            });
        }
        let label = request.endpoint.label();
        let limit = if request.endpoint == Endpoint::Dispatch {
            self.tuning.dispatch_timeout
        } else {
            self.tuning.request_timeout
        };
        let outcome = tokio::time::timeout(limit, self.exchange(request)).await;
        let response = match outcome {
            Err(_elapsed) => {
                metrics::counter!("github_api_calls_total", "endpoint" => label, "status" => "timeout").increment(1);
                return Err(CallError::Ambiguous(format!(
                    "{} timed out after {limit:?}",
                    request.endpoint.label(),
                )));
            }
            Ok(Err(err)) => {
                metrics::counter!("github_api_calls_total", "endpoint" => label, "status" => "error").increment(1);
                return Err(err);
            }
            Ok(Ok(response)) => response,
        };
        metrics::counter!("github_api_calls_total", "endpoint" => label, "status" => response.status.as_u16().to_string())
            .increment(1);
        if response.status == StatusCode::NOT_MODIFIED {
            metrics::counter!("github_api_not_modified_total").increment(1);
        }
        self.observe_primary(&response.headers);
        classify(response, label)
    }

    async fn exchange(&self, request: &ApiRequest) -> Result<ApiResponse, CallError> {
        let mut builder = http::Request::builder()
            .method(request.method.clone())
            .uri(request.path_and_query.as_str())
            .header(
                ACCEPT,
                HeaderValue::from_static("application/vnd.github+json"),
            );
        if let Some(etag) = &request.if_none_match {
            builder = builder.header(IF_NONE_MATCH, etag.as_str());
        }
        let http_request = self
            .crab
            .build_request(builder, request.body.as_ref())
            .map_err(|e| {
                CallError::Permanent(format!(
                    "cannot build request {}: {e}",
                    request.path_and_query
                ))
            })?;
        let response = self
            .crab
            .execute(http_request)
            .await
            .map_err(classify_octocrab_error)?;
        let (parts, body) = response.into_parts();
        // A release with 1,000 assets is about 2 MB of JSON; anything far bigger is not GitHub's answer.
        let body = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| {
                CallError::Ambiguous(format!(
                    "reading the answer of {}: {e}",
                    request.endpoint.label()
                ))
            })?
            .to_bytes();
        Ok(ApiResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    fn observe_primary(&self, headers: &HeaderMap) {
        let remaining = header_u64(headers, "x-ratelimit-remaining");
        let reset = header_u64(headers, "x-ratelimit-reset")
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
        if let Some(remaining) = remaining {
            #[allow(clippy::cast_precision_loss)] // a quota count fits f64 exactly
            metrics::gauge!("github_rate_limit_remaining").set(remaining as f64);
        }
        if remaining.is_some() || reset.is_some() {
            let mut primary = self.primary.lock().unwrap_or_else(|p| p.into_inner());
            primary.remaining = remaining.or(primary.remaining);
            primary.reset = reset.or(primary.reset);
        }
    }

    /// How long until the primary limit resets, when the last answer said it is exhausted.
    fn known_exhaustion(&self) -> Option<Duration> {
        let primary = *self.primary.lock().unwrap_or_else(|p| p.into_inner());
        if primary.remaining != Some(0) {
            return None;
        }
        let wait = primary.reset?.duration_since(SystemTime::now()).ok()?;
        Some(wait + Duration::from_secs(1))
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// `Retry-After` in seconds (GitHub sends seconds; an HTTP date is accepted too).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let target = UNIX_EPOCH + Duration::from_secs(u64::try_from(date.unix_timestamp()).ok()?);
    Some(
        target
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Sorts an HTTP answer into "usable" and the [`CallError`] kinds, following GitHub's documented order:
/// `retry-after` first, then `x-ratelimit-remaining: 0` (wait for `x-ratelimit-reset`), then a 403/429
/// that says "secondary rate limit" (wait at least a minute).
pub(crate) fn classify(response: ApiResponse, endpoint: &str) -> Result<ApiResponse, CallError> {
    let status = response.status;
    if status.is_server_error() {
        return Err(CallError::Ambiguous(format!(
            "{endpoint} answered {status}: {}",
            response.error_text()
        )));
    }
    if status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS {
        let text = response.error_text();
        let lower = text.to_ascii_lowercase();
        if let Some(wait) = retry_after(&response.headers) {
            return Err(CallError::RateLimited {
                retry_after: wait.max(Duration::from_secs(1)),
                detail: format!("{endpoint} answered {status} with retry-after: {text}"),
            });
        }
        if header_u64(&response.headers, "x-ratelimit-remaining") == Some(0) {
            let reset = header_u64(&response.headers, "x-ratelimit-reset")
                .map(|s| UNIX_EPOCH + Duration::from_secs(s));
            // The reset is given in whole seconds; one more second avoids asking just before it.
            // A reset already past (rounding, clock skew) still gets that second.
            let wait = reset.map_or(Duration::from_secs(60), |r| {
                r.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_secs(1)
            });
            return Err(CallError::RateLimited {
                retry_after: wait,
                detail: format!(
                    "primary rate limit exhausted ({endpoint} answered {status}: {text})"
                ),
            });
        }
        if lower.contains("secondary rate limit")
            || lower.contains("abuse")
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            return Err(CallError::RateLimited {
                retry_after: Duration::from_secs(60),
                detail: format!("secondary rate limit ({endpoint} answered {status}: {text})"),
            });
        }
    }
    Ok(response)
}

/// octocrab reports transport failures and failures to mint an installation token as errors.
fn classify_octocrab_error(err: octocrab::Error) -> CallError {
    match err {
        octocrab::Error::GitHub { source, .. } => {
            // Only the installation-token exchange surfaces as a GitHub error here.
            let response = ApiResponse {
                status: source.status_code,
                headers: source.headers.clone().unwrap_or_default(),
                body: Bytes::from(serde_json::json!({ "message": source.message }).to_string()),
            };
            match classify(response, "app_installation_token") {
                Err(err) => err,
                Ok(response) => CallError::Permanent(format!(
                    "GitHub App installation token refused ({}): {}",
                    response.status,
                    response.error_text()
                )),
            }
        }
        octocrab::Error::JWT { source, .. } => {
            CallError::Permanent(format!("cannot sign the GitHub App JWT: {source}"))
        }
        octocrab::Error::Installation { .. }
        | octocrab::Error::InstallationTokenInvalidAuth { .. } => CallError::Permanent(format!(
            "GitHub App installation authentication failed: {err}"
        )),
        other => CallError::Ambiguous(format!("request failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&'static str, String)], message: &str) -> ApiResponse {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        ApiResponse {
            status: StatusCode::from_u16(status).expect("status"),
            headers: map,
            body: Bytes::from(serde_json::json!({ "message": message }).to_string()),
        }
    }

    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
    }

    #[test]
    fn retry_after_wins_over_everything() {
        let err = classify(answer(403, &[("retry-after", "7".into())], "whatever"), "x")
            .expect_err("limited");
        assert!(
            matches!(err, CallError::RateLimited { retry_after, .. } if retry_after == Duration::from_secs(7))
        );
    }

    #[test]
    fn exhausted_primary_limit_waits_for_the_reset() {
        let reset = now_secs() + 120;
        let headers = [
            ("x-ratelimit-remaining", "0".to_owned()),
            ("x-ratelimit-reset", reset.to_string()),
        ];
        let err =
            classify(answer(403, &headers, "API rate limit exceeded"), "x").expect_err("limited");
        let CallError::RateLimited { retry_after, .. } = err else {
            panic!("{err:?}")
        };
        assert!(
            retry_after > Duration::from_secs(100) && retry_after <= Duration::from_secs(121),
            "{retry_after:?}"
        );
    }

    #[test]
    fn secondary_limit_message_without_headers_waits_a_minute() {
        let text = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.";
        let err = classify(
            answer(403, &[("x-ratelimit-remaining", "4000".into())], text),
            "x",
        )
        .expect_err("limited");
        assert!(
            matches!(err, CallError::RateLimited { retry_after, .. } if retry_after == Duration::from_secs(60))
        );
    }

    #[test]
    fn plain_forbidden_and_not_found_are_answers_and_5xx_is_ambiguous() {
        let forbidden = classify(
            answer(403, &[], "Resource not accessible by integration"),
            "x",
        )
        .expect("answer");
        assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
        assert!(classify(answer(404, &[], "Not Found"), "x").is_ok());
        assert!(matches!(
            classify(answer(502, &[], "Bad Gateway"), "x"),
            Err(CallError::Ambiguous(_))
        ));
    }

    #[test]
    fn error_text_includes_validation_errors() {
        let response = ApiResponse {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            headers: HeaderMap::new(),
            body: Bytes::from_static(br#"{"message":"Invalid request.","errors":["return_run_details is not a permitted key."]}"#),
        };
        let text = response.error_text();
        assert!(
            text.contains("Invalid request.") && text.contains("return_run_details"),
            "{text}"
        );
    }
}
