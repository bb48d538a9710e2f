//! UEFI firmware for x86_64 nodes whose kernel must trust a test certificate: Debian's OVMF
//! (package `ovmf`) with a private copy of its variable store in which a certificate is enrolled in
//! the signature database `db` by `virt-fw-vars` (package `python3-virt-firmware`, from
//! bookworm-backports on Debian 12).
//!
//! Debian's stock kernels (`CONFIG_INTEGRITY_PLATFORM_KEYRING`, `CONFIG_LOAD_UEFI_KEYS`, and
//! Debian's patch letting module signatures be verified against the platform keyring) load every
//! `db` certificate into the `.platform` keyring at boot (`integrity: Loaded X.509 cert
//! '<CN>: <subject key id>'`); booted with `module.sig_enforce=1`, they then load a module signed
//! by that certificate's key and refuse an unsigned one ("Loading of unsigned module is
//! rejected") or one signed by any other key ("Loading of module with unavailable key is
//! rejected"); insmod reports both as "Key was rejected by service".
//!
//! The firmware is the non-Secure-Boot build (`OVMF_CODE_4M.fd`): it needs no SMM, boots qemu's
//! `-kernel` directly, and the kernel still reads `db`. What enforces signatures is the kernel's
//! `module.sig_enforce=1`, not the firmware. [`crate::QemuConfig::firmware`] attaches it; each VM
//! gets its own writable copy of the variable store, because the firmware writes to it at boot.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! # let (cert, dir) = (std::path::Path::new("cert.pem"), std::path::Path::new("/tmp"));
//! let vars = testkit::uefi::vars_with_db(cert, &dir.join("vars-with-db.fd"))?;
//! let firmware = testkit::uefi::UefiFirmware::ovmf(&vars)?;
//! # let _ = firmware;
//! # Ok(())
//! # }
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::lock::scratch_path;

/// Debian's OVMF code for 4 MiB flash, without Secure Boot (package `ovmf`).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// Debian's empty variable store matching [`OVMF_CODE`] (package `ovmf`).
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The owner GUID recorded with every certificate the tests enrol in `db`. UEFI stores an owner
/// (`SignatureOwner`) beside each entry of a signature list; nothing verifies it and the kernel
/// ignores it. This one was generated once for this project so a dump of a test variable store
/// (`virt-fw-vars -i <vars> -p`) shows which entries the tests added.
pub const TEST_CERT_OWNER_GUID: &str = "4fb74903-55db-42db-afd5-108659551116";

const INSTALL_OVMF: &str = "install Debian's ovmf package (apt-get install ovmf)";
const INSTALL_VIRT_FIRMWARE: &str = "install Debian's python3-virt-firmware package \
     (Debian 12: apt-get install -t bookworm-backports python3-virt-firmware)";

/// A UEFI firmware for qemu's two pflash units: read-only code and a variable store template.
/// The template is never written: each VM boots a copy of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UefiFirmware {
    pub code: PathBuf,
    pub vars: PathBuf,
}

impl UefiFirmware {
    /// [`OVMF_CODE`] with the variable store `vars` (e.g. from [`vars_with_db`]); fails naming the
    /// package to install when a file is missing.
    pub fn ovmf(vars: &Path) -> Result<UefiFirmware> {
        let firmware = UefiFirmware {
            code: PathBuf::from(OVMF_CODE),
            vars: vars.to_path_buf(),
        };
        firmware.check()?;
        Ok(firmware)
    }

    /// Both files exist; the error names what to install.
    pub fn check(&self) -> Result<()> {
        if !self.code.is_file() {
            bail!(
                "UEFI firmware code {} does not exist: {INSTALL_OVMF}",
                self.code.display()
            );
        }
        if !self.vars.is_file() {
            bail!(
                "UEFI variable store {} does not exist (make one with testkit::uefi::vars_with_db; \
                 the template comes from {OVMF_VARS}: {INSTALL_OVMF})",
                self.vars.display()
            );
        }
        Ok(())
    }
}

/// Copies [`OVMF_VARS`] to `out_vars` with `cert` (an X.509 certificate, PEM or DER) enrolled in
/// `db` under [`TEST_CERT_OWNER_GUID`], and returns `out_vars`. The store is written beside
/// `out_vars` and renamed into place, so `out_vars` is either complete or absent.
pub fn vars_with_db(cert: &Path, out_vars: &Path) -> Result<PathBuf> {
    let template = Path::new(OVMF_VARS);
    if !template.is_file() {
        bail!("the OVMF variable store template {OVMF_VARS} does not exist: {INSTALL_OVMF}");
    }
    let bytes = fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    if let Some(parent) = out_vars.parent() {
        fs::create_dir_all(parent)?;
    }
    // virt-fw-vars reads PEM only.
    let pem_path = scratch_path(out_vars, "cert.pem");
    let staged = scratch_path(out_vars, "tmp");
    let result = (|| {
        if bytes.starts_with(b"-----BEGIN CERTIFICATE-----") {
            fs::write(&pem_path, &bytes)?;
        } else {
            run(Command::new("openssl")
                .args(["x509", "-inform", "DER", "-outform", "PEM", "-in"])
                .arg(cert)
                .arg("-out")
                .arg(&pem_path))
            .with_context(|| {
                format!(
                    "{} is neither a PEM certificate nor a DER one openssl reads",
                    cert.display()
                )
            })?;
        }
        run(Command::new("virt-fw-vars")
            .arg("--input")
            .arg(template)
            .arg("--output")
            .arg(&staged)
            .arg("--add-db")
            .arg(TEST_CERT_OWNER_GUID)
            .arg(&pem_path))
        .with_context(|| format!("enrolling {} in db with virt-fw-vars", cert.display()))?;
        // The store must now hold db with an X.509 entry: virt-fw-vars prints what it reads.
        let listing = run(Command::new("virt-fw-vars")
            .arg("--input")
            .arg(&staged)
            .args(["--print", "--verbose"]))?;
        if !listing.contains("name=db ") || !listing.contains("EfiCertX509") {
            bail!(
                "virt-fw-vars wrote {} without an X.509 certificate in db:\n{listing}",
                staged.display()
            );
        }
        fs::rename(&staged, out_vars)
            .with_context(|| format!("renaming into {}", out_vars.display()))?;
        Ok(out_vars.to_path_buf())
    })();
    let _ = fs::remove_file(&pem_path);
    let _ = fs::remove_file(&staged);
    result
}

/// Runs `command`, returning stdout and stderr together; a tool that is missing is named with its
/// package.
fn run(command: &mut Command) -> Result<String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|error| {
        let hint = match program.as_str() {
            "virt-fw-vars" => INSTALL_VIRT_FIRMWARE,
            "openssl" => "install Debian's openssl package",
            _ => "",
        };
        anyhow::anyhow!("running {program}: {error}; {hint}")
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("{command:?} failed ({}):\n{text}", output.status);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_firmware_names_the_package() {
        let firmware = UefiFirmware {
            code: PathBuf::from("/nonexistent/OVMF_CODE_4M.fd"),
            vars: PathBuf::from("/nonexistent/vars.fd"),
        };
        let error = format!("{:#}", firmware.check().expect_err("missing code"));
        assert!(error.contains("ovmf"), "{error}");
    }

    #[test]
    fn the_owner_guid_is_a_guid() {
        let groups: Vec<usize> = TEST_CERT_OWNER_GUID.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(
            TEST_CERT_OWNER_GUID
                .chars()
                .all(|c| c == '-' || c.is_ascii_hexdigit())
        );
    }
}
