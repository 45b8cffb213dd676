//! Prometheus metrics: the stats document ([`xlb_api::StatsDoc`], what `GET /v1/stats` serves) rendered in the
//! Prometheus text exposition format (version 0.0.4) by the `prometheus-client` crate, served over HTTP at
//! `GET /metrics` on `node.metrics_address`.
//!
//! [`render`] is a pure function of the typed document, so whatever the control API reports is what Prometheus
//! scrapes, and a field renamed in the document is a compile error here. The document is handed to
//! `prometheus-client` as a [`Collector`] (a snapshot, encoded once per scrape); the library writes the `# HELP`
//! and `# TYPE` lines, the `_total` suffix of counters, label escaping and the histogram series. Counters end in
//! `_total`, gauges do not; every family is declared once with all its samples right after it; a family with no
//! samples is left out.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use xlb_api::stats as doc;
use xlb_api::StatsDoc;

use crate::http::{self, HttpServer, Limits, Listener, Response};

/// Produces the current stats document.
pub type Source = dyn Fn() -> StatsDoc + Send + Sync;

/// The `Content-Type` of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The health checker's counters (`l4.health` in the stats document): (field, metric, help).
const HEALTH_COUNTERS: &[Metric<doc::Health>] = &[
    (
        |x: &doc::Health| x.probes,
        "xlb_health_probes_total",
        "Health-check probes started.",
    ),
    (
        |x: &doc::Health| x.successes,
        "xlb_health_successes_total",
        "Health-check probes that succeeded.",
    ),
    (
        |x: &doc::Health| x.failures,
        "xlb_health_failures_total",
        "Health-check probes that failed (timeouts included).",
    ),
    (
        |x: &doc::Health| x.timeouts,
        "xlb_health_timeouts_total",
        "Health-check probes that timed out.",
    ),
    (
        |x: &doc::Health| x.bad_checksum,
        "xlb_health_bad_checksum_total",
        "Replies to live health-check probes discarded for a bad TCP/UDP/ICMP checksum (partial checksums from a \
         server with TX checksum offload on veth or a virtual NIC: see the log).",
    ),
    (
        |x: &doc::Health| x.port_waits,
        "xlb_health_port_waits_total",
        "Times a due health-check probe waited because every probe port was in flight.",
    ),
];

/// Per-worker counters of the stats document: (field, metric, help).
const WORKER_COUNTERS: &[Metric<doc::WorkerCounters>] = &[
    (
        |x: &doc::WorkerCounters| x.rx_frames,
        "xlb_worker_rx_frames_total",
        "Frames received from the AF_XDP RX rings.",
    ),
    (
        |x: &doc::WorkerCounters| x.rx_bytes,
        "xlb_worker_rx_bytes_total",
        "Bytes received from the AF_XDP RX rings.",
    ),
    (
        |x: &doc::WorkerCounters| x.tx_frames,
        "xlb_worker_tx_frames_total",
        "Frames sent through the AF_XDP TX rings.",
    ),
    (
        |x: &doc::WorkerCounters| x.tx_bytes,
        "xlb_worker_tx_bytes_total",
        "Bytes sent through the AF_XDP TX rings.",
    ),
    (
        |x: &doc::WorkerCounters| x.tx_ring_full,
        "xlb_worker_tx_ring_full_total",
        "Batches in which a TX ring could not take every frame.",
    ),
    (
        |x: &doc::WorkerCounters| x.fill_starved,
        "xlb_worker_fill_starved_total",
        "Times the fill ring could not be topped up because no frame was free.",
    ),
    (
        |x: &doc::WorkerCounters| x.kernel_rx_ring_full,
        "xlb_worker_kernel_rx_ring_full_total",
        "Frames the kernel dropped because the RX ring was full (XDP_STATISTICS).",
    ),
    (
        |x: &doc::WorkerCounters| x.kernel_fill_ring_empty,
        "xlb_worker_kernel_fill_ring_empty_total",
        "Frames the kernel dropped for lack of fill-ring entries (XDP_STATISTICS).",
    ),
    (
        |x: &doc::WorkerCounters| x.kernel_rx_dropped,
        "xlb_worker_kernel_rx_dropped_total",
        "Frames the kernel dropped for other reasons (XDP_STATISTICS).",
    ),
    (
        |x: &doc::WorkerCounters| x.arp_requests,
        "xlb_arp_requests_total",
        "ARP requests sent to resolve neighbours.",
    ),
    (
        |x: &doc::WorkerCounters| x.arp_replies,
        "xlb_arp_replies_total",
        "ARP requests for the appliance's addresses answered.",
    ),
    (
        |x: &doc::WorkerCounters| x.icmp_echo_replies,
        "xlb_icmp_echo_replies_total",
        "ICMP echo requests answered.",
    ),
    (
        |x: &doc::WorkerCounters| x.tcp_resets,
        "xlb_tcp_resets_total",
        "TCP resets sent.",
    ),
    (
        |x: &doc::WorkerCounters| x.icmp_unreachables,
        "xlb_icmp_unreachables_total",
        "ICMP destination-unreachable messages sent.",
    ),
];

