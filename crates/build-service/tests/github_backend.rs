//! The GitHub backend against the github-sim simulator on loopback: existence checks and their quota
//! cost, dispatch and run tracking, legacy (204) servers, lost answers, faults and rate limits.
//!
//! Every backend call is one attempt: a fault comes back as a classified `BackendError` (the tracker
//! is the one layer that retries, see `service_github.rs` and `chaos.rs`), and a dispatch whose answer
//! was lost is never re-sent by the backend: the caller finds its run by build id (`find_run`).

mod github_support;

use std::time::{Duration, SystemTime};

use build_service::{Backend, BackendError, Dispatched, RunState};
use github_sim::{Conclusion, DispatchMode, Fault, Route, RunStatus, RunTiming};
use github_support::*;
use kernel_id::ReleaseLayout;

const KERNEL: &str = "6.1.0-47-amd64";

/// Runs of a build are looked for from a minute before the test (the build's creation time).
fn since() -> SystemTime {
    SystemTime::now() - Duration::from_secs(60)
}

#[tokio::test]
async fn hit_returns_the_browser_download_url_and_repeats_cost_nothing() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    let id = debian(KERNEL);
    let tag = ReleaseLayout::PerArtifact.release_tag(&driver(), &id);
    let file = id.package_file_name(&driver());
    sim.publish_release(&tag, &[(file.as_str(), b"pkg".as_slice())])
        .expect("seed release");
    let backend = backend_for(&sim, ReleaseLayout::PerArtifact);

    let found = backend
        .find_artifact(&driver(), &id)
        .await
        .expect("lookup")
        .expect("published");
    assert_eq!(found.download_url, sim.browser_download_url(&tag, &file));

    let before = sim.stats();
    for _ in 0..50 {
        let again = backend
            .find_artifact(&driver(), &id)
            .await
            .expect("lookup")
            .expect("published");
        assert_eq!(again, found);
    }
    let after = sim.stats();
    assert_eq!(
        after.requests_to(Route::ReleaseByTag),
        before.requests_to(Route::ReleaseByTag),
        "positive cache"
    );
    assert_eq!(after.quota_consumed, before.quota_consumed);
}

#[tokio::test]
async fn repeated_lookups_of_an_unchanged_release_are_free_304s() {
    // per-driver-version: the release exists (other kernels) but lacks this artifact, so every lookup asks
    // GitHub again; from the second on with If-None-Match, answered 304 at no quota.
    let sim = start_sim(ReleaseLayout::PerDriverVersion).await;
    let other = debian("6.1.0-48-amd64");
    let tag = ReleaseLayout::PerDriverVersion.release_tag(&driver(), &other);
    let other_file = other.package_file_name(&driver());
    sim.publish_release(&tag, &[(other_file.as_str(), b"pkg".as_slice())])
        .expect("seed release");
    let backend = backend_for(&sim, ReleaseLayout::PerDriverVersion);
    let missing = debian(KERNEL);
    assert_eq!(
        ReleaseLayout::PerDriverVersion.release_tag(&driver(), &missing),
        tag,
        "same release"
    );

    assert_eq!(
        backend
            .find_artifact(&driver(), &missing)
            .await
            .expect("lookup"),
        None
    );
    let before = sim.stats();
    for _ in 0..10 {
        assert_eq!(
            backend
                .find_artifact(&driver(), &missing)
                .await
                .expect("lookup"),
            None
        );
    }
    let after = sim.stats();
    assert_eq!(
        after.requests_to(Route::ReleaseByTag) - before.requests_to(Route::ReleaseByTag),
        10
    );
    assert_eq!(after.not_modified - before.not_modified, 10);
    assert_eq!(
        after.quota_consumed, before.quota_consumed,
        "304s cost no quota"
    );
    // The neighbour in the same release is found from the cached answer too.
    let hit = backend
        .find_artifact(&driver(), &other)
        .await
        .expect("lookup")
        .expect("published");
    assert_eq!(
        hit.download_url,
        sim.browser_download_url(&tag, &other_file)
    );
}

