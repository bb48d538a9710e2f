//! The whole service over HTTP with the GitHub backend against github-sim: a miss becomes one
//! `workflow_dispatch`, `/status` follows the run to `done`; 1,000 concurrent identical requests make one
//! dispatch; two distro versions make two; a restart mid-build resumes tracking and finishes.

mod github_support;

use std::sync::Arc;
use std::time::Duration;

use build_service::github::GitHubBackend;
use build_service::{BackendConfig, RunningService, ServiceConfig};
use github_sim::{Conclusion, Fault, Route, RunStatus, RunTiming, SimHandle};
use github_support::*;
use kernel_id::{KernelIdentity, ReleaseLayout};
use serde_json::{Value, json};

const KERNEL: &str = "6.1.0-47-amd64";

fn request_body(identity: &KernelIdentity) -> Value {
    let input = identity.to_input();
    json!({
        "kernel_version": input.kernel_version,
        "architecture": input.architecture,
        "distribution": input.distribution,
        "distro_version": input.distro_version,
        "driver_version": input.driver_version,
    })
}

async fn start_service(sim: &SimHandle, database: &std::path::Path) -> RunningService {
    let backend = GitHubBackend::new(config_for(sim, ReleaseLayout::PerArtifact)).expect("backend");
    let mut config = ServiceConfig::new(
        format!("sqlite://{}?mode=rwc", database.display()),
        driver(),
        BackendConfig::Custom(Arc::new(backend)),
    );
    config.poll_interval = Some(Duration::from_millis(50));
    config.retry_base = Duration::from_millis(50);
    config.retry_max = Duration::from_millis(500);
    config.lease = Duration::from_secs(5);
    // A thousand simulated nodes all come from 127.0.0.1 here; the per-client cap would see one client.
    config.max_requests_per_client = None;
    RunningService::start(config).await.expect("service starts")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

async fn post_build(client: &reqwest::Client, base: &str, body: &Value) -> (u16, Value) {
    let response = client
        .post(format!("{base}/build"))
        .json(body)
        .send()
        .await
        .expect("POST /build");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

/// Long-polls `/status` until the build ends (bounded).
async fn wait_until_ended(client: &reqwest::Client, base: &str, build_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = client
            .get(format!("{base}/status/{build_id}?wait=5"))
            .send()
            .await
            .expect("GET /status");
        assert_eq!(response.status().as_u16(), 200);
        let body: Value = response.json().await.expect("JSON status");
        if matches!(
            body["status"].as_str(),
            Some("done" | "error" | "timed_out")
        ) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "build not ended in time: {body}"
        );
    }
}

