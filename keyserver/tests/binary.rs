//! The `xlb-keyserver` binary: --check, serving, SIGHUP reload, SIGKILL + restart.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rustls::SignatureScheme;
use xlb_keyserver::wire::Status;
use xlb_keyserver::{Endpoint, KeyServerClient, SignError};

const BIN: &str = env!("CARGO_BIN_EXE_xlb-keyserver");

fn write_config(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.path().join("keyserver.toml");
    let toml = format!(
        "keys_dir = {:?}\nlisten_unix = {:?}\n{ALLOW_UNIX_ALL}",
        dir.keys(),
        dir.sock()
    );
    std::fs::write(&path, toml).unwrap();
    path
}

struct Server(Child);

impl Server {
    fn start(config: &std::path::Path) -> Self {
        let child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Server(child)
    }
    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, sig) };
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn check_flag_lists_keys_and_fails_on_a_bad_file() {
    let dir = TempDir::new("bin-check");
    write_keys(&dir);
    let cfg = write_config(&dir);
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--check")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listing.lines().count(), 3, "{listing}");
    assert!(
        listing.contains("rsa rsa.pem") && listing.contains("ecdsa-p256 p256.pem"),
        "{listing}"
    );
    std::fs::write(dir.keys().join("bad.pem"), "garbage").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.pem"));
}

#[test]
fn killed_server_fails_fast_and_a_restarted_one_is_found_again() {
    let dir = TempDir::new("bin-kill");
    let served = write_keys(&dir);
    let cfg = write_config(&dir);
    let server = Server::start(&cfg);
    let client = KeyServerClient::new(vec![Endpoint::Unix(dir.sock())], fast_options()).unwrap();
    assert!(client.wait_connected(Duration::from_secs(10)), "binary did not come up");
    let id = xlb_keyserver::cert::certificate_key_id(&served.p256_cert).unwrap();
    let sig = client
        .sign(&id, SignatureScheme::ECDSA_NISTP256_SHA256, b"one")
        .unwrap();
    verify(&served.p256_cert, SignatureScheme::ECDSA_NISTP256_SHA256, b"one", &sig);

    server.signal(libc::SIGKILL);
    drop(server);
    let t = Instant::now();
    while client.connected() > 0 {
        assert!(t.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = Instant::now();
    assert_eq!(
        client
            .sign(&id, SignatureScheme::ECDSA_NISTP256_SHA256, b"x")
            .unwrap_err(),
        SignError::NoKeyServer
    );
    assert!(t.elapsed() < Duration::from_millis(20));

    // The killed server left its socket file behind: the new one must replace it.
    let _server = Server::start(&cfg);
    assert!(
        client.wait_connected(Duration::from_secs(10)),
        "no reconnect to the restarted binary"
    );
    let sig = client
        .sign(&id, SignatureScheme::ECDSA_NISTP256_SHA256, b"two")
        .unwrap();
    verify(&served.p256_cert, SignatureScheme::ECDSA_NISTP256_SHA256, b"two", &sig);
}

#[test]
fn sighup_reloads_the_keys_directory() {
    let dir = TempDir::new("bin-hup");
    let served = write_keys(&dir);
    std::fs::remove_file(dir.keys().join("rsa.pem")).unwrap();
    let cfg = write_config(&dir);
    let server = Server::start(&cfg);
    let client = KeyServerClient::new(vec![Endpoint::Unix(dir.sock())], fast_options()).unwrap();
    assert!(client.wait_connected(Duration::from_secs(10)));
    let rsa = xlb_keyserver::cert::certificate_key_id(&served.rsa_cert).unwrap();
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
    server.signal(libc::SIGHUP);
    let t = Instant::now();
    loop {
        match client.sign(&rsa, SignatureScheme::RSA_PSS_SHA256, b"m") {
            Ok(sig) => {
                verify(&served.rsa_cert, SignatureScheme::RSA_PSS_SHA256, b"m", &sig);
                break;
            }
            Err(e) => assert!(t.elapsed() < Duration::from_secs(5), "key not served after SIGHUP: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM: clean exit, socket file removed.
    server.signal(libc::SIGTERM);
    let t = Instant::now();
    while dir.sock().exists() {
        assert!(t.elapsed() < Duration::from_secs(5), "socket file left after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
}
