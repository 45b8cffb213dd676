//! The Key Server: listeners, connection registry, signing pool, key reload.

mod conn;
mod stats;

pub use stats::{CloseReason, ServerStats};

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::keys::KeyStore;
use crate::transport::Socket;

/// State shared by the listeners, connections and signing threads.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) keys: RwLock<Arc<KeyStore>>,
    pub(crate) stats: Arc<ServerStats>,
    pub(crate) jobs: crossbeam_channel::Sender<conn::SignJob>,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) shutdown: AtomicBool,
    pub(crate) conns: Mutex<HashMap<u64, Box<dyn Socket>>>,
    next_conn: AtomicU64,
}

impl Shared {
    pub(crate) fn keys(&self) -> Arc<KeyStore> {
        self.keys.read().map(|k| k.clone()).unwrap_or_default()
    }
}

/// A running server. Dropping it does not stop it; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    shared: Arc<Shared>,
    listeners: Vec<JoinHandle<()>>,
}

/// Loads the keys, binds the listeners and starts serving in background threads.
pub fn start(config: Config) -> anyhow::Result<ServerHandle> {
    let (keys, errors) = KeyStore::load_dir(&config.keys_dir, None)?;
    log_key_load(&keys, &errors);
    let tls = config.tls.as_ref().map(build_tls).transpose()?;
    let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(config.queue_depth);
    let shared = Arc::new(Shared {
        keys: RwLock::new(Arc::new(keys)),
        stats: Arc::new(ServerStats::default()),
        jobs: jobs_tx,
        tls,
        shutdown: AtomicBool::new(false),
        conns: Mutex::new(HashMap::new()),
        next_conn: AtomicU64::new(1),
        config,
    });
    for i in 0..shared.config.sign_threads() {
        let rx = jobs_rx.clone();
        let stats = shared.stats.clone();
        std::thread::Builder::new()
            .name(format!("ks-sign-{i}"))
            .spawn(move || conn::sign_worker(&stats, rx))?;
    }
    let mut listeners = Vec::new();
    if let Some(path) = shared.config.listen_unix.clone() {
        let l = bind_unix(&path)?;
        if let Some(mode) = shared.config.unix_mode {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting unix_mode {mode:o} on {}", path.display()))?;
        }
        info!(path = %path.display(), tls = shared.config.unix_tls, "key server listening on unix socket");
        let sh = shared.clone();
        listeners.push(
            std::thread::Builder::new()
                .name("ks-accept-unix".into())
                .spawn(move || accept_unix(sh, l))?,
        );
    }
    if let Some(addr) = shared.config.listen_tcp {
        let l = TcpListener::bind(addr)
            .with_context(|| format!("cannot listen on {addr}: is the address configured on this host / port free?"))?;
        info!(%addr, "key server listening on tcp (mutual tls)");
        let sh = shared.clone();
        listeners.push(
            std::thread::Builder::new()
                .name("ks-accept-tcp".into())
                .spawn(move || accept_tcp(sh, l))?,
        );
    }
    if shared.config.stats_interval_secs > 0 {
        let sh = Arc::downgrade(&shared);
        let every = Duration::from_secs(shared.config.stats_interval_secs);
        std::thread::Builder::new()
            .name("ks-stats".into())
            .spawn(move || stats_logger(sh, every))?;
    }
    Ok(ServerHandle { shared, listeners })
}

impl ServerHandle {
    /// The server's counters.
    pub fn stats(&self) -> &ServerStats {
        &self.shared.stats
    }

    /// Counters as text (what the Stats opcode answers).
    pub fn render_stats(&self) -> String {
        self.shared.stats.render(&self.shared.keys())
    }

    /// Re-reads `keys_dir`; keys removed from it stop being served. Returns the number of keys loaded.
    pub fn reload_keys(&self) -> anyhow::Result<usize> {
        let old = self.shared.keys();
        let (keys, errors) = KeyStore::load_dir(&self.shared.config.keys_dir, Some(&old))?;
        log_key_load(&keys, &errors);
        let n = keys.len();
        if let Ok(mut k) = self.shared.keys.write() {
            *k = Arc::new(keys);
        }
        info!(keys = n, "keys reloaded");
        Ok(n)
    }

    /// Stops accepting, closes every connection, removes the Unix socket file.
    pub fn shutdown(self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for h in self.listeners {
            let _ = h.join();
        }
        if let Ok(conns) = self.shared.conns.lock() {
            for sock in conns.values() {
                sock.shutdown_both();
            }
        }
        if let Some(path) = &self.shared.config.listen_unix {
            let _ = std::fs::remove_file(path);
        }
        info!("key server stopped");
    }
}

