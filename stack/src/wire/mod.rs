//! Packet layer: zero-copy views over Ethernet, ARP, IPv4, ICMP, TCP and UDP, and the summary of a received
//! frame.
//!
//! The local stack reads each received IPv4 frame once into a [`PacketSummary`] (addresses, protocol, ports,
//! TCP flags, offsets) that every stage decides from. Headers read or written beyond it go through xlb's typed
//! views ([`Ipv4Header`], [`TcpHeader`], [`UdpHeader`], [`IcmpMessage`] and the [`Quote`] of an ICMP error):
//! `new_checked` validates the lengths once, accessors read named fields, malformed input is a [`WireError`],
//! never a panic; each module's `field` names the byte offsets for in-place rewrites. smoltcp's `wire` types
//! are re-exported for ARP, Ethernet and tests. What no view covers lives beside them: incremental checksum
//! updates for NAT ([`checksum`]) and the builders of the packets xlb originates ([`build`]).

pub mod build;
pub mod checksum;
pub mod icmp;
pub mod ipv4;
mod protocol;
mod summary;
pub mod tcp;
pub mod udp;

pub use icmp::{IcmpMessage, Quote};
pub use ipv4::Ipv4Header;
pub use protocol::{Protocol, WireError};
pub use summary::{PacketSummary, Ports, TcpSummary};
pub use tcp::{TcpFlags, TcpHeader};
pub use udp::UdpHeader;

pub use smoltcp::wire::{
    ArpHardware, ArpOperation, ArpPacket, EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv4Message,
    Icmpv4Packet, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket,
};
pub use std::net::Ipv4Addr;

/// Length of an Ethernet II header without VLAN tags.
pub const ETH_HEADER_LEN: usize = 14;
/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Length of a TCP header without options.
pub const TCP_HEADER_LEN: usize = 20;
/// Length of a UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// Length of the ARP payload for Ethernet/IPv4.
pub const ARP_LEN: usize = 28;

#[cfg(test)]
mod tests;
