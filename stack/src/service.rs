//! The service table: what each (address, protocol, port) of the appliance is, so that one lookup per packet
//! decides which stage serves it.
//!
//! Stages register what they serve through [`crate::local::StackContext::services`]: the L4 stage its listeners'
//! VIP:ports, the FULLNAT reply range and the health-probe ports of its local IPs; an L7 stage will register its
//! listeners the same way. The stack looks the destination of every TCP and UDP packet up here and hands the
//! result ([`Service`]) to the stages with the packet ([`crate::wire::PacketSummary::service`]); a packet no stage
//! serves is the local stack's (RST, port unreachable). The table knows nothing of what a stage does: a
//! service is a stage id and a slot the stage gives meaning to (a listener index, a port range's role).
//!
//! Exact entries (one port) win over ranges; ranges are few (a couple per local IP) and scanned in order.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

/// Which stage serves a service (a small number a stage picks for itself, e.g. `1` for L4).
pub type StageId = u8;

/// A service: the stage that serves it and the slot it means to that stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Service {
    /// The serving stage.
    pub stage: StageId,
    /// What the service is to the stage (e.g. a listener index).
    pub slot: u32,
}

/// The transport protocols services are registered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Transport {
    /// TCP (IP protocol 6).
    Tcp = 6,
    /// UDP (IP protocol 17).
    Udp = 17,
}

impl Transport {
    /// The transport of IP protocol number `protocol`, if it is one.
    pub fn from_protocol(protocol: u8) -> Option<Transport> {
        match protocol {
            6 => Some(Transport::Tcp),
            17 => Some(Transport::Udp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct RangeEntry {
    addr: Ipv4Addr,
    transport: Transport,
    ports: RangeInclusive<u16>,
    service: Service,
}

/// The services of one worker's stack.
#[derive(Debug, Default)]
pub struct ServiceTable {
    ports: HashMap<(Ipv4Addr, Transport, u16), Service, ahash::RandomState>,
    ranges: Vec<RangeEntry>,
}

impl ServiceTable {
    /// Registers (`Some`) or withdraws (`None`) the service of one address:port.
    pub fn set(&mut self, addr: Ipv4Addr, transport: Transport, port: u16, service: Option<Service>) {
        match service {
            Some(s) => {
                self.ports.insert((addr, transport, port), s);
            }
            None => {
                self.ports.remove(&(addr, transport, port));
            }
        }
    }

    /// Registers a service for a range of ports of an address (replacing one for the same range).
    pub fn set_range(&mut self, addr: Ipv4Addr, transport: Transport, ports: RangeInclusive<u16>, service: Service) {
        self.ranges
            .retain(|r| !(r.addr == addr && r.transport == transport && r.ports == ports));
        self.ranges.push(RangeEntry {
            addr,
            transport,
            ports,
            service,
        });
    }

    /// Withdraws every service of `stage` (before it registers its new set).
    pub fn clear_stage(&mut self, stage: StageId) {
        self.ports.retain(|_, s| s.stage != stage);
        self.ranges.retain(|r| r.service.stage != stage);
    }

    /// The service of `addr:port`, if any stage serves it.
    #[inline]
    pub fn lookup(&self, addr: Ipv4Addr, transport: Transport, port: u16) -> Option<Service> {
        if let Some(s) = self.ports.get(&(addr, transport, port)) {
            return Some(*s);
        }
        self.ranges
            .iter()
            .find(|r| r.addr == addr && r.transport == transport && r.ports.contains(&port))
            .map(|r| r.service)
    }

    /// Number of exact entries and ranges.
    pub fn len(&self) -> usize {
        self.ports.len() + self.ranges.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
    const LIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);

    #[test]
    fn exact_ports_win_over_ranges_and_stages_are_withdrawn_as_a_whole() {
        let mut t = ServiceTable::default();
        let l4 = |slot| Some(Service { stage: 1, slot });
        t.set(VIP, Transport::Tcp, 80, l4(0));
        t.set(VIP, Transport::Udp, 53, l4(1));
        t.set_range(LIP, Transport::Tcp, 10_000..=60_999, Service { stage: 1, slot: 99 });
        t.set(LIP, Transport::Tcp, 20_000, Some(Service { stage: 2, slot: 7 }));
        assert_eq!(t.lookup(VIP, Transport::Tcp, 80), l4(0));
        assert_eq!(t.lookup(VIP, Transport::Udp, 80), None, "per transport");
        assert_eq!(t.lookup(VIP, Transport::Tcp, 81), None);
        assert_eq!(t.lookup(LIP, Transport::Tcp, 10_000), l4(99));
        assert_eq!(
            t.lookup(LIP, Transport::Tcp, 20_000),
            Some(Service { stage: 2, slot: 7 })
        );
        assert_eq!(t.lookup(LIP, Transport::Tcp, 61_000), None);
        assert_eq!(t.lookup(LIP, Transport::Udp, 10_000), None);
        t.set_range(LIP, Transport::Tcp, 10_000..=60_999, Service { stage: 1, slot: 98 });
        assert_eq!(
            t.lookup(LIP, Transport::Tcp, 10_001),
            l4(98),
            "the same range is replaced"
        );
        t.clear_stage(1);
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(VIP, Transport::Tcp, 80), None);
        assert_eq!(
            t.lookup(LIP, Transport::Tcp, 20_000),
            Some(Service { stage: 2, slot: 7 })
        );
        t.set(LIP, Transport::Tcp, 20_000, None);
        assert!(t.is_empty());
    }
}
