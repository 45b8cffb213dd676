//! One client connection being proxied: the in-stack client connection, its [`HttpProxy`], and the upstream
//! connection the proxy uses. [`Session::pump`] moves bytes between the sockets and the proxy and carries out
//! the proxy's actions until nothing moves.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use smoltcp::socket::tcp::{self, State};

use super::access::{AccessLine, AccessOutbox};
use super::counters::{L7Count, L7Counters};
use super::token::Token;
use super::upstreams::Upstreams;
use crate::h2::{H2Front, H2Limits, Sniff};
use crate::proxy::{AccessRecord, Action, Event, HttpProxy, UpstreamFailure};
use crate::tcp::{ConnId, TcpHost};
use crate::tls::handshake::{HandshakeClient, HandshakeDone, JobKey};
use crate::tls::link::{StepResult, TlsLink};
use xlb_stack::ports::LocalPorts;

mod h2;
mod upstream;

pub use h2::StreamWork;
use upstream::Upstream;

/// Bytes waiting for room in a socket's send buffer.
#[derive(Default)]
struct Outbox {
    bufs: VecDeque<Vec<u8>>,
    /// Bytes of the front buffer already sent.
    offset: usize,
    len: usize,
}

/// Above this many bytes waiting for one side, xlb stops reading the other side (TCP backpressure).
const HIGH_WATER: usize = 64 * 1024;

impl Outbox {
    fn push(&mut self, buf: Vec<u8>) {
        if !buf.is_empty() {
            self.len += buf.len();
            self.bufs.push_back(buf);
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sends what fits into `socket`; finished buffers go back to `proxy`. Returns whether anything was sent.
    fn flush(&mut self, socket: &mut tcp::Socket<'_>, proxy: &mut HttpProxy) -> bool {
        self.drain(|data| socket.send_slice(data).unwrap_or(0), proxy)
    }

    /// Gives the bytes to `write` (which returns how many it took) until it takes none; finished buffers go
    /// back to `proxy`. Returns whether anything was taken.
    fn drain(&mut self, mut write: impl FnMut(&[u8]) -> usize, proxy: &mut HttpProxy) -> bool {
        let mut sent = false;
        while let Some(front) = self.bufs.front() {
            let n = write(&front[self.offset..]);
            if n == 0 {
                break;
            }
            sent = true;
            self.offset += n;
            self.len -= n;
            if self.offset == front.len() {
                self.offset = 0;
                if let Some(done) = self.bufs.pop_front() {
                    proxy.recycle(done);
                }
            }
        }
        sent
    }
}

/// What a session needs from the stage while it runs.
pub(super) struct Io<'a> {
    pub now: Instant,
    pub host: &'a mut TcpHost,
    pub upstreams: &'a mut Upstreams,
    /// The worker's local ports (new upstream connections take theirs here).
    pub ports: &'a mut LocalPorts,
    pub counters: &'a mut L7Counters,
    /// The source address towards a server (the stack's route), if it is reachable.
    pub source: &'a dyn Fn(Ipv4Addr) -> Option<Ipv4Addr>,
    /// Where access-log lines go, if anywhere.
    pub access_log: Option<&'a mut AccessOutbox>,
    /// The TLS handshake pool (HTTPS listeners).
    pub handshakes: Option<&'a mut HandshakeClient>,
    /// HTTP/2 limits (`None`: HTTP/2 is off).
    pub h2: Option<&'a H2Limits>,
}

/// A proxied client connection.
pub(super) struct Session {
    proxy: HttpProxy,
    client: ConnId,
    client_addr: SocketAddrV4,
    client_out: Outbox,
    client_eof: bool,
    /// The proxy asked to close the client connection (done once its bytes are sent).
    close_client: bool,
    client_closed: bool,
    upstream: Option<Upstream>,
    tunnel: bool,
    /// This session's token for its upstream connections.
    upstream_token: Token,
    /// The proxy timer the stage has filed for this session.
    pub timer_armed: Option<Instant>,
    /// Servers whose connection failed for the current request (a retry goes elsewhere).
    failed_servers: Vec<usize>,
    /// The listener's name (access log).
    listener: Arc<str>,
    /// TLS between the client and xlb (HTTPS listeners).
    tls: Option<Box<TlsLink>>,
    /// The stage's handle for this session (slot index, generation): handshake results come back with it.
    key: (u32, u32),
    /// Upstream connections opened so far (numbers them for their TLS handshake results).
    upstream_serial: u64,
    /// HTTP/2: the client speaks it, or this session serves one stream of a client that does.
    h2: Option<h2::H2Role>,
    /// The first client bytes were looked at (the HTTP/2 preface or not).
    sniffed: bool,
    /// The exchange was cut short (an HTTP/2 stream is then reset rather than completed).
    aborted: bool,
}

impl Session {
    pub fn new(
        proxy: HttpProxy,
        client: ConnId,
        client_addr: SocketAddrV4,
        upstream_token: Token,
        listener: Arc<str>,
        tls: Option<TlsLink>,
    ) -> Session {
        Session {
            proxy,
            client,
            client_addr,
            client_out: Outbox::default(),
            client_eof: false,
            close_client: false,
            client_closed: false,
            upstream: None,
            tunnel: false,
            upstream_token,
            timer_armed: None,
            failed_servers: Vec::new(),
            listener,
            tls: tls.map(Box::new),
            key: match upstream_token {
                Token::Upstream { index, generation } => (index, generation),
                _ => (u32::MAX, 0),
            },
            upstream_serial: 0,
            h2: None,
            sniffed: false,
            aborted: false,
        }
    }

