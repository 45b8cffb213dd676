//! `xlb-bench`: load generators and a backend server for benchmarking xlb.
//!
//! ```text
//! xlb-bench tcp-cps --target IP:PORT [--conns-per-sec R|unlimited] [--concurrency N]
//!                   [--duration S] [--request BYTES [--response-expect BYTES]] [--linger0]
//! xlb-bench udp     --target IP:PORT --mode rr|blast [--size B] [--rate PPS]
//!                   [--duration S] [--concurrency N] [--window W]
//! xlb-bench http    --target IP:PORT [--path /] [--host H] [--connections N]
//!                   [--keepalive|--new-conn|--server-close] [--rate R] [--duration S]
//!                   [--tls [--sni NAME] [--ca PEM] [--resume]] [--hold S [--threads T]]
//!                   [--phases T1,T2,..]
//! xlb-bench sink    --listen IP:PORT --proto tcp|udp|http [--name NAME] [--threads N]
//! ```
//!
//! Load subcommands also take `--count N` (stop after N operations),
//! `--timeout MS` (per connect/response/reply) and `--json` (one JSON object
//! on stdout). A human summary always goes to stderr, and a progress line
//! once per second when stderr is a terminal. SIGINT/SIGTERM stop a run
//! early; it still reports. The sink prints a JSON summary line on stdout
//! when it gets SIGINT or SIGTERM, and exits 0.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use xlb_perf::gen::http::{self, HttpConfig};
use xlb_perf::gen::report;
use xlb_perf::gen::sink::{Sink, SinkConfig, SinkProto};
use xlb_perf::gen::synflood;
use xlb_perf::gen::tcp::{self, TcpCpsConfig};
use xlb_perf::gen::tls::TlsOptions;
use xlb_perf::gen::udp::{self, UdpConfig, UdpMode};
use xlb_perf::gen::{check_server_name, parse_rate, parse_seconds, RunLimits, StopFlag};

/// Load generators and a backend server for benchmarking xlb.
#[derive(Debug, Parser)]
#[command(name = "xlb-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open and close TCP connections, as fast as possible or at a fixed rate.
    TcpCps(TcpCpsArgs),
    /// UDP request/response (RTT, loss) or one-way blast.
    Udp(UdpArgs),
    /// HTTP/1.1 GET load, closed loop or open loop at a fixed rate.
    Http(HttpArgs),
    /// Backend server naming itself in its answers; prints counts on SIGTERM.
    Sink(SinkArgs),
    /// Spoofed-source TCP SYN flood written as raw frames on an interface (AF_PACKET; needs CAP_NET_RAW).
    SynFlood(SynFloodArgs),
}

#[derive(Debug, Args)]
struct SynFloodArgs {
    /// Interface to write the frames on.
    #[arg(long, value_name = "IFACE")]
    iface: String,
    /// Destination MAC (the target's interface), aa:bb:cc:dd:ee:ff.
    #[arg(long, value_parser = parse_mac, value_name = "MAC")]
    dst_mac: [u8; 6],
    /// Source MAC of the frames.
    #[arg(long, value_parser = parse_mac, value_name = "MAC")]
    src_mac: [u8; 6],
    /// VIP and port to flood.
    #[arg(long, value_name = "IP:PORT")]
    target: std::net::SocketAddrV4,
    /// First spoofed source address.
    #[arg(long, default_value = "198.18.128.0", value_name = "IP")]
    source_base: std::net::Ipv4Addr,
    /// Number of spoofed source addresses (each with varying ports).
    #[arg(long, default_value_t = 32_768, value_name = "N")]
    sources: u32,
    /// SYNs per second, or `unlimited`.
    #[arg(long, default_value = "unlimited", value_parser = parse_rate_arg, value_name = "R")]
    rate: Rate,
    /// Seconds of flood.
    #[arg(long, default_value = "10", value_parser = parse_seconds, value_name = "S")]
    duration: Duration,
    /// Stop after this many SYNs.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).map_err(|_| format!("bad MAC {text:?}")))
        .collect::<Result<_, _>>()?;
    parts.try_into().map_err(|_| format!("bad MAC {text:?}"))
}

