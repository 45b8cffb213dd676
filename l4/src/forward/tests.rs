//! The forwarder on byte buffers: a `LocalStack<Forwarder>` fed frames built with smoltcp, outputs checked
//! with smoltcp.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xlb_stack::drops::DropReason;
use xlb_stack::local::{Link, LocalConfig, LocalStack};
use xlb_stack::neighbour::NeighbourConfig;
use xlb_stack::pipeline::{Frame, Pipeline, Verdict};
use xlb_stack::wire::{EthernetAddress, TcpPacket, ETH_HEADER_LEN};

use super::handoff::Handoff;
use super::*;
use crate::config::{GroupConfig, L4Config, ListenerConfig, ServerConfig};
use crate::conn::{ConnState, Forwarding};
use crate::layout::{Layout, RemovedServerPolicy};
use crate::sched::SchedulerKind;
use crate::testutil::{inspect, packet};

const EXT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x10]);
const INT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 1, 0x10]);
const CLIENT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
const B1_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 1, 2]);
const B2_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 1, 3]);
const LIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);

fn sa(a: [u8; 4], p: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(a), p)
}

fn client() -> SocketAddrV4 {
    sa([198, 18, 0, 1], 40000)
}

fn vip() -> SocketAddrV4 {
    sa([198, 18, 0, 100], 80)
}

fn backends() -> [SocketAddrV4; 2] {
    [sa([198, 19, 0, 2], 80), sa([198, 19, 0, 3], 80)]
}

struct Setup {
    forwarding: Forwarding,
    protocol: Proto,
    weights: [u32; 2],
    table: usize,
    worker: usize,
    workers: usize,
    policy: RemovedServerPolicy,
    /// The appliance's addresses on the backend link (each one a FULLNAT source).
    int_addresses: &'static [&'static str],
    /// FULLNAT local port range.
    local_ports: (u16, u16),
    /// Whether the group has a health check (its servers get targets on the health board).
    checked: bool,
    /// `[l4]` flood defences.
    syn_proxy: crate::config::SynProxyMode,
    syn_proxy_threshold: u32,
    pressure_percent: u8,
    listener_max_conns: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            forwarding: Forwarding::Fullnat,
            protocol: Proto::Tcp,
            weights: [1, 1],
            table: 1024,
            worker: 0,
            workers: 1,
            policy: RemovedServerPolicy::Keep,
            int_addresses: &["198.19.0.10/24"],
            local_ports: (10_000, 60_999),
            checked: false,
            syn_proxy: crate::config::SynProxyMode::Off,
            syn_proxy_threshold: 1000,
            pressure_percent: 50,
            listener_max_conns: 0,
        }
    }
}

fn stack_with(setup: Setup, handoff: Option<Handoff>, learn: bool) -> LocalStack<Forwarder> {
    stack_with_updates(setup, handoff, learn, None)
}

fn stack_with_updates(
    setup: Setup,
    handoff: Option<Handoff>,
    learn: bool,
    updates: Option<crossbeam_channel::Receiver<ControlMessage>>,
) -> LocalStack<Forwarder> {
    let layout = layout_of(&setup);
    let board = Arc::new(HealthBoard::new(layout.targets.len()));
    let maglev = Arc::new(MaglevTables::build(&layout, &board, None));
    stack_sharing(setup, handoff, learn, updates, (board, maglev))
}

/// The layout a worker built with `setup` runs.
fn layout_of(setup: &Setup) -> Layout {
    let servers: Vec<(SocketAddrV4, u32)> = backends().into_iter().zip(setup.weights).collect();
    let (listener, mut group) = web_with(&servers, setup.protocol, setup.forwarding);
    if setup.checked {
        group.health_check = Some(toml::from_str("kind = \"tcp\"").unwrap());
    }
    Layout::new(&[listener], &[group], setup.policy)
}

/// A worker with `setup` whose health board and Maglev tables come from outside (shared with other workers).
fn stack_sharing(
    setup: Setup,
    handoff: Option<Handoff>,
    learn: bool,
    updates: Option<crossbeam_channel::Receiver<ControlMessage>>,
    (board, maglev): (Arc<HealthBoard>, Arc<MaglevTables>),
) -> LocalStack<Forwarder> {
    let now = Instant::now();
    let layout = layout_of(&setup);
    let int_addresses: Vec<xlb_stack::addr::Ipv4Net> = setup.int_addresses.iter().map(|a| a.parse().unwrap()).collect();
    let mut local_ips = vec![Ipv4Addr::new(198, 18, 0, 10)];
    local_ips.extend(int_addresses.iter().map(|n| n.addr));
    let config = ForwarderConfig {
        layout: Arc::new(layout),
        maglev,
        vip_ifaces: vec![0],
        l4: L4Config {
            conn_table_size: setup.table,
            local_port_min: setup.local_ports.0,
            local_port_max: setup.local_ports.1,
            syn_proxy: setup.syn_proxy,
            syn_proxy_threshold: setup.syn_proxy_threshold,
            pressure_percent: setup.pressure_percent,
            listener_max_conns: setup.listener_max_conns,
            ..Default::default()
        },
        local_ips,
        worker: setup.worker,
        workers: setup.workers,
        port_ifaces: vec![0, 1],
    };
    let ports = config.local_ports();
    let forwarder = Forwarder::new(
        config,
        handoff,
        None,
        board,
        Arc::new(SharedL4Counters::new(&[2])),
        updates,
        now,
    );
    let mut stack = LocalStack::with_ports(
        LocalConfig {
            links: vec![
                Link {
                    mac: EXT_MAC,
                    addresses: vec!["198.18.0.10/24".parse().unwrap()],
                    gateway: None,
                },
                Link {
                    mac: INT_MAC,
                    addresses: int_addresses,
                    gateway: None,
                },
            ],
            neighbours: NeighbourConfig::default(),
            icmp_rate: 1000,
        },
        ports,
        forwarder,
    );
    stack.add_owned(0, *vip().ip());
    if learn {
        stack.neighbours().learn(now, 1, LIP, *backends()[0].ip(), B1_MAC, true);
        stack.neighbours().learn(now, 1, LIP, *backends()[1].ip(), B2_MAC, true);
    }
    stack
}

fn stack(setup: Setup) -> LocalStack<Forwarder> {
    stack_with(setup, None, true)
}

/// Workers 0 and 1 of two, joined by a hand-off mesh; `setup(worker)` sets the rest.
fn two_workers(setup: impl Fn(usize) -> Setup) -> (LocalStack<Forwarder>, LocalStack<Forwarder>) {
    let mut mesh = Handoff::mesh(2, 16);
    let h1 = mesh.pop().unwrap();
    let h0 = mesh.pop().unwrap();
    let of = |worker| Setup {
        worker,
        workers: 2,
        ..setup(worker)
    };
    (stack_with(of(0), Some(h0), true), stack_with(of(1), Some(h1), true))
}

const SYN: u8 = 0x02;
const SYNACK: u8 = 0x12;
const ACK: u8 = 0x10;

fn from_client(proto: Proto, flags: u8, payload: &[u8]) -> Vec<u8> {
    packet(proto, CLIENT_MAC, EXT_MAC, client(), vip(), flags, payload)
}

/// One worker turn with a batch of one frame: processes `pkt`, then delivers what it queued for other threads
/// (as the worker does after every batch).
fn run(stack: &mut LocalStack<Forwarder>, now: Instant, port: usize, pkt: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; 2048];
    buf[..pkt.len()].copy_from_slice(pkt);
    let mut f = Frame::new(&mut buf, pkt.len());
    let v = stack.process(now, port, &mut f);
    let len = f.len();
    stack.flush_events();
    (v, buf[..len].to_vec())
}

#[test]
fn fullnat_tcp_round_trip() {
    let now = Instant::now();
    let mut s = stack(Setup::default());
    let (v, out) = run(&mut s, now, 0, &from_client(Proto::Tcp, SYN, b""));
    assert_eq!(v, Verdict::Transmit(1), "to the backend link");
    let (edst, esrc, src, dst, ok) = inspect(&out);
    assert!(ok, "checksums valid after rewrite");
    assert_eq!((edst, esrc), (B1_MAC, INT_MAC));
    assert_eq!(*src.ip(), LIP);
    assert!((10_000..=60_999).contains(&src.port()));
    assert_eq!(dst, backends()[0]);
    let local = src;

    // The backend's SYN-ACK to LIP:lport goes back to the client from the VIP.
    let reply = packet(Proto::Tcp, B1_MAC, INT_MAC, backends()[0], local, SYNACK, b"");
    let (v, out) = run(&mut s, now, 1, &reply);
    assert_eq!(v, Verdict::Transmit(0), "out where the client came in");
    let (edst, esrc, src, dst, ok) = inspect(&out);
    assert!(ok);
    assert_eq!((edst, esrc, src, dst), (CLIENT_MAC, EXT_MAC, vip(), client()));

    // Handshake completes: established, counted active.
    let (v, out) = run(&mut s, now, 0, &from_client(Proto::Tcp, ACK, b"GET / HTTP/1.0\r\n\r\n"));
    assert_eq!(v, Verdict::Transmit(1));
    assert_eq!(inspect(&out).3, backends()[0]);
    let f = s.handler();
    assert_eq!(f.conns().len(), 1);
    assert_eq!(f.conns().iter().next().unwrap().state, ConnState::Established);
    assert_eq!(f.counters().listeners[0].conns_total, 1);
    assert_eq!(f.counters().listeners[0].packets_in, 2);
    assert_eq!(f.counters().listeners[0].packets_out, 1);
    assert_eq!(f.listeners[0].servers[0].active, 1);
}

#[test]
fn round_robin_spreads_new_flows_and_each_flow_sticks() {
    let now = Instant::now();
    let mut s = stack(Setup::default());
    let mut chosen = vec![];
    for port in 0..4u16 {
        let syn = packet(
            Proto::Tcp,
            CLIENT_MAC,
            EXT_MAC,
            sa([198, 18, 0, 1], 41000 + port),
            vip(),
            SYN,
            b"",
        );
        let (_, out) = run(&mut s, now, 0, &syn);
        chosen.push(inspect(&out).3);
        // A retransmitted SYN of the same flow goes to the same backend.
        let (_, again) = run(&mut s, now, 0, &syn);
        assert_eq!(inspect(&again).3, *chosen.last().unwrap());
    }
    assert_eq!(chosen, vec![backends()[0], backends()[1], backends()[0], backends()[1]]);
}

#[test]
fn mid_flow_packet_without_state_is_dropped_in_fullnat() {
    let mut s = stack(Setup::default());
    let (v, _) = run(&mut s, Instant::now(), 0, &from_client(Proto::Tcp, ACK, b"x"));
    assert_eq!(v, Verdict::Drop(DropReason::NoConnection));
    let stray = packet(
        Proto::Tcp,
        B1_MAC,
        INT_MAC,
        backends()[0],
        SocketAddrV4::new(LIP, 12345),
        ACK,
        b"",
    );
    assert_eq!(
        run(&mut s, Instant::now(), 1, &stray).0,
        Verdict::Drop(DropReason::NoConnection)
    );
    // The listener's packet counts under the listener too; the stray reply belongs to no listener.
    assert_eq!(
        s.handler().counters().listeners[0].drops[DropReason::NoConnection.index()],
        1
    );
    assert_eq!(s.counters().drops_of(DropReason::NoConnection), 2);
}

#[test]
fn all_servers_drained_new_flows_get_rst_and_udp_unreachable() {
    let mut s = stack(Setup {
        weights: [0, 0],
        ..Default::default()
    });
    let (v, out) = run(&mut s, Instant::now(), 0, &from_client(Proto::Tcp, SYN, b""));
    assert_eq!(v, Verdict::Transmit(0));
    let tcp = TcpPacket::new_checked(&out[ETH_HEADER_LEN + 20..]).unwrap();
    assert!(tcp.rst());
    assert_eq!(s.counters().drops_of(DropReason::NoHealthyServer), 1);
    assert_eq!(s.counters().tcp_resets, 1);
    assert_eq!(s.handler().counters().listeners[0].no_server, 1);
    assert_eq!(
        s.handler().counters().listeners[0].drops[DropReason::NoHealthyServer.index()],
        1
    );

    let mut u = stack(Setup {
        weights: [0, 0],
        protocol: Proto::Udp,
        ..Default::default()
    });
    let (v, out) = run(&mut u, Instant::now(), 0, &from_client(Proto::Udp, 0, b"q"));
    assert_eq!(v, Verdict::Transmit(0));
    assert_eq!(out[ETH_HEADER_LEN + 20], 3, "ICMP destination unreachable");
    assert_eq!(u.counters().drops_of(DropReason::NoHealthyServer), 1);
}

#[test]
fn fullnat_udp_round_trip() {
    let now = Instant::now();
    let mut s = stack(Setup {
        protocol: Proto::Udp,
        ..Default::default()
    });
    let (v, out) = run(&mut s, now, 0, &from_client(Proto::Udp, 0, b"ping"));
    assert_eq!(v, Verdict::Transmit(1));
    let (_, _, local, dst, ok) = inspect(&out);
    assert!(ok);
    assert_eq!(dst, backends()[0]);
    let reply = packet(Proto::Udp, B1_MAC, INT_MAC, backends()[0], local, 0, b"pong");
    let (v, out) = run(&mut s, now, 1, &reply);
    assert_eq!(v, Verdict::Transmit(0));
    let (_, _, src, dst, ok) = inspect(&out);
    assert!(ok);
    assert_eq!((src, dst), (vip(), client()));
    assert_eq!(&out[out.len() - 4..], b"pong");
}

#[test]
fn dr_rewrites_only_the_mac() {
    let now = Instant::now();
    let mut s = stack(Setup {
        forwarding: Forwarding::Dr,
        ..Default::default()
    });
    let syn = from_client(Proto::Tcp, SYN, b"");
    let (v, out) = run(&mut s, now, 0, &syn);
    assert_eq!(v, Verdict::Transmit(1));
    assert_eq!(&out[0..6], &B1_MAC.0);
    assert_eq!(&out[6..12], &INT_MAC.0);
    let mut forwarded = syn.clone();
    assert!(nat::decrement_ttl(&mut forwarded));
    assert_eq!(
        &out[12..],
        &forwarded[12..],
        "IP packet untouched but for the TTL, one less (a hop)"
    );
    // Mid-flow packet of an unknown DR flow: forwarded statelessly (Maglev), not dropped.
    let mid = packet(
        Proto::Tcp,
        CLIENT_MAC,
        EXT_MAC,
        sa([198, 18, 0, 9], 1234),
        vip(),
        ACK,
        b"x",
    );
    let (v, _) = run(&mut s, now, 0, &mid);
    assert_eq!(v, Verdict::Transmit(1));
    assert_eq!(s.handler().counters().listeners[0].stateless, 1);
}

