//! The summary of one received IPv4 frame, read once by the local stack and handed to every stage.
//!
//! Stages decide from the summary (addresses, protocol, ports, TCP flags, offsets) instead of re-reading header
//! bytes; what they read or write beyond it goes through the typed views ([`super::TcpHeader`],
//! [`super::UdpHeader`], [`super::IcmpMessage`]).

use std::net::{Ipv4Addr, SocketAddrV4};

use super::ipv4::Ipv4Header;
use super::protocol::{be16, Protocol, WireError};
use super::tcp::{self, TcpFlags};
use super::{ETH_HEADER_LEN, TCP_HEADER_LEN};
use crate::service::Service;

/// Source and destination ports of a TCP or UDP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ports {
    /// Source port.
    pub src: u16,
    /// Destination port.
    pub dst: u16,
}

/// What the summary knows of a TCP header whose fixed 20 bytes are in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSummary {
    /// The flags.
    pub flags: TcpFlags,
    /// Header length from the data offset, in bytes, as sent: not checked against the frame (see
    /// [`PacketSummary::tcp_payload_len`]).
    pub header_len: usize,
}

/// An IPv4 packet in an Ethernet frame, summarised: what every stage needs to decide what the packet is.
///
/// Built by [`PacketSummary::parse`] from a frame whose IPv4 header is checked; the transport fields are `Some`
/// only when their bytes are in the frame. The frame is not kept: offsets index into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketSummary {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Time to live.
    pub ttl: u8,
    /// Offset of the transport header in the frame.
    pub l4: usize,
    /// Length of the frame summarised (the end of the IPv4 packet once the stack trimmed padding).
    pub len: usize,
    /// TCP or UDP ports, if the frame holds them.
    pub ports: Option<Ports>,
    /// The TCP header's flags and length, if the frame holds the fixed header of a TCP segment.
    pub tcp: Option<TcpSummary>,
    /// The service the destination address:port is registered for ([`crate::service`]), looked up by the local
    /// stack; `None` for what no stage serves, for ICMP, and in [`crate::local::Ipv4Handler::prefetch`].
    pub service: Option<Service>,
}

impl PacketSummary {
    /// Summarises the IPv4 packet in the Ethernet `frame`. Only the IPv4 header's version and length are
    /// checked here (the local stack checks the rest before a stage's `handle`); `Err` when they are wrong or the
    /// frame is too short for them.
    #[inline]
    pub fn parse(frame: &[u8]) -> Result<PacketSummary, WireError> {
        let ip = Ipv4Header::header_checked(frame.get(ETH_HEADER_LEN..).ok_or(WireError::Truncated)?)?;
        let l4 = ETH_HEADER_LEN + ip.header_len();
        let protocol = ip.protocol();
        let transport = &frame[l4..];
        let ports = match protocol {
            Protocol::Tcp | Protocol::Udp if transport.len() >= 4 => Some(Ports {
                src: be16(transport, 0),
                dst: be16(transport, 2),
            }),
            _ => None,
        };
        let tcp = (protocol == Protocol::Tcp && transport.len() >= TCP_HEADER_LEN).then(|| TcpSummary {
            flags: TcpFlags(transport[tcp::field::FLAGS]),
            header_len: usize::from(transport[tcp::field::DATA_OFFSET] >> 4) * 4,
        });
        Ok(PacketSummary {
            src: ip.src(),
            dst: ip.dst(),
            protocol,
            ttl: ip.ttl(),
            l4,
            len: frame.len(),
            ports,
            tcp,
            service: None,
        })
    }

    /// Bytes from the transport header to the end of the frame.
    #[inline]
    pub fn l4_len(&self) -> usize {
        self.len - self.l4
    }

    /// Source and destination as socket addresses, for TCP and UDP packets that hold their ports.
    #[inline]
    pub fn endpoints(&self) -> Option<(SocketAddrV4, SocketAddrV4)> {
        let p = self.ports?;
        Some((SocketAddrV4::new(self.src, p.src), SocketAddrV4::new(self.dst, p.dst)))
    }

    /// The TCP flags, for a TCP segment whose fixed header is in the frame.
    #[inline]
    pub fn tcp_flags(&self) -> Option<TcpFlags> {
        self.tcp.map(|t| t.flags)
    }

    /// The length of the TCP payload, when the data offset is valid (covers the fixed header, fits the frame).
    #[inline]
    pub fn tcp_payload_len(&self) -> Option<usize> {
        let t = self.tcp?;
        (t.header_len >= TCP_HEADER_LEN && t.header_len <= self.l4_len()).then(|| self.l4_len() - t.header_len)
    }
}
