//! The L4 forwarder: the sans-IO stage that turns client packets for a listener into packets for a backend
//! (FULLNAT or DR) and FULLNAT replies back into packets for the client.
//!
//! It plugs into the local stack as its [`Ipv4Handler`]: the stack validates Ethernet and IPv4 and offers each
//! packet for an owned address here first. Per packet the forwarder does one connection-table lookup, the
//! rewrite (incremental checksums) and a neighbour lookup; new flows also run the scheduler.
//!
//! Ownership: with several workers, every flow has one owner — the hash of the client side for packets to a
//! VIP, the local port for FULLNAT replies (ports are split between workers), worker 0 for health-check probes.
//! A worker that receives another's packet hands it over ([`handoff`]), so the connection entry is only ever
//! touched by its owner.

mod batch;
mod exhaustion;
pub mod ha_tap;
pub mod handoff;
pub mod icmp;
pub mod lports;
pub mod nat;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use xlb_stack::counters::DropReason;
use xlb_stack::local::{Handled, Ipv4Handler, Ipv4Meta, StackContext};
use xlb_stack::pipeline::{Frame, PortId, Verdict};
use xlb_stack::wire::{EthernetAddress, ETH_HEADER_LEN};

use crate::config::{L4Config, ListenerConfig, PROBE_PORTS, PROBE_PORT_BASE};
use crate::conn::state::next_state;
use crate::conn::{
    Conn, ConnId, ConnState, ConnTable, Dir, FinSeen, FlowHash, FlowKey, Forwarding, Proto, TableFull, TcpFlags,
};
use crate::health::HealthChecker;
use crate::layout::{Layout, ListenerSlot, RemovedServerPolicy};
use crate::sched::hash::hash_5tuple;
use crate::sched::{MaglevTable, Scheduler, ServerView};
use crate::stats::{HealthBoard, L4Counters, SharedL4Counters};
use crate::sync_policy::SyncPolicy;
use exhaustion::ExhaustionWarnings;
use ha_tap::{HaOutbound, HaTap};
use handoff::Handoff;
use lports::{FlowIds, LocalPorts};

/// Connections visited per expiry call at least; the budget grows by twice the connections inserted since the
/// last call, so expiry keeps up with any insert rate, and a backlog is worked off over the next turns instead of
/// stalling one.
const EXPIRE_BASE_BUDGET: usize = 256;
/// How often counters are published and the health board is read.
const HOUSEKEEPING: Duration = Duration::from_millis(100);

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
}

/// A new configuration for a running forwarder, published by the control thread.
pub struct ForwarderUpdate {
    /// The new slots (a successor of the current layout).
    pub layout: Arc<Layout>,
    /// Interface of each listener slot's VIP.
    pub vip_ifaces: Vec<usize>,
    /// The health board for the new layout's targets.
    pub board: Arc<HealthBoard>,
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

/// What the forwarder tells session sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncEvent {
    /// A connection to (re)send to the peers, with the time it has left.
    Upsert {
        /// The entry (its listener and server indices are this node's; peers map them by VIP and address).
        conn: Conn,
        /// Time left before it expires.
        remaining: Duration,
    },
    /// A synced connection ended.
    Delete(FlowKey),
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

/// A listener at run time.
struct Listener {
    config: ListenerConfig,
    removed: bool,
    servers: Vec<ServerView>,
    /// Per server slot: removed from the group.
    removed_servers: Vec<bool>,
    /// Per server slot: its health target on the board.
    targets: Vec<Option<usize>>,
    scheduler: Scheduler,
    maglev: MaglevTable,
}

impl Listener {
    fn from_slot(slot: &ListenerSlot) -> Listener {
        let servers: Vec<ServerView> = slot
            .servers
            .iter()
            .map(|s| ServerView {
                addr: s.addr,
                weight: s.weight,
                healthy: true,
                active: 0,
                inactive: 0,
            })
            .collect();
        Listener {
            scheduler: Scheduler::new(slot.config.scheduler, &servers),
            maglev: MaglevTable::new(&servers, MaglevTable::DEFAULT_SIZE),
            config: slot.config.clone(),
            removed: slot.removed,
            removed_servers: slot.servers.iter().map(|s| s.removed).collect(),
            targets: slot.servers.iter().map(|s| s.target).collect(),
            servers,
        }
    }

    /// Takes a slot's new config, keeping connection counts and health of known servers.
    fn update(&mut self, slot: &ListenerSlot) {
        if slot.config.scheduler != self.config.scheduler {
            self.scheduler = Scheduler::new(slot.config.scheduler, &self.servers);
        }
        self.config = slot.config.clone();
        self.removed = slot.removed;
        for (i, s) in slot.servers.iter().enumerate() {
            match self.servers.get_mut(i) {
                Some(view) => view.weight = s.weight,
                None => self.servers.push(ServerView {
                    addr: s.addr,
                    weight: s.weight,
                    healthy: true,
                    active: 0,
                    inactive: 0,
                }),
            }
        }
        self.removed_servers = slot.servers.iter().map(|s| s.removed).collect();
        self.targets = slot.servers.iter().map(|s| s.target).collect();
        self.rebuild();
    }

    fn rebuild(&mut self) {
        self.scheduler.rebuild(&self.servers);
        self.maglev = MaglevTable::new(&self.servers, MaglevTable::DEFAULT_SIZE);
    }
}

/// How a connection entry ended, for its local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// It expired, or a peer says it did: the server is done with the tuple.
    Normal,
    /// It ended before its time (a new SYN rescheduled it): the server may hold the tuple in TIME_WAIT.
    Early,
    /// Evicted from a full table with this much time left.
    Evicted(Duration),
}

/// Which role a packet's destination plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A listener's VIP:port (client → VIP).
    Listener(usize),
    /// A FULLNAT local address (backend → LIP:lport).
    Reply,
    /// A health-check probe port.
    Probe,
}

