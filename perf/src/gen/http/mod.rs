//! HTTP/1.1 GET load.
//!
//! `connections` workers each drive one connection at a time: kept alive
//! between requests (`keepalive`, each opened before the first request), or
//! a new one per request (sent with `Connection: close`).
//!
//! With `server_close` (a new connection per request), a worker waits after
//! each answer until the server closes the connection, and only then closes
//! its own side: the server closes first, so the server's end holds the
//! TIME_WAIT state — what an HTTP server answering `Connection: close` does
//! to a load balancer's FULLNAT source tuples. A request counts as completed
//! only once the server's FIN arrived; a server that keeps the connection
//! open past the timeout, or sends more bytes, fails the request.
//!
//! - Closed loop (no rate): each worker sends its next request as soon as the
//!   previous answer arrived, until the duration ends. The response latency
//!   runs from the request's first byte to the answer's last.
//! - Open loop (`rate`): request `i` is due at `start + i / rate`, for exactly
//!   `round(rate × duration)` requests. Workers take due requests in order,
//!   and the response latency runs from the request's *intended* send time,
//!   so time spent waiting for a busy connection (or connecting) counts:
//!   this corrects for coordinated omission. Requests a worker could not even
//!   start within one timeout after the end of the duration are reported as
//!   `not_issued`.
//!
//! Every issued request is either completed (a whole answer arrived, whatever
//! its status) or counted as one failure, so `issued == completed + failed`.
//! Answers name their server by an `X-Server` header or a body starting with
//! `server=NAME`.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::report::{self, FailureKind, Failures, Latency, Report, ServerCounts};
use super::tls::{HandshakeCounts, Stream, TlsClient, TlsOptions};
use super::{LiveCounters, Pacer, Progress, RunLimits, StopFlag};

mod hold;
pub mod phases;
mod response;

use response::{Conn, Response};

pub use hold::{hold, HoldReport, HOLDING};

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Body bytes kept to look for `server=NAME`; the rest is read and dropped.
const BODY_PREFIX: usize = 256;

/// Parameters of an HTTP run.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Server address.
    pub target: SocketAddr,
    /// Request path, starting with `/`.
    pub path: String,
    /// `Host` header; `None`: the target address.
    pub host: Option<String>,
    /// Worker connections.
    pub connections: usize,
    /// Keep connections alive (`true`) or open one per request.
    pub keepalive: bool,
    /// New connection per request, closed by the server first (see the module docs); requires
    /// `keepalive == false`.
    pub server_close: bool,
    /// Requests per second in total (open loop); `None`: closed loop.
    pub rate: Option<f64>,
    /// HTTPS: TLS over each connection (see [`super::tls`]); `None`: plain HTTP.
    pub tls: Option<TlsOptions>,
    /// Duration, count and per-step timeout.
    pub limits: RunLimits,
    /// Phase boundaries, from the start of the run ([`phases`]); empty: one phase, none reported.
    pub phases: Vec<Duration>,
}

/// The parameters as reported.
#[derive(Debug, Clone, Serialize)]
pub struct HttpParams {
    /// Server address.
    pub target: String,
    /// Request path.
    pub path: String,
    /// `Host` header sent.
    pub host: String,
    /// Worker connections.
    pub connections: usize,
    /// Whether connections are kept alive.
    pub keepalive: bool,
    /// Whether the worker waits for the server to close each connection first.
    pub server_close: bool,
    /// Requests per second asked for (`null`: closed loop).
    pub rate: Option<f64>,
    /// Seconds of load.
    pub duration_s: f64,
    /// Request limit.
    pub count: Option<u64>,
    /// Timeout of connect and of each read or write, in milliseconds.
    pub timeout_ms: u64,
    /// What response latency is measured from: `intended` (open loop) or
    /// `send` (closed loop).
    pub latency_from: &'static str,
    /// HTTPS: the TLS settings (`null`: plain HTTP).
    pub tls: Option<TlsParams>,
}

/// The TLS settings as reported.
#[derive(Debug, Clone, Serialize)]
pub struct TlsParams {
    /// SNI name sent.
    pub server_name: String,
    /// Whether the certificate was checked (against a CA file).
    pub verify: bool,
    /// Whether workers resume sessions after their first connection.
    pub resume: bool,
}

