//! The L7 stage behind a real local stack, with a client and a server that are in-stack TCP hosts of their own:
//! every byte crosses Ethernet frames, the service table, TCP handshakes and the proxy.

use xlb_l4::sched::SchedulerKind;
use xlb_stack::local::{Link, LocalConfig, LocalStack};
use xlb_stack::neighbour::NeighbourConfig;
use xlb_stack::pipeline::Pipeline;
use xlb_stack::wire::{EthernetAddress, EthernetFrame, EthernetProtocol};

use super::upstreams::ServerSpec;
use super::*;
use crate::config::{HttpListenerConfig, ListenerProtocol};
use crate::tls::handshake::HandshakePool;

const EXT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x10]);
const INT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x11]);
const CLIENT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x01]);
const SERVER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x02]);
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 1), 8080);
const LIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);

/// A tiny HTTP/1.1 server on an in-stack TCP host: answers each request head with `hello`, keeps alive. With
/// `tls`, it speaks HTTPS (rustls).
struct Server {
    host: TcpHost,
    conns: Vec<ConnId>,
    requests: Vec<String>,
    accepted: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Each connection's TLS (HTTPS).
    sessions: Vec<(ConnId, rustls::ServerConnection)>,
}

const HELLO: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

impl Server {
    fn serve(&mut self, now: Instant) {
        for &c in &self.conns {
            let Some(s) = self.host.socket(now, c) else { continue };
            let mut buf = [0u8; 4096];
            let n = s.recv_slice(&mut buf).unwrap_or(0);
            let Some(config) = &self.tls else {
                if n == 0 {
                    continue;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                for _ in text.matches("\r\n\r\n") {
                    s.send_slice(HELLO).unwrap();
                }
                self.requests.push(text);
                continue;
            };
            if !self.sessions.iter().any(|(id, _)| *id == c) {
                self.sessions
                    .push((c, rustls::ServerConnection::new(config.clone()).unwrap()));
            }
            let Some((_, tls)) = self.sessions.iter_mut().find(|(id, _)| *id == c) else {
                continue;
            };
            let ok = tls.read_tls(&mut &buf[..n]).is_ok() && tls.process_new_packets().is_ok();
            let mut plain = Vec::new();
            if ok {
                let _ = std::io::Read::read_to_end(&mut tls.reader(), &mut plain);
            }
            if !plain.is_empty() {
                let text = String::from_utf8_lossy(&plain).into_owned();
                for _ in text.matches("\r\n\r\n") {
                    std::io::Write::write_all(&mut tls.writer(), HELLO).unwrap();
                }
                self.requests.push(text);
            }
            let mut out = Vec::new();
            while tls.wants_write() {
                tls.write_tls(&mut out).unwrap();
            }
            if !out.is_empty() {
                assert_eq!(
                    s.send_slice(&out),
                    Ok(out.len()),
                    "the test server's buffer holds a flight"
                );
            }
        }
    }
}

struct World {
    now: Instant,
    stack: LocalStack<L7Stage>,
    client: TcpHost,
    server: Server,
    board: Arc<HealthBoard>,
    /// The TLS handshake pool of an HTTPS world (kept alive with it).
    _pool: Option<HandshakePool>,
}

fn world() -> World {
    world_with(None)
}

/// The worker's two links: the client side (198.18.0.10, `EXT_MAC`) and the server side (198.19.0.10,
/// `INT_MAC`). Shared with the tests of L4 and L7 on one stack.
pub(super) fn two_links() -> LocalConfig {
    LocalConfig {
        links: vec![
            Link {
                mac: EXT_MAC,
                addresses: vec!["198.18.0.10/24".parse().unwrap()],
                gateway: None,
            },
            Link {
                mac: INT_MAC,
                addresses: vec!["198.19.0.10/24".parse().unwrap()],
                gateway: None,
            },
        ],
        neighbours: NeighbourConfig::default(),
        icmp_rate: 1000,
    }
}

/// A world whose listener terminates TLS with `tls` (plain HTTP without).
fn world_with(tls: Option<Arc<rustls::ServerConfig>>) -> World {
    world_full(tls, None)
}

/// A world whose listener terminates TLS with `tls`, and whose server speaks HTTPS with `upstream`'s server
/// config, the group holding its client side.
fn world_full(
    tls: Option<Arc<rustls::ServerConfig>>,
    upstream: Option<(Arc<rustls::ServerConfig>, Arc<crate::tls::upstream::UpstreamTls>)>,
) -> World {
    world_on(tls, upstream, 0, 1, None)
}

/// [`world_full`] on worker `worker` of `workers`, joined to the others by `handoff`.
fn world_on(
    tls: Option<Arc<rustls::ServerConfig>>,
    upstream: Option<(Arc<rustls::ServerConfig>, Arc<crate::tls::upstream::UpstreamTls>)>,
    worker: usize,
    workers: usize,
    handoff: Option<Handoff>,
) -> World {
    let now = Instant::now();
    let pool = (tls.is_some() || upstream.is_some())
        .then(|| HandshakePool::start(crate::tls::handshake::PoolConfig::default()).unwrap());
    let listener = HttpListenerConfig {
        protocol: ListenerProtocol::Http,
        group: "web".into(),
        rules: vec![],
        sticky: None,
        hash: None,
    };
    let mut proxy = ProxyConfig::new(L7Config::default(), &listener, "listener[0]", &["web"], 7).unwrap();
    if tls.is_some() {
        proxy.set_scheme("https");
    }
    let board = Arc::new(HealthBoard::new(1));
    let stage = L7Stage::new(
        L7StageConfig {
            limits: L7Config::default(),
            listeners: vec![StageListener {
                name: "web".into(),
                vip: VIP,
                proxy: Arc::new(proxy),
                tls,
            }],
            groups: vec![GroupSpec {
                name: "web".into(),
                scheduler: SchedulerKind::Wrr,
                servers: vec![ServerSpec {
                    addr: SERVER,
                    weight: 1,
                    target: Some(0),
                }],
                tls: upstream.as_ref().map(|(_, group)| group.clone()),
            }],
            board: board.clone(),
            maglev: Arc::default(),
            worker,
            workers,
            port_ifaces: vec![0, 1],
            access_log: None,
            handshakes: pool.as_ref().map(|p| p.client(None)),
        },
        Arc::new(SharedL7Counters::default()),
        handoff,
        now,
    );
    let mut stack = LocalStack::with_ports(
        two_links(),
        // The stage makes the link addresses local IPs of the pools.
        LocalPorts::new(&[], 10_000, 60_999, 0, 1),
        stage,
    );
    stack.add_owned(0, *VIP.ip());
    stack
        .neighbours()
        .learn(now, 0, "198.18.0.10".parse().unwrap(), CLIENT, CLIENT_MAC, true);
    stack.neighbours().learn(now, 1, LIP, *SERVER.ip(), SERVER_MAC, true);
    World {
        now,
        stack,
        client: TcpHost::new(TcpConfig::default(), now, 11),
        server: Server {
            host: TcpHost::new(TcpConfig::default(), now, 12),
            conns: Vec::new(),
            requests: Vec::new(),
            accepted: 0,
            tls: upstream.map(|(server, _)| server),
            sessions: Vec::new(),
        },
        board,
        _pool: pool,
    }
}

fn ethernet(ip: &[u8], src: EthernetAddress, dst: EthernetAddress) -> Vec<u8> {
    let mut frame = vec![0u8; ETH_HEADER_LEN + ip.len()];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.set_src_addr(src);
    eth.set_dst_addr(dst);
    eth.set_ethertype(EthernetProtocol::Ipv4);
    frame[ETH_HEADER_LEN..].copy_from_slice(ip);
    frame
}

impl World {
    /// Delivers a frame xlb sent to the peer its MAC names.
    fn deliver(&mut self, frame: &[u8]) {
        let dst = EthernetAddress::from_bytes(&frame[0..6]);
        let ip = &frame[ETH_HEADER_LEN..];
        if dst == CLIENT_MAC {
            self.client.ingress(self.now, ip, false);
        } else if dst == SERVER_MAC {
            if let Ingress::Accepted(c) = self.server.host.ingress(self.now, ip, true) {
                self.server.host.set_token(c, 1);
                self.server.conns.push(c);
                self.server.accepted += 1;
            }
        }
    }

