//! The `xlb-bench` generators against real kernel servers in a netns lab.
//!
//! Every test builds its own lab: a `client` and a `server` namespace joined
//! by a veth pair (198.18.240.1/24 and 198.18.240.2/24), with `xlb-bench
//! sink` processes as servers. The tests check that reported figures are
//! true (counts agree with what the sinks and the kernel counted, loss matches
//! a known drop rate, open-loop schedules are kept), never that anything is
//! fast. Runs need root.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use xlb_tests::lab::{wait_until_ok, Lab, Netns, Proc};

const CLIENT_CIDR: &str = "198.18.240.1/24";
const SERVER_IP: &str = "198.18.240.2";
const SERVER_CIDR: &str = "198.18.240.2/24";

/// How long a sink may take to start listening.
const SINK_START: Duration = Duration::from_secs(10);
/// How long a sink may take to exit after SIGTERM.
const SINK_STOP: Duration = Duration::from_secs(5);

fn bench() -> &'static str {
    env!("CARGO_BIN_EXE_xlb-bench")
}

/// A lab with a client and a server namespace on one veth link.
struct Net {
    lab: Lab,
    client: Netns,
    server: Netns,
}

fn net(test: &str) -> Result<Net> {
    let lab = Lab::new(test)?;
    let client = lab.netns("client")?;
    let server = lab.netns("server")?;
    lab.veth((&client, "eth0"), (&server, "eth0"))?;
    client.addr("eth0", CLIENT_CIDR)?;
    server.addr("eth0", SERVER_CIDR)?;
    client.ping(SERVER_IP)?;
    Ok(Net { lab, client, server })
}

/// Starts `xlb-bench sink` in the server namespace and waits until it listens.
fn start_sink(net: &Net, proto: &str, listen: &str, name: &str) -> Result<Proc> {
    let args = ["sink", "--proto", proto, "--listen", listen, "--name", name];
    let sink = net.lab.spawn(&net.server, bench(), &args)?;
    wait_until_ok(SINK_START, &format!("sink {name} to listen"), || {
        sink.check_running()?;
        if !sink.stderr().contains("listening on") {
            bail!("not listening yet");
        }
        Ok(())
    })?;
    Ok(sink)
}