#[tokio::test]
async fn drafts_and_other_kernels_are_not_hits() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    let id = debian(KERNEL);
    let tag = ReleaseLayout::PerArtifact.release_tag(&driver(), &id);
    let file = id.package_file_name(&driver());
    sim.create_draft_release(&tag, &[(file.as_str(), b"pkg".as_slice())])
        .expect("seed draft");
    let backend = backend_for(&sim, ReleaseLayout::PerArtifact);
    assert_eq!(
        backend.find_artifact(&driver(), &id).await.expect("lookup"),
        None,
        "drafts are unpublished"
    );
    // Same kernel, other distro version: another identity, another release.
    let ubuntu_22 = identity("6.8.0-45-generic", "ubuntu", "22.04");
    let ubuntu_24 = identity("6.8.0-45-generic", "ubuntu", "24.04");
    let tag_22 = ReleaseLayout::PerArtifact.release_tag(&driver(), &ubuntu_22);
    let file_22 = ubuntu_22.package_file_name(&driver());
    sim.publish_release(&tag_22, &[(file_22.as_str(), b"pkg".as_slice())])
        .expect("seed");
    assert!(
        backend
            .find_artifact(&driver(), &ubuntu_22)
            .await
            .expect("lookup")
            .is_some()
    );
    assert_eq!(
        backend
            .find_artifact(&driver(), &ubuntu_24)
            .await
            .expect("lookup"),
        None
    );
}

#[tokio::test]
async fn miss_dispatches_one_run_that_progresses_to_success_and_publishes() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    let backend = backend_for(&sim, ReleaseLayout::PerArtifact);
    let id = debian(KERNEL);
    assert_eq!(
        backend.find_artifact(&driver(), &id).await.expect("lookup"),
        None
    );

    let build = spec("0f9c1d5e-0000-4000-8000-000000000001", &id);
    let dispatched = backend.dispatch(&build).await.expect("dispatch");
    let run_id: u64 = dispatched
        .run_id
        .as_deref()
        .expect("run id from run details")
        .parse()
        .expect("numeric");
    let run = sim.run(run_id).expect("run exists");
    assert_eq!(run.display_title, title(&build.build_id));
    assert_eq!(
        run.inputs.get("kernel_version").map(String::as_str),
        Some(KERNEL)
    );
    assert_eq!(
        run.inputs.get("distro_version").map(String::as_str),
        Some("12")
    );
    assert_eq!(run.inputs.get("build_id"), Some(&build.build_id));
    assert!(
        dispatched
            .run_url
            .as_deref()
            .is_some_and(|u| u.contains(&run_id.to_string())),
        "{dispatched:?}"
    );

    let (state, seen) =
        poll_until_final(&backend, &build, &dispatched, Duration::from_secs(10)).await;
    assert_eq!(state, RunState::Succeeded, "states: {seen:?}");
    let found = backend
        .find_artifact(&driver(), &id)
        .await
        .expect("lookup")
        .expect("published by the run");
    let tag = ReleaseLayout::PerArtifact.release_tag(&driver(), &id);
    assert_eq!(
        found.download_url,
        sim.browser_download_url(&tag, &id.package_file_name(&driver()))
    );

    // Idempotent per build id: asking again returns the same run and sends nothing.
    let again = backend.dispatch(&build).await.expect("dispatch again");
    assert_eq!(again, dispatched);
    let stats = sim.stats();
    assert_eq!(
        (
            stats.runs_created,
            stats.requests_to(Route::DispatchWorkflow)
        ),
        (1, 1)
    );
}

#[tokio::test]
async fn run_states_follow_the_run_and_failure_is_reported() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.set_run_timing(RunTiming {
        queued: None,
        in_progress: None,
        publish_step: Duration::ZERO,
    });
    let backend = backend_for(&sim, ReleaseLayout::PerArtifact);
    let build = spec("0f9c1d5e-0000-4000-8000-000000000002", &debian(KERNEL));
    let dispatched = backend.dispatch(&build).await.expect("dispatch");
    let run_id: u64 = dispatched
        .run_id
        .as_deref()
        .expect("run id")
        .parse()
        .expect("numeric");

    assert_eq!(
        backend.poll(&build, &dispatched).await.expect("poll"),
        RunState::Queued
    );
    assert!(sim.start_run(run_id));
    assert_eq!(
        backend.poll(&build, &dispatched).await.expect("poll"),
        RunState::InProgress
    );
    assert!(sim.finish_run(run_id, Conclusion::Failure).await);
    match backend.poll(&build, &dispatched).await.expect("poll") {
        RunState::Failed { message } => {
            assert!(
                message.contains("failure") && message.contains(&run_id.to_string()),
                "{message}"
            )
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(
        backend
            .find_artifact(&driver(), &build.identity)
            .await
            .expect("lookup"),
        None
    );
}

#[tokio::test]
async fn a_successful_run_without_its_artifact_fails_after_the_grace_period() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.set_publish(|_| Vec::new());
    let backend = backend_for(&sim, ReleaseLayout::PerArtifact);
    let build = spec("0f9c1d5e-0000-4000-8000-000000000003", &debian(KERNEL));
    let dispatched = backend.dispatch(&build).await.expect("dispatch");
    let (state, _) = poll_until_final(&backend, &build, &dispatched, Duration::from_secs(10)).await;
    let RunState::Failed { message } = state else {
        panic!("expected Failed, got {state:?}")
    };
    assert!(
        message.contains("not published")
            && message.contains(&build.identity.package_file_name(&driver()))
    );
}

