//! `xlbctl`: the control CLI of a running xlb (talks to its control socket, or to its TCP API with `--api`).
//!
//! It depends on the API types (`xlb-api`) only, not on the datapath: it builds without clang, libbpf, libxdp or
//! xsk-rs (`cargo build -p xlbctl`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use xlb_api::client::Endpoint;
use xlb_api::node::{NodeFile, DEFAULT_CONTROL_SOCKET};
use xlb_api::{Applied, Conns, Ha, ListenerCerts, ListenerSpec, RunningConfig, ServerWeight, StatsDoc, Status};

/// Prints a line to stdout; a closed stdout (`xlbctl ... | head -1`) ends the program quietly, with success.
macro_rules! out {
    ($($arg:tt)*) => {
        emit(format_args!($($arg)*), true)
    };
}

/// [`out!`] without the newline.
macro_rules! out_part {
    ($($arg:tt)*) => {
        emit(format_args!($($arg)*), false)
    };
}

/// Writes to stdout; on a broken pipe the reader has gone away: exit 0 without a word (no panic, no message).
fn emit(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|_| if newline { stdout.write_all(b"\n") } else { Ok(()) });
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "xlbctl: writing to stdout: {e}");
            std::process::exit(1);
        }
    }
}

/// Prints a document as pretty JSON.
fn print_json(doc: &impl Serialize) {
    match serde_json::to_string_pretty(doc) {
        Ok(text) => out!("{text}"),
        Err(e) => out!("{{\"error\": \"{e}\"}}"),
    }
}

