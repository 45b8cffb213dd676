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
    (
        |x: &doc::WorkerCounters| x.icmp_time_exceeded,
        "xlb_icmp_time_exceeded_total",
        "ICMP time-exceeded messages sent (packets to forward whose TTL ran out).",
    ),
    (
        |x: &doc::WorkerCounters| x.reassembled,
        "xlb_ipv4_reassembled_total",
        "Fragmented IPv4 datagrams reassembled.",
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
            "Local port pools in use (L4 FULLNAT flows and L7 upstream connections share them): one per (local IP, server) pair.",
            |w| w.local_ports.pools,
        ),
        (
            "xlb_local_port_pool_size",
            "Local ports each (local IP, server) pool has on the worker.",
            |w| w.local_ports.per_pool,
        ),
        (
            "xlb_local_ports_in_use",
            "Local ports in use by L4 FULLNAT flows and L7 upstream connections (including quarantined ones), over all pools.",
            |w| w.local_ports.in_use,
        ),
        (
            "xlb_local_ports_busiest_pool",
            "Local ports in use in the worker's fullest pool (compare with xlb_local_port_pool_size).",
            |w| w.local_ports.busiest_pool,
        ),
        (
            "xlb_local_ports_quarantined",
            "Local ports held back because their server may still hold the tuple in TIME_WAIT.",
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
    out.extend(l7_families(d));
    out
}

/// The L7 families (none without `http` listeners).
fn l7_families(d: &StatsDoc) -> Vec<Family> {
    let Some(l7) = &d.l7 else { return Vec::new() };
    let mut events = Family::new(
        "xlb_l7_events_total",
        "What the L7 stage counted, by event (requests, responses_2xx, upstream_connects, upstream_reused, \
         no_healthy_server, connection_limit, ...: see xlbctl stats).",
    );
    for (name, n) in &l7.counts {
        events.sample(vec![("event", name.clone())], *n);
    }
    let mut out = vec![events];
    for (name, help, value) in [
        ("xlb_l7_sessions", "Client connections being served by L7.", l7.sessions),
        (
            "xlb_l7_connections",
            "In-stack TCP connections of L7 (client, upstream, idle, closing).",
            l7.connections,
        ),
        (
            "xlb_l7_idle_upstreams",
            "Idle upstream connections kept for reuse.",
            l7.idle_upstreams,
        ),
        (
            "xlb_l7_buffer_bytes",
            "Bytes of socket buffers of L7's in-stack connections (small while half-open or idle).",
            l7.buffer_bytes,
        ),
    ] {
        let mut f = Family::new(name, help);
        f.sample(vec![], value);
        out.push(f);
    }
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
mod tests;
