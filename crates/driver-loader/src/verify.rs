//! Integrity and authenticity of a downloaded package, checked before anything is extracted, installed
//! or loaded: the SHA-256 digest file (sha256sum format) and the builder's detached minisign signature.
//!
//! The digest catches truncation and corruption cheaply; the signature is what makes a package
//! trustworthy, because whoever can replace the package can also replace its digest.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use minisign_verify::{PublicKey, Signature};
use sha2::{Digest, Sha256};

use crate::error::{LoaderError, Result};

/// Digest and signature files are a few hundred bytes; anything bigger is not one.
pub const MAX_SIDECAR_BYTES: u64 = 16 * 1024;

/// Legacy (non-prehashed) minisign signatures need the whole file in memory; packages past this are refused
/// in that mode.
const MAX_LEGACY_VERIFY_BYTES: u64 = 512 * 1024 * 1024;

/// A parsed `.sha256` file: `<64 hex>  <file name>` (sha256sum format, `*` binary marker allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestFile {
    pub hex: String,
    pub file_name: String,
}

impl DigestFile {
    /// Parses the first line; the digest must be 64 hex digits and a file name must follow.
    pub fn parse(text: &str) -> std::result::Result<DigestFile, String> {
        let line = text.lines().next().unwrap_or_default();
        let (hex, rest) = line
            .split_once(' ')
            .ok_or_else(|| "expected '<sha256 hex>  <file name>'".to_owned())?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "digest must be 64 hex digits, found {:?}",
                truncate(hex)
            ));
        }
        let name = rest.trim_start_matches(' ');
        let name = name.strip_prefix('*').unwrap_or(name);
        if name.is_empty() {
            return Err("file name missing after the digest".to_owned());
        }
        Ok(DigestFile {
            hex: hex.to_ascii_lowercase(),
            file_name: name.to_owned(),
        })
    }
}

fn truncate(text: &str) -> &str {
    text.get(..80).unwrap_or(text)
}

/// The SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        File::open(path).map_err(|e| LoaderError::io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| LoaderError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks `package` against the digest file text: the named file must be the package and the digest must
/// match.
pub fn verify_digest(package: &Path, expected_file_name: &str, digest_text: &str) -> Result<()> {
    let digest = DigestFile::parse(digest_text)
        .map_err(|reason| LoaderError::verify(format!("{expected_file_name}.sha256"), reason))?;
    if digest.file_name != expected_file_name {
        return Err(LoaderError::verify(
            format!("{expected_file_name}.sha256"),
            format!(
                "digest file names {:?}, not the expected package {expected_file_name:?}",
                digest.file_name
            ),
        ));
    }
    let actual = sha256_file(package)?;
    if actual != digest.hex {
        return Err(LoaderError::verify(
            expected_file_name,
            format!(
                "SHA-256 mismatch: the file hashes to {actual} but the digest file says {} \
                 (truncated or corrupted download, or a tampered package)",
                digest.hex
            ),
        ));
    }
    Ok(())
}

/// A minisign public key from configuration: either the key file's contents (two lines) or the bare base64
/// key line.
pub fn parse_public_key(text: &str) -> Result<PublicKey> {
    let trimmed = text.trim();
    let parsed = if trimmed.lines().count() > 1 {
        PublicKey::decode(trimmed)
    } else {
        PublicKey::from_base64(trimmed)
    };
    parsed.map_err(|e| LoaderError::Config(format!("public_key: not a minisign public key ({e})")))
}

/// What a valid signature vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureInfo {
    /// The signed trusted comment (minisign's default names the file).
    pub trusted_comment: String,
}

