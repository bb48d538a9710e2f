//! Host mode for real: qemu boots Debian's 6.1.0-47-amd64 into a real bookworm root (mmdebstrap, systemd
//! as init, the kernel's modules installed) where the project's own `deploy/systemd/driver-loader.service`
//! with an environment file runs the static loader at boot. It downloads the sample driver's package
//! (built by driver-builder) from a loopback artifact server, verifies it (digest, signature by a key of
//! the trusted keys directory, provenance under the policy of the environment file), installs it with
//! dpkg and modprobes it; a reporting unit ordered after it prints the unit's result, the dpkg status and whether
//! `/sys/module/example_driver` exists, then powers the node off.

mod common;

use std::time::Duration;

use common::sample::sample_build;
use common::*;
use kernel_id::Arch;
use testkit::{DiskImage, KernelImage, QemuConfig, QemuNode, debian_root};

const REPORT_SCRIPT: &str = r#"#!/bin/sh
echo "HOSTMODE-UNIT $(systemctl is-active driver-loader.service) status=$(systemctl show -p ExecMainStatus --value driver-loader.service)"
if [ -d /sys/module/example_driver ]; then echo "HOSTMODE-MODULE live srcversion=$(cat /sys/module/example_driver/srcversion)"; else echo "HOSTMODE-MODULE absent"; fi
dpkg-query -W -f='HOSTMODE-DPKG ${Package} ${Version} ${Status}\n' 'example-driver*' 2>&1
sed 's/^/HOSTMODE-READY /' /run/driver-loader/ready 2>&1
journalctl -b -u driver-loader.service --no-pager -o cat | sed 's/^/HOSTMODE-JOURNAL /'
"#;

const REPORT_UNIT: &str = "[Unit]
Description=host-mode test report
After=driver-loader.service

[Service]
Type=oneshot
StandardOutput=tty
TTYPath=/dev/ttyS0
ExecStart=/usr/local/bin/hostmode-report
ExecStartPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
";

#[test]
fn the_systemd_unit_installs_the_package_with_dpkg_and_the_module_goes_live() {
    let keys = Keys::generate();
    let build = sample_build(RELEASE);
    let id = identity(RELEASE);
    let package = std::fs::read(&build.package).expect("sample package for 6.1.0-47");
    // Signed as the service signs it, with the provenance of this very build.
    let artifact = Artifact::from_package(&keys, &id, package)
        .with_provenance(&keys, &id, |p| build.describe(p));
    let server = TestServer::start(move |r| artifact.answer(r).unwrap_or_else(Response::not_found));
    let port = server.addr.port();

    let kernel = KernelImage::fetch(RELEASE, Arch::X86_64).expect("kernel");
    let root = debian_root("bookworm", Arch::X86_64, &["systemd-sysv", "kmod", "udev"])
        .expect("mmdebstrap root");
    let loader = testkit::musl_binary(
        "driver-loader",
        "driver-loader",
        "x86_64-unknown-linux-musl",
    )
    .expect("loader");
    let unit =
        std::fs::read(testkit::workspace_root().join("deploy/systemd/driver-loader.service"))
            .expect("unit file");
    let env = format!(
        "DRIVER_LOADER_DRIVER_NAME={DRIVER}\nDRIVER_LOADER_DRIVER_VERSION={VERSION}\n\
         DRIVER_LOADER_ARTIFACT_BASE_URL=http://10.0.2.2:{port}/releases/download\n\
         DRIVER_LOADER_TRUSTED_KEYS_DIR=/etc/driver-loader/trusted-keys\n\
         DRIVER_LOADER_EXPECTED_SOURCE_REPOSITORY={SOURCE_REPOSITORY}\n\
         DRIVER_LOADER_ALLOWED_BUILDERS=https://ci.example.invalid/other-builder,{BUILDER_ID}\n\
         DRIVER_LOADER_DEADLINE_SECONDS=120\n"
    );
    let work = tempfile::tempdir().expect("work dir");
    let disk = work.path().join("root.img");
    DiskImage::from_root(&root)
        .kernel_modules(&kernel)
        .file(
            "/usr/local/bin/driver-loader",
            &std::fs::read(&loader).expect("loader"),
            0o755,
        )
        .file("/etc/systemd/system/driver-loader.service", &unit, 0o644)
        .symlink(
            "/etc/systemd/system/multi-user.target.wants/driver-loader.service",
            "/etc/systemd/system/driver-loader.service",
        )
        .file("/etc/default/driver-loader", env.as_bytes(), 0o644)
        .file(
            "/etc/driver-loader/trusted-keys/builder.pub",
            &std::fs::read(&keys.public_key_file).expect("pub"),
            0o644,
        )
        .qemu_user_network()
        .file(
            "/usr/local/bin/hostmode-report",
            REPORT_SCRIPT.as_bytes(),
            0o755,
        )
        .file(
            "/etc/systemd/system/hostmode-report.service",
            REPORT_UNIT.as_bytes(),
            0o644,
        )
        .symlink(
            "/etc/systemd/system/multi-user.target.wants/hostmode-report.service",
            "/etc/systemd/system/hostmode-report.service",
        )
        .write(&disk)
        .expect("disk image");

    let initrd = work.path().join("initrd.gz");
    testkit::write_root_disk_initrd(Arch::X86_64, &kernel, &initrd).expect("initramfs");
    let node = QemuNode::boot(
        QemuConfig::new(
            Arch::X86_64,
            kernel.vmlinuz(),
            &work.path().join("console.log"),
        )
        .initrd(&initrd)
        .drive(&disk, "raw", false)
        .memory_mib(1024)
        .hard_timeout(Duration::from_secs(420)),
    )
    .expect("boot");
    let console = node
        .run_to_completion()
        .unwrap_or_else(|e| panic!("host-mode node did not finish: {e}"));
    let _ = std::fs::create_dir_all(testkit::cache_dir().join("driver-loader"));
    let _ = std::fs::write(
        testkit::cache_dir().join("driver-loader/vm-host-console.log"),
        &console,
    );

    let unit_line = console
        .lines()
        .find(|l| l.contains("HOSTMODE-UNIT"))
        .unwrap_or_else(|| panic!("{console}"));
    assert!(
        unit_line.contains("HOSTMODE-UNIT active status=0"),
        "{console}"
    );
    assert!(console.contains("HOSTMODE-MODULE live"), "{console}");
    assert!(
        console.contains("package verified: digest, signature and provenance")
            && console.contains(build.source_commit.as_str()),
        "the journal must show the verified provenance: {console}"
    );
    assert!(
        console.contains("install ok installed"),
        "dpkg must have installed the package: {console}"
    );
    assert!(
        console.contains(&format!(
            "example_driver: loaded version={VERSION} built_for={RELEASE} running={RELEASE}"
        )),
        "{console}"
    );
    assert!(
        console.contains("HOSTMODE-READY example_driver: loaded"),
        "{console}"
    );
    drop(server);
}