/// The L4 forwarder of one worker.
pub struct Forwarder {
    layout: Arc<Layout>,
    listeners: Vec<Listener>,
    /// Listener by (protocol, VIP:port), looked up for every packet: aHash rather than SipHash.
    by_endpoint: HashMap<(Proto, SocketAddrV4), usize, ahash::RandomState>,
    vip_ifaces: Vec<usize>,
    /// VIPs this worker's stack owns now, as (port, address).
    owned_vips: Vec<(PortId, Ipv4Addr)>,
    vips_dirty: bool,
    /// Whether this node serves (an HA master, or no HA): only then are VIPs and floating IPs owned.
    active: bool,
    /// Floating local IPs of an HA pair, as (interface index, address).
    floating_ips: Vec<(usize, Ipv4Addr)>,
    conns: ConnTable,
    /// Keys and hashes of the received batch, from [`Ipv4Handler::prefetch`].
    prefetched: batch::Prefetched,
    lports: LocalPorts,
    local_ips: Vec<Ipv4Addr>,
    worker: usize,
    workers: usize,
    port_ifaces: Vec<usize>,
    iface_ports: HashMap<usize, PortId>,
    handoff: Option<Handoff>,
    health: Option<HealthChecker>,
    board: Arc<HealthBoard>,
    /// The board generation the servers' `healthy` flags reflect (`u64::MAX`: not read yet).
    board_seen: u64,
    control: Option<Receiver<ControlMessage>>,
    sync_out: Option<crossbeam_channel::Sender<SyncEvent>>,
    sync_policy: SyncPolicy,
    /// HA traffic to and from the HA driver.
    ha: Option<HaTap>,
    ha_groups_owned: bool,
    counters: L4Counters,
    shared: Arc<SharedL4Counters>,
    next_housekeeping: Instant,
    /// Table inserts when expiry last ran (its budget follows the insert rate).
    inserted_at_expiry: u64,
    /// Once-per-interval warnings for exhausted resources.
    warnings: ExhaustionWarnings,
}

impl Forwarder {
    /// A forwarder for `config`. `handoff` is this worker's end of the hand-off mesh (with several workers),
    /// `health` the health checker (on the one worker that runs checks), `board` the shared health states,
    /// `shared` where this worker publishes its counters and `control` where new configurations and queries arrive.
    pub fn new(
        config: ForwarderConfig,
        handoff: Option<Handoff>,
        health: Option<HealthChecker>,
        board: Arc<HealthBoard>,
        shared: Arc<SharedL4Counters>,
        control: Option<Receiver<ControlMessage>>,
        now: Instant,
    ) -> Self {
        let listeners: Vec<Listener> = config.layout.listeners.iter().map(Listener::from_slot).collect();
        let iface_ports = config
            .port_ifaces
            .iter()
            .enumerate()
            .map(|(port, iface)| (*iface, port))
            .collect();
        let mut f = Forwarder {
            conns: ConnTable::new(config.l4.conn_table_size, config.l4.timeouts.clone(), now),
            prefetched: batch::Prefetched::new(),
            lports: LocalPorts::new(
                &config.local_ips,
                config.l4.local_port_min,
                config.l4.local_port_max,
                config.worker,
                config.workers,
            )
            .with_quarantine(config.l4.conn_table_size),
            counters: L4Counters::new(&config.layout.shape()),
            layout: config.layout,
            by_endpoint: HashMap::default(),
            vip_ifaces: config.vip_ifaces,
            owned_vips: Vec::new(),
            vips_dirty: true,
            active: true,
            floating_ips: Vec::new(),
            local_ips: config.local_ips,
            worker: config.worker,
            workers: config.workers.max(1),
            port_ifaces: config.port_ifaces,
            iface_ports,
            listeners,
            handoff,
            health,
            board_seen: u64::MAX,
            board,
            control,
            sync_out: None,
            sync_policy: SyncPolicy::default(),
            ha: None,
            ha_groups_owned: false,
            shared,
            next_housekeeping: now,
            inserted_at_expiry: 0,
            warnings: ExhaustionWarnings::default(),
        };
        f.index_endpoints();
        f
    }

    /// Maps each VIP:port to its listener: live listeners first, tombstones only where no live listener took
    /// the endpoint (so connections of a removed listener keep flowing while its VIP is still ours).
    fn index_endpoints(&mut self) {
        self.by_endpoint.clear();
        for live in [true, false] {
            for (i, l) in self.listeners.iter().enumerate().filter(|(_, l)| l.removed != live) {
                let key = (l.config.protocol, SocketAddrV4::new(l.config.vip, l.config.port));
                self.by_endpoint.entry(key).or_insert(i);
            }
        }
    }

    /// Applies a new configuration. Connections keep their listener and server slots.
    fn apply(&mut self, update: ForwarderUpdate) {
        for (i, slot) in update.layout.listeners.iter().enumerate() {
            match self.listeners.get_mut(i) {
                Some(l) => l.update(slot),
                None => self.listeners.push(Listener::from_slot(slot)),
            }
        }
        self.layout = update.layout;
        self.vip_ifaces = update.vip_ifaces;
        self.vips_dirty = true;
        self.index_endpoints();
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
        if let Some(applied) = update.applied {
            let _ = applied.try_send(self.worker);
        }
    }

