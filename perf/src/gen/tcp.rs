//! TCP connection rate (`tcp-cps`): open and close connections, optionally
//! with one request/response on each.
//!
//! Closed loop (no rate): `concurrency` workers each open a connection, do
//! the optional exchange, close it and start over until the duration ends.
//! Open loop (`--conns-per-sec R`): connection `i` is due at `start + i / R`;
//! workers pick up due connections, and how late each one started is
//! reported as `schedule_lag`.
//!
//! A connection is *completed* when the handshake succeeded and, with a
//! request, the whole expected response arrived; every attempt is either
//! completed or counted as one failure, so `attempted == completed + failed`.
//! The connect latency is measured from `connect()` to the end of the
//! handshake, the response latency from the first request byte to the last
//! expected response byte.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::report::{self, FailureKind, Failures, Latency, Report, ServerCounts};
use super::{server_name, LiveCounters, Pacer, Progress, RunLimits, StopFlag};

/// Parameters of a `tcp-cps` run.
#[derive(Debug, Clone)]
pub struct TcpCpsConfig {
    /// Server address.
    pub target: SocketAddr,
    /// Connections per second in total (open loop); `None`: as fast as the
    /// workers go.
    pub rate: Option<f64>,
    /// Worker threads.
    pub concurrency: usize,
    /// Bytes to send on each connection (none: connect and close).
    pub request: Option<usize>,
    /// Bytes to read back per connection; `None` with a request: read up to
    /// the first newline (the sink's `server=NAME` line).
    pub response_expect: Option<usize>,
    /// Close with RST (`SO_LINGER` 0) instead of FIN, leaving no TIME_WAIT.
    pub linger0: bool,
    /// Duration, count and per-step timeout.
    pub limits: RunLimits,
}

/// The parameters as reported.
#[derive(Debug, Clone, Serialize)]
pub struct TcpCpsParams {
    /// Server address.
    pub target: String,
    /// Connections per second asked for (`null`: unlimited).
    pub conns_per_sec: Option<f64>,
    /// Worker threads.
    pub concurrency: usize,
    /// Seconds of load.
    pub duration_s: f64,
    /// Connection limit.
    pub count: Option<u64>,
    /// Timeout of connect and of the response, in milliseconds.
    pub timeout_ms: u64,
    /// Request bytes per connection.
    pub request: Option<usize>,
    /// Response bytes expected per connection.
    pub response_expect: Option<usize>,
    /// Whether connections are closed with RST.
    pub linger0: bool,
}

/// Connection counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TcpCpsCounts {
    /// Open loop: connections on the schedule.
    pub scheduled: Option<u64>,
    /// Connection attempts started.
    pub attempted: u64,
    /// Handshakes that succeeded.
    pub connected: u64,
    /// Connections that did everything asked.
    pub completed: u64,
    /// Attempts that failed (`attempted - completed`).
    pub failed: u64,
}

/// Latency percentiles of a `tcp-cps` run, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct TcpCpsLatency {
    /// `connect()` until the handshake completed.
    pub connect: Latency,
    /// First request byte until the last expected response byte.
    pub response: Latency,
    /// Open loop: how late connections started against the schedule.
    pub schedule_lag: Option<Latency>,
}

/// Result of a `tcp-cps` run.
#[derive(Debug, Clone, Serialize)]
pub struct TcpCpsReport {
    /// Always `"tcp-cps"`.
    pub scenario: &'static str,
    /// What was asked for.
    pub params: TcpCpsParams,
    /// Seconds from start to the last completed connection.
    pub elapsed_s: f64,
    /// Completed connections per second.
    pub rate: f64,
    /// Connection counts.
    pub counts: TcpCpsCounts,
    /// Failed attempts by kind.
    pub failures: Failures,
    /// Latency percentiles.
    pub latency_us: TcpCpsLatency,
    /// Responses per server name (from a `server=NAME` first line).
    pub servers: ServerCounts,
}

impl Report for TcpCpsReport {
    fn human(&self) -> String {
        let c = &self.counts;
        let mut lines = vec![
            format!(
                "tcp-cps {}: {} connections completed in {:.2} s = {:.0}/s; {} of {} attempts",
                self.params.target,
                c.completed,
                self.elapsed_s,
                self.rate,
                self.failures.human(),
                c.attempted
            ),
            self.latency_us.connect.human("connect"),
        ];
        if self.params.request.is_some() {
            lines.push(self.latency_us.response.human("response"));
        }
        if let Some(lag) = &self.latency_us.schedule_lag {
            lines.push(lag.human("lag"));
        }
        lines.extend(report::servers_human(&self.servers));
        lines.join("\n")
    }
}

struct WorkerResult {
    counts: TcpCpsCounts,
    failures: Failures,
    connect: Histogram<u64>,
    response: Histogram<u64>,
    lag: Histogram<u64>,
    servers: ServerCounts,
    last_completed: Option<Instant>,
    first_error: Option<String>,
}

