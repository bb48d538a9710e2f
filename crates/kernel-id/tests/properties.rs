//! Property tests: every parser round-trips what the crate itself prints, and no input makes any
//! parser panic.

use kernel_id::{
    Arch, Distribution, DistroVersion, DriverName, DriverVersion, KernelIdentity, KernelRelease,
    KernelsFile, OsRelease, ReleaseLayout, derive_distro_version,
};
use proptest::prelude::*;

fn release() -> impl Strategy<Value = KernelRelease> {
    "[0-9]{1,2}\\.[0-9]{1,3}[A-Za-z0-9._+~-]{0,40}"
        .prop_filter_map("valid release", |s| KernelRelease::parse(&s).ok())
}

fn driver_name() -> impl Strategy<Value = DriverName> {
    "[a-z][a-z0-9-]{0,30}".prop_filter_map("valid driver name", |s| DriverName::parse(&s).ok())
}

fn driver_version() -> impl Strategy<Value = DriverVersion> {
    (
        "[0-9]{1,3}",
        "[0-9]{1,3}",
        "[0-9]{1,3}",
        proptest::option::of("[a-z0-9]{1,6}(\\.[a-z0-9]{1,4}){0,2}"),
    )
        .prop_filter_map("valid driver version", |(a, b, c, pre)| {
            let raw = match pre {
                Some(pre) => format!("v{a}.{b}.{c}-{pre}"),
                None => format!("v{a}.{b}.{c}"),
            };
            DriverVersion::parse(&raw).ok()
        })
}

fn distro_version() -> impl Strategy<Value = DistroVersion> {
    let all: Vec<DistroVersion> = Distribution::all()
        .flat_map(|d| d.supported_versions())
        .collect();
    proptest::sample::select(all)
}

fn identity() -> impl Strategy<Value = KernelIdentity> {
    (
        release(),
        proptest::sample::select(Arch::ALL.to_vec()),
        distro_version(),
        driver_version(),
    )
        .prop_filter_map("consistent identity", |(r, a, d, v)| {
            KernelIdentity::new(r, a, d, v).ok()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn display_parse_round_trips(id in identity(), driver in driver_name()) {
        prop_assert_eq!(KernelRelease::parse(id.kernel_release().as_str()).unwrap(), id.kernel_release().clone());
        prop_assert_eq!(DriverVersion::parse(id.driver_version().as_str()).unwrap(), id.driver_version().clone());
        prop_assert_eq!(DriverName::parse(driver.as_str()).unwrap(), driver.clone());
        prop_assert_eq!(Arch::parse(id.arch().debian_name()).unwrap(), id.arch());
        prop_assert_eq!(KernelIdentity::from_input(&id.to_input()).unwrap(), id);
    }

    #[test]
    fn file_names_round_trip(id in identity(), driver in driver_name()) {
        let name = id.package_file_name(&driver);
        prop_assert_eq!(KernelIdentity::parse_package_file_name(&driver, &name).unwrap(), id.clone());
        let (parsed_driver, parsed) = KernelIdentity::parse_any_package_file_name(&name).unwrap();
        prop_assert_eq!(parsed_driver, driver);
        prop_assert_eq!(parsed, id);
    }

    #[test]
    fn names_stay_within_their_alphabets(id in identity(), driver in driver_name()) {
        let package = id.package_name(&driver);
        prop_assert!(package.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b)));
        let version = id.package_version();
        prop_assert!(version.starts_with(|c: char| c.is_ascii_digit()));
        for layout in [ReleaseLayout::PerArtifact, ReleaseLayout::PerDriverVersion] {
            let tag = layout.release_tag(&driver, &id);
            prop_assert!(!tag.contains(['~', ' ', ':', '^', '?', '*', '[', '\\']) && !tag.contains(".."));
            prop_assert!(!tag.ends_with('.') && !tag.ends_with(".lock"));
            let path = layout.package_path(&driver, &id);
            prop_assert!(path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%/".contains(&b)));
        }
    }

    #[test]
    fn kernels_json_insert_is_idempotent_and_canonical(ids in proptest::collection::vec(identity(), 0..12)) {
        let mut file = KernelsFile::default();
        for id in &ids {
            file.insert(id);
        }
        let text = file.to_json_string();
        let mut again = KernelsFile::parse(&text).unwrap();
        for id in &ids {
            prop_assert!(!again.insert(id));
        }
        prop_assert_eq!(again.to_json_string(), text);
    }

    #[test]
    fn parsers_never_panic(raw in "\\PC{0,200}") {
        let _ = KernelRelease::parse(&raw);
        let _ = DriverName::parse(&raw);
        let _ = DriverVersion::parse(&raw);
        let _ = Arch::parse(&raw);
        let _ = Distribution::parse(&raw);
        for d in Distribution::all() {
            let _ = DistroVersion::parse(d, &raw);
        }
        let _ = OsRelease::parse(&raw).map(|os| os.distro_version());
        let _ = KernelsFile::parse(&raw);
        let _ = derive_distro_version(&raw, Some(&raw));
        let _ = KernelIdentity::parse_any_package_file_name(&raw);
        let _ = ReleaseLayout::parse(&raw);
    }
}
