//! The appliance's own network presence (sans-IO): ARP for its addresses, ICMP echo, and clear answers for
//! traffic it does not serve (TCP RST, ICMP port unreachable), plus the neighbour table and routes that
//! upper stages use to reach backends.
//!
//! [`LocalStack`] implements [`Pipeline`]; its input is a frame and the time, its output a [`Verdict`] and
//! frames pulled with `poll_transmit`. No I/O happens here. It validates each IPv4 frame once and hands the
//! upper stage ([`Ipv4Handler`]) its [`PacketSummary`]. The jobs live in submodules: [`handler`] (the
//! contract with upper stages), `arp` (ARP answers and learning), `answers` (echo replies, resets, ICMP errors
//! and their rate limit) and [`frag`] (reassembly).

use std::collections::HashMap;
use std::time::Instant;

mod answers;
mod arp;
pub mod frag;
pub mod handler;

pub use handler::{route, Handled, Ipv4Handler, NoHandler, Route, StackContext};

use crate::addr::Ipv4Net;
use crate::counters::StackCounters;
use crate::drops::DropReason;
use crate::neighbour::{NeighbourConfig, NeighbourSync, NeighbourTable};
use crate::pipeline::{Frame, Pipeline, PortId, Verdict};
use crate::ports::LocalPorts;
use crate::service::{ServiceTable, Transport};
use crate::wire::build::{ETHERTYPE_ARP, ETHERTYPE_IPV4};
use crate::wire::{EthernetAddress, Ipv4Addr, Ipv4Header, PacketSummary, Protocol, ETH_HEADER_LEN};

use answers::RateLimiter;
use arp::ArpLog;

/// One link the worker is attached to (one port).
#[derive(Debug, Clone)]
pub struct Link {
    /// The interface's MAC address.
    pub mac: EthernetAddress,
    /// The appliance's own addresses on this link; their prefixes are the directly connected subnets.
    pub addresses: Vec<Ipv4Net>,
    /// Next hop for destinations outside the connected subnets.
    pub gateway: Option<Ipv4Addr>,
}

/// Settings of the local stack.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The links, indexed by [`PortId`].
    pub links: Vec<Link>,
    /// Neighbour table settings.
    pub neighbours: NeighbourConfig,
    /// ICMP errors and TCP resets per second (token bucket, burst of the same size / 10).
    pub icmp_rate: u32,
}

/// Which ports answer ARP for an owned address (bit i = port i).
type PortMask = u64;

/// Owned addresses, looked up for every packet: a fast (aHash) map rather than SipHash.
type OwnedAddrs = HashMap<Ipv4Addr, PortMask, ahash::RandomState>;

/// The appliance's own stack on one worker, with an optional upper stage `H`.
pub struct LocalStack<H: Ipv4Handler = NoHandler> {
    links: Vec<Link>,
    owned: OwnedAddrs,
    services: ServiceTable,
    ports: LocalPorts,
    neighbours: NeighbourTable,
    counters: StackCounters,
    limiter: RateLimiter,
    handler: H,
    sync: Option<NeighbourSync>,
    /// Interface names by port, for log messages (see [`LocalStack::set_link_names`]).
    link_names: Vec<String>,
    /// Ports on which partial checksums were seen (the hint is logged at most once per interface anyway).
    partial_seen: u64,
    /// Refused ARP, logged at most once per interval.
    arp_log: ArpLog,
    /// IPv4 reassembly (fragments for owned addresses) and re-fragmentation of what is sent on.
    frags: frag::Reassembler,
}

impl LocalStack<NoHandler> {
    /// A stack serving `config.links`; the links' addresses are owned and answered for.
    pub fn new(config: LocalConfig) -> Self {
        LocalStack::with_handler(config, NoHandler)
    }
}

impl<H: Ipv4Handler> LocalStack<H> {
    /// A stack with the upper stage `handler` (and no local ports to take).
    pub fn with_handler(config: LocalConfig, handler: H) -> Self {
        LocalStack::with_ports(config, LocalPorts::none(), handler)
    }

    /// A stack with the upper stage `handler`, whose stages take local ports from `ports`.
    pub fn with_ports(config: LocalConfig, ports: LocalPorts, handler: H) -> Self {
        assert!(config.links.len() <= 64, "at most 64 ports per worker");
        let mut owned = OwnedAddrs::default();
        for (port, link) in config.links.iter().enumerate() {
            for net in &link.addresses {
                *owned.entry(net.addr).or_insert(0) |= 1 << port;
            }
        }
        let macs = config.links.iter().map(|l| l.mac).collect();
        // Ports on queues of one interface share its MAC and addresses: one link for the neighbour table.
        let link_ids = (0..config.links.len())
            .map(|p| {
                let l = &config.links[p];
                let first = config
                    .links
                    .iter()
                    .position(|o| o.mac == l.mac && o.addresses == l.addresses);
                first.unwrap_or(p) as u16
            })
            .collect();
        let mut stack = LocalStack {
            neighbours: NeighbourTable::with_links(config.neighbours, macs, link_ids),
            arp_log: ArpLog::default(),
            links: config.links,
            owned,
            services: ServiceTable::default(),
            ports,
            counters: StackCounters::default(),
            limiter: RateLimiter::new(config.icmp_rate),
            handler,
            sync: None,
            link_names: Vec::new(),
            partial_seen: 0,
            // The clock only initialises free slots; deadlines are set from the packets' times.
            frags: frag::Reassembler::new(frag::FragConfig::default(), Instant::now()),
        };
        let mut cx = StackContext {
            links: &stack.links,
            neighbours: &mut stack.neighbours,
            counters: &mut stack.counters,
            services: &mut stack.services,
            ports: &mut stack.ports,
            owned: &mut stack.owned,
        };
        stack.handler.attach(&mut cx);
        stack
    }

