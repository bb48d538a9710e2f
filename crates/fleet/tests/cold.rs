//! Cold: one node boots Debian 12's 6.1.0-47-amd64, a kernel this service has never built for. The
//! loader's download is a 404, it asks the service for a build, the service builds the sample
//! driver in a clean bookworm root at the commit its version's tag names, signs it and its
//! provenance and publishes them, and the node downloads, verifies (digest, signature,
//! provenance) and loads it: the kernel itself prints the driver's line naming that release.

use build_api::BuildState;
use fleet::{Fleet, NodeSpec};

const RELEASE: &str = "6.1.0-47-amd64";

#[test]
fn cold_node_gets_its_driver_built_on_demand_and_loads_it() {
    let fleet = Fleet::start("cold").expect("fleet service");
    let before = fleet.service.metrics().expect("metrics").build_counters();
    assert_eq!(
        before.dispatches_ok, 0.0,
        "a fresh service has built nothing"
    );

    let spec = NodeSpec::debian("cold", RELEASE, "12").expect("node spec");
    let node = fleet.prepare(&spec).expect("prepare node");
    let outcome = fleet.run_node(&node).expect("boot node");
    let context = fleet.failure_context(&outcome.describe());

    assert!(outcome.loaded(), "{context}\n{}", outcome.console);
    let line = outcome.driver_line.as_deref().unwrap_or_default();
    assert!(
        line.contains(&format!("built_for={RELEASE} running={RELEASE}")),
        "{context}"
    );
    // The loader went through the miss: it asked for a build and waited for it.
    assert!(
        outcome.console.contains("404") || outcome.console.contains("build"),
        "the console should show the loader's miss and build request: {context}"
    );

    // Exactly one build, done, for this identity in a root of the kernel's own distro version.
    let after = fleet.service.metrics().expect("metrics").build_counters();
    assert_eq!(after.dispatches_ok, 1.0, "{context}");
    assert_eq!(after.builds_done, 1.0, "{context}");
    let ids = fleet.service.build_ids();
    assert_eq!(ids.len(), 1, "{context}");
    let status = fleet.service.status(&ids[0]).expect("status");
    assert_eq!(status.status, BuildState::Done, "{status:?}\n{context}");
    assert_eq!(status.request.kernel_version, RELEASE, "{context}");
    // The node verified the build's provenance before loading: the commit the driver version's
    // tag names, as the service recorded it, is what the loader's verification reports.
    let commit = status
        .source_commit
        .clone()
        .unwrap_or_else(|| panic!("the build records no source commit: {context}"));
    assert!(
        outcome
            .console
            .contains("package verified: digest, signature and provenance")
            && outcome.console.contains(&commit),
        "the loader must report the verified provenance with commit {commit}: {context}\n{}",
        outcome.console
    );
    assert_eq!(
        status.request.distro_version.as_deref(),
        Some("12"),
        "{context}"
    );
    let log = std::fs::read_to_string(fleet.service.builds_dir().join(&ids[0]).join("build.log"))
        .unwrap_or_default();
    assert!(
        log.contains("debian-12-x86_64"),
        "the build log must show a debian 12 (bookworm) root: {context}\n{log}"
    );

    let build_time = fleet.service.build_duration(&ids[0]).expect("build time");
    eprintln!(
        "fleet cold: {RELEASE}: build {:.1}s, time to driver live {:.1}s (logs {})",
        build_time.as_secs_f64(),
        outcome
            .time_to_driver_live
            .unwrap_or_default()
            .as_secs_f64(),
        fleet.dir().display()
    );
    fleet.tidy();
}