    fn send_to_xlb(&mut self, ip: &[u8], src: EthernetAddress, port: PortId) {
        let mut frame = ethernet(ip, src, if port == 0 { EXT_MAC } else { INT_MAC });
        frame.resize(2048, 0);
        let len = ETH_HEADER_LEN + ip.len();
        let mut f = Frame::new(&mut frame, len);
        let verdict = self.stack.process(self.now, port, &mut f);
        let out = f.data().to_vec();
        self.stack.flush_events(); // the end of the worker's turn
        if let Verdict::Transmit(_) = verdict {
            self.deliver(&out);
        }
    }

    /// Moves frames until nobody has anything to send.
    fn settle(&mut self) {
        let mut buf = vec![0u8; 2048];
        let mut waits = 0;
        for _ in 0..500 {
            let mut moved = false;
            while let Some((len, _)) = self.client.poll_transmit(self.now, &mut buf) {
                let ip = buf[..len].to_vec();
                self.send_to_xlb(&ip, CLIENT_MAC, 0);
                moved = true;
            }
            while let Some((len, _)) = self.server.host.poll_transmit(self.now, &mut buf) {
                let ip = buf[..len].to_vec();
                self.send_to_xlb(&ip, SERVER_MAC, 1);
                moved = true;
            }
            if self.stack.poll_timeout().is_some_and(|t| t <= self.now) {
                self.stack.handle_timeout(self.now);
            }
            while let Some((_, len)) = self.stack.poll_transmit(self.now, &mut buf) {
                let out = buf[..len].to_vec();
                self.deliver(&out);
                moved = true;
            }
            self.server.serve(self.now);
            if !moved && self.stack.handler().handshakes_in_flight() > 0 && waits < 5000 {
                // A pool thread has a handshake: wait for it (the stage takes it back in poll_transmit).
                waits += 1;
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            if !moved {
                return;
            }
        }
        panic!("no quiet moment in 500 rounds");
    }

    /// Advances the clock by `d` in 100 ms steps, settling at each.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(100);
            self.client.handle_timeout(self.now);
            self.server.host.handle_timeout(self.now);
            // The peers would answer xlb's ARP refreshes.
            let ext = "198.18.0.10".parse().unwrap();
            self.stack
                .neighbours()
                .learn(self.now, 0, ext, CLIENT, CLIENT_MAC, true);
            self.stack
                .neighbours()
                .learn(self.now, 1, LIP, *SERVER.ip(), SERVER_MAC, true);
            self.settle();
        }
    }

