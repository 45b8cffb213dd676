//! The receiving half of a node: authenticates datagrams, drops replays, puts each sender's reliable messages
//! back in order and yields what to do as [`SyncAction`]s.
//!
//! [`SyncReceiver::handle_message`] checks, in order: framing ([`SyncMessage::new_checked`]), the HMAC
//! (constant time), that the message is not our own, the replay window, then every field
//! ([`SyncRepr::parse`]). Only then does anything change; the actions are pulled with
//! [`SyncReceiver::poll_action`].
//!
//! Per sending node the receiver keeps its current epoch, the last [`RETIRED_EPOCHS`] epochs (messages from
//! them are replays), a sliding window of the last [`REPLAY_WINDOW`] packet numbers for each packet-number
//! space (data and acks), and the reliable stream: the next rseq expected and the messages received ahead
//! of it (at most [`SyncConfig::window`]). State of a node is never dropped (dropping it would re-open the
//! replay window), so at most [`SyncConfig::max_nodes`] nodes are tracked.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use super::auth::AuthKey;
use super::record::{ConnKey, ConnRecord};
use super::wire::{AckRepr, Body, Header, MessageType, SyncMessage, SyncRepr, WireError, ACK_MESSAGE_LEN, SACK_BITS};
use super::{PeerId, SyncConfig, SyncCounters};

/// Packet numbers remembered per node and space; older ones are refused as replays. Larger than a full
/// window's burst, so reordering within a burst never looks like a replay.
pub const REPLAY_WINDOW: u64 = 1024;
/// Past epochs remembered per node; messages from them are refused as replays.
pub const RETIRED_EPOCHS: usize = 8;

/// What the caller should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncAction {
    /// Create or update this connection (map its listener and backend to local slots, then
    /// [`ConnParts::into_conn`](super::ConnParts::into_conn)).
    Upsert(ConnRecord),
    /// Remove this connection.
    Delete(ConnKey),
    /// Send this ACK payload to `to` (the address the acknowledged message came from).
    SendAck {
        /// Destination.
        to: SocketAddr,
        /// The payload.
        bytes: [u8; ACK_MESSAGE_LEN],
    },
    /// `from` wants our whole table: feed it to the sender with
    /// [`SyncSender::queue_update`](super::SyncSender::queue_update) (in slices of
    /// [`SyncSender::room`](super::SyncSender::room) if it is large), then
    /// [`SyncSender::queue_bulk_end`](super::SyncSender::queue_bulk_end)`(from, request)`. Remaining timeouts
    /// are those at queueing time.
    BulkRequested {
        /// The requester.
        from: PeerId,
        /// Its request id, echoed in the BULK_END.
        request: u32,
    },
    /// `from` finished answering our bulk request: [`SyncReceiver::resynced`] is now true.
    BulkComplete {
        /// The peer that answered.
        from: PeerId,
    },
    /// An authenticated message from `peer`: pass to
    /// [`SyncSender::handle_heartbeat`](super::SyncSender::handle_heartbeat) (peer learning and liveness).
    PeerHeard {
        /// The peer.
        peer: PeerId,
    },
    /// `peer` acknowledged our messages: pass to [`SyncSender::handle_ack`](super::SyncSender::handle_ack).
    PeerAck {
        /// The peer.
        peer: PeerId,
        /// What it acknowledged.
        ack: AckRepr,
    },
    /// `lost` reliable messages of `from` can no longer be received (it stopped retransmitting them while
    /// we were unreachable): our table may miss changes; request a bulk resync.
    Gap {
        /// The sender.
        from: PeerId,
        /// Messages skipped.
        lost: u64,
    },
}

/// Why a datagram was dropped (each is also counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// Bad framing or an invalid field.
    Malformed(WireError),
    /// The HMAC does not match.
    Forged,
    /// A packet number already seen or too old, or a retired epoch.
    Replayed,
    /// Our own message, looped back.
    Looped,
    /// A new sending node while [`SyncConfig::max_nodes`] are tracked.
    TooManyNodes,
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Malformed(e) => write!(f, "malformed: {e}"),
            RecvError::Forged => f.write_str("bad HMAC (wrong auth_key_file or forged)"),
            RecvError::Replayed => f.write_str("replayed or duplicate packet"),
            RecvError::Looped => f.write_str("own message looped back"),
            RecvError::TooManyNodes => f.write_str("too many sync nodes"),
        }
    }
}

impl std::error::Error for RecvError {}

