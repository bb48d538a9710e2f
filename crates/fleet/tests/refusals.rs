//! Refusals: the artifact store is made to serve, under the name of 6.1.0-47-amd64's package,
//! first a tampered copy of the real package (its digest file updated to match, so only the
//! signature catches it), then the real package built for 6.1.0-50-amd64, correctly signed by the
//! run's key for that name but beside the genuine build's provenance (refused by the provenance:
//! another build), and then the same package with provenance forged by a holder of the signing key
//! (refused by the vermagic: the checks behind provenance still hold). Finally a node asks for a
//! driver version that is not a tag of the driver repository (a squatted version): the service
//! refuses it and never builds, and the loader exits 5 naming `driver_version`. Each node refuses
//! before the kernel sees anything: no driver line, its init reporting the module absent (a
//! console that never says so proves nothing and fails), and the loader's reason on the console.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet::{Fleet, LoaderSettings, ModuleState, NodeOutcome, NodeSpec};
use kernel_id::DriverVersion;
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
            name: "unproven".into(),
            ..spec.clone()
        })
        .expect("prepare");
    let outcome = fleet.run_node(&node).expect("boot");
    assert_refused(&fleet, &outcome, 10, "subject.digest.sha256");

    // The same package with provenance forged by the key's holder: the vermagic still refuses.
    fleet
        .service
        .key()
        .attest_current_bytes(&genuine_path)
        .expect("forge the provenance");
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

    // A squatted version: not a tag of the driver repository. Nothing is built for it.
    let builds_before = build_count(&fleet);
    let squatted = LoaderSettings {
        driver_version: DriverVersion::parse("v9.9.9").expect("version"),
        ..fleet.settings.clone()
    };
    let node = fleet
        .prepare_with(
            &NodeSpec {
                name: "squatted".into(),
                ..spec.clone()
            },
            &squatted,
        )
        .expect("prepare");
    let outcome = fleet.run_node(&node).expect("boot");
    assert_refused(
        &fleet,
        &outcome,
        5,
        "(HTTP 422): driver_version: must be a tag of",
    );
    assert_eq!(
        build_count(&fleet),
        builds_before,
        "{}",
        fleet.failure_context("a version that is not a tag must never be built")
    );
    let answers = fleet.service.build_answers().expect("service log");
    assert!(
        answers.iter().any(|answer| answer.status == 422),
        "{}",
        fleet.failure_context("the service must have refused the squatted version with 422")
    );
    fleet.tidy();
}

/// Build directories the service made (one per build it ever started).
fn build_count(fleet: &Fleet) -> usize {
    std::fs::read_dir(fleet.service.builds_dir())
        .map(|entries| entries.count())
        .unwrap_or(0)
}
