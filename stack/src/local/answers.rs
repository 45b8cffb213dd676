//! The local stack's own answers: ICMP echo replies, and for what no stage serves a TCP reset or an ICMP port
//! unreachable (and ICMP time exceeded for what a stage would forward but whose TTL ran out), rate-limited as the
//! kernel's `icmp_ratelimit` does.

use std::time::Instant;

use super::{Ipv4Handler, LocalStack};
use crate::drops::DropReason;
use crate::offload;
use crate::pipeline::{Frame, PortId, Verdict};
use crate::wire::build::{self, ResetFor, Unreachable};
use crate::wire::icmp::{self, kind};
use crate::wire::{
    checksum, ipv4, EthernetAddress, IcmpMessage, Ipv4Header, PacketSummary, Protocol, TcpHeader, UdpHeader,
    ETH_HEADER_LEN,
};

/// A token bucket limiting ICMP errors and resets, as the kernel's `icmp_ratelimit` does.
#[derive(Debug, Clone)]
pub(super) struct RateLimiter {
    per_sec: u32,
    burst: u32,
    tokens: u32,
    last: Option<Instant>,
}

impl RateLimiter {
    pub(super) fn new(per_sec: u32) -> Self {
        let burst = (per_sec / 10).max(1);
        RateLimiter {
            per_sec,
            burst,
            tokens: burst,
            last: None,
        }
    }

