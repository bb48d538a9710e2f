//! What `cargo xtask serve` needs from the machine before it compiles anything, and getting it.
//!
//! The decision ([`decide`]) is pure over a [`Probe`] (which commands exist, which Rust targets are
//! installed, whether we are root, whether arm64 emulation works), so every case is unit-tested
//! without touching the machine. [`ensure`] is the thin IO around it: as root with apt-get it
//! installs the missing Debian packages and Rust targets and registers arm64 emulation, printing
//! each step; otherwise it fails with one message naming each missing thing and the exact commands
//! to get it. A machine that has everything gets no output at all.
//!
//! Registering emulation reuses `build_root::host::enable_emulation`, the same code the arm64 tests
//! rely on; `.ci/run` keeps its own shell version because it runs before any Rust is built.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use kernel_id::Arch;

/// The static driver-builder's target for x86_64 roots.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// The static driver-builder's target for arm64 roots.
pub const AARCH64_MUSL_TARGET: &str = "aarch64-unknown-linux-musl";

/// A command the run uses, and the Debian package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    /// The command looked for on PATH.
    pub command: &'static str,
    /// The Debian package to install for it.
    pub package: &'static str,
    /// What it is needed for, for the message.
    pub why: &'static str,
}

/// Always needed.
const TOOLS: &[Tool] = &[
    Tool {
        command: "mmdebstrap",
        package: "mmdebstrap",
        why: "makes the build roots",
    },
    Tool {
        command: "zstd",
        package: "zstd",
        why: "packs and unpacks the base images",
    },
    Tool {
        command: "git",
        package: "git",
        why: "holds the driver versions as tags",
    },
    Tool {
        command: "openssl",
        package: "openssl",
        why: "makes the module-signing key",
    },
    // The builder's C dependencies (ring, liblzma, zstd) are compiled for musl with musl-gcc.
    Tool {
        command: "musl-gcc",
        package: "musl-tools",
        why: "compiles the static driver-builder's C code",
    },
];

/// Needed for arm64 roots on a host of another architecture.
const ARM64_TOOLS: &[Tool] = &[
    Tool {
        command: "aarch64-linux-gnu-gcc",
        package: "gcc-aarch64-linux-gnu",
        why: "compiles the arm64 driver-builder's C code",
    },
    Tool {
        command: "qemu-aarch64-static",
        package: "qemu-user-static",
        why: "runs the arm64 roots",
    },
    Tool {
        command: "update-binfmts",
        package: "binfmt-support",
        why: "registers qemu with the kernel",
    },
];

/// Whether arm64 binaries run here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulation {
    /// Natively or through an enabled binfmt_misc entry.
    Works,
    /// binfmt_misc is not mounted.
    NotMounted,
    /// Mounted, but qemu-aarch64 is not registered, disabled, or lacks the fix-binary flag.
    NotEnabled,
}

/// The facts the decision needs. The real one looks at this machine; tests use a table.
pub trait Probe {
    /// Whether `command` is on PATH (or in /usr/sbin, /sbin, which a user's PATH may lack).
    fn has_command(&self, command: &str) -> bool;
    /// Whether the standard library for a Rust target is installed.
    fn has_rust_target(&self, target: &str) -> bool;
    /// Whether we run with effective uid 0.
    fn is_root(&self) -> bool;
    /// Whether arm64 binaries run here.
    fn aarch64_emulation(&self) -> Emulation;
}

/// What this run asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Build the arm64 driver-builder and run arm64 roots.
    pub arm64: bool,
    /// The host itself is arm64: no cross compiler and no emulation needed for arm64.
    pub host_aarch64: bool,
}

/// What is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Missing {
    /// Commands whose packages are to be installed.
    pub tools: Vec<Tool>,
    /// Rust targets to add.
    pub targets: Vec<&'static str>,
    /// arm64 emulation to register, when it is wanted and does not work.
    pub emulation: Option<Emulation>,
}

impl Missing {
    fn is_empty(&self) -> bool {
        self.tools.is_empty() && self.targets.is_empty() && self.emulation.is_none()
    }

    /// The packages to install, in table order, each once.
    pub fn packages(&self) -> Vec<&'static str> {
        let mut packages: Vec<&'static str> = Vec::new();
        for tool in &self.tools {
            if !packages.contains(&tool.package) {
                packages.push(tool.package);
            }
        }
        packages
    }
}

/// What to do before compiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Everything is there.
    Ready,
    /// We are root with the means to fix it: install these.
    Install(Missing),
    /// We cannot fix it: fail with this message.
    Refuse(String),
}

