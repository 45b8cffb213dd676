//! The L4 part of the appliance outside the datapath: builds each worker's pipeline (local stack + L4
//! forwarder, hand-off mesh, neighbour sharing, the health checker on worker 0), and [`L4Runtime`], the
//! control-plane state that applies configuration changes live.
//!
//! A change is validated as a whole config first; then the runtime computes the next [`Layout`] (stable slots,
//! so live connections keep their meaning), a health board carried over from the current one, fresh counter
//! slots and a new health checker, and sends each worker a [`ForwarderUpdate`] over a channel. Workers apply it
//! between batches; nothing on the packet path takes a lock.
//!
//! The Maglev tables of the L4 listeners are built here too, never on a worker: with each update, and after
//! each health change ([`L4Runtime::refresh_maglev`], called by [`MaglevRefresher`] when the board signals
//! one), one snapshot is sent to every worker.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use xlb_l4::config::{GroupConfig, ListenerConfig, PROBE_PORTS, PROBE_PORT_BASE};
use xlb_l4::forward::ha_tap::{HaOutbound, HaTap};
use xlb_l4::forward::handoff::Handoff;
use xlb_l4::forward::{ConnFilter, ConnInfo, ControlMessage, Forwarder, ForwarderConfig, ForwarderUpdate, SyncEvent};
use xlb_l4::health::HealthCounters;
use xlb_l4::health::{HealthChecker, ProbePorts, Target, TargetId};
use xlb_l4::layout::Layout;
use xlb_l4::sched::{MaglevBuilder, MaglevTables};
use xlb_l4::stats::{HealthBoard, L4Counters, SharedHealthCounters, SharedL4Counters};
use xlb_l7::stage::access::AccessLine;
use xlb_l7::stage::counters::{L7Counters, SharedL7Counters};
use xlb_l7::stage::maglev::GroupMaglevBuilder;
use xlb_l7::stage::upstreams::GroupSpec;
use xlb_l7::stage::{L7Message, L7Stage, L7StageConfig, L7Update, StageListener, L7_STAGE};
use xlb_l7::tls::handshake::{HandshakePool, PoolConfig};
use xlb_stack::local::{route, Link, LocalConfig, LocalStack};
use xlb_stack::neighbour::{NeighbourConfig, NeighbourSync};
use xlb_stack::stages::Stages;
use xlb_stack::wake::Wake;
use xlb_stack::wire::EthernetAddress;
use xlb_stack::xsk::filter::AddrKind;
use xlb_stack::xsk::{Datapath, WorkerPlan};

use crate::config::Config;
use crate::l7::TlsHandle;
use crate::placement::{floating_ips, ha_interface, ha_source, vip_interface, HaLink};

/// Frames each worker may have in flight to other workers.
const HANDOFF_DEPTH: usize = 1024;
/// Configuration updates and HA messages that may queue for a worker.
const UPDATE_DEPTH: usize = 256;
/// Session-sync events that may queue between the workers and the sync driver.
const SYNC_EVENTS_DEPTH: usize = 65_536;
/// Depth of each HA channel (VRRP in, sync in, frames out): HA is a few packets per second, bursts on resync.
const HA_DEPTH: usize = 4096;

/// The stages of every worker: L4 (the default stage) and L7 (the `http` listeners).
pub type LbStages = Stages<Forwarder, L7Stage>;

/// The pipeline every worker runs.
pub type LbPipeline = LocalStack<LbStages>;

/// The VIP interface of every listener slot of `layout`.
fn vip_ifaces(config: &Config, layout: &Layout) -> Vec<usize> {
    layout
        .listeners
        .iter()
        .map(|l| vip_interface(config, &l.config))
        .collect()
}

/// Links of all interfaces (for routing decisions made outside a worker; MACs are not needed there).
fn links(config: &Config) -> Vec<Link> {
    config
        .interfaces
        .iter()
        .map(|i| Link {
            mac: EthernetAddress([0; 6]),
            addresses: i.addresses.clone(),
            gateway: i.gateway,
        })
        .collect()
}

