//! SHA-256, streamed, and the digest file published beside every package (`sha256sum` format:
//! `<64 hex>  <file name>`), whose file name must be the package it is for.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// A SHA-256 digest, shown and compared as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// Parses 64 hex digits (either case).
    pub fn from_hex(hex_digits: &str) -> Result<Self, String> {
        if hex_digits.len() != 64 {
            return Err(format!(
                "a SHA-256 digest is 64 hex digits, found {} characters",
                hex_digits.len()
            ));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut bytes)
            .map_err(|error| format!("not a hex SHA-256 digest: {error}"))?;
        Ok(Self(bytes))
    }

    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

/// The SHA-256 of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

/// The SHA-256 of a file, read in 64 KiB pieces (packages and kernel images are never held whole).
pub fn sha256_file(path: &Path) -> std::io::Result<Sha256Digest> {
    let mut file = File::open(path)?;
    sha256_reader(&mut file)
}

/// A SHA-256 computed piece by piece, e.g. over a download as it arrives, so the bytes need not be
/// read again to be hashed.
#[derive(Clone, Default)]
pub struct Sha256Stream(Sha256);

impl Sha256Stream {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything given to [`Sha256Stream::update`].
    pub fn finish(self) -> Sha256Digest {
        Sha256Digest(self.0.finalize().into())
    }
}

impl fmt::Debug for Sha256Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256Stream")
    }
}

/// The SHA-256 of everything a reader yields.
pub fn sha256_reader(reader: &mut dyn Read) -> std::io::Result<Sha256Digest> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(Sha256Digest(hasher.finalize().into()))
}

/// A digest file's one line: the digest and the file it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestFile {
    pub digest: Sha256Digest,
    pub file_name: String,
}

impl DigestFile {
    /// The digest file of `file_name`.
    pub fn new(digest: Sha256Digest, file_name: impl Into<String>) -> Self {
        Self {
            digest,
            file_name: file_name.into(),
        }
    }

    /// Parses `sha256sum` output's first line (the `*` binary-mode marker is accepted).
    pub fn parse(text: &str) -> Result<Self, String> {
        let line = text.lines().next().unwrap_or_default();
        let (hex_digits, rest) = line
            .split_once(' ')
            .ok_or_else(|| "expected '<sha256 hex>  <file name>'".to_owned())?;
        let digest = Sha256Digest::from_hex(hex_digits)?;
        let name = rest.trim_start_matches(' ');
        let name = name.strip_prefix('*').unwrap_or(name);
        if name.is_empty() {
            return Err("file name missing after the digest".to_owned());
        }
        Ok(Self {
            digest,
            file_name: name.to_owned(),
        })
    }

    /// The file's text, as `sha256sum` writes it.
    pub fn render(&self) -> String {
        format!("{}  {}\n", self.digest, self.file_name)
    }

    /// Checks that this digest file is for `expected_file_name` and that `actual` is its digest.
    pub fn check(&self, expected_file_name: &str, actual: &Sha256Digest) -> Result<(), String> {
        if self.file_name != expected_file_name {
            return Err(format!(
                "digest file names {:?}, not the expected package {expected_file_name:?}",
                self.file_name
            ));
        }
        if &self.digest != actual {
            return Err(format!(
                "SHA-256 mismatch: the file hashes to {actual} but the digest file says {} \
                 (truncated or corrupted download, or a tampered package)",
                self.digest
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_in_pieces_hashes_like_the_whole() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut stream = Sha256Stream::new();
        for piece in bytes.chunks(777) {
            stream.update(piece);
        }
        assert_eq!(stream.finish(), sha256_bytes(&bytes));
    }

    #[test]
    fn digest_files_round_trip_and_bind_the_file_name() {
        let digest = sha256_bytes(b"abc");
        assert_eq!(
            digest.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let file = DigestFile::new(digest, "p.deb");
        let parsed = DigestFile::parse(&file.render()).unwrap();
        assert_eq!(parsed, file);
        assert!(parsed.check("p.deb", &digest).is_ok());
        assert!(
            parsed
                .check("q.deb", &digest)
                .unwrap_err()
                .contains("q.deb")
        );
        let other = sha256_bytes(b"abd");
        assert!(
            parsed
                .check("p.deb", &other)
                .unwrap_err()
                .contains("mismatch")
        );
        let binary = format!("{} *p.deb\n", digest.to_hex().to_uppercase());
        assert_eq!(DigestFile::parse(&binary).unwrap(), file);
        for bad in ["", "abc  p.deb", &format!("{}  ", digest)] {
            assert!(DigestFile::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn files_hash_like_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content = vec![7u8; 200_000];
        std::fs::write(&path, &content).unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256_bytes(&content));
    }
}
