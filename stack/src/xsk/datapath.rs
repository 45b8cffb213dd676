//! Wires the datapath from config: attaches one XDP filter per interface, opens the AF_XDP ports, groups
//! them into workers by core, and runs each worker on its own thread.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::{DatapathConfig, Idle, InterfaceConfig};
use crate::counters::{SharedCounters, WorkerSnapshot};
use crate::local::Link;
use crate::pipeline::Pipeline;
use crate::wire::EthernetAddress;
use crate::xsk::filter::{AddrKind, AttachState, AttachedMode, FilterStats, XdpFilter};
use crate::xsk::port::{create_umem, open_port, socket_zero_copy, PortSpec};
use crate::xsk::worker::{FrameCounts, Worker, WorkerOptions};

/// What one worker will serve, handed to the pipeline factory.
#[derive(Debug, Clone)]
pub struct WorkerPlan {
    /// Worker name (`w<core>`).
    pub name: String,
    /// Index of the worker (0..workers), in core order.
    pub index: usize,
    /// Number of workers.
    pub workers: usize,
    /// Core the worker is pinned to.
    pub core: usize,
    /// The worker's ports as (interface index in config, queue id), in [`PortId`](crate::pipeline::PortId) order.
    pub ports: Vec<(usize, u32)>,
    /// The link of each port, in the same order.
    pub links: Vec<Link>,
    /// Idle strategy (busy if any of its interfaces asks for busy).
    pub idle: Idle,
}

/// An error starting the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The XDP filter could not be attached or configured.
    #[error(transparent)]
    Filter(#[from] crate::xsk::filter::FilterError),
    /// An AF_XDP socket could not be opened.
    #[error(transparent)]
    Port(#[from] crate::xsk::port::PortError),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

/// Reads an interface's MAC address from sysfs.
pub fn interface_mac(ifname: &str) -> Result<EthernetAddress, DatapathError> {
    let path = format!("/sys/class/net/{ifname}/address");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| DatapathError::Other(format!("interface {ifname}: reading {path}: {e}")))?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    let mac: [u8; 6] = bytes
        .try_into()
        .map_err(|_| DatapathError::Other(format!("interface {ifname}: bad MAC {text:?}")))?;
    Ok(EthernetAddress(mac))
}

/// Plans the workers: queues of all interfaces pinned to the same core share a worker.
pub fn plan_workers(interfaces: &[InterfaceConfig]) -> Result<Vec<WorkerPlan>, DatapathError> {
    let mut by_core: BTreeMap<usize, WorkerPlan> = BTreeMap::new();
    for (i, iface) in interfaces.iter().enumerate() {
        let link = Link {
            mac: interface_mac(&iface.name)?,
            addresses: iface.addresses.clone(),
            gateway: iface.gateway,
        };
        for (&queue, &core) in iface.queues.iter().zip(&iface.cores) {
            let plan = by_core.entry(core).or_insert_with(|| WorkerPlan {
                name: format!("w{core}"),
                index: 0,
                workers: 0,
                core,
                ports: vec![],
                links: vec![],
                idle: Idle::Adaptive,
            });
            plan.ports.push((i, queue));
            plan.links.push(link.clone());
            if iface.idle == Idle::Busy {
                plan.idle = Idle::Busy;
            }
        }
    }
    let mut plans: Vec<WorkerPlan> = by_core.into_values().collect();
    let workers = plans.len();
    for (index, plan) in plans.iter_mut().enumerate() {
        plan.index = index;
        plan.workers = workers;
    }
    Ok(plans)
}

/// One AF_XDP socket of the running datapath, as the kernel reported it at bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    /// Queue id.
    pub queue: u32,
    /// The worker that owns it.
    pub worker: String,
    /// Zero-copy as the kernel says (`XDP_OPTIONS`).
    pub zero_copy: bool,
    /// Zero-copy as the bind asked.
    pub requested_zero_copy: bool,
    fd: std::os::fd::RawFd,
}

