//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz with libFuzzer) and of the corpus replay test
//! (`tools/tests/fuzz_corpus.rs`, stable Rust, run by `cargo test`): each takes arbitrary bytes, drives the real
//! code with them, and panics only when an invariant breaks.
//!
//! - [`packet_pipeline`]: the datapath as `xlb run` builds it ([`PipelineFactory`]: local stack + L4 forwarder,
//!   two workers joined by the hand-off, health checks), fed frames cut from the input, with the clock advanced
//!   by the input. Every frame sent must fit its buffer, leave on an existing port, and carry a valid IPv4 header
//!   checksum.
//! - [`control_request`]: the control API's request path: the framing checks (`http::check_head`), hyper's
//!   parser, the body limit and the token check of the real server, over an in-memory stream, then the API's
//!   request decoding ([`crate::api::listener_body`] …) and the whole-config validation a change goes through.
//! - [`config`]: `Config::parse` (TOML, then validation) of the input as text; an error is one line.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xlb_stack::config::Idle;
use xlb_stack::local::Link;
use xlb_stack::pipeline::{Frame, Pipeline, Verdict};
use xlb_stack::wire::{checksum, EthernetAddress, ETH_HEADER_LEN};
use xlb_stack::xsk::WorkerPlan;

use crate::api::{self, Reply};
use crate::config::Config;
use crate::control::{self, Handler};
use crate::http;
use crate::lb::{LbPipeline, PipelineFactory};

/// The appliance the packet pipeline target runs: two links, FULLNAT and DR listeners over TCP and UDP, health
/// checks of every kind. Addresses from 198.18.0.0/15.
pub const PIPELINE_CONFIG: &str = r#"
[node]
name = "fuzz"
control_socket = "/nonexistent/xlb-fuzz.sock"

[[interface]]
name = "ext0"
queues = [0, 1]
cores = [0, 1]
addresses = ["198.18.0.10/24"]
gateway = "198.18.0.1"

[[interface]]
name = "int0"
queues = [0, 1]
cores = [0, 1]
addresses = ["198.19.0.10/24", "198.19.0.11/24"]

[[listener]]
name = "web"
vip = "198.18.0.100"
port = 80
protocol = "tcp"
scheduler = "wrr"
group = "web"

[[listener]]
name = "dns"
vip = "198.18.0.100"
port = 53
protocol = "udp"
scheduler = "mh"
group = "dns"

[[listener]]
name = "direct"
vip = "198.18.0.101"
port = 80
protocol = "tcp"
forwarding = "dr"
scheduler = "sh"
group = "web"

[[group]]
name = "web"
servers = [{ addr = "198.19.0.2:80", weight = 1 }, { addr = "198.19.0.3:80", weight = 2 }]
health_check = { kind = "http", interval_ms = 500, timeout_ms = 300, rise = 1, fall = 1, path = "/health" }

[[group]]
name = "dns"
servers = [{ addr = "198.19.0.4:53", weight = 1 }, { addr = "198.19.0.5:53", weight = 1 }]
health_check = { kind = "udp", interval_ms = 700, timeout_ms = 300, payload = "ping" }

[l4]
conn_table_size = 1024
local_port_min = 10000
local_port_max = 10063
"#;

/// MAC addresses of the two links in [`PIPELINE_CONFIG`], by interface.
pub const LINK_MACS: [EthernetAddress; 2] = [
    EthernetAddress([0x02, 0, 0, 0, 0, 0x10]),
    EthernetAddress([0x02, 0, 0, 0, 1, 0x10]),
];

/// Backends of [`PIPELINE_CONFIG`] and the MACs they are resolved to (so forwarded packets leave at once).
const BACKENDS: [([u8; 4], [u8; 6]); 4] = [
    ([198, 19, 0, 2], [2, 0, 0, 0, 1, 2]),
    ([198, 19, 0, 3], [2, 0, 0, 0, 1, 3]),
    ([198, 19, 0, 4], [2, 0, 0, 0, 1, 4]),
    ([198, 19, 0, 5], [2, 0, 0, 0, 1, 5]),
];

/// Largest frame a worker hands the pipeline (a UMEM frame).
/// (4096 bytes less the kernel's 256-byte `XDP_PACKET_HEADROOM`).
const FRAME: usize = 4096 - 256;
/// Frames pulled from `poll_transmit` per worker and turn, at most.
const MAX_ORIGINATED: usize = 512;

