//! HTTP/2 in sessions. A client connection whose first bytes are the HTTP/2 preface (or whose TLS handshake
//! chose ALPN `h2`, or whose first request was an `Upgrade: h2c` taken up: `crate::h2::upgrade`) becomes a *front*: its [`H2Front`] speaks HTTP/2 with the client, and each stream becomes a
//! session of its own, a *stream* session, whose client is not a socket but that stream: its proxy is fed the
//! stream's request as HTTP/1.1 bytes and its HTTP/1.1 response goes back to the front. So rules, sticky
//! sessions, retries and upstream keep-alive pools work for HTTP/2 unchanged. The stage carries the bytes
//! between the two kinds (`stage::streams`).

use std::time::Instant;

use ahash::AHashMap;

use super::{Session, HIGH_WATER};
use crate::h2::upgrade::{H2cUpgrade, SWITCHING_PROTOCOLS};
use crate::h2::{H2Event, H2Front, StreamRef};
use crate::stage::counters::{L7Count, L7Counters};

/// What a front's streams need from the stage, in order.
pub enum StreamWork {
    /// A new stream: open a stream session and give it `head`.
    Open { stream: StreamRef, head: Vec<u8> },
    /// More request bytes for the stream's session.
    Body { stream: StreamRef, data: Vec<u8> },
    /// The request is complete.
    End { stream: StreamRef },
    /// The client reset the stream: end its session.
    Reset { stream: StreamRef },
    /// The stream takes response bytes again: run its session.
    Writable { stream: StreamRef },
}

/// The HTTP/2 side of a session.
pub(super) enum H2Role {
    /// The client connection speaks HTTP/2.
    Front(Box<FrontSide>),
    /// The session serves one stream of another session.
    Stream(Box<StreamSide>),
}

/// A front: the protocol state and what its streams need.
pub(super) struct FrontSide {
    front: H2Front,
    work: Vec<StreamWork>,
    /// Streams with a session: stream id → the session's (slot, generation).
    streams: AHashMap<u32, (u32, u32)>,
    /// Since when no stream has been open (the idle timeout).
    idle_since: Option<Instant>,
}

/// A stream session's client: the stream's request bytes (fed by the stage) and where its response goes.
pub(super) struct StreamSide {
    /// The front's session (slot, generation).
    parent: (u32, u32),
    stream: StreamRef,
    inbox: Vec<u8>,
    at: usize,
    /// Bytes of the inbox that are the request head (the rest is body: flow-control credit).
    head_left: usize,
    /// Body bytes consumed since the stage last asked.
    body_taken: usize,
    end: bool,
}

impl Session {
    /// A session serving `stream` of the front session `parent`, for a client at `self`'s address.
    pub fn new_stream(
        &self,
        mut proxy: crate::proxy::HttpProxy,
        parent: (u32, u32),
        stream: StreamRef,
        token: super::Token,
    ) -> Session {
        if let Some(subject) = self.proxy.client_cert_subject() {
            proxy.set_client_cert_subject(subject); // mutual TLS: every stream's request carries it
        }
        let mut s = Session::new(proxy, self.client, self.client_addr, token, self.listener.clone(), None);
        s.sniffed = true;
        s.h2 = Some(H2Role::Stream(Box::new(StreamSide {
            parent,
            stream,
            inbox: Vec::new(),
            at: 0,
            head_left: 0,
            body_taken: 0,
            end: false,
        })));
        s
    }

    /// The client's address.
    pub fn client_addr(&self) -> std::net::SocketAddrV4 {
        self.client_addr
    }

    /// Whether this session serves an HTTP/2 stream (its client is not a socket).
    pub fn is_stream(&self) -> bool {
        matches!(self.h2, Some(H2Role::Stream(_)))
    }

    /// Whether this session's client speaks HTTP/2.
    pub fn is_front(&self) -> bool {
        matches!(self.h2, Some(H2Role::Front(_)))
    }

    /// The proxy settings (for the proxies of the streams).
    pub fn proxy_config(&self) -> std::sync::Arc<crate::proxy::ProxyConfig> {
        self.proxy.config().clone()
    }

    /// Makes this session an HTTP/2 front (the preface was seen, or ALPN chose h2).
    pub(super) fn become_front(&mut self, now: Instant, front: H2Front) {
        self.h2 = Some(H2Role::Front(Box::new(FrontSide {
            front,
            work: Vec::new(),
            streams: AHashMap::new(),
            idle_since: Some(now),
        })));
    }