#[test]
fn unresolved_backend_is_arped_and_the_packet_released() {
    let now = Instant::now();
    let mut s = stack_with(Setup::default(), None, false);
    let (v, _) = run(&mut s, now, 0, &from_client(Proto::Tcp, SYN, b""));
    assert_eq!(v, Verdict::Consumed, "queued until ARP resolves");
    let mut buf = vec![0u8; 2048];
    let (port, len) = s.poll_transmit(now, &mut buf).expect("an ARP request");
    assert_eq!(port, 1);
    assert_eq!(&buf[12..14], &[0x08, 0x06]);
    assert_eq!(
        &buf[ETH_HEADER_LEN + 24..ETH_HEADER_LEN + 28],
        &backends()[0].ip().octets()
    );
    assert!(len >= 42);
    s.neighbours().learn(now, 1, LIP, *backends()[0].ip(), B1_MAC, false);
    let (port, len) = s.poll_transmit(now, &mut buf).expect("the released SYN");
    assert_eq!(port, 1);
    let (edst, _, _, dst, ok) = inspect(&buf[..len]);
    assert!(ok);
    assert_eq!((edst, dst), (B1_MAC, backends()[0]));
}

#[test]
fn expiry_frees_the_entry_and_its_local_port() {
    let now = Instant::now();
    let mut s = stack(Setup::default());
    let (_, out) = run(&mut s, now, 0, &from_client(Proto::Tcp, SYN, b""));
    let local = inspect(&out).2;
    let free_before = s.local_ports().free(LIP, backends()[0]);
    s.handle_timeout(now + Duration::from_secs(59));
    assert_eq!(s.handler().conns().len(), 1);
    s.handle_timeout(now + Duration::from_secs(61));
    assert_eq!(s.handler().conns().len(), 0, "syn_recv timeout is 60 s");
    assert_eq!(s.local_ports().free(LIP, backends()[0]), free_before + 1);
    assert_eq!(s.handler().listeners[0].servers[0].inactive, 0);
    // The port is reusable; the old tuple is no longer translated.
    let reply = packet(Proto::Tcp, B1_MAC, INT_MAC, backends()[0], local, ACK, b"");
    assert_eq!(
        run(&mut s, now + Duration::from_secs(62), 1, &reply).0,
        Verdict::Drop(DropReason::NoConnection)
    );
}

/// Client SYN → backend SYN-ACK → client ACK: the connection is established. Returns the local address.
fn handshake(s: &mut LocalStack<Forwarder>, now: Instant) -> SocketAddrV4 {
    let (_, out) = run(s, now, 0, &from_client(Proto::Tcp, SYN, b""));
    let (_, _, local, backend, _) = inspect(&out);
    let mac = if backend == backends()[0] { B1_MAC } else { B2_MAC };
    run(
        s,
        now,
        1,
        &packet(Proto::Tcp, mac, INT_MAC, backend, local, SYNACK, b""),
    );
    run(s, now, 0, &from_client(Proto::Tcp, ACK, b""));
    local
}

const FINACK: u8 = 0x11;

#[test]
fn new_syn_on_a_closed_connections_addresses_is_scheduled_afresh_when_its_server_takes_no_new_flow() {
    let now = Instant::now();
    let mut s = stack(Setup {
        checked: true,
        ..Default::default()
    });
    let first = handshake(&mut s, now);
    // Both sides close: TIME_WAIT, which would hold the client's addresses for 120 s.
    run(&mut s, now, 0, &from_client(Proto::Tcp, FINACK, b""));
    run(
        &mut s,
        now,
        1,
        &packet(Proto::Tcp, B1_MAC, INT_MAC, backends()[0], first, FINACK, b""),
    );
    assert_eq!(s.handler().conns().iter().next().unwrap().state, ConnState::TimeWait);
    let free = s.local_ports().free(LIP, backends()[0]);

    // Its server fails its health check, and the client reuses its port at once (as after a RST, or with
    // tcp_tw_reuse): a new connection, scheduled to the other server, from the client's own port again (a new
    // tuple at that server); the old tuple may still be in TIME_WAIT at the first server, so its port is
    // quarantined there, not freed. (With its server still up, the flow would continue there: see
    // `a_client_reusing_its_4_tuple_reaches_the_same_server_on_the_same_tuple`.)
    s.handler().board.set(0, false);
    let (v, out) = run(&mut s, now, 0, &from_client(Proto::Tcp, SYN, b""));
    assert_eq!(v, Verdict::Transmit(1));
    let (_, _, local, backend, _) = inspect(&out);
    assert_eq!(backend, backends()[1]);
    assert_eq!(local, first, "the client's port, towards another server");
    let f = s.handler();
    assert_eq!(f.conns().len(), 1);
    assert_eq!(f.conns().iter().next().unwrap().state, ConnState::SynRecv);
    assert_eq!(s.local_ports().free(LIP, backends()[0]), free, "held in quarantine");
    assert_eq!(s.local_ports().occupancy().quarantined, 1);
    assert_eq!(f.counters().rescheduled, 1);
    assert_eq!(f.counters().listeners[0].conns_total, 2);
    assert_eq!(
        (f.listeners[0].servers[0].inactive, f.listeners[0].servers[0].active),
        (0, 0)
    );
    assert_eq!(f.listeners[0].servers[1].inactive, 1, "syn_recv counts as inactive");
    // The old tuple is no longer translated.
    let late = packet(Proto::Tcp, B1_MAC, INT_MAC, backends()[0], first, ACK, b"");
    assert_eq!(run(&mut s, now, 1, &late).0, Verdict::Drop(DropReason::NoConnection));
    // The quarantine ends after the TIME_WAIT timeout.
    s.handle_timeout(now + Duration::from_secs(119));
    assert_eq!(s.local_ports().free(LIP, backends()[0]), free);
    s.handle_timeout(now + Duration::from_secs(121));
    assert_eq!(s.local_ports().free(LIP, backends()[0]), free + 1);
}

/// Both sides close a connection from `client`; returns its tuple towards the server.
fn closed_connection(
    s: &mut LocalStack<Forwarder>,
    now: Instant,
    client: SocketAddrV4,
) -> (SocketAddrV4, SocketAddrV4) {
    let syn = packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, client, vip(), SYN, b"");
    let (_, out) = run(s, now, 0, &syn);
    let (_, _, local, backend, _) = inspect(&out);
    let mac = if backend == backends()[0] { B1_MAC } else { B2_MAC };
    run(
        s,
        now,
        1,
        &packet(Proto::Tcp, mac, INT_MAC, backend, local, SYNACK, b""),
    );
    run(
        s,
        now,
        0,
        &packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, client, vip(), ACK, b""),
    );
    // The server closes first, then the client.
    run(
        s,
        now,
        1,
        &packet(Proto::Tcp, mac, INT_MAC, backend, local, FINACK, b""),
    );
    run(
        s,
        now,
        0,
        &packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, client, vip(), FINACK, b""),
    );
    (local, backend)
}

#[test]
fn a_client_reusing_its_4_tuple_reaches_the_same_server_on_the_same_tuple() {
    let now = Instant::now();
    // Both servers take new flows (rr): the reused 4-tuple continues on its server all the same.
    let mut s = stack(Setup::default());
    let client = sa([198, 18, 0, 1], 40_000);
    let (local, backend) = closed_connection(&mut s, now, client);
    assert_eq!(local.port(), 40_000, "the client's own port when free");
    assert_eq!(s.handler().conns().iter().next().unwrap().state, ConnState::TimeWait);
    // Its new SYN on the same 4-tuple: the server (in TIME_WAIT) sees the same tuple from the same client,
    // whose ISN and timestamps have moved on, so it accepts it; nothing is quarantined.
    let syn = packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, client, vip(), SYN, b"");
    let (_, out) = run(&mut s, now + Duration::from_secs(1), 0, &syn);
    assert_eq!((inspect(&out).2, inspect(&out).3), (local, backend));
    let f = s.handler();
    assert_eq!((f.counters().rescheduled, f.conns().len()), (1, 1));
    assert_eq!(s.local_ports().occupancy().quarantined, 0);
    assert_eq!(s.local_ports().occupancy().in_use, 1);
    // Another client with the same source port, scheduled by rr to the other server, keeps its port there too
    // (each server has the whole range); a third goes back to the first server, where 40000 is taken.
    for (ip, server, port) in [(2, 1, 40_000), (3, 0, 40_001)] {
        let other = sa([198, 18, 0, ip], 40_000);
        let syn = packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, other, vip(), SYN, b"");
        let (_, out) = run(&mut s, now + Duration::from_secs(1), 0, &syn);
        assert_eq!(inspect(&out).3, backends()[server]);
        assert_eq!(inspect(&out).2, SocketAddrV4::new(*local.ip(), port));
    }
    assert_eq!(backend, backends()[0]);
}

#[test]
fn a_full_table_evicts_its_oldest_closed_connection_for_a_new_flow() {
    let now = Instant::now();
    let mut s = stack(Setup {
        table: 2,
        ..Default::default()
    });
    let (old_local, old_backend) = closed_connection(&mut s, now, sa([198, 18, 0, 1], 40_000));
    let open = packet(
        Proto::Tcp,
        CLIENT_MAC,
        EXT_MAC,
        sa([198, 18, 0, 2], 40_001),
        vip(),
        SYN,
        b"",
    );
    assert_eq!(run(&mut s, now, 0, &open).0, Verdict::Transmit(1));
    // Full: the TIME_WAIT entry makes room; its port is held for the server's TIME_WAIT.
    let third = packet(
        Proto::Tcp,
        CLIENT_MAC,
        EXT_MAC,
        sa([198, 18, 0, 3], 40_002),
        vip(),
        SYN,
        b"",
    );
    assert_eq!(
        run(&mut s, now + Duration::from_secs(1), 0, &third).0,
        Verdict::Transmit(1)
    );
    let f = s.handler();
    assert_eq!((f.counters().evicted, f.conns().len()), (1, 2));
    assert_eq!(s.local_ports().occupancy().quarantined, 1);
    let late = packet(Proto::Tcp, B1_MAC, INT_MAC, old_backend, old_local, ACK, b"");
    assert_eq!(run(&mut s, now, 1, &late).0, Verdict::Drop(DropReason::NoConnection));
    // Nothing closed is left: the next new flow is refused and counted.
    let fourth = packet(
        Proto::Tcp,
        CLIENT_MAC,
        EXT_MAC,
        sa([198, 18, 0, 4], 40_003),
        vip(),
        SYN,
        b"",
    );
    assert_eq!(
        run(&mut s, now + Duration::from_secs(1), 0, &fourth).0,
        Verdict::Drop(DropReason::ConnTableFull)
    );
    assert_eq!(
        s.handler().counters().listeners[0].drops[DropReason::ConnTableFull.index()],
        1
    );
}

#[test]
fn retransmitted_syn_and_established_flows_keep_their_server() {
    let now = Instant::now();
    let mut s = stack(Setup {
        checked: true,
        ..Default::default()
    });
    // A retransmitted SYN is the same connection attempt.
    let (_, out) = run(&mut s, now, 0, &from_client(Proto::Tcp, SYN, b""));
    let (_, out2) = run(&mut s, now, 0, &from_client(Proto::Tcp, SYN, b""));
    assert_eq!(inspect(&out).2, inspect(&out2).2);
    assert_eq!(inspect(&out2).3, backends()[0]);
    run(
        &mut s,
        now,
        1,
        &packet(Proto::Tcp, B1_MAC, INT_MAC, backends()[0], inspect(&out).2, SYNACK, b""),
    );
    run(&mut s, now, 0, &from_client(Proto::Tcp, ACK, b""));
    // Its server fails its check: the established connection still goes there (a failed probe does not
    // prove the connection dead), while new flows go to the healthy server.
    s.handler().board.set(0, false);
    let (_, out) = run(&mut s, now, 0, &from_client(Proto::Tcp, ACK, b"more"));
    assert_eq!(inspect(&out).3, backends()[0]);
    let other = packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, sa([198, 18, 0, 2], 7), vip(), SYN, b"");
    assert_eq!(inspect(&run(&mut s, now, 0, &other).1).3, backends()[1]);
    assert_eq!(s.handler().counters().rescheduled, 0);
}

#[test]
fn a_down_server_gets_no_new_flow_from_the_moment_the_board_says_so() {
    let now = Instant::now();
    let mut s = stack(Setup {
        checked: true,
        ..Default::default()
    });
    // The checker (possibly on another worker) marks server 0 down; no housekeeping has run since.
    s.handler().board.set(0, false);
    for port in 0..4u16 {
        let syn = packet(
            Proto::Tcp,
            CLIENT_MAC,
            EXT_MAC,
            sa([198, 18, 0, 1], 41000 + port),
            vip(),
            SYN,
            b"",
        );
        assert_eq!(inspect(&run(&mut s, now, 0, &syn).1).3, backends()[1]);
    }
    // And back up: rr uses both again, still without housekeeping.
    s.handler().board.set(0, true);
    let chosen: Vec<_> = (4..8u16)
        .map(|port| {
            let syn = packet(
                Proto::Tcp,
                CLIENT_MAC,
                EXT_MAC,
                sa([198, 18, 0, 1], 41000 + port),
                vip(),
                SYN,
                b"",
            );
            inspect(&run(&mut s, now, 0, &syn).1).3
        })
        .collect();
    assert!(
        chosen.contains(&backends()[0]) && chosen.contains(&backends()[1]),
        "{chosen:?}"
    );
}

#[test]
fn syn_retried_after_its_server_went_down_goes_to_a_healthy_one() {
    let now = Instant::now();
    let mut s = stack(Setup {
        checked: true,
        ..Default::default()
    });
    let (_, out) = run(&mut s, now, 0, &from_client(Proto::Tcp, SYN, b""));
    assert_eq!(inspect(&out).3, backends()[0]);
    // No SYN-ACK: the server died. Once it is marked down, the client's retry is scheduled again.
    s.handler().board.set(0, false);
    let (v, out) = run(&mut s, now, 0, &from_client(Proto::Tcp, SYN, b""));
    assert_eq!(v, Verdict::Transmit(1));
    assert_eq!(inspect(&out).3, backends()[1]);
    assert_eq!(s.handler().conns().len(), 1);
    assert_eq!(s.handler().counters().rescheduled, 1);
}

#[test]
fn udp_flow_moves_when_its_server_goes_down() {
    let now = Instant::now();
    let mut s = stack(Setup {
        protocol: Proto::Udp,
        checked: true,
        ..Default::default()
    });
    let (_, out) = run(&mut s, now, 0, &from_client(Proto::Udp, 0, b"q1"));
    assert_eq!(inspect(&out).3, backends()[0]);
    let (_, out) = run(&mut s, now, 0, &from_client(Proto::Udp, 0, b"q2"));
    assert_eq!(inspect(&out).3, backends()[0], "a UDP flow sticks to its server");
    s.handler().board.set(0, false);
    let (_, out) = run(&mut s, now, 0, &from_client(Proto::Udp, 0, b"q3"));
    assert_eq!(inspect(&out).3, backends()[1]);
    assert_eq!(s.handler().counters().rescheduled, 1);
    // Every server down: the datagram is refused with ICMP unreachable, not sent to a dead server.
    s.handler().board.set(1, false);
    let (v, out) = run(&mut s, now, 0, &from_client(Proto::Udp, 0, b"q4"));
    assert_eq!(v, Verdict::Transmit(0));
    assert_eq!(out[ETH_HEADER_LEN + 20], 3, "ICMP destination unreachable");
    assert_eq!(s.handler().conns().len(), 0);
}

