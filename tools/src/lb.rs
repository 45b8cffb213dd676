//! Builds each worker's pipeline from the config: the local stack with the L4 forwarder on top, the hand-off
//! mesh between workers, the health checker (on worker 0) and the shared counters the control API reads.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xlb_l4::config::{PROBE_PORTS, PROBE_PORT_BASE};
use xlb_l4::forward::handoff::Handoff;
use xlb_l4::forward::{Forwarder, ForwarderConfig};
use xlb_l4::health::{HealthChecker, ProbePorts, Target, TargetId};
use xlb_l4::stats::{HealthBoard, SharedL4Counters};
use xlb_stack::local::{route, Link, LocalConfig, LocalStack};
use xlb_stack::neighbour::{NeighbourConfig, NeighbourSync};
use xlb_stack::wire::EthernetAddress;
use xlb_stack::xsk::WorkerPlan;

use crate::config::Config;

/// Frames each worker may have in flight to other workers.
const HANDOFF_DEPTH: usize = 1024;

/// The pipeline every worker runs.
pub type LbPipeline = LocalStack<Forwarder>;

/// What the pipelines share with the control thread.
pub struct L4Shared {
    /// Health of every server.
    pub board: Arc<HealthBoard>,
    /// Each worker's published counters, by worker index.
    pub counters: Vec<Arc<SharedL4Counters>>,
    /// New connections per second per listener, sampled by the main thread ([`L4Shared::sample_rates`]).
    pub conns_per_sec: Vec<AtomicU64>,
}

impl L4Shared {
    /// Connections created so far per listener, summed over workers.
    pub fn conns_total(&self) -> Vec<u64> {
        let mut totals = Vec::new();
        for worker in &self.counters {
            let c = worker.snapshot();
            totals.resize(c.listeners.len(), 0);
            for (t, l) in totals.iter_mut().zip(&c.listeners) {
                *t += l.conns_total;
            }
        }
        totals
    }

    /// Updates `conns_per_sec` from the totals now and `last` (the totals `elapsed` ago); returns the totals now.
    pub fn sample_rates(&self, last: &[u64], elapsed: Duration) -> Vec<u64> {
        let now = self.conns_total();
        for (i, rate) in self.conns_per_sec.iter().enumerate() {
            let delta = now
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(last.get(i).copied().unwrap_or(0));
            rate.store(
                (delta as f64 / elapsed.as_secs_f64().max(1e-3)).round() as u64,
                Ordering::Relaxed,
            );
        }
        now
    }
}

/// Builds pipelines for the planned workers (call [`PipelineFactory::make`] once per plan, any order).
pub struct PipelineFactory {
    config: Config,
    handoffs: Vec<Option<Handoff>>,
    health: Option<HealthChecker>,
    neighbour_sync: Vec<Option<NeighbourSync>>,
    shared: Arc<L4Shared>,
}

/// The interface index a listener's VIP is announced on.
pub fn vip_interface(config: &Config, listener: usize) -> usize {
    let l = &config.listeners[listener];
    if let Some(name) = &l.interface {
        return config.interfaces.iter().position(|i| &i.name == name).unwrap_or(0);
    }
    config
        .interfaces
        .iter()
        .position(|i| i.addresses.iter().any(|n| n.prefix < 32 && n.contains(l.vip)))
        .unwrap_or(0)
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

/// The health-check targets of every group that has a check; probes leave from our address on the server's link.
fn health_targets(config: &Config) -> Vec<Target> {
    let links = links(config);
    let mut targets = Vec::new();
    for (g, group) in config.groups.iter().enumerate() {
        let Some(check) = &group.health_check else { continue };
        for (s, server) in group.servers.iter().enumerate() {
            let Some(r) = route(&links, *server.addr.ip()) else {
                continue;
            };
            targets.push(Target {
                id: TargetId { group: g, server: s },
                server: server.addr,
                source: r.source,
                check: check.clone(),
            });
        }
    }
    targets
}

impl PipelineFactory {
    /// Prepares pipelines for the planned workers.
    pub fn new(config: &Config, plans: &[WorkerPlan], now: Instant) -> Self {
        let workers = plans.len();
        let neighbour_sync = if workers > 1 {
            let port_ifaces = plans
                .iter()
                .map(|p| p.ports.iter().map(|(iface, _)| *iface).collect())
                .collect();
            NeighbourSync::mesh(port_ifaces).into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        let handoffs = if workers > 1 {
            Handoff::mesh(workers, HANDOFF_DEPTH).into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        let targets = health_targets(config);
        let health = (!targets.is_empty()).then(|| {
            HealthChecker::new(
                now,
                targets,
                ProbePorts {
                    base: PROBE_PORT_BASE,
                    count: PROBE_PORTS,
                    stride: 1,
                },
            )
        });
        let shape: Vec<usize> = config
            .listeners
            .iter()
            .map(|l| {
                config
                    .groups
                    .iter()
                    .find(|g| g.name == l.group)
                    .map_or(0, |g| g.servers.len())
            })
            .collect();
        let group_sizes: Vec<usize> = config.groups.iter().map(|g| g.servers.len()).collect();
        let shared = Arc::new(L4Shared {
            board: Arc::new(HealthBoard::new(&group_sizes)),
            counters: (0..workers).map(|_| Arc::new(SharedL4Counters::new(&shape))).collect(),
            conns_per_sec: shape.iter().map(|_| AtomicU64::new(0)).collect(),
        });
        PipelineFactory {
            config: config.clone(),
            handoffs,
            health,
            neighbour_sync,
            shared,
        }
    }

    /// What the control thread reads.
    pub fn shared(&self) -> Arc<L4Shared> {
        self.shared.clone()
    }

    /// The pipeline of the worker planned as `plan`.
    pub fn make(&mut self, plan: &WorkerPlan) -> LbPipeline {
        let config = &self.config;
        let local_ips: Vec<Ipv4Addr> = config
            .interfaces
            .iter()
            .flat_map(|i| i.addresses.iter().map(|n| n.addr))
            .collect();
        let forwarder = Forwarder::new(
            ForwarderConfig {
                listeners: config.listeners.clone(),
                groups: config.groups.clone(),
                l4: config.l4.clone(),
                local_ips,
                worker: plan.index,
                workers: plan.workers,
                port_ifaces: plan.ports.iter().map(|(iface, _)| *iface).collect(),
            },
            self.handoffs.get_mut(plan.index).and_then(Option::take),
            if plan.index == 0 { self.health.take() } else { None },
            self.shared.board.clone(),
            self.shared.counters[plan.index].clone(),
            Instant::now(),
        );
        let neighbours = NeighbourConfig {
            capacity: config.datapath.neighbours,
            ..Default::default()
        };
        let mut stack = LocalStack::with_handler(
            LocalConfig {
                links: plan.links.clone(),
                neighbours,
                icmp_rate: config.datapath.icmp_rate,
            },
            forwarder,
        );
        if let Some(sync) = self.neighbour_sync.get_mut(plan.index).and_then(Option::take) {
            stack.set_neighbour_sync(sync);
        }
        for l in 0..config.listeners.len() {
            let iface = vip_interface(config, l);
            if let Some(port) = plan.ports.iter().position(|(i, _)| *i == iface) {
                stack.add_owned(port, config.listeners[l].vip);
            }
        }
        stack
    }
}
