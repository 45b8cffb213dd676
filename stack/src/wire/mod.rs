//! Packet layer: zero-copy views over Ethernet, ARP, IPv4, ICMP, TCP and UDP.
//!
//! The header views are smoltcp's `wire` types (`Packet<T: AsRef<[u8]>>` with `new_checked`, field accessors
//! and setters), re-exported here so the rest of xlb names one module. What smoltcp does not provide lives
//! beside them: incremental checksum updates for NAT ([`checksum`]) and the builders of the packets xlb
//! originates ([`build`]).

pub mod build;
pub mod checksum;

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