/// A health checker for the layout's targets, publishing its counters to `shared`. Target ids carry the target's
/// index on the board in `group`.
fn health_checker(
    config: &Config,
    layout: &Layout,
    now: Instant,
    shared: &Arc<SharedHealthCounters>,
) -> Option<HealthChecker> {
    let links = links(config);
    let targets: Vec<Target> = layout
        .targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let source = route(&links, *t.addr.ip())?.source;
            Some(Target {
                id: TargetId { group: i, server: 0 },
                server: t.addr,
                source,
                check: t.check.clone(),
            })
        })
        .collect();
    (!targets.is_empty()).then(|| {
        let mut checker = HealthChecker::new(
            now,
            targets,
            ProbePorts {
                base: PROBE_PORT_BASE,
                count: PROBE_PORTS,
                stride: 1,
            },
        );
        checker.share_counters(shared.clone());
        checker
    })
}

/// Builds the worker pipelines (call [`PipelineFactory::make`] once per plan) and the runtime that controls them.
pub struct PipelineFactory {
    config: Config,
    layout: Arc<Layout>,
    handoffs: Vec<Option<Handoff>>,
    neighbour_sync: Vec<Option<NeighbourSync>>,
    updates: Vec<Option<Receiver<ControlMessage>>>,
    health: Option<HealthChecker>,
    board: Arc<HealthBoard>,
    /// Signalled by the health board after each change (taken once, by the [`MaglevRefresher`]).
    board_changes: Option<Receiver<()>>,
    maglev: Arc<MaglevTables>,
    counters: Vec<Arc<SharedL4Counters>>,
    sync_events: (Sender<SyncEvent>, Option<Receiver<SyncEvent>>),
    /// HA traffic: the workers' tap (cloned into each), the outbound end for the transmitting worker, and the
    /// HA threads' ends.
    ha_tap: Option<HaTap>,
    ha_out: Option<Receiver<HaOutbound>>,
    ha_link: Option<HaLink>,
    /// The L7 stages' hand-off mesh, live-change channels and counters, per worker.
    l7_handoffs: Vec<Option<Handoff>>,
    l7_updates: Vec<Option<Receiver<L7Message>>>,
    /// The Maglev tables of the L7 `mh` groups (built by the runtime, shared by every worker).
    l7_maglev: Arc<MaglevTables>,
    l7_counters: Vec<Arc<SharedL7Counters>>,
    /// The access logger's queue (`[l7] access_log`).
    access_log: Option<Sender<AccessLine>>,
    /// The L7 listeners, built once for every worker (TLS configs and ticket keys shared).
    l7_listeners: Vec<StageListener>,
    /// The groups as L7 sees them, built once for every worker (TLS towards servers and its sessions shared).
    l7_groups: Vec<GroupSpec>,
    /// The TLS handshake pool (only with `https` listeners).
    handshake_pool: Option<HandshakePool>,
}