#[test]
fn icmp_unreachable_for_a_udp_probe_reaches_the_checker_from_any_worker() {
    use crate::health::{HealthChecker, ProbePorts, Target, TargetId};
    let now = Instant::now();
    let (mut w0, mut w1) = two_workers(|_| Setup {
        checked: true,
        ..Default::default()
    });
    // Worker 0 checks server 0 by UDP: fall 1, and a timeout long enough that only the ICMP error can fail it.
    let check = toml::from_str("kind = \"udp\"\ninterval_ms = 1000\ntimeout_ms = 900\nfall = 1").unwrap();
    let target = Target {
        id: TargetId { group: 0, server: 0 },
        server: backends()[0],
        source: LIP,
        check,
    };
    let ports = ProbePorts {
        base: PROBE_PORT_BASE,
        count: PROBE_PORTS,
        stride: 1,
    };
    w0.handler_mut().health = Some(HealthChecker::new(now, vec![target], ports));
    w0.handle_timeout(now);
    let mut buf = vec![0u8; 2048];
    let (port, len) = w0.poll_transmit(now, &mut buf).expect("worker 0 sends the probe");
    assert_eq!(port, 1);
    let probe = buf[ETH_HEADER_LEN..len].to_vec();

    // The server's kernel answers port unreachable, and RSS puts the error on worker 1's queue.
    let mut icmp = vec![0u8; 2048];
    let quote = &probe[..probe.len().min(28)];
    let n = xlb_stack::wire::build::icmp_unreachable(
        &mut icmp,
        INT_MAC,
        B1_MAC,
        *backends()[0].ip(),
        LIP,
        xlb_stack::wire::build::Unreachable::Port,
        quote,
    );
    assert_eq!(
        run(&mut w1, now, 1, &icmp[..n]).0,
        Verdict::Consumed,
        "handed to worker 0"
    );
    assert_eq!(w1.handler().counters().handoff_out, 1);
    let later = now + Duration::from_millis(10);
    assert_eq!(w0.poll_transmit(later, &mut buf), None);
    w0.handle_timeout(later);
    assert!(
        !w0.handler().board.is_up(0),
        "down on the ICMP error, long before the probe's timeout"
    );
    // Other ICMP (an echo request to a local IP) stays with the worker that got it.
    let echo_to_lb = {
        let mut e = icmp[..n].to_vec();
        e[ETH_HEADER_LEN + 20] = 8;
        e
    };
    assert_ne!(run(&mut w1, now, 1, &echo_to_lb).0, Verdict::Consumed);
    assert_eq!(w1.handler().counters().handoff_out, 1);
}

/// A "fragmentation needed" error from `router` to `to` quoting the first 28 bytes of `original`'s IP packet.
fn frag_needed(
    original: &[u8],
    from_mac: EthernetAddress,
    to_mac: EthernetAddress,
    router: Ipv4Addr,
    to: Ipv4Addr,
) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let n = xlb_stack::wire::build::icmp_unreachable(
        &mut buf,
        to_mac,
        from_mac,
        router,
        to,
        xlb_stack::wire::build::Unreachable::Port,
        &original[ETH_HEADER_LEN..ETH_HEADER_LEN + 28],
    );
    buf.truncate(n);
    // Code 4 with a next-hop MTU of 1400 (the checksum is recomputed by the forwarder; fix it here too).
    let at = ETH_HEADER_LEN + 20;
    buf[at + 1] = 4;
    buf[at + 6..at + 8].copy_from_slice(&1400u16.to_be_bytes());
    buf[at + 2..at + 4].copy_from_slice(&[0, 0]);
    let c = xlb_stack::wire::checksum::checksum(&buf[at..]);
    buf[at + 2..at + 4].copy_from_slice(&c.to_be_bytes());
    buf
}

/// The outer and the quoted endpoints of an ICMP error frame, and whether its checksums verify.
fn icmp_about(frame: &[u8]) -> ((Ipv4Addr, Ipv4Addr), (SocketAddrV4, SocketAddrV4), bool) {
    use xlb_stack::wire::{Icmpv4Packet, Ipv4Packet};
    let ip = Ipv4Packet::new_checked(&frame[ETH_HEADER_LEN..]).unwrap();
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    let inner = Ipv4Packet::new_unchecked(&ip.payload()[8..]);
    let ok = ip.verify_checksum() && icmp.verify_checksum() && inner.verify_checksum();
    let quoted = nat::packet_endpoints(&ip.payload()[8..], 20);
    ((ip.src_addr(), ip.dst_addr()), quoted, ok)
}

#[test]
fn icmp_errors_about_a_fullnat_flow_reach_the_other_end_translated() {
    let now = Instant::now();
    let mut s = stack(Setup::default());
    let local = handshake(&mut s, now);
    let backend = backends()[0];

    // A router on the client's path cannot pass the VIP's reply: the error goes to the backend, about the
    // packet the backend sent (backend → LIP), from the local IP.
    let reply = packet(Proto::Tcp, EXT_MAC, CLIENT_MAC, vip(), client(), ACK, &[0; 100]);
    let router = Ipv4Addr::new(198, 18, 0, 254);
    let err = frag_needed(&reply, CLIENT_MAC, EXT_MAC, router, *vip().ip());
    let (v, out) = run(&mut s, now, 0, &err);
    assert_eq!(v, Verdict::Transmit(1), "to the backend link");
    assert_eq!(&out[0..6], &B1_MAC.0);
    let (outer, quoted, ok) = icmp_about(&out);
    assert!(ok, "outer, ICMP and quoted checksums");
    assert_eq!(outer, (LIP, *backend.ip()));
    assert_eq!(quoted, (backend, local));
    assert_eq!(
        &out[ETH_HEADER_LEN + 26..ETH_HEADER_LEN + 28],
        &1400u16.to_be_bytes(),
        "MTU kept"
    );

    // A router on the backend's path reports a packet LIP → backend: the client hears of its own packet.
    let sent = packet(Proto::Tcp, INT_MAC, B1_MAC, local, backend, ACK, &[0; 100]);
    let router = Ipv4Addr::new(198, 19, 0, 254);
    let err = frag_needed(&sent, B1_MAC, INT_MAC, router, LIP);
    let (v, out) = run(&mut s, now, 1, &err);
    assert_eq!(v, Verdict::Transmit(0), "out where the client came in");
    assert_eq!(&out[0..6], &CLIENT_MAC.0);
    let (outer, quoted, ok) = icmp_about(&out);
    assert!(ok);
    assert_eq!(outer, (*vip().ip(), *client().ip()));
    assert_eq!(quoted, (client(), vip()));
    assert_eq!(s.handler().counters().icmp_forwarded, 2);

    // An error about a flow nobody has is the local stack's, not forwarded.
    let stranger = packet(Proto::Tcp, EXT_MAC, CLIENT_MAC, vip(), sa([198, 18, 0, 7], 1), ACK, b"");
    let err = frag_needed(
        &stranger,
        CLIENT_MAC,
        EXT_MAC,
        Ipv4Addr::new(198, 18, 0, 254),
        *vip().ip(),
    );
    assert_ne!(run(&mut s, now, 0, &err).0, Verdict::Transmit(1));
    assert_eq!(s.handler().counters().icmp_forwarded, 2);
}

#[test]
fn icmp_error_about_a_dr_flow_goes_to_its_backend_unchanged() {
    let now = Instant::now();
    let mut s = stack(Setup {
        forwarding: Forwarding::Dr,
        ..Default::default()
    });
    run(&mut s, now, 0, &from_client(Proto::Tcp, SYN, b""));
    // The backend answers the client directly from the VIP; a router on the way reports it to the VIP.
    let reply = packet(Proto::Tcp, B1_MAC, CLIENT_MAC, vip(), client(), ACK, &[0; 100]);
    let err = frag_needed(&reply, CLIENT_MAC, EXT_MAC, Ipv4Addr::new(198, 18, 0, 254), *vip().ip());
    let (v, out) = run(&mut s, now, 0, &err);
    assert_eq!(v, Verdict::Transmit(1));
    assert_eq!(&out[0..6], &B1_MAC.0);
    let mut forwarded = err.clone();
    assert!(nat::decrement_ttl(&mut forwarded));
    assert_eq!(&out[12..], &forwarded[12..], "IP packet untouched but for the TTL");
}

#[test]
fn icmp_error_landing_on_another_worker_is_handed_to_the_flow_owner() {
    let now = Instant::now();
    let (mut w0, mut w1) = two_workers(|_| Setup::default());
    let mut buf = vec![0u8; 2048];
    let mut checked = [false, false];
    for port in 0..16u16 {
        let c = sa([198, 18, 0, 1], 43000 + port);
        let syn = packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, c, vip(), SYN, b"");
        let owner = match run(&mut w0, now, 0, &syn).0 {
            Verdict::Transmit(1) => 0,
            _ => {
                w1.poll_transmit(now, &mut buf)
                    .expect("worker 1 forwards the handed SYN");
                1
            }
        };
        // The error about this flow arrives at the other worker.
        let reply = packet(Proto::Tcp, EXT_MAC, CLIENT_MAC, vip(), c, ACK, &[0; 100]);
        let err = frag_needed(&reply, CLIENT_MAC, EXT_MAC, Ipv4Addr::new(198, 18, 0, 254), *vip().ip());
        let (other, owner_stack) = if owner == 0 {
            (&mut w1, &mut w0)
        } else {
            (&mut w0, &mut w1)
        };
        assert_eq!(run(other, now, 0, &err).0, Verdict::Consumed, "handed over");
        let (p, len) = owner_stack.poll_transmit(now, &mut buf).expect("the owner forwards it");
        assert_eq!(p, 1);
        let (outer, quoted, ok) = icmp_about(&buf[..len]);
        assert!(
            ok && outer.0 == LIP && backends().contains(&quoted.0),
            "translated by the owner"
        );
        checked[owner] = true;
    }
    assert_eq!(checked, [true, true], "flows owned by both workers");
}

#[test]
fn ha_packets_go_to_the_ha_driver_and_its_frames_leave_through_the_worker() {
    use super::ha_tap::{HaOutbound, HaTap};
    let now = Instant::now();
    let mut s = stack(Setup::default());
    let (vrrp_tx, vrrp_rx) = crossbeam_channel::bounded(4);
    let (sync_tx, sync_rx) = crossbeam_channel::bounded(1);
    let (out_tx, out_rx) = crossbeam_channel::bounded(4);
    s.handler_mut().set_ha_tap(HaTap {
        iface: 0,
        source: Ipv4Addr::new(198, 18, 0, 10),
        sync: "224.0.0.81:8848".parse().unwrap(),
        vrrp: vrrp_tx,
        sync_in: sync_tx,
        outbound: Some(out_rx),
        wake: Arc::new(xlb_stack::wake::Wake::new().unwrap()),
    });
    // The multicast groups become the stack's own on the HA interface at the first timer.
    s.handle_timeout(now);

    // A peer's sync datagram to the group, then one to our HA address: both to the driver, untouched.
    let group_mac = EthernetAddress([1, 0, 0x5e, 0, 0, 81]);
    let peer = sa([198, 18, 0, 11], 8848);
    let to_group = packet(
        Proto::Udp,
        CLIENT_MAC,
        group_mac,
        peer,
        sa([224, 0, 0, 81], 8848),
        0,
        b"sync",
    );
    assert_eq!(run(&mut s, now, 0, &to_group).0, Verdict::Consumed);
    assert_eq!(sync_rx.try_recv().unwrap(), to_group[ETH_HEADER_LEN..].to_vec());
    let to_us = packet(
        Proto::Udp,
        CLIENT_MAC,
        EXT_MAC,
        peer,
        sa([198, 18, 0, 10], 8848),
        0,
        b"ack",
    );
    // The channel holds one: a second datagram before the driver reads is dropped and counted.
    assert_eq!(run(&mut s, now, 0, &to_us).0, Verdict::Consumed);
    assert_eq!(run(&mut s, now, 0, &to_us).0, Verdict::Drop(DropReason::HaQueueFull));
    assert_eq!(sync_rx.try_recv().unwrap(), to_us[ETH_HEADER_LEN..].to_vec());
    // UDP to our address on another port is not HA's (the local stack answers port unreachable).
    let other = packet(Proto::Udp, CLIENT_MAC, EXT_MAC, peer, sa([198, 18, 0, 10], 9), 0, b"x");
    assert_ne!(run(&mut s, now, 0, &other).0, Verdict::Consumed);
    assert!(sync_rx.try_recv().is_err());

    // A VRRP advert to 224.0.0.18 (protocol 112).
    let mut advert = packet(
        Proto::Udp,
        CLIENT_MAC,
        EthernetAddress([1, 0, 0x5e, 0, 0, 18]),
        peer,
        sa([224, 0, 0, 18], 0),
        0,
        b"",
    );
    advert[ETH_HEADER_LEN + 9] = 112;
    advert[ETH_HEADER_LEN + 10..ETH_HEADER_LEN + 12].copy_from_slice(&[0, 0]);
    let c = xlb_stack::wire::checksum::checksum(&advert[ETH_HEADER_LEN..ETH_HEADER_LEN + 20]);
    advert[ETH_HEADER_LEN + 10..ETH_HEADER_LEN + 12].copy_from_slice(&c.to_be_bytes());
    assert_eq!(run(&mut s, now, 0, &advert).0, Verdict::Consumed);
    assert_eq!(vrrp_rx.try_recv().unwrap(), advert[ETH_HEADER_LEN..].to_vec());

    // The driver's frames: a multicast frame leaves as it is on the interface's port; a unicast packet is
    // routed (here to a backend whose MAC is known) and gets its Ethernet header.
    let mut buf = vec![0u8; 2048];
    out_tx
        .send(HaOutbound::Frame {
            iface: 0,
            frame: to_group.clone(),
        })
        .unwrap();
    let unicast = packet(
        Proto::Udp,
        CLIENT_MAC,
        CLIENT_MAC,
        sa([198, 19, 0, 10], 8848),
        backends()[0],
        0,
        b"u",
    );
    out_tx
        .send(HaOutbound::Routed(unicast[ETH_HEADER_LEN..].to_vec()))
        .unwrap();
    let (port, len) = s.poll_transmit(now, &mut buf).expect("the multicast frame");
    assert_eq!((port, &buf[..len]), (0, &to_group[..]));
    let (port, len) = s.poll_transmit(now, &mut buf).expect("the routed packet");
    assert_eq!(port, 1);
    assert_eq!(&buf[0..6], &B1_MAC.0);
    assert_eq!(&buf[ETH_HEADER_LEN..len], &unicast[ETH_HEADER_LEN..]);
    // The transmitting worker sleeps on the driver's wake-up too.
    assert_eq!(s.wake_fd(), Some(s.handler().ha.as_ref().unwrap().wake.fd()));
}

