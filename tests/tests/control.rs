//! Control-plane acceptance: live changes through `xlbctl` and reload while TCP streams run through xlb; the
//! metrics endpoint parsed by a Prometheus text parser; the control API's refusals of malformed, oversized,
//! slow and non-reading clients (each followed by a normal request that must still be answered).
//!
//! Lab as in `l4.rs`: client ── [ext0 | xlb | int0] ── servers 198.19.0.2-.5 (`xlb-bench sink`, names s1-s4).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use xlb_tests::appliance::Appliance;
use xlb_tests::lab::{wait_until_ok, workspace_bin, Proc};
use xlb_tests::topology::TwoArm;
use xlb_tests::traffic::{echo_stream, hellos, in_ns, StreamPace, TIMEOUT};

const VIP: &str = "198.18.0.100";
const SERVERS: [&str; 4] = ["198.19.0.2", "198.19.0.3", "198.19.0.4", "198.19.0.5"];

/// The two-arm lab with a `tcp` sink on port 8080 of every server.
fn setup(name: &str) -> Result<(TwoArm, Vec<Proc>)> {
    let t = TwoArm::new(name, &SERVERS, 1)?;
    let sinks = t.sinks("tcp", 8080)?;
    Ok((t, sinks))
}

fn config(servers: &str, extra_node: &str) -> String {
    format!(
        r#"
[node]
name = "lb1"
control_socket = "CONTROL_SOCKET"
{extra_node}

[[interface]]
name = "ext0"
queues = [0]
cores = [0]
addresses = ["198.18.0.10/24"]

[[interface]]
name = "int0"
queues = [0]
cores = [0]
addresses = ["198.19.0.10/24"]

[[listener]]
name = "web"
vip = "{VIP}"
port = 80
protocol = "tcp"
scheduler = "wrr"
group = "web"

[[group]]
name = "web"
servers = [{servers}]
"#
    )
}

