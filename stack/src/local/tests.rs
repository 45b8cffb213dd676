use super::*;
use crate::counters::StackCounters;
use crate::neighbour::NeighbourSync;
use crate::testutil::*;
use crate::wire::{
    checksum, ArpOperation, ArpPacket, EthernetFrame, Icmpv4Message, Icmpv4Packet, Ipv4Packet, TcpPacket,
};
use std::time::Duration;

fn stack() -> LocalStack {
    stack_with_rate(DEFAULT_ICMP_RATE)
}

fn stack_with_rate(icmp_rate: u32) -> LocalStack {
    LocalStack::new(LocalConfig {
        links: vec![
            Link {
                mac: XLB_MAC,
                addresses: vec!["198.18.0.10/24".parse().unwrap()],
                gateway: None,
            },
            Link {
                mac: EthernetAddress([0x02, 0, 0, 0, 1, 0x10]),
                addresses: vec!["198.19.0.10/24".parse().unwrap()],
                gateway: Some(Ipv4Addr::new(198, 19, 0, 1)),
            },
        ],
        neighbours: NeighbourConfig::default(),
        icmp_rate,
    })
}

/// Runs `packet` through the stack on port 0, returning the verdict and the (possibly rewritten) frame.
fn run(stack: &mut LocalStack, packet: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; 2048];
    buf[..packet.len()].copy_from_slice(packet);
    let mut frame = Frame::new(&mut buf, packet.len());
    let verdict = stack.process(Instant::now(), 0, &mut frame);
    let len = frame.len();
    (verdict, buf[..len].to_vec())
}

#[test]
fn answers_arp_for_its_address() {
    let mut s = stack();
    let (v, out) = run(&mut s, &arp_request_frame(XLB_IP));
    assert_eq!(v, Verdict::Transmit(0));
    let eth = EthernetFrame::new_checked(&out[..]).unwrap();
    assert_eq!(eth.dst_addr(), CLIENT_MAC);
    assert_eq!(eth.src_addr(), XLB_MAC);
    let arp = ArpPacket::new_checked(eth.payload()).unwrap();
    assert_eq!(arp.operation(), ArpOperation::Reply);
    assert_eq!(arp.source_hardware_addr(), &XLB_MAC.0);
    assert_eq!(arp.source_protocol_addr(), &XLB_IP.octets());
    assert_eq!(arp.target_hardware_addr(), &CLIENT_MAC.0);
    assert_eq!(arp.target_protocol_addr(), &CLIENT_IP.octets());
    assert_eq!(s.counters().arp_replies, 1);
    // The requester is not learned (ARP never creates neighbour entries: see the neighbour module), and that is
    // no refusal either.
    assert!(s.neighbours().is_empty());
    assert_eq!(s.counters().drops, StackCounters::default().drops);
}

const INT_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 1, 0x10]);
const INT_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
const BACKEND_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 2, 2]);
const FORGED_MAC: EthernetAddress = EthernetAddress([0x02, 0x66, 0x66, 0, 0, 1]);

/// Runs `packet` through the stack on `port` at `now`, returning the verdict.
/// One worker turn with a batch of one frame: processes `packet`, then delivers what it queued for other workers.
fn run_on(stack: &mut LocalStack, now: Instant, port: PortId, packet: &[u8]) -> Verdict {
    let mut buf = vec![0u8; 2048];
    buf[..packet.len()].copy_from_slice(packet);
    let mut frame = Frame::new(&mut buf, packet.len());
    let verdict = stack.process(now, port, &mut frame);
    stack.flush_events();
    verdict
}

