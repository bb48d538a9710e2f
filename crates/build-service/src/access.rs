//! Who may call the API, for what, and how often.
//!
//! Creating build demand spends CI minutes, API quota and signing authority, so every caller is
//! either a named [`Principal`] holding [`Scope`]s (from a principals file that stores only the
//! SHA-256 of each token and is re-read on SIGHUP) or, where the operator allowed it, anonymous.
//! Authentication runs before rate limiting, so a made-up token is refused (401) instead of being
//! handed a fresh bucket; buckets are keyed by principal, else by client address (forwarded headers
//! are believed only from configured proxies), and their number is bounded (least recently used
//! callers are forgotten first). Each client address may also have only so many requests in flight
//! at once (long polls included); over that it is told to retry (429) before any work is done.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use kernel_id::{Arch, Distribution, DriverVersion, KernelIdentity};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::error_body;
use crate::telemetry;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// `POST /build`: look up an artifact and, on a miss, create or join a build.
    RequestBuild,
    /// `GET /status/{id}`.
    ReadStatus,
    /// `GET /builds`: every build and who asked for it. Implies no other scope.
    Admin,
    /// `POST /report`: a node's report of its loader's run, kept in the fleet inventory. Creates no
    /// build; nodes hold it beside `request-build`.
    Report,
}

impl Scope {
    /// The spelling in principals files and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestBuild => "request-build",
            Self::ReadStatus => "read-status",
            Self::Admin => "admin",
            Self::Report => "report",
        }
    }
}

/// A named caller, as configured.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    name: String,
    token_sha256: [u8; 32],
    scopes: BTreeSet<Scope>,
    max_in_flight: Option<u32>,
    distributions: Option<Vec<Distribution>>,
    architectures: Option<Vec<Arch>>,
    driver_versions: Option<Vec<DriverVersion>>,
}

impl fmt::Debug for Principal {
    // The token digest stays out of logs: it is all an attacker needs to test guesses offline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

/// Principals the service itself acts as; a principals file may not use their names, so the audit
/// trail never confuses them with a caller.
pub const BUILT_IN_PRINCIPALS: &[&str] = &[WATCHER_PRINCIPAL];

/// The repository watcher's principal (`watcher.rs`): its prebuild requests are audited under it.
pub const WATCHER_PRINCIPAL: &str = "watcher";

impl Principal {
    /// A principal the service acts as itself (see [`BUILT_IN_PRINCIPALS`]). It has no token: no
    /// request authenticates as it, since only a principals file's entries are ever matched.
    pub fn built_in(name: &'static str, scopes: &[Scope]) -> Self {
        Self {
            name: name.to_owned(),
            token_sha256: [0; 32],
            scopes: scopes.iter().copied().collect(),
            max_in_flight: None,
            distributions: None,
            architectures: None,
            driver_versions: None,
        }
    }

    /// Its name (audit records and logs carry it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Its own cap on builds in flight, when the file sets one.
    pub fn max_in_flight(&self) -> Option<u32> {
        self.max_in_flight
    }

    /// Refuses an identity outside what this principal may request, naming the field.
    pub fn permits(&self, identity: &KernelIdentity) -> Result<(), (&'static str, String)> {
        self.within_limits(identity, "request")
    }

    /// Refuses a node report about an identity outside what this principal may request: the same
    /// limits as for builds, so a principal confined to some distributions, architectures or driver
    /// versions cannot fill the fleet inventory with nodes it could never have asked builds for.
    pub fn permits_report(&self, identity: &KernelIdentity) -> Result<(), (&'static str, String)> {
        self.within_limits(identity, "report")
    }

