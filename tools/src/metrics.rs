//! Prometheus metrics: the stats document (see [`crate::stats`]) rendered in the Prometheus text exposition format
//! (version 0.0.4), served over HTTP at `GET /metrics` on `node.metrics_address`.
//!
//! [`render`] is a pure function of the stats document, so whatever the control API reports at `GET /v1/stats` is
//! what Prometheus scrapes. Counters end in `_total`, gauges do not; every family is declared once (`# HELP` and
//! `# TYPE`) with all its samples right after it. A field missing from the document drops that sample, never the
//! scrape.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::http::{self, HttpServer, Limits, Listener, Response};

/// Produces the current stats document (the JSON served at `GET /v1/stats`).
pub type Source = dyn Fn() -> Value + Send + Sync;

/// The `Content-Type` of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The health checker's counters (`l4.health` in the stats document): (field, metric, help).
const HEALTH_COUNTERS: &[(&str, &str, &str)] = &[
    ("probes", "xlb_health_probes_total", "Health-check probes started."),
    (
        "successes",
        "xlb_health_successes_total",
        "Health-check probes that succeeded.",
    ),
    (
        "failures",
        "xlb_health_failures_total",
        "Health-check probes that failed (timeouts included).",
    ),
    (
        "timeouts",
        "xlb_health_timeouts_total",
        "Health-check probes that timed out.",
    ),
    (
        "bad_checksum",
        "xlb_health_bad_checksum_total",
        "Replies to live health-check probes discarded for a bad TCP/UDP/ICMP checksum (partial checksums from a \
         server with TX checksum offload on veth or a virtual NIC: see the log).",
    ),
    (
        "port_waits",
        "xlb_health_port_waits_total",
        "Times a due health-check probe waited because every probe port was in flight.",
    ),
];

/// Per-worker counters of the stats document: (field, metric, help).
const WORKER_COUNTERS: &[(&str, &str, &str)] = &[
    (
        "rx_frames",
        "xlb_worker_rx_frames_total",
        "Frames received from the AF_XDP RX rings.",
    ),
    (
        "rx_bytes",
        "xlb_worker_rx_bytes_total",
        "Bytes received from the AF_XDP RX rings.",
    ),
    (
        "tx_frames",
        "xlb_worker_tx_frames_total",
        "Frames sent through the AF_XDP TX rings.",
    ),
    (
        "tx_bytes",
        "xlb_worker_tx_bytes_total",
        "Bytes sent through the AF_XDP TX rings.",
    ),
    (
        "tx_ring_full",
        "xlb_worker_tx_ring_full_total",
        "Batches in which a TX ring could not take every frame.",
    ),
    (
        "fill_starved",
        "xlb_worker_fill_starved_total",
        "Times the fill ring could not be topped up because no frame was free.",
    ),
    (
        "kernel_rx_ring_full",
        "xlb_worker_kernel_rx_ring_full_total",
        "Frames the kernel dropped because the RX ring was full (XDP_STATISTICS).",
    ),
    (
        "kernel_fill_ring_empty",
        "xlb_worker_kernel_fill_ring_empty_total",
        "Frames the kernel dropped for lack of fill-ring entries (XDP_STATISTICS).",
    ),
    (
        "kernel_rx_dropped",
        "xlb_worker_kernel_rx_dropped_total",
        "Frames the kernel dropped for other reasons (XDP_STATISTICS).",
    ),
    (
        "arp_requests",
        "xlb_arp_requests_total",
        "ARP requests sent to resolve neighbours.",
    ),
    (
        "arp_replies",
        "xlb_arp_replies_total",
        "ARP requests for the appliance's addresses answered.",
    ),
    (
        "icmp_echo_replies",
        "xlb_icmp_echo_replies_total",
        "ICMP echo requests answered.",
    ),
    ("tcp_resets", "xlb_tcp_resets_total", "TCP resets sent."),
    (
        "icmp_unreachables",
        "xlb_icmp_unreachables_total",
        "ICMP destination-unreachable messages sent.",
    ),
];

/// Per-worker gauges of the stats document: (field, metric, help).
const WORKER_GAUGES: &[(&str, &str, &str)] = &[
    (
        "free_frames",
        "xlb_worker_free_frames",
        "UMEM frames owned by userspace now (free pool and fill ring).",
    ),
    (
        "total_frames",
        "xlb_worker_umem_frames",
        "UMEM frames of the worker in total.",
    ),
];