    fn connect(&mut self, port: u16) -> ConnId {
        let c = self
            .client
            .connect(self.now, SocketAddrV4::new(CLIENT, port), VIP, 1)
            .unwrap();
        self.settle();
        assert_eq!(self.client.state(c), Some(State::Established), "handshake with the VIP");
        c
    }

    fn request(&mut self, c: ConnId, req: &[u8]) -> String {
        self.client.socket(self.now, c).unwrap().send_slice(req).unwrap();
        self.settle();
        let mut buf = [0u8; 8192];
        let n = self
            .client
            .socket(self.now, c)
            .unwrap()
            .recv_slice(&mut buf)
            .unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// xlb closed the client connection `c` and holds no session any more.
    fn assert_closed_by_xlb(&mut self, c: ConnId) {
        assert!(
            matches!(
                self.client.state(c),
                None | Some(State::CloseWait | State::TimeWait | State::Closed)
            ),
            "{:?}",
            self.client.state(c)
        );
        assert_eq!(self.stack.handler().sessions, 0);
    }

    fn counters(&self) -> &L7Counters {
        self.stack.handler().counters()
    }
}

use smoltcp::socket::tcp::State;

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: www.example.com\r\n\r\n";

#[test]
fn requests_are_proxied_over_kept_alive_connections_on_both_sides() {
    let mut w = world();
    let c = w.connect(40_000);
    let first = w.request(c, GET);
    assert!(
        first.starts_with("HTTP/1.1 200 OK\r\n") && first.ends_with("hello"),
        "{first:?}"
    );
    let second = w.request(c, GET);
    assert!(second.ends_with("hello"), "{second:?}");
    assert_eq!(w.server.accepted, 1, "one upstream connection for both requests");
    let seen = w.server.requests.concat();
    assert!(seen.contains("X-Forwarded-For: 198.18.0.1\r\n"), "{seen}");
    assert!(seen.contains("X-Real-IP: 198.18.0.1\r\n"), "{seen}");
    assert_eq!(w.counters().get(L7Count::Requests), 2);
    assert_eq!(w.counters().get(L7Count::UpstreamConnects), 1);
    w.advance(Duration::from_millis(500)); // delayed ACKs: nothing left in flight
    assert_eq!(
        w.stack.handler().host.counters().buffer_bytes,
        2 * 2 * 1024,
        "between requests the client and its upstream connection hold idle-size buffers"
    );

    // The client leaves; the next client's request reuses the kept upstream connection.
    w.client.close(w.now, c);
    w.settle();
    assert_eq!(
        w.stack.handler().upstreams.idle_count(),
        1,
        "released after each response"
    );
    let c2 = w.connect(40_001);
    assert!(w.request(c2, GET).ends_with("hello"));
    assert_eq!(w.server.accepted, 1, "still one upstream connection");
    assert_eq!(
        w.counters().get(L7Count::UpstreamReused),
        2,
        "the second request and the next client's"
    );
    assert_eq!(w.counters().upstream_reuse(), 1.0 - 1.0 / 3.0);
}

#[test]
fn upstream_connections_come_from_the_local_ip_and_the_local_port_range() {
    let mut w = world();
    let c = w.connect(40_000);
    w.request(c, GET);
    let up = w.server.conns[0];
    let tuple = w.server.host.tuple(up).unwrap();
    assert_eq!(*tuple.remote.ip(), LIP, "from xlb's address on the server's link");
    assert!((10_000..=60_999).contains(&tuple.remote.port()), "{tuple:?}");
}

#[test]
fn no_healthy_server_is_answered_503_and_a_server_reset_502() {
    let mut w = world();
    w.board.set(0, false);
    let c = w.connect(40_000);
    let resp = w.request(c, GET);
    assert!(resp.starts_with("HTTP/1.1 503 "), "{resp:?}");
    assert_eq!(w.counters().get(L7Count::NoHealthyServer), 1);
    assert_eq!(w.server.accepted, 0);

    // Up again, but the server resets the connection instead of answering.
    w.board.set(0, true);
    w.client.socket(w.now, c).unwrap().send_slice(GET).unwrap();
    let mut buf = vec![0u8; 2048];
    for _ in 0..20 {
        while let Some((len, _)) = w.client.poll_transmit(w.now, &mut buf) {
            let ip = buf[..len].to_vec();
            w.send_to_xlb(&ip, CLIENT_MAC, 0);
        }
        while let Some((_, len)) = w.stack.poll_transmit(w.now, &mut buf) {
            let out = buf[..len].to_vec();
            w.deliver(&out);
        }
        while let Some((len, _)) = w.server.host.poll_transmit(w.now, &mut buf) {
            let ip = buf[..len].to_vec();
            w.send_to_xlb(&ip, SERVER_MAC, 1);
        }
        if let Some(&up) = w.server.conns.first() {
            if w.server.host.socket(w.now, up).is_some_and(|s| s.recv_queue() > 0) {
                w.server.host.abort(w.now, up);
            }
        }
    }
    w.settle();
    let mut got = [0u8; 1024];
    let n = w
        .client
        .socket(w.now, c)
        .map_or(0, |s| s.recv_slice(&mut got).unwrap_or(0));
    let resp = String::from_utf8_lossy(&got[..n]);
    assert!(resp.starts_with("HTTP/1.1 502 "), "{resp:?}");
    assert_eq!(w.counters().get(L7Count::UpstreamReset), 1);
}

#[test]
fn stray_segments_are_refused_and_idle_clients_closed() {
    let mut w = world();
    // A bare ACK to the VIP from nowhere: no connection, answered by the local stack with RST.
    let mut other = TcpHost::new(TcpConfig::default(), w.now, 99);
    let mut server_side = TcpHost::new(TcpConfig::default(), w.now, 98);
    let c = other.connect(w.now, SocketAddrV4::new(CLIENT, 41_000), VIP, 1).unwrap();
    let mut buf = vec![0u8; 2048];
    let (len, _) = other.poll_transmit(w.now, &mut buf).unwrap();
    let syn = buf[..len].to_vec();
    server_side.ingress(w.now, &syn, true);
    let (len, _) = server_side.poll_transmit(w.now, &mut buf).unwrap();
    other.ingress(w.now, &buf[..len], false); // SYN-ACK: `other` now sends a bare ACK
    let (len, _) = other.poll_transmit(w.now, &mut buf).unwrap();
    let ack = buf[..len].to_vec();
    w.send_to_xlb(&ack, CLIENT_MAC, 0);
    assert_eq!(w.counters().get(L7Count::NoConnection), 1);
    assert_eq!(w.stack.counters().drops[DropReason::NoConnection.index()], 1);
    let _ = c;

    // A client that connects and says nothing is closed after the idle timeout (75 s by default).
    let c = w.connect(40_000);
    w.advance(Duration::from_secs(76));
    w.assert_closed_by_xlb(c);
}

#[test]
fn an_idle_deadline_moved_by_a_later_request_closes_the_client_only_then() {
    let mut w = world();
    let c = w.connect(40_000);
    assert!(w.request(c, GET).starts_with("HTTP/1.1 200 "));
    w.advance(Duration::from_secs(50));
    // The idle deadline moves from 75 s to 125 s; the timer filed for 75 s fires early and is filed again.
    assert!(w.request(c, GET).starts_with("HTTP/1.1 200 "));
    w.advance(Duration::from_secs(30));
    assert_eq!(
        w.client.state(c),
        Some(State::Established),
        "closed at the old deadline"
    );
    assert_eq!(
        w.stack.handler().timers.len(),
        1,
        "one live timer entry for the one session"
    );
    w.advance(Duration::from_secs(50));
    w.assert_closed_by_xlb(c);
}

#[test]
fn a_slow_request_head_is_answered_408() {
    let mut w = world();
    let c = w.connect(40_000);
    w.client
        .socket(w.now, c)
        .unwrap()
        .send_slice(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .unwrap();
    w.settle();
    w.advance(Duration::from_secs(61)); // client_header_timeout_s: 60 by default
    let mut buf = [0u8; 1024];
    let n = w
        .client
        .socket(w.now, c)
        .map_or(0, |s| s.recv_slice(&mut buf).unwrap_or(0));
    let got = String::from_utf8_lossy(&buf[..n]);
    assert!(got.starts_with("HTTP/1.1 408 "), "{got:?}");
}

/// HTTPS: the client side speaks TLS (a rustls client over the in-stack client host), the server plain HTTP.
mod https {
    use std::io::{Read, Write};

    use rustls::ClientConnection;

    use super::*;
    use crate::tls::testpki::{client, TestCa};

    fn https_world(ca: &TestCa) -> World {
        let built = crate::tls::config::TlsListener::build(
            &crate::tls::config::TlsListenerConfig {
                policy: Default::default(),
                alpn: vec!["http/1.1".into()],
                session_cache: 16,
                certs: Vec::new(),
                client_auth: Default::default(),
                client_ca: None,
            },
            None,
        );
        assert!(built.is_ok());
        let mut tls = (*built.unwrap().config).clone();
        tls.cert_resolver = Arc::new(crate::tls::certs::CertStore::new(vec![
            ca.listener_cert(&["www.example.com"])
        ]));
        world_with(Some(Arc::new(tls)))
    }

    impl World {
        /// One exchange of TLS bytes: the client's records to xlb, xlb's back to the client.
        fn tls_round(&mut self, c: ConnId, tls: &mut ClientConnection) -> Result<(), rustls::Error> {
            let mut out = Vec::new();
            while tls.wants_write() {
                tls.write_tls(&mut out).unwrap();
            }
            if !out.is_empty() {
                let sent = self.client.socket(self.now, c).unwrap().send_slice(&out).unwrap();
                assert_eq!(sent, out.len(), "client send buffer");
            }
            self.settle();
            let mut buf = vec![0u8; 65536];
            let n = self
                .client
                .socket(self.now, c)
                .map_or(0, |s| s.recv_slice(&mut buf).unwrap_or(0));
            tls.read_tls(&mut &buf[..n]).unwrap();
            tls.process_new_packets().map(|_| ())
        }

        fn tls_handshake(&mut self, c: ConnId, tls: &mut ClientConnection) {
            for _ in 0..10 {
                self.tls_round(c, tls).unwrap();
                if !tls.is_handshaking() {
                    return;
                }
            }
            panic!("TLS handshake did not finish");
        }

        fn tls_request(&mut self, c: ConnId, tls: &mut ClientConnection, req: &[u8]) -> String {
            tls.writer().write_all(req).unwrap();
            let mut got = Vec::new();
            for _ in 0..10 {
                self.tls_round(c, tls).unwrap();
                let mut buf = [0u8; 8192];
                while let Ok(n) = tls.reader().read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                if got.ends_with(b"hello") {
                    break;
                }
            }
            String::from_utf8_lossy(&got).into_owned()
        }
    }

    #[test]
    fn https_is_terminated_in_stack_with_handshakes_on_the_pool_and_proxied_as_http() {
        let ca = TestCa::new();
        let mut w = https_world(&ca);
        let config = ca.client_config(&["http/1.1"]);
        let c = w.connect(40_100);
        let mut tls = client(&config, "www.example.com");
        w.tls_handshake(c, &mut tls);
        assert_eq!(tls.alpn_protocol(), Some(&b"http/1.1"[..]));
        for _ in 0..3 {
            let got = w.tls_request(c, &mut tls, GET);
            assert!(
                got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("hello"),
                "{got}"
            );
        }
        assert_eq!(w.server.requests.len(), 3);
        assert!(
            w.server.requests[0].contains("X-Forwarded-Proto: https\r\n"),
            "{}",
            w.server.requests[0]
        );
        assert_eq!(w.server.accepted, 1, "one kept-alive upstream connection");
        let counters = w.counters().clone();
        assert_eq!(counters.get(L7Count::TlsFull), 1);
        assert_eq!(counters.get(L7Count::Tls13), 1);
        assert_eq!(counters.get(L7Count::TlsFailed), 0);

        // A second connection resumes with the ticket the first one got.
        let c2 = w.connect(40_101);
        let mut tls2 = client(&config, "www.example.com");
        w.tls_handshake(c2, &mut tls2);
        assert_eq!(tls2.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        let got = w.tls_request(c2, &mut tls2, GET);
        assert!(got.ends_with("hello"), "{got}");
        assert_eq!(w.counters().get(L7Count::TlsResumed), 1);
        assert_eq!(w.stack.handler().handshakes_in_flight(), 0);

        // The client closes with close_notify: xlb answers with its own and closes.
        tls2.send_close_notify();
        let _ = w.tls_round(c2, &mut tls2);
        w.advance(Duration::from_millis(300));
        assert!(
            !matches!(w.client.state(c2), Some(State::Established)),
            "{:?}",
            w.client.state(c2)
        );
    }

    #[test]
    fn plain_http_or_garbage_on_an_https_listener_gets_an_alert_and_a_close_never_a_proxy() {
        let ca = TestCa::new();
        let mut w = https_world(&ca);
        let c = w.connect(40_102);
        let answer = w.request(c, GET);
        assert!(!answer.contains("HTTP/1.1"), "no HTTP answer before TLS: {answer:?}");
        assert_eq!(answer.as_bytes().first(), Some(&21), "a TLS alert record: {answer:?}");
        w.advance(Duration::from_millis(300));
        assert!(!matches!(w.client.state(c), Some(State::Established)));
        assert_eq!(w.counters().get(L7Count::TlsFailed), 1);
        assert!(w.server.requests.is_empty());
    }

    #[test]
    fn a_client_that_refuses_the_certificate_is_counted() {
        let ca = TestCa::new();
        let mut w = https_world(&ca);
        let config = ca.client_config(&["http/1.1"]);
        let c = w.connect(40_103);
        let mut tls = client(&config, "other.example.com"); // the certificate names www.example.com only
        let mut refused = false;
        for _ in 0..5 {
            if w.tls_round(c, &mut tls).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "the client refuses the certificate");
        // It sends its alert and closes.
        let _ = w.tls_round(c, &mut tls);
        w.client.close(w.now, c);
        w.advance(Duration::from_millis(300));
        let n = w.counters().get(L7Count::TlsFailed) + w.counters().get(L7Count::TlsAborted);
        assert_eq!(n, 1, "{:?}", w.counters());
        assert_eq!(w.counters().get(L7Count::TlsFull), 0);
    }

    /// A world whose listener requires client certificates from `ca`.
    fn mtls_world(ca: &TestCa) -> World {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(crate::tls::certs::CertStore::new(vec![
                ca.listener_cert(&["www.example.com"])
            ])));
        world_with(Some(Arc::new(config)))
    }

    #[test]
    fn mutual_tls_passes_the_verified_subject_upstream_and_refuses_clients_without_a_certificate() {
        let ca = TestCa::new();
        let mut w = mtls_world(&ca);
        let (chain, key) = ca.client_leaf("client one", "Example");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert.clone()).unwrap();
        let with_cert = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(vec![chain], key)
                .unwrap(),
        );
        let c = w.connect(40_104);
        let mut tls = client(&with_cert, "www.example.com");
        w.tls_handshake(c, &mut tls);
        // A client's own copy of the headers is dropped; xlb's says what TLS verified.
        let forged = b"GET /x HTTP/1.1\r\nHost: www.example.com\r\nX-Client-Cert-Subject: CN=admin\r\n\r\n";
        let got = w.tls_request(c, &mut tls, forged);
        assert!(got.ends_with("hello"), "{got}");
        let seen = &w.server.requests[0];
        assert!(seen.contains("X-Client-Verify: SUCCESS\r\n"), "{seen}");
        assert!(
            seen.contains("X-Client-Cert-Subject: CN=client one,O=Example\r\n"),
            "{seen}"
        );
        assert!(!seen.contains("CN=admin"), "{seen}");

        // Without a certificate: refused in the handshake, counted, nothing proxied.
        let c2 = w.connect(40_105);
        let mut anonymous = client(&ca.client_config(&[]), "www.example.com");
        for _ in 0..5 {
            if w.tls_round(c2, &mut anonymous).is_err() {
                break; // the client sees the server's alert
            }
        }
        w.advance(Duration::from_millis(300));
        assert_eq!(w.counters().get(L7Count::TlsFailed), 1, "{:?}", w.counters());
        assert_eq!(w.server.requests.len(), 1);
    }
}