/// Processes `pkt` without the end of the worker's turn (nothing queued is delivered yet).
fn process_only(stack: &mut LocalStack<Forwarder>, now: Instant, port: usize, pkt: &[u8]) -> Verdict {
    let mut buf = vec![0u8; 2048];
    buf[..pkt.len()].copy_from_slice(pkt);
    stack.process(now, port, &mut Frame::new(&mut buf, pkt.len()))
}

#[test]
fn ha_packets_reach_the_ha_driver_only_when_the_turn_flushes() {
    use super::ha_tap::HaTap;
    let now = Instant::now();
    let mut s = stack(Setup::default());
    let (sync_tx, sync_rx) = crossbeam_channel::bounded(4);
    s.handler_mut().set_ha_tap(HaTap {
        iface: 0,
        source: Ipv4Addr::new(198, 18, 0, 10),
        sync: "224.0.0.81:8848".parse().unwrap(),
        vrrp: crossbeam_channel::bounded(4).0,
        sync_in: sync_tx,
        outbound: None,
        wake: Arc::new(xlb_stack::wake::Wake::new().unwrap()),
    });
    s.handle_timeout(now);
    let peer = sa([198, 18, 0, 11], 8848);
    let to_us = packet(
        Proto::Udp,
        CLIENT_MAC,
        EXT_MAC,
        peer,
        sa([198, 18, 0, 10], 8848),
        0,
        b"ack",
    );
    assert_eq!(process_only(&mut s, now, 0, &to_us), Verdict::Consumed);
    assert_eq!(process_only(&mut s, now, 0, &to_us), Verdict::Consumed);
    assert!(sync_rx.is_empty(), "nothing sent from inside packet processing");
    s.flush_events();
    assert_eq!(sync_rx.len(), 2, "both delivered by the flush");
    assert_eq!(sync_rx.try_recv().unwrap(), to_us[ETH_HEADER_LEN..].to_vec());
    // The channel's room counts what is already queued: 3 more fit (4 with the one still in the channel).
    for _ in 0..3 {
        assert_eq!(process_only(&mut s, now, 0, &to_us), Verdict::Consumed);
    }
    assert_eq!(
        process_only(&mut s, now, 0, &to_us),
        Verdict::Drop(DropReason::HaQueueFull)
    );
    s.flush_events();
    assert_eq!(sync_rx.len(), 4);
    assert_eq!(s.counters().drops_of(DropReason::HaQueueFull), 1);
}

#[test]
fn handed_frames_reach_their_owner_only_when_the_turn_flushes() {
    let now = Instant::now();
    let (mut w0, mut w1) = two_workers(|_| Setup::default());
    let mut buf = vec![0u8; 2048];
    // Find a flow worker 1 owns, arriving at worker 0.
    let mut handed = None;
    for port in 0..16u16 {
        let syn = packet(
            Proto::Tcp,
            CLIENT_MAC,
            EXT_MAC,
            sa([198, 18, 0, 1], 44000 + port),
            vip(),
            SYN,
            b"",
        );
        if process_only(&mut w0, now, 0, &syn) == Verdict::Consumed {
            handed = Some(syn);
            break;
        }
        w0.flush_events();
    }
    assert!(handed.is_some(), "one of 16 flows is worker 1's");
    assert_eq!(w1.poll_transmit(now, &mut buf), None, "not sent during processing");
    assert_eq!(w0.handler().counters().handoff_out, 0);
    w0.flush_events();
    assert_eq!(w0.handler().counters().handoff_out, 1);
    let (port, _) = w1
        .poll_transmit(now, &mut buf)
        .expect("worker 1 forwards the handed SYN");
    assert_eq!(port, 1);
    assert_eq!(w1.handler().conns().len(), 1);
}

#[test]
fn full_table_drops_new_fullnat_flows() {
    let now = Instant::now();
    let mut s = stack(Setup {
        table: 1,
        ..Default::default()
    });
    assert_eq!(
        run(&mut s, now, 0, &from_client(Proto::Tcp, SYN, b"")).0,
        Verdict::Transmit(1)
    );
    let other = packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, sa([198, 18, 0, 2], 5), vip(), SYN, b"");
    assert_eq!(run(&mut s, now, 0, &other).0, Verdict::Drop(DropReason::ConnTableFull));
}

#[test]
fn two_workers_hand_packets_to_the_flow_owner() {
    let now = Instant::now();
    let (mut w0, mut w1) = two_workers(|_| Setup::default());
    let mut buf = vec![0u8; 2048];
    let mut handed = 0;
    for port in 0..16u16 {
        let c = sa([198, 18, 0, 1], 42000 + port);
        let syn = packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, c, vip(), SYN, b"");
        // Every SYN arrives at worker 0 (as if RSS put them all on queue 0).
        let (v, out) = run(&mut w0, now, 0, &syn);
        let (owner_out, owner) = match v {
            Verdict::Transmit(1) => (out, 0),
            Verdict::Consumed => {
                handed += 1;
                let (port, len) = w1
                    .poll_transmit(now, &mut buf)
                    .expect("worker 1 forwards the handed SYN");
                assert_eq!(port, 1);
                (buf[..len].to_vec(), 1)
            }
            other => panic!("unexpected {other:?}"),
        };
        let local = inspect(&owner_out).2;
        assert_eq!(
            usize::from(local.port() % 2),
            owner,
            "the owner picks a local port it owns"
        );
        // The backend's reply lands on the *other* worker's queue; it is handed back to the owner.
        let reply = packet(Proto::Tcp, B1_MAC, INT_MAC, inspect(&owner_out).3, local, SYNACK, b"");
        let (receiver, other) = if owner == 0 {
            (&mut w1, &mut w0)
        } else {
            (&mut w0, &mut w1)
        };
        assert_eq!(run(receiver, now, 1, &reply).0, Verdict::Consumed);
        let (port, len) = other.poll_transmit(now, &mut buf).expect("owner translates the reply");
        assert_eq!(port, 0);
        assert_eq!(inspect(&buf[..len]).3, c);
    }
    assert!(
        handed > 0 && handed < 16,
        "flows split between the two workers ({handed} of 16 handed)"
    );
    let total = w0.handler().conns().len() + w1.handler().conns().len();
    assert_eq!(total, 16, "each flow has exactly one entry, at its owner");
    assert_eq!(
        w0.counters().drops_of(DropReason::NoConnection) + w1.counters().drops_of(DropReason::NoConnection),
        0
    );
}

/// The web listener/group of these tests with the given servers (address, weight).
fn web(servers: &[(SocketAddrV4, u32)]) -> (ListenerConfig, GroupConfig) {
    web_with(servers, Proto::Tcp, Forwarding::Fullnat)
}

/// The web listener/group with a chosen protocol and forwarding method.
fn web_with(servers: &[(SocketAddrV4, u32)], protocol: Proto, forwarding: Forwarding) -> (ListenerConfig, GroupConfig) {
    let group = GroupConfig {
        name: "web".into(),
        servers: servers
            .iter()
            .map(|(a, w)| ServerConfig { addr: *a, weight: *w })
            .collect(),
        health_check: None,
        tls: None,
    };
    let listener = ListenerConfig {
        name: "web".into(),
        vip: *vip().ip(),
        port: vip().port(),
        protocol: protocol.into(),
        scheduler: SchedulerKind::Rr,
        forwarding,
        group: "web".into(),
        interface: None,
        rules: Vec::new(),
        sticky: None,
        hash: None,
        tls: None,
        syn_proxy: None,
        max_conns: None,
    };
    (listener, group)
}

/// Sends a new config to a running forwarder and lets it apply it.
fn reconfigure(
    s: &mut LocalStack<Forwarder>,
    tx: &crossbeam_channel::Sender<ControlMessage>,
    servers: &[(SocketAddrV4, u32)],
    policy: RemovedServerPolicy,
    now: Instant,
) {
    let (l, g) = web(servers);
    let layout = s.handler().layout().next(&[l], &[g], policy);
    apply(s, tx, layout, now);
}

/// Sends `layout` to a running forwarder and lets it apply it (one second after `now`).
fn apply(s: &mut LocalStack<Forwarder>, tx: &crossbeam_channel::Sender<ControlMessage>, layout: Layout, now: Instant) {
    let shape = layout.shape();
    let board = Arc::new(HealthBoard::new(0));
    tx.send(ControlMessage::Update(Box::new(ForwarderUpdate {
        maglev: Arc::new(MaglevTables::build(&layout, &board, None)),
        layout: Arc::new(layout),
        vip_ifaces: vec![0],
        board,
        counters: Arc::new(SharedL4Counters::new(&shape)),
        health: None,
        applied: None,
    })))
    .unwrap();
    s.handle_timeout(now + Duration::from_secs(1));
}

#[test]
fn live_reconfiguration_keeps_existing_flows_on_their_server() {
    let now = Instant::now();
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut s = stack_with_updates(Setup::default(), None, true, Some(rx));
    let flow = |port: u16| {
        packet(
            Proto::Tcp,
            CLIENT_MAC,
            EXT_MAC,
            sa([198, 18, 0, 1], port),
            vip(),
            SYN,
            b"",
        )
    };
    let data = |port: u16| {
        packet(
            Proto::Tcp,
            CLIENT_MAC,
            EXT_MAC,
            sa([198, 18, 0, 1], port),
            vip(),
            ACK,
            b"x",
        )
    };
    // Two flows: one per backend (rr).
    assert_eq!(inspect(&run(&mut s, now, 0, &flow(1)).1).3, backends()[0]);
    assert_eq!(inspect(&run(&mut s, now, 0, &flow(2)).1).3, backends()[1]);

    // Add a third server with weight 5 and drain the first: new flows avoid the drained one.
    let third = sa([198, 19, 0, 4], 80);
    s.neighbours().learn(now, 1, LIP, *third.ip(), B2_MAC, true);
    reconfigure(
        &mut s,
        &tx,
        &[(backends()[0], 0), (backends()[1], 1), (third, 5)],
        RemovedServerPolicy::Keep,
        now,
    );
    let later = now + Duration::from_secs(2);
    let new_targets: Vec<_> = (10..14)
        .map(|p| inspect(&run(&mut s, later, 0, &flow(p)).1).3)
        .collect();
    assert!(
        !new_targets.contains(&backends()[0]),
        "drained server got a new flow: {new_targets:?}"
    );
    assert!(new_targets.contains(&third));
    // Existing flows keep their servers, including the drained one.
    assert_eq!(inspect(&run(&mut s, later, 0, &data(1)).1).3, backends()[0]);
    assert_eq!(inspect(&run(&mut s, later, 0, &data(2)).1).3, backends()[1]);

    // Remove the second server with the keep policy: its flow continues.
    reconfigure(
        &mut s,
        &tx,
        &[(backends()[0], 1), (third, 1)],
        RemovedServerPolicy::Keep,
        later,
    );
    assert_eq!(run(&mut s, later, 0, &data(2)).0, Verdict::Transmit(1));
    assert_eq!(inspect(&run(&mut s, later, 0, &data(2)).1).3, backends()[1]);
    // Counters follow the slots: the second server's slot still counts its flow.
    assert_eq!(s.handler().counters().servers[0].len(), 3);

    // Now with the reset policy: the removed server's flow is refused (RST to the client).
    reconfigure(
        &mut s,
        &tx,
        &[(backends()[0], 1), (third, 1)],
        RemovedServerPolicy::Reset,
        later,
    );
    let (v, out) = run(&mut s, later, 0, &data(2));
    assert_eq!(v, Verdict::Transmit(0), "an RST back to the client");
    assert!(TcpPacket::new_checked(&out[ETH_HEADER_LEN + 20..]).unwrap().rst());
    assert_eq!(s.counters().drops_of(DropReason::ServerRemoved), 1);
    // Flows of servers still in the group are untouched.
    assert_eq!(inspect(&run(&mut s, later, 0, &data(1)).1).3, backends()[0]);
}

#[test]
fn removed_listener_refuses_new_flows_but_keeps_established_ones_while_its_vip_is_served() {
    let now = Instant::now();
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut s = stack_with_updates(Setup::default(), None, true, Some(rx));
    let syn = from_client(Proto::Tcp, SYN, b"");
    assert_eq!(run(&mut s, now, 0, &syn).0, Verdict::Transmit(1));
    // A layout without the listener.
    let layout = s.handler().layout().next(&[], &[], RemovedServerPolicy::Keep);
    apply(&mut s, &tx, layout, now);
    // Re-add ownership as if another listener still used the VIP (the stack would otherwise drop it).
    s.add_owned(0, *vip().ip());
    let later = now + Duration::from_secs(2);
    assert_eq!(
        run(&mut s, later, 0, &from_client(Proto::Tcp, ACK, b"x")).0,
        Verdict::Transmit(1),
        "established flow continues"
    );
    let other = packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, sa([198, 18, 0, 7], 7), vip(), SYN, b"");
    let (v, out) = run(&mut s, later, 0, &other);
    assert_eq!(v, Verdict::Transmit(0));
    assert!(
        TcpPacket::new_checked(&out[ETH_HEADER_LEN + 20..]).unwrap().rst(),
        "new flow refused"
    );
}

#[test]
fn synced_connection_continues_on_the_peer_without_rescheduling() {
    let now = Instant::now();
    // Node A forwards a flow; after 3 client packets it is exported.
    let mut a = stack(Setup::default());
    let (sync_tx, sync_rx) = crossbeam_channel::unbounded();
    a.handler_mut().enable_sync(sync_tx, SyncPolicy::default());
    let (_, out) = run(&mut a, now, 0, &from_client(Proto::Tcp, SYN, b""));
    let local = inspect(&out).2;
    run(
        &mut a,
        now,
        1,
        &packet(Proto::Tcp, B1_MAC, INT_MAC, backends()[0], local, SYNACK, b""),
    );
    run(&mut a, now, 0, &from_client(Proto::Tcp, ACK, b""));
    a.handler_mut().flush_sync();
    assert!(sync_rx.try_recv().is_err(), "2 client packets: below the threshold");
    run(&mut a, now, 0, &from_client(Proto::Tcp, ACK, b"data"));
    a.handler_mut().flush_sync();
    let Ok(SyncEvent::Upsert { conn, remaining }) = sync_rx.try_recv() else {
        panic!("no upsert after 3 packets")
    };
    assert_eq!(
        (conn.client, conn.backend, conn.local, conn.state),
        (client(), backends()[0], local, ConnState::Established)
    );
    assert!(remaining > Duration::from_secs(800));
    // A state change is synced again.
    run(&mut a, now, 0, &from_client(Proto::Tcp, 0x11, b""));
    a.handler_mut().flush_sync();
    assert!(matches!(sync_rx.try_recv(), Ok(SyncEvent::Upsert { conn, .. }) if conn.state == ConnState::FinWait));

    // Node B (same config, rr would pick server 0 first anyway: make it pick 1 by sending another flow first).
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut b = stack_with_updates(Setup::default(), None, true, Some(rx));
    run(
        &mut b,
        now,
        0,
        &packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, sa([198, 18, 0, 9], 9), vip(), SYN, b""),
    );
    tx.send(ControlMessage::Import(vec![(conn, remaining)])).unwrap();
    b.handle_timeout(now);
    // The backend's reply to the synced LIP:lport is translated back to the client by B.
    let (v, out) = run(
        &mut b,
        now,
        1,
        &packet(Proto::Tcp, B1_MAC, INT_MAC, backends()[0], local, ACK, b"reply"),
    );
    assert_eq!(v, Verdict::Transmit(0));
    assert_eq!((inspect(&out).2, inspect(&out).3), (vip(), client()));
    // The client's next packet goes to the same server and local port, not rescheduled.
    let (v, out) = run(&mut b, now, 0, &from_client(Proto::Tcp, ACK, b"more"));
    assert_eq!(v, Verdict::Transmit(1));
    assert_eq!((inspect(&out).2, inspect(&out).3), (local, backends()[0]));
    assert_eq!(b.handler().counters().imported, 1);
    // B never hands out the imported local port itself.
    for p in 0..200u16 {
        let (_, out) = run(
            &mut b,
            now,
            0,
            &packet(
                Proto::Tcp,
                CLIENT_MAC,
                EXT_MAC,
                sa([198, 18, 0, 3], 3000 + p),
                vip(),
                SYN,
                b"",
            ),
        );
        assert_ne!(inspect(&out).2, local, "imported local port reused");
    }
    // A delete from the peer removes it.
    tx.send(ControlMessage::Forget(vec![conn.client_key()])).unwrap();
    b.handle_timeout(now);
    let (v, _) = run(&mut b, now, 0, &from_client(Proto::Tcp, ACK, b"late"));
    assert_eq!(v, Verdict::Drop(DropReason::NoConnection));
}

