//! `RemoteSigningKey`: a rustls signing key whose private half lives on a Key Server.

use std::fmt;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

use super::KeyServerClient;
use crate::cert::{certificate_spki, KeyKind};
use crate::wire::KeyId;

/// A `rustls::sign::SigningKey` for a certificate whose private key is on the Key Server.
/// Signing is a blocking round trip: call it from a handshake thread pool, not a datapath worker.
#[derive(Clone)]
pub struct RemoteSigningKey {
    client: KeyServerClient,
    key_id: KeyId,
    kind: KeyKind,
    spki: Vec<u8>,
}

impl fmt::Debug for RemoteSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteSigningKey({}, {})", self.kind.name(), self.key_id.short())
    }
}

impl RemoteSigningKey {
    /// Builds the key for the end-entity certificate `cert` (DER): derives the key id
    /// (SHA-256 of its SPKI) and the schemes from the public key algorithm.
    pub fn from_certificate(client: KeyServerClient, cert: &CertificateDer<'_>) -> Result<Self, rustls::Error> {
        let spki = certificate_spki(cert)?;
        let kind = KeyKind::from_spki(&spki).ok_or_else(|| {
            rustls::Error::General("certificate public key is not RSA, ECDSA P-256/P-384 or Ed25519".into())
        })?;
        Ok(RemoteSigningKey {
            client,
            key_id: KeyId::from_spki(&spki),
            kind,
            spki,
        })
    }

    /// The id the Key Server knows this key by.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The key's algorithm.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }
}

impl SigningKey for RemoteSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = self.kind.schemes().iter().find(|s| offered.contains(s))?;
        Some(Box::new(RemoteSigner {
            key: self.clone(),
            scheme: *scheme,
        }))
    }

    fn public_key(&self) -> Option<rustls::pki_types::SubjectPublicKeyInfoDer<'_>> {
        Some(self.spki.as_slice().into())
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.kind.algorithm()
    }
}

#[derive(Debug)]
struct RemoteSigner {
    key: RemoteSigningKey,
    scheme: SignatureScheme,
}

impl Signer for RemoteSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.key
            .client
            .sign(&self.key.key_id, self.scheme, message)
            .map_err(|e| {
                rustls::Error::General(format!(
                    "remote signing with key {} failed: {e}",
                    self.key.key_id.short()
                ))
            })
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

/// Builds a `CertifiedKey` from a PEM certificate chain (end-entity first) whose private
/// key is on the Key Server reached through `client`.
pub fn certified_key_from_pem(client: &KeyServerClient, chain_pem: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .context("certificate chain PEM")?;
    let leaf = chain
        .first()
        .context("certificate chain PEM holds no CERTIFICATE block")?;
    let key = RemoteSigningKey::from_certificate(client.clone(), leaf).context("end-entity certificate")?;
    Ok(Arc::new(CertifiedKey::new(chain, Arc::new(key))))
}
