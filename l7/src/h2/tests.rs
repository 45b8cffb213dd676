//! [`H2Front`] against a real `h2` client on the same no-op-waker poll loop (in-memory pipes), and against
//! hand-built frames for the abuse cases.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ::h2::client::{self, SendRequest};
use ::h2::{Reason, RecvStream};
use bytes::Bytes;
use http::{HeaderMap, Request, Response};

use super::io::{MemIo, Pipe};
use super::*;
use crate::testutil::{pattern, Rng};

type ClientConn = Pin<Box<client::Connection<MemIo, Bytes>>>;

/// A client and a front joined by in-memory pipes; the test plays the per-stream proxies.
struct Pair {
    front: H2Front,
    cio: MemIo,
    conn: Option<ClientConn>,
    events: Vec<H2Event>,
    now: Instant,
    /// Time spent inside the front's calls (for the bench).
    front_time: Duration,
}

fn cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

fn pipe() -> MemIo {
    MemIo(Arc::new(Mutex::new(Pipe {
        max_outbound: usize::MAX,
        ..Pipe::default()
    })))
}

impl Pair {
    fn new(limits: &H2Limits) -> (Pair, SendRequest<Bytes>) {
        let mut pair = Pair {
            front: H2Front::new(limits),
            cio: pipe(),
            conn: None,
            events: Vec::new(),
            now: Instant::now(),
            front_time: Duration::ZERO,
        };
        // A large client connection window: the tests read streams in any order.
        let mut hs = Box::pin(
            client::Builder::new()
                .initial_connection_window_size(16 << 20)
                .handshake(pair.cio.clone()),
        );
        let (send, conn) = pair.run(&mut hs).expect("client handshake");
        pair.conn = Some(Box::pin(conn));
        (pair, send)
    }

    /// Moves bytes both ways and polls both sides until nothing moves.
    fn pump(&mut self) {
        for _ in 0..1000 {
            if let Some(c) = self.conn.as_mut() {
                if let Poll::Ready(r) = c.as_mut().poll(&mut cx()) {
                    r.expect("client connection");
                    self.conn = None;
                }
            }
            let mut moved = false;
            let t = Instant::now();
            let out = std::mem::take(&mut self.cio.lock().outbound);
            if !out.is_empty() {
                let n = self.front.handle_client_bytes(self.now, &out);
                moved |= n > 0;
                let mut p = self.cio.lock();
                let mut rest = out[n..].to_vec();
                rest.extend_from_slice(&p.outbound);
                p.outbound = rest;
            }
            while let Some(b) = self.front.poll_transmit(self.now) {
                moved = true;
                self.cio.lock().inbound.extend_from_slice(&b);
            }
            while let Some(e) = self.front.poll_event(self.now) {
                self.events.push(e);
            }
            self.front_time += t.elapsed();
            if !moved {
                return;
            }
        }
        panic!("pump did not settle");
    }

    /// Polls `fut` (a client operation), pumping between polls.
    fn run<T>(&mut self, fut: &mut Pin<Box<impl Future<Output = T> + ?Sized>>) -> T {
        for _ in 0..1000 {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx()) {
                return v;
            }
            self.pump();
        }
        panic!("future did not complete");
    }

    fn take_events(&mut self) -> Vec<H2Event> {
        self.pump();
        std::mem::take(&mut self.events)
    }

    /// The whole response body (releasing client capacity as it goes) and trailers.
    fn read_body(&mut self, body: &mut RecvStream) -> (Vec<u8>, Option<HeaderMap>) {
        let mut out = Vec::new();
        loop {
            let mut fut = Box::pin(std::future::poll_fn(|cx| body.poll_data(cx)));
            match self.run(&mut fut) {
                Some(Ok(d)) => {
                    out.extend_from_slice(&d);
                    let _ = body.flow_control().release_capacity(d.len());
                }
                Some(Err(e)) => panic!("body error {e:?}"),
                None => break,
            }
        }
        let mut fut = Box::pin(std::future::poll_fn(|cx| body.poll_trailers(cx)));
        let trailers = self.run(&mut fut).expect("trailers");
        (out, trailers)
    }

    /// Gives the whole response to the front, stream by stream, with the client reading.
    fn respond(&mut self, stream: StreamRef, bytes: &[u8]) {
        let mut at = 0;
        for _ in 0..10_000 {
            at += self.front.send_response_bytes(stream, &bytes[at..]);
            self.pump();
            if at == bytes.len() {
                return;
            }
        }
        panic!("response not taken");
    }
}

