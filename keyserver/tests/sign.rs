//! Key Server over a plain Unix socket: signing, refusals, concurrency, fail-fast, reconnect.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use rustls::sign::SigningKey;
use rustls::SignatureScheme;
use xlb_keyserver::server::CloseReason;
use xlb_keyserver::wire::{Opcode, Status};
use xlb_keyserver::{KeyId, KeyServerClient, RemoteSigningKey, SignError};

fn sign_with(key: &RemoteSigningKey, scheme: SignatureScheme, msg: &[u8]) -> Vec<u8> {
    let signer = key.choose_scheme(&[scheme]).expect("scheme not offered by the key");
    assert_eq!(signer.scheme(), scheme);
    signer.sign(msg).unwrap()
}

#[test]
fn p256_pkcs8_and_sec1_keys_sign_verifiable_signatures() {
    let dir = TempDir::new("p256");
    let served = write_keys(&dir);
    let server = start_server(&dir, ALLOW_UNIX_ALL);
    let client = unix_client(&dir);
    for cert in [&served.p256_cert, &served.p256_sec1_cert] {
        let key = RemoteSigningKey::from_certificate(client.clone(), cert).unwrap();
        assert_eq!(key.algorithm(), rustls::SignatureAlgorithm::ECDSA);
        assert!(key.choose_scheme(&[SignatureScheme::RSA_PSS_SHA256]).is_none());
        let msg = b"TLS 1.3, server CertificateVerify\0transcript hash";
        let sig = sign_with(&key, SignatureScheme::ECDSA_NISTP256_SHA256, msg);
        verify(cert, SignatureScheme::ECDSA_NISTP256_SHA256, msg, &sig);
    }
    assert_eq!(server.stats().get(Opcode::Sign, Status::Ok), 2);
    assert_eq!(client.counters().ok, 2);
    server.shutdown();
}

#[test]
fn rsa2048_pkcs1_key_signs_pss_and_pkcs1_signatures() {
    let dir = TempDir::new("rsa");
    let served = write_keys(&dir);
    let server = start_server(&dir, ALLOW_UNIX_ALL);
    let client = unix_client(&dir);
    let key = RemoteSigningKey::from_certificate(client.clone(), &served.rsa_cert).unwrap();
    assert_eq!(key.algorithm(), rustls::SignatureAlgorithm::RSA);
    // PSS is preferred when both are offered.
    let offered = [SignatureScheme::RSA_PKCS1_SHA256, SignatureScheme::RSA_PSS_SHA256];
    assert_eq!(
        key.choose_scheme(&offered).unwrap().scheme(),
        SignatureScheme::RSA_PSS_SHA256
    );
    for scheme in [
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PSS_SHA512,
        SignatureScheme::RSA_PKCS1_SHA256,
        SignatureScheme::RSA_PKCS1_SHA384,
    ] {
        let msg = format!("message for {scheme:?}");
        let sig = sign_with(&key, scheme, msg.as_bytes());
        assert_eq!(sig.len(), 256);
        verify(&served.rsa_cert, scheme, msg.as_bytes(), &sig);
    }
    // The key id the client derives from the certificate is the one the server lists.
    assert!(client.list_keys().unwrap().contains(&key.key_id()));
    server.shutdown();
}

#[test]
fn unknown_key_and_unsupported_scheme_are_refused_with_their_status() {
    let dir = TempDir::new("unknown");
    let served = write_keys(&dir);
    let server = start_server(&dir, ALLOW_UNIX_ALL);
    let client = unix_client(&dir);
    let err = client
        .sign(&KeyId([0xAB; 32]), SignatureScheme::ECDSA_NISTP256_SHA256, b"m")
        .unwrap_err();
    assert!(
        matches!(
            err,
            SignError::Refused {
                status: Status::UnknownKey,
                ..
            }
        ),
        "{err:?}"
    );
    let p256 = xlb_keyserver::cert::certificate_key_id(&served.p256_cert).unwrap();
    let err = client.sign(&p256, SignatureScheme::RSA_PSS_SHA256, b"m").unwrap_err();
    assert!(
        matches!(
            err,
            SignError::Refused {
                status: Status::UnsupportedScheme,
                ..
            }
        ),
        "{err:?}"
    );
    let err = client
        .sign(&p256, SignatureScheme::ECDSA_NISTP256_SHA256, b"")
        .unwrap_err();
    assert!(
        matches!(
            err,
            SignError::Refused {
                status: Status::BadRequest,
                ..
            }
        ),
        "{err:?}"
    );
    let c = client.counters();
    assert_eq!(c.refused_by_status[Status::UnknownKey as usize], 1);
    assert_eq!(c.refused_by_status[Status::UnsupportedScheme as usize], 1);
    assert_eq!(c.refused(), 3);
    assert_eq!(server.stats().get(Opcode::Sign, Status::UnknownKey), 1);
    assert_eq!(server.stats().get(Opcode::Sign, Status::UnsupportedScheme), 1);
    server.shutdown();
}

