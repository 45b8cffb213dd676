//! Hardening on a hostile link (issue 13): fragmented datagrams, packets whose TTL ran out, and frames that may
//! not open a flow, sent by real kernel clients and crafted with `xlb-rawsend`, against a real `xlb`.
//!
//! Two-arm lab: `client` (cli0 198.18.0.1/24) ── ext0 [xlb: 198.18.0.10, VIP 198.18.0.100] int0 [xlb:
//! 198.19.0.10] ── srv0 `servers` (198.19.0.2). Both veths have the default MTU of 1500.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use xlb_tests::appliance::Appliance;
use xlb_tests::lab::{wait_until_ok, workspace_bin};
use xlb_tests::topology::{TwoArm, TWO_ARM_BASE};
use xlb_tests::traffic::{hello, in_ns, TIMEOUT};

const VIP: &str = "198.18.0.100";
const SERVER: &str = "198.19.0.2";

fn config() -> String {
    format!(
        r#"
{TWO_ARM_BASE}
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
servers = [{{ addr = "{SERVER}:8080", weight = 1 }}]

[[group]]
name = "dns"
servers = [{{ addr = "{SERVER}:5353", weight = 1 }}]
"#
    )
}

fn lab(name: &str) -> Result<(TwoArm, Appliance, Vec<xlb_tests::lab::Proc>)> {
    let t = TwoArm::new(name, &[SERVER], 1)?;
    let mut sinks = t.sinks("tcp", 8080)?;
    sinks.extend(t.sinks("udp", 5353)?);
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config())?;
    Ok((t, xlb, sinks))
}

/// A listener's drop counter (0 when absent).
fn listener_drops(xlb: &Appliance, listener: usize, reason: &str) -> Result<u64> {
    Ok(xlb.stats()?["l4"]["listeners"][listener]["drops"][reason]
        .as_u64()
        .unwrap_or(0))
}

fn total(xlb: &Appliance, key: &str) -> Result<u64> {
    Ok(xlb.total(key).unwrap_or(0))
}

/// A listener's connections in all, once the workers have published at least `at_least` (counters are
/// published every 100 ms): the exact count, so a test can tell whether more were opened.
fn conns_total(xlb: &Appliance, listener: usize, at_least: u64) -> Result<u64> {
    wait_until_ok(TIMEOUT, "connection counters to be published", || {
        let n = xlb.stats()?["l4"]["listeners"][listener]["conns_total"]
            .as_u64()
            .unwrap_or(0);
        ensure!(n >= at_least, "{n} connections counted, at least {at_least} expected");
        Ok(n)
    })
}

/// Bytes that make every datagram's content distinct (a reply is compared byte by byte).
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

