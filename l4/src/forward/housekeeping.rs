//! Timers of the forwarder: connection expiry (budget following the insert rate) and counter publication.

use std::time::Instant;

use crate::conn::Forwarding;

use super::*;

impl Forwarder {
    /// Expires connections whose time is up, with a budget that follows the insert rate; what is left over is
    /// done in the next turns (`poll_timeout` asks for them at once).
    pub(super) fn expire(&mut self, now: Instant) {
        if !self.conns.expiry_due(now) {
            return;
        }
        let inserted = self.conns.inserted() - self.inserted_at_expiry;
        self.inserted_at_expiry = self.conns.inserted();
        let budget = EXPIRE_BASE_BUDGET + 2 * inserted as usize;
        let (lports, listeners) = (&mut self.lports, &mut self.listeners);
        let (sync, sync_policy, counters) = (&mut self.sync, &self.sync_policy, &mut self.counters);
        let expired = self.conns.expire(now, budget, |c| {
            if c.forwarding == Forwarding::Fullnat {
                lports.give_back(*c.local.ip(), c.backend, c.local.port());
            }
            if let (true, Some(outbox)) = (sync_policy.on_end(c), sync.as_mut()) {
                if !outbox.push(SyncEvent::Delete(c.client_key())) {
                    counters.sync_dropped += 1;
                }
            }
            let s = &mut listeners[usize::from(c.listener)].servers[usize::from(c.server)];
            let n = if c.state.is_active() {
                &mut s.active
            } else {
                &mut s.inactive
            };
            *n = n.saturating_sub(1);
        });
        self.counters.expired += expired as u64;
    }

    pub(super) fn publish(&mut self) {
        self.counters.conns = self.conns.len() as u64;
        self.counters.local_ports = self.lports.occupancy();
        for (l, listener) in self.listeners.iter().enumerate() {
            for (s, view) in listener.servers.iter().enumerate() {
                self.counters.servers[l][s].active = u64::from(view.active);
                self.counters.servers[l][s].inactive = u64::from(view.inactive);
            }
        }
        self.shared.publish(&self.counters);
    }

    /// Every [`HOUSEKEEPING`]: quarantined ports come back, health changes are taken, counters are published and
    /// exhausted resources are warned about.
    pub(super) fn housekeeping(&mut self, now: Instant) {
        if now < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = now + HOUSEKEEPING;
        self.lports.release_due(now);
        self.sync_health();
        self.publish();
        let table_full = self
            .counters
            .listeners
            .iter()
            .map(|l| l.drops[DropReason::ConnTableFull as usize])
            .sum();
        let ports_exhausted = self
            .counters
            .listeners
            .iter()
            .map(|l| l.drops[DropReason::LocalPortsExhausted as usize])
            .sum();
        self.warnings
            .check(now, self.worker, ports_exhausted, table_full, &self.lports, &self.conns);
    }
}