impl PipelineFactory {
    /// Prepares pipelines for the planned workers; returns the factory and the control-plane runtime.
    pub fn new(config: &Config, plans: &[WorkerPlan], now: Instant) -> (PipelineFactory, L4Runtime) {
        let workers = plans.len();
        let layout = Arc::new(Layout::new(
            &config.listeners,
            &config.groups,
            config.l4.on_server_removed,
        ));
        let (handoffs, neighbour_sync) = if workers > 1 {
            let port_ifaces = plans
                .iter()
                .map(|p| p.ports.iter().map(|(iface, _)| *iface).collect())
                .collect();
            (
                Handoff::mesh(workers, HANDOFF_DEPTH).into_iter().map(Some).collect(),
                NeighbourSync::mesh(port_ifaces).into_iter().map(Some).collect(),
            )
        } else {
            (vec![None], vec![None])
        };
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| bounded(UPDATE_DEPTH)).unzip();
        let (l7_senders, l7_receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| bounded(UPDATE_DEPTH)).unzip();
        let l7_counters: Vec<_> = (0..workers).map(|_| Arc::new(SharedL7Counters::default())).collect();
        let l7_handoffs: Vec<Option<Handoff>> = if workers > 1 {
            Handoff::mesh(workers, HANDOFF_DEPTH).into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        let (changes_tx, changes_rx) = bounded(1);
        let board = Arc::new(HealthBoard::new(layout.targets.len()).watched_by(changes_tx));
        let maglev = MaglevBuilder::new(layout.clone(), board.clone());
        let counters: Vec<_> = (0..workers)
            .map(|_| Arc::new(SharedL4Counters::new(&layout.shape())))
            .collect();
        let health_counters = Arc::new(SharedHealthCounters::new());
        let (l7_listeners, tls_handles) = crate::l7::listeners(config);
        let l7_groups = crate::l7::groups(config, &layout).unwrap_or_else(|e| {
            // The config was validated from the same files a moment ago.
            tracing::error!("{e}: L7 listeners answer 503 until a reload succeeds");
            Vec::new()
        });
        let l7_maglev = GroupMaglevBuilder::new(l7_groups.clone(), board.clone());
        let runtime = L4Runtime {
            tls: tls_handles,
            key_server_retired: Default::default(),
            config: config.clone(),
            layout: layout.clone(),
            board: board.clone(),
            maglev,
            l7_maglev,
            counters: counters.clone(),
            health_counters: health_counters.clone(),
            updates: senders,
            l7_updates: l7_senders,
            l7_counters: l7_counters.clone(),
            rates: Vec::new(),
            last_totals: (now, Vec::new()),
        };
        let wake = Wake::new().map(Arc::new);
        let handshake_pool = if l7_listeners.iter().any(|l| l.tls.is_some()) || crate::l7::any_group_tls(config) {
            let pool = PoolConfig {
                // With keys on a Key Server, threads that wait for its signatures come on top.
                full_threads: config.l7.tls_handshake_threads
                    + config.l7.key_server.as_ref().map_or(0, |k| k.waiting_handshakes),
                ..PoolConfig::default()
            };
            match HandshakePool::start(pool) {
                Ok(pool) => Some(pool),
                Err(e) => {
                    tracing::error!("TLS handshake pool not started: {e}: https listeners refuse handshakes");
                    None
                }
            }
        } else {
            None
        };
        let (ha_tap, ha_out, ha_link) = match (&config.ha, ha_interface(config), ha_source(config), wake) {
            (Some(ha), Ok(iface), Ok(source), Ok(wake)) => {
                let ((vrrp_tx, vrrp_rx), (sync_tx, sync_rx)) = (bounded(HA_DEPTH), bounded(HA_DEPTH));
                let (out_tx, out_rx) = bounded(HA_DEPTH);
                let tap = HaTap {
                    iface,
                    source,
                    sync: ha.sync_group,
                    vrrp: vrrp_tx,
                    sync_in: sync_tx,
                    outbound: None,
                    wake: wake.clone(),
                };
                let link = HaLink {
                    vrrp: vrrp_rx,
                    sync: sync_rx,
                    out: out_tx,
                    wake,
                };
                (Some(tap), Some(out_rx), Some(link))
            }
            _ => (None, None, None),
        };
        let factory = PipelineFactory {
            config: config.clone(),
            health: health_checker(config, &layout, now, &health_counters),
            layout,
            handoffs,
            neighbour_sync,
            updates: receivers.into_iter().map(Some).collect(),
            board,
            board_changes: Some(changes_rx),
            maglev: runtime.maglev.current().clone(),
            counters,
            sync_events: {
                let (tx, rx) = bounded(SYNC_EVENTS_DEPTH);
                (tx, Some(rx))
            },
            ha_tap,
            ha_out,
            ha_link,
            l7_handoffs,
            l7_updates: l7_receivers.into_iter().map(Some).collect(),
            l7_maglev: runtime.l7_maglev.current().clone(),
            l7_counters,
            l7_listeners: l7_listeners.clone(),
            l7_groups,
            handshake_pool,
            access_log: config.l7.access_log.as_deref().and_then(|path| {
                match crate::access_log::start(std::path::Path::new(path)) {
                    Ok(tx) => Some(tx),
                    Err(e) => {
                        tracing::error!("l7.access_log: {e}: no access log");
                        None
                    }
                }
            }),
        };
        (factory, runtime)
    }

