//! Fuzzes distro-version derivation from release strings and crawler targets.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, Option<&str>)| {
    let (release, target) = input;
    let _ = kernel_id::derive_distro_version(release, target);
});
