//! IPv4 reassembly of fragmented datagrams addressed to the appliance, and re-fragmentation of what it sends on.
//!
//! A worker keeps a fixed number of reassembly slots, each with a buffer the size of a UMEM frame, allocated once
//! when the stack is built: nothing is allocated per packet. Fragments are held (copied into their slot) until
//! the datagram is complete; the complete datagram is then written into the frame of its last fragment and goes
//! through the normal path (service lookup, the L4 stage, local answers), as if it had arrived whole. What that
//! path sends on (a FULLNAT or DR forward, an echo reply) is cut again into fragments no larger than the largest
//! one received — as Linux re-fragments a datagram that conntrack reassembled (`frag_max_size`) — the first in
//! the frame, the rest from the slot through `poll_transmit`.
//!
//! The rules are Linux's (`ip_fragment.c`), stricter where an appliance can afford it:
//! - a fragment that overlaps (or repeats) part of its datagram discards the whole datagram (RFC 5722's rule,
//!   which Linux applies to IPv4 too since the FragmentSmack fixes);
//! - a first fragment that does not hold the whole TCP/UDP/ICMP header is refused and its datagram discarded
//!   (RFC 1858);
//! - middle pieces must be multiples of 8 bytes, and nothing may end past 65535 bytes;
//! - a datagram not complete within [`REASSEMBLY_TIMEOUT`] (Linux's `ipfrag_time` is 30 s; a load balancer
//!   sees RTTs well below that) is given up;
//! - with every slot busy, the oldest incomplete datagram gives way to the new one (Linux evicts under memory
//!   pressure), so a flood of lone fragments cannot block reassembly for longer than it keeps flooding;
//! - a datagram larger than a frame holds (3840 bytes with the Ethernet header: 3798 bytes of UDP payload) is
//!   refused: every fragment of it is dropped.
//!
//! Every fragment that is not held ends as a drop counted by reason (`fragment_*`); fragments held by a datagram
//! that is later given up are counted under the reason it was given up for.

use std::time::{Duration, Instant};

use crate::counters::StackCounters;
use crate::drops::DropReason;
use crate::pipeline::PortId;
use crate::wire::{checksum, Ipv4Addr, Ipv4Header, ETH_HEADER_LEN};

/// How long the fragments of a datagram are kept waiting for the rest.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Datagrams reassembled at once per worker.
pub const DEFAULT_SLOTS: usize = 64;
/// Largest reassembled frame (Ethernet header included): what a UMEM frame holds after the kernel's
/// `XDP_PACKET_HEADROOM` (4096 - 256 bytes), so 3798 bytes of UDP payload.
pub const DEFAULT_MAX_FRAME: usize = 4096 - 256;

/// The settings of the reassembler.
#[derive(Debug, Clone)]
pub struct FragConfig {
    /// Datagrams being reassembled at once.
    pub slots: usize,
    /// Largest reassembled frame, Ethernet header included.
    pub max_frame: usize,
    /// How long an incomplete datagram is kept.
    pub timeout: Duration,
}

impl Default for FragConfig {
    fn default() -> Self {
        FragConfig {
            slots: DEFAULT_SLOTS,
            max_frame: DEFAULT_MAX_FRAME,
            timeout: REASSEMBLY_TIMEOUT,
        }
    }
}

/// What identifies the fragments of one datagram (RFC 791): source, destination, protocol, identification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    id: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    /// Collecting fragments.
    Assembling,
    /// Given up for this reason: later fragments of the datagram are dropped under it until the deadline.
    Discarding(DropReason),
    /// Complete and processed: fragments of the answer are being sent (see [`Reassembler::poll_transmit`]).
    Emitting,
}

/// Longest IPv4 header (with options) plus the Ethernet header.
const MAX_HEAD: usize = ETH_HEADER_LEN + 60;

