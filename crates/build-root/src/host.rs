//! What the host must provide before a root can be made: root privileges, mmdebstrap and, for a
//! foreign architecture, qemu user-mode emulation through binfmt_misc.
//!
//! Probing ([`HostFacts::probe`]) is the only IO here; the decision ([`HostFacts::check`]) is pure so
//! every error path is unit-tested, including the ones this root-owned CI host never hits.

use std::path::{Path, PathBuf};
use std::process::Command;

use kernel_id::Arch;

use crate::error::{BuildRootError, Result};
use crate::root::RootKey;

const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// Whether binaries of the target architecture can run on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emulation {
    /// The target is the host's own architecture.
    Native,
    /// A binfmt_misc entry is enabled with the fix-binary flag, so it also works inside a chroot.
    Enabled,
    /// Emulation is missing, with the reason.
    Unavailable(String),
}

/// The facts about the host that decide whether a root can be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// Effective uid of this process.
    pub euid: u32,
    /// The host machine, as `uname -m` prints it.
    pub machine: String,
    /// Whether `mmdebstrap` is on PATH.
    pub has_mmdebstrap: bool,
    /// Emulation status for the target architecture.
    pub emulation: Emulation,
}

impl HostFacts {
    /// Looks at this host, for roots of `target` architecture.
    pub fn probe(target: Arch) -> Self {
        let machine = std::env::consts::ARCH.to_owned();
        let emulation = if Arch::parse(&machine).is_ok_and(|host| host == target) {
            Emulation::Native
        } else {
            binfmt_status(Path::new(BINFMT_DIR), target)
        };
        Self {
            euid: nix::unistd::geteuid().as_raw(),
            machine,
            has_mmdebstrap: find_on_path("mmdebstrap").is_some(),
            emulation,
        }
    }

    /// Decides whether a root for `key` can be made here.
    pub fn check(&self, key: &RootKey) -> Result<()> {
        if self.euid != 0 {
            return Err(BuildRootError::NotRoot { euid: self.euid });
        }
        if !self.has_mmdebstrap {
            return Err(BuildRootError::MmdebstrapMissing);
        }
        if let Emulation::Unavailable(reason) = &self.emulation {
            return Err(BuildRootError::EmulationUnavailable {
                arch: key.arch(),
                host: self.machine.clone(),
                binfmt_name: binfmt_name(key.arch()).to_owned(),
                reason: reason.clone(),
            });
        }
        Ok(())
    }
}

/// The binfmt_misc entry name Debian's qemu-user-static registers for an architecture.
pub fn binfmt_name(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "qemu-x86_64",
        Arch::Aarch64 => "qemu-aarch64",
    }
}

/// Reads the binfmt_misc entry for `target` under `binfmt_dir` (a parameter so tests can use a fake).
pub fn binfmt_status(binfmt_dir: &Path, target: Arch) -> Emulation {
    if !binfmt_dir.join("status").exists() {
        return Emulation::Unavailable(format!(
            "binfmt_misc is not mounted at {}",
            binfmt_dir.display()
        ));
    }
    let entry_path = binfmt_dir.join(binfmt_name(target));
    let Ok(entry) = std::fs::read_to_string(&entry_path) else {
        return Emulation::Unavailable(format!("{} is not registered", binfmt_name(target)));
    };
    if entry.lines().next() != Some("enabled") {
        return Emulation::Unavailable(format!(
            "{} is registered but disabled",
            binfmt_name(target)
        ));
    }
    // Without the F (fix-binary) flag the kernel looks the interpreter up inside the chroot, where it
    // does not exist, so every emulated binary in the root would fail to start.
    let flags = entry
        .lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .unwrap_or_default();
    if !flags.contains('F') {
        return Emulation::Unavailable(format!(
            "{} is registered without the fix-binary (F) flag, so it cannot work inside a chroot",
            binfmt_name(target)
        ));
    }
    Emulation::Enabled
}

