//! `Upgrade: h2c` (RFC 7540 §3.2): an HTTP/1.1 request on a cleartext connection that asks to continue in
//! HTTP/2, answered `101 Switching Protocols` and then served as stream 1 of the new HTTP/2 connection.
//!
//! # How stream 1 reaches `h2`
//! The `h2` crate has no server API for an upgraded connection: it cannot be given a stream 1 opened by an
//! HTTP/1.1 request, nor the `HTTP2-Settings` payload. So the front rewrites the start of what the client sends
//! after the 101, before `h2` reads any of it. The client must first send the connection preface and a SETTINGS
//! frame (RFC 7540 §3.5); `h2` is given:
//! 1. the preface, as sent;
//! 2. that SETTINGS frame with the `HTTP2-Settings` entries put in front of the client's own. Entries of one
//!    frame are applied in order, so this is exactly "the upgrade's settings, then the client's", the order
//!    RFC 7540 §3.2.1 asks for, and `h2` acknowledges one frame, the one the client sent (the 101 itself
//!    acknowledges `HTTP2-Settings`: a second ACK would be unexpected by the client);
//! 3. a HEADERS frame for stream 1 carrying the upgraded request, END_STREAM (only requests without a body are
//!    upgraded) and END_HEADERS. Its header block uses HPACK literals without indexing only, so it leaves the
//!    decoder's dynamic table as the client's encoder assumes it is (empty): the client's later header blocks
//!    decode as sent. Stream 1 is then, for `h2` as for the client, half-closed (remote);
//! 4. everything else, as sent.
//!
//! If the client does not start with the preface and a well-formed SETTINGS frame, its bytes are given to `h2`
//! unchanged, which ends the connection with a protocol error as it would any other.
//!
//! # What is upgraded
//! The first request of a connection, HTTP/1.1, with `Upgrade` listing `h2c`, exactly one well-formed
//! `HTTP2-Settings` and `Connection` listing both, no body, no `Expect`, an origin-form target, and fields that
//! are valid HTTP/2 fields. Anything else is served over HTTP/1.1 with the `Upgrade` ignored, as RFC 9110 §7.8
//! allows (the proxy never forwards `Upgrade: h2c`).

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use http::header::{HeaderName, HeaderValue};

use crate::http1::request::RequestHead;
use crate::http1::{has_token, list_elements, BodyFraming, Version};

use super::PREFACE;

/// The answer to an upgraded request, before the first HTTP/2 frame.
pub const SWITCHING_PROTOCOLS: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";

/// Most `HTTP2-Settings` entries taken (more: not upgraded).
const MAX_SETTINGS: usize = 32;
/// The largest frame a client may send before it knows the server's settings (RFC 9113 §4.2).
const DEFAULT_MAX_FRAME: usize = 16 << 10;

/// An accepted `Upgrade: h2c` request, ready to be spliced into the client's first HTTP/2 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2cUpgrade {
    /// The decoded `HTTP2-Settings` payload (SETTINGS entries, 6 bytes each).
    settings: Vec<u8>,
    /// The HEADERS frame of stream 1 (the request).
    headers: Vec<u8>,
}

/// Frame header layout (RFC 9113 §4.1): length (24 bits), type, flags, stream id (31 bits).
pub(crate) fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