    /// Takes back a TLS connection from a handshake pool thread: the client's, or the upstream one's. Returns
    /// why a handshake with a server failed, if one did (for the log).
    pub fn handshake_step_done(
        &mut self,
        now: Instant,
        done: HandshakeDone,
        counters: &mut L7Counters,
        h2: Option<&H2Limits>,
    ) -> Option<String> {
        if done.key.upstream.is_some() {
            return self.upstream_step_done(now, done, counters);
        }
        let tls = self.tls.as_mut()?;
        match tls.step_done(now, done) {
            StepResult::Continuing => {}
            StepResult::Done(outcome) => {
                counters.bump(if outcome.resumed {
                    L7Count::TlsResumed
                } else {
                    L7Count::TlsFull
                });
                counters.bump(if outcome.tls13 { L7Count::Tls13 } else { L7Count::Tls12 });
                counters.bump(L7Count::tls_latency(outcome.elapsed));
                if let Some(subject) = &outcome.client_subject {
                    self.proxy.set_client_cert_subject(subject);
                }
                if let (true, Some(limits)) = (outcome.alpn_h2, h2) {
                    self.become_front(now, H2Front::new(limits));
                    self.sniffed = true;
                    counters.bump(L7Count::H2Connections);
                }
            }
            StepResult::Failed(e) => {
                counters.bump(L7Count::TlsFailed);
                tracing::debug!(client = %self.client_addr, "TLS handshake failed: {e}");
            }
        }
        None
    }

