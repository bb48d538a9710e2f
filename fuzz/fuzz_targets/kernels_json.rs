//! Fuzzes kernels.json parsing: whatever parses must print canonically and parse back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    if let Ok(file) = kernel_id::KernelsFile::parse(raw) {
        let text = file.to_json_string();
        let again = kernel_id::KernelsFile::parse(&text).expect("canonical output parses");
        assert_eq!(again.to_json_string(), text);
    }
});
