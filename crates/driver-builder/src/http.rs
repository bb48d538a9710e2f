//! The few HTTP operations the header chain needs (download a file, fetch a small text page,
//! POST an XML-RPC call), behind a trait so the chain runs the same against real mirrors and
//! loopback test servers. The real client is blocking `ureq` with rustls, which keeps the
//! builder a single static binary.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use thiserror::Error;

/// Largest file the builder downloads (kernel-devel RPMs are ~20 MiB, header debs ~10 MiB).
pub const MAX_DOWNLOAD_BYTES: u64 = 1 << 30;
/// Largest text response (directory listings, XML-RPC answers) kept in memory.
pub const MAX_TEXT_BYTES: u64 = 16 << 20;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: response larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: writing {path}: {source}")]
    Write {
        url: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl HttpError {
    /// Whether the server said the thing does not exist (as opposed to being unreachable).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            HttpError::Status {
                status: 404 | 410,
                ..
            }
        )
    }
}

pub trait Http: fmt::Debug + Send + Sync {
    /// Streams `url` into `dest`, returning the number of bytes written.
    fn download(&self, url: &str, dest: &Path) -> Result<u64, HttpError>;
    /// A small text resource (at most [`MAX_TEXT_BYTES`]).
    fn get_text(&self, url: &str) -> Result<String, HttpError>;
    /// POSTs an XML body and returns the (small) XML answer.
    fn post_xml(&self, url: &str, body: &str) -> Result<String, HttpError>;
}

/// The production client.
#[derive(Debug, Clone)]
pub struct UreqHttp {
    agent: ureq::Agent,
}

impl Default for UreqHttp {
    fn default() -> Self {
        UreqHttp::new(Duration::from_secs(600))
    }
}

impl UreqHttp {
    /// `timeout` bounds a whole request, body included.
    pub fn new(timeout: Duration) -> UreqHttp {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .user_agent(concat!("driver-builder/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        UreqHttp { agent }
    }
}

fn map_error(url: &str, error: ureq::Error) -> HttpError {
    match error {
        ureq::Error::StatusCode(status) => HttpError::Status {
            url: url.to_owned(),
            status,
        },
        ureq::Error::BodyExceedsLimit(limit) => HttpError::TooLarge {
            url: url.to_owned(),
            limit,
        },
        other => HttpError::Transport {
            url: url.to_owned(),
            message: other.to_string(),
        },
    }
}

fn read_limited_text(url: &str, mut body: ureq::Body) -> Result<String, HttpError> {
    body.with_config()
        .limit(MAX_TEXT_BYTES)
        .read_to_string()
        .map_err(|error| map_error(url, error))
}

impl Http for UreqHttp {
    fn download(&self, url: &str, dest: &Path) -> Result<u64, HttpError> {
        let response = self
            .agent
            .get(url)
            .call()
            .map_err(|error| map_error(url, error))?;
        let write_error = |source: std::io::Error| HttpError::Write {
            url: url.to_owned(),
            path: dest.display().to_string(),
            source,
        };
        let mut reader = response
            .into_body()
            .into_with_config()
            .limit(MAX_DOWNLOAD_BYTES)
            .reader();
        let mut file = File::create(dest).map_err(write_error)?;
        let mut buffer = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buffer).map_err(|source| {
                // ureq reports its body limit through io::Error; keep it recognisable.
                if source.to_string().contains("limit") {
                    HttpError::TooLarge {
                        url: url.to_owned(),
                        limit: MAX_DOWNLOAD_BYTES,
                    }
                } else {
                    HttpError::Transport {
                        url: url.to_owned(),
                        message: source.to_string(),
                    }
                }
            })?;
            if n == 0 {
                break;
            }
            file.write_all(&buffer[..n]).map_err(write_error)?;
            total += n as u64;
        }
        file.sync_all().map_err(write_error)?;
        Ok(total)
    }

    fn get_text(&self, url: &str) -> Result<String, HttpError> {
        let response = self
            .agent
            .get(url)
            .call()
            .map_err(|error| map_error(url, error))?;
        read_limited_text(url, response.into_body())
    }

    fn post_xml(&self, url: &str, body: &str) -> Result<String, HttpError> {
        let response = self
            .agent
            .post(url)
            .header("Content-Type", "text/xml")
            .send(body)
            .map_err(|error| map_error(url, error))?;
        read_limited_text(url, response.into_body())
    }
}
