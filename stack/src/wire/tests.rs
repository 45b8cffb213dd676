//! The views and the summary against packets built with smoltcp (see [`crate::testutil`]).

use super::*;
use crate::testutil::{tcp_frame, udp_frame, CLIENT_IP, XLB_IP};
use build::{icmp_unreachable, Unreachable};

const L3: usize = ETH_HEADER_LEN;
const L4: usize = ETH_HEADER_LEN + IPV4_HEADER_LEN;

/// An ICMP port unreachable from the appliance quoting the first `quote_len` bytes of `original`'s IP packet.
fn unreachable_about(original: &[u8], quote_len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let n = icmp_unreachable(
        &mut buf,
        EthernetAddress([2; 6]),
        EthernetAddress([4; 6]),
        XLB_IP,
        CLIENT_IP,
        Unreachable::Port,
        &original[L3..L3 + quote_len],
    );
    buf.truncate(n);
    buf
}

#[test]
fn summary_of_a_tcp_segment_reads_addresses_ports_flags_and_lengths() {
    let f = tcp_frame(80, 1000, 2000, 0x12, b"hello");
    let s = PacketSummary::parse(&f).unwrap();
    assert_eq!(
        (s.src, s.dst, s.protocol, s.ttl),
        (CLIENT_IP, XLB_IP, Protocol::Tcp, 61)
    );
    assert_eq!((s.l4, s.len, s.l4_len()), (L4, f.len(), TCP_HEADER_LEN + 5));
    assert_eq!(s.ports, Some(Ports { src: 40000, dst: 80 }));
    let flags = s.tcp_flags().unwrap();
    assert!(flags.syn() && flags.ack() && !flags.fin() && !flags.rst());
    assert_eq!(flags, TcpFlags::SYN_ACK);
    assert_eq!(s.tcp_payload_len(), Some(5));
    assert_eq!(s.service, None);
    let (src, dst) = s.endpoints().unwrap();
    assert_eq!((src.port(), dst.port()), (40000, 80));
}

#[test]
fn summary_of_udp_and_icmp_has_no_tcp_part() {
    let f = udp_frame(53, b"q");
    let s = PacketSummary::parse(&f).unwrap();
    assert_eq!(s.protocol, Protocol::Udp);
    assert_eq!(s.ports, Some(Ports { src: 40001, dst: 53 }));
    assert_eq!((s.tcp, s.tcp_payload_len()), (None, None));
    let e = unreachable_about(&f, 28);
    let s = PacketSummary::parse(&e).unwrap();
    assert_eq!((s.protocol, s.ports, s.tcp), (Protocol::Icmp, None, None));
}

#[test]
fn summary_of_a_cut_frame_keeps_only_what_is_there() {
    let f = tcp_frame(80, 1, 2, 0x10, b"");
    for len in 0..f.len() {
        match PacketSummary::parse(&f[..len]) {
            Err(_) => assert!(len < L4, "{len} bytes hold the IPv4 header"),
            Ok(s) => {
                assert!(len >= L4);
                assert_eq!(s.ports.is_some(), len >= L4 + 4, "{len}");
                assert_eq!(s.tcp.is_some(), len >= L4 + TCP_HEADER_LEN, "{len}");
            }
        }
    }
    // A data offset beyond the segment: flags are known, the payload length is not.
    let mut bad = f.clone();
    bad[L4 + tcp::field::DATA_OFFSET] = 0xf0;
    let s = PacketSummary::parse(&bad).unwrap();
    assert_eq!((s.tcp_flags(), s.tcp_payload_len()), (Some(TcpFlags::ACK), None));
    let mut bad_ip = f;
    bad_ip[L3] = 0x44; // header length 16
    assert_eq!(PacketSummary::parse(&bad_ip), Err(WireError::Malformed));
}

#[test]
fn protocol_numbers_round_trip() {
    for n in 0..=255u8 {
        assert_eq!(Protocol::from_number(n).number(), n);
    }
    assert_eq!(Protocol::from(6), Protocol::Tcp);
    assert_eq!(Protocol::from(17), Protocol::Udp);
    assert_eq!(Protocol::from(1), Protocol::Icmp);
    assert_eq!(Protocol::from(47), Protocol::Other(47));
}

#[test]
fn tcp_view_reads_fields_and_every_truncation_is_an_error() {
    let f = tcp_frame(443, 0xdead_beef, 0x0102_0304, 0x11, b"data");
    let seg = &f[L4..];
    let t = TcpHeader::new_checked(seg).unwrap();
    assert_eq!((t.src_port(), t.dst_port()), (40000, 443));
    assert_eq!((t.seq(), t.ack_number()), (0xdead_beef, 0x0102_0304));
    assert_eq!((t.header_len(), t.payload()), (20, &b"data"[..]));
    assert_eq!(t.flags(), TcpFlags::FIN | TcpFlags::ACK);
    assert!(t.options().is_empty());
    for len in 0..TCP_HEADER_LEN {
        assert_eq!(
            TcpHeader::new_checked(&seg[..len]).unwrap_err(),
            WireError::Truncated,
            "{len}"
        );
    }
    let mut bad = seg.to_vec();
    bad[tcp::field::DATA_OFFSET] = 0x40; // 16 bytes
    assert_eq!(TcpHeader::new_checked(&bad[..]).unwrap_err(), WireError::Malformed);
    bad[tcp::field::DATA_OFFSET] = 0x80; // 32 bytes, more than the segment
    assert_eq!(TcpHeader::new_checked(&bad[..]).unwrap_err(), WireError::Truncated);
}