/// XDP filter verdicts of the stats document (field and `verdict` label value).
const XDP_VERDICTS: &[&str] = &["to_socket", "passed_not_ours", "passed_no_socket", "passed_malformed"];

/// Per-listener counters and gauges of the stats document: (field, metric, help).
const LISTENER_VALUES: &[(&str, &str, &str)] = &[
    (
        "conns_total",
        "xlb_listener_connections_total",
        "Connections created for the listener.",
    ),
    (
        "conns_per_sec",
        "xlb_listener_new_connections_per_second",
        "New connections per second (sampled every second).",
    ),
    (
        "no_server",
        "xlb_listener_no_server_total",
        "New flows refused because no server was available.",
    ),
    (
        "stateless",
        "xlb_listener_stateless_total",
        "New flows forwarded without a connection table entry (table full, or DR with Maglev).",
    ),
];

/// Per-server gauges and counters of the stats document: (field, metric, help).
const SERVER_VALUES: &[(&str, &str, &str)] = &[
    (
        "healthy",
        "xlb_server_up",
        "1 if the server passes its health checks, else 0.",
    ),
    ("weight", "xlb_server_weight", "The server's scheduling weight."),
    (
        "active_conns",
        "xlb_server_active_connections",
        "Connections to the server in an active state (established TCP, UDP).",
    ),
    (
        "inactive_conns",
        "xlb_server_inactive_connections",
        "Other connections to the server (handshake, closing).",
    ),
    (
        "conns_total",
        "xlb_server_connections_total",
        "Connections scheduled to the server.",
    ),
];

