//! `xlbctl`: the control CLI of a running xlb (talks to its control socket, or to its TCP API with `--api`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use xlb_tools::config::Config;
use xlb_tools::control;

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
    /// HA state; `xlbctl ha drain` hands mastership over for maintenance.
    Ha {
        #[command(subcommand)]
        action: Option<HaAction>,
    },
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
        return Ok(Config::load(c)?.node.control_socket);
    }
    Ok(PathBuf::from("/run/xlb/xlb.sock"))
}

fn call(cli: &Cli, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let (status, reply) = match cli.api {
        Some(addr) => {
            let file = cli.token_file.as_ref().ok_or("--api needs --token-file")?;
            let token = std::fs::read_to_string(file).map_err(|e| format!("--token-file {}: {e}", file.display()))?;
            control::request_tcp(addr, token.trim(), method, path, body)?
        }
        None => control::request(&socket_path(cli)?, method, path, body)?,
    };
    if status != 200 {
        return Err(reply["error"].as_str().unwrap_or("request failed").to_string());
    }
    Ok(reply)
}

fn get(cli: &Cli, path: &str) -> Result<Value, String> {
    call(cli, "GET", path, None)
}

/// Sends a change and prints what was applied.
fn change(cli: &Cli, method: &str, path: &str, body: Option<Value>) -> Result<(), String> {
    let reply = call(cli, method, path, body.as_ref())?;
    if cli.json {
        println!("{reply:#}");
    } else {
        println!("applied: {}", reply["applied"].as_str().unwrap_or("?"));
    }
    Ok(())
}

fn print_stats(doc: &Value) {
    let rows: [(&str, &str); 9] = [
        ("rx frames", "rx_frames"),
        ("tx frames", "tx_frames"),
        ("rx bytes", "rx_bytes"),
        ("tx bytes", "tx_bytes"),
        ("arp replies", "arp_replies"),
        ("echo replies", "icmp_echo_replies"),
        ("tcp resets", "tcp_resets"),
        ("icmp unreach", "icmp_unreachables"),
        ("free frames", "free_frames"),
    ];
    let workers = doc["workers"].as_array().cloned().unwrap_or_default();
    print!("{:<16}", "worker");
    for w in &workers {
        print!("{:>14}", w["name"].as_str().unwrap_or("?"));
    }
    println!("{:>14}", "total");
    for (label, key) in rows {
        print!("{label:<16}");
        for w in &workers {
            print!("{:>14}", w[key].as_u64().unwrap_or(0));
        }
        println!("{:>14}", doc["totals"][key].as_u64().unwrap_or(0));
    }
    let drops = doc["totals"]["drops"].as_object().cloned().unwrap_or_default();
    let nonzero: Vec<_> = drops.iter().filter(|(_, v)| v.as_u64().unwrap_or(0) > 0).collect();
    println!("\ndrops{}", if nonzero.is_empty() { ": none" } else { "" });
    for (reason, n) in nonzero {
        println!("  {reason:<24}{:>14}", n.as_u64().unwrap_or(0));
    }
    // The same drops where they belong to a listener's flows.
    for l in doc["l4"]["listeners"].as_array().into_iter().flatten() {
        for (reason, n) in l["drops"].as_object().into_iter().flatten() {
            let name = l["name"].as_str().unwrap_or("?");
            println!("  listener {name}: {reason:<24}{:>14}", n.as_u64().unwrap_or(0));
        }
    }
    let l4 = &doc["l4"];
    if l4.is_object() {
        let ports = &l4["local_ports"];
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        println!(
            "\nconnections {}  evicted {}\nlocal ports: {} in use in {} pools of {} (fullest: {}), {} quarantined",
            n(&l4["conns"]),
            n(&l4["evicted"]),
            n(&ports["in_use"]),
            n(&ports["pools"]),
            n(&ports["per_pool"]),
            n(&ports["busiest_pool"]),
            n(&ports["quarantined"])
        );
    }
    let health = &doc["l4"]["health"];
    if health["probes"].as_u64().unwrap_or(0) > 0 {
        let n = |k: &str| health[k].as_u64().unwrap_or(0);
        println!(
            "\nhealth checks: {} probes, {} ok, {} failed ({} timeouts), {} replies with a bad checksum",
            n("probes"),
            n("successes"),
            n("failures"),
            n("timeouts"),
            n("bad_checksum")
        );
        if n("bad_checksum") > 0 {
            println!("  (bad checksums: servers with TX checksum offload on veth/virtual NICs? see xlb's log)");
        }
    }
    println!(
        "\n{:<10}{:>9}{:>14}{:>16}{:>14}",
        "interface", "xdp", "to xlb", "to kernel", "no socket"
    );
    for i in doc["interfaces"].as_array().into_iter().flatten() {
        println!(
            "{:<10}{:>9}{:>14}{:>16}{:>14}",
            i["name"].as_str().unwrap_or("?"),
            i["xdp_mode"].as_str().unwrap_or("?"),
            i["to_socket"].as_u64().unwrap_or(0),
            i["passed_not_ours"].as_u64().unwrap_or(0),
            i["passed_no_socket"].as_u64().unwrap_or(0)
        );
    }
}