    fn within_limits(
        &self,
        identity: &KernelIdentity,
        verb: &str,
    ) -> Result<(), (&'static str, String)> {
        let check = |allowed: Option<bool>, field: &'static str, shown: &str| match allowed {
            Some(false) => Err((
                field,
                format!("principal '{}' may not {verb} {field} {shown}", self.name),
            )),
            _ => Ok(()),
        };
        check(
            self.distributions
                .as_ref()
                .map(|list| list.contains(&identity.distribution())),
            "distribution",
            identity.distribution().as_str(),
        )?;
        check(
            self.architectures
                .as_ref()
                .map(|list| list.contains(&identity.arch())),
            "architecture",
            identity.arch().as_str(),
        )?;
        check(
            self.driver_versions
                .as_ref()
                .map(|list| list.contains(identity.driver_version())),
            "driver_version",
            identity.driver_version().as_str(),
        )
    }
}

/// The principals file as written by operators (TOML).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalsFile {
    #[serde(default)]
    principal: Vec<PrincipalEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalEntry {
    name: String,
    token_sha256: String,
    scopes: Vec<Scope>,
    max_in_flight: Option<u32>,
    distributions: Option<Vec<String>>,
    architectures: Option<Vec<String>>,
    driver_versions: Option<Vec<String>>,
}

/// Why a principals file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PrincipalsError {
    /// It could not be read.
    #[error("reading principals file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid TOML of the expected shape.
    #[error("principals file: {0}")]
    Syntax(String),
    /// One entry breaks a rule.
    #[error("principals file, principal #{index} ({name}): {field}: {rule}")]
    Invalid {
        /// 1-based position in the file.
        index: usize,
        /// Its name as written.
        name: String,
        /// The offending field.
        field: &'static str,
        /// The rule it breaks.
        rule: String,
    },
    /// The file names nobody.
    #[error("principals file names no principal")]
    Empty,
}

/// Every configured principal.
#[derive(Clone, Default)]
pub struct Principals {
    list: Vec<Arc<Principal>>,
}

impl fmt::Debug for Principals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|p| p.name()))
            .finish()
    }
}

