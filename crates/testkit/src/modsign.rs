//! Kernel module signatures made for tests, in the layout the kernel's `scripts/sign-file` writes:
//! the module's bytes, a detached PKCS#7 (CMS) signature in DER, the 12-byte `struct
//! module_signature` (`id_type` 2 = PKCS#7, the signature's length big-endian, everything else
//! zero), and the magic string `~Module signature appended~\n`.
//!
//! [`ModuleKey::generate`] makes a key pair the way the kernel's `certs/default_x509.genkey` does
//! (RSA 2048, self-signed, `basicConstraints=critical,CA:FALSE`, `keyUsage=digitalSignature`,
//! `subjectKeyIdentifier=hash`) with openssl; [`sign_module`] signs with `openssl cms` (SHA-256,
//! detached, no certificates, no signed attributes: what sign-file does); [`strip_signature`] turns
//! a module Debian signed into an unsigned one.
//!
//! The kernel names a certificate it loads by its subject CN and subject key identifier
//! (`Loaded X.509 cert '<CN>: <skid>'`): [`ModuleKey::kernel_description`] is that string.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::lock::scratch_path;

/// The magic string that ends a signed module.
pub const MODULE_SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";
/// `struct module_signature`'s size: algo, hash, id_type, signer_len, key_id_len, 3 pad bytes,
/// then `sig_len` as a big-endian u32.
const MODULE_SIGNATURE_INFO_LEN: usize = 12;
/// `PKEY_ID_PKCS7`: the signature is a PKCS#7 message (the only kind the kernel verifies).
const PKEY_ID_PKCS7: u8 = 2;

/// A test key pair for signing modules: `<dir>/signing_key.pem` (unencrypted, 0600) and its
/// self-signed certificate as `<dir>/signing_key.x509` (DER, as the kernel's build names it) and
/// `<dir>/signing_key.crt` (PEM).
#[derive(Clone, Debug)]
pub struct ModuleKey {
    pub private_key: PathBuf,
    pub cert_pem: PathBuf,
    pub cert_der: PathBuf,
    /// The certificate's subject CN (its only subject attribute).
    pub common_name: String,
}

impl ModuleKey {
    /// A fresh key pair in `dir` whose certificate's subject is only `CN=<common_name>`.
    pub fn generate(dir: &Path, common_name: &str) -> Result<ModuleKey> {
        if common_name.is_empty()
            || !common_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " -_.".contains(c))
        {
            bail!("module key common name '{common_name}': must be [A-Za-z0-9 _.-]+");
        }
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = ModuleKey {
            private_key: dir.join("signing_key.pem"),
            cert_pem: dir.join("signing_key.crt"),
            cert_der: dir.join("signing_key.x509"),
            common_name: common_name.to_owned(),
        };
        // The kernel's certs/default_x509.genkey, with the subject reduced to a CN so that the
        // kernel's name for the certificate is exactly that CN.
        let genkey = dir.join("x509.genkey");
        fs::write(
            &genkey,
            format!(
                "[ req ]\n\
                 default_bits = 2048\n\
                 distinguished_name = req_distinguished_name\n\
                 prompt = no\n\
                 string_mask = utf8only\n\
                 x509_extensions = myexts\n\
                 \n\
                 [ req_distinguished_name ]\n\
                 CN = {common_name}\n\
                 \n\
                 [ myexts ]\n\
                 basicConstraints=critical,CA:FALSE\n\
                 keyUsage=digitalSignature\n\
                 subjectKeyIdentifier=hash\n\
                 authorityKeyIdentifier=keyid\n"
            ),
        )?;
        openssl(
            Command::new("openssl")
                .args([
                    "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "36500",
                ])
                .args(["-batch", "-x509", "-config"])
                .arg(&genkey)
                .args(["-outform", "PEM", "-out"])
                .arg(&key.cert_pem)
                .arg("-keyout")
                .arg(&key.private_key),
        )
        .context("generating a module signing key")?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&key.private_key, fs::Permissions::from_mode(0o600))?;
        openssl(
            Command::new("openssl")
                .args(["x509", "-inform", "PEM", "-outform", "DER", "-in"])
                .arg(&key.cert_pem)
                .arg("-out")
                .arg(&key.cert_der),
        )?;
        Ok(key)
    }

    /// The certificate's subject key identifier as the kernel prints it (lowercase hex, no
    /// colons).
    pub fn subject_key_id(&self) -> Result<String> {
        subject_key_id(&self.cert_pem)
    }

    /// How the kernel names the certificate when it loads it: `<CN>: <skid>`.
    pub fn kernel_description(&self) -> Result<String> {
        Ok(format!("{}: {}", self.common_name, self.subject_key_id()?))
    }
}

/// The subject key identifier of the PEM or DER certificate at `cert`, as the kernel prints it
/// (lowercase hex, no colons).
pub fn subject_key_id(cert: &Path) -> Result<String> {
    let bytes = fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let form = if bytes.starts_with(b"-----BEGIN") {
        "PEM"
    } else {
        "DER"
    };
    let text = openssl(
        Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-inform",
                form,
                "-ext",
                "subjectKeyIdentifier",
                "-in",
            ])
            .arg(cert),
    )?;
    // "X509v3 Subject Key Identifier: \n    50:91:4E:..."
    let hex: String = text
        .lines()
        .skip_while(|line| !line.contains("Subject Key Identifier"))
        .nth(1)
        .map(|line| line.trim().replace(':', "").to_ascii_lowercase())
        .unwrap_or_default();
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "{} has no readable subject key identifier:\n{text}",
            cert.display()
        );
    }
    Ok(hex)
}

