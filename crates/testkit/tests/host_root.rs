//! Host-mode plumbing: a real Debian root made by mmdebstrap (systemd as init) on an ext4 virtio
//! disk, booted through testkit's switch_root initramfs on a real Debian kernel. A systemd unit in
//! the image loads an in-tree module with `modprobe` (the kernel's modules were installed into
//! the image) and powers the node off.

use std::time::{Duration, Instant};

use kernel_id::Arch;
use testkit::initramfs::{INIT_MARKER, INSMOD_FAILED_MARKER};
use testkit::{DiskImage, KernelImage, QemuConfig, QemuNode, debian_root, test_log_dir};

const MARKER_UNIT: &str = "[Unit]
Description=testkit host-mode marker
After=local-fs.target

[Service]
Type=oneshot
StandardOutput=tty
TTYPath=/dev/ttyS0
ExecStart=/bin/sh -c 'echo \"TESTKIT-ROOT-UP $(uname -r) pid1=$(cat /proc/1/comm)\"; modprobe dummy && test -d /sys/module/dummy && echo TESTKIT-ROOT-MODULE-LIVE'
ExecStartPost=/bin/systemctl --no-block poweroff

[Install]
WantedBy=multi-user.target
";

#[test]
fn debian_root_with_systemd_boots_from_a_virtio_disk_and_modprobes() {
    let dir = test_log_dir("testkit-host-root").expect("log dir");
    let arch = Arch::parse("amd64").expect("arch");
    let kernel = KernelImage::fetch("6.1.0-47-amd64", arch).expect("kernel");
    let root = debian_root("bookworm", arch, &["systemd-sysv", "kmod"]).expect("mmdebstrap root");
    let disk = dir.join("root.img");
    DiskImage::from_root(&root)
        .kernel_modules(&kernel)
        .file(
            "/etc/systemd/system/testkit-marker.service",
            MARKER_UNIT.as_bytes(),
            0o644,
        )
        .symlink(
            "/etc/systemd/system/multi-user.target.wants/testkit-marker.service",
            "/etc/systemd/system/testkit-marker.service",
        )
        .write(&disk)
        .expect("disk image");

    let initrd = dir.join("initrd.gz");
    testkit::write_root_disk_initrd(arch, &kernel, &initrd).expect("initramfs");

    let started = Instant::now();
    let node = QemuNode::boot(
        QemuConfig::new(arch, kernel.qemu_kernel(), &dir.join("console.log"))
            .initrd(&initrd)
            .drive(&disk, "raw", false)
            .memory_mib(1024)
            .hard_timeout(Duration::from_secs(300)),
    )
    .expect("qemu starts");
    node.wait_for_line(INIT_MARKER, Duration::from_secs(150))
        .expect("initramfs ran");
    let up = node
        .wait_for_line("TESTKIT-ROOT-UP", Duration::from_secs(280))
        .expect("systemd ran the unit");
    eprintln!(
        "host root: unit ran after {:.2}s",
        started.elapsed().as_secs_f64()
    );
    assert!(up.contains("6.1.0-47-amd64 pid1=systemd"), "{up}");
    let console = node.run_to_completion().expect("node powers off");
    assert!(!console.contains(INSMOD_FAILED_MARKER), "{console}");
    assert!(console.contains("TESTKIT-ROOT-MODULE-LIVE"), "{console}");
    // The 2 GiB image is only useful while debugging a failure; keep the console and initramfs.
    std::fs::remove_file(&disk).expect("remove disk image");
}
