//! The plain-HTTP L7 scenarios' metrics and parameters: xlb against NGINX and HAProxy.

use super::{metric, Better, MetricDef, Source};

pub(super) const HTTP_RPS_METRICS: &[MetricDef] = &[
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

pub(super) const HTTP_CPS_METRICS: &[MetricDef] = &[
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