/// The SHA-256 of a token, as principals files store it (lower-case hex).
pub fn token_digest_hex(token: &str) -> String {
    hex::encode(digest(token))
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Principals {
    /// Parses and validates a principals file's text.
    pub fn parse(text: &str) -> Result<Self, PrincipalsError> {
        let file: PrincipalsFile =
            toml::from_str(text).map_err(|error| PrincipalsError::Syntax(error.to_string()))?;
        if file.principal.is_empty() {
            return Err(PrincipalsError::Empty);
        }
        let mut list: Vec<Arc<Principal>> = Vec::with_capacity(file.principal.len());
        for (position, entry) in file.principal.into_iter().enumerate() {
            let index = position + 1;
            let invalid = |field: &'static str, rule: String| PrincipalsError::Invalid {
                index,
                name: entry.name.chars().take(64).collect(),
                field,
                rule,
            };
            let name_ok = (1..=64).contains(&entry.name.len())
                && entry
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
            if !name_ok {
                return Err(invalid(
                    "name",
                    "must be 1-64 characters of letters, digits, '.', '_', '-', '@'".into(),
                ));
            }
            if BUILT_IN_PRINCIPALS.contains(&entry.name.as_str()) {
                return Err(invalid(
                    "name",
                    "is the name of a principal built into the service".into(),
                ));
            }
            if list.iter().any(|known| known.name == entry.name) {
                return Err(invalid("name", "is used by an earlier principal".into()));
            }
            let mut token_sha256 = [0u8; 32];
            if hex::decode_to_slice(&entry.token_sha256, &mut token_sha256).is_err()
                || entry.token_sha256.bytes().any(|b| b.is_ascii_uppercase())
            {
                return Err(invalid(
                    "token_sha256",
                    "must be the token's SHA-256 as 64 lower-case hex digits (build-service hash-token)"
                        .into(),
                ));
            }
            if list.iter().any(|known| known.token_sha256 == token_sha256) {
                return Err(invalid(
                    "token_sha256",
                    "is the token of an earlier principal".into(),
                ));
            }
            if entry.scopes.is_empty() {
                return Err(invalid("scopes", "must name at least one scope".into()));
            }
            if entry.max_in_flight == Some(0) {
                return Err(invalid(
                    "max_in_flight",
                    "must be at least 1 (remove request-build to forbid builds)".into(),
                ));
            }
            let parse_all = |values: Option<Vec<String>>,
                             field: &'static str,
                             parse: &dyn Fn(&str) -> Result<(), String>|
             -> Result<Option<Vec<String>>, PrincipalsError> {
                match values {
                    Some(values) if values.is_empty() => Err(invalid(
                        field,
                        "must not be empty (leave it out to allow any)".into(),
                    )),
                    Some(values) => {
                        for value in &values {
                            parse(value).map_err(|rule| invalid(field, rule))?;
                        }
                        Ok(Some(values))
                    }
                    None => Ok(None),
                }
            };
            let distributions = parse_all(entry.distributions, "distributions", &|v| {
                Distribution::parse(v)
                    .map(drop)
                    .map_err(|e| e.rule().to_owned())
            })?
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| Distribution::parse(v).ok())
                    .collect()
            });
            let architectures = parse_all(entry.architectures, "architectures", &|v| {
                Arch::parse(v).map(drop).map_err(|e| e.rule().to_owned())
            })?
            .map(|values| values.iter().filter_map(|v| Arch::parse(v).ok()).collect());
            let driver_versions = parse_all(entry.driver_versions, "driver_versions", &|v| {
                DriverVersion::parse(v)
                    .map(drop)
                    .map_err(|e| e.rule().to_owned())
            })?
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| DriverVersion::parse(v).ok())
                    .collect()
            });
            list.push(Arc::new(Principal {
                name: entry.name,
                token_sha256,
                scopes: entry.scopes.into_iter().collect(),
                max_in_flight: entry.max_in_flight,
                distributions,
                architectures,
                driver_versions,
            }));
        }
        Ok(Self { list })
    }

    /// Reads and validates a principals file.
    pub fn from_file(path: &Path) -> Result<Self, PrincipalsError> {
        let text = std::fs::read_to_string(path).map_err(|source| PrincipalsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The principal whose token this is. Every digest is compared, in constant time, whatever
    /// matches, so timing tells nothing about which or how many principals exist.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Principal>> {
        let candidate = digest(token);
        let mut found = None;
        for principal in &self.list {
            if bool::from(principal.token_sha256.ct_eq(&candidate)) {
                found = Some(Arc::clone(principal));
            }
        }
        found
    }

    /// How many principals there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Who is calling: a principal, or an anonymous client (where the service allows anonymous calls).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The authenticated principal, if any.
    pub principal: Option<Arc<Principal>>,
    /// The client's address (after trusted proxies).
    pub client: IpAddr,
}

/// Scopes an anonymous caller holds where anonymous calls are allowed: it may ask for builds, follow
/// them and report its runs (a report creates no build, and whoever may create build demand
/// anonymously may say what it runs), never administer.
const ANONYMOUS_SCOPES: [Scope; 3] = [Scope::RequestBuild, Scope::ReadStatus, Scope::Report];

impl Caller {
    /// The name recorded for this caller: the principal's, else `anonymous@<address>`.
    pub fn name(&self) -> String {
        match &self.principal {
            Some(principal) => principal.name().to_owned(),
            None => format!("anonymous@{}", self.client),
        }
    }

    /// Whether the caller holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        match &self.principal {
            Some(principal) => principal.has(scope),
            None => ANONYMOUS_SCOPES.contains(&scope),
        }
    }

    /// The rate-limit and in-flight-cap key.
    fn bucket_key(&self) -> String {
        match &self.principal {
            Some(principal) => format!("principal:{}", principal.name()),
            None => format!("ip:{}", self.client),
        }
    }
}

