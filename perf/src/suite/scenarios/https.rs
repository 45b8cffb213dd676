//! The HTTPS scenarios' metrics and parameters: TLS termination in xlb, NGINX and HAProxy.

use super::super::lab::{TLS_NAME, VIP, VIP_HTTPS_ECDSA_PORT, VIP_L7_PORT};
use super::{metric, Better, MetricDef, Source};

pub(super) const HTTPS_RPS_METRICS: &[MetricDef] = &[
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
        "response_p99_9_us",
        "response p99.9 (µs)",
        Better::Lower,
        Source::Report("/latency_us/response/p99_9", 1.0),
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
        "lb_cpu_us_per_req",
        "LB CPU µs per request",
        Better::Lower,
        Source::LbCpuUsPerOp("/counts/completed"),
    ),
    metric(
        "generator_cores",
        "generator CPU (cores)",
        Better::Lower,
        Source::GeneratorCores,
    ),
];

pub(super) const TLS_HANDSHAKE_METRICS: &[MetricDef] = &[
    metric(
        "handshakes_per_s",
        "handshakes/s",
        Better::Higher,
        Source::Report("/rate", 1.0),
    ),
    metric(
        "handshake_p50_us",
        "handshake p50 (µs)",
        Better::Lower,
        Source::Report("/latency_us/handshake/p50", 1.0),
    ),
    metric(
        "handshake_p99_us",
        "handshake p99 (µs)",
        Better::Lower,
        Source::Report("/latency_us/handshake/p99", 1.0),
    ),
    metric(
        "handshake_p99_9_us",
        "handshake p99.9 (µs)",
        Better::Lower,
        Source::Report("/latency_us/handshake/p99_9", 1.0),
    ),
    metric(
        "response_p99_us",
        "response p99 (µs)",
        Better::Lower,
        Source::Report("/latency_us/response/p99", 1.0),
    ),
    metric(
        "client_full",
        "full handshakes (client)",
        Better::Higher,
        Source::Report("/handshakes/full", 1.0),
    ),
    metric(
        "client_resumed",
        "resumed handshakes (client)",
        Better::Higher,
        Source::Report("/handshakes/resumed", 1.0),
    ),
    metric("resumed_pct", "resumed (%)", Better::Higher, Source::ResumedPct),
    metric(
        "server_full",
        "full handshakes (xlb counter)",
        Better::Higher,
        Source::Optional("/server/tls_full_handshakes", 1.0),
    ),
    metric(
        "server_resumed",
        "resumed handshakes (xlb counter)",
        Better::Higher,
        Source::Optional("/server/tls_resumed_handshakes", 1.0),
    ),
    metric(
        "failed",
        "failed connections",
        Better::Lower,
        Source::Report("/counts/failed", 1.0),
    ),
    metric("non_200", "answers not 200", Better::Lower, Source::Non200),
    metric("lb_cpu_s", "LB CPU seconds", Better::Lower, Source::LbCpu),
    metric(
        "lb_cpu_us_per_hs",
        "LB CPU µs per handshake",
        Better::Lower,
        Source::LbCpuUsPerOp("/counts/completed"),
    ),
    metric(
        "pool_cpu_s",
        "of it: xlb handshake threads",
        Better::Lower,
        Source::Optional("/xlb_threads/handshake_pool_cpu_s", 1.0),
    ),
    metric(
        "worker_cpu_s",
        "of it: xlb worker and rest",
        Better::Lower,
        Source::Optional("/xlb_threads/other_cpu_s", 1.0),
    ),
    metric(
        "ks_cpu_s",
        "of it: Key Server process",
        Better::Lower,
        Source::Optional("/xlb_threads/key_server_cpu_s", 1.0),
    ),
    metric(
        "server_ks_ok",
        "Key Server signatures ok (xlb counter)",
        Better::Higher,
        Source::Optional("/server/key_server_ok", 1.0),
    ),
    metric(
        "generator_cores",
        "generator CPU (cores)",
        Better::Lower,
        Source::GeneratorCores,
    ),
];

