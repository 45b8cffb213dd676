//! Session sync: when a connection is announced to HA peers (the one [`SyncPolicy`]), and the outbox that
//! carries the announcements out: packet processing only queues them (no channel operation per packet); the
//! worker's turn hands them to the sync thread between batches ([`Forwarder::flush_sync`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

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

/// Events queued for the sync thread (room reserved up front).
pub(super) struct SyncOutbox {
    queue: VecDeque<SyncEvent>,
    capacity: usize,
    out: Sender<SyncEvent>,
}

impl SyncOutbox {
    /// Events held at most between two flushes (a turn's worth even at full batch rates).
    pub(super) const CAPACITY: usize = 8192;

    pub(super) fn new(out: Sender<SyncEvent>, capacity: usize) -> Self {
        SyncOutbox {
            queue: VecDeque::with_capacity(capacity),
            capacity,
            out,
        }
    }

    /// Queues an event; false if the outbox is full.
    pub(super) fn push(&mut self, event: SyncEvent) -> bool {
        if self.queue.len() >= self.capacity {
            return false;
        }
        self.queue.push_back(event);
        true
    }

    /// Hands queued events to the sync thread until its channel is full (the rest waits for the next flush).
    fn flush(&mut self) {
        while let Some(event) = self.queue.front() {
            if self.out.try_send(*event).is_err() {
                break;
            }
            self.queue.pop_front();
        }
    }
}

impl Forwarder {
    /// Queues a delete for a connection that ended, if the peers know of it; counted if it cannot be queued.
    pub(super) fn sync_ended(&mut self, c: &Conn) {
        if let (true, Some(outbox)) = (self.sync_policy.on_end(c), &mut self.sync) {
            if !outbox.push(SyncEvent::Delete(c.client_key())) {
                self.counters.sync_dropped += 1;
            }
        }
    }

    /// Hands queued sync events to the sync thread: called by the worker's turn after each batch
    /// ([`Ipv4Handler::flush_events`]) and with the timers.
    pub(super) fn flush_sync(&mut self) {
        if let Some(outbox) = &mut self.sync {
            outbox.flush();
        }
    }

    /// After a packet of a connection (entry touched): queues an upsert for session sync when the policy says
    /// so (threshold, state change, refresh). One that cannot be queued (outbox full: the sync thread is far
    /// behind) is counted in `sync_dropped`; the connection's last sync stays as it was, so the next packet
    /// tries again.
    pub(super) fn maybe_sync(&mut self, id: ConnId, now: Instant) {
        let Some(outbox) = &mut self.sync else { return };
        let (c, last) = (self.conns.get(id), self.conns.last_sync(id));
        if c.proxy == crate::conn::ProxyPhase::AwaitingServer {
            return; // a peer could not translate it before the server's ISN is known
        }
        let reason = self.sync_policy.after_packet(c, last, now, self.conns.timeouts());
        if reason.is_none() {
            return;
        }
        let event = SyncEvent::Upsert {
            conn: *c,
            remaining: self.conns.expires_in(id, now),
        };
        if outbox.push(event) {
            self.conns.mark_synced(id, now);
        } else {
            self.counters.sync_dropped += 1;
        }
    }

    /// Sends session-sync events to `out`, when `policy` says (see [`SyncPolicy`]).
    pub fn enable_sync(&mut self, out: Sender<SyncEvent>, policy: SyncPolicy) {
        self.sync = Some(SyncOutbox::new(out, SyncOutbox::CAPACITY));
        self.sync_policy = policy;
    }

    /// [`Forwarder::enable_sync`] with an outbox of `capacity` events (tests).
    #[cfg(test)]
    pub(super) fn enable_sync_with_capacity(&mut self, out: Sender<SyncEvent>, policy: SyncPolicy, capacity: usize) {
        self.sync = Some(SyncOutbox::new(out, capacity));
        self.sync_policy = policy;
    }
}
