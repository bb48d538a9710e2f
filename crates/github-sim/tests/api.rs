//! Black-box tests of the simulator over real HTTP on loopback (reqwest): response shapes and status
//! codes, pagination `Link` headers, ETag / If-Modified-Since and quota, auth, primary and secondary rate
//! limits, dispatch modes and validation, run progression and publishing, uploads, downloads, and every
//! fault mode.

use std::sync::Arc;
use std::time::{Duration, Instant};

use github_sim::{
    AssetDownload, Conclusion, DispatchHold, DispatchMode, Fault, GithubSim, PrimaryLimitStatus,
    PublishedFile, Route, RunStatus, RunTiming, SimConfig, SimHandle, WorkflowSpec,
};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

const TOKEN: &str = "ghp_simulated";

struct Api {
    http: reqwest::Client,
    base: String,
    repo: String,
}

impl Api {
    fn new(sim: &SimHandle) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("reqwest client builds");
        Self {
            http,
            base: sim.base_url().to_owned(),
            repo: format!("/repos/{}/{}", sim.owner(), sim.repo()),
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else if path.starts_with("/repos")
            || path.starts_with("/rate_limit")
            || !path.starts_with('/')
        {
            format!("{}{}", self.base, path)
        } else {
            format!("{}{}{}", self.base, self.repo, path)
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::ACCEPT, "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.request(Method::GET, path)
            .send()
            .await
            .expect("GET reaches the simulator")
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.request(Method::POST, path)
            .json(&body)
            .send()
            .await
            .expect("POST reaches the simulator")
    }

    async fn dispatch(&self, inputs: Value, details: Option<bool>) -> reqwest::Response {
        let mut body = json!({ "ref": "main", "inputs": inputs });
        if let Some(details) = details {
            body["return_run_details"] = json!(details);
        }
        self.post("/actions/workflows/driver-build.yml/dispatches", body)
            .await
    }

    async fn upload(
        &self,
        release_id: u64,
        raw_name_query: &str,
        bytes: &'static [u8],
    ) -> reqwest::Response {
        self.request(
            Method::POST,
            &format!("/releases/{release_id}/assets?name={raw_name_query}"),
        )
        .header(
            header::CONTENT_TYPE,
            "application/vnd.debian.binary-package",
        )
        .body(bytes)
        .send()
        .await
        .expect("upload reaches the simulator")
    }
}

fn header_str(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn remaining(response: &reqwest::Response) -> u64 {
    header_str(response, "x-ratelimit-remaining")
        .parse()
        .expect("x-ratelimit-remaining is a number")
}

fn inputs(build_id: &str) -> Value {
    json!({
        "kernel_version": "6.1.0-47-amd64",
        "architecture": "x86_64",
        "distribution": "debian",
        "distro_version": "12",
        "driver_version": "v0.1.2",
        "build_id": build_id,
        "source_commit": "4f2c1e0b8a9d7c6e5f4a3b2c1d0e9f8a7b6c5d4e",
    })
}

/// Runs held in `queued` until the test moves them.
fn held_runs() -> RunTiming {
    RunTiming {
        queued: None,
        in_progress: None,
        publish_step: Duration::ZERO,
    }
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("JSON body")
}

#[tokio::test]
async fn release_lookup_hides_drafts_and_uses_github_error_shape() {
    let sim = GithubSim::start(SimConfig::default())
        .await
        .expect("simulator starts");
    let api = Api::new(&sim);
    let draft_id = sim
        .create_draft_release("t-draft", &[("a.deb", b"a")])
        .expect("draft");
    sim.publish_release("t-pub", &[("b.deb", b"b")])
        .expect("published");

    let missing = api.get("/releases/tags/t-draft").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(header_str(&missing, "content-type").starts_with("application/json"));
    let body = json_of(missing).await;
    assert_eq!(body["message"], "Not Found");
    assert_eq!(body["status"], "404");
    assert!(
        body["documentation_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://docs.github.com/"))
    );
    assert_eq!(
        api.get("/releases/tags/nope").await.status(),
        StatusCode::NOT_FOUND
    );

    let found = json_of(api.get("/releases/tags/t-pub").await).await;
    assert_eq!(found["tag_name"], "t-pub");
    assert_eq!(found["draft"], false);
    for key in [
        "url",
        "html_url",
        "assets_url",
        "upload_url",
        "id",
        "node_id",
        "created_at",
        "published_at",
        "author",
    ] {
        assert!(!found[key].is_null(), "release field {key}");
    }
    assert!(
        found["upload_url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/assets{?name,label}"))
    );
    let asset = &found["assets"][0];
    for key in [
        "id",
        "name",
        "size",
        "state",
        "content_type",
        "url",
        "browser_download_url",
        "digest",
        "download_count",
        "created_at",
        "updated_at",
        "uploader",
    ] {
        assert!(!asset[key].is_null(), "asset field {key}");
    }
    assert!(
        asset["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:") && d.len() == 7 + 64)
    );

    // Authorized callers see drafts in the list and by id; anonymous callers do not.
    let listed = json_of(api.get("/releases").await).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    let anonymous = reqwest::get(format!("{}{}/releases", api.base, api.repo))
        .await
        .expect("anonymous list");
    assert_eq!(json_of(anonymous).await.as_array().map(Vec::len), Some(1));
    let by_id = reqwest::get(format!("{}{}/releases/{draft_id}", api.base, api.repo))
        .await
        .expect("anon get");
    assert_eq!(by_id.status(), StatusCode::NOT_FOUND);
    let draft = json_of(api.get(&format!("/releases/{draft_id}")).await).await;
    assert_eq!(draft["draft"], true);
    assert!(draft["published_at"].is_null());

    // Other repositories do not exist.
    assert_eq!(
        api.get("/repos/someone/else/releases/tags/t-pub")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn lists_paginate_with_link_headers() {
    let sim = GithubSim::start(SimConfig::default())
        .await
        .expect("simulator starts");
    let api = Api::new(&sim);
    for n in 0..5 {
        let created = api
            .post(
                "/releases",
                json!({ "tag_name": format!("v{n}"), "draft": false }),
            )
            .await;
        assert_eq!(created.status(), StatusCode::CREATED);
        assert!(header_str(&created, "location").contains("/releases/"));
    }
    let first = api.get("/releases?per_page=2").await;
    let link = header_str(&first, "link");
    assert!(link.contains("per_page=2&page=2>; rel=\"next\""), "{link}");
    assert!(link.contains("per_page=2&page=3>; rel=\"last\""), "{link}");
    assert!(!link.contains("rel=\"prev\""));
    let first_tags: Vec<Value> = json_of(first).await.as_array().cloned().unwrap_or_default();
    assert_eq!(first_tags.len(), 2);
    assert_eq!(first_tags[0]["tag_name"], "v4", "newest first");

    // Following `next` links visits every release exactly once.
    let mut seen = Vec::new();
    let mut next = Some(api.url("/releases?per_page=2"));
    while let Some(url) = next {
        let page = api.get(&url).await;
        next = header_str(&page, "link")
            .split(", ")
            .find(|part| part.ends_with("rel=\"next\""))
            .and_then(|part| part.split(['<', '>']).nth(1))
            .map(str::to_owned);
        for release in json_of(page).await.as_array().cloned().unwrap_or_default() {
            seen.push(release["tag_name"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(seen, ["v4", "v3", "v2", "v1", "v0"]);

    let last = api.get("/releases?per_page=2&page=3").await;
    let link = header_str(&last, "link");
    assert!(
        link.contains("rel=\"prev\"")
            && link.contains("rel=\"first\"")
            && !link.contains("rel=\"next\"")
    );
    let all = api.get("/releases").await;
    assert!(
        all.headers().get("link").is_none(),
        "no Link when everything fits"
    );

    let release_id = sim
        .create_draft_release("assets", &[("1", b"1"), ("2", b"2"), ("3", b"3")])
        .expect("draft");
    let assets = api
        .get(&format!("/releases/{release_id}/assets?per_page=2&page=2"))
        .await;
    assert!(header_str(&assets, "link").contains("rel=\"first\""));
    assert_eq!(json_of(assets).await.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn conditional_requests_answer_304_without_quota() {
    let sim = GithubSim::start(SimConfig::default())
        .await
        .expect("simulator starts");
    let api = Api::new(&sim);
    let release_id = sim
        .publish_release("t", &[("a.deb", b"a")])
        .expect("published");

    let first = api.get("/releases/tags/t").await;
    assert_eq!(first.status(), StatusCode::OK);
    let etag = header_str(&first, "etag");
    assert!(etag.starts_with("W/\""), "{etag}");
    let last_modified = header_str(&first, "last-modified");
    assert!(last_modified.ends_with(" GMT"), "{last_modified}");
    let before = remaining(&first);
    let consumed_before = sim.stats().quota_consumed;

    for _ in 0..3 {
        let cached = api
            .request(Method::GET, "/releases/tags/t")
            .header(header::IF_NONE_MATCH, &etag)
            .send()
            .await;
        let cached = cached.expect("conditional GET");
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            remaining(&cached),
            before,
            "a 304 does not count against the primary limit"
        );
        assert_eq!(header_str(&cached, "etag"), etag);
        assert!(cached.bytes().await.expect("body").is_empty());
    }
    let since = api
        .request(Method::GET, "/releases/tags/t")
        .header(header::IF_MODIFIED_SINCE, &last_modified);
    assert_eq!(
        since.send().await.expect("IMS GET").status(),
        StatusCode::NOT_MODIFIED
    );
    let stats = sim.stats();
    assert_eq!(
        (stats.not_modified, stats.quota_consumed),
        (4, consumed_before)
    );

    // ETags are per token: another token gets a full answer.
    let other = api
        .http
        .get(api.url("/releases/tags/t"))
        .header(header::AUTHORIZATION, "token another-token")
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("other token");
    assert_eq!(other.status(), StatusCode::OK);

    // Without Authorization a 304 is still served but costs quota.
    let anonymous = api
        .http
        .get(api.url("/releases/tags/t"))
        .header(
            header::IF_NONE_MATCH,
            header_str(
                &api.http
                    .get(api.url("/releases/tags/t"))
                    .send()
                    .await
                    .expect("anon"),
                "etag",
            ),
        )
        .send()
        .await
        .expect("anonymous conditional");
    assert_eq!(anonymous.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(sim.stats().quota_consumed, consumed_before + 3);

    // A change to the release changes its ETag.
    let upload = api.upload(release_id, "b.deb", b"b").await;
    assert_eq!(upload.status(), StatusCode::CREATED);
    let changed = api
        .request(Method::GET, "/releases/tags/t")
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await;
    assert_eq!(changed.expect("after change").status(), StatusCode::OK);
}

#[tokio::test]
async fn rate_limit_headers_exhaustion_and_reset() {
    let sim = GithubSim::start(SimConfig::default())
        .await
        .expect("simulator starts");
    let api = Api::new(&sim);
    let first = api.get("/releases").await;
    assert_eq!(header_str(&first, "x-ratelimit-limit"), "5000");
    assert_eq!(header_str(&first, "x-ratelimit-remaining"), "4999");
    assert_eq!(header_str(&first, "x-ratelimit-used"), "1");
    assert_eq!(header_str(&first, "x-ratelimit-resource"), "core");
    assert_eq!(
        header_str(&first, "x-github-api-version-selected"),
        "2022-11-28"
    );
    let reset: u64 = header_str(&first, "x-ratelimit-reset")
        .parse()
        .expect("reset epoch");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(reset > now && reset <= now + 3600);

    sim.set_rate_limit_remaining(1);
    let last = api.get("/releases").await;
    assert_eq!((last.status(), remaining(&last)), (StatusCode::OK, 0));
    let refused = api.get("/releases").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(remaining(&refused), 0);
    let body = json_of(refused).await;
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("API rate limit exceeded for user ID"))
    );
    sim.set_primary_limit_status(PrimaryLimitStatus::TooManyRequests429);
    assert_eq!(
        api.get("/releases").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // GET /rate_limit is free and works while exhausted.
    let limits = json_of(api.get("/rate_limit").await).await;
    assert_eq!(limits["resources"]["core"]["remaining"], 0);
    assert_eq!(limits["rate"]["limit"], 5000);

    sim.reset_rate_limit_in(Duration::from_millis(300));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let after = api.get("/releases").await;
    assert_eq!((after.status(), remaining(&after)), (StatusCode::OK, 4999));
    assert_eq!(sim.stats().rate_limited, 2);
}

#[tokio::test]
async fn authentication_rules() {
    let config = SimConfig {
        accepted_tokens: Some(vec![TOKEN.to_owned()]),
        require_auth: true,
        ..SimConfig::default()
    };
    let sim = GithubSim::start(config).await.expect("simulator starts");
    let api = Api::new(&sim);
    let url = api.url("/releases");
    let none = api.http.get(&url).send().await.expect("anonymous");
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(none).await["message"], "Requires authentication");
    let bad = api
        .http
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .expect("bad token");
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(bad).await["message"], "Bad credentials");
    for scheme in ["Bearer", "token"] {
        let ok = api
            .http
            .get(&url)
            .header(header::AUTHORIZATION, format!("{scheme} {TOKEN}"))
            .send()
            .await;
        assert_eq!(ok.expect("authorized").status(), StatusCode::OK, "{scheme}");
    }
    // Writes need a token even where reads are open.
    sim.set_require_auth(false);
    assert_eq!(
        api.http.get(&url).send().await.expect("open read").status(),
        StatusCode::OK
    );
    let write = api
        .http
        .post(&url)
        .json(&json!({"tag_name": "x"}))
        .send()
        .await
        .expect("anonymous write");
    assert_eq!(write.status(), StatusCode::UNAUTHORIZED);
    let version = api
        .http
        .get(&url)
        .bearer_auth(TOKEN)
        .header("x-github-api-version", "1999-01-01")
        .send()
        .await;
    assert_eq!(
        version.expect("bad version").status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn dispatch_answers_per_mode() {
    let sim = GithubSim::start(SimConfig {
        run_timing: held_runs(),
        ..SimConfig::default()
    })
    .await
    .expect("starts");
    let api = Api::new(&sim);

    let detailed = api.dispatch(inputs("b-1"), Some(true)).await;
    assert_eq!(detailed.status(), StatusCode::OK);
    let details = json_of(detailed).await;
    let run_id = details["workflow_run_id"]
        .as_u64()
        .expect("workflow_run_id");
    assert!(
        run_id > u64::from(u32::MAX),
        "run ids exceed 32 bits as on GitHub"
    );
    let run_url = details["run_url"].as_str().expect("run_url");
    assert!(run_url.ends_with(&format!("/actions/runs/{run_id}")));
    assert!(
        details["html_url"]
            .as_str()
            .is_some_and(|u| !u.contains("/repos/"))
    );
    let run = json_of(api.get(run_url).await).await;
    assert_eq!(run["display_title"], "driver-build b-1");
    assert_eq!(run["status"], "queued");

    let plain = api.dispatch(inputs("b-2"), None).await;
    assert_eq!(plain.status(), StatusCode::NO_CONTENT);
    assert!(plain.bytes().await.expect("body").is_empty());
    assert_eq!(
        api.dispatch(inputs("b-3"), Some(false)).await.status(),
        StatusCode::NO_CONTENT
    );

    sim.set_dispatch_mode(DispatchMode::LegacyNoContent);
    assert_eq!(
        api.dispatch(inputs("b-4"), Some(true)).await.status(),
        StatusCode::NO_CONTENT
    );

    sim.set_dispatch_mode(DispatchMode::RejectRunDetailsField { status: 400 });
    let rejected = api.dispatch(inputs("b-5"), Some(true)).await;
    assert_eq!(rejected.status(), StatusCode::BAD_REQUEST);
    assert!(
        json_of(rejected).await["message"]
            .as_str()
            .is_some_and(|m| m.contains("return_run_details"))
    );
    assert!(
        sim.runs_titled("driver-build b-5").is_empty(),
        "a refused dispatch creates no run"
    );
    assert_eq!(
        api.dispatch(inputs("b-5"), None).await.status(),
        StatusCode::NO_CONTENT
    );

    let titles: Vec<String> = sim.runs().into_iter().map(|r| r.display_title).collect();
    assert_eq!(
        titles,
        [
            "driver-build b-1",
            "driver-build b-2",
            "driver-build b-3",
            "driver-build b-4",
            "driver-build b-5"
        ]
    );
    let stats = sim.stats();
    assert_eq!((stats.dispatches_received, stats.runs_created), (6, 5));
}

#[tokio::test]
async fn dispatch_validation_matches_github() {
    let mut closed = WorkflowSpec::driver_build();
    closed.id = 7;
    closed.file = "no-dispatch.yml".to_owned();
    closed.dispatchable = false;
    let config = SimConfig {
        run_timing: held_runs(),
        workflows: vec![WorkflowSpec::driver_build(), closed],
        ..SimConfig::default()
    };
    let sim = GithubSim::start(config).await.expect("simulator starts");
    let api = Api::new(&sim);
    let path = "/actions/workflows/driver-build.yml/dispatches";
    let mut missing_build_id = inputs("x");
    missing_build_id
        .as_object_mut()
        .map(|m| m.remove("build_id"));
    let mut missing_commit = inputs("x");
    missing_commit
        .as_object_mut()
        .map(|m| m.remove("source_commit"));
    let mut undeclared = inputs("x");
    undeclared["extra"] = json!("1");
    let too_many: serde_json::Map<String, Value> =
        (0..26).map(|i| (format!("i{i}"), json!("v"))).collect();
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "/actions/workflows/missing.yml/dispatches",
            json!({"ref": "main", "inputs": inputs("x")}),
            StatusCode::NOT_FOUND,
            "Not Found",
        ),
        (
            "/actions/workflows/no-dispatch.yml/dispatches",
            json!({"ref": "main", "inputs": inputs("x")}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "workflow_dispatch",
        ),
        (
            path,
            json!({"ref": "nope", "inputs": inputs("x")}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "No ref found for: nope",
        ),
        (
            path,
            json!({"inputs": inputs("x")}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "\"ref\" wasn't supplied",
        ),
        (
            path,
            json!({"ref": "main", "inputs": missing_build_id}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Required input 'build_id' not provided",
        ),
        (
            path,
            json!({"ref": "main", "inputs": missing_commit}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Required input 'source_commit' not provided",
        ),
        (
            path,
            json!({"ref": "main", "inputs": undeclared}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "Unexpected inputs provided: [\"extra\"]",
        ),
        (
            path,
            json!({"ref": "main", "inputs": too_many}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "maximum is 25",
        ),
        (
            path,
            json!({"ref": "main", "inputs": inputs("x"), "bogus": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "\"bogus\" is not a permitted key",
        ),
        (
            path,
            json!({"ref": "main", "inputs": {"build_id": {"nested": true}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "is not a string",
        ),
        (
            path,
            json!({"ref": "main", "inputs": inputs("x"), "return_run_details": "yes"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "is not a boolean",
        ),
    ];
    for (path, body, status, message) in cases {
        let response = api.post(path, body.clone()).await;
        assert_eq!(response.status(), status, "{path} {body}");
        let text = json_of(response).await["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            text.contains(message),
            "{text:?} should contain {message:?}"
        );
    }
    let raw = api
        .request(Method::POST, path)
        .body("{not json")
        .send()
        .await
        .expect("raw post");
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    assert!(sim.runs().is_empty(), "no refused dispatch creates a run");
    // Dispatch by numeric workflow id and by full ref name works.
    let by_id = api
        .post(
            "/actions/workflows/161335/dispatches",
            json!({"ref": "refs/heads/main", "inputs": inputs("ok")}),
        )
        .await;
    assert_eq!(by_id.status(), StatusCode::NO_CONTENT);
    assert_eq!(sim.runs().len(), 1);
}

#[tokio::test]
async fn successful_run_publishes_draft_then_release() {
    let mut config = SimConfig {
        run_timing: RunTiming {
            // Generous phases so a loaded CI machine still observes each state.
            queued: Some(Duration::from_millis(300)),
            in_progress: Some(Duration::from_millis(100)),
            publish_step: Duration::from_millis(400),
        },
        ..SimConfig::default()
    };
    config.publish = Arc::new(|inputs| {
        let tag = format!(
            "example-driver-debian-12-{}-{}",
            inputs["kernel_version"], inputs["driver_version"]
        );
        vec![
            PublishedFile::new(
                tag.clone(),
                "driver.deb",
                format!("package for {}", inputs["build_id"]).into_bytes(),
            ),
            PublishedFile::new(tag, "driver.deb.minisig", b"sig".to_vec()),
        ]
    });
    config.outcome = Arc::new(|inputs| {
        if inputs["build_id"].contains("fail") {
            Conclusion::Failure
        } else {
            Conclusion::Success
        }
    });
    let sim = GithubSim::start(config).await.expect("simulator starts");
    let api = Api::new(&sim);
    let tag = "example-driver-debian-12-6.1.0-47-amd64-v0.1.2";

    let details = json_of(api.dispatch(inputs("b-7"), Some(true)).await).await;
    let run_path = format!("/actions/runs/{}", details["workflow_run_id"]);
    let mut statuses = Vec::new();
    let mut saw_draft_window = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let run = json_of(api.get(&run_path).await).await;
        let status = run["status"].as_str().unwrap_or_default().to_owned();
        if statuses.last() != Some(&status) {
            statuses.push(status.clone());
        }
        if status == "in_progress" && sim.releases().iter().any(|r| r.draft && r.tag_name == tag) {
            // Draft exists but the tag endpoint must not see it yet.
            assert_eq!(
                api.get(&format!("/releases/tags/{tag}")).await.status(),
                StatusCode::NOT_FOUND
            );
            saw_draft_window = true;
        }
        if status == "completed" {
            assert_eq!(run["conclusion"], "success");
            assert!(run["run_started_at"].as_str().is_some());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run did not complete: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(statuses, ["queued", "in_progress", "completed"]);
    assert!(
        saw_draft_window,
        "the draft -> upload -> publish window was observable"
    );

    let release = json_of(api.get(&format!("/releases/tags/{tag}")).await).await;
    assert_eq!(release["author"]["login"], "github-actions[bot]");
    let names: Vec<&str> = release["assets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["driver.deb", "driver.deb.minisig"]);
    let download_url = release["assets"][0]["browser_download_url"]
        .as_str()
        .expect("download url")
        .to_owned();
    assert_eq!(download_url, sim.browser_download_url(tag, "driver.deb"));
    let consumed = sim.stats().quota_consumed;
    let follow = reqwest::get(&download_url).await.expect("browser download");
    assert_eq!(follow.status(), StatusCode::OK);
    assert_eq!(
        follow.bytes().await.expect("bytes").as_ref(),
        b"package for b-7"
    );
    assert_eq!(
        sim.stats().quota_consumed,
        consumed,
        "browser downloads cost no API quota"
    );

    // A failing run completes with `failure` and publishes nothing.
    let failed = json_of(api.dispatch(inputs("b-fail"), Some(true)).await).await;
    assert!(sim.wait_runs_completed(Duration::from_secs(5)).await);
    let run = sim
        .run(failed["workflow_run_id"].as_u64().expect("id"))
        .expect("run");
    assert_eq!(
        (run.status, run.conclusion),
        (RunStatus::Completed, Some(Conclusion::Failure))
    );
    assert_eq!(sim.releases().len(), 1);

    // A second success for the same identity cannot publish over the first release: the run fails.
    let again = json_of(api.dispatch(inputs("b-8"), Some(true)).await).await;
    assert!(sim.wait_runs_completed(Duration::from_secs(5)).await);
    let run = sim
        .run(again["workflow_run_id"].as_u64().expect("id"))
        .expect("run");
    assert_eq!(run.conclusion, Some(Conclusion::Failure));
    assert!(
        run.failure_reason
            .as_deref()
            .is_some_and(|r| r.contains("already_exists")),
        "{run:?}"
    );
}

#[tokio::test]
async fn run_lists_filter_like_github() {
    let sim = GithubSim::start(SimConfig {
        run_timing: held_runs(),
        ..SimConfig::default()
    })
    .await
    .expect("starts");
    let api = Api::new(&sim);
    let mut ids = Vec::new();
    for n in 0..3 {
        let details = json_of(api.dispatch(inputs(&format!("r{n}")), Some(true)).await).await;
        ids.push(details["workflow_run_id"].as_u64().expect("id"));
    }
    assert!(sim.finish_run(ids[0], Conclusion::Success).await);
    assert!(sim.finish_run(ids[1], Conclusion::Failure).await);
    assert!(
        !sim.finish_run(ids[1], Conclusion::Success).await,
        "a run completes once"
    );

    let count = |query: &'static str| {
        let api = &api;
        async move {
            let response = api.get(&format!("/actions/runs?{query}")).await;
            assert_eq!(response.status(), StatusCode::OK, "{query}");
            let body = json_of(response).await;
            let total = body["total_count"].as_u64().expect("total_count");
            assert_eq!(
                body["workflow_runs"].as_array().map(Vec::len),
                Some(total.min(30) as usize)
            );
            total
        }
    };
    assert_eq!(count("").await, 3);
    assert_eq!(count("status=completed").await, 2);
    assert_eq!(count("status=failure").await, 1);
    assert_eq!(count("status=queued").await, 1);
    assert_eq!(count("event=workflow_dispatch&branch=main").await, 3);
    assert_eq!(count("event=push").await, 0);
    assert_eq!(count("branch=other").await, 0);
    assert_eq!(count("created=%3E%3D2020-01-01").await, 3);
    assert_eq!(count("created=%3C%3D2020-01-01T00:00:00Z").await, 0);
    assert_eq!(count("created=2020-01-01..*").await, 3);
    assert_eq!(count("actor=build-service-bot").await, 3);
    let bad = api.get("/actions/runs?created=yesterday").await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let per_workflow = api
        .get("/actions/workflows/driver-build.yml/runs?per_page=1")
        .await;
    let link = header_str(&per_workflow, "link");
    assert!(
        link.contains("/actions/workflows/driver-build.yml/runs?per_page=1&page=2>; rel=\"next\""),
        "{link}"
    );
    let body = json_of(per_workflow).await;
    assert_eq!(body["total_count"], 3);
    let newest = &body["workflow_runs"][0];
    assert_eq!(newest["id"].as_u64(), ids.last().copied(), "newest first");
    for key in [
        "id",
        "name",
        "display_title",
        "status",
        "event",
        "head_branch",
        "head_sha",
        "path",
        "run_number",
        "run_attempt",
        "created_at",
        "updated_at",
        "run_started_at",
        "html_url",
        "url",
        "workflow_id",
        "jobs_url",
        "logs_url",
        "check_suite_url",
        "cancel_url",
        "rerun_url",
        "workflow_url",
        "head_commit",
        "repository",
        "head_repository",
        "actor",
        "triggering_actor",
    ] {
        assert!(!newest[key].is_null(), "run field {key}");
    }
    assert!(newest["conclusion"].is_null());
    assert_eq!(
        api.get("/actions/workflows/other.yml/runs").await.status(),
        StatusCode::NOT_FOUND
    );

    // New runs show up in lists only after the configured lag; by id at once.
    sim.set_run_list_delay(Duration::from_secs(60));
    let late = json_of(api.dispatch(inputs("late"), Some(true)).await).await;
    assert_eq!(count("").await, 0);
    let by_id = api
        .get(&format!("/actions/runs/{}", late["workflow_run_id"]))
        .await;
    assert_eq!(by_id.status(), StatusCode::OK);
}

#[tokio::test]
async fn injected_faults_behave_and_are_bounded() {
    let sim = GithubSim::start(SimConfig {
        run_timing: held_runs(),
        ..SimConfig::default()
    })
    .await
    .expect("starts");
    let api = Api::new(&sim);
    sim.publish_release("t", &[("a", b"a")]).expect("release");

    sim.inject_fault(Route::ReleaseByTag, Fault::ServerError(503), 2);
    let consumed = sim.stats().quota_consumed;
    for _ in 0..2 {
        let failed = api.get("/releases/tags/t").await;
        assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!header_str(&failed, "x-ratelimit-remaining").is_empty());
    }
    assert_eq!(
        sim.stats().quota_consumed,
        consumed,
        "front-end failures consume no quota"
    );
    assert_eq!(api.get("/releases/tags/t").await.status(), StatusCode::OK);

    sim.inject_fault(
        Route::ListRuns,
        Fault::SecondaryRateLimit {
            status: 403,
            retry_after: Some(Duration::from_secs(7)),
        },
        1,
    );
    let limited = api.get("/actions/runs").await;
    assert_eq!(limited.status(), StatusCode::FORBIDDEN);
    assert_eq!(header_str(&limited, "retry-after"), "7");
    assert!(
        remaining(&limited) > 0,
        "secondary limits leave the primary budget alone"
    );
    assert!(
        json_of(limited).await["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("You have exceeded a secondary rate limit"))
    );
    sim.inject_fault(
        Route::ListRuns,
        Fault::SecondaryRateLimit {
            status: 429,
            retry_after: None,
        },
        1,
    );
    let limited = api.get("/actions/runs").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().get("retry-after").is_none());

    sim.inject_fault(
        Route::GetRelease,
        Fault::Delay(Duration::from_millis(300)),
        1,
    );
    let started = Instant::now();
    assert_eq!(api.get("/releases/1").await.status(), StatusCode::NOT_FOUND);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // The duplicate-dispatch trap: the run is created although the answer is a 5xx.
    sim.inject_fault(
        Route::DispatchWorkflow,
        Fault::AcceptThenServerError(502),
        1,
    );
    let failed = api.dispatch(inputs("dup"), Some(true)).await;
    assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        sim.runs_titled("driver-build dup").len(),
        1,
        "the dispatch took effect"
    );

    sim.inject_fault_any(Fault::ServerError(500), 1);
    assert_eq!(
        api.get("/rate_limit").await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    sim.inject_fault(Route::GetRun, Fault::ServerError(500), 5);
    assert_eq!(sim.pending_faults().len(), 1);
    sim.clear_faults();
    assert!(sim.pending_faults().is_empty());
    assert_eq!(sim.stats().faults_served, 7);

    sim.inject_fault(Route::BrowserDownload, Fault::ServerError(502), 1);
    let url = sim.browser_download_url("t", "a");
    assert_eq!(
        reqwest::get(&url).await.expect("download").status(),
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        reqwest::get(&url).await.expect("download").status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn uploads_enforce_names_duplicates_immutability_and_limits() {
    let config = SimConfig {
        max_assets_per_release: 3,
        ..SimConfig::default()
    };
    let sim = GithubSim::start(config).await.expect("simulator starts");
    let api = Api::new(&sim);
    let created = json_of(
        api.post("/releases", json!({"tag_name": "up", "draft": true}))
            .await,
    )
    .await;
    let id = created["id"].as_u64().expect("release id");
    assert!(
        created["upload_url"]
            .as_str()
            .is_some_and(|u| u.starts_with(&api.base))
    );

    let uploaded = api.upload(id, "a.deb", b"abc").await;
    assert_eq!(uploaded.status(), StatusCode::CREATED);
    let asset = json_of(uploaded).await;
    assert_eq!(
        asset["content_type"],
        "application/vnd.debian.binary-package"
    );
    assert_eq!(asset["size"], 3);
    let duplicate = json_of(api.upload(id, "a.deb", b"x").await).await;
    assert_eq!(duplicate["errors"][0]["code"], "already_exists");
    assert_eq!(duplicate["errors"][0]["field"], "name");

    // GitHub's renaming: an unencoded `+` is a space and becomes `.`; `%2B` survives; `~` becomes `.`.
    assert_eq!(
        json_of(api.upload(id, "k+deb12~1.deb", b"x").await).await["name"],
        "k.deb12.1.deb"
    );
    assert_eq!(
        json_of(api.upload(id, "k%2Bdeb12.deb", b"x").await).await["name"],
        "k+deb12.deb"
    );
    let over = api.upload(id, "four.deb", b"x").await;
    assert_eq!(over.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        json_of(over).await["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 3"))
    );

    // Publishing a second release with a published tag fails like GitHub.
    let published = api
        .request(Method::PATCH, &format!("/releases/{id}"))
        .json(&json!({"draft": false}))
        .send()
        .await;
    assert_eq!(published.expect("publish").status(), StatusCode::OK);
    let clash = json_of(api.post("/releases", json!({"tag_name": "up"})).await).await;
    assert_eq!(clash["message"], "Validation Failed");
    assert_eq!(
        clash["errors"][0],
        json!({"resource": "Release", "code": "already_exists", "field": "tag_name"})
    );

    // Immutable releases refuse new assets once published, not while drafts.
    sim.set_immutable_releases(true);
    let draft = json_of(
        api.post("/releases", json!({"tag_name": "imm", "draft": true}))
            .await,
    )
    .await;
    let draft_id = draft["id"].as_u64().expect("id");
    assert_eq!(
        api.upload(draft_id, "a.deb", b"x").await.status(),
        StatusCode::CREATED
    );
    let published = json_of(
        api.request(Method::PATCH, &format!("/releases/{draft_id}"))
            .json(&json!({"draft": false}))
            .send()
            .await
            .expect("publish"),
    )
    .await;
    assert_eq!(published["immutable"], true);
    let refused = api.upload(draft_id, "b.deb", b"x").await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        json_of(refused).await["message"],
        "Cannot upload assets to an immutable release."
    );
    assert_eq!(
        api.upload(999, "a.deb", b"x").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn asset_downloads_through_api_and_browser_urls() {
    let sim = GithubSim::start(SimConfig::default())
        .await
        .expect("simulator starts");
    let api = Api::new(&sim);
    let release_id = sim
        .publish_release("dl", &[("pkg.deb", b"payload")])
        .expect("release");
    let release = json_of(api.get(&format!("/releases/{release_id}")).await).await;
    let asset_url = release["assets"][0]["url"]
        .as_str()
        .expect("asset url")
        .to_owned();

    let meta = json_of(api.get(&asset_url).await).await;
    assert_eq!(meta["name"], "pkg.deb");
    let redirect = api
        .request(Method::GET, &asset_url)
        .header(header::ACCEPT, "application/octet-stream")
        .send()
        .await;
    let redirect = redirect.expect("octet-stream GET");
    assert_eq!(redirect.status(), StatusCode::FOUND);
    let location = header_str(&redirect, "location");
    let stored = reqwest::get(&location).await.expect("storage");
    assert_eq!(stored.bytes().await.expect("bytes").as_ref(), b"payload");

    sim.set_asset_download(AssetDownload::Stream);
    let streamed = api
        .request(Method::GET, &asset_url)
        .header(header::ACCEPT, "application/octet-stream")
        .send()
        .await;
    let streamed = streamed.expect("streamed GET");
    assert_eq!(streamed.status(), StatusCode::OK);
    assert_eq!(streamed.bytes().await.expect("bytes").as_ref(), b"payload");
    assert_eq!(
        json_of(api.get(&asset_url).await).await["download_count"],
        2
    );

    // Browser URL: 302 to storage, HEAD works, no rate-limit headers, 404 when missing or draft.
    let browser = sim.browser_download_url("dl", "pkg.deb");
    assert!(browser.starts_with(&sim.download_base()));
    let head = api.http.head(&browser).send().await.expect("HEAD");
    assert_eq!(head.status(), StatusCode::FOUND);
    assert!(head.headers().get("x-ratelimit-remaining").is_none());
    let head_storage = api
        .http
        .head(header_str(&head, "location"))
        .send()
        .await
        .expect("HEAD storage");
    assert_eq!(header_str(&head_storage, "content-length"), "7");
    assert_eq!(
        api.http
            .get(sim.browser_download_url("dl", "other.deb"))
            .send()
            .await
            .expect("missing")
            .status(),
        StatusCode::NOT_FOUND
    );
    sim.create_draft_release("draft-dl", &[("pkg.deb", b"x")])
        .expect("draft");
    assert_eq!(
        api.http
            .get(sim.browser_download_url("draft-dl", "pkg.deb"))
            .send()
            .await
            .expect("draft")
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn server_stops_when_the_handle_is_dropped() {
    let sim = GithubSim::start(SimConfig::default())
        .await
        .expect("simulator starts");
    let url = format!("{}/rate_limit", sim.base_url());
    assert_eq!(
        reqwest::get(&url).await.expect("running").status(),
        StatusCode::OK
    );
    drop(sim);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    assert!(
        client.get(&url).send().await.is_err(),
        "nothing listens after drop"
    );
}

#[tokio::test]
async fn per_driver_version_layout_meets_immutable_releases() {
    // The seed's layout: every build publishes into one release per driver version.
    let config = SimConfig {
        run_timing: RunTiming {
            queued: Some(Duration::ZERO),
            in_progress: Some(Duration::ZERO),
            publish_step: Duration::ZERO,
        },
        publish: Arc::new(|inputs| {
            vec![PublishedFile::new(
                "v0.1.2",
                format!("driver-{}.deb", inputs["build_id"]),
                b"x".to_vec(),
            )]
        }),
        ..SimConfig::default()
    };
    let sim = GithubSim::start(config).await.expect("simulator starts");
    let api = Api::new(&sim);
    assert_eq!(
        api.dispatch(inputs("one"), None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(sim.wait_runs_completed(Duration::from_secs(5)).await);
    assert_eq!(
        api.dispatch(inputs("two"), None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(sim.wait_runs_completed(Duration::from_secs(5)).await);
    let release = json_of(api.get("/releases/tags/v0.1.2").await).await;
    assert_eq!(
        release["assets"].as_array().map(Vec::len),
        Some(2),
        "mutable release gains assets"
    );

    sim.set_immutable_releases(true);
    assert_eq!(
        api.dispatch(inputs("three"), None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(sim.wait_runs_completed(Duration::from_secs(5)).await);
    assert_eq!(
        api.dispatch(inputs("four"), None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(sim.wait_runs_completed(Duration::from_secs(5)).await);
    let runs = sim.runs();
    let (third, fourth) = (&runs[2], &runs[3]);
    // "three" still lands: the release was published before immutability was switched on.
    assert_eq!(third.conclusion, Some(Conclusion::Success));
    assert_eq!(fourth.conclusion, Some(Conclusion::Success));
    assert_eq!(sim.releases()[0].assets.len(), 4);

    // A release published while the setting is on is immutable; the next build into it fails.
    let config_tag = "v0.2.0";
    sim.publish_release(config_tag, &[("first.deb", b"x")])
        .expect("immutable release");
    sim.set_publish(move |inputs| {
        vec![PublishedFile::new(
            config_tag,
            format!("{}.deb", inputs["build_id"]),
            b"y".to_vec(),
        )]
    });
    assert_eq!(
        api.dispatch(inputs("five"), None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(sim.wait_runs_completed(Duration::from_secs(5)).await);
    let fifth = sim.runs().pop().expect("fifth run");
    assert_eq!(fifth.conclusion, Some(Conclusion::Failure));
    assert!(
        fifth
            .failure_reason
            .as_deref()
            .is_some_and(|r| r.contains("immutable")),
        "{fifth:?}"
    );
}

#[tokio::test]
async fn cancelling_a_run_answers_like_github_and_stops_its_publishing() {
    let mut config = SimConfig {
        accepted_tokens: Some(vec![TOKEN.to_owned()]),
        run_timing: RunTiming {
            publish_step: Duration::from_millis(300),
            ..held_runs()
        },
        ..SimConfig::default()
    };
    config.publish = Arc::new(|inputs| {
        let tag = format!("example-driver-{}", inputs["build_id"]);
        vec![PublishedFile::new(tag, "driver.deb", b"package".to_vec())]
    });
    let sim = GithubSim::start(config).await.expect("simulator starts");
    let api = Api::new(&sim);
    let run_id = |details: &Value| details["workflow_run_id"].as_u64().expect("run id");

    // A queued run: 202 with `{}`, then completed / cancelled, and it never publishes.
    let queued = run_id(&json_of(api.dispatch(inputs("c-1"), Some(true)).await).await);
    let cancel_path = format!("/actions/runs/{queued}/cancel");
    let accepted = api.post(&cancel_path, json!({})).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    assert_eq!(json_of(accepted).await, json!({}));
    let run = json_of(api.get(&format!("/actions/runs/{queued}")).await).await;
    assert_eq!(
        (run["status"].as_str(), run["conclusion"].as_str()),
        (Some("completed"), Some("cancelled")),
        "{run}"
    );
    assert!(!sim.finish_run(queued, Conclusion::Success).await);
    assert!(sim.releases().is_empty());

    // Cancelling it again: 409 in GitHub's error shape.
    let conflict = api.post(&cancel_path, json!({})).await;
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    let body = json_of(conflict).await;
    assert_eq!(
        body["message"],
        "Cannot cancel a workflow run that is completed."
    );
    assert_eq!(body["status"], "409");
    assert!(
        body["documentation_url"]
            .as_str()
            .is_some_and(|url| url.contains("cancel-a-workflow-run")),
        "{body}"
    );

    // A running run is cancelled the same way.
    let running = run_id(&json_of(api.dispatch(inputs("c-2"), Some(true)).await).await);
    assert!(sim.start_run(running));
    let accepted = api
        .post(&format!("/actions/runs/{running}/cancel"), json!({}))
        .await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let info = sim.run(running).expect("run");
    assert_eq!(
        (info.status, info.conclusion),
        (RunStatus::Completed, Some(Conclusion::Cancelled))
    );

    // A run cancelled while it publishes stays cancelled; the step in flight still completed.
    let publishing = run_id(&json_of(api.dispatch(inputs("c-3"), Some(true)).await).await);
    let (finished, cancelled) =
        tokio::join!(sim.finish_run(publishing, Conclusion::Success), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            api.post(&format!("/actions/runs/{publishing}/cancel"), json!({}))
                .await
                .status()
        });
    assert!(finished);
    assert_eq!(cancelled, StatusCode::ACCEPTED);
    assert_eq!(
        sim.run(publishing).expect("run").conclusion,
        Some(Conclusion::Cancelled)
    );

    // A completed run is a conflict; unknown runs are 404; GET is no route; writes need a token.
    let done = run_id(&json_of(api.dispatch(inputs("c-4"), Some(true)).await).await);
    assert!(sim.finish_run(done, Conclusion::Failure).await);
    assert_eq!(
        api.post(&format!("/actions/runs/{done}/cancel"), json!({}))
            .await
            .status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        api.post("/actions/runs/1/cancel", json!({})).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get(&format!("/actions/runs/{done}/cancel"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let anonymous = api
        .http
        .post(api.url(&format!("/actions/runs/{done}/cancel")))
        .send()
        .await
        .expect("anonymous cancel");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(sim.stats().requests_to(Route::CancelRun), 7);
}

#[tokio::test]
async fn held_dispatches_wait_before_or_after_their_run_until_released() {
    let sim = GithubSim::start(SimConfig {
        run_timing: held_runs(),
        ..SimConfig::default()
    })
    .await
    .expect("starts");
    let api = Arc::new(Api::new(&sim));

    // Held after the run: the dispatch took effect, only the answer waits.
    sim.hold_dispatches(DispatchHold::AfterRun);
    let pending = {
        let api = Arc::clone(&api);
        tokio::spawn(async move { api.dispatch(inputs("after"), Some(true)).await })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.stats().dispatches_held == 0 {
        assert!(
            Instant::now() < deadline,
            "the dispatch never reached the hold"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        sim.runs_titled("driver-build after").len(),
        1,
        "run created"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pending.is_finished(), "the answer is held");
    sim.release_dispatches();
    let answered = pending.await.expect("task");
    assert_eq!(answered.status(), StatusCode::OK);

    // Held before the run: nothing exists until it is released.
    sim.hold_dispatches(DispatchHold::BeforeRun);
    let pending = {
        let api = Arc::clone(&api);
        tokio::spawn(async move { api.dispatch(inputs("before"), Some(true)).await })
    };
    while sim.stats().dispatches_held < 2 {
        assert!(
            Instant::now() < deadline,
            "the dispatch never reached the hold"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        sim.runs_titled("driver-build before").is_empty(),
        "no run yet"
    );
    sim.release_dispatches();
    assert_eq!(pending.await.expect("task").status(), StatusCode::OK);
    assert_eq!(sim.runs_titled("driver-build before").len(), 1);

    // Not held any more; runs are counted per input value.
    assert_eq!(
        api.dispatch(inputs("after"), Some(true)).await.status(),
        StatusCode::OK
    );
    let per_build = sim.runs_per_input("build_id");
    assert_eq!(per_build.get("after"), Some(&2));
    assert_eq!(per_build.get("before"), Some(&1));
    assert_eq!(sim.stats().dispatches_held, 2);
}
