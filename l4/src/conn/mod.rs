//! The per-worker connection table: fixed capacity, O(1) lookup by either direction, expiry by a timer wheel.
//!
//! Entries live in a slab allocated once at the configured capacity, one cache line each. Each connection is
//! indexed under its client-side key (client → VIP) and, for FULLNAT, its server-side key (backend → local
//! address), both in one [`index::Index`] sized up front for twice the capacity: cache-line buckets of short
//! hash tags and entry numbers, the key itself verified against the entry. A packet touches one index line and
//! one entry; expiry never scans the table, and runs with a budget that grows with the insert rate (see the
//! forwarder), so it never falls behind. Slab and index are allocated in huge pages when large ([`huge`]).
//! A batch of packets can hide the memory latency of both: hash every packet and [`ConnTable::prefetch`] its
//! bucket, then [`ConnTable::prefetch_entry`] its entry, then process.
//!
//! A full table makes room by evicting its oldest closed entries (TIME_WAIT, CLOSE), then its oldest closing
//! ones (FIN_WAIT), before it refuses a new flow ([`ConnTable::evict_oldest`], as conntrack's early drop).
//!
//! [`Conn`] is plain data holding everything needed to keep forwarding, so HA session sync can export and
//! import entries as they are.

pub mod evict;
pub mod huge;
pub mod index;
pub mod state;
pub mod wheel;

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use xlb_stack::wire::EthernetAddress;

use crate::sched::hash::hash_5tuple;
use evict::{EvictClass, EvictionLists};
use huge::HugeSlice;
use index::Index;
pub use state::{ConnState, Dir, FinSeen, TcpFlags, Timeouts};
use wheel::{Due, TimerWheel};

/// Granularity of connection timeouts.
pub const TICK: Duration = Duration::from_millis(100);
/// Slots of the timer wheel (covers 409.6 s at 100 ms; longer timeouts are re-armed).
const WHEEL_SLOTS: usize = 4096;

/// Transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Proto {
    /// TCP.
    Tcp = 6,
    /// UDP.
    Udp = 17,
}

impl Proto {
    /// The stack's name for the protocol (service table keys).
    pub fn transport(self) -> xlb_stack::service::Transport {
        match self {
            Proto::Tcp => xlb_stack::service::Transport::Tcp,
            Proto::Udp => xlb_stack::service::Transport::Udp,
        }
    }
}

/// How packets reach the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// Full NAT: client → VIP becomes local IP:port → backend; replies come back through xlb.
    Fullnat,
    /// Direct routing: only the destination MAC is rewritten; the backend holds the VIP and replies directly.
    Dr,
}

/// A lookup key: one direction of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Protocol.
    pub proto: Proto,
    /// Source address and port of the packet.
    pub src: SocketAddrV4,
    /// Destination address and port of the packet.
    pub dst: SocketAddrV4,
}

/// A tracked connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// Protocol.
    pub proto: Proto,
    /// Forwarding method.
    pub forwarding: Forwarding,
    /// The client.
    pub client: SocketAddrV4,
    /// The listener's VIP and port.
    pub vip: SocketAddrV4,
    /// FULLNAT: the local address and port used towards the backend. DR: equal to `client`.
    pub local: SocketAddrV4,
    /// The chosen backend server.
    pub backend: SocketAddrV4,
    /// Listener index (config order).
    pub listener: u16,
    /// Server index within the listener's group.
    pub server: u16,
    /// TCP state (or `Udp`).
    pub state: ConnState,
    /// FINs seen.
    pub fins: FinSeen,
    /// Port the client's packets arrive on; replies leave there ("out where it came in").
    pub client_port: u8,
    /// MAC the client's packets came from (the client or the router before it); replies go to it.
    pub client_mac: EthernetAddress,
    /// Packets seen from the client (HA syncs a session after a threshold). While the SYN proxy awaits the
    /// server's SYN-ACK ([`ProxyPhase::AwaitingServer`]), the client's ISN instead.
    pub client_packets: u32,
    /// Sent to the HA peers (so its expiry is announced too).
    pub synced: bool,
    /// SYN proxy: where the flow's handshake stands and how its sequence numbers are translated.
    pub proxy: ProxyPhase,
    /// SYN proxy: while [`ProxyPhase::AwaitingServer`], the cookie ISN the client got; once
    /// [`ProxyPhase::Translating`], the offset added to server → client sequence numbers (cookie ISN − server
    /// ISN) and taken from client → server acknowledgement numbers.
    pub seq_delta: u32,
    /// Whether the server has answered (UDP: a reply came back). Under pressure, unanswered UDP flows get the
    /// short timeout.
    pub answered: bool,
}

