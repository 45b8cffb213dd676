//! `xlb run`: starts the datapath with the L4 pipeline on every worker, serves the control API (and metrics),
//! applies the config file again on SIGHUP, hands HA mastership over on SIGUSR2 (drain), and stops cleanly on SIGINT/SIGTERM (workers stopped, XDP filters
//! detached, control socket removed).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use xlb_stack::xsk::datapath::plan_workers;
use xlb_stack::xsk::filter::AddrKind;
use xlb_stack::xsk::Datapath;

use crate::api::Api;
use crate::config::Config;
use crate::control::{ControlServer, Handler};
use crate::ha;
use crate::instance::{self, DatapathWatch};
use crate::lb::PipelineFactory;
use crate::maglev::MaglevRefresher;
use crate::metrics;
use crate::placement::{floating_ips, ha_interface, vip_interface};

/// Runs the appliance until SIGINT or SIGTERM. `config_path` is re-read on SIGHUP and `xlbctl reload`.
pub fn run(config: Config, config_path: PathBuf) -> Result<(), String> {
    let started = Instant::now();
    // Before anything is touched: one xlb per control socket and per interface (dropped last, after the filters
    // are detached).
    let instance_lock = instance::lock(&config)?;
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    let plans = plan_workers(&config.interfaces).map_err(|e| e.to_string())?;
    let (mut factory, runtime) = PipelineFactory::new(&config, &plans, started);
    // The big tables are reserved before any interface is touched: running out of memory here leaves nothing
    // attached.
    let mut pipelines = plans
        .iter()
        .map(|plan| factory.make(plan))
        .collect::<Vec<_>>()
        .into_iter();
    let dp = Datapath::start(&config.interfaces, &config.datapath, |_| {
        pipelines.next().expect("one pipeline per planned worker")
    })
    .map_err(|e| e.to_string())?;
    let watch = Arc::new(DatapathWatch::new(&dp));
    for listener in &config.listeners {
        dp.add_address(vip_interface(&config, listener), listener.vip, AddrKind::Vip)
            .map_err(|e| e.to_string())?;
        tracing::info!(listener = %listener.name, vip = %listener.vip, port = listener.port, protocol = ?listener.protocol, "listener up");
    }
    for (iface, ip) in floating_ips(&config) {
        dp.add_address(iface, ip, AddrKind::Local).map_err(|e| e.to_string())?;
    }
    let ha_node = match (&config.ha, factory.take_sync_events(), factory.take_ha_link()) {
        (Some(ha), Some(events), Some(link)) => {
            // VRRP and sync frames go to the datapath, not the kernel.
            let iface = ha_interface(&config)?;
            for group in [xlb_ha::vrrp::VRRP_MULTICAST, *ha.sync_group.ip()] {
                dp.add_address(iface, group, AddrKind::Group)
                    .map_err(|e| e.to_string())?;
            }
            Some(ha::start(&config, runtime.worker_channels(), events, link)?)
        }
        _ => None,
    };
    let mut api = Api::new(runtime, Arc::new(dp), started, config_path);
    if let Some(node) = &ha_node {
        api.set_ha(node.status(), node.drain_handle());
    }
    let api = Arc::new(api);
    // Maglev tables are rebuilt here, off the workers, after each health change.
    let maglev = match factory.take_board_changes() {
        Some(changes) => Some(MaglevRefresher::start(api.clone(), changes)?),
        None => None,
    };

    let for_control = api.clone();
    let watched = watch.clone();
    let handler: Arc<Handler> = Arc::new(move |method, path, body| {
        let mut reply = for_control.handle(method, path, body);
        watched.annotate(method, path, &mut reply.1);
        reply
    });
    let control_tcp = match config.node.api_address {
        Some(addr) => {
            let token = crate::config::api_token(&config.node)?;
            let server = ControlServer::start_tcp(addr, token, handler.clone())?;
            tracing::info!(%addr, "control API on http://{addr}/v1/ (token required)");
            Some(server)
        }
        None => None,
    };
    // The servers hold the only references to the API besides `api` itself, so it can be unwrapped at shutdown.
    let control = ControlServer::start(&config.node.control_socket, handler)?;
    let metrics_server = match config.node.metrics_address {
        Some(addr) => {
            let for_metrics = api.clone();
            let watched = watch.clone();
            let server = metrics::start(
                addr,
                Arc::new(move || {
                    // The kernel's view of each interface (its XDP mode as attached now) over the counters'.
                    let doc = for_metrics.stats();
                    let mut value = serde_json::to_value(&doc).unwrap_or_default();
                    watched.annotate_stats(&mut value);
                    serde_json::from_value(value).unwrap_or(doc)
                }),
            )?;
            tracing::info!(%addr, "metrics on http://{addr}/metrics");
            Some(server)
        }
        None => None,
    };
    tracing::info!(node = %config.node.name, socket = %config.node.control_socket.display(), "xlb running");

    let mut last_sample = Instant::now();
    let mut drained_for_loss = false;
    let outcome = loop {
        match signals.pending().next() {
            Some(SIGHUP) => match api.reload() {
                Ok(summary) => tracing::info!(%summary, "reloaded on SIGHUP"),
                Err(e) => tracing::error!(error = %e, "reload on SIGHUP refused; running config unchanged"),
            },
            Some(SIGUSR2) => match &ha_node {
                Some(node) => node.drain(),
                None => tracing::warn!("SIGUSR2 (drain) ignored: no [ha] section"),
            },
            Some(sig) => {
                tracing::info!(signal = sig, "shutting down");
                break Ok(());
            }
            None => {}
        }
        if !api.datapath().healthy() {
            break Err("a worker thread stopped unexpectedly (see the log above); shutting down".to_string());
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            // Still attached, sockets still open? (Logged once per change, reported by status and stats.) A node
            // that lost its datapath still sends adverts (TX needs no XDP program): hand mastership over.
            if !watch.poll(api.datapath()) && !drained_for_loss {
                if let Some(node) = &ha_node {
                    tracing::error!("datapath lost: handing HA mastership over (drain); restart xlb");
                    node.drain();
                }
                drained_for_loss = true;
            }
            api.sample_rates();
            last_sample = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    // Hand mastership over first (priority-0 advert), while the datapath still forwards.
    drop(ha_node);
    drop(maglev);
    drop(metrics_server);
    drop(control_tcp);
    drop(control);
    let dp = Arc::try_unwrap(api)
        .ok()
        .and_then(|api| Arc::try_unwrap(api.into_datapath()).ok())
        .ok_or_else(|| "datapath still shared at shutdown".to_string())?;
    for (worker, frames) in dp.stop() {
        if frames.free + frames.in_fill != frames.total {
            tracing::warn!(worker, ?frames, "UMEM frames unaccounted for at shutdown");
        }
    }
    tracing::info!("stopped; XDP filters detached");
    drop(instance_lock);
    outcome
}
