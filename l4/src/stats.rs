//! L4 counters: per listener and per (listener, server), owned by each worker and published for the control
//! thread, plus the health board the health checker writes.
//!
//! Like the stack's counters, a worker counts into plain integers and stores them into atomics periodically
//! (one writer per slot, relaxed stores), so reading never stops the datapath.

use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

use crossbeam_channel::Sender;
use xlb_stack::drops::DropReason;

pub use crate::forward::lports::PortOccupancy;
use crate::health::HealthCounters;

/// Counters of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerCounters {
    /// Packets from clients.
    pub packets_in: u64,
    /// Bytes from clients (IP length).
    pub bytes_in: u64,
    /// Packets to clients (FULLNAT replies).
    pub packets_out: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    /// Connections created.
    pub conns_total: u64,
    /// New flows refused because no server was available.
    pub no_server: u64,
    /// New flows forwarded without a table entry (table full, DR: Maglev).
    pub stateless: u64,
    /// SYNs answered by the SYN proxy with a cookie (no entry, no port, no server).
    pub syn_cookies_sent: u64,
    /// ACKs whose cookie was valid: connections the SYN proxy opened to a server.
    pub syn_cookies_valid: u64,
    /// Workers whose SYN proxy is on for this listener now (0 or 1 per worker; summed over workers).
    pub syn_proxy_on: u64,
    /// Server answers to the proxy's SYN that acknowledged something else (the server held the tuple): reset,
    /// the flow opened again by the client's retransmission.
    pub syn_proxy_server_resets: u64,
    /// Packets of the listener's flows dropped or refused, by [`DropReason`] (also counted per worker).
    pub drops: [u64; DropReason::CAPACITY],
}

impl Default for ListenerCounters {
    fn default() -> Self {
        ListenerCounters {
            packets_in: 0,
            bytes_in: 0,
            packets_out: 0,
            bytes_out: 0,
            conns_total: 0,
            no_server: 0,
            stateless: 0,
            syn_cookies_sent: 0,
            syn_cookies_valid: 0,
            syn_proxy_on: 0,
            syn_proxy_server_resets: 0,
            drops: [0; DropReason::CAPACITY],
        }
    }
}

/// Counters of one server of one listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerCounters {
    /// Packets forwarded to the server.
    pub packets_in: u64,
    /// Bytes forwarded to the server.
    pub bytes_in: u64,
    /// Packets from the server (FULLNAT).
    pub packets_out: u64,
    /// Bytes from the server.
    pub bytes_out: u64,
    /// Connections scheduled to the server.
    pub conns_total: u64,
    /// Connections in an active state now (established TCP, UDP).
    pub active: u64,
    /// Other connections now (handshake, closing).
    pub inactive: u64,
}

const LISTENER_FIELDS: usize = 11 + DropReason::CAPACITY;
const SERVER_FIELDS: usize = 7;
const GLOBAL_FIELDS: usize = 18;

/// All L4 counters of one worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L4Counters {
    /// Per listener (config order).
    pub listeners: Vec<ListenerCounters>,
    /// Per listener, per server of its group.
    pub servers: Vec<Vec<ServerCounters>>,
    /// Connections in the table.
    pub conns: u64,
    /// Frames handed to another worker.
    pub handoff_out: u64,
    /// Frames received from another worker.
    pub handoff_in: u64,
    /// Connections expired.
    pub expired: u64,
    /// Entries ended early and the flow scheduled again: a client's new SYN on the addresses of a closed
    /// connection (TIME_WAIT, CLOSE) or of one whose server is down, or a UDP flow whose server is down.
    pub rescheduled: u64,
    /// ICMP errors about a forwarded flow passed on to the other end of its connection.
    pub icmp_forwarded: u64,
    /// Connections installed from HA peers.
    pub imported: u64,
    /// Synced connections that could not be installed (unknown listener or server, table full).
    pub import_skipped: u64,
    /// Sync events dropped because the sync channel was full.
    pub sync_dropped: u64,
    /// Closed or closing connections evicted from a full table to make room for a new one.
    pub evicted: u64,
    /// Workers whose table or local ports are under pressure now (above `[l4] pressure_percent`; 0 or 1 per
    /// worker).
    pub pressure: u64,
    /// Entries given a short timeout under pressure (half-open TCP, unanswered UDP).
    pub short_timeouts: u64,
    /// FULLNAT local port pools (summed over workers; `busiest` and `per_pool` too: each worker has its share
    /// of every pool's range).
    pub local_ports: PortOccupancy,
}

impl L4Counters {
    /// Zeroed counters for listeners whose groups have `servers_per_listener[i]` servers.
    pub fn new(servers_per_listener: &[usize]) -> Self {
        L4Counters {
            listeners: vec![ListenerCounters::default(); servers_per_listener.len()],
            servers: servers_per_listener
                .iter()
                .map(|n| vec![ServerCounters::default(); *n])
                .collect(),
            ..Default::default()
        }
    }