impl TlsParams {
    fn of(options: &TlsOptions) -> TlsParams {
        TlsParams {
            server_name: options.server_name.clone(),
            verify: options.ca.is_some(),
            resume: options.resume,
        }
    }
}

/// Request counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HttpCounts {
    /// Open loop: requests on the schedule.
    pub scheduled: Option<u64>,
    /// Requests started.
    pub issued: u64,
    /// Open loop: scheduled requests never started (`scheduled - issued`).
    pub not_issued: Option<u64>,
    /// Requests that got a whole answer.
    pub completed: u64,
    /// Requests that failed (`issued - completed`).
    pub failed: u64,
    /// TCP connections opened.
    pub connections_opened: u64,
}

/// Latency percentiles of an HTTP run, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct HttpLatency {
    /// TCP handshakes.
    pub connect: Latency,
    /// TLS handshakes (HTTPS only), from the ClientHello to the client's Finished.
    pub handshake: Latency,
    /// Requests, see [`HttpParams::latency_from`].
    pub response: Latency,
}

/// Result of an HTTP run.
#[derive(Debug, Clone, Serialize)]
pub struct HttpReport {
    /// Always `"http"`.
    pub scenario: &'static str,
    /// What was asked for.
    pub params: HttpParams,
    /// Seconds from start to the last completed request.
    pub elapsed_s: f64,
    /// Completed requests per second.
    pub rate: f64,
    /// Request counts.
    pub counts: HttpCounts,
    /// Failed requests by kind.
    pub failures: Failures,
    /// Completed requests by status code.
    pub status: BTreeMap<String, u64>,
    /// Latency percentiles.
    pub latency_us: HttpLatency,
    /// Completed requests per server name.
    pub servers: ServerCounts,
    /// HTTPS: TLS handshakes by kind, as the client saw them.
    pub handshakes: Option<HandshakeCounts>,
    /// With `--phases`: each phase's counts and latency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phases: Option<Vec<phases::PhaseReport>>,
}

impl Report for HttpReport {
    fn human(&self) -> String {
        let p = &self.params;
        let c = &self.counts;
        let mode = match p.rate {
            Some(rate) => format!("open loop {rate}/s"),
            None => format!("closed loop {} conns", p.connections),
        };
        let statuses: Vec<String> = self.status.iter().map(|(code, n)| format!("{code}={n}")).collect();
        let mut lines = vec![
            format!(
                "http {} ({mode}, {}): {} of {} requests completed in {:.2} s = {:.0}/s; {}",
                p.target,
                if p.keepalive {
                    "keep-alive"
                } else if p.server_close {
                    "new conn, server closes first"
                } else {
                    "new conn"
                },
                c.completed,
                c.issued,
                self.elapsed_s,
                self.rate,
                self.failures.human()
            ),
            format!(
                "  status: {}; connections opened {}",
                statuses.join(" "),
                c.connections_opened
            ),
        ];
        if let Some(n) = c.not_issued.filter(|&n| n > 0) {
            lines.push(format!("  NOT ISSUED: {n} scheduled requests (generator too slow)"));
        }
        lines.push(self.latency_us.connect.human("connect"));
        if let Some(h) = &self.handshakes {
            lines.push(format!(
                "  TLS handshakes: {} full ({} with HelloRetryRequest), {} resumed",
                h.full, h.hello_retry, h.resumed
            ));
            lines.push(self.latency_us.handshake.human("handshake"));
        }
        lines.push(self.latency_us.response.human("response"));
        lines.extend(report::servers_human(&self.servers));
        if let Some(p) = &self.phases {
            lines.extend(phases::human(p));
        }
        lines.join("\n")
    }
}

struct WorkerResult {
    issued: u64,
    completed: u64,
    opened: u64,
    failures: Failures,
    status: BTreeMap<u16, u64>,
    connect: Histogram<u64>,
    handshake: Histogram<u64>,
    response: Histogram<u64>,
    servers: ServerCounts,
    handshakes: HandshakeCounts,
    last_completed: Option<Instant>,
    first_error: Option<String>,
    /// With phases: when the run started, and each phase's result.
    phase_origin: Option<Instant>,
    phases: Vec<phases::PhaseResult>,
}