fn print_list(doc: &Value) {
    println!(
        "{:<5}{:<24}{:<10}{:<9}Listener",
        "Prot", "LocalAddress:Port", "Scheduler", "Forward"
    );
    println!(
        "  -> {:<24}{:>7}{:>9}{:>12}{:>11}{:>12}",
        "RemoteAddress:Port", "Weight", "Health", "ActiveConn", "InActConn", "TotalConns"
    );
    for l in doc["l4"]["listeners"].as_array().into_iter().flatten() {
        println!(
            "{:<5}{:<24}{:<10}{:<9}{} (group {}, {} new conn/s)",
            l["protocol"].as_str().unwrap_or("?").to_uppercase(),
            format!(
                "{}:{}",
                l["vip"].as_str().unwrap_or("?"),
                l["port"].as_u64().unwrap_or(0)
            ),
            l["scheduler"].as_str().unwrap_or("?"),
            l["forwarding"].as_str().unwrap_or("?"),
            l["name"].as_str().unwrap_or("?"),
            l["group"].as_str().unwrap_or("?"),
            l["conns_per_sec"].as_u64().unwrap_or(0),
        );
        for s in l["servers"].as_array().into_iter().flatten() {
            println!(
                "  -> {:<24}{:>7}{:>9}{:>12}{:>11}{:>12}",
                s["addr"].as_str().unwrap_or("?"),
                s["weight"].as_u64().unwrap_or(0),
                if s["healthy"].as_bool() == Some(true) {
                    "up"
                } else {
                    "DOWN"
                },
                s["active_conns"].as_u64().unwrap_or(0),
                s["inactive_conns"].as_u64().unwrap_or(0),
                s["conns_total"].as_u64().unwrap_or(0),
            );
        }
    }
}

fn print_conns(doc: &Value) {
    println!(
        "{:<5}{:<22}{:<22}{:<22}{:<22}{:<12}{:>9}{:>4}",
        "Prot", "Client", "VIP", "Local", "Server", "State", "Expires", "W"
    );
    for c in doc["conns"].as_array().into_iter().flatten() {
        let s = |k: &str| c[k].as_str().unwrap_or("?").to_string();
        println!(
            "{:<5}{:<22}{:<22}{:<22}{:<22}{:<12}{:>8.0}s{:>4}",
            s("protocol").to_uppercase(),
            s("client"),
            s("vip"),
            s("local"),
            s("server"),
            s("state"),
            c["expires_in_s"].as_f64().unwrap_or(0.0),
            c["worker"].as_u64().unwrap_or(0),
        );
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    match &cli.command {
        Command::Status => {
            let doc = get(cli, "/v1/status")?;
            if cli.json {
                println!("{doc:#}");
            } else {
                let state = if doc["healthy"].as_bool() == Some(true) {
                    "running"
                } else {
                    "NOT all running"
                };
                println!(
                    "node {}: up {} s, workers {state}",
                    doc["node"].as_str().unwrap_or("?"),
                    doc["uptime_s"]
                );
            }
            Ok(())
        }
        Command::Stats { watch } => loop {
            let doc = get(cli, "/v1/stats")?;
            if cli.json {
                println!("{doc:#}")
            } else {
                print_stats(&doc)
            }
            match watch {
                Some(secs) => {
                    std::thread::sleep(std::time::Duration::from_secs((*secs).max(1)));
                    println!();
                }
                None => return Ok(()),
            }
        },
        Command::List => {
            let doc = get(cli, "/v1/stats")?;
            if cli.json {
                println!("{:#}", doc["l4"]);
            } else {
                print_list(&doc)
            }
            Ok(())
        }
        Command::Config => {
            println!("{:#}", get(cli, "/v1/config")?);
            Ok(())
        }
        Command::Reload => change(cli, "POST", "/v1/reload", None),
        Command::Ha {
            action: Some(HaAction::Drain),
        } => change(cli, "POST", "/v1/ha/drain", None),
        Command::Ha { action: None } => {
            let doc = get(cli, "/v1/ha")?;
            if cli.json {
                println!("{doc:#}");
            } else {
                println!(
                    "ha: {}{}, resynced {}, sync records sent {} received {}, rejected {}",
                    doc["state"].as_str().unwrap_or("?"),
                    if doc["draining"].as_bool() == Some(true) {
                        " (draining)"
                    } else {
                        ""
                    },
                    doc["resynced"],
                    doc["sync_records_sent"],
                    doc["sync_records_received"],
                    doc["sync_rejected"]
                );
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
            let doc = get(cli, &format!("/v1/conns?{query}"))?;
            if cli.json {
                println!("{doc:#}");
            } else {
                print_conns(&doc);
            }
            Ok(())
        }
        Command::Server { action } => match action {
            ServerAction::Add { group, addr, weight } => {
                let body = weight.map(|w| json!({ "weight": w })).unwrap_or_else(|| json!({}));
                change(cli, "PUT", &format!("/v1/groups/{group}/servers/{addr}"), Some(body))
            }
            ServerAction::Set { group, addr, weight } => change(
                cli,
                "PUT",
                &format!("/v1/groups/{group}/servers/{addr}"),
                Some(json!({ "weight": weight })),
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
                let body = json!({
                    "name": name, "vip": vip, "port": port, "protocol": protocol, "scheduler": scheduler,
                    "forwarding": forwarding, "group": group, "interface": interface,
                });
                change(cli, "PUT", &format!("/v1/listeners/{name}"), Some(body))
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