/// Per-worker gauges of the stats document: (field, metric, help).
const WORKER_GAUGES: &[Metric<doc::WorkerCounters>] = &[
    (
        |x: &doc::WorkerCounters| x.free_frames,
        "xlb_worker_free_frames",
        "UMEM frames owned by userspace now (free pool and fill ring).",
    ),
    (
        |x: &doc::WorkerCounters| x.total_frames,
        "xlb_worker_umem_frames",
        "UMEM frames of the worker in total.",
    ),
];

/// Per-listener counters and gauges of the stats document: (field, metric, help).
const LISTENER_VALUES: &[Metric<doc::Listener>] = &[
    (
        |x: &doc::Listener| x.conns_total,
        "xlb_listener_connections_total",
        "Connections created for the listener.",
    ),
    (
        |x: &doc::Listener| x.conns_per_sec,
        "xlb_listener_new_connections_per_second",
        "New connections per second (sampled every second).",
    ),
    (
        |x: &doc::Listener| x.no_server,
        "xlb_listener_no_server_total",
        "New flows refused because no server was available.",
    ),
    (
        |x: &doc::Listener| x.stateless,
        "xlb_listener_stateless_total",
        "New flows forwarded without a connection table entry (table full, or DR with Maglev).",
    ),
    (
        |x: &doc::Listener| x.syn_proxy_on,
        "xlb_listener_syn_proxy_active",
        "Workers whose SYN proxy (SYN cookies) is on for the listener now.",
    ),
    (
        |x: &doc::Listener| x.syn_cookies_sent,
        "xlb_listener_syn_cookies_sent_total",
        "SYNs the SYN proxy answered with a cookie (no entry, local port or server for them).",
    ),
    (
        |x: &doc::Listener| x.syn_cookies_valid,
        "xlb_listener_syn_cookies_valid_total",
        "ACKs with a valid SYN cookie: connections the SYN proxy opened to a server.",
    ),
    (
        |x: &doc::Listener| x.syn_proxy_server_resets,
        "xlb_listener_syn_proxy_server_resets_total",
        "Server answers to the SYN proxy's SYN that acknowledged something else (the server held the tuple): reset.",
    ),
];

/// Per-server gauges and counters of the stats document: (field, metric, help).
const SERVER_VALUES: &[Metric<doc::Server>] = &[
    (
        |x: &doc::Server| u64::from(x.healthy),
        "xlb_server_up",
        "1 if the server passes its health checks, else 0.",
    ),
    (
        |x: &doc::Server| u64::from(x.weight),
        "xlb_server_weight",
        "The server's scheduling weight.",
    ),
    (
        |x: &doc::Server| x.active_conns,
        "xlb_server_active_connections",
        "Connections to the server in an active state (established TCP, UDP).",
    ),
    (
        |x: &doc::Server| x.inactive_conns,
        "xlb_server_inactive_connections",
        "Other connections to the server (handshake, closing).",
    ),
    (
        |x: &doc::Server| x.conns_total,
        "xlb_server_connections_total",
        "Connections scheduled to the server.",
    ),
];

/// An XDP filter verdict: the `verdict` label value and its count.
type Verdict = (&'static str, fn(&doc::Interface) -> u64);

/// XDP filter verdicts (the `verdict` label value and its count).
const XDP_VERDICTS: &[Verdict] = &[
    ("to_socket", |i| i.to_socket),
    ("passed_not_ours", |i| i.passed_not_ours),
    ("passed_no_socket", |i| i.passed_no_socket),
    ("passed_malformed", |i| i.passed_malformed),
];

/// A metric read from a part of the document: (value, metric name, help).
type Metric<T> = (fn(&T) -> u64, &'static str, &'static str);

/// Labels of one sample, in order.
type Labels = Vec<(&'static str, String)>;

/// One metric family of a scrape: its declaration and its samples.
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Labels, u64)>,
}

