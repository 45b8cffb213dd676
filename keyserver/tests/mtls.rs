//! Mutual TLS (over a Unix socket: the TLS layer is the one TCP uses, and tests must not
//! open host TCP sockets): right CA accepted, other CA / no certificate refused,
//! authorization by certificate name.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::SignatureScheme;
use xlb_keyserver::server::CloseReason;
use xlb_keyserver::wire::Status;
use xlb_keyserver::{ClientTls, Endpoint, KeyServerClient, SignError};

fn rules() -> String {
    "[[authorize]]\nclient = \"lb-1.test\"\nkeys = [\"*\"]\n\
     [[authorize]]\nclient = \"lb-2.test\"\nkeys = [\"rsa.pem\"]\n"
        .to_string()
}

fn wait_closed(server: &xlb_keyserver::server::ServerHandle, reason: CloseReason) -> u64 {
    let t = std::time::Instant::now();
    while server.stats().closed(reason) == 0 && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
    }
    server.stats().closed(reason)
}

#[test]
fn client_with_certificate_from_the_right_ca_is_accepted_and_signs() {
    let dir = TempDir::new("mtls-ok");
    let served = write_keys(&dir);
    let m = mtls(&dir);
    let server = start_server(&dir, &format!("{}{}", m.toml, rules()));
    let tls = client_tls(&m.ca, "lb-1.test", &m.ca);
    let client = KeyServerClient::new(vec![Endpoint::UnixTls(dir.sock(), tls)], fast_options()).unwrap();
    assert!(
        client.wait_connected(Duration::from_secs(5)),
        "mTLS client did not connect"
    );
    let key = xlb_keyserver::RemoteSigningKey::from_certificate(client.clone(), &served.p256_cert).unwrap();
    // Many in flight through one TLS session.
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let (client, cert) = (client.clone(), served.p256_cert.clone());
            let id = key.key_id();
            std::thread::spawn(move || {
                let msg = format!("over tls {i}");
                let sig = client
                    .sign(&id, SignatureScheme::ECDSA_NISTP256_SHA256, msg.as_bytes())
                    .unwrap();
                verify(&cert, SignatureScheme::ECDSA_NISTP256_SHA256, msg.as_bytes(), &sig);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(client.list_keys().unwrap().len(), 3);
    assert_eq!(server.stats().closed(CloseReason::TlsHandshake), 0);
    server.shutdown();
}

#[test]
fn certificate_name_decides_which_keys_a_client_may_use() {
    let dir = TempDir::new("mtls-authz");
    let served = write_keys(&dir);
    let m = mtls(&dir);
    let server = start_server(&dir, &format!("{}{}", m.toml, rules()));
    let tls = client_tls(&m.ca, "lb-2.test", &m.ca);
    let client = KeyServerClient::new(vec![Endpoint::UnixTls(dir.sock(), tls)], fast_options()).unwrap();
    assert!(client.wait_connected(Duration::from_secs(5)));
    let p256 = xlb_keyserver::cert::certificate_key_id(&served.p256_cert).unwrap();
    let err = client
        .sign(&p256, SignatureScheme::ECDSA_NISTP256_SHA256, b"m")
        .unwrap_err();
    assert!(
        matches!(
            err,
            SignError::Refused {
                status: Status::NotAuthorized,
                ..
            }
        ),
        "{err:?}"
    );
    let rsa = xlb_keyserver::cert::certificate_key_id(&served.rsa_cert).unwrap();
    let sig = client.sign(&rsa, SignatureScheme::RSA_PSS_SHA256, b"m").unwrap();
    verify(&served.rsa_cert, SignatureScheme::RSA_PSS_SHA256, b"m", &sig);
    // A certificate whose name no rule mentions: connected, but may use nothing.
    let tls = client_tls(&m.ca, "stranger.test", &m.ca);
    let stranger = KeyServerClient::new(vec![Endpoint::UnixTls(dir.sock(), tls)], fast_options()).unwrap();
    assert!(stranger.wait_connected(Duration::from_secs(5)));
    let err = stranger.sign(&rsa, SignatureScheme::RSA_PSS_SHA256, b"m").unwrap_err();
    assert!(
        matches!(
            err,
            SignError::Refused {
                status: Status::NotAuthorized,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(stranger.list_keys().unwrap().is_empty());
    server.shutdown();
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    let dir = TempDir::new("mtls-otherca");
    write_keys(&dir);
    let m = mtls(&dir);
    let server = start_server(&dir, &format!("{}{}", m.toml, rules()));
    let rogue_ca = ca("rogue ca");
    let tls = client_tls(&rogue_ca, "lb-1.test", &m.ca);
    let client = KeyServerClient::new(vec![Endpoint::UnixTls(dir.sock(), tls)], fast_options()).unwrap();
    assert!(
        !client.wait_connected(Duration::from_millis(500)),
        "a client from another CA got in"
    );
    assert_eq!(client.ping().unwrap_err(), SignError::NoKeyServer);
    assert!(client.counters().connect_failures >= 1);
    assert!(wait_closed(&server, CloseReason::TlsHandshake) >= 1);
    server.shutdown();
}

#[test]
fn client_without_certificate_is_refused() {
    let dir = TempDir::new("mtls-nocert");
    write_keys(&dir);
    let m = mtls(&dir);
    let server = start_server(&dir, &format!("{}{}", m.toml, rules()));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(m.ca.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = ClientTls {
        config: Arc::new(config),
        server_name: "keyserver.test".try_into().unwrap(),
    };
    let client = KeyServerClient::new(vec![Endpoint::UnixTls(dir.sock(), tls)], fast_options()).unwrap();
    assert!(
        !client.wait_connected(Duration::from_millis(500)),
        "a client without certificate got in"
    );
    assert_eq!(client.ping().unwrap_err(), SignError::NoKeyServer);
    assert!(wait_closed(&server, CloseReason::TlsHandshake) >= 1);
    assert_eq!(server.stats().total_requests(), 0);
    server.shutdown();
}

#[test]
fn server_with_untrusted_certificate_is_refused_by_the_client() {
    let dir = TempDir::new("mtls-badserver");
    write_keys(&dir);
    let m = mtls(&dir);
    let server = start_server(&dir, &format!("{}{}", m.toml, rules()));
    let other = ca("not the key server's ca");
    let tls = client_tls(&m.ca, "lb-1.test", &other);
    let client = KeyServerClient::new(vec![Endpoint::UnixTls(dir.sock(), tls)], fast_options()).unwrap();
    assert!(!client.wait_connected(Duration::from_millis(500)));
    assert!(client.counters().connect_failures >= 1);
    server.shutdown();
}

#[test]
fn plain_client_on_a_tls_socket_is_closed_not_hung() {
    let dir = TempDir::new("mtls-plain");
    write_keys(&dir);
    let m = mtls(&dir);
    let server = start_server(&dir, &format!("frame_timeout_secs = 1\n{}{}", m.toml, rules()));
    let client = KeyServerClient::new(vec![Endpoint::Unix(dir.sock())], fast_options()).unwrap();
    // The server reads our first ping as a bad TLS record and hangs up: never connected.
    assert!(!client.wait_connected(Duration::from_millis(500)));
    assert!(client.counters().connect_failures >= 1);
    assert!(wait_closed(&server, CloseReason::TlsHandshake) >= 1);
    server.shutdown();
}
