//! The stats document served at `GET /v1/stats`: per-worker counters, drops by reason, filter verdicts.

use serde_json::{json, Map, Value};
use xlb_l4::health::HealthCounters;
use xlb_stack::counters::{BatchHistogram, DropReason, WorkerSnapshot, BATCH_BUCKETS};
use xlb_stack::xsk::filter::FilterStats;

use crate::lb::L4Runtime;

/// One worker's counters as JSON.
pub fn worker_json(name: &str, s: &WorkerSnapshot) -> Value {
    let drops: Map<String, Value> = DropReason::ALL
        .iter()
        .map(|r| (r.name().to_string(), json!(s.stack.drops_of(*r))))
        .collect();
    json!({
        "name": name,
        "rx_frames": s.rings.rx_frames,
        "rx_bytes": s.rings.rx_bytes,
        "tx_frames": s.rings.tx_frames,
        "tx_bytes": s.rings.tx_bytes,
        "tx_ring_full": s.rings.tx_ring_full,
        "fill_starved": s.rings.fill_starved,
        "kernel_rx_ring_full": s.rings.kernel_rx_ring_full,
        "kernel_fill_ring_empty": s.rings.kernel_fill_ring_empty,
        "kernel_rx_dropped": s.rings.kernel_rx_dropped,
        "arp_replies": s.stack.arp_replies,
        "arp_requests": s.stack.arp_requests,
        "icmp_echo_replies": s.stack.icmp_echo_replies,
        "tcp_resets": s.stack.tcp_resets,
        "icmp_unreachables": s.stack.icmp_unreachables,
        "drops": drops,
        "free_frames": s.free_frames,
        "batch_us": {
            "le": (0..BATCH_BUCKETS).map(BatchHistogram::bound_us).collect::<Vec<_>>(),
            "counts": s.batches.buckets.to_vec(),
            "sum": s.batches.sum_us,
        },
        "total_frames": s.total_frames,
    })
}

/// One interface's filter verdicts as JSON.
pub fn filter_json(name: &str, mode: &str, f: &FilterStats) -> Value {
    json!({
        "name": name,
        "xdp_mode": mode,
        "to_socket": f.to_socket,
        "passed_not_ours": f.passed_not_ours,
        "passed_no_socket": f.passed_no_socket,
        "passed_malformed": f.passed_malformed,
    })
}

/// Sums the numeric fields (and the `drops` map) of several worker documents.
pub fn totals(workers: &[Value]) -> Value {
    let mut total = Map::new();
    for w in workers {
        for (k, v) in w.as_object().into_iter().flatten() {
            match (k.as_str(), v) {
                ("drops", Value::Object(d)) => {
                    let entry = total.entry("drops").or_insert_with(|| json!({}));
                    for (reason, n) in d {
                        let cur = entry[reason].as_u64().unwrap_or(0);
                        entry[reason] = json!(cur + n.as_u64().unwrap_or(0));
                    }
                }
                (_, Value::Number(n)) => {
                    let cur = total.get(k).and_then(Value::as_u64).unwrap_or(0);
                    total.insert(k.clone(), json!(cur + n.as_u64().unwrap_or(0)));
                }
                _ => {}
            }
        }
    }
    Value::Object(total)
}

