//! The simulator's answers deserialize with octocrab 0.54's strict models (`Release`, `Asset`,
//! `workflows::Run`, `RateLimit`, `Page<Run>`), driven through octocrab's own API calls, so the
//! build-service's GitHub backend can be tested against it with the same client it uses in production.

use std::sync::Arc;
use std::time::Duration;

use github_sim::{GithubSim, PublishedFile, SimConfig};
use octocrab::Octocrab;

const TOKEN: &str = "ghs_simulated_token";

fn client(sim: &github_sim::SimHandle) -> Octocrab {
    Octocrab::builder()
        .base_uri(sim.base_url())
        .expect("simulator base URL is a valid URI")
        .upload_uri(sim.base_url())
        .expect("simulator base URL is a valid upload URI")
        .personal_token(TOKEN.to_owned())
        .build()
        .expect("octocrab client builds")
}

fn identity_inputs(build_id: &str) -> serde_json::Value {
    serde_json::json!({
        "kernel_version": "6.1.0-47-amd64",
        "architecture": "x86_64",
        "distribution": "debian",
        "distro_version": "12",
        "driver_version": "v0.1.2",
        "build_id": build_id,
        "source_commit": "4f2c1e0b8a9d7c6e5f4a3b2c1d0e9f8a7b6c5d4e",
    })
}

#[tokio::test]
async fn releases_and_assets_deserialize_into_octocrab_models() {
    let sim = GithubSim::start(SimConfig::default())
        .await
        .expect("simulator starts");
    let tag = "example-driver-debian-12-6.1.0-47-amd64-v0.1.2";
    let package = b"!<arch>\nnot really a deb".as_slice();
    sim.publish_release(
        tag,
        &[(
            "example-driver-debian-12-6.1.0-47-amd64_v0.1.2_amd64.deb",
            package,
        )],
    )
    .expect("seeded release");
    let gh = client(&sim);
    let repos = gh.repos(sim.owner(), sim.repo());

    let release = repos
        .releases()
        .get_by_tag(tag)
        .await
        .expect("release by tag");
    assert_eq!(release.tag_name, tag);
    assert!(!release.draft);
    assert_eq!(release.immutable, Some(false));
    assert!(release.published_at.is_some());
    let asset = &release.assets[0];
    assert_eq!(asset.size, package.len() as i64);
    assert_eq!(asset.state, "uploaded");
    let expected_digest = format!("sha256:{}", sha256_hex(package));
    assert_eq!(asset.digest.as_deref(), Some(expected_digest.as_str()));
    assert!(
        asset
            .browser_download_url
            .as_str()
            .starts_with(sim.base_url())
    );
    assert_eq!(
        asset.uploader.as_ref().map(|u| u.login.as_str()),
        Some("github-actions[bot]")
    );

    let by_id = repos
        .releases()
        .get(*release.id)
        .await
        .expect("release by id");
    assert_eq!(by_id.id, release.id);

    let page = repos
        .releases()
        .list()
        .per_page(10)
        .send()
        .await
        .expect("list releases");
    assert_eq!(page.items.len(), 1);

    let assets = repos
        .releases()
        .assets(*release.id)
        .send()
        .await
        .expect("list assets");
    assert_eq!(assets.items[0].id, asset.id);

    // octocrab uploads through the release's upload_url, which must point back at the simulator.
    let draft = repos
        .releases()
        .create("octocrab-upload")
        .draft(true)
        .send()
        .await
        .expect("create draft");
    assert!(
        draft.upload_url.starts_with(sim.base_url()),
        "{}",
        draft.upload_url
    );
    let uploaded = repos
        .releases()
        .upload_asset(*draft.id, "notes.txt", bytes::Bytes::from_static(b"hello"))
        .send()
        .await
        .expect("upload through octocrab");
    assert_eq!(uploaded.name, "notes.txt");
    assert_eq!(uploaded.size, 5);

    // Drafts are invisible to the tag endpoint; octocrab reports GitHub's 404.
    match repos.releases().get_by_tag("octocrab-upload").await {
        Err(octocrab::Error::GitHub { source, .. }) => {
            assert_eq!(source.status_code.as_u16(), 404);
            assert_eq!(source.message, "Not Found");
        }
        other => panic!("expected GitHub 404, got {other:?}"),
    }
}

#[tokio::test]
async fn workflow_runs_deserialize_into_octocrab_run_and_page() {
    let publish: github_sim::PublishFn = Arc::new(|inputs| {
        vec![PublishedFile::new(
            format!("t-{}", inputs["build_id"]),
            "a.deb",
            b"x".to_vec(),
        )]
    });
    let config = SimConfig {
        publish,
        ..SimConfig::default()
    };
    let sim = GithubSim::start(config).await.expect("simulator starts");
    let gh = client(&sim);
    let route = format!(
        "/repos/{}/{}/actions/workflows/driver-build.yml/dispatches",
        sim.owner(),
        sim.repo()
    );
    let body = serde_json::json!({ "ref": "main", "inputs": identity_inputs("b-1"), "return_run_details": true });
    let details: serde_json::Value = gh
        .post(route, Some(&body))
        .await
        .expect("dispatch with details");
    let run_id = details["workflow_run_id"].as_u64().expect("run id");

    let run = gh
        .workflows(sim.owner(), sim.repo())
        .get(run_id.into())
        .await
        .expect("octocrab Run");
    assert_eq!(run.id, run_id.into());
    assert_eq!(run.event, "workflow_dispatch");
    assert_eq!(run.head_branch, "main");
    assert!(run.head_repository.is_some());

    let page = gh
        .workflows(sim.owner(), sim.repo())
        .list_runs("driver-build.yml")
        .event("workflow_dispatch")
        .per_page(5)
        .send()
        .await
        .expect("octocrab Page<Run>");
    assert_eq!(page.total_count, Some(1));
    assert_eq!(page.items[0].id, run.id);
    let all = gh
        .workflows(sim.owner(), sim.repo())
        .list_all_runs()
        .send()
        .await
        .expect("all runs");
    assert_eq!(all.items.len(), 1);

    assert!(sim.wait_runs_completed(Duration::from_secs(5)).await);
    let done = gh
        .workflows(sim.owner(), sim.repo())
        .get(run_id.into())
        .await
        .expect("completed run");
    assert_eq!(
        (done.status.as_str(), done.conclusion.as_deref()),
        ("completed", Some("success"))
    );

    let limits = gh.ratelimit().get().await.expect("octocrab RateLimit");
    assert_eq!(limits.resources.core.limit, 5000);
    assert!(
        limits.resources.core.used >= 5,
        "every call above consumed quota"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn octocrab_http_cache_turns_repeat_lookups_into_free_304s() {
    let sim = GithubSim::start(SimConfig::default())
        .await
        .expect("simulator starts");
    sim.publish_release("cached", &[("a.deb", b"a")])
        .expect("release");
    let gh = Octocrab::builder()
        .base_uri(sim.base_url())
        .expect("base URI")
        .personal_token(TOKEN.to_owned())
        .cache(octocrab::service::middleware::cache::mem::InMemoryCache::new())
        .build()
        .expect("octocrab client with cache");
    let releases = gh.repos(sim.owner(), sim.repo());
    for _ in 0..3 {
        let release = releases
            .releases()
            .get_by_tag("cached")
            .await
            .expect("release (fresh or cached)");
        assert_eq!(release.assets.len(), 1);
    }
    let stats = sim.stats();
    assert_eq!(
        stats.not_modified, 2,
        "second and third lookups were conditional"
    );
    assert_eq!(stats.quota_consumed, 1, "only the first lookup cost quota");
}