    /// Names the links' interfaces (by port) in log messages; unnamed ports are called `port N`.
    pub fn set_link_names(&mut self, names: Vec<String>) {
        self.link_names = names;
    }

    /// Whether a frame with a partial checksum (see [`offload`]) arrived on `port`.
    pub fn partial_checksum_seen(&self, port: PortId) -> bool {
        self.partial_seen & (1 << port) != 0
    }

    /// Shares what this stack learns from ARP with the other workers' stacks (and applies what they learn).
    pub fn set_neighbour_sync(&mut self, sync: NeighbourSync) {
        self.sync = Some(sync);
    }

    /// The local ports the stages take ([`crate::ports`]).
    pub fn local_ports(&self) -> &LocalPorts {
        &self.ports
    }

    /// The upper stage.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The upper stage, mutable.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// Adds an address owned on `port` that is not a connected subnet (a VIP).
    pub fn add_owned(&mut self, port: PortId, addr: Ipv4Addr) {
        *self.owned.entry(addr).or_insert(0) |= 1 << port;
    }

    /// Whether `addr` belongs to the appliance.
    pub fn owns(&self, addr: Ipv4Addr) -> bool {
        self.owned.contains_key(&addr)
    }

    /// The route to `dst`: a connected subnet first, then the first link with a gateway.
    pub fn route(&self, dst: Ipv4Addr) -> Option<Route> {
        route(&self.links, dst)
    }

    /// The neighbour table (for upper stages that forward to backends).
    pub fn neighbours(&mut self) -> &mut NeighbourTable {
        &mut self.neighbours
    }

    fn handle_ipv4(&mut self, now: Instant, port: PortId, frame: &mut Frame<'_>) -> Verdict {
        let Ok(ip) = Ipv4Header::new_checked(&frame.data()[ETH_HEADER_LEN..]) else {
            return Verdict::Drop(DropReason::MalformedIpv4);
        };
        if !ip.checksum_ok() {
            return Verdict::Drop(DropReason::BadIpv4Checksum);
        }
        if !self.owns(ip.dst()) {
            return Verdict::Drop(DropReason::NotOurAddress);
        }
        let (total_len, fragment) = (ip.total_len(), ip.is_fragment());
        // Drop Ethernet padding and anything past the IPv4 total length.
        frame.set_len(ETH_HEADER_LEN + total_len);
        if !fragment {
            return self.handle_datagram(now, port, frame);
        }
        // A fragment: held until its datagram is complete, which then goes the normal way in this frame.
        let len = frame.len();
        let r = match self.frags.on_fragment(now, frame.buffer_mut(), len, &mut self.counters) {
            frag::Outcome::Held => return Verdict::Consumed,
            frag::Outcome::Drop(reason) => return Verdict::Drop(reason),
            frag::Outcome::Complete(r) => r,
        };
        self.counters.reassembled += 1;
        frame.set_len(r.len);
        let verdict = self.handle_datagram(now, port, frame);
        match verdict {
            Verdict::Transmit(out) => {
                let len = frame.len();
                let len = self.frags.send_on(r, out, frame.buffer_mut(), len);
                frame.set_len(len);
            }
            Verdict::Consumed | Verdict::Drop(_) => self.frags.release(r),
        }
        verdict
    }

    /// A whole IPv4 datagram for an owned address (validated, trimmed to its total length): summarised once,
    /// offered to the upper stage first, then answered locally.
    fn handle_datagram(&mut self, now: Instant, port: PortId, frame: &mut Frame<'_>) -> Verdict {
        let Ok(mut ip) = PacketSummary::parse(frame.data()) else {
            return Verdict::Drop(DropReason::MalformedIpv4);
        };
        ip.service = match (ip.protocol, ip.ports) {
            (Protocol::Tcp, Some(p)) => self.services.lookup(ip.dst, Transport::Tcp, p.dst),
            (Protocol::Udp, Some(p)) => self.services.lookup(ip.dst, Transport::Udp, p.dst),
            _ => None,
        };
        let mut cx = StackContext {
            links: &self.links,
            neighbours: &mut self.neighbours,
            counters: &mut self.counters,
            services: &mut self.services,
            ports: &mut self.ports,
            owned: &mut self.owned,
        };
        let (tcp_reason, udp_reason) = match self.handler.handle(now, port, frame, &ip, &mut cx) {
            Handled::Verdict(verdict) => return verdict,
            Handled::Reject(DropReason::TtlExceeded) => return self.time_exceeded(now, port, frame, &ip),
            Handled::Reject(reason) => (reason, reason),
            Handled::Pass => (DropReason::TcpNoListener, DropReason::UdpNoListener),
        };
        match ip.protocol {
            Protocol::Icmp => self.handle_icmp(port, frame, &ip),
            Protocol::Tcp => self.handle_tcp(now, port, frame, &ip, tcp_reason),
            Protocol::Udp => self.handle_udp(now, port, frame, &ip, udp_reason),
            Protocol::Other(_) => Verdict::Drop(DropReason::UnsupportedProtocol),
        }
    }
}

