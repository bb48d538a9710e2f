//! The endpoints the simulator serves, and the parsing of a request's method and path into one of them.
//!
//! Routing is done by hand instead of with axum's router so that every answer, including "no such route"
//! and malformed ids, has GitHub's JSON error shape and passes through the same auth, rate-limit and fault
//! machinery.

use axum::http::Method;
use percent_encoding::percent_decode_str;

/// One simulated endpoint (method included). Used to count requests and to target injected faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// `GET /rate_limit`
    RateLimit,
    /// `POST /app/installations/{installation_id}/access_tokens` (GitHub App JWT auth)
    CreateInstallationToken,
    /// `GET /repos/{o}/{r}/releases`
    ListReleases,
    /// `POST /repos/{o}/{r}/releases`
    CreateRelease,
    /// `GET /repos/{o}/{r}/releases/tags/{tag}`
    ReleaseByTag,
    /// `GET /repos/{o}/{r}/releases/{id}`
    GetRelease,
    /// `PATCH /repos/{o}/{r}/releases/{id}`
    UpdateRelease,
    /// `GET /repos/{o}/{r}/releases/{id}/assets`
    ListAssets,
    /// `POST /repos/{o}/{r}/releases/{id}/assets?name=` (uploads.github.com on GitHub)
    UploadAsset,
    /// `GET /repos/{o}/{r}/releases/assets/{id}`
    GetAsset,
    /// `POST /repos/{o}/{r}/actions/workflows/{workflow_id}/dispatches`
    DispatchWorkflow,
    /// `GET /repos/{o}/{r}/actions/runs`
    ListRuns,
    /// `GET /repos/{o}/{r}/actions/workflows/{workflow_id}/runs`
    ListWorkflowRuns,
    /// `GET /repos/{o}/{r}/actions/runs/{id}`
    GetRun,
    /// `POST /repos/{o}/{r}/actions/runs/{id}/cancel`
    CancelRun,
    /// `GET /repos/{o}/{r}/git/matching-refs/{ref}` (every ref starting with `refs/{ref}`; paginated)
    MatchingRefs,
    /// `GET /repos/{o}/{r}/git/ref/{ref}` (exactly `refs/{ref}`)
    GetRef,
    /// `GET /repos/{o}/{r}/git/tags/{tag_sha}` (an annotated tag object)
    GetTag,
    /// `GET|HEAD /{o}/{r}/releases/download/{tag}/{name}` (github.com, not the API)
    BrowserDownload,
    /// `GET|HEAD /_storage/{asset_id}/{name}`: where downloads redirect to (GitHub's object storage).
    AssetStorage,
    /// Anything else (answered 404).
    Unknown,
}

impl Route {
    /// Whether the endpoint belongs to the REST API (rate-limited, authenticated, JSON errors) rather than
    /// to github.com or its storage.
    pub fn is_api(self) -> bool {
        !matches!(self, Route::BrowserDownload | Route::AssetStorage)
    }
}

/// A parsed request target: the route and its path parameters (already percent-decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub route: Route,
    pub owner: String,
    pub repo: String,
    /// Tag, workflow id/file name, ref (without `refs/`), tag object sha or file name, depending on
    /// the route.
    pub name: String,
    pub id: u64,
    pub file: String,
}

impl Target {
    fn new(route: Route) -> Self {
        Self {
            route,
            owner: String::new(),
            repo: String::new(),
            name: String::new(),
            id: 0,
            file: String::new(),
        }
    }
}

