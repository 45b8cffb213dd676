//! Two stages behind the local stack as one: each packet goes to the stage its service names.
//!
//! The service table ([`crate::service`]) decides: a packet whose service belongs to the second stage's id is
//! the second stage's; everything else (the first stage's services, ICMP, packets no stage serves) is offered to
//! the first, which passes what it does not want to the local stack. Originated frames are taken from both in
//! turn, and the earliest timer of either wakes the worker. Nest `Stages` for more than two.

use std::time::Instant;

use crate::drops::DropReason;
use crate::local::{Handled, Ipv4Handler, StackContext};
use crate::pipeline::{Frame, PortId, Verdict};
use crate::ports::LOCAL_PORTS_SLOT;
use crate::service::{StageId, Transport};
use crate::wire::{PacketSummary, Protocol};

/// The first stage, and a second one that serves the services registered under `second_id`.
pub struct Stages<A, B> {
    /// The first stage (the default for packets of no other stage).
    pub first: A,
    /// The second stage.
    pub second: B,
    second_id: StageId,
    /// Which stage `poll_transmit` asks first (alternates, so neither starves the other).
    second_first: bool,
}

impl<A: Ipv4Handler, B: Ipv4Handler> Stages<A, B> {
    /// `first`, and `second` for the services registered under `second_id`.
    pub fn new(first: A, second: B, second_id: StageId) -> Self {
        Stages {
            first,
            second,
            second_id,
            second_first: false,
        }
    }

    fn is_second(&self, ip: &PacketSummary) -> bool {
        ip.service.is_some_and(|s| s.stage == self.second_id)
    }

    /// Offers the second stage what the first took from other workers and passed; returns the first frame to
    /// send.
    fn take_passed(&mut self, now: Instant, buf: &mut [u8], cx: &mut StackContext<'_>) -> Option<(PortId, usize)> {
        while let Some((port, len)) = self.first.poll_passed(buf) {
            let Some(ip) = passed_meta(&buf[..len], cx) else {
                continue;
            };
            let mut frame = Frame::new(buf, len);
            match self.second.handle(now, port, &mut frame, &ip, cx) {
                Handled::Verdict(Verdict::Transmit(out)) => return Some((out, frame.len())),
                Handled::Verdict(Verdict::Drop(reason)) | Handled::Reject(reason) => cx.counters.drop(reason),
                // Neither stage serves it (nothing is answered for a frame taken from another worker).
                Handled::Pass if ip.protocol == Protocol::Udp => cx.counters.drop(DropReason::UdpNoListener),
                Handled::Pass => cx.counters.drop(DropReason::TcpNoListener),
                Handled::Verdict(Verdict::Consumed) => {}
            }
        }
        None
    }
}

/// What the stack would have told a stage about a passed frame (a TCP or UDP packet to the local-port range,
/// validated by the worker that received it).
fn passed_meta(frame: &[u8], cx: &StackContext<'_>) -> Option<PacketSummary> {
    let mut ip = PacketSummary::parse(frame).ok()?;
    let transport = match ip.protocol {
        Protocol::Tcp => Transport::Tcp,
        Protocol::Udp => Transport::Udp,
        _ => return None,
    };
    ip.service = cx.services.lookup(ip.dst, transport, ip.ports?.dst);
    Some(ip)
}

impl<A: Ipv4Handler, B: Ipv4Handler> Ipv4Handler for Stages<A, B> {
    fn handle(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &PacketSummary,
        cx: &mut StackContext<'_>,
    ) -> Handled {
        if self.is_second(ip) {
            return self.second.handle(now, port, frame, ip, cx);
        }
        match self.first.handle(now, port, frame, ip, cx) {
            Handled::Pass if ip.service.is_some_and(|s| s.slot == LOCAL_PORTS_SLOT) => {
                self.second.handle(now, port, frame, ip, cx)
            }
            handled => handled,
        }
    }

    #[inline]
    fn prefetch(&mut self, port: PortId, frame: &[u8], ip: &PacketSummary) {
        // Services are not looked up before prefetching: only the first stage gets the hint.
        self.first.prefetch(port, frame, ip);
    }

    fn attach(&mut self, cx: &mut StackContext<'_>) {
        self.first.attach(cx);
        self.second.attach(cx);
    }

