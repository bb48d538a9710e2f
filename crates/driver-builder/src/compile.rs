//! Compiling the driver with kbuild against resolved headers, checking that every module really
//! is for the target release, and optionally signing the modules with the kernel's `sign-file`.
//!
//! The driver source is copied first so a build never writes into the caller's tree and two
//! builds of the same source cannot see each other's objects.
//!
//! The driver version reaches the driver's Makefile twice, as `DRIVER_VERSION=<v>` (generic) and
//! as `<DRIVER_NAME>_VERSION=<v>` (the driver name upper-cased, `-` -> `_`; `EXAMPLE_DRIVER_VERSION`
//! for the sample driver), so a product driver can use either convention.
//!
//! The source commit reaches it as `KDRIVER_SOURCE_COMMIT=<full commit id>` ([`SOURCE_COMMIT_VARIABLE`]):
//! the contract for driver authors is to turn it into `MODULE_INFO(scmversion, ...)` (the sample
//! driver's `Kbuild` and README show how). After compiling, every module's `.modinfo` is read: a
//! module whose `scmversion` is another value fails the build ([`CompileError::WrongScmVersion`]); a
//! module without one is accepted with a warning, since not every driver cooperates.
//!
//! The compiler kbuild ran is read back from its `.<object>.o.cmd` files, for the build facts.

use std::path::{Path, PathBuf};

use kernel_id::{DriverName, KernelIdentity, SourceCommit};
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
    #[error(
        "{module}: MODULE_INFO(scmversion) says '{found}', but the source being built is commit {expected} \
         (the driver must take its scmversion from make's KDRIVER_SOURCE_COMMIT, not hard-code one)"
    )]
    WrongScmVersion {
        module: String,
        found: String,
        expected: String,
    },
    #[error("kbuild left no .cmd file naming the compiler of a C object in {0}")]
    NoCompilerRecord(String),
    #[error("{module}: cannot read: {source}")]
    Read {
        module: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signing {module}: {detail}")]
    Sign { module: String, detail: String },
    #[error("module signing: {0}")]
    Signing(String),
}

/// The make variable that carries the driver version for this driver, e.g.
/// `EXAMPLE_DRIVER_VERSION` for `example-driver`.
pub fn version_variable(driver: &DriverName) -> String {
    format!(
        "{}_VERSION",
        driver.as_str().to_ascii_uppercase().replace('-', "_")
    )
}

/// The make variable that carries the source commit to every driver: the contract with driver
/// authors (see the module documentation).
pub const SOURCE_COMMIT_VARIABLE: &str = "KDRIVER_SOURCE_COMMIT";

/// What kbuild is asked to build.
#[derive(Clone, Copy, Debug)]
pub struct Kbuild<'a> {
    pub identity: &'a KernelIdentity,
    pub driver: &'a DriverName,
    /// The kbuild tree, as a path inside the root.
    pub headers_dir: &'a Path,
    /// The commit of the driver source, passed as [`SOURCE_COMMIT_VARIABLE`].
    pub source_commit: &'a SourceCommit,
    /// Parallel make jobs.
    pub jobs: usize,
}