    /// Makes the stack own exactly the VIPs of live listeners on their interfaces' ports.
    fn reconcile_vips(&mut self, cx: &mut StackContext<'_>) {
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
    fn floating_source(&self, route: &xlb_stack::local::Route, cx: &StackContext<'_>) -> Option<Ipv4Addr> {
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
        let name = |c: &Conn| {
            self.listeners
                .get(usize::from(c.listener))
                .map_or("", |l| l.config.name.as_str())
        };
        self.conns
            .iter_ids()
            .filter(|(_, c)| filter.listener.as_deref().is_none_or(|l| name(c) == l))
            .filter(|(_, c)| filter.server.is_none_or(|s| c.backend == s))
            .filter(|(_, c)| filter.client.is_none_or(|ip| *c.client.ip() == ip))
            .filter(|(_, c)| filter.state.as_deref().is_none_or(|s| c.state.name() == s))
            .take(limit)
            .map(|(id, c)| ConnInfo {
                conn: *c,
                listener: name(c).to_string(),
                expires_in: self.conns.expires_in(id, now),
                worker: self.worker,
            })
            .collect()
    }

    /// The current layout.
    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// The connection table.
    pub fn conns(&self) -> &ConnTable {
        &self.conns
    }

    /// This worker's counters (as of now, not as published).
    pub fn counters(&self) -> &L4Counters {
        &self.counters
    }

    fn role(&self, proto: Proto, dst: SocketAddrV4) -> Option<Role> {
        if let Some(&l) = self.by_endpoint.get(&(proto, dst)) {
            return Some(Role::Listener(l));
        }
        if !self.local_ips.contains(dst.ip()) {
            return None;
        }
        if self.lports.in_range(dst.port()) {
            Some(Role::Reply)
        } else if (PROBE_PORT_BASE..PROBE_PORT_BASE + PROBE_PORTS).contains(&dst.port()) {
            Some(Role::Probe)
        } else {
            None
        }
    }

    /// The worker that owns a packet's flow.
    fn owner(&self, role: Role, key: &FlowKey, hash: FlowHash) -> usize {
        if self.workers == 1 {
            return 0;
        }
        match role {
            // `hash` is `hash_5tuple` of the key, as on every worker and node.
            Role::Listener(_) => (hash.value() % self.workers as u64) as usize,
            Role::Reply => self.lports.owner(key.dst.port()),
            Role::Probe => 0,
        }
    }

    /// Handles a packet this worker owns.
    #[allow(clippy::too_many_arguments)]
    fn process_owned(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        l4: usize,
        key: FlowKey,
        hash: FlowHash,
        role: Role,
        cx: &mut StackContext<'_>,
    ) -> Handled {
        match role {
            Role::Listener(l) => {
                let handled = match self.conns.lookup_hashed(&key, hash) {
                    Some(id) if self.starts_over(id, frame.data(), l4) => {
                        // The old entry goes; its local port stays taken until the new flow has chosen its
                        // server: on the same server the new flow continues on the same tuple.
                        let old = self.end_early(id);
                        self.counters.rescheduled += 1;
                        let mut reusable = Some(old);
                        let handled = self.new_flow(now, l, port, frame, l4, key, &mut reusable, cx);
                        if let Some(old) = reusable {
                            self.release_port(now, &old, Ending::Early);
                        }
                        handled
                    }
                    Some(id) => self.forward_client(now, id, port, frame, l4, cx),
                    None => self.new_flow(now, l, port, frame, l4, key, &mut None, cx),
                };
                self.count_listener_drop(l, &handled);
                handled
            }
            Role::Reply => match self.conns.lookup_hashed(&key, hash) {
                Some(id) => {
                    let l = usize::from(self.conns.get(id).listener);
                    let handled = Handled::Verdict(self.forward_reply(now, id, frame, l4, cx));
                    self.count_listener_drop(l, &handled);
                    handled
                }
                None => Handled::Verdict(Verdict::Drop(DropReason::NoConnection)),
            },
            Role::Probe => {
                // Late or stray packets to a probe port are the local stack's (RST / unreachable).
                let consumed = self
                    .health
                    .as_mut()
                    .is_some_and(|h| h.handle_packet(now, &frame.data()[ETH_HEADER_LEN..]));
                if consumed {
                    Handled::Verdict(Verdict::Consumed)
                } else {
                    Handled::Pass
                }
            }
        }
    }

    /// Whether a client packet on an existing entry starts a new flow instead (IPVS's `conn_reuse_mode` and
    /// `expire_nodest_conn`, on by default here): a TCP SYN on the addresses of a connection that has closed
    /// (TIME_WAIT, CLOSE) or whose server is down or removed — sent on, it would be refused or unanswered — or
    /// any UDP datagram of a flow whose server is down. Established TCP to a down server keeps its server: a
    /// failed check does not prove the connection dead.
    fn starts_over(&mut self, id: ConnId, frame: &[u8], l4: usize) -> bool {
        let proto = self.conns.get(id).proto;
        if proto == Proto::Tcp {
            // Only a SYN can start over: other segments cost no more than this look at their flags.
            let flags = TcpFlags::from_byte(frame[l4 + 13]);
            if !flags.syn || flags.ack {
                return false;
            }
        }
        self.refresh_health();
        let c = self.conns.get(id);
        let listener = &self.listeners[usize::from(c.listener)];
        let server = usize::from(c.server);
        let down = !listener.servers[server].healthy;
        match proto {
            Proto::Tcp => {
                matches!(c.state, ConnState::TimeWait | ConnState::Close) || down || listener.removed_servers[server]
            }
            Proto::Udp => down,
        }
    }

    /// Ends a connection before its time: its entry goes, its server's count drops and peers are told. The
    /// caller releases its local port ([`Forwarder::release_port`]) or hands the port to the flow that follows.
    fn end_early(&mut self, id: ConnId) -> Conn {
        let c = self.conns.remove(id);
        self.account(&c, c.state.is_active(), -1);
        if let (true, Some(out)) = (self.sync_policy.on_end(&c), &self.sync_out) {
            let _ = out.try_send(SyncEvent::Delete(c.client_key()));
        }
        c
    }

    /// Returns a removed FULLNAT connection's local port to its pool: at once if the connection ran its course
    /// (or the server cannot hold the tuple in TIME_WAIT), else after the time the server may still hold it.
    fn release_port(&mut self, now: Instant, c: &Conn, ending: Ending) {
        if c.forwarding != Forwarding::Fullnat {
            return;
        }
        let (ip, port) = (*c.local.ip(), c.local.port());
        let server_may_wait = c.proto == Proto::Tcp
            && matches!(
                c.state,
                ConnState::Established | ConnState::FinWait | ConnState::TimeWait
            );
        let hold = match ending {
            Ending::Early if server_may_wait => self.conns.timeouts().of(ConnState::TimeWait),
            Ending::Evicted(left) if server_may_wait => left,
            _ => return self.lports.give_back(ip, c.backend, port),
        };
        let flow = FlowIds {
            client: c.client,
            vip: c.vip,
        };
        self.lports.give_back_at(ip, c.backend, port, now + hold, flow);
    }

    /// Makes room in a full table by evicting its oldest closed or closing connection; false if none is
    /// evictable.
    fn make_room(&mut self, now: Instant) -> bool {
        let Some((c, left)) = self.conns.evict_oldest(now) else {
            return false;
        };
        self.account(&c, c.state.is_active(), -1);
        self.release_port(now, &c, Ending::Evicted(left));
        if let (true, Some(out)) = (self.sync_policy.on_end(&c), &self.sync_out) {
            let _ = out.try_send(SyncEvent::Delete(c.client_key()));
        }
        self.counters.evicted += 1;
        true
    }

    /// Inserts a connection, evicting a closed one if the table is full.
    fn insert_conn(&mut self, now: Instant, conn: Conn, timeout: Duration) -> Result<ConnId, TableFull> {
        match self.conns.insert_expiring(now, conn, timeout) {
            Err(TableFull) if self.make_room(now) => self.conns.insert_expiring(now, conn, timeout),
            result => result,
        }
    }

    /// Counts a drop or refusal of a packet of listener `l`'s flows under its reason.
    fn count_listener_drop(&mut self, l: usize, handled: &Handled) {
        let (Handled::Reject(reason) | Handled::Verdict(Verdict::Drop(reason))) = handled else {
            return;
        };
        if let Some(c) = self.counters.listeners.get_mut(l) {
            c.drops[*reason as usize] += 1;
        }
    }

    /// Before a scheduling decision: takes health changes another worker's checker made since the last look
    /// (one atomic load), so no new flow goes to a server the board already says is down.
    fn refresh_health(&mut self) {
        if self.board.generation() != self.board_seen {
            self.sync_health();
        }
    }

    /// A packet from a client with no connection entry: schedule it, or refuse it. `reusable` is the entry the
    /// packet's SYN just ended, if any: when the flow goes to the same server, it takes over that entry's local
    /// port (and leaves `None`), so the server sees the same tuple from the same client.
    #[allow(clippy::too_many_arguments)]
    fn new_flow(
        &mut self,
        now: Instant,
        l: usize,
        port: PortId,
        frame: &mut Frame<'_>,
        l4: usize,
        key: FlowKey,
        reusable: &mut Option<Conn>,
        cx: &mut StackContext<'_>,
    ) -> Handled {
        let listener = &mut self.listeners[l];
        if listener.removed {
            let reason = if key.proto == Proto::Tcp {
                DropReason::TcpNoListener
            } else {
                DropReason::UdpNoListener
            };
            return Handled::Reject(reason);
        }
        let forwarding = listener.config.forwarding;
        if key.proto == Proto::Tcp {
            let flags = TcpFlags::from_byte(frame.data()[l4 + 13]);
            if !flags.syn || flags.ack {
                // Mid-flow packet without state: DR can still send it where a stateless hash says (this keeps
                // DR flows alive after a table loss); FULLNAT cannot translate it.
                return match forwarding {
                    Forwarding::Dr => Handled::Verdict(self.forward_stateless(now, l, frame, key, cx)),
                    Forwarding::Fullnat => Handled::Verdict(Verdict::Drop(DropReason::NoConnection)),
                };
            }
        }
        self.refresh_health();
        let listener = &mut self.listeners[l];
        let Some(server) = listener.scheduler.pick(&listener.servers, key.src) else {
            self.counters.listeners[l].no_server += 1;
            return Handled::Reject(DropReason::NoHealthyServer);
        };
        let backend = listener.servers[server].addr;
        let local = match forwarding {
            Forwarding::Dr => key.src,
            Forwarding::Fullnat => {
                let Some(route) = cx.route(*backend.ip()) else {
                    return Handled::Verdict(Verdict::Drop(DropReason::NoRoute));
                };
                // In an HA pair the floating local IP of the link is the source, so replies reach whichever
                // node is master. Otherwise every address on the backend's link is a source: when one runs out
                // of ports towards this server the next is used, so sessions scale with the number of local IPs.
                let floating = self.floating_source(&route, cx);
                let link = &cx.links[route.port];
                let mut sources = floating.into_iter().chain(
                    link.addresses
                        .iter()
                        .filter(|n| floating.is_none() && n.prefix < 32 && n.contains(*backend.ip()))
                        .map(|n| n.addr),
                );
                let continued = reusable.filter(|old| {
                    old.forwarding == Forwarding::Fullnat && old.backend == backend && old.proto == key.proto
                });
                if let Some(old) = continued {
                    // The port is still taken by the ended entry: it moves to the new one.
                    *reusable = None;
                    old.local
                } else {
                    let flow = FlowIds {
                        client: key.src,
                        vip: key.dst,
                    };
                    let taken = sources.find_map(|ip| self.lports.take(ip, backend, flow).ok().map(|p| (ip, p)));
                    let Some((source, lport)) = taken else {
                        return Handled::Verdict(Verdict::Drop(DropReason::LocalPortsExhausted));
                    };
                    SocketAddrV4::new(source, lport)
                }
            }
        };
        let conn = Conn {
            proto: key.proto,
            forwarding,
            client: key.src,
            vip: key.dst,
            local,
            backend,
            listener: l as u16,
            server: server as u16,
            state: if key.proto == Proto::Tcp {
                ConnState::SynRecv
            } else {
                ConnState::Udp
            },
            fins: FinSeen::default(),
            client_port: port as u8,
            client_mac: EthernetAddress::from_bytes(&frame.data()[6..12]),
            client_packets: 0,
            synced: false,
        };
        match self.insert_conn(now, conn, self.conns.timeouts().of(conn.state)) {
            Ok(id) => {
                self.account(&conn, conn.state.is_active(), 1);
                self.counters.listeners[l].conns_total += 1;
                self.counters.servers[l][server].conns_total += 1;
                self.forward_client(now, id, port, frame, l4, cx)
            }
            Err(TableFull) => {
                if forwarding == Forwarding::Fullnat {
                    self.lports.give_back(*local.ip(), backend, local.port());
                    return Handled::Verdict(Verdict::Drop(DropReason::ConnTableFull));
                }
                Handled::Verdict(self.forward_stateless(now, l, frame, key, cx))
            }
        }
    }

    /// DR without a table entry: the listener's Maglev table picks the server from the flow's hash, the same
    /// way on every worker and every node.
    fn forward_stateless(
        &mut self,
        now: Instant,
        l: usize,
        frame: &mut Frame<'_>,
        key: FlowKey,
        cx: &mut StackContext<'_>,
    ) -> Verdict {
        self.refresh_health();
        let listener = &self.listeners[l];
        let Some(server) = listener.maglev.lookup(hash_5tuple(key.proto as u8, key.src, key.dst)) else {
            self.counters.listeners[l].no_server += 1;
            return Verdict::Drop(DropReason::NoHealthyServer);
        };
        let backend = listener.servers[server].addr;
        self.counters.listeners[l].stateless += 1;
        let len = frame.len() as u64;
        self.counters.listeners[l].packets_in += 1;
        self.counters.listeners[l].bytes_in += len;
        self.counters.servers[l][server].packets_in += 1;
        self.counters.servers[l][server].bytes_in += len;
        deliver(now, frame, *backend.ip(), cx)
    }

    /// Adjusts the active/inactive count of a connection's server by `delta`.
    fn account(&mut self, conn: &Conn, active: bool, delta: i32) {
        let s = &mut self.listeners[usize::from(conn.listener)].servers[usize::from(conn.server)];
        let n = if active { &mut s.active } else { &mut s.inactive };
        *n = n.saturating_add_signed(delta);
    }

    /// Tracks TCP state for a segment in `dir`: updates the entry and the server's counts.
    fn track(&mut self, id: ConnId, dir: Dir, frame: &[u8], l4: usize) {
        let conn = *self.conns.get(id);
        if conn.proto != Proto::Tcp {
            return;
        }
        let mut fins = conn.fins;
        let state = next_state(conn.state, &mut fins, dir, TcpFlags::from_byte(frame[l4 + 13]));
        self.set_state(id, state);
        self.conns.get_mut(id).fins = fins;
    }

    /// After a packet of a connection (entry touched): queues an upsert for session sync when the policy says
    /// so (threshold, state change, refresh). One that cannot be queued is counted in `sync_dropped`; the
    /// connection's last sync stays as it was, so the next packet tries again.
    fn maybe_sync(&mut self, id: ConnId, now: Instant) {
        let Some(out) = &self.sync_out else { return };
        let (c, last) = (self.conns.get(id), self.conns.last_sync(id));
        let reason = self.sync_policy.after_packet(c, last, now, self.conns.timeouts());
        if reason.is_none() {
            return;
        }
        let event = SyncEvent::Upsert {
            conn: *c,
            remaining: self.conns.expires_in(id, now),
        };
        if out.try_send(event).is_ok() {
            self.conns.mark_synced(id, now);
        } else {
            self.counters.sync_dropped += 1;
        }
    }

    /// Sends session-sync events to `out`, when `policy` says (see [`SyncPolicy`]).
    pub fn enable_sync(&mut self, out: crossbeam_channel::Sender<SyncEvent>, policy: SyncPolicy) {
        self.sync_out = Some(out);
        self.sync_policy = policy;
    }

    /// Carries HA traffic for the HA driver (see [`ha_tap`]).
    pub fn set_ha_tap(&mut self, tap: HaTap) {
        self.ha = Some(tap);
        self.ha_groups_owned = false;
    }

    /// Hands an HA packet (VRRP, session sync) to the HA driver.
    fn tap_ha(&mut self, frame: &Frame<'_>) -> Option<Handled> {
        let tap = self.ha.as_ref()?;
        let packet = &frame.data()[ETH_HEADER_LEN..];
        let kind = tap.classify(packet)?;
        Some(match tap.sender(kind).try_send(packet.to_vec()) {
            Ok(()) => Handled::Verdict(Verdict::Consumed),
            Err(_) => Handled::Verdict(Verdict::Drop(DropReason::HaQueueFull)),
        })
    }

    /// The next frame the HA driver wants sent, if this worker transmits for HA.
    fn ha_transmit(&mut self, now: Instant, buf: &mut [u8], cx: &mut StackContext<'_>) -> Option<(PortId, usize)> {
        let outbound = self.ha.as_ref()?.outbound.as_ref()?;
        while let Ok(out) = outbound.try_recv() {
            match out {
                HaOutbound::Frame { iface, frame } => match self.iface_ports.get(&iface) {
                    Some(&port) if frame.len() <= buf.len() => {
                        buf[..frame.len()].copy_from_slice(&frame);
                        return Some((port, frame.len()));
                    }
                    _ => cx.counters.drop(DropReason::NoRoute),
                },
                HaOutbound::Routed(packet) => {
                    let len = ETH_HEADER_LEN + packet.len();
                    if packet.len() < 20 || len > buf.len() {
                        continue;
                    }
                    buf[ETH_HEADER_LEN..len].copy_from_slice(&packet);
                    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
                    if let Ok(port) = cx.deliver(now, buf, len, dst) {
                        return Some((port, len));
                    }
                }
            }
        }
        None
    }

    /// Makes the stack accept the HA multicast groups on the HA interface's ports (once).
    fn own_ha_groups(&mut self, cx: &mut StackContext<'_>) {
        let Some(tap) = &self.ha else { return };
        if self.ha_groups_owned {
            return;
        }
        for (port, iface) in self.port_ifaces.iter().enumerate() {
            if *iface == tap.iface {
                for group in tap.groups() {
                    cx.set_owned(port, group, true);
                }
            }
        }
        self.ha_groups_owned = true;
    }

    /// Installs a connection synced from a peer: it keeps its server, local port and remaining time. Returns
    /// false if its listener (VIP:port) or server is not configured here.
    fn import(&mut self, now: Instant, mut conn: Conn, remaining: Duration) -> bool {
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
                self.release_port(now, &old, Ending::Normal);
            }
        }
        conn.listener = l as u16;
        conn.server = s as u16;
        conn.synced = false;
        let client_port = self.vip_ifaces.get(l).and_then(|iface| self.iface_ports.get(iface));
        conn.client_port = client_port.copied().unwrap_or(0) as u8;
        if conn.forwarding == Forwarding::Fullnat {
            self.lports
                .mark_taken(*conn.local.ip(), conn.backend, conn.local.port());
        }
        match self.insert_conn(now, conn, remaining) {
            Ok(_) => {
                self.account(&conn, conn.state.is_active(), 1);
                self.counters.imported += 1;
                true
            }
            Err(TableFull) => {
                if conn.forwarding == Forwarding::Fullnat {
                    self.lports.give_back(*conn.local.ip(), conn.backend, conn.local.port());
                }
                false
            }
        }
    }

    /// Removes a connection a peer announced as ended (its entry expired there: its port is free).
    fn forget(&mut self, now: Instant, key: &FlowKey) {
        if let Some(id) = self.conns.lookup(key) {
            let c = self.conns.remove(id);
            self.account(&c, c.state.is_active(), -1);
            self.release_port(now, &c, Ending::Normal);
        }
    }

    /// Client → backend on an existing connection.
    fn forward_client(
        &mut self,
        now: Instant,
        id: ConnId,
        port: PortId,
        frame: &mut Frame<'_>,
        l4: usize,
        cx: &mut StackContext<'_>,
    ) -> Handled {
        if self.server_reset(id) {
            // The server was removed with the reset policy: close the entry and refuse the client.
            self.set_state(id, ConnState::Close);
            self.conns.touch(id, now);
            return Handled::Reject(DropReason::ServerRemoved);
        }
        self.track(id, Dir::FromClient, frame.data(), l4);
        self.conns.touch(id, now);
        let c = self.conns.get_mut(id);
        c.client_packets = c.client_packets.saturating_add(1);
        // Follow the client's first hop if it moves (router failover): replies go where packets come from.
        c.client_port = port as u8;
        c.client_mac = EthernetAddress::from_bytes(&frame.data()[6..12]);
        let c = *c;
        self.maybe_sync(id, now);
        let len = frame.len() as u64;
        let (l, s) = (usize::from(c.listener), usize::from(c.server));
        self.counters.listeners[l].packets_in += 1;
        self.counters.listeners[l].bytes_in += len;
        self.counters.servers[l][s].packets_in += 1;
        self.counters.servers[l][s].bytes_in += len;
        if c.forwarding == Forwarding::Fullnat {
            nat::rewrite(frame.data_mut(), l4, c.proto, c.local, c.backend);
        }
        Handled::Verdict(deliver(now, frame, *c.backend.ip(), cx))
    }

    /// Whether the connection's server was removed and its connections are to be reset.
    fn server_reset(&self, id: ConnId) -> bool {
        let c = self.conns.get(id);
        self.layout.removed_server_policy == RemovedServerPolicy::Reset
            && self.listeners[usize::from(c.listener)].removed_servers[usize::from(c.server)]
    }

    /// Moves a connection to `state`, keeping the server's active/inactive counts right.
    fn set_state(&mut self, id: ConnId, state: ConnState) {
        let conn = *self.conns.get(id);
        if conn.state.is_active() != state.is_active() {
            self.account(&conn, conn.state.is_active(), -1);
            self.account(&conn, state.is_active(), 1);
        }
        self.conns.get_mut(id).state = state;
    }

    /// Backend → client on an existing FULLNAT connection: translate back and send where the client is.
    fn forward_reply(
        &mut self,
        now: Instant,
        id: ConnId,
        frame: &mut Frame<'_>,
        l4: usize,
        cx: &mut StackContext<'_>,
    ) -> Verdict {
        if self.server_reset(id) {
            return Verdict::Drop(DropReason::ServerRemoved);
        }
        self.track(id, Dir::FromServer, frame.data(), l4);
        self.conns.touch(id, now);
        self.maybe_sync(id, now);
        let c = *self.conns.get(id);
        let len = frame.len() as u64;
        let (l, s) = (usize::from(c.listener), usize::from(c.server));
        self.counters.listeners[l].packets_out += 1;
        self.counters.listeners[l].bytes_out += len;
        self.counters.servers[l][s].packets_out += 1;
        self.counters.servers[l][s].bytes_out += len;
        nat::rewrite(frame.data_mut(), l4, c.proto, c.vip, c.client);
        toward_client(&c, frame, cx)
    }

    /// An ICMP message to one of our addresses: an error about a health probe goes to the checker (on worker
    /// 0), an error about a forwarded flow to the other end of its connection ([`icmp`]); anything else is the
    /// local stack's (echo, or errors about nothing we know).
    fn handle_icmp(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        l4: usize,
        cx: &mut StackContext<'_>,
    ) -> Handled {
        let Some(q) = icmp::quoted(frame.data(), l4) else {
            return Handled::Pass;
        };
        // The quoted packet went out from us: `q.src` is ours, and the flow's key is that of the packets the
        // other end sends us.
        let role = self.role(q.proto, q.src);
        if role == Some(Role::Probe) {
            if self.worker != 0 {
                return self.hand_off(0, port, frame);
            }
            let consumed = self
                .health
                .as_mut()
                .is_some_and(|h| h.handle_packet(now, &frame.data()[ETH_HEADER_LEN..]));
            return if consumed {
                Handled::Verdict(Verdict::Consumed)
            } else {
                Handled::Pass
            };
        }
        let Some(role) = role else { return Handled::Pass };
        let key = FlowKey {
            proto: q.proto,
            src: q.dst,
            dst: q.src,
        };
        let hash = FlowHash::of(&key);
        let owner = self.owner(role, &key, hash);
        if owner != self.worker {
            return self.hand_off(owner, port, frame);
        }
        let Some(id) = self.conns.lookup_hashed(&key, hash) else {
            return Handled::Pass;
        };
        let c = *self.conns.get(id);
        self.counters.icmp_forwarded += 1;
        let verdict = match role {
            // From the client's side, about VIP → client: to the backend, about what it sent (DR: as it is).
            Role::Listener(_) => {
                if c.forwarding == Forwarding::Fullnat {
                    let outer = (*c.local.ip(), *c.backend.ip());
                    icmp::rewrite(frame.data_mut(), l4, &q, outer, (c.backend, c.local));
                }
                deliver(now, frame, *c.backend.ip(), cx)
            }
            // From a backend's side, about LIP → backend: to the client, about what it sent.
            Role::Reply | Role::Probe => {
                icmp::rewrite(
                    frame.data_mut(),
                    l4,
                    &q,
                    (*c.vip.ip(), *c.client.ip()),
                    (c.client, c.vip),
                );
                toward_client(&c, frame, cx)
            }
        };
        Handled::Verdict(verdict)
    }

    /// Copies a frame to its owner worker.
    fn hand_off(&mut self, owner: usize, port: PortId, frame: &Frame<'_>) -> Handled {
        let iface = self.port_ifaces[port];
        match self.handoff.as_mut().map(|h| h.send(owner, iface, frame.data())) {
            Some(Ok(())) => {
                self.counters.handoff_out += 1;
                Handled::Verdict(Verdict::Consumed)
            }
            _ => Handled::Verdict(Verdict::Drop(DropReason::HandoffFull)),
        }
    }

    /// Processes frames other workers handed over; returns the first that is to be sent.
    fn process_handed(&mut self, now: Instant, buf: &mut [u8], cx: &mut StackContext<'_>) -> Option<(PortId, usize)> {
        loop {
            let handed = self.handoff.as_mut()?.receive()?;
            let len = handed.len;
            buf[..len].copy_from_slice(&handed.buf[..len]);
            let iface = handed.iface;
            self.handoff.as_mut()?.recycle(handed);
            self.counters.handoff_in += 1;
            let Some(&port) = self.iface_ports.get(&iface) else {
                cx.counters.drop(DropReason::NoRoute);
                continue;
            };
            let mut frame = Frame::new(buf, len);
            // The sender validated the frame before handing it over.
            let l4 = ETH_HEADER_LEN + usize::from(frame.data()[ETH_HEADER_LEN] & 0x0f) * 4;
            let handled = match frame.data()[ETH_HEADER_LEN + 9] {
                1 => self.handle_icmp(now, port, &mut frame, l4, cx),
                protocol => {
                    let proto = if protocol == 6 { Proto::Tcp } else { Proto::Udp };
                    let (src, dst) = nat::endpoints(frame.data(), l4);
                    let key = FlowKey { proto, src, dst };
                    let Some(role) = self.role(proto, dst) else { continue };
                    let hash = FlowHash::of(&key);
                    self.process_owned(now, port, &mut frame, l4, key, hash, role, cx)
                }
            };
            match handled {
                Handled::Verdict(Verdict::Transmit(q)) => return Some((q, frame.len())),
                Handled::Verdict(Verdict::Drop(reason)) | Handled::Reject(reason) => cx.counters.drop(reason),
                Handled::Verdict(Verdict::Consumed) | Handled::Pass => {}
            }
        }
    }

    /// Applies health changes from the board to every listener's servers.
    fn sync_health(&mut self) {
        self.board_seen = self.board.generation();
        for l in self.listeners.iter_mut() {
            let mut changed = false;
            for (view, target) in l.servers.iter_mut().zip(&l.targets) {
                let up = target.is_none_or(|t| self.board.is_up(t));
                if view.healthy != up {
                    view.healthy = up;
                    changed = true;
                }
            }
            if changed {
                l.rebuild();
            }
        }
    }

    /// Runs the health checker's timers and records its verdicts on the board. The checker's target ids carry
    /// the target's index on the board in `group` (see `xlb_tools::lb`).
    fn run_health(&mut self, now: Instant) {
        let Some(h) = &mut self.health else { return };
        h.handle_timeout(now);
        while let Some(event) = h.poll_event() {
            let (id, up) = match event {
                crate::health::HealthEvent::Up(id) => (id, true),
                crate::health::HealthEvent::Down(id) => (id, false),
            };
            self.board.set(id.group, up);
            let target = self.layout.targets.get(id.group);
            let (group, server) = target.map_or((String::new(), None), |t| (t.group.clone(), Some(t.addr)));
            if up {
                tracing::info!(group, server = ?server, "server is up (health check)");
            } else {
                tracing::warn!(group, server = ?server, "server is DOWN (health check): taken out of scheduling");
            }
        }
    }

    /// Expires connections whose time is up, with a budget that follows the insert rate; what is left over is
    /// done in the next turns (`poll_timeout` asks for them at once).
    fn expire(&mut self, now: Instant) {
        if !self.conns.expiry_due(now) {
            return;
        }
        let inserted = self.conns.inserted() - self.inserted_at_expiry;
        self.inserted_at_expiry = self.conns.inserted();
        let budget = EXPIRE_BASE_BUDGET + 2 * inserted as usize;
        let (lports, listeners) = (&mut self.lports, &mut self.listeners);
        let (sync_out, sync_policy) = (&self.sync_out, &self.sync_policy);
        let expired = self.conns.expire(now, budget, |c| {
            if c.forwarding == Forwarding::Fullnat {
                lports.give_back(*c.local.ip(), c.backend, c.local.port());
            }
            if let (true, Some(out)) = (sync_policy.on_end(c), sync_out) {
                let _ = out.try_send(SyncEvent::Delete(c.client_key()));
            }
            let s = &mut listeners[usize::from(c.listener)].servers[usize::from(c.server)];
            let n = if c.state.is_active() {
                &mut s.active
            } else {
                &mut s.inactive
            };
            *n = n.saturating_sub(1);
        });
        self.counters.expired += expired as u64;
    }

    fn publish(&mut self) {
        self.counters.conns = self.conns.len() as u64;
        self.counters.local_ports = self.lports.occupancy();
        for (l, listener) in self.listeners.iter().enumerate() {
            for (s, view) in listener.servers.iter().enumerate() {
                self.counters.servers[l][s].active = u64::from(view.active);
                self.counters.servers[l][s].inactive = u64::from(view.inactive);
            }
        }
        self.shared.publish(&self.counters);
    }
}

