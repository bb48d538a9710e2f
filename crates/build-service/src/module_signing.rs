//! The module-signing key and certificate (Secure Boot, `module.sig_enforce=1`): a kernel that
//! enforces module signatures loads only modules signed by a key it trusts, so the local backend
//! signs every module it builds with the kernel's own `sign-file`, and the service publishes the
//! certificate at `GET /module-signing-cert.der` for operators to enrol (MOK, UEFI `db`).
//!
//! Checked once, at startup, before anything is served: the key is a PEM private key that nobody
//! but its owner can read (mode 0600, the rule for every secret key of this project) and that
//! needs no passphrase; the certificate (PEM or DER) is an X.509 certificate; and the two belong
//! together — `openssl pkey -pubout` of the key and `openssl x509 -pubkey` of the certificate are
//! the same public key. The certificate's DER is written beside the service's state for the
//! executor, which copies key and certificate into each build root (see build-root's
//! `ModuleSigningInput` and driver-builder's `compile` module for how the key is kept from the
//! driver's own build).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use build_root::executor::{ModuleSignHash, ModuleSigningInput};

/// Where the service publishes the certificate.
pub const CERT_ROUTE: &str = "/module-signing-cert.der";
/// The media type of a DER certificate (RFC 2585).
pub const CERT_CONTENT_TYPE: &str = "application/pkix-cert";
/// The certificate's file name, as served and as written into the state directory.
pub const CERT_FILE: &str = "module-signing-cert.der";

/// Why the module-signing key or certificate is refused.
#[derive(Debug, thiserror::Error)]
pub enum ModuleSigningError {
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
    #[error("{path}: {reason}")]
    Key { path: String, reason: String },
    #[error("{path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error(
        "the module-signing key {key} and certificate {cert} do not belong together: the \
         certificate is for another public key (compare `openssl pkey -in KEY -pubout` with \
         `openssl x509 -in CERT -noout -pubkey`)"
    )]
    Mismatch { key: String, cert: String },
    #[error("running openssl ({what}): {detail}")]
    Openssl { what: String, detail: String },
}

/// A checked module-signing key and certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct ModuleSigning {
    key: PathBuf,
    cert_der: Vec<u8>,
    hash: ModuleSignHash,
    subject: String,
}

impl std::fmt::Debug for ModuleSigning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleSigning")
            .field("key", &self.key)
            .field("subject", &self.subject)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl ModuleSigning {
    /// Checks `key` (PEM private key, mode 0600, unencrypted) and `cert` (X.509, PEM or DER) and
    /// that they belong together (see the module documentation).
    pub fn load(
        key: &Path,
        cert: &Path,
        hash: ModuleSignHash,
    ) -> Result<ModuleSigning, ModuleSigningError> {
        let key_name = key.display().to_string();
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| ModuleSigningError::Io { path, source }
        };
        let mode = std::fs::metadata(key)
            .map_err(io(key))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(ModuleSigningError::Exposed {
                path: key_name,
                mode: mode & 0o7777,
            });
        }
        check_private_key_pem(key)?;
        let cert_der =
            integrity::module_signing::certificate_der(&std::fs::read(cert).map_err(io(cert))?)
                .map_err(|reason| ModuleSigningError::Certificate {
                    path: cert.display().to_string(),
                    reason,
                })?;
        let cert_public = openssl(
            &["x509", "-inform", "DER", "-noout", "-pubkey"],
            Some(&cert_der),
            "reading the certificate's public key",
        )
        .map_err(|detail| ModuleSigningError::Certificate {
            path: cert.display().to_string(),
            reason: format!("not an X.509 certificate openssl reads: {detail}"),
        })?;
        let key_arg = key.to_str().ok_or_else(|| ModuleSigningError::Key {
            path: key_name.clone(),
            reason: "the path is not UTF-8".to_owned(),
        })?;
        // `-passin pass:` makes an encrypted key fail instead of prompting.
        let key_public = openssl(
            &["pkey", "-in", key_arg, "-pubout", "-passin", "pass:"],
            None,
            "reading the key's public key",
        )
        .map_err(|detail| ModuleSigningError::Key {
            path: key_name.clone(),
            reason: format!("not a private key openssl reads without a passphrase: {detail}"),
        })?;
        if cert_public.trim() != key_public.trim() {
            return Err(ModuleSigningError::Mismatch {
                key: key_name,
                cert: cert.display().to_string(),
            });
        }
        let subject = openssl(
            &[
                "x509", "-inform", "DER", "-noout", "-subject", "-nameopt", "RFC2253",
            ],
            Some(&cert_der),
            "reading the certificate's subject",
        )
        .map(|text| text.trim().trim_start_matches("subject=").trim().to_owned())
        .unwrap_or_default();
        Ok(ModuleSigning {
            key: key.to_owned(),
            cert_der,
            hash,
            subject,
        })
    }

    /// The key's path.
    pub fn key(&self) -> &Path {
        &self.key
    }

    /// The certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The certificate's subject (RFC 2253), for logs.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The hash modules are signed with.
    pub fn hash(&self) -> ModuleSignHash {
        self.hash
    }

    /// Writes the certificate's DER to `path` (replacing it atomically) and returns what the
    /// executor needs to sign with this key and certificate.
    pub fn executor_input(&self, path: &Path) -> Result<ModuleSigningInput, ModuleSigningError> {
        let io = |source| ModuleSigningError::Io {
            path: path.display().to_string(),
            source,
        };
        let directory = path.parent().unwrap_or(Path::new("."));
        let mut temporary = tempfile::NamedTempFile::new_in(directory).map_err(io)?;
        temporary.write_all(&self.cert_der).map_err(io)?;
        std::fs::set_permissions(temporary.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
        temporary.persist(path).map_err(|error| io(error.error))?;
        Ok(ModuleSigningInput {
            key: self.key.clone(),
            cert_der: path.to_owned(),
            hash: self.hash,
        })
    }
}

