//! The contract between a worker (the I/O driver) and the packet logic it runs (sans-IO).
//!
//! A worker receives a batch of frames, hands each to [`Pipeline::process`] with the current time, and acts on
//! the [`Verdict`]: transmit the (possibly rewritten) frame on a port, or recycle it. Frames the pipeline
//! originates itself (ARP requests, packets released after ARP resolution) are pulled with
//! [`Pipeline::poll_transmit`] into free frames. Time only enters as an argument, so tests drive a pipeline with
//! byte buffers and a fake clock.

use std::time::Instant;

use crate::counters::StackCounters;
use crate::drops::DropReason;

/// Index of a port (an AF_XDP socket on one interface queue) within its worker.
pub type PortId = usize;

/// What to do with a frame after processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the frame (rewritten in place) out of this port.
    Transmit(PortId),
    /// The frame was used up without a reply (e.g. an ARP reply that was learned); recycle it.
    Consumed,
    /// Drop the frame, counted under this reason.
    Drop(DropReason),
}

/// A received frame: a UMEM frame's buffer (its full capacity) and the length of the packet in it.
///
/// Processing may rewrite the packet and change its length up to the buffer's capacity.
#[derive(Debug)]
pub struct Frame<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Frame<'a> {
    /// Wraps `buf` holding a packet of `len` bytes (`len <= buf.len()`).
    #[inline]
    pub fn new(buf: &'a mut [u8], len: usize) -> Self {
        assert!(
            len <= buf.len(),
            "frame length {len} exceeds buffer capacity {}",
            buf.len()
        );
        Frame { buf, len }
    }

    /// The packet.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The packet, mutable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }

    /// The whole buffer, to build a packet of a different length; follow with [`Frame::set_len`].
    #[inline]
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        self.buf
    }

    /// Packet length.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the packet is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Buffer capacity.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Sets the packet length (clamped to the capacity).
    #[inline]
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.buf.len());
    }
}

/// Sans-IO packet logic driven by a worker.
pub trait Pipeline: Send {
    /// Handles one received frame from `port` at time `now`, rewriting it in place if it is answered or forwarded.
    fn process(&mut self, now: Instant, port: PortId, frame: &mut Frame<'_>) -> Verdict;

    /// Called for every frame of a received batch before any of them is processed, in the order they will be
    /// processed: a pipeline may start loading what [`Pipeline::process`] will need (e.g. connection-table lines)
    /// so the cache misses of the whole batch overlap. A hint only: it must not change any result, and `process`
    /// must work the same for frames that were never prefetched. The default does nothing.
    #[inline]
    fn prefetch(&mut self, port: PortId, frame: &[u8]) {
        let _ = (port, frame);
    }

    /// Delivers what processing the batch queued for other threads (frames handed to another worker, packets
    /// for the HA driver, session-sync events): called once per turn after the received batch. Packet processing
    /// itself does no channel operation. The default does nothing.
    fn flush_events(&mut self) {}

    /// The worker is stopping: end what cannot outlive the process (connections terminated in the stack),
    /// leaving their last packets (RSTs) to [`Pipeline::poll_transmit`], so the peers do not hold them open.
    /// What another node carries on (synchronised flows) is left alone. The default does nothing.
    fn shutdown(&mut self, now: Instant) {
        let _ = now;
    }

    /// Writes the next frame the pipeline originated into `buf`; returns its port and length, or `None`.
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(PortId, usize)>;

    /// When [`Pipeline::handle_timeout`] should next be called.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Advances timers (neighbour expiry, ARP retries, later connection expiry) to `now`.
    fn handle_timeout(&mut self, now: Instant);

    /// The pipeline's counters.
    fn counters(&self) -> &StackCounters;

    /// A descriptor that becomes readable when another thread gave the pipeline work (see
    /// [`crate::wake::Wake`]); an idle worker sleeps on it as well as on its sockets.
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}
