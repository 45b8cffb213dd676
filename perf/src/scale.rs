//! `xlb-perf conntrack-scale`: per-packet cost of the L4 forwarder against the number of concurrent sessions,
//! and memory per session.
//!
//! The sans-IO pipeline (local stack + FULLNAT forwarder) runs in this process on byte buffers: no network, no
//! AF_XDP, so the figure isolates what the connection table and the rewrite cost as the table grows (hash index
//! and entries falling out of the CPU caches). For each size N it creates N sessions (SYNs from distinct client
//! addresses and ports), then forwards data packets of sessions picked at random from a pool large enough to
//! defeat the caches, and reports nanoseconds per packet. Packets go through in batches as a worker receives them:
//! [`Pipeline::prefetch`] for every frame of the batch, then [`Pipeline::process`] for each (a batch of 1 skips
//! the prefetch: one packet at a time). Time per packet is given both as wall-clock time and as the thread's CPU
//! time (steadier on a shared machine: time spent descheduled does not count). Memory per session is the
//! table's reserved memory divided by its capacity, and the process's resident-set growth while the sessions
//! were created.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use xlb_l4::config::{GroupConfig, L4Config, ListenerConfig, ServerConfig};
use xlb_l4::conn::{Forwarding, Proto};
use xlb_l4::forward::{Forwarder, ForwarderConfig};
use xlb_l4::layout::{Layout, RemovedServerPolicy};
use xlb_l4::sched::SchedulerKind;
use xlb_l4::stats::{HealthBoard, SharedL4Counters};
use xlb_stack::addr::Ipv4Net;
use xlb_stack::local::{Link, LocalConfig, LocalStack};
use xlb_stack::neighbour::NeighbourConfig;
use xlb_stack::pipeline::{Frame, Pipeline, Verdict};
use xlb_stack::wire::{checksum, EthernetAddress};

const EXT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x10]);
const INT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 1, 0x10]);
const CLIENT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// Frames in the measured pool (distinct sessions, visited in a shuffled order).
const POOL: usize = 1 << 16;

/// One size's result.
#[derive(Debug, Clone)]
pub struct ScalePoint {
    /// Concurrent sessions.
    pub sessions: usize,
    /// Nanoseconds per data packet of an existing session (lookup, state, rewrite, neighbour).
    pub ns_per_packet: f64,
    /// The measuring thread's CPU time per data packet, in nanoseconds.
    pub cpu_ns_per_packet: f64,
    /// Nanoseconds per new session (scheduling, local port, insert, rewrite).
    pub ns_per_new_session: f64,
    /// Reserved table memory per session slot, in bytes.
    pub table_bytes_per_session: f64,
    /// Resident-set growth per session while the sessions were created, in bytes.
    pub rss_bytes_per_session: f64,
}

impl ScalePoint {
    /// As JSON.
    pub fn json(&self) -> Value {
        json!({
            "sessions": self.sessions,
            "ns_per_packet": self.ns_per_packet,
            "cpu_ns_per_packet": self.cpu_ns_per_packet,
            "ns_per_new_session": self.ns_per_new_session,
            "table_bytes_per_session": self.table_bytes_per_session,
            "rss_bytes_per_session": self.rss_bytes_per_session,
        })
    }
}

/// Client address and port of session `i` (distinct for every i < 2^24).
fn client(i: usize) -> SocketAddrV4 {
    let host = 1 + (i / 50_000) as u32;
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (host << 8 | 1) % (1 << 16)),
        10_000 + (i % 50_000) as u16,
    )
}