/// Runs `tcp-cps`; returns when all workers are done.
pub fn run(config: &TcpCpsConfig, stop: StopFlag) -> Result<TcpCpsReport> {
    if config.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if config.response_expect.is_some() && config.request.is_none() {
        bail!("--response-expect needs --request");
    }
    let request = config.request.map(|len| vec![b'x'; len]);
    let live = Arc::new(LiveCounters::default());
    let pacer = Pacer::new(&config.limits, config.rate, stop);
    let progress = Progress::start("tcp-cps", config.limits.duration, Arc::clone(&live));
    let results = thread::scope(|scope| {
        let handles: Vec<_> = (0..config.concurrency)
            .map(|_| scope.spawn(|| worker(config, request.as_deref(), &pacer, &live)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a tcp-cps worker panicked")))
            .collect::<Result<Vec<_>>>()
    })?;
    drop(progress);

    let mut counts = TcpCpsCounts {
        scheduled: pacer.scheduled(),
        ..TcpCpsCounts::default()
    };
    let mut failures = Failures::default();
    let (mut connect, mut response, mut lag) = (report::histogram(), report::histogram(), report::histogram());
    let mut servers = ServerCounts::new();
    let mut last = pacer.start();
    for r in &results {
        counts.attempted += r.counts.attempted;
        counts.connected += r.counts.connected;
        counts.completed += r.counts.completed;
        failures.merge(&r.failures);
        report::merge(&mut connect, &r.connect);
        report::merge(&mut response, &r.response);
        report::merge(&mut lag, &r.lag);
        report::merge_counts(&mut servers, &r.servers);
        last = last.max(r.last_completed.unwrap_or(last));
    }
    counts.failed = failures.total();
    if let Some(err) = results.iter().find_map(|r| r.first_error.as_ref()) {
        eprintln!("tcp-cps: first failure: {err}");
    }
    let elapsed = (last - pacer.start()).as_secs_f64();
    Ok(TcpCpsReport {
        scenario: "tcp-cps",
        params: TcpCpsParams {
            target: config.target.to_string(),
            conns_per_sec: config.rate,
            concurrency: config.concurrency,
            duration_s: config.limits.duration.as_secs_f64(),
            count: config.limits.count,
            timeout_ms: config.limits.timeout.as_millis() as u64,
            request: config.request,
            response_expect: config.response_expect,
            linger0: config.linger0,
        },
        elapsed_s: report::round3(elapsed),
        rate: if elapsed > 0.0 {
            report::round3(counts.completed as f64 / elapsed)
        } else {
            0.0
        },
        counts,
        failures,
        latency_us: TcpCpsLatency {
            connect: Latency::from_histogram(&connect),
            response: Latency::from_histogram(&response),
            schedule_lag: config.rate.map(|_| Latency::from_histogram(&lag)),
        },
        servers,
    })
}

fn worker(config: &TcpCpsConfig, request: Option<&[u8]>, pacer: &Pacer, live: &LiveCounters) -> WorkerResult {
    let mut r = WorkerResult {
        counts: TcpCpsCounts::default(),
        failures: Failures::default(),
        connect: report::histogram(),
        response: report::histogram(),
        lag: report::histogram(),
        servers: ServerCounts::new(),
        last_completed: None,
        first_error: None,
    };
    let timeout = config.limits.timeout;
    while let Some(slot) = pacer.take() {
        if let Some(at) = slot.intended {
            if !pacer.wait_until(at) {
                break;
            }
            report::record(&mut r.lag, at.elapsed());
        }
        r.counts.attempted += 1;
        let outcome = (|| -> io::Result<()> {
            let started = Instant::now();
            let mut stream = TcpStream::connect_timeout(&config.target, timeout)?;
            report::record(&mut r.connect, started.elapsed());
            r.counts.connected += 1;
            if let Some(request) = request {
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                stream.set_nodelay(true)?;
                let started = Instant::now();
                stream.write_all(request)?;
                let answer = read_answer(&mut stream, config.response_expect)?;
                report::record(&mut r.response, started.elapsed());
                if let Some(name) = server_name(&answer) {
                    *r.servers.entry(name).or_default() += 1;
                }
            }
            if config.linger0 {
                set_linger0(&stream)?;
            }
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                r.counts.completed += 1;
                r.last_completed = Some(Instant::now());
                live.ok();
            }
            Err(err) => {
                r.failures.add(FailureKind::of(&err));
                if r.first_error.is_none() {
                    r.first_error = Some(err.to_string());
                }
                live.failed();
            }
        }
    }
    r
}

/// Reads `expect` bytes, or up to the first newline if `None`.
fn read_answer(stream: &mut TcpStream, expect: Option<usize>) -> io::Result<Vec<u8>> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let done = match expect {
            Some(len) => answer.len() >= len,
            None => answer.contains(&b'\n'),
        };
        if done {
            return Ok(answer);
        }
        let want = expect.map_or(chunk.len(), |len| (len - answer.len()).min(chunk.len()));
        let n = stream.read(&mut chunk[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed after {} response bytes", answer.len()),
            ));
        }
        answer.extend_from_slice(&chunk[..n]);
    }
}

/// Makes the close send RST instead of FIN.
fn set_linger0(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the option value is a valid `linger` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
