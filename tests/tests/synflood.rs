//! SYN flood defence (issue 13, item 3): spoofed-source SYN floods against FULLNAT listeners while real kernel
//! clients connect through them.
//!
//! Two-arm lab (see `tests/l4.rs`): the client namespace writes raw SYN frames from spoofed sources in
//! 198.18.128.0/17 on cli0 (an AF_PACKET socket, a bounded count) while kernel `TcpStream`s from 198.18.0.1 say
//! hello to `xlb-bench sink` servers through the VIP. The FULLNAT local ports are few (1 000 per server), so a
//! flood that took a port per SYN would exhaust them at once.

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use xlb_tests::appliance::Appliance;
use xlb_tests::lab::wait_until_ok;
use xlb_tests::topology::{TwoArm, TWO_ARM_BASE};
use xlb_tests::traffic::{hello, hello_on, in_ns, TIMEOUT};

const VIP: &str = "198.18.0.100";
const SERVERS: [&str; 3] = ["198.19.0.2", "198.19.0.3", "198.19.0.4"];
/// Most flood frames sent (the flood stops earlier when the clients are done and at least `MIN_FLOOD` are out).
const MAX_FLOOD: u64 = 2_000_000;
const MIN_FLOOD: u64 = 100_000;
/// Flood frames sent back to back before a 1 ms pause (at most about 50 000 SYNs a second).
const BURST: u64 = 50;
/// Kernel clients per listener, and hellos per client thread.
const CLIENT_THREADS: usize = 4;
const HELLOS_PER_THREAD: usize = 25;
/// `[l4] syn_proxy_threshold` of the lab.
const THRESHOLD: u64 = 100;
/// `max_conns` of the listener without SYN proxy.
const CAP: u64 = 300;

