//! The per-worker connection table: fixed capacity, O(1) lookup by either direction, expiry by a timer wheel.
//!
//! Entries live in a slab allocated once at the configured capacity. Each connection is indexed under its
//! client-side key (client → VIP) and, for FULLNAT, its server-side key (backend → local address), both in one
//! hash map sized up front. A packet touches one hash lookup and one entry; expiry never scans the table, and
//! runs with a budget that grows with the insert rate (see the forwarder), so it never falls behind.
//!
//! A full table makes room by evicting its oldest closed entries (TIME_WAIT, CLOSE), then its oldest closing
//! ones (FIN_WAIT), before it refuses a new flow ([`ConnTable::evict_oldest`], as conntrack's early drop).
//!
//! [`Conn`] is plain data holding everything needed to keep forwarding, so HA session sync can export and
//! import entries as they are.

pub mod evict;
pub mod state;
pub mod wheel;

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use xlb_stack::wire::EthernetAddress;

use evict::{EvictClass, EvictionLists};
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
    /// Packets seen from the client (HA syncs a session after a threshold).
    pub client_packets: u32,
    /// Sent to the HA peers (so its expiry is announced too). When, and in which state: [`ConnTable::last_sync`].
    pub synced: bool,
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

/// The table is at capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

#[derive(Debug, Clone, Copy)]
struct Entry {
    conn: Conn,
    /// Deadline in ticks.
    expires: u64,
    live: bool,
    /// The eviction list the entry is on (follows its state, see [`ConnTable::touch`]).
    class: EvictClass,
    /// Tick of the last session-sync announcement (meaningful when `conn.synced`).
    synced_tick: u64,
    /// State of the last session-sync announcement (meaningful when `conn.synced`).
    synced_state: ConnState,
}

/// The connection table of one worker.
pub struct ConnTable {
    entries: Vec<Entry>,
    free: Vec<u32>,
    index: HashMap<FlowKey, ConnId, ahash::RandomState>,
    wheel: TimerWheel,
    evict: EvictionLists,
    epoch: Instant,
    timeouts: Timeouts,
    /// Entries inserted so far (expiry sizes its work by the insert rate).
    inserted: u64,
}

impl ConnTable {
    /// A table for `capacity` connections, all memory reserved now.
    pub fn new(capacity: usize, timeouts: Timeouts, now: Instant) -> Self {
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
            },
            expires: 0,
            live: false,
            class: EvictClass::Kept,
            synced_tick: 0,
            synced_state: ConnState::Close,
        };
        ConnTable {
            entries: vec![blank; capacity],
            free: (0..capacity as u32).rev().collect(),
            index: HashMap::with_capacity_and_hasher(capacity * 2, ahash::RandomState::new()),
            wheel: TimerWheel::new(WHEEL_SLOTS, capacity, 0),
            evict: EvictionLists::new(capacity),
            epoch: now,
            timeouts,
            inserted: 0,
        }
    }

    /// Removes a connection now (its flow ended early, a peer announced its end, or it is evicted); its slot is
    /// free at once.
    pub fn remove(&mut self, id: ConnId) -> Conn {
        let entry = &mut self.entries[id as usize];
        debug_assert!(entry.live);
        entry.live = false;
        let (conn, class) = (entry.conn, entry.class);
        self.index.remove(&conn.client_key());
        if let Some(k) = conn.server_key() {
            self.index.remove(&k);
        }
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

    /// Memory reserved for the table: the entry slab, the index (keys, values and control bytes of the hash map
    /// at its current capacity), the free list, the timer wheel and the eviction lists.
    pub fn memory_bytes(&self) -> usize {
        let entries = self.entries.capacity() * std::mem::size_of::<Entry>();
        let index = self.index.capacity() * (std::mem::size_of::<FlowKey>() + std::mem::size_of::<ConnId>() + 1);
        entries
            + index
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

    /// Connections inserted since the table was made.
    pub fn inserted(&self) -> u64 {
        self.inserted
    }

    fn tick(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_millis() / TICK.as_millis()) as u64
    }

    fn ticks(timeout: Duration) -> u64 {
        (timeout.as_millis() / TICK.as_millis()) as u64
    }

    /// The connection a packet with `key` belongs to.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<ConnId> {
        self.index.get(key).copied()
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
        let timeout = self.timeouts.of(conn.state);
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
                    self.index.remove(&k);
                }
                self.wheel.unlink(id);
                self.evict.remove(old.class, id);
                id
            }
            None => {
                let id = self.free.pop().ok_or(TableFull)?;
                self.index.insert(conn.client_key(), id);
                id
            }
        };
        let class = EvictClass::of(conn.state);
        self.entries[id as usize] = Entry {
            conn,
            expires,
            live: true,
            class,
            synced_tick: 0,
            synced_state: conn.state,
        };
        if let Some(k) = conn.server_key() {
            self.index.insert(k, id);
        }
        self.wheel.insert(id, expires);
        self.evict.push(class, id);
        self.inserted += 1;
        Ok(id)
    }

    /// Restarts the connection's timeout from `now` for its current state (O(1): the wheel re-arms lazily) and
    /// moves it to the eviction list of its state.
    #[inline]
    pub fn touch(&mut self, id: ConnId, now: Instant) {
        let tick = self.tick(now);
        let entry = &mut self.entries[id as usize];
        entry.expires = tick + Self::ticks(self.timeouts.of(entry.conn.state));
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
        entry.synced_tick = tick;
        entry.synced_state = entry.conn.state;
    }

    /// What HA peers were last told about the connection (`None`: it was never announced).
    pub fn last_sync(&self, id: ConnId) -> Option<LastSync> {
        let entry = &self.entries[id as usize];
        entry.conn.synced.then(|| LastSync {
            at: self.epoch + Duration::from_millis(entry.synced_tick * TICK.as_millis() as u64),
            state: entry.synced_state,
        })
    }

    /// When the connection expires if not touched again.
    pub fn expires_in(&self, id: ConnId, now: Instant) -> Duration {
        let left = self.entries[id as usize].expires.saturating_sub(self.tick(now));
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
            if entry.expires > tick {
                return Due::Later(entry.expires);
            }
            entry.live = false;
            index.remove(&entry.conn.client_key());
            if let Some(k) = entry.conn.server_key() {
                index.remove(&k);
            }
            evict.remove(entry.class, id);
            on_expired(&entry.conn);
            free.push(id);
            removed += 1;
            Due::Expired
        });
        removed
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
        }
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