/// Builds the two workers' pipelines of [`PIPELINE_CONFIG`], as `xlb run` does.
pub fn pipelines(now: Instant) -> Vec<LbPipeline> {
    let config = Config::parse(PIPELINE_CONFIG).expect("the fuzz config is valid");
    let plans: Vec<WorkerPlan> = (0..2)
        .map(|w| WorkerPlan {
            name: format!("w{w}"),
            index: w,
            workers: 2,
            core: w,
            ports: vec![(0, w as u32), (1, w as u32)],
            links: config
                .interfaces
                .iter()
                .zip(LINK_MACS)
                .map(|(i, mac)| Link {
                    mac,
                    addresses: i.addresses.clone(),
                    gateway: i.gateway,
                })
                .collect(),
            idle: Idle::Adaptive,
        })
        .collect();
    let (mut factory, _runtime) = PipelineFactory::new(&config, &plans, now);
    let mut workers: Vec<LbPipeline> = plans.iter().map(|p| factory.make(p)).collect();
    for w in &mut workers {
        for (ip, mac) in BACKENDS {
            let ip = Ipv4Addr::from(ip);
            let source = Ipv4Addr::new(198, 19, 0, 10);
            w.neighbours().learn(now, 1, source, ip, EthernetAddress(mac), true);
        }
        // The first timer turn registers the VIPs and services.
        w.handle_timeout(now);
    }
    workers
}

/// Checks a frame the pipeline sends: on a port that exists, within its buffer, with a valid IPv4 header.
fn check_sent(port: usize, frame: &[u8]) {
    assert!(port < 2, "sent on port {port}, which does not exist");
    assert!(
        frame.len() >= ETH_HEADER_LEN,
        "a frame shorter than its Ethernet header"
    );
    assert!(frame.len() <= FRAME, "a frame of {} bytes", frame.len());
    if frame[12..14] == [0x08, 0x00] {
        let ip = &frame[ETH_HEADER_LEN..];
        assert!(ip.len() >= 20, "an IPv4 frame without a header");
        let hl = usize::from(ip[0] & 0x0f) * 4;
        assert!(ip[0] >> 4 == 4 && hl >= 20 && hl <= ip.len(), "a bad IPv4 header sent");
        assert_eq!(
            checksum::checksum(&ip[..hl]),
            0,
            "an IPv4 header checksum that does not verify"
        );
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        assert!(
            total >= hl && total <= ip.len(),
            "IPv4 total length {total} for {} bytes",
            ip.len()
        );
    }
}

/// Drains what a worker originates (ARP, probes, handed frames, fragments), checking each.
fn drain(w: &mut LbPipeline, now: Instant, buf: &mut [u8]) {
    for _ in 0..MAX_ORIGINATED {
        let Some((port, len)) = w.poll_transmit(now, buf) else {
            return;
        };
        check_sent(port, &buf[..len]);
    }
}

/// Runs the frames of `data` through two workers. The input is a sequence of records: a control byte (bit 0:
/// the worker, bit 1: the port, bits 2-7: how far the clock moves first, in 50 ms steps), a 2-byte length, then
/// the frame (cut short at the end of the input).
pub fn packet_pipeline(data: &[u8]) {
    let start = Instant::now();
    let mut workers = pipelines(start);
    run_frames(&mut workers, start, data);
}

/// [`packet_pipeline`] on pipelines already built (at `start`).
pub fn run_frames(workers: &mut [LbPipeline], start: Instant, mut data: &[u8]) {
    let mut now = start;
    let mut buf = vec![0u8; FRAME];
    let mut out = vec![0u8; FRAME];
    while data.len() >= 3 {
        let (control, len) = (data[0], usize::from(u16::from_be_bytes([data[1], data[2]])));
        let len = len.min(data.len() - 3).min(FRAME);
        let frame = &data[3..3 + len];
        data = &data[3 + len..];
        now += Duration::from_millis(50 * u64::from(control >> 2));
        let (w, port) = (usize::from(control & 1), usize::from(control >> 1 & 1));
        for worker in workers.iter_mut() {
            if worker.poll_timeout().is_some_and(|t| t <= now) {
                worker.handle_timeout(now);
            }
        }
        buf[..len].copy_from_slice(frame);
        workers[w].prefetch(port, &buf[..len]);
        let mut f = Frame::new(&mut buf, len);
        let verdict = workers[w].process(now, port, &mut f);
        if let Verdict::Transmit(out_port) = verdict {
            let n = f.len();
            check_sent(out_port, &buf[..n]);
        }
        // The end of the worker's turn: what the frame queued for other threads (hand-off, HA) leaves.
        workers[w].flush_events();
        for worker in workers.iter_mut() {
            drain(worker, now, &mut out);
        }
    }
    // Time runs on: every timer fires (ARP retries, probes, expiry, reassembly timeouts).
    for step in 1..=4u64 {
        let later = now + Duration::from_secs(30 * step);
        for worker in workers.iter_mut() {
            worker.handle_timeout(later);
            drain(worker, later, &mut out);
        }
    }
}

