//! Local ports of one worker, shared by its stages: FULLNAT flows (L4) and upstream connections (L7) take
//! their source ports from the same pools, accounted per (local IP, server), chosen as Linux SNAT chooses them.
//!
//! A connection from the appliance is `local IP:port → server IP:port` at the server, so a local port only has
//! to be unique per (local IP, server): every server gets the whole port range of every local IP. A FULLNAT
//! flow's port is the client's own source port when that is free on the pair (moved into this worker's share,
//! see below), else the next free one after it. So a client that reuses a 4-tuple (as every kernel does once
//! it has cycled its ephemeral ports) reaches the server on the same tuple, with its own monotonic ISN and
//! timestamps — which the server's TIME_WAIT accepts (RFC 6191, PAWS) — and never on a tuple another client
//! left in TIME_WAIT there. An upstream connection has no client port: it takes the next free port after the
//! last one upstream connections took ([`LocalPorts::take_upstream`]), so tuples rotate through the range.
//!
//! A FULLNAT port is held as long as its connection entry lives: the entry's TIME_WAIT/CLOSE timeouts (120 s)
//! outlast the server's own TIME_WAIT (Linux: 60 s), so a port freed by expiry can go to anyone. A port whose
//! entry ends early while the server may still be in TIME_WAIT (evicted from a full table, or a client's new SYN
//! rescheduled to another server) is held in quarantine for the rest of that time instead — for everyone but
//! the flow that had it: the same client flow coming back to that server takes its tuple over at once. An
//! upstream connection's port is given back when the in-stack connection is gone; if the server may hold the
//! tuple in TIME_WAIT (it closed first), the stage quarantines it for that time, for no one.
//!
//! Which stage holds a port: the pools mark the ports upstream connections hold. The first stage (L4)
//! registers the range of every local IP in the service table ([`LOCAL_PORTS_SLOT`]) and looks a reply up in
//! its own connection table first; only what it does not know is checked here
//! ([`LocalPorts::is_upstream`]) and offered to the next stage, so FULLNAT replies pay nothing for the sharing.
//!
//! Worker `w` of `n` owns the ports `p` with `p % n == w` ([`local_port_owner`]), so a server's reply to
//! `LIP:p` can be handed to the worker holding the connection without any shared state.
//!
//! Each (local IP, server) pair gets its pool (two bitmaps of the range, ~12 KiB for the default range) the
//! first time a connection goes that way; pools are never freed, and at most [`MAX_POOLS`] exist per worker.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

/// The service slot (see [`crate::service`]) of the local-port range of every local IP: the stages that take
/// ports from [`LocalPorts`] use this slot for the replies to them.
pub const LOCAL_PORTS_SLOT: u32 = u32::MAX;

/// The worker that hands out (and so owns the connections of) local port `port`, among `workers`.
#[inline]
pub fn local_port_owner(port: u16, workers: usize) -> usize {
    usize::from(port) % workers.max(1)
}

/// Pools per worker at most (each is a bitmap of the port range).
pub const MAX_POOLS: usize = 8192;
/// Ports held in quarantine at most per worker unless set otherwise ([`LocalPorts::with_quarantine`]); beyond
/// it the oldest is released early (counted).
const QUARANTINE_CAPACITY: usize = 16_384;

/// Why no port could be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPort {
    /// The address is not one of the appliance's local IPs.
    NotLocal,
    /// Every port of the pair is in use (or in quarantine).
    Exhausted,
    /// The pair would need a new pool and [`MAX_POOLS`] exist.
    TooManyPools,
}

/// One (local IP, server) pair's ports.
#[derive(Debug)]
struct Pool {
    local_ip: Ipv4Addr,
    server: SocketAddrV4,
    /// Bit `i`: port `min + i` is in use (by a connection or in quarantine).
    taken: Box<[u64]>,
    /// Bit `i`: port `min + i` is held by an upstream connection (the next stage's).
    upstream: Box<[u64]>,
    in_use: u32,
}

