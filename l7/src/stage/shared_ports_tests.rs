//! L4 and L7 on one worker, as the daemon composes them (`Stages`), with one pool of local ports: an upstream
//! connection of the L7 stage and a FULLNAT flow of the L4 forwarder to the same server take distinct ports
//! from it, and the server's replies reach the stage holding each port.

use smoltcp::socket::tcp::State;
use xlb_l4::config::{GroupConfig, L4Config, ListenerConfig};
use xlb_l4::forward::{Forwarder, ForwarderConfig};
use xlb_l4::layout::{Layout, RemovedServerPolicy};
use xlb_l4::sched::{MaglevTables, SchedulerKind};
use xlb_l4::stats::SharedL4Counters;
use xlb_stack::local::LocalStack;
use xlb_stack::pipeline::Pipeline;
use xlb_stack::stages::Stages;
use xlb_stack::wire::{EthernetAddress, EthernetFrame, EthernetProtocol};

use super::tests::two_links;
use super::upstreams::ServerSpec;
use super::*;
use crate::config::{HttpListenerConfig, ListenerProtocol};

const EXT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x10]);
const INT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x11]);
const CLIENT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x01]);
const SERVER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x02]);
/// The HTTP listener (L7).
const HTTP_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);
/// The TCP FULLNAT listener (L4), to the same server.
const TCP_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 101), 80);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const EXT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 1), 8080);
const LIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
const HELLO: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: www.example.com\r\n\r\n";

type Worker = LocalStack<Stages<Forwarder, L7Stage>>;

fn l4_stage(board: &Arc<HealthBoard>, now: Instant) -> (Forwarder, LocalPorts) {
    let listener: ListenerConfig = toml::from_str(&format!(
        "name = \"tcp\"\nvip = \"{}\"\nport = {}\nprotocol = \"tcp\"\nscheduler = \"rr\"\nforwarding = \"fullnat\"\n\
         group = \"web\"",
        TCP_VIP.ip(),
        TCP_VIP.port()
    ))
    .unwrap();
    let group: GroupConfig = toml::from_str(&format!("name = \"web\"\nservers = [{{ addr = \"{SERVER}\" }}]")).unwrap();
    let layout = Layout::new(&[listener], &[group], RemovedServerPolicy::Keep);
    let config = ForwarderConfig {
        maglev: Arc::new(MaglevTables::build(&layout, board, None)),
        layout: Arc::new(layout),
        vip_ifaces: vec![0],
        l4: L4Config {
            syn_proxy: xlb_l4::config::SynProxyMode::Off,
            ..L4Config::default()
        },
        local_ips: vec![EXT_IP, LIP],
        worker: 0,
        workers: 1,
        port_ifaces: vec![0, 1],
    };
    let ports = config.local_ports();
    let forwarder = Forwarder::new(
        config,
        None,
        None,
        board.clone(),
        Arc::new(SharedL4Counters::new(&[1])),
        None,
        now,
    );
    (forwarder, ports)
}

fn l7_stage(board: &Arc<HealthBoard>, now: Instant) -> L7Stage {
    let listener = HttpListenerConfig {
        protocol: ListenerProtocol::Http,
        group: "web".into(),
        rules: vec![],
        sticky: None,
        hash: None,
    };
    let proxy = ProxyConfig::new(L7Config::default(), &listener, "listener[0]", &["web"], 7).unwrap();
    L7Stage::new(
        L7StageConfig {
            limits: L7Config::default(),
            listeners: vec![StageListener {
                name: "web".into(),
                vip: HTTP_VIP,
                proxy: Arc::new(proxy),
                tls: None,
            }],
            groups: vec![GroupSpec {
                name: "web".into(),
                scheduler: SchedulerKind::Rr,
                servers: vec![ServerSpec {
                    addr: SERVER,
                    weight: 1,
                    target: None,
                }],
                tls: None,
            }],
            board: board.clone(),
            maglev: Arc::default(),
            worker: 0,
            workers: 1,
            port_ifaces: vec![0, 1],
            access_log: None,
            handshakes: None,
        },
        Arc::new(SharedL7Counters::default()),
        None,
        now,
    )
}

/// The worker, a client and a server (in-stack TCP hosts of their own) that answers `hello` to each request
/// head and records what else it receives.
struct World {
    now: Instant,
    stack: Worker,
    client: TcpHost,
    server: TcpHost,
    server_conns: Vec<ConnId>,
    server_bytes: Vec<u8>,
}

impl World {
    fn new() -> World {
        let now = Instant::now();
        let board = Arc::new(HealthBoard::new(0));
        let (forwarder, ports) = l4_stage(&board, now);
        let mut stack = LocalStack::with_ports(
            two_links(),
            ports,
            Stages::new(forwarder, l7_stage(&board, now), L7_STAGE),
        );
        stack.add_owned(0, *HTTP_VIP.ip());
        stack.add_owned(0, *TCP_VIP.ip());
        stack.neighbours().learn(now, 0, EXT_IP, CLIENT, CLIENT_MAC, true);
        stack.neighbours().learn(now, 1, LIP, *SERVER.ip(), SERVER_MAC, true);
        World {
            now,
            stack,
            client: TcpHost::new(TcpConfig::default(), now, 11),
            server: TcpHost::new(TcpConfig::default(), now, 12),
            server_conns: Vec::new(),
            server_bytes: Vec::new(),
        }
    }

