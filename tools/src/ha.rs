//! The HA driver: runs the VRRP router and session sync (sans-IO cores in `xlb-ha`) on the HA interface
//! (`[ha]`, see `crate::ha_config`), and tells the workers what to own and which connections to install.
//!
//! HA traffic goes through the AF_XDP datapath: workers hand received VRRP and sync packets to these threads
//! over channels (`xlb_l4::forward::ha_tap`) and transmit the frames built here (adverts, sync datagrams,
//! gratuitous ARPs), from the node's own address on the HA interface. So HA fails with the datapath: a node whose
//! workers stop sends no adverts, and its peer takes over.
//!
//! - **VRRP thread**: adverts on a raw socket; on becoming master every worker is made active (owns the VIPs
//!   and floating local IPs, so it answers ARP for them) and gratuitous ARPs announce them; on becoming backup
//!   or on drain, workers become passive. A starting node waits for its bulk resync (or for no peer to answer)
//!   before it joins the election, so it never takes traffic back with an empty table.
//! - **Sync thread**: workers' sync events become reliable, authenticated sync messages to the group; messages
//!   from peers become `Import` / `Forget` messages to the worker that owns each flow.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use xlb_ha::frames::{garp_frame, multicast_frame, udp_packet, udp_payload, SYNC_MULTICAST_TTL};
use xlb_ha::net::MulticastMembership;
use xlb_ha::sync::{
    AuthKey, ConnKey, ConnRecord, RecvError, SyncAction, SyncConfig, SyncReceiver, SyncSender, MAX_MESSAGE_LEN,
};
use xlb_ha::vrrp::{open_envelope, VrrpConfig, VrrpEvent, VrrpRouter, VrrpState, VRRP_MULTICAST};
use xlb_l4::conn::Conn;
use xlb_l4::forward::ha_tap::HaOutbound;
use xlb_l4::forward::{ControlMessage, SyncEvent};
use xlb_l4::owner::flow_owner;
use xlb_stack::wake::Wake;
use xlb_stack::wire::EthernetAddress;
use xlb_stack::xsk::datapath::interface_mac;

use crate::config::Config;
use crate::placement::{floating_ips, ha_interface, ha_source, vip_interface, HaLink};

/// How long a starting node waits for a peer's bulk resync before it assumes it is alone.
const RESYNC_WAIT: Duration = Duration::from_secs(3);
/// Longest wait in either thread's loop (so a stop request is noticed promptly).
const TICK: Duration = Duration::from_millis(20);
/// Longest wait at shutdown for the workers to send the last frames (the priority-0 advert).
const FLUSH_WAIT: Duration = Duration::from_millis(500);

/// Where HA frames leave: the HA interface, and every interface's MAC (for gratuitous ARPs).
#[derive(Clone)]
struct Egress {
    out: Sender<HaOutbound>,
    wake: Arc<Wake>,
    iface: usize,
    macs: Vec<EthernetAddress>,
}

impl Egress {
    /// Sends a frame on interface `iface`; a full queue drops it (counted by the caller's protocol: VRRP and
    /// sync both recover from a lost packet).
    fn frame(&self, iface: usize, frame: Vec<u8>) {
        let _ = self.out.try_send(HaOutbound::Frame { iface, frame });
        self.wake.signal();
    }

    /// A multicast IPv4 packet on the HA interface.
    fn multicast(&self, packet: &[u8]) {
        self.frame(self.iface, multicast_frame(self.macs[self.iface], packet));
    }

    /// A unicast IPv4 packet, routed by the worker.
    fn routed(&self, packet: Vec<u8>) {
        let _ = self.out.try_send(HaOutbound::Routed(packet));
        self.wake.signal();
    }
}

/// What the HA threads publish for status and stats.
#[derive(Debug, Default)]
pub struct HaStatus {
    /// 0 initialize, 1 backup, 2 master.
    state: AtomicU8,
    /// The node finished its bulk resync (or found no peer).
    resynced: AtomicBool,
    /// Transitions to master.
    became_master: AtomicU64,
    /// Records sent and received, forged and replayed messages.
    records_sent: AtomicU64,
    records_received: AtomicU64,
    rejected: AtomicU64,
    /// Of the rejected: authentic messages seen before (replays).
    replayed: AtomicU64,
    vrrp_rejected: AtomicU64,
    draining: AtomicBool,
}

