//! Warm: after a first node on 6.1.0-47-amd64 got its driver built, a second node on the same
//! kernel finds the artifact published and loads it at once; the service's /metrics prove that no
//! second build was dispatched or run.

use fleet::{Fleet, NodeSpec};

const RELEASE: &str = "6.1.0-47-amd64";

#[test]
fn warm_node_loads_the_prebuilt_driver_without_a_new_build() {
    let fleet = Fleet::start("warm").expect("fleet service");
    let first = fleet
        .prepare(&NodeSpec::debian("first", RELEASE, "12").expect("spec"))
        .expect("prepare first node");
    let first = fleet.run_node(&first).expect("boot first node");
    assert!(
        first.loaded(),
        "{}",
        fleet.failure_context(&first.describe())
    );
    let after_first = fleet.service.metrics().expect("metrics").build_counters();
    assert_eq!(
        after_first.dispatches_ok,
        1.0,
        "{}",
        fleet.failure_context("the first node needs exactly one build")
    );

    let second = fleet
        .prepare(&NodeSpec::debian("warm", RELEASE, "12").expect("spec"))
        .expect("prepare warm node");
    let second = fleet.run_node(&second).expect("boot warm node");
    let context = fleet.failure_context(&second.describe());
    assert!(second.loaded(), "{context}\n{}", second.console);
    assert!(
        second
            .driver_line
            .as_deref()
            .is_some_and(|line| line.contains(&format!("built_for={RELEASE} running={RELEASE}"))),
        "{context}"
    );
    assert!(
        !second.console.contains("requesting a build"),
        "the warm node must not ask for a build: {context}"
    );
    assert!(
        second
            .console
            .contains("package verified: digest, signature and provenance"),
        "the warm node verifies the published provenance too: {context}\n{}",
        second.console
    );
    let after_second = fleet.service.metrics().expect("metrics").build_counters();
    assert_eq!(
        after_second.dispatches_ok, after_first.dispatches_ok,
        "{context}"
    );
    assert_eq!(
        after_second.builds_finished, after_first.builds_finished,
        "{context}"
    );
    assert_eq!(fleet.service.build_ids().len(), 1, "{context}");

    eprintln!(
        "fleet warm: {RELEASE}: time to driver live cold {:.1}s, warm {:.1}s (logs {})",
        first.time_to_driver_live.unwrap_or_default().as_secs_f64(),
        second.time_to_driver_live.unwrap_or_default().as_secs_f64(),
        fleet.dir().display()
    );
    fleet.tidy();
}