fn config() -> String {
    let servers = SERVERS
        .iter()
        .map(|ip| format!("{{ addr = \"{ip}:8080\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
{TWO_ARM_BASE}
[datapath]
umem_frames = 8192
ring_size = 1024

[l4]
local_port_min = 20000
local_port_max = 20999
syn_proxy = "auto"
syn_proxy_threshold = {THRESHOLD}

[[listener]]
name = "always"
vip = "{VIP}"
port = 80
protocol = "tcp"
scheduler = "rr"
group = "web"
syn_proxy = "always"

[[listener]]
name = "auto"
vip = "{VIP}"
port = 81
protocol = "tcp"
scheduler = "rr"
group = "web"

[[listener]]
name = "capped"
vip = "{VIP}"
port = 82
protocol = "tcp"
scheduler = "rr"
group = "web"
syn_proxy = "off"
max_conns = {CAP}

[[group]]
name = "web"
servers = [{servers}]
"#
    )
}

/// RFC 1071 checksum of `data` with `sum` already accumulated.
fn csum(mut sum: u32, data: &[u8]) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP SYN (MSS 1460) from `src:sport` to `dst:dport` as an Ethernet frame, checksums valid.
fn syn_frame(macs: ([u8; 6], [u8; 6]), src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, isn: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(58);
    f.extend_from_slice(&macs.0);
    f.extend_from_slice(&macs.1);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&44u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = csum(0, &ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut tcp = [0u8; 24];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&isn.to_be_bytes());
    tcp[12] = 6 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    let mut pseudo = 0u32;
    for w in [&src.octets()[..], &dst.octets()[..]] {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]])) + u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    pseudo += 6 + 24;
    let c = csum(pseudo, &tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

/// Sends spoofed SYNs to the VIP's ports 80, 81 and 82 on `iface` (AF_PACKET) until `stop` is set and
/// `MIN_FLOOD` frames are out, or `MAX_FLOOD` are; returns how many were sent. Sources cycle through
/// 198.18.128.0/17 with varying ports.
fn flood(iface: &str, macs: ([u8; 6], [u8; 6]), stop: &AtomicBool, sent: &AtomicU64) -> Result<u64> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: plain libc calls with valid arguments; the fd is closed before returning.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        ensure!(ifindex != 0, "interface {iface}: {}", std::io::Error::last_os_error());
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        let vip: Ipv4Addr = VIP.parse()?;
        let mut n = 0u64;
        while n < MAX_FLOOD && !(n >= MIN_FLOOD && stop.load(Ordering::Relaxed)) {
            let i = n as u32;
            let src = Ipv4Addr::new(198, 18, 128 + ((i / 250) % 128) as u8, (i % 250) as u8 + 1);
            let frame = syn_frame(
                macs,
                src,
                1024 + (i % 60_000) as u16,
                vip,
                80 + (i % 3) as u16,
                i.wrapping_mul(2_654_435_761),
            );
            let r = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if r < 0 {
                // A full qdisc/veth queue: yield and go on (the count only counts frames sent).
                std::thread::yield_now();
                continue;
            }
            n += 1;
            sent.store(n, Ordering::Relaxed);
            if n.is_multiple_of(BURST) {
                // Paced to what one copy-mode worker on a shared 2-core VM absorbs: an unpaced sender takes a
                // core and the kernel's rings drop the clients' packets as well as the flood's.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        libc::close(fd);
        Ok(n)
    }
}

fn listener(stats: &serde_json::Value, name: &str) -> Result<serde_json::Value> {
    stats["l4"]["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == name))
        .cloned()
        .with_context(|| format!("no listener {name} in the stats"))
}

fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

#[test]
fn a_spoofed_syn_flood_takes_no_local_ports_and_kernel_clients_are_served() -> Result<()> {
    let t = TwoArm::new("synflood", &SERVERS, 1)?;
    let _sinks = t.sinks("tcp", 8080)?;
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config())?;
    let macs = (t.lb.mac("ext0")?, t.client.mac("cli0")?);

    // The flood runs from its own thread in the client namespace until the clients are done.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood_thread = {
        let (client, stop, sent) = (t.client.clone(), stop.clone(), sent.clone());
        std::thread::spawn(move || in_ns(&client, move || flood("cli0", macs, &stop, &sent)))
    };
    // Wait until the flood is under way (count-bounded: the flood thread ends by itself).
    wait_until_ok(TIMEOUT, "the flood to start", || {
        ensure!(
            sent.load(Ordering::Relaxed) >= 20_000,
            "{} SYNs sent",
            sent.load(Ordering::Relaxed)
        );
        Ok(())
    })?;

    // Kernel clients on both listeners while the flood goes on.
    let clients: Vec<_> = [80u16, 81]
        .into_iter()
        .flat_map(|port| (0..CLIENT_THREADS).map(move |_| port))
        .map(|port| {
            let client = t.client.clone();
            std::thread::spawn(move || {
                let target: SocketAddr = format!("{VIP}:{port}").parse()?;
                in_ns(&client, move || {
                    (0..HELLOS_PER_THREAD)
                        .map(|_| hello(target))
                        .collect::<Result<Vec<_>>>()
                })
            })
        })
        .collect();
    let mut results = vec![];
    for c in clients {
        results.push(c.join().map_err(|_| anyhow::anyhow!("client thread panicked"))?);
    }
    let during = xlb.stats()?;
    stop.store(true, Ordering::Relaxed);
    let flooded = flood_thread
        .join()
        .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
    if results.iter().any(|r| r.is_err()) {
        eprintln!(
            "flood: {flooded} SYNs; stats during: {}",
            serde_json::to_string_pretty(&during["l4"]["listeners"])?
        );
        eprintln!("{}", serde_json::to_string_pretty(&during["totals"])?);
    }
    let served: usize = results
        .into_iter()
        .map(|r| r.map(|names| names.len()))
        .collect::<Result<Vec<_>>>()
        .context("a legitimate client failed during the flood")?
        .into_iter()
        .sum();
    let legit = (CLIENT_THREADS * HELLOS_PER_THREAD) as u64;
    ensure!(served as u64 == 2 * legit, "{served} of {} hellos served", 2 * legit);

    // After the flood: the clients are served still.
    let after: SocketAddr = format!("{VIP}:80").parse()?;
    in_ns(&t.client, move || {
        (0..10).map(|_| hello(after)).collect::<Result<Vec<_>>>()
    })
    .context("a client after the flood")?;

    // Counters are published every 100 ms: wait for the last hellos to show.
    let stats = wait_until_ok(TIMEOUT, "the counters of the clients after the flood", || {
        let s = xlb.stats()?;
        let always = listener(&s, "always")?;
        ensure!(u(&always, "syn_cookies_valid") >= legit + 10, "{always}");
        Ok(s)
    })?;
    let always = listener(&stats, "always")?;
    let auto = listener(&stats, "auto")?;
    eprintln!(
        "flood: {flooded} SYNs sent; always: {} cookies sent, {} valid, {} entries; auto: {} cookies sent, {} \
         valid, {} entries; capped: {} entries, {} refused; local ports in use {}",
        u(&always, "syn_cookies_sent"),
        u(&always, "syn_cookies_valid"),
        u(&always, "conns_total"),
        u(&auto, "syn_cookies_sent"),
        u(&auto, "syn_cookies_valid"),
        u(&auto, "conns_total"),
        u(&listener(&stats, "capped")?, "conns_total"),
        listener(&stats, "capped")?["drops"]["listener_conn_limit"],
        stats["l4"]["local_ports"]["in_use"]
    );
    // The flood reached xlb and was answered with cookies, on both listeners.
    ensure!(u(&always, "syn_cookies_sent") >= 1_000, "always: {always}");
    ensure!(u(&auto, "syn_cookies_sent") >= 1_000, "auto: {auto}");
    // `always`: every entry was opened by a valid cookie, i.e. by a kernel client: the flood took no entry
    // and no local port.
    ensure!(
        u(&always, "conns_total") == legit + 10 && u(&always, "syn_cookies_valid") == u(&always, "conns_total"),
        "always: entries beyond the clients' ({} clients): {always}",
        legit + 10
    );
    // `auto`: at most the threshold's worth of flood SYNs got an entry before the proxy switched on.
    ensure!(
        u(&auto, "conns_total") <= legit + THRESHOLD + 1,
        "auto: {} entries for {legit} clients and a threshold of {THRESHOLD}: {auto}",
        u(&auto, "conns_total")
    );
    ensure!(
        u(&listener(&during, "auto")?, "syn_proxy_on") == 1,
        "auto proxy not on during the flood"
    );
    ensure!(
        u(&listener(&during, "always")?, "syn_proxy_on") == 1,
        "always proxy not on"
    );
    let ports = u(&stats["l4"]["local_ports"], "in_use");
    // `capped` (no SYN proxy): the flood took its cap's worth of entries and ports, no more; the rest was
    // refused by name, and the other listeners kept their ports.
    let capped = listener(&stats, "capped")?;
    ensure!(
        u(&capped, "conns_total") == CAP && capped["drops"]["listener_conn_limit"].as_u64() >= Some(1_000),
        "capped: {capped}"
    );
    ensure!(
        ports <= 2 * legit + 10 + THRESHOLD + 1 + CAP,
        "{ports} local ports in use: the flood took ports"
    );
    ensure!(xlb.total("drops.local_ports_exhausted")? == 0, "local ports exhausted");
    ensure!(xlb.total("drops.conn_table_full")? == 0, "table full");
    // The operator's view.
    let text = xlb.xlbctl(&["stats"])?;
    ensure!(
        text.contains("listener always: SYN proxy always (1 of 1 workers on)"),
        "xlbctl stats:\n{text}"
    );
    ensure!(text.contains("listener auto: SYN proxy auto"), "xlbctl stats:\n{text}");
    Ok(())
}

