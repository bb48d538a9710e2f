//! The repository watcher in the real service binary: local backend, a principals file, an apt
//! mirror on loopback (testkit's, with ETags and `304`s) publishing bookworm kernels in several
//! flavors, and kernels.json. A node's report puts the family `debian/12/x86_64/6.1/amd64` in the
//! inventory; `POST /watcher/run` then requests exactly one prebuild, of the newest `-amd64`
//! kernel with headers, as the built-in principal `watcher` (the audit trail says so), and adds it
//! to kernels.json; the cloud and rt kernels of the same ABI are not built. A second pass
//! downloads no Packages file and starts no build. The builds themselves are not waited for.
//!
//! Also: `build-service watch` (the one-shot CLI) against the same service reads `GET /fleet`
//! and posts the same prebuild, which the service answers from the build already requested.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use build_api::{BuildList, PrebuildOutcome, WatchPass};
use build_service::access::token_digest_hex;
use serde_json::{Value, json};
use testkit::mirror::{Mirror, Stanza, apt_suite};

const ADMIN: &str = "admin-token-0123456789";
const NODE: &str = "node-token-0123456789";
const CI: &str = "watcher-ci-token-0123456789";

fn principals(dir: &Path) -> PathBuf {
    let entry = |name: &str, token: &str, scopes: &str| {
        format!(
            "[[principal]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nscopes = [{scopes}]\n",
            token_digest_hex(token)
        )
    };
    let path = dir.join("principals.toml");
    std::fs::write(
        &path,
        [
            entry("ops", ADMIN, "\"admin\", \"read-status\""),
            entry("node", NODE, "\"report\", \"request-build\""),
            entry("watcher-ci", CI, "\"read-status\", \"request-build\""),
        ]
        .concat(),
    )
    .unwrap();
    path
}

fn serve_bookworm(mirror: &Mirror) {
    let put = |base: &str, suite: &str, stanzas: &[(&str, &str)]| {
        let stanzas: Vec<Stanza> = stanzas
            .iter()
            .map(|(name, version)| Stanza::new(name, version, "amd64"))
            .collect();
        mirror.put_all(
            base,
            apt_suite(suite, "main", "amd64", &stanzas, None, false).unwrap(),
        );
    };
    put(
        "debian",
        "bookworm",
        &[
            ("linux-image-6.1.0-47-amd64", "6.1.158-1"),
            ("linux-headers-6.1.0-47-amd64", "6.1.158-1"),
        ],
    );
    put("debian", "bookworm-updates", &[]);
    put(
        "debian",
        "bookworm-backports",
        &[
            ("linux-image-6.12.38+deb12-amd64", "6.12.38-1~bpo12+1"),
            ("linux-headers-6.12.38+deb12-amd64", "6.12.38-1~bpo12+1"),
        ],
    );
    put(
        "debian-security",
        "bookworm-security",
        &[
            ("linux-image-6.1.0-48-amd64", "6.1.159-1"),
            ("linux-headers-6.1.0-48-amd64", "6.1.159-1"),
            ("linux-image-6.1.0-48-cloud-amd64", "6.1.159-1"),
            ("linux-headers-6.1.0-48-cloud-amd64", "6.1.159-1"),
            ("linux-image-6.1.0-48-rt-amd64", "6.1.159-1"),
            ("linux-headers-6.1.0-48-rt-amd64", "6.1.159-1"),
        ],
    );
}

/// The real binary, killed on drop.
struct ServiceProcess {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(state: &Path, mirror: &Mirror, kernels_json: &Path) -> ServiceProcess {
    let repo = state.join("driver-repo");
    testkit::SampleDriverRepo::create_tagged(&repo, common::TAGS).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = state.join("service.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_build-service"))
        .arg("serve")
        .arg("--state-dir")
        .arg(state)
        .arg("--driver-repo")
        .arg(&repo)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--principals-file")
        .arg(principals(state))
        .arg("--watch-debian-mirror")
        .arg(format!("{}/debian", mirror.url()))
        .arg("--watch-debian-security-mirror")
        .arg(format!("{}/debian-security", mirror.url()))
        // The loopback mirror's InRelease files are not signed.
        .arg("--watch-allow-unsigned-indexes")
        .arg("--kernels-json")
        .arg(kernels_json)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
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
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ServiceProcess { child, url, log }
}

