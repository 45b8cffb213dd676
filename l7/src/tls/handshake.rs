//! The handshake pool: threads that run the expensive part of TLS handshakes for the workers.
//!
//! A worker never runs asymmetric crypto. While a connection is handshaking, each batch of bytes the peer
//! sends travels with the connection's rustls state to a pool thread ([`HandshakeJob`]), which feeds them to
//! rustls (ECDHE, the certificate signature — local, or a blocking Key Server round trip — or, towards a
//! server, the verification of its certificate) and sends the connection back with the bytes to answer
//! ([`HandshakeDone`]), waking the worker. Meanwhile the worker keeps serving every other connection; the
//! peer's next bytes wait in its socket buffer. A connection xlb opens to an HTTPS server is even created on
//! the pool ([`PoolConn::NewClient`]): its ClientHello carries a freshly generated key share.
//!
//! Two lanes: full handshakes of clients, and everything without a signature of xlb's own — resumptions (a
//! ClientHello offering a ticket or PSK), a client's second flight and the handshakes towards servers. A Key
//! Server that is slow or down holds up only the full lane; a lane's queue that is full refuses new handshakes
//! at once (counted) instead of queuing them without bound.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection};
use xlb_stack::wake::Wake;

/// Which lane a job goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// A ClientHello that needs a certificate signature.
    Full,
    /// A resumption, or a later flight of a handshake (no signature).
    Light,
}

/// The TLS connection a job works on.
pub enum PoolConn {
    /// A connection in progress: a client's (rustls server side) or one towards a server (client side).
    Conn(Box<Connection>),
    /// A connection towards the server `name` to create (its ClientHello becomes the job's output).
    NewClient(Arc<ClientConfig>, ServerName<'static>),
}

/// Which connection of a session a job is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobKey {
    /// The worker's handle for the session (slot index, generation).
    pub session: (u32, u32),
    /// `None`: the client's connection; `Some(n)`: the session's `n`-th upstream connection.
    pub upstream: Option<u64>,
}

/// A connection's handshake step for a pool thread.
pub struct HandshakeJob {
    /// Whose connection it is.
    pub key: JobKey,
    /// The connection.
    pub conn: PoolConn,
    /// Bytes the peer sent.
    pub input: Vec<u8>,
    reply: Sender<HandshakeDone>,
    wake: Option<Arc<Wake>>,
}

/// A handshake step done by a pool thread.
pub struct HandshakeDone {
    /// See [`HandshakeJob::key`].
    pub key: JobKey,
    /// The connection (`None` if it could not be created).
    pub conn: Option<Box<Connection>>,
    /// Bytes to send to the peer (the handshake's next flight, or an alert).
    pub output: Vec<u8>,
    /// The handshake failed (an alert, if any, is in `output`).
    pub error: Option<rustls::Error>,
    /// Time the step took on the pool thread.
    pub took: Duration,
}

/// Sizes of the pool.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    /// Threads for full handshakes.
    pub full_threads: usize,
    /// Threads for resumptions and later flights.
    pub light_threads: usize,
    /// Jobs waiting per lane at most.
    pub queue: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            full_threads: 2,
            light_threads: 1,
            queue: 1024,
        }
    }
}

/// The pool's threads (they stop when every [`HandshakeClient`] and the pool are dropped).
pub struct HandshakePool {
    full: Sender<HandshakeJob>,
    light: Sender<HandshakeJob>,
    threads: Vec<JoinHandle<()>>,
}

