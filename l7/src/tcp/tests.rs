use super::*;

const CLIENT: &str = "198.18.0.1:40000";
const VIP: &str = "198.18.0.100:80";

fn host(now: Instant, seed: u64) -> TcpHost {
    TcpHost::new(
        TcpConfig {
            rx_buffer: 4096,
            tx_buffer: 4096,
            max_connections: 4,
            ..TcpConfig::default()
        },
        now,
        seed,
    )
}

/// Moves every segment `from` has to send into `to`; returns what the last one did.
fn shuttle(now: Instant, from: &mut TcpHost, to: &mut TcpHost, accept: bool) -> Vec<Ingress> {
    let mut buf = [0u8; 2048];
    let mut out = Vec::new();
    for _ in 0..64 {
        let Some((len, _)) = from.poll_transmit(now, &mut buf) else {
            break;
        };
        out.push(to.ingress(now, &buf[..len], accept));
    }
    out
}

/// Opens a connection from a client host to a server host; returns (client conn, server conn).
fn open(now: Instant, client: &mut TcpHost, server: &mut TcpHost) -> (ConnId, ConnId) {
    let c = client
        .connect(now, CLIENT.parse().unwrap(), VIP.parse().unwrap(), 7)
        .unwrap();
    let syn = shuttle(now, client, server, true);
    let Some(Ingress::Accepted(s)) = syn.first().copied() else {
        panic!("SYN not accepted: {syn:?}")
    };
    server.set_token(s, 9);
    shuttle(now, server, client, false); // SYN-ACK
    shuttle(now, client, server, false); // ACK
    assert_eq!(client.state(c), Some(State::Established));
    assert_eq!(server.state(s), Some(State::Established));
    (c, s)
}

#[test]
fn a_connection_carries_data_both_ways_and_goes_away_after_closing() {
    let now = Instant::now();
    let (mut client, mut server) = (host(now, 1), host(now, 2));
    let (c, s) = open(now, &mut client, &mut server);
    while server.poll_event().is_some() {}
    client.socket(now, c).unwrap().send_slice(b"hello").unwrap();
    shuttle(now, &mut client, &mut server, false);
    assert_eq!(server.poll_event(), Some((s, 9)), "the owner hears of the data");
    let mut got = [0u8; 16];
    let n = server.socket(now, s).unwrap().recv_slice(&mut got).unwrap();
    assert_eq!(&got[..n], b"hello");
    server.socket(now, s).unwrap().send_slice(b"world").unwrap();
    shuttle(now, &mut server, &mut client, false);
    let n = client.socket(now, c).unwrap().recv_slice(&mut got).unwrap();
    assert_eq!(&got[..n], b"world");

    // The server closes first: FIN, ACK, FIN, ACK; the server side waits in TIME-WAIT, then is removed.
    server.close(now, s);
    shuttle(now, &mut server, &mut client, false);
    client.close(now, c);
    for _ in 0..4 {
        shuttle(now, &mut client, &mut server, false);
        shuttle(now, &mut server, &mut client, false);
    }
    assert_eq!(client.len(), 0, "the side that closed second is gone at once");
    assert_eq!(server.state(s), Some(State::TimeWait));
    let later = now + Duration::from_secs(11);
    server.handle_timeout(later);
    let mut buf = [0u8; 2048];
    assert!(server.poll_transmit(later, &mut buf).is_none());
    assert_eq!(server.len(), 0, "TIME-WAIT ends");
    assert_eq!(server.state(s), None);
    assert!(server.poll_timeout().is_none() || server.poll_timeout() <= Some(later));
}

#[test]
fn unknown_segments_and_refused_syns_open_nothing() {
    let now = Instant::now();
    let (mut client, mut server) = (host(now, 1), host(now, 2));
    let (c, _) = open(now, &mut client, &mut server);
    // The same segments to a host that knows nothing: no connection (the caller answers RST).
    let mut other = host(now, 3);
    client.socket(now, c).unwrap().send_slice(b"x").unwrap();
    assert_eq!(shuttle(now, &mut client, &mut other, true), vec![Ingress::NoConnection]);
    // A SYN where the caller does not listen.
    let c2 = client
        .connect(now, "198.18.0.1:40001".parse().unwrap(), VIP.parse().unwrap(), 1)
        .unwrap();
    assert_eq!(
        shuttle(now, &mut client, &mut other, false),
        vec![Ingress::NoConnection]
    );
    assert!(other.is_empty());
    assert_eq!(client.state(c2), Some(State::SynSent));
}

