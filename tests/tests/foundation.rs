//! Foundation acceptance: a real `xlb` on a veth in a lab, real kernel clients on the other side.
//!
//! Topology: namespace `client` (cli0, 198.18.0.1/24) ── veth ── namespace `lb` (ext0, kernel address
//! 198.18.0.2/24). xlb owns 198.18.0.10 on ext0; no kernel interface has that address.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use xlb_tests::appliance::Appliance;
use xlb_tests::lab::{wait_until_ok, workspace_bin, Lab, Netns};

const XLB_IP: &str = "198.18.0.10";
const KERNEL_IP: &str = "198.18.0.2";
const CLIENT_IP: &str = "198.18.0.1";

fn config(idle: &str) -> String {
    format!(
        r#"
[node]
name = "lb1"
control_socket = "CONTROL_SOCKET"

[[interface]]
name = "ext0"
queues = [0]
cores = [0]
idle = "{idle}"
addresses = ["{XLB_IP}/24"]

[datapath]
umem_frames = 4096
ring_size = 1024
"#
    )
}

/// Client and appliance namespaces joined by a veth. The client's TX checksum offload is off: AF_XDP gives
/// the appliance no checksum metadata, so it needs complete checksums, as a physical link delivers them.
fn two_namespaces(name: &str) -> Result<(Lab, Netns, Netns)> {
    let lab = Lab::new(name)?;
    let client = lab.netns("client")?;
    let lb = lab.netns("lb")?;
    lab.veth((&client, "cli0"), (&lb, "ext0"))?;
    client.addr("cli0", &format!("{CLIENT_IP}/24"))?;
    lb.addr("ext0", &format!("{KERNEL_IP}/24"))?;
    client.disable_offloads("cli0")?;
    Ok((lab, client, lb))
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 header (20 bytes, valid checksum unless `break_checksum`) to xlb's address, protocol
/// `proto`, claiming `total_len`, followed by `payload`.
fn ipv4_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    proto: u8,
    total_len: u16,
    payload: &[u8],
    break_checksum: bool,
) -> String {
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0, 198, 18, 0, 1, 198, 18, 0, 10,
    ];
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    let c = checksum(&ip) ^ if break_checksum { 0x5a5a } else { 0 };
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = Vec::new();
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(payload);
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn kernel_client_resolves_and_pings_an_address_only_xlb_owns() -> Result<()> {
    let (lab, client, lb) = two_namespaces("ping")?;
    let xlb = Appliance::start(&lab, &lb, "lb1", &config("adaptive"))?;

    // No kernel interface holds the address: only xlb can answer ARP and ping for it.
    let addrs = lb.ip(&["-o", "addr"])?;
    ensure!(!addrs.contains(XLB_IP), "the kernel must not own {XLB_IP}: {addrs}");

    let out = client.run("ping", &["-c", "3", "-i", "0.2", "-W", "2", XLB_IP])?;
    ensure!(out.contains("3 received"), "ping output: {out}");

    let neigh = client.ip(&["neigh", "show", XLB_IP])?;
    let mac = lb.mac("ext0")?;
    let mac_text = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    ensure!(
        neigh.contains(&mac_text),
        "client resolved {XLB_IP} to {neigh:?}, expected ext0's MAC {mac_text}"
    );

    ensure!(xlb.total("arp_replies")? >= 1, "xlb counted no ARP reply");
    ensure!(
        xlb.total("icmp_echo_replies")? >= 3,
        "xlb counted fewer than 3 echo replies"
    );
    Ok(())
}

#[test]
fn syn_to_an_unserved_port_is_reset_and_counted_while_kernel_traffic_passes() -> Result<()> {
    let (lab, client, lb) = two_namespaces("rst")?;
    // "SSH-like" service of the kernel itself, on the same veth as xlb.
    let echo = lab.spawn(
        &lb,
        "socat",
        &[&format!("TCP-LISTEN:2222,bind={KERNEL_IP},reuseaddr,fork"), "EXEC:cat"],
    )?;
    lb.wait_tcp_listen(2222, Duration::from_secs(5))?;
    let xlb = Appliance::start(&lab, &lb, "lb1", &config("adaptive"))?;

    // A TCP SYN to a port xlb does not serve: the kernel client sees "connection refused" (an RST).
    let out = client.output(
        "socat",
        &["-T", "3", "-", &format!("TCP:{XLB_IP}:22,connect-timeout=3")],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("Connection refused"),
        "expected an RST, socat said: {stderr}"
    );
    ensure!(xlb.total("tcp_resets")? >= 1, "no RST counted");
    ensure!(
        xlb.total("drops.tcp_no_listener")? >= 1,
        "no tcp_no_listener drop counted"
    );

    // UDP to an unserved port: ICMP port unreachable.
    let out = client.output("sh", &["-c", &format!("echo query | socat -T 2 - UDP:{XLB_IP}:5353")])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("Connection refused"),
        "expected ICMP port unreachable, socat said: {stderr}"
    );
    ensure!(xlb.total("icmp_unreachables")? >= 1, "no ICMP unreachable counted");
    ensure!(
        xlb.total("drops.udp_no_listener")? >= 1,
        "no udp_no_listener drop counted"
    );

    // Traffic to the kernel's own address on the same link still reaches the kernel (XDP_PASS).
    let reply = client.run_input(
        "socat",
        &["-T", "3", "-", &format!("TCP:{KERNEL_IP}:2222")],
        b"to the kernel\n",
    )?;
    ensure!(reply == "to the kernel\n", "kernel echo answered {reply:?}");
    let stats = xlb.stats()?;
    let passed = stats["interfaces"][0]["passed_not_ours"].as_u64().unwrap_or(0);
    ensure!(
        passed > 0,
        "the XDP filter passed nothing to the kernel: {}",
        stats["interfaces"]
    );
    echo.check_running()?;
    Ok(())
}