#[tokio::test]
async fn legacy_204_dispatch_finds_its_run_by_build_id_among_simultaneous_runs() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.set_dispatch_mode(DispatchMode::LegacyNoContent);
    sim.set_run_timing(RunTiming {
        queued: None,
        in_progress: None,
        publish_step: Duration::ZERO,
    });
    // GitHub lists new runs late; the backend must keep looking rather than take "the newest run".
    sim.set_run_list_delay(Duration::from_millis(300));
    let backend = std::sync::Arc::new(backend_for(&sim, ReleaseLayout::PerArtifact));

    // Decoys: other builds dispatched at the same moment, some before and some after ours.
    let kernels = [
        "6.1.0-48-amd64",
        "6.1.0-49-amd64",
        KERNEL,
        "6.1.0-50-amd64",
        "6.1.0-51-amd64",
    ];
    let mut tasks = Vec::new();
    for (n, kernel) in kernels.iter().enumerate() {
        let backend = std::sync::Arc::clone(&backend);
        let build = spec(
            &format!("0f9c1d5e-0000-4000-8000-00000000010{n}"),
            &debian(kernel),
        );
        tasks.push(tokio::spawn(async move {
            let dispatched = backend.dispatch(&build).await.expect("dispatch");
            (build, dispatched)
        }));
    }
    let mut run_ids = Vec::new();
    for task in tasks {
        let (build, dispatched) = task.await.expect("task");
        let run_id: u64 = dispatched
            .run_id
            .as_deref()
            .expect("run found by build id")
            .parse()
            .expect("numeric");
        let run = sim.run(run_id).expect("run exists");
        assert_eq!(
            run.display_title,
            title(&build.build_id),
            "each dispatch gets its own run"
        );
        assert_eq!(
            run.inputs.get("kernel_version"),
            Some(&build.identity.kernel_release().to_string())
        );
        run_ids.push(run_id);
    }
    run_ids.sort_unstable();
    run_ids.dedup();
    assert_eq!(run_ids.len(), kernels.len());
    assert_eq!(
        sim.stats().runs_created,
        kernels.len() as u64,
        "no dispatch was sent twice"
    );
}

#[tokio::test]
async fn servers_refusing_return_run_details_get_a_plain_dispatch() {
    for status in [400u16, 422] {
        let sim = start_sim(ReleaseLayout::PerArtifact).await;
        sim.set_dispatch_mode(DispatchMode::RejectRunDetailsField { status });
        let backend = backend_for(&sim, ReleaseLayout::PerArtifact);
        let build = spec("0f9c1d5e-0000-4000-8000-000000000200", &debian(KERNEL));
        let dispatched = backend.dispatch(&build).await.expect("dispatch");
        let run_id: u64 = dispatched
            .run_id
            .as_deref()
            .expect("found by build id")
            .parse()
            .expect("numeric");
        assert_eq!(
            sim.run(run_id).expect("run").display_title,
            title(&build.build_id)
        );
        assert_eq!(sim.stats().runs_created, 1, "status {status}");
        let (state, _) =
            poll_until_final(&backend, &build, &dispatched, Duration::from_secs(10)).await;
        assert_eq!(state, RunState::Succeeded);

        // The refusal is remembered: the next dispatch goes out without the field at once.
        let before = sim.requests(Route::DispatchWorkflow);
        let second = spec(
            "0f9c1d5e-0000-4000-8000-000000000201",
            &debian("6.1.0-48-amd64"),
        );
        backend.dispatch(&second).await.expect("dispatch");
        assert_eq!(sim.requests(Route::DispatchWorkflow) - before, 1);
    }
}