#[test]
fn unauthorized_callers_are_refused_and_counted() {
    let dir = TempDir::new("authz");
    let served = write_keys(&dir);
    // Only uid 4242 may use every key; any uid may use rsa.pem alone. The test runs as another uid.
    let me = unsafe { libc::getuid() };
    assert_ne!(me, 4242);
    let rules = "[[authorize]]\nclient = \"unix\"\nuid = 4242\nkeys = [\"*\"]\n\
                 [[authorize]]\nclient = \"unix\"\nkeys = [\"rsa.pem\"]\n";
    let server = start_server(&dir, rules);
    let client = unix_client(&dir);
    let p256 = RemoteSigningKey::from_certificate(client.clone(), &served.p256_cert).unwrap();
    let err = client
        .sign(&p256.key_id(), SignatureScheme::ECDSA_NISTP256_SHA256, b"m")
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
    let rsa = RemoteSigningKey::from_certificate(client.clone(), &served.rsa_cert).unwrap();
    let sig = sign_with(&rsa, SignatureScheme::RSA_PSS_SHA256, b"m");
    verify(&served.rsa_cert, SignatureScheme::RSA_PSS_SHA256, b"m", &sig);
    assert_eq!(client.list_keys().unwrap(), vec![rsa.key_id()]);
    assert_eq!(server.stats().get(Opcode::Sign, Status::NotAuthorized), 1);
    assert!(
        server.render_stats().contains("key{file=p256.pem"),
        "{}",
        server.render_stats()
    );
    assert!(
        server.render_stats().contains("signed=0 refused=1"),
        "{}",
        server.render_stats()
    );
    server.shutdown();
}

