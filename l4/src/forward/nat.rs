//! Address and port rewriting with incremental checksum updates (RFC 1624).
//!
//! FULLNAT rewrites both endpoints of a packet: the IPv4 header checksum covers the addresses, and the TCP/UDP
//! checksum covers them through the pseudo-header plus the ports. Only the changed words enter the update, so
//! the cost does not depend on the payload size.

use std::net::{Ipv4Addr, SocketAddrV4};

use xlb_stack::wire::checksum::{update16, update32};
use xlb_stack::wire::{tcp, udp, Ipv4Header, TcpHeader, ETH_HEADER_LEN};

use crate::conn::Proto;

/// Offset of the checksum field in the transport header.
fn l4_checksum_at(proto: Proto) -> usize {
    match proto {
        Proto::Tcp => tcp::field::CHECKSUM.start,
        Proto::Udp => udp::field::CHECKSUM.start,
    }
}

/// Source and destination of the IPv4 packet in `frame` whose transport header starts at `l4`.
#[inline(always)]
pub fn endpoints(frame: &[u8], l4: usize) -> (SocketAddrV4, SocketAddrV4) {
    packet_endpoints(&frame[ETH_HEADER_LEN..], l4 - ETH_HEADER_LEN)
}

/// Source and destination of the IPv4 `packet` (from its IP header on) whose transport header starts at `l4`.
#[inline(always)]
pub fn packet_endpoints(packet: &[u8], l4: usize) -> (SocketAddrV4, SocketAddrV4) {
    let ip = Ipv4Header::new_unchecked(packet);
    // TCP and UDP have their ports at the same offsets.
    let t = TcpHeader::new_unchecked(&packet[l4..]);
    (
        SocketAddrV4::new(ip.src(), t.src_port()),
        SocketAddrV4::new(ip.dst(), t.dst_port()),
    )
}

/// Rewrites the packet's source to `src` and destination to `dst` (addresses and ports), updating the IPv4
/// and transport checksums incrementally. A UDP datagram without checksum (0) stays without.
pub fn rewrite(frame: &mut [u8], l4: usize, proto: Proto, src: SocketAddrV4, dst: SocketAddrV4) {
    rewrite_packet(&mut frame[ETH_HEADER_LEN..], l4 - ETH_HEADER_LEN, proto, src, dst);
}

/// Sets the IPv4 `packet`'s (from its header on) source and destination addresses, updating the header
/// checksum incrementally. The transport checksum is the caller's.
pub fn set_addresses(packet: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr) {
    Ipv4Header::new_unchecked(packet).set_addresses(src, dst);
}

/// Decrements the TTL of the IPv4 packet in `frame` (after its Ethernet header) as a router does when it
/// forwards it, updating the header checksum incrementally; false (nothing changed) when the TTL is 0 or 1: the
/// packet may not be forwarded.
#[inline]
pub fn decrement_ttl(frame: &mut [u8]) -> bool {
    let mut ip = Ipv4Header::new_unchecked(&mut frame[ETH_HEADER_LEN..]);
    let ttl = ip.ttl();
    if ttl <= 1 {
        return false;
    }
    ip.set_ttl(ttl - 1);
    true
}

/// Whether the IPv4 packet in `frame` may be forwarded: its TTL is above 1 (see [`decrement_ttl`]).
#[inline]
pub fn ttl_allows_forwarding(frame: &[u8]) -> bool {
    Ipv4Header::new_unchecked(&frame[ETH_HEADER_LEN..]).ttl() > 1
}

