//! Thundering herd: three nodes boot at the same moment on a kernel the service has never built
//! for. All three miss and ask for a build while it runs; the service turns that into exactly one
//! build (/metrics), and all three load the driver it produced.
//!
//! One build proves deduplication only if several nodes asked while it was in flight: a node that
//! arrives after the package is published is served by the store with no deduplication at all. So
//! the test also holds the service to its own account of every `POST /build` (its JSON log, checked
//! against /metrics): one answer per node, each a 202 naming the one build (202 means the service
//! looked and found nothing published), each sent between the build's reservation and its end; and
//! each node's loader says it waited for that build.
//!
//! All three asking is required, not hoped for: `run_together` boots the three VMs in the same
//! instant and holds each at a start gate after its boot until the last is up, so the three loaders
//! start together and their requests arrive within a fraction of a second, whatever the spread of
//! the boots under TCG. The build cannot finish in that time: it unpacks a fresh root, installs the
//! kernel's headers and runs kbuild, seconds even with every cache warm. A node outside that
//! window means the harness no longer makes a herd, which this test must report rather than pass
//! over. The printed spread of the requests against the build's length shows the margin.

use fleet::{Fleet, NodeSpec};

const RELEASE: &str = "6.1.0-47-amd64";

#[test]
fn three_nodes_booting_together_cause_exactly_one_build() {
    let fleet = Fleet::start("herd").expect("fleet service");
    let nodes: Vec<_> = (1..=3)
        .map(|n| {
            fleet
                .prepare(&NodeSpec::debian(&format!("herd-{n}"), RELEASE, "12").expect("spec"))
                .expect("prepare node")
        })
        .collect();
    let outcomes = fleet.run_together(&nodes).expect("boot nodes");
    let summary: Vec<String> = outcomes.iter().map(|o| o.describe()).collect();
    let context = fleet.failure_context(&summary.join("\n"));
    for outcome in &outcomes {
        assert!(outcome.loaded(), "{context}\n{}", outcome.console);
        assert!(
            outcome
                .driver_line
                .as_deref()
                .is_some_and(|line| line.contains(&format!("built_for={RELEASE}"))),
            "{context}"
        );
    }

    let metrics = fleet.service.metrics().expect("metrics");
    let counters = metrics.build_counters();
    assert_eq!(
        counters.dispatches_ok, 1.0,
        "exactly one build dispatched: {context}"
    );
    assert_eq!(
        counters.builds_finished, 1.0,
        "exactly one build run: {context}"
    );
    assert_eq!(counters.builds_done, 1.0, "{context}");
    let build_ids = fleet.service.build_ids();
    assert_eq!(build_ids.len(), 1, "{context}");
    let build_id = build_ids[0].as_str();
    let times = fleet.service.build_times(build_id).expect("build status");
    let finished = times
        .finished_at
        .unwrap_or_else(|| panic!("build {build_id} never ended: {context}"));

    // The service's account: who asked, when, and what they were told.
    let requests = fleet.service.build_answers().expect("service log");
    let listed: Vec<String> = requests
        .iter()
        .map(|r| format!("{} -> {} {:?}", r.answered_at, r.status, r.build_id))
        .collect();
    let requests_context = format!(
        "build {build_id} reserved {} ended {finished}; POST /build answers:\n{}\n{context}",
        times.created_at,
        listed.join("\n")
    );
    assert_eq!(
        metrics.sum("build_requests_total", &[]),
        requests.len() as f64,
        "the log must account for every request /metrics counted: {requests_context}"
    );
    // More answers than nodes only if a loader resent its POST after a transport error.
    assert!(
        requests.len() >= nodes.len(),
        "every node must have asked for a build, got {} requests: {requests_context}",
        requests.len()
    );
    for request in &requests {
        assert_eq!(
            request.status, 202,
            "every request must find nothing published and get a build to wait for: {requests_context}"
        );
        assert_eq!(
            request.build_id.as_deref(),
            Some(build_id),
            "every request must be joined to the one build: {requests_context}"
        );
        assert!(
            times.created_at <= request.answered_at && request.answered_at < finished,
            "every request must be answered while the build is in flight: {requests_context}"
        );
    }
    for outcome in &outcomes {
        assert!(
            outcome.console.contains("build requested; waiting for it")
                && outcome.console.contains(build_id),
            "node {} must have waited for build {build_id}: {requests_context}\n{}",
            outcome.name,
            outcome.console
        );
    }

    let first = requests.iter().map(|r| r.answered_at).min();
    let last = requests.iter().map(|r| r.answered_at).max();
    let spread = first
        .zip(last)
        .map_or(0.0, |(first, last)| (last - first).as_seconds_f64());
    eprintln!(
        "fleet herd: {} nodes asked for a build within {spread:.1}s, {} joined build {build_id} \
         in flight ({:.1}s from reservation to end); time to driver live {:?} (logs {})",
        outcomes.len(),
        requests.len() - 1,
        (finished - times.created_at).as_seconds_f64(),
        outcomes
            .iter()
            .map(|o| format!(
                "{:.1}s",
                o.time_to_driver_live.unwrap_or_default().as_secs_f64()
            ))
            .collect::<Vec<_>>(),
        fleet.dir().display()
    );
    fleet.tidy();
}