    fn deliver(&mut self, frame: &[u8]) {
        let dst = EthernetAddress::from_bytes(&frame[0..6]);
        let ip = &frame[ETH_HEADER_LEN..];
        if dst == CLIENT_MAC {
            self.client.ingress(self.now, ip, false);
        } else if dst == SERVER_MAC {
            if let Ingress::Accepted(c) = self.server.ingress(self.now, ip, true) {
                self.server.set_token(c, 1);
                self.server_conns.push(c);
            }
        }
    }

    fn send_to_xlb(&mut self, ip: &[u8], src: EthernetAddress, port: PortId) {
        let mut frame = vec![0u8; 2048];
        let len = ETH_HEADER_LEN + ip.len();
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.set_src_addr(src);
        eth.set_dst_addr(if port == 0 { EXT_MAC } else { INT_MAC });
        eth.set_ethertype(EthernetProtocol::Ipv4);
        frame[ETH_HEADER_LEN..len].copy_from_slice(ip);
        let mut f = Frame::new(&mut frame, len);
        if let Verdict::Transmit(_) = self.stack.process(self.now, port, &mut f) {
            let out = f.data().to_vec();
            self.deliver(&out);
        }
    }

    fn serve(&mut self) {
        for &c in &self.server_conns {
            let Some(s) = self.server.socket(self.now, c) else {
                continue;
            };
            let mut buf = [0u8; 4096];
            let n = s.recv_slice(&mut buf).unwrap_or(0);
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            for _ in text.matches("\r\n\r\n") {
                s.send_slice(HELLO).unwrap();
            }
            self.server_bytes.extend_from_slice(&buf[..n]);
        }
    }

    /// Moves frames until nobody has anything to send.
    fn settle(&mut self) {
        let mut buf = vec![0u8; 2048];
        for _ in 0..500 {
            let mut moved = false;
            while let Some((len, _)) = self.client.poll_transmit(self.now, &mut buf) {
                let ip = buf[..len].to_vec();
                self.send_to_xlb(&ip, CLIENT_MAC, 0);
                moved = true;
            }
            while let Some((len, _)) = self.server.poll_transmit(self.now, &mut buf) {
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
            self.serve();
            if !moved {
                return;
            }
        }
        panic!("no quiet moment in 500 rounds");
    }

    fn connect(&mut self, port: u16, vip: SocketAddrV4) -> ConnId {
        let c = self
            .client
            .connect(self.now, SocketAddrV4::new(CLIENT, port), vip, 1)
            .unwrap();
        self.settle();
        assert_eq!(
            self.client.state(c),
            Some(State::Established),
            "handshake through {vip}"
        );
        c
    }

    fn send(&mut self, c: ConnId, bytes: &[u8]) -> String {
        self.client.socket(self.now, c).unwrap().send_slice(bytes).unwrap();
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

    /// The local port (at the server) of the server's `i`-th connection.
    fn server_side_port(&mut self, i: usize) -> u16 {
        let tuple = self.server.tuple(self.server_conns[i]).unwrap();
        assert_eq!(*tuple.remote.ip(), LIP);
        tuple.remote.port()
    }
}

#[test]
fn an_upstream_connection_and_a_fullnat_flow_to_one_server_take_distinct_ports_of_one_pool_and_get_their_replies() {
    let mut w = World::new();
    let http = w.connect(40_000, HTTP_VIP);
    assert!(w.send(http, GET).ends_with("hello"), "proxied by L7");
    let upstream_port = w.server_side_port(0);
    assert!(w.stack.local_ports().is_upstream(LIP, SERVER, upstream_port));

    // A FULLNAT client whose own port is the one the upstream connection holds: L4 would keep the client's
    // port if it were free.
    let tcp = w.connect(upstream_port, TCP_VIP);
    assert_eq!(w.server_conns.len(), 2, "the FULLNAT flow reached the server");
    let fullnat_port = w.server_side_port(1);
    assert_ne!(fullnat_port, upstream_port, "one pool: the port is taken");
    assert!(!w.stack.local_ports().is_upstream(LIP, SERVER, fullnat_port));
    let ports = w.stack.local_ports().occupancy();
    assert_eq!(
        (ports.pools, ports.in_use),
        (1, 2),
        "one (local IP, server) pool holds both"
    );

    // Replies reach each: bytes over the FULLNAT flow both ways, and another request over the kept upstream
    // connection (its replies pass through L4's range to L7).
    w.send(tcp, b"ping");
    assert!(w.server_bytes.ends_with(b"ping"));
    let fullnat_conn = w.server_conns[1];
    w.server
        .socket(w.now, fullnat_conn)
        .unwrap()
        .send_slice(b"pong")
        .unwrap();
    w.settle();
    let mut buf = [0u8; 16];
    let n = w.client.socket(w.now, tcp).unwrap().recv_slice(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"pong", "the server's reply reached the client through L4");
    assert!(
        w.send(http, GET).ends_with("hello"),
        "and L7's upstream replies still reach L7"
    );
    assert_eq!(w.server_conns.len(), 2, "over the same upstream connection");
    assert_eq!(w.stack.handler().second.counters().get(L7Count::UpstreamReused), 1);
}