struct Slot {
    state: State,
    key: Key,
    deadline: Instant,
    /// The first fragment's Ethernet and IPv4 headers (`head_len` bytes), once it arrived.
    head: [u8; MAX_HEAD],
    head_len: usize,
    /// Payload length, known once the last fragment arrived.
    total: Option<usize>,
    /// Payload bytes received, and the furthest end seen.
    received: usize,
    max_end: usize,
    /// Fragments held.
    held: u64,
    /// Largest fragment received (IPv4 total length).
    max_fragment: usize,
    /// Which 8-byte blocks of the payload have arrived.
    blocks: Box<[u64]>,
    /// The payload.
    data: Box<[u8]>,
    /// While emitting: the port, the payload offset of the next fragment, the payload per fragment.
    out_port: PortId,
    out_next: usize,
    out_step: usize,
}

/// A complete datagram, written into the frame of its last fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reassembled {
    /// The slot that held it (kept until [`Reassembler::send_on`] or [`Reassembler::release`]).
    pub slot: usize,
    /// Length of the datagram's frame.
    pub len: usize,
}

/// What became of a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Held until the rest arrives (the frame can be recycled).
    Held,
    /// Dropped, counted under this reason.
    Drop(DropReason),
    /// The datagram is complete (in the frame).
    Complete(Reassembled),
}

/// The reassembly slots of one worker.
pub struct Reassembler {
    config: FragConfig,
    slots: Vec<Slot>,
    /// The slot with fragments left to send, if any.
    emitting: Vec<usize>,
    /// Datagrams reassembled.
    pub reassembled: u64,
    /// Fragments sent by re-fragmentation.
    pub fragments_sent: u64,
}

impl Reassembler {
    /// Reassembly slots as `config` says, allocated now.
    pub fn new(config: FragConfig, now: Instant) -> Self {
        let payload = config.max_frame.saturating_sub(ETH_HEADER_LEN + 20);
        let slots = (0..config.slots)
            .map(|_| Slot {
                state: State::Free,
                key: Key {
                    src: Ipv4Addr::UNSPECIFIED,
                    dst: Ipv4Addr::UNSPECIFIED,
                    protocol: 0,
                    id: 0,
                },
                deadline: now,
                head: [0; MAX_HEAD],
                head_len: 0,
                total: None,
                received: 0,
                max_end: 0,
                held: 0,
                max_fragment: 0,
                blocks: vec![0u64; payload.div_ceil(64 * 8)].into_boxed_slice(),
                data: vec![0u8; payload].into_boxed_slice(),
                out_port: 0,
                out_next: 0,
                out_step: 0,
            })
            .collect();
        Reassembler {
            emitting: Vec::with_capacity(config.slots),
            config,
            slots,
            reassembled: 0,
            fragments_sent: 0,
        }
    }

    /// Slots in use (assembling, discarding or emitting).
    pub fn in_use(&self) -> usize {
        self.slots.iter().filter(|s| s.state != State::Free).count()
    }

