//! Neighbour table: IPv4 next hop → MAC address, resolved by ARP (sans-IO).
//!
//! Packets to a next hop that is not resolved yet are copied into a bounded queue and an ARP request is sent;
//! the answer releases them. Unanswered requests are retried `max_probes` times, then the waiting packets are
//! dropped (counted). Resolved entries expire after `reachable_time`; an entry in use near its expiry is
//! refreshed by a new request while the old MAC keeps being used, so established flows see no gap.
//!
//! # Keying and what ARP may change
//!
//! Entries are keyed by (link, address): a link is an interface (several ports on queues of one interface share
//! it), so what arrives on one link never touches another link's entries. [`NeighbourTable::on_arp`] applies
//! the policy of Linux's defaults (`arp_accept=0`): an ARP packet never creates an entry (entries are created
//! only when the appliance itself needs a next hop, by [`NeighbourTable::resolve`]); it completes an entry being
//! resolved, confirms one being refreshed, and may change the MAC of an existing entry of its own link, but not
//! within `locktime` of the previous change (as Linux's `locktime`: the first answer wins, so two hosts
//! answering for one address do not make the entry flap). The caller checks first that the sender's address
//! belongs to the link's subnets (see `LocalStack`).
//!
//! # Bounds and timers
//!
//! All memory is reserved up front. A full table makes room for a new entry by evicting the entry least recently
//! used to send (entries never used to send go first), but never one with packets waiting or used within
//! `keep_used`; only when every entry is that busy is the new next hop refused (`neighbour_table_full`, logged at
//! most once per 10 s).
//! Timers (probe retries, expiry) sit in a binary heap with at most one live item per entry (a deadline that
//! moves later is re-armed lazily when its old item comes up), so `handle_timeout` costs O(entries due) and
//! `poll_timeout` O(1), whatever the table's size.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::counters::StackCounters;
use crate::drops::DropReason;
use crate::pipeline::PortId;
use crate::wire::{build, EthernetAddress, Ipv4Addr, ETH_HEADER_LEN};

/// Neighbour table settings.
#[derive(Debug, Clone)]
pub struct NeighbourConfig {
    /// Maximum number of neighbours.
    pub capacity: usize,
    /// How long a resolved entry is trusted.
    pub reachable_time: Duration,
    /// Interval between ARP requests for an unresolved entry.
    pub retransmit: Duration,
    /// ARP requests sent before giving up on an entry.
    pub max_probes: u8,
    /// Packets that may wait for resolution, over all neighbours.
    pub queue_len: usize,
    /// Largest packet that may wait (bigger ones are dropped).
    pub max_frame: usize,
    /// An entry's MAC changed by ARP is not changed again by ARP before this long (Linux `locktime`).
    pub locktime: Duration,
    /// An entry used to send within this long is never evicted to make room.
    pub keep_used: Duration,
}

