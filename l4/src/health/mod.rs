//! Health checks of server groups, run from the appliance's own stack (sans-IO).
//!
//! [`HealthChecker`] originates IPv4 probe packets from a local address and consumes the replies; no kernel
//! socket is involved. The caller drives it like the rest of the stack: it passes time in, pulls packets to
//! send with [`HealthChecker::poll_transmit`] (IPv4 without Ethernet: the caller routes them to the server
//! and resolves the next hop), offers received packets with [`HealthChecker::handle_packet`], sleeps until
//! [`HealthChecker::poll_timeout`], and drains state changes with [`HealthChecker::poll_event`]. The core
//! logs nothing; the caller logs the events.
//!
//! # Semantics
//!
//! - Every target is probed each `interval_ms`; first probes are spread over one interval by the target's
//!   index, so targets sharing an interval never probe in the same instant. A probe that has not succeeded
//!   `timeout_ms` after it was sent has failed.
//! - Targets start **up**, so traffic flows at startup (as IPVS with keepalived does by default). `fall`
//!   consecutive failures take an up target down ([`HealthEvent::Down`]); `rise` consecutive successes
//!   bring a down target up ([`HealthEvent::Up`]). Events are emitted on transitions only.
//! - A dead server is reported within `fall x interval + timeout` of its death (sooner when it refuses:
//!   RST and ICMP unreachable fail a probe at once), given enough probe ports that no probe waits for one.
//! - Probe kinds: see [`CheckKind`] and the `tcp_probe` module. ICMP "fragmentation needed" is a path MTU
//!   signal and does not fail a probe; other destination-unreachable codes do.
//!
//! # Ports
//!
//! Each in-flight probe has its own source port from [`ProbePorts`], taken round-robin and never one whose
//! previous probe is still in flight. When every port is in flight, due probes wait for one to free (counted
//! in [`HealthCounters::port_waits`]). Replies are matched by destination port, then checked against the
//! probe's addresses, ports and (TCP) sequence numbers.
//!
//! # Replies
//!
//! [`HealthChecker::handle_packet`] returns `true` when the packet is about a live probe: a reply from its
//! server to its port, or an ICMP error quoting it. A packet that matches a live probe but fails its L4
//! (or ICMP) checksum is consumed and ignored (counted in [`HealthCounters::bad_checksum`]) so that the
//! caller does not answer a corrupt packet. A reply whose TCP/UDP checksum field holds just the pseudo-header
//! sum comes from a server with TX checksum offload on a veth or virtual NIC (see [`xlb_stack::offload`]):
//! every probe then times out, so the first such reply logs the cause and the fix (once per probe source
//! address per process). Packets to a checker port with no live probe (late replies of a finished probe) are
//! *not* consumed: the local stack answers them as for any closed port, with a RST or an ICMP port
//! unreachable, which is the right end for a stray segment.
//!
//! # Timers
//!
//! Each target has one timer, its next event (its next probe due, or its probe's deadline when earlier), in a
//! binary heap indexed by target (`timers`): [`HealthChecker::handle_timeout`] visits only the timers due, one
//! event each (plus, once per probe that ended early, the visit of its old deadline that moves the timer on), so
//! its cost follows the probes (O(log n) each), not the number of targets; a call with nothing due reads the
//! heap's top and returns, and [`HealthChecker::poll_timeout`] is O(1). Rounds missed while the caller was not
//! polling are skipped by arithmetic, not a loop.
//!
//! # Counters
//!
//! [`HealthChecker::counters`] are the checker's own; with [`HealthChecker::share_counters`] they are also
//! published (after every call that changed them) to a [`SharedHealthCounters`] that the control plane reads
//! for stats and metrics, and a new checker (after a reload) continues from the values published there.
//!
//! # Allocation
//!
//! Everything is reserved in [`HealthChecker::new`]: per-target request bytes, the port table, the timer
//! heap and queues. The HTTP response reader keeps the 12 bytes of the status line in a fixed array.

mod config;
mod http;
mod packets;
mod replies;
mod tcp_probe;
mod timers;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::SharedHealthCounters;

