//! The L4 flow engine: new flows (scheduling, local ports, table entry), client → server and server → client
//! forwarding with NAT, TCP state tracking, and how entries end (early, evicted, expired).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use xlb_stack::drops::DropReason;
use xlb_stack::local::{Handled, StackContext};
use xlb_stack::pipeline::{Frame, PortId, Verdict};
use xlb_stack::wire::{EthernetAddress, PacketSummary};

use crate::conn::state::next_state;
use crate::conn::{Conn, ConnId, ConnState, Dir, FinSeen, FlowKey, Forwarding, Proto, ProxyPhase, TableFull};
use crate::layout::RemovedServerPolicy;
use crate::sched::hash::hash_5tuple;

use super::*;

/// How a connection entry ended, for its local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// It expired, or a peer says it did: the server is done with the tuple.
    Normal,
    /// It ended before its time (a new SYN rescheduled it): the server may hold the tuple in TIME_WAIT.
    Early,
    /// Evicted from a full table with this much time left.
    Evicted(Duration),
}

/// Sends a frame for `c`'s client out where the client's packets come in, to the hop they come from (a forward:
/// the TTL is decremented; see `Forwarder::handle` for packets whose TTL ran out).
pub(super) fn toward_client(c: &Conn, frame: &mut Frame<'_>, cx: &StackContext<'_>) -> Verdict {
    if !nat::decrement_ttl(frame.data_mut()) {
        return Verdict::Drop(DropReason::TtlExceeded);
    }
    let port = usize::from(c.client_port);
    let data = frame.data_mut();
    data[0..6].copy_from_slice(&c.client_mac.0);
    data[6..12].copy_from_slice(&cx.links[port].mac.0);
    Verdict::Transmit(port)
}

/// Sends a rewritten frame towards `dst` through the neighbour table (a forward: the TTL is decremented).
pub(super) fn deliver(now: Instant, frame: &mut Frame<'_>, dst: Ipv4Addr, cx: &mut StackContext<'_>) -> Verdict {
    if !nat::decrement_ttl(frame.data_mut()) {
        return Verdict::Drop(DropReason::TtlExceeded);
    }
    let len = frame.len();
    match cx.deliver(now, frame.buffer_mut(), len, dst) {
        Ok(port) => Verdict::Transmit(port),
        Err(None) => Verdict::Consumed,
        Err(Some(reason)) => Verdict::Drop(reason),
    }
}

