use super::*;
use crate::wire::{ArpOperation, ArpPacket, EthernetFrame};

const OUR_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 2]);
const OUR_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);

fn table() -> NeighbourTable {
    NeighbourTable::new(
        NeighbourConfig {
            queue_len: 4,
            ..Default::default()
        },
        vec![OUR_MAC],
    )
}

fn packet(tag: u8) -> Vec<u8> {
    let mut p = vec![0u8; 60];
    p[12] = 0x08;
    p[59] = tag;
    p
}

#[test]
fn unknown_neighbour_sends_arp_request_then_releases_queued_packets() {
    let t0 = Instant::now();
    let mut t = table();
    let mut c = StackCounters::default();
    assert_eq!(t.resolve(t0, 0, OUR_IP, PEER_IP), Resolution::Pending);
    t.enqueue(0, PEER_IP, &packet(1)).unwrap();
    t.enqueue(0, PEER_IP, &packet(2)).unwrap();

    let mut buf = [0u8; 2048];
    let (port, len) = t.poll_transmit(t0, &mut buf, &mut c).expect("an ARP request");
    assert_eq!(port, 0);
    let eth = EthernetFrame::new_checked(&buf[..len]).unwrap();
    assert!(eth.dst_addr().is_broadcast());
    let arp = ArpPacket::new_checked(eth.payload()).unwrap();
    assert_eq!(arp.operation(), ArpOperation::Request);
    assert_eq!(arp.source_protocol_addr(), &OUR_IP.octets());
    assert_eq!(arp.target_protocol_addr(), &PEER_IP.octets());
    assert_eq!(c.arp_requests, 1);
    assert!(
        t.poll_transmit(t0, &mut buf, &mut c).is_none(),
        "one request per retransmit interval"
    );

    t.learn(t0, 0, OUR_IP, PEER_IP, PEER_MAC, false);
    let mut tags = vec![];
    while let Some((_, len)) = t.poll_transmit(t0, &mut buf, &mut c) {
        assert_eq!(&buf[0..6], &PEER_MAC.0);
        assert_eq!(&buf[6..12], &OUR_MAC.0);
        tags.push(buf[len - 1]);
    }
    tags.sort();
    assert_eq!(tags, vec![1, 2]);
    assert_eq!(t.waiting(), 0);
    assert_eq!(t.resolve(t0, 0, OUR_IP, PEER_IP), Resolution::Ready(PEER_MAC));
}

#[test]
fn unanswered_requests_are_retried_then_waiting_packets_dropped() {
    let t0 = Instant::now();
    let mut t = table();
    let mut c = StackCounters::default();
    let mut buf = [0u8; 2048];
    t.resolve(t0, 0, OUR_IP, PEER_IP);
    t.enqueue(0, PEER_IP, &packet(1)).unwrap();
    let mut now = t0;
    let mut requests = 0;
    for _ in 0..10 {
        while t.poll_transmit(now, &mut buf, &mut c).is_some() {
            requests += 1;
        }
        now += Duration::from_millis(1000);
        t.handle_timeout(now, &mut c);
    }
    assert_eq!(requests, 3, "max_probes requests");
    assert!(t.is_empty());
    assert_eq!(t.waiting(), 0);
    assert_eq!(c.drops_of(DropReason::NeighbourUnresolved), 1);
}

#[test]
fn queue_is_bounded() {
    let t0 = Instant::now();
    let mut t = table();
    t.resolve(t0, 0, OUR_IP, PEER_IP);
    for i in 0..4 {
        t.enqueue(0, PEER_IP, &packet(i)).unwrap();
    }
    assert_eq!(t.enqueue(0, PEER_IP, &packet(9)), Err(DropReason::NeighbourUnresolved));
    assert_eq!(
        t.enqueue(0, Ipv4Addr::new(198, 19, 0, 3), &packet(9)),
        Err(DropReason::NeighbourTableFull),
        "no entry: resolve was not called"
    );
}