/// A stack that resolved BACKEND_IP on port 1 (its request answered by the backend).
fn stack_with_backend(now: Instant) -> LocalStack {
    let mut s = stack();
    assert_eq!(
        s.neighbours().resolve(now, 1, INT_IP, BACKEND_IP),
        crate::neighbour::Resolution::Pending
    );
    let mut buf = vec![0u8; 2048];
    let (port, _) = s.poll_transmit(now, &mut buf).expect("an ARP request");
    assert_eq!(port, 1);
    let reply = arp_frame(ArpOperation::Reply, (BACKEND_MAC, BACKEND_IP), INT_IP);
    let mut reply_to_int = reply.clone();
    reply_to_int[0..6].copy_from_slice(&INT_MAC.0);
    assert_eq!(run_on(&mut s, now, 1, &reply_to_int), Verdict::Consumed);
    assert_eq!(s.neighbours().lookup(1, BACKEND_IP), Some(BACKEND_MAC));
    s
}

#[test]
fn forged_arp_on_the_client_link_does_not_move_a_backend() {
    let now = Instant::now();
    let mut s = stack_with_backend(now);
    // A request for our client-side address, "from" the backend's address, on the client link: answered (only
    // the asker gets the answer) but not learned.
    let forged = arp_frame(ArpOperation::Request, (FORGED_MAC, BACKEND_IP), XLB_IP);
    assert_eq!(run_on(&mut s, now, 0, &forged), Verdict::Transmit(0));
    // The same as a reply (gratuitous or unsolicited): dropped.
    let forged = arp_frame(ArpOperation::Reply, (FORGED_MAC, BACKEND_IP), XLB_IP);
    assert_eq!(
        run_on(&mut s, now + Duration::from_secs(5), 0, &forged),
        Verdict::Drop(DropReason::ArpWrongLink)
    );
    assert_eq!(s.counters().drops_of(DropReason::ArpWrongLink), 2);
    assert_eq!(s.neighbours().lookup(1, BACKEND_IP), Some(BACKEND_MAC));
    assert_eq!(s.neighbours().lookup(0, BACKEND_IP), None);
    assert_eq!(
        s.neighbours().resolve(now, 1, INT_IP, BACKEND_IP),
        crate::neighbour::Resolution::Ready(BACKEND_MAC)
    );
}

#[test]
fn arp_from_outside_the_links_subnets_is_not_learned() {
    let now = Instant::now();
    let mut s = stack();
    let stranger = Ipv4Addr::new(198, 18, 200, 1);
    let req = arp_frame(ArpOperation::Request, (FORGED_MAC, stranger), XLB_IP);
    assert_eq!(run_on(&mut s, now, 0, &req), Verdict::Transmit(0));
    let reply = arp_frame(ArpOperation::Reply, (FORGED_MAC, stranger), XLB_IP);
    assert_eq!(
        run_on(&mut s, now, 0, &reply),
        Verdict::Drop(DropReason::ArpNotInSubnet)
    );
    assert_eq!(s.counters().drops_of(DropReason::ArpNotInSubnet), 2);
    assert!(s.neighbours().is_empty());
}

#[test]
fn unsolicited_arp_replies_create_nothing_and_are_counted() {
    let now = Instant::now();
    let mut s = stack();
    let host = Ipv4Addr::new(198, 18, 0, 77);
    let reply = arp_frame(ArpOperation::Reply, (FORGED_MAC, host), XLB_IP);
    assert_eq!(
        run_on(&mut s, now, 0, &reply),
        Verdict::Drop(DropReason::ArpUnsolicited)
    );
    assert_eq!(s.counters().drops_of(DropReason::ArpUnsolicited), 1);
    assert!(s.neighbours().is_empty());
}

#[test]
fn same_link_mac_change_is_locked_then_allowed() {
    let now = Instant::now();
    let mut s = stack_with_backend(now);
    let mut moved = arp_frame(ArpOperation::Reply, (FORGED_MAC, BACKEND_IP), INT_IP);
    moved[0..6].copy_from_slice(&INT_MAC.0);
    assert_eq!(run_on(&mut s, now, 1, &moved), Verdict::Drop(DropReason::ArpLocked));
    assert_eq!(s.neighbours().lookup(1, BACKEND_IP), Some(BACKEND_MAC));
    // After locktime the backend's own link may move it (a failover behind one address).
    assert_eq!(
        run_on(&mut s, now + Duration::from_secs(2), 1, &moved),
        Verdict::Consumed
    );
    assert_eq!(s.neighbours().lookup(1, BACKEND_IP), Some(FORGED_MAC));
}