impl Forwarder {
    /// Whether a client packet on an existing entry starts a new flow instead (IPVS's `conn_reuse_mode` and
    /// `expire_nodest_conn`, on by default here): a TCP SYN on the addresses of a connection that has closed
    /// (TIME_WAIT, CLOSE) or whose server is down or removed — sent on, it would be refused or unanswered — or
    /// any UDP datagram of a flow whose server is down. Established TCP to a down server keeps its server: a
    /// failed check does not prove the connection dead.
    pub(super) fn starts_over(&mut self, id: ConnId, ip: &PacketSummary) -> bool {
        let proto = self.conns.get(id).proto;
        if proto == Proto::Tcp {
            // Only a SYN can start over: other segments cost no more than this look at their flags.
            let flags = ip.tcp_flags().unwrap_or_default();
            if !flags.syn() || flags.ack() {
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
    pub(super) fn end_early(&mut self, id: ConnId) -> Conn {
        let c = self.conns.remove(id);
        self.account(&c, c.state.is_active(), -1);
        self.sync_ended(&c);
        c
    }

    /// Returns a removed FULLNAT connection's local port to its pool: at once if the connection ran its course
    /// (or the server cannot hold the tuple in TIME_WAIT), else after the time the server may still hold it.
    pub(super) fn release_port(&mut self, now: Instant, c: &Conn, ending: Ending, ports: &mut LocalPorts) {
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
            _ => return ports.give_back(ip, c.backend, port),
        };
        let flow = FlowIds {
            client: c.client,
            vip: c.vip,
        };
        ports.give_back_at(ip, c.backend, port, now + hold, flow);
    }

    /// Makes room in a full table by evicting its oldest closed or closing connection; false if none is
    /// evictable.
    pub(super) fn make_room(&mut self, now: Instant, ports: &mut LocalPorts) -> bool {
        let Some((c, left)) = self.conns.evict_oldest(now) else {
            return false;
        };
        self.account(&c, c.state.is_active(), -1);
        self.release_port(now, &c, Ending::Evicted(left), ports);
        self.sync_ended(&c);
        self.counters.evicted += 1;
        true
    }

    /// Inserts a connection, evicting a closed one if the table is full.
    pub(super) fn insert_conn(
        &mut self,
        now: Instant,
        conn: Conn,
        timeout: Duration,
        ports: &mut LocalPorts,
    ) -> Result<ConnId, TableFull> {
        match self.conns.insert_expiring(now, conn, timeout) {
            Err(TableFull) if self.make_room(now, ports) => self.conns.insert_expiring(now, conn, timeout),
            result => result,
        }
    }

    /// Counts a drop or refusal of a packet of listener `l`'s flows under its reason.
    pub(super) fn count_listener_drop(&mut self, l: usize, handled: &Handled) {
        let (Handled::Reject(reason) | Handled::Verdict(Verdict::Drop(reason))) = handled else {
            return;
        };
        if let Some(c) = self.counters.listeners.get_mut(l) {
            c.drops[reason.index()] += 1;
        }
    }

    /// A packet from a client with no connection entry: schedule it, or refuse it. `reusable` is the entry the
    /// packet's SYN just ended, if any: when the flow goes to the same server, it takes over that entry's local
    /// port (and leaves `None`), so the server sees the same tuple from the same client.
    ///
    /// FULLNAT TCP listeners under the SYN proxy answer a SYN with a cookie instead, and open the flow on the ACK
    /// that returns a valid cookie.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new_flow(
        &mut self,
        now: Instant,
        l: usize,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &PacketSummary,
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
        let mut cookie_ack = false;
        if key.proto == Proto::Tcp {
            let flags = ip.tcp_flags().unwrap_or_default();
            if !flags.syn() || flags.ack() {
                // An ACK may complete a SYN-proxied handshake while cookies may be out.
                cookie_ack = forwarding == Forwarding::Fullnat
                    && flags.ack()
                    && !flags.syn()
                    && !flags.rst()
                    && self.cookies_out(l, now);
                if !cookie_ack {
                    // Mid-flow packet without state: DR can still send it where a stateless hash says (this keeps
                    // DR flows alive after a table loss); FULLNAT cannot translate it.
                    return match forwarding {
                        Forwarding::Dr => Handled::Verdict(self.forward_stateless(now, l, frame, key, cx)),
                        Forwarding::Fullnat => Handled::Verdict(Verdict::Drop(DropReason::NoConnection)),
                    };
                }
            }
        }
        if let Some(reason) = validate::invalid_new_flow(&frame.data()[ip.l4..], &key, |addr| cx.owns(addr)) {
            return Handled::Verdict(Verdict::Drop(reason));
        }
        if cookie_ack {
            let seg = synproxy::Segment::of(frame.data(), ip.l4);
            let (isn, cookie) = (seg.seq.wrapping_sub(1), seg.ack.wrapping_sub(1));
            return match self.cookies.check(now, key.src, key.dst, isn, cookie) {
                Ok(mss) => {
                    self.counters.listeners[l].syn_cookies_valid += 1;
                    self.open_flow(now, l, port, frame, ip, key, reusable, Some((cookie, mss)), cx)
                }
                Err(_) => Handled::Verdict(Verdict::Drop(DropReason::SynCookieInvalid)),
            };
        }
        if key.proto == Proto::Tcp && self.listeners[l].guard.engaged {
            return self.answer_with_cookie(now, l, port, frame, ip, key, cx);
        }
        self.open_flow(now, l, port, frame, ip, key, reusable, None, cx)
    }

    /// Whether an ACK without an entry may carry a cookie of listener `l`: its SYN proxy is on, or sent a cookie
    /// recently enough for it to be valid still.
    fn cookies_out(&self, l: usize, now: Instant) -> bool {
        let g = &self.listeners[l].guard;
        g.engaged || g.last_cookie.is_some_and(|at| now < at + 2 * synproxy::COOKIE_PERIOD)
    }

    /// The SYN proxy's answer to a SYN: a SYN-ACK with a cookie, out where the SYN came in. Nothing is kept.
    #[allow(clippy::too_many_arguments)]
    fn answer_with_cookie(
        &mut self,
        now: Instant,
        l: usize,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &PacketSummary,
        key: FlowKey,
        cx: &StackContext<'_>,
    ) -> Handled {
        let data = frame.data();
        let isn = synproxy::Segment::of(data, ip.l4).seq;
        let mss = synproxy::mss_option(&data[ip.l4..]);
        let (cookie, mss) = self.cookies.make(now, key.src, key.dst, isn, mss);
        let c = &mut self.counters.listeners[l];
        c.packets_in += 1;
        c.bytes_in += frame.len() as u64;
        c.syn_cookies_sent += 1;
        self.listeners[l].guard.last_cookie = Some(now);
        let len = synproxy::answer_syn(frame.buffer_mut(), ip.l4, cx.links[port].mac, cookie, mss);
        frame.set_len(len);
        Handled::Verdict(Verdict::Transmit(port))
    }

    /// The per-worker cap of listener `l`'s entries, if it has one.
    pub(super) fn conn_cap(&self, l: usize) -> Option<u32> {
        let listener = &self.listeners[l];
        let max = listener.config.max_conns.unwrap_or(self.defence.listener_max_conns);
        (max > 0).then(|| max.div_ceil(self.workers).min(u32::MAX as usize) as u32)
    }

    /// Schedules a new flow, takes its local port and makes its entry, then forwards the packet; with `proxy`
    /// (the cookie and MSS of a SYN-proxied handshake) the packet, the client's ACK, becomes the SYN that opens
    /// the server's connection.
    #[allow(clippy::too_many_arguments)]
    fn open_flow(
        &mut self,
        now: Instant,
        l: usize,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &PacketSummary,
        key: FlowKey,
        reusable: &mut Option<Conn>,
        proxy: Option<(u32, u16)>,
        cx: &mut StackContext<'_>,
    ) -> Handled {
        if self.conn_cap(l).is_some_and(|cap| self.listeners[l].entries >= cap) {
            return Handled::Verdict(Verdict::Drop(DropReason::ListenerConnLimit));
        }
        let forwarding = self.listeners[l].config.forwarding;
        self.refresh_health();
        let listener = &mut self.listeners[l];
        // A client reusing the 4-tuple of a closed connection continues on that connection's server while the
        // server still takes new flows (healthy, weight > 0, in the group): on the same tuple, which its
        // TIME_WAIT accepts from the same client, and without holding a tuple on a second server (IPVS
        // `conn_reuse_mode = 0` for such servers). Otherwise the flow is scheduled afresh.
        let continuing = reusable.filter(|old| usize::from(old.listener) == l).and_then(|old| {
            let s = usize::from(old.server);
            let view = listener.servers.get(s)?;
            (view.healthy && view.weight > 0 && !listener.removed_servers[s]).then_some(s)
        });
        let picked = continuing.or_else(|| listener.scheduler.pick(&listener.servers, key.src));
        let Some(server) = picked else {
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
                    let taken = sources.find_map(|ip| cx.ports.take(ip, backend, flow).ok().map(|p| (ip, p)));
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
            proxy: if proxy.is_some() {
                ProxyPhase::AwaitingServer
            } else {
                ProxyPhase::None
            },
            seq_delta: proxy.map_or(0, |(cookie, _)| cookie),
            answered: false,
        };
        match self.insert_conn(now, conn, self.conns.timeout_of(&conn), cx.ports) {
            Ok(id) => {
                self.account(&conn, conn.state.is_active(), 1);
                if self.conns.is_short_lived(&conn) {
                    self.counters.short_timeouts += 1;
                }
                self.counters.listeners[l].conns_total += 1;
                self.counters.servers[l][server].conns_total += 1;
                if conn.state == ConnState::SynRecv {
                    self.check_half_open(now, l);
                }
                let Some((_, mss)) = proxy else {
                    return self.forward_client(now, id, port, frame, ip, cx);
                };
                // The client's ACK (and any data with it: the client sends it again) becomes the server's SYN.
                // Until the server answers, the entry's packet count holds the client's ISN, to check the
                // server's SYN-ACK against.
                let len = frame.len() as u64;
                let isn = synproxy::Segment::of(frame.data(), ip.l4).seq.wrapping_sub(1);
                self.conns.get_mut(id).client_packets = isn;
                self.counters.listeners[l].packets_in += 1;
                self.counters.listeners[l].bytes_in += len;
                self.counters.servers[l][server].packets_in += 1;
                self.counters.servers[l][server].bytes_in += len;
                let len = synproxy::syn_to_server(frame.buffer_mut(), ip.l4, local, backend, mss);
                frame.set_len(len);
                Handled::Verdict(deliver(now, frame, *backend.ip(), cx))
            }
            Err(TableFull) => {
                if forwarding == Forwarding::Fullnat {
                    cx.ports.give_back(*local.ip(), backend, local.port());
                    return Handled::Verdict(Verdict::Drop(DropReason::ConnTableFull));
                }
                Handled::Verdict(self.forward_stateless(now, l, frame, key, cx))
            }
        }
    }

    /// DR without a table entry: the listener's Maglev table picks the server from the flow's hash, the same
    /// way on every worker and every node.
    pub(super) fn forward_stateless(
        &mut self,
        now: Instant,
        l: usize,
        frame: &mut Frame<'_>,
        key: FlowKey,
        cx: &mut StackContext<'_>,
    ) -> Verdict {
        self.refresh_health();
        let listener = &self.listeners[l];
        let hash = hash_5tuple(key.proto as u8, key.src, key.dst);
        let Some(server) = listener.maglev.as_ref().and_then(|m| m.pick(hash, &listener.servers)) else {
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
    /// Also keeps the listener's entry and half-open counts (`conn` in the state it enters or leaves).
    pub(super) fn account(&mut self, conn: &Conn, active: bool, delta: i32) {
        let listener = &mut self.listeners[usize::from(conn.listener)];
        listener.entries = listener.entries.saturating_add_signed(delta);
        if conn.state == ConnState::SynRecv {
            listener.half_open = listener.half_open.saturating_add_signed(delta);
        }
        let s = &mut listener.servers[usize::from(conn.server)];
        let n = if active { &mut s.active } else { &mut s.inactive };
        *n = n.saturating_add_signed(delta);
    }

    /// After a new half-open entry of listener `l`: an `auto` SYN proxy switches on at once when the listener's
    /// half-open entries pass the threshold (not only at the next housekeeping turn: a flood fills ports fast).
    fn check_half_open(&mut self, now: Instant, l: usize) {
        let threshold = if self.conns.under_pressure() {
            (self.defence.syn_proxy_threshold / 10).max(1)
        } else {
            self.defence.syn_proxy_threshold
        };
        if self.listeners[l].half_open > threshold && !self.listeners[l].guard.engaged {
            self.update_guard(now, l);
        }
    }

    /// Tracks TCP state for a segment in `dir`: updates the entry and the server's counts.
    pub(super) fn track(&mut self, id: ConnId, dir: Dir, ip: &PacketSummary) {
        let conn = *self.conns.get(id);
        if conn.proto != Proto::Tcp {
            return;
        }
        let mut fins = conn.fins;
        let state = next_state(conn.state, &mut fins, dir, ip.tcp_flags().unwrap_or_default());
        self.set_state(id, state);
        self.conns.get_mut(id).fins = fins;
    }

    /// Client → backend on an existing connection.
    pub(super) fn forward_client(
        &mut self,
        now: Instant,
        id: ConnId,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &PacketSummary,
        cx: &mut StackContext<'_>,
    ) -> Handled {
        if self.server_reset(id) {
            // The server was removed with the reset policy: close the entry and refuse the client.
            self.set_state(id, ConnState::Close);
            self.conns.touch(id, now);
            return Handled::Reject(DropReason::ServerRemoved);
        }
        if self.conns.get(id).proxy == ProxyPhase::AwaitingServer {
            // The client's handshake is done with xlb, the server's not yet: nothing can be translated. Its
            // first segment with data waits for the server's SYN-ACK; others are sent again by the client.
            let key = self.conns.get(id).client_key();
            let data = frame.data();
            let conns = &self.conns;
            let waiting = |id: ConnId, key: &FlowKey| {
                conns
                    .live(id)
                    .is_some_and(|c| c.client_key() == *key && c.proxy == ProxyPhase::AwaitingServer)
            };
            if synproxy::seq_len(ip) > 0 && self.held.hold(id, key, data, ip.l4, waiting) {
                return Handled::Verdict(Verdict::Consumed);
            }
            return Handled::Verdict(Verdict::Drop(DropReason::SynProxyPending));
        }
        self.track(id, Dir::FromClient, ip);
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
            nat::rewrite(frame.data_mut(), ip.l4, c.proto, c.local, c.backend);
            if c.proxy == ProxyPhase::Translating {
                synproxy::translate_to_server(frame.data_mut(), ip.l4, c.seq_delta);
            }
        }
        Handled::Verdict(deliver(now, frame, *c.backend.ip(), cx))
    }

    /// Whether the connection's server was removed and its connections are to be reset.
    pub(super) fn server_reset(&self, id: ConnId) -> bool {
        let c = self.conns.get(id);
        self.layout.removed_server_policy == RemovedServerPolicy::Reset
            && self.listeners[usize::from(c.listener)].removed_servers[usize::from(c.server)]
    }

    /// Moves a connection to `state`, keeping the server's active/inactive counts right.
    pub(super) fn set_state(&mut self, id: ConnId, state: ConnState) {
        let conn = *self.conns.get(id);
        if conn.state != state {
            self.account(&conn, conn.state.is_active(), -1);
            self.account(&Conn { state, ..conn }, state.is_active(), 1);
        }
        self.conns.get_mut(id).state = state;
    }

    /// Backend → client on an existing FULLNAT connection: translate back and send where the client is.
    pub(super) fn forward_reply(
        &mut self,
        now: Instant,
        id: ConnId,
        frame: &mut Frame<'_>,
        ip: &PacketSummary,
        cx: &mut StackContext<'_>,
    ) -> Verdict {
        if self.server_reset(id) {
            return Verdict::Drop(DropReason::ServerRemoved);
        }
        let c = self.conns.get_mut(id);
        c.answered = true;
        if c.proxy == ProxyPhase::AwaitingServer {
            if let Some(verdict) = self.server_handshake(now, id, frame, ip, cx) {
                return verdict;
            }
        }
        self.track(id, Dir::FromServer, ip);
        self.conns.touch(id, now);
        self.maybe_sync(id, now);
        let c = *self.conns.get(id);
        let len = frame.len() as u64;
        let (l, s) = (usize::from(c.listener), usize::from(c.server));
        self.counters.listeners[l].packets_out += 1;
        self.counters.listeners[l].bytes_out += len;
        self.counters.servers[l][s].packets_out += 1;
        self.counters.servers[l][s].bytes_out += len;
        nat::rewrite(frame.data_mut(), ip.l4, c.proto, c.vip, c.client);
        if c.proxy == ProxyPhase::Translating {
            synproxy::translate_to_client(frame.data_mut(), ip.l4, c.seq_delta);
        }
        toward_client(&c, frame, cx)
    }

    /// The server's answer to the SYN the proxy sent for a client whose handshake xlb completed with a cookie:
    /// a SYN-ACK fixes the sequence delta and is answered with the ACK that completes the server's handshake
    /// (the client never sees it); an RST goes on to the client at the sequence number the client expects.
    /// Anything else (an ACK or a SYN-ACK that does not acknowledge our SYN) is answered with an RST and the entry
    /// ends. `None`: forward the packet as translated.
    fn server_handshake(
        &mut self,
        now: Instant,
        id: ConnId,
        frame: &mut Frame<'_>,
        ip: &PacketSummary,
        cx: &mut StackContext<'_>,
    ) -> Option<Verdict> {
        let seg = synproxy::Segment::of(frame.data(), ip.l4);
        let flags = seg.flags;
        let c = *self.conns.get(id);
        let cookie = c.seq_delta;
        if flags.rst() {
            let e = self.conns.get_mut(id);
            e.seq_delta = cookie.wrapping_add(1).wrapping_sub(seg.seq);
            e.proxy = ProxyPhase::Translating;
            return None;
        }
        let client_isn = c.client_packets; // while AwaitingServer (see `open_flow`)
        if !(flags.syn() && flags.ack() && seg.ack == client_isn.wrapping_add(1)) {
            // Not the answer to our SYN: the server holds another connection on the tuple (a request or a
            // TIME_WAIT of an earlier client, which answers with an ACK or a SYN-ACK of its own). As a client
            // would, reset it, and let the flow go: the client's next retransmission carries the cookie again
            // and opens the flow anew, on a tuple the server no longer holds.
            let ended = self.end_early(id);
            self.release_port(now, &ended, Ending::Normal, cx.ports);
            if let Some(held) = self.held.take(id, &ended.client_key()) {
                self.held.recycle(held);
            }
            self.counters.listeners[usize::from(c.listener)].syn_proxy_server_resets += 1;
            let len = synproxy::reset_to_server(frame.buffer_mut(), ip.l4, c.local, c.backend);
            frame.set_len(len);
            return Some(deliver(now, frame, *c.backend.ip(), cx));
        }
        let e = self.conns.get_mut(id);
        e.seq_delta = cookie.wrapping_sub(seg.seq);
        e.proxy = ProxyPhase::Translating;
        e.client_packets = 1;
        self.set_state(id, ConnState::Established);
        self.conns.touch(id, now);
        self.maybe_sync(id, now);
        let (l, s) = (usize::from(c.listener), usize::from(c.server));
        self.counters.servers[l][s].packets_out += 1;
        self.counters.servers[l][s].bytes_out += frame.len() as u64;
        let delta = self.conns.get(id).seq_delta;
        match self.held.take(id, &c.client_key()) {
            // The client's held segment carries the ACK that completes the server's handshake, and its data.
            Some(held) if held.frame().len() <= frame.capacity() => {
                let len = held.frame().len();
                frame.buffer_mut()[..len].copy_from_slice(held.frame());
                frame.set_len(len);
                let hl4 = held.l4;
                self.held.recycle(held);
                nat::rewrite(frame.data_mut(), hl4, Proto::Tcp, c.local, c.backend);
                synproxy::translate_to_server(frame.data_mut(), hl4, delta);
                self.counters.servers[l][s].packets_in += 1;
                self.counters.servers[l][s].bytes_in += len as u64;
            }
            other => {
                if let Some(held) = other {
                    self.held.recycle(held);
                }
                let len = synproxy::ack_to_server(frame.buffer_mut(), ip.l4, c.local, c.backend);
                frame.set_len(len);
            }
        }
        Some(deliver(now, frame, *c.backend.ip(), cx))
    }
}