/// A PEM private key sign-file reads without a passphrase (checked on the text; the key itself is
/// parsed by openssl in [`ModuleSigning::load`]).
fn check_private_key_pem(key: &Path) -> Result<(), ModuleSigningError> {
    let refuse = |reason: String| ModuleSigningError::Key {
        path: key.display().to_string(),
        reason,
    };
    let pem = std::fs::read(key).map_err(|error| refuse(format!("cannot be read ({error})")))?;
    integrity::module_signing::check_private_key_pem(&pem).map_err(refuse)
}

fn openssl(args: &[&str], input: Option<&[u8]>, what: &str) -> Result<String, String> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run openssl for {what} (install openssl): {error}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input)
            .map_err(|error| format!("{what}: writing to openssl: {error}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|error| format!("{what}: {error}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .find(|line| !line.trim().is_empty())
            .unwrap_or_default();
        return Err(format!("openssl {} ({}): {first}", args[0], output.status));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key pair made with openssl in `dir` (`<name>.key` 0600, `<name>.pem` PEM certificate).
    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = dir.join(format!("{name}.key"));
        let cert = dir.join(format!("{name}.pem"));
        let status = Command::new("openssl")
            .args([
                "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN={name}/")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        (key, cert)
    }

    #[test]
    fn a_matching_pair_loads_from_pem_or_der_and_the_der_is_written_for_the_executor() {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = pair(dir.path(), "one");
        let from_pem = ModuleSigning::load(&key, &cert, ModuleSignHash::Sha256).expect("loads");
        assert_eq!(from_pem.subject(), "CN=one");
        assert_eq!(from_pem.certificate_der()[0], 0x30);
        let der = dir.path().join("one.der");
        std::fs::write(&der, from_pem.certificate_der()).unwrap();
        let from_der = ModuleSigning::load(&key, &der, ModuleSignHash::Sha512).expect("loads");
        assert_eq!(from_der.certificate_der(), from_pem.certificate_der());
        assert_eq!(from_der.hash(), ModuleSignHash::Sha512);
        let written = dir.path().join("state").join(CERT_FILE);
        std::fs::create_dir_all(written.parent().unwrap()).unwrap();
        let input = from_der.executor_input(&written).expect("written");
        assert_eq!(std::fs::read(&written).unwrap(), from_pem.certificate_der());
        assert_eq!(input.key, key);
        assert_eq!(input.cert_der, written);
        assert_eq!(input.hash, ModuleSignHash::Sha512);
        // openssl agrees that the DER is the certificate.
        let text = openssl(
            &["x509", "-inform", "DER", "-noout", "-subject"],
            Some(&std::fs::read(&written).unwrap()),
            "test",
        )
        .unwrap();
        assert!(text.contains("CN = one"), "{text}");
    }

    #[test]
    fn a_key_others_can_read_is_refused_like_every_secret_key() {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = pair(dir.path(), "one");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = ModuleSigning::load(&key, &cert, ModuleSignHash::Sha256).unwrap_err();
        assert!(
            matches!(error, ModuleSigningError::Exposed { mode: 0o644, .. }),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains("must not be readable by group or others (mode 0644)")
                && message.contains(&format!("chmod 600 {}", key.display())),
            "{message}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(ModuleSigning::load(&key, &cert, ModuleSignHash::Sha256).is_err());
    }

    #[test]
    fn a_key_and_a_certificate_of_another_key_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = pair(dir.path(), "one");
        let (_, other_cert) = pair(dir.path(), "two");
        let error = ModuleSigning::load(&key, &other_cert, ModuleSignHash::Sha256).unwrap_err();
        assert!(
            matches!(error, ModuleSigningError::Mismatch { .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("do not belong together"),
            "{error}"
        );
    }

    #[test]
    fn what_is_not_a_key_or_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = pair(dir.path(), "one");
        let junk = dir.path().join("junk");
        std::fs::write(&junk, "hello\n").unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let error = ModuleSigning::load(&junk, &cert, ModuleSignHash::Sha256).unwrap_err();
        assert!(matches!(error, ModuleSigningError::Key { .. }), "{error}");
        let error = ModuleSigning::load(&key, &junk, ModuleSignHash::Sha256).unwrap_err();
        assert!(
            matches!(error, ModuleSigningError::Certificate { .. }),
            "{error}"
        );
        // An encrypted key would make sign-file ask for a passphrase.
        let encrypted = dir.path().join("encrypted.key");
        let status = Command::new("openssl")
            .args(["pkey", "-aes256", "-passout", "pass:secret", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&encrypted)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::set_permissions(&encrypted, std::fs::Permissions::from_mode(0o600)).unwrap();
        let error = ModuleSigning::load(&encrypted, &cert, ModuleSignHash::Sha256).unwrap_err();
        assert!(error.to_string().contains("encrypted"), "{error}");
        assert!(
            integrity::module_signing::certificate_der(
                b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"
            )
            .is_err()
        );
    }
}