/// Stops a sink with SIGTERM; returns the JSON summary it printed.
fn stop_sink(sink: &Proc) -> Result<Value> {
    let status = sink.stop(SINK_STOP)?;
    ensure!(
        status.success(),
        "sink `{}` exited with {status}; stderr: {}",
        sink.cmdline(),
        sink.stderr()
    );
    let stdout = sink.stdout();
    let line = stdout.lines().last().context("sink printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("sink printed no JSON: {stdout}"))
}

/// Runs a generator in the client namespace; returns its JSON report.
///
/// The generator runs at the lowest CPU priority: on a small machine that
/// also runs the sinks, an unthrottled `tcp-cps` would otherwise complete
/// handshakes (done by the kernel) faster than the sink gets CPU to accept
/// them, overflow its listen queue and turn dropped SYNs into one-second
/// retransmissions. The reports would still be true, just about the machine.
fn run_bench(net: &Net, args: &[&str]) -> Result<Value> {
    let mut full = vec!["-n", "19", bench()];
    full.extend_from_slice(args);
    full.push("--json");
    let stdout = net.client.run("nice", &full)?;
    let report = serde_json::from_str(stdout.trim())
        .with_context(|| format!("`xlb-bench {}` printed no JSON: {stdout}", args.join(" ")))?;
    // Shown with `--nocapture`, and for a failing test.
    eprintln!("xlb-bench {}:\n{report:#}", args.join(" "));
    Ok(report)
}

/// The unsigned integer at JSON `pointer` (e.g. `/counts/sent`).
fn num(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no unsigned integer at {pointer} in {value}"))
}

/// The `servers` object of a report, as (name, count) pairs.
fn servers(report: &Value) -> Vec<(String, u64)> {
    report["servers"]
        .as_object()
        .unwrap_or_else(|| panic!("no servers object in {report}"))
        .iter()
        .map(|(name, n)| (name.clone(), n.as_u64().expect("server counts are integers")))
        .collect()
}

/// Packets that passed the `counter` of the single rule in an nft chain.
fn nft_counter(ns: &Netns, table: &str, chain: &str) -> Result<u64> {
    let text = ns.run("nft", &["list", "chain", "inet", table, chain])?;
    let packets = text
        .split("counter packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("no counter in nft output: {text}"))?;
    Ok(packets.parse()?)
}

/// `Udp: ... RcvbufErrors` of a namespace (datagrams its sockets dropped).
fn udp_rcvbuf_errors(ns: &Netns) -> Result<u64> {
    let snmp = ns.run("cat", &["/proc/net/snmp"])?;
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp: "));
    let (names, values) = (udp.next(), udp.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Udp lines in /proc/net/snmp: {snmp}");
    };
    let column = names
        .split_whitespace()
        .position(|name| name == "RcvbufErrors")
        .context("no RcvbufErrors column")?;
    Ok(values
        .split_whitespace()
        .nth(column)
        .context("short Udp line")?
        .parse()?)
}

/// TCP sockets of `ns` in `state` (an `ss` state filter: `time-wait`, `fin-wait-2`, ...).
fn sockets_in(ns: &Netns, state: &str) -> Result<usize> {
    Ok(ns.run("ss", &["-Htan", "state", state])?.lines().count())
}

/// An HTTP server (socat + bash) that answers every request with `Connection: close` and closes 200 ms
/// after its answer: a client that does not wait for the server's FIN closes first.
fn slow_closing_server(net: &Net, port: u16) -> Result<Proc> {
    let script = net.lab.dir().join("slow-close.sh");
    std::fs::write(
        &script,
        "#!/bin/bash\nwhile IFS= read -r line; do [ \"$line\" = $'\\r' ] && break; done\n\
         printf 'HTTP/1.1 200 OK\\r\\nContent-Length: 10\\r\\nX-Server: slow\\r\\nConnection: close\\r\\n\\r\\nserver=sl\\n'\n\
         sleep 0.2\n",
    )?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let listen = format!("TCP-LISTEN:{port},bind={SERVER_IP},reuseaddr,fork");
    let system = format!("SYSTEM:{}", script.display());
    let server = net.lab.spawn(&net.server, "socat", &[&listen, &system])?;
    net.server.wait_tcp_listen(port, Duration::from_secs(5))?;
    Ok(server)
}

#[test]
fn http_server_close_waits_for_the_server_to_close_first() -> Result<()> {
    let net = net("http_server_close_waits_for_the_server_to_close_first")?;
    let _server = slow_closing_server(&net, 8084)?;
    let addr = format!("{SERVER_IP}:8084");
    let run = |mode: &str| {
        let args = [
            "http",
            "--target",
            &addr,
            mode,
            "--connections",
            "2",
            "--count",
            "20",
            "--duration",
            "20",
        ];
        run_bench(&net, &args)
    };
    // Without waiting, the client closes as soon as it has the body: TIME_WAIT on the client (once the
    // server's FIN arrives, 200 ms after the answer).
    let report = run("--new-conn")?;
    assert_eq!(num(&report, "/counts/completed"), 20, "{report}");
    wait_until_ok(Duration::from_secs(5), "the client's TIME_WAIT states", || {
        let tw = sockets_in(&net.client, "time-wait")?;
        ensure!(
            tw == 20,
            "--new-conn: {tw} of 20 connections in TIME_WAIT on the client"
        );
        Ok(())
    })?;
    net.client.run("ss", &["-K", "state", "time-wait"])?;
    assert_eq!(sockets_in(&net.client, "time-wait")?, 0);
    // --server-close waits for the server's FIN: every TIME_WAIT is on the server, none on the client.
    let report = run("--server-close")?;
    assert_eq!(num(&report, "/counts/completed"), 20, "{report}");
    assert_eq!(num(&report, "/counts/connections_opened"), 20, "{report}");
    assert_eq!(report["params"]["server_close"], true, "{report}");
    assert_eq!(servers(&report), [("slow".to_owned(), 20)], "{report}");
    wait_until_ok(Duration::from_secs(5), "the server's TIME_WAIT states", || {
        let tw = sockets_in(&net.server, "time-wait")?;
        ensure!(
            tw == 20,
            "--server-close: {tw} of 20 connections in TIME_WAIT on the server"
        );
        Ok(())
    })?;
    let client = sockets_in(&net.client, "time-wait")? + sockets_in(&net.client, "fin-wait-2")?;
    assert_eq!(
        client, 0,
        "--server-close: the client closed first on {client} connections"
    );
    Ok(())
}

#[test]
fn http_new_conn_counts_match_each_sink() -> Result<()> {
    let net = net("http_new_conn_counts_match_each_sink")?;
    let targets = [
        ("s1", "198.18.240.2:8081"),
        ("s2", "198.18.240.3:8082"),
        ("s3", "198.18.240.4:8083"),
    ];
    net.server.addr("eth0", "198.18.240.3/24")?;
    net.server.addr("eth0", "198.18.240.4/24")?;
    let sinks = targets
        .iter()
        .map(|(name, addr)| start_sink(&net, "http", addr, name))
        .collect::<Result<Vec<_>>>()?;

    let mut completed = Vec::new();
    for (name, addr) in targets {
        let report = run_bench(
            &net,
            &[
                "http",
                "--target",
                addr,
                "--new-conn",
                "--connections",
                "2",
                "--duration",
                "1",
            ],
        )?;
        let done = num(&report, "/counts/completed");
        assert!(done > 0, "no request completed: {report}");
        assert_eq!(num(&report, "/counts/failed"), 0, "{report}");
        assert_eq!(num(&report, "/counts/issued"), done, "{report}");
        assert_eq!(num(&report, "/counts/connections_opened"), done, "{report}");
        assert_eq!(num(&report, "/status/200"), done, "{report}");
        assert_eq!(servers(&report), [(name.to_owned(), done)], "{report}");
        assert_eq!(num(&report, "/latency_us/response/count"), done, "{report}");
        assert_eq!(report["params"]["keepalive"], false);
        completed.push(done);
    }

    for ((sink, (name, _)), done) in sinks.iter().zip(targets).zip(&completed) {
        let summary = stop_sink(sink)?;
        assert_eq!(summary["name"], name, "{summary}");
        assert_eq!(num(&summary, "/requests"), *done, "{name}: {summary}");
        assert_eq!(num(&summary, "/connections"), *done, "{name}: {summary}");
    }
    Ok(())
}

#[test]
fn http_keepalive_reuses_connections() -> Result<()> {
    let net = net("http_keepalive_reuses_connections")?;
    let addr = "198.18.240.2:8080";
    let sink = start_sink(&net, "http", addr, "ka")?;
    let report = run_bench(
        &net,
        &[
            "http",
            "--target",
            addr,
            "--keepalive",
            "--connections",
            "3",
            "--count",
            "600",
            "--duration",
            "30",
        ],
    )?;
    assert_eq!(num(&report, "/counts/issued"), 600, "{report}");
    assert_eq!(num(&report, "/counts/completed"), 600, "{report}");
    assert_eq!(num(&report, "/counts/connections_opened"), 3, "{report}");
    assert_eq!(servers(&report), [("ka".to_owned(), 600)], "{report}");
    let summary = stop_sink(&sink)?;
    assert_eq!(num(&summary, "/requests"), 600, "{summary}");
    assert_eq!(num(&summary, "/connections"), 3, "{summary}");
    Ok(())
}

#[test]
fn tcp_cps_counts_match_sink_and_refusals() -> Result<()> {
    let net = net("tcp_cps_counts_match_sink_and_refusals")?;
    // Many short connections: leave the client enough ephemeral ports.
    net.client.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    net.client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    let addr = "198.18.240.2:7000";
    let sink = start_sink(&net, "tcp", addr, "t1")?;

    let plain = run_bench(
        &net,
        &["tcp-cps", "--target", addr, "--concurrency", "4", "--duration", "2"],
    )?;
    let conns = num(&plain, "/counts/completed");
    assert!(conns > 0, "{plain}");
    assert_eq!(num(&plain, "/counts/failed"), 0, "{plain}");
    assert_eq!(num(&plain, "/counts/attempted"), conns, "{plain}");
    assert_eq!(num(&plain, "/counts/connected"), conns, "{plain}");
    assert_eq!(num(&plain, "/latency_us/connect/count"), conns, "{plain}");

    // One request per connection: the answer is `server=t1\n` + the echo.
    let expect = ("server=t1\n".len() + 100).to_string();
    let exchange = run_bench(
        &net,
        &[
            "tcp-cps",
            "--target",
            addr,
            "--concurrency",
            "2",
            "--count",
            "300",
            "--duration",
            "30",
            "--request",
            "100",
            "--response-expect",
            &expect,
        ],
    )?;
    assert_eq!(num(&exchange, "/counts/completed"), 300, "{exchange}");
    assert_eq!(num(&exchange, "/counts/failed"), 0, "{exchange}");
    assert_eq!(num(&exchange, "/latency_us/response/count"), 300, "{exchange}");
    assert_eq!(servers(&exchange), [("t1".to_owned(), 300)], "{exchange}");

    let summary = stop_sink(&sink)?;
    assert_eq!(num(&summary, "/connections"), conns + 300, "{summary}");
    assert_eq!(num(&summary, "/requests"), 300, "{summary}");
    assert_eq!(num(&summary, "/bytes_in"), 300 * 100, "{summary}");

    // Nothing listens on this port: every attempt is refused.
    let refused = run_bench(
        &net,
        &[
            "tcp-cps",
            "--target",
            "198.18.240.2:7001",
            "--concurrency",
            "2",
            "--duration",
            "1",
        ],
    )?;
    let attempts = num(&refused, "/counts/attempted");
    assert!(attempts > 0, "{refused}");
    assert_eq!(num(&refused, "/counts/completed"), 0, "{refused}");
    assert_eq!(num(&refused, "/counts/failed"), attempts, "{refused}");
    assert_eq!(num(&refused, "/failures/refused"), attempts, "{refused}");
    Ok(())
}

#[test]
fn udp_rr_reports_loss_from_random_drops() -> Result<()> {
    let net = net("udp_rr_reports_loss_from_random_drops")?;
    let port = "9000";
    let addr = format!("{SERVER_IP}:{port}");
    // The server namespace drops a random quarter of the requests.
    let rules = format!(
        "table inet xlbperf {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    udp dport {port} numgen random mod 4 0 counter drop\n  }}\n}}\n"
    );
    net.server.run_input("nft", &["-f", "-"], rules.as_bytes())?;
    let sink = start_sink(&net, "udp", &addr, "u1")?;

    let report = run_bench(
        &net,
        &[
            "udp",
            "--target",
            &addr,
            "--mode",
            "rr",
            "--rate",
            "1000",
            "--duration",
            "3",
            "--concurrency",
            "2",
            "--timeout",
            "1000",
        ],
    )?;
    let sent = num(&report, "/counts/sent");
    let received = num(&report, "/counts/received");
    let lost = num(&report, "/counts/lost");
    let late = num(&report, "/counts/late");
    assert_eq!(num(&report, "/counts/scheduled"), 3000, "{report}");
    assert_eq!(sent, 3000, "{report}");
    assert_eq!(num(&report, "/counts/send_failed"), 0, "{report}");
    assert_eq!(lost, sent - received, "{report}");
    let ratio = lost as f64 / sent as f64;
    assert!((0.15..=0.35).contains(&ratio), "loss {ratio} not near 25%: {report}");
    let reported_ratio = report["loss_ratio"].as_f64().expect("loss_ratio");
    assert!((reported_ratio - ratio).abs() < 1e-9, "{report}");
    assert_eq!(num(&report, "/latency_us/rtt/count"), received, "{report}");
    assert_eq!(servers(&report), [("u1".to_owned(), received)], "{report}");

    // What the kernel dropped and what the sink answered add up exactly.
    let dropped = nft_counter(&net.server, "xlbperf", "input")?;
    let summary = stop_sink(&sink)?;
    let answered = num(&summary, "/datagrams");
    assert_eq!(answered + dropped, sent, "sink {summary}, nft dropped {dropped}");
    assert_eq!(num(&summary, "/replies"), answered, "{summary}");
    // A reply later than the timeout counts as lost (and late), not received.
    assert_eq!(lost, dropped + late, "nft dropped {dropped}: {report}");
    Ok(())
}

#[test]
fn udp_blast_sent_matches_sink_received() -> Result<()> {
    let net = net("udp_blast_sent_matches_sink_received")?;
    let addr = format!("{SERVER_IP}:9100");
    let sink = start_sink(&net, "udp", &addr, "b1")?;
    let errors_before = udp_rcvbuf_errors(&net.server)?;
    let report = run_bench(
        &net,
        &[
            "udp",
            "--target",
            &addr,
            "--mode",
            "blast",
            "--rate",
            "2000",
            "--duration",
            "1",
            "--size",
            "200",
        ],
    )?;
    let sent = num(&report, "/counts/sent");
    assert_eq!(num(&report, "/counts/scheduled"), 2000, "{report}");
    assert_eq!(sent + num(&report, "/counts/send_failed"), 2000, "{report}");
    assert!(report["latency_us"].is_null(), "{report}");
    // Blast datagrams get no answer; every one either reached the sink or
    // was dropped by the server's socket buffer.
    let dropped = udp_rcvbuf_errors(&net.server)? - errors_before;
    let summary = stop_sink(&sink)?;
    assert_eq!(num(&summary, "/datagrams") + dropped, sent, "{summary}");
    assert_eq!(num(&summary, "/replies"), 0, "{summary}");
    assert_eq!(num(&summary, "/bytes_in"), num(&summary, "/datagrams") * 200);
    Ok(())
}

#[test]
fn http_open_loop_issues_the_whole_schedule() -> Result<()> {
    let net = net("http_open_loop_issues_the_whole_schedule")?;
    let addr = "198.18.240.2:8080";
    let sink = start_sink(&net, "http", addr, "o1")?;
    let (rate, duration) = (200, 2);
    let report = run_bench(
        &net,
        &[
            "http",
            "--target",
            addr,
            "--rate",
            &rate.to_string(),
            "--duration",
            &duration.to_string(),
            "--connections",
            "4",
        ],
    )?;
    let scheduled = rate * duration;
    assert_eq!(num(&report, "/counts/scheduled"), scheduled, "{report}");
    assert_eq!(num(&report, "/counts/issued"), scheduled, "{report}");
    assert_eq!(num(&report, "/counts/not_issued"), 0, "{report}");
    let completed = num(&report, "/counts/completed");
    assert_eq!(completed + num(&report, "/counts/failed"), scheduled, "{report}");
    assert_eq!(report["params"]["latency_from"], "intended", "{report}");
    assert_eq!(num(&report, "/latency_us/response/count"), completed);
    let summary = stop_sink(&sink)?;
    assert_eq!(num(&summary, "/requests"), completed, "{summary}");
    Ok(())
}

#[test]
fn interrupted_generator_still_reports_true_counts() -> Result<()> {
    let net = net("interrupted_generator_still_reports_true_counts")?;
    let addr = "198.18.240.2:8080";
    let sink = start_sink(&net, "http", addr, "i1")?;
    let args = [
        "http",
        "--target",
        addr,
        "--connections",
        "2",
        "--duration",
        "60",
        "--json",
    ];
    let generator = net.lab.spawn(&net.client, bench(), &args)?;
    wait_until_ok(Duration::from_secs(10), "both generator connections", || {
        generator.check_running()?;
        let filter = "( sport = :8080 )";
        let established = net
            .server
            .run("ss", &["-H", "-t", "-n", "state", "established", filter])?;
        ensure!(established.lines().count() >= 2, "not connected yet");
        Ok(())
    })?;
    generator.signal(libc::SIGINT)?;
    let status = generator
        .wait_timeout(Duration::from_secs(10))?
        .context("the generator did not stop on SIGINT")?;
    ensure!(
        status.success(),
        "generator exited with {status}: {}",
        generator.stderr()
    );
    let report: Value = serde_json::from_str(generator.stdout().trim())
        .with_context(|| format!("no JSON report: {}", generator.stdout()))?;
    let completed = num(&report, "/counts/completed");
    assert!(completed > 0, "{report}");
    assert_eq!(num(&report, "/counts/issued"), completed, "{report}");
    assert_eq!(num(&report, "/counts/failed"), 0, "{report}");
    assert_eq!(num(&report, "/counts/connections_opened"), 2, "{report}");
    let summary = stop_sink(&sink)?;
    assert_eq!(num(&summary, "/requests"), completed, "{summary}");
    Ok(())
}
