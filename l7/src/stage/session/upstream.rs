//! The upstream side of a session: the connection to the server the proxy asked for (a new one, or one kept
//! idle), its TLS for groups with `tls` (handshake steps on the pool, records on the worker), and the bytes
//! between it and the proxy.

use std::net::SocketAddrV4;
use std::time::Instant;

use smoltcp::socket::tcp::State;

use super::{at_eof, read, relay, Io, Outbox, Session, HIGH_WATER};
use crate::proxy::{UpstreamFailure, UpstreamId};
use crate::rules::GroupId;
use crate::stage::counters::{L7Count, L7Counters};
use crate::stage::token::Token;
use crate::stage::upstreams::{NoUpstream, Upstreams};
use crate::sticky::ServerId;
use crate::tcp::ConnId;
use crate::tls::handshake::{HandshakeDone, JobKey};
use crate::tls::link::{StepResult, TlsLink};

/// The upstream connection of a session.
pub(super) struct Upstream {
    pub id: UpstreamId,
    pub conn: ConnId,
    pub group: GroupId,
    pub server: usize,
    /// Established (and, with TLS, the handshake done): the proxy was told.
    pub connected: bool,
    pub eof: bool,
    /// Plaintext for the server, waiting for room.
    pub out: Outbox,
    /// TLS towards the server (groups with `tls`).
    pub tls: Option<Box<TlsLink>>,
    /// This connection's number in the session (handshake results name it).
    pub serial: u64,
}

/// A connection [`Session::open`] found for a request.
struct Opened {
    conn: ConnId,
    tls: Option<Box<TlsLink>>,
    server: usize,
    /// Taken from the idle pool.
    reused: bool,
}

impl Session {
    /// Hands what waits for the server to its socket (through TLS: handshake flights, then records).
    pub(super) fn flush_upstream(&mut self, io: &mut Io<'_>) -> bool {
        let Some(up) = self.upstream.as_mut() else { return false };
        match up.tls.as_deref_mut() {
            Some(tls) => {
                if !tls.has_output() && (up.out.is_empty() || !tls.is_open()) {
                    return false;
                }
                let Some(s) = io.host.socket(io.now, up.conn) else {
                    return false;
                };
                let mut sent = tls.send(s);
                if tls.is_open() && !up.out.is_empty() {
                    sent |= up.out.drain(|data| tls.encrypt(data), &mut self.proxy);
                    sent |= tls.send(s);
                }
                sent
            }
            None if up.connected && !up.out.is_empty() => io
                .host
                .socket(io.now, up.conn)
                .is_some_and(|s| up.out.flush(s, &mut self.proxy)),
            None => false,
        }
    }

    /// What the server sent: to the proxy, or through a tunnel to the client.
    pub(super) fn upstream_side(&mut self, io: &mut Io<'_>) -> bool {
        let Some(up) = self.upstream.as_mut() else { return false };
        let now = io.now;
        let Some(state) = io.host.state(up.conn) else {
            // Gone: refused or never answered (not connected), or reset.
            let failure = if up.connected {
                UpstreamFailure::Reset
            } else {
                self.failed_servers.push(up.server);
                UpstreamFailure::Refused
            };
            let id = up.id;
            self.upstream = None;
            if self.tunnel {
                self.close_client = true;
            } else {
                self.proxy.handle_upstream_failed(now, id, failure);
            }
            return true;
        };
        if !up.connected {
            if !matches!(state, State::Established | State::CloseWait) {
                return false;
            }
            if up.tls.as_ref().is_some_and(|t| !t.is_open()) {
                return self.upstream_handshake(io);
            }
            up.connected = true;
            self.failed_servers.clear();
            let (id, server) = (up.id, up.server);
            self.proxy.handle_upstream_connected(now, id, ServerId(server as u32));
            return true;
        }
        let mut progress = false;
        if let Some(tls) = up.tls.as_deref_mut() {
            if let Some(s) = io.host.socket(now, up.conn) {
                progress |= tls.receive(s);
            }
            if tls.is_failed() {
                // A bad record from the server: like a reset.
                let id = up.id;
                io.host.abort(now, up.conn);
                self.upstream = None;
                if self.tunnel {
                    self.close_client = true;
                } else {
                    self.proxy.handle_upstream_failed(now, id, UpstreamFailure::Reset);
                }
                return true;
            }
            let data = tls.plaintext();
            if !data.is_empty() && self.client_out.len < HIGH_WATER {
                let n = if self.tunnel {
                    self.client_out.push(data.to_vec());
                    data.len()
                } else {
                    self.proxy.handle_upstream_bytes(now, up.id, data)
                };
                tls.consume(n);
                progress |= n > 0;
            }
        } else if self.tunnel && self.tls.is_some() {
            // Through TLS: the server's bytes are encrypted by `flush`, like responses.
            let room = HIGH_WATER.saturating_sub(self.client_out.len).min(16 * 1024);
            if room > 0 {
                if let Some(s) = io.host.socket(now, up.conn) {
                    let mut buf = vec![0; room];
                    let n = s.recv_slice(&mut buf).unwrap_or(0);
                    buf.truncate(n);
                    self.client_out.push(buf);
                    progress |= n > 0;
                }
            }
        } else if self.tunnel {
            let (from, to) = (up.conn, self.client);
            progress |= relay(io, from, to);
        } else if self.client_out.len < HIGH_WATER {
            let proxy = &mut self.proxy;
            let id = up.id;
            if let Some(s) = io.host.socket(now, up.conn) {
                progress |= read(s, |data| proxy.handle_upstream_bytes(now, id, data));
            }
        }
        let Some(up) = self.upstream.as_mut() else {
            return progress;
        };
        let eof = match up.tls.as_deref() {
            Some(tls) => tls.at_eof(),
            None => at_eof(io.host, now, up.conn),
        };
        if !up.eof && eof {
            up.eof = true;
            if self.tunnel {
                // Half-close: the client gets FIN once what the server sent is delivered.
                self.close_client = true;
            } else {
                self.proxy.handle_upstream_eof(now, up.id);
            }
            progress = true;
        }
        progress
    }