    fn flush_events(&mut self, cx: &mut StackContext<'_>) {
        self.first.flush_events(cx);
        self.second.flush_events(cx);
    }

    fn shutdown(&mut self, now: Instant) {
        self.first.shutdown(now);
        self.second.shutdown(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8], cx: &mut StackContext<'_>) -> Option<(PortId, usize)> {
        if let Some(out) = self.take_passed(now, buf, cx) {
            return Some(out);
        }
        self.second_first = !self.second_first;
        let out = if self.second_first {
            self.second
                .poll_transmit(now, buf, cx)
                .or_else(|| self.first.poll_transmit(now, buf, cx))
        } else {
            self.first
                .poll_transmit(now, buf, cx)
                .or_else(|| self.second.poll_transmit(now, buf, cx))
        };
        // The first stage's transmit poll takes frames from other workers: what it passed goes on now.
        out.or_else(|| self.take_passed(now, buf, cx))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match (self.first.poll_timeout(), self.second.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, now: Instant, cx: &mut StackContext<'_>) {
        // Each stage runs when its own timer is due, not whenever the other's is.
        if self.first.poll_timeout().is_some_and(|t| t <= now) {
            self.first.handle_timeout(now, cx);
        }
        if self.second.poll_timeout().is_some_and(|t| t <= now) {
            self.second.handle_timeout(now, cx);
        }
    }

    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        // One descriptor per worker: the first stage's (L4's HA tap) if it has one.
        self.first.wake_fd().or_else(|| self.second.wake_fd())
    }
}

#[cfg(test)]
mod tests {
    use std::ops::RangeInclusive;
    use std::time::Duration;

    use super::*;
    use crate::drops::DropReason;
    use crate::local::{Link, LocalConfig, LocalStack};
    use crate::neighbour::NeighbourConfig;
    use crate::pipeline::{Pipeline, Verdict};
    use crate::service::{Service, Transport};
    use crate::testutil::{tcp_frame, XLB_IP, XLB_MAC};

    /// A stage that serves one port under its id, consumes what it is given and records the ports.
    struct Recorder {
        id: StageId,
        port: u16,
        seen: Vec<u16>,
        due: Option<Instant>,
        timeouts: usize,
        /// Frames to pass to the next stage ([`Ipv4Handler::poll_passed`]).
        passed: Vec<Vec<u8>>,
        /// Port ranges it registers, with their slots.
        ranges: Vec<(RangeInclusive<u16>, u32)>,
    }

    impl Recorder {
        fn new(id: StageId, port: u16) -> Self {
            Recorder {
                id,
                port,
                seen: Vec::new(),
                due: None,
                timeouts: 0,
                passed: Vec::new(),
                ranges: Vec::new(),
            }
        }
    }

    impl Ipv4Handler for Recorder {
        fn handle(
            &mut self,
            _: Instant,
            _: PortId,
            f: &mut Frame<'_>,
            ip: &PacketSummary,
            _: &mut StackContext<'_>,
        ) -> Handled {
            let _ = f;
            let port = ip.ports.expect("a TCP segment with its ports").dst;
            self.seen.push(port);
            if port == self.port {
                Handled::Verdict(Verdict::Consumed)
            } else {
                Handled::Pass
            }
        }
        fn attach(&mut self, cx: &mut StackContext<'_>) {
            let service = Service {
                stage: self.id,
                slot: 0,
            };
            cx.services.set(XLB_IP, Transport::Tcp, self.port, Some(service));
            for (ports, slot) in &self.ranges {
                let service = Service {
                    stage: self.id,
                    slot: *slot,
                };
                cx.services.set_range(XLB_IP, Transport::Tcp, ports.clone(), service);
            }
        }
        fn poll_transmit(&mut self, _: Instant, _: &mut [u8], _: &mut StackContext<'_>) -> Option<(PortId, usize)> {
            None
        }
        fn poll_timeout(&self) -> Option<Instant> {
            self.due
        }
        fn poll_passed(&mut self, buf: &mut [u8]) -> Option<(PortId, usize)> {
            let frame = self.passed.pop()?;
            buf[..frame.len()].copy_from_slice(&frame);
            Some((0, frame.len()))
        }
        fn handle_timeout(&mut self, _: Instant, _: &mut StackContext<'_>) {
            self.timeouts += 1;
            self.due = None;
        }
    }

