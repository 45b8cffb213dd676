//! Tests of the checker on a fake clock: probes are read back with smoltcp's views (an implementation
//! independent of ours, checksums included) and replies built with our builders or the stack's ICMP builder.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use xlb_stack::wire::build::{self, Unreachable};
use xlb_stack::wire::{EthernetAddress, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket, ETH_HEADER_LEN};

use super::packets::{self, TcpOut};
use super::*;
use crate::stats::SharedHealthCounters;

const SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const INTERVAL: Duration = Duration::from_millis(1000);
const TIMEOUT: Duration = Duration::from_millis(500);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn id(server: usize) -> TargetId {
    TargetId { group: 0, server }
}

fn server_addr(server: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 20 + server as u8), 80)
}

fn target(kind: CheckKind, server: usize) -> Target {
    Target {
        id: id(server),
        server: server_addr(server),
        source: SOURCE,
        check: HealthCheckConfig::new(kind),
    }
}

const PORTS: ProbePorts = ProbePorts {
    base: 40000,
    count: 16,
    stride: 1,
};

/// A TCP segment read back with smoltcp, checksums verified.
#[derive(Debug, Clone)]
struct Seg {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    syn: bool,
    ack_flag: bool,
    rst: bool,
    fin: bool,
    window: u16,
    options: Vec<u8>,
    payload: Vec<u8>,
}

fn read_ipv4(pkt: &[u8]) -> Ipv4Packet<&[u8]> {
    let ip = Ipv4Packet::new_checked(pkt).expect("a well-formed IPv4 packet");
    assert!(ip.verify_checksum(), "IPv4 header checksum");
    assert_eq!(usize::from(ip.total_len()), pkt.len());
    ip
}

fn read_tcp(pkt: &[u8]) -> Seg {
    let ip = read_ipv4(pkt);
    assert_eq!(ip.next_header(), IpProtocol::Tcp);
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let t = TcpPacket::new_checked(ip.payload()).expect("a well-formed TCP header");
    assert!(t.verify_checksum(&src.into(), &dst.into()), "TCP checksum");
    Seg {
        src: SocketAddrV4::new(src, t.src_port()),
        dst: SocketAddrV4::new(dst, t.dst_port()),
        seq: t.seq_number().0 as u32,
        ack: t.ack_number().0 as u32,
        syn: t.syn(),
        ack_flag: t.ack(),
        rst: t.rst(),
        fin: t.fin(),
        window: t.window_len(),
        options: t.options().to_vec(),
        payload: t.payload().to_vec(),
    }
}

/// A UDP datagram read back with smoltcp, checksums verified: (source, destination, payload).
fn read_udp(pkt: &[u8]) -> (SocketAddrV4, SocketAddrV4, Vec<u8>) {
    let ip = read_ipv4(pkt);
    assert_eq!(ip.next_header(), IpProtocol::Udp);
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let u = UdpPacket::new_checked(ip.payload()).expect("a well-formed UDP header");
    assert!(u.verify_checksum(&src.into(), &dst.into()), "UDP checksum");
    (
        SocketAddrV4::new(src, u.src_port()),
        SocketAddrV4::new(dst, u.dst_port()),
        u.payload().to_vec(),
    )
}

/// The server's answer to `to` (a segment we sent).
fn reply(to: &Seg, flags: TcpFlags, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let len = packets::tcp(
        &mut buf,
        &TcpOut {
            src: to.dst,
            dst: to.src,
            seq,
            ack,
            flags,
            mss: None,
            payload,
        },
    );
    buf.truncate(len);
    buf
}

fn udp_reply(to: &[u8], payload: &[u8]) -> Vec<u8> {
    let (src, dst, _) = read_udp(to);
    let mut buf = vec![0u8; 2048];
    let len = packets::udp(&mut buf, dst, src, payload);
    buf.truncate(len);
    buf
}

/// An ICMP destination unreachable from `from` quoting `probe`, built by the stack's builder.
fn icmp_unreachable(from: Ipv4Addr, probe: &[u8], code: Unreachable) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let quote = &probe[..20 + 8];
    let mac = EthernetAddress([2, 0, 0, 0, 0, 1]);
    let len = build::icmp_unreachable(&mut buf, mac, mac, from, SOURCE, code, quote);
    buf[ETH_HEADER_LEN..len].to_vec()
}

/// A model of the servers: the packets it answers a probe packet with (sent at the given time since `t0`).
type Server<'a> = dyn FnMut(Duration, &[u8]) -> Vec<Vec<u8>> + 'a;

/// The checker on a fake clock.
struct Lab {
    hc: HealthChecker,
    t0: Instant,
    now: Instant,
    buf: Vec<u8>,
    events: Vec<(Duration, HealthEvent)>,
}

impl Lab {
    fn new(targets: Vec<Target>) -> Self {
        Self::with_ports(targets, PORTS)
    }