/// Looks at what `wanted` needs and decides.
pub fn decide(probe: &dyn Probe, wanted: Wanted) -> Plan {
    let missing = find_missing(probe, wanted);
    if missing.is_empty() {
        return Plan::Ready;
    }
    let root = probe.is_root();
    let can_install = missing.tools.is_empty() || probe.has_command("apt-get");
    let can_add_targets = missing.targets.is_empty() || probe.has_command("rustup");
    if root && can_install && can_add_targets {
        Plan::Install(missing)
    } else {
        Plan::Refuse(refusal(probe, &missing))
    }
}

fn find_missing(probe: &dyn Probe, wanted: Wanted) -> Missing {
    let cross = wanted.arm64 && !wanted.host_aarch64;
    let tools = TOOLS
        .iter()
        .chain(if cross { ARM64_TOOLS } else { &[] })
        .filter(|tool| !probe.has_command(tool.command))
        .copied()
        .collect();
    let targets = std::iter::once(MUSL_TARGET)
        .chain(wanted.arm64.then_some(AARCH64_MUSL_TARGET))
        .filter(|target| !probe.has_rust_target(target))
        .collect();
    let emulation = match probe.aarch64_emulation() {
        Emulation::Works => None,
        _ if !cross => None,
        other => Some(other),
    };
    Missing {
        tools,
        targets,
        emulation,
    }
}

fn refusal(probe: &dyn Probe, missing: &Missing) -> String {
    let sudo = if probe.is_root() { "" } else { "sudo " };
    let mut message = String::from("cargo xtask serve needs what this machine lacks:\n");
    for tool in &missing.tools {
        let _ = writeln!(
            message,
            "  - {} ({}; Debian package {})",
            tool.command, tool.why, tool.package
        );
    }
    for target in &missing.targets {
        let _ = writeln!(
            message,
            "  - the Rust target {target} (the static driver-builder is built for it)"
        );
    }
    if let Some(emulation) = missing.emulation {
        let state = match emulation {
            Emulation::NotMounted => "binfmt_misc is not mounted",
            _ => "qemu-aarch64 is not enabled",
        };
        let _ = writeln!(
            message,
            "  - arm64 emulation through binfmt_misc ({state}; the arm64 roots run under it)"
        );
    }
    message.push_str("Get them with:\n");
    let packages = missing.packages();
    if !packages.is_empty() {
        if probe.has_command("apt-get") {
            let _ = writeln!(
                message,
                "  {sudo}apt-get install --no-install-recommends {}",
                packages.join(" ")
            );
        } else {
            let _ = writeln!(
                message,
                "  (no apt-get here) install the packages {} or their equivalents",
                packages.join(" ")
            );
        }
    }
    if !missing.targets.is_empty() {
        if !probe.has_command("rustup") {
            message.push_str("  (no rustup here) install rustup from https://rustup.rs, then\n");
        }
        let _ = writeln!(message, "  rustup target add {}", missing.targets.join(" "));
    }
    match missing.emulation {
        Some(Emulation::NotMounted) => {
            let _ = writeln!(
                message,
                "  {sudo}mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc"
            );
            let _ = writeln!(message, "  {sudo}update-binfmts --enable qemu-aarch64");
        }
        Some(_) => {
            let _ = writeln!(message, "  {sudo}update-binfmts --enable qemu-aarch64");
        }
        None => {}
    }
    message.trim_end().to_owned()
}

/// Checks this machine for what `wanted` needs; as root installs what is missing, otherwise fails
/// with what is missing and how to get it.
pub fn ensure(wanted: Wanted) -> Result<()> {
    let probe = HostProbe;
    let missing = match decide(&probe, wanted) {
        Plan::Ready => return Ok(()),
        Plan::Refuse(message) => bail!("{message}"),
        Plan::Install(missing) => missing,
    };
    let packages = missing.packages();
    if !packages.is_empty() {
        apt_install(&packages)?;
    }
    if !missing.targets.is_empty() {
        let mut add = Command::new("rustup");
        add.args(["target", "add"]).args(&missing.targets);
        step(&mut add, "adding the Rust targets")?;
    }
    // Installing qemu-user-static often registers it already (its postinst, or systemd-binfmt).
    if missing.emulation.is_some() && probe.aarch64_emulation() != Emulation::Works {
        eprintln!("==> registering qemu-aarch64 with binfmt_misc");
        build_root::host::enable_emulation(Arch::Aarch64)
            .context("registering arm64 emulation (qemu-aarch64) with binfmt_misc")?;
    }
    let still = find_missing(&probe, wanted);
    if !still.is_empty() {
        bail!("installing was not enough; {}", refusal(&probe, &still));
    }
    Ok(())
}

