//! HTTPS acceptance: curl and `openssl s_client` in a client namespace, NGINX backends, and `xlb` terminating
//! TLS and HTTP in its own stack (two-arm lab). Certificates come from a throw-away CA made with `openssl`.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use xlb_tests::appliance::Appliance;
use xlb_tests::lab::{wait_until_ok, Netns};
use xlb_tests::topology::{TwoArm, TWO_ARM_BASE};
use xlb_tests::traffic::TIMEOUT;

const VIP: &str = "198.18.0.100";
const SERVERS: [&str; 2] = ["198.19.0.2", "198.19.0.3"];

fn config(pki: &Path) -> String {
    let p = |f: &str| pki.join(f).display().to_string();
    format!(
        r#"
{TWO_ARM_BASE}
[[listener]]
name = "tls"
vip = "{VIP}"
port = 443
protocol = "https"
scheduler = "rr"
group = "web"

[listener.tls]
policy = "tls-1-2"

[[listener.tls.cert]]
cert = "{www}"
key = "{www_key}"

[[listener.tls.cert]]
cert = "{api}"
key = "{api_key}"

[[listener]]
name = "mtls"
vip = "{VIP}"
port = 8443
protocol = "https"
group = "web"

[listener.tls]
client_auth = "required"
client_ca = "{ca}"

[[listener.tls.cert]]
cert = "{www}"
key = "{www_key}"

[[listener]]
name = "plain"
vip = "{VIP}"
port = 80
protocol = "http"
group = "web"

[[listener.rule]]
redirect = {{ status = 308, scheme = "https" }}

[[group]]
name = "web"
servers = [{{ addr = "{s1}:8080", weight = 1 }}, {{ addr = "{s2}:8080", weight = 1 }}]
"#,
        www = p("www.pem"),
        ca = p("ca.pem"),
        www_key = p("www.key"),
        api = p("api.pem"),
        api_key = p("api.key"),
        s1 = SERVERS[0],
        s2 = SERVERS[1],
    )
}

/// curl against `https://<name>/<path>` resolved to the VIP, trusting the test CA.
fn curl(client: &Netns, ca: &Path, name: &str, extra: &[&str], path: &str) -> Result<String> {
    let resolve = format!("{name}:443:{VIP}");
    let url = format!("https://{name}/{path}");
    let ca = ca.display().to_string();
    let mut args = vec!["-sS", "--max-time", "20", "--cacert", &ca, "--resolve", &resolve];
    args.extend_from_slice(extra);
    args.push(&url);
    client.run("curl", &args)
}