/// Sends a frame for `c`'s client out where the client's packets come in, to the hop they come from.
fn toward_client(c: &Conn, frame: &mut Frame<'_>, cx: &StackContext<'_>) -> Verdict {
    let port = usize::from(c.client_port);
    let data = frame.data_mut();
    data[0..6].copy_from_slice(&c.client_mac.0);
    data[6..12].copy_from_slice(&cx.links[port].mac.0);
    Verdict::Transmit(port)
}

/// Sends a rewritten frame towards `dst` through the neighbour table.
fn deliver(now: Instant, frame: &mut Frame<'_>, dst: Ipv4Addr, cx: &mut StackContext<'_>) -> Verdict {
    let len = frame.len();
    match cx.deliver(now, frame.buffer_mut(), len, dst) {
        Ok(port) => Verdict::Transmit(port),
        Err(None) => Verdict::Consumed,
        Err(Some(reason)) => Verdict::Drop(reason),
    }
}

impl Ipv4Handler for Forwarder {
    fn handle(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &Ipv4Meta,
        cx: &mut StackContext<'_>,
    ) -> Handled {
        self.prefetched.stage(&self.conns);
        if let Some(handled) = self.tap_ha(frame) {
            return handled;
        }
        let proto = match ip.protocol {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            1 => return self.handle_icmp(now, port, frame, ip.l4, cx),
            _ => return Handled::Pass,
        };
        let header = if proto == Proto::Tcp { 20 } else { 8 };
        if frame.len() < ip.l4 + header {
            return Handled::Pass; // the local stack counts it as malformed
        }
        let (src, dst) = nat::endpoints(frame.data(), ip.l4);
        let key = FlowKey { proto, src, dst };
        let Some(role) = self.role(proto, dst) else {
            return Handled::Pass;
        };
        let hash = self.prefetched.hash(&key);
        let owner = self.owner(role, &key, hash);
        if owner != self.worker {
            let handled = self.hand_off(owner, port, frame);
            if let Role::Listener(l) = role {
                self.count_listener_drop(l, &handled);
            }
            return handled;
        }
        self.process_owned(now, port, frame, ip.l4, key, hash, role, cx)
    }