    /// The proxy took up `Upgrade: h2c` on the first request: 101, then HTTP/2 with that request as stream 1.
    pub(super) fn upgrade_to_h2(&mut self, io: &mut super::Io<'_>, upgrade: H2cUpgrade) {
        let Some(limits) = io.h2 else {
            self.close_client = true; // not offered without HTTP/2 on
            return;
        };
        self.client_out.push(SWITCHING_PROTOCOLS.to_vec());
        self.become_front(io.now, H2Front::upgraded(limits, upgrade));
        io.counters.bump(L7Count::H2Upgrades);
        io.counters.bump(L7Count::H2Connections);
    }

    fn front(&mut self) -> Option<&mut FrontSide> {
        match self.h2.as_mut() {
            Some(H2Role::Front(f)) => Some(f),
            _ => None,
        }
    }

    fn stream_side(&mut self) -> Option<&mut StreamSide> {
        match self.h2.as_mut() {
            Some(H2Role::Stream(s)) => Some(s),
            _ => None,
        }
    }

    /// Whether the front takes more client bytes (its output to the client is not backed up).
    pub(super) fn front_wants_bytes(&self) -> bool {
        self.client_out.len < HIGH_WATER
    }

    /// Client bytes for the front; returns how many it took.
    pub(super) fn front_bytes(&mut self, now: Instant, data: &[u8]) -> usize {
        let Some(f) = self.front() else { return 0 };
        f.front.handle_client_bytes(now, data)
    }

    /// The client closed its side.
    pub(super) fn front_eof(&mut self, now: Instant) {
        if let Some(f) = self.front() {
            f.front.handle_client_eof(now);
        }
    }

    /// Takes the front's output and events; returns whether anything came out.
    pub(super) fn front_poll(&mut self, now: Instant, counters: &mut L7Counters) -> bool {
        let Some(Some(H2Role::Front(f))) = Some(self.h2.as_mut()) else {
            return false;
        };
        let mut progress = false;
        while let Some(bytes) = f.front.poll_transmit(now) {
            self.client_out.push(bytes);
            progress = true;
        }
        while let Some(event) = f.front.poll_event(now) {
            progress = true;
            f.work.push(match event {
                H2Event::Request { stream, head } => {
                    counters.bump(L7Count::H2Streams);
                    StreamWork::Open { stream, head }
                }
                H2Event::RequestBody { stream, data } => StreamWork::Body { stream, data },
                H2Event::RequestEnd { stream } => StreamWork::End { stream },
                H2Event::Reset { stream } => StreamWork::Reset { stream },
                H2Event::Writable { stream } => StreamWork::Writable { stream },
                H2Event::Count(c) => {
                    counters.bump(L7Count::from_h2(c));
                    continue;
                }
            });
        }
        if f.front.is_closed() && !self.close_client {
            self.close_client = true;
            progress = true;
        }
        progress
    }

    /// What the front's streams need from the stage.
    pub fn take_stream_work(&mut self) -> Vec<StreamWork> {
        self.front().map(|f| std::mem::take(&mut f.work)).unwrap_or_default()
    }

    /// Files the stream session of `stream`.
    pub fn add_stream(&mut self, stream: StreamRef, key: (u32, u32)) {
        if let Some(f) = self.front() {
            f.streams.insert(stream.0, key);
            f.idle_since = None;
        }
    }

    /// The session of `stream`, if it has one.
    pub fn stream_session(&mut self, stream: StreamRef) -> Option<(u32, u32)> {
        self.front().and_then(|f| f.streams.get(&stream.0).copied())
    }

    /// The stream sessions of this front.
    pub fn stream_sessions(&mut self) -> Vec<(u32, u32)> {
        self.front()
            .map(|f| f.streams.values().copied().collect())
            .unwrap_or_default()
    }

    /// `stream`'s session is done: its response ended (`complete`) or not.
    pub fn stream_done(&mut self, now: Instant, stream: StreamRef, complete: bool) {
        if let Some(f) = self.front() {
            f.streams.remove(&stream.0);
            f.front.end_response(stream, complete);
            if f.streams.is_empty() {
                f.idle_since = Some(now);
            }
        }
    }

    /// Response bytes of `stream` for the client; returns how many were taken.
    pub fn stream_response(&mut self, stream: StreamRef, data: &[u8]) -> usize {
        self.front()
            .map_or(data.len(), |f| f.front.send_response_bytes(stream, data))
    }

    /// The stream's proxy consumed `n` body bytes (flow-control credit for the client).
    pub fn stream_body_taken(&mut self, stream: StreamRef, n: usize) {
        if let Some(f) = self.front() {
            f.front.request_bytes_taken(stream, n);
        }
    }

