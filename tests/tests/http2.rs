//! HTTP/2 acceptance: curl (`--http2-prior-knowledge`, ALPN h2) and h2load in a client namespace, NGINX
//! backends speaking HTTP/1.1, and `xlb` terminating HTTP/2 in its own stack (two-arm lab).

use anyhow::{ensure, Result};
use xlb_tests::appliance::Appliance;
use xlb_tests::lab::wait_until_ok;
use xlb_tests::topology::{TwoArm, TWO_ARM_BASE};
use xlb_tests::traffic::TIMEOUT;

const VIP: &str = "198.18.0.100";
const SERVERS: [&str; 2] = ["198.19.0.2", "198.19.0.3"];

fn config(pki: &std::path::Path) -> String {
    let p = |f: &str| pki.join(f).display().to_string();
    format!(
        r#"
{TWO_ARM_BASE}
[l7]
max_body_bytes = 67108864

[[listener]]
name = "h2c"
vip = "{VIP}"
port = 80
protocol = "http"
scheduler = "rr"
group = "web"

[[listener]]
name = "h2"
vip = "{VIP}"
port = 443
protocol = "https"
scheduler = "rr"
group = "web"

[[listener.tls.cert]]
cert = "{www}"
key = "{www_key}"

[[group]]
name = "web"
servers = [{{ addr = "{s1}:8080", weight = 1 }}, {{ addr = "{s2}:8080", weight = 1 }}]
"#,
        www = p("www.pem"),
        www_key = p("www.key"),
        s1 = SERVERS[0],
        s2 = SERVERS[1],
    )
}

