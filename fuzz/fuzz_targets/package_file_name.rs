//! Fuzzes package file name parsing with and without a known driver name.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    if let Ok((driver, identity)) = kernel_id::KernelIdentity::parse_any_package_file_name(raw) {
        assert_eq!(identity.package_file_name(&driver), raw);
    }
    let driver = kernel_id::DriverName::parse("example-driver").expect("valid name");
    if let Ok(identity) = kernel_id::KernelIdentity::parse_package_file_name(&driver, raw) {
        assert_eq!(identity.package_file_name(&driver), raw);
    }
});
