//! Fleet nodes: a real Debian kernel booted under qemu (TCG) into an initramfs whose `/init` runs
//! the static `driver-loader` in container mode against the service, then reports what happened
//! on the serial console with markers the harness reads:
//!
//! - `FLEET-START open|failed`: a node booted with others came through their start gate
//!   ([`crate::gate`]); absent on a node booted alone;
//! - `FLEET-LOADER-EXIT rc=<code>`: the loader's exit code (see the loader's README table);
//! - `FLEET-MODULE present|absent`: whether `/sys/module/<module>` exists afterwards (a console
//!   without this line says neither: the node died or was killed first);
//! - `FLEET-DMESG: <line>`: the driver's own kernel-log lines, copied from `dmesg`;
//! - `FLEET-RESULT loaded|refused|failed`: the verdict in one word (`refused`: the loader exited 5, 6, 7,
//!   10 or 11 — the service refused the request, verification, provenance or compatibility refused
//!   the package, or the module's signature was refused, by the loader's pre-check or the kernel).
//!
//! The judge is the kernel: a node counts as loaded only when the driver's own line
//! (`example_driver: loaded version=... built_for=<release> running=<release>`) is on the console.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kernel_id::{Arch, DistroVersion, DriverName, DriverVersion, KernelIdentity, KernelRelease};
use testkit::initramfs::{END_MARKER, shell_quote};
use testkit::{Initramfs, KernelImage, Network, QemuConfig, QemuNode, StandardInit, UefiFirmware};

use crate::gate::{self, START_GATE_TIMEOUT, StartGate};
use crate::service::Service;

pub const LOADER_EXIT_MARKER: &str = "FLEET-LOADER-EXIT";
pub const MODULE_MARKER: &str = "FLEET-MODULE";
pub const DMESG_MARKER: &str = "FLEET-DMESG:";
pub const RESULT_MARKER: &str = "FLEET-RESULT";
pub const PREFETCH_EXIT_MARKER: &str = "FLEET-PREFETCH-EXIT";
/// Where a node's loader keeps its package cache (the cache disk's mount point).
pub const NODE_CACHE_DIR: &str = "/var/cache/driver-loader";

/// Modules a node needs for qemu's virtio-net NIC (their dependencies come along).
pub const NETWORK_MODULES: [&str; 2] = ["virtio_pci", "virtio_net"];

/// One node to boot: which kernel and which Debian version its os-release claims.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// A short name for files (`cold`, `herd-2`).
    pub name: String,
    pub release: KernelRelease,
    pub arch: Arch,
    pub distro_version: DistroVersion,
}

impl NodeSpec {
    /// A Debian amd64 node; `debian_version` is "11", "12" or "13".
    pub fn debian(name: &str, release: &str, debian_version: &str) -> Result<NodeSpec> {
        NodeSpec::debian_on(Arch::X86_64, name, release, debian_version)
    }

    /// A Debian node of `arch` (booted with qemu-system-x86_64 or qemu-system-aarch64).
    pub fn debian_on(
        arch: Arch,
        name: &str,
        release: &str,
        debian_version: &str,
    ) -> Result<NodeSpec> {
        let debian = kernel_id::Distribution::parse("debian")?;
        Ok(NodeSpec {
            name: name.to_owned(),
            release: KernelRelease::parse(release).context("kernel release")?,
            arch,
            distro_version: DistroVersion::supported(debian, debian_version)
                .context("debian version")?,
        })
    }

    /// The identity the loader on this node will ask for.
    pub fn identity(&self, driver_version: &DriverVersion) -> Result<KernelIdentity> {
        Ok(KernelIdentity::new(
            self.release.clone(),
            self.arch,
            self.distro_version.clone(),
            driver_version.clone(),
        )?)
    }

    fn os_release(&self) -> String {
        let version = self.distro_version.as_str();
        let codename = self.distro_version.codename().unwrap_or("unknown");
        format!(
            "PRETTY_NAME=\"Debian GNU/Linux {version} ({codename})\"\nNAME=\"Debian GNU/Linux\"\n\
             VERSION_ID=\"{version}\"\nVERSION=\"{version} ({codename})\"\n\
             VERSION_CODENAME={codename}\nID=debian\n"
        )
    }
}

/// What the loader is told; the same for every node of a run.
#[derive(Debug, Clone)]
pub struct LoaderSettings {
    pub driver: DriverName,
    pub driver_version: DriverVersion,
    /// Overall loader deadline (covers waiting for an on-demand build).
    pub deadline: Duration,
}

