//! The client the appliance links: signs through one of several Key Servers, fails
//! fast when none is connected, reconnects in the background with backoff.

mod conn;
mod remote_key;

pub use remote_key::{certified_key_from_pem, RemoteSigningKey};

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::SignatureScheme;

use crate::wire::{KeyId, Opcode, Request, Status};
use conn::Conn;

/// TLS settings for one endpoint: our client certificate, the CA to verify the server, its name.
#[derive(Clone)]
pub struct ClientTls {
    /// rustls client configuration (with client authentication).
    pub config: Arc<rustls::ClientConfig>,
    /// Name the server certificate must be valid for.
    pub server_name: ServerName<'static>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientTls({:?})", self.server_name)
    }
}

impl ClientTls {
    /// Builds from PEM files: client chain + key, CA certificates, expected server name.
    pub fn from_pem_files(cert: &Path, key: &Path, ca: &Path, server_name: &str) -> anyhow::Result<Self> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("client cert {}", cert.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("client cert {}: bad PEM", cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("client key {}", key.display()))?;
        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("server CA {}", ca.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("server CA {}: bad PEM", ca.display()))?;
        Self::from_der(chain, key, cas, server_name)
    }

    /// Builds from DER: client chain + key, CA certificates, expected server name.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        cas: Vec<CertificateDer<'static>>,
        server_name: &str,
    ) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in cas {
            roots.add(ca).context("server CA certificate")?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("client certificate and key do not match")?;
        let server_name = ServerName::try_from(server_name.to_string())
            .with_context(|| format!("bad server name {server_name:?}"))?;
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// Where a Key Server listens.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// A plain Unix socket on this host.
    Unix(PathBuf),
    /// A Unix socket wrapped in mutual TLS (server `unix_tls = true`).
    UnixTls(PathBuf, ClientTls),
    /// TCP with mutual TLS.
    Tcp(SocketAddr, ClientTls),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::UnixTls(p, _) => write!(f, "unix+tls:{}", p.display()),
            Endpoint::Tcp(a, _) => write!(f, "{a}"),
        }
    }
}

/// Client tuning.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long `sign` waits for an answer.
    pub request_timeout: Duration,
    /// TCP connect + TLS handshake limit.
    pub connect_timeout: Duration,
    /// First retry delay after a failed connect or a lost connection.
    pub backoff_min: Duration,
    /// Retry delay cap.
    pub backoff_max: Duration,
    /// A repeated failure cause is logged at most once per this interval.
    pub log_interval: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            log_interval: Duration::from_secs(10),
        }
    }
}

/// Why a request failed. Each variant is counted under its name in [`ClientCounters`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// No endpoint is connected (counted `no_key_server`); returned immediately.
    #[error("no key server connected: check the key servers run and the endpoints are right")]
    NoKeyServer,
    /// No answer within the request timeout (counted `timeout`).
    #[error("key server did not answer within {0:?}")]
    Timeout(Duration),
    /// The server answered with a non-ok status (counted `refused`, by status).
    #[error("key server refused: {status:?}: {reason}")]
    Refused {
        /// The status.
        status: Status,
        /// The server's reason text, if any.
        reason: String,
    },
    /// The connection broke before the answer came (counted `connection_lost`).
    #[error("connection to the key server lost before the answer")]
    ConnectionLost,
}

/// A snapshot of the client's counters, for export as metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCounters {
    /// Requests attempted (sign, ping, list_keys).
    pub requests: u64,
    /// Requests answered ok.
    pub ok: u64,
    /// Failed fast: no endpoint connected.
    pub no_key_server: u64,
    /// No answer in time.
    pub timeout: u64,
    /// Answered with a non-ok status, indexed by status code (see [`Status`]).
    pub refused_by_status: [u64; 7],
    /// Connection lost while waiting.
    pub connection_lost: u64,
    /// Requests retried once on another endpoint (after `overloaded` or a lost connection);
    /// the outcome above is the retry's.
    pub retried: u64,
    /// Successful connects (first ones and reconnects).
    pub connects: u64,
    /// Failed connect attempts.
    pub connect_failures: u64,
}