/// Sends each datagram from one connected socket and returns the replies, in order.
fn exchange(client: &xlb_tests::lab::Netns, datagrams: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>> {
    in_ns(client, move || {
        let sock = UdpSocket::bind("198.18.0.1:42000")?;
        sock.connect(format!("{VIP}:53"))?;
        sock.set_read_timeout(Some(TIMEOUT))?;
        let mut replies = vec![];
        for d in datagrams {
            sock.send(&d)?;
            let mut buf = vec![0u8; 65536];
            let n = sock
                .recv(&mut buf)
                .with_context(|| format!("no reply to a {}-byte datagram", d.len()))?;
            replies.push(buf[..n].to_vec());
        }
        Ok(replies)
    })
}

/// The client's kernel cuts datagrams larger than the MTU into fragments; xlb reassembles them, forwards the
/// datagram to the server cut again as it came, the server's echo comes back in fragments too, and the client
/// gets it whole, byte-exact. A datagram too large for a frame is refused, counted, and does not disturb the
/// next one.
#[test]
fn fragmented_udp_datagrams_are_reassembled_both_ways_and_oversized_ones_refused() -> Result<()> {
    let (t, xlb, _sinks) = lab("frags")?;
    // 1473 bytes: 1501 with headers, one byte over the MTU (two fragments); 3798: the largest that fits a frame
    // whole (14 + 20 + 8 + 3798 = 3840 bytes, what a 4 KiB UMEM frame holds after the kernel's headroom).
    let sizes = [1473, 3000, 3798];
    let datagrams: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, n)| pattern(*n, i as u8)).collect();
    let replies = exchange(&t.client, datagrams.clone())?;
    for (d, r) in datagrams.iter().zip(&replies) {
        ensure!(
            r == d,
            "a {}-byte datagram came back as {} different bytes",
            d.len(),
            r.len()
        );
    }
    // Counters are published after each batch: wait for them, then check nothing more was counted.
    let reassembled = wait_until_ok(TIMEOUT, "reassembly to be counted", || {
        let n = total(&xlb, "reassembled")?;
        ensure!(n >= 2 * sizes.len() as u64, "{n} datagrams reassembled so far");
        Ok(n)
    })?;
    ensure!(
        reassembled == 2 * sizes.len() as u64,
        "{reassembled} datagrams reassembled, expected {} (each request and its echo)",
        2 * sizes.len()
    );
    ensure!(total(&xlb, "drops.fragment_timeout")? == 0 && total(&xlb, "drops.fragment_overlap")? == 0);

    // One byte more: three fragments, none of them forwarded, counted by name; the next datagram is served.
    let before = total(&xlb, "drops.fragment_too_big")?;
    in_ns(&t.client, || {
        let sock = UdpSocket::bind("198.18.0.1:42001")?;
        sock.send_to(&pattern(3799, 9), format!("{VIP}:53"))?;
        Ok(())
    })?;
    wait_until_ok(TIMEOUT, "the oversized datagram's fragments to be counted", || {
        let n = total(&xlb, "drops.fragment_too_big")? - before;
        ensure!(n == 3, "{n} fragment_too_big drops, expected 3");
        Ok(())
    })?;
    let small = pattern(100, 7);
    ensure!(
        exchange(&t.client, vec![small.clone()])? == vec![small],
        "the next datagram was not served"
    );
    let stats = xlb.stats()?;
    eprintln!(
        "reassembled {} datagrams; drops: fragment_too_big {}",
        stats["totals"]["reassembled"], stats["totals"]["drops"]["fragment_too_big"]
    );
    Ok(())
}

/// `IP_RECVERR` on a socket: ICMP errors about its datagrams (time exceeded too) are reported by `recv`.
fn recv_errors(sock: &UdpSocket) -> Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on an open socket with a valid int option.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_RECVERR,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "IP_RECVERR: {}", std::io::Error::last_os_error());
    Ok(())
}

// ---- crafted frames ----

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP segment to the VIP's port 80 as an Ethernet frame (hex for `xlb-rawsend`).
struct Syn {
    src: [u8; 4],
    sport: u16,
    flags: u8,
    ttl: u8,
    data_offset: u8,
    corrupt_checksum: bool,
}

impl Syn {
    fn from(sport: u16) -> Syn {
        Syn {
            src: [198, 18, 0, 1],
            sport,
            flags: 0x02,
            ttl: 64,
            data_offset: 5,
            corrupt_checksum: false,
        }
    }

    fn frame(&self, dst_mac: [u8; 6], src_mac: [u8; 6]) -> String {
        let dst = [198, 18, 0, 100];
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&self.sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
        tcp[12] = self.data_offset << 4;
        tcp[13] = self.flags;
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        let mut pseudo = [self.src, dst].concat();
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&tcp);
        let mut c = checksum(&pseudo);
        if self.corrupt_checksum {
            c ^= 0x5a5a;
        }
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, self.ttl, 6, 0, 0];
        ip.extend_from_slice(&self.src);
        ip.extend_from_slice(&dst);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let frame = [&dst_mac[..], &src_mac[..], &[0x08, 0x00], &ip, &tcp].concat();
        frame.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Frames a router or conntrack would refuse, crafted on the client link: each is dropped under its named
