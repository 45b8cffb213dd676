//! The forwarder's side of the HA tap: VRRP and sync packets to the HA driver, its frames out of this worker.
//!
//! Packet processing only queues the HA packets it recognises (a small bounded outbox); the worker's turn hands
//! them to the HA driver after the batch ([`Forwarder::flush_ha`]).

use std::net::Ipv4Addr;
use std::time::Instant;

use xlb_stack::drops::DropReason;
use xlb_stack::local::{Handled, StackContext};
use xlb_stack::pipeline::{Frame, PortId, Verdict};
use xlb_stack::wire::ETH_HEADER_LEN;

use super::*;

/// HA packets held at most between two flushes (HA traffic is a few packets per second).
pub(super) const HA_OUTBOX: usize = 64;

impl Forwarder {
    /// Carries HA traffic for the HA driver (see [`ha_tap`]).
    pub fn set_ha_tap(&mut self, tap: HaTap) {
        self.ha = Some(tap);
        self.ha_groups_owned = false;
        self.ha_outbox.reserve(HA_OUTBOX);
    }

    /// Queues an HA packet (VRRP, session sync) for the HA driver; dropped if the driver's channel has no room
    /// left for it or the outbox is full.
    pub(super) fn tap_ha(&mut self, frame: &Frame<'_>) -> Option<Handled> {
        let tap = self.ha.as_ref()?;
        let packet = &frame.data()[ETH_HEADER_LEN..];
        let kind = tap.classify(packet)?;
        let channel = tap.sender(kind);
        let queued = self.ha_outbox.iter().filter(|(k, _)| *k == kind).count();
        let room = channel.capacity().is_none_or(|c| channel.len() + queued < c);
        if !room || self.ha_outbox.len() >= HA_OUTBOX {
            return Some(Handled::Verdict(Verdict::Drop(DropReason::HaQueueFull)));
        }
        self.ha_outbox.push((kind, packet.to_vec()));
        Some(Handled::Verdict(Verdict::Consumed))
    }

    /// Hands the HA packets queued during the batch to the HA driver (the worker's turn, after the batch). One
    /// its channel no longer takes (filled by another worker meanwhile, or the driver gone) is counted.
    pub(super) fn flush_ha(&mut self, cx: &mut StackContext<'_>) {
        let Some(tap) = &self.ha else { return };
        for (kind, packet) in self.ha_outbox.drain(..) {
            if tap.sender(kind).try_send(packet).is_err() {
                cx.counters.drop(DropReason::HaQueueFull);
            }
        }
    }

    /// The next frame the HA driver wants sent, if this worker transmits for HA.
    pub(super) fn ha_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        cx: &mut StackContext<'_>,
    ) -> Option<(PortId, usize)> {
        let outbound = self.ha.as_ref()?.outbound.as_ref()?;
        while let Ok(out) = outbound.try_recv() {
            match out {
                HaOutbound::Frame { iface, frame } => match self.iface_ports.get(&iface) {
                    Some(&port) if frame.len() <= buf.len() => {
                        buf[..frame.len()].copy_from_slice(&frame);
                        return Some((port, frame.len()));
                    }
                    _ => cx.counters.drop(DropReason::NoRoute),
                },
                HaOutbound::Routed(packet) => {
                    let len = ETH_HEADER_LEN + packet.len();
                    if packet.len() < 20 || len > buf.len() {
                        continue;
                    }
                    buf[ETH_HEADER_LEN..len].copy_from_slice(&packet);
                    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
                    if let Ok(port) = cx.deliver(now, buf, len, dst) {
                        return Some((port, len));
                    }
                }
            }
        }
        None
    }

    /// Makes the stack accept the HA multicast groups on the HA interface's ports (once).
    pub(super) fn own_ha_groups(&mut self, cx: &mut StackContext<'_>) {
        let Some(tap) = &self.ha else { return };
        if self.ha_groups_owned {
            return;
        }
        for (port, iface) in self.port_ifaces.iter().enumerate() {
            if *iface == tap.iface {
                for group in tap.groups() {
                    cx.set_owned(port, group, true);
                }
            }
        }
        self.ha_groups_owned = true;
    }
}
