//! `http --hold`: many kept-alive connections opened, one request each, then held idle (the memory a server
//! holds per idle connection).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde::Serialize;

use super::{request_bytes, Conn, HttpConfig, HttpCounts, HttpLatency, HttpParams, Response, TlsParams, WorkerResult};
use crate::gen::report::{self, Failures, Latency, Report};
use crate::gen::tls::{HandshakeCounts, Stream, TlsClient};
use crate::gen::StopFlag;

/// Result of [`hold`]: connections opened, one request each, then held idle.
#[derive(Debug, Clone, Serialize)]
pub struct HoldReport {
    /// Always `"http-hold"`.
    pub scenario: &'static str,
    /// What was asked for (`connections`: how many to hold; `duration_s`: longest time to open them).
    pub params: HttpParams,
    /// Threads that opened the connections.
    pub threads: usize,
    /// Seconds the connections were to be held.
    pub hold_s: f64,
    /// Seconds it took to open them (and get each one answer).
    pub opening_s: f64,
    /// Connections held idle, each after one answered request.
    pub held: u64,
    /// Request counts (one request per connection).
    pub counts: HttpCounts,
    /// Failed requests by kind.
    pub failures: Failures,
    /// Completed requests by status code.
    pub status: BTreeMap<String, u64>,
    /// Latency percentiles.
    pub latency_us: HttpLatency,
    /// HTTPS: TLS handshakes by kind.
    pub handshakes: Option<HandshakeCounts>,
}

impl Report for HoldReport {
    fn human(&self) -> String {
        let mut lines = vec![
            format!(
                "http-hold {}: {} of {} connections held idle for {:.1} s after one request each (opened in {:.2} \
                 s by {} threads); {}",
                self.params.target,
                self.held,
                self.params.connections,
                self.hold_s,
                self.opening_s,
                self.threads,
                self.failures.human()
            ),
            self.latency_us.connect.human("connect"),
        ];
        if let Some(h) = &self.handshakes {
            lines.push(format!("  TLS handshakes: {} full, {} resumed", h.full, h.resumed));
            lines.push(self.latency_us.handshake.human("handshake"));
        }
        lines.push(self.latency_us.response.human("response"));
        lines.join("\n")
    }
}

/// The line [`hold`] writes to stderr once every connection is open (followed by their number).
pub const HOLDING: &str = "http-hold: holding";

/// Opens `config.connections` kept-alive connections with `threads` threads (within `config.limits.duration`),
/// sends one request on each and reads its answer, then holds the connections idle for `hold_for` (or until
/// stopped) and closes them. Once all are open it writes [`HOLDING`] and their number on a line to stderr, so
/// a caller can measure the server while they are held.
pub fn hold(config: &HttpConfig, threads: usize, hold_for: Duration, stop: StopFlag) -> Result<HoldReport> {
    if config.connections == 0 || threads == 0 {
        bail!("--connections and --threads must be at least 1");
    }
    raise_nofile(config.connections as u64 * 2 + 1024);
    let host = config.host.clone().unwrap_or_else(|| config.target.to_string());
    let request = request_bytes(&config.path, &host, true);
    let tls = config.tls.as_ref().map(TlsClient::new).transpose()?;
    let started = Instant::now();
    let deadline = started + config.limits.duration;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.min(config.connections))
            .map(|_| {
                scope.spawn(|| {
                    let mut r = WorkerResult::new();
                    let tls = tls.as_ref().map(|client| (client.clone(), client.worker_config()));
                    let mut held = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                        if next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= config.connections {
                            break;
                        }
                        r.issued += 1;
                        let outcome = (|| -> io::Result<(Conn<Stream>, Response)> {
                            let mut conn = r.open(config, tls.as_ref())?;
                            let sent_at = Instant::now();
                            conn.stream.write_all(&request)?;
                            let response = conn.read_response()?;
                            report::record(&mut r.response, sent_at.elapsed());
                            Ok((conn, response))
                        })();
                        match outcome {
                            Ok((conn, response)) => {
                                r.completed += 1;
                                *r.status.entry(response.status).or_default() += 1;
                                if response.keep_alive {
                                    held.push(conn);
                                }
                            }
                            Err(err) => r.fail(&err),
                        }
                    }
                    (r, held)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("an http-hold worker panicked")))
            .collect::<Result<Vec<_>>>()
    })?;
    let opening = started.elapsed();
    let held: u64 = results.iter().map(|(_, h)| h.len() as u64).sum();
    eprintln!("{HOLDING} {held}");
    let _ = io::stderr().flush();
    let hold_started = Instant::now();
    while hold_started.elapsed() < hold_for && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        thread::sleep((hold_for - hold_started.elapsed()).min(Duration::from_millis(50)));
    }
    let held_s = hold_started.elapsed().as_secs_f64();
    let mut counts = HttpCounts::default();
    let mut failures = Failures::default();
    let mut status = BTreeMap::new();
    let (mut connect, mut handshake, mut response) = (report::histogram(), report::histogram(), report::histogram());
    let mut handshakes = HandshakeCounts::default();
    for (r, conns) in results {
        drop(conns);
        counts.issued += r.issued;
        counts.completed += r.completed;
        counts.connections_opened += r.opened;
        failures.merge(&r.failures);
        for (code, n) in &r.status {
            *status.entry(code.to_string()).or_default() += n;
        }
        report::merge(&mut connect, &r.connect);
        report::merge(&mut handshake, &r.handshake);
        report::merge(&mut response, &r.response);
        handshakes.merge(&r.handshakes);
        if let Some(err) = r.first_error {
            eprintln!("http-hold: a failure: {err}");
        }
    }
    counts.failed = failures.total();
    Ok(HoldReport {
        scenario: "http-hold",
        params: HttpParams {
            target: config.target.to_string(),
            path: config.path.clone(),
            host,
            connections: config.connections,
            keepalive: true,
            server_close: false,
            rate: None,
            duration_s: config.limits.duration.as_secs_f64(),
            count: None,
            timeout_ms: config.limits.timeout.as_millis() as u64,
            latency_from: "send",
            tls: config.tls.as_ref().map(TlsParams::of),
        },
        threads,
        hold_s: report::round3(held_s),
        opening_s: report::round3(opening.as_secs_f64()),
        held,
        counts,
        failures,
        status,
        latency_us: HttpLatency {
            connect: Latency::from_histogram(&connect),
            handshake: Latency::from_histogram(&handshake),
            response: Latency::from_histogram(&response),
        },
        handshakes: config.tls.as_ref().map(|_| handshakes),
    })
}

/// Raises the soft and hard limit of open files to `want` if they are lower (best effort: needs root to raise
/// the hard limit).
fn raise_nofile(want: u64) {
    // SAFETY: an all-zero rlimit is a valid value for getrlimit(2) to overwrite.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur >= want {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: limit.rlim_max.max(want),
    };
    // SAFETY: a valid rlimit for the call to read.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
}
