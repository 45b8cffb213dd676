//! Tests of the virtual router on a fake clock. Elections run on a simulated link that carries each router's
//! `poll_transmit` output to the others' `handle_advertisement`, reading the IPv4 header back with smoltcp's
//! view (an implementation independent of ours).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use xlb_stack::wire::{IpProtocol, Ipv4Packet};

use super::*;

const VRID: u8 = 51;
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 100);
const VIP2: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 101);
const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const C: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// One-way latency of the simulated link.
const LATENCY: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config(source: Ipv4Addr, priority: u8) -> VrrpConfig {
    VrrpConfig::new(VRID, priority, source, vec![VIP, VIP2])
}

/// A VRRP message from `src` as the RFC lays it out.
fn advert(src: Ipv4Addr, priority: u8, interval_cs: u16) -> Vec<u8> {
    advert_for(src, VRID, priority, interval_cs, &[VIP, VIP2])
}

fn advert_for(src: Ipv4Addr, vrid: u8, priority: u8, interval_cs: u16, vips: &[Ipv4Addr]) -> Vec<u8> {
    let mut buf = vec![0u8; advert_len(vips.len())];
    emit_advert(&mut buf, src, VRRP_MULTICAST, vrid, priority, interval_cs, vips);
    buf
}

/// Drains a router's output: (events, adverts as (priority, interval), garps).
fn drain(r: &mut VrrpRouter, now: Instant) -> (Vec<VrrpEvent>, Vec<(u8, u16)>, Vec<Ipv4Addr>) {
    let events = std::iter::from_fn(|| r.poll_event()).collect();
    let mut buf = [0u8; MAX_PACKET_LEN];
    let mut adverts = Vec::new();
    while let Some(n) = r.poll_transmit(now, &mut buf) {
        let ip = Ipv4Packet::new_checked(&buf[..n]).unwrap();
        let p = VrrpPacket::new_checked(ip.payload()).unwrap();
        assert!(p.verify_checksum(ip.src_addr(), ip.dst_addr()));
        adverts.push((p.priority(), p.max_adver_int()));
    }
    let garps = std::iter::from_fn(|| r.poll_garp()).collect();
    (events, adverts, garps)
}

/// A router already Master (lone, after its Master_Down_Interval), output drained.
fn master(source: Ipv4Addr, priority: u8, t0: Instant) -> (VrrpRouter, Instant) {
    let mut r = VrrpRouter::new(config(source, priority), t0);
    r.start(t0);
    let now = r.poll_timeout().unwrap();
    r.handle_timeout(now);
    assert_eq!(r.state(), VrrpState::Master);
    drain(&mut r, now);
    (r, now)
}

/// What a node on the simulated link did, with times.
#[derive(Default)]
struct Log {
    events: Vec<(Instant, VrrpEvent)>,
    adverts: Vec<(Instant, u8)>,
    garps: Vec<(Instant, Ipv4Addr)>,
}

struct Node {
    router: VrrpRouter,
    /// Unplugged nodes neither send, receive nor run timers (a crashed or partitioned appliance).
    plugged: bool,
    log: Log,
}

/// A shared link with a fixed latency.
struct Link {
    now: Instant,
    nodes: Vec<Node>,
    in_flight: Vec<(Instant, usize, Vec<u8>)>,
}

impl Link {
    fn new(t0: Instant) -> Self {
        Link {
            now: t0,
            nodes: Vec::new(),
            in_flight: Vec::new(),
        }
    }

    /// Adds a router and starts it now.
    fn add(&mut self, config: VrrpConfig) -> usize {
        let mut router = VrrpRouter::new(config, self.now);
        router.start(self.now);
        self.nodes.push(Node {
            router,
            plugged: true,
            log: Log::default(),
        });
        let i = self.nodes.len() - 1;
        self.flush(i);
        i
    }

    fn router(&self, i: usize) -> &VrrpRouter {
        &self.nodes[i].router
    }

