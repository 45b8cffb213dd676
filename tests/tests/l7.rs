//! L7 acceptance: curl in a client namespace, NGINX backends, and `xlb` terminating HTTP in its own stack between
//! them (two-arm lab, see `xlb_tests::topology`).

use std::path::Path;

use anyhow::{ensure, Context, Result};
use xlb_tests::appliance::Appliance;
use xlb_tests::lab::{wait_until_ok, Lab, Netns, Proc};
use xlb_tests::topology::TwoArm;
use xlb_tests::traffic::TIMEOUT;

const VIP: &str = "198.18.0.100";
const SERVERS: [&str; 3] = ["198.19.0.2", "198.19.0.3", "198.19.0.4"];

/// NGINX on every backend address, port 8080: `/` answers which server it is and the forwarding headers it
/// got, `/big.bin` is a 1 MiB file, `/upload` reads a body and answers its length.
fn nginx(lab: &Lab, ns: &Netns) -> Result<Proc> {
    let dir = lab.dir().join("nginx");
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    let big: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(www.join("big.bin"), &big)?;
    let d = dir.display();
    let servers: String = SERVERS
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            format!(
                "server {{ listen {ip}:8080; root {www};
                   location = / {{ return 200 \"s{n} xff=$http_x_forwarded_for proto=$http_x_forwarded_proto\\n\"; }}
                   location /upload {{ client_max_body_size 16m; return 200 \"got $content_length\\n\"; }} }}\n",
                n = i + 1,
                www = www.display()
            )
        })
        .collect();
    let conf = format!(
        "worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;
         events {{ worker_connections 1024; }}
         http {{ access_log off; keepalive_timeout 75s; keepalive_requests 100000;
           client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
           uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
           {servers} }}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let proc = lab.spawn(ns, "nginx", &["-c", &path.display().to_string(), "-g", "daemon off;"])?;
    ns.wait_tcp_listen(8080, TIMEOUT)?;
    Ok(proc)
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
[node]
name = "lb1"
control_socket = "CONTROL_SOCKET"

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

[datapath]
umem_frames = 8192
ring_size = 1024

[l7]
max_body_bytes = 4194304

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
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config())?;
    let url = format!("http://{VIP}/");

    // Three requests on one kept-alive client connection: one server answers all three (the proxy keeps its
    // upstream connection), with the forwarding headers.
    let three = curl(&t.client, &[&url, &url, &url])?;
    let lines: Vec<&str> = three.lines().collect();
    ensure!(lines.len() == 3, "three answers: {three:?}");
    ensure!(
        lines.iter().all(|l| *l == lines[0]),
        "same server for one connection: {three:?}"
    );
    ensure!(lines[0].ends_with(" xff=198.18.0.1 proto=http"), "{three:?}");

    // New connections are spread by the scheduler (rr over the three servers).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..9 {
        let answer = curl(&t.client, &[&url])?;
        seen.insert(answer.split_whitespace().next().unwrap_or("").to_string());
    }
    ensure!(seen.len() == 3, "every server answered some of 9 connections: {seen:?}");

    // A 1 MiB download streams through byte-exact; a 2 MiB upload reaches the server whole.
    let out = t.lab.dir().join("got.bin");
    curl(&t.client, &["-o", &out.display().to_string(), &format!("{url}big.bin")])?;
    let want = sha256(&t.lab.dir().join("nginx/www/big.bin"))?;
    ensure!(sha256(&out)? == want, "the download differs from the file");
    let body = t.lab.dir().join("body.bin");
    std::fs::write(&body, vec![b'x'; 2 * 1024 * 1024])?;
    let up = curl(
        &t.client,
        &[
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("{url}upload"),
        ],
    )?;
    ensure!(up.trim() == "got 2097152", "upload: {up:?}");
    std::fs::write(&body, vec![b'x'; 5 * 1024 * 1024])?;
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

    // What the operator sees: requests, upstream reuse and the refusals, named.
    let l7 = wait_until_ok(TIMEOUT, "L7 counters", || {
        let l7 = xlb.stats()?["l7"].clone();
        ensure!(
            l7["counts"]["requests"].as_u64() == Some(17),
            "3 + 9 + download + upload + 3 api: {l7}"
        );
        Ok(l7)
    })?;
    ensure!(
        l7["counts"]["local_answers"].as_u64() >= Some(3),
        "redirect, 413 and 502: {l7}"
    );
    ensure!(l7["counts"]["upstream_connect_failed"].as_u64() == Some(1), "{l7}");
    ensure!(l7["counts"]["responses_3xx"].as_u64() == Some(1), "{l7}");
    let text = xlb.xlbctl(&["stats"]).context("xlbctl stats")?;
    ensure!(text.contains("l7: ") && text.contains("upstream reuse"), "{text}");
    Ok(())
}
