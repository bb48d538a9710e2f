//! GitHub App installation auth end to end: the backend signs an App JWT with the App's private key,
//! exchanges it at `POST /app/installations/{id}/access_tokens` for an installation token, and uses that
//! token for the API. The simulator verifies the JWT (RS256 with the App's public key, `iss`) and, here,
//! accepts no credential but the tokens it minted.

mod github_support;

use std::sync::Arc;

use build_service::github::{GitHubAuth, GitHubBackend};
use build_service::{Backend, BackendError};
use github_sim::{GithubSim, SimApp, SimConfig, SimHandle};
use github_support::*;
use kernel_id::ReleaseLayout;

const APP_ID: u64 = 4242;
const INSTALLATION_ID: u64 = 77;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/github_fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

async fn start_app_sim() -> SimHandle {
    let config = SimConfig {
        accepted_tokens: Some(Vec::new()),
        require_auth: true,
        apps: vec![SimApp {
            app_id: APP_ID,
            installation_id: INSTALLATION_ID,
            public_key_pem: fixture("test-app-key.pub.pem"),
        }],
        publish: Arc::new(publisher(ReleaseLayout::PerArtifact)),
        ..SimConfig::default()
    };
    GithubSim::start(config).await.expect("simulator starts")
}

fn app_backend(sim: &SimHandle, app_id: u64) -> GitHubBackend {
    let mut config = config_for(sim, ReleaseLayout::PerArtifact);
    config.auth = GitHubAuth::App {
        app_id,
        private_key_pem: fixture("test-app-key.pem"),
        installation_id: INSTALLATION_ID,
    };
    GitHubBackend::new(config).expect("backend")
}

#[tokio::test]
async fn app_installation_token_is_minted_once_and_used_for_the_api() {
    let sim = start_app_sim().await;
    let id = debian("6.1.0-47-amd64");
    let tag = ReleaseLayout::PerArtifact.release_tag(&driver(), &id);
    let file = id.package_file_name(&driver());
    sim.publish_release(&tag, &[(file.as_str(), b"pkg".as_slice())])
        .expect("seed");
    let backend = app_backend(&sim, APP_ID);

    let hit = backend
        .find_artifact(&driver(), &id)
        .await
        .expect("lookup")
        .expect("published");
    assert_eq!(hit.download_url, sim.browser_download_url(&tag, &file));
    let build = spec(
        "0f9c1d5e-0000-4000-8000-00000000a001",
        &debian("6.1.0-48-amd64"),
    );
    let dispatched = backend
        .dispatch(&build)
        .await
        .expect("dispatch with the installation token");
    let (state, _) = poll_until_final(
        &backend,
        &build,
        &dispatched,
        std::time::Duration::from_secs(10),
    )
    .await;
    assert_eq!(state, build_service::RunState::Succeeded);
    backend.health().await.expect("healthy");

    let stats = sim.stats();
    assert_eq!(
        stats.installation_tokens_minted, 1,
        "the token is cached until it expires"
    );
    assert_eq!(stats.runs_created, 1);
}

#[tokio::test]
async fn refused_app_credentials_are_a_permanent_error() {
    let sim = start_app_sim().await;
    let backend = app_backend(&sim, APP_ID + 1);
    let err = backend
        .find_artifact(&driver(), &debian("6.1.0-47-amd64"))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, BackendError::Permanent(m) if m.contains("installation token")),
        "{err:?}"
    );
    let build = spec(
        "0f9c1d5e-0000-4000-8000-00000000a002",
        &debian("6.1.0-47-amd64"),
    );
    assert!(matches!(
        backend.dispatch(&build).await,
        Err(BackendError::Permanent(_))
    ));
    let stats = sim.stats();
    assert_eq!(
        (stats.installation_tokens_minted, stats.runs_created),
        (0, 0)
    );
}
