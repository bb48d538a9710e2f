//! Stream compressions found in packages (data.tar members, rpm payloads, `.ko.*` modules): detection by
//! magic bytes, streaming decoders, and a size-limited decompressor for kernel module images.

use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use crate::error::ReadError;

/// A stream compression, identified by its magic bytes rather than by a file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Stored as is.
    None,
    /// gzip (RFC 1952).
    Gzip,
    /// xz (LZMA2 container).
    Xz,
    /// Zstandard.
    Zstd,
}

/// Magic prefixes of compressions we recognise but do not decode; finding one is an error rather than a
/// silent "uncompressed" guess.
const BZIP2_MAGIC: &[u8] = b"BZh";
const LZMA_ALONE_MAGIC: &[u8] = &[0x5d, 0x00, 0x00];

impl Compression {
    /// The conventional file suffix (without the dot), empty for [`Compression::None`].
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => "gz",
            Compression::Xz => "xz",
            Compression::Zstd => "zst",
        }
    }

    /// Detects the compression from the first bytes of a stream. `Ok(None)` for data that starts with
    /// no known magic (taken as uncompressed by callers that allow it), `Err` naming the format for
    /// compressions this crate refuses to decode (bzip2, lzma-alone).
    pub fn sniff(head: &[u8]) -> Result<Option<Compression>, &'static str> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Ok(Some(Compression::Gzip))
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Ok(Some(Compression::Xz))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Ok(Some(Compression::Zstd))
        } else if head.starts_with(BZIP2_MAGIC) {
            Err("bzip2")
        } else if head.starts_with(LZMA_ALONE_MAGIC) {
            Err("lzma")
        } else {
            Ok(None)
        }
    }

    /// Wraps `inner` in a streaming decoder. Concatenated gzip members and xz streams are decoded as
    /// one stream, as dpkg and rpm do.
    pub fn decoder<'a, R: Read + 'a>(self, inner: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(inner),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(inner)),
            Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(inner)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(inner)?),
        })
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        })
    }
}

/// The compression a kernel module's file name announces: `.ko` -> none, `.ko.gz`/`.ko.xz`/`.ko.zst`.
/// `None` when the name is not a kernel module at all.
pub fn module_compression_from_name(name: &str) -> Option<Compression> {
    if name.ends_with(".ko") {
        Some(Compression::None)
    } else if name.ends_with(".ko.gz") {
        Some(Compression::Gzip)
    } else if name.ends_with(".ko.xz") {
        Some(Compression::Xz)
    } else if name.ends_with(".ko.zst") {
        Some(Compression::Zstd)
    } else {
        None
    }
}

/// True for the file names the loader cares about: `.ko`, `.ko.gz`, `.ko.xz`, `.ko.zst`.
pub fn is_kernel_module_name(name: &str) -> bool {
    module_compression_from_name(name).is_some()
}

/// Reads a kernel module image from `path` and returns the uncompressed ELF bytes. The compression is
/// taken from the magic bytes and must agree with the file name's suffix; the result may not exceed
/// `max_bytes` (a decompression bomb is an error, never an allocation of the bomb's size).
pub fn decompress_module_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, ReadError> {
    let file = std::fs::File::open(path).map_err(|source| ReadError::io(path, source))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // An uncompressed image is as long as its file: read into one allocation of that size
    // instead of a doubling series of copies.
    let size_hint = file.metadata().map_or(0, |m| m.len()).min(max_bytes);
    decompress_module_sized(&name, file, max_bytes, size_hint).map_err(|e| e.with_io_path(path))
}

/// The uncompressed image of a module held in memory as stored (see [`crate::read_kernel_modules`]):
/// the same checks as [`decompress_module`], and an uncompressed `.ko` is returned as it is, not
/// copied.
pub fn module_image(name: &str, stored: Vec<u8>, max_bytes: u64) -> Result<Vec<u8>, ReadError> {
    if module_compression_from_name(name) != Some(Compression::None) {
        return decompress_module(name, stored.as_slice(), max_bytes);
    }
    content_agrees(name, &stored, Compression::None)?;
    checked_image(name, stored, max_bytes)
}

/// Checks that the content's magic bytes (`head`) say the compression the name `declared`.
fn content_agrees(name: &str, head: &[u8], declared: Compression) -> Result<(), ReadError> {
    let detected = match Compression::sniff(head) {
        Ok(found) => found.unwrap_or(Compression::None),
        Err(format) => {
            return Err(ReadError::UnsupportedCompression {
                member: name.to_owned(),
                format: format.to_owned(),
            });
        }
    };
    if detected != declared {
        return Err(ReadError::CompressionMismatch {
            member: name.to_owned(),
            declared: declared.to_string(),
            detected: detected.to_string(),
        });
    }
    Ok(())
}

/// An uncompressed image within the limit that is an ELF object.
fn checked_image(name: &str, image: Vec<u8>, max_bytes: u64) -> Result<Vec<u8>, ReadError> {
    if image.len() as u64 > max_bytes {
        return Err(ReadError::ModuleTooLarge {
            name: name.to_owned(),
            limit: max_bytes,
        });
    }
    if !image.starts_with(b"\x7fELF") {
        return Err(ReadError::NotElf {
            name: name.to_owned(),
        });
    }
    Ok(image)
}

/// [`decompress_module_file`] over any reader; `name` is the module's file name, used to check that the
/// suffix and the content agree and to name the module in errors.
pub fn decompress_module(
    name: &str,
    input: impl Read,
    max_bytes: u64,
) -> Result<Vec<u8>, ReadError> {
    decompress_module_sized(name, input, max_bytes, 0)
}

