//! The files that travel next to a package: the detached minisign signature (`<package>.minisig`,
//! its trusted comment bound to the package's file name) and the SHA-256 digest in `sha256sum`
//! format (`<package>.sha256`). Their names come from kernel-id, their contents from the
//! [`integrity`] crate (the same code the service signs with and the loader verifies with).
//!
//! Nothing already present is overwritten: an artifact that was published once stays as it was. A
//! digest file that is already there (the build wrote it, the signer runs later outside the root) is
//! kept when it names this package and agrees with its bytes, and refused otherwise.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use integrity::SecretKey;
use integrity::digest::{DigestFile, Sha256Digest, sha256_file};
use kernel_id::{DriverName, KernelIdentity};
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
    #[error("{path}: {reason}; refusing to sign beside it (artifacts are never overwritten)")]
    DigestMismatch { path: String, reason: String },
    #[error("{path}: the file name is not kernel-id's name for its identity (expected {expected})")]
    NotCanonical { path: String, expected: String },
    #[error("signing {path}: {source}")]
    Sign {
        path: String,
        #[source]
        source: integrity::SignatureError,
    },
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
pub fn write_new(path: &Path, contents: &[u8]) -> Result<(), ArtifactError> {
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

/// The SHA-256 of a file, streamed.
pub fn package_digest(path: &Path) -> Result<Sha256Digest, ArtifactError> {
    sha256_file(path).map_err(io_error(path))
}

/// The files written next to a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarFiles {
    pub digest: PathBuf,
    pub signature: Option<PathBuf>,
}

/// Writes `<package>.sha256` and, with a key, `<package>.minisig`, named by kernel-id for the
/// identity the package file name encodes. The digest file must not exist yet.
pub fn write_sidecars(
    package: &Path,
    driver: &DriverName,
    identity: &KernelIdentity,
    key: Option<&SecretKey>,
) -> Result<SidecarFiles, ArtifactError> {
    write_sidecars_with(package, driver, identity, key, false)
}

fn write_sidecars_with(
    package: &Path,
    driver: &DriverName,
    identity: &KernelIdentity,
    key: Option<&SecretKey>,
    keep_matching_digest: bool,
) -> Result<SidecarFiles, ArtifactError> {
    let dir = package.parent().unwrap_or(Path::new("."));
    let package_name = identity.package_file_name(driver);
    let digest_path = dir.join(identity.digest_file_name(driver));
    let signature_path = dir.join(identity.signature_file_name(driver));
    // A signed package stays signed as it was: refused before anything is hashed or written.
    if key.is_some() && signature_path.exists() {
        return Err(ArtifactError::Exists {
            path: signature_path.display().to_string(),
        });
    }
    let digest = package_digest(package)?;
    let digest_file = DigestFile::new(digest, package_name.as_str());
    if keep_matching_digest && digest_path.exists() {
        let text = std::fs::read_to_string(&digest_path).map_err(io_error(&digest_path))?;
        DigestFile::parse(&text)
            .and_then(|existing| existing.check(&package_name, &digest))
            .map_err(|reason| ArtifactError::DigestMismatch {
                path: digest_path.display().to_string(),
                reason,
            })?;
        tracing::info!(file = %digest_path.display(), sha256 = %digest, "kept the matching digest");
    } else {
        write_new(&digest_path, digest_file.render().as_bytes())?;
        tracing::info!(file = %digest_path.display(), sha256 = %digest, "wrote digest");
    }
    let signature = match key {
        Some(key) => {
            let path = signature_path;
            let text = integrity::signature::sign_package(key, package, &package_name).map_err(
                |source| ArtifactError::Sign {
                    path: package.display().to_string(),
                    source,
                },
            )?;
            write_new(&path, text.as_bytes())?;
            tracing::info!(file = %path.display(), key_id = %key.id(), "wrote signature");
            Some(path)
        }
        None => None,
    };
    Ok(SidecarFiles {
        digest: digest_path,
        signature,
    })
}