#[test]
fn entries_expire_and_are_refreshed_before_expiry() {
    let t0 = Instant::now();
    let mut t = table();
    let mut c = StackCounters::default();
    let mut buf = [0u8; 2048];
    t.learn(t0, 0, OUR_IP, PEER_IP, PEER_MAC, true);
    // Long before expiry: no refresh.
    assert_eq!(
        t.resolve(t0 + Duration::from_secs(10), 0, OUR_IP, PEER_IP),
        Resolution::Ready(PEER_MAC)
    );
    assert!(t.poll_transmit(t0, &mut buf, &mut c).is_none());
    // Close to expiry: still usable, and a refresh request goes out once.
    let late = t0 + Duration::from_secs(58);
    assert_eq!(t.resolve(late, 0, OUR_IP, PEER_IP), Resolution::Ready(PEER_MAC));
    assert!(t.poll_transmit(late, &mut buf, &mut c).is_some());
    assert_eq!(t.resolve(late, 0, OUR_IP, PEER_IP), Resolution::Ready(PEER_MAC));
    assert!(t.poll_transmit(late, &mut buf, &mut c).is_none());
    // Never answered: the entry expires.
    t.handle_timeout(t0 + Duration::from_secs(61), &mut c);
    assert!(t.is_empty());
}

#[test]
fn learn_without_create_ignores_strangers() {
    let t0 = Instant::now();
    let mut t = table();
    t.learn(t0, 0, OUR_IP, PEER_IP, PEER_MAC, false);
    assert!(t.is_empty());
    t.learn(t0, 0, OUR_IP, PEER_IP, PEER_MAC, true);
    assert_eq!(t.len(), 1);
}

#[test]
fn sync_passes_learned_neighbours_to_the_other_workers_only() {
    let mut mesh = NeighbourSync::mesh(vec![vec![0, 1], vec![1, 0]]);
    let w1 = mesh.pop().unwrap();
    let mut w0 = mesh.pop().unwrap();
    // Worker 0 learns PEER on its port 1, which is interface 1: worker 1 serves interface 1 on its port 0.
    w0.publish(1, PEER_IP, PEER_MAC);
    assert_eq!(w1.receive(), None, "sent at the flush, not when learned");
    w0.flush();
    let learned = NeighbourUpdate {
        iface: 1,
        ip: PEER_IP,
        mac: PEER_MAC,
        claim: false,
    };
    assert_eq!(w1.receive(), Some((0, learned)));
    assert_eq!(w1.receive(), None);
    w0.publish_claim(0, PEER_IP, OTHER_MAC);
    w0.flush();
    let claim = NeighbourUpdate {
        iface: 0,
        mac: OTHER_MAC,
        claim: true,
        ..learned
    };
    assert_eq!(w1.receive(), Some((1, claim)));
    assert_eq!(w0.receive(), None, "no echo to the publisher");
}

#[test]
fn capacity_is_respected() {
    let t0 = Instant::now();
    let mut t = NeighbourTable::new(
        NeighbourConfig {
            capacity: 2,
            ..Default::default()
        },
        vec![OUR_MAC],
    );
    for i in 1..=5 {
        t.resolve(t0, 0, OUR_IP, Ipv4Addr::new(198, 19, 0, i));
    }
    assert_eq!(t.len(), 2);
}

const OTHER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 3]);
const PORT1_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 1, 1]);

fn two_link_table(capacity: usize) -> NeighbourTable {
    NeighbourTable::new(
        NeighbourConfig {
            capacity,
            queue_len: 4,
            ..Default::default()
        },
        vec![OUR_MAC, PORT1_MAC],
    )
}

/// Resolves `ip` on `port` and answers the request (a solicited reply), returning the time after.
fn resolved(t: &mut NeighbourTable, now: Instant, port: PortId, ip: Ipv4Addr, mac: EthernetAddress) {
    let mut c = StackCounters::default();
    let mut buf = [0u8; 2048];
    assert_eq!(t.resolve(now, port, OUR_IP, ip), Resolution::Pending);
    assert!(t.poll_transmit(now, &mut buf, &mut c).is_some(), "an ARP request");
    assert_eq!(t.on_arp(now, port, ip, mac, true), ArpOutcome::Learned);
}

