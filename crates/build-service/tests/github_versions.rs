//! A driver version names a git commit with the GitHub backend, against github-sim: the service
//! resolves the version through the repository's git refs (`matching-refs`, annotated tags peeled
//! through `git/tags/{sha}`) before it dispatches anything, and sends the commit as the
//! `source_commit` input of `driver-build.yml`.
//!
//! - a version that is not a tag is refused (422 naming `driver_version`): the simulator receives
//!   no dispatch and the store holds no row;
//! - a tag's run is dispatched with that tag's commit (annotated: its commit, not the tag object)
//!   and the build records it; two versions of one kernel are two runs of two commits; a tag moved
//!   after a build changes only new builds;
//! - a burst of unknown versions lists the tags at most once per refresh interval (API calls
//!   counted by the simulator); a repository of many tags is read page by page, and listed again
//!   for free (304s) with every tag object peeled only once.

#![allow(clippy::unwrap_used)]

mod github_support;

use std::sync::Arc;
use std::time::Duration;

use build_service::github::GitHubBackend;
use build_service::source::SourceSettings;
use build_service::store::Store;
use build_service::{Backend, BackendConfig, RunningService, ServiceConfig};
use github_sim::{Route, SimHandle};
use github_support::{COMMIT, config_for, driver, start_sim};
use kernel_id::ReleaseLayout;
use serde_json::{Value, json};

const C2: &str = "2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b";
const C3: &str = "3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c";

fn request(kernel: &str, driver_version: &str) -> Value {
    json!({
        "kernel_version": kernel,
        "architecture": "x86_64",
        "distribution": "debian",
        "distro_version": "12",
        "driver_version": driver_version,
    })
}

async fn start_service(
    sim: &SimHandle,
    database_url: &str,
    source: SourceSettings,
) -> RunningService {
    let backend =
        Arc::new(GitHubBackend::new(config_for(sim, ReleaseLayout::PerArtifact)).unwrap());
    let mut config = ServiceConfig::new(
        database_url.to_owned(),
        driver(),
        BackendConfig::Custom(backend),
    );
    config.poll_interval = Some(Duration::from_millis(100));
    config.retry_base = Duration::from_millis(50);
    config.retry_max = Duration::from_millis(500);
    config.wait_recheck = Duration::from_millis(200);
    config.source = source;
    RunningService::start(config).await.unwrap()
}

fn uncached() -> SourceSettings {
    SourceSettings {
        refresh_interval: Duration::ZERO,
        max_age: Duration::ZERO,
    }
}