/// reason before any entry, server or local port; a SYN whose TTL ran out is answered with ICMP time exceeded
/// and a kernel client whose UDP TTL runs out is told so; legitimate clients are served before, between and
/// after.
#[test]
fn crafted_frames_that_may_not_open_a_flow_are_counted_refusals_and_clients_are_served() -> Result<()> {
    let (t, xlb, _sinks) = lab("crafted")?;
    let target: SocketAddr = format!("{VIP}:80").parse()?;
    let served = in_ns(&t.client, move || hello(target))?;
    ensure!(served == "s1", "served by {served:?}");

    let (dst_mac, src_mac) = (t.lb.mac("ext0")?, t.client.mac("cli0")?);
    let cases: Vec<(Syn, &str)> = vec![
        (
            Syn {
                src: [127, 0, 0, 1],
                ..Syn::from(50_001)
            },
            "invalid_source",
        ),
        (
            Syn {
                src: [0, 0, 0, 0],
                ..Syn::from(50_002)
            },
            "invalid_source",
        ),
        (
            Syn {
                src: [224, 0, 0, 5],
                ..Syn::from(50_003)
            },
            "invalid_source",
        ),
        (
            Syn {
                src: [198, 18, 0, 10],
                ..Syn::from(50_004)
            },
            "invalid_source",
        ),
        (
            Syn {
                flags: 0x03,
                ..Syn::from(50_005)
            },
            "invalid_tcp_flags",
        ),
        (
            Syn {
                flags: 0x06,
                ..Syn::from(50_006)
            },
            "invalid_tcp_flags",
        ),
        (
            Syn {
                corrupt_checksum: true,
                ..Syn::from(50_007)
            },
            "bad_l4_checksum",
        ),
        (
            Syn {
                data_offset: 4,
                ..Syn::from(50_008)
            },
            "malformed_tcp",
        ),
        (
            Syn {
                ttl: 1,
                ..Syn::from(50_009)
            },
            "ttl_exceeded",
        ),
        (
            Syn {
                ttl: 0,
                ..Syn::from(50_010)
            },
            "ttl_exceeded",
        ),
    ];
    let frames: Vec<String> = cases.iter().map(|(s, _)| s.frame(dst_mac, src_mac)).collect();
    let reasons = [
        "invalid_source",
        "invalid_tcp_flags",
        "bad_l4_checksum",
        "malformed_tcp",
        "ttl_exceeded",
    ];
    let before: Vec<u64> = reasons
        .iter()
        .map(|r| listener_drops(&xlb, 0, r))
        .collect::<Result<_>>()?;
    ensure!(conns_total(&xlb, 0, 1)? == 1, "one connection so far");
    let time_exceeded_before = total(&xlb, "icmp_time_exceeded")?;
    let rawsend = workspace_bin("xlb-rawsend")?.display().to_string();
    let mut args = vec!["cli0"];
    args.extend(frames.iter().map(String::as_str));
    // Twice, with a legitimate connection in between.
    t.client.run(&rawsend, &args)?;
    let served = in_ns(&t.client, move || hello(target))?;
    ensure!(served == "s1", "served by {served:?} between the crafted frames");
    t.client.run(&rawsend, &args)?;

    wait_until_ok(Duration::from_secs(5), "the crafted frames to be counted", || {
        for (reason, before) in reasons.iter().zip(&before) {
            let expected = 2 * cases.iter().filter(|(_, r)| r == reason).count() as u64;
            let n = listener_drops(&xlb, 0, reason)? - before;
            ensure!(
                n == expected,
                "{reason}: {n} drops of the web listener, expected {expected}"
            );
        }
        Ok(())
    })?;
    let conns = conns_total(&xlb, 0, 2)?;
    ensure!(
        conns == 2,
        "{} connections opened by the crafted frames (only the two legitimate ones should count)",
        conns - 2
    );
    let answered = total(&xlb, "icmp_time_exceeded")? - time_exceeded_before;
    ensure!(
        answered == 4,
        "{answered} ICMP time exceeded sent for the 4 SYNs whose TTL ran out"
    );

    // A kernel client's datagram with TTL 1 gets ICMP time exceeded (EHOSTUNREACH on the socket, with
    // IP_RECVERR) and reaches no server; with TTL 64 it is answered.
    in_ns(&t.client, || {
        let sock = UdpSocket::bind("198.18.0.1:42002")?;
        sock.connect(format!("{VIP}:53"))?;
        sock.set_read_timeout(Some(TIMEOUT))?;
        recv_errors(&sock)?;
        sock.set_ttl(1)?;
        sock.send(b"short-lived")?;
        let mut buf = [0u8; 256];
        let err = sock
            .recv(&mut buf)
            .err()
            .context("a datagram with TTL 1 was answered")?;
        ensure!(
            err.raw_os_error() == Some(libc::EHOSTUNREACH),
            "expected EHOSTUNREACH (ICMP time exceeded), got {err}"
        );
        sock.set_ttl(64)?;
        sock.send(b"long-lived")?;
        let n = sock.recv(&mut buf)?;
        ensure!(&buf[..n] == b"long-lived", "echo {:?}", &buf[..n]);
        Ok(())
    })?;
    ensure!(conns_total(&xlb, 1, 1)? == 1, "the TTL-1 datagram opened a flow");
    ensure!(listener_drops(&xlb, 1, "ttl_exceeded")? == 1);

    let served = in_ns(&t.client, move || hello(target))?;
    ensure!(served == "s1", "served by {served:?} after the crafted frames");
    xlb.proc().check_running()?;
    Ok(())
}

