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
mod control;
mod exhaustion;
mod flow;
mod ha_relay;
pub mod ha_tap;
pub mod handoff;
mod handoff_relay;
mod housekeeping;
pub mod icmp;
mod icmp_relay;
mod listener;
/// The local ports, shared with the other stages of the worker (moved to the stack).
pub use xlb_stack::ports as lports;
pub mod nat;
mod passed;
mod scan;
mod sync;
pub mod synproxy;
pub mod validate;

pub use control::{ConnFilter, ConnInfo, ControlMessage, ForwarderConfig, ForwarderUpdate};
pub use sync::SyncEvent;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use xlb_stack::drops::DropReason;
use xlb_stack::local::{Handled, Ipv4Handler, StackContext};
use xlb_stack::pipeline::{Frame, PortId, Verdict};
use xlb_stack::service::{Service, StageId};
use xlb_stack::wire::{Ipv4Header, PacketSummary, Protocol, ETH_HEADER_LEN, TCP_HEADER_LEN, UDP_HEADER_LEN};

use crate::config::{SynProxyMode, PROBE_PORTS, PROBE_PORT_BASE};
use crate::conn::{ConnTable, FlowHash, FlowKey, Proto};
use crate::drops::L4Drops;
use crate::health::HealthChecker;
use crate::layout::Layout;
use crate::owner;
use crate::sched::MaglevTables;
use crate::stats::{HealthBoard, L4Counters, SharedL4Counters};
use crate::sync_policy::SyncPolicy;
use exhaustion::ExhaustionWarnings;
use flow::{deliver, toward_client, Ending};
use ha_tap::{HaOutbound, HaTap};
use handoff::Handoff;
use listener::Listener;
use lports::{FlowIds, LocalPorts};

/// Connections visited per expiry call at least; the budget grows by twice the connections inserted since the
/// last call, so expiry keeps up with any insert rate, and a backlog is worked off over the next turns instead of
/// stalling one.
const EXPIRE_BASE_BUDGET: usize = 256;
/// How often counters are published and the health board is read.
const HOUSEKEEPING: Duration = Duration::from_millis(100);

/// This stage's id in the stack's service table ([`xlb_stack::service`]).
pub const L4_STAGE: StageId = 1;
/// Service slot of the FULLNAT reply range of a local IP (other slots are listener indices).
const REPLY_SLOT: u32 = lports::LOCAL_PORTS_SLOT;
/// Service slot of the health-probe ports of a local IP.
const PROBE_SLOT: u32 = u32::MAX - 1;

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

impl Role {
    /// The L4 role of a service registered in the stack's table, if it is this stage's.
    fn of(service: Option<Service>) -> Option<Role> {
        let s = service.filter(|s| s.stage == L4_STAGE)?;
        Some(match s.slot {
            REPLY_SLOT => Role::Reply,
            PROBE_SLOT => Role::Probe,
            l => Role::Listener(l as usize),
        })
    }

    /// The service this role is registered as.
    fn service(self) -> Service {
        let slot = match self {
            Role::Listener(l) => l as u32,
            Role::Reply => REPLY_SLOT,
            Role::Probe => PROBE_SLOT,
        };
        Service { stage: L4_STAGE, slot }
    }
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
    /// Whether the stack's service table must be told this stage's services again.
    services_dirty: bool,
    /// Whether this node serves (an HA master, or no HA): only then are VIPs and floating IPs owned.
    active: bool,
    /// Floating local IPs of an HA pair, as (interface index, address).
    floating_ips: Vec<(usize, Ipv4Addr)>,
    conns: ConnTable,
    /// Keys and hashes of the received batch, from [`Ipv4Handler::prefetch`].
    prefetched: batch::Prefetched,
    /// Handed-over replies for the next stage ([`Ipv4Handler::poll_passed`]).
    passed: passed::PassedFrames,
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
    /// The Maglev tables of the listeners that use one, as last sent by the control side.
    maglev: Arc<MaglevTables>,
    control: Option<Receiver<ControlMessage>>,
    /// Table walks for dumps and exports, done a chunk per turn.
    scans: scan::Scans,
    /// The time of the last timer call (a due time for [`Ipv4Handler::poll_timeout`] while a walk runs).
    last_timer: Instant,
    /// Session-sync events waiting for the next flush (with HA).
    sync: Option<sync::SyncOutbox>,
    sync_policy: SyncPolicy,
    /// HA traffic to and from the HA driver.
    ha: Option<HaTap>,
    /// HA packets received in this batch, for the HA driver (see [`Forwarder::flush_ha`]).
    ha_outbox: Vec<(ha_tap::HaKind, Vec<u8>)>,
    ha_groups_owned: bool,
    counters: L4Counters,
    shared: Arc<SharedL4Counters>,
    next_housekeeping: Instant,
    /// Table inserts when expiry last ran (its budget follows the insert rate).
    inserted_at_expiry: u64,
    /// Once-per-interval warnings for exhausted resources.
    warnings: ExhaustionWarnings,
    /// SYN cookie secrets (the SYN proxy).
    cookies: synproxy::SynCookies,
    /// Client segments of SYN-proxied connections waiting for their server's SYN-ACK.
    held: synproxy::HeldSegments,
    /// `[l4]` settings of the flood defences (they need a restart, like the rest of `[l4]`).
    defence: Defence,
    /// Where the walk that shortens the timeouts of entries made before the pressure started goes on.
    pressure_walk: Option<usize>,
}