/// A quarantined port in release order.
#[derive(Debug, Clone, Copy)]
struct Quarantined {
    pool: u32,
    port: u16,
    until: Instant,
    /// Matches [`Holder::seq`] while the port is still held for its flow (not taken over since).
    seq: u32,
}

/// The flow a quarantined port is held for.
#[derive(Debug, Clone, Copy)]
struct Holder {
    flow: FlowIds,
    seq: u32,
}

/// A client flow as its tuple at the server depends on it: the client's address and port and the VIP:port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowIds {
    /// The client.
    pub client: SocketAddrV4,
    /// The listener's address.
    pub vip: SocketAddrV4,
}

impl FlowIds {
    /// No client flow: what an upstream connection's quarantined port is held for (no one takes it over).
    pub const NONE: FlowIds = FlowIds {
        client: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        vip: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
    };
}

/// How full the pools are (for stats and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortOccupancy {
    /// (local IP, server) pools in use.
    pub pools: u64,
    /// Ports each pool has on this worker.
    pub per_pool: u64,
    /// Ports in use over all pools (including quarantined ones).
    pub in_use: u64,
    /// Ports in use in the fullest pool.
    pub busiest: u64,
    /// Ports held in quarantine.
    pub quarantined: u64,
    /// Ports released from quarantine early because it was full.
    pub quarantine_overflow: u64,
}

/// Local port pools of one worker.
#[derive(Debug)]
pub struct LocalPorts {
    /// Where the next upstream port search starts (an index into the range). It starts at a random place: a
    /// process that started over at the range's first ports would reuse the tuples of the previous process's
    /// first connections, which the servers may still hold open (an idle keep-alive connection nobody closed),
    /// and each such SYN would get a challenge ACK and wait a retransmission (1 s) before it is answered.
    upstream_cursor: usize,
    pools: HashMap<(Ipv4Addr, SocketAddrV4), u32, ahash::RandomState>,
    sets: Vec<Pool>,
    local_ips: Vec<Ipv4Addr>,
    /// Bit `i` of word `i / 64`: port `min + i` belongs to this worker.
    mine: Box<[u64]>,
    per_pool: u32,
    min: u16,
    max: u16,
    worker: u16,
    workers: u16,
    quarantine: VecDeque<Quarantined>,
    quarantine_capacity: usize,
    /// Quarantined ports by (pool, port): the flow each is held for.
    holders: HashMap<(u32, u16), Holder, ahash::RandomState>,
    next_seq: u32,
    quarantine_overflow: u64,
}

/// A random index below `n` (different in every process: `RandomState` keys are random).
fn random_index(n: usize) -> usize {
    use std::hash::BuildHasher;
    (std::collections::hash_map::RandomState::new().hash_one(n) % n.max(1) as u64) as usize
}

impl LocalPorts {
    /// Pools for `local_ips`, with the ports in `min..=max` that belong to `worker` of `workers`.
    pub fn new(local_ips: &[Ipv4Addr], min: u16, max: u16, worker: usize, workers: usize) -> Self {
        let (worker, workers) = (worker as u16, workers.max(1) as u16);
        let span = usize::from(max - min) + 1;
        let mut mine = vec![0u64; span.div_ceil(64)].into_boxed_slice();
        let mut per_pool = 0;
        for i in 0..span {
            if local_port_owner(min + i as u16, usize::from(workers)) == usize::from(worker) {
                mine[i / 64] |= 1 << (i % 64);
                per_pool += 1;
            }
        }
        LocalPorts {
            upstream_cursor: random_index(span),
            pools: HashMap::default(),
            sets: Vec::new(),
            local_ips: local_ips.to_vec(),
            mine,
            per_pool,
            min,
            max,
            worker,
            workers,
            quarantine: VecDeque::with_capacity(QUARANTINE_CAPACITY),
            quarantine_capacity: QUARANTINE_CAPACITY,
            holders: HashMap::with_capacity_and_hasher(QUARANTINE_CAPACITY, ahash::RandomState::new()),
            next_seq: 0,
            quarantine_overflow: 0,
        }
    }

