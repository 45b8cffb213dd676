//! The forwarder's side of the hand-off: packets of flows another worker owns are queued for it and sent after
//! the batch; handed packets are processed here as if received.

use std::time::Instant;

use xlb_stack::drops::DropReason;
use xlb_stack::local::{Handled, StackContext};
use xlb_stack::pipeline::{Frame, PortId, Verdict};
use xlb_stack::wire::{PacketSummary, Protocol};

use crate::conn::{FlowHash, FlowKey, Proto};

use super::*;

impl Forwarder {
    /// Copies a frame for its owner worker; it is sent after the batch ([`Forwarder::flush_handoff`]).
    pub(super) fn hand_off(&mut self, owner: usize, port: PortId, frame: &Frame<'_>) -> Handled {
        let iface = self.port_ifaces[port];
        match self.handoff.as_mut().map(|h| h.queue(owner, iface, frame.data())) {
            Some(Ok(())) => Handled::Verdict(Verdict::Consumed),
            _ => Handled::Verdict(Verdict::Drop(DropReason::HandoffFull)),
        }
    }

    /// Sends the frames queued for other workers during the batch (the worker's turn, after the batch).
    pub(super) fn flush_handoff(&mut self, cx: &mut StackContext<'_>) {
        let Some(handoff) = self.handoff.as_mut() else { return };
        let (sent, lost) = handoff.flush();
        self.counters.handoff_out += sent;
        cx.counters.drops[DropReason::HandoffFull.index()] += lost;
    }

    /// Processes frames other workers handed over; returns the first that is to be sent.
    pub(super) fn process_handed(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        cx: &mut StackContext<'_>,
    ) -> Option<(PortId, usize)> {
        loop {
            let handed = self.handoff.as_mut()?.receive()?;
            let len = handed.len;
            buf[..len].copy_from_slice(&handed.buf[..len]);
            let iface = handed.iface;
            self.handoff.as_mut()?.recycle(handed);
            self.counters.handoff_in += 1;
            let Some(&port) = self.iface_ports.get(&iface) else {
                cx.counters.drop(DropReason::NoRoute);
                continue;
            };
            let mut frame = Frame::new(buf, len);
            let mut reply = false;
            // The sender validated the frame before handing it over: ICMP, or TCP/UDP with its ports.
            let Ok(ip) = PacketSummary::parse(frame.data()) else {
                continue;
            };
            let handled = match (ip.protocol, ip.endpoints()) {
                (Protocol::Icmp, _) => self.handle_icmp(now, port, &mut frame, &ip, cx),
                (protocol, Some((src, dst))) => {
                    let proto = if protocol == Protocol::Tcp {
                        Proto::Tcp
                    } else {
                        Proto::Udp
                    };
                    let key = FlowKey { proto, src, dst };
                    let Some(role) = Forwarder::role(cx, proto, dst) else {
                        continue;
                    };
                    let hash = FlowHash::of(&key);
                    reply = role == Role::Reply;
                    self.process_owned(now, port, &mut frame, &ip, key, hash, role, cx)
                }
                (_, None) => continue,
            };
            match handled {
                Handled::Verdict(Verdict::Transmit(q)) => return Some((q, frame.len())),
                Handled::Verdict(Verdict::Drop(reason)) | Handled::Reject(reason) => cx.counters.drop(reason),
                // A reply to a port the next stage holds (see `Stages`): kept for it.
                Handled::Pass if reply => {
                    if !self.passed.push(port, frame.data()) {
                        cx.counters.drop(DropReason::HandoffFull);
                    }
                }
                Handled::Verdict(Verdict::Consumed) | Handled::Pass => {}
            }
        }
    }
}