#[tokio::test]
async fn legacy_run_listed_too_late_for_dispatch_is_found_by_polling() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.set_dispatch_mode(DispatchMode::LegacyNoContent);
    sim.set_run_list_delay(Duration::from_secs(4)); // longer than run_lookup_timeout (3 s)
    let backend = backend_for(&sim, ReleaseLayout::PerArtifact);
    let build = spec("0f9c1d5e-0000-4000-8000-000000000300", &debian(KERNEL));
    let dispatched = backend.dispatch(&build).await.expect("dispatch");
    assert_eq!(
        dispatched,
        Dispatched::default(),
        "accepted, run not known yet"
    );
    assert_eq!(
        backend.poll(&build, &dispatched).await.expect("poll"),
        RunState::Queued
    );
    let (state, _) = poll_until_final(&backend, &build, &dispatched, Duration::from_secs(15)).await;
    assert_eq!(state, RunState::Succeeded);
    // A retried dispatch (e.g. by the service after a crash) returns the run, never a second one.
    let again = backend.dispatch(&build).await.expect("dispatch again");
    assert!(again.run_id.is_some());
    assert_eq!(sim.stats().runs_created, 1);
}

#[tokio::test]
async fn dispatch_accepted_but_answered_5xx_is_transient_and_its_run_is_found_by_build_id() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.set_run_list_delay(Duration::from_millis(500));
    sim.inject_fault(
        Route::DispatchWorkflow,
        Fault::AcceptThenServerError(502),
        1,
    );
    let backend = backend_for(&sim, ReleaseLayout::PerArtifact);
    let build = spec("0f9c1d5e-0000-4000-8000-000000000400", &debian(KERNEL));
    let err = backend.dispatch(&build).await.expect_err("answer lost");
    assert!(matches!(err, BackendError::Transient(_)), "{err:?}");
    assert_eq!(
        sim.requests(Route::DispatchWorkflow),
        1,
        "the backend does not send again by itself"
    );
    // What the tracker does next: wait the settle time after the call, look the run up by build id.
    assert_eq!(backend.dispatch_settle(), fast_tuning().ambiguous_settle);
    tokio::time::sleep(backend.dispatch_settle()).await;
    let found = backend
        .find_run(&build, since())
        .await
        .expect("lookup")
        .expect("the run of the lost answer");
    let run_id: u64 = found
        .run_id
        .as_deref()
        .expect("run")
        .parse()
        .expect("numeric");
    assert_eq!(
        sim.run(run_id).expect("run").display_title,
        title(&build.build_id)
    );
    let stats = sim.stats();
    assert_eq!(stats.runs_created, 1);
    assert_eq!(stats.requests_to(Route::DispatchWorkflow), 1);
    // Once found, a repeated dispatch of the build id returns the run and sends nothing.
    assert_eq!(backend.dispatch(&build).await.expect("dispatch"), found);
    assert_eq!(sim.requests(Route::DispatchWorkflow), 1);
}

#[tokio::test]
async fn dispatch_timing_out_is_transient_and_sent_again_only_after_finding_no_run() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    let mut config = config_for(&sim, ReleaseLayout::PerArtifact);
    config.tuning.dispatch_timeout = Duration::from_millis(400);
    let backend = build_service::github::GitHubBackend::new(config).expect("backend");
    // The simulator sits on the dispatch past our timeout; we hang up, so it never takes effect. The
    // backend cannot know that: it reports the loss, and the caller looks before sending again.
    sim.inject_fault(
        Route::DispatchWorkflow,
        Fault::Delay(Duration::from_secs(1)),
        1,
    );
    let build = spec("0f9c1d5e-0000-4000-8000-000000000401", &debian(KERNEL));
    let err = backend.dispatch(&build).await.expect_err("timed out");
    assert!(matches!(err, BackendError::Transient(_)), "{err:?}");
    // Let a late-processed first request (if any) land before looking.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        backend.find_run(&build, since()).await.expect("lookup"),
        None
    );
    let dispatched = backend.dispatch(&build).await.expect("dispatch");
    assert!(dispatched.run_id.is_some());
    assert_eq!(sim.requests(Route::DispatchWorkflow), 2);
    assert_eq!(sim.runs_titled(&title(&build.build_id)).len(), 1);
    assert_eq!(sim.stats().runs_created, 1);
}

