//! HA acceptance: two xlb nodes on shared links, long-lived flows through the VIP, the master killed or drained.
//!
//! Lab: `net` holds two bridges. br-ext: client (198.18.0.1), lb1 (kernel .2, xlb .10), lb2 (kernel .3, xlb .11);
//! VIP 198.18.0.100. br-int: lb1 (xlb 198.19.0.10), lb2 (xlb 198.19.0.11), servers 198.19.0.2-.4; the floating
//! local IP 198.19.0.20 is the FULLNAT source and moves with mastership. VRRP and sync run on the datapath from
//! each node's xlb address on ext0 (advert interval 200 ms).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use xlb_ha::sync::{MessageType, SyncMessage};
use xlb_tests::appliance::Appliance;
use xlb_tests::lab::{wait_until_ok, workspace_bin, Lab, Netns, Proc};
use xlb_tests::traffic::{echo_stream, in_ns, StreamPace, TIMEOUT};

const VIP: &str = "198.18.0.100";
const SERVERS: [&str; 3] = ["198.19.0.2", "198.19.0.3", "198.19.0.4"];

struct Pair {
    lab: Lab,
    /// Queues (and workers) per xlb interface.
    queues: u32,
    net: Netns,
    client: Netns,
    lbs: [Netns; 2],
    _sinks: Vec<Proc>,
}

fn pair(name: &str) -> Result<Pair> {
    pair_with_queues(name, 1)
}

/// [`pair`] with `queues` queues on each xlb interface (one worker per queue).
fn pair_with_queues(name: &str, queues: u32) -> Result<Pair> {
    let lab = Lab::new(name)?;
    let net = lab.netns("net")?;
    let client = lab.netns("client")?;
    let lb1 = lab.netns("lb1")?;
    let lb2 = lab.netns("lb2")?;
    let servers = lab.netns("servers")?;
    lab.veth((&client, "cli0"), (&net, "p-cli"))?;
    lab.veth_queues((&lb1, "ext0"), (&net, "p-lb1e"), queues)?;
    lab.veth_queues((&lb2, "ext0"), (&net, "p-lb2e"), queues)?;
    lab.veth_queues((&lb1, "int0"), (&net, "p-lb1i"), queues)?;
    lab.veth_queues((&lb2, "int0"), (&net, "p-lb2i"), queues)?;
    lab.veth((&servers, "srv0"), (&net, "p-srv"))?;
    lab.bridge(&net, "br-ext", &["p-cli", "p-lb1e", "p-lb2e"])?;
    lab.bridge(&net, "br-int", &["p-lb1i", "p-lb2i", "p-srv"])?;
    client.addr("cli0", "198.18.0.1/24")?;
    lb1.addr("ext0", "198.18.0.2/24")?;
    lb2.addr("ext0", "198.18.0.3/24")?;
    for lb in [&lb1, &lb2] {
        lb.link_up("int0")?;
        lb.disable_offloads("ext0")?;
    }
    for s in SERVERS {
        servers.addr("srv0", &format!("{s}/24"))?;
    }
    client.disable_offloads("cli0")?;
    servers.disable_offloads("srv0")?;
    let bench = workspace_bin("xlb-bench")?.display().to_string();
    let mut sinks = Vec::new();
    for (i, ip) in SERVERS.iter().enumerate() {
        let name = format!("s{}", i + 1);
        sinks.push(lab.spawn(
            &servers,
            &bench,
            &[
                "sink",
                "--listen",
                &format!("{ip}:8080"),
                "--proto",
                "tcp",
                "--name",
                &name,
            ],
        )?);
        sinks.push(lab.spawn(
            &servers,
            &bench,
            &[
                "sink",
                "--listen",
                &format!("{ip}:5353"),
                "--proto",
                "udp",
                "--name",
                &name,
            ],
        )?);
    }
    servers.wait_tcp_listen(8080, TIMEOUT)?;
    std::fs::write(
        lab.dir().join("sync.key"),
        b"0123456789abcdef0123456789abcdef-xlb-test-key",
    )?;
    Ok(Pair {
        lab,
        queues,
        net,
        client,
        lbs: [lb1, lb2],
        _sinks: sinks,
    })
}

fn config(lab: &Lab, node: usize, priority: u8) -> String {
    config_with_queues(lab, node, priority, 1)
}

