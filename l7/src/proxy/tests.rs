//! The proxy driven like the datapath would: byte buffers, a fake clock, actions collected.

use std::collections::HashMap;

use super::*;
use crate::config::{
    FixedResponseConfig, HttpListenerConfig, L7Config, ListenerProtocol, RedirectConfig, RuleConfig, StickyConfig,
};
use crate::http1::body::encode_last_chunk;
use crate::testutil::{pattern, Rng};

const GROUPS: &[&str] = &["web", "api"];

fn listener(sticky: Option<StickyConfig>) -> HttpListenerConfig {
    HttpListenerConfig {
        protocol: ListenerProtocol::Http,
        group: "web".into(),
        rules: vec![
            RuleConfig {
                host: Some("api.example.com".into()),
                group: Some("api".into()),
                ..RuleConfig::default()
            },
            RuleConfig {
                host: Some("old.example.com".into()),
                redirect: Some(RedirectConfig {
                    status: 308,
                    scheme: Some("https".into()),
                    host: None,
                    port: None,
                    path: None,
                }),
                ..RuleConfig::default()
            },
            RuleConfig {
                path_prefix: Some("/health".into()),
                fixed: Some(FixedResponseConfig {
                    status: 200,
                    body: "ok\n".into(),
                    content_type: "text/plain".into(),
                }),
                ..RuleConfig::default()
            },
        ],
        sticky,
        hash: None,
    }
}

fn config(limits: L7Config, sticky: Option<StickyConfig>) -> Arc<ProxyConfig> {
    Arc::new(ProxyConfig::new(limits, &listener(sticky), "listener[0]", GROUPS, 0xfeed).unwrap())
}

/// A fake datapath around one proxy connection.
struct Harness {
    p: HttpProxy,
    now: Instant,
    /// Client bytes not yet consumed (the socket's receive buffer).
    client_pending: Vec<u8>,
    to_client: Vec<u8>,
    to_upstream: HashMap<u32, Vec<u8>>,
    connects: Vec<(UpstreamId, GroupId, Option<ServerId>)>,
    client_closed: bool,
    upstream_closed: Vec<UpstreamId>,
    /// Upstreams handed back idle and reusable (also in `upstream_closed`: the proxy is done with them).
    released: Vec<UpstreamId>,
    tunnel: Option<UpstreamId>,
    /// The proxy handed the connection over to HTTP/2 (`Upgrade: h2c`).
    h2c: bool,
    events: Vec<Event>,
    /// The datapath's idle pool, as the L7 stage keeps it: released connections (by the id they were opened
    /// with, their group and server), handed out again for a later request to the same group.
    pool: Vec<(u32, GroupId, ServerId)>,
    /// Server and group of each opened connection (by the id it was opened with).
    opened: HashMap<u32, (GroupId, ServerId)>,
    /// The proxy's id for a connection → the id it was opened with (tests name connections by the latter).
    alias: HashMap<u32, u32>,
}

impl Harness {
    fn new() -> Self {
        Self::with(L7Config::default(), None)
    }

    fn with(limits: L7Config, sticky: Option<StickyConfig>) -> Self {
        let now = Instant::now();
        Harness {
            p: HttpProxy::new(config(limits, sticky), "198.51.100.9".parse().unwrap(), now),
            now,
            client_pending: Vec::new(),
            to_client: Vec::new(),
            to_upstream: HashMap::new(),
            connects: Vec::new(),
            client_closed: false,
            upstream_closed: Vec::new(),
            released: Vec::new(),
            tunnel: None,
            h2c: false,
            events: Vec::new(),
            pool: Vec::new(),
            opened: HashMap::new(),
            alias: HashMap::new(),
        }
    }

    /// The id a connection was opened with, for the proxy's `id`.
    fn logical(&self, id: UpstreamId) -> UpstreamId {
        UpstreamId(self.alias.get(&id.0).copied().unwrap_or(id.0))
    }

    /// The proxy's current id for the connection opened as `logical`.
    fn actual(&self, logical: u32) -> UpstreamId {
        let id = self.alias.iter().filter(|(_, l)| **l == logical).map(|(a, _)| *a).max();
        UpstreamId(id.unwrap_or(logical))
    }

    fn drain(&mut self) {
        while let Some(a) = self.p.poll_action() {
            assert!(
                !self.client_closed || matches!(a, Action::CloseUpstream(_) | Action::ReleaseUpstream(_)),
                "action after CloseClient: {a:?}"
            );
            match a {
                Action::ConnectUpstream {
                    id,
                    group,
                    sticky_server,
                    ..
                } => {
                    let pooled = self
                        .pool
                        .iter()
                        .position(|(_, g, s)| *g == group && sticky_server.is_none_or(|want| want == *s));
                    match pooled {
                        Some(i) => {
                            let (logical, _, server) = self.pool.remove(i);
                            self.alias.insert(id.0, logical);
                            self.upstream_closed.retain(|u| u.0 != logical);
                            self.p.handle_upstream_connected(self.now, id, server);
                        }
                        None => self.connects.push((id, group, sticky_server)),
                    }
                }
                Action::SendToClient(b) => {
                    self.to_client.extend_from_slice(&b);
                    self.p.recycle(b);
                }
                Action::SendToUpstream(id, b) => {
                    let id = self.logical(id);
                    assert!(!self.upstream_closed.contains(&id), "send after close");
                    self.to_upstream.entry(id.0).or_default().extend_from_slice(&b);
                    self.p.recycle(b);
                }
                Action::CloseClient => self.client_closed = true,
                Action::CloseUpstream(id) => {
                    let id = self.logical(id);
                    self.upstream_closed.push(id);
                }
                Action::ReleaseUpstream(id) => {
                    let id = self.logical(id);
                    self.upstream_closed.push(id);
                    self.released.push(id);
                    if let Some(&(group, server)) = self.opened.get(&id.0) {
                        self.pool.push((id.0, group, server));
                    }
                }
                Action::Tunnel { upstream } => self.tunnel = Some(upstream),
                Action::UpgradeH2c(_) => self.h2c = true,
            }
        }
        while let Some(e) = self.p.poll_event() {
            self.events.push(e);
        }
    }

