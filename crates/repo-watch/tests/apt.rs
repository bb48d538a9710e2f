//! The apt watcher against real parts: a loopback mirror (testkit's, with ETags and `304`s) serving
//! apt suites whose `Packages.xz` is made by the real `xz` and whose InRelease lists its real
//! SHA-256; and the real Debian archive (`deb.debian.org`), whose bookworm kernels are read
//! through its signed InRelease, verified with the real `gpgv` and Debian's keyring when present.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kernel_id::{Arch, Distribution, DistroVersion, DriverVersion, KernelFamily, KernelRelease};
use repo_watch::apt::InReleaseVerifier;
use repo_watch::{
    Catalog, FamilyDemand, HttpFetcher, IndexKind, RequestResult, Sources, Watcher, plan,
};
use testkit::mirror::{Mirror, Served, Stanza, apt_suite};

fn distro(distribution: &str, version: &str) -> DistroVersion {
    DistroVersion::supported(Distribution::parse(distribution).unwrap(), version).unwrap()
}

fn demand(distribution: &str, version: &str, running: &[&str]) -> FamilyDemand {
    let dv = distro(distribution, version);
    let first = KernelRelease::parse(running[0]).unwrap();
    FamilyDemand {
        family: KernelFamily::of_release(&first, Arch::X86_64, &dv).unwrap(),
        releases: running
            .iter()
            .map(|r| KernelRelease::parse(r).unwrap())
            .collect(),
        driver_versions: [DriverVersion::parse("v0.1.2").unwrap()].into(),
    }
}

fn images(stanzas: &[(&str, &str)]) -> Vec<Stanza> {
    stanzas
        .iter()
        .map(|(name, version)| Stanza::new(name, version, "amd64"))
        .collect()
}

/// bookworm with a kernel in every pocket: 6.1.0-47 in the release, 6.1.0-48 (with cloud and rt
/// builds of it, and a headerless 6.1.0-49) in -security, the 6.12 series in -backports.
fn serve_bookworm(mirror: &Mirror, security_extra: &[(&str, &str)]) {
    let put = |base: &str, suite: &str, stanzas: Vec<Stanza>| {
        mirror.put_all(
            base,
            apt_suite(suite, "main", "amd64", &stanzas, None, false).unwrap(),
        );
    };
    put(
        "debian",
        "bookworm",
        images(&[
            ("linux-image-6.1.0-47-amd64", "6.1.158-1"),
            ("linux-image-6.1.0-47-amd64-unsigned", "6.1.158-1"),
            ("linux-image-6.1.0-47-amd64-dbg", "6.1.158-1"),
            ("linux-headers-6.1.0-47-amd64", "6.1.158-1"),
            ("linux-image-amd64", "6.1.158-1"),
            ("bash", "5.2.15-2+b2"),
        ]),
    );
    put("debian", "bookworm-updates", Vec::new());
    put(
        "debian",
        "bookworm-backports",
        images(&[
            ("linux-image-6.12.38+deb12-amd64", "6.12.38-1~bpo12+1"),
            ("linux-headers-6.12.38+deb12-amd64", "6.12.38-1~bpo12+1"),
        ]),
    );
    let mut security = vec![
        ("linux-image-6.1.0-48-amd64", "6.1.159-1"),
        ("linux-headers-6.1.0-48-amd64", "6.1.159-1"),
        ("linux-image-6.1.0-48-cloud-amd64", "6.1.159-1"),
        ("linux-headers-6.1.0-48-cloud-amd64", "6.1.159-1"),
        ("linux-image-6.1.0-48-rt-amd64", "6.1.159-1"),
        ("linux-headers-6.1.0-48-rt-amd64", "6.1.159-1"),
        // Newer, but its headers are not published yet.
        ("linux-image-6.1.0-49-amd64", "6.1.160-1"),
    ];
    security.extend_from_slice(security_extra);
    put("debian-security", "bookworm-security", images(&security));
}

fn sources(mirror: &Mirror) -> Sources {
    Sources {
        debian_mirror: Some(format!("{}/debian", mirror.url())),
        debian_security_mirror: Some(format!("{}/debian-security", mirror.url())),
        ..Sources::default()
    }
}

fn targets(demands: &[FamilyDemand]) -> BTreeSet<(DistroVersion, Arch)> {
    demands
        .iter()
        .map(|d| (d.family.distro_version().clone(), d.family.arch()))
        .collect()
}

