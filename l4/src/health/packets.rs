//! The probe packets the checker writes (TCP segments, UDP datagrams), and which received packets it reads.
//!
//! Builders write a whole IPv4 packet (no Ethernet header) into a caller buffer and return its length; the
//! IPv4 header comes from [`xlb_stack::wire::build::ipv4_header`], the checksums from
//! [`xlb_stack::wire::checksum`]. Replies are read through `xlb_stack::wire`'s views ([`Ipv4Header`],
//! [`xlb_stack::wire::TcpHeader`], [`xlb_stack::wire::UdpHeader`], [`xlb_stack::wire::IcmpMessage`]), which
//! borrow the packet and allocate nothing.

use std::net::SocketAddrV4;

use xlb_stack::wire::build::{ipv4_header, DEFAULT_TTL};
use xlb_stack::wire::{checksum, tcp, udp, Ipv4Header, Protocol, TcpFlags, UdpHeader};
use xlb_stack::wire::{IPV4_HEADER_LEN, TCP_HEADER_LEN, UDP_HEADER_LEN};

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
    /// Flags.
    pub flags: TcpFlags,
    /// MSS option to carry (SYNs only).
    pub mss: Option<u16>,
    /// Payload.
    pub payload: &'a [u8],
}

/// Writes `seg` as an IPv4/TCP packet into `buf` and returns its length.
pub(crate) fn tcp(buf: &mut [u8], seg: &TcpOut<'_>) -> usize {
    let header_len = TCP_HEADER_LEN + if seg.mss.is_some() { 4 } else { 0 };
    let tcp_len = header_len + seg.payload.len();
    ipv4_header(buf, *seg.src.ip(), *seg.dst.ip(), Protocol::TCP, tcp_len, DEFAULT_TTL);
    let t = &mut buf[IPV4_HEADER_LEN..IPV4_HEADER_LEN + tcp_len];
    t[tcp::field::SRC_PORT].copy_from_slice(&seg.src.port().to_be_bytes());
    t[tcp::field::DST_PORT].copy_from_slice(&seg.dst.port().to_be_bytes());
    t[tcp::field::SEQ].copy_from_slice(&seg.seq.to_be_bytes());
    t[tcp::field::ACK].copy_from_slice(&seg.ack.to_be_bytes());
    t[tcp::field::DATA_OFFSET] = ((header_len / 4) as u8) << 4;
    t[tcp::field::FLAGS] = seg.flags.bits();
    t[tcp::field::WINDOW].copy_from_slice(&WINDOW.to_be_bytes());
    t[tcp::field::CHECKSUM.start..TCP_HEADER_LEN].copy_from_slice(&[0; 4]); // checksum, urgent pointer
    if let Some(mss) = seg.mss {
        t[20] = 2; // kind: MSS
        t[21] = 4; // length
        t[22..24].copy_from_slice(&mss.to_be_bytes());
    }
    t[header_len..].copy_from_slice(seg.payload);
    let c = checksum::l4_checksum(seg.src.ip().octets(), seg.dst.ip().octets(), Protocol::TCP, t);
    t[tcp::field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    IPV4_HEADER_LEN + tcp_len
}

/// Writes an IPv4/UDP datagram from `src` to `dst` into `buf` and returns its length.
pub(crate) fn udp(buf: &mut [u8], src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> usize {
    let udp_len = UDP_HEADER_LEN + payload.len();
    ipv4_header(buf, *src.ip(), *dst.ip(), Protocol::UDP, udp_len, DEFAULT_TTL);
    let u = &mut buf[IPV4_HEADER_LEN..IPV4_HEADER_LEN + udp_len];
    u[udp::field::SRC_PORT].copy_from_slice(&src.port().to_be_bytes());
    u[udp::field::DST_PORT].copy_from_slice(&dst.port().to_be_bytes());
    u[udp::field::LENGTH].copy_from_slice(&(udp_len as u16).to_be_bytes());
    u[udp::field::CHECKSUM].copy_from_slice(&[0, 0]);
    u[UDP_HEADER_LEN..].copy_from_slice(payload);
    let c = match checksum::l4_checksum(src.ip().octets(), dst.ip().octets(), Protocol::UDP, u) {
        0 => 0xffff, // RFC 768: a computed zero is sent as all ones (zero means "no checksum")
        c => c,
    };
    u[udp::field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    IPV4_HEADER_LEN + udp_len
}

/// The IPv4 packets the checker reads: valid (version, lengths, header checksum) and not a fragment (probes'
/// replies are small, reassembly is not worth it).
pub(crate) fn ipv4(packet: &[u8]) -> Option<Ipv4Header<&[u8]>> {
    let ip = Ipv4Header::new_checked(packet).ok()?;
    (ip.checksum_ok() && !ip.is_fragment()).then_some(ip)
}

/// Whether the TCP or UDP `segment` (checksum field included) verifies over `ip`'s pseudo-header. A UDP
/// checksum of zero means the sender computed none, which is accepted.
pub(crate) fn l4_checksum_ok(ip: &Ipv4Header<&[u8]>, segment: &[u8]) -> bool {
    let protocol = ip.protocol();
    if protocol == Protocol::Udp && UdpHeader::new_checked(segment).is_ok_and(|u| u.checksum() == 0) {
        return true;
    }
    checksum::l4_checksum(ip.src().octets(), ip.dst().octets(), protocol.number(), segment) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use xlb_stack::wire::{Ipv4Packet, TcpHeader, TcpPacket, UdpPacket};

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
                flags: TcpFlags::SYN,
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
        assert_eq!((v.src(), v.dst(), v.protocol()), (*src.ip(), *dst.ip(), Protocol::Tcp));
        assert!(l4_checksum_ok(&v, v.payload()));
        let s = TcpHeader::new_checked(v.payload()).unwrap();
        assert_eq!((s.src_port(), s.dst_port(), s.flags()), (40000, 80, TcpFlags::SYN));
        assert!(s.payload().is_empty());
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
                flags: TcpFlags::ACK | TcpFlags::PSH,
                mss: None,
                payload: b"odd",
            },
        );
        let ip = Ipv4Packet::new_checked(&buf[..len]).unwrap();
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.verify_checksum(&(*src.ip()).into(), &(*dst.ip()).into()));
        assert_eq!(t.payload(), b"odd");
        let v = ipv4(&buf[..len]).unwrap();
        assert_eq!(TcpHeader::new_checked(v.payload()).unwrap().payload(), b"odd");
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
        assert!(!l4_checksum_ok(
            &v,
            UdpHeader::new_checked(v.payload()).unwrap().datagram()
        ));
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
