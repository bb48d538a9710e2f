//! GitHub App installation tokens: octocrab's real App flow (RS256 JWT -> `POST /app/installations/{id}/
//! access_tokens` -> installation token) against the simulator, which only accepts minted tokens here.

use github_sim::{GithubSim, SimApp, SimConfig, SimHandle};
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};

const APP_ID: u64 = 4242;
const INSTALLATION_ID: u64 = 77;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

async fn start() -> SimHandle {
    let config = SimConfig {
        accepted_tokens: Some(Vec::new()),
        require_auth: true,
        apps: vec![SimApp {
            app_id: APP_ID,
            installation_id: INSTALLATION_ID,
            public_key_pem: fixture("test-app-key.pub.pem"),
        }],
        ..SimConfig::default()
    };
    GithubSim::start(config).await.expect("simulator starts")
}

fn installation_client(sim: &SimHandle, app_id: u64, installation_id: u64) -> Octocrab {
    Octocrab::builder()
        .base_uri(sim.base_url())
        .expect("base uri")
        .app_from_rsa_pem(AppId(app_id), fixture("test-app-key.pem"))
        .expect("App key")
        .build()
        .expect("client")
        .installation(InstallationId(installation_id))
        .expect("installation client")
}

fn status_of(err: &octocrab::Error) -> Option<u16> {
    match err {
        octocrab::Error::GitHub { source, .. } => Some(source.status_code.as_u16()),
        _ => None,
    }
}

async fn list_releases_status(client: &Octocrab, sim: &SimHandle) -> u16 {
    let path = format!("/repos/{}/{}/releases", sim.owner(), sim.repo());
    client._get(path).await.expect("answer").status().as_u16()
}

#[tokio::test]
async fn an_app_jwt_mints_an_installation_token_that_the_api_accepts() {
    let sim = start().await;
    let client = installation_client(&sim, APP_ID, INSTALLATION_ID);
    assert_eq!(list_releases_status(&client, &sim).await, 200);
    assert_eq!(list_releases_status(&client, &sim).await, 200);
    assert_eq!(
        sim.stats().installation_tokens_minted,
        1,
        "the token is reused until it expires"
    );
}

#[tokio::test]
async fn wrong_issuer_unknown_installation_and_a_bare_jwt_are_refused() {
    let sim = start().await;
    // iss is another App: the JWT verifies against the key but names the wrong App.
    let wrong_app = installation_client(&sim, APP_ID + 1, INSTALLATION_ID);
    let path = format!("/repos/{}/{}/releases", sim.owner(), sim.repo());
    let err = wrong_app
        ._get(path.as_str())
        .await
        .expect_err("token exchange refused");
    assert_eq!(status_of(&err), Some(401), "{err}");
    let unknown = installation_client(&sim, APP_ID, INSTALLATION_ID + 1);
    let err = unknown
        ._get(path.as_str())
        .await
        .expect_err("no such installation");
    assert_eq!(status_of(&err), Some(404), "{err}");
    // The App JWT itself is not an API credential.
    let app_only = Octocrab::builder()
        .base_uri(sim.base_url())
        .expect("base uri")
        .app_from_rsa_pem(AppId(APP_ID), fixture("test-app-key.pem"))
        .expect("App key")
        .build()
        .expect("client");
    assert_eq!(list_releases_status(&app_only, &sim).await, 401);
    assert_eq!(sim.stats().installation_tokens_minted, 0);
}
