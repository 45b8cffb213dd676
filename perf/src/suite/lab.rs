//! The suite's two-arm lab, its backends and the generator runner.
//!
//! ```text
//!  client                 lb                                   servers
//!  cli0 198.18.0.1/24 ── ext0 (kernel 198.18.0.2/24)   int0 ── srv0 198.19.0.2/.3/.4 /24
//!                        xlb: 198.18.0.10, VIP .100    xlb: 198.19.0.10
//! ```
//!
//! The same lab, sinks and sysctls serve both systems; only what runs in `lb` changes (see
//! [`super::systems`]). Each server address has a TCP sink on [`TCP_PORT`], a UDP sink on [`UDP_PORT`] and an
//! HTTP sink on [`HTTP_PORT`] (`xlb-bench sink`, unpinned). Generators run in `client`, pinned to core [`GENERATOR_CORE`] with
//! `taskset` when it is installed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use serde_json::Value;
use xlb_tests::lab::{wait_until_ok, workspace_bin, Lab, Netns, Proc};

use super::cpu::{CpuSample, CpuUsage};
use super::h2load::{self, Generator};

/// The virtual IP both systems serve.
pub const VIP: &str = "198.18.0.100";
/// The client's address.
pub const CLIENT_CIDR: &str = "198.18.0.1/24";
/// The kernel address of `lb`'s external interface (both systems).
pub const LB_EXT_KERNEL_CIDR: &str = "198.18.0.2/24";
/// The load balancer's own address on the external side (xlb) — unused by the kernel peer.
pub const LB_EXT_CIDR: &str = "198.18.0.10/24";
/// The load balancer's address towards the servers, also the FULLNAT/SNAT source.
pub const LB_INT_IP: &str = "198.19.0.10";
/// Prefix length of the server subnet.
pub const INT_PREFIX: u8 = 24;
/// Backend addresses.
pub const SERVERS: [&str; 3] = ["198.19.0.2", "198.19.0.3", "198.19.0.4"];
/// Port of the TCP VIP listener.
pub const VIP_TCP_PORT: u16 = 80;
/// Port of the UDP VIP listener.
pub const VIP_UDP_PORT: u16 = 53;
/// Port the TCP sinks listen on.
pub const TCP_PORT: u16 = 8080;
/// Port the UDP sinks listen on.
pub const UDP_PORT: u16 = 5353;
/// Port of the HTTP VIP listener.
pub const VIP_HTTP_PORT: u16 = 8000;
/// Port of the L7 (HTTP proxy) listener of xlb, NGINX and HAProxy.
pub const VIP_L7_PORT: u16 = 8080;
/// Port of the cleartext HTTP/2 listener (h2c with prior knowledge) of xlb (an `http` listener, which takes
/// both), NGINX (`listen ... http2`) and HAProxy (`bind ... proto h2`).
pub const VIP_H2C_PORT: u16 = 8082;
/// Port the HTTP sinks listen on (they close the connection after answering `Connection: close`).
pub const HTTP_PORT: u16 = 8000;
/// Port of the HTTPS listener with the ECDSA P-256 certificate (xlb, NGINX and HAProxy).
pub const VIP_HTTPS_ECDSA_PORT: u16 = 8443;
/// Port of the HTTPS listener with the RSA-2048 certificate.
pub const VIP_HTTPS_RSA_PORT: u16 = 8444;
/// The name both HTTPS certificates are for (the generator's SNI).
pub const TLS_NAME: &str = "bench.example.com";
/// Subdirectory of the lab directory holding the throw-away CA and certificates ([`SuiteLab::pki`]).
pub const PKI_DIR: &str = "pki";
/// Number of sinks: TCP, UDP and HTTP on every server address.
pub const SINKS: usize = 3 * SERVERS.len();
/// Core the generator is pinned to; xlb's worker gets the other one.
pub const GENERATOR_CORE: usize = 0;
/// Core xlb's datapath worker is pinned to.
pub const XLB_CORE: usize = 1;

/// How long sinks may take to start.
const SINK_START: Duration = Duration::from_secs(10);
/// Extra time a generator gets beyond its duration before it is killed.
const GENERATOR_GRACE: Duration = Duration::from_secs(30);
/// Longest wait for the servers' half-open connections to expire (with `tcp_synack_retries = 1`: about 3 s).
const HALF_OPEN_EXPIRY: Duration = Duration::from_secs(20);
/// Longest wait for TIME_WAIT sockets to expire when they cannot be removed (Linux keeps them 60 s).
const TIME_WAIT_EXPIRY: Duration = Duration::from_secs(70);