/// Verifies `package` against minisign signature text with `key`. Prehashed signatures (minisign's
/// default) are checked while streaming; legacy ones need the file in memory.
pub fn verify_signature(
    package: &Path,
    expected_file_name: &str,
    signature_text: &str,
    key: &PublicKey,
) -> Result<SignatureInfo> {
    let sig_name = format!("{expected_file_name}.minisig");
    let signature = Signature::decode(signature_text)
        .map_err(|e| LoaderError::verify(&sig_name, format!("not a minisign signature ({e})")))?;
    let refused = |e: minisign_verify::Error| {
        LoaderError::verify(
            expected_file_name,
            format!(
                "signature does not verify with the configured public key ({e}): the package was altered or signed by another key"
            ),
        )
    };
    let mut file = File::open(package)
        .map_err(|e| LoaderError::io(format!("opening {}", package.display()), e))?;
    match key.verify_stream(&signature) {
        Ok(mut stream) => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(|e| LoaderError::io(format!("reading {}", package.display()), e))?;
                if n == 0 {
                    break;
                }
                stream.update(&buf[..n]);
            }
            stream.finalize().map_err(refused)?;
        }
        Err(minisign_verify::Error::UnsupportedLegacyMode) => {
            let mut bytes = Vec::new();
            (&mut file)
                .take(MAX_LEGACY_VERIFY_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| LoaderError::io(format!("reading {}", package.display()), e))?;
            if bytes.len() as u64 > MAX_LEGACY_VERIFY_BYTES {
                return Err(LoaderError::verify(
                    &sig_name,
                    "legacy signature over a package too large to verify in memory",
                ));
            }
            key.verify(&bytes, &signature, true).map_err(refused)?;
        }
        Err(e) => return Err(refused(e)),
    }
    Ok(SignatureInfo {
        trusted_comment: signature.trusted_comment().to_owned(),
    })
}

/// When the trusted comment names a file (minisign's default `file:<name>`), it must be this package: a
/// validly signed package for another identity, served under this name, is refused.
pub fn check_trusted_comment(info: &SignatureInfo, expected_file_name: &str) -> Result<()> {
    for field in info.trusted_comment.split('\t') {
        if let Some(named) = field.strip_prefix("file:")
            && named != expected_file_name
        {
            return Err(LoaderError::verify(
                expected_file_name,
                format!("the signature was made for file {named:?}, not for this package"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_file_parsing_follows_sha256sum() {
        let hex = "a".repeat(64);
        let parsed = DigestFile::parse(&format!("{hex}  pkg.deb\n")).expect("valid");
        assert_eq!(parsed.file_name, "pkg.deb");
        let parsed =
            DigestFile::parse(&format!("{}  *pkg.deb\n", "A".repeat(64))).expect("binary marker");
        assert_eq!(
            (parsed.hex.as_str(), parsed.file_name.as_str()),
            (hex.as_str(), "pkg.deb")
        );
        assert!(DigestFile::parse("abc  pkg.deb").is_err());
        assert!(DigestFile::parse(&format!("{}  ", "a".repeat(64))).is_err());
        assert!(DigestFile::parse("").is_err());
        assert!(DigestFile::parse(&format!("{}  x", "g".repeat(64))).is_err());
    }

    #[test]
    fn digest_mismatch_and_wrong_name_are_verify_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pkg = dir.path().join("pkg.deb");
        std::fs::write(&pkg, b"hello").expect("write");
        // sha256("hello")
        let good = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        verify_digest(&pkg, "pkg.deb", &format!("{good}  pkg.deb\n")).expect("matches");
        let err = verify_digest(&pkg, "pkg.deb", &format!("{}  pkg.deb\n", "0".repeat(64)))
            .expect_err("mismatch");
        assert_eq!(err.kind(), crate::FailureKind::Verify);
        assert!(err.to_string().contains("SHA-256 mismatch"), "{err}");
        let err = verify_digest(&pkg, "pkg.deb", &format!("{good}  other.deb\n"))
            .expect_err("other file");
        assert!(err.to_string().contains("other.deb"), "{err}");
    }

    #[test]
    fn trusted_comment_must_name_this_file_when_it_names_one() {
        let info = SignatureInfo {
            trusted_comment: "timestamp:1\tfile:a.deb\thashed".to_owned(),
        };
        check_trusted_comment(&info, "a.deb").expect("same file");
        assert!(check_trusted_comment(&info, "b.deb").is_err());
        let custom = SignatureInfo {
            trusted_comment: "example-driver v0.1.2".to_owned(),
        };
        check_trusted_comment(&custom, "b.deb").expect("no file field: nothing to compare");
    }
}
