//! The per-connection HTTP/1.1 proxy state machine, sans-IO in the quinn-proto shape.
//!
//! Inputs (each returns at once; time is passed in):
//! - [`HttpProxy::handle_client_bytes`] / [`HttpProxy::handle_upstream_bytes`]: bytes received, returning how
//!   many were consumed. The rest stays in the caller's receive buffer (TCP backpressure) and is offered again
//!   later: client bytes when [`HttpProxy::wants_client_bytes`] says so.
//! - [`HttpProxy::handle_upstream_connected`] / [`HttpProxy::handle_upstream_failed`]: the result of a
//!   [`Action::ConnectUpstream`] (the caller picks the server: scheduling and health are the datapath's).
//! - [`HttpProxy::handle_client_eof`] / [`HttpProxy::handle_upstream_eof`]: the peer sent FIN.
//! - [`HttpProxy::handle_timeout`] when [`HttpProxy::poll_timeout`] is reached.
//!
//! Outputs: [`HttpProxy::poll_action`] (in order) and [`HttpProxy::poll_event`] (for counters). Byte buffers in
//! actions can be given back with [`HttpProxy::recycle`], so a connection in steady state does not allocate.
//!
//! One request is served at a time: pipelined requests wait (the next head is buffered, bounded by
//! `max_header_bytes`; beyond that bytes are left unconsumed), so responses are answered in order. After a
//! WebSocket upgrade answered 101, [`Action::Tunnel`] hands both connections to the caller, which then relays
//! bytes without the proxy (client bytes after the upgrade request are never consumed by the proxy).
//!
//! Allocation: per request, the parsed head (owned headers) and the upstream head; per connection, the head
//! buffers (grown up to the limit, kept for the next request); action buffers unless recycled.
//!
//! ```
//! use std::{sync::Arc, time::Instant};
//! use xlb_l7::config::{HttpListenerConfig, L7Config, ListenerProtocol};
//! use xlb_l7::proxy::{Action, HttpProxy, ProxyConfig, UpstreamId};
//! use xlb_l7::sticky::ServerId;
//!
//! let listener = HttpListenerConfig {
//!     protocol: ListenerProtocol::Http,
//!     group: "web".into(),
//!     rules: vec![],
//!     sticky: None,
//!     hash: None,
//! };
//! let cfg = ProxyConfig::new(L7Config::default(), &listener, "listener[0]", &["web"], 42).unwrap();
//! let now = Instant::now();
//! let mut conn = HttpProxy::new(Arc::new(cfg), "192.0.2.1".parse().unwrap(), now);
//! let req = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
//! assert_eq!(conn.handle_client_bytes(now, req), req.len());
//! let Some(Action::ConnectUpstream { id, .. }) = conn.poll_action() else { panic!() };
//! conn.handle_upstream_connected(now, id, ServerId(0)); // the datapath chose server 0 and connected
//! let Some(Action::SendToUpstream(UpstreamId(0), head)) = conn.poll_action() else { panic!() };
//! assert!(head.starts_with(b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Forwarded-For: 192.0.2.1\r\n"));
//! let resp = b"HTTP/1.1 204 No Content\r\n\r\n";
//! assert_eq!(conn.handle_upstream_bytes(now, id, resp), resp.len());
//! assert_eq!(conn.poll_action(), Some(Action::SendToClient(resp.to_vec())));
//! assert!(conn.poll_timeout().is_some()); // the keep-alive idle timer
//! ```

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::StickyMode;
use crate::http1::body::{BodyDecoder, BodyEncoder, BodyEvent};
use crate::http1::headers::{
    write_client_response, write_local_response, write_upstream_request, ClientFraming, ClientInfo, CONTINUE,
};
use crate::http1::request::{parse_request, RequestHead};
use crate::http1::response::{parse_response, ResponseHead};
use crate::http1::{BodyFraming, HeadScanner, Refusal, Version};
use crate::rules::{GroupId, RuleAction};
use crate::sticky::ServerId;

