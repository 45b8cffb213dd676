//! UDP load: request/response with loss accounting, and one-way blasting.
//!
//! Every worker owns one connected UDP socket (its own source port). Datagram
//! layout (all integers big-endian):
//!
//! | bytes  | request/response (`rr`)                      | blast        |
//! |--------|----------------------------------------------|--------------|
//! | 0..4   | `XLB?` in requests, `XLB!` in replies        | `XLB>`       |
//! | 4..8   | worker id                                    | worker id    |
//! | 8..16  | sequence number                              | sequence     |
//! | 16..48 | zeros; in replies the server name, 0-padded  | padding      |
//! | 48..   | padding up to `--size`                       | padding      |
//!
//! So `rr` datagrams are at least [`MIN_RR_SIZE`] bytes and blast ones at
//! least [`MIN_BLAST_SIZE`]; replies have the size of the request. The sink
//! (and any compatible server) turns `XLB?` into `XLB!` and fills in its name;
//! a plain echo server's replies are still matched, but name no server.
//!
//! In `rr` mode each datagram ends as exactly one of *received* (a matching
//! reply within the timeout) or *lost*, so `lost == sent - received` always
//! holds. A reply arriving after its datagram was given up is counted as
//! `late` (not received). Closed loop keeps `--window` datagrams in flight
//! per worker; with `--rate` datagrams follow a fixed schedule and the RTT is
//! measured from the intended send time.
//!
//! In `blast` mode nothing comes back: the generator reports what it sent and
//! the sink reports what it received.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::report::{self, Latency, Report, ServerCounts};
use super::{wait_readable, LiveCounters, Pacer, Progress, RunLimits, Slot, StopFlag, STOP_CHECK};

/// Magic of a request/response request.
pub const RR_REQUEST: &[u8; 4] = b"XLB?";
/// Magic of a request/response reply.
pub const RR_REPLY: &[u8; 4] = b"XLB!";
/// Magic of a one-way blast datagram (never answered).
pub const BLAST: &[u8; 4] = b"XLB>";
/// A datagram starting with this is answered with `server=NAME\n`.
pub const WHO: &[u8; 4] = b"WHO?";
/// Where replies carry the server name.
pub const NAME_FIELD: std::ops::Range<usize> = 16..48;
/// Smallest request/response datagram.
pub const MIN_RR_SIZE: usize = NAME_FIELD.end;
/// Smallest blast datagram.
pub const MIN_BLAST_SIZE: usize = 16;
/// Largest datagram payload.
pub const MAX_SIZE: usize = 65_507;

/// The reply a sink sends, built in place by [`sink_reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkReply {
    /// Length of the reply at the start of the buffer.
    pub len: usize,
    /// Whether the reply carries the server name.
    pub names_server: bool,
}

/// Turns the datagram `buf[..len]` into the sink's reply, in place; `None`
/// if it gets no reply.
///
/// - `XLB?` of at least [`MIN_RR_SIZE`] bytes: same bytes with `XLB!` and
///   `name` (zero-padded) in [`NAME_FIELD`];
/// - `XLB>`: no reply;
/// - `WHO?`: `server=NAME\n`;
/// - anything else: echoed unchanged.
///
/// `name` must fit in [`NAME_FIELD`] and `buf` must hold `name.len() + 8`.
pub fn sink_reply(buf: &mut [u8], len: usize, name: &[u8]) -> Option<SinkReply> {
    let data = &buf[..len];
    if data.starts_with(BLAST) {
        None
    } else if data.starts_with(RR_REQUEST) && len >= MIN_RR_SIZE {
        buf[..4].copy_from_slice(RR_REPLY);
        let field = &mut buf[NAME_FIELD];
        field.fill(0);
        field[..name.len()].copy_from_slice(name);
        Some(SinkReply {
            len,
            names_server: true,
        })
    } else if data.starts_with(WHO) {
        let answer = [b"server=".as_slice(), name, b"\n"].concat();
        buf[..answer.len()].copy_from_slice(&answer);
        Some(SinkReply {
            len: answer.len(),
            names_server: true,
        })
    } else {
        Some(SinkReply {
            len,
            names_server: false,
        })
    }
}

