use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConnection, Connection, HandshakeKind, ServerConfig, ServerConnection};

use super::certs::CertStore;
use super::client_hello::offers_resumption;
use super::config::{TlsListener, TlsListenerConfig};
use super::handshake::{HandshakeDone, HandshakePool, JobKey, Lane, PoolConfig, PoolConn};
use super::policy::TlsPolicy;
use super::testpki::{client, TestCa};

/// A listener's rustls config for `names` (one certificate each), under `policy`.
fn server_config(ca: &TestCa, certs: &[&[&str]], policy: TlsPolicy) -> Arc<ServerConfig> {
    let store = Arc::new(CertStore::new(certs.iter().map(|n| ca.listener_cert(n)).collect()));
    let mut config = ServerConfig::builder_with_provider(policy.provider())
        .with_protocol_versions(policy.versions())
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The job key of the tests' handshakes (a client's connection).
const KEY: JobKey = JobKey {
    session: (1, 2),
    upstream: None,
};

/// The bytes the client wants to send.
fn client_bytes(c: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).unwrap();
    }
    out
}

/// Runs a handshake through the pool; returns the server side and the lanes its steps took.
fn handshake_via_pool(
    pool: &HandshakePool,
    config: &Arc<ServerConfig>,
    c: &mut ClientConnection,
) -> (ServerConnection, Vec<Lane>) {
    let mut handle = pool.client(None);
    let mut server = Box::new(Connection::Server(ServerConnection::new(config.clone()).unwrap()));
    let mut lanes = Vec::new();
    for _ in 0..10 {
        let input = client_bytes(c);
        if input.is_empty() {
            break;
        }
        let lane = if lanes.is_empty() && offers_resumption(&input) != Some(true) {
            Lane::Full
        } else {
            Lane::Light
        };
        lanes.push(lane);
        assert!(handle.send(lane, KEY, PoolConn::Conn(server), input).is_ok());
        let done: HandshakeDone = loop {
            if let Some(done) = handle.receive() {
                break done;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(done.key, KEY);
        assert!(done.error.is_none(), "{:?}", done.error);
        server = done.conn.expect("the connection comes back");
        c.read_tls(&mut &done.output[..]).unwrap();
        c.process_new_packets().unwrap();
        if !server.is_handshaking() && !c.is_handshaking() {
            break;
        }
    }
    assert_eq!(handle.in_flight(), 0);
    let Connection::Server(server) = *server else {
        panic!("a server connection went to the pool")
    };
    (server, lanes)
}

#[test]
fn sni_chooses_the_exact_name_then_a_wildcard_then_the_default() {
    let ca = TestCa::new();
    let store = CertStore::new(vec![
        ca.listener_cert(&["default.test"]),
        ca.listener_cert(&["*.example.com"]),
        ca.listener_cert(&["www.example.com", "example.com"]),
    ]);
    let pick = |name: Option<&str>| store.choose(name).unwrap().source;
    assert_eq!(pick(Some("www.example.com")), "www.example.com,example.com");
    assert_eq!(pick(Some("WWW.Example.COM")), "www.example.com,example.com");
    assert_eq!(pick(Some("example.com")), "www.example.com,example.com");
    assert_eq!(pick(Some("api.example.com")), "*.example.com");
    assert_eq!(
        pick(Some("a.b.example.com")),
        "default.test",
        "a wildcard covers one label"
    );
    assert_eq!(pick(Some("other.test")), "default.test");
    assert_eq!(pick(None), "default.test");
    store.replace(vec![ca.listener_cert(&["new.test"])]);
    assert_eq!(pick(Some("www.example.com")), "new.test", "replaced live");
    assert_eq!(
        store.list(),
        vec![("new.test".to_string(), vec!["new.test".to_string()])]
    );
}

#[test]
fn pool_runs_a_full_handshake_then_a_resumption_in_the_light_lane() {
    let ca = TestCa::new();
    let config = server_config(&ca, &[&["www.example.com"]], TlsPolicy::Tls12);
    let pool = HandshakePool::start(PoolConfig::default()).unwrap();
    let client_config = ca.client_config(&["http/1.1"]);

    let mut c = client(&client_config, "www.example.com");
    let (server, lanes) = handshake_via_pool(&pool, &config, &mut c);
    assert_eq!(server.handshake_kind(), Some(HandshakeKind::Full));
    assert_eq!(lanes[0], Lane::Full);
    assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(server.server_name(), Some("www.example.com"));

    // The client keeps the ticket it was sent; its next connection resumes.
    let mut c2 = client(&client_config, "www.example.com");
    let (server2, lanes2) = handshake_via_pool(&pool, &config, &mut c2);
    assert_eq!(server2.handshake_kind(), Some(HandshakeKind::Resumed));
    assert!(lanes2.iter().all(|&l| l == Lane::Light), "{lanes2:?}");
}

#[test]
fn client_hello_peek_tells_full_from_resumption_and_refuses_garbage() {
    let ca = TestCa::new();
    let config = server_config(&ca, &[&["www.example.com"]], TlsPolicy::Tls12);
    let client_config = ca.client_config(&[]);
    let mut c = client(&client_config, "www.example.com");
    let hello = client_bytes(&mut c);
    assert_eq!(offers_resumption(&hello), Some(false));
    assert_eq!(offers_resumption(&hello[..hello.len() - 1]), None, "incomplete");
    assert_eq!(offers_resumption(b"GET / HTTP/1.1\r\n\r\n"), None);
    assert_eq!(offers_resumption(&[]), None);
    let mut server = ServerConnection::new(config.clone()).unwrap();
    // A direct in-memory handshake, so the client gets a ticket.
    let mut from_client = hello;
    for _ in 0..10 {
        server.read_tls(&mut &from_client[..]).unwrap();
        server.process_new_packets().unwrap();
        let mut out = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut out).unwrap();
        }
        c.read_tls(&mut &out[..]).unwrap();
        c.process_new_packets().unwrap();
        from_client = client_bytes(&mut c);
        if from_client.is_empty() && !c.is_handshaking() {
            break;
        }
    }
    let mut again = client(&client_config, "www.example.com");
    assert_eq!(offers_resumption(&client_bytes(&mut again)), Some(true));
}

