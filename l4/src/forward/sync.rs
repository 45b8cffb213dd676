//! Session sync: when a connection is announced to HA peers (the one [`SyncPolicy`]).

use std::time::{Duration, Instant};

use crate::conn::{Conn, ConnId, FlowKey};
use crate::sync_policy::SyncPolicy;

use super::*;

/// What the forwarder tells session sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncEvent {
    /// A connection to (re)send to the peers, with the time it has left.
    Upsert {
        /// The entry (its listener and server indices are this node's; peers map them by VIP and address).
        conn: Conn,
        /// Time left before it expires.
        remaining: Duration,
    },
    /// A synced connection ended.
    Delete(FlowKey),
}

impl Forwarder {
    /// After a packet of a connection (entry touched): queues an upsert for session sync when the policy says
    /// so (threshold, state change, refresh). One that cannot be queued is counted in `sync_dropped`; the
    /// connection's last sync stays as it was, so the next packet tries again.
    pub(super) fn maybe_sync(&mut self, id: ConnId, now: Instant) {
        let Some(out) = &self.sync_out else { return };
        let (c, last) = (self.conns.get(id), self.conns.last_sync(id));
        let reason = self.sync_policy.after_packet(c, last, now, self.conns.timeouts());
        if reason.is_none() {
            return;
        }
        let event = SyncEvent::Upsert {
            conn: *c,
            remaining: self.conns.expires_in(id, now),
        };
        if out.try_send(event).is_ok() {
            self.conns.mark_synced(id, now);
        } else {
            self.counters.sync_dropped += 1;
        }
    }

    /// Sends session-sync events to `out`, when `policy` says (see [`SyncPolicy`]).
    pub fn enable_sync(&mut self, out: crossbeam_channel::Sender<SyncEvent>, policy: SyncPolicy) {
        self.sync_out = Some(out);
        self.sync_policy = policy;
    }
}
