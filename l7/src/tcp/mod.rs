//! In-stack TCP: smoltcp's TCP state machine, one socket per connection, driven without smoltcp's `Interface`
//! poll loop.
//!
//! smoltcp's `Interface::poll` walks every socket for each packet and each egress poll, and a listening socket
//! takes one connection. [`TcpHost`] keeps smoltcp's per-socket logic (handshake, retransmission, windows,
//! Cubic, SACK, timestamps, FIN/TIME-WAIT) and does the rest itself (see `third_party/smoltcp/PATCHES.md`):
//!
//! - **Demultiplexing**: a hash map from 4-tuple to a slab slot; a SYN to a listening address the caller
//!   accepts gets a new socket (no backlog, no listening socket).
//! - **Egress only where there is work**: a connection is queued for transmission when a segment or the
//!   application gave it something to send; otherwise it waits in a timer heap until its retransmission,
//!   delayed-ACK or TIME-WAIT timer is due. Nothing scans all connections, so the cost per packet does not grow
//!   with their number.
//! - **Bounds**: a connection limit, buffers of a fixed size, a handshake deadline (half-open connections go
//!   away) and a closing deadline (a peer that never acknowledges our FIN does not hold a connection forever).
//!
//! Sans-IO like the rest of the datapath: segments in ([`TcpHost::ingress`]), segments out
//! ([`TcpHost::poll_transmit`]), time passed in. The owner of the connections (the L7 stage) learns what
//! changed from [`TcpHost::poll_event`] and reads and writes the sockets.

mod spare;
pub mod wire;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp::{self, CongestionControl, State};
use smoltcp::socket::PollAt;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpEndpoint, IpRepr, TcpControl, TcpRepr};
use spare::SpareBuffers;

pub use wire::{BadSegment, Tuple};

/// A connection of a [`TcpHost`]; stale ids (of a connection that is gone) are never confused with new ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

/// Limits of a [`TcpHost`].
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Receive buffer per connection (bytes): the window offered to the peer.
    pub rx_buffer: usize,
    /// Send buffer per connection (bytes).
    pub tx_buffer: usize,
    /// Receive and send buffer of a connection that is not busy: half-open, or idle between requests
    /// ([`TcpHost::set_busy`]). Busy connections get `rx_buffer` / `tx_buffer` once their buffers are empty.
    pub idle_buffer: usize,
    /// Connections at most (SYNs beyond are refused).
    pub max_connections: usize,
    /// Time for a handshake to complete (accepted or connecting), after which the connection is aborted.
    pub handshake_timeout: Duration,
    /// Time for a connection the application closed to finish closing before it is aborted.
    pub close_timeout: Duration,
    /// TTL of the packets sent.
    pub ttl: u8,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            rx_buffer: 64 * 1024,
            tx_buffer: 64 * 1024,
            idle_buffer: 4096,
            max_connections: 65_536,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(30),
            ttl: 64,
        }
    }
}

/// What a received segment did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    /// Delivered to an existing connection (see [`TcpHost::poll_event`]).
    Delivered(ConnId),
    /// A SYN the caller accepted: a new connection in SYN-RECEIVED (its token is 0 until set).
    Accepted(ConnId),
    /// No connection for it and it cannot start one: answer with RST (unless it is one).
    NoConnection,
    /// A SYN refused because the connection limit is reached.
    Full,
    /// Not a valid TCP segment.
    Bad(BadSegment),
}

/// Counts of the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// Connections accepted from a SYN.
    pub accepted: u64,
    /// Connections opened by [`TcpHost::connect`].
    pub connected: u64,
    /// SYNs refused at the connection limit.
    pub refused_full: u64,
    /// Connections aborted because the handshake did not complete in time.
    pub handshake_timeouts: u64,
    /// Connections aborted because closing did not complete in time.
    pub close_timeouts: u64,
    /// Segments sent.
    pub segments_out: u64,
    /// Segments received for a connection.
    pub segments_in: u64,
    /// Connections in TIME-WAIT ended early by a SYN for the same tuple (a new connection).
    pub time_wait_reused: u64,
    /// Bytes of socket buffers held by the open connections (a gauge).
    pub buffer_bytes: u64,
}