    /// No pools: no address is local (a stack without stages that take ports).
    pub fn none() -> Self {
        LocalPorts::new(&[], 1, 1, 0, 1)
    }

    /// Makes `ip` a local IP (one whose ports can be taken), if it is not one yet.
    pub fn add_local_ip(&mut self, ip: Ipv4Addr) {
        if !self.local_ips.contains(&ip) {
            self.local_ips.push(ip);
        }
    }

    /// The local IPs.
    pub fn local_ips(&self) -> &[Ipv4Addr] {
        &self.local_ips
    }

    /// Room for `capacity` quarantined ports, reserved now. Each early-ended connection may hold one (as many
    /// as the connection table has entries, so that is the size to give).
    pub fn with_quarantine(mut self, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        self.quarantine = VecDeque::with_capacity(capacity);
        self.holders = HashMap::with_capacity_and_hasher(capacity, ahash::RandomState::new());
        self.quarantine_capacity = capacity;
        self
    }

    fn pool(&self, local_ip: Ipv4Addr, server: SocketAddrV4) -> Option<u32> {
        self.pools.get(&(local_ip, server)).copied()
    }

    fn pool_or_new(&mut self, local_ip: Ipv4Addr, server: SocketAddrV4) -> Result<u32, NoPort> {
        if let Some(p) = self.pool(local_ip, server) {
            return Ok(p);
        }
        if !self.local_ips.contains(&local_ip) {
            return Err(NoPort::NotLocal);
        }
        if self.sets.len() >= MAX_POOLS {
            return Err(NoPort::TooManyPools);
        }
        let id = self.sets.len() as u32;
        self.sets.push(Pool {
            local_ip,
            server,
            taken: vec![0; self.mine.len()].into_boxed_slice(),
            upstream: vec![0; self.mine.len()].into_boxed_slice(),
            in_use: 0,
        });
        self.pools.insert((local_ip, server), id);
        Ok(id)
    }

    /// The port a client's source port maps to on this worker: the port itself when it is in range and ours,
    /// else the nearest of ours (ports out of range wrap into it). The same client port always maps the same.
    fn preferred(&self, client_port: u16) -> usize {
        let span = usize::from(self.max - self.min) + 1;
        let p = if self.in_range(client_port) {
            usize::from(client_port)
        } else {
            usize::from(self.min) + usize::from(client_port) % span
        };
        let n = usize::from(self.workers);
        let mut q = p - p % n + usize::from(self.worker);
        if q > usize::from(self.max) {
            q = q.saturating_sub(n);
        }
        if q < usize::from(self.min) {
            q += n;
        }
        q.clamp(usize::from(self.min), usize::from(self.max)) - usize::from(self.min)
    }

    /// Takes a port on `local_ip` towards `server` for the client flow `flow`: the client's own port if free
    /// (or quarantined for this very flow), else the next free one.
    pub fn take(&mut self, local_ip: Ipv4Addr, server: SocketAddrV4, flow: FlowIds) -> Result<u16, NoPort> {
        let pool = self.pool_or_new(local_ip, server)?;
        let start = self.preferred(flow.client.port());
        let preferred = self.min + start as u16;
        if self.holders.get(&(pool, preferred)).is_some_and(|h| h.flow == flow) {
            // The flow that left this tuple in TIME_WAIT comes back: it takes it over (still marked taken).
            self.holders.remove(&(pool, preferred));
            return Ok(preferred);
        }
        self.take_from(pool, start).ok_or(NoPort::Exhausted)
    }

    /// Takes the first free port of this worker in `pool` at or after index `start`, wrapping round once.
    fn take_from(&mut self, pool: u32, start: usize) -> Option<u16> {
        let words = self.mine.len();
        let set = &mut self.sets[pool as usize];
        // Word by word from the start, wrapping round once (the first word again for its low bits).
        for step in 0..=words {
            let w = (start / 64 + step) % words;
            let mut free = self.mine[w] & !set.taken[w];
            if step == 0 {
                free &= u64::MAX << (start % 64);
            }
            if free != 0 {
                let i = w * 64 + free.trailing_zeros() as usize;
                set.taken[w] |= 1 << (i % 64);
                set.in_use += 1;
                return Some(self.min + i as u16);
            }
        }
        None
    }

