//! The L4 scenarios' metrics and parameters: xlb against the kernel's NAT.

use super::{metric, Better, MetricDef, Source};

pub(super) const TCP_CPS_METRICS: &[MetricDef] = &[
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

pub(super) const UDP_PPS_METRICS: &[MetricDef] = &[
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

pub(super) const LATENCY_METRICS: &[MetricDef] = &[
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

/// `tcp_connect_latency`: connect latency of new connections below saturation.
pub(super) const TCP_CONNECT_LATENCY_METRICS: &[MetricDef] = &[
    metric(
        "conns_per_s",
        "connections/s (fixed rate)",
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
        "connect_p90_us",
        "connect p90 (µs)",
        Better::Lower,
        Source::Report("/latency_us/connect/p90", 1.0),
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
];

pub(super) const SERVER_CLOSE_METRICS: &[MetricDef] = &[
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

pub(super) const SYNFLOOD_METRICS: &[MetricDef] = &[
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

/// Fixed rate of the connect-latency scenarios (`tcp_connect_latency`, `http_connect_latency`), new connections
/// per second: well below what every system sustains on the lab's two cores, so what they measure is the path
/// a connection takes, not a queue.
pub const CONNECT_LATENCY_RATE: u32 = 1_000;

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