    fn with_ports(targets: Vec<Target>, ports: ProbePorts) -> Self {
        let t0 = Instant::now();
        Lab {
            hc: HealthChecker::new(t0, targets, ports),
            t0,
            now: t0,
            buf: vec![0u8; MAX_PACKET_LEN],
            events: Vec::new(),
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// Moves the clock to `t0 + at` and runs the timers.
    fn at(&mut self, at: Duration) {
        self.now = self.t0 + at;
        self.hc.handle_timeout(self.now);
        self.collect_events();
    }

    /// Every packet the checker wants sent now.
    fn transmit(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(len) = self.hc.poll_transmit(self.now, &mut self.buf) {
            assert!((20..=MAX_PACKET_LEN).contains(&len));
            out.push(self.buf[..len].to_vec());
        }
        self.collect_events();
        out
    }

    /// The one packet the checker wants sent now.
    fn transmit_one(&mut self) -> Vec<u8> {
        let mut out = self.transmit();
        assert_eq!(out.len(), 1, "expected exactly one packet");
        out.pop().unwrap()
    }

    fn deliver(&mut self, pkt: &[u8]) -> bool {
        let consumed = self.hc.handle_packet(self.now, pkt);
        self.collect_events();
        consumed
    }

    fn collect_events(&mut self) {
        while let Some(e) = self.hc.poll_event() {
            let at = self.elapsed();
            self.events.push((at, e));
        }
    }

    /// Runs the loop a worker runs until just before `t0 + until` (then runs the timers at `until`): sleep to `poll_timeout`, run timers, send, and hand
    /// every sent packet to `server`, whose answers are delivered at once (and must be consumed).
    fn run(&mut self, until: Duration, server: &mut Server<'_>) {
        let end = self.t0 + until;
        for _ in 0..100_000 {
            for pkt in self.transmit() {
                let now = self.elapsed();
                for answer in server(now, &pkt) {
                    assert!(self.deliver(&answer), "answer not consumed at {now:?}");
                }
            }
            match self.hc.poll_timeout() {
                Some(next) if next < end => {
                    assert!(next >= self.now, "poll_timeout went back in time");
                    assert!(
                        next > self.now || !self.transmit_would_be_empty(),
                        "poll_timeout asks for a wakeup now with nothing to do"
                    );
                    self.now = next;
                    self.hc.handle_timeout(next);
                    self.collect_events();
                }
                _ => {
                    self.at(until);
                    return;
                }
            }
        }
        panic!("the checker loop did not reach {until:?}");
    }

    fn transmit_would_be_empty(&self) -> bool {
        self.hc.ready.is_empty() && (self.hc.due.is_empty() || !self.hc.has_free_slot())
    }
}

/// A TCP server: SYN-ACK when `listening` (server ISN 7000), else RST. Ignores our RSTs.
fn tcp_server(listening: Rc<Cell<bool>>) -> impl FnMut(Duration, &[u8]) -> Vec<Vec<u8>> {
    move |_, pkt| {
        let s = read_tcp(pkt);
        if !s.syn {
            return vec![];
        }
        if listening.get() {
            vec![reply(&s, TcpFlags::SYN_ACK, 7000, s.seq.wrapping_add(1), &[])]
        } else {
            vec![reply(&s, TcpFlags::RST | TcpFlags::ACK, 0, s.seq.wrapping_add(1), &[])]
        }
    }
}

/// An HTTP server answering every request with `response` (and a FIN).
fn http_server(response: &'static [u8]) -> impl FnMut(Duration, &[u8]) -> Vec<Vec<u8>> {
    move |_, pkt| {
        let s = read_tcp(pkt);
        if s.syn {
            return vec![reply(&s, TcpFlags::SYN_ACK, 7000, s.seq.wrapping_add(1), &[])];
        }
        if !s.payload.is_empty() {
            let ack = s.seq.wrapping_add(s.payload.len() as u32);
            return vec![reply(
                &s,
                TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN,
                s.ack,
                ack,
                response,
            )];
        }
        vec![]
    }
}

fn silent() -> impl FnMut(Duration, &[u8]) -> Vec<Vec<u8>> {
    |_, _| vec![]
}

// --- tcp ---

#[test]
fn tcp_syn_is_well_formed() {
    let mut lab = Lab::new(vec![target(CheckKind::Tcp, 0)]);
    assert_eq!(lab.hc.poll_timeout(), Some(lab.t0), "the only target is due at once");
    let syn = read_tcp(&lab.transmit_one());
    assert_eq!(syn.src, SocketAddrV4::new(SOURCE, 40000));
    assert_eq!(syn.dst, server_addr(0));
    assert!(syn.syn && !syn.ack_flag && !syn.rst && !syn.fin);
    assert_eq!(syn.window, 1024);
    assert_eq!(syn.options, [2, 4, 0x05, 0xb4], "MSS 1460 and nothing else");
    assert!(syn.payload.is_empty());
    assert_eq!(lab.hc.counters().probes, 1);
    assert_eq!(lab.hc.poll_timeout(), Some(lab.t0 + TIMEOUT));
}

#[test]
fn tcp_syn_ack_succeeds_and_is_reset_with_their_ack() {
    let mut lab = Lab::new(vec![target(CheckKind::Tcp, 0)]);
    let syn = read_tcp(&lab.transmit_one());
    lab.at(ms(3));
    assert!(lab.deliver(&reply(&syn, TcpFlags::SYN_ACK, 555, syn.seq.wrapping_add(1), &[])));
    assert_eq!(lab.hc.counters().successes, 1);
    assert_eq!(lab.hc.counters().failures, 0);
    let rst = read_tcp(&lab.transmit_one());
    assert!(rst.rst && !rst.syn && !rst.ack_flag);
    assert_eq!(rst.seq, syn.seq.wrapping_add(1), "seq = the SYN-ACK's ack");
    assert_eq!((rst.src, rst.dst), (syn.src, syn.dst));
    assert!(lab.transmit().is_empty());
    assert!(lab.hc.is_up(id(0)));
    assert!(lab.events.is_empty(), "a success while up is no transition");
    // The probe is over: its timeout does not count, the next probe is one interval later.
    assert_eq!(
        lab.hc.poll_timeout(),
        Some(lab.t0 + TIMEOUT),
        "stale deadline only wakes"
    );
    lab.at(TIMEOUT);
    assert_eq!(lab.hc.counters().failures, 0);
    assert_eq!(lab.hc.poll_timeout(), Some(lab.t0 + INTERVAL));
}

#[test]
fn tcp_syn_ack_with_wrong_ack_is_ignored() {
    let mut lab = Lab::new(vec![target(CheckKind::Tcp, 0)]);
    let syn = read_tcp(&lab.transmit_one());
    assert!(lab.deliver(&reply(&syn, TcpFlags::SYN_ACK, 555, syn.seq.wrapping_add(9), &[])));
    assert_eq!(lab.hc.counters().successes, 0);
    assert!(lab.transmit().is_empty());
    lab.at(TIMEOUT);
    assert_eq!(lab.hc.last_failure(id(0)), Some(Failure::Timeout));
}

#[test]
fn tcp_fall_timeouts_go_down_exactly_once() {
    let mut lab = Lab::new(vec![target(CheckKind::Tcp, 0)]);
    lab.run(ms(10_000), &mut silent());
    // Probes at 0, 1000, ...; the second one times out at 1500.
    assert_eq!(lab.events, vec![(ms(1500), HealthEvent::Down(id(0)))]);
    assert!(!lab.hc.is_up(id(0)));
    assert_eq!(lab.hc.counters().probes, 10);
    assert_eq!(lab.hc.counters().timeouts, 10);
    assert_eq!(lab.hc.last_failure(id(0)), Some(Failure::Timeout));
}

#[test]
fn tcp_rise_successes_come_up_exactly_once() {
    let mut lab = Lab::new(vec![target(CheckKind::Tcp, 0)]);
    let listening = Rc::new(Cell::new(false));
    let mut server = tcp_server(listening.clone());
    lab.run(ms(2900), &mut silent());
    assert_eq!(lab.events, vec![(ms(1500), HealthEvent::Down(id(0)))]);
    listening.set(true);
    lab.run(ms(10_000), &mut server);
    // Successes at 3000 (1 of 2) and 4000 (2 of 2): up at the second.
    assert_eq!(
        lab.events,
        vec![(ms(1500), HealthEvent::Down(id(0))), (ms(4000), HealthEvent::Up(id(0)))]
    );
    assert!(lab.hc.is_up(id(0)));
    assert_eq!(lab.hc.counters().successes, 7);
}

#[test]
fn tcp_rst_fails_at_once() {
    let mut lab = Lab::new(vec![target(CheckKind::Tcp, 0)]);
    let syn = read_tcp(&lab.transmit_one());
    lab.at(ms(1));
    // A RST that does not acknowledge our SYN is not believed.
    assert!(lab.deliver(&reply(&syn, TcpFlags::RST, 0, 0, &[])));
    assert_eq!(lab.hc.counters().failures, 0);
    assert!(lab.deliver(&reply(
        &syn,
        TcpFlags::RST | TcpFlags::ACK,
        0,
        syn.seq.wrapping_add(1),
        &[]
    )));
    assert_eq!(lab.hc.counters().failures, 1);
    assert_eq!(lab.hc.last_failure(id(0)), Some(Failure::Refused));
    assert!(lab.transmit().is_empty(), "no RST answers a RST");
    // Refusals take the target down at the second probe's RST, not at a timeout.
    let listening = Rc::new(Cell::new(false));
    lab.run(ms(3000), &mut tcp_server(listening));
    assert_eq!(lab.events, vec![(ms(1000), HealthEvent::Down(id(0)))]);
    assert_eq!(lab.hc.counters().timeouts, 0);
}

#[test]
fn tcp_icmp_unreachable_fails() {
    let mut lab = Lab::new(vec![target(CheckKind::Tcp, 0)]);
    let probe = lab.transmit_one();
    let router = Ipv4Addr::new(198, 18, 0, 1);
    assert!(lab.deliver(&icmp_unreachable(router, &probe, Unreachable::Host)));
    assert_eq!(lab.hc.last_failure(id(0)), Some(Failure::Unreachable(1)));
    assert_eq!(lab.hc.counters().failures, 1);
    assert!(lab.transmit().is_empty());
}

#[test]
fn icmp_quoting_something_else_is_not_consumed() {
    let mut lab = Lab::new(vec![target(CheckKind::Tcp, 0)]);
    let probe = lab.transmit_one();
    let router = Ipv4Addr::new(198, 18, 0, 1);
    // The same packet with another sequence number: not something we sent.
    let syn = read_tcp(&probe);
    let mut buf = vec![0u8; 128];
    let len = packets::tcp(
        &mut buf,
        &TcpOut {
            src: syn.src,
            dst: syn.dst,
            seq: syn.seq.wrapping_add(1000),
            ack: 0,
            flags: TcpFlags::SYN,
            mss: None,
            payload: &[],
        },
    );
    assert!(!lab.deliver(&icmp_unreachable(router, &buf[..len], Unreachable::Host)));
    // Another source port.
    let len = packets::tcp(
        &mut buf,
        &TcpOut {
            src: SocketAddrV4::new(SOURCE, 12345),
            dst: syn.dst,
            seq: syn.seq,
            ack: 0,
            flags: TcpFlags::SYN,
            mss: None,
            payload: &[],
        },
    );
    assert!(!lab.deliver(&icmp_unreachable(router, &buf[..len], Unreachable::Host)));
    assert_eq!(lab.hc.counters().failures, 0);
}

// --- udp ---

#[test]
fn udp_reply_succeeds() {
    let mut lab = Lab::new(vec![target(CheckKind::Udp, 0)]);
    let probe = lab.transmit_one();
    let (src, dst, payload) = read_udp(&probe);
    assert_eq!(src, SocketAddrV4::new(SOURCE, 40000));
    assert_eq!(dst, server_addr(0));
    assert_eq!(payload, b"xlb-health");
    lab.at(ms(2));
    assert!(lab.deliver(&udp_reply(&probe, b"pong")));
    assert_eq!(lab.hc.counters().successes, 1);
    assert!(lab.transmit().is_empty());
    // A second reply: the probe is over, the local stack may answer it.
    assert!(!lab.deliver(&udp_reply(&probe, b"pong")));
}

#[test]
fn udp_port_unreachable_fails() {
    let mut lab = Lab::new(vec![target(CheckKind::Udp, 0)]);
    let probe = lab.transmit_one();
    assert!(lab.deliver(&icmp_unreachable(*server_addr(0).ip(), &probe, Unreachable::Port)));
    assert_eq!(lab.hc.last_failure(id(0)), Some(Failure::Unreachable(3)));
    assert_eq!(lab.hc.counters().failures, 1);
}

#[test]
fn udp_silence_fails() {
    let mut lab = Lab::new(vec![target(CheckKind::Udp, 0)]);
    lab.run(ms(2000), &mut silent());
    assert_eq!(lab.events, vec![(ms(1500), HealthEvent::Down(id(0)))]);
    assert_eq!(lab.hc.counters().timeouts, 2);
}

#[test]
fn udp_custom_payload_is_sent() {
    let mut t = target(CheckKind::Udp, 0);
    t.check.payload = Some("ping".into());
    let mut lab = Lab::new(vec![t]);
    let (_, _, payload) = read_udp(&lab.transmit_one());
    assert_eq!(payload, b"ping");
}

// --- http ---

const REQUEST: &[u8] = b"GET / HTTP/1.0\r\nHost: 198.18.0.20\r\nUser-Agent: xlb-health\r\nConnection: close\r\n\r\n";

#[test]
fn http_exchange_is_well_formed() {
    let mut lab = Lab::new(vec![target(CheckKind::Http, 0)]);
    let syn = read_tcp(&lab.transmit_one());
    assert!(syn.syn);
    lab.at(ms(1));
    assert!(lab.deliver(&reply(&syn, TcpFlags::SYN_ACK, 7000, syn.seq.wrapping_add(1), &[])));
    let req = read_tcp(&lab.transmit_one());
    assert!(req.ack_flag && !req.syn && !req.rst);
    assert_eq!(req.seq, syn.seq.wrapping_add(1));
    assert_eq!(req.ack, 7001);
    assert_eq!(req.payload, REQUEST);
    lab.at(ms(2));
    let response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let snd_nxt = req.seq.wrapping_add(REQUEST.len() as u32);
    assert!(lab.deliver(&reply(&req, TcpFlags::ACK | TcpFlags::PSH, 7001, snd_nxt, response)));
    assert_eq!(lab.hc.counters().successes, 1);
    let rst = read_tcp(&lab.transmit_one());
    assert!(rst.rst);
    assert_eq!(rst.seq, snd_nxt, "RST at the server's rcv_nxt");
    assert!(lab.transmit().is_empty());
}

#[test]
fn http_200_brings_a_down_server_up() {
    let mut lab = Lab::new(vec![target(CheckKind::Http, 0)]);
    lab.run(ms(2500), &mut silent());
    assert!(!lab.hc.is_up(id(0)));
    lab.run(
        ms(6000),
        &mut http_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    );
    assert_eq!(
        lab.events,
        vec![(ms(1500), HealthEvent::Down(id(0))), (ms(4000), HealthEvent::Up(id(0)))]
    );
    assert!(lab.hc.is_up(id(0)));
}

#[test]
fn http_500_fails_and_goes_down() {
    let mut lab = Lab::new(vec![target(CheckKind::Http, 0)]);
    let mut sent = Vec::new();
    let mut server = http_server(b"HTTP/1.1 500 Internal Server Error\r\n\r\n");
    lab.run(ms(1999), &mut |now, pkt: &[u8]| {
        sent.push(read_tcp(pkt));
        server(now, pkt)
    });
    assert_eq!(lab.events, vec![(ms(1000), HealthEvent::Down(id(0)))]);
    assert_eq!(lab.hc.last_failure(id(0)), Some(Failure::BadStatus(500)));
    assert_eq!(lab.hc.counters().failures, 2);
    assert_eq!(lab.hc.counters().timeouts, 0);
    // Each probe: TcpFlags::SYN, request, RST.
    let kinds: Vec<_> = sent.iter().map(|s| (s.syn, !s.payload.is_empty(), s.rst)).collect();
    let probe = [(true, false, false), (false, true, false), (false, false, true)];
    assert_eq!(kinds, [probe, probe].concat());
}

#[test]
fn http_expect_status_is_exact() {
    let mut t = target(CheckKind::Http, 0);
    t.check.expect_status = Some(204);
    t.check.fall = 1;
    let mut lab = Lab::new(vec![t]);
    lab.run(ms(500), &mut http_server(b"HTTP/1.1 200 OK\r\n\r\n"));
    assert_eq!(lab.hc.last_failure(id(0)), Some(Failure::BadStatus(200)));
    assert!(!lab.hc.is_up(id(0)));
}

#[test]
fn http_status_line_split_across_segments() {
    let mut lab = Lab::new(vec![target(CheckKind::Http, 0)]);
    let syn = read_tcp(&lab.transmit_one());
    lab.deliver(&reply(&syn, TcpFlags::SYN_ACK, 7000, syn.seq.wrapping_add(1), &[]));
    let req = read_tcp(&lab.transmit_one());
    let snd_nxt = req.seq.wrapping_add(req.payload.len() as u32);
    assert!(lab.deliver(&reply(&req, TcpFlags::ACK, 7001, snd_nxt, b"HTTP/1.1 2")));
    assert_eq!(lab.hc.counters().successes, 0);
    let ack = read_tcp(&lab.transmit_one());
    assert!(ack.ack_flag && ack.payload.is_empty() && !ack.rst);
    assert_eq!((ack.seq, ack.ack), (snd_nxt, 7011));
    assert!(lab.deliver(&reply(&req, TcpFlags::ACK, 7011, snd_nxt, b"04 No Content\r\n\r\n")));
    assert_eq!(lab.hc.counters().successes, 1);
    let rst = read_tcp(&lab.transmit_one());
    assert!(rst.rst);
    assert_eq!(rst.seq, snd_nxt);
}

#[test]
fn http_out_of_order_segment_is_ignored() {
    let mut lab = Lab::new(vec![target(CheckKind::Http, 0)]);
    let syn = read_tcp(&lab.transmit_one());
    lab.deliver(&reply(&syn, TcpFlags::SYN_ACK, 7000, syn.seq.wrapping_add(1), &[]));
    let req = read_tcp(&lab.transmit_one());
    let snd_nxt = req.seq.wrapping_add(req.payload.len() as u32);
    // The second half first: not used, a duplicate ACK says what is expected.
    assert!(lab.deliver(&reply(&req, TcpFlags::ACK, 7005, snd_nxt, b"1.0 200 OK\r\n")));
    let dup = read_tcp(&lab.transmit_one());
    assert_eq!(dup.ack, 7001);
    assert_eq!(lab.hc.counters().successes, 0);
    // The server retransmits from the start.
    assert!(lab.deliver(&reply(&req, TcpFlags::ACK, 7001, snd_nxt, b"HTTP/1.0 200 OK\r\n")));
    assert_eq!(lab.hc.counters().successes, 1);
}

#[test]
fn http_garbage_and_early_close_fail() {
    let mut lab = Lab::new(vec![target(CheckKind::Http, 0)]);
    let syn = read_tcp(&lab.transmit_one());
    lab.deliver(&reply(&syn, TcpFlags::SYN_ACK, 7000, syn.seq.wrapping_add(1), &[]));
    let req = read_tcp(&lab.transmit_one());
    let snd_nxt = req.seq.wrapping_add(req.payload.len() as u32);
    assert!(lab.deliver(&reply(&req, TcpFlags::ACK | TcpFlags::FIN, 7001, snd_nxt, b"HTTP/1.")));
    assert_eq!(lab.hc.last_failure(id(0)), Some(Failure::BadResponse));
    assert!(read_tcp(&lab.transmit_one()).rst);
}

#[test]
fn http_timeout_after_connect_resets_the_connection() {
    let mut lab = Lab::new(vec![target(CheckKind::Http, 0)]);
    let syn = read_tcp(&lab.transmit_one());
    lab.deliver(&reply(&syn, TcpFlags::SYN_ACK, 7000, syn.seq.wrapping_add(1), &[]));
    let req = read_tcp(&lab.transmit_one());
    lab.at(TIMEOUT);
    assert_eq!(lab.hc.last_failure(id(0)), Some(Failure::Timeout));
    let rst = read_tcp(&lab.transmit_one());
    assert!(rst.rst);
    assert_eq!(rst.seq, req.seq.wrapping_add(req.payload.len() as u32));
}

// --- matching, ports, checksums ---

#[test]
fn replies_to_unknown_ports_are_not_consumed() {
    let mut lab = Lab::new(vec![target(CheckKind::Tcp, 0)]);
    let syn = read_tcp(&lab.transmit_one());
    let answer = |dst_port: u16| {
        let mut to = syn.clone();
        to.src.set_port(dst_port);
        reply(&to, TcpFlags::SYN_ACK, 1, syn.seq.wrapping_add(1), &[])
    };
    assert!(!lab.deliver(&answer(39999)), "not a checker port");
    assert!(!lab.deliver(&answer(40001)), "a checker port with no probe in flight");
    // From another address to the live port.
    let mut other = syn.clone();
    other.dst = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 99), 80);
    assert!(!lab.deliver(&reply(&other, TcpFlags::SYN_ACK, 1, syn.seq.wrapping_add(1), &[])));
    // From the server's address but another port.
    let mut other = syn.clone();
    other.dst.set_port(81);
    assert!(!lab.deliver(&reply(&other, TcpFlags::SYN_ACK, 1, syn.seq.wrapping_add(1), &[])));
    // UDP to the TCP probe's port.
    let mut buf = vec![0u8; 128];
    let len = packets::udp(&mut buf, syn.dst, syn.src, b"x");
    assert!(!lab.deliver(&buf[..len]));
    assert!(!lab.deliver(b"not an IPv4 packet at all"));
    assert_eq!(lab.hc.counters().successes, 0);
    // The real answer still works, and once the probe is over its port is free again.
    let good = answer(40000);
    assert!(lab.deliver(&good));
    assert!(!lab.deliver(&good), "a late duplicate is left to the local stack");
}

