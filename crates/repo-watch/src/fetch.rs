//! The seam between the watcher and the network: [`IndexFetcher`] does one conditional GET of one
//! index file, so the same watcher logic runs against real mirrors ([`HttpFetcher`]) and loopback
//! test servers. A request carries the validators (`ETag`, `Last-Modified`) stored from the last
//! answer; `304 Not Modified` comes back as [`Fetched::NotModified`] and costs one small request.
//! Bodies are bounded: an answer larger than the request's limit is an error naming the URL, not
//! a full disk or memory.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which kind of index a request is for (metrics and byte counts are kept per kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IndexKind {
    /// apt `dists/<suite>/InRelease`.
    InRelease,
    /// apt `.../binary-<arch>/Packages.xz` (or `.gz`).
    Packages,
    /// rpm-md `repodata/repomd.xml`.
    Repomd,
    /// rpm-md primary metadata.
    Primary,
}

impl IndexKind {
    /// Every kind.
    pub const ALL: [IndexKind; 4] = [
        IndexKind::InRelease,
        IndexKind::Packages,
        IndexKind::Repomd,
        IndexKind::Primary,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            IndexKind::InRelease => "inrelease",
            IndexKind::Packages => "packages",
            IndexKind::Repomd => "repomd",
            IndexKind::Primary => "primary",
        }
    }
}

/// HTTP cache validators of a stored answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    /// `ETag`, sent back as `If-None-Match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// `Last-Modified`, sent back as `If-Modified-Since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

impl Validators {
    /// Whether there is anything to send.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// One GET.
#[derive(Debug, Clone, Copy)]
pub struct FetchRequest<'a> {
    /// The absolute URL.
    pub url: &'a str,
    /// What it is.
    pub kind: IndexKind,
    /// Validators of the stored copy: the request is conditional when given.
    pub validators: Option<&'a Validators>,
    /// Largest body accepted.
    pub max_bytes: u64,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// `304`: the stored copy is current.
    NotModified,
    /// `200` with its body and the validators to store.
    Body {
        /// The body, at most the request's `max_bytes`.
        bytes: Vec<u8>,
        /// `ETag` / `Last-Modified` of the answer.
        validators: Validators,
    },
    /// `404` / `410`: no such file (a suite or compression the mirror does not publish).
    Missing,
}

/// Why a fetch failed; each names the URL and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The server answered with a status other than 200, 304, 404 or 410.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The body exceeded the request's limit.
    #[error("GET {url}: the body is larger than {max_bytes} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        max_bytes: u64,
    },
    /// Connecting, sending or reading failed (timeouts included).
    #[error("GET {url}: {message}")]
    Transport {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
}

/// Fetches index files (see the module documentation).
#[async_trait::async_trait]
pub trait IndexFetcher: Send + Sync {
    /// One GET, conditional when the request carries validators.
    async fn fetch(&self, request: FetchRequest<'_>) -> Result<Fetched, FetchError>;
}

/// The real fetcher: reqwest, with a connect timeout and a timeout per request. reqwest is built
/// without transparent decompression here, so the bytes counted and hashed are the bytes sent.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
}

/// Timeout of one whole request (headers and body): a 10 MB Packages.xz from a slow mirror fits.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

impl HttpFetcher {
    /// A fetcher with a 10 s connect timeout and `request_timeout` per request.
    pub fn new(request_timeout: Duration) -> Result<Self, FetchError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(request_timeout)
            .user_agent(concat!("kdriver-repo-watch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Transport {
                url: String::new(),
                message: format!("building the HTTP client: {e}"),
            })?;
        Ok(Self { client })
    }
}

#[async_trait::async_trait]
impl IndexFetcher for HttpFetcher {
    async fn fetch(&self, request: FetchRequest<'_>) -> Result<Fetched, FetchError> {
        let url = request.url;
        let transport = |e: reqwest::Error| FetchError::Transport {
            url: url.to_owned(),
            message: e.to_string(),
        };
        let mut builder = self.client.get(url);
        if let Some(validators) = request.validators {
            if let Some(etag) = &validators.etag {
                builder = builder.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            if let Some(last_modified) = &validators.last_modified {
                builder = builder.header(reqwest::header::IF_MODIFIED_SINCE, last_modified);
            }
        }
        let mut response = builder.send().await.map_err(transport)?;
        match response.status().as_u16() {
            200 => {}
            304 => return Ok(Fetched::NotModified),
            404 | 410 => return Ok(Fetched::Missing),
            status => {
                return Err(FetchError::Status {
                    url: url.to_owned(),
                    status,
                });
            }
        }
        let too_large = || FetchError::TooLarge {
            url: url.to_owned(),
            max_bytes: request.max_bytes,
        };
        if response
            .content_length()
            .is_some_and(|length| length > request.max_bytes)
        {
            return Err(too_large());
        }
        let header = |name: reqwest::header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let validators = Validators {
            etag: header(reqwest::header::ETAG),
            last_modified: header(reqwest::header::LAST_MODIFIED),
        };
        // Read chunk by chunk, so a body without (or lying about) its length stops at the limit.
        let mut bytes = Vec::with_capacity(
            usize::try_from(
                response
                    .content_length()
                    .unwrap_or(0)
                    .min(request.max_bytes),
            )
            .unwrap_or(0),
        );
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if (bytes.len() + chunk.len()) as u64 > request.max_bytes {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Fetched::Body { bytes, validators })
    }
}