fn prebuild(demands: &[FamilyDemand], catalog: &Catalog) -> Vec<Option<String>> {
    plan(demands, catalog)
        .into_iter()
        .map(|p| p.prebuild.map(|r| r.to_string()))
        .collect()
}

fn paths(log: &[Served], status: u16) -> Vec<String> {
    log.iter()
        .filter(|s| s.status == status)
        .map(|s| s.path.clone())
        .collect()
}

#[tokio::test]
async fn unchanged_indexes_cost_one_conditional_request_each_and_a_change_is_seen() {
    let mirror = Mirror::start().unwrap();
    serve_bookworm(&mirror, &[]);
    let dir = tempfile::tempdir().unwrap();
    let watcher = Watcher::new(
        Arc::new(HttpFetcher::new(Duration::from_secs(30)).unwrap()),
        sources(&mirror),
        dir.path().join("watch-state.json"),
    );
    let demands = [
        demand("debian", "12", &["6.1.0-47-amd64"]),
        demand("debian", "12", &["6.1.0-47-cloud-amd64"]),
    ];

    // First pass: every InRelease and Packages.xz is downloaded.
    let first = watcher.observe(&targets(&demands)).await;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    assert_eq!(
        prebuild(&demands, &first.catalog),
        [
            Some("6.1.0-48-amd64".to_owned()),
            Some("6.1.0-48-cloud-amd64".to_owned())
        ]
    );
    let log = mirror.take_log();
    assert_eq!(log.len(), 8, "{log:?}");
    assert!(
        log.iter().all(|s| s.status == 200 && !s.conditional),
        "{log:?}"
    );
    assert_eq!(first.stats.indexes_checked, 4);
    assert_eq!(first.stats.indexes_unchanged, 0);
    let first_packages = first.stats.bytes_of(IndexKind::Packages);
    assert_eq!(
        first_packages,
        log.iter()
            .filter(|s| s.path.ends_with("Packages.xz"))
            .map(|s| s.bytes)
            .sum::<u64>()
    );
    assert!(first.new_index_at.is_some());

    // Second pass: four conditional InRelease requests, all 304; no Packages file is requested.
    let second = watcher.observe(&targets(&demands)).await;
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    let log = mirror.take_log();
    assert_eq!(paths(&log, 304).len(), 4, "{log:?}");
    assert!(
        log.iter()
            .all(|s| s.conditional && s.path.ends_with("/InRelease")),
        "{log:?}"
    );
    assert_eq!(second.stats.bytes_of(IndexKind::Packages), 0);
    assert_eq!(second.stats.bytes_of(IndexKind::InRelease), 0);
    assert_eq!(
        second
            .stats
            .requests_of(IndexKind::InRelease, RequestResult::NotModified),
        4
    );
    assert_eq!(
        second
            .stats
            .requests_of(IndexKind::Packages, RequestResult::Reused),
        4
    );
    assert_eq!(second.stats.indexes_unchanged, 4);
    assert!(second.new_index_at.is_none());
    assert_eq!(second.catalog, first.catalog);

    // The security pocket publishes 6.1.0-50 with its headers: only that suite is downloaded again.
    serve_bookworm(
        &mirror,
        &[
            ("linux-image-6.1.0-50-amd64", "6.1.162-1"),
            ("linux-headers-6.1.0-50-amd64", "6.1.162-1"),
        ],
    );
    let third = watcher.observe(&targets(&demands)).await;
    assert!(third.errors.is_empty(), "{:?}", third.errors);
    let log = mirror.take_log();
    assert_eq!(
        paths(&log, 200),
        [
            "/debian-security/dists/bookworm-security/InRelease",
            "/debian-security/dists/bookworm-security/main/binary-amd64/Packages.xz"
        ]
    );
    assert_eq!(paths(&log, 304).len(), 3);
    assert_eq!(
        prebuild(&demands, &third.catalog),
        [
            Some("6.1.0-50-amd64".to_owned()),
            Some("6.1.0-48-cloud-amd64".to_owned())
        ]
    );
    assert!(third.new_index_at.is_some());
    eprintln!(
        "loopback bookworm: first pass {} B (InRelease {} B, Packages {} B), unchanged pass {} B in {:?}",
        first.stats.bytes.values().sum::<u64>(),
        first.stats.bytes_of(IndexKind::InRelease),
        first_packages,
        second.stats.bytes.values().sum::<u64>(),
        second.elapsed
    );

    // Families the fleet does not run are not even read.
    let none = watcher.observe(&BTreeSet::new()).await;
    assert!(mirror.take_log().is_empty());
    assert!(none.catalog.targets.is_empty());
}