#[test]
fn malformed_frames_are_counted_drops_and_xlb_keeps_serving() -> Result<()> {
    let (lab, client, lb) = two_namespaces("malformed")?;
    let xlb = Appliance::start(&lab, &lb, "lb1", &config("adaptive"))?;
    client.ping(XLB_IP)?; // warm up ARP
    let dst = lb.mac("ext0")?;
    let src = client.mac("cli0")?;
    let before = xlb.stats()?["totals"]["drops"].clone();

    let frames = [
        // TCP with a 6-byte header.
        ipv4_frame(dst, src, 6, 26, &[0, 80, 0, 22, 0, 0], false),
        // Bad IPv4 header checksum.
        ipv4_frame(dst, src, 1, 28, &[8, 0, 0, 0, 0, 0, 0, 0], true),
        // Total length beyond the frame.
        ipv4_frame(dst, src, 17, 1400, &[0; 8], false),
        // UDP with a 3-byte header.
        ipv4_frame(dst, src, 17, 23, &[1, 2, 3], false),
    ];
    let rawsend = workspace_bin("xlb-rawsend")?;
    let mut args = vec!["cli0"];
    args.extend(frames.iter().map(String::as_str));
    client.run(&rawsend.display().to_string(), &args)?;

    let expect = [
        ("malformed_tcp", 1),
        ("bad_ipv4_checksum", 1),
        ("malformed_ipv4", 1),
        ("malformed_udp", 1),
    ];
    wait_until_ok(Duration::from_secs(5), "malformed frames to be counted", || {
        let drops = xlb.stats()?["totals"]["drops"].clone();
        for (reason, n) in expect {
            let delta = drops[reason].as_u64().unwrap_or(0) - before[reason].as_u64().unwrap_or(0);
            ensure!(delta == n, "{reason}: {delta} new drops, expected {n}");
        }
        Ok(())
    })?;
    // Still serving.
    xlb.proc().check_running()?;
    client
        .ping(XLB_IP)
        .context("xlb stopped answering after malformed input")?;
    Ok(())
}

/// A client whose veth keeps TX checksum offload on (the kernel's default) sends TCP and UDP with partial
/// checksums (CHECKSUM_PARTIAL: only the pseudo-header sum in the field). xlb cannot trust them: it drops them
/// as `bad_l4_checksum` (not `malformed_tcp`, and without answering), and logs the cause and the fix once for
/// the interface.
#[test]
fn partial_checksums_from_a_peer_with_tx_offload_are_counted_and_explained() -> Result<()> {
    let lab = Lab::new("txoffload")?;
    let client = lab.netns("client")?;
    let lb = lab.netns("lb")?;
    lab.veth((&client, "cli0"), (&lb, "ext0"))?;
    client.addr("cli0", &format!("{CLIENT_IP}/24"))?;
    lb.addr("ext0", &format!("{KERNEL_IP}/24"))?;
    // Offloads left as the kernel made them; the test is about TX checksum offload being on.
    let features = client.run("ethtool", &["-k", "cli0"])?;
    ensure!(
        features.contains("tx-checksum-ip-generic: on") || features.contains("tx-checksumming: on"),
        "cli0 should have TX checksum offload on by default:\n{features}"
    );
    let xlb = Appliance::start(&lab, &lb, "lb1", &config("adaptive"))?;
    client.ping(XLB_IP)?; // ICMP checksums are never offloaded: this works.
    let before = xlb.total("drops.bad_l4_checksum")?;

    // A TCP connection attempt (SYN, retransmitted once) and a UDP datagram to ports xlb does not serve: with
    // complete checksums they would be answered with an RST and an ICMP port unreachable.
    let tcp = client.output(
        "socat",
        &["-T", "2", "-", &format!("TCP:{XLB_IP}:22,connect-timeout=2")],
    )?;
    ensure!(!tcp.status.success(), "the connection should not have been answered");
    client.output("sh", &["-c", &format!("echo query | socat -T 1 - UDP:{XLB_IP}:5353")])?;

    let counted = wait_until_ok(Duration::from_secs(5), "bad_l4_checksum drops", || {
        let n = xlb.total("drops.bad_l4_checksum")? - before;
        ensure!(n >= 2, "{n} bad_l4_checksum drops");
        Ok(n)
    })?;
    ensure!(
        xlb.total("drops.malformed_tcp")? == 0,
        "partial checksums counted as malformed_tcp"
    );
    ensure!(
        xlb.total("tcp_resets")? == 0 && xlb.total("drops.tcp_no_listener")? == 0,
        "xlb answered a segment whose checksum it could not verify"
    );
    let log = xlb.proc().stderr();
    ensure!(
        log.matches("partial L4 checksum").count() == 1,
        "expected the offload hint exactly once ({counted} drops); xlb's log:\n{log}"
    );
    let hint = log
        .lines()
        .find(|l| l.contains("partial L4 checksum"))
        .unwrap_or_default();
    ensure!(
        hint.contains("ext0") && hint.contains("ethtool -K <peer interface> tx off"),
        "the hint should name the interface and the fix: {hint}"
    );

    // With the client's offload off, the same traffic is answered again.
    client.disable_offloads("cli0")?;
    let out = client.output(
        "socat",
        &["-T", "3", "-", &format!("TCP:{XLB_IP}:22,connect-timeout=3")],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("Connection refused"),
        "expected an RST, socat said: {stderr}"
    );
    Ok(())
}

