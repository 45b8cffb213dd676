//! The stats document served at `GET /v1/stats` ([`xlb_api::StatsDoc`]), built from the datapath's and the L4
//! runtime's counters: per-worker counters, drops by reason, filter verdicts, listeners and servers.

use std::collections::BTreeMap;

use xlb_api::stats::{
    BatchHistogram as BatchDoc, Health, Interface, L4Worker, Listener, LocalPorts, Server, Worker, WorkerCounters, L4,
};
use xlb_l4::health::HealthCounters;
use xlb_l4::stats::PortOccupancy;
use xlb_stack::counters::{BatchHistogram, WorkerSnapshot, BATCH_BUCKETS};
use xlb_stack::xsk::filter::FilterStats;

use crate::drops;
use crate::lb::L4Runtime;

/// One worker's counters.
pub fn worker(name: &str, s: &WorkerSnapshot) -> Worker {
    let drops: BTreeMap<String, u64> = drops::all()
        .map(|r| (r.name.to_string(), s.stack.drops_of(r.reason)))
        .collect();
    Worker {
        name: name.to_string(),
        counters: WorkerCounters {
            rx_frames: s.rings.rx_frames,
            rx_bytes: s.rings.rx_bytes,
            tx_frames: s.rings.tx_frames,
            tx_bytes: s.rings.tx_bytes,
            tx_ring_full: s.rings.tx_ring_full,
            fill_starved: s.rings.fill_starved,
            kernel_rx_ring_full: s.rings.kernel_rx_ring_full,
            kernel_fill_ring_empty: s.rings.kernel_fill_ring_empty,
            kernel_rx_dropped: s.rings.kernel_rx_dropped,
            arp_replies: s.stack.arp_replies,
            arp_requests: s.stack.arp_requests,
            icmp_echo_replies: s.stack.icmp_echo_replies,
            tcp_resets: s.stack.tcp_resets,
            icmp_unreachables: s.stack.icmp_unreachables,
            icmp_time_exceeded: s.stack.icmp_time_exceeded,
            reassembled: s.stack.reassembled,
            drops,
            free_frames: s.free_frames,
            total_frames: s.total_frames,
        },
        batch_us: BatchDoc {
            le: (0..BATCH_BUCKETS).map(BatchHistogram::bound_us).collect(),
            counts: s.batches.buckets.to_vec(),
            sum: s.batches.sum_us,
        },
    }
}

/// One interface's filter verdicts.
pub fn interface(name: &str, mode: &str, f: &FilterStats) -> Interface {
    Interface {
        name: name.to_string(),
        xdp_mode: mode.to_string(),
        to_socket: f.to_socket,
        passed_not_ours: f.passed_not_ours,
        passed_no_socket: f.passed_no_socket,
        passed_malformed: f.passed_malformed,
        datapath_ok: None,
        sockets: None,
    }
}

/// Sums the workers' counters (drops by reason).
pub fn totals(workers: &[Worker]) -> WorkerCounters {
    WorkerCounters::total(workers.iter().map(|w| &w.counters))
}

fn local_ports(p: &PortOccupancy, per_worker: bool) -> LocalPorts {
    LocalPorts {
        pools: p.pools,
        per_pool: p.per_pool,
        in_use: p.in_use,
        busiest_pool: p.busiest,
        quarantined: p.quarantined,
        quarantine_overflow: per_worker.then_some(p.quarantine_overflow),
    }
}

