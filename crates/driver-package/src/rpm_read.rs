//! Streaming .rpm reader on top of `rpm::PackageReader` (headers up front, payload decoded on demand):
//! checks that the payload compression in the header matches the payload's magic bytes and that the
//! file is as long as its signature header says, resolves hard link sets from the header's inode
//! table, and hands each payload entry to a [`Sink`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::compression::Compression;
use crate::error::ReadError;
use crate::extract::{RawEntry, RawKind, Sink};
use crate::io_util::{Counter, CountingReader};

/// Read buffer for the package file.
const READ_BUFFER: usize = 256 * 1024;

/// Reads the rpm at `path`, counting compressed bytes into `compressed`, and feeds its entries to `sink`.
pub(crate) fn read_rpm(
    path: &Path,
    compressed: Counter,
    sink: &mut dyn Sink,
) -> Result<(), ReadError> {
    check_layout(path)?;
    let file = File::open(path).map_err(|source| ReadError::io(path, source))?;
    let input = BufReader::with_capacity(READ_BUFFER, CountingReader::new(file, compressed));
    let mut reader = rpm::PackageReader::parse(input).map_err(rpm_error)?;
    let entries = reader.metadata.get_file_entries().map_err(rpm_error)?;
    let hardlink_content = hardlink_content_paths(&reader.metadata, &entries);
    let expected_payload_entries = entries
        .iter()
        .filter(|entry| !entry.flags().contains(rpm::FileFlags::GHOST))
        .count();
    drop(entries);

    let mut payload_entries = 0usize;
    while let Some(mut file) = reader.next_file().map_err(rpm_error)? {
        let meta = &file.metadata;
        if meta.flags().contains(rpm::FileFlags::GHOST) {
            // Ghosts are owned but not shipped; rpm2cpio does not produce them either.
            continue;
        }
        payload_entries += 1;
        let path = meta.path();
        let name = path.to_string_lossy().into_owned();
        let kind = match meta.file_type() {
            rpm::FileType::Regular if !file.has_payload() => match hardlink_content.get(&path) {
                Some(content) => RawKind::Hardlink(content.clone()),
                None => {
                    return Err(ReadError::malformed(format!(
                        "'{name}' has no payload data and is not part of a hard link set"
                    )));
                }
            },
            rpm::FileType::Regular => RawKind::File,
            rpm::FileType::Dir => RawKind::Directory,
            rpm::FileType::SymbolicLink => {
                RawKind::Symlink(PathBuf::from(meta.linkto().unwrap_or_default()))
            }
            rpm::FileType::CharacterDevice => RawKind::Special("character device".into()),
            rpm::FileType::BlockDevice => RawKind::Special("block device".into()),
            rpm::FileType::Fifo => RawKind::Special("fifo".into()),
            rpm::FileType::Socket => RawKind::Special("socket".into()),
            _ => RawKind::Special("unknown file type".into()),
        };
        let raw = RawEntry {
            name: name.clone(),
            path,
            kind,
            size: meta.size() as u64,
            mode: u32::from(meta.permissions()),
            mtime: Some(u64::from(meta.modified_at().0)),
        };
        sink.entry(raw, &mut file)?;
        file.finish()
            .map_err(|err| ReadError::corrupt("rpm payload", err))?;
    }
    if payload_entries < expected_payload_entries {
        return Err(ReadError::malformed(format!(
            "payload holds {payload_entries} of the {expected_payload_entries} files the header lists"
        )));
    }
    Ok(())
}