    /// Offers pending client bytes while the proxy takes them.
    fn pump_client(&mut self) {
        while !self.client_pending.is_empty() && self.p.wants_client_bytes() {
            let n = self.p.handle_client_bytes(self.now, &self.client_pending);
            self.client_pending.drain(..n);
            self.drain();
            if n == 0 {
                break;
            }
        }
        self.drain();
    }

    fn client(&mut self, bytes: &[u8]) {
        self.client_pending.extend_from_slice(bytes);
        self.pump_client();
    }

    fn connected(&mut self, id: u32, server: u32) {
        let group = self.connects.iter().find(|c| c.0 .0 == id).map_or(GroupId(0), |c| c.1);
        self.opened.insert(id, (group, ServerId(server)));
        self.p
            .handle_upstream_connected(self.now, UpstreamId(id), ServerId(server));
        self.drain();
        self.pump_client();
    }

    fn upstream(&mut self, id: u32, bytes: &[u8]) -> usize {
        let n = self.p.handle_upstream_bytes(self.now, self.actual(id), bytes);
        self.drain();
        self.pump_client();
        n
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        if self.p.poll_timeout().is_some_and(|t| t <= self.now) {
            self.p.handle_timeout(self.now);
        }
        self.drain();
        self.pump_client();
    }

    fn take_client(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.to_client)).into_owned()
    }

    fn take_upstream(&mut self, id: u32) -> String {
        String::from_utf8_lossy(&self.to_upstream.remove(&id).unwrap_or_default()).into_owned()
    }
}

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: www.example.com\r\n\r\n";
const OK5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[test]
fn get_forwarded_and_upstream_reused() {
    let mut h = Harness::new();
    h.client(GET);
    assert_eq!(h.connects, vec![(UpstreamId(0), GroupId(0), None)]);
    assert!(h.to_upstream.is_empty(), "nothing sent before the connection is up");
    h.connected(0, 3);
    assert_eq!(
        h.take_upstream(0),
        "GET /a HTTP/1.1\r\nHost: www.example.com\r\nX-Forwarded-For: 198.51.100.9\r\nX-Forwarded-Proto: http\r\n\
         X-Real-IP: 198.51.100.9\r\n\r\n"
    );
    assert_eq!(h.upstream(0, OK5), OK5.len());
    assert_eq!(h.take_client(), "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    assert!(!h.client_closed);
    assert_eq!(
        h.events,
        vec![Event::Answered {
            status: 200,
            local: false,
            started: Some(h.now),
        }]
    );
    // Same group: the upstream connection is reused.
    h.client(GET);
    assert_eq!(h.connects.len(), 1);
    assert!(h.take_upstream(0).starts_with("GET /a HTTP/1.1\r\n"));
    h.upstream(0, OK5);
    assert!(h.take_client().ends_with("hello"));
    // Another group: a new upstream; the first one stays in the pool (released after each response).
    h.client(b"GET / HTTP/1.1\r\nHost: API.example.com:80\r\n\r\n");
    assert_eq!(
        h.connects[1],
        (UpstreamId(2), GroupId(1), None),
        "id 1 was the pooled reuse"
    );
    assert_eq!(h.released, vec![UpstreamId(0), UpstreamId(0)]);
    assert_eq!(h.pool.len(), 1);
    h.connected(2, 0);
    assert!(h
        .take_upstream(2)
        .starts_with("GET / HTTP/1.1\r\nHost: API.example.com:80\r\n"));
}

#[test]
fn leading_empty_lines_ignored() {
    let mut h = Harness::new();
    h.client(b"\r\n\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n");
    h.connected(0, 0);
    assert!(h.take_upstream(0).starts_with("GET /a HTTP/1.1\r\n"));
    h.upstream(0, b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.take_client(), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
}

#[test]
fn pipelined_requests_answered_in_order() {
    let mut h = Harness::new();
    let mut three = Vec::new();
    for path in ["/1", "/2", "/3"] {
        three.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    }
    h.client(&three);
    h.connected(0, 0);
    let up = h.take_upstream(0);
    assert!(
        up.starts_with("GET /1 ") && !up.contains("/2"),
        "one request at a time: {up}"
    );
    h.upstream(0, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1");
    assert!(h.take_upstream(0).starts_with("GET /2 "));
    h.upstream(0, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2");
    assert!(h.take_upstream(0).starts_with("GET /3 "));
    h.upstream(0, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3");
    let out = h.take_client();
    let bodies: Vec<char> = out.split("\r\n\r\n").skip(1).filter_map(|s| s.chars().next()).collect();
    assert_eq!(bodies, vec!['1', '2', '3']);
    assert!(h.client_pending.is_empty());
    assert_eq!(h.connects.len(), 1);
}

/// A server that answers more than it was asked (response desync, e.g. it read a body as a second request):
/// the extra response is never given to the next request; that one goes to a new connection.
#[test]
fn extra_upstream_response_never_answers_the_next_request() {
    let mut h = Harness::new();
    h.client(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n");
    h.connected(0, 0);
    h.take_upstream(0);
    let two = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL";
    assert_eq!(h.upstream(0, two), two.len());
    assert_eq!(h.upstream_closed, vec![UpstreamId(0)]);
    assert!(h.events.contains(&Event::UpstreamRefused(Refusal::UnsolicitedResponse)));
    assert_eq!(h.connects.len(), 2, "request 2 on a new connection");
    h.connected(1, 0);
    assert!(h.take_upstream(1).starts_with("GET /2 "));
    h.upstream(1, OK5);
    let out = h.take_client();
    assert!(!out.contains("EVIL") && out.ends_with("hello"), "{out}");
    // Bytes from an idle kept-alive upstream: it is closed.
    h.upstream(1, b"HTTP/1.1 200 OK\r\n");
    assert_eq!(h.upstream_closed, vec![UpstreamId(0), UpstreamId(1)]);
    assert!(!h.client_closed);
}

/// Each request smuggling vector is refused with 400 (or its own status), named, and nothing reaches a server.
#[test]
fn smuggling_vectors_refused() {
    let cases: &[(&str, Refusal)] = &[
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
            Refusal::ContentLengthWithTransferEncoding,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            Refusal::ContentLengthWithTransferEncoding,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            Refusal::DuplicateContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            Refusal::DuplicateContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
            Refusal::DuplicateContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            Refusal::BadContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3a\r\n\r\n",
            Refusal::BadContentLength,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            Refusal::TransferEncodingNotChunked,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
            Refusal::TransferEncodingNotChunked,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
            Refusal::TransferEncodingNotChunked,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            Refusal::TransferEncodingNotChunked,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Refusal::UnsupportedTransferCoding,
        ),
        (
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            Refusal::TransferEncodingInHttp10,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
            Refusal::ObsFold,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\tfolded\r\n\r\n",
            Refusal::ObsFold,
        ),
        ("GET / HTTP/1.1\nHost: a\r\n\r\n", Refusal::BareLf),
        ("GET / HTTP/1.1\r\nHost: a\n\n", Refusal::BareLf),
        ("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", Refusal::BareCr),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
            Refusal::BadHeaderName,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length\x00: 3\r\n\r\n",
            Refusal::BadHeaderName,
        ),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n", Refusal::BadHeaderValue),
        ("GET / HTTP/1.1\r\n\r\n", Refusal::MissingHost),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Refusal::MultipleHost),
        ("GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", Refusal::BadHost),
        ("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", Refusal::BadStartLine),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n",
            Refusal::ExpectationFailed,
        ),
    ];
    for (req, reason) in cases {
        let mut h = Harness::new();
        h.client(req.as_bytes());
        let out = h.take_client();
        let status = reason.status();
        assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{req:?}: {out}");
        assert!(out.contains("Connection: close\r\n"), "{req:?}");
        assert!(h.client_closed, "{req:?}");
        assert!(h.connects.is_empty() && h.to_upstream.is_empty(), "{req:?}");
        assert_eq!(h.events[0], Event::ClientRefused(*reason), "{req:?}");
    }
}

/// A refused request in a pipeline: the earlier one is answered, nothing after the bad one is forwarded.
#[test]
fn smuggled_second_request_never_forwarded() {
    let mut h = Harness::new();
    h.client(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx");
    h.connected(0, 0);
    h.upstream(0, OK5);
    assert!(h.take_upstream(0).starts_with("GET /1 "));
    let out = h.take_client();
    assert!(
        out.starts_with("HTTP/1.1 200 OK") && out.contains("HTTP/1.1 400 Bad Request"),
        "{out}"
    );
    assert!(h.client_closed);
    assert_eq!(h.upstream_closed, vec![UpstreamId(0)]);
}

/// A pipelined head with bad line endings: the request before it is still served in full, then 400.
#[test]
fn bad_pipelined_head_waits_for_the_response_in_flight() {
    let mut h = Harness::new();
    h.client(b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nokGET /2 HTTP/1.1\r\nHost: a\rX\r\n\r\n");
    assert!(!h.client_closed);
    h.connected(0, 0);
    assert!(h.take_upstream(0).ends_with("\r\n\r\nok"));
    h.upstream(0, OK5);
    let out = h.take_client();
    assert!(
        out.starts_with("HTTP/1.1 200 OK") && out.contains("HTTP/1.1 400 "),
        "{out}"
    );
    assert!(h.client_closed && h.events.contains(&Event::ClientRefused(Refusal::BareCr)));
}

#[test]
fn limits_431_and_413() {
    let limits = L7Config {
        max_header_bytes: 1024,
        max_body_bytes: 1000,
        ..L7Config::default()
    };
    let mut h = Harness::with(limits.clone(), None);
    let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "y".repeat(1100));
    h.client(big.as_bytes());
    assert!(h.take_client().starts_with("HTTP/1.1 431 "));
    assert_eq!(h.events[0], Event::ClientRefused(Refusal::HeadTooLarge));

    // Declared too large: 413 at once, no 100 Continue, no upstream.
    let mut h = Harness::with(limits.clone(), None);
    h.client(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\nExpect: 100-continue\r\n\r\n");
    assert!(h.take_client().starts_with("HTTP/1.1 413 "));
    assert!(h.connects.is_empty() && h.client_closed);

    // Chunked, found too large while streaming (before any response): 413.
    let mut h = Harness::with(limits, None);
    h.client(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    h.connected(0, 0);
    h.client(b"3e8\r\n");
    h.client(&[b'z'; 1000]);
    h.client(b"\r\n1\r\n");
    assert!(h.take_client().starts_with("HTTP/1.1 413 "));
    assert!(h.client_closed && h.upstream_closed == vec![UpstreamId(0)]);
}

#[test]
fn bad_request_body_refused() {
    let mut h = Harness::new();
    h.client(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    h.connected(0, 0);
    h.client(b"5\r\nhello\r\nzz\r\n");
    assert!(h.take_client().starts_with("HTTP/1.1 400 "));
    assert!(h.client_closed && h.upstream_closed == vec![UpstreamId(0)]);
    assert!(h.events.contains(&Event::ClientRefused(Refusal::BadChunk)));
    let e = ProxyConfig::new(L7Config::default(), &listener(None), "listener[0] (web)", &["web"], 1).unwrap_err();
    assert_eq!(e, "listener[0] (web).rule[0].group: no group named \"api\"");
}

/// Splits `bytes` into pieces of random size (1..=max) and feeds them through `feed`.
fn in_pieces(bytes: &[u8], rng: &mut Rng, max: usize, mut feed: impl FnMut(&[u8])) {
    let mut at = 0;
    while at < bytes.len() {
        let n = (rng.below(max) + 1).min(bytes.len() - at);
        feed(&bytes[at..at + n]);
        at += n;
    }
}

/// Decodes a chunked stream whole (test helper).
fn dechunk(mut s: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut d = BodyDecoder::new(BodyFraming::Chunked, u64::MAX, 4096);
    let mut out = Vec::new();
    loop {
        let (n, ev) = d.decode(s).unwrap();
        s = &s[n..];
        match ev {
            Some(BodyEvent::Data(x)) => out.extend_from_slice(x),
            Some(BodyEvent::End) => return (out, d.trailers().to_vec()),
            None => panic!("incomplete chunked stream"),
        }
    }
}

#[test]
fn one_mebibyte_bodies_streamed_byte_exact() {
    let body = pattern(1 << 20);
    let limits = L7Config {
        max_body_bytes: 0,
        ..L7Config::default()
    };
    for (label, max_piece) in [("1-byte", 1), ("random", 4000)] {
        let mut rng = Rng::new(max_piece as u64);
        // Request with Content-Length, upstream response chunked, client gets it chunked again.
        let mut h = Harness::with(limits.clone(), None);
        let head = format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len());
        h.client(head.as_bytes());
        h.connected(0, 0);
        in_pieces(&body, &mut rng, max_piece, |p| h.client(p));
        let up = h.to_upstream.remove(&0).unwrap();
        let split = up.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(up[split..] == body[..], "{label}: request body byte-exact");

        let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        in_pieces(&body, &mut rng, 7000, |p| {
            crate::http1::body::encode_chunk(p, &mut resp)
        });
        encode_last_chunk(b"X-Digest: 1\r\n", &mut resp);
        in_pieces(&resp, &mut rng, max_piece, |p| {
            assert_eq!(h.upstream(0, p), p.len());
        });
        let out = std::mem::take(&mut h.to_client);
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let (got, trailers) = dechunk(&out[split..]);
        assert!(got == body, "{label}: response body byte-exact");
        assert_eq!(trailers, b"X-Digest: 1\r\n");
        assert!(!h.client_closed);
    }
}

#[test]
fn chunked_request_rechunked_with_trailers() {
    let body = pattern(100_000);
    let mut rng = Rng::new(9);
    let mut req = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    in_pieces(&body, &mut rng, 3000, |p| crate::http1::body::encode_chunk(p, &mut req));
    encode_last_chunk(b"X-T: v\r\n", &mut req);
    req.extend_from_slice(GET);
    let mut h = Harness::new();
    in_pieces(&req, &mut rng, 500, |p| h.client(p));
    h.connected(0, 0);
    let up = h.to_upstream.remove(&0).unwrap();
    let split = up.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(String::from_utf8_lossy(&up[..split]).contains("Transfer-Encoding: chunked\r\n"));
    let (got, trailers) = dechunk(&up[split..]);
    assert!(got == body);
    assert_eq!(trailers, b"X-T: v\r\n");
    // The pipelined GET waits for the response.
    h.upstream(0, OK5);
    assert!(h.take_upstream(0).starts_with("GET /a "));
}

#[test]
fn expect_100_continue() {
    let mut h = Harness::new();
    h.client(b"PUT /f HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(h.take_client(), "HTTP/1.1 100 Continue\r\n\r\n");
    h.connected(0, 0);
    h.client(b"data");
    let up = h.take_upstream(0);
    assert!(
        !up.to_ascii_lowercase().contains("expect") && up.ends_with("\r\n\r\ndata"),
        "{up}"
    );
    // The server's own 100 is not passed on (xlb sent one); a 103 is.
    h.upstream(
        0,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n",
    );
    h.upstream(0, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        h.take_client(),
        "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    );
    // No body: no 100 Continue.
    h.client(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(h.take_client(), "");
}

#[test]
fn websocket_upgrade_becomes_tunnel() {
    let mut h = Harness::new();
    h.client(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: k\r\n\r\n\x81\x05hello");
    assert_eq!(
        h.client_pending, b"\x81\x05hello",
        "frames after the upgrade request are left for the tunnel"
    );
    h.connected(0, 0);
    let up = h.take_upstream(0);
    assert!(
        up.ends_with("Upgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
        "{up}"
    );
    let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n";
    let mut seg = resp.to_vec();
    seg.extend_from_slice(b"\x81\x02hi");
    assert_eq!(h.upstream(0, &seg), resp.len(), "bytes after the 101 are the tunnel's");
    assert!(h.take_client().starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert_eq!(h.tunnel, Some(UpstreamId(0)));
    assert!(!h.client_closed && h.upstream_closed.is_empty());
    assert!(h.p.is_closed() && !h.p.wants_client_bytes());
    assert!(h.events.contains(&Event::Tunnelled));
}

#[test]
fn websocket_declined_stays_http() {
    let mut h = Harness::new();
    h.client(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n");
    h.connected(0, 0);
    h.take_upstream(0);
    h.upstream(0, OK5);
    assert!(h.take_client().starts_with("HTTP/1.1 200 OK"));
    assert!(h.take_upstream(0).starts_with("GET /a "), "the next request is served");
    assert_eq!(h.tunnel, None);
    // 101 without an upgrade request: 502.
    h.upstream(0, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
    assert!(h.take_client().starts_with("HTTP/1.1 502 "));
}

#[test]
fn keep_alive_decisions() {
    // HTTP/1.0 without keep-alive: answered, then closed.
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.0\r\n\r\n");
    h.connected(0, 0);
    assert!(h.take_upstream(0).starts_with("GET / HTTP/1.1\r\nHost: \r\n"));
    h.upstream(0, OK5);
    assert_eq!(
        h.take_client(),
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    assert!(h.client_closed);

    // HTTP/1.0 keep-alive, chunked upstream: must become close-delimited.
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    h.connected(0, 0);
    h.upstream(0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(
        h.take_client(),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
    );
    assert!(!h.client_closed);
    h.client(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    h.upstream(
        0,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    );
    assert_eq!(h.take_client(), "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nok");
    assert!(h.client_closed);

    // HTTP/1.1 with Connection: close.
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    h.connected(0, 0);
    h.upstream(0, OK5);
    assert!(h.take_client().contains("Connection: close\r\n") && h.client_closed);

    // Until-close upstream body to an HTTP/1.1 client: chunked, client kept, upstream closed.
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 0);
    h.upstream(0, b"HTTP/1.0 200 OK\r\n\r\nstream");
    h.p.handle_upstream_eof(h.now, UpstreamId(0));
    h.drain();
    assert_eq!(
        h.take_client(),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nstream\r\n0\r\n\r\n"
    );
    assert!(!h.client_closed);
    assert_eq!(h.upstream_closed, vec![UpstreamId(0)]);
    // The server said close: next request opens a new upstream.
    let mut h2 = Harness::new();
    h2.client(GET);
    h2.connected(0, 0);
    h2.upstream(0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(h2.upstream_closed, vec![UpstreamId(0)]);
    h2.client(GET);
    assert_eq!(h2.connects.len(), 2);
}

#[test]
fn bodiless_responses_head_204_304() {
    let mut h = Harness::new();
    h.client(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
    h.connected(0, 0);
    h.upstream(0, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
    assert_eq!(h.take_client(), "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
    for (status, len) in [("204 No Content", ""), ("304 Not Modified", "Content-Length: 50\r\n")] {
        h.client(GET);
        h.upstream(0, format!("HTTP/1.1 {status}\r\n{len}\r\n").as_bytes());
        assert_eq!(h.take_client(), format!("HTTP/1.1 {status}\r\n{len}\r\n"));
    }
    // The upstream is still in step: a normal response follows.
    h.client(GET);
    h.upstream(0, OK5);
    assert!(h.take_client().ends_with("hello"));
    assert_eq!(h.connects.len(), 1);
}

#[test]
fn rules_redirect_fixed_and_groups() {
    let mut h = Harness::new();
    h.client(b"GET /x?y=1 HTTP/1.1\r\nHost: old.example.com:8080\r\n\r\n");
    assert_eq!(
        h.take_client(),
        "HTTP/1.1 308 Permanent Redirect\r\nLocation: https://old.example.com/x?y=1\r\nContent-Length: 0\r\n\r\n"
    );
    h.client(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        h.take_client(),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
    );
    h.client(b"HEAD /health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(h.take_client(), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.connects.is_empty() && !h.client_closed);
    // A local answer to a request with a body closes (the body is not read).
    h.client(b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
    assert!(h.take_client().contains("Connection: close\r\n") && h.client_closed);
    let mut h = Harness::new();
    h.client(b"GET http://api.example.com/v1 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(h.connects, vec![(UpstreamId(0), GroupId(1), None)]);
    h.connected(0, 0);
    assert!(h.take_upstream(0).starts_with("GET /v1 HTTP/1.1\r\nHost: a\r\n"));
}

#[test]
fn upstream_failures() {
    let failures = [
        (UpstreamFailure::NoHealthyServer, "503 Service Unavailable"),
        (UpstreamFailure::Refused, "502 Bad Gateway"),
    ];
    for (f, status) in failures {
        let mut h = Harness::new();
        h.client(GET);
        h.p.handle_upstream_failed(h.now, UpstreamId(0), f);
        h.drain();
        if f == UpstreamFailure::Refused {
            // A GET is tried on up to MAX_CONNECT_ATTEMPTS connections before the 502.
            for id in 1..u32::from(MAX_CONNECT_ATTEMPTS) {
                assert_eq!(h.connects.len(), id as usize + 1, "retry {id}");
                h.p.handle_upstream_failed(h.now, UpstreamId(id), f);
                h.drain();
            }
        }
        assert!(h.take_client().starts_with(&format!("HTTP/1.1 {status}\r\n")));
        assert!(
            !h.client_closed,
            "the request was read whole: the client connection stays"
        );
        assert!(h.events.contains(&Event::UpstreamFailed(f)));
        h.client(GET);
        let tried = if f == UpstreamFailure::Refused {
            MAX_CONNECT_ATTEMPTS as usize
        } else {
            1
        };
        assert_eq!(h.connects.len(), tried + 1, "next request, new upstream");
    }
    // Reset before the response: 502.
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 0);
    h.p.handle_upstream_failed(h.now, UpstreamId(0), UpstreamFailure::Reset);
    h.drain();
    assert!(h.take_client().starts_with("HTTP/1.1 502 "));
    // Server closes before answering: 502.
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 0);
    h.p.handle_upstream_eof(h.now, UpstreamId(0));
    h.drain();
    assert!(h.take_client().starts_with("HTTP/1.1 502 "));
    // Bad response head: 502, named.
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 0);
    h.upstream(0, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    assert!(h.take_client().starts_with("HTTP/1.1 502 "));
    assert!(h
        .events
        .contains(&Event::UpstreamRefused(Refusal::DuplicateContentLength)));
    // Truncated body after the head was sent: the client connection is closed (no second status).
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 0);
    h.upstream(0, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    h.p.handle_upstream_eof(h.now, UpstreamId(0));
    h.drain();
    assert!(h.client_closed && h.events.contains(&Event::Aborted));
    assert_eq!(h.take_client().matches("HTTP/1.1").count(), 1);
    // Bad chunk from upstream mid-body: closed.
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 0);
    h.upstream(0, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    assert!(h.client_closed && h.events.contains(&Event::UpstreamRefused(Refusal::BadChunk)));
}

#[test]
fn early_response_during_upload_closes_client() {
    let mut h = Harness::new();
    h.client(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789");
    h.connected(0, 0);
    h.upstream(0, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
    assert!(h.take_client().starts_with("HTTP/1.1 403 Forbidden\r\n"));
    assert!(h.client_closed && h.upstream_closed == vec![UpstreamId(0)]);
}

#[test]
fn timeouts() {
    let limits = L7Config::default();
    // Idle keep-alive: closed silently.
    let mut h = Harness::new();
    assert_eq!(
        h.p.poll_timeout(),
        Some(h.now + Duration::from_secs(limits.client_idle_timeout_s))
    );
    h.advance(74);
    assert!(!h.client_closed);
    h.advance(1);
    assert!(h.client_closed && h.take_client().is_empty());
    assert_eq!(h.events, vec![Event::Timeout(Timer::ClientIdle)]);
    // Head not complete in time: 408.
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.1\r\n");
    h.advance(limits.client_header_timeout_s);
    assert!(h.take_client().starts_with("HTTP/1.1 408 ") && h.client_closed);
    // Body pauses: 408 (nothing of the response sent yet).
    let mut h = Harness::new();
    h.client(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n");
    h.connected(0, 0);
    h.advance(30);
    h.client(b"12345");
    h.advance(59);
    assert!(!h.client_closed, "the body timer runs from the last read");
    h.advance(1);
    assert!(h.take_client().starts_with("HTTP/1.1 408 ") && h.client_closed);
    // The body timer does not run while xlb waits for the upstream connection (it is not reading).
    let mut h = Harness::new();
    h.client(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n");
    h.advance(59);
    h.connected(0, 0);
    h.advance(59);
    assert!(!h.client_closed);
    h.advance(1);
    assert!(h.take_client().starts_with("HTTP/1.1 408 "));
    // Upstream connect: 504 (after the retries of a GET).
    let mut h = Harness::new();
    h.client(GET);
    for _ in 0..MAX_CONNECT_ATTEMPTS {
        h.advance(limits.upstream_connect_timeout_s);
    }
    assert!(h.take_client().starts_with("HTTP/1.1 504 "));
    assert_eq!(h.upstream_closed, vec![UpstreamId(0), UpstreamId(1), UpstreamId(2)]);
    assert!(h.events.contains(&Event::Timeout(Timer::UpstreamConnect)));
    // No response: 504; the client connection is kept (request read whole).
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 0);
    h.advance(limits.upstream_response_timeout_s);
    assert!(h.take_client().starts_with("HTTP/1.1 504 ") && !h.client_closed);
    // Response pauses mid-body: both closed.
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 0);
    h.upstream(0, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    h.advance(limits.upstream_response_timeout_s);
    assert!(h.client_closed && h.events.contains(&Event::Aborted));
    // After a response, the idle timer runs again.
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 0);
    h.advance(50);
    h.upstream(0, OK5);
    assert_eq!(
        h.p.poll_timeout(),
        Some(h.now + Duration::from_secs(limits.client_idle_timeout_s))
    );
}

#[test]
fn client_half_close_still_gets_response() {
    let mut h = Harness::new();
    h.client(GET);
    h.p.handle_client_eof(h.now);
    h.drain();
    assert!(!h.client_closed);
    h.connected(0, 0);
    h.upstream(0, OK5);
    assert!(h.take_client().ends_with("hello"));
    assert!(h.client_closed);
    // Pipelined requests then FIN: every complete request is answered, then the connection closes.
    let mut h = Harness::new();
    h.client(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3 HTT");
    h.p.handle_client_eof(h.now);
    h.drain();
    h.connected(0, 0);
    h.upstream(0, OK5);
    assert!(!h.client_closed);
    assert!(h.take_upstream(0).contains("GET /2 "));
    h.upstream(0, OK5);
    assert!(h.client_closed);
    let out = h.take_client();
    assert_eq!(out.matches("hello").count(), 2);
    assert!(out.ends_with("Connection: close\r\n\r\nhello"), "{out}");
    // Mid-body EOF: aborted.
    let mut h = Harness::new();
    h.client(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n123");
    h.p.handle_client_eof(h.now);
    h.drain();
    assert!(h.client_closed && h.events.contains(&Event::Aborted));
}

#[test]
fn sticky_insert() {
    let sticky = StickyConfig {
        mode: StickyMode::Insert,
        cookie: "XLB".into(),
        timeout_s: 600,
    };
    let mut h = Harness::with(L7Config::default(), Some(sticky));
    h.client(GET);
    assert_eq!(h.connects[0].2, None);
    h.connected(0, 7);
    h.upstream(0, OK5);
    let out = h.take_client();
    let line = out
        .lines()
        .find(|l| l.starts_with("Set-Cookie: XLB="))
        .expect("cookie inserted");
    assert!(line.ends_with("; Max-Age=600; Path=/; HttpOnly"));
    assert!(!line.contains('7') || line.len() > 20, "opaque");
    let token = &line["Set-Cookie: XLB=".len().."Set-Cookie: XLB=".len() + 16];
    // A new connection carrying the cookie asks for server 7.
    let mut h2 = Harness::with(L7Config::default(), h.p.cfg.sticky.clone());
    h2.client(format!("GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1; XLB={token}\r\n\r\n").as_bytes());
    assert_eq!(h2.connects[0].2, Some(ServerId(7)));
    h2.connected(0, 7);
    assert!(h2.take_upstream(0).contains(&format!("Cookie: a=1; XLB={token}\r\n")));
    h2.upstream(0, OK5);
    assert!(!h2.take_client().contains("Set-Cookie"), "same server: no new cookie");
    // The datapath chose another server (7 down): the cookie is replaced.
    h2.client(b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    h2.connected(1, 8);
    h2.upstream(1, OK5);
    assert!(h2.take_client().contains("Set-Cookie: XLB="));
}

#[test]
fn sticky_rewrite() {
    let sticky = StickyConfig {
        mode: StickyMode::Rewrite,
        cookie: "SID".into(),
        timeout_s: 0,
    };
    let mut h = Harness::with(L7Config::default(), Some(sticky));
    h.client(GET);
    h.connected(0, 2);
    h.upstream(
        0,
        b"HTTP/1.1 200 OK\r\nSet-Cookie: SID=abc; Path=/\r\nContent-Length: 0\r\n\r\n",
    );
    let out = h.take_client();
    let v = out
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: SID="))
        .unwrap()
        .to_owned();
    assert!(
        v.ends_with(".abc; Path=/") && v.len() == 16 + ".abc; Path=/".len(),
        "{v}"
    );
    h.client(
        format!(
            "GET / HTTP/1.1\r\nHost: api.example.com\r\nCookie: SID={}\r\n\r\n",
            &v[..20]
        )
        .as_bytes(),
    );
    assert_eq!(h.connects[1].2, Some(ServerId(2)));
    h.connected(1, 2);
    let up = h.take_upstream(1);
    assert!(
        up.contains("Cookie: SID=abc\r\n"),
        "the server sees its own value: {up}"
    );
}

/// Upstream bytes with chunk framing removed (re-chunking follows the pieces the body arrived in).
fn normalize(up: Vec<u8>) -> (String, Vec<u8>, bool) {
    let Some(split) = up.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
        return (String::from_utf8_lossy(&up).into_owned(), Vec::new(), false);
    };
    let head = String::from_utf8_lossy(&up[..split]).into_owned();
    if !head.contains("Transfer-Encoding: chunked") {
        return (head, up[split..].to_vec(), false);
    }
    let mut d = BodyDecoder::new(BodyFraming::Chunked, u64::MAX, 4096);
    let mut rest = &up[split..];
    let mut data = Vec::new();
    loop {
        match d.decode(rest).expect("xlb's own chunking is valid") {
            (n, Some(BodyEvent::Data(x))) => {
                data.extend_from_slice(x);
                rest = &rest[n..];
            }
            (n, Some(BodyEvent::End)) => {
                data.extend_from_slice(d.trailers());
                data.extend_from_slice(&rest[n..]);
                return (head, data, true);
            }
            (_, None) => return (head, data, false),
        }
    }
}

/// Random bytes never panic the proxy, and how a stream is split never changes what comes out.
#[test]
fn fuzz_random_bytes_and_split_points() {
    let mut rng = Rng::new(1234);
    let alphabet: &[u8] =
        b"GET POST HTTP/1.1\r\n:Host a Content-Length Transfer-Encoding chunked 0123456789abcdef;, \t\x00\x7f\xff";
    let valid: &[u8] = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /y HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\nhi";
    for round in 0..400 {
        let input: Vec<u8> = if round % 2 == 0 {
            (0..rng.below(400))
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect()
        } else {
            // A valid stream with a few bytes mutated.
            let mut v = valid.to_vec();
            for _ in 0..rng.below(4) {
                let i = rng.below(v.len());
                v[i] = alphabet[rng.below(alphabet.len())];
            }
            v
        };
        let run = |pieces: &mut dyn FnMut() -> usize| {
            let mut h = Harness::new();
            let mut at = 0;
            while at < input.len() {
                let n = pieces().clamp(1, input.len() - at);
                h.client(&input[at..at + n]);
                if h.connects.len() == 1 && h.to_upstream.is_empty() && !h.client_closed {
                    h.connected(0, 0);
                }
                at += n;
            }
            if h.connects.len() == 1 && !h.client_closed {
                h.connected(0, 0);
            }
            let mut up = normalize(h.to_upstream.remove(&0).unwrap_or_default());
            if h.events.iter().any(|e| matches!(e, Event::ClientRefused(_))) {
                // A refused request's body may have been partly forwarded (how much depends on the pieces); the
                // upstream connection is closed with it, never reused.
                assert!(h.upstream_closed.len() == h.connects.len());
                up.1.clear();
            }
            // Each run has its own clock: compare events without the request times.
            let events: Vec<Event> = h
                .events
                .iter()
                .map(|e| match e {
                    Event::Answered { status, local, .. } => Event::Answered {
                        status: *status,
                        local: *local,
                        started: None,
                    },
                    e => *e,
                })
                .collect();
            (h.take_client(), up, h.client_closed, events)
        };
        let whole = run(&mut || usize::MAX);
        let bytewise = run(&mut || 1);
        let mut r2 = Rng::new(round);
        let random = run(&mut || r2.below(20) + 1);
        assert_eq!(whole, bytewise, "input {:?}", String::from_utf8_lossy(&input));
        assert_eq!(whole, random, "input {:?}", String::from_utf8_lossy(&input));
    }
    // Parsers alone on random bytes.
    for _ in 0..2000 {
        let input: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
        let _ = parse_request(&input);
        let _ = parse_response(&input, false);
        let _ = HeadScanner::default().scan(&input);
        let mut d = BodyDecoder::new(BodyFraming::Chunked, 1000, 100);
        let _ = d.decode(&input);
    }
}

#[test]
fn idle_upstreams_are_released_for_reuse_and_others_closed() {
    // The client goes away after a complete kept-alive exchange: the upstream is handed back, not closed.
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 1);
    h.upstream(0, OK5);
    h.p.handle_client_eof(h.now);
    h.drain();
    assert!(h.client_closed);
    assert_eq!(h.released, vec![UpstreamId(0)]);

    // A request to another group on the same client connection: the idle one is released, a new one opened.
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 1);
    h.upstream(0, OK5);
    h.client(b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    assert_eq!(h.released, vec![UpstreamId(0)]);
    assert_eq!(h.connects.last(), Some(&(UpstreamId(1), GroupId(1), None)));

    // The client leaves mid-response: that upstream is closed, never released.
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 1);
    h.upstream(0, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe");
    h.p.handle_client_eof(h.now);
    h.advance(61);
    assert!(h.released.is_empty());
    assert_eq!(h.upstream_closed, vec![UpstreamId(0)]);

    // An upstream whose response said `Connection: close` is closed, and one that sent FIN while idle too.
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 1);
    h.upstream(0, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    h.p.handle_client_eof(h.now);
    h.drain();
    assert!(h.released.is_empty());
    // Released after the response: what the server does with it later is the pool's business (an EOF for it
    // reaches the proxy no more and changes nothing).
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 1);
    h.upstream(0, OK5);
    assert_eq!(h.released, vec![UpstreamId(0)]);
    h.p.handle_upstream_eof(h.now, UpstreamId(0));
    h.drain();
    assert!(!h.client_closed && h.take_client().ends_with("hello"));
}

#[test]
fn idempotent_requests_are_retried_when_connecting_fails() {
    // A GET: the second connection gets the same request head; one Retried event per new attempt.
    let mut h = Harness::new();
    h.client(GET);
    h.p.handle_upstream_failed(h.now, UpstreamId(0), UpstreamFailure::Refused);
    h.drain();
    assert_eq!(h.connects.last(), Some(&(UpstreamId(1), GroupId(0), None)));
    h.connected(1, 2);
    assert!(h
        .take_upstream(1)
        .starts_with("GET /a HTTP/1.1\r\nHost: www.example.com\r\n"));
    h.upstream(1, OK5);
    assert!(h.take_client().ends_with("hello"));
    assert_eq!(h.events.iter().filter(|e| **e == Event::Retried).count(), 1);

    // A POST is not retried: 502 at once.
    let mut h = Harness::new();
    h.client(b"POST /a HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 3\r\n\r\nabc");
    h.p.handle_upstream_failed(h.now, UpstreamId(0), UpstreamFailure::Refused);
    h.drain();
    assert!(h.take_client().starts_with("HTTP/1.1 502 "));
    assert_eq!(h.connects.len(), 1);

    // A reset after the connection was established is not retried either (the request may have been seen).
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 0);
    h.p.handle_upstream_failed(h.now, UpstreamId(0), UpstreamFailure::Reset);
    h.drain();
    assert!(h.take_client().starts_with("HTTP/1.1 502 "));
    assert_eq!(h.connects.len(), 1);
}

#[test]
fn an_idle_connection_releases_its_kept_buffers_and_serves_the_next_request() {
    let mut h = Harness::new();
    h.client(GET);
    h.connected(0, 1);
    h.upstream(0, OK5);
    assert!(h.take_client().ends_with("hello"));
    assert!(h.p.is_waiting());
    h.p.release_idle_buffers();
    assert_eq!(
        h.p.head.capacity() + h.p.resp_head.capacity() + h.p.to_client.capacity() + h.p.spare.len(),
        0
    );
    h.client(GET);
    h.upstream(0, OK5);
    assert!(
        h.take_client().ends_with("hello"),
        "the next request is served as before"
    );
    // Not between requests: nothing is released.
    h.client(b"GET /b HTTP/1.1\r\nHost: a\r\n");
    h.p.release_idle_buffers();
    assert!(!h.p.head.is_empty());
}

const H2C: &[u8] = b"GET /a HTTP/1.1\r\nHost: www.example.com\r\nConnection: Upgrade, HTTP2-Settings\r\n\
    Upgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n";

#[test]
fn an_offered_h2c_upgrade_hands_the_connection_over_leaving_the_http2_bytes() {
    let mut h = Harness::new();
    h.p.offer_h2c();
    h.client(H2C);
    h.client(crate::h2::PREFACE);
    assert!(h.h2c && h.connects.is_empty() && h.to_client.is_empty());
    assert_eq!(
        h.client_pending,
        crate::h2::PREFACE,
        "the HTTP/2 bytes are left for the front"
    );
    assert_eq!(h.p.poll_timeout(), None);
    assert!(h.p.is_closed() && !h.p.wants_client_bytes());
}

#[test]
fn h2c_is_ignored_unless_offered_and_only_on_the_first_request_without_a_body() {
    // Not offered (HTTP/2 off, or HTTPS): an ordinary request, Upgrade not forwarded.
    let mut h = Harness::new();
    h.client(H2C);
    h.connected(0, 0);
    assert!(!h.h2c);
    let up = h.take_upstream(0);
    assert!(
        up.starts_with("GET /a HTTP/1.1\r\n") && !up.to_ascii_lowercase().contains("h2c"),
        "{up}"
    );
    // Offered, but with a body: answered over HTTP/1.1.
    let mut h = Harness::new();
    h.p.offer_h2c();
    let post = String::from_utf8_lossy(H2C)
        .replace("GET", "POST")
        .replace("\r\n\r\n", "\r\nContent-Length: 2\r\n\r\nhi");
    h.client(post.as_bytes());
    h.connected(0, 0);
    assert!(!h.h2c);
    assert!(h.take_upstream(0).ends_with("\r\n\r\nhi"));
    // Offered, then a second request asks: the offer was for the first one only.
    h.upstream(0, OK5);
    h.client(H2C);
    assert!(!h.h2c && h.take_client().ends_with("hello"));
}