/// One interface of the running datapath as the kernel sees it now ([`Datapath::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceCheck {
    /// Interface name.
    pub name: String,
    /// Whether our XDP program is still attached, and in which mode.
    pub xdp: AttachState,
    /// Its sockets, with whether each is still an open AF_XDP socket.
    pub sockets: Vec<(SocketInfo, bool)>,
}

impl InterfaceCheck {
    /// Whether the interface's datapath works: our program attached and every socket open.
    pub fn ok(&self) -> bool {
        self.xdp.is_attached() && self.sockets.iter().all(|(_, ok)| *ok)
    }
}

struct RunningWorker {
    name: String,
    counters: Arc<SharedCounters>,
    thread: JoinHandle<FrameCounts>,
}

/// The running datapath. Dropping or [`Datapath::stop`]ping it stops the workers and detaches the filters.
pub struct Datapath {
    filters: Vec<(String, XdpFilter)>,
    /// Sockets per interface (config order).
    sockets: Vec<Vec<SocketInfo>>,
    workers: Vec<RunningWorker>,
    stop: Arc<AtomicBool>,
}

impl Datapath {
    /// Attaches the filters, opens the ports and starts one worker per planned core, each with the pipeline
    /// `make_pipeline` builds for its plan.
    pub fn start<P, F>(
        interfaces: &[InterfaceConfig],
        datapath: &DatapathConfig,
        mut make_pipeline: F,
    ) -> Result<Datapath, DatapathError>
    where
        P: Pipeline + 'static,
        F: FnMut(&WorkerPlan) -> P,
    {
        let plans = plan_workers(interfaces)?;
        let mut filters = Vec::new();
        for iface in interfaces {
            let filter = XdpFilter::attach(&iface.name, iface.xdp_mode)?;
            tracing::info!(iface = %iface.name, mode = ?filter.mode(), "XDP filter attached");
            filters.push((iface.name.clone(), filter));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut dp = Datapath {
            sockets: vec![Vec::new(); filters.len()],
            filters,
            workers: Vec::new(),
            stop,
        };
        for plan in &plans {
            let ports_per_worker = plan.ports.len() as u32;
            let frames = datapath.umem_frames.max(datapath.ring_size * 2 * ports_per_worker);
            let (umem, descs) = create_umem(frames, datapath.ring_size)
                .map_err(|e| DatapathError::Other(format!("worker {}: {e}", plan.name)))?;
            let mut ports = Vec::new();
            for &(i, queue) in &plan.ports {
                let iface = &interfaces[i];
                let filter = &dp.filters[i].1;
                let spec = PortSpec {
                    ifname: iface.name.clone(),
                    queue,
                    zero_copy: iface.zero_copy,
                    generic_xdp: filter.mode() == AttachedMode::Generic,
                };
                let port = open_port(&umem, &spec, datapath.ring_size)?;
                filter.register_socket(queue, port.fd()).map_err(|e| {
                    DatapathError::Other(format!(
                        "interface {} queue {queue}: registering the AF_XDP socket in the XDP filter: {e}",
                        iface.name
                    ))
                })?;
                // The mode the kernel reports: a socket sharing a UMEM inherits the first binding's mode.
                tracing::info!(iface = %iface.name, queue, worker = %plan.name, zero_copy = port.zero_copy, requested_zero_copy = port.requested_zero_copy, "AF_XDP socket bound");
                dp.sockets[i].push(SocketInfo {
                    queue,
                    worker: plan.name.clone(),
                    zero_copy: port.zero_copy,
                    requested_zero_copy: port.requested_zero_copy,
                    fd: port.fd(),
                });
                ports.push(port);
            }
            let options = WorkerOptions {
                name: plan.name.clone(),
                core: Some(plan.core),
                idle: plan.idle,
                batch_size: datapath.batch_size,
                ring_size: datapath.ring_size,
            };
            let worker = Worker::new(options, umem, descs, ports, make_pipeline(plan));
            let counters = worker.counters();
            let stop = dp.stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("xlb-{}", plan.name))
                .spawn(move || worker.run(&stop).frames())
                .map_err(|e| DatapathError::Other(format!("spawning worker thread {}: {e}", plan.name)))?;
            dp.workers.push(RunningWorker {
                name: plan.name.clone(),
                counters,
                thread,
            });
        }
        // Addresses go in last: until every queue has a socket, frames for them keep reaching the kernel.
        for (i, iface) in interfaces.iter().enumerate() {
            for net in &iface.addresses {
                dp.add_address(i, net.addr, AddrKind::Local)?;
            }
        }
        Ok(dp)
    }