impl WorkerResult {
    fn new() -> WorkerResult {
        WorkerResult {
            issued: 0,
            completed: 0,
            opened: 0,
            failures: Failures::default(),
            status: BTreeMap::new(),
            connect: report::histogram(),
            handshake: report::histogram(),
            response: report::histogram(),
            servers: ServerCounts::new(),
            handshakes: HandshakeCounts::default(),
            last_completed: None,
            first_error: None,
            phase_origin: None,
            phases: Vec::new(),
        }
    }

    /// The phase `at` falls into and how far into it, if the run has phases.
    fn phase_at(&mut self, bounds: &[Duration], at: Instant) -> Option<(&mut phases::PhaseResult, Duration)> {
        let since = at.saturating_duration_since(self.phase_origin?);
        let i = phases::index(bounds, since);
        let into = since.saturating_sub(phases::phase_start(bounds, i));
        self.phases.get_mut(i).map(|p| (p, into))
    }

    /// Opens a connection to the target (TCP, then TLS with `tls`), recording its latencies.
    fn open(
        &mut self,
        config: &HttpConfig,
        tls: Option<&(TlsClient, Arc<rustls::ClientConfig>)>,
    ) -> io::Result<Conn<Stream>> {
        let timeout = config.limits.timeout;
        let started = Instant::now();
        let tcp = TcpStream::connect_timeout(&config.target, timeout)?;
        report::record(&mut self.connect, started.elapsed());
        self.opened += 1;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        tcp.set_nodelay(true)?;
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some((client, worker_config)) => {
                let started = Instant::now();
                let (stream, kind) = client.handshake(worker_config, tcp)?;
                let took = started.elapsed();
                report::record(&mut self.handshake, took);
                self.handshakes.add(kind);
                if let Some((phase, _)) = self.phase_at(&config.phases, Instant::now()) {
                    phase.handshake(kind, took);
                }
                stream
            }
        };
        Ok(Conn::new(stream))
    }

    /// Counts a failed operation.
    fn fail(&mut self, err: &io::Error) {
        self.failures.add(FailureKind::of(err));
        if self.first_error.is_none() {
            self.first_error = Some(err.to_string());
        }
    }
}