async fn run_pass(client: &reqwest::Client, service: &ServiceProcess) -> WatchPass {
    let response = client
        .post(format!("{}/watcher/run", service.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        200,
        "{}",
        std::fs::read_to_string(&service.log).unwrap_or_default()
    );
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_prebuilds_the_newest_kernel_of_the_family_its_nodes_run_once() {
    let mirror = Mirror::start().unwrap();
    serve_bookworm(&mirror);
    let state = tempfile::tempdir().unwrap();
    let kernels_json = state.path().join("kernels.json");
    let service = start(state.path(), &mirror, &kernels_json).await;
    let client = common::client();

    // Before any report the fleet runs nothing: no index is even read.
    let empty = run_pass(&client, &service).await;
    assert!(empty.families.is_empty() && empty.prebuilds.is_empty());
    assert_eq!(empty.indexes_checked, 0);
    assert!(mirror.take_log().is_empty());

    // Only an admin may run a pass.
    let refused = client
        .post(format!("{}/watcher/run", service.url))
        .bearer_auth(NODE)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);

    let report = json!({
        "architecture": "x86_64",
        "artifact_origin": "store",
        "distribution": "debian",
        "distro_version": "12",
        "driver_name": common::DRIVER,
        "driver_version": "v0.1.2",
        "exit_code": 0,
        "kernel_version": "6.1.0-47-amd64",
        "node_id": "a".repeat(64),
        "outcome": "loaded",
        "pending_kernels": [],
        "timings": {"build_wait_ms": null, "fetch_ms": 120, "total_ms": 900},
    });
    let reported = client
        .post(format!("{}/report", service.url))
        .bearer_auth(NODE)
        .json(&report)
        .send()
        .await
        .unwrap();
    assert!(
        reported.status().is_success(),
        "{}",
        reported.text().await.unwrap()
    );

    let first = run_pass(&client, &service).await;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(first.families.len(), 1);
    assert_eq!(first.families[0].family, "debian/12/x86_64/6.1/amd64");
    assert_eq!(
        first.families[0].prebuild.as_deref(),
        Some("6.1.0-48-amd64")
    );
    assert_eq!(first.prebuilds.len(), 1, "{:?}", first.prebuilds);
    let prebuild = &first.prebuilds[0];
    assert_eq!(prebuild.outcome, PrebuildOutcome::Created);
    assert_eq!(prebuild.request.kernel_version, "6.1.0-48-amd64");
    assert_eq!(prebuild.request.driver_version, "v0.1.2");
    let build_id = prebuild.build_id.clone().unwrap();
    assert!(first.bytes.packages > 0 && first.bytes.inrelease > 0);
    assert_eq!(first.indexes_checked, 4);
    assert!(first.new_index_to_prebuild_ms.is_some());

    // The build went through the ordinary path, audited under the built-in principal.
    let builds: BuildList = client
        .get(format!("{}/builds", service.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(builds.builds.len(), 1);
    let listed = &builds.builds[0];
    assert_eq!(listed.build.build_id, build_id);
    assert_eq!(listed.requested_by.as_deref(), Some("watcher"));
    assert_eq!(listed.requesters[0].principal, "watcher");
    assert!(
        listed.build.cache_key.ends_with("/6.1.0-48-amd64/v0.1.2"),
        "{}",
        listed.build.cache_key
    );
    // And the kernel is in kernels.json.
    let kernels =
        kernel_id::KernelsFile::parse(&std::fs::read_to_string(&kernels_json).unwrap()).unwrap();
    let releases: Vec<&str> = kernels
        .entries(kernel_id::Arch::X86_64)
        .iter()
        .map(|e| e.kernelrelease.as_str())
        .collect();
    assert_eq!(releases, ["6.1.0-48-amd64"]);

    // Unchanged indexes: conditional requests only, no Packages file, no new build.
    mirror.take_log();
    let second = run_pass(&client, &service).await;
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    assert_eq!(second.bytes.packages, 0);
    assert_eq!(second.bytes.inrelease, 0);
    assert_eq!(second.indexes_unchanged, 4);
    assert!(second.prebuilds.is_empty(), "{:?}", second.prebuilds);
    let log = mirror.take_log();
    assert!(
        log.iter()
            .all(|s| s.status == 304 && s.path.ends_with("/InRelease")),
        "{log:?}"
    );
    let builds: BuildList = client
        .get(format!("{}/builds", service.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(builds.builds.len(), 1);

    // The metrics count the passes, bytes and the prebuild.
    let metrics = client
        .get(format!("{}/metrics", service.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "kdriver_watcher_passes_total 3",
        "kdriver_watcher_index_requests_total{kind=\"inrelease\",result=\"not_modified\"} 4",
        "kdriver_watcher_index_requests_total{kind=\"packages\",result=\"reused\"} 4",
        "kdriver_watcher_prebuilds_total{outcome=\"created\"} 1",
        "kdriver_watcher_new_index_to_prebuild_seconds",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    assert!(
        metrics.contains(&format!(
            "kdriver_watcher_index_bytes_total{{kind=\"packages\"}} {}",
            first.bytes.packages
        )),
        "{metrics}"
    );

    // The one-shot CLI: families from GET /fleet, prebuilds by POST /build with its token. Its
    // own state file is fresh, so it reads every index; without kernels.json it asks for the same
    // kernel, which the service answers from the build already requested (or its failure).
    let token = state.path().join("ci-token");
    std::fs::write(&token, format!("{CI}\n")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_build-service"))
        .arg("watch")
        .arg("--service-url")
        .arg(&service.url)
        .arg("--token-file")
        .arg(&token)
        .arg("--state-file")
        .arg(state.path().join("ci-state.json"))
        .arg("--watch-debian-mirror")
        .arg(format!("{}/debian", mirror.url()))
        .arg("--watch-debian-security-mirror")
        .arg(format!("{}/debian-security", mirror.url()))
        // The loopback mirror's InRelease files are not signed.
        .arg("--watch-allow-unsigned-indexes")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains(CI), "the token must never be printed");
    let pass: WatchPass = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(pass.prebuilds.len(), 1, "{pass:?}");
    assert_eq!(pass.prebuilds[0].request.kernel_version, "6.1.0-48-amd64");
    assert!(
        matches!(
            pass.prebuilds[0].outcome,
            PrebuildOutcome::Accepted | PrebuildOutcome::Published
        ),
        "{pass:?}"
    );
    let builds: Value = client
        .get(format!("{}/builds", service.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let principals: Vec<&str> = builds["builds"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["requesters"].as_array().unwrap())
        .map(|r| r["principal"].as_str().unwrap())
        .collect();
    assert!(principals.contains(&"watcher-ci"), "{builds}");
}