#[test]
fn the_connection_limit_refuses_syns() {
    let now = Instant::now();
    let mut server = host(now, 2);
    let mut results = Vec::new();
    for i in 0..6u16 {
        let mut client = host(now, 10 + u64::from(i));
        client.connect(
            now,
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40_000 + i),
            VIP.parse().unwrap(),
            1,
        );
        results.extend(shuttle(now, &mut client, &mut server, true));
    }
    assert_eq!(results.iter().filter(|r| matches!(r, Ingress::Accepted(_))).count(), 4);
    assert_eq!(results.iter().filter(|r| **r == Ingress::Full).count(), 2);
    assert_eq!(server.counters().refused_full, 2);
}

#[test]
fn a_handshake_that_never_completes_is_aborted_at_its_deadline() {
    let now = Instant::now();
    let (mut client, mut server) = (host(now, 1), host(now, 2));
    client.connect(now, CLIENT.parse().unwrap(), VIP.parse().unwrap(), 1);
    let Some(Ingress::Accepted(s)) = shuttle(now, &mut client, &mut server, true).first().copied() else {
        panic!()
    };
    let mut buf = [0u8; 2048];
    assert!(
        server.poll_transmit(now, &mut buf).is_some(),
        "SYN-ACK (never delivered)"
    );
    let mut t = now;
    for _ in 0..100 {
        let Some(next) = server.poll_timeout() else { break };
        t = next.max(t);
        server.handle_timeout(t);
        while server.poll_transmit(t, &mut buf).is_some() {}
        if server.is_empty() {
            break;
        }
    }
    assert!(server.is_empty(), "still {:?}", server.state(s));
    assert_eq!(server.counters().handshake_timeouts, 1);
    assert!(t >= now + Duration::from_secs(10) && t < now + Duration::from_secs(12));
}

#[test]
fn corrupted_segments_are_refused_before_any_state_changes() {
    let now = Instant::now();
    let (mut client, mut server) = (host(now, 1), host(now, 2));
    client.connect(now, CLIENT.parse().unwrap(), VIP.parse().unwrap(), 1);
    let mut buf = [0u8; 2048];
    let (len, _) = client.poll_transmit(now, &mut buf).unwrap();
    buf[len - 1] ^= 1;
    assert_eq!(
        server.ingress(now, &buf[..len], true),
        Ingress::Bad(BadSegment::Checksum)
    );
    assert_eq!(
        server.ingress(now, &buf[..20], true),
        Ingress::Bad(BadSegment::Malformed)
    );
    assert!(server.is_empty());
}

#[test]
fn egress_visits_only_connections_with_work() {
    // 1 000 idle established connections: a segment for one of them makes exactly that one transmit.
    let now = Instant::now();
    let big = TcpConfig {
        rx_buffer: 1024,
        tx_buffer: 1024,
        max_connections: 2000,
        ..TcpConfig::default()
    };
    let (mut client, mut server) = (TcpHost::new(big.clone(), now, 1), TcpHost::new(big, now, 2));
    let mut conns = Vec::new();
    for i in 0..1000u16 {
        let local = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, (i / 250) as u8 + 1), 10_000 + i);
        conns.push(client.connect(now, local, VIP.parse().unwrap(), 1).unwrap());
    }
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        while let Some((len, _)) = client.poll_transmit(now, &mut buf) {
            server.ingress(now, &buf[..len], true);
        }
        while let Some((len, _)) = server.poll_transmit(now, &mut buf) {
            client.ingress(now, &buf[..len], false);
        }
    }
    assert_eq!(server.len(), 1000);
    assert!(server.ready.is_empty() && client.ready.is_empty());
    client.socket(now, conns[500]).unwrap().send_slice(b"ping").unwrap();
    assert_eq!(client.ready.len(), 1, "only the written connection is queued");
    let (len, _) = client.poll_transmit(now, &mut buf).unwrap();
    assert!(matches!(server.ingress(now, &buf[..len], false), Ingress::Delivered(_)));
    assert!(
        server.ready.len() <= 1,
        "only the receiving connection may have to answer"
    );
}