/// Listeners and their servers, summed over workers, with health: what `xlbctl list` shows. Removed listeners
/// are left out; removed servers are listed (marked) while connections still use them.
pub fn l4_json(runtime: &L4Runtime) -> Value {
    let (total, per_worker) = runtime.counters();
    let layout = runtime.layout();
    let listeners: Vec<Value> = layout
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.removed)
        .map(|(i, slot)| {
            let l = &slot.config;
            let lc = total.listeners.get(i).copied().unwrap_or_default();
            let servers: Vec<Value> = slot
                .servers
                .iter()
                .enumerate()
                .filter_map(|(s, server)| {
                    let sc = total.servers.get(i).and_then(|v| v.get(s)).copied().unwrap_or_default();
                    if server.removed && sc.active + sc.inactive == 0 {
                        return None;
                    }
                    Some(json!({
                        "addr": server.addr.to_string(),
                        "weight": server.weight,
                        "removed": server.removed,
                        "healthy": server.target.is_none_or(|t| runtime.target_up(t)),
                        "active_conns": sc.active,
                        "inactive_conns": sc.inactive,
                        "conns_total": sc.conns_total,
                        "packets_in": sc.packets_in,
                        "bytes_in": sc.bytes_in,
                        "packets_out": sc.packets_out,
                        "bytes_out": sc.bytes_out,
                    }))
                })
                .collect();
            json!({
                "name": l.name,
                "vip": l.vip.to_string(),
                "port": l.port,
                "protocol": format!("{:?}", l.protocol).to_lowercase(),
                "scheduler": l.scheduler.as_str(),
                "forwarding": format!("{:?}", l.forwarding).to_lowercase(),
                "group": l.group,
                "conns_total": lc.conns_total,
                "conns_per_sec": runtime.conns_per_sec(i),
                "packets_in": lc.packets_in,
                "bytes_in": lc.bytes_in,
                "packets_out": lc.packets_out,
                "bytes_out": lc.bytes_out,
                "no_server": lc.no_server,
                "stateless": lc.stateless,
                "drops": DropReason::ALL
                    .iter()
                    .filter(|r| lc.drops[**r as usize] > 0)
                    .map(|r| (r.name().to_string(), json!(lc.drops[*r as usize])))
                    .collect::<Map<String, Value>>(),
                "servers": servers,
            })
        })
        .collect();
    let workers: Vec<Value> = per_worker
        .iter()
        .enumerate()
        .map(|(w, c)| {
            let p = &c.local_ports;
            json!({
                "worker": w,
                "conns": c.conns,
                "handoff_out": c.handoff_out,
                "handoff_in": c.handoff_in,
                "expired": c.expired,
                "evicted": c.evicted,
                "rescheduled": c.rescheduled,
                "icmp_forwarded": c.icmp_forwarded,
                "local_ports": {
                    "pools": p.pools,
                    "per_pool": p.per_pool,
                    "in_use": p.in_use,
                    "busiest_pool": p.busiest,
                    "quarantined": p.quarantined,
                    "quarantine_overflow": p.quarantine_overflow,
                },
            })
        })
        .collect();
    let p = &total.local_ports;
    let local_ports = json!({
        "pools": p.pools,
        "per_pool": p.per_pool,
        "in_use": p.in_use,
        "busiest_pool": p.busiest,
        "quarantined": p.quarantined,
    });
    json!({
        "conns": total.conns,
        "evicted": total.evicted,
        "local_ports": local_ports,
        "listeners": listeners,
        "workers": workers,
        "health": health_json(&runtime.health_counters()),
    })
}

/// The health checker's counters as JSON.
pub fn health_json(h: &HealthCounters) -> Value {
    json!({
        "probes": h.probes,
        "successes": h.successes,
        "failures": h.failures,
        "timeouts": h.timeouts,
        "bad_checksum": h.bad_checksum,
        "port_waits": h.port_waits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_counters_and_drops() {
        let mut a = WorkerSnapshot::default();
        a.rings.rx_frames = 3;
        a.stack.drop(DropReason::TcpNoListener);
        let mut b = WorkerSnapshot::default();
        b.rings.rx_frames = 4;
        b.stack.drop(DropReason::TcpNoListener);
        b.stack.drop(DropReason::NotOurMac);
        let t = totals(&[worker_json("w0", &a), worker_json("w1", &b)]);
        assert_eq!(t["rx_frames"], 7);
        assert_eq!(t["drops"]["tcp_no_listener"], 2);
        assert_eq!(t["drops"]["not_our_mac"], 1);
        assert!(t.get("name").is_none());
    }
}