/// An Ethernet/IPv4/TCP frame from `client` to the VIP with `flags`, valid checksums.
fn frame(client: SocketAddrV4, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20 + payload.len()];
    f[0..6].copy_from_slice(&EXT_MAC.0);
    f[6..12].copy_from_slice(&CLIENT_MAC.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let total = (40 + payload.len()) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&client.ip().octets());
    ip[16..20].copy_from_slice(&VIP.octets());
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut f[34..];
    t[0..2].copy_from_slice(&client.port().to_be_bytes());
    t[2..4].copy_from_slice(&80u16.to_be_bytes());
    t[4..8].copy_from_slice(&1000u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&1000u16.to_be_bytes());
    t[20..].copy_from_slice(payload);
    let c = checksum::l4_checksum(client.ip().octets(), VIP.octets(), 6, t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    f
}

/// The pipeline under test: FULLNAT, three servers, enough local IPs for `sessions` sessions.
fn pipeline(sessions: usize, now: Instant) -> LocalStack<Forwarder> {
    let servers: Vec<SocketAddrV4> = (2..5)
        .map(|h| SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, h), 8080))
        .collect();
    let group = GroupConfig {
        name: "web".into(),
        servers: servers.iter().map(|a| ServerConfig { addr: *a, weight: 1 }).collect(),
        health_check: None,
        tls: None,
    };
    let listener = ListenerConfig {
        name: "web".into(),
        vip: VIP,
        port: 80,
        protocol: Proto::Tcp.into(),
        scheduler: SchedulerKind::Rr,
        forwarding: Forwarding::Fullnat,
        group: "web".into(),
        interface: None,
        syn_proxy: None,
        max_conns: None,
        rules: Vec::new(),
        sticky: None,
        hash: None,
        tls: None,
    };
    // 50 000 local ports per local IP.
    let lips: Vec<Ipv4Net> = (0..(sessions / 50_000 + 1))
        .map(|i| Ipv4Net {
            addr: Ipv4Addr::new(198, 19, 1 + (i / 250) as u8, 10 + (i % 240) as u8),
            prefix: 16,
        })
        .collect();
    let layout = Layout::new(&[listener], &[group], RemovedServerPolicy::Keep);
    let board = Arc::new(HealthBoard::new(0));
    let config = ForwarderConfig {
        maglev: Arc::new(xlb_l4::sched::MaglevTables::build(&layout, &board, None)),
        layout: Arc::new(layout),
        vip_ifaces: vec![0],
        l4: L4Config {
            conn_table_size: sessions + POOL,
            local_port_min: 10_000,
            local_port_max: 59_999,
            // The sessions are opened by SYNs and held half-open or established: the table itself is measured,
            // not the SYN proxy or the short timeouts of a table under pressure.
            syn_proxy: xlb_l4::config::SynProxyMode::Off,
            pressure_percent: 100,
            ..Default::default()
        },
        local_ips: lips.iter().map(|n| n.addr).collect(),
        worker: 0,
        workers: 1,
        port_ifaces: vec![0, 1],
    };
    let ports = config.local_ports();
    let forwarder = Forwarder::new(
        config,
        None,
        None,
        board,
        Arc::new(SharedL4Counters::new(&[3])),
        None,
        now,
    );
    let mut stack = LocalStack::with_ports(
        LocalConfig {
            links: vec![
                Link {
                    mac: EXT_MAC,
                    addresses: vec!["198.18.0.10/16".parse().expect("net")],
                    gateway: None,
                },
                Link {
                    mac: INT_MAC,
                    addresses: lips,
                    gateway: None,
                },
            ],
            neighbours: NeighbourConfig::default(),
            icmp_rate: 1000,
        },
        ports,
        forwarder,
    );
    stack.add_owned(0, VIP);
    for s in &servers {
        stack.neighbours().learn(
            now,
            1,
            Ipv4Addr::new(198, 19, 1, 10),
            *s.ip(),
            EthernetAddress([2, 0, 0, 0, 2, s.ip().octets()[3]]),
            true,
        );
    }
    stack
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// CPU time used by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Measures one size, forwarding `packets` data packets in batches of `batch` (1: no prefetch).
pub fn measure(sessions: usize, packets: usize, batch: usize) -> Result<ScalePoint> {
    let batch = batch.max(1);
    let now = Instant::now();
    let rss_before = rss_bytes();
    let mut stack = pipeline(sessions, now);
    let mut buf = vec![0u8; 2048];
    // Create the sessions: SYN, then the ACK that establishes them.
    let started = Instant::now();
    for i in 0..sessions {
        let syn = frame(client(i), 0x02, b"");
        buf[..syn.len()].copy_from_slice(&syn);
        let v = stack.process(now, 0, &mut Frame::new(&mut buf, syn.len()));
        ensure!(v == Verdict::Transmit(1), "session {i}: {v:?}");
    }
    let new_elapsed = started.elapsed();
    let table = stack.handler().conns();
    ensure!(
        table.len() == sessions,
        "{} sessions in the table, expected {sessions}",
        table.len()
    );
    let table_bytes = table.memory_bytes() as f64 / table.capacity() as f64;
    let rss = rss_bytes().saturating_sub(rss_before) as f64 / sessions as f64;
    // A pool of data packets of random sessions (xorshift), visited repeatedly.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let pool: Vec<Vec<u8>> = (0..POOL.min(sessions))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            frame(client((x % sessions as u64) as usize), 0x10, b"0123456789abcdef")
        })
        .collect();
    let mut bufs = vec![vec![0u8; 2048]; batch];
    let mut lens = vec![0usize; batch];
    let started = Instant::now();
    let cpu_started = thread_cpu_time();
    let mut i = 0;
    while i < packets {
        let n = batch.min(packets - i);
        for j in 0..n {
            let p = &pool[(i + j) % pool.len()];
            bufs[j][..p.len()].copy_from_slice(p);
            lens[j] = p.len();
        }
        if batch > 1 {
            for j in 0..n {
                stack.prefetch(0, &bufs[j][..lens[j]]);
            }
        }
        for j in 0..n {
            let v = stack.process(now, 0, &mut Frame::new(&mut bufs[j], lens[j]));
            debug_assert_eq!(v, Verdict::Transmit(1));
        }
        stack.flush_events(); // as a worker does after each batch
        i += n;
    }
    let elapsed = started.elapsed();
    let cpu = thread_cpu_time().saturating_sub(cpu_started);
    Ok(ScalePoint {
        sessions,
        ns_per_packet: per(elapsed, packets),
        cpu_ns_per_packet: per(cpu, packets),
        ns_per_new_session: per(new_elapsed, sessions),
        table_bytes_per_session: table_bytes,
        rss_bytes_per_session: rss,
    })
}

