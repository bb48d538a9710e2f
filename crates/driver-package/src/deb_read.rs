//! Streaming .deb reader: walks the ar archive (deb(5): `debian-binary`, `control.tar*`, `data.tar*`),
//! decodes `data.tar` with the compression its magic bytes show (which must match the member name), and
//! hands each tar entry to a [`Sink`] without buffering members. Truncation anywhere (ar member, the
//! compressed stream, a tar entry, a missing end-of-archive block) is an error.
//!
//! Decompression of a data member over 1 MiB runs on its own thread, a few fixed-size chunks ahead of
//! the tar reader, so decoding (the bulk of the CPU time for an xz kernel package) overlaps with the
//! file writes on the calling thread, the way `dpkg-deb -x` pipes its decompressor into tar. Memory
//! stays bounded by the chunks in flight; nothing is buffered beyond them. A smaller member (a
//! driver's) is decoded on the calling thread: the thread would cost more than it saves.
//!
//! A multi-block xz `data.tar` in a package file (a distribution kernel's) is instead decoded by two
//! threads at once, block by block, with the blocks ahead of the tar reader spooled to unlinked files
//! on the target's filesystem (`xz_blocks`); the tar reader sees the same stream either way.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};

use crate::compression::Compression;
use crate::error::ReadError;
use crate::extract::{RawEntry, RawKind, Sink};
use crate::io_util::{Counter, CountingReader, ExactReader, read_head};
use crate::xz_blocks;

/// Bytes after the tar end-of-archive block we read through (tar pads to its record size, 10 KiB by
/// default); more than this is not padding.
const MAX_TRAILING_TAR_BYTES: u64 = 1 << 20;

/// The tar block size.
const BLOCK: u64 = 512;

/// xz decoding threads at most: each holds a dictionary (8 MiB at `xz -6`), and two already keep the
/// tar reader busy on a package's many small files.
const MAX_XZ_WORKERS: usize = 2;

/// The package file behind a .deb reader, which lets a multi-block xz `data.tar` be decoded in
/// parallel (see `xz_blocks`).
#[derive(Debug)]
pub(crate) struct Seekable<'a> {
    pub file: &'a File,
    /// Where look-ahead blocks are spooled: the extraction target's filesystem.
    pub spool_dir: &'a Path,
    /// Package bytes consumed, for the expansion-ratio check.
    pub compressed: Counter,
    /// Set to the spool's peak size in bytes when the parallel decoder ran.
    pub spool_peak: Counter,
}

/// Reads the `data.tar*` member of a .deb and feeds its entries to `sink`. `input` reads the package
/// from its first byte; with `seekable`, the same package as a file.
pub(crate) fn read_deb(
    input: impl Read + Send,
    seekable: Option<Seekable<'_>>,
    sink: &mut dyn Sink,
) -> Result<(), ReadError> {
    // Bytes the ar reader consumed: at a member, the offset of its data in the file.
    let position = Counter::default();
    let mut archive = ar::Archive::new(CountingReader::new(input, position.clone()));
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
        if declared == Compression::Xz
            && let Some(seekable) = &seekable
            && let Some(plan) = parallel_plan(seekable, position.get(), len)
        {
            let (result, peak) = xz_blocks::decode(plan, |decoded| read_tar(&name, decoded, sink));
            seekable.spool_peak.add(peak);
            return result;
        }
        return read_data_tar(&name, declared, len, &mut member, sink);
    }
    if first {
        return Err(ReadError::Truncated {
            what: "ar archive has no members".into(),
        });
    }
    Err(ReadError::malformed("no data.tar member"))
}

/// The parallel decoding of an xz `data.tar` at `start` (`len` bytes) in the package, when it has
/// several blocks, two or more threads can run, and a spool file can be made; else `None` (streaming).
fn parallel_plan<'a>(seekable: &Seekable<'a>, start: u64, len: u64) -> Option<xz_blocks::Plan<'a>> {
    // The index first: a small single-block package (a driver's) is settled by three short reads,
    // before the cgroup files that bound the parallelism are read.
    let layout = xz_blocks::Layout::read(seekable.file, start, len)?;
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_XZ_WORKERS);
    if workers < 2 {
        return None;
    }
    // A directory we cannot make spool files in is found out here, not as a decoding error later.
    tempfile::tempfile_in(seekable.spool_dir).ok()?;
    Some(xz_blocks::Plan {
        file: seekable.file,
        start,
        layout,
        spool_dir: seekable.spool_dir,
        workers,
        ahead: workers + 1,
        compressed: seekable.compressed.clone(),
    })
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