impl ClientCounters {
    /// Sum of non-ok statuses.
    pub fn refused(&self) -> u64 {
        self.refused_by_status.iter().sum()
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    no_key_server: AtomicU64,
    timeout: AtomicU64,
    refused: [AtomicU64; 7],
    connection_lost: AtomicU64,
    retried: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
}

/// A rate-limited log of one failure cause.
struct LogLimiter {
    last: Mutex<Option<Instant>>,
    every: Duration,
}

impl LogLimiter {
    fn ready(&self) -> bool {
        let Ok(mut last) = self.last.lock() else { return false };
        if last.is_some_and(|t| t.elapsed() < self.every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

pub(crate) struct Slot {
    endpoint: Endpoint,
    conn: RwLock<Option<Arc<Conn>>>,
}

pub(crate) struct Inner {
    slots: Vec<Slot>,
    options: ClientOptions,
    counters: Counters,
    rr: AtomicUsize,
    next_id: AtomicU64,
    shutdown: std::sync::atomic::AtomicBool,
    wake: crossbeam_channel::Sender<()>,
    log_no_server: LogLimiter,
    log_timeout: LogLimiter,
}

/// Handle to the Key Server client; cheap to clone. When the last clone is dropped the
/// background threads stop and the connections close.
#[derive(Clone)]
pub struct KeyServerClient {
    owner: Arc<Owner>,
}

struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.shutdown.store(true, Ordering::SeqCst);
        let _ = self.0.wake.try_send(());
        for slot in &self.0.slots {
            if let Some(c) = slot.conn.write().ok().and_then(|mut c| c.take()) {
                c.close();
            }
        }
    }
}

impl fmt::Debug for KeyServerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let eps: Vec<String> = self.owner.0.slots.iter().map(|s| s.endpoint.to_string()).collect();
        write!(f, "KeyServerClient({})", eps.join(", "))
    }
}

