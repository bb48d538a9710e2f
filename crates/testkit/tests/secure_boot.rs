//! A kernel that enforces module signatures, trusting a key only because UEFI's `db` holds its
//! certificate: Debian's stock 6.1.0-47-amd64 booted through OVMF whose variable store has a test
//! certificate enrolled in `db` ([`testkit::uefi::vars_with_db`]), with `module.sig_enforce=1`.
//!
//! From one VM's initramfs, busybox `insmod` tries three copies of the kernel's own small `dummy`
//! module: Debian's signature stripped (unsigned), re-signed by a second test key that is in no
//! keyring, and re-signed by the enrolled key. The kernel is the judge: it refuses the first two
//! ("Loading of unsigned module is rejected", "Loading of module with unavailable key is
//! rejected") and loads the third. The guest prints `sig_enforce` (Y), the `.platform` keyring
//! and the asymmetric keys from `/proc/keys`, and the kernel's own line for the certificate it took from `db`
//! (`integrity: Loaded X.509 cert '<CN>: <subject key id>'`), which must name the enrolled key.
//!
//! No skip: without ovmf, python3-virt-firmware or openssl the test fails naming the package.

use std::time::{Duration, Instant};

use kernel_id::Arch;
use testkit::initramfs::{END_MARKER, INIT_MARKER};
use testkit::modsign::{self, ModuleKey};
use testkit::uefi::{self, UefiFirmware};
use testkit::{Initramfs, KernelImage, Network, QemuConfig, QemuNode, StandardInit, test_log_dir};

const RELEASE: &str = "6.1.0-47-amd64";
/// A small module of the kernel's own tree with no dependencies.
const MODULE: &str = "dummy";
/// The three copies, in the order the guest tries them (the loadable one last, so a refusal is
/// never masked by the module already being there).
const COPIES: [&str; 3] = ["unsigned", "foreign", "signed"];
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

/// The rest of the console line that starts with `marker` (after the space), if any.
fn marker<'a>(console: &'a str, marker: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|line| line.trim().strip_prefix(marker)?.strip_prefix(' '))
        .map(str::trim)
}