/// The `[l4]` settings of the flood defences.
#[derive(Debug, Clone, Copy)]
struct Defence {
    syn_proxy: SynProxyMode,
    syn_proxy_threshold: u32,
    pressure_percent: u8,
    listener_max_conns: usize,
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
        let listeners: Vec<Listener> = (config.layout.listeners.iter().enumerate())
            .map(|(l, slot)| Listener::from_slot(slot, config.maglev.get(l)))
            .collect();
        let iface_ports = config
            .port_ifaces
            .iter()
            .enumerate()
            .map(|(port, iface)| (*iface, port))
            .collect();
        let defence = Defence {
            syn_proxy: config.l4.syn_proxy,
            syn_proxy_threshold: config.l4.syn_proxy_threshold,
            pressure_percent: config.l4.pressure_percent,
            listener_max_conns: config.l4.listener_max_conns,
        };
        let mut f = Forwarder {
            cookies: synproxy::SynCookies::new(now),
            held: synproxy::HeldSegments::default(),
            pressure_walk: None,
            defence,
            conns: ConnTable::new(config.l4.conn_table_size, config.l4.timeouts.clone(), now),
            prefetched: batch::Prefetched::new(),
            passed: passed::PassedFrames::default(),
            counters: L4Counters::new(&config.layout.shape()),
            layout: config.layout,
            by_endpoint: HashMap::default(),
            vip_ifaces: config.vip_ifaces,
            owned_vips: Vec::new(),
            vips_dirty: true,
            services_dirty: true,
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
            maglev: config.maglev,
            control,
            sync: None,
            scans: scan::Scans::new(),
            last_timer: now,
            sync_policy: SyncPolicy::default(),
            ha: None,
            ha_outbox: Vec::new(),
            ha_groups_owned: false,
            shared,
            next_housekeeping: now,
            inserted_at_expiry: 0,
            warnings: ExhaustionWarnings::default(),
        };
        f.index_endpoints();
        for l in 0..f.listeners.len() {
            f.update_guard(now, l); // `always` is on from the first packet
        }
        f
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

    /// The role of a packet to `dst`, from the stack's service table (for packets that did not come through
    /// the stack's own lookup: handed over by another worker, or quoted in an ICMP error).
    fn role(cx: &StackContext<'_>, proto: Proto, dst: SocketAddrV4) -> Option<Role> {
        Role::of(cx.services.lookup(*dst.ip(), proto.transport(), dst.port()))
    }

    /// The worker that owns a packet's flow.
    fn owner(&self, role: Role, key: &FlowKey, hash: FlowHash) -> usize {
        if self.workers == 1 {
            return 0;
        }
        match role {
            Role::Listener(_) => owner::owner_of_hash(hash, self.workers),
            Role::Reply => owner::local_port_owner(key.dst.port(), self.workers),
            Role::Probe => owner::PROBE_OWNER,
        }
    }