impl Family {
    /// A family whose type follows its name: `..._total` is a counter, anything else a gauge.
    fn new(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            samples: Vec::new(),
        }
    }

    fn sample(&mut self, labels: Labels, value: u64) {
        self.samples.push((labels, value));
    }

    /// Encodes the family; nothing if it has no samples.
    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.samples.is_empty() {
            return Ok(());
        }
        // prometheus-client adds the `_total` of a counter itself.
        let (name, kind) = match self.name.strip_suffix("_total") {
            Some(base) => (base, MetricType::Counter),
            None => (self.name, MetricType::Gauge),
        };
        let mut metric = encoder.encode_descriptor(name, self.help, None, kind)?;
        for (labels, value) in &self.samples {
            let write = |sample: &mut MetricEncoder| match kind {
                MetricType::Counter => sample.encode_counter::<NoLabelSet, _, u64>(value, None),
                _ => sample.encode_gauge(value),
            };
            if labels.is_empty() {
                write(&mut metric)?;
            } else {
                write(&mut metric.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// The workers' turn-duration histograms (`batch_us`), in seconds.
struct BatchHistograms<'a>(&'a [doc::Worker]);

impl BatchHistograms<'_> {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(
            "xlb_worker_batch_duration_seconds",
            "Time a worker's turn with work took: rx batch, processing, tx batch.",
            None,
            MetricType::Histogram,
        )?;
        for w in self.0 {
            let h = &w.batch_us;
            let buckets: Vec<(f64, u64)> =
                h.le.iter()
                    .zip(&h.counts)
                    .map(|(le, n)| (le.map_or(f64::INFINITY, |us| us as f64 / 1e6), *n))
                    .collect();
            let count = h.counts.iter().sum();
            let labels = [("worker", w.name.as_str())];
            metric
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(h.sum as f64 / 1e6, count, &buckets, None)?;
        }
        Ok(())
    }
}

/// A stats document as a `prometheus-client` collector: encoded once, on the scrape it was taken for.
#[derive(Debug)]
struct Snapshot(StatsDoc);

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let d = &self.0;
        for family in families_before_histogram(d) {
            family.encode(&mut encoder)?;
        }
        BatchHistograms(&d.workers).encode(&mut encoder)?;
        for family in families_after_histogram(d) {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// Renders the stats document as Prometheus text exposition format 0.0.4.
///
/// Label `worker` is the worker's name (`w<core>`); the L4 section lists workers by index, in the same order as the
/// document's `workers`, so its samples carry the same names. Listeners are labelled `listener`, `vip`, `port` and
/// `protocol`; servers `listener` and `server` (the server's address).
pub fn render(doc: &StatsDoc) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(doc.clone())));
    let mut out = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    out
}

/// Node and worker families (before the batch histogram).
fn families_before_histogram(d: &StatsDoc) -> Vec<Family> {
    let mut out = Vec::new();
    let mut up = Family::new("xlb_up", "1 while the xlb daemon serves metrics.");
    up.sample(vec![], 1);
    out.push(up);
    let mut info = Family::new("xlb_node_info", "The node's name, as a label; always 1.");
    info.sample(vec![("node", d.node.clone())], 1);
    out.push(info);
    let mut uptime = Family::new("xlb_uptime_seconds", "Seconds since the daemon started.");
    uptime.sample(vec![], d.uptime_s);
    out.push(uptime);
    for (value, name, help) in WORKER_COUNTERS.iter().chain(WORKER_GAUGES) {
        let mut family = Family::new(name, help);
        for w in &d.workers {
            family.sample(vec![("worker", w.name.clone())], value(&w.counters));
        }
        out.push(family);
    }
    out
}

/// The name of the worker with index `i` in the document (its index as text if there is none).
fn worker_name(d: &StatsDoc, i: usize) -> String {
    d.workers.get(i).map_or_else(|| i.to_string(), |w| w.name.clone())
}

