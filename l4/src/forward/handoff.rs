//! Hand-off of frames between workers, so both directions of a flow are handled by the worker that owns it.
//!
//! Frames arrive on whichever queue the NIC (or veth) picks; the owner of a flow is fixed by the flow itself
//! (see `Forwarder::owner`). A frame that reached another worker is copied into a buffer from the sender's
//! pre-allocated pool and sent over a bounded crossbeam channel; the owner processes it and returns the buffer
//! to the sender's pool. Nothing is allocated per packet and no lock is taken.

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
            })
            .collect()
    }

    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Copies `frame` to worker `owner`. Fails (the caller counts a drop) when no buffer is free or the frame
    /// does not fit.
    pub fn send(&mut self, owner: usize, iface: usize, frame: &[u8]) -> Result<(), HandoffFull> {
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
        match self.to[owner].try_send(HandedFrame {
            from: self.worker,
            iface,
            len: frame.len(),
            buf,
        }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(f) | TrySendError::Disconnected(f)) => {
                self.pool.push(f.buf);
                Err(HandoffFull)
            }
        }
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
            w0.send(1, 0, &[i; 60]).unwrap();
        }
        assert!(w0.send(1, 0, &[9; 60]).is_err(), "pool of 4 exhausted");
        let mut got = vec![];
        while let Some(f) = w1.receive() {
            assert_eq!((f.from, f.len), (0, 60));
            got.push(f.buf[0]);
            w1.recycle(f);
        }
        assert_eq!(got, vec![0, 1, 2, 3]);
        // Buffers came back: sending works again, for as many frames as the pool holds.
        for _ in 0..4 {
            w0.send(1, 0, &[7; 60]).unwrap();
        }
        assert!(w0.send(1, 0, &[0; HANDOFF_FRAME + 1]).is_err());
    }
}
