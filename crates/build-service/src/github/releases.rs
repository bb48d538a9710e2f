//! Existence check against GitHub Releases: `GET /repos/{o}/{r}/releases/tags/{tag}` with an ETag
//! conditional request (a 304 costs no primary quota), a positive cache (a published asset does not
//! vanish, so once found it is never asked for again), and single-flight lookups (concurrent checks for
//! the same release share one request).
//!
//! Draft releases are invisible to the tag endpoint; a release the workflow is still uploading to is
//! therefore "not found" until it is published, which is exactly "not yet available" for a node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use http::StatusCode;
use kernel_id::{DriverName, KernelIdentity, ReleaseLayout};
use serde::Deserialize;

use super::api::{ApiClient, ApiRequest, CallError, Endpoint};
use super::cache::BoundedLru;
use crate::backend::ArtifactRef;

/// The parts of a release answer the backend uses. Own, tolerant struct: octocrab's `Release` model
/// requires many fields a GitHub Enterprise Server or a simulator may omit.
#[derive(Debug, Deserialize)]
struct ReleaseJson {
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    assets: Vec<AssetJson>,
}

#[derive(Debug, Deserialize)]
struct AssetJson {
    name: String,
    /// `uploaded` once complete; `starter` while an upload is in progress.
    #[serde(default)]
    state: Option<String>,
    browser_download_url: String,
}

/// A published release, reduced to what the lookups need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReleaseSummary {
    /// All assets, complete or not (GitHub's 1,000-per-release limit counts them all).
    pub asset_count: usize,
    /// Completely uploaded assets: name -> `browser_download_url`.
    pub uploaded: HashMap<String, String>,
}

/// Result of looking a release up by tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReleaseLookup {
    /// No published release has this tag.
    Absent,
    Present(Arc<ReleaseSummary>),
}

type SharedLookup = Shared<BoxFuture<'static, Result<ReleaseLookup, CallError>>>;

/// Release lookups with their caches.
pub(crate) struct ReleaseFinder {
    api: Arc<ApiClient>,
    repo_path: String,
    layout: ReleaseLayout,
    /// Request path -> (ETag, what that answer said).
    etags: BoundedLru<String, (String, ReleaseLookup)>,
    /// (tag, file name) -> download URL of an asset seen published.
    found: BoundedLru<(String, String), String>,
    in_flight: Mutex<HashMap<String, SharedLookup>>,
}

impl std::fmt::Debug for ReleaseFinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseFinder")
            .field("repo_path", &self.repo_path)
            .field("layout", &self.layout)
            .finish()
    }
}

impl ReleaseFinder {
    pub(crate) fn new(api: Arc<ApiClient>, repo_path: String, layout: ReleaseLayout) -> Self {
        let tuning = api.tuning().clone();
        Self {
            api,
            repo_path,
            layout,
            etags: BoundedLru::new(tuning.etag_cache_entries),
            found: BoundedLru::new(tuning.found_cache_entries),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The published package for `identity`, if any.
    ///
    /// With the `per-driver-version` layout, a release that already holds GitHub's maximum of assets but
    /// not this one is refused as a permanent error: the build could never publish there.
    pub(crate) async fn find(
        self: &Arc<Self>,
        driver: &DriverName,
        identity: &KernelIdentity,
    ) -> Result<Option<ArtifactRef>, CallError> {
        let tag = self.layout.release_tag(driver, identity);
        let file = identity.package_file_name(driver);
        let key = (tag, file);
        if let Some(download_url) = self.found.get(&key) {
            return Ok(Some(ArtifactRef { download_url }));
        }
        let (tag, file) = key;
        let lookup = self.lookup_shared(&tag).await?;
        let ReleaseLookup::Present(summary) = lookup else {
            return Ok(None);
        };
        if let Some(url) = summary.uploaded.get(&file) {
            self.found.insert((tag, file), url.clone());
            return Ok(Some(ArtifactRef {
                download_url: url.clone(),
            }));
        }
        if self.layout == ReleaseLayout::PerDriverVersion
            && summary.asset_count >= ReleaseLayout::MAX_ASSETS_PER_RELEASE
        {
            return Err(CallError::Permanent(format!(
                "release {tag} already holds {} assets, GitHub's limit per release, and {file} is not among them: \
                 it can never be published there; use the per-artifact release layout",
                summary.asset_count
            )));
        }
        Ok(None)
    }

    /// One lookup per tag at a time: callers arriving while it runs share its answer.
    async fn lookup_shared(self: &Arc<Self>, tag: &str) -> Result<ReleaseLookup, CallError> {
        let shared = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            match in_flight.get(tag) {
                Some(existing) => existing.clone(),
                None => {
                    let this = Arc::clone(self);
                    let owned_tag = tag.to_owned();
                    let fut: BoxFuture<'static, Result<ReleaseLookup, CallError>> =
                        async move { this.lookup(&owned_tag).await }.boxed();
                    let shared = fut.shared();
                    in_flight.insert(tag.to_owned(), shared.clone());
                    shared
                }
            }
        };
        let result = shared.clone().await;
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if in_flight
            .get(tag)
            .is_some_and(|current| current.ptr_eq(&shared))
        {
            in_flight.remove(tag);
        }
        result
    }

    async fn lookup(&self, tag: &str) -> Result<ReleaseLookup, CallError> {
        let path = format!(
            "{}/releases/tags/{}",
            self.repo_path,
            kernel_id::percent_encode_segment(tag)
        );
        let cached = self.etags.get(&path);
        let mut request = ApiRequest::get(Endpoint::ReleaseByTag, path.clone());
        request.if_none_match = cached.as_ref().map(|(etag, _)| etag.clone());
        let response = self.api.send_once(&request).await?;
        let lookup = match response.status {
            StatusCode::NOT_MODIFIED => match cached {
                Some((_, lookup)) => return Ok(lookup),
                // We never send If-None-Match without a cached entry; a 304 regardless is a broken proxy.
                None => return Err(CallError::Ambiguous(format!("unexpected 304 for {path}"))),
            },
            StatusCode::NOT_FOUND => ReleaseLookup::Absent,
            StatusCode::OK => {
                let release: ReleaseJson = serde_json::from_slice(&response.body)
                    .map_err(|e| CallError::Ambiguous(format!("unreadable release {tag}: {e}")))?;
                if release.draft {
                    // The tag endpoint does not return drafts; treat one anyway as unpublished.
                    ReleaseLookup::Absent
                } else {
                    let asset_count = release.assets.len();
                    let uploaded = release
                        .assets
                        .into_iter()
                        .filter(|a| a.state.as_deref().is_none_or(|s| s == "uploaded"))
                        .map(|a| (a.name, a.browser_download_url))
                        .collect();
                    ReleaseLookup::Present(Arc::new(ReleaseSummary {
                        asset_count,
                        uploaded,
                    }))
                }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(CallError::Permanent(format!(
                    "release lookup {tag} refused ({}): {}",
                    response.status,
                    response.error_text()
                )));
            }
            other => {
                return Err(CallError::Ambiguous(format!(
                    "release lookup {tag} answered {other}: {}",
                    response.error_text()
                )));
            }
        };
        match response.etag() {
            Some(etag) => self.etags.insert(path, (etag, lookup.clone())),
            None => {
                self.etags.remove(&path);
            }
        }
        Ok(lookup)
    }
}