#[test]
fn sixty_four_requests_in_flight_from_several_threads_all_answered() {
    let dir = TempDir::new("inflight");
    let served = Arc::new(write_keys(&dir));
    let server = start_server(&dir, ALLOW_UNIX_ALL);
    let client = unix_client(&dir);
    let barrier = Arc::new(Barrier::new(64));
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let (client, served, barrier) = (client.clone(), served.clone(), barrier.clone());
            std::thread::spawn(move || {
                let (cert, scheme) = match i % 3 {
                    0 => (&served.p256_cert, SignatureScheme::ECDSA_NISTP256_SHA256),
                    1 => (&served.p256_sec1_cert, SignatureScheme::ECDSA_NISTP256_SHA256),
                    _ => (&served.rsa_cert, SignatureScheme::RSA_PKCS1_SHA256),
                };
                let key = RemoteSigningKey::from_certificate(client, cert).unwrap();
                let msg = format!("request {i}");
                barrier.wait();
                let sig = sign_with(&key, scheme, msg.as_bytes());
                verify(cert, scheme, msg.as_bytes(), &sig);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a signing thread failed");
    }
    assert_eq!(client.counters().ok, 64);
    assert_eq!(server.stats().get(Opcode::Sign, Status::Ok), 64);
    server.shutdown();
}

#[test]
fn full_signing_queue_answers_overloaded_instead_of_blocking() {
    let dir = TempDir::new("overload");
    let served = Arc::new(write_keys(&dir));
    let server = start_server(&dir, &format!("queue_depth = 1\n{ALLOW_UNIX_ALL}"));
    let client = unix_client(&dir);
    let key_id = xlb_keyserver::cert::certificate_key_id(&served.rsa_cert).unwrap();
    let barrier = Arc::new(Barrier::new(48));
    let threads: Vec<_> = (0..48)
        .map(|_| {
            let (client, barrier) = (client.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..4)
                    .map(|_| client.sign(&key_id, SignatureScheme::RSA_PSS_SHA256, b"m"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let overloaded = results
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(SignError::Refused {
                    status: Status::Overloaded,
                    ..
                })
            )
        })
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok + overloaded, results.len(), "unexpected outcomes: {results:?}");
    assert!(overloaded > 0 && ok > 0, "ok {ok}, overloaded {overloaded}");
    assert_eq!(server.stats().get(Opcode::Sign, Status::Overloaded), overloaded as u64);
    server.shutdown();
}

#[test]
fn server_gone_fails_fast_then_client_reconnects_within_backoff() {
    let dir = TempDir::new("restart");
    let served = write_keys(&dir);
    let server = start_server(&dir, ALLOW_UNIX_ALL);
    let client = unix_client(&dir);
    let key = RemoteSigningKey::from_certificate(client.clone(), &served.p256_cert).unwrap();
    sign_with(&key, SignatureScheme::ECDSA_NISTP256_SHA256, b"before");

    server.shutdown();
    let t = Instant::now();
    while client.connected() > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "client did not notice the server going away"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = Instant::now();
    let err = client
        .sign(&key.key_id(), SignatureScheme::ECDSA_NISTP256_SHA256, b"during")
        .unwrap_err();
    assert_eq!(err, SignError::NoKeyServer);
    assert!(
        t.elapsed() < Duration::from_millis(20),
        "sign took {:?} without a server",
        t.elapsed()
    );
    let signer = key.choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256]).unwrap();
    assert!(signer.sign(b"during").is_err());
    assert_eq!(client.counters().no_key_server, 2);

    // Let a few connects fail, then bring the server back: the client must come back
    // within its backoff cap (400 ms here) plus scheduling slack.
    std::thread::sleep(Duration::from_millis(300));
    assert!(client.counters().connect_failures >= 1);
    let server = start_server(&dir, ALLOW_UNIX_ALL);
    let t = Instant::now();
    assert!(client.wait_connected(Duration::from_secs(2)), "no reconnect");
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "reconnect took {:?}",
        t.elapsed()
    );
    let sig = sign_with(&key, SignatureScheme::ECDSA_NISTP256_SHA256, b"after");
    verify(
        &served.p256_cert,
        SignatureScheme::ECDSA_NISTP256_SHA256,
        b"after",
        &sig,
    );
    assert_eq!(client.counters().connects, 2);
    server.shutdown();
}

#[test]
fn no_endpoint_ever_reachable_fails_fast_from_the_start() {
    let dir = TempDir::new("never");
    let client = KeyServerClient::new(vec![xlb_keyserver::Endpoint::Unix(dir.sock())], fast_options()).unwrap();
    let t = Instant::now();
    assert_eq!(client.ping().unwrap_err(), SignError::NoKeyServer);
    assert!(t.elapsed() < Duration::from_millis(20));
    assert_eq!(client.counters().no_key_server, 1);
}

#[test]
fn second_endpoint_takes_over_when_the_first_is_down() {
    let dir_a = TempDir::new("ep-a");
    let dir_b = TempDir::new("ep-b");
    let served = write_keys(&dir_b);
    let server_b = start_server(&dir_b, ALLOW_UNIX_ALL);
    let endpoints = vec![
        xlb_keyserver::Endpoint::Unix(dir_a.sock()),
        xlb_keyserver::Endpoint::Unix(dir_b.sock()),
    ];
    let client = KeyServerClient::new(endpoints, fast_options()).unwrap();
    assert!(client.wait_connected(Duration::from_secs(5)));
    let key = RemoteSigningKey::from_certificate(client.clone(), &served.p256_cert).unwrap();
    for i in 0..10 {
        let msg = format!("m{i}");
        let sig = sign_with(&key, SignatureScheme::ECDSA_NISTP256_SHA256, msg.as_bytes());
        verify(
            &served.p256_cert,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            msg.as_bytes(),
            &sig,
        );
    }
    assert_eq!(client.connected(), 1);
    server_b.shutdown();
}

