//! Compiling the driver with kbuild against resolved headers, checking that every module really
//! is for the target release, and optionally signing the modules with the kernel's `sign-file`.
//!
//! The driver source is copied first so a build never writes into the caller's tree and two
//! builds of the same source cannot see each other's objects.
//!
//! The driver version reaches the driver's Makefile twice, as `DRIVER_VERSION=<v>` (generic) and
//! as `<DRIVER_NAME>_VERSION=<v>` (the driver name upper-cased, `-` -> `_`; `EXAMPLE_DRIVER_VERSION`
//! for the sample driver), so a product driver can use either convention.

use std::path::{Path, PathBuf};

use kernel_id::{DriverName, KernelIdentity};
use thiserror::Error;
use walkdir::WalkDir;

use crate::system::{CommandLine, ScratchDir, System};

#[derive(Debug, Error)]
pub enum CompileError {
    #[error("driver source {path}: {message}")]
    Source { path: String, message: String },
    #[error("copying the driver source: {0}")]
    Copy(#[source] std::io::Error),
    #[error("`{command}` failed: {detail}")]
    Make { command: String, detail: String },
    #[error("kbuild produced no .ko files in {0}")]
    NoModules(String),
    #[error("{module}: vermagic is '{found}', but the target kernel is {release}")]
    WrongVermagic {
        module: String,
        found: String,
        release: String,
    },
    #[error("{module}: cannot read: {source}")]
    Read {
        module: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signing {module}: {detail}")]
    Sign { module: String, detail: String },
}

/// The make variable that carries the driver version for this driver, e.g.
/// `EXAMPLE_DRIVER_VERSION` for `example-driver`.
pub fn version_variable(driver: &DriverName) -> String {
    format!(
        "{}_VERSION",
        driver.as_str().to_ascii_uppercase().replace('-', "_")
    )
}

/// The kbuild command for a copied source tree.
pub fn make_command(
    identity: &KernelIdentity,
    driver: &DriverName,
    headers_dir: &Path,
    source_dir: &Path,
    jobs: usize,
) -> CommandLine {
    let version = identity.driver_version().as_str();
    CommandLine::new(
        "make",
        [
            format!("-j{}", jobs.max(1)),
            "-C".to_owned(),
            headers_dir.display().to_string(),
            format!("M={}", source_dir.display()),
            "modules".to_owned(),
            format!("DRIVER_VERSION={version}"),
            format!("{}={version}", version_variable(driver)),
        ],
    )
}

/// Copies a directory tree (regular files, directories, symlinks as links), skipping what an
/// earlier in-tree build left behind so it cannot leak into this one.
pub fn copy_source(from: &Path, to: &Path) -> Result<(), CompileError> {
    let is_build_product = |name: &str| {
        [".o", ".ko", ".mod", ".mod.c", ".cmd", ".order", ".symvers"]
            .iter()
            .any(|ext| name.ends_with(ext))
    };
    if !from.is_dir() {
        return Err(CompileError::Source {
            path: from.display().to_string(),
            message: "is not a directory".to_owned(),
        });
    }
    for entry in WalkDir::new(from).follow_links(false) {
        let entry = entry.map_err(|e| CompileError::Copy(e.into()))?;
        let relative = entry
            .path()
            .strip_prefix(from)
            .expect("walkdir yields paths under its root");
        let name = entry.file_name().to_string_lossy();
        let target = to.join(relative);
        let file_type = entry.file_type();
        if file_type.is_dir() {
            std::fs::create_dir_all(&target).map_err(CompileError::Copy)?;
        } else if is_build_product(&name) {
            continue;
        } else if file_type.is_symlink() {
            let link = std::fs::read_link(entry.path()).map_err(CompileError::Copy)?;
            std::os::unix::fs::symlink(link, &target).map_err(CompileError::Copy)?;
        } else if file_type.is_file() {
            std::fs::copy(entry.path(), &target).map_err(CompileError::Copy)?;
        }
    }
    Ok(())
}

/// The `vermagic` string recorded in a module's `.modinfo`, if any.
pub fn module_vermagic(bytes: &[u8]) -> Option<String> {
    let key = b"vermagic=";
    let start = bytes.windows(key.len()).position(|w| w == key)? + key.len();
    let end = bytes[start..].iter().position(|&b| b == 0)? + start;
    Some(String::from_utf8_lossy(&bytes[start..end]).into_owned())
}

/// A compiled set of modules, as host paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledModules {
    pub modules: Vec<PathBuf>,
}

/// Runs kbuild in the system for `source` (a host directory), inside `scratch`.
pub fn compile(
    system: &System,
    scratch: &ScratchDir,
    identity: &KernelIdentity,
    driver: &DriverName,
    headers_dir: &Path,
    source: &Path,
    jobs: usize,
) -> Result<CompiledModules, CompileError> {
    let source_host = scratch.host.join("src");
    let source_guest = scratch.guest.join("src");
    copy_source(source, &source_host)?;
    let command = make_command(identity, driver, headers_dir, &source_guest, jobs);
    tracing::info!(command = %command, "compiling");
    let output = system.run(&command).map_err(|e| CompileError::Make {
        command: command.to_string(),
        detail: e.to_string(),
    })?;
    if !output.success() {
        // Compiler errors are what the caller needs: keep the whole of stderr in the log.
        tracing::error!(stderr = %output.stderr, "kbuild failed");
        return Err(CompileError::Make {
            command: command.to_string(),
            detail: output.describe_failure(),
        });
    }
    let mut modules: Vec<PathBuf> = WalkDir::new(&source_host)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.file_name().to_string_lossy().ends_with(".ko"))
        .map(|e| e.path().to_path_buf())
        .collect();
    modules.sort();
    if modules.is_empty() {
        return Err(CompileError::NoModules(source_guest.display().to_string()));
    }
    let release = identity.kernel_release().as_str();
    for module in &modules {
        let bytes = std::fs::read(module).map_err(|source| CompileError::Read {
            module: module.display().to_string(),
            source,
        })?;
        let vermagic = module_vermagic(&bytes).unwrap_or_default();
        // vermagic is "<release> <flags...>": the release must be the first word, exactly.
        if vermagic.split(' ').next() != Some(release) {
            return Err(CompileError::WrongVermagic {
                module: module.display().to_string(),
                found: vermagic,
                release: release.to_owned(),
            });
        }
        tracing::info!(module = %module.display(), vermagic = %vermagic, "built");
    }
    Ok(CompiledModules { modules })
}