    /// Hashes the packet's flow key once for the batch and starts loading its index bucket.
    #[inline]
    fn prefetch(&mut self, _port: PortId, frame: &[u8], ip: &Ipv4Meta) {
        let proto = match ip.protocol {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            _ => return,
        };
        if frame.len() < ip.l4 + 4 {
            return;
        }
        let (src, dst) = nat::endpoints(frame, ip.l4);
        let key = FlowKey { proto, src, dst };
        self.prefetched.push(&self.conns, key, FlowHash::of(&key));
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8], cx: &mut StackContext<'_>) -> Option<(PortId, usize)> {
        if let Some(out) = self.ha_transmit(now, buf, cx) {
            return Some(out);
        }
        if let Some(out) = self.process_handed(now, buf, cx) {
            return Some(out);
        }
        let health = self.health.as_mut()?;
        while let Some(len) = health.poll_transmit(now, &mut buf[ETH_HEADER_LEN..]) {
            let ip = &buf[ETH_HEADER_LEN..];
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            if let Ok(port) = cx.deliver(now, buf, ETH_HEADER_LEN + len, dst) {
                return Some((port, ETH_HEADER_LEN + len));
            }
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let h = self.health.as_ref().and_then(HealthChecker::poll_timeout);
        let next = self.next_housekeeping.min(self.conns.next_expiry());
        Some(h.map_or(next, |h| h.min(next)))
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        let tap = self.ha.as_ref()?;
        tap.outbound.as_ref().map(|_| tap.wake.fd())
    }