#[test]
fn http2_is_terminated_in_stack_and_mapped_to_http1_upstream() -> Result<()> {
    let t = TwoArm::new("http2", &SERVERS, 1)?;
    let _nginx = xlb_tests::backends::nginx(&t.lab, &t.servers, &SERVERS, 10)?;
    let dir = t.lab.dir().join("pki");
    std::fs::create_dir_all(&dir)?;
    xlb_tests::pki::make(&dir, &[("www", "www.example.com")])?;
    let ca = dir.join("ca.pem").display().to_string();
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config(&dir))?;
    let url = format!("http://{VIP}/");

    // h2c with prior knowledge: HTTP/2 to the client, HTTP/1.1 with the forwarding headers to NGINX. (curl
    // 7.88 cannot reuse a prior-knowledge connection, curl #10634: several requests on one connection are
    // h2load's below.)
    let got = t.client.run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
            "-w",
            "%{http_version}\n",
            &url,
        ],
    )?;
    ensure!(
        got == "s1 xff=198.18.0.1 proto=http\n2\n" || got == "s2 xff=198.18.0.1 proto=http\n2\n",
        "{got:?}"
    );
    // `Upgrade: h2c` (curl --http2 on http://): 101, then the request is answered as stream 1 over HTTP/2; a
    // second URL goes on the same connection as stream 3. With a body the upgrade is ignored: HTTP/1.1.
    let upgrade = t.client.run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "--http2",
            "-w",
            "%{http_version}\n",
            &url,
            &format!("{url}?again"),
        ],
    )?;
    ensure!(upgrade.matches("proto=http\n2\n").count() == 2, "{upgrade:?}");
    let post = t.client.run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "--http2",
            "-d",
            "x=1",
            "-w",
            "%{http_version}\n",
            &url,
        ],
    )?;
    ensure!(post.ends_with("\n1.1\n"), "{post:?}");
    // `Expect: 100-continue` over HTTP/2: an informational HEADERS (:status 100) comes before the final
    // response. (nghttp, not curl: NGINX's `return` may answer before the body arrived, and xlb then ends the
    // stream with RST_STREAM(NO_ERROR) after the response, which curl 7.88 reports as an empty reply.)
    let small = t.lab.dir().join("small.txt");
    std::fs::write(&small, b"x=1")?;
    let expect = t.client.run(
        "nghttp",
        &[
            "-v",
            "-H",
            "expect: 100-continue",
            "-d",
            &small.display().to_string(),
            &url,
        ],
    )?;
    let at = |needle: &str| {
        expect
            .find(needle)
            .ok_or_else(|| anyhow::anyhow!("no {needle:?} in {expect}"))
    };
    ensure!(at(":status: 100")? < at(":status: 200")?, "{expect}");
    // In turn on one connection, and 3 at once.
    let turns = t.client.run("h2load", &["-n", "3", "-c", "1", "-m", "1", &url])?;
    ensure!(turns.contains("3 succeeded, 0 failed, 0 errored"), "h2load: {turns}");
    let at_once = t
        .client
        .run("nghttp", &["-n", &url, &format!("{url}?a"), &format!("{url}?b"), "-s"])?;
    ensure!(
        at_once.matches(" 200 ").count() == 3 || at_once.lines().filter(|l| l.contains("/")).count() >= 3,
        "nghttp: {at_once}"
    );

    // ALPN h2 over TLS.
    let resolve = format!("www.example.com:443:{VIP}");
    let tls = t.client.run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "--http2",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "-w",
            "%{http_version}\n",
            "https://www.example.com/",
        ],
    )?;
    ensure!(tls.ends_with("proto=https\n2\n"), "ALPN h2: {tls:?}");

    // A 10 MiB download and a 20 MiB upload (flow control both ways) byte-exact.
    let out = t.lab.dir().join("got.bin");
    t.client.run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "120",
            "--http2-prior-knowledge",
            "-o",
            &out.display().to_string(),
            &format!("{url}big.bin"),
        ],
    )?;
    ensure!(
        std::fs::read(&out)? == std::fs::read(t.lab.dir().join("nginx/www/big.bin"))?,
        "the download differs from the file"
    );
    let body = t.lab.dir().join("body.bin");
    std::fs::write(&body, vec![b'x'; 20 * 1024 * 1024])?;
    // (NGINX answers /upload before reading the body; xlb then ends the stream with RST_STREAM(NO_ERROR) as
    // RFC 9113 8.1 allows. curl 7.88 reports that as an error, nghttp does not.)
    let up = t
        .client
        .run("nghttp", &["-d", &body.display().to_string(), &format!("{url}upload")])?;
    ensure!(up.trim() == "got 20971520", "upload: {up:?}");

    // h2load: 4 connections, 10 streams each in flight, 2 000 requests, every one answered.
    let load = t
        .client
        .run("h2load", &["-n", "2000", "-c", "4", "-m", "10", "-T", "20", &url])?;
    ensure!(load.contains("2000 succeeded, 0 failed, 0 errored"), "h2load: {load}");
    eprintln!(
        "{}",
        load.lines()
            .filter(|l| l.contains("finished in") || l.starts_with("requests:"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let l7 = wait_until_ok(TIMEOUT, "HTTP/2 counters", || {
        let l7 = xlb.stats()?["l7"].clone();
        let n = |k: &str| l7["counts"][k].as_u64().unwrap_or(0);
        ensure!(n("h2_streams") >= 2000 + 6, "{l7}");
        ensure!(n("h2_connections") >= 9 && n("h2_upgrades") == 1, "{l7}");
        Ok(l7)
    })?;
    let n = |k: &str| l7["counts"][k].as_u64().unwrap_or(0);
    eprintln!("L7 counts: {}", l7["counts"]);
    ensure!(n("upstream_connects") < 100, "kept-alive upstream connections: {l7}");
    ensure!(n("aborted") == 0 && n("h2_bad_response") == 0, "{l7}");
    xlb.proc().check_running()?;
    Ok(())
}

#[test]
fn two_workers_serve_http2_and_tls_with_segments_handed_to_their_owner() -> Result<()> {
    let t = TwoArm::new("h2twoq", &SERVERS, 2)?;
    let _nginx = xlb_tests::backends::nginx(&t.lab, &t.servers, &SERVERS, 1)?;
    let dir = t.lab.dir().join("pki");
    std::fs::create_dir_all(&dir)?;
    xlb_tests::pki::make(&dir, &[("www", "www.example.com")])?;
    let config = config(&dir).replace("queues = [0]\ncores = [0]", "queues = [0, 1]\ncores = [0, 1]");
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config)?;
    // Each worker's handshakes come back to it from the pool (its own wake-up); streams of a connection stay on
    // the connection's worker.
    for url in [format!("http://{VIP}/"), format!("https://{VIP}/")] {
        let load = t
            .client
            .run("h2load", &["-n", "800", "-c", "8", "-m", "4", "-T", "20", &url])?;
        ensure!(
            load.contains("800 succeeded, 0 failed, 0 errored"),
            "h2load {url}: {load}"
        );
    }
    let l7 = wait_until_ok(TIMEOUT, "1600 requests counted", || {
        let l7 = xlb.stats()?["l7"].clone();
        ensure!(l7["counts"]["requests"].as_u64() == Some(1600), "{l7}");
        Ok(l7)
    })?;
    let n = |k: &str| l7["counts"][k].as_u64().unwrap_or(0);
    ensure!(n("handed_off") > 0, "segments reached the other worker's queue: {l7}");
    ensure!(
        n("handoff_full") == 0 && n("tls_full_handshakes") == 8 && n("h2_connections") == 16,
        "{l7}"
    );
    Ok(())
}