    fn state(&self, i: usize) -> VrrpState {
        self.nodes[i].router.state()
    }

    fn log(&self, i: usize) -> &Log {
        &self.nodes[i].log
    }

    /// When node `i` last became Master.
    fn became_master_at(&self, i: usize) -> Option<Instant> {
        self.log(i)
            .events
            .iter()
            .rev()
            .find(|(_, e)| *e == VrrpEvent::BecameMaster)
            .map(|(t, _)| *t)
    }

    fn shutdown(&mut self, i: usize) {
        let now = self.now;
        self.nodes[i].router.shutdown(now);
        self.flush(i);
    }

    /// Takes node `i` off the link without a word, as a crash would.
    fn unplug(&mut self, i: usize) {
        self.nodes[i].plugged = false;
        self.in_flight.retain(|(_, from, _)| *from != i);
    }

    /// Collects node `i`'s output; adverts are put on the wire.
    fn flush(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        while let Some(e) = node.router.poll_event() {
            node.log.events.push((now, e));
        }
        while let Some(vip) = node.router.poll_garp() {
            node.log.garps.push((now, vip));
        }
        let mut buf = [0u8; MAX_PACKET_LEN];
        while let Some(n) = node.router.poll_transmit(now, &mut buf) {
            node.log.adverts.push((now, buf[IPV4_PRIORITY_AT]));
            if node.plugged {
                self.in_flight.push((now + LATENCY, i, buf[..n].to_vec()));
            }
        }
    }

    /// Runs the link until `end`.
    fn run_until(&mut self, end: Instant) {
        for _ in 0..1_000_000 {
            let timers = self
                .nodes
                .iter()
                .filter(|n| n.plugged)
                .filter_map(|n| n.router.poll_timeout());
            let next = timers.chain(self.in_flight.iter().map(|(t, _, _)| *t)).min();
            let Some(next) = next.filter(|t| *t <= end) else {
                self.now = end;
                return;
            };
            assert!(next >= self.now, "time goes forward");
            self.now = next;
            let (due, later) = std::mem::take(&mut self.in_flight)
                .into_iter()
                .partition(|(t, _, _)| *t <= next);
            self.in_flight = later;
            for (_, from, packet) in due {
                let ip = Ipv4Packet::new_checked(&packet[..]).expect("an IPv4 packet");
                assert!(ip.verify_checksum());
                assert_eq!(ip.next_header(), IpProtocol::Unknown(VRRP_PROTOCOL));
                assert_eq!(ip.dst_addr(), VRRP_MULTICAST);
                for to in 0..self.nodes.len() {
                    if to == from || !self.nodes[to].plugged {
                        continue;
                    }
                    let r = &mut self.nodes[to].router;
                    r.handle_advertisement(next, ip.src_addr(), ip.hop_limit(), ip.payload())
                        .expect("adverts on the link are valid");
                    self.flush(to);
                }
            }
            for i in 0..self.nodes.len() {
                let node = &mut self.nodes[i];
                if node.plugged && node.router.poll_timeout().is_some_and(|t| t <= next) {
                    node.router.handle_timeout(next);
                    self.flush(i);
                }
            }
        }
        panic!("the simulation does not converge");
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end);
    }
}

/// Offset of the priority byte in a packet from `poll_transmit` (after the 20-byte IPv4 header).
const IPV4_PRIORITY_AT: usize = 20 + 2;

#[test]
fn master_down_interval_follows_the_rfc_formula() {
    let t0 = Instant::now();
    let cases = [
        // (priority, interval cs, Skew_Time, Master_Down_Interval)
        (
            100,
            100,
            Duration::from_micros(609_375),
            Duration::from_micros(3_609_375),
        ),
        (254, 100, Duration::from_micros(7_812), Duration::from_micros(3_007_812)),
        (1, 100, Duration::from_micros(996_093), Duration::from_micros(3_996_093)),
        (100, 20, Duration::from_micros(121_875), Duration::from_micros(721_875)),
    ];
    for (priority, interval, skew, down) in cases {
        let mut c = config(A, priority);
        c.advert_interval_cs = interval;
        let r = VrrpRouter::new(c, t0);
        assert_eq!(r.skew_time(), skew, "priority {priority}, {interval} cs");
        assert_eq!(r.master_down_interval(), down, "priority {priority}, {interval} cs");
    }
}

