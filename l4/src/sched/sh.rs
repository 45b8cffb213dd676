//! Source hashing (IPVS `sh`), with fallback.
//!
//! A 256-bucket table is filled by cycling through the servers, each taking `weight` consecutive
//! buckets; a client goes to bucket `hash_addr(client ip) & 255`, so one source address always reaches
//! the same server while the table is unchanged. Unlike IPVS's default (which drops the flow), an
//! unavailable server's clients fall back along a per-client probe sequence (re-hashing) to the next
//! available bucket (IPVS's `sh-fallback` flag), so a dead server does not black-hole its clients.
//!
//! The table depends only on the server list and weights, not on health: unhealthy and drained
//! (weight 0, one bucket, like IPVS) servers keep their buckets, so a health change or a drain only
//! moves the affected server's clients, and they return when it comes back. Changing weights, adding
//! or removing servers re-lays the table and moves other clients too, as in IPVS.

use super::{hash::mix64, hash_addr, ServerView};
use std::net::SocketAddrV4;

/// Number of buckets (IPVS `IP_VS_SH_TAB_SIZE`); a power of two so the bucket is `hash & 255`.
pub const SH_TABLE_SIZE: usize = 256;

/// Marks a bucket that belongs to no server (only when the server list is empty).
const NONE: u32 = u32::MAX;

/// Source-hashing scheduler: the bucket → server index table.
#[derive(Debug, Clone)]
pub struct SourceHash {
    /// Boxed to keep [`Scheduler`](super::Scheduler) small; rebuilt in place.
    buckets: Box<[u32; SH_TABLE_SIZE]>,
}

impl SourceHash {
    /// Builds the table for `servers`.
    pub fn new(servers: &[ServerView]) -> SourceHash {
        let mut s = SourceHash {
            buckets: Box::new([NONE; SH_TABLE_SIZE]),
        };
        s.rebuild(servers);
        s
    }

