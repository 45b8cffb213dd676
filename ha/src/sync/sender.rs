//! The sending half of a node: queues connection changes, packs them into reliable messages, retransmits
//! until every known peer acked, and heartbeats.
//!
//! Drive it like the rest of the stack: `queue_*` changes, call [`SyncSender::poll_transmit`] until it
//! returns `None` (sending each payload to the group), feed peers' acks and heartbeats from the receiver
//! ([`SyncSender::handle_ack`], [`SyncSender::handle_heartbeat`]), and sleep until
//! [`SyncSender::poll_timeout`] or the next change.
//!
//! # Queue
//!
//! Changes wait in two FIFO queues, upserts and deletes, each change numbered in arrival order. A queued
//! connection has at most one queued change: a newer upsert replaces a queued upsert in place (keeping its
//! position), a delete cancels a queued upsert, an upsert cancels a queued delete (cancelled entries stay
//! as tombstones until they reach the front). Because queued changes are about distinct connections they
//! commute, so a message takes as many changes of one kind as fit, from whichever queue holds the oldest
//! change. Control messages (BULK_REQUEST, BULK_END) are sent only once every change queued before them is
//! in a message; a BULK_REQUEST also waits until some peer is known, so a starting node's request is not
//! sent into the void.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use super::auth::{AuthKey, MAC_LEN};
use super::record::{ConnKey, ConnRecord, RecordError, KEY_LEN, RECORD_LEN};
use super::wire::{
    AckRepr, Body, BulkEndRepr, Header, MessageType, SyncMessage, SyncRepr, FLAG_RETRANSMIT, HEADER_LEN, MAX_CONNS,
    MAX_DELETES, MAX_MESSAGE_LEN,
};
use super::{PeerId, SyncConfig, SyncCounters};

/// A change was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// [`SyncConfig::max_pending`] changes are waiting: drop this one (a later refresh carries it).
    Full,
    /// A field is out of range; a receiver would refuse the whole message.
    Invalid(RecordError),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::Full => f.write_str("sync queue full"),
            QueueError::Invalid(e) => write!(f, "not synced: {e}"),
        }
    }
}

impl std::error::Error for QueueError {}

/// A queued change (`None`: cancelled).
struct Slot<T> {
    index: u64,
    item: Option<T>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Upsert,
    Delete,
}

enum Control {
    BulkRequest(u32),
    BulkEnd(BulkEndRepr),
}

/// A control message, sent once every change numbered below `position` is in a message.
struct PendingControl {
    position: u64,
    control: Control,
}

/// A reliable message not yet acknowledged by every live peer.
struct InFlight {
    rseq: u64,
    msg_type: MessageType,
    count: usize,
    body: Box<[u8]>,
    rto: Duration,
    due: Instant,
}

/// What a peer has acknowledged.
#[derive(Debug, Clone, Copy)]
struct Peer {
    epoch: u32,
    last_heard: Instant,
    ack: AckRepr,
}

/// The sending half of a node.
pub struct SyncSender {
    config: SyncConfig,
    key: AuthKey,
    /// Next packet number.
    next_seq: u64,
    /// Next reliable sequence number.
    next_rseq: u64,
    upserts: VecDeque<Slot<ConnRecord>>,
    deletes: VecDeque<Slot<ConnKey>>,
    controls: VecDeque<PendingControl>,
    /// Queued connection → its live slot.
    queued: HashMap<ConnKey, (Kind, u64)>,
    next_index: u64,
    window: VecDeque<InFlight>,
    peers: HashMap<u32, Peer>,
    next_heartbeat: Instant,
    counters: SyncCounters,
}

impl SyncSender {
    /// A sender; the first heartbeat is due at `now`.
    pub fn new(config: SyncConfig, key: AuthKey, now: Instant) -> Result<SyncSender, String> {
        config.validate()?;
        Ok(SyncSender {
            window: VecDeque::with_capacity(config.window),
            config,
            key,
            next_seq: 1,
            next_rseq: 1,
            upserts: VecDeque::new(),
            deletes: VecDeque::new(),
            controls: VecDeque::new(),
            queued: HashMap::new(),
            next_index: 0,
            peers: HashMap::new(),
            next_heartbeat: now,
            counters: SyncCounters::default(),
        })
    }