/// The driver and identity a package's file name encodes. The name must be exactly kernel-id's
/// name for that identity, and the file must exist.
pub fn identify_package(package: &Path) -> Result<(DriverName, KernelIdentity), ArtifactError> {
    let file_name = package
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (driver, identity) = KernelIdentity::parse_any_package_file_name(&file_name)?;
    let expected = identity.package_file_name(&driver);
    if expected != file_name {
        return Err(ArtifactError::NotCanonical {
            path: package.display().to_string(),
            expected,
        });
    }
    if !package.is_file() {
        return Err(ArtifactError::Io {
            path: package.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such package file"),
        });
    }
    Ok((driver, identity))
}

/// `driver-builder sign`: any package whose file name kernel-id can parse. A digest file already
/// beside it (the build wrote one) is kept when it agrees; an existing signature is never replaced.
pub fn sign_existing_package(
    package: &Path,
    key: &SecretKey,
) -> Result<SidecarFiles, ArtifactError> {
    let (driver, identity) = identify_package(package)?;
    write_sidecars_with(package, &driver, &identity, Some(key), true)
}

#[cfg(test)]
mod tests {
    use integrity::Keyring;

    use super::*;

    const NAME: &str = "example-driver-debian-12-6.1.0-47-amd64_v0.1.2_amd64.deb";

    #[test]
    fn digest_matches_sha256sum_format_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = DriverName::parse("example-driver").expect("driver");
        let (_, identity) = KernelIdentity::parse_any_package_file_name(NAME).expect("identity");
        let package = dir.path().join(NAME);
        std::fs::write(&package, b"abc").expect("write");
        let sidecars = write_sidecars(&package, &driver, &identity, None).expect("sidecars");
        assert_eq!(
            std::fs::read_to_string(&sidecars.digest).expect("read"),
            format!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  {NAME}\n")
        );
        assert!(matches!(
            write_sidecars(&package, &driver, &identity, None),
            Err(ArtifactError::Exists { .. })
        ));
    }

    #[test]
    fn signing_after_the_build_keeps_its_digest_and_binds_the_file_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SecretKey::generate(&dir.path().join("k"), &dir.path().join("k.pub"))
            .expect("key pair");
        let mut ring = Keyring::new();
        ring.insert(key.public().clone(), "k").expect("trusted");
        let driver = DriverName::parse("example-driver").expect("driver");
        let (_, identity) = KernelIdentity::parse_any_package_file_name(NAME).expect("identity");
        let package = dir.path().join(NAME);
        std::fs::write(&package, b"abc").expect("write");
        // What the build root leaves: the package and its digest, unsigned.
        let built = write_sidecars(&package, &driver, &identity, None).expect("digest");
        let digest_text = std::fs::read_to_string(&built.digest).expect("digest");

        let signed = sign_existing_package(&package, &key).expect("signs");
        assert_eq!(
            std::fs::read_to_string(&signed.digest).expect("digest"),
            digest_text
        );
        let signature =
            std::fs::read_to_string(signed.signature.expect("signature")).expect("read");
        let verified = integrity::signature::verify_package(&ring, &package, NAME, &signature)
            .expect("verifies");
        assert_eq!(verified.key_id, key.id());
        assert!(
            verified
                .trusted_comment
                .ends_with(&format!("\tfile:{NAME}"))
        );

        // Never twice.
        assert!(matches!(
            sign_existing_package(&package, &key),
            Err(ArtifactError::Exists { .. })
        ));

        // A digest file that disagrees with the package is not signed beside.
        let other = tempfile::tempdir().expect("tempdir");
        let package = other.path().join(NAME);
        std::fs::write(&package, b"abd").expect("write");
        std::fs::write(other.path().join(format!("{NAME}.sha256")), &digest_text).expect("write");
        let error = sign_existing_package(&package, &key).expect_err("mismatch");
        assert!(
            matches!(error, ArtifactError::DigestMismatch { .. }),
            "{error}"
        );
        assert!(!other.path().join(format!("{NAME}.minisig")).exists());
    }

    #[test]
    fn only_canonical_package_names_are_signed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SecretKey::generate(&dir.path().join("k"), &dir.path().join("k.pub"))
            .expect("key pair");
        let package = dir.path().join("random.deb");
        std::fs::write(&package, b"x").expect("write");
        assert!(matches!(
            sign_existing_package(&package, &key),
            Err(ArtifactError::Identity(_))
        ));
        let missing = dir.path().join(NAME);
        assert!(matches!(
            sign_existing_package(&missing, &key),
            Err(ArtifactError::Io { .. })
        ));
    }
}
