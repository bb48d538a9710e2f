//! Fuzzes os-release(5) parsing and the mapping to a distro version.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    if let Ok(os) = kernel_id::OsRelease::parse(raw) {
        let _ = os.distro_version();
        let _ = os.id_like();
    }
});
