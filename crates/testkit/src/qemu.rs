//! qemu nodes: boot a kernel + initramfs (or a disk image) under TCG, capture the serial console
//! to a file the caller names, and never leave a VM running.
//!
//! Three layers make sure of the last point: a watchdog thread kills the VM's process group at the
//! hard timeout, `Drop` kills it too, and qemu runs under coreutils `timeout -s KILL` so that a
//! test process that dies without unwinding (nextest's own timeout sends SIGKILL) still cannot
//! orphan a VM for longer than its hard timeout.

use std::fmt;
use std::fs;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kernel_id::Arch;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::uefi::UefiFirmware;

/// Why waiting on a VM ended without the expected output.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The caller's wait ran out; the VM may still be running (until its hard timeout).
    #[error(
        "no console line containing '{pattern}' within {waited:?} (console: {console})\n{tail}"
    )]
    WaitTimedOut {
        pattern: String,
        waited: Duration,
        console: PathBuf,
        tail: String,
    },
    /// The VM hit its hard timeout and was killed.
    #[error("VM killed at its hard timeout of {timeout:?} (console: {console})\n{tail}")]
    HardTimeout {
        timeout: Duration,
        console: PathBuf,
        tail: String,
    },
    /// qemu exited (guest powered off, panicked, or qemu failed to start).
    #[error(
        "VM exited ({status}) before printing '{pattern}' (console: {console})\n{tail}\nqemu stderr: {stderr}"
    )]
    Exited {
        status: String,
        pattern: String,
        console: PathBuf,
        tail: String,
        stderr: String,
    },
    #[error("reading the console {console}: {source}")]
    Io {
        console: PathBuf,
        source: std::io::Error,
    },
}

/// A block device for the guest (`-drive file=...,format=...,if=virtio`).
#[derive(Clone, Debug)]
pub struct Drive {
    pub path: PathBuf,
    /// `raw` or `qcow2`.
    pub format: String,
    /// Opened with `snapshot=on`, so concurrent VMs can share one base image.
    pub snapshot: bool,
}

/// Everything needed to boot a node.
#[derive(Clone, Debug)]
pub struct QemuConfig {
    pub arch: Arch,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Extra kernel command-line words after the console/panic defaults (e.g. `root=/dev/vda`).
    pub append: Vec<String>,
    pub memory_mib: u32,
    /// One virtio-net NIC on qemu's user network (guest 10.0.2.15, host loopback at 10.0.2.2).
    pub user_network: bool,
    pub drives: Vec<Drive>,
    /// Where the serial console is written (truncated at boot).
    pub console: PathBuf,
    /// The VM is killed this long after boot, whatever happens.
    pub hard_timeout: Duration,
    /// Raw extra qemu arguments, appended last.
    pub extra_args: Vec<String>,
    /// UEFI firmware on qemu's pflash (x86_64 only; default: qemu's SeaBIOS). The kernel is still
    /// booted with `-kernel`, through its EFI stub; the guest then sees UEFI variables such as
    /// `db` (see [`crate::uefi`]). Each boot gets a private writable copy of the variable store,
    /// [`QemuConfig::vars_copy_path`].
    pub firmware: Option<UefiFirmware>,
}

impl QemuConfig {
    /// Defaults: 512 MiB on x86_64 (1024 on aarch64), user networking on, 120 s hard timeout.
    pub fn new(arch: Arch, kernel: &Path, console: &Path) -> QemuConfig {
        let is_arm = arch.debian_name() == "arm64";
        QemuConfig {
            arch,
            kernel: kernel.to_path_buf(),
            initrd: None,
            append: Vec::new(),
            memory_mib: if is_arm { 1024 } else { 512 },
            user_network: true,
            drives: Vec::new(),
            console: console.to_path_buf(),
            hard_timeout: Duration::from_secs(120),
            extra_args: Vec::new(),
            firmware: None,
        }
    }

    /// Boots through UEFI `firmware` instead of the default BIOS.
    pub fn firmware(mut self, firmware: UefiFirmware) -> Self {
        self.firmware = Some(firmware);
        self
    }

    /// Where [`QemuNode::boot`] copies the firmware's variable store for this VM:
    /// `<console>.vars.fd`, beside the console.
    pub fn vars_copy_path(&self) -> PathBuf {
        let mut path = self.console.clone().into_os_string();
        path.push(".vars.fd");
        PathBuf::from(path)
    }

    pub fn initrd(mut self, path: &Path) -> Self {
        self.initrd = Some(path.to_path_buf());
        self
    }