fn read_data_tar<R: Read + Send>(
    name: &str,
    declared: Compression,
    len: u64,
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
    if len <= INLINE_DECODE_BYTES {
        // A driver's package: decoding it takes less than starting a thread would.
        let stream = io::Cursor::new(head).chain(&mut *member);
        let decoder = detected
            .decoder(stream)
            .map_err(|err| ReadError::corrupt(name, err))?;
        read_tar(name, decoder, sink)?;
        io::copy(member, &mut io::sink()).map_err(|err| ReadError::corrupt(name, err))?;
        return Ok(());
    }
    std::thread::scope(|scope| -> Result<(), ReadError> {
        let stream = io::Cursor::new(head).chain(&mut *member);
        let (filled_tx, filled_rx) = mpsc::channel();
        let (empty_tx, empty_rx) = mpsc::channel();
        let producer = std::thread::Builder::new()
            .name("deb-decode".into())
            .spawn_scoped(scope, move || {
                decode_ahead(detected, stream, filled_tx, empty_rx)
            })
            .map_err(|err| ReadError::corrupt(name, err))?;
        let decoded = ChunkReader {
            filled: filled_rx,
            empty: empty_tx,
            current: None,
            pos: 0,
            len: 0,
            finished: false,
            failed: None,
        };
        // Dropping the reader (on success or on any refusal) disconnects both channels, which stops
        // the producer at its next chunk, so the join below never waits on a blocked thread.
        let result = read_tar(name, decoded, sink);
        match producer.join() {
            Ok(()) => result,
            Err(_) => result.and(Err(ReadError::corrupt(
                name,
                io::Error::other("the decompression thread stopped unexpectedly"),
            ))),
        }
    })?;
    // Whatever the decoder left in the member must still be present in the file.
    io::copy(member, &mut io::sink()).map_err(|err| ReadError::corrupt(name, err))?;
    Ok(())
}

