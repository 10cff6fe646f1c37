//! Pipes between the blocking archive code and async stores: [`ChannelWriter`] and
//! [`ChannelReader`] carry bytes over bounded channels in chunks, and [`HashingWriter`] and
//! [`HashingReader`] count and BLAKE3-hash what passes through them.

use std::io::{self, Read, Write};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::*;

/// A [`Write`] that hands the bytes to an async consumer in ~1 MiB [`Bytes`] chunks over a
/// bounded channel, so the blocking archive writer and an async store stay in step with
/// flat memory.
///
/// Must be used from a blocking thread (`spawn_blocking`), never from async code: it uses
/// `blocking_send`. Call [`ChannelWriter::finish`] to send the last chunk; a writer dropped
/// without it loses that chunk, which the consumer must treat as a failed upload.
#[derive(Debug)]
pub struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    chunk: usize,
}

impl ChannelWriter {
    /// A writer sending chunks of ~1 MiB.
    pub fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> Self {
        Self::with_chunk_size(tx, BUF_SIZE)
    }

    /// A writer sending chunks of `chunk` bytes (at least 1).
    pub fn with_chunk_size(tx: mpsc::Sender<io::Result<Bytes>>, chunk: usize) -> Self {
        let chunk = chunk.max(1);
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(chunk),
            chunk,
        }
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        self.tx
            .blocking_send(Ok(Bytes::from(data)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the archive consumer is gone"))
    }

    /// Sends the last chunk; the consumer then sees the end of the stream when the writer
    /// is dropped.
    ///
    /// # Errors
    /// `BrokenPipe` if the receiver is gone.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_buf()
    }

    /// Tells the consumer that the stream failed, so it does not store a partial archive.
    pub fn abort(self, error: io::Error) {
        // If the receiver is gone it does not need to be told.
        let _ = self.tx.blocking_send(Err(error));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.chunk - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.chunk {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

/// A [`Read`] over chunks received from an async producer on a bounded channel; an `Err`
/// item becomes a read error, the end of the channel the end of the stream.
///
/// Must be used from a blocking thread: it uses `blocking_recv`.
#[derive(Debug)]
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = self.current.len().min(out.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A [`Write`] that counts and BLAKE3-hashes what passes through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: blake3::Hasher::new(),
            count: 0,
        }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The inner writer, the byte count and the BLAKE3 hex of everything written.
    pub fn finish(self) -> (W, u64, String) {
        (
            self.inner,
            self.count,
            self.hasher.finalize().to_hex().to_string(),
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A [`Read`] that counts and BLAKE3-hashes what passes through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: blake3::Hasher::new(),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The inner reader, the byte count and the BLAKE3 hex of everything read.
    pub fn finish(self) -> (R, u64, String) {
        (
            self.inner,
            self.count,
            self.hasher.finalize().to_hex().to_string(),
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}