    /// Takes the fragment in `buf[..len]` (an Ethernet frame whose IPv4 header was validated: checksum, lengths,
    /// `len` trimmed to the IPv4 total length). On `Complete` the datagram has replaced it in `buf`.
    pub fn on_fragment(&mut self, now: Instant, buf: &mut [u8], len: usize, counters: &mut StackCounters) -> Outcome {
        self.expire(now, counters);
        let ip = &buf[ETH_HEADER_LEN..len];
        let header = Ipv4Header::new_unchecked(ip);
        let hl = header.header_len();
        let flags_frag = u16::from_be_bytes([ip[6], ip[7]]);
        let offset = usize::from(flags_frag & 0x1fff) * 8;
        let more = flags_frag & 0x2000 != 0;
        let payload_len = ip.len() - hl;
        let end = offset + payload_len;
        let key = Key {
            src: header.src(),
            dst: header.dst(),
            protocol: header.protocol().number(),
            id: u16::from_be_bytes([ip[4], ip[5]]),
        };
        if payload_len == 0 || (more && !payload_len.is_multiple_of(8)) || hl + end > 65535 {
            return Outcome::Drop(DropReason::FragmentInvalid);
        }
        let found = self.slots.iter().position(|s| s.state != State::Free && s.key == key);
        let i = match found {
            Some(i) => match self.slots[i].state {
                State::Discarding(reason) => return Outcome::Drop(reason),
                // The answer of this datagram is still being sent: a repeat of one of its fragments.
                State::Emitting => return Outcome::Drop(DropReason::FragmentOverlap),
                _ => i,
            },
            None => match self.take_slot(now, key, counters) {
                Some(i) => i,
                None => return Outcome::Drop(DropReason::FragmentEvicted),
            },
        };
        let header_needed = match key.protocol {
            6 => 20,
            17 | 1 => 8,
            _ => 0,
        };
        if offset == 0 && payload_len < header_needed {
            return self.discard(i, DropReason::FragmentTiny, counters);
        }
        let slot = &mut self.slots[i];
        if end > slot.data.len() {
            return self.discard(i, DropReason::FragmentTooBig, counters);
        }
        // The last fragment fixes the length: nothing may lie beyond it, and it may not change.
        let bad_end = match (more, slot.total) {
            (false, Some(t)) => t != end,
            (false, None) => slot.max_end > end,
            (true, Some(t)) => end > t,
            (true, None) => false,
        };
        if bad_end {
            return self.discard(i, DropReason::FragmentInvalid, counters);
        }
        let (first_block, last_block) = (offset / 8, end.div_ceil(8));
        if (first_block..last_block).any(|b| slot.blocks[b / 64] & (1 << (b % 64)) != 0) {
            return self.discard(i, DropReason::FragmentOverlap, counters);
        }
        for b in first_block..last_block {
            slot.blocks[b / 64] |= 1 << (b % 64);
        }
        slot.data[offset..end].copy_from_slice(&ip[hl..]);
        if offset == 0 {
            slot.head_len = ETH_HEADER_LEN + hl;
            slot.head[..slot.head_len].copy_from_slice(&buf[..ETH_HEADER_LEN + hl]);
        }
        if !more {
            slot.total = Some(end);
        }
        slot.received += payload_len;
        slot.max_end = slot.max_end.max(end);
        slot.held += 1;
        slot.max_fragment = slot.max_fragment.max(hl + payload_len);
        match slot.total {
            Some(total) if slot.received == total => {}
            _ => return Outcome::Held,
        }
        // Complete: the first fragment's headers, then the payload, into the frame.
        let (head_len, total) = (slot.head_len, slot.received);
        let frame_len = head_len + total;
        if frame_len > buf.len() {
            return self.discard(i, DropReason::FragmentTooBig, counters);
        }
        buf[..head_len].copy_from_slice(&slot.head[..head_len]);
        buf[head_len..frame_len].copy_from_slice(&slot.data[..total]);
        let ip = &mut buf[ETH_HEADER_LEN..frame_len];
        let hl = head_len - ETH_HEADER_LEN;
        ip[2..4].copy_from_slice(&((hl + total) as u16).to_be_bytes());
        let df = ip[6] & 0x40;
        ip[6] = df;
        ip[7] = 0;
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&ip[..hl]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        self.reassembled += 1;
        Outcome::Complete(Reassembled {
            slot: i,
            len: frame_len,
        })
    }

    /// The reassembled datagram in `frame[..len]` (as the stack left it: rewritten and addressed) is to be sent on
    /// `port`. When it is larger than the largest fragment it came in, the frame is cut to the first fragment and
    /// the rest are queued for [`Reassembler::poll_transmit`]; otherwise the slot is released. Returns the
    /// frame's new length.
    pub fn send_on(&mut self, r: Reassembled, port: PortId, frame: &mut [u8], len: usize) -> usize {
        let slot = &mut self.slots[r.slot];
        let hl = usize::from(frame[ETH_HEADER_LEN] & 0x0f) * 4;
        let head_len = ETH_HEADER_LEN + hl;
        let payload = len.saturating_sub(head_len);
        let step = slot.max_fragment.saturating_sub(hl) / 8 * 8;
        if len <= ETH_HEADER_LEN + slot.max_fragment || step == 0 || payload > slot.data.len() || hl > 60 {
            slot.state = State::Free;
            return len;
        }
        // The answer's payload and headers (only headers are rewritten on the way, but take what was sent).
        slot.data[..payload].copy_from_slice(&frame[head_len..len]);
        slot.head[..head_len].copy_from_slice(&frame[..head_len]);
        slot.head_len = head_len;
        slot.total = Some(payload);
        slot.state = State::Emitting;
        slot.out_port = port;
        slot.out_next = step;
        slot.out_step = step;
        self.emitting.push(r.slot);
        self.fragments_sent += 1;
        write_fragment(frame, &slot.head[..head_len], 0, step, true)
    }

