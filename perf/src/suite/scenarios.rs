//! The measured scenarios: the generator command of each and the metrics taken from its report.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::cpu::CpuUsage;
use super::lab::{VIP, VIP_HTTP_PORT, VIP_L7_PORT, VIP_TCP_PORT, VIP_UDP_PORT};
use super::systems::SystemKind;

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
}

/// Which load balancers a scenario compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Packet forwarding (FULLNAT): xlb and the kernel's NAT.
    L4,
    /// HTTP reverse proxying: xlb's L7 proxy, NGINX and HAProxy.
    L7,
}

impl Layer {
    /// The systems compared at this layer, xlb first.
    pub fn systems(self) -> &'static [SystemKind] {
        match self {
            Layer::L4 => &[SystemKind::Xlb, SystemKind::Kernel],
            Layer::L7 => &[SystemKind::Xlb, SystemKind::Nginx, SystemKind::Haproxy],
        }
    }

    /// The peers xlb is compared with (the ratio columns).
    pub fn peers(self) -> &'static [SystemKind] {
        &self.systems()[1..]
    }
}

/// How a metric compares between systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// More is better (rates).
    Higher,
    /// Less is better (latency, loss, CPU).
    Lower,
}

/// A metric of a scenario.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// Key in the results file.
    pub key: &'static str,
    /// Label in the table.
    pub label: &'static str,
    /// Which direction is better.
    pub better: Better,
    /// Where the value comes from.
    source: Source,
}