    /// The health board's change signal (taken once, by the [`MaglevRefresher`]).
    pub fn take_board_changes(&mut self) -> Option<Receiver<()>> {
        self.board_changes.take()
    }

    /// Session-sync events of every worker (HA only; taken once by the sync driver).
    pub fn take_sync_events(&mut self) -> Option<Receiver<SyncEvent>> {
        self.sync_events.1.take()
    }

    /// The HA threads' ends of the workers' HA channels (HA only; taken once).
    pub fn take_ha_link(&mut self) -> Option<HaLink> {
        self.ha_link.take()
    }

    /// The pipeline of the worker planned as `plan`.
    pub fn make(&mut self, plan: &WorkerPlan) -> LbPipeline {
        let config = &self.config;
        let floating = floating_ips(config);
        let mut local_ips: Vec<Ipv4Addr> = config
            .interfaces
            .iter()
            .flat_map(|i| i.addresses.iter().map(|n| n.addr))
            .collect();
        local_ips.extend(floating.iter().map(|(_, ip)| *ip));
        let forwarder_config = ForwarderConfig {
            layout: self.layout.clone(),
            vip_ifaces: vip_ifaces(config, &self.layout),
            l4: config.l4.clone(),
            local_ips,
            worker: plan.index,
            workers: plan.workers,
            port_ifaces: plan.ports.iter().map(|(iface, _)| *iface).collect(),
            maglev: self.maglev.clone(),
        };
        // One pool of local ports per worker, for FULLNAT flows and L7 upstream connections alike.
        let ports = forwarder_config.local_ports();
        let mut forwarder = Forwarder::new(
            forwarder_config,
            self.handoffs.get_mut(plan.index).and_then(Option::take),
            if plan.index == 0 { self.health.take() } else { None },
            self.board.clone(),
            self.counters[plan.index].clone(),
            self.updates.get_mut(plan.index).and_then(Option::take),
            Instant::now(),
        );
        if let Some(ha) = &config.ha {
            // An HA node starts as a backup; the election makes it active.
            forwarder.set_active(false);
            forwarder.set_floating_ips(floating);
            forwarder.enable_sync(self.sync_events.0.clone(), ha.sync_policy());
        }
        if let Some(tap) = &self.ha_tap {
            // Every worker hands on what it receives; the first with a port on the HA interface transmits.
            let mut tap = tap.clone();
            if plan.ports.iter().any(|(iface, _)| *iface == tap.iface) {
                tap.outbound = self.ha_out.take();
            }
            forwarder.set_ha_tap(tap);
        }
        let neighbours = NeighbourConfig {
            capacity: config.datapath.neighbours,
            ..Default::default()
        };
        let mut l7 = L7Stage::new(
            L7StageConfig {
                limits: config.l7.clone(),
                listeners: self.l7_listeners.clone(),
                groups: self.l7_groups.clone(),
                maglev: self.l7_maglev.clone(),
                board: self.board.clone(),
                worker: plan.index,
                workers: plan.workers,
                port_ifaces: plan.ports.iter().map(|(iface, _)| *iface).collect(),
                access_log: self.access_log.clone(),
                handshakes: self.handshake_pool.as_ref().map(|pool| {
                    // The worker sleeps on one descriptor: the HA tap's if there is one, else the stage's own.
                    let wake = match &self.ha_tap {
                        Some(tap) => Some(tap.wake.clone()),
                        None => Wake::new().map(Arc::new).ok(),
                    };
                    pool.client(wake)
                }),
            },
            self.l7_counters[plan.index].clone(),
            self.l7_handoffs.get_mut(plan.index).and_then(Option::take),
            Instant::now(),
        );
        if let Some(updates) = self.l7_updates.get_mut(plan.index).and_then(Option::take) {
            l7.set_updates(updates);
        }
        let mut stack = LocalStack::with_ports(
            LocalConfig {
                links: plan.links.clone(),
                neighbours,
                icmp_rate: config.datapath.icmp_rate,
            },
            ports,
            Stages::new(forwarder, l7, L7_STAGE),
        );
        if let Some(sync) = self.neighbour_sync.get_mut(plan.index).and_then(Option::take) {
            stack.set_neighbour_sync(sync);
        }
        stack.set_link_names(
            plan.ports
                .iter()
                .map(|(iface, _)| {
                    config
                        .interfaces
                        .get(*iface)
                        .map_or_else(String::new, |i| i.name.clone())
                })
                .collect(),
        );
        stack
    }
}