#[test]
fn stats_opcode_reports_the_counters() {
    let dir = TempDir::new("stats");
    let served = write_keys(&dir);
    let server = start_server(&dir, &format!("unix_mode = 0o600\n{ALLOW_UNIX_ALL}"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(dir.sock()).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let client = unix_client(&dir);
    let key = RemoteSigningKey::from_certificate(client.clone(), &served.p256_cert).unwrap();
    sign_with(&key, SignatureScheme::ECDSA_NISTP256_SHA256, b"x");
    client.ping().unwrap();
    let text = client.server_stats().unwrap();
    assert!(text.contains("requests{op=sign,status=ok} 1"), "{text}");
    // One ping from us, one the client sends to check each new connection.
    assert!(text.contains("requests{op=ping,status=ok} 2"), "{text}");
    assert!(text.contains("key{file=p256.pem"), "{text}");
    assert!(!text.contains("PRIVATE"), "{text}");
    server.shutdown();
}

#[test]
fn bad_key_files_are_reported_by_name_and_the_others_load() {
    let dir = TempDir::new("badkey");
    write_keys(&dir);
    std::fs::write(
        dir.keys().join("broken.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(dir.keys().join("empty.key"), "").unwrap();
    std::fs::write(dir.keys().join("README.txt"), "not a key").unwrap();
    let (store, errors) = xlb_keyserver::keys::KeyStore::load_dir(&dir.keys(), None).unwrap();
    assert_eq!(store.len(), 3);
    let mut names: Vec<String> = errors
        .iter()
        .map(|e| e.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["broken.pem", "empty.key"]);
    assert!(errors
        .iter()
        .all(|e| e.to_string().contains(&*e.path.to_string_lossy())));
    let err = xlb_keyserver::keys::KeyStore::load_dir(&dir.path().join("nope"), None).unwrap_err();
    assert!(err.to_string().contains("keys_dir"), "{err}");
}

#[test]
fn reload_picks_up_added_and_removed_keys() {
    let dir = TempDir::new("reload");
    let served = write_keys(&dir);
    let server = start_server(&dir, ALLOW_UNIX_ALL);
    let client = unix_client(&dir);
    let rsa = xlb_keyserver::cert::certificate_key_id(&served.rsa_cert).unwrap();
    std::fs::remove_file(dir.keys().join("rsa.pem")).unwrap();
    assert_eq!(server.reload_keys().unwrap(), 2);
    let err = client.sign(&rsa, SignatureScheme::RSA_PSS_SHA256, b"m").unwrap_err();
    assert!(
        matches!(
            err,
            SignError::Refused {
                status: Status::UnknownKey,
                ..
            }
        ),
        "{err:?}"
    );
    std::fs::write(dir.keys().join("rsa.pem"), RSA_PKCS1).unwrap();
    assert_eq!(server.reload_keys().unwrap(), 3);
    assert!(client.sign(&rsa, SignatureScheme::RSA_PSS_SHA256, b"m").is_ok());
    server.shutdown();
}

#[test]
fn malformed_truncated_and_slow_peers_lose_only_their_own_connection() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let dir = TempDir::new("badpeer");
    let served = write_keys(&dir);
    let server = start_server(&dir, &format!("frame_timeout_secs = 1\n{ALLOW_UNIX_ALL}"));
    let client = unix_client(&dir);
    let key = RemoteSigningKey::from_certificate(client.clone(), &served.p256_cert).unwrap();

    // Garbage: closed by the server.
    let mut bad = UnixStream::connect(dir.sock()).unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        bad.read(&mut [0u8; 16]).unwrap_or(0),
        0,
        "server kept a garbage connection open"
    );

    // Oversized length: closed without waiting for the payload.
    let mut big = UnixStream::connect(dir.sock()).unwrap();
    let mut frame = xlb_keyserver::wire::encode(&xlb_keyserver::wire::Request {
        opcode: Opcode::Sign,
        id: 1,
        key_id: key.key_id(),
        scheme: 0x0403,
        payload: vec![],
    })
    .unwrap();
    frame[46..50].copy_from_slice(&u32::MAX.to_be_bytes());
    big.write_all(&frame).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(big.read(&mut [0u8; 16]).unwrap_or(0), 0);

    // Truncated: half a header, then gone.
    let mut cut = UnixStream::connect(dir.sock()).unwrap();
    cut.write_all(&frame[..20]).unwrap();
    drop(cut);

    // Slow: half a header, then silence: closed after frame_timeout.
    let mut slow = UnixStream::connect(dir.sock()).unwrap();
    slow.write_all(&frame[..20]).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let t = Instant::now();
    assert_eq!(slow.read(&mut [0u8; 16]).unwrap_or(0), 0);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "slow client kept for {:?}",
        t.elapsed()
    );

    // The well-behaved client was never disturbed.
    let sig = sign_with(&key, SignatureScheme::ECDSA_NISTP256_SHA256, b"still here");
    verify(
        &served.p256_cert,
        SignatureScheme::ECDSA_NISTP256_SHA256,
        b"still here",
        &sig,
    );
    // Counted when the connection thread has wound down, just after the socket closed.
    let t = Instant::now();
    while server.stats().closed(CloseReason::Truncated) + server.stats().closed(CloseReason::SlowClient) < 2
        && t.elapsed() < Duration::from_secs(2)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.stats().closed(CloseReason::Malformed), 2);
    assert_eq!(server.stats().closed(CloseReason::Truncated), 1);
    assert_eq!(server.stats().closed(CloseReason::SlowClient), 1);
    server.shutdown();
}