#[test]
fn an_arp_flood_neither_fills_the_table_nor_delays_a_new_backend() {
    let now = Instant::now();
    let mut s = stack();
    for i in 0..5000u32 {
        let sender = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 1 + i % 250);
        let mac = EthernetAddress([0x02, 0x66, (i >> 16) as u8, (i >> 8) as u8, i as u8, 1]);
        let op = if i % 2 == 0 {
            ArpOperation::Request
        } else {
            ArpOperation::Reply
        };
        run_on(&mut s, now, 0, &arp_frame(op, (mac, sender), XLB_IP));
        let stranger = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 100, 0)) + i);
        run_on(&mut s, now, 0, &arp_frame(op, (mac, stranger), XLB_IP));
    }
    assert!(s.neighbours().is_empty(), "ARP created no entry");
    assert_eq!(s.counters().drops_of(DropReason::ArpUnsolicited), 2500);
    assert_eq!(s.counters().drops_of(DropReason::ArpNotInSubnet), 5000);
    // A new backend is resolved at once.
    assert_eq!(
        s.neighbours().resolve(now, 1, INT_IP, BACKEND_IP),
        crate::neighbour::Resolution::Pending
    );
    let mut buf = vec![0u8; 2048];
    let (port, len) = s.poll_transmit(now, &mut buf).expect("an ARP request");
    let arp = ArpPacket::new_checked(&buf[ETH_HEADER_LEN..len]).unwrap();
    assert_eq!((port, arp.target_protocol_addr()), (1, &BACKEND_IP.octets()[..]));
}

#[test]
fn ignores_arp_for_other_addresses_and_other_links() {
    let mut s = stack();
    let (v, _) = run(&mut s, &arp_request_frame(Ipv4Addr::new(198, 18, 0, 2)));
    assert_eq!(v, Verdict::Drop(DropReason::ArpNotForUs));
    // 198.19.0.10 is ours, but on port 1: port 0 must not answer for it.
    let (v, _) = run(&mut s, &arp_request_frame(Ipv4Addr::new(198, 19, 0, 10)));
    assert_eq!(v, Verdict::Drop(DropReason::ArpNotForUs));
    assert_eq!(s.counters().drops_of(DropReason::ArpNotForUs), 2);
    assert_eq!(s.counters().arp_replies, 0);
}

#[test]
fn answers_ping_in_place_with_valid_checksums() {
    let mut s = stack();
    let data = b"xlb ping payload 0123456789";
    let (v, out) = run(&mut s, &echo_request_frame(XLB_IP, 0xbeef, 7, data));
    assert_eq!(v, Verdict::Transmit(0));
    assert!(checksums_valid(&out));
    let eth = EthernetFrame::new_checked(&out[..]).unwrap();
    assert_eq!((eth.dst_addr(), eth.src_addr()), (CLIENT_MAC, XLB_MAC));
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (XLB_IP, CLIENT_IP));
    assert_eq!(ip.hop_limit(), 64);
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(icmp.msg_type(), Icmpv4Message::EchoReply);
    assert_eq!((icmp.echo_ident(), icmp.echo_seq_no()), (0xbeef, 7));
    assert_eq!(icmp.data(), data);
    assert_eq!(s.counters().icmp_echo_replies, 1);
}

