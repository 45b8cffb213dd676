//! HTTPS with the private key on a Key Server: the appliance holds only the certificate, `xlb-keyserver` (the
//! real binary, on a Unix socket) signs its handshakes. Killed: new full handshakes fail at once (counted), while
//! resumptions and plain HTTP keep flowing; restarted: full handshakes recover.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use xlb_tests::appliance::Appliance;
use xlb_tests::lab::{wait_until_ok, workspace_bin, Netns, Proc};
use xlb_tests::topology::{TwoArm, TWO_ARM_BASE};
use xlb_tests::traffic::TIMEOUT;

const VIP: &str = "198.18.0.100";
const SERVERS: [&str; 1] = ["198.19.0.2"];

/// `openssl s_client` to the HTTPS VIP sending one request; returns its output.
fn s_client(client: &Netns, extra: &[&str]) -> Result<String> {
    let mut args = vec!["-ign_eof"];
    args.extend_from_slice(extra);
    let request = b"GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n";
    xlb_tests::pki::s_client(client, &format!("{VIP}:443"), &args, request)
}

#[test]
fn https_through_the_key_server_fails_fast_without_it_and_recovers() -> Result<()> {
    let t = TwoArm::new("keyserver", &SERVERS, 1)?;
    let _nginx = xlb_tests::backends::nginx(&t.lab, &t.servers, &SERVERS, 1)?;
    let dir = t.lab.dir().join("pki");
    let keys = t.lab.dir().join("keys");
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(&keys)?;
    xlb_tests::pki::make(&dir, &[("www", "www.example.com")])?;
    // The key goes to the Key Server only: the appliance's config names no key file.
    std::fs::rename(dir.join("www.key"), keys.join("www.key"))?;
    let sock = t.lab.dir().join("keyserver.sock");
    let ks_config = t.lab.dir().join("keyserver.toml");
    std::fs::write(
        &ks_config,
        format!(
            "keys_dir = {:?}\nlisten_unix = {:?}\n\n[[authorize]]\nclient = \"unix\"\nkeys = [\"*\"]\n",
            keys.display().to_string(),
            sock.display().to_string()
        ),
    )?;
    let bin = workspace_bin("xlb-keyserver")?.display().to_string();
    let ks_args = ["--config", &ks_config.display().to_string()].map(str::to_string);
    let start_key_server = || -> Result<Proc> {
        let args: Vec<&str> = ks_args.iter().map(String::as_str).collect();
        let p = t.lab.spawn(&t.lb, &bin, &args)?;
        wait_until_ok(TIMEOUT, "the Key Server socket", || {
            ensure!(sock.exists(), "no socket yet");
            Ok(())
        })?;
        Ok(p)
    };
    let key_server = start_key_server()?;
    let config = format!(
        r#"
{TWO_ARM_BASE}
[l7.key_server]
endpoints = ["unix:{sock}"]
timeout_ms = 500

[[listener]]
name = "tls"
vip = "{VIP}"
port = 443
protocol = "https"
group = "web"

[[listener.tls.cert]]
cert = "{cert}"

[[listener]]
name = "plain"
vip = "{VIP}"
port = 80
protocol = "http"
group = "web"

[[group]]
name = "web"
servers = [{{ addr = "{s1}:8080", weight = 1 }}]
"#,
        sock = sock.display(),
        cert = dir.join("www.pem").display(),
        s1 = SERVERS[0],
    );
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config)?;
    let ca = dir.join("ca.pem").display().to_string();
    let resolve = format!("www.example.com:443:{VIP}");
    let https = |max: &str| {
        t.client.output(
            "curl",
            &[
                "-sS",
                "--max-time",
                max,
                "--cacert",
                &ca,
                "--resolve",
                &resolve,
                "https://www.example.com/",
            ],
        )
    };

    // Full handshakes signed by the Key Server (the client connects in the background: wait for it).
    wait_until_ok(TIMEOUT, "a handshake signed by the Key Server", || {
        let out = https("5")?;
        ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        ensure!(String::from_utf8_lossy(&out.stdout).ends_with("proto=https\n"));
        Ok(())
    })?;
    let sess = t.lab.dir().join("sess.pem").display().to_string();
    let first = s_client(&t.client, &["-servername", "www.example.com", "-sess_out", &sess])?;
    ensure!(first.contains("HTTP/1.1 200 OK"), "{first}");

    // The Key Server dies: a new full handshake fails at once (no waiting for a timeout), a resumption and plain
    // HTTP are served as before.
    key_server.kill();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let failed = https("10")?;
    let took = started.elapsed();
    ensure!(!failed.status.success(), "no signature, no full handshake");
    eprintln!("full handshake without the Key Server failed in {took:?}");
    let resumed = s_client(&t.client, &["-servername", "www.example.com", "-sess_in", &sess])?;
    ensure!(
        resumed.contains("Reused, TLSv1.3") && resumed.contains("HTTP/1.1 200 OK"),
        "{resumed}"
    );
    let plain = t
        .client
        .run("curl", &["-sS", "--max-time", "5", &format!("http://{VIP}/")])?;
    ensure!(plain.ends_with("proto=http\n"), "{plain}");

    // Restarted: full handshakes recover within the client's reconnect backoff.
    let key_server = start_key_server()?;
    wait_until_ok(Duration::from_secs(15), "full handshakes after the restart", || {
        let out = https("5")?;
        ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    })?;

    // The endpoints change live: a second Key Server on another socket, `xlbctl reload`, the first one stopped;
    // full handshakes go to the second.
    let sock2 = t.lab.dir().join("keyserver2.sock");
    let ks2_config = t.lab.dir().join("keyserver2.toml");
    std::fs::write(
        &ks2_config,
        std::fs::read_to_string(&ks_config)?.replace(&sock.display().to_string(), &sock2.display().to_string()),
    )?;
    let _key_server2 = t
        .lab
        .spawn(&t.lb, &bin, &["--config", &ks2_config.display().to_string()])?;
    wait_until_ok(TIMEOUT, "the second Key Server socket", || {
        ensure!(sock2.exists(), "no socket yet");
        Ok(())
    })?;
    let path = xlb.config_path();
    let text = std::fs::read_to_string(path)?;
    std::fs::write(
        path,
        text.replace(&sock.display().to_string(), &sock2.display().to_string()),
    )?;
    let reloaded = xlb.xlbctl(&["reload"])?;
    ensure!(reloaded.contains("re-read"), "{reloaded}");
    key_server.kill();
    wait_until_ok(
        Duration::from_secs(15),
        "full handshakes through the second Key Server",
        || {
            let out = https("5")?;
            ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            Ok(())
        },
    )?;

    let l7 = wait_until_ok(TIMEOUT, "Key Server counters", || {
        let l7 = xlb.stats()?["l7"].clone();
        let n = |k: &str| l7["counts"][k].as_u64().unwrap_or(0);
        ensure!(n("key_server_ok") >= 3, "{l7}");
        ensure!(
            n("key_server_no_key_server") + n("key_server_connection_lost") + n("key_server_timeout") >= 1,
            "{l7}"
        );
        ensure!(
            n("tls_handshake_failed") >= 1 && n("tls_resumed_handshakes") >= 1,
            "{l7}"
        );
        Ok(l7)
    })?;
    eprintln!("L7 counts: {}", l7["counts"]);
    xlb.proc().check_running()?;
    Ok(())
}