/// The kbuild command for a copied source tree.
pub fn make_command(kbuild: &Kbuild<'_>, source_dir: &Path) -> CommandLine {
    let version = kbuild.identity.driver_version().as_str();
    CommandLine::new(
        "make",
        [
            format!("-j{}", kbuild.jobs.max(1)),
            "-C".to_owned(),
            kbuild.headers_dir.display().to_string(),
            format!("M={}", source_dir.display()),
            "modules".to_owned(),
            format!("DRIVER_VERSION={version}"),
            format!("{}={version}", version_variable(kbuild.driver)),
            format!("{SOURCE_COMMIT_VARIABLE}={}", kbuild.source_commit),
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

/// The `.modinfo` section of an ELF module (32 or 64 bit, either byte order), if it has one.
pub fn modinfo_section(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.get(..4)? != b"\x7fELF" {
        return None;
    }
    let wide = match bytes.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let little = match bytes.get(5)? {
        1 => true,
        2 => false,
        _ => return None,
    };
    let uint = |at: usize, len: usize| -> Option<u64> {
        let raw = bytes.get(at..at.checked_add(len)?)?;
        let mut value = 0u64;
        for i in 0..len {
            let byte = if little { raw[len - 1 - i] } else { raw[i] };
            value = (value << 8) | u64::from(byte);
        }
        Some(value)
    };
    let word = if wide { 8 } else { 4 };
    let (shoff, shentsize, shnum, shstrndx) = if wide {
        (
            uint(0x28, 8)?,
            uint(0x3a, 2)?,
            uint(0x3c, 2)?,
            uint(0x3e, 2)?,
        )
    } else {
        (
            uint(0x20, 4)?,
            uint(0x2e, 2)?,
            uint(0x30, 2)?,
            uint(0x32, 2)?,
        )
    };
    let section = |index: u64| -> Option<(u64, &[u8])> {
        let header = usize::try_from(shoff.checked_add(index.checked_mul(shentsize)?)?).ok()?;
        let name = uint(header, 4)?;
        // sh_offset and sh_size follow sh_name, sh_type, sh_flags and sh_addr.
        let offset = uint(header + 8 + 2 * word, word)?;
        let size = uint(header + 8 + 3 * word, word)?;
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(size).ok()?)?;
        Some((name, bytes.get(start..end)?))
    };
    let (_, names) = section(shstrndx)?;
    (0..shnum).find_map(|index| {
        let (name, data) = section(index)?;
        let name = names.get(usize::try_from(name).ok()?..)?;
        name.starts_with(b".modinfo\0").then_some(data)
    })
}

/// Every value of `key` in a module's `.modinfo` (NUL-separated `key=value` entries).
pub fn modinfo_values(bytes: &[u8], key: &str) -> Vec<String> {
    let Some(section) = modinfo_section(bytes) else {
        return Vec::new();
    };
    section
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (k, v) = entry.split_once('=')?;
            (k == key).then(|| v.to_owned())
        })
        .collect()
}

/// The compiler command of a kbuild `.cmd` file: the words of its first `cmd_...` / `savedcmd_...`
/// line before the first option (`gcc-12`, or `ccache gcc-12`).
pub fn compiler_of_cmd_file(text: &str) -> Option<Vec<String>> {
    let line = text
        .lines()
        .find(|line| line.starts_with("cmd_") || line.starts_with("savedcmd_"))?;
    let (_, command) = line.split_once(" := ")?;
    let words: Vec<String> = command
        .split_whitespace()
        .take_while(|word| !word.starts_with('-'))
        .map(str::to_owned)
        .collect();
    (!words.is_empty()).then_some(words)
}

/// The compiler kbuild ran in `tree`: from the `.cmd` file of an object compiled from a C file
/// (`.<stem>.o.cmd` beside `<stem>.c`; composite objects are linked, not compiled).
pub fn kbuild_compiler(tree: &Path) -> Option<Vec<String>> {
    let mut cmd_files: Vec<PathBuf> = WalkDir::new(tree)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_path_buf())
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.strip_prefix('.')
                .and_then(|n| n.strip_suffix(".o.cmd"))
                .is_some_and(|stem| path.with_file_name(format!("{stem}.c")).is_file())
        })
        .collect();
    cmd_files.sort();
    cmd_files.iter().find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        compiler_of_cmd_file(&text)
    })
}

/// A compiled set of modules, as host paths, and the compiler kbuild ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledModules {
    pub modules: Vec<PathBuf>,
    /// The compiler command, e.g. `["gcc-12"]`.
    pub compiler: Vec<String>,
}

/// Runs kbuild in the system for `source` (a host directory), inside `scratch`.
pub fn compile(
    system: &System,
    scratch: &ScratchDir,
    kbuild: &Kbuild<'_>,
    source: &Path,
) -> Result<CompiledModules, CompileError> {
    let identity = kbuild.identity;
    let source_host = scratch.host.join("src");
    let source_guest = scratch.guest.join("src");
    copy_source(source, &source_host)?;
    let command = make_command(kbuild, &source_guest);
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
        check_scmversion(module, &bytes, kbuild.source_commit)?;
        tracing::info!(module = %module.display(), vermagic = %vermagic, "built");
    }
    let compiler = kbuild_compiler(&source_host)
        .ok_or_else(|| CompileError::NoCompilerRecord(source_guest.display().to_string()))?;
    tracing::info!(compiler = %compiler.join(" "), "kbuild's compiler");
    Ok(CompiledModules { modules, compiler })
}

