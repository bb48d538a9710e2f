//! Fuzzes `KernelRelease::parse`: accepted strings must stay inside the documented alphabet.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    if let Ok(release) = kernel_id::KernelRelease::parse(raw) {
        assert!(release.as_str().len() <= kernel_id::MAX_RELEASE_LEN);
        assert!(
            release
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
        );
        assert!(!release.as_str().contains(".."));
    }
});