/// Renders the stats document as Prometheus text exposition format 0.0.4.
///
/// Label `worker` is the worker's name (`w<core>`); the L4 section lists workers by index, in the same order as the
/// document's `workers`, so its samples carry the same names. Listeners are labelled `listener`, `vip`, `port` and
/// `protocol`; servers `listener` and `server` (the server's address).
pub fn render(doc: &Value) -> String {
    let mut out = String::with_capacity(16 * 1024);

    // Node.
    let mut up = Family::gauge("xlb_up", "1 while the xlb daemon serves metrics.");
    up.sample(&[], Some(&Value::from(1)));
    up.write(&mut out);
    let mut info = Family::gauge("xlb_node_info", "The node's name, as a label; always 1.");
    if let Some(node) = label_text(doc.get("node")) {
        info.sample(&[("node", &node)], Some(&Value::from(1)));
    }
    info.write(&mut out);
    let mut uptime = Family::gauge("xlb_uptime_seconds", "Seconds since the daemon started.");
    uptime.sample(&[], doc.get("uptime_s"));
    uptime.write(&mut out);

    // Workers: rings, UMEM, local stack answers and drops.
    let workers: Vec<(String, &Value)> = array(doc.get("workers"))
        .iter()
        .filter_map(|w| Some((label_text(w.get("name"))?, w)))
        .collect();
    for (field, name, help) in WORKER_COUNTERS {
        let mut family = Family::counter(name, help);
        for (worker, w) in &workers {
            family.sample(&[("worker", worker)], w.get(field));
        }
        family.write(&mut out);
    }
    for (field, name, help) in WORKER_GAUGES {
        let mut family = Family::gauge(name, help);
        for (worker, w) in &workers {
            family.sample(&[("worker", worker)], w.get(field));
        }
        family.write(&mut out);
    }
    render_batch_histogram(&mut out, &workers);
    let mut drops = Family::counter("xlb_drops_total", "Frames dropped by the worker, by reason.");
    for (worker, w) in &workers {
        for (reason, n) in w.get("drops").and_then(Value::as_object).into_iter().flatten() {
            drops.sample(&[("worker", worker), ("reason", reason)], Some(n));
        }
    }
    drops.write(&mut out);

    // XDP filters.
    let mut xdp = Family::counter(
        "xlb_xdp_frames_total",
        "Frames seen by the interface's XDP filter, by verdict (to_socket: redirected to an AF_XDP socket).",
    );
    for iface in array(doc.get("interfaces")) {
        let (Some(name), Some(mode)) = (label_text(iface.get("name")), label_text(iface.get("xdp_mode"))) else {
            continue;
        };
        for verdict in XDP_VERDICTS {
            xdp.sample(
                &[("interface", &name), ("xdp_mode", &mode), ("verdict", verdict)],
                iface.get(verdict),
            );
        }
    }
    xdp.write(&mut out);

    // L4: connection tables and hand-offs.
    let l4 = doc.get("l4");
    let mut conns = Family::gauge(
        "xlb_conntrack_entries",
        "Connections in the connection tables of all workers.",
    );
    conns.sample(&[], l4.and_then(|l| l.get("conns")));
    conns.write(&mut out);
    let l4_workers: Vec<(String, &Value)> = array(l4.and_then(|l| l.get("workers")))
        .iter()
        .filter_map(|w| {
            let index = w.get("worker")?;
            let name = index
                .as_u64()
                .and_then(|i| workers.get(usize::try_from(i).ok()?))
                .map(|(n, _)| n.clone());
            Some((name.or_else(|| label_text(Some(index)))?, w))
        })
        .collect();
    let mut worker_conns = Family::gauge(
        "xlb_worker_conntrack_entries",
        "Connections in the worker's connection table.",
    );
    let mut expired = Family::counter(
        "xlb_conntrack_expired_total",
        "Connections expired from the worker's table.",
    );
    let mut rescheduled = Family::counter(
        "xlb_conntrack_rescheduled_total",
        "Entries ended early so the flow is scheduled again (new SYN after close or to a down server).",
    );
    let mut evicted = Family::counter(
        "xlb_conntrack_evicted_total",
        "Closed or closing connections evicted from a full table to make room for a new flow.",
    );
    let mut port_pools = Family::gauge(
        "xlb_local_port_pools",
        "FULLNAT local port pools in use: one per (local IP, server) pair.",
    );
    let mut ports_per_pool = Family::gauge(
        "xlb_local_port_pool_size",
        "FULLNAT local ports each (local IP, server) pool has on the worker.",
    );
    let mut ports_in_use = Family::gauge(
        "xlb_local_ports_in_use",
        "FULLNAT local ports in use (including quarantined ones), over all pools.",
    );
    let mut ports_busiest = Family::gauge(
        "xlb_local_ports_busiest_pool",
        "FULLNAT local ports in use in the worker's fullest pool (compare with xlb_local_port_pool_size).",
    );
    let mut ports_quarantined = Family::gauge(
        "xlb_local_ports_quarantined",
        "FULLNAT local ports held back because their server may still hold the tuple in TIME_WAIT.",
    );
    let mut icmp_forwarded = Family::counter(
        "xlb_icmp_errors_forwarded_total",
        "ICMP errors about a forwarded flow (e.g. fragmentation needed) passed on to the other end.",
    );
    let mut handoff = Family::counter(
        "xlb_handoff_frames_total",
        "Frames handed to another worker owning their connection (out), or received from one (in).",
    );
    for (worker, w) in &l4_workers {
        worker_conns.sample(&[("worker", worker)], w.get("conns"));
        expired.sample(&[("worker", worker)], w.get("expired"));
        rescheduled.sample(&[("worker", worker)], w.get("rescheduled"));
        evicted.sample(&[("worker", worker)], w.get("evicted"));
        let ports = w.get("local_ports");
        port_pools.sample(&[("worker", worker)], ports.and_then(|p| p.get("pools")));
        ports_per_pool.sample(&[("worker", worker)], ports.and_then(|p| p.get("per_pool")));
        ports_in_use.sample(&[("worker", worker)], ports.and_then(|p| p.get("in_use")));
        ports_busiest.sample(&[("worker", worker)], ports.and_then(|p| p.get("busiest_pool")));
        ports_quarantined.sample(&[("worker", worker)], ports.and_then(|p| p.get("quarantined")));
        icmp_forwarded.sample(&[("worker", worker)], w.get("icmp_forwarded"));
        handoff.sample(&[("worker", worker), ("direction", "in")], w.get("handoff_in"));
        handoff.sample(&[("worker", worker), ("direction", "out")], w.get("handoff_out"));
    }
    worker_conns.write(&mut out);
    expired.write(&mut out);
    rescheduled.write(&mut out);
    evicted.write(&mut out);
    for family in [
        &port_pools,
        &ports_per_pool,
        &ports_in_use,
        &ports_busiest,
        &ports_quarantined,
    ] {
        family.write(&mut out);
    }
    icmp_forwarded.write(&mut out);
    handoff.write(&mut out);

    // L4: the health checker.
    let health = l4.and_then(|l| l.get("health"));
    for (field, name, help) in HEALTH_COUNTERS {
        let mut family = Family::counter(name, help);
        family.sample(&[], health.and_then(|h| h.get(field)));
        family.write(&mut out);
    }

    // L4: listeners and their servers.
    let listeners: Vec<(ListenerLabels, &Value)> = array(l4.and_then(|l| l.get("listeners")))
        .iter()
        .filter_map(|l| Some((ListenerLabels::of(l)?, l)))
        .collect();
    let mut listener_info = Family::gauge(
        "xlb_listener_info",
        "The listener's scheduler, forwarding method and server group, as labels; always 1.",
    );
    for (labels, l) in &listeners {
        let (Some(scheduler), Some(forwarding), Some(group)) = (
            label_text(l.get("scheduler")),
            label_text(l.get("forwarding")),
            label_text(l.get("group")),
        ) else {
            continue;
        };
        let extra = [
            ("scheduler", scheduler.as_str()),
            ("forwarding", &forwarding),
            ("group", &group),
        ];
        listener_info.sample(&labels.with(&extra), Some(&Value::from(1)));
    }
    listener_info.write(&mut out);
    for (field, name, help) in LISTENER_VALUES {
        let mut family = Family::new(name, help);
        for (labels, l) in &listeners {
            family.sample(&labels.with(&[]), l.get(field));
        }
        family.write(&mut out);
    }
    let mut packets = Family::counter(
        "xlb_listener_packets_total",
        "Packets of the listener's flows: in from clients, out to clients (FULLNAT replies).",
    );
    let mut bytes = Family::counter(
        "xlb_listener_bytes_total",
        "Bytes (IP length) of the listener's flows: in from clients, out to clients (FULLNAT replies).",
    );
    for (labels, l) in &listeners {
        for direction in ["in", "out"] {
            let labels = labels.with(&[("direction", direction)]);
            packets.sample(&labels, l.get(format!("packets_{direction}")));
            bytes.sample(&labels, l.get(format!("bytes_{direction}")));
        }
    }
    packets.write(&mut out);
    bytes.write(&mut out);
    let mut listener_drops = Family::counter(
        "xlb_listener_drops_total",
        "Packets of the listener's flows dropped or refused, by reason (also in xlb_drops_total).",
    );
    for (labels, l) in &listeners {
        for (reason, n) in l.get("drops").and_then(Value::as_object).into_iter().flatten() {
            listener_drops.sample(&labels.with(&[("reason", reason)]), Some(n));
        }
    }
    listener_drops.write(&mut out);

    let servers: Vec<(&str, String, &Value)> = listeners
        .iter()
        .flat_map(|(labels, l)| {
            array(l.get("servers"))
                .iter()
                .filter_map(|s| Some((labels.listener.as_str(), label_text(s.get("addr"))?, s)))
        })
        .collect();
    for (field, name, help) in SERVER_VALUES {
        let mut family = Family::new(name, help);
        for (listener, server, s) in &servers {
            family.sample(&[("listener", listener), ("server", server)], s.get(field));
        }
        family.write(&mut out);
    }
    let mut packets = Family::counter(
        "xlb_server_packets_total",
        "Packets forwarded to the server (in) and from it (out, FULLNAT).",
    );
    let mut bytes = Family::counter(
        "xlb_server_bytes_total",
        "Bytes forwarded to the server (in) and from it (out, FULLNAT).",
    );
    for (listener, server, s) in &servers {
        for direction in ["in", "out"] {
            let labels = [
                ("listener", *listener),
                ("server", server.as_str()),
                ("direction", direction),
            ];
            packets.sample(&labels, s.get(format!("packets_{direction}")));
            bytes.sample(&labels, s.get(format!("bytes_{direction}")));
        }
    }
    packets.write(&mut out);
    bytes.write(&mut out);
    out
}

