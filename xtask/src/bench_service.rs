//! `cargo xtask bench service`: the build-service on loopback, measured from one run.
//!
//! 1. Hit path (local backend, artifact published): requests/s and p50/p99 latency at a fixed
//!    concurrency.
//! 2. 10,000 concurrent identical misses: time until all are answered, and how many build ids
//!    (must be one) and dispatches (must be one) they produced. The executor holds the build, so only
//!    the service's request path is measured.
//! 3. GitHub API calls per 1,000 hit requests: the service with the GitHub backend against the
//!    github-sim simulator, counted by the simulator.
//! 4. When `wrk` is installed (Debian package `wrk`): the release-built `build-service` binary, local
//!    backend with the artifact published, loaded by wrk (one thread, 64 connections) on the hit path
//!    and on its floor measured in the same run: an unrouted `GET` the router answers 404 (the same
//!    server, middleware and request log, no handler work) and `GET /healthz` (which pings the store).
//!    The in-process client above shares the service's runtime and cores; wrk is an external load
//!    generator in C, so its numbers are the service's, not the client's.
//!
//! Needs in xtask's manifest: build-api, build-service, github-sim, kernel-id, tokio, reqwest,
//! serde (derive), serde_json, tempfile.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use build_api::{BuildAccepted, BuildRequest};
use build_service::local::{BuildExecutor, ExecutorJob};
use build_service::{BackendConfig, LocalConfig, RunningService, ServiceConfig};
use kernel_id::{DriverName, IdentityInput, KernelIdentity, ReleaseLayout};

const HIT_REQUESTS: usize = 20_000;
const HIT_CONCURRENCY: usize = 64;
const MISSES: usize = 10_000;
const GITHUB_HITS: usize = 1_000;
const GITHUB_TOKEN: &str = "ghs_bench_token";

/// Runs the three measurements and prints the table.
pub fn run() -> Result<()> {
    if let Some(url) = std::env::var_os(MISS_CLIENT_ENV) {
        return miss_client(&url.to_string_lossy());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = runtime.block_on(bench());
    // The held benchmark builds sleep on blocking threads: do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Set in the child process that sends the misses: the URL to send them to.
const MISS_CLIENT_ENV: &str = "XTASK_BENCH_SERVICE_MISS_CLIENT";

/// What the miss client measured.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct MissReport {
    seconds: f64,
    build_ids: usize,
    failures: usize,
}

/// The child process: sends the 10,000 identical misses at once and prints a [`MissReport`].
fn miss_client(url: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let client = http_client()?;
        let miss = Arc::new(serde_json::to_string(&request("v0.2.0"))?);
        let started = Instant::now();
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..MISSES {
            let client = client.clone();
            let url = url.to_owned();
            let miss = Arc::clone(&miss);
            requests.spawn(async move {
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(miss.as_str().to_owned())
                    .send()
                    .await?;
                let code = response.status().as_u16();
                let answer = response.text().await?;
                ensure!(code == 202, "miss answered {code}: {answer}");
                let accepted: BuildAccepted = serde_json::from_str(&answer)
                    .with_context(|| format!("miss answered {code}: {answer}"))?;
                Ok::<_, anyhow::Error>(accepted.build_id)
            });
        }
        let mut build_ids = HashSet::new();
        let mut failures = 0usize;
        while let Some(answer) = requests.join_next().await {
            match answer? {
                Ok(build_id) => {
                    build_ids.insert(build_id);
                }
                Err(error) => {
                    failures += 1;
                    if failures == 1 {
                        eprintln!("first failed miss: {error:#}");
                    }
                }
            }
        }
        Ok::<_, anyhow::Error>(MissReport {
            seconds: started.elapsed().as_secs_f64(),
            build_ids: build_ids.len(),
            failures,
        })
    })?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Holds every build until the bench ends: the measurements are about the request path only.
#[derive(Debug, Default)]
struct HoldingExecutor {
    started: AtomicUsize,
}

impl BuildExecutor for HoldingExecutor {
    fn build(&self, _job: &ExecutorJob) -> Result<(), String> {
        self.started.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(600));
        Err("benchmark build never finishes".to_owned())
    }
}

fn request(driver_version: &str) -> BuildRequest {
    BuildRequest {
        architecture: "x86_64".to_owned(),
        distribution: "debian".to_owned(),
        distro_version: Some("12".to_owned()),
        driver_version: driver_version.to_owned(),
        kernel_version: "6.1.0-47-amd64".to_owned(),
    }
}