pub(super) const TLS_IDLE_METRICS: &[MetricDef] = &[
    metric(
        "bytes_per_conn",
        "RSS growth per idle TLS conn (B)",
        Better::Lower,
        Source::Report("/memory/bytes_per_conn", 1.0),
    ),
    metric(
        "rss_growth_mib",
        "RSS growth (MiB)",
        Better::Lower,
        Source::Report("/memory/rss_growth_bytes", 1.0 / 1_048_576.0),
    ),
    metric(
        "rss_held_mib",
        "RSS while held (MiB)",
        Better::Lower,
        Source::Report("/memory/rss_held_bytes", 1.0 / 1_048_576.0),
    ),
    metric("held", "connections held", Better::Higher, Source::Report("/held", 1.0)),
    metric(
        "failed",
        "failed connections",
        Better::Lower,
        Source::Report("/counts/failed", 1.0),
    ),
];

/// Kept-alive TLS client connections of `https_rps_keepalive`.
pub const HTTPS_RPS_CONNECTIONS: usize = 32;
/// Concurrent client connections (a new one per request) of the handshake scenarios.
pub const TLS_HANDSHAKE_CONNECTIONS: usize = 16;
/// Idle TLS connections held by `tls_idle_memory`, full mode.
pub const TLS_IDLE_FULL: usize = 10_000;
/// The same in quick mode.
pub const TLS_IDLE_QUICK: usize = 2_000;
/// Threads opening the idle connections.
pub const TLS_IDLE_THREADS: usize = 8;
/// Longest the generator may take to open the idle connections (its `--duration`).
pub const TLS_IDLE_OPEN_S: u64 = 120;
/// Longest the generator holds them (the suite stops it as soon as it has measured).
pub const TLS_IDLE_HOLD_S: u64 = 60;

/// Seconds of the Key Server outage scenario's loads.
pub const OUTAGE_SECONDS: u64 = 9;
/// When the Key Server is killed (SIGKILL), seconds after the loads started: the end of phase `before`.
pub const OUTAGE_KILL_S: u64 = 3;
/// When it is started again: the end of phase `down`.
pub const OUTAGE_RESTART_S: u64 = 6;
/// Full-handshake attempts per second of the outage probe (one connection, open loop).
pub const OUTAGE_PROBE_RATE: u32 = 10;
/// Client connections of each of the outage's two closed-loop loads.
pub const OUTAGE_CONNECTIONS: usize = 4;

/// The outage scenario's three `xlb-bench` loads (without `--json`), run side by side, each split into the
/// phases before / down / after: `resumed` (new TLS connections resuming with tickets, closed loop),
/// `keepalive` (plain-HTTP requests on kept-alive connections to the L7 listener, closed loop) and `probe`
/// (one full handshake every 100 ms, open loop, short timeout).
pub fn outage_loads() -> Vec<(&'static str, Vec<String>)> {
    let target = |port: u16| format!("{VIP}:{port}");
    let tail = [
        "--phases".to_owned(),
        format!("{OUTAGE_KILL_S},{OUTAGE_RESTART_S}"),
        "--duration".to_owned(),
        OUTAGE_SECONDS.to_string(),
    ];
    let tls = ["--tls", "--sni", TLS_NAME, "--host", TLS_NAME];
    let conns = OUTAGE_CONNECTIONS.to_string();
    let rate = OUTAGE_PROBE_RATE.to_string();
    let build = |head: Vec<&str>| -> Vec<String> {
        head.into_iter()
            .map(str::to_owned)
            .chain(tail.iter().cloned())
            .collect()
    };
    let resumed_target = target(VIP_HTTPS_ECDSA_PORT);
    let l7_target = target(VIP_L7_PORT);
    let mut resumed = vec![
        "http",
        "--target",
        &resumed_target,
        "--new-conn",
        "--connections",
        &conns,
    ];
    resumed.extend(tls);
    resumed.push("--resume");
    let keepalive = vec!["http", "--target", &l7_target, "--keepalive", "--connections", &conns];
    let mut probe = vec![
        "http",
        "--target",
        &resumed_target,
        "--new-conn",
        "--connections",
        "1",
        "--rate",
        &rate,
        "--timeout",
        "1000",
    ];
    probe.extend(tls);
    vec![
        ("resumed", build(resumed)),
        ("keepalive", build(keepalive)),
        ("probe", build(probe)),
    ]
}