/// HTTP/2 with prior knowledge: a real `h2` client over the in-stack client connection.
mod h2c {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    use ::h2::client::{self, SendRequest};
    use bytes::Bytes;

    use super::*;
    use crate::h2::io::{MemIo, Pipe};

    type ClientConn = Pin<Box<client::Connection<MemIo, Bytes>>>;

    struct H2Client {
        io: MemIo,
        conn: Option<ClientConn>,
        c: ConnId,
    }

    impl World {
        /// Connects from client port `port` and does the HTTP/2 handshake.
        fn h2_connect(&mut self, port: u16) -> (H2Client, SendRequest<Bytes>) {
            let c = self.connect(port);
            let io = MemIo(Arc::new(Mutex::new(Pipe {
                max_outbound: usize::MAX,
                ..Pipe::default()
            })));
            let mut h = H2Client {
                io: io.clone(),
                conn: None,
                c,
            };
            let mut hs = Box::pin(client::handshake(io));
            let (send, conn) = self.h2_run(&mut h, &mut hs).expect("h2 handshake");
            h.conn = Some(Box::pin(conn));
            (h, send)
        }

        /// Moves the client's frames to xlb and xlb's back, polling the client connection.
        fn h2_round(&mut self, h: &mut H2Client) {
            if let Some(conn) = h.conn.as_mut() {
                if let Poll::Ready(r) = conn.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                    r.expect("client connection");
                    h.conn = None;
                }
            }
            let out = std::mem::take(&mut h.io.lock().outbound);
            if !out.is_empty() {
                let sent = self.client.socket(self.now, h.c).unwrap().send_slice(&out).unwrap();
                assert_eq!(sent, out.len());
            }
            self.settle();
            let mut buf = vec![0u8; 65536];
            let n = self
                .client
                .socket(self.now, h.c)
                .map_or(0, |s| s.recv_slice(&mut buf).unwrap_or(0));
            h.io.lock().inbound.extend_from_slice(&buf[..n]);
        }