/// Without a flood: every connection of the `always` listener goes through the proxy (cookie, server handshake
/// by xlb, sequence translation) and carries the kernel's data both ways.
#[test]
fn kernel_clients_are_served_through_the_syn_proxy() -> Result<()> {
    let t = TwoArm::new("synproxy", &SERVERS, 1)?;
    let _sinks = t.sinks("tcp", 8080)?;
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config())?;
    let target: SocketAddr = format!("{VIP}:80").parse()?;
    let names = in_ns(&t.client, move || {
        (0..30).map(|_| hello(target)).collect::<Result<Vec<_>>>()
    })?;
    ensure!(names.len() == 30);
    let l = wait_until_ok(TIMEOUT, "the listener's counters", || {
        let l = listener(&xlb.stats()?, "always")?;
        ensure!(u(&l, "conns_total") == 30, "{l}");
        Ok(l)
    })?;
    ensure!(
        u(&l, "syn_cookies_sent") == 30 && u(&l, "syn_cookies_valid") == 30,
        "one cookie per connection: {l}"
    );
    // Every server saw its handshake completed by xlb and the data: replies came back translated.
    let servers = l["servers"].as_array().context("servers")?;
    ensure!(servers.iter().all(|s| u(s, "conns_total") == 10), "rr over 3: {l}");

    // Timestamps survive the proxy: the client negotiated them with the cookie SYN-ACK (TSval 0) and took the
    // servers' TSvals as they came. Those are random per connection, so about half of the 30 above were "older"
    // than 0 and passed PAWS only because the cookie's TSval was 0. Without timestamps a client cannot reuse
    // its TIME_WAIT ports (`tcp_tw_reuse`).
    let options = in_ns(&t.client, move || {
        let stream = TcpStream::connect_timeout(&target, TIMEOUT)?;
        let probe = stream.try_clone()?;
        hello_on(stream)?;
        tcp_options(&probe)
    })?;
    ensure!(
        options & TCPI_OPT_TIMESTAMPS != 0,
        "no timestamps on a proxied connection (tcpi_options {options:#x})"
    );
    ensure!(
        options & TCPI_OPT_WSCALE == 0,
        "window scaling is not offered under the proxy"
    );

    // Servers with timestamps off: the clients' segments still carry them, the servers' carry none, and the
    // clients take those too.
    t.servers.sysctl("net.ipv4.tcp_timestamps", "0")?;
    let names = in_ns(&t.client, move || {
        (0..6).map(|_| hello(target)).collect::<Result<Vec<_>>>()
    })?;
    ensure!(names.len() == 6);
    Ok(())
}

