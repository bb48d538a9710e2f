//! Parallel decoding of a multi-block xz stream stored in a file.
//!
//! xz compresses a large input as independent blocks (24 MiB each in Debian's kernel packages), and the
//! stream's index, at its end, records every block's compressed and uncompressed size. With the index
//! read first, several threads can decode blocks at once. liblzma's own multi-threaded decoder does this
//! but keeps every block it decodes ahead in anonymous memory (over 100 MiB for a kernel package); here
//! each block decoded ahead of the tar reader goes to an unlinked temporary file on the extraction
//! target's filesystem instead: page cache the kernel may write back or reclaim, not process memory.
//! The process keeps only each decoder's dictionary and a small buffer per thread.
//!
//! Each block is decoded as a stream of its own: the real stream header, the block's bytes, and an index
//! and footer made for that one block. liblzma then checks everything it checks in the whole stream —
//! the block's integrity check, its sizes against the index record, the header and footer — so nothing
//! is taken on trust from the index. The real index is read and its CRC verified; whatever about it is
//! unusual (one block, several streams, stream padding, unknown sizes, a block too large to spool) sends
//! the caller back to the streaming decoder, which reports any damage the way it always has.
//!
//! The reader sees one ordered stream: bytes of block n, then of block n + 1; a block's decoding error
//! arrives after the bytes decoded before it, and nothing after it is ever read. Workers stay at most
//! [`Plan::ahead`] blocks ahead of the reader and stop within one buffer once the reader is gone.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::io_util::Counter;

const HEADER_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
const FOOTER_MAGIC: [u8; 2] = [b'Y', b'Z'];
/// Stream header and footer are both 12 bytes.
const HEADER_LEN: u64 = 12;
/// An index larger than this is not a package's (a record is a few bytes); streaming handles it.
const MAX_INDEX_BYTES: u64 = 1 << 20;
/// More blocks than this are left to streaming too: the decoder keeps a little state per block, and
/// a kernel package has a few dozen.
const MAX_BLOCKS: u64 = 4096;
/// The largest block decoded ahead into a spool file. Bigger blocks (or a bomb's) go through the
/// streaming decoder, whose output the extraction limits check as it arrives.
pub(crate) const MAX_SPOOLED_BLOCK: u64 = 256 << 20;
/// Decoded bytes per write to a spool file and per read from it.
const BUFFER: usize = 256 * 1024;
/// Compressed bytes per read from the package.
const INPUT_BUFFER: usize = 64 * 1024;

/// One block of the stream, located by the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    /// Offset of the block header from the start of the stream.
    offset: u64,
    /// Block header + compressed data + check, without the padding to a multiple of four.
    unpadded: u64,
    uncompressed: u64,
}

impl Block {
    fn padded(&self) -> u64 {
        self.unpadded.next_multiple_of(4)
    }
}

/// Where a single-stream, multi-block xz file keeps its blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    header: [u8; HEADER_LEN as usize],
    blocks: Vec<Block>,
}