struct Conn {
    socket: tcp::Socket<'static>,
    tuple: Tuple,
    token: u64,
    /// In the transmit queue.
    queued: bool,
    /// In the event queue.
    noticed: bool,
    /// When it next needs attention (a smoltcp timer or its deadline).
    wake: Option<Instant>,
    /// The earliest entry the timer heap holds for it (`None`: none that counts). Timers are re-armed lazily:
    /// a wake-up that moves later keeps this entry, which re-files itself at `wake` when it fires, so the
    /// heap gets one push per connection and timer instead of one per segment (smoltcp moves its ACK-delay
    /// and retransmission timers on nearly every segment, and the stale entries made `handle_timeout`'s pops
    /// a visible cost under HTTP/2 load).
    armed: Option<Instant>,
    /// Abort if still handshaking / closing at this time.
    deadline: Option<(Instant, Deadline)>,
    /// Closed by the application: what the peer still sends is read and discarded (a lingering close, as
    /// NGINX does), so a client still uploading sees the response and our FIN instead of a zero window.
    discard: bool,
    /// Holds the large buffers (else the idle-size ones).
    large: bool,
    /// Should hold the large buffers (busy); applied as soon as its buffers are empty.
    want_large: bool,
    /// Opened by [`TcpHost::connect`] (its local port was taken for it): reported by [`TcpHost::poll_gone`].
    outbound: bool,
    /// Has been in TIME-WAIT: this side closed first, so the peer holds no TIME-WAIT for the tuple.
    time_waited: bool,
}

/// A connection opened by [`TcpHost::connect`] that is gone (its tuple is free in the host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone {
    /// Its tuple.
    pub tuple: Tuple,
    /// Whether the peer may still hold the tuple in TIME-WAIT (this side did not pass through TIME-WAIT).
    pub peer_may_wait: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deadline {
    Handshake,
    Close,
}

struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

/// The connections of one worker.
pub struct TcpHost {
    config: TcpConfig,
    epoch: Instant,
    iface: Interface,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_tuple: HashMap<Tuple, u32, ahash::RandomState>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    ready: VecDeque<u32>,
    events: VecDeque<(ConnId, u64)>,
    replies: VecDeque<(IpRepr, TcpRepr<'static>)>,
    counters: TcpCounters,
    /// Outbound connections gone since the last [`TcpHost::poll_gone`].
    gone: Vec<Gone>,
    /// Emptied buffers for the next connection that needs some (see [`spare`]).
    spare: SpareBuffers,
}

/// The device smoltcp's `Interface` is created with: xlb never polls the interface, it only uses it as the
/// sockets' context (clock, random numbers, MTU, checksum capabilities).
struct NoDevice;

struct NoToken;

impl RxToken for NoToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&[])
    }
}

impl TxToken for NoToken {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        f(&mut vec![0; len])
    }
}

impl Device for NoDevice {
    type RxToken<'a> = NoToken;
    type TxToken<'a> = NoToken;