#[derive(Parser)]
#[command(name = "xlbctl", version, about = "Control a running xlb")]
struct Cli {
    /// Control socket of the node (default: the one named in --config, else /run/xlb/xlb.sock).
    #[arg(long, short, global = true, env = "XLB_SOCKET")]
    socket: Option<PathBuf>,
    /// Config file of the node, to find its control socket.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The node's TCP control API (`node.api_address`) instead of its Unix socket.
    #[arg(long, global = true, env = "XLB_API", value_name = "ADDR:PORT")]
    api: Option<std::net::SocketAddr>,
    /// File holding the TCP API's token (with --api).
    #[arg(long, global = true, env = "XLB_API_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Print the raw JSON document.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Node name, uptime and whether every worker runs.
    Status,
    /// Datapath counters per worker and interface.
    Stats {
        /// Print again every SECONDS (until interrupted).
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
    },
    /// Listeners and their servers with weights, health and connections (like `ipvsadm -Ln`).
    List,
    /// The running listeners, groups and [l4] settings (JSON).
    Config,
    /// Connection entries, optionally filtered.
    Conns {
        #[arg(long)]
        listener: Option<String>,
        /// Backend server ip:port.
        #[arg(long)]
        server: Option<String>,
        /// Client address.
        #[arg(long)]
        client: Option<String>,
        /// syn_recv | established | fin_wait | time_wait | close | udp
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Re-read the config file and apply the difference (like SIGHUP).
    Reload,
    /// Change a group's servers.
    Server {
        #[command(subcommand)]
        action: ServerAction,
    },
    /// Add or remove listeners.
    Listener {
        #[command(subcommand)]
        action: ListenerAction,
    },
    /// The certificates of the HTTPS listeners; `xlbctl cert reload` re-reads their files (new handshakes use
    /// them, established connections keep theirs).
    Cert {
        #[command(subcommand)]
        action: Option<CertAction>,
    },
    /// HA state; `xlbctl ha drain` hands mastership over for maintenance.
    Ha {
        #[command(subcommand)]
        action: Option<HaAction>,
    },
}

#[derive(Subcommand)]
enum CertAction {
    /// List the certificates and the names SNI chooses them for (the default).
    List,
    /// Re-read every HTTPS listener's certificate and key files (all or nothing).
    Reload,
}

#[derive(Subcommand)]
enum HaAction {
    /// Hand mastership over to the peer and stay backup (then restart or upgrade this node).
    Drain,
}

#[derive(Subcommand)]
enum ServerAction {
    /// Add a server to a group (weight 1 unless given).
    Add {
        group: String,
        addr: String,
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Set a server's weight.
    Set {
        group: String,
        addr: String,
        #[arg(long)]
        weight: u32,
    },
    /// Weight 0: no new flows; established ones continue.
    Drain { group: String, addr: String },
    /// Remove a server (its established flows follow `[l4] on_server_removed`).
    Remove { group: String, addr: String },
}

#[derive(Subcommand)]
enum ListenerAction {
    /// Add (or replace) a listener.
    Add {
        name: String,
        #[arg(long)]
        vip: String,
        #[arg(long)]
        port: u16,
        /// tcp | udp
        #[arg(long, default_value = "tcp")]
        protocol: String,
        /// rr | wrr | wlc | sh | mh
        #[arg(long, default_value = "wrr")]
        scheduler: String,
        /// fullnat | dr
        #[arg(long, default_value = "fullnat")]
        forwarding: String,
        #[arg(long)]
        group: String,
        /// Interface to announce the VIP on.
        #[arg(long)]
        interface: Option<String>,
    },
    /// Remove a listener.
    Remove { name: String },
}

fn socket_path(cli: &Cli) -> Result<PathBuf, String> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    if let Some(c) = &cli.config {
        let text = std::fs::read_to_string(c).map_err(|e| format!("{}: {e}", c.display()))?;
        let file: NodeFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", c.display()))?;
        return Ok(file.node.control_socket);
    }
    Ok(PathBuf::from(DEFAULT_CONTROL_SOCKET))
}

/// Sends a request and reads the 200 answer as `T` (any other status: the API's error message).
fn call<T: DeserializeOwned>(cli: &Cli, method: &str, path: &str, body: Option<&Value>) -> Result<T, String> {
    match cli.api {
        Some(addr) => {
            let file = cli.token_file.as_ref().ok_or("--api needs --token-file")?;
            let token = std::fs::read_to_string(file).map_err(|e| format!("--token-file {}: {e}", file.display()))?;
            Endpoint::Tcp {
                addr,
                token: token.trim(),
            }
            .call(method, path, body)
        }
        None => Endpoint::Unix(&socket_path(cli)?).call(method, path, body),
    }
}

fn get<T: DeserializeOwned>(cli: &Cli, path: &str) -> Result<T, String> {
    call(cli, "GET", path, None)
}

/// Sends a change and prints what was applied.
fn change(cli: &Cli, method: &str, path: &str, body: Option<Value>) -> Result<(), String> {
    let reply: Applied = call(cli, method, path, body.as_ref())?;
    if cli.json {
        print_json(&reply);
    } else {
        out!("applied: {}", reply.applied);
    }
    Ok(())
}

/// A request body from an API type.
fn body(value: &impl Serialize) -> Result<Value, String> {
    serde_json::to_value(value).map_err(|e| e.to_string())
}

fn print_stats(doc: &StatsDoc) {
    type Field = fn(&xlb_api::WorkerCounters) -> u64;
    let rows: [(&str, Field); 11] = [
        ("rx frames", |c| c.rx_frames),
        ("tx frames", |c| c.tx_frames),
        ("rx bytes", |c| c.rx_bytes),
        ("tx bytes", |c| c.tx_bytes),
        ("arp replies", |c| c.arp_replies),
        ("echo replies", |c| c.icmp_echo_replies),
        ("tcp resets", |c| c.tcp_resets),
        ("icmp unreach", |c| c.icmp_unreachables),
        ("ttl exceeded", |c| c.icmp_time_exceeded),
        ("reassembled", |c| c.reassembled),
        ("free frames", |c| c.free_frames),
    ];
    out_part!("{:<16}", "worker");
    for w in &doc.workers {
        out_part!("{:>14}", w.name);
    }
    out!("{:>14}", "total");
    for (label, field) in rows {
        out_part!("{label:<16}");
        for w in &doc.workers {
            out_part!("{:>14}", field(&w.counters));
        }
        out!("{:>14}", field(&doc.totals));
    }
    let nonzero: Vec<_> = doc.totals.drops.iter().filter(|(_, n)| **n > 0).collect();
    out!("\ndrops{}", if nonzero.is_empty() { ": none" } else { "" });
    for (reason, n) in nonzero {
        out!("  {reason:<24}{n:>14}");
    }
    if let Some(l7) = &doc.l7 {
        out!(
            "\nl7: {} sessions, {} connections ({} KiB of buffers), {} idle upstreams, upstream reuse {:.1} %",
            l7.sessions,
            l7.connections,
            l7.buffer_bytes / 1024,
            l7.idle_upstreams,
            l7.upstream_reuse * 100.0
        );
        for (name, n) in l7.counts.iter().filter(|(_, n)| **n > 0) {
            out!("  {name:<32}{n:>8}");
        }
    }
    // The same drops where they belong to a listener's flows.
    for l in &doc.l4.listeners {
        for (reason, n) in &l.drops {
            out!("  listener {}: {reason:<24}{n:>14}", l.name);
        }
    }
    let l4 = &doc.l4;
    let ports = &l4.local_ports;
    out!(
        "\nconnections {}  evicted {}\nlocal ports (L4 flows and L7 upstream connections): {} in use in {} pools of {} (fullest: {}), {} quarantined",
        l4.conns,
        l4.evicted,
        ports.in_use,
        ports.pools,
        ports.per_pool,
        ports.busiest_pool,
        ports.quarantined
    );
    if l4.pressure > 0 || l4.short_timeouts > 0 {
        out!(
            "under pressure: {} of {} workers (table or local ports above [l4] pressure_percent), {} entries given short timeouts",
            l4.pressure,
            l4.workers.len(),
            l4.short_timeouts
        );
    }
    for l in l4
        .listeners
        .iter()
        .filter(|l| l.syn_proxy != "off" && !l.syn_proxy.is_empty())
    {
        out!(
            "listener {}: SYN proxy {} ({} of {} workers on), {} SYNs answered with cookies, {} completed",
            l.name,
            l.syn_proxy,
            l.syn_proxy_on,
            l4.workers.len(),
            l.syn_cookies_sent,
            l.syn_cookies_valid
        );
    }
    let health = &l4.health;
    if health.probes > 0 {
        out!(
            "\nhealth checks: {} probes, {} ok, {} failed ({} timeouts), {} replies with a bad checksum",
            health.probes,
            health.successes,
            health.failures,
            health.timeouts,
            health.bad_checksum
        );
        if health.bad_checksum > 0 {
            out!("  (bad checksums: servers with TX checksum offload on veth/virtual NICs? see xlb's log)");
        }
    }
    out!(
        "\n{:<10}{:>9}{:>14}{:>16}{:>14}",
        "interface",
        "xdp",
        "to xlb",
        "to kernel",
        "no socket"
    );
    for i in &doc.interfaces {
        out!(
            "{:<10}{:>9}{:>14}{:>16}{:>14}",
            i.name,
            i.xdp_mode,
            i.to_socket,
            i.passed_not_ours,
            i.passed_no_socket
        );
    }
}

fn print_list(doc: &StatsDoc) {
    out!(
        "{:<6}{:<24}{:<10}{:<9}Listener",
        "Prot",
        "LocalAddress:Port",
        "Scheduler",
        "Forward"
    );
    out!(
        "  -> {:<24}{:>7}{:>9}{:>12}{:>11}{:>12}",
        "RemoteAddress:Port",
        "Weight",
        "Health",
        "ActiveConn",
        "InActConn",
        "TotalConns"
    );
    for l in &doc.l4.listeners {
        out!(
            "{:<6}{:<24}{:<10}{:<9}{} (group {}, {} new conn/s)",
            l.protocol.to_uppercase(),
            format!("{}:{}", l.vip, l.port),
            l.scheduler,
            l.forwarding,
            l.name,
            l.group,
            l.conns_per_sec,
        );
        for s in &l.servers {
            out!(
                "  -> {:<24}{:>7}{:>9}{:>12}{:>11}{:>12}",
                s.addr,
                s.weight,
                if s.healthy { "up" } else { "DOWN" },
                s.active_conns,
                s.inactive_conns,
                s.conns_total,
            );
        }
    }
}

fn print_conns(doc: &Conns) {
    out!(
        "{:<5}{:<22}{:<22}{:<22}{:<22}{:<12}{:>9}{:>4}",
        "Prot",
        "Client",
        "VIP",
        "Local",
        "Server",
        "State",
        "Expires",
        "W"
    );
    for c in &doc.conns {
        out!(
            "{:<5}{:<22}{:<22}{:<22}{:<22}{:<12}{:>8.0}s{:>4}",
            c.protocol.to_uppercase(),
            c.client,
            c.vip,
            c.local,
            c.server,
            c.state,
            c.expires_in_s,
            c.worker,
        );
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    match &cli.command {
        Command::Status => {
            let doc: Status = get(cli, "/v1/status")?;
            if cli.json {
                print_json(&doc);
            } else {
                let state = if doc.healthy { "running" } else { "NOT all running" };
                out!("node {}: up {} s, workers {state}", doc.node, doc.uptime_s);
            }
            Ok(())
        }
        Command::Stats { watch } => loop {
            let doc: StatsDoc = get(cli, "/v1/stats")?;
            if cli.json {
                print_json(&doc)
            } else {
                print_stats(&doc)
            }
            match watch {
                Some(secs) => {
                    std::thread::sleep(std::time::Duration::from_secs((*secs).max(1)));
                    out!("");
                }
                None => return Ok(()),
            }
        },
        Command::List => {
            let doc: StatsDoc = get(cli, "/v1/stats")?;
            if cli.json {
                print_json(&doc.l4);
            } else {
                print_list(&doc)
            }
            Ok(())
        }
        Command::Config => {
            let doc: RunningConfig = get(cli, "/v1/config")?;
            print_json(&doc);
            Ok(())
        }
        Command::Reload => change(cli, "POST", "/v1/reload", None),
        Command::Cert {
            action: Some(CertAction::Reload),
        } => change(cli, "POST", "/v1/certs/reload", None),
        Command::Cert {
            action: None | Some(CertAction::List),
        } => {
            let doc: Vec<ListenerCerts> = get(cli, "/v1/certs")?;
            if cli.json {
                print_json(&doc);
            } else {
                for l in &doc {
                    out!("{}", l.listener);
                    for (i, c) in l.certs.iter().enumerate() {
                        let default = if i == 0 { " (default)" } else { "" };
                        out!("  {}{default}: {}", c.source, c.names.join(", "));
                    }
                }
            }
            Ok(())
        }
        Command::Ha {
            action: Some(HaAction::Drain),
        } => change(cli, "POST", "/v1/ha/drain", None),
        Command::Ha { action: None } => {
            let doc: Ha = get(cli, "/v1/ha")?;
            if cli.json {
                print_json(&doc);
            } else {
                match &doc.counters {
                    Some(c) => out!(
                        "ha: {}{}, resynced {}, sync records sent {} received {}, rejected {}",
                        doc.state,
                        if c.draining { " (draining)" } else { "" },
                        c.resynced,
                        c.sync_records_sent,
                        c.sync_records_received,
                        c.sync_rejected
                    ),
                    None => out!("ha: {}", doc.state),
                }
            }
            Ok(())
        }
        Command::Conns {
            listener,
            server,
            client,
            state,
            limit,
        } => {
            let mut query = format!("limit={limit}");
            for (k, v) in [
                ("listener", listener),
                ("server", server),
                ("client", client),
                ("state", state),
            ] {
                if let Some(v) = v {
                    query.push_str(&format!("&{k}={v}"));
                }
            }
            let doc: Conns = get(cli, &format!("/v1/conns?{query}"))?;
            if cli.json {
                print_json(&doc);
            } else {
                print_conns(&doc);
            }
            Ok(())
        }
        Command::Server { action } => match action {
            ServerAction::Add { group, addr, weight } => change(
                cli,
                "PUT",
                &format!("/v1/groups/{group}/servers/{addr}"),
                Some(body(&ServerWeight { weight: *weight })?),
            ),
            ServerAction::Set { group, addr, weight } => change(
                cli,
                "PUT",
                &format!("/v1/groups/{group}/servers/{addr}"),
                Some(body(&ServerWeight { weight: Some(*weight) })?),
            ),
            ServerAction::Drain { group, addr } => {
                change(cli, "POST", &format!("/v1/groups/{group}/servers/{addr}/drain"), None)
            }
            ServerAction::Remove { group, addr } => {
                change(cli, "DELETE", &format!("/v1/groups/{group}/servers/{addr}"), None)
            }
        },
        Command::Listener { action } => match action {
            ListenerAction::Add {
                name,
                vip,
                port,
                protocol,
                scheduler,
                forwarding,
                group,
                interface,
            } => {
                let spec = ListenerSpec {
                    name: name.clone(),
                    vip: vip.clone(),
                    port: *port,
                    protocol: protocol.clone(),
                    scheduler: scheduler.clone(),
                    forwarding: forwarding.clone(),
                    group: group.clone(),
                    interface: interface.clone(),
                };
                change(cli, "PUT", &format!("/v1/listeners/{name}"), Some(body(&spec)?))
            }
            ListenerAction::Remove { name } => change(cli, "DELETE", &format!("/v1/listeners/{name}"), None),
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlbctl: {e}");
            ExitCode::FAILURE
        }
    }
}
