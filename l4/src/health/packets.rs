//! The probe packets the checker writes (TCP segments, UDP datagrams) and the parsing of the replies (TCP,
//! UDP, ICMP errors quoting a probe).
//!
//! Builders write a whole IPv4 packet (no Ethernet header) into a caller buffer and return its length; the
//! IPv4 header comes from [`xlb_stack::wire::build::ipv4_header`], the checksums from
//! [`xlb_stack::wire::checksum`]. Parsers borrow the packet and allocate nothing.

use std::net::{Ipv4Addr, SocketAddrV4};

use xlb_stack::wire::build::{ipv4_header, DEFAULT_TTL};
use xlb_stack::wire::checksum;
use xlb_stack::wire::{IPV4_HEADER_LEN, TCP_HEADER_LEN, UDP_HEADER_LEN};

/// IP protocol number of ICMP.
pub(crate) const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub(crate) const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub(crate) const PROTO_UDP: u8 = 17;

/// TCP FIN flag.
pub(crate) const FIN: u8 = 0x01;
/// TCP SYN flag.
pub(crate) const SYN: u8 = 0x02;
/// TCP RST flag.
pub(crate) const RST: u8 = 0x04;
/// TCP PSH flag.
pub(crate) const PSH: u8 = 0x08;
/// TCP ACK flag.
pub(crate) const ACK: u8 = 0x10;

/// The receive window the probes advertise.
pub(crate) const WINDOW: u16 = 1024;
/// The MSS option value of probe SYNs.
pub(crate) const MSS: u16 = 1460;

/// A TCP segment to write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpOut<'a> {
    /// Our address and port.
    pub src: SocketAddrV4,
    /// The peer's address and port.
    pub dst: SocketAddrV4,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number (written as is; meaningful when `flags` has ACK).
    pub ack: u32,
    /// Flags byte (FIN, SYN, RST, PSH, ACK).
    pub flags: u8,
    /// MSS option to carry (SYNs only).
    pub mss: Option<u16>,
    /// Payload.
    pub payload: &'a [u8],
}

/// Writes `seg` as an IPv4/TCP packet into `buf` and returns its length.
pub(crate) fn tcp(buf: &mut [u8], seg: &TcpOut<'_>) -> usize {
    let header_len = TCP_HEADER_LEN + if seg.mss.is_some() { 4 } else { 0 };
    let tcp_len = header_len + seg.payload.len();
    ipv4_header(buf, *seg.src.ip(), *seg.dst.ip(), PROTO_TCP, tcp_len, DEFAULT_TTL);
    let t = &mut buf[IPV4_HEADER_LEN..IPV4_HEADER_LEN + tcp_len];
    t[0..2].copy_from_slice(&seg.src.port().to_be_bytes());
    t[2..4].copy_from_slice(&seg.dst.port().to_be_bytes());
    t[4..8].copy_from_slice(&seg.seq.to_be_bytes());
    t[8..12].copy_from_slice(&seg.ack.to_be_bytes());
    t[12] = ((header_len / 4) as u8) << 4;
    t[13] = seg.flags;
    t[14..16].copy_from_slice(&WINDOW.to_be_bytes());
    t[16..20].copy_from_slice(&[0; 4]); // checksum, urgent pointer
    if let Some(mss) = seg.mss {
        t[20] = 2; // kind: MSS
        t[21] = 4; // length
        t[22..24].copy_from_slice(&mss.to_be_bytes());
    }
    t[header_len..].copy_from_slice(seg.payload);
    let c = checksum::l4_checksum(seg.src.ip().octets(), seg.dst.ip().octets(), PROTO_TCP, t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    IPV4_HEADER_LEN + tcp_len
}

/// Writes an IPv4/UDP datagram from `src` to `dst` into `buf` and returns its length.
pub(crate) fn udp(buf: &mut [u8], src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> usize {
    let udp_len = UDP_HEADER_LEN + payload.len();
    ipv4_header(buf, *src.ip(), *dst.ip(), PROTO_UDP, udp_len, DEFAULT_TTL);
    let u = &mut buf[IPV4_HEADER_LEN..IPV4_HEADER_LEN + udp_len];
    u[0..2].copy_from_slice(&src.port().to_be_bytes());
    u[2..4].copy_from_slice(&dst.port().to_be_bytes());
    u[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    u[6..8].copy_from_slice(&[0, 0]);
    u[8..].copy_from_slice(payload);
    let c = match checksum::l4_checksum(src.ip().octets(), dst.ip().octets(), PROTO_UDP, u) {
        0 => 0xffff, // RFC 768: a computed zero is sent as all ones (zero means "no checksum")
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    IPV4_HEADER_LEN + udp_len
}

/// A received IPv4 packet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ipv4View<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    /// The payload, trimmed to the header's total length.
    pub payload: &'a [u8],
}

/// Parses an IPv4 packet: version 4, consistent lengths, a valid header checksum, not a fragment.
pub(crate) fn ipv4(packet: &[u8]) -> Option<Ipv4View<'_>> {
    if packet.len() < IPV4_HEADER_LEN || packet[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if header_len < IPV4_HEADER_LEN || total_len < header_len || total_len > packet.len() {
        return None;
    }
    if checksum::checksum(&packet[..header_len]) != 0 {
        return None;
    }
    if u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0 {
        return None; // a fragment: probes' replies are small, reassembly is not worth it
    }
    Some(Ipv4View {
        src: addr(&packet[12..16]),
        dst: addr(&packet[16..20]),
        protocol: packet[9],
        payload: &packet[header_len..total_len],
    })
}

fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A received TCP segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpView<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload: &'a [u8],
}

impl TcpView<'_> {
    /// Whether all of `flags` are set.
    pub fn has(&self, flags: u8) -> bool {
        self.flags & flags == flags
    }
}

/// Parses the TCP header of `segment` (the IPv4 payload). The checksum is checked apart ([`l4_checksum_ok`]).
pub(crate) fn tcp_view(segment: &[u8]) -> Option<TcpView<'_>> {
    if segment.len() < TCP_HEADER_LEN {
        return None;
    }
    let header_len = usize::from(segment[12] >> 4) * 4;
    if header_len < TCP_HEADER_LEN || header_len > segment.len() {
        return None;
    }
    Some(TcpView {
        src_port: be16(&segment[0..2]),
        dst_port: be16(&segment[2..4]),
        seq: be32(&segment[4..8]),
        ack: be32(&segment[8..12]),
        flags: segment[13],
        payload: &segment[header_len..],
    })
}