/// Options of every load generator.
#[derive(Debug, Args)]
struct CommonArgs {
    /// Seconds of load.
    #[arg(long, default_value = "10", value_parser = parse_seconds, value_name = "S")]
    duration: Duration,
    /// Stop after this many operations, even if time is left.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Timeout of each connect, response or reply, in milliseconds.
    #[arg(long, default_value_t = 2000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    timeout: u64,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

impl CommonArgs {
    fn limits(&self) -> RunLimits {
        RunLimits {
            duration: self.duration,
            count: self.count,
            timeout: Duration::from_millis(self.timeout),
        }
    }
}

#[derive(Debug, Args)]
struct TcpCpsArgs {
    /// Server address.
    #[arg(long, value_name = "IP:PORT")]
    target: SocketAddr,
    /// Connections per second in total, or `unlimited`.
    #[arg(long, default_value = "unlimited", value_parser = parse_rate_arg, value_name = "R")]
    conns_per_sec: Rate,
    /// Worker threads.
    #[arg(long, default_value_t = 1, value_name = "N")]
    concurrency: usize,
    /// Send this many bytes on each connection and wait for an answer.
    #[arg(long, value_name = "BYTES")]
    request: Option<usize>,
    /// Bytes of answer to wait for (default: up to the first newline).
    #[arg(long, value_name = "BYTES", requires = "request")]
    response_expect: Option<usize>,
    /// Close connections with RST instead of FIN (no TIME_WAIT).
    #[arg(long)]
    linger0: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
struct UdpArgs {
    /// Server address.
    #[arg(long, value_name = "IP:PORT")]
    target: SocketAddr,
    /// `rr`: request/response with RTT and loss; `blast`: send only.
    #[arg(long, value_enum)]
    mode: UdpMode,
    /// Payload bytes per datagram (rr: at least 48, blast: at least 16).
    #[arg(long, default_value_t = 64, value_name = "B")]
    size: usize,
    /// Datagrams per second in total (default: closed loop for rr, as fast
    /// as possible for blast).
    #[arg(long, value_parser = parse_rate_arg, value_name = "PPS")]
    rate: Option<Rate>,
    /// Worker sockets.
    #[arg(long, default_value_t = 1, value_name = "N")]
    concurrency: usize,
    /// rr closed loop: datagrams in flight per worker.
    #[arg(long, default_value_t = 1, value_name = "W")]
    window: usize,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
struct HttpArgs {
    /// Server address.
    #[arg(long, value_name = "IP:PORT")]
    target: SocketAddr,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Host header (default: the target address).
    #[arg(long, value_name = "H")]
    host: Option<String>,
    /// Connections (worker threads).
    #[arg(long, default_value_t = 1, value_name = "N")]
    connections: usize,
    /// Keep connections alive between requests (the default).
    #[arg(long, conflicts_with = "new_conn")]
    keepalive: bool,
    /// Open a new connection for every request.
    #[arg(long)]
    new_conn: bool,
    /// Open a new connection for every request and let the server close it first: after each answer, wait
    /// for the server's FIN before closing (the server then holds the TIME_WAIT).
    #[arg(long, conflicts_with = "keepalive")]
    server_close: bool,
    /// Requests per second in total: open loop, latency from the intended
    /// send time (default: closed loop).
    #[arg(long, value_parser = parse_rate_arg, value_name = "R")]
    rate: Option<Rate>,
    /// HTTPS: TLS 1.3 (rustls) over every connection.
    #[arg(long)]
    tls: bool,
    /// TLS: the SNI name (default: the Host header, or `localhost`).
    #[arg(long, value_name = "NAME", requires = "tls")]
    sni: Option<String>,
    /// TLS: check the server's certificate against this CA (PEM); without it nothing is checked.
    #[arg(long, value_name = "PEM", requires = "tls")]
    ca: Option<std::path::PathBuf>,
    /// TLS: resume sessions (tickets) on every connection after each worker's first.
    #[arg(long, requires = "tls")]
    resume: bool,
    /// Hold mode: open --connections kept-alive connections (within --duration), one request each, then hold
    /// them idle for S seconds and close them; prints `http-hold: holding N` on stderr once all are open.
    #[arg(long, value_parser = parse_seconds, value_name = "S", conflicts_with_all = ["new_conn", "server_close", "rate"])]
    hold: Option<Duration>,
    /// Hold mode: threads opening the connections.
    #[arg(long, default_value_t = 8, value_name = "T", requires = "hold")]
    threads: usize,
    /// Split the report into phases at these offsets from the start (seconds, e.g. `3,6`): counts, rates and
    /// latency histograms of each phase.
    #[arg(long, value_parser = parse_phases, value_name = "T1,T2,..", conflicts_with = "hold")]
    phases: Option<Phases>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Args)]
struct SinkArgs {
    /// Address to listen on.
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,
    /// Protocol to serve.
    #[arg(long, value_enum)]
    proto: SinkProto,
    /// Name put into answers (default: the listen address).
    #[arg(long, value_parser = parse_name)]
    name: Option<String>,
    /// TCP and HTTP: event-loop threads (default: one per CPU).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
}

/// Phase boundaries from the command line.
#[derive(Debug, Clone)]
struct Phases(Vec<Duration>);

fn parse_phases(text: &str) -> Result<Phases, String> {
    http::phases::parse_bounds(text).map(Phases)
}

/// A rate from the command line; `None` is `unlimited`.
#[derive(Debug, Clone, Copy)]
struct Rate(Option<f64>);

fn parse_rate_arg(text: &str) -> Result<Rate, String> {
    parse_rate(text).map(Rate)
}

fn parse_name(text: &str) -> Result<String, String> {
    check_server_name(text).map(|()| text.to_owned())
}

/// A flag set by SIGINT and SIGTERM.
fn stop_on_signals() -> Result<StopFlag> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("cannot install a signal handler")?;
    }
    Ok(stop)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xlb-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let stop = stop_on_signals()?;
    match cli.command {
        Command::TcpCps(args) => {
            let config = TcpCpsConfig {
                target: args.target,
                rate: args.conns_per_sec.0,
                concurrency: args.concurrency,
                request: args.request,
                response_expect: args.response_expect,
                linger0: args.linger0,
                limits: args.common.limits(),
            };
            report::print(&tcp::run(&config, stop)?, args.common.json)
        }
        Command::Udp(args) => {
            let config = UdpConfig {
                target: args.target,
                mode: args.mode,
                size: args.size,
                rate: args.rate.and_then(|rate| rate.0),
                concurrency: args.concurrency,
                window: args.window,
                limits: args.common.limits(),
            };
            report::print(&udp::run(&config, stop)?, args.common.json)
        }
        Command::Http(args) => {
            let config = HttpConfig {
                target: args.target,
                path: args.path,
                connections: args.connections,
                keepalive: args.keepalive || !(args.new_conn || args.server_close),
                server_close: args.server_close,
                rate: args.rate.and_then(|rate| rate.0),
                tls: args.tls.then(|| TlsOptions {
                    server_name: args
                        .sni
                        .or_else(|| args.host.clone())
                        .unwrap_or_else(|| "localhost".to_owned()),
                    ca: args.ca,
                    resume: args.resume,
                }),
                host: args.host,
                limits: args.common.limits(),
                phases: args.phases.map(|p| p.0).unwrap_or_default(),
            };
            match args.hold {
                Some(hold) => report::print(&http::hold(&config, args.threads, hold, stop)?, args.common.json),
                None => report::print(&http::run(&config, stop)?, args.common.json),
            }
        }
        Command::SynFlood(args) => {
            let config = synflood::SynFloodConfig {
                iface: args.iface,
                dst_mac: args.dst_mac,
                src_mac: args.src_mac,
                target: args.target,
                source_base: args.source_base,
                sources: args.sources,
                rate: args.rate.0,
                duration: args.duration,
                count: args.count,
            };
            let r = synflood::run(&config, stop)?;
            if args.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "syn-flood {}: {} SYNs in {:.1} s ({:.0}/s) from {} sources",
                    r.target, r.sent, r.duration_s, r.rate, r.sources
                );
            }
            Ok(())
        }
        Command::Sink(args) => {
            let name = match args.name {
                Some(name) => name,
                None => {
                    let name = args.listen.to_string();
                    check_server_name(&name).map_err(anyhow::Error::msg)?;
                    name
                }
            };
            let config = SinkConfig {
                listen: args.listen,
                proto: args.proto,
                name,
                threads: args.threads.map_or_else(
                    || std::thread::available_parallelism().map_or(1, usize::from),
                    usize::from,
                ),
            };
            let sink = Sink::bind(config.clone()).with_context(|| format!("cannot listen on {}", config.listen))?;
            eprintln!(
                "xlb-bench sink: {} `{}` listening on {}",
                config.proto.as_str(),
                config.name,
                sink.local_addr()?
            );
            let summary = sink.run(&stop)?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(())
        }
    }
}
