//! ICMP errors about forwarded flows and health probes: to the checker, or to the other end of the flow.

use std::time::Instant;

use xlb_stack::local::{Handled, StackContext};
use xlb_stack::pipeline::{Frame, PortId, Verdict};
use xlb_stack::wire::{PacketSummary, ETH_HEADER_LEN};

use crate::conn::{FlowHash, FlowKey, Forwarding};

use super::*;

impl Forwarder {
    /// An ICMP message to one of our addresses: an error about a health probe goes to the checker (on worker
    /// 0), an error about a forwarded flow to the other end of its connection ([`icmp`]); anything else is the
    /// local stack's (echo, or errors about nothing we know).
    pub(super) fn handle_icmp(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &PacketSummary,
        cx: &mut StackContext<'_>,
    ) -> Handled {
        let Some(q) = icmp::quoted(frame.data(), ip.l4) else {
            return Handled::Pass;
        };
        // The quoted packet went out from us: `q.src` is ours, and the flow's key is that of the packets the
        // other end sends us.
        let role = Forwarder::role(cx, q.proto, q.src);
        if role == Some(Role::Probe) {
            if self.worker != 0 {
                return self.hand_off(0, port, frame);
            }
            let consumed = self
                .health
                .as_mut()
                .is_some_and(|h| h.handle_packet(now, &frame.data()[ETH_HEADER_LEN..]));
            return if consumed {
                Handled::Verdict(Verdict::Consumed)
            } else {
                Handled::Pass
            };
        }
        let Some(role) = role else { return Handled::Pass };
        let key = FlowKey {
            proto: q.proto,
            src: q.dst,
            dst: q.src,
        };
        let hash = FlowHash::of(&key);
        let owner = self.owner(role, &key, hash);
        if owner != self.worker {
            return self.hand_off(owner, port, frame);
        }
        let Some(id) = self.conns.lookup_hashed(&key, hash) else {
            return Handled::Pass;
        };
        let c = *self.conns.get(id);
        self.counters.icmp_forwarded += 1;
        let verdict = match role {
            // From the client's side, about VIP → client: to the backend, about what it sent (DR: as it is).
            Role::Listener(_) => {
                if c.forwarding == Forwarding::Fullnat {
                    let outer = (*c.local.ip(), *c.backend.ip());
                    icmp::rewrite(frame.data_mut(), ip.l4, &q, outer, (c.backend, c.local));
                }
                deliver(now, frame, *c.backend.ip(), cx)
            }
            // From a backend's side, about LIP → backend: to the client, about what it sent.
            Role::Reply | Role::Probe => {
                icmp::rewrite(
                    frame.data_mut(),
                    ip.l4,
                    &q,
                    (*c.vip.ip(), *c.client.ip()),
                    (c.client, c.vip),
                );
                toward_client(&c, frame, cx)
            }
        };
        Handled::Verdict(verdict)
    }
}