#[test]
fn resets_syn_to_unserved_port() {
    let mut s = stack();
    let (v, out) = run(&mut s, &tcp_frame(22, 1000, 0, 0x02, b""));
    assert_eq!(v, Verdict::Transmit(0));
    assert!(checksums_valid(&out));
    let ip = Ipv4Packet::new_checked(&out[ETH_HEADER_LEN..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (XLB_IP, CLIENT_IP));
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(tcp.rst() && tcp.ack() && !tcp.syn());
    assert_eq!((tcp.src_port(), tcp.dst_port()), (22, 40000));
    assert_eq!(tcp.seq_number().0, 0);
    assert_eq!(tcp.ack_number().0, 1001, "ack covers the SYN");
    assert_eq!(s.counters().drops_of(DropReason::TcpNoListener), 1);
    assert_eq!(s.counters().tcp_resets, 1);
}

#[test]
fn resets_data_segment_with_its_ack_number() {
    let mut s = stack();
    let (v, out) = run(&mut s, &tcp_frame(80, 5000, 777, 0x10, b"hello"));
    assert_eq!(v, Verdict::Transmit(0));
    let tcp = TcpPacket::new_checked(&out[ETH_HEADER_LEN + 20..]).unwrap();
    assert!(tcp.rst() && !tcp.ack());
    assert_eq!(tcp.seq_number().0, 777);
}

#[test]
fn never_answers_a_reset() {
    let mut s = stack();
    let (v, _) = run(&mut s, &tcp_frame(80, 5000, 0, 0x04, b""));
    assert_eq!(v, Verdict::Consumed);
    assert_eq!(s.counters().tcp_resets, 0);
}

#[test]
fn udp_to_unserved_port_gets_port_unreachable_quoting_the_datagram() {
    let mut s = stack();
    let request = udp_frame(53, b"query");
    let (v, out) = run(&mut s, &request);
    assert_eq!(v, Verdict::Transmit(0));
    assert!(checksums_valid(&out));
    let ip = Ipv4Packet::new_checked(&out[ETH_HEADER_LEN..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (XLB_IP, CLIENT_IP));
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(icmp.msg_type(), Icmpv4Message::DstUnreachable);
    assert_eq!(icmp.msg_code(), 3);
    assert_eq!(&ip.payload()[8..], &request[ETH_HEADER_LEN..ETH_HEADER_LEN + 28]);
    assert_eq!(s.counters().icmp_unreachables, 1);
}

#[test]
fn rate_limits_resets() {
    let mut s = stack_with_rate(100); // burst of 10
    let now = Instant::now();
    let mut sent = 0;
    for i in 0..50 {
        let p = tcp_frame(22, i, 0, 0x02, b"");
        let mut buf = vec![0u8; 2048];
        buf[..p.len()].copy_from_slice(&p);
        let mut f = Frame::new(&mut buf, p.len());
        if s.process(now, 0, &mut f) == Verdict::Transmit(0) {
            sent += 1;
        }
    }
    assert_eq!(sent, 10);
    assert_eq!(s.counters().drops_of(DropReason::IcmpRateLimited), 40);
    // A second later the bucket has refilled.
    let p = tcp_frame(22, 99, 0, 0x02, b"");
    let mut buf = vec![0u8; 2048];
    buf[..p.len()].copy_from_slice(&p);
    let mut f = Frame::new(&mut buf, p.len());
    assert_eq!(
        s.process(now + std::time::Duration::from_secs(1), 0, &mut f),
        Verdict::Transmit(0)
    );
}

#[test]
fn drops_with_reasons() {
    let mut s = stack();
    let mut bad_csum = echo_request_frame(XLB_IP, 1, 1, b"x");
    bad_csum[ETH_HEADER_LEN + 10] ^= 0xff;
    assert_eq!(run(&mut s, &bad_csum).0, Verdict::Drop(DropReason::BadIpv4Checksum));

    let not_ours = echo_request_frame(Ipv4Addr::new(198, 18, 0, 99), 1, 1, b"x");
    assert_eq!(run(&mut s, &not_ours).0, Verdict::Drop(DropReason::NotOurAddress));

    let mut other_mac = echo_request_frame(XLB_IP, 1, 1, b"x");
    other_mac[0..6].copy_from_slice(&[0x02, 9, 9, 9, 9, 9]);
    assert_eq!(run(&mut s, &other_mac).0, Verdict::Drop(DropReason::NotOurMac));

    let mut fragment = udp_frame(53, b"abc");
    let ip = &mut fragment[ETH_HEADER_LEN..];
    ip[6] = 0x20; // more fragments
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    // A middle piece whose length is not a multiple of 8 cannot be part of a datagram (see `frag` for the rest).
    assert_eq!(run(&mut s, &fragment).0, Verdict::Drop(DropReason::FragmentInvalid));

    let mut ipv6 = udp_frame(53, b"abc");
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(run(&mut s, &ipv6).0, Verdict::Drop(DropReason::UnsupportedEthertype));

    let mut bad_tcp = tcp_frame(80, 1, 0, 0x02, b"");
    let last = bad_tcp.len() - 1;
    bad_tcp[last] ^= 0x55;
    assert_eq!(run(&mut s, &bad_tcp).0, Verdict::Drop(DropReason::BadL4Checksum));
    assert_eq!(s.counters().tcp_resets, 0);

    let total: u64 = s.counters().drops.iter().sum();
    assert_eq!(total, 6);
}

#[test]
fn truncated_frames_are_counted_drops_never_panics() {
    let packets = [
        arp_request_frame(XLB_IP),
        echo_request_frame(XLB_IP, 1, 2, b"payload"),
        tcp_frame(80, 1, 0, 0x02, b""),
        udp_frame(53, b"payload"),
    ];
    for p in &packets {
        for cut in 0..p.len() {
            let mut s = stack();
            let (v, _) = run(&mut s, &p[..cut]);
            assert!(
                matches!(v, Verdict::Drop(_)),
                "{cut}-byte cut of a valid packet gave {v:?}"
            );
            assert_eq!(
                s.counters().drops.iter().sum::<u64>(),
                1,
                "exactly one counted drop at cut {cut}"
            );
        }
    }
}

#[test]
fn ethernet_padding_is_ignored() {
    let mut s = stack();
    let mut padded = tcp_frame(22, 1, 0, 0x02, b"");
    padded.resize(padded.len() + 6, 0xaa);
    let (v, out) = run(&mut s, &padded);
    assert_eq!(v, Verdict::Transmit(0));
    assert!(checksums_valid(&out));
}

#[test]
fn random_bytes_never_panic() {
    let mut s = stack();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let valid = [
        arp_request_frame(XLB_IP),
        echo_request_frame(XLB_IP, 1, 2, b"p"),
        tcp_frame(80, 1, 0, 2, b""),
    ];
    for i in 0..20_000 {
        let mut p = valid[i % valid.len()].clone();
        // Flip a few random bytes of a valid packet: deeper paths get exercised than with pure noise.
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize) % p.len();
            p[at] = (x >> 32) as u8;
        }
        let (v, out) = run(&mut s, &p);
        if let Verdict::Transmit(_) = v {
            assert!(out.len() >= ETH_HEADER_LEN);
        }
    }
}