    /// Re-lays the table: servers in list order, each taking `max(weight, 1)` consecutive buckets,
    /// cycling until the 256 buckets are full.
    ///
    /// If the weights (counting 0 as 1) sum to more than 256, each server's run is scaled down to
    /// `max(1, weight * 256 / sum)` so that every server still gets buckets; with more than 256 servers
    /// the servers past the 256th get none (as in IPVS). Does not allocate.
    pub fn rebuild(&mut self, servers: &[ServerView]) {
        self.buckets.fill(NONE);
        if servers.is_empty() {
            return;
        }
        let run = |s: &ServerView| u64::from(s.weight.max(1));
        let sum: u64 = servers.iter().map(run).sum();
        let quota = |s: &ServerView| {
            if sum <= SH_TABLE_SIZE as u64 {
                run(s)
            } else {
                (run(s) * SH_TABLE_SIZE as u64 / sum).max(1)
            }
        };
        let mut filled = 0;
        'fill: loop {
            for (i, s) in servers.iter().enumerate() {
                for _ in 0..quota(s) {
                    self.buckets[filled] = i as u32;
                    filled += 1;
                    if filled == SH_TABLE_SIZE {
                        break 'fill;
                    }
                }
            }
        }
    }

    /// The server for `client`'s source address (the port is ignored), or `None` if no server is
    /// available. O(1) normally; at most 512 probes when the client's server is unavailable. No
    /// allocation.
    ///
    /// The first bucket is `h mod 256` with `h = hash_addr(ip)`. If its server is unavailable, the
    /// fallback re-hashes: probe `k` looks at bucket `mix(h + k·φ) mod 256` for `k = 1..=256` (like IPVS
    /// `sh-fallback`, which re-hashes with an offset), then, to guarantee an answer whenever any server
    /// is available, sweeps the 256 buckets in order. Re-hashing (rather than stepping to the next
    /// bucket, or stepping by a fixed stride, which the periodic table layout would alias) sends
    /// different clients of a dead server to different survivors, in proportion to their buckets.
    pub fn pick(&self, servers: &[ServerView], client: SocketAddrV4) -> Option<usize> {
        let h = hash_addr(*client.ip());
        let rehashed = (0..=SH_TABLE_SIZE as u64).map(|k| {
            if k == 0 {
                h
            } else {
                mix64(h.wrapping_add(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            }
        });
        let sweep = 0..SH_TABLE_SIZE as u64;
        rehashed
            .chain(sweep)
            .map(|b| self.buckets[(b % SH_TABLE_SIZE as u64) as usize] as usize)
            .find(|&i| servers.get(i).is_some_and(ServerView::available))
    }

    /// How many buckets each of the first `out.len()` servers owns (for diagnostics and tests).
    pub fn bucket_counts(&self, out: &mut [u32]) {
        out.fill(0);
        for &b in self.buckets.iter() {
            if let Some(c) = out.get_mut(b as usize) {
                *c += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::testutil::{histogram, servers, Clients};
    use std::net::Ipv4Addr;

    fn client(i: u32, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(0xc633_6400 + i), port)
    }

    #[test]
    fn table_is_filled_by_weight_runs_in_list_order() {
        let srv = servers(&[1, 2, 0]);
        let s = SourceHash::new(&srv);
        // Runs of 1, 2 and 1 (weight 0 still owns one bucket), cycling.
        assert_eq!(&s.buckets[..8], &[0, 1, 1, 2, 0, 1, 1, 2]);
        let mut counts = [0; 3];
        s.bucket_counts(&mut counts);
        assert_eq!(counts, [64, 128, 64]);
    }

    #[test]
    fn weights_summing_past_256_are_scaled_so_everyone_gets_buckets() {
        let srv = servers(&[1000, 1, 3000]);
        let s = SourceHash::new(&srv);
        let mut counts = [0; 3];
        s.bucket_counts(&mut counts);
        assert_eq!(counts.iter().sum::<u32>(), 256);
        assert!(counts[1] >= 1);
        assert!((60..=66).contains(&counts[0]), "{counts:?}");
        assert!((188..=194).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn same_client_is_sticky_and_clients_spread() {
        let srv = servers(&[1, 1, 1, 1]);
        let mut s = SourceHash::new(&srv);
        let c = client(42, 1000);
        let first = s.pick(&srv, c).unwrap();
        for port in 0..1000 {
            // Same address, any port, any number of calls, and across rebuilds with the same set.
            assert_eq!(s.pick(&srv, client(42, port)), Some(first));
            if port % 100 == 0 {
                s.rebuild(&srv);
            }
        }
        let h = histogram(4, (0..4000).map(|i| s.pick(&srv, client(i, 80)).unwrap()));
        for &n in &h {
            assert!((850..=1150).contains(&n), "uneven spread {h:?}");
        }
    }

    #[test]
    fn spread_follows_weights() {
        let srv = servers(&[1, 3]);
        let s = SourceHash::new(&srv);
        let mut clients = Clients::new(99);
        let h = histogram(2, (0..8000).map(|_| s.pick(&srv, clients.next_client()).unwrap()));
        assert!((1700..=2300).contains(&h[0]), "{h:?}");
    }

    #[test]
    fn fallback_moves_only_the_failed_servers_clients_and_spreads_them() {
        let mut srv = servers(&[1, 1, 1, 1]);
        let mut s = SourceHash::new(&srv);
        let before: Vec<usize> = (0..2000).map(|i| s.pick(&srv, client(i, 1)).unwrap()).collect();
        srv[2].healthy = false;
        s.rebuild(&srv);
        let after: Vec<usize> = (0..2000).map(|i| s.pick(&srv, client(i, 1)).unwrap()).collect();
        let mut moved_to = [0u32; 4];
        for (&b, &a) in before.iter().zip(&after) {
            if b == 2 {
                moved_to[a] += 1;
            } else {
                assert_eq!(a, b, "a client of a healthy server moved");
            }
        }
        assert_eq!(moved_to[2], 0);
        // The ~500 orphaned clients spread over all three survivors, not onto one neighbour.
        for i in [0, 1, 3] {
            assert!(moved_to[i] >= 100, "{moved_to:?}");
        }
        // Recovery puts everybody back where they were.
        srv[2].healthy = true;
        s.rebuild(&srv);
        let back: Vec<usize> = (0..2000).map(|i| s.pick(&srv, client(i, 1)).unwrap()).collect();
        assert_eq!(back, before);
    }

    #[test]
    fn drain_moves_only_the_drained_servers_clients() {
        let mut srv = servers(&[1, 1, 1]);
        let mut s = SourceHash::new(&srv);
        let before: Vec<usize> = (0..1000).map(|i| s.pick(&srv, client(i, 1)).unwrap()).collect();
        srv[0].weight = 0;
        s.rebuild(&srv);
        for (i, &b) in before.iter().enumerate() {
            let a = s.pick(&srv, client(i as u32, 1)).unwrap();
            assert_ne!(a, 0);
            if b != 0 {
                assert_eq!(a, b);
            }
        }
    }
}