/// HPACK integer with an `prefix`-bit prefix (RFC 7541 §5.1), `flags` in the bits above it.
fn hpack_int(out: &mut Vec<u8>, flags: u8, prefix: u8, mut n: usize) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(flags | n as u8);
        return;
    }
    out.push(flags | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// A field as "Literal Header Field without Indexing — New Name" (RFC 7541 §6.2.2), strings not Huffman-coded.
pub(crate) fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_int(out, 0x00, 7, name.len());
    out.extend_from_slice(name);
    hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

/// Connection-specific fields of an HTTP/1.1 request, never carried into HTTP/2 (RFC 9113 §8.2.2).
fn connection_specific(name: &str) -> bool {
    [
        "connection",
        "upgrade",
        "http2-settings",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "host",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Validates one SETTINGS entry's value (RFC 9113 §6.5.2): ENABLE_PUSH, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE.
fn setting_ok(entry: &[u8]) -> bool {
    let id = u16::from_be_bytes([entry[0], entry[1]]);
    let v = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
    match id {
        0x2 => v <= 1,
        0x4 => v <= i32::MAX as u32,
        0x5 => (16 << 10..=(16 << 20) - 1).contains(&v),
        _ => true,
    }
}

/// The request as an h2c upgrade, if it is one this front takes up (see the module docs).
pub fn h2c_upgrade(req: &RequestHead) -> Option<H2cUpgrade> {
    let h = &req.headers;
    if req.version != Version::Http11
        || !has_token(h, "upgrade", "h2c")
        || !has_token(h, "connection", "upgrade")
        || !has_token(h, "connection", "http2-settings")
        || !matches!(req.framing, BodyFraming::None | BodyFraming::Length(0))
        || req.expect_continue
        || req.websocket
        || !req.target.starts_with('/')
    {
        return None;
    }
    let mut values = h.iter().filter(|f| f.is("http2-settings"));
    let (Some(value), None) = (values.next(), values.next()) else {
        return None; // exactly one (RFC 7540 §3.2.1)
    };
    let engine = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let settings = engine.decode(&value.value).ok()?;
    if settings.len() % 6 != 0 || settings.len() > 6 * MAX_SETTINGS || !settings.chunks(6).all(setting_ok) {
        return None;
    }
    let named: Vec<&[u8]> = h
        .iter()
        .filter(|f| f.is("connection"))
        .flat_map(|f| list_elements(&f.value))
        .collect();
    let authority = req.header("host").unwrap_or(req.host.as_bytes());
    let mut block = Vec::with_capacity(256);
    hpack_literal(&mut block, b":method", req.method.as_bytes());
    hpack_literal(&mut block, b":scheme", b"http");
    hpack_literal(&mut block, b":path", req.target.as_bytes());
    hpack_literal(&mut block, b":authority", authority);
    for f in h {
        if connection_specific(&f.name) || named.iter().any(|n| n.eq_ignore_ascii_case(f.name.as_bytes())) {
            continue;
        }
        if f.is("te") && !f.value.eq_ignore_ascii_case(b"trailers") {
            continue; // hop-by-hop; in HTTP/2 only `te: trailers` may be sent
        }
        let name = f.name.to_ascii_lowercase();
        if HeaderName::from_bytes(name.as_bytes()).is_err() || HeaderValue::from_bytes(&f.value).is_err() {
            return None;
        }
        hpack_literal(&mut block, name.as_bytes(), &f.value);
    }
    if block.len() > DEFAULT_MAX_FRAME {
        return None; // one HEADERS frame, as any client could send before SETTINGS
    }
    let mut headers = Vec::with_capacity(9 + block.len());
    frame_header(&mut headers, block.len(), HEADERS, END_STREAM | END_HEADERS, 1);
    headers.extend_from_slice(&block);
    Some(H2cUpgrade { settings, headers })
}

/// What [`H2cUpgrade::splice`] made of the client's first bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Splice {
    /// The preface and first frame are not complete yet.
    NeedMore,
    /// The bytes for `h2`: the first `consumed` client bytes rewritten (see the module docs).
    Ready { consumed: usize, bytes: Vec<u8> },
    /// Not the preface and a SETTINGS frame: give the bytes to `h2` as they are.
    AsIs,
}

impl H2cUpgrade {
    /// Rewrites the start of the client's HTTP/2 bytes (everything it sent after the upgrade request so far).
    pub(crate) fn splice(&self, input: &[u8]) -> Splice {
        let n = input.len().min(PREFACE.len());
        if input[..n] != PREFACE[..n] {
            return Splice::AsIs;
        }
        let Some(h) = input.get(PREFACE.len()..PREFACE.len() + 9) else {
            return Splice::NeedMore;
        };
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        if h[3] != SETTINGS || h[4] & ACK != 0 || stream != 0 || len % 6 != 0 || len > DEFAULT_MAX_FRAME {
            return Splice::AsIs;
        }
        let end = PREFACE.len() + 9 + len;
        let Some(own) = input.get(PREFACE.len() + 9..end) else {
            return Splice::NeedMore;
        };
        let mut bytes = Vec::with_capacity(end + self.settings.len() + self.headers.len());
        bytes.extend_from_slice(PREFACE);
        frame_header(&mut bytes, self.settings.len() + len, SETTINGS, h[4], 0);
        bytes.extend_from_slice(&self.settings);
        bytes.extend_from_slice(own);
        bytes.extend_from_slice(&self.headers);
        Splice::Ready { consumed: end, bytes }
    }

    /// Most client bytes [`H2cUpgrade::splice`] may need before it decides.
    pub(crate) fn max_needed() -> usize {
        PREFACE.len() + 9 + DEFAULT_MAX_FRAME
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::request::parse_request;

    fn req(head: &str) -> RequestHead {
        parse_request(head.as_bytes()).unwrap()
    }

    // curl's HTTP2-Settings: MAX_CONCURRENT_STREAMS 100, INITIAL_WINDOW_SIZE 33554432, ENABLE_PUSH 0.
    const SETTINGS_B64: &str = "AAMAAABkAAQCAAAAAAIAAAAA";

    fn upgrade_head(extra: &str) -> String {
        format!(
            "GET /a?b HTTP/1.1\r\nHost: Example.com:8080\r\nUser-Agent: t\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: h2c\r\nHTTP2-Settings: {SETTINGS_B64}\r\n{extra}\r\n"
        )
    }

    #[test]
    fn takes_up_a_bodyless_upgrade_request() {
        let up = h2c_upgrade(&req(&upgrade_head("X-Keep: 1\r\nKeep-Alive: 5\r\n"))).unwrap();
        assert_eq!(up.settings.len(), 18);
        // HEADERS, END_STREAM | END_HEADERS, stream 1.
        assert_eq!(&up.headers[3..9], &[1, 5, 0, 0, 0, 1]);
        let block = &up.headers[9..];
        let mut want = Vec::new();
        for (n, v) in [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/a?b"),
            (":authority", "Example.com:8080"),
            ("user-agent", "t"),
            ("x-keep", "1"),
        ] {
            hpack_literal(&mut want, n.as_bytes(), v.as_bytes());
        }
        assert_eq!(block, &want[..]);
    }

    #[test]
    fn other_requests_stay_http1() {
        for extra in [
            "Content-Length: 3\r\n",
            "Transfer-Encoding: chunked\r\n",
            "HTTP2-Settings: AAMAAABk\r\n",
            "Expect: 100-continue\r\n",
        ] {
            assert_eq!(h2c_upgrade(&req(&upgrade_head(extra))), None, "{extra:?}");
        }
        let plain = "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n";
        assert_eq!(h2c_upgrade(&req(plain)), None, "Connection does not list the upgrade");
        let http10 = upgrade_head("").replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(h2c_upgrade(&req(&http10)), None);
        let bad_b64 = upgrade_head("").replace(SETTINGS_B64, "!!!");
        assert_eq!(h2c_upgrade(&req(&bad_b64)), None);
        let odd = upgrade_head("").replace(SETTINGS_B64, "AAMAAABkAA");
        assert_eq!(h2c_upgrade(&req(&odd)), None, "not whole SETTINGS entries");
        let push2 = upgrade_head("").replace(SETTINGS_B64, "AAIAAAAC");
        assert_eq!(h2c_upgrade(&req(&push2)), None, "ENABLE_PUSH 2");
    }

    #[test]
    fn splice_merges_settings_and_adds_stream_1() {
        let up = h2c_upgrade(&req(&upgrade_head(""))).unwrap();
        let mut client = PREFACE.to_vec();
        frame_header(&mut client, 6, SETTINGS, 0, 0);
        client.extend_from_slice(&[0, 4, 0, 1, 0, 0]);
        let rest = [0u8, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1]; // a WINDOW_UPDATE
        client.extend_from_slice(&rest);
        for cut in 0..PREFACE.len() + 15 {
            assert_eq!(up.splice(&client[..cut]), Splice::NeedMore, "{cut}");
        }
        let Splice::Ready { consumed, bytes } = up.splice(&client) else {
            panic!()
        };
        assert_eq!(consumed, PREFACE.len() + 15);
        let mut want = PREFACE.to_vec();
        frame_header(&mut want, 24, SETTINGS, 0, 0);
        want.extend_from_slice(&up.settings);
        want.extend_from_slice(&[0, 4, 0, 1, 0, 0]);
        want.extend_from_slice(&up.headers);
        assert_eq!(bytes, want);
    }

    #[test]
    fn splice_leaves_anything_else_to_h2() {
        let up = h2c_upgrade(&req(&upgrade_head(""))).unwrap();
        assert_eq!(up.splice(b"GET / HTTP/1.1\r\n"), Splice::AsIs);
        let mut ping = PREFACE.to_vec();
        frame_header(&mut ping, 8, 0x6, 0, 0);
        assert_eq!(up.splice(&ping), Splice::AsIs, "the first frame must be SETTINGS");
        let mut ack = PREFACE.to_vec();
        frame_header(&mut ack, 0, SETTINGS, ACK, 0);
        assert_eq!(up.splice(&ack), Splice::AsIs);
    }

    #[test]
    fn hpack_integers() {
        let mut out = Vec::new();
        hpack_int(&mut out, 0, 7, 126);
        hpack_int(&mut out, 0, 7, 127);
        hpack_int(&mut out, 0, 5, 1337); // RFC 7541 C.1.2
        assert_eq!(out, [126, 127, 0, 31, 154, 10]);
    }
}