    /// Frees a reassembled datagram's slot that was not sent on.
    pub fn release(&mut self, r: Reassembled) {
        self.slots[r.slot].state = State::Free;
    }

    /// The next fragment of a re-fragmented datagram, written into `buf`.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<(PortId, usize)> {
        let &i = self.emitting.first()?;
        let slot = &mut self.slots[i];
        let total = slot.total.unwrap_or(0);
        let (from, to) = (slot.out_next, (slot.out_next + slot.out_step).min(total));
        let more = to < total;
        let head_len = slot.head_len;
        buf[head_len..head_len + (to - from)].copy_from_slice(&slot.data[from..to]);
        let len = write_fragment(buf, &slot.head[..head_len], from, to - from, more);
        let port = slot.out_port;
        slot.out_next = to;
        if !more {
            slot.state = State::Free;
            self.emitting.remove(0);
        }
        self.fragments_sent += 1;
        Some((port, len))
    }

    /// When [`Reassembler::handle_timeout`] has work: the earliest deadline of a held datagram.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, State::Assembling | State::Discarding(_)))
            .map(|s| s.deadline)
            .min()
    }

    /// Gives up datagrams past their deadline.
    pub fn handle_timeout(&mut self, now: Instant, counters: &mut StackCounters) {
        self.expire(now, counters);
    }

    fn expire(&mut self, now: Instant, counters: &mut StackCounters) {
        for s in &mut self.slots {
            match s.state {
                State::Assembling if s.deadline <= now => {
                    counters.drops[DropReason::FragmentTimeout.index()] += s.held;
                    s.state = State::Free;
                }
                State::Discarding(_) if s.deadline <= now => s.state = State::Free,
                _ => {}
            }
        }
    }

    /// A slot for a new datagram: a free one, else the one discarding longest, else the oldest assembling one
    /// (its fragments counted as evicted). `None` only when every slot is sending fragments.
    fn take_slot(&mut self, now: Instant, key: Key, counters: &mut StackCounters) -> Option<usize> {
        let free = self.slots.iter().position(|s| s.state == State::Free);
        let victim = free
            .or_else(|| {
                self.slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| matches!(s.state, State::Discarding(_)))
                    .min_by_key(|(_, s)| s.deadline)
                    .map(|(i, _)| i)
            })
            .or_else(|| {
                self.slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.state == State::Assembling)
                    .min_by_key(|(_, s)| s.deadline)
                    .map(|(i, _)| i)
            })?;
        let s = &mut self.slots[victim];
        if s.state == State::Assembling {
            counters.drops[DropReason::FragmentEvicted.index()] += s.held;
        }
        s.state = State::Assembling;
        s.key = key;
        s.deadline = now + self.config.timeout;
        s.head_len = 0;
        s.total = None;
        s.received = 0;
        s.max_end = 0;
        s.held = 0;
        s.max_fragment = 0;
        s.blocks.fill(0);
        Some(victim)
    }

    /// Gives up slot `i`'s datagram for `reason`: its held fragments and this one are counted under it, and
    /// later fragments of it are dropped under it until its deadline.
    fn discard(&mut self, i: usize, reason: DropReason, counters: &mut StackCounters) -> Outcome {
        let s = &mut self.slots[i];
        counters.drops[reason.index()] += s.held;
        s.held = 0;
        s.state = State::Discarding(reason);
        Outcome::Drop(reason)
    }
}