fn decode(segment: &str) -> String {
    percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

/// Parses a request into its route; ids that are not numbers make the route `Unknown` (GitHub answers 404).
pub(crate) fn parse(method: &Method, path: &str) -> Target {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let patch = method == Method::PATCH;
    let unknown = Target::new(Route::Unknown);
    let with_repo = |route: Route, owner: &str, repo: &str| Target {
        owner: decode(owner),
        repo: decode(repo),
        ..Target::new(route)
    };
    match segments.as_slice() {
        ["rate_limit"] if get => Target::new(Route::RateLimit),
        ["app", "installations", id, "access_tokens"] if post => match id.parse() {
            Ok(id) => Target {
                id,
                ..Target::new(Route::CreateInstallationToken)
            },
            Err(_) => unknown,
        },
        ["repos", o, r, "releases"] if get => with_repo(Route::ListReleases, o, r),
        ["repos", o, r, "releases"] if post => with_repo(Route::CreateRelease, o, r),
        ["repos", o, r, "releases", "tags", tag] if get => Target {
            name: decode(tag),
            ..with_repo(Route::ReleaseByTag, o, r)
        },
        ["repos", o, r, "releases", "assets", id] if get => match id.parse() {
            Ok(id) => Target {
                id,
                ..with_repo(Route::GetAsset, o, r)
            },
            Err(_) => unknown,
        },
        ["repos", o, r, "releases", id] if get || patch => match id.parse() {
            Ok(id) => {
                let route = if get {
                    Route::GetRelease
                } else {
                    Route::UpdateRelease
                };
                Target {
                    id,
                    ..with_repo(route, o, r)
                }
            }
            Err(_) => unknown,
        },
        ["repos", o, r, "releases", id, "assets"] if get || post => match id.parse() {
            Ok(id) => {
                let route = if get {
                    Route::ListAssets
                } else {
                    Route::UploadAsset
                };
                Target {
                    id,
                    ..with_repo(route, o, r)
                }
            }
            Err(_) => unknown,
        },
        ["repos", o, r, "actions", "workflows", wf, "dispatches"] if post => Target {
            name: decode(wf),
            ..with_repo(Route::DispatchWorkflow, o, r)
        },
        ["repos", o, r, "actions", "workflows", wf, "runs"] if get => Target {
            name: decode(wf),
            ..with_repo(Route::ListWorkflowRuns, o, r)
        },
        ["repos", o, r, "actions", "runs"] if get => with_repo(Route::ListRuns, o, r),
        ["repos", o, r, "actions", "runs", id] if get => match id.parse() {
            Ok(id) => Target {
                id,
                ..with_repo(Route::GetRun, o, r)
            },
            Err(_) => unknown,
        },
        ["repos", o, r, "actions", "runs", id, "cancel"] if post => match id.parse() {
            Ok(id) => Target {
                id,
                ..with_repo(Route::CancelRun, o, r)
            },
            Err(_) => unknown,
        },
        ["repos", o, r, "git", "matching-refs", rest @ ..] if get && !rest.is_empty() => Target {
            name: rest.iter().map(|s| decode(s)).collect::<Vec<_>>().join("/"),
            ..with_repo(Route::MatchingRefs, o, r)
        },
        ["repos", o, r, "git", "ref", rest @ ..] if get && !rest.is_empty() => Target {
            name: rest.iter().map(|s| decode(s)).collect::<Vec<_>>().join("/"),
            ..with_repo(Route::GetRef, o, r)
        },
        ["repos", o, r, "git", "tags", sha] if get => Target {
            name: decode(sha),
            ..with_repo(Route::GetTag, o, r)
        },
        ["_storage", id, file] if get => match id.parse() {
            Ok(id) => Target {
                id,
                file: decode(file),
                ..Target::new(Route::AssetStorage)
            },
            Err(_) => unknown,
        },
        [o, r, "releases", "download", tag, file] if get && *o != "repos" => Target {
            name: decode(tag),
            file: decode(file),
            ..with_repo(Route::BrowserDownload, o, r)
        },
        _ => unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_route_and_decodes_segments() {
        let cases = [
            (Method::GET, "/rate_limit", Route::RateLimit),
            (
                Method::POST,
                "/app/installations/77/access_tokens",
                Route::CreateInstallationToken,
            ),
            (Method::GET, "/repos/o/r/releases", Route::ListReleases),
            (Method::POST, "/repos/o/r/releases", Route::CreateRelease),
            (
                Method::GET,
                "/repos/o/r/releases/tags/v1",
                Route::ReleaseByTag,
            ),
            (Method::GET, "/repos/o/r/releases/7", Route::GetRelease),
            (Method::PATCH, "/repos/o/r/releases/7", Route::UpdateRelease),
            (
                Method::GET,
                "/repos/o/r/releases/7/assets",
                Route::ListAssets,
            ),
            (
                Method::POST,
                "/repos/o/r/releases/7/assets",
                Route::UploadAsset,
            ),
            (Method::GET, "/repos/o/r/releases/assets/9", Route::GetAsset),
            (
                Method::POST,
                "/repos/o/r/actions/workflows/driver-build.yml/dispatches",
                Route::DispatchWorkflow,
            ),
            (
                Method::GET,
                "/repos/o/r/actions/workflows/12/runs",
                Route::ListWorkflowRuns,
            ),
            (Method::GET, "/repos/o/r/actions/runs", Route::ListRuns),
            (Method::GET, "/repos/o/r/actions/runs/5", Route::GetRun),
            (
                Method::POST,
                "/repos/o/r/actions/runs/5/cancel",
                Route::CancelRun,
            ),
            (
                Method::GET,
                "/repos/o/r/actions/runs/5/cancel",
                Route::Unknown,
            ),
            (
                Method::HEAD,
                "/o/r/releases/download/v1/a.deb",
                Route::BrowserDownload,
            ),
            (Method::GET, "/_storage/3/a.deb", Route::AssetStorage),
            (
                Method::GET,
                "/repos/o/r/git/matching-refs/tags",
                Route::MatchingRefs,
            ),
            (
                Method::GET,
                "/repos/o/r/git/matching-refs/tags/v0.1",
                Route::MatchingRefs,
            ),
            (Method::GET, "/repos/o/r/git/ref/tags/v1.2.3", Route::GetRef),
            (Method::GET, "/repos/o/r/git/ref", Route::Unknown),
            (Method::POST, "/repos/o/r/git/ref/tags/v1", Route::Unknown),
            (Method::GET, "/repos/o/r/git/tags/abc123", Route::GetTag),
            (Method::GET, "/repos/o/r/releases/abc", Route::Unknown),
            (Method::DELETE, "/repos/o/r/releases/7", Route::Unknown),
            (Method::GET, "/repos/o/r/actions/runs/x", Route::Unknown),
        ];
        for (method, path, route) in cases {
            assert_eq!(parse(&method, path).route, route, "{method} {path}");
        }
        let tag = parse(&Method::GET, "/repos/o/r/releases/tags/6.12.1%2Bdeb12");
        assert_eq!(tag.name, "6.12.1+deb12");
        let refs = parse(
            &Method::GET,
            "/repos/o/r/git/matching-refs/tags/v1.0.0-rc%2B1",
        );
        assert_eq!(refs.name, "tags/v1.0.0-rc+1");
        let dl = parse(&Method::GET, "/o/r/releases/download/t%2B1/a%7Eb.deb");
        assert_eq!((dl.name.as_str(), dl.file.as_str()), ("t+1", "a~b.deb"));
    }
}
