//! Host-mode nodes: a real Debian root (mmdebstrap, systemd as init, udev, systemd-networkd with
//! DHCP) on an ext4 virtio disk, with the project's own `deploy/systemd/driver-loader.service`
//! enabled and configured through `/etc/default/driver-loader`, so the loader runs as it would on
//! a VM: after `network-online.target`, installing the package with dpkg and loading the module
//! with modprobe. A report unit ordered after it prints the same markers as initramfs nodes
//! ([`crate::node`]) and powers the node off.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use testkit::initramfs::END_MARKER;
use testkit::{DiskImage, KernelImage, QemuConfig, debian_root};

use crate::node::{
    DMESG_MARKER, LOADER_EXIT_MARKER, MODULE_MARKER, NodeSpec, PreparedNode, RESULT_MARKER,
    RunningNode,
};
use crate::service::Service;
use crate::{LoaderSettings, node};

/// Packages of the node's root beside minbase.
pub const ROOT_PACKAGES: [&str; 3] = ["systemd-sysv", "udev", "kmod"];

const NETWORK_UNIT: &str = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n";

/// The report unit: runs once the loader's unit has finished (whatever its result). Its script
/// lives in a file because systemd would expand `$` in an inline ExecStart.
const REPORT_UNIT: &str = "[Unit]\n\
     Description=fleet host-mode report\n\
     Wants=driver-loader.service\n\
     After=driver-loader.service\n\n\
     [Service]\n\
     Type=oneshot\n\
     StandardOutput=tty\n\
     StandardError=tty\n\
     TTYPath=/dev/ttyS0\n\
     ExecStart=/bin/sh /usr/local/bin/fleet-report\n\
     ExecStartPost=/bin/systemctl --no-block poweroff\n\n\
     [Install]\n\
     WantedBy=multi-user.target\n";

fn report_script(module: &str) -> String {
    format!(
        "rc=$(systemctl show -p ExecMainStatus --value driver-loader.service)\n\
         echo \"{LOADER_EXIT_MARKER} rc=$rc\"\n\
         if [ -d /sys/module/{module} ]; then echo \"{MODULE_MARKER} present\"; else echo \"{MODULE_MARKER} absent\"; fi\n\
         dpkg-query -W -f 'FLEET-DPKG ${{Package}} ${{Version}} ${{Status}}\\n' '*example-driver*' 2>/dev/null\n\
         journalctl -b -u driver-loader.service --no-pager -o cat | sed 's/^/FLEET-JOURNAL /'\n\
         dmesg | grep '{module}:' | sed 's/^/{DMESG_MARKER} /'\n\
         if [ \"$rc\" = 0 ] && [ -d /sys/module/{module} ]; then echo \"{RESULT_MARKER} loaded\"; \
         elif [ \"$rc\" = 5 ] || [ \"$rc\" = 6 ] || [ \"$rc\" = 7 ] || [ \"$rc\" = 10 ] || [ \"$rc\" = 11 ]; then echo \"{RESULT_MARKER} refused\"; \
         else echo \"{RESULT_MARKER} failed\"; fi\n\
         echo \"{END_MARKER} rc=0\"\n"
    )
}

