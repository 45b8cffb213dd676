//! Connection (session) synchronisation between nodes, sans-IO.
//!
//! A node's [`SyncSender`] turns connection changes into authenticated UDP payloads; every other node's
//! [`SyncReceiver`] checks them and yields [`SyncAction`]s (upsert this connection, delete that one, send this
//! ACK). The transport — a UDP socket on a multicast group such as 224.0.0.81:8848, or unicast to configured
//! peers — is a thin driver elsewhere: it feeds datagrams and time in and sends what comes out.
//!
//! ```text
//!                 queue_update / queue_delete                          poll_action
//!  forwarder ──────────────────────────────▶ SyncSender ──UDP──▶ SyncReceiver ──────────▶ Upsert / Delete
//!                                              ▲                        │
//!                                              └──── handle_ack ◀─ PeerAck / PeerHeard (via the peer's receiver)
//! ```
//!
//! # Reliability
//!
//! - CONNS, DELETES, BULK_REQUEST and BULK_END are *reliable*: numbered by a reliable sequence (`rseq`),
//!   delivered to the application in rseq order, acknowledged (cumulative rseq + a 256-bit SACK bitmap) and
//!   retransmitted until every known peer has acked them. Ordering matters: an upsert retransmitted after a
//!   later delete of the same connection must not resurrect it.
//! - **Window**: at most [`SyncConfig::window`] (256) reliable messages are unacknowledged. When it is full,
//!   new changes wait in the pending queue, where changes to one connection *coalesce* (a newer upsert
//!   replaces a queued one in place, a delete replaces a queued upsert), so a busy connection costs one slot
//!   however often it changes. When the pending queue holds [`SyncConfig::max_pending`] distinct
//!   connections, `queue_*` returns [`QueueError::Full`] (backpressure: the caller drops the change and the
//!   next refresh of that connection carries it).
//! - **RTO**: a message unacked by some live peer is resent after 200 ms, then with exponential backoff up
//!   to 2 s ([`SyncConfig::rto_initial`], [`SyncConfig::rto_max`]). Each transmission has a fresh packet
//!   number (`seq`), so replay protection never confuses a retransmission with a replay.
//! - **Peers** are learned from their heartbeats and acks (delivered to the sender as
//!   [`SyncAction::PeerHeard`] / [`SyncAction::PeerAck`]) and forgotten after [`SyncConfig::peer_timeout`]
//!   (3 s, three heartbeats) of silence, so a dead peer never blocks the window. With no peer known,
//!   messages are sent once and dropped. A peer that restarts (new epoch) starts from nothing.
//! - **Gaps**: every message carries `base`, the oldest rseq its sender can still retransmit. A receiver
//!   behind `base` (it was forgotten while partitioned) skips ahead and reports [`SyncAction::Gap`]; the
//!   caller then asks for a bulk resync.
//! - **Heartbeats** every second carry the sender's stream position; receivers answer them with an ACK, which
//!   keeps each side's view of the other fresh and reveals tail loss.
//!
//! # Security
//!
//! Every message ends with an HMAC-SHA256 over all bytes before it, keyed by the shared `auth_key_file`
//! ([`AuthKey`]). The receiver checks the framing, then the HMAC (constant time) before anything else, then
//! the replay window: per sending node it keeps the current epoch (random per process start), a 1024-packet
//! sliding window of packet numbers per space (data, acks), and the last few retired epochs. A captured
//! message replayed later is dropped and counted in [`SyncCounters::replayed`]; a new epoch means the node
//! restarted. Forged, replayed and malformed messages are counted and never acted on.
//!
//! # Bulk resync
//!
//! A (re)starting node calls [`SyncReceiver::begin_resync`] and queues the returned request id with
//! [`SyncSender::queue_bulk_request`] (sent once some peer is known). Each peer yields
//! [`SyncAction::BulkRequested`]; its caller feeds its whole table through [`SyncSender::queue_update`] and
//! ends with [`SyncSender::queue_bulk_end`]. The requester's [`SyncReceiver::resynced`] turns true when the
//! BULK_END arrives in order, i.e. after every record before it; the node may take traffic from then on.
//!
//! # Driving it
//!
//! ```
//! use std::time::Instant;
//! use xlb_ha::sync::{random_epoch, AuthKey, SyncAction, SyncConfig, SyncReceiver, SyncSender, MAX_MESSAGE_LEN};
//!
//! let key = AuthKey::from_bytes(&[7; 32]).unwrap(); // AuthKey::load(auth_key_file) in production
//! let config = SyncConfig::new(1, random_epoch());
//! let now = Instant::now();
//! let mut tx = SyncSender::new(config.clone(), key.clone(), now).unwrap();
//! let mut rx = SyncReceiver::new(config, key).unwrap();
//! let request = rx.begin_resync();
//! tx.queue_bulk_request(request).unwrap();
//!
//! let mut buf = [0u8; MAX_MESSAGE_LEN];
//! // Send what is due to the group.
//! while let Some(n) = tx.poll_transmit(now, &mut buf) {
//!     let _payload = &buf[..n]; // socket.send_to(payload, 224.0.0.81:8848)
//! }
//! // For each datagram received: `let _ = rx.handle_message(now, from, &datagram);`, then:
//! while let Some(action) = rx.poll_action() {
//!     match action {
//!         SyncAction::Upsert(record) => {
//!             let _parts = record.to_conn_parts(); // map listener + backend to local slots, import
//!         }
//!         SyncAction::Delete(key) => {
//!             let _flow = key.flow_key(); // forget it
//!         }
//!         SyncAction::SendAck { to, bytes } => {
//!             let _ = (to, bytes); // socket.send_to(&bytes, to)
//!         }
//!         SyncAction::PeerHeard { peer } => tx.handle_heartbeat(now, peer),
//!         SyncAction::PeerAck { peer, ack } => tx.handle_ack(now, peer, &ack),
//!         SyncAction::BulkRequested { from, request } => {
//!             // tx.queue_update(..) for every connection, then:
//!             tx.queue_bulk_end(from, request).unwrap();
//!         }
//!         SyncAction::BulkComplete { .. } => assert!(rx.resynced()), // take traffic from now on
//!         SyncAction::Gap { .. } => {} // ask for a bulk resync
//!     }
//! }
//! // Then call poll_transmit again, and sleep until tx.poll_timeout(), a datagram or a change.
//! ```
//!
//! # Modules
//!
//! - [`wire`]: message layout, [`SyncMessage`] view and [`SyncRepr`].
//! - [`record`]: [`ConnRecord`] / [`ConnKey`] and their conversions to and from [`xlb_l4::conn::Conn`].
//! - [`auth`]: the shared key ([`AuthKey`]) signing and verifying every message.
//! - [`sender`], [`receiver`]: the state machines.
//!
//! When a connection is worth syncing is decided by the forwarder, with [`xlb_l4::sync_policy::SyncPolicy`].

