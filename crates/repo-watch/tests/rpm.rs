//! The rpm-md watcher against real parts: repositories made by the real `createrepo_c` from real
//! rpm files (built with the `rpm` crate), served by testkit's loopback mirror with ETags and
//! `304`s: Amazon Linux 2023's core repository (`kernel`, `kernel-devel`, the `kernel6.12`
//! stream) beside its livepatch repository (`kernel-livepatch-*`), and a Fedora repository with
//! the default and `debug` variants. The core repository changes between passes.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kernel_id::{Arch, Distribution, DistroVersion, DriverVersion, KernelFamily, KernelRelease};
use repo_watch::{
    FamilyDemand, HttpFetcher, IndexKind, RequestResult, RpmSource, Sources, Watcher, plan,
};
use testkit::mirror::Mirror;

fn distro(distribution: &str, version: &str) -> DistroVersion {
    DistroVersion::supported(Distribution::parse(distribution).unwrap(), version).unwrap()
}

fn demand(distribution: &str, version: &str, running: &str) -> FamilyDemand {
    let dv = distro(distribution, version);
    let release = KernelRelease::parse(running).unwrap();
    FamilyDemand {
        family: KernelFamily::of_release(&release, Arch::X86_64, &dv).unwrap(),
        releases: [release].into(),
        driver_versions: [DriverVersion::parse("v0.1.2").unwrap()].into(),
    }
}

