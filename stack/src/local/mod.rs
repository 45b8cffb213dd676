//! The appliance's own network presence (sans-IO): ARP for its addresses, ICMP echo, and clear answers for
//! traffic it does not serve (TCP RST, ICMP port unreachable), plus the neighbour table and routes that
//! upper stages use to reach backends.
//!
//! [`LocalStack`] implements [`Pipeline`]; its input is a frame and the time, its output a [`Verdict`] and
//! frames pulled with `poll_transmit`. No I/O happens here.

use std::collections::HashMap;
use std::time::Instant;

pub mod frag;

use crate::addr::Ipv4Net;
use crate::counters::StackCounters;
use crate::drops::{DropReason, STACK_DROPS};
use crate::neighbour::{ArpOutcome, NeighbourConfig, NeighbourSync, NeighbourTable, Resolution};
use crate::offload;
use crate::pipeline::{Frame, Pipeline, PortId, Verdict};
use crate::service::{Service, ServiceTable, Transport};
use crate::wire::build::{self, ResetFor, Unreachable, ETHERTYPE_ARP, ETHERTYPE_IPV4};
use crate::wire::{checksum, EthernetAddress, Ipv4Addr, ETH_HEADER_LEN};

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

/// A route to a destination: out of `port`, from our `source` address, via `next_hop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The port to send on.
    pub port: PortId,
    /// Our address on that link.
    pub source: Ipv4Addr,
    /// The neighbour to send to (the destination itself or the gateway).
    pub next_hop: Ipv4Addr,
}

/// A token bucket limiting ICMP errors and resets, as the kernel's `icmp_ratelimit` does.
#[derive(Debug, Clone)]
struct RateLimiter {
    per_sec: u32,
    burst: u32,
    tokens: u32,
    last: Option<Instant>,
}

impl RateLimiter {
    fn new(per_sec: u32) -> Self {
        let burst = (per_sec / 10).max(1);
        RateLimiter {
            per_sec,
            burst,
            tokens: burst,
            last: None,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let last = *self.last.get_or_insert(now);
        let refill = (now.saturating_duration_since(last).as_micros() * u128::from(self.per_sec) / 1_000_000) as u32;
        if refill > 0 {
            self.tokens = (self.tokens + refill).min(self.burst);
            self.last = Some(now);
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

/// Which ports answer ARP for an owned address (bit i = port i).
type PortMask = u64;

/// Owned addresses, looked up for every packet: a fast (aHash) map rather than SipHash.
type OwnedAddrs = HashMap<Ipv4Addr, PortMask, ahash::RandomState>;

/// A validated, unfragmented IPv4 packet for an owned address, as offered to an [`Ipv4Handler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Meta {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address (owned by the appliance).
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub protocol: u8,
    /// Offset of the transport header in the frame.
    pub l4: usize,
    /// The service the destination address:port is registered for ([`crate::service`]); `None` for what no
    /// stage serves, for ICMP, and in [`Ipv4Handler::prefetch`].
    pub service: Option<Service>,
}

/// What an upper stage (L4, later L7 and HA) may use of the local stack: routes, neighbours, counters.
pub struct StackContext<'a> {
    /// The links, by port.
    pub links: &'a [Link],
    /// The neighbour table.
    pub neighbours: &'a mut NeighbourTable,
    /// The stack's counters (drops by reason).
    pub counters: &'a mut StackCounters,
    /// What each address:port is: stages register their services here.
    pub services: &'a mut ServiceTable,
    owned: &'a mut OwnedAddrs,
}

impl StackContext<'_> {
    /// Whether the appliance owns `addr` on any port (its link addresses, VIPs, floating IPs).
    pub fn owns(&self, addr: Ipv4Addr) -> bool {
        self.owned.contains_key(&addr)
    }

    /// Makes the stack own `addr` on `port` (answer ARP there, accept packets for it), or stop owning it there.
    /// Used for VIPs added or removed while running.
    pub fn set_owned(&mut self, port: PortId, addr: Ipv4Addr, owned: bool) {
        let mask = self.owned.entry(addr).or_insert(0);
        if owned {
            *mask |= 1 << port;
        } else {
            *mask &= !(1 << port);
            if *mask == 0 {
                self.owned.remove(&addr);
            }
        }
    }

    /// The route to `dst`: a connected subnet first, then the first link with a gateway.
    pub fn route(&self, dst: Ipv4Addr) -> Option<Route> {
        route(self.links, dst)
    }

    /// Completes the IPv4 packet at `buf[ETH_HEADER_LEN..len]` for sending to `dst`: routes it, resolves the
    /// next hop and writes the Ethernet header. `Ok(port)`: send `buf[..len]` on `port` now. `Err(None)`: the
    /// packet was queued until ARP resolves (the buffer may be reused). `Err(Some(reason))`: drop it.
    pub fn deliver(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        len: usize,
        dst: Ipv4Addr,
    ) -> Result<PortId, Option<DropReason>> {
        let Some(r) = self.route(dst) else {
            return Err(Some(DropReason::NoRoute));
        };
        build::ethernet(buf, EthernetAddress([0; 6]), self.links[r.port].mac, ETHERTYPE_IPV4);
        match self.neighbours.resolve(now, r.port, r.source, r.next_hop) {
            Resolution::Ready(mac) => {
                buf[0..6].copy_from_slice(&mac.0);
                Ok(r.port)
            }
            Resolution::Pending => match self.neighbours.enqueue(r.port, r.next_hop, &buf[..len]) {
                Ok(()) => Err(None),
                Err(reason) => Err(Some(reason)),
            },
        }
    }
}

/// What an upper stage did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Not the stage's: the local stack handles it.
    Pass,
    /// Done: act on this verdict.
    Verdict(Verdict),
    /// Refuse it as if nothing listened (TCP RST or ICMP port unreachable, rate-limited), counted under the
    /// reason.
    Reject(DropReason),
}