    pub fn append(mut self, word: impl Into<String>) -> Self {
        self.append.push(word.into());
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn user_network(mut self, enabled: bool) -> Self {
        self.user_network = enabled;
        self
    }

    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = timeout;
        self
    }

    /// Adds a virtio disk; pair it with `append("root=/dev/vda ...")` to boot a root image.
    pub fn drive(mut self, path: &Path, format: &str, snapshot: bool) -> Self {
        self.drives.push(Drive {
            path: path.to_path_buf(),
            format: format.to_owned(),
            snapshot,
        });
        self
    }

    pub fn extra_arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    fn is_arm(&self) -> bool {
        self.arch.debian_name() == "arm64"
    }

    /// The qemu binary for the guest architecture.
    pub fn qemu_binary(&self) -> &'static str {
        if self.is_arm() {
            "qemu-system-aarch64"
        } else {
            "qemu-system-x86_64"
        }
    }

    /// The kernel command line.
    pub fn kernel_command_line(&self) -> String {
        let console = if self.is_arm() { "ttyAMA0" } else { "ttyS0" };
        let mut words = vec![format!("console={console}"), "panic=-1".to_owned()];
        words.extend(self.append.iter().cloned());
        words.join(" ")
    }

    /// qemu's arguments (without the binary). TCG only: KVM is not available to tests and
    /// hangs where it half-exists.
    pub fn qemu_args(&self) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(|s| (*s).to_owned()));
        if self.is_arm() {
            push(&["-machine", "virt", "-cpu", "cortex-a57"]);
        } else {
            push(&["-machine", "q35"]);
        }
        push(&[
            "-accel",
            "tcg",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
        ]);
        push(&["-display", "none", "-monitor", "none", "-no-reboot"]);
        args.push("-m".into());
        args.push(self.memory_mib.to_string());
        if let Some(firmware) = &self.firmware {
            // The code is shared read-only; the variable store is this VM's own copy.
            args.push("-drive".into());
            args.push(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                qemu_escape(&firmware.code.to_string_lossy())
            ));
            args.push("-drive".into());
            args.push(format!(
                "if=pflash,format=raw,unit=1,file={}",
                qemu_escape(&self.vars_copy_path().to_string_lossy())
            ));
        }
        args.push("-chardev".into());
        args.push(format!(
            "file,id=console0,path={}",
            qemu_escape(&self.console.to_string_lossy())
        ));
        args.push("-serial".into());
        args.push("chardev:console0".into());
        args.push("-kernel".into());
        args.push(self.kernel.to_string_lossy().into_owned());
        if let Some(initrd) = &self.initrd {
            args.push("-initrd".into());
            args.push(initrd.to_string_lossy().into_owned());
        }
        args.push("-append".into());
        args.push(self.kernel_command_line());
        if self.user_network {
            args.push("-nic".into());
            args.push("user,model=virtio-net-pci".into());
        } else {
            args.push("-nic".into());
            args.push("none".into());
        }
        for drive in &self.drives {
            args.push("-drive".into());
            args.push(format!(
                "file={},format={},if=virtio{}",
                qemu_escape(&drive.path.to_string_lossy()),
                drive.format,
                if drive.snapshot { ",snapshot=on" } else { "" }
            ));
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// qemu option values escape a literal comma by doubling it.
fn qemu_escape(value: &str) -> String {
    value.replace(',', ",,")
}

#[derive(Debug, Default)]
struct Shared {
    exit: Option<ExitStatus>,
    killed_at_hard_timeout: bool,
    stop: bool,
}

/// A running (or finished) VM. Dropping it kills the VM.
pub struct QemuNode {
    config: QemuConfig,
    process_group: Pid,
    started: Instant,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    watchdog: Option<JoinHandle<()>>,
    stderr_path: PathBuf,
}

impl fmt::Debug for QemuNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QemuNode")
            .field("console", &self.config.console)
            .field("process_group", &self.process_group)
            .field("elapsed", &self.started.elapsed())
            .finish()
    }
}

