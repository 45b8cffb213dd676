//! The TLS of one in-stack connection: ciphertext from and to the socket, plaintext to and from the session's
//! HTTP proxy. Either side: a client's connection to an `https` listener (xlb is the TLS server) or a
//! connection xlb opens to a server of a group with `tls` (xlb is the TLS client). Handshake steps go to the
//! [`handshake`](super::handshake) pool; once the handshake is done, records are decrypted and encrypted on the
//! worker (symmetric crypto only).

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, Connection, HandshakeKind, ProtocolVersion, ServerConnection};
use smoltcp::socket::tcp;

use super::client_hello::offers_resumption;
use super::handshake::{HandshakeClient, HandshakeDone, JobKey, Lane, PoolConn, Refused};

/// Plaintext and ciphertext rustls may buffer for a connection (beyond, the session stops feeding it).
const BUFFER_LIMIT: usize = 32 * 1024;

/// Bytes read from the socket per handshake step at most.
const MAX_STEP: usize = 64 * 1024;

/// Where the connection's handshake is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the client's next flight.
    Handshaking,
    /// A pool thread has the connection.
    Away,
    /// Handshake done: records flow.
    Open,
    /// The handshake or a record failed (an alert may still be sent).
    Failed,
}

/// How a finished handshake went (for counters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeOutcome {
    /// The subject of the peer's verified certificate (a client's, with mutual TLS; a server's).
    pub client_subject: Option<String>,
    /// ALPN chose HTTP/2.
    pub alpn_h2: bool,
    /// Resumed (no certificate signature).
    pub resumed: bool,
    /// TLS 1.3 (else 1.2).
    pub tls13: bool,
    /// From the first flight to the handshake's end.
    pub elapsed: Duration,
}

/// What a handshake step's return did.
#[derive(Debug)]
pub enum StepResult {
    /// More flights to come.
    Continuing,
    /// The handshake is done.
    Done(HandshakeOutcome),
    /// It failed (the alert is queued).
    Failed(rustls::Error),
}

/// One connection's TLS state.
pub struct TlsLink {
    /// `None` while a pool thread has it, or before it is created (`new_client`).
    conn: Option<Box<Connection>>,
    /// Towards a server: the connection to create on the pool (its first step).
    new_client: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    phase: Phase,
    first_flight: bool,
    started: Option<Instant>,
    /// Handshake answers waiting for room in the socket.
    out: Vec<u8>,
    out_at: usize,
    /// Decrypted bytes not yet taken.
    plain: Vec<u8>,
    plain_at: usize,
    /// The peer sent close_notify or closed its side.
    peer_closed: bool,
    notified: bool,
}

impl TlsLink {
    /// The TLS of a client's new connection to an `https` listener.
    pub fn server(conn: ServerConnection) -> TlsLink {
        let mut conn = Connection::Server(conn);
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        TlsLink::with(Some(Box::new(conn)), None)
    }

    /// The TLS of a connection xlb opens to the server `name`; created by the first step, on the pool.
    pub fn client(config: Arc<ClientConfig>, name: ServerName<'static>) -> TlsLink {
        TlsLink::with(None, Some((config, name)))
    }