#[test]
fn lone_router_becomes_master_after_master_down_interval() {
    let t0 = Instant::now();
    let mut r = VrrpRouter::new(config(A, 100), t0);
    assert_eq!(r.state(), VrrpState::Initialize);
    assert_eq!(r.poll_timeout(), None, "nothing runs before start");
    r.start(t0);
    assert_eq!(r.state(), VrrpState::Backup);
    assert_eq!(drain(&mut r, t0), (vec![VrrpEvent::BecameBackup], vec![], vec![]));
    let down = t0 + r.master_down_interval();
    assert_eq!(r.poll_timeout(), Some(down));

    r.handle_timeout(down - ms(1));
    assert_eq!(r.state(), VrrpState::Backup, "not before the interval is over");
    r.handle_timeout(down);
    assert_eq!(r.state(), VrrpState::Master);
    assert_eq!(r.master(), Some(A));
    assert!(
        !r.accepts_vip_traffic(),
        "accept mode is off and we do not own the addresses"
    );
    assert_eq!(r.last_advert_sent(), None);
    let (events, adverts, garps) = drain(&mut r, down);
    assert_eq!(r.last_advert_sent(), Some(down));
    assert_eq!(events, vec![VrrpEvent::BecameMaster]);
    assert_eq!(adverts, vec![(100, 100)], "an advert at once");
    assert_eq!(garps, vec![VIP, VIP2], "the first round of gratuitous ARP at once");
    assert_eq!(r.counters().became_master, 1);
}

#[test]
fn master_advertises_every_interval_and_repeats_garps() {
    let t0 = Instant::now();
    let (mut r, mut now) = master(A, 100, t0);
    let became = now;
    let mut adverts = Vec::new();
    let mut garps = Vec::new();
    while now < became + Duration::from_secs(5) {
        now = r.poll_timeout().unwrap();
        r.handle_timeout(now);
        let (events, a, g) = drain(&mut r, now);
        assert!(events.is_empty());
        adverts.extend(a.iter().map(|_| now - became));
        garps.extend(g.iter().map(|vip| (now - became, *vip)));
    }
    let secs = |s: u64| Duration::from_secs(s);
    assert_eq!(adverts, (1..=5).map(secs).collect::<Vec<_>>(), "one advert per second");
    // Two more rounds one second apart (the first came with the transition); then no more.
    assert_eq!(
        garps,
        vec![(secs(1), VIP), (secs(1), VIP2), (secs(2), VIP), (secs(2), VIP2)]
    );
    assert_eq!(r.counters().garps, 6);
    assert_eq!(r.counters().adverts_sent, 6);
}

#[test]
fn owner_is_master_at_once_and_discards_adverts() {
    let t0 = Instant::now();
    let mut r = VrrpRouter::new(config(A, OWNER_PRIORITY), t0);
    r.start(t0);
    assert_eq!(r.state(), VrrpState::Master);
    assert!(r.accepts_vip_traffic(), "the owner accepts its own addresses' traffic");
    let (events, adverts, garps) = drain(&mut r, t0);
    assert_eq!(
        (events, adverts, garps),
        (vec![VrrpEvent::BecameMaster], vec![(255, 100)], vec![VIP, VIP2])
    );
    // §7.1: the owner discards adverts for its VRID, even one that would otherwise win.
    assert_eq!(
        r.handle_advertisement(t0, C, 255, &advert(C, 255, 100)),
        Err(VrrpError::AddressOwner(VRID))
    );
    assert_eq!(r.state(), VrrpState::Master);
    assert_eq!(r.counters().owner_discards, 1);
}

