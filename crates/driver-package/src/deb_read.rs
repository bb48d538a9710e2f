//! Streaming .deb reader: walks the ar archive (deb(5): `debian-binary`, `control.tar*`, `data.tar*`),
//! decodes `data.tar` with the compression its magic bytes show (which must match the member name), and
//! hands each tar entry to a [`Sink`] without buffering members. Truncation anywhere (ar member, the
//! compressed stream, a tar entry, a missing end-of-archive block) is an error.

use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::compression::Compression;
use crate::error::ReadError;
use crate::extract::{RawEntry, RawKind, Sink};
use crate::io_util::{Counter, CountingReader, ExactReader, read_head};

/// Bytes after the tar end-of-archive block we read through (tar pads to its record size, 10 KiB by
/// default); more than this is not padding.
const MAX_TRAILING_TAR_BYTES: u64 = 1 << 20;

/// The tar block size.
const BLOCK: u64 = 512;

/// Reads the `data.tar*` member of a .deb and feeds its entries to `sink`.
pub(crate) fn read_deb(input: impl Read, sink: &mut dyn Sink) -> Result<(), ReadError> {
    let mut archive = ar::Archive::new(input);
    let mut first = true;
    while let Some(member) = archive.next_entry() {
        let member = member.map_err(|err| ar_error("ar member header", err))?;
        let name = String::from_utf8_lossy(member.header().identifier())
            .trim_end_matches('/')
            .to_owned();
        let len = member.header().size();
        let mut member = ExactReader::new(member, len);
        if first {
            first = false;
            if name != "debian-binary" {
                return Err(ReadError::malformed(format!(
                    "first ar member is '{name}', deb(5) requires 'debian-binary'"
                )));
            }
            let version =
                read_head(&mut member, 16).map_err(|err| ar_error("debian-binary", err))?;
            if !version.starts_with(b"2.") {
                return Err(ReadError::malformed(format!(
                    "debian-binary is {:?}, expected format 2.x",
                    String::from_utf8_lossy(&version)
                )));
            }
            continue;
        }
        let Some(suffix) = name.strip_prefix("data.tar") else {
            // Read other members through so a package cut short inside one is reported as truncated.
            io::copy(&mut member, &mut io::sink()).map_err(|err| ar_error(&name, err))?;
            continue;
        };
        let declared = match suffix {
            "" => Compression::None,
            ".gz" => Compression::Gzip,
            ".xz" => Compression::Xz,
            ".zst" => Compression::Zstd,
            other => {
                return Err(ReadError::UnsupportedCompression {
                    member: name.clone(),
                    format: other.trim_start_matches('.').to_owned(),
                });
            }
        };
        return read_data_tar(&name, declared, &mut member, sink);
    }
    if first {
        return Err(ReadError::Truncated {
            what: "ar archive has no members".into(),
        });
    }
    Err(ReadError::malformed("no data.tar member"))
}

fn ar_error(what: &str, err: io::Error) -> ReadError {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        ReadError::Truncated {
            what: format!("{what}: {err}"),
        }
    } else {
        ReadError::malformed(format!("{what}: {err}"))
    }
}

fn read_data_tar<R: Read>(
    name: &str,
    declared: Compression,
    member: &mut ExactReader<R>,
    sink: &mut dyn Sink,
) -> Result<(), ReadError> {
    let head = read_head(member, 8).map_err(|err| ReadError::corrupt(name, err))?;
    let detected = match Compression::sniff(&head) {
        Ok(found) => found.unwrap_or(Compression::None),
        Err(format) => {
            return Err(ReadError::CompressionMismatch {
                member: name.to_owned(),
                declared: declared.to_string(),
                detected: format.to_owned(),
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
    {
        let stream = io::Cursor::new(head).chain(&mut *member);
        let decoder = detected
            .decoder(stream)
            .map_err(|err| ReadError::corrupt(name, err))?;
        let position = Counter::default();
        let mut tar = tar::Archive::new(CountingReader::new(decoder, position.clone()));
        let mut end_of_last_entry = 0u64;
        let entries = tar.entries().map_err(|err| ReadError::corrupt(name, err))?;
        for entry in entries {
            let mut entry = entry.map_err(|err| ReadError::corrupt(name, err))?;
            if entry.header().entry_type() == tar::EntryType::XGlobalHeader {
                // Archive-wide pax metadata (e.g. from `git archive`), not a file.
                continue;
            }
            let raw = raw_entry(&mut entry).map_err(|err| ReadError::corrupt(name, err))?;
            end_of_last_entry = entry.raw_file_position() + raw.size.div_ceil(BLOCK) * BLOCK;
            sink.entry(raw, &mut entry)?;
        }
        // The tar crate stops quietly at end of stream; a real archive ends with a zero block, so a
        // stream that stops right after an entry was cut short.
        if position.get() < end_of_last_entry + BLOCK {
            return Err(ReadError::Truncated {
                what: format!("{name}: tar stream ends without an end-of-archive block"),
            });
        }
        // Reading to the end makes the decoder verify its checksum (gzip CRC, xz check, zstd frame end).
        let mut rest = tar.into_inner();
        let trailing = io::copy(
            &mut (&mut rest).take(MAX_TRAILING_TAR_BYTES + 1),
            &mut io::sink(),
        )
        .map_err(|err| ReadError::corrupt(name, err))?;
        if trailing > MAX_TRAILING_TAR_BYTES {
            return Err(ReadError::malformed(format!(
                "{name}: more than {MAX_TRAILING_TAR_BYTES} bytes after the tar end-of-archive block"
            )));
        }
    }
    // Whatever the decoder left in the member must still be present in the file.
    io::copy(member, &mut io::sink()).map_err(|err| ReadError::corrupt(name, err))?;
    Ok(())
}

fn raw_entry<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<RawEntry> {
    let path_bytes = entry.path_bytes().into_owned();
    let name = String::from_utf8_lossy(&path_bytes).into_owned();
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(&path_bytes));
    let header = entry.header();
    let link = || -> io::Result<PathBuf> {
        let bytes = entry.link_name_bytes().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("link '{name}' has no target"),
            )
        })?;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(&bytes)))
    };
    let kind = match header.entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => RawKind::File,
        tar::EntryType::Directory => RawKind::Directory,
        tar::EntryType::Symlink => RawKind::Symlink(link()?),
        tar::EntryType::Link => RawKind::Hardlink(link()?),
        tar::EntryType::Char => RawKind::Special("character device".into()),
        tar::EntryType::Block => RawKind::Special("block device".into()),
        tar::EntryType::Fifo => RawKind::Special("fifo".into()),
        tar::EntryType::GNUSparse => RawKind::Special("sparse file".into()),
        other => RawKind::Special(format!("tar entry type {:?}", other.as_byte() as char)),
    };
    let size = entry.size();
    Ok(RawEntry {
        name,
        path,
        kind,
        size,
        mode: header.mode()?,
        mtime: header.mtime().ok(),
    })
}