/// An IPv4 fragment from the client to the VIP: `payload` at byte `offset` of datagram `id`'s payload.
fn fragment(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    protocol: u8,
    id: u16,
    offset: usize,
    more: bool,
    payload: &[u8],
) -> String {
    let total = (20 + payload.len()) as u16;
    let flags_frag = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&flags_frag.to_be_bytes());
    ip.extend_from_slice(&[64, protocol, 0, 0, 198, 18, 0, 1, 198, 18, 0, 100]);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let frame = [&dst_mac[..], &src_mac[..], &[0x08, 0x00], &ip, payload].concat();
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// Crafted fragments a reassembler must refuse: an overlap (the whole datagram is discarded, its later
/// fragments too), a TCP first fragment too short for the TCP header, a piece that would end past 65535 bytes.
/// Each is counted by name, nothing reaches a server, and clients are served after.
#[test]
fn crafted_bad_fragments_are_refused_by_name_and_clients_are_served() -> Result<()> {
    let (t, xlb, _sinks) = lab("badfrags")?;
    let (dst, src) = (t.lb.mac("ext0")?, t.client.mac("cli0")?);
    // A UDP datagram to the dns listener: header (ports 40000 -> 53, length 48, no checksum) + 40 bytes.
    let mut udp = vec![0x9c, 0x40, 0, 53, 0, 48, 0, 0];
    udp.extend_from_slice(&[0x42; 40]);
    let frames = [
        // Datagram 1: bytes 0-23, then 16-31 (overlaps 16-23), then the rest: all three discarded.
        fragment(dst, src, 17, 1, 0, true, &udp[..24]),
        fragment(dst, src, 17, 1, 16, true, &udp[16..32]),
        fragment(dst, src, 17, 1, 32, false, &udp[32..]),
        // Datagram 2: a TCP first fragment of 8 bytes (ports, no flags), then its rest.
        fragment(dst, src, 6, 2, 0, true, &[0x9c, 0x41, 0, 80, 0, 0, 0, 1]),
        fragment(dst, src, 6, 2, 8, false, &[0; 12]),
        // Datagram 3: a last piece at offset 65528 of 16 bytes (ping of death).
        fragment(dst, src, 17, 3, 65528, false, &[0; 16]),
    ];
    let before = |r: &str| total(&xlb, &format!("drops.{r}"));
    let (overlap0, tiny0, invalid0) = (
        before("fragment_overlap")?,
        before("fragment_tiny")?,
        before("fragment_invalid")?,
    );
    let rawsend = workspace_bin("xlb-rawsend")?.display().to_string();
    let mut args = vec!["cli0"];
    args.extend(frames.iter().map(String::as_str));
    t.client.run(&rawsend, &args)?;
    wait_until_ok(Duration::from_secs(5), "the crafted fragments to be counted", || {
        let overlap = before("fragment_overlap")? - overlap0;
        let tiny = before("fragment_tiny")? - tiny0;
        let invalid = before("fragment_invalid")? - invalid0;
        ensure!(
            (overlap, tiny, invalid) == (3, 2, 1),
            "overlap {overlap} (expected 3), tiny {tiny} (2), invalid {invalid} (1)"
        );
        Ok(())
    })?;
    ensure!(total(&xlb, "reassembled")? == 0, "a crafted datagram was reassembled");
    // Clients are served, fragmented datagrams included; the only connections are theirs.
    let target: SocketAddr = format!("{VIP}:80").parse()?;
    ensure!(in_ns(&t.client, move || hello(target))? == "s1");
    let big = pattern(3000, 3);
    ensure!(
        exchange(&t.client, vec![big.clone()])? == vec![big],
        "a fragmented datagram after them"
    );
    for l in 0..2 {
        let n = conns_total(&xlb, l, 1)?;
        ensure!(
            n == 1,
            "listener {l}: {n} connections, 1 expected (crafted fragments opened some)"
        );
    }
    Ok(())
}