/// What module signatures end with (`MODULE_SIG_STRING` in the kernel).
const MODULE_SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";

/// Signs each module in place with the headers' `scripts/sign-file sha256 <key> <cert>`, as
/// Secure Boot kernels with module signature enforcement require.
pub fn sign_modules(
    system: &System,
    scratch: &ScratchDir,
    headers_dir: &Path,
    modules: &CompiledModules,
    key: &Path,
    cert: &Path,
) -> Result<(), CompileError> {
    let sign_error = |module: &Path, detail: String| CompileError::Sign {
        module: module.display().to_string(),
        detail,
    };
    // The key and certificate are copied next to the build so commands inside a root see them.
    let key_dir = scratch.host.join("signing");
    std::fs::create_dir_all(&key_dir).map_err(|e| sign_error(key, e.to_string()))?;
    let key_copy = key_dir.join("signing_key.pem");
    let cert_copy = key_dir.join("signing_cert.der");
    std::fs::copy(key, &key_copy).map_err(|e| sign_error(key, format!("reading key: {e}")))?;
    std::fs::copy(cert, &cert_copy)
        .map_err(|e| sign_error(cert, format!("reading certificate: {e}")))?;
    let sign_file = headers_dir.join("scripts/sign-file");
    for module in &modules.modules {
        let relative = module
            .strip_prefix(&scratch.host)
            .map_err(|_| sign_error(module, "module is outside the build directory".into()))?;
        let guest_module = scratch.guest.join(relative);
        let command = CommandLine::new(
            &sign_file.display().to_string(),
            [
                "sha256".to_owned(),
                scratch
                    .guest
                    .join("signing/signing_key.pem")
                    .display()
                    .to_string(),
                scratch
                    .guest
                    .join("signing/signing_cert.der")
                    .display()
                    .to_string(),
                guest_module.display().to_string(),
            ],
        );
        tracing::info!(command = %command, "signing module");
        let output = system
            .run(&command)
            .map_err(|e| sign_error(module, e.to_string()))?;
        if !output.success() {
            return Err(sign_error(module, output.describe_failure()));
        }
        let bytes = std::fs::read(module).map_err(|e| sign_error(module, e.to_string()))?;
        if !bytes.ends_with(MODULE_SIGNATURE_MAGIC) {
            return Err(sign_error(
                module,
                "sign-file succeeded but the module carries no signature".into(),
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&key_dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel_id::{Arch, Distribution, DistroVersion, DriverVersion, KernelRelease};

    #[test]
    fn make_gets_both_version_variables() {
        let identity = KernelIdentity::new(
            KernelRelease::parse("6.1.0-47-amd64").expect("release"),
            Arch::X86_64,
            DistroVersion::supported(Distribution::parse("debian").expect("d"), "12")
                .expect("version"),
            DriverVersion::parse("v0.1.2").expect("driver version"),
        )
        .expect("identity");
        let driver = DriverName::parse("example-driver").expect("driver");
        let command = make_command(
            &identity,
            &driver,
            Path::new("/usr/src/linux-headers-6.1.0-47-amd64"),
            Path::new("/tmp/b/src"),
            2,
        );
        assert_eq!(
            command.to_string(),
            "make -j2 -C /usr/src/linux-headers-6.1.0-47-amd64 M=/tmp/b/src modules \
             DRIVER_VERSION=v0.1.2 EXAMPLE_DRIVER_VERSION=v0.1.2"
        );
    }

    #[test]
    fn vermagic_is_read_from_modinfo() {
        let bytes = b"\x7fELF....license=GPL\0vermagic=6.1.0-47-amd64 SMP preempt mod_unload modversions \0name=x\0";
        assert_eq!(
            module_vermagic(bytes).as_deref(),
            Some("6.1.0-47-amd64 SMP preempt mod_unload modversions ")
        );
        assert_eq!(module_vermagic(b"no modinfo here"), None);
    }

    #[test]
    fn source_copies_leave_old_build_products_behind() {
        let from = tempfile::tempdir().expect("tempdir");
        let to = tempfile::tempdir().expect("tempdir");
        std::fs::write(from.path().join("Kbuild"), "obj-m := x.o\n").expect("write");
        std::fs::write(from.path().join("x.c"), "").expect("write");
        std::fs::write(from.path().join("x.ko"), "stale").expect("write");
        std::fs::create_dir(from.path().join("sub")).expect("mkdir");
        std::fs::write(from.path().join("sub/y.h"), "").expect("write");
        copy_source(from.path(), to.path()).expect("copy");
        assert!(to.path().join("Kbuild").is_file());
        assert!(to.path().join("sub/y.h").is_file());
        assert!(!to.path().join("x.ko").exists());
        assert!(matches!(
            copy_source(&from.path().join("missing"), to.path()),
            Err(CompileError::Source { .. })
        ));
    }
}
