//! `xlb-demo`: builds a netns lab with real backends, runs xlb in it with an embedded default config, and
//! shows what it does with real kernel peers. Everything is removed at the end (also on failure).
//!
//! `xlb-demo [--hold SECONDS]` keeps the lab up that long (at most an hour) before tearing it down, so it can be
//! explored with `ip netns exec`; Ctrl-C (SIGINT) or SIGTERM ends the hold early and still removes the lab.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xlb_tests::appliance::Appliance;
use xlb_tests::lab::wait_until_ok;
use xlb_tests::topology::TwoArm;

const CONFIG: &str = r#"
[node]
name = "demo-lb1"
control_socket = "CONTROL_SOCKET"

[[interface]]
name = "ext0"
queues = [0]
cores = [0]
idle = "adaptive"
addresses = ["198.18.0.10/24"]

[[interface]]
name = "int0"
queues = [0]
cores = [0]
idle = "adaptive"
addresses = ["198.19.0.10/24"]

[[listener]]
name = "web"
vip = "198.18.0.100"
port = 80
protocol = "tcp"
scheduler = "wrr"
forwarding = "fullnat"
group = "web"

[[listener]]
name = "www"
vip = "198.18.0.100"
port = 81
protocol = "http"
scheduler = "rr"
group = "web"

[[listener.rule]]
host = "old.example.com"
redirect = { status = 301, scheme = "https" }

[[listener]]
name = "www-tls"
vip = "198.18.0.100"
port = 443
protocol = "https"
scheduler = "rr"
group = "web"

[listener.tls]
policy = "tls-1-2"

[[listener.tls.cert]]
cert = "CERT_DIR/www.pem"
key = "CERT_DIR/www.key"

[[listener]]
name = "app"
vip = "198.18.0.100"
port = 82
protocol = "http"
scheduler = "rr"
group = "app"
hash = { header = "X-User" }

[[group]]
name = "web"
servers = [{ addr = "198.19.0.2:8080", weight = 1 }, { addr = "198.19.0.3:8080", weight = 1 }, { addr = "198.19.0.4:8080", weight = 2 }]
health_check = { kind = "http", path = "/", interval_ms = 500, timeout_ms = 300, rise = 2, fall = 2 }

[[group]]
name = "app"
servers = [{ addr = "198.19.0.2:8443" }, { addr = "198.19.0.3:8443" }, { addr = "198.19.0.4:8443" }]
health_check = { kind = "tcp", interval_ms = 500, timeout_ms = 300 }

[group.tls]
ca = "CERT_DIR/ca.pem"
server_name = "app.internal"
"#;

const BACKENDS: [&str; 3] = ["198.19.0.2", "198.19.0.3", "198.19.0.4"];

fn step(title: &str) {
    println!("\n=== {title}");
}

fn show(label: &str, text: &str) {
    for line in text.lines() {
        println!("  {label}| {line}");
    }
}