#[test]
fn higher_priority_wins_the_election() {
    let t0 = Instant::now();
    let mut link = Link::new(t0);
    let low = link.add(config(B, 100)); // the higher address, to show priority comes first
    let high = link.add(config(A, 200));
    link.run_for(Duration::from_secs(30));
    assert_eq!(link.state(high), VrrpState::Master);
    assert_eq!(link.state(low), VrrpState::Backup);
    assert_eq!(link.router(low).master(), Some(A));
    assert_eq!(
        link.router(low).counters().became_master,
        0,
        "the lower priority never took over"
    );
    // The higher priority has the shorter Master_Down_Interval and was Master first.
    assert_eq!(
        link.became_master_at(high),
        Some(t0 + link.router(high).master_down_interval())
    );
}

#[test]
fn equal_priorities_are_broken_by_the_higher_address() {
    let t0 = Instant::now();
    let mut link = Link::new(t0);
    let a = link.add(config(A, 100));
    let b = link.add(config(B, 100));
    link.run_for(Duration::from_secs(30));
    // Both timers fired at once, both became Master; A heard B's equal-priority advert from a higher address.
    assert_eq!(link.state(b), VrrpState::Master);
    assert_eq!(link.state(a), VrrpState::Backup);
    let a_events: Vec<VrrpEvent> = link.log(a).events.iter().map(|(_, e)| *e).collect();
    assert_eq!(
        a_events,
        [
            VrrpEvent::BecameBackup,
            VrrpEvent::BecameMaster,
            VrrpEvent::BecameBackup
        ]
    );
    assert_eq!(
        link.router(b).counters().adverts_discarded,
        1,
        "B discarded A's one advert"
    );
}

#[test]
fn equal_priority_backup_does_not_preempt_an_established_master() {
    let t0 = Instant::now();
    let mut link = Link::new(t0);
    let a = link.add(config(A, 100));
    link.run_for(Duration::from_secs(5));
    let b = link.add(config(B, 100));
    link.run_for(Duration::from_secs(30));
    // The address only breaks ties between two Masters; a Backup accepts a Master of equal priority.
    assert_eq!(link.state(a), VrrpState::Master);
    assert_eq!(link.state(b), VrrpState::Backup);
}

#[test]
fn preempting_backup_takes_over_from_a_lower_priority_master() {
    let t0 = Instant::now();
    let mut link = Link::new(t0);
    let low = link.add(config(A, 100));
    link.run_for(Duration::from_secs(5));
    let joined = link.now;
    let high = link.add(config(B, 200));
    link.run_for(Duration::from_secs(30));
    assert_eq!(link.state(high), VrrpState::Master);
    assert_eq!(link.state(low), VrrpState::Backup);
    // It ignored the lower priority's adverts and took over when its own Master_Down_Timer ran out.
    let down = link.router(high).master_down_interval();
    assert_eq!(link.became_master_at(high), Some(joined + down));
    assert!(link.router(high).counters().adverts_discarded >= 3);
}

#[test]
fn without_preempt_a_higher_priority_backup_stays_backup() {
    let t0 = Instant::now();
    let mut link = Link::new(t0);
    let low = link.add(config(A, 100));
    link.run_for(Duration::from_secs(5));
    let mut c = config(B, 200);
    c.preempt = false;
    let high = link.add(c);
    link.run_for(Duration::from_secs(60));
    assert_eq!(link.state(low), VrrpState::Master);
    assert_eq!(link.state(high), VrrpState::Backup);
    assert_eq!(link.router(high).counters().became_master, 0);
    // It still takes over when the Master goes away.
    link.unplug(low);
    link.run_for(Duration::from_secs(5));
    assert_eq!(link.state(high), VrrpState::Master);
}

