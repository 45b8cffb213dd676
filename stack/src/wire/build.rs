//! Builders for the frames xlb writes itself: ARP requests and replies, TCP resets, ICMP errors.
//!
//! Each writes into a caller-provided buffer (a UMEM frame, in the datapath) and returns the frame length,
//! so building allocates nothing.

use super::checksum;
use super::tcp::{self, TcpFlags};
use super::Protocol;
use super::{EthernetAddress, Ipv4Addr, ARP_LEN, ETH_HEADER_LEN, IPV4_HEADER_LEN, TCP_HEADER_LEN};

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// TTL of packets xlb originates.
pub const DEFAULT_TTL: u8 = 64;

/// Writes an Ethernet II header at the start of `buf`.
pub fn ethernet(buf: &mut [u8], dst: EthernetAddress, src: EthernetAddress, ethertype: u16) {
    buf[0..6].copy_from_slice(&dst.0);
    buf[6..12].copy_from_slice(&src.0);
    buf[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Writes an Ethernet/IPv4 ARP packet (header + payload) into `buf` and returns the frame length (42).
pub fn arp(
    buf: &mut [u8],
    eth_dst: EthernetAddress,
    operation: u16,
    sender: (EthernetAddress, Ipv4Addr),
    target: (EthernetAddress, Ipv4Addr),
) -> usize {
    ethernet(buf, eth_dst, sender.0, ETHERTYPE_ARP);
    let a = &mut buf[ETH_HEADER_LEN..ETH_HEADER_LEN + ARP_LEN];
    a[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    a[2..4].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&operation.to_be_bytes());
    a[8..14].copy_from_slice(&sender.0 .0);
    a[14..18].copy_from_slice(&sender.1.octets());
    a[18..24].copy_from_slice(&target.0 .0);
    a[24..28].copy_from_slice(&target.1.octets());
    ETH_HEADER_LEN + ARP_LEN
}

/// Writes an ARP request for `target_ip` from (`mac`, `ip`) and returns the frame length.
pub fn arp_request(buf: &mut [u8], mac: EthernetAddress, ip: Ipv4Addr, target_ip: Ipv4Addr) -> usize {
    arp(
        buf,
        EthernetAddress::BROADCAST,
        1,
        (mac, ip),
        (EthernetAddress([0; 6]), target_ip),
    )
}

/// Writes a 20-byte IPv4 header (no options, DF set) at the start of `buf`, with its checksum.
pub fn ipv4_header(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload_len: usize, ttl: u8) {
    let h = &mut buf[..IPV4_HEADER_LEN];
    h[0] = 0x45;
    h[1] = 0;
    h[2..4].copy_from_slice(&((IPV4_HEADER_LEN + payload_len) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&0u16.to_be_bytes());
    h[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    h[8] = ttl;
    h[9] = protocol;
    h[10..12].copy_from_slice(&[0, 0]);
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

/// The fields of a received TCP segment a reset answers to (RFC 9293 section 3.10.7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetFor {
    /// The segment's source (the peer we answer).
    pub peer: (Ipv4Addr, u16),
    /// The segment's destination (our address and port).
    pub local: (Ipv4Addr, u16),
    /// The segment's sequence number.
    pub seq: u32,
    /// The segment's acknowledgement number, if ACK was set.
    pub ack: Option<u32>,
    /// Sequence space the segment occupies: payload length plus one each for SYN and FIN.
    pub seq_len: u32,
}

/// Writes a TCP RST answering `seg` into `buf` (Ethernet from `eth_src` to `eth_dst`), returns the frame length.
pub fn tcp_reset(buf: &mut [u8], eth_dst: EthernetAddress, eth_src: EthernetAddress, seg: &ResetFor) -> usize {
    ethernet(buf, eth_dst, eth_src, ETHERTYPE_IPV4);
    let ip_at = ETH_HEADER_LEN;
    ipv4_header(
        &mut buf[ip_at..],
        seg.local.0,
        seg.peer.0,
        Protocol::TCP,
        TCP_HEADER_LEN,
        DEFAULT_TTL,
    );
    let (seq, ack, flags) = match seg.ack {
        Some(ack) => (ack, 0, TcpFlags::RST),
        None => (0, seg.seq.wrapping_add(seg.seq_len), TcpFlags::RST | TcpFlags::ACK),
    };
    let t = &mut buf[ip_at + IPV4_HEADER_LEN..ip_at + IPV4_HEADER_LEN + TCP_HEADER_LEN];
    t[tcp::field::SRC_PORT].copy_from_slice(&seg.local.1.to_be_bytes());
    t[tcp::field::DST_PORT].copy_from_slice(&seg.peer.1.to_be_bytes());
    t[tcp::field::SEQ].copy_from_slice(&seq.to_be_bytes());
    t[tcp::field::ACK].copy_from_slice(&ack.to_be_bytes());
    t[tcp::field::DATA_OFFSET] = ((TCP_HEADER_LEN / 4) as u8) << 4;
    t[tcp::field::FLAGS] = flags.bits();
    t[tcp::field::WINDOW.start..TCP_HEADER_LEN].copy_from_slice(&[0; 6]); // window, checksum, urgent pointer
    let c = checksum::l4_checksum(seg.local.0.octets(), seg.peer.0.octets(), Protocol::TCP, t);
    t[tcp::field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    ETH_HEADER_LEN + IPV4_HEADER_LEN + TCP_HEADER_LEN
}

/// ICMP destination-unreachable codes xlb sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Code 1: no route to the host (e.g. every backend down, later).
    Host = 1,
    /// Code 3: nothing listens on the UDP port.
    Port = 3,
}

/// Writes an ICMP destination-unreachable from `local` to `peer` quoting `original` (the offending IPv4
/// packet: its header plus the first 8 bytes of payload are quoted). Returns the frame length.
///
/// `original` may alias nothing in `buf`; to answer in place, copy the quote out first (see `LocalStack`).
pub fn icmp_unreachable(
    buf: &mut [u8],
    eth_dst: EthernetAddress,
    eth_src: EthernetAddress,
    local: Ipv4Addr,
    peer: Ipv4Addr,
    code: Unreachable,
    original: &[u8],
) -> usize {
    icmp_error(buf, (eth_dst, eth_src), local, peer, (3, code as u8), original)
}

/// Writes an ICMP time exceeded (type 11, code 0: TTL exceeded in transit) from `local` to `peer` quoting
/// `original`, as [`icmp_unreachable`] does. Returns the frame length.
pub fn icmp_time_exceeded(
    buf: &mut [u8],
    eth_dst: EthernetAddress,
    eth_src: EthernetAddress,
    local: Ipv4Addr,
    peer: Ipv4Addr,
    original: &[u8],
) -> usize {
    icmp_error(buf, (eth_dst, eth_src), local, peer, (11, 0), original)
}

/// An ICMP error of `(type, code)` quoting `original`.
fn icmp_error(
    buf: &mut [u8],
    (eth_dst, eth_src): (EthernetAddress, EthernetAddress),
    local: Ipv4Addr,
    peer: Ipv4Addr,
    (kind, code): (u8, u8),
    original: &[u8],
) -> usize {
    let icmp_len = 8 + original.len();
    ethernet(buf, eth_dst, eth_src, ETHERTYPE_IPV4);
    ipv4_header(&mut buf[ETH_HEADER_LEN..], local, peer, 1, icmp_len, DEFAULT_TTL);
    let at = ETH_HEADER_LEN + IPV4_HEADER_LEN;
    let m = &mut buf[at..at + icmp_len];
    m[0] = kind;
    m[1] = code;
    m[2..8].copy_from_slice(&[0; 6]);
    m[8..].copy_from_slice(original);
    let c = checksum::checksum(m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    at + icmp_len
}