        fn h2_run<T>(&mut self, h: &mut H2Client, fut: &mut Pin<Box<impl Future<Output = T> + ?Sized>>) -> T {
            for _ in 0..200 {
                if let Poll::Ready(v) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                    return v;
                }
                self.h2_round(h);
            }
            panic!("h2 client operation did not complete");
        }

        fn h2_get(&mut self, h: &mut H2Client, send: &mut SendRequest<Bytes>, path: &str) -> (u16, Vec<u8>) {
            let req = http::Request::get(format!("http://www.example.com{path}"))
                .body(())
                .unwrap();
            let (resp, _) = send.send_request(req, true).expect("send_request");
            let mut resp = Box::pin(resp);
            let resp = self.h2_run(h, &mut resp).expect("response");
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut got = Vec::new();
            loop {
                let mut next = Box::pin(std::future::poll_fn(|cx| body.poll_data(cx)));
                match self.h2_run(h, &mut next) {
                    Some(Ok(d)) => {
                        got.extend_from_slice(&d);
                        let _ = body.flow_control().release_capacity(d.len());
                    }
                    Some(Err(e)) => panic!("body: {e:?}"),
                    None => break,
                }
            }
            (status, got)
        }
    }

    #[test]
    fn h2c_requests_in_turn_and_at_once_are_proxied_over_kept_alive_upstreams() {
        let mut w = world();
        let (mut h, mut send) = w.h2_connect(40_200);
        for i in 0..3 {
            let (status, body) = w.h2_get(&mut h, &mut send, "/x");
            assert_eq!((status, &body[..]), (200, &b"hello"[..]), "request {i}");
        }
        assert_eq!(w.server.requests.len(), 3);
        assert!(
            w.server.requests[0].starts_with("GET /x HTTP/1.1\r\nHost: www.example.com\r\n"),
            "{}",
            w.server.requests[0]
        );
        assert_eq!(w.server.accepted, 1, "one kept-alive upstream connection");
        assert_eq!(w.counters().get(L7Count::H2Connections), 1);
        assert_eq!(w.counters().get(L7Count::H2Streams), 3);
        let histogram: u64 = [
            L7Count::RespUnder1ms,
            L7Count::RespUnder10ms,
            L7Count::RespUnder100ms,
            L7Count::RespUnder1s,
            L7Count::RespOver1s,
        ]
        .iter()
        .map(|&c| w.counters().get(c))
        .sum();
        assert_eq!(histogram, 3, "every response is in the response-time histogram");
        assert_eq!(
            w.counters().get(L7Count::RespUnder1ms),
            3,
            "the test's clock does not move"
        );
        w.advance(Duration::from_millis(200));
        assert_eq!(
            w.counters().sessions,
            1,
            "the streams' sessions are gone, the connection's is left"
        );
        assert_eq!(w.counters().get(L7Count::Aborted), 0);
    }

    #[test]
    fn ended_streams_do_not_pile_up_in_the_timer_heap() {
        let mut w = world();
        let (mut h, mut send) = w.h2_connect(40_201);
        let mut most = 0;
        for i in 0..300 {
            let (status, _) = w.h2_get(&mut h, &mut send, "/x");
            assert_eq!(status, 200, "request {i}");
            most = most.max(w.stack.handler().timers.len());
        }
        // Each stream's session filed its idle deadline (75 s away) and ended within the test's still clock.
        let sessions = w.stack.handler().sessions;
        assert!(
            most <= 2 * (sessions + 2) + TIMER_SLACK + 1,
            "{most} timer entries for {sessions} sessions"
        );
        assert_eq!(w.server.requests.len(), 300);
    }

    #[test]
    fn expect_100_continue_over_h2_is_answered_100_before_any_body_byte() {
        let mut w = world();
        let (mut h, mut send) = w.h2_connect(40_202);
        let req = http::Request::post("http://www.example.com/up")
            .header("expect", "100-continue")
            .header("content-length", "4")
            .body(())
            .unwrap();
        let (mut resp, _body) = send.send_request(req, false).expect("send_request");
        let mut info = Box::pin(std::future::poll_fn(|cx| resp.poll_informational(cx)));
        let got = w
            .h2_run(&mut h, &mut info)
            .expect("an informational response")
            .expect("ok");
        assert_eq!(got.status(), 100);
        drop(info);
        // (The test server answers as soon as it has the head: the final response needs no body here.)
        let mut resp = Box::pin(resp);
        let resp = w.h2_run(&mut h, &mut resp).expect("response");
        assert_eq!(resp.status(), 200);
        assert_eq!(w.server.requests.len(), 1);
        assert!(w.server.requests[0].starts_with("POST /up HTTP/1.1\r\n"));
        assert_eq!(w.counters().get(L7Count::Aborted), 0);
    }

    /// Everything the client received so far.
    fn recv_all(w: &mut World, c: ConnId) -> Vec<u8> {
        let mut buf = vec![0u8; 65536];
        let n = w
            .client
            .socket(w.now, c)
            .map_or(0, |s| s.recv_slice(&mut buf).unwrap_or(0));
        buf.truncate(n);
        buf
    }

    /// HTTP/2 frames: (type, flags, stream, payload).
    fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while b.len() >= 9 {
            let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
            let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            out.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        assert!(b.is_empty(), "a partial frame");
        out
    }

    /// The response of `stream` in `frames`: whether its HEADERS say `:status 200` (HPACK static index 8) and
    /// its DATA up to END_STREAM.
    fn response_of(frames: &[(u8, u8, u32, Vec<u8>)], stream: u32) -> (bool, Vec<u8>, bool) {
        let ok = frames
            .iter()
            .any(|f| f.0 == 1 && f.2 == stream && f.3.first() == Some(&0x88));
        let data = frames.iter().filter(|f| f.0 == 0 && f.2 == stream);
        let ended = data.clone().any(|f| f.1 & 1 != 0);
        (ok, data.flat_map(|f| f.3.clone()).collect(), ended)
    }

    #[test]
    fn an_upgrade_h2c_request_is_answered_101_and_served_as_stream_1() {
        use crate::h2::upgrade::{frame_header, hpack_literal, SWITCHING_PROTOCOLS};
        let mut w = world();
        let c = w.connect(40_300);
        let req = b"GET /x HTTP/1.1\r\nHost: www.example.com\r\nConnection: Upgrade, HTTP2-Settings\r\n\
            Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAQAA\r\nX-Req: 1\r\n\r\n";
        w.client.socket(w.now, c).unwrap().send_slice(req).unwrap();
        w.settle();
        let got = recv_all(&mut w, c);
        assert!(
            got.starts_with(SWITCHING_PROTOCOLS),
            "{}",
            String::from_utf8_lossy(&got)
        );
        let first = frames(&got[SWITCHING_PROTOCOLS.len()..]);
        assert_eq!(
            first.len(),
            1,
            "the server's SETTINGS, then it waits for the client's preface"
        );
        assert_eq!((first[0].0, first[0].1), (4, 0));
        assert!(w.server.requests.is_empty());

        // The client's preface and SETTINGS (with an ACK of the server's), then stream 3 on the same connection.
        let mut h2 = crate::h2::PREFACE.to_vec();
        frame_header(&mut h2, 0, 4, 0, 0);
        frame_header(&mut h2, 0, 4, 1, 0);
        w.client.socket(w.now, c).unwrap().send_slice(&h2).unwrap();
        w.settle();
        let mut block = Vec::new();
        for (n, v) in [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/y"),
            (":authority", "www.example.com"),
        ] {
            hpack_literal(&mut block, n.as_bytes(), v.as_bytes());
        }
        let mut h2 = Vec::new();
        frame_header(&mut h2, block.len(), 1, 5, 3);
        h2.extend_from_slice(&block);
        w.client.socket(w.now, c).unwrap().send_slice(&h2).unwrap();
        w.settle();
        let frames = frames(&recv_all(&mut w, c));
        assert!(
            frames.iter().any(|f| f.0 == 4 && f.1 == 1),
            "the client's SETTINGS acknowledged"
        );
        assert_eq!(
            frames.iter().filter(|f| f.0 == 4 && f.1 == 1).count(),
            1,
            "once: the 101 acknowledged HTTP2-Settings"
        );
        assert_eq!(
            response_of(&frames, 1),
            (true, b"hello".to_vec(), true),
            "stream 1: the upgraded request"
        );
        assert_eq!(response_of(&frames, 3), (true, b"hello".to_vec(), true));
        assert!(
            !frames.iter().any(|f| f.0 == 3 || f.0 == 7),
            "no RST_STREAM or GOAWAY: {frames:?}"
        );

        assert_eq!(w.server.requests.len(), 2);
        let upgraded = &w.server.requests[0];
        assert!(
            upgraded.starts_with("GET /x HTTP/1.1\r\nHost: www.example.com\r\nx-req: 1\r\n"),
            "{upgraded}"
        );
        assert!(
            !upgraded.to_ascii_lowercase().contains("upgrade") && !upgraded.contains("HTTP2"),
            "{upgraded}"
        );
        assert!(w.server.requests[1].starts_with("GET /y HTTP/1.1\r\n"));
        assert_eq!(w.counters().get(L7Count::H2Upgrades), 1);
        assert_eq!(w.counters().get(L7Count::H2Connections), 1);
        assert_eq!(w.counters().get(L7Count::H2Streams), 2);
        assert_eq!(w.counters().get(L7Count::Aborted), 0);
    }

    #[test]
    fn an_upgrade_h2c_request_with_a_body_is_answered_over_http1() {
        let mut w = world();
        let c = w.connect(40_301);
        let req = b"POST /x HTTP/1.1\r\nHost: www.example.com\r\nConnection: Upgrade, HTTP2-Settings\r\n\
            Upgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\nContent-Length: 2\r\n\r\nhi";
        let got = w.request(c, req);
        assert!(
            got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("hello"),
            "{got}"
        );
        assert_eq!(w.counters().get(L7Count::H2Upgrades), 0);
        assert_eq!(w.counters().get(L7Count::H2Connections), 0);
    }
}