#[tokio::test]
async fn a_packages_file_that_does_not_match_inrelease_is_refused_naming_its_url() {
    let mirror = Mirror::start().unwrap();
    serve_bookworm(&mirror, &[]);
    // Another Packages.xz than the one InRelease lists.
    let other = apt_suite(
        "bookworm-security",
        "main",
        "amd64",
        &images(&[("linux-image-6.1.0-99-amd64", "6.1.999-1")]),
        None,
        false,
    )
    .unwrap();
    let path = "dists/bookworm-security/main/binary-amd64/Packages.xz";
    mirror.put(&format!("debian-security/{path}"), other[path].clone());
    let dir = tempfile::tempdir().unwrap();
    let watcher = Watcher::new(
        Arc::new(HttpFetcher::new(Duration::from_secs(30)).unwrap()),
        sources(&mirror),
        dir.path().join("state.json"),
    );
    let demands = [demand("debian", "12", &["6.1.0-47-amd64"])];
    let observed = watcher.observe(&targets(&demands)).await;
    assert_eq!(observed.errors.len(), 1, "{:?}", observed.errors);
    let error = &observed.errors[0];
    assert!(
        error.starts_with(&format!(
            "{}/debian-security/{path}: does not match InRelease",
            mirror.url()
        )),
        "{error}"
    );
    // The other pockets were read; the forged kernel was not believed.
    assert_eq!(prebuild(&demands, &observed.catalog), [None]);
    let kernels = observed
        .catalog
        .kernels(&(distro("debian", "12"), Arch::X86_64))
        .unwrap();
    assert!(!kernels.contains_key("6.1.0-99-amd64"));
}

#[tokio::test]
async fn ubuntu_pockets_gzip_fallback_and_unsigned_image_names() {
    let mirror = Mirror::start().unwrap();
    let put = |suite: &str, stanzas: &[(&str, &str)], gzip_only: bool| {
        mirror.put_all(
            "ubuntu",
            apt_suite(suite, "main", "amd64", &images(stanzas), None, gzip_only).unwrap(),
        );
    };
    put(
        "jammy",
        &[
            ("linux-image-5.15.0-25-generic", "5.15.0-25.25"),
            ("linux-headers-5.15.0-25-generic", "5.15.0-25.25"),
        ],
        false,
    );
    // -updates publishes only Packages.gz.
    put(
        "jammy-updates",
        &[
            ("linux-image-unsigned-5.15.0-131-generic", "5.15.0-131.141"),
            ("linux-headers-5.15.0-131-generic", "5.15.0-131.141"),
            ("linux-image-5.15.0-131-lowlatency", "5.15.0-131.141"),
            ("linux-headers-5.15.0-131-lowlatency", "5.15.0-131.141"),
        ],
        true,
    );
    put(
        "jammy-security",
        &[
            ("linux-image-5.15.0-130-generic", "5.15.0-130.140"),
            ("linux-headers-5.15.0-130-generic", "5.15.0-130.140"),
        ],
        false,
    );
    put(
        "jammy-backports",
        &[
            // The HWE series is another family.
            ("linux-image-6.8.0-52-generic", "6.8.0-52.53~22.04.1"),
            ("linux-headers-6.8.0-52-generic", "6.8.0-52.53~22.04.1"),
        ],
        false,
    );
    let dir = tempfile::tempdir().unwrap();
    let watcher = Watcher::new(
        Arc::new(HttpFetcher::new(Duration::from_secs(30)).unwrap()),
        Sources {
            ubuntu_mirror: Some(format!("{}/ubuntu", mirror.url())),
            ..Sources::default()
        },
        dir.path().join("state.json"),
    );
    let demands = [demand("ubuntu", "22.04", &["5.15.0-25-generic"])];
    let observed = watcher.observe(&targets(&demands)).await;
    assert!(observed.errors.is_empty(), "{:?}", observed.errors);
    assert_eq!(
        prebuild(&demands, &observed.catalog),
        [Some("5.15.0-131-generic".to_owned())]
    );
    assert!(
        mirror
            .log()
            .iter()
            .any(|s| s.path == "/ubuntu/dists/jammy-updates/main/binary-amd64/Packages.gz")
    );
    // A suite the mirror does not publish is an error naming its URL; the others still count.
    mirror.remove("ubuntu/dists/jammy-backports/InRelease");
    let observed = watcher.observe(&targets(&demands)).await;
    assert_eq!(observed.errors.len(), 1, "{:?}", observed.errors);
    assert!(observed.errors[0].contains("/ubuntu/dists/jammy-backports/InRelease: not found"));
    assert_eq!(
        prebuild(&demands, &observed.catalog),
        [Some("5.15.0-131-generic".to_owned())]
    );
}

