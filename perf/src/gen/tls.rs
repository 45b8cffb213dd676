//! TLS for the HTTP generator (`xlb-bench http --tls ...`): a rustls client (ring provider), TLS 1.3 only,
//! ALPN `http/1.1`.
//!
//! - Without resumption every connection makes a full handshake: the client offers no ticket or PSK
//!   (`Resumption::disabled`).
//! - With resumption each worker keeps its own session store: its first connection makes a full handshake,
//!   every later one offers the ticket(s) the server sent on an earlier connection. Whether a handshake was
//!   full or resumed is what rustls reports ([`rustls::ClientConnection::handshake_kind`]), counted per run.
//! - Without a CA file the server's certificate and handshake signature are not checked at all: the generator
//!   then spends its CPU on the key exchange and the records only, so that on a small machine it is not the
//!   generator's own signature checks that bound the handshake rate. The suite checks the certificate once
//!   with a verifying probe before it measures.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, RootCertStore, SignatureScheme};

/// TLS settings of an HTTP run.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// SNI name sent (and checked against the certificate when `ca` is set).
    pub server_name: String,
    /// PEM file of the CA the server's certificate must chain to; `None`: nothing is checked.
    pub ca: Option<PathBuf>,
    /// Resume sessions (TLS 1.3 tickets) after each worker's first connection.
    pub resume: bool,
}

/// Session tickets a worker keeps (servers send one or two per connection; each is used once).
const TICKETS_PER_WORKER: usize = 16;

/// A client configuration shared by the workers of a run.
#[derive(Debug, Clone)]
pub struct TlsClient {
    config: ClientConfig,
    name: ServerName<'static>,
    resume: bool,
}

impl TlsClient {
    /// Builds the client from `options`.
    pub fn new(options: &TlsOptions) -> Result<TlsClient> {
        let name = ServerName::try_from(options.server_name.clone())
            .with_context(|| format!("`{}` is not a TLS server name", options.server_name))?;
        let provider = Arc::new(ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 with the ring provider")?;
        let mut config = match &options.ca {
            Some(path) => builder.with_root_certificates(roots(path)?).with_no_client_auth(),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::disabled();
        Ok(TlsClient {
            config,
            name,
            resume: options.resume,
        })
    }

    /// The configuration for one worker: with resumption, one with a session store of its own.
    pub fn worker_config(&self) -> Arc<ClientConfig> {
        let mut config = self.config.clone();
        if self.resume {
            config.resumption = Resumption::in_memory_sessions(TICKETS_PER_WORKER);
        }
        Arc::new(config)
    }

    /// Runs a handshake over the connected `tcp` (its timeouts apply to every step).
    pub fn handshake(&self, config: &Arc<ClientConfig>, mut tcp: TcpStream) -> io::Result<(Stream, HandshakeKind)> {
        let mut conn = ClientConnection::new(Arc::clone(config), self.name.clone()).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            let (read, written) = conn.complete_io(&mut tcp)?;
            if read == 0 && written == 0 && conn.is_handshaking() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the TLS handshake",
                ));
            }
        }
        let kind = conn.handshake_kind().unwrap_or(HandshakeKind::Full);
        Ok((Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))), kind))
    }
}

/// The CA certificates in the PEM file at `path`.
fn roots(path: &Path) -> Result<RootCertStore> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_reader_iter(&mut BufReader::new(file)) {
        let cert = cert.with_context(|| format!("bad PEM in {}", path.display()))?;
        roots.add(cert).context("bad CA certificate")?;
    }
    if roots.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(roots)
}

/// Accepts any certificate and signature (see the module docs).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client connection's byte stream: plain TCP or TLS over it.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<rustls::StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Handshakes of a run by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HandshakeCounts {
    /// Full handshakes (a certificate signature), including any with a HelloRetryRequest.
    pub full: u64,
    /// Of `full`: with a HelloRetryRequest.
    pub hello_retry: u64,
    /// Resumed handshakes (a ticket accepted).
    pub resumed: u64,
}

impl HandshakeCounts {
    /// Counts one handshake of `kind`.
    pub fn add(&mut self, kind: HandshakeKind) {
        match kind {
            HandshakeKind::Resumed => self.resumed += 1,
            HandshakeKind::FullWithHelloRetryRequest => {
                self.full += 1;
                self.hello_retry += 1;
            }
            _ => self.full += 1,
        }
    }

    /// Adds `other` in.
    pub fn merge(&mut self, other: &HandshakeCounts) {
        self.full += other.full;
        self.hello_retry += other.hello_retry;
        self.resumed += other.resumed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_kind() {
        let mut c = HandshakeCounts::default();
        c.add(HandshakeKind::Full);
        c.add(HandshakeKind::Resumed);
        c.add(HandshakeKind::Resumed);
        c.add(HandshakeKind::FullWithHelloRetryRequest);
        let mut total = HandshakeCounts::default();
        total.merge(&c);
        total.merge(&c);
        assert_eq!(
            total,
            HandshakeCounts {
                full: 4,
                hello_retry: 2,
                resumed: 4
            }
        );
    }

    #[test]
    fn client_configs() {
        let full = TlsClient::new(&TlsOptions {
            server_name: "www.example.com".into(),
            ca: None,
            resume: false,
        })
        .unwrap();
        assert_eq!(full.worker_config().alpn_protocols, [b"http/1.1".to_vec()]);
        assert!(TlsClient::new(&TlsOptions {
            server_name: "bad name!".into(),
            ca: None,
            resume: true,
        })
        .is_err());
        assert!(TlsClient::new(&TlsOptions {
            server_name: "x".into(),
            ca: Some("/nonexistent/ca.pem".into()),
            resume: true,
        })
        .is_err());
    }
}