#[tokio::test]
async fn server_errors_are_reported_as_transient_after_one_attempt() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.inject_fault(Route::DispatchWorkflow, Fault::ServerError(503), 1);
    sim.inject_fault(Route::ReleaseByTag, Fault::ServerError(500), 1);
    sim.inject_fault(Route::GetRun, Fault::ServerError(502), 1);
    let backend = backend_for(&sim, ReleaseLayout::PerArtifact);
    let id = debian(KERNEL);
    let err = backend
        .find_artifact(&driver(), &id)
        .await
        .expect_err("one attempt");
    assert!(matches!(err, BackendError::Transient(_)), "{err:?}");
    assert_eq!(sim.requests(Route::ReleaseByTag), 1);
    assert_eq!(
        backend.find_artifact(&driver(), &id).await.expect("lookup"),
        None
    );

    let build = spec("0f9c1d5e-0000-4000-8000-000000000500", &id);
    let err = backend.dispatch(&build).await.expect_err("one attempt");
    assert!(matches!(err, BackendError::Transient(_)), "{err:?}");
    assert_eq!(sim.requests(Route::DispatchWorkflow), 1);
    assert_eq!(sim.stats().runs_created, 0, "refused before it took effect");
    let dispatched = backend.dispatch(&build).await.expect("dispatch");
    assert_eq!(sim.requests(Route::DispatchWorkflow), 2);
    let err = backend
        .poll(&build, &dispatched)
        .await
        .expect_err("one attempt");
    assert!(matches!(err, BackendError::Transient(_)), "{err:?}");
    let (state, _) = poll_until_final(&backend, &build, &dispatched, Duration::from_secs(10)).await;
    assert_eq!(state, RunState::Succeeded);
    assert_eq!(sim.stats().runs_created, 1);
}

#[tokio::test]
async fn secondary_rate_limits_are_reported_with_their_wait_and_dispatch_nothing() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    let retry_after = Some(Duration::from_secs(1));
    sim.inject_fault(
        Route::DispatchWorkflow,
        Fault::SecondaryRateLimit {
            status: 403,
            retry_after,
        },
        1,
    );
    sim.inject_fault(
        Route::ReleaseByTag,
        Fault::SecondaryRateLimit {
            status: 429,
            retry_after,
        },
        1,
    );
    let backend = backend_for(&sim, ReleaseLayout::PerArtifact);
    let id = debian(KERNEL);
    let limited = BackendError::RateLimited {
        retry_after: Duration::from_secs(1),
    };
    assert_eq!(
        backend
            .find_artifact(&driver(), &id)
            .await
            .expect_err("limited"),
        limited
    );
    let build = spec("0f9c1d5e-0000-4000-8000-000000000600", &id);
    assert_eq!(
        backend.dispatch(&build).await.expect_err("limited"),
        limited
    );
    assert_eq!(sim.stats().runs_created, 0);

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        backend.find_artifact(&driver(), &id).await.expect("lookup"),
        None
    );
    let dispatched = backend.dispatch(&build).await.expect("dispatch");
    assert!(dispatched.run_id.is_some());
    assert_eq!(sim.stats().runs_created, 1);
    assert_eq!(sim.requests(Route::DispatchWorkflow), 2);
}

#[tokio::test]
async fn long_secondary_limit_is_returned_as_rate_limited() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    let retry_after = Some(Duration::from_secs(90));
    sim.inject_fault(
        Route::DispatchWorkflow,
        Fault::SecondaryRateLimit {
            status: 429,
            retry_after,
        },
        1,
    );
    let backend = backend_for(&sim, ReleaseLayout::PerArtifact);
    let build = spec("0f9c1d5e-0000-4000-8000-000000000601", &debian(KERNEL));
    let err = backend
        .dispatch(&build)
        .await
        .expect_err("too long to wait inline");
    assert_eq!(
        err,
        BackendError::RateLimited {
            retry_after: Duration::from_secs(90)
        }
    );
    assert_eq!(sim.stats().runs_created, 0);
    // The caller retries later: one run.
    let dispatched = backend.dispatch(&build).await.expect("dispatch later");
    assert!(dispatched.run_id.is_some());
    assert_eq!(sim.stats().runs_created, 1);
}