    fn handle_timeout(&mut self, now: Instant, cx: &mut StackContext<'_>) {
        while let Some(message) = self.control.as_ref().and_then(|c| c.try_recv().ok()) {
            match message {
                ControlMessage::Update(update) => self.apply(*update),
                ControlMessage::DumpConns { filter, limit, reply } => {
                    let _ = reply.try_send(self.dump(now, &filter, limit));
                }
                ControlMessage::Import(conns) => {
                    for (conn, remaining) in conns {
                        if !self.import(now, conn, remaining) {
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
                        self.forget(now, key);
                    }
                }
                ControlMessage::Export { reply } => {
                    let all = self
                        .conns
                        .iter_ids()
                        .map(|(id, c)| (*c, self.conns.expires_in(id, now)))
                        .collect();
                    let _ = reply.try_send(all);
                }
            }
        }
        if self.vips_dirty {
            self.reconcile_vips(cx);
        }
        self.own_ha_groups(cx);
        self.run_health(now);
        self.expire(now);
        if now < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = now + HOUSEKEEPING;
        self.lports.release_due(now);
        self.sync_health();
        self.publish();
        let table_full = self
            .counters
            .listeners
            .iter()
            .map(|l| l.drops[DropReason::ConnTableFull as usize])
            .sum();
        let ports_exhausted = self
            .counters
            .listeners
            .iter()
            .map(|l| l.drops[DropReason::LocalPortsExhausted as usize])
            .sum();
        self.warnings
            .check(now, self.worker, ports_exhausted, table_full, &self.lports, &self.conns);
    }
}

#[cfg(test)]
mod tests;
