//! The systems compared, set up and torn down in the `lb` namespace: xlb, the Linux kernel's own NAT (L4
//! peer), and NGINX and HAProxy as HTTP reverse proxies (L7 peers).
//!
//! All of them balance round robin over the same three backends: the client talks to the VIP, the servers
//! see the load balancer's inner address as the source.
//!
//! - **xlb**: `xlb run` with TCP listeners on VIP:80 (TCP sinks) and VIP:8000 (HTTP sinks), a UDP listener
//!   on VIP:53 and an `http` listener (L7, terminated in xlb's own TCP stack) on VIP:8080 (and one on VIP:8082 for h2c), its datapath
//!   worker pinned to core [`XLB_CORE`] and busy-polling. Stopping it (SIGTERM) detaches its XDP filters.
//! - **kernel**: `ip_forward`, the VIP as a local address on `ext0` (so the kernel answers ARP for it), the
//!   inner address on `int0`, and the nftables ruleset [`NFT_RULESET`]: DNAT to `numgen inc mod 3` (round
//!   robin per new conntrack flow) and SNAT to the inner address.
//! - **nginx**, **haproxy**: the VIP on `ext0` and the inner address on `int0` as kernel addresses, and the
//!   proxy listening on VIP:8080 and for h2c on VIP:8082 ([`nginx_config`], [`haproxy_config`]): one worker process (NGINX) or one
//!   thread (HAProxy), started with `taskset -c` [`XLB_CORE`] so it runs on xlb's core, proxying to the HTTP
//!   sinks with idle upstream connections kept for reuse.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::Value;
use xlb_tests::appliance::Appliance;
use xlb_tests::lab::Proc;

use super::keyserver::{KeyServer, CERTS_DIR};
use super::lab::{
    SuiteLab, HTTP_PORT, INT_PREFIX, LB_EXT_CIDR, LB_INT_IP, SERVERS, TCP_PORT, UDP_PORT, VIP, VIP_H2C_PORT,
    VIP_HTTPS_ECDSA_PORT, VIP_HTTPS_RSA_PORT, VIP_HTTP_PORT, VIP_L7_PORT, VIP_TCP_PORT, VIP_UDP_PORT, XLB_CORE,
};

/// How a system is set up for a group of scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Setup {
    /// The L4 and plain-HTTP L7 scenarios: xlb's worker busy-polls its core.
    Standard,
    /// The HTTPS scenarios: xlb as a whole on one core like the single-core peers — its worker sleeps when
    /// idle (`idle = "adaptive"`), one full-handshake thread (`l7.tls_handshake_threads = 1`, plus rustls'
    /// resumption lane's one), and every thread of the process pinned to [`XLB_CORE`] after start. The peers are
    /// set up the same way for both.
    Tls,
}

/// The HTTPS listeners of every system: port, certificate file stem in the lab's PKI directory.
pub const HTTPS_LISTENERS: [(u16, &str); 2] = [(VIP_HTTPS_ECDSA_PORT, "ecdsa"), (VIP_HTTPS_RSA_PORT, "rsa")];

/// Full-handshake threads of xlb in the [`Setup::Tls`] runs.
pub const TLS_HANDSHAKE_THREADS: usize = 1;

/// Name of the nftables table the kernel peer uses.
pub const NFT_TABLE: &str = "xlbbench";

/// The kernel peer's nftables ruleset (`nft -f`), checked with nftables 1.0.6.
pub const NFT_RULESET: &str = r#"table ip xlbbench {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 198.18.0.100 tcp dport 80 dnat to numgen inc mod 3 map { 0 : 198.19.0.2, 1 : 198.19.0.3, 2 : 198.19.0.4 } : 8080
		ip daddr 198.18.0.100 udp dport 53 dnat to numgen inc mod 3 map { 0 : 198.19.0.2, 1 : 198.19.0.3, 2 : 198.19.0.4 } : 5353
		ip daddr 198.18.0.100 tcp dport 8000 dnat to numgen inc mod 3 map { 0 : 198.19.0.2, 1 : 198.19.0.3, 2 : 198.19.0.4 } : 8000
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "int0" snat to 198.19.0.10
	}
}
"#;

