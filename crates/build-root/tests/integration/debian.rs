//! The sample driver built for real Debian kernels in roots of their own suites.

use crate::helpers::{self, DRIVER_VERSION};

/// A bookworm kernel in the main suite (the project's reference kernel).
const BOOKWORM_RELEASE: &str = "6.1.0-47-amd64";
/// A trixie kernel in trixie main and trixie-security as of 2026-11-22 (`apt-cache policy
/// linux-headers-6.12.107+deb13-amd64` against trixie sources); move it to a newer one when a point
/// release drops it from the archive.
const TRIXIE_RELEASE: &str = "6.12.107+deb13-amd64";

fn builds_and_reports_vermagic(release: &str, distro_version: &str) {
    let identity = helpers::identity(release, "x86_64", distro_version);
    let scratch = tempfile::tempdir().expect("tempdir");
    let build = helpers::build_sample_driver(
        &identity,
        &scratch.path().join("out"),
        &scratch.path().join("build.log"),
    );
    let vermagic = helpers::modinfo(&build.module, "vermagic");
    assert!(
        vermagic.starts_with(&format!("{release} ")),
        "vermagic {vermagic:?} is not for {release}"
    );
    assert!(vermagic.contains("modversions"), "{vermagic}");
    assert_eq!(helpers::modinfo(&build.module, "version"), DRIVER_VERSION);
    assert_eq!(helpers::modinfo(&build.module, "name"), "example_driver");
    assert_eq!(helpers::modinfo(&build.module, "license"), "GPL");
}

#[test]
fn bookworm_root_builds_the_sample_driver_for_6_1_0_47() {
    builds_and_reports_vermagic(BOOKWORM_RELEASE, "12");
}

#[test]
fn trixie_root_builds_the_sample_driver_for_a_6_12_deb13_kernel() {
    builds_and_reports_vermagic(TRIXIE_RELEASE, "13");
}
