//! The control side of a forwarder: what the control thread sends it (new layouts, dumps, HA imports and
//! deletes, activity) and how it applies them between batches.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xlb_stack::local::StackContext;
use xlb_stack::service::Transport;

use crate::config::L4Config;
use crate::conn::{Conn, FlowKey, Forwarding, TableFull};
use crate::health::HealthChecker;
use crate::layout::Layout;
use crate::sched::MaglevTables;
use crate::stats::{HealthBoard, SharedL4Counters};

use super::scan::{ScanJob, TableScan};
use super::*;

/// What one worker's forwarder serves.
pub struct ForwarderConfig {
    /// Listener and server slots.
    pub layout: Arc<Layout>,
    /// Interface index (config order) each listener slot's VIP is announced on.
    pub vip_ifaces: Vec<usize>,
    /// Table and port settings.
    pub l4: L4Config,
    /// The appliance's local IPs (FULLNAT sources and health-check sources).
    pub local_ips: Vec<Ipv4Addr>,
    /// This worker's index.
    pub worker: usize,
    /// Number of workers.
    pub workers: usize,
    /// Interface index (config order) of each of this worker's ports.
    pub port_ifaces: Vec<usize>,
    /// The Maglev tables for `layout` (built by the control side, shared by every worker).
    pub maglev: Arc<MaglevTables>,
}

impl ForwarderConfig {
    /// The worker's local ports ([`xlb_stack::ports`]): `l4.local_port_min..max` of the local IPs, this worker's
    /// share, with room in quarantine for as many ports as the table has entries. The stack holds them
    /// ([`xlb_stack::local::LocalStack::with_ports`]); every stage of the worker takes its ports there.
    pub fn local_ports(&self) -> LocalPorts {
        LocalPorts::new(
            &self.local_ips,
            self.l4.local_port_min,
            self.l4.local_port_max,
            self.worker,
            self.workers,
        )
        .with_quarantine(self.l4.conn_table_size)
    }
}

/// A new configuration for a running forwarder, published by the control thread.
pub struct ForwarderUpdate {
    /// The new slots (a successor of the current layout).
    pub layout: Arc<Layout>,
    /// Interface of each listener slot's VIP.
    pub vip_ifaces: Vec<usize>,
    /// The health board for the new layout's targets.
    pub board: Arc<HealthBoard>,
    /// The Maglev tables for the new layout (shared by every worker).
    pub maglev: Arc<MaglevTables>,
    /// Where to publish counters of the new shape.
    pub counters: Arc<SharedL4Counters>,
    /// The new health checker (for the worker that runs checks).
    pub health: Option<HealthChecker>,
    /// Told once the update is applied.
    pub applied: Option<crossbeam_channel::Sender<usize>>,
}

/// What the control thread sends a running forwarder.
pub enum ControlMessage {
    /// Apply a new configuration.
    Update(Box<ForwarderUpdate>),
    /// New Maglev tables after a health change (the same `Arc` goes to every worker).
    Maglev(Arc<MaglevTables>),
    /// Send back up to `limit` connection entries matching `filter`.
    DumpConns {
        /// Which entries.
        filter: ConnFilter,
        /// At most this many.
        limit: usize,
        /// Where the entries go.
        reply: crossbeam_channel::Sender<Vec<ConnInfo>>,
    },
    /// Install connections synced from a peer, with their remaining time.
    Import(Vec<(Conn, Duration)>),
    /// Remove connections a peer announced as ended.
    Forget(Vec<FlowKey>),
    /// HA: become active (master: own VIPs and floating IPs) or passive (backup: own none, keep forwarding
    /// what still arrives).
    SetActive(bool),
    /// Send back every connection with its remaining time (bulk resync for a peer).
    Export {
        /// Where the entries go.
        reply: crossbeam_channel::Sender<Vec<(Conn, Duration)>>,
    },
}

/// Which connections a dump returns (all set fields must match).
#[derive(Debug, Clone, Default)]
pub struct ConnFilter {
    /// Listener name.
    pub listener: Option<String>,
    /// Backend server.
    pub server: Option<SocketAddrV4>,
    /// Client address.
    pub client: Option<Ipv4Addr>,
    /// State name (`established`, `syn_recv`, … see [`ConnState::name`]).
    pub state: Option<String>,
}

impl ConnFilter {
    /// Whether `c`, of the listener named `listener`, matches every field that is set.
    pub fn matches(&self, c: &Conn, listener: &str) -> bool {
        self.listener.as_deref().is_none_or(|l| listener == l)
            && self.server.is_none_or(|s| c.backend == s)
            && self.client.is_none_or(|ip| *c.client.ip() == ip)
            && self.state.as_deref().is_none_or(|s| c.state.name() == s)
    }
}