/// How callers are authenticated and limited; shared by every request and swapped on reload.
#[derive(Debug)]
pub struct AccessPolicy {
    principals: RwLock<Option<Arc<Principals>>>,
    principals_file: Option<PathBuf>,
    allow_anonymous: bool,
    trusted_proxies: Vec<IpNet>,
    limiter: Option<RateLimiter>,
    client_slots: Option<ClientSlots>,
}

/// Requests in flight per client address, at most `cap` each.
#[derive(Debug)]
struct ClientSlots {
    cap: usize,
    taken: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One request's place among its client's requests in flight, given back when the request ends
/// (answered, or dropped because the client hung up).
struct ClientSlot {
    client: IpAddr,
    taken: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ClientSlots {
    fn enter(&self, client: IpAddr) -> Option<ClientSlot> {
        let mut taken = self
            .taken
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = taken.entry(client).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            client,
            taken: Arc::clone(&self.taken),
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut taken = self
            .taken
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = taken.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                taken.remove(&self.client);
            }
        }
    }
}

/// Settings of [`AccessPolicy`].
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// Named principals; `None` means every caller is anonymous.
    pub principals: Option<Principals>,
    /// Where `principals` came from, re-read on [`AccessPolicy::reload`].
    pub principals_file: Option<PathBuf>,
    /// Callers without a token are served as anonymous even when principals are configured.
    /// Without principals, anonymous service is allowed only on a loopback listener unless this is set.
    pub allow_anonymous: bool,
    /// Peers whose `Forwarded` / `X-Forwarded-For` headers name the real client.
    pub trusted_proxies: Vec<IpNet>,
    /// Requests per minute and burst per caller, when limited.
    pub rate_limit: Option<(u32, u32)>,
}

/// Why the service must not start with this access configuration.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to serve {address} to anyone who reaches it: no principal is configured \
     (give --principals-file, or --allow-anonymous to accept anonymous build demand on purpose)"
)]
pub struct AnonymousExposure {
    /// The listening address.
    pub address: SocketAddr,
}

impl AccessConfig {
    /// Refuses anonymous service on an address other machines can reach, unless asked for.
    pub fn check_exposure(&self, address: SocketAddr) -> Result<(), AnonymousExposure> {
        if self.principals.is_none() && !self.allow_anonymous && !address.ip().is_loopback() {
            return Err(AnonymousExposure { address });
        }
        Ok(())
    }
}

impl AccessPolicy {
    /// The policy for `config`.
    pub fn new(config: AccessConfig) -> Self {
        Self {
            principals: RwLock::new(config.principals.map(Arc::new)),
            principals_file: config.principals_file,
            allow_anonymous: config.allow_anonymous,
            trusted_proxies: config.trusted_proxies,
            limiter: config
                .rate_limit
                .map(|(per_minute, burst)| RateLimiter::new(per_minute, burst)),
            client_slots: None,
        }
    }

    /// Allows each client address at most `cap` requests in flight at once (`None`: no cap).
    pub fn with_client_cap(mut self, cap: Option<usize>) -> Self {
        self.client_slots = cap.map(|cap| ClientSlots {
            cap: cap.max(1),
            taken: Arc::default(),
        });
        self
    }

    fn principals(&self) -> Option<Arc<Principals>> {
        self.principals
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Re-reads the principals file. A broken file leaves the current principals in force: a typo
    /// during an edit must neither lock the fleet out nor open the service up.
    pub fn reload(&self) -> Result<usize, PrincipalsError> {
        let Some(path) = &self.principals_file else {
            return Ok(self.principals().map_or(0, |p| p.len()));
        };
        let fresh = Principals::from_file(path)?;
        let count = fresh.len();
        *self
            .principals
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(fresh));
        Ok(count)
    }

