//! One connection: a reader thread (this one) decodes requests, sign jobs go to the
//! shared pool, responses go to a writer thread in completion order.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rustls::SignatureScheme;
use tracing::{debug, info, warn};

use super::{CloseReason, ServerStats, Shared};
use crate::config::{Grants, Peer};
use crate::keys::KeyEntry;
use crate::transport::{self, is_timeout, Socket};
use crate::wire::{self, Decoder, Opcode, Request, Response, Status};

/// Response frames queued per connection at most; a peer that lets more pile up is not
/// reading and is disconnected.
const OUT_QUEUE: usize = 8192;

/// The sending side of a connection, shared by its reader and the signing threads.
pub(crate) struct ConnOut {
    tx: Sender<Vec<u8>>,
    control: Box<dyn Socket>,
    /// Set when responses could not be queued or written.
    write_failed: Arc<AtomicBool>,
}

impl ConnOut {
    /// Queues a response; never blocks. A full queue closes the connection.
    fn send(&self, r: &Response) {
        let bytes = match wire::encode(r) {
            Ok(b) => b,
            Err(e) => {
                warn!("cannot encode response {}: {e}", r.id);
                return;
            }
        };
        match self.tx.try_send(bytes) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.write_failed.store(true, Ordering::SeqCst);
                self.control.shutdown_both();
            }
        }
    }
}

/// A sign request that passed every check, for the signing pool.
pub(crate) struct SignJob {
    key: Arc<KeyEntry>,
    scheme: SignatureScheme,
    id: u64,
    message: Vec<u8>,
    out: Arc<ConnOut>,
}

/// A signing thread: signs jobs until every job sender is gone.
pub(crate) fn sign_worker(stats: &ServerStats, rx: Receiver<SignJob>) {
    for job in rx.iter() {
        let result = job
            .key
            .signer
            .choose_scheme(&[job.scheme])
            .ok_or_else(|| "key refused the scheme".to_string())
            .and_then(|s| s.sign(&job.message).map_err(|e| e.to_string()));
        let (status, payload) = match result {
            Ok(sig) => {
                job.key.signed.fetch_add(1, Ordering::Relaxed);
                (Status::Ok, sig)
            }
            Err(e) => {
                job.key.refused.fetch_add(1, Ordering::Relaxed);
                warn!(key = %job.key.file_name, scheme = ?job.scheme, "signing failed: {e}");
                (Status::InternalError, e.into_bytes())
            }
        };
        stats.count(Opcode::Sign, status);
        debug!(id = job.id, key = %job.key.id.short(), status = status.name(), "sign done");
        job.out.send(&Response {
            opcode: Opcode::Sign,
            status,
            id: job.id,
            payload,
        });
    }
}