pub mod auth;
pub mod receiver;
pub mod record;
pub mod sender;
pub mod wire;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use auth::{AuthKey, KeyError};
pub use receiver::{RecvError, ResyncState, SyncAction, SyncReceiver};
pub use record::{ConnKey, ConnParts, ConnRecord, ListenerId, RecordError};
pub use sender::{QueueError, SyncSender};
pub use wire::{AckRepr, Body, MessageType, SyncMessage, SyncRepr, WireError, MAX_MESSAGE_LEN};

/// One incarnation of a node: its configured id and the epoch it drew at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId {
    /// Node id (config; unique in the sync group, not 0).
    pub node_id: u32,
    /// Random per process start (not 0).
    pub epoch: u32,
}

/// Settings shared by a node's sender and receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// This node's id (unique in the group, not 0).
    pub node_id: u32,
    /// This incarnation's epoch (not 0): [`random_epoch`] at process start.
    pub epoch: u32,
    /// Most unacknowledged reliable messages (1 ..= 256); also the receiver's reordering window.
    pub window: usize,
    /// First retransmission timeout.
    pub rto_initial: Duration,
    /// Largest retransmission timeout (the backoff doubles up to it).
    pub rto_max: Duration,
    /// Interval between heartbeats.
    pub heartbeat_interval: Duration,
    /// A peer silent this long is forgotten (no longer waited for).
    pub peer_timeout: Duration,
    /// Most queued changes not yet in a message (distinct connections, after coalescing).
    pub max_pending: usize,
    /// Most sending nodes the receiver tracks.
    pub max_nodes: usize,
}

