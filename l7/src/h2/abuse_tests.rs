//! [`H2Front`] against hand-built client frames: stream limits, Rapid Reset, oversized header lists,
//! CONTINUATION floods, garbage.

use std::time::Instant;

use ::h2::Reason;

use super::io::{FrameScanner, SeenFrame, GOAWAY, HEADERS, RST_STREAM};
use super::tests::{counts, request_of};
use super::*;
use crate::testutil::Rng;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an `n`-bit prefix (first byte's high bits in `high`).
fn hpack_int(high: u8, n: u32, mut v: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(high | v as u8);
        return;
    }
    out.push(high | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// `GET /` with `:authority: a` and extra literal fields (no indexing, no Huffman).
fn hpack_get(extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = vec![0x82, 0x86, 0x84, 0x01, 0x01, b'a'];
    for (name, value) in extra {
        out.push(0x00);
        hpack_int(0, 7, name.len(), &mut out);
        out.extend_from_slice(name.as_bytes());
        hpack_int(0, 7, value.len(), &mut out);
        out.extend_from_slice(value);
    }
    out
}

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;

/// A front fed raw client bytes; collects what it sends back as frames.
struct Raw {
    front: H2Front,
    now: Instant,
    scanner: FrameScanner,
    frames: Vec<SeenFrame>,
    events: Vec<H2Event>,
    out_bytes: usize,
}

impl Raw {
    fn new(limits: &H2Limits) -> Raw {
        let mut raw = Raw {
            front: H2Front::new(limits),
            now: Instant::now(),
            scanner: FrameScanner::default(),
            frames: Vec::new(),
            events: Vec::new(),
            out_bytes: 0,
        };
        let mut start = PREFACE.to_vec();
        start.extend(frame(0x4, 0, 0, &[]));
        raw.feed(&start);
        raw
    }

    /// Feeds everything (as the front takes it), draining output and events between offers.
    fn feed(&mut self, mut bytes: &[u8]) {
        loop {
            let n = self.front.handle_client_bytes(self.now, bytes);
            bytes = &bytes[n..];
            self.drain();
            if bytes.is_empty() || self.front.is_closed() {
                return;
            }
            assert!(n > 0, "front stalled");
        }
    }

    fn drain(&mut self) {
        while let Some(b) = self.front.poll_transmit(self.now) {
            self.out_bytes += b.len();
            let frames = &mut self.frames;
            self.scanner.scan(&b, &mut |f| frames.push(f));
        }
        while let Some(e) = self.front.poll_event(self.now) {
            self.events.push(e);
        }
    }

    fn goaway(&self) -> Option<(Reason, Vec<u8>)> {
        self.frames.iter().find(|f| f.kind == GOAWAY).map(|f| {
            let c = &f.payload[4..8];
            (
                Reason::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])),
                f.payload[8..].to_vec(),
            )
        })
    }

    fn resets(&self, reason: Reason) -> Vec<u32> {
        self.frames
            .iter()
            .filter(|f| f.kind == RST_STREAM && f.payload[..4] == u32::from(reason).to_be_bytes())
            .map(|f| f.stream)
            .collect()
    }
}

#[test]
fn streams_over_the_limit_are_refused() {
    let limits = H2Limits {
        max_concurrent_streams: 2,
        ..H2Limits::default()
    };
    let mut raw = Raw::new(&limits);
    let mut bytes = Vec::new();
    for id in [1u32, 3, 5, 7] {
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &hpack_get(&[])));
    }
    raw.feed(&bytes);
    let requests = raw
        .events
        .iter()
        .filter(|e| matches!(e, H2Event::Request { .. }))
        .count();
    assert_eq!(requests, 2);
    assert_eq!(raw.resets(Reason::REFUSED_STREAM), [5, 7]);
    assert_eq!(counts(&raw.events), [H2Count::TooManyStreams, H2Count::TooManyStreams]);
    assert!(!raw.front.is_closed());
}

#[test]
fn rapid_reset_before_accept_goes_away() {
    let mut raw = Raw::new(&H2Limits::default());
    let mut bytes = Vec::new();
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        bytes.extend(frame(HEADERS, END_HEADERS, id, &hpack_get(&[])));
        bytes.extend(frame(RST_STREAM, 0, id, &u32::from(Reason::CANCEL).to_be_bytes()));
    }
    raw.feed(&bytes);
    let (reason, debug) = raw.goaway().expect("GOAWAY");
    assert_eq!(
        (reason, debug.as_slice()),
        (Reason::ENHANCE_YOUR_CALM, &b"too_many_resets"[..])
    );
    assert_eq!(counts(&raw.events), [H2Count::RapidReset]);
    assert!(raw.front.is_closed());
}

#[test]
fn rapid_reset_of_accepted_streams_goes_away() {
    let limits = H2Limits::default();
    let mut raw = Raw::new(&limits);
    let mut requests = 0;
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        raw.feed(&frame(HEADERS, END_HEADERS, id, &hpack_get(&[])));
        raw.feed(&frame(RST_STREAM, 0, id, &u32::from(Reason::CANCEL).to_be_bytes()));
        if raw.front.is_closed() {
            break;
        }
        requests += 1;
    }
    assert_eq!(requests, limits.max_resets_per_second);
    let resets = raw.events.iter().filter(|e| matches!(e, H2Event::Reset { .. })).count();
    assert_eq!(resets as u32, limits.max_resets_per_second + 1);
    assert_eq!(raw.goaway().expect("GOAWAY").0, Reason::ENHANCE_YOUR_CALM);
    assert_eq!(counts(&raw.events), [H2Count::RapidReset]);
}