/// Serves one accepted connection until it ends; never panics on peer input.
pub(crate) fn serve(
    shared: Arc<Shared>,
    mut sock: Box<dyn Socket>,
    conn_id: u64,
    uid: Option<u32>,
    tls: bool,
    label: String,
) {
    let _registered = Registered(&shared, conn_id);
    let frame_timeout = Duration::from_secs(shared.config.frame_timeout_secs.max(1));
    if let Err(e) = sock.set_timeouts(Some(frame_timeout), Some(frame_timeout)) {
        warn!(conn = conn_id, peer = %label, "cannot set socket timeouts: {e}");
    }
    let (peer, tls_conn) = if tls {
        let Some(cfg) = shared.tls.clone() else { return };
        match tls_accept(cfg, sock.as_mut()) {
            Ok((names, conn)) => (Peer::Tls { names }, Some(conn)),
            Err(e) => {
                shared.stats.count_close(CloseReason::TlsHandshake);
                warn!(conn = conn_id, peer = %label, "tls handshake failed: {e} (client certificate missing or not from tls.client_ca?)");
                return;
            }
        }
    } else {
        (Peer::Unix { uid }, None)
    };
    let grants = Grants::for_peer(&shared.config.authorize, &peer);
    if grants.is_empty() {
        info!(conn = conn_id, %peer, "peer matches no [[authorize]] rule: its sign requests will be refused");
    }
    let (reader, writer, control) = match transport::split(sock, tls_conn) {
        Ok(parts) => parts,
        Err(e) => {
            warn!(conn = conn_id, %peer, "cannot set up the connection: {e}");
            return;
        }
    };
    debug!(conn = conn_id, %peer, "connection open");
    let (tx, rx) = crossbeam_channel::bounded(OUT_QUEUE);
    let write_failed = Arc::new(AtomicBool::new(false));
    let writer_thread = match control.try_clone_socket() {
        Ok(wcontrol) => {
            let failed = write_failed.clone();
            std::thread::Builder::new()
                .name(format!("ks-conn-{conn_id}-w"))
                .spawn(move || write_loop(writer, rx, wcontrol.as_ref(), &failed))
                .ok()
        }
        Err(_) => None,
    };
    let out = Arc::new(ConnOut {
        tx,
        control,
        write_failed,
    });
    if writer_thread.is_none() {
        warn!(conn = conn_id, %peer, "cannot start the connection's writer thread");
        out.control.shutdown_both();
    }
    let reason = read_loop(&shared, reader, &out, &grants, &peer, conn_id, frame_timeout);
    let reason = if out.write_failed.load(Ordering::SeqCst) {
        CloseReason::WriteFailed
    } else {
        reason
    };
    out.control.shutdown_both();
    drop(out); // the writer ends once the signing threads have dropped their handles too
    if let Some(h) = writer_thread {
        let _ = h.join();
    }
    shared.stats.count_close(reason);
    match reason {
        CloseReason::PeerClosed | CloseReason::Shutdown => {
            debug!(conn = conn_id, %peer, "connection closed: {}", reason.name())
        }
        _ => warn!(conn = conn_id, %peer, "connection closed: {}", reason.name()),
    }
}

/// Removes the connection from the registry (see `spawn_conn`) however `serve` ends.
struct Registered<'a>(&'a Shared, u64);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Ok(mut conns) = self.0.conns.lock() {
            conns.remove(&self.1);
        }
    }
}

fn tls_accept(
    cfg: Arc<rustls::ServerConfig>,
    sock: &mut dyn Socket,
) -> Result<(Vec<String>, rustls::Connection), String> {
    let mut conn = rustls::Connection::Server(rustls::ServerConnection::new(cfg).map_err(|e| e.to_string())?);
    transport::handshake(&mut conn, sock).map_err(|e| e.to_string())?;
    let names = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(crate::cert::client_names)
        .unwrap_or_default();
    Ok((names, conn))
}