/// [`rewrite`] on an IPv4 `packet` (from its IP header on) that may be cut short after the ports, as the copy
/// quoted in an ICMP error is: the transport checksum is updated only if `packet` still holds it.
pub fn rewrite_packet(packet: &mut [u8], l4: usize, proto: Proto, src: SocketAddrV4, dst: SocketAddrV4) {
    let (old_src, old_dst) = packet_endpoints(packet, l4);
    let (os, od, ns, nd) = (
        old_src.ip().octets(),
        old_dst.ip().octets(),
        src.ip().octets(),
        dst.ip().octets(),
    );

    set_addresses(packet, *src.ip(), *dst.ip());

    let t = &mut packet[l4..];
    t[tcp::field::SRC_PORT].copy_from_slice(&src.port().to_be_bytes());
    t[tcp::field::DST_PORT].copy_from_slice(&dst.port().to_be_bytes());
    let at = l4_checksum_at(proto);
    if t.len() < at + 2 {
        return;
    }
    let old = u16::from_be_bytes([t[at], t[at + 1]]);
    if proto == Proto::Udp && old == 0 {
        return;
    }
    let mut c = update32(update32(old, os, ns), od, nd);
    c = update16(c, old_src.port(), src.port());
    c = update16(c, old_dst.port(), dst.port());
    if proto == Proto::Udp && c == 0 {
        c = 0xffff; // 0 means "no checksum" in UDP
    }
    t[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{inspect, packet};
    use std::net::Ipv4Addr;
    use xlb_stack::wire::{EthernetAddress, Ipv4Packet};

    fn frame(proto: Proto, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
        packet(
            proto,
            EthernetAddress([2; 6]),
            EthernetAddress([4; 6]),
            src,
            dst,
            0x02,
            payload,
        )
    }

    fn valid(buf: &[u8], _proto: Proto) -> bool {
        inspect(buf).4
    }

    fn sa(a: [u8; 4], p: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(a), p)
    }

    #[test]
    fn fullnat_round_trip_keeps_checksums_valid() {
        for proto in [Proto::Tcp, Proto::Udp] {
            for (i, payload) in [&b""[..], b"x", b"hello world, odd length!", &[0xff; 1000]]
                .iter()
                .enumerate()
            {
                let client = sa([198, 18, 0, 1], 40000 + i as u16);
                let vip = sa([198, 18, 0, 100], 80);
                let lip = sa([198, 19, 0, 10], 10_000 + i as u16);
                let backend = sa([198, 19, 0, 2], 8080);
                let mut f = frame(proto, client, vip, payload);
                let l4 = ETH_HEADER_LEN + 20;
                rewrite(&mut f, l4, proto, lip, backend);
                assert!(valid(&f, proto), "{proto:?} forward, payload {i}");
                assert_eq!(endpoints(&f, l4), (lip, backend));
                // And a reply translated back.
                let mut r = frame(proto, backend, lip, payload);
                rewrite(&mut r, l4, proto, vip, client);
                assert!(valid(&r, proto), "{proto:?} reply, payload {i}");
                assert_eq!(endpoints(&r, l4), (vip, client));
                assert_eq!(&r[l4 + if proto == Proto::Tcp { 20 } else { 8 }..], *payload);
            }
        }
    }

    #[test]
    fn ttl_decrements_with_a_valid_header_checksum_and_stops_at_one() {
        for ttl in [255u8, 64, 2] {
            let mut f = frame(Proto::Udp, sa([198, 18, 0, 1], 1), sa([198, 18, 0, 100], 53), b"q");
            let ip = ETH_HEADER_LEN;
            f[ip + 8] = ttl;
            f[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
            let c = xlb_stack::wire::checksum::checksum(&f[ip..ip + 20]);
            f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
            assert!(ttl_allows_forwarding(&f));
            assert!(decrement_ttl(&mut f));
            let p = Ipv4Packet::new_checked(&f[ETH_HEADER_LEN..]).unwrap();
            assert_eq!(p.hop_limit(), ttl - 1);
            assert!(p.verify_checksum(), "TTL {ttl}");
            assert!(valid(&f, Proto::Udp));
        }
        for ttl in [0u8, 1] {
            let mut f = frame(Proto::Tcp, sa([198, 18, 0, 1], 1), sa([198, 18, 0, 100], 80), b"");
            f[ETH_HEADER_LEN + 8] = ttl;
            let before = f.clone();
            assert!(!ttl_allows_forwarding(&f));
            assert!(!decrement_ttl(&mut f));
            assert_eq!(f, before, "a packet that may not be forwarded is left as it is");
        }
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut f = frame(Proto::Udp, sa([198, 18, 0, 1], 1), sa([198, 18, 0, 100], 53), b"q");
        let l4 = ETH_HEADER_LEN + 20;
        f[l4 + 6] = 0;
        f[l4 + 7] = 0;
        rewrite(
            &mut f,
            l4,
            Proto::Udp,
            sa([198, 19, 0, 10], 10_001),
            sa([198, 19, 0, 2], 53),
        );
        assert_eq!(&f[l4 + 6..l4 + 8], &[0, 0]);
        assert!(Ipv4Packet::new_checked(&f[ETH_HEADER_LEN..]).unwrap().verify_checksum());
    }
}