    pub(super) fn allow(&mut self, now: Instant) -> bool {
        let last = *self.last.get_or_insert(now);
        let refill = (now.saturating_duration_since(last).as_micros() * u128::from(self.per_sec) / 1_000_000) as u32;
        if refill > 0 {
            self.tokens = (self.tokens + refill).min(self.burst);
            self.last = Some(now);
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

impl<H: Ipv4Handler> LocalStack<H> {
    /// The drop reason of a TCP or UDP segment whose checksum does not verify; the first one with a partial
    /// checksum on a port logs the offload hint (once per interface per process).
    fn bad_checksum(&mut self, port: PortId, ip: &PacketSummary, segment: &[u8]) -> DropReason {
        let (offset, what) = if ip.protocol == Protocol::Tcp {
            (offload::TCP_CHECKSUM_OFFSET, "TCP segment")
        } else {
            (offload::UDP_CHECKSUM_OFFSET, "UDP datagram")
        };
        let (src, dst, protocol) = (ip.src, ip.dst, ip.protocol.number());
        if self.partial_seen & (1 << port) == 0 && offload::is_partial(src, dst, protocol, segment, offset) {
            self.partial_seen |= 1 << port;
            let name = self
                .link_names
                .get(port)
                .cloned()
                .unwrap_or_else(|| format!("port {port}"));
            offload::warn_once(&format!("interface {name}"), &name, src, what);
        }
        DropReason::BadL4Checksum
    }

    /// Answers a packet the upper stage would forward but whose TTL ran out with ICMP time exceeded (RFC 792,
    /// code 0), from the address it was sent to, quoting its header and 8 bytes of its payload; rate-limited as
    /// every ICMP error. Sources that cannot take an answer (RFC 1812: 0/8, loopback, multicast, 240/4) get none.
    pub(super) fn time_exceeded(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &PacketSummary,
    ) -> Verdict {
        self.counters.drop(DropReason::TtlExceeded);
        let (src, dst) = (ip.src, ip.dst);
        let o = src.octets();
        if o[0] == 0 || src.is_loopback() || src.is_multicast() || o[0] >= 240 {
            return Verdict::Consumed;
        }
        if !self.limiter.allow(now) {
            self.counters.drop(DropReason::IcmpRateLimited);
            return Verdict::Consumed;
        }
        let data = frame.data();
        let mut quote = [0u8; QUOTE_MAX];
        let quote_len = (ip.l4 - ETH_HEADER_LEN + QUOTED_PAYLOAD).min(data.len() - ETH_HEADER_LEN);
        quote[..quote_len].copy_from_slice(&data[ETH_HEADER_LEN..ETH_HEADER_LEN + quote_len]);
        let peer_mac = sender_mac(data);
        let len = build::icmp_time_exceeded(
            frame.buffer_mut(),
            peer_mac,
            self.links[port].mac,
            dst,
            src,
            &quote[..quote_len],
        );
        frame.set_len(len);
        self.counters.icmp_time_exceeded += 1;
        Verdict::Transmit(port)
    }

    /// Turns an echo request into its reply in place: swap addresses, type 8 → 0, checksums updated
    /// incrementally.
    pub(super) fn handle_icmp(&mut self, port: PortId, frame: &mut Frame<'_>, ip: &PacketSummary) -> Verdict {
        let data = frame.data_mut();
        let l4 = ip.l4;
        let request = match IcmpMessage::new_checked(&data[l4..]) {
            Ok(m) if m.checksum_ok() => m,
            _ => return Verdict::Drop(DropReason::MalformedIcmp),
        };
        if request.msg_type() != kind::ECHO_REQUEST || request.code() != 0 {
            return Verdict::Drop(DropReason::IcmpNotHandled);
        }
        let old_word = u16::from_be_bytes([request.msg_type(), request.code()]);
        let new_word = u16::from_be_bytes([kind::ECHO_REPLY, request.code()]);
        let csum = checksum::update16(request.checksum(), old_word, new_word);
        data[l4 + icmp::field::TYPE] = kind::ECHO_REPLY;
        data[l4 + icmp::field::CHECKSUM.start..l4 + icmp::field::CHECKSUM.end].copy_from_slice(&csum.to_be_bytes());
        self.swap_to_reply(port, data);
        self.counters.icmp_echo_replies += 1;
        Verdict::Transmit(port)
    }

    /// Rewrites Ethernet and IPv4 headers of a received packet to answer its sender (TTL reset to 64).
    fn swap_to_reply(&self, port: PortId, data: &mut [u8]) {
        let (eth, ip) = data.split_at_mut(ETH_HEADER_LEN);
        eth.copy_within(ETH_SRC, 0);
        eth[ETH_SRC].copy_from_slice(&self.links[port].mac.0);
        // Swapping the addresses leaves the header checksum as it is.
        let (src, dst) = (ipv4::field::SRC, ipv4::field::DST);
        let mut addrs = [0u8; 8];
        addrs.copy_from_slice(&ip[src.start..dst.end]);
        ip[src].copy_from_slice(&addrs[4..8]);
        ip[dst].copy_from_slice(&addrs[0..4]);
        Ipv4Header::new_unchecked(ip).set_ttl(build::DEFAULT_TTL);
    }

    /// Answers a TCP segment nothing serves with an RST (unless it is one), counted under `reason`.
    pub(super) fn handle_tcp(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &PacketSummary,
        reason: DropReason,
    ) -> Verdict {
        let data = frame.data();
        let Ok(tcp) = TcpHeader::new_checked(&data[ip.l4..]) else {
            return Verdict::Drop(DropReason::MalformedTcp);
        };
        let segment = tcp.into_inner();
        if checksum::l4_checksum(ip.src.octets(), ip.dst.octets(), Protocol::TCP, segment) != 0 {
            return Verdict::Drop(self.bad_checksum(port, ip, segment));
        }
        self.counters.drop(reason);
        let flags = tcp.flags();
        if flags.rst() {
            return Verdict::Consumed;
        }
        if !self.limiter.allow(now) {
            self.counters.drop(DropReason::IcmpRateLimited);
            return Verdict::Consumed;
        }
        let seg = ResetFor {
            peer: (ip.src, tcp.src_port()),
            local: (ip.dst, tcp.dst_port()),
            seq: tcp.seq(),
            ack: flags.ack().then(|| tcp.ack_number()),
            seq_len: tcp.payload().len() as u32 + u32::from(flags.syn()) + u32::from(flags.fin()),
        };
        let peer_mac = sender_mac(data);
        let len = build::tcp_reset(frame.buffer_mut(), peer_mac, self.links[port].mac, &seg);
        frame.set_len(len);
        self.counters.tcp_resets += 1;
        Verdict::Transmit(port)
    }

    /// Answers a UDP datagram nothing serves with ICMP port unreachable, counted under `reason`.
    pub(super) fn handle_udp(
        &mut self,
        now: Instant,
        port: PortId,
        frame: &mut Frame<'_>,
        ip: &PacketSummary,
        reason: DropReason,
    ) -> Verdict {
        let data = frame.data();
        let Ok(udp) = UdpHeader::new_checked(&data[ip.l4..]) else {
            return Verdict::Drop(DropReason::MalformedUdp);
        };
        // A zero checksum field means none was computed (allowed for UDP over IPv4).
        let datagram = udp.datagram();
        if udp.checksum() != 0 && checksum::l4_checksum(ip.src.octets(), ip.dst.octets(), Protocol::UDP, datagram) != 0
        {
            return Verdict::Drop(self.bad_checksum(port, ip, datagram));
        }
        self.counters.drop(reason);
        if !self.limiter.allow(now) {
            self.counters.drop(DropReason::IcmpRateLimited);
            return Verdict::Consumed;
        }
        // Quote the offending IP header and 8 bytes of its payload (RFC 792), copied out before the frame
        // is overwritten by the answer.
        let mut quote = [0u8; QUOTE_MAX];
        let quote_len = (ip.l4 - ETH_HEADER_LEN) + QUOTED_PAYLOAD;
        quote[..quote_len].copy_from_slice(&data[ETH_HEADER_LEN..ip.l4 + QUOTED_PAYLOAD]);
        let peer_mac = sender_mac(data);
        let len = build::icmp_unreachable(
            frame.buffer_mut(),
            peer_mac,
            self.links[port].mac,
            ip.dst,
            ip.src,
            Unreachable::Port,
            &quote[..quote_len],
        );
        frame.set_len(len);
        self.counters.icmp_unreachables += 1;
        Verdict::Transmit(port)
    }
}

/// Bytes of the offending packet's payload an ICMP error quotes after its IP header (RFC 792).
const QUOTED_PAYLOAD: usize = 8;
/// The longest quote: an IPv4 header with options and [`QUOTED_PAYLOAD`].
const QUOTE_MAX: usize = 60 + QUOTED_PAYLOAD;
/// The source MAC in an Ethernet header.
const ETH_SRC: std::ops::Range<usize> = 6..12;

/// The source MAC of a received frame (the peer to answer).
fn sender_mac(frame: &[u8]) -> EthernetAddress {
    EthernetAddress::from_bytes(&frame[ETH_SRC])
}
