//! The contract between the local stack and the upper stages (L4, L7, HA): the [`Ipv4Handler`] trait, what a
//! stage answers ([`Handled`]), and what it may use of the stack ([`StackContext`]: routes, neighbours,
//! counters, services, owned addresses).

use std::time::Instant;

use super::{Link, OwnedAddrs};
use crate::counters::StackCounters;
use crate::drops::DropReason;
use crate::neighbour::{NeighbourTable, Resolution};
use crate::pipeline::{Frame, PortId, Verdict};
use crate::ports::LocalPorts;
use crate::service::ServiceTable;
use crate::wire::build::{self, ETHERTYPE_IPV4};
use crate::wire::{EthernetAddress, Ipv4Addr, PacketSummary};

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
    /// The worker's local ports, shared by the stages that connect to servers ([`crate::ports`]).
    pub ports: &'a mut LocalPorts,
    pub(super) owned: &'a mut OwnedAddrs,
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
    /// Handles the packet (rewriting `frame` in place), or passes it to the local stack. `ip` summarises the
    /// frame: its IPv4 header is valid and the frame is trimmed to the packet; its transport header is not checked
    /// yet (the local stack checks it when the packet is passed back).
    fn handle(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &PacketSummary,
        cx: &mut StackContext<'_>,
    ) -> Handled;

    /// A hint for an IPv4 packet of a received batch, before the batch is processed (see
    /// [`crate::pipeline::Pipeline::prefetch`]). Nothing about the packet has been checked but its IPv4 version
    /// and header length: only what the summary holds may be used (its ports are `Some` only when the frame holds
    /// them), its `service` is not looked up yet, and the packet may be dropped before [`Ipv4Handler::handle`]
    /// sees it. The default does nothing.
    #[inline]
    fn prefetch(&mut self, port: PortId, frame: &[u8], ip: &PacketSummary) {
        let _ = (port, frame, ip);
    }

    /// Called once when the stack is built: the stage registers its services ([`StackContext::services`]).
    fn attach(&mut self, cx: &mut StackContext<'_>) {
        let _ = cx;
    }

    /// Delivers what the stage queued while it processed the batch (frames for other workers, packets for
    /// other threads): see [`crate::pipeline::Pipeline::flush_events`]. The default does nothing.
    fn flush_events(&mut self, cx: &mut StackContext<'_>) {
        let _ = cx;
    }

    /// The worker is stopping: see [`crate::pipeline::Pipeline::shutdown`]. The default does nothing.
    fn shutdown(&mut self, now: Instant) {
        let _ = now;
    }

    /// Writes the next frame the stage originates into `buf` (see [`crate::pipeline::Pipeline::poll_transmit`]).
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8], cx: &mut StackContext<'_>) -> Option<(PortId, usize)>;

    /// When [`Ipv4Handler::handle_timeout`] should next run.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Advances the stage's timers.
    fn handle_timeout(&mut self, now: Instant, cx: &mut StackContext<'_>);

    /// See [`crate::pipeline::Pipeline::wake_fd`].
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Writes into `buf` the next frame the stage took from another worker but does not serve (a reply to a
    /// local port the next stage holds, see [`crate::ports`]); [`crate::stages::Stages`] offers it to the next
    /// stage. The default has none.
    fn poll_passed(&mut self, buf: &mut [u8]) -> Option<(PortId, usize)> {
        let _ = buf;
        None
    }
}

/// No upper stage: the local stack answers everything itself.
#[derive(Debug, Default)]
pub struct NoHandler;

impl Ipv4Handler for NoHandler {
    fn handle(
        &mut self,
        _: Instant,
        _: PortId,
        _: &mut Frame<'_>,
        _: &PacketSummary,
        _: &mut StackContext<'_>,
    ) -> Handled {
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
