//! Compressed index files (apt's `Packages.xz`/`.gz`, rpm-md's `primary.xml.gz`/`.xz`/`.zst`),
//! decompressed as a stream: the kind is read from the first bytes (the name only when the bytes
//! say nothing), and the output is bounded, so a decompression bomb ends in an error naming the
//! file instead of filling memory or silently losing the tail.

use std::io::{self, BufRead, BufReader, Read};

/// How an index file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`.gz`).
    Gzip,
    /// xz (`.xz`).
    Xz,
    /// zstd (`.zst`).
    Zstd,
    /// Not compressed.
    None,
}

impl Compression {
    /// By the file's first bytes, else by its name's extension; `None` when neither tells.
    pub fn detect(location: &str, head: &[u8]) -> Option<Self> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Self::Gzip)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Self::Xz)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Self::Zstd)
        } else if location.ends_with(".gz") {
            Some(Self::Gzip)
        } else if location.ends_with(".xz") {
            Some(Self::Xz)
        } else if location.ends_with(".zst") {
            Some(Self::Zstd)
        } else if head.first().is_some_and(|b| b.is_ascii()) || head.is_empty() {
            // Plain text (XML, an apt stanza file) starts with ASCII.
            Some(Self::None)
        } else {
            None
        }
    }
}

/// Why a file could not be decompressed.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {rule}")]
pub struct CompressionError {
    /// URL or path of the file.
    pub location: String,
    /// What went wrong.
    pub rule: String,
}

/// A buffered reader of `raw`'s decompressed bytes; reading more than `limit` bytes of output is
/// an error (`io::ErrorKind::InvalidData`) that names the limit.
pub fn decompressed<'a>(
    location: &str,
    raw: impl Read + 'a,
    limit: u64,
) -> Result<Box<dyn BufRead + 'a>, CompressionError> {
    let mut raw = BufReader::new(raw);
    let fail = |rule: String| CompressionError {
        location: location.to_owned(),
        rule,
    };
    let head = raw.fill_buf().map_err(|e| fail(format!("reading: {e}")))?;
    let compression = Compression::detect(location, head).ok_or_else(|| {
        fail("unknown compression (expected gzip, xz, zstd or plain text)".into())
    })?;
    let reader: Box<dyn Read + 'a> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new(raw)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(raw)
                .map_err(|e| fail(format!("zstd: {e}")))?,
        ),
        Compression::None => Box::new(raw),
    };
    Ok(Box::new(BufReader::new(Limited {
        inner: reader,
        left: limit,
        limit,
    })))
}

/// Errors once more than `limit` bytes were read (unlike `Read::take`, which would end quietly
/// and let a truncated index pass for a short one).
struct Limited<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let n64 = n as u64;
        if n64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("decompresses to more than {} bytes", self.limit),
            ));
        }
        self.left -= n64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_read_from_magic_before_the_name() {
        let text = b"<metadata/>";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, text).unwrap();
        let gz = gz.finish().unwrap();
        // Named .zst but gzip inside: the bytes win.
        let mut out = String::new();
        decompressed("x-primary.xml.zst", gz.as_slice(), 1024)
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "<metadata/>");
        let zst = zstd::encode_all(&text[..], 3).unwrap();
        assert_eq!(Compression::detect("x.gz", &zst), Some(Compression::Zstd));
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        io::Write::write_all(&mut xz, b"Package: a\n").unwrap();
        let xz = xz.finish().unwrap();
        let mut out = String::new();
        decompressed("Packages.xz", xz.as_slice(), 1024)
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "Package: a\n");
        let error = decompressed("x.bin", &b"\x80\x01\x02"[..], 10)
            .err()
            .expect("unknown bytes are refused");
        assert!(error.to_string().starts_with("x.bin: unknown compression"));
    }

    #[test]
    fn output_beyond_the_limit_is_an_error_not_a_short_file() {
        let big = vec![b'a'; 1 << 20];
        let zst = zstd::encode_all(big.as_slice(), 3).unwrap();
        let mut out = Vec::new();
        let error = decompressed("p.zst", zst.as_slice(), 4096)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(
            error.to_string().contains("more than 4096 bytes"),
            "{error}"
        );
    }
}
