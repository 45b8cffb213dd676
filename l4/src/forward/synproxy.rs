//! SYN flood defence for FULLNAT TCP listeners: a SYN proxy with SYN cookies, as DPVS's synproxy and Linux's
//! `tcp_syncookies` do it.
//!
//! Under the defence a client's SYN is answered by xlb itself with a SYN-ACK whose sequence number is a cookie
//! (a keyed hash of the 4-tuple, the client's ISN and a time counter, plus the index of the client's MSS), and
//! nothing is kept: no connection entry, no local port, no server. A client that completes the handshake sends
//! an ACK acknowledging cookie + 1; the cookie is checked ([`SynCookies::check`]) and only then is the flow
//! scheduled, a local port taken and a SYN sent to the server with the client's own ISN and MSS. The server's
//! SYN-ACK is answered by xlb (the client already has its handshake); from then on the server's sequence
//! numbers are shifted by `cookie − server ISN` towards the client, and the client's acknowledgements back
//! ([`translate_to_client`], [`translate_to_server`]), with incremental checksum updates.
//!
//! Options: the SYN-ACK carries an MSS (from a table of four, as Linux's cookies) and, if the client's SYN
//! offered timestamps, a timestamp option with TSval 0 echoing the client's TSval. Timestamps then run end to
//! end, untranslated: the SYN to the server carries the client's TSval from its ACK, so the server negotiates
//! them with the client's clock, and the client takes the server's TSvals as they come, because a peer whose
//! last TSval was 0 is exempt from PAWS (Linux's `tcp_paws_check`, tested with kernel clients in
//! `tests/synflood.rs`; FreeBSD's `ts_recent` test skips 0 too; some stacks send 0 in their SYN-ACK). Timestamps are what let a client reuse a TIME_WAIT port for a new connection
//! (`tcp_tw_reuse`) and what guards its sequence space with PAWS, so a busy client keeps them under the proxy.
//! Window scaling and SACK are still not negotiated on proxied connections: the server's scale is not known
//! when the cookie is made (the SYN to the server offers neither, so both ends agree). A server with timestamps
//! off leaves them one-way (the client's segments carry them, the server's do not): Linux clients accept that.
//! The first segment
//! with data the client sends before the server's SYN-ACK reaches xlb (with its ACK or just after) is held and
//! sent with the server's handshake ([`HeldSegments`]); further ones are dropped (`syn_proxy_pending`) and
//! retransmitted by the client.
//!
//! A cookie is `period (8 bits) | hash (22 bits) | MSS index (2 bits)`: the hash is SipHash-2-4 of the 4-tuple,
//! the client's ISN, the period and the MSS index under the period's key, so a forged ACK passes with
//! probability 2^-22. Periods are 64 s; each period's key is random and rotated when the period ends, and a
//! cookie is valid during its period and the next (64-128 s).

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use xlb_stack::wire::build;
use xlb_stack::wire::build::ETHERTYPE_IPV4;
use xlb_stack::wire::checksum::{self, update32};
use xlb_stack::wire::tcp::field;
use xlb_stack::wire::{
    EthernetAddress, PacketSummary, Protocol, TcpFlags, TcpHeader, ETH_HEADER_LEN, IPV4_HEADER_LEN, TCP_HEADER_LEN,
};

use crate::conn::{ConnId, FlowKey};

/// Length of a cookie period.
pub const COOKIE_PERIOD: Duration = Duration::from_secs(64);
/// MSS values a cookie can carry (Linux's `msstab`): the largest not above the client's is used.
pub const MSS_TABLE: [u16; 4] = [536, 1300, 1440, 1460];
/// TCP window xlb advertises in its SYN-ACK and its ACK to the server (no window scaling under the proxy).
const WINDOW: u16 = 65_535;
/// TCP option kinds the proxy reads or writes (RFC 9293, RFC 7323): end of list, no-operation, MSS, timestamps.
const OPTION_END: u8 = 0;
const OPTION_NOP: u8 = 1;
const OPTION_MSS: u8 = 2;
const OPTION_TIMESTAMPS: u8 = 8;
/// Length of the MSS option.
const MSS_OPTION_LEN: usize = 4;
/// Length of the timestamps option.
const TIMESTAMPS_OPTION_LEN: usize = 10;
/// The timestamps option as written: two NOPs to align it, then kind, length, TSval, TSecr.
const TIMESTAMPS_SPACE: usize = 2 + TIMESTAMPS_OPTION_LEN;

