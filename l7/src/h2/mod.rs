//! HTTP/2 to clients (RFC 9113), sans-IO: [`H2Front`] speaks h2 to one client connection and turns each stream
//! into one HTTP/1.1 request for a [`crate::proxy::HttpProxy`] of its own (a one-request "virtual client"), and
//! that proxy's HTTP/1.1 response back into HTTP/2 frames.
//!
//! # Driving `h2` without a runtime
//! The protocol is the `h2` crate's, which is async. It runs here on an in-memory transport (`io::MemIo`:
//! reads from an inbound queue, `Pending` when empty; writes into an outbound buffer) and is polled by hand, on
//! the caller's thread, never blocking. The only things that can make `h2` progress are inputs to the front
//! (client bytes or end of file, response bytes, consumed request bytes, outbound bytes taken, a timeout). Client
//! bytes, end of file and timeouts poll the connection (with a no-op waker) until nothing moves; the inputs of
//! streams only wake them, and the next [`H2Front::poll_transmit`] or [`H2Front::poll_event`] polls once for
//! all of them (a batch of responses costs one pass over `h2`, not one per response). Streams are
//! polled with wakers of their own: a stream is polled again only once `h2` or the front woke it (see
//! [`ready`]), so the cost of an input does not grow with the number of open streams. `h2` reads the clock
//! itself (`Instant::now`) only to expire the ids of reset streams; everything else is driven by the `now`
//! passed in.
//!
//! # Contract with the caller
//! - A front is made with [`H2Front::new`] (prior knowledge, ALPN) or [`H2Front::upgraded`] (`Upgrade: h2c`,
//!   see [`upgrade`]).
//! - Client bytes: [`H2Front::handle_client_bytes`] (returns how many were taken: leave the rest in the receive
//!   buffer and offer them again after output was taken), [`H2Front::handle_client_eof`].
//! - Output: loop [`H2Front::poll_transmit`] until `None` after every input, send the bytes to the client.
//! - Events: loop [`H2Front::poll_event`] after every input. `Request` → a new proxy fed `head` as client bytes;
//!   `RequestBody` → more client bytes for it (keep what it does not consume, report consumed bytes with
//!   [`H2Front::request_bytes_taken`]: flow-control credit is returned to the client only then); `RequestEnd`;
//!   `Reset` → drop the proxy; `Count` → counters.
//! - The proxy's `SendToClient` bytes go to [`H2Front::send_response_bytes`] (returns how many were taken: keep
//!   the rest and offer it again on the stream's `Writable` event); when the proxy is done (closed the virtual client, or failed), [`H2Front::end_response`].
//! - [`H2Front::poll_timeout`] / [`H2Front::handle_timeout`] for the GOAWAY grace period; [`H2Front::is_closed`]
//!   once everything was sent: close the TCP connection.
//!
//! # Not done here
//! Server push and extended CONNECT are not offered; PING and idle timeouts are the caller's (the session's timers), not the front's.

#[cfg(test)]
mod abuse_tests;
pub(crate) mod io;
mod ready;
mod request;
mod response;
mod stream;
#[cfg(test)]
mod tests;
pub mod upgrade;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ::h2::server::{self, Connection, Handshake, SendResponse};
use ::h2::{Reason, RecvStream};
use ahash::{AHashMap, AHashSet};
use bytes::Bytes;

use io::{FrameScanner, MemIo, Pipe, SeenFrame};
use ready::{ReadySet, StreamWake};
use request::{map_request, Refuse, ReqFraming};
use stream::{Outcome, Stream};
use upgrade::{H2cUpgrade, Splice};

/// The HTTP/2 connection preface a client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a cleartext connection say about its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniff {
    /// The HTTP/2 preface (prior knowledge).
    H2,
    /// A prefix of the preface: wait for more bytes.
    NeedMore,
    /// Anything else: HTTP/1.x.
    Http1,
}