#[test]
fn preempt_delay_postpones_the_takeover() {
    let t0 = Instant::now();
    let mut link = Link::new(t0);
    let low = link.add(config(A, 100));
    link.run_for(Duration::from_secs(5));
    let mut c = config(B, 200);
    c.preempt_delay = Duration::from_secs(10);
    let high = link.add(c);
    link.run_for(Duration::from_millis(100));
    let first_heard = link.now; // adverts come at whole seconds after `low` took over: within the next second
    link.run_for(Duration::from_secs(9));
    assert_eq!(link.state(high), VrrpState::Backup, "the delay is not over");
    assert_eq!(link.state(low), VrrpState::Master);
    link.run_for(Duration::from_secs(2));
    assert_eq!(link.state(high), VrrpState::Master);
    assert_eq!(link.state(low), VrrpState::Backup);
    let took_over = link.became_master_at(high).unwrap() - first_heard;
    assert!(
        took_over >= Duration::from_secs(9) && took_over <= Duration::from_secs(11),
        "took over {took_over:?} after joining"
    );
}

#[test]
fn shutdown_hands_over_within_skew_time() {
    let t0 = Instant::now();
    let mut link = Link::new(t0);
    let master = link.add(config(A, 200));
    let backup = link.add(config(B, 100));
    link.run_for(Duration::from_millis(10_500));
    assert_eq!(link.state(master), VrrpState::Master);
    let stop = link.now;
    link.shutdown(master);
    assert_eq!(link.state(master), VrrpState::Initialize);
    assert_eq!(link.log(master).events.last(), Some(&(stop, VrrpEvent::Stopped)));
    assert_eq!(link.log(master).adverts.last(), Some(&(stop, 0)), "a priority-0 advert");
    assert_eq!(link.router(master).poll_timeout(), None);
    link.run_for(Duration::from_secs(10));

    let skew = link.router(backup).skew_time();
    let took_over = link.became_master_at(backup).expect("the backup took over") - stop;
    assert_eq!(took_over, LATENCY + skew, "Skew_Time after hearing priority 0");
    assert!(took_over < link.router(backup).master_down_interval() / 5);
    assert_eq!(link.router(backup).counters().priority_zero_received, 1);
    assert_eq!(link.router(master).counters().priority_zero_sent, 1);
}

#[test]
fn crashed_master_is_replaced_after_master_down_interval() {
    let t0 = Instant::now();
    let mut link = Link::new(t0);
    let master = link.add(config(A, 200));
    let backup = link.add(config(B, 100));
    link.run_for(Duration::from_millis(10_500));
    let last_advert = link.log(master).adverts.last().unwrap().0;
    link.unplug(master);
    link.run_for(Duration::from_secs(10));
    let took_over = link.became_master_at(backup).unwrap() - last_advert;
    assert_eq!(took_over, LATENCY + link.router(backup).master_down_interval());
}

#[test]
fn master_answers_priority_zero_with_an_advert_at_once() {
    let t0 = Instant::now();
    let (mut r, now) = master(A, 100, t0);
    let later = now + ms(300);
    r.handle_advertisement(later, C, 255, &advert(C, 0, 100)).unwrap();
    assert_eq!(r.state(), VrrpState::Master);
    assert_eq!(drain(&mut r, later).1, vec![(100, 100)]);
    // The Adver_Timer restarted: nothing at the old deadline, the next advert one interval after this one.
    r.handle_timeout(now + Duration::from_secs(1));
    assert_eq!(drain(&mut r, later).1, vec![]);
    r.handle_timeout(later + Duration::from_secs(1));
    assert_eq!(drain(&mut r, later).1, vec![(100, 100)]);
}

