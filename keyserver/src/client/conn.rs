//! One client connection (many requests in flight, answers dispatched by id) and the
//! background connector that (re)connects endpoints with exponential backoff.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tracing::{debug, info, warn};

use super::{status_error, ClientTls, Endpoint, Inner, SignError};
use crate::transport::{self, Socket, WriteHalf};
use crate::wire::{self, Decoder, Request, Response, Status};

/// A live connection to one Key Server.
pub(crate) struct Conn {
    pub(crate) endpoint: String,
    writer: Mutex<WriteHalf>,
    pending: Mutex<HashMap<u64, Sender<Response>>>,
    alive: AtomicBool,
    control: Box<dyn Socket>,
}

impl Conn {
    pub(crate) fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Marks the connection dead, closes the socket, fails every waiting request.
    pub(crate) fn close(&self) {
        self.alive.store(false, Ordering::SeqCst);
        self.control.shutdown_both();
        if let Ok(mut p) = self.pending.lock() {
            p.clear(); // dropping the senders wakes the waiters with ConnectionLost
        }
    }

    /// Sends `req` and waits for its answer.
    pub(crate) fn call(&self, req: &Request, timeout: Duration) -> Result<Vec<u8>, SignError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        match self.pending.lock() {
            Ok(mut p) => p.insert(req.id, tx),
            Err(_) => return Err(SignError::ConnectionLost),
        };
        if !self.alive() {
            self.forget(req.id);
            return Err(SignError::ConnectionLost);
        }
        let bytes = match wire::encode(req) {
            Ok(b) => b,
            Err(e) => {
                self.forget(req.id);
                return Err(status_error(Status::BadRequest, e.to_string().as_bytes()));
            }
        };
        let sent = match self.writer.lock() {
            Ok(mut w) => w.write_all(&bytes).and_then(|_| w.flush()),
            Err(_) => Err(std::io::Error::other("writer poisoned")),
        };
        if let Err(e) = sent {
            debug!("write to key server {} failed: {e}", self.endpoint);
            self.forget(req.id);
            self.close();
            return Err(SignError::ConnectionLost);
        }
        match rx.recv_timeout(timeout) {
            Ok(resp) if resp.status == Status::Ok => Ok(resp.payload),
            Ok(resp) => Err(status_error(resp.status, &resp.payload)),
            Err(RecvTimeoutError::Timeout) => {
                self.forget(req.id);
                Err(SignError::Timeout(timeout))
            }
            Err(RecvTimeoutError::Disconnected) => Err(SignError::ConnectionLost),
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
    }
}

/// Reads answers and hands each to its waiter until the connection ends.
fn read_loop(conn: Arc<Conn>, mut r: transport::ReadHalf, inner: Weak<Inner>, slot: usize) {
    let mut dec = Decoder::<Response>::new();
    let mut buf = vec![0u8; 16 * 1024];
    let why = loop {
        match r.read(&mut buf) {
            Ok(0) => break "closed by the server".to_string(),
            Ok(n) => dec.push(&buf[..n]),
            Err(e) => break format!("read error: {e}"),
        }
        let mut bad = None;
        loop {
            match dec.poll_frame() {
                Ok(Some(resp)) => {
                    let waiter = conn.pending.lock().ok().and_then(|mut p| p.remove(&resp.id));
                    if let Some(tx) = waiter {
                        let _ = tx.try_send(resp);
                    } // else: its caller timed out already
                }
                Ok(None) => break,
                Err(e) => {
                    bad = Some(format!("malformed answer: {e}"));
                    break;
                }
            }
        }
        if let Some(b) = bad {
            break b;
        }
    };
    let was_alive = conn.alive();
    conn.close();
    let Some(inner) = inner.upgrade() else { return };
    if was_alive && !inner.shutdown.load(Ordering::SeqCst) {
        warn!("connection to key server {} lost ({why}); reconnecting", conn.endpoint);
    }
    if let Ok(mut c) = inner.slots[slot].conn.write() {
        if c.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
            *c = None;
        }
    }
    let _ = inner.wake.try_send(());
}

