//! The loader's HTTP edge: a blocking client with per-request timeouts, an overall deadline, and retries
//! with jittered exponential backoff for the failures that are worth retrying (connection refused, resets,
//! timeouts, truncated bodies, 5xx, 429). A 404 is an answer, not a failure: the caller turns it into a
//! build request.

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::error::{LoaderError, Result};

/// The overall time budget of one loader run.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    start: Instant,
    limit: Duration,
}

impl Deadline {
    /// A deadline `limit` from now.
    pub fn after(limit: Duration) -> Deadline {
        Deadline {
            start: Instant::now(),
            limit,
        }
    }

    /// Time left, zero once past.
    pub fn remaining(&self) -> Duration {
        self.limit.saturating_sub(self.start.elapsed())
    }

    /// An error if the deadline has passed, naming what was being done.
    pub fn check(&self, doing: &str) -> Result<()> {
        if self.remaining().is_zero() {
            return Err(self.exceeded(doing));
        }
        Ok(())
    }

    /// The deadline error.
    pub fn exceeded(&self, doing: &str) -> LoaderError {
        LoaderError::Deadline {
            seconds: self.limit.as_secs(),
            doing: doing.to_owned(),
        }
    }
}

/// Retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, including the first.
    pub attempts: u32,
    /// Backoff before the second attempt; doubles each time.
    pub base_delay: Duration,
    /// Cap of one backoff.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1` ("equal jitter": half fixed, half random), so a fleet that
    /// booted together does not retry in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let half = exp / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let random = if jitter_ms == 0 {
            0
        } else {
            random_u64() % (jitter_ms + 1)
        };
        half + Duration::from_millis(random)
    }
}

/// Randomness for jitter only (not security): std's per-process random hash keys, mixed with the clock.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// HTTP settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Connect timeout of one request.
    pub connect_timeout: Duration,
    /// Timeout of one whole request including the body (bounded further by the deadline).
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    pub user_agent: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(300),
            retry: RetryPolicy::default(),
            user_agent: concat!("driver-loader/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// ureq's resolver, except that a URL naming an IP address is answered without a lookup. With a
/// request timeout set, ureq resolves every request on a thread of its own so the lookup can be
/// abandoned; for an address literal there is nothing to wait for, and on a node's first boot (or
/// under emulation) each such thread costs more than the request.
#[derive(Debug, Default)]
struct LiteralFirstResolver(ureq::unversioned::resolver::DefaultResolver);

impl ureq::unversioned::resolver::Resolver for LiteralFirstResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> std::result::Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        if let Some(address) = literal_address(uri) {
            let mut found = self.empty();
            found.push(address);
            return Ok(found);
        }
        self.0.resolve(uri, config, timeout)
    }
}

/// The socket address of an `http`/`https` URI whose host is an IPv4 or (bracketed) IPv6 literal.
fn literal_address(uri: &ureq::http::Uri) -> Option<std::net::SocketAddr> {
    let port = match (uri.port_u16(), uri.scheme_str()) {
        (Some(port), Some("http" | "https")) => port,
        (None, Some("http")) => 80,
        (None, Some("https")) => 443,
        _ => return None,
    };
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: std::net::IpAddr = host.parse().ok()?;
    Some(std::net::SocketAddr::new(ip, port))
}

/// The largest response head (status line and headers) accepted, and so the input buffer's size.
const RESPONSE_HEAD_LIMIT: usize = 64 * 1024;

/// A body streamed into a file: its length and its SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downloaded {
    pub bytes: u64,
    pub sha256: integrity::Sha256Digest,
}

/// The outcome of a GET that may legitimately find nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched<T> {
    Found(T),
    NotFound,
}

/// One request attempt's result, before the retry decision.
enum Attempt<T> {
    Done(T),
    NotFound,
    /// Worth retrying; the optional duration is a server-requested pause (Retry-After).
    Retry(String, Option<Duration>),
    Fatal(String),
}

/// Blocking HTTP client with retries and deadline.
#[derive(Debug, Clone)]
pub struct HttpClient {
    agent: ureq::Agent,
    settings: HttpSettings,
}