/// `tcpi_options` bits (linux/tcp.h).
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_WSCALE: u8 = 4;

/// The options a connected socket negotiated (`TCP_INFO`'s `tcpi_options`).
fn tcp_options(stream: &TcpStream) -> Result<u8> {
    // SAFETY: `info` is a plain C struct the kernel fills up to `len` bytes.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        ensure!(rc == 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        Ok(info.tcpi_options)
    }
}

/// A UDP datagram from `src` to `dst` as an Ethernet frame, checksums valid.
fn udp_frame(macs: ([u8; 6], [u8; 6]), src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let payload = b"flood";
    let udp_len = 8 + payload.len();
    let mut f = Vec::with_capacity(14 + 20 + udp_len);
    f.extend_from_slice(&macs.0);
    f.extend_from_slice(&macs.1);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = csum(0, &ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut udp = vec![0u8; udp_len];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[8..].copy_from_slice(payload);
    let mut pseudo = 0u32;
    for w in [&src.octets()[..], &dst.octets()[..]] {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]])) + u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    pseudo += 17 + udp_len as u32;
    let c = csum(pseudo, &udp);
    udp[6..8].copy_from_slice(&if c == 0 { 0xffff } else { c }.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&udp);
    f
}

/// Writes `frames` on `iface` (AF_PACKET), paced like the SYN flood; returns how many went out.
fn send_frames(iface: &str, frames: impl Iterator<Item = Vec<u8>>) -> Result<u64> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: plain libc calls with valid arguments; the fd is closed before returning.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        ensure!(ifindex != 0, "interface {iface}: {}", std::io::Error::last_os_error());
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        let mut n = 0u64;
        for frame in frames {
            // A full queue: retry this frame a bounded number of times.
            for _ in 0..1000 {
                let r = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                if r >= 0 {
                    n += 1;
                    break;
                }
                std::thread::yield_now();
            }
            if n.is_multiple_of(BURST) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        libc::close(fd);
        Ok(n)
    }
}

