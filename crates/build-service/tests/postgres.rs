//! Two replicas on one real PostgreSQL (a private cluster started by the test on 127.0.0.1): 200
//! concurrent identical requests split across both make exactly one dispatch and one build id, and
//! either replica reports the end of the build.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{Env, Mode, Postgres, TestExecutor, bookworm, client, post_build, wait_until_ended};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres_dispatch_one_build_for_two_hundred_requests() {
    let postgres = Postgres::start();
    let executor = TestExecutor::new(Mode::Hold);
    let env = Env::new(executor.clone());
    let first = env.start_with(&postgres.url, |_| {}).await;
    let second = env.start_with(&postgres.url, |_| {}).await;
    let client = client();
    let request = Arc::new(bookworm("v0.1.2"));
    let mut requests = tokio::task::JoinSet::new();
    for index in 0..200 {
        let client = client.clone();
        let base = if index % 2 == 0 {
            first.url()
        } else {
            second.url()
        };
        let request = Arc::clone(&request);
        requests.spawn(async move { post_build(&client, &base, &request).await });
    }
    let mut build_ids = HashSet::new();
    while let Some(answer) = requests.join_next().await {
        let (code, answer) = answer.unwrap();
        assert_eq!(code, 202, "{answer}");
        build_ids.insert(answer["build_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(build_ids.len(), 1, "{build_ids:?}");
    let build_id = build_ids.into_iter().next().unwrap();
    executor.release();
    // The replica that did not reserve the build learns of its end through the database.
    for replica in [&second, &first] {
        let ended = wait_until_ended(&client, &replica.url(), &build_id).await;
        assert_eq!(ended["status"], "done", "{ended}");
    }
    assert_eq!(env.counters.dispatches.load(Ordering::SeqCst), 1);
    assert_eq!(executor.started.load(Ordering::SeqCst), 1);
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}