/// A received UDP datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UdpView<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    /// The datagram (header and payload) trimmed to the UDP length, for the checksum.
    pub datagram: &'a [u8],
}

/// Parses the UDP header of `datagram` (the IPv4 payload).
pub(crate) fn udp_view(datagram: &[u8]) -> Option<UdpView<'_>> {
    if datagram.len() < UDP_HEADER_LEN {
        return None;
    }
    let len = usize::from(be16(&datagram[4..6]));
    if len < UDP_HEADER_LEN || len > datagram.len() {
        return None;
    }
    Some(UdpView {
        src_port: be16(&datagram[0..2]),
        dst_port: be16(&datagram[2..4]),
        datagram: &datagram[..len],
    })
}

/// Whether the TCP or UDP `segment` (checksum field included) verifies over `ip`'s pseudo-header. A UDP
/// checksum of zero means the sender computed none, which is accepted.
pub(crate) fn l4_checksum_ok(ip: &Ipv4View<'_>, segment: &[u8]) -> bool {
    if ip.protocol == PROTO_UDP && segment.len() >= UDP_HEADER_LEN && segment[6..8] == [0, 0] {
        return true;
    }
    checksum::l4_checksum(ip.src.octets(), ip.dst.octets(), ip.protocol, segment) == 0
}

/// An ICMP error and the start of the packet it quotes (RFC 792: the IP header and 8 bytes of payload).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IcmpQuote<'a> {
    pub icmp_type: u8,
    pub code: u8,
    /// Whether the ICMP checksum verifies.
    pub checksum_ok: bool,
    /// Source of the quoted packet (our address, if it was a probe).
    pub src: Ipv4Addr,
    /// Destination of the quoted packet.
    pub dst: Ipv4Addr,
    /// Protocol of the quoted packet.
    pub protocol: u8,
    /// The first 8 bytes of the quoted packet's payload: ports, and for TCP the sequence number.
    pub l4: &'a [u8],
}

impl IcmpQuote<'_> {
    /// The quoted source and destination ports.
    pub fn ports(&self) -> (u16, u16) {
        (be16(&self.l4[0..2]), be16(&self.l4[2..4]))
    }

    /// The quoted TCP sequence number.
    pub fn tcp_seq(&self) -> u32 {
        be32(&self.l4[4..8])
    }
}

/// ICMP destination unreachable.
pub(crate) const ICMP_UNREACHABLE: u8 = 3;
/// ICMP destination unreachable, code "fragmentation needed" (a path MTU signal, not a verdict on the server).
pub(crate) const ICMP_FRAG_NEEDED: u8 = 4;