/// Limits of one HTTP/2 connection.
#[derive(Clone, Debug)]
pub struct H2Limits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS; more are refused (REFUSED_STREAM). Default 128.
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE (decoded bytes): a larger request is answered 431; far larger ones, or
    /// CONTINUATION floods, end the connection. Default 32 KiB.
    pub max_header_list_bytes: u32,
    /// Streams the client may reset before they were accepted (h2's `max_pending_accept_reset_streams`);
    /// beyond: GOAWAY(ENHANCE_YOUR_CALM). Default 20.
    pub max_pending_resets: usize,
    /// Streams the client may make the server reset for its errors over the connection's life (h2's
    /// `max_local_error_reset_streams`); beyond: GOAWAY(ENHANCE_YOUR_CALM). Default 256.
    pub max_local_resets: usize,
    /// Rapid Reset (CVE-2023-44487) of accepted streams: more client resets of unanswered streams than this
    /// within one second → GOAWAY(ENHANCE_YOUR_CALM). Default 100.
    pub max_resets_per_second: u32,
    /// Stream receive window (request bodies). Default 64 KiB.
    pub initial_window: u32,
    /// Connection receive window. Default 1 MiB.
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE (clamped to 16 KiB..16 MiB). Default 16 KiB.
    pub max_frame_bytes: u32,
    /// Response body bytes buffered per stream waiting for flow-control credit (the rest is refused:
    /// backpressure). Default 64 KiB.
    pub max_send_buffer: usize,
    /// Client bytes queued for `h2` (the rest is refused). Default 64 KiB.
    pub max_inbound_bytes: usize,
    /// Frames queued for the client before `h2` is paused until [`H2Front::poll_transmit`]. Default 256 KiB.
    pub max_outbound_bytes: usize,
    /// A response head from the proxy larger than this is a bad response. Default 64 KiB.
    pub max_response_head_bytes: usize,
    /// Chunked trailers kept from the proxy's response. Default 8 KiB.
    pub max_trailer_bytes: usize,
    /// After [`H2Front::go_away`], streams still open after this are cut. Default 10 s.
    pub go_away_grace: Duration,
}

impl Default for H2Limits {
    fn default() -> Self {
        H2Limits {
            max_concurrent_streams: 128,
            max_header_list_bytes: 32 << 10,
            max_pending_resets: 20,
            max_local_resets: 256,
            max_resets_per_second: 100,
            initial_window: 64 << 10,
            connection_window: 1 << 20,
            max_frame_bytes: 16 << 10,
            max_send_buffer: 64 << 10,
            max_inbound_bytes: 64 << 10,
            max_outbound_bytes: 256 << 10,
            max_response_head_bytes: 64 << 10,
            max_trailer_bytes: 8 << 10,
            go_away_grace: Duration::from_secs(10),
        }
    }
}

/// An HTTP/2 stream (its id, odd: client-initiated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamRef(pub u32);

/// Something to count (refusals and defences).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum H2Count {
    /// The connection ended on a client protocol error (bad preface, bad frame, flow-control violation...).
    ClientProtocolError,
    /// Too many streams reset by the client (before accept, or accepted but unanswered): GOAWAY.
    RapidReset,
    /// Too many streams reset for the client's errors: GOAWAY.
    TooManyErrorResets,
    /// A header block split over too many CONTINUATION frames: GOAWAY.
    ContinuationFlood,
    /// Too many small DATA frames: GOAWAY.
    DataFlood,
    /// A header list over `max_header_list_bytes`: 431 (or GOAWAY when far over).
    HeaderListTooLarge,
    /// A stream over `max_concurrent_streams`: REFUSED_STREAM.
    TooManyStreams,
    /// A malformed request (RFC 9113 §8.1.1): RST_STREAM(PROTOCOL_ERROR).
    MalformedRequest,
    /// CONNECT: answered 405.
    ConnectRefused,
    /// The proxy's response could not be parsed or ended early: 502 or RST_STREAM(INTERNAL_ERROR).
    BadResponse,
}

impl H2Count {
    /// Every reason, for counter tables.
    pub const ALL: [H2Count; 10] = [
        H2Count::ClientProtocolError,
        H2Count::RapidReset,
        H2Count::TooManyErrorResets,
        H2Count::ContinuationFlood,
        H2Count::DataFlood,
        H2Count::HeaderListTooLarge,
        H2Count::TooManyStreams,
        H2Count::MalformedRequest,
        H2Count::ConnectRefused,
        H2Count::BadResponse,
    ];

    /// Counter name (snake case).
    pub fn name(self) -> &'static str {
        match self {
            H2Count::ClientProtocolError => "h2_client_protocol_error",
            H2Count::RapidReset => "h2_rapid_reset",
            H2Count::TooManyErrorResets => "h2_too_many_error_resets",
            H2Count::ContinuationFlood => "h2_continuation_flood",
            H2Count::DataFlood => "h2_data_flood",
            H2Count::HeaderListTooLarge => "h2_header_list_too_large",
            H2Count::TooManyStreams => "h2_too_many_streams",
            H2Count::MalformedRequest => "h2_malformed_request",
            H2Count::ConnectRefused => "h2_connect_refused",
            H2Count::BadResponse => "h2_bad_response",
        }
    }
}

