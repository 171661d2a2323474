//! Parallel gzip with reproducible bytes.
//!
//! The input is cut into fixed-size chunks; each chunk becomes one complete gzip member,
//! compressed on a worker thread, and members are written in order. A gzip file may hold many
//! members (RFC 1952), and every reader of OCI layers (Go's `compress/gzip`, zlib's `gunzip`,
//! flate2's `MultiGzDecoder`) reads them as one stream. Because the chunking does not depend on
//! the number of threads, the output is the same bytes on one core or sixty-four.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::thread::JoinHandle;

/// Uncompressed bytes per gzip member: large enough that the per-member overhead (a header and
/// a fresh dictionary) costs well under 1% of the ratio, small enough to keep two cores busy.
pub(crate) const CHUNK: usize = 4 << 20;

fn compress(chunk: Vec<u8>) -> io::Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new().operating_system(255).write(
        Vec::with_capacity(chunk.len() / 3),
        flate2::Compression::default(),
    );
    enc.write_all(&chunk)?;
    enc.finish()
}

/// A writer that gzips what it is given, in parallel, into `inner`.
pub(crate) struct ParallelGzip<W: Write> {
    inner: W,
    buf: Vec<u8>,
    in_flight: VecDeque<JoinHandle<io::Result<Vec<u8>>>>,
    max_in_flight: usize,
    wrote_member: bool,
}

impl<W: Write> ParallelGzip<W> {
    pub(crate) fn new(inner: W) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        ParallelGzip {
            inner,
            buf: Vec::with_capacity(CHUNK),
            in_flight: VecDeque::new(),
            max_in_flight: threads.max(1) * 2,
            wrote_member: false,
        }
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some(h) = self.in_flight.pop_front() {
            let member = h
                .join()
                .map_err(|_| io::Error::other("a gzip worker thread panicked"))??;
            self.inner.write_all(&member)?;
            self.wrote_member = true;
        }
        Ok(())
    }

    fn dispatch(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.in_flight
            .push_back(std::thread::spawn(move || compress(chunk)));
        Ok(())
    }

    /// Compresses what is left and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.dispatch()?;
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        if !self.wrote_member {
            // An empty input is still a valid (empty) gzip stream.
            self.inner.write_all(&compress(Vec::new())?)?;
        }
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.dispatch()?;
        }
        Ok(n)
    }

    /// Writes what is compressed so far; a partial chunk waits for more input, so that flushing
    /// never changes the output.
    fn flush(&mut self) -> io::Result<()> {
        while self.in_flight.front().is_some_and(|h| h.is_finished()) {
            self.write_oldest()?;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gz(data: &[u8], max_in_flight: usize) -> Vec<u8> {
        let mut w = ParallelGzip::new(Vec::new());
        w.max_in_flight = max_in_flight;
        // Odd-sized writes, to cross chunk boundaries anywhere.
        for piece in data.chunks(777_777) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_and_same_bytes_whatever_the_threads() {
        let data: Vec<u8> = (0..(CHUNK * 3 + 12345))
            .map(|i| ((i * 31) % 253) as u8 ^ ((i / 4096) as u8))
            .collect();
        let one = gz(&data, 1);
        let many = gz(&data, 8);
        assert_eq!(one, many);
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // Four members: three full chunks and the rest.
        let members = one.windows(3).filter(|w| w == &[0x1f, 0x8b, 0x08]).count();
        assert!(members >= 4);
    }

    #[test]
    fn empty_input_is_a_valid_stream() {
        let out = gz(&[], 2);
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }
}