/// A sync policy for the refresh tests: threshold 3, refresh 30 s (default timeouts: established 900 s).
fn refresh_30s() -> SyncPolicy {
    SyncPolicy {
        threshold: 3,
        refresh: Duration::from_secs(30),
    }
}

/// Opens the FULLNAT flow of `client()` at `now` (SYN, SYN-ACK, ACK, data: announced at the data, the 3rd
/// client packet); returns its local address.
fn open_synced_flow(s: &mut LocalStack<Forwarder>, now: Instant) -> SocketAddrV4 {
    let (_, out) = run(s, now, 0, &from_client(Proto::Tcp, SYN, b""));
    let local = inspect(&out).2;
    let synack = packet(Proto::Tcp, B1_MAC, INT_MAC, backends()[0], local, SYNACK, b"");
    run(s, now, 1, &synack);
    run(s, now, 0, &from_client(Proto::Tcp, ACK, b""));
    run(s, now, 0, &from_client(Proto::Tcp, ACK, b"data"));
    local
}

/// The upserts sent so far (the worker's turn flushes the outbox first), as (client, state, remaining).
fn upserts(
    s: &mut LocalStack<Forwarder>,
    rx: &crossbeam_channel::Receiver<SyncEvent>,
) -> Vec<(SocketAddrV4, ConnState, Duration)> {
    s.handler_mut().flush_sync();
    rx.try_iter()
        .filter_map(|e| match e {
            SyncEvent::Upsert { conn, remaining } => Some((conn.client, conn.state, remaining)),
            SyncEvent::Delete(_) => None,
        })
        .collect()
}

#[test]
fn a_long_lived_flow_with_traffic_is_refreshed_every_period_and_an_idle_one_is_not() {
    let mut s = stack(Setup::default());
    let (tx, rx) = crossbeam_channel::unbounded();
    s.handler_mut().enable_sync(tx, refresh_30s());
    let t0 = Instant::now();
    let sec = Duration::from_secs;
    let local = open_synced_flow(&mut s, t0);
    // A second flow, announced at t0 too, then idle.
    let idle = sa([198, 18, 0, 7], 7000);
    for flags in [SYN, ACK, ACK] {
        run(
            &mut s,
            t0,
            0,
            &packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, idle, vip(), flags, b""),
        );
    }
    assert_eq!(
        upserts(&mut s, &rx),
        vec![
            (client(), ConnState::Established, sec(900)),
            (idle, ConnState::Established, sec(900))
        ],
        "both announced at the threshold"
    );
    // The first flow carries a packet every 10 s for 120 s (client data, or server data at 30 and 90 s),
    // with the housekeeping running: it is announced again at 30, 60, 90 and 120 s, each time with its full
    // timeout left; the idle flow never.
    let reply = packet(Proto::Tcp, B1_MAC, INT_MAC, backends()[0], local, ACK, b"down");
    let mut announced = Vec::new();
    for step in 1..=12u64 {
        let now = t0 + sec(10 * step);
        if step % 6 == 3 {
            run(&mut s, now, 1, &reply);
        } else {
            run(&mut s, now, 0, &from_client(Proto::Tcp, ACK, b"more"));
        }
        s.handle_timeout(now);
        for (c, state, remaining) in upserts(&mut s, &rx) {
            assert_eq!((c, state, remaining), (client(), ConnState::Established, sec(900)));
            announced.push(10 * step);
        }
    }
    assert_eq!(announced, vec![30, 60, 90, 120]);
    // A state change is announced at once, 5 s after the last refresh.
    run(&mut s, t0 + sec(125), 0, &from_client(Proto::Tcp, 0x11, b""));
    assert_eq!(upserts(&mut s, &rx), vec![(client(), ConnState::FinWait, sec(120))]);
    assert_eq!(s.handler().counters().sync_dropped, 0);
}

#[test]
fn a_udp_flow_is_refreshed_too() {
    let mut s = stack(Setup {
        protocol: Proto::Udp,
        ..Setup::default()
    });
    let (tx, rx) = crossbeam_channel::unbounded();
    s.handler_mut().enable_sync(tx, refresh_30s());
    let t0 = Instant::now();
    let mut announced = Vec::new();
    for step in 0..=7u64 {
        let now = t0 + Duration::from_secs(10 * step);
        run(&mut s, now, 0, &from_client(Proto::Udp, 0, b"q"));
        announced.extend(
            upserts(&mut s, &rx)
                .into_iter()
                .map(|(_, state, remaining)| (10 * step, state, remaining)),
        );
    }
    let udp = |at| (at, ConnState::Udp, Duration::from_secs(300));
    // Threshold at the 3rd datagram (20 s), then every 30 s.
    assert_eq!(announced, vec![udp(20), udp(50)]);
}

#[test]
fn announcements_wait_in_the_outbox_while_the_sync_channel_is_full() {
    let mut s = stack(Setup::default());
    // Room for one event in the channel: the threshold upsert fills it until the test drains it.
    let (tx, rx) = crossbeam_channel::bounded(1);
    s.handler_mut().enable_sync(tx, refresh_30s());
    let t0 = Instant::now();
    let sec = Duration::from_secs;
    open_synced_flow(&mut s, t0);
    s.handler_mut().flush_sync();
    // The refresh at 30 s and a state change at 31 s find the channel full: they wait in the outbox, nothing
    // is lost or counted, and the next packet does not announce again (both were queued).
    run(&mut s, t0 + sec(30), 0, &from_client(Proto::Tcp, ACK, b"more"));
    run(&mut s, t0 + sec(31), 0, &from_client(Proto::Tcp, 0x11, b""));
    run(&mut s, t0 + sec(32), 0, &from_client(Proto::Tcp, ACK, b""));
    assert_eq!(s.handler().counters().sync_dropped, 0);
    let mut seen = vec![];
    for _ in 0..3 {
        seen.extend(upserts(&mut s, &rx)); // one per flush: the channel holds one
    }
    assert_eq!(
        seen,
        vec![
            (client(), ConnState::Established, sec(900)),
            (client(), ConnState::Established, sec(900)),
            (client(), ConnState::FinWait, sec(120)),
        ]
    );
}

#[test]
fn an_announcement_that_cannot_be_queued_is_counted_and_retried_on_the_next_packet() {
    let mut s = stack(Setup::default());
    // An outbox of one event and a channel of one: the threshold upsert fills both until the test drains them.
    let (tx, rx) = crossbeam_channel::bounded(1);
    s.handler_mut().enable_sync_with_capacity(tx, refresh_30s(), 1);
    let t0 = Instant::now();
    let sec = Duration::from_secs;
    open_synced_flow(&mut s, t0);
    s.handler_mut().flush_sync();
    let data = from_client(Proto::Tcp, ACK, b"more");
    run(&mut s, t0 + sec(30), 0, &data); // the refresh: queued in the outbox
    run(&mut s, t0 + sec(31), 0, &from_client(Proto::Tcp, 0x11, b"")); // the state change: outbox full
    assert_eq!(s.handler().counters().sync_dropped, 1);
    assert_eq!(upserts(&mut s, &rx), vec![(client(), ConnState::Established, sec(900))]);
    assert_eq!(upserts(&mut s, &rx), vec![(client(), ConnState::Established, sec(900))]);
    assert!(upserts(&mut s, &rx).is_empty(), "the state change was not queued");
    // The next packet announces it.
    run(&mut s, t0 + sec(32), 0, &data);
    assert_eq!(
        upserts(&mut s, &rx),
        vec![(client(), ConnState::FinWait, sec(120))],
        "retried"
    );
    assert_eq!(s.handler().counters().sync_dropped, 1);
}

#[test]
fn fullnat_uses_the_next_local_ip_when_one_runs_out_of_ports() {
    let now = Instant::now();
    let second_lip = Ipv4Addr::new(198, 19, 0, 11);
    // One server takes new flows: ports are counted per (local IP, server).
    let mut s = stack(Setup {
        int_addresses: &["198.19.0.10/24", "198.19.0.11/24"],
        local_ports: (10_000, 10_001),
        weights: [1, 0],
        ..Default::default()
    });
    let sources: Vec<Ipv4Addr> = (0..4u16)
        .map(|p| {
            let syn = packet(
                Proto::Tcp,
                CLIENT_MAC,
                EXT_MAC,
                sa([198, 18, 0, 1], 50_000 + p),
                vip(),
                SYN,
                b"",
            );
            *inspect(&run(&mut s, now, 0, &syn).1).2.ip()
        })
        .collect();
    assert_eq!(
        sources,
        vec![LIP, LIP, second_lip, second_lip],
        "2 ports per local IP and server"
    );
    let fifth = packet(
        Proto::Tcp,
        CLIENT_MAC,
        EXT_MAC,
        sa([198, 18, 0, 1], 50_004),
        vip(),
        SYN,
        b"",
    );
    assert_eq!(
        run(&mut s, now, 0, &fifth).0,
        Verdict::Drop(DropReason::LocalPortsExhausted)
    );
}

/// Runs `batch` through `s` as a worker does with prefetching: every frame prefetched, then each processed.
fn run_batch(s: &mut LocalStack<Forwarder>, now: Instant, batch: &[(usize, Vec<u8>)]) -> Vec<(Verdict, Vec<u8>)> {
    let mut bufs: Vec<Vec<u8>> = batch
        .iter()
        .map(|(_, p)| {
            let mut b = vec![0u8; 2048];
            b[..p.len()].copy_from_slice(p);
            b
        })
        .collect();
    for ((port, p), b) in batch.iter().zip(&bufs) {
        s.prefetch(*port, &b[..p.len()]);
    }
    batch
        .iter()
        .zip(&mut bufs)
        .map(|((port, p), b)| {
            let mut f = Frame::new(b, p.len());
            let v = s.process(now, *port, &mut f);
            let len = f.len();
            (v, b[..len].to_vec())
        })
        .collect()
}

#[test]
fn prefetched_batches_give_the_same_results_as_single_packets() {
    let now = Instant::now();
    let (mut single, mut batched) = (stack(Setup::default()), stack(Setup::default()));
    let client_at = |i: u16| sa([198, 18, 0, 1 + (i % 3) as u8], 40_000 + i);
    let from = |i: u16, flags: u8, payload: &[u8]| {
        packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, client_at(i), vip(), flags, payload)
    };
    // Twenty flows opened one packet at a time on both stacks: same servers and local ports.
    let mut replies = vec![];
    for i in 0..20 {
        let (a, b) = (
            run(&mut single, now, 0, &from(i, SYN, b"")),
            run(&mut batched, now, 0, &from(i, SYN, b"")),
        );
        assert_eq!(a, b);
        let (_, _, local, backend, _) = inspect(&a.1);
        let mac = if backend == backends()[0] { B1_MAC } else { B2_MAC };
        replies.push(packet(Proto::Tcp, mac, INT_MAC, backend, local, SYNACK, b""));
    }
    let mut corrupt = from(3, ACK, b"x");
    corrupt[ETH_HEADER_LEN + 10] ^= 0xff; // IPv4 checksum: dropped by the stack after being prefetched
    let used: Vec<u16> = replies
        .iter()
        .map(|r| u16::from_be_bytes([r[ETH_HEADER_LEN + 22], r[ETH_HEADER_LEN + 23]]))
        .collect();
    // Sequentially allocated ports: the top of the range is free (also after the batch's new flows).
    let free_port = (10_000..=60_999).rev().find(|p| !used.contains(p)).unwrap();
    let unknown_reply = packet(
        Proto::Tcp,
        B1_MAC,
        INT_MAC,
        backends()[0],
        SocketAddrV4::new(LIP, free_port),
        ACK,
        b"",
    );
    // A batch mixing client data, backend replies, new flows, a packet for no flow, drops and a truncated frame.
    let mut batch: Vec<(usize, Vec<u8>)> = vec![];
    for i in 0..20u16 {
        batch.push((0, from(i, ACK, b"data")));
        if i % 4 == 0 {
            batch.push((1, replies[i as usize].clone()));
        }
        if i % 5 == 0 {
            batch.push((0, corrupt.clone()));
            batch.push((0, from(100 + i, SYN, b"")));
        }
    }
    batch.push((1, unknown_reply));
    batch.push((0, from(7, ACK, b"again")));
    batch.push((0, from(7, ACK, b"again")[..ETH_HEADER_LEN + 10].to_vec()));
    let expected: Vec<(Verdict, Vec<u8>)> = batch.iter().map(|(port, p)| run(&mut single, now, *port, p)).collect();
    let got = run_batch(&mut batched, now, &batch);
    assert_eq!(got, expected);
    assert!(
        expected.iter().filter(|(v, _)| *v == Verdict::Transmit(1)).count() >= 24,
        "data and new flows forwarded"
    );
    assert!(
        expected.iter().any(|(v, _)| *v == Verdict::Transmit(0)),
        "replies forwarded"
    );
    let verdicts: Vec<Verdict> = expected.iter().map(|e| e.0).collect();
    assert!(
        verdicts.contains(&Verdict::Drop(DropReason::NoConnection)),
        "{verdicts:?}"
    );
    // A batch prefetched twice over (the first never processed) and a packet processed without a prefetch.
    let again: Vec<(usize, Vec<u8>)> = (0..20).map(|i| (0, from(i, ACK, b"more"))).collect();
    for (port, p) in &again {
        batched.prefetch(*port, p);
    }
    let expected: Vec<(Verdict, Vec<u8>)> = again.iter().map(|(port, p)| run(&mut single, now, *port, p)).collect();
    assert_eq!(run_batch(&mut batched, now, &again), expected);
    assert_eq!(
        run(&mut batched, now, 0, &from(9, ACK, b"")),
        run(&mut single, now, 0, &from(9, ACK, b""))
    );
    assert_eq!(single.handler().conns().len(), batched.handler().conns().len());
}