    /// When the proxy's next timer is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_front() {
            return if self.client_closed { None } else { self.front_timeout() };
        }
        if self.proxy.is_closed() {
            None
        } else {
            self.proxy.poll_timeout()
        }
    }

    /// Fires the proxy's timers due at `io.now`, then pumps.
    pub fn handle_timeout(&mut self, io: &mut Io<'_>) {
        if self.is_front() {
            self.front_handle_timeout(io.now);
        } else if self.proxy.poll_timeout().is_some_and(|t| t <= io.now) {
            self.proxy.handle_timeout(io.now);
        }
        self.pump(io);
    }

    /// Whether the session is over: the proxy is done and the client connection closed or gone. Its
    /// connections are closed by then.
    pub fn is_done(&self) -> bool {
        self.client_closed && self.upstream.is_none()
    }

    /// Moves bytes and carries out actions until nothing moves (bounded).
    pub fn pump(&mut self, io: &mut Io<'_>) {
        for _ in 0..32 {
            let mut progress = self.flush(io);
            progress |= self.upstream_side(io);
            progress |= self.client_side(io);
            progress |= self.act(io);
            if self.is_front() {
                progress |= self.front_poll(io.now, io.counters);
            }
            if !progress {
                break;
            }
        }
        if self.is_stream() {
            // No socket: the stage takes the response and closes the stream; an upstream connection the proxy
            // did not release goes with it.
            if self.client_closed && self.proxy.is_closed() {
                if let Some(up) = self.upstream.take() {
                    io.host.close(io.now, up.conn);
                }
            }
            return;
        }
        if !self.client_closed {
            // Large buffers while a request is in progress, small ones between requests.
            let handshaking = self.tls.as_ref().is_some_and(|t| t.is_handshaking() || t.has_output());
            let busy = if self.is_front() {
                !self.client_out.is_empty() || self.front_has_streams() || handshaking
            } else {
                !self.proxy.is_waiting() || !self.client_out.is_empty() || self.tunnel || handshaking
            };
            io.host.set_busy(self.client, busy);
            if !busy && io.host.is_idle_sized(self.client) {
                // Idle with nothing in flight: the proxy's kept buffers go too (re-grown by the next request).
                self.proxy.release_idle_buffers();
                if let Some(tls) = self.tls.as_mut() {
                    tls.release_idle_buffers();
                }
            }
            if let Some(up) = self.upstream.as_ref().filter(|u| u.connected) {
                io.host.set_busy(up.conn, busy); // the kept upstream of an idle client is idle too
            }
        }
        if self.close_client && !self.client_closed && self.client_flushed(io) {
            io.host.close(io.now, self.client);
            self.client_closed = true;
        }
        // A tunnel is over once the client sent FIN and the server did (or went away).
        let tunnel_over = self.tunnel && self.client_eof && self.upstream.as_ref().is_none_or(|u| u.eof);
        if self.tunnel && self.upstream.as_ref().is_some_and(|u| u.eof) {
            self.close_client = true;
        }
        if self.client_closed && (self.proxy.is_closed() || tunnel_over) {
            if let Some(up) = self.upstream.take() {
                io.host.close(io.now, up.conn);
            }
        }
    }

    fn flush(&mut self, io: &mut Io<'_>) -> bool {
        let mut sent = false;
        if self.is_stream() {
            return self.flush_upstream(io); // the response is taken by the stage
        }
        if let Some(tls) = self.tls.as_mut() {
            if let Some(s) = io.host.socket(io.now, self.client) {
                sent |= tls.send(s);
                if tls.is_open() && !self.client_out.is_empty() {
                    sent |= self.client_out.drain(|data| tls.encrypt(data), &mut self.proxy);
                    sent |= tls.send(s);
                }
            }
        } else if !self.client_out.is_empty() {
            if let Some(s) = io.host.socket(io.now, self.client) {
                sent |= self.client_out.flush(s, &mut self.proxy);
            }
        }
        sent | self.flush_upstream(io)
    }

    fn client_side(&mut self, io: &mut Io<'_>) -> bool {
        let now = io.now;
        if self.is_stream() {
            return self.stream_client_side(now);
        }
        if self.client_closed {
            return false;
        }
        if io.host.state(self.client).is_none() {
            // Reset by the client (or aborted): nothing more can be sent to it.
            self.client_closed = true;
            if self.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
                io.counters.bump(L7Count::TlsAborted);
            }
            if !self.proxy.is_closed() {
                self.proxy.handle_client_eof(now);
                if !self.proxy.is_closed() {
                    io.counters.bump(L7Count::Aborted);
                }
            }
            if let Some(up) = self.upstream.take() {
                io.host.abort(now, up.conn);
            }
            return true;
        }
        if self.tls.is_some() {
            return self.tls_client_side(io);
        }
        let mut progress = false;
        let tls_upstream = self.upstream.as_mut().filter(|u| u.tls.is_some());
        if let Some(up) = tls_upstream.filter(|_| self.tunnel) {
            let room = upstream::tunnel_room(up);
            if let Some(s) = io.host.socket(now, self.client).filter(|_| room > 0) {
                let mut buf = vec![0; room];
                let n = s.recv_slice(&mut buf).unwrap_or(0);
                buf.truncate(n);
                progress |= n > 0;
                up.out.push(buf);
            }
        } else if self.tunnel {
            if let Some(up) = self.upstream.as_ref().filter(|u| u.connected) {
                let (from, to) = (self.client, up.conn);
                progress |= relay(io, from, to);
            }
        } else if self.wants_client_bytes() {
            let Io { host, counters, h2, .. } = io;
            if let Some(s) = host.socket(now, self.client) {
                progress |= read(s, |data| self.client_bytes(now, data, *h2, counters));
            }
        }
        if !self.client_eof && at_eof(io.host, now, self.client) {
            progress |= self.client_eof(now, io);
        }
        progress
    }

    /// Whether client bytes are wanted: by the HTTP/2 front, or by the proxy while the upstream's backlog is
    /// small.
    fn wants_client_bytes(&self) -> bool {
        if self.is_front() {
            return self.front_wants_bytes();
        }
        self.proxy.wants_client_bytes() && self.upstream.as_ref().is_none_or(|u| u.out.len < HIGH_WATER)
    }

    /// Client bytes (plaintext) for the proxy or the HTTP/2 front; the first ones say which. Returns how many
    /// were taken.
    fn client_bytes(&mut self, now: Instant, data: &[u8], h2: Option<&H2Limits>, counters: &mut L7Counters) -> usize {
        if !self.sniffed {
            if let Some(limits) = h2 {
                match H2Front::sniff(data) {
                    Sniff::NeedMore => return 0,
                    Sniff::H2 => {
                        self.become_front(now, H2Front::new(limits));
                        counters.bump(L7Count::H2Connections);
                    }
                    Sniff::Http1 if self.proxy.config().scheme == "http" => self.proxy.offer_h2c(),
                    Sniff::Http1 => {}
                }
            }
            self.sniffed = true;
        }
        if self.is_front() {
            self.front_bytes(now, data)
        } else {
            self.proxy.handle_client_bytes(now, data)
        }
    }

    /// The client has sent everything: tell the proxy (or, in a tunnel, the server).
    fn client_eof(&mut self, now: Instant, io: &mut Io<'_>) -> bool {
        self.client_eof = true;
        if self.is_front() {
            self.front_eof(now);
        } else if self.tunnel {
            self.flush_upstream(io); // what waits for TLS records
            if let Some(up) = self.upstream.as_ref() {
                io.host.close(now, up.conn); // FIN to the server after the client's bytes
            }
        } else {
            self.proxy.handle_client_eof(now);
        }
        true
    }

    /// The client side of an HTTPS session: handshake steps to the pool, then plaintext to the proxy.
    fn tls_client_side(&mut self, io: &mut Io<'_>) -> bool {
        let now = io.now;
        let Some(tls) = self.tls.as_mut() else { return false };
        let mut progress = false;
        if tls.is_handshaking() {
            if tls.is_away() {
                return false;
            }
            let eof = at_eof(io.host, now, self.client);
            if let (Some(s), Some(pool)) = (io.host.socket(now, self.client), io.handshakes.as_deref_mut()) {
                let key = JobKey {
                    session: self.key,
                    upstream: None,
                };
                match tls.start_step(now, s, pool, key) {
                    Ok(sent) => progress |= sent,
                    Err(why) => {
                        io.counters.bump(L7Count::TlsPoolFull);
                        tracing::debug!(client = %self.client_addr, "TLS handshake refused: {why:?}");
                    }
                }
            }
            if eof && !tls.is_away() && !self.client_eof {
                // The client gave up during the handshake.
                io.counters.bump(L7Count::TlsAborted);
                self.client_eof = true;
                self.proxy.handle_client_eof(now);
                self.close_client = true;
                return true;
            }
        } else if let Some(s) = io.host.socket(now, self.client) {
            progress |= tls.receive(s);
        }
        if tls.is_failed() && !self.client_eof {
            self.client_eof = true;
            self.proxy.handle_client_eof(now);
            self.close_client = true;
            return true;
        }
        let tls_upstream = self.upstream.as_mut().filter(|u| u.tls.is_some());
        if let Some(up) = tls_upstream.filter(|_| self.tunnel) {
            let room = upstream::tunnel_room(up);
            let n = tls.plaintext().len().min(room);
            if n > 0 {
                up.out.push(tls.plaintext()[..n].to_vec());
                tls.consume(n);
                progress = true;
            }
        } else if self.tunnel {
            if let Some(up) = self.upstream.as_ref().filter(|u| u.connected) {
                if let Some(s) = io.host.socket(now, up.conn) {
                    let n = s.send_slice(tls.plaintext()).unwrap_or(0);
                    tls.consume(n);
                    progress |= n > 0;
                }
            }
        } else if self.wants_client_bytes() {
            // The plaintext is taken out for the call (the session is borrowed whole by it).
            let mut tls = self.tls.take().expect("a TLS session");
            let data = tls.plaintext();
            if !data.is_empty() {
                let n = self.client_bytes(now, data, io.h2, io.counters);
                tls.consume(n);
                progress |= n > 0;
            }
            self.tls = Some(tls);
        }
        let Some(tls) = self.tls.as_mut() else { return progress };
        if !self.client_eof && tls.at_eof() {
            progress |= self.client_eof(now, io);
        }
        progress
    }

    /// Whether everything for the client has been handed to its socket (the client can be closed): with TLS,
    /// close_notify too. Bytes that cannot be sent any more (the handshake did not finish) are dropped.
    fn client_flushed(&mut self, io: &mut Io<'_>) -> bool {
        let Some(tls) = self.tls.as_mut() else {
            return self.client_out.is_empty();
        };
        if tls.is_open() {
            if !self.client_out.is_empty() {
                return false;
            }
            tls.close_notify();
        }
        if let Some(s) = io.host.socket(io.now, self.client) {
            tls.send(s);
        }
        !tls.has_output()
    }

    /// Carries out the proxy's actions and counts its events.
    fn act(&mut self, io: &mut Io<'_>) -> bool {
        let mut progress = false;
        while let Some(action) = self.proxy.poll_action() {
            progress = true;
            match action {
                Action::SendToClient(buf) => self.client_out.push(buf),
                Action::SendToUpstream(id, buf) => match self.upstream.as_mut().filter(|u| u.id == id) {
                    Some(up) => up.out.push(buf),
                    None => self.proxy.recycle(buf),
                },
                Action::ConnectUpstream {
                    id,
                    group,
                    sticky_server,
                    affinity,
                } => self.connect(io, id, group, sticky_server, affinity),
                Action::CloseClient => self.close_client = true,
                Action::CloseUpstream(id) => self.close_upstream(io, id),
                Action::ReleaseUpstream(id) => self.release_upstream(io, id),
                Action::Tunnel { .. } => self.tunnel = true,
                Action::UpgradeH2c(up) => self.upgrade_to_h2(io, *up),
            }
        }
        while let Some(event) = self.proxy.poll_event() {
            self.aborted |= matches!(event, Event::Aborted);
            count(io.counters, event, io.now);
        }
        while let Some(record) = self.proxy.poll_access() {
            self.log(io, record);
        }
        progress
    }

    /// Hands an access record to the logger (counted when its queue is full).
    fn log(&self, io: &mut Io<'_>, record: AccessRecord) {
        if io.access_log.is_none() {
            return;
        }
        let server = self
            .upstream
            .as_ref()
            .filter(|_| !record.local)
            .and_then(|u| io.upstreams.addr(u.group, u.server));
        let line = AccessLine {
            at: SystemTime::now(),
            listener: self.listener.clone(),
            client: self.client_addr,
            elapsed: record.started.map(|t| io.now.saturating_duration_since(t)),
            server,
            record,
        };
        if !io.access_log.as_mut().is_some_and(|log| log.push(line)) {
            io.counters.bump(L7Count::AccessLogDropped);
        }
    }
}