struct Upstream {
    id: UpstreamId,
    group: GroupId,
    server: Option<ServerId>,
    connected: bool,
    /// The hash key it was picked for (a request with another key does not reuse it).
    affinity: Option<u64>,
}

/// The request being served.
struct Exchange {
    version: Version,
    is_head: bool,
    keep_alive: bool,
    websocket: bool,
    sent_continue: bool,
    /// Server named by the request's sticky cookie.
    sticky_server: Option<ServerId>,
    /// The hash of the request's `hash` header or cookie.
    affinity: Option<u64>,
    /// Bytes of the response were sent to the client.
    response_started: bool,
    /// The whole request (head and body) was read from the client.
    request_done: bool,
    /// The method is idempotent (RFC 9110 §9.2.2): the request may be sent to another server when connecting
    /// fails.
    idempotent: bool,
    /// Upstream connections tried for this request.
    attempts: u8,
}

/// Upstream connections tried for one idempotent request before answering 502/504 (NGINX's
/// `proxy_next_upstream error timeout` with `proxy_next_upstream_tries 3`).
pub const MAX_CONNECT_ATTEMPTS: u8 = 3;

enum RequestPhase {
    /// Reading a request head (also while the previous response is in flight: pipelining).
    Head,
    /// Streaming the request body upstream.
    Body { decoder: BodyDecoder, encoder: BodyEncoder },
}

enum ResponsePhase {
    /// No exchange in flight.
    Idle,
    /// Waiting for the response head.
    Head,
    /// Streaming the response body to the client.
    Body {
        decoder: BodyDecoder,
        encoder: BodyEncoder,
        keep_alive_client: bool,
        upstream_reusable: bool,
    },
}

