//! The `tls` table of an `https` listener and the rustls `ServerConfig` built from it.
//!
//! ```toml
//! [[listener]]
//! name = "web-tls"
//! protocol = "https"
//! port = 443
//! group = "web"
//!
//! [listener.tls]
//! policy = "tls-1-2"                 # tls-1-2 (default), tls-1-2-aes, tls-1-3
//! alpn = ["h2", "http/1.1"]          # offered in this order (h2 only while [l7] http2 is on)
//! session_cache = 4096               # TLS 1.2 session ids kept per listener (tickets need no cache)
//!
//! client_auth = "required"          # mutual TLS: off (default), optional, required
//! client_ca = "/etc/xlb/clients.pem" # the subject of a verified client certificate goes upstream
//!                                    # as X-Client-Cert-Subject (with X-Client-Verify: SUCCESS)
//!
//! [[listener.tls.cert]]              # the first is the default; others are chosen by SNI
//! cert = "/etc/xlb/www.pem"          # the chain, end-entity certificate first
//! key = "/etc/xlb/www.key"           # omitted: the key is on the Key Server ([l7.key_server])
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;

use super::certs::{CertStore, ListenerCert};
use super::policy::TlsPolicy;

/// `[listener.tls]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    /// The security policy by name.
    #[serde(default)]
    pub policy: TlsPolicy,
    /// ALPN protocols offered, in order of preference (`h2`, `http/1.1`).
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// TLS 1.2 sessions kept for resumption by session id (TLS 1.3 and 1.2 tickets need no cache).
    #[serde(default = "default_session_cache")]
    pub session_cache: usize,
    /// `[[listener.tls.cert]]`: the first is the default.
    #[serde(rename = "cert")]
    pub certs: Vec<CertConfig>,
    /// Client certificates (mutual TLS): `off` (default), `optional` or `required`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// PEM file of the CAs client certificates must chain to (with `client_auth`).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// Whether clients must present a certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates asked for.
    #[default]
    Off,
    /// Asked for; a client without one is served (without X-Client-Verify), one with a bad one refused.
    Optional,
    /// A client without a certificate from `client_ca` is refused in the handshake.
    Required,
}

/// `[[listener.tls.cert]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertConfig {
    /// PEM file with the chain, end-entity certificate first.
    pub cert: PathBuf,
    /// PEM file with the private key; none: the Key Server signs for it.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".to_owned(), "http/1.1".to_owned()]
}

fn default_session_cache() -> usize {
    4096
}

/// The ALPN protocols xlb can serve.
pub const SUPPORTED_ALPN: &[&str] = &["h2", "http/1.1"];

impl TlsListenerConfig {
    /// The `tls` table of a listener as L4 kept it; the error names the field.
    pub fn from_table(table: &toml::Table, at: &str) -> Result<TlsListenerConfig, String> {
        let tls =
            TlsListenerConfig::deserialize(table.clone()).map_err(|e| format!("{at}.tls: {}", e.message().trim()))?;
        if tls.certs.is_empty() {
            return Err(format!("{at}.tls.cert: at least one certificate is needed"));
        }
        if (tls.client_auth != ClientAuth::Off) != tls.client_ca.is_some() {
            return Err(format!(
                "{at}.tls: client_auth = \"optional\" or \"required\" and client_ca go together"
            ));
        }
        if let Some(p) = tls.alpn.iter().find(|p| !SUPPORTED_ALPN.contains(&p.as_str())) {
            return Err(format!(
                "{at}.tls.alpn: {p:?} is not served (supported: {SUPPORTED_ALPN:?})"
            ));
        }
        Ok(tls)
    }

    /// Whether a certificate's key is on the Key Server.
    pub fn needs_key_server(&self) -> bool {
        self.certs.iter().any(|c| c.key.is_none())
    }
}

/// Makes a signing key for a certificate whose private key is on a Key Server.
pub type RemoteKeys<'a> = &'a dyn Fn(&[CertificateDer<'static>]) -> Result<Arc<dyn SigningKey>, String>;

/// Reads a PEM chain.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(chain)
}

/// Loads a listener's certificates: local keys from their files, the others through `remote`.
pub fn load_certs(
    tls: &TlsListenerConfig,
    provider: &CryptoProvider,
    remote: Option<RemoteKeys<'_>>,
) -> Result<Vec<ListenerCert>, String> {
    tls.certs
        .iter()
        .map(|c| {
            let chain = read_chain(&c.cert)?;
            let key = match &c.key {
                Some(path) => {
                    let der = PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
                    provider
                        .key_provider
                        .load_private_key(der)
                        .map_err(|e| format!("{}: {e}", path.display()))?
                }
                None => {
                    let remote = remote.ok_or_else(|| {
                        format!(
                            "{}: no key file and no Key Server ([l7.key_server] endpoints)",
                            c.cert.display()
                        )
                    })?;
                    remote(&chain).map_err(|e| format!("{}: {e}", c.cert.display()))?
                }
            };
            let certified = CertifiedKey::new(chain, key);
            if c.key.is_some() {
                certified
                    .keys_match()
                    .map_err(|e| format!("{}: the key does not match the certificate: {e}", c.cert.display()))?;
            }
            ListenerCert::new(c.cert.display().to_string(), Arc::new(certified))
        })
        .collect()
}

/// What a built HTTPS listener shares between its workers.
#[derive(Clone, Debug)]
pub struct TlsListener {
    /// The rustls configuration (one ticket key rotator and session cache for the listener).
    pub config: Arc<ServerConfig>,
    /// Its certificates (replaceable live).
    pub certs: Arc<CertStore>,
}

impl TlsListener {
    /// Builds the listener's TLS side.
    pub fn build(tls: &TlsListenerConfig, remote: Option<RemoteKeys<'_>>) -> Result<TlsListener, String> {
        let provider = tls.policy.provider();
        let certs = Arc::new(CertStore::new(load_certs(tls, &provider, remote)?));
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(tls.policy.versions())
            .map_err(|e| format!("tls.policy {}: {e}", tls.policy.name()))?;
        let builder = match (&tls.client_ca, tls.client_auth) {
            (Some(ca), ClientAuth::Optional | ClientAuth::Required) => {
                let mut roots = RootCertStore::empty();
                for cert in read_chain(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("tls.client_ca {}: {e}", ca.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let verifier = match tls.client_auth {
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                    _ => verifier,
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| format!("tls.client_ca {}: {e}", ca.display()))?,
                )
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(certs.clone());
        config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config.ignore_client_order = true;
        config.session_storage = ServerSessionMemoryCache::new(tls.session_cache.max(1));
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| format!("session tickets: {e}"))?;
        config.send_tls13_tickets = 1;
        Ok(TlsListener {
            config: Arc::new(config),
            certs,
        })
    }
}