impl Default for NeighbourConfig {
    fn default() -> Self {
        NeighbourConfig {
            capacity: 4096,
            reachable_time: Duration::from_secs(60),
            retransmit: Duration::from_secs(1),
            max_probes: 3,
            queue_len: 256,
            max_frame: 2048,
            locktime: Duration::from_secs(1),
            keep_used: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// ARP requests sent, no answer yet.
    Incomplete { probes: u8, next_probe: Instant },
    /// Answered; `refreshing` while a refresh request is outstanding.
    Reachable {
        mac: EthernetAddress,
        expires: Instant,
        refreshing: bool,
    },
}

/// (link, address): a link is identified by its first port.
type Key = (u16, Ipv4Addr);

#[derive(Debug, Clone, Copy)]
struct Neighbour {
    /// The port to send on (the link's first port).
    port: PortId,
    /// Our address on the link used as the ARP sender address.
    source: Ipv4Addr,
    state: State,
    /// When the MAC was last set (for `locktime`).
    changed: Option<Instant>,
    /// When the entry was last used to send (`None`: never).
    used: Option<Instant>,
    /// Packets waiting for this entry.
    queued: u16,
    /// In `probes_due`.
    probe_queued: bool,
    /// The time of this entry's live item in the timer heap.
    timer: Option<Instant>,
}

impl Neighbour {
    fn deadline(&self) -> Instant {
        match self.state {
            State::Incomplete { next_probe, .. } => next_probe,
            State::Reachable { expires, .. } => expires,
        }
    }
}

/// A packet waiting for its next hop to be resolved.
struct Waiting {
    key: Key,
    port: PortId,
    len: usize,
    data: Box<[u8]>,
}

/// What [`NeighbourTable::on_arp`] did with an ARP packet's sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOutcome {
    /// An entry was completed, confirmed or changed: worth sharing with the other workers.
    Learned,
    /// The sender's entry already says so (nothing to share).
    Unchanged,
    /// No entry for the sender on this link: ARP does not create entries.
    Unknown,
    /// The entry's MAC was changed less than `locktime` ago: ignored.
    Locked,
}

/// The neighbour table of one worker.
pub struct NeighbourTable {
    config: NeighbourConfig,
    macs: Vec<EthernetAddress>,
    /// Port → its link (the link's first port).
    links: Vec<u16>,
    entries: HashMap<Key, Neighbour, ahash::RandomState>,
    /// Probe retries and expiry: (time, entry); an item is live only if the entry's `timer` names its time.
    timers: BinaryHeap<Reverse<(Instant, Key)>>,
    /// Entries that need an ARP request sent now.
    probes_due: VecDeque<Key>,
    /// Slots of waiting packets (`None` = free).
    waiting: Vec<Option<Waiting>>,
    /// Spare buffers for `waiting` slots, so queueing never allocates.
    spare: Vec<Box<[u8]>>,
    /// Set when some waiting packet's neighbour became reachable.
    released: bool,
    /// Entries evicted to make room (for tests and logs).
    evictions: u64,
    /// Heap items looked at by `handle_timeout` (a work counter for tests).
    timer_visits: u64,
    /// When a full table may be logged again, and the refusals since the last line.
    full_log: (Option<Instant>, u64),
}

/// How often a table full of busy entries is logged.
const FULL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Result of [`NeighbourTable::resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The next hop's MAC address.
    Ready(EthernetAddress),
    /// Not resolved yet: queue the packet with [`NeighbourTable::enqueue`].
    Pending,
}

impl NeighbourTable {
    /// A table for a worker whose ports have these MAC addresses; ports with the same MAC are one link (queues
    /// of one interface).
    pub fn new(config: NeighbourConfig, port_macs: Vec<EthernetAddress>) -> Self {
        let links = (0..port_macs.len())
            .map(|p| port_macs.iter().position(|m| *m == port_macs[p]).unwrap_or(p) as u16)
            .collect();
        Self::with_links(config, port_macs, links)
    }

    /// A table whose port `p` belongs to the link `links[p]` (the link's first port).
    pub fn with_links(config: NeighbourConfig, port_macs: Vec<EthernetAddress>, links: Vec<u16>) -> Self {
        assert_eq!(port_macs.len(), links.len(), "one link per port");
        let spare = (0..config.queue_len)
            .map(|_| vec![0u8; config.max_frame].into_boxed_slice())
            .collect();
        NeighbourTable {
            entries: HashMap::with_capacity_and_hasher(config.capacity, ahash::RandomState::new()),
            timers: BinaryHeap::with_capacity(2 * config.capacity + 1),
            probes_due: VecDeque::with_capacity(config.capacity),
            waiting: (0..config.queue_len).map(|_| None).collect(),
            spare,
            released: false,
            macs: port_macs,
            links,
            config,
            evictions: 0,
            timer_visits: 0,
            full_log: (None, 0),
        }
    }

    fn key(&self, port: PortId, ip: Ipv4Addr) -> Key {
        (self.links.get(port).copied().unwrap_or(port as u16), ip)
    }

    /// Number of entries (resolved or not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of packets waiting for resolution.
    pub fn waiting(&self) -> usize {
        self.waiting.iter().filter(|w| w.is_some()).count()
    }

    /// Entries evicted so far to make room for new ones.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Timer items `handle_timeout` has looked at so far (a measure of its work, for tests).
    pub fn timer_visits(&self) -> u64 {
        self.timer_visits
    }

    /// The MAC of `ip` on `port`'s link, if resolved (whatever its age; no side effects).
    pub fn lookup(&self, port: PortId, ip: Ipv4Addr) -> Option<EthernetAddress> {
        match self.entries.get(&self.key(port, ip))?.state {
            State::Reachable { mac, .. } => Some(mac),
            State::Incomplete { .. } => None,
        }
    }

    /// Puts the entry's timer item at `at` unless an earlier live item exists.
    fn arm(timers: &mut BinaryHeap<Reverse<(Instant, Key)>>, key: Key, n: &mut Neighbour, at: Instant) {
        if n.timer.is_none_or(|t| at < t) {
            n.timer = Some(at);
            timers.push(Reverse((at, key)));
        }
    }

    fn queue_probe(probes_due: &mut VecDeque<Key>, key: Key, n: &mut Neighbour) {
        if !n.probe_queued {
            n.probe_queued = true;
            probes_due.push_back(key);
        }
    }

    /// Makes room for one more entry: evicts the least recently used entry that has no packet waiting and was not
    /// used within `keep_used` (never-used entries first). Returns whether there is room.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.entries.len() < self.config.capacity {
            return true;
        }
        let keep = self.config.keep_used;
        let victim = self
            .entries
            .iter()
            .filter(|(_, n)| n.queued == 0 && n.used.is_none_or(|u| now.saturating_duration_since(u) >= keep))
            .min_by_key(|(_, n)| n.used)
            .map(|(k, _)| *k);
        match victim {
            Some(k) => {
                self.entries.remove(&k);
                self.evictions += 1;
                true
            }
            None => false,
        }
    }

    /// Logs a refused next hop, at most once per [`FULL_LOG_INTERVAL`].
    fn log_full(&mut self, now: Instant, next_hop: Ipv4Addr) {
        let (next, refused) = &mut self.full_log;
        *refused += 1;
        if next.is_some_and(|t| now < t) {
            return;
        }
        *next = Some(now + FULL_LOG_INTERVAL);
        tracing::warn!(
            next_hop = %next_hop,
            capacity = self.config.capacity,
            refused = *refused,
            "neighbour table full of entries in use (packets waiting, or used within {} s): next hops refused \
             ({} since the last such line; counted as neighbour_table_full); raise datapath.neighbours",
            self.config.keep_used.as_secs(),
            *refused
        );
        *refused = 0;
    }

    fn new_entry(port: PortId, source: Ipv4Addr, state: State) -> Neighbour {
        Neighbour {
            port,
            source,
            state,
            changed: None,
            used: None,
            queued: 0,
            probe_queued: false,
            timer: None,
        }
    }

    /// The MAC of `next_hop` if resolved and fresh. Starts resolution (`source` is our address on `port` used
    /// as the ARP sender) when it is unknown, and a refresh when it is close to expiry. A new entry in a full
    /// table evicts an idle one (see the module docs).
    pub fn resolve(&mut self, now: Instant, port: PortId, source: Ipv4Addr, next_hop: Ipv4Addr) -> Resolution {
        let refresh_window = self.config.retransmit * u32::from(self.config.max_probes);
        let key = self.key(port, next_hop);
        if !self.entries.contains_key(&key) {
            if self.make_room(now) {
                let state = State::Incomplete {
                    probes: 0,
                    next_probe: now,
                };
                let mut n = Self::new_entry(key.0 as PortId, source, state);
                n.used = Some(now);
                Self::queue_probe(&mut self.probes_due, key, &mut n);
                self.entries.insert(key, n);
            } else {
                self.log_full(now, next_hop);
            }
            return Resolution::Pending;
        }
        let n = self.entries.get_mut(&key).expect("checked above");
        n.used = Some(now);
        match &mut n.state {
            State::Reachable {
                mac,
                expires,
                refreshing,
            } if now < *expires => {
                let mac = *mac;
                if !*refreshing && *expires - now <= refresh_window {
                    *refreshing = true;
                    Self::queue_probe(&mut self.probes_due, key, n);
                }
                Resolution::Ready(mac)
            }
            State::Reachable { .. } => {
                n.state = State::Incomplete {
                    probes: 0,
                    next_probe: now,
                };
                Self::queue_probe(&mut self.probes_due, key, n);
                Resolution::Pending
            }
            State::Incomplete { .. } => Resolution::Pending,
        }
    }

    /// Copies `packet` (a full Ethernet frame; its destination MAC is filled in on release) to wait for
    /// `next_hop` on `port`'s link. Fails with the drop reason when the queue is full, the packet too big, or the
    /// neighbour has no entry (the table was full of busy entries: see [`NeighbourTable::resolve`]).
    pub fn enqueue(&mut self, port: PortId, next_hop: Ipv4Addr, packet: &[u8]) -> Result<(), DropReason> {
        let key = self.key(port, next_hop);
        let Some(n) = self.entries.get_mut(&key) else {
            return Err(DropReason::NeighbourTableFull);
        };
        if packet.len() > self.config.max_frame {
            return Err(DropReason::NeighbourUnresolved);
        }
        let Some(slot) = self.waiting.iter_mut().find(|w| w.is_none()) else {
            return Err(DropReason::NeighbourUnresolved);
        };
        let mut data = self.spare.pop().expect("one spare buffer per free slot");
        data[..packet.len()].copy_from_slice(packet);
        n.queued += 1;
        *slot = Some(Waiting {
            key,
            port: n.port,
            len: packet.len(),
            data,
        });
        Ok(())
    }

    /// Records that `ip` on `port`'s link is at `mac`, trusted (another worker's accepted ARP, or a test's
    /// setup): completes or overwrites an existing entry; creates one only when `create` (evicting an idle entry
    /// of a full table).
    pub fn learn(
        &mut self,
        now: Instant,
        port: PortId,
        source: Ipv4Addr,
        ip: Ipv4Addr,
        mac: EthernetAddress,
        create: bool,
    ) {
        let key = self.key(port, ip);
        let expires = now + self.config.reachable_time;
        let reachable = State::Reachable {
            mac,
            expires,
            refreshing: false,
        };
        let existed = self.entries.contains_key(&key);
        let room = existed || (create && self.make_room(now));
        if !room {
            return;
        }
        let n = self
            .entries
            .entry(key)
            .or_insert_with(|| Self::new_entry(key.0 as PortId, source, reachable));
        if matches!(n.state, State::Incomplete { .. }) {
            self.released = true;
        }
        if !existed || !matches!(n.state, State::Reachable { mac: old, .. } if old == mac) {
            n.changed = Some(now);
        }
        n.state = reachable;
        Self::arm(&mut self.timers, key, n, expires);
    }

    /// Applies what an ARP packet received on `port` says about its sender (`ip` at `mac`); `reply`: an ARP
    /// reply (else a request). The caller has checked that `ip` belongs to the link's subnets. Never creates an
    /// entry (see the module docs).
    pub fn on_arp(
        &mut self,
        now: Instant,
        port: PortId,
        ip: Ipv4Addr,
        mac: EthernetAddress,
        reply: bool,
    ) -> ArpOutcome {
        let key = self.key(port, ip);
        let Some(n) = self.entries.get_mut(&key) else {
            return ArpOutcome::Unknown;
        };
        let expires = now + self.config.reachable_time;
        let locked = n
            .changed
            .is_some_and(|c| now.saturating_duration_since(c) < self.config.locktime);
        match n.state {
            State::Incomplete { .. } => {
                // The answer we asked for (or the host asking us meanwhile): resolved.
                n.state = State::Reachable {
                    mac,
                    expires,
                    refreshing: false,
                };
                n.changed = Some(now);
                self.released = true;
                Self::arm(&mut self.timers, key, n, expires);
                ArpOutcome::Learned
            }
            State::Reachable {
                mac: old, refreshing, ..
            } => {
                if old != mac && locked {
                    return ArpOutcome::Locked;
                }
                let confirms = refreshing && reply;
                if old == mac && !confirms {
                    return ArpOutcome::Unchanged;
                }
                if old != mac {
                    n.changed = Some(now);
                }
                if let State::Reachable {
                    mac: m,
                    expires: e,
                    refreshing: r,
                } = &mut n.state
                {
                    *m = mac;
                    if confirms {
                        // An answer to our refresh: trusted for another `reachable_time` (re-armed lazily).
                        *e = expires;
                        *r = false;
                    }
                }
                ArpOutcome::Learned
            }
        }
    }

    /// Writes the next frame the table needs sent into `buf`: a released waiting packet, or an ARP request.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        counters: &mut StackCounters,
    ) -> Option<(PortId, usize)> {
        if self.released {
            if let Some(out) = self.release_one(buf) {
                return Some(out);
            }
            self.released = false;
        }
        while let Some(key) = self.probes_due.pop_front() {
            let Some(n) = self.entries.get_mut(&key) else {
                continue;
            };
            if !n.probe_queued {
                continue; // a stale item of an evicted and re-created entry
            }
            n.probe_queued = false;
            match &mut n.state {
                State::Incomplete { probes, next_probe } => {
                    *probes += 1;
                    *next_probe = now + self.config.retransmit;
                    let at = *next_probe;
                    Self::arm(&mut self.timers, key, n, at);
                }
                State::Reachable { refreshing: true, .. } => {}
                State::Reachable { .. } => continue,
            }
            counters.arp_requests += 1;
            let len = build::arp_request(buf, self.macs[n.port], n.source, key.1);
            return Some((n.port, len));
        }
        None
    }

    fn release_one(&mut self, buf: &mut [u8]) -> Option<(PortId, usize)> {
        for slot in self.waiting.iter_mut() {
            let Some(w) = slot else { continue };
            let Some(n) = self.entries.get_mut(&w.key) else {
                continue;
            };
            let State::Reachable { mac, .. } = n.state else {
                continue;
            };
            n.queued = n.queued.saturating_sub(1);
            let (port, len) = (w.port, w.len);
            buf[..len].copy_from_slice(&w.data[..len]);
            buf[0..6].copy_from_slice(&mac.0);
            buf[6..12].copy_from_slice(&self.macs[port].0);
            let w = slot.take().expect("slot checked above");
            self.spare.push(w.data);
            debug_assert!(len >= ETH_HEADER_LEN);
            return Some((port, len));
        }
        None
    }

    /// Earliest time a probe retry or expiry may be due (O(1): the timer heap's first item).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Retries or abandons unresolved entries and removes expired ones. Packets waiting for an abandoned
    /// entry are dropped and counted. Looks only at the timer items due.
    pub fn handle_timeout(&mut self, now: Instant, counters: &mut StackCounters) {
        let max_probes = self.config.max_probes;
        let mut abandoned = false;
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            self.timer_visits += 1;
            let Some(n) = self.entries.get_mut(&key) else {
                continue;
            };
            if n.timer != Some(at) {
                continue; // superseded by an earlier item
            }
            n.timer = None;
            let deadline = n.deadline();
            if deadline > now {
                // The deadline moved later since this item was pushed: re-arm.
                Self::arm(&mut self.timers, key, n, deadline);
                continue;
            }
            match n.state {
                State::Incomplete { probes, .. } => {
                    if n.probe_queued {
                        continue; // the request goes out with the next poll_transmit, which re-arms
                    }
                    if probes >= max_probes {
                        abandoned |= n.queued > 0;
                        self.entries.remove(&key);
                    } else {
                        Self::queue_probe(&mut self.probes_due, key, n);
                    }
                }
                State::Reachable { .. } => {
                    if n.queued == 0 {
                        self.entries.remove(&key);
                    } else {
                        // Expired with packets waiting (a resolve is under way): resolve again.
                        n.state = State::Incomplete {
                            probes: 0,
                            next_probe: now,
                        };
                        Self::queue_probe(&mut self.probes_due, key, n);
                    }
                }
            }
        }
        if abandoned {
            for slot in self.waiting.iter_mut() {
                if slot.as_ref().is_some_and(|w| !self.entries.contains_key(&w.key)) {
                    let w = slot.take().expect("checked is_some");
                    self.spare.push(w.data);
                    counters.drop(DropReason::NeighbourUnresolved);
                }
            }
        }
    }
}

/// A neighbour learned by one worker, or an ARP reply it did not ask for, for the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighbourUpdate {
    /// Interface index (config order).
    pub iface: usize,
    /// The neighbour's address.
    pub ip: Ipv4Addr,
    /// Its MAC address.
    pub mac: EthernetAddress,
    /// `false`: the publisher accepted it from ARP (receivers record it as learned). `true`: an ARP reply the
    /// publisher was not resolving; receivers apply it as an ARP reply of their own (it completes or confirms
    /// only an entry they are resolving, under the same rules).
    pub claim: bool,
}

/// One worker's end of the neighbour-sharing mesh.
///
/// An ARP reply arrives on whichever queue the neighbour's NIC picks, not necessarily at the worker that asked,
/// so whatever a worker learns from ARP it passes to the others, and an ARP reply it did not ask for it passes on
/// as a claim for the one that did (bounded channels; a full channel only means that worker resolves the
/// neighbour itself). Updates carry the interface, so each worker applies them to its own port (link) of that
/// interface: the per-link keying holds across workers. Packet processing only queues them; the worker's turn
/// sends them after the batch ([`NeighbourSync::flush`]).
pub struct NeighbourSync {
    worker: usize,
    /// Updates waiting for the next flush (room reserved up front).
    outbox: Vec<NeighbourUpdate>,
    peers: Vec<crossbeam_channel::Sender<NeighbourUpdate>>,
    inbox: crossbeam_channel::Receiver<NeighbourUpdate>,
    port_ifaces: Vec<usize>,
}

impl NeighbourSync {
    /// Sync ends for workers whose ports serve the interfaces `port_ifaces[worker][port]`.
    pub fn mesh(port_ifaces: Vec<Vec<usize>>) -> Vec<NeighbourSync> {
        let (tx, rx): (Vec<_>, Vec<_>) = port_ifaces.iter().map(|_| crossbeam_channel::bounded(1024)).unzip();
        rx.into_iter()
            .zip(port_ifaces)
            .enumerate()
            .map(|(worker, (inbox, port_ifaces))| NeighbourSync {
                worker,
                outbox: Vec::with_capacity(Self::OUTBOX),
                peers: tx.clone(),
                inbox,
                port_ifaces,
            })
            .collect()
    }

    /// Updates held at most between two flushes (ARP is rare traffic; beyond this, as with a full channel, the
    /// other workers resolve the neighbour themselves).
    const OUTBOX: usize = 256;

    /// Tells the other workers (at the next flush) that `ip` on this worker's `port` is at `mac` (accepted from
    /// ARP here).
    pub fn publish(&mut self, port: PortId, ip: Ipv4Addr, mac: EthernetAddress) {
        self.queue(port, ip, mac, false);
    }

    /// Passes an ARP reply received on `port` that this worker was not resolving to the others, one of which may
    /// be.
    pub fn publish_claim(&mut self, port: PortId, ip: Ipv4Addr, mac: EthernetAddress) {
        self.queue(port, ip, mac, true);
    }

    fn queue(&mut self, port: PortId, ip: Ipv4Addr, mac: EthernetAddress, claim: bool) {
        if self.outbox.len() < Self::OUTBOX {
            self.outbox.push(NeighbourUpdate {
                iface: self.port_ifaces[port],
                ip,
                mac,
                claim,
            });
        }
    }

    /// Sends the queued updates to the other workers (called by the worker's turn after the batch).
    pub fn flush(&mut self) {
        for update in self.outbox.drain(..) {
            for (w, peer) in self.peers.iter().enumerate() {
                if w != self.worker {
                    let _ = peer.try_send(update);
                }
            }
        }
    }

    /// The next update from another worker, with this worker's port for its interface; updates for interfaces
    /// this worker does not serve are skipped.
    pub fn receive(&self) -> Option<(PortId, NeighbourUpdate)> {
        while let Ok(u) = self.inbox.try_recv() {
            if let Some(port) = self.port_ifaces.iter().position(|i| *i == u.iface) {
                return Some((port, u));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