fn connect(ep: &Endpoint, timeout: Duration) -> Result<(Box<dyn Socket>, Option<rustls::Connection>), String> {
    let (mut sock, tls): (Box<dyn Socket>, Option<&ClientTls>) = match ep {
        Endpoint::Unix(p) => (Box::new(UnixStream::connect(p).map_err(|e| e.to_string())?), None),
        Endpoint::UnixTls(p, t) => (Box::new(UnixStream::connect(p).map_err(|e| e.to_string())?), Some(t)),
        Endpoint::Tcp(a, t) => {
            let s = TcpStream::connect_timeout(a, timeout).map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            (Box::new(s), Some(t))
        }
    };
    let Some(t) = tls else { return Ok((sock, None)) };
    sock.set_timeouts(Some(timeout), Some(timeout))
        .map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(t.config.clone(), t.server_name.clone())
        .map_err(|e| format!("tls setup: {e}"))?;
    let mut conn = rustls::Connection::Client(conn);
    transport::handshake(&mut conn, sock.as_mut()).map_err(|e| format!("tls handshake: {e}"))?;
    Ok((sock, Some(conn)))
}

fn open(inner: &Arc<Inner>, slot: usize) -> Result<Arc<Conn>, String> {
    let ep = &inner.slots[slot].endpoint;
    let (sock, tls) = connect(ep, inner.options.connect_timeout)?;
    // Reads block until the server answers or the socket is shut down; a stuck write
    // gives up after the request timeout.
    sock.set_timeouts(None, Some(inner.options.request_timeout))
        .map_err(|e| e.to_string())?;
    let (r, w, control) = transport::split(sock, tls).map_err(|e| e.to_string())?;
    let conn = Arc::new(Conn {
        endpoint: ep.to_string(),
        writer: Mutex::new(w),
        pending: Mutex::new(HashMap::new()),
        alive: AtomicBool::new(true),
        control,
    });
    let (c2, weak) = (conn.clone(), Arc::downgrade(inner));
    std::thread::Builder::new()
        .name(format!("ks-client-read-{slot}"))
        .spawn(move || read_loop(c2, r, weak, slot))
        .map_err(|e| e.to_string())?;
    // Connected means answering: with TLS 1.3 the server checks our certificate only
    // after our side of the handshake is done, and a plain client on a TLS socket
    // "connects" too. A first ping proves the session works.
    let ping = Request {
        opcode: crate::wire::Opcode::Ping,
        id: inner.next_id.fetch_add(1, Ordering::Relaxed),
        key_id: Default::default(),
        scheme: 0,
        payload: Vec::new(),
    };
    if let Err(e) = conn.call(&ping, inner.options.connect_timeout) {
        conn.alive.store(false, Ordering::SeqCst); // quietly: it never counted as connected
        conn.close();
        return Err(format!("connected, but no answer to a first ping ({e})"));
    }
    Ok(conn)
}

/// Keeps every endpoint connected: retries failed ones with exponential backoff.
pub(crate) fn connector(inner: Weak<Inner>, wake: Receiver<()>) {
    let n = match inner.upgrade() {
        Some(i) => i.slots.len(),
        None => return,
    };
    let (min, max, log_every) = match inner.upgrade() {
        Some(i) => (i.options.backoff_min, i.options.backoff_max, i.options.log_interval),
        None => return,
    };
    let mut backoff = vec![min; n];
    let mut next_try = vec![Instant::now(); n];
    let mut was_connected = vec![false; n];
    let mut last_log: Vec<Option<Instant>> = vec![None; n];
    loop {
        let Some(inner) = inner.upgrade() else { return };
        if inner.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        let mut wait = Duration::from_secs(1);
        for i in 0..n {
            let slot = &inner.slots[i];
            let connected = slot.conn.read().is_ok_and(|c| c.as_ref().is_some_and(|c| c.alive()));
            if connected {
                continue;
            }
            if was_connected[i] {
                // Lost: first retry after the minimum backoff.
                was_connected[i] = false;
                backoff[i] = min;
                next_try[i] = now + min;
            }
            if now < next_try[i] {
                wait = wait.min(next_try[i] - now);
                continue;
            }
            match open(&inner, i) {
                Ok(conn) => {
                    if let Ok(mut c) = slot.conn.write() {
                        *c = Some(conn);
                    }
                    inner.counters.connects.fetch_add(1, Ordering::Relaxed);
                    info!("connected to key server {}", slot.endpoint);
                    was_connected[i] = true;
                    backoff[i] = min;
                    last_log[i] = None;
                }
                Err(e) => {
                    inner.counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                    if last_log[i].is_none_or(|t| t.elapsed() >= log_every) {
                        warn!(
                            "key server {} unreachable: {e}: check it runs and the address / socket path (and, for TLS, the certificates); retrying with backoff up to {max:?}",
                            slot.endpoint
                        );
                        last_log[i] = Some(Instant::now());
                    }
                    next_try[i] = Instant::now() + backoff[i];
                    wait = wait.min(backoff[i]);
                    backoff[i] = (backoff[i] * 2).min(max);
                }
            }
        }
        drop(inner);
        match wake.recv_timeout(wait) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