impl<H: Ipv4Handler> Pipeline for LocalStack<H> {
    fn process(&mut self, now: Instant, port: PortId, frame: &mut Frame<'_>) -> Verdict {
        let verdict = self.classify(now, port, frame);
        if let Verdict::Drop(reason) = verdict {
            self.counters.drop(reason);
        }
        verdict
    }

    /// Offers IPv4 frames to the handler's prefetch after the few checks needed to summarise them (Ethernet type,
    /// IPv4 version and header length).
    #[inline]
    fn prefetch(&mut self, port: PortId, frame: &[u8]) {
        if frame.len() < ETH_HEADER_LEN || frame[12..14] != ETHERTYPE_IPV4.to_be_bytes() {
            return;
        }
        let Ok(ip) = PacketSummary::parse(frame) else {
            return;
        };
        // Fragments are reassembled before any stage sees them: nothing to load for them now.
        if Ipv4Header::new_unchecked(&frame[ETH_HEADER_LEN..]).is_fragment() {
            return;
        }
        self.handler.prefetch(port, frame, &ip);
    }

    fn flush_events(&mut self) {
        if let Some(sync) = &mut self.sync {
            sync.flush();
        }
        let mut cx = StackContext {
            links: &self.links,
            neighbours: &mut self.neighbours,
            counters: &mut self.counters,
            services: &mut self.services,
            ports: &mut self.ports,
            owned: &mut self.owned,
        };
        self.handler.flush_events(&mut cx);
    }

    fn shutdown(&mut self, now: Instant) {
        self.handler.shutdown(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<(PortId, usize)> {
        if let Some(sync) = &self.sync {
            while let Some((port, u)) = sync.receive() {
                // Another worker checked the sender's link and subnet; the subnet check is repeated all the same.
                let source = self.links[port]
                    .addresses
                    .iter()
                    .find(|n| n.prefix < 32 && n.contains(u.ip));
                let Some(source) = source.map(|n| n.addr) else {
                    continue;
                };
                if u.claim {
                    // As an ARP reply received here: completes or confirms only what this worker is resolving.
                    let _ = self.neighbours.on_arp(now, port, u.ip, u.mac, true);
                } else {
                    self.neighbours.learn(now, port, source, u.ip, u.mac, true);
                }
            }
        }
        if let Some(out) = self.frags.poll_transmit(buf) {
            return Some(out);
        }
        if let Some(out) = self.neighbours.poll_transmit(now, buf, &mut self.counters) {
            return Some(out);
        }
        let mut cx = StackContext {
            links: &self.links,
            neighbours: &mut self.neighbours,
            counters: &mut self.counters,
            services: &mut self.services,
            ports: &mut self.ports,
            owned: &mut self.owned,
        };
        self.handler.poll_transmit(now, buf, &mut cx)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [
            self.neighbours.poll_timeout(),
            self.handler.poll_timeout(),
            self.frags.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.neighbours.handle_timeout(now, &mut self.counters);
        self.frags.handle_timeout(now, &mut self.counters);
        let mut cx = StackContext {
            links: &self.links,
            neighbours: &mut self.neighbours,
            counters: &mut self.counters,
            services: &mut self.services,
            ports: &mut self.ports,
            owned: &mut self.owned,
        };
        self.handler.handle_timeout(now, &mut cx);
    }

    fn counters(&self) -> &StackCounters {
        &self.counters
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.handler.wake_fd()
    }
}

impl<H: Ipv4Handler> LocalStack<H> {
    /// Ethernet-level checks, then ARP or IPv4.
    fn classify(&mut self, now: Instant, port: PortId, frame: &mut Frame<'_>) -> Verdict {
        let data = frame.data();
        if data.len() < ETH_HEADER_LEN {
            return Verdict::Drop(DropReason::MalformedEthernet);
        }
        let dst = EthernetAddress::from_bytes(&data[0..6]);
        if dst.is_unicast() && dst != self.links[port].mac {
            return Verdict::Drop(DropReason::NotOurMac);
        }
        match u16::from_be_bytes([data[12], data[13]]) {
            ETHERTYPE_ARP => self.handle_arp(now, port, frame),
            ETHERTYPE_IPV4 => self.handle_ipv4(now, port, frame),
            _ => Verdict::Drop(DropReason::UnsupportedEthertype),
        }
    }
}

/// Default ICMP error / RST rate per worker.
pub const DEFAULT_ICMP_RATE: u32 = 1000;

#[cfg(test)]
mod tests;