    fn receive(&mut self, _: SmolInstant) -> Option<(NoToken, NoToken)> {
        None
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<NoToken> {
        None
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

impl TcpHost {
    /// An empty host; `seed` seeds initial sequence numbers (give each worker its own).
    pub fn new(config: TcpConfig, now: Instant, seed: u64) -> TcpHost {
        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress([2, 0, 0, 0, 0, 1])));
        iface_config.random_seed = seed;
        let mut iface = Interface::new(iface_config, &mut NoDevice, SmolInstant::from_micros(0));
        iface.set_any_ip(true);
        TcpHost {
            spare: SpareBuffers::new(config.idle_buffer),
            config,
            epoch: now,
            iface,
            slots: Vec::new(),
            free: Vec::new(),
            by_tuple: HashMap::default(),
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
            replies: VecDeque::new(),
            counters: TcpCounters::default(),
            gone: Vec::new(),
        }
    }

    /// Connections open (including those closing and in TIME-WAIT).
    pub fn len(&self) -> usize {
        self.by_tuple.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.by_tuple.is_empty()
    }

    /// The host's counts.
    pub fn counters(&self) -> TcpCounters {
        self.counters
    }

    /// Whether a connection holds `tuple` (e.g. before picking a local port for a new one).
    pub fn holds(&self, tuple: &Tuple) -> bool {
        self.by_tuple.contains_key(tuple)
    }

    fn smol(&self, now: Instant) -> SmolInstant {
        SmolInstant::from_micros(now.saturating_duration_since(self.epoch).as_micros() as i64)
    }

    fn std(&self, t: SmolInstant) -> Instant {
        self.epoch + Duration::from_micros(t.total_micros().max(0) as u64)
    }

    fn set_now(&mut self, now: Instant) {
        let t = self.smol(now);
        self.iface.context().set_now(t);
    }

    /// Handles a received IPv4 packet carrying TCP (`ip`: from the IPv4 header to the end of the packet).
    /// `accept`: whether a SYN for a connection the host does not know may open one (the destination is a
    /// listener of the caller's).
    pub fn ingress(&mut self, now: Instant, ip: &[u8], accept: bool) -> Ingress {
        let (ipv4, segment) = match wire::parse(ip) {
            Ok(parsed) => parsed,
            Err(bad) => return Ingress::Bad(bad),
        };
        let tuple = wire::tuple_of(&ipv4, &segment);
        self.set_now(now);
        let ip_repr = IpRepr::Ipv4(ipv4);
        let syn = segment.control == TcpControl::Syn && segment.ack_number.is_none();
        let mut existing = self.by_tuple.get(&tuple).copied();
        if let Some(index) = existing.filter(|_| syn && accept) {
            // A SYN for a tuple whose connection is in TIME-WAIT: the client reuses its port for a new
            // connection (Linux accepts that too, RFC 6191), so the old incarnation goes. Without this a client
            // that reuses ports quickly meets silence for the TIME-WAIT's length.
            let ended = self.slots[index as usize]
                .conn
                .as_ref()
                .is_some_and(|c| matches!(c.socket.state(), State::TimeWait | State::Closed));
            if ended {
                self.counters.time_wait_reused += 1;
                self.remove(index);
                existing = None;
            }
        }
        let (index, accepted) = match existing {
            Some(index) => (index, false),
            None => {
                if !(syn && accept) {
                    return Ingress::NoConnection;
                }
                if self.by_tuple.len() >= self.config.max_connections {
                    self.counters.refused_full += 1;
                    return Ingress::Full;
                }
                let mut socket = self.new_socket();
                if socket.listen(IpEndpoint::from(tuple.local)).is_err() {
                    return Ingress::NoConnection;
                }
                let deadline = (now + self.config.handshake_timeout, Deadline::Handshake);
                self.counters.accepted += 1;
                (self.insert(socket, tuple, deadline), true)
            }
        };
        let cx = self.iface.context();
        let Some(conn) = self.slots[index as usize].conn.as_mut() else {
            return Ingress::NoConnection;
        };
        if !conn.socket.accepts(cx, &ip_repr, &segment) {
            // E.g. a SYN to a connection in TIME-WAIT from a new incarnation: smoltcp does not reuse it.
            return Ingress::NoConnection;
        }
        self.counters.segments_in += 1;
        if let Some(reply) = conn.socket.process(cx, &ip_repr, &segment) {
            self.replies.push_back(reply);
        }
        if conn.discard {
            while conn.socket.recv(|data| (data.len(), data.len())).unwrap_or(0) > 0 {}
        }
        self.after_change(now, index);
        let id = self.id(index);
        if accepted {
            Ingress::Accepted(id)
        } else {
            Ingress::Delivered(id)
        }
    }

    /// A socket with idle-size buffers (a half-open connection costs little).
    fn new_socket(&mut self) -> tcp::Socket<'static> {
        let n = self.config.idle_buffer;
        self.counters.buffer_bytes += 2 * n as u64;
        let rx = self.spare.take(n);
        let tx = self.spare.take(n);
        let mut socket = tcp::Socket::new(rx, tx);
        socket.set_congestion_control(CongestionControl::Cubic);
        socket.set_nagle_enabled(false);
        socket.set_hop_limit(Some(self.config.ttl));
        socket
    }