#[derive(Debug, Clone, Copy)]
enum Source {
    /// A number in the generator report (JSON pointer), times a factor.
    Report(&'static str, f64),
    /// The load balancer's CPU seconds ([`CpuUsage::lb_cpu_s`]).
    LbCpu,
    /// The report number at the pointer divided by the load balancer's CPU seconds per wall second: work per
    /// CPU-second.
    PerLbCpu(&'static str),
    /// Busy CPU time of the whole host in µs divided by the operation count at the pointer.
    HostCpuPerOp(&'static str),
    /// Completed connections in percent of attempted ones (`/counts/completed` over completed + failed).
    SuccessPct,
    /// Completed HTTP requests whose answer was not `200` (`/counts/completed` minus `/status/200`).
    Non200,
}

const fn metric(key: &'static str, label: &'static str, better: Better, source: Source) -> MetricDef {
    MetricDef {
        key,
        label,
        better,
        source,
    }
}

const TCP_CPS_METRICS: &[MetricDef] = &[
    metric(
        "conns_per_s",
        "connections/s",
        Better::Higher,
        Source::Report("/rate", 1.0),
    ),
    metric(
        "connect_p50_us",
        "connect p50 (µs)",
        Better::Lower,
        Source::Report("/latency_us/connect/p50", 1.0),
    ),
    metric(
        "connect_p99_us",
        "connect p99 (µs)",
        Better::Lower,
        Source::Report("/latency_us/connect/p99", 1.0),
    ),
    metric(
        "failed",
        "failed connections",
        Better::Lower,
        Source::Report("/counts/failed", 1.0),
    ),
    metric("lb_cpu_s", "LB CPU seconds", Better::Lower, Source::LbCpu),
    metric(
        "conns_per_cpu_s",
        "connections per LB CPU-s",
        Better::Higher,
        Source::PerLbCpu("/rate"),
    ),
    metric(
        "host_cpu_us_per_conn",
        "host CPU µs per connection",
        Better::Lower,
        Source::HostCpuPerOp("/counts/completed"),
    ),
];

const UDP_PPS_METRICS: &[MetricDef] = &[
    metric(
        "pps",
        "replies/s received",
        Better::Higher,
        Source::Report("/rate", 1.0),
    ),
    metric(
        "loss_pct",
        "loss (%)",
        Better::Lower,
        Source::Report("/loss_ratio", 100.0),
    ),
    metric(
        "rtt_p99_us",
        "rtt p99 (µs)",
        Better::Lower,
        Source::Report("/latency_us/rtt/p99", 1.0),
    ),
    metric("lb_cpu_s", "LB CPU seconds", Better::Lower, Source::LbCpu),
    metric(
        "pps_per_cpu_s",
        "replies per LB CPU-s",
        Better::Higher,
        Source::PerLbCpu("/rate"),
    ),
    metric(
        "host_cpu_us_per_reply",
        "host CPU µs per reply",
        Better::Lower,
        Source::HostCpuPerOp("/counts/received"),
    ),
];

const LATENCY_METRICS: &[MetricDef] = &[
    metric(
        "p50_us",
        "rtt p50 (µs)",
        Better::Lower,
        Source::Report("/latency_us/rtt/p50", 1.0),
    ),
    metric(
        "p90_us",
        "rtt p90 (µs)",
        Better::Lower,
        Source::Report("/latency_us/rtt/p90", 1.0),
    ),
    metric(
        "p99_us",
        "rtt p99 (µs)",
        Better::Lower,
        Source::Report("/latency_us/rtt/p99", 1.0),
    ),
    metric(
        "p99_9_us",
        "rtt p99.9 (µs)",
        Better::Lower,
        Source::Report("/latency_us/rtt/p99_9", 1.0),
    ),
    metric(
        "max_us",
        "rtt max (µs)",
        Better::Lower,
        Source::Report("/latency_us/rtt/max", 1.0),
    ),
    metric(
        "loss_pct",
        "loss (%)",
        Better::Lower,
        Source::Report("/loss_ratio", 100.0),
    ),
    metric("lb_cpu_s", "LB CPU seconds", Better::Lower, Source::LbCpu),
    metric(
        "host_cpu_us_per_req",
        "host CPU µs per request",
        Better::Lower,
        Source::HostCpuPerOp("/counts/received"),
    ),
];

const SERVER_CLOSE_METRICS: &[MetricDef] = &[
    metric(
        "conns_per_s",
        "connections/s (all intervals)",
        Better::Higher,
        Source::Report("/rate", 1.0),
    ),
    metric(
        "conns_total",
        "connections (total)",
        Better::Higher,
        Source::Report("/counts/completed", 1.0),
    ),
    metric(
        "first_interval_cps",
        "first interval conn/s",
        Better::Higher,
        Source::Report("/first_interval_rate", 1.0),
    ),
    metric(
        "last_interval_cps",
        "last interval conn/s",
        Better::Higher,
        Source::Report("/last_interval_rate", 1.0),
    ),
    metric(
        "min_interval_cps",
        "slowest interval conn/s",
        Better::Higher,
        Source::Report("/min_interval_rate", 1.0),
    ),
    metric(
        "last_vs_first",
        "last / first interval",
        Better::Higher,
        Source::Report("/last_vs_first", 1.0),
    ),
    metric(
        "last_connect_p99_us",
        "last interval connect p99 (µs)",
        Better::Lower,
        Source::Report("/last_interval_connect_p99_us", 1.0),
    ),
    metric(
        "failed",
        "failed connections",
        Better::Lower,
        Source::Report("/counts/failed", 1.0),
    ),
    metric("lb_cpu_s", "LB CPU seconds", Better::Lower, Source::LbCpu),
    metric(
        "host_cpu_us_per_conn",
        "host CPU µs per connection",
        Better::Lower,
        Source::HostCpuPerOp("/counts/completed"),
    ),
];

const HTTP_RPS_METRICS: &[MetricDef] = &[
    metric("rps", "requests/s", Better::Higher, Source::Report("/rate", 1.0)),
    metric(
        "response_p50_us",
        "response p50 (µs)",
        Better::Lower,
        Source::Report("/latency_us/response/p50", 1.0),
    ),
    metric(
        "response_p99_us",
        "response p99 (µs)",
        Better::Lower,
        Source::Report("/latency_us/response/p99", 1.0),
    ),
    metric(
        "failed",
        "failed requests",
        Better::Lower,
        Source::Report("/counts/failed", 1.0),
    ),
    metric("non_200", "answers not 200", Better::Lower, Source::Non200),
    metric(
        "connections_opened",
        "client connections opened",
        Better::Lower,
        Source::Report("/counts/connections_opened", 1.0),
    ),
    metric("lb_cpu_s", "LB CPU seconds", Better::Lower, Source::LbCpu),
    metric(
        "rps_per_cpu_s",
        "requests per LB CPU-s",
        Better::Higher,
        Source::PerLbCpu("/rate"),
    ),
    metric(
        "host_cpu_us_per_req",
        "host CPU µs per request",
        Better::Lower,
        Source::HostCpuPerOp("/counts/completed"),
    ),
];

const HTTP_CPS_METRICS: &[MetricDef] = &[
    metric(
        "conns_per_s",
        "connections/s",
        Better::Higher,
        Source::Report("/rate", 1.0),
    ),
    metric(
        "connect_p50_us",
        "connect p50 (µs)",
        Better::Lower,
        Source::Report("/latency_us/connect/p50", 1.0),
    ),
    metric(
        "connect_p99_us",
        "connect p99 (µs)",
        Better::Lower,
        Source::Report("/latency_us/connect/p99", 1.0),
    ),
    metric(
        "response_p99_us",
        "response p99 (µs)",
        Better::Lower,
        Source::Report("/latency_us/response/p99", 1.0),
    ),
    metric(
        "failed",
        "failed requests",
        Better::Lower,
        Source::Report("/counts/failed", 1.0),
    ),
    metric("non_200", "answers not 200", Better::Lower, Source::Non200),
    metric("lb_cpu_s", "LB CPU seconds", Better::Lower, Source::LbCpu),
    metric(
        "conns_per_cpu_s",
        "connections per LB CPU-s",
        Better::Higher,
        Source::PerLbCpu("/rate"),
    ),
    metric(
        "host_cpu_us_per_conn",
        "host CPU µs per connection",
        Better::Lower,
        Source::HostCpuPerOp("/counts/completed"),
    ),
];

/// Kept-alive client connections of `http_rps_keepalive`.
pub const HTTP_RPS_CONNECTIONS: usize = 32;
/// Concurrent client connections (one request each) of `http_cps`.
pub const HTTP_CPS_CONNECTIONS: usize = 16;

const SYNFLOOD_METRICS: &[MetricDef] = &[
    metric(
        "success_pct",
        "legit connections ok (%)",
        Better::Higher,
        Source::SuccessPct,
    ),
    metric(
        "conns_per_s",
        "legit connections/s",
        Better::Higher,
        Source::Report("/rate", 1.0),
    ),
    metric(
        "connect_p50_us",
        "connect p50 (µs)",
        Better::Lower,
        Source::Report("/latency_us/connect/p50", 1.0),
    ),
    metric(
        "connect_p99_us",
        "connect p99 (µs)",
        Better::Lower,
        Source::Report("/latency_us/connect/p99", 1.0),
    ),
    metric(
        "failed",
        "failed connections",
        Better::Lower,
        Source::Report("/counts/failed", 1.0),
    ),
    metric(
        "flood_sps",
        "flood SYNs/s sent",
        Better::Higher,
        Source::Report("/flood/rate", 1.0),
    ),
    metric("lb_cpu_s", "LB CPU seconds", Better::Lower, Source::LbCpu),
];

/// Spoofed source addresses of the SYN flood (from 198.18.128.0, each with varying ports).
pub const SYNFLOOD_SOURCES: u32 = 32_768;
/// SYNs per second of the flood: a rate the lab delivers to both systems. Unpaced, one sender thread reached
/// about 110 000/s against xlb (its XDP filter redirects in the sender's softirq) but only about 13 000/s against
/// the kernel (conntrack and NAT of every SYN run in the sender's softirq and slow it down), so the two systems
/// would not face the same flood.
pub const SYNFLOOD_RATE: u32 = 10_000;

/// Client connections of the server-close scenario (as `wrk -c16` in issue 9's reproduction).
pub const SERVER_CLOSE_CONNECTIONS: usize = 16;
/// Intervals of the server-close scenario and their length, full mode: one minute, as long as Linux keeps
/// TIME_WAIT, so every source tuple a system hands out more than once in a minute meets its TIME_WAIT state.
pub const SERVER_CLOSE_FULL: (usize, f64) = (6, 10.0);
/// The same in quick mode.
pub const SERVER_CLOSE_QUICK: (usize, f64) = (2, 5.0);

/// Fixed rate of the latency scenario, datagrams per second.
pub const LATENCY_RATE: u32 = 10_000;

/// Keys of the latency percentiles, in plot order, with their x-axis labels and quantiles (`None`: max).
pub const LATENCY_PERCENTILES: [(&str, &str, Option<f64>); 5] = [
    ("p50_us", "p50", Some(0.5)),
    ("p90_us", "p90", Some(0.9)),
    ("p99_us", "p99", Some(0.99)),
    ("p99_9_us", "p99.9", Some(0.999)),
    ("max_us", "max", None),
];

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
    pub const ALL: [Scenario; 7] = [
        Scenario::TcpCps,
        Scenario::UdpPps64,
        Scenario::Latency,
        Scenario::TcpCpsServerClose,
        // Last of the L4 scenarios: the flood leaves half-open state behind (conntrack entries of the kernel peer
        // until it is torn down, half-open entries of xlb until it is stopped).
        Scenario::TcpCpsSynflood,
        Scenario::HttpRpsKeepalive,
        Scenario::HttpCps,
    ];

    /// The name used in the table and the results file.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::TcpCps => "tcp_cps",
            Scenario::UdpPps64 => "udp_pps_64",
            Scenario::Latency => "latency",
            Scenario::TcpCpsServerClose => "tcp_cps_server_close",
            Scenario::TcpCpsSynflood => "tcp_cps_synflood",
            Scenario::HttpRpsKeepalive => "http_rps_keepalive",
            Scenario::HttpCps => "http_cps",
        }
    }