fn config_with_queues(lab: &Lab, node: usize, priority: u8, queues: u32) -> String {
    let key = lab.dir().join("sync.key").display().to_string();
    let list = (0..queues).map(|q| q.to_string()).collect::<Vec<_>>().join(", ");
    format!(
        r#"
[node]
name = "lb{n}"
control_socket = "CONTROL_SOCKET"

[[interface]]
name = "ext0"
queues = [{list}]
cores = [{list}]
addresses = ["198.18.0.{ext}/24"]

[[interface]]
name = "int0"
queues = [{list}]
cores = [{list}]
addresses = ["198.19.0.{int}/24"]

[[listener]]
name = "web"
vip = "{VIP}"
port = 80
protocol = "tcp"
scheduler = "rr"
group = "web"

[[listener]]
name = "dns"
vip = "{VIP}"
port = 53
protocol = "udp"
scheduler = "rr"
group = "dns"

[[group]]
name = "web"
servers = [{{ addr = "198.19.0.2:8080" }}, {{ addr = "198.19.0.3:8080" }}, {{ addr = "198.19.0.4:8080" }}]

[[group]]
name = "dns"
servers = [{{ addr = "198.19.0.2:5353" }}, {{ addr = "198.19.0.3:5353" }}, {{ addr = "198.19.0.4:5353" }}]

[ha]
vrid = 51
priority = {priority}
advert_interval_cs = 20
interface = "ext0"
local_ips = ["198.19.0.20/24"]
sync_group = "224.0.0.81:8848"
sync_threshold = 3
auth_key_file = "{key}"
"#,
        n = node + 1,
        ext = 10 + node,
        int = 10 + node,
    )
}

fn ha_state(xlb: &Appliance) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&xlb.xlbctl(&["ha", "--json"])?)?)
}

/// Starts both nodes and waits until lb1 (priority 200) is master and lb2 backup.
fn start_pair(t: &Pair) -> Result<(Appliance, Appliance)> {
    start_pair_with(t, "")
}

/// [`start_pair`] with `extra` appended to both configs (after `[ha]`: more `[ha]` keys, then other tables).
fn start_pair_with(t: &Pair, extra: &str) -> Result<(Appliance, Appliance)> {
    let config = |node, priority| config_with_queues(&t.lab, node, priority, t.queues) + extra;
    let lb1 = Appliance::start(&t.lab, &t.lbs[0], "lb1", &config(0, 200))?;
    let lb2 = Appliance::start(&t.lab, &t.lbs[1], "lb2", &config(1, 100))?;
    wait_until_ok(Duration::from_secs(15), "lb1 master, lb2 backup", || {
        let (a, b) = (ha_state(&lb1)?, ha_state(&lb2)?);
        ensure!(
            a["state"] == "master" && b["state"] == "backup",
            "lb1 {} lb2 {}",
            a["state"],
            b["state"]
        );
        Ok(())
    })?;
    Ok((lb1, lb2))
}