/// A module must name `commit` as its `scmversion`, or name none (warned about).
fn check_scmversion(
    module: &Path,
    bytes: &[u8],
    commit: &SourceCommit,
) -> Result<(), CompileError> {
    let values = modinfo_values(bytes, "scmversion");
    if values.is_empty() {
        tracing::warn!(
            module = %module.display(),
            "the module declares no scmversion: the driver does not record the source commit \
             (turn make's {SOURCE_COMMIT_VARIABLE} into MODULE_INFO(scmversion, ...))"
        );
        return Ok(());
    }
    match values
        .iter()
        .find(|value| value.as_str() != commit.as_str())
    {
        Some(found) => Err(CompileError::WrongScmVersion {
            module: module.display().to_string(),
            found: found.clone(),
            expected: commit.to_string(),
        }),
        None => {
            tracing::info!(module = %module.display(), scmversion = %commit, "module names the source commit");
            Ok(())
        }
    }
}

// ---- Module signing (Secure Boot, `module.sig_enforce=1`) ----------------------------------------
//
// The module-signing key is the one secret that enters a build root, and the driver's own build
// system runs in that same root (as root): its Makefile, Kbuild and anything they start can read
// every file there. So the key spends as little time on disk as possible:
//
// 1. The caller (build-root's executor) copies the key into the root at a path only root can read
//    (0600 in a 0700 directory) and passes `--remove-module-sign-key`: the builder reads the key
//    into memory ([`ModuleSigningKey::load`]) and deletes the file before anything else happens —
//    before the header packages' maintainer scripts run, long before the driver's `make`.
// 2. After compilation, [`sign_modules`] first kills whatever the driver's build left running
//    when the builder is the init of its PID namespace (the executor's roots: `unshare --pid
//    --fork` then `exec chroot`), then writes the key to a fresh 0600 file in a fresh 0700
//    directory, runs the headers' `scripts/sign-file` on each module, and deletes the key again
//    at once (on every path: a guard removes it on error too).
//
// What remains: when the builder is not PID 1 (run by hand, or under a shell as PID 1), a process
// the driver's make left running could still watch for the key file during the seconds
// `sign-file` runs; and a key given without `--remove-module-sign-key` (e.g. a read-only BuildKit
// secret mount on GitHub) stays readable for the whole build, which the builder says in its log.
// None of this is a sandbox: the driver's build runs as root, so the driver source must be one the
// signer trusts (it is: a tag of the service's own driver repository).
//
// sign-file is asked to name the signer by its subject key identifier (`-k`, "use the
// subjectKeyIdentifier instead of issuer and serial number", in sign-file.c since Linux 4.6) when
// the headers' sign-file knows the option and the certificate has the extension; otherwise the
// signature names issuer and serial number, and the log says so.

/// What module signatures end with (`MODULE_SIG_STRING` in the kernel).
pub const MODULE_SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";

/// The digest `sign-file` signs modules with (its first argument). The kernel that verifies the
/// signatures must have it built in (Debian's kernels verify both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModuleSignHash {
    #[default]
    Sha256,
    Sha512,
}

impl ModuleSignHash {
    /// Every hash the builder signs with.
    pub const ALL: [ModuleSignHash; 2] = [ModuleSignHash::Sha256, ModuleSignHash::Sha512];

    /// The name sign-file takes (and `modinfo` reports as `sig_hashalgo`).
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleSignHash::Sha256 => "sha256",
            ModuleSignHash::Sha512 => "sha512",
        }
    }

    /// The hash named `name` (`sha256`, `sha512`).
    pub fn parse(name: &str) -> Option<ModuleSignHash> {
        ModuleSignHash::ALL
            .into_iter()
            .find(|hash| hash.as_str() == name)
    }
}

/// Why the module-signing key or certificate cannot be used.
#[derive(Debug, Error)]
pub enum ModuleKeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: a module-signing key must not be readable by group or others (mode {mode:04o}); \
         run `chmod 600 {path}`"
    )]
    Exposed { path: String, mode: u32 },
    #[error(
        "{path}: read, but could not be removed ({source}); refusing to build with the key on disk"
    )]
    NotRemoved {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
}