fn held_runs() -> RunTiming {
    RunTiming {
        queued: None,
        in_progress: None,
        publish_step: Duration::ZERO,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_is_built_through_github_and_then_served_as_a_hit() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(&sim, &dir.path().join("builds.db")).await;
    let base = service.url();
    let client = client();
    let identity = debian(KERNEL);

    let (code, answer) = post_build(&client, &base, &request_body(&identity)).await;
    assert_eq!(code, 202, "{answer}");
    let build_id = answer["build_id"].as_str().expect("build id").to_owned();
    let status = wait_until_ended(&client, &base, &build_id).await;
    assert_eq!(status["status"], "done", "{status}");
    let tag = ReleaseLayout::PerArtifact.release_tag(&driver(), &identity);
    let url = sim.browser_download_url(&tag, &identity.package_file_name(&driver()));
    assert_eq!(status["download_url"], url.as_str());
    let runs = sim.runs_titled(&title(&build_id));
    assert_eq!(runs.len(), 1);
    assert!(
        status["run_url"]
            .as_str()
            .is_some_and(|u| u.contains(&runs[0].id.to_string())),
        "{status}"
    );

    let (code, answer) = post_build(&client, &base, &request_body(&identity)).await;
    assert_eq!(
        (code, answer["status"].as_str()),
        (200, Some("done")),
        "{answer}"
    );
    assert_eq!(answer["download_url"], url.as_str());
    assert_eq!(sim.stats().runs_created, 1);
    service.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_run_is_reported_as_error() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.set_outcome(|_| Conclusion::Failure);
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(&sim, &dir.path().join("builds.db")).await;
    let base = service.url();
    let client = client();
    let (code, answer) = post_build(&client, &base, &request_body(&debian(KERNEL))).await;
    assert_eq!(code, 202, "{answer}");
    let status = wait_until_ended(&client, &base, answer["build_id"].as_str().expect("id")).await;
    assert_eq!(status["status"], "error", "{status}");
    assert!(
        status["error"]
            .as_str()
            .is_some_and(|e| e.contains("failure")),
        "{status}"
    );
    service.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_identical_requests_make_one_dispatch() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.set_run_timing(held_runs());
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(&sim, &dir.path().join("builds.db")).await;
    let base = service.url();
    let client = client();
    let body = request_body(&debian(KERNEL));

    let requests = (0..1000).map(|_| post_build(&client, &base, &body));
    let answers = futures_util::future::join_all(requests).await;
    let mut build_ids: Vec<String> = answers
        .iter()
        .map(|(code, answer)| {
            assert_eq!(*code, 202, "{answer}");
            answer["build_id"].as_str().expect("build id").to_owned()
        })
        .collect();
    build_ids.dedup();
    assert_eq!(build_ids.len(), 1, "one build id for all");

    // Let the tracker dispatch, then count on the simulator.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sim.stats().runs_created == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no dispatch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = sim.stats();
    assert_eq!(stats.requests_to(Route::DispatchWorkflow), 1);
    assert_eq!(stats.runs_created, 1);
    // Existence checks were shared, not one per request.
    assert!(stats.requests_to(Route::ReleaseByTag) < 100, "{stats:?}");

    let run = sim
        .runs_titled(&title(&build_ids[0]))
        .pop()
        .expect("the run");
    assert!(sim.finish_run(run.id, Conclusion::Success).await);
    let status = wait_until_ended(&client, &base, &build_ids[0]).await;
    assert_eq!(status["status"], "done", "{status}");
    service.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_distro_versions_are_distinct_dispatches() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.set_run_timing(held_runs());
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(&sim, &dir.path().join("builds.db")).await;
    let base = service.url();
    let client = client();
    let jammy = identity("6.8.0-45-generic", "ubuntu", "22.04");
    let noble = identity("6.8.0-45-generic", "ubuntu", "24.04");

    let (jammy_body, noble_body) = (request_body(&jammy), request_body(&noble));
    let ((code_a, a), (code_b, b)) = tokio::join!(
        post_build(&client, &base, &jammy_body),
        post_build(&client, &base, &noble_body)
    );
    assert_eq!((code_a, code_b), (202, 202), "{a} {b}");
    assert_ne!(a["build_id"], b["build_id"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sim.stats().runs_created < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected two dispatches: {:?}",
            sim.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut versions: Vec<String> = sim
        .runs()
        .iter()
        .filter_map(|run| run.inputs.get("distro_version").cloned())
        .collect();
    versions.sort();
    assert_eq!(versions, ["22.04", "24.04"]);
    assert_eq!(sim.requests(Route::DispatchWorkflow), 2);
    service.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_build_resumes_tracking_and_reports_done() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.set_run_timing(held_runs());
    let dir = tempfile::tempdir().expect("temp dir");
    let database = dir.path().join("builds.db");
    let client = client();
    let identity = debian(KERNEL);

    let service = start_service(&sim, &database).await;
    let (code, answer) = post_build(&client, &service.url(), &request_body(&identity)).await;
    assert_eq!(code, 202, "{answer}");
    let build_id = answer["build_id"].as_str().expect("build id").to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let run = loop {
        if let Some(run) = sim.runs_titled(&title(&build_id)).pop() {
            break run;
        }
        assert!(tokio::time::Instant::now() < deadline, "no run dispatched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(sim.start_run(run.id));
    service.stop().await.expect("clean stop");

    // While the service is down, the run finishes and publishes.
    assert!(sim.finish_run(run.id, Conclusion::Success).await);
    assert_eq!(sim.run(run.id).expect("run").status, RunStatus::Completed);

    let restarted = start_service(&sim, &database).await;
    let status = wait_until_ended(&client, &restarted.url(), &build_id).await;
    assert_eq!(status["status"], "done", "{status}");
    assert_eq!(
        sim.stats().runs_created,
        1,
        "the restart did not dispatch again"
    );
    restarted.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_the_way_still_give_one_build_and_show_in_metrics() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    let retry_after = Some(Duration::from_secs(1));
    sim.inject_fault(
        Route::ReleaseByTag,
        Fault::SecondaryRateLimit {
            status: 403,
            retry_after,
        },
        1,
    );
    sim.inject_fault(Route::DispatchWorkflow, Fault::ServerError(502), 1);
    sim.inject_fault(
        Route::DispatchWorkflow,
        Fault::AcceptThenServerError(500),
        1,
    );
    sim.inject_fault(Route::GetRun, Fault::ServerError(503), 2);
    let dir = tempfile::tempdir().expect("temp dir");
    let service = start_service(&sim, &dir.path().join("builds.db")).await;
    let base = service.url();
    let client = client();

    // The existence check makes one attempt: its rate limit is the caller's 503 with Retry-After.
    let refused = client
        .post(format!("{base}/build"))
        .json(&request_body(&debian(KERNEL)))
        .send()
        .await
        .expect("POST /build");
    assert_eq!(refused.status().as_u16(), 503);
    let retry_after = refused
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .expect("Retry-After seconds");
    assert_eq!(retry_after, 1);
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (code, answer) = post_build(&client, &base, &request_body(&debian(KERNEL))).await;
    assert_eq!(code, 202, "{answer}");
    let build_id = answer["build_id"].as_str().expect("build id").to_owned();
    let status = wait_until_ended(&client, &base, &build_id).await;
    assert_eq!(status["status"], "done", "{status}");
    let stats = sim.stats();
    assert_eq!(stats.runs_created, 1, "{stats:?}");
    assert_eq!(sim.runs_titled(&title(&build_id)).len(), 1);
    assert!(
        sim.pending_faults().is_empty(),
        "every fault was met: {:?}",
        sim.pending_faults()
    );

    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("github_api_calls_total{endpoint=\"workflow_dispatch\",status=\"502\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("github_rate_limit_remaining"), "{metrics}");
    service.stop().await.expect("clean stop");
}
