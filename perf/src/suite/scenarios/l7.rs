//! The plain-HTTP L7 scenarios' metrics and parameters (HTTP/1.1 and h2c): xlb against NGINX and HAProxy.

use std::time::Duration;

use super::super::lab::{VIP, VIP_H2C_PORT};
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

/// `http_connect_latency`: latency of new client connections below saturation.
pub(super) const HTTP_CONNECT_LATENCY_METRICS: &[MetricDef] = &[
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
        "connect_p99_us",
        "connect p99 (µs)",
        Better::Lower,
        Source::Report("/latency_us/connect/p99", 1.0),
    ),
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
    metric("lb_cpu_s", "LB CPU seconds", Better::Lower, Source::LbCpu),
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

pub(super) const HTTP2_RPS_METRICS: &[MetricDef] = &[
    metric("rps", "requests/s", Better::Higher, Source::Report("/rate", 1.0)),
    metric(
        "request_mean_us",
        "request mean (µs)",
        Better::Lower,
        Source::Report("/latency_us/request/mean", 1.0),
    ),
    metric(
        "request_p50_us",
        "request p50 (µs)",
        Better::Lower,
        Source::Report("/latency_us/request/p50", 1.0),
    ),
    metric(
        "request_p99_us",
        "request p99 (µs)",
        Better::Lower,
        Source::Report("/latency_us/request/p99", 1.0),
    ),
    metric(
        "request_max_us",
        "request max (µs)",
        Better::Lower,
        Source::Report("/latency_us/request/max", 1.0),
    ),
    metric(
        "failed",
        "failed requests",
        Better::Lower,
        Source::Report("/counts/failed", 1.0),
    ),
    metric(
        "non_2xx",
        "answers not 2xx",
        Better::Lower,
        Source::Report("/counts/non_2xx", 1.0),
    ),
    metric("lb_cpu_s", "LB CPU seconds", Better::Lower, Source::LbCpu),
    metric(
        "lb_cpu_us_per_req",
        "LB CPU µs per request",
        Better::Lower,
        Source::LbCpuUsPerOp("/counts/succeeded"),
    ),
    metric(
        "host_cpu_us_per_req",
        "host CPU µs per request",
        Better::Lower,
        Source::HostCpuPerOp("/counts/succeeded"),
    ),
];

/// Client connections of `http2_rps` (h2load `-c`).
pub const HTTP2_CONNECTIONS: usize = 16;
/// Concurrent streams per connection of `http2_rps` (h2load `-m`).
pub const HTTP2_STREAMS: usize = 16;

/// `h2load` arguments of `http2_rps` (without `--log-file`): one thread (pinned like every generator),
/// [`HTTP2_CONNECTIONS`] connections × [`HTTP2_STREAMS`] streams, prior knowledge (an `http://` URI), for
/// `duration` (whole seconds as a number, else in ms: h2load takes no fractions).
pub fn h2load_args(duration: Duration) -> Vec<String> {
    let ms = duration.as_millis();
    let duration = if ms.is_multiple_of(1000) {
        (ms / 1000).to_string()
    } else {
        format!("{ms}ms")
    };
    vec![
        format!("http://{VIP}:{VIP_H2C_PORT}/"),
        "--threads".into(),
        "1".into(),
        "--clients".into(),
        HTTP2_CONNECTIONS.to_string(),
        "--max-concurrent-streams".into(),
        HTTP2_STREAMS.to_string(),
        "--duration".into(),
        duration,
    ]
}