#[test]
fn connections_beyond_max_connections_are_refused_and_counted() {
    use std::io::Read;
    let dir = TempDir::new("maxconn");
    write_keys(&dir);
    let server = start_server(&dir, &format!("max_connections = 1\n{ALLOW_UNIX_ALL}"));
    let client = unix_client(&dir);
    let mut extra = std::os::unix::net::UnixStream::connect(dir.sock()).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        extra.read(&mut [0u8; 8]).unwrap_or(0),
        0,
        "connection over the limit was served"
    );
    assert_eq!(server.stats().closed(CloseReason::TooManyConnections), 1);
    client.ping().unwrap();
    server.shutdown();
}

#[test]
fn overloaded_answers_are_retried_on_another_endpoint() {
    let dir_a = TempDir::new("retry-a");
    let dir_b = TempDir::new("retry-b");
    let served = Arc::new(write_keys(&dir_a));
    for f in ["p256.pem", "p256-sec1.pem", "rsa.pem"] {
        std::fs::copy(dir_a.keys().join(f), dir_b.keys().join(f)).unwrap();
    }
    let tiny = start_server(&dir_a, &format!("queue_depth = 1\n{ALLOW_UNIX_ALL}"));
    let big = start_server(&dir_b, ALLOW_UNIX_ALL);
    let endpoints = vec![
        xlb_keyserver::Endpoint::Unix(dir_a.sock()),
        xlb_keyserver::Endpoint::Unix(dir_b.sock()),
    ];
    let client = KeyServerClient::new(endpoints, fast_options()).unwrap();
    let t = Instant::now();
    while client.connected() < 2 {
        assert!(t.elapsed() < Duration::from_secs(5), "both endpoints should connect");
        std::thread::sleep(Duration::from_millis(5));
    }
    let key_id = xlb_keyserver::cert::certificate_key_id(&served.rsa_cert).unwrap();
    let barrier = Arc::new(Barrier::new(48));
    let threads: Vec<_> = (0..48)
        .map(|_| {
            let (client, barrier) = (client.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..4)
                    .map(|_| client.sign(&key_id, SignatureScheme::RSA_PSS_SHA256, b"m"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(
        results.iter().all(|r| r.is_ok()),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    let c = client.counters();
    let overloaded = tiny.stats().get(Opcode::Sign, Status::Overloaded);
    assert!(
        overloaded > 0,
        "the small server never overloaded: the test proves nothing"
    );
    assert_eq!(c.retried, overloaded);
    assert_eq!(c.ok, 192);
    tiny.shutdown();
    big.shutdown();
}