/// A spoofed-source UDP flood to a UDP listener whose servers do not answer (nothing listens on the port: they
/// send ICMP port unreachable), with the local ports under pressure: the flood's entries, those made before
/// the pressure too, get the short timeout of unanswered UDP and expire with it, while a UDP listener whose
/// servers answer keeps its flows and the TCP listener serves kernel clients throughout.
#[test]
fn a_udp_flood_under_pressure_gets_short_timeouts_and_other_listeners_are_served() -> Result<()> {
    let t = TwoArm::new("udpflood", &SERVERS, 1)?;
    let _tcp = t.sinks("tcp", 8080)?;
    let _udp = t.sinks("udp", 5353)?;
    let servers = |port: u16| {
        SERVERS
            .iter()
            .map(|ip| format!("{{ addr = \"{ip}:{port}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = config()
        .replace(
            "syn_proxy_threshold = 100",
            "syn_proxy_threshold = 100\ntimeouts = { udp_unanswered_pressure = 2 }",
        )
        .replace(
            "[[group]]\nname = \"web\"",
            &format!(
                "[[listener]]\nname = \"target\"\nvip = \"{VIP}\"\nport = 5354\nprotocol = \"udp\"\nscheduler = \"rr\"\n\
                 group = \"dark\"\n\n[[listener]]\nname = \"dns\"\nvip = \"{VIP}\"\nport = 53\nprotocol = \"udp\"\n\
                 scheduler = \"rr\"\ngroup = \"dns\"\n\n[[group]]\nname = \"dark\"\nservers = [{}]\n\n[[group]]\n\
                 name = \"dns\"\nservers = [{}]\n\n[[group]]\nname = \"web\"",
                servers(5354),
                servers(5353)
            ),
        );
    let xlb = Appliance::start(&t.lab, &t.lb, "lb1", &config)?;
    let macs = (t.lb.mac("ext0")?, t.client.mac("cli0")?);
    // 1 800 flows (600 per server of the dark group: 60 % of its 1 000-port pools) put the ports under
    // pressure; the 600 after it get the short timeout of unanswered UDP (2 s here) instead of 300 s.
    const FIRST: u32 = 1_800;
    const SECOND: u32 = 600;
    let vip: Ipv4Addr = VIP.parse()?;
    let flood = move |from: u32, n: u32| {
        (from..from + n).map(move |i| {
            let src = Ipv4Addr::new(198, 18, 128 + (i / 250) as u8, (i % 250) as u8 + 1);
            udp_frame(macs, src, 2000 + i as u16, vip, 5354)
        })
    };
    let sent = in_ns(&t.client, move || send_frames("cli0", flood(0, FIRST)))?;
    ensure!(sent == u64::from(FIRST), "{sent} of {FIRST} datagrams sent");
    wait_until_ok(TIMEOUT, "the pressure to be seen", || {
        let s = xlb.stats()?;
        ensure!(u(&s["l4"], "pressure") == 1, "no pressure: {}", s["l4"]["local_ports"]);
        Ok(())
    })?;
    let sent = in_ns(&t.client, move || send_frames("cli0", flood(FIRST, SECOND)))?;
    ensure!(sent == u64::from(SECOND), "{sent} of {SECOND} datagrams sent");
    // Every flood entry is unanswered: those made under the pressure got the short timeout at once, those made
    // before it when the pressure started (a walk of the table).
    wait_until_ok(TIMEOUT, "the flood's entries to get the short timeout", || {
        let s = xlb.stats()?;
        let target = listener(&s, "target")?;
        ensure!(
            u(&target, "conns_total") == u64::from(FIRST + SECOND),
            "target: {target}"
        );
        ensure!(
            u(&s["l4"], "short_timeouts") == u64::from(FIRST + SECOND),
            "short timeouts: {}",
            s["l4"]
        );
        Ok(())
    })?;
    // Legitimate traffic meanwhile: UDP answered through the other listener, TCP through the proxy.
    let dns: SocketAddr = format!("{VIP}:53").parse()?;
    let web: SocketAddr = format!("{VIP}:80").parse()?;
    in_ns(&t.client, move || {
        for i in 0..10u16 {
            let sock = UdpSocket::bind(("198.18.0.1", 42_000 + i))?;
            sock.set_read_timeout(Some(TIMEOUT))?;
            sock.send_to(b"WHO?", dns)?;
            let mut buf = [0u8; 64];
            sock.recv_from(&mut buf)
                .context("a DNS-like client got no answer during the flood")?;
            hello(web)?;
        }
        Ok(())
    })?;
    // The flood's entries go (2 s), their ports with them; what stays: the clients' own (10 UDP, 10 TCP).
    let drained = wait_until_ok(
        std::time::Duration::from_secs(30),
        "the flood's entries to expire",
        || {
            let s = xlb.stats()?;
            let ports = u(&s["l4"]["local_ports"], "in_use");
            ensure!(ports <= 20, "{ports} ports still in use");
            Ok(s)
        },
    )?;
    eprintln!(
        "udp flood: {FIRST} + {SECOND} flows, {} short timeouts, ports in use after: {}",
        u(&drained["l4"], "short_timeouts"),
        drained["l4"]["local_ports"]["in_use"]
    );
    ensure!(xlb.total("drops.local_ports_exhausted")? == 0, "local ports exhausted");
    Ok(())
}