#[test]
fn dumps_and_exports_walk_a_large_table_a_chunk_per_turn() {
    use super::scan::SLOTS_PER_TURN;
    let (tx, rx) = crossbeam_channel::unbounded();
    let table = 2 * SLOTS_PER_TURN + 100; // three turns' worth of slots
    let mut s = stack_with_updates(
        Setup {
            table,
            ..Default::default()
        },
        None,
        true,
        Some(rx),
    );
    let now = Instant::now();
    for port in [40_000, 40_001, 40_002] {
        let syn = packet(
            Proto::Tcp,
            CLIENT_MAC,
            EXT_MAC,
            sa([198, 18, 0, 1], port),
            vip(),
            SYN,
            b"",
        );
        assert_eq!(run(&mut s, now, 0, &syn).0, Verdict::Transmit(1));
    }
    let (dump_tx, dump_rx) = crossbeam_channel::bounded(1);
    let (export_tx, export_rx) = crossbeam_channel::bounded(1);
    let state = Some("syn_recv".to_string());
    tx.send(ControlMessage::DumpConns {
        filter: ConnFilter {
            state,
            ..Default::default()
        },
        limit: 2,
        reply: dump_tx,
    })
    .unwrap();
    tx.send(ControlMessage::Export { reply: export_tx }).unwrap();
    // The dump's limit is reached in the first chunk (the entries sit in the first slots); the export walks
    // the whole table: three turns, each asking for the next one at once.
    s.handle_timeout(now);
    assert_eq!(dump_rx.try_recv().map(|d| d.len()), Ok(2), "limit 2");
    let mut turns = 0;
    let export = loop {
        assert!(
            s.poll_timeout().is_some_and(|t| t <= now),
            "a walk in progress asks for the next turn"
        );
        s.handle_timeout(now);
        turns += 1;
        if let Ok(all) = export_rx.try_recv() {
            break all;
        }
        assert!(turns < 10, "the export never completed");
    };
    assert_eq!(turns, 3);
    let mut clients: Vec<u16> = export.iter().map(|(c, _)| c.client.port()).collect();
    clients.sort();
    assert_eq!(clients, vec![40_000, 40_001, 40_002]);
    assert!(export.iter().all(|(_, left)| *left == Duration::from_secs(60)));
}

#[test]
fn packets_that_cannot_open_a_flow_are_counted_drops_and_get_no_entry() {
    let now = Instant::now();
    let mut s = stack(Setup::default());
    let client_at = |ip: [u8; 4]| sa(ip, 40_000);
    let syn_from = |src| packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, src, vip(), SYN, b"");
    let mut cases: Vec<(Vec<u8>, DropReason)> = vec![
        (syn_from(client_at([127, 0, 0, 1])), DropReason::InvalidSource),
        (syn_from(client_at([0, 0, 0, 0])), DropReason::InvalidSource),
        (syn_from(client_at([224, 0, 0, 5])), DropReason::InvalidSource),
        (syn_from(client_at([255, 255, 255, 255])), DropReason::InvalidSource),
        (syn_from(client_at([198, 18, 0, 10])), DropReason::InvalidSource), // the appliance's own address
        (
            packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, client(), vip(), 0x03, b""), // SYN+FIN
            DropReason::InvalidTcpFlags,
        ),
        (
            packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, client(), vip(), 0x06, b""), // SYN+RST
            DropReason::InvalidTcpFlags,
        ),
    ];
    let mut bad_checksum = syn_from(client());
    bad_checksum[ETH_HEADER_LEN + 20 + 16] ^= 0x5a;
    cases.push((bad_checksum, DropReason::BadL4Checksum));
    let mut short_offset = syn_from(client());
    short_offset[ETH_HEADER_LEN + 20 + 12] = 4 << 4;
    cases.push((short_offset, DropReason::MalformedTcp));
    for (frame, reason) in &cases {
        assert_eq!(run(&mut s, now, 0, frame).0, Verdict::Drop(*reason), "{reason:?}");
    }
    assert_eq!(s.handler().conns().len(), 0, "no entry for any of them");
    assert_eq!(s.local_ports().occupancy().in_use, 0, "no local port either");
    // A valid SYN opens its flow.
    assert_eq!(run(&mut s, now, 0, &syn_from(client())).0, Verdict::Transmit(1));
    assert_eq!(s.handler().conns().len(), 1);
    // UDP: a datagram whose checksum does not verify opens no flow; one without a checksum (0) does.
    let mut u = stack(Setup {
        protocol: Proto::Udp,
        ..Default::default()
    });
    let mut bad_udp = from_client(Proto::Udp, 0, b"query");
    *bad_udp.last_mut().unwrap() ^= 0x01;
    assert_eq!(
        run(&mut u, now, 0, &bad_udp).0,
        Verdict::Drop(DropReason::BadL4Checksum)
    );
    assert_eq!(u.handler().conns().len(), 0);
    let mut unchecked = from_client(Proto::Udp, 0, b"query");
    unchecked[ETH_HEADER_LEN + 20 + 6..ETH_HEADER_LEN + 20 + 8].copy_from_slice(&[0, 0]);
    assert_eq!(run(&mut u, now, 0, &unchecked).0, Verdict::Transmit(1));
    assert_eq!(u.handler().conns().len(), 1);
}

/// A TCP frame with the given sequence and acknowledgement numbers (and options), checksums valid.
#[allow(clippy::too_many_arguments)]
fn segment(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    macs: (EthernetAddress, EthernetAddress),
    flags: u8,
    seq: u32,
    ack: u32,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    use smoltcp::wire::{IpAddress, TcpSeqNumber};
    let mut body = options.to_vec();
    body.extend_from_slice(payload);
    let mut f = packet(Proto::Tcp, macs.0, macs.1, src, dst, flags, &body);
    let at = ETH_HEADER_LEN + 20;
    let mut t = TcpPacket::new_unchecked(&mut f[at..]);
    t.set_header_len(20 + options.len() as u8);
    t.set_seq_number(TcpSeqNumber(seq as i32));
    t.set_ack_number(TcpSeqNumber(ack as i32));
    t.fill_checksum(&IpAddress::Ipv4(*src.ip()), &IpAddress::Ipv4(*dst.ip()));
    f
}

/// The timestamps option (TSval, TSecr) of an output TCP frame.
fn timestamps_of(out: &[u8]) -> Option<(u32, u32)> {
    synproxy::timestamps_option(&out[ETH_HEADER_LEN + 20..])
}

/// The sequence number, acknowledgement number, flags byte and MSS option of an output TCP frame.
fn tcp_of(out: &[u8]) -> (u32, u32, u8, Option<u16>) {
    let t = &out[ETH_HEADER_LEN + 20..];
    let seg = synproxy::Segment::of(out, ETH_HEADER_LEN + 20);
    (seg.seq, seg.ack, seg.flags.bits(), synproxy::mss_option(t))
}

const CLIENT_ISN: u32 = 0xfff0_0000;
const SERVER_ISN: u32 = 0x1234_5678;

fn proxied(mode: crate::config::SynProxyMode) -> LocalStack<Forwarder> {
    stack(Setup {
        syn_proxy: mode,
        ..Default::default()
    })
}

fn client_segment(flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    segment(client(), vip(), (CLIENT_MAC, EXT_MAC), flags, seq, ack, &[], payload)
}

/// SYN (MSS 1400) → the proxy's SYN-ACK: its cookie and what it looked like.
fn cookie_handshake(s: &mut LocalStack<Forwarder>, now: Instant) -> u32 {
    let syn = segment(
        client(),
        vip(),
        (CLIENT_MAC, EXT_MAC),
        SYN,
        CLIENT_ISN,
        0,
        &[2, 4, 0x05, 0x78],
        b"",
    );
    let (v, out) = run(s, now, 0, &syn);
    assert_eq!(v, Verdict::Transmit(0), "answered out where the SYN came in");
    let (edst, esrc, src, dst, ok) = inspect(&out);
    assert!(ok, "the SYN-ACK's checksums verify");
    assert_eq!((edst, esrc, src, dst), (CLIENT_MAC, EXT_MAC, vip(), client()));
    let (cookie, ack, flags, mss) = tcp_of(&out);
    assert_eq!((ack, flags, mss), (CLIENT_ISN.wrapping_add(1), SYNACK, Some(1300)));
    cookie
}

#[test]
fn syn_proxy_answers_syns_with_cookies_and_keeps_nothing() {
    let now = Instant::now() + Duration::from_millis(1);
    let mut s = proxied(crate::config::SynProxyMode::Always);
    s.handle_timeout(now);
    let mut cookies = vec![];
    for i in 0..100u16 {
        let src = sa([198, 18, 7, (i % 200) as u8 + 1], 2000 + i);
        let syn = segment(src, vip(), (CLIENT_MAC, EXT_MAC), SYN, u32::from(i) * 7919, 0, &[], b"");
        let (v, out) = run(&mut s, now, 0, &syn);
        assert_eq!(v, Verdict::Transmit(0));
        assert!(inspect(&out).4);
        cookies.push(tcp_of(&out).0);
    }
    cookies.sort_unstable();
    cookies.dedup();
    assert_eq!(cookies.len(), 100, "every flow its own cookie");
    let f = s.handler();
    assert_eq!(f.conns().len(), 0, "no entry");
    assert_eq!(s.local_ports().occupancy().in_use, 0, "no local port");
    assert_eq!(f.counters().listeners[0].syn_cookies_sent, 100);
    assert_eq!(
        f.counters().servers[0][0].conns_total + f.counters().servers[0][1].conns_total,
        0,
        "no server"
    );
}

#[test]
fn syn_proxy_opens_the_server_connection_on_a_valid_cookie_and_translates_both_ways() {
    let now = Instant::now() + Duration::from_millis(1);
    let mut s = proxied(crate::config::SynProxyMode::Always);
    s.handle_timeout(now);
    let cookie = cookie_handshake(&mut s, now);

    // The client's ACK of the cookie: scheduled now, and sent on as the server's SYN with the client's ISN and MSS.
    let ack = client_segment(ACK, CLIENT_ISN.wrapping_add(1), cookie.wrapping_add(1), b"");
    let (v, out) = run(&mut s, now, 0, &ack);
    assert_eq!(v, Verdict::Transmit(1));
    let (edst, _, local, dst, ok) = inspect(&out);
    assert!(ok);
    assert_eq!((edst, dst, *local.ip()), (B1_MAC, backends()[0], LIP));
    assert_eq!(tcp_of(&out), (CLIENT_ISN, 0, SYN, Some(1300)));
    assert_eq!(s.handler().counters().listeners[0].syn_cookies_valid, 1);
    assert_eq!(s.handler().conns().len(), 1);
    assert_eq!(s.handler().listeners[0].half_open, 1);

    // The first data the client sends before the server answers is held; more is dropped (it retransmits).
    let early = client_segment(ACK | 0x08, CLIENT_ISN.wrapping_add(1), cookie.wrapping_add(1), b"GET /");
    assert_eq!(run(&mut s, now, 0, &early).0, Verdict::Consumed);
    let more = client_segment(ACK | 0x08, CLIENT_ISN.wrapping_add(6), cookie.wrapping_add(1), b"x");
    assert_eq!(run(&mut s, now, 0, &more).0, Verdict::Drop(DropReason::SynProxyPending));
    let bare = client_segment(ACK, CLIENT_ISN.wrapping_add(1), cookie.wrapping_add(1), b"");
    assert_eq!(
        run(&mut s, now, 0, &bare).0,
        Verdict::Drop(DropReason::SynProxyPending),
        "a bare ACK is not held"
    );

    // The server's SYN-ACK is answered by xlb: the server's handshake completes, the client sees nothing.
    let synack = segment(
        backends()[0],
        local,
        (B1_MAC, INT_MAC),
        SYNACK,
        SERVER_ISN,
        CLIENT_ISN.wrapping_add(1),
        &[2, 4, 5, 0xb4],
        b"",
    );
    let (v, out) = run(&mut s, now, 1, &synack);
    assert_eq!(v, Verdict::Transmit(1), "back to the server");
    let (_, _, src, dst, ok) = inspect(&out);
    assert!(ok);
    assert_eq!((src, dst), (local, backends()[0]));
    assert_eq!(
        tcp_of(&out),
        (CLIENT_ISN.wrapping_add(1), SERVER_ISN.wrapping_add(1), ACK, None),
        "the held segment completes the server's handshake, its ack in the server's space"
    );
    assert!(out.ends_with(b"GET /"));
    assert_eq!(s.handler().held.len(), 0);
    let c = *s.handler().conns().iter().next().unwrap();
    assert_eq!(
        (c.state, c.proxy),
        (ConnState::Established, crate::conn::ProxyPhase::Translating)
    );
    assert_eq!(s.handler().listeners[0].half_open, 0);

    // Client → server: the acknowledgement moves into the server's space, checksum still valid.
    let data = client_segment(
        ACK | 0x08,
        CLIENT_ISN.wrapping_add(1),
        cookie.wrapping_add(1),
        b"GET / HTTP/1.0\r\n\r\n",
    );
    let (v, out) = run(&mut s, now, 0, &data);
    assert_eq!(v, Verdict::Transmit(1));
    assert!(inspect(&out).4, "checksum after NAT and ack translation");
    assert_eq!(
        tcp_of(&out).0..=tcp_of(&out).1,
        CLIENT_ISN.wrapping_add(1)..=SERVER_ISN.wrapping_add(1)
    );
    assert!(out.ends_with(b"GET / HTTP/1.0\r\n\r\n"));

    // Server → client: the sequence number moves into the cookie's space.
    let reply = segment(
        backends()[0],
        local,
        (B1_MAC, INT_MAC),
        ACK | 0x08,
        SERVER_ISN.wrapping_add(1),
        CLIENT_ISN.wrapping_add(19),
        &[],
        b"HTTP/1.0 200 OK\r\n\r\n",
    );
    let (v, out) = run(&mut s, now, 1, &reply);
    assert_eq!(v, Verdict::Transmit(0));
    let (_, _, src, dst, ok) = inspect(&out);
    assert!(ok, "checksum after NAT and seq translation");
    assert_eq!((src, dst), (vip(), client()));
    assert_eq!(
        (tcp_of(&out).0, tcp_of(&out).1),
        (cookie.wrapping_add(1), CLIENT_ISN.wrapping_add(19))
    );

    // An RST from the client carries an ack too: translated the same way.
    let rst = client_segment(0x14, CLIENT_ISN.wrapping_add(19), cookie.wrapping_add(21), b"");
    let (_, out) = run(&mut s, now, 0, &rst);
    assert!(inspect(&out).4);
    assert_eq!(tcp_of(&out).1, SERVER_ISN.wrapping_add(21));
}