#[tokio::test]
async fn exhausted_primary_limit_reports_the_reset_and_stops_asking() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.reset_rate_limit_in(Duration::from_secs(600));
    sim.set_rate_limit_remaining(0);
    let backend = backend_for(&sim, ReleaseLayout::PerArtifact);
    let id = debian(KERNEL);

    let err = backend
        .find_artifact(&driver(), &id)
        .await
        .expect_err("rate limited");
    let BackendError::RateLimited { retry_after } = err else {
        panic!("expected RateLimited, got {err:?}")
    };
    assert!(
        retry_after > Duration::from_secs(590) && retry_after <= Duration::from_secs(601),
        "{retry_after:?}"
    );

    // Until the reset, the backend answers from what it knows instead of hammering GitHub.
    let asked = sim.stats().requests.values().sum::<u64>();
    let build = spec("0f9c1d5e-0000-4000-8000-000000000700", &id);
    let err = backend.dispatch(&build).await.expect_err("rate limited");
    assert!(
        matches!(err, BackendError::RateLimited { retry_after } if retry_after > Duration::from_secs(590))
    );
    assert!(matches!(
        backend.health().await,
        Err(BackendError::RateLimited { .. })
    ));
    assert_eq!(sim.stats().requests.values().sum::<u64>(), asked);
    assert_eq!(sim.stats().runs_created, 0);
}

#[tokio::test]
async fn a_primary_limit_resetting_soon_is_reported_with_the_wait_until_the_reset() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.reset_rate_limit_in(Duration::from_secs(1));
    sim.set_rate_limit_remaining(0);
    let backend = backend_for(&sim, ReleaseLayout::PerArtifact);
    let err = backend
        .find_artifact(&driver(), &debian(KERNEL))
        .await
        .expect_err("limited");
    let BackendError::RateLimited { retry_after } = err else {
        panic!("expected RateLimited, got {err:?}")
    };
    assert!(retry_after <= Duration::from_secs(3), "{retry_after:?}");
    assert!(sim.stats().rate_limited >= 1);
    tokio::time::sleep(retry_after).await;
    assert_eq!(
        backend
            .find_artifact(&driver(), &debian(KERNEL))
            .await
            .expect("after the reset"),
        None
    );
}

#[tokio::test]
async fn concurrent_lookups_of_one_release_share_one_request() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    let backend = backend_for(&sim, ReleaseLayout::PerArtifact);
    let id = debian(KERNEL);
    let driver = driver();
    let lookups = (0..500).map(|_| backend.find_artifact(&driver, &id));
    for result in futures_util::future::join_all(lookups).await {
        assert_eq!(result.expect("lookup"), None);
    }
    assert_eq!(sim.requests(Route::ReleaseByTag), 1);
}

#[tokio::test]
async fn a_new_backend_instance_finds_the_run_of_a_previous_one() {
    // A service restart (or another replica) between dispatch and recording its answer: the lookup the
    // tracker makes before it would send again finds the existing run.
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.set_run_timing(RunTiming {
        queued: None,
        in_progress: None,
        publish_step: Duration::ZERO,
    });
    let build = spec("0f9c1d5e-0000-4000-8000-000000000800", &debian(KERNEL));
    let first = backend_for(&sim, ReleaseLayout::PerArtifact)
        .dispatch(&build)
        .await
        .expect("dispatch");
    let restarted = backend_for(&sim, ReleaseLayout::PerArtifact);
    let second = restarted
        .find_run(&build, since())
        .await
        .expect("lookup after restart")
        .expect("found");
    assert_eq!(second.run_id, first.run_id);
    assert_eq!(sim.stats().runs_created, 1);
    let run_id: u64 = first
        .run_id
        .as_deref()
        .expect("run")
        .parse()
        .expect("numeric");
    assert_eq!(sim.run(run_id).expect("run").status, RunStatus::Queued);
}

