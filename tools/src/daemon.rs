//! `xlb run`: starts the datapath with the local stack on every worker, serves the control API, and stops
//! cleanly on SIGINT/SIGTERM (workers stopped, XDP filters detached, control socket removed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signal_hook::consts::{SIGINT, SIGTERM};
use xlb_stack::xsk::datapath::plan_workers;
use xlb_stack::xsk::filter::{AddrKind, AttachedMode};
use xlb_stack::xsk::Datapath;

use crate::config::Config;
use crate::control::{ControlServer, Handler};
use crate::lb::{vip_interface, L4Shared, PipelineFactory};
use crate::stats;

/// Builds the stats document from the running datapath.
fn stats_document(node: &str, started: Instant, dp: &Datapath, config: &Config, l4: &L4Shared) -> Value {
    let workers: Vec<Value> = dp
        .worker_counters()
        .iter()
        .map(|(name, s)| stats::worker_json(name, s))
        .collect();
    let interfaces: Vec<Value> = dp
        .filter_stats()
        .iter()
        .map(|(name, mode, f)| {
            let mode = match mode {
                AttachedMode::Native => "native",
                AttachedMode::Generic => "generic",
            };
            stats::filter_json(name, mode, f)
        })
        .collect();
    json!({
        "node": node,
        "uptime_s": started.elapsed().as_secs(),
        "totals": stats::totals(&workers),
        "workers": workers,
        "interfaces": interfaces,
        "l4": stats::l4_json(config, l4),
    })
}

/// Runs the appliance until SIGINT or SIGTERM.
pub fn run(config: Config) -> Result<(), String> {
    let started = Instant::now();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    let plans = plan_workers(&config.interfaces).map_err(|e| e.to_string())?;
    let mut factory = PipelineFactory::new(&config, &plans, started);
    let l4 = factory.shared();
    let l4_rates = l4.clone();
    let dp =
        Datapath::start(&config.interfaces, &config.datapath, |plan| factory.make(plan)).map_err(|e| e.to_string())?;
    for (i, listener) in config.listeners.iter().enumerate() {
        dp.add_address(vip_interface(&config, i), listener.vip, AddrKind::Vip)
            .map_err(|e| e.to_string())?;
        tracing::info!(listener = %listener.name, vip = %listener.vip, port = listener.port, protocol = ?listener.protocol, "listener up");
    }
    let dp = Arc::new(dp);

    let node = config.node.name.clone();
    let dp_for_api = dp.clone();
    let config_for_api = config.clone();
    let handler: Arc<Handler> = Arc::new(move |method, path| match (method, path) {
        ("GET", "/v1/status") => (
            200,
            json!({"node": node, "uptime_s": started.elapsed().as_secs(), "healthy": dp_for_api.healthy()}),
        ),
        ("GET", "/v1/stats") => (200, stats_document(&node, started, &dp_for_api, &config_for_api, &l4)),
        (_, "/v1/status" | "/v1/stats") => (405, json!({"error": format!("{method} not allowed on {path}")})),
        _ => (404, json!({"error": format!("no endpoint {path}")})),
    });
    let control = ControlServer::start(&config.node.control_socket, handler)?;
    tracing::info!(node = %config.node.name, socket = %config.node.control_socket.display(), "xlb running");

    let mut last_sample = (Instant::now(), l4_rates.conns_total());
    let outcome = loop {
        if last_sample.0.elapsed() >= Duration::from_secs(1) {
            let totals = l4_rates.sample_rates(&last_sample.1, last_sample.0.elapsed());
            last_sample = (Instant::now(), totals);
        }
        if let Some(sig) = signals.pending().next() {
            tracing::info!(signal = sig, "shutting down");
            break Ok(());
        }
        if !dp.healthy() {
            break Err("a worker thread stopped unexpectedly (see the log above); shutting down".to_string());
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    drop(control);
    let dp = Arc::try_unwrap(dp).map_err(|_| "datapath still shared at shutdown".to_string())?;
    for (worker, frames) in dp.stop() {
        if frames.free + frames.in_fill != frames.total {
            tracing::warn!(worker, ?frames, "UMEM frames unaccounted for at shutdown");
        }
    }
    tracing::info!("stopped; XDP filters detached");
    outcome
}