#[test]
fn live_changes_and_reload_keep_every_stream_byte_exact_and_new_flows_follow() -> Result<()> {
    let (t, _sinks) = setup("live")?;
    let initial = r#"{ addr = "198.19.0.2:8080", weight = 1 }, { addr = "198.19.0.3:8080", weight = 1 }"#;
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config(initial, ""))?;
    let target: SocketAddr = format!("{VIP}:80").parse()?;

    // 20 long streams, spread over s1 and s2.
    let client = t.client.clone();
    let streams = std::thread::spawn(move || {
        in_ns(&client, move || {
            let hs: Vec<_> = (0..20)
                .map(|_| {
                    std::thread::spawn(move || {
                        echo_stream(
                            target,
                            StreamPace {
                                duration: Duration::from_secs(10),
                                chunk: 2048,
                                pause: Duration::from_millis(10),
                            },
                        )
                    })
                })
                .collect();
            Ok(hs
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("panicked"))))
                .collect::<Vec<_>>())
        })
    });
    // The connection table shows the 20 established streams, with their servers.
    let conns = wait_until_ok(TIMEOUT, "20 established connections", || {
        let out = xlb.xlbctl(&["conns", "--listener", "web", "--state", "established", "--json"])?;
        let doc: serde_json::Value = serde_json::from_str(&out)?;
        let n = doc["conns"].as_array().map_or(0, |a| a.len());
        ensure!(n == 20, "{n} established connections listed");
        Ok(doc)
    })?;
    ensure!(
        conns["conns"][0]["server"]
            .as_str()
            .is_some_and(|s| s.ends_with(":8080")),
        "{conns}"
    );
    eprintln!("{}", xlb.xlbctl(&["conns", "--limit", "3"])?);

    // Add a server: new flows reach it.
    xlb.xlbctl(&["server", "add", "web", "198.19.0.4:8080", "--weight", "2"])?;
    let n = hellos(&t.client, target, 40)?;
    ensure!(n.iter().any(|s| s == "s3"), "added server gets no flows: {n:?}");
    // Drain s2: no new flows for it.
    xlb.xlbctl(&["server", "drain", "web", "198.19.0.3:8080"])?;
    let n = hellos(&t.client, target, 40)?;
    ensure!(!n.iter().any(|s| s == "s2"), "drained server got new flows: {n:?}");
    // Weights: s1 3, s3 1 → 3:1.
    xlb.xlbctl(&["server", "set", "web", "198.19.0.2:8080", "--weight", "3"])?;
    xlb.xlbctl(&["server", "set", "web", "198.19.0.4:8080", "--weight", "1"])?;
    let n = hellos(&t.client, target, 40)?;
    let s1 = n.iter().filter(|s| *s == "s1").count();
    ensure!(s1 == 30, "weights 3:1 over 40 new flows give 30 to s1, got {s1}: {n:?}");

    // A second listener comes and goes while the first one's streams run.
    xlb.xlbctl(&[
        "listener",
        "add",
        "api",
        "--vip",
        "198.18.0.101",
        "--port",
        "81",
        "--scheduler",
        "rr",
        "--group",
        "web",
    ])?;
    let api: SocketAddr = "198.18.0.101:81".parse()?;
    let n = hellos(&t.client, api, 4)?;
    ensure!(n.len() == 4, "second listener answers");
    xlb.xlbctl(&["listener", "remove", "api"])?;
    let refused = in_ns(&t.client, move || {
        Ok(TcpStream::connect_timeout(&api, Duration::from_secs(2)).is_err())
    })?;
    ensure!(refused, "removed listener still accepts connections");

    // Invalid changes are refused with the field named; the running config is untouched.
    let before = xlb.xlbctl(&["config"])?;
    let err = xlb
        .xlbctl(&[
            "listener",
            "add",
            "bad",
            "--vip",
            "198.18.0.10",
            "--port",
            "80",
            "--group",
            "web",
        ])
        .unwrap_err();
    ensure!(
        format!("{err:#}").contains(".vip"),
        "error does not name the vip: {err:#}"
    );
    let err = xlb.xlbctl(&["server", "add", "nosuch", "198.19.0.5:8080"]).unwrap_err();
    ensure!(format!("{err:#}").contains("no group"), "{err:#}");
    let err = xlb.xlbctl(&["server", "add", "web", "198.20.0.5:8080"]).unwrap_err();
    ensure!(format!("{err:#}").contains("198.20.0.5:8080"), "{err:#}");
    ensure!(
        xlb.xlbctl(&["config"])? == before,
        "a refused change altered the running config"
    );

    // Reload a changed config file: s4 joins, s1 leaves (established flows kept, the default policy).
    let reloaded = r#"{ addr = "198.19.0.3:8080", weight = 1 }, { addr = "198.19.0.5:8080", weight = 1 }"#;
    std::fs::write(
        xlb.config_path(),
        config(reloaded, "").replace("CONTROL_SOCKET", &xlb.socket().display().to_string()),
    )?;
    xlb.xlbctl(&["reload"])?;
    let n = hellos(&t.client, target, 20)?;
    ensure!(
        n.iter().all(|s| s == "s2" || s == "s4"),
        "after reload new flows go to s2 and s4 only: {n:?}"
    );
    // SIGHUP does the same: back to the initial servers.
    std::fs::write(
        xlb.config_path(),
        config(initial, "").replace("CONTROL_SOCKET", &xlb.socket().display().to_string()),
    )?;
    xlb.proc().signal(libc::SIGHUP)?;
    wait_until_ok(TIMEOUT, "SIGHUP reload", || {
        let n = hellos(&t.client, target, 6)?;
        ensure!(n.iter().all(|s| s == "s1" || s == "s2"), "after SIGHUP: {n:?}");
        Ok(())
    })?;

    // Every stream finished byte-exact, whatever happened to its server's weight or membership.
    let results = streams.join().map_err(|_| anyhow::anyhow!("streams panicked"))??;
    let mut bytes = 0;
    for r in results {
        bytes += r?.bytes;
    }
    eprintln!("20 streams, {bytes} bytes, all byte-exact through 9 live changes");
    ensure!(
        xlb.total("drops.no_connection")? == 0,
        "packets of live flows were dropped"
    );
    Ok(())
}

