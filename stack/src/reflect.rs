//! A pipeline that sends every frame back where it came from, with MAC addresses swapped.
//!
//! It is the raw AF_XDP limit of a worker: what the rings, the UMEM and the loop cost with no packet logic.
//! `xlb-perf xdp-loop` measures it, and later stages state their rate as a fraction of it.

use std::time::Instant;

use crate::counters::StackCounters;
use crate::drops::DropReason;
use crate::pipeline::{Frame, Pipeline, PortId, Verdict};

/// Reflects frames (swaps source and destination MAC) back out of the port they arrived on.
#[derive(Debug, Default)]
pub struct Reflector {
    counters: StackCounters,
}

impl Pipeline for Reflector {
    fn process(&mut self, _now: Instant, port: PortId, frame: &mut Frame<'_>) -> Verdict {
        let data = frame.data_mut();
        if data.len() < 12 {
            self.counters.drop(DropReason::MalformedEthernet);
            return Verdict::Drop(DropReason::MalformedEthernet);
        }
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&data[0..6]);
        data.copy_within(6..12, 0);
        data[6..12].copy_from_slice(&dst);
        Verdict::Transmit(port)
    }

    fn poll_transmit(&mut self, _now: Instant, _buf: &mut [u8]) -> Option<(PortId, usize)> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn counters(&self) -> &StackCounters {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_macs_and_returns_to_sender() {
        let mut r = Reflector::default();
        let mut buf = [0u8; 64];
        buf[0..6].copy_from_slice(&[1; 6]);
        buf[6..12].copy_from_slice(&[2; 6]);
        buf[12] = 0x08;
        let mut f = Frame::new(&mut buf, 60);
        assert_eq!(r.process(Instant::now(), 3, &mut f), Verdict::Transmit(3));
        assert_eq!(&buf[0..6], &[2; 6]);
        assert_eq!(&buf[6..12], &[1; 6]);
        let mut short = [0u8; 8];
        let mut f = Frame::new(&mut short, 8);
        assert!(matches!(r.process(Instant::now(), 0, &mut f), Verdict::Drop(_)));
    }
}