/// Writes `name-version-release.arch.rpm` files (empty payloads) into `dir`.
fn rpms(dir: &Path, packages: &[(&str, &str, &str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, version, release, arch) in packages {
        rpm::PackageBuilder::new(name, version, "GPL-2.0-only", arch, "watcher fixture")
            .release(*release)
            .build()
            .unwrap()
            .write_file(dir.join(format!("{name}-{version}-{release}.{arch}.rpm")))
            .unwrap();
    }
}

/// Runs the real createrepo_c over `dir` (again: its metadata changes when the rpms do).
fn createrepo(dir: &Path) {
    let status = Command::new("createrepo_c")
        .args(["--quiet", "--update"])
        .arg(dir)
        .status()
        .expect("createrepo_c is installed (apt-get install createrepo-c)");
    assert!(status.success());
}

fn prebuilds(demands: &[FamilyDemand], catalog: &repo_watch::Catalog) -> Vec<Option<String>> {
    plan(demands, catalog)
        .into_iter()
        .map(|p| p.prebuild.map(|r| r.to_string()))
        .collect()
}

#[tokio::test]
async fn al2023_core_and_livepatch_repositories_and_fedora_variants() {
    let work = tempfile::tempdir().unwrap();
    let core = work.path().join("al2023-core");
    let livepatch = work.path().join("al2023-livepatch");
    let fedora = work.path().join("fedora");
    let (amzn, x86) = ("amzn2023", "x86_64");
    rpms(
        &core,
        &[
            ("kernel", "6.1.115", "126.197.amzn2023", x86),
            ("kernel-devel", "6.1.115", "126.197.amzn2023", x86),
            ("kernel", "6.1.119", "129.201.amzn2023", x86),
            ("kernel-devel", "6.1.119", "129.201.amzn2023", x86),
            // Newer, without headers yet.
            ("kernel", "6.1.128", "139.222.amzn2023", x86),
            // The headers of the kernel only the livepatch repository names.
            ("kernel-devel", "6.1.125", "135.210.amzn2023", x86),
            ("kernel6.12", "6.12.40", "63.114.amzn2023", x86),
            ("kernel6.12-devel", "6.12.40", "63.114.amzn2023", x86),
            ("kernel", "6.1.140", "150.1.amzn2023", "aarch64"),
            ("kernel-devel", "6.1.140", "150.1.amzn2023", "aarch64"),
            ("kernel-tools", "6.1.140", "150.1.amzn2023", x86),
        ],
    );
    rpms(
        &livepatch,
        &[
            ("kernel-livepatch-6.1.115-126.197", "1.0", "2.amzn2023", x86),
            ("kernel-livepatch-6.1.125-135.210", "1.0", "0.amzn2023", x86),
            ("kernel-livepatch-repo-s3", "1.0", "1.amzn2023", "noarch"),
        ],
    );
    rpms(
        &fedora,
        &[
            ("kernel-core", "6.14.9", "300.fc42", x86),
            ("kernel-devel", "6.14.9", "300.fc42", x86),
            ("kernel-core", "6.14.10", "300.fc42", x86),
            ("kernel-devel", "6.14.10", "300.fc42", x86),
            ("kernel-debug-core", "6.14.9", "300.fc42", x86),
            ("kernel-debug-devel", "6.14.9", "300.fc42", x86),
            ("kernel-debug-core", "6.14.11", "300.fc42", x86),
            ("kernel-debug-devel", "6.14.11", "300.fc42", x86),
            ("kernel-modules-core", "6.14.11", "300.fc42", x86),
        ],
    );
    for repo in [&core, &livepatch, &fedora] {
        createrepo(repo);
    }
    let mirror = Mirror::start().unwrap();
    mirror.put_dir("al2023/core", &core).unwrap();
    mirror.put_dir("al2023/livepatch", &livepatch).unwrap();
    mirror.put_dir("fedora/42", &fedora).unwrap();
    let source = |distribution: &str, version: &str, path: &str| RpmSource {
        distro_version: distro(distribution, version),
        arch: Arch::X86_64,
        base: format!("{}/{path}", mirror.url()),
    };
    let state = work.path().join("state.json");
    let watcher = Watcher::new(
        Arc::new(HttpFetcher::new(Duration::from_secs(30)).unwrap()),
        Sources {
            rpm: vec![
                source("amazonlinux", "2023", "al2023/core"),
                source("amazonlinux", "2023", "al2023/livepatch"),
                source("fedora", "42", "fedora/42"),
            ],
            ..Sources::default()
        },
        state.clone(),
    );
    let demands = [
        demand(
            "amazonlinux",
            "2023",
            &format!("6.1.115-126.197.{amzn}.x86_64"),
        ),
        demand(
            "amazonlinux",
            "2023",
            &format!("6.12.40-63.114.{amzn}.x86_64"),
        ),
        demand("fedora", "42", "6.14.9-300.fc42.x86_64"),
        demand("fedora", "42", "6.14.9-300.fc42.x86_64+debug"),
    ];
    let targets: BTreeSet<(DistroVersion, Arch)> = demands
        .iter()
        .map(|d| (d.family.distro_version().clone(), d.family.arch()))
        .collect();

    let first = watcher.observe(&targets).await;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(
        prebuilds(&demands, &first.catalog),
        [
            // Named by the livepatch repository, headers from the core one; 6.1.128 has none.
            Some(format!("6.1.125-135.210.{amzn}.x86_64")),
            // The fleet runs the newest 6.12 already.
            None,
            Some("6.14.10-300.fc42.x86_64".to_owned()),
            Some("6.14.11-300.fc42.x86_64+debug".to_owned()),
        ]
    );
    let log = mirror.take_log();
    assert_eq!(log.len(), 6, "{log:?}");
    assert!(log.iter().all(|s| s.status == 200), "{log:?}");
    assert!(first.stats.bytes_of(IndexKind::Primary) > 0);
    let first_bytes: u64 = first.stats.bytes.values().sum();

    // Unchanged: three conditional repomd.xml requests answered 304, no primary file.
    let second = watcher.observe(&targets).await;
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    let log = mirror.take_log();
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(
        log.iter()
            .all(|s| s.status == 304 && s.conditional && s.path.ends_with("/repodata/repomd.xml")),
        "{log:?}"
    );
    assert_eq!(second.stats.bytes.values().sum::<u64>(), 0);
    assert_eq!(
        second
            .stats
            .requests_of(IndexKind::Primary, RequestResult::Reused),
        3
    );
    assert_eq!(second.stats.indexes_unchanged, 3);
    assert_eq!(second.catalog, first.catalog);

    // The core repository publishes 6.1.130 with its headers: its repomd.xml and new primary file
    // are downloaded, the other two repositories answer 304.
    rpms(
        &core,
        &[
            ("kernel", "6.1.130", "140.220.amzn2023", x86),
            ("kernel-devel", "6.1.130", "140.220.amzn2023", x86),
        ],
    );
    createrepo(&core);
    mirror.put_dir("al2023/core", &core).unwrap();
    let third = watcher.observe(&targets).await;
    assert!(third.errors.is_empty(), "{:?}", third.errors);
    let log = mirror.take_log();
    let fetched: Vec<&str> = log
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(fetched.len(), 2, "{log:?}");
    assert_eq!(fetched[0], "/al2023/core/repodata/repomd.xml");
    assert!(
        fetched[1].starts_with("/al2023/core/repodata/") && fetched[1].contains("-primary.xml")
    );
    assert_eq!(log.iter().filter(|s| s.status == 304).count(), 2);
    assert_eq!(
        prebuilds(&demands, &third.catalog)[0],
        Some(format!("6.1.130-140.220.{amzn}.x86_64"))
    );
    assert_eq!(
        third
            .stats
            .requests_of(IndexKind::Primary, RequestResult::Fetched),
        1
    );
    eprintln!(
        "loopback rpm-md (3 repositories): first pass {first_bytes} B in {:?}, unchanged pass 0 B \
         in {:?}, one repository changed: {} B in {:?}",
        first.elapsed,
        second.elapsed,
        third.stats.bytes.values().sum::<u64>(),
        third.elapsed
    );

    // A primary file that is not the one repomd.xml names is refused by URL.
    let primary = fetched[1].trim_start_matches("/al2023/core/");
    mirror.put(&format!("al2023/core/{primary}"), b"tampered".to_vec());
    std::fs::remove_file(&state).unwrap();
    let tampered = watcher.observe(&targets).await;
    assert_eq!(tampered.errors.len(), 1, "{:?}", tampered.errors);
    assert!(
        tampered.errors[0].starts_with(&format!(
            "{}/al2023/core/{primary}: does not match repomd.xml",
            mirror.url()
        )),
        "{:?}",
        tampered.errors
    );
}