/// Listeners and their servers, summed over workers, with health: what `xlbctl list` shows. Removed listeners
/// are left out; removed servers are listed (marked) while connections still use them.
pub fn l4(runtime: &L4Runtime) -> L4 {
    let (total, per_worker) = runtime.counters();
    let layout = runtime.layout();
    let listeners: Vec<Listener> = layout
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.removed)
        .map(|(i, slot)| {
            let l = &slot.config;
            let lc = total.listeners.get(i).copied().unwrap_or_default();
            let servers: Vec<Server> = slot
                .servers
                .iter()
                .enumerate()
                .filter_map(|(s, server)| {
                    let sc = total.servers.get(i).and_then(|v| v.get(s)).copied().unwrap_or_default();
                    if server.removed && sc.active + sc.inactive == 0 {
                        return None;
                    }
                    Some(Server {
                        addr: server.addr.to_string(),
                        weight: server.weight,
                        removed: server.removed,
                        healthy: server.target.is_none_or(|t| runtime.target_up(t)),
                        active_conns: sc.active,
                        inactive_conns: sc.inactive,
                        conns_total: sc.conns_total,
                        packets_in: sc.packets_in,
                        bytes_in: sc.bytes_in,
                        packets_out: sc.packets_out,
                        bytes_out: sc.bytes_out,
                    })
                })
                .collect();
            Listener {
                name: l.name.clone(),
                vip: l.vip.to_string(),
                port: l.port,
                protocol: format!("{:?}", l.protocol).to_lowercase(),
                scheduler: l.scheduler.as_str().to_string(),
                forwarding: format!("{:?}", l.forwarding).to_lowercase(),
                group: l.group.clone(),
                conns_total: lc.conns_total,
                conns_per_sec: runtime.conns_per_sec(i),
                packets_in: lc.packets_in,
                bytes_in: lc.bytes_in,
                packets_out: lc.packets_out,
                bytes_out: lc.bytes_out,
                no_server: lc.no_server,
                stateless: lc.stateless,
                syn_proxy: syn_proxy_mode(l, &runtime.config().l4),
                syn_proxy_on: lc.syn_proxy_on,
                syn_cookies_sent: lc.syn_cookies_sent,
                syn_cookies_valid: lc.syn_cookies_valid,
                syn_proxy_server_resets: lc.syn_proxy_server_resets,
                drops: drops::all()
                    .filter(|r| lc.drops[r.reason.index()] > 0)
                    .map(|r| (r.name.to_string(), lc.drops[r.reason.index()]))
                    .collect(),
                servers,
            }
        })
        .collect();
    let workers: Vec<L4Worker> = per_worker
        .iter()
        .enumerate()
        .map(|(w, c)| L4Worker {
            worker: w,
            conns: c.conns,
            handoff_out: c.handoff_out,
            handoff_in: c.handoff_in,
            expired: c.expired,
            evicted: c.evicted,
            rescheduled: c.rescheduled,
            icmp_forwarded: c.icmp_forwarded,
            local_ports: local_ports(&c.local_ports, true),
            pressure: c.pressure,
            short_timeouts: c.short_timeouts,
        })
        .collect();
    L4 {
        conns: total.conns,
        evicted: total.evicted,
        local_ports: local_ports(&total.local_ports, false),
        pressure: total.pressure,
        short_timeouts: total.short_timeouts,
        listeners,
        workers,
        health: health(&runtime.health_counters()),
    }
}

/// A listener's SYN proxy mode as the stats show it (`off` for listeners that cannot have one).
fn syn_proxy_mode(l: &xlb_l4::config::ListenerConfig, l4: &xlb_l4::config::L4Config) -> String {
    use xlb_l4::config::SynProxyMode;
    let eligible =
        l.protocol == xlb_l4::config::ListenerProtocol::Tcp && l.forwarding == xlb_l4::conn::Forwarding::Fullnat;
    let mode = if eligible {
        l.syn_proxy.unwrap_or(l4.syn_proxy)
    } else {
        SynProxyMode::Off
    };
    match mode {
        SynProxyMode::Off => "off",
        SynProxyMode::Auto => "auto",
        SynProxyMode::Always => "always",
    }
    .to_string()
}

/// The health checker's counters.
pub fn health(h: &HealthCounters) -> Health {
    Health {
        probes: h.probes,
        successes: h.successes,
        failures: h.failures,
        timeouts: h.timeouts,
        bad_checksum: h.bad_checksum,
        port_waits: h.port_waits,
    }
}

/// The L7 section: `None` without `http` listeners.
pub fn l7(runtime: &L4Runtime) -> Option<xlb_api::stats::L7> {
    let (total, configured) = runtime.l7_counters();
    configured.then(|| xlb_api::stats::L7 {
        counts: xlb_l7::stage::counters::L7Count::ALL
            .iter()
            .map(|&c| (c.name().to_string(), total.get(c)))
            .chain(runtime.key_server_counts())
            .collect(),
        sessions: total.sessions,
        connections: total.connections,
        idle_upstreams: total.idle_upstreams,
        buffer_bytes: total.buffer_bytes,
        upstream_reuse: total.upstream_reuse(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xlb_stack::drops::DropReason;

    #[test]
    fn totals_sum_counters_and_drops() {
        let mut a = WorkerSnapshot::default();
        a.rings.rx_frames = 3;
        a.stack.drop(DropReason::TcpNoListener);
        let mut b = WorkerSnapshot::default();
        b.rings.rx_frames = 4;
        b.stack.drop(DropReason::TcpNoListener);
        b.stack.drop(DropReason::NotOurMac);
        let t = totals(&[worker("w0", &a), worker("w1", &b)]);
        let t = serde_json::to_value(&t).unwrap();
        assert_eq!(t["rx_frames"], 7);
        assert_eq!(t["drops"]["tcp_no_listener"], 2);
        assert_eq!(t["drops"]["not_our_mac"], 1);
        assert!(t.get("name").is_none());
    }

    #[test]
    fn a_worker_has_every_drop_reason_and_the_batch_histogram() {
        let w = serde_json::to_value(worker("w0", &WorkerSnapshot::default())).unwrap();
        for r in drops::all() {
            assert_eq!(w["drops"][r.name], 0, "{}", r.name);
        }
        assert_eq!(w["batch_us"]["le"].as_array().unwrap().len(), BATCH_BUCKETS);
        assert!(w["batch_us"]["le"][BATCH_BUCKETS - 1].is_null());
    }
}
