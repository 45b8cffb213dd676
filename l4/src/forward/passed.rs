//! Frames other workers handed over that the forwarder does not serve but the next stage of the worker does:
//! replies to local ports an upstream connection of that stage holds ([`xlb_stack::ports`]). They wait here
//! until [`xlb_stack::stages::Stages`] takes them ([`xlb_stack::local::Ipv4Handler::poll_passed`]).

use std::collections::VecDeque;

use xlb_stack::pipeline::PortId;

/// Frames kept for the next stage at most; beyond, they are dropped (the server retransmits).
const CAPACITY: usize = 256;

/// Frames passed on to the next stage, with their buffers kept for reuse.
#[derive(Default)]
pub(super) struct PassedFrames {
    queue: VecDeque<(PortId, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
}

impl PassedFrames {
    /// Keeps a copy of `frame`, received on `port`, for the next stage; `false` if the queue is full.
    pub(super) fn push(&mut self, port: PortId, frame: &[u8]) -> bool {
        if self.queue.len() >= CAPACITY {
            return false;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        self.queue.push_back((port, buf));
        true
    }

    /// Copies the oldest kept frame into `out`: its port and length.
    pub(super) fn pop(&mut self, out: &mut [u8]) -> Option<(PortId, usize)> {
        let (port, buf) = self.queue.pop_front()?;
        let len = buf.len().min(out.len());
        out[..len].copy_from_slice(&buf[..len]);
        self.spare.push(buf);
        Some((port, len))
    }
}
