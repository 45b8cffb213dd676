//! Header rewriting: the request xlb sends upstream and the response it sends the client, and the heads of the
//! responses xlb answers itself (errors, redirects, fixed responses, `100 Continue`).
//!
//! Hop-by-hop fields (RFC 9110 §7.6.1) never cross the proxy: Connection, Keep-Alive, Proxy-Connection, TE,
//! Trailer, Transfer-Encoding, Upgrade (except for a WebSocket upgrade) and every field the Connection header
//! names. Framing (Content-Length / Transfer-Encoding) is written by xlb from what it decoded, never copied.

use std::io::Write;
use std::net::IpAddr;

use super::request::RequestHead;
use super::response::ResponseHead;
use super::{list_elements, BodyFraming, Header, Version};

/// Fields removed from every forwarded message, besides those named in Connection.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// Fields xlb sets itself on the upstream request (a client's copy is dropped or merged).
const SET_BY_PROXY: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-real-ip",
    "expect",
    "x-client-verify",
    "x-client-cert-subject",
];

/// What the upstream request says about the client.
#[derive(Clone, Copy, Debug)]
pub struct ClientInfo<'a> {
    /// The client's address (X-Forwarded-For, X-Real-IP).
    pub addr: IpAddr,
    /// The listener's scheme (X-Forwarded-Proto): `http` (or `https` behind TLS termination).
    pub proto: &'a str,
    /// The subject of the client certificate TLS verified, if any (X-Client-Cert-Subject, and
    /// X-Client-Verify: SUCCESS; a client's own copies of these headers are always dropped).
    pub cert_subject: Option<&'a str>,
}

/// Whether `h` may be forwarded: not hop-by-hop, not named in `connection_tokens` (Host is always kept).
fn forwardable(h: &Header, connection_tokens: &[&[u8]]) -> bool {
    if HOP_BY_HOP.iter().any(|n| h.is(n)) {
        return false;
    }
    h.is("host")
        || !connection_tokens
            .iter()
            .any(|t| t.eq_ignore_ascii_case(h.name.as_bytes()))
}

fn connection_tokens(headers: &[Header]) -> Vec<&[u8]> {
    headers
        .iter()
        .filter(|h| h.is("connection"))
        .flat_map(|h| list_elements(&h.value))
        .collect()
}

/// Bytes `headers` take as `name: value\r\n` lines.
fn fields_len(headers: &[Header]) -> usize {
    headers.iter().map(|h| h.name.len() + h.value.len() + 4).sum()
}

fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the request head xlb sends upstream (always HTTP/1.1).
///
/// The body is framed as the client framed it (Content-Length kept, chunked re-chunked). With `websocket`, the
/// Upgrade header is passed on with `Connection: upgrade`.
pub fn write_upstream_request(req: &RequestHead, client: ClientInfo<'_>, websocket: bool, out: &mut Vec<u8>) {
    let tokens = connection_tokens(&req.headers);
    // One allocation for the whole head (the fields as they came, plus what xlb adds).
    out.reserve(fields_len(&req.headers) + req.target.len() + req.host.len() + 192);
    let _ = write!(out, "{} {} HTTP/1.1\r\n", req.method, req.target);
    let mut forwarded_for: Vec<u8> = Vec::new();
    let mut has_host = false;
    for h in &req.headers {
        if h.is("x-forwarded-for") {
            if !forwarded_for.is_empty() {
                forwarded_for.extend_from_slice(b", ");
            }
            forwarded_for.extend_from_slice(&h.value);
            continue;
        }
        if !forwardable(h, &tokens) || SET_BY_PROXY.iter().any(|n| h.is(n)) {
            continue;
        }
        has_host |= h.is("host");
        header(out, &h.name, &h.value);
    }
    if !has_host {
        // HTTP/1.0 client without Host, or an absolute-form target: give the server the authority used.
        header(out, "Host", req.host.as_bytes());
    }
    if !forwarded_for.is_empty() {
        forwarded_for.extend_from_slice(b", ");
    }
    let _ = write!(forwarded_for, "{}", client.addr);
    header(out, "X-Forwarded-For", &forwarded_for);
    header(out, "X-Forwarded-Proto", client.proto.as_bytes());
    let _ = write!(out, "X-Real-IP: {}\r\n", client.addr);
    if let Some(subject) = client.cert_subject {
        header(out, "X-Client-Verify", b"SUCCESS");
        header(out, "X-Client-Cert-Subject", subject.as_bytes());
    }
    match req.framing {
        BodyFraming::Length(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        BodyFraming::Chunked => header(out, "Transfer-Encoding", b"chunked"),
        BodyFraming::None | BodyFraming::UntilClose => {}
    }
    if websocket {
        if let Some(up) = req.header("upgrade") {
            header(out, "Upgrade", up);
        }
        header(out, "Connection", b"upgrade");
    }
    out.extend_from_slice(b"\r\n");
}

/// How the response goes to the client.
#[derive(Clone, Copy, Debug)]
pub struct ClientFraming {
    /// The client's version (an HTTP/1.0 client gets no chunked body and no 1xx).
    pub version: Version,
    /// Body framing towards the client.
    pub framing: BodyFraming,
    /// Keep the client connection open after this response.
    pub keep_alive: bool,
}

/// Writes the response head xlb sends the client (status line in HTTP/1.1, as RFC 9110 §6.2 allows).
///
/// `extra`: headers xlb adds (e.g. a sticky `Set-Cookie`). A bodiless response (HEAD, 204, 304) keeps the
/// server's Content-Length, which then describes the representation, not this message.
pub fn write_client_response(resp: &ResponseHead, to: ClientFraming, extra: &[(&str, &[u8])], out: &mut Vec<u8>) {
    let tokens = connection_tokens(&resp.headers);
    let extra_len: usize = extra.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    out.reserve(fields_len(&resp.headers) + resp.reason.len() + extra_len + 96);
    let switching = resp.status == 101;
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", resp.status, resp.reason);
    for h in &resp.headers {
        let keep_length = h.is("content-length") && to.framing == BodyFraming::None && resp.status >= 200;
        if keep_length || forwardable(h, &tokens) {
            header(out, &h.name, &h.value);
        }
    }
    for (name, value) in extra {
        header(out, name, value);
    }
    match to.framing {
        BodyFraming::Length(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        BodyFraming::Chunked => header(out, "Transfer-Encoding", b"chunked"),
        BodyFraming::None | BodyFraming::UntilClose => {}
    }
    if switching {
        if let Some(up) = resp.headers.iter().find(|h| h.is("upgrade")) {
            header(out, "Upgrade", &up.value);
        }
        header(out, "Connection", b"upgrade");
    } else if resp.status >= 200 {
        if !to.keep_alive {
            header(out, "Connection", b"close");
        } else if to.version == Version::Http10 {
            header(out, "Connection", b"keep-alive");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a complete response xlb answers itself: status, `extra` headers, a `text/plain` (or `content_type`)
/// body with its Content-Length, and `Connection: close` unless `keep_alive`.
pub fn write_local_response(
    status: u16,
    extra: &[(&str, &[u8])],
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (name, value) in extra {
        header(out, name, value);
    }
    if !body.is_empty() {
        header(out, "Content-Type", content_type.as_bytes());
    }
    let _ = write!(out, "Content-Length: {}\r\n", body.len());
    if !keep_alive {
        header(out, "Connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// `100 Continue`, sent by xlb itself when a client expects it.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Reason phrase for the statuses xlb produces (`""` for others).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::request::parse_request;
    use crate::http1::response::parse_response;

    fn upstream(req: &str, websocket: bool) -> String {
        let req = parse_request(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        let client = ClientInfo {
            cert_subject: None,
            addr: "192.0.2.7".parse().unwrap(),
            proto: "http",
        };
        write_upstream_request(&req, client, websocket, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hop_by_hop_removed_and_forwarding_headers_set() {
        let got = upstream(
            "POST /p HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret, Host\r\nKeep-Alive: 5\r\n\
             Proxy-Connection: x\r\nTE: trailers\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\nX-Secret: s\r\n\
             X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\nX-Real-IP: 1.1.1.1\r\n\
             X-Forwarded-Proto: https\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\nAccept: */*\r\n\r\n",
            false,
        );
        assert_eq!(
            got,
            "POST /p HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\n\
             X-Forwarded-Proto: http\r\nX-Real-IP: 192.0.2.7\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn host_added_for_http10_and_absolute_form() {
        let got = upstream("GET http://B.example/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n", false);
        assert!(got.starts_with("GET /x HTTP/1.1\r\nHost: b.example\r\n"), "{got}");
        assert!(got.contains("Content-Length: 2\r\n"));
        assert!(upstream("GET / HTTP/1.0\r\n\r\n", false).contains("\r\nHost: \r\n"));
    }

    #[test]
    fn websocket_upgrade_kept_only_when_tunnelling() {
        let ws =
            "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: k\r\n\r\n";
        let got = upstream(ws, true);
        assert!(got.ends_with("Sec-WebSocket-Key: k\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\nX-Real-IP: 192.0.2.7\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"), "{got}");
        let got = upstream(ws, false);
        assert!(!got.contains("Upgrade") && !got.contains("Connection"), "{got}");
    }

    fn client(resp: &str, head: bool, to: ClientFraming) -> String {
        let resp = parse_response(resp.as_bytes(), head).unwrap();
        let mut out = Vec::new();
        write_client_response(&resp, to, &[("Set-Cookie", b"s=1")], &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn response_rewriting() {
        let to = ClientFraming {
            version: Version::Http11,
            framing: BodyFraming::Chunked,
            keep_alive: true,
        };
        let got = client(
            "HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 1\r\nServer: s\r\n\r\n",
            false,
            to,
        );
        assert_eq!(
            got,
            "HTTP/1.1 200 Fine\r\nServer: s\r\nSet-Cookie: s=1\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let to = ClientFraming {
            version: Version::Http10,
            framing: BodyFraming::UntilClose,
            keep_alive: false,
        };
        let got = client("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, to);
        assert_eq!(got, "HTTP/1.1 200 OK\r\nSet-Cookie: s=1\r\nConnection: close\r\n\r\n");
        let to = ClientFraming {
            version: Version::Http10,
            framing: BodyFraming::Length(3),
            keep_alive: true,
        };
        let got = client("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false, to);
        assert_eq!(
            got,
            "HTTP/1.1 200 OK\r\nSet-Cookie: s=1\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n"
        );
        let to = ClientFraming {
            version: Version::Http11,
            framing: BodyFraming::None,
            keep_alive: true,
        };
        let got = client("HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n", true, to);
        assert_eq!(
            got, "HTTP/1.1 200 OK\r\nContent-Length: 300\r\nSet-Cookie: s=1\r\n\r\n",
            "HEAD keeps the length"
        );
        let got = client(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            false,
            to,
        );
        assert_eq!(
            got,
            "HTTP/1.1 101 Switching Protocols\r\nSet-Cookie: s=1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        );
    }

    #[test]
    fn local_responses() {
        let mut out = Vec::new();
        write_local_response(301, &[("Location", b"https://a/")], "text/plain", b"", true, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://a/\r\nContent-Length: 0\r\n\r\n"
        );
        out.clear();
        write_local_response(503, &[], "text/plain", b"no server\n", false, &mut out);
        assert_eq!(
            out,
            &b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nno server\n"[..]
        );
    }
}
