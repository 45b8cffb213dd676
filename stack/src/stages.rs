//! Two stages behind the local stack as one: each packet goes to the stage its service names.
//!
//! The service table ([`crate::service`]) decides: a packet whose service belongs to the second stage's id is
//! the second stage's; everything else (the first stage's services, ICMP, packets no stage serves) is offered to
//! the first, which passes what it does not want to the local stack. Originated frames are taken from both in
//! turn, and the earliest timer of either wakes the worker. Nest `Stages` for more than two.

use std::time::Instant;

use crate::local::{Handled, Ipv4Handler, Ipv4Meta, StackContext};
use crate::pipeline::{Frame, PortId};
use crate::service::StageId;

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

    fn is_second(&self, ip: &Ipv4Meta) -> bool {
        ip.service.is_some_and(|s| s.stage == self.second_id)
    }
}

impl<A: Ipv4Handler, B: Ipv4Handler> Ipv4Handler for Stages<A, B> {
    fn handle(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &Ipv4Meta,
        cx: &mut StackContext<'_>,
    ) -> Handled {
        if self.is_second(ip) {
            self.second.handle(now, port, frame, ip, cx)
        } else {
            self.first.handle(now, port, frame, ip, cx)
        }
    }

    #[inline]
    fn prefetch(&mut self, port: PortId, frame: &[u8], ip: &Ipv4Meta) {
        // Services are not looked up before prefetching: only the first stage gets the hint.
        self.first.prefetch(port, frame, ip);
    }

    fn attach(&mut self, cx: &mut StackContext<'_>) {
        self.first.attach(cx);
        self.second.attach(cx);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8], cx: &mut StackContext<'_>) -> Option<(PortId, usize)> {
        self.second_first = !self.second_first;
        if self.second_first {
            self.second
                .poll_transmit(now, buf, cx)
                .or_else(|| self.first.poll_transmit(now, buf, cx))
        } else {
            self.first
                .poll_transmit(now, buf, cx)
                .or_else(|| self.second.poll_transmit(now, buf, cx))
        }
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
