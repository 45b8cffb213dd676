//! The measured scenarios: the generator command of each and the metrics taken from its report.

use std::time::Duration;

use serde::Serialize;

mod https;
mod l4;
mod l7;
mod metric;

pub use https::{
    outage_loads, HTTPS_RPS_CONNECTIONS, OUTAGE_KILL_S, OUTAGE_PROBE_RATE, OUTAGE_RESTART_S, OUTAGE_SECONDS,
    TLS_HANDSHAKE_CONNECTIONS, TLS_IDLE_FULL, TLS_IDLE_HOLD_S, TLS_IDLE_OPEN_S, TLS_IDLE_QUICK, TLS_IDLE_THREADS,
};
use https::{HTTPS_RPS_METRICS, OUTAGE_METRICS, TLS_HANDSHAKE_METRICS, TLS_IDLE_METRICS};
pub use l4::{
    CONNECT_LATENCY_RATE, LATENCY_PERCENTILES, LATENCY_RATE, SERVER_CLOSE_CONNECTIONS, SERVER_CLOSE_FULL,
    SERVER_CLOSE_QUICK, SYNFLOOD_RATE, SYNFLOOD_SOURCES,
};
use l4::{
    LATENCY_METRICS, SERVER_CLOSE_METRICS, SYNFLOOD_METRICS, TCP_CONNECT_LATENCY_METRICS, TCP_CPS_METRICS,
    UDP_PPS_METRICS,
};
pub use l7::{HTTP2_CONNECTIONS, HTTP2_STREAMS, HTTP_CPS_CONNECTIONS, HTTP_RPS_CONNECTIONS};
use l7::{HTTP2_RPS_METRICS, HTTP_CONNECT_LATENCY_METRICS, HTTP_CPS_METRICS, HTTP_RPS_METRICS};
use metric::{metric, Source};
pub use metric::{Better, MetricDef};

use super::h2load::Generator;
use super::lab::{
    TLS_NAME, VIP, VIP_HTTPS_ECDSA_PORT, VIP_HTTPS_RSA_PORT, VIP_HTTP_PORT, VIP_L7_PORT, VIP_TCP_PORT, VIP_UDP_PORT,
};
use super::systems::{Setup, SystemKind};

/// One scenario, run for each system in each repetition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// New TCP connections per second, each with one 64-byte request and its answer.
    TcpCps,
    /// Closed-loop UDP request/response with 64-byte payloads: packets per second through the LB.
    #[serde(rename = "udp_pps_64")]
    UdpPps64,
    /// Open-loop UDP request/response at a fixed moderate rate: round-trip latency percentiles.
    Latency,
    /// Open-loop new TCP connections at a fixed moderate rate ([`CONNECT_LATENCY_RATE`]): connect latency
    /// percentiles below saturation, where `tcp_cps` (closed loop, saturating) measures queueing as well.
    TcpConnectLatency,
    /// Short HTTP connections that the server closes first (`Connection: close`), for a minute in 10 s
    /// intervals: whether the rate holds once the servers hold TIME_WAIT states for the LB's source tuples.
    TcpCpsServerClose,
    /// `tcp_cps` while a spoofed-source SYN flood hits the same VIP:port from the client link: the share of
    /// legitimate connections that succeed, their rate and connect latency.
    TcpCpsSynflood,
    /// L7: HTTP GETs on kept-alive client connections through the reverse proxy: requests per second and
    /// response latency.
    HttpRpsKeepalive,
    /// L7: one HTTP GET per new client connection through the reverse proxy: connections per second.
    HttpCps,
    /// L7: new client connections with one HTTP GET each, open loop at a fixed moderate rate
    /// ([`CONNECT_LATENCY_RATE`]): connect and response latency below saturation.
    HttpConnectLatency,
    /// L7: HTTP/2 GETs (h2c with prior knowledge, `h2load`) on kept-alive client connections with many streams
    /// each, proxied to the backends over HTTP/1.1: requests per second and request times.
    Http2Rps,
    /// HTTPS: the memory a proxy holds per idle kept-alive TLS connection (ECDSA certificate): its resident
    /// memory's growth while [`TLS_IDLE_FULL`] connections (quick: [`TLS_IDLE_QUICK`]) are held after one
    /// request each, over their number. Runs first of the HTTPS scenarios.
    TlsIdleMemory,
    /// HTTPS: HTTP GETs on kept-alive TLS 1.3 connections (ECDSA certificate): requests per second, latency.
    HttpsRpsKeepalive,
    /// HTTPS: full TLS 1.3 handshakes per second with the ECDSA P-256 certificate: each connection is new,
    /// handshakes without offering a ticket, sends one GET with `Connection: close`, reads the answer, closes.
    TlsHandshakesEcdsa,
    /// The same with the RSA-2048 certificate.
    TlsHandshakesRsa,
    /// HTTPS: resumed TLS 1.3 handshakes per second (ECDSA listener): as `tls_handshakes_ecdsa`, but every
    /// client worker resumes with a ticket from its previous connection.
    TlsResumed,
    /// HTTPS with the Key Server (`xlb-ks` only): resumed handshakes, plain-HTTP keep-alive requests and a
    /// full-handshake probe for [`OUTAGE_SECONDS`]; the Key Server is killed (SIGKILL) at [`OUTAGE_KILL_S`] and
    /// restarted at [`OUTAGE_RESTART_S`]. Each load's counts and latency per phase (before, down, after).
    TlsKeyserverOutage,
}