fn get(uri: &str) -> Request<()> {
    Request::builder().uri(uri).body(()).unwrap()
}

fn send(
    pair: &mut Pair,
    client: &mut SendRequest<Bytes>,
    req: Request<()>,
    end: bool,
) -> (::h2::client::ResponseFuture, ::h2::SendStream<Bytes>) {
    let mut ready = Box::pin(std::future::poll_fn(|cx| client.poll_ready(cx)));
    pair.run(&mut ready).expect("ready");
    client.send_request(req, end).expect("send_request")
}

fn response(pair: &mut Pair, fut: ::h2::client::ResponseFuture) -> Response<RecvStream> {
    let mut fut = Box::pin(fut);
    pair.run(&mut fut).expect("response")
}

pub(super) fn request_of(events: &[H2Event]) -> (StreamRef, Vec<u8>) {
    events
        .iter()
        .find_map(|e| match e {
            H2Event::Request { stream, head } => Some((*stream, head.clone())),
            _ => None,
        })
        .expect("a request")
}

fn body_of(events: &[H2Event], s: StreamRef) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        if let H2Event::RequestBody { stream, data } = e {
            if *stream == s {
                out.extend_from_slice(data);
            }
        }
    }
    out
}

pub(super) fn counts(events: &[H2Event]) -> Vec<H2Count> {
    events
        .iter()
        .filter_map(|e| match e {
            H2Event::Count(c) => Some(*c),
            _ => None,
        })
        .collect()
}