#[test]
fn routes_connected_subnets_first_then_the_gateway() {
    let s = stack();
    let r = s.route(Ipv4Addr::new(198, 19, 0, 2)).unwrap();
    assert_eq!(
        r,
        Route {
            port: 1,
            source: Ipv4Addr::new(198, 19, 0, 10),
            next_hop: Ipv4Addr::new(198, 19, 0, 2)
        }
    );
    let r = s.route(Ipv4Addr::new(198, 18, 0, 7)).unwrap();
    assert_eq!((r.port, r.next_hop), (0, Ipv4Addr::new(198, 18, 0, 7)));
    let r = s.route(Ipv4Addr::new(198, 18, 200, 1)).unwrap();
    assert_eq!((r.port, r.next_hop), (1, Ipv4Addr::new(198, 19, 0, 1)));
}

/// Offset of the L4 header in the test frames (Ethernet + 20-byte IPv4 header).
const L4: usize = ETH_HEADER_LEN + 20;

/// `frame` with the L4 checksum field (at `offset` in the L4 header) replaced by the folded pseudo-header sum,
/// as a Linux sender with TX checksum offload leaves it (CHECKSUM_PARTIAL).
fn with_partial_checksum(mut frame: Vec<u8>, protocol: u8, offset: usize) -> Vec<u8> {
    let len = (frame.len() - L4) as u16;
    let pseudo = checksum::fold(checksum::pseudo_header_sum(
        CLIENT_IP.octets(),
        XLB_IP.octets(),
        protocol,
        len,
    ));
    frame[L4 + offset..L4 + offset + 2].copy_from_slice(&pseudo.to_be_bytes());
    frame
}