impl HttpClient {
    pub fn new(settings: HttpSettings) -> HttpClient {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(settings.connect_timeout))
            .user_agent(settings.user_agent.as_str())
            .max_redirects(10)
            // ureq zero-fills both buffers of every connection, 128 KiB each by default: past musl's
            // mmap threshold, so each request paid two mmap/munmap pairs and 64 page faults, which
            // emulation (a VM node's first boot) makes dear; a node makes four requests to start.
            // The input buffer must hold a whole response head, so it stays at ureq's limit for
            // one (max_response_header_size, 64 KiB); requests are a line and a few headers.
            .input_buffer_size(RESPONSE_HEAD_LIMIT)
            .max_response_header_size(RESPONSE_HEAD_LIMIT)
            .output_buffer_size(16 * 1024)
            .build();
        HttpClient {
            agent: ureq::Agent::with_parts(
                config,
                ureq::unversioned::transport::DefaultConnector::default(),
                LiteralFirstResolver::default(),
            ),
            settings,
        }
    }

    fn request_timeout(&self, deadline: &Deadline) -> Duration {
        self.settings
            .request_timeout
            .min(deadline.remaining())
            .max(Duration::from_millis(1))
    }

    /// Runs `attempt` until it is done, not found, fatal, out of attempts or out of time.
    fn with_retries<T>(
        &self,
        url: &str,
        deadline: &Deadline,
        mut attempt: impl FnMut() -> Attempt<T>,
    ) -> Result<Fetched<T>> {
        let doing = format!("fetching {url}");
        let mut last = String::new();
        for n in 0..self.settings.retry.attempts.max(1) {
            deadline.check(&doing)?;
            match attempt() {
                Attempt::Done(v) => return Ok(Fetched::Found(v)),
                Attempt::NotFound => return Ok(Fetched::NotFound),
                Attempt::Fatal(reason) => {
                    return Err(LoaderError::Fetch {
                        url: url.to_owned(),
                        reason,
                    });
                }
                Attempt::Retry(reason, server_pause) => {
                    let is_last = n + 1 >= self.settings.retry.attempts;
                    if is_last {
                        last = reason;
                        break;
                    }
                    let pause = server_pause.unwrap_or_else(|| self.settings.retry.backoff(n));
                    if pause >= deadline.remaining() {
                        return Err(LoaderError::Fetch {
                            url: url.to_owned(),
                            reason: format!(
                                "{reason}; no time left for another attempt before the deadline"
                            ),
                        });
                    }
                    warn!(url, attempt = n + 1, error = %reason, pause_ms = pause.as_millis() as u64, "retrying");
                    std::thread::sleep(pause);
                    last = reason;
                }
            }
        }
        let reason = match self.settings.retry.attempts {
            // A single attempt (e.g. the node report) gave up on nothing: its failure is the reason.
            0 | 1 => last,
            attempts => format!("gave up after {attempts} attempts: {last}"),
        };
        Err(LoaderError::Fetch {
            url: url.to_owned(),
            reason,
        })
    }

    fn classify_status(status: u16, retry_after: Option<Duration>) -> Option<Attempt<()>> {
        match status {
            200..=299 => None,
            404 => Some(Attempt::NotFound),
            408 | 425 | 429 | 500..=599 => {
                Some(Attempt::Retry(format!("HTTP {status}"), retry_after))
            }
            401 | 403 => Some(Attempt::Fatal(format!(
                "HTTP {status}: access denied (check the token configuration)"
            ))),
            other => Some(Attempt::Fatal(format!("HTTP {other}"))),
        }
    }

    /// Sends one GET and sorts out everything but a successful answer, which it returns.
    fn get(
        &self,
        url: &str,
        token: Option<&str>,
        deadline: &Deadline,
    ) -> std::result::Result<ureq::http::Response<ureq::Body>, Attempt<()>> {
        let mut request = self
            .agent
            .get(url)
            .config()
            .timeout_global(Some(self.request_timeout(deadline)))
            .build();
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request.call().map_err(Self::transport_error)?;
        match Self::classify_status(response.status().as_u16(), retry_after(&response)) {
            Some(attempt) => Err(attempt),
            None => Ok(response),
        }
    }

    fn transport_error(e: ureq::Error) -> Attempt<()> {
        match e {
            ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::InvalidProxyUrl => {
                Attempt::Fatal(e.to_string())
            }
            other => Attempt::Retry(other.to_string(), None),
        }
    }

    /// Streams `url` into `dest` (created/truncated per attempt), refusing bodies over `limit` bytes.
    /// Returns the byte count and the SHA-256 of what was written, hashed as it arrived (the file
    /// is not read again to be hashed).
    pub fn download_to_file(
        &self,
        url: &str,
        token: Option<&str>,
        dest: &Path,
        limit: u64,
        deadline: &Deadline,
    ) -> Result<Fetched<Downloaded>> {
        self.with_retries(url, deadline, || {
            let mut response = match self.get(url, token, deadline) {
                Ok(response) => response,
                Err(attempt) => return retype(attempt),
            };
            if let Some(len) = response.body().content_length()
                && len > limit
            {
                return Attempt::Fatal(format!(
                    "body of {len} bytes exceeds the limit of {limit} bytes"
                ));
            }
            let mut file = match File::create(dest) {
                Ok(f) => f,
                Err(e) => return Attempt::Fatal(format!("creating {}: {e}", dest.display())),
            };
            let mut reader = response.body_mut().with_config().limit(limit + 1).reader();
            let mut copied = 0u64;
            let mut sha256 = integrity::Sha256Stream::new();
            // On the stack: under musl a heap buffer this size is a fresh mapping on every attempt.
            let mut buf = [0u8; 32 * 1024];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        return Attempt::Retry(
                            format!("reading the body after {copied} bytes: {e}"),
                            None,
                        );
                    }
                };
                copied += n as u64;
                if copied > limit {
                    return Attempt::Fatal(format!("body exceeds the limit of {limit} bytes"));
                }
                if let Err(e) = file.write_all(&buf[..n]) {
                    return Attempt::Fatal(format!("writing {}: {e}", dest.display()));
                }
                sha256.update(&buf[..n]);
            }
            if let Err(e) = file.sync_all() {
                return Attempt::Fatal(format!("syncing {}: {e}", dest.display()));
            }
            debug!(url, bytes = copied, "downloaded");
            Attempt::Done(Downloaded {
                bytes: copied,
                sha256: sha256.finish(),
            })
        })
    }

    /// GETs a small text document (digest, signature), at most `limit` bytes.
    pub fn get_text(
        &self,
        url: &str,
        token: Option<&str>,
        limit: u64,
        deadline: &Deadline,
    ) -> Result<Fetched<String>> {
        self.with_retries(url, deadline, || {
            let mut response = match self.get(url, token, deadline) {
                Ok(response) => response,
                Err(attempt) => return retype(attempt),
            };
            match response
                .body_mut()
                .with_config()
                .limit(limit)
                .read_to_string()
            {
                Ok(text) => Attempt::Done(text),
                Err(e) => Attempt::Retry(format!("reading the body: {e}"), None),
            }
        })
    }

    /// Sends a JSON request and decodes a JSON answer; returns the status code with the body so the caller
    /// can tell 200 from 202. 5xx and transport errors are retried; other 4xx answers are returned as
    /// errors carrying the server's message.
    pub fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: JsonMethod<'_, B>,
        url: &str,
        token: Option<&str>,
        timeout: Duration,
        deadline: &Deadline,
    ) -> Result<(u16, T)> {
        let found = self.with_retries(url, deadline, || {
            let timeout = timeout
                .min(deadline.remaining())
                .max(Duration::from_millis(1));
            let result = match &method {
                JsonMethod::Get => {
                    let mut request = self
                        .agent
                        .get(url)
                        .config()
                        .timeout_global(Some(timeout))
                        .build();
                    if let Some(token) = token {
                        request = request.header("Authorization", format!("Bearer {token}"));
                    }
                    request.call()
                }
                JsonMethod::Post(body) => {
                    let mut request = self
                        .agent
                        .post(url)
                        .config()
                        .timeout_global(Some(timeout))
                        .build();
                    if let Some(token) = token {
                        request = request.header("Authorization", format!("Bearer {token}"));
                    }
                    request.send_json(body)
                }
            };
            let mut response = match result {
                Ok(r) => r,
                Err(e) => return retype(Self::transport_error(e)),
            };
            let status = response.status().as_u16();
            if matches!(status, 408 | 425 | 429 | 500..=599) {
                return Attempt::Retry(format!("HTTP {status}"), retry_after(&response));
            }
            let body = match response
                .body_mut()
                .with_config()
                .limit(1024 * 1024)
                .read_to_string()
            {
                Ok(b) => b,
                Err(e) => return Attempt::Retry(format!("reading the body: {e}"), None),
            };
            if !(200..300).contains(&status) {
                return Attempt::Fatal(format!("HTTP {status}: {}", body.trim()));
            }
            match serde_json::from_str::<T>(&body) {
                Ok(v) => Attempt::Done((status, v)),
                Err(e) => Attempt::Fatal(format!(
                    "HTTP {status} with an unexpected body ({e}): {}",
                    body.trim()
                )),
            }
        })?;
        match found {
            Fetched::Found(v) => Ok(v),
            Fetched::NotFound => Err(LoaderError::Fetch {
                url: url.to_owned(),
                reason: "HTTP 404".to_owned(),
            }),
        }
    }
}