/// `module` without its appended signature, or `None` when it carries none. A signature whose
/// trailer is inconsistent (not PKCS#7, or longer than the module) is an error.
pub fn strip_signature(module: &[u8]) -> Result<Option<Vec<u8>>> {
    let Some(rest) = module.strip_suffix(MODULE_SIGNATURE_MAGIC) else {
        return Ok(None);
    };
    let info_start = rest
        .len()
        .checked_sub(MODULE_SIGNATURE_INFO_LEN)
        .context("module signature trailer: shorter than struct module_signature")?;
    let info = &rest[info_start..];
    if info[2] != PKEY_ID_PKCS7 {
        bail!(
            "module signature trailer: id_type {} is not PKCS#7 ({PKEY_ID_PKCS7})",
            info[2]
        );
    }
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    let end = info_start
        .checked_sub(sig_len)
        .context("module signature trailer: sig_len is longer than the module")?;
    Ok(Some(rest[..end].to_vec()))
}

/// Appends `signature` (DER PKCS#7) to `unsigned` in sign-file's layout.
pub fn append_signature(unsigned: &[u8], signature: &[u8]) -> Result<Vec<u8>> {
    let sig_len = u32::try_from(signature.len()).context("signature longer than 4 GiB")?;
    let mut signed = Vec::with_capacity(
        unsigned.len() + signature.len() + MODULE_SIGNATURE_INFO_LEN + MODULE_SIGNATURE_MAGIC.len(),
    );
    signed.extend_from_slice(unsigned);
    signed.extend_from_slice(signature);
    signed.extend_from_slice(&[0, 0, PKEY_ID_PKCS7, 0, 0, 0, 0, 0]);
    signed.extend_from_slice(&sig_len.to_be_bytes());
    signed.extend_from_slice(MODULE_SIGNATURE_MAGIC);
    Ok(signed)
}

/// Signs the unsigned module at `unsigned` with `key` (SHA-256) and writes the signed module to
/// `out`.
pub fn sign_module(unsigned: &Path, key: &ModuleKey, out: &Path) -> Result<()> {
    let bytes = fs::read(unsigned).with_context(|| format!("reading {}", unsigned.display()))?;
    if bytes.ends_with(MODULE_SIGNATURE_MAGIC) {
        bail!(
            "{} is already signed: strip its signature first",
            unsigned.display()
        );
    }
    let signature_path = scratch_path(out, "p7s");
    let result = (|| {
        // sign-file's flags: detached, binary, no certificates, no S/MIME capabilities, no
        // signed attributes; the signer is named by issuer and serial number.
        openssl(
            Command::new("openssl")
                .args([
                    "cms",
                    "-sign",
                    "-binary",
                    "-noattr",
                    "-nocerts",
                    "-nosmimecap",
                ])
                .args(["-md", "sha256", "-outform", "DER", "-in"])
                .arg(unsigned)
                .arg("-signer")
                .arg(&key.cert_pem)
                .arg("-inkey")
                .arg(&key.private_key)
                .arg("-out")
                .arg(&signature_path),
        )
        .with_context(|| format!("signing {}", unsigned.display()))?;
        let signature = fs::read(&signature_path)?;
        fs::write(out, append_signature(&bytes, &signature)?)
            .with_context(|| format!("writing {}", out.display()))
    })();
    let _ = fs::remove_file(&signature_path);
    result
}

fn openssl(command: &mut Command) -> Result<String> {
    crate::command_output(command).context("openssl (install Debian's openssl package)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_appended_is_stripped_again() {
        let module = b"\x7fELF module body".to_vec();
        let signed = append_signature(&module, b"0\x82pkcs7-bytes").expect("append");
        assert!(signed.ends_with(MODULE_SIGNATURE_MAGIC));
        let info = &signed[signed.len() - MODULE_SIGNATURE_MAGIC.len() - 12..];
        assert_eq!(&info[..8], &[0, 0, 2, 0, 0, 0, 0, 0]);
        assert_eq!(&info[8..12], &13u32.to_be_bytes());
        assert_eq!(
            strip_signature(&signed).expect("strip"),
            Some(module.clone())
        );
        assert_eq!(strip_signature(&module).expect("unsigned"), None);
    }

    #[test]
    fn inconsistent_trailers_are_errors() {
        let mut lying = append_signature(b"short", b"sig").expect("append");
        let at = lying.len() - MODULE_SIGNATURE_MAGIC.len() - 4;
        lying[at..at + 4].copy_from_slice(&1000u32.to_be_bytes());
        assert!(strip_signature(&lying).is_err());
        let mut not_pkcs7 = append_signature(b"body", b"sig").expect("append");
        let at = not_pkcs7.len() - MODULE_SIGNATURE_MAGIC.len() - 12 + 2;
        not_pkcs7[at] = 1;
        assert!(strip_signature(&not_pkcs7).is_err());
        assert!(strip_signature(MODULE_SIGNATURE_MAGIC).is_err());
    }
}