impl LoaderSettings {
    pub fn new(driver: DriverName, driver_version: DriverVersion) -> LoaderSettings {
        LoaderSettings {
            driver,
            driver_version,
            deadline: Duration::from_secs(25 * 60),
        }
    }
}

/// What a node does beyond the defaults (BIOS boot, the standard kernel command line, the loader's
/// standard flags); `NodeOptions::default()` changes nothing.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Boot through this UEFI firmware (x86_64 only; see `testkit::uefi`). The node then boots
    /// the kernel's bzImage, whose EFI stub lets the kernel read the firmware's variables (`db`).
    pub firmware: Option<UefiFirmware>,
    /// Extra kernel command-line words, e.g. `module.sig_enforce=1`.
    pub kernel_args: Vec<String>,
    /// Extra loader arguments (shell-quoted here), placed before its `run` subcommand.
    pub loader_args: Vec<String>,
    /// Guest shell commands run after the network is up and before the loader; what they print
    /// is on the console.
    pub commands_before_loader: Vec<String>,
    /// An ext4 disk image (see [`make_cache_disk`]) mounted as the loader's cache directory, so a
    /// node rebooted with the same disk finds what its previous boot cached.
    pub cache_disk: Option<PathBuf>,
    /// Boot without any network device: nothing the node does can reach a server.
    pub offline: bool,
    /// Kernels installed on the node besides the running one (`/lib/modules/<R>/` with
    /// `/boot/vmlinuz-<R>`), as unattended-upgrades leaves them before the reboot.
    pub installed_kernels: Vec<KernelImage>,
    /// After `run`, run `driver-loader prefetch` with the same options ([`PREFETCH_EXIT_MARKER`]).
    pub prefetch_after_run: bool,
    /// The node's `/etc/machine-id` (32 hex digits); default: derived from the node's name, so a
    /// node booted again under the same name is the same machine.
    pub machine_id: Option<String>,
}

/// Creates an empty ext4 image of `size_mib` for [`NodeOptions::cache_disk`].
pub fn make_cache_disk(path: &Path, size_mib: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(u64::from(size_mib) * 1024 * 1024)?;
    drop(file);
    let status = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "kdriver-cache"])
        .arg(path)
        .status()
        .context("running mkfs.ext4 (e2fsprogs)")?;
    anyhow::ensure!(
        status.success(),
        "mkfs.ext4 {} failed: {status}",
        path.display()
    );
    Ok(())
}

/// The machine-id a node gets when its options name none: stable per node name.
fn default_machine_id(name: &str) -> String {
    integrity::sha256_bytes(format!("fleet-node:{name}").as_bytes()).to_hex()[..32].to_owned()
}

/// A node whose kernel and initramfs are ready to boot.
#[derive(Debug, Clone)]
pub struct PreparedNode {
    pub spec: NodeSpec,
    pub kernel: KernelImage,
    pub initrd: PathBuf,
    pub console: PathBuf,
    pub announce: String,
    /// Firmware and kernel command line for [`boot`]; the loader's options are in the initramfs.
    pub options: NodeOptions,
}

/// Fetches the kernel and writes the node's initramfs into `dir`.
pub fn prepare(
    spec: &NodeSpec,
    service: &Service,
    settings: &LoaderSettings,
    dir: &Path,
) -> Result<PreparedNode> {
    prepare_with_options(spec, service, settings, &NodeOptions::default(), dir)
}