    /// When the front needs [`Session::handle_timeout`]: its GOAWAY grace, or the idle timeout.
    pub(super) fn front_timeout(&self) -> Option<Instant> {
        let Some(H2Role::Front(f)) = self.h2.as_ref() else {
            return None;
        };
        let idle = f
            .idle_since
            .map(|t| t + std::time::Duration::from_secs(self.proxy.config().limits.client_idle_timeout_s));
        match (f.front.poll_timeout(), idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The front's timers: GOAWAY after the idle timeout, the end of the grace period.
    pub(super) fn front_handle_timeout(&mut self, now: Instant) {
        let idle = std::time::Duration::from_secs(self.proxy.config().limits.client_idle_timeout_s);
        let Some(f) = self.front() else { return };
        if f.idle_since.is_some_and(|t| now >= t + idle) {
            f.idle_since = None;
            f.front.go_away(now);
        }
        f.front.handle_timeout(now);
    }

    // --- stream sessions ---

    /// Which stream of which front this session serves.
    pub fn stream_of(&self) -> Option<((u32, u32), StreamRef)> {
        match self.h2.as_ref() {
            Some(H2Role::Stream(s)) => Some((s.parent, s.stream)),
            _ => None,
        }
    }

    /// Request bytes from the stream (the head first).
    pub fn stream_push(&mut self, data: &[u8], head: bool) {
        if let Some(s) = self.stream_side() {
            if s.at == s.inbox.len() {
                s.inbox.clear();
                s.at = 0;
            }
            s.inbox.extend_from_slice(data);
            if head {
                s.head_left += data.len();
            }
        }
    }

    /// The stream's request is complete.
    pub fn stream_end(&mut self) {
        if let Some(s) = self.stream_side() {
            s.end = true;
        }
    }

    /// Body bytes the proxy consumed since the last call.
    pub fn take_stream_body_taken(&mut self) -> usize {
        self.stream_side().map_or(0, |s| std::mem::take(&mut s.body_taken))
    }

    /// Gives the response bytes to `write` (which returns how many it took); whether any were taken.
    pub fn drain_stream_response(&mut self, write: impl FnMut(&[u8]) -> usize) -> bool {
        self.client_out.drain(write, &mut self.proxy)
    }

    /// Whether the stream's response is over (the proxy closed the virtual client and everything was taken),
    /// and whether it ended normally.
    pub fn stream_finished(&self) -> Option<bool> {
        (self.close_client && self.client_out.is_empty()).then_some(!self.aborted)
    }

    /// The front has the whole response: the virtual client is closed (the session ends once its upstream
    /// connection went back to the pool or was closed).
    pub fn close_stream(&mut self, io: &mut super::Io<'_>) {
        self.client_closed = true;
        if self.proxy.is_closed() {
            if let Some(up) = self.upstream.take() {
                io.host.close(io.now, up.conn);
            }
        }
    }

    /// The client reset the stream: the exchange ends, the upstream connection is closed.
    pub fn stream_reset(&mut self, io: &mut super::Io<'_>) {
        self.client_closed = true;
        self.close_client = true;
        if !self.proxy.is_closed() {
            self.proxy.handle_client_eof(io.now);
            io.counters.bump(L7Count::Aborted);
        }
        if let Some(up) = self.upstream.take() {
            io.host.abort(io.now, up.conn);
        }
    }

    /// A stream session's client side: request bytes from the inbox to the proxy.
    pub(super) fn stream_client_side(&mut self, now: Instant) -> bool {
        let backlog_ok = self.upstream.as_ref().is_none_or(|u| u.out.len < HIGH_WATER);
        let Some(Some(H2Role::Stream(s))) = Some(self.h2.as_mut()) else {
            return false;
        };
        let mut progress = false;
        if self.proxy.wants_client_bytes() && backlog_ok && s.at < s.inbox.len() {
            let n = self.proxy.handle_client_bytes(now, &s.inbox[s.at..]);
            s.at += n;
            let head = n.min(s.head_left);
            s.head_left -= head;
            s.body_taken += n - head;
            progress = n > 0;
        }
        if s.end && s.at == s.inbox.len() && !self.client_eof {
            self.client_eof = true;
            self.proxy.handle_client_eof(now);
            progress = true;
        }
        if self.close_client && self.client_out.is_empty() && !self.client_closed {
            self.client_closed = true; // the response was taken by the front
            progress = true;
        }
        progress
    }
}

impl Session {
    /// Whether an HTTP/2 front has streams open.
    pub(super) fn front_has_streams(&self) -> bool {
        matches!(&self.h2, Some(H2Role::Front(f)) if !f.streams.is_empty())
    }
}