#[test]
fn master_yields_to_a_higher_priority_and_learns_its_interval() {
    let t0 = Instant::now();
    let (mut r, now) = master(A, 100, t0);
    r.handle_advertisement(now, C, 255, &advert(C, 150, 50)).unwrap();
    assert_eq!(r.state(), VrrpState::Backup);
    assert_eq!(r.master(), Some(C));
    let (events, adverts, garps) = drain(&mut r, now);
    assert_eq!(
        (events, adverts, garps),
        (vec![VrrpEvent::BecameBackup], vec![], vec![])
    );
    assert_eq!(r.master_adver_interval(), ms(500));
    // 3 x 0.5 s + (256 - 100) x 0.5 s / 256
    assert_eq!(r.master_down_interval(), Duration::from_micros(1_804_687));
    assert_eq!(r.poll_timeout(), Some(now + r.master_down_interval()));
}

#[test]
fn leaving_master_cancels_pending_garps_and_a_new_term_starts_afresh() {
    let t0 = Instant::now();
    let mut r = VrrpRouter::new(config(A, 100), t0);
    r.start(t0);
    let down = r.poll_timeout().unwrap();
    r.handle_timeout(down);
    assert!(r.is_master());
    // Demoted before the caller got to the gratuitous ARPs: none is handed out any more.
    r.handle_advertisement(down + ms(10), C, 255, &advert(C, 150, 100))
        .unwrap();
    assert_eq!(r.poll_garp(), None);
    assert_eq!(r.poll_timeout(), Some(down + ms(10) + r.master_down_interval()));
    // The next term sends its own full set of rounds.
    let mut now = r.poll_timeout().unwrap();
    r.handle_timeout(now);
    let mut garps = Vec::new();
    while now < down + Duration::from_secs(20) {
        garps.extend(std::iter::from_fn(|| r.poll_garp()));
        now = r.poll_timeout().unwrap();
        r.handle_timeout(now);
    }
    assert_eq!(garps.len(), 3 * 2, "three rounds of two addresses");
}

#[test]
fn backup_learns_the_masters_advert_interval() {
    let t0 = Instant::now();
    let mut link = Link::new(t0);
    let mut fast = config(A, 200);
    fast.advert_interval_cs = 50;
    let master = link.add(fast);
    let backup = link.add(config(B, 100)); // configured with 100 cs
    link.run_for(Duration::from_secs(10));
    assert_eq!(link.state(master), VrrpState::Master);
    assert_eq!(link.router(backup).master_adver_interval(), ms(500));
    assert_eq!(
        link.router(backup).master_down_interval(),
        Duration::from_micros(1_804_687)
    );
}

#[test]
fn sub_second_intervals_work() {
    let t0 = Instant::now();
    let mut link = Link::new(t0);
    let mut c = config(A, 200);
    c.advert_interval_cs = 20;
    let master = link.add(c);
    let mut c = config(B, 100);
    c.advert_interval_cs = 20;
    let backup = link.add(c);
    link.run_for(Duration::from_secs(3));
    assert_eq!(link.state(master), VrrpState::Master);
    assert_eq!(link.state(backup), VrrpState::Backup);
    let became = link.became_master_at(master).unwrap();
    let sent: Vec<Duration> = link.log(master).adverts.iter().map(|(t, _)| *t - became).collect();
    assert_eq!(&sent[..4], &[ms(0), ms(200), ms(400), ms(600)], "five adverts a second");

    let last_advert = link.log(master).adverts.last().unwrap().0;
    link.unplug(master);
    link.run_for(Duration::from_secs(2));
    let took_over = link.became_master_at(backup).unwrap() - last_advert;
    assert_eq!(
        took_over,
        LATENCY + Duration::from_micros(721_875),
        "0.6 s + skew, not seconds"
    );
}

/// State a rejected packet must leave alone.
fn snapshot(r: &VrrpRouter) -> (VrrpState, Option<Instant>, Option<Ipv4Addr>, Duration) {
    (r.state(), r.poll_timeout(), r.master(), r.master_adver_interval())
}

