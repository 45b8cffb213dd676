//! The stats document of `GET /v1/stats`: per-worker ring and stack counters with drops by reason, their totals,
//! the XDP filters' verdicts per interface, the L4 listeners and servers (summed over workers), the L4 workers'
//! tables and local ports, the health checker, and HA. The Prometheus metrics are rendered from the same type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::routes::Ha;

/// `GET /v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsDoc {
    pub node: String,
    pub uptime_s: u64,
    /// The workers' counters summed.
    pub totals: WorkerCounters,
    pub workers: Vec<Worker>,
    pub interfaces: Vec<Interface>,
    /// Every interface's datapath is in place (see [`Interface::datapath_ok`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath_ok: Option<bool>,
    pub l4: L4,
    /// The `http` listeners' counters; absent without `http` listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<L7>,
    /// `null` without an `[ha]` section.
    pub ha: Option<Ha>,
}

/// One worker (`w<core>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub name: String,
    #[serde(flatten)]
    pub counters: WorkerCounters,
    /// Durations of the worker's turns with work.
    pub batch_us: BatchHistogram,
}

/// A worker's counters (and, in `totals`, their sums). `drops` has every reason, zero or not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_ring_full: u64,
    pub fill_starved: u64,
    pub kernel_rx_ring_full: u64,
    pub kernel_fill_ring_empty: u64,
    pub kernel_rx_dropped: u64,
    pub arp_replies: u64,
    pub arp_requests: u64,
    pub icmp_echo_replies: u64,
    pub tcp_resets: u64,
    pub icmp_unreachables: u64,
    /// ICMP time exceeded sent (packets to forward whose TTL ran out).
    #[serde(default)]
    pub icmp_time_exceeded: u64,
    /// Fragmented IPv4 datagrams reassembled.
    #[serde(default)]
    pub reassembled: u64,
    /// Frames dropped, by reason name.
    pub drops: BTreeMap<String, u64>,
    /// UMEM frames owned by userspace now.
    pub free_frames: u64,
    /// UMEM frames in total.
    pub total_frames: u64,
}

impl WorkerCounters {
    /// Adds `other` field by field (drops by reason).
    pub fn add(&mut self, other: &WorkerCounters) {
        self.rx_frames += other.rx_frames;
        self.rx_bytes += other.rx_bytes;
        self.tx_frames += other.tx_frames;
        self.tx_bytes += other.tx_bytes;
        self.tx_ring_full += other.tx_ring_full;
        self.fill_starved += other.fill_starved;
        self.kernel_rx_ring_full += other.kernel_rx_ring_full;
        self.kernel_fill_ring_empty += other.kernel_fill_ring_empty;
        self.kernel_rx_dropped += other.kernel_rx_dropped;
        self.arp_replies += other.arp_replies;
        self.arp_requests += other.arp_requests;
        self.icmp_echo_replies += other.icmp_echo_replies;
        self.tcp_resets += other.tcp_resets;
        self.icmp_unreachables += other.icmp_unreachables;
        self.icmp_time_exceeded += other.icmp_time_exceeded;
        self.reassembled += other.reassembled;
        for (reason, n) in &other.drops {
            *self.drops.entry(reason.clone()).or_default() += n;
        }
        self.free_frames += other.free_frames;
        self.total_frames += other.total_frames;
    }

    /// The sum of several workers' counters.
    pub fn total<'a>(workers: impl IntoIterator<Item = &'a WorkerCounters>) -> WorkerCounters {
        let mut total = WorkerCounters::default();
        for w in workers {
            total.add(w);
        }
        total
    }
}

/// A worker's turn durations: `counts[i]` turns took at most `le[i]` µs (and more than `le[i-1]`); the last
/// bound is `null`, no bound (+Inf).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchHistogram {
    pub le: Vec<Option<u64>>,
    pub counts: Vec<u64>,
    /// Sum of all durations, µs.
    pub sum: u64,
}

/// One interface's XDP filter and its verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    /// `native` | `generic` as the kernel has it attached now (`detached` / `replaced` when lost)
    pub xdp_mode: String,
    pub to_socket: u64,
    pub passed_not_ours: u64,
    pub passed_no_socket: u64,
    pub passed_malformed: u64,
    /// The XDP program and every AF_XDP socket of the interface are in place (the kernel's view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath_ok: Option<bool>,
    /// Per AF_XDP socket: queue, worker, zero_copy (as the kernel reports it), open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<Vec<serde_json::Value>>,
}

/// The L4 section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct L4 {
    /// Connections in all tables.
    pub conns: u64,
    /// Closed or closing connections evicted from a full table for a new flow, all workers.
    pub evicted: u64,
    /// Local ports, all workers (no `quarantine_overflow`): L4 FULLNAT flows and L7 upstream connections share
    /// the pools.
    pub local_ports: LocalPorts,
    /// Workers whose table or local ports are above `[l4] pressure_percent` now (short timeouts apply).
    #[serde(default)]
    pub pressure: u64,
    /// Entries given a short timeout under pressure (half-open TCP, unanswered UDP), all workers.
    #[serde(default)]
    pub short_timeouts: u64,
    /// Listeners in config order (removed ones left out).
    pub listeners: Vec<Listener>,
    /// Per worker, in the order of the document's `workers`.
    pub workers: Vec<L4Worker>,
    pub health: Health,
}