/// What the caller must act on, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum H2Event {
    /// A new request: its HTTP/1.1 head (request line, `Host` from `:authority`, fields, framing). Feed it to a
    /// fresh proxy as client bytes.
    Request {
        /// The stream.
        stream: StreamRef,
        /// HTTP/1.1 request head, through the empty line.
        head: Vec<u8>,
    },
    /// More HTTP/1.1 request body bytes for the stream (chunks when the client gave no `content-length`, the
    /// last chunk included).
    RequestBody {
        /// The stream.
        stream: StreamRef,
        /// Framed body bytes.
        data: Vec<u8>,
    },
    /// All the request's bytes were delivered.
    RequestEnd {
        /// The stream.
        stream: StreamRef,
    },
    /// The client reset the stream, or the connection ended under it: drop its proxy.
    Reset {
        /// The stream.
        stream: StreamRef,
    },
    /// The stream refused response bytes ([`H2Front::send_response_bytes`] took fewer than offered) and has
    /// room again: offer the rest.
    Writable {
        /// The stream.
        stream: StreamRef,
    },
    /// Something to count.
    Count(H2Count),
}

/// The server side of one HTTP/2 connection, mapping streams to HTTP/1.1 exchanges (see the module docs).
pub struct H2Front {
    limits: H2Limits,
    io: MemIo,
    handshake: Option<Pin<Box<Handshake<MemIo, Bytes>>>>,
    conn: Option<Connection<MemIo, Bytes>>,
    closed: bool,
    /// An input since the last [`H2Front::drive`] that only woke streams (response bytes, their end, request
    /// credit): `h2` is polled once for all of them, by the next [`H2Front::poll_transmit`] or
    /// [`H2Front::poll_event`], instead of once per input.
    undriven: bool,
    streams: AHashMap<u32, Stream>,
    /// Streams to poll (see [`ready`]).
    ready: Arc<ReadySet>,
    /// Accepted streams `h2` may still write frames for (for telling its own refusals from ours).
    live: AHashSet<u32>,
    /// The stream `h2` answered 431 (its RST_STREAM follows; counted once).
    answered_431: Option<u32>,
    scanner: FrameScanner,
    /// Outbound bytes already scanned.
    scanned: usize,
    events: VecDeque<H2Event>,
    /// A GOAWAY with an error was counted (or the connection error was).
    error_counted: bool,
    go_away_deadline: Option<Instant>,
    reset_window: Option<Instant>,
    resets_in_window: u32,
    accepted: Vec<(http::Request<RecvStream>, SendResponse<Bytes>)>,
    seen: Vec<SeenFrame>,
    ids: Vec<u32>,
    /// An `Upgrade: h2c` request to splice into the client's first bytes (see [`upgrade`]), and those bytes
    /// until it can be.
    upgrade: Option<Box<H2cUpgrade>>,
    held: Vec<u8>,
}

impl H2Front {
    /// A front for a connection whose first bytes [`H2Front::sniff`] said are HTTP/2 (feed them too).
    pub fn new(limits: &H2Limits) -> H2Front {
        let io = MemIo(Arc::new(Mutex::new(Pipe {
            max_outbound: limits.max_outbound_bytes.max(1),
            ..Pipe::default()
        })));
        let mut b = server::Builder::new();
        b.initial_window_size(limits.initial_window.min(i32::MAX as u32))
            .initial_connection_window_size(limits.connection_window.min(i32::MAX as u32))
            .max_frame_size(limits.max_frame_bytes.clamp(16 << 10, (16 << 20) - 1))
            .max_header_list_size(limits.max_header_list_bytes)
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_pending_accept_reset_streams(limits.max_pending_resets)
            .max_local_error_reset_streams(Some(limits.max_local_resets))
            .max_send_buffer_size(limits.max_send_buffer.min(u32::MAX as usize));
        let handshake = Box::pin(b.handshake::<MemIo, Bytes>(io.clone()));
        H2Front {
            limits: limits.clone(),
            io,
            handshake: Some(handshake),
            conn: None,
            closed: false,
            undriven: true,
            streams: AHashMap::new(),
            ready: Arc::default(),
            live: AHashSet::new(),
            answered_431: None,
            scanner: FrameScanner::default(),
            scanned: 0,
            events: VecDeque::new(),
            error_counted: false,
            go_away_deadline: None,
            reset_window: None,
            resets_in_window: 0,
            accepted: Vec::new(),
            seen: Vec::new(),
            ids: Vec::new(),
            upgrade: None,
            held: Vec::new(),
        }
    }