/// `apt-get install`, with `apt-get update` first only when the package lists lack a package
/// (a fresh container has no lists at all).
fn apt_install(packages: &[&str]) -> Result<()> {
    let install = || {
        let mut command = Command::new("apt-get");
        command
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    eprintln!(
        "==> apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    );
    // stderr is kept to tell "no such package in the lists" from other failures; it is shown.
    let output = install()
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .context("running apt-get install")?;
    let errors = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        eprint!("{errors}");
        return Ok(());
    }
    let lists_lack_it = errors.contains("Unable to locate package")
        || errors.contains("has no installation candidate");
    if !lists_lack_it {
        bail!("apt-get install failed ({}):\n{errors}", output.status);
    }
    step(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "refreshing the package lists",
    )?;
    step(&mut install(), "installing the packages")
}

/// Runs one step with its output shown, saying first what it runs.
fn step(command: &mut Command, what: &str) -> Result<()> {
    let shown: Vec<String> = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    eprintln!("==> {}", shown.join(" "));
    let status = command
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("{what}: could not start {}", shown[0]))?;
    if !status.success() {
        bail!("{what}: `{}` failed with {status}", shown.join(" "));
    }
    Ok(())
}

/// The probe of this machine.
struct HostProbe;

impl Probe for HostProbe {
    fn has_command(&self, command: &str) -> bool {
        find_command(command)
    }

    fn has_rust_target(&self, target: &str) -> bool {
        if find_command("rustup") {
            let listed = Command::new("rustup")
                .args(["target", "list", "--installed"])
                .stderr(Stdio::null())
                .output();
            if let Some(output) = listed.ok().filter(|output| output.status.success()) {
                return String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .any(|line| line.trim() == target);
            }
        }
        // A toolchain without rustup (a distribution's rustc) is fine when the target's std is
        // in its sysroot.
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        Command::new(rustc)
            .args(["--print", "sysroot"])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .is_some_and(|output| {
                let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_owned();
                Path::new(&sysroot)
                    .join("lib/rustlib")
                    .join(target)
                    .join("lib")
                    .is_dir()
            })
    }

    fn is_root(&self) -> bool {
        effective_uid() == Some(0)
    }

    fn aarch64_emulation(&self) -> Emulation {
        if std::env::consts::ARCH == "aarch64" {
            return Emulation::Works;
        }
        let binfmt = Path::new("/proc/sys/fs/binfmt_misc");
        match build_root::host::binfmt_status(binfmt, Arch::Aarch64) {
            build_root::host::Emulation::Unavailable(_) if !binfmt.join("status").exists() => {
                Emulation::NotMounted
            }
            build_root::host::Emulation::Unavailable(_) => Emulation::NotEnabled,
            _ => Emulation::Works,
        }
    }
}

fn find_command(command: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .any(|dir| dir.join(command).is_file())
}