    /// Takes a port on `local_ip` towards `server` for an upstream connection (the next stage's): the next free
    /// one after the last port taken this way, so tuples rotate through the range. Replies to it are offered to
    /// the next stage ([`LocalPorts::is_upstream`]) until [`LocalPorts::give_back_upstream`].
    pub fn take_upstream(&mut self, local_ip: Ipv4Addr, server: SocketAddrV4) -> Result<u16, NoPort> {
        let pool = self.pool_or_new(local_ip, server)?;
        let port = self.take_from(pool, self.upstream_cursor).ok_or(NoPort::Exhausted)?;
        let i = usize::from(port - self.min);
        self.sets[pool as usize].upstream[i / 64] |= 1 << (i % 64);
        let span = usize::from(self.max - self.min) + 1;
        self.upstream_cursor = (i + 1) % span;
        Ok(port)
    }

    /// Whether an upstream connection holds `port` on `local_ip` towards `server` (a reply to it is the next
    /// stage's).
    pub fn is_upstream(&self, local_ip: Ipv4Addr, server: SocketAddrV4, port: u16) -> bool {
        if !self.in_range(port) {
            return false;
        }
        let i = usize::from(port - self.min);
        self.pool(local_ip, server)
            .is_some_and(|p| self.sets[p as usize].upstream[i / 64] & (1 << (i % 64)) != 0)
    }

    /// Returns an upstream connection's port: free now (`None`: the server holds no TIME_WAIT for it), or
    /// quarantined until `Some(until)` for no one (the server closed first and may hold the tuple until then).
    pub fn give_back_upstream(&mut self, local_ip: Ipv4Addr, server: SocketAddrV4, port: u16, until: Option<Instant>) {
        if !self.is_upstream(local_ip, server, port) {
            return;
        }
        let Some(pool) = self.pool(local_ip, server) else {
            return;
        };
        let i = usize::from(port - self.min);
        self.sets[pool as usize].upstream[i / 64] &= !(1 << (i % 64));
        match until {
            Some(until) => self.give_back_at(local_ip, server, port, until, FlowIds::NONE),
            None => self.give_back(local_ip, server, port),
        }
    }

    fn set_free(&mut self, pool: u32, port: u16) {
        let i = usize::from(port - self.min);
        let set = &mut self.sets[pool as usize];
        let bit = 1u64 << (i % 64);
        if set.taken[i / 64] & bit != 0 {
            set.taken[i / 64] &= !bit;
            set.in_use -= 1;
        }
    }

    /// Marks `port` on `local_ip` towards `server` as used by a connection that did not take it here (synced
    /// from a peer).
    pub fn mark_taken(&mut self, local_ip: Ipv4Addr, server: SocketAddrV4, port: u16) {
        if !self.owns(port) {
            return;
        }
        if let Ok(pool) = self.pool_or_new(local_ip, server) {
            let i = usize::from(port - self.min);
            let set = &mut self.sets[pool as usize];
            if set.taken[i / 64] & (1 << (i % 64)) == 0 {
                set.taken[i / 64] |= 1 << (i % 64);
                set.in_use += 1;
            }
        }
    }

    /// Returns a port whose connection ended normally (the server's TIME_WAIT, if any, is over).
    pub fn give_back(&mut self, local_ip: Ipv4Addr, server: SocketAddrV4, port: u16) {
        if !self.owns(port) {
            return;
        }
        if let Some(pool) = self.pool(local_ip, server) {
            self.set_free(pool, port);
        }
    }

