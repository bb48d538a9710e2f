//! Shared set-up for the GitHub backend tests: a github-sim whose runs publish exactly what
//! `driver-build.yml` publishes (names computed by kernel-id from the run's inputs), whose
//! repository is tagged with the driver versions the tests ask for ([`TAGS`], at [`COMMIT`]), and
//! a backend configured against it with test-sized timings.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;
use std::time::Duration;

use build_service::github::{GitHubAuth, GitHubBackend, GitHubConfig, GitHubTuning};
use build_service::{Backend, BuildSpec, Dispatched, RunState};
use github_sim::{GithubSim, Inputs, PublishedFile, SimConfig, SimHandle};
use kernel_id::{DriverName, IdentityInput, KernelIdentity, ReleaseLayout, SourceCommit};

pub const TOKEN: &str = "ghs_test_token";

/// The commit every tag of [`TAGS`] names in the simulated repository.
pub const COMMIT: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// The driver versions the simulated repository is tagged with.
pub const TAGS: &[&str] = &["v0.1.2", "v0.1.3", "v0.1.4", "v0.2.0", "v0.5.16"];

/// [`COMMIT`], typed.
pub fn commit() -> SourceCommit {
    SourceCommit::parse(COMMIT).expect("valid commit")
}

pub fn driver() -> DriverName {
    DriverName::parse("example-driver").expect("valid driver name")
}

pub fn identity(kernel: &str, distribution: &str, distro_version: &str) -> KernelIdentity {
    let arch = if kernel.contains("arm64") || kernel.contains("aarch64") {
        "aarch64"
    } else {
        "x86_64"
    };
    KernelIdentity::from_input(&IdentityInput {
        kernel_version: kernel.to_owned(),
        architecture: arch.to_owned(),
        distribution: distribution.to_owned(),
        distro_version: Some(distro_version.to_owned()),
        driver_version: "v0.5.16".to_owned(),
    })
    .expect("valid identity")
}

pub fn debian(kernel: &str) -> KernelIdentity {
    identity(kernel, "debian", "12")
}

pub fn spec(build_id: &str, identity: &KernelIdentity) -> BuildSpec {
    BuildSpec {
        build_id: build_id.to_owned(),
        driver: driver(),
        identity: identity.clone(),
        source_commit: Some(commit()),
    }
}

/// The identity a run was dispatched for, rebuilt from its inputs with kernel-id (as the workflow does).
pub fn identity_from_inputs(inputs: &Inputs) -> Option<KernelIdentity> {
    KernelIdentity::from_input(&IdentityInput {
        kernel_version: inputs.get("kernel_version")?.clone(),
        architecture: inputs.get("architecture")?.clone(),
        distribution: inputs.get("distribution")?.clone(),
        distro_version: inputs.get("distro_version").cloned(),
        driver_version: inputs.get("driver_version")?.clone(),
    })
    .ok()
}

/// What a successful `driver-build.yml` run publishes for `layout`: package, signature, digest.
pub fn publisher(
    layout: ReleaseLayout,
) -> impl Fn(&Inputs) -> Vec<PublishedFile> + Send + Sync + 'static {
    move |inputs| {
        let Some(identity) = identity_from_inputs(inputs) else {
            return Vec::new();
        };
        let driver = driver();
        let tag = layout.release_tag(&driver, &identity);
        vec![
            PublishedFile::new(
                tag.clone(),
                identity.package_file_name(&driver),
                b"package bytes".to_vec(),
            ),
            PublishedFile::new(
                tag.clone(),
                identity.signature_file_name(&driver),
                b"signature".to_vec(),
            ),
            PublishedFile::new(tag, identity.digest_file_name(&driver), b"digest".to_vec()),
        ]
    }
}

pub async fn start_sim(layout: ReleaseLayout) -> SimHandle {
    let config = SimConfig {
        accepted_tokens: Some(vec![TOKEN.to_owned()]),
        publish: Arc::new(publisher(layout)),
        ..SimConfig::default()
    };
    let sim = GithubSim::start(config).await.expect("simulator starts");
    for tag in TAGS {
        sim.create_tag(tag, COMMIT).expect("tag");
    }
    sim
}

/// Timings scaled down for loopback: the logic is the same, only the waits are shorter.
pub fn fast_tuning() -> GitHubTuning {
    GitHubTuning {
        request_timeout: Duration::from_secs(5),
        dispatch_timeout: Duration::from_secs(5),
        ambiguous_settle: Duration::from_secs(2),
        run_lookup_timeout: Duration::from_secs(3),
        run_lookup_interval: Duration::from_millis(50),
        clock_skew_margin: Duration::from_secs(60),
        idempotency_lookback: Duration::from_secs(3600),
        publish_grace: Duration::from_secs(2),
        ..GitHubTuning::default()
    }
}

pub fn config_for(sim: &SimHandle, layout: ReleaseLayout) -> GitHubConfig {
    let mut config = GitHubConfig::new(
        sim.owner(),
        sim.repo(),
        GitHubAuth::Token(TOKEN.to_owned()),
        driver(),
    );
    config.api_base_url = sim.base_url().to_owned();
    config.layout = layout;
    config.tuning = fast_tuning();
    config
}

pub fn backend_for(sim: &SimHandle, layout: ReleaseLayout) -> GitHubBackend {
    GitHubBackend::new(config_for(sim, layout)).expect("backend builds")
}

/// Polls until the run reaches a final state (bounded: gives up after `limit`).
pub async fn poll_until_final(
    backend: &GitHubBackend,
    build: &BuildSpec,
    dispatched: &Dispatched,
    limit: Duration,
) -> (RunState, Vec<RunState>) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let state = backend
            .poll(build, dispatched)
            .await
            .expect("poll succeeds");
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if matches!(state, RunState::Succeeded | RunState::Failed { .. }) {
            return (state, seen);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run not final after {limit:?}; states seen: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// `display_title` the workflow's `run-name: driver-build ${{ inputs.build_id }}` gives a run.
pub fn title(build_id: &str) -> String {
    format!("driver-build {build_id}")
}