/// Measures every size in `sizes`: a table on stderr, JSON on stdout.
pub fn run(sizes: &[usize], packets: usize, batch: usize) -> Result<()> {
    eprintln!(
        "{:>10} {:>10} {:>14} {:>18} {:>16} {:>14}",
        "sessions", "ns/packet", "CPU ns/packet", "ns/new session", "table B/session", "RSS B/session"
    );
    let mut points = Vec::new();
    for &n in sizes {
        let p = measure(n, packets, batch)?;
        eprintln!(
            "{:>10} {:>10.1} {:>14.1} {:>18.1} {:>16.0} {:>14.0}",
            p.sessions,
            p.ns_per_packet,
            p.cpu_ns_per_packet,
            p.ns_per_new_session,
            p.table_bytes_per_session,
            p.rss_bytes_per_session
        );
        points.push(p.json());
    }
    println!(
        "{}",
        json!({ "scenario": "conntrack_scale", "packets": packets, "batch": batch, "points": points })
    );
    Ok(())
}

fn per(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_distinct_and_small_runs_measure() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200_000 {
            assert!(seen.insert(client(i)), "client {i} repeats");
        }
        for batch in [1, 64] {
            let p = measure(1000, 20_000, batch).unwrap();
            assert_eq!(p.sessions, 1000);
            assert!(p.ns_per_packet > 0.0 && p.table_bytes_per_session > 0.0);
        }
    }
}