async fn post(client: &reqwest::Client, base: &str, body: &Value) -> (u16, Value) {
    let response = client
        .post(format!("{base}/build"))
        .json(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn wait_until_ended(client: &reqwest::Client, base: &str, build_id: &str) -> Value {
    for _ in 0..60 {
        let status: Value = client
            .get(format!("{base}/status/{build_id}?wait=5"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(
            status["status"].as_str(),
            Some("done" | "error" | "timed_out")
        ) {
            return status;
        }
    }
    panic!("build {build_id} did not end");
}

async fn build_to_done(client: &reqwest::Client, base: &str, body: &Value) -> Value {
    let (code, answer) = post(client, base, body).await;
    assert_eq!(code, 202, "{answer}");
    let ended = wait_until_ended(client, base, answer["build_id"].as_str().unwrap()).await;
    assert_eq!(ended["status"], "done", "{ended}");
    ended
}

/// The `source_commit` input of the run dispatched for `build_id`.
fn dispatched_commit(sim: &SimHandle, build_id: &str) -> String {
    let runs = sim.runs_titled(&github_support::title(build_id));
    assert_eq!(runs.len(), 1, "one run for {build_id}: {runs:?}");
    runs[0].inputs["source_commit"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_is_not_a_tag_dispatches_nothing() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    let state = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", state.path().join("b.db").display());
    let service = start_service(&sim, &url, SourceSettings::default()).await;
    let client = reqwest::Client::new();
    let (code, answer) = post(
        &client,
        &service.url(),
        &request("6.1.0-47-amd64", "v9.9.9"),
    )
    .await;
    assert_eq!(code, 422, "{answer}");
    assert_eq!(answer["field"], "driver_version");
    assert_eq!(
        answer["error"],
        format!(
            "driver_version: v9.9.9 is not a tag of https://github.com/{}/{}",
            sim.owner(),
            sim.repo()
        )
    );
    assert_eq!(sim.stats().dispatches_received, 0);
    assert!(sim.runs().is_empty());
    assert_eq!(sim.requests(Route::DispatchWorkflow), 0);
    let store = Store::connect(&url).await.unwrap();
    assert_eq!(store.count_builds().await.unwrap(), 0);
    store.close().await;
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_dispatched_with_the_commit_their_tag_names() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    let tag_object = sim
        .create_annotated_tag("v3.0.0", C2, "annotated release")
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", state.path().join("b.db").display());
    let service = start_service(&sim, &url, uncached()).await;
    let client = reqwest::Client::new();

    // Two versions of one kernel: two runs, each with its own commit.
    let lightweight = build_to_done(
        &client,
        &service.url(),
        &request("6.1.0-47-amd64", "v0.5.16"),
    )
    .await;
    let annotated = build_to_done(
        &client,
        &service.url(),
        &request("6.1.0-47-amd64", "v3.0.0"),
    )
    .await;
    let lightweight_id = lightweight["build_id"].as_str().unwrap();
    let annotated_id = annotated["build_id"].as_str().unwrap();
    assert_eq!(dispatched_commit(&sim, lightweight_id), COMMIT);
    assert_eq!(lightweight["source_commit"], COMMIT);
    assert_eq!(
        dispatched_commit(&sim, annotated_id),
        C2,
        "the annotated tag's commit, never its tag object {tag_object}"
    );
    assert_eq!(annotated["source_commit"], C2);

    // The tag moves: the old build keeps its commit, a new identity is dispatched with the new one.
    sim.move_tag("v3.0.0", C3).unwrap();
    let moved = build_to_done(
        &client,
        &service.url(),
        &request("6.1.0-44-amd64", "v3.0.0"),
    )
    .await;
    assert_eq!(
        dispatched_commit(&sim, moved["build_id"].as_str().unwrap()),
        C3
    );
    assert_eq!(moved["source_commit"], C3);
    let old: Value = client
        .get(format!("{}/status/{annotated_id}", service.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(old["source_commit"], C2);
    assert_eq!(sim.runs().len(), 3);
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_unknown_versions_lists_the_tags_once_per_interval() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    let state = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", state.path().join("b.db").display());
    let service = start_service(
        &sim,
        &url,
        SourceSettings {
            refresh_interval: Duration::from_secs(60),
            max_age: Duration::from_secs(60),
        },
    )
    .await;
    let client = reqwest::Client::new();
    let base = Arc::new(service.url());
    let burst: Vec<_> = (0..64)
        .map(|n| {
            let (client, base) = (client.clone(), Arc::clone(&base));
            tokio::spawn(async move {
                post(
                    &client,
                    &base,
                    &request("6.1.0-47-amd64", &format!("v7.7.{n}")),
                )
                .await
            })
        })
        .collect();
    for answer in burst {
        let (code, answer) = answer.await.unwrap();
        assert_eq!(code, 422, "{answer}");
    }
    assert_eq!(
        sim.requests(Route::MatchingRefs),
        1,
        "64 unknown versions at once cost one listing"
    );
    assert_eq!(sim.stats().dispatches_received, 0);
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tags_are_read_page_by_page_and_listed_again_for_free() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    for n in 0..140 {
        let commit = format!("{n:040x}");
        if n % 10 == 0 {
            sim.create_annotated_tag(&format!("v1.0.{n}"), &commit, "annotated")
                .unwrap();
        } else {
            sim.create_tag(&format!("v1.0.{n}"), &commit).unwrap();
        }
    }
    let backend = GitHubBackend::new(config_for(&sim, ReleaseLayout::PerArtifact)).unwrap();
    let repository = backend.source_repository();
    assert_eq!(
        repository.uri(),
        format!("https://github.com/{}/{}", sim.owner(), sim.repo())
    );
    let tags = repository.list_tags().await.unwrap();
    assert_eq!(tags.len(), 140 + github_support::TAGS.len());
    for n in [0, 7, 10, 139] {
        assert_eq!(tags[&format!("v1.0.{n}")].as_str(), format!("{n:040x}"));
    }
    assert_eq!(sim.requests(Route::MatchingRefs), 2, "two pages of 100");
    assert_eq!(
        sim.requests(Route::GetTag),
        14,
        "each annotated tag peeled once"
    );

    let before = sim.stats();
    let again = repository.list_tags().await.unwrap();
    assert_eq!(again, tags);
    let after = sim.stats();
    assert_eq!(after.requests_to(Route::MatchingRefs), 4);
    assert_eq!(
        after.not_modified - before.not_modified,
        2,
        "both pages unchanged"
    );
    assert_eq!(after.quota_consumed, before.quota_consumed, "304s are free");
    assert_eq!(
        sim.requests(Route::GetTag),
        14,
        "tag objects never change: not asked again"
    );
}
