//! Neighbour table: IPv4 next hop → MAC address, resolved by ARP (sans-IO).
//!
//! Packets to a next hop that is not resolved yet are copied into a bounded queue and an ARP request is sent;
//! the answer releases them. Unanswered requests are retried `max_probes` times, then the waiting packets are
//! dropped (counted). Resolved entries expire after `reachable_time`; an entry in use near its expiry is
//! refreshed by a new request while the old MAC keeps being used, so established flows see no gap.
//!
//! All memory is reserved up front: the table refuses new entries beyond its capacity rather than grow.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::counters::{DropReason, StackCounters};
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

#[derive(Debug, Clone, Copy)]
struct Neighbour {
    port: PortId,
    /// Our address on the link used as the ARP sender address.
    source: Ipv4Addr,
    state: State,
}

/// A packet waiting for its next hop to be resolved.
struct Waiting {
    next_hop: Ipv4Addr,
    port: PortId,
    len: usize,
    data: Box<[u8]>,
}

/// The neighbour table of one worker.
pub struct NeighbourTable {
    config: NeighbourConfig,
    macs: Vec<EthernetAddress>,
    entries: HashMap<Ipv4Addr, Neighbour, ahash::RandomState>,
    /// Entries that need an ARP request sent now.
    probes_due: VecDeque<Ipv4Addr>,
    /// Slots of waiting packets (`None` = free).
    waiting: Vec<Option<Waiting>>,
    /// Spare buffers for `waiting` slots, so queueing never allocates.
    spare: Vec<Box<[u8]>>,
    /// Set when some waiting packet's neighbour became reachable.
    released: bool,
}

/// Result of [`NeighbourTable::resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The next hop's MAC address.
    Ready(EthernetAddress),
    /// Not resolved yet: queue the packet with [`NeighbourTable::enqueue`].
    Pending,
}