/// Progress of this node's bulk resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncState {
    /// No resync was requested.
    Idle,
    /// Request `request` is outstanding. A peer whose stream loses messages meanwhile (reported as
    /// [`SyncAction::Gap`]) cannot complete it: request again.
    Pending {
        /// Its id.
        request: u32,
    },
    /// `from` answered the last request completely.
    Complete {
        /// The peer whose table we now hold.
        from: PeerId,
    },
}

/// Packet numbers seen recently: a ring of [`REPLAY_WINDOW`] bits indexed by packet number.
#[derive(Debug, Clone, Copy)]
struct ReplayWindow {
    highest: u64,
    seen: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            highest: 0,
            seen: [0; (REPLAY_WINDOW / 64) as usize],
        }
    }
}

impl ReplayWindow {
    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % REPLAY_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn is_fresh(&self, seq: u64) -> bool {
        if seq > self.highest {
            return true;
        }
        let (w, m) = Self::bit(seq);
        self.highest - seq < REPLAY_WINDOW && self.seen[w] & m == 0
    }

    fn mark(&mut self, seq: u64) {
        if seq > self.highest {
            if seq - self.highest >= REPLAY_WINDOW {
                self.seen = Default::default();
            } else {
                for s in self.highest + 1..seq {
                    let (w, m) = Self::bit(s);
                    self.seen[w] &= !m;
                }
            }
            self.highest = seq;
        }
        let (w, m) = Self::bit(seq);
        self.seen[w] |= m;
    }
}

/// A sender's reliable stream as received.
#[derive(Debug, Default)]
struct InStream {
    /// Next rseq to deliver.
    next: u64,
    /// Received ahead of `next`.
    ahead: BTreeMap<u64, Body>,
    /// The resync request that was pending when this stream last lost messages.
    gap_during: Option<u32>,
}

/// What is known of one sending node.
#[derive(Debug)]
struct Remote {
    epoch: u32,
    retired: [u32; RETIRED_EPOCHS],
    data: ReplayWindow,
    acks: ReplayWindow,
    /// `None` until its first reliable message or heartbeat.
    stream: Option<InStream>,
    last_heard: Instant,
}

impl Remote {
    fn new(epoch: u32, now: Instant) -> Remote {
        Remote {
            epoch,
            last_heard: now,
            retired: [0; RETIRED_EPOCHS],
            data: ReplayWindow::default(),
            acks: ReplayWindow::default(),
            stream: None,
        }
    }

    fn window(&mut self, msg_type: u8) -> &mut ReplayWindow {
        if msg_type == MessageType::Ack as u8 {
            &mut self.acks
        } else {
            &mut self.data
        }
    }
}

impl Output {
    /// Turns a message delivered in order into actions. `gap_during`: the resync request during which the
    /// sender's stream lost messages, if any.
    fn deliver(&mut self, from: PeerId, gap_during: Option<u32>, body: Body) {
        match body {
            Body::Conns(records) => {
                self.counters.upserts += records.len() as u64;
                self.actions.extend(records.into_iter().map(SyncAction::Upsert));
            }
            Body::Deletes(keys) => {
                self.counters.deletes += keys.len() as u64;
                self.actions.extend(keys.into_iter().map(SyncAction::Delete));
            }
            Body::BulkRequest(request) => self.actions.push_back(SyncAction::BulkRequested { from, request }),
            Body::BulkEnd(end) => {
                let pending = ResyncState::Pending { request: end.request };
                if end.requester == self.me && self.resync == pending && gap_during != Some(end.request) {
                    self.resync = ResyncState::Complete { from };
                    self.actions.push_back(SyncAction::BulkComplete { from });
                }
            }
            Body::Ack(_) | Body::Heartbeat => {}
        }
    }
}

/// The receiving half of a node.
pub struct SyncReceiver {
    config: SyncConfig,
    key: AuthKey,
    /// Next packet number of our ACK space.
    next_ack_seq: u64,
    remotes: HashMap<u32, Remote>,
    out: Output,
    next_request: u32,
}

/// What the receiver produces, apart from the per-node state (so both can be borrowed at once).
struct Output {
    me: PeerId,
    actions: VecDeque<SyncAction>,
    resync: ResyncState,
    counters: SyncCounters,
}