/// Secret bytes, overwritten with zeros when dropped.
struct SecretBytes(Vec<u8>);

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// The module-signing key, held in memory from before the build starts until the build ends, with
/// its certificate (DER) and the hash to sign with. `Debug` never shows the key.
pub struct ModuleSigningKey {
    key_pem: SecretBytes,
    cert_der: Vec<u8>,
    hash: ModuleSignHash,
    origin: String,
}

impl std::fmt::Debug for ModuleSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleSigningKey")
            .field("origin", &self.origin)
            .field("hash", &self.hash)
            .field("certificate_bytes", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

impl ModuleSigningKey {
    /// Reads the PEM private key at `key` into memory (refused when readable by group or others,
    /// the rule for every secret key of this project) and the certificate at `cert` (DER, or PEM,
    /// which is decoded). With `remove_key_file` the key file is deleted right after it is read:
    /// it is a copy made for this one build (see the module documentation); a key that cannot be
    /// removed then fails the build rather than stay where the driver's build can read it.
    pub fn load(
        key: &Path,
        cert: &Path,
        hash: ModuleSignHash,
        remove_key_file: bool,
    ) -> Result<ModuleSigningKey, ModuleKeyError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| ModuleKeyError::Io { path, source }
        };
        let mode = std::fs::metadata(key)
            .map_err(io(key))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(ModuleKeyError::Exposed {
                path: key.display().to_string(),
                mode: mode & 0o7777,
            });
        }
        let mut key_pem = SecretBytes(std::fs::read(key).map_err(io(key))?);
        if remove_key_file {
            std::fs::remove_file(key).map_err(|source| ModuleKeyError::NotRemoved {
                path: key.display().to_string(),
                source,
            })?;
            tracing::info!(key = %key.display(), "read the module-signing key into memory and removed its file");
        } else {
            tracing::warn!(
                key = %key.display(),
                "the module-signing key file stays in place while the driver's build runs, which can \
                 read it (--remove-module-sign-key removes a per-build copy once it is read)"
            );
        }
        let cert_bytes = std::fs::read(cert).map_err(io(cert))?;
        ModuleSigningKey::from_parts(
            std::mem::take(&mut key_pem.0),
            &cert_bytes,
            hash,
            &key.display().to_string(),
        )
        .map_err(|(path, reason)| ModuleKeyError::Format {
            path: if path == "certificate" {
                cert.display().to_string()
            } else {
                key.display().to_string()
            },
            reason,
        })
    }

    /// A key from its PEM text and a certificate (DER or PEM). Errors name the part ("key" or
    /// "certificate") and the reason.
    pub fn from_parts(
        key_pem: Vec<u8>,
        cert: &[u8],
        hash: ModuleSignHash,
        origin: &str,
    ) -> Result<ModuleSigningKey, (&'static str, String)> {
        let key_pem = SecretBytes(key_pem);
        integrity::module_signing::check_private_key_pem(&key_pem.0)
            .map_err(|reason| ("key", reason))?;
        let cert_der = integrity::module_signing::certificate_der(cert)
            .map_err(|reason| ("certificate", reason))?;
        Ok(ModuleSigningKey {
            key_pem,
            cert_der,
            hash,
            origin: origin.to_owned(),
        })
    }

    /// The hash modules are signed with.
    pub fn hash(&self) -> ModuleSignHash {
        self.hash
    }

    /// The certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Whether the certificate carries a subjectKeyIdentifier extension (OID 2.5.29.14), which
    /// `sign-file -k` names the signer by.
    pub fn has_subject_key_identifier(&self) -> bool {
        const SKID_OID: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x0e];
        self.cert_der.windows(SKID_OID.len()).any(|w| w == SKID_OID)
    }
}

/// How [`sign_modules`] signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleSignatures {
    pub hash: ModuleSignHash,
    /// `sign-file -k`: the signature names the signer by its subject key identifier (otherwise by
    /// issuer and serial number).
    pub by_subject_key_identifier: bool,
    pub modules: usize,
}