/// Runs an HTTP load; returns when all workers are done.
pub fn run(config: &HttpConfig, stop: StopFlag) -> Result<HttpReport> {
    if config.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if config.server_close && config.keepalive {
        bail!("--server-close needs a new connection per request (not --keepalive)");
    }
    if !config.path.starts_with('/') || config.path.contains(char::is_whitespace) {
        bail!("--path must start with `/` and contain no whitespace");
    }
    let host = config.host.clone().unwrap_or_else(|| config.target.to_string());
    if host.is_empty() || host.contains(char::is_whitespace) {
        bail!("--host must be non-empty and contain no whitespace");
    }
    let request = request_bytes(&config.path, &host, config.keepalive);
    let tls = config.tls.as_ref().map(TlsClient::new).transpose()?;

    let live = Arc::new(LiveCounters::default());
    let pacer = Pacer::new(&config.limits, config.rate, stop);
    let progress = Progress::start("http", config.limits.duration, Arc::clone(&live));
    let results = thread::scope(|scope| {
        let handles: Vec<_> = (0..config.connections)
            .map(|_| scope.spawn(|| worker(config, tls.as_ref(), &request, &pacer, &live)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("an http worker panicked")))
            .collect::<Result<Vec<_>>>()
    })?;
    drop(progress);

    let mut counts = HttpCounts {
        scheduled: pacer.scheduled(),
        ..HttpCounts::default()
    };
    let mut failures = Failures::default();
    let mut status = BTreeMap::new();
    let (mut connect, mut response) = (report::histogram(), report::histogram());
    let mut handshake = report::histogram();
    let mut handshakes = HandshakeCounts::default();
    let mut servers = ServerCounts::new();
    let mut last = pacer.start();
    let mut merged = vec![
        phases::PhaseResult::new();
        if config.phases.is_empty() {
            0
        } else {
            config.phases.len() + 1
        }
    ];
    for r in &results {
        for (into, from) in merged.iter_mut().zip(&r.phases) {
            into.merge(from);
        }
        report::merge(&mut handshake, &r.handshake);
        handshakes.merge(&r.handshakes);
        counts.issued += r.issued;
        counts.completed += r.completed;
        counts.connections_opened += r.opened;
        failures.merge(&r.failures);
        for (code, n) in &r.status {
            *status.entry(code.to_string()).or_default() += n;
        }
        report::merge(&mut connect, &r.connect);
        report::merge(&mut response, &r.response);
        report::merge_counts(&mut servers, &r.servers);
        last = last.max(r.last_completed.unwrap_or(last));
    }
    counts.failed = failures.total();
    counts.not_issued = counts.scheduled.map(|s| s.saturating_sub(counts.issued));
    if let Some(err) = results.iter().find_map(|r| r.first_error.as_ref()) {
        eprintln!("http: first failure: {err}");
    }
    let elapsed = (last - pacer.start()).as_secs_f64();
    Ok(HttpReport {
        scenario: "http",
        params: HttpParams {
            target: config.target.to_string(),
            path: config.path.clone(),
            host,
            connections: config.connections,
            keepalive: config.keepalive,
            server_close: config.server_close,
            rate: config.rate,
            duration_s: config.limits.duration.as_secs_f64(),
            count: config.limits.count,
            timeout_ms: config.limits.timeout.as_millis() as u64,
            latency_from: if config.rate.is_some() { "intended" } else { "send" },
            tls: config.tls.as_ref().map(TlsParams::of),
        },
        elapsed_s: report::round3(elapsed),
        rate: if elapsed > 0.0 {
            report::round3(counts.completed as f64 / elapsed)
        } else {
            0.0
        },
        counts,
        failures,
        status,
        latency_us: HttpLatency {
            connect: Latency::from_histogram(&connect),
            handshake: Latency::from_histogram(&handshake),
            response: Latency::from_histogram(&response),
        },
        servers,
        handshakes: config.tls.as_ref().map(|_| handshakes),
        phases: (!merged.is_empty())
            .then(|| phases::reports(&config.phases, &merged, config.limits.duration, config.tls.is_some())),
    })
}
/// The GET request sent (with `Connection: close` unless `keepalive`).
fn request_bytes(path: &str, host: &str, keepalive: bool) -> Vec<u8> {
    let connection = if keepalive { "" } else { "Connection: close\r\n" };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: xlb-bench\r\nAccept: */*\r\n{connection}\r\n")
        .into_bytes()
}

fn worker(
    config: &HttpConfig,
    tls: Option<&TlsClient>,
    request: &[u8],
    pacer: &Pacer,
    live: &LiveCounters,
) -> WorkerResult {
    let mut r = WorkerResult::new();
    if !config.phases.is_empty() {
        r.phase_origin = Some(pacer.start());
        r.phases = vec![phases::PhaseResult::new(); config.phases.len() + 1];
    }
    let tls = tls.map(|client| (client.clone(), client.worker_config()));
    let mut conn: Option<Conn<Stream>> = None;
    // Kept-alive connections are opened before the first request (as wrk does), so `connections` of them
    // carry the load even when the others would finish the requests before a slow connect. A failure here
    // is not a request's: the first request tries again and counts it.
    if config.keepalive {
        conn = r.open(config, tls.as_ref()).ok();
    }
    while let Some(slot) = pacer.take() {
        if let Some(at) = slot.intended {
            if !pacer.wait_until(at) {
                break;
            }
        }
        r.issued += 1;
        let outcome = (|| -> io::Result<(Response, Instant)> {
            let conn = match &mut conn {
                Some(conn) => conn,
                None => conn.insert(r.open(config, tls.as_ref())?),
            };
            let sent_at = Instant::now();
            conn.stream.write_all(request)?;
            let response = conn.read_response()?;
            if config.server_close {
                conn.await_close()?;
            }
            Ok((response, sent_at))
        })();
        match outcome {
            Ok((response, sent_at)) => {
                let now = Instant::now();
                let latency = now - slot.intended.unwrap_or(sent_at);
                report::record(&mut r.response, latency);
                if let Some((phase, into)) = r.phase_at(&config.phases, now) {
                    phase.complete(into, latency);
                }
                r.completed += 1;
                r.last_completed = Some(now);
                *r.status.entry(response.status).or_default() += 1;
                if let Some(name) = response.server {
                    *r.servers.entry(name).or_default() += 1;
                }
                if !(config.keepalive && response.keep_alive) {
                    conn = None;
                }
                live.ok();
            }
            Err(err) => {
                r.fail(&err);
                if let Some((phase, into)) = r.phase_at(&config.phases, Instant::now()) {
                    phase.fail(into);
                }
                conn = None;
                live.failed();
            }
        }
    }
    r
}