/// Which system a run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SystemKind {
    /// xlb on AF_XDP.
    Xlb,
    /// Linux netfilter NAT (nftables): the L4 peer.
    Kernel,
    /// NGINX as an HTTP reverse proxy: an L7 peer.
    Nginx,
    /// HAProxy in `mode http`: an L7 peer.
    Haproxy,
    /// xlb with its private keys on a Key Server (`xlb-keyserver` on xlb's core, over a Unix socket): the
    /// handshake rows and the Key Server outage.
    #[serde(rename = "xlb-ks")]
    XlbKs,
}

impl SystemKind {
    /// Every system, in the order runs alternate (each runs the scenarios of its layer).
    pub const ALL: [SystemKind; 5] = [
        SystemKind::Xlb,
        SystemKind::Kernel,
        SystemKind::Nginx,
        SystemKind::Haproxy,
        SystemKind::XlbKs,
    ];

    /// `xlb`, `kernel`, `nginx`, `haproxy` or `xlb-ks`.
    pub fn name(self) -> &'static str {
        match self {
            SystemKind::Xlb => "xlb",
            SystemKind::Kernel => "kernel",
            SystemKind::Nginx => "nginx",
            SystemKind::Haproxy => "haproxy",
            SystemKind::XlbKs => "xlb-ks",
        }
    }

    /// Whether this is one of the reverse proxies (a process of its own in `lb`, listening on the VIP).
    pub fn is_proxy(self) -> bool {
        matches!(self, SystemKind::Nginx | SystemKind::Haproxy)
    }
}

/// Idle upstream connections kept for reuse per server: xlb's `[l7] upstream_keepalive` default (per server
/// and worker). NGINX's `keepalive` counts all servers of the upstream (per worker): it gets this times the
/// number of sinks, so both keep the same pool. (HAProxy's `http-reuse` pool has no cap by default.)
pub const UPSTREAM_KEEPALIVE: usize = 256;

/// Placeholder for the lab directory in the proxies' configs as recorded in the results file.
pub const LAB_DIR_PLACEHOLDER: &str = "LAB_DIR";

