//! Support for the fleet inventory's tests: the real `build-service` binary on 127.0.0.1 with the
//! local backend (its own state directory, the sample driver repository tagged with the versions
//! the tests use, no driver-builder, so a build that passes validation fails at once), node
//! reports as the loader sends them (`build_api::NodeReport`), and artifacts published into the
//! local backend's artifact directory under the names kernel-id gives them, as the nightly batch
//! publishes them without a build row.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use build_api::{ArtifactOrigin, NodeReport, RunOutcome, RunTimings};
use build_service::access::token_digest_hex;
use kernel_id::{DriverName, IdentityInput, KernelIdentity, ReleaseLayout};
use serde_json::Value;

pub const DRIVER: &str = "example-driver";

/// A principal: name, token, and the rest of its principals-file entry (scopes, limits).
pub struct Principal<'a> {
    pub name: &'a str,
    pub token: &'a str,
    pub entry: &'a str,
}

/// The service binary, killed (by its own pid) when dropped.
pub struct Service {
    pub dir: tempfile::TempDir,
    pub base: String,
    child: Child,
}

impl Service {
    /// Starts the binary with these principals (none: anonymous, which the loopback listener
    /// allows).
    pub async fn start(principals: &[Principal<'_>]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = testkit::SampleDriverRepo::create_tagged(
            &dir.path().join("driver-repo"),
            &["v0.1.2", "v0.2.0"],
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("service.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_build-service"));
        command
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--driver-repo")
            .arg(repo.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if !principals.is_empty() {
            let text: String = principals
                .iter()
                .map(|p| {
                    format!(
                        "[[principal]]\nname = \"{}\"\ntoken_sha256 = \"{}\"\n{}\n",
                        p.name,
                        token_digest_hex(p.token),
                        p.entry
                    )
                })
                .collect();
            let file = dir.path().join("principals.toml");
            std::fs::write(&file, text).unwrap();
            command.arg("--principals-file").arg(file);
        }
        let child = command.spawn().unwrap();
        let mut service = Self {
            base: format!("http://127.0.0.1:{port}"),
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(format!("{}/healthz", service.base))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            let exited = service.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "the service did not start:\n{}",
                service.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        service
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    pub fn artifact_dir(&self) -> PathBuf {
        self.dir.path().join("state").join("artifacts")
    }

    /// Publishes a package for `identity` where the local backend looks it up (the default
    /// per-artifact layout), as a publisher outside this service would.
    pub fn publish(&self, identity: &KernelIdentity) {
        let driver = DriverName::parse(DRIVER).unwrap();
        let dir = self
            .artifact_dir()
            .join(ReleaseLayout::PerArtifact.release_tag(&driver, identity));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(identity.package_file_name(&driver)),
            b"prebuilt package\n",
        )
        .unwrap();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn identity(release: &str, architecture: &str, version: &str) -> KernelIdentity {
    KernelIdentity::from_input(&IdentityInput {
        kernel_version: release.to_owned(),
        architecture: architecture.to_owned(),
        distribution: "debian".to_owned(),
        distro_version: Some("12".to_owned()),
        driver_version: version.to_owned(),
    })
    .unwrap()
}

/// A node id: 64 lowercase hex digits, as the loader derives from the machine-id.
pub fn node_id(n: u32) -> String {
    format!("{:064x}", 0x000f_1ee7_0000_u64 + u64::from(n))
}

/// A Debian 12 node's report of a run on `release` with driver v0.1.2.
pub fn report(
    node: u32,
    release: &str,
    exit_code: u8,
    origin: Option<ArtifactOrigin>,
) -> NodeReport {
    let architecture = if release.ends_with("arm64") {
        "aarch64"
    } else {
        "x86_64"
    };
    let wait = (origin == Some(ArtifactOrigin::Build)).then_some(120_000);
    NodeReport {
        architecture: architecture.to_owned(),
        artifact_origin: origin,
        distribution: "debian".to_owned(),
        distro_version: "12".to_owned(),
        driver_name: DRIVER.to_owned(),
        driver_version: "v0.1.2".to_owned(),
        exit_code,
        kernel_version: release.to_owned(),
        node_id: node_id(node),
        outcome: RunOutcome::from_exit_code(exit_code),
        pending_kernels: Vec::new(),
        timings: RunTimings {
            build_wait_ms: wait,
            fetch_ms: wait.unwrap_or(0) + 1_500,
            total_ms: wait.unwrap_or(0) + 2_000,
        },
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Sends `body` to `POST /report` (as `token`'s principal); the status and the body, if any.
pub async fn post_report(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut request = client.post(format!("{base}/report")).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let code = response.status().as_u16();
    let text = response.text().await.unwrap();
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Requests a build of `identity` (as `token`'s principal) and waits until it ended; its status.
pub async fn build_and_wait(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    identity: &KernelIdentity,
) -> Value {
    let with_token = |request: reqwest::RequestBuilder| match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = with_token(
        client
            .post(format!("{base}/build"))
            .json(&build_api::BuildRequest::from(identity)),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(
        response.status().as_u16(),
        202,
        "{:?}",
        response.text().await
    );
    let accepted: Value = response.json().await.unwrap();
    let build_id = accepted["build_id"].as_str().unwrap().to_owned();
    for _ in 0..30 {
        let status: Value = with_token(client.get(format!("{base}/status/{build_id}?wait=2")))
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

/// Path of the workspace's `docs/` directory.
pub fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs")
}
