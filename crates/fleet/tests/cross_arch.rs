//! Architectures never cross. The service builds the sample driver for Debian 12's amd64 and arm64
//! kernels (6.1.0-47-amd64 in an amd64 root, 6.1.0-47-arm64 in an arm64 root), then:
//!
//! - the store keeps them apart: each package's `Architecture:` and module ELF machine are its
//!   identity's, and neither release can even be named with the other architecture (kernel-id,
//!   which the service and the loader both go through, refuses the identity);
//! - the store is made to serve each package under the other architecture's name, correctly
//!   signed by the run's key for that name (a publisher mix-up the signature cannot catch): an
//!   arm64 node and an amd64 node, booted together, both refuse what they got because the module
//!   was compiled for the other machine, and the kernel never sees it.

use std::time::Duration;

use fleet::{Fleet, ModuleState, NodeOutcome, NodeSpec};
use kernel_id::{Arch, KernelIdentity};

const AMD64_RELEASE: &str = "6.1.0-47-amd64";
const ARM64_RELEASE: &str = "6.1.0-47-arm64";

/// `identity` with only the architecture changed.
fn on_other_arch(
    identity: &KernelIdentity,
    arch: Arch,
) -> Result<KernelIdentity, kernel_id::IdError> {
    KernelIdentity::new(
        identity.kernel_release().clone(),
        arch,
        identity.distro_version().clone(),
        identity.driver_version().clone(),
    )
}

fn assert_refused_as_foreign(fleet: &Fleet, outcome: &NodeOutcome, built_for: Arch, node: Arch) {
    let context = fleet.failure_context(&outcome.describe());
    assert_eq!(
        outcome.loader_exit,
        Some(7),
        "incompatible package: {context}\n{}",
        outcome.console
    );
    assert_eq!(outcome.result.as_deref(), Some("refused"), "{context}");
    assert_eq!(
        outcome.module_state,
        Some(ModuleState::Absent),
        "the node's init must report the module absent, not merely fail to report it: {context}"
    );
    let reason = format!("was compiled for {built_for} but this machine is {node}");
    assert!(
        outcome.console.contains(&reason),
        "expected '{reason}' on the console: {context}\n{}",
        outcome.console
    );
    assert!(
        !outcome.console.contains("example_driver: loaded version="),
        "the kernel must never run the other architecture's module: {context}"
    );
    assert!(
        !outcome.console.contains("Invalid ELF header"),
        "the loader, not the kernel, must refuse it: {context}"
    );
}

#[test]
fn an_artifact_is_never_offered_to_or_accepted_by_the_other_architecture() {
    let fleet = Fleet::start("cross-arch").expect("fleet service");
    let driver = fleet.settings.driver.clone();
    let version = fleet.settings.driver_version.clone();
    let amd64_spec = NodeSpec::debian("amd64-gets-arm64", AMD64_RELEASE, "12").expect("spec");
    let arm64_spec =
        NodeSpec::debian_on(Arch::Aarch64, "arm64-gets-amd64", ARM64_RELEASE, "12").expect("spec");
    let amd64 = amd64_spec.identity(&version).expect("identity");
    let arm64 = arm64_spec.identity(&version).expect("identity");

    // Both builds at once: the service runs up to two in parallel.
    let timeout = Duration::from_secs(20 * 60);
    let (amd64_package, arm64_package) = std::thread::scope(|scope| {
        let amd = scope.spawn(|| fleet.service.build_and_wait(&driver, &amd64, timeout));
        let arm = scope.spawn(|| fleet.service.build_and_wait(&driver, &arm64, timeout));
        let joined = |handle: std::thread::ScopedJoinHandle<'_, anyhow::Result<_>>| {
            handle
                .join()
                .expect("build thread")
                .unwrap_or_else(|error| panic!("{}", fleet.failure_context(&format!("{error:#}"))))
        };
        (joined(amd), joined(arm))
    });
    assert_ne!(amd64.cache_key(), arm64.cache_key());

    // The store keeps them apart.
    for (identity, package, debian_arch) in [
        (&amd64, &amd64_package, "amd64"),
        (&arm64, &arm64_package, "arm64"),
    ] {
        let scratch = fleet.dir().join(format!("inspect-{debian_arch}"));
        let facts = fleet::package_arch(package, &scratch).expect("dpkg-deb");
        assert_eq!(facts.control, debian_arch, "{}", package.display());
        assert_eq!(
            facts.module_machines,
            vec![identity.arch().elf_machine()],
            "{}",
            package.display()
        );
        assert_eq!(
            fleet
                .service
                .package_download_status(&driver, identity)
                .expect("GET"),
            200
        );
        let other_arch = if identity.arch() == Arch::X86_64 {
            Arch::Aarch64
        } else {
            Arch::X86_64
        };
        let refusal = on_other_arch(identity, other_arch)
            .expect_err("a Debian release names its architecture; it cannot be asked for another");
        assert_eq!(refusal.field(), kernel_id::Field::Architecture, "{refusal}");
    }

    // Each package served under the other architecture's name, validly signed for that name.
    let amd64_bytes = std::fs::read(&amd64_package).expect("amd64 package");
    let arm64_bytes = std::fs::read(&arm64_package).expect("arm64 package");
    for (target, bytes, identity) in [
        (&arm64_package, &amd64_bytes, &arm64),
        (&amd64_package, &arm64_bytes, &amd64),
    ] {
        fleet::overwrite_published(target, bytes).expect("swap the package");
        fleet
            .service
            .key()
            .sign(target, &identity.package_file_name(&driver))
            .and_then(|()| fleet.service.key().attest_current_bytes(target))
            .expect("sign");
    }
    let nodes = [
        fleet.prepare(&arm64_spec).expect("prepare arm64 node"),
        fleet.prepare(&amd64_spec).expect("prepare amd64 node"),
    ];
    let outcomes = fleet.run_together(&nodes).expect("boot both nodes");
    assert_refused_as_foreign(&fleet, &outcomes[0], Arch::X86_64, Arch::Aarch64);
    assert_refused_as_foreign(&fleet, &outcomes[1], Arch::Aarch64, Arch::X86_64);
    fleet.tidy();
}