/// The NGINX config (`nginx -c`, run with `-g "daemon off;"`), files under `dir`: one worker process,
/// `proxy_pass` to an upstream of the three HTTP sinks with a `keepalive` pool (HTTP/1.1 upstream, the
/// `Connection` header cleared so upstream connections are reused), `X-Forwarded-For`/`-Proto` set as xlb
/// sets them, no access log, keep-alive limits high enough that no connection is closed for its request
/// count during a run.
pub fn nginx_config(dir: &Path, pki: &Path) -> String {
    let d = dir.display();
    let keepalive = UPSTREAM_KEEPALIVE * SERVERS.len();
    let servers: String = SERVERS
        .iter()
        .map(|ip| format!("        server {ip}:{HTTP_PORT};\n"))
        .collect();
    let https: String = HTTPS_LISTENERS
        .iter()
        .map(|(port, stem)| {
            let p = pki.display();
            format!(
                r#"    server {{
        listen {VIP}:{port} ssl backlog=4096;
        ssl_certificate {p}/{stem}.pem;
        ssl_certificate_key {p}/{stem}.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        ssl_session_cache shared:SSL:10m;
        location / {{
            proxy_pass http://sinks;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
"#
            )
        })
        .collect();
    format!(
        r#"worker_processes 1;
worker_rlimit_nofile 19000;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{
    worker_connections 32768;
}}
http {{
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    upstream sinks {{
{servers}        keepalive {keepalive};
        keepalive_requests 10000000;
    }}
    server {{
        listen {VIP}:{VIP_L7_PORT} backlog=4096;
        listen {VIP}:{VIP_H2C_PORT} http2 backlog=4096;
        location / {{
            proxy_pass http://sinks;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
{https}}}
"#
    )
}

/// The HAProxy config (`haproxy -db -f`): one thread, `mode http`, round robin over the three HTTP sinks,
/// `http-reuse safe` (idle server connections shared between client connections), `X-Forwarded-For`
/// (`option forwardfor`) and `X-Forwarded-Proto` set as xlb sets them, no logging.
pub fn haproxy_config(pki: &Path) -> String {
    let servers: String = SERVERS
        .iter()
        .enumerate()
        .map(|(i, ip)| format!("    server s{} {ip}:{HTTP_PORT}\n", i + 1))
        .collect();
    let https: String = HTTPS_LISTENERS
        .iter()
        .map(|(port, stem)| {
            format!(
                "\nfrontend https_{stem}\n    bind {VIP}:{port} ssl crt {}/{stem}.crt-key.pem alpn http/1.1 backlog 4096\n    \
                 http-request set-header X-Forwarded-Proto https\n    default_backend sinks\n",
                pki.display()
            )
        })
        .collect();
    format!(
        r#"global
    nbthread 1
    maxconn 10500
    ulimit-n 20000
    no strict-limits
    tune.ssl.cachesize 20000
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    option forwardfor
    http-reuse safe
    timeout connect 5s
    timeout client 75s
    timeout server 60s
    timeout http-keep-alive 75s

frontend xlbbench
    bind {VIP}:{VIP_L7_PORT} backlog 4096
    bind {VIP}:{VIP_H2C_PORT} proto h2 backlog 4096
    http-request set-header X-Forwarded-Proto http
    default_backend sinks

backend sinks
    balance roundrobin
{servers}{https}"#
    )
}

/// The idle strategy of xlb's worker in the [`Setup::Standard`] runs: `XLB_SUITE_IDLE` (`busy` or `adaptive`),
/// default `busy`.
fn standard_idle() -> &'static str {
    match std::env::var("XLB_SUITE_IDLE").as_deref() {
        Ok("adaptive") => "adaptive",
        _ => "busy",
    }
}

/// The xlb config the suite runs for `setup` (`CONTROL_SOCKET` is filled in by [`Appliance::start`]), with
/// HTTPS listeners whose certificates are in `pki`; with `key_server` (its socket) the certificates come without
/// their keys and xlb has the Key Server sign (`[l7.key_server]`, [`Setup::Tls`] only).
pub fn xlb_config(setup: Setup, pki: &Path, key_server: Option<&Path>) -> String {
    let servers = |port: u16| {
        SERVERS
            .iter()
            .map(|ip| format!("{{ addr = \"{ip}:{port}\", weight = 1 }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let listener = |name: &str, port: u16, proto: &str, group: &str| {
        format!(
            "[[listener]]\nname = \"{name}\"\nvip = \"{VIP}\"\nport = {port}\nprotocol = \"{proto}\"\n\
             scheduler = \"rr\"\nforwarding = \"fullnat\"\ngroup = \"{group}\"\n"
        )
    };
    let idle = match setup {
        Setup::Standard => standard_idle(),
        Setup::Tls => "adaptive",
    };
    let interface = |name: &str, cidr: &str| {
        format!(
            "[[interface]]\nname = \"{name}\"\nqueues = [0]\ncores = [{XLB_CORE}]\nidle = \"{idle}\"\n\
             addresses = [\"{cidr}\"]\n"
        )
    };
    let https: String = HTTPS_LISTENERS
        .iter()
        .map(|(port, stem)| {
            let p = pki.display();
            let key = match key_server {
                Some(_) => String::new(),
                None => format!("key = \"{p}/{stem}.key\"\n"),
            };
            format!(
                "{}\n[listener.tls]\n\n[[listener.tls.cert]]\ncert = \"{p}/{stem}.pem\"\n{key}\n",
                listener(&format!("https-{stem}"), *port, "https", "http")
            )
        })
        .collect();
    let l7 = match setup {
        Setup::Standard => String::new(),
        Setup::Tls => format!(
            "[l7]\ntls_handshake_threads = {TLS_HANDSHAKE_THREADS}\n\n{}",
            key_server
                .map(super::keyserver::xlb_key_server_table)
                .unwrap_or_default()
        ),
    };
    format!(
        "[node]\nname = \"xlb-suite\"\ncontrol_socket = \"CONTROL_SOCKET\"\n\n{l7}{}\n{}\n{}\n{}\n{}\n{}\n{}\n{https}\
         [[group]]\nname = \"web\"\nservers = [{}]\n\n[[group]]\nname = \"dns\"\nservers = [{}]\n\n\
         [[group]]\nname = \"http\"\nservers = [{}]\n",
        interface("ext0", LB_EXT_CIDR),
        interface("int0", &format!("{LB_INT_IP}/{INT_PREFIX}")),
        listener("web", VIP_TCP_PORT, "tcp", "web"),
        listener("dns", VIP_UDP_PORT, "udp", "dns"),
        listener("http", VIP_HTTP_PORT, "tcp", "http"),
        listener("l7", VIP_L7_PORT, "http", "http"),
        listener("h2c", VIP_H2C_PORT, "http", "http"),
        servers(TCP_PORT),
        servers(UDP_PORT),
        servers(HTTP_PORT),
    )
}

/// A system set up in the lab's `lb` namespace.
pub enum RunningSystem {
    /// A running `xlb run`.
    Xlb(Appliance),
    /// A running `xlb run` whose handshakes the Key Server beside it signs.
    XlbKs(Appliance, KeyServer),
    /// The kernel NAT configuration is in place.
    Kernel,
    /// A reverse proxy (NGINX or HAProxy) is running.
    Proxy(ProxyProcess),
}

/// A running reverse proxy.
pub struct ProxyProcess {
    kind: SystemKind,
    proc: Proc,
    /// The process doing the proxying: NGINX's worker (its master only supervises), HAProxy itself.
    worker: u32,
}

/// How long a proxy may take to listen.
const PROXY_START: Duration = Duration::from_secs(10);
/// How long a proxy gets to exit after SIGTERM before it is killed.
const PROXY_STOP: Duration = Duration::from_secs(10);

/// What a system reported when it was stopped.
#[derive(Debug, Clone, Serialize)]
pub struct StopReport {
    /// xlb's stats document (`xlbctl stats --json`) just before it was stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xlb_stats: Option<Value>,
    /// `nft list table` output (with rule counters absent, just the applied rules) for the kernel peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nft_applied: Option<String>,
    /// A proxy's exit status and the last lines of its stderr and error log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_exit: Option<String>,
}

impl RunningSystem {
    /// Sets up `kind` in the lab's `lb` namespace.
    pub fn start(kind: SystemKind, lab: &SuiteLab, setup: Setup) -> Result<RunningSystem> {
        ensure!(
            !xdp_attached(lab, "ext0")? && !xdp_attached(lab, "int0")?,
            "an XDP program is still attached in the lb namespace"
        );
        match kind {
            SystemKind::Xlb | SystemKind::XlbKs => {
                let key_server = match kind {
                    SystemKind::XlbKs => {
                        ensure!(setup == Setup::Tls, "xlb-ks runs only the HTTPS scenarios");
                        Some(KeyServer::start(lab)?)
                    }
                    _ => None,
                };
                let config = match &key_server {
                    Some(ks) => xlb_config(setup, &lab.lab.dir().join(CERTS_DIR), Some(ks.socket())),
                    None => xlb_config(setup, &lab.pki(), None),
                };
                let xlb = Appliance::start(&lab.lab, &lab.lb, "xlb-suite", &config)?;
                if setup == Setup::Tls {
                    // Every thread (worker, handshake pool, control) on the peers' one core; threads started
                    // later inherit it.
                    let pid = xlb.proc().pid().to_string();
                    let core = XLB_CORE.to_string();
                    let pinned = std::process::Command::new("taskset")
                        .args(["-a", "-p", "-c", &core, &pid])
                        .output();
                    match pinned {
                        Ok(out) if out.status.success() => {}
                        Ok(out) => bail!(
                            "taskset -a -p -c {core} {pid}: {}",
                            String::from_utf8_lossy(&out.stderr)
                        ),
                        Err(e) => bail!("taskset (util-linux) is needed to pin xlb for the HTTPS rows: {e}"),
                    }
                }
                Ok(match key_server {
                    Some(ks) => RunningSystem::XlbKs(xlb, ks),
                    None => RunningSystem::Xlb(xlb),
                })
            }
            SystemKind::Kernel => {
                let lb = &lab.lb;
                lb.sysctl("net.ipv4.ip_forward", "1")?;
                lb.addr("ext0", &format!("{VIP}/32"))?;
                lb.addr("int0", &format!("{LB_INT_IP}/{INT_PREFIX}"))?;
                lb.run_input("nft", &["-f", "-"], NFT_RULESET.as_bytes())
                    .context("cannot load the kernel peer's nftables ruleset")?;
                Ok(RunningSystem::Kernel)
            }
            SystemKind::Nginx | SystemKind::Haproxy => {
                let lb = &lab.lb;
                lb.addr("ext0", &format!("{VIP}/32"))?;
                lb.addr("int0", &format!("{LB_INT_IP}/{INT_PREFIX}"))?;
                let started = start_proxy(kind, lab);
                if started.is_err() {
                    remove_proxy_addresses(lab);
                }
                Ok(RunningSystem::Proxy(started?))
            }
        }
    }

    /// Which system this is.
    pub fn kind(&self) -> SystemKind {
        match self {
            RunningSystem::Xlb(_) => SystemKind::Xlb,
            RunningSystem::XlbKs(..) => SystemKind::XlbKs,
            RunningSystem::Kernel => SystemKind::Kernel,
            RunningSystem::Proxy(p) => p.kind,
        }
    }

    /// The running xlb, if this is xlb.
    pub fn appliance(&self) -> Option<&Appliance> {
        match self {
            RunningSystem::Xlb(xlb) | RunningSystem::XlbKs(xlb, _) => Some(xlb),
            _ => None,
        }
    }

    /// The Key Server, if this is xlb with one.
    pub fn key_server(&self) -> Option<&KeyServer> {
        match self {
            RunningSystem::XlbKs(_, ks) => Some(ks),
            _ => None,
        }
    }

    /// The processes whose CPU time is the load balancer's: [`RunningSystem::pid`] and the Key Server's.
    pub fn pids(&self) -> Vec<u32> {
        self.pid()
            .into_iter()
            .chain(self.key_server().map(KeyServer::pid))
            .collect()
    }

    /// The load balancer's own process, if it has one (a proxy's worker).
    pub fn pid(&self) -> Option<u32> {
        match self {
            RunningSystem::Xlb(xlb) | RunningSystem::XlbKs(xlb, _) => Some(xlb.proc().pid()),
            RunningSystem::Kernel => None,
            RunningSystem::Proxy(p) => Some(p.worker),
        }
    }

    /// Errors if the system has stopped working on its own (xlb or the proxy exited).
    pub fn check(&self) -> Result<()> {
        match self {
            RunningSystem::Xlb(xlb) => xlb.proc().check_running(),
            RunningSystem::XlbKs(xlb, ks) => xlb.proc().check_running().and_then(|()| ks.check()),
            RunningSystem::Kernel => Ok(()),
            RunningSystem::Proxy(p) => p.proc.check_running(),
        }
    }

    /// Tears the system down, leaving `lb` as [`super::lab::SuiteLab::build`] made it: xlb is stopped with
    /// SIGTERM and must exit 0 with its XDP filters detached; the kernel's table, addresses and forwarding
    /// are removed; a proxy is stopped with SIGTERM and its addresses removed.
    pub fn stop(self, lab: &SuiteLab) -> Result<StopReport> {
        match self {
            RunningSystem::XlbKs(xlb, ks) => {
                let report = RunningSystem::Xlb(xlb).stop(lab);
                let ks = ks.stop().context("stopping the Key Server");
                let mut report = report?;
                report.proxy_exit = Some(format!("Key Server: {}", ks?));
                Ok(report)
            }
            RunningSystem::Xlb(xlb) => {
                let stats = xlb.stats().ok();
                let status = xlb.terminate()?;
                ensure!(
                    status.success(),
                    "xlb exited with {status}; stderr:\n{}",
                    xlb.proc().stderr()
                );
                for ifname in ["ext0", "int0"] {
                    if xdp_attached(lab, ifname)? {
                        bail!("xlb exited but an XDP program is still attached to {ifname}");
                    }
                }
                Ok(StopReport {
                    xlb_stats: stats,
                    nft_applied: None,
                    proxy_exit: None,
                })
            }
            RunningSystem::Kernel => {
                let lb = &lab.lb;
                let applied = lb.run("nft", &["list", "table", "ip", NFT_TABLE]).ok();
                lb.run("nft", &["delete", "table", "ip", NFT_TABLE])?;
                lb.ip(&["addr", "del", &format!("{VIP}/32"), "dev", "ext0"])?;
                lb.ip(&["addr", "del", &format!("{LB_INT_IP}/{INT_PREFIX}"), "dev", "int0"])?;
                lb.sysctl("net.ipv4.ip_forward", "0")?;
                // Conntrack entries would survive the table; flush them if the tool is there.
                if super::lab::which("conntrack") {
                    let _ = lb.output("conntrack", &["-F"]);
                }
                Ok(StopReport {
                    xlb_stats: None,
                    nft_applied: applied,
                    proxy_exit: None,
                })
            }
            RunningSystem::Proxy(p) => {
                let status = p.proc.stop(PROXY_STOP);
                remove_proxy_addresses(lab);
                let status = status.with_context(|| format!("stopping {}", p.kind.name()))?;
                let log = tail(&p.proc.stderr(), 5);
                let error_log = match p.kind {
                    SystemKind::Nginx => {
                        let text = std::fs::read_to_string(lab.lab.dir().join("nginx-error.log")).unwrap_or_default();
                        format!("; error log: {}", tail(&text, 5))
                    }
                    _ => String::new(),
                };
                Ok(StopReport {
                    xlb_stats: None,
                    nft_applied: None,
                    proxy_exit: Some(format!("{status}; stderr: {log}{error_log}")),
                })
            }
        }
    }
}

/// Writes the config of proxy `kind` to the lab directory and starts it in `lb` on xlb's core; returns once
/// it listens on the VIP.
fn start_proxy(kind: SystemKind, lab: &SuiteLab) -> Result<ProxyProcess> {
    let dir = lab.lab.dir();
    let core = XLB_CORE.to_string();
    let proc = match kind {
        SystemKind::Nginx => {
            let path = dir.join("nginx.conf");
            std::fs::write(&path, nginx_config(dir, &lab.pki()))
                .with_context(|| format!("cannot write {}", path.display()))?;
            let conf = path.display().to_string();
            lab.lab.spawn(
                &lab.lb,
                "taskset",
                &["-c", &core, "nginx", "-c", &conf, "-g", "daemon off;"],
            )?
        }
        SystemKind::Haproxy => {
            let path = dir.join("haproxy.cfg");
            std::fs::write(&path, haproxy_config(&lab.pki()))
                .with_context(|| format!("cannot write {}", path.display()))?;
            let conf = path.display().to_string();
            lab.lab
                .spawn(&lab.lb, "taskset", &["-c", &core, "haproxy", "-db", "-f", &conf])?
        }
        SystemKind::Xlb | SystemKind::Kernel | SystemKind::XlbKs => bail!("{} is not a proxy", kind.name()),
    };
    xlb_tests::lab::wait_until_ok(PROXY_START, &format!("{} to listen", kind.name()), || {
        proc.check_running()?;
        let filter = format!("sport = :{VIP_L7_PORT}");
        let out = lab.lb.run("ss", &["-H", "-l", "-t", "-n", &filter])?;
        ensure!(!out.trim().is_empty(), "nothing listens on {VIP}:{VIP_L7_PORT} yet");
        Ok(())
    })?;
    let worker = match kind {
        // NGINX's master forks the worker; the worker does all the proxying.
        SystemKind::Nginx => xlb_tests::lab::wait_until_ok(PROXY_START, "the nginx worker", || {
            children_of(proc.pid())
                .into_iter()
                .next()
                .context("no worker process yet")
        })?,
        _ => proc.pid(),
    };
    Ok(ProxyProcess { kind, proc, worker })
}

/// Removes the addresses a proxy was given (best effort: after a failed start some may be missing).
fn remove_proxy_addresses(lab: &SuiteLab) {
    let _ = lab.lb.ip(&["addr", "del", &format!("{VIP}/32"), "dev", "ext0"]);
    let _ = lab
        .lb
        .ip(&["addr", "del", &format!("{LB_INT_IP}/{INT_PREFIX}"), "dev", "int0"]);
}

/// Pids of the live processes whose parent is `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| parent_pid(&stat))
                == Some(pid)
        })
        .collect();
    out.sort_unstable();
    out
}

/// The parent pid (field 4) of a `/proc/PID/stat` line.
fn parent_pid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The last `n` non-empty lines of `text`, joined with ` | `.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Whether an XDP program is attached to `ifname` in `lb`.
fn xdp_attached(lab: &SuiteLab, ifname: &str) -> Result<bool> {
    let out = lab.lb.ip(&["-j", "link", "show", "dev", ifname])?;
    let links: Value = serde_json::from_str(&out).with_context(|| format!("bad `ip -j link` output: {out}"))?;
    Ok(links.get(0).and_then(|l| l.get("xdp")).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xlb_config_names_both_listeners_and_all_servers() {
        let c = xlb_config(Setup::Standard, Path::new("/pki"), None);
        for needle in [
            "vip = \"198.18.0.100\"",
            "port = 80",
            "port = 53",
            "protocol = \"udp\"",
            "198.19.0.4:8080",
            "198.19.0.2:5353",
            "port = 8000",
            "198.19.0.3:8000",
            "idle = \"busy\"",
            "cores = [1]",
            "forwarding = \"fullnat\"",
            "port = 8080",
            "protocol = \"http\"",
            "name = \"h2c\"\nvip = \"198.18.0.100\"\nport = 8082\nprotocol = \"http\"",
        ] {
            assert!(c.contains(needle), "{needle} missing from\n{c}");
        }
        // The L7 listener proxies to the HTTP sinks' group.
        let l7 = &c[c.find("name = \"l7\"").unwrap()..];
        assert!(
            l7[..l7.find("[[").unwrap_or(l7.len())].contains("group = \"http\""),
            "{c}"
        );
    }

    #[test]
    fn proxy_configs_listen_on_the_vip_and_name_every_sink() {
        let nginx = nginx_config(Path::new("/tmp/lab"), Path::new("/tmp/lab/pki"));
        let haproxy = haproxy_config(Path::new("/tmp/lab/pki"));
        for s in SERVERS {
            assert!(nginx.contains(&format!("server {s}:8000;")), "{nginx}");
            assert!(haproxy.contains(&format!(" {s}:8000\n")), "{haproxy}");
        }
        for needle in [
            "listen 198.18.0.100:8080",
            "listen 198.18.0.100:8082 http2 backlog=4096;",
            "worker_processes 1;",
            "keepalive 768;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "pid /tmp/lab/nginx.pid;",
        ] {
            assert!(nginx.contains(needle), "{needle} missing from\n{nginx}");
        }
        for needle in [
            "bind 198.18.0.100:8080",
            "bind 198.18.0.100:8082 proto h2 backlog 4096",
            "nbthread 1",
            "mode http",
            "http-reuse safe",
            "balance roundrobin",
        ] {
            assert!(haproxy.contains(needle), "{needle} missing from\n{haproxy}");
        }
        // Balanced braces: nginx would refuse the file otherwise.
        assert_eq!(nginx.matches('{').count(), nginx.matches('}').count());
    }

    #[test]
    fn https_listeners_in_every_config() {
        let pki = Path::new("/p");
        let standard = xlb_config(Setup::Standard, pki, None);
        let tls = xlb_config(Setup::Tls, pki, None);
        for c in [&standard, &tls] {
            for needle in [
                "port = 8443\nprotocol = \"https\"",
                "port = 8444\nprotocol = \"https\"",
                "cert = \"/p/ecdsa.pem\"\nkey = \"/p/ecdsa.key\"",
                "cert = \"/p/rsa.pem\"\nkey = \"/p/rsa.key\"",
            ] {
                assert!(c.contains(needle), "{needle} missing from\n{c}");
            }
            // The HTTPS listeners proxy to the HTTP sinks like the http one.
            let https = &c[c.find("name = \"https-ecdsa\"").unwrap()..];
            assert!(https[..https.find("[[").unwrap()].contains("group = \"http\""), "{c}");
        }
        assert!(standard.contains("idle = \"busy\"") && !standard.contains("[l7]"));
        assert!(tls.contains("idle = \"adaptive\"") && !tls.contains("idle = \"busy\""));
        assert!(tls.contains("[l7]\ntls_handshake_threads = 1\n"), "{tls}");
        // `[l7]` must come before the first array table, or TOML would put it inside the last one.
        assert!(tls.find("[l7]").unwrap() < tls.find("[[").unwrap(), "{tls}");

        let nginx = nginx_config(Path::new("/lab"), pki);
        for needle in [
            "listen 198.18.0.100:8443 ssl backlog=4096;",
            "listen 198.18.0.100:8444 ssl backlog=4096;",
            "ssl_certificate /p/ecdsa.pem;",
            "ssl_certificate_key /p/rsa.key;",
            "ssl_protocols TLSv1.2 TLSv1.3;",
            "ssl_session_tickets on;",
            "ssl_session_cache shared:SSL:10m;",
            "worker_connections 32768;",
        ] {
            assert!(nginx.contains(needle), "{needle} missing from\n{nginx}");
        }
        assert_eq!(nginx.matches('{').count(), nginx.matches('}').count(), "{nginx}");
        assert_eq!(nginx.matches("proxy_pass http://sinks;").count(), 3, "{nginx}");
        let haproxy = haproxy_config(pki);
        for needle in [
            "bind 198.18.0.100:8443 ssl crt /p/ecdsa.crt-key.pem alpn http/1.1",
            "bind 198.18.0.100:8444 ssl crt /p/rsa.crt-key.pem alpn http/1.1",
            "tune.ssl.cachesize",
            "maxconn 10500",
            "http-request set-header X-Forwarded-Proto https",
        ] {
            assert!(haproxy.contains(needle), "{needle} missing from\n{haproxy}");
        }
        // The HTTPS frontends come after the backend section; the backend keeps its servers.
        assert!(haproxy.find("backend sinks").unwrap() < haproxy.find("frontend https_ecdsa").unwrap());
    }

    #[test]
    fn key_server_config_has_certificates_without_keys() {
        let c = xlb_config(Setup::Tls, Path::new("/c"), Some(Path::new("/lab/keyserver.sock")));
        assert!(!c.contains("key = "), "{c}");
        assert!(
            c.contains("cert = \"/c/ecdsa.pem\"\n") && c.contains("cert = \"/c/rsa.pem\"\n"),
            "{c}"
        );
        assert!(
            c.contains(
                "[l7]\ntls_handshake_threads = 1\n\n[l7.key_server]\nendpoints = [\"unix:/lab/keyserver.sock\"]"
            ),
            "{c}"
        );
        // Both tables before the first array table, or TOML would put them inside it.
        assert!(c.find("[l7.key_server]").unwrap() < c.find("[[").unwrap(), "{c}");
        let parsed: toml::Value = toml::from_str(&c.replace("CONTROL_SOCKET", "/x")).unwrap();
        assert_eq!(parsed["l7"]["key_server"]["timeout_ms"].as_integer(), Some(1000));
        assert!(parsed["listener"][5]["tls"]["cert"][0].get("key").is_none(), "{c}");
        // The local-key config of the same setup is unchanged by the option.
        assert!(!xlb_config(Setup::Tls, Path::new("/c"), None).contains("key_server"));
    }

    #[test]
    fn parent_pid_of_stat_lines() {
        assert_eq!(parent_pid("42 (nginx: worker) S 41 42 42 0"), Some(41));
        assert_eq!(parent_pid("42 (a) b) R 7 1"), Some(7));
        assert_eq!(parent_pid("42 (x)"), None);
        assert_eq!(children_of(u32::MAX), Vec::<u32>::new());
        assert_eq!(tail("a\n\nb\nc\n", 2), "b | c");
    }

    #[test]
    fn system_names() {
        let names: Vec<&str> = SystemKind::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["xlb", "kernel", "nginx", "haproxy", "xlb-ks"]);
        for s in SystemKind::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
        assert!(SystemKind::Nginx.is_proxy() && !SystemKind::Kernel.is_proxy());
    }

    #[test]
    fn ruleset_matches_lab_constants() {
        for needle in [VIP, LB_INT_IP, "8080", "5353", "dport 8000", NFT_TABLE] {
            assert!(NFT_RULESET.contains(needle), "{needle}");
        }
        for s in SERVERS {
            assert!(NFT_RULESET.contains(s), "{s}");
        }
    }
}