    fn with(conn: Option<Box<Connection>>, new_client: Option<(Arc<ClientConfig>, ServerName<'static>)>) -> TlsLink {
        TlsLink {
            conn,
            new_client,
            phase: Phase::Handshaking,
            first_flight: true,
            started: None,
            out: Vec::new(),
            out_at: 0,
            plain: Vec::new(),
            plain_at: 0,
            peer_closed: false,
            notified: false,
        }
    }

    /// Whether the handshake is still going on (here or on a pool thread).
    pub fn is_handshaking(&self) -> bool {
        matches!(self.phase, Phase::Handshaking | Phase::Away)
    }

    /// Whether records flow (plaintext can be written).
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Whether the connection failed (the session closes it once the alert is sent).
    pub fn is_failed(&self) -> bool {
        self.phase == Phase::Failed
    }

    /// Whether a pool thread has the connection.
    pub fn is_away(&self) -> bool {
        self.phase == Phase::Away
    }

    /// Whether xlb is the TLS client (a connection to a server).
    fn towards_server(&self) -> bool {
        self.new_client.is_some() || self.conn.as_deref().is_some_and(|c| matches!(c, Connection::Client(_)))
    }

    /// Sends what the peer sent since the last step to the pool, if anything (towards a server, the first
    /// step creates the connection). Returns whether a step was sent; a refusal fails the handshake.
    pub fn start_step(
        &mut self,
        now: Instant,
        socket: &mut tcp::Socket<'_>,
        pool: &mut HandshakeClient,
        key: JobKey,
    ) -> Result<bool, Refused> {
        if self.phase != Phase::Handshaking {
            return Ok(false);
        }
        let mut input = Vec::new();
        while socket.can_recv() && input.len() < MAX_STEP {
            let room = MAX_STEP - input.len();
            let n = socket
                .recv(|data| {
                    let n = data.len().min(room);
                    input.extend_from_slice(&data[..n]);
                    (n, n)
                })
                .unwrap_or(0);
            if n == 0 {
                break;
            }
        }
        let conn = match (self.conn.take(), self.new_client.take()) {
            (Some(conn), _) if !input.is_empty() => PoolConn::Conn(conn),
            (None, Some((config, name))) => PoolConn::NewClient(config, name),
            (conn, _) => {
                self.conn = conn;
                return Ok(false);
            }
        };
        self.started.get_or_insert(now);
        // Only a client's full ClientHello needs xlb's signature.
        let full = self.first_flight && !self.towards_server() && offers_resumption(&input) != Some(true);
        let lane = if full { Lane::Full } else { Lane::Light };
        match pool.send(lane, key, conn, input) {
            Ok(()) => {
                self.first_flight = false;
                self.phase = Phase::Away;
                Ok(true)
            }
            Err((why, conn)) => {
                if let PoolConn::Conn(conn) = conn {
                    self.conn = Some(conn);
                }
                self.phase = Phase::Failed;
                Err(why)
            }
        }
    }

    /// Takes back the connection from a pool thread.
    pub fn step_done(&mut self, now: Instant, done: HandshakeDone) -> StepResult {
        self.out.extend_from_slice(&done.output);
        if let Some(e) = done.error {
            self.conn = done.conn;
            self.phase = Phase::Failed;
            return StepResult::Failed(e);
        }
        let Some(mut conn) = done.conn else {
            self.phase = Phase::Failed;
            return StepResult::Failed(rustls::Error::General("no connection came back".into()));
        };
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        let conn = self.conn.insert(conn);
        if conn.is_handshaking() {
            self.phase = Phase::Handshaking;
            return StepResult::Continuing;
        }
        self.phase = Phase::Open;
        StepResult::Done(HandshakeOutcome {
            alpn_h2: conn.alpn_protocol() == Some(b"h2"),
            client_subject: conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| super::subject::subject(cert)),
            resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
            tls13: conn.protocol_version() == Some(ProtocolVersion::TLSv1_3),
            elapsed: now.saturating_duration_since(self.started.unwrap_or(now)),
        })
    }

    /// Decrypts what the socket received (once the handshake is done). Returns whether anything moved.
    pub fn receive(&mut self, socket: &mut tcp::Socket<'_>) -> bool {
        if self.phase != Phase::Open {
            return false;
        }
        let Some(conn) = self.conn.as_mut() else { return false };
        let mut progress = false;
        for _ in 0..8 {
            if self.plain_at < self.plain.len() {
                break; // the proxy has not taken the last plaintext yet
            }
            self.plain.clear();
            self.plain_at = 0;
            // Plaintext rustls already holds comes first.
            let mut scratch = [0u8; 4096];
            match conn.reader().read(&mut scratch) {
                Ok(0) => {
                    self.peer_closed = true; // close_notify
                    return true;
                }
                Ok(n) => {
                    self.plain.extend_from_slice(&scratch[..n]);
                    progress = true;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.peer_closed = true; // closed without close_notify
                    return true;
                }
            }
            match conn.read_tls(&mut SocketReader(socket)) {
                Ok(0) => {
                    self.peer_closed = true;
                    return true;
                }
                Ok(_) => progress = true,
                Err(_) => break, // nothing received (WouldBlock)
            }
            if conn.process_new_packets().is_err() {
                self.phase = Phase::Failed; // a bad record: the alert is queued
                return true;
            }
        }
        progress
    }