/// The control plane's view and handle of the running L4 configuration.
pub struct L4Runtime {
    config: Config,
    layout: Arc<Layout>,
    board: Arc<HealthBoard>,
    /// Builds the Maglev tables of the L4 listeners (off the workers).
    maglev: MaglevBuilder,
    counters: Vec<Arc<SharedL4Counters>>,
    /// The health checker's counters (whichever checker runs, across reloads).
    health_counters: Arc<SharedHealthCounters>,
    updates: Vec<Sender<ControlMessage>>,
    l7_updates: Vec<Sender<L7Message>>,
    /// Builds the Maglev tables of the L7 groups that use `mh` (off the workers).
    l7_maglev: GroupMaglevBuilder,
    l7_counters: Vec<Arc<SharedL7Counters>>,
    rates: Vec<u64>,
    last_totals: (Instant, Vec<u64>),
    /// The certificates of the `https` listeners.
    tls: Vec<TlsHandle>,
    /// Counters of Key Server clients replaced by endpoint changes.
    key_server_retired: xlb_keyserver::client::ClientCounters,
}

impl L4Runtime {
    /// The running config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The node's Key Server client, if a certificate's key is on one.
    pub fn key_server(&self) -> Option<&xlb_keyserver::client::KeyServerClient> {
        self.tls.iter().find_map(|h| h.key_server.as_ref())
    }

    /// The Key Server counts (`key_server_*`), monotonic across endpoint changes; none without a Key Server.
    pub fn key_server_counts(&self) -> Vec<(String, u64)> {
        match self.key_server() {
            None if self.key_server_retired == Default::default() => Vec::new(),
            client => crate::key_server::counts(client, &self.key_server_retired),
        }
    }

    /// The certificates of the `https` listeners.
    pub fn certs(&self) -> Vec<xlb_api::routes::ListenerCerts> {
        self.tls
            .iter()
            .map(|h| xlb_api::routes::ListenerCerts {
                listener: h.listener.clone(),
                certs: h
                    .certs
                    .list()
                    .into_iter()
                    .map(|(source, names)| xlb_api::routes::CertInfo { source, names })
                    .collect(),
            })
            .collect()
    }

    /// Re-reads every `https` listener's certificate and key files (all or nothing); new handshakes use them,
    /// established connections keep theirs.
    pub fn reload_certs(&self) -> Result<String, String> {
        let loaded = self.tls.iter().map(|h| h.load()).collect::<Result<Vec<_>, _>>()?;
        let mut n = 0;
        for (h, certs) in self.tls.iter().zip(loaded) {
            n += certs.len();
            h.certs.replace(certs);
        }
        Ok(format!(
            "{n} certificate(s) of {} https listener(s) re-read",
            self.tls.len()
        ))
    }

