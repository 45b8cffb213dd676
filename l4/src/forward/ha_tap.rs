//! HA traffic on the datapath: VRRP adverts and session-sync datagrams arrive through AF_XDP like every other
//! frame for the appliance. The forwarder recognises them, queues a copy during the batch and hands it to the HA
//! driver over a bounded channel after it; the frames the driver builds come back the same way and leave through
//! a worker's TX ring (the driver signals a [`Wake`] so a sleeping worker sends them at once).
//!
//! No kernel socket carries HA traffic, so HA shares the datapath's fate: when the workers stop, the node stops
//! advertising and a peer takes over. HA packets are control traffic (a few per second), so copying them into
//! owned buffers costs nothing that matters.

use std::net::{Ipv4Addr, SocketAddrV4};

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use xlb_stack::wake::Wake;
use xlb_stack::wire::{udp, Ipv4Header, Protocol};

/// The VRRP multicast group (RFC 5798), and IP protocol number.
pub const VRRP_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
const VRRP_PROTOCOL: u8 = 112;

/// Which HA packet a worker received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaKind {
    /// A VRRP advertisement.
    Vrrp,
    /// A session-sync datagram (to the group, or to our HA address).
    Sync,
}

/// A packet the HA driver wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaOutbound {
    /// A complete Ethernet frame for interface `iface` (config order): multicast, gratuitous ARP.
    Frame {
        /// Interface index.
        iface: usize,
        /// The frame.
        frame: Vec<u8>,
    },
    /// A unicast IPv4 packet (from its header on), routed and resolved by ARP like the appliance's own.
    Routed(Vec<u8>),
}

/// The forwarder's end of the HA channels.
#[derive(Debug, Clone)]
pub struct HaTap {
    /// The HA interface (config order).
    pub iface: usize,
    /// The node's HA address: sync datagrams to it (acknowledgements, unicast peers) are HA traffic.
    pub source: Ipv4Addr,
    /// The sync group and port.
    pub sync: SocketAddrV4,
    /// Where received VRRP packets go (IPv4 packets, from the header on).
    pub vrrp: Sender<Vec<u8>>,
    /// Where received sync datagrams go (IPv4 packets, from the header on).
    pub sync_in: Sender<Vec<u8>>,
    /// What to send (only the worker that transmits for HA holds it).
    pub outbound: Option<Receiver<HaOutbound>>,
    /// Signalled by the HA driver after it queued something to send, so a sleeping worker wakes up.
    pub wake: Arc<Wake>,
}

impl HaTap {
    /// Whether the IPv4 `packet` (from its header on, validated by the stack) is HA traffic, and which.
    pub fn classify(&self, packet: &[u8]) -> Option<HaKind> {
        let ip = Ipv4Header::header_checked(packet).ok()?;
        let dst = ip.dst();
        match ip.protocol() {
            Protocol::Other(VRRP_PROTOCOL) if dst == VRRP_GROUP => Some(HaKind::Vrrp),
            Protocol::Udp if dst == *self.sync.ip() || dst == self.source => {
                let port = ip.rest().get(udp::field::DST_PORT)?;
                (u16::from_be_bytes([port[0], port[1]]) == self.sync.port()).then_some(HaKind::Sync)
            }
            _ => None,
        }
    }

    /// The channel for packets of `kind`.
    pub fn sender(&self, kind: HaKind) -> &Sender<Vec<u8>> {
        match kind {
            HaKind::Vrrp => &self.vrrp,
            HaKind::Sync => &self.sync_in,
        }
    }

    /// The multicast groups the HA interface must deliver to the appliance.
    pub fn groups(&self) -> [Ipv4Addr; 2] {
        [VRRP_GROUP, *self.sync.ip()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap() -> HaTap {
        HaTap {
            iface: 0,
            source: Ipv4Addr::new(198, 18, 0, 10),
            sync: "224.0.0.81:8848".parse().unwrap(),
            vrrp: crossbeam_channel::bounded(1).0,
            sync_in: crossbeam_channel::bounded(1).0,
            outbound: None,
            wake: Arc::new(Wake::new().unwrap()),
        }
    }

    fn ip(protocol: u8, dst: [u8; 4], dst_port: u16) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[9] = protocol;
        p[16..20].copy_from_slice(&dst);
        p[22..24].copy_from_slice(&dst_port.to_be_bytes());
        p
    }

    #[test]
    fn vrrp_and_sync_are_recognised_and_nothing_else() {
        let t = tap();
        let kind = |p: Vec<u8>| t.classify(&p);
        assert_eq!(kind(ip(112, [224, 0, 0, 18], 0)), Some(HaKind::Vrrp));
        assert_eq!(kind(ip(17, [224, 0, 0, 81], 8848)), Some(HaKind::Sync));
        assert_eq!(kind(ip(17, [198, 18, 0, 10], 8848)), Some(HaKind::Sync));
        // Other ports, groups, protocols and addresses are not HA traffic.
        assert_eq!(kind(ip(17, [198, 18, 0, 10], 53)), None);
        assert_eq!(kind(ip(17, [198, 18, 0, 11], 8848)), None);
        assert_eq!(kind(ip(112, [224, 0, 0, 81], 0)), None);
        assert_eq!(kind(ip(6, [224, 0, 0, 81], 8848)), None);
        // A UDP header cut short is not mistaken for sync.
        assert_eq!(t.classify(&ip(17, [224, 0, 0, 81], 8848)[..21]), None);
    }
}