/// [`prepare`] with `options`.
pub fn prepare_with_options(
    spec: &NodeSpec,
    service: &Service,
    settings: &LoaderSettings,
    options: &NodeOptions,
    dir: &Path,
) -> Result<PreparedNode> {
    let kernel = KernelImage::fetch(spec.release.as_str(), spec.arch)
        .with_context(|| format!("fetching kernel {}", spec.release))?;
    let loader = testkit::musl_binary("driver-loader", "driver-loader", musl_target(spec.arch))
        .context("building the static driver-loader")?;
    let mut image = Initramfs::new(spec.arch)?;
    let mut wanted_modules: Vec<&str> = Vec::new();
    if !options.offline {
        wanted_modules.extend(NETWORK_MODULES);
    }
    if options.cache_disk.is_some() {
        for module in testkit::ROOT_DISK_MODULES {
            if !wanted_modules.contains(&module) {
                wanted_modules.push(module);
            }
        }
    }
    let modules = image.kernel_modules(&kernel, &wanted_modules)?;
    let machine_id = options
        .machine_id
        .clone()
        .unwrap_or_else(|| default_machine_id(&spec.name));
    image.file(
        "/etc/machine-id",
        format!("{machine_id}\n").as_bytes(),
        0o444,
    )?;
    for installed in &options.installed_kernels {
        let release = installed.release().as_str();
        image.file_from_host(
            &format!("/boot/vmlinuz-{release}"),
            installed.vmlinuz(),
            0o644,
        )?;
        for index in ["modules.order", "modules.builtin", "modules.dep"] {
            let host = installed.modules_dir().join(index);
            if host.exists() {
                image.file_from_host(&format!("/lib/modules/{release}/{index}"), &host, 0o644)?;
            }
        }
    }
    image
        .file_from_host("/bin/driver-loader", &loader, 0o755)?
        .file("/etc/os-release", spec.os_release().as_bytes(), 0o644)?
        .file_from_host(
            "/etc/driver-loader/minisign.pub",
            &service.key().public_key,
            0o644,
        )?;
    let module = settings.driver.module_name();
    let loader_base = format!(
        "/bin/driver-loader --driver-name {driver} --driver-version {version} \
         --artifact-base-url {base} --build-service-url {service_url} \
         --public-key-file /etc/driver-loader/minisign.pub \
         --expected-source-repository {repository} --allowed-builder {builder} \
         --cache-dir {NODE_CACHE_DIR} \
         --mode container --deadline-seconds {deadline} --ready-file /run/driver-loader/ready{extra}",
        repository = shell_quote(service.source_repository()),
        builder = shell_quote(crate::service::BUILDER_ID),
        driver = shell_quote(settings.driver.as_str()),
        version = shell_quote(settings.driver_version.as_str()),
        base = shell_quote(&service.node_artifact_base()),
        service_url = shell_quote(&service.node_url()),
        deadline = settings.deadline.as_secs().max(1),
        extra = options
            .loader_args
            .iter()
            .map(|arg| format!(" {}", shell_quote(arg)))
            .collect::<String>(),
    );
    let loader_command = format!("{loader_base} run");
    let mut init = StandardInit::new()
        .modules(modules)
        .network(if options.offline {
            Network::None
        } else {
            Network::Static
        });
    if options.cache_disk.is_some() {
        init = init.command(format!(
            "mkdir -p {NODE_CACHE_DIR} && mount -t ext4 /dev/vda {NODE_CACHE_DIR} \
             && echo 'FLEET-CACHE-DISK mounted' || echo 'FLEET-CACHE-DISK failed'"
        ));
    }
    for command in &options.commands_before_loader {
        init = init.command(command.clone());
    }
    let init = init
        .command(gate::init_command(&spec.name))
        .command(format!(
            "{loader_command}; rc=$?; echo \"{LOADER_EXIT_MARKER} rc=$rc\""
        ))
        .command(format!(
            "if [ -d /sys/module/{module} ]; then echo \"{MODULE_MARKER} present\"; \
             else echo \"{MODULE_MARKER} absent\"; fi"
        ))
        .command(format!(
            "dmesg | grep '{module}:' | sed 's/^/{DMESG_MARKER} /'"
        ))
        .command(format!(
            "if [ \"$rc\" = 0 ] && [ -d /sys/module/{module} ]; then echo \"{RESULT_MARKER} loaded\"; \
             elif [ \"$rc\" = 5 ] || [ \"$rc\" = 6 ] || [ \"$rc\" = 7 ] || [ \"$rc\" = 10 ] || [ \"$rc\" = 11 ]; then echo \"{RESULT_MARKER} refused\"; \
             else echo \"{RESULT_MARKER} failed\"; fi"
        ));
    let init = if options.prefetch_after_run {
        init.command(format!(
            "{loader_base} prefetch; echo \"{PREFETCH_EXIT_MARKER} rc=$?\""
        ))
    } else {
        init
    };
    let init = if options.cache_disk.is_some() {
        init.command(format!("sync; umount {NODE_CACHE_DIR}"))
    } else {
        init
    };
    let init = init.render();
    image.init(&init)?;
    std::fs::create_dir_all(dir)?;
    let initrd = dir.join(format!("{}.initrd.gz", spec.name));
    image.write(&initrd)?;
    let announce = format!(
        "{module}: loaded version={} built_for={release} running={release}",
        settings.driver_version,
        release = spec.release
    );
    Ok(PreparedNode {
        spec: spec.clone(),
        kernel,
        initrd,
        console: dir.join(format!("{}.console.log", spec.name)),
        announce,
        options: options.clone(),
    })
}

fn musl_target(arch: Arch) -> &'static str {
    match arch {
        Arch::Aarch64 => "aarch64-unknown-linux-musl",
        Arch::X86_64 => "x86_64-unknown-linux-musl",
    }
}