/// The effective uid, from /proc (xtask has no libc binding of its own).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine described by a table.
    struct Machine {
        commands: Vec<&'static str>,
        targets: Vec<&'static str>,
        root: bool,
        emulation: Emulation,
    }

    impl Machine {
        /// Everything `cargo xtask serve --arm64` needs, as root.
        fn complete() -> Self {
            Self {
                commands: TOOLS
                    .iter()
                    .chain(ARM64_TOOLS)
                    .map(|tool| tool.command)
                    .chain(["apt-get", "rustup"])
                    .collect(),
                targets: vec![MUSL_TARGET, AARCH64_MUSL_TARGET],
                root: true,
                emulation: Emulation::Works,
            }
        }

        fn without(mut self, commands: &[&str]) -> Self {
            self.commands.retain(|command| !commands.contains(command));
            self
        }
    }

    impl Probe for Machine {
        fn has_command(&self, command: &str) -> bool {
            self.commands.contains(&command)
        }
        fn has_rust_target(&self, target: &str) -> bool {
            self.targets.contains(&target)
        }
        fn is_root(&self) -> bool {
            self.root
        }
        fn aarch64_emulation(&self) -> Emulation {
            self.emulation
        }
    }

    const X86_64: Wanted = Wanted {
        arm64: false,
        host_aarch64: false,
    };
    const WITH_ARM64: Wanted = Wanted {
        arm64: true,
        host_aarch64: false,
    };

    #[test]
    fn a_complete_machine_is_ready() {
        assert_eq!(decide(&Machine::complete(), X86_64), Plan::Ready);
        assert_eq!(decide(&Machine::complete(), WITH_ARM64), Plan::Ready);
        // Without arm64 asked for, its tools and emulation are not needed.
        let plain = Machine {
            targets: vec![MUSL_TARGET],
            emulation: Emulation::NotMounted,
            ..Machine::complete().without(&["qemu-aarch64-static", "aarch64-linux-gnu-gcc"])
        };
        assert_eq!(decide(&plain, X86_64), Plan::Ready);
        // Not being root does not matter when nothing is missing.
        let user = Machine {
            root: false,
            ..Machine::complete()
        };
        assert_eq!(decide(&user, WITH_ARM64), Plan::Ready);
    }

    #[test]
    fn as_root_the_missing_packages_and_targets_are_installed() {
        let machine = Machine {
            targets: vec![],
            ..Machine::complete().without(&["mmdebstrap", "musl-gcc", "zstd"])
        };
        let Plan::Install(missing) = decide(&machine, X86_64) else {
            panic!("expected an install plan");
        };
        assert_eq!(missing.packages(), ["mmdebstrap", "zstd", "musl-tools"]);
        assert_eq!(missing.targets, [MUSL_TARGET]);
        assert_eq!(missing.emulation, None);
    }

    #[test]
    fn arm64_asked_for_needs_the_cross_tools_its_target_and_emulation() {
        let machine = Machine {
            targets: vec![MUSL_TARGET],
            emulation: Emulation::NotEnabled,
            ..Machine::complete().without(&[
                "aarch64-linux-gnu-gcc",
                "qemu-aarch64-static",
                "update-binfmts",
            ])
        };
        assert_eq!(decide(&machine, X86_64), Plan::Ready);
        let Plan::Install(missing) = decide(&machine, WITH_ARM64) else {
            panic!("expected an install plan");
        };
        assert_eq!(
            missing.packages(),
            [
                "gcc-aarch64-linux-gnu",
                "qemu-user-static",
                "binfmt-support"
            ]
        );
        assert_eq!(missing.targets, [AARCH64_MUSL_TARGET]);
        assert_eq!(missing.emulation, Some(Emulation::NotEnabled));

        // On an arm64 host the builder is native: only its target is needed.
        let arm64_host = Wanted {
            arm64: true,
            host_aarch64: true,
        };
        let Plan::Install(native) = decide(&machine, arm64_host) else {
            panic!("expected an install plan");
        };
        assert!(native.tools.is_empty(), "{native:?}");
        assert_eq!(native.emulation, None);
        assert_eq!(native.targets, [AARCH64_MUSL_TARGET]);
    }

    #[test]
    fn not_root_names_each_missing_thing_and_the_exact_commands() {
        let machine = Machine {
            root: false,
            targets: vec![],
            emulation: Emulation::NotMounted,
            ..Machine::complete().without(&["mmdebstrap", "qemu-aarch64-static"])
        };
        let Plan::Refuse(message) = decide(&machine, WITH_ARM64) else {
            panic!("expected a refusal");
        };
        for expected in [
            "  - mmdebstrap (makes the build roots; Debian package mmdebstrap)",
            "  - qemu-aarch64-static (runs the arm64 roots; Debian package qemu-user-static)",
            "  - the Rust target x86_64-unknown-linux-musl",
            "  - the Rust target aarch64-unknown-linux-musl",
            "  - arm64 emulation through binfmt_misc (binfmt_misc is not mounted;",
            "  sudo apt-get install --no-install-recommends mmdebstrap qemu-user-static\n",
            "  rustup target add x86_64-unknown-linux-musl aarch64-unknown-linux-musl\n",
            "  sudo mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc\n",
            "  sudo update-binfmts --enable qemu-aarch64",
        ] {
            assert!(message.contains(expected), "{expected:?} in:\n{message}");
        }
        // Only what is missing: present tools are not named.
        for present in [
            "zstd",
            "git",
            "openssl",
            "musl-tools",
            "gcc-aarch64-linux-gnu",
        ] {
            assert!(!message.contains(present), "{present} in:\n{message}");
        }
    }

    #[test]
    fn root_without_the_means_to_install_is_refused_without_sudo() {
        let machine = Machine {
            targets: vec![],
            ..Machine::complete().without(&["apt-get", "rustup", "git"])
        };
        let Plan::Refuse(message) = decide(&machine, X86_64) else {
            panic!("expected a refusal");
        };
        assert!(!message.contains("sudo"), "{message}");
        assert!(
            message.contains("(no apt-get here) install the packages git"),
            "{message}"
        );
        assert!(
            message.contains(
                "(no rustup here) install rustup from https://rustup.rs, then\n  \
                 rustup target add x86_64-unknown-linux-musl"
            ),
            "{message}"
        );
    }
}