/// [`decompress_module`] with the stored size, which is the image's size when it is uncompressed.
fn decompress_module_sized(
    name: &str,
    mut input: impl Read,
    max_bytes: u64,
    stored_bytes: u64,
) -> Result<Vec<u8>, ReadError> {
    let declared = module_compression_from_name(name).ok_or_else(|| ReadError::NotAModule {
        name: name.to_owned(),
    })?;
    let mut head = Vec::with_capacity(8);
    (&mut input)
        .take(8)
        .read_to_end(&mut head)
        .map_err(|source| ReadError::io(Path::new(name), source))?;
    content_agrees(name, &head, declared)?;
    let stream = io::Cursor::new(head).chain(input);
    let mut decoder = declared
        .decoder(stream)
        .map_err(|source| ReadError::corrupt(name, source))?;
    let mut out = Vec::new();
    if declared == Compression::None {
        // One more byte than stored, so the read that finds the end needs no second allocation.
        out.reserve_exact(usize::try_from(stored_bytes).unwrap_or(0).saturating_add(1));
    }
    // One byte past the limit tells "exactly at the limit" from "over it" without reading the rest.
    (&mut decoder)
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|source| ReadError::corrupt(name, source))?;
    checked_image(name, out, max_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn elf_like(len: usize) -> Vec<u8> {
        let mut bytes = b"\x7fELF".to_vec();
        bytes.resize(len, 0x42);
        bytes
    }

    fn compress(compression: Compression, data: &[u8]) -> Vec<u8> {
        match compression {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(data).expect("in-memory write");
                enc.finish().expect("in-memory write")
            }
            Compression::Xz => {
                let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
                enc.write_all(data).expect("in-memory write");
                enc.finish().expect("in-memory write")
            }
            Compression::Zstd => zstd::encode_all(data, 1).expect("in-memory write"),
        }
    }

    #[test]
    fn every_module_compression_round_trips() {
        let module = elf_like(10_000);
        for (compression, name) in [
            (Compression::None, "m.ko"),
            (Compression::Gzip, "m.ko.gz"),
            (Compression::Xz, "m.ko.xz"),
            (Compression::Zstd, "m.ko.zst"),
        ] {
            let packed = compress(compression, &module);
            let out = decompress_module(name, packed.as_slice(), 1 << 20)
                .expect("valid module decompresses");
            assert_eq!(out, module, "{name}");
            // The same module held in memory as stored.
            let image = module_image(name, packed, 1 << 20).expect("valid in memory");
            assert_eq!(image, module, "{name}");
        }
    }

    #[test]
    fn an_image_in_memory_is_judged_like_one_read_from_a_file() {
        let module = elf_like(10_000);
        let packed = compress(Compression::Xz, &module);
        assert!(matches!(
            module_image("m.ko", packed, 1 << 20),
            Err(ReadError::CompressionMismatch { .. })
        ));
        assert!(matches!(
            module_image("m.ko", b"not elf".to_vec(), 1 << 20),
            Err(ReadError::NotElf { .. })
        ));
        assert!(matches!(
            module_image("m.ko", module.clone(), 4096),
            Err(ReadError::ModuleTooLarge { limit: 4096, .. })
        ));
        let err = module_image("m.ko.zst", module, 1 << 20).expect_err("not zstd");
        assert_eq!(
            err.to_string(),
            decompress_module("m.ko.zst", elf_like(10_000).as_slice(), 1 << 20)
                .expect_err("not zstd")
                .to_string()
        );
    }

    #[test]
    fn module_over_the_limit_is_refused_without_reading_it_all() {
        let packed = compress(Compression::Zstd, &elf_like(1 << 20));
        let err = decompress_module("big.ko.zst", packed.as_slice(), 4096).expect_err("over limit");
        assert!(
            matches!(err, ReadError::ModuleTooLarge { limit: 4096, .. }),
            "{err}"
        );
    }

    #[test]
    fn module_exactly_at_the_limit_is_accepted() {
        let packed = compress(Compression::Xz, &elf_like(4096));
        assert_eq!(
            decompress_module("m.ko.xz", packed.as_slice(), 4096)
                .expect("at limit")
                .len(),
            4096
        );
    }

    #[test]
    fn suffix_and_content_must_agree() {
        let packed = compress(Compression::Gzip, &elf_like(100));
        let err = decompress_module("m.ko.zst", packed.as_slice(), 1 << 20).expect_err("mismatch");
        assert!(
            matches!(err, ReadError::CompressionMismatch { .. }),
            "{err}"
        );
        let err = decompress_module("m.ko", packed.as_slice(), 1 << 20).expect_err("mismatch");
        assert!(
            matches!(err, ReadError::CompressionMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn truncated_module_stream_is_an_error() {
        let packed = compress(Compression::Xz, &elf_like(50_000));
        let cut = &packed[..packed.len() / 2];
        assert!(decompress_module("m.ko.xz", cut, 1 << 20).is_err());
    }

    #[test]
    fn non_elf_and_non_module_names_are_refused() {
        assert!(matches!(
            decompress_module("m.ko", b"not an elf".as_slice(), 100),
            Err(ReadError::NotElf { .. })
        ));
        assert!(matches!(
            decompress_module("m.txt", b"\x7fELF".as_slice(), 100),
            Err(ReadError::NotAModule { .. })
        ));
    }

    #[test]
    fn sniff_names_refused_formats() {
        assert_eq!(Compression::sniff(b"BZh91AY"), Err("bzip2"));
        assert_eq!(Compression::sniff(b"ustar"), Ok(None));
    }
}