/// The management network: metrics and the token-protected TCP API on the kernel's address of ext0 (it passes
/// the XDP filter), used from the client's namespace with curl and xlbctl.
#[test]
fn management_network_serves_metrics_and_the_api_with_a_token() -> Result<()> {
    let (t, _sinks) = setup("metrics")?;
    let servers = r#"{ addr = "198.19.0.2:8080" }, { addr = "198.19.0.3:8080" }"#;
    let token_file = t.lab.dir().join("api.token");
    std::fs::write(&token_file, "s3cr3t-t0ken-for-the-lab\n")?;
    let node = format!(
        "metrics_address = \"198.18.0.2:9100\"\napi_address = \"198.18.0.2:9180\"\napi_token_file = \"{}\"",
        token_file.display()
    );
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config(servers, &node))?;
    let target: SocketAddr = format!("{VIP}:80").parse()?;
    hellos(&t.client, target, 10)?;
    let text = wait_until_ok(TIMEOUT, "metrics to show 10 connections", || {
        let text = t
            .client
            .run("curl", &["-sS", "-m", "3", "http://198.18.0.2:9100/metrics"])?;
        if !text.contains("xlb_listener_connections_total{") {
            bail!("no listener metrics yet");
        }
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?;
        let conns: f64 = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "xlb_listener_connections_total" && s.labels.get("listener") == Some("web"))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum();
        ensure!(conns == 10.0, "xlb_listener_connections_total = {conns}");
        Ok(text)
    })?;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))?;
    let up: Vec<_> = scrape.samples.iter().filter(|s| s.metric == "xlb_server_up").collect();
    ensure!(up.len() == 2, "one xlb_server_up per server: {up:?}");
    ensure!(
        scrape.samples.iter().any(|s| s.metric == "xlb_drops_total"),
        "drops by reason exported"
    );

    // The TCP API: refused without the token, served with it, writes included.
    let code = |auth: &[&str]| -> Result<String> {
        let mut args = vec!["-sS", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}"];
        args.extend_from_slice(auth);
        args.push("http://198.18.0.2:9180/v1/status");
        t.client.run("curl", &args)
    };
    ensure!(code(&[])? == "401", "no token");
    ensure!(
        code(&["-H", "Authorization: Bearer wrong-token-of-some-length"])? == "401",
        "wrong token"
    );
    ensure!(
        code(&["-H", "Authorization: Bearer s3cr3t-t0ken-for-the-lab"])? == "200",
        "right token"
    );
    let ctl = workspace_bin("xlbctl")?.display().to_string();
    let token = token_file.display().to_string();
    let remote = ["--api", "198.18.0.2:9180", "--token-file", token.as_str()];
    let status = t.client.run(&ctl, &[&remote[..], &["status"]].concat())?;
    ensure!(status.contains("lb1"), "xlbctl status over TCP: {status}");
    t.client.run(
        &ctl,
        &[&remote[..], &["server", "drain", "web", "198.19.0.3:8080"]].concat(),
    )?;
    let weight = xlb.stats()?["l4"]["listeners"][0]["servers"][1]["weight"].clone();
    ensure!(weight == 0, "drained over the TCP API, weight {weight}");
    // And xlb still stops cleanly with both API servers running.
    let status = xlb.terminate()?;
    ensure!(status.success(), "xlb exited with {status}: {}", xlb.proc().stderr());
    Ok(())
}

/// A lab with one xlb (one listener, two servers) for the control API hardening tests.
fn api_lab(name: &str) -> Result<(TwoArm, Vec<Proc>, Appliance)> {
    let (t, sinks) = setup(name)?;
    let servers = r#"{ addr = "198.19.0.2:8080" }, { addr = "198.19.0.3:8080" }"#;
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config(servers, ""))?;
    Ok((t, sinks, xlb))
}

/// Writes `request` as is to the control socket and reads the whole answer: (status, body).
fn raw(socket: &Path, request: &[u8]) -> Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The API still answers a normal request (and the daemon still runs).
fn still_serves(xlb: &Appliance) -> Result<()> {
    xlb.proc().check_running()?;
    let status = xlb.xlbctl(&["status"])?;
    ensure!(status.contains("lb1"), "xlbctl status after the refusal: {status}");
    Ok(())
}

