//! The L7 stage: HTTP listeners terminated in the worker's own stack and proxied to server groups.
//!
//! A stage of the worker's pipeline like L4 (see [`xlb_stack::stages`]): it registers its listeners'
//! VIP:ports in the service table, and receives the TCP segments the table gives it. Segments go to the
//! in-stack TCP host ([`crate::tcp`]); a SYN to a listener opens a client connection with its own
//! [`HttpProxy`] ([`session`]); the proxy's upstream connections are opened by the same host from the local IP
//! that routes to the server, on a local port this worker owns, taken from the worker's pools that L4's
//! FULLNAT flows take theirs from too ([`xlb_stack::ports`]); it goes back when the connection is gone. The
//! replies come back to this worker (run to completion: a client connection and its upstream connections live
//! on one worker): the local-port range is L4's service, which passes the replies it has no flow for, to ports
//! upstream connections hold, on to this stage (a stage alone registers the range itself). Servers are picked by the group's scheduler among those the health board
//! says are up (the checks are L4's); idle upstream connections are kept per server for the next request
//! ([`upstreams`]).
//!
//! Segments that reached another worker's queue (the NIC's hash is not xlb's) are handed to the owner: the
//! client side by the same flow hash L4 uses, upstream replies by the local port (`xlb_l4::owner`).

pub mod access;
pub mod counters;
pub mod maglev;
mod session;
mod streams;
mod token;
pub mod upstreams;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use xlb_l4::conn::{FlowHash, FlowKey, Proto};
use xlb_l4::drops::L4Drops;
use xlb_l4::forward::handoff::Handoff;
use xlb_l4::owner::{local_port_owner, owner_of_hash};
use xlb_l4::sched::MaglevTables;
use xlb_l4::stats::HealthBoard;
use xlb_stack::drops::DropReason;
use xlb_stack::local::{route, Handled, Ipv4Handler, StackContext};
use xlb_stack::pipeline::{Frame, PortId, Verdict};
use xlb_stack::ports::{LocalPorts, LOCAL_PORTS_SLOT};
use xlb_stack::service::{Service, StageId, Transport};
use xlb_stack::wire::{PacketSummary, Protocol, ETH_HEADER_LEN};

use crate::config::L7Config;
use crate::drops::L7Drops;
use crate::h2::H2Limits;
use crate::proxy::{HttpProxy, ProxyConfig};
use crate::rules::GroupId;
use crate::tcp::{BadSegment, ConnId, Ingress, TcpConfig, TcpHost};
use crate::tls::handshake::HandshakeClient;
use crate::tls::link::TlsLink;
use access::{AccessLine, AccessOutbox};
use counters::{L7Count, L7Counters, SharedL7Counters};
use session::{Io, Session};
use token::Token;
use upstreams::{GroupSpec, Upstreams};

/// The L7 stage's id in the service table.
pub const L7_STAGE: StageId = 2;

/// The service slot of upstream replies (the local-port range of a local IP); listeners use their index.
const REPLY_SLOT: u32 = LOCAL_PORTS_SLOT;

/// Dead timer entries tolerated beyond twice the live sessions before the heap is compacted.
#[cfg(not(test))]
const TIMER_SLACK: usize = 4096;
/// Small in tests, so a few hundred streams show the compaction.
#[cfg(test)]
const TIMER_SLACK: usize = 64;
/// How often counters are published and idle connections expired.
const HOUSEKEEPING: Duration = Duration::from_millis(100);

/// How often a worker with handshakes on the pool looks for their results when nothing wakes it.
const HANDSHAKE_POLL: Duration = Duration::from_millis(1);