/// The real Debian archive: the newest bookworm `-amd64` kernel with headers is found, and the
/// cloud and rt flavors of the same ABI are never picked for an amd64 family. One pass reads
/// bookworm's main Packages.xz (about 9 MB) and the smaller pockets; the second pass downloads no
/// Packages file (deb.debian.org sends no validators, so InRelease is fetched again: its digests
/// decide).
#[tokio::test]
async fn the_real_debian_archive_offers_the_newest_bookworm_amd64_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let mut watcher = Watcher::new(
        Arc::new(HttpFetcher::new(Duration::from_secs(300)).unwrap()),
        Sources {
            debian_mirror: Some("http://deb.debian.org/debian".to_owned()),
            debian_security_mirror: Some("http://deb.debian.org/debian-security".to_owned()),
            ..Sources::default()
        },
        dir.path().join("state.json"),
    );
    let keyring = std::path::Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
    let verified = keyring.exists() && which("gpgv");
    if verified {
        watcher = watcher.with_verifier(InReleaseVerifier::new(vec![keyring.to_owned()]));
    }
    // An old ABI, so that anything newer is a prebuild.
    let demands = [
        demand("debian", "12", &["6.1.0-9-amd64"]),
        demand("debian", "12", &["6.1.0-9-cloud-amd64"]),
    ];
    let first = watcher.observe(&targets(&demands)).await;
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let plans = plan(&demands, &first.catalog);
    let amd64 = plans[0]
        .prebuild
        .clone()
        .expect("a newer bookworm amd64 kernel");
    let cloud = plans[1]
        .prebuild
        .clone()
        .expect("a newer bookworm cloud kernel");
    assert!(
        amd64.as_str().starts_with("6.1.0-") && amd64.as_str().ends_with("-amd64"),
        "{amd64}"
    );
    assert!(
        !amd64.as_str().contains("cloud") && !amd64.as_str().contains("-rt-"),
        "{amd64}"
    );
    assert!(cloud.as_str().ends_with("-cloud-amd64"), "{cloud}");
    let kernels = first
        .catalog
        .kernels(&(distro("debian", "12"), Arch::X86_64))
        .unwrap();
    // The same ABI is published in the other flavors, and those were not picked.
    let abi = amd64.as_str().trim_end_matches("-amd64");
    assert!(kernels.contains_key(&format!("{abi}-cloud-amd64")));
    assert!(kernels.contains_key(&format!("{abi}-rt-amd64")));
    // Nothing with headers in the family is newer.
    let picked = &kernels[amd64.as_str()];
    assert!(picked.headers);
    for (release, published) in kernels {
        let release = KernelRelease::parse(release).unwrap();
        if plans[0].family.contains(&release) && published.headers {
            assert_ne!(
                kernel_id::dpkg_cmp(&published.version, &picked.version),
                std::cmp::Ordering::Greater,
                "{release} {} is newer than {amd64} {}",
                published.version,
                picked.version
            );
        }
    }

    let second = watcher.observe(&targets(&demands)).await;
    assert!(second.errors.is_empty(), "{:?}", second.errors);
    assert_eq!(second.stats.bytes_of(IndexKind::Packages), 0);
    assert_eq!(second.stats.indexes_unchanged, 4);
    assert_eq!(second.catalog, first.catalog);
    eprintln!(
        "deb.debian.org bookworm (InRelease {}): picked {amd64} and {cloud}; first pass {} B \
         (InRelease {} B, Packages {} B) in {:?}; second pass {} B (Packages {} B) in {:?}",
        if verified {
            "verified with gpgv"
        } else {
            "not verified"
        },
        first.stats.bytes.values().sum::<u64>(),
        first.stats.bytes_of(IndexKind::InRelease),
        first.stats.bytes_of(IndexKind::Packages),
        first.elapsed,
        second.stats.bytes.values().sum::<u64>(),
        second.stats.bytes_of(IndexKind::Packages),
        second.elapsed,
    );
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}
