//! Distro versions: kernels of three Debian releases — bullseye's 5.10.0-46-amd64 (11), bookworm's
//! 6.12.115+deb12-amd64 (12) and trixie's 6.12.115+deb13-amd64 (13) — boot together; each gets its
//! driver built in a root of its own suite and loads it. The bookworm and trixie 6.12.115 artifacts
//! are distinct packages (names and digests) although the upstream kernel version is the same.
//! (bookworm's 6.1 is the cold scenario's kernel.)

use std::collections::BTreeMap;

use build_api::BuildState;
use fleet::{Fleet, NodeSpec};
use sha2_free::sha256_file;

const NODES: [(&str, &str, &str); 3] = [
    ("bullseye", "5.10.0-46-amd64", "11"),
    ("bookworm-6-12", "6.12.115+deb12-amd64", "12"),
    ("trixie", "6.12.115+deb13-amd64", "13"),
];

mod sha2_free {
    use std::path::Path;
    use std::process::Command;

    /// `sha256sum` of a file (coreutils), so the test needs no hashing crate.
    pub fn sha256_file(path: &Path) -> String {
        let output = Command::new("sha256sum")
            .arg(path)
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

#[test]
fn each_debian_release_gets_a_driver_built_in_its_own_suite() {
    let fleet = Fleet::start("distro-versions").expect("fleet service");
    let specs: Vec<NodeSpec> = NODES
        .iter()
        .map(|(name, release, version)| NodeSpec::debian(name, release, version).expect("spec"))
        .collect();
    let nodes: Vec<_> = specs
        .iter()
        .map(|spec| fleet.prepare(spec).expect("prepare node"))
        .collect();
    let outcomes = fleet.run_together(&nodes).expect("boot nodes");
    let summary: Vec<String> = outcomes.iter().map(|o| o.describe()).collect();
    let context = fleet.failure_context(&summary.join("\n"));
    for outcome in &outcomes {
        assert!(outcome.loaded(), "{context}\n{}", outcome.console);
        let release = outcome.release.as_str();
        assert!(
            outcome.driver_line.as_deref().is_some_and(
                |line| line.contains(&format!("built_for={release} running={release}"))
            ),
            "{context}"
        );
    }

    // One build per kernel, each in its own suite's root.
    let mut builds: BTreeMap<String, String> = BTreeMap::new();
    for id in fleet.service.build_ids() {
        let status = fleet.service.status(&id).expect("status");
        assert_eq!(status.status, BuildState::Done, "{status:?}\n{context}");
        builds.insert(status.request.kernel_version, id);
    }
    assert_eq!(builds.len(), 3, "{builds:?}\n{context}");
    for (_, release, version) in NODES {
        let id = builds
            .get(release)
            .unwrap_or_else(|| panic!("no build of {release}: {context}"));
        let log = std::fs::read_to_string(fleet.service.builds_dir().join(id).join("build.log"))
            .unwrap_or_default();
        assert!(
            log.contains(&format!("debian-{version}-x86_64")),
            "{release} must be built in a debian {version} root: {context}\n{log}"
        );
    }

    // The two 6.12.115 artifacts are different packages.
    let driver_version = fleet.settings.driver_version.clone();
    let bookworm = specs[1].identity(&driver_version).expect("identity");
    let trixie = specs[2].identity(&driver_version).expect("identity");
    let driver = fleet.settings.driver.clone();
    let layout = kernel_id::ReleaseLayout::PerArtifact;
    let path_of = |identity: &kernel_id::KernelIdentity| {
        fleet
            .service
            .artifact_dir()
            .join(layout.release_tag(&driver, identity))
            .join(identity.package_file_name(&driver))
    };
    let (bookworm_path, trixie_path) = (path_of(&bookworm), path_of(&trixie));
    assert!(
        bookworm_path.is_file() && trixie_path.is_file(),
        "{context}"
    );
    assert_ne!(
        bookworm_path.file_name(),
        trixie_path.file_name(),
        "{context}"
    );
    assert_ne!(
        sha256_file(&bookworm_path),
        sha256_file(&trixie_path),
        "{context}"
    );

    for outcome in &outcomes {
        eprintln!(
            "fleet distro: {}: time to driver live {:.1}s",
            outcome.release,
            outcome
                .time_to_driver_live
                .unwrap_or_default()
                .as_secs_f64()
        );
    }
    for (kernel, id) in &builds {
        if let Ok(duration) = fleet.service.build_duration(id) {
            eprintln!(
                "fleet distro: {kernel}: build {:.1}s",
                duration.as_secs_f64()
            );
        }
    }
    fleet.tidy();
}