#[test]
fn half_open_and_idle_connections_hold_small_buffers_busy_ones_large() {
    let now = Instant::now();
    let config = TcpConfig {
        rx_buffer: 65_536,
        tx_buffer: 65_536,
        idle_buffer: 2048,
        max_connections: 2000,
        ..TcpConfig::default()
    };
    // 1 000 SYNs never completed (a flood): 2 × 2 KiB each, not 2 × 64 KiB.
    let mut server = TcpHost::new(config.clone(), now, 2);
    let mut flood = TcpHost::new(config.clone(), now, 3);
    for i in 0..1000u16 {
        flood.connect(
            now,
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, 1), 20_000 + i),
            VIP.parse().unwrap(),
            1,
        );
    }
    for _ in 0..20 {
        shuttle(now, &mut flood, &mut server, true); // 64 segments a call
    }
    assert_eq!(server.len(), 1000);
    assert_eq!(server.counters().buffer_bytes, 1000 * 2 * 2048);

    // A busy connection gets the large buffers once they are empty, carries more than the small window at
    // once, and shrinks again when marked idle with nothing in flight.
    let (mut client, mut server) = (TcpHost::new(config.clone(), now, 1), TcpHost::new(config, now, 2));
    let (c, s) = open(now, &mut client, &mut server);
    let small = server.counters().buffer_bytes;
    server.set_busy(s, true);
    client.set_busy(c, true);
    assert_eq!(server.counters().buffer_bytes, small - 2 * 2048 + 2 * 65_536);
    let data = vec![7u8; 40_000];
    let mut sent = 0;
    let mut got = Vec::new();
    for _ in 0..50 {
        sent += client.socket(now, c).unwrap().send_slice(&data[sent..]).unwrap();
        shuttle(now, &mut client, &mut server, false);
        let mut buf = vec![0u8; 65_536];
        let n = server.socket(now, s).unwrap().recv_slice(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
        shuttle(now, &mut server, &mut client, false);
        if got.len() == data.len() {
            break;
        }
    }
    assert_eq!(got, data, "40 000 bytes through the large buffers");
    server.set_busy(s, false);
    assert_eq!(server.counters().buffer_bytes, small, "idle again: small buffers");
    assert_eq!(server.state(s), Some(State::Established));

    // Busy again: the large buffers it gave back are reused (not allocated and zeroed again), and what was in
    // them before is never read.
    assert_eq!(server.spare.count(65_536), 2, "kept for the next busy connection");
    server.set_busy(s, true);
    assert_eq!(
        server.spare.count(65_536),
        0,
        "the large buffers given back are the ones reused"
    );
    assert_eq!(server.spare.count(2048), 2, "and the small ones are kept in turn");
    assert_eq!(server.counters().buffer_bytes, small - 2 * 2048 + 2 * 65_536);
    let data: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
    let (mut sent, mut got) = (0, Vec::new());
    for _ in 0..50 {
        sent += client.socket(now, c).unwrap().send_slice(&data[sent..]).unwrap();
        shuttle(now, &mut client, &mut server, false);
        let mut buf = vec![0u8; 65_536];
        let n = server.socket(now, s).unwrap().recv_slice(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
        shuttle(now, &mut server, &mut client, false);
        if got.len() == data.len() {
            break;
        }
    }
    assert_eq!(got, data, "byte-exact through the reused buffers");
}

#[test]
fn a_peer_sending_at_the_old_window_after_the_buffers_shrank_loses_nothing() {
    let now = Instant::now();
    let config = TcpConfig {
        rx_buffer: 65_536,
        tx_buffer: 65_536,
        idle_buffer: 1024,
        ..TcpConfig::default()
    };
    let (mut client, mut server) = (TcpHost::new(config.clone(), now, 1), TcpHost::new(config, now, 2));
    let (c, s) = open(now, &mut client, &mut server);
    server.set_busy(s, true);
    client.set_busy(c, true);
    // The server advertises its large window, then (idle, empty) swaps to 1 KiB buffers; the client still
    // sends 40 000 bytes at the window it was told. Only what fits is taken (nothing is lost or corrupted);
    // the server goes busy again as a session does when bytes arrive, and the rest is retransmitted.
    client.socket(now, c).unwrap().send_slice(b"x").unwrap();
    shuttle(now, &mut client, &mut server, false);
    let mut one = [0u8; 1];
    assert_eq!(server.socket(now, s).unwrap().recv_slice(&mut one).unwrap(), 1);
    shuttle(now, &mut server, &mut client, false); // the ACK with the large window
    server.set_busy(s, false);
    let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut t = now;
    for _ in 0..2000 {
        sent += client.socket(t, c).unwrap().send_slice(&data[sent..]).unwrap();
        shuttle(t, &mut client, &mut server, false);
        let mut buf = vec![0u8; 4096];
        let n = server.socket(t, s).unwrap().recv_slice(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
        server.set_busy(s, true);
        shuttle(t, &mut server, &mut client, false);
        if got.len() == data.len() {
            break;
        }
        t += std::time::Duration::from_millis(50); // retransmission timers run
        client.handle_timeout(t);
        server.handle_timeout(t);
    }
    assert_eq!(got.len(), data.len());
    assert!(got == data, "byte-exact through the shrunk buffer");
}

#[test]
fn a_syn_reusing_a_tuple_in_time_wait_opens_a_new_connection() {
    let now = Instant::now();
    let config = TcpConfig {
        rx_buffer: 65_536,
        tx_buffer: 65_536,
        idle_buffer: 1024,
        ..TcpConfig::default()
    };
    let (mut client, mut server) = (host(now, 1), TcpHost::new(config, now, 2));
    let (c, s) = open(now, &mut client, &mut server);
    let small = server.counters().buffer_bytes;
    server.set_busy(s, true);
    assert!(server.counters().buffer_bytes > small);
    // The server closes first: its side ends in TIME-WAIT.
    server.close(now, s);
    shuttle(now, &mut server, &mut client, false);
    client.close(now, c);
    for _ in 0..4 {
        shuttle(now, &mut client, &mut server, false);
        shuttle(now, &mut server, &mut client, false);
    }
    assert_eq!(server.state(s), Some(State::TimeWait));
    assert_eq!(
        server.counters().buffer_bytes,
        small,
        "TIME-WAIT holds small buffers, not the busy ones"
    );
    // The client's next connection from the same port (a fresh client host: a new ISN) is accepted at once.
    let mut again = host(now, 5);
    again
        .connect(now, CLIENT.parse().unwrap(), VIP.parse().unwrap(), 1)
        .unwrap();
    let results = shuttle(now, &mut again, &mut server, true);
    assert!(matches!(results.first(), Some(Ingress::Accepted(_))), "{results:?}");
    assert_eq!(server.state(s), None, "the TIME-WAIT incarnation is gone");
    assert_eq!(server.counters().time_wait_reused, 1);
    assert_eq!(server.len(), 1);
}

#[test]
fn timers_moved_later_keep_one_heap_entry_and_still_fire() {
    let start = Instant::now();
    let (mut client, mut server) = (host(start, 1), host(start, 2));
    let (c, s) = open(start, &mut client, &mut server);
    // A request/response exchange each millisecond for 100 ms: every one moves the server's retransmission
    // timer later. The heap keeps one entry for the connection (re-filed when it fires early), not one per
    // exchange.
    let mut now = start;
    for i in 0..100u8 {
        now += Duration::from_millis(1);
        client.socket(now, c).unwrap().send_slice(&[i]).unwrap();
        shuttle(now, &mut client, &mut server, false);
        server.handle_timeout(now);
        let _ = server.socket(now, s).unwrap().recv(|d| (d.len(), ()));
        server.socket(now, s).unwrap().send_slice(&[i]).unwrap();
        shuttle(now, &mut server, &mut client, false);
        client.handle_timeout(now);
        let _ = client.socket(now, c).unwrap().recv(|d| (d.len(), ()));
        assert!(
            server.timers.len() <= 3,
            "{} timer entries after {} exchanges",
            server.timers.len(),
            i + 1
        );
    }
    // The last response is not acknowledged yet: the client's delayed ACK still goes out once its time has
    // come (its heap entry may be an earlier one that re-files itself first: the host then wakes once more).
    assert!(server.socket(now, s).unwrap().send_queue() > 0);
    for _ in 0..3 {
        let due = client.poll_timeout().expect("the client's ACK delay is armed");
        assert!(due > now);
        now = due;
        client.handle_timeout(now);
        shuttle(now, &mut client, &mut server, false);
        if server.socket(now, s).unwrap().send_queue() == 0 {
            return;
        }
    }
    panic!("the client's delayed ACK never went out");
}

#[test]
fn abort_all_resets_every_connection_and_the_peers_let_go() {
    let now = Instant::now();
    let (mut client, mut server) = (host(now, 1), host(now, 2));
    let (c, s) = open(now, &mut client, &mut server);
    let c2 = client
        .connect(now, "198.18.0.1:40001".parse().unwrap(), VIP.parse().unwrap(), 8)
        .unwrap();
    let syn = shuttle(now, &mut client, &mut server, true);
    let Some(Ingress::Accepted(s2)) = syn.first().copied() else {
        panic!("SYN not accepted: {syn:?}")
    };
    shuttle(now, &mut server, &mut client, false);
    shuttle(now, &mut client, &mut server, false);
    assert_eq!(server.state(s2), Some(State::Established));
    while client.poll_event().is_some() {}

    // The client host stops: one RST per connection, and its owners hear nothing of it.
    client.abort_all(now);
    let mut buf = [0u8; 2048];
    let mut resets = 0;
    while let Some((len, _)) = client.poll_transmit(now, &mut buf) {
        resets += usize::from(smoltcp::wire::TcpPacket::new_unchecked(&buf[20..len]).rst());
        server.ingress(now, &buf[..len], false);
    }
    assert_eq!(resets, 2);
    assert_eq!(client.poll_event(), None);
    assert_eq!((client.state(c), client.state(c2)), (None, None));
    assert_eq!(
        (server.state(s), server.state(s2)),
        (None, None),
        "the peer let go of both"
    );
}
