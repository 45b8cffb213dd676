//! The certificates of an HTTPS listener, chosen by SNI: a certificate whose subject alternative names hold the
//! exact name first, then one with a matching wildcard (`*.example.com` matches one label), else the default
//! (the first configured). The set can be replaced live: handshakes already running keep the certificate they
//! chose, new ones see the new set.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// One certificate (chain and signing key) with the DNS names it is valid for.
#[derive(Clone)]
pub struct ListenerCert {
    /// Where it came from (logs, stats).
    pub source: String,
    /// Lower-case DNS names from its subject alternative names (wildcards as `*.example.com`).
    pub names: Vec<String>,
    /// The chain and the key (local or on a Key Server).
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for ListenerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerCert")
            .field("source", &self.source)
            .field("names", &self.names)
            .finish()
    }
}

impl ListenerCert {
    /// A certificate for `key`, its names read from the end-entity certificate.
    pub fn new(source: String, key: Arc<CertifiedKey>) -> Result<ListenerCert, String> {
        let end = key.end_entity_cert().map_err(|e| format!("{source}: {e}"))?;
        let parsed = webpki::EndEntityCert::try_from(end).map_err(|e| format!("{source}: not a certificate: {e}"))?;
        let names = parsed.valid_dns_names().map(|n| n.to_ascii_lowercase()).collect();
        Ok(ListenerCert { source, names, key })
    }
}

/// Certificates indexed by name.
#[derive(Debug, Default)]
struct Index {
    certs: Vec<ListenerCert>,
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl Index {
    fn new(certs: Vec<ListenerCert>) -> Index {
        let mut index = Index::default();
        for (i, cert) in certs.iter().enumerate() {
            for name in &cert.names {
                let map = match name.strip_prefix("*.") {
                    Some(parent) => index.wildcard.entry(parent.to_string()),
                    None => index.exact.entry(name.clone()),
                };
                map.or_insert(i); // the first configured wins a name two certificates share
            }
        }
        index.certs = certs;
        index
    }

    fn find(&self, server_name: Option<&str>) -> Option<&ListenerCert> {
        let by_name = server_name.and_then(|name| {
            let name = name.to_ascii_lowercase();
            let exact = self.exact.get(&name);
            let wildcard = || name.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent));
            exact.or_else(wildcard).copied()
        });
        self.certs.get(by_name.unwrap_or(0))
    }
}

/// A listener's certificates, chosen per handshake by SNI.
#[derive(Debug, Default)]
pub struct CertStore {
    index: RwLock<Arc<Index>>,
}

impl CertStore {
    /// A store of `certs`; the first is the default.
    pub fn new(certs: Vec<ListenerCert>) -> CertStore {
        CertStore {
            index: RwLock::new(Arc::new(Index::new(certs))),
        }
    }

    /// Replaces the certificates (new handshakes use the new set).
    pub fn replace(&self, certs: Vec<ListenerCert>) {
        let index = Arc::new(Index::new(certs));
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = index;
    }

    fn current(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The certificate a handshake for `server_name` gets.
    pub fn choose(&self, server_name: Option<&str>) -> Option<ListenerCert> {
        self.current().find(server_name).cloned()
    }

    /// The certificates (sources and names), in order.
    pub fn list(&self) -> Vec<(String, Vec<String>)> {
        let index = self.current();
        index
            .certs
            .iter()
            .map(|c| (c.source.clone(), c.names.clone()))
            .collect()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name()).map(|c| c.key)
    }
}