/// UDP flows: each socket asks `WHO?` every 50 ms for `seconds`; returns per flow the servers that answered and
/// the number of answers.
fn udp_flows(target: SocketAddr, flows: usize, seconds: u64) -> Result<Vec<(Vec<String>, usize)>> {
    let handles: Vec<_> = (0..flows)
        .map(|_| {
            std::thread::spawn(move || -> Result<(Vec<String>, usize)> {
                let sock = UdpSocket::bind("198.18.0.1:0")?;
                sock.connect(target)?;
                sock.set_read_timeout(Some(Duration::from_millis(200)))?;
                let deadline = Instant::now() + Duration::from_secs(seconds);
                let (mut servers, mut answers) = (Vec::<String>::new(), 0);
                let mut buf = [0u8; 64];
                while Instant::now() < deadline {
                    sock.send(b"WHO?")?;
                    if let Ok(n) = sock.recv(&mut buf) {
                        answers += 1;
                        let name = String::from_utf8_lossy(&buf[..n])
                            .trim()
                            .trim_start_matches("server=")
                            .to_string();
                        if servers.last() != Some(&name) {
                            servers.push(name);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok((servers, answers))
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().map_err(|_| anyhow::anyhow!("udp flow panicked"))?)
        .collect()
}

/// Runs TCP streams and UDP flows through the VIP while `event` happens after 3 s; checks every flow survived.
fn failover(
    t: &Pair,
    lb1: &Appliance,
    lb2: &Appliance,
    streams: usize,
    event: impl FnOnce() -> Result<()>,
) -> Result<Duration> {
    let target: SocketAddr = format!("{VIP}:80").parse()?;
    let udp: SocketAddr = format!("{VIP}:53").parse()?;
    let gap = Arc::new(AtomicU64::new(0));
    let client = t.client.clone();
    let g = gap.clone();
    let tcp = std::thread::spawn(move || {
        in_ns(&client, move || {
            let hs: Vec<_> = (0..streams)
                .map(|_| {
                    let g = g.clone();
                    std::thread::spawn(move || {
                        let pace = StreamPace {
                            duration: Duration::from_secs(12),
                            chunk: 512,
                            pause: Duration::from_millis(20),
                        };
                        let report = echo_stream(target, pace)?;
                        g.fetch_max(report.longest_pause.as_millis() as u64, Ordering::Relaxed);
                        Ok(report.bytes)
                    })
                })
                .collect();
            Ok(hs
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("panicked"))))
                .collect::<Vec<_>>())
        })
    });
    let client = t.client.clone();
    let udp_flows = std::thread::spawn(move || in_ns(&client, move || udp_flows(udp, 10, 12)));
    // Let every flow pass the sync threshold, check the backup holds them, then fail.
    wait_until_ok(Duration::from_secs(5), "the backup to hold the synced flows", || {
        let conns: serde_json::Value = serde_json::from_str(&lb2.xlbctl(&["conns", "--json", "--limit", "10000"])?)?;
        let n = conns["conns"].as_array().map_or(0, |a| a.len());
        ensure!(n >= streams + 10, "{n} synced entries on the backup");
        Ok(())
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let failed_at = Instant::now();
    event()?;
    // Traffic flows again when a new connection through the VIP succeeds.
    let client = t.client.clone();
    let back = in_ns(&client, move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(s) = TcpStream::connect_timeout(&target, Duration::from_millis(200)) {
                s.set_read_timeout(Some(Duration::from_millis(500)))?;
                let mut r = BufReader::new(s);
                r.get_mut().write_all(b"x\n")?;
                let mut line = String::new();
                if r.read_line(&mut line).is_ok() && line.starts_with("server=") {
                    return Ok(Instant::now());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!("no new connection through the VIP within 10 s")
    })?;
    let failover = back - failed_at;
    let results = tcp.join().map_err(|_| anyhow::anyhow!("streams panicked"))??;
    let mut ok = 0;
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(_) => ok += 1,
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    ensure!(
        ok == streams,
        "{ok} of {streams} TCP streams survived byte-exact; failures: {errors:?}"
    );
    let flows = udp_flows.join().map_err(|_| anyhow::anyhow!("udp panicked"))??;
    for (servers, answers) in &flows {
        ensure!(
            servers.len() == 1,
            "a UDP flow changed server across the failover: {servers:?}"
        );
        ensure!(*answers > 100, "a UDP flow got only {answers} answers");
    }
    eprintln!(
        "failover: new connections flow {} ms after the event; longest pause seen by a stream {} ms; {ok} streams byte-exact, 10 UDP flows kept their server; lb2 {}",
        failover.as_millis(),
        gap.load(Ordering::Relaxed),
        ha_state(lb2).map(|s| s.to_string()).unwrap_or_default()
    );
    let _ = lb1;
    Ok(failover)
}

#[test]
fn master_killed_streams_continue_on_the_backup() -> Result<()> {
    kill_master_with_streams(&pair("hakill")?, 50)
}

/// The same with every TCP connection opened by the SYN proxy (`syn_proxy = "always"`): the backup installs
/// them with their sequence delta (sync records carry it), so the streams continue translated on lb2.
#[test]
fn syn_proxied_streams_continue_on_the_backup() -> Result<()> {
    let t = pair("hasynproxy")?;
    let (lb1, lb2) = start_pair_with(&t, "\n[l4]\nsyn_proxy = \"always\"\n")?;
    let pid = lb1.proc().pid();
    failover(&t, &lb1, &lb2, 20, || {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        Ok(())
    })?;
    let web = lb2.stats()?["l4"]["listeners"][0].clone();
    ensure!(
        web["name"] == "web" && web["syn_cookies_valid"].as_u64() >= Some(1),
        "lb2 opened no connection through its own proxy after the takeover: {web}"
    );
    Ok(())
}

/// `kill -9` of lb1 (master) while `streams` TCP streams and 10 UDP flows run: lb2 takes over without loss.
fn kill_master_with_streams(t: &Pair, streams: usize) -> Result<()> {
    let (lb1, lb2) = start_pair(t)?;
    let pid = lb1.proc().pid();
    failover(t, &lb1, &lb2, streams, || {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        Ok(())
    })?;
    ensure!(ha_state(&lb2)?["state"] == "master");
    Ok(())
}

/// Established entries of the web listener on `xlb`.
fn established_web(xlb: &Appliance) -> Result<usize> {
    let doc: serde_json::Value =
        serde_json::from_str(&xlb.xlbctl(&["conns", "--listener", "web", "--state", "established", "--json"])?)?;
    Ok(doc["conns"].as_array().map_or(0, |a| a.len()))
}

/// Issue 9: a flow that lives much longer than its state's timeout, with traffic, is refreshed on the backup
/// (`sync_refresh_s`), so it survives `kill -9` of the master. Established timeout 5 s, refresh 1 s, data every
/// 500 ms; the master is killed after 12 s of streaming (without the refresh, the backup's copy would have
/// expired 5 s after the handshake and the stream would die with the master).
#[test]
fn long_lived_flow_is_refreshed_on_the_backup_and_survives_failover() -> Result<()> {
    let t = pair("harefresh")?;
    let (lb1, lb2) = start_pair_with(&t, "sync_refresh_s = 1\n\n[l4.timeouts]\ntcp_established = 5\n")?;
    let target: SocketAddr = format!("{VIP}:80").parse()?;
    let client = t.client.clone();
    let stream = std::thread::spawn(move || {
        in_ns(&client, move || {
            let pace = StreamPace {
                duration: Duration::from_secs(20),
                chunk: 256,
                pause: Duration::from_millis(500),
            };
            echo_stream(target, pace)
        })
    });
    wait_until_ok(TIMEOUT, "the backup to hold the flow", || {
        ensure!(established_web(&lb2)? == 1, "not synced yet");
        Ok(())
    })?;
    // More than twice the established timeout since the flow was first synced: the backup still holds it.
    std::thread::sleep(Duration::from_secs(12));
    ensure!(
        established_web(&lb2)? == 1,
        "the backup lost the live flow (its copy expired): {}",
        lb2.xlbctl(&["conns", "--json"])?
    );
    let pid = lb1.proc().pid();
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_until_ok(Duration::from_secs(10), "lb2 to become master", || {
        ensure!(ha_state(&lb2)?["state"] == "master", "not yet");
        Ok(())
    })?;
    // The stream runs on through lb2 and every byte comes back as sent.
    let report = stream
        .join()
        .map_err(|_| anyhow::anyhow!("stream panicked"))?
        .context("the long-lived stream across the failover")?;
    eprintln!(
        "long-lived flow: {} bytes byte-exact via {} across kill -9 of the master (longest pause {} ms); lb2 {}",
        report.bytes,
        report.server,
        report.longest_pause.as_millis(),
        ha_state(&lb2)?
    );
    Ok(())
}

/// The same with two workers per node: flows, their replies, HA packets and synced entries land on either
/// worker and must reach the right one.
#[test]
fn two_worker_nodes_fail_over_without_loss() -> Result<()> {
    kill_master_with_streams(&pair_with_queues("hakill2q", 2)?, 30)
}

#[test]
fn drained_master_hands_over_without_loss() -> Result<()> {
    let t = pair("hadrain")?;
    let (lb1, lb2) = start_pair(&t)?;
    failover(&t, &lb1, &lb2, 20, || lb1.xlbctl(&["ha", "drain"]).map(drop))?;
    ensure!(ha_state(&lb2)?["state"] == "master");
    let s1 = ha_state(&lb1)?;
    ensure!(
        s1["draining"] == true && s1["state"] != "master",
        "lb1 after drain: {s1}"
    );
    Ok(())
}

#[test]
fn a_master_whose_xdp_filter_is_detached_hands_over() -> Result<()> {
    let t = pair("halost")?;
    let (lb1, lb2) = start_pair(&t)?;
    // Its adverts would still go out (TX needs no XDP program) while nothing reaches its workers.
    t.lbs[0].ip(&["link", "set", "dev", "ext0", "xdp", "off"])?;
    wait_until_ok(
        Duration::from_secs(15),
        "lb2 master after lb1 lost its datapath",
        || {
            let (a, b) = (ha_state(&lb1)?, ha_state(&lb2)?);
            ensure!(
                b["state"] == "master" && a["state"] != "master" && a["draining"] == true,
                "lb1 {a} lb2 {b}"
            );
            Ok(())
        },
    )?;
    let target: SocketAddr = format!("{VIP}:80").parse()?;
    let answer = in_ns(&t.client, move || {
        let s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut r = BufReader::new(s);
        r.get_mut().write_all(b"x\n")?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        Ok(line)
    })?;
    ensure!(answer.starts_with("server="), "no answer through lb2: {answer:?}");
    ensure!(
        lb1.proc()
            .stderr()
            .contains("datapath lost: handing HA mastership over"),
        "{}",
        lb1.proc().stderr()
    );
    Ok(())
}

#[test]
fn forged_sync_and_vrrp_packets_change_nothing_and_are_counted() -> Result<()> {
    let t = pair("haforge")?;
    let (lb1, lb2) = start_pair(&t)?;
    let before = ha_state(&lb2)?;
    // Random bytes and a message-shaped datagram with a wrong key, to the sync group.
    in_ns(&t.client, || {
        let sock = UdpSocket::bind("198.18.0.1:0")?;
        sock.set_multicast_ttl_v4(1)?;
        let mut forged = b"XLBS".to_vec();
        forged.extend((0..200u8).map(|i| i.wrapping_mul(37)));
        for _ in 0..5 {
            sock.send_to(&forged, "224.0.0.81:8848")?;
            sock.send_to(&[0u8; 40], "224.0.0.81:8848")?;
        }
        Ok(())
    })?;
    // A VRRP advert claiming priority 255 with a broken checksum.
    in_ns(&t.client, || {
        // SAFETY: raw socket for protocol 112, closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, 112) };
        ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let ttl: libc::c_int = 255;
        // SAFETY: valid option value of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_TTL,
                (&ttl as *const libc::c_int).cast(),
                4,
            )
        };
        let iface = libc::in_addr {
            s_addr: u32::from_ne_bytes([198, 18, 0, 1]),
        };
        // SAFETY: valid option value of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                (&iface as *const libc::in_addr).cast(),
                4,
            )
        };
        let advert = [0x31, 51, 255, 1, 0, 20, 0xde, 0xad, 198, 18, 0, 100];
        let mut dst: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        dst.sin_family = libc::AF_INET as u16;
        dst.sin_addr.s_addr = u32::from_ne_bytes([224, 0, 0, 18]);
        for _ in 0..5 {
            // SAFETY: valid buffers of the lengths passed.
            unsafe {
                libc::sendto(
                    fd,
                    advert.as_ptr().cast(),
                    advert.len(),
                    0,
                    (&dst as *const libc::sockaddr_in).cast(),
                    16,
                )
            };
        }
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(fd) };
        Ok(())
    })?;
    let after = wait_until_ok(TIMEOUT, "forged packets to be counted", || {
        let s = ha_state(&lb2)?;
        ensure!(
            s["sync_rejected"].as_u64() >= Some(10) && s["vrrp_rejected"].as_u64() >= Some(5),
            "{s}"
        );
        Ok(s)
    })?;
    ensure!(
        after["sync_records_received"] == before["sync_records_received"],
        "forged records installed: {after}"
    );
    ensure!(
        ha_state(&lb1)?["state"] == "master" && after["state"] == "backup",
        "mastership changed"
    );
    Ok(())
}

/// (client, server, state) of every connection entry on `xlb`.
fn conn_states(xlb: &Appliance) -> Result<Vec<(String, String, String)>> {
    let v: serde_json::Value = serde_json::from_str(&xlb.xlbctl(&["conns", "--json"])?)?;
    let mut rows: Vec<_> = v["conns"]
        .as_array()
        .context("conns")?
        .iter()
        .map(|c| (c["client"].to_string(), c["server"].to_string(), c["state"].to_string()))
        .collect();
    rows.sort();
    Ok(rows)
}

/// Genuine sync datagrams recorded off the wire and sent again later (from the client's host) are refused as
/// replays and counted; the backup's table keeps the state the later messages gave it.
#[test]
fn replayed_sync_messages_change_nothing_and_are_counted() -> Result<()> {
    let t = pair("hareplay")?;
    let (_lb1, lb2) = start_pair(&t)?;
    // Record the sync group from the client's host while 5 connections open, talk and close through lb1.
    let recording = {
        let client = t.client.clone();
        std::thread::spawn(move || {
            in_ns(&client, || {
                let sock = UdpSocket::bind("0.0.0.0:8848")?;
                sock.join_multicast_v4(&"224.0.0.81".parse()?, &"198.18.0.1".parse()?)?;
                sock.set_read_timeout(Some(Duration::from_millis(100)))?;
                let (mut got, mut buf, until) = (Vec::new(), [0u8; 2048], Instant::now() + Duration::from_secs(4));
                while Instant::now() < until {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        got.push((from, buf[..n].to_vec()));
                    }
                }
                Ok(got)
            })
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let target: SocketAddr = format!("{VIP}:80").parse()?;
    in_ns(&t.client, move || {
        for _ in 0..5 {
            let mut s = BufReader::new(TcpStream::connect_timeout(&target, TIMEOUT)?);
            s.get_mut().set_read_timeout(Some(TIMEOUT))?;
            s.get_mut().write_all(b"hello\n")?;
            let mut line = String::new();
            s.read_line(&mut line)?;
            s.read_line(&mut line)?;
        }
        Ok(())
    })?;
    let recorded = recording.join().map_err(|_| anyhow::anyhow!("recorder panicked"))??;
    // lb1's datagrams (from its HA address; lb2's own would be refused as our own, not as replays).
    let lb1_sent: Vec<Vec<u8>> = recorded
        .into_iter()
        .filter(|(from, _)| from.ip().to_string() == "198.18.0.10")
        .map(|(_, bytes)| bytes)
        .collect();
    // Among them, the upserts of the 5 connections as they opened (states older than lb2's now).
    let records: usize = lb1_sent
        .iter()
        .filter_map(|b| SyncMessage::new_checked(&b[..]).ok())
        .filter(|m| MessageType::from_u8(m.msg_type()) == Some(MessageType::Conns))
        .map(|m| m.count())
        .sum();
    ensure!(
        records >= 5,
        "{records} connection records among {} datagrams from lb1",
        lb1_sent.len()
    );
    // The backup knows the 5 connections, closed.
    let states = wait_until_ok(TIMEOUT, "lb2 to hold the 5 closed connections", || {
        let rows = conn_states(&lb2)?;
        ensure!(
            rows.len() == 5 && rows.iter().all(|r| r.2 != "\"established\"" && r.2 != "\"syn_recv\""),
            "{rows:?}"
        );
        Ok(rows)
    })?;
    let before = ha_state(&lb2)?;
    let n = lb1_sent.len() as u64;
    in_ns(&t.client, move || {
        let sock = UdpSocket::bind("198.18.0.1:0")?;
        sock.set_multicast_ttl_v4(1)?;
        for bytes in &lb1_sent {
            sock.send_to(bytes, "224.0.0.81:8848")?;
        }
        Ok(())
    })?;
    let after = wait_until_ok(TIMEOUT, "the replays to be counted", || {
        let s = ha_state(&lb2)?;
        let replayed = s["sync_replayed"].as_u64().unwrap_or(0) - before["sync_replayed"].as_u64().unwrap_or(0);
        ensure!(replayed >= n, "{replayed} of {n} replays counted: {s}");
        Ok(s)
    })?;
    let replayed = after["sync_replayed"].as_u64().unwrap_or(0) - before["sync_replayed"].as_u64().unwrap_or(0);
    ensure!(replayed == n, "{replayed} replays counted for {n} sent: {after}");
    ensure!(
        after["sync_records_received"] == before["sync_records_received"],
        "replayed records were taken: {before} -> {after}"
    );
    ensure!(conn_states(&lb2)? == states, "the backup's table changed");
    eprintln!("{n} recorded sync datagrams ({records} connection records) replayed: all refused and counted");
    Ok(())
}

#[test]
fn restarted_node_resyncs_and_takes_traffic_back_without_loss() -> Result<()> {
    let t = pair("harestart")?;
    let (lb1, lb2) = start_pair(&t)?;
    let lab = &t.lab;
    let lb1_ns = t.lbs[0].clone();
    let mut restarted = None;
    // Maintenance of lb1 while flows run: drain (lb2 takes over), stop, start again (an upgrade would swap the
    // binary here). The new lb1 pulls the table from lb2, then preempts back (priority 200).
    failover(&t, &lb1, &lb2, 20, || {
        lb1.xlbctl(&["ha", "drain"])?;
        wait_until_ok(TIMEOUT, "lb2 to take over", || {
            ensure!(ha_state(&lb2)?["state"] == "master", "not yet");
            Ok(())
        })?;
        let status = lb1.terminate()?;
        ensure!(status.success(), "lb1 exited with {status}");
        let again = Appliance::start(lab, &lb1_ns, "lb1-new", &config(lab, 0, 200))?;
        wait_until_ok(
            Duration::from_secs(10),
            "the restarted lb1 to resync and become master",
            || {
                let s = ha_state(&again)?;
                ensure!(s["resynced"] == true && s["state"] == "master", "{s}");
                Ok(())
            },
        )?;
        restarted = Some(again);
        Ok(())
    })?;
    let again = restarted.context("lb1 was not restarted")?;
    let s = ha_state(&again)?;
    ensure!(
        s["sync_records_received"].as_u64() > Some(0),
        "the restarted node received no table: {s}"
    );
    ensure!(
        ha_state(&lb2)?["state"] == "backup",
        "lb2 did not yield to the restarted lb1"
    );
    Ok(())
}

#[test]
fn sync_converges_when_a_share_of_sync_messages_is_dropped() -> Result<()> {
    let t = pair("haloss")?;
    let (lb1, lb2) = start_pair(&t)?;
    // lb2 loses every other sync datagram sent to it (data, acks, heartbeats alike): deterministic loss, on the
    // bridge (sync reaches xlb through XDP, before the node's own netfilter).
    t.net.run("nft", &["add", "table", "bridge", "loss"])?;
    t.net.run(
        "nft",
        &["add chain bridge loss forward { type filter hook forward priority 0; }"],
    )?;
    t.net.run(
        "nft",
        &["add rule bridge loss forward oifname \"p-lb2e\" udp dport 8848 numgen inc mod 2 0 counter drop"],
    )?;
    let target: SocketAddr = format!("{VIP}:80").parse()?;
    // 40 connections that stay open (established, synced after 3 client packets).
    let client = t.client.clone();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        in_ns(&client, move || {
            let mut conns = Vec::new();
            for _ in 0..40 {
                let s = TcpStream::connect_timeout(&target, TIMEOUT)?;
                s.set_read_timeout(Some(TIMEOUT))?;
                let mut r = BufReader::new(s);
                for i in 0..3 {
                    r.get_mut().write_all(format!("line {i}\n").as_bytes())?;
                    let mut line = String::new();
                    r.read_line(&mut line)?;
                }
                conns.push(r);
            }
            let _ = rx.recv_timeout(Duration::from_secs(30));
            Ok(conns.len())
        })
    });
    let established = |xlb: &Appliance| -> Result<usize> {
        let doc: serde_json::Value =
            serde_json::from_str(&xlb.xlbctl(&["conns", "--listener", "web", "--state", "established", "--json"])?)?;
        Ok(doc["conns"].as_array().map_or(0, |a| a.len()))
    };
    wait_until_ok(
        Duration::from_secs(20),
        "the backup's table to converge despite loss",
        || {
            let (a, b) = (established(&lb1)?, established(&lb2)?);
            ensure!(a == 40 && b == 40, "master {a}, backup {b} established entries");
            Ok(())
        },
    )?;
    let dropped = t.net.run("nft", &["list", "table", "bridge", "loss"])?;
    eprintln!(
        "converged with loss: {}",
        dropped.lines().find(|l| l.contains("counter")).unwrap_or("").trim()
    );
    ensure!(!dropped.contains("packets 0 "), "nothing was dropped: {dropped}");
    let _ = tx.send(());
    ensure!(holder.join().map_err(|_| anyhow::anyhow!("holder panicked"))?? == 40);
    Ok(())
}

/// MAC of the neighbour entry the client has for the VIP, as "aa:bb:..".
fn client_vip_mac(client: &Netns) -> Result<String> {
    let _ = client.output("ping", &["-c", "1", "-W", "1", VIP])?;
    let neigh = client.ip(&["neigh", "show", VIP])?;
    Ok(neigh
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or("")
        .to_string())
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[test]
fn keepalived_as_the_other_router_both_ways() -> Result<()> {
    use xlb_tests::keepalived::{Keepalived, KeepalivedConfig};
    let t = pair("hakad")?;
    let (xlb_ns, kad_ns) = (&t.lbs[0], &t.lbs[1]);
    // keepalived (priority 200) is master first; xlb (100) must yield.
    let kad = Keepalived::start(
        &t.lab,
        kad_ns,
        &KeepalivedConfig {
            name: "kad1",
            interface: "ext0",
            vrid: 51,
            priority: 200,
            advert_int: "0.2",
            vip: VIP,
        },
    )?;
    let xlb = Appliance::start(&t.lab, xlb_ns, "lb1", &config(&t.lab, 0, 100))?;
    wait_until_ok(Duration::from_secs(15), "keepalived master, xlb backup", || {
        ensure!(kad.log().contains("Entering MASTER STATE"), "keepalived not master yet");
        ensure!(ha_state(&xlb)?["state"] == "backup", "xlb {}", ha_state(&xlb)?["state"]);
        Ok(())
    })?;
    let (xlb_mac, kad_mac) = (mac_text(xlb_ns.mac("ext0")?), mac_text(kad_ns.mac("ext0")?));
    ensure!(
        client_vip_mac(&t.client)? == kad_mac,
        "the VIP is not at keepalived's node"
    );

    // keepalived crashes: xlb takes over and the client's ARP entry moves to xlb.
    let crashed = Instant::now();
    kad.crash()?;
    kad_ns.ip(&["addr", "del", &format!("{VIP}/32"), "dev", "ext0"])?; // a dead box answers nothing
    wait_until_ok(Duration::from_secs(10), "xlb to become master", || {
        ensure!(ha_state(&xlb)?["state"] == "master", "not yet");
        Ok(())
    })?;
    eprintln!(
        "xlb took over from a crashed keepalived in {} ms",
        crashed.elapsed().as_millis()
    );
    wait_until_ok(TIMEOUT, "the client to reach the VIP at xlb", || {
        ensure!(client_vip_mac(&t.client)? == xlb_mac, "neighbour not updated yet");
        Ok(())
    })?;
    let target: SocketAddr = format!("{VIP}:80").parse()?;
    in_ns(&t.client, move || {
        let s = TcpStream::connect_timeout(&target, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        let mut r = BufReader::new(s);
        r.get_mut().write_all(b"hi\n")?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        ensure!(line.starts_with("server="), "{line:?}");
        Ok(())
    })?;

    // The other way round: keepalived (50) joins and stays backup; xlb drains and keepalived takes over.
    let kad2 = Keepalived::start(
        &t.lab,
        kad_ns,
        &KeepalivedConfig {
            name: "kad2",
            interface: "ext0",
            vrid: 51,
            priority: 50,
            advert_int: "0.2",
            vip: VIP,
        },
    )?;
    wait_until_ok(TIMEOUT, "keepalived to be backup", || {
        ensure!(kad2.log().contains("Entering BACKUP STATE"), "not yet");
        Ok(())
    })?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        !kad2.log().contains("Entering MASTER STATE"),
        "keepalived took over from a higher-priority xlb"
    );
    ensure!(ha_state(&xlb)?["state"] == "master");
    kad2.check_log_clean()?;
    xlb.xlbctl(&["ha", "drain"])?;
    wait_until_ok(TIMEOUT, "keepalived to take over after xlb's drain", || {
        ensure!(kad2.log().contains("Entering MASTER STATE"), "not yet");
        ensure!(ha_state(&xlb)?["state"] != "master", "xlb still master");
        Ok(())
    })?;
    Ok(())
}