/// The labels every per-listener sample carries, followed by `extra`.
fn listener_labels(l: &doc::Listener, extra: &[(&'static str, &str)]) -> Labels {
    let mut labels = vec![
        ("listener", l.name.clone()),
        ("vip", l.vip.clone()),
        ("port", l.port.to_string()),
        ("protocol", l.protocol.clone()),
    ];
    labels.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    labels
}

/// Drops, XDP, L4 and health families (after the batch histogram).
fn families_after_histogram(d: &StatsDoc) -> Vec<Family> {
    let mut out = Vec::new();
    let mut drops = Family::new("xlb_drops_total", "Frames dropped by the worker, by reason.");
    for w in &d.workers {
        for (reason, n) in &w.counters.drops {
            drops.sample(vec![("worker", w.name.clone()), ("reason", reason.clone())], *n);
        }
    }
    out.push(drops);

    let mut xdp = Family::new(
        "xlb_xdp_frames_total",
        "Frames seen by the interface's XDP filter, by verdict (to_socket: redirected to an AF_XDP socket).",
    );
    for iface in &d.interfaces {
        for (verdict, value) in XDP_VERDICTS {
            let labels = vec![
                ("interface", iface.name.clone()),
                ("xdp_mode", iface.xdp_mode.clone()),
                ("verdict", verdict.to_string()),
            ];
            xdp.sample(labels, value(iface));
        }
    }
    out.push(xdp);

    // L4: connection tables and hand-offs.
    let l4 = &d.l4;
    let mut conns = Family::new(
        "xlb_conntrack_entries",
        "Connections in the connection tables of all workers.",
    );
    conns.sample(vec![], l4.conns);
    out.push(conns);
    type PerWorker = (&'static str, &'static str, fn(&doc::L4Worker) -> u64);
    const PER_WORKER: &[PerWorker] = &[
        (
            "xlb_worker_conntrack_entries",
            "Connections in the worker's connection table.",
            |w| w.conns,
        ),
        (
            "xlb_conntrack_expired_total",
            "Connections expired from the worker's table.",
            |w| w.expired,
        ),
        (
            "xlb_conntrack_rescheduled_total",
            "Entries ended early so the flow is scheduled again (new SYN after close or to a down server).",
            |w| w.rescheduled,
        ),
        (
            "xlb_conntrack_evicted_total",
            "Closed or closing connections evicted from a full table to make room for a new flow.",
            |w| w.evicted,
        ),
        (
            "xlb_local_port_pools",
            "FULLNAT local port pools in use: one per (local IP, server) pair.",
            |w| w.local_ports.pools,
        ),
        (
            "xlb_local_port_pool_size",
            "FULLNAT local ports each (local IP, server) pool has on the worker.",
            |w| w.local_ports.per_pool,
        ),
        (
            "xlb_local_ports_in_use",
            "FULLNAT local ports in use (including quarantined ones), over all pools.",
            |w| w.local_ports.in_use,
        ),
        (
            "xlb_local_ports_busiest_pool",
            "FULLNAT local ports in use in the worker's fullest pool (compare with xlb_local_port_pool_size).",
            |w| w.local_ports.busiest_pool,
        ),
        (
            "xlb_local_ports_quarantined",
            "FULLNAT local ports held back because their server may still hold the tuple in TIME_WAIT.",
            |w| w.local_ports.quarantined,
        ),
        (
            "xlb_conntrack_pressure",
            "1 while the worker's table or fullest local port pool is above [l4] pressure_percent (short timeouts apply).",
            |w| w.pressure,
        ),
        (
            "xlb_conntrack_short_timeouts_total",
            "Entries given the short timeout under pressure (half-open TCP, unanswered UDP).",
            |w| w.short_timeouts,
        ),
        (
            "xlb_icmp_errors_forwarded_total",
            "ICMP errors about a forwarded flow (e.g. fragmentation needed) passed on to the other end.",
            |w| w.icmp_forwarded,
        ),
    ];
    for (name, help, value) in PER_WORKER {
        let mut family = Family::new(name, help);
        for w in &l4.workers {
            family.sample(vec![("worker", worker_name(d, w.worker))], value(w));
        }
        out.push(family);
    }
    let mut handoff = Family::new(
        "xlb_handoff_frames_total",
        "Frames handed to another worker owning their connection (out), or received from one (in).",
    );
    for w in &l4.workers {
        let worker = worker_name(d, w.worker);
        handoff.sample(
            vec![("worker", worker.clone()), ("direction", "in".into())],
            w.handoff_in,
        );
        handoff.sample(vec![("worker", worker), ("direction", "out".into())], w.handoff_out);
    }
    out.push(handoff);

    // L4: the health checker.
    for (value, name, help) in HEALTH_COUNTERS {
        let mut family = Family::new(name, help);
        family.sample(vec![], value(&l4.health));
        out.push(family);
    }

    // L4: listeners and their servers.
    let mut listener_info = Family::new(
        "xlb_listener_info",
        "The listener's scheduler, forwarding method and server group, as labels; always 1.",
    );
    for l in &l4.listeners {
        let extra = [
            ("scheduler", l.scheduler.as_str()),
            ("forwarding", l.forwarding.as_str()),
            ("group", l.group.as_str()),
        ];
        listener_info.sample(listener_labels(l, &extra), 1);
    }
    out.push(listener_info);
    for (value, name, help) in LISTENER_VALUES {
        let mut family = Family::new(name, help);
        for l in &l4.listeners {
            family.sample(listener_labels(l, &[]), value(l));
        }
        out.push(family);
    }
    let mut packets = Family::new(
        "xlb_listener_packets_total",
        "Packets of the listener's flows: in from clients, out to clients (FULLNAT replies).",
    );
    let mut bytes = Family::new(
        "xlb_listener_bytes_total",
        "Bytes (IP length) of the listener's flows: in from clients, out to clients (FULLNAT replies).",
    );
    for l in &l4.listeners {
        for (direction, p, b) in [("in", l.packets_in, l.bytes_in), ("out", l.packets_out, l.bytes_out)] {
            packets.sample(listener_labels(l, &[("direction", direction)]), p);
            bytes.sample(listener_labels(l, &[("direction", direction)]), b);
        }
    }
    out.push(packets);
    out.push(bytes);
    let mut listener_drops = Family::new(
        "xlb_listener_drops_total",
        "Packets of the listener's flows dropped or refused, by reason (also in xlb_drops_total).",
    );
    for l in &l4.listeners {
        for (reason, n) in &l.drops {
            listener_drops.sample(listener_labels(l, &[("reason", reason)]), *n);
        }
    }
    out.push(listener_drops);

    let servers: Vec<(&doc::Listener, &doc::Server)> = l4
        .listeners
        .iter()
        .flat_map(|l| l.servers.iter().map(move |s| (l, s)))
        .collect();
    let server_labels = |l: &doc::Listener, s: &doc::Server| -> Labels {
        vec![("listener", l.name.clone()), ("server", s.addr.clone())]
    };
    for (value, name, help) in SERVER_VALUES {
        let mut family = Family::new(name, help);
        for (l, s) in &servers {
            family.sample(server_labels(l, s), value(s));
        }
        out.push(family);
    }
    let mut packets = Family::new(
        "xlb_server_packets_total",
        "Packets forwarded to the server (in) and from it (out, FULLNAT).",
    );
    let mut bytes = Family::new(
        "xlb_server_bytes_total",
        "Bytes forwarded to the server (in) and from it (out, FULLNAT).",
    );
    for (l, s) in &servers {
        for (direction, p, b) in [("in", s.packets_in, s.bytes_in), ("out", s.packets_out, s.bytes_out)] {
            let mut labels = server_labels(l, s);
            labels.push(("direction", direction.to_string()));
            packets.sample(labels.clone(), p);
            bytes.sample(labels, b);
        }
    }
    out.push(packets);
    out.push(bytes);
    out
}

/// The metrics HTTP server. Dropping it stops it.
pub struct MetricsServer {
    addr: SocketAddr,
    _server: HttpServer,
}

/// The metrics endpoint's limits: a scrape has no body.
const LIMITS: Limits = Limits {
    max_body: 0,
    header_timeout: Duration::from_secs(5),
    conn_timeout: Duration::from_secs(10),
};

/// Binds `addr` and serves `GET /metrics` from [`render`]`(&source())` on a thread of its own.
pub fn start(addr: SocketAddr, source: Arc<Source>) -> Result<MetricsServer, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("node.metrics_address: binding {addr}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("node.metrics_address: {addr}: {e}"))?;
    let service: Arc<http::Service> = Arc::new(move |req: http::Request| {
        let path = req.path.split_once('?').map_or(req.path.as_str(), |(p, _)| p);
        respond(&req.method, path, &*source)
    });
    let server = http::start("xlb-metrics", Listener::Tcp(listener), LIMITS, service)
        .map_err(|e| format!("node.metrics_address: {addr}: {e}"))?;
    Ok(MetricsServer { addr, _server: server })
}

impl MetricsServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The answer to `method path`.
fn respond(method: &str, path: &str, source: &Source) -> Response {
    let text = |status, content_type, body: String| Response {
        status,
        content_type,
        body: body.into_bytes(),
        allow: (status == 405).then_some("GET"),
    };
    match (method, path) {
        ("GET", "/metrics") => text(200, CONTENT_TYPE, render(&source())),
        ("GET", "/") => text(
            200,
            "text/html; charset=utf-8",
            "<html><head><title>xlb</title></head><body><h1>xlb</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n"
                .to_string(),
        ),
        (_, "/" | "/metrics") => text(405, "text/plain", format!("{method} not allowed on {path}\n")),
        _ => text(404, "text/plain", format!("no page {path}; metrics are at /metrics\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_parse::{Sample, Scrape, Value as Sampled};
    use std::collections::HashSet;

    /// A stats document shaped like the daemon's: two workers, one interface, two listeners (one with a name that
    /// needs escaping), three servers.
    fn document() -> StatsDoc {
        let worker = |name: &str, rx: u64, tcp_no_listener: u64| doc::Worker {
            name: name.into(),
            counters: doc::WorkerCounters {
                rx_frames: rx,
                rx_bytes: rx * 100,
                tx_frames: 5,
                tx_bytes: 500,
                tx_ring_full: 0,
                fill_starved: 1,
                kernel_rx_ring_full: 2,
                kernel_fill_ring_empty: 3,
                kernel_rx_dropped: 4,
                arp_replies: 6,
                arp_requests: 7,
                icmp_echo_replies: 8,
                tcp_resets: 9,
                icmp_unreachables: 10,
                drops: [
                    ("tcp_no_listener".to_string(), tcp_no_listener),
                    ("not_our_mac".to_string(), 0),
                ]
                .into_iter()
                .collect(),
                free_frames: 4000,
                total_frames: 4096,
            },
            batch_us: doc::BatchHistogram {
                le: vec![Some(1), Some(2), None],
                counts: vec![3, 1, 1],
                sum: 9,
            },
        };
        let workers = vec![worker("w0", 10, 3), worker("w1", 20, 0)];
        let server = |addr: &str, healthy: bool, active: u64| doc::Server {
            addr: addr.into(),
            weight: 100,
            removed: false,
            healthy,
            active_conns: active,
            inactive_conns: 1,
            conns_total: 42,
            packets_in: 1000,
            bytes_in: 64000,
            packets_out: 900,
            bytes_out: 18_446_744_073_709_551_615,
        };
        let l4_worker = |w: usize, conns: u64, base: u64| doc::L4Worker {
            worker: w,
            conns,
            handoff_out: base + 1,
            handoff_in: base + 2,
            expired: base + 3,
            ..doc::L4Worker::default()
        };
        StatsDoc {
            node: "lb-a".into(),
            uptime_s: 3600,
            totals: crate::stats::totals(&workers),
            workers,
            interfaces: vec![doc::Interface {
                name: "eth1".into(),
                xdp_mode: "native".into(),
                to_socket: 30,
                passed_not_ours: 2,
                passed_no_socket: 0,
                passed_malformed: 1,
                datapath_ok: None,
                sockets: None,
            }],
            datapath_ok: None,
            l4: doc::L4 {
                conns: 7,
                listeners: vec![
                    doc::Listener {
                        name: "web".into(),
                        vip: "10.0.0.10".into(),
                        port: 80,
                        protocol: "tcp".into(),
                        scheduler: "wrr".into(),
                        forwarding: "fullnat".into(),
                        group: "web-servers".into(),
                        conns_total: 42,
                        conns_per_sec: 3,
                        packets_in: 2000,
                        bytes_in: 128000,
                        packets_out: 1800,
                        bytes_out: 900000,
                        servers: vec![server("10.1.0.1:8080", true, 4), server("10.1.0.2:8080", false, 0)],
                        ..doc::Listener::default()
                    },
                    doc::Listener {
                        name: "say \"hi\"\\now\nplease".into(),
                        vip: "10.0.0.11".into(),
                        port: 53,
                        protocol: "udp".into(),
                        scheduler: "rr".into(),
                        forwarding: "fullnat".into(),
                        group: "dns".into(),
                        conns_total: 1,
                        packets_in: 1,
                        bytes_in: 60,
                        packets_out: 1,
                        bytes_out: 90,
                        no_server: 5,
                        stateless: 2,
                        drops: [("no_healthy_server".to_string(), 5), ("handoff_full".to_string(), 1)]
                            .into_iter()
                            .collect(),
                        servers: vec![server("10.1.0.3:53", true, 0)],
                        ..doc::Listener::default()
                    },
                ],
                workers: vec![l4_worker(0, 4, 10), l4_worker(1, 3, 20)],
                health: doc::Health {
                    probes: 40,
                    successes: 30,
                    failures: 10,
                    timeouts: 9,
                    bad_checksum: 9,
                    port_waits: 0,
                },
                ..doc::L4::default()
            },
            ha: None,
        }
    }

    fn parse(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("the exposition parses")
    }

    /// The one sample of `metric` whose labels include all of `labels`.
    fn find<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> &'a Sample {
        let found: Vec<&Sample> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect();
        assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
        found[0]
    }

    /// Undoes [`escape_label`] (`prometheus-parse` returns label values as written).
    fn unescape(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match (c, c == '\\') {
                (_, true) => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some(other) => out.push(other),
                    None => panic!("dangling backslash in {s:?}"),
                },
                (c, false) => out.push(c),
            }
        }
        out
    }

    #[test]
    fn samples_and_labels_come_through_a_parser() {
        let text = render(&document());
        let scrape = parse(&text);

        assert_eq!(find(&scrape, "xlb_up", &[]).value, Sampled::Gauge(1.0));
        assert_eq!(
            find(&scrape, "xlb_node_info", &[("node", "lb-a")]).value,
            Sampled::Gauge(1.0)
        );
        assert_eq!(find(&scrape, "xlb_uptime_seconds", &[]).value, Sampled::Gauge(3600.0));
        let drop = find(
            &scrape,
            "xlb_drops_total",
            &[("worker", "w0"), ("reason", "tcp_no_listener")],
        );
        assert_eq!(drop.value, Sampled::Counter(3.0));
        assert_eq!(
            find(&scrape, "xlb_health_bad_checksum_total", &[]).value,
            Sampled::Counter(9.0)
        );
        assert_eq!(
            find(&scrape, "xlb_health_probes_total", &[]).value,
            Sampled::Counter(40.0)
        );
        assert_eq!(
            find(&scrape, "xlb_worker_rx_frames_total", &[("worker", "w1")]).value,
            Sampled::Counter(20.0)
        );
        assert_eq!(
            find(&scrape, "xlb_worker_umem_frames", &[("worker", "w0")]).value,
            Sampled::Gauge(4096.0)
        );
        let xdp = find(
            &scrape,
            "xlb_xdp_frames_total",
            &[("interface", "eth1"), ("verdict", "to_socket")],
        );
        assert_eq!(xdp.labels.get("xdp_mode"), Some("native"));
        assert_eq!(xdp.value, Sampled::Counter(30.0));
        assert_eq!(find(&scrape, "xlb_conntrack_entries", &[]).value, Sampled::Gauge(7.0));
        // L4 workers are listed by index; their samples carry the worker names.
        assert_eq!(
            find(&scrape, "xlb_worker_conntrack_entries", &[("worker", "w1")]).value,
            Sampled::Gauge(3.0)
        );
        let handoff = find(
            &scrape,
            "xlb_handoff_frames_total",
            &[("worker", "w0"), ("direction", "out")],
        );
        assert_eq!(handoff.value, Sampled::Counter(11.0));

        let web = find(&scrape, "xlb_listener_connections_total", &[("listener", "web")]);
        assert_eq!(web.labels.get("vip"), Some("10.0.0.10"));
        assert_eq!(web.labels.get("port"), Some("80"));
        assert_eq!(web.labels.get("protocol"), Some("tcp"));
        assert_eq!(web.value, Sampled::Counter(42.0));
        let rate = find(
            &scrape,
            "xlb_listener_new_connections_per_second",
            &[("listener", "web")],
        );
        assert_eq!(rate.value, Sampled::Gauge(3.0));
        let bytes = find(
            &scrape,
            "xlb_listener_bytes_total",
            &[("listener", "web"), ("direction", "out")],
        );
        assert_eq!(bytes.value, Sampled::Counter(900000.0));
        let info = find(&scrape, "xlb_listener_info", &[("listener", "web")]);
        assert_eq!(info.labels.get("scheduler"), Some("wrr"));

        let up = |server| {
            find(&scrape, "xlb_server_up", &[("listener", "web"), ("server", server)])
                .value
                .clone()
        };
        assert_eq!(up("10.1.0.1:8080"), Sampled::Gauge(1.0));
        assert_eq!(up("10.1.0.2:8080"), Sampled::Gauge(0.0));
        let active = find(&scrape, "xlb_server_active_connections", &[("server", "10.1.0.1:8080")]);
        assert_eq!(active.value, Sampled::Gauge(4.0));
        // Integers are written exactly, not rounded through f64.
        assert!(text.contains(
            "xlb_server_bytes_total{listener=\"web\",server=\"10.1.0.1:8080\",direction=\"out\"} 18446744073709551615\n"
        ));

        // The quote, backslash and newline of the second listener's name are escaped: its samples stay on one line
        // each and the label reads back as the original name.
        let dns = find(&scrape, "xlb_listener_no_server_total", &[("vip", "10.0.0.11")]);
        assert_eq!(dns.value, Sampled::Counter(5.0));
        let dropped = find(
            &scrape,
            "xlb_listener_drops_total",
            &[("vip", "10.0.0.11"), ("reason", "handoff_full")],
        );
        assert_eq!(dropped.value, Sampled::Counter(1.0));
        let name = dns.labels.get("listener").unwrap();
        assert_eq!(name, r#"say \"hi\"\\now\nplease"#);
        assert_eq!(unescape(name), "say \"hi\"\\now\nplease");
        let server = find(&scrape, "xlb_server_up", &[("server", "10.1.0.3:53")]);
        assert_eq!(
            unescape(server.labels.get("listener").unwrap()),
            "say \"hi\"\\now\nplease"
        );
    }

    #[test]
    fn families_are_declared_once_and_grouped() {
        let text = render(&document());
        let scrape = parse(&text);
        let mut declared: Vec<(String, String)> = Vec::new();
        let mut closed: HashSet<String> = HashSet::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(declared.iter().all(|(n, _)| n != name), "{name} declared twice");
                match kind {
                    "counter" => assert!(name.ends_with("_total"), "counter {name}"),
                    "gauge" => assert!(!name.ends_with("_total"), "gauge {name}"),
                    "histogram" => assert_eq!(name, "xlb_worker_batch_duration_seconds"),
                    other => panic!("unexpected type {other} for {name}"),
                }
                declared.push((name.to_string(), kind.to_string()));
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(scrape.docs.contains_key(name), "HELP of {name}");
            } else {
                let mut name = line.split(['{', ' ']).next().unwrap().to_string();
                let (family, kind) = declared.last().expect("a sample before any TYPE");
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        if let Some(base) = name.strip_suffix(suffix) {
                            name = base.to_string();
                        }
                    }
                }
                assert_eq!(&name, family, "sample of {name} outside its family");
                if current.as_ref() != Some(&name) {
                    assert!(closed.insert(name.clone()), "samples of {name} are not grouped");
                    current = Some(name);
                }
            }
        }
        assert_eq!(scrape.docs.len(), declared.len(), "one HELP per family");
        // Every sample was typed by its declaration.
        let untyped: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| !matches!(s.value, Sampled::Counter(_) | Sampled::Gauge(_) | Sampled::Histogram(_)))
            // prometheus-parse reads a histogram's `_sum` and `_count` as untyped.
            .filter(|s| !s.metric.starts_with("xlb_worker_batch_duration_seconds_"))
            .collect();
        assert!(untyped.is_empty(), "{untyped:?}");
        for family in [
            "xlb_drops_total",
            "xlb_xdp_frames_total",
            "xlb_server_up",
            "xlb_handoff_frames_total",
            "xlb_health_bad_checksum_total",
        ] {
            assert!(declared.iter().any(|(n, _)| n == family), "{family} missing");
        }
    }

    #[test]
    fn an_empty_document_has_node_samples_only_and_l4_workers_keep_their_index() {
        let scrape = parse(&render(&StatsDoc::default()));
        assert!(scrape.samples.iter().all(|s| !s.metric.starts_with("xlb_worker_")
            && !s.metric.starts_with("xlb_listener_")
            && !s.metric.starts_with("xlb_server_")));
        assert_eq!(find(&scrape, "xlb_up", &[]).value, Sampled::Gauge(1.0));
        // An L4 worker index with no matching worker keeps its index as the label.
        let mut d = document();
        d.l4.workers[0].worker = 9;
        let scrape = parse(&render(&d));
        find(&scrape, "xlb_worker_conntrack_entries", &[("worker", "9")]);
    }

    #[test]
    fn the_batch_histogram_is_cumulative_in_seconds() {
        let text = render(&document());
        assert!(
            text.contains("xlb_worker_batch_duration_seconds_bucket{worker=\"w0\",le=\"1e-06\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("xlb_worker_batch_duration_seconds_bucket{worker=\"w0\",le=\"+Inf\"} 5\n"));
        assert!(text.contains("xlb_worker_batch_duration_seconds_count{worker=\"w0\"} 5\n"));
    }

    /// Sends a raw request to a running metrics server and returns (status, content type, body).
    fn get(server: &MetricsServer, request: &str) -> (u16, String, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(server.local_addr()).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(body_at)) = resp.parse(&raw) else {
            panic!("malformed response: {}", String::from_utf8_lossy(&raw));
        };
        let content_type = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-type"))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
            .unwrap_or_default();
        (
            resp.code.unwrap(),
            content_type,
            String::from_utf8_lossy(&raw[body_at..]).into_owned(),
        )
    }

    #[test]
    fn answers_http_requests() {
        // Over a lab's network, `tests/tests/control.rs` scrapes it with curl inside a namespace.
        let server = start("127.0.0.1:0".parse().unwrap(), Arc::new(document)).unwrap();
        let (status, content_type, body) = get(&server, "GET /metrics HTTP/1.1\r\nHost: xlb\r\n\r\n");
        assert_eq!(status, 200);
        assert!(content_type.starts_with(CONTENT_TYPE), "{content_type}");
        assert_eq!(body, render(&document()));
        assert_eq!(get(&server, "GET /metrics?x=1 HTTP/1.1\r\nHost: xlb\r\n\r\n").0, 200);
        assert_eq!(get(&server, "GET / HTTP/1.1\r\nHost: xlb\r\n\r\n").0, 200);
        assert_eq!(get(&server, "GET /nope HTTP/1.1\r\nHost: xlb\r\n\r\n").0, 404);
        assert_eq!(
            get(
                &server,
                "POST /metrics HTTP/1.1\r\nHost: xlb\r\nContent-Length: 0\r\n\r\n"
            )
            .0,
            405
        );
        assert_eq!(get(&server, "NOT HTTP\r\n\r\n").0, 400);
    }

    #[test]
    fn an_address_that_cannot_be_bound_is_named() {
        // Not an address of this host: the bind fails, nothing is sent.
        let addr: SocketAddr = "198.18.255.254:9100".parse().unwrap();
        let err = start(addr, Arc::new(document)).err().unwrap();
        assert!(
            err.contains("node.metrics_address") && err.contains(&addr.to_string()),
            "{err}"
        );
    }
}