/// The lab, its namespaces and the running sinks.
pub struct SuiteLab {
    /// Sinks (dropped before the lab, which stops them anyway).
    sinks: Vec<Proc>,
    /// The `xlb-bench` binary.
    bench: PathBuf,
    /// Whether generators are pinned with `taskset`.
    pinned: bool,
    /// The client namespace.
    pub client: Netns,
    /// The load balancer's namespace.
    pub lb: Netns,
    /// The servers' namespace.
    pub servers: Netns,
    /// The lab; dropped last, removing every namespace.
    pub lab: Lab,
}

/// One generator run: its JSON report and the CPU time around it.
#[derive(Debug, Clone)]
pub struct GeneratorRun {
    /// The command line.
    pub cmdline: String,
    /// The generator's JSON report.
    pub report: Value,
    /// CPU seconds during the run.
    pub cpu: CpuUsage,
}

impl SuiteLab {
    /// Builds the lab, sets the sysctls and starts the nine sinks.
    pub fn build() -> Result<SuiteLab> {
        let bench = workspace_bin("xlb-bench")?;
        let lab = Lab::new("xlb-suite")?;
        let client = lab.netns("client")?;
        let lb = lab.netns("lb")?;
        let servers = lab.netns("servers")?;
        lab.veth((&client, "cli0"), (&lb, "ext0"))?;
        lab.veth((&lb, "int0"), (&servers, "srv0"))?;
        client.addr("cli0", CLIENT_CIDR)?;
        lb.addr("ext0", LB_EXT_KERNEL_CIDR)?;
        lb.link_up("int0")?;
        for s in SERVERS {
            servers.addr("srv0", &format!("{s}/{INT_PREFIX}"))?;
        }
        // AF_XDP frames carry no checksum-offload state: peers must send complete checksums. The kernel peer
        // sees the same frames.
        ensure!(
            client.disable_offloads("cli0")? && servers.disable_offloads("srv0")?,
            "ethtool is not installed: it is needed to turn off checksum offload on the lab's veths"
        );
        // Many short connections: a wide port range, and reuse of ports in TIME_WAIT.
        for ns in [&client, &servers] {
            ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
            ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        }
        // A SYN flood's half-open connections on the servers expire in ~3 s instead of ~60 s (see
        // `drain_half_open`); SYN cookies stay on (the default) for when their queues overflow.
        servers.sysctl("net.ipv4.tcp_synack_retries", "1")?;
        servers.sysctl("net.ipv4.tcp_syncookies", "1")?;
        let pinned = which("taskset");
        if !pinned {
            eprintln!("xlb-suite: taskset (util-linux) not found: the generator runs unpinned");
        }
        let mut suite = SuiteLab {
            sinks: Vec::new(),
            bench,
            pinned,
            client,
            lb,
            servers,
            lab,
        };
        suite.start_sinks()?;
        suite.make_pki()?;
        Ok(suite)
    }

    /// Makes the throw-away CA and the two certificates for [`TLS_NAME`] ([`xlb_tests::pki`]): `ecdsa.pem` /
    /// `ecdsa.key` (P-256) and `rsa.pem` / `rsa.key` (RSA-2048), plus `ecdsa.crt-key.pem` and `rsa.crt-key.pem`
    /// (certificate and key in one file, as HAProxy's `crt` takes them).
    fn make_pki(&self) -> Result<()> {
        let dir = self.pki();
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        xlb_tests::pki::make_with(&dir, &[("ecdsa", TLS_NAME)], xlb_tests::pki::LeafKey::P256)?;
        xlb_tests::pki::make_with(&dir, &[("rsa", TLS_NAME)], xlb_tests::pki::LeafKey::Rsa2048)?;
        for stem in ["ecdsa", "rsa"] {
            let cert = std::fs::read_to_string(dir.join(format!("{stem}.pem")))?;
            let key = std::fs::read_to_string(dir.join(format!("{stem}.key")))?;
            std::fs::write(dir.join(format!("{stem}.crt-key.pem")), cert + &key)?;
        }
        Ok(())
    }

    /// The directory of the lab's CA (`ca.pem`) and certificates.
    pub fn pki(&self) -> PathBuf {
        self.lab.dir().join(PKI_DIR)
    }