    fn insert(&mut self, socket: tcp::Socket<'static>, tuple: Tuple, deadline: (Instant, Deadline)) -> u32 {
        let conn = Conn {
            socket,
            tuple,
            token: 0,
            queued: false,
            noticed: false,
            wake: None,
            armed: None,
            deadline: Some(deadline),
            discard: false,
            large: false,
            want_large: false,
            outbound: false,
            time_waited: false,
        };
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize].conn = Some(conn);
                i
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: Some(conn),
                });
                (self.slots.len() - 1) as u32
            }
        };
        self.by_tuple.insert(tuple, index);
        index
    }

    fn id(&self, index: u32) -> ConnId {
        ConnId {
            index,
            generation: self.slots[index as usize].generation,
        }
    }

    fn conn(&mut self, id: ConnId) -> Option<&mut Conn> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.conn.as_mut()
    }

    /// Opens a connection from `local` to `remote` (SYN sent at the next [`TcpHost::poll_transmit`]).
    /// `None` if the tuple is in use or the connection limit is reached.
    pub fn connect(&mut self, now: Instant, local: SocketAddrV4, remote: SocketAddrV4, token: u64) -> Option<ConnId> {
        let tuple = Tuple { local, remote };
        if self.by_tuple.contains_key(&tuple) || self.by_tuple.len() >= self.config.max_connections {
            return None;
        }
        self.set_now(now);
        let mut socket = self.new_socket();
        socket
            .connect(self.iface.context(), IpEndpoint::from(remote), IpEndpoint::from(local))
            .ok()?;
        let deadline = (now + self.config.handshake_timeout, Deadline::Handshake);
        let index = self.insert(socket, tuple, deadline);
        let c = self.slots[index as usize].conn.as_mut()?;
        c.token = token;
        c.outbound = true;
        self.counters.connected += 1;
        self.after_change(now, index);
        Some(self.id(index))
    }

    /// Marks a connection busy (it gets the large buffers) or idle (the idle-size ones), applied as soon as its
    /// buffers hold nothing: xlb never shrinks a window with data in it.
    pub fn set_busy(&mut self, id: ConnId, busy: bool) {
        if let Some(c) = self.conn(id) {
            c.want_large = busy;
        }
        self.fit(id.index);
    }

    /// Whether the connection holds the idle-size buffers (it has been idle with nothing in flight).
    pub fn is_idle_sized(&mut self, id: ConnId) -> bool {
        self.conn(id).is_some_and(|c| !c.large)
    }

    /// Swaps a connection's buffers to the size it should have, if they are empty.
    fn fit(&mut self, index: u32) {
        let (large_rx, large_tx, small) = (self.config.rx_buffer, self.config.tx_buffer, self.config.idle_buffer);
        let Some(c) = self.slots[index as usize].conn.as_mut() else {
            return;
        };
        // Large buffers for open connections only; a closed one whose peer has sent everything (TIME-WAIT,
        // CLOSING, LAST-ACK) goes back to small buffers once they are empty, so connections xlb closes first do
        // not hold 2 × 32 KiB through TIME-WAIT. In FIN-WAIT the peer may still be sending (a lingering close
        // discards an upload at full speed): those keep theirs.
        let open = matches!(c.socket.state(), State::Established | State::CloseWait);
        let closing = matches!(c.socket.state(), State::Closing | State::TimeWait | State::LastAck);
        if c.want_large == c.large || !(open || (closing && !c.want_large)) {
            return;
        }
        let (rx, tx) = if c.want_large {
            (large_rx, large_tx)
        } else {
            (small, small)
        };
        let fresh = (self.spare.take(rx), self.spare.take(tx));
        let unused = match c.socket.replace_buffers(fresh.0, fresh.1) {
            Ok(old) => {
                c.large = c.want_large;
                let before = (old.0.capacity() + old.1.capacity()) as u64;
                self.counters.buffer_bytes = self.counters.buffer_bytes - before + (rx + tx) as u64;
                old
            }
            Err(fresh) => fresh, // not empty after all (out-of-order data held): tried again later
        };
        self.spare.give(unused.0);
        self.spare.give(unused.1);
    }

    /// The caller's token of a connection (0 until [`TcpHost::set_token`]).
    pub fn token(&mut self, id: ConnId) -> Option<u64> {
        self.conn(id).map(|c| c.token)
    }

    /// Sets the token events of this connection carry.
    pub fn set_token(&mut self, id: ConnId, token: u64) {
        if let Some(c) = self.conn(id) {
            c.token = token;
        }
    }

    /// The connection's tuple.
    pub fn tuple(&mut self, id: ConnId) -> Option<Tuple> {
        self.conn(id).map(|c| c.tuple)
    }

    /// The connection's TCP state (`None`: gone).
    pub fn state(&mut self, id: ConnId) -> Option<State> {
        self.conn(id).map(|c| c.socket.state())
    }

    /// Reads and writes the connection's socket (`None`: gone). The connection is then considered for
    /// transmission, so call [`TcpHost::poll_transmit`] afterwards.
    pub fn socket(&mut self, now: Instant, id: ConnId) -> Option<&mut tcp::Socket<'static>> {
        self.conn(id)?;
        self.set_now(now);
        self.queue(id.index);
        self.conn(id).map(|c| &mut c.socket)
    }

    /// Closes the connection gracefully (FIN after the data queued); aborted if it has not closed within the
    /// closing deadline. Events for it stop (its token becomes 0).
    pub fn close(&mut self, now: Instant, id: ConnId) {
        let deadline = now + self.config.close_timeout;
        let Some(c) = self.conn(id) else { return };
        c.socket.close();
        c.token = 0;
        c.discard = true;
        c.want_large = false;
        while c.socket.recv(|data| (data.len(), data.len())).unwrap_or(0) > 0 {}
        c.deadline = Some((deadline, Deadline::Close));
        self.after_change(now, id.index);
    }

    /// Resets the connection (RST). Events for it stop.
    pub fn abort(&mut self, now: Instant, id: ConnId) {
        let Some(c) = self.conn(id) else { return };
        c.socket.abort();
        c.token = 0;
        self.after_change(now, id.index);
    }

    /// Resets every connection (the worker is stopping); the RSTs go out through [`TcpHost::poll_transmit`] and
    /// no event is reported for them.
    pub fn abort_all(&mut self, now: Instant) {
        for index in 0..self.slots.len() as u32 {
            if let Some(c) = self.slots[index as usize].conn.as_mut() {
                c.socket.abort();
                c.token = 0;
                self.after_change(now, index);
            }
        }
    }

    /// The next connection whose state changed (data or FIN received, established, gone), with its token;
    /// connections with token 0 are not reported.
    pub fn poll_event(&mut self) -> Option<(ConnId, u64)> {
        while let Some((id, recorded)) = self.events.pop_front() {
            // A live connection's current token (it may have been set or cleared since); a removed one's last.
            let token = match self.conn(id) {
                Some(c) => {
                    c.noticed = false;
                    c.token
                }
                None => recorded,
            };
            if token != 0 {
                return Some((id, token));
            }
        }
        None
    }

    /// Queues the connection for transmission and its owner for an event, re-arms its timer, or removes it if
    /// it is closed.
    fn after_change(&mut self, now: Instant, index: u32) {
        let id = self.id(index);
        self.fit(index);
        let Some(c) = self.slots[index as usize].conn.as_mut() else {
            return;
        };
        if matches!(c.deadline, Some((_, Deadline::Handshake))) && c.socket.state() == State::Established {
            c.deadline = None;
        }
        if !c.noticed {
            c.noticed = true;
            self.events.push_back((id, c.token));
        }
        self.schedule(now, index);
    }

    /// Files the connection under "transmit now" or its next timer, or removes it once closed.
    fn schedule(&mut self, now: Instant, index: u32) {
        let cx = self.iface.context();
        let Some(c) = self.slots[index as usize].conn.as_mut() else {
            return;
        };
        let poll = c.socket.poll_at(cx);
        c.time_waited |= c.socket.state() == State::TimeWait;
        if c.socket.state() == State::Closed && poll != PollAt::Now {
            self.remove(index);
            return;
        }
        let due = match poll {
            PollAt::Now => {
                self.queue(index);
                return;
            }
            PollAt::Time(t) => Some(self.std(t)),
            PollAt::Ingress => None,
        };
        let Some(c) = self.slots[index as usize].conn.as_mut() else {
            return;
        };
        let wake = match (due, c.deadline) {
            (Some(a), Some((b, _))) => Some(a.min(b)),
            (a, b) => a.or(b.map(|(t, _)| t)),
        };
        c.wake = wake;
        if let Some(t) = wake.map(|t| t.max(now)) {
            if c.armed.is_none_or(|armed| t < armed) {
                c.armed = Some(t);
                let generation = self.slots[index as usize].generation;
                self.timers.push(Reverse((t, index, generation)));
            }
        }
    }

    fn queue(&mut self, index: u32) {
        if let Some(c) = self.slots[index as usize].conn.as_mut() {
            if !c.queued {
                c.queued = true;
                self.ready.push_back(index);
            }
        }
    }

    fn remove(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        let Some(c) = slot.conn.take() else { return };
        let id = ConnId {
            index,
            generation: slot.generation,
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.by_tuple.remove(&c.tuple);
        let held = if c.large {
            self.config.rx_buffer + self.config.tx_buffer
        } else {
            2 * self.config.idle_buffer
        };
        self.counters.buffer_bytes -= held as u64;
        self.free.push(index);
        if c.outbound {
            self.gone.push(Gone {
                tuple: c.tuple,
                peer_may_wait: !c.time_waited,
            });
        }
        if c.token != 0 {
            // The owner learns that it is gone: its id no longer resolves.
            self.events.push_back((id, c.token));
        }
    }

    /// Writes the next segment to send as an IPv4 packet into `out`; returns its length and destination.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<(usize, Ipv4Addr)> {
        let ttl = self.config.ttl;
        if let Some((ip, tcp)) = self.replies.pop_front() {
            self.counters.segments_out += 1;
            return wire::emit(out, &ip, &tcp, ttl);
        }
        self.set_now(now);
        // Each queued connection is visited at most once per call (one that re-queues itself goes to the back).
        for _ in 0..self.ready.len() {
            let Some(index) = self.ready.pop_front() else { break };
            let cx = self.iface.context();
            let Some(c) = self.slots[index as usize].conn.as_mut() else {
                continue;
            };
            c.queued = false;
            let state_before = c.socket.state();
            let mut sent = None;
            let _ = c.socket.dispatch(cx, |_, _, (ip, tcp)| {
                sent = wire::emit(out, &ip, &tcp, ttl);
                Ok::<(), ()>(())
            });
            let changed = c.socket.state() != state_before;
            if changed {
                self.after_change(now, index);
            } else {
                self.schedule(now, index);
            }
            if sent.is_some() {
                self.counters.segments_out += 1;
                return sent;
            }
        }
        None
    }

    /// The next connection opened by [`TcpHost::connect`] that is gone since the last call (its local port can
    /// be given back).
    pub fn poll_gone(&mut self) -> Option<Gone> {
        self.gone.pop()
    }

    /// Whether segments are waiting for [`TcpHost::poll_transmit`].
    pub fn has_output(&self) -> bool {
        !self.ready.is_empty() || !self.replies.is_empty()
    }

    /// When [`TcpHost::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Moves connections whose timers are due to the transmit queue; aborts those past their deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((t, index, generation))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let slot = &mut self.slots[index as usize];
            if slot.generation != generation {
                continue;
            }
            let Some(c) = slot.conn.as_mut() else { continue };
            if c.armed != Some(t) {
                continue; // superseded by an earlier entry
            }
            c.armed = None;
            match c.wake {
                None => continue, // nothing due any more
                Some(wake) if wake > now => {
                    // Moved later since this entry was filed: file it again at its time.
                    c.armed = Some(wake);
                    self.timers.push(Reverse((wake, index, generation)));
                    continue;
                }
                Some(_) => c.wake = None,
            }
            if let Some((deadline, kind)) = c.deadline {
                if deadline <= now {
                    c.deadline = None;
                    match kind {
                        Deadline::Handshake => self.counters.handshake_timeouts += 1,
                        Deadline::Close => self.counters.close_timeouts += 1,
                    }
                    let Some(c) = self.slots[index as usize].conn.as_mut() else {
                        continue;
                    };
                    c.socket.abort();
                    self.after_change(now, index);
                    continue;
                }
            }
            self.queue(index);
        }
    }
}

#[cfg(test)]
mod tests;