#[test]
fn entries_are_per_link() {
    let t0 = Instant::now();
    let mut t = two_link_table(16);
    resolved(&mut t, t0, 1, PEER_IP, PEER_MAC);
    // An ARP about the same address on the other link touches nothing here, and creates nothing there.
    assert_eq!(t.on_arp(t0, 0, PEER_IP, OTHER_MAC, true), ArpOutcome::Unknown);
    assert_eq!(t.lookup(1, PEER_IP), Some(PEER_MAC));
    assert_eq!(t.lookup(0, PEER_IP), None);
    assert_eq!(t.len(), 1);
    assert_eq!(t.resolve(t0, 1, OUR_IP, PEER_IP), Resolution::Ready(PEER_MAC));
}

#[test]
fn ports_with_one_mac_are_one_link() {
    let t0 = Instant::now();
    let mut t = NeighbourTable::new(NeighbourConfig::default(), vec![OUR_MAC, OUR_MAC]);
    resolved(&mut t, t0, 0, PEER_IP, PEER_MAC);
    // The answer may come in on the interface's other queue.
    assert_eq!(t.lookup(1, PEER_IP), Some(PEER_MAC));
    assert_eq!(t.on_arp(t0, 1, PEER_IP, PEER_MAC, false), ArpOutcome::Unchanged);
}

#[test]
fn arp_never_creates_entries() {
    let t0 = Instant::now();
    let mut t = two_link_table(16);
    assert_eq!(t.on_arp(t0, 0, PEER_IP, PEER_MAC, true), ArpOutcome::Unknown);
    assert_eq!(t.on_arp(t0, 0, PEER_IP, PEER_MAC, false), ArpOutcome::Unknown);
    assert!(t.is_empty());
}

#[test]
fn mac_changes_are_locked_for_locktime_and_unsolicited_arp_does_not_extend_expiry() {
    let t0 = Instant::now();
    let mut t = two_link_table(16);
    resolved(&mut t, t0, 1, PEER_IP, PEER_MAC);
    // A second answer with another MAC right after the first: the first wins.
    assert_eq!(t.on_arp(t0, 1, PEER_IP, OTHER_MAC, true), ArpOutcome::Locked);
    assert_eq!(t.lookup(1, PEER_IP), Some(PEER_MAC));
    // After locktime an ARP from its own link may move the address (a failover).
    let later = t0 + Duration::from_secs(2);
    assert_eq!(t.on_arp(later, 1, PEER_IP, OTHER_MAC, false), ArpOutcome::Learned);
    assert_eq!(t.lookup(1, PEER_IP), Some(OTHER_MAC));
    assert_eq!(t.on_arp(later, 1, PEER_IP, PEER_MAC, false), ArpOutcome::Locked);
    // The same MAC again, unsolicited, changes nothing: the entry still expires on time.
    assert_eq!(t.on_arp(later, 1, PEER_IP, OTHER_MAC, true), ArpOutcome::Unchanged);
    let mut c = StackCounters::default();
    t.handle_timeout(t0 + Duration::from_secs(61), &mut c);
    assert!(t.is_empty());
}

#[test]
fn refresh_answer_extends_the_entry() {
    let t0 = Instant::now();
    let mut t = two_link_table(16);
    let mut c = StackCounters::default();
    let mut buf = [0u8; 2048];
    resolved(&mut t, t0, 1, PEER_IP, PEER_MAC);
    let late = t0 + Duration::from_secs(58);
    assert_eq!(t.resolve(late, 1, OUR_IP, PEER_IP), Resolution::Ready(PEER_MAC));
    assert!(t.poll_transmit(late, &mut buf, &mut c).is_some(), "the refresh request");
    assert_eq!(t.on_arp(late, 1, PEER_IP, PEER_MAC, true), ArpOutcome::Learned);
    t.handle_timeout(t0 + Duration::from_secs(61), &mut c);
    assert_eq!(
        t.lookup(1, PEER_IP),
        Some(PEER_MAC),
        "confirmed at 58 s: good until 118 s"
    );
    t.handle_timeout(t0 + Duration::from_secs(119), &mut c);
    assert!(t.is_empty());
}

