//! Mutual TLS over real TCP, between two network namespaces this test creates
//! (198.18.77.0/30 on a veth pair; removed by the lab also when the test fails).

mod common;

use std::time::Duration;

use common::*;
use rustls::SignatureScheme;
use xlb_keyserver::server::ServerHandle;
use xlb_keyserver::{Endpoint, KeyServerClient, SignError};
use xlb_tests::lab::{Lab, Netns};

const SERVER_ADDR: &str = "198.18.77.1:7443";

/// Runs `f` on a fresh thread inside `ns`: sockets it opens, and threads it starts, stay there.
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.clone();
    std::thread::spawn(move || {
        ns.enter_current_thread().unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn start_tcp_server(ns: &Netns, dir: &TempDir, tls_toml: &str) -> ServerHandle {
    let toml = format!(
        "keys_dir = {:?}\nlisten_tcp = \"{SERVER_ADDR}\"\nstats_interval_secs = 0\n{}\
         [[authorize]]\nclient = \"lb-1.test\"\nkeys = [\"*\"]\n",
        dir.keys(),
        tls_toml.replace("unix_tls = true\n", "")
    );
    let cfg = xlb_keyserver::config::Config::parse(&toml).unwrap();
    in_netns(ns, move || xlb_keyserver::server::start(cfg).unwrap())
}

#[test]
fn mtls_over_tcp_between_namespaces_signs_fails_fast_and_reconnects() {
    let lab = Lab::new("keyserver-tcp").expect("netns lab (needs root and iproute2)");
    let (ks_ns, lb_ns) = (lab.netns("ks").unwrap(), lab.netns("lb").unwrap());
    lab.veth((&ks_ns, "eth0"), (&lb_ns, "eth0")).unwrap();
    ks_ns.addr("eth0", "198.18.77.1/30").unwrap();
    lb_ns.addr("eth0", "198.18.77.2/30").unwrap();

    let dir = TempDir::new("tcp");
    let served = write_keys(&dir);
    let m = mtls(&dir);
    let server = start_tcp_server(&ks_ns, &dir, &m.toml);

    let good = client_tls(&m.ca, "lb-1.test", &m.ca);
    let rogue = client_tls(&ca("rogue"), "lb-1.test", &m.ca);
    let (client, rogue_client) = in_netns(&lb_ns, move || {
        let ep = |tls| vec![Endpoint::Tcp(SERVER_ADDR.parse().unwrap(), tls)];
        (
            KeyServerClient::new(ep(good), fast_options()).unwrap(),
            KeyServerClient::new(ep(rogue), fast_options()).unwrap(),
        )
    });
    assert!(
        client.wait_connected(Duration::from_secs(5)),
        "tcp client did not connect"
    );
    let id = xlb_keyserver::cert::certificate_key_id(&served.rsa_cert).unwrap();
    let sig = client.sign(&id, SignatureScheme::RSA_PSS_SHA256, b"over tcp").unwrap();
    verify(&served.rsa_cert, SignatureScheme::RSA_PSS_SHA256, b"over tcp", &sig);
    assert!(client.ping().unwrap() < Duration::from_secs(1));
    assert!(
        !rogue_client.wait_connected(Duration::from_millis(300)),
        "client from another CA got in"
    );
    assert!(rogue_client.counters().connect_failures >= 1);

    server.shutdown();
    let t = std::time::Instant::now();
    while client.connected() > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "client did not notice the server going away"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        client.sign(&id, SignatureScheme::RSA_PSS_SHA256, b"x").unwrap_err(),
        SignError::NoKeyServer
    );

    let server = start_tcp_server(&ks_ns, &dir, &m.toml);
    assert!(client.wait_connected(Duration::from_secs(3)), "no reconnect over tcp");
    let sig = client.sign(&id, SignatureScheme::RSA_PKCS1_SHA256, b"again").unwrap();
    verify(&served.rsa_cert, SignatureScheme::RSA_PKCS1_SHA256, b"again", &sig);
    drop(client);
    drop(rogue_client);
    server.shutdown();
}