/// A listener, summed over workers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Listener {
    pub name: String,
    pub vip: String,
    pub port: u16,
    /// `tcp` | `udp`
    pub protocol: String,
    pub scheduler: String,
    /// `fullnat` | `dr`
    pub forwarding: String,
    pub group: String,
    pub conns_total: u64,
    pub conns_per_sec: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub no_server: u64,
    pub stateless: u64,
    /// SYN flood defence: `off` | `auto` | `always` (TCP FULLNAT listeners; `off` for the others).
    #[serde(default)]
    pub syn_proxy: String,
    /// Workers whose SYN proxy is on for this listener now.
    #[serde(default)]
    pub syn_proxy_on: u64,
    /// SYNs answered with a cookie (no entry, port or server).
    #[serde(default)]
    pub syn_cookies_sent: u64,
    /// ACKs with a valid cookie: connections the SYN proxy opened to a server.
    #[serde(default)]
    pub syn_cookies_valid: u64,
    /// Server answers to the proxy's SYN that acknowledged something else (the server held the tuple): reset,
    /// and opened again by the client's retransmission.
    #[serde(default)]
    pub syn_proxy_server_resets: u64,
    /// Packets of the listener's flows dropped, by reason (non-zero reasons only).
    pub drops: BTreeMap<String, u64>,
    pub servers: Vec<Server>,
}

/// A server of a listener's group (removed ones are listed while connections still use them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    /// `ip:port`
    pub addr: String,
    pub weight: u32,
    pub removed: bool,
    pub healthy: bool,
    pub active_conns: u64,
    pub inactive_conns: u64,
    pub conns_total: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

/// One worker's L4 state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L4Worker {
    /// Index into the document's `workers`.
    pub worker: usize,
    pub conns: u64,
    pub handoff_out: u64,
    pub handoff_in: u64,
    pub expired: u64,
    pub evicted: u64,
    pub rescheduled: u64,
    pub icmp_forwarded: u64,
    pub local_ports: LocalPorts,
    /// 1 while the worker's table or local ports are under pressure.
    #[serde(default)]
    pub pressure: u64,
    #[serde(default)]
    pub short_timeouts: u64,
}

/// Local port occupancy: one pool per (local IP, server), shared by L4 FULLNAT flows and L7 upstream
/// connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPorts {
    pub pools: u64,
    pub per_pool: u64,
    pub in_use: u64,
    pub busiest_pool: u64,
    pub quarantined: u64,
    /// Per worker only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_overflow: Option<u64>,
}

/// The health checker's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub probes: u64,
    pub successes: u64,
    pub failures: u64,
    pub timeouts: u64,
    pub bad_checksum: u64,
    pub port_waits: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_counters_and_drops() {
        let mut a = WorkerCounters {
            rx_frames: 3,
            ..WorkerCounters::default()
        };
        a.drops.insert("tcp_no_listener".into(), 1);
        let mut b = WorkerCounters {
            rx_frames: 4,
            ..WorkerCounters::default()
        };
        b.drops.insert("tcp_no_listener".into(), 1);
        b.drops.insert("not_our_mac".into(), 1);
        let t = WorkerCounters::total([&a, &b]);
        assert_eq!(t.rx_frames, 7);
        assert_eq!(t.drops["tcp_no_listener"], 2);
        assert_eq!(t.drops["not_our_mac"], 1);
    }

    #[test]
    fn a_worker_is_one_flat_object_and_reads_back() {
        let w = Worker {
            name: "w0".into(),
            counters: WorkerCounters {
                rx_frames: 5,
                ..WorkerCounters::default()
            },
            batch_us: BatchHistogram {
                le: vec![Some(1), None],
                counts: vec![2, 0],
                sum: 1,
            },
        };
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(v["rx_frames"], 5);
        assert_eq!(v["name"], "w0");
        assert!(v["batch_us"]["le"][1].is_null());
        assert!(v.get("counters").is_none());
        assert_eq!(serde_json::from_value::<Worker>(v).unwrap(), w);
    }
}

/// The L7 section, summed over workers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct L7 {
    /// Events by name (accepted, requests, responses_2xx, upstream_connects, no_healthy_server, ...).
    pub counts: BTreeMap<String, u64>,
    /// Client connections being served.
    pub sessions: u64,
    /// In-stack TCP connections (client, upstream, idle, closing).
    pub connections: u64,
    /// Idle upstream connections kept for reuse.
    pub idle_upstreams: u64,
    /// Bytes of socket buffers of the in-stack connections.
    #[serde(default)]
    pub buffer_bytes: u64,
    /// Share of relayed responses that needed no new upstream connection.
    pub upstream_reuse: f64,
}