impl Layout {
    /// Reads the index of the xz stream occupying `len` bytes at `start` in `file`. `None` when the
    /// stream is not one that parallel decoding handles; the caller then streams it.
    pub(crate) fn read(file: &File, start: u64, len: u64) -> Option<Layout> {
        if len < 2 * HEADER_LEN + 8 {
            return None;
        }
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, start).ok()?;
        let mut footer = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut footer, start + len - HEADER_LEN)
            .ok()?;
        if header[..6] != HEADER_MAGIC
            || crc32(&header[6..8]) != le32(&header[8..12])
            || footer[10..] != FOOTER_MAGIC
            || crc32(&footer[4..10]) != le32(&footer[0..4])
            || footer[8..10] != header[6..8]
        {
            return None;
        }
        let index_len = (u64::from(le32(&footer[4..8])) + 1) * 4;
        if index_len > MAX_INDEX_BYTES || index_len + 2 * HEADER_LEN > len {
            return None;
        }
        let mut index = vec![0u8; usize::try_from(index_len).ok()?];
        file.read_exact_at(&mut index, start + len - HEADER_LEN - index_len)
            .ok()?;
        let blocks = parse_index(&index)?;
        // The blocks must tile the space between header and index exactly: a single stream, no
        // padding after it, nothing unaccounted for.
        let end_of_blocks = blocks
            .last()
            .map(|block| block.offset + block.padded())
            .unwrap_or(HEADER_LEN);
        if blocks.len() < 2
            || end_of_blocks + index_len + HEADER_LEN != len
            || blocks.iter().any(|b| b.uncompressed > MAX_SPOOLED_BLOCK)
        {
            return None;
        }
        Some(Layout { header, blocks })
    }

    /// The stream that holds only block `n`: the real header, the block, and an index and footer
    /// describing just that block, split around the block bytes (which stay in the file).
    fn single_block_stream(&self, n: usize) -> (Vec<u8>, Vec<u8>) {
        let block = self.blocks[n];
        let mut index = vec![0x00];
        for value in [1, block.unpadded, block.uncompressed] {
            push_varint(&mut index, value);
        }
        while index.len() % 4 != 0 {
            index.push(0);
        }
        let crc = crc32(&index);
        index.extend_from_slice(&crc.to_le_bytes());
        // index.len() is a small multiple of four, at least eight.
        let backward = u32::try_from(index.len() / 4 - 1).unwrap_or(0);
        let mut tail = backward.to_le_bytes().to_vec();
        tail.extend_from_slice(&self.header[6..8]);
        let mut suffix = index;
        suffix.extend_from_slice(&crc32(&tail).to_le_bytes());
        suffix.extend_from_slice(&tail);
        suffix.extend_from_slice(&FOOTER_MAGIC);
        (self.header.to_vec(), suffix)
    }
}

fn le32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(word)
}

fn crc32(bytes: &[u8]) -> u32 {
    // flate2 (already here for gzip) carries the same CRC-32 xz uses.
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// xz's multibyte integer: at most nine bytes, no redundant trailing zero byte.
fn read_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..9 {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (i == 0 || byte != 0).then_some(value);
        }
    }
    None
}

/// The index's records as blocks, after checking its indicator, padding and CRC.
fn parse_index(index: &[u8]) -> Option<Vec<Block>> {
    let (body, crc) = index.split_at(index.len().checked_sub(4)?);
    if index.first() != Some(&0) || crc32(body) != le32(crc) {
        return None;
    }
    let mut pos = 1;
    let count = read_varint(body, &mut pos)?;
    // Each record takes at least two bytes, so the count cannot honestly exceed the body.
    if count > body.len() as u64 || count > MAX_BLOCKS {
        return None;
    }
    let mut blocks = Vec::with_capacity(usize::try_from(count).ok()?);
    let mut offset = HEADER_LEN;
    for _ in 0..count {
        let unpadded = read_varint(body, &mut pos)?;
        let uncompressed = read_varint(body, &mut pos)?;
        // Smallest possible block: 8-byte header, 1 byte of data, no check.
        if unpadded < 9 {
            return None;
        }
        let block = Block {
            offset,
            unpadded,
            uncompressed,
        };
        offset = offset.checked_add(unpadded.checked_next_multiple_of(4)?)?;
        blocks.push(block);
    }
    if body[pos..].iter().any(|&b| b != 0) || body.len() % 4 != 0 || body.len() - pos > 3 {
        return None;
    }
    Some(blocks)
}

/// A byte range of a file, read with positional reads (the file is shared by all workers).
struct FileRange<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} bytes missing at the end of the member",
                    self.end - self.pos
                ),
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// How the stream is decoded in parallel.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    /// The package file and where the stream starts in it.
    pub file: &'a File,
    pub start: u64,
    pub layout: Layout,
    /// Where spool files are made (the extraction target's filesystem).
    pub spool_dir: &'a Path,
    /// Decoding threads.
    pub workers: usize,
    /// Blocks that may be decoded or spooled at once, counting the one being read: the bound on the
    /// spool's size.
    pub ahead: usize,
    /// Compressed bytes handed to the reader, for the expansion-ratio check.
    pub compressed: Counter,
}

/// What one block's decoding has produced so far.
#[derive(Debug, Default)]
struct Slot {
    spool: Option<Arc<File>>,
    written: u64,
    done: bool,
    error: Option<io::Error>,
}