/// Signs each module in place with the headers' `scripts/sign-file [-k] <hash> <key> <cert>
/// <module>`, as kernels enforcing module signatures (Secure Boot, `module.sig_enforce=1`)
/// require. The key is on disk only while sign-file runs (see the module-signing section's
/// comment above).
pub fn sign_modules(
    system: &System,
    scratch: &ScratchDir,
    headers_dir: &Path,
    modules: &CompiledModules,
    signing: &ModuleSigningKey,
) -> Result<ModuleSignatures, CompileError> {
    let sign_error = |module: &Path, detail: String| CompileError::Sign {
        module: module.display().to_string(),
        detail,
    };
    let sign_file = headers_dir.join("scripts/sign-file");
    if system.resolve(&sign_file).is_none() {
        return Err(CompileError::Signing(format!(
            "the headers have no {}: they cannot sign modules",
            sign_file.display()
        )));
    }
    let by_key_id = sign_file_takes_key_id(system, &sign_file)?;
    let by_subject_key_identifier = match (by_key_id, signing.has_subject_key_identifier()) {
        (true, true) => {
            tracing::info!(
                "sign-file -k: the signatures name the signer by its subject key identifier"
            );
            true
        }
        (false, _) => {
            tracing::warn!(
                sign_file = %sign_file.display(),
                "this sign-file has no -k option: the signatures name the signer by issuer and \
                 serial number instead of its subject key identifier"
            );
            false
        }
        (true, false) => {
            tracing::warn!(
                "the certificate has no subjectKeyIdentifier: the signatures name the signer by \
                 issuer and serial number"
            );
            false
        }
    };
    stop_leftover_processes();
    let key = KeyOnDisk::write(&scratch.host, &scratch.guest, signing).map_err(|error| {
        CompileError::Signing(format!("writing the key for sign-file: {error}"))
    })?;
    for module in &modules.modules {
        let relative = module
            .strip_prefix(&scratch.host)
            .map_err(|_| sign_error(module, "module is outside the build directory".into()))?;
        let guest_module = scratch.guest.join(relative);
        let mut args = Vec::new();
        if by_subject_key_identifier {
            args.push("-k".to_owned());
        }
        args.extend([
            signing.hash().as_str().to_owned(),
            key.guest_key.display().to_string(),
            key.guest_cert.display().to_string(),
            guest_module.display().to_string(),
        ]);
        let command = CommandLine::new(&sign_file.display().to_string(), args);
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
    key.remove()
        .map_err(|error| CompileError::Signing(format!("removing the key file: {error}")))?;
    tracing::info!(
        modules = modules.modules.len(),
        hash = signing.hash().as_str(),
        "signed every module and removed the key file"
    );
    Ok(ModuleSignatures {
        hash: signing.hash(),
        by_subject_key_identifier,
        modules: modules.modules.len(),
    })
}

/// Whether `sign-file` takes `-k`: it parses its options with getopt, which answers an option it
/// does not know with "invalid option" (both ways it then prints its usage and exits 2).
fn sign_file_takes_key_id(system: &System, sign_file: &Path) -> Result<bool, CompileError> {
    let probe = CommandLine::new(&sign_file.display().to_string(), ["-k"]);
    let output = system
        .run(&probe)
        .map_err(|error| CompileError::Signing(format!("running {probe}: {error}")))?;
    Ok(
        !(output.stderr.contains("invalid option")
            || output.stderr.contains("unrecognized option")),
    )
}

/// When the builder is the init of its PID namespace (the executor's roots), every other process
/// in it was started by the build — header maintainer scripts, the driver's make — and has no
/// business outliving it: kill them all before the key is written to disk for sign-file. (Only
/// as PID 1: anywhere else `kill(-1)` would reach processes outside the build.)
fn stop_leftover_processes() {
    use nix::sys::signal::{Signal, kill};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::Pid;
    if std::process::id() != 1 {
        tracing::debug!("not the init of a PID namespace: leftover processes are not stopped");
        return;
    }
    let leftovers = other_live_processes();
    if leftovers.is_empty() {
        tracing::info!(
            "init of the build's PID namespace: no process of the build is left running"
        );
    } else {
        tracing::warn!(
            processes = ?leftovers,
            "init of the build's PID namespace: the build left processes running; killing them \
             before the key is written"
        );
    }
    // On Linux kill(-1) reaches every process this one may signal except init (this process).
    if let Err(error) = kill(Pid::from_raw(-1), Signal::SIGKILL)
        && error != nix::errno::Errno::ESRCH
    {
        tracing::warn!(%error, "could not kill the build's leftover processes");
    }
    // Reap them (as init, orphans are this process's children), for at most 2 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                if other_live_processes().is_empty() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

/// Process ids in `/proc` other than this one's that are not zombies.
fn other_live_processes() -> Vec<u32> {
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            // `<pid> (<comm>) <state> ...`: the state follows the last ')'.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().next().map(|state| state != "Z")
                })
                .unwrap_or(false)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The key and certificate on disk for sign-file only: a fresh 0700 directory holding the key
/// (0600, created exclusively) and the certificate, removed with both when dropped.
struct KeyOnDisk {
    host_dir: PathBuf,
    guest_key: PathBuf,
    guest_cert: PathBuf,
}

impl KeyOnDisk {
    fn write(
        host_parent: &Path,
        guest_parent: &Path,
        signing: &ModuleSigningKey,
    ) -> std::io::Result<KeyOnDisk> {
        use std::io::Write as _;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos())
            .unwrap_or_default();
        let name = format!(".module-signing-{}-{nanos:08x}", std::process::id());
        let host_dir = host_parent.join(&name);
        std::fs::DirBuilder::new().mode(0o700).create(&host_dir)?;
        let on_disk = KeyOnDisk {
            host_dir,
            guest_key: guest_parent.join(&name).join("key.pem"),
            guest_cert: guest_parent.join(&name).join("cert.der"),
        };
        for (file, bytes, mode) in [
            ("key.pem", &signing.key_pem.0, 0o600),
            ("cert.der", &signing.cert_der, 0o644),
        ] {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(on_disk.host_dir.join(file))?;
            out.write_all(bytes)?;
        }
        Ok(on_disk)
    }

    /// Removes the key now, reporting failure (`Drop` only tries).
    fn remove(self) -> std::io::Result<()> {
        std::fs::remove_file(self.host_dir.join("key.pem"))?;
        std::fs::remove_dir_all(&self.host_dir)
    }
}