    /// This incarnation.
    pub fn me(&self) -> PeerId {
        self.config.me()
    }

    /// Counters (sender fields).
    pub fn counters(&self) -> &SyncCounters {
        &self.counters
    }

    /// Changes and control messages waiting for a message.
    pub fn pending(&self) -> usize {
        self.queued.len() + self.controls.len()
    }

    /// How many more changes or control messages may be queued now (feed a bulk answer larger than this in
    /// slices, as messages leave the queue).
    pub fn room(&self) -> usize {
        self.config.max_pending.saturating_sub(self.pending())
    }

    /// Reliable messages sent and not yet acknowledged by every live peer.
    pub fn in_flight(&self) -> usize {
        self.window.len()
    }

    /// Whether nothing is queued or unacknowledged.
    pub fn is_idle(&self) -> bool {
        self.pending() == 0 && self.window.is_empty()
    }

    /// The peers currently waited for.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers.iter().map(|(&node_id, p)| PeerId {
            node_id,
            epoch: p.epoch,
        })
    }

    /// Queues an upsert of `record` (replacing a queued change of the same connection).
    pub fn queue_update(&mut self, record: ConnRecord) -> Result<(), QueueError> {
        if let Err(e) = record.validate() {
            self.counters.invalid += 1;
            return Err(QueueError::Invalid(e));
        }
        let key = record.key();
        match self.queued.get(&key).copied() {
            Some((Kind::Upsert, index)) => {
                let i = self
                    .upserts
                    .binary_search_by_key(&index, |s| s.index)
                    .expect("queued upsert");
                self.upserts[i].item = Some(record);
                self.counters.coalesced += 1;
                return Ok(());
            }
            Some((Kind::Delete, index)) => {
                let i = self
                    .deletes
                    .binary_search_by_key(&index, |s| s.index)
                    .expect("queued delete");
                self.deletes[i].item = None;
                self.queued.remove(&key);
                self.counters.coalesced += 1;
            }
            None => self.check_room()?,
        }
        let index = self.take_index();
        self.upserts.push_back(Slot {
            index,
            item: Some(record),
        });
        self.queued.insert(key, (Kind::Upsert, index));
        Ok(())
    }

    /// Queues a delete of the connection `key` (cancelling a queued upsert of it).
    pub fn queue_delete(&mut self, key: ConnKey) -> Result<(), QueueError> {
        if let Err(e) = key.validate() {
            self.counters.invalid += 1;
            return Err(QueueError::Invalid(e));
        }
        match self.queued.get(&key).copied() {
            Some((Kind::Delete, _)) => {
                self.counters.coalesced += 1;
                return Ok(());
            }
            Some((Kind::Upsert, index)) => {
                // An earlier version may already be in flight: the delete must still be sent.
                let i = self
                    .upserts
                    .binary_search_by_key(&index, |s| s.index)
                    .expect("queued upsert");
                self.upserts[i].item = None;
                self.queued.remove(&key);
                self.counters.coalesced += 1;
            }
            None => self.check_room()?,
        }
        let index = self.take_index();
        self.deletes.push_back(Slot { index, item: Some(key) });
        self.queued.insert(key, (Kind::Delete, index));
        Ok(())
    }

    /// Queues a request for every peer's whole table, identified by `request` (from
    /// [`SyncReceiver::begin_resync`](super::SyncReceiver::begin_resync)). It is sent once a peer is known.
    pub fn queue_bulk_request(&mut self, request: u32) -> Result<(), QueueError> {
        self.queue_control(Control::BulkRequest(request))
    }

    /// Queues the end of a bulk answer to `requester`'s request `request`, after every change queued so far.
    pub fn queue_bulk_end(&mut self, requester: PeerId, request: u32) -> Result<(), QueueError> {
        self.queue_control(Control::BulkEnd(BulkEndRepr { requester, request }))
    }

    fn queue_control(&mut self, control: Control) -> Result<(), QueueError> {
        self.check_room()?;
        self.controls.push_back(PendingControl {
            position: self.next_index,
            control,
        });
        Ok(())
    }

    fn check_room(&mut self) -> Result<(), QueueError> {
        if self.pending() >= self.config.max_pending {
            self.counters.queue_full += 1;
            return Err(QueueError::Full);
        }
        Ok(())
    }

    fn take_index(&mut self) -> u64 {
        self.next_index += 1;
        self.next_index - 1
    }

    /// A peer's heartbeat (or any message from it): learn it or keep it alive.
    pub fn handle_heartbeat(&mut self, now: Instant, peer: PeerId) {
        self.peer_mut(now, peer);
    }

    /// A peer's ACK of our messages (only those addressed to this incarnation count).
    pub fn handle_ack(&mut self, now: Instant, peer: PeerId, ack: &AckRepr) {
        if ack.acked != self.me() || ack.cumulative >= self.next_rseq {
            self.counters.bad_acks += 1;
            return;
        }
        self.counters.acks_received += 1;
        let p = self.peer_mut(now, peer);
        if ack.cumulative > p.ack.cumulative {
            p.ack = *ack;
        } else if ack.cumulative == p.ack.cumulative {
            for (w, new) in p.ack.sack.iter_mut().zip(ack.sack) {
                *w |= new;
            }
        }
        self.advance();
    }

    fn peer_mut(&mut self, now: Instant, peer: PeerId) -> &mut Peer {
        let me = self.me();
        let fresh = Peer {
            epoch: peer.epoch,
            last_heard: now,
            ack: AckRepr {
                acked: me,
                cumulative: 0,
                sack: Default::default(),
            },
        };
        let p = self.peers.entry(peer.node_id).or_insert(fresh);
        if p.epoch != peer.epoch {
            // Restarted: it has nothing of ours.
            *p = fresh;
        }
        p.last_heard = p.last_heard.max(now);
        p
    }

    fn forget_silent_peers(&mut self, now: Instant) {
        let timeout = self.config.peer_timeout;
        let before = self.peers.len();
        self.peers
            .retain(|_, p| now.saturating_duration_since(p.last_heard) <= timeout);
        self.counters.peers_forgotten += (before - self.peers.len()) as u64;
    }

    fn acked_by_all(&self, rseq: u64) -> bool {
        self.peers.values().all(|p| p.ack.covers(rseq))
    }

    /// Drops messages at the front of the window that every live peer acknowledged.
    fn advance(&mut self) {
        while let Some(front) = self.window.front() {
            if !self.acked_by_all(front.rseq) {
                break;
            }
            self.window.pop_front();
        }
    }

    fn base(&self) -> u64 {
        self.window.front().map_or(self.next_rseq, |m| m.rseq)
    }

    /// When [`SyncSender::poll_transmit`] next has something to send, if nothing is sendable now: the next
    /// heartbeat or retransmission.
    pub fn poll_timeout(&self) -> Instant {
        let retransmit = self
            .window
            .iter()
            .filter(|m| !self.acked_by_all(m.rseq))
            .map(|m| m.due)
            .min();
        retransmit.map_or(self.next_heartbeat, |r| r.min(self.next_heartbeat))
    }

    /// The next payload to send to the group, written to `buf` (at least [`MAX_MESSAGE_LEN`] bytes); its
    /// length, or `None` when nothing is due. In order: a due heartbeat, the oldest due retransmission, a new
    /// message if the window has room.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        assert!(
            buf.len() >= MAX_MESSAGE_LEN,
            "sync transmit buffer below MAX_MESSAGE_LEN"
        );
        self.forget_silent_peers(now);
        self.advance();
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.config.heartbeat_interval;
            self.counters.heartbeats += 1;
            let header = self.header(0, self.next_rseq - 1);
            let heartbeat = SyncRepr {
                header,
                body: Body::Heartbeat,
            };
            return Some(heartbeat.emit(buf, &self.key));
        }
        if let Some(len) = self.retransmit(now, buf) {
            return Some(len);
        }
        if self.window.len() < self.config.window {
            return self.transmit_new(now, buf);
        }
        None
    }

    fn header(&mut self, flags: u8, rseq: u64) -> Header {
        self.next_seq += 1;
        self.counters.sent += 1;
        Header {
            flags,
            node_id: self.config.node_id,
            epoch: self.config.epoch,
            seq: self.next_seq - 1,
            rseq,
            base: self.base(),
        }
    }

    fn emit_in_flight(&mut self, buf: &mut [u8], i: usize, flags: u8) -> usize {
        let header = self.header(flags, self.window[i].rseq);
        let m = &self.window[i];
        let len = HEADER_LEN + m.body.len() + MAC_LEN;
        let mut msg = SyncMessage::new_unchecked(&mut buf[..len]);
        msg.set_header(m.msg_type, &header, m.count, m.body.len());
        msg.body_mut().copy_from_slice(&m.body);
        msg.sign(&self.key);
        len
    }

    fn retransmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let i = (0..self.window.len()).find(|&i| {
            let m = &self.window[i];
            m.due <= now && !self.acked_by_all(m.rseq)
        })?;
        let m = &mut self.window[i];
        m.rto = (m.rto * 2).min(self.config.rto_max);
        m.due = now + m.rto;
        self.counters.retransmits += 1;
        Some(self.emit_in_flight(buf, i, FLAG_RETRANSMIT))
    }

    /// Drops cancelled slots at the front of both queues.
    fn trim(&mut self) {
        while self.upserts.front().is_some_and(|s| s.item.is_none()) {
            self.upserts.pop_front();
        }
        while self.deletes.front().is_some_and(|s| s.item.is_none()) {
            self.deletes.pop_front();
        }
    }

    fn transmit_new(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        self.trim();
        let oldest = |q: Option<u64>, d: Option<u64>| match (q, d) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let oldest_change = oldest(
            self.upserts.front().map(|s| s.index),
            self.deletes.front().map(|s| s.index),
        );
        if let Some(c) = self.controls.front() {
            let ready = oldest_change.is_none_or(|i| i >= c.position);
            let blocked = matches!(c.control, Control::BulkRequest(_)) && self.peers.is_empty();
            if ready && !blocked {
                let c = self.controls.pop_front().expect("front");
                let (msg_type, body) = match c.control {
                    Control::BulkRequest(id) => (MessageType::BulkRequest, id.to_be_bytes().to_vec()),
                    Control::BulkEnd(end) => {
                        let mut b = Vec::with_capacity(12);
                        b.extend_from_slice(&end.requester.node_id.to_be_bytes());
                        b.extend_from_slice(&end.requester.epoch.to_be_bytes());
                        b.extend_from_slice(&end.request.to_be_bytes());
                        (MessageType::BulkEnd, b)
                    }
                };
                return Some(self.push_in_flight(now, buf, msg_type, 1, body));
            }
        }
        let upserts_first = match (self.upserts.front(), self.deletes.front()) {
            (Some(u), Some(d)) => u.index < d.index,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let (msg_type, count, body) = if upserts_first {
            let mut body = Vec::with_capacity(MAX_CONNS * RECORD_LEN);
            let mut count = 0;
            while count < MAX_CONNS {
                let Some(slot) = self.upserts.pop_front() else { break };
                let Some(record) = slot.item else { continue };
                self.queued.remove(&record.key());
                let at = body.len();
                body.resize(at + RECORD_LEN, 0);
                record.emit(&mut body[at..]);
                count += 1;
            }
            (MessageType::Conns, count, body)
        } else {
            let mut body = Vec::with_capacity(MAX_DELETES * KEY_LEN);
            let mut count = 0;
            while count < MAX_DELETES {
                let Some(slot) = self.deletes.pop_front() else { break };
                let Some(key) = slot.item else { continue };
                self.queued.remove(&key);
                let at = body.len();
                body.resize(at + KEY_LEN, 0);
                key.emit(&mut body[at..]);
                count += 1;
            }
            (MessageType::Deletes, count, body)
        };
        self.counters.entries_sent += count as u64;
        Some(self.push_in_flight(now, buf, msg_type, count, body))
    }

    fn push_in_flight(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        msg_type: MessageType,
        count: usize,
        body: Vec<u8>,
    ) -> usize {
        let rseq = self.next_rseq;
        self.next_rseq += 1;
        self.window.push_back(InFlight {
            rseq,
            msg_type,
            count,
            body: body.into_boxed_slice(),
            rto: self.config.rto_initial,
            due: now + self.config.rto_initial,
        });
        let len = self.emit_in_flight(buf, self.window.len() - 1, 0);
        // With no peer to wait for, the message is sent once and not kept.
        self.advance();
        len
    }
}