    #[test]
    fn each_packet_goes_to_the_stage_its_service_names_and_timers_to_the_stage_that_is_due() {
        let stages = Stages::new(Recorder::new(1, 80), Recorder::new(2, 81), 2);
        let mut stack = LocalStack::with_handler(
            LocalConfig {
                links: vec![Link {
                    mac: XLB_MAC,
                    addresses: vec!["198.18.0.10/24".parse().unwrap()],
                    gateway: None,
                }],
                neighbours: NeighbourConfig::default(),
                icmp_rate: 1000,
            },
            stages,
        );
        let now = Instant::now();
        let mut verdicts = Vec::new();
        for port in [80, 81, 82] {
            let mut bytes = tcp_frame(port, 1, 0, 0x02, b"");
            let len = bytes.len();
            bytes.resize(2048, 0);
            verdicts.push(stack.process(now, 0, &mut Frame::new(&mut bytes, len)));
        }
        let s = stack.handler();
        assert_eq!(s.first.seen, vec![80, 82], "its own service, and what no stage serves");
        assert_eq!(s.second.seen, vec![81]);
        assert_eq!(verdicts[..2], [Verdict::Consumed, Verdict::Consumed]);
        assert!(
            matches!(verdicts[2], Verdict::Transmit(_)),
            "port 82: RST from the local stack"
        );
        assert_eq!(stack.counters().drops[DropReason::TcpNoListener.index()], 1);

        stack.handler_mut().first.due = Some(now + Duration::from_millis(5));
        stack.handler_mut().second.due = Some(now + Duration::from_millis(50));
        stack.handle_timeout(now + Duration::from_millis(10));
        assert_eq!(
            (stack.handler().first.timeouts, stack.handler().second.timeouts),
            (1, 0),
            "only the stage whose timer is due runs"
        );
        assert_eq!(stack.poll_timeout(), Some(now + Duration::from_millis(50)));
    }

    #[test]
    fn the_local_port_range_is_shared_what_the_first_stage_passes_there_goes_to_the_second() {
        let mut first = Recorder::new(1, 80);
        first.ranges = vec![(10_000..=10_009, LOCAL_PORTS_SLOT), (20_000..=20_009, 7)];
        let stages = Stages::new(first, Recorder::new(2, 81), 2);
        let mut stack = LocalStack::with_handler(
            LocalConfig {
                links: vec![Link {
                    mac: XLB_MAC,
                    addresses: vec!["198.18.0.10/24".parse().unwrap()],
                    gateway: None,
                }],
                neighbours: NeighbourConfig::default(),
                icmp_rate: 1000,
            },
            stages,
        );
        let now = Instant::now();
        let send = |stack: &mut LocalStack<Stages<Recorder, Recorder>>, port| {
            let mut bytes = tcp_frame(port, 1, 0, 0x02, b"");
            let len = bytes.len();
            bytes.resize(2048, 0);
            stack.process(now, 0, &mut Frame::new(&mut bytes, len))
        };
        // Each stage passes what is not its own port: the local stack answers with an RST.
        assert!(matches!(send(&mut stack, 10_005), Verdict::Transmit(_)));
        assert!(matches!(send(&mut stack, 20_005), Verdict::Transmit(_)));
        let s = stack.handler();
        assert_eq!(
            (s.first.seen.clone(), s.second.seen.clone()),
            (vec![10_005, 20_005], vec![10_005]),
            "only the local-port range goes on to the second stage"
        );

        // A frame the first stage took from another worker and passed.
        let frame = tcp_frame(10_006, 1, 0, 0x10, b"");
        stack.handler_mut().first.passed.push(frame);
        let mut buf = vec![0u8; 2048];
        let unserved = stack.counters().drops[DropReason::TcpNoListener.index()];
        assert_eq!(stack.poll_transmit(now, &mut buf), None);
        assert_eq!(stack.handler().second.seen, vec![10_005, 10_006]);
        assert_eq!(
            stack.counters().drops[DropReason::TcpNoListener.index()],
            unserved + 1,
            "the second passed it too: no one's"
        );
    }
}