impl Drop for KeyOnDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.host_dir.join("key.pem"));
        let _ = std::fs::remove_dir_all(&self.host_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel_id::{Arch, Distribution, DistroVersion, DriverVersion, KernelRelease};

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn make_gets_both_version_variables_and_the_commit() {
        let identity = KernelIdentity::new(
            KernelRelease::parse("6.1.0-47-amd64").expect("release"),
            Arch::X86_64,
            DistroVersion::supported(Distribution::parse("debian").expect("d"), "12")
                .expect("version"),
            DriverVersion::parse("v0.1.2").expect("driver version"),
        )
        .expect("identity");
        let driver = DriverName::parse("example-driver").expect("driver");
        let commit = SourceCommit::parse(COMMIT).expect("commit");
        let kbuild = Kbuild {
            identity: &identity,
            driver: &driver,
            headers_dir: Path::new("/usr/src/linux-headers-6.1.0-47-amd64"),
            source_commit: &commit,
            jobs: 2,
        };
        let command = make_command(&kbuild, Path::new("/tmp/b/src"));
        assert_eq!(
            command.to_string(),
            format!(
                "make -j2 -C /usr/src/linux-headers-6.1.0-47-amd64 M=/tmp/b/src modules \
                 DRIVER_VERSION=v0.1.2 EXAMPLE_DRIVER_VERSION=v0.1.2 KDRIVER_SOURCE_COMMIT={COMMIT}"
            )
        );
    }

    /// A minimal ELF relocatable file with a `.modinfo` section holding `modinfo`.
    fn elf_with_modinfo(wide: bool, little: bool, modinfo: &[u8]) -> Vec<u8> {
        let put = |out: &mut Vec<u8>, at: usize, len: usize, value: u64| {
            for i in 0..len {
                let shift = if little { 8 * i } else { 8 * (len - 1 - i) };
                out[at + i] = (value >> shift) as u8;
            }
        };
        let names = b"\0.modinfo\0.shstrtab\0";
        let (header_len, section_len, word) = if wide { (64, 64, 8) } else { (52, 40, 4) };
        let modinfo_at = header_len;
        let names_at = modinfo_at + modinfo.len();
        let shoff = names_at + names.len();
        let mut out = vec![0u8; shoff + 3 * section_len];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = if wide { 2 } else { 1 };
        out[5] = if little { 1 } else { 2 };
        out[modinfo_at..names_at].copy_from_slice(modinfo);
        out[names_at..shoff].copy_from_slice(names);
        let (shoff_at, shentsize_at) = if wide { (0x28, 0x3a) } else { (0x20, 0x2e) };
        put(&mut out, shoff_at, word, shoff as u64);
        put(&mut out, shentsize_at, 2, section_len as u64);
        put(&mut out, shentsize_at + 2, 2, 3);
        put(&mut out, shentsize_at + 4, 2, 2);
        for (index, (name, offset, size)) in [
            (0, 0, 0),
            (1, modinfo_at, modinfo.len()),
            (10, names_at, names.len()),
        ]
        .into_iter()
        .enumerate()
        {
            let header = shoff + index * section_len;
            put(&mut out, header, 4, name as u64);
            put(&mut out, header + 8 + 2 * word, word, offset as u64);
            put(&mut out, header + 8 + 3 * word, word, size as u64);
        }
        out
    }

    #[test]
    fn modinfo_is_read_from_the_elf_section_in_every_layout() {
        let modinfo = b"license=GPL\0scmversion=abc\0vermagic=6.1.0-47-amd64 SMP \0";
        for wide in [true, false] {
            for little in [true, false] {
                let elf = elf_with_modinfo(wide, little, modinfo);
                assert_eq!(
                    modinfo_section(&elf),
                    Some(&modinfo[..]),
                    "wide {wide} little {little}"
                );
                assert_eq!(modinfo_values(&elf, "scmversion"), ["abc"]);
                assert!(modinfo_values(&elf, "srcversion").is_empty());
            }
        }
        assert_eq!(modinfo_section(b"not an elf"), None);
        // Cut short (section headers gone): nothing is read past the end.
        let elf = elf_with_modinfo(true, true, modinfo);
        assert_eq!(modinfo_section(&elf[..70]), None);
    }

    #[test]
    fn scmversion_must_be_the_commit_or_absent() {
        let commit = SourceCommit::parse(COMMIT).expect("commit");
        let module = Path::new("/b/x.ko");
        let with =
            |value: &str| elf_with_modinfo(true, true, format!("scmversion={value}\0").as_bytes());
        assert!(check_scmversion(module, &with(COMMIT), &commit).is_ok());
        assert!(check_scmversion(module, &elf_with_modinfo(true, true, b"a=b\0"), &commit).is_ok());
        let error = check_scmversion(module, &with("unknown"), &commit).expect_err("mismatch");
        assert!(
            matches!(&error, CompileError::WrongScmVersion { found, .. } if found == "unknown"),
            "{error}"
        );
        assert!(error.to_string().contains(COMMIT), "{error}");
    }

    #[test]
    fn the_compiler_comes_from_kbuilds_cmd_files() {
        assert_eq!(
            compiler_of_cmd_file(
                "cmd_/tmp/b/src/x.o := gcc-12 -Wp,-MMD,/tmp/b/src/.x.o.d -nostdinc -c -o x.o x.c\n\
                 source_/tmp/b/src/x.o := x.c\n"
            ),
            Some(vec!["gcc-12".to_owned()])
        );
        assert_eq!(
            compiler_of_cmd_file(
                "savedcmd_x.o := ccache gcc-14 -Wp,-MMD,.x.o.d -c -o x.o x.c ; objtool\n"
            ),
            Some(vec!["ccache".to_owned(), "gcc-14".to_owned()])
        );
        assert_eq!(compiler_of_cmd_file("deps_x.o := \\\n"), None);
        let tree = tempfile::tempdir().expect("tempdir");
        std::fs::write(tree.path().join("x.c"), "").expect("write");
        // A composite object is linked, not compiled: its .cmd is not the compiler's.
        std::fs::write(
            tree.path().join(".composite.o.cmd"),
            "savedcmd_composite.o := ld -r -o composite.o x.o\n",
        )
        .expect("write");
        assert_eq!(kbuild_compiler(tree.path()), None);
        std::fs::write(
            tree.path().join(".x.o.cmd"),
            "savedcmd_x.o := gcc-12 -c -o x.o x.c\n",
        )
        .expect("write");
        assert_eq!(
            kbuild_compiler(tree.path()),
            Some(vec!["gcc-12".to_owned()])
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
    fn module_signing_keys_are_pem_and_certificates_der_or_pem() {
        use base64::Engine as _;
        let key = b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n".to_vec();
        // A DER SEQUENCE holding the subjectKeyIdentifier OID (2.5.29.14).
        let der = vec![0x30, 0x07, 0x06, 0x03, 0x55, 0x1d, 0x0e, 0x04, 0x00];
        let pem = format!(
            "junk before\n-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        for cert in [der.as_slice(), pem.as_bytes()] {
            let signing =
                ModuleSigningKey::from_parts(key.clone(), cert, ModuleSignHash::Sha512, "k")
                    .expect("valid");
            assert_eq!(signing.certificate_der(), der.as_slice());
            assert!(signing.has_subject_key_identifier());
            assert_eq!(signing.hash().as_str(), "sha512");
            assert!(!format!("{signing:?}").contains("PRIVATE"), "{signing:?}");
        }
        let without_skid =
            ModuleSigningKey::from_parts(key.clone(), &[0x30, 0x00], ModuleSignHash::Sha256, "k")
                .expect("valid");
        assert!(!without_skid.has_subject_key_identifier());
        let refused = |key: &[u8], cert: &[u8]| {
            ModuleSigningKey::from_parts(key.to_vec(), cert, ModuleSignHash::Sha256, "k")
                .expect_err("refused")
        };
        assert_eq!(refused(b"not a key", &der).0, "key");
        let encrypted =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nx\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(refused(encrypted, &der).1.contains("encrypted"));
        assert_eq!(refused(&key, b"hello").0, "certificate");
        assert_eq!(
            refused(
                &key,
                b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"
            )
            .0,
            "certificate"
        );
        assert_eq!(
            ModuleSignHash::parse("sha256"),
            Some(ModuleSignHash::Sha256)
        );
        assert_eq!(ModuleSignHash::parse("sha1"), None);
    }

    #[test]
    fn a_module_signing_key_file_is_checked_read_and_removed_when_asked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.der");
        std::fs::write(
            &key,
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n",
        )
        .expect("write");
        std::fs::write(&cert, [0x30, 0x00]).expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let error = ModuleSigningKey::load(&key, &cert, ModuleSignHash::Sha256, true)
            .expect_err("group-readable");
        assert!(
            error
                .to_string()
                .contains("must not be readable by group or others (mode 0640)"),
            "{error}"
        );
        assert!(key.exists());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        ModuleSigningKey::load(&key, &cert, ModuleSignHash::Sha256, false).expect("kept");
        assert!(
            key.exists(),
            "without --remove-module-sign-key the file stays"
        );
        ModuleSigningKey::load(&key, &cert, ModuleSignHash::Sha256, true).expect("removed");
        assert!(!key.exists(), "the per-build copy is gone once read");
    }

    #[test]
    fn the_key_is_on_disk_only_inside_its_guard() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = tempfile::tempdir().expect("tempdir");
        let signing = ModuleSigningKey::from_parts(
            b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n".to_vec(),
            &[0x30, 0x00],
            ModuleSignHash::Sha256,
            "k",
        )
        .expect("valid");
        let on_disk =
            KeyOnDisk::write(scratch.path(), Path::new("/guest"), &signing).expect("written");
        let host_key = on_disk.host_dir.join("key.pem");
        let mode =
            |path: &Path| std::fs::metadata(path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&on_disk.host_dir), 0o700);
        assert_eq!(mode(&host_key), 0o600);
        assert!(
            on_disk
                .guest_key
                .to_string_lossy()
                .starts_with("/guest/.module-signing-"),
            "{}",
            on_disk.guest_key.display()
        );
        on_disk.remove().expect("removed");
        assert_eq!(std::fs::read_dir(scratch.path()).expect("dir").count(), 0);
        // Dropped on an error path: gone too.
        let dropped =
            KeyOnDisk::write(scratch.path(), Path::new("/guest"), &signing).expect("written");
        drop(dropped);
        assert_eq!(std::fs::read_dir(scratch.path()).expect("dir").count(), 0);
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
