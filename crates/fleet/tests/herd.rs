//! Thundering herd: three nodes boot at the same moment on a kernel the service has never built
//! for. All three miss and ask for a build; the service turns that into exactly one build
//! (/metrics), and all three load the driver it produced.

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
    let requested = outcomes
        .iter()
        .filter(|o| o.console.contains("requesting a build"))
        .count();
    let counters = fleet.service.metrics().expect("metrics").build_counters();
    assert_eq!(
        counters.dispatches_ok, 1.0,
        "exactly one build dispatched: {context}"
    );
    assert_eq!(
        counters.builds_finished, 1.0,
        "exactly one build run: {context}"
    );
    assert_eq!(counters.builds_done, 1.0, "{context}");
    assert_eq!(fleet.service.build_ids().len(), 1, "{context}");
    eprintln!(
        "fleet herd: {requested} of 3 nodes asked for a build, 1 build ran; time to driver live {:?} (logs {})",
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