pub use config::{
    CheckKind, HealthCheckConfig, DEFAULT_FALL, DEFAULT_INTERVAL_MS, DEFAULT_PATH, DEFAULT_PAYLOAD, DEFAULT_RISE,
    DEFAULT_TIMEOUT_MS, MAX_HOST_LEN, MAX_INTERVAL_MS, MAX_PATH_LEN, MAX_PAYLOAD_LEN,
};

use packets::TcpOut;
use tcp_probe::{Mode, Step, TcpProbe};
use timers::TimerHeap;
use xlb_stack::wire::{Protocol, TcpFlags};

/// Largest packet [`HealthChecker::poll_transmit`] writes; its buffer must hold at least this many bytes.
/// (The config limits keep the biggest probe, an HTTP request with the longest path and host, below it.)
pub const MAX_PACKET_LEN: usize = 1500;

/// Identity of a target: the server `server` of group `group` (indices in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetId {
    /// Index of the server group.
    pub group: usize,
    /// Index of the server in its group.
    pub server: usize,
}

/// A server to check.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Its identity, reported in events.
    pub id: TargetId,
    /// The address and port probed.
    pub server: SocketAddrV4,
    /// Our local address on the server's link: the probes' source.
    pub source: Ipv4Addr,
    /// How to check it (must pass [`HealthCheckConfig::validate`]).
    pub check: HealthCheckConfig,
}

/// The local ports the checker may use as probe source ports: `base + k * stride` for `k` in `0..count`.
///
/// A stride lets several workers share a range (worker `w` of `n` gets `base + w`, stride `n`) or match the
/// NIC's RSS spread so replies come back to the worker that sent the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbePorts {
    /// The first port.
    pub base: u16,
    /// How many ports (at least 1); also the most probes in flight at once.
    pub count: u16,
    /// Distance between two ports (at least 1).
    pub stride: u16,
}

impl ProbePorts {
    /// Port number `k`.
    pub fn port(&self, k: usize) -> u16 {
        (usize::from(self.base) + k * usize::from(self.stride)) as u16
    }

    /// The index `k` of `port`, if it is one of ours.
    pub fn index(&self, port: u16) -> Option<usize> {
        let off = port.checked_sub(self.base)?;
        let (k, rem) = (off / self.stride, off % self.stride);
        (rem == 0 && k < self.count).then_some(usize::from(k))
    }

    fn check(&self) -> Result<(), String> {
        let last = u32::from(self.base) + u32::from(self.count.saturating_sub(1)) * u32::from(self.stride);
        if self.base == 0 || self.count == 0 || self.stride == 0 || last > u32::from(u16::MAX) {
            return Err(format!("invalid probe ports {self:?}"));
        }
        Ok(())
    }
}

/// A change of a target's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    /// The target passed `rise` consecutive probes while down.
    Up(TargetId),
    /// The target failed `fall` consecutive probes while up.
    Down(TargetId),
}

/// Why a probe failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No success within `timeout_ms`.
    Timeout,
    /// tcp/http: the server answered the SYN with a RST.
    Refused,
    /// http: the server reset the connection before the status line.
    Reset,
    /// An ICMP destination unreachable (with this code) quoting the probe.
    Unreachable(u8),
    /// http: a status that does not match `expect_status`.
    BadStatus(u16),
    /// http: a response that is not HTTP/1.x, or a close before the status line.
    BadResponse,
}

/// What the checker did, for `xlbctl stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthCounters {
    /// Probes started.
    pub probes: u64,
    /// Probes that succeeded.
    pub successes: u64,
    /// Probes that failed (any [`Failure`]).
    pub failures: u64,
    /// Of the failures, the timeouts.
    pub timeouts: u64,
    /// Packets about a live probe dropped for a bad L4 or ICMP checksum.
    pub bad_checksum: u64,
    /// Times a due probe had to wait because every probe port was in flight.
    pub port_waits: u64,
}

/// A probe in flight.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// Index of its port in [`ProbePorts`].
    slot: usize,
    port: u16,
    deadline: Instant,
    /// The TCP connection (tcp and http), `None` for udp.
    tcp: Option<TcpProbe>,
}

