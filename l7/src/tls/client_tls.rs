//! The TLS side of one client connection: ciphertext from and to the in-stack socket, plaintext to and from
//! the session's HTTP proxy. Handshake steps go to the [`handshake`](super::handshake) pool; once the
//! handshake is done, records are decrypted and encrypted on the worker (symmetric crypto only).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use rustls::{HandshakeKind, ProtocolVersion, ServerConnection};
use smoltcp::socket::tcp;

use super::client_hello::offers_resumption;
use super::handshake::{HandshakeClient, HandshakeDone, Lane, Refused};

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
    /// The subject of the client's verified certificate (mutual TLS).
    pub client_subject: Option<String>,
    /// ALPN chose HTTP/2.
    pub alpn_h2: bool,
    /// Resumed (no certificate signature).
    pub resumed: bool,
    /// TLS 1.3 (else 1.2).
    pub tls13: bool,
    /// From the client's first byte to the handshake's end.
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

/// One client connection's TLS state.
pub struct ClientTls {
    conn: Option<Box<ServerConnection>>,
    phase: Phase,
    first_flight: bool,
    started: Option<Instant>,
    /// Handshake answers waiting for room in the socket.
    out: Vec<u8>,
    out_at: usize,
    /// Decrypted bytes not yet taken.
    plain: Vec<u8>,
    plain_at: usize,
    /// The client sent close_notify or closed its side.
    peer_closed: bool,
    notified: bool,
}

impl ClientTls {
    /// The TLS side of a new connection.
    pub fn new(mut conn: ServerConnection) -> ClientTls {
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        ClientTls {
            conn: Some(Box::new(conn)),
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

    /// Sends what the client sent since the last step to the pool, if anything. Returns whether a step was
    /// sent; a refusal fails the handshake.
    pub fn start_step(
        &mut self,
        now: Instant,
        socket: &mut tcp::Socket<'_>,
        pool: &mut HandshakeClient,
        key: (u32, u32),
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
        if input.is_empty() {
            return Ok(false);
        }
        self.started.get_or_insert(now);
        let lane = if self.first_flight && offers_resumption(&input) != Some(true) {
            Lane::Full
        } else {
            Lane::Light
        };
        let Some(conn) = self.conn.take() else { return Ok(false) };
        match pool.send(lane, key, conn, input) {
            Ok(()) => {
                self.first_flight = false;
                self.phase = Phase::Away;
                Ok(true)
            }
            Err((why, conn)) => {
                self.conn = Some(conn);
                self.phase = Phase::Failed;
                Err(why)
            }
        }
    }

    /// Takes back the connection from a pool thread.
    pub fn step_done(&mut self, now: Instant, done: HandshakeDone) -> StepResult {
        self.out.extend_from_slice(&done.output);
        let conn = self.conn.insert(done.conn);
        if let Some(e) = done.error {
            self.phase = Phase::Failed;
            return StepResult::Failed(e);
        }
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

    /// Whether the client closed and every plaintext byte was taken.
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
