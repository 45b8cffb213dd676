//! Hand-off of frames between workers, so both directions of a flow are handled by the worker that owns it.
//!
//! Frames arrive on whichever queue the NIC (or veth) picks; the owner of a flow is fixed by the flow itself
//! (see `Forwarder::owner`). A frame that reached another worker is copied into a buffer from the sender's
//! pre-allocated pool and queued ([`Handoff::queue`]); the worker's turn sends the queue over bounded crossbeam
//! channels after the batch ([`Handoff::flush`]), so packet processing does no channel operation. The owner
//! processes the frame and returns the buffer to the sender's pool. Nothing is allocated per packet and no lock
//! is taken.

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

/// A frame in transit between workers.
pub struct HandedFrame {
    /// Worker that received it (its buffer goes back there).
    pub from: usize,
    /// Interface (config index) it arrived on.
    pub iface: usize,
    /// Frame length.
    pub len: usize,
    /// The frame bytes.
    pub buf: Box<[u8]>,
}

/// One worker's ends of the hand-off channels.
pub struct Handoff {
    worker: usize,
    to: Vec<Sender<HandedFrame>>,
    inbox: Receiver<HandedFrame>,
    return_to: Vec<Sender<Box<[u8]>>>,
    returned: Receiver<Box<[u8]>>,
    pool: Vec<Box<[u8]>>,
    /// Frames queued for their owners (each holds a pool buffer: never more than the pool).
    queued: Vec<(usize, HandedFrame)>,
}

/// Why a frame could not be handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoffFull;

/// Frame buffer size (a standard-MTU frame).
pub const HANDOFF_FRAME: usize = 2048;

impl Handoff {
    /// Hand-off endpoints for `workers` workers, each with `depth` buffers in flight at most.
    pub fn mesh(workers: usize, depth: usize) -> Vec<Handoff> {
        let (frame_tx, frame_rx): (Vec<_>, Vec<_>) = (0..workers).map(|_| bounded(depth * workers)).unzip();
        let (buf_tx, buf_rx): (Vec<_>, Vec<_>) = (0..workers).map(|_| bounded(depth)).unzip();
        frame_rx
            .into_iter()
            .zip(buf_rx)
            .enumerate()
            .map(|(worker, (inbox, returned))| Handoff {
                worker,
                to: frame_tx.clone(),
                inbox,
                return_to: buf_tx.clone(),
                returned,
                pool: (0..depth)
                    .map(|_| vec![0u8; HANDOFF_FRAME].into_boxed_slice())
                    .collect(),
                queued: Vec::with_capacity(depth),
            })
            .collect()
    }

    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Copies `frame` for worker `owner`, to be sent at the next [`Handoff::flush`]. Fails (the caller counts a
    /// drop) when no buffer is free or the frame does not fit.
    pub fn queue(&mut self, owner: usize, iface: usize, frame: &[u8]) -> Result<(), HandoffFull> {
        if frame.len() > HANDOFF_FRAME {
            return Err(HandoffFull);
        }
        if self.pool.is_empty() {
            self.pool.extend(self.returned.try_iter());
        }
        let Some(mut buf) = self.pool.pop() else {
            return Err(HandoffFull);
        };
        buf[..frame.len()].copy_from_slice(frame);
        let handed = HandedFrame {
            from: self.worker,
            iface,
            len: frame.len(),
            buf,
        };
        self.queued.push((owner, handed));
        Ok(())
    }

    /// Sends the queued frames to their owners (called by the worker's turn after the batch). Returns how many
    /// were sent and how many were lost (the owner's channel full or gone: the caller counts them as drops).
    pub fn flush(&mut self) -> (u64, u64) {
        let (mut sent, mut lost) = (0, 0);
        for (owner, frame) in self.queued.drain(..) {
            match self.to[owner].try_send(frame) {
                Ok(()) => sent += 1,
                Err(TrySendError::Full(f) | TrySendError::Disconnected(f)) => {
                    self.pool.push(f.buf);
                    lost += 1;
                }
            }
        }
        (sent, lost)
    }

    /// The next frame handed to this worker.
    pub fn receive(&mut self) -> Option<HandedFrame> {
        self.inbox.try_recv().ok()
    }

    /// Returns a processed frame's buffer to the worker it came from.
    pub fn recycle(&mut self, frame: HandedFrame) {
        // The return channel holds every buffer of the sender's pool, so this cannot be full.
        let _ = self.return_to[frame.from].try_send(frame.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_reach_the_owner_and_buffers_go_home() {
        let mut mesh = Handoff::mesh(2, 4);
        let (a, b) = mesh.split_at_mut(1);
        let (w0, w1) = (&mut a[0], &mut b[0]);
        for i in 0..4u8 {
            w0.queue(1, 0, &[i; 60]).unwrap();
        }
        assert!(w0.queue(1, 0, &[9; 60]).is_err(), "pool of 4 exhausted");
        assert!(w1.receive().is_none(), "nothing sent before the flush");
        assert_eq!(w0.flush(), (4, 0));
        let mut got = vec![];
        while let Some(f) = w1.receive() {
            assert_eq!((f.from, f.len), (0, 60));
            got.push(f.buf[0]);
            w1.recycle(f);
        }
        assert_eq!(got, vec![0, 1, 2, 3]);
        // Buffers came back: sending works again, for as many frames as the pool holds.
        for _ in 0..4 {
            w0.queue(1, 0, &[7; 60]).unwrap();
        }
        assert!(w0.queue(1, 0, &[0; HANDOFF_FRAME + 1]).is_err());
        assert_eq!(w0.flush(), (4, 0));
    }

    #[test]
    fn a_frame_its_owner_can_no_longer_take_is_lost_at_the_flush_and_its_buffer_kept() {
        let mut mesh = Handoff::mesh(2, 2);
        drop(mesh.pop()); // worker 1 is gone
        let w0 = &mut mesh[0];
        w0.queue(1, 0, &[1; 60]).unwrap();
        assert_eq!(w0.flush(), (0, 1));
        // Both buffers are still in the pool.
        w0.queue(1, 0, &[2; 60]).unwrap();
        w0.queue(1, 0, &[3; 60]).unwrap();
        assert_eq!(w0.flush(), (0, 2));
    }
}