    fn start_sinks(&mut self) -> Result<()> {
        let bench = self.bench.display().to_string();
        for (proto, port) in [("tcp", TCP_PORT), ("udp", UDP_PORT), ("http", HTTP_PORT)] {
            for (i, ip) in SERVERS.iter().enumerate() {
                let listen = format!("{ip}:{port}");
                let name = format!("s{}", i + 1);
                let args = ["sink", "--listen", &listen, "--proto", proto, "--name", &name];
                let sink = self.lab.spawn(&self.servers, &bench, &args)?;
                wait_until_ok(SINK_START, &format!("{proto} sink {name} to listen"), || {
                    sink.check_running()?;
                    ensure!(sink.stderr().contains("listening on"), "not listening yet");
                    Ok(())
                })?;
                self.sinks.push(sink);
            }
        }
        Ok(())
    }

    /// Whether generators are pinned to [`GENERATOR_CORE`].
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// Pids of the sinks, for CPU accounting.
    pub fn sink_pids(&self) -> Vec<u32> {
        self.sinks.iter().map(Proc::pid).collect()
    }

    /// Errors if a sink has died.
    pub fn check_sinks(&self) -> Result<()> {
        self.sinks.iter().try_for_each(Proc::check_running)
    }

    /// TCP sockets in TIME_WAIT in the servers' and the client's namespace.
    pub fn time_wait(&self) -> Result<TimeWait> {
        Ok(TimeWait {
            servers: time_wait_in(&self.servers)?,
            client: time_wait_in(&self.client)?,
        })
    }

    /// Removes every TCP socket in TIME_WAIT from the servers' and the client's namespace, so a system does
    /// not inherit the TIME_WAIT states another system's connections left on the servers (the server-close
    /// scenario measures what a system does with its own). Uses `ss -K state time-wait` (sock_diag destroy);
    /// where the kernel cannot do that, waits for the states to expire (at most [`TIME_WAIT_EXPIRY`]).
    pub fn clear_time_wait(&self) -> Result<TimeWaitCleared> {
        let found = self.time_wait()?;
        let mut how = "none left";
        if found.servers + found.client > 0 {
            how = "ss -K state time-wait";
            for ns in [&self.servers, &self.client] {
                if ns.run("ss", &["-K", "-H", "state", "time-wait"]).is_err() {
                    how = "waited for expiry";
                }
            }
            if self.time_wait()?.total() > 0 {
                how = "waited for expiry";
                wait_until_ok(TIME_WAIT_EXPIRY, "TIME_WAIT sockets to expire", || {
                    let left = self.time_wait()?;
                    ensure!(left.total() == 0, "{left:?} left");
                    Ok(())
                })?;
            }
        }
        Ok(TimeWaitCleared { found, how })
    }

    /// Waits until the servers hold no half-open (SYN_RECV) connection, at most [`HALF_OPEN_EXPIRY`], and
    /// returns how many there were. A SYN flood NATed to the servers leaves request sockets for the lab's
    /// FULLNAT source tuples (198.19.0.10:port → server), which both systems use: the next system would meet
    /// them on tuples it reuses. The servers retransmit a SYN-ACK only once (`tcp_synack_retries = 1`), so
    /// they are gone after about 3 s.
    pub fn drain_half_open(&self) -> Result<u64> {
        let count = || -> Result<u64> {
            let out = self.servers.run("ss", &["-H", "-t", "-n", "state", "syn-recv"])?;
            Ok(out.lines().filter(|l| !l.trim().is_empty()).count() as u64)
        };
        let found = count()?;
        if found > 0 {
            wait_until_ok(HALF_OPEN_EXPIRY, "the servers' half-open connections to expire", || {
                let left = count()?;
                ensure!(left == 0, "{left} left");
                Ok(())
            })?;
        }
        Ok(found)
    }

    /// Removes the TCP sockets in TIME_WAIT from the `lb` namespace (best effort, `ss -K`), so a proxy does not
    /// meet the states another proxy's connections left on the VIP; returns how many there were.
    pub fn clear_lb_time_wait(&self) -> Result<u64> {
        let found = time_wait_in(&self.lb)?;
        if found > 0 {
            let _ = self.lb.run("ss", &["-K", "-H", "state", "time-wait"]);
        }
        Ok(found)
    }

    /// The MACs of `lb`'s `ext0` and the client's `cli0` (a flood's destination and source).
    pub fn client_link_macs(&self) -> Result<([u8; 6], [u8; 6])> {
        Ok((self.lb.mac("ext0")?, self.client.mac("cli0")?))
    }

    /// Starts `xlb-bench ARGS --json` in the client namespace in the background (pinned to the generator core,
    /// like the generator, so it takes the same CPU from both systems): the SYN flood beside a generator.
    pub fn start_background(&self, args: &[String]) -> Result<Proc> {
        let bench = self.bench.display().to_string();
        let core = GENERATOR_CORE.to_string();
        let mut argv: Vec<&str> = Vec::new();
        let program = if self.pinned {
            argv.extend(["-c", &core, &bench]);
            "taskset"
        } else {
            &bench
        };
        argv.extend(args.iter().map(String::as_str));
        argv.push("--json");
        self.lab.spawn(&self.client, program, &argv)
    }