    /// Whether the scenario compares packet forwarding (L4) or reverse proxies (L7).
    pub fn layer(self) -> Layer {
        match self {
            Scenario::HttpRpsKeepalive | Scenario::HttpCps => Layer::L7,
            _ => Layer::L4,
        }
    }

    /// The systems this scenario runs on, xlb first.
    pub fn systems(self) -> &'static [SystemKind] {
        self.layer().systems()
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
            Scenario::TcpCpsServerClose => SERVER_CLOSE_METRICS,
            Scenario::TcpCpsSynflood => SYNFLOOD_METRICS,
            Scenario::HttpRpsKeepalive => HTTP_RPS_METRICS,
            Scenario::HttpCps => HTTP_CPS_METRICS,
        }
    }

    /// The metric that sums the scenario up (plots, the test's check, the ratio it is known by).
    pub fn headline(self) -> &'static str {
        match self {
            Scenario::TcpCps => "conns_per_s",
            Scenario::UdpPps64 => "pps",
            Scenario::Latency => "p99_us",
            Scenario::TcpCpsServerClose => "conns_per_s",
            Scenario::TcpCpsSynflood => "success_pct",
            Scenario::HttpRpsKeepalive => "rps",
            Scenario::HttpCps => "conns_per_s",
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

    /// `xlb-bench` arguments (without `--json`) for a run of `duration`.
    pub fn generator_args(self, duration: Duration) -> Vec<String> {
        let secs = format!("{}", duration.as_secs_f64());
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
        };
        args.into_iter().chain(["--duration".into(), secs]).collect()
    }

    /// The metric values of one run, in [`Scenario::metrics`] order.
    pub fn extract(self, report: &Value, cpu: &CpuUsage) -> Result<Vec<(&'static str, f64)>> {
        let number = |pointer: &str| -> Result<f64> {
            report
                .pointer(pointer)
                .and_then(Value::as_f64)
                .with_context(|| format!("{}: no number at {pointer} in the generator report", self.name()))
        };
        self.metrics()
            .iter()
            .map(|m| {
                let value = match m.source {
                    Source::Report(pointer, factor) => number(pointer)? * factor,
                    Source::LbCpu => cpu.lb_cpu_s,
                    Source::SuccessPct => {
                        let (ok, failed) = (number("/counts/completed")?, number("/counts/failed")?);
                        if ok + failed > 0.0 {
                            100.0 * ok / (ok + failed)
                        } else {
                            0.0
                        }
                    }
                    Source::Non200 => {
                        let ok = report.pointer("/status/200").and_then(Value::as_f64).unwrap_or(0.0);
                        (number("/counts/completed")? - ok).max(0.0)
                    }
                    Source::HostCpuPerOp(pointer) => {
                        let ops = number(pointer)?;
                        if ops > 0.0 {
                            cpu.host.busy() * 1e6 / ops
                        } else {
                            0.0
                        }
                    }
                    Source::PerLbCpu(pointer) => {
                        let cores = if cpu.wall_s > 0.0 {
                            cpu.lb_cpu_s / cpu.wall_s
                        } else {
                            0.0
                        };
                        if cores > 0.0 {
                            number(pointer)? / cores
                        } else {
                            0.0
                        }
                    }
                };
                Ok((m.key, value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::cpu::{HostTimes, ProcTimes};
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
            let args = s.generator_args(Duration::from_secs(3));
            assert_eq!(args[args.len() - 2..], ["--duration".to_owned(), "3".to_owned()]);
            assert!(s.metrics().iter().any(|m| m.key == s.headline()));
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
            assert_eq!(s.systems()[0], SystemKind::Xlb, "{}", s.name());
        }
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
        let args = Scenario::HttpRpsKeepalive.generator_args(Duration::from_secs(3));
        assert_eq!(
            args.join(" "),
            "http --target 198.18.0.100:8080 --keepalive --connections 32 --duration 3"
        );
        let args = Scenario::HttpCps.generator_args(Duration::from_millis(2500));
        assert_eq!(
            args.join(" "),
            "http --target 198.18.0.100:8080 --new-conn --connections 16 --duration 2.5"
        );
        assert_eq!(Scenario::HttpCps.intervals(false), None);
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
