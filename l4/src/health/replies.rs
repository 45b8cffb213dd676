//! The health checker's receive side: replies to probes (TCP segments, UDP datagrams, ICMP errors quoting a
//! probe) matched to the live probe that caused them.

use std::net::Ipv4Addr;
use std::time::Instant;

use xlb_stack::offload;

use super::packets::{IcmpQuote, Ipv4View, TcpView, UdpView};
use super::*;

impl HealthChecker {
    /// The target whose live probe uses local `port` and whose kind carries `protocol`.
    fn live_probe(&self, port: u16, protocol: u8) -> Option<usize> {
        let i = self.slots[self.ports.index(port)?]?;
        let kind = self.targets[i].target.check.kind;
        let matches = match protocol {
            packets::PROTO_UDP => kind == CheckKind::Udp,
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

    pub(super) fn handle_tcp(&mut self, now: Instant, ip: &Ipv4View<'_>) -> bool {
        let Some(seg) = packets::tcp_view(ip.payload) else {
            return false;
        };
        let Some(i) = self.live_probe(seg.dst_port, packets::PROTO_TCP) else {
            return false;
        };
        if !self.sent_by_server(i, ip.src, seg.src_port, ip.dst) || self.expired(now, i) {
            return false;
        }
        if !packets::l4_checksum_ok(ip, ip.payload) {
            self.bad_l4_checksum(ip, ip.payload, offload::TCP_CHECKSUM_OFFSET);
            return true;
        }
        self.on_tcp_segment(i, &seg);
        true
    }

    /// Counts a reply about a live probe whose TCP/UDP checksum does not verify; a partial checksum (the
    /// server's TX checksum offload) logs the hint, once per our address.
    fn bad_l4_checksum(&mut self, ip: &Ipv4View<'_>, segment: &[u8], csum_offset: usize) {
        self.counters.bad_checksum += 1;
        if offload::is_partial(ip.src, ip.dst, ip.protocol, segment, csum_offset) {
            offload::warn_once(
                &format!("health checks from {}", ip.dst),
                "health checker",
                ip.src,
                "health-check reply (the server's health stays unknown and it will be marked DOWN)",
            );
        }
    }

    fn on_tcp_segment(&mut self, i: usize, seg: &TcpView<'_>) {
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

    pub(super) fn handle_udp(&mut self, now: Instant, ip: &Ipv4View<'_>) -> bool {
        let Some(UdpView {
            src_port,
            dst_port,
            datagram,
        }) = packets::udp_view(ip.payload)
        else {
            return false;
        };
        let Some(i) = self.live_probe(dst_port, packets::PROTO_UDP) else {
            return false;
        };
        if !self.sent_by_server(i, ip.src, src_port, ip.dst) || self.expired(now, i) {
            return false;
        }
        if !packets::l4_checksum_ok(ip, datagram) {
            self.bad_l4_checksum(ip, datagram, offload::UDP_CHECKSUM_OFFSET);
            return true;
        }
        self.finish(i, Ok(()), false);
        true
    }

    pub(super) fn handle_icmp(&mut self, now: Instant, ip: &Ipv4View<'_>) -> bool {
        let Some(quote) = packets::icmp_quote(ip.payload) else {
            return false;
        };
        let Some(i) = self.quoted_probe(ip, &quote) else {
            return false;
        };
        if self.expired(now, i) {
            return false;
        }
        if !quote.checksum_ok {
            self.counters.bad_checksum += 1;
            return true;
        }
        if quote.icmp_type == packets::ICMP_UNREACHABLE && quote.code != packets::ICMP_FRAG_NEEDED {
            // The server cannot be reached, so neither can a RST: no teardown.
            self.finish(i, Err(Failure::Unreachable(quote.code)), false);
        }
        true
    }

    /// The target whose live probe `quote` quotes (sent from our address to its server, from its port, and
    /// for TCP with a sequence number it sent).
    fn quoted_probe(&self, ip: &Ipv4View<'_>, quote: &IcmpQuote<'_>) -> Option<usize> {
        let (src_port, dst_port) = quote.ports();
        let i = self.live_probe(src_port, quote.protocol)?;
        let t = &self.targets[i];
        let ours = quote.src == t.target.source
            && ip.dst == t.target.source
            && quote.dst == *t.target.server.ip()
            && dst_port == t.target.server.port()
            && matches!(quote.protocol, packets::PROTO_TCP | packets::PROTO_UDP);
        let seq_ok = match t.probe.and_then(|p| p.tcp) {
            Some(tcp) => tcp.sent_seq(quote.tcp_seq()),
            None => true,
        };
        (ours && seq_ok).then_some(i)
    }
}
