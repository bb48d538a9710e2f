//! Watcher: the fleet runs only Debian 12 nodes on an older `-amd64` kernel (6.1.0-47-amd64; one
//! real node boots it and reports). The service's repository watcher, pointed at the real Debian
//! mirror (bookworm, -updates, -backports, -security; InRelease verified with gpgv against Debian's
//! archive keyring), finds the newest bookworm `-amd64` kernel whose headers are published and
//! prebuilds it as its own principal — and nothing for `-cloud-amd64` or `-rt-amd64`, which the
//! fleet does not run. A node then boots that kernel, which no node had booted before: the driver
//! is live with zero on-demand builds, in about the warm-path time. A second pass over unchanged
//! indexes downloads no `Packages` file.

use std::ffi::OsString;
use std::time::Instant;

use build_api::PrebuildOutcome;
use fleet::service::ServiceOptions;
use fleet::{Fleet, NodeSpec};

const OLDER: &str = "6.1.0-47-amd64";
const FAMILY: &str = "debian/12/x86_64/6.1/amd64";
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

fn watcher_args() -> Vec<OsString> {
    let mirror = std::env::var("KDRIVER_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".to_owned());
    let security = std::env::var("KDRIVER_DEBIAN_SECURITY_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian-security".to_owned());
    let mut args: Vec<OsString> = vec![
        "--watch-debian-mirror".into(),
        mirror.into(),
        "--watch-debian-security-mirror".into(),
        security.into(),
        // Passes are asked for by the test; the interval only must not add one in between.
        "--watch-interval".into(),
        "1h".into(),
    ];
    // InRelease is checked by gpgv against Debian's archive keyring (required: the service
    // refuses an apt source it cannot check).
    args.extend(["--watch-apt-keyring".into(), DEBIAN_KEYRING.into()]);
    args
}

#[test]
fn the_watcher_prebuilds_the_next_kernel_of_the_fleets_family_only() {
    let dir = fleet::run_dir("watcher").expect("run dir");
    let fleet = Fleet::start_in_with(
        &dir,
        &ServiceOptions {
            extra_args: watcher_args(),
            ..ServiceOptions::default()
        },
    )
    .expect("fleet service with the repository watcher");

    // 1. The inventory: one node on the older kernel, reported by its loader.
    let old = fleet
        .prepare(&NodeSpec::debian("older", OLDER, "12").expect("spec"))
        .expect("prepare the node on the older kernel");
    let old = fleet
        .run_node(&old)
        .expect("boot the node on the older kernel");
    assert!(old.loaded(), "{}", fleet.failure_context(&old.describe()));
    assert_eq!(fleet.service.build_ids().len(), 1);

    // 2. A pass over the real mirror prebuilds the newest kernel of that family, nothing else.
    let pass_started = Instant::now();
    let first = fleet.service.run_watcher().expect("first watcher pass");
    let context = fleet.failure_context(&format!("first pass: {first:#?}"));
    assert!(first.errors.is_empty(), "{context}");
    assert_eq!(
        first
            .families
            .iter()
            .map(|f| f.family.as_str())
            .collect::<Vec<_>>(),
        [FAMILY],
        "only the family the fleet runs is watched: {context}"
    );
    let newest = first.families[0]
        .prebuild
        .clone()
        .unwrap_or_else(|| panic!("the mirror has a newer -amd64 kernel than {OLDER}: {context}"));
    assert!(
        newest.ends_with("-amd64")
            && !newest.contains("cloud")
            && !newest.contains("-rt-")
            && newest != OLDER,
        "{context}"
    );
    assert_eq!(first.prebuilds.len(), 1, "{context}");
    let prebuild = &first.prebuilds[0];
    assert_eq!(prebuild.outcome, PrebuildOutcome::Created, "{context}");
    assert_eq!(prebuild.request.kernel_version, newest, "{context}");
    assert!(first.bytes.packages > 0, "{context}");
    let build_id = prebuild.build_id.clone().expect("the prebuild's build id");
    let status = fleet
        .service
        .wait_build(&build_id, fleet::COLD_NODE_TIMEOUT)
        .expect("the prebuild ends");
    assert_eq!(
        status.status,
        build_api::BuildState::Done,
        "{}",
        fleet.failure_context(&format!("prebuild {build_id}: {status:?}"))
    );
    let index_to_published = pass_started.elapsed();

    // 3. Nothing changed upstream: the second pass downloads no Packages file and builds nothing.
    let second = fleet.service.run_watcher().expect("second watcher pass");
    let context = fleet.failure_context(&format!("second pass: {second:#?}"));
    assert_eq!(second.bytes.packages, 0, "{context}");
    assert!(
        second
            .prebuilds
            .iter()
            .all(|p| p.outcome == PrebuildOutcome::Published),
        "{context}"
    );
    assert_eq!(fleet.service.build_ids().len(), 2, "{context}");

    // 4. A node boots the kernel no node had booted: no on-demand build, the warm path.
    let before = fleet.service.metrics().expect("metrics").build_counters();
    let new = fleet
        .prepare(&NodeSpec::debian("next", &newest, "12").expect("spec"))
        .expect("prepare the node on the newest kernel");
    let new = fleet
        .run_node(&new)
        .expect("boot the node on the newest kernel");
    let context = fleet.failure_context(&new.describe());
    assert!(new.loaded(), "{context}\n{}", new.console);
    assert!(
        !new.console.contains("requesting a build"),
        "the prebuilt kernel's node must not ask for a build: {context}"
    );
    let after = fleet.service.metrics().expect("metrics").build_counters();
    assert_eq!(after.dispatches_ok, before.dispatches_ok, "{context}");
    assert_eq!(fleet.service.build_ids().len(), 2, "{context}");

    eprintln!(
        "fleet watcher: {OLDER} in use -> prebuilt {newest}: first pass {} ms (index bytes: \
         InRelease {}, Packages {}), new index -> artifact published {:.1}s; unchanged pass {} ms \
         (InRelease {} bytes, Packages {} bytes); node on {newest}: driver live after {:.1}s, \
         first-boot wait 0 s (node on {OLDER}, cold: {:.1}s) (logs {})",
        first.duration_ms,
        first.bytes.inrelease,
        first.bytes.packages,
        index_to_published.as_secs_f64(),
        second.duration_ms,
        second.bytes.inrelease,
        second.bytes.packages,
        new.time_to_driver_live.unwrap_or_default().as_secs_f64(),
        old.time_to_driver_live.unwrap_or_default().as_secs_f64(),
        fleet.dir().display()
    );
    fleet.tidy();
}
