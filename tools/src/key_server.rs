//! The appliance's end of the Key Server (`[l7.key_server]`, docs/KEYSERVER.md): one client for the node, and
//! signing keys for the certificates whose private key is not on the node. Signing is a blocking round trip, so
//! it only ever runs on the TLS handshake pool, never on a datapath worker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::sign::SigningKey;
use xlb_keyserver::client::{ClientCounters, ClientOptions, ClientTls, Endpoint, KeyServerClient, RemoteSigningKey};
use xlb_l7::config::KeyServerConfig;

/// A client for the Key Servers of `cfg` (it connects in the background; signing fails fast until one is up).
pub fn client(cfg: &KeyServerConfig) -> Result<KeyServerClient, String> {
    let tls = || -> Result<ClientTls, String> {
        let need = |f: &Option<PathBuf>, name: &str| {
            f.clone()
                .ok_or_else(|| format!("l7.key_server.{name}: needed for TLS endpoints (unix+tls:, ip:port)"))
        };
        let (cert, key, ca) = (need(&cfg.cert, "cert")?, need(&cfg.key, "key")?, need(&cfg.ca, "ca")?);
        ClientTls::from_pem_files(&cert, &key, &ca, &cfg.server_name).map_err(|e| format!("l7.key_server: {e:#}"))
    };
    let endpoints = cfg
        .endpoints
        .iter()
        .map(|e| {
            if let Some(path) = e.strip_prefix("unix+tls:") {
                Ok(Endpoint::UnixTls(PathBuf::from(path), tls()?))
            } else if let Some(path) = e.strip_prefix("unix:") {
                Ok(Endpoint::Unix(PathBuf::from(path)))
            } else {
                let addr: SocketAddr = e.parse().map_err(|_| {
                    format!("l7.key_server.endpoints: {e:?} is not unix:PATH, unix+tls:PATH or IP:PORT")
                })?;
                Ok(Endpoint::Tcp(addr, tls()?))
            }
        })
        .collect::<Result<Vec<_>, String>>()?;
    let options = ClientOptions {
        request_timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
        ..ClientOptions::default()
    };
    KeyServerClient::new(endpoints, options).map_err(|e| format!("l7.key_server: {e:#}"))
}

/// The signing key of a certificate whose private key is on the Key Server.
pub fn remote_key(client: &KeyServerClient, chain: &[CertificateDer<'static>]) -> Result<Arc<dyn SigningKey>, String> {
    let end = chain.first().ok_or("an empty certificate chain")?;
    RemoteSigningKey::from_certificate(client.clone(), end)
        .map(|k| Arc::new(k) as Arc<dyn SigningKey>)
        .map_err(|e| format!("Key Server key: {e}"))
}

/// Adds the counters of a client being replaced to `into` (counts stay monotonic across endpoint changes).
pub fn retire(into: &mut ClientCounters, client: &KeyServerClient) {
    let c = client.counters();
    into.requests += c.requests;
    into.ok += c.ok;
    into.no_key_server += c.no_key_server;
    into.timeout += c.timeout;
    for (a, b) in into.refused_by_status.iter_mut().zip(c.refused_by_status) {
        *a += b;
    }
    into.connection_lost += c.connection_lost;
    into.retried += c.retried;
    into.connects += c.connects;
    into.connect_failures += c.connect_failures;
}

/// The Key Server counts (`key_server_*`, in the stats' L7 counts and the metrics): those of the current client
/// plus `retired` (clients replaced by endpoint changes).
pub fn counts(client: Option<&KeyServerClient>, retired: &ClientCounters) -> Vec<(String, u64)> {
    let mut c = retired.clone();
    if let Some(client) = client {
        retire(&mut c, client);
    }
    [
        ("requests", c.requests),
        ("ok", c.ok),
        ("no_key_server", c.no_key_server),
        ("timeout", c.timeout),
        ("refused", c.refused()),
        ("connection_lost", c.connection_lost),
        ("retried", c.retried),
        ("connects", c.connects),
        ("connect_failures", c.connect_failures),
        ("connected", client.map_or(0, |c| c.connected() as u64)),
    ]
    .into_iter()
    .map(|(k, v)| (format!("key_server_{k}"), v))
    .collect()
}
