//! The files that travel next to a package: a minisign-compatible detached signature
//! (`<package>.minisig`) and a SHA-256 digest in `sha256sum` format (`<package>.sha256`). Their
//! names come from kernel-id; the loader verifies both.
//!
//! Nothing already present is overwritten: an artifact that was published once stays as it was.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use kernel_id::{DriverName, KernelIdentity};
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ArtifactError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; artifacts are never overwritten")]
    Exists { path: String },
    #[error("minisign key {path}: {message}")]
    Key { path: String, message: String },
    #[error("signing {path}: {message}")]
    Sign { path: String, message: String },
    #[error("{0}")]
    Identity(#[from] kernel_id::IdError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `contents` to a new file; refuses to replace one.
fn write_new(path: &Path, contents: &[u8]) -> Result<(), ArtifactError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                ArtifactError::Exists {
                    path: path.display().to_string(),
                }
            } else {
                ArtifactError::Io {
                    path: path.display().to_string(),
                    source,
                }
            }
        })?;
    file.write_all(contents).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, ArtifactError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A minisign secret key, decrypted, with its public half (every signature is verified against
/// it before it is written, so a damaged key cannot produce a signature nobody can check).
pub struct SigningKey {
    key: minisign::SecretKey,
    public: minisign::PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// Offset and value of the KDF algorithm in a minisign secret key (after the 2-byte signature
/// algorithm); `[0, 0]` means the key is stored unencrypted.
const KDF_ALG_RANGE: std::ops::Range<usize> = 2..4;
const KDF_NONE: [u8; 2] = [0, 0];

impl SigningKey {
    /// Loads a minisign secret key file. Unencrypted keys (`minisign -G -W`) need no password;
    /// an encrypted key needs one and is never prompted for: the builder runs unattended.
    ///
    /// The minisign CLI (0.11) leaves the checksum of unencrypted keys zeroed, which the
    /// `minisign` crate's loader rejects as corrupted; such keys are read from their bytes and
    /// checked instead by verifying each signature with the derived public key.
    pub fn load(path: &Path, password: Option<String>) -> Result<SigningKey, ArtifactError> {
        let key_error = |message: String| ArtifactError::Key {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(io_error(path))?;
        let key = match password {
            Some(password) => {
                let sk_box = minisign::SecretKeyBox::from_string(&text)
                    .map_err(|e| key_error(e.to_string()))?;
                minisign::SecretKey::from_box(sk_box, Some(password))
                    .map_err(|e| key_error(e.to_string()))?
            }
            None => {
                let encoded = text
                    .lines()
                    .nth(1)
                    .ok_or_else(|| key_error("no key line after the comment".to_owned()))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|e| key_error(format!("not base64: {e}")))?;
                if bytes.get(KDF_ALG_RANGE) != Some(&KDF_NONE[..]) {
                    return Err(key_error(
                        "the key is encrypted; give its password with --minisign-password-env VAR"
                            .to_owned(),
                    ));
                }
                minisign::SecretKey::from_bytes(&bytes).map_err(|e| key_error(e.to_string()))?
            }
        };
        let public =
            minisign::PublicKey::from_secret_key(&key).map_err(|e| key_error(e.to_string()))?;
        Ok(SigningKey { key, public })
    }

    /// Signs a file (prehashed, as `minisign -S` does by default), with a trusted comment that
    /// names the file so a signature cannot be moved to another artifact unnoticed.
    pub fn sign_file(&self, path: &Path) -> Result<String, ArtifactError> {
        let file = File::open(path).map_err(io_error(path))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let trusted = format!("timestamp:{timestamp}\tfile:{name}");
        let signature = minisign::sign(
            Some(&self.public),
            &self.key,
            std::io::BufReader::new(file),
            Some(&trusted),
            Some("signature from driver-builder"),
        )
        .map_err(|e| ArtifactError::Sign {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(signature.into_string())
    }
}

/// The files written next to a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarFiles {
    pub digest: PathBuf,
    pub signature: Option<PathBuf>,
}

/// Writes `<package>.sha256` and, with a key, `<package>.minisig`, named by kernel-id for the
/// identity the package file name encodes.
pub fn write_sidecars(
    package: &Path,
    driver: &DriverName,
    identity: &KernelIdentity,
    key: Option<&SigningKey>,
) -> Result<SidecarFiles, ArtifactError> {
    let dir = package.parent().unwrap_or(Path::new("."));
    let package_name = identity.package_file_name(driver);
    let digest_path = dir.join(identity.digest_file_name(driver));
    let digest = sha256_file(package)?;
    write_new(
        &digest_path,
        format!("{digest}  {package_name}\n").as_bytes(),
    )?;
    tracing::info!(file = %digest_path.display(), sha256 = %digest, "wrote digest");
    let signature = match key {
        Some(key) => {
            let path = dir.join(identity.signature_file_name(driver));
            let text = key.sign_file(package)?;
            write_new(&path, text.as_bytes())?;
            tracing::info!(file = %path.display(), "wrote signature");
            Some(path)
        }
        None => None,
    };
    Ok(SidecarFiles {
        digest: digest_path,
        signature,
    })
}

/// `driver-builder sign`: any package whose file name kernel-id can parse.
pub fn sign_existing_package(
    package: &Path,
    key: &SigningKey,
) -> Result<SidecarFiles, ArtifactError> {
    let file_name = package
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (driver, identity) = KernelIdentity::parse_any_package_file_name(&file_name)?;
    if !package.is_file() {
        return Err(ArtifactError::Io {
            path: package.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such package file"),
        });
    }
    write_sidecars(package, &driver, &identity, Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_sha256sum_format_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = DriverName::parse("example-driver").expect("driver");
        let name = "example-driver-debian-12-6.1.0-47-amd64_v0.1.2_amd64.deb";
        let (_, identity) = KernelIdentity::parse_any_package_file_name(name).expect("identity");
        let package = dir.path().join(name);
        std::fs::write(&package, b"abc").expect("write");
        let sidecars = write_sidecars(&package, &driver, &identity, None).expect("sidecars");
        assert_eq!(
            std::fs::read_to_string(&sidecars.digest).expect("read"),
            format!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  {name}\n")
        );
        assert!(matches!(
            write_sidecars(&package, &driver, &identity, None),
            Err(ArtifactError::Exists { .. })
        ));
    }

    #[test]
    fn unencrypted_keys_sign_verifiably() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = minisign::KeyPair::generate_unencrypted_keypair().expect("keypair");
        let path = dir.path().join("key");
        std::fs::write(&path, pair.sk.to_box(None).expect("box").into_string()).expect("write");
        let key = SigningKey::load(&path, None).expect("loads");
        let file = dir.path().join("data");
        std::fs::write(&file, b"payload").expect("write");
        let signature = key.sign_file(&file).expect("signs");
        let sig_box = minisign::SignatureBox::from_string(&signature).expect("parses");
        assert!(
            sig_box
                .trusted_comment()
                .expect("comment")
                .contains("file:data")
        );
        minisign::verify(
            &pair.pk,
            &sig_box,
            std::io::Cursor::new(b"payload"),
            true,
            false,
            false,
        )
        .expect("verifies");
        assert!(
            minisign::verify(
                &pair.pk,
                &sig_box,
                std::io::Cursor::new(b"tampered"),
                true,
                false,
                false,
            )
            .is_err()
        );
    }
}