impl SyncConfig {
    /// Defaults for node `node_id` in incarnation `epoch`.
    pub fn new(node_id: u32, epoch: u32) -> SyncConfig {
        SyncConfig {
            node_id,
            epoch,
            window: 256,
            rto_initial: Duration::from_millis(200),
            rto_max: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(3),
            max_pending: 1 << 18,
            max_nodes: 64,
        }
    }

    /// Checks every field; names the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        let err = |field: &str, why: &str| Err(format!("ha.sync.{field}: {why}"));
        if self.node_id == 0 {
            return err("node_id", "must not be 0");
        }
        if self.epoch == 0 {
            return err("epoch", "must not be 0");
        }
        if self.window == 0 || self.window > wire::SACK_BITS {
            return err("window", "must be 1 ..= 256 messages");
        }
        if self.rto_initial.is_zero() || self.rto_max < self.rto_initial {
            return err("rto", "initial must be positive and not above the maximum");
        }
        if self.heartbeat_interval.is_zero() {
            return err("heartbeat_interval", "must be positive");
        }
        if self.peer_timeout <= self.heartbeat_interval {
            return err("peer_timeout", "must exceed the heartbeat interval");
        }
        if self.max_pending == 0 {
            return err("max_pending", "must be positive");
        }
        if self.max_nodes == 0 {
            return err("max_nodes", "must be positive");
        }
        Ok(())
    }

    /// This incarnation.
    pub fn me(&self) -> PeerId {
        PeerId {
            node_id: self.node_id,
            epoch: self.epoch,
        }
    }
}

/// What sync did, for stats. The sender and the receiver each fill their own fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounters {
    /// Receiver: datagrams offered.
    pub received: u64,
    /// Receiver: dropped for bad framing or an invalid field (including authenticated ones).
    pub malformed: u64,
    /// Receiver: dropped for a bad HMAC.
    pub forged: u64,
    /// Receiver: dropped as replays (packet number seen or too old, or a retired epoch).
    pub replayed: u64,
    /// Receiver: our own messages looped back by multicast, ignored.
    pub looped: u64,
    /// Receiver: dropped because [`SyncConfig::max_nodes`] senders are already tracked.
    pub too_many_nodes: u64,
    /// Receiver: new epochs of known nodes (restarts).
    pub restarts: u64,
    /// Receiver: upserts yielded.
    pub upserts: u64,
    /// Receiver: deletes yielded.
    pub deletes: u64,
    /// Receiver: reliable messages received again (already delivered or buffered); re-acked.
    pub duplicates: u64,
    /// Receiver: reliable messages beyond the reordering window, dropped (the sender resends them).
    pub out_of_window: u64,
    /// Receiver: reliable messages skipped because their sender could no longer retransmit them.
    pub lost: u64,
    /// Receiver: ACKs sent.
    pub acks_sent: u64,
    /// Receiver: ACKs addressed to another node or incarnation, ignored.
    pub foreign_acks: u64,
    /// Sender: messages sent (first transmissions, retransmissions and heartbeats).
    pub sent: u64,
    /// Sender: retransmissions.
    pub retransmits: u64,
    /// Sender: heartbeats sent.
    pub heartbeats: u64,
    /// Sender: records and keys put in messages (first transmissions).
    pub entries_sent: u64,
    /// Sender: changes merged into a queued change of the same connection.
    pub coalesced: u64,
    /// Sender: changes refused because the pending queue was full.
    pub queue_full: u64,
    /// Sender: changes refused because a field was invalid.
    pub invalid: u64,
    /// Sender: ACKs handled.
    pub acks_received: u64,
    /// Sender: ACKs for sequence numbers never sent, ignored.
    pub bad_acks: u64,
    /// Sender: peers forgotten after `peer_timeout` of silence.
    pub peers_forgotten: u64,
}

/// A random, non-zero epoch for this process start (from the standard library's randomly keyed hasher, the
/// time and the process id: unpredictable enough to tell incarnations apart; not a secret).
pub fn random_epoch() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    let v = h.finish();
    ((v >> 32) as u32 ^ v as u32).max(1)
}