/// Parses an ICMP error message (destination unreachable, time exceeded, parameter problem) and its quote.
pub(crate) fn icmp_quote(message: &[u8]) -> Option<IcmpQuote<'_>> {
    if message.len() < 8 || !matches!(message[0], ICMP_UNREACHABLE | 11 | 12) {
        return None;
    }
    let quoted = &message[8..];
    if quoted.len() < IPV4_HEADER_LEN || quoted[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(quoted[0] & 0x0f) * 4;
    if header_len < IPV4_HEADER_LEN || quoted.len() < header_len + 8 {
        return None;
    }
    Some(IcmpQuote {
        icmp_type: message[0],
        code: message[1],
        checksum_ok: checksum::checksum(message) == 0,
        src: addr(&quoted[12..16]),
        dst: addr(&quoted[16..20]),
        protocol: quoted[9],
        l4: &quoted[header_len..header_len + 8],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xlb_stack::wire::{Ipv4Packet, TcpPacket, UdpPacket};

    fn ends() -> (SocketAddrV4, SocketAddrV4) {
        ("198.18.0.10:40000".parse().unwrap(), "198.18.0.20:80".parse().unwrap())
    }

    #[test]
    fn tcp_syn_with_mss_verifies_with_smoltcp() {
        let (src, dst) = ends();
        let mut buf = [0u8; 128];
        let len = tcp(
            &mut buf,
            &TcpOut {
                src,
                dst,
                seq: 0xdead_beef,
                ack: 0,
                flags: SYN,
                mss: Some(MSS),
                payload: &[],
            },
        );
        assert_eq!(len, 20 + 24);
        let ip = Ipv4Packet::new_checked(&buf[..len]).unwrap();
        assert!(ip.verify_checksum());
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.verify_checksum(&(*src.ip()).into(), &(*dst.ip()).into()));
        assert!(t.syn() && !t.ack() && !t.rst());
        assert_eq!(t.seq_number().0 as u32, 0xdead_beef);
        assert_eq!(t.window_len(), WINDOW);
        assert_eq!(t.header_len(), 24);
        // Our own parser reads back what was written.
        let v = ipv4(&buf[..len]).unwrap();
        assert_eq!((v.src, v.dst, v.protocol), (*src.ip(), *dst.ip(), PROTO_TCP));
        assert!(l4_checksum_ok(&v, v.payload));
        let s = tcp_view(v.payload).unwrap();
        assert_eq!((s.src_port, s.dst_port, s.flags), (40000, 80, SYN));
        assert!(s.payload.is_empty());
    }

    #[test]
    fn tcp_with_payload_and_odd_length_verifies() {
        let (src, dst) = ends();
        let mut buf = [0u8; 128];
        let len = tcp(
            &mut buf,
            &TcpOut {
                src,
                dst,
                seq: 1,
                ack: 2,
                flags: ACK | PSH,
                mss: None,
                payload: b"odd",
            },
        );
        let ip = Ipv4Packet::new_checked(&buf[..len]).unwrap();
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.verify_checksum(&(*src.ip()).into(), &(*dst.ip()).into()));
        assert_eq!(t.payload(), b"odd");
        let v = ipv4(&buf[..len]).unwrap();
        assert_eq!(tcp_view(v.payload).unwrap().payload, b"odd");
    }

    #[test]
    fn udp_verifies_with_smoltcp_and_corruption_is_caught() {
        let (src, dst) = ends();
        let mut buf = [0u8; 128];
        let len = udp(&mut buf, src, dst, b"xlb-health");
        let ip = Ipv4Packet::new_checked(&buf[..len]).unwrap();
        assert!(ip.verify_checksum());
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(u.verify_checksum(&(*src.ip()).into(), &(*dst.ip()).into()));
        assert_eq!(u.payload(), b"xlb-health");
        buf[len - 1] ^= 0x40;
        let v = ipv4(&buf[..len]).unwrap();
        assert!(!l4_checksum_ok(&v, udp_view(v.payload).unwrap().datagram));
    }

    #[test]
    fn ipv4_parser_rejects_bad_headers() {
        let (src, dst) = ends();
        let mut buf = [0u8; 64];
        let len = udp(&mut buf, src, dst, b"x");
        assert!(ipv4(&buf[..len]).is_some());
        assert!(ipv4(&buf[..len - 1]).is_none(), "total length beyond the data");
        let mut bad = buf;
        bad[8] ^= 1; // TTL changed, checksum not updated
        assert!(ipv4(&bad[..len]).is_none());
        assert!(ipv4(&buf[..10]).is_none());
    }
}