/// Writes the node's disk image and switch_root initramfs into `dir`.
pub fn prepare(
    spec: &NodeSpec,
    service: &Service,
    settings: &LoaderSettings,
    dir: &Path,
) -> Result<(PreparedNode, std::path::PathBuf)> {
    let codename = spec
        .distro_version
        .codename()
        .context("host-mode nodes are Debian: the distro version needs a codename")?;
    let kernel = KernelImage::fetch(spec.release.as_str(), spec.arch)?;
    let root = debian_root(codename, spec.arch, &ROOT_PACKAGES)?;
    let loader = testkit::musl_binary(
        "driver-loader",
        "driver-loader",
        "x86_64-unknown-linux-musl",
    )?;
    let unit =
        std::fs::read(testkit::workspace_root().join("deploy/systemd/driver-loader.service"))
            .context("reading deploy/systemd/driver-loader.service")?;
    let public_key = std::fs::read(&service.key().public_key)?;
    let environment = format!(
        "DRIVER_LOADER_DRIVER_NAME={}\nDRIVER_LOADER_DRIVER_VERSION={}\n\
         DRIVER_LOADER_ARTIFACT_BASE_URL={}\nDRIVER_LOADER_BUILD_SERVICE_URL={}\n\
         DRIVER_LOADER_PUBLIC_KEY_FILE=/etc/driver-loader/minisign.pub\n\
         DRIVER_LOADER_EXPECTED_SOURCE_REPOSITORY={}\nDRIVER_LOADER_ALLOWED_BUILDERS={}\n\
         DRIVER_LOADER_DEADLINE_SECONDS={}\n",
        settings.driver,
        settings.driver_version,
        service.node_artifact_base(),
        service.node_url(),
        service.source_repository(),
        crate::service::BUILDER_ID,
        settings.deadline.as_secs().max(1)
    );
    let module = settings.driver.module_name();
    std::fs::create_dir_all(dir)?;
    let disk = dir.join(format!("{}.root.img", spec.name));
    let wants = "/etc/systemd/system/multi-user.target.wants";
    DiskImage::from_root(&root)
        .kernel_modules(&kernel)
        .file(
            "/usr/local/bin/driver-loader",
            &std::fs::read(&loader)?,
            0o755,
        )
        .file("/etc/systemd/system/driver-loader.service", &unit, 0o644)
        .file("/etc/default/driver-loader", environment.as_bytes(), 0o644)
        .file("/etc/driver-loader/minisign.pub", &public_key, 0o644)
        .file(
            "/etc/systemd/network/10-fleet.network",
            NETWORK_UNIT.as_bytes(),
            0o644,
        )
        .file("/etc/hostname", spec.name.as_bytes(), 0o644)
        .file(
            "/etc/systemd/system/fleet-report.service",
            REPORT_UNIT.as_bytes(),
            0o644,
        )
        .file(
            "/usr/local/bin/fleet-report",
            report_script(&module).as_bytes(),
            0o755,
        )
        .symlink(
            &format!("{wants}/driver-loader.service"),
            "/etc/systemd/system/driver-loader.service",
        )
        .symlink(
            &format!("{wants}/fleet-report.service"),
            "/etc/systemd/system/fleet-report.service",
        )
        .symlink(
            &format!("{wants}/systemd-networkd.service"),
            "/lib/systemd/system/systemd-networkd.service",
        )
        .symlink(
            "/etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service",
            "/lib/systemd/system/systemd-networkd-wait-online.service",
        )
        .symlink(
            "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
            "/lib/systemd/system/systemd-networkd.socket",
        )
        .write(&disk)
        .context("writing the node's root disk")?;

    let initrd = dir.join(format!("{}.initrd.gz", spec.name));
    testkit::write_root_disk_initrd(spec.arch, &kernel, &initrd)?;
    let announce = format!(
        "{module}: loaded version={} built_for={release} running={release}",
        settings.driver_version,
        release = spec.release
    );
    Ok((
        PreparedNode {
            spec: spec.clone(),
            kernel,
            initrd,
            console: dir.join(format!("{}.console.log", spec.name)),
            announce,
            options: node::NodeOptions::default(),
        },
        disk,
    ))
}

/// Boots a prepared host-mode node from its disk.
pub fn boot(prepared: &PreparedNode, disk: &Path, hard_timeout: Duration) -> Result<RunningNode> {
    let vm = testkit::QemuNode::boot(
        QemuConfig::new(
            prepared.spec.arch,
            prepared.kernel.qemu_kernel(),
            &prepared.console,
        )
        .initrd(&prepared.initrd)
        .drive(disk, "raw", false)
        .memory_mib(1024)
        .hard_timeout(hard_timeout),
    )?;
    Ok(RunningNode {
        prepared: prepared.clone(),
        vm,
        started: std::time::Instant::now(),
    })
}

/// Boots and observes; the disk image is removed afterwards (2 GiB sparse).
pub fn run(
    prepared: &PreparedNode,
    disk: &Path,
    hard_timeout: Duration,
) -> Result<node::NodeOutcome> {
    let running = boot(prepared, disk, hard_timeout)?;
    let outcome = node::observe(running);
    let _ = std::fs::remove_file(disk);
    Ok(outcome)
}