/// How often refusals are logged (once per interval, with the cause and the fix).
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// An HTTP listener of the stage.
#[derive(Clone, Debug)]
pub struct StageListener {
    /// Name (logs).
    pub name: String,
    /// VIP and port.
    pub vip: SocketAddrV4,
    /// The proxy settings of its connections.
    pub proxy: Arc<ProxyConfig>,
    /// TLS settings of an HTTPS listener (`None`: plain HTTP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Everything an L7 stage is built from.
pub struct L7StageConfig {
    /// Limits, timeouts, ports and pool sizes (`[l7]`).
    pub limits: L7Config,
    /// HTTP listeners (index = service slot).
    pub listeners: Vec<StageListener>,
    /// Server groups (index = [`GroupId`] of the listeners' rules).
    pub groups: Vec<GroupSpec>,
    /// The health board L4's checker writes.
    pub board: Arc<HealthBoard>,
    /// The Maglev tables of the `mh` groups (built by the control side, shared by every worker: [`maglev`]).
    pub maglev: Arc<MaglevTables>,
    /// This worker and the number of workers.
    pub worker: usize,
    /// Number of workers.
    pub workers: usize,
    /// Config interface index of each of the worker's ports.
    pub port_ifaces: Vec<usize>,
    /// Where access-log lines go (`None`: no access log).
    pub access_log: Option<Sender<AccessLine>>,
    /// This worker's end of the TLS handshake pool (needed by HTTPS listeners).
    pub handshakes: Option<HandshakeClient>,
}

/// A live change for the stage: the groups (servers, weights, health targets) and the health board of the new
/// configuration. Listener changes need a restart.
pub struct L7Update {
    /// The groups, in the same order as before (rules refer to them by index).
    pub groups: Vec<GroupSpec>,
    /// The new health board.
    pub board: Arc<HealthBoard>,
    /// The Maglev tables of the new groups.
    pub maglev: Arc<MaglevTables>,
}

/// What the control side sends a running stage (taken between batches).
pub enum L7Message {
    /// A configuration change of the groups.
    Update(L7Update),
    /// New Maglev tables of the `mh` groups after a health change (the same `Arc` goes to every worker).
    Maglev(Arc<MaglevTables>),
}

/// A session slot.
struct Slot {
    generation: u32,
    /// Boxed: a session (~1 KiB) leaves its slot and comes back on every run (see [`L7Stage::pump`]).
    session: Option<Box<Session>>,
}

/// The L7 stage of one worker.
pub struct L7Stage {
    worker: usize,
    workers: usize,
    host: TcpHost,
    listeners: Vec<StageListener>,
    upstreams: Upstreams,
    slots: Vec<Slot>,
    free: Vec<u32>,
    sessions: usize,
    /// Proxy timers: (due, slot, generation). A session has at most one live entry (`Session::timer_armed`):
    /// a later deadline keeps the earlier entry, which re-files the session when it fires. Entries of ended
    /// sessions are skipped, and dropped in bulk when they outnumber the sessions (see [`Self::arm`]).
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// Sessions with something to do after the current segment or timer.
    touched: Vec<u32>,
    counters: L7Counters,
    shared: Arc<SharedL7Counters>,
    next_housekeeping: Instant,
    warned: (Instant, L7Counters),
    handoff: Option<Handoff>,
    port_ifaces: Vec<usize>,
    /// The latest time seen (a due time for work that cannot wait).
    last_now: Instant,
    updates: Option<Receiver<L7Message>>,
    /// The `mh` groups' tables in use (the snapshot last received).
    maglev: Arc<MaglevTables>,
    access_log: Option<AccessOutbox>,
    /// Listener names, shared with their sessions (access log).
    listener_names: Vec<Arc<str>>,
    handshakes: Option<HandshakeClient>,
    /// Why the last TLS handshake with a server failed (logged with the interval's warning).
    upstream_tls_error: Option<String>,
    /// HTTP/2 limits (`None`: HTTP/2 is off, `l7.http2 = false`).
    h2: Option<H2Limits>,
}

impl L7Stage {
    /// A stage for `config`, publishing its counters to `shared`; `handoff` links it to the other workers'
    /// L7 stages (needed with more than one worker).
    pub fn new(
        config: L7StageConfig,
        shared: Arc<SharedL7Counters>,
        handoff: Option<Handoff>,
        now: Instant,
    ) -> L7Stage {
        let limits = &config.limits;
        let tcp = TcpConfig {
            rx_buffer: limits.socket_buffer_bytes,
            tx_buffer: limits.socket_buffer_bytes,
            max_connections: limits.max_connections,
            idle_buffer: limits.idle_buffer_bytes,
            ..TcpConfig::default()
        };
        let upstreams = Upstreams::new(
            &config.groups,
            config.board,
            &config.maglev,
            limits.upstream_keepalive,
            Duration::from_secs(limits.upstream_idle_timeout_s),
        );
        let listener_names = config.listeners.iter().map(|l| Arc::from(l.name.as_str())).collect();
        let seed = 0x9e37_79b9_7f4a_7c15 ^ (config.worker as u64).wrapping_mul(0x2545_f491_4f6c_dd1d);
        L7Stage {
            worker: config.worker,
            workers: config.workers.max(1),
            host: TcpHost::new(tcp, now, seed ^ nanos_since_epoch()),
            listeners: config.listeners,
            upstreams,
            slots: Vec::new(),
            free: Vec::new(),
            sessions: 0,
            timers: BinaryHeap::new(),
            touched: Vec::new(),
            counters: L7Counters::default(),
            shared,
            next_housekeeping: now,
            warned: (now, L7Counters::default()),
            handoff,
            port_ifaces: config.port_ifaces,
            last_now: now,
            updates: None,
            maglev: config.maglev,
            access_log: config.access_log.map(AccessOutbox::new),
            listener_names,
            handshakes: config.handshakes,
            upstream_tls_error: None,
            h2: config.limits.http2.then(|| config.limits.h2_limits()),
        }
    }