/// A booted node and when it was started.
#[derive(Debug)]
pub struct RunningNode {
    pub prepared: PreparedNode,
    pub vm: QemuNode,
    pub started: Instant,
}

/// Boots `prepared`; the VM is killed at `hard_timeout` whatever happens. x86_64 nodes get 512 MiB,
/// arm64 nodes testkit's 1 GiB default for the `virt` machine.
pub fn boot(prepared: &PreparedNode, hard_timeout: Duration) -> Result<RunningNode> {
    boot_with(prepared, hard_timeout, None)
}

/// [`boot`], with the node's loader held at `gate` until the gate lets it go.
fn boot_with(
    prepared: &PreparedNode,
    hard_timeout: Duration,
    gate: Option<&StartGate>,
) -> Result<RunningNode> {
    let options = &prepared.options;
    // UEFI boots the bzImage's EFI stub; PVH entry (qemu_kernel) would bypass the firmware.
    let kernel = if options.firmware.is_some() {
        prepared.kernel.vmlinuz()
    } else {
        prepared.kernel.qemu_kernel()
    };
    let mut config = QemuConfig::new(prepared.spec.arch, kernel, &prepared.console)
        .initrd(&prepared.initrd)
        .hard_timeout(hard_timeout);
    if let Some(firmware) = &options.firmware {
        config = config.firmware(firmware.clone());
    }
    for word in &options.kernel_args {
        config = config.append(word.clone());
    }
    if prepared.spec.arch == Arch::X86_64 {
        config = config.memory_mib(512);
    }
    if let Some(disk) = &options.cache_disk {
        config = config.drive(disk, "raw", false);
    }
    if options.offline {
        config = config.user_network(false);
    }
    if let Some(gate) = gate {
        config = config.append(gate.kernel_argument());
    }
    let vm = QemuNode::boot(config)?;
    Ok(RunningNode {
        prepared: prepared.clone(),
        vm,
        started: Instant::now(),
    })
}

/// What the node's init found at `/sys/module/<module>` after the loader, as its
/// [`MODULE_MARKER`] line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleState {
    Present,
    Absent,
}

impl ModuleState {
    /// The marker's word; anything else is no answer, not an absence.
    pub fn parse(word: &str) -> Option<ModuleState> {
        match word {
            "present" => Some(ModuleState::Present),
            "absent" => Some(ModuleState::Absent),
            _ => None,
        }
    }
}

/// What a node's console says.
#[derive(Debug, Clone)]
pub struct NodeOutcome {
    pub name: String,
    pub release: KernelRelease,
    pub console_path: PathBuf,
    pub console: String,
    /// The loader's exit code, when it got that far.
    pub loader_exit: Option<i32>,
    /// `driver-loader prefetch`'s exit code, when the node ran it.
    pub prefetch_exit: Option<i32>,
    /// `loaded`, `refused` or `failed`, as the node's init judged it.
    pub result: Option<String>,
    /// Whether `/sys/module/<module>` existed after the loader; `None` when the marker is missing
    /// or unreadable (the node crashed, hung or was killed before its init got there), which
    /// proves nothing either way.
    pub module_state: Option<ModuleState>,
    /// The driver's own line with this node's release on both sides, as printed by the kernel.
    pub driver_line: Option<String>,
    /// From qemu start to the driver's line on the console.
    pub time_to_driver_live: Option<Duration>,
    /// From qemu start to the node powering off (or being killed).
    pub total: Duration,
    /// Why the node did not finish normally (hard timeout, qemu error), if it did not.
    pub vm_error: Option<String>,
}

impl NodeOutcome {
    /// Loaded, and the kernel printed the driver's line for this release.
    pub fn loaded(&self) -> bool {
        self.loader_exit == Some(0)
            && self.module_state == Some(ModuleState::Present)
            && self.driver_line.is_some()
            && self.result.as_deref() == Some("loaded")
    }

    /// A one-paragraph account for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "node {} ({}): loader_exit={:?} result={:?} module_state={:?} driver_line={:?} \
             time_to_driver_live={:?} vm_error={:?} console={}",
            self.name,
            self.release,
            self.loader_exit,
            self.result,
            self.module_state,
            self.driver_line,
            self.time_to_driver_live,
            self.vm_error,
            self.console_path.display()
        )
    }
}