    /// Waits for a background run to end (at most `duration` plus the grace period) and returns its report.
    pub fn finish_background(&self, proc: Proc, duration: Duration) -> Result<Value> {
        let Some(status) = proc.wait_timeout(duration + GENERATOR_GRACE)? else {
            proc.kill();
            bail!(
                "`{}` did not finish within {:?}",
                proc.cmdline(),
                duration + GENERATOR_GRACE
            );
        };
        if !status.success() {
            bail!("`{}` failed with {status}; stderr:\n{}", proc.cmdline(), proc.stderr());
        }
        parse_report(&proc.stdout(), proc.cmdline())
    }

    /// Runs `xlb-bench ARGS --json` once from the client namespace without CPU accounting or pinning, for
    /// probes; bounded by the lab's command timeout.
    pub fn probe(&self, args: &[&str]) -> Result<Value> {
        let mut full = args.to_vec();
        full.push("--json");
        let out = self.client.run(&self.bench.display().to_string(), &full)?;
        parse_report(&out, &full.join(" "))
    }

    /// Runs the generator — `xlb-bench ARGS --json`, or `h2load ARGS --log-file FILE` for
    /// [`Generator::H2load`] — (pinned to the generator core) from the client namespace for at most `duration`
    /// plus a grace period, measuring CPU time around it. `lb_pids` are the load balancer's processes (their CPU
    /// time is summed), if it has any.
    pub fn run_generator(
        &self,
        generator: Generator,
        args: &[String],
        duration: Duration,
        lb_pids: &[u32],
    ) -> Result<GeneratorRun> {
        let program = match generator {
            Generator::XlbBench => self.bench.display().to_string(),
            Generator::H2load => {
                ensure!(
                    which("h2load"),
                    "h2load (nghttp2-client, installed by `make deps`) is not in $PATH"
                );
                "h2load".to_owned()
            }
        };
        let log = self.lab.dir().join("h2load-requests.log");
        let log_arg = log.display().to_string();
        let _ = std::fs::remove_file(&log);
        let core = GENERATOR_CORE.to_string();
        let mut argv: Vec<&str> = Vec::new();
        let program = if self.pinned {
            argv.extend(["-c", &core, &program]);
            "taskset"
        } else {
            &program
        };
        argv.extend(args.iter().map(String::as_str));
        match generator {
            Generator::XlbBench => argv.push("--json"),
            Generator::H2load => argv.extend(["--log-file", &log_arg]),
        }
        let sinks = self.sink_pids();
        let before = CpuSample::take(lb_pids, &sinks)?;
        let proc = self.lab.spawn(&self.client, program, &argv)?;
        // Reaping the generator here is what puts its times into RUSAGE_CHILDREN.
        let status = proc.wait_timeout(duration + GENERATOR_GRACE)?;
        let after = CpuSample::take(lb_pids, &sinks)?;
        let Some(status) = status else {
            proc.kill();
            bail!(
                "`{}` did not finish within {:?}",
                proc.cmdline(),
                duration + GENERATOR_GRACE
            );
        };
        if !status.success() {
            bail!("`{}` failed with {status}; stderr:\n{}", proc.cmdline(), proc.stderr());
        }
        let report = match generator {
            Generator::XlbBench => parse_report(&proc.stdout(), proc.cmdline())?,
            Generator::H2load => {
                let text = std::fs::read_to_string(&log).with_context(|| format!("h2load's log {log_arg}"))?;
                let _ = std::fs::remove_file(&log);
                h2load::report(&proc.stdout(), &text).with_context(|| proc.cmdline().to_owned())?
            }
        };
        Ok(GeneratorRun {
            cmdline: proc.cmdline().to_owned(),
            report,
            cpu: CpuUsage::between(&before, &after),
        })
    }
}