fn log_key_load(keys: &KeyStore, errors: &[crate::keys::KeyLoadError]) {
    for k in keys.entries() {
        info!(file = %k.file_name, id = %k.id.short(), algorithm = k.kind.name(), "loaded key");
    }
    for e in errors {
        error!("key not loaded: {e}");
    }
    if keys.is_empty() {
        warn!("no private key loaded: every sign request will be answered unknown_key");
    }
}

fn build_tls(t: &crate::config::TlsConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .with_context(|| format!("tls.cert {}", t.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("tls.cert {}: bad PEM", t.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("tls.cert {}: no CERTIFICATE block", t.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&t.key).with_context(|| format!("tls.key {}", t.key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&t.client_ca)
        .with_context(|| format!("tls.client_ca {}", t.client_ca.display()))?
    {
        roots.add(ca.with_context(|| format!("tls.client_ca {}: bad PEM", t.client_ca.display()))?)?;
    }
    if roots.is_empty() {
        anyhow::bail!("tls.client_ca {}: no CA certificate", t.client_ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("client certificate verifier")?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("tls.cert / tls.key do not form a usable server identity")?;
    Ok(Arc::new(cfg))
}

fn bind_unix(path: &PathBuf) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{}: another key server is already listening there", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("cannot listen on unix socket {}", path.display()))
}

/// Waits up to 200 ms for `fd` to become readable.
fn wait_readable(fd: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, 200) > 0 }
}

fn peer_uid(sock: &std::os::unix::net::UnixStream) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

fn accept_unix(shared: Arc<Shared>, l: UnixListener) {
    while !shared.shutdown.load(Ordering::SeqCst) {
        if !wait_readable(l.as_raw_fd()) {
            continue;
        }
        match l.accept() {
            Ok((s, _)) => {
                let uid = peer_uid(&s);
                let label = format!("unix(uid {})", uid.map(|u| u.to_string()).unwrap_or("?".into()));
                let tls = shared.config.unix_tls;
                spawn_conn(&shared, Box::new(s), uid, tls, label);
            }
            Err(e) => warn!("unix accept failed: {e}"),
        }
    }
}

fn accept_tcp(shared: Arc<Shared>, l: TcpListener) {
    while !shared.shutdown.load(Ordering::SeqCst) {
        if !wait_readable(l.as_raw_fd()) {
            continue;
        }
        match l.accept() {
            Ok((s, addr)) => {
                let _ = s.set_nodelay(true);
                spawn_conn(&shared, Box::new(s), None, true, addr.to_string());
            }
            Err(e) => warn!("tcp accept failed: {e}"),
        }
    }
}

fn spawn_conn(shared: &Arc<Shared>, sock: Box<dyn Socket>, uid: Option<u32>, tls: bool, label: String) {
    shared.stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    // Registered before the thread starts (and before any TLS handshake), so that
    // `shutdown` reaches every connection and the limit counts handshaking ones.
    {
        let Ok(mut conns) = shared.conns.lock() else { return };
        if conns.len() >= shared.config.max_connections {
            shared.stats.count_close(CloseReason::TooManyConnections);
            warn!(peer = %label, max = shared.config.max_connections, "connection refused: max_connections reached (raise it in the config?)");
            return;
        }
        match sock.try_clone_socket() {
            Ok(c) => {
                conns.insert(id, c);
            }
            Err(e) => {
                warn!(peer = %label, "connection dropped: cannot clone its socket: {e}");
                return;
            }
        }
    }
    let sh = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("ks-conn-{id}"))
        .spawn(move || conn::serve(sh, sock, id, uid, tls, label));
    if let Err(e) = spawned {
        error!("cannot start a connection thread: {e}");
        if let Ok(mut conns) = shared.conns.lock() {
            conns.remove(&id);
        }
    }
}

fn stats_logger(shared: std::sync::Weak<Shared>, every: Duration) {
    let mut last = 0;
    loop {
        std::thread::sleep(every);
        let Some(sh) = shared.upgrade() else { return };
        if sh.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let total = sh.stats.total_requests();
        if total != last {
            info!(
                "{} requests in the last {}s ({} total); counters:\n{}",
                total - last,
                every.as_secs(),
                total,
                sh.stats.render(&sh.keys())
            );
            last = total;
        }
    }
}
