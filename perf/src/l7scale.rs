//! `xlb-perf l7-scale`: per-segment cost of L7's in-stack TCP against the number of open connections.
//!
//! The TCP host the L7 stage terminates connections in (`xlb_l7::tcp::TcpHost`: smoltcp's TCP state machine,
//! xlb's own demultiplexing and timers) runs in this process on byte buffers, with a second host as the peer.
//! For each size N it opens N connections, then sends 32-byte requests on connections picked at random; the
//! measured host receives each segment, the application reads it and writes a 32-byte answer, and the host emits
//! what it has to send. The time of that (ingress, read, write, egress, timers) per received segment is the
//! figure: it stays flat if nothing in the host scans its connections. smoltcp's own `Interface::poll` walks
//! every socket per packet, which is what this design avoids.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use xlb_l7::tcp::{ConnId, Ingress, TcpConfig, TcpHost};

const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);

/// One size's result.
#[derive(Debug, Clone)]
pub struct L7ScalePoint {
    /// Open connections.
    pub connections: usize,
    /// Nanoseconds per received segment (ingress, application read and write, egress, timers).
    pub ns_per_segment: f64,
    /// The measuring thread's CPU time per received segment.
    pub cpu_ns_per_segment: f64,
    /// Nanoseconds per accepted connection (SYN in, SYN-ACK out, ACK in).
    pub ns_per_handshake: f64,
}

impl L7ScalePoint {
    /// As JSON.
    pub fn json(&self) -> Value {
        json!({
            "connections": self.connections,
            "ns_per_segment": self.ns_per_segment,
            "cpu_ns_per_segment": self.cpu_ns_per_segment,
            "ns_per_handshake": self.ns_per_handshake,
        })
    }
}

fn client(i: usize) -> SocketAddrV4 {
    let ip = Ipv4Addr::new(198, 18, 1 + (i / 50_000) as u8, 1);
    SocketAddrV4::new(ip, 10_000 + (i % 50_000) as u16)
}

fn small() -> TcpConfig {
    TcpConfig {
        rx_buffer: 1024,
        tx_buffer: 1024,
        max_connections: 2_000_000,
        ..TcpConfig::default()
    }
}

/// A deterministic shuffle source (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Measures one size: `connections` open, `segments` requests.
pub fn measure(connections: usize, segments: usize) -> Result<L7ScalePoint> {
    let start = Instant::now();
    let mut peer = TcpHost::new(small(), start, 1);
    let mut host = TcpHost::new(small(), start, 2);
    let mut buf = vec![0u8; 2048];
    let mut conns: Vec<(ConnId, ConnId)> = Vec::with_capacity(connections);
    let mut handshake_time = Duration::ZERO;
    for i in 0..connections {
        let now = Instant::now();
        let c = peer.connect(now, client(i), VIP, 1).expect("client tuple free");
        let (len, _) = peer.poll_transmit(now, &mut buf).expect("SYN");
        let t = Instant::now();
        let Ingress::Accepted(s) = host.ingress(now, &buf[..len], true) else {
            anyhow::bail!("SYN {i} not accepted");
        };
        host.set_token(s, 1);
        let (len, _) = host.poll_transmit(now, &mut buf).expect("SYN-ACK");
        handshake_time += t.elapsed();
        peer.ingress(now, &buf[..len], false);
        let (len, _) = peer.poll_transmit(now, &mut buf).expect("ACK");
        let t = Instant::now();
        host.ingress(now, &buf[..len], false);
        handshake_time += t.elapsed();
        conns.push((c, s));
    }
    ensure!(host.len() == connections, "{} of {connections} open", host.len());
    while host.poll_event().is_some() {}

    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut measured = Duration::ZERO;
    let cpu_start = thread_cpu_time();
    let mut untimed_cpu = Duration::ZERO;
    let request = [b'q'; 32];
    let mut scratch = [0u8; 64];
    for _ in 0..segments {
        let (c, s) = conns[rng.below(connections)];
        let now = Instant::now();
        let u = thread_cpu_time();
        peer.socket(now, c).expect("open").send_slice(&request)?;
        let (len, _) = peer.poll_transmit(now, &mut buf).expect("request segment");
        let segment = buf[..len].to_vec();
        untimed_cpu += thread_cpu_time() - u;

        let t = Instant::now();
        host.handle_timeout(now);
        host.ingress(now, &segment, false);
        let sock = host.socket(now, s).expect("open");
        let n = sock.recv_slice(&mut scratch)?;
        sock.send_slice(&scratch[..n])?;
        let mut out = Vec::new();
        while let Some((len, _)) = host.poll_transmit(now, &mut buf) {
            out.push(buf[..len].to_vec());
        }
        measured += t.elapsed();

        let u = thread_cpu_time();
        for seg in out {
            peer.ingress(now, &seg, false);
        }
        let _ = peer.socket(now, c).map(|s| s.recv_slice(&mut scratch));
        untimed_cpu += thread_cpu_time() - u;
    }
    let cpu = (thread_cpu_time() - cpu_start).saturating_sub(untimed_cpu);
    let per = |d: Duration, n: usize| d.as_nanos() as f64 / n.max(1) as f64;
    Ok(L7ScalePoint {
        connections,
        ns_per_segment: per(measured, segments),
        // The untimed peer work is subtracted; what remains includes the loop's own overhead.
        cpu_ns_per_segment: per(cpu, segments),
        ns_per_handshake: per(handshake_time, connections),
    })
}

/// Measures every size in `sizes` with `segments` requests each: a table on stderr, JSON on stdout.
pub fn run(sizes: &[usize], segments: usize) -> Result<()> {
    eprintln!(
        "{:>12} {:>14} {:>16} {:>16}",
        "connections", "ns/segment", "CPU ns/segment", "ns/handshake"
    );
    let mut points = Vec::new();
    for &n in sizes {
        let p = measure(n, segments)?;
        eprintln!(
            "{:>12} {:>14.1} {:>16.1} {:>16.1}",
            p.connections, p.ns_per_segment, p.cpu_ns_per_segment, p.ns_per_handshake
        );
        points.push(p.json());
    }
    println!(
        "{}",
        json!({ "scenario": "l7_scale", "segments": segments, "points": points })
    );
    Ok(())
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_measures_every_connection_open() {
        let p = measure(50, 500).unwrap();
        assert_eq!(p.connections, 50);
        assert!(p.ns_per_segment > 0.0 && p.ns_per_handshake > 0.0);
    }
}