/// Why an ACK's cookie was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieError {
    /// Made in a period that is over (or never made: the counter matches neither this period nor the last).
    Expired,
    /// The hash does not match: forged, or for another flow.
    Invalid,
}

/// Cookie secrets of one worker (SYN and ACK of a flow reach the same worker: they hash alike).
pub struct SynCookies {
    epoch: Instant,
    /// (period, key) of the current and the previous period.
    keys: [(u32, [u64; 2]); 2],
    random: ahash::RandomState,
    draws: u64,
}

impl SynCookies {
    /// New secrets, periods counted from `now`.
    pub fn new(now: Instant) -> SynCookies {
        let mut c = SynCookies {
            epoch: now,
            keys: [(0, [0; 2]); 2],
            random: ahash::RandomState::new(),
            draws: 0,
        };
        c.keys = [(0, c.fresh_key()), (u32::MAX, c.fresh_key())];
        c
    }

    fn fresh_key(&mut self) -> [u64; 2] {
        self.draws += 1;
        let a = self.random.hash_one(self.draws);
        self.draws += 1;
        [a, self.random.hash_one(self.draws)]
    }

    fn period(&self, now: Instant) -> u32 {
        (now.saturating_duration_since(self.epoch).as_secs() / COOKIE_PERIOD.as_secs()) as u32
    }

    /// Moves the keys on to `now`'s period: the current key becomes the previous one, a new one is drawn.
    fn rotate(&mut self, now: Instant) -> u32 {
        let p = self.period(now);
        if self.keys[0].0 != p {
            self.keys[1] = if self.keys[0].0.wrapping_add(1) == p {
                self.keys[0]
            } else {
                (p.wrapping_sub(1), self.fresh_key())
            };
            self.keys[0] = (p, self.fresh_key());
        }
        p
    }

    fn hash(key: [u64; 2], client: SocketAddrV4, vip: SocketAddrV4, isn: u32, period: u32, index: u32) -> u32 {
        let mut m = [0u8; 21];
        m[20] = index as u8;
        m[0..4].copy_from_slice(&client.ip().octets());
        m[4..6].copy_from_slice(&client.port().to_be_bytes());
        m[6..10].copy_from_slice(&vip.ip().octets());
        m[10..12].copy_from_slice(&vip.port().to_be_bytes());
        m[12..16].copy_from_slice(&isn.to_be_bytes());
        m[16..20].copy_from_slice(&period.to_be_bytes());
        siphash24(key, &m) as u32
    }

    /// The cookie ISN for a SYN from `client` to `vip` with sequence number `isn` and MSS option `mss` (`None`:
    /// none, 536 by RFC 9293), and the MSS it encodes.
    pub fn make(
        &mut self,
        now: Instant,
        client: SocketAddrV4,
        vip: SocketAddrV4,
        isn: u32,
        mss: Option<u16>,
    ) -> (u32, u16) {
        let p = self.rotate(now);
        let mss = mss.unwrap_or(536);
        let index = MSS_TABLE.iter().rposition(|&m| m <= mss).unwrap_or(0);
        let h = Self::hash(self.keys[0].1, client, vip, isn, p, index as u32);
        let cookie = (p & 0xff) << 24 | (h & 0x3f_ffff) << 2 | index as u32;
        (cookie, MSS_TABLE[index])
    }

    /// Checks the cookie an ACK acknowledges (its ack number − 1), for the client's ISN (its sequence number
    /// − 1); returns the MSS it encodes.
    pub fn check(
        &mut self,
        now: Instant,
        client: SocketAddrV4,
        vip: SocketAddrV4,
        isn: u32,
        cookie: u32,
    ) -> Result<u16, CookieError> {
        self.rotate(now);
        let &(period, key) = self
            .keys
            .iter()
            .find(|(p, _)| p & 0xff == cookie >> 24)
            .ok_or(CookieError::Expired)?;
        let h = Self::hash(key, client, vip, isn, period, cookie & 3);
        if (cookie >> 2) & 0x3f_ffff != h & 0x3f_ffff {
            return Err(CookieError::Invalid);
        }
        Ok(MSS_TABLE[(cookie & 3) as usize])
    }
}