    /// Adds `other` into `self` (same shape).
    pub fn add(&mut self, other: &L4Counters) {
        for (a, b) in self.listeners.iter_mut().zip(&other.listeners) {
            a.packets_in += b.packets_in;
            a.bytes_in += b.bytes_in;
            a.packets_out += b.packets_out;
            a.bytes_out += b.bytes_out;
            a.conns_total += b.conns_total;
            a.no_server += b.no_server;
            a.stateless += b.stateless;
            a.syn_cookies_sent += b.syn_cookies_sent;
            a.syn_cookies_valid += b.syn_cookies_valid;
            a.syn_proxy_on += b.syn_proxy_on;
            a.syn_proxy_server_resets += b.syn_proxy_server_resets;
            for (x, y) in a.drops.iter_mut().zip(&b.drops) {
                *x += y;
            }
        }
        for (la, lb) in self.servers.iter_mut().zip(&other.servers) {
            for (a, b) in la.iter_mut().zip(lb) {
                a.packets_in += b.packets_in;
                a.bytes_in += b.bytes_in;
                a.packets_out += b.packets_out;
                a.bytes_out += b.bytes_out;
                a.conns_total += b.conns_total;
                a.active += b.active;
                a.inactive += b.inactive;
            }
        }
        self.conns += other.conns;
        self.handoff_out += other.handoff_out;
        self.handoff_in += other.handoff_in;
        self.expired += other.expired;
        self.rescheduled += other.rescheduled;
        self.icmp_forwarded += other.icmp_forwarded;
        self.imported += other.imported;
        self.import_skipped += other.import_skipped;
        self.sync_dropped += other.sync_dropped;
        self.evicted += other.evicted;
        self.pressure += other.pressure;
        self.short_timeouts += other.short_timeouts;
        let (a, b) = (&mut self.local_ports, &other.local_ports);
        a.pools = a.pools.max(b.pools);
        a.per_pool += b.per_pool;
        a.in_use += b.in_use;
        a.busiest += b.busiest;
        a.quarantined += b.quarantined;
        a.quarantine_overflow += b.quarantine_overflow;
    }
}

/// One worker's published L4 counters.
#[derive(Debug)]
pub struct SharedL4Counters {
    shape: Vec<usize>,
    slots: Vec<AtomicU64>,
}

impl SharedL4Counters {
    /// Slots for listeners with `servers_per_listener[i]` servers.
    pub fn new(servers_per_listener: &[usize]) -> Self {
        let n = GLOBAL_FIELDS
            + servers_per_listener
                .iter()
                .map(|s| LISTENER_FIELDS + s * SERVER_FIELDS)
                .sum::<usize>();
        SharedL4Counters {
            shape: servers_per_listener.to_vec(),
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Publishes `c` (by its one writer).
    pub fn publish(&self, c: &L4Counters) {
        let mut i = 0;
        let mut put = |v: u64| {
            self.slots[i].store(v, Relaxed);
            i += 1;
        };
        for v in [
            c.conns,
            c.handoff_out,
            c.handoff_in,
            c.expired,
            c.rescheduled,
            c.icmp_forwarded,
            c.imported,
            c.import_skipped,
            c.sync_dropped,
            c.evicted,
            c.pressure,
            c.short_timeouts,
            c.local_ports.pools,
            c.local_ports.per_pool,
            c.local_ports.in_use,
            c.local_ports.busiest,
            c.local_ports.quarantined,
            c.local_ports.quarantine_overflow,
        ] {
            put(v);
        }
        for (l, servers) in c.listeners.iter().zip(&c.servers) {
            for v in [
                l.packets_in,
                l.bytes_in,
                l.packets_out,
                l.bytes_out,
                l.conns_total,
                l.no_server,
                l.stateless,
                l.syn_cookies_sent,
                l.syn_cookies_valid,
                l.syn_proxy_on,
                l.syn_proxy_server_resets,
            ] {
                put(v);
            }
            for v in l.drops {
                put(v);
            }
            for s in servers {
                for v in [
                    s.packets_in,
                    s.bytes_in,
                    s.packets_out,
                    s.bytes_out,
                    s.conns_total,
                    s.active,
                    s.inactive,
                ] {
                    put(v);
                }
            }
        }
    }

    /// Reads the latest published counters.
    pub fn snapshot(&self) -> L4Counters {
        let mut i = 0;
        let mut get = || {
            let v = self.slots[i].load(Relaxed);
            i += 1;
            v
        };
        let mut c = L4Counters::new(&self.shape);
        c.conns = get();
        c.handoff_out = get();
        c.handoff_in = get();
        c.expired = get();
        c.rescheduled = get();
        c.icmp_forwarded = get();
        c.imported = get();
        c.import_skipped = get();
        c.sync_dropped = get();
        c.evicted = get();
        c.pressure = get();
        c.short_timeouts = get();
        c.local_ports = PortOccupancy {
            pools: get(),
            per_pool: get(),
            in_use: get(),
            busiest: get(),
            quarantined: get(),
            quarantine_overflow: get(),
        };
        for (l, servers) in c.listeners.iter_mut().zip(c.servers.iter_mut()) {
            *l = ListenerCounters {
                packets_in: get(),
                bytes_in: get(),
                packets_out: get(),
                bytes_out: get(),
                conns_total: get(),
                no_server: get(),
                stateless: get(),
                syn_cookies_sent: get(),
                syn_cookies_valid: get(),
                syn_proxy_on: get(),
                syn_proxy_server_resets: get(),
                drops: std::array::from_fn(|_| get()),
            };
            for s in servers.iter_mut() {
                *s = ServerCounters {
                    packets_in: get(),
                    bytes_in: get(),
                    packets_out: get(),
                    bytes_out: get(),
                    conns_total: get(),
                    active: get(),
                    inactive: get(),
                };
            }
        }
        c
    }
}

/// The health checker's counters, published by the worker running the checks (one writer, relaxed stores) for
/// the control plane; kept across reloads (a new checker continues from them).
#[derive(Debug, Default)]
pub struct SharedHealthCounters {
    probes: AtomicU64,
    successes: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    bad_checksum: AtomicU64,
    port_waits: AtomicU64,
}

impl SharedHealthCounters {
    /// Zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    fn fields(&self) -> [&AtomicU64; 6] {
        [
            &self.probes,
            &self.successes,
            &self.failures,
            &self.timeouts,
            &self.bad_checksum,
            &self.port_waits,
        ]
    }

    /// Publishes `c` (by its one writer).
    pub fn publish(&self, c: &HealthCounters) {
        let values = [
            c.probes,
            c.successes,
            c.failures,
            c.timeouts,
            c.bad_checksum,
            c.port_waits,
        ];
        for (slot, v) in self.fields().into_iter().zip(values) {
            slot.store(v, Relaxed);
        }
    }

    /// Reads the latest published counters.
    pub fn snapshot(&self) -> HealthCounters {
        let [probes, successes, failures, timeouts, bad_checksum, port_waits] = self.fields().map(|f| f.load(Relaxed));
        HealthCounters {
            probes,
            successes,
            failures,
            timeouts,
            bad_checksum,
            port_waits,
        }
    }
}

/// Health of every health-check target ([`crate::layout::Layout::targets`]), written by the worker running the
/// checks and read by every worker.
#[derive(Debug)]
pub struct HealthBoard {
    up: Vec<AtomicBool>,
    /// Bumped on every change, so a worker notices one with a single load before it schedules.
    generation: AtomicU64,
    /// Signalled (never blocking) after a change: the control side rebuilds the Maglev tables off the workers.
    watcher: Option<Sender<()>>,
}

impl HealthBoard {
    /// `targets` targets, all up.
    pub fn new(targets: usize) -> Self {
        HealthBoard {
            up: (0..targets).map(|_| AtomicBool::new(true)).collect(),
            generation: AtomicU64::new(0),
            watcher: None,
        }
    }