/// Follows the console until the node powers off (or is killed at its hard timeout), noting when
/// the driver's line appeared.
pub fn observe(node: RunningNode) -> NodeOutcome {
    let RunningNode {
        prepared,
        vm,
        started,
    } = node;
    let mut time_to_driver_live = None;
    let mut vm_error = None;
    // Wait for the driver's line first (to time it), then for the node to power off.
    match vm.wait_for_line(&prepared.announce, vm.config().hard_timeout) {
        Ok(_) => time_to_driver_live = Some(started.elapsed()),
        Err(testkit::VmError::Exited { .. }) => {}
        Err(error) => vm_error = Some(error.to_string()),
    }
    let console = match vm.run_to_completion() {
        Ok(text) => text,
        Err(error) => {
            vm_error.get_or_insert_with(|| error.to_string());
            std::fs::read(&prepared.console)
                .map(|bytes| String::from_utf8_lossy(&bytes).replace('\r', ""))
                .unwrap_or_default()
        }
    };
    let total = started.elapsed();
    let marker_value = |marker: &str| marker_value(&console, marker);
    let loader_exit = marker_value(LOADER_EXIT_MARKER)
        .and_then(|value| value.strip_prefix("rc=").and_then(|rc| rc.parse().ok()));
    let driver_line = console
        .lines()
        .find(|line| line.contains(&prepared.announce) && !line.contains(DMESG_MARKER))
        .map(|line| line.trim().to_owned());
    if driver_line.is_none() {
        time_to_driver_live = None;
    }
    if vm_error.is_none() && !console.contains(END_MARKER) {
        vm_error = Some("the node powered off without its end marker".to_owned());
    }
    let prefetch_exit = marker_value(PREFETCH_EXIT_MARKER)
        .and_then(|value| value.strip_prefix("rc=").and_then(|rc| rc.parse().ok()));
    NodeOutcome {
        name: prepared.spec.name.clone(),
        release: prepared.spec.release.clone(),
        console_path: prepared.console.clone(),
        loader_exit,
        prefetch_exit,
        result: marker_value(RESULT_MARKER),
        module_state: module_state(&console),
        driver_line,
        time_to_driver_live,
        total,
        vm_error,
        console,
    }
}

/// The rest of the first console line starting with `marker`, trimmed.
fn marker_value(console: &str, marker: &str) -> Option<String> {
    console.lines().find_map(|line| {
        line.trim()
            .strip_prefix(marker)
            .map(|value| value.trim().to_owned())
    })
}

/// The module state the console reports; `None` without a readable [`MODULE_MARKER`] line.
pub fn module_state(console: &str) -> Option<ModuleState> {
    marker_value(console, MODULE_MARKER).and_then(|word| ModuleState::parse(&word))
}

/// Boots every node at the same moment, holds each at a start gate after its boot until all are up
/// so their loaders start together ([`crate::gate`]), and observes them all (one thread per node).
pub fn boot_together(nodes: &[PreparedNode], hard_timeout: Duration) -> Result<Vec<NodeOutcome>> {
    let gate = StartGate::open()?;
    let running: Vec<RunningNode> = nodes
        .iter()
        .map(|node| boot_with(node, hard_timeout, Some(&gate)))
        .collect::<Result<_>>()?;
    let expected = running.len();
    let gate = std::thread::spawn(move || gate.release(expected, START_GATE_TIMEOUT));
    let handles: Vec<_> = running
        .into_iter()
        .map(|node| std::thread::spawn(move || observe(node)))
        .collect();
    let outcomes = handles
        .into_iter()
        .map(|handle| {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("a node observer panicked"))
        })
        .collect::<Result<Vec<_>>>()?;
    let released = gate
        .join()
        .map_err(|_| anyhow::anyhow!("the start gate panicked"))?;
    // The nodes' consoles say whether each got through; this line says how far apart they came.
    eprintln!(
        "fleet: start gate released {:?} together after holding the first {:.1}s{}",
        released.arrived,
        released.held.as_secs_f64(),
        released
            .error
            .map(|error| format!(" ({error})"))
            .unwrap_or_default()
    );
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_marker_is_present_absent_or_missing() {
        let console = "FLEET-LOADER-EXIT rc=6\nFLEET-MODULE absent\nFLEET-RESULT refused\n";
        assert_eq!(module_state(console), Some(ModuleState::Absent));
        assert_eq!(
            module_state("FLEET-MODULE present\r\n"),
            Some(ModuleState::Present)
        );
        // A node that died before its init reported says nothing about the module.
        assert_eq!(module_state("FLEET-LOADER-EXIT rc=6\nKernel panic\n"), None);
        // A line mangled by interleaved kernel output is no answer either.
        assert_eq!(module_state("FLEET-MODULE abs[   12.3] virtio\n"), None);
    }
}