/// A RST owed for a connection of a finished probe.
#[derive(Debug, Clone, Copy)]
struct Teardown {
    port: u16,
    seq: u32,
}

/// A target and its state.
struct Checked {
    target: Target,
    /// The HTTP request or UDP payload, rendered once.
    payload: Box<[u8]>,
    up: bool,
    successes: u32,
    failures: u32,
    last_failure: Option<Failure>,
    next_probe: Instant,
    probe: Option<Probe>,
    teardown: Option<Teardown>,
    /// Queued in `HealthChecker::due`.
    in_due: bool,
    /// Queued in `HealthChecker::ready`.
    in_ready: bool,
}

impl Checked {
    fn owes(&self) -> bool {
        self.teardown.is_some() || self.probe.and_then(|p| p.tcp).is_some_and(|tcp| tcp.owes())
    }

    fn local(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.target.source, port)
    }
}

/// The health checks of one worker (sans-IO).
pub struct HealthChecker {
    targets: Vec<Checked>,
    by_id: HashMap<TargetId, usize>,
    ports: ProbePorts,
    /// Port slot → the target whose probe holds it.
    slots: Vec<Option<usize>>,
    next_slot: usize,
    in_flight: usize,
    /// One timer per target: its next event (next probe due, or its probe's deadline if earlier).
    timers: TimerHeap,
    /// Timer items looked at so far (a probe due, a probe's deadline, or the deadline of a probe that ended
    /// early): the checker's work, which follows the probes, not the number of targets.
    timer_visits: u64,
    /// Targets whose probe is due but not sent yet (waiting for `poll_transmit` or a free port).
    due: VecDeque<usize>,
    /// Targets owing a segment (request, ACK, teardown RST).
    ready: VecDeque<usize>,
    events: VecDeque<HealthEvent>,
    epoch: Instant,
    /// The latest time passed in.
    now: Instant,
    next_serial: u64,
    counters: HealthCounters,
    /// Where the counters are published, and what was published last.
    shared: Option<(Arc<SharedHealthCounters>, HealthCounters)>,
}

impl HealthChecker {
    /// A checker for `targets`, starting at `now`, with probe source ports from `ports`.
    ///
    /// Targets start up (see the module docs). Target `i` of `n` is first probed at
    /// `now + interval * i / n`.
    ///
    /// # Panics
    ///
    /// If a target's check does not pass [`HealthCheckConfig::validate`], two targets share an id, or `ports`
    /// is empty, has a zero base or stride, or runs past port 65535. These are configuration errors the
    /// caller checks first.
    pub fn new(now: Instant, targets: Vec<Target>, ports: ProbePorts) -> Self {
        if let Err(e) = ports.check() {
            panic!("{e}");
        }
        let n = targets.len();
        let mut by_id = HashMap::with_capacity(n);
        let mut timers = TimerHeap::new(n);
        let checked: Vec<Checked> = targets
            .into_iter()
            .enumerate()
            .map(|(i, target)| {
                if let Err(e) = target.check.validate() {
                    panic!("target {:?}: {e}", target.id);
                }
                assert!(
                    by_id.insert(target.id, i).is_none(),
                    "target {:?} listed twice",
                    target.id
                );
                let offset = spread(target.check.interval(), i, n);
                let next_probe = now + offset;
                timers.set(i, next_probe);
                Checked {
                    payload: target.check.probe_payload(target.server).into_boxed_slice(),
                    target,
                    up: true,
                    successes: 0,
                    failures: 0,
                    last_failure: None,
                    next_probe,
                    probe: None,
                    teardown: None,
                    in_due: false,
                    in_ready: false,
                }
            })
            .collect();
        HealthChecker {
            targets: checked,
            by_id,
            ports,
            slots: vec![None; usize::from(ports.count)],
            next_slot: 0,
            in_flight: 0,
            timers,
            timer_visits: 0,
            due: VecDeque::with_capacity(n),
            ready: VecDeque::with_capacity(n),
            events: VecDeque::with_capacity(2 * n),
            epoch: now,
            now,
            next_serial: 0,
            counters: HealthCounters::default(),
            shared: None,
        }
    }

