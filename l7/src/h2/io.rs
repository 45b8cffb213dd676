//! The in-memory transport `h2` runs on, and a passive scanner of the frames it writes.
//!
//! [`MemIo`] is the `AsyncRead + AsyncWrite` handed to `h2`: reads come from an inbound byte queue (client bytes
//! the caller gave to [`super::H2Front`]), `Poll::Pending` when it is empty, end of file once the client closed;
//! writes are appended to an outbound buffer (bounded: `Poll::Pending` when full, until the caller takes it).
//! Both ends share one [`Pipe`] behind an uncontended mutex (so the front stays `Send`).
//!
//! [`FrameScanner`] reads the frame headers `h2` wrote (never the payload, except the few bytes of RST_STREAM
//! and GOAWAY) so the front can count what `h2` refused on its own: refused streams, 431 answers, GOAWAY reasons.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Byte queues between the front and `h2`.
#[derive(Debug, Default)]
pub(crate) struct Pipe {
    /// Client bytes not yet read by `h2` (from `in_pos`).
    pub inbound: Vec<u8>,
    pub in_pos: usize,
    /// The client closed its side: reads return end of file once `inbound` is drained.
    pub eof: bool,
    /// Bytes `h2` wrote for the client, not yet taken.
    pub outbound: Vec<u8>,
    /// Writes are refused (`Pending`) while `outbound` holds this many bytes.
    pub max_outbound: usize,
}

impl Pipe {
    /// Unread inbound bytes.
    pub fn inbound_len(&self) -> usize {
        self.inbound.len() - self.in_pos
    }
}

/// The `AsyncRead + AsyncWrite` end `h2` owns.
#[derive(Clone, Debug)]
pub(crate) struct MemIo(pub Arc<Mutex<Pipe>>);

impl MemIo {
    pub fn lock(&self) -> MutexGuard<'_, Pipe> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl AsyncRead for MemIo {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut p = self.lock();
        let avail = p.inbound_len();
        if avail == 0 {
            // Nothing to read: `Pending` without keeping the waker. The front polls again whenever it is given
            // bytes (or end of file), which is the only thing that can make this ready.
            return if p.eof { Poll::Ready(Ok(())) } else { Poll::Pending };
        }
        let n = avail.min(buf.remaining());
        let at = p.in_pos;
        buf.put_slice(&p.inbound[at..at + n]);
        p.in_pos += n;
        if p.in_pos == p.inbound.len() {
            p.inbound.clear();
            p.in_pos = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MemIo {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let mut p = self.lock();
        let room = p.max_outbound.saturating_sub(p.outbound.len());
        if room == 0 {
            // Full: the front polls again after the caller took the outbound bytes.
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        p.outbound.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut p = self.lock();
        let mut room = p.max_outbound.saturating_sub(p.outbound.len());
        if room == 0 {
            return Poll::Pending;
        }
        let mut n = 0;
        for b in bufs {
            let k = room.min(b.len());
            p.outbound.extend_from_slice(&b[..k]);
            n += k;
            room -= k;
            if room == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Frame types the scanner cares about (RFC 9113 §6).
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const GOAWAY: u8 = 0x7;
/// END_STREAM flag (DATA and HEADERS).
pub(crate) const END_STREAM: u8 = 0x1;

/// One frame seen in the outbound stream (payload kept only for RST_STREAM and GOAWAY, bounded).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SeenFrame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    /// First bytes of the payload (RST_STREAM: error code; GOAWAY: last id, error code, debug data).
    pub payload: Vec<u8>,
}

/// How many payload bytes of a GOAWAY are kept (8 fixed + debug data, enough for `h2`'s reasons).
const KEEP_PAYLOAD: usize = 8 + 40;

/// Incremental frame-header scanner over a well-formed frame stream (what `h2` writes).
#[derive(Debug, Default)]
pub(crate) struct FrameScanner {
    head: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    left: usize,
    /// Payload bytes still to keep of the current frame.
    keep: usize,
    current: Option<SeenFrame>,
}

impl FrameScanner {
    /// Scans `bytes` (the next bytes of the stream), calling `seen` for every complete frame of interest
    /// (every HEADERS, DATA with END_STREAM, RST_STREAM and GOAWAY).
    pub fn scan(&mut self, mut bytes: &[u8], seen: &mut impl FnMut(SeenFrame)) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len());
                let k = self.keep.min(n);
                if let Some(f) = self.current.as_mut() {
                    f.payload.extend_from_slice(&bytes[..k]);
                }
                self.keep -= k;
                self.left -= n;
                bytes = &bytes[n..];
                if self.left == 0 {
                    if let Some(f) = self.current.take() {
                        seen(f);
                    }
                }
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 9 {
                break;
            }
            self.have = 0;
            let h = self.head;
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let interesting = matches!(kind, HEADERS | RST_STREAM | GOAWAY) || (kind == 0 && flags & END_STREAM != 0);
            let frame = SeenFrame {
                kind,
                flags,
                stream,
                payload: Vec::new(),
            };
            self.left = len;
            self.keep = if matches!(kind, RST_STREAM | GOAWAY) {
                len.min(KEEP_PAYLOAD)
            } else {
                0
            };
            if !interesting {
                continue;
            }
            if len == 0 {
                seen(frame);
            } else {
                self.current = Some(frame);
            }
        }
    }
}