/// The `error` of a JSON refusal.
fn error_of(body: &str) -> Result<String> {
    let doc: serde_json::Value = serde_json::from_str(body)?;
    doc["error"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no error in {body}"))
}

const LISTENER_BODY: &str = r#"{"vip": "198.18.0.120", "port": 80, "group": "web"}"#;

#[test]
fn a_content_length_of_u64_max_is_refused_and_the_api_lives_on() -> Result<()> {
    let (_t, _sinks, xlb) = api_lab("cl-max")?;
    let (status, body) = raw(
        xlb.socket(),
        format!(
            "PUT /v1/listeners/x HTTP/1.1\r\nHost: xlb\r\nContent-Length: 18446744073709551615\r\n\r\n{LISTENER_BODY}"
        )
        .as_bytes(),
    )?;
    ensure!(status == 413, "Content-Length u64::MAX: status {status} {body}");
    ensure!(error_of(&body)?.contains("Content-Length"), "{body}");
    still_serves(&xlb)
}

#[test]
fn a_negative_content_length_is_refused_not_ignored() -> Result<()> {
    let (_t, _sinks, xlb) = api_lab("cl-neg")?;
    let before = xlb.xlbctl(&["config"])?;
    let (status, body) = raw(
        xlb.socket(),
        format!("PUT /v1/listeners/x HTTP/1.1\r\nHost: xlb\r\nContent-Length: -1\r\n\r\n{LISTENER_BODY}").as_bytes(),
    )?;
    ensure!(status == 400, "Content-Length -1: status {status} {body}");
    ensure!(error_of(&body)?.contains("Content-Length"), "{body}");
    ensure!(xlb.xlbctl(&["config"])? == before, "the running config changed");
    still_serves(&xlb)
}

#[test]
fn a_chunked_body_is_refused_with_411() -> Result<()> {
    let (_t, _sinks, xlb) = api_lab("chunked")?;
    let before = xlb.xlbctl(&["config"])?;
    let request = format!(
        "PUT /v1/listeners/x HTTP/1.1\r\nHost: xlb\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{LISTENER_BODY}\r\n0\r\n\r\n",
        LISTENER_BODY.len()
    );
    let (status, body) = raw(xlb.socket(), request.as_bytes())?;
    ensure!(status == 411, "chunked body: status {status} {body}");
    ensure!(error_of(&body)?.contains("Transfer-Encoding"), "{body}");
    ensure!(xlb.xlbctl(&["config"])? == before, "the running config changed");
    still_serves(&xlb)
}

#[test]
fn conflicting_content_lengths_are_refused() -> Result<()> {
    let (_t, _sinks, xlb) = api_lab("cl-dup")?;
    let before = xlb.xlbctl(&["config"])?;
    let request = format!(
        "PUT /v1/listeners/x HTTP/1.1\r\nHost: xlb\r\nContent-Length: 2\r\nContent-Length: {}\r\n\r\n{LISTENER_BODY}",
        LISTENER_BODY.len()
    );
    let (status, body) = raw(xlb.socket(), request.as_bytes())?;
    ensure!(status == 400, "two Content-Lengths: status {status} {body}");
    ensure!(error_of(&body)?.contains("Content-Length given 2 times"), "{body}");
    ensure!(xlb.xlbctl(&["config"])? == before, "the running config changed");
    still_serves(&xlb)
}

#[test]
fn a_body_over_the_limit_is_refused_with_413_unread() -> Result<()> {
    let (_t, _sinks, xlb) = api_lab("big-body")?;
    // The head announces 1 MiB; none of it is sent: the refusal comes from the head alone.
    let (status, body) = raw(
        xlb.socket(),
        b"PUT /v1/listeners/x HTTP/1.1\r\nHost: xlb\r\nContent-Length: 1048576\r\n\r\n",
    )?;
    ensure!(status == 413, "1 MiB body: status {status} {body}");
    ensure!(error_of(&body)?.contains("bytes"), "{body}");
    still_serves(&xlb)
}

#[test]
fn listener_names_outside_the_rule_are_refused() -> Result<()> {
    let (_t, _sinks, xlb) = api_lab("names")?;
    let before = xlb.xlbctl(&["config"])?;
    for name in ["..", "a%00b", "a%2Fb"] {
        let (status, body) = raw(
            xlb.socket(),
            format!(
                "PUT /v1/listeners/{name} HTTP/1.1\r\nHost: xlb\r\nContent-Length: {}\r\n\r\n{LISTENER_BODY}",
                LISTENER_BODY.len()
            )
            .as_bytes(),
        )?;
        ensure!(status == 400, "listener {name:?}: status {status} {body}");
        ensure!(error_of(&body)?.contains("listener.name"), "{name:?}: {body}");
    }
    // xlbctl names the rule too.
    let err = xlb
        .xlbctl(&[
            "listener",
            "add",
            "..",
            "--vip",
            "198.18.0.120",
            "--port",
            "80",
            "--group",
            "web",
        ])
        .unwrap_err();
    ensure!(format!("{err:#}").contains("listener.name"), "{err:#}");
    ensure!(xlb.xlbctl(&["config"])? == before, "the running config changed");
    still_serves(&xlb)
}

#[test]
fn a_client_that_stops_sending_is_cut_off_while_others_are_served() -> Result<()> {
    let (_t, _sinks, xlb) = api_lab("stalled")?;
    let mut stalled = UnixStream::connect(xlb.socket())?;
    stalled.write_all(b"GET /v1/status HTTP/1.1\r\nHo")?;
    // Served while the stalled request is open (its connection has not been answered or closed yet).
    still_serves(&xlb)?;
    stalled.set_nonblocking(true)?;
    let mut byte = [0u8; 1];
    ensure!(
        matches!(stalled.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the stalled connection was closed before the other request was answered"
    );
    // The server gives up on it: the connection ends (EOF, possibly after a 408) within a generous bound.
    stalled.set_nonblocking(false)?;
    stalled.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut rest = Vec::new();
    let ended = stalled.read_to_end(&mut rest);
    ensure!(ended.is_ok(), "the stalled connection is still open: {ended:?}");
    still_serves(&xlb)
}

#[test]
fn a_client_that_does_not_read_its_answer_does_not_block_the_api() -> Result<()> {
    let (t, _sinks) = setup("noread")?;
    // A group of 6000 servers (not used by a listener) makes `GET /v1/config` far larger than the socket buffers,
    // so writing it blocks until the client reads.
    let many: Vec<String> = (2..=201)
        .flat_map(|host| (1000..1030).map(move |port| format!("{{ addr = \"198.19.0.{host}:{port}\" }}")))
        .collect();
    let cfg = format!(
        "{}\n[[group]]\nname = \"many\"\nservers = [{}]\n",
        config(r#"{ addr = "198.19.0.2:8080" }"#, ""),
        many.join(", ")
    );
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &cfg)?;
    let answer_len = xlb.xlbctl(&["config"])?.len();
    let wmem: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_default")?
        .trim()
        .parse()?;
    ensure!(
        answer_len > 2 * wmem,
        "GET /v1/config is {answer_len} bytes: not enough to fill a socket buffer of {wmem}"
    );
    let mut silent = UnixStream::connect(xlb.socket())?;
    silent.write_all(b"GET /v1/config HTTP/1.1\r\nHost: xlb\r\n\r\n")?;
    // The answer is being written to a client that does not read: other requests are answered meanwhile.
    for _ in 0..5 {
        still_serves(&xlb)?;
    }
    let stats = xlb.stats()?;
    ensure!(stats["node"] == "lb1", "{stats}");
    drop(silent);
    still_serves(&xlb)
}

#[test]
fn sigterm_stops_xlb_promptly_while_a_client_trickles() -> Result<()> {
    let (_t, _sinks, xlb) = api_lab("trickle-term")?;
    let request = b"PUT /v1/listeners/slow HTTP/1.1\r\nHost: xlb\r\nContent-Length: 60\r\n\r\n".to_vec();
    let sent = Arc::new(AtomicUsize::new(0));
    let mut trickler = UnixStream::connect(xlb.socket())?;
    trickler.write_all(&request)?;
    let sent2 = sent.clone();
    let total = 60;
    let trickle = std::thread::spawn(move || {
        for _ in 0..total {
            if trickler.write_all(b" ").is_err() {
                break;
            }
            sent2.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    wait_until_ok(TIMEOUT, "the trickler to start", || {
        ensure!(sent.load(Ordering::SeqCst) >= 2, "not yet");
        Ok(())
    })?;
    let status = xlb.terminate()?;
    let trickled = sent.load(Ordering::SeqCst);
    ensure!(status.success(), "xlb exited with {status}: {}", xlb.proc().stderr());
    ensure!(
        trickled < total,
        "xlb exited only after the trickling client had sent its whole body"
    );
    ensure!(!xlb.socket().exists(), "control socket left behind");
    let _ = trickle.join();
    Ok(())
}

#[test]
fn xlbctl_exits_quietly_when_its_reader_goes_away() -> Result<()> {
    let (_t, _sinks, xlb) = api_lab("epipe")?;
    let ctl = workspace_bin("xlbctl")?;
    // `--watch` prints again after `head` has gone: that write meets a closed pipe.
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            "set -o pipefail; \"$0\" --socket \"$1\" stats --json --watch 1 | head -1",
            &ctl.display().to_string(),
            &xlb.socket().display().to_string(),
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "xlbctl | head -1 exited with {}: {stderr}",
        out.status
    );
    ensure!(stderr.is_empty(), "xlbctl printed on stderr: {stderr}");
    ensure!(String::from_utf8_lossy(&out.stdout).trim() == "{", "{out:?}");
    still_serves(&xlb)
}