    /// The client address: the peer, or — when the peer is a trusted proxy — the nearest address
    /// in `X-Forwarded-For` that is not itself a trusted proxy.
    fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .map(|hop| hop.parse::<IpAddr>())
            .collect::<Result<_, _>>()
            // A malformed chain is not evidence of anything: the proxy itself is the client then.
            .unwrap_or_default();
        forwarded
            .into_iter()
            .rev()
            .find(|hop| !self.is_trusted(*hop))
            .unwrap_or(peer)
    }

    fn is_trusted(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies
            .iter()
            .any(|net| net.contains(&address))
    }

    /// Who `headers` and `peer` say the caller is, or the refusal.
    fn identify(&self, peer: IpAddr, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let client = self.client_address(peer, headers);
        let principals = self.principals();
        match (bearer(headers), principals) {
            (Some(token), Some(principals)) => match principals.authenticate(token) {
                Some(principal) => Ok(Caller {
                    principal: Some(principal),
                    client,
                }),
                None => Err(Refusal::Unauthorized("the bearer token is not known")),
            },
            (None, Some(_)) if !self.allow_anonymous => {
                Err(Refusal::Unauthorized("a bearer token is required"))
            }
            // Without principals a token proves nothing; it is ignored rather than trusted.
            _ => Ok(Caller {
                principal: None,
                client,
            }),
        }
    }
}

