//! Fuzzes the request-body path: JSON -> `IdentityInput` -> `KernelIdentity`, and checks that an
//! accepted identity's file name parses back to the same identity.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<kernel_id::IdentityInput>(data) else {
        return;
    };
    if let Ok(identity) = kernel_id::KernelIdentity::from_input(&input) {
        let driver = kernel_id::DriverName::parse("example-driver").expect("valid name");
        let name = identity.package_file_name(&driver);
        let parsed = kernel_id::KernelIdentity::parse_package_file_name(&driver, &name);
        assert_eq!(parsed.as_ref(), Ok(&identity));
    }
});
