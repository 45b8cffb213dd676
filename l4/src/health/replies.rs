//! The health checker's receive side: replies to probes (TCP segments, UDP datagrams, ICMP errors quoting a
//! probe) matched to the live probe that caused them.

use std::net::Ipv4Addr;
use std::time::Instant;

use xlb_stack::offload;

use super::*;
use xlb_stack::wire::{icmp, IcmpMessage, Ipv4Header, Protocol, Quote, TcpHeader, UdpHeader};

impl HealthChecker {
    /// The target whose live probe uses local `port` and whose kind carries `protocol`.
    fn live_probe(&self, port: u16, protocol: Protocol) -> Option<usize> {
        let i = self.slots[self.ports.index(port)?]?;
        let kind = self.targets[i].target.check.kind;
        let matches = match protocol {
            Protocol::Udp => kind == CheckKind::Udp,
            _ => kind != CheckKind::Udp,
        };
        matches.then_some(i)
    }

    /// Whether a packet from `src:src_port` to `dst` comes from target `i`'s server to its source address.
    fn sent_by_server(&self, i: usize, src: Ipv4Addr, src_port: u16, dst: Ipv4Addr) -> bool {
        let t = &self.targets[i].target;
        src == *t.server.ip() && src_port == t.server.port() && dst == t.source
    }

    /// Fails target `i`'s probe if its deadline passed (the packet is then too late to count).
    fn expired(&mut self, now: Instant, i: usize) -> bool {
        let late = self.targets[i].probe.is_some_and(|p| now >= p.deadline);
        if late {
            self.time_out(i);
        }
        late
    }

    pub(super) fn handle_tcp(&mut self, now: Instant, ip: &Ipv4Header<&[u8]>) -> bool {
        let Ok(seg) = TcpHeader::new_checked(ip.payload()) else {
            return false;
        };
        let Some(i) = self.live_probe(seg.dst_port(), Protocol::Tcp) else {
            return false;
        };
        if !self.sent_by_server(i, ip.src(), seg.src_port(), ip.dst()) || self.expired(now, i) {
            return false;
        }
        if !packets::l4_checksum_ok(ip, ip.payload()) {
            self.bad_l4_checksum(ip, ip.payload(), offload::TCP_CHECKSUM_OFFSET);
            return true;
        }
        self.on_tcp_segment(i, &seg);
        true
    }

    /// Counts a reply about a live probe whose TCP/UDP checksum does not verify; a partial checksum (the
    /// server's TX checksum offload) logs the hint, once per our address.
    fn bad_l4_checksum(&mut self, ip: &Ipv4Header<&[u8]>, segment: &[u8], csum_offset: usize) {
        self.counters.bad_checksum += 1;
        if offload::is_partial(ip.src(), ip.dst(), ip.protocol().number(), segment, csum_offset) {
            offload::warn_once(
                &format!("health checks from {}", ip.dst()),
                "health checker",
                ip.src(),
                "health-check reply (the server's health stays unknown and it will be marked DOWN)",
            );
        }
    }

    fn on_tcp_segment(&mut self, i: usize, seg: &TcpHeader<&[u8]>) {
        let t = &mut self.targets[i];
        let check = &t.target.check;
        let mode = match check.kind {
            CheckKind::Http => Mode::Http,
            _ => Mode::Connect,
        };
        let Some(tcp) = t.probe.as_mut().and_then(|p| p.tcp.as_mut()) else {
            return;
        };
        match tcp.on_segment(mode, seg, |code| check.status_ok(code)) {
            Step::Ignored => {}
            Step::Pending => self.queue_ready(i),
            Step::Done { result, teardown } => self.finish(i, result, teardown),
        }
    }

    pub(super) fn handle_udp(&mut self, now: Instant, ip: &Ipv4Header<&[u8]>) -> bool {
        let Ok(udp) = UdpHeader::new_checked(ip.payload()) else {
            return false;
        };
        let datagram = udp.datagram();
        let Some(i) = self.live_probe(udp.dst_port(), Protocol::Udp) else {
            return false;
        };
        if !self.sent_by_server(i, ip.src(), udp.src_port(), ip.dst()) || self.expired(now, i) {
            return false;
        }
        if !packets::l4_checksum_ok(ip, datagram) {
            self.bad_l4_checksum(ip, datagram, offload::UDP_CHECKSUM_OFFSET);
            return true;
        }
        self.finish(i, Ok(()), false);
        true
    }

    pub(super) fn handle_icmp(&mut self, now: Instant, ip: &Ipv4Header<&[u8]>) -> bool {
        let Ok(message) = IcmpMessage::new_checked(ip.payload()) else {
            return false;
        };
        // RFC 792: the quote holds the IP header and 8 bytes of payload (ports and, for TCP, the sequence).
        let Some(quote) = message.quote().ok().filter(|q| q.tcp_seq().is_some()) else {
            return false;
        };
        let Some(i) = self.quoted_probe(ip, &quote) else {
            return false;
        };
        if self.expired(now, i) {
            return false;
        }
        if !message.checksum_ok() {
            self.counters.bad_checksum += 1;
            return true;
        }
        let (kind, code) = (message.msg_type(), message.code());
        if kind == icmp::kind::DEST_UNREACHABLE && code != icmp::CODE_FRAG_NEEDED {
            // The server cannot be reached, so neither can a RST: no teardown.
            self.finish(i, Err(Failure::Unreachable(code)), false);
        }
        true
    }

    /// The target whose live probe `quote` quotes (sent from our address to its server, from its port, and
    /// for TCP with a sequence number it sent).
    fn quoted_probe(&self, ip: &Ipv4Header<&[u8]>, quote: &Quote<&[u8]>) -> Option<usize> {
        let (src_port, dst_port) = quote.ports();
        let quoted = quote.ip();
        let i = self.live_probe(src_port, quoted.protocol())?;
        let t = &self.targets[i];
        let ours = quoted.src() == t.target.source
            && ip.dst() == t.target.source
            && quoted.dst() == *t.target.server.ip()
            && dst_port == t.target.server.port()
            && matches!(quoted.protocol(), Protocol::Tcp | Protocol::Udp);
        let seq_ok = match (t.probe.and_then(|p| p.tcp), quote.tcp_seq()) {
            (Some(tcp), Some(seq)) => tcp.sent_seq(seq),
            (Some(_), None) => false,
            (None, _) => true,
        };
        (ours && seq_ok).then_some(i)
    }
}