#[test]
fn a_table_full_of_junk_still_resolves_a_new_backend() {
    let t0 = Instant::now();
    let mut t = two_link_table(64);
    let mut c = StackCounters::default();
    let mut buf = [0u8; 2048];
    // A backend in use, then junk (never used to send) up to capacity.
    resolved(&mut t, t0, 1, PEER_IP, PEER_MAC);
    for i in 0..200u32 {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 1, 0)) + i);
        t.learn(t0, 1, OUR_IP, ip, OTHER_MAC, true);
    }
    assert_eq!(t.len(), 64);
    let backend = Ipv4Addr::new(198, 19, 0, 77);
    let now = t0 + Duration::from_millis(10);
    assert_eq!(t.resolve(now, 1, OUR_IP, backend), Resolution::Pending);
    t.enqueue(1, backend, &packet(7)).expect("queued");
    let (port, len) = t.poll_transmit(now, &mut buf, &mut c).expect("an ARP request at once");
    assert_eq!(port, 1);
    assert_eq!(&buf[ETH_HEADER_LEN + 24..len], &backend.octets());
    assert_eq!(t.lookup(1, PEER_IP), Some(PEER_MAC), "the entry in use was kept");
    assert_eq!(t.len(), 64);
    assert!(t.evictions() >= 1);
    assert_eq!(t.on_arp(now, 1, backend, PEER_MAC, true), ArpOutcome::Learned);
    let (_, len) = t.poll_transmit(now, &mut buf, &mut c).expect("the released packet");
    assert_eq!((&buf[0..6], buf[len - 1]), (&PEER_MAC.0[..], 7));
}

#[test]
fn busy_entries_are_never_evicted() {
    let t0 = Instant::now();
    let mut t = two_link_table(2);
    let mut c = StackCounters::default();
    let a = Ipv4Addr::new(198, 19, 0, 2);
    let b = Ipv4Addr::new(198, 19, 0, 3);
    let new = Ipv4Addr::new(198, 19, 0, 4);
    resolved(&mut t, t0, 1, a, PEER_MAC);
    assert_eq!(t.resolve(t0, 1, OUR_IP, b), Resolution::Pending);
    t.enqueue(1, b, &packet(1)).unwrap();
    // `a` was used just now, `b` has a packet waiting: no room for `new`.
    assert_eq!(t.resolve(t0, 1, OUR_IP, new), Resolution::Pending);
    assert_eq!(t.enqueue(1, new, &packet(2)), Err(DropReason::NeighbourTableFull));
    assert_eq!(t.evictions(), 0);
    // Once `a` has been idle for keep_used it gives way (b still has its packet waiting).
    let mut buf = [0u8; 2048];
    while t.poll_transmit(t0, &mut buf, &mut c).is_some() {}
    let later = t0 + Duration::from_secs(6);
    assert_eq!(t.resolve(later, 1, OUR_IP, new), Resolution::Pending);
    t.enqueue(1, new, &packet(2)).unwrap();
    assert_eq!((t.lookup(1, a), t.evictions()), (None, 1));
}

#[test]
fn timers_cost_what_is_due_not_the_table_size() {
    let t0 = Instant::now();
    let mut t = NeighbourTable::new(
        NeighbourConfig {
            capacity: 5000,
            ..Default::default()
        },
        vec![OUR_MAC],
    );
    let mut c = StackCounters::default();
    for i in 0..5000u32 {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i);
        // Learned over 50 s: 100 entries per second.
        t.learn(
            t0 + Duration::from_millis(u64::from(i) * 10),
            0,
            OUR_IP,
            ip,
            PEER_MAC,
            true,
        );
    }
    assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    let mut now = t0 + Duration::from_secs(1);
    for _ in 0..100 {
        let before = t.timer_visits();
        t.handle_timeout(now, &mut c);
        assert_eq!(t.timer_visits(), before, "nothing due before 60 s");
        now += Duration::from_millis(100);
    }
    t.handle_timeout(t0 + Duration::from_secs(61), &mut c);
    // Expiring at 60 s + i x 10 ms: i = 0..=100 are due at 61 s.
    assert_eq!(t.timer_visits(), 101, "one visit per entry expired");
    assert_eq!(t.len(), 4899);
}