/// Checks before streaming: the header's payload compressor agrees with the payload's magic bytes,
/// and the file is at least as long as the signature header's size field says.
fn check_layout(path: &Path) -> Result<(), ReadError> {
    let file = File::open(path).map_err(|source| ReadError::io(path, source))?;
    let file_len = file
        .metadata()
        .map_err(|source| ReadError::io(path, source))?
        .len();
    let consumed = Counter::default();
    let mut input =
        BufReader::with_capacity(READ_BUFFER, CountingReader::new(file, consumed.clone()));
    let metadata = rpm::PackageMetadata::parse(&mut input).map_err(rpm_error)?;
    let head = input
        .fill_buf()
        .map_err(|source| ReadError::io(path, source))?;
    let payload_offset = consumed.get() - head.len() as u64;
    let head = head[..head.len().min(8)].to_vec();

    let declared = match metadata.get_payload_compressor().map_err(rpm_error)? {
        rpm::CompressionType::None => Compression::None,
        rpm::CompressionType::Gzip => Compression::Gzip,
        rpm::CompressionType::Xz => Compression::Xz,
        rpm::CompressionType::Zstd => Compression::Zstd,
        rpm::CompressionType::Bzip2 => {
            return Err(ReadError::UnsupportedCompression {
                member: "rpm payload".into(),
                format: "bzip2".into(),
            });
        }
    };
    let detected = match Compression::sniff(&head) {
        Ok(found) => found.unwrap_or(Compression::None),
        Err(format) => format_mismatch(declared, format)?,
    };
    if detected != declared {
        format_mismatch(declared, &detected.to_string())?;
    }
    if detected == Compression::None && !head.starts_with(b"07070") && !head.is_empty() {
        return Err(ReadError::malformed(
            "rpm payload is neither compressed nor a cpio archive",
        ));
    }

    // RPMSIGTAG_(LONG)SIZE is the length of the main header plus the compressed payload.
    let signed_size = metadata
        .signature
        .get_entry_data_as_u64(rpm::IndexSignatureTag::RPMSIGTAG_LONGSIZE)
        .ok()
        .or_else(|| {
            metadata
                .signature
                .get_entry_data_as_u32(rpm::IndexSignatureTag::RPMSIGTAG_SIZE)
                .ok()
                .map(u64::from)
        });
    if let Some(signed_size) = signed_size {
        let header_len = metadata.header_bytes().map_err(rpm_error)?.len() as u64;
        let header_start = payload_offset.saturating_sub(header_len);
        let expected_len = header_start + signed_size;
        if file_len < expected_len {
            return Err(ReadError::Truncated {
                what: format!(
                    "rpm is {file_len} bytes but its signature header describes {expected_len}"
                ),
            });
        }
    }
    Ok(())
}

fn format_mismatch<T>(declared: Compression, detected: &str) -> Result<T, ReadError> {
    Err(ReadError::CompressionMismatch {
        member: "rpm payload".into(),
        declared: declared.to_string(),
        detected: detected.to_owned(),
    })
}

/// For every member of a hard link set except the one carrying the data (the last in header order,
/// as rpm writes them), the path of the member that carries it.
fn hardlink_content_paths(
    metadata: &rpm::PackageMetadata,
    entries: &[rpm::FileEntry<'_>],
) -> HashMap<PathBuf, PathBuf> {
    let inodes = metadata
        .header
        .get_entry_data_as_u32_array(rpm::IndexTag::RPMTAG_FILEINODES)
        .unwrap_or_default();
    let devices = metadata
        .header
        .get_entry_data_as_u32_array(rpm::IndexTag::RPMTAG_FILEDEVICES)
        .unwrap_or_default();
    let mut groups: HashMap<(u32, u32), Vec<usize>> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        if entry.file_type() == rpm::FileType::Regular
            && !entry.flags().contains(rpm::FileFlags::GHOST)
            && let (Some(&device), Some(&inode)) = (devices.get(index), inodes.get(index))
        {
            groups.entry((device, inode)).or_default().push(index);
        }
    }
    let mut content = HashMap::new();
    for members in groups.values().filter(|members| members.len() > 1) {
        if let Some((&last, others)) = members.split_last() {
            for &member in others {
                content.insert(entries[member].path(), entries[last].path());
            }
        }
    }
    content
}

fn rpm_error(err: rpm::Error) -> ReadError {
    match err {
        rpm::Error::Io(source) => ReadError::corrupt("rpm", source),
        other => ReadError::Rpm(other),
    }
}