/// `openssl s_client` to the VIP's port 443 with `args`, sending `input`.
fn s_client(client: &Netns, args: &[&str], input: &[u8]) -> Result<String> {
    xlb_tests::pki::s_client(client, &format!("{VIP}:443"), args, input)
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n";

#[test]
fn https_is_terminated_in_stack_with_sni_alpn_and_resumption() -> Result<()> {
    let t = TwoArm::new("https", &SERVERS, 1)?;
    let _nginx = xlb_tests::backends::nginx(&t.lab, &t.servers, &SERVERS, 10)?;
    let dir = t.lab.dir().join("pki");
    std::fs::create_dir_all(&dir)?;
    xlb_tests::pki::make(
        &dir,
        &[
            ("www", "www.example.com"),
            ("api", "*.api.example.com"),
            ("client", "client one"),
        ],
    )?;
    let ca = dir.join("ca.pem");
    let ca_arg = ca.display().to_string();
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config(&dir))?;

    // curl: TLS 1.3 and 1.2, ALPN http/1.1, the forwarding headers say https.
    let got = curl(&t.client, &ca, "www.example.com", &[], "")?;
    ensure!(got.ends_with("xff=198.18.0.1 proto=https\n"), "{got:?}");
    let verbose = t.client.output(
        "curl",
        &[
            "-sS",
            "-v",
            "--http1.1",
            "--tlsv1.2",
            "--tls-max",
            "1.2",
            "--cacert",
            &ca_arg,
            "--resolve",
            &format!("www.example.com:443:{VIP}"),
            "https://www.example.com/",
        ],
    )?;
    let err = String::from_utf8_lossy(&verbose.stderr);
    ensure!(verbose.status.success(), "TLS 1.2: {err}");
    ensure!(err.contains("TLSv1.2"), "TLS 1.2 negotiated: {err}");
    ensure!(err.contains("ALPN: server accepted http/1.1"), "ALPN: {err}");

    // A 10 MiB download through TLS arrives byte-exact; three requests share one TLS connection.
    let out = t.lab.dir().join("got.bin");
    curl(
        &t.client,
        &ca,
        "www.example.com",
        &["--max-time", "120", "-o", &out.display().to_string()],
        "big.bin",
    )?;
    ensure!(
        std::fs::read(&out)? == std::fs::read(t.lab.dir().join("nginx/www/big.bin"))?,
        "the download differs from the file"
    );
    let url = "https://www.example.com/".to_string();
    let three = curl(&t.client, &ca, "www.example.com", &[&url, &url], "")?;
    ensure!(three.lines().count() == 3, "{three:?}");

    // SNI: the exact name gets its certificate, a name under the wildcard the other, no SNI the default.
    let www = s_client(
        &t.client,
        &["-servername", "www.example.com", "-CAfile", &ca_arg, "-brief"],
        b"",
    )?;
    ensure!(
        www.contains("CN = www.example.com") || www.contains("CN=www.example.com"),
        "{www}"
    );
    ensure!(www.contains("Verification: OK"), "{www}");
    let api = s_client(
        &t.client,
        &["-servername", "x.api.example.com", "-CAfile", &ca_arg, "-brief"],
        b"",
    )?;
    ensure!(api.contains("*.api.example.com"), "{api}");
    let none = s_client(&t.client, &["-noservername", "-brief"], b"")?;
    ensure!(none.contains("www.example.com"), "the default certificate: {none}");
    let alpn = s_client(
        &t.client,
        &["-servername", "www.example.com", "-alpn", "h2,http/1.1"],
        b"",
    )?;
    ensure!(alpn.contains("ALPN protocol: h2"), "HTTP/2 preferred: {alpn}");
    let alpn = s_client(&t.client, &["-servername", "www.example.com", "-alpn", "http/1.1"], b"")?;
    ensure!(alpn.contains("ALPN protocol: http/1.1"), "{alpn}");

    // Resumption: TLS 1.3 with a saved session (the ticket), and TLS 1.2 with -reconnect.
    let sess = t.lab.dir().join("sess.pem").display().to_string();
    let first = s_client(
        &t.client,
        &["-servername", "www.example.com", "-ign_eof", "-sess_out", &sess],
        REQUEST,
    )?;
    ensure!(first.contains("HTTP/1.1 200 OK"), "{first}");
    let again = s_client(
        &t.client,
        &["-servername", "www.example.com", "-ign_eof", "-sess_in", &sess],
        REQUEST,
    )?;
    ensure!(again.contains("Reused, TLSv1.3"), "TLS 1.3 resumed: {again}");
    let reconnect = s_client(
        &t.client,
        &["-servername", "www.example.com", "-tls1_2", "-reconnect"],
        b"",
    )?;
    ensure!(
        reconnect.matches("Reused, TLSv1.2").count() >= 5,
        "TLS 1.2 resumed: {reconnect}"
    );

    // Plain HTTP to the TLS port: an alert and a close, never a request to a server.
    let plain = t
        .client
        .output("curl", &["-sS", "--max-time", "10", &format!("http://{VIP}:443/")])?;
    ensure!(!plain.status.success(), "plain HTTP on the TLS port fails");
    // HTTP to port 80 is redirected to HTTPS by a rule.
    let redirect = t.client.run(
        "curl",
        &[
            "-sS",
            "-i",
            "-H",
            "Host: www.example.com",
            &format!("http://{VIP}/a?b=1"),
        ],
    )?;
    ensure!(redirect.starts_with("HTTP/1.1 308"), "{redirect}");
    ensure!(
        redirect.contains("Location: https://www.example.com/a?b=1"),
        "{redirect}"
    );

    // Mutual TLS: a client certificate from the CA is accepted and its subject passed upstream (a client's own
    // header dropped); without one the handshake is refused.
    let resolve = format!("www.example.com:8443:{VIP}");
    let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
    let whoami = t.client.run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &ca_arg,
            "--resolve",
            &resolve,
            "--cert",
            &cert.display().to_string(),
            "--key",
            &key.display().to_string(),
            "-H",
            "X-Client-Cert-Subject: CN=admin",
            "https://www.example.com:8443/whoami",
        ],
    )?;
    ensure!(whoami.trim() == "verify=SUCCESS subject=CN=client one", "{whoami:?}");
    let anonymous = t.client.output(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &ca_arg,
            "--resolve",
            &resolve,
            "https://www.example.com:8443/whoami",
        ],
    )?;
    ensure!(!anonymous.status.success(), "no client certificate: refused");

    // Live certificate change: the files are replaced by a certificate that also names www2.example.com and
    // `xlbctl cert reload` re-reads them. A TLS connection established before keeps working; new handshakes get
    // the new certificate.
    let connect = format!("{VIP}:443");
    let mut held = t
        .client
        .command(
            "timeout",
            &["15", "openssl", "s_client", "-connect", &connect, "-quiet", "-ign_eof"],
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut stdin = held.stdin.take().context("stdin")?;
    {
        use std::io::Write;
        stdin.write_all(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")?;
    }
    let before = curl(&t.client, &ca, "www2.example.com", &[], "");
    ensure!(
        !before.is_ok_and(|s| s.contains("proto=https")),
        "www2 is not named yet"
    );
    ensure!(xlb.xlbctl(&["cert"])?.contains("www.example.com"), "cert list");
    xlb_tests::pki::make(&dir, &[("www", "www.example.com,www2.example.com")])?;
    let reloaded = xlb.xlbctl(&["cert", "reload"])?;
    ensure!(
        reloaded.contains("3 certificate(s) of 2 https listener(s)"),
        "{reloaded}"
    );
    let www2 = curl(&t.client, &ca, "www2.example.com", &[], "")?;
    ensure!(
        www2.ends_with("proto=https\n"),
        "the new certificate names www2: {www2:?}"
    );
    ensure!(
        xlb.xlbctl(&["cert", "list"])?.contains("www2.example.com"),
        "cert list shows the new names"
    );
    {
        use std::io::Write;
        stdin.write_all(b"GET / HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n")?;
    }
    drop(stdin);
    let out = held.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.matches("HTTP/1.1 200 OK").count() == 2,
        "both requests answered on the connection established before the reload: {text}"
    );
    // A certificate file that does not load is refused and changes nothing.
    std::fs::write(dir.join("www.key"), "not a key")?;
    ensure!(xlb.xlbctl(&["cert", "reload"]).is_err(), "a broken key file is refused");
    ensure!(
        curl(&t.client, &ca, "www2.example.com", &[], "")?.ends_with("proto=https\n"),
        "still served"
    );

    // What the operator sees.
    let l7 = wait_until_ok(TIMEOUT, "TLS counters", || {
        let l7 = xlb.stats()?["l7"].clone();
        let n = |k: &str| l7["counts"][k].as_u64().unwrap_or(0);
        ensure!(n("tls_resumed_handshakes") >= 6, "1 + 5 resumptions: {l7}");
        // (curl checks the name after the handshake: its refusal of www2 before the reload is a normal close.)
        ensure!(n("tls12_handshakes") >= 7 && n("tls13_handshakes") >= 5, "{l7}");
        ensure!(n("tls_handshake_failed") >= 1, "the plain request: {l7}");
        Ok(l7)
    })?;
    eprintln!("L7 counts after the HTTPS checks: {}", l7["counts"]);
    let full = l7["counts"]["tls_full_handshakes"].as_u64().unwrap_or(0);
    ensure!(full >= 7, "curl x4, s_client x5 (some resume): {l7}");
    let text = xlb.xlbctl(&["stats"])?;
    ensure!(text.contains("tls_resumed_handshakes"), "{text}");
    xlb.proc().check_running()?;
    Ok(())
}