    /// Makes the filter of interface `i` (config order) send frames for `addr` to the workers.
    pub fn add_address(&self, i: usize, addr: Ipv4Addr, kind: AddrKind) -> Result<(), DatapathError> {
        let (name, filter) = &self.filters[i];
        filter
            .add_address(addr, kind)
            .map_err(|e| DatapathError::Other(format!("interface {name}: adding {addr} to the XDP address map: {e}")))
    }

    /// Returns frames for `addr` on interface `i` to the kernel (a VIP that is no longer served).
    pub fn remove_address(&self, i: usize, addr: Ipv4Addr) -> Result<(), DatapathError> {
        let (name, filter) = &self.filters[i];
        filter.remove_address(addr).map_err(|e| {
            DatapathError::Other(format!(
                "interface {name}: removing {addr} from the XDP address map: {e}"
            ))
        })
    }

    /// Latest counters of every worker, by worker name.
    pub fn worker_counters(&self) -> Vec<(String, WorkerSnapshot)> {
        self.workers
            .iter()
            .map(|w| (w.name.clone(), w.counters.snapshot()))
            .collect()
    }

    /// Attach mode and verdict counters of every interface's filter.
    pub fn filter_stats(&self) -> Vec<(String, AttachedMode, FilterStats)> {
        self.filters
            .iter()
            .map(|(name, f)| (name.clone(), f.mode(), f.stats().unwrap_or_default()))
            .collect()
    }

    /// The sockets of every interface (config order), as bound.
    pub fn sockets(&self) -> Vec<(String, Vec<SocketInfo>)> {
        self.filters
            .iter()
            .zip(&self.sockets)
            .map(|((name, _), s)| (name.clone(), s.clone()))
            .collect()
    }

    /// Asks the kernel, for every interface, whether our XDP program is still attached (and how) and whether
    /// the sockets are still open. A few syscalls per interface: for the control plane, in the datapath's
    /// network namespace.
    pub fn check(&self) -> Vec<InterfaceCheck> {
        let running = self.healthy();
        self.filters
            .iter()
            .zip(&self.sockets)
            .map(|((name, filter), sockets)| InterfaceCheck {
                name: name.clone(),
                xdp: filter.check(),
                sockets: sockets
                    .iter()
                    // A stopped worker closed its sockets (and the descriptor may be reused): not ok.
                    .map(|s| (s.clone(), running && socket_zero_copy(s.fd).is_ok()))
                    .collect(),
            })
            .collect()
    }

    /// Whether every worker thread is still running.
    pub fn healthy(&self) -> bool {
        self.workers.iter().all(|w| !w.thread.is_finished())
    }

    /// Stops the workers, waits for them and detaches the filters. Returns each worker's final frame counts.
    pub fn stop(mut self) -> Vec<(String, FrameCounts)> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Vec<(String, FrameCounts)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        for w in self.workers.drain(..) {
            match w.thread.join() {
                Ok(frames) => out.push((w.name, frames)),
                Err(_) => tracing::error!(worker = %w.name, "worker thread panicked"),
            }
        }
        for (name, _) in self.filters.drain(..) {
            tracing::info!(iface = %name, "XDP filter detached");
        }
        out
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.shutdown();
    }
}
