//! TLS security policies by name, as a cloud load balancer offers them: which protocol versions, cipher suites
//! and key-exchange groups a listener accepts. Every policy offers only forward-secret AEAD suites (all that
//! rustls implements); they differ in how old a client they still serve.

use std::sync::Arc;

use rustls::crypto::{ring, CryptoProvider};
use rustls::{CipherSuite, SupportedProtocolVersion};
use serde::Deserialize;

/// A named TLS policy (`tls.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
pub enum TlsPolicy {
    /// TLS 1.2 and 1.3; ECDHE with AES-GCM or ChaCha20-Poly1305; X25519, P-256, P-384. The default.
    #[default]
    #[serde(rename = "tls-1-2")]
    Tls12,
    /// TLS 1.2 and 1.3 with AES-GCM only (no ChaCha20) and the NIST groups P-256 and P-384 first.
    #[serde(rename = "tls-1-2-aes")]
    Tls12Aes,
    /// TLS 1.3 only.
    #[serde(rename = "tls-1-3")]
    Tls13,
}

impl TlsPolicy {
    /// Every policy, for help texts.
    pub const ALL: [TlsPolicy; 3] = [TlsPolicy::Tls12, TlsPolicy::Tls12Aes, TlsPolicy::Tls13];

    /// The name used in config files.
    pub fn name(self) -> &'static str {
        match self {
            TlsPolicy::Tls12 => "tls-1-2",
            TlsPolicy::Tls12Aes => "tls-1-2-aes",
            TlsPolicy::Tls13 => "tls-1-3",
        }
    }

    /// The protocol versions the policy accepts.
    pub fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        static BOTH: [&SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];
        static TLS13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            TlsPolicy::Tls12 | TlsPolicy::Tls12Aes => &BOTH,
            TlsPolicy::Tls13 => &TLS13,
        }
    }

    /// The crypto provider (ring) restricted to the policy's suites and groups.
    pub fn provider(self) -> Arc<CryptoProvider> {
        let mut provider = ring::default_provider();
        if self == TlsPolicy::Tls12Aes {
            provider.cipher_suites.retain(|s| {
                !matches!(
                    s.suite(),
                    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                        | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                        | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
                )
            });
            provider.kx_groups = vec![
                ring::kx_group::SECP256R1,
                ring::kx_group::SECP384R1,
                ring::kx_group::X25519,
            ];
        }
        Arc::new(provider)
    }
}
