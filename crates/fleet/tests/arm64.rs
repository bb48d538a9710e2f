//! arm64, cold then warm: a node boots Debian 12's real arm64 kernel (6.1.0-47-arm64) under
//! qemu-system-aarch64 (`virt` machine, virtio-net). Nobody built for it: the loader's download is a
//! 404, the service builds the sample driver in a clean bookworm arm64 root (the aarch64
//! driver-builder and the arm64 toolchain run under qemu user-mode emulation when the host is
//! x86_64) and the node loads it — the arm64 kernel prints the driver's line. A second arm64 node on
//! the same kernel gets the published package with no new build.

use fleet::{Fleet, NodeSpec};
use kernel_id::Arch;

const RELEASE: &str = "6.1.0-47-arm64";

#[test]
fn arm64_node_gets_its_driver_built_in_an_arm64_root_and_the_next_one_gets_it_prebuilt() {
    let fleet = Fleet::start("arm64").expect("fleet service");
    let spec = NodeSpec::debian_on(Arch::Aarch64, "arm64-cold", RELEASE, "12").expect("spec");
    let node = fleet.prepare(&spec).expect("prepare arm64 node");
    let cold = fleet.run_node(&node).expect("boot arm64 node");
    let context = fleet.failure_context(&cold.describe());
    assert!(cold.loaded(), "{context}\n{}", cold.console);
    assert!(
        cold.driver_line
            .as_deref()
            .is_some_and(|line| line.contains(&format!("built_for={RELEASE} running={RELEASE}"))),
        "{context}"
    );
    assert!(
        cold.console.contains("aarch64"),
        "the node must be an aarch64 machine: {context}"
    );

    // One build, in an arm64 root of the kernel's own distro version.
    let after_cold = fleet.service.metrics().expect("metrics").build_counters();
    assert_eq!(after_cold.dispatches_ok, 1.0, "{context}");
    assert_eq!(after_cold.builds_done, 1.0, "{context}");
    let ids = fleet.service.build_ids();
    assert_eq!(ids.len(), 1, "{context}");
    let status = fleet.service.status(&ids[0]).expect("status");
    assert_eq!(status.request.architecture, "aarch64", "{context}");
    let log = std::fs::read_to_string(fleet.service.builds_dir().join(&ids[0]).join("build.log"))
        .unwrap_or_default();
    assert!(
        log.contains("debian-12-aarch64"),
        "the build log must show a debian 12 arm64 root: {context}\n{log}"
    );

    // The published package is an arm64 .deb, named by kernel-id, holding an aarch64 module.
    let identity = spec
        .identity(&fleet.settings.driver_version)
        .expect("identity");
    let package = fleet
        .service
        .published_package(&fleet.settings.driver, &identity);
    assert!(
        package.to_string_lossy().ends_with("_arm64.deb"),
        "{}",
        package.display()
    );
    let facts =
        fleet::package_arch(&package, &fleet.dir().join("inspect-arm64")).expect("dpkg-deb");
    assert_eq!(facts.control, "arm64", "{context}");
    assert_eq!(
        facts.module_machines,
        vec![Arch::Aarch64.elf_machine()],
        "{context}"
    );

    // Warm: the second arm64 node loads the published package; nothing is built again.
    let warm = fleet
        .prepare(&NodeSpec::debian_on(Arch::Aarch64, "arm64-warm", RELEASE, "12").expect("spec"))
        .expect("prepare warm arm64 node");
    let warm = fleet.run_node(&warm).expect("boot warm arm64 node");
    let context = fleet.failure_context(&warm.describe());
    assert!(warm.loaded(), "{context}\n{}", warm.console);
    assert!(
        !warm.console.contains("requesting a build"),
        "the warm node must not ask for a build: {context}"
    );
    let after_warm = fleet.service.metrics().expect("metrics").build_counters();
    assert_eq!(
        after_warm.dispatches_ok, after_cold.dispatches_ok,
        "{context}"
    );
    assert_eq!(
        after_warm.builds_finished, after_cold.builds_finished,
        "{context}"
    );
    assert_eq!(fleet.service.build_ids().len(), 1, "{context}");

    let build_time = fleet.service.build_duration(&ids[0]).expect("build time");
    eprintln!(
        "fleet arm64: {RELEASE}: build {:.1}s, time to driver live cold {:.1}s, warm {:.1}s (logs {})",
        build_time.as_secs_f64(),
        cold.time_to_driver_live.unwrap_or_default().as_secs_f64(),
        warm.time_to_driver_live.unwrap_or_default().as_secs_f64(),
        fleet.dir().display()
    );
    fleet.tidy();
}
