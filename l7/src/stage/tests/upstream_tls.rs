//! HTTPS to servers: the group's `tls` makes xlb a TLS client of the server (handshakes on the pool), verified
//! against the group's CA file; the connections are kept and reused like plain ones.

use std::path::{Path, PathBuf};

use super::*;
use crate::tls::testpki::TestCa;
use crate::tls::upstream::{UpstreamTls, UpstreamTlsConfig};

/// The CA's certificate in a file of its own (the group's `tls.ca`).
fn ca_file(ca: &TestCa, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xlb-upstream-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ca.pem");
    std::fs::write(&path, &ca.pem).unwrap();
    path
}

/// A server config presenting a certificate for `names` from `ca`.
fn server_config(ca: &TestCa, names: &[&str]) -> Arc<rustls::ServerConfig> {
    let store = Arc::new(crate::tls::certs::CertStore::new(vec![ca.listener_cert(names)]));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

fn group_tls(ca: &Path, server_name: Option<&str>) -> Arc<UpstreamTls> {
    let source = UpstreamTlsConfig {
        ca: ca.to_path_buf(),
        server_name: server_name.map(str::to_owned),
        policy: Default::default(),
        cert: None,
        key: None,
    };
    Arc::new(UpstreamTls::build(&source).unwrap())
}

/// A world whose server presents a certificate for app.internal from a fresh CA the group trusts.
fn app_world(case: &str) -> World {
    let ca = TestCa::new();
    let ca_path = ca_file(&ca, case);
    world_full(
        None,
        Some((
            server_config(&ca, &["app.internal"]),
            group_tls(&ca_path, Some("app.internal")),
        )),
    )
}

#[test]
fn requests_reach_an_https_server_over_one_verified_kept_connection() {
    let mut w = app_world("ok");
    let c = w.connect(40_000);
    for i in 0..3 {
        let got = w.request(c, GET);
        assert!(
            got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("hello"),
            "request {i}: {got:?}"
        );
    }
    assert_eq!(w.server.accepted, 1, "one upstream connection");
    assert_eq!(w.server.requests.len(), 3, "the server decrypted three requests");
    assert!(
        w.server.requests[0].starts_with("GET /x HTTP/1.1\r\n"),
        "plaintext HTTP inside TLS: {:?}",
        w.server.requests[0]
    );
    let (_, server_side) = &w.server.sessions[0];
    assert_eq!(
        server_side.server_name(),
        Some("app.internal"),
        "SNI is the group's server_name"
    );
    assert_eq!(
        server_side.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "xlb offers only HTTP/1.1 upstream"
    );
    assert_eq!(w.counters().get(L7Count::UpstreamTlsFull), 1);
    assert_eq!(w.counters().get(L7Count::UpstreamTlsFailed), 0);

    // The next client reuses the kept TLS connection: no new TCP connection, no new handshake. A TLS message
    // without data reaching the idle connection (here a KeyUpdate; NGINX sends its session tickets after the
    // first response) does not end it.
    w.client.close(w.now, c);
    w.settle();
    assert_eq!(w.stack.handler().upstreams.idle_count(), 1);
    w.server.sessions[0].1.refresh_traffic_keys().unwrap();
    w.settle();
    assert_eq!(w.stack.handler().upstreams.idle_count(), 1, "still kept");
    let c2 = w.connect(40_001);
    assert!(w.request(c2, GET).ends_with("hello"));
    assert_eq!(w.server.accepted, 1);
    assert_eq!(w.counters().get(L7Count::UpstreamTlsFull), 1);
    assert_eq!(w.counters().get(L7Count::UpstreamReused), 3);
}

#[test]
fn a_new_connection_to_a_server_resumes_the_groups_tls_session() {
    let mut w = app_world("resume");
    let c = w.connect(40_000);
    assert!(w.request(c, GET).ends_with("hello"));
    // The server closes the kept connection; the next request needs a new one, which resumes.
    let first = w.server.conns[0];
    w.server.host.close(w.now, first);
    w.settle();
    w.advance(Duration::from_millis(300));
    assert!(w.request(c, GET).ends_with("hello"));
    assert_eq!(w.server.accepted, 2);
    assert_eq!(w.counters().get(L7Count::UpstreamTlsFull), 1);
    assert_eq!(
        w.counters().get(L7Count::UpstreamTlsResumed),
        1,
        "the ticket from the first connection"
    );
}

#[test]
fn a_server_certificate_not_for_the_name_or_from_another_ca_is_refused_with_502() {
    let ca = TestCa::new();
    let other = TestCa::new();
    for (case, server, trusted, name) in [
        ("wrong name", &ca, &ca, "app.internal"),
        ("unknown CA", &other, &ca, "other.internal"),
    ] {
        let ca_path = ca_file(trusted, case.split(' ').next().unwrap());
        let mut w = world_full(
            None,
            Some((
                server_config(server, &["other.internal"]),
                group_tls(&ca_path, Some(name)),
            )),
        );
        let c = w.connect(40_000);
        let got = w.request(c, GET);
        assert!(got.starts_with("HTTP/1.1 502 "), "{case}: {got:?}");
        assert!(w.server.requests.is_empty(), "{case}: no request reached the server");
        assert!(w.counters().get(L7Count::UpstreamTlsFailed) >= 1, "{case}");
        assert_eq!(w.counters().get(L7Count::UpstreamTlsFull), 0, "{case}");
        assert_eq!(w.stack.handler().upstreams.idle_count(), 0, "{case}: nothing kept");
    }
}

#[test]
fn group_tls_tables_are_checked() {
    let parse = |text: &str| UpstreamTlsConfig::from_table(&text.parse::<toml::Table>().unwrap(), "group[0] (web)");
    assert!(parse("").unwrap_err().contains("group[0] (web).tls"), "ca is required");
    assert!(parse("ca = \"a.pem\"\ncert = \"c.pem\"")
        .unwrap_err()
        .contains("cert and key go together"));
    assert!(parse("ca = \"a.pem\"\nserver_name = \"bad name!\"")
        .unwrap_err()
        .contains("server_name"));
    assert!(
        parse("ca = \"a.pem\"\nverify = false").is_err(),
        "no way to switch verification off"
    );
    let ok = parse("ca = \"/nonexistent/ca.pem\"\nserver_name = \"app.internal\"").unwrap();
    let e = UpstreamTls::build(&ok).unwrap_err();
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
}