impl HttpClient {
    /// POSTs a JSON body whose answer carries nothing the caller needs (e.g. `204 No Content`):
    /// any 2xx is success and its body is not read. Attempts, timeouts and the deadline are this
    /// client's settings; other statuses are errors naming the status and the first bytes of the
    /// answer (the request's token is never part of an error).
    pub fn post_json_no_answer<B: Serialize>(
        &self,
        url: &str,
        token: Option<&str>,
        body: &B,
        deadline: &Deadline,
    ) -> Result<u16> {
        let found = self.with_retries(url, deadline, || {
            let mut request = self
                .agent
                .post(url)
                .config()
                .timeout_global(Some(self.request_timeout(deadline)))
                .build();
            if let Some(token) = token {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            let mut response = match request.send_json(body) {
                Ok(r) => r,
                Err(e) => return retype(Self::transport_error(e)),
            };
            let status = response.status().as_u16();
            if (200..300).contains(&status) {
                return Attempt::Done(status);
            }
            if matches!(status, 408 | 425 | 429 | 500..=599) {
                return Attempt::Retry(format!("HTTP {status}"), retry_after(&response));
            }
            // A short excerpt is enough to name the refusal (e.g. the API's error body).
            let text = response
                .body_mut()
                .with_config()
                .limit(4096)
                .read_to_string()
                .unwrap_or_default();
            Attempt::Fatal(format!("HTTP {status}: {}", text.trim()))
        })?;
        match found {
            Fetched::Found(status) => Ok(status),
            Fetched::NotFound => Err(LoaderError::Fetch {
                url: url.to_owned(),
                reason: "HTTP 404".to_owned(),
            }),
        }
    }
}

/// Method and body of a JSON request.
#[derive(Debug)]
pub enum JsonMethod<'a, B> {
    Get,
    Post(&'a B),
}

fn retype<T>(attempt: Attempt<()>) -> Attempt<T> {
    match attempt {
        Attempt::Done(()) => Attempt::Fatal("internal: unexpected completion".to_owned()),
        Attempt::NotFound => Attempt::NotFound,
        Attempt::Retry(r, p) => Attempt::Retry(r, p),
        Attempt::Fatal(r) => Attempt::Fatal(r),
    }
}

/// A `Retry-After` in seconds, capped so a hostile server cannot park the loader.
fn retry_after(response: &ureq::http::Response<ureq::Body>) -> Option<Duration> {
    let secs: u64 = response
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_address_literals_skip_the_lookup() {
        let address = |url: &str| literal_address(&url.parse().expect("uri"));
        assert_eq!(
            address("http://10.0.2.2:8000/a/b.deb"),
            Some("10.0.2.2:8000".parse().expect("addr"))
        );
        assert_eq!(
            address("https://[::1]/x"),
            Some("[::1]:443".parse().expect("addr"))
        );
        assert_eq!(
            address("http://127.0.0.1/x"),
            Some("127.0.0.1:80".parse().expect("addr"))
        );
        assert_eq!(address("https://example.com/x"), None);
        assert_eq!(address("http://10.0.2.2.example.com/x"), None);
        assert_eq!(address("socks5://127.0.0.1:1080"), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_bounds() {
        let policy = RetryPolicy {
            attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        };
        for attempt in 0..10 {
            let exp = (Duration::from_millis(100) * 2u32.pow(attempt)).min(Duration::from_secs(2));
            for _ in 0..20 {
                let d = policy.backoff(attempt);
                assert!(
                    d >= exp / 2 && d <= exp,
                    "attempt {attempt}: {d:?} outside [{:?}, {exp:?}]",
                    exp / 2
                );
            }
        }
        assert!(policy.backoff(1000) <= Duration::from_secs(2));
    }

    #[test]
    fn deadline_reports_what_was_being_done() {
        let deadline = Deadline::after(Duration::ZERO);
        let err = deadline.check("fetching x").expect_err("expired");
        assert_eq!(err.kind(), crate::FailureKind::Fetch);
        assert!(err.to_string().contains("fetching x"));
        assert!(Deadline::after(Duration::from_secs(60)).check("x").is_ok());
    }
}