impl KeyServerClient {
    /// Starts the client: returns at once; a background thread connects to every
    /// endpoint and keeps reconnecting with exponential backoff.
    pub fn new(endpoints: Vec<Endpoint>, options: ClientOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(!endpoints.is_empty(), "no key server endpoint given");
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        let limiter = || LogLimiter {
            last: Mutex::new(None),
            every: options.log_interval,
        };
        let inner = Arc::new(Inner {
            slots: endpoints
                .into_iter()
                .map(|endpoint| Slot {
                    endpoint,
                    conn: RwLock::new(None),
                })
                .collect(),
            counters: Counters::default(),
            rr: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            shutdown: std::sync::atomic::AtomicBool::new(false),
            wake: wake_tx,
            log_no_server: limiter(),
            log_timeout: limiter(),
            options,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("ks-client-connect".into())
            .spawn(move || conn::connector(weak, wake_rx))?;
        Ok(KeyServerClient {
            owner: Arc::new(Owner(inner)),
        })
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.owner.0
    }

    /// Signs `message` with the remote key `key_id` under `scheme`. Blocks up to the
    /// request timeout; fails immediately when no Key Server is connected.
    pub fn sign(&self, key_id: &KeyId, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, SignError> {
        self.call(Opcode::Sign, *key_id, u16::from(scheme), message.to_vec())
    }

    /// Round trip to a connected Key Server; returns the latency.
    pub fn ping(&self) -> Result<Duration, SignError> {
        let t = Instant::now();
        self.call(Opcode::Ping, KeyId::default(), 0, Vec::new())?;
        Ok(t.elapsed())
    }

    /// Ids of the keys this client may use on a connected Key Server.
    pub fn list_keys(&self) -> Result<Vec<KeyId>, SignError> {
        let ids = self.call(Opcode::ListKeys, KeyId::default(), 0, Vec::new())?;
        Ok(ids
            .chunks_exact(32)
            .map(|c| {
                let mut id = [0u8; 32];
                id.copy_from_slice(c);
                KeyId(id)
            })
            .collect())
    }

    /// The server's counters as text (Stats opcode).
    pub fn server_stats(&self) -> Result<String, SignError> {
        let text = self.call(Opcode::Stats, KeyId::default(), 0, Vec::new())?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// Number of endpoints currently connected.
    pub fn connected(&self) -> usize {
        self.inner()
            .slots
            .iter()
            .filter(|s| s.conn.read().is_ok_and(|c| c.as_ref().is_some_and(|c| c.alive())))
            .count()
    }

    /// Waits until at least one endpoint is connected (for start-up and tests).
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.connected() == 0 {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> ClientCounters {
        let c = &self.inner().counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientCounters {
            requests: l(&c.requests),
            ok: l(&c.ok),
            no_key_server: l(&c.no_key_server),
            timeout: l(&c.timeout),
            refused_by_status: std::array::from_fn(|i| l(&c.refused[i])),
            connection_lost: l(&c.connection_lost),
            retried: l(&c.retried),
            connects: l(&c.connects),
            connect_failures: l(&c.connect_failures),
        }
    }

    fn pick(&self) -> Option<Arc<Conn>> {
        let inner = self.inner();
        let n = inner.slots.len();
        let start = inner.rr.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|i| {
            let slot = &inner.slots[(start + i) % n];
            slot.conn.read().ok().and_then(|c| c.clone()).filter(|c| c.alive())
        })
    }

    fn pick_other(&self, not: &Arc<Conn>) -> Option<Arc<Conn>> {
        self.inner().slots.iter().find_map(|slot| {
            slot.conn
                .read()
                .ok()
                .and_then(|c| c.clone())
                .filter(|c| c.alive() && !Arc::ptr_eq(c, not))
        })
    }

    fn call(&self, opcode: Opcode, key_id: KeyId, scheme: u16, payload: Vec<u8>) -> Result<Vec<u8>, SignError> {
        let inner = self.inner();
        let c = &inner.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let Some(conn) = self.pick() else {
            c.no_key_server.fetch_add(1, Ordering::Relaxed);
            if inner.log_no_server.ready() {
                let eps: Vec<String> = inner.slots.iter().map(|s| s.endpoint.to_string()).collect();
                tracing::warn!(
                    "no key server connected ({}): TLS handshakes fail until one is reachable; check they run and the endpoints are right",
                    eps.join(", ")
                );
            }
            return Err(SignError::NoKeyServer);
        };
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut req = Request {
            opcode,
            id,
            key_id,
            scheme,
            payload,
        };
        let started = Instant::now();
        let timeout = inner.options.request_timeout;
        let mut conn = conn;
        let mut result = conn.call(&req, timeout);
        // One retry on another connected endpoint when this one is overloaded or broke,
        // within what is left of the request timeout.
        if matches!(
            result,
            Err(SignError::ConnectionLost)
                | Err(SignError::Refused {
                    status: Status::Overloaded,
                    ..
                })
        ) {
            let left = timeout.saturating_sub(started.elapsed());
            if let Some(other) = self.pick_other(&conn).filter(|_| !left.is_zero()) {
                c.retried.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "retrying on key server {} after {:?} from {}",
                    other.endpoint,
                    result,
                    conn.endpoint
                );
                req.id = inner.next_id.fetch_add(1, Ordering::Relaxed);
                result = other.call(&req, left);
                conn = other;
            }
        }
        match &result {
            Ok(_) => {
                c.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(SignError::Timeout(t)) => {
                c.timeout.fetch_add(1, Ordering::Relaxed);
                if inner.log_timeout.ready() {
                    tracing::warn!(
                        "key server {} did not answer within {t:?}: it may be overloaded or the network slow (raise request_timeout or add key servers)",
                        conn.endpoint
                    );
                }
            }
            Err(SignError::Refused { status, reason }) => {
                c.refused[*status as usize].fetch_add(1, Ordering::Relaxed);
                tracing::debug!("key server {} refused: {status:?} {reason}", conn.endpoint);
            }
            Err(SignError::ConnectionLost) => {
                c.connection_lost.fetch_add(1, Ordering::Relaxed);
            }
            Err(SignError::NoKeyServer) => {
                c.no_key_server.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }
}

pub(crate) fn status_error(status: Status, payload: &[u8]) -> SignError {
    SignError::Refused {
        status,
        reason: String::from_utf8_lossy(payload).into_owned(),
    }
}