    /// A front for a connection that was just upgraded from HTTP/1.1 (`101 Switching Protocols` sent): the
    /// upgrade request is served as stream 1 (feed the bytes the client sent after that request).
    pub fn upgraded(limits: &H2Limits, upgrade: H2cUpgrade) -> H2Front {
        let mut front = H2Front::new(limits);
        front.upgrade = Some(Box::new(upgrade));
        front
    }

    /// Whether `prefix` (the first bytes a client sent) is, could still be, or is not the HTTP/2 preface.
    pub fn sniff(prefix: &[u8]) -> Sniff {
        let n = prefix.len().min(PREFACE.len());
        if prefix[..n] != PREFACE[..n] {
            Sniff::Http1
        } else if n == PREFACE.len() {
            Sniff::H2
        } else {
            Sniff::NeedMore
        }
    }

    /// Client bytes: returns how many were taken (fewer when the inbound queue is full; all once closed).
    pub fn handle_client_bytes(&mut self, now: Instant, data: &[u8]) -> usize {
        if self.closed {
            return data.len();
        }
        if let Some(up) = self.upgrade.as_ref() {
            let n = data.len().min(H2cUpgrade::max_needed().saturating_sub(self.held.len()));
            self.held.extend_from_slice(&data[..n]);
            let spliced = match up.splice(&self.held) {
                Splice::NeedMore => None,
                Splice::Ready { consumed, mut bytes } => {
                    bytes.extend_from_slice(&self.held[consumed..]);
                    Some(bytes)
                }
                Splice::AsIs => Some(std::mem::take(&mut self.held)),
            };
            if let Some(bytes) = spliced {
                self.upgrade = None;
                self.held = Vec::new();
                self.io.lock().inbound = bytes;
            }
            self.drive(now);
            return n;
        }
        let n = {
            let mut p = self.io.lock();
            let n = data
                .len()
                .min(self.limits.max_inbound_bytes.saturating_sub(p.inbound_len()));
            p.inbound.extend_from_slice(&data[..n]);
            n
        };
        self.drive(now);
        n
    }

    /// The client closed its sending side.
    pub fn handle_client_eof(&mut self, now: Instant) {
        if self.upgrade.take().is_some() {
            self.io.lock().inbound = std::mem::take(&mut self.held); // incomplete: h2 refuses it
        }
        self.io.lock().eof = true;
        self.drive(now);
    }

