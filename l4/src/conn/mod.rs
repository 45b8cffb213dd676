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
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn conn(client_port: u16, lport: u16, forwarding: Forwarding) -> Conn {
        Conn {
            proto: Proto::Tcp,
            forwarding,
            client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), client_port),
            vip: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80),
            local: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 10), lport),
            backend: SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 2), 8080),
            listener: 0,
            server: 0,
            state: ConnState::SynRecv,
            fins: FinSeen::default(),
            client_port: 0,
            client_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            client_packets: 1,
            synced: false,
            proxy: ProxyPhase::None,
            seq_delta: 0,
            answered: false,
        }
    }

    #[test]
    fn entries_are_one_cache_line() {
        assert_eq!(std::mem::size_of::<Entry>(), 64);
        let t = ConnTable::new(100, Timeouts::default(), Instant::now());
        assert_eq!(t.entries.as_ptr() as usize % 64, 0);
        // 100 entries, 200 keys in 40 buckets, the free list, the wheel (4096 heads, two links per entry) and the
        // eviction lists (two links per entry).
        assert_eq!(
            t.memory_bytes(),
            100 * 64 + 40 * 64 + 100 * 4 + (4096 + 200) * 4 + 200 * 4
        );
    }

    #[test]
    fn lookup_by_both_directions() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(16, Timeouts::default(), t0);
        let c = conn(40000, 5000, Forwarding::Fullnat);
        let id = t.insert(t0, c).unwrap();
        assert_eq!(t.lookup(&c.client_key()), Some(id));
        assert_eq!(t.lookup(&c.server_key().unwrap()), Some(id));
        let dr = conn(40001, 0, Forwarding::Dr);
        let id2 = t.insert(t0, dr).unwrap();
        assert_eq!(t.lookup(&dr.client_key()), Some(id2));
        assert_eq!(dr.server_key(), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn expires_by_state_timeout_and_touch_extends() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(16, Timeouts::default(), t0);
        let c = conn(40000, 5000, Forwarding::Fullnat);
        let id = t.insert(t0, c).unwrap();
        // SynRecv: 60 s.
        assert_eq!(t.expire(t0 + Duration::from_secs(59), usize::MAX, |_| {}), 0);
        t.get_mut(id).state = ConnState::Established;
        t.touch(id, t0 + Duration::from_secs(59));
        assert_eq!(
            t.expire(t0 + Duration::from_secs(61), usize::MAX, |_| {}),
            0,
            "touched: now 900 s"
        );
        assert_eq!(t.expire(t0 + Duration::from_secs(958), usize::MAX, |_| {}), 0);
        let mut seen = vec![];
        assert_eq!(
            t.expire(t0 + Duration::from_secs(960), usize::MAX, |c| seen.push(*c)),
            1
        );
        assert_eq!(seen[0].client, c.client);
        assert!(t.is_empty());
        assert_eq!(t.lookup(&c.client_key()), None);
        assert_eq!(t.lookup(&c.server_key().unwrap()), None);
    }

    #[test]
    fn last_sync_is_when_and_in_which_state_it_was_marked() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(4, Timeouts::default(), t0);
        let id = t.insert(t0, conn(40000, 5000, Forwarding::Fullnat)).unwrap();
        assert_eq!(t.last_sync(id), None);
        t.get_mut(id).state = ConnState::Established;
        t.mark_synced(id, t0 + Duration::from_millis(2550));
        assert!(t.get(id).synced);
        let expected = LastSync {
            at: t0 + Duration::from_millis(2500),
            state: ConnState::Established,
        };
        assert_eq!(t.last_sync(id), Some(expected), "to the tick, rounded down");
        // A later state change is not what the peers were told.
        t.get_mut(id).state = ConnState::FinWait;
        assert_eq!(t.last_sync(id), Some(expected));
    }

    #[test]
    fn removed_entries_vanish_at_once_and_their_slot_is_free_at_once() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(1, Timeouts::default(), t0);
        let c = conn(1, 1, Forwarding::Fullnat);
        let id = t.insert(t0, c).unwrap();
        t.remove(id);
        assert_eq!(t.lookup(&c.client_key()), None);
        assert_eq!(t.lookup(&c.server_key().unwrap()), None);
        assert_eq!((t.len(), t.iter().count()), (0, 0));
        let c2 = conn(2, 2, Forwarding::Fullnat);
        assert!(t.insert(t0, c2).is_ok(), "the slot left the wheel with the entry");
        let mut seen = vec![];
        assert_eq!(
            t.expire(t0 + Duration::from_secs(61), usize::MAX, |c| seen.push(c.client)),
            1
        );
        assert_eq!(seen, vec![c2.client], "no callback for the removed entry");
    }

    #[test]
    fn a_full_table_evicts_closed_then_closing_entries_oldest_first_never_live_ones() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(4, Timeouts::default(), t0);
        let ids: Vec<ConnId> = (0..4)
            .map(|i| t.insert(t0, conn(i, i, Forwarding::Fullnat)).unwrap())
            .collect();
        let set = |t: &mut ConnTable, id: ConnId, state: ConnState, at: u64| {
            t.get_mut(id).state = state;
            t.touch(id, t0 + Duration::from_secs(at));
        };
        set(&mut t, ids[0], ConnState::Established, 1);
        set(&mut t, ids[1], ConnState::FinWait, 2);
        set(&mut t, ids[2], ConnState::TimeWait, 3);
        set(&mut t, ids[3], ConnState::Close, 4);
        let now = t0 + Duration::from_secs(5);
        assert_eq!(t.insert(now, conn(9, 9, Forwarding::Fullnat)), Err(TableFull));
        let order: Vec<(u16, Duration)> = std::iter::from_fn(|| t.evict_oldest(now))
            .map(|(c, left)| (c.client.port(), left))
            .collect();
        // TIME_WAIT (120 s from 3 s) and CLOSE (10 s from 4 s) by when they entered, then FIN_WAIT.
        assert_eq!(
            order,
            vec![
                (2, Duration::from_secs(118)),
                (3, Duration::from_secs(9)),
                (1, Duration::from_secs(117))
            ]
        );
        assert_eq!(t.len(), 1, "the established entry stays");
        assert!(t.lookup(&conn(0, 0, Forwarding::Fullnat).client_key()).is_some());
        assert!(t.insert(now, conn(9, 9, Forwarding::Fullnat)).is_ok());
    }

    #[test]
    fn an_entry_reopened_by_a_syn_is_no_longer_evictable() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(1, Timeouts::default(), t0);
        let id = t.insert(t0, conn(1, 1, Forwarding::Fullnat)).unwrap();
        t.get_mut(id).state = ConnState::TimeWait;
        t.touch(id, t0);
        t.get_mut(id).state = ConnState::SynRecv;
        t.touch(id, t0);
        assert_eq!(t.evict_oldest(t0), None);
    }

    #[test]
    fn a_replaced_entry_expires_at_its_new_deadline_even_if_earlier() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(2, Timeouts::default(), t0);
        let mut c = conn(1, 1, Forwarding::Fullnat);
        c.state = ConnState::Established;
        t.insert(t0, c).unwrap(); // 900 s
        c.state = ConnState::SynRecv;
        t.insert_expiring(t0, c, Duration::from_secs(5)).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.expire(t0 + Duration::from_secs(5), usize::MAX, |_| {}), 1);
    }

    #[test]
    fn full_table_refuses_and_frees_after_expiry() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(2, Timeouts::default(), t0);
        t.insert(t0, conn(1, 1, Forwarding::Fullnat)).unwrap();
        t.insert(t0, conn(2, 2, Forwarding::Fullnat)).unwrap();
        assert_eq!(t.insert(t0, conn(3, 3, Forwarding::Fullnat)), Err(TableFull));
        t.expire(t0 + Duration::from_secs(61), usize::MAX, |_| {});
        assert!(t
            .insert(t0 + Duration::from_secs(61), conn(3, 3, Forwarding::Fullnat))
            .is_ok());
    }

    #[test]
    fn many_connections_expire_without_loss_under_a_budget() {
        let t0 = Instant::now();
        let n = 10_000;
        let mut t = ConnTable::new(n, Timeouts::default(), t0);
        for i in 0..n as u16 {
            t.insert(
                t0 + Duration::from_millis(u64::from(i)),
                conn(i, i, Forwarding::Fullnat),
            )
            .unwrap();
        }
        let mut removed = 0;
        let mut now = t0 + Duration::from_secs(70);
        for _ in 0..100 {
            removed += t.expire(now, 500, |_| {});
            now += Duration::from_millis(10);
        }
        assert_eq!(removed, n);
        assert!(t.is_empty());
    }

    #[test]
    fn random_inserts_replacements_and_removals_match_a_hashmap() {
        use std::collections::HashMap;
        let t0 = Instant::now();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rand = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let capacity = 150;
        let mut t = ConnTable::new(capacity, Timeouts::default(), t0);
        // key → id, with the hash map's semantics: a server key taken by a newer entry leads to the newer one.
        let mut model: HashMap<FlowKey, ConnId> = HashMap::new();
        let mut live: HashMap<ConnId, Conn> = HashMap::new();
        let mut all_keys = vec![];
        let (mut refused, mut expired_total) = (0, 0);
        for round in 0..20_000u64 {
            // 100 ms per round: entries (60 s in SynRecv) expire and removed slots return during the run.
            let now = t0 + Duration::from_millis(100 * round);
            if rand(10) < 9 {
                // Few client ports and local ports: replacements and shared server keys happen.
                let forwarding = if rand(4) == 0 {
                    Forwarding::Dr
                } else {
                    Forwarding::Fullnat
                };
                let c = conn(rand(4000) as u16, rand(600) as u16, forwarding);
                match t.insert(now, c) {
                    Ok(id) => {
                        if let Some(old) = live.insert(id, c) {
                            assert_eq!(old.client_key(), c.client_key(), "replaced in place");
                            if let Some(k) = old.server_key() {
                                if model.get(&k) == Some(&id) {
                                    model.remove(&k);
                                }
                            }
                        }
                        model.insert(c.client_key(), id);
                        all_keys.push(c.client_key());
                        if let Some(k) = c.server_key() {
                            model.insert(k, id);
                            all_keys.push(k);
                        }
                    }
                    // Full: every slot live or removed and still in the wheel.
                    Err(TableFull) => {
                        assert!(t.free.is_empty(), "refused only when full");
                        refused += 1;
                    }
                }
            } else if let Some(&id) = live.keys().nth(rand(live.len().max(1) as u64) as usize) {
                let c = t.remove(id);
                assert_eq!(live.remove(&id), Some(c));
                model.retain(|_, v| *v != id);
            }
            if round % 500 == 0 || round == 19_999 {
                let mut expired = vec![];
                t.expire(now, usize::MAX, |c| expired.push(*c));
                expired_total += expired.len();
                for c in expired {
                    let id = model[&c.client_key()];
                    assert_eq!(live.remove(&id), Some(c));
                    model.retain(|_, v| *v != id);
                }
                assert_eq!(t.len(), live.len());
                for k in &all_keys {
                    assert_eq!(t.lookup(k), model.get(k).copied(), "round {round}: {k:?}");
                }
            }
        }
        // Everything expires: no key leads anywhere.
        let n = t.expire(t0 + Duration::from_secs(100_000), usize::MAX, |_| {});
        assert_eq!(n, live.len());
        assert!(
            refused > 0 && expired_total > 0,
            "full {refused} times, {expired_total} expired"
        );
        assert!(t.is_empty());
        assert!(all_keys.iter().all(|k| t.lookup(k).is_none()));
        assert!(t.index.is_empty());
    }

    #[test]
    fn expiry_with_a_budget_scaled_to_inserts_keeps_up_with_any_insert_rate() {
        // 100k short-lived entries per second for 6 s of 100 ms turns (close timeout 1 s), with the budget the
        // forwarder uses: a base plus twice the inserts since the last call. The table never holds more than
        // about one timeout's worth of entries, where a fixed budget fills it.
        let t0 = Instant::now();
        let timeouts = Timeouts {
            tcp_close: 1,
            ..Timeouts::default()
        };
        let mut t = ConnTable::new(150_000, timeouts, t0);
        let (mut port, mut last_inserted, mut peak) = (0u32, 0u64, 0usize);
        for turn in 0..60u64 {
            let now = t0 + TICK * turn as u32;
            let budget = 256 + 2 * (t.inserted() - last_inserted) as usize;
            last_inserted = t.inserted();
            t.expire(now, budget, |_| {});
            for _ in 0..10_000 {
                let mut c = conn((port % 65_536) as u16, (port / 65_536) as u16, Forwarding::Dr);
                c.client = SocketAddrV4::new(Ipv4Addr::from(0xC612_0000 + port), c.client.port());
                c.state = ConnState::Close;
                t.insert(now, c).expect("expiry keeps room");
                port += 1;
            }
            peak = peak.max(t.len());
        }
        // Entries live 10 ticks after the tick they were inserted in: at most 11 turns' worth, plus the turn
        // whose expiry has not run yet.
        assert!(peak <= 12 * 10_000, "peak {peak}: expiry fell behind");
        // A fixed budget of 4096 visits per turn (milestone 1) could not keep up.
        let mut fixed = ConnTable::new(150_000, t.timeouts().clone(), t0);
        let full = (0..60u64).any(|turn| {
            let now = t0 + TICK * turn as u32;
            fixed.expire(now, 4096, |_| {});
            (0..10_000u32).any(|i| {
                let mut c = conn(0, 0, Forwarding::Dr);
                c.client = SocketAddrV4::new(Ipv4Addr::from(0xC612_0000 + turn as u32 * 10_000 + i), 1);
                c.state = ConnState::Close;
                fixed.insert(now, c).is_err()
            })
        });
        assert!(full, "the comparison shows what the scaled budget fixes");
    }
}