    /// Returns a port at `until`: the connection of `flow` ended early and the server may hold the tuple in
    /// TIME_WAIT until then. Meanwhile only `flow` may take it again.
    pub fn give_back_at(&mut self, local_ip: Ipv4Addr, server: SocketAddrV4, port: u16, until: Instant, flow: FlowIds) {
        if !self.owns(port) {
            return;
        }
        let Some(pool) = self.pool(local_ip, server) else {
            return;
        };
        if self.quarantine.len() >= self.quarantine_capacity {
            if let Some(oldest) = self.quarantine.pop_front() {
                self.release(oldest);
                self.quarantine_overflow += 1;
            }
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.holders.insert((pool, port), Holder { flow, seq });
        // Deadlines are pushed in time order except when `until` varies: release checks the front only, so
        // a later deadline ahead of an earlier one only delays the earlier (never releases early).
        self.quarantine.push_back(Quarantined { pool, port, until, seq });
    }

    /// Frees a quarantined port unless its flow took it over since.
    fn release(&mut self, q: Quarantined) {
        if self.holders.get(&(q.pool, q.port)).is_some_and(|h| h.seq == q.seq) {
            self.holders.remove(&(q.pool, q.port));
            self.set_free(q.pool, q.port);
        }
    }

    /// Releases quarantined ports whose time has come.
    pub fn release_due(&mut self, now: Instant) {
        while let Some(q) = self.quarantine.front().copied() {
            if q.until > now {
                break;
            }
            self.quarantine.pop_front();
            self.release(q);
        }
    }

    /// The local port range (every worker's), as (first, last).
    pub fn range(&self) -> (u16, u16) {
        (self.min, self.max)
    }

    /// Whether `port` is in the local port range (any worker's).
    pub fn in_range(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }

    /// Whether `port` belongs to this worker ([`local_port_owner`]).
    pub fn owns(&self, port: u16) -> bool {
        self.in_range(port) && local_port_owner(port, usize::from(self.workers)) == usize::from(self.worker)
    }

    /// Free ports on `local_ip` towards `server`.
    pub fn free(&self, local_ip: Ipv4Addr, server: SocketAddrV4) -> usize {
        let used = self.pool(local_ip, server).map_or(0, |p| self.sets[p as usize].in_use);
        (self.per_pool - used) as usize
    }

    /// How full the pools are.
    pub fn occupancy(&self) -> PortOccupancy {
        PortOccupancy {
            pools: self.sets.len() as u64,
            per_pool: u64::from(self.per_pool),
            in_use: self.sets.iter().map(|s| u64::from(s.in_use)).sum(),
            busiest: self.sets.iter().map(|s| u64::from(s.in_use)).max().unwrap_or(0),
            quarantined: self.holders.len() as u64,
            quarantine_overflow: self.quarantine_overflow,
        }
    }

    /// The fullest pool as (local IP, server, ports in use), for exhaustion warnings.
    pub fn busiest(&self) -> Option<(Ipv4Addr, SocketAddrV4, u32)> {
        self.sets
            .iter()
            .max_by_key(|s| s.in_use)
            .map(|s| (s.local_ip, s.server, s.in_use))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
    const S1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 2), 80);
    const S2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 3), 80);

    /// `p` with its upstream rotation moved to the first port of the range (it starts at a random one).
    fn from_first_port(mut p: LocalPorts) -> LocalPorts {
        p.upstream_cursor = 0;
        p
    }

    /// The flow of client 198.18.0.1:`port` to the VIP.
    fn flow(port: u16) -> FlowIds {
        FlowIds {
            client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), port),
            vip: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80),
        }
    }

    #[test]
    fn the_clients_port_is_kept_when_free_and_ours() {
        let mut p = LocalPorts::new(&[LIP], 10_000, 60_999, 0, 1);
        assert_eq!(p.take(LIP, S1, flow(40_000)), Ok(40_000));
        assert_eq!(p.take(LIP, S1, flow(40_000)), Ok(40_001), "taken: the next free one");
        assert_eq!(
            p.take(LIP, S2, flow(40_000)),
            Ok(40_000),
            "another server has the whole range"
        );
        p.give_back(LIP, S1, 40_000);
        assert_eq!(
            p.take(LIP, S1, flow(40_000)),
            Ok(40_000),
            "the same client 4-tuple gets the same tuple again"
        );
        assert_eq!(
            p.take(Ipv4Addr::new(198, 19, 0, 99), S1, flow(1)),
            Err(NoPort::NotLocal)
        );
    }

    #[test]
    fn upstream_ports_rotate_from_a_random_start() {
        // A restarted process must not begin on the tuples its predecessor began on (servers may still hold
        // them): eight fresh pools of 50 000 ports all starting on the same port would be a 1 in 10^32 event.
        let firsts: Vec<u16> = (0..8)
            .map(|_| {
                LocalPorts::new(&[LIP], 10_000, 59_999, 0, 1)
                    .take_upstream(LIP, S1)
                    .unwrap()
            })
            .collect();
        assert!(firsts.iter().any(|&p| p != firsts[0]), "always from {}", firsts[0]);
        // From there, the next free port each time (wrapping at the end of the range).
        let mut p = LocalPorts::new(&[LIP], 10_000, 10_009, 0, 1);
        let a = p.take_upstream(LIP, S1).unwrap();
        let b = p.take_upstream(LIP, S1).unwrap();
        assert_eq!(b, if a == 10_009 { 10_000 } else { a + 1 });
    }

    #[test]
    fn workers_own_disjoint_ports_and_map_client_ports_into_their_share() {
        let mut w0 = LocalPorts::new(&[LIP], 10_000, 10_009, 0, 2);
        let mut w1 = LocalPorts::new(&[LIP], 10_000, 10_009, 1, 2);
        assert_eq!(w0.take(LIP, S1, flow(10_003)), Ok(10_002));
        assert_eq!(w1.take(LIP, S1, flow(10_003)), Ok(10_003));
        assert_eq!(w1.take(LIP, S1, flow(10_008)), Ok(10_009));
        // Out of range: wraps into it, the same way every time.
        let a = w0.take(LIP, S2, flow(50_000)).unwrap();
        w0.give_back(LIP, S2, a);
        assert_eq!(w0.take(LIP, S2, flow(50_000)), Ok(a));
        let all0: Vec<u16> = std::iter::from_fn(|| w0.take(LIP, S1, flow(10_000)).ok()).collect();
        let all1: Vec<u16> = std::iter::from_fn(|| w1.take(LIP, S1, flow(10_000)).ok()).collect();
        assert_eq!(all0, vec![10_000, 10_004, 10_006, 10_008]);
        assert_eq!(all1, vec![10_001, 10_005, 10_007]);
        assert!(all0
            .iter()
            .all(|p| local_port_owner(*p, 2) == 0 && w0.owns(*p) && !w1.owns(*p)));
        assert!(all1
            .iter()
            .all(|p| local_port_owner(*p, 2) == 1 && w1.owns(*p) && !w0.owns(*p)));
        assert_eq!(w0.take(LIP, S1, flow(10_000)), Err(NoPort::Exhausted));
        assert_eq!(w0.free(LIP, S1), 0);
        assert_eq!(
            w0.free(LIP, S2),
            4,
            "the other server's pool has its own ports (one in use)"
        );
    }

    #[test]
    fn the_search_wraps_round_the_range() {
        let mut p = LocalPorts::new(&[LIP], 20_000, 20_199, 0, 1);
        for port in 20_100..=20_199 {
            assert_eq!(p.take(LIP, S1, flow(port)), Ok(port));
        }
        assert_eq!(p.take(LIP, S1, flow(20_150)), Ok(20_000));
        let mut taken = std::collections::HashSet::new();
        while let Ok(port) = p.take(LIP, S1, flow(20_190)) {
            assert!(taken.insert(port), "{port} handed out twice");
        }
        assert_eq!(taken.len(), 99);
        assert_eq!(p.occupancy().busiest, 200);
    }

    #[test]
    fn imported_ports_are_skipped_until_given_back() {
        let mut p = LocalPorts::new(&[LIP], 30_000, 30_003, 0, 1);
        p.mark_taken(LIP, S1, 30_000);
        p.mark_taken(LIP, S1, 30_002);
        assert_eq!(p.free(LIP, S1), 2);
        assert_eq!(p.take(LIP, S1, flow(30_000)), Ok(30_001));
        assert_eq!(p.take(LIP, S1, flow(30_000)), Ok(30_003));
        assert_eq!(p.take(LIP, S1, flow(30_000)), Err(NoPort::Exhausted));
        p.give_back(LIP, S1, 30_000);
        assert_eq!(p.take(LIP, S1, flow(30_003)), Ok(30_000));
    }

    #[test]
    fn quarantined_ports_come_back_only_when_due() {
        let t0 = Instant::now();
        let mut p = LocalPorts::new(&[LIP], 40_000, 40_001, 0, 1);
        assert_eq!(p.take(LIP, S1, flow(40_000)), Ok(40_000));
        assert_eq!(p.take(LIP, S1, flow(40_000)), Ok(40_001));
        p.give_back_at(LIP, S1, 40_000, t0 + Duration::from_secs(60), flow(40_000));
        assert_eq!(p.occupancy().quarantined, 1);
        p.release_due(t0 + Duration::from_secs(59));
        let other_client = FlowIds {
            client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40_000),
            ..flow(40_000)
        };
        assert_eq!(
            p.take(LIP, S1, other_client),
            Err(NoPort::Exhausted),
            "held for its flow"
        );
        p.release_due(t0 + Duration::from_secs(60));
        assert_eq!(p.take(LIP, S1, flow(40_001)), Ok(40_000));
        assert_eq!(p.occupancy().quarantined, 0);
    }

    #[test]
    fn pools_are_bounded() {
        let mut p = LocalPorts::new(&[LIP], 40_000, 40_063, 0, 1);
        for i in 0..MAX_POOLS {
            let server = SocketAddrV4::new(Ipv4Addr::from(0xC613_0000 + i as u32), 80);
            assert!(p.take(LIP, server, flow(1)).is_ok());
        }
        assert_eq!(
            p.take(LIP, SocketAddrV4::new(Ipv4Addr::new(198, 19, 255, 1), 80), flow(1)),
            Err(NoPort::TooManyPools)
        );
        let o = p.occupancy();
        assert_eq!(
            (o.pools, o.in_use, o.busiest, o.per_pool),
            (MAX_POOLS as u64, MAX_POOLS as u64, 1, 64)
        );
    }

    #[test]
    fn the_flow_a_port_is_quarantined_for_takes_it_over_and_its_release_is_void() {
        let t0 = Instant::now();
        let mut p = LocalPorts::new(&[LIP], 40_000, 40_009, 0, 1);
        assert_eq!(p.take(LIP, S1, flow(40_003)), Ok(40_003));
        p.give_back_at(LIP, S1, 40_003, t0 + Duration::from_secs(60), flow(40_003));
        // The same client flow to the same server, before the quarantine ends: the same tuple.
        assert_eq!(p.take(LIP, S1, flow(40_003)), Ok(40_003));
        assert_eq!(p.occupancy().quarantined, 0);
        // The quarantine's end must not free the port the flow now uses.
        p.release_due(t0 + Duration::from_secs(61));
        assert_eq!(p.free(LIP, S1), 9);
        assert_eq!(p.take(LIP, S1, flow(40_003)), Ok(40_004));
    }

    #[test]
    fn a_full_quarantine_releases_its_oldest_port_early_and_counts_it() {
        let t0 = Instant::now();
        let mut p = LocalPorts::new(&[LIP], 40_000, 40_009, 0, 1).with_quarantine(2);
        for port in 40_000..40_003 {
            assert_eq!(p.take(LIP, S1, flow(port)), Ok(port));
            p.give_back_at(LIP, S1, port, t0 + Duration::from_secs(60), flow(port));
        }
        let o = p.occupancy();
        assert_eq!((o.quarantined, o.quarantine_overflow, o.in_use), (2, 1, 2));
        let other = FlowIds {
            client: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 9), 40_000),
            ..flow(40_000)
        };
        assert_eq!(p.take(LIP, S1, other), Ok(40_000), "the oldest went back early");
    }

    #[test]
    fn fullnat_flows_and_upstream_connections_never_share_a_tuple() {
        let mut p = LocalPorts::new(&[LIP], 40_000, 40_099, 0, 1);
        let mut fullnat = std::collections::HashSet::new();
        let mut upstream = std::collections::HashSet::new();
        for i in 0..50u16 {
            // Clients whose own ports fall where upstream connections took theirs.
            assert!(fullnat.insert(p.take(LIP, S1, flow(40_000 + i)).unwrap()));
            assert!(upstream.insert(p.take_upstream(LIP, S1).unwrap()));
        }
        assert!(fullnat.is_disjoint(&upstream), "{fullnat:?} {upstream:?}");
        assert_eq!(p.take(LIP, S1, flow(40_000)), Err(NoPort::Exhausted), "one pool of 100");
        assert_eq!(p.take_upstream(LIP, S1), Err(NoPort::Exhausted));
        assert!(upstream.iter().all(|&port| p.is_upstream(LIP, S1, port)));
        assert!(fullnat.iter().all(|&port| !p.is_upstream(LIP, S1, port)));
        assert!(!p.is_upstream(LIP, S2, *upstream.iter().next().unwrap()), "per server");
        assert!(p.take_upstream(LIP, S2).is_ok(), "another server's pool is free");
    }

    #[test]
    fn upstream_ports_rotate_and_follow_the_worker_split() {
        let mut w1 = from_first_port(LocalPorts::new(&[LIP], 10_000, 10_009, 1, 2));
        let got: Vec<u16> = std::iter::from_fn(|| w1.take_upstream(LIP, S1).ok()).collect();
        assert_eq!(got, vec![10_001, 10_003, 10_005, 10_007, 10_009]);
        assert!(got.iter().all(|&port| local_port_owner(port, 2) == 1));
        w1.give_back_upstream(LIP, S1, 10_003, None);
        w1.give_back_upstream(LIP, S1, 10_007, None);
        assert_eq!(
            w1.take_upstream(LIP, S1),
            Ok(10_003),
            "the search goes on after the last port taken, round the range"
        );
        assert_eq!(w1.take_upstream(LIP, S1), Ok(10_007));
        assert_eq!(
            w1.take_upstream(Ipv4Addr::new(198, 19, 0, 99), S1),
            Err(NoPort::NotLocal)
        );
        w1.add_local_ip(Ipv4Addr::new(198, 19, 0, 99));
        assert_eq!(w1.take_upstream(Ipv4Addr::new(198, 19, 0, 99), S1), Ok(10_009));
    }

    #[test]
    fn an_upstream_port_the_server_may_hold_in_time_wait_goes_to_no_one_until_due() {
        let t0 = Instant::now();
        let mut p = from_first_port(LocalPorts::new(&[LIP], 40_000, 40_001, 0, 1));
        assert_eq!(p.take_upstream(LIP, S1), Ok(40_000));
        assert_eq!(p.take(LIP, S1, flow(40_001)), Ok(40_001));
        p.give_back_upstream(LIP, S1, 40_000, Some(t0 + Duration::from_secs(60)));
        assert!(!p.is_upstream(LIP, S1, 40_000));
        p.release_due(t0 + Duration::from_secs(59));
        assert_eq!(
            p.take(LIP, S1, flow(40_000)),
            Err(NoPort::Exhausted),
            "not for a FULLNAT flow, not even one whose client has that port"
        );
        assert_eq!(p.take_upstream(LIP, S1), Err(NoPort::Exhausted));
        assert_eq!(
            p.take(LIP, S2, flow(40_000)),
            Ok(40_000),
            "another server never saw the tuple"
        );
        p.release_due(t0 + Duration::from_secs(60));
        assert_eq!(p.take(LIP, S1, flow(40_000)), Ok(40_000));
        // Giving back what no upstream connection holds changes nothing (a FULLNAT flow's port).
        p.give_back_upstream(LIP, S1, 40_001, None);
        assert_eq!(p.free(LIP, S1), 0);
    }
}