    /// Publishes the counters to `shared` from now on, continuing from the values it holds (so a checker
    /// that replaces another one after a reload keeps the totals growing).
    pub fn share_counters(&mut self, shared: Arc<SharedHealthCounters>) {
        let start = shared.snapshot();
        self.counters = start;
        self.shared = Some((shared, start));
    }

    /// Publishes the counters if they changed since the last time.
    fn publish(&mut self) {
        if let Some((shared, published)) = &mut self.shared {
            if *published != self.counters {
                shared.publish(&self.counters);
                *published = self.counters;
            }
        }
    }

    /// Writes the next packet to send into `buf` (an IPv4 packet, no Ethernet header) and returns its
    /// length: owed segments of open probes first, then due probes. Call until it returns `None` after every
    /// `handle_packet` and `handle_timeout`.
    ///
    /// Runs expired timers first, so a caller that only polls here still sees timeouts.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`MAX_PACKET_LEN`].
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        assert!(
            buf.len() >= MAX_PACKET_LEN,
            "health check transmit buffer below MAX_PACKET_LEN"
        );
        if self.ready.is_empty() && self.due.is_empty() && self.timers.peek().is_none_or(|(at, _)| at > now) {
            // Nothing owed, due or expired (the common case: a worker calls this every turn): no timer to run and
            // no counter changed since the last publish.
            self.now = self.now.max(now);
            return None;
        }
        self.handle_timeout(now);
        let out = self.next_packet(now, buf);
        self.publish();
        out
    }

    fn next_packet(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        while let Some(&i) = self.ready.front() {
            let len = self.emit_owed(i, buf);
            if len.is_none() || !self.targets[i].owes() {
                self.ready.pop_front();
                self.targets[i].in_ready = false;
            }
            if len.is_some() {
                return len;
            }
        }
        while let Some(&i) = self.due.front() {
            if self.targets[i].probe.is_some() {
                // One probe per target at a time (`on_due` does not queue a target in flight; kept as a guard).
                self.due.pop_front();
                self.targets[i].in_due = false;
                continue;
            }
            let slot = self.free_slot()?;
            self.due.pop_front();
            self.targets[i].in_due = false;
            return Some(self.start_probe(now, i, slot, buf));
        }
        None
    }

    /// Offers a received IPv4 packet (no Ethernet header). Returns `true` if it was about one of our live
    /// probes (a reply to it, or an ICMP error quoting it) and is consumed; `false` if the caller should
    /// handle it as usual. See the module docs for corrupt and late packets.
    pub fn handle_packet(&mut self, now: Instant, packet: &[u8]) -> bool {
        self.now = self.now.max(now);
        let Some(ip) = packets::ipv4(packet) else {
            return false;
        };
        let consumed = match ip.protocol() {
            Protocol::Tcp => self.handle_tcp(now, &ip),
            Protocol::Udp => self.handle_udp(now, &ip),
            Protocol::Icmp => self.handle_icmp(now, &ip),
            Protocol::Other(_) => false,
        };
        self.publish();
        consumed
    }

    /// When [`HealthChecker::handle_timeout`] (or `poll_transmit`) has work next: a probe due or timing out,
    /// or the latest time passed in if packets are ready to send now.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let send_now = !self.ready.is_empty() || (!self.due.is_empty() && self.has_free_slot());
        let timer = self.timers.peek().map(|(at, _)| at);
        match (send_now, timer) {
            (true, Some(at)) => Some(at.min(self.now)),
            (true, None) => Some(self.now),
            (false, timer) => timer,
        }
    }

    /// Runs the timers expired at `now`: probes that timed out fail, due targets queue their probe for
    /// [`HealthChecker::poll_transmit`].
    ///
    /// Costs O(log n) per timer due (n targets) and O(1) when none is: it only looks at the timer heap's top.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        while let Some((at, i)) = self.timers.peek() {
            if at > now {
                break;
            }
            // At most one event per visit, in time order over all targets (a target's due probe before its deadline
            // at the same instant); the target's timer then moves to its next event, which may be due as well.
            self.timer_visits += 1;
            let t = &self.targets[i];
            if t.probe.is_some_and(|p| p.deadline <= now && p.deadline < t.next_probe) {
                self.time_out(i);
            } else if t.next_probe <= now {
                self.on_due(now, i);
            }
            self.rearm(i);
        }
        self.publish();
    }

    /// Timer items looked at so far (see the field); for tests that count work.
    #[cfg(test)]
    fn timer_visits(&self) -> u64 {
        self.timer_visits
    }

    /// Moves target `i`'s timer to its next event.
    fn rearm(&mut self, i: usize) {
        let t = &self.targets[i];
        let at = match t.probe {
            Some(p) => p.deadline.min(t.next_probe),
            None => t.next_probe,
        };
        self.timers.set(i, at);
    }

    /// The next state change, oldest first.
    pub fn poll_event(&mut self) -> Option<HealthEvent> {
        self.events.pop_front()
    }

    /// Whether the target is up (unknown ids are reported down).
    pub fn is_up(&self, id: TargetId) -> bool {
        self.by_id.get(&id).is_some_and(|&i| self.targets[i].up)
    }

    /// Sets a target's state without an event, e.g. to carry a known state over to a checker rebuilt after a
    /// configuration change. Unknown ids are ignored.
    pub fn assume(&mut self, id: TargetId, up: bool) {
        if let Some(&i) = self.by_id.get(&id) {
            let t = &mut self.targets[i];
            t.up = up;
            t.successes = 0;
            t.failures = 0;
        }
    }

    /// Why the target's latest failed probe failed (for status displays), if one failed.
    pub fn last_failure(&self, id: TargetId) -> Option<Failure> {
        self.by_id.get(&id).and_then(|&i| self.targets[i].last_failure)
    }

    /// Whether a local port belongs to the checker. The caller sends TCP and UDP packets to (a probe source
    /// address, such a port) to [`HealthChecker::handle_packet`]; ICMP errors should be offered too.
    pub fn owns_port(&self, port: u16) -> bool {
        self.ports.index(port).is_some()
    }

    /// The checker's counters.
    pub fn counters(&self) -> &HealthCounters {
        &self.counters
    }

    // --- scheduling ---

    fn on_due(&mut self, now: Instant, i: usize) {
        let port_free = self.has_free_slot();
        let t = &mut self.targets[i];
        let interval = t.target.check.interval();
        // Keep the phase; skip rounds missed while the caller was not polling (computed, not looped).
        let mut next = t.next_probe + interval;
        if next <= now {
            let missed = (now - next).as_nanos() / interval.as_nanos().max(1) + 1;
            next += Duration::from_nanos((interval.as_nanos() * missed) as u64);
        }
        t.next_probe = next;
        if t.probe.is_none() && !t.in_due {
            t.in_due = true;
            if !port_free {
                self.counters.port_waits += 1;
            }
            self.due.push_back(i);
        }
    }

    fn has_free_slot(&self) -> bool {
        self.in_flight < self.slots.len()
    }

    /// The next free port slot at or after the round-robin cursor.
    fn free_slot(&mut self) -> Option<usize> {
        if !self.has_free_slot() {
            return None;
        }
        let n = self.slots.len();
        let slot = (0..n)
            .map(|k| (self.next_slot + k) % n)
            .find(|&k| self.slots[k].is_none())?;
        self.next_slot = (slot + 1) % n;
        Some(slot)
    }

    fn start_probe(&mut self, now: Instant, i: usize, slot: usize, buf: &mut [u8]) -> usize {
        let port = self.ports.port(slot);
        let serial = self.next_serial;
        self.next_serial += 1;
        self.slots[slot] = Some(i);
        self.in_flight += 1;
        self.counters.probes += 1;
        let t = &mut self.targets[i];
        let deadline = now + t.target.check.timeout();
        let local = t.local(port);
        let (tcp, len) = match t.target.check.kind {
            CheckKind::Udp => (None, packets::udp(buf, local, t.target.server, &t.payload)),
            CheckKind::Tcp | CheckKind::Http => {
                let probe = TcpProbe::new(isn(now - self.epoch, port, serial));
                let syn = probe.syn();
                let out = TcpOut {
                    src: local,
                    dst: t.target.server,
                    seq: syn.seq,
                    ack: syn.ack,
                    flags: syn.flags,
                    mss: Some(packets::MSS),
                    payload: syn.payload,
                };
                (Some(probe), packets::tcp(buf, &out))
            }
        };
        t.probe = Some(Probe {
            slot,
            port,
            deadline,
            tcp,
        });
        self.rearm(i);
        len
    }

    /// Writes one segment target `i` owes: a teardown RST first, then the probe's request or ACK.
    fn emit_owed(&mut self, i: usize, buf: &mut [u8]) -> Option<usize> {
        let t = &mut self.targets[i];
        let server = t.target.server;
        if let Some(td) = t.teardown.take() {
            let out = TcpOut {
                src: t.local(td.port),
                dst: server,
                seq: td.seq,
                ack: 0,
                flags: TcpFlags::RST,
                mss: None,
                payload: &[],
            };
            return Some(packets::tcp(buf, &out));
        }
        let probe = t.probe.as_mut()?;
        let seg = probe.tcp.as_mut()?.poll_segment(&t.payload)?;
        let out = TcpOut {
            src: SocketAddrV4::new(t.target.source, probe.port),
            dst: server,
            seq: seg.seq,
            ack: seg.ack,
            flags: seg.flags,
            mss: None,
            payload: seg.payload,
        };
        Some(packets::tcp(buf, &out))
    }

    fn queue_ready(&mut self, i: usize) {
        let t = &mut self.targets[i];
        if !t.in_ready && t.owes() {
            t.in_ready = true;
            self.ready.push_back(i);
        }
    }

    /// Fails target `i`'s probe for a timeout, resetting its connection if the server holds one.
    fn time_out(&mut self, i: usize) {
        let connected = self.targets[i]
            .probe
            .and_then(|p| p.tcp)
            .is_some_and(|tcp| tcp.connected());
        self.finish(i, Err(Failure::Timeout), connected);
    }

    /// Ends target `i`'s probe with `result`; `teardown`: the server holds a connection to reset.
    fn finish(&mut self, i: usize, result: Result<(), Failure>, teardown: bool) {
        let t = &mut self.targets[i];
        let Some(probe) = t.probe.take() else {
            return;
        };
        self.slots[probe.slot] = None;
        self.in_flight -= 1;
        // The target's timer stays at the probe's deadline (if that was its next event): that visit finds nothing
        // due and moves it on. One extra visit per probe, so the work still follows the probes.
        if let Some(tcp) = probe.tcp.filter(|_| teardown) {
            t.teardown = Some(Teardown {
                port: probe.port,
                seq: tcp.snd_nxt,
            });
        }
        let check = &t.target.check;
        match result {
            Ok(()) => {
                self.counters.successes += 1;
                t.failures = 0;
                t.successes = t.successes.saturating_add(1);
                if !t.up && t.successes >= check.rise {
                    t.up = true;
                    self.events.push_back(HealthEvent::Up(t.target.id));
                }
            }
            Err(failure) => {
                self.counters.failures += 1;
                if failure == Failure::Timeout {
                    self.counters.timeouts += 1;
                }
                t.last_failure = Some(failure);
                t.successes = 0;
                t.failures = t.failures.saturating_add(1);
                if t.up && t.failures >= check.fall {
                    t.up = false;
                    self.events.push_back(HealthEvent::Down(t.target.id));
                }
            }
        }
        self.queue_ready(i);
    }
}

/// Offset of target `i` of `n`'s first probe: `interval * i / n`.
fn spread(interval: Duration, i: usize, n: usize) -> Duration {
    let nanos = interval.as_nanos() * i as u128 / n.max(1) as u128;
    Duration::from_nanos(nanos as u64)
}

/// An initial sequence number that differs per probe and is hard to guess off-path: the time since the
/// checker started, the port and the probe serial, mixed (splitmix64 finalizer).
fn isn(elapsed: Duration, port: u16, serial: u64) -> u32 {
    let mut x = (elapsed.as_nanos() as u64) ^ (u64::from(port) << 48) ^ serial.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) as u32
}