#[derive(Debug)]
struct State {
    slots: Vec<Slot>,
    /// The next block a worker may claim.
    next: usize,
    /// The block the reader is on; workers stay below `reading + ahead`.
    reading: usize,
    /// The reader is gone: workers stop.
    stop: bool,
    /// Decoded bytes in spool files not yet released by the reader, and their peak.
    spooled: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    peak_spooled: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking worker is caught by its guard; the state itself stays consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Decodes the stream with `plan.workers` threads and hands `consume` a reader over the decoded bytes
/// in order. Returns `consume`'s result and the spool's peak size in bytes. The workers are stopped and
/// joined before this returns, whatever `consume` did.
pub(crate) fn decode<T>(plan: Plan<'_>, consume: impl FnOnce(&mut dyn Read) -> T) -> (T, u64) {
    let blocks = plan.layout.blocks.len();
    let shared = Shared {
        state: Mutex::new(State {
            slots: (0..blocks).map(|_| Slot::default()).collect(),
            next: 0,
            reading: 0,
            stop: false,
            spooled: 0,
        }),
        changed: Condvar::new(),
        peak_spooled: AtomicU64::new(0),
    };
    // Counted as the reader reaches each block (see `SpoolReader::read`), starting with the first.
    if let Some(first) = plan.layout.blocks.first() {
        plan.compressed.add(first.padded());
    }
    let result = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for n in 0..plan.workers.max(1) {
            let spawned = std::thread::Builder::new()
                .name(format!("xz-block-{n}"))
                .spawn_scoped(scope, || worker(&plan, &shared));
            match spawned {
                Ok(handle) => handles.push(handle),
                // Fewer threads only means less parallelism; with none the reader reports it.
                Err(_) => break,
            }
        }
        let mut reader = SpoolReader {
            plan: &plan,
            shared: &shared,
            block: 0,
            pos: 0,
            buffer: Vec::new(),
            buffered: 0..0,
            no_workers: handles.is_empty(),
        };
        let out = consume(&mut reader);
        shared.lock().stop = true;
        shared.changed.notify_all();
        for handle in handles {
            // A worker's panic was already turned into its block's error by its guard.
            let _ = handle.join();
        }
        out
    });
    (result, shared.peak_spooled.load(Ordering::Relaxed))
}

/// Marks a claimed block failed if its worker unwinds, so the reader never waits for it forever.
struct ClaimGuard<'a> {
    shared: &'a Shared,
    block: usize,
    finished: bool,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let mut state = self.shared.lock();
            let slot = &mut state.slots[self.block];
            slot.error = Some(io::Error::other(
                "the xz decoding thread stopped unexpectedly",
            ));
            drop(state);
            self.shared.changed.notify_all();
        }
    }
}

fn worker(plan: &Plan<'_>, shared: &Shared) {
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let block = {
            let mut state = shared.lock();
            loop {
                if state.stop || state.next >= state.slots.len() {
                    return;
                }
                if state.next < state.reading + plan.ahead.max(1) {
                    break;
                }
                state = shared.wait(state);
            }
            state.next += 1;
            state.next - 1
        };
        let mut guard = ClaimGuard {
            shared,
            block,
            finished: false,
        };
        let outcome = decode_block(plan, shared, block, &mut buffer);
        let mut state = shared.lock();
        let slot = &mut state.slots[block];
        match outcome {
            Ok(()) => slot.done = true,
            Err(err) => slot.error = Some(err),
        }
        guard.finished = true;
        drop(state);
        shared.changed.notify_all();
    }
}