    /// Takes live changes from `updates` (applied between batches, in `handle_timeout`).
    pub fn set_updates(&mut self, updates: Receiver<L7Message>) {
        self.updates = Some(updates);
    }

    fn apply_updates(&mut self, now: Instant) {
        while let Some(message) = self.updates.as_ref().and_then(|u| u.try_recv().ok()) {
            match message {
                L7Message::Update(update) => {
                    (self.upstreams).update(now, &mut self.host, &update.groups, update.board, &update.maglev);
                    self.maglev = update.maglev;
                }
                L7Message::Maglev(tables) => {
                    self.upstreams.use_maglev(&tables);
                    self.maglev = tables;
                }
            }
        }
    }

    /// The Maglev tables of the `mh` groups in use (the snapshot last received).
    pub fn maglev_tables(&self) -> &Arc<MaglevTables> {
        &self.maglev
    }

    /// The table group `group` schedules with, if it uses `mh`.
    pub fn group_table(&self, group: usize) -> Option<&Arc<xlb_l4::sched::MaglevTable>> {
        self.upstreams.maglev_table(GroupId(group))
    }

    /// The stage's counters so far (also published to its [`SharedL7Counters`]).
    pub fn counters(&self) -> &L7Counters {
        &self.counters
    }

    /// What a session needs from the stage while it runs (`source`: the route's source address to a server).
    fn io<'a>(
        &'a mut self,
        now: Instant,
        source: &'a dyn Fn(Ipv4Addr) -> Option<Ipv4Addr>,
        ports: &'a mut LocalPorts,
    ) -> Io<'a> {
        Io {
            now,
            host: &mut self.host,
            upstreams: &mut self.upstreams,
            ports,
            counters: &mut self.counters,
            source,
            access_log: self.access_log.as_mut(),
            handshakes: self.handshakes.as_mut(),
            h2: self.h2.as_ref(),
        }
    }

    /// TLS handshake steps on the pool, not yet taken back.
    pub fn handshakes_in_flight(&self) -> usize {
        self.handshakes.as_ref().map_or(0, HandshakeClient::in_flight)
    }

    /// The worker that owns the connection of a segment from `src` to `dst`.
    fn owner(&self, service: Service, src: SocketAddrV4, dst: SocketAddrV4) -> usize {
        if service.slot == REPLY_SLOT {
            local_port_owner(dst.port(), self.workers)
        } else {
            let key = FlowKey {
                proto: Proto::Tcp,
                src,
                dst,
            };
            owner_of_hash(FlowHash::of(&key), self.workers)
        }
    }

    /// Hands a segment to the TCP host and lets the sessions it touched work.
    fn segment(&mut self, now: Instant, ip: &[u8], service: Service, cx: &mut StackContext<'_>) -> Handled {
        self.last_now = now;
        let listener = (service.slot != REPLY_SLOT)
            .then_some(service.slot as usize)
            .filter(|&l| l < self.listeners.len());
        let result = self.host.ingress(now, ip, listener.is_some());
        let handled = match result {
            Ingress::Delivered(_) => Handled::Verdict(Verdict::Consumed),
            Ingress::Accepted(conn) => {
                if let Some(l) = listener {
                    self.open_session(now, conn, l);
                }
                Handled::Verdict(Verdict::Consumed)
            }
            Ingress::NoConnection => {
                self.counters.bump(L7Count::NoConnection);
                Handled::Reject(DropReason::NoConnection)
            }
            Ingress::Full => {
                self.counters.bump(L7Count::ConnectionLimit);
                Handled::Reject(DropReason::L7ConnectionLimit)
            }
            Ingress::Bad(bad) => {
                self.counters.bump(L7Count::BadSegments);
                Handled::Verdict(Verdict::Drop(match bad {
                    BadSegment::Checksum => DropReason::BadL4Checksum,
                    BadSegment::Malformed => DropReason::MalformedTcp,
                }))
            }
        };
        self.run_touched(now, cx);
        handled
    }

    fn open_session(&mut self, now: Instant, conn: ConnId, listener: usize) {
        let Some(tuple) = self.host.tuple(conn) else { return };
        let index = self.free_slot();
        let generation = self.slots[index as usize].generation;
        let proxy = HttpProxy::new(
            self.listeners[listener].proxy.clone(),
            IpAddr::V4(*tuple.remote.ip()),
            now,
        );
        let upstream_token = Token::Upstream { index, generation };
        let name = self.listener_names[listener].clone();
        let tls = match &self.listeners[listener].tls {
            Some(config) => match rustls::ServerConnection::new(config.clone()) {
                Ok(c) => Some(TlsLink::server(c)),
                Err(e) => {
                    self.counters.bump(L7Count::TlsFailed);
                    tracing::debug!("TLS connection not created: {e}");
                    self.host.abort(now, conn);
                    self.free.push(index);
                    return;
                }
            },
            None => None,
        };
        self.slots[index as usize].session = Some(Box::new(Session::new(
            proxy,
            conn,
            tuple.remote,
            upstream_token,
            name,
            tls,
        )));
        self.host.set_token(conn, Token::Client { index, generation }.encode());
        self.sessions += 1;
        self.counters.bump(L7Count::Accepted);
        self.touched.push(index);
    }

    /// Takes the TCP host's events and pumps every session they concern (and those already marked); gives back
    /// the local ports of upstream connections that are gone.
    fn run_touched(&mut self, now: Instant, cx: &mut StackContext<'_>) {
        self.run_sessions(now, cx);
        while let Some(gone) = self.host.poll_gone() {
            upstreams::release_port(cx.ports, now, gone);
        }
    }

    fn run_sessions(&mut self, now: Instant, cx: &mut StackContext<'_>) {
        for _ in 0..64 {
            while let Some((conn, raw)) = self.host.poll_event() {
                match Token::decode(raw) {
                    Some(Token::Client { index, generation } | Token::Upstream { index, generation })
                        if self
                            .slots
                            .get(index as usize)
                            .is_some_and(|s| s.generation == generation) =>
                    {
                        self.touched.push(index);
                    }
                    Some(Token::Idle { group, server }) => {
                        self.upstreams
                            .idle_event(now, &mut self.host, GroupId(group as usize), server as usize, conn);
                    }
                    _ => {}
                }
            }
            if self.touched.is_empty() {
                break;
            }
            self.touched.sort_unstable();
            self.touched.dedup();
            for index in std::mem::take(&mut self.touched) {
                self.pump(now, index, cx, false);
            }
        }
    }

    /// Runs one session (firing its timers first if `timer`); frees it when it is done.
    fn pump(&mut self, now: Instant, index: u32, cx: &mut StackContext<'_>, timer: bool) {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        let generation = slot.generation;
        // Out of its slot while it runs, so HTTP/2 work can reach the sessions of its streams (or its front).
        let Some(mut session) = slot.session.take() else { return };
        let links = cx.links;
        let source = move |server: Ipv4Addr| route(links, server).map(|r| r.source);
        let mut io = self.io(now, &source, cx.ports);
        if timer {
            session.handle_timeout(&mut io);
        } else {
            session.pump(&mut io);
        }
        if session.is_front() {
            self.dispatch_streams(now, (index, generation), &mut session, cx);
        }
        if session.is_stream() {
            self.stream_to_front(now, &mut session, cx);
        }
        let slot = &mut self.slots[index as usize];
        if session.is_done() {
            slot.generation = (slot.generation + 1) & ((1 << 30) - 1);
            self.free.push(index);
            self.sessions -= 1;
        } else {
            let generation = slot.generation;
            let file = session
                .poll_timeout()
                .filter(|due| session.timer_armed.is_none_or(|armed| *due < armed));
            if file.is_some() {
                session.timer_armed = file;
            }
            slot.session = Some(session);
            if let Some(due) = file {
                self.arm(due, index, generation);
            }
        }
    }

    /// Files a timer entry. Every HTTP/2 stream is a session whose entry (its idle deadline, a minute away) is
    /// left behind when it ends within milliseconds: at 40 000 streams/s the heap held millions of dead entries
    /// and popping them was 2.4 % of the worker. So when the heap holds more than twice the live sessions
    /// (plus some slack), it keeps only the live entries: an O(n) pass paid for by the n pushes before it.
    fn arm(&mut self, due: Instant, index: u32, generation: u32) {
        self.timers.push(Reverse((due, index, generation)));
        if self.timers.len() > 2 * self.sessions + TIMER_SLACK {
            let slots = &self.slots;
            self.timers.retain(|&Reverse((due, index, generation))| {
                slots
                    .get(index as usize)
                    .filter(|s| s.generation == generation)
                    // A session out of its slot is running right now (a front whose streams run): keep its entry.
                    .is_some_and(|s| s.session.as_ref().is_none_or(|s| s.timer_armed == Some(due)))
            });
        }
    }

    /// Makes the link addresses local IPs of the port pools, and registers their local-port range for the
    /// replies where no stage before this one did (L4 does, and passes on the replies that are this stage's).
    fn register_reply_ranges(&self, cx: &mut StackContext<'_>) {
        let reply = Service {
            stage: L7_STAGE,
            slot: REPLY_SLOT,
        };
        let (min, max) = cx.ports.range();
        for ip in cx.links.iter().flat_map(|l| l.addresses.iter().map(|n| n.addr)) {
            cx.ports.add_local_ip(ip);
            if cx.services.lookup(ip, Transport::Tcp, min).is_none() {
                cx.services.set_range(ip, Transport::Tcp, min..=max, reply);
            }
        }
    }

    /// Gives the sessions back the connections the handshake pool is done with.
    fn handshakes_done(&mut self, now: Instant, cx: &mut StackContext<'_>) {
        let mut any = false;
        for _ in 0..1024 {
            let Some(done) = self.handshakes.as_mut().and_then(HandshakeClient::receive) else {
                break;
            };
            let (index, generation) = done.key.session;
            let session = self
                .slots
                .get_mut(index as usize)
                .filter(|s| s.generation == generation)
                .and_then(|s| s.session.as_mut());
            if let Some(session) = session {
                if let Some(why) = session.handshake_step_done(now, done, &mut self.counters, self.h2.as_ref()) {
                    tracing::debug!(worker = self.worker, "TLS handshake with a server failed: {why}");
                    self.upstream_tls_error = Some(why);
                }
                self.touched.push(index);
                any = true;
            }
        }
        if any {
            self.run_touched(now, cx);
        }
    }

    /// Processes segments other workers handed over.
    fn process_handed(&mut self, now: Instant, cx: &mut StackContext<'_>) {
        for _ in 0..256 {
            let Some(handed) = self.handoff.as_mut().and_then(Handoff::receive) else {
                return;
            };
            let frame = &handed.buf[..handed.len];
            // The sender validated the frame before handing it over.
            let endpoints = PacketSummary::parse(frame).ok().and_then(|ip| ip.endpoints());
            let service = endpoints.and_then(|(_, dst)| {
                cx.services
                    .lookup(*dst.ip(), Transport::Tcp, dst.port())
                    .filter(|s| s.stage == L7_STAGE)
            });
            if let Some(service) = service {
                let handled = self.segment(now, &frame[ETH_HEADER_LEN..], service, cx);
                if let Handled::Verdict(Verdict::Drop(reason)) | Handled::Reject(reason) = handled {
                    // Not answered here: the RST for a refused handed segment is left to the client's retry.
                    cx.counters.drop(reason);
                }
            }
            if let Some(h) = self.handoff.as_mut() {
                h.recycle(handed);
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.upstreams.expire_idle(now, &mut self.host);
        self.counters.sessions = self.sessions as u64;
        self.counters.connections = self.host.len() as u64;
        self.counters.idle_upstreams = self.upstreams.idle_count() as u64;
        self.counters.buffer_bytes = self.host.counters().buffer_bytes;
        self.shared.publish(&self.counters);
        if now.saturating_duration_since(self.warned.0) >= WARN_INTERVAL {
            self.warn(&self.warned.1.clone());
            self.warned = (now, self.counters.clone());
        }
    }

    /// Logs the refusals since `before`, once per interval, with what to do about them.
    fn warn(&self, before: &L7Counters) {
        let fixes = [
            (
                L7Count::ConnectionLimit,
                "connections refused at l7.max_connections: raise it (memory: 2 × l7.socket_buffer_bytes each)",
            ),
            (
                L7Count::LocalPortsExhausted,
                "no free local port for an upstream connection: widen l4.local_port_min..max (shared with \
                 FULLNAT), add local IPs, or raise l7.upstream_keepalive",
            ),
            (
                L7Count::NoHealthyServer,
                "requests answered 503: every server of their group is down or drained (xlbctl stats)",
            ),
            (
                L7Count::NoRoute,
                "upstream connections not opened: no interface or gateway reaches the server",
            ),
            (
                L7Count::HandoffFull,
                "segments dropped between workers: the hand-off queue was full",
            ),
            (
                L7Count::UpstreamTlsFailed,
                "HTTPS to servers failed: check the group's tls.ca and tls.server_name against the servers' \
                 certificates (last cause below)",
            ),
            (
                L7Count::TlsPoolFull,
                "TLS handshakes refused: the handshake pool is overloaded (l7.tls_handshake_threads) or its Key \
                 Server is slow",
            ),
        ];
        for (count, fix) in fixes {
            let n = self.counters.get(count) - before.get(count);
            if n > 0 {
                let cause = (count == L7Count::UpstreamTlsFailed)
                    .then_some(self.upstream_tls_error.as_deref())
                    .flatten()
                    .unwrap_or("");
                tracing::warn!(worker = self.worker, count = count.name(), n, cause, "L7: {fix}");
            }
        }
    }
}

fn nanos_since_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Ipv4Handler for L7Stage {
    fn handle(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &PacketSummary,
        cx: &mut StackContext<'_>,
    ) -> Handled {
        // Its own services, and replies to the local-port range the stage before passed on.
        let Some(service) = ip.service.filter(|s| s.stage == L7_STAGE || s.slot == LOCAL_PORTS_SLOT) else {
            return Handled::Pass;
        };
        if ip.protocol != Protocol::Tcp {
            return Handled::Pass;
        }
        let Some((src, dst)) = ip.endpoints() else {
            return Handled::Verdict(Verdict::Drop(DropReason::MalformedTcp));
        };
        let owner = self.owner(service, src, dst);
        if owner != self.worker {
            let iface = self.port_ifaces.get(port).copied().unwrap_or(0);
            // Copied for the owner now, sent after the batch (`flush_events`).
            return match self.handoff.as_mut().map(|h| h.queue(owner, iface, frame.data())) {
                Some(Ok(())) => Handled::Verdict(Verdict::Consumed),
                _ => {
                    self.counters.bump(L7Count::HandoffFull);
                    Handled::Verdict(Verdict::Drop(DropReason::HandoffFull))
                }
            };
        }
        self.segment(now, &frame.data()[ETH_HEADER_LEN..], service, cx)
    }

    fn attach(&mut self, cx: &mut StackContext<'_>) {
        cx.services.clear_stage(L7_STAGE);
        for (i, l) in self.listeners.iter().enumerate() {
            let service = Service {
                stage: L7_STAGE,
                slot: i as u32,
            };
            cx.services
                .set(*l.vip.ip(), Transport::Tcp, l.vip.port(), Some(service));
        }
        if !self.listeners.is_empty() {
            self.register_reply_ranges(cx);
        }
    }

    /// The worker is stopping: every in-stack connection, client or upstream, is reset (none outlives the
    /// process, and a server would otherwise hold an idle upstream connection open until its own timeout).
    fn shutdown(&mut self, now: Instant) {
        self.host.abort_all(now);
    }

    /// Sends the segments queued for other workers during the batch.
    fn flush_events(&mut self, cx: &mut StackContext<'_>) {
        if let Some(log) = self.access_log.as_mut() {
            log.flush();
        }
        let Some(handoff) = self.handoff.as_mut() else { return };
        let (sent, lost) = handoff.flush();
        self.counters.bump_by(L7Count::HandedOff, sent);
        self.counters.bump_by(L7Count::HandoffFull, lost);
        cx.counters.drops[DropReason::HandoffFull.index()] += lost;
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8], cx: &mut StackContext<'_>) -> Option<(PortId, usize)> {
        self.process_handed(now, cx);
        self.handshakes_done(now, cx);
        for _ in 0..1024 {
            let Some((len, dst)) = self.host.poll_transmit(now, &mut buf[ETH_HEADER_LEN..]) else {
                break;
            };
            match cx.deliver(now, buf, ETH_HEADER_LEN + len, dst) {
                Ok(port) => return Some((port, ETH_HEADER_LEN + len)),
                Err(None) => {} // queued until ARP resolves
                Err(Some(reason)) => cx.counters.drop(reason),
            }
        }
        // Transmitting may have changed states (a retransmission limit, a deadline): let the sessions see it.
        self.run_touched(now, cx);
        None
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.handshakes.as_ref().and_then(HandshakeClient::wake_fd)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.host.has_output() {
            // Segments are waiting (queued after the last transmit poll): the worker must not sleep.
            return Some(self.last_now);
        }
        if self.listeners.is_empty() && self.host.is_empty() {
            return None; // no HTTP listener: the stage sleeps (live changes to listeners need a restart)
        }
        let mut next = self.next_housekeeping;
        if self.handshakes.as_ref().is_some_and(|h| h.in_flight() > 0) {
            // The pool wakes the worker when a step is done; this bounds the wait if no wake-up is wired.
            next = next.min(self.last_now + HANDSHAKE_POLL);
        }
        if let Some(t) = self.host.poll_timeout() {
            next = next.min(t);
        }
        if let Some(Reverse((t, _, _))) = self.timers.peek() {
            next = next.min(*t);
        }
        Some(next)
    }

    fn handle_timeout(&mut self, now: Instant, cx: &mut StackContext<'_>) {
        self.last_now = now;
        self.apply_updates(now);
        self.host.handle_timeout(now);
        self.handshakes_done(now, cx);
        while let Some(&Reverse((due, index, generation))) = self.timers.peek() {
            if due > now {
                break;
            }
            self.timers.pop();
            let current = self
                .slots
                .get_mut(index as usize)
                .filter(|s| s.generation == generation)
                .and_then(|s| s.session.as_mut())
                .filter(|s| s.timer_armed == Some(due));
            let Some(session) = current else { continue };
            session.timer_armed = None;
            match session.poll_timeout() {
                // Filed for an earlier deadline that moved: file it again for the current one.
                Some(actual) if actual > now => {
                    session.timer_armed = Some(actual);
                    self.arm(actual, index, generation);
                }
                _ => self.pump(now, index, cx, true),
            }
        }
        self.run_touched(now, cx);
        if now >= self.next_housekeeping {
            self.housekeeping(now);
            self.next_housekeeping = now + HOUSEKEEPING;
        }
    }
}

#[cfg(test)]
mod shared_ports_tests;
#[cfg(test)]
mod tests;