fn write_loop(mut w: transport::WriteHalf, rx: Receiver<Vec<u8>>, control: &dyn Socket, failed: &AtomicBool) {
    let mut buf = Vec::new();
    while let Ok(first) = rx.recv() {
        buf.clear();
        buf.extend_from_slice(&first);
        while buf.len() < 64 * 1024 {
            match rx.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if let Err(e) = w.write_all(&buf).and_then(|_| w.flush()) {
            debug!("write failed: {e}");
            failed.store(true, Ordering::SeqCst);
            control.shutdown_both();
            return;
        }
    }
}

fn read_loop(
    shared: &Shared,
    mut r: transport::ReadHalf,
    out: &Arc<ConnOut>,
    grants: &Grants,
    peer: &Peer,
    conn_id: u64,
    frame_timeout: Duration,
) -> CloseReason {
    let mut dec = Decoder::<Request>::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut partial_since: Option<Instant> = None;
    let mut refusals_logged = 0u32;
    loop {
        if shared.shutdown.load(Ordering::SeqCst) {
            return CloseReason::Shutdown;
        }
        match r.read(&mut buf) {
            Ok(0) => {
                return if dec.buffered() > 0 {
                    CloseReason::Truncated
                } else {
                    CloseReason::PeerClosed
                };
            }
            Ok(n) => dec.push(&buf[..n]),
            Err(e) if is_timeout(&e) => {
                if let Some(t) = partial_since {
                    if t.elapsed() >= frame_timeout {
                        warn!(conn = conn_id, %peer, "frame not completed within {frame_timeout:?}");
                        return CloseReason::SlowClient;
                    }
                }
                continue;
            }
            Err(e) => {
                if shared.shutdown.load(Ordering::SeqCst) {
                    return CloseReason::Shutdown;
                }
                if out.write_failed.load(Ordering::SeqCst) {
                    return CloseReason::WriteFailed;
                }
                debug!(conn = conn_id, "read error: {e}");
                return if e.kind() == std::io::ErrorKind::UnexpectedEof && dec.buffered() == 0 {
                    CloseReason::PeerClosed
                } else {
                    CloseReason::ReadError
                };
            }
        }
        loop {
            match dec.poll_frame() {
                Ok(Some(req)) => handle(shared, req, out, grants, peer, conn_id, &mut refusals_logged),
                Ok(None) => break,
                Err(e) => {
                    warn!(conn = conn_id, %peer, "malformed frame: {e}");
                    return CloseReason::Malformed;
                }
            }
        }
        partial_since = match (dec.buffered(), partial_since) {
            (0, _) => None,
            (_, Some(t)) => Some(t),
            (_, None) => Some(Instant::now()),
        };
    }
}

fn handle(
    shared: &Shared,
    req: Request,
    out: &Arc<ConnOut>,
    grants: &Grants,
    peer: &Peer,
    conn_id: u64,
    refusals_logged: &mut u32,
) {
    let reply = |status: Status, payload: Vec<u8>| {
        shared.stats.count(req.opcode, status);
        debug!(conn = conn_id, id = req.id, op = req.opcode.name(), key = %req.key_id.short(), status = status.name(), "request");
        out.send(&Response {
            opcode: req.opcode,
            status,
            id: req.id,
            payload,
        });
    };
    match req.opcode {
        Opcode::Ping => reply(Status::Ok, Vec::new()),
        Opcode::Stats => reply(Status::Ok, shared.stats.render(&shared.keys()).into_bytes()),
        Opcode::ListKeys => {
            let ids: Vec<u8> = shared
                .keys()
                .entries()
                .iter()
                .filter(|k| grants.allows(k))
                .flat_map(|k| k.id.0)
                .collect();
            reply(Status::Ok, ids)
        }
        Opcode::Sign => {
            let keys = shared.keys();
            let Some(key) = keys.get(&req.key_id) else {
                return reply(
                    Status::UnknownKey,
                    format!("no key {} on this server", req.key_id).into_bytes(),
                );
            };
            if !grants.allows(key) {
                key.refused.fetch_add(1, Ordering::Relaxed);
                *refusals_logged += 1;
                if *refusals_logged == 1 {
                    warn!(conn = conn_id, %peer, key = %key.file_name, "not authorized (add an [[authorize]] rule); further refusals on this connection logged at debug");
                }
                return reply(
                    Status::NotAuthorized,
                    format!("{peer} may not use key {}", req.key_id.short()).into_bytes(),
                );
            }
            let scheme = SignatureScheme::from(req.scheme);
            if !key.kind.schemes().contains(&scheme) {
                key.refused.fetch_add(1, Ordering::Relaxed);
                return reply(
                    Status::UnsupportedScheme,
                    format!("{} key cannot sign {scheme:?}", key.kind.name()).into_bytes(),
                );
            }
            if req.payload.is_empty() {
                key.refused.fetch_add(1, Ordering::Relaxed);
                return reply(Status::BadRequest, b"empty message".to_vec());
            }
            let job = SignJob {
                key: key.clone(),
                scheme,
                id: req.id,
                message: req.payload,
                out: out.clone(),
            };
            match shared.jobs.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(job)) => {
                    job.key.refused.fetch_add(1, Ordering::Relaxed);
                    shared.stats.count(Opcode::Sign, Status::Overloaded);
                    debug!(conn = conn_id, id = job.id, "signing queue full: overloaded");
                    out.send(&Response {
                        opcode: Opcode::Sign,
                        status: Status::Overloaded,
                        id: job.id,
                        payload: Vec::new(),
                    });
                }
                Err(TrySendError::Disconnected(job)) => {
                    shared.stats.count(Opcode::Sign, Status::InternalError);
                    out.send(&Response {
                        opcode: Opcode::Sign,
                        status: Status::InternalError,
                        id: job.id,
                        payload: b"signing pool stopped".to_vec(),
                    });
                }
            }
        }
    }
}