/// Timestamps run end to end under the SYN proxy: the SYN-ACK echoes the client's TSval with TSval 0, the
/// server's SYN carries the client's TSval, the ACK that completes the server's handshake echoes the server's,
/// and nothing of them is translated afterwards. A SYN without timestamps gets none.
#[test]
fn syn_proxy_keeps_the_clients_timestamps_end_to_end() {
    const CLIENT_TS: u32 = 0x0100_0000;
    const SERVER_TS: u32 = 0x7000_0000;
    let ts = |tsval: u32, tsecr: u32| {
        let mut o = vec![1, 1, 8, 10];
        o.extend_from_slice(&tsval.to_be_bytes());
        o.extend_from_slice(&tsecr.to_be_bytes());
        o
    };
    let now = Instant::now() + Duration::from_millis(1);
    let mut s = proxied(crate::config::SynProxyMode::Always);
    s.handle_timeout(now);

    let mut opts = vec![2, 4, 0x05, 0x78];
    opts.extend(ts(CLIENT_TS, 0));
    let syn = segment(client(), vip(), (CLIENT_MAC, EXT_MAC), SYN, CLIENT_ISN, 0, &opts, b"");
    let (_, out) = run(&mut s, now, 0, &syn);
    assert!(inspect(&out).4, "the SYN-ACK's checksums verify with its options");
    assert_eq!(tcp_of(&out).3, Some(1300));
    assert_eq!(
        timestamps_of(&out),
        Some((0, CLIENT_TS)),
        "TSval 0, the client's echoed"
    );
    let cookie = tcp_of(&out).0;

    // The client's ACK echoes TSval 0: the server's SYN carries the client's clock.
    let ack = segment(
        client(),
        vip(),
        (CLIENT_MAC, EXT_MAC),
        ACK,
        CLIENT_ISN.wrapping_add(1),
        cookie.wrapping_add(1),
        &ts(CLIENT_TS + 1, 0),
        b"",
    );
    let (v, out) = run(&mut s, now, 0, &ack);
    assert_eq!(v, Verdict::Transmit(1));
    let (_, _, local, _, ok) = inspect(&out);
    assert!(ok);
    assert_eq!(tcp_of(&out), (CLIENT_ISN, 0, SYN, Some(1300)));
    assert_eq!(timestamps_of(&out), Some((CLIENT_TS + 1, 0)));

    // The server answers with its own clock: xlb's ACK completes its handshake with both values.
    let synack = segment(
        backends()[0],
        local,
        (B1_MAC, INT_MAC),
        SYNACK,
        SERVER_ISN,
        CLIENT_ISN.wrapping_add(1),
        &ts(SERVER_TS, CLIENT_TS + 1),
        b"",
    );
    let (v, out) = run(&mut s, now, 1, &synack);
    assert_eq!(v, Verdict::Transmit(1));
    assert!(inspect(&out).4);
    assert_eq!(tcp_of(&out).2, ACK);
    assert_eq!(timestamps_of(&out), Some((CLIENT_TS + 1, SERVER_TS)));

    // Data both ways: sequence space translated, timestamps as they came.
    let reply = segment(
        backends()[0],
        local,
        (B1_MAC, INT_MAC),
        ACK | 0x08,
        SERVER_ISN.wrapping_add(1),
        CLIENT_ISN.wrapping_add(1),
        &ts(SERVER_TS + 5, CLIENT_TS + 1),
        b"hello",
    );
    let (v, out) = run(&mut s, now, 1, &reply);
    assert_eq!(v, Verdict::Transmit(0));
    assert!(inspect(&out).4);
    assert_eq!(tcp_of(&out).0, cookie.wrapping_add(1));
    assert_eq!(timestamps_of(&out), Some((SERVER_TS + 5, CLIENT_TS + 1)));
    let data = segment(
        client(),
        vip(),
        (CLIENT_MAC, EXT_MAC),
        ACK | 0x08,
        CLIENT_ISN.wrapping_add(1),
        cookie.wrapping_add(6),
        &ts(CLIENT_TS + 9, SERVER_TS + 5),
        b"GET /",
    );
    let (v, out) = run(&mut s, now, 0, &data);
    assert_eq!(v, Verdict::Transmit(1));
    assert!(inspect(&out).4);
    assert_eq!(tcp_of(&out).1, SERVER_ISN.wrapping_add(6));
    assert_eq!(timestamps_of(&out), Some((CLIENT_TS + 9, SERVER_TS + 5)));

    // A SYN without timestamps: an MSS alone.
    let plain = segment(
        sa([198, 18, 7, 9], 4000),
        vip(),
        (CLIENT_MAC, EXT_MAC),
        SYN,
        77,
        0,
        &[2, 4, 5, 0xb4],
        b"",
    );
    let (_, out) = run(&mut s, now, 0, &plain);
    assert_eq!((tcp_of(&out).3, timestamps_of(&out)), (Some(1460), None));
    assert_eq!(out.len(), ETH_HEADER_LEN + 20 + 24);
}

#[test]
fn wrong_and_expired_cookies_are_dropped_and_counted_without_entry_or_port() {
    let mut s = proxied(crate::config::SynProxyMode::Always);
    // Taken after the stack is built: the cookie periods count from its creation, and a `now` before it would
    // put `late` below (at the end of the cookie's next period, where it is still valid) on a slow machine.
    let now = Instant::now() + Duration::from_millis(1);
    s.handle_timeout(now);
    let cookie = cookie_handshake(&mut s, now);
    for bad in [cookie ^ 0x40, cookie.wrapping_add(1), 0x0bad_c0de] {
        let ack = client_segment(ACK, CLIENT_ISN.wrapping_add(1), bad.wrapping_add(1), b"");
        assert_eq!(run(&mut s, now, 0, &ack).0, Verdict::Drop(DropReason::SynCookieInvalid));
    }
    // Another ISN than the SYN's: not this handshake's cookie.
    let ack = client_segment(ACK, CLIENT_ISN.wrapping_add(2), cookie.wrapping_add(1), b"");
    assert_eq!(run(&mut s, now, 0, &ack).0, Verdict::Drop(DropReason::SynCookieInvalid));
    // The right cookie after two cookie periods: expired.
    let late = now + 2 * synproxy::COOKIE_PERIOD;
    let ack = client_segment(ACK, CLIENT_ISN.wrapping_add(1), cookie.wrapping_add(1), b"");
    assert_eq!(
        run(&mut s, late, 0, &ack).0,
        Verdict::Drop(DropReason::SynCookieInvalid)
    );
    let f = s.handler();
    assert_eq!(f.conns().len(), 0);
    assert_eq!(s.local_ports().occupancy().in_use, 0);
    assert_eq!(f.counters().listeners[0].drops[DropReason::SynCookieInvalid.index()], 5);
    assert_eq!(s.counters().drops_of(DropReason::SynCookieInvalid), 5);
}

#[test]
fn a_server_refusing_the_proxied_connection_resets_the_client_at_its_expected_sequence() {
    let now = Instant::now() + Duration::from_millis(1);
    let mut s = proxied(crate::config::SynProxyMode::Always);
    s.handle_timeout(now);
    let cookie = cookie_handshake(&mut s, now);
    let ack = client_segment(ACK, CLIENT_ISN.wrapping_add(1), cookie.wrapping_add(1), b"");
    let (_, out) = run(&mut s, now, 0, &ack);
    let local = inspect(&out).2;
    let rst = segment(
        backends()[0],
        local,
        (B1_MAC, INT_MAC),
        0x14,
        0,
        CLIENT_ISN.wrapping_add(1),
        &[],
        b"",
    );
    let (v, out) = run(&mut s, now, 1, &rst);
    assert_eq!(v, Verdict::Transmit(0));
    assert!(inspect(&out).4);
    assert_eq!(
        tcp_of(&out).0,
        cookie.wrapping_add(1),
        "the sequence number the client expects"
    );
    assert_eq!(s.handler().conns().iter().next().unwrap().state, ConnState::Close);
}

#[test]
fn syn_proxy_off_and_dr_listeners_answer_no_syn_themselves() {
    let now = Instant::now() + Duration::from_millis(1);
    let mut s = proxied(crate::config::SynProxyMode::Off);
    s.handle_timeout(now);
    assert_eq!(
        run(&mut s, now, 0, &from_client(Proto::Tcp, SYN, b"")).0,
        Verdict::Transmit(1)
    );
    // An ACK without entry is just that: no cookie is checked.
    let stray = client_segment(ACK, 1, 1, b"");
    let other = segment(
        sa([198, 18, 0, 1], 40001),
        vip(),
        (CLIENT_MAC, EXT_MAC),
        ACK,
        1,
        1,
        &[],
        b"",
    );
    assert_eq!(run(&mut s, now, 0, &other).0, Verdict::Drop(DropReason::NoConnection));
    drop(stray);
    let mut dr = stack(Setup {
        forwarding: Forwarding::Dr,
        syn_proxy: crate::config::SynProxyMode::Always,
        ..Default::default()
    });
    dr.handle_timeout(now);
    assert_eq!(
        run(&mut dr, now, 0, &from_client(Proto::Tcp, SYN, b"")).0,
        Verdict::Transmit(1)
    );
    assert_eq!(dr.handler().counters().listeners[0].syn_cookies_sent, 0);
}

#[test]
fn auto_syn_proxy_switches_on_above_the_half_open_threshold() {
    let now = Instant::now() + Duration::from_millis(1);
    let mut s = stack(Setup {
        syn_proxy: crate::config::SynProxyMode::Auto,
        syn_proxy_threshold: 3,
        ..Default::default()
    });
    s.handle_timeout(now);
    let syn = |i: u16| {
        segment(
            sa([198, 18, 9, 1], 3000 + i),
            vip(),
            (CLIENT_MAC, EXT_MAC),
            SYN,
            1,
            0,
            &[],
            b"",
        )
    };
    for i in 0..4 {
        assert_eq!(
            run(&mut s, now, 0, &syn(i)).0,
            Verdict::Transmit(1),
            "SYN {i} goes to a server"
        );
    }
    // The fourth half-open entry passed the threshold: the proxy is on at once.
    assert_eq!(
        run(&mut s, now, 0, &syn(4)).0,
        Verdict::Transmit(0),
        "answered with a cookie"
    );
    let f = s.handler();
    assert_eq!((f.conns().len(), s.local_ports().occupancy().in_use), (4, 4));
    assert_eq!(f.counters().listeners[0].syn_proxy_on, 1);
    assert_eq!(f.counters().listeners[0].syn_cookies_sent, 1);
}

#[test]
fn a_listener_at_its_cap_refuses_new_flows_by_name() {
    let now = Instant::now() + Duration::from_millis(1);
    let mut s = stack(Setup {
        listener_max_conns: 2,
        ..Default::default()
    });
    let syn = |i: u16| {
        segment(
            sa([198, 18, 9, 1], 3000 + i),
            vip(),
            (CLIENT_MAC, EXT_MAC),
            SYN,
            1,
            0,
            &[],
            b"",
        )
    };
    assert_eq!(run(&mut s, now, 0, &syn(0)).0, Verdict::Transmit(1));
    assert_eq!(run(&mut s, now, 0, &syn(1)).0, Verdict::Transmit(1));
    assert_eq!(
        run(&mut s, now, 0, &syn(2)).0,
        Verdict::Drop(DropReason::ListenerConnLimit)
    );
    assert_eq!(s.local_ports().occupancy().in_use, 2, "the refused flow took no port");
    assert_eq!(
        s.handler().counters().listeners[0].drops[DropReason::ListenerConnLimit.index()],
        1
    );
    // When an entry goes, the listener may open one again (the packet waits for ARP: the neighbours expired).
    s.handle_timeout(now + Duration::from_secs(61));
    assert_eq!(s.handler().listeners[0].entries, 0);
    let later = run(&mut s, now + Duration::from_secs(61), 0, &syn(3)).0;
    assert!(!matches!(later, Verdict::Drop(_)), "{later:?}");
    assert_eq!(s.handler().listeners[0].entries, 1);
}

#[test]
fn under_pressure_half_open_and_unanswered_udp_entries_get_short_timeouts() {
    let now = Instant::now() + Duration::from_millis(1);
    let mut s = stack(Setup {
        table: 8,
        pressure_percent: 50,
        ..Default::default()
    });
    let syn = |i: u16| {
        segment(
            sa([198, 18, 9, 1], 3000 + i),
            vip(),
            (CLIENT_MAC, EXT_MAC),
            SYN,
            1,
            0,
            &[],
            b"",
        )
    };
    for i in 0..4 {
        run(&mut s, now, 0, &syn(i));
    }
    let timeout_of = |s: &LocalStack<Forwarder>, port: u16| {
        let f = s.handler();
        let (id, _) = f.conns().iter_ids().find(|(_, c)| c.client.port() == port).unwrap();
        f.conns().expires_in(id, now)
    };
    assert_eq!(timeout_of(&s, 3000), Duration::from_secs(60), "no pressure yet");
    s.handle_timeout(now); // 4 of 8: at the level
    assert_eq!(s.handler().counters().pressure, 1);
    // The half-open entries made before the pressure were brought forward too (the pressure walk).
    assert_eq!(timeout_of(&s, 3000), Duration::from_secs(5));
    run(&mut s, now, 0, &syn(4));
    assert_eq!(timeout_of(&s, 3004), Duration::from_secs(5));
    assert_eq!(s.handler().counters().short_timeouts, 4 + 1);
    // Completing the handshake gives the full established timeout.
    let ack = segment(
        sa([198, 18, 9, 1], 3004),
        vip(),
        (CLIENT_MAC, EXT_MAC),
        ACK,
        2,
        5000,
        &[],
        b"",
    );
    run(&mut s, now, 0, &ack);
    assert_eq!(timeout_of(&s, 3004), Duration::from_secs(900));
    // The half-open entries leave after 5 s; the established one stays.
    s.handle_timeout(now + Duration::from_secs(6));
    assert_eq!(s.handler().conns().len(), 1);

    let mut u = stack(Setup {
        table: 2,
        protocol: Proto::Udp,
        ..Default::default()
    });
    let now = Instant::now() + Duration::from_millis(1);
    let dgram = |i: u16| {
        packet(
            Proto::Udp,
            CLIENT_MAC,
            EXT_MAC,
            sa([198, 18, 9, 1], 3000 + i),
            vip(),
            0,
            b"q",
        )
    };
    run(&mut u, now, 0, &dgram(0));
    u.handle_timeout(now); // 1 of 2
    let (_, out) = run(&mut u, now, 0, &dgram(1));
    let local = inspect(&out).2;
    let timeout_of = |u: &LocalStack<Forwarder>, port: u16| {
        let f = u.handler();
        let (id, _) = f.conns().iter_ids().find(|(_, c)| c.client.port() == port).unwrap();
        f.conns().expires_in(id, now)
    };
    assert_eq!(timeout_of(&u, 3001), Duration::from_secs(10));
    // A client datagram again does not extend it; the server's answer does.
    run(&mut u, now, 0, &dgram(1));
    assert_eq!(timeout_of(&u, 3001), Duration::from_secs(10));
    let reply = packet(Proto::Udp, B2_MAC, INT_MAC, backends()[1], local, 0, b"a");
    assert_eq!(run(&mut u, now, 1, &reply).0, Verdict::Transmit(0));
    assert_eq!(timeout_of(&u, 3001), Duration::from_secs(300));
}