enum Refusal {
    Unauthorized(&'static str),
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Authenticates the caller, then takes one token from its rate bucket; the [`Caller`] is left in
/// the request's extensions for the scope checks and the handlers.
pub async fn authenticate(
    State(policy): State<Arc<AccessPolicy>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |ConnectInfo(address)| {
            address.ip()
        });
    let caller = match policy.identify(peer, request.headers()) {
        Ok(caller) => caller,
        Err(Refusal::Unauthorized(why)) => {
            metrics::counter!(telemetry::REQUESTS, "outcome" => "unauthorized").increment(1);
            tracing::info!(client = %peer, reason = why, "unauthenticated request refused");
            let mut response = (
                StatusCode::UNAUTHORIZED,
                error_body(why, Some("authorization"), "bearer token of a principal"),
            )
                .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    };
    if let Some(limiter) = &policy.limiter
        && let Err(wait) = limiter.take(&caller.bucket_key(), Instant::now())
    {
        metrics::counter!(telemetry::REQUESTS, "outcome" => "rate_limited").increment(1);
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        return too_many(
            "too many requests",
            &format!("retry after {seconds} s"),
            seconds,
        );
    }
    // Held until the answer is ready (or the client hangs up and the request is dropped).
    let _slot = match &policy.client_slots {
        Some(slots) => match slots.enter(caller.client) {
            Some(slot) => Some(slot),
            None => {
                metrics::counter!(telemetry::REQUESTS, "outcome" => "too_many_in_flight")
                    .increment(1);
                tracing::info!(client = %caller.client, cap = slots.cap, "client over its requests in flight");
                return too_many(
                    "too many requests in flight from this client",
                    &format!("a client may have at most {} requests in flight", slots.cap),
                    1,
                );
            }
        },
        None => None,
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Refuses callers without `scope` (403). Runs after [`authenticate`].
pub async fn require_scope(scope: Scope, request: Request, next: Next) -> Response {
    match request.extensions().get::<Caller>() {
        Some(caller) if caller.has(scope) => next.run(request).await,
        Some(caller) => {
            metrics::counter!(telemetry::REQUESTS, "outcome" => "forbidden").increment(1);
            tracing::info!(principal = %caller.name(), scope = scope.as_str(), "scope missing");
            (
                StatusCode::FORBIDDEN,
                error_body(
                    &format!("'{}' lacks the {} scope", caller.name(), scope.as_str()),
                    Some("authorization"),
                    &format!("requires scope {}", scope.as_str()),
                ),
            )
                .into_response()
        }
        // A route wired without `authenticate` is a programming error; refuse rather than serve.
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            error_body("caller not identified", None, "internal"),
        )
            .into_response(),
    }
}

/// A 429 with `Retry-After`.
pub fn too_many(error: &str, rule: &str, retry_after_seconds: u64) -> Response {
    let mut response =
        (StatusCode::TOO_MANY_REQUESTS, error_body(error, None, rule)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
    response
}

/// Per-caller token buckets, at most [`MAX_BUCKETS`] of them.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<lru::LruCache<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Callers remembered at once. Forgetting the least recently seen caller hands it a full bucket
/// later, which is the cheapest thing to give away: it has been quiet the longest.
pub const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// `per_minute` requests per minute sustained, bursts of up to `burst`.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self::with_capacity(per_minute, burst, MAX_BUCKETS)
    }

    fn with_capacity(per_minute: u32, burst: u32, capacity: usize) -> Self {
        Self {
            per_second: f64::from(per_minute.max(1)) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// Takes one token for `caller`, or says how long until one is available.
    pub fn take(&self, caller: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let burst = self.burst;
        let bucket = buckets.get_or_insert_mut(caller.to_owned(), || Bucket {
            tokens: burst,
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

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN_A: &str = "fleet-token-0123456789";
    const TOKEN_B: &str = "admin-token-9876543210";

    fn file() -> String {
        format!(
            "[[principal]]\nname = \"fleet\"\ntoken_sha256 = \"{}\"\nscopes = [\"request-build\", \"read-status\"]\n\
             max_in_flight = 2\ndistributions = [\"debian\"]\narchitectures = [\"amd64\"]\n\n\
             [[principal]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nscopes = [\"admin\"]\n",
            token_digest_hex(TOKEN_A),
            token_digest_hex(TOKEN_B)
        )
    }

    fn identity(distribution: &str, arch: &str) -> KernelIdentity {
        let release = if arch == "x86_64" {
            "6.1.0-47-amd64"
        } else {
            "6.1.0-47-arm64"
        };
        let (release, version) = if distribution == "fedora" {
            (
                if arch == "x86_64" {
                    "6.14.0-63.fc42.x86_64"
                } else {
                    "6.14.0-63.fc42.aarch64"
                },
                None,
            )
        } else {
            (release, Some("12".to_owned()))
        };
        KernelIdentity::from_input(&kernel_id::IdentityInput {
            kernel_version: release.into(),
            architecture: arch.into(),
            distribution: distribution.into(),
            distro_version: version,
            driver_version: "v0.1.2".into(),
        })
        .expect("identity")
    }

    #[test]
    fn tokens_authenticate_their_principal_only() {
        let principals = Principals::parse(&file()).expect("valid file");
        assert_eq!(principals.len(), 2);
        let fleet = principals.authenticate(TOKEN_A).expect("fleet");
        assert_eq!(fleet.name(), "fleet");
        assert!(fleet.has(Scope::RequestBuild) && !fleet.has(Scope::Admin));
        assert_eq!(principals.authenticate(TOKEN_B).unwrap().name(), "ops");
        assert!(principals.authenticate("fleet-token-012345678").is_none());
        assert!(principals.authenticate("").is_none());
        assert!(!format!("{fleet:?}").contains(&token_digest_hex(TOKEN_A)));
    }

    #[test]
    fn limits_name_the_field_they_refuse() {
        let principals = Principals::parse(&file()).unwrap();
        let fleet = principals.authenticate(TOKEN_A).unwrap();
        assert!(fleet.permits(&identity("debian", "x86_64")).is_ok());
        let (field, rule) = fleet.permits(&identity("fedora", "x86_64")).unwrap_err();
        assert_eq!(field, "distribution");
        assert!(rule.contains("fleet") && rule.contains("fedora"), "{rule}");
        let (field, _) = fleet.permits(&identity("debian", "aarch64")).unwrap_err();
        assert_eq!(field, "architecture");
        let ops = principals.authenticate(TOKEN_B).unwrap();
        assert!(ops.permits(&identity("fedora", "aarch64")).is_ok());
        // Reports are held to the same limits, and the refusal says what was refused.
        let (field, rule) = fleet
            .permits_report(&identity("fedora", "x86_64"))
            .unwrap_err();
        assert_eq!(field, "distribution");
        assert!(rule.contains("may not report"), "{rule}");
        assert!(fleet.permits_report(&identity("debian", "x86_64")).is_ok());
    }

    #[test]
    fn built_in_principal_names_are_reserved() {
        let error = Principals::parse(&format!(
            "[[principal]]\nname = \"watcher\"\ntoken_sha256 = \"{}\"\nscopes = [\"admin\"]\n",
            token_digest_hex(TOKEN_A)
        ))
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("name") && error.contains("built into the service"),
            "{error}"
        );
        let watcher = Principal::built_in(WATCHER_PRINCIPAL, &[Scope::RequestBuild]);
        assert!(watcher.has(Scope::RequestBuild) && !watcher.has(Scope::Admin));
        assert_eq!(watcher.name(), "watcher");
    }

    #[test]
    fn the_report_scope_is_spelled_report_in_principals_files() {
        let principals = Principals::parse(&format!(
            "[[principal]]\nname = \"nodes\"\ntoken_sha256 = \"{}\"\nscopes = [\"request-build\", \"report\"]\n",
            token_digest_hex(TOKEN_A)
        ))
        .unwrap();
        let nodes = principals.authenticate(TOKEN_A).unwrap();
        assert!(nodes.has(Scope::Report) && !nodes.has(Scope::ReadStatus));
        assert_eq!(Scope::Report.as_str(), "report");
        let anonymous = Caller {
            principal: None,
            client: IpAddr::from([127, 0, 0, 1]),
        };
        assert!(anonymous.has(Scope::Report) && !anonymous.has(Scope::Admin));
    }

    #[test]
    fn bad_files_are_refused_naming_the_rule() {
        let refuse = |text: &str, needle: &str| {
            let error = Principals::parse(text).expect_err(text).to_string();
            assert!(error.contains(needle), "{error} lacks {needle}");
        };
        let hash = token_digest_hex(TOKEN_A);
        refuse("", "names no principal");
        refuse(
            &format!("[[principal]]\nname = \"a\"\ntoken_sha256 = \"{hash}\"\nscopes = []\n"),
            "scopes",
        );
        refuse(
            &format!(
                "[[principal]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nscopes = [\"admin\"]\n",
                hash.to_uppercase()
            ),
            "token_sha256",
        );
        refuse(
            "[[principal]]\nname = \"a\"\ntoken_sha256 = \"abc\"\nscopes = [\"admin\"]\n",
            "token_sha256",
        );
        refuse(
            &format!(
                "[[principal]]\nname = \"a\"\ntoken_sha256 = \"{hash}\"\nscopes = [\"everything\"]\n"
            ),
            "everything",
        );
        refuse(
            &format!(
                "[[principal]]\nname = \"a b\"\ntoken_sha256 = \"{hash}\"\nscopes = [\"admin\"]\n"
            ),
            "name",
        );
        refuse(
            &format!(
                "[[principal]]\nname = \"a\"\ntoken_sha256 = \"{hash}\"\nscopes = [\"admin\"]\n\
                 [[principal]]\nname = \"b\"\ntoken_sha256 = \"{hash}\"\nscopes = [\"admin\"]\n"
            ),
            "earlier principal",
        );
        refuse(
            &format!(
                "[[principal]]\nname = \"a\"\ntoken_sha256 = \"{hash}\"\nscopes = [\"admin\"]\ndistributions = [\"gentoo\"]\n"
            ),
            "distributions",
        );
        refuse(
            &format!(
                "[[principal]]\nname = \"a\"\ntoken_sha256 = \"{hash}\"\nscopes = [\"admin\"]\ntoken = \"x\"\n"
            ),
            "token",
        );
    }

    #[test]
    fn unknown_tokens_are_refused_and_anonymous_needs_permission() {
        let principals = Principals::parse(&file()).unwrap();
        let policy = AccessPolicy::new(AccessConfig {
            principals: Some(principals.clone()),
            ..AccessConfig::default()
        });
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let mut headers = HeaderMap::new();
        assert!(policy.identify(peer, &headers).is_err(), "no token");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer made-up-token-000000"),
        );
        assert!(policy.identify(peer, &headers).is_err(), "unknown token");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {TOKEN_A}")).unwrap(),
        );
        assert_eq!(
            policy.identify(peer, &headers).ok().unwrap().name(),
            "fleet"
        );

        let open = AccessPolicy::new(AccessConfig {
            principals: Some(principals),
            allow_anonymous: true,
            ..AccessConfig::default()
        });
        let anonymous = open.identify(peer, &HeaderMap::new()).ok().unwrap();
        assert_eq!(anonymous.name(), "anonymous@127.0.0.1");
        assert!(anonymous.has(Scope::RequestBuild) && !anonymous.has(Scope::Admin));
    }

    #[test]
    fn anonymous_service_is_refused_off_loopback() {
        let config = AccessConfig::default();
        assert!(
            config
                .check_exposure("127.0.0.1:8080".parse().unwrap())
                .is_ok()
        );
        assert!(config.check_exposure("[::1]:8080".parse().unwrap()).is_ok());
        let error = config
            .check_exposure("0.0.0.0:8080".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(error.contains("--allow-anonymous"), "{error}");
        let allowed = AccessConfig {
            allow_anonymous: true,
            ..AccessConfig::default()
        };
        assert!(
            allowed
                .check_exposure("0.0.0.0:8080".parse().unwrap())
                .is_ok()
        );
        let with_principals = AccessConfig {
            principals: Some(Principals::parse(&file()).unwrap()),
            ..AccessConfig::default()
        };
        assert!(
            with_principals
                .check_exposure("0.0.0.0:8080".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let policy = AccessPolicy::new(AccessConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..AccessConfig::default()
        });
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 198.51.100.7, 10.1.1.1"),
        );
        let proxy: IpAddr = "10.2.2.2".parse().unwrap();
        let stranger: IpAddr = "192.0.2.50".parse().unwrap();
        // The nearest untrusted hop: everything left of it could have been written by the client.
        assert_eq!(
            policy.client_address(proxy, &headers),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(policy.client_address(stranger, &headers), stranger);
        headers.insert("x-forwarded-for", HeaderValue::from_static("not-an-ip"));
        assert_eq!(policy.client_address(proxy, &headers), proxy);
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
    fn bucket_memory_is_bounded_and_forgets_the_quietest_caller() {
        let limiter = RateLimiter::with_capacity(60, 1, 3);
        let now = Instant::now();
        for caller in ["a", "b", "c"] {
            limiter.take(caller, now).unwrap();
        }
        assert!(limiter.take("a", now).is_err(), "a is empty");
        limiter.take("d", now).unwrap();
        assert_eq!(limiter.remembered(), 3);
        // b was the least recently used and is forgotten; a (just touched) is still empty.
        assert!(limiter.take("b", now).is_ok());
        assert!(limiter.take("a", now).is_err());
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

    #[test]
    fn a_client_address_gets_at_most_its_cap_of_requests_in_flight_and_slots_come_back() {
        let policy = AccessPolicy::new(AccessConfig::default()).with_client_cap(Some(2));
        let slots = policy.client_slots.as_ref().expect("capped");
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let first = slots.enter(a).expect("first");
        let second = slots.enter(a).expect("second");
        assert!(slots.enter(a).is_none(), "a third is over the cap");
        let other = slots.enter(b).expect("another address has its own cap");
        drop(first);
        let third = slots.enter(a).expect("a slot came back");
        drop((second, third, other));
        assert!(slots.taken.lock().expect("lock").is_empty());
        assert!(
            AccessPolicy::new(AccessConfig::default())
                .with_client_cap(None)
                .client_slots
                .is_none()
        );
    }
}
