//! Test packets built with smoltcp's setters, independently of xlb's own builders, so a test compares xlb's
//! output with a second implementation rather than with itself.

use smoltcp::wire::IpAddress;

use crate::wire::*;

/// The appliance's MAC in tests.
pub const XLB_MAC: EthernetAddress = EthernetAddress([0x02, 0x00, 0x00, 0x00, 0x00, 0x10]);
/// A client's MAC in tests.
pub const CLIENT_MAC: EthernetAddress = EthernetAddress([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);
/// A client's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The appliance's address.
pub const XLB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

/// An Ethernet frame around an IPv4 packet carrying `l4` (whose checksum the caller filled or not).
pub fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr, protocol: IpProtocol, l4: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; ETH_HEADER_LEN + IPV4_HEADER_LEN + l4.len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_src_addr(CLIENT_MAC);
    eth.set_dst_addr(XLB_MAC);
    eth.set_ethertype(EthernetProtocol::Ipv4);
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[ETH_HEADER_LEN..]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_total_len((IPV4_HEADER_LEN + l4.len()) as u16);
    ip.set_ident(0x1234);
    ip.clear_flags();
    ip.set_dont_frag(true);
    ip.set_hop_limit(61);
    ip.set_next_header(protocol);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.fill_checksum();
    buf[ETH_HEADER_LEN + IPV4_HEADER_LEN..].copy_from_slice(l4);
    buf
}

/// A TCP segment from client to appliance with `flags` (SYN=0x02, ACK=0x10 …) and `payload`.
pub fn tcp_frame(dst_port: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut seg = vec![0u8; TCP_HEADER_LEN + payload.len()];
    let mut t = TcpPacket::new_unchecked(&mut seg[..]);
    t.set_src_port(40000);
    t.set_dst_port(dst_port);
    t.set_seq_number(smoltcp::wire::TcpSeqNumber(seq as i32));
    t.set_ack_number(smoltcp::wire::TcpSeqNumber(ack as i32));
    t.set_header_len(20);
    t.clear_flags();
    t.set_syn(flags & 0x02 != 0);
    t.set_ack(flags & 0x10 != 0);
    t.set_fin(flags & 0x01 != 0);
    t.set_rst(flags & 0x04 != 0);
    t.set_window_len(64240);
    t.payload_mut().copy_from_slice(payload);
    t.fill_checksum(&IpAddress::Ipv4(CLIENT_IP), &IpAddress::Ipv4(XLB_IP));
    ipv4_frame(CLIENT_IP, XLB_IP, IpProtocol::Tcp, &seg)
}

/// A UDP datagram from client to appliance.
pub fn udp_frame(dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut dgram = vec![0u8; UDP_HEADER_LEN + payload.len()];
    let mut u = UdpPacket::new_unchecked(&mut dgram[..]);
    u.set_src_port(40001);
    u.set_dst_port(dst_port);
    u.set_len((UDP_HEADER_LEN + payload.len()) as u16);
    u.payload_mut().copy_from_slice(payload);
    u.fill_checksum(&IpAddress::Ipv4(CLIENT_IP), &IpAddress::Ipv4(XLB_IP));
    ipv4_frame(CLIENT_IP, XLB_IP, IpProtocol::Udp, &dgram)
}

/// An ICMP echo request from client to `dst`.
pub fn echo_request_frame(dst: Ipv4Addr, ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut msg = vec![0u8; 8 + data.len()];
    let mut p = Icmpv4Packet::new_unchecked(&mut msg[..]);
    p.set_msg_type(Icmpv4Message::EchoRequest);
    p.set_msg_code(0);
    p.set_echo_ident(ident);
    p.set_echo_seq_no(seq);
    p.data_mut().copy_from_slice(data);
    p.fill_checksum();
    ipv4_frame(CLIENT_IP, dst, IpProtocol::Icmp, &msg)
}

/// A broadcast ARP request from the client for `target`.
pub fn arp_request_frame(target: Ipv4Addr) -> Vec<u8> {
    arp_frame(ArpOperation::Request, (CLIENT_MAC, CLIENT_IP), target)
}

/// An ARP packet `op` from `sender` (MAC, address) about `target` (broadcast for requests, else to the
/// appliance's MAC).
pub fn arp_frame(op: ArpOperation, sender: (EthernetAddress, Ipv4Addr), target: Ipv4Addr) -> Vec<u8> {
    let mut buf = vec![0u8; ETH_HEADER_LEN + ARP_LEN];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_src_addr(sender.0);
    eth.set_dst_addr(if op == ArpOperation::Request {
        EthernetAddress::BROADCAST
    } else {
        XLB_MAC
    });
    eth.set_ethertype(EthernetProtocol::Arp);
    let mut a = ArpPacket::new_unchecked(&mut buf[ETH_HEADER_LEN..]);
    a.set_hardware_type(ArpHardware::Ethernet);
    a.set_protocol_type(EthernetProtocol::Ipv4);
    a.set_hardware_len(6);
    a.set_protocol_len(4);
    a.set_operation(op);
    a.set_source_hardware_addr(&sender.0 .0);
    a.set_source_protocol_addr(&sender.1.octets());
    a.set_target_hardware_addr(&[0; 6]);
    a.set_target_protocol_addr(&target.octets());
    buf
}

/// Whether the IPv4 packet in `frame` has valid IP and L4 checksums (checked by smoltcp).
pub fn checksums_valid(frame: &[u8]) -> bool {
    let ip = Ipv4Packet::new_checked(&frame[ETH_HEADER_LEN..]).expect("IPv4");
    if !ip.verify_checksum() {
        return false;
    }
    let (src, dst) = (IpAddress::Ipv4(ip.src_addr()), IpAddress::Ipv4(ip.dst_addr()));
    match ip.next_header() {
        IpProtocol::Tcp => TcpPacket::new_checked(ip.payload())
            .unwrap()
            .verify_checksum(&src, &dst),
        IpProtocol::Udp => UdpPacket::new_checked(ip.payload())
            .unwrap()
            .verify_checksum(&src, &dst),
        IpProtocol::Icmp => Icmpv4Packet::new_checked(ip.payload()).unwrap().verify_checksum(),
        _ => true,
    }
}