#[test]
fn malformed_and_forged_adverts_are_errors_that_change_nothing() {
    let t0 = Instant::now();
    let good = advert(C, 254, 100);
    let mut bad_checksum = good.clone();
    bad_checksum[7] ^= 0x01;
    let mut v2 = good.clone();
    v2[0] = 0x21;
    let mut bad_type = good.clone();
    bad_type[0] = 0x32;
    let mut count_too_big = good.clone();
    count_too_big[3] = 3;
    let mut zero_interval = advert(C, 254, 0);
    zero_interval[6..8].copy_from_slice(&[0, 0]);
    let zero_interval = {
        let mut p = VrrpPacket::new_unchecked(zero_interval);
        p.fill_checksum(C, VRRP_MULTICAST);
        p.into_inner()
    };
    let cases: Vec<(&str, Ipv4Addr, u8, Vec<u8>, VrrpError)> = vec![
        (
            "bad checksum",
            C,
            255,
            bad_checksum.clone(),
            VrrpError::BadChecksum {
                found: u16::from_be_bytes([bad_checksum[6], bad_checksum[7]]),
                expected: u16::from_be_bytes([good[6], good[7]]),
            },
        ),
        (
            "checksum for another source",
            B,
            255,
            good.clone(),
            VrrpError::BadChecksum {
                found: u16::from_be_bytes([good[6], good[7]]),
                expected: VrrpPacket::new_unchecked(&good[..]).compute_checksum(B, VRRP_MULTICAST),
            },
        ),
        ("routed (TTL 254)", C, 254, good.clone(), VrrpError::BadTtl(254)),
        ("TTL 1", C, 1, good.clone(), VrrpError::BadTtl(1)),
        ("version 2", C, 255, v2, VrrpError::BadVersion(2)),
        ("type 2", C, 255, bad_type, VrrpError::BadType(2)),
        ("empty", C, 255, vec![], VrrpError::Truncated { len: 0, needed: 8 }),
        (
            "header cut",
            C,
            255,
            good[..3].to_vec(),
            VrrpError::Truncated { len: 3, needed: 8 },
        ),
        (
            "header cut after the count",
            C,
            255,
            good[..7].to_vec(),
            VrrpError::Truncated { len: 7, needed: 16 },
        ),
        (
            "address cut",
            C,
            255,
            good[..14].to_vec(),
            VrrpError::Truncated { len: 14, needed: 16 },
        ),
        (
            "count beyond the packet",
            C,
            255,
            count_too_big,
            VrrpError::Truncated { len: 16, needed: 20 },
        ),
        (
            "other VRID",
            C,
            255,
            advert_for(C, 52, 254, 100, &[VIP, VIP2]),
            VrrpError::WrongVrid { got: 52, ours: VRID },
        ),
        ("zero interval", C, 255, zero_interval, VrrpError::ZeroInterval),
    ];
    for (mut r, now) in [master(A, 100, t0), {
        let mut r = VrrpRouter::new(config(A, 100), t0);
        r.start(t0);
        drain(&mut r, t0);
        (r, t0 + ms(100))
    }] {
        let before = snapshot(&r);
        for (what, src, ttl, packet, expected) in &cases {
            let counters = *r.counters();
            assert_eq!(
                r.handle_advertisement(now, *src, *ttl, packet),
                Err(*expected),
                "{what}"
            );
            assert_eq!(snapshot(&r), before, "{what} changed the state");
            assert_eq!(drain(&mut r, now), (vec![], vec![], vec![]), "{what} caused output");
            assert_eq!(r.counters().rejected(), counters.rejected() + 1, "{what} is counted");
            assert_eq!(r.counters().adverts_received, counters.adverts_received);
        }
        let c = r.counters();
        assert_eq!((c.bad_checksum, c.bad_ttl, c.bad_version, c.bad_type), (2, 2, 1, 1));
        assert_eq!((c.truncated, c.bad_vrid, c.bad_interval), (5, 1, 1));
        // The good packet, for contrast, is taken (a Master yields to priority 254; a Backup follows it).
        r.handle_advertisement(now, C, 255, &good).unwrap();
        assert_eq!(r.state(), VrrpState::Backup);
        assert_eq!(r.master(), Some(C));
    }
}