/// Reads what `socket` received into `consume` (which returns how much it took); whether anything was taken.
fn read(socket: &mut tcp::Socket<'_>, mut consume: impl FnMut(&[u8]) -> usize) -> bool {
    let mut took = false;
    for _ in 0..2 {
        // The receive buffer is a ring: its data may come in two pieces.
        if !socket.can_recv() {
            break;
        }
        let n = socket
            .recv(|data| {
                let n = consume(data).min(data.len());
                (n, n)
            })
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        took = true;
    }
    took
}

/// Whether the peer sent FIN and everything before it has been read.
fn at_eof(host: &mut TcpHost, now: Instant, conn: ConnId) -> bool {
    let Some(state) = host.state(conn) else { return false };
    if matches!(state, State::SynSent | State::SynReceived | State::Listen) {
        return false;
    }
    host.socket(now, conn)
        .is_some_and(|s| !s.may_recv() && s.recv_queue() == 0)
}

/// Copies what `from` received to `to`, as much as `to` can take; whether anything moved.
fn relay(io: &mut Io<'_>, from: ConnId, to: ConnId) -> bool {
    let mut scratch = [0u8; 8192];
    let room = io
        .host
        .socket(io.now, to)
        .map_or(0, |s| s.send_capacity() - s.send_queue());
    let want = room.min(scratch.len());
    if want == 0 {
        return false;
    }
    let n = io
        .host
        .socket(io.now, from)
        .and_then(|s| s.recv_slice(&mut scratch[..want]).ok())
        .unwrap_or(0);
    if n == 0 {
        return false;
    }
    if let Some(s) = io.host.socket(io.now, to) {
        let _ = s.send_slice(&scratch[..n]);
    }
    true
}