#[test]
fn enforcing_kernel_loads_only_the_module_signed_by_the_key_enrolled_in_db() {
    let dir = test_log_dir("testkit-secure-boot").expect("log dir");
    let arch = Arch::parse("x86_64").expect("arch");
    let kernel = KernelImage::fetch(RELEASE, arch).expect("kernel 6.1.0-47-amd64");

    let trusted = ModuleKey::generate(&dir.join("trusted-key"), "kdriver testkit trusted key")
        .expect("trusted key");
    let foreign = ModuleKey::generate(&dir.join("foreign-key"), "kdriver testkit foreign key")
        .expect("foreign key");

    // The kernel's own module, as Debian shipped it (signed by Debian's build key), made unsigned.
    let module = kernel.module(MODULE).expect("dummy in the image");
    let closure = kernel.module_closure(&[MODULE]).expect("closure");
    assert_eq!(
        closure.len(),
        1,
        "{MODULE} must have no dependencies: {closure:?}"
    );
    let shipped = module.contents().expect("module bytes");
    let unsigned = modsign::strip_signature(&shipped)
        .expect("Debian's signature trailer")
        .expect("Debian ships the module signed");
    let unsigned_path = dir.join(format!("{MODULE}-unsigned.ko"));
    std::fs::write(&unsigned_path, &unsigned).expect("write unsigned");
    let foreign_path = dir.join(format!("{MODULE}-foreign.ko"));
    modsign::sign_module(&unsigned_path, &foreign, &foreign_path).expect("sign with foreign key");
    let signed_path = dir.join(format!("{MODULE}-signed.ko"));
    modsign::sign_module(&unsigned_path, &trusted, &signed_path).expect("sign with trusted key");

    // db holds the trusted certificate (given as DER, as the build-service publishes it).
    let vars = uefi::vars_with_db(&trusted.cert_der, &dir.join("vars-with-db.fd"))
        .expect("variable store with the trusted certificate in db");
    let firmware = UefiFirmware::ovmf(&vars).expect("OVMF");

    let mut init = StandardInit::new()
        .network(Network::None)
        .command("echo \"SB-SIG-ENFORCE $(cat /sys/module/module/parameters/sig_enforce)\"")
        .command("grep -E ' \\.platform: |asymmetri' /proc/keys | sed 's/^/SB-KEYS /'")
        .command("dmesg | grep -F 'integrity: Loaded X.509 cert' | sed 's/^/SB-PLATFORM-CERT /'");
    for copy in COPIES {
        init = init.command(format!(
            "dmesg -c > /dev/null\n\
             insmod /sb/{MODULE}-{copy}.ko; rc=$?\n\
             echo \"SB-INSMOD-{copy} rc=$rc\"\n\
             dmesg | sed 's/^/SB-KMSG-{copy} /'\n\
             if [ -d /sys/module/{MODULE} ]; then echo \"SB-MODULE-{copy} present\"; \
             else echo \"SB-MODULE-{copy} absent\"; fi"
        ));
    }
    let mut image = Initramfs::new(arch).expect("initramfs skeleton");
    for (copy, path) in [
        ("unsigned", &unsigned_path),
        ("foreign", &foreign_path),
        ("signed", &signed_path),
    ] {
        image
            .file_from_host(&format!("/sb/{MODULE}-{copy}.ko"), path, 0o644)
            .expect("module copy");
    }
    image.init(&init.render()).expect("init");
    let initrd = dir.join("initrd.gz");
    image.write(&initrd).expect("initramfs");

    // The bzImage, not the PVH vmlinux: UEFI boots the kernel's EFI stub, which is how the kernel
    // gets to read db.
    let config = QemuConfig::new(arch, kernel.vmlinuz(), &dir.join("console.log"))
        .initrd(&initrd)
        .user_network(false)
        .firmware(firmware)
        .append("module.sig_enforce=1")
        .hard_timeout(BOOT_TIMEOUT + Duration::from_secs(30));
    eprintln!("qemu-system-x86_64 {}", config.qemu_args().join(" "));
    let started = Instant::now();
    let node = QemuNode::boot(config).expect("qemu starts");
    node.wait_for_line(INIT_MARKER, BOOT_TIMEOUT)
        .expect("init marker");
    let to_init = started.elapsed();
    node.wait_for_line(END_MARKER, BOOT_TIMEOUT)
        .expect("end marker");
    let console = node.run_to_completion().expect("VM powers off");
    eprintln!(
        "secure boot {RELEASE}: init after {:.1}s, powered off after {:.1}s (console {})",
        to_init.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        dir.join("console.log").display()
    );
    for line in console.lines().filter(|line| {
        line.starts_with("SB-") && !line.starts_with("SB-KMSG") || line.contains("rejected")
    }) {
        eprintln!("guest: {line}");
    }

    // The kernel enforces signatures and took the certificate from db into .platform.
    assert_eq!(
        marker(&console, "SB-SIG-ENFORCE"),
        Some("Y"),
        "sig_enforce must be on:\n{console}"
    );
    let description = trusted
        .kernel_description()
        .expect("trusted key description");
    let platform = marker(&console, "SB-PLATFORM-CERT").unwrap_or_default();
    assert!(
        platform.contains(&format!("integrity: Loaded X.509 cert '{description}'")),
        "the kernel must load the db certificate '{description}' into the platform keyring:\n{console}"
    );
    let foreign_description = foreign.kernel_description().expect("foreign description");
    assert!(
        !console.contains(&foreign_description),
        "the foreign key must be in no keyring:\n{console}"
    );
    let keys: Vec<&str> = console
        .lines()
        .filter(|line| line.starts_with("SB-KEYS "))
        .collect();
    assert!(
        keys.iter()
            .any(|line| line.contains(" keyring ") && line.contains(".platform: 1")),
        "/proc/keys must show the .platform keyring holding one key:\n{console}"
    );
    assert!(
        keys.iter()
            .any(|line| line.contains(&format!(" asymmetri {description}: X509."))),
        "/proc/keys must list the db certificate's key:\n{console}"
    );

    // The kernel's verdicts, each from its own attempt's kernel log.
    let verdicts = [
        ("unsigned", false, "Loading of unsigned module is rejected"),
        (
            "foreign",
            false,
            "Loading of module with unavailable key is rejected",
        ),
        ("signed", true, ""),
    ];
    for (copy, loads, kernel_message) in verdicts {
        let rc = marker(&console, &format!("SB-INSMOD-{copy}"))
            .unwrap_or_else(|| panic!("no insmod result for the {copy} copy:\n{console}"));
        let state = marker(&console, &format!("SB-MODULE-{copy}"));
        let kmsg: Vec<&str> = console
            .lines()
            .filter(|line| line.starts_with(&format!("SB-KMSG-{copy} ")))
            .collect();
        if loads {
            assert_eq!(rc, "rc=0", "the {copy} copy must load:\n{console}");
            assert_eq!(state, Some("present"), "{console}");
            assert!(
                !kmsg.iter().any(|line| line.contains("rejected")),
                "{kmsg:?}"
            );
        } else {
            assert_ne!(rc, "rc=0", "the {copy} copy must be refused:\n{console}");
            assert_eq!(
                state,
                Some("absent"),
                "the {copy} copy must not be loaded:\n{console}"
            );
            assert!(
                kmsg.iter().any(|line| line.contains(kernel_message)),
                "the kernel must say '{kernel_message}' for the {copy} copy: {kmsg:?}\n{console}"
            );
        }
    }
    assert!(
        console.contains("Key was rejected by service"),
        "insmod reports the kernel's EKEYREJECTED:\n{console}"
    );
    assert!(console.contains(&format!("{END_MARKER} rc=0")), "{console}");
}