impl HandshakePool {
    /// Starts the threads.
    pub fn start(config: PoolConfig) -> std::io::Result<HandshakePool> {
        let (full, full_rx) = bounded(config.queue);
        let (light, light_rx) = bounded(config.queue);
        let mut threads = Vec::new();
        for (lane, rx, n) in [
            ("full", full_rx, config.full_threads),
            ("light", light_rx, config.light_threads),
        ] {
            for i in 0..n.max(1) {
                let rx: Receiver<HandshakeJob> = rx.clone();
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("xlb-tls-{lane}-{i}"))
                        .spawn(move || run(rx))?,
                );
            }
        }
        Ok(HandshakePool { full, light, threads })
    }

    /// A worker's handle: it sends jobs and receives their results (waking `wake` when one is done).
    pub fn client(&self, wake: Option<Arc<Wake>>) -> HandshakeClient {
        let (reply, results) = bounded(4096);
        HandshakeClient {
            full: self.full.clone(),
            light: self.light.clone(),
            reply,
            results,
            wake,
            in_flight: 0,
        }
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

/// A pool thread: runs jobs until every sender is gone.
fn run(jobs: Receiver<HandshakeJob>) {
    while let Ok(job) = jobs.recv() {
        let started = Instant::now();
        let HandshakeJob {
            key,
            conn,
            input,
            reply,
            wake,
        } = job;
        let (mut conn, error) = match conn {
            PoolConn::Conn(mut conn) => {
                let error = feed(&mut conn, &input).err();
                (Some(conn), error)
            }
            PoolConn::NewClient(config, name) => match ClientConnection::new(config, name) {
                Ok(c) => (Some(Box::new(Connection::Client(c))), None),
                Err(e) => (None, Some(e)),
            },
        };
        let mut output = Vec::new();
        if let Some(conn) = conn.as_deref_mut() {
            write_out(conn, &mut output);
        }
        let done = HandshakeDone {
            key,
            conn,
            output,
            error,
            took: started.elapsed(),
        };
        // The worker's result queue holds at least as many results as it has jobs in flight.
        let _ = reply.try_send(done);
        if let Some(w) = wake {
            w.signal();
        }
    }
}

/// What rustls wants to send, appended to `output`.
fn write_out(conn: &mut Connection, output: &mut Vec<u8>) {
    while conn.wants_write() {
        match conn.write_tls(output) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Gives `input` to rustls and processes it (on a pool thread: this is where signatures happen).
fn feed(conn: &mut Connection, mut input: &[u8]) -> Result<(), rustls::Error> {
    while !input.is_empty() {
        match conn.read_tls(&mut input) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(rustls::Error::General(format!("reading the handshake: {e}"))),
        }
        conn.process_new_packets()?;
    }
    Ok(())
}

/// Why a job was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The lane's queue is full (the pool is overloaded).
    QueueFull,
    /// The worker has as many jobs in flight as its result queue holds.
    TooManyInFlight,
}

/// A worker's end of the pool.
pub struct HandshakeClient {
    full: Sender<HandshakeJob>,
    light: Sender<HandshakeJob>,
    reply: Sender<HandshakeDone>,
    results: Receiver<HandshakeDone>,
    wake: Option<Arc<Wake>>,
    in_flight: usize,
}

impl HandshakeClient {
    /// Sends a handshake step to the pool; on refusal the connection comes back.
    pub fn send(&mut self, lane: Lane, key: JobKey, conn: PoolConn, input: Vec<u8>) -> Result<(), (Refused, PoolConn)> {
        if self.in_flight >= self.reply.capacity().unwrap_or(usize::MAX) {
            return Err((Refused::TooManyInFlight, conn));
        }
        let job = HandshakeJob {
            key,
            conn,
            input,
            reply: self.reply.clone(),
            wake: self.wake.clone(),
        };
        let lane = match lane {
            Lane::Full => &self.full,
            Lane::Light => &self.light,
        };
        match lane.try_send(job) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(())
            }
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => Err((Refused::QueueFull, job.conn)),
        }
    }

    /// A finished step, if any.
    pub fn receive(&mut self) -> Option<HandshakeDone> {
        let done = self.results.try_recv().ok()?;
        self.in_flight -= 1;
        Some(done)
    }

    /// The descriptor the pool signals when a step is done (the worker sleeps on it).
    pub fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        self.wake.as_ref().map(|w| w.fd())
    }

    /// Jobs sent and not yet received back.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}
