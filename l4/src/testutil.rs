//! Test packets for the L4 tests, built and checked with smoltcp (a second implementation).

use std::net::SocketAddrV4;

use smoltcp::wire::{IpAddress, TcpSeqNumber};
use xlb_stack::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket, ETH_HEADER_LEN,
};

use crate::conn::Proto;

/// An Ethernet/IPv4/TCP-or-UDP frame with valid checksums.
pub fn packet(
    proto: Proto,
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let l4_len = if proto == Proto::Tcp { 20 } else { 8 } + payload.len();
    let mut buf = vec![0u8; ETH_HEADER_LEN + 20 + l4_len];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_src_addr(src_mac);
    eth.set_dst_addr(dst_mac);
    eth.set_ethertype(EthernetProtocol::Ipv4);
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[ETH_HEADER_LEN..]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_total_len((20 + l4_len) as u16);
    ip.set_hop_limit(64);
    ip.set_next_header(if proto == Proto::Tcp {
        IpProtocol::Tcp
    } else {
        IpProtocol::Udp
    });
    ip.set_src_addr(*src.ip());
    ip.set_dst_addr(*dst.ip());
    ip.fill_checksum();
    let (s, d) = (IpAddress::Ipv4(*src.ip()), IpAddress::Ipv4(*dst.ip()));
    let seg = &mut buf[ETH_HEADER_LEN + 20..];
    if proto == Proto::Tcp {
        let mut t = TcpPacket::new_unchecked(seg);
        t.set_src_port(src.port());
        t.set_dst_port(dst.port());
        t.set_header_len(20);
        t.set_seq_number(TcpSeqNumber(1000));
        t.set_ack_number(TcpSeqNumber(if flags & 0x10 != 0 { 5000 } else { 0 }));
        t.clear_flags();
        t.set_syn(flags & 0x02 != 0);
        t.set_ack(flags & 0x10 != 0);
        t.set_fin(flags & 0x01 != 0);
        t.set_rst(flags & 0x04 != 0);
        t.set_window_len(1000);
        t.payload_mut().copy_from_slice(payload);
        t.fill_checksum(&s, &d);
    } else {
        let mut u = UdpPacket::new_unchecked(seg);
        u.set_src_port(src.port());
        u.set_dst_port(dst.port());
        u.set_len(l4_len as u16);
        u.payload_mut().copy_from_slice(payload);
        u.fill_checksum(&s, &d);
    }
    buf
}

/// Addresses, ports and checksum validity of an output frame.
pub fn inspect(frame: &[u8]) -> (EthernetAddress, EthernetAddress, SocketAddrV4, SocketAddrV4, bool) {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    let (s, d) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()));
    let (sp, dp, l4_ok) = match ip.next_header() {
        IpProtocol::Tcp => {
            let t = TcpPacket::new_checked(ip.payload()).unwrap();
            (t.src_port(), t.dst_port(), t.verify_checksum(&s, &d))
        }
        _ => {
            let u = UdpPacket::new_checked(ip.payload()).unwrap();
            (u.src_port(), u.dst_port(), u.verify_checksum(&s, &d))
        }
    };
    let ok = ip.verify_checksum() && l4_ok;
    (
        eth.dst_addr(),
        eth.src_addr(),
        SocketAddrV4::new(ip.src_addr(), sp),
        SocketAddrV4::new(ip.dst_addr(), dp),
        ok,
    )
}
