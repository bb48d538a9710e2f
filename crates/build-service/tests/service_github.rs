//! The whole service with the GitHub backend against the github-sim simulator on loopback: hit path,
//! miss -> one dispatch -> done under concurrent requests, run failure, server-error and
//! secondary-rate-limit faults on the dispatch (success after backoff, one run), and a restart of the
//! service while the run is in progress.

#![allow(clippy::unwrap_used)]

mod github_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use build_service::github::GitHubBackend;
use build_service::{BackendConfig, RunningService, ServiceConfig};
use github_sim::{Conclusion, Fault, Route, RunTiming, SimHandle};
use github_support::{config_for, driver, start_sim};
use kernel_id::ReleaseLayout;
use serde_json::{Value, json};

fn request() -> Value {
    json!({
        "kernel_version": "6.1.0-47-amd64",
        "architecture": "x86_64",
        "distribution": "debian",
        "distro_version": "12",
        "driver_version": "v0.5.16",
    })
}

async fn start_service(sim: &SimHandle, database_url: &str) -> RunningService {
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
    RunningService::start(config).await.unwrap()
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

async fn post(client: &reqwest::Client, base: &str) -> (u16, Value) {
    let response = client
        .post(format!("{base}/build"))
        .json(&request())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_make_one_run_that_ends_done_and_then_hits() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    let state = tempfile::tempdir().unwrap();
    let service = start_service(
        &sim,
        &format!("sqlite://{}?mode=rwc", state.path().join("b.db").display()),
    )
    .await;
    let base = service.url();
    let client = reqwest::Client::new();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let client = client.clone();
        let base = base.clone();
        requests.spawn(async move { post(&client, &base).await });
    }
    let mut build_ids = HashSet::new();
    while let Some(answer) = requests.join_next().await {
        let (code, answer) = answer.unwrap();
        assert_eq!(code, 202, "{answer}");
        build_ids.insert(answer["build_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(build_ids.len(), 1);
    let build_id = build_ids.into_iter().next().unwrap();
    let ended = wait_until_ended(&client, &base, &build_id).await;
    assert_eq!(ended["status"], "done", "{ended}");
    assert!(
        ended["run_url"]
            .as_str()
            .unwrap()
            .starts_with(sim.base_url()),
        "{ended}"
    );
    assert_eq!(sim.stats().runs_created, 1);
    let run = &sim.runs_titled(&format!("driver-build {build_id}"));
    assert_eq!(run.len(), 1, "the run carries the build id in its name");

    let (code, hit) = post(&client, &base).await;
    assert_eq!(code, 200, "{hit}");
    assert_eq!(hit["download_url"], ended["download_url"]);
    assert_eq!(sim.stats().runs_created, 1);
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_run_is_reported_as_error() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.set_outcome(|_| Conclusion::Failure);
    let state = tempfile::tempdir().unwrap();
    let service = start_service(
        &sim,
        &format!("sqlite://{}?mode=rwc", state.path().join("b.db").display()),
    )
    .await;
    let client = reqwest::Client::new();
    let (code, answer) = post(&client, &service.url()).await;
    assert_eq!(code, 202, "{answer}");
    let ended = wait_until_ended(
        &client,
        &service.url(),
        answer["build_id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(ended["status"], "error", "{ended}");
    assert!(ended["error"].is_string());
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dispatch_faults_are_retried_without_a_second_run() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    // Two 500s before acceptance, a secondary rate limit, then a dispatch that takes effect but is
    // answered 502 (the ambiguous case that must not become a second run).
    sim.inject_fault(Route::DispatchWorkflow, Fault::ServerError(500), 2);
    sim.inject_fault(
        Route::DispatchWorkflow,
        Fault::SecondaryRateLimit {
            status: 403,
            retry_after: Some(Duration::from_secs(1)),
        },
        1,
    );
    sim.inject_fault(
        Route::DispatchWorkflow,
        Fault::AcceptThenServerError(502),
        1,
    );
    let state = tempfile::tempdir().unwrap();
    let service = start_service(
        &sim,
        &format!("sqlite://{}?mode=rwc", state.path().join("b.db").display()),
    )
    .await;
    let client = reqwest::Client::new();
    let (code, answer) = post(&client, &service.url()).await;
    assert_eq!(code, 202, "{answer}");
    let ended = wait_until_ended(
        &client,
        &service.url(),
        answer["build_id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(ended["status"], "done", "{ended}");
    assert_eq!(sim.stats().runs_created, 1, "no duplicate dispatch");
    assert!(
        sim.pending_faults().is_empty(),
        "every fault was met: {:?}",
        sim.pending_faults()
    );
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_mid_run_resumes_tracking_and_reports_done() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.set_run_timing(RunTiming {
        queued: Some(Duration::from_millis(50)),
        in_progress: None,
        publish_step: Duration::ZERO,
    });
    let state = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}?mode=rwc", state.path().join("b.db").display());
    let client = reqwest::Client::new();
    let first = start_service(&sim, &database).await;
    let (code, answer) = post(&client, &first.url()).await;
    assert_eq!(code, 202, "{answer}");
    let build_id = answer["build_id"].as_str().unwrap().to_owned();
    let mut status = Value::Null;
    for _ in 0..50 {
        status = client
            .get(format!("{}/status/{build_id}?wait=1", first.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["status"] == "in_progress" {
            break;
        }
    }
    assert_eq!(status["status"], "in_progress", "{status}");
    first.stop().await.unwrap();

    // The run finishes while no service is running; the next start resumes tracking it.
    let run = sim.runs_titled(&format!("driver-build {build_id}"));
    assert_eq!(run.len(), 1);
    assert!(sim.finish_run(run[0].id, Conclusion::Success).await);
    let second = start_service(&sim, &database).await;
    let ended = wait_until_ended(&client, &second.url(), &build_id).await;
    assert_eq!(ended["status"], "done", "{ended}");
    assert_eq!(sim.stats().runs_created, 1);
    second.stop().await.unwrap();
}