/// Writes into `buf` the headers `head` (Ethernet + IPv4) for a fragment carrying `len` payload bytes at
/// payload offset `offset` (already in place after the headers); returns the frame length.
fn write_fragment(buf: &mut [u8], head: &[u8], offset: usize, len: usize, more: bool) -> usize {
    let head_len = head.len();
    buf[..head_len].copy_from_slice(head);
    let hl = head_len - ETH_HEADER_LEN;
    let ip = &mut buf[ETH_HEADER_LEN..head_len + len];
    ip[2..4].copy_from_slice(&((hl + len) as u16).to_be_bytes());
    let flags_frag = ((offset / 8) as u16) | if more { 0x2000 } else { 0 };
    ip[6..8].copy_from_slice(&flags_frag.to_be_bytes());
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&ip[..hl]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    head_len + len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::{Link, LocalConfig, LocalStack, DEFAULT_ICMP_RATE};
    use crate::neighbour::NeighbourConfig;
    use crate::pipeline::{Frame, Pipeline, Verdict};
    use crate::testutil::*;
    use crate::wire::{Icmpv4Packet, Ipv4Packet};

    fn stack() -> LocalStack {
        LocalStack::new(LocalConfig {
            links: vec![Link {
                mac: XLB_MAC,
                addresses: vec!["198.18.0.10/24".parse().unwrap()],
                gateway: None,
            }],
            neighbours: NeighbourConfig::default(),
            icmp_rate: DEFAULT_ICMP_RATE,
        })
    }

    /// Cuts the IPv4 packet of `frame` into fragments of `step` payload bytes (a multiple of 8), in order.
    fn fragments(frame: &[u8], step: usize) -> Vec<Vec<u8>> {
        let head = &frame[..ETH_HEADER_LEN + 20];
        let payload = &frame[ETH_HEADER_LEN + 20..];
        payload
            .chunks(step)
            .enumerate()
            .map(|(i, chunk)| piece(head, i * step, chunk, (i + 1) * step < payload.len()))
            .collect()
    }

    /// One fragment with `chunk` at payload `offset`.
    fn piece(head: &[u8], offset: usize, chunk: &[u8], more: bool) -> Vec<u8> {
        let mut f = head.to_vec();
        f.extend_from_slice(chunk);
        let ip = &mut f[ETH_HEADER_LEN..];
        ip[2..4].copy_from_slice(&((20 + chunk.len()) as u16).to_be_bytes());
        let ff = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        ip[6..8].copy_from_slice(&ff.to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f
    }

    /// Runs a frame through the stack in a UMEM-sized buffer.
    fn run(s: &mut LocalStack, now: Instant, packet: &[u8]) -> (Verdict, Vec<u8>) {
        let mut buf = vec![0u8; DEFAULT_MAX_FRAME];
        buf[..packet.len()].copy_from_slice(packet);
        let mut frame = Frame::new(&mut buf, packet.len());
        let v = s.process(now, 0, &mut frame);
        let len = frame.len();
        (v, buf[..len].to_vec())
    }

    fn drops(s: &LocalStack, r: DropReason) -> u64 {
        s.counters().drops_of(r)
    }

    /// Reassembles the fragments `out` (as a receiver would) and returns the IPv4 packet.
    fn reassemble(out: &[Vec<u8>]) -> Vec<u8> {
        let mut payload = vec![];
        let mut head = vec![];
        for (i, f) in out.iter().enumerate() {
            let ip = Ipv4Packet::new_checked(&f[ETH_HEADER_LEN..]).expect("IPv4");
            assert!(ip.verify_checksum(), "fragment {i} header checksum");
            assert_eq!(usize::from(ip.frag_offset()), payload.len(), "fragment {i} in order");
            assert_eq!(ip.more_frags(), i + 1 < out.len(), "fragment {i} MF flag");
            if i == 0 {
                head = f[ETH_HEADER_LEN..ETH_HEADER_LEN + 20].to_vec();
            }
            payload.extend_from_slice(ip.payload());
        }
        let mut p = head;
        p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p[6..8].copy_from_slice(&[0, 0]);
        p.extend_from_slice(&payload);
        p
    }

    #[test]
    fn a_fragmented_ping_is_answered_in_fragments_no_larger_than_it_came_in() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let request = echo_request_frame(XLB_IP, 7, 1, &data);
        // In order, reversed and shuffled: the answer is the same.
        let frags = fragments(&request, 1480);
        assert_eq!(frags.len(), 3);
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let mut s = stack();
            let now = Instant::now();
            let mut verdicts = vec![];
            let mut first = vec![];
            for i in order {
                let (v, out) = run(&mut s, now, &frags[i]);
                verdicts.push(v);
                first = out;
            }
            assert_eq!(verdicts[..2], [Verdict::Consumed, Verdict::Consumed], "held");
            assert_eq!(verdicts[2], Verdict::Transmit(0));
            let mut out = vec![first];
            let mut buf = vec![0u8; DEFAULT_MAX_FRAME];
            while let Some((port, len)) = s.poll_transmit(now, &mut buf) {
                assert_eq!(port, 0);
                out.push(buf[..len].to_vec());
            }
            assert_eq!(out.len(), 3, "re-fragmented as it came: {order:?}");
            for f in &out {
                assert!(
                    f.len() <= frags[0].len(),
                    "no fragment larger than the largest received"
                );
                assert_eq!(&f[0..6], &CLIENT_MAC.0);
            }
            let reply = reassemble(&out);
            let ip = Ipv4Packet::new_checked(&reply[..]).unwrap();
            assert_eq!((ip.src_addr(), ip.dst_addr()), (XLB_IP, CLIENT_IP));
            let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
            assert!(
                icmp.verify_checksum(),
                "the reply's ICMP checksum covers the whole datagram"
            );
            assert_eq!(icmp.msg_type(), crate::wire::Icmpv4Message::EchoReply);
            assert_eq!(icmp.data(), &data[..]);
            assert_eq!(s.counters().reassembled, 1);
            assert_eq!(s.counters().icmp_echo_replies, 1);
            assert_eq!(s.frags.in_use(), 0, "the slot is free once the answer is sent");
        }
    }

    #[test]
    fn an_overlapping_fragment_discards_the_whole_datagram() {
        let mut s = stack();
        let now = Instant::now();
        let request = echo_request_frame(XLB_IP, 7, 1, &[1; 2000]);
        let frags = fragments(&request, 1000);
        assert_eq!(run(&mut s, now, &frags[0]).0, Verdict::Consumed);
        // Bytes 992.. again (an overlap that would rewrite held data): the datagram goes.
        let head = &request[..ETH_HEADER_LEN + 20];
        let overlap = piece(
            head,
            992,
            &request[ETH_HEADER_LEN + 20 + 992..ETH_HEADER_LEN + 20 + 1000],
            true,
        );
        assert_eq!(run(&mut s, now, &overlap).0, Verdict::Drop(DropReason::FragmentOverlap));
        assert_eq!(
            drops(&s, DropReason::FragmentOverlap),
            2,
            "the held fragment and the overlapping one"
        );
        // The rest of it is dropped under the same reason, and nothing is answered.
        for f in &frags[1..] {
            assert_eq!(run(&mut s, now, f).0, Verdict::Drop(DropReason::FragmentOverlap));
        }
        assert_eq!(s.counters().reassembled, 0);
        // An exact repeat counts as an overlap too.
        let mut s = stack();
        assert_eq!(run(&mut s, now, &frags[0]).0, Verdict::Consumed);
        assert_eq!(
            run(&mut s, now, &frags[0]).0,
            Verdict::Drop(DropReason::FragmentOverlap)
        );
    }

    #[test]
    fn tiny_first_fragments_and_impossible_ones_are_refused() {
        let now = Instant::now();
        // A TCP first fragment of 8 bytes: ports but no flags (RFC 1858).
        let syn = tcp_frame(80, 1, 0, 0x02, &[0; 40]);
        let frags = fragments(&syn, 8);
        let mut s = stack();
        assert_eq!(run(&mut s, now, &frags[0]).0, Verdict::Drop(DropReason::FragmentTiny));
        assert_eq!(run(&mut s, now, &frags[1]).0, Verdict::Drop(DropReason::FragmentTiny));
        // UDP's 8-byte header fits in 8 bytes: that one is held.
        let dgram = udp_frame(53, &[0; 40]);
        assert_eq!(run(&mut s, now, &fragments(&dgram, 8)[0]).0, Verdict::Consumed);
        let head = &dgram[..ETH_HEADER_LEN + 20];
        // Ping of death: an end past 65535.
        let pod = piece(head, 65528, &[0; 16], false);
        assert_eq!(run(&mut s, now, &pod).0, Verdict::Drop(DropReason::FragmentInvalid));
        // A middle piece of 12 bytes.
        assert_eq!(
            run(&mut s, now, &piece(head, 16, &[0; 12], true)).0,
            Verdict::Drop(DropReason::FragmentInvalid)
        );
        // A datagram larger than a frame: all its fragments dropped.
        let mut s = stack();
        let big = udp_frame(53, &[0; 5000]);
        let frags = fragments(&big, 1480);
        assert_eq!(run(&mut s, now, &frags[0]).0, Verdict::Consumed);
        assert_eq!(run(&mut s, now, &frags[1]).0, Verdict::Consumed);
        assert_eq!(run(&mut s, now, &frags[2]).0, Verdict::Drop(DropReason::FragmentTooBig));
        assert_eq!(run(&mut s, now, &frags[3]).0, Verdict::Drop(DropReason::FragmentTooBig));
        assert_eq!(drops(&s, DropReason::FragmentTooBig), 4);
    }

    #[test]
    fn incomplete_datagrams_time_out_and_the_oldest_gives_way_when_slots_run_out() {
        let mut s = stack();
        let t0 = Instant::now();
        let request = echo_request_frame(XLB_IP, 7, 1, &[1; 2000]);
        let first = fragments(&request, 1008)[0].clone();
        assert_eq!(run(&mut s, t0, &first).0, Verdict::Consumed);
        assert_eq!(s.poll_timeout(), Some(t0 + REASSEMBLY_TIMEOUT));
        s.handle_timeout(t0 + REASSEMBLY_TIMEOUT);
        assert_eq!(drops(&s, DropReason::FragmentTimeout), 1);
        assert_eq!(s.frags.in_use(), 0);

        // Every slot held by a first fragment of its own datagram (another identification each).
        let with_id = |id: u16| {
            let mut f = first.clone();
            f[ETH_HEADER_LEN + 4..ETH_HEADER_LEN + 6].copy_from_slice(&id.to_be_bytes());
            let ip = &mut f[ETH_HEADER_LEN..];
            ip[10..12].copy_from_slice(&[0, 0]);
            let c = checksum::checksum(&ip[..20]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f
        };
        for id in 0..DEFAULT_SLOTS as u16 {
            let t = t0 + REASSEMBLY_TIMEOUT + Duration::from_millis(u64::from(id));
            assert_eq!(run(&mut s, t, &with_id(id)).0, Verdict::Consumed);
        }
        assert_eq!(s.frags.in_use(), DEFAULT_SLOTS);
        let later = t0 + REASSEMBLY_TIMEOUT + Duration::from_secs(1);
        assert_eq!(run(&mut s, later, &with_id(9999)).0, Verdict::Consumed);
        assert_eq!(drops(&s, DropReason::FragmentEvicted), 1, "the oldest one gave way");
        // Datagram 1 is still there and completes.
        let second_of = |id: u16| {
            let mut f = fragments(&request, 1008)[1].clone();
            f[ETH_HEADER_LEN + 4..ETH_HEADER_LEN + 6].copy_from_slice(&id.to_be_bytes());
            let ip = &mut f[ETH_HEADER_LEN..];
            ip[10..12].copy_from_slice(&[0, 0]);
            let c = checksum::checksum(&ip[..20]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f
        };
        assert_eq!(run(&mut s, later, &second_of(1)).0, Verdict::Transmit(0));
        assert_eq!(s.counters().reassembled, 1);
        let mut buf = vec![0u8; DEFAULT_MAX_FRAME];
        assert!(
            s.poll_transmit(later, &mut buf).is_some(),
            "the answer's second fragment"
        );
        assert!(s.poll_transmit(later, &mut buf).is_none());
        // Datagram 0 is gone: its second fragment starts a datagram of its own (in the slot datagram 1 left).
        assert_eq!(run(&mut s, later, &second_of(0)).0, Verdict::Consumed);
        assert_eq!(drops(&s, DropReason::FragmentEvicted), 1);
        assert_eq!(s.counters().reassembled, 1);
    }
}