impl HaStatus {
    /// The status as the API reports it (`/v1/ha`, `ha` in the stats document).
    pub fn report(&self) -> xlb_api::Ha {
        let state = match self.state.load(Ordering::Relaxed) {
            2 => "master",
            1 => "backup",
            _ => "initialize",
        };
        xlb_api::Ha {
            state: state.to_string(),
            counters: Some(xlb_api::HaCounters {
                resynced: self.resynced.load(Ordering::Relaxed),
                draining: self.draining.load(Ordering::Relaxed),
                became_master: self.became_master.load(Ordering::Relaxed),
                sync_records_sent: self.records_sent.load(Ordering::Relaxed),
                sync_records_received: self.records_received.load(Ordering::Relaxed),
                sync_rejected: self.rejected.load(Ordering::Relaxed),
                sync_replayed: self.replayed.load(Ordering::Relaxed),
                vrrp_rejected: self.vrrp_rejected.load(Ordering::Relaxed),
            }),
        }
    }
}

/// The running HA threads. Dropping it hands mastership over (priority-0 advert) and stops them.
pub struct HaNode {
    stop: Arc<AtomicBool>,
    drain: Arc<AtomicBool>,
    status: Arc<HaStatus>,
    threads: Vec<JoinHandle<()>>,
    out: Sender<HaOutbound>,
    _membership: MulticastMembership,
}

impl HaNode {
    /// Status for the API.
    pub fn status(&self) -> Arc<HaStatus> {
        self.status.clone()
    }

    /// Hands mastership over to a peer and stays a backup (maintenance: then restart or upgrade the node).
    pub fn drain(&self) {
        self.drain.store(true, Ordering::Relaxed);
    }

    /// A handle that can request a drain from another thread.
    pub fn drain_handle(&self) -> Arc<AtomicBool> {
        self.drain.clone()
    }
}

