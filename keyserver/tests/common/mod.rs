//! Test fixtures: temp dirs, a throwaway PKI (rcgen), a Key Server on a Unix socket.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::SignatureScheme;
use xlb_keyserver::client::{ClientOptions, ClientTls, Endpoint, KeyServerClient};
use xlb_keyserver::server::{self, ServerHandle};

/// RSA-2048, PKCS#1: a test-only key checked in (see tests/data/README.md).
pub const RSA_PKCS1: &str = include_str!("../data/rsa2048-TEST-ONLY.pkcs1.pem");
/// The same RSA key as PKCS#8, for rcgen.
pub const RSA_PKCS8: &str = include_str!("../data/rsa2048-TEST-ONLY.pkcs8.pem");
/// P-256, SEC1 ("EC PRIVATE KEY"): test-only.
pub const P256_SEC1: &str = include_str!("../data/p256-TEST-ONLY.sec1.pem");
/// The same P-256 key as PKCS#8, for rcgen.
pub const P256_PKCS8: &str = include_str!("../data/p256-TEST-ONLY.pkcs8.pem");

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ks-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("keys")).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn keys(&self) -> PathBuf {
        self.0.join("keys")
    }
    pub fn sock(&self) -> PathBuf {
        self.0.join("ks.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub type Ca = CertifiedIssuer<'static, KeyPair>;

/// A self-signed P-256 CA.
pub fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate for `key`, issued by `ca`, with CN `cn` and DNS SAN `cn`.
pub fn leaf(ca: &Ca, cn: &str, key: &KeyPair, client: bool) -> CertificateDer<'static> {
    let mut p = CertificateParams::new(vec![cn.to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    p.signed_by(key, ca).unwrap().der().clone()
}

pub fn key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::try_from(key.serialize_der()).unwrap()
}

pub fn pem_cert(der: &CertificateDer<'_>) -> String {
    use std::fmt::Write;
    let b64 = base64(der.as_ref());
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        let _ = writeln!(s, "{}", std::str::from_utf8(chunk).unwrap());
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

fn base64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Keys served in the standard fixture, with certificates for them.
pub struct Served {
    pub p256_cert: CertificateDer<'static>,
    pub p256_sec1_cert: CertificateDer<'static>,
    pub rsa_cert: CertificateDer<'static>,
    /// The CA that issued the served certificates (as a web PKI would).
    pub web_ca: Ca,
}

/// Writes three keys into `dir/keys` (a fresh P-256 PKCS#8 `p256.pem`, the SEC1 fixture
/// `p256-sec1.pem`, the RSA PKCS#1 fixture `rsa.pem`) and issues certificates for them.
pub fn write_keys(dir: &TempDir) -> Served {
    let web_ca = ca("web ca");
    let p256 = KeyPair::generate().unwrap();
    std::fs::write(dir.keys().join("p256.pem"), p256.serialize_pem()).unwrap();
    std::fs::write(dir.keys().join("p256-sec1.pem"), P256_SEC1).unwrap();
    std::fs::write(dir.keys().join("rsa.pem"), RSA_PKCS1).unwrap();
    let sec1 = KeyPair::from_pem(P256_PKCS8).unwrap();
    let rsa = KeyPair::from_pem(RSA_PKCS8).unwrap();
    Served {
        p256_cert: leaf(&web_ca, "www.test", &p256, false),
        p256_sec1_cert: leaf(&web_ca, "www.test", &sec1, false),
        rsa_cert: leaf(&web_ca, "www.test", &rsa, false),
        web_ca,
    }
}

/// Starts a server on `dir/ks.sock` with `extra` TOML appended (authorize rules, tls...).
pub fn start_server(dir: &TempDir, extra: &str) -> ServerHandle {
    let toml = format!(
        "keys_dir = {:?}\nlisten_unix = {:?}\nsign_threads = 2\nstats_interval_secs = 0\n{extra}",
        dir.keys(),
        dir.sock()
    );
    server::start(xlb_keyserver::config::Config::parse(&toml).unwrap()).unwrap()
}

pub const ALLOW_UNIX_ALL: &str = "[[authorize]]\nclient = \"unix\"\nkeys = [\"*\"]\n";

pub fn fast_options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..ClientOptions::default()
    }
}

/// A connected plain-Unix client.
pub fn unix_client(dir: &TempDir) -> KeyServerClient {
    let c = KeyServerClient::new(vec![Endpoint::Unix(dir.sock())], fast_options()).unwrap();
    assert!(c.wait_connected(Duration::from_secs(5)), "client did not connect");
    c
}

/// Verifies `sig` over `msg` with the certificate's public key under `scheme`.
pub fn verify(cert: &CertificateDer<'_>, scheme: SignatureScheme, msg: &[u8], sig: &[u8]) {
    use ring::signature as s;
    let spki = xlb_keyserver::cert::certificate_spki(cert).unwrap();
    let public = xlb_keyserver::cert::spki_public_key(&spki).unwrap();
    let alg: &dyn s::VerificationAlgorithm = match scheme {
        SignatureScheme::ECDSA_NISTP256_SHA256 => &s::ECDSA_P256_SHA256_ASN1,
        SignatureScheme::RSA_PSS_SHA256 => &s::RSA_PSS_2048_8192_SHA256,
        SignatureScheme::RSA_PSS_SHA512 => &s::RSA_PSS_2048_8192_SHA512,
        SignatureScheme::RSA_PKCS1_SHA256 => &s::RSA_PKCS1_2048_8192_SHA256,
        SignatureScheme::RSA_PKCS1_SHA384 => &s::RSA_PKCS1_2048_8192_SHA384,
        other => panic!("no verifier for {other:?} in the tests"),
    };
    s::UnparsedPublicKey::new(alg, public)
        .verify(msg, sig)
        .unwrap_or_else(|_| panic!("signature under {scheme:?} does not verify"));
}

/// mTLS material for `unix_tls` servers: server identity + client CA, written to `dir`.
pub struct Mtls {
    pub ca: Ca,
    pub toml: String,
}

pub fn mtls(dir: &TempDir) -> Mtls {
    let ca = ca("keyserver ca");
    let server_key = KeyPair::generate().unwrap();
    let server_cert = leaf(&ca, "keyserver.test", &server_key, false);
    std::fs::write(dir.path().join("server.pem"), pem_cert(&server_cert)).unwrap();
    std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), pem_cert(ca.der())).unwrap();
    let p = dir.path();
    let toml = format!(
        "unix_tls = true\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
        p.join("server.pem"),
        p.join("server.key"),
        p.join("ca.pem")
    );
    Mtls { ca, toml }
}

/// Client TLS with a certificate for `cn` issued by `client_ca`, trusting `server_ca`.
pub fn client_tls(client_ca: &Ca, cn: &str, server_ca: &Ca) -> ClientTls {
    let key = KeyPair::generate().unwrap();
    let cert = leaf(client_ca, cn, &key, true);
    ClientTls::from_der(
        vec![cert],
        key_der(&key),
        vec![server_ca.der().clone()],
        "keyserver.test",
    )
    .unwrap()
}
