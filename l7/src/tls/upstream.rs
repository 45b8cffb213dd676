//! HTTPS to servers: the `tls` table of a `[[group]]` and the rustls `ClientConfig` built from it. Requests
//! proxied to such a group travel re-encrypted, and each server's certificate is verified against the group's
//! CA file.
//!
//! ```toml
//! [[group]]
//! name = "secure"
//! servers = [{ addr = "10.0.0.5:8443" }]
//!
//! [group.tls]
//! ca = "/etc/xlb/servers-ca.pem"   # the servers' certificates must chain to one of these (required)
//! server_name = "app.internal"      # the name they must carry, also sent as SNI; default: the server's IP
//!                                   # address (then an IP address SAN, and no SNI)
//! policy = "tls-1-2"                # versions and suites, as for listeners
//! cert = "/etc/xlb/lb-client.pem"   # a client certificate for servers that require one (with key)
//! key = "/etc/xlb/lb-client.key"
//! ```
//!
//! The handshakes run on the handshake pool like the clients' (the key share, the server's signature and chain
//! verification never run on a worker); the connections are kept idle and reused like plain ones, and a
//! `ClientConfig` per group keeps TLS sessions, so a new connection to a server usually resumes.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;

use super::config::read_chain;
use super::policy::TlsPolicy;

/// `[group.tls]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file of the CAs the servers' certificates must chain to.
    pub ca: PathBuf,
    /// The name the servers' certificates must carry (and SNI); `None`: each server's IP address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// The security policy by name.
    #[serde(default)]
    pub policy: TlsPolicy,
    /// A client certificate chain (PEM) for servers that ask for one.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl UpstreamTlsConfig {
    /// The `tls` table of a group as L4 kept it; the error names the field (`at`: e.g. `group[0] (web)`).
    pub fn from_table(table: &toml::Table, at: &str) -> Result<UpstreamTlsConfig, String> {
        let tls =
            UpstreamTlsConfig::deserialize(table.clone()).map_err(|e| format!("{at}.tls: {}", e.message().trim()))?;
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(format!("{at}.tls: cert and key go together"));
        }
        if let Some(name) = &tls.server_name {
            ServerName::try_from(name.as_str()).map_err(|e| format!("{at}.tls.server_name: {name:?}: {e}"))?;
        }
        Ok(tls)
    }
}

/// A group's TLS towards its servers, built once and shared by every worker.
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    /// What it was built from.
    pub source: UpstreamTlsConfig,
    config: Arc<ClientConfig>,
    name: Option<ServerName<'static>>,
}

/// Equal when built from the same settings (a live change that keeps them keeps the idle connections).
impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for UpstreamTls {}

impl UpstreamTls {
    /// Reads the CA (and client certificate) files and builds the client side.
    pub fn build(source: &UpstreamTlsConfig) -> Result<UpstreamTls, String> {
        let provider = source.policy.provider();
        let mut roots = RootCertStore::empty();
        for cert in read_chain(&source.ca)? {
            roots
                .add(cert)
                .map_err(|e| format!("tls.ca {}: {e}", source.ca.display()))?;
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(source.policy.versions())
            .map_err(|e| format!("tls.policy {}: {e}", source.policy.name()))?
            .with_root_certificates(roots);
        let mut config = match (&source.cert, &source.key) {
            (Some(cert), Some(key)) => {
                let chain = read_chain(cert)?;
                let der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls.key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, der)
                    .map_err(|e| format!("tls.cert {}: {e}", cert.display()))?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()]; // upstream requests are HTTP/1.1
        let name = source
            .server_name
            .as_deref()
            .map(|n| ServerName::try_from(n.to_owned()).map_err(|e| format!("tls.server_name {n:?}: {e}")))
            .transpose()?;
        Ok(UpstreamTls {
            source: source.clone(),
            config: Arc::new(config),
            name,
        })
    }

    /// The rustls configuration.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The name the certificate of the server at `addr` must carry.
    pub fn name_for(&self, addr: Ipv4Addr) -> ServerName<'static> {
        self.name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(IpAddr::V4(addr).into()))
    }
}