    /// The TCP connection to the server is established: the TLS handshake's next step goes to the pool.
    fn upstream_handshake(&mut self, io: &mut Io<'_>) -> bool {
        let session = self.key;
        let Some(up) = self.upstream.as_mut() else { return false };
        let Some(tls) = up.tls.as_deref_mut() else { return false };
        if tls.is_failed() {
            return self.upstream_tls_failed(io);
        }
        if tls.is_away() {
            return false;
        }
        let key = JobKey {
            session,
            upstream: Some(up.serial),
        };
        let Some(pool) = io.handshakes.as_deref_mut() else {
            tracing::debug!("HTTPS to a server without a handshake pool");
            return self.upstream_tls_failed(io);
        };
        let Some(s) = io.host.socket(io.now, up.conn) else {
            return false;
        };
        match tls.start_step(io.now, s, pool, key) {
            Ok(sent) => sent,
            Err(why) => {
                io.counters.bump(L7Count::TlsPoolFull);
                tracing::debug!("TLS handshake with a server refused: {why:?}");
                self.upstream_tls_failed(io)
            }
        }
    }

    /// The TLS handshake with the server failed: counted, the connection closed (after its alert), and the
    /// proxy told the connection was refused (another server for an idempotent request, else 502).
    fn upstream_tls_failed(&mut self, io: &mut Io<'_>) -> bool {
        let Some(mut up) = self.upstream.take() else {
            return false;
        };
        io.counters.bump(L7Count::UpstreamTlsFailed);
        if let (Some(tls), Some(s)) = (up.tls.as_deref_mut(), io.host.socket(io.now, up.conn)) {
            tls.send(s); // the alert
        }
        io.host.close(io.now, up.conn);
        self.failed_servers.push(up.server);
        if self.tunnel {
            self.close_client = true;
        } else {
            self.proxy
                .handle_upstream_failed(io.now, up.id, UpstreamFailure::Refused);
        }
        true
    }

    /// Takes back the upstream connection's TLS from a pool thread; returns why the handshake failed, if it
    /// did (the session fails the connection on its next pump). Stale results (the connection is gone) are
    /// dropped.
    pub(super) fn upstream_step_done(
        &mut self,
        now: Instant,
        done: HandshakeDone,
        counters: &mut L7Counters,
    ) -> Option<String> {
        let up = self.upstream.as_mut().filter(|u| Some(u.serial) == done.key.upstream)?;
        let tls = up.tls.as_deref_mut().filter(|t| t.is_away())?;
        match tls.step_done(now, done) {
            StepResult::Continuing => None,
            StepResult::Done(outcome) => {
                counters.bump(if outcome.resumed {
                    L7Count::UpstreamTlsResumed
                } else {
                    L7Count::UpstreamTlsFull
                });
                None
            }
            StepResult::Failed(e) => {
                let server = up.server;
                Some(format!("server #{server} of group #{}: {e}", up.group.0))
            }
        }
    }