/// The identity the service derives from `body` (same wire shape, read back as kernel-id's input).
fn identity(body: &BuildRequest) -> Result<KernelIdentity> {
    let input: IdentityInput = serde_json::from_value(serde_json::to_value(body)?)?;
    Ok(KernelIdentity::from_input(&input)?)
}

fn driver() -> Result<DriverName> {
    Ok(DriverName::parse("example-driver")?)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn http_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(20_000)
        .timeout(Duration::from_secs(120))
        .build()?)
}

/// Sends `total` requests with `concurrency` in flight; returns each latency and the answers' status codes.
async fn load(
    client: &reqwest::Client,
    url: &str,
    body: &BuildRequest,
    total: usize,
    concurrency: usize,
) -> Result<(Vec<Duration>, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(serde_json::to_string(body)?);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let url = url.to_owned();
        let body = Arc::clone(&body);
        let next = Arc::clone(&next);
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.as_str().to_owned())
                    .send()
                    .await?;
                let code = response.status().as_u16();
                let _ = response.bytes().await?;
                if code != 200 {
                    bail!("hit request answered {code}");
                }
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    while let Some(done) = workers.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok((latencies, elapsed))
}

struct Row {
    measurement: String,
    value: String,
}

async fn bench() -> Result<()> {
    let mut rows = Vec::new();
    let state = tempfile::tempdir()?;
    let driver = driver()?;
    let executor = Arc::new(HoldingExecutor::default());
    // The versions asked for below are tags of the driver's repository.
    let repo = testkit::SampleDriverRepo::create_tagged(
        &state.path().join("driver-repo"),
        &["v0.1.2", "v0.2.0"],
    )?;
    let mut config = ServiceConfig::new(
        format!(
            "sqlite://{}?mode=rwc",
            state.path().join("builds.db").display()
        ),
        driver.clone(),
        BackendConfig::Local(Box::new(LocalConfig {
            artifact_dir: state.path().join("artifacts"),
            builds_dir: state.path().join("builds"),
            driver_repo: repo.path().to_string_lossy().into_owned(),
            driver_subdir: std::path::PathBuf::new(),
            source_mirror: state.path().join("driver-source.git"),
            max_concurrent_builds: 1,
            signer: None,
            executor: executor.clone(),
        })),
    );
    config.poll_interval = Some(Duration::from_millis(250));
    // The whole simulated fleet calls from one loopback address.
    config.max_requests_per_client = None;
    let service = RunningService::start(config).await?;
    let base = service.url();
    let client = http_client()?;

    // 1. Hit path.
    let hit = request("v0.1.2");
    let hit_identity = identity(&hit)?;
    let release = state
        .path()
        .join("artifacts")
        .join(ReleaseLayout::PerArtifact.release_tag(&driver, &hit_identity));
    std::fs::create_dir_all(&release)?;
    std::fs::write(
        release.join(hit_identity.package_file_name(&driver)),
        b"package",
    )?;
    // Warm-up: connections, caches.
    load(
        &client,
        &format!("{base}/build"),
        &hit,
        500,
        HIT_CONCURRENCY,
    )
    .await?;
    let (latencies, elapsed) = load(
        &client,
        &format!("{base}/build"),
        &hit,
        HIT_REQUESTS,
        HIT_CONCURRENCY,
    )
    .await?;
    rows.push(Row {
        measurement: format!(
            "hit path, local backend ({HIT_REQUESTS} requests, concurrency {HIT_CONCURRENCY})"
        ),
        value: format!(
            "{:.0} requests/s",
            HIT_REQUESTS as f64 / elapsed.as_secs_f64()
        ),
    });
    rows.push(Row {
        measurement: "hit path latency p50 / p99".to_owned(),
        value: format!(
            "{:.2} ms / {:.2} ms",
            percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
            percentile(&latencies, 0.99).as_secs_f64() * 1000.0
        ),
    });

    // 2. 10,000 concurrent identical misses, sent by a child process: client and server each need
    // 10,000 descriptors, more than one process may hold here.
    let miss_url = format!("{base}/build");
    let child = tokio::task::spawn_blocking(move || {
        std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env(MISS_CLIENT_ENV, miss_url)
            .stderr(std::process::Stdio::inherit())
            .output()
    })
    .await??;
    let report = String::from_utf8_lossy(&child.stdout);
    ensure!(child.status.success(), "the miss client failed: {report}");
    let miss: MissReport = serde_json::from_str(report.lines().last().unwrap_or_default())
        .with_context(|| format!("reading the miss client's report: {report}"))?;
    // Let the tracker reach the backend (bounded), then count builds started.
    for _ in 0..100 {
        if executor.started.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rows.push(Row {
        measurement: format!("{MISSES} concurrent identical misses answered"),
        value: format!("{:.2} s", miss.seconds),
    });
    rows.push(Row {
        measurement: "  distinct build ids / builds started / failed requests".to_owned(),
        value: format!(
            "{} / {} / {}",
            miss.build_ids,
            executor.started.load(Ordering::SeqCst),
            miss.failures
        ),
    });
    service.stop().await?;

    // 3. GitHub API calls per 1,000 hit requests.
    let (calls, quota) = github_hits(&client).await?;
    rows.push(Row {
        measurement: format!("GitHub API calls per {GITHUB_HITS} hit requests (github-sim)"),
        value: format!("{calls} calls, {quota} quota units"),
    });

    // 4. The real binary under wrk.
    match which("wrk") {
        Some(wrk) => rows.extend(wrk_rows(&wrk, &driver).await?),
        None => rows.push(Row {
            measurement: "wrk against the build-service binary".to_owned(),
            value: "not measured: wrk is not installed (Debian package `wrk`)".to_owned(),
        }),
    }

    let width = rows
        .iter()
        .map(|row| row.measurement.len())
        .max()
        .unwrap_or(0);
    println!("build-service benchmark (loopback, one run)");
    println!("{:width$}  value", "measurement");
    println!("{}  {}", "-".repeat(width), "-".repeat(24));
    for row in &rows {
        println!("{:width$}  {}", row.measurement, row.value);
    }
    ensure!(
        miss.build_ids == 1,
        "the misses produced {} build ids",
        miss.build_ids
    );
    Ok(())
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

const WRK_CONNECTIONS: usize = 64;
const WRK_SECONDS: u64 = 5;

/// Prints one line wrk's `done` hook fills in; the POST body is set only for the hit path.
fn wrk_script(body: Option<&str>) -> String {
    let mut script = String::new();
    if let Some(body) = body {
        script.push_str("wrk.method = \"POST\"\n");
        script.push_str("wrk.headers[\"Content-Type\"] = \"application/json\"\n");
        script.push_str(&format!("wrk.body = [[{body}]]\n"));
    }
    script.push_str(
        "done = function(summary, latency, requests)\n\
         \x20 io.write(string.format(\"WRK %d %d %d %d %d\\n\", summary.requests, summary.duration,\n\
         \x20   latency:percentile(50), latency:percentile(99), summary.errors.connect + summary.errors.read\n\
         \x20   + summary.errors.write + summary.errors.timeout))\n\
         end\n",
    );
    script
}

struct WrkResult {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn run_wrk(wrk: &std::path::Path, script: &std::path::Path, url: &str) -> Result<WrkResult> {
    let output = tokio::process::Command::new(wrk)
        .args([
            "-t1",
            &format!("-c{WRK_CONNECTIONS}"),
            &format!("-d{WRK_SECONDS}s"),
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .await
        .context("running wrk")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "wrk {url} failed: {stdout}");
    let fields: Vec<u64> = stdout
        .lines()
        .find_map(|line| line.strip_prefix("WRK "))
        .with_context(|| format!("wrk {url} printed no result: {stdout}"))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading wrk's result: {stdout}"))?;
    let [requests, duration_us, p50_us, p99_us, errors] = fields[..] else {
        bail!("wrk printed an unexpected result: {stdout}");
    };
    ensure!(errors == 0, "wrk {url}: {errors} socket errors");
    Ok(WrkResult {
        requests_per_second: requests as f64 / (duration_us as f64 / 1e6),
        p50_ms: p50_us as f64 / 1000.0,
        p99_ms: p99_us as f64 / 1000.0,
    })
}

/// The release binary, local backend, artifact published; wrk on the hit path and on the floor.
async fn wrk_rows(wrk: &std::path::Path, driver: &DriverName) -> Result<Vec<Row>> {
    let root = crate::workspace_root();
    let status =
        tokio::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "build-service",
                "--bin",
                "build-service",
            ])
            .status()
            .await
            .context("running cargo build --release -p build-service")?;
    ensure!(
        status.success(),
        "cargo build --release -p build-service failed ({status})"
    );
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let binary = target_dir.join("release/build-service");

    let state = tempfile::tempdir()?;
    let repo =
        testkit::SampleDriverRepo::create_tagged(&state.path().join("driver-repo"), &["v0.1.2"])?;
    let hit = request("v0.1.2");
    let hit_identity = identity(&hit)?;
    let release = state
        .path()
        .join("state/artifacts")
        .join(ReleaseLayout::PerArtifact.release_tag(driver, &hit_identity));
    std::fs::create_dir_all(&release)?;
    std::fs::write(
        release.join(hit_identity.package_file_name(driver)),
        b"package",
    )?;
    // A free loopback port: bind, note it, release it for the service.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(state.path().join("service.log"))?;
    let mut child = tokio::process::Command::new(&binary)
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(state.path().join("state"))
        .arg("--driver-repo")
        .arg(repo.path())
        // The load comes from one loopback address.
        .args(["--max-requests-per-client", "100000"])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let client = http_client()?;
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(answer) = client.get(format!("{base}/healthz")).send().await
            && answer.status().is_success()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(ready, "build-service did not become healthy; see its log");
    let answer = client
        .post(format!("{base}/build"))
        .json(&hit)
        .send()
        .await?;
    ensure!(
        answer.status().as_u16() == 200,
        "the hit answered {}",
        answer.status()
    );

    let hit_script = state.path().join("hit.lua");
    std::fs::write(&hit_script, wrk_script(Some(&serde_json::to_string(&hit)?)))?;
    let get_script = state.path().join("get.lua");
    std::fs::write(&get_script, wrk_script(None))?;
    let floor = run_wrk(wrk, &get_script, &format!("{base}/bench-floor-unrouted")).await?;
    let healthz = run_wrk(wrk, &get_script, &format!("{base}/healthz")).await?;
    let hits = run_wrk(wrk, &hit_script, &format!("{base}/build")).await?;
    child.kill().await?;

    let row = |what: &str, result: &WrkResult| Row {
        measurement: format!("  {what}"),
        value: format!(
            "{:.0} requests/s ({:.2}x floor), p50 {:.2} ms, p99 {:.2} ms",
            result.requests_per_second,
            result.requests_per_second / floor.requests_per_second,
            result.p50_ms,
            result.p99_ms
        ),
    };
    Ok(vec![
        Row {
            measurement: format!(
                "wrk -t1 -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s, release build-service binary, local backend"
            ),
            value: String::new(),
        },
        row("floor: unrouted GET answered 404", &floor),
        row("GET /healthz (store ping)", &healthz),
        row("POST /build hit (artifact published)", &hits),
    ])
}

async fn github_hits(client: &reqwest::Client) -> Result<(u64, u64)> {
    use build_service::github::{GitHubAuth, GitHubBackend, GitHubConfig};
    let sim = github_sim::GithubSim::start(github_sim::SimConfig {
        accepted_tokens: Some(vec![GITHUB_TOKEN.to_owned()]),
        ..github_sim::SimConfig::default()
    })
    .await?;
    let driver = driver()?;
    let hit = request("v0.1.2");
    let hit_identity = identity(&hit)?;
    let tag = ReleaseLayout::PerArtifact.release_tag(&driver, &hit_identity);
    let package = hit_identity.package_file_name(&driver);
    sim.publish_release(&tag, &[(package.as_str(), b"package".as_slice())])?;
    let mut github = GitHubConfig::new(
        sim.owner(),
        sim.repo(),
        GitHubAuth::Token(GITHUB_TOKEN.to_owned()),
        driver.clone(),
    );
    github.api_base_url = sim.base_url().to_owned();
    let backend = Arc::new(GitHubBackend::new(github)?);
    let state = tempfile::tempdir()?;
    let config = ServiceConfig::new(
        format!(
            "sqlite://{}?mode=rwc",
            state.path().join("builds.db").display()
        ),
        driver,
        BackendConfig::Custom(backend),
    );
    let service = RunningService::start(config).await?;
    let before = sim.stats();
    load(
        client,
        &format!("{}/build", service.url()),
        &hit,
        GITHUB_HITS,
        32,
    )
    .await?;
    let after = sim.stats();
    service.stop().await?;
    let calls: u64 = after.requests.values().sum::<u64>() - before.requests.values().sum::<u64>();
    Ok((calls, after.quota_consumed - before.quota_consumed))
}
