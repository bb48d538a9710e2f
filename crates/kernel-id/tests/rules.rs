//! Table-driven checks of every identity rule: each invalid input must be refused with an error that
//! names its field, and every example from the foundation issue must hold.

use kernel_id::{
    Arch, Distribution, DistroVersion, DriverName, DriverVersion, Field, IdentityInput,
    KernelIdentity, KernelRelease, KernelsFile, OsRelease, ReleaseLayout, derive_distro_version,
};

fn input(
    release: &str,
    arch: &str,
    distro: &str,
    version: Option<&str>,
    driver: &str,
) -> IdentityInput {
    IdentityInput {
        kernel_version: release.into(),
        architecture: arch.into(),
        distribution: distro.into(),
        distro_version: version.map(Into::into),
        driver_version: driver.into(),
    }
}

fn valid(release: &str, arch: &str, distro: &str, version: Option<&str>) -> IdentityInput {
    input(release, arch, distro, version, "v0.1.2")
}

#[test]
fn invalid_identity_inputs_are_refused_naming_the_field() {
    let long = "6.1.".to_owned() + &"a".repeat(10 * 1024);
    let cases: Vec<(IdentityInput, Field)> = vec![
        // kernel_version: the security boundary.
        (valid("", "x86_64", "debian", None), Field::KernelVersion),
        (
            valid("6.1.0 47", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0/47", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0-47-amd64/../../etc", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1..0", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0-$(id)", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0-${HOME}", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0-`id`", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0;reboot", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0\nreboot", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0\r", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0\t", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0'", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0\"", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0|cat", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0&&x", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0>x", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0<x", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0*", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0?", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0:x", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0{x}", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0[x]", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0#x", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0%0a", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0\\x", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0\0", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("6.1.0-ü", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("v6.1.0", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (
            valid("-6.1.0", "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        (valid("6", "x86_64", "debian", None), Field::KernelVersion),
        (valid("6.", "x86_64", "debian", None), Field::KernelVersion),
        (valid("6.x", "x86_64", "debian", None), Field::KernelVersion),
        (valid(&long, "x86_64", "debian", None), Field::KernelVersion),
        (
            valid(&"6.1.".repeat(40), "x86_64", "debian", None),
            Field::KernelVersion,
        ),
        // architecture.
        (
            valid("6.1.0-47-amd64", "", "debian", None),
            Field::Architecture,
        ),
        (
            valid("6.1.0-47-amd64", "i386", "debian", None),
            Field::Architecture,
        ),
        (
            valid("6.1.0-47-amd64", "X86_64", "debian", None),
            Field::Architecture,
        ),
        (
            valid("6.1.0-47-amd64", "x86-64", "debian", None),
            Field::Architecture,
        ),
        (
            valid("6.1.0-47-amd64", "arm64", "debian", None),
            Field::Architecture,
        ),
        (
            valid("6.14.0-100.fc42.x86_64", "aarch64", "fedora", None),
            Field::Architecture,
        ),
        // distribution.
        (
            valid("6.1.0-47-amd64", "x86_64", "", None),
            Field::Distribution,
        ),
        (
            valid("6.1.0-47-amd64", "x86_64", "Debian", None),
            Field::Distribution,
        ),
        (
            valid("6.1.0-47-amd64", "x86_64", "rhel", None),
            Field::Distribution,
        ),
        (
            valid("6.1.0-47-amd64", "x86_64", "debian; rm -rf /", None),
            Field::Distribution,
        ),
        (
            valid("6.14.0-100.fc42.x86_64", "x86_64", "centos", None),
            Field::Distribution,
        ),
        // distro_version.
        (
            valid("6.8.0-52-generic", "x86_64", "ubuntu", Some("24.4")),
            Field::DistroVersion,
        ),
        (
            valid("6.8.0-52-generic", "x86_64", "ubuntu", Some("23.04")),
            Field::DistroVersion,
        ),
        (
            valid("6.8.0-52-generic", "x86_64", "ubuntu", Some("noble")),
            Field::DistroVersion,
        ),
        (
            valid("6.1.0-47-amd64", "x86_64", "debian", Some("bookworm")),
            Field::DistroVersion,
        ),
        (
            valid("6.1.0-47-amd64", "x86_64", "debian", Some("10")),
            Field::DistroVersion,
        ),
        (
            valid("6.1.0-47-amd64", "x86_64", "debian", Some("12.5")),
            Field::DistroVersion,
        ),
        (
            valid("6.1.0-47-amd64", "x86_64", "debian", Some("")),
            Field::DistroVersion,
        ),
        (
            valid("5.14.0-1.el9.x86_64", "x86_64", "centos", Some("9")),
            Field::DistroVersion,
        ),
        (
            valid("5.14.0-1.el9.x86_64", "x86_64", "centos", Some("stream8")),
            Field::DistroVersion,
        ),
        (
            valid(
                "6.1.0-1.amzn2023.x86_64",
                "x86_64",
                "amazonlinux",
                Some("2"),
            ),
            Field::DistroVersion,
        ),
        (
            valid("6.14.0-100.fc42.x86_64", "x86_64", "fedora", Some("43")),
            Field::DistroVersion,
        ),
        (
            valid("6.12.48+deb13-amd64", "x86_64", "debian", Some("12")),
            Field::DistroVersion,
        ),
        (
            valid("6.12.0-212.el10.x86_64", "x86_64", "centos", None),
            Field::DistroVersion,
        ),
        // driver_version.
        (
            input("6.1.0-47-amd64", "x86_64", "debian", None, ""),
            Field::DriverVersion,
        ),
        (
            input("6.1.0-47-amd64", "x86_64", "debian", None, "0.1.2"),
            Field::DriverVersion,
        ),
        (
            input("6.1.0-47-amd64", "x86_64", "debian", None, "v0.1"),
            Field::DriverVersion,
        ),
        (
            input("6.1.0-47-amd64", "x86_64", "debian", None, "v01.1.2"),
            Field::DriverVersion,
        ),
        (
            input("6.1.0-47-amd64", "x86_64", "debian", None, "v0.1.2-"),
            Field::DriverVersion,
        ),
        (
            input("6.1.0-47-amd64", "x86_64", "debian", None, "v0.1.2-rc..1"),
            Field::DriverVersion,
        ),
        (
            input("6.1.0-47-amd64", "x86_64", "debian", None, "v0.1.2+build5"),
            Field::DriverVersion,
        ),
        (
            input("6.1.0-47-amd64", "x86_64", "debian", None, "v0.1.2;id"),
            Field::DriverVersion,
        ),
        (
            input("6.1.0-47-amd64", "x86_64", "debian", None, "V0.1.2"),
            Field::DriverVersion,
        ),
    ];
    assert!(
        cases.len() >= 40,
        "the issue asks for at least 40 invalid inputs"
    );
    for (case, field) in cases {
        let err =
            KernelIdentity::from_input(&case).expect_err(&format!("{case:?} must be refused"));
        assert_eq!(err.field(), field, "{case:?}: {err}");
        assert!(
            err.to_string().starts_with(&format!("{field}: ")),
            "error must name the field: {err}"
        );
    }
}

#[test]
fn invalid_json_bodies_are_refused() {
    for body in [
        r#"{"kernel_version":"6.1.0-47-amd64","architecture":"x86_64","distribution":"debian","driver_version":"v0.1.2","extra":1}"#,
        r#"{"kernel_version":6,"architecture":"x86_64","distribution":"debian","driver_version":"v0.1.2"}"#,
        r#"{"architecture":"x86_64","distribution":"debian","driver_version":"v0.1.2"}"#,
    ] {
        assert!(
            serde_json::from_str::<IdentityInput>(body).is_err(),
            "{body}"
        );
    }
}

#[test]
fn invalid_driver_names_are_refused() {
    for raw in [
        "",
        "Example",
        "example_driver",
        "-example",
        "example-",
        "ex--ample",
        "1driver",
        "a/b",
        &"a".repeat(65),
    ] {
        let err = DriverName::parse(raw).expect_err(raw);
        assert_eq!(err.field(), Field::DriverName);
    }
}

#[test]
fn missing_distro_version_takes_the_pinned_default() {
    for (distro, release, want) in [
        ("ubuntu", "6.8.0-52-generic", "24.04"),
        ("debian", "6.1.0-47-amd64", "12"),
        ("fedora", "6.14.0-100.fc42.x86_64", "42"),
        ("centos", "5.14.0-503.el9.x86_64", "stream9"),
        ("amazonlinux", "6.12.58-82.121.amzn2023.x86_64", "2023"),
    ] {
        let id = KernelIdentity::from_input(&valid(release, "x86_64", distro, None)).unwrap();
        assert_eq!(id.distro_version().as_str(), want);
    }
}

#[test]
fn ubuntu_22_04_and_24_04_artifacts_never_share_a_name() {
    let driver = DriverName::parse("example-driver").unwrap();
    let jammy = KernelIdentity::from_input(&valid(
        "6.8.0-52-generic",
        "x86_64",
        "ubuntu",
        Some("22.04"),
    ))
    .unwrap();
    let noble = KernelIdentity::from_input(&valid(
        "6.8.0-52-generic",
        "x86_64",
        "ubuntu",
        Some("24.04"),
    ))
    .unwrap();
    assert_ne!(jammy.cache_key(), noble.cache_key());
    assert_ne!(
        jammy.package_file_name(&driver),
        noble.package_file_name(&driver)
    );
    for layout in [ReleaseLayout::PerArtifact, ReleaseLayout::PerDriverVersion] {
        assert_ne!(
            layout.package_path(&driver, &jammy),
            layout.package_path(&driver, &noble)
        );
    }
}

#[test]
fn cache_key_holds_all_five_fields() {
    let id = KernelIdentity::from_input(&valid("6.1.0-47-amd64", "amd64", "debian", None)).unwrap();
    assert_eq!(id.cache_key(), "debian/12/x86_64/6.1.0-47-amd64/v0.1.2");
}

#[test]
fn package_metadata_is_valid_for_dpkg_and_rpm() {
    let driver = DriverName::parse("example-driver").unwrap();
    let id = KernelIdentity::from_input(&input(
        "6.12.115+deb12-amd64",
        "x86_64",
        "debian",
        Some("12"),
        "v1.0.0-rc.1",
    ))
    .unwrap();
    let name = id.package_name(&driver);
    assert_eq!(name, "example-driver-6.12.115+deb12-amd64");
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b))
    );
    assert_eq!(id.package_version(), "1.0.0~rc.1");
    assert_eq!(
        id.module_install_dir(&driver),
        "/lib/modules/6.12.115+deb12-amd64/updates/example-driver"
    );
    assert_eq!(
        id.signature_file_name(&driver),
        "example-driver-debian-12-6.12.115+deb12-amd64_v1.0.0-rc.1_amd64.deb.minisig"
    );
    assert_eq!(
        id.provenance_file_name(&driver),
        "example-driver-debian-12-6.12.115+deb12-amd64_v1.0.0-rc.1_amd64.deb.intoto.jsonl"
    );
    assert_eq!(
        id.add_kernel_branch(),
        "add-kernel/debian/12/x86_64/6-12-115+deb12-amd64"
    );
}