#[test]
fn sigterm_detaches_the_filter_and_the_kernel_takes_over_the_link() -> Result<()> {
    let (lab, client, lb) = two_namespaces("shutdown")?;
    let xlb = Appliance::start(&lab, &lb, "lb1", &config("busy"))?;
    let link = lb.ip(&["link", "show", "ext0"])?;
    ensure!(link.contains("xdp"), "no XDP program on ext0 while xlb runs: {link}");
    client.ping(XLB_IP)?;

    let status = xlb.terminate()?;
    ensure!(
        status.success(),
        "xlb exited with {status}; stderr:\n{}",
        xlb.proc().stderr()
    );
    let link = lb.ip(&["link", "show", "ext0"])?;
    ensure!(
        !link.contains("xdp"),
        "XDP program left attached after shutdown: {link}"
    );
    // The kernel's own address keeps working; xlb's is gone.
    client.ping(KERNEL_IP)?;
    ensure!(client.ping(XLB_IP).is_err(), "{XLB_IP} still answers after xlb stopped");
    Ok(())
}

#[test]
fn check_names_the_bad_field() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("xlb-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let xlb = workspace_bin("xlb")?;
    let run_check = |name: &str, text: &str| -> Result<std::process::Output> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(std::process::Command::new(&xlb)
            .args(["check", "--config", &path.display().to_string()])
            .output()?)
    };
    let good = run_check(
        "good.toml",
        &config("adaptive").replace("CONTROL_SOCKET", "/run/xlb/t.sock"),
    )?;
    ensure!(
        good.status.success(),
        "valid config rejected: {}",
        String::from_utf8_lossy(&good.stderr)
    );

    let cases = [
        ("typo.toml", config("adaptive").replace("queues", "queus"), "queus"),
        ("idle.toml", config("lazy"), "lazy"),
        (
            "cores.toml",
            config("adaptive").replace("cores = [0]", "cores = [0, 1]"),
            "interface[0] (ext0).cores",
        ),
        (
            "addr.toml",
            config("adaptive").replace("198.18.0.10/24", "198.18.0.300/24"),
            "bad IPv4 address",
        ),
        (
            "ring.toml",
            config("adaptive").replace("ring_size = 1024", "ring_size = 1000"),
            "datapath.ring_size",
        ),
        (
            "table.toml",
            format!("{}\n[l4]\nconn_table_size = 10000000000\n", config("adaptive")),
            "l4.conn_table_size: 10000000000 is above the maximum",
        ),
        (
            "float.toml",
            format!("{}\n[l4]\nconn_table_size = 1e10\n", config("adaptive")),
            "(l4.conn_table_size): invalid type",
        ),
    ];
    for (name, text, field) in cases {
        let out = run_check(name, &text)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{name}: invalid config accepted");
        ensure!(
            stderr.contains(field),
            "{name}: error does not name {field:?}: {stderr}"
        );
        ensure!(
            stderr.trim().lines().count() == 1,
            "{name}: the error is not one line: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn an_impossible_mode_fails_with_a_clear_cause() -> Result<()> {
    let (lab, _client, lb) = two_namespaces("zerocopy")?;
    // veth has no zero-copy AF_XDP: forcing it must fail at start, naming the cause, not run degraded.
    let cfg = config("adaptive").replace("idle = \"adaptive\"", "idle = \"adaptive\"\nzero_copy = \"on\"");
    let err = match Appliance::start(&lab, &lb, "lb1", &cfg) {
        Ok(_) => anyhow::bail!("xlb started with zero_copy = \"on\" on a veth"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("zero-copy"), "the error does not name zero-copy: {err}");
    ensure!(
        err.contains("ext0") && err.contains("queue 0"),
        "the error does not name the interface and queue: {err}"
    );
    Ok(())
}