/// Where a connection stands with the SYN proxy ([`crate::forward::synproxy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyPhase {
    /// Not proxied: the client's handshake went to the server.
    #[default]
    None,
    /// The client completed its handshake with xlb (a valid cookie); the server's SYN-ACK is awaited.
    AwaitingServer,
    /// Both handshakes done: sequence numbers are translated by `seq_delta`.
    Translating,
}

/// What HA peers were last told about a connection ([`ConnTable::last_sync`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastSync {
    /// When the announcement was queued (to the table's [`TICK`], rounded down).
    pub at: Instant,
    /// The state it announced.
    pub state: ConnState,
}

impl Conn {
    /// The key of client → VIP packets.
    pub fn client_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.client,
            dst: self.vip,
        }
    }

    /// The key of backend → local packets (FULLNAT only).
    pub fn server_key(&self) -> Option<FlowKey> {
        (self.forwarding == Forwarding::Fullnat).then_some(FlowKey {
            proto: self.proto,
            src: self.backend,
            dst: self.local,
        })
    }
}

/// Index of an entry in the table.
pub type ConnId = u32;

/// The hash of a [`FlowKey`]: [`hash_5tuple`] of its protocol, source and destination, the same value on every
/// worker and node (it also decides which worker owns a flow). Computed once per packet and used for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowHash(u64);

impl FlowHash {
    /// The hash of `key`.
    #[inline]
    pub fn of(key: &FlowKey) -> FlowHash {
        FlowHash(hash_5tuple(key.proto as u8, key.src, key.dst))
    }

    /// The 64-bit value (`hash_5tuple` of the key).
    #[inline]
    pub fn value(self) -> u64 {
        self.0
    }
}

/// Starts loading the cache line holding `*p` (a hint: no effect on results, a no-op off x86-64).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults and has no architectural effect, whatever the address.
    #[allow(unused_unsafe)]
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Index value of an entry's client-side key.
#[inline]
fn client_ref(id: ConnId) -> u32 {
    id << 1
}

/// Index value of an entry's server-side key.
#[inline]
fn server_ref(id: ConnId) -> u32 {
    id << 1 | 1
}

/// The table is at capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

/// A slab entry: one cache line (the index points here; a packet reads and writes only this line).
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct Entry {
    conn: Conn,
    /// Deadline in ticks (u32: 13 years of uptime at 100 ms; kept small so an entry is one cache line).
    expires: u32,
    /// Tick of the last session-sync announcement (meaningful when `conn.synced`).
    synced_tick: u32,
    /// State of the last session-sync announcement (meaningful when `conn.synced`).
    synced_state: ConnState,
    live: bool,
    /// The eviction list the entry is on (follows its state, see [`ConnTable::touch`]).
    class: EvictClass,
}

/// The connection table of one worker.
pub struct ConnTable {
    entries: HugeSlice<Entry>,
    free: Vec<u32>,
    index: Index,
    wheel: TimerWheel,
    evict: EvictionLists,
    epoch: Instant,
    timeouts: Timeouts,
    /// Entries inserted so far (expiry sizes its work by the insert rate).
    inserted: u64,
    /// Whether the table or the local ports are under pressure: half-open TCP and unanswered UDP entries get
    /// the short timeouts.
    pressure: bool,
}

impl ConnTable {
    /// A table for `capacity` connections, all memory reserved now.
    pub fn new(capacity: usize, timeouts: Timeouts, now: Instant) -> Self {
        // A random secret per table: the (public) flow hash does not tell where a key lands in the index.
        let secret = std::hash::BuildHasher::hash_one(&ahash::RandomState::new(), 0u64);
        Self::with_secret(capacity, timeouts, now, secret)
    }