/// SipHash-2-4 of `m` under `key` (the keyed PRF of the cookies; the same as Linux's `siphash`).
pub fn siphash24(key: [u64; 2], m: &[u8]) -> u64 {
    let mut v = [
        key[0] ^ 0x736f_6d65_7073_6575,
        key[1] ^ 0x646f_7261_6e64_6f6d,
        key[0] ^ 0x6c79_6765_6e65_7261,
        key[1] ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let compress = |w: u64, v: &mut [u64; 4]| {
        v[3] ^= w;
        round(v);
        round(v);
        v[0] ^= w;
    };
    let chunks = m.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        compress(u64::from_le_bytes(c.try_into().unwrap()), &mut v);
    }
    let mut last = [0u8; 8];
    last[..tail.len()].copy_from_slice(tail);
    last[7] = m.len() as u8;
    compress(u64::from_le_bytes(last), &mut v);
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// The MSS option of a TCP header (`tcp` from the TCP header on, options included), if present.
pub fn mss_option(tcp: &[u8]) -> Option<u16> {
    let v = option(tcp, OPTION_MSS, MSS_OPTION_LEN)?;
    Some(u16::from_be_bytes([v[0], v[1]]))
}

/// The timestamps option of a TCP header (`tcp` from the TCP header on), if present: (TSval, TSecr).
pub fn timestamps_option(tcp: &[u8]) -> Option<(u32, u32)> {
    let v = option(tcp, OPTION_TIMESTAMPS, TIMESTAMPS_OPTION_LEN)?;
    Some((
        u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
        u32::from_be_bytes([v[4], v[5], v[6], v[7]]),
    ))
}

/// The value of the first option `kind` of length `len` (kind and length bytes included) in a TCP header;
/// `None` if it is absent or the options are malformed before it.
fn option(tcp: &[u8], kind: u8, len: usize) -> Option<&[u8]> {
    let end = TcpHeader::new_unchecked(tcp).header_len().min(tcp.len());
    let mut i = TCP_HEADER_LEN;
    while i < end {
        match tcp[i] {
            OPTION_END => return None,
            OPTION_NOP => i += 1,
            k => {
                let n = usize::from(*tcp.get(i + 1)?);
                if n < 2 || i + n > end {
                    return None;
                }
                if k == kind && n == len {
                    return Some(&tcp[i + 2..i + n]);
                }
                i += n;
            }
        }
    }
    None
}

/// The fields of a TCP segment the proxy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Flags.
    pub flags: TcpFlags,
    /// Window field.
    pub window: u16,
}

impl Segment {
    /// The segment of the TCP header at `l4` in `frame`.
    pub fn of(frame: &[u8], l4: usize) -> Segment {
        let t = TcpHeader::new_unchecked(&frame[l4..]);
        Segment {
            seq: t.seq(),
            ack: t.ack_number(),
            flags: t.flags(),
            window: t.window(),
        }
    }
}

/// A TCP segment to build: from `src` to `dst`, with an MSS option if `mss` is set and a timestamps option
/// (TSval, TSecr) if `timestamps` is.
struct Build {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    seq: u32,
    ack: u32,
    flags: TcpFlags,
    window: u16,
    mss: Option<u16>,
    timestamps: Option<(u32, u32)>,
}