    /// Bytes for the client (HTTP/2 frames); call until `None` after every input.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.undriven {
            self.drive(now);
        }
        let out = {
            let mut p = self.io.lock();
            if p.outbound.is_empty() {
                return None;
            }
            // `h2` was refused writes only if the buffer was full: then it has more once this is taken.
            self.undriven |= p.outbound.len() >= p.max_outbound;
            std::mem::take(&mut p.outbound)
        };
        self.scanned = 0;
        Some(out)
    }

    /// The next event, in order.
    pub fn poll_event(&mut self, now: Instant) -> Option<H2Event> {
        if self.undriven {
            self.drive(now);
        }
        self.events.pop_front()
    }

    /// HTTP/1.1 response bytes from `stream`'s proxy: returns how many were taken (fewer when the stream's send
    /// buffer is full: offer the rest again later). Bytes for an unknown or finished stream are all taken and
    /// dropped.
    pub fn send_response_bytes(&mut self, stream: StreamRef, data: &[u8]) -> usize {
        let Some(s) = self.streams.get_mut(&stream.0) else {
            return data.len();
        };
        let (taken, failed) = s.feed(data, self.limits.max_send_buffer);
        s.wake();
        if failed {
            self.events.push_back(H2Event::Count(H2Count::BadResponse));
        }
        self.undriven = true;
        taken
    }

    /// `stream`'s proxy is finished. `complete`: its response ended normally (this completes a body delimited
    /// by the end of the connection); otherwise, or if the response is still unfinished, the client gets a 502
    /// if no head was sent yet, else RST_STREAM(INTERNAL_ERROR).
    pub fn end_response(&mut self, stream: StreamRef, complete: bool) {
        if let Some(s) = self.streams.get_mut(&stream.0) {
            s.wake();
            if s.end_response(complete) {
                self.events.push_back(H2Count::BadResponse.into());
            }
        }
        self.undriven = true;
    }

    /// The proxy consumed `n` bytes of `stream`'s `RequestBody` data: the client gets the flow-control credit
    /// of every DATA frame whose bytes were all consumed.
    pub fn request_bytes_taken(&mut self, stream: StreamRef, n: usize) {
        if let Some(s) = self.streams.get_mut(&stream.0) {
            s.request_bytes_taken(n);
            s.wake();
        }
        self.undriven = true;
    }

    /// When [`H2Front::handle_timeout`] must be called (the GOAWAY grace period).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            None
        } else {
            self.go_away_deadline
        }
    }

    /// Time passed: after the GOAWAY grace period, open streams are cut and the connection ends.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.go_away_deadline.is_some_and(|d| now >= d) {
            self.go_away_deadline = None;
            if let Some(c) = self.conn.as_mut() {
                c.abrupt_shutdown(Reason::NO_ERROR);
            }
        }
        self.drive(now);
    }

    /// Whether the connection is over and everything was sent: close the TCP connection.
    pub fn is_closed(&self) -> bool {
        self.closed && self.io.lock().outbound.is_empty()
    }

    /// Graceful shutdown: GOAWAY, no new streams; the connection ends when the open streams are done (or after
    /// `go_away_grace`).
    pub fn go_away(&mut self, now: Instant) {
        if let Some(c) = self.conn.as_mut() {
            c.graceful_shutdown();
            self.go_away_deadline.get_or_insert(now + self.limits.go_away_grace);
        } else if self.handshake.take().is_some() {
            self.closed = true;
        }
        self.drive(now);
    }

    /// Polls `h2`, and the streams that were woken, until nothing moves (see the module docs on wakers).
    fn drive(&mut self, now: Instant) {
        let mut cx = Context::from_waker(Waker::noop());
        self.undriven = false;
        for _ in 0..16 {
            let mut progress = self.poll_connection(&mut cx);
            self.scan_outbound();
            progress |= self.poll_streams(now);
            if !progress && self.ready.is_empty() {
                return;
            }
        }
        self.undriven = true; // still moving: the next poll goes on
    }

    /// Handshake, then accepts new streams (which also reads and writes frames).
    fn poll_connection(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(hs) = self.handshake.as_mut() {
            match hs.as_mut().poll(cx) {
                Poll::Ready(Ok(conn)) => {
                    self.handshake = None;
                    self.conn = Some(conn);
                }
                Poll::Ready(Err(e)) => {
                    self.handshake = None;
                    self.on_closed(Err(e));
                    return false;
                }
                Poll::Pending => return false,
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let mut accepted = std::mem::take(&mut self.accepted);
        let mut end = None;
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok(x))) => accepted.push(x),
                Poll::Ready(Some(Err(e))) => {
                    end = Some(Err(e));
                    break;
                }
                Poll::Ready(None) => {
                    end = Some(Ok(()));
                    break;
                }
                Poll::Pending => break,
            }
        }
        let progress = !accepted.is_empty();
        for (req, respond) in accepted.drain(..) {
            self.on_request(req, respond);
        }
        self.accepted = accepted;
        if let Some(r) = end {
            self.on_closed(r);
        }
        progress
    }

    fn on_request(&mut self, req: http::Request<RecvStream>, mut respond: SendResponse<Bytes>) {
        let id = u32::from(respond.stream_id());
        self.live.insert(id);
        let (parts, recv) = req.into_parts();
        match map_request(&parts, recv.is_end_stream()) {
            Ok(m) => {
                let stream = StreamRef(id);
                self.events.push_back(H2Event::Request { stream, head: m.head });
                let recv = if m.framing == ReqFraming::None {
                    self.events.push_back(H2Event::RequestEnd { stream });
                    None
                } else {
                    Some(recv)
                };
                let wake = StreamWake::new(id, &self.ready);
                let s = Stream::new(recv, m.framing, respond, m.is_head, &self.limits, wake);
                self.streams.insert(id, s);
            }
            Err(Refuse::Malformed) => {
                respond.send_reset(Reason::PROTOCOL_ERROR);
                self.events.push_back(H2Count::MalformedRequest.into());
            }
            Err(Refuse::Connect) => {
                let mut resp = http::Response::new(());
                *resp.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
                let _ = respond.send_response(resp, true);
                self.events.push_back(H2Count::ConnectRefused.into());
            }
        }
    }

    /// The connection ended (`h2` finished, or failed): every open stream is reset.
    fn on_closed(&mut self, result: Result<(), ::h2::Error>) {
        self.conn = None;
        self.closed = true;
        self.go_away_deadline = None;
        self.scan_outbound();
        if let Err(e) = result {
            if !self.error_counted && !e.is_io() && !e.is_remote() {
                self.events.push_back(H2Count::ClientProtocolError.into());
            }
            self.error_counted = true;
        }
        for (id, _) in self.streams.drain() {
            self.events.push_back(H2Event::Reset { stream: StreamRef(id) });
        }
        self.live.clear();
    }

    /// Request bodies, resets, response data of the streams that were woken.
    fn poll_streams(&mut self, now: Instant) -> bool {
        let mut progress = false;
        let mut ids = std::mem::take(&mut self.ids);
        self.ready.take(&mut ids);
        for &id in &ids {
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            let (p, outcome) = s.poll(StreamRef(id), &mut self.events);
            progress |= p;
            match outcome {
                Outcome::Open => {}
                Outcome::Done => {
                    if let Some(mut s) = self.streams.remove(&id) {
                        s.release_all();
                    }
                }
                Outcome::Reset { unanswered } => {
                    self.streams.remove(&id);
                    self.live.remove(&id);
                    self.events.push_back(H2Event::Reset { stream: StreamRef(id) });
                    if unanswered {
                        self.note_client_reset(now);
                    }
                }
            }
        }
        self.ids = ids;
        progress
    }

    /// Rapid Reset defence for accepted streams (h2 itself only limits streams reset before accept).
    fn note_client_reset(&mut self, now: Instant) {
        match self.reset_window {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.reset_window = Some(now);
                self.resets_in_window = 0;
            }
        }
        self.resets_in_window += 1;
        if self.resets_in_window > self.limits.max_resets_per_second && !self.error_counted {
            self.error_counted = true;
            self.events.push_back(H2Count::RapidReset.into());
            if let Some(c) = self.conn.as_mut() {
                c.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
            }
        }
    }

    /// Looks at the frames `h2` wrote since the last scan, to count its own refusals.
    fn scan_outbound(&mut self) {
        {
            let p = self.io.0.lock().unwrap_or_else(|e| e.into_inner());
            if p.outbound.len() > self.scanned {
                let seen = &mut self.seen;
                self.scanner.scan(&p.outbound[self.scanned..], &mut |f| seen.push(f));
                self.scanned = p.outbound.len();
            }
        }
        let mut seen = std::mem::take(&mut self.seen);
        for f in seen.drain(..) {
            self.on_frame_seen(f);
        }
        self.seen = seen;
    }

    fn on_frame_seen(&mut self, f: SeenFrame) {
        let count = match f.kind {
            io::GOAWAY => {
                let code = f
                    .payload
                    .get(4..8)
                    .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                let debug = f.payload.get(8..).unwrap_or(&[]);
                let reason = Reason::from(code);
                if reason == Reason::NO_ERROR || (self.error_counted && debug.is_empty()) {
                    None
                } else {
                    self.error_counted = true;
                    Some(match debug {
                        b"too_many_resets" => H2Count::RapidReset,
                        b"too_many_internal_resets" => H2Count::TooManyErrorResets,
                        b"too_many_continuations" => H2Count::ContinuationFlood,
                        b"too_many_data_frames" => H2Count::DataFlood,
                        b"header_list_way_too_large" => H2Count::HeaderListTooLarge,
                        _ => H2Count::ClientProtocolError,
                    })
                }
            }
            _ if self.live.contains(&f.stream) => {
                // Ours: a stream is over for h2 once it sent END_STREAM or RST_STREAM.
                if f.kind == io::RST_STREAM || f.flags & io::END_STREAM != 0 {
                    self.live.remove(&f.stream);
                }
                None
            }
            io::HEADERS => {
                // h2 answers on its own only a header list over the limit (431).
                self.answered_431 = Some(f.stream);
                Some(H2Count::HeaderListTooLarge)
            }
            io::RST_STREAM if self.answered_431 == Some(f.stream) => None,
            io::RST_STREAM => {
                let code = f
                    .payload
                    .get(..4)
                    .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                match Reason::from(code) {
                    Reason::REFUSED_STREAM => Some(H2Count::TooManyStreams),
                    Reason::PROTOCOL_ERROR => Some(H2Count::MalformedRequest),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(c) = count {
            self.events.push_back(c.into());
        }
    }
}

impl From<H2Count> for H2Event {
    fn from(c: H2Count) -> Self {
        H2Event::Count(c)
    }
}
