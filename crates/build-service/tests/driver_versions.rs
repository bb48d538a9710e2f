//! A driver version names a git commit, end to end over HTTP against the real router and the local
//! backend, with real git: the driver's repository is testkit's sample repository and the executor
//! records what it was handed.
//!
//! - a version that is not a tag is refused (422 naming `driver_version`) and nothing is reserved or
//!   dispatched;
//! - a tag's build records that tag's commit (`source_commit` in `GET /status`) and the executor
//!   gets exactly that commit's tree; two versions of one kernel are two builds of two commits; an
//!   annotated tag is its commit;
//! - a tag moved after a build leaves that build's record alone, and a new identity gets the new
//!   commit;
//! - a burst of unknown versions fetches the repository at most once per refresh interval;
//! - a published artifact stays reachable while the repository cannot be read, and a miss then is
//!   503 with `Retry-After`, reserving nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use build_service::source::SourceSettings;
use build_service::store::Store;
use common::{
    Env, Mode, TestExecutor, body, bookworm, client, post_build, status, wait_until_ended,
};
use serde_json::Value;

async fn builds_stored(env: &Env) -> i64 {
    let store = Store::connect(&env.sqlite_url()).await.unwrap();
    let count = store.count_builds().await.unwrap();
    store.close().await;
    count
}

/// Every lookup lists the tags again (no cache age, no refresh bound): a moved tag is seen at once.
fn uncached(config: &mut build_service::ServiceConfig) {
    config.source = SourceSettings {
        refresh_interval: Duration::ZERO,
        max_age: Duration::ZERO,
    };
}