    /// The proxy is done with the connection: kept idle for the next request if it is clean, else closed.
    pub(super) fn release_upstream(&mut self, io: &mut Io<'_>, id: UpstreamId) {
        let Some(mut up) = self.upstream.take_if(|u| u.id == id) else {
            return;
        };
        let token = Token::Idle {
            group: up.group.0 as u32,
            server: up.server as u32,
        };
        io.host.set_token(up.conn, token.encode());
        let tls_clean = up.tls.as_deref().is_none_or(TlsLink::is_clean);
        if let Some(tls) = up.tls.as_deref_mut() {
            tls.release_idle_buffers();
        }
        let kept = up.out.is_empty()
            && !up.eof
            && tls_clean
            && io.upstreams.keep_idle(io.now, up.group, up.server, up.conn, up.tls);
        if kept {
            io.host.set_busy(up.conn, false);
        } else {
            io.host.close(io.now, up.conn);
        }
    }

    /// The proxy closes the connection (a timeout, or a response that ends it).
    pub(super) fn close_upstream(&mut self, io: &mut Io<'_>, id: UpstreamId) {
        if let Some(up) = self.upstream.take_if(|u| u.id == id) {
            if !up.connected {
                self.failed_servers.push(up.server); // the connect (or the TLS handshake) timed out
            }
            io.host.close(io.now, up.conn);
        }
    }

    /// Opens (or takes from the idle pool) a connection to a server of `group` for the proxy's upstream `id`.
    pub(super) fn connect(
        &mut self,
        io: &mut Io<'_>,
        id: UpstreamId,
        group: GroupId,
        sticky: Option<ServerId>,
        affinity: Option<u64>,
    ) {
        if let Some(old) = self.upstream.take() {
            io.host.close(io.now, old.conn);
        }
        match self.open(io, group, sticky, affinity) {
            Ok(Opened {
                conn,
                tls,
                server,
                reused,
            }) => {
                if reused {
                    io.counters.bump(L7Count::UpstreamReused);
                } else {
                    io.counters.bump(L7Count::UpstreamConnects);
                }
                io.host.set_token(conn, self.upstream_token.encode());
                io.host.set_busy(conn, true);
                self.upstream_serial += 1;
                self.upstream = Some(Upstream {
                    id,
                    conn,
                    group,
                    server,
                    connected: false,
                    eof: false,
                    out: Outbox::default(),
                    tls,
                    serial: self.upstream_serial,
                });
            }
            Err(why) => {
                let failure = match why {
                    NoUpstream::NoHealthyServer => UpstreamFailure::NoHealthyServer,
                    NoUpstream::NoLocalPort => {
                        io.counters.bump(L7Count::LocalPortsExhausted);
                        UpstreamFailure::Refused
                    }
                    NoUpstream::ConnectionLimit => {
                        io.counters.bump(L7Count::ConnectionLimit);
                        UpstreamFailure::Refused
                    }
                };
                self.proxy.handle_upstream_failed(io.now, id, failure);
            }
        }
    }

    /// An upstream connection to a server of `group`: a kept idle one, or a new one (with a new TLS client for
    /// groups with `tls`). Returns it, the server and whether it was reused.
    fn open(
        &mut self,
        io: &mut Io<'_>,
        group: GroupId,
        sticky: Option<ServerId>,
        affinity: Option<u64>,
    ) -> Result<Opened, NoUpstream> {
        let server = io
            .upstreams
            .pick_avoiding(group, sticky, affinity, self.client_addr, &self.failed_servers)
            .ok_or(NoUpstream::NoHealthyServer)?;
        if let Some(idle) = io.upstreams.take_idle(io.now, io.host, group, server) {
            return Ok(Opened {
                conn: idle.conn,
                tls: idle.tls,
                server,
                reused: true,
            });
        }
        let addr = io.upstreams.addr(group, server).ok_or(NoUpstream::NoHealthyServer)?;
        let Some(source) = (io.source)(*addr.ip()) else {
            io.counters.bump(L7Count::NoRoute);
            return Err(NoUpstream::NoLocalPort);
        };
        let port = Upstreams::local_port(io.ports, source, addr).ok_or(NoUpstream::NoLocalPort)?;
        let local = SocketAddrV4::new(source, port);
        let Some(conn) = io.host.connect(io.now, local, addr, self.upstream_token.encode()) else {
            // Never used: the port goes back at once.
            io.ports.give_back_upstream(source, addr, port, None);
            return Err(NoUpstream::ConnectionLimit);
        };
        let tls = io
            .upstreams
            .tls(group)
            .map(|t| Box::new(TlsLink::client(t.config().clone(), t.name_for(*addr.ip()))));
        Ok(Opened {
            conn,
            tls,
            server,
            reused: false,
        })
    }
}

/// Room for more client bytes towards a server through a tunnel over TLS (encrypted by `flush_upstream`).
pub(super) fn tunnel_room(up: &Upstream) -> usize {
    if up.connected {
        HIGH_WATER.saturating_sub(up.out.len).min(16 * 1024)
    } else {
        0
    }
}