#[test]
fn udp_view_reads_fields_and_every_truncation_is_an_error() {
    let f = udp_frame(53, b"query");
    let d = &f[L4..];
    let u = UdpHeader::new_checked(d).unwrap();
    assert_eq!((u.src_port(), u.dst_port(), u.len()), (40001, 53, 13));
    assert_eq!(u.payload(), b"query");
    assert_ne!(u.checksum(), 0);
    assert_eq!(
        checksum::l4_checksum(CLIENT_IP.octets(), XLB_IP.octets(), 17, u.datagram()),
        0
    );
    for len in 0..d.len() {
        assert!(UdpHeader::new_checked(&d[..len]).is_err(), "{len}");
    }
    let mut bad = d.to_vec();
    bad[udp::field::LENGTH.start..udp::field::LENGTH.end].copy_from_slice(&7u16.to_be_bytes());
    assert_eq!(UdpHeader::new_checked(&bad[..]).unwrap_err(), WireError::Malformed);
}

#[test]
fn ipv4_view_reads_fields_and_every_truncation_is_an_error() {
    let f = udp_frame(53, b"x");
    let p = &f[L3..];
    let ip = Ipv4Header::new_checked(p).unwrap();
    assert_eq!(
        (ip.src(), ip.dst(), ip.protocol(), ip.ttl()),
        (CLIENT_IP, XLB_IP, Protocol::Udp, 61)
    );
    assert_eq!((ip.header_len(), ip.total_len(), ip.payload().len()), (20, 29, 9));
    assert!(ip.checksum_ok() && !ip.is_fragment() && !ip.is_later_fragment());
    for len in 0..p.len() {
        assert!(Ipv4Header::new_checked(&p[..len]).is_err(), "{len}");
    }
    let mut padded = p.to_vec();
    padded.extend_from_slice(&[0; 6]);
    assert_eq!(Ipv4Header::new_checked(&padded[..]).unwrap().payload().len(), 9);
}

#[test]
fn ipv4_setters_keep_the_checksum_valid() {
    let mut f = tcp_frame(80, 1, 2, 0x10, b"");
    let mut ip = Ipv4Header::new_checked(&mut f[L3..]).unwrap();
    ip.set_addresses(Ipv4Addr::new(198, 19, 0, 1), Ipv4Addr::new(198, 19, 0, 2));
    ip.set_ttl(7);
    assert!(ip.checksum_ok());
    assert_eq!(
        (ip.src(), ip.dst(), ip.ttl()),
        ("198.19.0.1".parse().unwrap(), "198.19.0.2".parse().unwrap(), 7)
    );
    assert!(Ipv4Packet::new_checked(&f[L3..]).unwrap().verify_checksum());
}

#[test]
fn icmp_quote_reads_the_quoted_packet_and_every_truncation_is_an_error() {
    let original = tcp_frame(80, 0x0a0b_0c0d, 0, 0x02, b"");
    let e = unreachable_about(&original, 28);
    let msg = &e[L4..];
    let m = IcmpMessage::new_checked(msg).unwrap();
    assert_eq!((m.msg_type(), m.code()), (icmp::kind::DEST_UNREACHABLE, 3));
    assert!(m.is_error() && m.checksum_ok());
    let q = m.quote().unwrap();
    assert_eq!(
        (q.ip().src(), q.ip().dst(), q.ip().protocol()),
        (CLIENT_IP, XLB_IP, Protocol::Tcp)
    );
    assert_eq!(q.ports(), (40000, 80));
    assert_eq!(q.tcp_seq(), Some(0x0a0b_0c0d));
    for len in 0..msg.len() {
        let cut = IcmpMessage::new_checked(&msg[..len]);
        let quoted = cut.and_then(|m| m.quote().map(|q| q.ports()));
        assert_eq!(
            quoted.is_ok(),
            len >= icmp::ICMP_HEADER_LEN + IPV4_HEADER_LEN + 4,
            "{len}"
        );
    }
    // Only the ports quoted: no sequence number.
    let e = unreachable_about(&original, 24);
    let short = IcmpMessage::new_checked(&e[L4..]).unwrap();
    assert_eq!(short.quote().unwrap().tcp_seq(), None);
}

#[test]
fn an_echo_request_quotes_nothing() {
    let f = crate::testutil::echo_request_frame(XLB_IP, 1, 2, b"ping");
    let m = IcmpMessage::new_checked(&f[L4..]).unwrap();
    assert_eq!(m.msg_type(), icmp::kind::ECHO_REQUEST);
    assert!(!m.is_error() && m.checksum_ok());
    assert!(m.quote().is_err());
}

#[test]
fn tcp_flag_names_are_the_header_bits() {
    assert_eq!(TcpFlags::FIN.bits(), 0x01);
    assert_eq!(TcpFlags::SYN.bits(), 0x02);
    assert_eq!(TcpFlags::RST.bits(), 0x04);
    assert_eq!(TcpFlags::PSH.bits(), 0x08);
    assert_eq!(TcpFlags::ACK.bits(), 0x10);
    let f = TcpFlags(0x14);
    assert!(f.rst() && f.ack() && !f.syn() && !f.fin());
    assert!(f.contains(TcpFlags::RST) && !f.contains(TcpFlags::SYN_ACK));
}