#[test]
fn sniff_cases() {
    assert_eq!(H2Front::sniff(b""), Sniff::NeedMore);
    assert_eq!(H2Front::sniff(b"PRI * HT"), Sniff::NeedMore);
    assert_eq!(H2Front::sniff(PREFACE), Sniff::H2);
    assert_eq!(H2Front::sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"), Sniff::H2);
    assert_eq!(H2Front::sniff(b"GET / HTTP/1.1\r\n"), Sniff::Http1);
    assert_eq!(H2Front::sniff(b"P"), Sniff::NeedMore);
    assert_eq!(H2Front::sniff(b"PUT"), Sniff::Http1);
    assert_eq!(H2Front::sniff(b"PRI * HTTP/1.1\r\n"), Sniff::Http1);
}

#[test]
fn get_maps_to_exact_head_and_response_drops_hop_by_hop() {
    let (mut pair, mut client) = Pair::new(&H2Limits::default());
    let req = Request::builder()
        .uri("http://example.com/a/b?x=1")
        .header("user-agent", "t/1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (fut, _) = send(&mut pair, &mut client, req, true);
    let events = pair.take_events();
    let (s, head) = request_of(&events);
    assert_eq!(
        String::from_utf8_lossy(&head),
        "GET /a/b?x=1 HTTP/1.1\r\nHost: example.com\r\nuser-agent: t/1\r\ncookie: a=1; b=2\r\n\r\n"
    );
    assert_eq!(s, StreamRef(1));
    assert_eq!(events[1], H2Event::RequestEnd { stream: s });
    pair.respond(
        s,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\n\
          Keep-Alive: timeout=5\r\nX-Hop: 1\r\nX-A: 1\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\nhello",
    );
    let resp = response(&mut pair, fut);
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["x-a"], "1");
    assert_eq!(h["content-length"], "5");
    assert_eq!(h.get_all("set-cookie").iter().count(), 2);
    for gone in ["connection", "keep-alive", "x-hop"] {
        assert!(h.get(gone).is_none(), "{gone}");
    }
    let mut body = resp.into_body();
    assert_eq!(pair.read_body(&mut body), (b"hello".to_vec(), None));
    assert!(counts(&pair.take_events()).is_empty());
}

#[test]
fn interim_responses_reach_the_client_before_the_final_one() {
    let (mut pair, mut client) = Pair::new(&H2Limits::default());
    let req = Request::builder()
        .method("POST")
        .uri("http://h/up")
        .header("expect", "100-continue")
        .header("content-length", "2")
        .body(())
        .unwrap();
    let (mut fut, mut body) = send(&mut pair, &mut client, req, false);
    let events = pair.take_events();
    let (s, head) = request_of(&events);
    assert!(String::from_utf8_lossy(&head).contains("\r\nexpect: 100-continue\r\n"));
    // The stream's proxy answers the Expect itself, before any body byte.
    pair.respond(s, b"HTTP/1.1 100 Continue\r\n\r\n");
    let mut info = Box::pin(std::future::poll_fn(|cx| fut.poll_informational(cx)));
    let got = pair.run(&mut info).expect("an informational response").expect("ok");
    assert_eq!(got.status(), 100);
    drop(info);
    body.send_data(Bytes::from_static(b"hi"), true).expect("body");
    assert_eq!(body_of(&pair.take_events(), s), b"hi");
    // Early Hints from the server (fields kept, hop-by-hop ones dropped), then the final response.
    pair.respond(
        s,
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    let mut info = Box::pin(std::future::poll_fn(|cx| fut.poll_informational(cx)));
    let hints = pair.run(&mut info).expect("Early Hints").expect("ok");
    assert_eq!(hints.status(), 103);
    assert_eq!(hints.headers()["link"], "</s.css>; rel=preload");
    assert!(hints.headers().get("x-hop").is_none());
    let mut info = Box::pin(std::future::poll_fn(|cx| fut.poll_informational(cx)));
    assert!(pair.run(&mut info).is_none(), "the final response is next");
    drop(info);
    let resp = response(&mut pair, fut);
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    assert_eq!(pair.read_body(&mut body), (b"ok".to_vec(), None));
    assert!(counts(&pair.take_events()).is_empty());
}

#[test]
fn post_with_content_length_and_chunked() {
    let (mut pair, mut client) = Pair::new(&H2Limits::default());
    let req = Request::builder()
        .method("POST")
        .uri("http://h/up")
        .header("content-length", "11")
        .body(())
        .unwrap();
    let (_fut, mut body) = send(&mut pair, &mut client, req, false);
    body.send_data(Bytes::from_static(b"hello "), false).unwrap();
    body.send_data(Bytes::from_static(b"world"), true).unwrap();
    let events = pair.take_events();
    let (s, head) = request_of(&events);
    assert_eq!(head, b"POST /up HTTP/1.1\r\nHost: h\r\ncontent-length: 11\r\n\r\n");
    assert_eq!(body_of(&events, s), b"hello world");
    assert_eq!(events.last(), Some(&H2Event::RequestEnd { stream: s }));

    let req = Request::builder().method("PUT").uri("http://h/c").body(()).unwrap();
    let (_fut, mut body) = send(&mut pair, &mut client, req, false);
    body.send_data(Bytes::from_static(b"abc"), false).unwrap();
    let events = pair.take_events();
    let (s, head) = request_of(&events);
    assert_eq!(
        head,
        b"PUT /c HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    body.send_data(Bytes::from_static(b"defg"), false).unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", "7".parse().unwrap());
    body.send_trailers(trailers).unwrap();
    let mut all = events;
    all.extend(pair.take_events());
    assert_eq!(body_of(&all, s), b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nx-sum: 7\r\n\r\n");
    assert_eq!(all.last(), Some(&H2Event::RequestEnd { stream: s }));
}

#[test]
fn chunked_and_close_delimited_responses() {
    let (mut pair, mut client) = Pair::new(&H2Limits::default());
    let (fut, _) = send(&mut pair, &mut client, get("http://h/1"), true);
    let (s, _) = request_of(&pair.take_events());
    pair.respond(
        s,
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-B: 2\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 9\r\n\r\n",
    );
    let resp = response(&mut pair, fut);
    assert_eq!(resp.status(), 201);
    assert!(resp.headers().get("transfer-encoding").is_none());
    assert_eq!(resp.headers()["x-b"], "2");
    let (body, trailers) = pair.read_body(&mut resp.into_body());
    assert_eq!(body, b"hello world");
    assert_eq!(trailers.unwrap()["x-t"], "9");

    let (fut, _) = send(&mut pair, &mut client, get("http://h/2"), true);
    let (s, _) = request_of(&pair.take_events());
    pair.respond(s, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc");
    pair.respond(s, b"def");
    pair.front.end_response(s, true);
    let resp = response(&mut pair, fut);
    assert_eq!(pair.read_body(&mut resp.into_body()), (b"abcdef".to_vec(), None));

    // HEAD: the length is kept, no body.
    let req = Request::builder().method("HEAD").uri("http://h/3").body(()).unwrap();
    let (fut, _) = send(&mut pair, &mut client, req, true);
    let (s, _) = request_of(&pair.take_events());
    pair.respond(s, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
    let resp = response(&mut pair, fut);
    assert_eq!(resp.headers()["content-length"], "1234");
    assert!(resp.into_body().is_end_stream());
}

#[test]
fn one_mebibyte_response_with_backpressure() {
    let (mut pair, mut client) = Pair::new(&H2Limits::default());
    let (fut, _) = send(&mut pair, &mut client, get("http://h/big"), true);
    let (s, _) = request_of(&pair.take_events());
    let body = pattern(1 << 20);
    let mut msg = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    msg.extend_from_slice(&body);
    // Without the client reading, the front takes at most its window plus its send buffer.
    let mut at = 0;
    loop {
        let n = pair.front.send_response_bytes(s, &msg[at..]);
        pair.pump();
        if n == 0 {
            break;
        }
        at += n;
    }
    assert!(at < 200 << 10, "backpressure: took {at}");
    assert!(at > 64 << 10);
    let resp = response(&mut pair, fut);
    let mut recv = resp.into_body();
    let mut got = Vec::new();
    let mut refused = 0;
    // The rest is offered again only when the front says the stream has room (a missing `Writable` stalls).
    let mut writable = false;
    while got.len() < body.len() {
        writable |= pair.events.drain(..).any(|e| e == H2Event::Writable { stream: s });
        if at < msg.len() && writable {
            let n = pair.front.send_response_bytes(s, &msg[at..]);
            writable = n == msg.len() - at;
            refused += usize::from(!writable);
            at += n;
        }
        pair.pump();
        let mut fut = Box::pin(std::future::poll_fn(|cx| recv.poll_data(cx)));
        let d = pair.run(&mut fut).expect("data").expect("data ok");
        let _ = recv.flow_control().release_capacity(d.len());
        got.extend_from_slice(&d);
    }
    assert!(got == body, "byte-exact");
    assert!(refused > 5, "window kept refusing: {refused}");
    let mut fut = Box::pin(std::future::poll_fn(|cx| recv.poll_data(cx)));
    assert!(pair.run(&mut fut).is_none(), "end of stream");
}

#[test]
fn many_concurrent_streams_interleaved() {
    let (mut pair, mut client) = Pair::new(&H2Limits::default());
    let mut futs = Vec::new();
    for i in 0..40 {
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://h/{i}"))
            .body(())
            .unwrap();
        let (fut, mut body) = send(&mut pair, &mut client, req, false);
        body.send_data(Bytes::from(pattern(1000 + i)), true).unwrap();
        futs.push(fut);
    }
    let events = pair.take_events();
    let mut streams = Vec::new();
    for e in &events {
        if let H2Event::Request { stream, head } = e {
            streams.push((*stream, head.clone()));
        }
    }
    assert_eq!(streams.len(), 40);
    let mut rng = Rng::new(5);
    let mut msgs = Vec::new();
    for (i, (s, head)) in streams.iter().enumerate() {
        assert!(head.starts_with(format!("POST /{i} HTTP/1.1\r\n").as_bytes()));
        let mut expect = Vec::new();
        crate::http1::body::encode_chunk(&pattern(1000 + i), &mut expect);
        expect.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(body_of(&events, *s), expect, "stream {i}");
        let body = pattern(5000 + i);
        let mut m = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        m.extend_from_slice(&body);
        msgs.push((*s, m, 0usize));
    }
    // Pieces of every response in random order.
    while msgs.iter().any(|(_, m, at)| *at < m.len()) {
        let k = rng.below(msgs.len());
        let (s, m, at) = &mut msgs[k];
        let end = (*at + rng.below(700) + 1).min(m.len());
        *at += pair.front.send_response_bytes(*s, &m[*at..end]);
        pair.pump();
    }
    for (i, fut) in futs.into_iter().enumerate().rev() {
        let resp = response(&mut pair, fut);
        let (body, _) = pair.read_body(&mut resp.into_body());
        assert!(body == pattern(5000 + i), "stream {i}");
    }
}

#[test]
fn request_body_credit_follows_consumption() {
    let limits = H2Limits::default();
    let (mut pair, mut client) = Pair::new(&limits);
    let req = Request::builder()
        .method("POST")
        .uri("http://h/up")
        .header("content-length", "300000")
        .body(())
        .unwrap();
    let (_fut, mut body) = send(&mut pair, &mut client, req, false);
    let data = pattern(300_000);
    body.send_data(Bytes::from(data.clone()), true).unwrap();
    let events = pair.take_events();
    let (s, _) = request_of(&events);
    let mut got = body_of(&events, s);
    assert_eq!(got.len(), limits.initial_window as usize, "stalls at the stream window");
    let mut ended = false;
    for _ in 0..100 {
        let n = got.len();
        pair.front.request_bytes_taken(s, n);
        let events = pair.take_events();
        got.extend(body_of(&events, s));
        ended |= events.contains(&H2Event::RequestEnd { stream: s });
        if ended {
            break;
        }
    }
    assert!(ended);
    assert!(got == data, "byte-exact");
}

#[test]
fn incomplete_responses_are_502_or_reset() {
    let (mut pair, mut client) = Pair::new(&H2Limits::default());
    let (fut, _) = send(&mut pair, &mut client, get("http://h/1"), true);
    let (s, _) = request_of(&pair.take_events());
    pair.respond(s, b"HTTP/1.1 200 OK\r\nContent-");
    pair.front.end_response(s, false);
    assert_eq!(response(&mut pair, fut).status(), 502);
    assert_eq!(counts(&pair.take_events()), [H2Count::BadResponse]);

    let (fut, _) = send(&mut pair, &mut client, get("http://h/2"), true);
    let (s, _) = request_of(&pair.take_events());
    pair.respond(s, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    pair.front.end_response(s, true);
    let resp = response(&mut pair, fut);
    let mut recv = resp.into_body();
    let mut fut = Box::pin(std::future::poll_fn(|cx| recv.poll_data(cx)));
    assert_eq!(&pair.run(&mut fut).unwrap().unwrap()[..], b"abc");
    let mut fut = Box::pin(std::future::poll_fn(|cx| recv.poll_data(cx)));
    let err = pair.run(&mut fut).unwrap().unwrap_err();
    assert_eq!(err.reason(), Some(Reason::INTERNAL_ERROR));

    let (fut, _) = send(&mut pair, &mut client, get("http://h/3"), true);
    let (s, _) = request_of(&pair.take_events());
    pair.respond(s, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(response(&mut pair, fut).status(), 502);
}

#[test]
fn connect_and_host_mismatch_refused() {
    let (mut pair, mut client) = Pair::new(&H2Limits::default());
    let req = Request::builder()
        .method("CONNECT")
        .uri("example.com:443")
        .body(())
        .unwrap();
    let (fut, _) = send(&mut pair, &mut client, req, false);
    assert_eq!(response(&mut pair, fut).status(), 405);
    let events = pair.take_events();
    assert_eq!(counts(&events), [H2Count::ConnectRefused]);
    assert!(!events.iter().any(|e| matches!(e, H2Event::Request { .. })));

    let req = Request::builder()
        .uri("http://a/")
        .header("host", "b")
        .body(())
        .unwrap();
    let (fut, _) = send(&mut pair, &mut client, req, true);
    let mut fut = Box::pin(fut);
    let err = pair.run(&mut fut).unwrap_err();
    assert_eq!(err.reason(), Some(Reason::PROTOCOL_ERROR));
    assert_eq!(counts(&pair.take_events()), [H2Count::MalformedRequest]);
}

#[test]
fn client_reset_is_reported() {
    let (mut pair, mut client) = Pair::new(&H2Limits::default());
    let (_fut, mut body) = send(&mut pair, &mut client, get("http://h/1"), false);
    let (s, _) = request_of(&pair.take_events());
    body.send_reset(Reason::CANCEL);
    assert_eq!(pair.take_events(), [H2Event::Reset { stream: s }]);
    // Bytes for it afterwards are swallowed.
    assert_eq!(pair.front.send_response_bytes(s, b"HTTP/1.1 200 OK\r\n"), 17);
}

#[test]
fn graceful_go_away() {
    let (mut pair, mut client) = Pair::new(&H2Limits::default());
    let (fut, _) = send(&mut pair, &mut client, get("http://h/1"), true);
    let (s, _) = request_of(&pair.take_events());
    pair.front.go_away(pair.now);
    assert!(pair.front.poll_timeout().is_some());
    pair.pump();
    assert!(!pair.front.is_closed());
    pair.respond(s, b"HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(response(&mut pair, fut).status(), 204);
    pair.pump();
    assert!(pair.front.is_closed());
    assert!(counts(&pair.take_events()).is_empty());
}

/// CPU per small request through the front (request mapped, response framed), with a real `h2` client.
/// `cargo test -p xlb-l7 --release h2::tests::bench_small_requests -- --ignored --nocapture`
///
/// Measured on the 2-core dev machine (release): ~35 µs per request in all, ~21 µs of it inside `H2Front`
/// calls (several `drive` passes per request, as the pump calls it once per input and per `poll_transmit`).
#[test]
#[ignore]
fn bench_small_requests() {
    let (mut pair, mut client) = Pair::new(&H2Limits::default());
    let n = 20_000u32;
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello";
    let start = Instant::now();
    pair.front_time = Duration::ZERO;
    for i in 0..n {
        let (fut, _) = send(&mut pair, &mut client, get("http://example.com/index.html"), true);
        pair.pump();
        pair.events.clear();
        let t = Instant::now();
        pair.front.send_response_bytes(StreamRef(2 * i + 1), resp);
        pair.front_time += t.elapsed();
        assert_eq!(response(&mut pair, fut).status(), 200);
    }
    let total = start.elapsed();
    println!(
        "{n} sequential requests: {:?}/request in all (client included), {:?}/request inside H2Front \
         (includes copying bytes into the client's pipe)",
        total / n,
        pair.front_time / n
    );
}

/// `cargo test -p xlb-l7 --release h2::tests::bench_concurrent_requests -- --ignored --nocapture`: 16 streams in
/// flight (as `h2load -m 16`), answered one by one, each answer followed by a pump as the stage does.
#[test]
#[ignore]
fn bench_concurrent_requests() {
    let (mut pair, mut client) = Pair::new(&H2Limits::default());
    let (rounds, in_flight) = (1_000u32, 16);
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello";
    let start = Instant::now();
    pair.front_time = Duration::ZERO;
    for _ in 0..rounds {
        let futs: Vec<_> = (0..in_flight)
            .map(|_| send(&mut pair, &mut client, get("http://example.com/index.html"), true).0)
            .collect();
        pair.pump();
        let streams: Vec<StreamRef> = std::mem::take(&mut pair.events)
            .into_iter()
            .filter_map(|e| match e {
                H2Event::Request { stream, .. } => Some(stream),
                _ => None,
            })
            .collect();
        assert_eq!(streams.len(), in_flight);
        for s in streams {
            let t = Instant::now();
            pair.front.send_response_bytes(s, resp);
            pair.front.end_response(s, true);
            pair.front_time += t.elapsed();
            pair.pump();
        }
        for f in futs {
            assert_eq!(response(&mut pair, f).status(), 200);
        }
        pair.events.clear();
    }
    let n = rounds * in_flight as u32;
    println!(
        "{n} requests, {in_flight} in flight: {:?}/request in all (client included), {:?}/request inside H2Front",
        start.elapsed() / n,
        pair.front_time / n
    );
}
