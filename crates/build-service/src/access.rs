//! Who may call the API and how often: optional bearer tokens for `POST /build` (compared in constant
//! time) and a per-caller token bucket (keyed by the caller's token, else its IP address).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::error_body;
use crate::telemetry;

/// Accepted bearer tokens, kept only as SHA-256 digests: comparing fixed-length digests in constant
/// time leaks neither content nor length of a token.
#[derive(Clone)]
pub struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.digests.len())
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Tokens from text: one per line, blank lines and `#` comments ignored.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut digests = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            if token.len() < 16 || !token.bytes().all(|byte| byte.is_ascii_graphic()) {
                return Err(format!(
                    "tokens file line {}: a token must be at least 16 printable ASCII characters without spaces",
                    index + 1
                ));
            }
            digests.push(digest(token));
        }
        if digests.is_empty() {
            return Err("tokens file holds no token".to_owned());
        }
        Ok(Self { digests })
    }

    /// Reads a tokens file.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("reading tokens file {}: {error}", path.display()))?;
        Self::parse(&text)
    }

    /// Whether `candidate` is one of the tokens. Every token is compared, whatever matches.
    pub fn accepts(&self, candidate: &str) -> bool {
        let candidate = digest(candidate);
        let mut matched = subtle::Choice::from(0);
        for known in &self.digests {
            matched |= known.ct_eq(&candidate);
        }
        matched.into()
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Refuses requests without an accepted bearer token.
pub async fn require_token(
    State(tokens): State<Arc<Tokens>>,
    request: Request,
    next: Next,
) -> Response {
    match bearer(request.headers()) {
        Some(token) if tokens.accepts(token) => next.run(request).await,
        _ => {
            metrics::counter!(telemetry::REQUESTS, "outcome" => "unauthorized").increment(1);
            let mut response = (
                StatusCode::UNAUTHORIZED,
                error_body(
                    "a valid bearer token is required",
                    Some("authorization"),
                    "bearer token",
                ),
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// Per-caller token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Buckets kept before idle (full) ones are dropped.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// `per_minute` requests per minute sustained, bursts of up to `burst`.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_minute.max(1)) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `caller`, or says how long until one is available.
    pub fn take(&self, caller: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(caller) {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets.retain(|_, bucket| {
                bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * per_second
                    < burst
            });
        }
        let bucket = buckets.entry(caller.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let refill = now.saturating_duration_since(bucket.updated).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }
}

/// The rate-limit key: the bearer token's digest when there is one, else the peer address.
fn caller_key(request: &Request) -> String {
    if let Some(token) = bearer(request.headers()) {
        return format!("token:{}", hex::encode(&digest(token)[..12]));
    }
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(address)) => format!("ip:{}", address.ip()),
        None => "ip:unknown".to_owned(),
    }
}

/// Answers 429 with `Retry-After` when the caller's bucket is empty.
pub async fn rate_limit(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    match limiter.take(&caller_key(&request), Instant::now()) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            metrics::counter!(telemetry::REQUESTS, "outcome" => "rate_limited").increment(1);
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                error_body(
                    "too many requests",
                    None,
                    &format!("retry after {seconds} s"),
                ),
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_matched_exactly() {
        let tokens =
            Tokens::parse("# fleet\nabcdefghijklmnop1\n\nqrstuvwxyz0123456\n").expect("tokens");
        assert!(tokens.accepts("abcdefghijklmnop1"));
        assert!(tokens.accepts("qrstuvwxyz0123456"));
        assert!(!tokens.accepts("abcdefghijklmnop"));
        assert!(!tokens.accepts(""));
        assert!(Tokens::parse("short\n").is_err());
        assert!(Tokens::parse("# nothing\n").is_err());
    }

    #[test]
    fn buckets_allow_a_burst_then_refill_at_the_rate() {
        let limiter = RateLimiter::new(60, 2);
        let start = Instant::now();
        assert!(limiter.take("a", start).is_ok());
        assert!(limiter.take("a", start).is_ok());
        let wait = limiter.take("a", start).expect_err("empty");
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::from_millis(900),
            "{wait:?}"
        );
        assert!(limiter.take("b", start).is_ok(), "callers are independent");
        assert!(limiter.take("a", start + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn only_bearer_authorization_counts() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        assert_eq!(bearer(&headers), Some("tok"));
    }
}