/// A connection entry as dumped for the control API.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The entry.
    pub conn: Conn,
    /// Its listener's name.
    pub listener: String,
    /// Time left before it expires if no packet comes.
    pub expires_in: Duration,
    /// The worker holding it.
    pub worker: usize,
}

impl Forwarder {
    /// Maps each VIP:port to its listener: live listeners first, tombstones only where no live listener took
    /// the endpoint (so connections of a removed listener keep flowing while its VIP is still ours).
    pub(super) fn index_endpoints(&mut self) {
        self.by_endpoint.clear();
        for live in [true, false] {
            // HTTP listeners are L7's: their VIPs are owned here (`reconcile_vips`), their packets go to L7.
            let l4 = |l: &&Listener| l.config.protocol.is_l4();
            for (i, l) in self
                .listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| l.removed != live && l4(l))
            {
                let key = (
                    l.config.protocol.transport(),
                    SocketAddrV4::new(l.config.vip, l.config.port),
                );
                self.by_endpoint.entry(key).or_insert(i);
            }
        }
    }

    /// Applies a new configuration. Connections keep their listener and server slots.
    pub(super) fn apply(&mut self, update: ForwarderUpdate) {
        for (i, slot) in update.layout.listeners.iter().enumerate() {
            let table = update.maglev.get(i);
            match self.listeners.get_mut(i) {
                Some(l) => l.update(slot, table),
                None => self.listeners.push(Listener::from_slot(slot, table)),
            }
        }
        self.maglev = update.maglev;
        self.layout = update.layout;
        self.vip_ifaces = update.vip_ifaces;
        self.vips_dirty = true;
        self.index_endpoints();
        self.services_dirty = true;
        let shape = self.layout.shape();
        self.counters.listeners.resize(shape.len(), Default::default());
        self.counters.servers.resize(shape.len(), Vec::new());
        for (servers, n) in self.counters.servers.iter_mut().zip(shape) {
            servers.resize(n, Default::default());
        }
        self.board = update.board;
        self.shared = update.counters;
        if update.health.is_some() {
            self.health = update.health;
        }
        self.sync_health();
        for l in 0..self.listeners.len() {
            self.update_guard(self.last_timer, l);
        }
        if let Some(applied) = update.applied {
            let _ = applied.try_send(self.worker);
        }
    }

    /// Makes the stack own exactly the VIPs of live listeners on their interfaces' ports.
    pub(super) fn reconcile_vips(&mut self, cx: &mut StackContext<'_>) {
        let mut wanted = Vec::new();
        // A backup of an HA pair owns nothing that moves: the master answers for VIPs and floating local IPs.
        let listeners = self
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.removed && self.active);
        for (i, l) in listeners {
            let port = self.vip_ifaces.get(i).and_then(|iface| self.iface_ports.get(iface));
            if let Some(&port) = port {
                if !wanted.contains(&(port, l.config.vip)) {
                    wanted.push((port, l.config.vip));
                }
            }
        }
        if self.active {
            for &(iface, ip) in &self.floating_ips {
                if let Some(&port) = self.iface_ports.get(&iface) {
                    wanted.push((port, ip));
                }
            }
        }
        for &(port, vip) in self.owned_vips.iter().filter(|v| !wanted.contains(v)) {
            cx.set_owned(port, vip, false);
        }
        for &(port, vip) in &wanted {
            cx.set_owned(port, vip, true);
        }
        self.owned_vips = wanted;
        self.vips_dirty = false;
    }

    /// The floating local IP on the route's link, if any.
    pub(super) fn floating_source(&self, route: &xlb_stack::local::Route, cx: &StackContext<'_>) -> Option<Ipv4Addr> {
        let link = cx.links.get(route.port)?;
        self.floating_ips
            .iter()
            .map(|(_, ip)| *ip)
            .find(|ip| link.addresses.iter().any(|n| n.prefix < 32 && n.contains(*ip)))
    }

    /// Starts active (serving) or passive (an HA backup until elected).
    pub fn set_active(&mut self, active: bool) {
        self.active = active;
        self.vips_dirty = true;
    }

    /// Declares the floating local IPs of an HA pair, as (interface index, address). They are FULLNAT sources on
    /// their links and owned only while this node is active (master). Their ports come from the pools, so they
    /// must also be in `local_ips`.
    pub fn set_floating_ips(&mut self, ips: Vec<(usize, Ipv4Addr)>) {
        self.floating_ips = ips;
        self.vips_dirty = true;
    }

    /// Up to `limit` connection entries matching `filter` (control path: scans the table).
    pub fn dump(&self, now: Instant, filter: &ConnFilter, limit: usize) -> Vec<ConnInfo> {
        let name = |c: &Conn| scan::listener_name(&self.listeners, c);
        self.conns
            .iter_ids()
            .filter(|(_, c)| filter.matches(c, name(c)))
            .take(limit)
            .map(|(id, c)| ConnInfo {
                conn: *c,
                listener: name(c).to_string(),
                expires_in: self.conns.expires_in(id, now),
                worker: self.worker,
            })
            .collect()
    }

    /// Installs a connection synced from a peer: it keeps its server, local port and remaining time. Returns
    /// false if its listener (VIP:port) or server is not configured here.
    pub(super) fn import(&mut self, now: Instant, mut conn: Conn, remaining: Duration, ports: &mut LocalPorts) -> bool {
        let Some(&l) = self.by_endpoint.get(&(conn.proto, conn.vip)) else {
            return false;
        };
        let Some(s) = self.listeners[l].servers.iter().position(|v| v.addr == conn.backend) else {
            return false;
        };
        if let Some(id) = self.conns.lookup(&conn.client_key()) {
            let old = *self.conns.get(id);
            self.account(&old, old.state.is_active(), -1);
            if old.local != conn.local || old.backend != conn.backend {
                self.release_port(now, &old, Ending::Normal, ports);
            }
        }
        conn.listener = l as u16;
        conn.server = s as u16;
        conn.synced = false;
        let client_port = self.vip_ifaces.get(l).and_then(|iface| self.iface_ports.get(iface));
        conn.client_port = client_port.copied().unwrap_or(0) as u8;
        if conn.forwarding == Forwarding::Fullnat {
            ports.mark_taken(*conn.local.ip(), conn.backend, conn.local.port());
        }
        match self.insert_conn(now, conn, remaining, ports) {
            Ok(_) => {
                self.account(&conn, conn.state.is_active(), 1);
                self.counters.imported += 1;
                true
            }
            Err(TableFull) => {
                if conn.forwarding == Forwarding::Fullnat {
                    ports.give_back(*conn.local.ip(), conn.backend, conn.local.port());
                }
                false
            }
        }
    }

    /// Removes a connection a peer announced as ended (its entry expired there: its port is free).
    pub(super) fn forget(&mut self, now: Instant, key: &FlowKey, ports: &mut LocalPorts) {
        if let Some(id) = self.conns.lookup(key) {
            let c = self.conns.remove(id);
            self.account(&c, c.state.is_active(), -1);
            self.release_port(now, &c, Ending::Normal, ports);
        }
    }

    /// Applies what the control thread sent since the last call (between batches, never mid-packet).
    pub(super) fn handle_control(&mut self, now: Instant, ports: &mut LocalPorts) {
        while let Some(message) = self.control.as_ref().and_then(|c| c.try_recv().ok()) {
            match message {
                ControlMessage::Update(update) => self.apply(*update),
                ControlMessage::Maglev(tables) => self.use_maglev(tables),
                ControlMessage::DumpConns { filter, limit, reply } => {
                    self.scans.push_back(TableScan::new(ScanJob::Dump {
                        filter,
                        limit,
                        reply,
                        found: Vec::new(),
                    }));
                }
                ControlMessage::Import(conns) => {
                    for (conn, remaining) in conns {
                        if !self.import(now, conn, remaining, ports) {
                            self.counters.import_skipped += 1;
                        }
                    }
                }
                ControlMessage::SetActive(active) => {
                    self.active = active;
                    self.vips_dirty = true;
                }
                ControlMessage::Forget(keys) => {
                    for key in &keys {
                        self.forget(now, key, ports);
                    }
                }
                ControlMessage::Export { reply } => {
                    self.scans.push_back(TableScan::new(ScanJob::Export {
                        reply,
                        found: Vec::new(),
                    }));
                }
            }
        }
    }

    /// Tells the stack's service table what this stage serves: every listener's VIP:port (live ones first, see
    /// [`Forwarder::index_endpoints`]), and on every local IP the FULLNAT reply ports and the probe ports.
    pub(super) fn register_services(&mut self, cx: &mut StackContext<'_>) {
        cx.services.clear_stage(L4_STAGE);
        for (&(proto, vip), &l) in &self.by_endpoint {
            cx.services.set(
                *vip.ip(),
                proto.transport(),
                vip.port(),
                Some(Role::Listener(l).service()),
            );
        }
        let (min, max) = cx.ports.range();
        for &ip in &self.local_ips {
            for transport in [Transport::Tcp, Transport::Udp] {
                cx.services.set_range(ip, transport, min..=max, Role::Reply.service());
                let probes = PROBE_PORT_BASE..=PROBE_PORT_BASE + PROBE_PORTS - 1;
                cx.services.set_range(ip, transport, probes, Role::Probe.service());
            }
        }
        self.services_dirty = false;
    }
}