/// HTTPS to the servers: groups with `[group.tls]` (NGINX serving TLS on 8443), verified by name, by IP address,
/// and against a CA that did not sign the servers' certificates.
fn upstream_tls_config(pki: &Path, other_ca: &Path) -> String {
    let p = |f: &str| pki.join(f).display().to_string();
    let servers = |port: u16| {
        SERVERS
            .iter()
            .map(|s| format!("{{ addr = \"{s}:{port}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"
{TWO_ARM_BASE}
[[listener]]
name = "plain"
vip = "{VIP}"
port = 80
protocol = "http"
scheduler = "rr"
group = "secure"

[[listener.rule]]
path_prefix = "/byip/"
group = "byip"

[[listener.rule]]
path_prefix = "/bad/"
group = "bad"

[[group]]
name = "secure"
servers = [{tls_servers}]
health_check = {{ kind = "tcp", interval_ms = 500, timeout_ms = 300 }}

[group.tls]
ca = "{ca}"
server_name = "app.internal"

[[group]]
name = "byip"
servers = [{tls_servers}]

[group.tls]
ca = "{ca}"

[[group]]
name = "bad"
servers = [{tls_servers}]

[group.tls]
ca = "{other_ca}"
server_name = "app.internal"
"#,
        tls_servers = servers(8443),
        ca = p("ca.pem"),
        other_ca = other_ca.join("ca.pem").display(),
    )
}

#[test]
fn requests_go_to_https_servers_verified_against_the_group_ca() -> Result<()> {
    let t = TwoArm::new("uptls", &SERVERS, 1)?;
    let dir = t.lab.dir().join("pki");
    let other = t.lab.dir().join("other-pki");
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(&other)?;
    let names = format!("app.internal,{},{}", SERVERS[0], SERVERS[1]);
    xlb_tests::pki::make(&dir, &[("backend", &names)])?;
    xlb_tests::pki::make(&other, &[])?;
    let _nginx = xlb_tests::backends::nginx_with_tls(
        &t.lab,
        &t.servers,
        &SERVERS,
        10,
        Some(8080),
        Some((&dir.join("backend.pem"), &dir.join("backend.key"))),
    )?;
    // A health check speaking plain HTTP to a TLS group is refused with the reason.
    let refused = upstream_tls_config(&dir, &other)
        .replace("health_check = { kind = \"tcp\"", "health_check = { kind = \"http\"");
    let out = match Appliance::start(&t.lab, &t.lb, "lb0", &refused) {
        Ok(_) => anyhow::bail!("xlb started with an http health check on a TLS group"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        out.contains("group[0] (secure).health_check") && out.contains("plain HTTP"),
        "{out}"
    );
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &upstream_tls_config(&dir, &other))?;
    let get = |path: &str, extra: &[&str]| -> Result<String> {
        let url = format!("http://{VIP}{path}");
        let mut args = vec!["-sS", "--max-time", "20", "-H", "Host: www.example.com"];
        args.extend_from_slice(extra);
        args.push(&url);
        t.client.run("curl", &args)
    };

    // By name: TLS 1.3 with SNI app.internal.
    let first = get("/scheme", &[])?;
    ensure!(first.starts_with("https TLSv1.3 app.internal "), "{first:?}");
    // By IP address (no server_name): verified against the IP SANs, no SNI.
    let byip = get("/byip/scheme", &[])?;
    ensure!(byip.starts_with("https TLSv1.3  "), "{byip:?}");

    // One request per client connection: the kept TLS connections carry them (NGINX's session tickets, which
    // come after its first response, do not end an idle connection).
    let mut counts = Vec::new();
    for _ in 0..6 {
        let got = get("/scheme", &[])?;
        counts.push(got.split(' ').nth(3).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0));
    }
    ensure!(
        counts.iter().max() >= Some(&3),
        "six new client connections over two kept server connections: {counts:?}"
    );

    // Twenty requests on one client connection: the servers see a few TLS connections, each reused.
    let urls: Vec<String> = (0..20).map(|_| format!("http://{VIP}/scheme")).collect();
    let mut args = vec!["-sS", "--max-time", "30"];
    args.extend(urls.iter().map(String::as_str));
    let twenty = t.client.run("curl", &args)?;
    ensure!(twenty.lines().count() == 20, "{twenty}");
    ensure!(
        twenty.lines().all(|l| l.starts_with("https TLSv1.3 app.internal ")),
        "{twenty}"
    );
    let reused = twenty
        .lines()
        .filter_map(|l| l.split(' ').nth(3)?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    ensure!(
        reused >= 5,
        "a server saw one TLS connection carry several requests: {twenty} (L7 counts: {})",
        xlb.stats()?["l7"]["counts"]
    );

    // 10 MiB byte-exact, an upload (under the default 1 MiB body limit), and an HTTP/2 client: all over TLS to
    // the servers.
    let out = t.lab.dir().join("got.bin");
    get("/big.bin", &["--max-time", "120", "-o", &out.display().to_string()])?;
    ensure!(
        std::fs::read(&out)? == std::fs::read(t.lab.dir().join("nginx/www/big.bin"))?,
        "the download differs from the file"
    );
    let body = t.lab.dir().join("up.bin");
    std::fs::write(&body, vec![b'x'; 1_000_000])?;
    let up = get("/upload", &["--data-binary", &format!("@{}", body.display())])?;
    ensure!(up.trim() == "got 1000000", "{up:?}");
    let h2 = get("/scheme", &["--http2-prior-knowledge"])?;
    ensure!(h2.starts_with("https TLSv1.3 app.internal "), "{h2:?}");

    // Sustained keep-alive load (20 000 requests over 16 client connections, HTTP/1.1): every request answered,
    // over a handful of TLS connections to the servers.
    let load = t.client.run(
        "timeout",
        &[
            "120",
            "h2load",
            "--h1",
            "-n",
            "20000",
            "-c",
            "16",
            &format!("http://{VIP}/scheme"),
        ],
    )?;
    ensure!(load.contains("20000 succeeded, 0 failed, 0 errored"), "h2load: {load}");
    ensure!(load.contains("status codes: 20000 2xx"), "h2load: {load}");

    // A CA that did not sign the servers' certificates: 502, no request reaches them, counted.
    let bad = t.client.output(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{VIP}/bad/scheme"),
        ],
    )?;
    ensure!(String::from_utf8_lossy(&bad.stdout) == "502", "{bad:?}");

    let l7 = wait_until_ok(TIMEOUT, "upstream TLS counters", || {
        let l7 = xlb.stats()?["l7"].clone();
        let n = |k: &str| l7["counts"][k].as_u64().unwrap_or(0);
        ensure!(n("upstream_tls_failed") >= 1, "the bad group: {l7}");
        ensure!(n("upstream_tls_full_handshakes") >= 2, "{l7}");
        ensure!(n("upstream_reused") >= 19_000, "{l7}");
        Ok(l7)
    })?;
    let n = |k: &str| l7["counts"][k].as_u64().unwrap_or(0);
    let handshakes = n("upstream_tls_full_handshakes") + n("upstream_tls_resumed_handshakes");
    ensure!(
        handshakes <= 40,
        "connections are kept: {handshakes} handshakes for 20 025 requests: {l7}"
    );
    eprintln!("L7 counts after the upstream TLS checks: {}", l7["counts"]);
    ensure!(xlb.xlbctl(&["stats"])?.contains("upstream_tls_failed"), "xlbctl stats");
    xlb.proc().check_running()?;
    Ok(())
}
