//! Governed build demand: who may create builds, how many, for what, and the record of who asked.
//! The service runs over HTTP on loopback with a real SQLite file and the real local backend (the
//! executor is the controllable seam); the start-up refusal and the SIGHUP reload run the real
//! `build-service` binary.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use build_service::access::{AccessConfig, Principals, token_digest_hex};
use build_service::store::InFlightCaps;
use common::{Env, Mode, TestExecutor, body, bookworm, client};
use serde_json::Value;

const FLEET: &str = "fleet-token-0123456789abcdef";
const DEBIAN_ONLY: &str = "debian-token-0123456789abcdef";
const OPS: &str = "ops-token-0123456789abcdef";
const OTHER_FLEET: &str = "other-token-0123456789abcdef";

fn principals_text(entries: &[(&str, &str, &str)]) -> String {
    entries
        .iter()
        .map(|(name, token, rest)| {
            format!(
                "[[principal]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\n{rest}\n",
                token_digest_hex(token)
            )
        })
        .collect()
}

fn principals() -> Principals {
    Principals::parse(&principals_text(&[
        (
            "fleet",
            FLEET,
            "scopes = [\"request-build\", \"read-status\"]\nmax_in_flight = 1",
        ),
        (
            "other-fleet",
            OTHER_FLEET,
            "scopes = [\"request-build\", \"read-status\"]",
        ),
        (
            "debian-nodes",
            DEBIAN_ONLY,
            "scopes = [\"request-build\", \"read-status\"]\ndistributions = [\"debian\"]",
        ),
        ("ops", OPS, "scopes = [\"admin\"]"),
    ]))
    .unwrap()
}

