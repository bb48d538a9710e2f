//! The detached package signature (`<package>.minisig`, minisign format, prehashed as `minisign -S`
//! makes it). Its trusted comment must name the package's file name (`file:<name>`): the binding is
//! mandatory, so a validly signed package for another identity or an older build cannot be served
//! under this name. The signature names its key; the key must be in the verifier's keyring.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use base64::Engine as _;
use thiserror::Error;

use crate::keys::{ALG_PREHASHED, KeyId, Keyring};

/// Signature files are a few hundred bytes; anything bigger is not one.
pub const MAX_SIGNATURE_BYTES: u64 = 16 * 1024;

/// Why a package signature was refused.
#[derive(Debug, Error)]
pub enum SignatureError {
    #[error("{file}: not a minisign signature ({reason})")]
    Malformed { file: String, reason: String },
    #[error(
        "{file}: signed by key {key_id}, which is not trusted (trusted: {trusted}); \
         add its public key to the trusted keys, or the package was signed by someone else"
    )]
    UntrustedKey {
        file: String,
        key_id: KeyId,
        trusted: String,
    },
    #[error(
        "{file}: the signature by key {key_id} does not verify ({reason}): the package was altered"
    )]
    Invalid {
        file: String,
        key_id: KeyId,
        reason: String,
    },
    #[error(
        "{file}: the signature's trusted comment names no file ({comment:?}); a signature must be \
         bound to exactly this package"
    )]
    Unbound { file: String, comment: String },
    #[error("{file}: the signature was made for file {named:?}, not for this package")]
    WrongFile { file: String, named: String },
    #[error("{file}: legacy (non-prehashed) signatures are refused; sign with minisign's default")]
    Legacy { file: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a valid signature vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSignature {
    /// The key that made it.
    pub key_id: KeyId,
    /// The signed trusted comment (`timestamp:<unix>\tfile:<name>`).
    pub trusted_comment: String,
}

/// The key id a minisign signature names, read from its signature line (algorithm, key id,
/// signature), without verifying anything.
pub fn signature_key_id(signature_text: &str) -> Option<KeyId> {
    let line = signature_text.lines().nth(1)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line.trim())
        .ok()?;
    if bytes.len() != 74 {
        return None;
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[2..10]);
    Some(KeyId::from_bytes(id))
}

/// Verifies `package` (streamed) against minisign signature text with the keyring: the signature's
/// key must be trusted, the signature must verify, and its trusted comment must name
/// `expected_file_name`.
pub fn verify_package(
    keyring: &Keyring,
    package: &Path,
    expected_file_name: &str,
    signature_text: &str,
) -> Result<VerifiedSignature, SignatureError> {
    let sig_name = format!("{expected_file_name}.minisig");
    let malformed = |reason: String| SignatureError::Malformed {
        file: sig_name.clone(),
        reason,
    };
    let signature = minisign_verify::Signature::decode(signature_text)
        .map_err(|error| malformed(error.to_string()))?;
    let key_id = signature_key_id(signature_text)
        .ok_or_else(|| malformed("no signature line with a key id".to_owned()))?;
    let key = keyring
        .get(&key_id)
        .ok_or_else(|| SignatureError::UntrustedKey {
            file: expected_file_name.to_owned(),
            key_id,
            trusted: keyring.describe(),
        })?;
    let invalid = |error: minisign_verify::Error| SignatureError::Invalid {
        file: expected_file_name.to_owned(),
        key_id,
        reason: error.to_string(),
    };
    let prehashed = base64::engine::general_purpose::STANDARD
        .decode(signature_text.lines().nth(1).unwrap_or_default().trim())
        .is_ok_and(|bytes| bytes.starts_with(&ALG_PREHASHED));
    if !prehashed {
        return Err(SignatureError::Legacy {
            file: sig_name.clone(),
        });
    }
    let mut file = File::open(package).map_err(|source| SignatureError::Io {
        context: format!("opening {}", package.display()),
        source,
    })?;
    let verifier = key.minisign_verifier();
    let mut stream = verifier.verify_stream(&signature).map_err(invalid)?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|source| SignatureError::Io {
                context: format!("reading {}", package.display()),
                source,
            })?;
        if n == 0 {
            break;
        }
        stream.update(&buffer[..n]);
    }
    stream.finalize().map_err(invalid)?;
    let trusted_comment = signature.trusted_comment().to_owned();
    check_binding(&trusted_comment, expected_file_name)?;
    Ok(VerifiedSignature {
        key_id,
        trusted_comment,
    })
}