/// The workers' turn-duration histogram (`batch_us` in the stats document) as a Prometheus histogram.
fn render_batch_histogram(out: &mut String, workers: &[(String, &Value)]) {
    const NAME: &str = "xlb_worker_batch_duration_seconds";
    let mut body = String::new();
    for (worker, w) in workers {
        let h = &w["batch_us"];
        let (Some(le), Some(counts), Some(sum)) = (h["le"].as_array(), h["counts"].as_array(), h["sum"].as_u64())
        else {
            continue;
        };
        let worker = escape_label(worker);
        let mut cumulative = 0u64;
        for (bound, count) in le.iter().zip(counts) {
            cumulative += count.as_u64().unwrap_or(0);
            let le = bound
                .as_u64()
                .map_or("+Inf".to_string(), |us| format!("{}", us as f64 / 1e6));
            let _ = writeln!(body, "{NAME}_bucket{{worker=\"{worker}\",le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(body, "{NAME}_sum{{worker=\"{worker}\"}} {}", sum as f64 / 1e6);
        let _ = writeln!(body, "{NAME}_count{{worker=\"{worker}\"}} {cumulative}");
    }
    if !body.is_empty() {
        let _ = writeln!(
            out,
            "# HELP {NAME} Time a worker's turn with work took: rx batch, processing, tx batch."
        );
        let _ = writeln!(out, "# TYPE {NAME} histogram");
        out.push_str(&body);
    }
}

/// A Prometheus metric type (only the two xlb uses).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family: its declaration and its samples, rendered together so they stay grouped.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    /// Rendered sample lines.
    samples: String,
}

impl Family {
    /// A family whose type follows its name: `..._total` is a counter, anything else a gauge.
    fn new(name: &'static str, help: &'static str) -> Family {
        let kind = if name.ends_with("_total") {
            Kind::Counter
        } else {
            Kind::Gauge
        };
        Family {
            name,
            help,
            kind,
            samples: String::new(),
        }
    }

    fn counter(name: &'static str, help: &'static str) -> Family {
        debug_assert!(name.ends_with("_total"), "counter {name} must end in _total");
        Family::new(name, help)
    }

    fn gauge(name: &'static str, help: &'static str) -> Family {
        debug_assert!(!name.ends_with("_total"), "gauge {name} must not end in _total");
        Family::new(name, help)
    }

    /// Adds a sample; skipped when the value is missing or not a number (booleans count as 1 and 0).
    fn sample(&mut self, labels: &[(&str, &str)], value: Option<&Value>) {
        let Some(value) = value.and_then(sample_value) else {
            return;
        };
        self.samples.push_str(self.name);
        if !labels.is_empty() {
            self.samples.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.samples.push(',');
                }
                let _ = write!(self.samples, "{name}=\"{}\"", escape_label(value));
            }
            self.samples.push('}');
        }
        let _ = writeln!(self.samples, " {value}");
    }

    /// Appends the declaration and the samples to `out`; nothing if the family has no samples.
    fn write(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let kind = match self.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {kind}", self.name);
        out.push_str(&self.samples);
    }
}

