//! Host mode: the system's own tools install the package (so the package database, depmod and removal
//! work as the distribution intends) and `modprobe` loads the module. Behind a trait so the flow's
//! decisions are testable without root.

use std::path::Path;
use std::process::Command;

use kernel_id::PackageFormat;
use tracing::info;

use crate::error::{LoaderError, Result};

/// The host's package manager and modprobe.
pub trait HostTools {
    /// Installs (or reinstalls/upgrades/downgrades to) the package file.
    fn install(&self, package: &Path, format: PackageFormat) -> Result<()>;
    /// `modprobe <name>`.
    fn modprobe(&self, name: &str) -> Result<()>;
    /// `modprobe -r <name>`.
    fn modprobe_remove(&self, name: &str) -> Result<()>;
}

/// The real tools, found on PATH.
#[derive(Debug, Clone, Default)]
pub struct SystemTools;

fn run(mut command: Command, what: &str) -> Result<()> {
    info!(command = ?command, "running");
    let output = command.output().map_err(|e| {
        LoaderError::Install(format!(
            "{what}: cannot run {:?}: {e}",
            command.get_program()
        ))
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    Err(LoaderError::Install(format!(
        "{what} failed ({}): {}{}",
        output.status,
        stderr.trim(),
        if stdout.trim().is_empty() {
            String::new()
        } else {
            format!(" / {}", stdout.trim())
        }
    )))
}

impl HostTools for SystemTools {
    fn install(&self, package: &Path, format: PackageFormat) -> Result<()> {
        match format {
            PackageFormat::Deb => {
                let mut cmd = Command::new("dpkg");
                cmd.arg("-i")
                    .arg(package)
                    .env("DEBIAN_FRONTEND", "noninteractive");
                run(cmd, "dpkg -i")
            }
            PackageFormat::Rpm => {
                // -U installs or upgrades; --replacepkgs makes a reinstall of the same version succeed and
                // --oldpackage lets a pinned older driver version replace a newer one.
                let mut cmd = Command::new("rpm");
                cmd.args(["-U", "--replacepkgs", "--oldpackage"])
                    .arg(package);
                run(cmd, "rpm -U")
            }
        }
    }

    fn modprobe(&self, name: &str) -> Result<()> {
        let mut cmd = Command::new("modprobe");
        cmd.arg(name);
        run(cmd, "modprobe").map_err(|e| LoaderError::Load {
            module: name.to_owned(),
            reason: e.to_string(),
        })
    }

    fn modprobe_remove(&self, name: &str) -> Result<()> {
        let mut cmd = Command::new("modprobe");
        cmd.arg("-r").arg(name);
        run(cmd, "modprobe -r").map_err(|e| LoaderError::Load {
            module: name.to_owned(),
            reason: e.to_string(),
        })
    }
}