async fn post_as(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = client.post(format!("{base}/build")).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn json(response: reqwest::Response) -> (u16, Value) {
    let code = response.status().as_u16();
    (code, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_made_up_token_per_request_is_refused_not_given_a_fresh_bucket() {
    let env = Env::new(TestExecutor::new(Mode::Succeed));
    let service = env
        .start_with(&env.sqlite_url(), |config| {
            config.access = AccessConfig {
                principals: Some(principals()),
                rate_limit: Some((1, 2)),
                ..AccessConfig::default()
            };
        })
        .await;
    let base = service.url();
    let client = client();
    let request = bookworm("v0.1.2");
    // Each of these would have been its own full bucket when buckets were keyed by the bearer
    // string: all 20 must be refused as unknown, none rate limited and none served.
    for n in 0..20 {
        let token = format!("made-up-token-{n:04}-{}", uuid::Uuid::new_v4());
        let response = post_as(&client, &base, Some(&token), &request).await;
        assert_eq!(response.status().as_u16(), 401, "token #{n}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let (code, answer) = json(post_as(&client, &base, None, &request).await).await;
    assert_eq!(code, 401, "no token: {answer}");
    assert_eq!(answer["field"], "authorization", "{answer}");
    assert_eq!(env.counters.total(), 0, "nothing reached the backend");

    // The principal's bucket is its own: a burst of 2, then 429 with Retry-After.
    for _ in 0..2 {
        let (code, answer) = json(post_as(&client, &base, Some(FLEET), &request).await).await;
        assert!(code == 202 || code == 200, "{code} {answer}");
    }
    let limited = post_as(&client, &base, Some(FLEET), &request).await;
    assert_eq!(limited.status().as_u16(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    // Another principal is not slowed by the first one's bucket.
    let (code, answer) = json(post_as(&client, &base, Some(OTHER_FLEET), &request).await).await;
    assert!(code == 202 || code == 200, "{code} {answer}");
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_principal_over_its_in_flight_cap_gets_429_and_nothing_is_dispatched() {
    let executor = TestExecutor::new(Mode::Hold);
    let env = Env::new(executor.clone());
    let service = env
        .start_with(&env.sqlite_url(), |config| {
            config.access = AccessConfig {
                principals: Some(principals()),
                ..AccessConfig::default()
            };
            config.caps = InFlightCaps {
                total: Some(2),
                per_caller: Some(8),
            };
        })
        .await;
    let base = service.url();
    let client = client();

    let (code, first) = json(post_as(&client, &base, Some(FLEET), &bookworm("v0.1.2")).await).await;
    assert_eq!(code, 202, "{first}");
    let dispatches = || env.counters.dispatches.load(Ordering::SeqCst);
    wait_for(|| dispatches() == 1).await;

    // `fleet` may have one build in flight: a second identity is refused, with a retry time.
    let refused = post_as(&client, &base, Some(FLEET), &bookworm("v0.1.3")).await;
    assert_eq!(refused.status().as_u16(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    let (_, answer) = json(refused).await;
    assert!(
        answer["rule"].as_str().unwrap().contains("at most 1"),
        "{answer}"
    );
    // Joining the build already in flight creates no demand and is not capped.
    let (code, joined) =
        json(post_as(&client, &base, Some(FLEET), &bookworm("v0.1.2")).await).await;
    assert_eq!(code, 202, "{joined}");
    assert_eq!(joined["build_id"], first["build_id"]);

    // Another principal has its own allowance, up to the service-wide cap of 2.
    let (code, second) =
        json(post_as(&client, &base, Some(OTHER_FLEET), &bookworm("v0.1.3")).await).await;
    assert_eq!(code, 202, "{second}");
    wait_for(|| dispatches() == 2).await;
    let (code, answer) =
        json(post_as(&client, &base, Some(OTHER_FLEET), &bookworm("v0.1.4")).await).await;
    assert_eq!(code, 429, "{answer}");
    assert!(
        answer["rule"]
            .as_str()
            .unwrap()
            .contains("at most 2 builds"),
        "{answer}"
    );
    // Nothing was dispatched for either refusal, now or later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dispatches(), 2);

    // When the builds end the slots are free again.
    executor.release();
    for (build, token) in [(&first, FLEET), (&second, OTHER_FLEET)] {
        wait_ended_as(&client, &base, token, build["build_id"].as_str().unwrap()).await;
    }
    let (code, answer) =
        json(post_as(&client, &base, Some(FLEET), &bookworm("v0.1.3")).await).await;
    assert!(code == 200 || code == 202, "{code} {answer}");
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_principal_limited_to_debian_cannot_request_fedora_and_scopes_hold() {
    let env = Env::new(TestExecutor::new(Mode::Succeed));
    let service = env
        .start_with(&env.sqlite_url(), |config| {
            config.access = AccessConfig {
                principals: Some(principals()),
                ..AccessConfig::default()
            };
        })
        .await;
    let base = service.url();
    let client = client();
    let fedora = body("6.14.0-63.fc42.x86_64", "fedora", None, "v0.1.2");
    let (code, answer) = json(post_as(&client, &base, Some(DEBIAN_ONLY), &fedora).await).await;
    assert_eq!(code, 403, "{answer}");
    assert_eq!(answer["field"], "distribution", "{answer}");
    assert!(
        answer["rule"].as_str().unwrap().contains("debian-nodes"),
        "{answer}"
    );
    assert_eq!(
        env.counters.total(),
        0,
        "refused before any lookup or dispatch"
    );
    let (code, answer) =
        json(post_as(&client, &base, Some(DEBIAN_ONLY), &bookworm("v0.1.2")).await).await;
    assert_eq!(code, 202, "{answer}");
    let build_id = answer["build_id"].as_str().unwrap().to_owned();

    // An admin may list builds but holds no scope to create them.
    let (code, answer) = json(post_as(&client, &base, Some(OPS), &bookworm("v0.1.2")).await).await;
    assert_eq!(code, 403, "{answer}");
    assert!(
        answer["rule"].as_str().unwrap().contains("request-build"),
        "{answer}"
    );
    // Status needs read-status: the admin is refused, the requester is answered.
    let status_as = |token: &'static str| {
        client
            .get(format!("{base}/status/{build_id}"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(status_as(OPS).await.unwrap().status().as_u16(), 403);
    assert_eq!(status_as(DEBIAN_ONLY).await.unwrap().status().as_u16(), 200);
    let anonymous = client
        .get(format!("{base}/status/{build_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    // Health, metrics and the API document stay open.
    for open in ["/healthz", "/metrics", "/openapi.json"] {
        let response = client.get(format!("{base}{open}")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{open}");
    }
    service.stop().await.unwrap();
}

/// Long-polls `build_id` with `token` until it ends (bounded).
async fn wait_ended_as(client: &reqwest::Client, base: &str, token: &str, build_id: &str) -> Value {
    for _ in 0..60 {
        let (code, status) = json(
            client
                .get(format!("{base}/status/{build_id}?wait=5"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(code, 200, "{status}");
        if matches!(
            status["status"].as_str(),
            Some("done" | "error" | "timed_out")
        ) {
            return status;
        }
    }
    panic!("build {build_id} did not end");
}

async fn wait_for(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "condition not met within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real binary with the local backend on a loopback port, killed on drop.
struct ServiceProcess {
    child: Child,
    url: String,
    _state: tempfile::TempDir,
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn service_command(state: &std::path::Path) -> Command {
    let repo = state.join("driver-repo");
    if !repo.exists() {
        testkit::SampleDriverRepo::create_tagged(&repo, common::TAGS).unwrap();
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_build-service"));
    command
        .arg("serve")
        .arg("--state-dir")
        .arg(state)
        .arg("--driver-repo")
        .arg(&repo)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    command
}

async fn start_binary(principals_file: &std::path::Path) -> ServiceProcess {
    let state = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(state.path().join("service.log")).unwrap();
    let child = service_command(state.path())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--principals-file")
        .arg(principals_file)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if reqwest::get(format!("{url}/healthz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "service did not start: {}",
            std::fs::read_to_string(state.path().join("service.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ServiceProcess {
        child,
        url,
        _state: state,
    }
}

#[test]
fn anonymous_service_on_a_non_loopback_address_is_refused_at_start() {
    let state = tempfile::tempdir().unwrap();
    let output = service_command(state.path())
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("no principal is configured") && stderr.contains("--allow-anonymous"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("binding"),
        "refused before binding: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principals_are_reloaded_on_sighup_and_a_broken_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("principals.toml");
    let scopes = "scopes = [\"request-build\", \"read-status\"]";
    std::fs::write(&file, principals_text(&[("fleet", FLEET, scopes)])).unwrap();
    let service = start_binary(&file).await;
    let client = client();
    // A status lookup of an unknown build: 404 means authenticated, 401 means not.
    let probe = async |token: &str| {
        client
            .get(format!("{}/status/{}", service.url, uuid::Uuid::new_v4()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(probe(FLEET).await, 404);
    assert_eq!(probe(OTHER_FLEET).await, 401);

    let replace = |text: String| {
        let staged = dir.path().join("principals.toml.new");
        std::fs::File::create(&staged)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        std::fs::rename(&staged, &file).unwrap();
        let status = Command::new("kill")
            .args(["-HUP", &service.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    replace(principals_text(&[("other-fleet", OTHER_FLEET, scopes)]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while probe(OTHER_FLEET).await != 404 {
        assert!(Instant::now() < deadline, "reload did not happen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(probe(FLEET).await, 401, "the removed principal is refused");

    // A broken edit is refused and the principals in force stay.
    replace("[[principal]]\nname = \"x\"\n".to_owned());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(probe(OTHER_FLEET).await, 404);
    assert_eq!(probe(FLEET).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_list_shows_who_requested_each_build() {
    let executor = TestExecutor::new(Mode::Hold);
    let env = Env::new(executor.clone());
    let service = env
        .start_with(&env.sqlite_url(), |config| {
            config.access = AccessConfig {
                principals: Some(principals()),
                ..AccessConfig::default()
            };
        })
        .await;
    let base = service.url();
    let client = client();
    let (code, created) =
        json(post_as(&client, &base, Some(OTHER_FLEET), &bookworm("v0.1.2")).await).await;
    assert_eq!(code, 202, "{created}");
    let build_id = created["build_id"].as_str().unwrap().to_owned();
    // Three more requests join it: two from `fleet` (one row, counted twice), one from debian-nodes.
    for token in [FLEET, FLEET, DEBIAN_ONLY] {
        let (code, joined) =
            json(post_as(&client, &base, Some(token), &bookworm("v0.1.2")).await).await;
        assert_eq!(code, 202, "{joined}");
        assert_eq!(joined["build_id"], build_id.as_str());
    }
    // A refusal is recorded too, with no build.
    let fedora = body("6.14.0-63.fc42.x86_64", "fedora", None, "v0.1.2");
    assert_eq!(
        post_as(&client, &base, Some(DEBIAN_ONLY), &fedora)
            .await
            .status()
            .as_u16(),
        403
    );

    let list_as = async |token: &str, query: &str| {
        json(
            client
                .get(format!("{base}/builds{query}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await
    };
    let (code, refused) = list_as(FLEET, "").await;
    assert_eq!(code, 403, "only admins list builds: {refused}");
    let (code, list) = list_as(OPS, "").await;
    assert_eq!(code, 200, "{list}");
    let typed: build_api::BuildList = serde_json::from_value(list.clone()).unwrap();
    assert_eq!(typed.builds.len(), 1, "{list}");
    let entry = &typed.builds[0];
    assert_eq!(entry.build.build_id, build_id);
    assert_eq!(entry.requested_by.as_deref(), Some("other-fleet"));
    let seen: Vec<(String, build_api::RequestOutcome, u64, String)> = entry
        .requesters
        .iter()
        .map(|r| (r.principal.clone(), r.outcome, r.requests, r.client.clone()))
        .collect();
    use build_api::RequestOutcome::{Created, Joined};
    let mut expected = vec![
        ("other-fleet".to_owned(), Created, 1, "127.0.0.1".to_owned()),
        ("fleet".to_owned(), Joined, 2, "127.0.0.1".to_owned()),
        ("debian-nodes".to_owned(), Joined, 1, "127.0.0.1".to_owned()),
    ];
    let mut sorted = seen.clone();
    sorted.sort_by_key(|(p, o, _, _)| (p.clone(), o.as_str()));
    expected.sort_by_key(|(p, o, _, _)| (p.clone(), o.as_str()));
    assert_eq!(sorted, expected, "{list}");

    // Filters: by requester (created or joined), by state, and a filter matching nothing.
    let (_, by_fleet) = list_as(OPS, "?requester=fleet").await;
    assert_eq!(
        by_fleet["builds"].as_array().unwrap().len(),
        1,
        "{by_fleet}"
    );
    let (_, by_nobody) = list_as(OPS, "?requester=nobody").await;
    assert_eq!(
        by_nobody["builds"].as_array().unwrap().len(),
        0,
        "{by_nobody}"
    );
    let (_, queued) = list_as(OPS, "?state=queued&architecture=amd64").await;
    let (_, running) = list_as(OPS, "?state=in_progress&architecture=amd64").await;
    assert_eq!(
        queued["builds"].as_array().unwrap().len() + running["builds"].as_array().unwrap().len(),
        1,
        "{queued} {running}"
    );
    let (code, bad) = list_as(OPS, "?state=finished").await;
    assert_eq!(code, 422, "{bad}");
    let (code, bad) = list_as(OPS, "?limit=0").await;
    assert_eq!(code, 422, "{bad}");
    assert_eq!(bad["field"], "limit");
    executor.release();
    wait_ended_as(&client, &base, OTHER_FLEET, &build_id).await;
    let (_, done) = list_as(OPS, "?state=done").await;
    assert_eq!(done["builds"].as_array().unwrap().len(), 1, "{done}");
    service.stop().await.unwrap();
}