#[tokio::test]
async fn full_per_driver_version_release_is_refused_clearly() {
    let sim = start_sim(ReleaseLayout::PerDriverVersion).await;
    let id = debian(KERNEL);
    let tag = ReleaseLayout::PerDriverVersion.release_tag(&driver(), &id);
    let names: Vec<String> = (0..ReleaseLayout::MAX_ASSETS_PER_RELEASE)
        .map(|n| format!("other-{n}.deb"))
        .collect();
    let files: Vec<(&str, &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), b"x".as_slice()))
        .collect();
    sim.publish_release(&tag, &files)
        .expect("seed a full release");
    let backend = backend_for(&sim, ReleaseLayout::PerDriverVersion);
    let err = backend
        .find_artifact(&driver(), &id)
        .await
        .expect_err("refused");
    let BackendError::Permanent(message) = err else {
        panic!("expected Permanent, got {err:?}")
    };
    assert!(
        message.contains("1000") && message.contains("per-artifact"),
        "{message}"
    );
}

#[tokio::test]
async fn refusals_are_permanent() {
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    // Wrong token: 401 on everything.
    let mut config = config_for(&sim, ReleaseLayout::PerArtifact);
    config.auth = build_service::github::GitHubAuth::Token("wrong".to_owned());
    let backend = build_service::github::GitHubBackend::new(config).expect("backend");
    let build = spec("0f9c1d5e-0000-4000-8000-000000000900", &debian(KERNEL));
    assert!(matches!(
        backend.dispatch(&build).await,
        Err(BackendError::Permanent(_))
    ));
    assert!(matches!(
        backend.health().await,
        Err(BackendError::Permanent(_))
    ));
    // Unknown workflow: 404 on dispatch.
    let mut config = config_for(&sim, ReleaseLayout::PerArtifact);
    config.workflow_file = "missing.yml".to_owned();
    let backend = build_service::github::GitHubBackend::new(config).expect("backend");
    let err = backend.dispatch(&build).await.expect_err("refused");
    assert!(
        matches!(&err, BackendError::Permanent(m) if m.contains("404")),
        "{err:?}"
    );
    // Another driver than the repository builds.
    let backend = backend_for(&sim, ReleaseLayout::PerArtifact);
    let other = kernel_id::DriverName::parse("other-driver").expect("valid");
    let err = backend
        .find_artifact(&other, &debian(KERNEL))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, BackendError::Permanent(m) if m.contains("driver_name")),
        "{err:?}"
    );
    assert_eq!(sim.stats().runs_created, 0);
    backend
        .health()
        .await
        .expect("healthy with the right token");
}

#[tokio::test]
async fn run_lookup_pages_through_many_newer_runs() {
    // The run of this build id is older than 150 others, so it sits on the second page of the
    // newest-first listing: a restarted backend must page to find it (else the build would be
    // dispatched again).
    let sim = start_sim(ReleaseLayout::PerArtifact).await;
    sim.set_run_timing(RunTiming {
        queued: None,
        in_progress: None,
        publish_step: Duration::ZERO,
    });
    let build = spec("0f9c1d5e-0000-4000-8000-00000000b000", &debian(KERNEL));
    let first = backend_for(&sim, ReleaseLayout::PerArtifact)
        .dispatch(&build)
        .await
        .expect("dispatch");

    let client = reqwest::Client::new();
    let url = format!(
        "{}/repos/{}/{}/actions/workflows/driver-build.yml/dispatches",
        sim.base_url(),
        sim.owner(),
        sim.repo()
    );
    for n in 0..150 {
        let body = serde_json::json!({
            "ref": "main",
            "inputs": {
                "kernel_version": KERNEL, "architecture": "x86_64", "distribution": "debian",
                "distro_version": "12", "driver_version": "v0.5.16",
                "build_id": format!("0f9c1d5e-0000-4000-8000-00000000{:04}", 5000 + n),
                "source_commit": COMMIT,
            },
        });
        let response = client
            .post(&url)
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("decoy dispatch");
        assert_eq!(response.status().as_u16(), 204, "decoy {n}");
    }
    let before = sim.stats();
    let restarted = backend_for(&sim, ReleaseLayout::PerArtifact);
    let again = restarted
        .find_run(&build, since())
        .await
        .expect("lookup after restart")
        .expect("found");
    assert_eq!(again.run_id, first.run_id);
    let after = sim.stats();
    assert_eq!(after.runs_created, before.runs_created, "no second run");
    assert_eq!(
        after.requests_to(Route::ListWorkflowRuns) - before.requests_to(Route::ListWorkflowRuns),
        2,
        "two pages"
    );
}