/// Runs `f` with a tracing subscriber on this thread; returns what was logged.
fn logged(f: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let out = Sink(Arc::new(Mutex::new(Vec::new())));
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&out.0.lock().unwrap()).into_owned();
    text
}

#[test]
fn l4_checksums_sort_good_corrupt_and_partial_frames() {
    let mut s = stack();
    s.set_link_names(vec!["test-l4csum-ext".into(), "test-l4csum-int".into()]);
    // Correct checksums: answered as closed ports.
    assert_eq!(run(&mut s, &tcp_frame(81, 1, 0, 0x02, b"")).0, Verdict::Transmit(0));
    assert_eq!(run(&mut s, &udp_frame(54, b"abc")).0, Verdict::Transmit(0));
    assert_eq!(s.counters().drops_of(DropReason::TcpNoListener), 1);
    assert_eq!(s.counters().drops_of(DropReason::UdpNoListener), 1);
    // UDP without a checksum (field 0) is allowed.
    let mut no_csum = udp_frame(54, b"abc");
    no_csum[L4 + 6..L4 + 8].copy_from_slice(&[0, 0]);
    assert_eq!(run(&mut s, &no_csum).0, Verdict::Transmit(0));

    // Corrupted payloads: bad_l4_checksum, no answer, no hint.
    let mut bad_tcp = tcp_frame(81, 1, 0, 0x02, b"data");
    *bad_tcp.last_mut().unwrap() ^= 0x55;
    let mut bad_udp = udp_frame(54, b"abc");
    *bad_udp.last_mut().unwrap() ^= 0x55;
    let log = logged(|| {
        assert_eq!(run(&mut s, &bad_tcp).0, Verdict::Drop(DropReason::BadL4Checksum));
        assert_eq!(run(&mut s, &bad_udp).0, Verdict::Drop(DropReason::BadL4Checksum));
    });
    assert_eq!(s.counters().drops_of(DropReason::BadL4Checksum), 2);
    assert!(!s.partial_checksum_seen(0));
    assert!(log.is_empty(), "{log}");
    assert_eq!((s.counters().tcp_resets, s.counters().icmp_unreachables), (1, 2));

    // Partial checksums (TX offload on the sender): the same drop, and the hint once for the interface.
    let partial_tcp = with_partial_checksum(tcp_frame(81, 7, 0, 0x02, b""), 6, 16);
    let partial_udp = with_partial_checksum(udp_frame(54, b"abc"), 17, 6);
    let log = logged(|| {
        for _ in 0..3 {
            assert_eq!(run(&mut s, &partial_tcp).0, Verdict::Drop(DropReason::BadL4Checksum));
            assert_eq!(run(&mut s, &partial_udp).0, Verdict::Drop(DropReason::BadL4Checksum));
        }
    });
    assert_eq!(s.counters().drops_of(DropReason::BadL4Checksum), 8);
    assert!(s.partial_checksum_seen(0) && !s.partial_checksum_seen(1));
    assert_eq!(log.matches("partial L4 checksum").count(), 1, "{log}");
    assert!(
        log.contains("test-l4csum-ext") && log.contains("ethtool -K <peer interface> tx off"),
        "{log}"
    );
    assert_eq!(s.counters().drops_of(DropReason::MalformedTcp), 0);

    // A second stack (another worker) on the same interface does not log it again.
    let mut other = stack();
    other.set_link_names(vec!["test-l4csum-ext".into()]);
    let log = logged(|| {
        assert_eq!(
            run(&mut other, &partial_tcp).0,
            Verdict::Drop(DropReason::BadL4Checksum)
        );
    });
    assert!(other.partial_checksum_seen(0));
    assert!(log.is_empty(), "{log}");

    // Truncated headers stay malformed.
    let mut short = tcp_frame(81, 1, 0, 0x02, b"");
    short[L4 + 12] = 0xf0; // data offset 60 bytes > segment
    assert_eq!(run(&mut s, &short).0, Verdict::Drop(DropReason::MalformedTcp));
}