fn demo(hold: Duration) -> Result<()> {
    let t = TwoArm::new("demo", &BACKENDS, 1)?;
    let (lab, client, lb, servers) = (&t.lab, &t.client, &t.lb, &t.servers);
    step("lab: client 198.18.0.1 -> [ext0 | xlb: VIP 198.18.0.100 | int0] -> backends 198.19.0.2-4:8080");
    let backends = t.sinks("http", 8080)?;
    show(
        "servers",
        "three HTTP backends (xlb-bench sink) answering `server=NAME`",
    );

    step("a throw-away CA and a certificate for www.example.com (openssl)");
    let pki = lab.dir().join("pki");
    std::fs::create_dir_all(&pki)?;
    xlb_tests::pki::make(&pki, &[("www", "www.example.com"), ("app", "app.internal")])?;
    step("NGINX on the backends' port 8443 with the certificate for app.internal (HTTPS backends)");
    let _nginx = xlb_tests::backends::nginx_with_tls(
        lab,
        servers,
        &BACKENDS,
        1,
        None,
        Some((&pki.join("app.pem"), &pki.join("app.key"))),
    )?;
    let config = CONFIG.replace("CERT_DIR", &pki.display().to_string());

    step("starting xlb with the embedded config");
    show("config", config.trim());
    let xlb = Appliance::start(lab, lb, "demo-lb1", &config)?;

    step("client: 8 HTTP requests to the VIP, new connection each (wrr 1:1:2)");
    for _ in 0..8 {
        show(
            "curl",
            client.run("curl", &["-s", "-m", "3", "http://198.18.0.100/"])?.trim(),
        );
    }

    step("L7: HTTP terminated by xlb on :81 (its own TCP stack), 4 requests on one kept-alive connection");
    let url = "http://198.18.0.100:81/";
    show(
        "curl",
        client.run("curl", &["-s", "-m", "3", url, url, url, url])?.trim(),
    );
    step("L7: a redirect rule answered by xlb itself (Host: old.example.com)");
    let redirect = client.run("curl", &["-s", "-i", "-m", "3", "-H", "Host: old.example.com", url])?;
    show("curl", redirect.trim());

    step("L7: HTTPS terminated by xlb on :443 (rustls in its own stack), proxied to the same backends");
    let ca = pki.join("ca.pem").display().to_string();
    let https = client.output(
        "curl",
        &[
            "-sS",
            "-v",
            "-m",
            "5",
            "--cacert",
            &ca,
            "--resolve",
            "www.example.com:443:198.18.0.100",
            "https://www.example.com/",
        ],
    )?;
    let verbose = String::from_utf8_lossy(&https.stderr);
    for line in verbose
        .lines()
        .filter(|l| l.contains("SSL connection") || l.contains("ALPN") || l.contains("subject:"))
    {
        show("curl", line);
    }
    show("curl", String::from_utf8_lossy(&https.stdout).trim());

    step("L7: HTTPS to the servers on :82 (group `app` re-encrypts, verified against the lab CA as app.internal)");
    step("     and consistent hashing on X-User: each user stays on one server");
    for user in ["alice", "bob", "carol"] {
        for _ in 0..2 {
            let header = format!("X-User: {user}");
            let got = client.run(
                "curl",
                &["-s", "-m", "3", "-H", &header, "http://198.18.0.100:82/scheme"],
            )?;
            show(user, got.trim());
        }
    }

    step("xlbctl list");
    show("xlbctl", &xlb.xlbctl(&["list"])?);

    step("backend s3 dies: the HTTP health check takes it out (fall 2 x 500 ms)");
    backends[2].kill();
    wait_until_ok(Duration::from_secs(10), "s3 to be marked down", || {
        let list = xlb.xlbctl(&["list"])?;
        anyhow::ensure!(list.contains("DOWN"), "not yet");
        Ok(())
    })?;
    show("xlbctl", &xlb.xlbctl(&["list"])?);
    for _ in 0..4 {
        show(
            "curl",
            client.run("curl", &["-s", "-m", "3", "http://198.18.0.100/"])?.trim(),
        );
    }

    step("the appliance's own presence: ping and ARP for the VIP, RST for a port nobody serves");
    show(
        "client",
        &client.run("ping", &["-c", "2", "-i", "0.2", "-W", "2", "198.18.0.100"])?,
    );
    show("client", &client.ip(&["neigh", "show", "198.18.0.100"])?);
    let out = client.output("curl", &["-sS", "-m", "2", "http://198.18.0.100:22/"])?;
    show("client", String::from_utf8_lossy(&out.stderr).trim());

    step("the kernel's own address on the same link still works (XDP_PASS)");
    show("client", &client.run("ping", &["-c", "1", "-W", "2", "198.18.0.2"])?);

    step("xlbctl stats");
    show("xlbctl", &xlb.xlbctl(&["stats"])?);

    if !hold.is_zero() {
        step(&format!(
            "holding the lab for {} s (namespaces: {} {} {})",
            hold.as_secs(),
            client.name(),
            lb.name(),
            servers.name()
        ));
        println!("  (Ctrl-C ends the hold and removes the lab)");
        hold_until_signalled(hold)?;
    }
    step("stopping xlb (SIGTERM) and removing the lab");
    let status = xlb.terminate().context("stopping xlb")?;
    println!("  xlb exited: {status}");
    Ok(())
}

/// Sleeps for `hold`, or until SIGINT or SIGTERM arrives: the caller then tears the lab down as usual, so
/// interrupting a hold never leaves namespaces or processes behind.
fn hold_until_signalled(hold: Duration) -> Result<()> {
    let signalled = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&signalled)).context("installing a signal handler")?;
    }
    let end = Instant::now() + hold;
    while Instant::now() < end {
        if signalled.load(Ordering::Relaxed) {
            println!("  signal received: ending the hold");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let hold = match args.iter().position(|a| a == "--hold") {
        Some(i) => match args.get(i + 1).and_then(|s| s.parse::<u64>().ok()) {
            Some(s) => Duration::from_secs(s.min(3600)),
            None => {
                eprintln!("usage: xlb-demo [--hold SECONDS]");
                return ExitCode::FAILURE;
            }
        },
        None => Duration::ZERO,
    };
    match demo(hold) {
        Ok(()) => {
            println!("\ndemo finished: lab removed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xlb-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
