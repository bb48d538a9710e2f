//! Waiting is cheap: thousands of long polls on one build share one watcher (a bounded number of
//! database reads while they wait, every one answered within a second of the build's end); on
//! PostgreSQL a long poll on one replica wakes through LISTEN/NOTIFY when another replica ends the
//! build; a client over its cap of requests in flight is told to retry; long polls over the
//! service's limit answer at once; `/healthz` answers from a cached backend probe.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Env, Mode, Postgres, TestExecutor, bookworm, client, post_build, status};
use serde_json::Value;

/// Long polls in the big test.
const WAITERS: usize = 5_000;

/// Raises the soft limit of open files to the hard limit: the big test holds every connection twice
/// (client and service side) in this one process.
fn raise_open_file_limit(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    assert!(
        hard >= needed,
        "this test needs {needed} open files; the hard limit is {hard}"
    );
}

/// One series of `/metrics` (the sum over its label sets).
async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn epoch_ms(timestamp: &str) -> i64 {
    let at = time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
        .unwrap();
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap()
}

fn now_ms() -> i64 {
    build_service::store::now_ms()
}

/// `GET path` on a connection of its own, as plain HTTP/1.1 (a full HTTP client per waiter would
/// spend more of the test machine's two cores than the service does): the status code, the JSON
/// body and when the whole answer had arrived (ms since the epoch).
async fn raw_get(address: std::net::SocketAddr, path: String) -> (u16, Value, i64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answered = now_ms();
    let text = String::from_utf8(answer).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, serde_json::from_str(body).unwrap(), answered)
}

/// Long-polls until the build is running (its next change is then its end).
async fn until_in_progress(client: &reqwest::Client, base: &str, build_id: &str) {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = status(client, base, build_id, 1).await;
        if seen["status"] == "in_progress" {
            return;
        }
        assert!(Instant::now() < give_up, "never in progress: {seen}");
    }
}