    /// [`ConnTable::new`] with the index's hash secret given (tests).
    fn with_secret(capacity: usize, timeouts: Timeouts, now: Instant, secret: u64) -> Self {
        assert!(capacity < 1 << 31, "connection table capacity {capacity} too large");
        let blank = Entry {
            conn: Conn {
                proto: Proto::Tcp,
                forwarding: Forwarding::Fullnat,
                client: SocketAddrV4::new(0.into(), 0),
                vip: SocketAddrV4::new(0.into(), 0),
                local: SocketAddrV4::new(0.into(), 0),
                backend: SocketAddrV4::new(0.into(), 0),
                listener: 0,
                server: 0,
                state: ConnState::Close,
                fins: FinSeen::default(),
                client_port: 0,
                client_mac: EthernetAddress([0; 6]),
                client_packets: 0,
                synced: false,
                proxy: ProxyPhase::None,
                seq_delta: 0,
                answered: false,
            },
            expires: 0,
            synced_tick: 0,
            synced_state: ConnState::Close,
            live: false,
            class: EvictClass::Kept,
        };
        ConnTable {
            entries: HugeSlice::new(blank, capacity),
            free: (0..capacity as u32).rev().collect(),
            index: Index::new(capacity * 2, secret),
            wheel: TimerWheel::new(WHEEL_SLOTS, capacity, 0),
            evict: EvictionLists::new(capacity),
            epoch: now,
            timeouts,
            inserted: 0,
            pressure: false,
        }
    }

    /// Removes a connection now (its flow ended early, a peer announced its end, or it is evicted); its slot is
    /// free at once.
    pub fn remove(&mut self, id: ConnId) -> Conn {
        let entry = &mut self.entries[id as usize];
        debug_assert!(entry.live);
        entry.live = false;
        let (conn, class) = (entry.conn, entry.class);
        unindex(&mut self.index, id, &conn);
        self.wheel.unlink(id);
        self.evict.remove(class, id);
        self.free.push(id);
        conn
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Whether no connection is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory reserved for the table: the entry slab, the index buckets (both rounded up to whole huge pages
    /// when large), the free list, the timer wheel's links and the eviction lists.
    pub fn memory_bytes(&self) -> usize {
        self.entries.reserved_bytes()
            + self.index.memory_bytes()
            + self.free.capacity() * std::mem::size_of::<u32>()
            + self.wheel.memory_bytes()
            + self.evict.memory_bytes()
    }

    /// Maximum number of connections.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// The configured timeouts.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Puts the table under pressure (or takes it off): from now on, half-open TCP and unanswered UDP entries
    /// that are inserted or touched get the short timeouts.
    pub fn set_pressure(&mut self, on: bool) {
        self.pressure = on;
    }

    /// Whether the table is under pressure ([`ConnTable::set_pressure`]).
    pub fn under_pressure(&self) -> bool {
        self.pressure
    }

    /// How long `conn` lives from now in its current state: its state's timeout, or under pressure the short
    /// one for a half-open TCP or an unanswered UDP flow.
    #[inline]
    pub fn timeout_of(&self, conn: &Conn) -> Duration {
        if self.pressure {
            match conn.state {
                ConnState::SynRecv => return Duration::from_secs(u64::from(self.timeouts.tcp_syn_recv_pressure)),
                ConnState::Udp if !conn.answered => {
                    return Duration::from_secs(u64::from(self.timeouts.udp_unanswered_pressure))
                }
                _ => {}
            }
        }
        self.timeouts.of(conn.state)
    }

    /// Brings the deadlines of the live entries in slots `from..to` (clamped to the capacity) that are short-lived
    /// now ([`ConnTable::is_short_lived`]) forward to `now` plus their short timeout, if that is earlier: when
    /// pressure starts, the half-open and unanswered entries made before it go as soon as those made after.
    /// Returns how many were shortened and where the walk goes on (`None`: done).
    pub fn shorten_slots(&mut self, now: Instant, from: usize, to: usize) -> (usize, Option<usize>) {
        let to = to.min(self.entries.len());
        let tick = self.tick(now);
        let mut shortened = 0;
        for id in from..to {
            let entry = &self.entries[id];
            if !entry.live || !self.is_short_lived(&entry.conn) {
                continue;
            }
            let due = Self::stored(tick + Self::ticks(self.timeout_of(&entry.conn)));
            if due < entry.expires {
                self.entries[id].expires = due;
                // The wheel re-arms lazily only later: an earlier deadline needs the entry moved.
                self.wheel.unlink(id as ConnId);
                self.wheel.insert(id as ConnId, u64::from(due));
                shortened += 1;
            }
        }
        (shortened, (to < self.entries.len()).then_some(to))
    }

    /// Whether `conn` gets a short timeout now ([`ConnTable::timeout_of`]).
    pub fn is_short_lived(&self, conn: &Conn) -> bool {
        self.pressure && (conn.state == ConnState::SynRecv || (conn.state == ConnState::Udp && !conn.answered))
    }

    /// Connections inserted since the table was made.
    pub fn inserted(&self) -> u64 {
        self.inserted
    }

    fn tick(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_millis() / TICK.as_millis()) as u64
    }

    /// A tick as stored in an entry.
    fn stored(tick: u64) -> u32 {
        tick.min(u64::from(u32::MAX)) as u32
    }

    fn ticks(timeout: Duration) -> u64 {
        (timeout.as_millis() / TICK.as_millis()) as u64
    }

    /// The connection a packet with `key` belongs to.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<ConnId> {
        self.lookup_hashed(key, FlowHash::of(key))
    }