/// Decodes block `n` into a fresh spool file, publishing progress after every write. Stops early
/// (with `Ok`) once the reader is gone.
fn decode_block(plan: &Plan<'_>, shared: &Shared, n: usize, buffer: &mut [u8]) -> io::Result<()> {
    let block = plan.layout.blocks[n];
    let spool = Arc::new(tempfile::tempfile_in(plan.spool_dir)?);
    shared.lock().slots[n].spool = Some(Arc::clone(&spool));
    let (prefix, suffix) = plan.layout.single_block_stream(n);
    let data = FileRange {
        file: plan.file,
        pos: plan.start + block.offset,
        end: plan.start + block.offset + block.padded(),
    };
    let input = io::Cursor::new(prefix)
        .chain(data)
        .chain(io::Cursor::new(suffix));
    let stream = liblzma::stream::Stream::new_stream_decoder(u64::MAX, 0)?;
    let mut decoder = liblzma::bufread::XzDecoder::new_stream(
        BufReader::with_capacity(INPUT_BUFFER, input),
        stream,
    );
    let mut produced = 0u64;
    loop {
        let n_read = match decoder.read(buffer) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if n_read == 0 {
            break;
        }
        produced += n_read as u64;
        // liblzma checks the size against the index only at the block's end; never spool past it.
        if produced > block.uncompressed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "xz block {n} decodes to more than the {} bytes its index records",
                    block.uncompressed
                ),
            ));
        }
        (&*spool).write_all(&buffer[..n_read])?;
        let mut state = shared.lock();
        if state.stop {
            return Ok(());
        }
        state.slots[n].written = produced;
        state.spooled += n_read as u64;
        shared
            .peak_spooled
            .fetch_max(state.spooled, Ordering::Relaxed);
        drop(state);
        shared.changed.notify_all();
    }
    // The decoder reached the end of the single-block stream, so it verified the sizes; this only
    // guards the arithmetic above.
    if produced != block.uncompressed {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "xz block {n} decoded to {produced} bytes, its index records {}",
                block.uncompressed
            ),
        ));
    }
    Ok(())
}

/// The decoded stream, block after block, read back from the spool files as workers fill them.
struct SpoolReader<'a, 'p> {
    plan: &'a Plan<'p>,
    shared: &'a Shared,
    block: usize,
    /// Bytes of the current block already handed out or buffered.
    pos: u64,
    buffer: Vec<u8>,
    buffered: std::ops::Range<usize>,
    no_workers: bool,
}

impl Read for SpoolReader<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.buffered.is_empty() {
            let n = out.len().min(self.buffered.len());
            out[..n].copy_from_slice(&self.buffer[self.buffered.start..self.buffered.start + n]);
            self.buffered.start += n;
            return Ok(n);
        }
        if out.is_empty() {
            return Ok(0);
        }
        if self.no_workers {
            return Err(io::Error::other("no xz decoding thread could be started"));
        }
        let blocks = self.plan.layout.blocks.len();
        loop {
            if self.block >= blocks {
                return Ok(0);
            }
            let mut state = self.shared.lock();
            let slot = &mut state.slots[self.block];
            if slot.written > self.pos {
                let available = slot.written - self.pos;
                let Some(spool) = slot.spool.clone() else {
                    return Err(io::Error::other("spool file missing"));
                };
                drop(state);
                return self.read_spool(&spool, available, out);
            }
            if let Some(err) = &slot.error {
                // Repeated on every later read: a failed stream never turns into a quiet end.
                return Err(io::Error::new(err.kind(), err.to_string()));
            }
            if slot.done {
                // Dropping the last handle of the unlinked file gives its pages back.
                slot.spool = None;
                state.spooled = state.spooled.saturating_sub(self.pos);
                self.block += 1;
                self.pos = 0;
                state.reading = self.block;
                if let Some(next) = self.plan.layout.blocks.get(self.block) {
                    // Counted when the reader reaches a block, as the streaming decoder counts the
                    // bytes it consumes just ahead of the reader.
                    self.plan.compressed.add(next.padded());
                }
                drop(state);
                self.shared.changed.notify_all();
                continue;
            }
            drop(self.shared.wait(state));
        }
    }
}

impl SpoolReader<'_, '_> {
    /// Reads up to `available` spooled bytes at the current position: straight into `out` when it is
    /// large, else through the reader's buffer so small reads (tar headers) cost no syscall each.
    fn read_spool(&mut self, spool: &File, available: u64, out: &mut [u8]) -> io::Result<usize> {
        let available = usize::try_from(available).unwrap_or(usize::MAX);
        if out.len() >= BUFFER {
            let want = out.len().min(available);
            let n = spool.read_at(&mut out[..want], self.pos)?;
            if n == 0 {
                return Err(spool_short());
            }
            self.pos += n as u64;
            return Ok(n);
        }
        if self.buffer.is_empty() {
            self.buffer = vec![0; BUFFER];
        }
        let want = BUFFER.min(available);
        let n = spool.read_at(&mut self.buffer[..want], self.pos)?;
        if n == 0 {
            return Err(spool_short());
        }
        self.pos += n as u64;
        self.buffered = 0..n;
        let m = out.len().min(n);
        out[..m].copy_from_slice(&self.buffer[..m]);
        self.buffered.start = m;
        Ok(m)
    }
}