/// The trusted comment must name exactly this file (one `file:` field, equal to the name).
fn check_binding(trusted_comment: &str, expected_file_name: &str) -> Result<(), SignatureError> {
    let named: Vec<&str> = trusted_comment
        .split('\t')
        .filter_map(|field| field.strip_prefix("file:"))
        .collect();
    match named.as_slice() {
        [] => Err(SignatureError::Unbound {
            file: expected_file_name.to_owned(),
            comment: trusted_comment.to_owned(),
        }),
        [name] if *name == expected_file_name => Ok(()),
        [name] => Err(SignatureError::WrongFile {
            file: expected_file_name.to_owned(),
            named: (*name).to_owned(),
        }),
        _ => Err(SignatureError::WrongFile {
            file: expected_file_name.to_owned(),
            named: named.join(", "),
        }),
    }
}

#[cfg(feature = "sign")]
pub use signing::sign_package;

#[cfg(feature = "sign")]
mod signing {
    use std::fs::File;
    use std::path::Path;

    use super::SignatureError;
    use crate::keys::SecretKey;

    /// Signs a package file (prehashed, like `minisign -S`) with a trusted comment that binds it to
    /// `file_name`: `timestamp:<unix seconds>\tfile:<file_name>`. Returns the `.minisig` text.
    pub fn sign_package(
        key: &SecretKey,
        package: &Path,
        file_name: &str,
    ) -> Result<String, SignatureError> {
        let file = File::open(package).map_err(|source| SignatureError::Io {
            context: format!("opening {}", package.display()),
            source,
        })?;
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or(0);
        let trusted = format!("timestamp:{timestamp}\tfile:{file_name}");
        let untrusted = format!("signature from key {}", key.id());
        let (secret, public) = key.minisign();
        minisign::sign(
            Some(public),
            secret,
            std::io::BufReader::new(file),
            Some(&trusted),
            Some(&untrusted),
        )
        .map(|signature| signature.into_string())
        .map_err(|error| SignatureError::Io {
            context: format!("signing {}", package.display()),
            source: std::io::Error::other(error.to_string()),
        })
    }
}

#[cfg(all(test, feature = "sign"))]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    struct Fixture {
        dir: tempfile::TempDir,
        key: SecretKey,
        ring: Keyring,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate(&dir.path().join("k"), &dir.path().join("k.pub")).unwrap();
        let mut ring = Keyring::new();
        ring.insert(key.public().clone(), "test").unwrap();
        Fixture { dir, key, ring }
    }

    #[test]
    fn a_signature_verifies_only_for_its_package_and_its_key() {
        let f = fixture();
        let package = f.dir.path().join("p.deb");
        std::fs::write(&package, b"package bytes").unwrap();
        let signature = sign_package(&f.key, &package, "p.deb").unwrap();
        let verified = verify_package(&f.ring, &package, "p.deb", &signature).unwrap();
        assert_eq!(verified.key_id, f.key.id());
        assert!(verified.trusted_comment.ends_with("\tfile:p.deb"));

        // Served under another name: refused by the binding.
        let error = verify_package(&f.ring, &package, "q.deb", &signature).unwrap_err();
        assert!(matches!(error, SignatureError::WrongFile { .. }), "{error}");

        // Altered bytes.
        std::fs::write(&package, b"package bytez").unwrap();
        let error = verify_package(&f.ring, &package, "p.deb", &signature).unwrap_err();
        assert!(matches!(error, SignatureError::Invalid { .. }), "{error}");

        // A keyring without the key.
        std::fs::write(&package, b"package bytes").unwrap();
        let error = verify_package(&Keyring::new(), &package, "p.deb", &signature).unwrap_err();
        assert!(
            matches!(error, SignatureError::UntrustedKey { key_id, .. } if key_id == f.key.id()),
            "{error}"
        );
    }

    #[test]
    fn a_signature_without_a_file_binding_is_refused() {
        let f = fixture();
        let package = f.dir.path().join("p.deb");
        std::fs::write(&package, b"package bytes").unwrap();
        let (secret, public) = f.key.minisign();
        let unbound = minisign::sign(
            Some(public),
            secret,
            std::io::Cursor::new(b"package bytes"),
            Some("timestamp:1"),
            None,
        )
        .unwrap()
        .into_string();
        let error = verify_package(&f.ring, &package, "p.deb", &unbound).unwrap_err();
        assert!(matches!(error, SignatureError::Unbound { .. }), "{error}");
        assert!(error.to_string().contains("names no file"));
    }
}