impl SyncReceiver {
    /// A receiver for the node described by `config`.
    pub fn new(config: SyncConfig, key: AuthKey) -> Result<SyncReceiver, String> {
        config.validate()?;
        Ok(SyncReceiver {
            remotes: HashMap::with_capacity(config.max_nodes),
            out: Output {
                me: config.me(),
                actions: VecDeque::new(),
                resync: ResyncState::Idle,
                counters: SyncCounters::default(),
            },
            config,
            key,
            next_ack_seq: 1,
            next_request: 1,
        })
    }

    /// This incarnation.
    pub fn me(&self) -> PeerId {
        self.config.me()
    }

    /// Counters (receiver fields).
    pub fn counters(&self) -> &SyncCounters {
        &self.out.counters
    }

    /// Starts a bulk resync: returns the request id to queue with
    /// [`SyncSender::queue_bulk_request`](super::SyncSender::queue_bulk_request). [`SyncReceiver::resynced`]
    /// is false until a peer's BULK_END for this request is delivered. With no peer at all it never
    /// completes: the caller bounds the wait.
    pub fn begin_resync(&mut self) -> u32 {
        let request = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        self.out.resync = ResyncState::Pending { request };
        request
    }

    /// Whether the last bulk resync completed.
    pub fn resynced(&self) -> bool {
        matches!(self.out.resync, ResyncState::Complete { .. })
    }

    /// Progress of the bulk resync.
    pub fn resync_state(&self) -> ResyncState {
        self.out.resync
    }

    /// The sending nodes heard from (current incarnation) and when they were last heard.
    pub fn nodes(&self) -> impl Iterator<Item = (PeerId, Instant)> + '_ {
        self.remotes.iter().map(|(&node_id, r)| {
            let peer = PeerId {
                node_id,
                epoch: r.epoch,
            };
            (peer, r.last_heard)
        })
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<SyncAction> {
        self.out.actions.pop_front()
    }