/// An upper stage offered every IPv4 packet for an owned address before the local stack answers it.
pub trait Ipv4Handler: Send {
    /// Handles the packet (rewriting `frame` in place), or passes it to the local stack.
    fn handle(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &Ipv4Meta,
        cx: &mut StackContext<'_>,
    ) -> Handled;

    /// A hint for an IPv4 packet of a received batch, before the batch is processed (see
    /// [`Pipeline::prefetch`]). Nothing about the packet has been checked but its IPv4 version and header length:
    /// `ip.l4` may lie beyond the frame, and the packet may be dropped before [`Ipv4Handler::handle`] sees it.
    /// The default does nothing.
    #[inline]
    fn prefetch(&mut self, port: PortId, frame: &[u8], ip: &Ipv4Meta) {
        let _ = (port, frame, ip);
    }

    /// Called once when the stack is built: the stage registers its services ([`StackContext::services`]).
    fn attach(&mut self, cx: &mut StackContext<'_>) {
        let _ = cx;
    }

    /// Delivers what the stage queued while it processed the batch (frames for other workers, packets for
    /// other threads): see [`Pipeline::flush_events`]. The default does nothing.
    fn flush_events(&mut self, cx: &mut StackContext<'_>) {
        let _ = cx;
    }

    /// Writes the next frame the stage originates into `buf` (see [`Pipeline::poll_transmit`]).
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8], cx: &mut StackContext<'_>) -> Option<(PortId, usize)>;

    /// When [`Ipv4Handler::handle_timeout`] should next run.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Advances the stage's timers.
    fn handle_timeout(&mut self, now: Instant, cx: &mut StackContext<'_>);

    /// See [`Pipeline::wake_fd`].
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// No upper stage: the local stack answers everything itself.
#[derive(Debug, Default)]
pub struct NoHandler;

impl Ipv4Handler for NoHandler {
    fn handle(&mut self, _: Instant, _: PortId, _: &mut Frame<'_>, _: &Ipv4Meta, _: &mut StackContext<'_>) -> Handled {
        Handled::Pass
    }
    fn poll_transmit(&mut self, _: Instant, _: &mut [u8], _: &mut StackContext<'_>) -> Option<(PortId, usize)> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _: Instant, _: &mut StackContext<'_>) {}
}

/// The route to `dst` over `links`: a connected subnet first, then the first link with a gateway.
pub fn route(links: &[Link], dst: Ipv4Addr) -> Option<Route> {
    let connected = links.iter().enumerate().find_map(|(port, link)| {
        link.addresses
            .iter()
            .find(|n| n.prefix < 32 && n.contains(dst))
            .map(|n| Route {
                port,
                source: n.addr,
                next_hop: dst,
            })
    });
    connected.or_else(|| {
        links.iter().enumerate().find_map(|(port, link)| {
            let gw = link.gateway?;
            let source = link.addresses.iter().find(|n| n.contains(gw))?.addr;
            Some(Route {
                port,
                source,
                next_hop: gw,
            })
        })
    })
}

/// The appliance's own stack on one worker, with an optional upper stage `H`.
pub struct LocalStack<H: Ipv4Handler = NoHandler> {
    links: Vec<Link>,
    owned: OwnedAddrs,
    services: ServiceTable,
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

/// How often refused ARP packets are logged (with the count since the last line).
const ARP_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Refused ARP since the last log line.
#[derive(Debug, Default)]
struct ArpLog {
    next: Option<Instant>,
    refused: u64,
}

/// Which subnets `ip` belongs to, seen from `port`: this link's, another link's only, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Membership {
    ThisLink,
    OtherLink,
    None,
}

fn membership(links: &[Link], port: PortId, ip: Ipv4Addr) -> Membership {
    let on = |l: &Link| l.addresses.iter().any(|n| n.prefix < 32 && n.contains(ip));
    if links.get(port).is_some_and(on) {
        Membership::ThisLink
    } else if links.iter().any(on) {
        Membership::OtherLink
    } else {
        Membership::None
    }
}

impl LocalStack<NoHandler> {
    /// A stack serving `config.links`; the links' addresses are owned and answered for.
    pub fn new(config: LocalConfig) -> Self {
        LocalStack::with_handler(config, NoHandler)
    }
}

impl<H: Ipv4Handler> LocalStack<H> {
    /// A stack with the upper stage `handler`.
    pub fn with_handler(config: LocalConfig, handler: H) -> Self {
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
            counters: StackCounters::default(),
            limiter: RateLimiter::new(config.icmp_rate),
            handler,
            sync: None,
            link_names: Vec::new(),
            partial_seen: 0,
            // The clock only initialises free slots; deadlines are set from the packets' times.
            frags: frag::Reassembler::new(frag::FragConfig::default(), Instant::now()),
        };
        let (handler, mut cx) = stack.stage();
        handler.attach(&mut cx);
        stack
    }

    /// The upper stage, and the context it works in (the stack's parts it may use).
    fn stage(&mut self) -> (&mut H, StackContext<'_>) {
        let cx = StackContext {
            links: &self.links,
            neighbours: &mut self.neighbours,
            counters: &mut self.counters,
            services: &mut self.services,
            owned: &mut self.owned,
        };
        (&mut self.handler, cx)
    }

    /// Names the links' interfaces (by port) in log messages; unnamed ports are called `port N`.
    pub fn set_link_names(&mut self, names: Vec<String>) {
        self.link_names = names;
    }

    /// Whether a frame with a partial checksum (see [`offload`]) arrived on `port`.
    pub fn partial_checksum_seen(&self, port: PortId) -> bool {
        self.partial_seen & (1 << port) != 0
    }

    /// The drop reason of a TCP or UDP segment whose checksum does not verify; the first one with a partial
    /// checksum on a port logs the offload hint (once per interface per process).
    fn bad_checksum(&mut self, port: PortId, src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> DropReason {
        let (offset, what) = if protocol == 6 {
            (offload::TCP_CHECKSUM_OFFSET, "TCP segment")
        } else {
            (offload::UDP_CHECKSUM_OFFSET, "UDP datagram")
        };
        if self.partial_seen & (1 << port) == 0 && offload::is_partial(src, dst, protocol, segment, offset) {
            self.partial_seen |= 1 << port;
            let name = self
                .link_names
                .get(port)
                .cloned()
                .unwrap_or_else(|| format!("port {port}"));
            offload::warn_once(&format!("interface {name}"), &name, src, what);
        }
        DropReason::BadL4Checksum
    }

    /// Shares what this stack learns from ARP with the other workers' stacks (and applies what they learn).
    pub fn set_neighbour_sync(&mut self, sync: NeighbourSync) {
        self.sync = Some(sync);
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

    fn handle_arp(&mut self, now: Instant, port: PortId, frame: &mut Frame<'_>) -> Verdict {
        let data = frame.data_mut();
        let Some(arp) = data.get_mut(ETH_HEADER_LEN..ETH_HEADER_LEN + 28) else {
            return Verdict::Drop(DropReason::MalformedArp);
        };
        // Ethernet (1), IPv4, 6-byte MACs, 4-byte addresses.
        if arp[0..2] != [0, 1] || arp[2..4] != ETHERTYPE_IPV4.to_be_bytes() || arp[4] != 6 || arp[5] != 4 {
            return Verdict::Drop(DropReason::MalformedArp);
        }
        let operation = u16::from_be_bytes([arp[6], arp[7]]);
        let sender_mac = EthernetAddress::from_bytes(&arp[8..14]);
        let sender_ip = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
        let target_ip = Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]);
        let for_us = self.owned.get(&target_ip).is_some_and(|mask| mask & (1 << port) != 0);
        if !for_us {
            return Verdict::Drop(DropReason::ArpNotForUs);
        }
        let refused = if sender_mac.is_unicast() && !sender_ip.is_unspecified() {
            self.learn_arp(now, port, operation != 1, sender_ip, sender_mac)
        } else {
            None
        };
        if operation != 1 {
            return refused.map_or(Verdict::Consumed, Verdict::Drop);
        }
        if let Some(reason) = refused {
            // Answered all the same (the answer only goes to the asker), but what it claims is not learned.
            self.counters.drop(reason);
        }
        let mac = self.links[port].mac;
        let len = build::arp(
            frame.buffer_mut(),
            sender_mac,
            2,
            (mac, target_ip),
            (sender_mac, sender_ip),
        );
        frame.set_len(len);
        self.counters.arp_replies += 1;
        Verdict::Transmit(port)
    }

    /// Applies what an ARP packet for us says about its sender, under the rules of the module
    /// [`crate::neighbour`]: the sender must be in this link's subnets, ARP never creates an entry, and a MAC
    /// change is locked for `locktime`. Returns the reason a claim was refused.
    fn learn_arp(
        &mut self,
        now: Instant,
        port: PortId,
        reply: bool,
        ip: Ipv4Addr,
        mac: EthernetAddress,
    ) -> Option<DropReason> {
        let refused = match membership(&self.links, port, ip) {
            Membership::OtherLink => Some(DropReason::ArpWrongLink),
            Membership::None => Some(DropReason::ArpNotInSubnet),
            Membership::ThisLink => match self.neighbours.on_arp(now, port, ip, mac, reply) {
                ArpOutcome::Learned => {
                    if let Some(sync) = &mut self.sync {
                        sync.publish(port, ip, mac);
                    }
                    None
                }
                // A request from a host we are not resolving is ordinary traffic (clients asking for a VIP).
                ArpOutcome::Unchanged | ArpOutcome::Unknown if !reply => None,
                // A reply this worker did not ask for may answer another worker's request (replies land on any
                // queue): passed on as a claim, which only a worker resolving that address accepts.
                ArpOutcome::Unchanged | ArpOutcome::Unknown if self.sync.is_some() => {
                    if let Some(sync) = &mut self.sync {
                        sync.publish_claim(port, ip, mac);
                    }
                    None
                }
                ArpOutcome::Unchanged => None,
                ArpOutcome::Unknown => Some(DropReason::ArpUnsolicited),
                ArpOutcome::Locked => Some(DropReason::ArpLocked),
            },
        };
        if let Some(reason) = refused {
            self.log_refused_arp(now, port, reason, ip, mac);
        }
        refused
    }

    /// Logs a refused ARP claim, at most once per [`ARP_LOG_INTERVAL`] (with the number refused since).
    fn log_refused_arp(&mut self, now: Instant, port: PortId, reason: DropReason, ip: Ipv4Addr, mac: EthernetAddress) {
        let log = &mut self.arp_log;
        log.refused += 1;
        if log.next.is_some_and(|t| now < t) {
            return;
        }
        log.next = Some(now + ARP_LOG_INTERVAL);
        let iface = self
            .link_names
            .get(port)
            .cloned()
            .unwrap_or_else(|| format!("port {port}"));
        let reason = STACK_DROPS.name(reason).unwrap_or_default();
        tracing::warn!(
            iface,
            sender = %ip,
            mac = %mac,
            reason,
            refused = log.refused,
            "ARP claim not learned (counted under drop reason {}; {} refused since the last such line, which comes at              most every {} s): a host on this link claims an address it may not own here",
            reason,
            log.refused,
            ARP_LOG_INTERVAL.as_secs()
        );
        log.refused = 0;
    }

    fn handle_ipv4(&mut self, now: Instant, port: PortId, frame: &mut Frame<'_>) -> Verdict {
        let data = frame.data();
        let ip = &data[ETH_HEADER_LEN..];
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return Verdict::Drop(DropReason::MalformedIpv4);
        }
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if header_len < 20 || total_len < header_len || total_len > ip.len() {
            return Verdict::Drop(DropReason::MalformedIpv4);
        }
        if checksum::checksum(&ip[..header_len]) != 0 {
            return Verdict::Drop(DropReason::BadIpv4Checksum);
        }
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        if !self.owns(dst) {
            return Verdict::Drop(DropReason::NotOurAddress);
        }
        let flags_frag = u16::from_be_bytes([ip[6], ip[7]]);
        // Drop Ethernet padding and anything past the IPv4 total length.
        frame.set_len(ETH_HEADER_LEN + total_len);
        if flags_frag & 0x3fff == 0 {
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

    /// A whole IPv4 datagram for an owned address (validated, trimmed to its total length): the upper stage
    /// first, then local answers.
    fn handle_datagram(&mut self, now: Instant, port: PortId, frame: &mut Frame<'_>) -> Verdict {
        let ip = &frame.data()[ETH_HEADER_LEN..];
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let protocol = ip[9];
        let l4 = ETH_HEADER_LEN + header_len;
        let service = Transport::from_protocol(protocol)
            .filter(|_| frame.len() >= l4 + 4)
            .and_then(|t| {
                let data = frame.data();
                self.services
                    .lookup(dst, t, u16::from_be_bytes([data[l4 + 2], data[l4 + 3]]))
            });
        let meta = Ipv4Meta {
            src,
            dst,
            protocol,
            l4,
            service,
        };
        let (handler, mut cx) = self.stage();
        let (tcp_reason, udp_reason) = match handler.handle(now, port, frame, &meta, &mut cx) {
            Handled::Verdict(verdict) => return verdict,
            Handled::Reject(DropReason::TtlExceeded) => return self.time_exceeded(now, port, frame, l4, src, dst),
            Handled::Reject(reason) => (reason, reason),
            Handled::Pass => (DropReason::TcpNoListener, DropReason::UdpNoListener),
        };
        match protocol {
            1 => self.handle_icmp(port, frame, l4),
            6 => self.handle_tcp(now, port, frame, l4, src, dst, tcp_reason),
            17 => self.handle_udp(now, port, frame, l4, src, dst, udp_reason),
            _ => Verdict::Drop(DropReason::UnsupportedProtocol),
        }
    }

    /// Answers a packet the upper stage would forward but whose TTL ran out with ICMP time exceeded (RFC 792,
    /// code 0), from the address it was sent to, quoting its header and 8 bytes of its payload; rate-limited as
    /// every ICMP error. Sources that cannot take an answer (RFC 1812: 0/8, loopback, multicast, 240/4) get none.
    fn time_exceeded(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        l4: usize,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Verdict {
        self.counters.drop(DropReason::TtlExceeded);
        let o = src.octets();
        if o[0] == 0 || src.is_loopback() || src.is_multicast() || o[0] >= 240 {
            return Verdict::Consumed;
        }
        if !self.limiter.allow(now) {
            self.counters.drop(DropReason::IcmpRateLimited);
            return Verdict::Consumed;
        }
        let data = frame.data();
        let mut quote = [0u8; 60 + 8];
        let quote_len = (l4 - ETH_HEADER_LEN + 8).min(data.len() - ETH_HEADER_LEN);
        quote[..quote_len].copy_from_slice(&data[ETH_HEADER_LEN..ETH_HEADER_LEN + quote_len]);
        let peer_mac = EthernetAddress::from_bytes(&data[6..12]);
        let len = build::icmp_time_exceeded(
            frame.buffer_mut(),
            peer_mac,
            self.links[port].mac,
            dst,
            src,
            &quote[..quote_len],
        );
        frame.set_len(len);
        self.counters.icmp_time_exceeded += 1;
        Verdict::Transmit(port)
    }

    /// Turns an echo request into its reply in place: swap addresses, type 8 → 0, checksums updated
    /// incrementally.
    fn handle_icmp(&mut self, port: PortId, frame: &mut Frame<'_>, l4: usize) -> Verdict {
        let data = frame.data_mut();
        let icmp = &data[l4..];
        if icmp.len() < 8 || checksum::checksum(icmp) != 0 {
            return Verdict::Drop(DropReason::MalformedIcmp);
        }
        if icmp[0] != 8 || icmp[1] != 0 {
            return Verdict::Drop(DropReason::IcmpNotHandled);
        }
        let old_word = u16::from_be_bytes([icmp[0], icmp[1]]);
        let old_csum = u16::from_be_bytes([icmp[2], icmp[3]]);
        data[l4] = 0;
        data[l4 + 2..l4 + 4].copy_from_slice(&checksum::update16(old_csum, old_word, 0).to_be_bytes());
        self.swap_to_reply(port, data);
        self.counters.icmp_echo_replies += 1;
        Verdict::Transmit(port)
    }

    /// Rewrites Ethernet and IPv4 headers of a received packet to answer its sender (TTL reset to 64).
    fn swap_to_reply(&self, port: PortId, data: &mut [u8]) {
        let (eth, ip) = data.split_at_mut(ETH_HEADER_LEN);
        eth.copy_within(6..12, 0);
        eth[6..12].copy_from_slice(&self.links[port].mac.0);
        let mut addrs = [0u8; 8];
        addrs.copy_from_slice(&ip[12..20]);
        ip[12..16].copy_from_slice(&addrs[4..8]);
        ip[16..20].copy_from_slice(&addrs[0..4]);
        let old_ttl_word = u16::from_be_bytes([ip[8], ip[9]]);
        ip[8] = build::DEFAULT_TTL;
        let new_ttl_word = u16::from_be_bytes([ip[8], ip[9]]);
        let csum = checksum::update16(u16::from_be_bytes([ip[10], ip[11]]), old_ttl_word, new_ttl_word);
        ip[10..12].copy_from_slice(&csum.to_be_bytes());
    }

    /// Answers a TCP segment nothing serves with an RST (unless it is one), counted under `reason`.
    #[allow(clippy::too_many_arguments)]
    fn handle_tcp(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        l4: usize,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        reason: DropReason,
    ) -> Verdict {
        let data = frame.data();
        let tcp = &data[l4..];
        if tcp.len() < 20 || usize::from(tcp[12] >> 4) * 4 < 20 || usize::from(tcp[12] >> 4) * 4 > tcp.len() {
            return Verdict::Drop(DropReason::MalformedTcp);
        }
        if checksum::l4_checksum(src.octets(), dst.octets(), 6, tcp) != 0 {
            return Verdict::Drop(self.bad_checksum(port, src, dst, 6, tcp));
        }
        self.counters.drop(reason);
        let flags = tcp[13];
        let (fin, syn, rst, ack) = (
            flags & 0x01 != 0,
            flags & 0x02 != 0,
            flags & 0x04 != 0,
            flags & 0x10 != 0,
        );
        if rst {
            return Verdict::Consumed;
        }
        if !self.limiter.allow(now) {
            self.counters.drop(DropReason::IcmpRateLimited);
            return Verdict::Consumed;
        }
        let payload_len = tcp.len() - usize::from(tcp[12] >> 4) * 4;
        let seg = ResetFor {
            peer: (src, u16::from_be_bytes([tcp[0], tcp[1]])),
            local: (dst, u16::from_be_bytes([tcp[2], tcp[3]])),
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            ack: ack.then(|| u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]])),
            seq_len: payload_len as u32 + u32::from(syn) + u32::from(fin),
        };
        let peer_mac = EthernetAddress::from_bytes(&data[6..12]);
        let len = build::tcp_reset(frame.buffer_mut(), peer_mac, self.links[port].mac, &seg);
        frame.set_len(len);
        self.counters.tcp_resets += 1;
        Verdict::Transmit(port)
    }

    /// Answers a UDP datagram nothing serves with ICMP port unreachable, counted under `reason`.
    #[allow(clippy::too_many_arguments)]
    fn handle_udp(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        l4: usize,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        reason: DropReason,
    ) -> Verdict {
        let data = frame.data();
        let udp = &data[l4..];
        if udp.len() < 8 {
            return Verdict::Drop(DropReason::MalformedUdp);
        }
        let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        if udp_len < 8 || udp_len > udp.len() {
            return Verdict::Drop(DropReason::MalformedUdp);
        }
        // A zero checksum field means none was computed (allowed for UDP over IPv4).
        let datagram = &udp[..udp_len];
        if datagram[6..8] != [0, 0] && checksum::l4_checksum(src.octets(), dst.octets(), 17, datagram) != 0 {
            return Verdict::Drop(self.bad_checksum(port, src, dst, 17, datagram));
        }
        self.counters.drop(reason);
        if !self.limiter.allow(now) {
            self.counters.drop(DropReason::IcmpRateLimited);
            return Verdict::Consumed;
        }
        // Quote the offending IP header and 8 bytes of its payload (RFC 792), copied out before the frame
        // is overwritten by the answer.
        let mut quote = [0u8; 60 + 8];
        let quote_len = (l4 - ETH_HEADER_LEN) + 8;
        quote[..quote_len].copy_from_slice(&data[ETH_HEADER_LEN..l4 + 8]);
        let peer_mac = EthernetAddress::from_bytes(&data[6..12]);
        let len = build::icmp_unreachable(
            frame.buffer_mut(),
            peer_mac,
            self.links[port].mac,
            dst,
            src,
            Unreachable::Port,
            &quote[..quote_len],
        );
        frame.set_len(len);
        self.counters.icmp_unreachables += 1;
        Verdict::Transmit(port)
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

    /// Offers IPv4 frames to the handler's prefetch after the few checks needed to find the addresses.
    #[inline]
    fn prefetch(&mut self, port: PortId, frame: &[u8]) {
        if frame.len() < ETH_HEADER_LEN + 20 || frame[12..14] != ETHERTYPE_IPV4.to_be_bytes() {
            return;
        }
        let ip = &frame[ETH_HEADER_LEN..];
        let header_len = usize::from(ip[0] & 0x0f) * 4;
        // Fragments are reassembled before any stage sees them: nothing to load for them now.
        if ip[0] >> 4 != 4 || header_len < 20 || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
            return;
        }
        let meta = Ipv4Meta {
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            protocol: ip[9],
            l4: ETH_HEADER_LEN + header_len,
            service: None,
        };
        self.handler.prefetch(port, frame, &meta);
    }

    fn flush_events(&mut self) {
        if let Some(sync) = &mut self.sync {
            sync.flush();
        }
        let (handler, mut cx) = self.stage();
        handler.flush_events(&mut cx);
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
        let (handler, mut cx) = self.stage();
        handler.poll_transmit(now, buf, &mut cx)
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
        let (handler, mut cx) = self.stage();
        handler.handle_timeout(now, &mut cx);
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