async fn build_to_done(client: &reqwest::Client, base: &str, request: &Value) -> Value {
    let (code, answer) = post_build(client, base, request).await;
    assert_eq!(code, 202, "{answer}");
    let build_id = answer["build_id"].as_str().unwrap();
    let ended = wait_until_ended(client, base, build_id).await;
    assert_eq!(ended["status"], "done", "{ended}");
    ended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_is_not_a_tag_is_refused_and_nothing_is_reserved() {
    let executor = TestExecutor::new(Mode::Succeed);
    let env = Env::new(executor.clone());
    let service = env.start().await;
    let client = client();
    for version in ["v9.9.9", "v0.1.2-rc.1", "v0.1.20"] {
        let (code, answer) = post_build(&client, &service.url(), &bookworm(version)).await;
        assert_eq!(code, 422, "{version}: {answer}");
        assert_eq!(answer["field"], "driver_version", "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert_eq!(
            error,
            format!(
                "driver_version: {version} is not a tag of {}",
                env.repo_uri()
            )
        );
    }
    assert_eq!(env.counters.dispatches.load(Ordering::SeqCst), 0);
    assert_eq!(executor.started.load(Ordering::SeqCst), 0);
    assert_eq!(builds_stored(&env).await, 0, "no reservation for a non-tag");
    assert!(
        !env.dir.path().join("builds").exists()
            || std::fs::read_dir(env.dir.path().join("builds"))
                .unwrap()
                .next()
                .is_none(),
        "no build directory"
    );
    // The same service builds a version that is a tag.
    let ended = build_to_done(&client, &service.url(), &bookworm("v0.1.2")).await;
    assert_eq!(
        ended["source_commit"].as_str(),
        Some(env.repo.tag_commit("v0.1.2").unwrap().as_str())
    );
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_is_built_from_exactly_its_tags_commit() {
    let executor = TestExecutor::new(Mode::Succeed);
    let env = Env::new(executor.clone());
    let first = env
        .repo
        .commit_file("VERSION", b"one\n", "version one")
        .unwrap();
    env.repo.tag("v1.0.0", &first).unwrap();
    let second = env
        .repo
        .commit_file("VERSION", b"two\n", "version two")
        .unwrap();
    let tag_object = env
        .repo
        .tag_annotated("v1.1.0", &second, "annotated release")
        .unwrap();
    let service = env.start().await;
    let client = client();

    // Two driver versions of the same kernel: two builds, two commits.
    let one = build_to_done(&client, &service.url(), &bookworm("v1.0.0")).await;
    let two = build_to_done(&client, &service.url(), &bookworm("v1.1.0")).await;
    assert_ne!(one["build_id"], two["build_id"]);
    assert_eq!(one["source_commit"].as_str(), Some(first.as_str()));
    assert_eq!(
        two["source_commit"].as_str(),
        Some(second.as_str()),
        "an annotated tag is its commit, never the tag object {tag_object}"
    );

    // The executor got exactly each commit's tree, from the build's own export.
    let jobs = executor.jobs();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for (job, status, commit, version_file) in [
        (&jobs[0], &one, &first, b"one\n"),
        (&jobs[1], &two, &second, b"two\n"),
    ] {
        assert_eq!(job.build_id, status["build_id"].as_str().unwrap());
        assert_eq!(&job.source_commit, commit);
        assert_eq!(job.source_repository, env.repo_uri());
        assert_eq!(
            job.source_dir,
            env.dir
                .path()
                .join("builds")
                .join(&job.build_id)
                .join("src")
        );
        let mut expected = common::tree(&testkit::workspace_root().join("driver/example-driver"));
        expected.insert("VERSION".to_owned(), version_file.to_vec());
        assert_eq!(job.files, expected, "the tree of {commit}");
        assert_eq!(
            env.repo.file_at(commit, "VERSION").unwrap(),
            version_file.to_vec()
        );
    }
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_moved_after_a_build_changes_only_new_builds() {
    let executor = TestExecutor::new(Mode::Succeed);
    let env = Env::new(executor.clone());
    let service = env.start_with(&env.sqlite_url(), uncached).await;
    let client = client();
    let before = env.repo.tag_commit("v0.1.2").unwrap();
    let old = build_to_done(&client, &service.url(), &bookworm("v0.1.2")).await;
    assert_eq!(old["source_commit"].as_str(), Some(before.as_str()));

    let moved = env
        .repo
        .commit_file("VERSION", b"moved\n", "the tag moves here")
        .unwrap();
    env.repo.move_tag("v0.1.2", &moved).unwrap();

    // The old build still says what it was made from; its identity is a hit, not a new build.
    let old_id = old["build_id"].as_str().unwrap();
    let again = status(&client, &service.url(), old_id, 0).await;
    assert_eq!(again["source_commit"].as_str(), Some(before.as_str()));
    let (code, hit) = post_build(&client, &service.url(), &bookworm("v0.1.2")).await;
    assert_eq!(code, 200, "{hit}");

    // A new identity of the same version gets the commit the tag names now.
    let other_kernel = body("6.1.0-44-amd64", "debian", Some("12"), "v0.1.2");
    let new = build_to_done(&client, &service.url(), &other_kernel).await;
    assert_eq!(new["source_commit"].as_str(), Some(moved.as_str()));
    let jobs = executor.jobs();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].source_commit, before);
    assert!(!jobs[0].files.contains_key("VERSION"));
    assert_eq!(jobs[1].source_commit, moved);
    assert_eq!(jobs[1].files["VERSION"], b"moved\n");
    let again = status(&client, &service.url(), old_id, 0).await;
    assert_eq!(
        again["source_commit"].as_str(),
        Some(before.as_str()),
        "never resolved again"
    );
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_unknown_versions_fetches_the_repository_at_most_once_per_interval() {
    let executor = TestExecutor::new(Mode::Succeed);
    let env = Env::new(executor.clone());
    let service = env
        .start_with(&env.sqlite_url(), |config| {
            config.source = SourceSettings {
                refresh_interval: Duration::from_secs(60),
                max_age: Duration::from_secs(60),
            };
        })
        .await;
    let client = client();
    let base = Arc::new(service.url());
    let burst: Vec<_> = (0..64)
        .map(|n| {
            let (client, base) = (client.clone(), Arc::clone(&base));
            tokio::spawn(async move {
                post_build(&client, &base, &bookworm(&format!("v7.7.{n}"))).await
            })
        })
        .collect();
    for request in burst {
        let (code, answer) = request.await.unwrap();
        assert_eq!(code, 422, "{answer}");
        assert_eq!(answer["field"], "driver_version");
    }
    assert_eq!(
        env.local().source().refreshes(),
        1,
        "64 unknown versions at once: one clone of the repository, no fetch"
    );
    assert_eq!(env.counters.dispatches.load(Ordering::SeqCst), 0);
    assert_eq!(builds_stored(&env).await, 0);
    // Known versions are answered from the same listing.
    build_to_done(&client, &base, &bookworm("v0.1.3")).await;
    assert_eq!(env.local().source().refreshes(), 1);
    service.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_artifact_stays_reachable_while_the_repository_cannot_be_read() {
    let executor = TestExecutor::new(Mode::Succeed);
    let env = Env::new(executor.clone());
    let service = env.start_with(&env.sqlite_url(), uncached).await;
    let client = client();
    let done = build_to_done(&client, &service.url(), &bookworm("v0.1.2")).await;

    // The repository goes away (and with it every fetch).
    let uri = env.repo_uri();
    let moved_away = env.dir.path().join("repo-elsewhere");
    std::fs::rename(env.repo.path(), &moved_away).unwrap();

    let (code, hit) = post_build(&client, &service.url(), &bookworm("v0.1.2")).await;
    assert_eq!(code, 200, "a hit never reads the repository: {hit}");
    assert_eq!(hit["download_url"], done["download_url"]);

    let response = client
        .post(format!("{}/build", service.url()))
        .json(&body("6.1.0-44-amd64", "debian", Some("12"), "v0.1.2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let refusal: Value = response.json().await.unwrap();
    assert!(
        refusal["error"].as_str().unwrap().contains(&uri),
        "{refusal}"
    );
    assert_eq!(
        builds_stored(&env).await,
        1,
        "nothing reserved while unreadable"
    );
    assert_eq!(env.counters.dispatches.load(Ordering::SeqCst), 1);

    // Back again: the miss is built.
    std::fs::rename(&moved_away, env.repo.path()).unwrap();
    build_to_done(
        &client,
        &service.url(),
        &body("6.1.0-44-amd64", "debian", Some("12"), "v0.1.2"),
    )
    .await;
    service.stop().await.unwrap();
}