    /// The current slots.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The health board of the running layout.
    pub fn board(&self) -> &Arc<HealthBoard> {
        &self.board
    }

    /// Whether a health target is up.
    pub fn target_up(&self, target: usize) -> bool {
        self.board.is_up(target)
    }

    /// The health checker's counters (probes, failures, replies dropped for a bad checksum, ...).
    pub fn health_counters(&self) -> HealthCounters {
        self.health_counters.snapshot()
    }

    /// L4 counters summed over workers, and each worker's.
    pub fn counters(&self) -> (L4Counters, Vec<L4Counters>) {
        let per_worker: Vec<L4Counters> = self.counters.iter().map(|c| c.snapshot()).collect();
        let mut total = L4Counters::new(&self.layout.shape());
        for c in &per_worker {
            total.add(c);
        }
        (total, per_worker)
    }

    /// L7 counters summed over workers, and whether any `http` listener is configured.
    pub fn l7_counters(&self) -> (L7Counters, bool) {
        let mut total = L7Counters::default();
        for c in &self.l7_counters {
            total.add(&c.snapshot());
        }
        (total, crate::l7::http_listeners(&self.config).next().is_some())
    }

    /// New connections per second per listener slot over the last sampling period.
    pub fn conns_per_sec(&self, slot: usize) -> u64 {
        self.rates.get(slot).copied().unwrap_or(0)
    }

    /// Samples connection totals for the per-second rates (call about once a second).
    pub fn sample_rates(&mut self, now: Instant) {
        let totals: Vec<u64> = self.counters().0.listeners.iter().map(|l| l.conns_total).collect();
        let (then, last) = &self.last_totals;
        let secs = now.saturating_duration_since(*then).as_secs_f64().max(1e-3);
        self.rates = totals
            .iter()
            .enumerate()
            .map(|(i, t)| (t.saturating_sub(last.get(i).copied().unwrap_or(0)) as f64 / secs).round() as u64)
            .collect();
        self.last_totals = (now, totals);
    }