/// UDP generator mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UdpMode {
    /// Request/response: RTT and loss.
    Rr,
    /// One-way: send only.
    Blast,
}

/// Parameters of a UDP run.
#[derive(Debug, Clone)]
pub struct UdpConfig {
    /// Server address.
    pub target: SocketAddr,
    /// Request/response or blast.
    pub mode: UdpMode,
    /// Datagram payload size.
    pub size: usize,
    /// Datagrams per second in total (open loop); `None`: closed loop (`rr`)
    /// or as fast as possible (`blast`).
    pub rate: Option<f64>,
    /// Worker threads, each with its own socket.
    pub concurrency: usize,
    /// `rr` closed loop: datagrams in flight per worker.
    pub window: usize,
    /// Duration, count and per-datagram reply timeout.
    pub limits: RunLimits,
}

/// The parameters as reported.
#[derive(Debug, Clone, Serialize)]
pub struct UdpParams {
    /// Server address.
    pub target: String,
    /// `rr` or `blast`.
    pub mode: &'static str,
    /// Payload bytes per datagram.
    pub size: usize,
    /// Total datagrams per second asked for (`null`: unlimited).
    pub rate: Option<f64>,
    /// Worker sockets.
    pub concurrency: usize,
    /// Datagrams in flight per worker (closed-loop `rr`).
    pub window: usize,
    /// Seconds of load.
    pub duration_s: f64,
    /// Datagram limit.
    pub count: Option<u64>,
    /// Reply timeout in milliseconds.
    pub timeout_ms: u64,
}

/// Datagram counts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UdpCounts {
    /// Open loop: datagrams on the schedule.
    pub scheduled: Option<u64>,
    /// Datagrams handed to the kernel.
    pub sent: u64,
    /// Sends that failed (e.g. full socket buffer, ICMP error pending).
    pub send_failed: u64,
    /// `rr`: replies matched within the timeout.
    pub received: u64,
    /// `rr`: `sent - received`.
    pub lost: u64,
    /// `rr`: replies that came after their timeout (not in `received`).
    pub late: u64,
    /// `rr`: datagrams that matched nothing sent.
    pub unexpected: u64,
    /// ICMP port-unreachable errors reported by the socket.
    pub icmp_refused: u64,
}

impl UdpCounts {
    fn merge(&mut self, other: &UdpCounts) {
        self.sent += other.sent;
        self.send_failed += other.send_failed;
        self.received += other.received;
        self.lost += other.lost;
        self.late += other.late;
        self.unexpected += other.unexpected;
        self.icmp_refused += other.icmp_refused;
    }
}

/// Latencies of an `rr` run.
#[derive(Debug, Clone, Serialize)]
pub struct UdpLatency {
    /// Round-trip time of received replies.
    pub rtt: Latency,
}

/// Result of a UDP run.
#[derive(Debug, Clone, Serialize)]
pub struct UdpReport {
    /// Always `"udp"`.
    pub scenario: &'static str,
    /// What was asked for.
    pub params: UdpParams,
    /// Seconds from start to the last datagram sent or received.
    pub elapsed_s: f64,
    /// `rr`: replies received per second; `blast`: datagrams sent per second.
    pub rate: f64,
    /// Datagrams sent per second.
    pub sent_rate: f64,
    /// `rr`: `lost / sent` (0 if nothing was sent).
    pub loss_ratio: Option<f64>,
    /// Datagram counts.
    pub counts: UdpCounts,
    /// `rr`: latency percentiles in microseconds.
    pub latency_us: Option<UdpLatency>,
    /// `rr`: replies per server name.
    pub servers: ServerCounts,
}

