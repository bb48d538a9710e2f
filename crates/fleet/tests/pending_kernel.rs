//! Pending kernel: a node running Debian 12's 6.1.0-47-amd64 has a newer real kernel,
//! 6.1.0-50-amd64, installed but not booted (its modules tree and `/boot/vmlinuz-*` present, as
//! unattended-upgrades leaves it). Its loader run loads the driver for the running kernel, then
//! `driver-loader prefetch` gets, verifies and caches the driver for the installed one on the
//! node's cache disk. The same machine then boots 6.1.0-50-amd64 with no network device at all
//! and the cache disk kept: the driver is live from the verified cache, and the service's request
//! log proves nothing reached any server after the prefetch.

use std::time::Instant;

use fleet::node::{NodeOptions, make_cache_disk};
use fleet::{Fleet, NodeSpec};
use testkit::KernelImage;

const RUNNING: &str = "6.1.0-47-amd64";
const INSTALLED: &str = "6.1.0-50-amd64";
const MACHINE_ID: &str = "6b0f4a54c1b24b7e9f3e0d6a2c1e8f70";

#[test]
fn a_prefetched_kernel_boots_offline_with_its_driver_live() {
    let fleet = Fleet::start("pending-kernel").expect("fleet service");
    let installed = KernelImage::fetch(INSTALLED, kernel_id::Arch::X86_64).expect("newer kernel");
    let disk = fleet.dir().join("nodes/cache-disk.img");
    make_cache_disk(&disk, 256).expect("cache disk");

    let before_reboot = NodeOptions {
        cache_disk: Some(disk.clone()),
        installed_kernels: vec![installed],
        prefetch_after_run: true,
        machine_id: Some(MACHINE_ID.to_owned()),
        ..NodeOptions::default()
    };
    let first = fleet
        .prepare_with_options(
            &NodeSpec::debian("pending", RUNNING, "12").expect("spec"),
            &fleet.settings,
            &before_reboot,
        )
        .expect("prepare the node on the running kernel");
    let started = Instant::now();
    let first = fleet.run_node(&first).expect("boot the node");
    let first_run = started.elapsed();
    let context = fleet.failure_context(&first.describe());
    assert!(first.loaded(), "{context}\n{}", first.console);
    assert_eq!(
        first.prefetch_exit,
        Some(0),
        "prefetch must succeed: {context}"
    );
    assert!(
        first.console.contains(&format!("prefetched {INSTALLED}")),
        "the loader names the kernel it prefetched: {context}"
    );
    let builds = fleet.service.build_ids();
    assert_eq!(
        builds.len(),
        2,
        "one build for the running kernel, one for the installed one: {context}"
    );
    let served_before = fleet.service.requests_served().expect("service log");

    let after_reboot = NodeOptions {
        cache_disk: Some(disk),
        offline: true,
        machine_id: Some(MACHINE_ID.to_owned()),
        ..NodeOptions::default()
    };
    let second = fleet
        .prepare_with_options(
            &NodeSpec::debian("pending-rebooted", INSTALLED, "12").expect("spec"),
            &fleet.settings,
            &after_reboot,
        )
        .expect("prepare the node on the installed kernel");
    let second = fleet
        .run_node(&second)
        .expect("boot the node on the new kernel");
    let context = fleet.failure_context(&second.describe());
    assert!(second.loaded(), "{context}\n{}", second.console);
    assert!(
        second.driver_line.as_deref().is_some_and(
            |line| line.contains(&format!("built_for={INSTALLED} running={INSTALLED}"))
        ),
        "{context}"
    );
    assert!(
        second
            .console
            .contains("using the cached package, verified again"),
        "the rebooted node loads from its verified cache: {context}\n{}",
        second.console
    );
    assert!(!second.console.contains("requesting a build"), "{context}");
    let served_after = fleet.service.requests_served().expect("service log");
    assert_eq!(
        served_after.len(),
        served_before.len(),
        "no request may reach the service after the reboot: new requests {:?}; {context}",
        &served_after[served_before.len()..]
    );
    assert_eq!(fleet.service.build_ids().len(), 2, "{context}");

    eprintln!(
        "fleet pending_kernel: first boot on {RUNNING} (cold build + prefetch of {INSTALLED}) \
         {:.1}s; reboot into {INSTALLED}, offline: driver live after {:.1}s, first-boot wait 0 s \
         (no build, no network) (logs {})",
        first_run.as_secs_f64(),
        second.time_to_driver_live.unwrap_or_default().as_secs_f64(),
        fleet.dir().display()
    );
    fleet.tidy();
}