#[test]
fn a_server_answer_that_is_not_for_the_proxied_syn_is_reset_and_the_client_retry_opens_the_flow_again() {
    let now = Instant::now() + Duration::from_millis(1);
    let mut s = proxied(crate::config::SynProxyMode::Always);
    s.handle_timeout(now);
    let cookie = cookie_handshake(&mut s, now);
    let ack = client_segment(ACK, CLIENT_ISN.wrapping_add(1), cookie.wrapping_add(1), b"");
    let (_, out) = run(&mut s, now, 0, &ack);
    let local = inspect(&out).2;
    // The server holds the tuple for another client: its SYN-ACK acknowledges another ISN.
    let stale = segment(backends()[0], local, (B1_MAC, INT_MAC), SYNACK, 777, 4242, &[], b"");
    let (v, out) = run(&mut s, now, 1, &stale);
    assert_eq!(v, Verdict::Transmit(1), "answered to the server");
    let (_, _, src, dst, ok) = inspect(&out);
    assert!(ok);
    assert_eq!((src, dst), (local, backends()[0]));
    assert_eq!(tcp_of(&out), (4242, 0, 0x04, None), "RST at the segment's ack");
    let f = s.handler();
    assert_eq!((f.conns().len(), s.local_ports().occupancy().in_use), (0, 0));
    assert_eq!(f.counters().listeners[0].syn_proxy_server_resets, 1);
    // The client's retransmitted request carries the cookie again: a new SYN to a server.
    let data = client_segment(ACK, CLIENT_ISN.wrapping_add(1), cookie.wrapping_add(1), b"GET /");
    let (v, out) = run(&mut s, now, 0, &data);
    assert_eq!(v, Verdict::Transmit(1));
    assert_eq!(tcp_of(&out).2, SYN);
    assert_eq!(s.handler().conns().len(), 1);
}

#[test]
fn when_pressure_starts_the_unanswered_and_half_open_entries_made_before_it_get_the_short_timeout_too() {
    let now = Instant::now() + Duration::from_millis(1);
    let mut u = stack(Setup {
        table: 4,
        protocol: Proto::Udp,
        ..Default::default()
    });
    let dgram = |i: u16| {
        packet(
            Proto::Udp,
            CLIENT_MAC,
            EXT_MAC,
            sa([198, 18, 9, 1], 3000 + i),
            vip(),
            0,
            b"q",
        )
    };
    let (_, out) = run(&mut u, now, 0, &dgram(0));
    let local = inspect(&out).2;
    run(&mut u, now, 0, &dgram(1));
    // The server answers flow 0: it keeps the full timeout.
    let reply = packet(Proto::Udp, B1_MAC, INT_MAC, backends()[0], local, 0, b"a");
    assert_eq!(run(&mut u, now, 1, &reply).0, Verdict::Transmit(0));
    let expires = |u: &LocalStack<Forwarder>, port: u16, at: Instant| {
        let f = u.handler();
        let (id, _) = f.conns().iter_ids().find(|(_, c)| c.client.port() == port).unwrap();
        f.conns().expires_in(id, at)
    };
    assert_eq!(expires(&u, 3001, now), Duration::from_secs(300), "no pressure yet");
    // Two of four: pressure, and the walk of the table.
    let later = now + Duration::from_secs(1);
    u.handle_timeout(later);
    assert_eq!(u.handler().counters().pressure, 1);
    assert_eq!(
        expires(&u, 3001, later),
        Duration::from_secs(10),
        "unanswered, made before the pressure"
    );
    assert_eq!(
        expires(&u, 3000, later),
        Duration::from_secs(299),
        "answered: untouched"
    );
    assert_eq!(u.handler().counters().short_timeouts, 1);
    // And it goes at its new deadline, its port with it.
    u.handle_timeout(later + Duration::from_secs(10));
    assert_eq!(u.handler().conns().len(), 1);
    assert_eq!(u.local_ports().occupancy().in_use, 1);
}

/// `frame` with its IPv4 TTL set to `ttl` (header checksum recomputed).
fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    let ip = &mut frame[ETH_HEADER_LEN..];
    ip[8] = ttl;
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = xlb_stack::wire::checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    frame
}

/// The (source, destination, quoted IPv4 header) of an ICMP time exceeded in `frame`, checked with smoltcp.
fn time_exceeded(frame: &[u8]) -> (Ipv4Addr, Ipv4Addr, Vec<u8>) {
    use xlb_stack::wire::{Icmpv4Message, Icmpv4Packet, Ipv4Packet};
    let ip = Ipv4Packet::new_checked(&frame[ETH_HEADER_LEN..]).expect("IPv4");
    assert!(ip.verify_checksum());
    let icmp = Icmpv4Packet::new_checked(ip.payload()).expect("ICMP");
    assert!(icmp.verify_checksum());
    assert_eq!((icmp.msg_type(), icmp.msg_code()), (Icmpv4Message::TimeExceeded, 0));
    (ip.src_addr(), ip.dst_addr(), icmp.data()[..20].to_vec())
}

#[test]
fn forwarding_decrements_the_ttl_and_a_packet_whose_ttl_ran_out_gets_time_exceeded_and_no_entry() {
    let now = Instant::now();
    let mut s = stack(Setup::default());
    for ttl in [0u8, 1] {
        let syn = with_ttl(from_client(Proto::Tcp, SYN, b""), ttl);
        let (v, out) = run(&mut s, now, 0, &syn);
        assert_eq!(v, Verdict::Transmit(0), "answered back to the client, TTL {ttl}");
        assert_eq!(&out[0..6], &CLIENT_MAC.0);
        let (src, dst, quoted) = time_exceeded(&out);
        assert_eq!(
            (src, dst),
            (*vip().ip(), *client().ip()),
            "from the address it was sent to"
        );
        assert_eq!(
            quoted,
            syn[ETH_HEADER_LEN..ETH_HEADER_LEN + 20],
            "quotes the packet as received"
        );
    }
    assert_eq!(s.handler().conns().len(), 0, "no entry");
    assert_eq!(s.local_ports().occupancy().in_use, 0, "no local port");
    assert_eq!(s.counters().drops_of(DropReason::TtlExceeded), 2);
    assert_eq!(s.counters().icmp_time_exceeded, 2);
    assert_eq!(
        s.handler().counters().listeners[0].drops[DropReason::TtlExceeded.index()],
        2
    );

    // TTL 2 still goes through, as 1: each direction is one hop.
    let (v, out) = run(&mut s, now, 0, &with_ttl(from_client(Proto::Tcp, SYN, b""), 2));
    assert_eq!(v, Verdict::Transmit(1));
    let (_, _, local, _, ok) = inspect(&out);
    assert!(ok, "checksums valid");
    assert_eq!(out[ETH_HEADER_LEN + 8], 1);
    let reply = packet(Proto::Tcp, B1_MAC, INT_MAC, backends()[0], local, SYNACK, b"");
    let (v, out) = run(&mut s, now, 1, &reply);
    assert_eq!(v, Verdict::Transmit(0));
    assert!(inspect(&out).4);
    assert_eq!(out[ETH_HEADER_LEN + 8], reply[ETH_HEADER_LEN + 8] - 1);
    // A server's packet whose TTL ran out: time exceeded back to the server, from the local address.
    let (v, out) = run(&mut s, now, 1, &with_ttl(reply.clone(), 1));
    assert_eq!(v, Verdict::Transmit(1));
    let (src, dst, _) = time_exceeded(&out);
    assert_eq!((src, dst), (*local.ip(), *backends()[0].ip()));
    assert_eq!(s.handler().conns().len(), 1, "the entry is untouched");

    // Sources that cannot take an answer get none; and ICMP errors are rate-limited like the rest.
    let bogon = with_ttl(
        packet(Proto::Tcp, CLIENT_MAC, EXT_MAC, sa([224, 0, 0, 9], 5), vip(), SYN, b""),
        1,
    );
    assert_eq!(run(&mut s, now, 0, &bogon).0, Verdict::Consumed);
    assert_eq!(s.counters().drops_of(DropReason::TtlExceeded), 4);
    assert_eq!(s.counters().icmp_time_exceeded, 3);
}

/// Cuts the IPv4 packet of `frame` into fragments of `step` payload bytes (a multiple of 8).
fn fragments(frame: &[u8], step: usize) -> Vec<Vec<u8>> {
    let (head, payload) = frame.split_at(ETH_HEADER_LEN + 20);
    payload
        .chunks(step)
        .enumerate()
        .map(|(i, chunk)| {
            let mut f = head.to_vec();
            f.extend_from_slice(chunk);
            let ip = &mut f[ETH_HEADER_LEN..];
            ip[2..4].copy_from_slice(&((20 + chunk.len()) as u16).to_be_bytes());
            let more = (i + 1) * step < payload.len();
            let ff = (i * step / 8) as u16 | if more { 0x2000 } else { 0 };
            ip[6..8].copy_from_slice(&ff.to_be_bytes());
            with_ttl(f, 64)
        })
        .collect()
}

#[test]
fn a_fragmented_udp_datagram_is_reassembled_forwarded_and_cut_again_for_the_server() {
    use smoltcp::wire::IpAddress;
    use xlb_stack::wire::{Ipv4Packet, UdpPacket};
    let now = Instant::now();
    let mut s = stack(Setup {
        protocol: Proto::Udp,
        ..Default::default()
    });
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let dgram = from_client(Proto::Udp, 0, &payload);
    let frags = fragments(&dgram, 1480);
    let mut out = vec![];
    let mut buf = vec![0u8; 4096];
    for (i, f) in frags.iter().enumerate() {
        buf[..f.len()].copy_from_slice(f);
        let mut frame = Frame::new(&mut buf, f.len());
        let v = s.process(now, 0, &mut frame);
        let len = frame.len();
        if i + 1 < frags.len() {
            assert_eq!(v, Verdict::Consumed, "fragment {i} held");
        } else {
            assert_eq!(v, Verdict::Transmit(1), "the datagram goes to the backend link");
            out.push(buf[..len].to_vec());
        }
    }
    while let Some((port, len)) = s.poll_transmit(now, &mut buf) {
        assert_eq!(port, 1);
        out.push(buf[..len].to_vec());
    }
    assert_eq!(out.len(), 3, "as many fragments as came in");
    let mut whole = vec![];
    for (i, f) in out.iter().enumerate() {
        assert!(f.len() <= frags[0].len());
        assert_eq!(&f[0..6], &B1_MAC.0);
        let ip = Ipv4Packet::new_checked(&f[ETH_HEADER_LEN..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((usize::from(ip.frag_offset()), ip.more_frags()), (whole.len(), i < 2));
        assert_eq!(ip.hop_limit(), 63, "forwarded: one hop");
        whole.extend_from_slice(ip.payload());
    }
    let ip = Ipv4Packet::new_checked(&out[0][ETH_HEADER_LEN..]).unwrap();
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    assert_eq!((src, dst), (LIP, *backends()[0].ip()));
    let udp = UdpPacket::new_checked(&whole[..]).unwrap();
    assert!(
        udp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst)),
        "NAT kept the UDP checksum valid"
    );
    assert_eq!(udp.dst_port(), backends()[0].port());
    assert_eq!(udp.payload(), &payload[..]);
    assert_eq!(s.counters().reassembled, 1);
    assert_eq!(s.handler().conns().len(), 1);
}

#[test]
fn workers_share_one_maglev_table_and_a_health_change_swaps_it_in() {
    let now = Instant::now();
    let setup = |worker| Setup {
        forwarding: Forwarding::Dr,
        checked: true,
        worker,
        workers: 2,
        ..Default::default()
    };
    // The control side: one builder for the layout and board every worker runs.
    let layout = Arc::new(layout_of(&setup(0)));
    let board = Arc::new(HealthBoard::new(layout.targets.len()));
    let mut builder = crate::sched::MaglevBuilder::new(layout, board.clone());
    let first = builder.current().clone();
    let mut mesh = Handoff::mesh(2, 16);
    let (h1, h0) = (mesh.pop().unwrap(), mesh.pop().unwrap());
    let (tx0, rx0) = crossbeam_channel::unbounded();
    let (tx1, rx1) = crossbeam_channel::unbounded();
    let mut w0 = stack_sharing(setup(0), Some(h0), true, Some(rx0), (board.clone(), first.clone()));
    let mut w1 = stack_sharing(setup(1), Some(h1), true, Some(rx1), (board.clone(), first.clone()));
    assert!(Arc::ptr_eq(w0.handler().maglev_tables(), w1.handler().maglev_tables()));
    assert!(Arc::ptr_eq(
        w0.handler().listeners[0].maglev.as_ref().unwrap(),
        w1.handler().listeners[0].maglev.as_ref().unwrap()
    ));

    // Server 0 fails its check: the control side builds once and sends the same snapshot to both workers.
    board.set(0, false);
    let second = builder.refresh().expect("a new table");
    let mut counts = [0u32; 2];
    second.get(0).unwrap().slot_counts(&mut counts);
    assert_eq!(counts, [0, 65537]);
    // Before it arrives, packets without an entry already avoid the down server (the board says so).
    let mid = |port: u16| {
        packet(
            Proto::Tcp,
            CLIENT_MAC,
            EXT_MAC,
            sa([198, 18, 0, 9], port),
            vip(),
            ACK,
            b"x",
        )
    };
    let mut forwarded = 0;
    for port in 1000..1064 {
        let (v, out) = run(&mut w0, now, 0, &mid(port));
        if v == Verdict::Transmit(1) {
            assert_eq!(&out[0..6], &B2_MAC.0, "not to the server the board says is down");
            forwarded += 1;
        }
    }
    assert!(forwarded > 0);
    for tx in [&tx0, &tx1] {
        tx.send(ControlMessage::Maglev(second.clone())).unwrap();
    }
    let later = now + Duration::from_secs(1);
    w0.handle_timeout(later);
    w1.handle_timeout(later);
    for w in [&w0, &w1] {
        assert!(Arc::ptr_eq(w.handler().maglev_tables(), &second));
        assert!(Arc::ptr_eq(
            w.handler().listeners[0].maglev.as_ref().unwrap(),
            second.get(0).unwrap()
        ));
    }
    assert!(!Arc::ptr_eq(first.get(0).unwrap(), second.get(0).unwrap()));
    for port in 1000..1064 {
        let (v, out) = run(&mut w0, later, 0, &mid(port));
        if v == Verdict::Transmit(1) {
            assert_eq!(&out[0..6], &B2_MAC.0);
        }
    }
}