/// Mounts binfmt_misc if needed and registers the qemu entry for `target`, as the
/// [`BuildRootError::EmulationUnavailable`] message tells an operator to. Changes host-wide state, so
/// only tests and explicit setup steps call it; the executor never does.
///
/// Debian's qemu-user-static 7.2 registers through binfmt-support (`update-binfmts`), while newer
/// packaging (qemu-user-binfmt, e.g. from bookworm-backports) ships a systemd `binfmt.d` file instead;
/// both are handled.
pub fn enable_emulation(target: Arch) -> Result<()> {
    let binfmt_dir = Path::new(BINFMT_DIR);
    if !binfmt_dir.join("status").exists() {
        run_host_tool(Command::new("mount").args([
            "-t",
            "binfmt_misc",
            "binfmt_misc",
            BINFMT_DIR,
        ]))?;
    }
    let name = binfmt_name(target);
    let binfmt_d = ["/etc/binfmt.d", "/run/binfmt.d", "/usr/lib/binfmt.d"]
        .iter()
        .map(|dir| Path::new(dir).join(format!("{name}.conf")))
        .find(|conf| conf.is_file());
    if let Some(conf) = binfmt_d {
        if binfmt_dir.join(name).exists() {
            // A registered but disabled entry is switched on; the kernel accepts "1" for that.
            return std::fs::write(binfmt_dir.join(name), "1").map_err(BuildRootError::io(
                format!("enabling {}", binfmt_dir.join(name).display()),
            ));
        }
        let rule = std::fs::read_to_string(&conf)
            .map_err(BuildRootError::io(format!("reading {}", conf.display())))?;
        let rule = rule
            .lines()
            .find(|line| line.starts_with(':'))
            .ok_or_else(|| BuildRootError::Io {
                context: format!("reading {}", conf.display()),
                source: std::io::Error::other("no registration line"),
            })?;
        return std::fs::write(binfmt_dir.join("register"), rule).map_err(BuildRootError::io(
            format!("registering {name} from {}", conf.display()),
        ));
    }
    if find_on_path("update-binfmts").is_none() {
        return Err(BuildRootError::EmulationUnavailable {
            arch: target,
            host: std::env::consts::ARCH.to_owned(),
            binfmt_name: name.to_owned(),
            reason: "neither update-binfmts nor a binfmt.d entry is installed".to_owned(),
        });
    }
    run_host_tool(Command::new("update-binfmts").args(["--enable", name]))
}

fn run_host_tool(command: &mut Command) -> Result<()> {
    let description = format!("{command:?}");
    let output = command
        .output()
        .map_err(BuildRootError::io(format!("running {description}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BuildRootError::Io {
            context: format!("running {description}"),
            source: std::io::Error::other(format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
        })
    }
}

/// Finds an executable on PATH.
pub(crate) fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use kernel_id::{Distribution, DistroVersion};

    use super::*;

    fn bookworm(arch: Arch) -> RootKey {
        let debian = Distribution::parse("debian").expect("debian");
        RootKey::new(DistroVersion::supported(debian, "12").expect("12"), arch)
    }

    fn good_host() -> HostFacts {
        HostFacts {
            euid: 0,
            machine: "x86_64".to_owned(),
            has_mmdebstrap: true,
            emulation: Emulation::Native,
        }
    }

    #[test]
    fn a_ready_host_passes() {
        good_host()
            .check(&bookworm(Arch::X86_64))
            .expect("ready host");
    }

    #[test]
    fn non_root_is_refused_first() {
        let host = HostFacts {
            euid: 1000,
            has_mmdebstrap: false,
            ..good_host()
        };
        let error = host.check(&bookworm(Arch::X86_64)).expect_err("not root");
        assert!(matches!(error, BuildRootError::NotRoot { euid: 1000 }));
        assert!(error.to_string().contains("needs root"), "{error}");
    }

    #[test]
    fn missing_mmdebstrap_says_how_to_install_it() {
        let host = HostFacts {
            has_mmdebstrap: false,
            ..good_host()
        };
        let error = host
            .check(&bookworm(Arch::X86_64))
            .expect_err("no mmdebstrap");
        assert!(
            error.to_string().contains("apt-get install mmdebstrap"),
            "{error}"
        );
    }

    #[test]
    fn missing_emulation_says_how_to_enable_it() {
        let host = HostFacts {
            emulation: Emulation::Unavailable("binfmt_misc is not mounted".to_owned()),
            ..good_host()
        };
        let message = host
            .check(&bookworm(Arch::Aarch64))
            .expect_err("no binfmt")
            .to_string();
        for step in [
            "apt-get install qemu-user-static binfmt-support",
            "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc",
            "update-binfmts --enable qemu-aarch64",
            "not mounted",
        ] {
            assert!(message.contains(step), "{step} missing from: {message}");
        }
    }

    #[test]
    fn binfmt_entries_are_read_from_the_given_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = |dir: &Path| binfmt_status(dir, Arch::Aarch64);
        assert!(
            matches!(status(dir.path()), Emulation::Unavailable(reason) if reason.contains("not mounted"))
        );

        std::fs::write(dir.path().join("status"), "enabled\n").expect("write");
        assert!(
            matches!(status(dir.path()), Emulation::Unavailable(reason) if reason.contains("not registered"))
        );

        let entry = dir.path().join("qemu-aarch64");
        std::fs::write(
            &entry,
            "disabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\n",
        )
        .expect("write");
        assert!(
            matches!(status(dir.path()), Emulation::Unavailable(reason) if reason.contains("disabled"))
        );

        std::fs::write(
            &entry,
            "enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: \n",
        )
        .expect("write");
        assert!(
            matches!(status(dir.path()), Emulation::Unavailable(reason) if reason.contains("fix-binary"))
        );

        std::fs::write(
            &entry,
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\n",
        )
        .expect("write");
        assert_eq!(status(dir.path()), Emulation::Enabled);
    }
}