    /// Decrypted bytes not yet taken.
    pub fn plaintext(&self) -> &[u8] {
        &self.plain[self.plain_at..]
    }

    /// Marks `n` plaintext bytes taken.
    pub fn consume(&mut self, n: usize) {
        self.plain_at = (self.plain_at + n).min(self.plain.len());
    }

    /// Whether the peer closed and every plaintext byte was taken.
    pub fn at_eof(&self) -> bool {
        self.peer_closed && self.plain_at >= self.plain.len()
    }

    /// Encrypts as much of `data` as the connection's buffer takes; returns how much.
    pub fn encrypt(&mut self, data: &[u8]) -> usize {
        match self.conn.as_mut().filter(|_| self.phase == Phase::Open) {
            Some(conn) => conn.writer().write(data).unwrap_or(0),
            None => 0,
        }
    }

    /// Queues close_notify (once).
    pub fn close_notify(&mut self) {
        if let Some(conn) = self
            .conn
            .as_mut()
            .filter(|_| self.phase == Phase::Open && !self.notified)
        {
            conn.send_close_notify();
            self.notified = true;
        }
    }

    /// Writes pending ciphertext into the socket; returns whether anything was written.
    pub fn send(&mut self, socket: &mut tcp::Socket<'_>) -> bool {
        let mut sent = false;
        while self.out_at < self.out.len() {
            let n = socket.send_slice(&self.out[self.out_at..]).unwrap_or(0);
            if n == 0 {
                return sent;
            }
            sent = true;
            self.out_at += n;
        }
        if !self.out.is_empty() {
            self.out = Vec::new();
            self.out_at = 0;
        }
        if matches!(self.phase, Phase::Open | Phase::Failed) {
            if let Some(conn) = self.conn.as_mut() {
                while conn.wants_write() {
                    match conn.write_tls(&mut SocketWriter(socket)) {
                        Ok(n) if n > 0 => sent = true,
                        _ => break,
                    }
                }
            }
        }
        sent
    }

    /// Whether ciphertext is still waiting for room in the socket.
    pub fn has_output(&self) -> bool {
        self.out_at < self.out.len()
            || (matches!(self.phase, Phase::Open | Phase::Failed)
                && self.conn.as_ref().is_some_and(|c| c.wants_write()))
    }

    /// Whether the connection can be kept idle for another request: open, with nothing buffered either way.
    pub fn is_clean(&self) -> bool {
        self.phase == Phase::Open && self.plain_at >= self.plain.len() && !self.peer_closed && !self.has_output()
    }

    /// Frees the plaintext buffer of an idle connection.
    pub fn release_idle_buffers(&mut self) {
        if self.plain_at >= self.plain.len() {
            self.plain = Vec::new();
            self.plain_at = 0;
        }
    }
}

/// The socket's received bytes as `io::Read` for rustls (`WouldBlock` when there are none yet).
struct SocketReader<'a, 'b>(&'a mut tcp::Socket<'b>);

impl Read for SocketReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.recv_slice(buf) {
            Ok(0) | Err(_) if !self.0.may_recv() && self.0.recv_queue() == 0 => Ok(0),
            Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
            Ok(n) => Ok(n),
            Err(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// The socket's send buffer as `io::Write` for rustls (`WouldBlock` when it is full).
struct SocketWriter<'a, 'b>(&'a mut tcp::Socket<'b>);

impl Write for SocketWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.send_slice(buf) {
            Ok(0) if !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
            Ok(n) => Ok(n),
            Err(_) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