/// The config text of [`PIPELINE_CONFIG`], the base of the control API target.
fn control_config() -> Config {
    Config::parse(PIPELINE_CONFIG).expect("the fuzz config is valid")
}

/// The token the control API target's server requires.
pub const CONTROL_TOKEN: &str = "fuzz-token-0123456789";

/// The API's answer to a request, decoded as the running API decodes it and checked as it checks a change
/// (the whole config validated), without a datapath to apply it to.
pub fn dry_api(config: &Config, method: &str, path: &str, body: &[u8]) -> Reply {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut c = config.clone();
    let edited: Result<(), Reply> = match (method, parts.as_slice()) {
        ("GET", ["v1", "conns"]) => {
            return api::conns_query(query).map_or_else(|r| r, |(_, limit)| (200, json!({ "limit": limit })))
        }
        ("GET", ["v1", ..]) => return (200, json!({})),
        ("PUT", ["v1", "listeners", name]) => api::listener_body(name, body).map(|l| {
            c.listeners.retain(|o| o.name != l.name);
            c.listeners.push(l);
        }),
        ("PUT", ["v1", "groups", name]) => api::group_body(name, body).map(|g| {
            c.groups.retain(|o| o.name != g.name);
            c.groups.push(g);
        }),
        ("PUT", ["v1", "groups", group, "servers", addr]) => {
            api::server_body(addr, body).and_then(|(a, w)| api::set_server(&mut c.groups, group, a, w))
        }
        ("POST", ["v1", "groups", group, "servers", addr, "drain"]) => {
            api::server_body(addr, br#"{"weight": 0}"#).and_then(|(a, w)| api::set_server(&mut c.groups, group, a, w))
        }
        ("DELETE", ["v1", "listeners", name]) => {
            c.listeners.retain(|l| l.name != *name);
            Ok(())
        }
        ("DELETE", ["v1", "groups", name]) => {
            c.groups.retain(|g| g.name != *name);
            Ok(())
        }
        _ => return (404, json!({ "error": "no endpoint" })),
    };
    match edited.map(|()| c.validate()) {
        Err(reply) => reply,
        Ok(Err(e)) => (400, json!({ "error": e })),
        Ok(Ok(())) => (200, json!({ "applied": true })),
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    static BASE: Config = control_config();
}

/// Sends `data` as one connection's bytes to the control API server (the real transport, with a bearer token
/// required as on the TCP address) in memory, and checks the answer is an HTTP/1.x response other than a 5xx
/// (or nothing, when the input holds no request at all).
pub fn control_request(data: &[u8]) {
    // The framing rules on their own (the server applies them to a head it read; here to any bytes).
    let _ = http::check_head(data, control::MAX_BODY);
    let base = BASE.with(Config::clone);
    let handler: Arc<Handler> =
        Arc::new(move |method: &str, path: &str, body: &[u8]| -> (u16, Value) { dry_api(&base, method, path, body) });
    let service = control::service(handler, Some(CONTROL_TOKEN.to_string()));
    let response = RUNTIME.with(|rt| {
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            http::spawn_connection(server, control::LIMITS, service);
            let writer = async {
                let _ = client.write_all(data).await;
                let _ = client.shutdown().await;
            };
            writer.await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
            out
        })
    });
    if !response.is_empty() {
        // (An HTTP/1.0 request is answered in HTTP/1.0.)
        assert!(
            response.starts_with(b"HTTP/1.1 ") || response.starts_with(b"HTTP/1.0 "),
            "not an HTTP/1.x answer: {:?}",
            String::from_utf8_lossy(&response[..response.len().min(80)])
        );
        assert!(
            response.get(9) != Some(&b'5'),
            "a server error: {:?}",
            String::from_utf8_lossy(&response[..response.len().min(200)])
        );
    }
}

/// Parses `data` as a config file. A valid config validates again the same way and needs no restart against
/// itself; an error is one line (what `xlb check` prints).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(c) => {
            assert_eq!(c.validate(), Ok(()));
            assert_eq!(c.restart_needed(&c), None);
        }
        Err(e) => {
            assert!(!e.is_empty(), "an empty error");
            assert!(!e.contains('\n'), "an error of several lines: {e:?}");
        }
    }
}