    /// Validates `new` and applies its listeners and groups to the running workers and XDP filters. Changes to
    /// interfaces, the datapath, the node or the connection table are refused (they need a restart). Nothing
    /// is applied if anything is invalid.
    pub fn apply(&mut self, new: Config, dp: &Datapath) -> Result<String, String> {
        new.validate()?;
        if let Some(section) = self.config.restart_needed(&new) {
            return Err(format!(
                "{section}: changes to this section need a restart; nothing was applied"
            ));
        }
        let tls_tables =
            |c: &Config| -> Vec<Option<toml::Table>> { c.listeners.iter().map(|l| l.tls.clone()).collect() };
        // Certificates first: a file that does not load refuses the whole change.
        let key_server_changed = self.config.l7.key_server != new.l7.key_server;
        let old_key_server = self.key_server().cloned().filter(|_| key_server_changed);
        let certs = if tls_tables(&self.config) != tls_tables(&new) || key_server_changed {
            let n = crate::l7::replace_certs(&mut self.tls, &self.config, &new)?;
            if let Some(old) = old_key_server {
                crate::key_server::retire(&mut self.key_server_retired, &old);
            }
            n
        } else {
            0
        };
        let mut summary = summarize(&self.config, &new);
        if certs > 0 {
            summary.push_str(&format!("; certificates of {certs} https listener(s) re-read"));
        }
        let layout = Arc::new(self.layout.next(&new.listeners, &new.groups, new.l4.on_server_removed));
        // Built before anything changes: a group's TLS file that does not load refuses the change.
        let l7_groups = crate::l7::groups(&new, &layout)?;
        let old = &self.layout;
        let board = Arc::new(HealthBoard::carried_over(layout.targets.len(), &self.board, |i| {
            let t = &layout.targets[i];
            old.targets
                .iter()
                .position(|o| o.group == t.group && o.addr == t.addr && o.check == t.check)
        }));
        let counters: Vec<_> = self
            .counters
            .iter()
            .map(|_| Arc::new(SharedL4Counters::new(&layout.shape())))
            .collect();
        // Counters restart from what workers had: seed the new slots with the last published values.
        for (new_c, old_c) in counters.iter().zip(&self.counters) {
            let mut c = L4Counters::new(&layout.shape());
            c.add(&old_c.snapshot());
            new_c.publish(&c);
        }
        let mut health = health_checker(&new, &layout, Instant::now(), &self.health_counters);
        if let Some(h) = &mut health {
            for i in 0..layout.targets.len() {
                h.assume(TargetId { group: i, server: 0 }, board.is_up(i));
            }
        }
        // VIPs: announce new ones before workers use them; withdraw removed ones after.
        let vips = |c: &Config| -> Vec<(usize, Ipv4Addr)> {
            let mut v: Vec<(usize, Ipv4Addr)> = c.listeners.iter().map(|l| (vip_interface(c, l), l.vip)).collect();
            v.sort();
            v.dedup();
            v
        };
        let (before, after) = (vips(&self.config), vips(&new));
        for &(iface, vip) in after.iter().filter(|v| !before.contains(v)) {
            dp.add_address(iface, vip, AddrKind::Vip).map_err(|e| e.to_string())?;
        }
        // One set of Maglev tables for every worker, built here (the unchanged ones are kept).
        let maglev = self.maglev.rebind(layout.clone(), board.clone());
        let (applied_tx, applied_rx) = bounded(self.updates.len());
        for (w, tx) in self.updates.iter().enumerate() {
            let update = ForwarderUpdate {
                layout: layout.clone(),
                vip_ifaces: vip_ifaces(&new, &layout),
                board: board.clone(),
                maglev: maglev.clone(),
                counters: counters[w].clone(),
                health: if w == 0 { health.take() } else { None },
                applied: Some(applied_tx.clone()),
            };
            tx.send_timeout(ControlMessage::Update(Box::new(update)), Duration::from_secs(2))
                .map_err(|_| format!("worker {w} does not take updates"))?;
        }
        // Return only once every worker runs the new configuration, so callers can rely on it.
        for _ in 0..self.updates.len() {
            applied_rx
                .recv_timeout(Duration::from_secs(2))
                .map_err(|_| "a worker did not apply the update within 2 s".to_string())?;
        }
        // L7 follows the groups' servers and the new board (applied between batches, like L4's update).
        let l7_maglev = self.l7_maglev.rebind(l7_groups.clone(), board.clone());
        for tx in &self.l7_updates {
            let update = L7Update {
                groups: l7_groups.clone(),
                board: board.clone(),
                maglev: l7_maglev.clone(),
            };
            tx.send_timeout(L7Message::Update(update), Duration::from_secs(2))
                .map_err(|_| "a worker's L7 stage does not take updates".to_string())?;
        }
        for &(iface, vip) in before.iter().filter(|v| !after.contains(v)) {
            dp.remove_address(iface, vip).map_err(|e| e.to_string())?;
        }
        self.config = new;
        self.layout = layout;
        self.board = board;
        self.counters = counters;
        tracing::info!(change = %summary, "configuration applied");
        Ok(summary)
    }

    /// After the health board signalled a change: builds the Maglev tables that changed (L4 listeners' and L7
    /// `mh` groups') and sends each new snapshot to every worker (they swap it in between batches). Returns
    /// whether one was sent.
    pub fn refresh_maglev(&mut self) -> bool {
        let l4 = self.maglev.refresh();
        if let Some(tables) = &l4 {
            for (w, tx) in self.updates.iter().enumerate() {
                if tx
                    .send_timeout(ControlMessage::Maglev(tables.clone()), Duration::from_secs(2))
                    .is_err()
                {
                    tracing::error!(worker = w, "worker does not take new Maglev tables");
                }
            }
        }
        let l7 = self.l7_maglev.refresh();
        if let Some(tables) = &l7 {
            for (w, tx) in self.l7_updates.iter().enumerate() {
                if tx
                    .send_timeout(L7Message::Maglev(tables.clone()), Duration::from_secs(2))
                    .is_err()
                {
                    tracing::error!(worker = w, "worker's L7 stage does not take new Maglev tables");
                }
            }
        }
        l4.is_some() || l7.is_some()
    }