/// Records what the stack offers to prefetch.
#[derive(Default)]
struct PrefetchLog(Vec<(PortId, usize, PacketSummary)>);

impl Ipv4Handler for PrefetchLog {
    fn handle(
        &mut self,
        _: Instant,
        _: PortId,
        _: &mut Frame<'_>,
        _: &PacketSummary,
        _: &mut StackContext<'_>,
    ) -> Handled {
        Handled::Pass
    }
    fn prefetch(&mut self, port: PortId, frame: &[u8], ip: &PacketSummary) {
        self.0.push((port, frame.len(), *ip));
    }
    fn poll_transmit(&mut self, _: Instant, _: &mut [u8], _: &mut StackContext<'_>) -> Option<(PortId, usize)> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _: Instant, _: &mut StackContext<'_>) {}
}

#[test]
fn prefetch_offers_ipv4_packets_to_the_handler_and_nothing_else() {
    let mut s = LocalStack::with_handler(
        LocalConfig {
            links: vec![Link {
                mac: XLB_MAC,
                addresses: vec!["198.18.0.10/24".parse().unwrap()],
                gateway: None,
            }],
            neighbours: NeighbourConfig::default(),
            icmp_rate: DEFAULT_ICMP_RATE,
        },
        PrefetchLog::default(),
    );
    let tcp = tcp_frame(80, 1, 0, 0x02, b"");
    s.prefetch(0, &tcp);
    s.prefetch(0, &arp_request_frame(Ipv4Addr::new(198, 18, 0, 10)));
    s.prefetch(0, &tcp[..ETH_HEADER_LEN + 19]);
    let mut bad_version = tcp.clone();
    bad_version[ETH_HEADER_LEN] = 0x65;
    s.prefetch(0, &bad_version);
    let mut short_header = tcp.clone();
    short_header[ETH_HEADER_LEN] = 0x44;
    s.prefetch(0, &short_header);
    let log = &s.handler().0;
    assert_eq!(log.len(), 1, "only the valid IPv4 frame");
    let (port, len, meta) = log[0];
    assert_eq!((port, len), (0, tcp.len()));
    assert_eq!(meta.dst, Ipv4Addr::new(198, 18, 0, 10));
    assert_eq!((meta.protocol, meta.l4), (Protocol::Tcp, ETH_HEADER_LEN + 20));
    assert_eq!(&tcp[26..30], &meta.src.octets());
    // Prefetching changes nothing: the frame is still answered (RST for the unserved port).
    assert!(matches!(run_with(&mut s, &tcp).0, Verdict::Transmit(0)));
}

fn run_with<H: Ipv4Handler>(stack: &mut LocalStack<H>, packet: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; 2048];
    buf[..packet.len()].copy_from_slice(packet);
    let mut frame = Frame::new(&mut buf, packet.len());
    let verdict = stack.process(Instant::now(), 0, &mut frame);
    let len = frame.len();
    (verdict, buf[..len].to_vec())
}