fn spool_short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "a spool file is shorter than the bytes written to it",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use liblzma::stream::{Action, Check, Status, Stream};

    /// `data` as one xz stream cut into blocks of `block` bytes (a full flush ends a block).
    pub(crate) fn xz_in_blocks(data: &[u8], block: usize) -> Vec<u8> {
        let mut stream = Stream::new_easy_encoder(1, Check::Crc64).expect("encoder");
        let mut out = Vec::with_capacity(data.len() + 1024);
        let mut run = |input: &[u8], action: Action| {
            let mut consumed = 0;
            loop {
                out.reserve(64 * 1024);
                let before = stream.total_in();
                let status = stream
                    .process_vec(&input[consumed..], &mut out, action)
                    .expect("encode");
                consumed += usize::try_from(stream.total_in() - before).expect("fits");
                let drained = consumed == input.len();
                match action {
                    Action::Run if drained => return,
                    Action::FullFlush | Action::Finish
                        if drained && status == Status::StreamEnd =>
                    {
                        return;
                    }
                    _ => {}
                }
            }
        };
        for piece in data.chunks(block) {
            run(piece, Action::Run);
            run(&[], Action::FullFlush);
        }
        run(&[], Action::Finish);
        out
    }

    /// Bytes that compress somewhat, different in every block.
    fn sample(len: usize) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 27) as u8 ^ (i / 4096) as u8)
            .collect()
    }

    fn in_file(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(bytes).expect("write");
        file
    }

    /// A plan for a stream at the start of `file`, with a fresh ratio counter.
    fn plan_at_start<'a>(
        file: &'a File,
        layout: Layout,
        spool_dir: &'a Path,
        workers: usize,
        ahead: usize,
    ) -> Plan<'a> {
        Plan {
            file,
            start: 0,
            layout,
            spool_dir,
            workers,
            ahead,
            compressed: Counter::default(),
        }
    }

    fn decode_all(
        file: &File,
        len: u64,
        workers: usize,
        ahead: usize,
    ) -> (io::Result<Vec<u8>>, Vec<u8>, u64) {
        let layout = Layout::read(file, 0, len).expect("multi-block layout");
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan_at_start(file, layout, dir.path(), workers, ahead);
        let ((result, out), peak) = decode(plan, |reader| {
            let mut out = Vec::new();
            let result = reader.read_to_end(&mut out).map(|_| Vec::new());
            (result, out)
        });
        (result, out, peak)
    }

    #[test]
    fn index_gives_every_block_and_single_block_streams_are_left_to_streaming() {
        let data = sample(300_000);
        let packed = xz_in_blocks(&data, 64 * 1024);
        let file = in_file(&packed);
        let layout = Layout::read(&file, 0, packed.len() as u64).expect("layout");
        assert_eq!(layout.blocks.len(), 5);
        assert_eq!(
            layout.blocks.iter().map(|b| b.uncompressed).sum::<u64>(),
            data.len() as u64
        );
        let single = xz_in_blocks(&data, data.len());
        assert_eq!(
            Layout::read(&in_file(&single), 0, single.len() as u64),
            None
        );
        // Cut short, shifted or followed by anything: not a stream this reader decodes in parallel.
        let len = packed.len() as u64;
        assert_eq!(Layout::read(&file, 0, len - 4), None);
        assert_eq!(Layout::read(&file, 4, len - 4), None);
        let mut padded = packed.clone();
        padded.extend_from_slice(&[0; 4]);
        assert_eq!(Layout::read(&in_file(&padded), 0, len + 4), None);
    }

    #[test]
    fn a_damaged_index_is_never_trusted() {
        let data = sample(200_000);
        let packed = xz_in_blocks(&data, 50_000);
        let len = packed.len();
        // The byte before the index CRC (a record or padding), then the CRC itself.
        for at in [len - 12 - 5, len - 12 - 2] {
            let mut bad = packed.clone();
            bad[at] ^= 0x01;
            assert_eq!(Layout::read(&in_file(&bad), 0, len as u64), None, "{at}");
        }
    }

    #[test]
    fn blocks_arrive_whole_and_in_order_with_any_number_of_workers() {
        let data = sample(1_000_000);
        let packed = xz_in_blocks(&data, 100_000);
        let file = in_file(&packed);
        for (workers, ahead) in [(1, 1), (2, 1), (2, 3), (3, 2), (4, 11)] {
            let (result, out, peak) = decode_all(&file, packed.len() as u64, workers, ahead);
            result.expect("decodes");
            assert!(out == data, "workers {workers}, ahead {ahead}");
            // The spool never holds more than the blocks allowed ahead.
            assert!(peak <= ahead as u64 * 100_000, "peak {peak}");
            assert!(peak > 0);
        }
    }

    #[test]
    fn a_corrupt_later_block_fails_like_streaming_with_nothing_past_the_damage() {
        let data = sample(600_000);
        let packed = xz_in_blocks(&data, 100_000);
        let file = in_file(&packed);
        let layout = Layout::read(&file, 0, packed.len() as u64).expect("layout");
        let fourth = layout.blocks[3];
        let mut bad = packed.clone();
        let middle = usize::try_from(fourth.offset + fourth.unpadded / 2).expect("fits");
        bad[middle] ^= 0x55;

        let mut streamed = Vec::new();
        let streaming_err = liblzma::read::XzDecoder::new_multi_decoder(bad.as_slice())
            .read_to_end(&mut streamed)
            .expect_err("corrupt");

        let (result, out, _) = decode_all(&in_file(&bad), bad.len() as u64, 2, 3);
        let err = result.expect_err("corrupt");
        assert_eq!(err.kind(), streaming_err.kind());
        assert_eq!(err.to_string(), streaming_err.to_string());
        // Everything before the damaged block arrives intact, and nothing after the damage.
        assert!(out.len() as u64 >= 3 * 100_000);
        assert!(out.len() < 4 * 100_000);
        assert!(out[..] == data[..out.len()]);
        // The streaming decoder drops what it decoded in the read that failed; neither ever hands
        // out a byte that is not the original's.
        assert!(streamed[..] == data[..streamed.len()]);
    }

    #[test]
    fn a_block_longer_than_its_index_record_is_stopped_at_the_record() {
        let data = sample(200_000);
        let packed = xz_in_blocks(&data, 100_000);
        let file = in_file(&packed);
        let mut layout = Layout::read(&file, 0, packed.len() as u64).expect("layout");
        layout.blocks[0].uncompressed = 1000;
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan_at_start(&file, layout, dir.path(), 2, 2);
        let ((result, out), peak) = decode(plan, |reader| {
            let mut out = Vec::new();
            (reader.read_to_end(&mut out), out)
        });
        let err = result.expect_err("longer than recorded");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(out.len() <= 1000);
        assert!(peak <= 1000 + 100_000);
    }

    #[test]
    fn a_reader_that_stops_early_stops_the_workers() {
        let data = sample(2_000_000);
        let packed = xz_in_blocks(&data, 100_000);
        let file = in_file(&packed);
        let layout = Layout::read(&file, 0, packed.len() as u64).expect("layout");
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = plan_at_start(&file, layout, dir.path(), 2, 3);
        // Returning at all means every worker was joined.
        let (first, peak) = decode(plan, |reader| {
            let mut buf = vec![0; 1000];
            reader.read_exact(&mut buf).map(|()| buf)
        });
        assert!(first.expect("first bytes") == data[..1000]);
        assert!(peak <= 3 * 100_000);
    }

    #[test]
    fn varints_round_trip_and_overlong_forms_are_refused() {
        for value in [0, 1, 127, 128, 300, 1 << 40, u64::MAX >> 1] {
            let mut bytes = Vec::new();
            push_varint(&mut bytes, value);
            let mut pos = 0;
            assert_eq!(read_varint(&bytes, &mut pos), Some(value));
            assert_eq!(pos, bytes.len());
        }
        assert_eq!(read_varint(&[0x80, 0x00], &mut 0), None);
        assert_eq!(read_varint(&[0xff; 10], &mut 0), None);
    }
}
