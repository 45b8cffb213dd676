//! L7 acceptance: curl in a client namespace, NGINX backends, and `xlb` terminating HTTP in its own stack between
//! them (two-arm lab, see `xlb_tests::topology`).

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use xlb_tests::appliance::Appliance;
use xlb_tests::lab::{wait_until_ok, Lab, Netns, Proc};
use xlb_tests::topology::{TwoArm, TWO_ARM_BASE};
use xlb_tests::traffic::TIMEOUT;

const VIP: &str = "198.18.0.100";
const SERVERS: [&str; 3] = ["198.19.0.2", "198.19.0.3", "198.19.0.4"];

/// NGINX on every backend address, port 8080, with a 100 MiB `/big.bin`.
fn nginx(lab: &Lab, ns: &Netns) -> Result<Proc> {
    xlb_tests::backends::nginx(lab, ns, &SERVERS, 100)
}

fn config() -> String {
    let servers = |ips: &[&str], port: u16| {
        ips.iter()
            .map(|ip| format!("{{ addr = \"{ip}:{port}\", weight = 1 }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"
{TWO_ARM_BASE}
[datapath]
umem_frames = 8192
ring_size = 1024

[l7]
max_body_bytes = 134217728
client_header_timeout_s = 2

[[listener]]
name = "web"
vip = "{VIP}"
port = 80
protocol = "http"
scheduler = "rr"
group = "web"

[[listener.rule]]
host = "api.example.com"
group = "api"

[[listener.rule]]
host = "old.example.com"
redirect = {{ status = 301, scheme = "https" }}

[[listener]]
name = "dead"
vip = "{VIP}"
port = 81
protocol = "http"
group = "dead"

[[listener]]
name = "mixed"
vip = "{VIP}"
port = 82
protocol = "http"
scheduler = "rr"
group = "mixed"

[[listener]]
name = "sticky"
vip = "{VIP}"
port = 83
protocol = "http"
scheduler = "rr"
group = "web"
sticky = {{ mode = "insert", cookie = "XLBSRV", timeout_s = 600 }}

[[listener]]
name = "rewrite"
vip = "{VIP}"
port = 84
protocol = "http"
scheduler = "rr"
group = "web"
sticky = {{ mode = "rewrite", cookie = "JSESSIONID" }}

[[listener]]
name = "hashed"
vip = "{VIP}"
port = 86
protocol = "http"
scheduler = "rr"
group = "web"
hash = {{ header = "X-User" }}

[[listener]]
name = "bad"
vip = "{VIP}"
port = 85
protocol = "http"
group = "bad"

[[group]]
name = "bad"
servers = [{{ addr = "{s3}:9090", weight = 1 }}]

[[group]]
name = "mixed"
servers = [{{ addr = "{s1}:9", weight = 1 }}, {{ addr = "{s2}:8080", weight = 1 }}]

[[group]]
name = "web"
servers = [{web}]

[[group]]
name = "api"
servers = [{api}]

[[group]]
name = "dead"
servers = [{dead}]
"#,
        web = servers(&SERVERS, 8080),
        api = servers(&SERVERS[2..], 8080),
        dead = servers(&SERVERS[..1], 9),
        s1 = SERVERS[0],
        s2 = SERVERS[1],
        s3 = SERVERS[2],
    )
}

/// curl in the client namespace; returns (status line + body) as curl wrote them.
fn curl(client: &Netns, args: &[&str]) -> Result<String> {
    let mut all = vec!["-sS", "--max-time", "10"];
    all.extend_from_slice(args);
    client.run("curl", &all)
}

fn sha256(path: &Path) -> Result<String> {
    let out = std::process::Command::new("sha256sum").arg(path).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string())
}

#[test]
fn http_is_terminated_in_stack_and_proxied_to_nginx() -> Result<()> {
    let t = TwoArm::new("l7", &SERVERS, 1)?;
    let _nginx = nginx(&t.lab, &t.servers)?;
    let access_log = t.lab.dir().join("access.log");
    let config = config().replace("[l7]\n", &format!("[l7]\naccess_log = \"{}\"\n", access_log.display()));
    let script = t.lab.dir().join("bad_server.py");
    std::fs::write(&script, BAD_SERVER)?;
    let _bad = t.lab.spawn(
        &t.servers,
        "python3",
        &[&script.display().to_string(), SERVERS[2], "9090"],
    )?;
    t.servers.wait_tcp_listen(9090, TIMEOUT)?;
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config)?;
    let url = format!("http://{VIP}/");

    // Three requests on one kept-alive client connection, with the forwarding headers. Each request is
    // scheduled on its own (rr) over kept-alive upstream connections, as NGINX's upstream keepalive does.
    let three = curl(&t.client, &[&url, &url, &url])?;
    let lines: Vec<&str> = three.lines().collect();
    ensure!(lines.len() == 3, "three answers: {three:?}");
    ensure!(
        lines.iter().all(|l| l.ends_with(" xff=198.18.0.1 proto=http")),
        "{three:?}"
    );

    // New connections are spread by the scheduler (rr over the three servers).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..9 {
        let answer = curl(&t.client, &[&url])?;
        seen.insert(answer.split_whitespace().next().unwrap_or("").to_string());
    }
    ensure!(seen.len() == 3, "every server answered some of 9 connections: {seen:?}");

    // A 100 MiB download streams through byte-exact; a 100 MiB upload reaches the server whole.
    let out = t.lab.dir().join("got.bin");
    let started = std::time::Instant::now();
    // Bounded generously: a debug build moves some MB/s.
    curl(
        &t.client,
        &[
            "--max-time",
            "240",
            "-o",
            &out.display().to_string(),
            &format!("{url}big.bin"),
        ],
    )?;
    eprintln!("100 MiB download through xlb: {:?}", started.elapsed());
    let want = sha256(&t.lab.dir().join("nginx/www/big.bin"))?;
    ensure!(sha256(&out)? == want, "the download differs from the file");
    let body = t.lab.dir().join("body.bin");
    std::fs::write(&body, vec![b'x'; 100 * 1024 * 1024])?;
    let started = std::time::Instant::now();
    let up = curl(
        &t.client,
        &[
            "--max-time",
            "240",
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("{url}upload"),
        ],
    )?;
    ensure!(up.trim() == "got 104857600", "upload: {up:?}");
    eprintln!("100 MiB upload through xlb: {:?}", started.elapsed());
    std::fs::write(&body, vec![b'x'; 129 * 1024 * 1024])?;
    let big_up = curl(
        &t.client,
        &[
            "-i",
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("{url}upload"),
        ],
    )?;
    ensure!(
        big_up.starts_with("HTTP/1.1 413"),
        "beyond l7.max_body_bytes: {big_up:?}"
    );

    // Hostile requests get a clear answer and never reach a server: a smuggling attempt (two Content-Lengths)
    // 400, a head beyond l7.max_header_bytes 431.
    let smuggle = t.client.run_input(
        "nc",
        &["-q", "2", "-w", "5", VIP, "80"],
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
    )?;
    ensure!(smuggle.starts_with("HTTP/1.1 400 "), "{smuggle:?}");
    let huge = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(40_000));
    let too_big = t
        .client
        .run_input("nc", &["-q", "2", "-w", "5", VIP, "80"], huge.as_bytes())?;
    ensure!(too_big.starts_with("HTTP/1.1 431 "), "{too_big:?}");

    // A slow client (slowloris) gets 408 after l7.client_header_timeout_s (2 s here).
    let target: std::net::SocketAddr = format!("{VIP}:80").parse()?;
    let slow = xlb_tests::traffic::in_ns(&t.client, move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&target, TIMEOUT)?;
        s.set_read_timeout(Some(Duration::from_secs(8)))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")?;
        let mut got = String::new();
        s.read_to_string(&mut got)?;
        Ok(got)
    })?;
    ensure!(slow.starts_with("HTTP/1.1 408 "), "{slow:?}");

    // A server that dies mid-response: the client's transfer ends with an error at once, never a hang; one
    // that resets before answering: 502.
    let partial = t.client.output(
        "curl",
        &["-sS", "--max-time", "10", &format!("http://{VIP}:85/partial")],
    )?;
    let err = String::from_utf8_lossy(&partial.stderr);
    ensure!(
        !partial.status.success() && !err.contains("timed out"),
        "an error, not a timeout: {err}"
    );
    let reset = curl(&t.client, &["-i", &format!("http://{VIP}:85/reset")])?;
    ensure!(reset.starts_with("HTTP/1.1 502 "), "{reset:?}");

    // Rules: by host to another group, and a redirect answered by xlb itself.
    for _ in 0..3 {
        let api = curl(&t.client, &["-H", "Host: api.example.com", &url])?;
        ensure!(
            api.starts_with("s3 "),
            "api.example.com goes to the api group (s3 only): {api:?}"
        );
    }
    let redirect = curl(
        &t.client,
        &["-i", "-H", "Host: old.example.com", &format!("{url}a?b=1")],
    )?;
    ensure!(redirect.starts_with("HTTP/1.1 301"), "{redirect:?}");
    ensure!(
        redirect.contains("Location: https://old.example.com/a?b=1"),
        "{redirect:?}"
    );

    // A server that refuses connections: a clear 502, not a hang or a reset.
    let dead = curl(&t.client, &["-i", &format!("http://{VIP}:81/")])?;
    ensure!(dead.starts_with("HTTP/1.1 502"), "{dead:?}");
    // A group where one server refuses: GETs that meet it are sent to the other (no health check needed).
    for _ in 0..4 {
        let answer = curl(&t.client, &[&format!("http://{VIP}:82/")])?;
        ensure!(answer.starts_with("s2 "), "{answer:?}");
    }

    // Sticky sessions (insert): the first answer sets a cookie naming the server; requests on new connections
    // that carry it stay on that server although the scheduler is rr.
    let jar = t.lab.dir().join("cookies.txt").display().to_string();
    let sticky_url = format!("http://{VIP}:83/");
    let first = curl(&t.client, &["-c", &jar, &sticky_url])?;
    let server = first.split_whitespace().next().unwrap_or("").to_string();
    let cookies = std::fs::read_to_string(&jar)?;
    ensure!(cookies.contains("XLBSRV"), "no sticky cookie set: {cookies:?}");
    for _ in 0..100 {
        let again = curl(&t.client, &["-b", &jar, &sticky_url])?;
        ensure!(
            again.starts_with(&format!("{server} ")),
            "sticky to {server}: {again:?}"
        );
    }

    // Sticky sessions (rewrite): the server's own session cookie comes back prefixed with xlb's token; with it
    // a client stays on that server, and the server sees its own value again.
    let jar = t.lab.dir().join("cookies-rewrite.txt").display().to_string();
    let sess_url = format!("http://{VIP}:84/sess");
    let first = curl(&t.client, &["-c", &jar, &sess_url])?;
    let server = first.split_whitespace().next().unwrap_or("").to_string();
    let cookies = std::fs::read_to_string(&jar)?;
    let n = server.trim_start_matches('s');
    ensure!(
        cookies.contains("JSESSIONID")
            && cookies.contains(&format!(".abc{n}"))
            && !cookies.contains(&format!("\tabc{n}")),
        "the server's cookie, prefixed: {cookies:?}"
    );
    for _ in 0..100 {
        let again = curl(&t.client, &["-b", &jar, &sess_url])?;
        ensure!(
            again.trim() == format!("{server} cookie=abc{n}"),
            "sticky to {server}, its own cookie value: {again:?}"
        );
    }

    // What the operator sees: requests, upstream reuse and the refusals, named. Counters are published every
    // 100 ms: wait for the last answers to be counted.
    let l7 = wait_until_ok(TIMEOUT, "L7 counters", || {
        let l7 = xlb.stats()?["l7"].clone();
        let n = |k: &str| l7["counts"][k].as_u64().unwrap_or(0);
        ensure!(
            n("requests") == 224,
            "3 + 9 + download + upload + partial + 3 api + 4 mixed + 101 insert + 101 rewrite: {l7}"
        );
        ensure!(
            n("local_answers") == 7,
            "400, 431, 408, redirect, 413 and two 502s: {l7}"
        );
        ensure!(n("client_refused") == 3, "400, 431 and 413: {l7}");
        ensure!(
            n("timeouts") == 1 && n("aborted") == 1 && n("upstream_reset") == 2,
            "408; partial; {l7}"
        );
        ensure!(
            n("responses_3xx") == 1 && n("responses_4xx") == 4 && n("responses_5xx") == 2,
            "{l7}"
        );
        // The dead group's request tried its one server MAX_CONNECT_ATTEMPTS (3) times; the mixed group's
        // requests that met the refusing server were sent to the other one.
        let (failed, retries) = (n("upstream_connect_failed"), n("retries"));
        ensure!(failed >= 4 && failed == retries + 1, "{l7}");
        Ok(l7)
    })?;
    ensure!(l7["sessions"].as_u64().is_some(), "{l7}");
    // The access log: one line per answered request, with the server that answered or `xlb`.
    let log = wait_until_ok(TIMEOUT, "224 + 7 access-log lines", || {
        let log = std::fs::read_to_string(&access_log)?;
        ensure!(log.lines().count() == 231, "{log}");
        Ok(log)
    })?;
    ensure!(
        log.lines()
            .any(|l| l.contains(" web \"GET /big.bin\" 198.18.0.100 200 198.19.0.") && l.ends_with(" upstream")),
        "{log}"
    );
    ensure!(
        log.lines()
            .any(|l| l.contains("\"GET /a?b=1\" old.example.com 301 - ") && l.ends_with(" xlb")),
        "{log}"
    );
    let text = xlb.xlbctl(&["stats"]).context("xlbctl stats")?;
    ensure!(text.contains("l7: ") && text.contains("upstream reuse"), "{text}");

    // Consistent hashing on a header (after the counts above): each user stays on one server over new
    // connections although the scheduler is rr; users spread over the servers; on one keep-alive connection
    // alternating users still reach their own servers.
    let hashed = format!("http://{VIP}:86/");
    let mut home = std::collections::BTreeMap::new();
    for user in 0..12 {
        let header = format!("X-User: user{user}");
        let first = curl(&t.client, &["-H", &header, &hashed])?;
        let server = first.split_whitespace().next().unwrap_or("").to_string();
        for _ in 0..8 {
            let again = curl(&t.client, &["-H", &header, &hashed])?;
            ensure!(
                again.starts_with(&format!("{server} ")),
                "user{user} on {server}: {again:?}"
            );
        }
        home.insert(user, server);
    }
    let spread: std::collections::BTreeSet<_> = home.values().collect();
    ensure!(spread.len() >= 2, "12 users over 3 servers: {home:?}");
    let (a, b) = (
        0,
        (1..12)
            .find(|u| home[u] != home[&0])
            .context("two users on different servers")?,
    );
    let mut args = Vec::new();
    for i in 0..10 {
        if i > 0 {
            args.push("--next".to_string());
        }
        let user = if i % 2 == 0 { a } else { b };
        args.extend(["-sS".into(), "-H".into(), format!("X-User: user{user}"), hashed.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let alternating = t.client.run("curl", &args)?;
    let got: Vec<&str> = alternating
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let want: Vec<&str> = (0..10)
        .map(|i| home[if i % 2 == 0 { &a } else { &b }].as_str())
        .collect();
    ensure!(got == want, "one connection, alternating users: {alternating}");

    // Stopping xlb resets the connections it terminated: NGINX keeps none of its idle upstream connections
    // open (it would for its keepalive_timeout, 75 s, and the next xlb could meet one on the same tuple).
    let held = || -> Result<usize> {
        let out = t
            .servers
            .run("ss", &["-Htn", "state", "established", "dst", "198.19.0.10"])?;
        Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
    };
    ensure!(
        held()? > 0,
        "NGINX holds no idle upstream connection of xlb while it runs"
    );
    ensure!(xlb.terminate()?.success(), "xlb exits cleanly");
    wait_until_ok(TIMEOUT, "NGINX lets go of xlb's connections", || {
        let n = held()?;
        ensure!(n == 0, "{n} connections from xlb still open on the servers");
        Ok(())
    })?;
    Ok(())
}

/// A server that fails mid-way (Python, standard library): `/partial` sends half a response then resets the
/// connection, `/reset` resets it before answering.
const BAD_SERVER: &str = r#"
import socket, struct, sys, threading
def serve(c):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(4096)
        if not d:
            return
        buf += d
    if buf.startswith(b"GET /partial"):
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A WebSocket-like echo server (Python, standard library): answers an upgrade request with 101, then echoes.
/// With a certificate and key as third and fourth arguments, it speaks TLS.
const UPGRADE_ECHO: &str = r#"
import socket, ssl, sys, threading
def serve(c):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(4096)
        if not d:
            return
        buf += d
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    rest = buf.split(b"\r\n\r\n", 1)[1]
    if rest:
        c.sendall(rest)
    while True:
        d = c.recv(4096)
        if not d:
            break
        c.sendall(d)
    c.close()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
if len(sys.argv) > 4:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    s = ctx.wrap_socket(s, server_side=True)
while True:
    try:
        c, _ = s.accept()
    except (ssl.SSLError, OSError):
        continue
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

#[test]
fn websocket_upgrades_are_tunnelled_both_ways() -> Result<()> {
    let t = TwoArm::new("l7ws", &SERVERS, 1)?;
    let script = t.lab.dir().join("upgrade_echo.py");
    std::fs::write(&script, UPGRADE_ECHO)?;
    let _echo = t.lab.spawn(
        &t.servers,
        "python3",
        &[&script.display().to_string(), SERVERS[0], "8080"],
    )?;
    t.servers.wait_tcp_listen(8080, TIMEOUT)?;
    let config = config().replace(
        &web_servers(),
        &format!("servers = [{{ addr = \"{}:8080\", weight = 1 }}]", SERVERS[0]),
    );
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config)?;
    let echoed = echo_through_tunnel(&t.client)?;
    ensure!(
        echoed.iter().all(|ok| *ok),
        "every message echoed through the tunnel: {echoed:?}"
    );
    let l7 = wait_until_ok(TIMEOUT, "the tunnel counted", || {
        let l7 = xlb.stats()?["l7"].clone();
        ensure!(l7["counts"]["tunnels"].as_u64() == Some(1), "{l7}");
        Ok(l7)
    })?;
    ensure!(l7["counts"]["responses_1xx"].as_u64() == Some(1), "{l7}");
    Ok(())
}

/// The `servers = [...]` line of the `web` group in [`config`].
fn web_servers() -> String {
    format!(
        "servers = [{}]",
        SERVERS
            .iter()
            .map(|ip| format!("{{ addr = \"{ip}:8080\", weight = 1 }}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A WebSocket upgrade to the VIP's port 80 from `client`, then 50 messages of growing size; whether each came
/// back unchanged.
fn echo_through_tunnel(client: &Netns) -> Result<Vec<bool>> {
    use std::io::{Read, Write};
    let target: std::net::SocketAddr = format!("{VIP}:80").parse()?;
    xlb_tests::traffic::in_ns(client, move || {
        let mut s = std::net::TcpStream::connect_timeout(&target, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: www.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            ensure!(s.read(&mut byte)? == 1, "closed during the 101: {head:?}");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        ensure!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut echoed = Vec::new();
        for i in 0..50 {
            let msg = format!("frame {i} {}\n", "x".repeat(i * 20));
            s.write_all(msg.as_bytes())?;
            let mut got = vec![0u8; msg.len()];
            s.read_exact(&mut got)?;
            echoed.push(String::from_utf8_lossy(&got).into_owned() == msg);
        }
        Ok(echoed)
    })
}

#[test]
fn websocket_upgrades_are_tunnelled_to_an_https_server() -> Result<()> {
    let t = TwoArm::new("l7wss", &SERVERS, 1)?;
    let pki = t.lab.dir().join("pki");
    std::fs::create_dir_all(&pki)?;
    xlb_tests::pki::make(&pki, &[("echo", "echo.internal")])?;
    let script = t.lab.dir().join("upgrade_echo.py");
    std::fs::write(&script, UPGRADE_ECHO)?;
    let (cert, key) = (pki.join("echo.pem"), pki.join("echo.key"));
    let _echo = t.lab.spawn(
        &t.servers,
        "python3",
        &[
            &script.display().to_string(),
            SERVERS[0],
            "8443",
            &cert.display().to_string(),
            &key.display().to_string(),
        ],
    )?;
    t.servers.wait_tcp_listen(8443, TIMEOUT)?;
    let tls_group = format!(
        "servers = [{{ addr = \"{}:8443\", weight = 1 }}]\n\n[group.tls]\nca = \"{}\"\nserver_name = \"echo.internal\"",
        SERVERS[0],
        pki.join("ca.pem").display()
    );
    let config = config().replace(&web_servers(), &tls_group);
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config)?;
    let echoed = echo_through_tunnel(&t.client)?;
    ensure!(
        echoed.iter().all(|ok| *ok),
        "every message echoed through the tunnel and TLS: {echoed:?}"
    );
    let l7 = wait_until_ok(TIMEOUT, "the tunnel counted", || {
        let l7 = xlb.stats()?["l7"].clone();
        ensure!(l7["counts"]["tunnels"].as_u64() == Some(1), "{l7}");
        Ok(l7)
    })?;
    ensure!(l7["counts"]["upstream_tls_full_handshakes"].as_u64() == Some(1), "{l7}");
    Ok(())
}

#[test]
fn two_workers_hand_segments_to_the_owner_of_each_connection() -> Result<()> {
    let t = TwoArm::new("l7twoq", &SERVERS, 2)?;
    let _nginx = nginx(&t.lab, &t.servers)?;
    let config = config().replace("queues = [0]\ncores = [0]", "queues = [0, 1]\ncores = [0, 1]");
    let script = t.lab.dir().join("bad_server.py");
    std::fs::write(&script, BAD_SERVER)?;
    let _bad = t.lab.spawn(
        &t.servers,
        "python3",
        &[&script.display().to_string(), SERVERS[2], "9090"],
    )?;
    t.servers.wait_tcp_listen(9090, TIMEOUT)?;
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config)?;
    let url = format!("http://{VIP}/");
    for i in 0..24 {
        let answer = curl(&t.client, &[&url, &url])?;
        ensure!(answer.lines().count() == 2, "connection {i}: {answer:?}");
    }
    let l7 = wait_until_ok(TIMEOUT, "48 requests counted", || {
        let l7 = xlb.stats()?["l7"].clone();
        ensure!(l7["counts"]["requests"].as_u64() == Some(48), "{l7}");
        Ok(l7)
    })?;
    ensure!(
        l7["counts"]["handed_off"].as_u64() > Some(0),
        "segments reached the other worker's queue: {l7}"
    );
    ensure!(l7["counts"]["handoff_full"].as_u64() == Some(0), "{l7}");
    Ok(())
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("VmRSS")?;
    Ok(kb * 1024)
}

#[test]
fn ten_thousand_idle_keepalive_clients_cost_little_and_requests_still_flow() -> Result<()> {
    use std::io::{Read, Write};
    const CLIENTS: usize = 10_000;
    let t = TwoArm::new("l7idle", &SERVERS, 1)?;
    let _nginx = nginx(&t.lab, &t.servers)?;
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config())?;
    let pid = xlb.proc().pid();
    let before = rss(pid)?;
    let target: std::net::SocketAddr = format!("{VIP}:80").parse()?;
    // Every client sends one request and keeps its connection open, idle.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<Result<usize>>();
    let client = t.client.clone();
    let holder = std::thread::spawn(move || {
        let run = || -> Result<Vec<std::net::TcpStream>> {
            client.enter_current_thread()?;
            let limit = libc::rlimit {
                rlim_cur: 3 * CLIENTS as u64,
                rlim_max: 3 * CLIENTS as u64,
            };
            // SAFETY: a valid rlimit struct for the call to read.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
            let mut streams = Vec::with_capacity(CLIENTS);
            for i in 0..CLIENTS {
                let mut s =
                    std::net::TcpStream::connect_timeout(&target, TIMEOUT).with_context(|| format!("client {i}"))?;
                s.set_read_timeout(Some(TIMEOUT))?;
                s.write_all(b"GET / HTTP/1.1\r\nHost: idle.example.com\r\n\r\n")?;
                let mut got = Vec::new();
                let mut buf = [0u8; 512];
                while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"\n") && got.len() > 40) {
                    let n = s.read(&mut buf)?;
                    ensure!(n > 0, "client {i}: closed: {:?}", String::from_utf8_lossy(&got));
                    got.extend_from_slice(&buf[..n]);
                }
                ensure!(
                    got.starts_with(b"HTTP/1.1 200"),
                    "client {i}: {:?}",
                    String::from_utf8_lossy(&got)
                );
                streams.push(s);
            }
            Ok(streams)
        };
        match run() {
            Ok(streams) => {
                let _ = opened_tx.send(Ok(streams.len()));
                let _ = rx.recv_timeout(Duration::from_secs(300)); // hold them until told
                drop(streams);
            }
            Err(e) => {
                let _ = opened_tx.send(Err(e));
            }
        }
    });
    let opened = opened_rx.recv_timeout(Duration::from_secs(300)).context("clients")??;
    ensure!(opened == CLIENTS);
    // With all of them held idle, new requests are served.
    for _ in 0..5 {
        let answer = curl(&t.client, &[&format!("http://{VIP}/")])?;
        ensure!(answer.contains("xff=198.18.0.1"), "{answer:?}");
    }
    let l7 = wait_until_ok(TIMEOUT, "10 000 idle sessions", || {
        let l7 = xlb.stats()?["l7"].clone();
        ensure!(l7["sessions"].as_u64() == Some(CLIENTS as u64), "{l7}");
        ensure!(l7["counts"]["requests"].as_u64() == Some(CLIENTS as u64 + 5), "{l7}");
        Ok(l7)
    })?;
    let after = rss(pid)?;
    let buffers = l7["buffer_bytes"].as_u64().unwrap_or(u64::MAX);
    let upstream_connects = l7["counts"]["upstream_connects"].as_u64().unwrap_or(0);
    eprintln!(
        "{CLIENTS} idle keep-alive clients: {} B of socket buffers per client, resident memory grew by {} B per \
         client; {upstream_connects} upstream connections for {} requests",
        buffers / CLIENTS as u64,
        after.saturating_sub(before) / CLIENTS as u64,
        CLIENTS + 5
    );
    // Idle connections hold the idle-size buffers (1 KiB each way); the pool's few upstream connections too.
    ensure!(buffers <= (CLIENTS as u64 + 200) * 2 * 1024, "{l7}");
    ensure!(upstream_connects < 200, "idle clients pin no server connections: {l7}");
    let _ = tx.send(());
    holder.join().map_err(|_| anyhow::anyhow!("holder panicked"))?;
    wait_until_ok(Duration::from_secs(30), "the sessions to end", || {
        let l7 = xlb.stats()?["l7"].clone();
        ensure!(l7["sessions"].as_u64() == Some(0), "{l7}");
        Ok(())
    })?;
    Ok(())
}