#[test]
fn a_reply_landing_on_another_worker_completes_the_resolving_workers_entry() {
    let now = Instant::now();
    let mut mesh = NeighbourSync::mesh(vec![vec![0, 1], vec![0, 1]]);
    let (mut w0, mut w1) = (stack(), stack());
    w1.set_neighbour_sync(mesh.pop().unwrap());
    w0.set_neighbour_sync(mesh.pop().unwrap());
    // Worker 0 resolves the backend and queues a packet for it.
    assert_eq!(
        w0.neighbours().resolve(now, 1, INT_IP, BACKEND_IP),
        crate::neighbour::Resolution::Pending
    );
    w0.neighbours().enqueue(1, BACKEND_IP, &[0x5a; 60]).unwrap();
    let mut buf = vec![0u8; 2048];
    assert!(w0.poll_transmit(now, &mut buf).is_some(), "the ARP request");
    // The answer lands on worker 1, which was not resolving it: not learned there, passed on, not counted.
    let mut reply = arp_frame(ArpOperation::Reply, (BACKEND_MAC, BACKEND_IP), INT_IP);
    reply[0..6].copy_from_slice(&INT_MAC.0);
    assert_eq!(run_on(&mut w1, now, 1, &reply), Verdict::Consumed);
    assert!(w1.neighbours().is_empty());
    assert_eq!(w1.counters().drops_of(DropReason::ArpUnsolicited), 0);
    // Worker 0 takes it as its answer and releases the packet to the backend's MAC.
    let (port, len) = w0.poll_transmit(now, &mut buf).expect("the released packet");
    assert_eq!((port, len, &buf[0..6]), (1, 60, &BACKEND_MAC.0[..]));
    assert_eq!(w0.neighbours().lookup(1, BACKEND_IP), Some(BACKEND_MAC));
    // A forged claim from the client link is refused where it lands and never reaches worker 0.
    let forged = arp_frame(ArpOperation::Reply, (FORGED_MAC, BACKEND_IP), XLB_IP);
    assert_eq!(
        run_on(&mut w1, now + Duration::from_secs(5), 0, &forged),
        Verdict::Drop(DropReason::ArpWrongLink)
    );
    assert!(w0.poll_transmit(now, &mut buf).is_none());
    assert_eq!(w0.neighbours().lookup(1, BACKEND_IP), Some(BACKEND_MAC));
}

/// A stage that registers one TCP port of the stack's address and records the service of what it is offered.
#[derive(Default)]
struct OnePortStage(Vec<Option<crate::service::Service>>);

impl Ipv4Handler for OnePortStage {
    fn attach(&mut self, cx: &mut StackContext<'_>) {
        let service = crate::service::Service { stage: 7, slot: 42 };
        cx.services.set(
            Ipv4Addr::new(198, 18, 0, 10),
            crate::service::Transport::Tcp,
            80,
            Some(service),
        );
    }
    fn handle(
        &mut self,
        _: Instant,
        _: PortId,
        _: &mut Frame<'_>,
        ip: &PacketSummary,
        _: &mut StackContext<'_>,
    ) -> Handled {
        self.0.push(ip.service);
        match ip.service {
            Some(_) => Handled::Verdict(Verdict::Consumed),
            None => Handled::Pass,
        }
    }
    fn poll_transmit(&mut self, _: Instant, _: &mut [u8], _: &mut StackContext<'_>) -> Option<(PortId, usize)> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _: Instant, _: &mut StackContext<'_>) {}
}

#[test]
fn the_service_table_tells_a_stage_what_a_packet_is_for() {
    let mut s = LocalStack::with_handler(
        LocalConfig {
            links: vec![Link {
                mac: XLB_MAC,
                addresses: vec!["198.18.0.10/24".parse().unwrap()],
                gateway: None,
            }],
            neighbours: NeighbourConfig::default(),
            icmp_rate: DEFAULT_ICMP_RATE,
        },
        OnePortStage::default(),
    );
    // Registered port: the stage gets it with its service and consumes it.
    assert_eq!(run_with(&mut s, &tcp_frame(80, 1, 0, 0x02, b"")).0, Verdict::Consumed);
    // Another port: no service; the stage passes and the stack answers (RST for a port nobody serves).
    assert!(matches!(
        run_with(&mut s, &tcp_frame(81, 1, 0, 0x02, b"")).0,
        Verdict::Transmit(0)
    ));
    let expected = Some(crate::service::Service { stage: 7, slot: 42 });
    assert_eq!(s.handler().0, vec![expected, None]);
}