impl Report for UdpReport {
    fn human(&self) -> String {
        let p = &self.params;
        let c = &self.counts;
        let mut lines = vec![format!(
            "udp {} {}: sent {} in {:.2} s = {:.0}/s ({} B each), send failures {}",
            p.mode, p.target, c.sent, self.elapsed_s, self.sent_rate, p.size, c.send_failed
        )];
        if let Some(latency) = &self.latency_us {
            lines.push(format!(
                "  received {} ({:.0}/s), lost {} ({:.2}%), late {}, unexpected {}, icmp refused {}",
                c.received,
                self.rate,
                c.lost,
                100.0 * self.loss_ratio.unwrap_or(0.0),
                c.late,
                c.unexpected,
                c.icmp_refused
            ));
            lines.push(latency.rtt.human("rtt"));
        }
        lines.extend(report::servers_human(&self.servers));
        lines.join("\n")
    }
}

/// What one worker measured.
struct WorkerResult {
    counts: UdpCounts,
    rtt: Histogram<u64>,
    servers: ServerCounts,
    last_activity: Instant,
}

/// Runs a UDP load; returns when all workers are done.
pub fn run(config: &UdpConfig, stop: StopFlag) -> Result<UdpReport> {
    let min = match config.mode {
        UdpMode::Rr => MIN_RR_SIZE,
        UdpMode::Blast => MIN_BLAST_SIZE,
    };
    if !(min..=MAX_SIZE).contains(&config.size) {
        bail!("--size must be {min} to {MAX_SIZE} bytes in this mode");
    }
    if config.concurrency == 0 || config.window == 0 {
        bail!("--concurrency and --window must be at least 1");
    }
    let sockets = (0..config.concurrency)
        .map(|_| open_socket(config.target))
        .collect::<Result<Vec<_>>>()?;
    let live = Arc::new(LiveCounters::default());
    let pacer = Pacer::new(&config.limits, config.rate, stop);
    let progress = Progress::start("udp", config.limits.duration, Arc::clone(&live));
    let results = thread::scope(|scope| {
        let handles: Vec<_> = sockets
            .into_iter()
            .enumerate()
            .map(|(id, socket)| {
                let (pacer, live) = (&pacer, &live);
                // Worker ids are below `concurrency`, a usize from the command line.
                let id = id as u32;
                scope.spawn(move || match config.mode {
                    UdpMode::Rr => rr_worker(id, socket, config, pacer, live),
                    UdpMode::Blast => blast_worker(id, socket, config, pacer, live),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a udp worker panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    drop(progress);

    let mut counts = UdpCounts {
        scheduled: pacer.scheduled(),
        ..UdpCounts::default()
    };
    let mut rtt = report::histogram();
    let mut servers = ServerCounts::new();
    let mut last = pacer.start();
    for result in &results {
        counts.merge(&result.counts);
        report::merge(&mut rtt, &result.rtt);
        report::merge_counts(&mut servers, &result.servers);
        last = last.max(result.last_activity);
    }
    let elapsed = (last - pacer.start()).as_secs_f64();
    let per_sec = |n: u64| {
        if elapsed > 0.0 {
            report::round3(n as f64 / elapsed)
        } else {
            0.0
        }
    };
    let rr = config.mode == UdpMode::Rr;
    Ok(UdpReport {
        scenario: "udp",
        params: UdpParams {
            target: config.target.to_string(),
            mode: if rr { "rr" } else { "blast" },
            size: config.size,
            rate: config.rate,
            concurrency: config.concurrency,
            window: config.window,
            duration_s: config.limits.duration.as_secs_f64(),
            count: config.limits.count,
            timeout_ms: config.limits.timeout.as_millis() as u64,
        },
        elapsed_s: report::round3(elapsed),
        rate: per_sec(if rr { counts.received } else { counts.sent }),
        sent_rate: per_sec(counts.sent),
        loss_ratio: rr.then(|| {
            if counts.sent == 0 {
                0.0
            } else {
                counts.lost as f64 / counts.sent as f64
            }
        }),
        latency_us: rr.then(|| UdpLatency {
            rtt: Latency::from_histogram(&rtt),
        }),
        counts,
        servers,
    })
}

fn open_socket(target: SocketAddr) -> Result<UdpSocket> {
    let local: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = UdpSocket::bind(local).context("cannot bind a UDP socket")?;
    socket
        .connect(target)
        .with_context(|| format!("cannot connect a UDP socket to {target}"))?;
    Ok(socket)
}

/// Writes the fixed header of a datagram.
fn header(payload: &mut [u8], magic: &[u8; 4], id: u32, seq: u64) {
    payload[..4].copy_from_slice(magic);
    payload[4..8].copy_from_slice(&id.to_be_bytes());
    payload[8..16].copy_from_slice(&seq.to_be_bytes());
}

/// A parsed `rr` reply: worker id, sequence number, server name.
fn parse_reply(data: &[u8]) -> Option<(u32, u64, Option<String>)> {
    if data.len() < MIN_RR_SIZE || !data.starts_with(RR_REPLY) {
        return None;
    }
    let id = u32::from_be_bytes(data[4..8].try_into().ok()?);
    let seq = u64::from_be_bytes(data[8..16].try_into().ok()?);
    let field = &data[NAME_FIELD];
    let name_len = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let name = std::str::from_utf8(&field[..name_len])
        .ok()
        .filter(|name| !name.is_empty())
        .map(str::to_owned);
    Some((id, seq, name))
}

/// A datagram waiting for its reply.
#[derive(Clone, Copy)]
struct InFlight {
    sent_at: Instant,
    measure_from: Instant,
}

fn rr_worker(
    id: u32,
    socket: UdpSocket,
    config: &UdpConfig,
    pacer: &Pacer,
    live: &LiveCounters,
) -> Result<WorkerResult> {
    socket.set_nonblocking(true)?;
    let timeout = config.limits.timeout;
    let open_loop = config.rate.is_some();
    let mut result = WorkerResult {
        counts: UdpCounts::default(),
        rtt: report::histogram(),
        servers: ServerCounts::new(),
        last_activity: pacer.start(),
    };
    let mut payload = vec![0u8; config.size];
    let mut recv_buf = vec![0u8; MAX_SIZE + 1];
    let mut in_flight: BTreeMap<u64, InFlight> = BTreeMap::new();
    let mut next_seq = 0u64;
    let mut pending: Option<Slot> = None;
    let mut exhausted = false;
    loop {
        // Give up on datagrams whose reply is overdue (oldest first).
        let now = Instant::now();
        while let Some((_, oldest)) = in_flight.first_key_value() {
            if now.duration_since(oldest.sent_at) < timeout {
                break;
            }
            in_flight.pop_first();
            result.counts.lost += 1;
            live.failed();
        }
        // Send every datagram that is due.
        loop {
            if pending.is_none() && !exhausted && (open_loop || in_flight.len() < config.window) {
                pending = pacer.take();
                exhausted = pending.is_none();
            }
            let Some(slot) = pending else { break };
            let now = Instant::now();
            if slot.intended.is_some_and(|at| at > now) {
                break;
            }
            pending = None;
            header(&mut payload, RR_REQUEST, id, next_seq);
            match socket.send(&payload) {
                Ok(_) => {
                    result.counts.sent += 1;
                    result.last_activity = now;
                    let measure_from = slot.intended.unwrap_or(now);
                    in_flight.insert(
                        next_seq,
                        InFlight {
                            sent_at: now,
                            measure_from,
                        },
                    );
                    next_seq += 1;
                }
                Err(err) => {
                    if err.kind() == io::ErrorKind::ConnectionRefused {
                        result.counts.icmp_refused += 1;
                    }
                    result.counts.send_failed += 1;
                    live.failed();
                }
            }
        }
        if exhausted && in_flight.is_empty() {
            return Ok(result);
        }
        // Sleep until a reply comes, the next send is due or the oldest
        // datagram times out.
        let now = Instant::now();
        let mut wait = STOP_CHECK;
        if let Some(at) = pending.and_then(|slot| slot.intended) {
            wait = wait.min(at.saturating_duration_since(now));
        }
        if let Some((_, oldest)) = in_flight.first_key_value() {
            wait = wait.min((oldest.sent_at + timeout).saturating_duration_since(now));
        }
        if !wait_readable(socket.as_raw_fd(), wait)? {
            continue;
        }
        loop {
            let len = match socket.recv(&mut recv_buf) {
                Ok(len) => len,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                    result.counts.icmp_refused += 1;
                    continue;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err).context("udp receive failed"),
            };
            let now = Instant::now();
            match parse_reply(&recv_buf[..len]) {
                Some((reply_id, seq, name)) if reply_id == id => {
                    if let Some(sent) = in_flight.remove(&seq) {
                        result.counts.received += 1;
                        result.last_activity = now;
                        report::record(&mut result.rtt, now - sent.measure_from);
                        if let Some(name) = name {
                            *result.servers.entry(name).or_default() += 1;
                        }
                        live.ok();
                    } else if seq < next_seq {
                        result.counts.late += 1;
                    } else {
                        result.counts.unexpected += 1;
                    }
                }
                _ => result.counts.unexpected += 1,
            }
        }
    }
}

fn blast_worker(
    id: u32,
    socket: UdpSocket,
    config: &UdpConfig,
    pacer: &Pacer,
    live: &LiveCounters,
) -> Result<WorkerResult> {
    let mut result = WorkerResult {
        counts: UdpCounts::default(),
        rtt: report::histogram(),
        servers: ServerCounts::new(),
        last_activity: pacer.start(),
    };
    let mut payload = vec![0u8; config.size];
    let mut seq = 0u64;
    while let Some(slot) = pacer.take() {
        if let Some(at) = slot.intended {
            if !pacer.wait_until(at) {
                break;
            }
        }
        header(&mut payload, BLAST, id, seq);
        seq += 1;
        match socket.send(&payload) {
            Ok(_) => {
                result.counts.sent += 1;
                live.ok();
            }
            Err(err) => {
                if err.kind() == io::ErrorKind::ConnectionRefused {
                    result.counts.icmp_refused += 1;
                }
                result.counts.send_failed += 1;
                live.failed();
            }
        }
    }
    result.last_activity = Instant::now();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rr_round_trip_through_sink_reply() {
        let mut buf = vec![0u8; 64];
        header(&mut buf, RR_REQUEST, 3, 42);
        let reply = sink_reply(&mut buf, 64, b"s1").unwrap();
        assert_eq!(
            reply,
            SinkReply {
                len: 64,
                names_server: true
            }
        );
        assert_eq!(parse_reply(&buf), Some((3, 42, Some("s1".to_owned()))));
    }

    #[test]
    fn other_sink_replies() {
        let mut buf = vec![0u8; 64];
        header(&mut buf, BLAST, 0, 1);
        assert_eq!(sink_reply(&mut buf, 64, b"s1"), None);
        buf[..4].copy_from_slice(WHO);
        let reply = sink_reply(&mut buf, 4, b"s1").unwrap();
        assert_eq!(&buf[..reply.len], b"server=s1\n");
        buf[..5].copy_from_slice(b"hello");
        let reply = sink_reply(&mut buf, 5, b"s1").unwrap();
        assert_eq!((&buf[..reply.len], reply.names_server), (&b"hello"[..], false));
        // Too short to carry a name: echoed, and not taken for a reply.
        header(&mut buf, RR_REQUEST, 0, 1);
        assert!(!sink_reply(&mut buf, 20, b"s1").unwrap().names_server);
        assert_eq!(parse_reply(&buf[..20]), None);
    }
}
