//! An HTTP/2 request as an HTTP/1.1 head and body framing (RFC 9113 §8.3, RFC 9112).
//!
//! `h2` has already refused what the RFC calls malformed at the frame layer (pseudo-header rules, uppercase
//! names, connection-specific fields, `te` other than `trailers`, a Content-Length contradicted by the DATA
//! frames); these checks repeat the ones that matter for HTTP/1.1 smuggling so the head written here never
//! depends on that.

use std::io::Write;

use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http::Method;

use crate::http1::body::{encode_chunk, encode_last_chunk};

/// How the request body is framed towards the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReqFraming {
    /// No body (END_STREAM on HEADERS).
    None,
    /// `content-length` sent by the client (passed on as is).
    Length(u64),
    /// No `content-length`: `Transfer-Encoding: chunked` is added and DATA frames become chunks.
    Chunked,
}

/// Why a request is refused before reaching a proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refuse {
    /// Malformed (RFC 9113 §8.1.1): RST_STREAM(PROTOCOL_ERROR).
    Malformed,
    /// CONNECT (plain or extended): answered 405.
    Connect,
}

/// The request head for the proxy, and how its body is framed.
pub(crate) struct MappedRequest {
    pub head: Vec<u8>,
    pub framing: ReqFraming,
    /// HEAD request: the response has no body whatever its headers say.
    pub is_head: bool,
}

/// Connection-specific fields (RFC 9113 §8.2.2): a request carrying one is malformed.
fn connection_specific(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

fn has_bad_byte(v: &[u8]) -> bool {
    v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
}

/// Writes `parts` as an HTTP/1.1 request head: request line from `:method` and `:path`, `Host` from
/// `:authority` (or the `host` field), the other fields as they came (names lowercase, split `cookie` fields
/// joined with `"; "`), then the body framing. `end_of_stream`: HEADERS carried END_STREAM (no body).
pub(crate) fn map_request(parts: &Parts, end_of_stream: bool) -> Result<MappedRequest, Refuse> {
    if parts.method == Method::CONNECT || parts.extensions.get::<::h2::ext::Protocol>().is_some() {
        return Err(Refuse::Connect);
    }
    let path = match parts.uri.path_and_query() {
        Some(p) if !p.as_str().is_empty() => p.as_str(),
        _ => return Err(Refuse::Malformed),
    };
    let authority = parts.uri.authority().map(|a| a.as_str());
    if authority.is_some_and(|a| a.contains('@') || a.is_empty()) {
        // userinfo is not allowed in `:authority` for http and https (RFC 9113 §8.3.1).
        return Err(Refuse::Malformed);
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host_field = hosts.next().map(|v| v.as_bytes());
    if hosts.next().is_some() {
        return Err(Refuse::Malformed);
    }
    let host = match (authority, host_field) {
        (Some(a), Some(h)) if !a.as_bytes().eq_ignore_ascii_case(h) => return Err(Refuse::Malformed),
        (Some(a), _) => a.as_bytes(),
        (None, Some(h)) => h,
        (None, None) => return Err(Refuse::Malformed),
    };
    let mut head = Vec::with_capacity(256);
    let _ = write!(head, "{} {} HTTP/1.1\r\nHost: ", parts.method.as_str(), path);
    if has_bad_byte(host) || has_bad_byte(path.as_bytes()) || path.contains(' ') {
        return Err(Refuse::Malformed);
    }
    head.extend_from_slice(host);
    head.extend_from_slice(b"\r\n");
    let framing = write_fields(&parts.headers, end_of_stream, &mut head)?;
    head.extend_from_slice(b"\r\n");
    Ok(MappedRequest {
        head,
        framing,
        is_head: parts.method == Method::HEAD,
    })
}

/// Writes the regular fields and the framing header; returns the framing.
fn write_fields(headers: &HeaderMap, end_of_stream: bool, out: &mut Vec<u8>) -> Result<ReqFraming, Refuse> {
    let mut length: Option<u64> = None;
    let mut cookies = 0usize;
    for (name, value) in headers {
        let v = value.as_bytes();
        if has_bad_byte(v) || connection_specific(name) {
            return Err(Refuse::Malformed);
        }
        if name == header::HOST {
            continue;
        }
        if name == header::TE {
            // `te: trailers` only says the client accepts trailers: nothing for an HTTP/1.1 hop to carry.
            if v != b"trailers" {
                return Err(Refuse::Malformed);
            }
            continue;
        }
        if name == header::COOKIE {
            cookies += 1;
            continue;
        }
        if name == header::CONTENT_LENGTH {
            if length.is_some() || v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
                return Err(Refuse::Malformed);
            }
            length = Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if cookies > 0 {
        out.extend_from_slice(b"cookie: ");
        for (i, c) in headers.get_all(header::COOKIE).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(c.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    Ok(match length {
        Some(0) if !end_of_stream => ReqFraming::Length(0),
        Some(n) => {
            if end_of_stream && n != 0 {
                return Err(Refuse::Malformed);
            }
            ReqFraming::Length(n)
        }
        None if end_of_stream => ReqFraming::None,
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            ReqFraming::Chunked
        }
    })
}

/// Frames one DATA payload for the proxy.
pub(crate) fn frame_body(framing: ReqFraming, data: &[u8]) -> Vec<u8> {
    match framing {
        ReqFraming::Chunked => {
            let mut out = Vec::with_capacity(data.len() + 12);
            encode_chunk(data, &mut out);
            out
        }
        _ => data.to_vec(),
    }
}

/// The end of a chunked body: the last chunk with the client's trailers (fields that can be trailers only).
pub(crate) fn last_chunk(trailers: Option<&HeaderMap>) -> Vec<u8> {
    let mut lines = Vec::new();
    for (name, value) in trailers.into_iter().flatten() {
        let v = value.as_bytes();
        if connection_specific(name) || name == header::CONTENT_LENGTH || name == header::HOST || has_bad_byte(v) {
            continue;
        }
        lines.extend_from_slice(name.as_str().as_bytes());
        lines.extend_from_slice(b": ");
        lines.extend_from_slice(v);
        lines.extend_from_slice(b"\r\n");
    }
    let mut out = Vec::with_capacity(lines.len() + 5);
    encode_last_chunk(&lines, &mut out);
    out
}