/// One client connection of an HTTP listener.
pub struct HttpProxy {
    cfg: Arc<ProxyConfig>,
    client_addr: IpAddr,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    /// The request being answered (method, target, host, start), for the access log.
    current: Option<(String, String, String, Instant)>,
    access: VecDeque<AccessRecord>,
    /// The response just finished on a reusable connection: release it after the current read.
    release_pending: bool,
    /// The subject of the client's verified TLS certificate (passed upstream).
    client_cert: Option<Box<str>>,
    /// When the current request's head was complete (response times).
    request_started: Option<Instant>,
    spare: Vec<Vec<u8>>,
    to_client: Vec<u8>,
    to_upstream: Vec<u8>,
    head: Vec<u8>,
    scanner: HeadScanner,
    /// Length of a complete head in `head` (not yet served).
    head_end: Option<usize>,
    resp_head: Vec<u8>,
    resp_scanner: HeadScanner,
    request: RequestPhase,
    response: ResponsePhase,
    exchange: Option<Exchange>,
    upstream: Option<Upstream>,
    next_upstream: u32,
    client_deadline: Option<(Instant, Timer)>,
    upstream_deadline: Option<(Instant, Timer)>,
    /// A pipelined head already known to be refused: answered once the exchange in flight is over.
    head_error: Option<Refusal>,
    client_eof: bool,
    closed: bool,
    tunnelled: bool,
    /// The first request may switch the connection to HTTP/2 (`Upgrade: h2c`).
    h2c: bool,
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl HttpProxy {
    /// The settings the proxy runs with.
    pub fn config(&self) -> &Arc<ProxyConfig> {
        &self.cfg
    }

    /// The subject of the client's verified certificate, if any.
    pub fn client_cert_subject(&self) -> Option<&str> {
        self.client_cert.as_deref()
    }

    /// Passes the subject of the client's verified certificate upstream with every request (mutual TLS).
    pub fn set_client_cert_subject(&mut self, subject: &str) {
        self.client_cert = Some(subject.into());
    }

    /// A new client connection from `client_addr`, accepted at `now`.
    pub fn new(cfg: Arc<ProxyConfig>, client_addr: IpAddr, now: Instant) -> Self {
        let idle = now + secs(cfg.limits.client_idle_timeout_s);
        HttpProxy {
            cfg,
            client_addr,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            current: None,
            access: VecDeque::new(),
            release_pending: false,
            client_cert: None,
            request_started: None,
            spare: Vec::new(),
            to_client: Vec::new(),
            to_upstream: Vec::new(),
            head: Vec::new(),
            scanner: HeadScanner::default(),
            head_end: None,
            resp_head: Vec::new(),
            resp_scanner: HeadScanner::default(),
            request: RequestPhase::Head,
            response: ResponsePhase::Idle,
            exchange: None,
            upstream: None,
            next_upstream: 0,
            client_deadline: Some((idle, Timer::ClientIdle)),
            upstream_deadline: None,
            head_error: None,
            client_eof: false,
            closed: false,
            tunnelled: false,
            h2c: false,
        }
    }

    /// The next action, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next access record (see [`ProxyConfig::access_log`]).
    pub fn poll_access(&mut self) -> Option<AccessRecord> {
        self.access.pop_front()
    }

    /// Records that `status` was sent for the current request (event, and access record if kept).
    fn answered(&mut self, status: u16, local: bool) {
        let started = self.request_started.take();
        self.events.push_back(Event::Answered { status, local, started });
        if self.cfg.access_log {
            let (method, target, host, started) = match self.current.take() {
                Some((m, t, h, at)) => (m, t, h, Some(at)),
                None => ("-".into(), "-".into(), "-".into(), None),
            };
            self.access.push_back(AccessRecord {
                method,
                target,
                host,
                started,
                status,
                local,
            });
        }
    }

    /// The next event to count.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.client_deadline, self.upstream_deadline) {
            (Some((a, _)), Some((b, _))) => Some(a.min(b)),
            (a, b) => a.or(b).map(|(t, _)| t),
        }
    }

    /// Gives back a buffer from `SendToClient` / `SendToUpstream` for reuse.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < 4 {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// Whether the connection is finished (closed or tunnelled): no more input is taken.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether the connection is between requests: nothing of a request read, no exchange in progress, nothing
    /// to send (its buffers can shrink).
    pub fn is_waiting(&self) -> bool {
        !self.closed
            && self.exchange.is_none()
            && self.head.is_empty()
            && self.to_client.is_empty()
            && matches!(self.request, RequestPhase::Head)
            && !self.tunnelled
    }

    /// Frees the buffers kept for the next request while the connection is between requests
    /// ([`HttpProxy::is_waiting`]): an idle kept-alive connection then holds no heap memory here.
    pub fn release_idle_buffers(&mut self) {
        if !self.is_waiting() {
            return;
        }
        self.spare = Vec::new();
        self.head = Vec::new();
        self.resp_head = Vec::new();
        self.to_client = Vec::new();
        if self.to_upstream.is_empty() {
            self.to_upstream = Vec::new();
        }
    }

    /// Whether client bytes would be consumed now (offer unconsumed bytes again when this turns true).
    pub fn wants_client_bytes(&self) -> bool {
        if self.closed {
            return false;
        }
        match &self.request {
            RequestPhase::Head => {
                self.head_end.is_none()
                    && self.head_error.is_none()
                    && self.head.len() < self.cfg.limits.max_header_bytes
                    && !self.exchange.as_ref().is_some_and(|e| e.websocket)
            }
            RequestPhase::Body { .. } => self.upstream.as_ref().is_some_and(|u| u.connected),
        }
    }

    /// Client bytes arrived; returns how many were consumed.
    pub fn handle_client_bytes(&mut self, now: Instant, data: &[u8]) -> usize {
        let mut used = 0;
        while !self.closed && used < data.len() && self.wants_client_bytes() {
            used += match self.request {
                RequestPhase::Head => self.read_head(now, &data[used..]),
                RequestPhase::Body { .. } => self.read_body(now, &data[used..]),
            };
            self.advance(now);
        }
        self.flush();
        if self.closed && !self.tunnelled {
            return data.len();
        }
        used
    }

    /// The client sent FIN.
    pub fn handle_client_eof(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.client_eof = true;
        // A client may half-close after its request: the response is still delivered, then the connection closed.
        let waiting_response = self.exchange.as_ref().is_some_and(|e| e.request_done);
        if !waiting_response {
            // Idle (normal end), mid-head or mid-body (the request is cut short).
            if !self.head.is_empty() || matches!(self.request, RequestPhase::Body { .. }) {
                self.events.push_back(Event::Aborted);
            }
            self.close_all();
        }
        let _ = now;
        self.flush();
    }

    /// A connection asked for with `ConnectUpstream` is established to `server`.
    pub fn handle_upstream_connected(&mut self, now: Instant, id: UpstreamId, server: ServerId) {
        let Some(up) = self.upstream.as_mut().filter(|u| u.id == id && !u.connected) else {
            return;
        };
        up.connected = true;
        up.server = Some(server);
        if matches!(self.request, RequestPhase::Body { .. }) {
            self.client_deadline = Some((now + secs(self.cfg.limits.client_body_timeout_s), Timer::ClientBody));
        }
        self.upstream_deadline = Some((
            now + secs(self.cfg.limits.upstream_response_timeout_s),
            Timer::UpstreamResponse,
        ));
        self.flush();
    }

    /// A connection asked for with `ConnectUpstream` failed, or an established one was reset.
    pub fn handle_upstream_failed(&mut self, now: Instant, id: UpstreamId, failure: UpstreamFailure) {
        let Some(failed) = self.upstream.take_if(|u| u.id == id) else {
            return;
        };
        self.upstream_deadline = None;
        self.events.push_back(Event::UpstreamFailed(failure));
        if failure == UpstreamFailure::Refused && !failed.connected && self.retry_connect(now, failed.group) {
            self.flush();
            return;
        }
        if self.exchange.is_some() {
            let status = if failure == UpstreamFailure::NoHealthyServer {
                503
            } else {
                502
            };
            self.fail_exchange(now, status);
        }
        self.flush();
    }

    /// Bytes from an upstream server; returns how many were consumed (after a 101, the rest belongs to the
    /// tunnel).
    pub fn handle_upstream_bytes(&mut self, now: Instant, id: UpstreamId, data: &[u8]) -> usize {
        if self.closed || self.upstream.as_ref().is_none_or(|u| u.id != id || !u.connected) {
            return data.len();
        }
        if matches!(self.response, ResponsePhase::Idle) {
            // Bytes from an idle kept-alive upstream: nothing is expected; it cannot be reused.
            self.events
                .push_back(Event::UpstreamRefused(Refusal::UnsolicitedResponse));
            self.drop_upstream();
            self.flush();
            return data.len();
        }
        self.upstream_deadline = Some((
            now + secs(self.cfg.limits.upstream_response_timeout_s),
            Timer::UpstreamResponse,
        ));
        let mut used = 0;
        while !self.closed && used < data.len() {
            let n = match self.response {
                ResponsePhase::Idle => break,
                ResponsePhase::Head => self.read_response_head(now, &data[used..]),
                ResponsePhase::Body { .. } => self.read_response_body(now, &data[used..]),
            };
            used += n;
            if n == 0 {
                break;
            }
        }
        if !self.closed && used < data.len() && matches!(self.response, ResponsePhase::Idle) {
            // Bytes after the end of the response, before the next request was even sent: the server is out of
            // step with xlb (a desync attempt or a broken server). They are dropped with the connection, never
            // taken as the next request's response.
            self.events
                .push_back(Event::UpstreamRefused(Refusal::UnsolicitedResponse));
            self.release_pending = false;
            self.drop_upstream();
            used = data.len();
        }
        if std::mem::take(&mut self.release_pending) {
            self.let_go_of_upstream();
        }
        self.advance(now);
        self.flush();
        if self.closed && !self.tunnelled {
            return data.len();
        }
        used
    }

    /// The upstream server sent FIN.
    pub fn handle_upstream_eof(&mut self, now: Instant, id: UpstreamId) {
        if self.closed || self.upstream.as_ref().is_none_or(|u| u.id != id) {
            return;
        }
        match &mut self.response {
            ResponsePhase::Idle => self.drop_upstream(),
            ResponsePhase::Head => {
                self.drop_upstream();
                self.events.push_back(Event::UpstreamFailed(UpstreamFailure::Reset));
                self.fail_exchange(now, 502);
            }
            ResponsePhase::Body { decoder, encoder, .. } => {
                if decoder.finish_on_close() {
                    encoder.end(b"", &mut self.to_client);
                    if let ResponsePhase::Body { upstream_reusable, .. } = &mut self.response {
                        *upstream_reusable = false;
                    }
                    self.finish_response(now);
                } else {
                    self.events.push_back(Event::Aborted);
                    self.close_all();
                }
            }
        }
        self.advance(now);
        self.flush();
    }

    /// Timers due at `now` fire.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        // The client's timers first: when both fire, a stalled upload is the client's doing.
        if let Some((at, timer)) = self.client_deadline {
            if now >= at {
                self.client_deadline = None;
                self.events.push_back(Event::Timeout(timer));
                match timer {
                    Timer::ClientIdle => self.close_all(),
                    _ if self.exchange.as_ref().is_some_and(|e| e.response_started) => {
                        self.events.push_back(Event::Aborted);
                        self.close_all();
                    }
                    _ => self.answer_and_close(408),
                }
            }
        }
        if let Some((at, timer)) = self.upstream_deadline {
            if !self.closed && now >= at {
                self.upstream_deadline = None;
                self.events.push_back(Event::Timeout(timer));
                let group = self.upstream.as_ref().map(|u| u.group);
                let head = std::mem::take(&mut self.to_upstream);
                self.drop_upstream();
                self.to_upstream = head;
                let retried = timer == Timer::UpstreamConnect && group.is_some_and(|g| self.retry_connect(now, g));
                if !retried {
                    self.to_upstream.clear();
                    self.fail_exchange(now, 504);
                }
            }
        }
        self.flush();
    }

    // ---- endings ----

    /// Answers a refused request and closes the connection.
    fn refuse(&mut self, r: Refusal) {
        self.events.push_back(Event::ClientRefused(r));
        self.answer_and_close(r.status());
    }

    fn answer_and_close(&mut self, status: u16) {
        let mut body = Vec::new();
        body.extend_from_slice(crate::http1::headers::reason_phrase(status).as_bytes());
        body.push(b'\n');
        write_local_response(status, &[], "text/plain", &body, false, &mut self.to_client);
        self.answered(status, true);
        self.close_all();
    }

    /// The exchange cannot be completed by the upstream: answer `status` if the client has seen nothing yet,
    /// keeping the connection if the request was read whole; else close.
    fn fail_exchange(&mut self, now: Instant, status: u16) {
        let Some(exchange) = &self.exchange else { return };
        if exchange.response_started {
            self.events.push_back(Event::Aborted);
            return self.close_all();
        }
        let keep_alive = exchange.keep_alive && exchange.request_done && !self.client_eof;
        let body = format!("{}\n", crate::http1::headers::reason_phrase(status));
        write_local_response(
            status,
            &[],
            "text/plain",
            body.as_bytes(),
            keep_alive,
            &mut self.to_client,
        );
        self.answered(status, true);
        self.drop_upstream();
        self.response = ResponsePhase::Idle;
        self.end_of_local_answer(now, keep_alive);
    }

    fn end_of_local_answer(&mut self, now: Instant, keep_alive: bool) {
        self.exchange = None;
        self.to_upstream.clear();
        if !keep_alive {
            return self.close_all();
        }
        self.request = RequestPhase::Head;
        self.client_deadline = Some((now + secs(self.cfg.limits.client_idle_timeout_s), Timer::ClientIdle));
        self.advance(now);
    }

    fn drop_upstream(&mut self) {
        if let Some(up) = self.upstream.take() {
            self.to_upstream.clear();
            self.upstream_deadline = None;
            self.push(Action::CloseUpstream(up.id));
        }
    }

    /// After a connection to a server of `group` failed before it was established: asks for another one if the
    /// request is idempotent, nothing of it went out, and attempts are left. The request head waits in
    /// `to_upstream` as it did for the first connection.
    fn retry_connect(&mut self, now: Instant, group: GroupId) -> bool {
        let Some(exchange) = self.exchange.as_mut() else {
            return false;
        };
        if !exchange.idempotent || exchange.response_started || exchange.attempts >= MAX_CONNECT_ATTEMPTS {
            return false;
        }
        exchange.attempts += 1;
        let affinity = exchange.affinity;
        let id = UpstreamId(self.next_upstream);
        self.next_upstream = self.next_upstream.wrapping_add(1);
        self.upstream = Some(Upstream {
            id,
            group,
            server: None,
            connected: false,
            affinity,
        });
        self.events.push_back(Event::Retried);
        // A sticky server that failed is not insisted on; the hash's next choice is taken (the caller avoids
        // the servers that failed).
        self.push(Action::ConnectUpstream {
            id,
            group,
            sticky_server: None,
            affinity,
        });
        self.upstream_deadline = Some((
            now + secs(self.cfg.limits.upstream_connect_timeout_s),
            Timer::UpstreamConnect,
        ));
        true
    }

    /// Releases the upstream connection if it is idle and reusable, else closes it.
    fn let_go_of_upstream(&mut self) {
        let idle = self.upstream.as_ref().is_some_and(|u| u.connected)
            && self.exchange.is_none()
            && matches!(self.response, ResponsePhase::Idle)
            && self.to_upstream.is_empty();
        if !idle {
            return self.drop_upstream();
        }
        if let Some(up) = self.upstream.take() {
            self.upstream_deadline = None;
            self.push(Action::ReleaseUpstream(up.id));
        }
    }

    fn close_all(&mut self) {
        if self.closed {
            return;
        }
        self.let_go_of_upstream();
        self.push(Action::CloseClient);
        self.closed = true;
        self.client_deadline = None;
        self.upstream_deadline = None;
        self.exchange = None;
        self.request = RequestPhase::Head;
        self.response = ResponsePhase::Idle;
    }

    // ---- output ----

    /// Queues an action after the bytes produced so far.
    fn push(&mut self, action: Action) {
        self.flush();
        self.actions.push_back(action);
    }

    /// Turns produced bytes into send actions (upstream bytes wait for the connection).
    fn flush(&mut self) {
        if !self.to_client.is_empty() {
            let buf = std::mem::replace(&mut self.to_client, self.spare.pop().unwrap_or_default());
            self.actions.push_back(Action::SendToClient(buf));
        }
        if let Some(up) = self.upstream.as_ref().filter(|u| u.connected) {
            if !self.to_upstream.is_empty() {
                let buf = std::mem::replace(&mut self.to_upstream, self.spare.pop().unwrap_or_default());
                self.actions.push_back(Action::SendToUpstream(up.id, buf));
            }
        }
    }
}

mod actions;
mod client_side;
mod snapshot;
mod upstream_side;

pub use actions::{Action, Event, Timer, UpstreamFailure, UpstreamId};
pub use snapshot::{AccessRecord, ProxyConfig};

#[cfg(test)]
mod tests;