mod upstream_tls;

#[test]
fn a_segment_for_another_worker_leaves_only_when_the_turn_flushes() {
    let mut mesh = Handoff::mesh(2, 4);
    let mut worker1 = mesh.pop().unwrap();
    let mut w = world_on(None, None, 0, 2, mesh.pop());
    let service = Service {
        stage: L7_STAGE,
        slot: 0,
    };
    // A client SYN to the VIP whose flow worker 1 owns, arriving at worker 0.
    let src = (40000..40064)
        .map(|port| SocketAddrV4::new(CLIENT, port))
        .find(|src| w.stack.handler().owner(service, *src, VIP) == 1)
        .expect("one of 64 flows is worker 1's");
    let mut ip = [0u8; 40];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&CLIENT.octets());
    ip[16..20].copy_from_slice(&VIP.ip().octets());
    let c = xlb_stack::wire::checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip[20..22].copy_from_slice(&src.port().to_be_bytes());
    ip[22..24].copy_from_slice(&VIP.port().to_be_bytes());
    ip[32] = 0x50;
    ip[33] = 0x02; // SYN
    let mut frame = ethernet(&ip, CLIENT_MAC, EXT_MAC);
    let len = frame.len();
    frame.resize(2048, 0);
    let verdict = w.stack.process(w.now, 0, &mut Frame::new(&mut frame, len));
    assert_eq!(verdict, Verdict::Consumed, "handed over");
    assert!(
        worker1.receive().is_none(),
        "nothing sent from inside packet processing"
    );
    assert_eq!(w.stack.handler().counters().get(L7Count::HandedOff), 0);
    w.stack.flush_events();
    let handed = worker1.receive().expect("sent by the flush");
    assert_eq!(&handed.buf[..handed.len], &frame[..len]);
    assert_eq!(w.stack.handler().counters().get(L7Count::HandedOff), 1);
}
