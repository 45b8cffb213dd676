//! The frames HA sends through the datapath, and the parsing of the sync datagrams it receives there.
//!
//! VRRP adverts ([`crate::vrrp::VrrpRouter::poll_transmit`] builds the IPv4 packet) and multicast sync datagrams
//! go out as complete Ethernet frames to the group's multicast MAC; unicast sync datagrams (acknowledgements,
//! configured peers) go out as IPv4 packets the stack routes and resolves; takeovers announce each address with
//! a gratuitous ARP.

use std::net::{Ipv4Addr, SocketAddrV4};

use xlb_stack::wire::build::{self, ETHERTYPE_IPV4};
use xlb_stack::wire::{checksum, udp, Ipv4Header, Protocol, UdpHeader};
use xlb_stack::wire::{EthernetAddress, ETH_HEADER_LEN, IPV4_HEADER_LEN, UDP_HEADER_LEN};

/// TTL of multicast sync datagrams: the group is link-local, as IPVS's sync daemon's default.
pub const SYNC_MULTICAST_TTL: u8 = 1;

/// The Ethernet address of an IPv4 multicast group (RFC 1112: 01:00:5e and the group's low 23 bits).
pub fn multicast_mac(group: Ipv4Addr) -> EthernetAddress {
    let o = group.octets();
    EthernetAddress([0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]])
}

/// An Ethernet frame from `mac` carrying the multicast IPv4 `packet` (to its destination group's MAC).
pub fn multicast_frame(mac: EthernetAddress, packet: &[u8]) -> Vec<u8> {
    let group = Ipv4Header::new_unchecked(packet).dst();
    let mut frame = vec![0u8; ETH_HEADER_LEN + packet.len()];
    build::ethernet(&mut frame, multicast_mac(group), mac, ETHERTYPE_IPV4);
    frame[ETH_HEADER_LEN..].copy_from_slice(packet);
    frame
}

/// An IPv4/UDP packet `src` → `dst` with `payload` and a complete UDP checksum.
pub fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let udp_len = UDP_HEADER_LEN + payload.len();
    let mut p = vec![0u8; IPV4_HEADER_LEN + udp_len];
    build::ipv4_header(&mut p, *src.ip(), *dst.ip(), Protocol::UDP, udp_len, ttl);
    let u = &mut p[IPV4_HEADER_LEN..];
    u[udp::field::SRC_PORT].copy_from_slice(&src.port().to_be_bytes());
    u[udp::field::DST_PORT].copy_from_slice(&dst.port().to_be_bytes());
    u[udp::field::LENGTH].copy_from_slice(&(udp_len as u16).to_be_bytes());
    u[UDP_HEADER_LEN..].copy_from_slice(payload);
    let mut c = checksum::l4_checksum(src.ip().octets(), dst.ip().octets(), Protocol::UDP, u);
    if c == 0 {
        c = 0xffff;
    }
    u[udp::field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    p
}

/// A gratuitous ARP from `mac` announcing `ip` (a broadcast request for its own address, as keepalived sends).
pub fn garp_frame(mac: EthernetAddress, ip: Ipv4Addr) -> Vec<u8> {
    let mut frame = vec![0u8; 64];
    let n = build::arp(
        &mut frame,
        EthernetAddress::BROADCAST,
        1,
        (mac, ip),
        (EthernetAddress([0; 6]), ip),
    );
    frame.truncate(n.max(60));
    frame
}

/// The source and payload of the UDP datagram in the IPv4 `packet` (validated by the stack up to the IPv4
/// header), if its UDP header and length are consistent.
pub fn udp_payload(packet: &[u8]) -> Option<(SocketAddrV4, &[u8])> {
    let ip = Ipv4Header::header_checked(packet).ok()?;
    let total = ip.total_len().min(packet.len());
    let udp = UdpHeader::new_checked(packet.get(ip.header_len()..total)?).ok()?;
    let (src, end) = (SocketAddrV4::new(ip.src(), udp.src_port()), udp.len());
    Some((src, &udp.into_inner()[UDP_HEADER_LEN..end]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xlb_stack::wire::{ArpPacket, EthernetFrame, Ipv4Packet, UdpPacket};

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);

    #[test]
    fn multicast_macs_follow_rfc_1112() {
        assert_eq!(multicast_mac(Ipv4Addr::new(224, 0, 0, 18)).0, [1, 0, 0x5e, 0, 0, 18]);
        assert_eq!(multicast_mac(Ipv4Addr::new(239, 129, 2, 3)).0, [1, 0, 0x5e, 1, 2, 3]);
    }

    #[test]
    fn sync_datagram_round_trip_verifies_with_smoltcp() {
        let (src, dst) = ("198.18.0.10:8848".parse().unwrap(), "224.0.0.81:8848".parse().unwrap());
        let packet = udp_packet(src, dst, SYNC_MULTICAST_TTL, b"XLBS sync payload");
        let frame = multicast_frame(MAC, &packet);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.dst_addr().0, [1, 0, 0x5e, 0, 0, 81]);
        assert_eq!(eth.src_addr(), MAC);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.hop_limit(), 1);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
        assert_eq!(udp_payload(&packet), Some((src, &b"XLBS sync payload"[..])));
    }

    #[test]
    fn inconsistent_udp_headers_are_refused() {
        let src = "198.18.0.10:8848".parse().unwrap();
        let packet = udp_packet(src, "198.18.0.11:8848".parse().unwrap(), 64, b"abc");
        for n in 0..packet.len() {
            // Cut short (the IPv4 total length then lies): refused or parsed within bounds, never a panic.
            if let Some((_, payload)) = udp_payload(&packet[..n]) {
                assert!(payload.len() <= n);
            }
        }
        let mut bad = packet.clone();
        bad[IPV4_HEADER_LEN + 4..IPV4_HEADER_LEN + 6].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(udp_payload(&bad), None, "UDP length beyond the packet");
    }

    #[test]
    fn gratuitous_arp_announces_the_address() {
        let ip = Ipv4Addr::new(198, 18, 0, 100);
        let frame = garp_frame(MAC, ip);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress::BROADCAST);
        let arp = ArpPacket::new_checked(eth.payload()).unwrap();
        assert_eq!(arp.source_protocol_addr(), ip.octets());
        assert_eq!(arp.target_protocol_addr(), ip.octets());
        assert_eq!(arp.source_hardware_addr(), MAC.0);
    }
}
