//! The driver repository on GitHub as a [`SourceRepository`]: its tags listed with
//! `GET /repos/{owner}/{repo}/git/matching-refs/tags` (paginated; each page conditional on its last
//! ETag, so an unchanged listing costs 304s, which are free), annotated tags peeled with
//! `GET /repos/{owner}/{repo}/git/tags/{tag_sha}` (a tag object never changes, so each is asked
//! once). Requests go through the backend's own [`ApiClient`]: the same auth, rate-limit handling
//! and single-attempt policy; the resolver above decides when to list again.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::StatusCode;
use kernel_id::SourceCommit;
use serde::Deserialize;

use super::api::{ApiClient, ApiRequest, ApiResponse, CallError, Endpoint};
use super::cache::BoundedLru;
use crate::source::{SourceError, SourceRepository};

/// Refs per page asked for (GitHub's maximum).
const PER_PAGE: usize = 100;
/// At most this many pages (10,000 tags).
const MAX_PAGES: u32 = 100;
/// Annotated tags of annotated tags are followed this deep.
const MAX_PEEL: usize = 4;

#[derive(Debug, Clone, Deserialize)]
struct RefJson {
    #[serde(rename = "ref")]
    name: String,
    object: ObjectJson,
}

#[derive(Debug, Clone, Deserialize)]
struct ObjectJson {
    #[serde(rename = "type")]
    kind: String,
    sha: String,
}

#[derive(Debug, Deserialize)]
struct TagObjectJson {
    object: ObjectJson,
}

/// See the module documentation.
pub(crate) struct GitHubTags {
    api: Arc<ApiClient>,
    repo_path: String,
    uri: String,
    /// Page path -> (ETag, its refs).
    pages: BoundedLru<String, (String, Vec<RefJson>)>,
    /// Tag object sha -> the commit it (eventually) names; `None`: it names no commit.
    peeled: BoundedLru<String, Option<SourceCommit>>,
}

impl std::fmt::Debug for GitHubTags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubTags")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

fn unavailable(error: CallError) -> SourceError {
    SourceError(format!("GitHub: {error}"))
}

fn refused(what: &str, response: &ApiResponse) -> SourceError {
    SourceError(format!(
        "GitHub: {what} answered {}: {}",
        response.status,
        response.error_text()
    ))
}

impl GitHubTags {
    /// The tags of `https://github.com/{owner}/{repo}`, read at `repo_path` (`/repos/{o}/{r}`).
    pub(crate) fn new(api: Arc<ApiClient>, repo_path: String, owner: &str, repo: &str) -> Self {
        let entries = api.tuning().etag_cache_entries;
        Self {
            api,
            repo_path,
            uri: format!("https://github.com/{owner}/{repo}"),
            pages: BoundedLru::new(MAX_PAGES as usize),
            peeled: BoundedLru::new(entries),
        }
    }

    /// One page of `refs/tags*`, from the ETag cache when GitHub says it is unchanged.
    async fn page(&self, page: u32) -> Result<(Vec<RefJson>, bool), SourceError> {
        let path = format!(
            "{}/git/matching-refs/tags?per_page={PER_PAGE}&page={page}",
            self.repo_path
        );
        let cached = self.pages.get(&path);
        let mut request = ApiRequest::get(Endpoint::MatchingRefs, path.clone());
        request.if_none_match = cached.as_ref().map(|(etag, _)| etag.clone());
        let response = self.api.send_once(&request).await.map_err(unavailable)?;
        let more = response
            .headers
            .get(http::header::LINK)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|link| link.contains("rel=\"next\""));
        match response.status {
            StatusCode::NOT_MODIFIED => match cached {
                Some((_, refs)) => {
                    // A 304 may come without `Link`: a full page may have a next one.
                    let full = refs.len() >= PER_PAGE;
                    Ok((refs, more || full))
                }
                None => Err(SourceError(format!("GitHub: unexpected 304 for {path}"))),
            },
            StatusCode::OK => {
                let refs: Vec<RefJson> =
                    serde_json::from_slice(&response.body).map_err(|error| {
                        SourceError(format!("GitHub: unreadable refs of {path}: {error}"))
                    })?;
                match response.etag() {
                    Some(etag) => self.pages.insert(path, (etag, refs.clone())),
                    None => {
                        self.pages.remove(&path);
                    }
                }
                // Only a full page with a `next` link has a next page (a server that does not
                // paginate sends everything at once, without `Link`).
                let full = refs.len() >= PER_PAGE;
                Ok((refs, more && full))
            }
            // An empty repository has no refs at all.
            StatusCode::CONFLICT => Ok((Vec::new(), false)),
            _ => Err(refused(&path, &response)),
        }
    }

    /// The commit the tag object `sha` names, following tags of tags.
    async fn peel(&self, sha: &str) -> Result<Option<SourceCommit>, SourceError> {
        if let Some(known) = self.peeled.get(&sha.to_owned()) {
            return Ok(known);
        }
        let mut current = sha.to_owned();
        let mut found = None;
        for _ in 0..MAX_PEEL {
            let path = format!(
                "{}/git/tags/{}",
                self.repo_path,
                kernel_id::percent_encode_segment(&current)
            );
            let response = self
                .api
                .send_once(&ApiRequest::get(Endpoint::GetTag, path.clone()))
                .await
                .map_err(unavailable)?;
            if response.status == StatusCode::NOT_FOUND {
                break;
            }
            if response.status != StatusCode::OK {
                return Err(refused(&path, &response));
            }
            let tag: TagObjectJson = serde_json::from_slice(&response.body)
                .map_err(|error| SourceError(format!("GitHub: unreadable tag {path}: {error}")))?;
            match tag.object.kind.as_str() {
                "commit" => {
                    found = SourceCommit::parse(&tag.object.sha).ok();
                    break;
                }
                "tag" => current = tag.object.sha,
                _ => break,
            }
        }
        self.peeled.insert(sha.to_owned(), found.clone());
        Ok(found)
    }
}

#[async_trait::async_trait]
impl SourceRepository for GitHubTags {
    fn uri(&self) -> String {
        self.uri.clone()
    }

    async fn list_tags(&self) -> Result<BTreeMap<String, SourceCommit>, SourceError> {
        let mut refs = Vec::new();
        for page in 1..=MAX_PAGES {
            let (listed, more) = self.page(page).await?;
            refs.extend(listed);
            if !more {
                break;
            }
        }
        let mut tags = BTreeMap::new();
        for listed in refs {
            let Some(name) = listed.name.strip_prefix("refs/tags/") else {
                continue;
            };
            let commit = match listed.object.kind.as_str() {
                "commit" => SourceCommit::parse(&listed.object.sha).ok(),
                "tag" => self.peel(&listed.object.sha).await?,
                _ => None,
            };
            match commit {
                Some(commit) => {
                    tags.insert(name.to_owned(), commit);
                }
                None => tracing::debug!(tag = name, "GitHub tag names no commit; left out"),
            }
        }
        Ok(tags)
    }
}
