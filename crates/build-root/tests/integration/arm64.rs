//! An arm64 root on this host: emulated with qemu user mode on x86_64, native on aarch64.

use build_root::host::{self, Emulation, HostFacts};
use kernel_id::Arch;

use crate::helpers::{self, DRIVER_VERSION};

const ARM64_RELEASE: &str = "6.1.0-47-arm64";

#[test]
fn bookworm_arm64_root_builds_the_sample_driver_for_6_1_0_47_arm64() {
    if let Emulation::Unavailable(reason) = HostFacts::probe(Arch::Aarch64).emulation {
        // The test enables emulation itself when it can (CI runs as root with qemu-user-static). A
        // host where that is impossible fails: a skipped test would pass without an arm64 build.
        if let Err(error) = host::enable_emulation(Arch::Aarch64) {
            panic!("arm64 emulation unavailable ({reason}) and could not be enabled: {error}");
        }
        let status = HostFacts::probe(Arch::Aarch64).emulation;
        assert_eq!(
            status,
            Emulation::Enabled,
            "update-binfmts ran but emulation is still unavailable"
        );
    }
    let identity = helpers::identity(ARM64_RELEASE, "arm64", "12");
    let scratch = tempfile::tempdir().expect("tempdir");
    let build = helpers::build_sample_driver(
        &identity,
        &scratch.path().join("out"),
        &scratch.path().join("build.log"),
    );
    let vermagic = helpers::modinfo(&build.module, "vermagic");
    assert!(
        vermagic.starts_with(&format!("{ARM64_RELEASE} ")),
        "{vermagic}"
    );
    assert!(vermagic.contains("aarch64"), "{vermagic}");
    assert_eq!(helpers::modinfo(&build.module, "version"), DRIVER_VERSION);
    let elf = std::fs::read(&build.module).expect("module");
    // e_machine at offset 18, little-endian: 183 is EM_AARCH64.
    assert_eq!(
        u16::from_le_bytes([elf[18], elf[19]]),
        183,
        "not an aarch64 ELF"
    );
}