    /// [`ConnTable::lookup`] with the key's hash already computed (`hash` must be `FlowHash::of(key)`).
    #[inline]
    pub fn lookup_hashed(&self, key: &FlowKey, hash: FlowHash) -> Option<ConnId> {
        debug_assert_eq!(hash, FlowHash::of(key));
        let entries = &self.entries;
        self.index
            .find(hash.0, |r| {
                let c = &entries[(r >> 1) as usize].conn;
                if r & 1 == 0 {
                    c.client_key() == *key
                } else {
                    c.server_key() == Some(*key)
                }
            })
            .map(|r| r >> 1)
    }

    /// Starts loading the index bucket of a key into the cache (first step of a batch lookup).
    #[inline]
    pub fn prefetch(&self, hash: FlowHash) {
        self.index.prefetch(hash.0);
    }

    /// Starts loading the entries a key's index bucket points to (second step of a batch lookup, once the bucket
    /// is in the cache: reads it).
    #[inline]
    pub fn prefetch_entry(&self, hash: FlowHash) {
        let entries = &self.entries;
        self.index.home_candidates(hash.0, |r| {
            if let Some(e) = entries.get((r >> 1) as usize) {
                prefetch(e);
            }
        });
    }

    /// A connection.
    #[inline]
    pub fn get(&self, id: ConnId) -> &Conn {
        &self.entries[id as usize].conn
    }

    /// A connection, mutable. Call [`ConnTable::touch`] after changing its state.
    #[inline]
    pub fn get_mut(&mut self, id: ConnId) -> &mut Conn {
        &mut self.entries[id as usize].conn
    }

    /// Inserts a connection expiring after the timeout of its state.
    pub fn insert(&mut self, now: Instant, conn: Conn) -> Result<ConnId, TableFull> {
        let timeout = self.timeout_of(&conn);
        self.insert_expiring(now, conn, timeout)
    }

    /// Inserts a connection expiring after `timeout` (an entry synced from a peer keeps its remaining time).
    /// An entry with the same client key is replaced.
    pub fn insert_expiring(&mut self, now: Instant, conn: Conn, timeout: Duration) -> Result<ConnId, TableFull> {
        let expires = self.tick(now) + Self::ticks(timeout);
        let id = match self.lookup(&conn.client_key()) {
            Some(id) => {
                let old = self.entries[id as usize];
                if let Some(k) = old.conn.server_key() {
                    self.index.remove(FlowHash::of(&k).0, server_ref(id));
                }
                self.wheel.unlink(id);
                self.evict.remove(old.class, id);
                id
            }
            None => {
                let id = self.free.pop().ok_or(TableFull)?;
                self.index
                    .insert(FlowHash::of(&conn.client_key()).0, client_ref(id))
                    .expect("the index has a slot for two keys per entry");
                id
            }
        };
        let class = EvictClass::of(conn.state);
        self.entries[id as usize] = Entry {
            conn,
            expires: Self::stored(expires),
            synced_tick: 0,
            synced_state: conn.state,
            live: true,
            class,
        };
        if let Some(k) = conn.server_key() {
            self.index_server_key(id, &k);
        }
        self.wheel.insert(id, expires);
        self.evict.push(class, id);
        self.inserted += 1;
        Ok(id)
    }

    /// Indexes entry `id` under its server-side key `k`. A server key already indexed for another entry is
    /// taken over: it leads to the newest entry (and removing the older entry leaves it alone).
    fn index_server_key(&mut self, id: ConnId, k: &FlowKey) {
        let hash = FlowHash::of(k);
        if let Some(other) = self.lookup_hashed(k, hash) {
            if other != id {
                self.index.remove(hash.0, server_ref(other));
            }
        }
        self.index
            .insert(hash.0, server_ref(id))
            .expect("the index has a slot for two keys per entry");
    }