/// Writes `b` as an Ethernet/IPv4/TCP frame into `buf` (Ethernet addresses as given); returns its length.
fn write(buf: &mut [u8], eth_dst: EthernetAddress, eth_src: EthernetAddress, b: &Build) -> usize {
    let tcp_len = TCP_HEADER_LEN
        + if b.mss.is_some() { MSS_OPTION_LEN } else { 0 }
        + if b.timestamps.is_some() { TIMESTAMPS_SPACE } else { 0 };
    build::ethernet(buf, eth_dst, eth_src, ETHERTYPE_IPV4);
    build::ipv4_header(
        &mut buf[ETH_HEADER_LEN..],
        *b.src.ip(),
        *b.dst.ip(),
        Protocol::TCP,
        tcp_len,
        build::DEFAULT_TTL,
    );
    let t = &mut buf[ETH_HEADER_LEN + IPV4_HEADER_LEN..ETH_HEADER_LEN + IPV4_HEADER_LEN + tcp_len];
    t[field::SRC_PORT].copy_from_slice(&b.src.port().to_be_bytes());
    t[field::DST_PORT].copy_from_slice(&b.dst.port().to_be_bytes());
    t[field::SEQ].copy_from_slice(&b.seq.to_be_bytes());
    t[field::ACK].copy_from_slice(&b.ack.to_be_bytes());
    t[field::DATA_OFFSET] = ((tcp_len / 4) as u8) << 4;
    t[field::FLAGS] = b.flags.bits();
    t[field::WINDOW].copy_from_slice(&b.window.to_be_bytes());
    t[field::CHECKSUM.start..TCP_HEADER_LEN].copy_from_slice(&[0; 4]); // checksum, urgent pointer
    let mut at = TCP_HEADER_LEN;
    if let Some(mss) = b.mss {
        t[at..at + MSS_OPTION_LEN].copy_from_slice(&[OPTION_MSS, MSS_OPTION_LEN as u8, (mss >> 8) as u8, mss as u8]);
        at += MSS_OPTION_LEN;
    }
    if let Some((tsval, tsecr)) = b.timestamps {
        t[at..at + 4].copy_from_slice(&[OPTION_NOP, OPTION_NOP, OPTION_TIMESTAMPS, TIMESTAMPS_OPTION_LEN as u8]);
        t[at + 4..at + 8].copy_from_slice(&tsval.to_be_bytes());
        t[at + 8..at + 12].copy_from_slice(&tsecr.to_be_bytes());
    }
    let c = checksum::l4_checksum(b.src.ip().octets(), b.dst.ip().octets(), Protocol::TCP, t);
    t[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    ETH_HEADER_LEN + IPV4_HEADER_LEN + tcp_len
}

/// Rewrites a client's SYN (in `buf`, `len` bytes, TCP header at `l4`) into the SYN-ACK with `cookie` and `mss`
/// that answers it, from the VIP, to the MAC it came from, sent from `our_mac`; with timestamps (TSval 0, see
/// the module documentation) if the SYN offered them. Returns the new length.
pub fn answer_syn(buf: &mut [u8], l4: usize, our_mac: EthernetAddress, cookie: u32, mss: u16) -> usize {
    let peer_mac = EthernetAddress::from_bytes(&buf[6..12]);
    let (client, vip) = super::nat::endpoints(buf, l4);
    let syn = Segment::of(buf, l4);
    let b = Build {
        src: vip,
        dst: client,
        seq: cookie,
        ack: syn.seq.wrapping_add(1),
        flags: TcpFlags::SYN_ACK,
        window: WINDOW,
        mss: Some(mss),
        timestamps: timestamps_option(&buf[l4..]).map(|(tsval, _)| (0, tsval)),
    };
    write(buf, peer_mac, our_mac, &b)
}

/// Rewrites a client's ACK that carried a valid cookie into the SYN that opens the server's connection: from
/// `local` to `backend`, with the client's ISN and window, the cookie's MSS and the client's TSval if it uses
/// timestamps. Ethernet addresses are left to the neighbour lookup. Returns the new length.
pub fn syn_to_server(buf: &mut [u8], l4: usize, local: SocketAddrV4, backend: SocketAddrV4, mss: u16) -> usize {
    let ack = Segment::of(buf, l4);
    let b = Build {
        src: local,
        dst: backend,
        seq: ack.seq.wrapping_sub(1),
        ack: 0,
        flags: TcpFlags::SYN,
        window: ack.window,
        mss: Some(mss),
        timestamps: timestamps_option(&buf[l4..]).map(|(tsval, _)| (tsval, 0)),
    };
    write(buf, EthernetAddress([0; 6]), EthernetAddress([0; 6]), &b)
}

/// Rewrites the server's SYN-ACK (TCP header at `l4`) into the ACK that completes the server's handshake: from
/// `local` to `backend`; with timestamps if the server uses them (the client's TSval it echoed, and its own).
/// Returns the new length.
pub fn ack_to_server(buf: &mut [u8], l4: usize, local: SocketAddrV4, backend: SocketAddrV4) -> usize {
    let synack = Segment::of(buf, l4);
    let b = Build {
        src: local,
        dst: backend,
        seq: synack.ack,
        ack: synack.seq.wrapping_add(1),
        flags: TcpFlags::ACK,
        window: WINDOW,
        mss: None,
        timestamps: timestamps_option(&buf[l4..]).map(|(tsval, tsecr)| (tsecr, tsval)),
    };
    write(buf, EthernetAddress([0; 6]), EthernetAddress([0; 6]), &b)
}

/// Rewrites a server's segment that does not answer the proxy's SYN into the RST that resets it (RFC 9293: a
/// segment acknowledging what was not sent gets `<SEQ=SEG.ACK><CTL=RST>`), from `local` to `backend`. Returns
/// the new length.
pub fn reset_to_server(buf: &mut [u8], l4: usize, local: SocketAddrV4, backend: SocketAddrV4) -> usize {
    let seg = Segment::of(buf, l4);
    let b = Build {
        src: local,
        dst: backend,
        seq: seg.ack,
        ack: 0,
        flags: TcpFlags::RST,
        window: 0,
        mss: None,
        timestamps: None,
    };
    write(buf, EthernetAddress([0; 6]), EthernetAddress([0; 6]), &b)
}

/// Server → client: adds `delta` to the sequence number of the TCP header at `l4`, checksum updated.
pub fn translate_to_client(frame: &mut [u8], l4: usize, delta: u32) {
    shift(frame, l4, field::SEQ.start, delta);
}

/// Client → server: takes `delta` from the acknowledgement number (if the ACK flag is set), checksum updated.
pub fn translate_to_server(frame: &mut [u8], l4: usize, delta: u32) {
    if TcpHeader::new_unchecked(&frame[l4..]).flags().ack() {
        shift(frame, l4, field::ACK.start, delta.wrapping_neg());
    }
}

fn shift(frame: &mut [u8], l4: usize, at: usize, delta: u32) {
    let t = &mut frame[l4..];
    let old = [t[at], t[at + 1], t[at + 2], t[at + 3]];
    let new = u32::from_be_bytes(old).wrapping_add(delta).to_be_bytes();
    t[at..at + 4].copy_from_slice(&new);
    let c = update32(TcpHeader::new_unchecked(&*t).checksum(), old, new);
    t[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
}

/// Most client segments held at once per worker ([`HeldSegments`]).
pub const HELD_MAX: usize = 1024;
/// Largest segment held (Ethernet frame length); longer ones are dropped and retransmitted by the client.
pub const HELD_FRAME_MAX: usize = 2048;

/// A client segment held for a SYN-proxied connection until the server's SYN-ACK.
pub struct Held {
    key: FlowKey,
    buf: Vec<u8>,
    /// Offset of the TCP header in `buf`.
    pub l4: usize,
}

impl Held {
    /// The frame as it arrived.
    pub fn frame(&self) -> &[u8] {
        &self.buf
    }
}

/// The first segment with data a client sends on a SYN-proxied connection before the server's SYN-ACK (with its
/// ACK, or right after it: the request of a client that speaks first) is held here, one per connection, and
/// sent in place of the bare ACK that completes the server's handshake, so the first request does not wait for
/// the client's retransmission. At most [`HELD_MAX`] are held per worker; what does not fit is dropped
/// (`syn_proxy_pending`) and retransmitted by the client.
#[derive(Default)]
pub struct HeldSegments {
    held: HashMap<ConnId, Held, ahash::RandomState>,
    spare: Vec<Vec<u8>>,
}

impl HeldSegments {
    /// Holds a copy of `frame` (TCP header at `l4`) for connection `id` of flow `key`; false if it cannot (one is
    /// held already, it is too long, or the store is full of live ones). `live` says whether an entry still
    /// waits for its server (held segments of entries that went are reclaimed when the store is full).
    pub fn hold(
        &mut self,
        id: ConnId,
        key: FlowKey,
        frame: &[u8],
        l4: usize,
        live: impl Fn(ConnId, &FlowKey) -> bool,
    ) -> bool {
        if frame.len() > HELD_FRAME_MAX || self.held.get(&id).is_some_and(|h| h.key == key) {
            return false;
        }
        if self.held.len() >= HELD_MAX {
            let spare = &mut self.spare;
            self.held.retain(|id, h| {
                let keep = live(*id, &h.key);
                if !keep {
                    spare.push(std::mem::take(&mut h.buf));
                }
                keep
            });
            if self.held.len() >= HELD_MAX {
                return false;
            }
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        if let Some(old) = self.held.insert(id, Held { key, buf, l4 }) {
            self.spare.push(old.buf); // a stale one of an earlier entry in the same slot
        }
        true
    }

    /// The segment held for connection `id` of flow `key`, if any.
    pub fn take(&mut self, id: ConnId, key: &FlowKey) -> Option<Held> {
        let h = self.held.remove(&id)?;
        if h.key == *key {
            Some(h)
        } else {
            self.spare.push(h.buf);
            None
        }
    }

    /// Returns a taken segment's buffer for reuse.
    pub fn recycle(&mut self, held: Held) {
        self.spare.push(held.buf);
    }

    /// Segments held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// Sequence space the TCP segment summarised by `ip` takes: its payload length (up to the IP total length, to
/// which the stack trimmed the frame: Ethernet padding is not payload), plus one for a FIN.
pub fn seq_len(ip: &PacketSummary) -> usize {
    ip.tcp.map_or(0, |t| {
        ip.l4_len().saturating_sub(t.header_len) + usize::from(t.flags.fin())
    })
}

/// The auto mode of one listener on one worker: whether its SYN proxy is on, and what decides it.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Whether SYNs are answered with cookies now.
    pub engaged: bool,
    /// When it was switched on.
    since: Option<Instant>,
    /// Start of the current one-second window.
    window_start: Option<Instant>,
    /// Cookies sent and validated before this window (counter values at its start).
    sent_at_start: u64,
    valid_at_start: u64,
    /// Cookies sent but not completed by a valid ACK in the last full window.
    pub unanswered_per_s: u64,
    /// When the last cookie was sent (ACKs without an entry are cookie-checked while cookies may be out).
    pub last_cookie: Option<Instant>,
}

/// Least time an automatically engaged proxy stays on.
pub const HOLD: Duration = Duration::from_secs(10);

/// What [`Guard::update`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Switched on.
    On,
    /// Switched off.
    Off,
}

impl Guard {
    /// Re-decides the auto mode at `now`: on when `half_open` exceeds `threshold` (the caller lowers it while the
    /// table or local ports are under pressure); off again once it has been on for [`HOLD`] and the cookies of
    /// the last second that no valid ACK answered, were they half-open entries living `syn_recv_s`, would stay
    /// below half the threshold.
    pub fn update(
        &mut self,
        now: Instant,
        half_open: u32,
        threshold: u32,
        syn_recv_s: u32,
        cookies_sent: u64,
        cookies_valid: u64,
    ) -> Option<Change> {
        let start = *self.window_start.get_or_insert(now);
        if now >= start + Duration::from_secs(1) {
            let sent = cookies_sent - self.sent_at_start;
            let valid = cookies_valid - self.valid_at_start;
            self.unanswered_per_s = sent.saturating_sub(valid);
            self.sent_at_start = cookies_sent;
            self.valid_at_start = cookies_valid;
            self.window_start = Some(now);
        }
        if !self.engaged {
            if half_open > threshold {
                self.engaged = true;
                self.since = Some(now);
                self.unanswered_per_s = 0;
                return Some(Change::On);
            }
            return None;
        }
        let held = self.since.is_some_and(|s| now >= s + HOLD);
        let quiet = self.unanswered_per_s * u64::from(syn_recv_s) < u64::from(threshold / 2);
        if held && quiet {
            self.engaged = false;
            self.since = None;
            return Some(Change::Off);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn sa(a: [u8; 4], p: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(a), p)
    }

    #[test]
    fn siphash_matches_the_reference_vector() {
        // The SipHash paper's test vector: key 00..0f, message 00..0e.
        let key = [
            u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]),
            u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]),
        ];
        let m: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(key, &m), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn a_cookie_round_trips_with_its_mss_and_nothing_else_passes() {
        let t0 = Instant::now();
        let mut c = SynCookies::new(t0);
        let (client, vip) = (sa([198, 18, 0, 1], 40000), sa([198, 18, 0, 100], 80));
        for (mss, expect) in [
            (Some(1460), 1460),
            (Some(1500), 1460),
            (Some(1400), 1300),
            (None, 536),
            (Some(100), 536),
        ] {
            let (cookie, used) = c.make(t0, client, vip, 1000, mss);
            assert_eq!(used, expect);
            assert_eq!(
                c.check(t0 + Duration::from_secs(1), client, vip, 1000, cookie),
                Ok(expect)
            );
            // Another client port, ISN or VIP, or a changed bit: refused.
            assert_eq!(
                c.check(t0, sa([198, 18, 0, 1], 40001), vip, 1000, cookie),
                Err(CookieError::Invalid)
            );
            assert_eq!(c.check(t0, client, vip, 1001, cookie), Err(CookieError::Invalid));
            assert_eq!(
                c.check(t0, client, sa([198, 18, 0, 100], 81), 1000, cookie),
                Err(CookieError::Invalid)
            );
            assert_eq!(
                c.check(t0, client, vip, 1000, cookie ^ 0x100),
                Err(CookieError::Invalid)
            );
        }
    }

    #[test]
    fn cookies_live_one_to_two_periods_across_key_rotation() {
        let t0 = Instant::now();
        let mut c = SynCookies::new(t0);
        let (client, vip) = (sa([198, 18, 0, 1], 40000), sa([198, 18, 0, 100], 80));
        let (cookie, _) = c.make(t0 + Duration::from_secs(63), client, vip, 7, Some(1460));
        // The next period rotates the key; the old one is still accepted.
        assert_eq!(c.check(t0 + Duration::from_secs(100), client, vip, 7, cookie), Ok(1460));
        assert_eq!(c.check(t0 + Duration::from_secs(127), client, vip, 7, cookie), Ok(1460));
        // Two periods on: expired.
        assert_eq!(
            c.check(t0 + Duration::from_secs(128), client, vip, 7, cookie),
            Err(CookieError::Expired)
        );
        // A new secrets instance (another worker, a restart) does not accept it.
        let mut other = SynCookies::new(t0);
        assert!(other
            .check(t0 + Duration::from_secs(63), client, vip, 7, cookie)
            .is_err());
    }

    #[test]
    fn random_acks_almost_never_pass() {
        let t0 = Instant::now();
        let mut c = SynCookies::new(t0);
        let vip = sa([198, 18, 0, 100], 80);
        let _ = c.make(t0, vip, vip, 0, None);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let passed = (0..200_000u32)
            .filter(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // The counter byte right (as an attacker can see it), the rest guessed.
                let cookie = x as u32 & 0x00ff_ffff;
                c.check(t0, sa([198, 18, 1, 1], *i as u16), vip, x as u32, cookie)
                    .is_ok()
            })
            .count();
        // 2^-22 per guess: 200 000 guesses pass about 0.05 times.
        assert!(passed <= 1, "{passed} forged cookies passed");
    }

    #[test]
    fn held_segments_are_one_per_connection_bounded_and_reclaimed_when_their_entry_went() {
        let mut h = HeldSegments::default();
        let key = |i: u16| FlowKey {
            proto: crate::conn::Proto::Tcp,
            src: sa([198, 18, 0, 1], i),
            dst: sa([198, 18, 0, 100], 80),
        };
        let frame = [7u8; 80];
        assert!(h.hold(1, key(1), &frame, 34, |_, _| true));
        assert!(!h.hold(1, key(1), &frame, 34, |_, _| true), "one per connection");
        assert!(
            !h.hold(2, key(2), &[0; HELD_FRAME_MAX + 1], 34, |_, _| true),
            "too long"
        );
        for i in 2..=HELD_MAX as u32 {
            assert!(h.hold(i, key(i as u16), &frame, 34, |_, _| true));
        }
        assert_eq!(h.len(), HELD_MAX);
        let big = HELD_MAX as u32 + 1;
        assert!(!h.hold(big, key(0), &frame, 34, |_, _| true), "full of live ones");
        // Entries 0..10 went (their slots may be reused): their segments make room.
        assert!(h.hold(big, key(0), &frame, 34, |id, _| id >= 10));
        assert_eq!(h.len(), HELD_MAX - 9 + 1);
        // A segment is given only to the flow it was held for.
        assert!(h.take(20, &key(21)).is_none());
        let held = h.take(21, &key(21)).unwrap();
        assert_eq!((held.frame(), held.l4), (&frame[..], 34));
        h.recycle(held);
    }

    #[test]
    fn mss_option_is_found_among_others() {
        let mut t = vec![0u8; 40];
        t[12] = 10 << 4;
        // NOP, NOP, SACK permitted, window scale, MSS 1400, end.
        t[20..33].copy_from_slice(&[1, 1, 4, 2, 3, 3, 7, 2, 4, 0x05, 0x78, 0, 0]);
        assert_eq!(mss_option(&t), Some(1400));
        t[12] = 5 << 4;
        assert_eq!(mss_option(&t), None, "options beyond the data offset are not read");
        let mut bad = vec![0u8; 24];
        bad[12] = 6 << 4;
        bad[20..24].copy_from_slice(&[2, 9, 0, 0]);
        assert_eq!(mss_option(&bad), None, "an option running past the header");
    }

    #[test]
    fn timestamps_option_is_found_among_others_and_written_back_aligned() {
        let mut t = vec![0u8; 40];
        t[12] = 10 << 4;
        // MSS 1460, SACK permitted, timestamps (TSval 0x01020304, TSecr 7), NOP, window scale 7.
        t[20..40].copy_from_slice(&[2, 4, 5, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 7, 1, 3, 3, 7]);
        assert_eq!(timestamps_option(&t), Some((0x0102_0304, 7)));
        assert_eq!(mss_option(&t), Some(1460));
        t[12] = 8 << 4;
        assert_eq!(timestamps_option(&t), None, "cut by the data offset");
        t[12] = 10 << 4;
        t[27] = 8;
        assert_eq!(
            timestamps_option(&t),
            None,
            "a timestamps option of the wrong length is not one"
        );

        // Written: MSS, then NOP NOP and the option, so TSval and TSecr sit on 32-bit boundaries.
        let mut buf = vec![0u8; 128];
        let b = Build {
            src: sa([198, 18, 0, 1], 1000),
            dst: sa([198, 18, 0, 2], 80),
            seq: 1,
            ack: 2,
            flags: TcpFlags::SYN_ACK,
            window: WINDOW,
            mss: Some(1300),
            timestamps: Some((0, 0xa0b0_c0d0)),
        };
        let len = write(&mut buf, EthernetAddress([2; 6]), EthernetAddress([4; 6]), &b);
        let tcp = &buf[ETH_HEADER_LEN + IPV4_HEADER_LEN..len];
        assert_eq!(tcp.len(), TCP_HEADER_LEN + 16);
        assert_eq!(&tcp[TCP_HEADER_LEN..TCP_HEADER_LEN + 8], &[2, 4, 5, 0x14, 1, 1, 8, 10]);
        assert_eq!(
            (mss_option(tcp), timestamps_option(tcp)),
            (Some(1300), Some((0, 0xa0b0_c0d0)))
        );
        let sum = checksum::l4_checksum([198, 18, 0, 1], [198, 18, 0, 2], Protocol::TCP, tcp);
        assert_eq!(sum, 0, "the checksum covers the options");
    }

    #[test]
    fn the_guard_switches_on_above_the_threshold_and_off_after_the_flood_with_hysteresis() {
        let t0 = Instant::now();
        let mut g = Guard::default();
        let s = |n| t0 + Duration::from_secs(n);
        assert_eq!(g.update(t0, 1000, 1000, 60, 0, 0), None, "at the threshold: off");
        assert_eq!(g.update(s(1), 1001, 1000, 60, 0, 0), Some(Change::On));
        // The flood goes on against cookies: half-open entries drain, the proxy stays on.
        let mut sent = 0;
        for t in 2..30 {
            sent += 50_000;
            assert_eq!(g.update(s(t), 0, 1000, 60, sent, 10), None, "second {t}");
        }
        // The flood stops: off after the first window without it (the hold time has long passed).
        assert_eq!(g.update(s(30), 0, 1000, 60, sent, 10), Some(Change::Off));
        assert!(!g.engaged);
        // A flood that would keep 500 half-open entries (10 a second for 60 s) keeps it on after the hold time;
        // legitimate handshakes (valid cookies) do not count.
        assert_eq!(g.update(s(40), 2000, 1000, 60, sent, 10), Some(Change::On));
        for t in 41..60 {
            sent += 1000 + 10;
            assert_eq!(
                g.update(s(t), 0, 1000, 60, sent, 10 + (t - 40) * 1000),
                None,
                "second {t}"
            );
        }
    }
}