/// Walks the decoded tar stream, handing entries to `sink`, and reads it through to its end.
fn read_tar(name: &str, decoded: impl Read, sink: &mut dyn Sink) -> Result<(), ReadError> {
    {
        let position = Counter::default();
        let mut tar = tar::Archive::new(CountingReader::new(decoded, position.clone()));
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
    Ok(())
}

/// Compressed data members up to this size are decoded on the calling thread.
const INLINE_DECODE_BYTES: u64 = 1 << 20;

/// Decoded bytes per chunk: large enough that the channel hand-off is noise next to the decoding.
const CHUNK: usize = 256 * 1024;
/// Chunks the producer may own at once (filled, being filled, or being read): the read-ahead, and the
/// bound on this pipeline's memory (1 MiB).
const CHUNKS: usize = 4;

/// A decoded chunk (`len` valid bytes; 0 is the end of the stream) or the decoder's error.
type Chunk = io::Result<(Vec<u8>, usize)>;

/// The decoding thread: fills recycled chunks from the decoder until the end of the stream, an error,
/// or the reader going away.
fn decode_ahead(
    compression: Compression,
    stream: impl Read,
    filled: Sender<Chunk>,
    empty: Receiver<Vec<u8>>,
) {
    let mut decoder = match compression.decoder(stream) {
        Ok(decoder) => decoder,
        Err(err) => {
            let _ = filled.send(Err(err));
            return;
        }
    };
    let mut allocated = 0;
    loop {
        let mut buffer = match empty.try_recv() {
            Ok(buffer) => buffer,
            Err(TryRecvError::Empty) if allocated < CHUNKS => {
                allocated += 1;
                vec![0; CHUNK]
            }
            // All chunks are with the reader: wait for one back; a disconnect means it is gone.
            Err(TryRecvError::Empty) => match empty.recv() {
                Ok(buffer) => buffer,
                Err(_) => return,
            },
            Err(TryRecvError::Disconnected) => return,
        };
        let mut len = 0;
        let outcome = loop {
            if len == buffer.len() {
                break Ok(len);
            }
            match decoder.read(&mut buffer[len..]) {
                Ok(0) => break Ok(len),
                Ok(n) => len += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => break Err(err),
            }
        };
        match outcome {
            Ok(len) => {
                let end = len < buffer.len();
                if filled.send(Ok((buffer, len))).is_err() {
                    return;
                }
                if end && len > 0 {
                    // A short chunk is the last one; say so explicitly.
                    let _ = filled.send(Ok((Vec::new(), 0)));
                }
                if end {
                    return;
                }
            }
            Err(err) => {
                // Bytes decoded before the error still belong to the stream, ahead of the error.
                if len > 0 && filled.send(Ok((buffer, len))).is_err() {
                    return;
                }
                let _ = filled.send(Err(err));
                return;
            }
        }
    }
}

/// The tar reader's side of the pipeline: the decoded stream, chunk by chunk, in order; errors arrive
/// where the decoder hit them.
struct ChunkReader {
    filled: Receiver<Chunk>,
    empty: Sender<Vec<u8>>,
    current: Option<Vec<u8>>,
    pos: usize,
    len: usize,
    finished: bool,
    /// The decoder's error, repeated on later reads rather than turned into a quiet end of stream.
    failed: Option<(io::ErrorKind, String)>,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(current) = &self.current
                && self.pos < self.len
            {
                let n = out.len().min(self.len - self.pos);
                out[..n].copy_from_slice(&current[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if let Some((kind, message)) = &self.failed {
                return Err(io::Error::new(*kind, message.clone()));
            }
            if self.finished || out.is_empty() {
                return Ok(0);
            }
            if let Some(done) = self.current.take() {
                // The producer may already have stopped; then the chunk is simply freed.
                let _ = self.empty.send(done);
            }
            match self.filled.recv() {
                Ok(Ok((_, 0))) => self.finished = true,
                Ok(Ok((chunk, len))) => {
                    self.current = Some(chunk);
                    self.pos = 0;
                    self.len = len;
                }
                Ok(Err(err)) => {
                    self.failed = Some((err.kind(), err.to_string()));
                    return Err(err);
                }
                // The producer ended without an end-of-stream chunk: it failed; never a quiet end.
                Err(_) => {
                    self.failed = Some((
                        io::ErrorKind::Other,
                        "the decompression thread stopped before the end of the stream".into(),
                    ));
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `decode_ahead` over `input` (stored, no compression) and hands the reader to `consume`.
    fn pipeline<T>(input: impl Read + Send, consume: impl FnOnce(ChunkReader) -> T) -> T {
        std::thread::scope(|scope| {
            let (filled_tx, filled_rx) = mpsc::channel();
            let (empty_tx, empty_rx) = mpsc::channel();
            let producer =
                scope.spawn(move || decode_ahead(Compression::None, input, filled_tx, empty_rx));
            let reader = ChunkReader {
                filled: filled_rx,
                empty: empty_tx,
                current: None,
                pos: 0,
                len: 0,
                finished: false,
                failed: None,
            };
            let out = consume(reader);
            producer.join().expect("producer ends");
            out
        })
    }

    #[test]
    fn the_decoded_stream_arrives_whole_and_in_order() {
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let out = pipeline(data.as_slice(), |mut reader| {
            let mut out = Vec::new();
            reader.read_to_end(&mut out).expect("stream");
            out
        });
        assert_eq!(out, data);
    }

    #[test]
    fn a_reader_that_stops_early_stops_the_producer() {
        // An endless stream: only the reader going away can end the producer (the join would hang).
        pipeline(io::repeat(7), |mut reader| {
            let mut buf = vec![0; 1000];
            reader.read_exact(&mut buf).expect("first bytes");
        });
    }

    #[test]
    fn a_decoder_error_follows_the_good_bytes_and_is_never_a_quiet_end() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cut short"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(1);
                self.0 -= n;
                Ok(n)
            }
        }
        pipeline(Failing(CHUNK + 5), |mut reader| {
            let mut out = Vec::new();
            let err = reader.read_to_end(&mut out).expect_err("truncated");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            assert_eq!(out.len(), CHUNK + 5);
            let again = reader.read(&mut [0; 8]).expect_err("still failed");
            assert_eq!(again.kind(), io::ErrorKind::UnexpectedEof);
        });
    }
}
