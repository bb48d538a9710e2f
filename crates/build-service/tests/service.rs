//! The service's behaviour over HTTP on loopback: validation, hit path, build life cycle (done, error,
//! timed_out), dedup under concurrency, restart, long polls, rate limits, metrics and the OpenAPI
//! document. Real SQLite file, real local backend (artifact directory, publishing, downloads); the
//! executor is the controllable seam.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{
    Env, Mode, TestExecutor, body, bookworm, client, post_build, status, wait_until_ended,
};
use kernel_id::{IdentityInput, KernelIdentity};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_requests_are_refused_before_any_lookup_or_dispatch() {
    let executor = TestExecutor::new(Mode::Succeed);
    let env = Env::new(executor.clone());
    let service = env.start().await;
    let base = service.url();
    let client = client();

    let long = "a".repeat(10 * 1024);
    let kernel = |value: &str| {
        json!({"kernel_version": value, "architecture": "x86_64", "distribution": "debian", "driver_version": "v0.1.2"})
            .to_string()
    };
    let valid = bookworm("v0.1.2");
    let with = |key: &str, value: Value| {
        let mut body = valid.clone();
        body[key] = value;
        body.to_string()
    };
    let without = |key: &str| {
        let mut body = valid.clone();
        body.as_object_mut().unwrap().remove(key);
        body.to_string()
    };
    // (description, body, content type, expected status, expected field)
    let cases: Vec<(&str, String, &str, u16, Option<&str>)> = vec![
        ("command substitution", kernel("$(reboot)"), "application/json", 422, Some("kernel_version")),
        ("command substitution suffix", kernel("6.1.0-47-amd64$(id)"), "application/json", 422, Some("kernel_version")),
        ("backticks", kernel("6.1.0-47-amd64`id`"), "application/json", 422, Some("kernel_version")),
        ("semicolon", kernel("6.1.0-47-amd64;rm -rf /"), "application/json", 422, Some("kernel_version")),
        ("pipe", kernel("6.1.0-47-amd64|sh"), "application/json", 422, Some("kernel_version")),
        ("newline", kernel("6.1.0-47-amd64\nrun: evil"), "application/json", 422, Some("kernel_version")),
        ("carriage return", kernel("6.1.0-47-amd64\r"), "application/json", 422, Some("kernel_version")),
        ("NUL", kernel("6.1.0-47-amd64\u{0}"), "application/json", 422, Some("kernel_version")),
        ("YAML mapping", kernel("6.1.0: {a: b}"), "application/json", 422, Some("kernel_version")),
        ("YAML anchor", kernel("&anchor 6.1.0"), "application/json", 422, Some("kernel_version")),
        ("YAML tag", kernel("!!python/object:os.system"), "application/json", 422, Some("kernel_version")),
        ("YAML list", kernel("- 6.1.0"), "application/json", 422, Some("kernel_version")),
        ("JSON in a value", kernel("{\"a\":1}"), "application/json", 422, Some("kernel_version")),
        ("quote", kernel("6.1.0\"x"), "application/json", 422, Some("kernel_version")),
        ("GitHub expression", kernel("${{ secrets.TOKEN }}"), "application/json", 422, Some("kernel_version")),
        ("path traversal", kernel("../../etc/passwd"), "application/json", 422, Some("kernel_version")),
        ("fullwidth digit", kernel("６.1.0-47-amd64"), "application/json", 422, Some("kernel_version")),
        ("empty", kernel(""), "application/json", 422, Some("kernel_version")),
        ("10 KB kernel_version", kernel(&long), "application/json", 422, Some("kernel_version")),
        ("10 KB driver_version", with("driver_version", json!(long)), "application/json", 422, Some("driver_version")),
        ("unknown field", with("extra", json!("x")), "application/json", 422, Some("extra")),
        ("prototype field", with("__proto__", json!({})), "application/json", 422, Some("__proto__")),
        ("number kernel_version", with("kernel_version", json!(6)), "application/json", 422, Some("kernel_version")),
        ("array architecture", with("architecture", json!(["x86_64"])), "application/json", 422, Some("architecture")),
        ("number distro_version", with("distro_version", json!(12)), "application/json", 422, Some("distro_version")),
        ("null driver_version", with("driver_version", Value::Null), "application/json", 422, Some("driver_version")),
        ("object distribution", with("distribution", json!({"a": 1})), "application/json", 422, Some("distribution")),
        ("missing kernel_version", without("kernel_version"), "application/json", 422, Some("kernel_version")),
        ("unknown architecture", with("architecture", json!("mips")), "application/json", 422, Some("architecture")),
        ("unknown distribution", with("distribution", json!("arch")), "application/json", 422, Some("distribution")),
        ("unsupported distro version", with("distro_version", json!("99")), "application/json", 422, Some("distro_version")),
        ("driver version without v", with("driver_version", json!("0.1.2")), "application/json", 422, Some("driver_version")),
        ("driver version injection", with("driver_version", json!("v0.1.2;id")), "application/json", 422, Some("driver_version")),
        ("arch contradicts release", with("kernel_version", json!("6.1.0-47-arm64")), "application/json", 422, Some("architecture")),
        (
            "distro version contradicts release",
            with("kernel_version", json!("6.12.48+deb13-amd64")),
            "application/json",
            422,
            Some("distro_version"),
        ),
        (
            "duplicate key",
            r#"{"kernel_version":"6.1.0-47-amd64","kernel_version":"$(id)","architecture":"x86_64","distribution":"debian","driver_version":"v0.1.2"}"#.to_owned(),
            "application/json",
            422,
            Some("body"),
        ),
        ("not JSON", "kernel_version=6.1.0-47-amd64".to_owned(), "application/json", 400, Some("body")),
        ("truncated JSON", r#"{"kernel_version":"6.1.0-47-amd64""#.to_owned(), "application/json", 400, Some("body")),
        ("trailing garbage", format!("{} x", valid), "application/json", 400, Some("body")),
        ("empty body", String::new(), "application/json", 400, Some("body")),
        ("array body", "[]".to_owned(), "application/json", 422, Some("body")),
        ("string body", "\"6.1.0-47-amd64\"".to_owned(), "application/json", 422, Some("body")),
        ("oversize body", with("kernel_version", json!("a".repeat(20 * 1024))), "application/json", 413, None),
        ("form content type", valid.to_string(), "application/x-www-form-urlencoded", 415, Some("content-type")),
    ];
    assert!(cases.len() >= 25);
    for (description, payload, content_type, expected, field) in &cases {
        let response = client
            .post(format!("{base}/build"))
            .header("content-type", *content_type)
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(code, *expected, "{description}: {answer}");
        assert!(answer["error"].is_string(), "{description}: {answer}");
        assert!(answer["rule"].is_string(), "{description}: {answer}");
        if let Some(field) = field {
            assert_eq!(answer["field"], json!(field), "{description}: {answer}");
        }
    }
    // Nothing reached the backend: no lookup, no dispatch, no build directory, no executor run.
    assert_eq!(env.counters.total(), 0, "the backend saw calls");
    assert_eq!(executor.started.load(Ordering::SeqCst), 0);
    let builds = std::fs::read_dir(env.dir.path().join("builds"))
        .unwrap()
        .count();
    assert_eq!(builds, 0);

    // And a valid request still works afterwards.
    let (code, answer) = post_build(&client, &base, &valid).await;
    assert_eq!(code, 202, "{answer}");
    service.stop().await.unwrap();
}

fn identity_of(body: &Value) -> KernelIdentity {
    let input: IdentityInput = serde_json::from_value(body.clone()).unwrap();
    KernelIdentity::from_input(&input).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_published_artifact_is_answered_from_the_store_and_downloaded() {
    let env = Env::new(TestExecutor::new(Mode::Succeed));
    let request = bookworm("v0.1.2");
    let identity = identity_of(&request);
    let driver = common::driver();
    let release = env
        .artifact_dir()
        .join(env.layout.release_tag(&driver, &identity));
    std::fs::create_dir_all(&release).unwrap();
    let package = identity.package_file_name(&driver);
    std::fs::write(release.join(&package), b"published package").unwrap();
    std::fs::write(env.dir.path().join("secret"), b"not an artifact").unwrap();

    let service = env.start().await;
    let base = service.url();
    let client = client();
    let (code, answer) = post_build(&client, &base, &request).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["status"], "done");
    let url = answer["download_url"].as_str().unwrap();
    assert_eq!(
        url,
        format!(
            "{base}/releases/download/{}",
            env.layout.download_path(&driver, &identity, &package)
        )
    );
    let download = client.get(url).send().await.unwrap();
    assert_eq!(download.status().as_u16(), 200);
    assert_eq!(
        download.bytes().await.unwrap().as_ref(),
        b"published package"
    );
    let head = client.head(url).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(head.headers()["content-length"], "17");

    let tag = env.layout.release_tag(&driver, &identity);
    for hostile in [
        format!("{base}/releases/download/{tag}/..%2F..%2Fsecret"),
        format!("{base}/releases/download/..%2F..%2F/secret"),
        format!("{base}/releases/download/{tag}/%2E%2E"),
        format!("{base}/releases/download/{tag}/{package}%00"),
        format!("{base}/releases/download/other/{package}"),
        format!("{base}/releases/download/{tag}/{package}.sha256"),
        format!("{base}/builds/..%2F..%2Fsecret/log"),
    ] {
        let response = client.get(&hostile).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 404, "{hostile}");
    }
    assert_eq!(env.counters.dispatches.load(Ordering::SeqCst), 0);
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_miss_is_built_once_published_and_then_served_from_the_store() {
    let env = Env::new(TestExecutor::new(Mode::Succeed));
    let service = env.start().await;
    let base = service.url();
    let client = client();
    let request = bookworm("v0.1.2");
    let (code, answer) = post_build(&client, &base, &request).await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["message"], "workflow dispatched");
    let build_id = answer["build_id"].as_str().unwrap().to_owned();

    let ended = wait_until_ended(&client, &base, &build_id).await;
    assert_eq!(ended["status"], "done", "{ended}");
    assert!(ended["finished_at"].is_string() && ended["created_at"].is_string());
    assert_eq!(ended["cache_key"], "debian/12/x86_64/6.1.0-47-amd64/v0.1.2");
    let download_url = ended["download_url"].as_str().unwrap();
    let package = client
        .get(download_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&package).contains("debian/12/x86_64/6.1.0-47-amd64/v0.1.2"));
    // The digest was added by the service and matches.
    let digest = client
        .get(format!("{download_url}.sha256"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    use sha2::Digest;
    assert!(digest.starts_with(&hex::encode(sha2::Sha256::digest(&package))));
    let log = client
        .get(ended["log_url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.contains("test executor: building"), "{log}");

    let (code, answer) = post_build(&client, &base, &request).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["download_url"], ended["download_url"]);
    assert_eq!(env.counters.dispatches.load(Ordering::SeqCst), 1);
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_build_is_reported_as_error_with_its_reason_and_log() {
    let env = Env::new(TestExecutor::new(Mode::Fail(
        "kbuild: no rule to make target".to_owned(),
    )));
    let service = env.start().await;
    let base = service.url();
    let client = client();
    let (code, answer) = post_build(&client, &base, &bookworm("v0.1.2")).await;
    assert_eq!(code, 202, "{answer}");
    let build_id = answer["build_id"].as_str().unwrap();
    let ended = wait_until_ended(&client, &base, build_id).await;
    assert_eq!(ended["status"], "error", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .unwrap()
            .contains("no rule to make target"),
        "{ended}"
    );
    assert!(ended["download_url"].is_null());
    let log = client
        .get(ended["log_url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        log.contains("FAILED: kbuild: no rule to make target"),
        "{log}"
    );
    // The key is free again: a later request starts a new build.
    let (code, again) = post_build(&client, &base, &bookworm("v0.1.2")).await;
    assert_eq!(code, 202);
    assert_ne!(again["build_id"], answer["build_id"]);
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_build_past_its_deadline_is_timed_out() {
    let executor = TestExecutor::new(Mode::Hold);
    let env = Env::new(executor.clone());
    let service = env
        .start_with(&env.sqlite_url(), |config| {
            config.build_timeout = Duration::from_secs(1)
        })
        .await;
    let base = service.url();
    let client = client();
    let (code, answer) = post_build(&client, &base, &bookworm("v0.1.2")).await;
    assert_eq!(code, 202, "{answer}");
    let ended = wait_until_ended(&client, &base, answer["build_id"].as_str().unwrap()).await;
    assert_eq!(ended["status"], "timed_out", "{ended}");
    assert!(
        ended["error"].as_str().unwrap().contains("deadline"),
        "{ended}"
    );
    executor.release();
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_identical_requests_make_one_build() {
    let executor = TestExecutor::new(Mode::Hold);
    let env = Env::new(executor.clone());
    let service = env.start().await;
    let base = service.url();
    let client = client();
    let request = Arc::new(bookworm("v0.1.2"));
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let client = client.clone();
        let base = base.clone();
        let request = Arc::clone(&request);
        requests.spawn(async move { post_build(&client, &base, &request).await });
    }
    let mut build_ids = std::collections::HashSet::new();
    while let Some(answer) = requests.join_next().await {
        let (code, answer) = answer.unwrap();
        assert_eq!(code, 202, "{answer}");
        build_ids.insert(answer["build_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(build_ids.len(), 1, "{build_ids:?}");
    executor.release();
    let build_id = build_ids.into_iter().next().unwrap();
    let ended = wait_until_ended(&client, &base, &build_id).await;
    assert_eq!(ended["status"], "done", "{ended}");
    assert_eq!(env.counters.dispatches.load(Ordering::SeqCst), 1);
    assert_eq!(executor.started.load(Ordering::SeqCst), 1);
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distinct_distro_versions_are_distinct_builds() {
    let executor = TestExecutor::new(Mode::Hold);
    let env = Env::new(executor.clone());
    let service = env.start().await;
    let base = service.url();
    let client = client();
    let jammy = body("6.8.0-45-generic", "ubuntu", Some("22.04"), "v0.1.2");
    let noble = body("6.8.0-45-generic", "ubuntu", Some("24.04"), "v0.1.2");
    let (code_a, a) = post_build(&client, &base, &jammy).await;
    let (code_b, b) = post_build(&client, &base, &noble).await;
    let (_, a_again) = post_build(&client, &base, &jammy).await;
    assert_eq!((code_a, code_b), (202, 202), "{a} {b}");
    assert_ne!(a["build_id"], b["build_id"]);
    assert_eq!(a["build_id"], a_again["build_id"]);
    executor.release();
    for build in [&a, &b] {
        let ended = wait_until_ended(&client, &base, build["build_id"].as_str().unwrap()).await;
        assert_eq!(ended["status"], "done", "{ended}");
    }
    assert_eq!(env.counters.dispatches.load(Ordering::SeqCst), 2);
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_service_resumes_the_build_and_reports_done() {
    let executor = TestExecutor::new(Mode::Hold);
    let env = Env::new(executor.clone());
    let client = client();
    let first = env.start().await;
    let (code, answer) = post_build(&client, &first.url(), &bookworm("v0.1.2")).await;
    assert_eq!(code, 202, "{answer}");
    let build_id = answer["build_id"].as_str().unwrap().to_owned();
    let mut seen = status(&client, &first.url(), &build_id, 0).await;
    for _ in 0..100 {
        if seen["status"] == "in_progress" {
            break;
        }
        seen = status(&client, &first.url(), &build_id, 1).await;
    }
    assert_eq!(seen["status"], "in_progress", "{seen}");
    first.stop().await.unwrap();

    // A new process-equivalent: new backend instance, new port, same database and directories; the
    // executor of the first instance is still running the build.
    let second = env.start().await;
    executor.release();
    let ended = wait_until_ended(&client, &second.url(), &build_id).await;
    assert_eq!(ended["status"], "done", "{ended}");
    assert!(
        ended["download_url"]
            .as_str()
            .unwrap()
            .starts_with(&second.url())
    );
    assert_eq!(
        env.counters.dispatches.load(Ordering::SeqCst),
        1,
        "resuming must not dispatch again"
    );
    assert_eq!(executor.started.load(Ordering::SeqCst), 1);
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_poll_answers_as_soon_as_the_build_ends() {
    let executor = TestExecutor::new(Mode::Hold);
    let env = Env::new(executor.clone());
    let service = env.start().await;
    let base = service.url();
    let client = client();
    let (_, answer) = post_build(&client, &base, &bookworm("v0.1.2")).await;
    let build_id = answer["build_id"].as_str().unwrap().to_owned();
    let mut seen = status(&client, &base, &build_id, 0).await;
    for _ in 0..100 {
        if seen["status"] == "in_progress" {
            break;
        }
        seen = status(&client, &base, &build_id, 1).await;
    }
    assert_eq!(seen["status"], "in_progress");
    let poll = {
        let client = client.clone();
        let base = base.clone();
        let build_id = build_id.clone();
        tokio::spawn(async move {
            let answer = status(&client, &base, &build_id, 30).await;
            (answer, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    executor.release();
    let (answer, answered) = poll.await.unwrap();
    assert_eq!(answer["status"], "done", "{answer}");
    let latency = answered.duration_since(released);
    eprintln!("long poll answered {latency:?} after the build was released");
    // Far below the 30 s wait: the answer came from the change, not from the wait running out.
    assert!(latency < Duration::from_secs(10), "{latency:?}");
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_over_their_rate_are_told_when_to_retry() {
    let env = Env::new(TestExecutor::new(Mode::Succeed));
    let service = env
        .start_with(&env.sqlite_url(), |config| {
            config.access.rate_limit = Some((1, 3))
        })
        .await;
    let base = service.url();
    let client = client();
    let request = bookworm("v0.1.2");
    for _ in 0..3 {
        let (code, answer) = post_build(&client, &base, &request).await;
        assert!(code == 202 || code == 200, "{answer}");
    }
    let limited = client
        .post(format!("{base}/build"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status().as_u16(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Health and metrics stay open.
    for open in ["/healthz", "/metrics", "/openapi.json"] {
        let response = client.get(format!("{base}{open}")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{open}");
    }
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_requests_hits_dispatches_and_finished_builds() {
    let env = Env::new(TestExecutor::new(Mode::Succeed));
    let service = env.start().await;
    let base = service.url();
    let client = client();
    let request = bookworm("v0.1.2");
    let (_, answer) = post_build(&client, &base, &request).await;
    wait_until_ended(&client, &base, answer["build_id"].as_str().unwrap()).await;
    let (code, _) = post_build(&client, &base, &request).await;
    assert_eq!(code, 200);
    let (code, _) = post_build(&client, &base, &json!({"kernel_version": 1})).await;
    assert_eq!(code, 422);
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "build_requests_total{outcome=\"building\"} 1",
        "build_requests_total{outcome=\"hit\"} 1",
        "build_requests_total{outcome=\"invalid\"} 1",
        "build_cache_hits_total 1",
        "build_dispatches_total{result=\"ok\"} 1",
        "builds_finished_total{state=\"done\"} 1",
        "build_duration_seconds_bucket{state=\"done\",le=\"1\"}",
        "build_duration_seconds_count{state=\"done\"} 1",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
    let health: Value = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["backend"]["name"], "local");
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openapi_document_describes_every_route() {
    let env = Env::new(TestExecutor::new(Mode::Succeed));
    let service = env.start().await;
    let base = service.url();
    let client = client();
    let document: Value = client
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let documented = document["paths"].as_object().unwrap();
    let routes: Vec<_> = build_service::api::ROUTES
        .iter()
        .chain(build_service::local::ROUTES)
        .collect();
    for route in &routes {
        let operation = &documented
            .get(route.path)
            .unwrap_or_else(|| panic!("{} not documented", route.path))
            [route.method.to_lowercase()];
        assert!(
            operation.is_object(),
            "{} {} not documented",
            route.method,
            route.path
        );
        // And the router really serves it: a concrete path gets an answer from a handler (a JSON
        // or content answer, never the router's empty 404/405).
        let concrete = route
            .path
            .replace("{build_id}", "00000000-0000-4000-8000-000000000000")
            .replace("{tag}", "t")
            .replace("{file}", "f");
        let response = client
            .request(route.method.parse().unwrap(), format!("{base}{concrete}"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        assert_ne!(code, 405, "{} {}", route.method, route.path);
        if code == 404 && !route.path.starts_with("/releases") && !route.path.ends_with("/log") {
            let body: Value = response.json().await.unwrap();
            assert!(
                body["error"].is_string(),
                "{} answered by no handler",
                route.path
            );
        }
    }
    assert_eq!(
        documented.len(),
        routes.len(),
        "documented paths that are not routes"
    );
    service.stop().await.unwrap();
}