    /// The board, signalling `watcher` after every change (a full channel is fine: a signal is pending).
    pub fn watched_by(mut self, watcher: Sender<()>) -> Self {
        self.watcher = Some(watcher);
        self
    }

    /// A board for `targets` targets whose states are taken from `old` where `carry(i)` names the old index of
    /// target `i` (new targets start up). It signals the old board's watcher.
    pub fn carried_over(targets: usize, old: &HealthBoard, carry: impl Fn(usize) -> Option<usize>) -> Self {
        let mut board = HealthBoard::new(targets);
        board.watcher = old.watcher.clone();
        for i in 0..targets {
            if let Some(j) = carry(i) {
                board.set(i, old.is_up(j));
            }
        }
        board
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.up.len()
    }

    /// Whether there are no targets.
    pub fn is_empty(&self) -> bool {
        self.up.is_empty()
    }

    /// Records a target's health.
    pub fn set(&self, target: usize, up: bool) {
        if let Some(slot) = self.up.get(target) {
            if slot.swap(up, Relaxed) != up {
                self.generation.fetch_add(1, Release);
                if let Some(watcher) = &self.watcher {
                    let _ = watcher.try_send(());
                }
            }
        }
    }

    /// Changes so far: a reader that saw this value and reads the same again has seen every state set before.
    pub fn generation(&self) -> u64 {
        self.generation.load(Acquire)
    }

    /// A target's health (unknown targets are up).
    pub fn is_up(&self, target: usize) -> bool {
        self.up.get(target).is_none_or(|s| s.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drops::L4Drops;

    #[test]
    fn publish_snapshot_round_trip() {
        let mut c = L4Counters::new(&[2, 1]);
        c.conns = 5;
        c.handoff_in = 7;
        c.listeners[1].stateless = 3;
        c.listeners[1].drops[DropReason::ConnTableFull.index()] = 4;
        c.servers[0][1].active = 9;
        c.servers[1][0].bytes_out = 11;
        c.evicted = 2;
        c.local_ports.busiest = 6;
        let s = SharedL4Counters::new(&[2, 1]);
        s.publish(&c);
        assert_eq!(s.snapshot(), c);
        let mut total = L4Counters::new(&[2, 1]);
        total.add(&c);
        total.add(&c);
        assert_eq!(total.servers[0][1].active, 18);
    }
}