    /// Handles a datagram received from `from`. Errors are counted and mean nothing was acted on; `Ok` means
    /// it was authentic and new (its effects, possibly none for a duplicate, are in [`poll_action`]).
    ///
    /// [`poll_action`]: SyncReceiver::poll_action
    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Result<(), RecvError> {
        self.out.counters.received += 1;
        let msg = match SyncMessage::new_checked(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.out.counters.malformed += 1;
                return Err(RecvError::Malformed(e));
            }
        };
        if !msg.verify(&self.key) {
            self.out.counters.forged += 1;
            return Err(RecvError::Forged);
        }
        if msg.node_id() == self.config.node_id {
            self.out.counters.looped += 1;
            return Err(RecvError::Looped);
        }
        if let Err(e) = self.check_replay(&msg) {
            match e {
                RecvError::Replayed => self.out.counters.replayed += 1,
                RecvError::TooManyNodes => self.out.counters.too_many_nodes += 1,
                _ => {}
            }
            return Err(e);
        }
        let repr = match SyncRepr::parse(&msg) {
            Ok(r) => r,
            Err(e) => {
                self.out.counters.malformed += 1;
                return Err(RecvError::Malformed(e));
            }
        };
        self.accept(now, from, repr);
        Ok(())
    }

    /// Refuses a replay without changing anything.
    fn check_replay<T: AsRef<[u8]>>(&self, msg: &SyncMessage<T>) -> Result<(), RecvError> {
        let (node, epoch) = (msg.node_id(), msg.epoch());
        match self.remotes.get(&node) {
            None if self.remotes.len() >= self.config.max_nodes => Err(RecvError::TooManyNodes),
            None => Ok(()),
            Some(r) if r.epoch == epoch => {
                let window = if msg.msg_type() == MessageType::Ack as u8 {
                    &r.acks
                } else {
                    &r.data
                };
                if window.is_fresh(msg.seq()) {
                    Ok(())
                } else {
                    Err(RecvError::Replayed)
                }
            }
            Some(r) if epoch == 0 || r.retired.contains(&epoch) => Err(RecvError::Replayed),
            Some(_) => Ok(()),
        }
    }

    /// Records the packet and acts on an authentic, fresh, valid message.
    fn accept(&mut self, now: Instant, from: SocketAddr, repr: SyncRepr) {
        let h = repr.header;
        let peer = PeerId {
            node_id: h.node_id,
            epoch: h.epoch,
        };
        let remote = self
            .remotes
            .entry(h.node_id)
            .or_insert_with(|| Remote::new(h.epoch, now));
        if remote.epoch != h.epoch {
            // The node restarted: forget its old stream, refuse its old epoch from now on.
            remote.retired.rotate_right(1);
            remote.retired[0] = remote.epoch;
            let retired = remote.retired;
            *remote = Remote::new(h.epoch, now);
            remote.retired = retired;
            self.out.counters.restarts += 1;
        }
        remote.last_heard = remote.last_heard.max(now);
        remote.window(repr.body.msg_type() as u8).mark(h.seq);

        match repr.body {
            Body::Ack(ack) => {
                if ack.acked == self.me() {
                    self.out.actions.push_back(SyncAction::PeerAck { peer, ack });
                } else {
                    self.out.counters.foreign_acks += 1;
                }
            }
            Body::Heartbeat => {
                self.out.actions.push_back(SyncAction::PeerHeard { peer });
                self.sync_stream(peer, &h);
                self.send_ack(from, peer);
            }
            body => {
                self.out.actions.push_back(SyncAction::PeerHeard { peer });
                self.sync_stream(peer, &h);
                self.on_reliable(peer, h.rseq, body);
                self.send_ack(from, peer);
            }
        }
    }

    /// Starts the stream of `peer` at its `base` on first contact; skips ahead when `base` passed us.
    fn sync_stream(&mut self, peer: PeerId, h: &Header) {
        let remote = self.remotes.get_mut(&peer.node_id).expect("accepted");
        let stream = remote.stream.get_or_insert_with(|| InStream {
            next: h.base,
            ..InStream::default()
        });
        if h.base <= stream.next {
            return;
        }
        // Deliver what arrived of the skipped range, in order; the rest is lost. A bulk answer whose stream
        // lost messages is incomplete: its BULK_END will not complete the resync.
        let later = stream.ahead.split_off(&h.base);
        let skipped = std::mem::replace(&mut stream.ahead, later);
        let lost = h.base - stream.next - skipped.len() as u64;
        stream.next = h.base;
        if let (true, ResyncState::Pending { request }) = (lost > 0, self.out.resync) {
            stream.gap_during = Some(request);
        }
        for body in skipped.into_values() {
            self.out.deliver(peer, stream.gap_during, body);
        }
        if lost > 0 {
            self.out.counters.lost += lost;
            self.out.actions.push_back(SyncAction::Gap { from: peer, lost });
        }
        self.drain(peer);
    }

    fn on_reliable(&mut self, peer: PeerId, rseq: u64, body: Body) {
        let window = self.config.window as u64;
        let remote = self.remotes.get_mut(&peer.node_id).expect("accepted");
        let stream = remote.stream.as_mut().expect("synced");
        if rseq < stream.next || stream.ahead.contains_key(&rseq) {
            self.out.counters.duplicates += 1;
        } else if rseq - stream.next >= window {
            self.out.counters.out_of_window += 1;
        } else {
            stream.ahead.insert(rseq, body);
            self.drain(peer);
        }
    }

    /// Delivers the messages of `peer` that are next in order.
    fn drain(&mut self, peer: PeerId) {
        let remote = self.remotes.get_mut(&peer.node_id).expect("accepted");
        let stream = remote.stream.as_mut().expect("synced");
        while let Some(body) = stream.ahead.remove(&stream.next) {
            stream.next += 1;
            self.out.deliver(peer, stream.gap_during, body);
        }
    }

    /// Queues an ACK of `peer`'s stream to `to`.
    fn send_ack(&mut self, to: SocketAddr, peer: PeerId) {
        let stream = self.remotes[&peer.node_id].stream.as_ref().expect("synced");
        let mut sack = [0u64; SACK_BITS / 64];
        let first = stream.next + 1;
        for &rseq in stream.ahead.range(first..first + SACK_BITS as u64 - 1).map(|(r, _)| r) {
            let i = rseq - stream.next;
            sack[(i / 64) as usize] |= 1 << (i % 64);
        }
        let ack = AckRepr {
            acked: peer,
            cumulative: stream.next - 1,
            sack,
        };
        let header = Header {
            flags: 0,
            node_id: self.config.node_id,
            epoch: self.config.epoch,
            seq: self.next_ack_seq,
            rseq: 0,
            base: 0,
        };
        self.next_ack_seq += 1;
        let mut bytes = [0u8; ACK_MESSAGE_LEN];
        SyncRepr {
            header,
            body: Body::Ack(ack),
        }
        .emit(&mut bytes, &self.key);
        self.out.counters.acks_sent += 1;
        self.out.actions.push_back(SyncAction::SendAck { to, bytes });
    }
}