/// The labels every per-listener sample carries.
struct ListenerLabels {
    listener: String,
    vip: String,
    port: String,
    protocol: String,
}

impl ListenerLabels {
    /// The labels of a listener of the stats document; `None` if one is missing.
    fn of(l: &Value) -> Option<ListenerLabels> {
        Some(ListenerLabels {
            listener: label_text(l.get("name"))?,
            vip: label_text(l.get("vip"))?,
            port: label_text(l.get("port"))?,
            protocol: label_text(l.get("protocol"))?,
        })
    }

    /// These labels followed by `extra`.
    fn with<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut labels = vec![
            ("listener", self.listener.as_str()),
            ("vip", &self.vip),
            ("port", &self.port),
            ("protocol", &self.protocol),
        ];
        labels.extend_from_slice(extra);
        labels
    }
}

/// The elements of a JSON array; empty if `v` is missing or not an array.
fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// A string or number of the document as a label value.
fn label_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A number (integers exactly, not through `f64`) or boolean of the document as a sample value.
fn sample_value(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.to_string()),
        _ => None,
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
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
mod tests {
    use super::*;
    use prometheus_parse::{Sample, Scrape, Value as Sampled};
    use serde_json::json;
    use std::collections::HashSet;

    /// A stats document shaped like the daemon's: two workers, one interface, two listeners (one with a name that
    /// needs escaping), three servers.
    fn document() -> Value {
        let worker = |name: &str, rx: u64, tcp_no_listener: u64| {
            json!({
                "name": name, "rx_frames": rx, "rx_bytes": rx * 100, "tx_frames": 5, "tx_bytes": 500,
                "tx_ring_full": 0, "fill_starved": 1, "kernel_rx_ring_full": 2, "kernel_fill_ring_empty": 3,
                "kernel_rx_dropped": 4, "arp_replies": 6, "arp_requests": 7, "icmp_echo_replies": 8,
                "tcp_resets": 9, "icmp_unreachables": 10,
                "drops": {"tcp_no_listener": tcp_no_listener, "not_our_mac": 0},
                "free_frames": 4000, "total_frames": 4096,
            })
        };
        let workers = vec![worker("w0", 10, 3), worker("w1", 20, 0)];
        let server = |addr: &str, healthy: bool, active: u64| {
            json!({
                "addr": addr, "weight": 100, "healthy": healthy, "active_conns": active, "inactive_conns": 1,
                "conns_total": 42, "packets_in": 1000, "bytes_in": 64000, "packets_out": 900,
                "bytes_out": 18_446_744_073_709_551_615u64,
            })
        };
        json!({
            "node": "lb-a",
            "uptime_s": 3600,
            "totals": {},
            "workers": workers,
            "interfaces": [{
                "name": "eth1", "xdp_mode": "native", "to_socket": 30, "passed_not_ours": 2,
                "passed_no_socket": 0, "passed_malformed": 1,
            }],
            "l4": {
                "conns": 7,
                "listeners": [
                    {
                        "name": "web", "vip": "10.0.0.10", "port": 80, "protocol": "tcp", "scheduler": "wrr",
                        "forwarding": "fullnat", "group": "web-servers", "conns_total": 42, "conns_per_sec": 3,
                        "packets_in": 2000, "bytes_in": 128000, "packets_out": 1800, "bytes_out": 900000,
                        "no_server": 0, "stateless": 0,
                        "servers": [server("10.1.0.1:8080", true, 4), server("10.1.0.2:8080", false, 0)],
                    },
                    {
                        "name": "say \"hi\"\\now\nplease", "vip": "10.0.0.11", "port": 53, "protocol": "udp",
                        "scheduler": "rr", "forwarding": "fullnat", "group": "dns", "conns_total": 1,
                        "conns_per_sec": 0, "packets_in": 1, "bytes_in": 60, "packets_out": 1, "bytes_out": 90,
                        "no_server": 5, "stateless": 2, "drops": {"no_healthy_server": 5, "handoff_full": 1},
                        "servers": [server("10.1.0.3:53", true, 0)],
                    },
                ],
                "workers": [
                    {"worker": 0, "conns": 4, "handoff_out": 11, "handoff_in": 12, "expired": 13},
                    {"worker": 1, "conns": 3, "handoff_out": 21, "handoff_in": 22, "expired": 23},
                ],
                "health": {"probes": 40, "successes": 30, "failures": 10, "timeouts": 9, "bad_checksum": 9,
                           "port_waits": 0},
            },
        })
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
                    other => panic!("unexpected type {other} for {name}"),
                }
                declared.push((name.to_string(), kind.to_string()));
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(scrape.docs.contains_key(name), "HELP of {name}");
            } else {
                let name = line.split(['{', ' ']).next().unwrap().to_string();
                let (family, _) = declared.last().expect("a sample before any TYPE");
                assert_eq!(&name, family, "sample of {name} outside its family");
                if current.as_ref() != Some(&name) {
                    assert!(closed.insert(name.clone()), "samples of {name} are not grouped");
                    current = Some(name);
                }
            }
        }
        assert_eq!(scrape.docs.len(), declared.len(), "one HELP per family");
        // Every sample was typed by its declaration.
        assert!(scrape
            .samples
            .iter()
            .all(|s| matches!(s.value, Sampled::Counter(_) | Sampled::Gauge(_))));
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
    fn missing_fields_skip_samples() {
        for doc in [
            json!(null),
            json!([1, 2]),
            json!({"workers": "nope", "l4": {"listeners": [{"name": 1}]}}),
        ] {
            let scrape = parse(&render(&doc));
            assert_eq!(scrape.samples.len(), 1, "only xlb_up: {doc}");
        }
        let mut doc = document();
        doc["workers"][1].as_object_mut().unwrap().remove("rx_frames");
        doc["l4"]["listeners"][0]["servers"][0]["healthy"] = json!("maybe");
        doc["l4"]["workers"][0]["worker"] = json!(9);
        let scrape = parse(&render(&doc));
        let rx: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "xlb_worker_rx_frames_total")
            .collect();
        assert_eq!(rx.len(), 1);
        assert!(!scrape
            .samples
            .iter()
            .any(|s| s.metric == "xlb_server_up" && s.labels.get("server") == Some("10.1.0.1:8080")));
        // An L4 worker index with no matching worker keeps its index as the label.
        find(&scrape, "xlb_worker_conntrack_entries", &[("worker", "9")]);
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