async fn until_metric_at_least(client: &reqwest::Client, base: &str, name: &str, value: f64) {
    let give_up = Instant::now() + Duration::from_secs(90);
    loop {
        let now = metric(client, base, name).await;
        if now >= value {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "{name} stayed at {now}, wanted {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_thousand_long_polls_on_one_build_share_one_watcher_and_all_answer_within_a_second_of_its_end()
 {
    raise_open_file_limit(2 * WAITERS as u64 + 1_000);
    let executor = TestExecutor::new(Mode::Hold);
    let env = Env::new(executor.clone());
    let service = env
        .start_with(&env.sqlite_url(), |config| {
            // Every waiter comes from 127.0.0.1: one client as far as the per-client cap goes.
            config.max_requests_per_client = Some(2 * WAITERS);
            // The production defaults for the local backend's polling and the safety re-read.
            config.poll_interval = Some(Duration::from_millis(250));
            config.wait_recheck = build_service::config::DEFAULT_WAIT_RECHECK;
        })
        .await;
    let base = service.url();
    let client = client();
    let (code, answer) = post_build(&client, &base, &bookworm("v0.1.2")).await;
    assert_eq!(code, 202, "{answer}");
    let build_id = answer["build_id"].as_str().unwrap().to_owned();
    until_in_progress(&client, &base, &build_id).await;

    let mut polls = tokio::task::JoinSet::new();
    for index in 0..WAITERS {
        let path = format!("/status/{build_id}?wait=30");
        polls.spawn(raw_get(service.address, path));
        // Connections are opened in bursts the accept queue takes comfortably.
        if index % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    until_metric_at_least(&client, &base, "long_polls_waiting", WAITERS as f64).await;
    let store_reads = metric(&client, &base, "store_build_reads_total").await;
    let watcher_reads = metric(&client, &base, "long_poll_reads_total").await;
    let waiting_since = Instant::now();
    // Long enough for the old design (every waiter re-reading every 500 ms) to make 30,000 reads.
    tokio::time::sleep(Duration::from_secs(3)).await;
    executor.release();
    let mut latencies = Vec::with_capacity(WAITERS);
    while let Some(answer) = polls.join_next().await {
        let (code, body, answered_ms) = answer.unwrap();
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"], "done", "{body}");
        let finished_ms = epoch_ms(body["finished_at"].as_str().unwrap());
        latencies.push(answered_ms - finished_ms);
    }
    let waited = waiting_since.elapsed();
    let store_reads = metric(&client, &base, "store_build_reads_total").await - store_reads;
    let watcher_reads = metric(&client, &base, "long_poll_reads_total").await - watcher_reads;
    latencies.sort_unstable();
    let percentile = |p: usize| latencies[(latencies.len() - 1) * p / 100];
    println!(
        "{WAITERS} long polls waited {waited:?}: {store_reads} database reads of the build \
         ({watcher_reads} by the shared watcher, the rest by the build's tracker); answered after \
         the build ended: p50 {} ms, p99 {} ms, max {} ms",
        percentile(50),
        percentile(99),
        percentile(100)
    );
    assert_eq!(latencies.len(), WAITERS);
    assert!(
        percentile(100) < 1_000,
        "the slowest answer came {} ms after the build ended",
        percentile(100)
    );
    assert!(
        watcher_reads <= 5.0,
        "{watcher_reads} watcher reads while {WAITERS} long polls waited"
    );
    assert!(
        store_reads < 50.0,
        "{store_reads} database reads while {WAITERS} long polls waited"
    );
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_poll_on_one_replica_wakes_within_a_second_of_another_replica_ending_the_build() {
    let postgres = Postgres::start();
    let executor = TestExecutor::new(Mode::Hold);
    let env = Env::new(executor.clone());
    // The safety re-read comes far too late to explain a prompt answer: only NOTIFY can.
    let quiet = |config: &mut build_service::ServiceConfig| {
        config.wait_recheck = Duration::from_secs(120);
    };
    let tracker = env.start_with(&postgres.url, quiet).await;
    let other = env.start_with(&postgres.url, quiet).await;
    let client = client();
    let (code, answer) = post_build(&client, &tracker.url(), &bookworm("v0.1.2")).await;
    assert_eq!(code, 202, "{answer}");
    let build_id = answer["build_id"].as_str().unwrap().to_owned();
    until_in_progress(&client, &tracker.url(), &build_id).await;
    let poll = {
        let client = client.clone();
        let url = format!("{}/status/{build_id}?wait=30", other.url());
        tokio::spawn(async move {
            let body: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
            (body, now_ms())
        })
    };
    until_metric_at_least(&client, &other.url(), "long_polls_waiting", 1.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    executor.release();
    let (body, answered_ms) = poll.await.unwrap();
    assert_eq!(body["status"], "done", "{body}");
    let latency = answered_ms - epoch_ms(body["finished_at"].as_str().unwrap());
    println!("the other replica's long poll answered {latency} ms after the build ended");
    assert!(
        latency < 1_000,
        "answered {latency} ms after the build ended"
    );
    tracker.stop().await.unwrap();
    other.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_over_its_cap_of_requests_in_flight_is_told_to_retry() {
    let executor = TestExecutor::new(Mode::Hold);
    let env = Env::new(executor.clone());
    let service = env
        .start_with(&env.sqlite_url(), |config| {
            config.max_requests_per_client = Some(2);
        })
        .await;
    let base = service.url();
    let client = client();
    let (code, answer) = post_build(&client, &base, &bookworm("v0.1.2")).await;
    assert_eq!(code, 202, "{answer}");
    let build_id = answer["build_id"].as_str().unwrap().to_owned();
    until_in_progress(&client, &base, &build_id).await;
    let mut polls = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let client = client.clone();
        let url = format!("{base}/status/{build_id}?wait=30");
        polls.spawn(async move { client.get(&url).send().await.unwrap().status().as_u16() });
    }
    until_metric_at_least(&client, &base, "long_polls_waiting", 2.0).await;
    let refused = client
        .get(format!("{base}/status/{build_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["rule"]
            .as_str()
            .unwrap()
            .contains("at most 2 requests in flight"),
        "{body}"
    );
    let (code, _) = post_build(&client, &base, &bookworm("v0.1.3")).await;
    assert_eq!(code, 429, "POST /build counts against the same cap");
    // Open routes are not capped.
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    executor.release();
    while let Some(code) = polls.join_next().await {
        assert_eq!(code.unwrap(), 200);
    }
    // The slots came back with the answers.
    let seen = status(&client, &base, &build_id, 0).await;
    assert_eq!(seen["status"], "done", "{seen}");
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_polls_over_the_service_limit_answer_at_once_with_the_current_state() {
    let executor = TestExecutor::new(Mode::Hold);
    let env = Env::new(executor.clone());
    let service = env
        .start_with(&env.sqlite_url(), |config| {
            config.max_long_polls = 1;
        })
        .await;
    let base = service.url();
    let client = client();
    let (_, answer) = post_build(&client, &base, &bookworm("v0.1.2")).await;
    let build_id = answer["build_id"].as_str().unwrap().to_owned();
    until_in_progress(&client, &base, &build_id).await;
    let first = {
        let client = client.clone();
        let base = base.clone();
        let build_id = build_id.clone();
        tokio::spawn(async move { status(&client, &base, &build_id, 30).await })
    };
    until_metric_at_least(&client, &base, "long_polls_waiting", 1.0).await;
    let asked = Instant::now();
    let second = status(&client, &base, &build_id, 30).await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(second["status"], "in_progress", "{second}");
    assert!(metric(&client, &base, "long_polls_over_limit_total").await >= 1.0);
    executor.release();
    let first = first.await.unwrap();
    assert_eq!(first["status"], "done", "{first}");
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthz_answers_a_thousand_checks_from_the_cached_backend_probe() {
    let env = Env::new(TestExecutor::new(Mode::Succeed));
    let service = env.start().await;
    let base = service.url();
    let client = client();
    let started = Instant::now();
    let mut checks = tokio::task::JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(100));
    for _ in 0..1_000 {
        let client = client.clone();
        let url = format!("{base}/healthz");
        let limit = Arc::clone(&limit);
        checks.spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let response = client.get(&url).send().await.unwrap();
            let code = response.status().as_u16();
            (code, response.json::<Value>().await.unwrap())
        });
    }
    while let Some(check) = checks.join_next().await {
        let (code, body) = check.unwrap();
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"], "ok", "{body}");
        assert_eq!(body["backend"]["status"], "ok", "{body}");
    }
    let probes = env.counters.healths.load(Ordering::SeqCst);
    let elapsed = started.elapsed();
    println!("1000 /healthz answers in {elapsed:?} asked the backend {probes} times");
    // The first probe at start, and one more per 15 s interval that passed.
    let allowed = 1 + usize::try_from(elapsed.as_secs() / 15).unwrap();
    assert!(
        (1..=allowed).contains(&probes),
        "{probes} backend health calls for 1000 /healthz"
    );
    service.stop().await.unwrap();
}