#[test]
fn own_looped_back_advert_is_ignored() {
    let t0 = Instant::now();
    let (mut r, now) = master(A, 100, t0);
    let before = snapshot(&r);
    let own = advert(A, 100, 100);
    assert_eq!(r.handle_advertisement(now, A, 255, &own), Err(VrrpError::OwnPacket(A)));
    assert_eq!(snapshot(&r), before);
    assert_eq!(r.counters().own_adverts, 1);
}

#[test]
fn address_mismatch_is_reported_once_and_processed() {
    let t0 = Instant::now();
    let mut r = VrrpRouter::new(config(A, 100), t0);
    r.start(t0);
    drain(&mut r, t0);
    let other = advert_for(C, VRID, 200, 100, &[VIP]);
    for k in 1..=3u32 {
        let now = t0 + k * Duration::from_secs(1);
        r.handle_advertisement(now, C, 255, &other).unwrap();
        assert_eq!(
            r.poll_timeout(),
            Some(now + r.master_down_interval()),
            "the advert still counts"
        );
    }
    assert_eq!(r.poll_event(), Some(VrrpEvent::AddressMismatch { from: C }));
    assert_eq!(r.poll_event(), None, "reported once");
    assert_eq!(r.counters().address_mismatch, 3);
    // The same addresses in another order match; a later mismatch is reported again.
    let swapped = advert_for(C, VRID, 200, 100, &[VIP2, VIP]);
    r.handle_advertisement(t0 + ms(4000), C, 255, &swapped).unwrap();
    assert_eq!(r.counters().address_mismatch, 3);
    r.handle_advertisement(t0 + ms(5000), C, 255, &other).unwrap();
    assert_eq!(r.poll_event(), Some(VrrpEvent::AddressMismatch { from: C }));
}

#[test]
fn backup_shutdown_is_silent_and_start_runs_again() {
    let t0 = Instant::now();
    let mut r = VrrpRouter::new(config(A, 100), t0);
    r.start(t0);
    drain(&mut r, t0);
    r.shutdown(t0 + ms(10));
    assert_eq!(r.state(), VrrpState::Initialize);
    assert_eq!(
        drain(&mut r, t0),
        (vec![VrrpEvent::Stopped], vec![], vec![]),
        "a Backup sends nothing"
    );
    assert_eq!(r.poll_timeout(), None);
    r.shutdown(t0 + ms(20));
    assert_eq!(r.poll_event(), None, "stopping twice is a no-op");
    // Adverts while stopped are valid but ignored.
    r.handle_advertisement(t0 + ms(30), C, 255, &advert(C, 0, 100)).unwrap();
    assert_eq!(r.state(), VrrpState::Initialize);
    assert_eq!(r.counters().adverts_discarded, 1);

    let again = t0 + Duration::from_secs(1);
    r.start(again);
    assert_eq!(r.state(), VrrpState::Backup);
    assert_eq!(r.poll_timeout(), Some(again + r.master_down_interval()));
    assert_eq!(r.counters().stopped, 1);
}

#[test]
fn a_demoted_master_does_not_send_a_stale_advert() {
    let t0 = Instant::now();
    let (mut r, now) = master(A, 100, t0);
    let due = r.poll_timeout().unwrap();
    r.handle_timeout(due); // an advert is owed...
    r.handle_advertisement(due, C, 255, &advert(C, 200, 100)).unwrap(); // ...but a better Master shows up
    let (events, adverts, _) = drain(&mut r, due);
    assert_eq!(events, vec![VrrpEvent::BecameBackup]);
    assert!(adverts.is_empty(), "a Backup does not advertise");
    assert!(due > now);
}

#[test]
#[should_panic(expected = "vrrp.vips")]
fn invalid_config_panics_in_new() {
    let mut c = config(A, 100);
    c.vips.clear();
    VrrpRouter::new(c, Instant::now());
}