/// Which load balancers a scenario compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Packet forwarding (FULLNAT): xlb and the kernel's NAT.
    L4,
    /// HTTP reverse proxying: xlb's L7 proxy, NGINX and HAProxy.
    L7,
    /// HTTPS termination and proxying: xlb, NGINX and HAProxy, each on one core, and xlb with its keys on a
    /// Key Server (in the handshake rows).
    Https,
}

impl Layer {
    /// The systems compared at this layer (the table's columns), xlb first.
    pub fn systems(self) -> &'static [SystemKind] {
        match self {
            Layer::L4 => &[SystemKind::Xlb, SystemKind::Kernel],
            Layer::L7 => &[SystemKind::Xlb, SystemKind::Nginx, SystemKind::Haproxy],
            Layer::Https => &[
                SystemKind::Xlb,
                SystemKind::Nginx,
                SystemKind::Haproxy,
                SystemKind::XlbKs,
            ],
        }
    }

    /// The peers xlb is compared with (the `xlb/peer` ratio columns).
    pub fn peers(self) -> &'static [SystemKind] {
        match self {
            Layer::L4 => &[SystemKind::Kernel],
            Layer::L7 | Layer::Https => &[SystemKind::Nginx, SystemKind::Haproxy],
        }
    }

    /// What xlb with the Key Server is compared with (the `xlb-ks/peer` ratio columns).
    pub fn key_server_peers(self) -> &'static [SystemKind] {
        match self {
            Layer::Https => &[SystemKind::Nginx, SystemKind::Xlb],
            Layer::L4 | Layer::L7 => &[],
        }
    }
}

impl Scenario {
    /// The arguments of the flood that runs beside the generator (`xlb-bench syn-flood`, without `--json`), if
    /// the scenario has one: `macs` are the LB's and the client's MAC on the client link.
    pub fn flood_args(self, duration: Duration, macs: ([u8; 6], [u8; 6])) -> Option<Vec<String>> {
        if self != Scenario::TcpCpsSynflood {
            return None;
        }
        let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        Some(vec![
            "syn-flood".into(),
            "--iface".into(),
            "cli0".into(),
            "--dst-mac".into(),
            mac(macs.0),
            "--src-mac".into(),
            mac(macs.1),
            "--target".into(),
            format!("{VIP}:{VIP_TCP_PORT}"),
            "--sources".into(),
            SYNFLOOD_SOURCES.to_string(),
            "--rate".into(),
            SYNFLOOD_RATE.to_string(),
            "--duration".into(),
            format!("{}", duration.as_secs_f64()),
        ])
    }