impl Drop for HaNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Let the workers send what the threads queued last (the hand-over advert) before the datapath stops.
        let since = Instant::now();
        while !self.out.is_empty() && since.elapsed() < FLUSH_WAIT {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts HA for `config.ha`. `workers` are the workers' control channels, `events` their sync events, `link`
/// the channels to and from the workers for HA traffic.
pub fn start(
    config: &Config,
    workers: Vec<Sender<ControlMessage>>,
    events: Receiver<SyncEvent>,
    link: HaLink,
) -> Result<HaNode, String> {
    let ha = config.ha.clone().ok_or("no [ha] section")?;
    let ha_iface = ha_interface(config)?;
    let source = ha_source(config)?;
    let key = AuthKey::load(&ha.auth_key_file).map_err(|e| format!("ha.auth_key_file: {e}"))?;
    let node_id = node_id(&config.node.name);
    let sync_config = SyncConfig::new(node_id, xlb_ha::sync::random_epoch());
    let sender = SyncSender::new(sync_config.clone(), key.clone(), Instant::now()).map_err(|e| format!("ha: {e}"))?;
    let receiver = SyncReceiver::new(sync_config, key).map_err(|e| format!("ha: {e}"))?;
    let membership = MulticastMembership::join(&ha.interface, &[VRRP_MULTICAST, *ha.sync_group.ip()])
        .map_err(|e| format!("ha.interface: joining the HA multicast groups on {}: {e}", ha.interface))?;

    // What moves: VIPs (announced on their interfaces) and floating local IPs.
    let vips: Vec<Ipv4Addr> = if ha.vips.is_empty() {
        let mut v: Vec<Ipv4Addr> = config.listeners.iter().map(|l| l.vip).collect();
        v.sort();
        v.dedup();
        v
    } else {
        ha.vips.clone()
    };
    let mut announce: Vec<(usize, Ipv4Addr)> = vips
        .iter()
        .map(|vip| {
            let iface = config
                .listeners
                .iter()
                .find(|l| l.vip == *vip)
                .map_or(0, |l| vip_interface(config, l));
            (iface, *vip)
        })
        .collect();
    announce.extend(floating_ips(config));
    let mut macs = Vec::new();
    for iface in &config.interfaces {
        macs.push(interface_mac(&iface.name).map_err(|e| e.to_string())?);
    }
    let egress = Egress {
        out: link.out.clone(),
        wake: link.wake.clone(),
        iface: ha_iface,
        macs,
    };

    let mut vrrp_config = VrrpConfig::new(ha.vrid, ha.priority, source, vips);
    vrrp_config.advert_interval_cs = ha.advert_interval_cs;
    vrrp_config.preempt = ha.preempt;
    vrrp_config.preempt_delay = Duration::from_millis(ha.preempt_delay_ms);
    vrrp_config.validate().map_err(|e| format!("ha: {e}"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let drain = Arc::new(AtomicBool::new(false));
    let status = Arc::new(HaStatus::default());
    let sync = {
        let (stop, status, workers, egress) = (stop.clone(), status.clone(), workers.clone(), egress.clone());
        let peers: Vec<SocketAddrV4> = ha
            .peers
            .iter()
            .map(|p| SocketAddrV4::new(*p, ha.sync_group.port()))
            .collect();
        let (group, source, inbound) = (
            ha.sync_group,
            SocketAddrV4::new(source, ha.sync_group.port()),
            link.sync,
        );
        std::thread::Builder::new()
            .name("xlb-ha-sync".into())
            .spawn(move || {
                SyncLoop {
                    sender,
                    receiver,
                    inbound,
                    egress,
                    source,
                    group,
                    peers,
                    workers,
                    events,
                    status,
                    pending_bulk: Vec::new(),
                }
                .run(&stop)
            })
            .map_err(|e| e.to_string())?
    };
    let vrrp = {
        let (stop, drain, status, inbound) = (stop.clone(), drain.clone(), status.clone(), link.vrrp);
        std::thread::Builder::new()
            .name("xlb-ha-vrrp".into())
            .spawn(move || {
                VrrpLoop {
                    router: VrrpRouter::new(vrrp_config, Instant::now()),
                    inbound,
                    egress,
                    announce,
                    workers,
                    status,
                }
                .run(&stop, &drain)
            })
            .map_err(|e| e.to_string())?
    };
    tracing::info!(vrid = ha.vrid, priority = ha.priority, %source, group = %ha.sync_group, node_id, "HA started: resyncing, then joining the election");
    Ok(HaNode {
        stop,
        drain,
        status,
        threads: vec![sync, vrrp],
        out: link.out,
        _membership: membership,
    })
}

/// A stable, non-zero node id from the node name.
fn node_id(name: &str) -> u32 {
    let h = name
        .bytes()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    h.max(1)
}

struct VrrpLoop {
    router: VrrpRouter,
    inbound: Receiver<Vec<u8>>,
    egress: Egress,
    announce: Vec<(usize, Ipv4Addr)>,
    workers: Vec<Sender<ControlMessage>>,
    status: Arc<HaStatus>,
}

impl VrrpLoop {
    fn set_active(&self, active: bool) {
        for w in &self.workers {
            let _ = w.send_timeout(ControlMessage::SetActive(active), Duration::from_secs(1));
        }
    }

    fn garp(&self, iface: usize, ip: Ipv4Addr) {
        if let Some(mac) = self.egress.macs.get(iface) {
            self.egress.frame(iface, garp_frame(*mac, ip));
        }
    }

    fn announce(&self) {
        for (iface, ip) in &self.announce {
            self.garp(*iface, *ip);
        }
    }

    fn flush(&mut self, now: Instant, buf: &mut [u8]) {
        while let Some(len) = self.router.poll_transmit(now, buf) {
            self.egress.multicast(&buf[..len]);
        }
        while let Some(event) = self.router.poll_event() {
            match event {
                VrrpEvent::BecameMaster => {
                    self.set_active(true);
                    self.status.state.store(2, Ordering::Relaxed);
                    self.status.became_master.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("HA: became MASTER: taking the VIPs and floating local IPs");
                    self.announce();
                }
                VrrpEvent::BecameBackup => {
                    self.set_active(false);
                    self.status.state.store(1, Ordering::Relaxed);
                    tracing::warn!("HA: became BACKUP");
                }
                VrrpEvent::Stopped => {
                    self.set_active(false);
                    self.status.state.store(0, Ordering::Relaxed);
                    tracing::warn!("HA: stopped (handed over)");
                }
                VrrpEvent::AddressMismatch { from } => {
                    tracing::warn!(%from, "HA: peer advertises other virtual addresses")
                }
            }
        }
        // Repeated announcements after a takeover (the router spaces them).
        while let Some(vip) = self.router.poll_garp() {
            if let Some((iface, _)) = self.announce.iter().find(|(_, ip)| *ip == vip) {
                self.garp(*iface, vip);
            }
        }
    }

    fn run(mut self, stop: &AtomicBool, drain: &AtomicBool) {
        let mut buf = vec![0u8; 2048];
        // Join the election only once resynced: a restarted node must not take traffic with an empty table.
        while !self.status.resynced.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(TICK);
            // Adverts heard before joining are stale by the time the router starts.
            while self.inbound.try_recv().is_ok() {}
        }
        self.router.start(Instant::now());
        self.status.state.store(1, Ordering::Relaxed);
        let mut drained = false;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if drain.load(Ordering::Relaxed) && !drained {
                drained = true;
                self.status.draining.store(true, Ordering::Relaxed);
                tracing::warn!("HA: draining: handing mastership over (priority 0)");
                self.router.shutdown(now);
            }
            if self.router.poll_timeout().is_some_and(|t| t <= now) {
                self.router.handle_timeout(now);
            }
            self.flush(now, &mut buf);
            let wait = self
                .router
                .poll_timeout()
                .map_or(TICK, |t| t.saturating_duration_since(now).min(TICK));
            if let Ok(first) = self.inbound.recv_timeout(wait) {
                for packet in std::iter::once(first).chain(self.inbound.try_iter()) {
                    // The stack validated the IPv4 header.
                    if drained {
                        continue;
                    }
                    let Some((src, ttl, vrrp)) = open_envelope(&packet) else {
                        self.status.vrrp_rejected.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if self
                        .router
                        .handle_advertisement(Instant::now(), src, ttl, vrrp)
                        .is_err()
                    {
                        self.status.vrrp_rejected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let now = Instant::now();
                self.flush(now, &mut buf);
            }
        }
        if !drained && self.router.state() == VrrpState::Master {
            // Clean hand-over on shutdown: the peer takes over after its skew time, not 3 intervals.
            let now = Instant::now();
            self.router.shutdown(now);
            self.flush(now, &mut buf);
        }
    }
}

struct SyncLoop {
    sender: SyncSender,
    receiver: SyncReceiver,
    inbound: Receiver<Vec<u8>>,
    egress: Egress,
    /// Our HA address and the sync port: the source of every sync datagram.
    source: SocketAddrV4,
    group: SocketAddrV4,
    peers: Vec<SocketAddrV4>,
    workers: Vec<Sender<ControlMessage>>,
    events: Receiver<SyncEvent>,
    status: Arc<HaStatus>,
    /// Records of a bulk answer not yet queued (the sender's room is bounded), and the request to end it.
    pending_bulk: Vec<(Vec<ConnRecord>, xlb_ha::sync::PeerId, u32)>,
}

impl SyncLoop {
    fn send(&self, bytes: &[u8]) {
        self.egress
            .multicast(&udp_packet(self.source, self.group, SYNC_MULTICAST_TTL, bytes));
        for p in &self.peers {
            self.send_to(bytes, *p);
        }
    }

    fn send_to(&self, bytes: &[u8], to: SocketAddrV4) {
        self.egress.routed(udp_packet(self.source, to, 64, bytes));
    }

    /// The whole connection table of this node, from every worker.
    fn export(&self) -> Vec<ConnRecord> {
        let (tx, rx) = bounded(self.workers.len());
        for w in &self.workers {
            let _ = w.send_timeout(ControlMessage::Export { reply: tx.clone() }, Duration::from_secs(1));
        }
        let mut records = Vec::new();
        for _ in 0..self.workers.len() {
            if let Ok(conns) = rx.recv_timeout(Duration::from_secs(2)) {
                records.extend(conns.iter().map(|(c, remaining)| ConnRecord::from_conn(c, *remaining)));
            }
        }
        records
    }

    fn act(&mut self, now: Instant, imports: &mut [Vec<(Conn, Duration)>], forgets: &mut [Vec<xlb_l4::conn::FlowKey>]) {
        let n = self.workers.len();
        while let Some(action) = self.receiver.poll_action() {
            match action {
                SyncAction::Upsert(record) => {
                    let parts = record.to_conn_parts();
                    let remaining = parts.remaining;
                    let conn = parts.into_conn(0, 0);
                    imports[flow_owner(&conn.client_key(), n)].push((conn, remaining));
                    self.status.records_received.fetch_add(1, Ordering::Relaxed);
                }
                SyncAction::Delete(key) => {
                    let flow = key.flow_key();
                    forgets[flow_owner(&flow, n)].push(flow);
                }
                SyncAction::SendAck { to, bytes } => {
                    if let SocketAddr::V4(to) = to {
                        self.send_to(&bytes, to);
                    }
                }
                SyncAction::PeerHeard { peer } => self.sender.handle_heartbeat(now, peer),
                SyncAction::PeerAck { peer, ack } => self.sender.handle_ack(now, peer, &ack),
                SyncAction::BulkRequested { from, request } => {
                    let records = self.export();
                    tracing::info!(peer = from.node_id, conns = records.len(), "HA: bulk resync requested");
                    self.pending_bulk.push((records, from, request));
                }
                SyncAction::BulkComplete { from } => {
                    self.status.resynced.store(true, Ordering::Relaxed);
                    tracing::info!(peer = from.node_id, "HA: bulk resync complete");
                }
                SyncAction::Gap { from, .. } => {
                    tracing::warn!(peer = from.node_id, "HA: sync gap: requesting a bulk resync");
                    let request = self.receiver.begin_resync();
                    let _ = self.sender.queue_bulk_request(request);
                }
            }
        }
    }

    fn feed_bulk(&mut self) {
        while let Some((records, from, request)) = self.pending_bulk.last_mut() {
            while self.sender.room() > 0 {
                let Some(r) = records.pop() else { break };
                if self.sender.queue_update(r).is_ok() {
                    self.status.records_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            if !records.is_empty() {
                return;
            }
            let (from, request) = (*from, *request);
            if self.sender.queue_bulk_end(from, request).is_err() {
                return;
            }
            self.pending_bulk.pop();
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        let started = Instant::now();
        let request = self.receiver.begin_resync();
        let _ = self.sender.queue_bulk_request(request);
        let mut buf = vec![0u8; MAX_MESSAGE_LEN.max(2048)];
        let n = self.workers.len();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if !self.status.resynced.load(Ordering::Relaxed)
                && (self.receiver.resynced() || (now - started >= RESYNC_WAIT && self.sender.peers().next().is_none()))
            {
                self.status.resynced.store(true, Ordering::Relaxed);
                tracing::info!("HA: no peer to resync from (or resync done): joining the election");
            }
            for event in self.events.try_iter().take(4096) {
                let queued = match event {
                    SyncEvent::Upsert { conn, remaining } => {
                        self.sender.queue_update(ConnRecord::from_conn(&conn, remaining))
                    }
                    SyncEvent::Delete(key) => self.sender.queue_delete(ConnKey::from_flow_key(&key)),
                };
                if queued.is_ok() {
                    self.status.records_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.feed_bulk();
            while let Some(len) = self.sender.poll_transmit(now, &mut buf) {
                let bytes = buf[..len].to_vec();
                self.send(&bytes);
            }
            let wait = self.sender.poll_timeout().saturating_duration_since(now).min(TICK);
            let Ok(first) = self.inbound.recv_timeout(wait) else {
                continue;
            };
            let mut imports: Vec<Vec<(Conn, Duration)>> = vec![Vec::new(); n];
            let mut forgets: Vec<Vec<xlb_l4::conn::FlowKey>> = vec![Vec::new(); n];
            let received: Vec<Vec<u8>> = std::iter::once(first).chain(self.inbound.try_iter()).collect();
            for packet in &received {
                let now = Instant::now();
                let Some((from, payload)) = udp_payload(packet) else {
                    self.status.rejected.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if let Err(e) = self.receiver.handle_message(now, SocketAddr::V4(from), payload) {
                    self.status.rejected.fetch_add(1, Ordering::Relaxed);
                    if e == RecvError::Replayed {
                        self.status.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.act(now, &mut imports, &mut forgets);
            }
            for (w, (imports, forgets)) in imports.into_iter().zip(forgets).enumerate() {
                if !imports.is_empty() {
                    let _ = self.workers[w].send_timeout(ControlMessage::Import(imports), Duration::from_secs(1));
                }
                if !forgets.is_empty() {
                    let _ = self.workers[w].send_timeout(ControlMessage::Forget(forgets), Duration::from_secs(1));
                }
            }
        }
    }
}