impl SuiteLab {
    /// Runs the hold generator `xlb-bench ARGS --json` (see [`crate::gen::http::hold`]) from the client
    /// namespace: reads the resident memory of `lb_pid` before it starts and once it holds its connections
    /// (after `settle`), then stops it (SIGINT) and adds `memory` (`rss_before_bytes`, `rss_held_bytes`,
    /// `rss_growth_bytes`, `bytes_per_conn` over the connections held) to its report. Bounded by `open_within`
    /// (the generator's own bound to open them) plus the grace period.
    pub fn run_hold(
        &self,
        args: &[String],
        open_within: Duration,
        settle: Duration,
        lb_pid: u32,
    ) -> Result<GeneratorRun> {
        let sinks = self.sink_pids();
        let before_rss = rss_bytes(lb_pid)?;
        let before = CpuSample::take(&[lb_pid], &sinks)?;
        let proc = self.start_background(args)?;
        let held = wait_until_ok(open_within + GENERATOR_GRACE, "the hold generator to hold", || {
            if !proc.is_running() {
                bail!("`{}` ended early: {}", proc.cmdline(), proc.stderr());
            }
            let err = proc.stderr();
            let line = err
                .lines()
                .find_map(|l| l.strip_prefix(crate::gen::http::HOLDING))
                .context("not holding yet")?;
            line.trim().parse::<u64>().context("bad holding line")
        });
        let held = match held {
            Ok(held) => held,
            Err(e) => {
                proc.kill();
                return Err(e);
            }
        };
        std::thread::sleep(settle);
        let held_rss = rss_bytes(lb_pid);
        let _ = proc.signal(libc::SIGINT);
        let report = self.finish_background(proc, Duration::ZERO);
        let after = CpuSample::take(&[lb_pid], &sinks)?;
        let mut report = report?;
        let held_rss = held_rss?;
        let growth = held_rss.saturating_sub(before_rss);
        if let Some(object) = report.as_object_mut() {
            object.insert(
                "memory".into(),
                serde_json::json!({
                    "pid": lb_pid,
                    "rss_before_bytes": before_rss,
                    "rss_held_bytes": held_rss,
                    "rss_growth_bytes": growth,
                    "held": held,
                    "bytes_per_conn": if held > 0 { growth as f64 / held as f64 } else { 0.0 },
                }),
            );
        }
        let mut cmdline = vec![self.bench.display().to_string()];
        cmdline.extend(args.iter().cloned());
        Ok(GeneratorRun {
            cmdline: cmdline.join(" "),
            report,
            cpu: CpuUsage::between(&before, &after),
        })
    }
}

/// Resident memory of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS in {path}"))
}

/// `VmRSS` of a `/proc/PID/status` text, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// TCP sockets in TIME_WAIT, by namespace: the kernel's `tw` count, which also holds closed sockets still in
/// FIN_WAIT2 (waiting for the peer's FIN); both mean that side closed first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TimeWait {
    /// In the servers' namespace: connections the servers closed first.
    pub servers: u64,
    /// In the client's namespace: connections the client closed first.
    pub client: u64,
}

impl TimeWait {
    /// Both namespaces together.
    pub fn total(&self) -> u64 {
        self.servers + self.client
    }
}

/// What [`SuiteLab::clear_time_wait`] found and how it cleared it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TimeWaitCleared {
    /// TIME_WAIT sockets before.
    pub found: TimeWait,
    /// `none left`, `ss -K state time-wait` or `waited for expiry`.
    pub how: &'static str,
}

/// TIME_WAIT sockets of `ns`, from its `/proc/net/sockstat` (per network namespace).
fn time_wait_in(ns: &Netns) -> Result<u64> {
    let text = ns.run("cat", &["/proc/net/sockstat"])?;
    parse_sockstat_tw(&text).with_context(|| format!("no TCP tw count in /proc/net/sockstat of {}: {text}", ns.label()))
}

/// The `tw` field of the `TCP:` line of `/proc/net/sockstat`.
fn parse_sockstat_tw(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let at = fields.iter().position(|f| *f == "tw")?;
    fields.get(at + 1)?.parse().ok()
}

/// The last line of a generator's stdout as JSON.
fn parse_report(stdout: &str, what: &str) -> Result<Value> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .with_context(|| format!("`{what}` printed nothing on stdout"))?;
    serde_json::from_str(line).with_context(|| format!("`{what}` printed no JSON: {stdout}"))
}

/// Whether `program` is in `$PATH`.
pub fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t  1234 kB\nVmSwap: 0 kB\n"),
            Some(1234 * 1024)
        );
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn sockstat_time_wait() {
        let text = "sockets: used 12\nTCP: inuse 3 orphan 0 tw 51234 alloc 5 mem 1\nUDP: inuse 0 mem 0\n";
        assert_eq!(parse_sockstat_tw(text), Some(51234));
        assert_eq!(parse_sockstat_tw("UDP: inuse 0 mem 0\n"), None);
        assert_eq!(parse_sockstat_tw("TCP: inuse 3 orphan 0 tw\n"), None);
    }
}