#[test]
fn a_tls13_only_policy_refuses_a_tls12_client() {
    let ca = TestCa::new();
    let config = server_config(&ca, &[&["www.example.com"]], TlsPolicy::Tls13);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.clone()).unwrap();
    let tls12 = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let pool = HandshakePool::start(PoolConfig::default()).unwrap();
    let mut handle = pool.client(None);
    let mut c = client(&tls12, "www.example.com");
    let server = Box::new(Connection::Server(ServerConnection::new(config).unwrap()));
    assert!(handle
        .send(Lane::Full, KEY, PoolConn::Conn(server), client_bytes(&mut c))
        .is_ok());
    let done = loop {
        if let Some(done) = handle.receive() {
            break done;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(done.error.is_some(), "TLS 1.2 is refused");
    assert!(!done.output.is_empty(), "an alert is sent");
    assert!(c.read_tls(&mut &done.output[..]).is_ok());
    assert!(c.process_new_packets().is_err(), "the client sees the alert");
}

#[test]
fn listener_tls_tables_are_checked() {
    let parse = |text: &str| TlsListenerConfig::from_table(&text.parse::<toml::Table>().unwrap(), "listener[0] (w)");
    assert!(parse("").unwrap_err().contains("listener[0] (w).tls"));
    assert!(parse("cert = []").unwrap_err().contains("at least one certificate"));
    assert!(parse("alpn = [\"spdy/3\"]\n[[cert]]\ncert = \"a.pem\"")
        .unwrap_err()
        .contains("alpn"));
    assert!(parse("policy = \"ssl3\"\n[[cert]]\ncert = \"a.pem\"").is_err());
    let tls = parse("policy = \"tls-1-3\"\n[[cert]]\ncert = \"/nonexistent/a.pem\"").unwrap();
    assert_eq!(tls.policy, TlsPolicy::Tls13);
    assert!(tls.needs_key_server());
    let e = TlsListener::build(&tls, None).unwrap_err();
    assert!(e.contains("/nonexistent/a.pem"), "{e}");
}

#[test]
fn a_listener_is_built_from_pem_files_and_a_mismatched_key_is_refused() {
    let ca = TestCa::new();
    let dir = std::env::temp_dir().join(format!("xlb-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = ca.leaf_pem(&["www.example.com"]);
    let (_, other_key) = ca.leaf_pem(&["other.example.com"]);
    std::fs::write(dir.join("c.pem"), cert).unwrap();
    std::fs::write(dir.join("k.pem"), key).unwrap();
    std::fs::write(dir.join("o.pem"), other_key).unwrap();
    let table = |key: &str| {
        format!(
            "[[cert]]\ncert = \"{}\"\nkey = \"{}\"",
            dir.join("c.pem").display(),
            dir.join(key).display()
        )
    };
    let parse = |text: String| TlsListenerConfig::from_table(&text.parse::<toml::Table>().unwrap(), "l").unwrap();
    let built = TlsListener::build(&parse(table("k.pem")), None).unwrap();
    assert_eq!(built.certs.list()[0].1, vec!["www.example.com".to_string()]);
    let e = TlsListener::build(&parse(table("o.pem")), None).unwrap_err();
    assert!(e.contains("does not match"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn client_subjects_are_written_most_specific_first_and_escaped() {
    let ca = TestCa::new();
    let (cert, _) = ca.client_leaf("Doe, John", "Example+Co");
    assert_eq!(
        super::subject::subject(&cert).as_deref(),
        Some("CN=Doe\\, John,O=Example\\+Co")
    );
    assert_eq!(super::subject::subject(b"\x30\x03garbage"), None);
}