#[test]
fn bad_checksum_is_consumed_but_ignored() {
    let mut lab = Lab::new(vec![target(CheckKind::Tcp, 0)]);
    let syn = read_tcp(&lab.transmit_one());
    let mut bad = reply(&syn, TcpFlags::SYN_ACK, 555, syn.seq.wrapping_add(1), &[]);
    bad[20 + 14] ^= 0x01; // window byte; the IPv4 header stays valid
    assert!(lab.deliver(&bad));
    assert_eq!(lab.hc.counters().bad_checksum, 1);
    assert_eq!(lab.hc.counters().successes, 0);
    assert!(lab.transmit().is_empty());
    assert!(lab.deliver(&reply(&syn, TcpFlags::SYN_ACK, 555, syn.seq.wrapping_add(1), &[])));
    assert_eq!(lab.hc.counters().successes, 1);
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

/// `packet` (IPv4, 20-byte header) with its L4 checksum field replaced by the folded pseudo-header sum, as a
/// server with TX checksum offload sends it on a veth.
fn with_partial_checksum(mut packet: Vec<u8>, csum_offset: usize) -> Vec<u8> {
    let ip = read_ipv4(&packet);
    let (src, dst, protocol) = (
        ip.src_addr().octets(),
        ip.dst_addr().octets(),
        u8::from(ip.next_header()),
    );
    let len = (packet.len() - 20) as u16;
    let pseudo = xlb_stack::wire::checksum::fold(xlb_stack::wire::checksum::pseudo_header_sum(src, dst, protocol, len));
    packet[20 + csum_offset..20 + csum_offset + 2].copy_from_slice(&pseudo.to_be_bytes());
    packet
}

#[test]
fn partial_checksums_are_counted_published_and_explained_once() {
    // Our own source address, so no other test shares the once-per-address hint.
    let mut tcp = target(CheckKind::Tcp, 0);
    tcp.source = Ipv4Addr::new(198, 18, 0, 77);
    let mut udp = target(CheckKind::Udp, 1);
    udp.source = tcp.source;
    let mut lab = Lab::new(vec![tcp, udp]);
    let shared = Arc::new(SharedHealthCounters::new());
    lab.hc.share_counters(shared.clone());
    let syn = read_tcp(&lab.transmit_one());
    let good = reply(&syn, TcpFlags::SYN_ACK, 555, syn.seq.wrapping_add(1), &[]);
    let log = logged(|| {
        // A corrupt reply: counted, no hint.
        let mut corrupt = good.clone();
        corrupt[20 + 14] ^= 0x01;
        assert!(lab.deliver(&corrupt));
        // Partial checksums (TCP, then UDP to the second target's probe): counted, the hint once.
        assert!(lab.deliver(&with_partial_checksum(good.clone(), 16)));
        assert!(lab.deliver(&with_partial_checksum(good.clone(), 16)));
        lab.at(INTERVAL / 2);
        let datagram = lab.transmit_one();
        assert!(lab.deliver(&with_partial_checksum(udp_reply(&datagram, b"pong"), 6)));
    });
    assert_eq!(lab.hc.counters().bad_checksum, 4);
    assert_eq!(lab.hc.counters().successes, 0);
    assert_eq!(log.matches("partial L4 checksum").count(), 1, "{log}");
    assert!(
        log.contains("health-check reply") && log.contains("ethtool -K <peer interface> tx off"),
        "{log}"
    );
    // Published for the control plane.
    assert_eq!(shared.snapshot().bad_checksum, 4);
    assert_eq!(shared.snapshot().probes, 2);
    // The probes time out: that is what takes servers down, and the counter tells why.
    lab.at(INTERVAL / 2 + TIMEOUT);
    assert_eq!(shared.snapshot().timeouts, 2);
    // A checker replacing this one (a reload) continues from the published values.
    let mut next = HealthChecker::new(lab.now, vec![target(CheckKind::Tcp, 0)], PORTS);
    next.share_counters(shared.clone());
    assert_eq!(next.counters().bad_checksum, 4);
    let mut buf = vec![0u8; MAX_PACKET_LEN];
    assert!(next.poll_transmit(lab.now, &mut buf).is_some());
    assert_eq!(shared.snapshot().probes, 3);
}

#[test]
fn late_reply_counts_as_timeout() {
    let mut lab = Lab::new(vec![target(CheckKind::Tcp, 0)]);
    let syn = read_tcp(&lab.transmit_one());
    // The caller ran no timer, but the reply comes after the deadline.
    lab.now = lab.t0 + TIMEOUT;
    assert!(!lab.deliver(&reply(&syn, TcpFlags::SYN_ACK, 5, syn.seq.wrapping_add(1), &[])));
    assert_eq!(lab.hc.last_failure(id(0)), Some(Failure::Timeout));
    assert_eq!(lab.hc.counters().successes, 0);
}

#[test]
fn probes_are_spread_over_the_interval() {
    let targets = (0..4).map(|s| target(CheckKind::Tcp, s)).collect();
    let mut lab = Lab::new(targets);
    let mut sends: Vec<(Duration, Ipv4Addr)> = Vec::new();
    lab.run(ms(2999), &mut |now, pkt: &[u8]| {
        sends.push((now, *read_tcp(pkt).dst.ip()));
        vec![]
    });
    let times: Vec<_> = sends.iter().map(|s| s.0).collect();
    let expect: Vec<Duration> = (0..3)
        .flat_map(|round| (0..4).map(move |i| ms(1000 * round + 250 * i)))
        .collect();
    assert_eq!(times, expect);
    for w in sends.windows(2) {
        assert_ne!(w[0].0, w[1].0, "two probes in one instant");
    }
    assert_eq!(sends[1].1, *server_addr(1).ip());
}

#[test]
fn dead_server_is_detected_within_fall_intervals_plus_timeout() {
    for (death, fall) in [(2300u64, 2u32), (2999, 3), (3000, 2), (3001, 2), (3001, 1)] {
        let mut t = target(CheckKind::Tcp, 0);
        t.check.fall = fall;
        let mut lab = Lab::new(vec![t]);
        let listening = Rc::new(Cell::new(true));
        let mut alive = tcp_server(listening);
        // The server answers until `death`, then its packets are lost (no RST, no ICMP).
        lab.run(ms(20_000), &mut |now, pkt: &[u8]| {
            if now < ms(death) {
                alive(now, pkt)
            } else {
                vec![]
            }
        });
        let downs: Vec<_> = lab.events.iter().filter(|e| e.1 == HealthEvent::Down(id(0))).collect();
        assert_eq!(downs.len(), 1, "death {death}: {:?}", lab.events);
        let detect = downs[0].0 - ms(death);
        let bound = INTERVAL * fall + TIMEOUT;
        assert!(detect <= bound, "death {death}, fall {fall}: {detect:?} > {bound:?}");
    }
}

#[test]
fn ports_are_round_robin_and_never_shared_in_flight() {
    let ports = ProbePorts {
        base: 40000,
        count: 2,
        stride: 4,
    };
    let targets = (0..3)
        .map(|s| {
            let mut t = target(CheckKind::Udp, s);
            t.check.timeout_ms = 900;
            t
        })
        .collect();
    let mut lab = Lab::with_ports(targets, ports);
    let mut sends: Vec<(Duration, u16, Ipv4Addr)> = Vec::new();
    lab.run(ms(999), &mut |now, pkt: &[u8]| {
        let (src, dst, _) = read_udp(pkt);
        sends.push((now, src.port(), *dst.ip()));
        vec![]
    });
    // Due at 0, 333.3 and 666.7 ms; the third waits for the first port, freed by a timeout at 900.
    let third_due = Duration::from_nanos(666_666_666);
    assert_eq!(
        sends,
        vec![
            (ms(0), 40000, *server_addr(0).ip()),
            (Duration::from_nanos(333_333_333), 40004, *server_addr(1).ip()),
            (ms(900), 40000, *server_addr(2).ip()),
        ]
    );
    assert!(third_due < ms(900));
    assert_eq!(lab.hc.counters().port_waits, 1);
    // Over a longer run, a port is never reused before its probe (900 ms of silence) is over.
    lab.run(ms(6000), &mut |now, pkt: &[u8]| {
        let (src, dst, _) = read_udp(pkt);
        sends.push((now, src.port(), *dst.ip()));
        vec![]
    });
    for (k, a) in sends.iter().enumerate() {
        for b in &sends[k + 1..] {
            if a.1 == b.1 {
                assert!(b.0 >= a.0 + ms(900), "port {} reused in flight: {a:?} {b:?}", a.1);
            }
        }
    }
    assert!(sends.iter().all(|s| s.1 == 40000 || s.1 == 40004));
    assert!(sends.len() >= 12);
}

#[test]
fn owns_port_follows_the_stride() {
    let ports = ProbePorts {
        base: 50000,
        count: 3,
        stride: 8,
    };
    let lab = Lab::with_ports(vec![target(CheckKind::Tcp, 0)], ports);
    let owned: Vec<u16> = (49990..50030).filter(|&p| lab.hc.owns_port(p)).collect();
    assert_eq!(owned, [50000, 50008, 50016]);
    assert_eq!(ports.index(50008), Some(1));
    assert_eq!(ports.port(2), 50016);
}

#[test]
fn replies_are_matched_on_strided_ports() {
    let ports = ProbePorts {
        base: 50003,
        count: 4,
        stride: 8,
    };
    let targets = (0..2).map(|s| target(CheckKind::Tcp, s)).collect();
    let mut lab = Lab::with_ports(targets, ports);
    let listening = Rc::new(Cell::new(true));
    lab.run(ms(3000), &mut tcp_server(listening));
    assert_eq!(lab.hc.counters().successes, 6);
    assert_eq!(lab.hc.counters().failures, 0);
}

#[test]
fn unknown_target_ids_are_down() {
    let lab = Lab::new(vec![target(CheckKind::Tcp, 0)]);
    assert!(lab.hc.is_up(id(0)), "targets start up");
    assert!(!lab.hc.is_up(id(7)));
    assert_eq!(lab.hc.last_failure(id(7)), None);
}

#[test]
#[should_panic(expected = "health_check.timeout_ms")]
fn invalid_check_panics_in_new() {
    let mut t = target(CheckKind::Tcp, 0);
    t.check.timeout_ms = 2000;
    Lab::new(vec![t]);
}

#[test]
fn largest_probe_fits_max_packet_len() {
    let mut t = target(CheckKind::Http, 0);
    t.check.path = Some(format!("/{}", "a".repeat(MAX_PATH_LEN - 1)));
    t.check.host = Some("h".repeat(MAX_HOST_LEN));
    assert_eq!(t.check.validate(), Ok(()));
    let mut lab = Lab::new(vec![t]);
    let syn = read_tcp(&lab.transmit_one());
    lab.deliver(&reply(&syn, TcpFlags::SYN_ACK, 1, syn.seq.wrapping_add(1), &[]));
    let req = lab.transmit_one();
    assert!(req.len() <= MAX_PACKET_LEN);
    assert_eq!(read_tcp(&req).payload.len(), req.len() - 40);
}

// --- scale ---

#[test]
fn timer_work_follows_the_probes_not_the_targets() {
    const N: usize = 5000;
    let targets: Vec<Target> = (0..N)
        .map(|i| Target {
            id: id(i),
            server: SocketAddrV4::new(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i as u32), 80),
            source: SOURCE,
            check: HealthCheckConfig::new(CheckKind::Tcp),
        })
        .collect();
    let ports = ProbePorts {
        base: 20000,
        count: 4096,
        stride: 1,
    };
    let mut lab = Lab::with_ports(targets, ports);
    let (t0, step) = (lab.t0, ms(1));
    // Target i is due at i x 200 µs, then every INTERVAL; a probe's deadline is TIMEOUT after it was sent.
    let mut due_at: Vec<Instant> = (0..3u32)
        .flat_map(|k| (0..N).map(move |i| t0 + INTERVAL * k + INTERVAL * i as u32 / N as u32))
        .collect();
    due_at.sort();
    let mut sent_at: Vec<Instant> = Vec::new();
    let (mut next_due, mut next_deadline) = (0, 0);
    let (mut idle_calls, mut max_visits) = (0, 0);
    for n in 0..2500u32 {
        let now = t0 + step * n;
        // What is due up to now and was not before: probes due, and one deadline per probe sent (a timeout, or the
        // stale deadline of a probe that ended early). Both lists are in time order.
        let mut expected = 0;
        while due_at.get(next_due).is_some_and(|t| *t <= now) {
            (next_due, expected) = (next_due + 1, expected + 1);
        }
        while sent_at.get(next_deadline).is_some_and(|t| *t + TIMEOUT <= now) {
            (next_deadline, expected) = (next_deadline + 1, expected + 1);
        }
        let before = lab.hc.timer_visits();
        lab.at(step * n);
        let visits = (lab.hc.timer_visits() - before) as usize;
        assert_eq!(visits, expected, "timer items visited at {n} ms");
        idle_calls += usize::from(visits == 0);
        max_visits = max_visits.max(visits);
        // Send what is due; every other server refuses at once (its probe ends before its deadline).
        for (k, pkt) in lab.transmit().into_iter().enumerate() {
            let syn = read_tcp(&pkt);
            assert!(syn.syn);
            sent_at.push(now);
            if k % 2 == 0 {
                assert!(lab.deliver(&reply(
                    &syn,
                    TcpFlags::RST | TcpFlags::ACK,
                    0,
                    syn.seq.wrapping_add(1),
                    &[]
                )));
            }
        }
        assert_eq!(lab.hc.timer_visits() - before, visits as u64, "sending visits no timer");
        assert!(lab.hc.poll_timeout().is_some_and(|t| t > now), "nothing left due");
    }
    // 5 probes due per ms (and as many deadlines): a handful of visits per call, never a pass over the targets.
    assert_eq!(lab.hc.counters().probes as usize, sent_at.len());
    assert!(sent_at.len() >= 2 * N, "every target probed at least twice");
    assert!(max_visits <= 12, "at most {max_visits} visits in a call");
    assert_eq!(idle_calls, 0, "with 5000 targets over 1 s, something is due every ms");
    // Calls between two timers cost nothing: the heap's top is not due.
    let next = lab.hc.poll_timeout().unwrap();
    let before = lab.hc.timer_visits();
    for _ in 0..1000 {
        lab.hc.handle_timeout(next - Duration::from_nanos(1));
    }
    assert_eq!(lab.hc.timer_visits(), before);
}

#[test]
fn missed_rounds_are_skipped_in_one_step() {
    let mut lab = Lab::new(vec![target(CheckKind::Udp, 0)]);
    assert_eq!(lab.transmit().len(), 1);
    // The caller did not poll for a long time: one visit for the due round (plus the probe's deadline), and the
    // next probe keeps the phase.
    let before = lab.hc.timer_visits();
    lab.at(INTERVAL * 100_000 + ms(300));
    assert!(lab.hc.timer_visits() - before <= 3);
    assert_eq!(lab.hc.counters().timeouts, 1);
    assert_eq!(lab.hc.poll_timeout(), Some(lab.now), "the probe due now");
    assert_eq!(lab.transmit().len(), 1);
    assert_eq!(lab.hc.poll_timeout(), Some(lab.now + TIMEOUT));
    lab.at(INTERVAL * 100_000 + ms(300) + TIMEOUT);
    assert_eq!(lab.hc.poll_timeout(), Some(lab.t0 + INTERVAL * 100_001));
}