impl NeighbourTable {
    /// A table for a worker whose ports have these MAC addresses.
    pub fn new(config: NeighbourConfig, port_macs: Vec<EthernetAddress>) -> Self {
        let spare = (0..config.queue_len)
            .map(|_| vec![0u8; config.max_frame].into_boxed_slice())
            .collect();
        NeighbourTable {
            entries: HashMap::with_capacity_and_hasher(config.capacity, ahash::RandomState::new()),
            probes_due: VecDeque::with_capacity(config.capacity),
            waiting: (0..config.queue_len).map(|_| None).collect(),
            spare,
            released: false,
            macs: port_macs,
            config,
        }
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

    /// The MAC of `next_hop` if resolved and fresh. Starts resolution (`source` is our address on `port` used
    /// as the ARP sender) when it is unknown, and a refresh when it is close to expiry.
    pub fn resolve(&mut self, now: Instant, port: PortId, source: Ipv4Addr, next_hop: Ipv4Addr) -> Resolution {
        let refresh_window = self.config.retransmit * u32::from(self.config.max_probes);
        match self.entries.get_mut(&next_hop) {
            Some(n) => match &mut n.state {
                State::Reachable {
                    mac,
                    expires,
                    refreshing,
                } if now < *expires => {
                    if !*refreshing && *expires - now <= refresh_window {
                        *refreshing = true;
                        self.probes_due.push_back(next_hop);
                    }
                    Resolution::Ready(*mac)
                }
                State::Reachable { .. } => {
                    n.state = State::Incomplete {
                        probes: 0,
                        next_probe: now,
                    };
                    self.probes_due.push_back(next_hop);
                    Resolution::Pending
                }
                State::Incomplete { .. } => Resolution::Pending,
            },
            None => {
                if self.entries.len() < self.config.capacity {
                    let state = State::Incomplete {
                        probes: 0,
                        next_probe: now,
                    };
                    self.entries.insert(next_hop, Neighbour { port, source, state });
                    self.probes_due.push_back(next_hop);
                }
                Resolution::Pending
            }
        }
    }

    /// Copies `packet` (a full Ethernet frame; its destination MAC is filled in on release) to wait for
    /// `next_hop`. Fails with the drop reason when the queue is full, the packet too big or the neighbour
    /// unknown (call [`NeighbourTable::resolve`] first).
    pub fn enqueue(&mut self, next_hop: Ipv4Addr, packet: &[u8]) -> Result<(), DropReason> {
        let Some(n) = self.entries.get(&next_hop) else {
            return Err(DropReason::NeighbourUnresolved);
        };
        if packet.len() > self.config.max_frame {
            return Err(DropReason::NeighbourUnresolved);
        }
        let Some(slot) = self.waiting.iter_mut().find(|w| w.is_none()) else {
            return Err(DropReason::NeighbourUnresolved);
        };
        let mut data = self.spare.pop().expect("one spare buffer per free slot");
        data[..packet.len()].copy_from_slice(packet);
        *slot = Some(Waiting {
            next_hop,
            port: n.port,
            len: packet.len(),
            data,
        });
        Ok(())
    }

    /// Learns `ip` is at `mac` on `port` from an ARP packet. Existing entries are updated; a new entry is
    /// created only when `create` (the ARP was addressed to us, RFC 826).
    pub fn learn(
        &mut self,
        now: Instant,
        port: PortId,
        source: Ipv4Addr,
        ip: Ipv4Addr,
        mac: EthernetAddress,
        create: bool,
    ) {
        let expires = now + self.config.reachable_time;
        let reachable = State::Reachable {
            mac,
            expires,
            refreshing: false,
        };
        let room = self.entries.len() < self.config.capacity;
        match self.entries.get_mut(&ip) {
            Some(n) => {
                if matches!(n.state, State::Incomplete { .. }) {
                    self.released = true;
                }
                n.port = port;
                n.state = reachable;
            }
            None if create && room => {
                self.entries.insert(
                    ip,
                    Neighbour {
                        port,
                        source,
                        state: reachable,
                    },
                );
            }
            None => {}
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
        while let Some(ip) = self.probes_due.pop_front() {
            let Some(n) = self.entries.get_mut(&ip) else {
                continue;
            };
            match &mut n.state {
                State::Incomplete { probes, next_probe } => {
                    *probes += 1;
                    *next_probe = now + self.config.retransmit;
                }
                State::Reachable { refreshing: true, .. } => {}
                State::Reachable { .. } => continue,
            }
            counters.arp_requests += 1;
            let len = build::arp_request(buf, self.macs[n.port], n.source, ip);
            return Some((n.port, len));
        }
        None
    }

    fn release_one(&mut self, buf: &mut [u8]) -> Option<(PortId, usize)> {
        for slot in self.waiting.iter_mut() {
            let Some(w) = slot else { continue };
            let Some(Neighbour {
                state: State::Reachable { mac, .. },
                ..
            }) = self.entries.get(&w.next_hop)
            else {
                continue;
            };
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

    /// Earliest time a probe retry or expiry is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries
            .values()
            .map(|n| match n.state {
                State::Incomplete { next_probe, .. } => next_probe,
                State::Reachable { expires, .. } => expires,
            })
            .min()
    }

    /// Retries or abandons unresolved entries and removes expired ones. Packets waiting for an abandoned
    /// entry are dropped and counted.
    pub fn handle_timeout(&mut self, now: Instant, counters: &mut StackCounters) {
        let max_probes = self.config.max_probes;
        let mut abandoned = false;
        let probes_due = &mut self.probes_due;
        self.entries.retain(|ip, n| match n.state {
            State::Incomplete { probes, next_probe } if next_probe <= now => {
                if probes >= max_probes {
                    abandoned = true;
                    false
                } else {
                    probes_due.push_back(*ip);
                    true
                }
            }
            State::Reachable { expires, .. } => expires > now,
            State::Incomplete { .. } => true,
        });
        if abandoned {
            for slot in self.waiting.iter_mut() {
                if slot.as_ref().is_some_and(|w| !self.entries.contains_key(&w.next_hop)) {
                    let w = slot.take().expect("checked is_some");
                    self.spare.push(w.data);
                    counters.drop(DropReason::NeighbourUnresolved);
                }
            }
        }
    }
}

/// A neighbour learned by one worker, for the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighbourUpdate {
    /// Interface index (config order).
    pub iface: usize,
    /// The neighbour's address.
    pub ip: Ipv4Addr,
    /// Its MAC address.
    pub mac: EthernetAddress,
}

/// One worker's end of the neighbour-sharing mesh.
///
/// An ARP reply arrives on whichever queue the neighbour's NIC picks, not necessarily at the worker that asked,
/// so whatever a worker learns from ARP it passes to the others (bounded channels; a full channel only means
/// that worker resolves the neighbour itself).
pub struct NeighbourSync {
    worker: usize,
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
                peers: tx.clone(),
                inbox,
                port_ifaces,
            })
            .collect()
    }

    /// Tells the other workers that `ip` on this worker's `port` is at `mac`.
    pub fn publish(&self, port: PortId, ip: Ipv4Addr, mac: EthernetAddress) {
        let update = NeighbourUpdate {
            iface: self.port_ifaces[port],
            ip,
            mac,
        };
        for (w, peer) in self.peers.iter().enumerate() {
            if w != self.worker {
                let _ = peer.try_send(update);
            }
        }
    }

    /// The next update from another worker, as (this worker's port, ip, mac); updates for interfaces this
    /// worker does not serve are skipped.
    pub fn receive(&self) -> Option<(PortId, Ipv4Addr, EthernetAddress)> {
        while let Ok(u) = self.inbox.try_recv() {
            if let Some(port) = self.port_ifaces.iter().position(|i| *i == u.iface) {
                return Some((port, u.ip, u.mac));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ArpOperation, ArpPacket, EthernetFrame};

    const OUR_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
    const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 2]);
    const OUR_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);

    fn table() -> NeighbourTable {
        NeighbourTable::new(
            NeighbourConfig {
                queue_len: 4,
                ..Default::default()
            },
            vec![OUR_MAC],
        )
    }

    fn packet(tag: u8) -> Vec<u8> {
        let mut p = vec![0u8; 60];
        p[12] = 0x08;
        p[59] = tag;
        p
    }

    #[test]
    fn unknown_neighbour_sends_arp_request_then_releases_queued_packets() {
        let t0 = Instant::now();
        let mut t = table();
        let mut c = StackCounters::default();
        assert_eq!(t.resolve(t0, 0, OUR_IP, PEER_IP), Resolution::Pending);
        t.enqueue(PEER_IP, &packet(1)).unwrap();
        t.enqueue(PEER_IP, &packet(2)).unwrap();

        let mut buf = [0u8; 2048];
        let (port, len) = t.poll_transmit(t0, &mut buf, &mut c).expect("an ARP request");
        assert_eq!(port, 0);
        let eth = EthernetFrame::new_checked(&buf[..len]).unwrap();
        assert!(eth.dst_addr().is_broadcast());
        let arp = ArpPacket::new_checked(eth.payload()).unwrap();
        assert_eq!(arp.operation(), ArpOperation::Request);
        assert_eq!(arp.source_protocol_addr(), &OUR_IP.octets());
        assert_eq!(arp.target_protocol_addr(), &PEER_IP.octets());
        assert_eq!(c.arp_requests, 1);
        assert!(
            t.poll_transmit(t0, &mut buf, &mut c).is_none(),
            "one request per retransmit interval"
        );

        t.learn(t0, 0, OUR_IP, PEER_IP, PEER_MAC, false);
        let mut tags = vec![];
        while let Some((_, len)) = t.poll_transmit(t0, &mut buf, &mut c) {
            assert_eq!(&buf[0..6], &PEER_MAC.0);
            assert_eq!(&buf[6..12], &OUR_MAC.0);
            tags.push(buf[len - 1]);
        }
        tags.sort();
        assert_eq!(tags, vec![1, 2]);
        assert_eq!(t.waiting(), 0);
        assert_eq!(t.resolve(t0, 0, OUR_IP, PEER_IP), Resolution::Ready(PEER_MAC));
    }

    #[test]
    fn unanswered_requests_are_retried_then_waiting_packets_dropped() {
        let t0 = Instant::now();
        let mut t = table();
        let mut c = StackCounters::default();
        let mut buf = [0u8; 2048];
        t.resolve(t0, 0, OUR_IP, PEER_IP);
        t.enqueue(PEER_IP, &packet(1)).unwrap();
        let mut now = t0;
        let mut requests = 0;
        for _ in 0..10 {
            while t.poll_transmit(now, &mut buf, &mut c).is_some() {
                requests += 1;
            }
            now += Duration::from_millis(1000);
            t.handle_timeout(now, &mut c);
        }
        assert_eq!(requests, 3, "max_probes requests");
        assert!(t.is_empty());
        assert_eq!(t.waiting(), 0);
        assert_eq!(c.drops_of(DropReason::NeighbourUnresolved), 1);
    }

    #[test]
    fn queue_is_bounded() {
        let t0 = Instant::now();
        let mut t = table();
        t.resolve(t0, 0, OUR_IP, PEER_IP);
        for i in 0..4 {
            t.enqueue(PEER_IP, &packet(i)).unwrap();
        }
        assert_eq!(t.enqueue(PEER_IP, &packet(9)), Err(DropReason::NeighbourUnresolved));
        assert_eq!(
            t.enqueue(Ipv4Addr::new(198, 19, 0, 3), &packet(9)),
            Err(DropReason::NeighbourUnresolved)
        );
    }

    #[test]
    fn entries_expire_and_are_refreshed_before_expiry() {
        let t0 = Instant::now();
        let mut t = table();
        let mut c = StackCounters::default();
        let mut buf = [0u8; 2048];
        t.learn(t0, 0, OUR_IP, PEER_IP, PEER_MAC, true);
        // Long before expiry: no refresh.
        assert_eq!(
            t.resolve(t0 + Duration::from_secs(10), 0, OUR_IP, PEER_IP),
            Resolution::Ready(PEER_MAC)
        );
        assert!(t.poll_transmit(t0, &mut buf, &mut c).is_none());
        // Close to expiry: still usable, and a refresh request goes out once.
        let late = t0 + Duration::from_secs(58);
        assert_eq!(t.resolve(late, 0, OUR_IP, PEER_IP), Resolution::Ready(PEER_MAC));
        assert!(t.poll_transmit(late, &mut buf, &mut c).is_some());
        assert_eq!(t.resolve(late, 0, OUR_IP, PEER_IP), Resolution::Ready(PEER_MAC));
        assert!(t.poll_transmit(late, &mut buf, &mut c).is_none());
        // Never answered: the entry expires.
        t.handle_timeout(t0 + Duration::from_secs(61), &mut c);
        assert!(t.is_empty());
    }

    #[test]
    fn learn_without_create_ignores_strangers() {
        let t0 = Instant::now();
        let mut t = table();
        t.learn(t0, 0, OUR_IP, PEER_IP, PEER_MAC, false);
        assert!(t.is_empty());
        t.learn(t0, 0, OUR_IP, PEER_IP, PEER_MAC, true);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn sync_passes_learned_neighbours_to_the_other_workers_only() {
        let mut mesh = NeighbourSync::mesh(vec![vec![0, 1], vec![1, 0]]);
        let w1 = mesh.pop().unwrap();
        let w0 = mesh.pop().unwrap();
        // Worker 0 learns PEER on its port 1, which is interface 1: worker 1 serves interface 1 on its port 0.
        w0.publish(1, PEER_IP, PEER_MAC);
        assert_eq!(w1.receive(), Some((0, PEER_IP, PEER_MAC)));
        assert_eq!(w1.receive(), None);
        assert_eq!(w0.receive(), None, "no echo to the publisher");
    }

    #[test]
    fn capacity_is_respected() {
        let t0 = Instant::now();
        let mut t = NeighbourTable::new(
            NeighbourConfig {
                capacity: 2,
                ..Default::default()
            },
            vec![OUR_MAC],
        );
        for i in 1..=5 {
            t.resolve(t0, 0, OUR_IP, Ipv4Addr::new(198, 19, 0, i));
        }
        assert_eq!(t.len(), 2);
    }
}