#[test]
fn file_names_parse_back_with_and_without_the_driver_name() {
    let driver = DriverName::parse("my-debian-driver").unwrap();
    let id = KernelIdentity::from_input(&valid(
        "6.12.48+deb13-amd64",
        "x86_64",
        "debian",
        Some("13"),
    ))
    .unwrap();
    let name = id.package_file_name(&driver);
    assert_eq!(
        KernelIdentity::parse_package_file_name(&driver, &name).unwrap(),
        id
    );
    let (parsed_driver, parsed) = KernelIdentity::parse_any_package_file_name(&name).unwrap();
    assert_eq!((parsed_driver, parsed), (driver.clone(), id));
    for bad in [
        "my-debian-driver-debian-13-6.12.48+deb13-amd64_v0.1.2_amd64.rpm",
        "my-debian-driver-debian-13-6.12.48+deb13-amd64_v0.1.2_x86_64.deb",
        "my-debian-driver-debian-13-6.12.48+deb13-amd64_v0.1.2.deb",
        "other-driver-debian-13-6.12.48+deb13-amd64_v0.1.2_amd64.deb",
        "my-debian-driver-debian-13-6.12.48+deb13-amd64_v0.1.2_arm64.deb",
    ] {
        assert!(
            KernelIdentity::parse_package_file_name(&driver, bad).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn derivation_examples_from_the_issue() {
    for (release, want) in [
        ("6.14.0-100.fc42.x86_64", ("fedora", "42")),
        ("6.12.0-212.el10.x86_64", ("centos", "stream10")),
        ("6.1.0-28~bpo12+1", ("debian", "12")),
        ("6.12.100+deb12-amd64", ("debian", "12")),
        ("6.12.58-82.121.amzn2023.x86_64", ("amazonlinux", "2023")),
    ] {
        let v = derive_distro_version(release, None).unwrap();
        assert_eq!((v.distribution().as_str(), v.as_str()), want, "{release}");
    }
    let v = derive_distro_version("6.1.0-1", Some("amazonlinux2023")).unwrap();
    assert_eq!(v.as_str(), "2023");
    assert!(derive_distro_version("6.1.0-47-amd64", None).is_none());
}

#[test]
fn os_release_examples_from_the_issue() {
    for (text, want) in [
        ("ID=ubuntu\nVERSION_ID=\"24.04\"\n", "ubuntu 24.04"),
        ("ID=debian\nVERSION_ID=\"12\"\n", "debian 12"),
        ("ID=fedora\nVERSION_ID=42\n", "fedora 42"),
        ("ID=centos\nVERSION_ID=\"9\"\n", "centos stream9"),
        ("ID=amzn\nVERSION_ID=\"2023\"\n", "amazonlinux 2023"),
    ] {
        let v = OsRelease::parse(text).unwrap().distro_version().unwrap();
        assert_eq!(format!("{} {}", v.distribution(), v), want);
    }
}

#[test]
fn real_os_release_files_parse() {
    // Verbatim from Debian 12 (base-files 12.4+deb12u5) and Ubuntu 24.04 (base-files 13ubuntu10).
    let debian = include_str!("data/os-release.debian12");
    let ubuntu = include_str!("data/os-release.ubuntu2404");
    assert_eq!(
        OsRelease::parse(debian)
            .unwrap()
            .distro_version()
            .unwrap()
            .as_str(),
        "12"
    );
    assert_eq!(
        OsRelease::parse(ubuntu)
            .unwrap()
            .distro_version()
            .unwrap()
            .as_str(),
        "24.04"
    );
    for bad in [
        "ID=debian\nVERSION_ID=\"12\n",
        "ID debian",
        "ID=debian\nVERSION_ID=\"12\" trailing",
        "I-D=x",
    ] {
        let err = OsRelease::parse(bad).expect_err(bad);
        assert_eq!(err.field(), Field::OsRelease);
    }
    let no_version = OsRelease::parse("ID=debian\nPRETTY_NAME=\"Debian trixie/sid\"").unwrap();
    assert!(no_version.distro_version().is_err());
}

#[test]
fn arch_names_per_ecosystem() {
    assert_eq!(Arch::parse("amd64").unwrap().as_str(), "x86_64");
    assert_eq!(Arch::parse("aarch64").unwrap().debian_name(), "arm64");
    assert_eq!(Arch::parse("arm64").unwrap().rpm_name(), "aarch64");
}

#[test]
fn values_serialize_as_their_canonical_strings() {
    let d = Distribution::parse("centos").unwrap();
    let v = DistroVersion::supported(d, "stream10").unwrap();
    assert_eq!(v.codename(), None);
    assert_eq!(
        serde_json::to_string(&DriverVersion::parse("v0.5.16").unwrap()).unwrap(),
        "\"v0.5.16\""
    );
    assert!(serde_json::from_str::<KernelRelease>("\"6.1 0\"").is_err());
    assert_eq!(
        serde_json::from_str::<Arch>("\"arm64\"").unwrap(),
        Arch::Aarch64
    );
}

#[test]
fn the_repository_kernels_json_is_canonical() {
    let text = include_str!("../../../kernels.json");
    let file = KernelsFile::parse(text).unwrap();
    assert_eq!(
        file.to_json_string(),
        text,
        "kernels.json must be in canonical form"
    );
    let driver_version = DriverVersion::parse("v0.1.0").unwrap();
    for (arch, entry) in file.iter() {
        entry.identity(arch, &driver_version).unwrap();
    }
}