    /// The Maglev tables of the L7 `mh` groups the workers were last sent.
    pub fn l7_maglev_tables(&self) -> &Arc<MaglevTables> {
        self.l7_maglev.current()
    }

    /// The Maglev tables the workers were last sent.
    pub fn maglev_tables(&self) -> &Arc<MaglevTables> {
        self.maglev.current()
    }

    /// The channels to every worker (for the HA driver: activation, imports, exports).
    pub fn worker_channels(&self) -> Vec<Sender<ControlMessage>> {
        self.updates.clone()
    }

    /// Up to `limit` connection entries matching `filter`, from every worker.
    pub fn conns(&self, filter: &ConnFilter, limit: usize) -> Result<Vec<ConnInfo>, String> {
        let (reply_tx, reply_rx) = bounded(self.updates.len());
        for tx in &self.updates {
            let message = ControlMessage::DumpConns {
                filter: filter.clone(),
                limit,
                reply: reply_tx.clone(),
            };
            tx.send_timeout(message, Duration::from_secs(2))
                .map_err(|_| "a worker does not answer".to_string())?;
        }
        let mut all = Vec::new();
        for _ in 0..self.updates.len() {
            all.extend(
                reply_rx
                    .recv_timeout(Duration::from_secs(2))
                    .map_err(|_| "a worker did not answer in 2 s")?,
            );
        }
        all.truncate(limit);
        Ok(all)
    }

    /// The running config with `edit` applied (for API changes), not yet validated or applied.
    pub fn edited(
        &self,
        edit: impl FnOnce(&mut Vec<ListenerConfig>, &mut Vec<GroupConfig>) -> Result<(), String>,
    ) -> Result<Config, String> {
        let mut c = self.config.clone();
        edit(&mut c.listeners, &mut c.groups)?;
        Ok(c)
    }
}

/// A one-line description of what changes between two configs.
fn summarize(old: &Config, new: &Config) -> String {
    let mut parts = Vec::new();
    for l in &new.listeners {
        match old.listeners.iter().find(|o| o.name == l.name) {
            None => parts.push(format!("listener {} added", l.name)),
            Some(o) if o != l => parts.push(format!("listener {} changed", l.name)),
            _ => {}
        }
    }
    for o in old
        .listeners
        .iter()
        .filter(|o| !new.listeners.iter().any(|l| l.name == o.name))
    {
        parts.push(format!("listener {} removed", o.name));
    }
    for g in &new.groups {
        let old_g = old.groups.iter().find(|o| o.name == g.name);
        for s in &g.servers {
            match old_g.and_then(|o| o.servers.iter().find(|x| x.addr == s.addr)) {
                None => parts.push(format!("server {} added to {}", s.addr, g.name)),
                Some(x) if x.weight != s.weight => parts.push(format!(
                    "server {} of {} weight {} -> {}",
                    s.addr, g.name, x.weight, s.weight
                )),
                _ => {}
            }
        }
        for x in old_g.map(|o| o.servers.as_slice()).unwrap_or_default() {
            if !g.servers.iter().any(|s| s.addr == x.addr) {
                parts.push(format!("server {} removed from {}", x.addr, g.name));
            }
        }
        if old_g.is_some_and(|o| o.health_check != g.health_check) {
            parts.push(format!("health check of {} changed", g.name));
        }
    }
    if old.l4.on_server_removed != new.l4.on_server_removed {
        parts.push("on_server_removed changed".into());
    }
    if parts.is_empty() {
        "no change".into()
    } else {
        parts.join("; ")
    }
}