/// Counts a proxy event.
fn count(c: &mut L7Counters, event: Event, now: Instant) {
    match event {
        Event::ClientRefused(_) => c.bump(L7Count::ClientRefused),
        Event::UpstreamRefused(_) => c.bump(L7Count::UpstreamRefused),
        Event::Timeout(_) => c.bump(L7Count::Timeouts),
        Event::UpstreamFailed(UpstreamFailure::NoHealthyServer) => c.bump(L7Count::NoHealthyServer),
        Event::UpstreamFailed(UpstreamFailure::Refused) => c.bump(L7Count::UpstreamConnectFailed),
        Event::UpstreamFailed(UpstreamFailure::Reset) => c.bump(L7Count::UpstreamReset),
        Event::Answered { status, local, started } => {
            if let Some(started) = started {
                c.bump(L7Count::response_time(now.saturating_duration_since(started)));
            }
            c.bump(if local {
                L7Count::LocalAnswers
            } else {
                L7Count::Requests
            });
            c.bump(match status {
                100..=199 => L7Count::Status1xx,
                200..=299 => L7Count::Status2xx,
                300..=399 => L7Count::Status3xx,
                400..=499 => L7Count::Status4xx,
                _ => L7Count::Status5xx,
            });
        }
        Event::Aborted => c.bump(L7Count::Aborted),
        Event::Retried => c.bump(L7Count::Retries),
        Event::Tunnelled => {
            // The 101 that opened the tunnel is the exchange's final response.
            c.bump(L7Count::Tunnels);
            c.bump(L7Count::Status1xx);
        }
    }
}