impl QemuNode {
    /// Starts the VM. qemu's own stderr goes to `<console>.qemu-stderr`.
    pub fn boot(config: QemuConfig) -> Result<QemuNode> {
        if config.hard_timeout.is_zero() {
            bail!("hard_timeout must be positive: every VM needs one");
        }
        for path in [Some(&config.kernel), config.initrd.as_ref()]
            .into_iter()
            .flatten()
        {
            if !path.is_file() {
                bail!("{} does not exist", path.display());
            }
        }
        if let Some(parent) = config.console.parent() {
            fs::create_dir_all(parent)?;
        }
        if let Some(firmware) = &config.firmware {
            if config.is_arm() {
                bail!("UEFI firmware is supported for x86_64 nodes only (OVMF)");
            }
            firmware.check()?;
            // PVH entry (an ELF vmlinux) bypasses the firmware; UEFI boots the bzImage's EFI stub.
            let mut magic = [0u8; 4];
            if fs::File::open(&config.kernel)
                .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut magic))
                .is_ok()
                && &magic == b"\x7fELF"
            {
                bail!(
                    "{} is an ELF vmlinux (PVH entry), which bypasses UEFI firmware: boot the \
                     bzImage (KernelImage::vmlinuz) instead",
                    config.kernel.display()
                );
            }
            // The firmware writes its variables at boot: never into the caller's template, and
            // never into a store another VM has open.
            let copy = config.vars_copy_path();
            fs::copy(&firmware.vars, &copy).with_context(|| {
                format!("copying {} to {}", firmware.vars.display(), copy.display())
            })?;
        }
        fs::write(&config.console, b"")
            .with_context(|| format!("creating console file {}", config.console.display()))?;
        let mut stderr_path = config.console.clone().into_os_string();
        stderr_path.push(".qemu-stderr");
        let stderr_path = PathBuf::from(stderr_path);
        let stderr = fs::File::create(&stderr_path)?;

        // The coreutils backstop gets a little slack so that our own watchdog, which reports the
        // timeout properly, normally fires first.
        let backstop = config.hard_timeout + Duration::from_secs(5);
        let mut command = Command::new("timeout");
        command
            .arg("-s")
            .arg("KILL")
            .arg(format!("{}", backstop.as_secs_f64().ceil() as u64))
            .arg(config.qemu_binary())
            .args(config.qemu_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0);
        let child = command.spawn().with_context(|| {
            format!(
                "starting {} (install qemu-system-x86 / qemu-system-arm and coreutils)",
                config.qemu_binary()
            )
        })?;
        let started = Instant::now();
        let process_group = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let watchdog = {
            let shared = Arc::clone(&shared);
            let deadline = started + config.hard_timeout;
            std::thread::Builder::new()
                .name("qemu-watchdog".into())
                .spawn(move || watch(child, process_group, deadline, &shared))?
        };
        Ok(QemuNode {
            config,
            process_group,
            started,
            shared,
            watchdog: Some(watchdog),
            stderr_path,
        })
    }

    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    pub fn console_path(&self) -> &Path {
        &self.config.console
    }

    /// Time since qemu was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Everything the guest printed so far (lossy UTF-8, `\r` removed).
    pub fn console_text(&self) -> String {
        fs::read(&self.config.console)
            .map(|bytes| String::from_utf8_lossy(&bytes).replace('\r', ""))
            .unwrap_or_default()
    }

    /// Whether qemu is still running.
    pub fn is_running(&self) -> bool {
        let guard = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        guard.exit.is_none()
    }

    /// Waits until a console line contains `pattern` and returns that line. Fails when `timeout`
    /// passes, the VM exits, or its hard timeout kills it, whichever comes first.
    pub fn wait_for_line(&self, pattern: &str, timeout: Duration) -> Result<String, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            // Read the state before the console so output written just before exit is seen.
            let (exit, killed) = {
                let guard = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
                (guard.exit, guard.killed_at_hard_timeout)
            };
            let text = fs::read(&self.config.console).map_err(|source| VmError::Io {
                console: self.config.console.clone(),
                source,
            })?;
            let text = String::from_utf8_lossy(&text).replace('\r', "");
            // While the guest runs, a line without its newline may still be growing: match only
            // complete lines until qemu has exited.
            let complete = if exit.is_some() {
                text.as_str()
            } else {
                text.rfind('\n').map_or("", |end| &text[..end])
            };
            if let Some(line) = complete.lines().find(|line| line.contains(pattern)) {
                return Ok(line.to_owned());
            }
            if killed {
                return Err(VmError::HardTimeout {
                    timeout: self.config.hard_timeout,
                    console: self.config.console.clone(),
                    tail: tail(&text),
                });
            }
            if let Some(status) = exit {
                return Err(VmError::Exited {
                    status: status.to_string(),
                    pattern: pattern.to_owned(),
                    console: self.config.console.clone(),
                    tail: tail(&text),
                    stderr: fs::read_to_string(&self.stderr_path).unwrap_or_default(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(VmError::WaitTimedOut {
                    pattern: pattern.to_owned(),
                    waited: timeout,
                    console: self.config.console.clone(),
                    tail: tail(&text),
                });
            }
            let guard = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
            if guard.exit.is_none() {
                let pause = (deadline - now).min(Duration::from_millis(50));
                let _ = self.shared.1.wait_timeout(guard, pause);
            }
        }
    }

    /// Waits for qemu to exit (the guest powers off) and returns the console text; a VM killed
    /// at its hard timeout is an error.
    pub fn run_to_completion(self) -> Result<String, VmError> {
        {
            let mut guard = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
            while guard.exit.is_none() {
                guard = self.shared.1.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            if guard.killed_at_hard_timeout {
                return Err(VmError::HardTimeout {
                    timeout: self.config.hard_timeout,
                    console: self.config.console.clone(),
                    tail: tail(&self.console_text()),
                });
            }
        }
        Ok(self.console_text())
    }

    /// Kills the VM now (idempotent).
    pub fn kill(&mut self) {
        {
            let mut guard = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
            guard.stop = true;
            self.shared.1.notify_all();
        }
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
    }
}

impl Drop for QemuNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Owns the child: reaps it when it exits, kills its process group at the deadline or when the
/// node is dropped.
fn watch(mut child: Child, group: Pid, deadline: Instant, shared: &(Mutex<Shared>, Condvar)) {
    let (lock, condvar) = shared;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            guard.exit = Some(status);
            condvar.notify_all();
            return;
        }
        let now = Instant::now();
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let timed_out = now >= deadline;
        if guard.stop || timed_out {
            // The group holds `timeout` and qemu; SIGKILL to both leaves nothing behind.
            let _ = killpg(group, Signal::SIGKILL);
            drop(guard);
            let status = child.wait().ok();
            let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            guard.killed_at_hard_timeout = timed_out && !guard.stop;
            guard.exit = status.or(guard.exit);
            if guard.exit.is_none() {
                // wait() failed: still record an end so waiters do not hang.
                guard.exit = Some(<ExitStatus as ExitStatusExt>::from_raw(9));
            }
            condvar.notify_all();
            return;
        }
        let pause = (deadline - now).min(Duration::from_millis(50));
        let _ = condvar.wait_timeout(guard, pause);
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(25);
    format!("--- last console lines ---\n{}", lines[start..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_args_use_tcg_q35_and_the_named_console() {
        let arch = Arch::parse("x86_64").expect("arch");
        let config = QemuConfig::new(arch, Path::new("/k"), Path::new("/tmp/a,b.log"))
            .initrd(Path::new("/i"))
            .append("quiet");
        let args = config.qemu_args();
        let joined = args.join(" ");
        assert!(joined.contains("-machine q35"));
        assert!(joined.contains("-accel tcg"));
        assert!(!joined.contains("kvm"));
        assert!(joined.contains("path=/tmp/a,,b.log"));
        assert!(joined.contains("-nic user,model=virtio-net-pci"));
        assert_eq!(config.kernel_command_line(), "console=ttyS0 panic=-1 quiet");
        assert_eq!(config.qemu_binary(), "qemu-system-x86_64");
        assert!(!joined.contains("pflash"), "BIOS by default: {joined}");
    }

    #[test]
    fn uefi_firmware_is_two_pflash_units_with_a_private_vars_copy() {
        let arch = Arch::parse("x86_64").expect("arch");
        let config = QemuConfig::new(arch, Path::new("/k"), Path::new("/logs/node.log")).firmware(
            UefiFirmware {
                code: PathBuf::from("/fw/OVMF_CODE_4M.fd"),
                vars: PathBuf::from("/fw/template.fd"),
            },
        );
        assert_eq!(config.vars_copy_path(), Path::new("/logs/node.log.vars.fd"));
        let joined = config.qemu_args().join(" ");
        assert!(
            joined.contains(
                "-drive if=pflash,format=raw,unit=0,readonly=on,file=/fw/OVMF_CODE_4M.fd \
                 -drive if=pflash,format=raw,unit=1,file=/logs/node.log.vars.fd"
            ),
            "{joined}"
        );
        assert!(!joined.contains("template.fd"), "{joined}");
        assert!(joined.contains("-kernel /k"), "{joined}");
    }

    #[test]
    fn arm_args_use_virt_and_the_pl011_console() {
        let arch = Arch::parse("arm64").expect("arch");
        let config = QemuConfig::new(arch, Path::new("/k"), Path::new("/c"))
            .drive(Path::new("/root.img"), "raw", true)
            .append("root=/dev/vda");
        let joined = config.qemu_args().join(" ");
        assert!(joined.contains("-machine virt -cpu cortex-a57"));
        assert!(joined.contains("file=/root.img,format=raw,if=virtio,snapshot=on"));
        assert_eq!(
            config.kernel_command_line(),
            "console=ttyAMA0 panic=-1 root=/dev/vda"
        );
        assert_eq!(config.qemu_binary(), "qemu-system-aarch64");
    }
}
