//! Signs/s through the Key Server over a Unix socket, with the test-only fixture keys.
//!
//! `cargo run --release -p xlb-keyserver --example sign_bench -- [seconds] [client threads] [sign threads]`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::SignatureScheme;
use xlb_keyserver::client::{ClientOptions, Endpoint, KeyServerClient};
use xlb_keyserver::config::Config;

fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let secs = args.first().copied().unwrap_or(3);
    let threads = args.get(1).copied().unwrap_or(16) as usize;
    let sign_threads = args.get(2).copied().unwrap_or(2);
    let dir = std::env::temp_dir().join(format!("ks-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("keys"))?;
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    std::fs::copy(format!("{data}/p256-TEST-ONLY.sec1.pem"), dir.join("keys/p256.pem"))?;
    std::fs::copy(format!("{data}/rsa2048-TEST-ONLY.pkcs1.pem"), dir.join("keys/rsa.pem"))?;
    let sock = dir.join("ks.sock");
    let cfg = Config::parse(&format!(
        "keys_dir = {:?}\nlisten_unix = {sock:?}\nsign_threads = {sign_threads}\nstats_interval_secs = 0\n\
         [[authorize]]\nclient = \"unix\"\nkeys = [\"*\"]\n",
        dir.join("keys")
    ))?;
    let keys = xlb_keyserver::keys::KeyStore::load_dir(&cfg.keys_dir, None)?
        .0
        .entries();
    let server = xlb_keyserver::server::start(cfg)?;
    let client = KeyServerClient::new(vec![Endpoint::Unix(sock)], ClientOptions::default())?;
    anyhow::ensure!(
        client.wait_connected(Duration::from_secs(5)),
        "bench client did not connect"
    );
    println!("{threads} client threads, {sign_threads} signing threads, {secs} s per key, one unix connection");
    for key in keys {
        let scheme = match key.kind {
            xlb_keyserver::cert::KeyKind::Rsa => SignatureScheme::RSA_PSS_SHA256,
            _ => SignatureScheme::ECDSA_NISTP256_SHA256,
        };
        // Latency, one request at a time.
        let mut lat = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            client
                .sign(&key.id, scheme, &[7u8; 48])
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            lat.push(t.elapsed());
        }
        lat.sort();
        // Throughput, many in flight.
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (client, stop, done, id) = (client.clone(), stop.clone(), done.clone(), key.id);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if client.sign(&id, scheme, &[7u8; 48]).is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            let _ = w.join();
        }
        let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
        println!(
            "{:<11} {:?}: {:>8.0} signs/s; one-at-a-time latency p50 {:?} p99 {:?}",
            key.kind.name(),
            scheme,
            rate,
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100]
        );
    }
    let c = client.counters();
    println!("client counters: {c:?}");
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
