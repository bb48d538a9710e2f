//! Refusals: the artifact store is made to serve, under the name of 6.1.0-47-amd64's package,
//! first a tampered copy of the real package (its digest file updated to match, so only the
//! signature catches it) and then the real package built for 6.1.0-50-amd64, correctly signed by
//! the run's key for that name. A node on 6.1.0-47 refuses both before the kernel sees them: no
//! driver line, its init reporting the module absent (a console that never says so proves
//! nothing and fails), and the loader's reason on the console.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet::{Fleet, ModuleState, NodeOutcome, NodeSpec};
use kernel_id::KernelIdentity;

const RELEASE: &str = "6.1.0-47-amd64";
const OTHER_RELEASE: &str = "6.1.0-50-amd64";

fn built(fleet: &Fleet, identity: &KernelIdentity) -> PathBuf {
    fleet
        .service
        .build_and_wait(
            &fleet.settings.driver,
            identity,
            Duration::from_secs(20 * 60),
        )
        .unwrap_or_else(|error| panic!("{}", fleet.failure_context(&format!("{error:#}"))))
}

fn publish(target: &Path, bytes: &[u8]) {
    fleet::overwrite_published(target, bytes).expect("overwrite the published package");
}

fn assert_refused(fleet: &Fleet, outcome: &NodeOutcome, code: i32, reason: &str) {
    let context = fleet.failure_context(&outcome.describe());
    assert_eq!(
        outcome.loader_exit,
        Some(code),
        "{context}\n{}",
        outcome.console
    );
    assert_eq!(outcome.result.as_deref(), Some("refused"), "{context}");
    assert_eq!(
        outcome.module_state,
        Some(ModuleState::Absent),
        "the node's init must report the module absent, not merely fail to report it: {context}"
    );
    assert!(
        !outcome.console.contains("example_driver: loaded version="),
        "the kernel must never run a refused module: {context}"
    );
    assert!(
        outcome.console.contains(reason),
        "expected '{reason}' on the console: {context}\n{}",
        outcome.console
    );
}

#[test]
fn tampered_and_foreign_artifacts_are_refused_before_the_kernel_sees_them() {
    let fleet = Fleet::start("refusals").expect("fleet service");
    let version = fleet.settings.driver_version.clone();
    let spec = NodeSpec::debian("refusal", RELEASE, "12").expect("spec");
    let identity = spec.identity(&version).expect("identity");
    let other = NodeSpec::debian("other", OTHER_RELEASE, "12")
        .expect("spec")
        .identity(&version)
        .expect("identity");
    let genuine_path = built(&fleet, &identity);
    let other_path = built(&fleet, &other);
    let genuine = std::fs::read(&genuine_path).expect("genuine package");
    let foreign = std::fs::read(&other_path).expect("package of the other release");

    // Tampered: one byte changed, digest recomputed; the signature is the service's original.
    let mut tampered = genuine.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    publish(&genuine_path, &tampered);
    let node = fleet
        .prepare(&NodeSpec {
            name: "tampered".into(),
            ..spec.clone()
        })
        .expect("prepare");
    let outcome = fleet.run_node(&node).expect("boot");
    assert_refused(&fleet, &outcome, 6, "signature");

    // Foreign: the 6.1.0-50 package, validly signed by the run's key under 6.1.0-47's name.
    publish(&genuine_path, &foreign);
    let file_name = identity.package_file_name(&fleet.settings.driver);
    fleet
        .service
        .key()
        .sign(&genuine_path, &file_name)
        .expect("sign");
    let node = fleet
        .prepare(&NodeSpec {
            name: "foreign".into(),
            ..spec.clone()
        })
        .expect("prepare");
    let outcome = fleet.run_node(&node).expect("boot");
    assert_refused(&fleet, &outcome, 7, OTHER_RELEASE);
    assert!(
        !outcome
            .console
            .contains(&format!("built_for={OTHER_RELEASE}")),
        "{}",
        fleet.failure_context("the foreign module must never run")
    );
    fleet.tidy();
}