    /// Every scenario, in run order.
    pub const ALL: [Scenario; 16] = [
        Scenario::TcpCps,
        Scenario::UdpPps64,
        Scenario::Latency,
        Scenario::TcpConnectLatency,
        Scenario::TcpCpsServerClose,
        // Last of the L4 scenarios: the flood leaves half-open state behind (conntrack entries of the kernel peer
        // until it is torn down, half-open entries of xlb until it is stopped).
        Scenario::TcpCpsSynflood,
        Scenario::HttpRpsKeepalive,
        Scenario::HttpCps,
        Scenario::HttpConnectLatency,
        Scenario::Http2Rps,
        // First of the HTTPS scenarios: the memory growth includes what the proxy's first TLS connections cost.
        Scenario::TlsIdleMemory,
        Scenario::HttpsRpsKeepalive,
        Scenario::TlsHandshakesEcdsa,
        Scenario::TlsHandshakesRsa,
        Scenario::TlsResumed,
        Scenario::TlsKeyserverOutage,
    ];

    /// The name used in the table and the results file.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::TcpCps => "tcp_cps",
            Scenario::UdpPps64 => "udp_pps_64",
            Scenario::Latency => "latency",
            Scenario::TcpConnectLatency => "tcp_connect_latency",
            Scenario::TcpCpsServerClose => "tcp_cps_server_close",
            Scenario::TcpCpsSynflood => "tcp_cps_synflood",
            Scenario::HttpRpsKeepalive => "http_rps_keepalive",
            Scenario::HttpCps => "http_cps",
            Scenario::HttpConnectLatency => "http_connect_latency",
            Scenario::Http2Rps => "http2_rps",
            Scenario::TlsIdleMemory => "tls_idle_memory",
            Scenario::HttpsRpsKeepalive => "https_rps_keepalive",
            Scenario::TlsHandshakesEcdsa => "tls_handshakes_ecdsa",
            Scenario::TlsHandshakesRsa => "tls_handshakes_rsa",
            Scenario::TlsResumed => "tls_resumed",
            Scenario::TlsKeyserverOutage => "tls_keyserver_outage",
        }
    }

    /// Whether the scenario compares packet forwarding (L4) or reverse proxies (L7).
    pub fn layer(self) -> Layer {
        match self {
            Scenario::HttpRpsKeepalive | Scenario::HttpCps | Scenario::HttpConnectLatency | Scenario::Http2Rps => {
                Layer::L7
            }
            Scenario::TlsIdleMemory
            | Scenario::HttpsRpsKeepalive
            | Scenario::TlsHandshakesEcdsa
            | Scenario::TlsHandshakesRsa
            | Scenario::TlsResumed
            | Scenario::TlsKeyserverOutage => Layer::Https,
            _ => Layer::L4,
        }
    }

    /// How the systems are set up for this scenario (xlb differs for the HTTPS ones).
    pub fn setup(self) -> Setup {
        match self.layer() {
            Layer::Https => Setup::Tls,
            Layer::L4 | Layer::L7 => Setup::Standard,
        }
    }

    /// Whether every operation of the scenario opens a new client connection (TIME_WAIT left by earlier runs
    /// is cleared first: a run right after another system's SYN-flood row met ~32 000 client TIME_WAIT
    /// sockets, and the kernel's `tcp_cps` fell to 127 connections/s on client port exhaustion).
    pub fn new_connections(self) -> bool {
        matches!(
            self,
            Scenario::TcpCps
                | Scenario::TcpConnectLatency
                | Scenario::TcpCpsServerClose
                | Scenario::TcpCpsSynflood
                | Scenario::HttpCps
                | Scenario::HttpConnectLatency
                | Scenario::TlsHandshakesEcdsa
                | Scenario::TlsHandshakesRsa
                | Scenario::TlsResumed
                | Scenario::TlsKeyserverOutage
        )
    }

    /// The systems this scenario runs on, in the order of its layer's.
    pub fn systems(self) -> &'static [SystemKind] {
        match self {
            // Only full handshakes use the key: the Key Server runs in their rows.
            Scenario::TlsHandshakesEcdsa | Scenario::TlsHandshakesRsa | Scenario::TlsResumed => Layer::Https.systems(),
            Scenario::TlsKeyserverOutage => &[SystemKind::XlbKs],
            Scenario::TlsIdleMemory | Scenario::HttpsRpsKeepalive => &Layer::Https.systems()[..3],
            _ => self.layer().systems(),
        }
    }

    /// The scenario called `name` (see [`Scenario::name`]).
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The metrics, in table order.
    pub fn metrics(self) -> &'static [MetricDef] {
        match self {
            Scenario::TcpCps => TCP_CPS_METRICS,
            Scenario::UdpPps64 => UDP_PPS_METRICS,
            Scenario::Latency => LATENCY_METRICS,
            Scenario::TcpConnectLatency => TCP_CONNECT_LATENCY_METRICS,
            Scenario::TcpCpsServerClose => SERVER_CLOSE_METRICS,
            Scenario::TcpCpsSynflood => SYNFLOOD_METRICS,
            Scenario::HttpRpsKeepalive => HTTP_RPS_METRICS,
            Scenario::HttpCps => HTTP_CPS_METRICS,
            Scenario::HttpConnectLatency => HTTP_CONNECT_LATENCY_METRICS,
            Scenario::Http2Rps => HTTP2_RPS_METRICS,
            Scenario::TlsIdleMemory => TLS_IDLE_METRICS,
            Scenario::HttpsRpsKeepalive => HTTPS_RPS_METRICS,
            Scenario::TlsHandshakesEcdsa | Scenario::TlsHandshakesRsa | Scenario::TlsResumed => TLS_HANDSHAKE_METRICS,
            Scenario::TlsKeyserverOutage => OUTAGE_METRICS,
        }
    }

    /// The metric that sums the scenario up (plots, the test's check, the ratio it is known by).
    pub fn headline(self) -> &'static str {
        match self {
            Scenario::TcpCps => "conns_per_s",
            Scenario::UdpPps64 => "pps",
            Scenario::Latency => "p99_us",
            Scenario::TcpConnectLatency | Scenario::HttpConnectLatency => "connect_p50_us",
            Scenario::TcpCpsServerClose => "conns_per_s",
            Scenario::TcpCpsSynflood => "success_pct",
            Scenario::HttpRpsKeepalive | Scenario::Http2Rps => "rps",
            Scenario::HttpCps => "conns_per_s",
            Scenario::TlsIdleMemory => "bytes_per_conn",
            Scenario::HttpsRpsKeepalive => "rps",
            Scenario::TlsHandshakesEcdsa | Scenario::TlsHandshakesRsa | Scenario::TlsResumed => "handshakes_per_s",
            Scenario::TlsKeyserverOutage => "resumed_down_per_s",
        }
    }

    /// Scenarios measured as back-to-back generator runs (intervals): their number and length for `quick`.
    /// `None`: one run of the suite's `--duration`.
    pub fn intervals(self, quick: bool) -> Option<(usize, f64)> {
        match self {
            Scenario::TcpCpsServerClose => Some(if quick { SERVER_CLOSE_QUICK } else { SERVER_CLOSE_FULL }),
            _ => None,
        }
    }

    /// Which program generates the load.
    pub fn generator(self) -> Generator {
        match self {
            Scenario::Http2Rps => Generator::H2load,
            _ => Generator::XlbBench,
        }
    }

    /// The generator's arguments (`xlb-bench`: without `--json`; `h2load`: without `--log-file`) for a run of
    /// `duration` (in `quick` mode).
    pub fn generator_args(self, duration: Duration, quick: bool) -> Vec<String> {
        let secs = format!("{}", duration.as_secs_f64());
        let https = |port: u16, mode: &str, connections: usize| -> Vec<String> {
            [
                "http",
                "--target",
                &format!("{VIP}:{port}"),
                mode,
                "--connections",
                &connections.to_string(),
                "--tls",
                "--sni",
                TLS_NAME,
                "--host",
                TLS_NAME,
            ]
            .map(str::to_owned)
            .to_vec()
        };
        let args: Vec<String> = match self {
            Scenario::TcpCps | Scenario::TcpCpsSynflood => vec![
                "tcp-cps".into(),
                "--target".into(),
                format!("{VIP}:{VIP_TCP_PORT}"),
                "--concurrency".into(),
                "8".into(),
                "--request".into(),
                "64".into(),
            ],
            Scenario::TcpConnectLatency => vec![
                "tcp-cps".into(),
                "--target".into(),
                format!("{VIP}:{VIP_TCP_PORT}"),
                "--conns-per-sec".into(),
                CONNECT_LATENCY_RATE.to_string(),
                "--concurrency".into(),
                "8".into(),
                "--request".into(),
                "64".into(),
            ],
            Scenario::UdpPps64 => vec![
                "udp".into(),
                "--target".into(),
                format!("{VIP}:{VIP_UDP_PORT}"),
                "--mode".into(),
                "rr".into(),
                "--size".into(),
                "64".into(),
                "--concurrency".into(),
                "8".into(),
                "--window".into(),
                "32".into(),
            ],
            Scenario::Latency => vec![
                "udp".into(),
                "--target".into(),
                format!("{VIP}:{VIP_UDP_PORT}"),
                "--mode".into(),
                "rr".into(),
                "--size".into(),
                "64".into(),
                "--rate".into(),
                LATENCY_RATE.to_string(),
            ],
            Scenario::TcpCpsServerClose => vec![
                "http".into(),
                "--target".into(),
                format!("{VIP}:{VIP_HTTP_PORT}"),
                "--server-close".into(),
                "--connections".into(),
                SERVER_CLOSE_CONNECTIONS.to_string(),
            ],
            Scenario::HttpRpsKeepalive => vec![
                "http".into(),
                "--target".into(),
                format!("{VIP}:{VIP_L7_PORT}"),
                "--keepalive".into(),
                "--connections".into(),
                HTTP_RPS_CONNECTIONS.to_string(),
            ],
            Scenario::HttpCps => vec![
                "http".into(),
                "--target".into(),
                format!("{VIP}:{VIP_L7_PORT}"),
                "--new-conn".into(),
                "--connections".into(),
                HTTP_CPS_CONNECTIONS.to_string(),
            ],
            Scenario::HttpConnectLatency => vec![
                "http".into(),
                "--target".into(),
                format!("{VIP}:{VIP_L7_PORT}"),
                "--new-conn".into(),
                "--rate".into(),
                CONNECT_LATENCY_RATE.to_string(),
                "--connections".into(),
                HTTP_CPS_CONNECTIONS.to_string(),
            ],
            Scenario::TlsIdleMemory => {
                let mut args = https(
                    VIP_HTTPS_ECDSA_PORT,
                    "--keepalive",
                    if quick { TLS_IDLE_QUICK } else { TLS_IDLE_FULL },
                );
                args.extend([
                    "--threads".into(),
                    TLS_IDLE_THREADS.to_string(),
                    "--hold".into(),
                    TLS_IDLE_HOLD_S.to_string(),
                    "--duration".into(),
                    TLS_IDLE_OPEN_S.to_string(),
                ]);
                return args;
            }
            Scenario::Http2Rps => return l7::h2load_args(duration),
            Scenario::HttpsRpsKeepalive => https(VIP_HTTPS_ECDSA_PORT, "--keepalive", HTTPS_RPS_CONNECTIONS),
            Scenario::TlsHandshakesEcdsa => https(VIP_HTTPS_ECDSA_PORT, "--new-conn", TLS_HANDSHAKE_CONNECTIONS),
            Scenario::TlsHandshakesRsa => https(VIP_HTTPS_RSA_PORT, "--new-conn", TLS_HANDSHAKE_CONNECTIONS),
            Scenario::TlsResumed => {
                let mut args = https(VIP_HTTPS_ECDSA_PORT, "--new-conn", TLS_HANDSHAKE_CONNECTIONS);
                args.push("--resume".into());
                args
            }
            Scenario::TlsKeyserverOutage => return outage_loads().remove(0).1,
        };
        args.into_iter().chain(["--duration".into(), secs]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::cpu::{CpuUsage, HostTimes, ProcTimes};
    use serde_json::json;

    fn cpu(lb: f64, wall: f64) -> CpuUsage {
        CpuUsage {
            wall_s: wall,
            host: HostTimes {
                user_s: 2.0,
                softirq_s: 1.0,
                ..HostTimes::default()
            },
            generator: ProcTimes::default(),
            sinks: ProcTimes::default(),
            xlb_process: None,
            lb_cpu_s: lb,
            residual_cpu_s: 0.0,
        }
    }

    #[test]
    fn serialized_names_match() {
        for s in Scenario::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
            assert_eq!(Scenario::from_name(s.name()), Some(s));
        }
    }

    #[test]
    fn args_end_with_duration() {
        for s in Scenario::ALL {
            let args = s.generator_args(Duration::from_secs(3), true);
            assert!(s.metrics().iter().any(|m| m.key == s.headline()));
            if s == Scenario::TlsIdleMemory {
                // Its duration bounds the opening of the connections, not a measured run.
                assert_eq!(args[args.len() - 2..], ["--duration".to_owned(), "120".to_owned()]);
                continue;
            }
            if s == Scenario::TlsKeyserverOutage {
                // A fixed length: the Key Server is killed and restarted at fixed times within it.
                assert_eq!(args[args.len() - 2..], ["--duration".to_owned(), "9".to_owned()]);
                continue;
            }
            assert_eq!(args[args.len() - 2..], ["--duration".to_owned(), "3".to_owned()]);
        }
    }

    #[test]
    fn per_cpu_second_divides_by_cores_used() {
        let report = json!({"rate": 1000.0, "latency_us": {"connect": {"p50": 10, "p99": 20}},
                            "counts": {"failed": 0, "completed": 4000}});
        let m = Scenario::TcpCps.extract(&report, &cpu(5.0, 10.0)).unwrap();
        let get = |k| m.iter().find(|(key, _)| *key == k).unwrap().1;
        assert_eq!(get("conns_per_s"), 1000.0);
        assert_eq!(get("conns_per_cpu_s"), 2000.0);
        assert_eq!(get("connect_p99_us"), 20.0);
        // 2 s user + 1 s softirq for 4000 connections.
        assert_eq!(get("host_cpu_us_per_conn"), 750.0);
        assert!(Scenario::UdpPps64.extract(&report, &cpu(1.0, 1.0)).is_err());
    }

    #[test]
    fn layers_pick_the_systems() {
        for s in Scenario::ALL {
            if s == Scenario::TlsKeyserverOutage {
                assert_eq!(s.systems(), [SystemKind::XlbKs]);
                continue;
            }
            assert_eq!(s.systems()[0], SystemKind::Xlb, "{}", s.name());
            // Every scenario's systems are columns of its layer's table.
            assert!(
                s.systems().iter().all(|k| s.layer().systems().contains(k)),
                "{}",
                s.name()
            );
        }
        // xlb with the Key Server runs the rows with full handshakes, not the keep-alive and memory ones.
        for s in [
            Scenario::TlsHandshakesEcdsa,
            Scenario::TlsHandshakesRsa,
            Scenario::TlsResumed,
        ] {
            assert_eq!(s.systems().last(), Some(&SystemKind::XlbKs));
        }
        for s in [Scenario::TlsIdleMemory, Scenario::HttpsRpsKeepalive] {
            assert!(!s.systems().contains(&SystemKind::XlbKs));
        }
        assert_eq!(Layer::Https.peers(), [SystemKind::Nginx, SystemKind::Haproxy]);
        assert_eq!(Layer::Https.key_server_peers(), [SystemKind::Nginx, SystemKind::Xlb]);
        assert!(Layer::L7.key_server_peers().is_empty());
        assert_eq!(Scenario::TcpCps.systems(), [SystemKind::Xlb, SystemKind::Kernel]);
        assert_eq!(Scenario::HttpCps.layer(), Layer::L7);
        assert_eq!(
            Scenario::HttpRpsKeepalive.systems(),
            [SystemKind::Xlb, SystemKind::Nginx, SystemKind::Haproxy]
        );
        assert_eq!(Layer::L7.peers(), [SystemKind::Nginx, SystemKind::Haproxy]);
        assert_eq!(Layer::L4.peers(), [SystemKind::Kernel]);
    }

    #[test]
    fn http_scenarios_use_the_l7_listener() {
        let args = Scenario::HttpRpsKeepalive.generator_args(Duration::from_secs(3), false);
        assert_eq!(
            args.join(" "),
            "http --target 198.18.0.100:8080 --keepalive --connections 32 --duration 3"
        );
        let args = Scenario::HttpCps.generator_args(Duration::from_millis(2500), true);
        assert_eq!(
            args.join(" "),
            "http --target 198.18.0.100:8080 --new-conn --connections 16 --duration 2.5"
        );
        assert_eq!(Scenario::HttpCps.intervals(false), None);
    }

    #[test]
    fn http2_row_runs_h2load_with_prior_knowledge() {
        let s = Scenario::Http2Rps;
        assert_eq!((s.generator(), s.layer()), (Generator::H2load, Layer::L7));
        assert_eq!(Scenario::HttpCps.generator(), Generator::XlbBench);
        assert_eq!(
            s.generator_args(Duration::from_secs(3), true).join(" "),
            "http://198.18.0.100:8082/ --threads 1 --clients 16 --max-concurrent-streams 16 --duration 3"
        );
        assert_eq!(
            s.generator_args(Duration::from_millis(2500), false).last().unwrap(),
            "2500ms"
        );
        let report = json!({"rate": 4000.0, "counts": {"succeeded": 8000, "failed": 1, "non_2xx": 2},
                            "latency_us": {"request": {"mean": 900.0, "max": 9000.0, "p50": 800, "p99": 3000}}});
        let m = s.extract(&report, &cpu(1.0, 2.0)).unwrap();
        let get = |k| m.iter().find(|(key, _)| *key == k).unwrap().1;
        assert_eq!(
            (get("rps"), get("request_p99_us"), get("non_2xx")),
            (4000.0, 3000.0, 2.0)
        );
        // 1 s of LB CPU over 8000 requests; 3 s busy on the host.
        assert_eq!((get("lb_cpu_us_per_req"), get("host_cpu_us_per_req")), (125.0, 375.0));
    }

    #[test]
    fn https_scenarios_args() {
        let d = Duration::from_secs(3);
        assert_eq!(
            Scenario::TlsHandshakesRsa.generator_args(d, false).join(" "),
            "http --target 198.18.0.100:8444 --new-conn --connections 16 --tls --sni bench.example.com --host \
             bench.example.com --duration 3"
        );
        let resumed = Scenario::TlsResumed.generator_args(d, false).join(" ");
        assert!(
            resumed.contains(":8443 --new-conn") && resumed.contains(" --resume "),
            "{resumed}"
        );
        assert!(!Scenario::TlsHandshakesEcdsa
            .generator_args(d, false)
            .contains(&"--resume".to_owned()));
        let keepalive = Scenario::HttpsRpsKeepalive.generator_args(d, true).join(" ");
        assert!(
            keepalive.contains(":8443 --keepalive --connections 32 --tls"),
            "{keepalive}"
        );
        let quick = Scenario::TlsIdleMemory.generator_args(d, true).join(" ");
        let full = Scenario::TlsIdleMemory.generator_args(d, false).join(" ");
        assert!(
            quick.contains("--keepalive --connections 2000 ") && quick.contains("--hold 60"),
            "{quick}"
        );
        assert!(full.contains("--connections 10000 "), "{full}");
        for s in [
            Scenario::TlsHandshakesEcdsa,
            Scenario::TlsResumed,
            Scenario::HttpCps,
            Scenario::TcpCps,
            Scenario::TcpConnectLatency,
        ] {
            assert!(s.new_connections());
        }
        assert!(!Scenario::HttpsRpsKeepalive.new_connections());
        assert_eq!(Scenario::TlsResumed.setup(), Setup::Tls);
        assert_eq!(Scenario::HttpCps.setup(), Setup::Standard);
    }

    #[test]
    fn tls_metrics_from_a_report() {
        let report = json!({
            "rate": 2000.0,
            "counts": {"completed": 6000, "failed": 0, "connections_opened": 6000},
            "status": {"200": 6000},
            "handshakes": {"full": 16, "hello_retry": 0, "resumed": 5984},
            "latency_us": {"handshake": {"p50": 300, "p99": 900, "p99_9": 2000},
                           "response": {"p50": 200, "p99": 700, "p99_9": 1500}},
        });
        let mut c = cpu(1.5, 3.0);
        c.generator.user_s = 1.5;
        let m = Scenario::TlsResumed.extract(&report, &c).unwrap();
        let get = |k| m.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        assert_eq!(get("handshakes_per_s"), Some(2000.0));
        assert_eq!(get("handshake_p99_9_us"), Some(2000.0));
        assert_eq!(get("lb_cpu_us_per_hs"), Some(250.0));
        assert_eq!(get("generator_cores"), Some(0.5));
        assert!((get("resumed_pct").unwrap() - 99.733).abs() < 0.001);
        // The xlb-only counters are absent for a peer: no value, no error.
        assert_eq!(get("server_full"), None);
        assert_eq!(get("pool_cpu_s"), None);
        let mut xlb = report.clone();
        xlb["server"] = json!({"tls_full_handshakes": 16, "tls_resumed_handshakes": 5984});
        xlb["xlb_threads"] = json!({"handshake_pool_cpu_s": 0.5, "other_cpu_s": 1.0});
        let m = Scenario::TlsResumed.extract(&xlb, &c).unwrap();
        let get = |k| m.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        assert_eq!((get("server_full"), get("server_resumed")), (Some(16.0), Some(5984.0)));
        assert_eq!((get("pool_cpu_s"), get("worker_cpu_s")), (Some(0.5), Some(1.0)));
        let idle = json!({"held": 2000, "counts": {"failed": 0},
                          "memory": {"bytes_per_conn": 4096.0, "rss_growth_bytes": 8_388_608, "rss_held_bytes": 104_857_600}});
        let m = Scenario::TlsIdleMemory.extract(&idle, &c).unwrap();
        let get = |k| m.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        assert_eq!(get("bytes_per_conn"), Some(4096.0));
        assert_eq!(get("rss_growth_mib"), Some(8.0));
        assert_eq!(get("rss_held_mib"), Some(100.0));
    }

    #[test]
    fn http_metrics_from_a_report() {
        let report = json!({
            "rate": 20000.0,
            "counts": {"completed": 40000, "failed": 2, "connections_opened": 32},
            "status": {"200": 39990, "502": 10},
            "latency_us": {"connect": {"p50": 50, "p99": 90}, "response": {"p50": 800, "p99": 2500}},
        });
        let m = Scenario::HttpRpsKeepalive.extract(&report, &cpu(2.0, 2.0)).unwrap();
        let get = |k| m.iter().find(|(key, _)| *key == k).unwrap().1;
        assert_eq!(get("rps"), 20000.0);
        assert_eq!(get("response_p50_us"), 800.0);
        assert_eq!(get("response_p99_us"), 2500.0);
        assert_eq!(get("failed"), 2.0);
        assert_eq!(get("non_200"), 10.0);
        assert_eq!(get("connections_opened"), 32.0);
        // One core busy: requests per LB CPU-second equal requests per second.
        assert_eq!(get("rps_per_cpu_s"), 20000.0);
        let m = Scenario::HttpCps.extract(&report, &cpu(1.0, 2.0)).unwrap();
        let get = |k| m.iter().find(|(key, _)| *key == k).unwrap().1;
        assert_eq!(get("conns_per_s"), 20000.0);
        assert_eq!(get("connect_p99_us"), 90.0);
        assert_eq!(get("conns_per_cpu_s"), 40000.0);
        // No status map (nothing completed): every completed answer counts as not 200.
        let empty = json!({"rate": 0.0, "counts": {"completed": 0, "failed": 5, "connections_opened": 5},
                           "latency_us": {"connect": {"p50": 0, "p99": 0}, "response": {"p50": 0, "p99": 0}}});
        let m = Scenario::HttpCps.extract(&empty, &cpu(1.0, 2.0)).unwrap();
        assert_eq!(m.iter().find(|(k, _)| *k == "non_200").unwrap().1, 0.0);
    }
}