    /// Restarts the connection's timeout from `now` for its current state (O(1): the wheel re-arms lazily) and
    /// moves it to the eviction list of its state.
    #[inline]
    pub fn touch(&mut self, id: ConnId, now: Instant) {
        let tick = self.tick(now);
        let timeout = self.timeout_of(&self.entries[id as usize].conn);
        let entry = &mut self.entries[id as usize];
        entry.expires = Self::stored(tick + Self::ticks(timeout));
        let class = EvictClass::of(entry.conn.state);
        if class != entry.class {
            let old = std::mem::replace(&mut entry.class, class);
            self.evict.remove(old, id);
            self.evict.push(class, id);
        }
    }

    /// Records that the connection was just queued for session sync in its current state: it is now
    /// [`Conn::synced`], and [`ConnTable::last_sync`] returns `now` and that state.
    pub fn mark_synced(&mut self, id: ConnId, now: Instant) {
        let tick = self.tick(now);
        let entry = &mut self.entries[id as usize];
        entry.conn.synced = true;
        entry.synced_tick = Self::stored(tick);
        entry.synced_state = entry.conn.state;
    }

    /// What HA peers were last told about the connection (`None`: it was never announced).
    pub fn last_sync(&self, id: ConnId) -> Option<LastSync> {
        let entry = &self.entries[id as usize];
        entry.conn.synced.then(|| LastSync {
            at: self.epoch + TICK * entry.synced_tick,
            state: entry.synced_state,
        })
    }

    /// When the connection expires if not touched again.
    pub fn expires_in(&self, id: ConnId, now: Instant) -> Duration {
        let left = u64::from(self.entries[id as usize].expires).saturating_sub(self.tick(now));
        TICK * left as u32
    }

    /// Removes the oldest closed (TIME_WAIT, CLOSE), else the oldest closing (FIN_WAIT) connection to make room
    /// in a full table; returns it with the time it had left, or `None` if no entry is evictable.
    pub fn evict_oldest(&mut self, now: Instant) -> Option<(Conn, Duration)> {
        let (_, id) = self.evict.oldest()?;
        let left = self.expires_in(id, now);
        Some((self.remove(id), left))
    }

    /// Whether expiry is behind: some connection may have passed its deadline without being visited yet.
    pub fn expiry_due(&self, now: Instant) -> bool {
        self.wheel.is_due(self.tick(now))
    }

    /// When the next expiry tick begins (now or earlier when expiry is behind).
    pub fn next_expiry(&self) -> Instant {
        self.epoch + TICK * self.wheel.current() as u32
    }

    /// Expires connections whose deadline passed, at most `budget` visits per call; `on_expired` sees each
    /// removed connection (to release its local port and update counters). Returns the number removed.
    pub fn expire(&mut self, now: Instant, budget: usize, mut on_expired: impl FnMut(&Conn)) -> usize {
        let now_tick = self.tick(now);
        let mut removed = 0;
        let ConnTable {
            entries,
            index,
            free,
            evict,
            wheel,
            ..
        } = self;
        wheel.advance(now_tick, budget, |id, tick| {
            let entry = &mut entries[id as usize];
            debug_assert!(entry.live, "only live entries are in the wheel");
            if u64::from(entry.expires) > tick {
                return Due::Later(u64::from(entry.expires));
            }
            entry.live = false;
            unindex(index, id, &entry.conn);
            evict.remove(entry.class, id);
            on_expired(&entry.conn);
            free.push(id);
            removed += 1;
            Due::Expired
        });
        removed
    }

    /// The connection in slot `id`, if the slot holds a live one (table walks go slot by slot up to
    /// [`ConnTable::capacity`]).
    pub fn live(&self, id: ConnId) -> Option<&Conn> {
        self.entries.get(id as usize).filter(|e| e.live).map(|e| &e.conn)
    }

    /// Every live connection (for dumps and HA export).
    pub fn iter(&self) -> impl Iterator<Item = &Conn> {
        self.entries.iter().filter(|e| e.live).map(|e| &e.conn)
    }

    /// Every live connection with its id.
    pub fn iter_ids(&self) -> impl Iterator<Item = (ConnId, &Conn)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.live)
            .map(|(i, e)| (i as ConnId, &e.conn))
    }
}

/// Removes both keys of entry `id` holding `conn` from the index (those that still lead to it).
fn unindex(index: &mut Index, id: ConnId, conn: &Conn) {
    index.remove(FlowHash::of(&conn.client_key()).0, client_ref(id));
    if let Some(k) = conn.server_key() {
        index.remove(FlowHash::of(&k).0, server_ref(id));
    }
}

#[cfg(test)]
mod tests;
