//! End to end: a rustls server whose certificate's key lives on the Key Server completes
//! TLS 1.3 and TLS 1.2 handshakes with a stock rustls client, in memory.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::CertificateDer;
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, SupportedProtocolVersion};
use xlb_keyserver::client::certified_key_from_pem;
use xlb_keyserver::wire::{Opcode, Status};
use xlb_keyserver::KeyServerClient;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Moves TLS bytes between the two ends until neither has anything to send.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), rustls::Error> {
    for _ in 0..100 {
        let mut progressed = false;
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            progressed = true;
            let mut s = &buf[..];
            while !s.is_empty() {
                server.read_tls(&mut s).unwrap();
                server.process_new_packets()?;
            }
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            progressed = true;
            let mut s = &buf[..];
            while !s.is_empty() {
                client.read_tls(&mut s).unwrap();
                client.process_new_packets()?;
            }
        }
        if !progressed {
            return Ok(());
        }
    }
    panic!("TLS exchange did not settle");
}

fn handshake_and_talk(
    ks: &KeyServerClient,
    served: &Served,
    leaf: &CertificateDer<'static>,
    version: &'static SupportedProtocolVersion,
) -> Result<(), rustls::Error> {
    // The appliance side: certificate chain only; the key is a RemoteSigningKey.
    let chain_pem = pem_cert(leaf) + &pem_cert(served.web_ca.der());
    let certified = certified_key_from_pem(ks, chain_pem.as_bytes()).unwrap();
    certified
        .keys_match()
        .expect("remote key's public key matches the certificate");
    let server_cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(served.web_ca.der().clone()).unwrap();
    let client_cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut server = ServerConnection::new(Arc::new(server_cfg)).unwrap();
    let mut client = ClientConnection::new(Arc::new(client_cfg), "www.test".try_into().unwrap()).unwrap();
    pump(&mut client, &mut server)?;
    assert!(!client.is_handshaking() && !server.is_handshaking());
    assert_eq!(client.protocol_version(), Some(version.version));

    client.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    pump(&mut client, &mut server)?;
    let mut got = [0u8; 18];
    server.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
    server.writer().write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
    pump(&mut client, &mut server)?;
    let mut got = [0u8; 19];
    client.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"HTTP/1.1 200 OK\r\n\r\n");
    Ok(())
}

#[test]
fn tls13_and_tls12_handshakes_complete_with_remote_p256_and_rsa_keys() {
    let dir = TempDir::new("e2e");
    let served = write_keys(&dir);
    let server = start_server(&dir, ALLOW_UNIX_ALL);
    let ks = unix_client(&dir);
    let mut expected_signs = 0;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        for leaf in [&served.p256_cert, &served.rsa_cert] {
            handshake_and_talk(&ks, &served, leaf, version)
                .unwrap_or_else(|e| panic!("{:?} handshake failed: {e}", version.version));
            expected_signs += 1;
            // Exactly one remote signature per full handshake.
            assert_eq!(server.stats().get(Opcode::Sign, Status::Ok), expected_signs);
        }
    }
    assert_eq!(ks.counters().ok, 4);
    server.shutdown();
}

#[test]
fn handshake_fails_fast_when_the_key_server_is_down() {
    let dir = TempDir::new("e2e-down");
    let served = write_keys(&dir);
    let server = start_server(&dir, ALLOW_UNIX_ALL);
    let ks = unix_client(&dir);
    server.shutdown();
    let t = std::time::Instant::now();
    while ks.connected() > 0 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = std::time::Instant::now();
    let err = handshake_and_talk(&ks, &served, &served.p256_cert, &rustls::version::TLS13).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "handshake took {:?}",
        t.elapsed()
    );
    assert!(err.to_string().contains("no key server"), "{err}");
    assert_eq!(ks.counters().no_key_server, 1);
}