#[test]
fn oversized_header_list_is_431_and_counted() {
    let mut raw = Raw::new(&H2Limits::default());
    let big = vec![b'x'; 40 << 10];
    let block = hpack_get(&[("x-big", &big)]);
    let mut bytes = frame(HEADERS, END_STREAM, 1, &block[..16000]);
    bytes.extend(frame(CONTINUATION, 0, 1, &block[16000..32000]));
    bytes.extend(frame(CONTINUATION, END_HEADERS, 1, &block[32000..]));
    bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &hpack_get(&[])));
    raw.feed(&bytes);
    assert!(
        raw.frames.iter().any(|f| f.kind == HEADERS && f.stream == 1),
        "431 sent"
    );
    assert_eq!(counts(&raw.events), [H2Count::HeaderListTooLarge]);
    // The connection goes on: the next stream is served.
    assert_eq!(request_of(&raw.events).0, StreamRef(3));
    assert!(raw.goaway().is_none());
}

#[test]
fn continuation_flood_ends_the_connection() {
    let mut raw = Raw::new(&H2Limits::default());
    let block = hpack_get(&[]);
    raw.feed(&frame(HEADERS, END_STREAM, 1, &block[..3]));
    let one = frame(CONTINUATION, 0, 1, &[]);
    let mut fed = 0;
    for _ in 0..100_000 {
        raw.feed(&one);
        fed += 1;
        if raw.front.is_closed() {
            break;
        }
    }
    assert!(raw.front.is_closed(), "after {fed} frames");
    assert!(fed < 1000, "bounded: {fed}");
    let (reason, debug) = raw.goaway().expect("GOAWAY");
    assert_eq!(
        (reason, debug.as_slice()),
        (Reason::ENHANCE_YOUR_CALM, &b"too_many_continuations"[..])
    );
    assert_eq!(counts(&raw.events), [H2Count::ContinuationFlood]);
}

#[test]
fn garbage_is_a_connection_error_never_a_panic() {
    // A bad frame after the preface.
    let mut raw = Raw::new(&H2Limits::default());
    raw.feed(&frame(0x4, 0, 1, &[0; 6]));
    assert!(raw.front.is_closed());
    assert_eq!(raw.goaway().unwrap().0, Reason::PROTOCOL_ERROR);
    assert_eq!(counts(&raw.events), [H2Count::ClientProtocolError]);

    // A bad preface.
    let mut front = H2Front::new(&H2Limits::default());
    let now = Instant::now();
    front.handle_client_bytes(now, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\nmore");
    while front.poll_transmit(now).is_some() {}
    assert!(front.is_closed());
    assert!(std::iter::from_fn(|| front.poll_event(now)).any(|e| e == H2Count::ClientProtocolError.into()));

    // Random bytes after the preface and settings, in random pieces.
    let mut rng = Rng::new(99);
    for round in 0..300 {
        let mut raw = Raw::new(&H2Limits::default());
        let mut bytes = Vec::new();
        if round % 2 == 0 {
            bytes.extend(frame(HEADERS, END_HEADERS, 1, &hpack_get(&[])));
        }
        bytes.extend((0..rng.below(200) + 1).map(|_| rng.next() as u8));
        let mut at = 0;
        while at < bytes.len() && !raw.front.is_closed() {
            let end = (at + rng.below(20) + 1).min(bytes.len());
            raw.feed(&bytes[at..end]);
            at = end;
        }
        raw.front.handle_client_eof(raw.now);
        raw.drain();
        assert!(raw.front.is_closed(), "round {round}");
    }
}

#[test]
fn client_eof_closes_and_resets_streams() {
    let mut raw = Raw::new(&H2Limits::default());
    raw.feed(&frame(HEADERS, END_HEADERS, 1, &hpack_get(&[])));
    let (s, _) = request_of(&raw.events);
    raw.front.handle_client_eof(raw.now);
    raw.drain();
    assert!(raw.front.is_closed());
    assert!(raw.events.contains(&H2Event::Reset { stream: s }));
}

#[test]
fn malformed_requests_are_reset_then_the_connection_goes_away() {
    let limits = H2Limits {
        max_local_resets: 10,
        ..H2Limits::default()
    };
    let mut raw = Raw::new(&limits);
    for i in 0..100u32 {
        // A connection-specific field: malformed (RFC 9113 §8.2.2), refused by h2 itself.
        let block = hpack_get(&[("connection", b"keep-alive")]);
        raw.feed(&frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block));
        if raw.front.is_closed() {
            break;
        }
    }
    assert!(raw.front.is_closed());
    assert_eq!(raw.resets(Reason::PROTOCOL_ERROR).len(), 10);
    let (reason, debug) = raw.goaway().expect("GOAWAY");
    assert_eq!(
        (reason, debug.as_slice()),
        (Reason::ENHANCE_YOUR_CALM, &b"too_many_internal_resets"[..])
    );
    let mut want = vec![H2Count::MalformedRequest; 10];
    want.push(H2Count::TooManyErrorResets);
    assert_eq!(counts(&raw.events), want);
    assert!(!raw.events.iter().any(|e| matches!(e, H2Event::Request { .. })));
}
