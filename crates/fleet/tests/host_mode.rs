//! Host mode: a node boots a real Debian 12 root (mmdebstrap, systemd as PID 1) from a virtio disk
//! on 6.1.0-47-amd64. The project's `deploy/systemd/driver-loader.service`, configured through
//! `/etc/default/driver-loader`, runs the loader in host mode after network-online.target: the
//! artifact is missing, built on demand, then installed with dpkg and loaded with modprobe.

use fleet::{COLD_NODE_TIMEOUT, Fleet, NodeSpec};

const RELEASE: &str = "6.1.0-47-amd64";

#[test]
fn systemd_unit_installs_and_modprobes_the_driver_built_on_demand() {
    let fleet = Fleet::start("host-mode").expect("fleet service");
    let spec = NodeSpec::debian("host", RELEASE, "12").expect("spec");
    let (node, disk) = fleet::host::prepare(
        &spec,
        &fleet.service,
        &fleet.settings,
        &fleet.dir().join("nodes"),
    )
    .expect("prepare host-mode node");
    let outcome = fleet::host::run(&node, &disk, COLD_NODE_TIMEOUT).expect("boot host-mode node");
    let context = fleet.failure_context(&outcome.describe());
    assert!(outcome.loaded(), "{context}\n{}", outcome.console);
    assert!(
        outcome.console.contains("FLEET-DPKG ") && outcome.console.contains("install ok installed"),
        "the package must be installed with dpkg: {context}"
    );
    let counters = fleet.service.metrics().expect("metrics").build_counters();
    assert_eq!(counters.dispatches_ok, 1.0, "{context}");
    eprintln!(
        "fleet host mode: {RELEASE}: time to driver live {:.1}s (logs {})",
        outcome
            .time_to_driver_live
            .unwrap_or_default()
            .as_secs_f64(),
        fleet.dir().display()
    );
    fleet.tidy();
}