macro_rules! phase_metrics {
    ($load:literal, $what:literal, $unit:literal, $hist:literal) => {
        [
            metric(
                concat!($load, "_before_per_s"),
                concat!($what, "/s before"),
                Better::Higher,
                Source::Report(concat!("/", $load, "/phases/0/rate"), 1.0),
            ),
            metric(
                concat!($load, "_down_per_s"),
                concat!($what, "/s Key Server down"),
                Better::Higher,
                Source::Report(concat!("/", $load, "/phases/1/rate"), 1.0),
            ),
            metric(
                concat!($load, "_after_per_s"),
                concat!($what, "/s after restart"),
                Better::Higher,
                Source::Report(concat!("/", $load, "/phases/2/rate"), 1.0),
            ),
            metric(
                concat!($load, "_before_p50_us"),
                concat!($unit, " p50 before (µs)"),
                Better::Lower,
                Source::Report(concat!("/", $load, "/phases/0/latency_us/", $hist, "/p50"), 1.0),
            ),
            metric(
                concat!($load, "_down_p50_us"),
                concat!($unit, " p50 down (µs)"),
                Better::Lower,
                Source::Report(concat!("/", $load, "/phases/1/latency_us/", $hist, "/p50"), 1.0),
            ),
            metric(
                concat!($load, "_after_p50_us"),
                concat!($unit, " p50 after (µs)"),
                Better::Lower,
                Source::Report(concat!("/", $load, "/phases/2/latency_us/", $hist, "/p50"), 1.0),
            ),
            metric(
                concat!($load, "_before_p99_us"),
                concat!($unit, " p99 before (µs)"),
                Better::Lower,
                Source::Report(concat!("/", $load, "/phases/0/latency_us/", $hist, "/p99"), 1.0),
            ),
            metric(
                concat!($load, "_down_p99_us"),
                concat!($unit, " p99 down (µs)"),
                Better::Lower,
                Source::Report(concat!("/", $load, "/phases/1/latency_us/", $hist, "/p99"), 1.0),
            ),
            metric(
                concat!($load, "_after_p99_us"),
                concat!($unit, " p99 after (µs)"),
                Better::Lower,
                Source::Report(concat!("/", $load, "/phases/2/latency_us/", $hist, "/p99"), 1.0),
            ),
            metric(
                concat!($load, "_failed"),
                concat!($what, " failed (all phases)"),
                Better::Lower,
                Source::Report(concat!("/", $load, "/counts/failed"), 1.0),
            ),
        ]
    };
}

const RESUMED_PHASES: [MetricDef; 10] =
    phase_metrics!("resumed", "resumed handshakes", "resumed handshake", "handshake");
const KEEPALIVE_PHASES: [MetricDef; 10] = phase_metrics!(
    "keepalive",
    "HTTP keep-alive requests",
    "keep-alive response",
    "response"
);
const PROBE_METRICS: [MetricDef; 6] = [
    metric(
        "probe_ok_before",
        "full handshakes ok before",
        Better::Higher,
        Source::Report("/probe/phases/0/completed", 1.0),
    ),
    metric(
        "probe_failed_down",
        "full handshakes failed while down",
        Better::Lower,
        Source::Report("/probe/phases/1/failed", 1.0),
    ),
    metric(
        "probe_ok_down",
        "full handshakes ok while down",
        Better::Lower,
        Source::Report("/probe/phases/1/completed", 1.0),
    ),
    metric(
        "probe_first_ok_after_ms",
        "first full handshake ok after restart (ms)",
        Better::Lower,
        Source::Optional("/probe/phases/2/first_completed_s", 1000.0),
    ),
    metric(
        "probe_failed_after",
        "full handshakes failed after restart",
        Better::Lower,
        Source::Report("/probe/phases/2/failed", 1.0),
    ),
    metric(
        "ks_restart_ms",
        "Key Server restart to socket (ms)",
        Better::Lower,
        Source::Report("/key_server/restart_ms", 1.0),
    ),
];

/// The outage scenario's metrics: each load per phase, then the full-handshake probe.
pub(super) const OUTAGE_METRICS: &[MetricDef] = &{
    let mut out = [PROBE_METRICS[0]; 26];
    let mut i = 0;
    while i < 10 {
        out[i] = RESUMED_PHASES[i];
        out[10 + i] = KEEPALIVE_PHASES[i];
        i += 1;
    }
    let mut j = 0;
    while j < 6 {
        out[20 + j] = PROBE_METRICS[j];
        j += 1;
    }
    out
};