    /// Handles a packet this worker owns.
    #[allow(clippy::too_many_arguments)]
    fn process_owned(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &PacketSummary,
        key: FlowKey,
        hash: FlowHash,
        role: Role,
        cx: &mut StackContext<'_>,
    ) -> Handled {
        match role {
            Role::Listener(l) => {
                let handled = match self.conns.lookup_hashed(&key, hash) {
                    Some(id) if self.starts_over(id, ip) => {
                        // The old entry goes; its local port stays taken until the new flow has chosen its
                        // server: on the same server the new flow continues on the same tuple.
                        let old = self.end_early(id);
                        self.counters.rescheduled += 1;
                        let mut reusable = Some(old);
                        let handled = self.new_flow(now, l, port, frame, ip, key, &mut reusable, cx);
                        if let Some(old) = reusable {
                            self.release_port(now, &old, Ending::Early, cx.ports);
                        }
                        handled
                    }
                    Some(id) => self.forward_client(now, id, port, frame, ip, cx),
                    None => self.new_flow(now, l, port, frame, ip, key, &mut None, cx),
                };
                self.count_listener_drop(l, &handled);
                handled
            }
            Role::Reply => match self.conns.lookup_hashed(&key, hash) {
                Some(id) => {
                    let l = usize::from(self.conns.get(id).listener);
                    let handled = Handled::Verdict(self.forward_reply(now, id, frame, ip, cx));
                    self.count_listener_drop(l, &handled);
                    handled
                }
                // A reply to a port an upstream connection of the next stage holds is that stage's.
                None if cx.ports.is_upstream(*key.dst.ip(), key.src, key.dst.port()) => Handled::Pass,
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
}

impl Ipv4Handler for Forwarder {
    fn handle(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &PacketSummary,
        cx: &mut StackContext<'_>,
    ) -> Handled {
        self.prefetched.stage(&self.conns);
        if let Some(handled) = self.tap_ha(frame) {
            return handled;
        }
        let proto = match ip.protocol {
            Protocol::Tcp => Proto::Tcp,
            Protocol::Udp => Proto::Udp,
            Protocol::Icmp => return self.handle_icmp(now, port, frame, ip, cx),
            Protocol::Other(_) => return Handled::Pass,
        };
        let header = if proto == Proto::Tcp {
            TCP_HEADER_LEN
        } else {
            UDP_HEADER_LEN
        };
        let Some((src, dst)) = ip.endpoints().filter(|_| ip.l4_len() >= header) else {
            return Handled::Pass; // the local stack counts it as malformed
        };
        let key = FlowKey { proto, src, dst };
        let Some(role) = Role::of(ip.service) else {
            return Handled::Pass;
        };
        let hash = self.prefetched.hash(&key);
        if role != Role::Probe && !nat::ttl_allows_forwarding(frame.data()) {
            // As a router (and IPVS) does: a packet to forward whose TTL ran out goes no further, before any
            // entry, server or port is taken for it; the stack answers ICMP time exceeded.
            let handled = Handled::Reject(DropReason::TtlExceeded);
            if let Role::Listener(l) = role {
                self.count_listener_drop(l, &handled);
            }
            return handled;
        }
        let owner = self.owner(role, &key, hash);
        if owner != self.worker {
            let handled = self.hand_off(owner, port, frame);
            if let Role::Listener(l) = role {
                self.count_listener_drop(l, &handled);
            }
            return handled;
        }
        self.process_owned(now, port, frame, ip, key, hash, role, cx)
    }

    /// Hashes the packet's flow key once for the batch and starts loading its index bucket.
    #[inline]
    fn prefetch(&mut self, _port: PortId, _frame: &[u8], ip: &PacketSummary) {
        let proto = match ip.protocol {
            Protocol::Tcp => Proto::Tcp,
            Protocol::Udp => Proto::Udp,
            _ => return,
        };
        let Some((src, dst)) = ip.endpoints() else {
            return;
        };
        let key = FlowKey { proto, src, dst };
        self.prefetched.push(&self.conns, key, FlowHash::of(&key));
    }

    fn attach(&mut self, cx: &mut StackContext<'_>) {
        self.register_services(cx);
    }

    fn poll_passed(&mut self, buf: &mut [u8]) -> Option<(PortId, usize)> {
        self.passed.pop(buf)
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
            let dst = Ipv4Header::new_unchecked(&buf[ETH_HEADER_LEN..]).dst();
            if let Ok(port) = cx.deliver(now, buf, ETH_HEADER_LEN + len, dst) {
                return Some((port, ETH_HEADER_LEN + len));
            }
        }
        None
    }

    /// Delivers what the batch queued: frames for other workers, HA packets, session-sync events.
    fn flush_events(&mut self, cx: &mut StackContext<'_>) {
        self.flush_handoff(cx);
        self.flush_ha(cx);
        self.flush_sync();
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let h = self.health.as_ref().and_then(HealthChecker::poll_timeout);
        let mut next = self.next_housekeeping.min(self.conns.next_expiry());
        if !self.scans.is_empty() {
            next = self.last_timer; // the walk continues at the next turn
        }
        Some(h.map_or(next, |h| h.min(next)))
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        let tap = self.ha.as_ref()?;
        tap.outbound.as_ref().map(|_| tap.wake.fd())
    }

    fn handle_timeout(&mut self, now: Instant, cx: &mut StackContext<'_>) {
        self.last_timer = now;
        self.handle_control(now, cx.ports);
        self.scan_step(now);
        if self.services_dirty {
            self.register_services(cx);
        }
        if self.vips_dirty {
            self.reconcile_vips(cx);
        }
        self.own_ha_groups(cx);
        self.run_health(now);
        self.expire(now, cx.ports);
        self.flush_sync();
        self.housekeeping(now, cx.ports);
    }
}

#[cfg(test)]
mod tests;
