//! Small reader adapters shared by the format readers: byte counting (for the expansion-ratio check and
//! end-of-archive detection), exact-length members that turn a short file into `UnexpectedEof`, and
//! peeking at magic bytes without buffering a stream.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A shared byte counter; readers and the extraction policy hold clones. Atomic because the .deb reader
/// decodes on its own thread (see `deb_read`), so the package bytes are counted there while the policy
/// reads the count on the extracting thread.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counter(Arc<AtomicU64>);

impl Counter {
    pub(crate) fn get(&self) -> u64 {
        // Relaxed: the count only feeds the expansion-ratio check, which orders nothing else.
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, n: u64) {
        // fetch_add wraps instead of panicking; a u64 of bytes read never gets there.
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// Counts every byte read through it into a [`Counter`].
#[derive(Debug)]
pub(crate) struct CountingReader<R> {
    inner: R,
    counter: Counter,
}

impl<R> CountingReader<R> {
    pub(crate) fn new(inner: R, counter: Counter) -> Self {
        CountingReader { inner, counter }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.add(n as u64);
        Ok(n)
    }
}

/// A member of known length: reading past the end of the underlying file before `remaining` bytes were
/// seen is `UnexpectedEof` (a truncated package), not a quiet end of stream.
#[derive(Debug)]
pub(crate) struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> ExactReader<R> {
    pub(crate) fn new(inner: R, len: u64) -> Self {
        ExactReader {
            inner,
            remaining: len,
        }
    }

    #[cfg(test)]
    pub(crate) fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} bytes missing at the end of the member", self.remaining),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Reads up to `n` bytes (fewer only at end of stream) so the caller can sniff magic bytes and then
/// chain them back in front of the rest of the stream.
pub(crate) fn read_head(reader: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(n);
    reader.take(n as u64).read_to_end(&mut head)?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_reader_reports_missing_bytes() {
        let mut reader = ExactReader::new(&b"abc"[..], 5);
        let mut out = Vec::new();
        let err = reader.read_to_end(&mut out).expect_err("short member");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(out, b"abc");
        assert_eq!(reader.remaining(), 2);
    }

    #[test]
    fn exact_reader_stops_at_its_length() {
        let mut reader = ExactReader::new(&b"abcdef"[..], 4);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).expect("enough data");
        assert_eq!(out, b"abcd");
    }

    #[test]
    fn counting_reader_counts() {
        let counter = Counter::default();
        let mut reader = CountingReader::new(&b"hello world"[..], counter.clone());
        io::copy(&mut reader, &mut io::sink()).expect("in memory");
        assert_eq!(counter.get(), 11);
    }
}
